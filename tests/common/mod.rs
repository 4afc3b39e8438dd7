//! Shared test harness: start a real node (in-process with its own actix system, or the real binary), connect
//! real WebSocket clients, and fixtures for the usual set-ups.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rookery::client::Client;
use rookery::config::Config;
use rookery::ids::UserId;
use rookery::net::auth;
use rookery::Node;
use serde_json::{json, Value};

pub const SECRET: &str = "test-secret";
pub const ADMIN_KEY: &str = "test-admin";
pub const WAIT: Duration = Duration::from_secs(5);

/// A config for one node with `extra` TOML (sections like `[chat]`) before the node entry.
pub fn config_text(extra: &str, listen: &str, data_dir: &Path) -> String {
    format!(
        "[auth]\ntoken_secret = \"{SECRET}\"\nadmin_key = \"{ADMIN_KEY}\"\n{extra}\n\
         [[nodes]]\nid = \"n1\"\nlisten = \"{listen}\"\npeer = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n",
        data_dir.display()
    )
}

/// One run of an in-process node: its address, its stop signal and its thread.
struct Running {
    addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Running {
    fn launch(extra: &str, dir: &Path) -> Running {
        let config = Config::parse(&config_text(extra, "127.0.0.1:0", dir)).expect("test config");
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            actix_rt::System::new().block_on(async move {
                match Node::start(config, None) {
                    Ok(node) => {
                        let _ = ready_tx.send(Ok(node.addr()));
                        if let Err(e) = node
                            .run(async move {
                                let _ = stop_rx.await;
                            })
                            .await
                        {
                            eprintln!("node stopped with error: {e}");
                        }
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                    }
                }
            });
        });
        let addr = ready_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("node starts")
            .expect("node starts");
        Running { addr, stop, thread }
    }

    fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

/// A node running in-process on 127.0.0.1:0, in its own thread and actix system, on a temporary data dir.
pub struct TestNode {
    pub addr: SocketAddr,
    pub dir: PathBuf,
    extra: String,
    running: Option<Running>,
    _tmp: tempfile::TempDir,
}

impl TestNode {
    pub fn start() -> TestNode {
        Self::start_with("")
    }

    /// Starts with extra config, e.g. `"[chat]\nack_timeout_ms = 300"`.
    pub fn start_with(extra: &str) -> TestNode {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("data");
        let running = Running::launch(extra, &dir);
        TestNode {
            addr: running.addr,
            dir,
            extra: extra.to_string(),
            running: Some(running),
            _tmp: tmp,
        }
    }

    /// Stops the node cleanly (flushes) and starts it again on the same data directory (a new port).
    pub fn restart(&mut self) {
        self.shutdown();
        let running = Running::launch(&self.extra, &self.dir);
        self.addr = running.addr;
        self.running = Some(running);
    }

    pub fn shutdown(&mut self) {
        if let Some(running) = self.running.take() {
            running.stop();
        }
    }

    pub async fn login(&self, user: &str, device: &str) -> Client {
        let (client, welcome) = Client::login(self.addr, &token(user), device)
            .await
            .expect("login");
        assert_eq!(welcome["type"], "welcome");
        client
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.shutdown();
    }
}

pub fn token(user: &str) -> String {
    auth::mint(SECRET, &UserId::parse(user).expect("user id"), 3600)
}

/// A free loopback port for a process the test starts, taken below the kernel's ephemeral range
/// (32768-60999 on Linux). A port from `bind(":0")` is itself ephemeral: released again, it can be taken by
/// any outgoing connection of a test running beside this one before the node binds it (seen in CI as a node
/// that exits at start). Ports here come from a per-process counter that starts at an offset derived from the
/// process id, and each is checked free by binding it.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id().wrapping_mul(7919)) % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let port =
            u16::try_from(LOW + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN).expect("below 32000");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {LOW}..{}", LOW + SPAN)
}

/// Writes a one-node `cluster.toml` with `extra` into `dir` (a free loopback port, `data_dir` relative to
/// the file: `dir/data/n1`) for a real `rookery` process; returns its path.
pub fn write_node_config(dir: &Path, extra: &str) -> PathBuf {
    let listen = format!("127.0.0.1:{}", free_port());
    let path = dir.join("cluster.toml");
    std::fs::write(&path, config_text(extra, &listen, Path::new("data/n1"))).expect("write config");
    path
}

