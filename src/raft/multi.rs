//! [`MultiRaft`]: every Raft group (one per partition) that this node replicates, driven together.
//!
//! The owner calls [`MultiRaft::tick`] on one timer for all groups, feeds in what peers sent with
//! [`MultiRaft::step`], proposes with [`MultiRaft::propose`], and after each of these calls
//! [`MultiRaft::poll`], which persists what the groups produced, and hands back one [`Batch`] of messages
//! per destination node (every group's heartbeats and appends to that node together), the entries that
//! became committed, in log order per group, and the groups whose leader or term changed. A poll comes in
//! two halves for an owner that syncs on another thread: [`MultiRaft::poll_write`] writes and hands back
//! what may go before the sync, [`MultiRaft::persisted`] releases the rest once the sync is done; the
//! groups go on stepping and proposing in between (raft-rs's asynchronous ready).
//!
//! Every group runs with pre-vote and check-quorum: a node that comes back from a partition cannot depose
//! a healthy leader, and a leader cut off from its majority steps down instead of serving stale state.
//!
//! Each group serves raft-rs from a `MemStorage`; with a [`RaftLog`] (see [`MultiRaft::open`]) every entry
//! and hard state is also appended to the node's log file, and one fsync per round (or per several, when
//! rounds come faster than syncs) makes it durable before any message that depends on it leaves (group
//! commit across every group of the node). A node
//! reopened on the same directory rebuilds its groups from the file; entries committed before are handed
//! out again by its first polls (whoever applies them skips what it already applied).

use std::collections::{BTreeMap, BTreeSet};
use std::hash::Hasher;
use std::path::Path;

use fnv::FnvHasher;
use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, ConfState,
    Entry, EntryType, Message, MessageType, Snapshot,
};
use raft::storage::MemStorage;
use raft::{RawNode, StateRole, Storage as _};

use super::log::{Groups, KeptSnapshot, LogResult, RaftLog, SyncJob};
use super::storage::{GroupStorage, Release};
use crate::cluster::placement::PartitionId;
use crate::ids::NodeId;

/// Ticks per election timeout and per heartbeat. raft-rs waits a random 1x to 2x `ELECTION_TICKS` of a
/// leader's silence before campaigning, so a driver that must elect within `election_timeout_ms` ticks every
/// `election_timeout_ms / (2 * ELECTION_TICKS)`.
pub const ELECTION_TICKS: usize = 10;
pub const HEARTBEAT_TICKS: usize = 2;

/// A node's Raft id: a stable hash of its id (raft-rs wants a non-zero u64).
pub fn raft_id(node: &NodeId) -> u64 {
    let mut h = FnvHasher::default();
    h.write(node.as_str().as_bytes());
    h.finish().max(1)
}

/// What a group can refuse a proposal for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    #[error("partition {0} is not replicated here")]
    UnknownPartition(PartitionId),
    /// Only the leader takes proposals; `leader` is the one this node knows of.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<u64> },
    #[error("raft refused the proposal: {0}")]
    Raft(String),
}

/// Every message of every group for one other node, produced by one [`MultiRaft::poll`] (or one half of
/// it).
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub to: u64,
    pub messages: Vec<(PartitionId, Message)>,
    /// Groups the destination was removed from (with the index of the configuration that no longer has
    /// it): it heard from this node's leader that it should drop its replica (see [`MultiRaft::gone`]).
    pub gone: Vec<(PartitionId, u64)>,
}

impl Batch {
    /// One batch per destination (each message's `to`) of one group's `messages`, kept in order.
    pub fn of(partition: PartitionId, messages: Vec<Message>) -> Vec<Batch> {
        let mut outgoing = BTreeMap::new();
        route(partition, messages, &mut outgoing);
        batches(outgoing)
    }
}

/// The batches of `outgoing` (by destination), without removals to tell.
fn batches(outgoing: BTreeMap<u64, Vec<(PartitionId, Message)>>) -> Vec<Batch> {
    outgoing
        .into_iter()
        .map(|(to, messages)| Batch {
            to,
            messages,
            gone: Vec::new(),
        })
        .collect()
}

/// An entry that a majority has stored, in log order per group. A new leader's first entry of its term
/// has empty `data`; a configuration change (already applied to the group) has `conf` set and no data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub partition: PartitionId,
    pub index: u64,
    pub term: u64,
    pub data: Vec<u8>,
    pub conf: bool,
}

/// A group's replicas: its voters (both halves while a joint change is under way) and learners.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replicas {
    pub voters: Vec<u64>,
    /// The old voters while a joint configuration is in force (empty otherwise).
    pub outgoing: Vec<u64>,
    pub learners: Vec<u64>,
    /// The log index at which this configuration took effect (the snapshot point's for the first).
    pub index: u64,
}

impl Replicas {
    fn of(index: u64, cs: &ConfState) -> Replicas {
        let mut learners = cs.learners.clone();
        learners.extend(cs.learners_next.iter().copied());
        Replicas {
            voters: cs.voters.clone(),
            outgoing: cs.voters_outgoing.clone(),
            learners,
            index,
        }
    }

    /// Whether `id` has any part in the group.
    pub fn has(&self, id: u64) -> bool {
        self.voters.contains(&id) || self.outgoing.contains(&id) || self.learners.contains(&id)
    }

    pub fn joint(&self) -> bool {
        !self.outgoing.is_empty()
    }
}

/// A change of a group's replicas, proposed by its leader (see [`MultiRaft::change_replicas`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// New replicas that receive the log (by snapshot, then entries) but do not vote yet.
    AddLearners(Vec<u64>),
    /// One joint change (left automatically once applied): `promote` learners become voters and `remove`
    /// replicas (voters or learners) go. The group's majority never depends on one configuration alone
    /// while it changes, so any replacement is safe.
    Replace { promote: Vec<u64>, remove: Vec<u64> },
}

/// A group's leadership as this node sees it, reported when it changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leadership {
    pub partition: PartitionId,
    pub leader: Option<u64>,
    pub term: u64,
    /// This node leads the group.
    pub local: bool,
}

#[derive(Debug, Default)]
pub struct Output {
    /// At most one batch per destination node.
    pub batches: Vec<Batch>,
    /// Snapshots of a partition's data received from its leader, to install before `committed` (which
    /// only holds entries after them).
    pub installs: Vec<(PartitionId, Snapshot)>,
    pub committed: Vec<Committed>,
    pub leadership: Vec<Leadership>,
    /// Groups whose configuration changed in this round.
    pub reconfigured: Vec<PartitionId>,
    /// Groups this node was removed from and has dropped in this round (their data is to be deleted).
    pub removed: Vec<PartitionId>,
    /// The round wrote to the log, to be synced.
    pub synced: bool,
}

/// Numbers every group built, so that a sync answered after a group was dropped and built again is not
/// taken for the new one's (raft-rs numbers each node's readies from 1).
static INCARNATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

struct Group {
    node: RawNode<GroupStorage>,
    /// See [`INCARNATIONS`].
    incarnation: u64,
    /// The leadership last reported.
    seen: Leadership,
    /// The configurations the group went through since its log's snapshot point, oldest first: the index
    /// each took effect at, and the configuration. The first is the snapshot point's; every applied
    /// change adds one. A snapshot or a compaction point at index `i` carries the last one at or below
    /// `i`; on a restart the group starts from the point's and applies the changes after it again, in
    /// order, as the committed entries are handed out again (the storage's configuration is always the
    /// point's).
    confs: Vec<(u64, ConfState)>,
}

impl Group {
    fn conf_at(&self, index: u64) -> ConfState {
        self.confs
            .iter()
            .rev()
            .find(|(at, _)| *at <= index)
            .or(self.confs.first())
            .map(|(_, cs)| cs.clone())
            .unwrap_or_default()
    }

    /// A snapshot received is in the group's storage and is neither durable nor counted applied yet
    /// (between [`MultiRaft::poll_write`] and [`MultiRaft::persisted`]). The group must not campaign
    /// meanwhile: a campaign reads the entries after what raft-rs counts applied, which the snapshot
    /// replaced, and raft-rs panics ("unexpected error getting unapplied entries ... Compacted"). Such a
    /// follower is catching up from its leader anyway; its clock resumes once the snapshot is durable.
    fn installing(&self) -> bool {
        let raft_log = &self.node.raft.raft_log;
        let first = raft_log.store.first_index().unwrap_or(0);
        first.saturating_sub(1) > raft_log.applied
    }

    fn replicas(&self) -> Replicas {
        self.confs
            .last()
            .map(|(at, cs)| Replicas::of(*at, cs))
            .unwrap_or_default()
    }

    /// Applies a committed configuration change (both versions of raft-rs's entry); `None` for other
    /// entries.
    fn apply_conf(&mut self, partition: PartitionId, entry: &Entry) -> Option<ConfState> {
        let cc = match entry.get_entry_type() {
            EntryType::EntryConfChangeV2 => ConfChangeV2::parse_from_bytes(&entry.data).ok()?,
            EntryType::EntryConfChange => {
                // never proposed here; read for completeness
                let v1 = ConfChange::parse_from_bytes(&entry.data).ok()?;
                let mut single = ConfChangeSingle {
                    node_id: v1.node_id,
                    ..Default::default()
                };
                single.set_change_type(v1.get_change_type());
                let mut v2 = ConfChangeV2::default();
                v2.set_changes(vec![single].into());
                v2
            }
            EntryType::EntryNormal => return None,
        };
        match self.node.apply_conf_change(&cc) {
            Ok(cs) => {
                self.confs.push((entry.index, cs.clone()));
                Some(cs)
            }
            Err(e) => {
                // every replica refuses it alike (raft-rs checked it when it was proposed)
                tracing::warn!(partition, index = entry.index, error = %e, "configuration change refused");
                None
            }
        }
    }
}

/// What [`MultiRaft::step`] did with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stepped {
    Stepped,
    /// Not for a group kept here, or from a node the group no longer has.
    Dropped,
    /// A leader's message for a group this node does not keep.
    Unknown,
}

/// The groups this node replicates.
pub struct MultiRaft {
    id: u64,
    groups: BTreeMap<PartitionId, Group>,
    /// Where entries and hard states are made durable; `None` keeps them in memory only (tests).
    log: Option<RaftLog>,
    logger: slog::Logger,
    /// Tombstones to send: (node, group, the configuration index that removed it).
    gone: Vec<(u64, PartitionId, u64)>,
    /// Groups dropped since the last poll (told to the owner by it).
    removed: Vec<PartitionId>,
    /// Tombstones for the next batches, by destination.
    gone_out: BTreeMap<u64, Vec<(PartitionId, u64)>>,
    /// The groups that may have work for the next poll (stepped, proposed to, ticked, persisted, ...):
    /// a poll looks at these only, not at every group (a scan of hundreds of groups per round was most
    /// of the driver's time at moderate load).
    touched: Touched,
    /// Received snapshots whose data was kept in a file before they were stepped, taken by their group
    /// and not yet written to the log (see [`MultiRaft::kept_snapshot`]).
    kept: BTreeMap<PartitionId, KeptSnapshot>,
    /// The groups holding a snapshot made here for raft-rs to send (see
    /// [`MultiRaft::release_snapshots`]).
    offered: BTreeSet<PartitionId>,
}

/// Which groups the next poll looks at.
struct Touched {
    /// Every group (after a tick, and at start).
    all: bool,
    some: BTreeSet<PartitionId>,
}

impl Touched {
    fn everything() -> Touched {
        Touched {
            all: true,
            some: BTreeSet::new(),
        }
    }

    fn mark(&mut self, partition: PartitionId) {
        if !self.all {
            self.some.insert(partition);
        }
    }

    /// The groups to look at, in partition order, and nothing marked any more.
    fn take(&mut self, groups: &BTreeMap<PartitionId, Group>) -> Vec<PartitionId> {
        let some = std::mem::take(&mut self.some);
        if std::mem::take(&mut self.all) {
            groups.keys().copied().collect()
        } else {
            some.into_iter().collect()
        }
    }
}

fn config(id: u64) -> raft::Config {
    let config = raft::Config {
        id,
        election_tick: ELECTION_TICKS,
        heartbeat_tick: HEARTBEAT_TICKS,
        pre_vote: true,
        check_quorum: true,
        max_size_per_msg: 1 << 20,
        max_inflight_msgs: 256,
        ..raft::Config::default()
    };
    #[cfg(test)]
    let config = tests::fixed_timeouts(config);
    config
}

/// One raft-rs node per partition, over the given storages.
fn build(
    id: u64,
    storages: impl IntoIterator<Item = (PartitionId, MemStorage)>,
    logger: &slog::Logger,
) -> Result<BTreeMap<PartitionId, Group>, raft::Error> {
    let mut built = BTreeMap::new();
    for (partition, storage) in storages {
        let logger = logger.new(slog::o!("partition" => partition));
        let mut config = config(id);
        // what the store applied is at least the snapshot point: entries before it are gone
        config.applied = storage.first_index()?.saturating_sub(1);
        let point = storage.first_index()?.saturating_sub(1);
        let conf = storage.initial_state()?.conf_state;
        let node = RawNode::new(&config, GroupStorage::new(storage), &logger)?;
        let seen = unseen(partition);
        built.insert(
            partition,
            Group {
                node,
                seen,
                confs: vec![(point, conf)],
                incarnation: INCARNATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            },
        );
    }
    Ok(built)
}

