//! The webhook outbox: events waiting for delivery (PROTOCOL.md, "Webhooks"), in the `conv_log` tree under
//! `o` id:u64, so a message and the events it causes are written in one sled batch (see
//! [`Store::write_conv`]): a crash keeps both or neither. Ids grow per node; the sender reads the lowest
//! first and removes an event only after the receiver's 2xx, so the outbox is bounded by disk, not memory.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::{keys, Store, StoreError, StoreResult};

/// One stored event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    pub id: u64,
    /// When it was written (Unix milliseconds), for the age metric.
    pub enqueued_ms: u64,
    /// The event as the receiver gets it.
    pub json: String,
}

/// The outbox's counters, shared by every clone of the store.
#[derive(Clone, Default)]
pub struct OutboxState {
    next: Arc<AtomicU64>,
    depth: Arc<AtomicU64>,
    wake: Arc<tokio::sync::Notify>,
}

impl OutboxState {
    /// Reads the highest id and the number of waiting events (once, at open).
    pub(super) fn open(tree: &sled::Tree) -> StoreResult<OutboxState> {
        let state = OutboxState::default();
        let prefix = [keys::OUTBOX];
        if let Some(last) = tree.scan_prefix(prefix).next_back() {
            let (k, _) = last?;
            let id = keys::parse_u64(&k, 1).ok_or_else(|| StoreError::Corrupt("outbox".into()))?;
            state.next.store(id.saturating_add(1), Ordering::SeqCst);
        }
        let depth = tree.scan_prefix(prefix).keys().count();
        state
            .depth
            .store(u64::try_from(depth).unwrap_or(u64::MAX), Ordering::SeqCst);
        Ok(state)
    }
}

/// The stored form: enqueue time, then the JSON.
pub(super) fn value(enqueued_ms: u64, json: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + json.len());
    v.extend_from_slice(&enqueued_ms.to_be_bytes());
    v.extend_from_slice(json.as_bytes());
    v
}

impl Store {
    /// A fresh outbox id (ids only grow on this node, also across restarts).
    pub fn outbox_id(&self) -> u64 {
        self.outbox.next.fetch_add(1, Ordering::SeqCst)
    }

    /// Events now in the outbox (written and not yet acknowledged by the receiver).
    pub fn outbox_depth(&self) -> u64 {
        self.outbox.depth.load(Ordering::SeqCst)
    }

    /// Counts `n` events written with a message (see [`Store::write_conv`]) and wakes the sender.
    pub(super) fn outbox_added(&self, n: usize) {
        self.outbox
            .depth
            .fetch_add(u64::try_from(n).unwrap_or(0), Ordering::SeqCst);
        self.outbox.wake.notify_one();
    }

    /// Writes events that no message causes (presence), each in its own write; durable with the next flush.
    pub fn push_events(&self, events: &[(u64, u64, String)]) -> StoreResult<()> {
        for (id, enqueued_ms, json) in events {
            self.conv_log
                .insert(keys::outbox(*id), value(*enqueued_ms, json))?;
        }
        self.outbox_added(events.len());
        Ok(())
    }

    /// The `max` lowest events.
    pub fn outbox_batch(&self, max: usize) -> StoreResult<Vec<OutboxEntry>> {
        let mut out = Vec::new();
        for entry in self.conv_log.scan_prefix([keys::OUTBOX]).take(max) {
            let (k, v) = entry?;
            let corrupt = || StoreError::Corrupt("outbox".into());
            let id = keys::parse_u64(&k, 1).ok_or_else(corrupt)?;
            let enqueued_ms = keys::parse_u64(&v, 0).ok_or_else(corrupt)?;
            let json = std::str::from_utf8(&v[8..]).map_err(|_| corrupt())?;
            out.push(OutboxEntry {
                id,
                enqueued_ms,
                json: json.to_owned(),
            });
        }
        Ok(out)
    }

    /// When the oldest waiting event was written (Unix ms), if any.
    pub fn outbox_oldest_ms(&self) -> StoreResult<Option<u64>> {
        match self.conv_log.scan_prefix([keys::OUTBOX]).next() {
            None => Ok(None),
            Some(entry) => Ok(keys::parse_u64(&entry?.1, 0)),
        }
    }

    /// Removes delivered events.
    pub fn outbox_remove(&self, ids: &[u64]) -> StoreResult<()> {
        let mut removed = 0u64;
        for id in ids {
            if self.conv_log.remove(keys::outbox(*id))?.is_some() {
                removed += 1;
            }
        }
        let _ = self
            .outbox
            .depth
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |d| {
                Some(d.saturating_sub(removed))
            });
        Ok(())
    }

    /// Resolves when events were added since the last call (or at once if some were before it).
    pub async fn outbox_added_wait(&self) {
        self.outbox.wake.notified().await;
    }
}
