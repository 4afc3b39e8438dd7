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

async fn admin_cluster(cluster: &Cluster, i: usize) -> Value {
    let (status, body) = http(
        "GET",
        &cluster.url(i, "/v1/admin/cluster"),
        Some(ADMIN_KEY),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("cluster json")
}

/// Every partition's leader as node `i` sees it.
async fn leaders(cluster: &Cluster, i: usize) -> Vec<Option<String>> {
    let view = admin_cluster(cluster, i).await;
    view["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .map(|p| p["leader"].as_str().map(str::to_owned))
        .collect()
}

/// Waits until every node in `live` agrees on one leader per partition, each among `live`; returns the
/// leaders and how long it took.
async fn settled(cluster: &Cluster, live: &[usize], within: Duration) -> (Vec<String>, Duration) {
    let started = Instant::now();
    let names: Vec<&str> = live.iter().map(|&i| cluster.ids[i].as_str()).collect();
    loop {
        let mut views = Vec::new();
        for &i in live {
            views.push(leaders(cluster, i).await);
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

    let view = admin_cluster(&cluster, 1).await;
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
        let view = admin_cluster(&cluster, 2).await;
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
