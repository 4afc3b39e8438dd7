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
//! - a campaign's vote requests wait while the store is behind ([`Behind::campaigns`]), and go once it
//!   has applied what it was handed when the campaign started: nothing new is committed while there is
//!   no leader, so the store catches up meanwhile, and a leader elected then serves at once (it could not
//!   serve sooner anyway: its first entry would be applied behind the backlog). The other replicas,
//!   whose vote requests go, can be elected first. Requests that waited longer than the patience are
//!   dropped (raft campaigns again). A transfer's campaign goes at once: its offer waited already.
//!
//! Pure: the driver tells it what it hands to the apply thread and asks with the apply thread's progress
//! (`Replication::applied`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use raft::eraftpb::{Message, MessageType};

use crate::cluster::placement::PartitionId;
use crate::raft::multi::Batch;

/// What the driver handed to the apply thread, and the offers and campaigns that wait for it.
pub(super) struct Behind {
    /// How long an offer or a campaign may wait.
    patience: Duration,
    /// Per partition: the last index handed to the apply thread (an entry, or a snapshot's point).
    handed: HashMap<PartitionId, u64>,
    /// Leaderships offered (one message each).
    offers: HashMap<PartitionId, Waiting>,
    /// Campaigns (their vote requests, one per voter).
    campaigns: HashMap<PartitionId, Waiting>,
}

/// Messages that wait for the store: a leadership offered, or a campaign's vote requests.
struct Waiting {
    messages: Vec<Message>,
    /// Released once the partition is applied up to here.
    until: u64,
    /// Dropped from then on.
    expires: Instant,
}

/// What may go now (see [`Behind::due`]).
#[derive(Default)]
pub(super) struct Due {
    /// Leaderships offered, to step.
    pub(super) offers: Vec<(PartitionId, Message)>,
    /// Vote requests, to send.
    pub(super) campaigns: Vec<Batch>,
}

impl Behind {
    pub(super) fn new(patience: Duration) -> Behind {
        Behind {
            patience,
            handed: HashMap::new(),
            offers: HashMap::new(),
            campaigns: HashMap::new(),
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
            Waiting {
                messages: vec![message],
                until,
                expires: now + self.patience,
            },
        );
        None
    }

    /// The offers and campaigns that may go now (`applied` gives a partition's progress on the apply
    /// thread); those that waited too long are dropped.
    pub(super) fn due(&mut self, applied: impl Fn(PartitionId) -> u64, now: Instant) -> Due {
        let mut due = Due::default();
        for (p, messages) in release(&mut self.offers, &applied, now, "a leadership offer") {
            due.offers.extend(messages.into_iter().map(|m| (p, m)));
        }
        for (p, messages) in release(&mut self.campaigns, &applied, now, "a campaign") {
            due.campaigns.extend(Batch::of(p, messages));
        }
        due
    }

    /// `batch` without the vote requests of campaigns for partitions whose store is behind (`applied`
    /// gives a partition's progress on the apply thread): they wait here (replacing those of an earlier
    /// campaign). A transfer's campaign goes.
    pub(super) fn campaigns(
        &mut self,
        mut batch: Batch,
        applied: impl Fn(PartitionId) -> u64,
        now: Instant,
    ) -> Batch {
        // most batches have no campaign: left as they are
        if !batch.messages.iter().any(|(_, m)| is_campaign(m)) {
            return batch;
        }
        let messages = std::mem::take(&mut batch.messages);
        for (p, m) in messages {
            if !is_campaign(&m) || !self.is_behind(p, applied(p)) {
                batch.messages.push((p, m));
                continue;
            }
            let until = self.handed.get(&p).copied().unwrap_or(0);
            let waiting = self.campaigns.entry(p).or_insert_with(|| Waiting {
                messages: Vec::new(),
                until,
                expires: now + self.patience,
            });
            let same = waiting
                .messages
                .first()
                .is_some_and(|w| (w.term, w.get_msg_type()) == (m.term, m.get_msg_type()));
            if !same {
                tracing::debug!(
                    partition = p,
                    "a campaign waits: this node is still applying"
                );
                *waiting = Waiting {
                    messages: Vec::new(),
                    until,
                    expires: now + self.patience,
                };
            }
            waiting.messages.push(m);
        }
        batch
    }

    /// Whether an offer of `partition` waits.
    #[cfg(test)]
    fn waits(&self, partition: PartitionId) -> bool {
        self.offers.contains_key(&partition)
    }
}

/// A vote request of a campaign that is not a transfer's.
fn is_campaign(m: &Message) -> bool {
    matches!(
        m.get_msg_type(),
        MessageType::MsgRequestPreVote | MessageType::MsgRequestVote
    ) && m.context != raft::CAMPAIGN_TRANSFER
}

