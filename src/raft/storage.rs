//! [`GroupStorage`]: what raft-rs reads a group's log from. Entries and states live in raft-rs's own
//! `MemStorage` (rebuilt from the node's [`super::log::RaftLog`] at start); this adds what `MemStorage`
//! lacks for a bounded log:
//!
//! - **Compaction** ([`GroupStorage::compact`]): entries below an index that the node's store has durably
//!   applied are dropped. The log then starts after a snapshot point (`MemStorage`'s snapshot metadata), so
//!   raft-rs still knows the term of the entry just before the first one it keeps.
//! - **Snapshots of the partition's data**: a follower that needs entries the leader no longer has gets the
//!   partition's keys instead. raft-rs asks [`Storage::snapshot`] on the driver thread, which must not scan
//!   the store; so the first ask answers "temporarily unavailable" and marks the snapshot as wanted, the
//!   node's apply thread makes one at its applied index (a consistent cut: it is the only writer), and the
//!   driver offers it here; raft-rs asks again with its next probe and sends it. Once handed out and no
//!   follower waits for one any more, the snapshot is let go ([`GroupStorage::release_handed`]): kept, a
//!   leader held a copy of every partition it had sent, hundreds of MiB per node after a 1 GiB move.

use std::sync::{Arc, Mutex};

use raft::eraftpb::{ConfState, Entry, Snapshot, SnapshotMetadata};
use raft::storage::{MemStorage, RaftState};
use raft::{GetEntriesContext, Storage, StorageError};

#[derive(Default)]
struct Slot {
    /// The latest snapshot of the partition's data made here.
    ready: Option<Snapshot>,
    /// raft-rs asked for a snapshot newer than `ready`: the index it must reach at least.
    wanted: Option<u64>,
    /// `ready` has been handed to raft-rs for a follower.
    handed: bool,
}

/// What [`GroupStorage::release_handed`] did with the snapshot made here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// None is held (none was made, or it was let go before).
    NoneHeld,
    /// It is kept: not handed out yet, or a follower still waits for one.
    Kept,
    /// It was let go.
    LetGo,
}

/// A group's storage (cheap to clone: clones share it).
#[derive(Clone)]
pub struct GroupStorage {
    mem: MemStorage,
    slot: Arc<Mutex<Slot>>,
}

