//! A replica whose store is behind its log does not take the leadership: it could not serve.
//!
//! A leader serves only once its apply thread has applied everything committed before its term
//! (`Replication::serving`), but Raft elects on logs alone. A replica whose apply thread was seconds
//! behind (applying the entries held while it installed a snapshot: 2-4 s of them in a debug build under
//! load) took the leadership and left the partition unserved meanwhile: CI saw "no leader serves" for
//! 3.6 s after a node joined, once through a leadership transfer and once through an election after the
//! leader had stepped down. So, per partition, comparing what the driver handed to the apply thread with
//! what it has applied:
//!
//! - a leadership offered (`MsgTimeoutNow`) waits until the entries handed when it came are applied, and
//!   is stepped then ([`Behind::offered`], [`Behind::due`]). One that waits longer than its patience is
//!   dropped: the old leader gives the transfer up after raft-rs's election timeout and serves again, and
//!   a campaign started later would only disrupt it.
//! - a campaign's vote requests are not sent while the store is behind ([`Behind::campaigns`]); raft
//!   campaigns again after another election timeout. Nothing new is committed while there is no leader,
//!   so the store catches up meanwhile; the other replicas, not campaigning against it, can be elected.
//!   A transfer's campaign goes: its offer waited already.
//!
//! Pure: the driver tells it what it hands to the apply thread and asks with the apply thread's progress
//! (`Replication::applied`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use raft::eraftpb::{Message, MessageType};

use crate::cluster::placement::PartitionId;
use crate::raft::multi::Batch;

/// What the driver handed to the apply thread, and the offers that wait for it.
pub(super) struct Behind {
    /// How long an offer may wait.
    patience: Duration,
    /// Per partition: the last index handed to the apply thread (an entry, or a snapshot's point).
    handed: HashMap<PartitionId, u64>,
    offers: HashMap<PartitionId, Offer>,
}

/// A leadership offered while the store was behind.
struct Offer {
    message: Message,
    /// Stepped once the partition is applied up to here.
    until: u64,
    /// Dropped from then on.
    expires: Instant,
}

impl Behind {
    pub(super) fn new(patience: Duration) -> Behind {
        Behind {
            patience,
            handed: HashMap::new(),
            offers: HashMap::new(),
        }
    }

    /// `partition` is handed to the apply thread up to `index`.
    pub(super) fn handed(&mut self, partition: PartitionId, index: u64) {
        let at = self.handed.entry(partition).or_default();
        *at = (*at).max(index);
    }

    /// Whether the apply thread, which has applied `partition` up to `applied`, has not applied all it
    /// was handed.
    fn is_behind(&self, partition: PartitionId, applied: u64) -> bool {
        self.handed.get(&partition).is_some_and(|h| *h > applied)
    }

    /// `message` offers `partition`'s leadership, which the apply thread has applied up to `applied`:
    /// the message, if it may be stepped now; else it waits (replacing an older offer).
    pub(super) fn offered(
        &mut self,
        partition: PartitionId,
        message: Message,
        applied: u64,
        now: Instant,
    ) -> Option<Message> {
        if !self.is_behind(partition, applied) {
            self.offers.remove(&partition);
            return Some(message);
        }
        let until = self.handed.get(&partition).copied().unwrap_or(0);
        self.offers.insert(
            partition,
            Offer {
                message,
                until,
                expires: now + self.patience,
            },
        );
        None
    }

    /// The offers that may be stepped now (`applied` gives a partition's progress on the apply thread);
    /// those that waited too long are dropped.
    pub(super) fn due(
        &mut self,
        applied: impl Fn(PartitionId) -> u64,
        now: Instant,
    ) -> Vec<(PartitionId, Message)> {
        if self.offers.is_empty() {
            return Vec::new();
        }
        let mut due = Vec::new();
        self.offers.retain(|&p, offer| {
            if now >= offer.expires {
                tracing::info!(
                    partition = p,
                    until = offer.until,
                    "a leadership offer dropped: this node is still applying"
                );
                return false;
            }
            if applied(p) >= offer.until {
                due.push((p, offer.message.clone()));
                return false;
            }
            true
        });
        due
    }

    /// `batch` without the vote requests of campaigns for partitions whose store is behind (`applied`
    /// gives a partition's progress on the apply thread); a transfer's campaign goes.
    pub(super) fn campaigns(
        &self,
        mut batch: Batch,
        applied: impl Fn(PartitionId) -> u64,
    ) -> Batch {
        batch.messages.retain(|(p, m)| {
            let campaign = matches!(
                m.get_msg_type(),
                MessageType::MsgRequestPreVote | MessageType::MsgRequestVote
            ) && m.context != raft::CAMPAIGN_TRANSFER;
            let keep = !campaign || !self.is_behind(*p, applied(*p));
            if !keep {
                tracing::debug!(
                    partition = p,
                    "not campaigning: this node is still applying"
                );
            }
            keep
        });
        batch
    }

