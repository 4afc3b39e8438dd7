//! The compaction flusher thread ([`run`]): flushes the store before the Raft logs let go of what it
//! applied, off the apply thread.
//!
//! A group's log may drop entries, and a received snapshot's data, only once their effects are on disk
//! in the store. The apply thread used to flush the store itself before each round of compactions (once
//! a second under load): on a node that had just installed a partition's snapshot, tens of MiB were
//! dirty, and the flush held the apply thread, and every partition the node leads, for 0.2 to 0.6 s at a
//! time during a move (bench/README.md, "Stop 37"). Now the apply thread hands the compactions and
//! installations over ([`FlushRequest`]) and goes on applying; this thread flushes (one flush for every
//! request waiting), then tells the driver, then tells the apply thread what is flushed
//! ([`ApplyInput::Flushed`]).
//!
//! A sled flush makes durable everything written before it began, by any thread: every entry the apply
//! thread applied before it made the request, and every installation it had seen finished.
//!
//! This thread does not make a flush free for the apply thread. sled 0.34 holds its process-wide
//! concurrency lock for reading while a flush waits for the log's buffers, and each batch the apply
//! thread writes takes that lock for writing, so a batch applied during a flush waits for the flush to
//! end. What keeps that wait short is that no flush has much to wait for: the snapshot installer flushes
//! after every 2 MiB it writes (`Store::install_partition`; bench/README.md, "Stop 38").

use std::sync::mpsc;
use std::time::Instant;

use super::{lock, ApplyInput, Input, Replication};
use crate::cluster::placement::PartitionId;
use crate::store::Store;

/// Compactions and installations that wait for the store's next flush.
pub(super) struct FlushRequest {
    /// The apply thread's count of requests, this one's.
    pub(super) generation: u64,
    /// Each partition's log may be compacted up to this index.
    pub(super) compact: Vec<(PartitionId, u64)>,
    /// These partitions' snapshots (at these indexes) are installed.
    pub(super) installed: Vec<(PartitionId, u64)>,
}

/// Flushes the store for each batch of requests that wait, then sends their compactions and
/// installations to the driver, and their generation back to the apply thread. Ends when the apply
/// thread does.
pub(super) fn run(
    requests: mpsc::Receiver<FlushRequest>,
    store: Store,
    shared: std::sync::Weak<Replication>,
    apply: mpsc::Sender<ApplyInput>,
) {
    while let Ok(first) = requests.recv() {
        let mut batch = vec![first];
        batch.extend(requests.try_iter());
        let started = Instant::now();
        if let Err(e) = store.flush_now() {
            // nothing is compacted; a later flush covers these partitions again
            tracing::error!(error = %e, "cannot flush the store before a compaction");
            continue;
        }
        tracing::debug!(took = ?started.elapsed(), requests = batch.len(), "flushed the store for compactions");
        let generation = batch.last().map_or(0, |r| r.generation);
        let (mut compact, mut installed) = (Vec::new(), Vec::new());
        for request in batch {
            compact.extend(request.compact);
            installed.extend(request.installed);
        }
        report(&shared, installed, compact);
        if apply.send(ApplyInput::Flushed(generation)).is_err() {
            return;
        }
    }
}

/// Tells the driver, once the store is flushed, which installations are durable and how far the logs
/// may be compacted.
pub(super) fn report(
    shared: &std::sync::Weak<Replication>,
    installed: Vec<(PartitionId, u64)>,
    compact: Vec<(PartitionId, u64)>,
) {
    if let Some(shared) = shared.upgrade() {
        let tx = lock(&shared.tx);
        if !installed.is_empty() {
            let _ = tx.send(Input::Installed(installed));
        }
        if !compact.is_empty() {
            let _ = tx.send(Input::Compact(compact));
        }
    }
}