/// What a compaction left, for the log file: the new snapshot point and the entries kept after it.
pub struct Compacted {
    pub point: SnapshotMetadata,
    pub kept: Vec<Entry>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl GroupStorage {
    pub fn new(mem: MemStorage) -> GroupStorage {
        GroupStorage {
            mem,
            slot: Arc::default(),
        }
    }

    /// The entries and states.
    pub fn mem(&self) -> &MemStorage {
        &self.mem
    }

    /// Whether raft-rs wants a snapshot that has not been offered yet, and the index it must reach at
    /// least (asked once per want).
    pub fn take_wanted(&self) -> Option<u64> {
        lock(&self.slot).wanted.take()
    }

    /// A snapshot of the partition's data, made by the apply thread, for raft-rs to send.
    pub fn offer(&self, snapshot: Snapshot) {
        let mut slot = lock(&self.slot);
        let newer = slot
            .ready
            .as_ref()
            .is_none_or(|s| s.get_metadata().index <= snapshot.get_metadata().index);
        if newer {
            slot.ready = Some(snapshot);
            slot.handed = false;
        }
    }

    /// Lets the latest snapshot made here go once raft-rs has handed it to a follower and `sending` says
    /// that no follower waits for one any more (each has installed it, or lost it: raft-rs then asks
    /// again and one is made anew, at a later index). A snapshot never handed out is let go too when
    /// `sending` is `None` (this node no longer leads). `sending` is asked only while one is held.
    pub fn release_handed(&self, sending: impl FnOnce() -> Option<bool>) -> Release {
        let mut slot = lock(&self.slot);
        if slot.ready.is_none() {
            return Release::NoneHeld;
        }
        let done = match sending() {
            None => true,
            Some(sending) => slot.handed && !sending,
        };
        if !done {
            return Release::Kept;
        }
        slot.ready = None;
        slot.handed = false;
        Release::LetGo
    }

    /// Whether a snapshot made here is kept for raft-rs.
    #[cfg(test)]
    pub fn holds_snapshot(&self) -> bool {
        lock(&self.slot).ready.is_some()
    }

    /// The snapshot point: the index and term just before the first entry kept (0, 0 before any).
    pub fn point(&self) -> raft::Result<SnapshotMetadata> {
        let first = self.mem.first_index()?;
        let index = first.saturating_sub(1);
        let term = if index == 0 { 0 } else { self.mem.term(index)? };
        let state = self.mem.initial_state()?;
        Ok(SnapshotMetadata {
            index,
            term,
            conf_state: Some(state.conf_state).into(),
            ..Default::default()
        })
    }

    /// Drops the entries before `index` (which the node's store has durably applied; all of them for
    /// `index` past the last); `None` if there is nothing to drop. `conf` is the group's configuration at
    /// the new point (`index - 1`): the storage's configuration is always its point's. The hard state
    /// (commit included) is kept as it was.
    pub fn compact(&self, index: u64, conf: ConfState) -> raft::Result<Option<Compacted>> {
        let first = self.mem.first_index()?;
        let last = self.mem.last_index()?;
        let index = index.min(last.saturating_add(1));
        if index <= first {
            return Ok(None);
        }
        let state = self.mem.initial_state()?;
        let term = self.mem.term(index - 1)?;
        let kept = if index <= last {
            self.mem
                .entries(index, last + 1, None, GetEntriesContext::empty(false))?
        } else {
            Vec::new()
        };
        let point = SnapshotMetadata {
            index: index - 1,
            term,
            conf_state: Some(conf).into(),
            ..Default::default()
        };
        let mut core = self.mem.wl();
        core.apply_snapshot(Snapshot {
            metadata: Some(point.clone()).into(),
            ..Default::default()
        })?;
        core.set_hardstate(state.hard_state);
        core.append(&kept)?;
        Ok(Some(Compacted { point, kept }))
    }
}

impl Storage for GroupStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        self.mem.initial_state()
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.mem.entries(low, high, max_size, context)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.mem.term(idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        self.mem.first_index()
    }

    fn last_index(&self) -> raft::Result<u64> {
        self.mem.last_index()
    }

