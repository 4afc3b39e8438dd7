//! The replication workloads: a steady 1:1 load from senders that survive a node going away, while the
//! cluster loses nodes (`failover`: SIGKILL) or restarts them one by one (`rolling`: SIGTERM).
//!
//! Each of P senders posts to its own direct conversation at its share of the total rate. A sender keeps every
//! message it has not seen `sent` for; on `unavailable` (or `rate_limited`) it sends that message again, and
//! when its connection ends it logs in to the next node in turn and sends all of them again, always with the
//! same `cid`, which the server stores at most once. Nobody receives: at the end every conversation is read
//! back with `sync` and compared with what its sender was told (lost, duplicated, gaps, other `seq`).
//!
//! The outage of a disruption is the longest time any conversation went without a `sent` across it: for each
//! conversation, the longest gap between two consecutive `sent` (by arrival) that began before the node was
//! back and ended after it went away. It contains the failover, a reconnect, and one sending interval.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::{stream, StreamExt};
use rookery::client::Client;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{connect, conv, node_id, source, Server};

/// Messages a sender keeps unacknowledged at most; at its rate tick it skips a message beyond this.
const WINDOW: usize = 256;
/// Before sending again a message answered `unavailable` or `rate_limited`, and between login attempts.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// A connection with messages waiting that has heard nothing for this long is taken as dead.
const STALL: Duration = Duration::from_secs(10);
/// How long the senders get, once the load stops, to have every message acknowledged.
const DRAIN: Duration = Duration::from_secs(30);
/// A login (TCP, WebSocket, `auth`) that takes longer is given up, and the next node tried.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(5);
/// `Load::down` when no node is down.
const NONE: usize = usize::MAX;

/// How many conversations and how many messages a second over all of them.
pub struct LoadShape {
    pub pairs: usize,
    pub rate: u64,
}

/// The `failover` plan: `kills` times, SIGKILL a node, start it again after `down`, let the cluster run for
/// `settle`.
pub struct Kills {
    pub kills: usize,
    pub down: Duration,
    pub settle: Duration,
    /// The cluster's, for the outage target.
    pub election_timeout_ms: u64,
}

/// Steady load while nodes are SIGKILLed and restarted; outage per kill and the end-of-run checks.
pub async fn failover(server: &mut Server, shape: LoadShape, plan: Kills) -> anyhow::Result<Value> {
    ensure_own_cluster(server)?;
    let running = Running::start(server, &shape);
    let rounds = tokio::task::block_in_place(|| kill_rounds(server, &running.load, &plan))?;
    let (logs, span) = running.finish().await?;
    let outages: Vec<f64> = rounds.iter().map(|r| r.longest_gap_ms(&logs)).collect();
    let median_ms = median(&outages);
    let longest_ms = outages.iter().copied().fold(0.0, f64::max);
    let longest_target = plan.election_timeout_ms + 1000;
    let mut report = json!({
        "workload": "failover",
        "nodes": server.addrs.len(),
        "pairs": shape.pairs,
        "rate": shape.rate,
        "down_ms": plan.down.as_millis(),
        "settle_ms": plan.settle.as_millis(),
        "election_timeout_ms": plan.election_timeout_ms,
        "kills": rounds.len(),
        "killed": rounds.iter().map(|r| node_id(r.node)).collect::<Vec<_>>(),
        "outage_ms": outages,
        "outage_median_ms": median_ms,
        "outage_longest_ms": longest_ms,
        "target": {
            "outage_median_below_ms": 1500,
            "outage_longest_below_ms": longest_target,
            "met": median_ms < 1500.0 && longest_ms < longest_target as f64,
        },
        "back_ms": rounds.iter().map(Round::back_ms).collect::<Vec<_>>(),
        "balanced_ms": rounds.iter().map(Round::balanced_ms).collect::<Vec<_>>(),
    });
    extend(&mut report, load_report(server, &logs, span).await?);
    Ok(report)
}

