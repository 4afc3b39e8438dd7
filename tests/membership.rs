//! Membership changes on a running cluster (issue 17; PROTOCOL.md "Replication, failover and membership"):
//! real `rookery` processes on loopback, a fourth node started with `--join` and added with
//! `POST /v1/admin/nodes`, then removed with `DELETE /v1/admin/nodes/ID`, while clients on the staying
//! nodes pipeline sends the whole time; a dead node removed and its replicas rebuilt from the live copies;
//! the membership kept across restarts; joiners with another secret or shape refused.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rookery::client::Client;
use serde_json::{json, Value};

const CONFIG: &str = "[chat]\ndm_requires_friendship = false\n[limits]\nsends_per_s = 100000\n\
                      [cluster]\npartitions = 16\n";
/// How long a change may take to settle here (16 partitions, 3 replicas).
const SETTLE: Duration = Duration::from_secs(90);
/// Sends each client keeps in flight.
const WINDOW: usize = 8;

/// What one pipelining client saw.
struct Sent {
    user: String,
    conv: String,
    acked: HashMap<String, u64>,
    /// The longest time from the sending of a request answered `unavailable` (a router waits up to the
    /// failover bound for a leader before it answers so) to the next `sent`.
    longest_unavailable: Duration,
    /// The `unavailable` messages of that longest stretch, with when each came (from its start).
    longest_reasons: Vec<(Duration, String)>,
    /// When that stretch began (seconds since the Unix epoch, to find it in the nodes' logs).
    longest_at: f64,
    unavailable: usize,
    /// The node closed the connection.
    disconnected: bool,
}

/// Keeps `WINDOW` sends in flight on node `addr` until `stop`, resending what was answered `unavailable`
/// with the same `cid`, then until everything is acknowledged.
async fn keep_sending(addr: SocketAddr, user: String, conv: String, stop: Arc<AtomicBool>) -> Sent {
    let mut out = Sent {
        user: user.clone(),
        conv: conv.clone(),
        acked: HashMap::new(),
        longest_unavailable: Duration::ZERO,
        longest_reasons: Vec::new(),
        longest_at: 0.0,
        unavailable: 0,
        disconnected: false,
    };
    let (mut c, _) = Client::login(addr, &token(&user), "phone")
        .await
        .expect("login");
    let mut next = 0usize;
    // each with when it was (last) sent
    let mut in_flight: BTreeMap<String, Instant> = BTreeMap::new();
    let mut retry: Vec<String> = Vec::new();
    let mut refused_since: Option<Instant> = None;
    let mut reasons: Vec<(Duration, String)> = Vec::new();
    let mut refused_at = 0.0;
    let drain_deadline = Instant::now() + Duration::from_secs(600);
    let mut last_answer = Instant::now();
    loop {
        assert!(
            in_flight.is_empty() || last_answer.elapsed() < Duration::from_secs(10),
            "{user}: no answer in 10 s to {in_flight:?}"
        );
        let stopping = stop.load(Ordering::Relaxed);
        if stopping && in_flight.is_empty() && retry.is_empty() {
            return out;
        }
        assert!(
            Instant::now() < drain_deadline,
            "{user}: sends never drained"
        );
        let mut fresh = Vec::new();
        while in_flight.len() + fresh.len() < WINDOW && !stopping {
            fresh.push(format!("{user}-{next:06}"));
            next += 1;
        }
        for cid in retry.drain(..).chain(fresh) {
            let frame = json!({"type":"send","rid":cid,"cid":cid,"conv":conv,"body":{"cid":cid}});
            if c.send(&frame).await.is_err() {
                out.disconnected = true;
                return out;
            }
            in_flight.insert(cid, Instant::now());
        }
        match c.next(Duration::from_secs(10)).await {
            Ok(Some(f)) if f["type"] == "sent" => {
                last_answer = Instant::now();
                let cid = f["cid"].as_str().expect("cid").to_owned();
                let seq = f["seq"].as_u64().expect("seq");
                if let Some(first) = out.acked.insert(cid.clone(), seq) {
                    assert_eq!(first, seq, "{cid} acknowledged with two seqs");
                }
                in_flight.remove(&cid);
                if let Some(since) = refused_since.take() {
                    if since.elapsed() > out.longest_unavailable {
                        out.longest_unavailable = since.elapsed();
                        out.longest_reasons = std::mem::take(&mut reasons);
                        out.longest_at = refused_at;
                    }
                    reasons.clear();
                }
            }
            Ok(Some(f)) if f["type"] == "error" => {
                last_answer = Instant::now();
                assert_eq!(f["code"], "unavailable", "{user}: {f}");
                out.unavailable += 1;
                let cid = f["rid"].as_str().expect("rid").to_owned();
                let sent_at = in_flight.remove(&cid).unwrap_or_else(Instant::now);
                let since = *refused_since.get_or_insert_with(|| {
                    refused_at = (std::time::SystemTime::now() - sent_at.elapsed())
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0.0, |d| d.as_secs_f64());
                    sent_at
                });
                reasons.push((
                    since.elapsed(),
                    f["message"].as_str().unwrap_or("").to_owned(),
                ));
                retry.push(cid);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(Some(_)) => {}
            Ok(None) => {
                out.disconnected = true;
                return out;
            }
            Err(e) => panic!(
                "{user}: no answer in 10 s ({e}); {} in flight",
                in_flight.len()
            ),
        }
    }
}

