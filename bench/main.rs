//! `rookery-bench`: a load generator that speaks the client contract and prints JSON results.
//!
//! It starts the real `rookery` binary (release build, next to this one) on a temporary config, unless
//! `--addr` points at a running node, so the server's CPU and memory are its own process's. With `--nodes N`
//! it starts an N-node cluster from one config and spreads the clients over the nodes (`dm` puts each
//! sender and its receiver on different nodes); the result then counts the peer envelopes of the measured
//! period, which shows the per-node batching of fan-out. With `--relay` the `dm` and `fanout` workloads run
//! against a bare WebSocket relay instead ([`relay`]): the same-sitting yardstick issue 18 asks for.
//!
//! Workloads:
//! - `dm`: P pairs; in each, one user sends to the other with W messages in flight, for T seconds (optionally
//!   at a fixed total `--rate`). Reports accepted and delivered msgs/s and send-to-receipt latency.
//! - `idle`: N authenticated idle connections, spread over several loopback source addresses; reports the
//!   server's resident memory per connection.
//! - `failover` ([`failover`]): steady 1:1 load from senders that resend with the same `cid` until acknowledged,
//!   while nodes are SIGKILLed and restarted one at a time; reports each kill's outage and what `sync` shows
//!   afterwards (lost, duplicated, gaps).
//! - `rolling` ([`failover`]): the same load while every node in turn is SIGTERMed and restarted; reports the
//!   `unavailable` answers seen through the other nodes (the target is none) and the same checks.
//!
//! `--replicas` and `--election-timeout-ms` set the started cluster's `[cluster]` settings. A started cluster
//! of several nodes is used only once every partition has a leader and the leaderships are back on their
//! preferred replicas (`GET /v1/admin/cluster`), so no measurement sees the moves that follow a start.
//!
//! With `--webhook-events` and/or `--before-send-ms`, a loopback receiver ([`hooks`]) takes the node's
//! webhook batches and answers its before-send hook, and the result reports what it received.

#![forbid(unsafe_code)]

mod failover;
mod hooks;
mod rebalance;
mod relay;
mod store;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use futures_util::{stream, StreamExt};
use hdrhistogram::Histogram;
use rookery::client::Client;
use rookery::ids::UserId;
use rookery::net::auth;
use serde_json::{json, Value};

const SECRET: &str = "bench-secret";
/// `auth.admin_key` of the started nodes, for `GET /v1/admin/cluster`.
const ADMIN_KEY: &str = "bench-admin";
/// `cluster.election_timeout_ms` when `--election-timeout-ms` is not given (the server's default).
const DEFAULT_ELECTION_TIMEOUT_MS: u64 = 1000;
/// How long a started or restarted cluster gets to put every partition's leadership back on its preferred
/// replica (the server moves 16 per election timeout, starting 3 election timeouts after a change).
const BALANCE_WAIT: Duration = Duration::from_secs(30);

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "rookery-bench",
    about = "Load generator for Rookery (prints JSON)"
)]
struct Cli {
    /// Use a running node instead of starting one (its token_secret must be "bench-secret").
    #[arg(long, global = true)]
    addr: Option<SocketAddr>,
    /// The rookery binary to start (default: next to this executable).
    #[arg(long, global = true)]
    server: Option<PathBuf>,
    /// Durability of the node this bench starts: sync or os.
    #[arg(long, global = true, default_value = "sync")]
    durability: String,
    /// `chat.push_max_members` of the started node (groups above it get `notify` instead of `msg`).
    #[arg(long, global = true, default_value_t = 500)]
    push_max_members: u64,
    /// Extra TOML for the started node's config (tables other than `[chat]`, e.g. `[limits]` then `sends_per_s = 1000`).
    #[arg(long, global = true, default_value = "")]
    extra_config: String,
    /// Start a cluster of this many nodes (on this machine) and spread the clients over them (default 1;
    /// 3 for `failover` and `rolling`, which need at least 3).
    #[arg(long, global = true)]
    nodes: Option<usize>,
    /// `cluster.replicas` of the started cluster (default: the server's, 3 capped at the node count). Merged
    /// into the `[cluster]` table of `--extra-config` if it has one (which must then not set `replicas`).
    #[arg(long, global = true)]
    replicas: Option<usize>,
    /// `cluster.election_timeout_ms` of the started cluster (merged like `--replicas`).
    #[arg(long, global = true)]
    election_timeout_ms: Option<u64>,
    /// Point `webhooks.url` at a loopback receiver (started here) with these event types, comma-separated
    /// (e.g. `offline_message,message`).
    #[arg(long, global = true, value_delimiter = ',')]
    webhook_events: Option<Vec<String>>,
    /// Point `webhooks.before_send_url` at a loopback hook (started here) answering `allow` after this
    /// many milliseconds.
    #[arg(long, global = true)]
    before_send_ms: Option<u64>,
    /// Run the workload against a bare WebSocket relay (`bench/relay.rs`, started here as a process of
    /// its own) instead of Rookery: the yardstick issue 18 measures the fan-out against, in the same
    /// sitting. `dm` and `fanout` only.
    #[arg(long, global = true)]
    relay: bool,
    #[command(subcommand)]
    workload: Workload,
}

