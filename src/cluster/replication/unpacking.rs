//! Snapshots this node received and is still installing, and what it keeps back meanwhile.
//!
//! Raft counts a replica caught up once its log holds a snapshot, but the apply thread installs the
//! snapshot's data afterwards (seconds for a large partition in a debug build under load). A learner that
//! acknowledged at once would be promoted, its move marked done, and the leadership handed to it while it
//! could not serve yet: requests waited past the failover bound (seen in CI as "no leader serves" a
//! second after a node had joined). So a learner keeps back what it sends about a partition it installs
//! (its acknowledgement of the snapshot above all), and sends it once the installation is done and the
//! entries held for it meanwhile are applied. A replica installing a snapshot, or applying what followed it
//! (seconds of entries too), takes no leadership meanwhile: see `behind.rs`.
//!
//! A voter's messages are never kept back: in a group of two, a silent voter costs the leader its quorum
//! (check-quorum). Heartbeat responses are not either: they only say the replica is alive.

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use raft::eraftpb::{Message, MessageType, SnapshotMetadata};

use crate::cluster::placement::PartitionId;
use crate::raft::multi::Batch;

/// The partitions being installed here, by partition.
#[derive(Default)]
pub(super) struct Unpacking {
    partitions: HashMap<PartitionId, Installing>,
}

/// A partition whose received snapshot is not installed yet.
struct Installing {
    /// The point of the latest snapshot handed to the apply thread.
    index: u64,
    /// This node is a learner of the partition: what it sends there waits for the installation.
    learner: bool,
    /// What waits, in the order raft produced it.
    withheld: Vec<Message>,
}

impl Unpacking {
    /// `partition`'s snapshot (of `meta`) goes to the apply thread on node `me`.
    pub(super) fn started(&mut self, partition: PartitionId, meta: &SnapshotMetadata, me: u64) {
        let learner = meta.get_conf_state().learners.contains(&me);
        let installing = self.partitions.entry(partition).or_insert(Installing {
            index: 0,
            learner,
            withheld: Vec::new(),
        });
        installing.index = installing.index.max(meta.index);
        installing.learner = learner;
    }

    /// Whether a snapshot of `partition` is being installed here.
    #[cfg(test)]
    fn busy(&self, partition: PartitionId) -> bool {
        self.partitions.contains_key(&partition)
    }

    /// `batch` without the messages that wait for an installation (kept here, see the module docs).
    pub(super) fn withhold(&mut self, mut batch: Batch) -> Batch {
        if self.partitions.is_empty() {
            return batch;
        }
        let messages = std::mem::take(&mut batch.messages);
        for (p, m) in messages {
            match self.partitions.get_mut(&p) {
                Some(i) if i.learner && m.get_msg_type() != MessageType::MsgHeartbeatResponse => {
                    i.withheld.push(m);
                }
                _ => batch.messages.push((p, m)),
            }
        }
        batch
    }