/// Every acknowledged message is stored once, at its seq, with no gaps and nothing unacknowledged.
async fn verify(addr: SocketAddr, sent: &Sent) {
    let stored = pull_all(&[addr], &sent.user, &sent.conv).await;
    assert_gapless(&stored);
    let mut by_cid: HashMap<&str, u64> = HashMap::new();
    for m in &stored {
        let cid = m["cid"].as_str().expect("cid");
        let seq = m["seq"].as_u64().expect("seq");
        assert!(by_cid.insert(cid, seq).is_none(), "{cid} stored twice");
    }
    for (cid, seq) in &sent.acked {
        assert_eq!(
            by_cid.get(cid.as_str()),
            Some(seq),
            "{cid} at its acknowledged seq"
        );
    }
    assert_eq!(
        stored.len(),
        sent.acked.len(),
        "nothing stored unacknowledged"
    );
}

/// `count` direct conversations, each of a user `{prefix}K` (logged in on node K mod 3) who sends
/// `messages` texts to `{prefix}toK`, each acknowledged; their (user, conversation) pairs.
async fn write_conversations(
    cluster: &Cluster,
    prefix: &str,
    count: usize,
    messages: usize,
    text: &str,
) -> Vec<(String, String)> {
    let mut written = Vec::new();
    for k in 0..count {
        let user = format!("{prefix}{k}");
        let conv = dm(&user, &format!("{prefix}to{k}"));
        let mut c = cluster.login(k % 3, &user, "phone").await;
        for m in 0..messages {
            let reply = send_text(&mut c, &conv, &format!("{user}-{m}"), text).await;
            assert_eq!(reply["type"], "sent", "{reply}");
        }
        written.push((user, conv));
    }
    written
}

fn node<'a>(view: &'a Value, id: &str) -> Option<&'a Value> {
    view["nodes"].as_array()?.iter().find(|n| n["id"] == id)
}

fn keeps(view: &Value, id: &str) -> usize {
    view["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .filter(|p| {
            p["replicas"]
                .as_array()
                .is_some_and(|r| r.iter().any(|x| x == id))
        })
        .count()
}