/// Steady load while every node in turn is SIGTERMed, waited for and restarted; `unavailable` answers by the
/// node they came through, and the end-of-run checks.
pub async fn rolling(
    server: &mut Server,
    shape: LoadShape,
    settle: Duration,
) -> anyhow::Result<Value> {
    ensure_own_cluster(server)?;
    let running = Running::start(server, &shape);
    let rounds = tokio::task::block_in_place(|| restart_each(server, &running.load, settle))?;
    let (logs, span) = running.finish().await?;
    let restarts: Vec<Value> = rounds
        .iter()
        .map(|r| {
            json!({
                "node": node_id(r.node),
                "exit": r.exit.clone(),
                "back_ms": r.back_ms(),
                "balanced_ms": r.balanced_ms(),
                "longest_gap_ms": r.longest_gap_ms(&logs),
            })
        })
        .collect();
    let mut report = json!({
        "workload": "rolling",
        "nodes": server.addrs.len(),
        "pairs": shape.pairs,
        "rate": shape.rate,
        "settle_ms": settle.as_millis(),
        "restarts": restarts,
        "target": {"unavailable_via_other_nodes": 0},
    });
    extend(&mut report, load_report(server, &logs, span).await?);
    Ok(report)
}

/// One disruption of one node, as the controller saw it.
struct Round {
    node: usize,
    /// When the node was signalled.
    from: Instant,
    /// When it was started again.
    restarted: Instant,
    /// When it was linked again and every partition had a leader.
    back: Instant,
    /// How long after `back` every partition was led by its preferred replica again (`None`: not within
    /// [`super::BALANCE_WAIT`]).
    balanced: Option<Duration>,
    /// How it exited (SIGTERM only).
    exit: Option<String>,
}

impl Round {
    fn back_ms(&self) -> u128 {
        (self.back - self.restarted).as_millis()
    }

    fn balanced_ms(&self) -> Option<u128> {
        self.balanced.map(|d| d.as_millis())
    }

    /// The longest gap between consecutive `sent` of any conversation that began before the node was
    /// started again and ended after it was signalled, in ms.
    fn longest_gap_ms(&self, logs: &[SenderLog]) -> f64 {
        logs.iter()
            .filter_map(|log| {
                log.arrivals()
                    .zip(log.arrivals().skip(1))
                    .filter(|(a, b)| *a < self.restarted && *b > self.from)
                    .map(|(a, b)| b - a)
                    .max()
            })
            .max()
            .map_or(0.0, |gap| ms(gap.as_secs_f64()))
    }
}

/// Kills a random node (another than the last), restarts it, waits for the leaderships to be back where
/// they were, lets the load run; `plan.kills` times. Each kill then finds the cluster as the first did.
fn kill_rounds(server: &mut Server, load: &Load, plan: &Kills) -> anyhow::Result<Vec<Round>> {
    let nodes = server.addrs.len();
    let mut rounds = Vec::new();
    let mut last = None;
    std::thread::sleep(plan.settle);
    for _ in 0..plan.kills {
        let node = loop {
            let pick = rand::random::<usize>() % nodes;
            if Some(pick) != last {
                break pick;
            }
        };
        last = Some(node);
        rounds.push(cycle(server, load, node, |server| {
            server.kill(node)?;
            std::thread::sleep(plan.down);
            Ok(None)
        })?);
        std::thread::sleep(plan.settle);
    }
    Ok(rounds)
}

/// SIGTERMs each node in turn, waits for its exit, restarts it, waits for the leaderships to be back where
/// they were, lets the load run.
fn restart_each(server: &mut Server, load: &Load, settle: Duration) -> anyhow::Result<Vec<Round>> {
    let mut rounds = Vec::new();
    std::thread::sleep(settle);
    for node in 0..server.addrs.len() {
        rounds.push(cycle(server, load, node, |server| {
            let exit = server.terminate(node)?;
            Ok(Some(
                exit.map_or("did not exit within 30 s".to_string(), |s| s.to_string()),
            ))
        })?);
        std::thread::sleep(settle);
    }
    Ok(rounds)
}

/// One round on `node`: `stop` takes it down (and says how it exited, if it was asked to), then it is
/// restarted and the leaderships are waited for.
fn cycle(
    server: &mut Server,
    load: &Load,
    node: usize,
    stop: impl FnOnce(&mut Server) -> anyhow::Result<Option<String>>,
) -> anyhow::Result<Round> {
    load.down.store(node, Ordering::Relaxed);
    let from = Instant::now();
    let exit = stop(server)?;
    let restarted = Instant::now();
    server.restart(node)?;
    load.down.store(NONE, Ordering::Relaxed);
    Ok(Round {
        node,
        from,
        restarted,
        back: Instant::now(),
        balanced: server.wait_balanced(),
        exit,
    })
}

