//! Chaos (issue 13): the real binary SIGKILLed at random moments under pipelined sends, several times over,
//! with the clients resending their unacknowledged `cid`s after each restart (PROTOCOL.md "Send": a `cid`
//! sent again stores nothing twice; `sent` with durability "sync" survives kill -9). Afterwards every
//! acknowledged message is present exactly once at the seq it was acknowledged with, the seqs have no gaps,
//! and both members' `sync` views are identical. Once on a single node, once on a three-node cluster
//! (a random node killed each round; its partitions fail over to the other replicas, and clients resend
//! what was answered `unavailable` or lost with the connection), and with the conversation's leader
//! killed or frozen while members on the other nodes pipeline sends (the outage measured and bounded).
//!
//! The moments are random (the node dies once a random number of this round's sends are acknowledged, the
//! rest still in flight); the seed is printed (`CHAOS_SEED=N cargo test --test chaos -- --nocapture`
//! replays the choices, though not the machine's timing).

mod common;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rand::{Rng, SeedableRng};
use rookery::client::Client;
use serde_json::json;

const ROUNDS: usize = 4;
/// New messages each sender pipelines per round (on top of its unacknowledged ones).
const BATCH: usize = 120;
const CONFIG: &str = "[chat]\ndm_requires_friendship = false\n[limits]\nsends_per_s = 100000\n\
                      [store]\ndurability = \"sync\"";

/// One member's sends: what it has been told (`sent` seq per cid) and what it is still owed.
struct Sender {
    user: String,
    next: usize,
    acked: HashMap<String, u64>,
    pending: BTreeSet<String>,
}

impl Sender {
    fn new(user: &str) -> Sender {
        Sender {
            user: user.to_string(),
            next: 0,
            acked: HashMap::new(),
            pending: BTreeSet::new(),
        }
    }

    /// The unacknowledged cids plus `new` fresh ones, in order.
    fn batch(&mut self, new: usize) -> Vec<String> {
        for _ in 0..new {
            self.pending
                .insert(format!("{}-{:05}", self.user, self.next));
            self.next += 1;
        }
        self.pending.iter().cloned().collect()
    }

    fn record(&mut self, acks: Vec<(String, u64)>) {
        for (cid, seq) in acks {
            self.pending.remove(&cid);
            if let Some(first) = self.acked.insert(cid.clone(), seq) {
                assert_eq!(first, seq, "{cid} acknowledged with two seqs");
            }
        }
    }
}

