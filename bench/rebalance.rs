//! `rebalance` (issue 17): a cluster holding `--fill-mib` MiB of messages gets one more node under a steady
//! 1:1 load (the `failover` senders: they resend what is answered `unavailable`, and everything is read
//! back at the end). Reported: how long until the layout settled (the new node `active`, nothing
//! `moving`), the snapshot bytes streamed to it and their rate, and the load's p99 from `send` to `sent`
//! before the node was added and while the partitions moved.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{json, Value};

use super::failover::{load_report, LoadShape, Running, SenderLog};
use super::{admin_cluster, connect, conv, source, Server};

/// Messages a fill connection keeps in flight.
const FILL_WINDOW: usize = 32;
/// Fill connections.
const FILL_SENDERS: usize = 32;
/// Body text per fill message (the store keeps the message's JSON: a little more).
const FILL_TEXT: usize = 8000;

pub struct Plan {
    pub fill_mib: u64,
    /// The added node's data directory, if not beside the others'.
    pub joiner_data_dir: Option<std::path::PathBuf>,
    /// How long the load runs before the node is added (its p99 is the "before").
    pub before: Duration,
    /// How long it runs after the layout settled.
    pub after: Duration,
}

pub async fn rebalance(server: &mut Server, shape: LoadShape, plan: Plan) -> anyhow::Result<Value> {
    let filled = Instant::now();
    let bytes = fill(server, plan.fill_mib << 20).await?;
    let fill_s = filled.elapsed().as_secs_f64();
    eprintln!("filled {} MiB in {fill_s:.0} s", bytes >> 20);
    tokio::task::block_in_place(|| server.wait_balanced());
    let streamed_before = moved_bytes(server);
    let running = Running::start(server, &shape);
    let load_started = Instant::now();
    tokio::time::sleep(plan.before).await;
    let added = Instant::now();
    let new = tokio::task::block_in_place(|| server.add_node(plan.joiner_data_dir.as_deref()))?;
    let settled = tokio::task::block_in_place(|| wait_settled(server, new))?;
    let settle_s = (settled - added).as_secs_f64();
    eprintln!("settled {settle_s:.1} s after the node was added");
    tokio::time::sleep(plan.after).await;
    let (logs, span) = running.finish().await?;
    let streamed = moved_bytes(server).saturating_sub(streamed_before);
    let warm = load_started + Duration::from_secs(1);
    let before_ms = p99(&logs, warm, added);
    let during_ms = p99(&logs, added, settled);
    let after_ms = p99(&logs, settled, settled + plan.after);
    // the p99 second by second (where the time goes, and how often this machine stalls without a move)
    print_slow(&logs, added);
    eprintln!(
        "p99 (ms) per second before the addition: {}",
        timeline(&logs, warm, added)
    );
    eprintln!(
        "p99 (ms) per second from the addition: {}",
        timeline(&logs, added, settled + plan.after)
    );
    let view = tokio::task::block_in_place(|| admin_cluster(server.addr))?;
    let new_id = super::node_id(new);
    let kept = view["partitions"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .filter(|p| {
                    p["replicas"]
                        .as_array()
                        .is_some_and(|r| r.iter().any(|n| n == new_id.as_str()))
                })
                .count()
        })
        .unwrap_or(0);
    let mut report = json!({
        "workload": "rebalance",
        "nodes_before": server.addrs.len() - 1,
        "pairs": shape.pairs,
        "rate": shape.rate,
        "filled_mib": bytes >> 20,
        "fill_s": fill_s.round(),
        "settle_s": (settle_s * 10.0).round() / 10.0,
        "partitions_on_new_node": kept,
        "snapshot_mib_streamed": (streamed as f64 / f64::from(1 << 20) * 10.0).round() / 10.0,
        "mib_per_s": ((streamed as f64 / f64::from(1 << 20)) / settle_s.max(0.001) * 10.0).round() / 10.0,
        "before_window_s": (added - warm).as_secs_f64().round(),
        "p99_before_ms": before_ms,
        "p99_during_ms": during_ms,
        "p99_after_ms": after_ms,
        "target": {
            "p99_during_below_x_before": 3,
            "met": during_ms < 3.0 * before_ms,
        },
    });
    super::failover::extend(&mut report, load_report(server, &logs, span).await?);
    Ok(report)
}