fn settled(view: &Value) -> bool {
    view["moving"] == 0
        && view["nodes"]
            .as_array()
            .is_some_and(|n| n.iter().all(|n| n["state"] == "active"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_to_four_to_three_nodes_under_pipelined_sends() {
    let mut cluster = Cluster::start(3, CONFIG).await;
    let epoch = cluster.admin_cluster(0).await["epoch"]
        .as_u64()
        .expect("epoch");
    // two pipelining clients on each staying node, in conversations led all over the cluster
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..3 {
        for k in 0..2 {
            let user = format!("s{i}{k}");
            let conv = dm(&user, &format!("r{i}{k}"));
            tasks.push(tokio::spawn(keep_sending(
                cluster.addrs[i],
                user,
                conv,
                stop.clone(),
            )));
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    // 3 -> 4: started first, it waits; added, it receives its share
    let n4 = cluster.join("n4", 0);
    let (status, body) = cluster.add_node(1, n4).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        node(&body, "n4").map(|n| n["state"].clone()),
        Some(json!("joining"))
    );
    assert!(body["epoch"].as_u64().expect("epoch") > epoch);
    let started = Instant::now();
    let view = cluster
        .wait_cluster(0, SETTLE, |v| settled(v) && node(v, "n4").is_some())
        .await;
    eprintln!("3 -> 4 settled in {:?}", started.elapsed());
    let share = keeps(&view, "n4");
    assert!(share >= 16 * 3 / 4 / 2, "n4 keeps {share} of 16 partitions");
    assert!(view["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .all(|p| p["replicas"].as_array().is_some_and(|r| r.len() == 3)));
    // every node agrees
    for i in 0..4 {
        let v = cluster.wait_cluster(i, SETTLE, settled).await;
        assert_eq!(v["epoch"], view["epoch"], "node {i}");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    // 4 -> 3
    let (status, body) = cluster.admin(2, "DELETE", "/v1/admin/nodes/n4", None).await;
    assert_eq!(status, 202, "{body}");
    let started = Instant::now();
    let view = cluster
        .wait_cluster(0, SETTLE, |v| settled(v) && node(v, "n4").is_none())
        .await;
    eprintln!("4 -> 3 settled in {:?}", started.elapsed());
    assert_eq!(keeps(&view, "n4"), 0);
    assert_eq!(view["nodes"].as_array().expect("nodes").len(), 3);
    tokio::time::sleep(Duration::from_secs(1)).await;

    stop.store(true, Ordering::Relaxed);
    let mut longest = Duration::ZERO;
    let mut total = 0;
    for task in tasks {
        let sent = task.await.expect("sender");
        assert!(!sent.disconnected, "{}'s node closed it", sent.user);
        longest = longest.max(sent.longest_unavailable);
        total += sent.acked.len();
        eprintln!(
            "{}: {} acknowledged, {} unavailable, longest {:?} from unix {:.3}: {:?}",
            sent.user,
            sent.acked.len(),
            sent.unavailable,
            sent.longest_unavailable,
            sent.longest_at,
            sent.longest_reasons
        );
        verify(cluster.addrs[0], &sent).await;
    }
    assert!(total > 100, "the load ran ({total} messages)");
    assert!(
        longest < Duration::from_secs(2),
        "longest unavailable stretch {longest:?}"
    );
    // the removed node holds nothing: it may be stopped
    assert!(cluster.terminate(n4).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_is_removed_and_its_replicas_rebuilt_from_the_live_copies() {
    let mut cluster = Cluster::start(4, CONFIG).await;
    let sent = write_conversations(&cluster, "d", 8, 5, "x").await;
    cluster.kill9(3);
    let (status, body) = cluster.admin(0, "DELETE", "/v1/admin/nodes/n4", None).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        node(&body, "n4").map(|n| n["state"].clone()),
        Some(json!("leaving"))
    );
    let view = cluster
        .wait_cluster(1, SETTLE, |v| settled(v) && node(v, "n4").is_none())
        .await;
    assert_eq!(keeps(&view, "n4"), 0);
    for p in view["partitions"].as_array().expect("partitions") {
        assert_eq!(p["replicas"].as_array().map(Vec::len), Some(3), "{p}");
    }
    // everything written before is there, from every staying node
    for (user, conv) in &sent {
        for i in 0..3 {
            let msgs = pull_all(&[cluster.addrs[i]], user, conv).await;
            assert_eq!(msgs.len(), 5, "{conv} on node {i}");
            assert_gapless(&msgs);
        }
    }
    // a dead node cannot be removed twice, nor an unknown one; the last holders cannot all go
    let (status, _) = cluster.admin(0, "DELETE", "/v1/admin/nodes/n9", None).await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_of_every_node_keeps_the_new_membership() {
    let mut cluster = Cluster::start(3, CONFIG).await;
    cluster.join("n4", 2);
    // added with the command line, from the new node's own config: it shows progress until settled
    let own = cluster.dir.path().join("n4.toml");
    let via = cluster.addrs[0].to_string();
    let out = tokio::task::spawn_blocking(move || {
        rookery_cli(&[
            "cluster".as_ref(),
            "add".as_ref(),
            "n4".as_ref(),
            "--config".as_ref(),
            own.as_os_str(),
            "--via".as_ref(),
            via.as_ref(),
        ])
    })
    .await
    .expect("cli");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("partitions moved"), "{stderr}");
    assert!(stderr.contains("n4 is active"), "{stderr}");
    let before = cluster
        .wait_cluster(0, SETTLE, |v| settled(v) && node(v, "n4").is_some())
        .await;
    let status = rookery_cli(&[
        "cluster".as_ref(),
        "status".as_ref(),
        "--config".as_ref(),
        cluster.config_path.as_os_str(),
    ]);
    let table = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{table}");
    assert!(table.contains("16 partitions, 0 moving"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("n4") && l.contains("active")),
        "{table}"
    );
    let mut c = cluster.login(0, "keeper", "phone").await;
    let conv = dm("keeper", "other");
    for m in 0..5 {
        let reply = send_text(&mut c, &conv, &format!("k{m}"), "x").await;
        assert_eq!(reply["type"], "sent", "{reply}");
    }
    drop(c);
    // one at a time (a rolling restart), then all at once
    for i in 0..4 {
        assert!(cluster.terminate(i).success());
        cluster.restart_linked(i).await;
    }
    for i in 0..4 {
        cluster.kill9(i);
    }
    for i in 0..4 {
        cluster.start_again(i);
    }
    for i in 0..4 {
        let after = cluster.wait_cluster(i, SETTLE, settled).await;
        assert_eq!(after["epoch"], before["epoch"], "node {i}");
        assert_eq!(after["nodes"].as_array().map(Vec::len), Some(4), "node {i}");
        assert_eq!(keeps(&after, "n4"), keeps(&before, "n4"));
    }
    let msgs = loop {
        let msgs = pull_all(&[cluster.addrs[3]], "keeper", &conv).await;
        if msgs.len() == 5 {
            break msgs;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_gapless(&msgs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joiner_with_another_secret_or_shape_is_refused() {
    let cluster = Cluster::start(2, CONFIG).await;
    let heads = [
        (
            "n7",
            format!("[auth]\ntoken_secret = \"another\"\nadmin_key = \"{ADMIN_KEY}\"\n{CONFIG}\n"),
            "authentication failed",
        ),
        (
            "n8",
            format!(
                "[auth]\ntoken_secret = \"{SECRET}\"\nadmin_key = \"{ADMIN_KEY}\"\n\
                 [chat]\ndm_requires_friendship = false\n[cluster]\npartitions = 32\n"
            ),
            "cluster signature",
        ),
    ];
    for (id, head, why) in heads {
        let (config, _, _) = cluster.joiner_config(id, Some(&head));
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_rookery"))
            .arg("--config")
            .arg(&config)
            .args(["--node", id, "--join", &cluster.peers[0]])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut child = out;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            assert!(Instant::now() < deadline, "{id} was not refused");
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().expect("stderr"), &mut stderr)
            .expect("stderr");
        assert_eq!(status.code(), Some(2), "{id}: {stderr}");
        assert!(stderr.contains(why), "{id}: {stderr}");
        let view = cluster.admin_cluster(0).await;
        assert!(node(&view, id).is_none());
    }
    // a joiner that was not added waits (and is not a member)
    let (config, _, _) = cluster.joiner_config("n9", None);
    let mut waiting =
        NodeProcess::start_with_args(&config, Some("n9"), None, &["--join", &cluster.peers[1]]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        waiting.child.try_wait().expect("wait").is_none(),
        "still waiting"
    );
    assert!(node(&cluster.admin_cluster(0).await, "n9").is_none());
    waiting.kill9();
    // bad calls
    let (status, _) = cluster
        .admin(0, "POST", "/v1/admin/nodes", Some(json!({"id": "n5"})))
        .await;
    assert_eq!(status, 400);
    let (status, _) = cluster
        .admin(
            0,
            "POST",
            "/v1/admin/nodes",
            Some(
                json!({"id": "n5", "listen": cluster.addrs[0].to_string(), "peer": "127.0.0.1:1"}),
            ),
        )
        .await;
    assert_eq!(status, 409, "an address in use");
    let (status, _) = http(
        "POST",
        &cluster.url(0, "/v1/admin/nodes"),
        Some("wrong"),
        Some("{}"),
    )
    .await;
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_grows_to_two_under_pipelined_sends() {
    let mut cluster = Cluster::start(1, CONFIG).await;
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..2)
        .map(|k| {
            let user = format!("g{k}");
            let conv = dm(&user, &format!("h{k}"));
            tokio::spawn(keep_sending(cluster.addrs[0], user, conv, stop.clone()))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let n2 = cluster.join("n2", 0);
    let (status, body) = cluster.add_node(0, n2).await;
    assert_eq!(status, 202, "{body}");
    let view = cluster
        .wait_cluster(0, SETTLE, |v| settled(v) && node(v, "n2").is_some())
        .await;
    // every partition now has both nodes (replicas = 3, taken as the node count)
    assert_eq!(keeps(&view, "n2"), 16);
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    eprintln!("stopping the senders");
    for task in tasks {
        let sent = task.await.expect("sender");
        eprintln!("{} stopped", sent.user);
        assert!(!sent.disconnected);
        eprintln!(
            "{}: {} acknowledged, {} unavailable, longest {:?} from unix {:.3}: {:?}",
            sent.user,
            sent.acked.len(),
            sent.unavailable,
            sent.longest_unavailable,
            sent.longest_at,
            sent.longest_reasons
        );
        assert!(
            sent.longest_unavailable < Duration::from_secs(2),
            "{}: unavailable for {:?}; the nodes' logs end with\n{}",
            sent.user,
            sent.longest_unavailable,
            cluster.log_tails(150)
        );
        verify(cluster.addrs[0], &sent).await;
        eprintln!("{} verified on n1", sent.user);
        // and the new node has it all: it serves the same history
        verify(cluster.addrs[n2], &sent).await;
    }
}

/// A joining node killed (SIGKILL) just after it installed its first snapshots: the log kept each
/// received snapshot's data with its point, so at restart the node installs again those its store may
/// not have flushed, and every message is there from every node (the partitions it then leads are read
/// from its own store).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joiner_killed_while_it_installs_snapshots_installs_them_again() {
    let mut cluster = Cluster::start(3, CONFIG).await;
    let written = write_conversations(&cluster, "j", 24, 6, &"x".repeat(2000)).await;
    let n4 = cluster.join("n4", 0);
    let (status, body) = cluster.add_node(1, n4).await;
    assert_eq!(status, 202, "{body}");
    let deadline = Instant::now() + SETTLE;
    loop {
        let (_, metrics) = http_get(&cluster.url(n4, "/metrics")).await;
        let installed = metrics
            .lines()
            .find_map(|l| l.strip_prefix("rookery_raft_snapshots_installed_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        if installed >= 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "n4 installed no snapshot");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cluster.kill9(n4);
    cluster.start_again(n4);
    let view = cluster
        .wait_cluster(0, SETTLE, |v| {
            settled(v) && node(v, "n4").is_some() && keeps(v, "n4") >= 16 * 3 / 4 / 2
        })
        .await;
    let log = std::fs::read_to_string(cluster.dir.path().join("n4.log")).unwrap_or_default();
    eprintln!(
        "n4 keeps {} partitions; installed again at restart: {}",
        keeps(&view, "n4"),
        log.contains("installing again the snapshots")
    );
    // n4 leads its share once settled: their reads come from its store
    let deadline = Instant::now() + SETTLE;
    while !cluster
        .leaders(0)
        .await
        .iter()
        .any(|l| l.as_deref() == Some("n4"))
    {
        assert!(Instant::now() < deadline, "n4 leads nothing");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (user, conv) in &written {
        for i in 0..4 {
            let msgs = pull_all(&[cluster.addrs[i]], user, conv).await;
            assert_eq!(msgs.len(), 6, "{conv} on node {i}");
            assert_gapless(&msgs);
        }
    }
    // the received snapshots' data files go once the store has each installation durably (the idle
    // cluster writes nothing else meanwhile)
    let kept = |id: &str| -> Vec<String> {
        std::fs::read_dir(
            cluster
                .dir
                .path()
                .join(format!("data/{id}/raft/raft-snapshots")),
        )
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
    };
    assert!(
        cluster
            .dir
            .path()
            .join("data/n4/raft/raft-snapshots")
            .is_dir(),
        "n4 kept the data of the snapshots it received in files"
    );
    let deadline = Instant::now() + SETTLE;
    while ["n1", "n2", "n3", "n4"]
        .iter()
        .any(|id| !kept(id).is_empty())
    {
        assert!(
            Instant::now() < deadline,
            "snapshot files left: {:?}",
            ["n1", "n2", "n3", "n4"].map(kept)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
