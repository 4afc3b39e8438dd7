//! Consensus for replicated partitions: one Raft group per partition, run by tikv's `raft` crate (raft-rs,
//! pinned exactly in `Cargo.toml`), never by code of our own.
//!
//! raft-rs is a pure state machine: it never reads a clock, never sends, never writes. That is why it was
//! chosen over openraft, whose groups each run their own task and timers: a node here keeps hundreds of
//! groups (one per partition it replicates), and [`multi::MultiRaft`] drives them all from one tick and
//! coalesces their traffic, so a tick costs one frame per other node however many groups exchange
//! heartbeats (TiKV's multi-raft shape).
//!
//! The engine ([`multi::MultiRaft`]: pre-vote, check-quorum, leader transfer and hand-over, proposal and
//! commit, guards for a replica that lost its disk, tested on a simulated network that drops, partitions
//! and kills nodes), its storage ([`storage::GroupStorage`]: compaction and snapshots of a partition's
//! data) and its durable log ([`log::RaftLog`]) run in every node through [`crate::cluster::replication`],
//! which carries their traffic over the authenticated peer links and applies committed entries through
//! [`crate::state::replica`].

pub mod log;
pub mod multi;
pub mod storage;

/// raft-rs logs through `slog`; this forwards its records to `tracing` (raft's own `info` is chatty, so
/// it becomes `debug`).
#[derive(Debug, Clone, Copy, Default)]
pub struct TracingDrain;

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &slog::Record<'_>, _: &slog::OwnedKVList) -> Result<(), slog::Never> {
        let message = record.msg().to_string();
        match record.level() {
            slog::Level::Critical | slog::Level::Error => {
                tracing::error!(target: "raft", "{message}")
            }
            slog::Level::Warning => tracing::warn!(target: "raft", "{message}"),
            slog::Level::Info => tracing::debug!(target: "raft", "{message}"),
            slog::Level::Debug | slog::Level::Trace => tracing::trace!(target: "raft", "{message}"),
        }
        Ok(())
    }
}

/// The logger raft-rs gets.
pub fn logger() -> slog::Logger {
    slog::Logger::root(TracingDrain, slog::o!())
}