fn unseen(partition: PartitionId) -> Leadership {
    Leadership {
        partition,
        leader: None,
        term: 0,
        local: false,
    }
}

impl MultiRaft {
    /// A node with Raft id `id` in `groups` (each partition with its voters, `id` among them): every replica
    /// starts from the same configuration, so the first election needs no bootstrapping leader.
    pub fn new(
        id: u64,
        groups: impl IntoIterator<Item = (PartitionId, Vec<u64>)>,
        logger: &slog::Logger,
    ) -> Result<MultiRaft, raft::Error> {
        let storages = groups.into_iter().map(|(partition, voters)| {
            let conf = ConfState::from((voters, vec![]));
            (partition, MemStorage::new_with_conf_state(conf))
        });
        let built = build(id, storages, logger)?;
        Ok(MultiRaft {
            id,
            groups: built,
            log: None,
            logger: logger.clone(),
            gone: Vec::new(),
            removed: Vec::new(),
            gone_out: BTreeMap::new(),
            touched: Touched::everything(),
            offered: BTreeSet::new(),
            kept: BTreeMap::new(),
        })
    }

    /// Like [`MultiRaft::new`], durable in `dir`'s log file: every group the file knows resumes from it;
    /// of `groups` (the node's first configuration), those the file never knew start from their voters
    /// (recorded in the file first), and those this node dropped since stay dropped.
    pub fn open(
        dir: &Path,
        fsync: bool,
        id: u64,
        groups: impl IntoIterator<Item = (PartitionId, Vec<u64>)>,
        logger: &slog::Logger,
    ) -> LogResult<MultiRaft> {
        let (mut log, stored) = RaftLog::open(dir, fsync)?;
        let mut storages: BTreeMap<PartitionId, MemStorage> = stored;
        for (partition, voters) in groups {
            if storages.contains_key(&partition) || log.was_dropped(partition) {
                continue;
            }
            let conf = ConfState::from((voters, vec![]));
            log.set_conf_state(partition, &conf)?;
            storages.insert(partition, MemStorage::new_with_conf_state(conf));
        }
        let built = build(id, storages, logger)?;
        log.sync()?;
        Ok(MultiRaft {
            id,
            groups: built,
            log: Some(log),
            logger: logger.clone(),
            gone: Vec::new(),
            removed: Vec::new(),
            gone_out: BTreeMap::new(),
            touched: Touched::everything(),
            offered: BTreeSet::new(),
            kept: BTreeMap::new(),
        })
    }

    /// Starts an empty replica of `partition` here (no log, no configuration): a leader that added this
    /// node sent it a message. It cannot campaign; it learns the group's configuration and data from the
    /// leader's snapshot, then follows the log. Nothing happens if the group exists.
    pub fn create(&mut self, partition: PartitionId) -> LogResult<()> {
        if self.groups.contains_key(&partition) {
            return Ok(());
        }
        let conf = ConfState::default();
        if let Some(log) = &mut self.log {
            log.set_conf_state(partition, &conf)?;
        }
        let built = build(
            self.id,
            [(partition, MemStorage::new_with_conf_state(conf))],
            &self.logger,
        )?;
        self.groups.extend(built);
        self.touched.mark(partition);
        tracing::info!(
            partition,
            "started a replica for a leader that added this node"
        );
        Ok(())
    }

    /// The received snapshots that the store may not have installed durably before the node stopped (the
    /// log starts after their points): the node installs them again before it applies anything, and
    /// reports each with [`MultiRaft::installed`] once the store has it durably.
    pub fn installs(&self) -> Vec<(PartitionId, Snapshot)> {
        self.log.as_ref().map(RaftLog::installs).unwrap_or_default()
    }

    /// The store has durably installed `partition`'s snapshot at `index` (a restart need not install it
    /// again).
    pub fn installed(&mut self, partition: PartitionId, index: u64) -> LogResult<()> {
        match &mut self.log {
            Some(log) => log.set_installed(partition, index),
            None => Ok(()),
        }
    }

    /// A snapshot of `partition` whose data the receiving thread kept in `file` has just been stepped:
    /// if the group took it (it waits in raft-rs's unstable log for the next poll), the poll writes a
    /// record naming the file instead of the data (see `RaftLog`'s module docs); otherwise (stale, or no
    /// log to write it to) the file is deleted.
    pub fn kept_snapshot(&mut self, partition: PartitionId, file: KeptSnapshot) {
        let taken = self.log.is_some()
            && self.groups.get(&partition).is_some_and(|g| {
                g.node
                    .raft
                    .raft_log
                    .unstable
                    .snapshot
                    .as_ref()
                    .is_some_and(|s| file.is_of(s.get_metadata()))
            });
        if !taken {
            file.discard();
        } else if let Some(older) = self.kept.insert(partition, file) {
            // (replaced in raft-rs before a poll took it)
            older.discard();
        }
    }

    /// Whether this node keeps a replica of `partition`.
    pub fn has(&self, partition: PartitionId) -> bool {
        self.groups.contains_key(&partition)
    }

