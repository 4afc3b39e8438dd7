//! Moving replicas where the membership wants them: the driver's part of a membership change.
//!
//! Every [`RECONCILE_EVERY`], for each group this node leads (and serves), the driver compares the
//! group's replicas with the target the membership record gives ([`Layout::target`]) and takes the next
//! step [`plan`] names, one Raft change at a time:
//!
//! 1. the log is compacted from its second entry on (a new replica then starts from a snapshot, which
//!    carries the group's configuration), and the new replicas are added as learners: the leader starts
//!    them with its first message, they install the snapshot of the partition's data and follow the log;
//! 2. once they hold the whole log, one joint change promotes them and removes the replicas that go (a
//!    leader that goes hands its leadership to a caught-up replica of the target first, drained like a
//!    SIGTERM hand-over: requests wait, nothing fails);
//! 3. raft-rs leaves the joint configuration by itself; a replica that applies a configuration without
//!    itself drops its group and deletes the partition's keys (one that missed it is told by the leader's
//!    tombstone when it next speaks up);
//! 4. the leader reports the new replicas to the metadata group ([`MemberCommand::Placed`]); once every
//!    partition is where the ring wants it, joining members become active and leaving ones are
//!    forgotten.
//!
//! A partition that had one replica wrote its store directly (no log); before its first learner it stops
//! being served and its actors are retired, so the ones that come next propose through the log.
//!
//! At most `cluster.max_moving_partitions` of the groups this node leads move at once, so the cluster
//! keeps serving at speed while it rebalances.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{ApplyInput, Driver, Event};
use crate::cluster::membership::{handover_order, plan, MemberCommand, Step};
use crate::cluster::placement::PartitionId;
use crate::raft::multi::{raft_id, Change};

/// How often the driver looks at the groups it leads.
const RECONCILE_EVERY: Duration = Duration::from_millis(100);
/// How long a partition that had one replica is left unserved, after its actors were retired, before its
/// first learner is added (the actors finish what they were writing).
const WIDEN_DRAIN: Duration = Duration::from_millis(100);
/// How often a step that did not take (a compaction, a report to the metadata group) is tried again.
const RETRY: Duration = Duration::from_secs(1);

pub(super) struct Moves {
    max: usize,
    next: Instant,
    /// Groups led here whose replicas are changing: since when.
    active: HashMap<PartitionId, Instant>,
    /// Groups asked to compact before their first learner: when.
    compacting: HashMap<PartitionId, Instant>,
    /// Groups with one replica, unserved until their first learner is in: since when.
    widening: HashMap<PartitionId, Instant>,
    /// When each group's replicas were last reported to the metadata group.
    reported: HashMap<PartitionId, Instant>,
}

impl Moves {
    pub(super) fn new(max: usize) -> Moves {
        Moves {
            max,
            next: Instant::now(),
            active: HashMap::new(),
            compacting: HashMap::new(),
            widening: HashMap::new(),
            reported: HashMap::new(),
        }
    }
}

impl Driver {
    /// One look at every group this node leads (see the module docs).
    pub(super) fn reconcile(&mut self, now: Instant) {
        if now < self.moves.next || self.retiring {
            return;
        }
        self.moves.next = now + RECONCILE_EVERY;
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let layout = shared.layout();
        if layout.membership().is_none() {
            return;
        }
        self.metrics
            .partitions_moving
            .set(i64::try_from(layout.moving()).unwrap_or(i64::MAX));
        let me = self.raft.id();
        let meta = layout.meta();
        // the metadata group first: a joining node needs the membership record before anything else
        let mut led: Vec<PartitionId> = self.raft.led().collect();
        led.sort_by_key(|p| *p != meta);
        self.moves.active.retain(|p, _| led.contains(p));
        for p in led {
            if !shared.is_ready(p) {
                continue;
            }
            let Some(replicas) = self.raft.replicas(p) else {
                continue;
            };
            if self.raft.needs_start(p) {
                // a replica this node did not add (under a previous leader) needs a snapshot
                self.compact_now(p, now);
            }
            let target: Vec<u64> = layout.target(p).iter().map(raft_id).collect();
            let handover = handover_order(&target, |id| {
                layout.node(id).is_some_and(|n| layout.receiving(n))
            });
            let commit = self.raft.commit_index(p).unwrap_or(0);
            let raft = &self.raft;
            let caught_up = |id: u64| id == me || raft.matched(p, id).is_some_and(|m| m >= commit);
            let step = plan(me, &replicas, &handover, caught_up, raft.compacted(p));
            if step == Step::Settled {
                if let Some(since) = self.moves.active.remove(&p) {
                    self.metrics
                        .move_seconds
                        .observe(since.elapsed().as_secs_f64());
                    tracing::info!(partition = p, took = ?since.elapsed(), "partition's replicas moved");
                }
                self.moves.compacting.remove(&p);
                if p != meta {
                    self.report(p, &replicas.voters, &target, &layout, now);
                }
                continue;
            }
            if !self.moves.active.contains_key(&p) {
                // the metadata group is never held back by the partitions' limit
                let moving = self.moves.active.keys().filter(|a| **a != meta).count();
                if p != meta && moving >= self.moves.max {
                    continue;
                }
                self.moves.active.insert(p, now);
            }
            match step {
                Step::LeaveJoint => self.raft.leave_joint(p),
                Step::Compact => self.compact_now(p, now),
                Step::AddLearners(ids) => {
                    let single = replicas.voters.len() + replicas.learners.len() == 1;
                    if single && p != meta && !self.widened(p, now) {
                        continue;
                    }
                    self.change(p, &Change::AddLearners(ids));
                }
                Step::Replace { promote, remove } => {
                    self.change(p, &Change::Replace { promote, remove });
                }
                Step::Transfer(to) => {
                    if let std::collections::hash_map::Entry::Vacant(e) = self.moving.entry(p) {
                        shared.set_moving(p, true);
                        e.insert(super::driver::Handing::new(to, now));
                    }
                }
                Step::Wait | Step::Settled => {}
            }
        }
    }