/// What every sender shares with the others and with the controller.
struct Load {
    nodes: Vec<SocketAddr>,
    pairs: usize,
    /// Between two new messages of one sender (the total rate spread over the senders).
    interval: Duration,
    /// New messages are being sent (false: only what is unacknowledged is).
    sending: AtomicBool,
    /// The node being taken down or restarted, or `NONE`: an `unavailable` that came through it is the
    /// disruption's, not the other nodes'.
    down: AtomicUsize,
}

/// The senders at work.
pub(super) struct Running {
    load: Arc<Load>,
    tasks: Vec<JoinHandle<SenderLog>>,
    stop: watch::Sender<bool>,
    started: Instant,
}

impl Running {
    pub(super) fn start(server: &Server, shape: &LoadShape) -> Running {
        let pairs = shape.pairs.max(1);
        let load = Arc::new(Load {
            nodes: server.addrs.clone(),
            pairs,
            interval: Duration::from_secs_f64(pairs as f64 / shape.rate.max(1) as f64),
            sending: AtomicBool::new(true),
            down: AtomicUsize::new(NONE),
        });
        let (stop, stop_rx) = watch::channel(false);
        let tasks = (0..pairs)
            .map(|i| tokio::spawn(Sender::new(load.clone(), i).run(stop_rx.clone())))
            .collect();
        Running {
            load,
            tasks,
            stop,
            started: Instant::now(),
        }
    }

    /// Stops new messages, gives the senders [`DRAIN`] to have the rest acknowledged, then stops them.
    /// Returns their logs and how long new messages were sent, in seconds.
    pub(super) async fn finish(self) -> anyhow::Result<(Vec<SenderLog>, f64)> {
        self.load.sending.store(false, Ordering::Relaxed);
        let span = self.started.elapsed().as_secs_f64();
        let deadline = Instant::now() + DRAIN;
        while Instant::now() < deadline && !self.tasks.iter().all(JoinHandle::is_finished) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.stop.send(true);
        let mut logs = Vec::with_capacity(self.tasks.len());
        for task in self.tasks {
            logs.push(task.await?);
        }
        Ok((logs, span))
    }
}

/// What one sender saw, for the checks and the report.
#[derive(Default)]
pub(super) struct SenderLog {
    pub(super) conv: String,
    /// The first `seq` acknowledged for each message (by its number: `cid` is `c{n}`).
    acked: HashMap<u64, u64>,
    /// When each `sent` arrived, first ones and repeats alike; the load's start and end bracket them.
    sent_at: Vec<Instant>,
    started: Option<Instant>,
    ended: Option<Instant>,
    /// A message sent again and acknowledged with another `seq` than its first `sent`.
    resend_seq_changes: u64,
    /// `unavailable` answers that came through the node being taken down, and through the others.
    unavailable_via_down: u64,
    unavailable_via_others: u64,
    /// Why: each `unavailable` answer's message with its keys and numbers blanked out, and how often.
    unavailable_reasons: std::collections::BTreeMap<String, u64>,
    rate_limited: u64,
    /// Other errors: that message is given up (never acknowledged, so it cannot be lost).
    refused: u64,
    /// Logins after a connection ended.
    reconnects: u64,
    /// Messages still unacknowledged when the senders were stopped.
    unacked: usize,
    /// For each message acknowledged: when its first `sent` arrived, and how long after the message was
    /// first sent.
    pub(super) latencies: Vec<(Instant, Duration)>,
}

impl SenderLog {
    /// The arrivals of `sent`, with the load's start and end standing in for the first and last.
    fn arrivals(&self) -> impl Iterator<Item = Instant> + '_ {
        self.started
            .into_iter()
            .chain(self.sent_at.iter().copied())
            .chain(self.ended)
    }
}

/// How a connection's use ended.
enum Ended {
    /// Everything sent was acknowledged after the load stopped.
    Done,
    /// The connection ended or stalled: log in elsewhere.
    Broken,
    /// Told to stop.
    Stopped,
}

/// The fields of a reply a sender reads.
#[derive(serde::Deserialize)]
struct Reply<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    #[serde(default, borrow)]
    cid: Option<&'a str>,
    #[serde(default)]
    seq: u64,
    #[serde(default)]
    rid: Option<u64>,
    #[serde(default, borrow)]
    code: Option<&'a str>,
    #[serde(default)]
    message: Option<String>,
}