    /// The groups this node keeps.
    pub fn partitions(&self) -> impl Iterator<Item = PartitionId> + '_ {
        self.groups.keys().copied()
    }

    /// The group's replicas as this node last applied them.
    pub fn replicas(&self, partition: PartitionId) -> Option<Replicas> {
        self.groups.get(&partition).map(Group::replicas)
    }

    /// Drops this node's replica of `partition` (its entries and states; the file records it): this node
    /// is no longer one of the group's replicas. Reported by the next [`MultiRaft::poll`] in `removed`.
    pub fn remove(&mut self, partition: PartitionId) -> LogResult<()> {
        if self.groups.remove(&partition).is_none() {
            return Ok(());
        }
        if let Some(file) = self.kept.remove(&partition) {
            file.discard();
        }
        if let Some(log) = &mut self.log {
            log.drop_group(partition)?;
        }
        self.removed.push(partition);
        tracing::info!(
            partition,
            "dropped this node's replica (no longer one of the group's)"
        );
        Ok(())
    }

    /// A leader said this node was removed from `partition` by the configuration at `index`: the replica is
    /// dropped if the configuration it knows is older (a tombstone that crossed a newer addition of this
    /// node is ignored). Returns whether it was dropped.
    pub fn gone(&mut self, partition: PartitionId, index: u64) -> LogResult<bool> {
        let older = self
            .groups
            .get(&partition)
            .is_some_and(|g| g.replicas().index < index);
        if older {
            self.remove(partition)?;
        }
        Ok(older)
    }

    /// Proposes a change of the group's replicas; only its leader can, one change at a time (raft-rs
    /// refuses a change while another is not applied yet, and leaves a joint configuration by itself).
    pub fn change_replicas(
        &mut self,
        partition: PartitionId,
        change: &Change,
    ) -> Result<(), ProposeError> {
        self.touched.mark(partition);
        let group = self
            .groups
            .get_mut(&partition)
            .ok_or(ProposeError::UnknownPartition(partition))?;
        if group.node.raft.state != StateRole::Leader {
            let leader = Some(group.node.raft.leader_id).filter(|l| *l != 0);
            return Err(ProposeError::NotLeader { leader });
        }
        if group.node.raft.has_pending_conf() {
            return Err(ProposeError::Raft(
                "a change of replicas is under way".into(),
            ));
        }
        let single = |id: u64, change_type: ConfChangeType| {
            let mut c = ConfChangeSingle {
                node_id: id,
                ..Default::default()
            };
            c.set_change_type(change_type);
            c
        };
        let mut cc = ConfChangeV2::default();
        match change {
            Change::AddLearners(ids) => {
                cc.set_changes(
                    ids.iter()
                        .map(|id| single(*id, ConfChangeType::AddLearnerNode))
                        .collect::<Vec<_>>()
                        .into(),
                );
            }
            Change::Replace { promote, remove } => {
                let mut changes: Vec<ConfChangeSingle> = promote
                    .iter()
                    .map(|id| single(*id, ConfChangeType::AddNode))
                    .collect();
                changes.extend(
                    remove
                        .iter()
                        .map(|id| single(*id, ConfChangeType::RemoveNode)),
                );
                cc.set_changes(changes.into());
            }
        }
        // several changes at once go through a joint configuration, which raft-rs leaves by itself once
        // it is applied (`Auto`); a leader change in between can skip that, see `leave_joint`
        cc.set_transition(ConfChangeTransition::Auto);
        group
            .node
            .propose_conf_change(Vec::new(), cc)
            .map_err(|e| ProposeError::Raft(e.to_string()))
    }

    /// Proposes to leave a joint configuration that the leader which entered it did not leave (it lost its
    /// leadership first). Nothing happens if the group is not joint or a change is pending.
    pub fn leave_joint(&mut self, partition: PartitionId) {
        self.touched.mark(partition);
        let Some(group) = self.groups.get_mut(&partition) else {
            return;
        };
        let raft = &group.node.raft;
        if raft.state != StateRole::Leader || raft.has_pending_conf() || !group.replicas().joint() {
            return;
        }
        if let Err(e) = group
            .node
            .propose_conf_change(Vec::new(), ConfChangeV2::default())
        {
            tracing::debug!(partition, error = %e, "cannot leave the joint configuration yet");
        }
    }

    /// How far `to`'s copy of the group's log is, as this node (its leader) knows: the index it matched.
    pub fn matched(&self, partition: PartitionId, to: u64) -> Option<u64> {
        let group = self.groups.get(&partition)?;
        if group.node.raft.state != StateRole::Leader {
            return None;
        }
        group.node.raft.prs().get(to).map(|pr| pr.matched)
    }

    /// Whether this node leads `partition`, its log still starts at the first entry, and a replica has
    /// nothing of it: that replica (a new one) must start from a snapshot, which needs the log compacted
    /// first (see [`MultiRaft::step`]).
    pub fn needs_start(&self, partition: PartitionId) -> bool {
        let Some(group) = self.groups.get(&partition) else {
            return false;
        };
        let raft = &group.node.raft;
        raft.state == StateRole::Leader
            && raft.raft_log.store.first_index().unwrap_or(1) <= 1
            && raft
                .prs()
                .iter()
                .any(|(id, pr)| *id != self.id && pr.matched == 0 && pr.next_idx <= 1)
    }

    /// The group's commit index here.
    pub fn commit_index(&self, partition: PartitionId) -> Option<u64> {
        self.groups
            .get(&partition)
            .map(|g| g.node.raft.raft_log.committed)
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// Advances every group's clock by one tick (but a group installing a snapshot's: see
    /// `Group::installing`).
    pub fn tick(&mut self) {
        self.touched = Touched::everything();
        for group in self.groups.values_mut() {
            if !group.installing() {
                group.node.tick();
            }
        }
    }

    /// Hands a peer's message to its group (a message for a group not replicated here is dropped: the
    /// sender's layout differs, and raft retries).
    ///
    /// A replica started on an empty `data_dir` (a replaced disk) has lost its log and its vote while its
    /// leader still counts what it had acknowledged. Three guards make that safe (raft-rs assumes durable
    /// state and would panic or double-vote): it votes for no candidate that has entries until it has
    /// entries itself (it may have voted in that term before the loss); a heartbeat whose commit index is
    /// beyond what it holds is clamped, and answered with a rejection saying what it holds; and a leader
    /// that sees a follower reject below what it had acknowledged starts that follower over from there
    /// (by log or by snapshot).
    ///
    /// A leader answers a message from a node that is not (or no longer) one of the group's replicas with
    /// a tombstone (see [`Batch::gone`]) instead of stepping it.
    ///
    /// Returns [`Stepped::Unknown`] for a leader's message to a group this node does not keep: the caller
    /// decides whether to [`create`](MultiRaft::create) it and step again.
    pub fn step(&mut self, partition: PartitionId, mut message: Message) -> Stepped {
        self.touched.mark(partition);
        let unconfigured = self.groups.get(&partition).is_some_and(|g| {
            let r = g.replicas();
            r.voters.is_empty() && r.learners.is_empty() && r.outgoing.is_empty()
        });
        let Some(group) = self.groups.get_mut(&partition) else {
            let from_leader = matches!(
                message.get_msg_type(),
                MessageType::MsgAppend | MessageType::MsgHeartbeat | MessageType::MsgSnapshot
            );
            return if from_leader {
                Stepped::Unknown
            } else {
                Stepped::Dropped
            };
        };
        let installing = group.installing();
        let raft = &mut group.node.raft;
        if raft.state == StateRole::Leader && raft.prs().get(message.from).is_none() {
            let index = group.replicas().index;
            if !self
                .gone
                .iter()
                .any(|(to, p, _)| *to == message.from && *p == partition)
            {
                self.gone.push((message.from, partition, index));
            }
            return Stepped::Dropped;
        }
        let last = raft.raft_log.last_index();
        match message.get_msg_type() {
            MessageType::MsgRequestVote if last == 0 && message.index > 0 => {
                return Stepped::Dropped
            }
            // a transfer of leadership would campaign at once (the leader gives up after its timeout)
            MessageType::MsgTimeoutNow if installing => return Stepped::Dropped,
            // a replica its leader started has no configuration until a snapshot brings one: entries from
            // the log's start would be applied on no configuration (the first one is the config's, never
            // in the log), so they are refused; the leader compacts its log and sends a snapshot instead
            // (see `needs_start`)
            MessageType::MsgAppend if unconfigured && message.index == 0 => {
                let mut refused = Message::default();
                refused.set_msg_type(MessageType::MsgAppendResponse);
                refused.to = message.from;
                refused.from = message.to;
                refused.term = message.term;
                refused.reject = true;
                raft.msgs.push(refused);
                return Stepped::Dropped;
            }
            MessageType::MsgHeartbeat if message.commit > last => {
                // and tell the leader, which would otherwise only send what follows its stale count
                let mut lost = Message::default();
                lost.set_msg_type(MessageType::MsgAppendResponse);
                lost.to = message.from;
                lost.from = message.to;
                lost.term = message.term;
                lost.index = message.commit;
                lost.reject = true;
                lost.reject_hint = last;
                raft.msgs.push(lost);
                message.commit = last;
            }
            MessageType::MsgAppendResponse if message.reject && raft.state == StateRole::Leader => {
                if let Some(pr) = raft.mut_prs().get_mut(message.from) {
                    if message.reject_hint < pr.matched {
                        tracing::warn!(partition, follower = message.from, had = pr.matched, has = message.reject_hint, "a follower lost acknowledged entries (a replaced disk?): starting it over");
                        pr.matched = message.reject_hint;
                        pr.become_probe();
                    }
                }
            }
            _ => {}
        }
        if let Err(e) = group.node.step(message) {
            tracing::debug!(partition, error = %e, "raft message refused");
        }
        Stepped::Stepped
    }

    /// Appends `data` to the group's log if this node leads it; committed entries come out of [`poll`].
    ///
    /// [`poll`]: MultiRaft::poll
    pub fn propose(&mut self, partition: PartitionId, data: Vec<u8>) -> Result<(), ProposeError> {
        self.touched.mark(partition);
        let group = self
            .groups
            .get_mut(&partition)
            .ok_or(ProposeError::UnknownPartition(partition))?;
        if group.node.raft.state != StateRole::Leader {
            let leader = Some(group.node.raft.leader_id).filter(|l| *l != 0);
            return Err(ProposeError::NotLeader { leader });
        }
        group.node.propose(Vec::new(), data).map_err(|e| match e {
            raft::Error::ProposalDropped => ProposeError::NotLeader { leader: None },
            e => ProposeError::Raft(e.to_string()),
        })
    }

    /// Starts an election for the group now instead of after an election timeout (with pre-vote, a group
    /// that has a live leader is left alone).
    pub fn campaign(&mut self, partition: PartitionId) {
        self.touched.mark(partition);
        if let Some(group) = self.groups.get_mut(&partition) {
            if group.node.raft.state != StateRole::Leader && !group.installing() {
                if let Err(e) = group.node.campaign() {
                    tracing::debug!(partition, error = %e, "campaign refused");
                }
            }
        }
    }

    /// Asks the group's leader (this node) to hand leadership to `to`.
    pub fn transfer_leader(&mut self, partition: PartitionId, to: u64) {
        self.touched.mark(partition);
        if let Some(group) = self.groups.get_mut(&partition) {
            group.node.transfer_leader(to);
        }
    }

    /// If this node leads the group, asks it to hand leadership to the most caught-up voter that answered
    /// recently (check-quorum's view), which then campaigns at once; returns that voter. raft-rs stops
    /// taking proposals for the group while the transfer runs, and gives up after an election timeout.
    pub fn hand_over(&mut self, partition: PartitionId) -> Option<u64> {
        self.touched.mark(partition);
        let group = self.groups.get_mut(&partition)?;
        if group.node.raft.state != StateRole::Leader {
            return None;
        }
        let me = self.id;
        // learners cannot lead: raft-rs ignores a transfer to one
        let voters = group.replicas().voters;
        let to = group
            .node
            .raft
            .prs()
            .iter()
            .filter(|(id, pr)| **id != me && pr.recent_active && voters.contains(id))
            .max_by_key(|(id, pr)| (pr.matched, std::cmp::Reverse(**id)))
            .map(|(id, _)| *id)?;
        group.node.transfer_leader(to);
        Some(to)
    }

    /// If this node leads the group and `to` is a voter that answered recently and holds the whole log,
    /// hands leadership to it (the ring's preferred replica getting its leadership back); true if asked.
    pub fn transfer_if_caught_up(&mut self, partition: PartitionId, to: u64) -> bool {
        self.touched.mark(partition);
        let ready = self.caught_up(partition, to);
        if let (true, Some(group)) = (ready, self.groups.get_mut(&partition)) {
            group.node.transfer_leader(to);
        }
        ready
    }

    /// Whether this node leads `partition` and is transferring it (raft gives a transfer up after an
    /// election timeout).
    pub fn transferring(&self, partition: PartitionId) -> bool {
        self.groups.get(&partition).is_some_and(|g| {
            g.node.raft.state == StateRole::Leader && g.node.raft.lead_transferee.is_some()
        })
    }

    /// Whether this node leads `partition`, is not transferring it yet, and `to` (another live replica)
    /// has every entry of its log.
    pub fn caught_up(&self, partition: PartitionId, to: u64) -> bool {
        let Some(group) = self.groups.get(&partition) else {
            return false;
        };
        let raft = &group.node.raft;
        if raft.state != StateRole::Leader
            || to == self.id
            || raft.lead_transferee.is_some()
            || !group.replicas().voters.contains(&to)
        {
            return false;
        }
        let last = raft.raft_log.last_index();
        raft.prs()
            .get(to)
            .is_some_and(|pr| pr.recent_active && pr.matched == last)
    }

    /// Whether this node leads `partition` and waits for `to` to acknowledge a snapshot.
    pub fn awaits_snapshot(&self, partition: PartitionId, to: u64) -> bool {
        self.groups.get(&partition).is_some_and(|g| {
            g.node.raft.state == StateRole::Leader
                && g.node
                    .raft
                    .prs()
                    .get(to)
                    .is_some_and(|pr| pr.state == raft::ProgressState::Snapshot)
        })
    }

    /// A snapshot for `to` was lost: raft probes the replica again (and sends another if it still needs
    /// one) instead of waiting for its acknowledgement forever.
    pub fn snapshot_failed(&mut self, partition: PartitionId, to: u64) {
        self.touched.mark(partition);
        if let Some(group) = self.groups.get_mut(&partition) {
            group
                .node
                .report_snapshot(to, raft::SnapshotStatus::Failure);
        }
    }

    /// The group's leader as this node knows it.
    pub fn leader(&self, partition: PartitionId) -> Option<u64> {
        let group = self.groups.get(&partition)?;
        Some(group.node.raft.leader_id).filter(|l| *l != 0)
    }

    pub fn is_leader(&self, partition: PartitionId) -> bool {
        self.groups
            .get(&partition)
            .is_some_and(|g| g.node.raft.state == StateRole::Leader)
    }

    pub fn term(&self, partition: PartitionId) -> Option<u64> {
        self.groups.get(&partition).map(|g| g.node.raft.term)
    }

    /// The partitions this node leads.
    pub fn led(&self) -> impl Iterator<Item = PartitionId> + '_ {
        self.groups
            .iter()
            .filter(|(_, g)| g.node.raft.state == StateRole::Leader)
            .map(|(p, _)| *p)
    }

    /// Persists and collects what every group produced since the last poll, synchronously: the round's
    /// writes are made durable with one sync before anything that waits for them is released (what
    /// follows locally from that, a single replica's commit, is polled too). A failed write or sync is
    /// returned: the node cannot go on safely.
    pub fn poll(&mut self) -> LogResult<Output> {
        let mut out = Output::default();
        for _ in 0..3 {
            let (written, unsynced) = self.poll_write()?;
            unsynced.sync().map_err(|e| self.io_error(e))?;
            out.merge(written);
            out.merge(self.persisted(unsynced));
            if !self.groups.values().any(|g| g.node.has_ready()) {
                break;
            }
        }
        Ok(out)
    }

    /// The first half of a poll: writes every group's new entries, snapshot points and hard states to the
    /// log (not synced) and hands back what may go at once: a leader's messages (raft thesis 10.2.1: the
    /// leader replicates while it writes; its own copy counts for the commit only once synced), every
    /// heartbeat response (it promises nothing about the log, and a follower busy syncing must not look
    /// dead to its leader: as etcd's raft, which holds back only append and vote responses), the entries
    /// that are committed and already durable here, and the changes of leadership and replicas. What must
    /// wait for the sync (the other messages, a received snapshot to install) is in the [`Unsynced`],
    /// released by [`MultiRaft::persisted`] once [`Unsynced::sync`] has returned, in the order they were
    /// written.
    pub fn poll_write(&mut self) -> LogResult<(Output, Unsynced)> {
        let mut out = Output::default();
        let mut unsynced = Unsynced::default();
        let mut outgoing: BTreeMap<u64, Vec<(PartitionId, Message)>> = BTreeMap::new();
        let visit = self.touched.take(&self.groups);
        for &partition in &visit {
            let Some(group) = self.groups.get_mut(&partition) else {
                continue;
            };
            if !group.node.has_ready() {
                continue;
            }
            let mut ready = group.node.ready();
            route(partition, ready.take_messages(), &mut outgoing);
            let store = group.node.raft.raft_log.store.mem().clone();
            if !ready.snapshot().is_empty() {
                let snapshot = ready.snapshot().clone();
                store.wl().apply_snapshot(snapshot.clone())?;
                let kept = self.kept.remove(&partition);
                if let Some(log) = &mut self.log {
                    // the data with its point: durable together, installed again at start until the
                    // store has it durably (see `installs`); kept in a file already if it came from a
                    // peer through the receiving thread
                    match kept {
                        Some(file) if file.is_of(snapshot.get_metadata()) => {
                            log.set_snapshot_file(partition, &snapshot, file)?;
                        }
                        other => {
                            if let Some(file) = other {
                                file.discard();
                            }
                            log.set_snapshot(partition, &snapshot)?;
                        }
                    }
                }
                let meta = snapshot.get_metadata();
                group.confs = vec![(meta.index, meta.get_conf_state().clone())];
                out.reconfigured.push(partition);
                unsynced.installs.push((partition, snapshot));
            }
            let committed = ready.take_committed_entries();
            // handed out: raft-rs counts them applied (a snapshot's point only once it is durable)
            let applied = committed.last().map(|e| e.index);
            collect(partition, group, committed, &mut out);
            store.wl().append(ready.entries())?;
            if let Some(log) = &mut self.log {
                log.append(partition, ready.entries())?;
            }
            if let Some(hs) = ready.hs() {
                let before = store.rl().hard_state().clone();
                store.wl().set_hardstate(hs.clone());
                if let Some(log) = &mut self.log {
                    // term and vote must be durable before anything is sent; a commit index need not
                    // (one lost to a crash is learnt again from the leader), so a change of it alone
                    // rides on the next sync instead of costing one
                    if hs.term != before.term || hs.vote != before.vote {
                        log.set_hard_state(partition, hs)?;
                    } else {
                        log.set_commit(partition, hs)?;
                    }
                }
            }
            let (now, held): (Vec<Message>, Vec<Message>) = ready
                .take_persisted_messages()
                .into_iter()
                .partition(|m| m.get_msg_type() == MessageType::MsgHeartbeatResponse);
            route(partition, now, &mut outgoing);
            unsynced
                .readies
                .push((partition, group.incarnation, ready.number(), held));
            group.node.advance_append_async(ready);
            if let Some(index) = applied {
                group.node.advance_apply_to(index);
            }
            if group.node.has_ready() {
                // more than one ready's worth (raft-rs bounds the committed entries per ready)
                self.touched.mark(partition);
            }
        }
        if let Some(log) = &mut self.log {
            unsynced.job = log.prepare_sync()?;
        }
        out.synced = unsynced.needs_sync();
        // a replica that applied a configuration without itself is done: the others no longer count it
        let me = self.id;
        let dropped: Vec<PartitionId> = out
            .reconfigured
            .iter()
            .copied()
            .filter(|p| {
                self.groups
                    .get(p)
                    .is_some_and(|g| !g.replicas().has(me) && g.replicas().index > 0)
            })
            .collect();
        for p in dropped {
            self.remove(p)?;
        }
        out.removed = std::mem::take(&mut self.removed);
        for (to, partition, index) in std::mem::take(&mut self.gone) {
            outgoing.entry(to).or_default();
            self.gone_out
                .entry(to)
                .or_default()
                .push((partition, index));
        }
        // leadership changes only in groups that were stepped, ticked or asked something
        for &partition in &visit {
            let Some(group) = self.groups.get_mut(&partition) else {
                continue;
            };
            let now = Leadership {
                partition,
                leader: Some(group.node.raft.leader_id).filter(|l| *l != 0),
                term: group.node.raft.term,
                local: group.node.raft.state == StateRole::Leader,
            };
            if now != group.seen {
                group.seen = now;
                out.leadership.push(now);
            }
        }
        let mut gone = std::mem::take(&mut self.gone_out);
        out.batches = outgoing
            .into_iter()
            .map(|(to, messages)| Batch {
                to,
                messages,
                gone: gone.remove(&to).unwrap_or_default(),
            })
            .collect();
        Ok((out, unsynced))
    }

    /// The second half of a poll, once `unsynced` (and every one written before it) is durable: the groups
    /// learn it (a leader's own copy now counts for the commit; the next poll has what follows), and what
    /// waited is released: the held messages and the snapshots to install.
    pub fn persisted(&mut self, unsynced: Unsynced) -> Output {
        let mut outgoing: BTreeMap<u64, Vec<(PartitionId, Message)>> = BTreeMap::new();
        for (partition, incarnation, number, held) in unsynced.readies {
            // a group dropped meanwhile (and maybe built again) has nobody left to tell
            let Some(group) = self
                .groups
                .get_mut(&partition)
                .filter(|g| g.incarnation == incarnation)
            else {
                continue;
            };
            group.node.on_persist_ready(number);
            self.touched.mark(partition);
            route(partition, held, &mut outgoing);
        }
        for (partition, snapshot) in &unsynced.installs {
            let index = snapshot.get_metadata().index;
            // (a group built again since has its own snapshot to wait for)
            if let Some(group) = self
                .groups
                .get_mut(partition)
                .filter(|g| g.node.raft.raft_log.persisted >= index)
            {
                group.node.advance_apply_to(index);
                self.touched.mark(*partition);
            }
        }
        Output {
            batches: batches(outgoing),
            installs: unsynced.installs,
            ..Output::default()
        }
    }

    fn io_error(&self, source: std::io::Error) -> super::log::LogError {
        super::log::LogError::Io {
            path: self
                .log
                .as_ref()
                .map(|l| l.path().to_path_buf())
                .unwrap_or_default(),
            source,
        }
    }
}

