//! The cluster configuration: one tree mirroring `cluster.toml`.
//!
//! Every key but `nodes` has a default; unknown keys are refused (`deny_unknown_fields`) so a typo is a
//! start-up error naming the key instead of a silently ignored setting. Units live in key names
//! (`ack_timeout_ms`); [`Config::load`] resolves relative paths against the file's folder and
//! [`Config::validate`] reports every problem at once.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::ids::{NodeId, UserId};

/// The most nodes a cluster may list (the session directory keeps a bit per node).
pub const MAX_NODES: usize = 64;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub chat: ChatConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub media: MediaConfig,
    #[serde(default)]
    pub cluster: ClusterConfig,
    #[serde(default)]
    pub actors: ActorsConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub webhooks: WebhooksConfig,
    pub nodes: Vec<NodeConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub token_secret: String,
    pub admin_key: String,
    /// The longest validity a minted token may have (`POST /v1/token` `ttl_s`, `rookery token --ttl`):
    /// without a bound, `ttl_s` = 2^64-1 minted a token that never expires.
    pub max_token_ttl_s: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            token_secret: "change-me".into(),
            admin_key: "change-me-too".into(),
            max_token_ttl_s: 2_592_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChatConfig {
    pub heartbeat_s: u64,
    pub dm_requires_friendship: bool,
    pub max_group_members: u64,
    pub push_max_members: u64,
    pub receipt_push_max_members: u64,
    pub notify_window_ms: u64,
    pub ack_timeout_ms: u64,
    pub recall_window_s: u64,
    /// How long a sender may edit a message (`edit`).
    pub edit_window_s: u64,
}

impl Default for ChatConfig {
    fn default() -> Self {
        Self {
            heartbeat_s: 30,
            dm_requires_friendship: true,
            max_group_members: 100_000,
            push_max_members: 500,
            receipt_push_max_members: 100,
            notify_window_ms: 100,
            ack_timeout_ms: 5000,
            recall_window_s: 120,
            edit_window_s: 86_400,
        }
    }
}

impl ChatConfig {
    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs(self.heartbeat_s)
    }
    pub fn ack_timeout(&self) -> Duration {
        Duration::from_millis(self.ack_timeout_ms)
    }
    pub fn recall_window(&self) -> Duration {
        Duration::from_secs(self.recall_window_s)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub max_frame_bytes: usize,
    pub max_body_bytes: usize,
    pub sends_per_s: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_frame_bytes: 65536,
            max_body_bytes: 16384,
            sends_per_s: 200,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// `sent` only after the message is on disk (group-committed fsync).
    Sync,
    /// leave flushing to sled's background flusher and the OS.
    Os,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub durability: Durability,
    /// sled's page cache in MiB (its own default, 256 MiB, was more than a small node should give a cache).
    pub cache_mb: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            durability: Durability::Sync,
            cache_mb: 64,
        }
    }
}

impl StoreConfig {
    /// The page cache in bytes.
    pub fn cache_bytes(&self) -> u64 {
        self.cache_mb.saturating_mul(1 << 20)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaConfig {
    pub max_bytes: u64,
    pub chunk_bytes: u64,
    pub upload_ttl_s: u64,
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            max_bytes: 209_715_200,
            chunk_bytes: 1_048_576,
            upload_ttl_s: 86_400,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    pub vnodes: usize,
    pub peer_timeout_ms: u64,
    /// Copies of every key (taken as the node count when larger).
    pub replicas: usize,
    /// Keys hash into this many partitions; fixed once a node's data is created.
    pub partitions: u32,
    /// A partition whose leader has been silent this long elects another.
    pub election_timeout_ms: u64,
    /// A partition's Raft log is compacted once it holds this many applied entries (half are kept, for
    /// replicas slightly behind; one further behind gets a snapshot of the partition's data).
    pub log_compact_entries: u64,
    /// How many partitions each node, as their leader, moves to other nodes at once while the membership
    /// changes.
    pub max_moving_partitions: usize,
    /// The most snapshot data each node sends per second while partitions move, in MiB (0: no limit). The
    /// defaults (this and one partition at a time) spread a move's work over time; on the bench machine,
    /// where four nodes share two cores and one disk, a 1 GiB move under 2,000 msgs/s raises the load's
    /// p99 three to five times (bench/README.md, "Membership").
    pub move_mib_per_s: u64,
    /// The CPU priority (Unix nice, 0 to 19) of the threads that make, send and install snapshots of a
    /// partition's data (see `cluster::replication::background`). 0, the default: the same as every
    /// other thread. Higher gives a move only the CPU the load leaves, so on a saturated node a move
    /// crawls (19 made each of a debug build's empty snapshots take seconds under a busy CPU).
    pub move_nice: u8,
    /// The longest a node's Raft round waits after the last one that synced its log, so that what comes
    /// meanwhile shares one write and one fsync; reached under load (see
    /// `cluster::replication::driver::SyncWindow`). 0: never wait.
    pub sync_window_ms: u64,
}

/// The most partitions a cluster may have.
pub const MAX_PARTITIONS: u32 = 65_536;

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            vnodes: 64,
            peer_timeout_ms: 2000,
            replicas: 3,
            partitions: 256,
            election_timeout_ms: 1000,
            log_compact_entries: 5_000,
            max_moving_partitions: 1,
            move_mib_per_s: 12,
            move_nice: 0,
            sync_window_ms: 5,
        }
    }
}