#[derive(Subcommand)]
enum Workload {
    /// Direct messages between P pairs.
    Dm {
        #[arg(long, default_value_t = 500)]
        pairs: usize,
        #[arg(long, default_value_t = 16)]
        window: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Total messages per second over all senders (default: as fast as the window allows).
        #[arg(long)]
        rate: Option<u64>,
        #[arg(long, default_value_t = 2)]
        warmup: u64,
    },
    /// Upload then download one file of `mib` MiB over HTTP; throughput and the server's peak memory.
    Media {
        #[arg(long, default_value_t = 100)]
        mib: usize,
        /// Chunks sent at once.
        #[arg(long, default_value_t = 4)]
        parallel: usize,
    },
    /// One group of M connected members, one sender posting K messages: time to reach the last member.
    Fanout {
        #[arg(long, default_value_t = 1000)]
        members: usize,
        #[arg(long, default_value_t = 50)]
        messages: usize,
        /// Messages a second.
        #[arg(long, default_value_t = 5.0)]
        rate: f64,
        #[arg(long, default_value_t = 20)]
        sources: u8,
        /// Also run a `dm` workload at this many msgs/s while the group is busy (its latency is reported).
        #[arg(long)]
        dm_rate: Option<u64>,
        #[arg(long, default_value_t = 100)]
        dm_pairs: usize,
        /// Percentage of the messages that mention `--mentioned` members (0 to 100; issue 16 asks for 10).
        #[arg(long, default_value_t = 0)]
        mention_pct: u8,
        /// Members each mentioning message names (rotating through the group).
        #[arg(long, default_value_t = 5)]
        mentioned: usize,
    },
    /// One group of M connected members and one message: every member reacts to it within `spread_s`
    /// seconds; the latency of each `react` until its `ok`.
    ReactionStorm {
        #[arg(long, default_value_t = 10_000)]
        members: usize,
        #[arg(long, default_value_t = 10.0)]
        spread_s: f64,
        #[arg(long, default_value_t = 20)]
        sources: u8,
    },
    /// The relay `--relay` starts (not a workload).
    #[command(hide = true)]
    ServeRelay {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// The Raft log's write path alone (no server): `entries` entries of `bytes` bytes, made durable
    /// `batch` at a time (one fsync per batch, as a poll does), in the project's log file and, for the
    /// comparison the replication issue asks for, in a sled 0.34 tree flushed the same way.
    Raftlog {
        #[arg(long, default_value_t = 20_000)]
        entries: u64,
        #[arg(long, default_value_t = 256)]
        bytes: usize,
        #[arg(long, default_value_t = 64)]
        batch: u64,
    },
    /// A message's store work alone (no server): the state core and the two sled inserts of a `send`,
    /// `messages` of them round-robin over `convs` conversations, waiting for the group-commit flusher
    /// every `per_flush` messages. Its CPU per message is the floor the store puts under a node's (issue 18).
    /// `--durability` chooses the flusher's mode.
    Store {
        #[arg(long, default_value_t = 200_000)]
        messages: u64,
        #[arg(long, default_value_t = 500)]
        convs: usize,
        #[arg(long, default_value_t = 40)]
        per_flush: u64,
        /// Leave part of the work out, to measure what it costs (a what-if, not a mode of the node).
        #[arg(long, value_enum, default_value_t = store::Without::Nothing)]
        without: store::Without,
    },
    /// Steady 1:1 load with resending senders while nodes are SIGKILLed and restarted one at a time:
    /// each kill's outage, then lost, duplicated and missing messages as `sync` shows them.
    Failover {
        #[arg(long, default_value_t = 100)]
        pairs: usize,
        /// Total messages per second over all senders.
        #[arg(long, default_value_t = 2000)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        kills: usize,
        /// How long a killed node stays down before it is started again.
        #[arg(long, default_value_t = 3000)]
        down_ms: u64,
        /// How long the load runs on the whole cluster before the first kill and after each restart.
        #[arg(long, default_value_t = 5000)]
        settle_ms: u64,
    },
    /// The same load while every node in turn is SIGTERMed and restarted: `unavailable` answers seen
    /// through the other nodes (the target is none), reconnects, and the same checks.
    Rolling {
        #[arg(long, default_value_t = 100)]
        pairs: usize,
        /// Total messages per second over all senders.
        #[arg(long, default_value_t = 2000)]
        rate: u64,
        /// How long the load runs on the whole cluster before the first restart and after each one.
        #[arg(long, default_value_t = 3000)]
        settle_ms: u64,
    },
    /// A cluster filled with `fill_mib` MiB of messages gets one more node (`rookery --join`, then
    /// `POST /v1/admin/nodes`) under a steady 1:1 load: time until settled, snapshot MiB/s streamed, and
    /// the load's p99 while the partitions move next to before.
    Rebalance {
        #[arg(long, default_value_t = 1024)]
        fill_mib: u64,
        #[arg(long, default_value_t = 100)]
        pairs: usize,
        /// Total messages per second over all senders.
        #[arg(long, default_value_t = 2000)]
        rate: u64,
        /// Seconds of load before the node is added (the first is warm-up; the rest is the "before"
        /// p99's window).
        #[arg(long, default_value_t = 10)]
        before_s: u64,
        /// Seconds of load after the layout settled.
        #[arg(long, default_value_t = 5)]
        after_s: u64,
        /// Where the added node keeps its data (default: beside the others' in the bench's temporary
        /// directory). A directory on another disk, or on tmpfs, shows what the shared disk costs.
        #[arg(long)]
        joiner_data_dir: Option<PathBuf>,
    },
    /// N authenticated idle connections; server memory per connection.
    Idle {
        #[arg(long, default_value_t = 19_000)]
        connections: usize,
        /// Loopback source addresses to spread over (127.0.0.2 and up).
        #[arg(long, default_value_t = 20)]
        sources: u8,
    },
}

/// The node (or nodes) under test: started here or given.
struct Server {
    addr: SocketAddr,
    /// Every node's client address (`addr` first).
    addrs: Vec<SocketAddr>,
    /// The started nodes' processes, in node order (node `i` is `n{i+1}`).
    children: Vec<Child>,
    /// The started nodes' peer addresses, in node order.
    peers: Vec<String>,
    /// How the nodes were started, to start one again (`None` for a node given with `--addr`).
    launch: Option<Launch>,
    /// Copies of each partition, as the started cluster reports them (`None` for a node given with `--addr`).
    replicas: Option<usize>,
    _dir: Option<tempfile::TempDir>,
    /// The webhook receiver the started nodes post to.
    hooks: Option<hooks::Receiver>,
}

/// The binary and the config file every started node runs with.
struct Launch {
    binary: PathBuf,
    config: PathBuf,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The id of the `i`th node (from 0) in the generated config.
fn node_id(i: usize) -> String {
    format!("n{}", i + 1)
}

impl Cli {
    /// The nodes to start: `--nodes`, or 3 for the workloads that take nodes down (which need a majority
    /// of every partition's replicas left).
    fn node_count(&self) -> anyhow::Result<usize> {
        let takes_nodes_down = matches!(
            self.workload,
            Workload::Failover { .. } | Workload::Rolling { .. } | Workload::Rebalance { .. }
        );
        match self.nodes {
            Some(n) if takes_nodes_down && n < 3 => {
                bail!("failover and rolling need --nodes 3 or more")
            }
            Some(n) => Ok(n.max(1)),
            None if takes_nodes_down => Ok(3),
            None => Ok(1),
        }
    }

