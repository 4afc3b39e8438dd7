//! # Rookery
//!
//! An instant-messaging server built as an actor-model runtime: every user, conversation and WebSocket
//! connection is an actor; each node persists what it owns in its own sled database. The client contract
//! (frames, HTTP endpoints, config, command line) is `PROTOCOL.md` in the shared folder; this crate
//! implements it.
//!
//! ## Module map
//! - [`node`]: start, run and stop a node (`main` and the tests use the same entry point).
//! - [`config`]: the `cluster.toml` tree with defaults and validation.
//! - [`actors`]: [`actors::session`] (one per WebSocket), [`actors::user`] (devices, presence, friend and
//!   conversation indexes, and the access record: logout time and ban), [`actors::conversation`]
//!   (sequence, messages, receipts, friendship of a pair, a group's members; fan-out in bounded turns,
//!   `notify` for large groups), [`actors::group`] (group operations on a conversation actor, the
//!   server API's included), [`actors::server_api`] (the server API's posts and reads on a conversation), [`actors::pull`] (a group's pull view: `sync` answered without
//!   the actor), [`actors::lane`] (each session worker's low-priority lane for large fan-outs), and
//!   the pure state machines [`actors::limits`], [`actors::delivery`], [`actors::friendship`].
//! - [`state`]: the pure, deterministic core of durable state changes ([`state::conv`]: a conversation's
//!   commands, applied to its state with the writes they need listed in order; [`state::user`]: a user's
//!   conversation and friend indexes). The actors are shells around it; replicas will apply the same
//!   commands in the same order.
//! - [`cluster`]: the consistent-hash [`cluster::ring`], the [`cluster::router`] (the one boundary through
//!   which actors reach each other, local or remote), the [`cluster::peer`] links between nodes and the
//!   closed list of messages that may cross them ([`cluster::remote`]), and the replicated layout
//!   ([`cluster::placement`]: key → partition → replicas).
//! - [`raft`]: consensus for replicated partitions on tikv's raft-rs: [`raft::multi`] drives every group
//!   of a node from one tick and coalesces their traffic per node pair; [`raft::log`] is the node's durable
//!   Raft log (one file, group commit across groups). Built and tested; not yet wired into a running node
//!   (see the README's status).
//! - [`net`]: HTTP endpoints, the server API for the product's backend ([`net::api`]: messages, groups,
//!   users, logout, ban; admin key), the WebSocket upgrade and frame reader, the typed protocol, tokens, and the
//!   browser client ([`net::web`]: `GET /` the web chat app, `/app.js`, `/app.css`, `GET /sdk/rookery.js`
//!   the JavaScript SDK), embedded at build time from the committed `web/dist/` and `clients/js/dist/`.
//! - [`store`]: the sled trees (catalogue in [`store::keys`]), group commit ([`store::writer`]) and media
//!   files ([`store::media`]); the media HTTP endpoints are [`net::media`].
//! - [`webhooks`]: events for the product's backend ([`webhooks::events`]: which events a message or
//!   presence change causes, written to the durable outbox [`store::outbox`] in the message's own batch;
//!   [`webhooks::sender`]: the node's delivery task, batched, signed, retried with backoff) and the
//!   before-send hook ([`webhooks::before_send`]).
//! - [`client`]: a small typed client (used by the tests and the load generator in `bench/`).
//! - [`error`], [`ids`], [`metrics`]: the closed set of error codes, validated ids, Prometheus metrics.
//!
//! ## How a message travels
//! 1. A session actor parses `send`, checks rate and size limits, and asks the router for the conversation.
//! 2. The router looks the conversation up on the ring. Owned here: it finds (or spawns, on an arbiter chosen
//!    by key hash) the conversation actor and enqueues. Owned elsewhere: it sends a `Call` on this node's
//!    link to the owner, whose router enqueues it the same way and sends back the `Reply`.
//! 3. The conversation actor checks membership and friendship, claims the `cid` with one compare-and-swap
//!    (a known `cid` is answered with its first `seq` and `ts`), assigns `seq = last + 1` and writes the
//!    message. A dedupe entry is only trusted if the message at its `seq` carries that sender and `cid`, so a
//!    crash between the two writes can neither duplicate nor misattribute a message.
//! 4. The group-commit flusher fsyncs (one fsync covers every write made before it started, at most one
//!    fsync per 500 µs under load) and tells the conversation; the conversation then answers `sent` and pushes
//!    `msg` to every online device of every member but the sending one, in seq order: one `Push` envelope
//!    to each other node that has sessions of members (the node's session directory says which), and this
//!    node's sessions directly.
//! 5. Each session tracks its pushes until the device acknowledges them (cumulative `ack`) and pushes again
//!    after `ack_timeout_ms`. A device that falls behind gets `notify` instead; one that stops reading is
//!    disconnected. Offline devices get nothing pushed: they catch up with `convs` and `sync`.
//!
//! ## Guarantees
//! - **Ordering**: a conversation has one actor at a time, which numbers its messages 1, 2, 3, ... with no
//!   gaps; every member sees the same seq for the same message; pushes leave in seq order.
//! - **Durability**: with `durability = "sync"`, `sent` (and every push) follows sled's flush of the message,
//!   so an acknowledged message survives `kill -9` and an OS crash; sled 0.34's flush ends in
//!   `sync_file_range`, which does not flush a disk's volatile write cache, so a power cut on such a disk can
//!   take the last acknowledged messages (the Raft log of [`raft::log`] uses `fdatasync`). With `"os"` a
//!   message survives a process crash only.
//! - **No duplicates**: a `cid` accepted once is answered with the same `seq` and `ts` forever (also after a
//!   restart); nothing is stored twice.
//! - **Ownership**: the ring over the nodes of `cluster.toml` assigns every user and conversation to one node;
//!   only that node's actor writes its keys. Actors stop when idle (`actors.idle_s`); their state stays in
//!   sled, so memory follows the active set. Nodes whose configs differ (membership, addresses or
//!   `vnodes`) refuse each other's links rather than both owning a key.
//! - **Failure**: a request for a key owned by an unreachable node fails with `unavailable` at once when its
//!   link is known down, and within `peer_timeout_ms` when the node stops answering; a call that was in
//!   flight when the link broke also gets `unavailable` (it may have been stored: retrying with the same
//!   `cid` is safe). Keys of live nodes are unaffected. A restarted node serves its keys from its own sled
//!   directory, with everything it acknowledged.
//! - **Bounded memory per connection**: after the handshake a session owns its socket (see [`net::ws`]): it
//!   reads into a short-lived 4 KiB buffer only when the socket is readable, skips an oversized frame as it
//!   streams in (never buffering it whole), and keeps only the bytes the kernel would not take; a client that
//!   leaves more than `actors.session_queue_bytes` unread for 2 s is disconnected. An idle authenticated
//!   connection costs the server about 4 KB.
//! - **Hostile input**: every length and offset read from the network (WebSocket frame headers, peer frame
//!   prefixes, upload chunk indices) goes through checked or saturating arithmetic (those functions deny
//!   `clippy::arithmetic_side_effects`) and ends in a contract error or a clean close, never a panic; a
//!   peer handshake that fails authentication changes no state. Fuzz tests (`cargo test fuzz`) and
//!   `tests/security.rs` keep it so. No unsafe code (`forbid(unsafe_code)`).

#![forbid(unsafe_code)]

pub mod actors;
pub mod client;
pub mod cluster;
pub mod config;
pub mod error;
pub mod ids;
pub mod metrics;
pub mod net;
pub mod node;
pub mod raft;
pub mod state;
pub mod store;
pub mod webhooks;

pub use config::Config;

/// The proptest settings of every fuzz module (256 cases, `PROPTEST_CASES` for more; no failure files
/// written into the source tree).
#[cfg(test)]
pub(crate) fn fuzz_config() -> proptest::prelude::ProptestConfig {
    proptest::prelude::ProptestConfig {
        failure_persistence: None,
        ..proptest::prelude::ProptestConfig::default()
    }
}
pub use node::Node;