/// One resilient sender: user `s{i}` writing to `r{i}`.
struct Sender {
    load: Arc<Load>,
    i: usize,
    user: String,
    /// The node it is (or will next be) connected to.
    node: usize,
    /// The number of the last new message (its `rid`; its `cid` is `c{n}`).
    n: u64,
    next_send: tokio::time::Instant,
    /// Frames not yet acknowledged, by message number, and when each was first sent.
    unacked: BTreeMap<u64, String>,
    first_sent: HashMap<u64, Instant>,
    /// Messages answered `unavailable` or `rate_limited`, sent again at `retry_at`.
    retry: Vec<u64>,
    retry_at: Option<tokio::time::Instant>,
    log: SenderLog,
}

impl Sender {
    fn new(load: Arc<Load>, i: usize) -> Sender {
        let user = format!("s{i}");
        // staggered over one interval, so that the total rate is a steady stream rather than bursts
        let phase = load.interval.mul_f64(i as f64 / load.pairs as f64);
        let log = SenderLog {
            conv: conv(&user, &format!("r{i}")),
            ..SenderLog::default()
        };
        Sender {
            node: i % load.nodes.len(),
            next_send: tokio::time::Instant::now() + phase,
            load,
            i,
            user,
            n: 0,
            unacked: BTreeMap::new(),
            first_sent: HashMap::new(),
            retry: Vec::new(),
            retry_at: None,
            log,
        }
    }

    async fn run(mut self, mut stop: watch::Receiver<bool>) -> SenderLog {
        self.log.started = Some(Instant::now());
        while let Some(mut client) = self.login(&stop).await {
            match self.drive(&mut client, &mut stop).await {
                Ended::Broken => {
                    self.log.reconnects += 1;
                    self.node = (self.node + 1) % self.load.nodes.len();
                }
                Ended::Done | Ended::Stopped => break,
            }
        }
        self.log.ended = Some(Instant::now());
        self.log.unacked = self.unacked.len();
        self.log
    }