/// The real `rookery` binary, started on a config file in `dir`.
pub struct NodeProcess {
    pub child: Child,
    pub addr: SocketAddr,
}

impl NodeProcess {
    pub fn start(config_path: &Path) -> NodeProcess {
        Self::start_node(config_path, None, None)
    }

    /// Starts node `node` of the config (the first when None), its log appended to `log`.
    pub fn start_node(config_path: &Path, node: Option<&str>, log: Option<&Path>) -> NodeProcess {
        Self::start_with_args(config_path, node, log, &[])
    }

    /// [`NodeProcess::start_node`] with more arguments (`--join ADDR`).
    pub fn start_with_args(
        config_path: &Path,
        node: Option<&str>,
        log: Option<&Path>,
        args: &[&str],
    ) -> NodeProcess {
        let mut cmd = Command::new(rookery_bin());
        cmd.arg("--config").arg(config_path);
        if let Some(node) = node {
            cmd.arg("--node").arg(node);
        }
        cmd.args(args);
        let stderr = match log {
            Some(path) => Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .expect("log file"),
            ),
            None => Stdio::null(),
        };
        let mut child = cmd
            .env(
                "RUST_LOG",
                std::env::var("NODE_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn rookery");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read banner");
        if !line.contains("listening on") {
            let status = child.wait().ok();
            let tail = log
                .and_then(|path| std::fs::read_to_string(path).ok())
                .map(|text| {
                    let lines: Vec<&str> = text.lines().collect();
                    let from = lines
                        .iter()
                        .rposition(|l| l.contains("panicked") || l.starts_with("Error"))
                        .unwrap_or(lines.len().saturating_sub(20));
                    lines[from..]
                        .iter()
                        .take(20)
                        .copied()
                        .collect::<Vec<_>>()
                        .join("\n")
                })
                .unwrap_or_default();
            panic!("node did not start (banner {line:?}, exit {status:?}); its log:\n{tail}");
        }
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .expect("address in banner");
        NodeProcess { child, addr }
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A cluster of real `rookery` processes on loopback, started from one config file (fixed free ports, one
/// data directory per node), each node's log in `dir/ID.log`.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub config: Config,
    pub ids: Vec<String>,
    pub addrs: Vec<SocketAddr>,
    /// Each node's peer address.
    pub peers: Vec<String>,
    nodes: Vec<Option<NodeProcess>>,
    /// The `extra` config the cluster started with.
    extra: String,
    /// Nodes that joined later: their own config file and the `--join` address they started with.
    joined: HashMap<usize, (PathBuf, String)>,
}

/// A failing test's message ends with the nodes' logs: the directory that holds them goes with the cluster.
/// With `KEEP_NODE_LOGS=DIR` every node's whole log is also copied there (as `DIR/<temp dir>-ID.log`).
impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("the nodes' logs end with\n{}", self.log_tails(150));
        }
        if let Ok(keep) = std::env::var("KEEP_NODE_LOGS") {
            let run = self
                .dir
                .path()
                .file_name()
                .unwrap_or_default()
                .to_string_lossy();
            for id in &self.ids {
                let from = self.dir.path().join(format!("{id}.log"));
                let _ = std::fs::copy(from, Path::new(&keep).join(format!("{run}-{id}.log")));
            }
        }
    }
}