/// What a round wrote and has not yet synced (see [`MultiRaft::poll_write`]): the groups' ready numbers
/// with the messages that wait for the sync, and the snapshots to install once it is done.
#[derive(Default)]
pub struct Unsynced {
    /// What makes the round durable: the log file to sync, if the round wrote to it and the node syncs
    /// (`durability = "sync"`), and a rewritten log file to put in place after.
    job: SyncJob,
    /// Per group: its incarnation, the ready's number, the messages that wait for the sync.
    readies: Vec<(PartitionId, u64, u64, Vec<Message>)>,
    installs: Vec<(PartitionId, Snapshot)>,
}

impl Unsynced {
    /// Makes the round's writes durable (nothing to do if it wrote nothing, or the node does not fsync).
    pub fn sync(&self) -> std::io::Result<()> {
        self.job.run()
    }

    /// Whether there is something to sync.
    pub fn needs_sync(&self) -> bool {
        self.job.file.is_some()
    }

    /// Whether the round wrote nothing and produced nothing (no group was ready).
    pub fn is_empty(&self) -> bool {
        !self.needs_sync() && self.installs.is_empty() && self.readies.is_empty()
    }

    /// Writes the round's records to the log file: the first half of making it durable, done as the
    /// round comes (see [`Unsynced::sync_together`]).
    pub fn write(&self) -> std::io::Result<()> {
        self.job.write()
    }

    /// Makes every round of `rounds` durable, each written already ([`Unsynced::write`], in order): one
    /// sync per file (one, unless the log was rewritten between), which covers every round written
    /// before it started; then puts a rewritten file in place.
    pub fn sync_together(rounds: &[Unsynced]) -> std::io::Result<()> {
        let mut synced: Vec<&std::sync::Arc<std::fs::File>> = Vec::new();
        for file in rounds.iter().filter_map(|r| r.job.file.as_ref()) {
            if !synced.iter().any(|s| std::sync::Arc::ptr_eq(s, file)) {
                file.sync_data()?;
                synced.push(file);
            }
        }
        // a rewritten file is in place only once it (and every round written before) is durable
        for round in rounds {
            round.job.rename_into_place()?;
        }
        // then the files whose data the rounds let go
        for round in rounds {
            round.job.unlink();
        }
        Ok(())
    }
}

impl Output {
    /// Adds what a later poll produced.
    fn merge(&mut self, later: Output) {
        for batch in later.batches {
            match self.batches.iter_mut().find(|b| b.to == batch.to) {
                Some(b) => {
                    b.messages.extend(batch.messages);
                    b.gone.extend(batch.gone);
                }
                None => self.batches.push(batch),
            }
        }
        self.installs.extend(later.installs);
        self.committed.extend(later.committed);
        self.leadership.extend(later.leadership);
        for p in later.reconfigured {
            if !self.reconfigured.contains(&p) {
                self.reconfigured.push(p);
            }
        }
        self.removed.extend(later.removed);
        self.synced |= later.synced;
    }
}

impl MultiRaft {
    /// Drops `partition`'s entries before `index`, which the node's store has durably applied; the log
    /// file records the new starting point and the entries kept (and is rewritten once mostly dead).
    /// Returns whether anything was dropped.
    pub fn compact(&mut self, partition: PartitionId, index: u64) -> LogResult<bool> {
        self.compact_all([(partition, index)])
    }

    /// [`MultiRaft::compact`] for several partitions, then one look at whether the log file is worth
    /// rewriting: after all of them, so that a rewrite copies only what they keep.
    pub fn compact_all(
        &mut self,
        points: impl IntoIterator<Item = (PartitionId, u64)>,
    ) -> LogResult<bool> {
        let mut dropped = false;
        for (partition, index) in points {
            dropped |= self.compact_one(partition, index)?;
        }
        if dropped {
            if let Some(log) = &mut self.log {
                let groups: Groups = self
                    .groups
                    .iter()
                    .map(|(p, g)| (*p, g.node.raft.raft_log.store.mem().clone()))
                    .collect();
                log.maybe_rewrite(&groups)?;
            }
        }
        Ok(dropped)
    }

    fn compact_one(&mut self, partition: PartitionId, index: u64) -> LogResult<bool> {
        self.touched.mark(partition);
        let Some(group) = self.groups.get(&partition) else {
            return Ok(false);
        };
        let store = group.node.raft.raft_log.store.clone();
        let conf = group.conf_at(index.saturating_sub(1));
        let Some(compacted) = store.compact(index, conf)? else {
            return Ok(false);
        };
        if let Some(group) = self.groups.get_mut(&partition) {
            // the configurations before the new point are no longer needed
            let point = compacted.point.index;
            let keep = group
                .confs
                .iter()
                .rposition(|(at, _)| *at <= point)
                .unwrap_or(0);
            group.confs.drain(..keep);
        }
        if let Some(log) = &mut self.log {
            log.set_compacted(partition, &compacted.point)?;
        }
        Ok(true)
    }

    /// The groups whose latest snapshot made here was let go (see [`GroupStorage::release_handed`]):
    /// handed to a follower that no longer waits for it, or made under a leadership this node lost. The
    /// apply thread must hear of them before the next wants, so that it makes another if one is needed.
    pub fn release_snapshots(&mut self) -> Vec<PartitionId> {
        let groups = &self.groups;
        let mut released = Vec::new();
        self.offered.retain(|p| {
            let Some(group) = groups.get(p) else {
                return false;
            };
            let raft = &group.node.raft;
            let sending = || {
                (raft.state == StateRole::Leader).then(|| {
                    raft.prs()
                        .iter()
                        .any(|(_, pr)| pr.state == raft::ProgressState::Snapshot)
                })
            };
            match raft.raft_log.store.release_handed(sending) {
                Release::NoneHeld => false,
                Release::Kept => true,
                Release::LetGo => {
                    released.push(*p);
                    false
                }
            }
        });
        released
    }

    /// Whether a snapshot of `partition` made here is kept for raft-rs to send.
    #[cfg(test)]
    fn holds_snapshot(&self, partition: PartitionId) -> bool {
        self.groups
            .get(&partition)
            .is_some_and(|g| g.node.raft.raft_log.store.holds_snapshot())
    }

    /// The groups for which raft-rs wants a snapshot of the partition's data (to send a follower that
    /// needs compacted entries), each reported once per want, with the log index the snapshot must be
    /// made at or after: past the compacted entries, and past the group's latest configuration (the
    /// one that added the follower: a snapshot from before it is refused, see
    /// [`GroupStorage`]'s `snapshot`).
    pub fn wanted_snapshots(&self) -> Vec<(PartitionId, u64)> {
        self.groups
            .iter()
            .filter_map(|(p, g)| {
                let needed = g.node.raft.raft_log.store.take_wanted()?;
                let conf = g.confs.last().map_or(0, |(at, _)| *at);
                Some((*p, needed.max(conf)))
            })
            .collect()
    }

    /// A snapshot of `partition`'s data at log index `index` (of term `term`), made by the apply thread:
    /// raft-rs sends it with its next probe of the follower that needs it.
    pub fn offer_snapshot(
        &mut self,
        partition: PartitionId,
        index: u64,
        term: u64,
        data: Vec<u8>,
    ) -> LogResult<()> {
        self.touched.mark(partition);
        let Some(group) = self.groups.get(&partition) else {
            return Ok(());
        };
        let store = &group.node.raft.raft_log.store;
        let snapshot = Snapshot {
            metadata: Some(raft::eraftpb::SnapshotMetadata {
                index,
                term,
                conf_state: Some(group.conf_at(index)).into(),
                ..Default::default()
            })
            .into(),
            data: data.into(),
            ..Default::default()
        };
        store.offer(snapshot);
        self.offered.insert(partition);
        Ok(())
    }

    /// Snapshot messages in `batches` and their data's bytes (for the metrics).
    pub fn snapshots_in(batches: &[Batch]) -> (usize, u64) {
        batches
            .iter()
            .flat_map(|b| &b.messages)
            .filter(|(_, m)| m.get_msg_type() == MessageType::MsgSnapshot)
            .fold((0, 0), |(n, bytes), (_, m)| {
                (n + 1, bytes + m.get_snapshot().get_data().len() as u64)
            })
    }

    /// Whether the group's log starts after a snapshot point (a replica added now starts from a
    /// snapshot, which carries the group's configuration).
    pub fn compacted(&self, partition: PartitionId) -> bool {
        self.groups
            .get(&partition)
            .is_some_and(|g| g.node.raft.raft_log.store.first_index().unwrap_or(1) > 1)
    }
}

fn route(
    partition: PartitionId,
    messages: Vec<Message>,
    outgoing: &mut BTreeMap<u64, Vec<(PartitionId, Message)>>,
) {
    for m in messages {
        outgoing.entry(m.to).or_default().push((partition, m));
    }
}