    /// The apply thread has installed `partition`'s snapshot at `index`: once the latest one handed to it
    /// is, what was kept back for the partition, as batches (one per destination, in order).
    pub(super) fn finished(&mut self, partition: PartitionId, index: u64) -> Vec<Batch> {
        match self.partitions.entry(partition) {
            Entry::Occupied(e) if e.get().index <= index => {
                Batch::of(partition, e.remove().withheld)
            }
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: u64 = 2;

    fn meta(index: u64, learner: bool) -> SnapshotMetadata {
        let mut meta = SnapshotMetadata {
            index,
            ..SnapshotMetadata::default()
        };
        if learner {
            meta.mut_conf_state().learners = vec![ME];
            meta.mut_conf_state().voters = vec![1];
        } else {
            meta.mut_conf_state().voters = vec![1, ME];
        }
        meta
    }

    fn msg(kind: MessageType, index: u64) -> Message {
        let mut m = Message::default();
        m.set_msg_type(kind);
        m.index = index;
        m
    }

    /// A batch to `to` (raft sets each message's `to`).
    fn batch(to: u64, messages: Vec<(PartitionId, Message)>) -> Batch {
        let messages = messages
            .into_iter()
            .map(|(p, mut m)| {
                m.to = to;
                (p, m)
            })
            .collect();
        Batch {
            to,
            messages,
            gone: Vec::new(),
        }
    }

    fn kinds(b: &Batch) -> Vec<(PartitionId, MessageType, u64)> {
        b.messages
            .iter()
            .map(|(p, m)| (*p, m.get_msg_type(), m.index))
            .collect()
    }

    #[test]
    fn a_learner_acknowledges_a_snapshot_once_it_is_installed() {
        let mut u = Unpacking::default();
        u.started(3, &meta(40, true), ME);
        assert!(u.busy(3) && !u.busy(4));
        let out = u.withhold(batch(
            1,
            vec![
                (3, msg(MessageType::MsgAppendResponse, 40)),
                (3, msg(MessageType::MsgHeartbeatResponse, 0)),
                (4, msg(MessageType::MsgAppendResponse, 7)),
            ],
        ));
        // the other partition's message and the heartbeat response go; the acknowledgement waits
        assert_eq!(
            kinds(&out),
            vec![
                (3, MessageType::MsgHeartbeatResponse, 0),
                (4, MessageType::MsgAppendResponse, 7)
            ]
        );
        let later = u.withhold(batch(1, vec![(3, msg(MessageType::MsgAppendResponse, 41))]));
        assert!(later.messages.is_empty());
        let released = u.finished(3, 40);
        assert_eq!(released.len(), 1);
        assert_eq!(released[0].to, 1);
        assert_eq!(
            kinds(&released[0]),
            vec![
                (3, MessageType::MsgAppendResponse, 40),
                (3, MessageType::MsgAppendResponse, 41)
            ]
        );
        assert!(!u.busy(3));
        // nothing is kept any more
        let out = u.withhold(batch(1, vec![(3, msg(MessageType::MsgAppendResponse, 42))]));
        assert_eq!(out.messages.len(), 1);
    }

    #[test]
    fn only_the_latest_snapshot_installed_releases() {
        let mut u = Unpacking::default();
        u.started(3, &meta(40, true), ME);
        u.started(3, &meta(55, true), ME);
        let _ = u.withhold(batch(1, vec![(3, msg(MessageType::MsgAppendResponse, 55))]));
        assert!(u.finished(3, 40).is_empty());
        assert!(u.busy(3));
        let released = u.finished(3, 55);
        assert_eq!(
            kinds(&released[0]),
            vec![(3, MessageType::MsgAppendResponse, 55)]
        );
        assert!(!u.busy(3));
        // a report for a partition not being installed is nothing
        assert!(u.finished(9, 1).is_empty());
    }

    #[test]
    fn a_voter_keeps_nothing_back_but_refuses_the_leadership() {
        let mut u = Unpacking::default();
        u.started(3, &meta(40, false), ME);
        let out = u.withhold(batch(1, vec![(3, msg(MessageType::MsgAppendResponse, 40))]));
        assert_eq!(out.messages.len(), 1);
        assert!(u.busy(3));
        assert!(u.finished(3, 40).is_empty());
        assert!(!u.busy(3));
    }

    #[test]
    fn what_waits_goes_back_to_each_destination_in_order() {
        let mut u = Unpacking::default();
        u.started(3, &meta(40, true), ME);
        let _ = u.withhold(batch(1, vec![(3, msg(MessageType::MsgAppendResponse, 40))]));
        let _ = u.withhold(batch(5, vec![(3, msg(MessageType::MsgAppendResponse, 41))]));
        let _ = u.withhold(batch(1, vec![(3, msg(MessageType::MsgAppendResponse, 42))]));
        let released = u.finished(3, 40);
        let by_to: Vec<(u64, Vec<u64>)> = released
            .iter()
            .map(|b| (b.to, b.messages.iter().map(|(_, m)| m.index).collect()))
            .collect();
        assert_eq!(by_to, vec![(1, vec![40, 42]), (5, vec![41])]);
    }
}
