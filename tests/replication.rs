//! PROTOCOL.md "Replication, failover and membership": the partitions' Raft groups on real `rookery`
//! processes over their authenticated peer links. Leaders are elected, agreed on by every node, replaced
//! within `election_timeout_ms` plus one second when their node is killed or frozen, and handed over before
//! a node stops on SIGTERM.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const PARTITIONS: usize = 64;

/// The tests of this file run one at a time: each measures failover against the contract's bound, which
/// means nothing while three other clusters compete for the same two cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const ELECTION_MS: u64 = 1000;

fn extra() -> String {
    format!("[cluster]\npartitions = {PARTITIONS}\nelection_timeout_ms = {ELECTION_MS}\n")
}

/// Waits until every node in `live` agrees on one leader per partition, each among `live`; returns the
/// leaders and how long it took.
async fn settled(cluster: &Cluster, live: &[usize], within: Duration) -> (Vec<String>, Duration) {
    let started = Instant::now();
    let names: Vec<&str> = live.iter().map(|&i| cluster.ids[i].as_str()).collect();
    loop {
        let mut views = Vec::new();
        for &i in live {
            views.push(cluster.leaders(i).await);
        }
        let agreed = views.iter().all(|v| v == &views[0]);
        let all_live = views[0]
            .iter()
            .all(|l| l.as_deref().is_some_and(|l| names.contains(&l)));
        if agreed && all_live {
            return (
                views[0].iter().flatten().cloned().collect(),
                started.elapsed(),
            );
        }
        assert!(
            started.elapsed() < within,
            "partitions not settled on {names:?} after {within:?}: {views:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn counts(leaders: &[String]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for l in leaders {
        *counts.entry(l.clone()).or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_partition_elects_one_leader_that_every_node_agrees_on() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(3, &extra()).await;
    let (leaders, _) = settled(&cluster, &[0, 1, 2], Duration::from_secs(15)).await;
    assert_eq!(leaders.len(), PARTITIONS);

    let view = cluster.admin_cluster(1).await;
    assert_eq!(view["epoch"], 1);
    assert_eq!(view["moving"], 0);
    for (p, part) in view["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .enumerate()
    {
        assert_eq!(part["id"], p);
        let replicas = part["replicas"].as_array().expect("replicas");
        assert_eq!(replicas.len(), 3, "three replicas on three nodes");
        assert!(
            replicas.contains(&part["leader"]),
            "the leader is a replica"
        );
    }
    for n in view["nodes"].as_array().expect("nodes") {
        assert_eq!(n["state"], "active");
        assert_eq!(n["up"], true);
    }
    // `/v1/nodes` counts the same leaderships, and the metric says what this node leads
    let nodes = cluster.nodes_view(0).await;
    let by_node = counts(&leaders);
    let mut total = 0;
    for n in &nodes {
        let led =
            usize::try_from(n["partitions_led"].as_u64().expect("partitions_led")).expect("small");
        assert_eq!(
            led,
            by_node
                .get(n["id"].as_str().expect("id"))
                .copied()
                .unwrap_or(0)
        );
        total += led;
    }
    assert_eq!(total, PARTITIONS);
    let (_, metrics) = http_get(&cluster.url(0, "/metrics")).await;
    assert!(
        metrics.contains(&format!("rookery_raft_partitions {PARTITIONS}")),
        "every node keeps every partition"
    );
    let led0 = by_node.get("n1").copied().unwrap_or(0);
    assert!(metrics.contains(&format!("rookery_raft_partitions_led {led0}")));
    assert!(metrics
        .contains("rookery_peer_envelopes_total{direction=\"sent\",kind=\"raft\",peer=\"n2\"}"));

    // leadership goes back to each partition's preferred replica (the first on the ring), so the nodes
    // share the work the way the ring shares the partitions
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let view = cluster.admin_cluster(2).await;
        let off: Vec<&Value> = view["partitions"]
            .as_array()
            .expect("partitions")
            .iter()
            .filter(|p| p["leader"] != p["replicas"][0])
            .collect();
        if off.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "not balanced: {off:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (balanced, _) = settled(&cluster, &[0, 1, 2], Duration::from_secs(5)).await;
    let spread = counts(&balanced);
    eprintln!("leaders per node once balanced: {spread:?}");
    assert_eq!(
        spread.len(),
        3,
        "every node leads some partitions: {spread:?}"
    );

    // without the admin key: 401
    let (status, _) = http_get(&cluster.url(0, "/v1/admin/cluster")).await;
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_or_frozen_leader_is_replaced_within_the_election_timeout_plus_a_second() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(3, &extra()).await;
    let (leaders, _) = settled(&cluster, &[0, 1, 2], Duration::from_secs(15)).await;
    let bound = Duration::from_millis(ELECTION_MS) + Duration::from_secs(1);

    // kill -9 the node that leads the most partitions
    let by_node = counts(&leaders);
    let victim = (0..3)
        .max_by_key(|&i| by_node.get(&cluster.ids[i]).copied().unwrap_or(0))
        .expect("a node");
    let led = by_node.get(&cluster.ids[victim]).copied().unwrap_or(0);
    assert!(led > 0);
    cluster.kill9(victim);
    let live: Vec<usize> = (0..3).filter(|&i| i != victim).collect();
    let (_, took) = settled(&cluster, &live, Duration::from_secs(10)).await;
    eprintln!("{led} partitions failed over from a killed node in {took:?}");
    assert!(took <= bound, "failover took {took:?} (bound {bound:?})");

    // it comes back from its own log and follows; then freeze a leader: the others replace it
    cluster.restart(victim).await;
    let (leaders, _) = settled(&cluster, &[0, 1, 2], Duration::from_secs(15)).await;
    let by_node = counts(&leaders);
    let frozen = (0..3)
        .max_by_key(|&i| by_node.get(&cluster.ids[i]).copied().unwrap_or(0))
        .expect("a node");
    cluster.signal(frozen, "STOP");
    let live: Vec<usize> = (0..3).filter(|&i| i != frozen).collect();
    let (_, took) = settled(&cluster, &live, Duration::from_secs(10)).await;
    eprintln!("failover from a frozen node in {took:?}");
    assert!(took <= bound, "failover took {took:?} (bound {bound:?})");

    // thawed, it learns the new terms (pre-vote: it deposes nobody) and all three agree again
    cluster.signal(frozen, "CONT");
    let (after, _) = settled(&cluster, &[0, 1, 2], Duration::from_secs(15)).await;
    assert!(
        !after.contains(&cluster.ids[frozen]) || after.len() == PARTITIONS,
        "agreed view"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_every_leadership_over_before_the_node_exits() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(3, &extra()).await;
    let (leaders, _) = settled(&cluster, &[0, 1, 2], Duration::from_secs(15)).await;
    let by_node = counts(&leaders);
    let leaving = (0..3)
        .max_by_key(|&i| by_node.get(&cluster.ids[i]).copied().unwrap_or(0))
        .expect("a node");
    assert!(by_node.get(&cluster.ids[leaving]).copied().unwrap_or(0) > 0);
    let status = cluster.terminate(leaving);
    assert!(status.success(), "clean exit: {status:?}");
    // the hand-over finished before the exit: the others lead everything at once, no election to wait for
    let live: Vec<usize> = (0..3).filter(|&i| i != leaving).collect();
    let (_, took) = settled(&cluster, &live, Duration::from_secs(5)).await;
    assert!(
        took < Duration::from_millis(ELECTION_MS),
        "leaders were already in place ({took:?})"
    );
    let log = std::fs::read_to_string(
        cluster
            .dir
            .path()
            .join(format!("{}.log", cluster.ids[leaving])),
    )
    .unwrap_or_default();
    assert!(
        log.contains("still_led=0"),
        "the node reports it handed everything over: {log}"
    );
}

/// `rookery_peer_envelopes_total` of one kind sent from node `i` to `peer`.
async fn sent(cluster: &Cluster, i: usize, peer: &str, kind: &str) -> u64 {
    let (_, metrics) = http_get(&cluster.url(i, "/metrics")).await;
    let key = format!(
        "rookery_peer_envelopes_total{{direction=\"sent\",kind=\"{kind}\",peer=\"{peer}\"}} "
    );
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Heartbeats of every group travel together: between two nodes that share 64 groups, an idle second
/// carries a few dozen `Raft` frames (about one per driver round), not one per group per heartbeat (640).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_of_all_groups_share_one_frame_per_node_pair_and_round() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(3, &extra()).await;
    settled(&cluster, &[0, 1, 2], Duration::from_secs(15)).await;
    let before = sent(&cluster, 0, "n2", "raft").await;
    let window = Duration::from_secs(2);
    tokio::time::sleep(window).await;
    let frames = sent(&cluster, 0, "n2", "raft").await - before;
    // a tick is election_timeout_ms / 20 (50 ms), a heartbeat every 2 ticks: each group sends n2 a
    // heartbeat or answers one of n2's 10 times a second
    let uncoalesced = PARTITIONS as u64 * 10 * window.as_secs();
    eprintln!("n1 -> n2: {frames} raft frames in {window:?} for {PARTITIONS} groups ({uncoalesced} messages)");
    assert!(frames > 0, "the groups talk");
    // a frame per tick and one per round answering n2's frame: 40 a second; allow half again for load
    assert!(
        frames <= 60 * window.as_secs(),
        "about one frame per driver round, not one per group: {frames}"
    );
}

/// A counter or gauge without labels from node `i`'s `/metrics`.
async fn metric(cluster: &Cluster, i: usize, name: &str) -> u64 {
    let (_, metrics) = http_get(&cluster.url(i, "/metrics")).await;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0)
}

/// A direct conversation between users on nodes 0 and 1 whose partition node `leader` leads (when settled).
fn conversation_led_by(cluster: &Cluster, leader: usize, tag: &str) -> (String, String, String) {
    (0..10_000)
        .map(|k| {
            (
                cluster.user_on(0, &format!("{tag}a{k}x")),
                cluster.user_on(1, &format!("{tag}b{k}x")),
            )
        })
        .find(|(a, b)| cluster.owner(&dm(a, b)) == leader)
        .map(|(a, b)| {
            let conv = dm(&a, &b);
            (a, b, conv)
        })
        .expect("a conversation on that node")
}

/// Sends `n` messages (cids `{tag}{k}`) and returns their seqs.
async fn send_many(
    client: &mut rookery::client::Client,
    conv: &str,
    tag: &str,
    n: usize,
) -> Vec<u64> {
    let mut seqs = Vec::new();
    for k in 0..n {
        let sent = send_text(client, conv, &format!("{tag}{k}"), "x").await;
        seqs.push(sent["seq"].as_u64().expect("seq"));
    }
    seqs
}

/// The cids of the whole conversation as `client` pulls it.
async fn cids(client: &mut rookery::client::Client, conv: &str) -> Vec<String> {
    let sync = client
        .call(serde_json::json!({"type":"sync","conv":conv,"after":0,"limit":1000}))
        .await
        .expect("sync");
    sync["msgs"]
        .as_array()
        .expect("msgs")
        .iter()
        .map(|m| m["cid"].as_str().expect("cid").to_owned())
        .collect()
}

const OPEN_DMS: &str = "[chat]\ndm_requires_friendship = false\n";

/// A node restarted on an empty `data_dir` (a replaced disk) is rebuilt from the others' copies; then
/// another node is stopped, and the rebuilt one serves everything with the third.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_is_rebuilt_from_the_others_and_then_serves_everything() {
    let _serial = SERIAL.lock().await;
    // logs compacted past 20 entries: the entries n3 misses are gone from its peers' logs, so it is
    // rebuilt from snapshots of the partitions' data
    let config = format!("{}log_compact_entries = 20\n{OPEN_DMS}", extra());
    let mut cluster = Cluster::start(3, &config).await;
    let (a, b, conv) = conversation_led_by(&cluster, 2, "w");
    let mut ca = cluster.login(0, &a, "d").await;
    let mut cb = cluster.login(1, &b, "d").await;
    assert_eq!(
        send_many(&mut ca, &conv, "before", 30).await,
        (1..=30).collect::<Vec<_>>()
    );

    cluster.kill9(2);
    let data = cluster.dir.path().join("data").join(&cluster.ids[2]);
    std::fs::remove_dir_all(&data).expect("wipe n3");
    // written while it is gone: only the other two have these; their logs are compacted meanwhile (the
    // apply threads look once a second)
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let during = send_many(&mut cb, &conv, "during", 10).await;
    assert_eq!(during, (31..=40).collect::<Vec<_>>());
    // back on an empty disk: `restart` waits until it leads its preferred partitions again, which a
    // replica gets only once it has caught up
    cluster.restart(2).await;
    assert!(data.join("raft").exists(), "rebuilt in place");
    let installed = metric(&cluster, 2, "rookery_raft_snapshots_installed_total").await;
    let sent = metric(&cluster, 0, "rookery_raft_snapshots_sent_total").await
        + metric(&cluster, 1, "rookery_raft_snapshots_sent_total").await;
    eprintln!("snapshots: {sent} sent, {installed} installed");
    assert!(installed > 0 && sent > 0, "caught up by snapshot");

    // now n1 goes: the conversation lives on with n3 (rebuilt) and n2
    cluster.kill9(0);
    let mut cb2 = cluster.login(2, &b, "d2").await;
    let expected: Vec<String> = (0..30)
        .map(|k| format!("before{k}"))
        .chain((0..10).map(|k| format!("during{k}")))
        .collect();
    assert_eq!(cids(&mut cb2, &conv).await, expected);
    let sent = send_text(&mut cb2, &conv, "after", "x").await;
    assert_eq!(sent["seq"], 41);
    drop(ca);
}

/// A rolling restart: each node in turn is stopped with SIGTERM (it hands its leaderships over first) and
/// started again, while a member connected to another node keeps sending. That member never sees
/// `unavailable`, and every message is stored once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_makes_nothing_unavailable_to_clients_of_other_nodes() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(3, &format!("{}{OPEN_DMS}", extra())).await;
    let mut sent_cids = Vec::new();
    let mut unavailable = 0;
    for leaving in 0..3 {
        // members on the two nodes that stay; their conversation is led by the leaving one
        let stay: Vec<usize> = (0..3).filter(|&i| i != leaving).collect();
        let (a, b) = (0..10_000)
            .map(|k| {
                (
                    cluster.user_on(stay[0], &format!("r{leaving}a{k}x")),
                    cluster.user_on(stay[1], &format!("r{leaving}b{k}x")),
                )
            })
            .find(|(a, b)| cluster.owner(&dm(a, b)) == leaving)
            .expect("a conversation led by the leaving node");
        let conv = dm(&a, &b);
        let mut ca = cluster.login(stay[0], &a, "d").await;
        let _cb = cluster.login(stay[1], &b, "d").await;
        let sender = tokio::spawn(async move {
            let mut answers = Vec::new();
            for k in 0..200 {
                let cid = format!("m{k}");
                let reply = ca
                    .request(
                        serde_json::json!({"type":"send","cid":cid,"conv":conv,"body":{"k":k}}),
                    )
                    .await
                    .expect("answer");
                answers.push((cid, reply));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (ca, conv, answers)
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let status = cluster.terminate(leaving);
        assert!(status.success(), "clean exit: {status:?}");
        let (mut ca, conv, answers) = sender.await.expect("sender");
        for (cid, reply) in &answers {
            if reply["type"] == "sent" {
                sent_cids.push(cid.clone());
            } else {
                assert_eq!(reply["code"], "unavailable", "{reply}");
                eprintln!(
                    "restarting {}: {cid} answered {reply}",
                    cluster.ids[leaving]
                );
                unavailable += 1;
            }
        }
        let stored = cids(&mut ca, &conv).await;
        let acked: Vec<String> = answers
            .iter()
            .filter(|(_, r)| r["type"] == "sent")
            .map(|(c, _)| c.clone())
            .collect();
        assert_eq!(stored, acked, "every acknowledged message once, in order");
        cluster.restart(leaving).await;
    }
    assert_eq!(
        unavailable, 0,
        "clients of the other nodes saw `unavailable`"
    );
    assert_eq!(sent_cids.len(), 600);
}

/// With two of three nodes down, the survivor leads nothing (it cannot reach a majority): requests answer
/// `unavailable` within the election timeout plus a second, and nothing of them is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_majority_down_answers_unavailable_and_stores_nothing() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(3, &format!("{}{OPEN_DMS}", extra())).await;
    let (a, b, conv) = conversation_led_by(&cluster, 0, "m");
    let mut ca = cluster.login(0, &a, "d").await;
    assert_eq!(send_many(&mut ca, &conv, "ok", 3).await, vec![1, 2, 3]);
    cluster.kill9(1);
    cluster.kill9(2);
    // the survivor steps down once it has not heard from a majority for an election timeout
    tokio::time::sleep(Duration::from_millis(3 * ELECTION_MS)).await;
    // a new login needs the user's actor, which no partition leader serves now
    let refused = try_login(cluster.addrs[0], &token(&b), "d").await;
    assert_eq!(refused.expect_err("no leader")["code"], "unavailable");
    let started = Instant::now();
    let reply = ca
        .request(serde_json::json!({"type":"send","cid":"lost","conv":conv,"body":{}}))
        .await
        .expect("answer");
    let took = started.elapsed();
    assert_eq!(reply["code"], "unavailable", "{reply}");
    assert!(
        took < Duration::from_millis(ELECTION_MS + 1_500),
        "answered after {took:?}"
    );
    cluster.restart(1).await;
    cluster.restart(2).await;
    let mut cb = cluster.login(1, &b, "d").await;
    assert_eq!(cids(&mut cb, &conv).await, vec!["ok0", "ok1", "ok2"]);
}

/// Five processes, three replicas per partition: the members of a conversation are connected to the two
/// nodes that do not keep its partition (their requests go through a replica, which forwards to the
/// leader). The leader is killed: sends are served again within the bound, through the surviving
/// replicas, and everything acknowledged is there once, in order, also after the leader's return.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_fail_over_for_clients_of_nodes_that_do_not_keep_the_partition() {
    let _serial = SERIAL.lock().await;
    let config = format!("{}replicas = 3\n{OPEN_DMS}", extra());
    let mut cluster = Cluster::start(5, &config).await;
    let conv = dm("fivea", "fiveb");
    let replicas = cluster.replicas_of(&conv);
    assert_eq!(replicas.len(), 3);
    let outside: Vec<usize> = (0..5).filter(|i| !replicas.contains(i)).collect();
    let mut ca = cluster.login(outside[0], "fivea", "d").await;
    let mut cb = cluster.login(outside[1], "fiveb", "d").await;
    assert_eq!(
        send_many(&mut ca, &conv, "a", 10).await,
        (1..=10).collect::<Vec<_>>()
    );
    cb.expect(is_msg(&conv, 10), WAIT).await.expect("pushed");

    let leader = replicas[0];
    cluster.kill9(leader);
    let started = Instant::now();
    let sent = loop {
        let reply = ca
            .request(serde_json::json!({"type":"send","cid":"b0","conv":conv,"body":{}}))
            .await
            .expect("answer");
        if reply["type"] == "sent" {
            break reply;
        }
        assert_eq!(reply["code"], "unavailable", "{reply}");
    };
    let outage = started.elapsed();
    eprintln!("served again after {outage:?}");
    assert_eq!(sent["seq"], 11);
    assert!(
        outage < Duration::from_millis(ELECTION_MS + 1_500),
        "{outage:?}"
    );
    cb.expect(is_msg(&conv, 11), WAIT)
        .await
        .expect("pushed by the new leader");

    cluster.restart(leader).await;
    let mut on_leader = cluster.login(leader, "fiveb", "d2").await;
    let mut expected: Vec<String> = (0..10).map(|k| format!("a{k}")).collect();
    expected.push("b0".into());
    assert_eq!(cids(&mut on_leader, &conv).await, expected);
    assert_eq!(cids(&mut cb, &conv).await, expected);
}

/// With more nodes than replicas, a node that keeps no replica of a user's partition still has its
/// sessions known to the user's actor after the partition's leadership moves while every link stays up:
/// here the preferred replica, stopped and started again, takes its partitions back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_on_a_node_without_the_partition_follow_its_leadership() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(4, &extra()).await;
    let (user, outsider) = (0..10_000)
        .map(|k| format!("o{k}x"))
        .find_map(|u| {
            let keepers = cluster.replicas_of(&u);
            (0..4).find(|i| !keepers.contains(i)).map(|i| (u, i))
        })
        .expect("a user whose partition one node does not keep");
    let leader = cluster.replicas_of(&user)[0];
    let witness = (0..4)
        .find(|i| *i != leader && *i != outsider)
        .expect("a third node");
    let _client = cluster.login(outsider, &user, "phone").await;
    assert!(
        user_online(&cluster, witness, &user).await,
        "registered at first"
    );
    assert!(cluster.terminate(leader).success());
    cluster.wait_leaders().await;
    let deadline = Instant::now() + WAIT;
    while !user_online(&cluster, witness, &user).await {
        assert!(
            Instant::now() < deadline,
            "re-registered with the next leader"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // the preferred replica takes the partition back with every link up
    cluster.restart(leader).await;
    let deadline = Instant::now() + WAIT;
    while !user_online(&cluster, witness, &user).await {
        assert!(
            Instant::now() < deadline,
            "the session on {} is unknown to the user's actor on {}",
            cluster.ids[outsider],
            cluster.ids[leader]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether `GET /v1/users/{user}` on node `i` says the user is online.
async fn user_online(cluster: &Cluster, i: usize, user: &str) -> bool {
    let (status, body) = cluster
        .admin(i, "GET", &format!("/v1/users/{user}"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    body["online"] == true
}