/// Logs in to one of `addrs`, pipelines a `send` for each cid, and collects the `sent` replies until all
/// are answered or the connection ends (the node was killed). Errors (`unavailable`) leave a cid pending.
async fn pump(
    addrs: Vec<SocketAddr>,
    user: String,
    conv: String,
    cids: Vec<String>,
    progress: Arc<AtomicUsize>,
) -> Vec<(String, u64)> {
    let mut acks = Vec::new();
    let Ok((mut c, _, _)) = Client::login_any(&addrs, &token(&user), "phone", 2).await else {
        return acks;
    };
    for cid in &cids {
        let frame = json!({"type":"send","rid":cid,"cid":cid,"conv":conv,"body":{"cid":cid}});
        if c.send(&frame).await.is_err() {
            break;
        }
    }
    let mut answered = 0;
    while answered < cids.len() {
        match c.next(Duration::from_secs(5)).await {
            Ok(Some(f)) if f["type"] == "sent" => {
                answered += 1;
                progress.fetch_add(1, Ordering::Relaxed);
                acks.push((
                    f["cid"].as_str().expect("cid").to_string(),
                    f["seq"].as_u64().expect("seq"),
                ));
            }
            Ok(Some(f)) if f["type"] == "error" => answered += 1,
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    acks
}

/// Runs both senders' pumps at once; `kill` (if any) fires once `kill_at` sends have been acknowledged in
/// this round, so the node dies with the pipeline full (or after 10 s if they never get that far).
async fn round(
    addrs: &[SocketAddr],
    conv: &str,
    senders: &mut [Sender; 2],
    new: usize,
    kill_at: Option<usize>,
    kill: impl FnOnce(),
) {
    let progress = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = senders
        .iter_mut()
        .map(|s| {
            tokio::spawn(pump(
                addrs.to_vec(),
                s.user.clone(),
                conv.to_string(),
                s.batch(new),
                progress.clone(),
            ))
        })
        .collect();
    if let Some(at) = kill_at {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while progress.load(Ordering::Relaxed) < at
            && tokio::time::Instant::now() < deadline
            && !tasks.iter().all(tokio::task::JoinHandle::is_finished)
        {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        kill();
    }
    for (s, task) in senders.iter_mut().zip(tasks) {
        s.record(task.await.expect("pump"));
    }
    let pending: Vec<usize> = senders.iter().map(|s| s.pending.len()).collect();
    let acked: Vec<usize> = senders.iter().map(|s| s.acked.len()).collect();
    eprintln!("round over: acknowledged {acked:?}, pending {pending:?}");
}

/// Resends until every cid is acknowledged (the cluster is whole again; a few tries cover links coming up).
async fn settle(addrs: &[SocketAddr], conv: &str, senders: &mut [Sender; 2]) {
    for _ in 0..30 {
        if senders.iter().all(|s| s.pending.is_empty()) {
            return;
        }
        round(addrs, conv, senders, 0, None, || {}).await;
        if senders.iter().any(|s| !s.pending.is_empty()) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let left: Vec<_> = senders.iter().map(|s| s.pending.len()).collect();
    panic!("cids never acknowledged: {left:?}");
}

/// Every promise, checked on both members' views.
async fn verify(addrs: &[SocketAddr], conv: &str, senders: &[Sender; 2]) {
    let views = [
        pull_all(addrs, &senders[0].user, conv).await,
        pull_all(addrs, &senders[1].user, conv).await,
    ];
    assert_eq!(views[0], views[1], "both members see the same history");
    let stored = &views[0];
    assert_gapless(stored);
    let mut by_cid: HashMap<&str, u64> = HashMap::new();
    for m in stored {
        let cid = m["cid"].as_str().expect("cid");
        assert!(
            by_cid
                .insert(cid, m["seq"].as_u64().expect("seq"))
                .is_none(),
            "{cid} stored twice"
        );
        assert_eq!(m["body"]["cid"], cid, "body matches its cid");
    }
    let mut acked = 0;
    for s in senders {
        for (cid, seq) in &s.acked {
            assert_eq!(
                by_cid.get(cid.as_str()),
                Some(seq),
                "{cid} at its acknowledged seq"
            );
            acked += 1;
        }
    }
    assert_eq!(
        acked,
        stored.len(),
        "nothing stored that was not acknowledged in the end"
    );
}

fn rng() -> (u64, rand::rngs::StdRng) {
    let seed = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("chaos seed {seed} (CHAOS_SEED={seed} to replay)");
    (seed, rand::rngs::StdRng::seed_from_u64(seed))
}

#[tokio::test]
async fn single_node_killed_at_random_moments_loses_and_duplicates_nothing() {
    let (_seed, mut rng) = rng();
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = write_node_config(tmp.path(), CONFIG);
    let conv = dm("alice", "bob");
    let mut senders = [Sender::new("alice"), Sender::new("bob")];
    for _ in 0..ROUNDS {
        let mut node = NodeProcess::start(&config);
        let kill_at = rng.gen_range(1..BATCH);
        round(
            &[node.addr],
            &conv,
            &mut senders,
            BATCH,
            Some(kill_at),
            || node.kill9(),
        )
        .await;
    }
    let node = NodeProcess::start(&config);
    settle(&[node.addr], &conv, &mut senders).await;
    verify(&[node.addr], &conv, &senders).await;
    let total: usize = senders.iter().map(|s| s.acked.len()).sum();
    assert_eq!(total, 2 * ROUNDS * BATCH);
}

#[tokio::test]
async fn a_random_cluster_node_killed_each_round_loses_and_duplicates_nothing() {
    let _serial = SERIAL.lock().await;
    let (_seed, mut rng) = rng();
    let mut cluster = Cluster::start(3, CONFIG).await;
    // the members live on different nodes, so most rounds kill a node that owns one of the keys
    let alice = cluster.user_on(0, "alice");
    let bob = cluster.user_on(1, "bob");
    let conv = dm(&alice, &bob);
    let addrs = cluster.addrs.clone();
    let mut senders = [Sender::new(&alice), Sender::new(&bob)];
    for _ in 0..ROUNDS {
        let victim = rng.gen_range(0..3);
        let kill_at = rng.gen_range(1..BATCH);
        round(&addrs, &conv, &mut senders, BATCH, Some(kill_at), || {
            cluster.kill9(victim)
        })
        .await;
        // while it is down: clients reach a live node, and the dead node's partitions are led by others
        let live: Vec<SocketAddr> = (0..3).filter(|i| *i != victim).map(|i| addrs[i]).collect();
        round(&live, &conv, &mut senders, 0, None, || {}).await;
        cluster.restart(victim).await;
    }
    settle(&addrs, &conv, &mut senders).await;
    verify(&addrs, &conv, &senders).await;
    let total: usize = senders.iter().map(|s| s.acked.len()).sum();
    assert_eq!(total, 2 * ROUNDS * BATCH);
}

/// How a leader is taken away.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// SIGKILL, then restarted.
    Kill,
    /// SIGSTOP, then SIGCONT: the frozen leader wakes up deposed, and nothing it still had in flight may be
    /// stored twice or at another seq (no split brain).
    Freeze,
}

/// The leader of a conversation's partition is killed or frozen while members connected to the two other
/// nodes pipeline sends; they resend what was not acknowledged. Every acknowledged message is present once
/// at its seq, seqs are gapless, both members see the same history, and the conversation is served again
/// within `election_timeout_ms` + 1 s (the longest outage is measured: from the fault to the first `sent`
/// of a send made after it).
async fn leader_lost_under_pipelined_sends(fault: Fault) {
    let (_seed, mut rng) = rng();
    let mut cluster = Cluster::start(3, CONFIG).await;
    let (alice, bob) = (0..10_000)
        .map(|k| {
            (
                cluster.user_on(0, &format!("a{k}x")),
                cluster.user_on(1, &format!("b{k}x")),
            )
        })
        .find(|(a, b)| cluster.owner(&dm(a, b)) == 2)
        .expect("a conversation led by node 2");
    let conv = dm(&alice, &bob);
    let clients = [cluster.addrs[0], cluster.addrs[1]];
    let mut senders = [Sender::new(&alice), Sender::new(&bob)];
    let mut outages = Vec::new();
    for r in 0..2 {
        let fault_at = rng.gen_range(1..BATCH);
        let faulted = Arc::new(std::sync::Mutex::new(None));
        let at = faulted.clone();
        let pid_cluster = &mut cluster;
        round(&clients, &conv, &mut senders, BATCH, Some(fault_at), || {
            *at.lock().expect("lock") = Some(std::time::Instant::now());
            match fault {
                Fault::Kill => pid_cluster.kill9(2),
                Fault::Freeze => pid_cluster.signal(2, "STOP"),
            }
        })
        .await;
        let since = faulted
            .lock()
            .expect("lock")
            .unwrap_or_else(std::time::Instant::now);
        // a fresh send from a member: served once a new leader is ready
        let (mut c, _, _) =
            Client::login_any(&[clients[r % 2]], &token(&senders[0].user), "probe", 10)
                .await
                .expect("login");
        let cid = format!("probe-{r}");
        let sent = loop {
            let reply = c
                .request(json!({"type":"send","cid":cid,"conv":conv,"body":{"cid":cid}}))
                .await
                .expect("answer");
            if reply["type"] == "sent" {
                break reply;
            }
            assert_eq!(reply["code"], "unavailable", "{reply}");
        };
        outages.push(since.elapsed());
        senders[0].record(vec![(cid, sent["seq"].as_u64().expect("seq"))]);
        round(&clients, &conv, &mut senders, 0, None, || {}).await;
        match fault {
            Fault::Kill => cluster.restart(2).await,
            Fault::Freeze => {
                cluster.signal(2, "CONT");
                cluster.wait_leaders().await;
            }
        }
    }
    settle(&cluster.addrs, &conv, &mut senders).await;
    verify(&cluster.addrs, &conv, &senders).await;
    let longest = outages.iter().max().copied().unwrap_or_default();
    eprintln!("{fault:?}: outages {outages:?}");
    assert!(
        longest < Duration::from_millis(2_500),
        "longest outage {longest:?} (election timeout 1 s)"
    );
}

#[tokio::test]
async fn a_killed_leader_under_pipelined_sends_loses_and_duplicates_nothing() {
    let _serial = SERIAL.lock().await;
    leader_lost_under_pipelined_sends(Fault::Kill).await;
}

#[tokio::test]
async fn a_frozen_leader_under_pipelined_sends_loses_and_duplicates_nothing() {
    let _serial = SERIAL.lock().await;
    leader_lost_under_pipelined_sends(Fault::Freeze).await;
}

/// The cluster tests of this file run one at a time: they measure outages against the contract's bound.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