    /// Logs in to the current node, or the next ones in turn, and sends everything unacknowledged again;
    /// `None` once told to stop.
    async fn login(&mut self, stop: &watch::Receiver<bool>) -> Option<Client> {
        loop {
            if *stop.borrow() {
                return None;
            }
            let addr = self.load.nodes[self.node];
            let login = connect(addr, &self.user, "d", source(self.i, 20));
            if let Ok(Ok(mut client)) = tokio::time::timeout(LOGIN_TIMEOUT, login).await {
                self.retry.clear();
                self.retry_at = None;
                if self.send_all_unacked(&mut client).await {
                    return Some(client);
                }
            }
            self.node = (self.node + 1) % self.load.nodes.len();
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    async fn send_all_unacked(&mut self, client: &mut Client) -> bool {
        for frame in self.unacked.values() {
            if client.send_text(frame.clone()).await.is_err() {
                return false;
            }
        }
        true
    }

    /// Sends at the rate, reads the answers and sends again what needs it, until the connection ends or
    /// nothing is left to do.
    async fn drive(&mut self, client: &mut Client, stop: &mut watch::Receiver<bool>) -> Ended {
        let mut heard = tokio::time::Instant::now();
        loop {
            let sending = self.load.sending.load(Ordering::Relaxed);
            if !sending && self.unacked.is_empty() {
                return Ended::Done;
            }
            let now = tokio::time::Instant::now();
            if !self.unacked.is_empty() && now > heard + STALL {
                return Ended::Broken;
            }
            if self.retry_at.is_some_and(|at| now >= at) && !self.send_retries(client).await {
                return Ended::Broken;
            }
            if sending && now >= self.next_send {
                // late (after a reconnect): carry on at the rate rather than catch up in a burst
                self.next_send = (self.next_send + self.load.interval).max(now);
                if self.unacked.len() < WINDOW && !self.send_new(client).await {
                    return Ended::Broken;
                }
                continue;
            }
            let mut wake = heard + STALL;
            if sending {
                wake = wake.min(self.next_send);
            }
            if let Some(at) = self.retry_at {
                wake = wake.min(at);
            }
            let text = tokio::select! {
                _ = stop.changed() => return Ended::Stopped,
                _ = tokio::time::sleep_until(wake) => continue,
                text = client.next_text() => text,
            };
            let Ok(Some(text)) = text else {
                return Ended::Broken;
            };
            heard = tokio::time::Instant::now();
            self.read(&text);
        }
    }

    async fn send_new(&mut self, client: &mut Client) -> bool {
        self.n += 1;
        let (n, conv) = (self.n, &self.log.conv);
        let frame = format!(
            r#"{{"type":"send","rid":{n},"cid":"c{n}","conv":"{conv}","body":{{"text":"failover message {n}"}}}}"#
        );
        self.unacked.insert(n, frame.clone());
        self.first_sent.insert(n, Instant::now());
        client.send_text(frame).await.is_ok()
    }

    async fn send_retries(&mut self, client: &mut Client) -> bool {
        self.retry_at = None;
        for n in std::mem::take(&mut self.retry) {
            if let Some(frame) = self.unacked.get(&n) {
                if client.send_text(frame.clone()).await.is_err() {
                    return false;
                }
            }
        }
        true
    }

    /// Takes in one frame from the server.
    fn read(&mut self, text: &str) {
        let Ok(reply) = serde_json::from_str::<Reply<'_>>(text) else {
            return;
        };
        match (reply.kind, reply.code) {
            ("sent", _) => self.acknowledged(reply.cid, reply.seq),
            ("error", Some("unavailable")) => {
                if self.node == self.load.down.load(Ordering::Relaxed) {
                    self.log.unavailable_via_down += 1;
                } else {
                    self.log.unavailable_via_others += 1;
                }
                let reason = reason(reply.message.as_deref().unwrap_or(""));
                *self.log.unavailable_reasons.entry(reason).or_default() += 1;
                self.send_again(reply.rid);
            }
            ("error", Some("rate_limited")) => {
                self.log.rate_limited += 1;
                self.send_again(reply.rid);
            }
            ("error", _) => {
                self.log.refused += 1;
                if let Some(n) = reply.rid {
                    self.unacked.remove(&n);
                }
            }
            _ => {}
        }
    }

    fn acknowledged(&mut self, cid: Option<&str>, seq: u64) {
        let Some(n) = cid.and_then(|c| c.strip_prefix('c')?.parse::<u64>().ok()) else {
            return;
        };
        let now = Instant::now();
        self.log.sent_at.push(now);
        self.unacked.remove(&n);
        if let Some(first) = self.first_sent.remove(&n) {
            self.log.latencies.push((now, now - first));
        }
        let first = *self.log.acked.entry(n).or_insert(seq);
        if first != seq {
            self.log.resend_seq_changes += 1;
        }
    }

    fn send_again(&mut self, rid: Option<u64>) {
        if let Some(n) = rid {
            self.retry.push(n);
            self.retry_at
                .get_or_insert_with(|| tokio::time::Instant::now() + RETRY_PAUSE);
        }
    }
}

/// What the stored conversations show against what the senders were told.
#[derive(Default)]
struct Check {
    /// Acknowledged messages that are not stored.
    lost: u64,
    /// Extra stored copies of a `cid`.
    duplicates: u64,
    /// `seq` numbers missing below a conversation's last.
    gaps: u64,
    /// Acknowledged messages stored under another `seq` than their first `sent` said.
    seq_mismatches: u64,
}

/// An error message with its keys (`dm:a:b`) and numbers blanked out, so that answers for the same reason
/// count together.
fn reason(message: &str) -> String {
    message
        .split(' ')
        .map(|word| {
            if word.contains(':') && !word.ends_with(':') {
                "KEY"
            } else if word.chars().any(|c| c.is_ascii_digit()) {
                "N"
            } else {
                word
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The counters of every sender, the end-of-run checks, and the throughput over `span` seconds.
pub(super) async fn load_report(
    server: &Server,
    logs: &[SenderLog],
    span: f64,
) -> anyhow::Result<Value> {
    let check = check_all(&server.addrs, logs).await?;
    let sum = |f: fn(&SenderLog) -> u64| logs.iter().map(f).sum::<u64>();
    let acknowledged = sum(|l| l.acked.len() as u64);
    let mut reasons = std::collections::BTreeMap::<&str, u64>::new();
    for (reason, n) in logs.iter().flat_map(|l| &l.unavailable_reasons) {
        *reasons.entry(reason).or_default() += n;
    }
    Ok(json!({
        "acknowledged": acknowledged,
        "acknowledged_per_s": (acknowledged as f64 / span).round(),
        "lost": check.lost,
        "duplicates": check.duplicates,
        "gaps": check.gaps,
        "seq_mismatches": check.seq_mismatches,
        "resend_seq_changes": sum(|l| l.resend_seq_changes),
        "unacknowledged_at_end": sum(|l| l.unacked as u64),
        "unavailable": sum(|l| l.unavailable_via_down + l.unavailable_via_others),
        "unavailable_via_down_node": sum(|l| l.unavailable_via_down),
        "unavailable_via_other_nodes": sum(|l| l.unavailable_via_others),
        "unavailable_reasons": reasons,
        "rate_limited": sum(|l| l.rate_limited),
        "refused": sum(|l| l.refused),
        "reconnects": sum(|l| l.reconnects),
    }))
}

async fn check_all(nodes: &[SocketAddr], logs: &[SenderLog]) -> anyhow::Result<Check> {
    let checks: Vec<anyhow::Result<Check>> = stream::iter(logs.iter().enumerate())
        .map(|(i, log)| check_conv(nodes, i, log))
        .buffer_unordered(16)
        .collect()
        .await;
    let mut total = Check::default();
    for check in checks {
        let check = check?;
        total.lost += check.lost;
        total.duplicates += check.duplicates;
        total.gaps += check.gaps;
        total.seq_mismatches += check.seq_mismatches;
    }
    Ok(total)
}

/// Reads sender `i`'s conversation back and compares it with what the sender was acknowledged.
async fn check_conv(nodes: &[SocketAddr], i: usize, log: &SenderLog) -> anyhow::Result<Check> {
    if log.acked.is_empty() {
        return Ok(Check::default());
    }
    let mut stored: HashMap<String, Vec<u64>> = HashMap::new();
    for (cid, seq) in read_conv(nodes, i, &log.conv).await? {
        stored.entry(cid).or_default().push(seq);
    }
    let mut seqs: Vec<u64> = stored.values().flatten().copied().collect();
    seqs.sort_unstable();
    seqs.dedup();
    let mut check = Check {
        duplicates: stored.values().map(|s| s.len() as u64 - 1).sum(),
        gaps: seqs
            .last()
            .copied()
            .unwrap_or(0)
            .saturating_sub(seqs.len() as u64),
        ..Check::default()
    };
    for (n, seq) in &log.acked {
        match stored.get(&format!("c{n}")) {
            None => check.lost += 1,
            Some(at) if !at.contains(seq) => check.seq_mismatches += 1,
            Some(_) => {}
        }
    }
    Ok(check)
}

/// Every message of `conv` as (`cid`, `seq`), read by its sender (device `verify`) with `sync`, page by
/// page; tried on each node in turn, since one may still be taking over its partitions.
async fn read_conv(
    nodes: &[SocketAddr],
    i: usize,
    conv: &str,
) -> anyhow::Result<Vec<(String, u64)>> {
    let mut failure = None;
    for attempt in 0..nodes.len() * 2 {
        let addr = nodes[(i + attempt) % nodes.len()];
        match read_conv_at(addr, i, conv).await {
            Ok(msgs) => return Ok(msgs),
            Err(e) => failure = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(failure.unwrap_or_else(|| anyhow::anyhow!("no node to read from")))
        .with_context(|| format!("reading {conv} back"))
}

async fn read_conv_at(
    addr: SocketAddr,
    i: usize,
    conv: &str,
) -> anyhow::Result<Vec<(String, u64)>> {
    let mut client = connect(addr, &format!("s{i}"), "verify", source(i, 20)).await?;
    let mut msgs = Vec::new();
    let mut after = 0;
    loop {
        let page = client
            .call(json!({"type":"sync","conv":conv,"after":after,"limit":1000}))
            .await?;
        let page_msgs = page["msgs"]
            .as_array()
            .context("a sync reply without msgs")?;
        for m in page_msgs {
            let cid = m["cid"].as_str().unwrap_or_default().to_string();
            msgs.push((cid, m["seq"].as_u64().unwrap_or(0)));
        }
        let last_seq = page["last_seq"].as_u64().unwrap_or(0);
        match msgs.last() {
            Some((_, seq)) if !page_msgs.is_empty() && *seq < last_seq => after = *seq,
            _ => break,
        }
    }
    client.close().await;
    Ok(msgs)
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// Seconds as milliseconds, to one decimal.
fn ms(seconds: f64) -> f64 {
    (seconds * 10_000.0).round() / 10.0
}

/// Adds the fields of the object `more` to the object `report`.
pub(super) fn extend(report: &mut Value, more: Value) {
    if let (Value::Object(report), Value::Object(more)) = (report, more) {
        report.extend(more);
    }
}

/// Taking nodes down needs nodes this bench started, and enough of them to keep a majority of every
/// partition's replicas.
fn ensure_own_cluster(server: &Server) -> anyhow::Result<()> {
    anyhow::ensure!(
        server.launch.is_some() && server.children.len() >= 3,
        "this workload needs a cluster of 3 or more nodes started by the bench (not --addr)"
    );
    Ok(())
}