/// Takes out of `waiting` the messages of the partitions applied far enough; drops those that waited too
/// long (`what` names them in the log).
fn release(
    waiting: &mut HashMap<PartitionId, Waiting>,
    applied: &impl Fn(PartitionId) -> u64,
    now: Instant,
    what: &str,
) -> Vec<(PartitionId, Vec<Message>)> {
    let mut out = Vec::new();
    waiting.retain(|&p, w| {
        if now >= w.expires {
            tracing::info!(
                partition = p,
                until = w.until,
                "{what} dropped: this node is still applying"
            );
            return false;
        }
        if applied(p) >= w.until {
            out.push((p, std::mem::take(&mut w.messages)));
            return false;
        }
        true
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATIENCE: Duration = Duration::from_millis(500);

    /// A message's partition, type, and whether it has a context (a transfer's campaign).
    type Kind = (PartitionId, MessageType, bool);

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
        assert!(b.due(|_| 39, now).offers.is_empty());
        let due = b.due(|_| 40, now + Duration::from_millis(10)).offers;
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].0, 3);
        assert_eq!(due[0].1.term, 2);
        assert!(!b.waits(3));
        assert!(b.due(|_| 90, now).offers.is_empty(), "stepped once");
    }

    #[test]
    fn an_offer_that_waited_too_long_is_dropped() {
        let mut b = Behind::new(PATIENCE);
        let now = Instant::now();
        b.handed(3, 40);
        b.handed(4, 40);
        assert!(b.offered(3, offer(2), 0, now).is_none());
        assert!(b.offered(4, offer(5), 0, now).is_none());
        let due = b
            .due(|p| if p == 4 { 40 } else { 0 }, now + PATIENCE / 2)
            .offers;
        assert_eq!(due.iter().map(|(p, _)| *p).collect::<Vec<_>>(), vec![4]);
        assert!(b.due(|_| 0, now + PATIENCE).offers.is_empty());
        assert!(!b.waits(3), "expired");
        assert!(
            b.due(|_| 40, now + PATIENCE).offers.is_empty(),
            "gone for good"
        );
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
            b.due(|_| 45, now).offers.is_empty(),
            "the newer offer waits for 50"
        );
        let due = b.due(|_| 50, now).offers;
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].1.term, 3);
    }

    #[test]
    fn a_replica_behind_holds_its_vote_requests_until_it_has_caught_up_but_not_a_transfers() {
        let mut b = Behind::new(PATIENCE);
        let now = Instant::now();
        b.handed(3, 40);
        b.handed(4, 40);
        let mut transfer = message(MessageType::MsgRequestVote, 7);
        transfer.context = bytes::Bytes::from_static(raft::CAMPAIGN_TRANSFER);
        let to = |to: u64, mut m: Message| {
            m.to = to;
            m
        };
        let batch = Batch {
            to: 1,
            messages: vec![
                (3, to(1, message(MessageType::MsgRequestPreVote, 6))),
                (3, to(1, message(MessageType::MsgAppendResponse, 6))),
                (3, to(1, message(MessageType::MsgRequestVoteResponse, 6))),
                (3, to(1, transfer)),
                (4, to(1, message(MessageType::MsgRequestPreVote, 6))),
                (5, to(1, message(MessageType::MsgRequestVote, 6))),
            ],
            gone: Vec::new(),
        };
        // 3 is behind, 4 has applied all it was handed, 5 was handed nothing
        let applied = |p| if p == 3 { 39 } else { 40 };
        let sent = b.campaigns(batch, applied, now);
        let kinds = |batch: &Batch| -> Vec<Kind> {
            batch
                .messages
                .iter()
                .map(|(p, m)| (*p, m.get_msg_type(), !m.context.is_empty()))
                .collect()
        };
        assert_eq!(
            kinds(&sent),
            vec![
                (3, MessageType::MsgAppendResponse, false),
                (3, MessageType::MsgRequestVoteResponse, false),
                (3, MessageType::MsgRequestVote, true),
                (4, MessageType::MsgRequestPreVote, false),
                (5, MessageType::MsgRequestVote, false),
            ]
        );
        // the same campaign's request to the other voter waits with it
        let other = Batch {
            to: 2,
            messages: vec![(3, to(2, message(MessageType::MsgRequestPreVote, 6)))],
            gone: Vec::new(),
        };
        assert!(b.campaigns(other, applied, now).messages.is_empty());
        assert!(b.due(applied, now).campaigns.is_empty(), "still behind");
        let due = b.due(|_| 40, now).campaigns;
        let mut sent: Vec<(u64, Vec<Kind>)> =
            due.iter().map(|batch| (batch.to, kinds(batch))).collect();
        sent.sort_by_key(|(to, _)| *to);
        let pre_vote = vec![(3, MessageType::MsgRequestPreVote, false)];
        assert_eq!(sent, vec![(1, pre_vote.clone()), (2, pre_vote)]);
        assert!(b.due(|_| 40, now).campaigns.is_empty(), "sent once");
    }

    #[test]
    fn a_later_campaign_replaces_the_waiting_one_and_a_stale_one_is_dropped() {
        let mut b = Behind::new(PATIENCE);
        let now = Instant::now();
        b.handed(3, 40);
        let batch = |kind, term| Batch {
            to: 1,
            messages: vec![(3, message(kind, term))],
            gone: Vec::new(),
        };
        let _ = b.campaigns(batch(MessageType::MsgRequestPreVote, 6), |_| 0, now);
        let _ = b.campaigns(batch(MessageType::MsgRequestVote, 7), |_| 0, now);
        let due = b.due(|_| 40, now).campaigns;
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].messages.len(), 1);
        assert_eq!(
            due[0].messages[0].1.get_msg_type(),
            MessageType::MsgRequestVote
        );
        let _ = b.campaigns(batch(MessageType::MsgRequestPreVote, 7), |_| 0, now);
        assert!(
            b.due(|_| 40, now + PATIENCE).campaigns.is_empty(),
            "expired"
        );
    }
}