impl ClusterConfig {
    pub fn peer_timeout(&self) -> Duration {
        Duration::from_millis(self.peer_timeout_ms)
    }

    pub fn sync_window(&self) -> Duration {
        Duration::from_millis(self.sync_window_ms)
    }

    pub fn election_timeout(&self) -> Duration {
        Duration::from_millis(self.election_timeout_ms)
    }
}

/// `[http]`: browser access.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Browser origins allowed to call the HTTP endpoints and open `/ws` (`"*"`: any); empty: no CORS
    /// headers and no `Origin` check.
    pub cors_origins: Vec<String>,
}

impl HttpConfig {
    /// Whether a browser page from `origin` may use this node (the node's own origin is checked apart).
    pub fn allows_origin(&self, origin: &str) -> bool {
        self.cors_origins
            .iter()
            .any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
    }
}

/// The webhook event types of the contract.
pub const WEBHOOK_EVENTS: [&str; 4] = ["offline_message", "message", "user_online", "user_offline"];

/// `[webhooks]`: events for the product's backend and the before-send hook (see [`crate::webhooks`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    pub url: String,
    pub secret: String,
    pub events: Vec<String>,
    pub before_send_url: String,
    pub before_send_timeout_ms: u64,
    pub before_send_failure: String,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            secret: String::new(),
            events: vec!["offline_message".into()],
            before_send_url: String::new(),
            before_send_timeout_ms: 300,
            before_send_failure: "allow".into(),
        }
    }
}

/// Runtime tuning that is not part of the client contract (an extension documented in README.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ActorsConfig {
    /// A user or conversation actor with no traffic for this long stops; its state stays in sled.
    pub idle_s: u64,
    /// Bytes a session may keep queued for a client that is not reading (for longer than a short grace, or
    /// ever beyond 8x this) before the client is disconnected as a slow consumer.
    pub session_queue_bytes: usize,
}

impl Default for ActorsConfig {
    fn default() -> Self {
        Self {
            idle_s: 60,
            session_queue_bytes: 1 << 20,
        }
    }
}

impl ActorsConfig {
    pub fn idle(&self) -> Duration {
        Duration::from_secs(self.idle_s)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub id: String,
    pub listen: String,
    pub peer: String,
    pub data_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
    #[error("node `{0}` is not in the config (known: {1})")]
    UnknownNode(String, String),
}

impl Config {
    /// Reads, parses and validates a config file; relative `data_dir`s become relative to its folder.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Config::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })?;
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        for node in &mut config.nodes {
            if node.data_dir.is_relative() {
                node.data_dir = base.join(&node.data_dir);
            }
        }
        Ok(config)
    }

    /// Parses and validates config text (paths are left as written).
    pub fn parse(text: &str) -> Result<Config, String> {
        let config: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }

    /// Reports every problem at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if self.nodes.is_empty() {
            problems.push("`nodes`: at least one [[nodes]] entry is required".to_string());
        }
        let mut ids = HashSet::new();
        for (i, node) in self.nodes.iter().enumerate() {
            if NodeId::parse(&node.id).is_err() {
                problems.push(format!(
                    "`nodes[{i}].id`: {:?} must be 1 to 64 of A-Z a-z 0-9 _ . -",
                    node.id
                ));
            }
            if !ids.insert(&node.id) {
                problems.push(format!("`nodes[{i}].id`: {:?} appears twice", node.id));
            }
            if node.listen.parse::<SocketAddr>().is_err() {
                problems.push(format!(
                    "`nodes[{i}].listen`: {:?} is not an IP:port address",
                    node.listen
                ));
            }
            if node.peer.parse::<SocketAddr>().is_err() {
                problems.push(format!(
                    "`nodes[{i}].peer`: {:?} is not an IP:port address",
                    node.peer
                ));
            }
        }
        let positive = [
            ("auth.max_token_ttl_s", self.auth.max_token_ttl_s),
            ("store.cache_mb", self.store.cache_mb),
            ("chat.heartbeat_s", self.chat.heartbeat_s),
            ("chat.max_group_members", self.chat.max_group_members),
            ("chat.notify_window_ms", self.chat.notify_window_ms),
            ("chat.ack_timeout_ms", self.chat.ack_timeout_ms),
            ("chat.edit_window_s", self.chat.edit_window_s),
            (
                "webhooks.before_send_timeout_ms",
                self.webhooks.before_send_timeout_ms,
            ),
            ("limits.max_frame_bytes", self.limits.max_frame_bytes as u64),
            ("limits.max_body_bytes", self.limits.max_body_bytes as u64),
            ("limits.sends_per_s", u64::from(self.limits.sends_per_s)),
            ("media.max_bytes", self.media.max_bytes),
            ("media.chunk_bytes", self.media.chunk_bytes),
            ("cluster.vnodes", self.cluster.vnodes as u64),
            ("cluster.peer_timeout_ms", self.cluster.peer_timeout_ms),
            ("cluster.replicas", self.cluster.replicas as u64),
            ("cluster.partitions", u64::from(self.cluster.partitions)),
            (
                "cluster.election_timeout_ms",
                self.cluster.election_timeout_ms,
            ),
            (
                "cluster.log_compact_entries",
                self.cluster.log_compact_entries,
            ),
            (
                "cluster.max_moving_partitions",
                self.cluster.max_moving_partitions as u64,
            ),
            ("actors.idle_s", self.actors.idle_s),
            (
                "actors.session_queue_bytes",
                self.actors.session_queue_bytes as u64,
            ),
        ];
        for (key, value) in positive {
            if value == 0 {
                problems.push(format!("`{key}` must be greater than 0"));
            }
        }
        for event in &self.webhooks.events {
            if !WEBHOOK_EVENTS.contains(&event.as_str()) {
                problems.push(format!(
                    "`webhooks.events`: {event:?} is not one of {}",
                    WEBHOOK_EVENTS.join(", ")
                ));
            }
        }
        if !["allow", "reject"].contains(&self.webhooks.before_send_failure.as_str()) {
            problems.push("`webhooks.before_send_failure` must be \"allow\" or \"reject\"".into());
        }
        for origin in &self.http.cors_origins {
            let scheme = origin.starts_with("http://") || origin.starts_with("https://");
            let clean = origin.bytes().all(|b| b.is_ascii_graphic());
            if origin != "*" && (!scheme || !clean || origin.ends_with('/')) {
                problems.push(format!(
                    "`http.cors_origins`: {origin:?} must be \"*\" or an origin like \"https://app.example.com\""
                ));
            }
        }
        if self.cluster.partitions > MAX_PARTITIONS {
            problems.push(format!(
                "`cluster.partitions` must be at most {MAX_PARTITIONS}"
            ));
        }
        if self.cluster.move_nice > 19 {
            problems.push("`cluster.move_nice` must be 0 to 19".into());
        }
        if self.auth.token_secret.is_empty() {
            problems.push("`auth.token_secret` must not be empty".into());
        }
        if self.auth.admin_key.is_empty() {
            problems.push("`auth.admin_key` must not be empty".into());
        }
        if self.limits.max_body_bytes > self.limits.max_frame_bytes {
            problems
                .push("`limits.max_body_bytes` must not exceed `limits.max_frame_bytes`".into());
        }
        if self.nodes.len() > MAX_NODES {
            problems.push(format!(
                "`nodes`: at most {MAX_NODES} nodes, found {}",
                self.nodes.len()
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// The node entry for `id`, or the first node when `id` is `None`.
    pub fn node(&self, id: Option<&str>) -> Result<&NodeConfig, ConfigError> {
        match id {
            None => self
                .nodes
                .first()
                .ok_or_else(|| ConfigError::Invalid(vec!["no nodes".into()])),
            Some(id) => self.nodes.iter().find(|n| n.id == id).ok_or_else(|| {
                let known: Vec<&str> = self.nodes.iter().map(|n| n.id.as_str()).collect();
                ConfigError::UnknownNode(id.to_string(), known.join(", "))
            }),
        }
    }

    /// Is `user` a valid user id? (Re-exported here so callers of config need not reach into ids.)
    pub fn valid_user(user: &str) -> bool {
        UserId::parse(user).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example configuration of PROTOCOL.md ("Command line and configuration"), verbatim: a config
    /// written against the contract must start a node.
    const CONTRACT_EXAMPLE: &str = r#"
[auth]
token_secret = "change-me"      # HS256 secret for client tokens
admin_key = "change-me-too"     # Bearer key for POST /v1/token

[chat]
heartbeat_s = 30                # told to clients in `welcome`; silence for 3x this closes the connection
dm_requires_friendship = true   # a direct message needs accepted friendship
max_group_members = 100000
edit_window_s = 86400           # how long a sender may edit a message
push_max_members = 500          # larger groups get `notify` instead of `msg`
receipt_push_max_members = 100  # in larger groups, other members get no pushed read events
notify_window_ms = 100          # at most one notify per conversation per device per window
ack_timeout_ms = 5000           # unacked pushes are pushed again after this
recall_window_s = 120

[limits]
max_frame_bytes = 65536
max_body_bytes = 16384
sends_per_s = 200               # per connection, token bucket; burst = 2x

[store]
durability = "sync"             # "sync": `sent` only after the message is on disk; "os": leave it to the OS

[media]
max_bytes = 209715200           # the largest upload (200 MiB)
chunk_bytes = 1048576           # chunk size handed out by POST /v1/uploads
upload_ttl_s = 86400            # unfinished uploads are removed after this

[cluster]
vnodes = 64                     # points per node on the consistent-hash ring
peer_timeout_ms = 2000          # a peer link silent this long is taken as down
replicas = 3                    # copies of every user, conversation and group (taken as the node count when larger)
partitions = 256                # keys hash into this many partitions; fixed when the cluster's data is first created
election_timeout_ms = 1000      # a partition whose leader has been silent this long elects another
log_compact_entries = 5000      # a partition's Raft log is compacted past this many applied entries
max_moving_partitions = 4       # partitions each node moves at once while the membership changes

[http]
cors_origins = []               # browser origins allowed to call the HTTP endpoints and open /ws; ["*"] = any

[webhooks]
url = ""                        # events are POSTed here in batches; "" = no events
secret = ""                     # signs every webhook request (X-Rookery-Signature)
events = ["offline_message"]    # any of offline_message, message, user_online, user_offline
before_send_url = ""            # asked before each message is stored; "" = not asked
before_send_timeout_ms = 300
before_send_failure = "allow"   # "allow" or "reject" the message when the hook fails or times out

[[nodes]]
id = "n1"
listen = "127.0.0.1:7001"       # clients: WebSocket at /ws and HTTP
peer = "127.0.0.1:7101"         # other nodes only
data_dir = "data/n1"
"#;

    #[test]
    fn the_contracts_example_config_parses() {
        let config = Config::parse(CONTRACT_EXAMPLE).expect("the contract's example parses");
        assert_eq!(config.chat.edit_window_s, 86_400);
        assert_eq!(config.webhooks.events, vec!["offline_message".to_string()]);
        assert!(config.http.cors_origins.is_empty());
        let bad = CONTRACT_EXAMPLE
            .replace(r#"events = ["offline_message"]"#, r#"events = ["sent"]"#)
            .replace(r#"cors_origins = []"#, r#"cors_origins = ["example.com"]"#);
        let err = Config::parse(&bad).expect_err("invalid");
        assert!(
            err.contains("webhooks.events") && err.contains("http.cors_origins"),
            "{err}"
        );
    }

    #[test]
    fn committed_cluster_toml_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster.toml");
        let config = Config::load(&path).expect("cluster.toml parses");
        assert_eq!(config.nodes.len(), 1);
        assert_eq!(config.nodes[0].id, "n1");
        assert!(config.nodes[0].data_dir.ends_with("data/n1"));
        assert_eq!(config.store.durability, Durability::Sync);
    }

    #[test]
    fn defaults_fill_everything_but_nodes() {
        let c = Config::parse(
            "[[nodes]]\nid='a'\nlisten='127.0.0.1:1'\npeer='127.0.0.1:2'\ndata_dir='d'\n",
        )
        .expect("minimal config");
        assert_eq!(c.chat.push_max_members, 500);
        assert_eq!(c.limits.max_frame_bytes, 65536);
        assert_eq!(c.media.chunk_bytes, 1_048_576);
        assert_eq!(c.cluster.vnodes, 64);
        assert_eq!(c.chat.ack_timeout(), Duration::from_secs(5));
        assert_eq!(c.auth.max_token_ttl_s, 2_592_000);
        assert_eq!(c.store.cache_bytes(), 64 << 20);
        // a move paced so that the load keeps its p99 (bench/README.md, "Membership", stop 29)
        assert_eq!(c.cluster.max_moving_partitions, 1);
        assert_eq!(c.cluster.move_mib_per_s, 12);
        let capped = Config::parse(
            "[cluster]\nmove_mib_per_s = 8\n[[nodes]]\nid='a'\nlisten='127.0.0.1:1'\npeer='127.0.0.1:2'\ndata_dir='d'\n",
        )
        .expect("a cap on moves");
        assert_eq!(capped.cluster.move_mib_per_s, 8);
        assert_eq!(c.cluster.move_nice, 0);
        assert_eq!(c.cluster.sync_window(), Duration::from_millis(5));
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::parse("[chat]\nheartbeat_secs = 3\n[[nodes]]\nid='a'\nlisten='127.0.0.1:1'\npeer='127.0.0.1:2'\ndata_dir='d'\n")
            .expect_err("unknown key refused");
        assert!(err.contains("heartbeat_secs"), "{err}");
    }

    #[test]
    fn every_problem_is_reported() {
        let err = Config::parse(
            "[chat]\nheartbeat_s = 0\n[[nodes]]\nid='a b'\nlisten='nowhere'\npeer='127.0.0.1:2'\ndata_dir='d'\n",
        )
        .expect_err("invalid");
        assert!(
            err.contains("heartbeat_s")
                && err.contains("nodes[0].id")
                && err.contains("nodes[0].listen"),
            "{err}"
        );
    }

    #[test]
    fn bad_value_names_the_key() {
        let err = Config::parse("[store]\ndurability = 'maybe'\n[[nodes]]\nid='a'\nlisten='127.0.0.1:1'\npeer='127.0.0.1:2'\ndata_dir='d'\n")
            .expect_err("bad durability");
        assert!(err.contains("durability"), "{err}");
    }
}

/// Fuzzing config parsing (issue 13): arbitrary text and TOML-ish text built from the real sections and keys
/// with values of every type never panic, and whatever parses has passed validation. Longer:
/// `PROPTEST_CASES=100000 cargo test --release fuzz`.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    const SECTIONS: [&str; 9] = [
        "[auth]",
        "[chat]",
        "[limits]",
        "[store]",
        "[media]",
        "[cluster]",
        "[actors]",
        "[[nodes]]",
        "[bogus]",
    ];
    const KEYS: [&str; 24] = [
        "token_secret",
        "admin_key",
        "max_token_ttl_s",
        "heartbeat_s",
        "dm_requires_friendship",
        "max_group_members",
        "push_max_members",
        "notify_window_ms",
        "ack_timeout_ms",
        "max_frame_bytes",
        "max_body_bytes",
        "sends_per_s",
        "durability",
        "cache_mb",
        "max_bytes",
        "chunk_bytes",
        "vnodes",
        "peer_timeout_ms",
        "idle_s",
        "session_queue_bytes",
        "id",
        "listen",
        "peer",
        "data_dir",
    ];

    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            prop::sample::select(vec![
                "0",
                "1",
                "-1",
                "65535",
                "4294967296",
                "18446744073709551615",
                "18446744073709551616",
                "9223372036854775807",
                "-9223372036854775808",
                "1e999",
                "nan",
                "inf",
                "0x10",
                "true",
                "\"sync\"",
                "\"os\"",
                "\"n1\"",
                "\"127.0.0.1:0\"",
                "\"[::1]:7\"",
                "\"d\"",
                "\"\"",
                "[]",
                "{}",
                "[1, \"a\"]",
                "'''x'''",
                "\"\\u0000\"",
            ])
            .prop_map(str::to_string),
            "\"[ -~]{0,10}\"",
        ]
    }

    fn toml_ish() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop_oneof![
                prop::sample::select(SECTIONS.to_vec()).prop_map(str::to_string),
                (prop::sample::select(KEYS.to_vec()), value())
                    .prop_map(|(k, v)| format!("{k} = {v}")),
                ".{0,20}",
            ],
            0..24,
        )
        .prop_map(|lines| lines.join("\n"))
    }

    fn check(text: &str) -> Result<(), TestCaseError> {
        if let Ok(config) = Config::parse(text) {
            prop_assert!(config.validate().is_ok());
            prop_assert!(!config.nodes.is_empty());
            prop_assert!(config.media.chunk_bytes > 0 && config.cluster.vnodes > 0);
            prop_assert!(config.auth.max_token_ttl_s > 0 && config.store.cache_mb > 0);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(crate::fuzz_config())]

        #[test]
        fn fuzz_config_any_text(text in ".{0,300}") {
            check(&text)?;
        }

        #[test]
        fn fuzz_config_toml_ish(text in toml_ish()) {
            check(&text)?;
        }
    }
}