    /// The latest snapshot made here if it covers what the follower lacks (everything before the first
    /// entry kept, and `request_index`) and its configuration has the follower (a replica just added
    /// refuses a snapshot from before its addition); else "temporarily unavailable" until the apply thread
    /// made one.
    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let first = self.mem.first_index()?;
        let needed = request_index.max(first.saturating_sub(1));
        let mut slot = lock(&self.slot);
        if let Some(s) = slot.ready.as_ref() {
            let cs = s.get_metadata().get_conf_state();
            let has = cs
                .get_voters()
                .iter()
                .chain(cs.get_learners())
                .chain(cs.get_voters_outgoing())
                .any(|id| *id == to);
            if s.get_metadata().index >= needed && has {
                let s = s.clone();
                slot.handed = true;
                return Ok(s);
            }
        }
        slot.wanted = Some(slot.wanted.unwrap_or(0).max(needed));
        Err(raft::Error::Store(
            StorageError::SnapshotTemporarilyUnavailable,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::eraftpb::{ConfState, HardState};

    fn storage(entries: u64) -> GroupStorage {
        let mem = MemStorage::new_with_conf_state(ConfState::from((vec![1, 2, 3], vec![])));
        let list: Vec<Entry> = (1..=entries)
            .map(|i| Entry {
                index: i,
                term: 1 + i / 10,
                data: vec![u8::try_from(i % 256).unwrap_or(0)].into(),
                ..Default::default()
            })
            .collect();
        mem.wl().append(&list).expect("append");
        mem.wl().set_hardstate(HardState {
            term: 9,
            vote: 2,
            commit: entries,
            ..Default::default()
        });
        GroupStorage::new(mem)
    }

    #[test]
    fn compaction_keeps_the_tail_the_term_before_it_and_the_hard_state() {
        let s = storage(100);
        let conf = s.initial_state().expect("state").conf_state;
        let c = s
            .compact(60, conf.clone())
            .expect("compact")
            .expect("something dropped");
        assert_eq!(c.point.index, 59);
        assert_eq!(c.point.term, 1 + 59 / 10);
        assert_eq!(c.kept.len(), 41);
        assert_eq!(s.first_index().expect("first"), 60);
        assert_eq!(s.last_index().expect("last"), 100);
        assert_eq!(s.term(59).expect("term before the first"), 6);
        assert!(s.term(58).is_err(), "compacted");
        let state = s.initial_state().expect("state");
        assert_eq!(state.hard_state.commit, 100, "commit kept");
        assert_eq!(state.hard_state.vote, 2);
        assert_eq!(state.conf_state.voters, vec![1, 2, 3]);
        assert!(
            s.compact(30, conf.clone()).expect("compact").is_none(),
            "already dropped"
        );
        assert_eq!(s.point().expect("point").index, 59);
        let all = s.compact(500, conf).expect("compact").expect("all dropped");
        assert_eq!(all.point.index, 100);
        assert!(all.kept.is_empty());
        assert_eq!(s.first_index().expect("first"), 101);
    }

    #[test]
    fn a_snapshot_is_wanted_until_one_covering_the_compacted_entries_is_offered() {
        let s = storage(100);
        let conf = s.initial_state().expect("state").conf_state;
        s.compact(60, conf).expect("compact");
        assert!(s.snapshot(0, 2).is_err());
        assert_eq!(
            s.take_wanted(),
            Some(59),
            "everything before the first entry kept"
        );
        assert_eq!(s.take_wanted(), None, "asked once per want");
        let old = Snapshot {
            metadata: Some(SnapshotMetadata {
                index: 40,
                term: 5,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        s.offer(old);
        assert!(s.snapshot(0, 2).is_err(), "too old to follow with the log");
        s.offer(made(80));
        assert!(
            s.snapshot(0, 9).is_err(),
            "not for a replica its configuration lacks"
        );
        let got = s.snapshot(0, 2).expect("snapshot");
        assert_eq!(got.get_metadata().index, 80);
        assert_eq!(&got.data[..], b"keys");
    }

    /// A snapshot made at `index` (term 9) of a group of nodes 1 to 3, its data `keys`.
    fn made(index: u64) -> Snapshot {
        Snapshot {
            metadata: Some(SnapshotMetadata {
                index,
                term: 9,
                conf_state: Some(ConfState::from((vec![1, 2, 3], vec![]))).into(),
                ..Default::default()
            })
            .into(),
            data: b"keys".to_vec().into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_snapshot_is_let_go_once_handed_out_and_no_follower_waits_for_one() {
        let s = storage(100);
        let conf = s.initial_state().expect("state").conf_state;
        s.compact(60, conf).expect("compact");
        s.offer(made(80));
        assert_eq!(
            s.release_handed(|| Some(false)),
            Release::Kept,
            "kept until raft-rs has handed it out"
        );
        s.snapshot(0, 2).expect("handed to a follower");
        assert_eq!(
            s.release_handed(|| Some(true)),
            Release::Kept,
            "kept while a follower waits for one (it may be lost and sent again)"
        );
        assert_eq!(
            s.release_handed(|| Some(false)),
            Release::LetGo,
            "let go once none waits"
        );
        assert_eq!(
            s.release_handed(|| panic!("not asked when none is held")),
            Release::NoneHeld,
            "nothing left to let go"
        );
        assert!(
            s.snapshot(0, 2).is_err(),
            "another is made if one is needed"
        );
        assert_eq!(s.take_wanted(), Some(59));

        s.offer(made(90));
        s.snapshot(0, 3).expect("handed");
        s.offer(made(95));
        assert_eq!(
            s.release_handed(|| Some(false)),
            Release::Kept,
            "a newer snapshot offered since has not been handed out"
        );
        assert_eq!(
            s.release_handed(|| None),
            Release::LetGo,
            "a node that no longer leads lets any go"
        );
        assert!(s.snapshot(0, 2).is_err());
    }
}