    /// `--extra-config` with the `[cluster]` settings given as options merged in: into its own `[cluster]`
    /// table when it has one (a second `[cluster]` header would make the file invalid), else as a new table.
    fn merged_extra_config(&self) -> anyhow::Result<String> {
        let mut settings = Vec::new();
        if let Some(r) = self.replicas {
            settings.push(("replicas", r.to_string()));
        }
        if let Some(ms) = self.election_timeout_ms {
            settings.push(("election_timeout_ms", ms.to_string()));
        }
        if settings.is_empty() {
            return Ok(self.extra_config.clone());
        }
        let given: toml::Table = self
            .extra_config
            .parse()
            .context("--extra-config is not valid TOML")?;
        let given = given.get("cluster");
        if let Some((key, _)) = settings
            .iter()
            .find(|(k, _)| given.and_then(|c| c.get(k)).is_some())
        {
            bail!("cluster.{key} is set both by an option and in --extra-config");
        }
        let lines: String = settings
            .iter()
            .map(|(k, v)| format!("{k} = {v}\n"))
            .collect();
        let mut merged = String::new();
        let mut placed = false;
        for line in self.extra_config.lines() {
            merged.push_str(line);
            merged.push('\n');
            if !placed && line.trim() == "[cluster]" {
                merged.push_str(&lines);
                placed = true;
            }
        }
        if given.is_some() && !placed {
            bail!("--extra-config sets cluster keys without a `[cluster]` header line to add --replicas or --election-timeout-ms under");
        }
        if !placed {
            merged.push_str("[cluster]\n");
            merged.push_str(&lines);
        }
        Ok(merged)
    }
}

/// Starts node `i` of `config` and waits until it says it is listening.
fn spawn_node(binary: &Path, config: &Path, i: usize) -> anyhow::Result<Child> {
    spawn_with(binary, config, i, &[])
}

/// Where node `i` logs: `$NODE_LOG_DIR/nI.log` when that is set (with `NODE_LOG` as its `RUST_LOG`, for
/// looking into a run), else this process's stderr.
fn node_stderr(i: usize) -> anyhow::Result<Stdio> {
    Ok(match std::env::var_os("NODE_LOG_DIR") {
        Some(dir) => {
            let path = Path::new(&dir).join(format!("{}.log", node_id(i)));
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .with_context(|| format!("opening {}", path.display()))?
                .into()
        }
        None => Stdio::inherit(),
    })
}

/// Starts node `i` of `config` with `--join join`.
fn spawn_joining(binary: &Path, config: &Path, i: usize, join: &str) -> anyhow::Result<Child> {
    spawn_with(binary, config, i, &["--join", join])
}

fn spawn_with(binary: &Path, config: &Path, i: usize, args: &[&str]) -> anyhow::Result<Child> {
    let mut child = Command::new(binary)
        .arg("--config")
        .arg(config)
        .arg("--node")
        .arg(node_id(i))
        .args(args)
        .env(
            "RUST_LOG",
            std::env::var("NODE_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::piped())
        .stderr(node_stderr(i)?)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let mut line = String::new();
    let stdout = child.stdout.take().context("stdout")?;
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)?;
    if !line.contains("listening") {
        bail!("node {} did not start: {line}", node_id(i));
    }
    Ok(child)
}

impl Server {
    fn start(cli: &Cli) -> anyhow::Result<Server> {
        if let Some(addr) = cli.addr {
            return Ok(Server {
                addr,
                addrs: vec![addr],
                children: Vec::new(),
                peers: Vec::new(),
                launch: None,
                replicas: None,
                _dir: None,
                hooks: None,
            });
        }
        if cli.relay {
            return Server::start_relay();
        }
        let binary = match &cli.server {
            Some(p) => p.clone(),
            None => std::env::current_exe()?.with_file_name("rookery"),
        };
        let dir = tempfile::tempdir()?;
        let mut config = format!(
            "[auth]\ntoken_secret = \"{SECRET}\"\nadmin_key = \"{ADMIN_KEY}\"\n[chat]\ndm_requires_friendship = false\n\
             heartbeat_s = 600\npush_max_members = {}\n[store]\ndurability = \"{}\"\n{}\n",
            cli.push_max_members,
            cli.durability,
            cli.merged_extra_config()?
        );
        let hooks = if cli.webhook_events.is_some() || cli.before_send_ms.is_some() {
            let delay = Duration::from_millis(cli.before_send_ms.unwrap_or(0));
            let receiver = hooks::Receiver::start(delay)?;
            config.push_str(
                &receiver.config(cli.webhook_events.as_deref(), cli.before_send_ms.is_some()),
            );
            Some(receiver)
        } else {
            None
        };
        let mut addrs: Vec<SocketAddr> = Vec::new();
        let mut peers = Vec::new();
        for i in 0..cli.node_count()? {
            let (port, peer, id) = (free_port()?, free_port()?, node_id(i));
            peers.push(format!("127.0.0.1:{peer}"));
            config.push_str(&format!(
                "[[nodes]]\nid = \"{id}\"\nlisten = \"127.0.0.1:{port}\"\npeer = \"127.0.0.1:{peer}\"\n\
                 data_dir = \"data/{id}\"\n"
            ));
            addrs.push(format!("127.0.0.1:{port}").parse()?);
        }
        let path = dir.path().join("cluster.toml");
        std::fs::write(&path, config)?;
        let mut server = Server {
            addr: addrs[0],
            addrs,
            children: Vec::new(),
            peers,
            launch: None,
            replicas: None,
            _dir: Some(dir),
            hooks,
        };
        for i in 0..server.addrs.len() {
            // pushed one by one so that the nodes started so far are stopped if a later one fails
            server.children.push(spawn_node(&binary, &path, i)?);
        }
        server.launch = Some(Launch {
            binary,
            config: path,
        });
        server.wait_links()?;
        server.replicas = Some(if server.addrs.len() > 1 {
            let replicas = server.wait_leaders()?;
            if server.wait_balanced().is_none() {
                eprintln!("warning: leaderships still moving {BALANCE_WAIT:?} after the start");
            }
            replicas
        } else {
            1
        });
        Ok(server)
    }

    /// Starts the bare relay (`--relay`) and waits until it accepts connections.
    fn start_relay() -> anyhow::Result<Server> {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let child = Command::new(std::env::current_exe()?)
            .arg("serve-relay")
            .arg("--listen")
            .arg(addr.to_string())
            .stdin(Stdio::null())
            .spawn()
            .context("starting the relay")?;
        let mut server = Server {
            addr,
            addrs: vec![addr],
            children: vec![child],
            peers: Vec::new(),
            launch: None,
            replicas: Some(1),
            _dir: None,
            hooks: None,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            if let Some(status) = server.children[0].try_wait()? {
                bail!("the relay exited at its start: {status}");
            }
            anyhow::ensure!(Instant::now() < deadline, "the relay did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }

    /// The same nodes, without owning their processes (for a workload on another thread).
    fn view(&self) -> Server {
        Server {
            addr: self.addr,
            addrs: self.addrs.clone(),
            children: Vec::new(),
            peers: self.peers.clone(),
            launch: None,
            replicas: self.replicas,
            _dir: None,
            hooks: None,
        }
    }

    /// Waits until every node knows a leader for each partition it keeps. Returns how many replicas a
    /// partition has.
    fn wait_leaders(&self) -> anyhow::Result<usize> {
        self.wait_partitions(Duration::from_secs(30), |p| !p["leader"].is_null())
            .map_err(|view| anyhow::anyhow!("partitions without a leader after 30 s: {view}"))
    }

    /// Waits up to [`BALANCE_WAIT`] until every partition is led by its preferred replica (the first of its
    /// `replicas`): a few election timeouts after a start or a restart the cluster moves leaderships back
    /// there, a few at a time, and a measurement taken meanwhile would measure those moves. Returns how
    /// long it took, `None` if it did not happen in time.
    fn wait_balanced(&self) -> Option<Duration> {
        let started = Instant::now();
        self.wait_partitions(BALANCE_WAIT, |p| p["leader"] == p["replicas"][0])
            .ok()?;
        Some(started.elapsed())
    }

    /// Polls `GET /v1/admin/cluster` on each node until `done` holds for every partition the node keeps (a
    /// node does not follow the leadership of partitions it does not replicate: those stay `null` in its
    /// answer). Returns the replicas per partition, or the last answer when `within` has passed.
    fn wait_partitions(
        &self,
        within: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Result<usize, Value> {
        let deadline = Instant::now() + within;
        let mut replicas = 0;
        for (i, addr) in self.addrs.iter().enumerate() {
            let id = node_id(i);
            loop {
                let view = admin_cluster(*addr).unwrap_or(Value::Null);
                let kept: Vec<&Value> = view["partitions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|p| {
                        p["replicas"]
                            .as_array()
                            .is_some_and(|r| r.iter().any(|n| n == id.as_str()))
                    })
                    .collect();
                if !kept.is_empty() && kept.iter().all(|p| done(p)) {
                    replicas = kept
                        .iter()
                        .filter_map(|p| p["replicas"].as_array().map(Vec::len))
                        .max()
                        .unwrap_or(0);
                    break;
                }
                if Instant::now() > deadline {
                    return Err(view);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(replicas)
    }

    /// SIGKILLs node `i` (a crash: no handover, its connections just end) and reaps it.
    fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        let child = self.children.get_mut(i).context("no such started node")?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// SIGTERMs node `i` (it hands its leaderships over, closes its clients, exits) and waits up to 30 s for
    /// it to exit; `None` if it did not (it is then SIGKILLed).
    fn terminate(&mut self, i: usize) -> anyhow::Result<Option<ExitStatus>> {
        let child = self.children.get_mut(i).context("no such started node")?;
        signal_term(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                return Ok(Some(status));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.kill()?;
        child.wait()?;
        Ok(None)
    }

    /// Starts node `i` again with the same config and id, so on the data it kept, and waits until it is
    /// linked and every partition has a leader again.
    fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        let launch = self
            .launch
            .as_ref()
            .context("only a cluster started by the bench can be restarted")?;
        let child = spawn_node(&launch.binary, &launch.config, i)?;
        *self.children.get_mut(i).context("no such started node")? = child;
        self.wait_links()?;
        self.wait_leaders()?;
        Ok(())
    }
    /// The node the `i`th client connects to.
    fn node(&self, i: usize) -> SocketAddr {
        self.addrs[i % self.addrs.len()]
    }

    /// Waits until every node sees all the others up.
    fn wait_links(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        for addr in &self.addrs {
            loop {
                let text = ureq::get(&format!("http://{addr}/v1/nodes"))
                    .call()?
                    .into_string()?;
                let nodes: Value = serde_json::from_str(&text)?;
                let all_up = nodes
                    .as_array()
                    .is_some_and(|l| l.iter().all(|n| n["up"] == true));
                if all_up {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("cluster links did not come up: {nodes}");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    /// Peer envelopes sent so far by kind, and `bytes`, summed over the nodes.
    fn peer_traffic(&self) -> std::collections::BTreeMap<String, u64> {
        self.counters(|line| {
            if !line.contains("direction=\"sent\"") {
                None
            } else if line.starts_with("rookery_peer_bytes_total") {
                Some("bytes".to_string())
            } else {
                line.strip_prefix("rookery_peer_envelopes_total")
                    .and_then(|l| l.split("kind=\"").nth(1))
                    .and_then(|l| l.split('"').next())
                    .map(str::to_string)
            }
        })
    }

    /// Client frames received (`in.<type>`) and sent (`out.<type>`) so far, summed over the nodes.
    fn client_frames(&self) -> std::collections::BTreeMap<String, u64> {
        self.counters(|line| {
            let (dir, rest) = if let Some(rest) = line.strip_prefix("rookery_frames_in_total") {
                ("in", rest)
            } else {
                ("out", line.strip_prefix("rookery_frames_out_total")?)
            };
            let kind = rest.split("type=\"").nth(1)?.split('"').next()?;
            Some(format!("{dir}.{kind}"))
        })
    }

    /// The bucket counts of histogram `name` so far (`le` in seconds, cumulative), summed over the nodes.
    fn histogram(&self, name: &str) -> std::collections::BTreeMap<String, u64> {
        let prefix = format!("{name}_bucket{{le=\"");
        self.counters(|line| {
            let le = line.strip_prefix(&prefix)?.split('"').next()?;
            Some(le.to_string())
        })
    }

    /// Sums over the nodes' `/metrics` of the samples `pick` names (lines it maps to `None` are skipped).
    fn counters(
        &self,
        pick: impl Fn(&str) -> Option<String>,
    ) -> std::collections::BTreeMap<String, u64> {
        let mut total = std::collections::BTreeMap::new();
        for addr in &self.addrs {
            let Some(text) = ureq::get(&format!("http://{addr}/metrics"))
                .call()
                .ok()
                .and_then(|r| r.into_string().ok())
            else {
                continue;
            };
            for line in text.lines().filter(|l| !l.starts_with('#')) {
                let Some(key) = pick(line) else { continue };
                let value = line
                    .rsplit(' ')
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
                *total.entry(key).or_insert(0) += value;
            }
        }
        total
    }

    /// The measured period's peer traffic (`before` from [`Server::peer_traffic`]), per message.
    fn cluster_report(
        &self,
        before: std::collections::BTreeMap<String, u64>,
        messages: u64,
    ) -> Value {
        if self.addrs.len() < 2 {
            return Value::Null;
        }
        let per_message = per_unit(&before, &self.peer_traffic(), messages);
        json!({
            "nodes": self.addrs.len(),
            "messages": messages,
            "peer_traffic_per_message": per_message,
        })
    }

    /// Resident memory of the (first) started node, in bytes.
    fn rss(&self) -> Option<u64> {
        rss_of(self.children.first()?.id())
    }

    /// CPU seconds used so far by every started node together (`None` if none was started here).
    fn cpu_seconds(&self) -> Option<f64> {
        if self.children.is_empty() {
            return None;
        }
        self.children
            .iter()
            .map(|c| cpu_seconds_of(&c.id().to_string()))
            .sum()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        for child in &mut self.children {
            // a node a workload killed and did not restart is reaped: its pid may be another process's now
            if matches!(child.try_wait(), Ok(None)) {
                signal_term(child);
                let _ = child.wait();
            }
        }
    }
}

/// Sends SIGTERM to a started node (std only sends SIGKILL).
fn signal_term(child: &Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
}

/// `GET /v1/admin/cluster` of the node at `addr`.
fn admin_cluster(addr: SocketAddr) -> anyhow::Result<Value> {
    let text = ureq::get(&format!("http://{addr}/v1/admin/cluster"))
        .set("Authorization", &format!("Bearer {ADMIN_KEY}"))
        .call()?
        .into_string()?;
    Ok(serde_json::from_str(&text)?)
}

fn token(user: &str) -> anyhow::Result<String> {
    Ok(auth::mint(SECRET, &UserId::parse(user)?, 86_400))
}

fn source(i: usize, sources: u8) -> IpAddr {
    let n = u8::try_from(i % usize::from(sources.max(1))).unwrap_or(0);
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + n))
}

async fn connect(
    addr: SocketAddr,
    user: &str,
    device: &str,
    from: IpAddr,
) -> anyhow::Result<Client> {
    let mut c = Client::connect_from(addr, Some(from)).await?;
    c.auth(&token(user)?, device).await?;
    Ok(c)
}

fn conv(a: &str, b: &str) -> String {
    if a < b {
        format!("dm:{a}:{b}")
    } else {
        format!("dm:{b}:{a}")
    }
}

fn quantiles(h: &Histogram<u64>) -> Value {
    let ms = |v: u64| (v as f64) / 1000.0;
    json!({
        "p50": ms(h.value_at_quantile(0.50)),
        "p99": ms(h.value_at_quantile(0.99)),
        "p999": ms(h.value_at_quantile(0.999)),
        "max": ms(h.max()),
        "samples": h.len(),
    })
}

/// The fields of a server frame the load generator looks at (parsed without building a `Value`).
#[derive(serde::Deserialize)]
struct Incoming<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    #[serde(default)]
    seq: u64,
    #[serde(default, borrow)]
    code: Option<&'a str>,
    #[serde(default)]
    body: Option<SentAt>,
}

#[derive(serde::Deserialize)]
struct SentAt {
    #[serde(default)]
    t: u64,
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    delivered: AtomicU64,
    errors: AtomicU64,
}

async fn dm(
    server: &Server,
    pairs: usize,
    window: usize,
    seconds: u64,
    rate: Option<u64>,
    warmup: u64,
) -> anyhow::Result<Value> {
    let epoch = Instant::now();
    let mut senders = Vec::with_capacity(pairs);
    let mut receivers = Vec::with_capacity(pairs);
    let connections: Vec<(usize, Client, Client)> = stream::iter(0..pairs)
        .map(|i| async move {
            let (a, b) = (format!("s{i}"), format!("r{i}"));
            let sender = connect(server.node(i), &a, "d", source(i, 20)).await?;
            let receiver = connect(server.node(i + 1), &b, "d", source(i + 7, 20)).await?;
            anyhow::Ok((i, sender, receiver))
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let counters = Arc::new(Counters::default());
    let measuring = Arc::new(AtomicBool::new(false));
    let sending = Arc::new(AtomicBool::new(true));
    let per_sender_interval = rate.map(|r| Duration::from_secs_f64(pairs as f64 / r.max(1) as f64));
    // DM_SLOW_MS=N: every measured message delivered N ms or more after its send, with its send time (a
    // stall of the whole node shows as every conversation at once, at times that line up with a profile)
    let slow_us = std::env::var("DM_SLOW_MS")
        .ok()
        .and_then(|ms| ms.parse::<u64>().ok())
        .map(|ms| ms * 1000);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    for (i, mut sender, mut receiver) in connections {
        let conv_id = conv(&format!("s{i}"), &format!("r{i}"));
        let (counters_s, measuring_s, sending_s) =
            (counters.clone(), measuring.clone(), sending.clone());
        let conv_s = conv_id.clone();
        senders.push(tokio::spawn(async move {
            let mut in_flight = 0usize;
            let mut n = 0u64;
            // stagger the senders over one interval so a fixed rate is a steady stream, not bursts
            let phase = per_sender_interval.map_or(Duration::ZERO, |iv| iv.mul_f64(i as f64 / pairs as f64));
            let mut next_send = tokio::time::Instant::now() + phase;
            loop {
                let sending = sending_s.load(Ordering::Relaxed);
                let due = per_sender_interval.is_none_or(|_| tokio::time::Instant::now() >= next_send);
                if sending && in_flight < window && due {
                    n += 1;
                    let t = u64::try_from(epoch.elapsed().as_micros()).unwrap_or(0);
                    let frame = format!(
                        r#"{{"type":"send","cid":"c{n}","conv":"{conv_s}","body":{{"t":{t},"text":"hello, this is a benchmark message"}}}}"#
                    );
                    if sender.send_text(frame).await.is_err() {
                        break;
                    }
                    in_flight += 1;
                    if let Some(iv) = per_sender_interval {
                        next_send += iv;
                    }
                    continue;
                }
                if !sending && in_flight == 0 {
                    break;
                }
                let text = if per_sender_interval.is_some() && in_flight < window && sending {
                    // rate mode: wake for the next send even if no reply comes
                    tokio::select! {
                        text = sender.next_text() => text,
                        _ = tokio::time::sleep_until(next_send) => continue,
                    }
                } else {
                    sender.next_text().await
                };
                let Ok(Some(text)) = text else { break };
                let Ok(frame) = serde_json::from_str::<Incoming<'_>>(&text) else { continue };
                match frame.kind {
                    "sent" => {
                        in_flight -= 1;
                        if measuring_s.load(Ordering::Relaxed) {
                            counters_s.accepted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    "error" => {
                        in_flight -= 1;
                        counters_s.errors.fetch_add(1, Ordering::Relaxed);
                        if frame.code == Some("rate_limited") {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                    _ => {}
                }
            }
            sender
        }));
        let (counters_r, measuring_r) = (counters.clone(), measuring.clone());
        let mut stop = stop_rx.clone();
        receivers.push(tokio::spawn(async move {
            let mut hist =
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
            let mut last = 0u64;
            let mut unacked = 0;
            loop {
                let text = tokio::select! {
                    _ = stop.changed() => break,
                    text = receiver.next_text() => text,
                };
                let Ok(Some(text)) = text else { break };
                let Ok(frame) = serde_json::from_str::<Incoming<'_>>(&text) else {
                    continue;
                };
                if frame.kind != "msg" || frame.seq <= last {
                    continue; // not a message, or a re-push of something we have
                }
                last = frame.seq;
                if measuring_r.load(Ordering::Relaxed) {
                    let now = u64::try_from(epoch.elapsed().as_micros()).unwrap_or(0);
                    let sent_at = frame.body.map_or(now, |b| b.t);
                    let took = now.saturating_sub(sent_at);
                    let _ = hist.record(took.max(1));
                    if slow_us.is_some_and(|slow| took >= slow) {
                        eprintln!(
                            "slow: sent {:.3} s after the bench started, delivered after {:.1} ms, {conv_id}",
                            sent_at as f64 / 1e6,
                            took as f64 / 1e3
                        );
                    }
                    counters_r.delivered.fetch_add(1, Ordering::Relaxed);
                }
                unacked += 1;
                if unacked >= 8 {
                    unacked = 0;
                    let ack = format!(r#"{{"type":"ack","conv":"{conv_id}","seq":{last}}}"#);
                    let _ = receiver.send_text(ack).await;
                }
            }
            hist
        }));
    }

    tokio::time::sleep(Duration::from_secs(warmup)).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let rss_before = server.rss();
    let traffic_before = server.peer_traffic();
    let cpu = CpuUse::start(server);
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu.report(server, elapsed, counters.delivered.load(Ordering::Relaxed));
    let cluster = server.cluster_report(traffic_before, counters.accepted.load(Ordering::Relaxed));
    let rss_during = server.rss();
    sending.store(false, Ordering::Relaxed);
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for s in senders {
        let _ = s.await;
    }
    // let the last pushes arrive, then stop the receivers
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = stop_tx.send(true);
    for r in receivers {
        hist.add(r.await?)?;
    }
    Ok(json!({
        "workload": "dm",
        "pairs": pairs,
        "window": window,
        "seconds": seconds,
        "rate": rate,
        "accepted_per_s": (counters.accepted.load(Ordering::Relaxed) as f64 / elapsed).round(),
        "delivered_per_s": (counters.delivered.load(Ordering::Relaxed) as f64 / elapsed).round(),
        "latency_ms": quantiles(&hist),
        "errors": counters.errors.load(Ordering::Relaxed),
        "server_rss_mib": rss_during.or(rss_before).map(|b| b / (1 << 20)),
        "cpu": cpu,
        "cluster": cluster,
    }))
}

async fn idle(server: &Server, connections: usize, sources: u8) -> anyhow::Result<Value> {
    let addr = server.addr;
    // settle the server with a few connections so one-time allocations are not counted per connection
    let mut warm = Vec::new();
    for i in 0..50 {
        warm.push(connect(addr, &format!("w{i}"), "d", source(i, sources)).await?);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = server
        .rss()
        .context("server memory (start the node from the bench)")?;
    let started = Instant::now();
    let clients: Vec<anyhow::Result<Client>> = stream::iter(0..connections)
        .map(|i| async move { connect(addr, &format!("u{i}"), "d", source(i, sources)).await })
        .buffer_unordered(256)
        .collect()
        .await;
    let connect_s = started.elapsed().as_secs_f64();
    let failed = clients.iter().filter(|c| c.is_err()).count();
    if let Some(Err(e)) = clients.iter().find(|c| c.is_err()) {
        eprintln!("first connection failure: {e}");
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = server.rss().context("server memory")?;
    let held = connections - failed;
    let per_conn = after.saturating_sub(before) as f64 / held.max(1) as f64;
    drop(warm);
    Ok(json!({
        "workload": "idle",
        "connections": held,
        "failed": failed,
        "connect_seconds": (connect_s * 10.0).round() / 10.0,
        "server_rss_before_mib": before / (1 << 20),
        "server_rss_after_mib": after / (1 << 20),
        "bytes_per_connection": per_conn.round(),
    }))
}

/// Resident memory of a process, in bytes (from `/proc/PID/status`).
/// A `msgs` reply, as far as the fan-out workload reads it.
#[derive(serde::Deserialize)]
struct MsgsReply {
    msgs: Vec<PulledMsg>,
}

#[derive(serde::Deserialize)]
struct PulledMsg {
    seq: u64,
    #[serde(default)]
    body: Option<SentAt>,
}

/// One group of `members` connected members plus its owner posting `messages` at `rate` a second. For each
/// message: the time until the last member has it (pushed, or pulled with `sync` after a `notify`).
#[allow(clippy::too_many_arguments)]
async fn fanout(
    server: &Server,
    members: usize,
    messages: usize,
    rate: f64,
    sources: u8,
    busy_dm: Option<(u64, usize)>,
    mentions: (u8, usize),
) -> anyhow::Result<Value> {
    let epoch = Instant::now();
    let conv = "g:bench";
    let mut owner = connect(server.node(0), "owner", "d", source(0, sources)).await?;
    let names: Vec<String> = (0..members).map(|i| format!("m{i}")).collect();
    // create with up to 999 members, add the rest 1000 at a time
    let first: Vec<&String> = names.iter().take(999).collect();
    owner
        .call(json!({"type":"group_create","conv":conv,"name":"Bench","members":first}))
        .await?;
    for chunk in names[first.len()..].chunks(1000) {
        owner
            .call(json!({"type":"group_add","conv":conv,"members":chunk}))
            .await?;
    }
    let setup_seq = owner
        .call(json!({"type":"sync","conv":conv,"after":0,"limit":1}))
        .await?["last_seq"]
        .as_u64()
        .unwrap_or(0);
    let clients: Vec<anyhow::Result<Client>> = stream::iter(names.iter().enumerate())
        .map(|(i, name)| async move {
            connect(server.node(i + 1), name, "d", source(i + 1, sources)).await
        })
        .buffer_unordered(256)
        .collect()
        .await;
    let clients: Vec<Client> = clients.into_iter().collect::<anyhow::Result<_>>()?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for mut client in clients {
        let mut stop = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            // (seq, latency µs) for every measured message this member got
            let mut got: Vec<(u64, u64)> = Vec::new();
            let mut have = setup_seq;
            loop {
                let text = tokio::select! {
                    _ = stop.changed() => break,
                    text = client.next_text() => text,
                };
                let Ok(Some(text)) = text else { break };
                let now = u64::try_from(epoch.elapsed().as_micros()).unwrap_or(0);
                let Ok(frame) = serde_json::from_str::<Incoming<'_>>(&text) else { continue };
                match frame.kind {
                    "msg" if frame.seq > have => {
                        have = frame.seq;
                        if let Some(b) = frame.body {
                            got.push((frame.seq, now.saturating_sub(b.t)));
                        }
                        let ack = format!(r#"{{"type":"ack","conv":"g:bench","seq":{have}}}"#);
                        let _ = client.send_text(ack).await;
                    }
                    "notify" => {
                        let pull = format!(r#"{{"type":"sync","rid":1,"conv":"g:bench","after":{have},"limit":1000}}"#);
                        let _ = client.send_text(pull).await;
                    }
                    "msgs" => {
                        if let Ok(reply) = serde_json::from_str::<MsgsReply>(&text) {
                            for m in reply.msgs {
                                if m.seq <= have {
                                    continue;
                                }
                                have = m.seq;
                                if let Some(b) = m.body {
                                    got.push((m.seq, now.saturating_sub(b.t)));
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
            got
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let traffic_before = server.peer_traffic();
    let frames_before = server.client_frames();
    let send_before = server.histogram(SEND_SECONDS);
    let flush_before = server.histogram(FLUSH_SECONDS);
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let started = Instant::now();
    let sending = async {
        let (mention_pct, mentioned) = mentions;
        for i in 0..messages {
            let t = u64::try_from(epoch.elapsed().as_micros()).unwrap_or(0);
            // spread the mentioning messages evenly: message i mentions when the running share crosses
            // a whole number
            let pct = usize::from(mention_pct.min(100));
            let mentions = if i * pct / 100 != (i + 1) * pct / 100 {
                let names: Vec<String> = (0..mentioned.min(members))
                    .map(|k| format!("\"m{}\"", (i * mentioned + k) % members.max(1)))
                    .collect();
                format!(r#","mentions":[{}]"#, names.join(","))
            } else {
                String::new()
            };
            let frame = format!(
                r#"{{"type":"send","rid":{i},"cid":"f{i}","conv":"{conv}","body":{{"t":{t}}}{mentions}}}"#
            );
            owner.send_text(frame).await?;
            tokio::time::sleep_until(tokio::time::Instant::from_std(
                started + interval * u32::try_from(i + 1).unwrap_or(u32::MAX),
            ))
            .await;
        }
        anyhow::Ok(started.elapsed().as_secs_f64())
    };
    // 1:1 traffic alongside: connects, warms up 1 s, then measures while the group is still busy. It runs
    // on its own runtime thread, like separate devices would: in the group members' executor its receivers
    // would queue behind 10,000 member tasks and measure the generator, not the server.
    let dm_alongside = busy_dm.map(|(dm_rate, pairs)| {
        let busy_s = Duration::from_secs_f64(messages as f64 / rate.max(0.001)).as_secs();
        let seconds = busy_s.saturating_sub(3).max(1);
        let view = server.view();
        std::thread::spawn(move || -> anyhow::Result<Value> {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("bench-dm")
                .enable_all()
                .build()?;
            runtime.block_on(dm(&view, pairs, 16, seconds, Some(dm_rate), 1))
        })
    });
    let send_span = sending.await?;
    let dm_result = match dm_alongside {
        Some(thread) => Some(
            tokio::task::spawn_blocking(move || thread.join())
                .await?
                .map_err(|_| anyhow::anyhow!("the dm thread panicked"))??,
        ),
        None => None,
    };
    // let the last deliveries and pulls finish
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cluster = server.cluster_report(traffic_before, messages as u64);
    let frames_per_delivery = per_unit(
        &frames_before,
        &server.client_frames(),
        (messages * members) as u64,
    );
    let server_send_ms = histogram_quantiles(&send_before, &server.histogram(SEND_SECONDS));
    let server_flush_ms = histogram_quantiles(&flush_before, &server.histogram(FLUSH_SECONDS));
    let _ = stop_tx.send(true);
    let mut last_member: std::collections::HashMap<u64, u64> = std::collections::HashMap::new();
    let mut deliveries = 0usize;
    let mut complete_members = 0usize;
    for task in tasks {
        let got = task.await?;
        deliveries += got.len();
        if got.len() >= messages {
            complete_members += 1;
        }
        for (seq, lat) in got {
            let e = last_member.entry(seq).or_insert(0);
            *e = (*e).max(lat);
        }
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for lat in last_member.values() {
        hist.record((*lat).max(1))?;
    }
    Ok(json!({
        "workload": "fanout",
        "members": members,
        "messages": messages,
        "rate": rate,
        "mention_pct": mentions.0,
        "mentioned": mentions.1,
        "members_with_every_message": complete_members,
        "deliveries": deliveries,
        "deliveries_per_s": (deliveries as f64 / send_span).round(),
        "last_member_ms": quantiles(&hist),
        "frames_per_delivery": frames_per_delivery,
        "server_send_to_sent_ms": server_send_ms,
        "server_flush_ms": server_flush_ms,
        "cluster": cluster,
        "dm_alongside": dm_result,
    }))
}

/// A group of `members` connected members and one message; every member reacts to it once, the reactions
/// spread evenly over `spread_s` seconds. Reports the p50/p99 of `react` → `ok` and the count `sync` shows
/// afterwards (which must equal the members).
async fn reaction_storm(
    server: &Server,
    members: usize,
    spread_s: f64,
    sources: u8,
) -> anyhow::Result<Value> {
    let conv = "g:storm";
    let mut owner = connect(server.node(0), "owner", "d", source(0, sources)).await?;
    let names: Vec<String> = (0..members).map(|i| format!("m{i}")).collect();
    let first: Vec<&String> = names.iter().take(999).collect();
    owner
        .call(json!({"type":"group_create","conv":conv,"name":"Storm","members":first}))
        .await?;
    for chunk in names[first.len()..].chunks(1000) {
        owner
            .call(json!({"type":"group_add","conv":conv,"members":chunk}))
            .await?;
    }
    let seq = owner
        .call(json!({"type":"send","cid":"storm","conv":conv,"body":{"text":"react to me"}}))
        .await?["seq"]
        .as_u64()
        .unwrap_or(0);
    let clients: Vec<anyhow::Result<Client>> = stream::iter(names.iter().enumerate())
        .map(|(i, name)| async move {
            connect(server.node(i + 1), name, "d", source(i + 1, sources)).await
        })
        .buffer_unordered(256)
        .collect()
        .await;
    let clients: Vec<Client> = clients.into_iter().collect::<anyhow::Result<_>>()?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let step = Duration::from_secs_f64(spread_s.max(0.0) / members.max(1) as f64);
    let mut tasks = Vec::new();
    for (i, mut client) in clients.into_iter().enumerate() {
        let at = started + step * u32::try_from(i).unwrap_or(u32::MAX);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
            let sent = Instant::now();
            let reply = client
                .request(json!({"type":"react","conv":conv,"seq":seq,"emoji":"👍","on":true}))
                .await;
            let ok = matches!(&reply, Ok(r) if r["type"] == "ok");
            (
                ok,
                u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX),
            )
        }));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut failed = 0usize;
    for task in tasks {
        let (ok, micros) = task.await?;
        if ok {
            hist.record(micros.max(1))?;
        } else {
            failed += 1;
        }
    }
    let span = started.elapsed().as_secs_f64();
    let page = owner
        .call(json!({"type":"sync","conv":conv,"after":seq - 1,"limit":1}))
        .await?;
    Ok(json!({
        "workload": "reaction_storm",
        "members": members,
        "spread_s": spread_s,
        "span_s": span,
        "react_ok_ms": quantiles(&hist),
        "failed": failed,
        "count_after": page["msgs"][0]["reactions"]["👍"],
    }))
}

/// How much each counter grew from `before` to `after`, divided by `units`, to two decimals (counters that
/// did not grow by at least 0.005 per unit are left out).
fn per_unit(
    before: &std::collections::BTreeMap<String, u64>,
    after: &std::collections::BTreeMap<String, u64>,
    units: u64,
) -> serde_json::Map<String, Value> {
    after
        .iter()
        .filter_map(|(k, v)| {
            let grew = v.saturating_sub(before.get(k).copied().unwrap_or(0));
            let per = (grew as f64 / units.max(1) as f64 * 100.0).round() / 100.0;
            (per != 0.0).then(|| (k.clone(), json!(per)))
        })
        .collect()
}

/// The server's histograms the `fanout` report reads.
const SEND_SECONDS: &str = "rookery_send_seconds";
const FLUSH_SECONDS: &str = "rookery_store_flush_seconds";

/// p50 and p99 (the upper bound of the bucket they fall in, in ms) of the observations a Prometheus
/// histogram gained between two scrapes of its cumulative buckets.
fn histogram_quantiles(
    before: &std::collections::BTreeMap<String, u64>,
    after: &std::collections::BTreeMap<String, u64>,
) -> Value {
    let mut buckets: Vec<(f64, u64)> = after
        .iter()
        .map(|(le, n)| {
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::INFINITY)
            };
            (
                bound,
                n.saturating_sub(before.get(le).copied().unwrap_or(0)),
            )
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last().map_or(0, |b| b.1);
    // the observation at rank ceil(total * per_mille / 1000)
    let at = |per_mille: u64| {
        let rank = (total * per_mille).div_ceil(1000);
        buckets
            .iter()
            .find(|(_, n)| *n >= rank.max(1))
            .map(|(le, _)| {
                if le.is_finite() {
                    json!(le * 1000.0)
                } else {
                    json!("inf")
                }
            })
    };
    json!({"count": total, "p50_le": at(500), "p99_le": at(990)})
}

/// User plus system CPU seconds a process has used (`pid` "self" for the load generator), from
/// `/proc/PID/stat`, whose times are in clock ticks of 1/100 s on Linux.
fn cpu_seconds_of(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // the command name may hold spaces: the fields counted from 3 start after its closing parenthesis
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// CPU use over a measured stretch: the servers' and the load generator's, in cores, and the servers'
/// CPU per delivered message.
struct CpuUse {
    server: Option<f64>,
    generator: Option<f64>,
}

impl CpuUse {
    fn start(server: &Server) -> CpuUse {
        CpuUse {
            server: server.cpu_seconds(),
            generator: cpu_seconds_of("self"),
        }
    }

    fn report(&self, server: &Server, elapsed: f64, delivered: u64) -> Value {
        let server_s = server.cpu_seconds().zip(self.server).map(|(b, a)| b - a);
        let generator_s = cpu_seconds_of("self")
            .zip(self.generator)
            .map(|(b, a)| b - a);
        json!({
            "server_cores": server_s.map(|s| (s / elapsed * 100.0).round() / 100.0),
            "generator_cores": generator_s.map(|s| (s / elapsed * 100.0).round() / 100.0),
            "server_us_per_msg": server_s
                .filter(|_| delivered > 0)
                .map(|s| (s * 1e6 / delivered as f64 * 10.0).round() / 10.0),
        })
    }
}

fn rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Samples a process's RSS every 20 ms until stopped; returns the peak.
struct RssPeak {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl RssPeak {
    fn start(pid: u32) -> RssPeak {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peak = 0;
            while !flag.load(Ordering::Relaxed) {
                peak = peak.max(rss_of(pid).unwrap_or(0));
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        });
        RssPeak { stop, thread }
    }
    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or(0)
    }
}

/// Uploads `mib` MiB in chunks (`parallel` at a time), completes, downloads it back and checks it.
fn media(addr: SocketAddr, pid: Option<u32>, mib: usize, parallel: usize) -> anyhow::Result<Value> {
    use sha2::Digest;
    let pid = pid.context("the media workload measures a node it starts itself")?;
    let bearer = format!("Bearer {}", token("uploader")?);
    // content that neither compresses nor repeats: a xorshift stream
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let bytes: Vec<u8> = (0..mib * (1 << 20) / 8)
        .flat_map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()
        })
        .collect();
    let sha = hex::encode(sha2::Sha256::digest(&bytes));
    let base = format!("http://{addr}");
    let rss_before = rss_of(pid).unwrap_or(0);

    let started = Instant::now();
    let peak = RssPeak::start(pid);
    let body =
        json!({"size": bytes.len(), "sha256": sha, "mime": "video/mp4", "name": "bench.mp4"})
            .to_string();
    let created: Value = ureq::post(&format!("{base}/v1/uploads"))
        .set("Authorization", &bearer)
        .send_string(&body)?
        .into_string()?
        .parse()?;
    let upload = created["upload"].as_str().context("upload id")?.to_string();
    let chunk = usize::try_from(created["chunk_size"].as_u64().context("chunk size")?)?;
    let chunks: Vec<(usize, &[u8])> = bytes.chunks(chunk).enumerate().collect();
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let workers: Vec<_> = chunks
            .chunks(chunks.len().div_ceil(parallel.max(1)))
            .map(|part| {
                let (base, upload, bearer) = (&base, &upload, &bearer);
                scope.spawn(move || -> anyhow::Result<()> {
                    for (i, data) in part {
                        ureq::put(&format!("{base}/v1/uploads/{upload}/{i}"))
                            .set("Authorization", bearer)
                            .send_bytes(data)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join()
                .map_err(|_| anyhow::anyhow!("upload thread panicked"))??;
        }
        Ok(())
    })?;
    let done: Value = ureq::post(&format!("{base}/v1/uploads/{upload}/complete"))
        .set("Authorization", &bearer)
        .call()?
        .into_string()?
        .parse()?;
    let upload_s = started.elapsed().as_secs_f64();
    let rss_upload_peak = peak.finish();
    let id = done["media"].as_str().context("media id")?.to_string();

    let started = Instant::now();
    let peak = RssPeak::start(pid);
    let mut reader = ureq::get(&format!("{base}/v1/media/{id}"))
        .set("Authorization", &bearer)
        .call()?
        .into_reader();
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0usize;
    loop {
        let n = std::io::Read::read(&mut reader, &mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n;
    }
    let download_s = started.elapsed().as_secs_f64();
    let rss_download_peak = peak.finish();
    anyhow::ensure!(
        total == bytes.len() && hex::encode(hasher.finalize()) == sha,
        "download differs from upload"
    );
    let mib_f = (bytes.len() as f64) / f64::from(1 << 20);
    Ok(json!({
        "workload": "media",
        "mib": mib,
        "parallel": parallel,
        "upload_mib_per_s": (mib_f / upload_s * 10.0).round() / 10.0,
        "download_mib_per_s": (mib_f / download_s * 10.0).round() / 10.0,
        "server_rss_before_mib": rss_before / (1 << 20),
        "server_rss_peak_upload_mib": rss_upload_peak / (1 << 20),
        "server_rss_peak_download_mib": rss_download_peak / (1 << 20),
    }))
}

/// Entries a second and bytes on disk for the Raft log file and for a sled tree, same entries and syncs.
fn raftlog(entries: u64, bytes: usize, batch: u64) -> anyhow::Result<Value> {
    use protobuf::Message as _;
    use raft::eraftpb::Entry;
    let batch = batch.max(1);
    let entry = |index: u64| Entry {
        index,
        term: 1,
        data: vec![b'x'; bytes].into(),
        ..Entry::default()
    };
    let dir = tempfile::tempdir()?;
    let (mut log, _) = rookery::raft::log::RaftLog::open(dir.path(), true)?;
    let started = Instant::now();
    let mut index = 1;
    while index <= entries {
        let round: Vec<Entry> = (index..(index + batch).min(entries + 1))
            .map(entry)
            .collect();
        index += round.len() as u64;
        log.append(0, &round)?;
        log.sync()?;
    }
    let log_secs = started.elapsed().as_secs_f64();
    let log_bytes = log.len();
    drop(log);

    let sled_dir = tempfile::tempdir()?;
    let db = sled::open(sled_dir.path())?;
    let tree = db.open_tree("raft_log")?;
    let started = Instant::now();
    let mut index = 1;
    while index <= entries {
        let end = (index + batch).min(entries + 1);
        for i in index..end {
            tree.insert(i.to_be_bytes(), entry(i).write_to_bytes()?)?;
        }
        index = end;
        db.flush()?;
    }
    let sled_secs = started.elapsed().as_secs_f64();
    drop(tree);
    drop(db);
    let sled_bytes = dir_bytes(sled_dir.path());
    let per_s = |secs: f64| (entries as f64 / secs).round();
    Ok(json!({
        "workload": "raftlog",
        "entries": entries,
        "entry_bytes": bytes,
        "entries_per_sync": batch,
        "log_entries_per_s": per_s(log_secs),
        "log_mib_on_disk": log_bytes as f64 / f64::from(1 << 20),
        "sled_entries_per_s": per_s(sled_secs),
        "sled_mib_on_disk": sled_bytes as f64 / f64::from(1 << 20),
    }))
}

/// Bytes of every file under `dir`.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Workload::Raftlog {
        entries,
        bytes,
        batch,
    } = cli.workload
    {
        println!("{}", raftlog(entries, bytes, batch)?);
        return Ok(());
    }
    if let Workload::Store {
        messages,
        convs,
        per_flush,
        without,
    } = cli.workload
    {
        let durability = match cli.durability.as_str() {
            "os" => rookery::config::Durability::Os,
            _ => rookery::config::Durability::Sync,
        };
        println!(
            "{}",
            store::run(
                messages,
                convs.max(1),
                per_flush.max(1),
                durability,
                without
            )?
        );
        return Ok(());
    }
    if let Workload::ServeRelay { listen } = cli.workload {
        return relay::serve(listen, SECRET);
    }
    if cli.relay && !matches!(cli.workload, Workload::Dm { .. } | Workload::Fanout { .. }) {
        bail!("--relay serves the dm and fanout workloads only");
    }
    if cli.relay && (cli.addr.is_some() || cli.nodes.is_some()) {
        bail!("--relay starts a relay of its own: no --addr or --nodes with it");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut server = Server::start(&cli)?;
        let mut result = match cli.workload {
            Workload::Dm {
                pairs,
                window,
                seconds,
                rate,
                warmup,
            } => dm(&server, pairs, window, seconds, rate, warmup).await?,
            Workload::Idle {
                connections,
                sources,
            } => idle(&server, connections, sources).await?,
            Workload::Fanout {
                members,
                messages,
                rate,
                sources,
                dm_rate,
                dm_pairs,
                mention_pct,
                mentioned,
            } => {
                let busy_dm = dm_rate.map(|r| (r, dm_pairs));
                let mentions = (mention_pct, mentioned);
                fanout(&server, members, messages, rate, sources, busy_dm, mentions).await?
            }
            Workload::ReactionStorm {
                members,
                spread_s,
                sources,
            } => reaction_storm(&server, members, spread_s, sources).await?,
            Workload::Failover {
                pairs,
                rate,
                kills,
                down_ms,
                settle_ms,
            } => {
                let load = failover::LoadShape { pairs, rate };
                let kills = failover::Kills {
                    kills,
                    down: Duration::from_millis(down_ms),
                    settle: Duration::from_millis(settle_ms),
                    election_timeout_ms: cli
                        .election_timeout_ms
                        .unwrap_or(DEFAULT_ELECTION_TIMEOUT_MS),
                };
                failover::failover(&mut server, load, kills).await?
            }
            Workload::Rolling {
                pairs,
                rate,
                settle_ms,
            } => {
                let load = failover::LoadShape { pairs, rate };
                failover::rolling(&mut server, load, Duration::from_millis(settle_ms)).await?
            }
            Workload::Rebalance {
                fill_mib,
                pairs,
                rate,
                before_s,
                after_s,
                joiner_data_dir,
            } => {
                let load = failover::LoadShape { pairs, rate };
                let plan = rebalance::Plan {
                    fill_mib,
                    joiner_data_dir,
                    before: Duration::from_secs(before_s),
                    after: Duration::from_secs(after_s),
                };
                rebalance::rebalance(&mut server, load, plan).await?
            }
            Workload::Raftlog { .. } | Workload::Store { .. } | Workload::ServeRelay { .. } => {
                unreachable!("run before the server starts")
            }
            Workload::Media { mib, parallel } => {
                let (addr, pid) = (server.addr, server.children.first().map(Child::id));
                tokio::task::spawn_blocking(move || media(addr, pid, mib, parallel)).await??
            }
        };
        if cli.relay {
            result["server"] = json!("relay");
        } else {
            result["server"] = json!("rookery");
            result["durability"] = json!(cli.durability);
            result["replicas"] = json!(server.replicas);
        }
        if let Some(hooks) = &server.hooks {
            // let the node's sender deliver what the measured period produced
            tokio::time::sleep(Duration::from_secs(2)).await;
            result["webhooks"] = hooks.report();
        }
        println!("{result}");
        anyhow::Ok(())
    })
}