/// Reports a group's committed entries; configuration changes are applied to the group here (raft-rs
/// wants them applied in log order with the rest) and reported without data. A new leader's empty entry
/// is reported too (with empty data): once it is applied, everything committed before the term is.
fn collect(partition: PartitionId, group: &mut Group, entries: Vec<Entry>, out: &mut Output) {
    for e in entries {
        let conf = e.get_entry_type() != EntryType::EntryNormal;
        if conf {
            group.apply_conf(partition, &e);
            if !out.reconfigured.contains(&partition) {
                out.reconfigured.push(partition);
            }
        }
        out.committed.push(Committed {
            partition,
            index: e.index,
            term: e.term,
            data: if conf { Vec::new() } else { e.data.to_vec() },
            conf,
        });
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashMap};

    use super::*;

    /// Nodes on a simulated network that can kill nodes and cut links; messages are delivered at once.
    struct Sim {
        nodes: BTreeMap<u64, MultiRaft>,
        down: BTreeSet<u64>,
        cut: BTreeSet<(u64, u64)>,
        /// Every node's committed entries in the order it saw them.
        applied: HashMap<u64, Vec<Committed>>,
        /// Frames (batches) sent per (from, to) in the last round.
        frames: HashMap<(u64, u64), usize>,
        /// Each node's data directory when the nodes are durable.
        dirs: BTreeMap<u64, tempfile::TempDir>,
        partitions: u32,
        /// The nodes the sim started with (every group's first voters).
        first: Vec<u64>,
        /// Per node and group: the data of the snapshot it installed (its state before `applied`).
        installed: HashMap<(u64, PartitionId), Vec<String>>,
        /// Log rewrites that took over in the nodes' earlier lives.
        rewrites: u64,
    }

    /// A durable node's log is rewritten from this size on (so that the model tests' small logs are),
    /// each rewrite's live state written at once: the new file takes over with the next round, the
    /// records of the round between kept for it.
    const MODEL_REWRITE_BYTES: u64 = 4 << 10;

    const IDS: [u64; 3] = [1, 2, 3];

    thread_local! {
        /// Set by the model tests on their thread: fixed election timeouts (see [`fixed_timeouts`]).
        static FIXED_TIMEOUTS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    /// raft-rs draws election timeouts from the thread's RNG; a model test's seed must replay exactly, so on
    /// its thread each node gets a fixed timeout of its own (the seed still orders every tick).
    pub(super) fn fixed_timeouts(mut config: raft::Config) -> raft::Config {
        if FIXED_TIMEOUTS.with(std::cell::Cell::get) {
            config.min_election_tick =
                ELECTION_TICKS + usize::try_from(config.id).unwrap_or(0) % ELECTION_TICKS;
            config.max_election_tick = config.min_election_tick + 1;
        }
        config
    }

    impl Sim {
        fn new(nodes: &[u64], partitions: u32) -> Sim {
            let logger = slog::Logger::root(slog::Discard, slog::o!());
            let built = nodes
                .iter()
                .map(|&id| {
                    let groups = (0..partitions).map(|p| (p, nodes.to_vec()));
                    (id, MultiRaft::new(id, groups, &logger).expect("multiraft"))
                })
                .collect();
            Sim {
                nodes: built,
                down: BTreeSet::new(),
                cut: BTreeSet::new(),
                applied: HashMap::new(),
                frames: HashMap::new(),
                dirs: BTreeMap::new(),
                partitions,
                first: nodes.to_vec(),
                installed: HashMap::new(),
                rewrites: 0,
            }
        }

        /// Log rewrites that took over, in every node's lives.
        fn rewrites(&self) -> u64 {
            self.rewrites
                + self
                    .nodes
                    .values()
                    .filter_map(|n| n.log.as_ref())
                    .map(RaftLog::rewrites)
                    .sum::<u64>()
        }

        /// Proposes a change of `p`'s replicas on node `leader`.
        fn change(
            &mut self,
            leader: u64,
            p: PartitionId,
            change: Change,
        ) -> Result<(), ProposeError> {
            self.nodes
                .get_mut(&leader)
                .expect("leader")
                .change_replicas(p, &change)
        }

        /// A node that keeps no group yet (leaders add it).
        fn add(&mut self, id: u64) {
            let logger = slog::Logger::root(slog::Discard, slog::o!());
            let node = MultiRaft::new(id, Vec::new(), &logger).expect("multiraft");
            self.nodes.insert(id, node);
        }

        /// What node `id` would put in a snapshot of `p`: its state and the last entry it applied.
        fn snapshot_of(&self, id: u64, p: PartitionId) -> Option<(u64, u64, Vec<u8>)> {
            let last = self
                .applied
                .get(&id)?
                .iter()
                .rev()
                .find(|c| c.partition == p)?;
            let data = serde_json::to_vec(&self.log(id, p)).expect("json");
            Some((last.index, last.term, data))
        }

        /// Nodes that keep their log in a directory each.
        fn durable(nodes: &[u64], partitions: u32) -> Sim {
            let mut sim = Sim::new(nodes, partitions);
            for &id in nodes {
                sim.dirs.insert(id, tempfile::tempdir().expect("tempdir"));
                sim.reopen(id);
            }
            sim
        }

        /// The node starts again from its directory (as after a kill -9: whatever the last poll synced); its
        /// record of applied entries starts empty, as a restarted state machine's would.
        fn reopen(&mut self, id: u64) {
            let dir = self.dirs[&id].path().to_path_buf();
            // the first configuration is the nodes the sim started with; nodes added later have none
            let voters: Vec<u64> = self.first.clone();
            let groups: Vec<(PartitionId, Vec<u64>)> = if voters.contains(&id) {
                (0..self.partitions).map(|p| (p, voters.clone())).collect()
            } else {
                Vec::new()
            };
            // a killed process loses what its log buffered in memory and writes nothing more: dropping
            // the node would flush its buffer into the file the new one has opened
            if let Some(old) = self.nodes.remove(&id) {
                self.rewrites += old.log.as_ref().map_or(0, RaftLog::rewrites);
                std::mem::forget(old);
            }
            let logger = slog::Logger::root(slog::Discard, slog::o!());
            let mut node = MultiRaft::open(&dir, true, id, groups, &logger).expect("open");
            if let Some(log) = &mut node.log {
                log.set_rewrite_bytes(MODEL_REWRITE_BYTES);
                log.set_background_rewrites(false);
            }
            self.nodes.insert(id, node);
            self.applied.remove(&id);
        }

        fn linked(&self, a: u64, b: u64) -> bool {
            !self.down.contains(&a)
                && !self.down.contains(&b)
                && !self.cut.contains(&(a, b))
                && !self.cut.contains(&(b, a))
        }

        /// Polls every live node until no message is in flight; counts frames.
        fn settle(&mut self) {
            for _ in 0..100 {
                let mut moved = false;
                let ids: Vec<u64> = self.nodes.keys().copied().collect();
                for id in ids {
                    if self.down.contains(&id) {
                        continue;
                    }
                    let out = self.nodes.get_mut(&id).expect("node").poll().expect("poll");
                    for (p, snapshot) in out.installs {
                        let state: Vec<String> =
                            serde_json::from_slice(&snapshot.data).expect("snapshot data");
                        self.installed.insert((id, p), state);
                        self.applied
                            .entry(id)
                            .or_default()
                            .retain(|c| c.partition != p);
                    }
                    for p in out.removed {
                        self.installed.remove(&(id, p));
                        self.applied
                            .entry(id)
                            .or_default()
                            .retain(|c| c.partition != p);
                    }
                    self.applied.entry(id).or_default().extend(out.committed);
                    self.nodes.get_mut(&id).expect("node").release_snapshots();
                    let wanted = self.nodes[&id].wanted_snapshots();
                    for (p, _) in wanted {
                        if let Some((index, term, data)) = self.snapshot_of(id, p) {
                            let node = self.nodes.get_mut(&id).expect("node");
                            node.offer_snapshot(p, index, term, data).expect("offer");
                            moved = true;
                        }
                    }
                    for batch in out.batches {
                        moved = true;
                        *self.frames.entry((id, batch.to)).or_default() += 1;
                        if !self.linked(id, batch.to) {
                            continue;
                        }
                        let to = self.nodes.get_mut(&batch.to).expect("destination");
                        for (p, m) in batch.messages {
                            if to.step(p, m.clone()) == Stepped::Unknown {
                                to.create(p).expect("create");
                                to.step(p, m);
                            }
                        }
                        for (p, index) in batch.gone {
                            to.gone(p, index).expect("gone");
                        }
                    }
                }
                if !moved {
                    return;
                }
            }
        }

        /// One tick of every live node, then delivery until quiet.
        fn round(&mut self) {
            self.frames.clear();
            for (id, node) in &mut self.nodes {
                if !self.down.contains(id) {
                    node.tick();
                }
            }
            self.settle();
        }

        fn rounds(&mut self, n: usize) {
            for _ in 0..n {
                self.round();
            }
        }

        /// The leader of `p` that every live node agrees on, if there is one.
        fn leader(&self, p: PartitionId) -> Option<u64> {
            let leaders: BTreeSet<u64> = self
                .nodes
                .iter()
                .filter(|(id, _)| !self.down.contains(id))
                .filter(|(_, n)| n.is_leader(p))
                .map(|(id, _)| *id)
                .collect();
            let leader = *leaders.iter().next()?;
            (leaders.len() == 1).then_some(leader)
        }

        /// The first half of a poll on node `id` (see [`MultiRaft::poll_write`]).
        fn write(&mut self, id: u64) -> (Output, Unsynced) {
            self.nodes
                .get_mut(&id)
                .expect("node")
                .poll_write()
                .expect("write")
        }

        /// Writes `rounds` of `id`'s syncs and answers them with one fsync, in order, as the log
        /// writer and sync threads do; the second halves of their polls.
        fn sync(&mut self, id: u64, rounds: Vec<Unsynced>) -> Vec<Output> {
            for round in &rounds {
                round.write().expect("write");
            }
            Unsynced::sync_together(&rounds).expect("sync");
            let node = self.nodes.get_mut(&id).expect("node");
            rounds.into_iter().map(|r| node.persisted(r)).collect()
        }

        /// Rounds until `p` has a live leader; how many it took.
        fn elect(&mut self, p: PartitionId) -> usize {
            for n in 1..=20 * ELECTION_TICKS {
                self.round();
                if self.leader(p).is_some_and(|l| !self.down.contains(&l)) {
                    return n;
                }
            }
            panic!("no leader for partition {p}");
        }

        fn propose(&mut self, p: PartitionId, data: &str) -> Result<(), ProposeError> {
            let leader = self
                .leader(p)
                .ok_or(ProposeError::NotLeader { leader: None })?;
            let result = self
                .nodes
                .get_mut(&leader)
                .expect("leader")
                .propose(p, data.as_bytes().to_vec());
            self.settle();
            result
        }

        fn log(&self, node: u64, p: PartitionId) -> Vec<String> {
            let mut state = self.installed.get(&(node, p)).cloned().unwrap_or_default();
            state.extend(
                self.applied
                    .get(&node)
                    .map(|entries| {
                        entries
                            .iter()
                            .filter(|c| c.partition == p && !c.data.is_empty())
                            .map(|c| String::from_utf8_lossy(&c.data).into_owned())
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default(),
            );
            state
        }
    }

    #[test]
    fn every_partition_elects_one_leader_and_heartbeats_are_coalesced_per_node_pair() {
        let mut sim = Sim::new(&IDS, 64);
        sim.rounds(4 * ELECTION_TICKS);
        for p in 0..64 {
            assert!(sim.leader(p).is_some(), "partition {p} has a leader");
        }
        // A quiet round of heartbeats from 64 groups whose leaders are spread over the nodes: each node sends
        // each other node one frame with its groups' heartbeats and one with its answers to the heartbeats it
        // got, whatever the number of groups.
        sim.round();
        assert_eq!(
            sim.frames.len(),
            IDS.len() * (IDS.len() - 1),
            "{:?}",
            sim.frames
        );
        assert!(sim.frames.values().all(|n| *n <= 2), "{:?}", sim.frames);
    }

    #[test]
    fn proposals_commit_in_the_same_order_on_every_replica() {
        let mut sim = Sim::new(&IDS, 4);
        for p in 0..4 {
            sim.elect(p);
        }
        for i in 0..50 {
            let p = i % 4;
            sim.propose(p, &format!("m{i}")).expect("proposed");
        }
        sim.rounds(2);
        for p in 0..4 {
            let want: Vec<String> = (0..50)
                .filter(|i| i % 4 == p)
                .map(|i| format!("m{i}"))
                .collect();
            for id in IDS {
                assert_eq!(sim.log(id, p), want, "node {id} partition {p}");
            }
        }
        // only the leader takes proposals, and says who leads
        let leader = sim.leader(0).expect("leader");
        let follower = IDS
            .iter()
            .copied()
            .find(|id| *id != leader)
            .expect("follower");
        let refused = sim
            .nodes
            .get_mut(&follower)
            .expect("node")
            .propose(0, b"x".to_vec());
        assert_eq!(
            refused,
            Err(ProposeError::NotLeader {
                leader: Some(leader)
            })
        );
    }

    #[test]
    fn a_dead_leader_is_replaced_and_nothing_committed_is_lost() {
        let mut sim = Sim::new(&IDS, 1);
        sim.elect(0);
        for i in 0..10 {
            sim.propose(0, &format!("a{i}")).expect("proposed");
        }
        let old = sim.leader(0).expect("leader");
        sim.down.insert(old);
        // raft-rs waits a random 1x to 2x ELECTION_TICKS of silence before a (pre-)campaign; a split vote
        // costs one more such wait
        let rounds = sim.elect(0);
        assert!(rounds <= 4 * ELECTION_TICKS, "elected after {rounds} ticks");
        let new = sim.leader(0).expect("new leader");
        assert_ne!(new, old);
        sim.propose(0, "b0").expect("proposed to the new leader");
        let survivors: Vec<u64> = IDS.iter().copied().filter(|id| *id != old).collect();
        let mut want: Vec<String> = (0..10).map(|i| format!("a{i}")).collect();
        want.push("b0".into());
        for id in &survivors {
            assert_eq!(sim.log(*id, 0), want);
        }
        // the old leader comes back, follows, and catches up
        sim.down.remove(&old);
        sim.rounds(3 * ELECTION_TICKS);
        assert_eq!(
            sim.leader(0),
            Some(new),
            "the returning node does not depose the leader"
        );
        assert_eq!(sim.log(old, 0), want);
    }

    #[test]
    fn a_leader_cut_off_from_its_majority_cannot_commit() {
        let mut sim = Sim::new(&IDS, 1);
        sim.elect(0);
        let old = sim.leader(0).expect("leader");
        let others: Vec<u64> = IDS.iter().copied().filter(|id| *id != old).collect();
        for o in &others {
            sim.cut.insert((old, *o));
        }
        // the stale leader still accepts a proposal, but it never commits anywhere
        let _ = sim
            .nodes
            .get_mut(&old)
            .expect("node")
            .propose(0, b"stale".to_vec());
        sim.rounds(4 * ELECTION_TICKS);
        assert!(
            !sim.nodes[&old].is_leader(0),
            "check-quorum made the isolated leader step down"
        );
        // randomized timeouts can split a vote or two (seen about once in 150 runs within 4 timeouts)
        for _ in 0..16 * ELECTION_TICKS {
            if others.iter().any(|id| sim.nodes[id].is_leader(0)) {
                break;
            }
            sim.round();
        }
        let new = others
            .iter()
            .copied()
            .find(|id| sim.nodes[id].is_leader(0))
            .expect("the majority elected a leader");
        sim.nodes
            .get_mut(&new)
            .expect("node")
            .propose(0, b"fresh".to_vec())
            .expect("proposed");
        sim.settle();
        sim.cut.clear();
        sim.rounds(3 * ELECTION_TICKS);
        for id in IDS {
            assert_eq!(
                sim.log(id, 0),
                vec!["fresh".to_string()],
                "node {id}: no split brain"
            );
        }
    }

    #[test]
    fn pre_vote_keeps_a_rejoining_node_from_deposing_the_leader() {
        let mut sim = Sim::new(&IDS, 1);
        sim.elect(0);
        let leader = sim.leader(0).expect("leader");
        let term = sim.nodes[&leader].term(0);
        let loner = IDS
            .iter()
            .copied()
            .find(|id| *id != leader)
            .expect("follower");
        for o in IDS.iter().filter(|id| **id != loner) {
            sim.cut.insert((loner, *o));
        }
        sim.rounds(6 * ELECTION_TICKS);
        assert_eq!(
            sim.nodes[&loner].term(0),
            term,
            "pre-vote: no term inflation while alone"
        );
        sim.cut.clear();
        sim.rounds(2 * ELECTION_TICKS);
        assert_eq!(sim.leader(0), Some(leader));
        assert_eq!(sim.nodes[&leader].term(0), term);
    }

    /// Delivers what `from` produced in the sim (no links cut, no snapshots in these tests).
    fn deliver(sim: &mut Sim, from: u64, out: Output) {
        sim.applied.entry(from).or_default().extend(out.committed);
        for batch in out.batches {
            let to = sim.nodes.get_mut(&batch.to).expect("destination");
            for (p, m) in batch.messages {
                to.step(p, m);
            }
        }
    }

    /// Entries applied by one node for one partition: index and data.
    type AppliedLog = Vec<(u64, Vec<u8>)>;

    /// A deterministic source of numbers below its argument (xorshift), for the model tests.
    fn below(seed: u64) -> impl FnMut(usize) -> usize {
        let mut rng = seed | 1;
        move |n: usize| -> usize {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            usize::try_from(rng % u64::try_from(n.max(1)).unwrap_or(1)).unwrap_or(0)
        }
    }

    /// Model test of the asynchronous sync: every node's syncs answer late (in order, several at once),
    /// messages are delivered out of order or lost; every node applies the same entries at the same
    /// indexes, each once and in order, and once the network heals all of them apply every entry that
    /// any node applied.
    #[test]
    fn late_syncs_and_a_reordering_network_keep_every_replica_applying_the_same_log() {
        FIXED_TIMEOUTS.with(|fixed| fixed.set(true));
        for seed in 1..=12u64 {
            let mut next = below(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut sim = Sim::durable(&IDS, 2);
            sim.elect(0);
            sim.elect(1);
            let mut pending: BTreeMap<u64, std::collections::VecDeque<Unsynced>> = BTreeMap::new();
            let mut network: Vec<(u64, PartitionId, Message)> = Vec::new();
            let mut applied: BTreeMap<(u64, PartitionId), AppliedLog> = BTreeMap::new();
            let mut record =
                |id: u64, out: &Output, network: &mut Vec<(u64, PartitionId, Message)>| {
                    for c in &out.committed {
                        applied
                            .entry((id, c.partition))
                            .or_default()
                            .push((c.index, c.data.clone()));
                    }
                    for b in &out.batches {
                        for (p, m) in &b.messages {
                            network.push((b.to, *p, m.clone()));
                        }
                    }
                };
            let mut proposed = 0u32;
            for _ in 0..3000 {
                let id = IDS[next(3)];
                match next(10) {
                    0 => sim.nodes.get_mut(&id).expect("node").tick(),
                    1 | 2 => {
                        let p = PartitionId::try_from(next(2)).unwrap_or(0);
                        if sim.nodes[&id].is_leader(p) {
                            proposed += 1;
                            let data = format!("{seed}-{proposed}").into_bytes();
                            let _ = sim.nodes.get_mut(&id).expect("node").propose(p, data);
                        }
                    }
                    3 | 4 => {
                        let (out, unsynced) = sim.write(id);
                        record(id, &out, &mut network);
                        pending.entry(id).or_default().push_back(unsynced);
                    }
                    5 => {
                        // the sync thread answers the oldest rounds, in order
                        let queue = pending.entry(id).or_default();
                        let n = (next(3) + 1).min(queue.len());
                        let rounds: Vec<Unsynced> = queue.drain(..n).collect();
                        for out in sim.sync(id, rounds) {
                            record(id, &out, &mut network);
                        }
                    }
                    _ => {
                        if !network.is_empty() {
                            let (to, p, m) = network.swap_remove(next(network.len()));
                            // one in ten is lost
                            if next(10) != 0 {
                                sim.nodes.get_mut(&to).expect("node").step(p, m);
                            }
                        }
                    }
                }
            }
            // heal: every sync answered, every message delivered, a few heartbeats
            for _ in 0..40 {
                for id in IDS {
                    let node = sim.nodes.get_mut(&id).expect("node");
                    node.tick();
                    let (out, unsynced) = node.poll_write().expect("write");
                    record(id, &out, &mut network);
                    let queue = pending.entry(id).or_default();
                    queue.push_back(unsynced);
                    let rounds: Vec<Unsynced> = queue.drain(..).collect();
                    for out in sim.sync(id, rounds) {
                        record(id, &out, &mut network);
                    }
                }
                for (to, p, m) in std::mem::take(&mut network) {
                    sim.nodes.get_mut(&to).expect("node").step(p, m);
                }
            }
            let entries: usize = applied
                .values()
                .map(|l| l.iter().filter(|(_, d)| !d.is_empty()).count())
                .sum();
            assert!(
                entries >= 3 * 20,
                "seed {seed}: the run did something ({entries})"
            );
            for p in 0..2 {
                let logs: Vec<AppliedLog> = IDS
                    .iter()
                    .map(|id| applied.get(&(*id, p)).cloned().unwrap_or_default())
                    .collect();
                for log in &logs {
                    assert!(
                        log.windows(2).all(|w| w[1].0 == w[0].0 + 1),
                        "seed {seed} partition {p}: applied in order, each once"
                    );
                }
                // (recorded from the end of the first election on, where the nodes may stand apart)
                let maps: Vec<BTreeMap<u64, Vec<u8>>> =
                    logs.iter().map(|l| l.iter().cloned().collect()).collect();
                for a in &maps {
                    for b in &maps {
                        for (index, data) in a {
                            if let Some(other) = b.get(index) {
                                assert_eq!(data, other, "seed {seed} partition {p} index {index}");
                            }
                        }
                    }
                    assert_eq!(
                        a.keys().last(),
                        maps[0].keys().last(),
                        "seed {seed} partition {p}: healed, every node applied everything"
                    );
                }
            }
        }
    }

    /// What the replicas of [`crashes_compactions_and_snapshots_keep_every_replica_applying_the_same_log`]
    /// applied, checked as it happens.
    #[derive(Default)]
    struct Replayed {
        /// Each (partition, index) as first applied anywhere: every replica must apply the same there.
        log: BTreeMap<(PartitionId, u64), Vec<u8>>,
        /// Each node's last applied or installed (index, term) per partition in its current life.
        last: BTreeMap<(u64, PartitionId), (u64, u64)>,
        /// The highest index each node's store holds per partition: a crash keeps it (a restarted
        /// replica applies again what its log hands out, and its store skips what it holds).
        durable: BTreeMap<(u64, PartitionId), u64>,
        /// Replicas restarted since they last applied: their next entry may repeat applied ones, but
        /// must not skip any.
        resumed: std::collections::BTreeSet<(u64, PartitionId)>,
        /// Entries applied, counting repeats after restarts.
        applied: usize,
        /// Snapshots asked for and not yet offered (a leader offers one once it has applied far enough).
        wants: BTreeMap<(u64, PartitionId), u64>,
        /// Snapshots installed and not yet reported durable to their node's log (the apply thread
        /// reports them after its next store flush).
        unflushed: BTreeMap<u64, Vec<(PartitionId, u64)>>,
        /// Snapshots installed again by restarted nodes.
        reinstalled: usize,
        /// The last events of each replica, for the failure messages.
        trace: BTreeMap<(u64, PartitionId), Vec<String>>,
    }

    impl Replayed {
        fn note(&mut self, id: u64, p: PartitionId, what: String) {
            let trace = self.trace.entry((id, p)).or_default();
            trace.push(what);
            if trace.len() > 40 {
                trace.remove(0);
            }
        }

        /// A node's log never starts past what raft-rs counts applied, but while a received snapshot
        /// waits for its sync.
        fn check(&self, sim: &Sim, id: u64) {
            for (p, g) in &sim.nodes[&id].groups {
                let raft_log = &g.node.raft.raft_log;
                let point = raft_log
                    .store
                    .mem()
                    .first_index()
                    .unwrap_or(0)
                    .saturating_sub(1);
                assert!(
                    point <= raft_log.applied || g.installing(),
                    "node {id} p {p}: log starts after {point}, raft applied {}; {:#?}",
                    raft_log.applied,
                    self.trace.get(&(id, *p))
                );
            }
        }

        /// A restarted node installs again the snapshots its log still holds: its store goes back to
        /// each one's point, and the next entry applied must follow it.
        fn reinstall(&mut self, seed: u64, id: u64, installs: Vec<(PartitionId, Snapshot)>) {
            for (p, snapshot) in installs {
                let meta = snapshot.get_metadata();
                self.note(id, p, format!("install again {}", meta.index));
                assert_eq!(
                    String::from_utf8_lossy(&snapshot.data),
                    meta.index.to_string(),
                    "seed {seed}: the snapshot received is installed again"
                );
                self.last.insert((id, p), (meta.index, meta.term));
                self.durable.insert((id, p), meta.index);
                self.resumed.remove(&(id, p));
                self.unflushed.entry(id).or_default().push((p, meta.index));
                self.reinstalled += 1;
            }
        }

        fn record(&mut self, seed: u64, id: u64, out: &Output) {
            for (p, snapshot) in &out.installs {
                let meta = snapshot.get_metadata();
                self.note(id, *p, format!("install {}", meta.index));
                self.unflushed.entry(id).or_default().push((*p, meta.index));
                let data = String::from_utf8_lossy(&snapshot.data).into_owned();
                assert_eq!(
                    data,
                    meta.index.to_string(),
                    "seed {seed}: the snapshot sent is installed"
                );
                let last = self.last.entry((id, *p)).or_default();
                assert!(
                    meta.index >= last.0,
                    "seed {seed}: node {id} installs no older snapshot"
                );
                *last = (meta.index, meta.term);
                let durable = self.durable.entry((id, *p)).or_default();
                *durable = (*durable).max(meta.index);
                self.resumed.remove(&(id, *p));
            }
            for c in &out.committed {
                let p = c.partition;
                self.note(id, p, format!("apply {}", c.index));
                let (last, _) = self.last.get(&(id, p)).copied().unwrap_or_default();
                if self.resumed.remove(&(id, p)) {
                    let durable = self.durable.get(&(id, p)).copied().unwrap_or_default();
                    assert!(
                        c.index <= durable + 1,
                        "seed {seed}: node {id} restarted at {} while its store holds {durable}; {:#?}",
                        c.index,
                        self.trace.get(&(id, p))
                    );
                } else {
                    assert_eq!(
                        c.index,
                        last + 1,
                        "seed {seed}: node {id} applies in order, once"
                    );
                }
                let first = self.log.entry((p, c.index)).or_insert(c.data.clone());
                assert_eq!(
                    *first, c.data,
                    "seed {seed} partition {p} index {}",
                    c.index
                );
                self.last.insert((id, p), (c.index, c.term));
                let durable = self.durable.entry((id, p)).or_default();
                *durable = (*durable).max(c.index);
                self.applied += 1;
            }
        }
    }

    /// Delivers a message to node `to`; a snapshot with data, if `keep`, as the driver's receiving thread
    /// hands it over: its data kept in a file of the node's directory first (see
    /// [`MultiRaft::kept_snapshot`]). Whether it was.
    fn step_keeping(sim: &mut Sim, to: u64, p: PartitionId, m: Message, keep: bool) -> bool {
        let kept = (keep
            && m.get_msg_type() == MessageType::MsgSnapshot
            && !m.get_snapshot().get_data().is_empty())
        .then(|| {
            KeptSnapshot::write(sim.dirs[&to].path(), p, m.get_snapshot(), true).expect("keep")
        });
        let node = sim.nodes.get_mut(&to).expect("node");
        node.step(p, m);
        let was = kept.is_some();
        if let Some(file) = kept {
            node.kept_snapshot(p, file);
        }
        was
    }

    /// The received snapshots' files in node `id`'s directory.
    fn kept_files(sim: &Sim, id: u64) -> usize {
        std::fs::read_dir(sim.dirs[&id].path().join(super::super::log::SNAPSHOT_DIR))
            .map_or(0, |entries| entries.count())
    }

    /// The driver's snapshot timeout, come: a leader still waiting for a snapshot's acknowledgement
    /// (the receiver crashed before answering) sends another.
    fn expire_snapshots(node: &mut MultiRaft) {
        for p in 0..2 {
            for to in IDS {
                if node.awaits_snapshot(p, to) {
                    node.snapshot_failed(p, to);
                }
            }
        }
    }

    /// Model test of crashes, log compactions and snapshots under late syncs and a lossy, reordering
    /// network: nodes are killed (their unanswered syncs lost) and reopened from their directories,
    /// compact their logs up to what they applied, and leaders send snapshots (made at what they applied)
    /// to followers that need compacted entries. Every replica applies the same entry at each index, in
    /// order, each once per life; a restarted replica resumes at or before where it stopped (or from a
    /// snapshot); and once the network heals every node has applied the same last index. A seed replays
    /// exactly (fixed election timeouts); `ROOKERY_MODEL_SEEDS=N` runs seeds 1 to N instead of 16.
    #[test]
    fn crashes_compactions_and_snapshots_keep_every_replica_applying_the_same_log() {
        FIXED_TIMEOUTS.with(|fixed| fixed.set(true));
        let (mut reinstalled, mut rewrites, mut kept) = (0, 0, 0);
        let seeds = std::env::var("ROOKERY_MODEL_SEEDS")
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(16);
        for seed in 1..=seeds {
            let mut next = below(seed.wrapping_mul(0x2545_F491_4F6C_DD1D));
            let mut sim = Sim::durable(&IDS, 2);
            sim.elect(0);
            sim.elect(1);
            let mut seen = Replayed::default();
            for id in IDS {
                let committed = sim.applied.get(&id).cloned().unwrap_or_default();
                seen.record(
                    seed,
                    id,
                    &Output {
                        committed,
                        ..Output::default()
                    },
                );
            }
            let mut pending: BTreeMap<u64, std::collections::VecDeque<Unsynced>> = BTreeMap::new();
            let mut network: Vec<(u64, PartitionId, Message)> = Vec::new();
            let (mut proposed, mut crashes, mut compactions, mut snapshots) = (0u32, 0, 0, 0);
            // a node's output: record it, put its messages on the network, offer the snapshots it is
            // asked for (made at what it applied; asked again while it has not applied far enough)
            let handle = |sim: &mut Sim,
                          seen: &mut Replayed,
                          network: &mut Vec<(u64, PartitionId, Message)>,
                          id: u64,
                          out: Output| {
                seen.record(seed, id, &out);
                for b in &out.batches {
                    for (p, m) in &b.messages {
                        network.push((b.to, *p, m.clone()));
                    }
                }
                let node = sim.nodes.get_mut(&id).expect("node");
                node.release_snapshots();
                for (p, at) in node.wanted_snapshots() {
                    let want = seen.wants.entry((id, p)).or_default();
                    *want = (*want).max(at);
                }
                for p in 0..2 {
                    let Some(at) = seen.wants.get(&(id, p)).copied() else {
                        continue;
                    };
                    match seen.last.get(&(id, p)).copied() {
                        Some((index, term)) if index >= at && !seen.resumed.contains(&(id, p)) => {
                            let data = index.to_string().into_bytes();
                            node.offer_snapshot(p, index, term, data).expect("offer");
                            seen.wants.remove(&(id, p));
                            seen.note(id, p, format!("offer {index}"));
                        }
                        _ => {}
                    }
                }
            };
            for _ in 0..6000 {
                let id = IDS[next(3)];
                match next(20) {
                    0 | 1 => {
                        let node = sim.nodes.get_mut(&id).expect("node");
                        node.tick();
                        if next(8) == 0 {
                            expire_snapshots(node);
                        }
                    }
                    2..=4 => {
                        let p = PartitionId::try_from(next(2)).unwrap_or(0);
                        if sim.nodes[&id].is_leader(p) {
                            proposed += 1;
                            let data = format!("{seed}-{proposed}").into_bytes();
                            let _ = sim.nodes.get_mut(&id).expect("node").propose(p, data);
                        }
                    }
                    5..=7 => {
                        let (out, unsynced) = sim.write(id);
                        handle(&mut sim, &mut seen, &mut network, id, out);
                        pending.entry(id).or_default().push_back(unsynced);
                    }
                    8 | 9 => {
                        let queue = pending.entry(id).or_default();
                        let n = (next(3) + 1).min(queue.len());
                        let rounds: Vec<Unsynced> = queue.drain(..n).collect();
                        for out in sim.sync(id, rounds) {
                            handle(&mut sim, &mut seen, &mut network, id, out);
                        }
                    }
                    10 => {
                        // kill -9: what was written stays, the syncs not yet answered are never
                        // answered, the store keeps what it holds (also a snapshot installed and not yet
                        // reported durable, or one whose sync was never answered: the log has its point
                        // and its data, and the node installs it again)
                        if next(25) == 0 {
                            crashes += 1;
                            pending.remove(&id);
                            seen.wants.retain(|(node, _), _| *node != id);
                            seen.unflushed.remove(&id);
                            sim.reopen(id);
                            for p in 0..2 {
                                seen.resumed.insert((id, p));
                                seen.note(id, p, "crash".into());
                            }
                            let installs = sim.nodes[&id].installs();
                            seen.reinstall(seed, id, installs);
                            seen.check(&sim, id);
                        }
                    }
                    11 => {
                        // the apply thread's store flush (before it asks for compactions): the
                        // snapshots installed since are reported durable
                        let node = sim.nodes.get_mut(&id).expect("node");
                        for (p, index) in seen.unflushed.remove(&id).unwrap_or_default() {
                            node.installed(p, index).expect("installed");
                        }
                        // one partition, or both in one call (as the driver compacts a check's
                        // partitions, then looks once at rewriting the file)
                        let chosen: Vec<PartitionId> = match next(3) {
                            0 => vec![0],
                            1 => vec![1],
                            _ => vec![0, 1],
                        };
                        let mut points = Vec::new();
                        for p in chosen {
                            if let Some((index, _)) = seen.last.get(&(id, p)).copied() {
                                let node = &sim.nodes[&id];
                                let raft_applied = node.groups[&p].node.raft.raft_log.applied;
                                assert!(seen.resumed.contains(&(id, p)) || raft_applied >= index, "seed {seed}: node {id} p {p}: the store applied {index}, raft counts {raft_applied} (persisted {})", node.groups[&p].node.raft.raft_log.persisted);
                                if !seen.resumed.contains(&(id, p)) {
                                    points.push((p, index + 1));
                                }
                            }
                        }
                        if !points.is_empty()
                            && sim
                                .nodes
                                .get_mut(&id)
                                .expect("node")
                                .compact_all(points.iter().copied())
                                .expect("compact")
                        {
                            compactions += 1;
                            for (p, index) in &points {
                                seen.note(id, *p, format!("compact {index}"));
                            }
                        }
                        seen.check(&sim, id);
                    }
                    _ => {
                        if !network.is_empty() {
                            let (to, p, m) = network.swap_remove(next(network.len()));
                            if m.get_msg_type() == MessageType::MsgSnapshot {
                                snapshots += 1;
                            }
                            if next(10) != 0 {
                                // half the snapshots kept in a file by the receiving thread, half
                                // written into the log with their point
                                let keep = next(2) == 0;
                                kept += usize::from(step_keeping(&mut sim, to, p, m, keep));
                            } else if m.get_msg_type() == MessageType::MsgSnapshot {
                                // lost: the sender learns it, as the snapshot thread reports a failed send
                                if let Some(from) = sim.nodes.get_mut(&m.from) {
                                    from.snapshot_failed(p, to);
                                }
                            }
                        }
                    }
                }
            }
            // heal: every sync answered, every message delivered, heartbeats until quiet
            for round in 0..60 {
                for id in IDS {
                    let node = sim.nodes.get_mut(&id).expect("node");
                    node.tick();
                    if round % 10 == 9 {
                        expire_snapshots(node);
                    }
                    let (out, unsynced) = sim.write(id);
                    handle(&mut sim, &mut seen, &mut network, id, out);
                    let queue = pending.entry(id).or_default();
                    queue.push_back(unsynced);
                    let rounds: Vec<Unsynced> = queue.drain(..).collect();
                    for out in sim.sync(id, rounds) {
                        handle(&mut sim, &mut seen, &mut network, id, out);
                    }
                }
                for (to, p, m) in std::mem::take(&mut network) {
                    kept += usize::from(step_keeping(&mut sim, to, p, m, true));
                }
            }
            for id in IDS {
                // every file a record let go is deleted (at its sync, or at the next start)
                let needed = sim.nodes[&id].installs().len();
                assert!(
                    kept_files(&sim, id) <= needed,
                    "seed {seed}: node {id} keeps {} snapshot files for {needed} installations to redo",
                    kept_files(&sim, id)
                );
            }
            assert!(
                seen.applied >= 3 * 20 && crashes > 0 && compactions > 0,
                "seed {seed}: the run did something ({} applied, {crashes} crashes, {compactions} compactions)",
                seen.applied
            );
            reinstalled += seen.reinstalled;
            rewrites += sim.rewrites();
            for p in 0..2 {
                let lasts: Vec<u64> = IDS
                    .iter()
                    .map(|id| seen.last.get(&(*id, p)).map_or(0, |l| l.0))
                    .collect();
                assert!(
                    lasts.iter().all(|l| *l == lasts[0]),
                    "seed {seed} partition {p}: healed, every node at the same index ({lasts:?}; {snapshots} snapshots sent)"
                );
            }
        }
        assert!(
            reinstalled > 0,
            "some crash came before a snapshot's installation was reported durable"
        );
        assert!(rewrites > 0, "some log was rewritten");
        assert!(kept > 0, "some snapshot's data was kept in a file");
    }

    #[test]
    fn a_leader_commits_with_its_followers_before_its_own_sync_and_a_syncing_follower_answers_heartbeats(
    ) {
        let mut sim = Sim::durable(&IDS, 1);
        sim.elect(0);
        let leader = sim.leader(0).expect("leader");
        let followers: Vec<u64> = IDS.iter().copied().filter(|id| *id != leader).collect();
        let (syncing, answering) = (followers[0], followers[1]);
        let mut leader_rounds = Vec::new();
        let mut follower_rounds = Vec::new();
        // the leader writes and sends at once; its sync stays pending to the end
        let node = sim.nodes.get_mut(&leader).expect("leader");
        node.propose(0, b"a".to_vec()).expect("propose");
        let (out, unsynced) = node.poll_write().expect("write");
        assert!(unsynced.needs_sync());
        leader_rounds.push(unsynced);
        let index = node.groups[&0].node.raft.raft_log.last_index();
        assert!(out.batches.iter().any(|b| b
            .messages
            .iter()
            .any(|(_, m)| m.get_msg_type() == MessageType::MsgAppend)));
        deliver(&mut sim, leader, out);
        for id in &followers {
            let out = sim
                .nodes
                .get_mut(id)
                .expect("follower")
                .poll()
                .expect("poll");
            deliver(&mut sim, *id, out);
        }
        let node = sim.nodes.get_mut(&leader).expect("leader");
        let (out, unsynced) = node.poll_write().expect("write");
        leader_rounds.push(unsynced);
        let log = &node.groups[&0].node.raft.raft_log;
        assert!(log.committed >= index, "both followers make a majority");
        assert!(
            log.persisted < index,
            "the leader's own copy is not synced yet"
        );
        assert!(
            out.committed.is_empty(),
            "nothing is applied before it is durable here"
        );
        deliver(&mut sim, leader, out);
        // a follower whose sync is pending acknowledges no append, but answers heartbeats at once
        let node = sim.nodes.get_mut(&leader).expect("leader");
        node.propose(0, b"b".to_vec()).expect("propose");
        let (out, unsynced) = node.poll_write().expect("write");
        leader_rounds.push(unsynced);
        deliver(&mut sim, leader, out);
        let (out, unsynced) = sim.write(syncing);
        assert!(unsynced.needs_sync());
        follower_rounds.push(unsynced);
        assert!(
            out.batches.iter().all(|b| b
                .messages
                .iter()
                .all(|(_, m)| m.get_msg_type() != MessageType::MsgAppendResponse)),
            "an append is acknowledged only once synced"
        );
        deliver(&mut sim, syncing, out);
        let out = sim
            .nodes
            .get_mut(&answering)
            .expect("follower")
            .poll()
            .expect("poll");
        deliver(&mut sim, answering, out);
        let node = sim.nodes.get_mut(&leader).expect("leader");
        for _ in 0..HEARTBEAT_TICKS {
            node.tick();
        }
        let (out, unsynced) = node.poll_write().expect("write");
        leader_rounds.push(unsynced);
        deliver(&mut sim, leader, out);
        let (out, unsynced) = sim.write(syncing);
        follower_rounds.push(unsynced);
        assert!(out.batches.iter().any(|b| b.to == leader
            && b.messages
                .iter()
                .any(|(_, m)| m.get_msg_type() == MessageType::MsgHeartbeatResponse)));
        deliver(&mut sim, syncing, out);
        // the syncs done, in order, everything is released: every node applies both entries once
        for (id, rounds) in [(leader, leader_rounds), (syncing, follower_rounds)] {
            for out in sim.sync(id, rounds) {
                deliver(&mut sim, id, out);
            }
        }
        sim.rounds(HEARTBEAT_TICKS);
        for id in IDS {
            assert_eq!(
                sim.log(id, 0),
                vec!["a".to_string(), "b".to_string()],
                "node {id}"
            );
        }
    }

    #[test]
    fn leadership_is_handed_over_on_request() {
        let mut sim = Sim::new(&IDS, 1);
        sim.elect(0);
        let leader = sim.leader(0).expect("leader");
        let to = IDS
            .iter()
            .copied()
            .find(|id| *id != leader)
            .expect("follower");
        sim.nodes
            .get_mut(&leader)
            .expect("node")
            .transfer_leader(0, to);
        sim.settle();
        sim.rounds(2);
        assert_eq!(sim.leader(0), Some(to));
        let out = sim.nodes.get_mut(&to).expect("node").poll().expect("poll");
        assert!(
            out.leadership.is_empty(),
            "reported already during the hand-over"
        );
    }

    #[test]
    fn hand_over_picks_a_live_caught_up_voter_and_skips_followers() {
        let mut sim = Sim::new(&IDS, 1);
        sim.elect(0);
        let leader = sim.leader(0).expect("leader");
        let dead = IDS
            .iter()
            .copied()
            .find(|id| *id != leader)
            .expect("follower");
        sim.down.insert(dead);
        // check-quorum marks the dead follower inactive within an election timeout
        sim.rounds(2 * ELECTION_TICKS);
        assert_eq!(sim.nodes.get_mut(&dead).expect("node").hand_over(0), None);
        let to = sim
            .nodes
            .get_mut(&leader)
            .expect("node")
            .hand_over(0)
            .expect("a target");
        assert_ne!(to, dead, "never hands over to a node that does not answer");
        sim.settle();
        sim.rounds(2);
        assert_eq!(sim.leader(0), Some(to));
    }

    #[test]
    fn a_restarted_node_recovers_its_log_and_catches_up() {
        let mut sim = Sim::durable(&IDS, 2);
        for p in 0..2 {
            sim.elect(p);
        }
        for i in 0..20 {
            sim.propose(i % 2, &format!("a{i}")).expect("proposed");
        }
        let old = sim.leader(0).expect("leader");
        sim.down.insert(old);
        sim.reopen(old);
        sim.elect(0);
        sim.propose(0, "b0")
            .expect("proposed while the old leader is away");
        sim.down.remove(&old);
        sim.rounds(3 * ELECTION_TICKS);
        let mut want: Vec<String> = (0..20)
            .filter(|i| i % 2 == 0)
            .map(|i| format!("a{i}"))
            .collect();
        want.push("b0".into());
        for id in IDS {
            assert_eq!(sim.log(id, 0), want, "node {id}");
        }
    }

    #[test]
    fn a_whole_cluster_killed_at_once_keeps_every_committed_entry() {
        let mut sim = Sim::durable(&IDS, 1);
        sim.elect(0);
        for i in 0..10 {
            sim.propose(0, &format!("m{i}")).expect("proposed");
        }
        for id in IDS {
            sim.reopen(id);
        }
        sim.elect(0);
        sim.propose(0, "after").expect("proposed after the restart");
        sim.rounds(2);
        let mut want: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
        want.push("after".into());
        for id in IDS {
            assert_eq!(sim.log(id, 0), want, "node {id}");
        }
    }

    /// The leader of `p`, with its log compacted up to its commit index (so that a new replica needs a
    /// snapshot, which carries the configuration).
    fn compacted_leader(sim: &mut Sim, p: PartitionId) -> u64 {
        let leader = sim.leader(p).expect("leader");
        let node = sim.nodes.get_mut(&leader).expect("leader");
        let commit = node.commit_index(p).expect("commit");
        assert!(node.compact(p, commit + 1).expect("compact"));
        leader
    }

    fn voters(sim: &Sim, id: u64, p: PartitionId) -> Vec<u64> {
        let mut v = sim.nodes[&id].replicas(p).expect("replicas").voters;
        v.sort_unstable();
        v
    }

    #[test]
    fn a_replica_moves_to_a_new_node_by_learner_snapshot_and_joint_change() {
        let mut sim = Sim::durable(&IDS, 1);
        sim.elect(0);
        for i in 0..20 {
            sim.propose(0, &format!("m{i}")).expect("propose");
        }
        let leader = compacted_leader(&mut sim, 0);
        sim.dirs.insert(4, tempfile::tempdir().expect("tempdir"));
        sim.reopen(4);
        assert!(!sim.nodes[&4].has(0));
        sim.change(leader, 0, Change::AddLearners(vec![4]))
            .expect("add a learner");
        sim.rounds(5);
        assert!(
            sim.nodes[&4].has(0),
            "the learner was started by its leader"
        );
        let commit = sim.nodes[&leader].commit_index(0).expect("commit");
        assert_eq!(sim.nodes[&leader].matched(0, 4), Some(commit), "caught up");
        assert_eq!(sim.log(4, 0), sim.log(leader, 0), "snapshot, then the log");
        assert!(
            !sim.nodes[&leader].holds_snapshot(0),
            "the leader let the snapshot go once the learner had it"
        );
        assert_eq!(sim.log(4, 0).len(), 20);
        let learner = sim.nodes[&leader].replicas(0).expect("replicas");
        assert_eq!(learner.learners, vec![4]);
        assert!(!learner.joint(), "adding learners left its joint step");

        let out = *IDS.iter().find(|id| **id != leader).expect("a follower");
        sim.change(
            leader,
            0,
            Change::Replace {
                promote: vec![4],
                remove: vec![out],
            },
        )
        .expect("replace");
        sim.rounds(5);
        let mut expected: Vec<u64> = IDS.iter().copied().filter(|id| *id != out).collect();
        expected.push(4);
        expected.sort_unstable();
        let now = sim.nodes[&leader].replicas(0).expect("replicas");
        assert!(!now.joint(), "the joint configuration was left");
        assert!(now.learners.is_empty());
        assert_eq!(voters(&sim, leader, 0), expected);
        assert_eq!(voters(&sim, 4, 0), expected);
        assert!(
            !sim.nodes[&out].has(0),
            "the removed replica dropped its copy"
        );

        sim.propose(0, "after").expect("propose after the change");
        assert_eq!(sim.log(4, 0), sim.log(leader, 0));
        assert_eq!(sim.log(4, 0).last().map(String::as_str), Some("after"));

        // restarts replay the changes from the log; the removed node does not come back
        sim.reopen(4);
        sim.reopen(out);
        sim.rounds(3);
        assert_eq!(voters(&sim, 4, 0), expected, "replayed after a restart");
        assert!(!sim.nodes[&out].has(0), "a dropped group stays dropped");
        assert_eq!(sim.log(4, 0), sim.log(leader, 0));

        // the new configuration elects without the old leader
        sim.down.insert(leader);
        sim.elect(0);
        let next = sim.leader(0).expect("a new leader");
        assert!(expected.contains(&next) && next != leader);
        sim.propose(0, "later")
            .expect("propose under the new leader");
        assert_eq!(sim.log(4, 0).last().map(String::as_str), Some("later"));
    }

    #[test]
    fn a_new_replica_takes_no_entries_from_the_log_start_and_waits_for_a_snapshot() {
        let mut sim = Sim::new(&IDS, 1);
        sim.add(4);
        sim.elect(0);
        for i in 0..5 {
            sim.propose(0, &format!("m{i}")).expect("propose");
        }
        let leader = sim.leader(0).expect("leader");
        // added by a leader whose log still starts at its first entry (a previous leader compacted its own)
        sim.change(leader, 0, Change::AddLearners(vec![4]))
            .expect("add");
        sim.rounds(3);
        assert!(sim.nodes[&4].has(0), "started by its leader");
        assert!(
            sim.log(4, 0).is_empty(),
            "no entries without a configuration"
        );
        assert!(sim.nodes[&leader].needs_start(0));
        let commit = sim.nodes[&leader].commit_index(0).expect("commit");
        sim.nodes
            .get_mut(&leader)
            .expect("leader")
            .compact(0, commit.min(2))
            .expect("compact");
        sim.rounds(5);
        assert!(!sim.nodes[&leader].needs_start(0));
        assert_eq!(sim.log(4, 0), sim.log(leader, 0), "snapshot, then the log");
        let learner = sim.nodes[&4].replicas(0).expect("replicas");
        assert_eq!(learner.learners, vec![4]);
    }

    #[test]
    fn a_replica_removed_while_down_drops_its_copy_when_it_comes_back() {
        let mut sim = Sim::new(&IDS, 1);
        sim.add(4);
        sim.elect(0);
        sim.propose(0, "x").expect("propose");
        let leader = compacted_leader(&mut sim, 0);
        let out = *IDS.iter().find(|id| **id != leader).expect("a follower");
        let node = sim.nodes.get_mut(&leader).expect("leader");
        node.change_replicas(0, &Change::AddLearners(vec![4]))
            .expect("add");
        sim.rounds(3);
        sim.down.insert(out);
        sim.change(
            leader,
            0,
            Change::Replace {
                promote: vec![4],
                remove: vec![out],
            },
        )
        .expect("replace while a replica is down");
        sim.rounds(3);
        assert!(!sim.nodes[&leader].replicas(0).expect("r").has(out));
        assert!(sim.nodes[&out].has(0), "it was down");
        sim.down.remove(&out);
        sim.rounds(3 * ELECTION_TICKS);
        assert!(
            !sim.nodes[&out].has(0),
            "told by the leader when it asked for votes"
        );
        assert_eq!(sim.leader(0), Some(leader), "and it deposed nobody");
    }

    #[test]
    fn one_change_at_a_time_and_only_on_the_leader() {
        let mut sim = Sim::new(&IDS, 1);
        sim.add(4);
        sim.add(5);
        sim.elect(0);
        let leader = compacted_leader(&mut sim, 0);
        let follower = *IDS.iter().find(|id| **id != leader).expect("a follower");
        let add = Change::AddLearners(vec![4]);
        assert!(matches!(
            sim.nodes
                .get_mut(&follower)
                .expect("f")
                .change_replicas(0, &add),
            Err(ProposeError::NotLeader { .. })
        ));
        let node = sim.nodes.get_mut(&leader).expect("leader");
        node.change_replicas(0, &add).expect("first");
        assert!(
            node.change_replicas(0, &Change::AddLearners(vec![5]))
                .is_err(),
            "a second change waits for the first"
        );
        sim.rounds(3);
        sim.change(leader, 0, Change::AddLearners(vec![5]))
            .expect("after the first applied");
        sim.rounds(3);
        let r = sim.nodes[&leader].replicas(0).expect("replicas");
        let mut learners = r.learners.clone();
        learners.sort_unstable();
        assert_eq!(learners, vec![4, 5]);
        assert!(sim.nodes[&5].has(0));
        assert_eq!(
            sim.nodes[&leader].matched(0, 4),
            sim.nodes[&leader].commit_index(0)
        );
        assert!(
            !sim.nodes[&leader].caught_up(0, 4),
            "a learner, caught up or not, is not given leadership"
        );
    }

    #[test]
    fn raft_ids_are_stable_and_non_zero() {
        let id = raft_id(&NodeId::parse("n1").expect("id"));
        assert_eq!(id, raft_id(&NodeId::parse("n1").expect("id")));
        assert_ne!(id, raft_id(&NodeId::parse("n2").expect("id")));
        assert_ne!(id, 0);
    }
}