/// Writes about `target` bytes of messages, over [`FILL_SENDERS`] pipelined connections spread over the
/// nodes. Returns the bytes of text written.
async fn fill(server: &Server, target: u64) -> anyhow::Result<u64> {
    let written = Arc::new(AtomicU64::new(0));
    let text: String = "x".repeat(FILL_TEXT);
    let mut tasks = Vec::new();
    for i in 0..FILL_SENDERS {
        let addr = server.addrs[i % server.addrs.len()];
        let written = written.clone();
        let text = text.clone();
        tasks.push(tokio::spawn(async move {
            let user = format!("fill{i}");
            let conv = conv(&user, &format!("fillr{i}"));
            let mut c = connect(addr, &user, "d", source(i, 20)).await?;
            let (mut n, mut in_flight) = (0u64, 0usize);
            loop {
                let done = written.load(Ordering::Relaxed) >= target;
                while !done && in_flight < FILL_WINDOW {
                    n += 1;
                    let frame = format!(
                        r#"{{"type":"send","rid":{n},"cid":"f{n}","conv":"{conv}","body":{{"text":"{text}"}}}}"#
                    );
                    c.send_text(frame).await?;
                    in_flight += 1;
                }
                if in_flight == 0 {
                    return anyhow::Ok(());
                }
                let Some(reply) = c.next_text().await? else {
                    anyhow::bail!("a fill connection closed");
                };
                if reply.contains(r#""type":"sent""#) {
                    in_flight -= 1;
                    written.fetch_add(FILL_TEXT as u64, Ordering::Relaxed);
                } else if reply.contains(r#""type":"error""#) {
                    // `unavailable` under the fill's own load: that message is simply not counted
                    in_flight -= 1;
                }
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(written.load(Ordering::Relaxed))
}

/// Waits until node `new` is `active` and nothing moves (at most 30 minutes).
fn wait_settled(server: &Server, new: usize) -> anyhow::Result<Instant> {
    let id = super::node_id(new);
    let deadline = Instant::now() + Duration::from_secs(1800);
    let mut last = u64::MAX;
    loop {
        // a node this busy may answer late (408): asked again, until the deadline
        let view = match admin_cluster(server.addr) {
            Ok(view) => view,
            Err(e) => {
                anyhow::ensure!(Instant::now() < deadline, "no cluster view: {e}");
                eprintln!("cluster view: {e} (asking again)");
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
        };
        let moving = view["moving"].as_u64().unwrap_or(u64::MAX);
        let active = view["nodes"].as_array().is_some_and(|ns| {
            ns.iter()
                .any(|n| n["id"] == id.as_str() && n["state"] == "active")
        });
        if active && moving == 0 {
            return Ok(Instant::now());
        }
        if moving != last {
            eprintln!("moving {moving}");
            last = moving;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "not settled after 30 minutes: {view}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `rookery_move_bytes_total` over every node.
fn moved_bytes(server: &Server) -> u64 {
    server
        .addrs
        .iter()
        .filter_map(|addr| {
            let text = ureq::get(&format!("http://{addr}/metrics"))
                .call()
                .ok()?
                .into_string()
                .ok()?;
            // a counter: printed as an integer
            text.lines()
                .find_map(|l| l.strip_prefix("rookery_move_bytes_total "))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .sum()
}

/// With `REBALANCE_SLOW_MS=N`, every message acknowledged after the addition that took at least N ms:
/// its conversation and the wall-clock time of its `sent` (to set beside the nodes' logs, see
/// `NODE_LOG_DIR`).
fn print_slow(logs: &[SenderLog], added: Instant) {
    let Some(slow) = std::env::var("REBALANCE_SLOW_MS")
        .ok()
        .and_then(|ms| ms.parse::<u64>().ok())
        .map(Duration::from_millis)
    else {
        return;
    };
    let added_wall = std::time::SystemTime::now() - added.elapsed();
    for log in logs {
        for (at, took) in &log.latencies {
            if *took < slow || *at < added {
                continue;
            }
            let wall = (added_wall + (*at - added))
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            eprintln!(
                "slow {} sent_unix_s={:.3} after_addition_s={:.3} ms={}",
                log.conv,
                wall.as_secs_f64(),
                (*at - added).as_secs_f64(),
                took.as_millis()
            );
        }
    }
}

/// The p99 of each second of `[from, to)`, in whole milliseconds, separated by spaces.
fn timeline(logs: &[SenderLog], from: Instant, to: Instant) -> String {
    let mut seconds = Vec::new();
    let mut at = from;
    while at < to {
        seconds.push(format!("{:.0}", p99(logs, at, at + Duration::from_secs(1))));
        at += Duration::from_secs(1);
    }
    seconds.join(" ")
}

/// The 99th percentile (ms, one decimal) of the latencies of messages acknowledged in `[from, to)`.
fn p99(logs: &[SenderLog], from: Instant, to: Instant) -> f64 {
    let mut all: Vec<Duration> = logs
        .iter()
        .flat_map(|l| l.latencies.iter())
        .filter(|(at, _)| *at >= from && *at < to)
        .map(|(_, d)| *d)
        .collect();
    if all.is_empty() {
        return 0.0;
    }
    all.sort_unstable();
    // the smallest latency that at least 99 % of them do not exceed
    let rank = (all.len() * 99).div_ceil(100).clamp(1, all.len());
    let v = all[rank - 1].as_secs_f64() * 1000.0;
    (v * 10.0).round() / 10.0
}

impl Server {
    /// Starts one more node with `--join` (a copy of the cluster's config with its own entry added) and
    /// adds it with `POST /v1/admin/nodes`; returns its index.
    pub(super) fn add_node(&mut self, data_dir: Option<&std::path::Path>) -> anyhow::Result<usize> {
        let launch = self
            .launch
            .as_ref()
            .context("only a cluster started by the bench can grow")?;
        let i = self.addrs.len();
        let id = super::node_id(i);
        let (port, peer) = (super::free_port()?, super::free_port()?);
        let mut config = std::fs::read_to_string(&launch.config)?;
        let data = match data_dir {
            Some(dir) => dir.join(&id).display().to_string(),
            None => format!("data/{id}"),
        };
        config.push_str(&format!(
            "[[nodes]]\nid = \"{id}\"\nlisten = \"127.0.0.1:{port}\"\npeer = \"127.0.0.1:{peer}\"\ndata_dir = {data:?}\n"
        ));
        let path = launch.config.with_file_name(format!("{id}.toml"));
        std::fs::write(&path, config)?;
        let join = self.peers.first().context("no peer address")?.clone();
        let child = super::spawn_joining(&launch.binary, &path, i, &join)?;
        self.children.push(child);
        self.addrs.push(format!("127.0.0.1:{port}").parse()?);
        self.peers.push(format!("127.0.0.1:{peer}"));
        let body = json!({"id": id, "listen": format!("127.0.0.1:{port}"), "peer": format!("127.0.0.1:{peer}")});
        ureq::post(&format!("http://{}/v1/admin/nodes", self.addr))
            .set("Authorization", &format!("Bearer {}", super::ADMIN_KEY))
            .set("Content-Type", "application/json")
            .send_string(&body.to_string())
            .context("POST /v1/admin/nodes")?;
        Ok(i)
    }
}