    /// Whether an offer of `partition` waits.
    #[cfg(test)]
    fn waits(&self, partition: PartitionId) -> bool {
        self.offers.contains_key(&partition)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATIENCE: Duration = Duration::from_millis(500);

    fn message(kind: MessageType, term: u64) -> Message {
        let mut m = Message::default();
        m.set_msg_type(kind);
        m.term = term;
        m
    }

    fn offer(term: u64) -> Message {
        message(MessageType::MsgTimeoutNow, term)
    }

    #[test]
    fn an_offer_to_a_replica_that_applied_what_it_was_handed_is_taken_at_once() {
        let mut b = Behind::new(PATIENCE);
        let now = Instant::now();
        assert!(
            b.offered(3, offer(2), 0, now).is_some(),
            "nothing handed yet"
        );
        b.handed(3, 40);
        b.handed(3, 30);
        assert!(b.offered(3, offer(2), 40, now).is_some());
        assert!(!b.waits(3));
    }

    #[test]
    fn an_offer_waits_for_what_was_handed_when_it_came_not_for_what_came_after() {
        let mut b = Behind::new(PATIENCE);
        let now = Instant::now();
        b.handed(3, 40);
        assert!(b.offered(3, offer(2), 10, now).is_none());
        assert!(b.waits(3));
        // entries keep coming under load: the offer does not chase them
        b.handed(3, 90);
        assert!(b.due(|_| 39, now).is_empty());
        let due = b.due(|_| 40, now + Duration::from_millis(10));
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].0, 3);
        assert_eq!(due[0].1.term, 2);
        assert!(!b.waits(3));
        assert!(b.due(|_| 90, now).is_empty(), "stepped once");
    }

    #[test]
    fn an_offer_that_waited_too_long_is_dropped() {
        let mut b = Behind::new(PATIENCE);
        let now = Instant::now();
        b.handed(3, 40);
        b.handed(4, 40);
        assert!(b.offered(3, offer(2), 0, now).is_none());
        assert!(b.offered(4, offer(5), 0, now).is_none());
        let due = b.due(|p| if p == 4 { 40 } else { 0 }, now + PATIENCE / 2);
        assert_eq!(due.iter().map(|(p, _)| *p).collect::<Vec<_>>(), vec![4]);
        assert!(b.due(|_| 0, now + PATIENCE).is_empty());
        assert!(!b.waits(3), "expired");
        assert!(b.due(|_| 40, now + PATIENCE).is_empty(), "gone for good");
    }

    #[test]
    fn a_newer_offer_replaces_the_waiting_one() {
        let mut b = Behind::new(PATIENCE);
        let now = Instant::now();
        b.handed(3, 40);
        assert!(b.offered(3, offer(2), 0, now).is_none());
        b.handed(3, 50);
        assert!(b.offered(3, offer(3), 0, now).is_none());
        assert!(
            b.due(|_| 45, now).is_empty(),
            "the newer offer waits for 50"
        );
        let due = b.due(|_| 50, now);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].1.term, 3);
    }

    #[test]
    fn a_replica_behind_sends_no_vote_requests_but_a_transfers_and_everything_else() {
        let mut b = Behind::new(PATIENCE);
        b.handed(3, 40);
        b.handed(4, 40);
        let mut transfer = message(MessageType::MsgRequestVote, 7);
        transfer.context = bytes::Bytes::from_static(raft::CAMPAIGN_TRANSFER);
        let batch = Batch {
            to: 1,
            messages: vec![
                (3, message(MessageType::MsgRequestPreVote, 6)),
                (3, message(MessageType::MsgRequestVote, 7)),
                (3, message(MessageType::MsgAppendResponse, 6)),
                (3, message(MessageType::MsgRequestVoteResponse, 6)),
                (3, transfer),
                (4, message(MessageType::MsgRequestPreVote, 6)),
                (5, message(MessageType::MsgRequestVote, 6)),
            ],
            gone: Vec::new(),
        };
        // 3 is behind, 4 has applied all it was handed, 5 was handed nothing
        let sent = b.campaigns(batch, |p| if p == 3 { 39 } else { 40 });
        let kinds: Vec<(PartitionId, MessageType, bool)> = sent
            .messages
            .iter()
            .map(|(p, m)| (*p, m.get_msg_type(), !m.context.is_empty()))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (3, MessageType::MsgAppendResponse, false),
                (3, MessageType::MsgRequestVoteResponse, false),
                (3, MessageType::MsgRequestVote, true),
                (4, MessageType::MsgRequestPreVote, false),
                (5, MessageType::MsgRequestVote, false),
            ]
        );
    }
}