impl Cluster {
    /// Starts `n` nodes (`n1`..) with `extra` config and waits until every node's links to the others are up.
    pub async fn start(n: usize, extra: &str) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let ids: Vec<String> = (1..=n).map(|i| format!("n{i}")).collect();
        let addrs: Vec<SocketAddr> = (0..n)
            .map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())))
            .collect();
        let peers: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let mut text =
            format!("[auth]\ntoken_secret = \"{SECRET}\"\nadmin_key = \"{ADMIN_KEY}\"\n{extra}\n");
        for i in 0..n {
            text.push_str(&format!(
                "[[nodes]]\nid = \"{}\"\nlisten = \"{}\"\npeer = \"127.0.0.1:{}\"\ndata_dir = \"data/{}\"\n",
                ids[i], addrs[i], peers[i], ids[i]
            ));
        }
        let config_path = dir.path().join("cluster.toml");
        std::fs::write(&config_path, &text).expect("write config");
        let config = Config::parse(&text).expect("cluster config");
        let mut cluster = Cluster {
            dir,
            config_path,
            config,
            ids,
            addrs,
            peers: peers.iter().map(|p| format!("127.0.0.1:{p}")).collect(),
            nodes: Vec::new(),
            extra: extra.to_owned(),
            joined: HashMap::new(),
        };
        for i in 0..n {
            let node = cluster.spawn(i);
            cluster.nodes.push(Some(node));
        }
        cluster.wait_links().await;
        cluster.wait_leaders().await;
        cluster
    }

    fn spawn(&self, i: usize) -> NodeProcess {
        let log = self.dir.path().join(format!("{}.log", self.ids[i]));
        match self.joined.get(&i) {
            Some((config, join)) => NodeProcess::start_with_args(
                config,
                Some(&self.ids[i]),
                Some(&log),
                &["--join", join],
            ),
            None => NodeProcess::start_node(&self.config_path, Some(&self.ids[i]), Some(&log)),
        }
    }

    /// The config file of a node `id` that joins this cluster: the cluster's `[auth]` and extra config
    /// (or `head` instead), and only the node's own `[[nodes]]` entry. Returns the file, the client and
    /// the peer address.
    pub fn joiner_config(&self, id: &str, head: Option<&str>) -> (PathBuf, SocketAddr, String) {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let peer = format!("127.0.0.1:{}", free_port());
        let head = head.map_or_else(
            || {
                format!(
                    "[auth]\ntoken_secret = \"{SECRET}\"\nadmin_key = \"{ADMIN_KEY}\"\n{}\n",
                    self.extra
                )
            },
            str::to_owned,
        );
        let text = format!(
            "{head}[[nodes]]\nid = \"{id}\"\nlisten = \"{addr}\"\npeer = \"{peer}\"\ndata_dir = \"data/{id}\"\n"
        );
        let path = self.dir.path().join(format!("{id}.toml"));
        std::fs::write(&path, text).expect("write joiner config");
        (path, addr, peer)
    }

    /// Starts node `id` with its own config and `--join` on node `via`'s peer address (it waits to be
    /// added); returns its index.
    pub fn join(&mut self, id: &str, via: usize) -> usize {
        let (config, addr, peer) = self.joiner_config(id, None);
        let i = self.ids.len();
        self.ids.push(id.to_owned());
        self.addrs.push(addr);
        self.peers.push(peer);
        self.joined.insert(i, (config, self.peers[via].clone()));
        let node = self.spawn(i);
        self.nodes.push(Some(node));
        i
    }

    /// An admin call on node `i`: status and JSON body.
    pub async fn admin(
        &self,
        i: usize,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let body = body.map(|b| b.to_string());
        let (status, text) =
            http(method, &self.url(i, path), Some(ADMIN_KEY), body.as_deref()).await;
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// `POST /v1/admin/nodes` for node `j` on node `i`.
    pub async fn add_node(&self, i: usize, j: usize) -> (u16, Value) {
        let body = serde_json::json!({
            "id": self.ids[j],
            "listen": self.addrs[j].to_string(),
            "peer": self.peers[j],
        });
        self.admin(i, "POST", "/v1/admin/nodes", Some(body)).await
    }

    /// Waits until node `i`'s `GET /v1/admin/cluster` satisfies `done` (at most `within`); returns it.
    pub async fn wait_cluster(
        &self,
        i: usize,
        within: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let view = self.admin_cluster(i).await;
            if done(&view) {
                return view;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "cluster did not settle: {}\n{}",
                view,
                self.log_tails(200)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether node `i` is running.
    pub fn running(&self, i: usize) -> bool {
        self.nodes.get(i).is_some_and(Option::is_some)
    }

    /// Waits until every running node sees every other running node as up.
    pub async fn wait_links(&self) {
        let running: Vec<usize> = (0..self.ids.len())
            .filter(|i| self.nodes[*i].is_some())
            .collect();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        'outer: loop {
            assert!(
                tokio::time::Instant::now() < deadline,
                "cluster links did not come up; logs in {}",
                self.dir.path().display()
            );
            for &i in &running {
                let nodes = self.nodes_view(i).await;
                for &j in &running {
                    let up = nodes
                        .iter()
                        .any(|n| n["id"] == self.ids[j].as_str() && n["up"] == true);
                    if !up {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue 'outer;
                    }
                }
            }
            return;
        }
    }

    /// `GET /v1/nodes` on node `i`.
    pub async fn nodes_view(&self, i: usize) -> Vec<Value> {
        let (status, body) = http_get(&self.url(i, "/v1/nodes")).await;
        assert_eq!(status, 200);
        serde_json::from_str(&body).expect("nodes json")
    }

    pub fn url(&self, i: usize, path: &str) -> String {
        format!("http://{}{}", self.addrs[i], path)
    }

    /// The index of the node whose actors serve `key` (a user or conversation id) once leadership has
    /// settled: the preferred replica (the ring's first) of the key's partition.
    pub fn owner(&self, key: &str) -> usize {
        self.preferred(rookery::cluster::placement::partition_of(
            key,
            self.config.cluster.partitions,
        ))
    }

    /// The indexes of the nodes that keep `key`'s partition, the preferred one first.
    pub fn replicas_of(&self, key: &str) -> Vec<usize> {
        let layout = rookery::cluster::placement::Layout::initial(&self.config);
        let p = rookery::cluster::placement::partition_of(key, self.config.cluster.partitions);
        layout
            .replicas(p)
            .iter()
            .map(|id| {
                self.ids
                    .iter()
                    .position(|n| *n == id.as_str())
                    .expect("a node")
            })
            .collect()
    }

    /// The index of partition `p`'s preferred replica.
    pub fn preferred(&self, p: u32) -> usize {
        let layout = rookery::cluster::placement::Layout::initial(&self.config);
        let id = layout.replicas(p)[0].to_string();
        self.ids
            .iter()
            .position(|n| *n == id)
            .expect("owner is a node")
    }

    /// The last `n` lines of every node's log (for a failure's message: the directory goes with it).
    pub fn log_tails(&self, n: usize) -> String {
        let mut out = String::new();
        for id in &self.ids {
            let log = std::fs::read_to_string(self.dir.path().join(format!("{id}.log")))
                .unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            out.push_str(&format!("--- {id}\n"));
            for line in &lines[lines.len().saturating_sub(n)..] {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// `GET /v1/admin/cluster` on node `i`.
    pub async fn admin_cluster(&self, i: usize) -> Value {
        let (status, body) = http(
            "GET",
            &self.url(i, "/v1/admin/cluster"),
            Some(ADMIN_KEY),
            None,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("cluster json")
    }

    /// Every partition's leader as node `i` sees it.
    pub async fn leaders(&self, i: usize) -> Vec<Option<String>> {
        let view = self.admin_cluster(i).await;
        view["partitions"]
            .as_array()
            .expect("partitions")
            .iter()
            .map(|p| p["leader"].as_str().map(str::to_owned))
            .collect()
    }

    /// Waits until every running node sees each partition led by its preferred replica when that one
    /// runs, else by some running node (so that [`Cluster::owner`] names where keys are served).
    pub async fn wait_leaders(&self) {
        let running: Vec<usize> = (0..self.ids.len())
            .filter(|i| self.nodes[*i].is_some())
            .collect();
        let want: Vec<usize> = (0..self.config.cluster.partitions)
            .map(|p| self.preferred(p))
            .collect();
        let layout = rookery::cluster::placement::Layout::initial(&self.config);
        // a node knows the leaders of the partitions it keeps only
        let keeps = |i: usize, p: usize| {
            u32::try_from(p).is_ok_and(|p| {
                layout
                    .replicas(p)
                    .iter()
                    .any(|id| id.as_str() == self.ids[i])
            })
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        'outer: loop {
            for &i in &running {
                let leaders = self.leaders(i).await;
                for (p, leader) in leaders.iter().enumerate() {
                    if !keeps(i, p) {
                        continue;
                    }
                    let ok = match leader {
                        None => false,
                        Some(l) if running.contains(&want[p]) => *l == self.ids[want[p]],
                        Some(l) => running.iter().any(|&r| self.ids[r] == *l),
                    };
                    if !ok {
                        assert!(
                            tokio::time::Instant::now() < deadline,
                            "partition {p} not led as expected ({leader:?}); logs:\n{}",
                            self.log_tails(40)
                        );
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue 'outer;
                    }
                }
            }
            return;
        }
    }

    /// A user id with `prefix` owned by node `i`.
    pub fn user_on(&self, i: usize, prefix: &str) -> String {
        (0..10_000)
            .map(|k| format!("{prefix}{k}"))
            .find(|u| self.owner(u) == i)
            .expect("some user lands on every node")
    }

    pub async fn login(&self, i: usize, user: &str, device: &str) -> Client {
        let (client, welcome) = Client::login(self.addrs[i], &token(user), device)
            .await
            .expect("login");
        assert_eq!(welcome["node"], self.ids[i].as_str());
        client
    }

    pub fn kill9(&mut self, i: usize) {
        if let Some(mut node) = self.nodes[i].take() {
            node.kill9();
        }
    }

    /// Sends `signal` (e.g. "STOP", "CONT") to node `i`.
    pub fn signal(&self, i: usize, signal: &str) {
        let node = self.nodes[i].as_ref().expect("running");
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(node.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// SIGTERM, and the exit status.
    pub fn terminate(&mut self, i: usize) -> std::process::ExitStatus {
        let mut node = self.nodes[i].take().expect("running");
        let pid = node.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        node.child.wait().expect("wait")
    }

    /// Starts node `i` again and waits for the links only (after a membership change, where the config's
    /// layout no longer says who leads).
    pub async fn restart_linked(&mut self, i: usize) {
        self.start_again(i);
        self.wait_links().await;
    }

    /// Starts node `i` again without waiting for anything.
    pub fn start_again(&mut self, i: usize) {
        assert!(self.nodes[i].is_none(), "node {i} is running");
        let node = self.spawn(i);
        self.nodes[i] = Some(node);
    }

    pub async fn restart(&mut self, i: usize) {
        assert!(self.nodes[i].is_none(), "node {i} is running");
        let node = self.spawn(i);
        self.nodes[i] = Some(node);
        self.wait_links().await;
        self.wait_leaders().await;
    }
}

/// Makes `a` and `b` friends (request by `a`, accept by `b`) and drains the resulting events.
pub async fn befriend(a: &mut Client, a_name: &str, b: &mut Client, b_name: &str) {
    a.call(json!({"type":"friend_request","user":b_name,"note":"hi"}))
        .await
        .expect("request");
    b.expect(
        |f| f["type"] == "friend_request" && f["from"] == a_name,
        WAIT,
    )
    .await
    .expect("request pushed");
    b.call(json!({"type":"friend_accept","user":a_name}))
        .await
        .expect("accept");
    a.expect(|f| f["type"] == "friend" && f["user"] == b_name, WAIT)
        .await
        .expect("added");
    b.expect(|f| f["type"] == "friend" && f["user"] == a_name, WAIT)
        .await
        .expect("added");
}

pub fn dm(a: &str, b: &str) -> String {
    if a < b {
        format!("dm:{a}:{b}")
    } else {
        format!("dm:{b}:{a}")
    }
}

/// Sends a text message and returns the `sent` reply.
pub async fn send_text(c: &mut Client, conv: &str, cid: &str, text: &str) -> Value {
    let reply = c
        .call(json!({"type":"send","cid":cid,"conv":conv,"body":{"text":text}}))
        .await
        .expect("send accepted");
    assert_eq!(reply["type"], "sent");
    reply
}

pub fn is_msg(conv: &str, seq: u64) -> impl Fn(&Value) -> bool {
    let conv = conv.to_string();
    move |f: &Value| f["type"] == "msg" && f["conv"] == conv.as_str() && f["seq"] == seq
}

/// The server binary the tests run: this build's, or `ROOKERY_BIN` (to run the tests against another
/// build, e.g. to tell whether a change made a failure go away).
pub fn rookery_bin() -> std::path::PathBuf {
    std::env::var_os("ROOKERY_BIN")
        .map(Into::into)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_rookery").into())
}

/// Runs the `rookery` binary with `args` and returns its output.
pub fn rookery_cli(args: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::new(rookery_bin())
        .args(args)
        .output()
        .expect("run rookery")
}

/// Runs `rookery token ARGS... --config CONFIG`; asserts it succeeded and printed one line, and returns it.
pub fn token_line(args: &[&str], config: &Path) -> String {
    let mut all: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
    all.insert(0, std::ffi::OsStr::new("token"));
    all.push(std::ffi::OsStr::new("--config"));
    all.push(config.as_os_str());
    let out = rookery_cli(&all);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).expect("utf8");
    assert!(
        stdout.ends_with('\n') && stdout.lines().count() == 1,
        "{stdout:?}"
    );
    stdout.trim_end().to_string()
}

/// Asserts that `msgs` (stored messages, ascending) are numbered 1, 2, 3, ... without a gap.
pub fn assert_gapless(msgs: &[Value]) {
    let seqs: Vec<u64> = msgs
        .iter()
        .map(|m| m["seq"].as_u64().expect("seq"))
        .collect();
    let want: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, want, "seqs without gaps");
}

pub fn msg_seqs(reply: &Value) -> Vec<u64> {
    reply["msgs"]
        .as_array()
        .unwrap_or_else(|| panic!("not a msgs reply: {reply}"))
        .iter()
        .map(|m| m["seq"].as_u64().expect("seq"))
        .collect()
}

pub fn is_error(code: &str) -> impl Fn(&Value) -> bool {
    let code = code.to_string();
    move |f: &Value| f["type"] == "error" && f["code"] == code.as_str()
}

pub async fn http_get(url: &str) -> (u16, String) {
    http("GET", url, None, None).await
}

/// A minimal HTTP/1.1 client over a real socket (no extra dependency needed for a handful of requests).
pub async fn http(
    method: &str,
    url: &str,
    bearer: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").expect("http url");
    let (host, path) = rest
        .split_once('/')
        .map(|(h, p)| (h, format!("/{p}")))
        .unwrap_or((rest, "/".into()));
    let mut stream = tokio::net::TcpStream::connect(host).await.expect("connect");
    let body = body.unwrap_or("");
    let auth = bearer
        .map(|b| format!("Authorization: Bearer {b}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("read");
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, dechunk(&body))
}

fn dechunk(body: &str) -> String {
    // actix may answer with chunked encoding; undo it when it looks chunked.
    let mut out = String::new();
    let mut rest = body;
    loop {
        let Some((size, after)) = rest.split_once("\r\n") else {
            return body.to_string();
        };
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            return body.to_string();
        };
        if n == 0 {
            return out;
        }
        if after.len() < n {
            return body.to_string();
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
}

/// A server API call with the admin key: status and the body parsed as JSON (`Value::Null` when empty).
pub async fn api(method: &str, url: &str, body: Option<Value>) -> (u16, Value) {
    let text = body.map(|b| b.to_string());
    let (status, reply) = http(method, url, Some(ADMIN_KEY), text.as_deref()).await;
    let value = if reply.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&reply).unwrap_or_else(|_| panic!("not JSON: {reply:?}"))
    };
    (status, value)
}

/// Waits until the server closes `client`'s connection and returns the close code and reason.
pub async fn closed_with(client: &mut Client) -> (u16, String) {
    let close = client
        .expect_close(WAIT)
        .await
        .expect("closed by the server")
        .expect("with a close frame");
    (u16::from(close.code), close.reason.to_string())
}

/// Authenticates `user` on `addr` with `token`: `Ok(welcome)` or `Err(error frame)`.
pub async fn try_login(addr: SocketAddr, token: &str, device: &str) -> Result<Value, Value> {
    let mut c = Client::connect(addr).await.expect("connect");
    match c.auth(token, device).await {
        Ok(welcome) => Ok(welcome),
        Err(rookery::client::ClientError::Refused(frame)) => Err(frame),
        Err(e) => panic!("auth failed without an answer: {e}"),
    }
}

/// One request a [`Receiver`] got.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    /// The status the receiver answered with.
    pub status: u16,
    pub signature: Option<String>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("webhook body is JSON")
    }
}

/// How a [`Receiver`] answers.
#[derive(Debug, Clone)]
pub struct Behaviour {
    /// The status of answers to `/events`.
    pub events_status: u16,
    /// The answer of `/hook` (the before-send hook), after `hook_delay`.
    pub hook_answer: Value,
    pub hook_delay: Duration,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            events_status: 200,
            hook_answer: json!({"action":"allow"}),
            hook_delay: Duration::ZERO,
        }
    }
}

/// A real HTTP server on loopback (actix-web in its own thread) that records what webhooks send it:
/// `POST /events` for events, `POST /hook` for the before-send hook.
pub struct Receiver {
    pub base: String,
    pub got: std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
    pub behaviour: std::sync::Arc<std::sync::Mutex<Behaviour>>,
    handle: actix_web::dev::ServerHandle,
}

impl Receiver {
    pub fn start() -> Receiver {
        use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
        use std::sync::{Arc, Mutex};
        let got: Arc<Mutex<Vec<Received>>> = Arc::default();
        let behaviour: Arc<Mutex<Behaviour>> = Arc::default();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind receiver");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let (tx, rx) = std::sync::mpsc::channel();
        let (g, b) = (got.clone(), behaviour.clone());
        std::thread::spawn(move || {
            actix_rt::System::new().block_on(async move {
                let server = HttpServer::new(move || {
                    let (g, b) = (g.clone(), b.clone());
                    App::new().default_service(web::to(
                        move |req: HttpRequest, body: web::Bytes| {
                            let (g, b) = (g.clone(), b.clone());
                            async move {
                                let signature = req
                                    .headers()
                                    .get("x-rookery-signature")
                                    .and_then(|v| v.to_str().ok())
                                    .map(str::to_string);
                                let path = req.path().to_string();
                                let now = b.lock().expect("lock").clone();
                                let status = if path == "/hook" {
                                    200
                                } else {
                                    now.events_status
                                };
                                g.lock().expect("lock").push(Received {
                                    path: path.clone(),
                                    status,
                                    signature,
                                    body: body.to_vec(),
                                });
                                if path == "/hook" {
                                    tokio::time::sleep(now.hook_delay).await;
                                    return HttpResponse::Ok().json(now.hook_answer);
                                }
                                let status =
                                    actix_web::http::StatusCode::from_u16(status).expect("status");
                                HttpResponse::build(status).finish()
                            }
                        },
                    ))
                })
                .workers(1)
                .listen(listener)
                .expect("listen")
                .run();
                let _ = tx.send(server.handle());
                let _ = server.await;
            });
        });
        let handle = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("receiver starts");
        Receiver {
            base,
            got,
            behaviour,
            handle,
        }
    }

    /// `[webhooks]` config pointing at this receiver, with `extra` keys.
    pub fn config(&self, extra: &str) -> String {
        format!(
            "[webhooks]\nurl = \"{}/events\"\nsecret = \"{HOOK_SECRET}\"\n{extra}\n",
            self.base
        )
    }

    pub fn set(&self, change: impl FnOnce(&mut Behaviour)) {
        change(&mut self.behaviour.lock().expect("lock"));
    }

    pub fn requests(&self, path: &str) -> Vec<Received> {
        let got = self.got.lock().expect("lock");
        got.iter().filter(|r| r.path == path).cloned().collect()
    }

    /// Every event of the `/events` requests answered so far, in arrival order (repeats included).
    pub fn events(&self) -> Vec<Value> {
        self.requests("/events")
            .iter()
            .flat_map(|r| r.json()["events"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// Waits until `done` holds for the events received (repeats included), and returns them.
    pub async fn wait_events(
        &self,
        done: impl Fn(&[Value]) -> bool,
        timeout: Duration,
    ) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let events = self.events();
            if done(&events) {
                return events;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "webhook events did not arrive: {events:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        // the stop command is sent when called; the future only reports completion
        drop(self.handle.stop(false));
    }
}

/// The `webhooks.secret` of [`Receiver::config`].
pub const HOOK_SECRET: &str = "hook-secret";

/// Events without repeats (the first of each `id`), in arrival order.
pub fn dedupe(events: &[Value]) -> Vec<Value> {
    let mut seen = std::collections::HashSet::new();
    events
        .iter()
        .filter(|e| seen.insert(e["id"].as_str().expect("event id").to_string()))
        .cloned()
        .collect()
}

/// The whole conversation as `user` pulls it, page by page with `sync`, from the first of `addrs` that
/// accepts the login.
pub async fn pull_all(addrs: &[SocketAddr], user: &str, conv: &str) -> Vec<Value> {
    let (mut c, _, _) = Client::login_any(addrs, &token(user), "verify", 10)
        .await
        .expect("login");
    let mut out: Vec<Value> = Vec::new();
    loop {
        let page = c
            .call(json!({"type":"sync","conv":conv,"after":out.len(),"limit":1000}))
            .await
            .expect("sync");
        let msgs = page["msgs"].as_array().expect("msgs").clone();
        if msgs.is_empty() {
            return out;
        }
        out.extend(msgs);
    }
}