    /// Asks the apply thread to flush and compact `p`'s log from its second entry (at most every
    /// [`RETRY`]).
    fn compact_now(&mut self, p: PartitionId, now: Instant) {
        let due = self
            .moves
            .compacting
            .get(&p)
            .is_none_or(|at| now.duration_since(*at) >= RETRY);
        if due {
            self.moves.compacting.insert(p, now);
            let _ = self.apply.send(ApplyInput::CompactNow(p));
        }
    }

    fn change(&mut self, p: PartitionId, change: &Change) {
        match self.raft.change_replicas(p, change) {
            Ok(()) => tracing::info!(partition = p, ?change, "changing the partition's replicas"),
            Err(e) => {
                tracing::debug!(partition = p, error = %e, "change of replicas not proposed yet")
            }
        }
    }

    /// A group with one replica stops being served and its actors are retired (they wrote the store
    /// directly); true once that is [`WIDEN_DRAIN`] old and the first learner may be added.
    fn widened(&mut self, p: PartitionId, now: Instant) -> bool {
        if let Some(since) = self.moves.widening.get(&p) {
            return now.duration_since(*since) >= WIDEN_DRAIN;
        }
        let Some(shared) = self.shared.upgrade() else {
            return false;
        };
        shared.set_moving(p, true);
        if let Some(w) = shared.wide.get(p as usize) {
            w.store(true, Ordering::Release);
        }
        let _ = self.apply.send(ApplyInput::Hold(p));
        shared.emit(Event::Widened(&[p]));
        self.moves.widening.insert(p, now);
        false
    }

    /// Tells the metadata group where `p`'s replicas are now, if its record says otherwise (the target's
    /// order first: the preferred leader leads the list).
    fn report(
        &mut self,
        p: PartitionId,
        voters: &[u64],
        target: &[u64],
        layout: &crate::cluster::placement::Layout,
        now: Instant,
    ) {
        let mut ordered: Vec<u64> = target
            .iter()
            .copied()
            .filter(|id| voters.contains(id))
            .collect();
        ordered.extend(voters.iter().copied().filter(|id| !target.contains(id)));
        let Some(replicas) = ordered
            .iter()
            .map(|id| layout.node(*id).cloned())
            .collect::<Option<Vec<_>>>()
        else {
            return;
        };
        if layout.replicas(p) == replicas.as_slice() {
            self.moves.reported.remove(&p);
            return;
        }
        let due = self
            .moves
            .reported
            .get(&p)
            .is_none_or(|at| now.duration_since(*at) >= RETRY);
        if !due {
            return;
        }
        self.moves.reported.insert(p, now);
        if let Some(shared) = self.shared.upgrade() {
            shared.propose_meta(&MemberCommand::Placed {
                partition: p,
                replicas,
            });
        }
    }

    /// The replicas of these groups changed (or this node started or dropped one): the tables the router
    /// reads follow, and a group that got its first learner is served again.
    pub(super) fn reconfigured(&mut self, partitions: &[PartitionId]) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        for &p in partitions {
            let replicas = self.raft.replicas(p);
            if let Some(k) = shared.kept.get(p as usize) {
                k.store(replicas.is_some(), Ordering::Release);
            }
            let many = replicas
                .as_ref()
                .is_some_and(|r| r.voters.len() + r.outgoing.len() + r.learners.len() > 1);
            let widening = self.moves.widening.contains_key(&p);
            if let Some(w) = shared.wide.get(p as usize) {
                if many || !widening {
                    w.store(many, Ordering::Release);
                }
            }
            if many && self.moves.widening.remove(&p).is_some() {
                shared.set_moving(p, false);
            }
        }
        let meta = shared.layout().meta();
        let kept = self.raft.partitions().filter(|p| *p != meta).count();
        self.metrics
            .raft_partitions
            .set(i64::try_from(kept).unwrap_or(i64::MAX));
    }

    /// Leadership of `p` left this node: a widening it started is off (the group is not served here
    /// anyway; the next leader starts over).
    pub(super) fn lost(&mut self, p: PartitionId) {
        self.moves.active.remove(&p);
        self.moves.compacting.remove(&p);
        if self.moves.widening.remove(&p).is_some() {
            if let Some(shared) = self.shared.upgrade() {
                shared.set_moving(p, false);
                let many = self
                    .raft
                    .replicas(p)
                    .is_some_and(|r| r.voters.len() + r.outgoing.len() + r.learners.len() > 1);
                if let Some(w) = shared.wide.get(p as usize) {
                    w.store(many, Ordering::Release);
                }
            }
        }
    }
}
