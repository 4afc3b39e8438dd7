//! The apply thread ([`Applier`]): committed entries in log order, applied to this node's store through
//! the cores; snapshots of partitions made and installed; logs compacted once the store holds their
//! entries; the membership record applied from the metadata group.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use super::flusher::{self, FlushRequest};
use super::{background, lock, ApplyInput, Input, ProposalDone, Replication, ReplicationError};
use crate::cluster::membership::{MemberCommand, Membership, Shape};
use crate::cluster::placement::PartitionId;
use crate::config::Config;
use crate::error::ChatError;
use crate::metrics::Metrics;
use crate::raft::multi::{Committed, Leadership};
use crate::state::conv::Rules;
use crate::state::replica::{Applied, Entry, Proposal, Replica};
use crate::store::Store;

/// The apply thread: committed entries of every group, applied in log order through the cores
/// ([`Replica`]) to this node's store; answers the proposals this node made once their entries are
/// applied, and marks a partition ready to serve once its leader's first entry of the term is applied.
pub(super) struct Applier {
    replica: Replica,
    store: Store,
    partitions: u32,
    /// `cluster.log_compact_entries`.
    compact_entries: u64,
    me: u64,
    rx: mpsc::Receiver<ApplyInput>,
    /// This node's proposals waiting for their entries: partition, term, when proposed, callback.
    pending: HashMap<u64, (PartitionId, u64, Instant, ProposalDone)>,
    shared: std::sync::Weak<Replication>,
    metrics: Arc<Metrics>,
    /// Per partition: the index and term of the last entry applied (or skipped as applied before).
    last: HashMap<PartitionId, (u64, u64)>,
    /// Per partition: where its log was last compacted from here.
    compacted: HashMap<PartitionId, u64>,
    /// Per partition: bytes of entries applied since then.
    tail_bytes: HashMap<PartitionId, u64>,
    next_compaction: Instant,
    /// The membership record (none yet on a node that joins) and the metadata group's entry it reflects.
    membership: Option<Membership>,
    meta_index: u64,
    shape: Shape,
    /// Partitions dropped here whose keys are still to be deleted, and when that last happened.
    doomed: std::collections::BTreeSet<PartitionId>,
    /// Per partition, the first entry with data applied since the store's last flush was asked for (its
    /// effects may not be durable yet; see [`Applier::compact_now`]).
    unflushed: HashMap<PartitionId, u64>,
    /// Flushes asked of the compaction flusher and not yet done, oldest first: each one's generation,
    /// and what was `unflushed` when it was asked for.
    flushing: std::collections::VecDeque<(u64, HashMap<PartitionId, u64>)>,
    /// Requests to the compaction flusher thread (started with the first; see `flusher.rs`).
    flusher: Option<mpsc::Sender<FlushRequest>>,
    flush_generation: u64,
    /// A deletion is under way: its next step comes at this instant (see [`Applier::maybe_delete`]).
    deleting: Option<Instant>,
    /// The partitions whose keys the deletion under way has deleted (for its log line).
    deleted: Vec<PartitionId>,
    next_delete: Instant,
    /// Snapshots the driver asked for that wait until this node has applied the index given.
    wanted: HashMap<PartitionId, u64>,
    /// The index of the last snapshot made of each partition: raft-rs asks again with every probe of a
    /// follower until the one made reaches the driver, and one that covers a want is not made again
    /// (until the driver lets it go, [`ApplyInput::Released`]).
    made: HashMap<PartitionId, u64>,
    /// Snapshots installed since the store's last flush: reported to the driver once flushed (see
    /// [`Input::Installed`]).
    installed: Vec<(PartitionId, u64)>,
    /// Partitions whose keys a snapshot thread is reading (a snapshot being made, see
    /// [`Applier::make_snapshots`]) or replacing (one being installed, see [`Applier::install`]), with
    /// the entries committed to them meanwhile, applied once it is done.
    busy: HashMap<PartitionId, Busy>,
    /// Jobs for the snapshot maker thread (started with the first one; see [`Applier::queue`]).
    maker: Option<mpsc::Sender<SnapshotJob>>,
    /// Jobs for the snapshot installer thread (started with the first one).
    installer: Option<mpsc::Sender<SnapshotJob>>,
    /// This thread's own channel, for the snapshot threads' [`ApplyInput::SnapshotDone`].
    apply_tx: mpsc::Sender<ApplyInput>,
    next_job: u64,
    /// `cluster.move_nice`: the snapshot threads' CPU priority (see `background.rs`).
    move_nice: u8,
}

/// A partition whose keys a snapshot thread is reading or replacing: nothing is applied to the partition
/// meanwhile, so that a snapshot made is its state at the index it names, and the entries after a
/// snapshot installed are applied over it.
struct Busy {
    job: u64,
    /// What the job does (an installation is finished here once its keys are in, see
    /// [`Applier::finish`]).
    work: Work,
    /// Answers (or closes) once the job is done.
    done: mpsc::Receiver<()>,
    /// Entries committed to the partition since, in order.
    held: Vec<Committed>,
}

/// What a snapshot thread does with a partition.
enum Work {
    /// Reads its keys as applied up to the job's index and hands them to the driver.
    Make,
    /// Replaces its keys with a snapshot's, taken at `index` (at `term`).
    Install {
        index: u64,
        term: u64,
        bytes: usize,
        started: Instant,
    },
}

/// A job for a snapshot thread.
struct SnapshotJob {
    job: u64,
    partition: PartitionId,
    /// A snapshot to install; none to make one.
    install: Option<bytes::Bytes>,
    index: u64,
    term: u64,
    done: mpsc::Sender<()>,
}

/// An input that holds the apply thread this long is logged (with what it was).
const SLOW_INPUT: Duration = Duration::from_millis(200);
/// How often the keys of dropped partitions are deleted.
const DELETE_EVERY: Duration = Duration::from_secs(5);
/// The most keys one step of a deletion deletes (see [`Applier::maybe_delete`]): about 25 ms.
const DELETE_STEP: usize = 512;

/// A partition whose log has grown by this many bytes of entries since its last compaction is compacted
/// even before `cluster.log_compact_entries`, keeping [`KEEP_LARGE`] entries.
const COMPACT_BYTES: u64 = 8 << 20;
const KEEP_LARGE: u64 = 64;
/// The node's budget for applied entries its Raft logs hold, all partitions together: past it, the
/// largest tails are compacted to [`KEEP_LARGE`] entries until the rest holds at most half of it.
///
/// The per-partition rules above bound one partition's tail, not their sum: 256 partitions under their
/// 5,000 entries or 8 MiB each held 100 to 190 MiB on each node of a cluster filled with 1 GiB, and the
/// log file's rewrite copies all of it (0.4 to 1 s of encoding, then the write, with every round behind
/// it waiting: bench/README.md, "Stop 36").
const TAIL_BUDGET: u64 = 32 << 20;

/// How often the apply thread looks for logs to compact (each time the store is flushed first, see
/// `flusher.rs`).
const COMPACTION_CHECK: Duration = Duration::from_secs(1);

/// The membership record as stored and as a snapshot of the metadata group: the record and the index of
/// the metadata entry it reflects.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct StoredMembership {
    pub index: u64,
    pub membership: Membership,
}

impl Applier {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        config: &Config,
        store: Store,
        membership: Option<Membership>,
        me: u64,
        rx: mpsc::Receiver<ApplyInput>,
        apply_tx: mpsc::Sender<ApplyInput>,
        shared: std::sync::Weak<Replication>,
        metrics: Arc<Metrics>,
    ) -> Result<Applier, ReplicationError> {
        let meta_index = match store.membership()? {
            Some(bytes) => serde_json::from_slice::<StoredMembership>(&bytes)
                .map(|s| s.index)
                .unwrap_or(0),
            None => 0,
        };
        Ok(Applier {
            replica: Replica::new(store.clone(), Rules::from_config(&config.chat)),
            store,
            partitions: config.cluster.partitions,
            compact_entries: config.cluster.log_compact_entries.max(2),
            me,
            rx,
            pending: HashMap::new(),
            shared,
            metrics,
            last: HashMap::new(),
            compacted: HashMap::new(),
            tail_bytes: HashMap::new(),
            next_compaction: Instant::now() + COMPACTION_CHECK,
            membership,
            meta_index,
            shape: Shape::of(config),
            doomed: std::collections::BTreeSet::new(),
            unflushed: HashMap::new(),
            flushing: std::collections::VecDeque::new(),
            flusher: None,
            flush_generation: 0,
            deleting: None,
            deleted: Vec::new(),
            next_delete: Instant::now(),
            wanted: HashMap::new(),
            made: HashMap::new(),
            installed: Vec::new(),
            busy: HashMap::new(),
            maker: None,
            installer: None,
            apply_tx,
            next_job: 0,
            move_nice: config.cluster.move_nice,
        })
    }

    pub(super) fn run(mut self) {
        loop {
            // a deletion under way goes on while nothing else comes
            let wait = self.deleting.map_or(DELETE_EVERY, |next| {
                next.saturating_duration_since(Instant::now())
            });
            let input = match self.rx.recv_timeout(wait) {
                Ok(input) => input,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.maybe_compact();
                    self.maybe_delete(false);
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            let (kind, began) = (input.kind(), Instant::now());
            match input {
                ApplyInput::Track {
                    partition,
                    id,
                    term,
                    done,
                } => {
                    self.pending
                        .insert(id, (partition, term, Instant::now(), done));
                }
                ApplyInput::Committed(entries) => {
                    self.apply(entries);
                    self.maybe_compact();
                    self.make_snapshots();
                }
                ApplyInput::Install(snapshots) => {
                    for (partition, snapshot) in snapshots {
                        self.finish(partition);
                        self.install(partition, snapshot);
                    }
                }
                ApplyInput::SnapshotDone { partition, job } => {
                    if self.busy.get(&partition).is_some_and(|s| s.job == job) {
                        self.finish(partition);
                        self.make_snapshots();
                    }
                }
                ApplyInput::MakeSnapshots(wanted) => {
                    for (p, index) in wanted {
                        if self.made.get(&p).is_some_and(|made| *made >= index) {
                            continue;
                        }
                        let at = self.wanted.entry(p).or_default();
                        *at = (*at).max(index);
                    }
                    self.make_snapshots();
                }
                ApplyInput::Released(partitions) => {
                    for p in partitions {
                        self.made.remove(&p);
                    }
                }
                ApplyInput::Leadership(changes) => self.leadership(&changes),
                ApplyInput::Drop(partitions) => {
                    for &p in &partitions {
                        self.finish(p);
                    }
                    self.drop_partitions(&partitions)
                }
                ApplyInput::Hold(partition) => {
                    self.finish(partition);
                    if let Err(e) = self.store.hold_partition(partition) {
                        tracing::error!(partition, error = %e, "cannot mark a partition as held");
                    }
                }
                ApplyInput::CompactNow(partition) => {
                    self.finish(partition);
                    self.compact_now(partition)
                }
                ApplyInput::Flushed(generation) => {
                    while self.flushing.front().is_some_and(|(g, _)| *g <= generation) {
                        self.flushing.pop_front();
                    }
                }
                ApplyInput::Stop => break,
            }
            let took = began.elapsed();
            if took >= SLOW_INPUT {
                // every partition's entries on this node wait meanwhile
                tracing::warn!(kind, ?took, "a slow apply input");
            }
            self.maybe_delete(false);
        }
        // what the snapshot threads are doing is finished, and the entries held for it applied
        let busy: Vec<PartitionId> = self.busy.keys().copied().collect();
        for p in busy {
            self.finish(p);
        }
        self.maybe_delete(true);
        for (_, (_, _, _, done)) in self.pending.drain() {
            done(Err(ChatError::unavailable("the node is stopping")));
        }
    }

    /// Applies a round's committed entries in one batch ([`Replica::apply_entries`]); then marks the
    /// partitions whose leader's first entry of its term is among them as caught up, and answers this
    /// node's proposals.
    fn apply(&mut self, committed: Vec<Committed>) {
        let committed = if self.busy.is_empty() {
            committed
        } else {
            let mut now = Vec::with_capacity(committed.len());
            for c in committed {
                match self.busy.get_mut(&c.partition) {
                    Some(s) => s.held.push(c),
                    None => now.push(c),
                }
            }
            now
        };
        let mut entries = Vec::with_capacity(committed.len());
        let mut ready = Vec::new();
        let mut mine = Vec::new();
        // each group's last entry here (its entries come in log order, a group's together)
        let mut reached: Vec<(PartitionId, u64)> = Vec::new();
        for c in committed {
            self.metrics
                .raft_partition
                .set_applied(c.partition, c.index);
            match reached.last_mut() {
                Some((p, at)) if *p == c.partition => *at = c.index,
                _ => reached.push((c.partition, c.index)),
            }
            self.last.insert(c.partition, (c.index, c.term));
            *self.tail_bytes.entry(c.partition).or_default() += c.data.len() as u64;
            if c.conf {
                // applied to the group by the driver; a snapshot from here on carries it
                continue;
            }
            if !c.data.is_empty() {
                self.unflushed.entry(c.partition).or_insert(c.index);
            }
            if c.partition == self.partitions && !c.data.is_empty() {
                self.apply_meta(c.index, &c.data);
                continue;
            }
            if c.data.is_empty() {
                // a leader's first entry of its term: once applied, everything committed before it is
                // (this node serves the partition if it is that leader; see `Replication::serving`)
                ready.push((c.partition, c.term));
                continue;
            }
            let proposal: Proposal = match serde_json::from_slice(&c.data) {
                Ok(p) => p,
                Err(e) => {
                    // every replica skips it alike: the data is the same everywhere
                    tracing::error!(partition = c.partition, index = c.index, error = %e, "skipping an entry that does not decode");
                    continue;
                }
            };
            let from_here = proposal.origin == self.me;
            if from_here {
                mine.push((entries.len(), proposal.id));
            }
            entries.push(Entry {
                partition: c.partition,
                index: c.index,
                command: proposal.command,
                events: if from_here {
                    proposal.events
                } else {
                    Vec::new()
                },
            });
        }
        let applied = match self.replica.apply_entries(entries) {
            Ok(applied) => applied,
            Err(e) => {
                // later entries must not be applied over missing ones
                tracing::error!(error = %e, "cannot apply committed entries: stopping the node");
                std::process::abort();
            }
        };
        if let Some(shared) = self.shared.upgrade() {
            for (partition, term) in ready {
                if let Some(r) = shared.ready.get(partition as usize) {
                    r.fetch_max(term, Ordering::AcqRel);
                }
            }
            for (partition, index) in reached {
                shared.set_applied(partition, index);
            }
        }
        for (at, id) in mine {
            if let Some(Applied::Conv(Err(e))) = applied.get(at) {
                tracing::warn!(error = %e, "an entry this node proposed was refused when applied");
            }
            if let Some((_, _, since, done)) = self.pending.remove(&id) {
                self.metrics
                    .raft_proposal_seconds
                    .observe(since.elapsed().as_secs_f64());
                done(Ok(()));
            }
        }
    }

    /// A membership command committed to the metadata group (skipped if the stored record reflects it).
    fn apply_meta(&mut self, index: u64, data: &[u8]) {
        if index <= self.meta_index {
            return;
        }
        let command: MemberCommand = match serde_json::from_slice(data) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(index, error = %e, "skipping a membership entry that does not decode");
                return;
            }
        };
        let Some(mut membership) = self.membership.clone() else {
            tracing::error!(index, "a membership entry before any record: skipped");
            return;
        };
        match membership.apply(&command, self.shape) {
            Ok(true) => {
                tracing::info!(epoch = membership.epoch, ?command, "membership changed");
                self.set_membership(index, membership);
            }
            Ok(false) => self.meta_index = index,
            Err(e) => {
                tracing::warn!(?command, error = %e, "membership command refused");
                self.meta_index = index;
            }
        }
    }

    /// Stores `membership` as the record at metadata index `index` and publishes it.
    fn set_membership(&mut self, index: u64, membership: Membership) {
        let stored = StoredMembership {
            index,
            membership: membership.clone(),
        };
        let bytes = match serde_json::to_vec(&stored) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode the membership record");
                return;
            }
        };
        if let Err(e) = self.store.set_membership(&bytes) {
            tracing::error!(error = %e, "cannot store the membership record: stopping the node");
            std::process::abort();
        }
        self.meta_index = index;
        self.membership = Some(membership.clone());
        self.metrics
            .membership_epoch
            .set(i64::try_from(membership.epoch).unwrap_or(i64::MAX));
        if let Some(shared) = self.shared.upgrade() {
            shared.set_membership(membership);
        }
    }

    /// Groups this node no longer keeps: their keys are deleted with the next batch (see
    /// [`Applier::maybe_delete`]); until then they are marked as held, so that a snapshot installed if
    /// the partition comes back replaces them.
    fn drop_partitions(&mut self, partitions: &[PartitionId]) {
        for &p in partitions {
            self.last.remove(&p);
            self.wanted.remove(&p);
            self.made.remove(&p);
            self.compacted.remove(&p);
            self.tail_bytes.remove(&p);
            if p == self.partitions {
                continue;
            }
            if let Err(e) = self.store.hold_partition(p) {
                tracing::error!(partition = p, error = %e, "cannot mark a dropped partition");
            }
            self.replica.forget(p, 0);
            self.doomed.insert(p);
        }
    }

    /// Deletes the keys of the partitions dropped since the last time, at most every [`DELETE_EVERY`] and
    /// once nothing moves (a rebalance drops many partitions, and their deletion's writes would compete
    /// with the moves' for the disk), or when stopping.
    /// One kept here again is spared: its keys are live.
    ///
    /// A step deletes at most [`DELETE_STEP`] keys, and the next one waits four times as long as the step
    /// took, so a deletion takes at most a fifth of the apply thread: deleting 64 dropped partitions
    /// (26,400 keys) at once held the apply thread, and every request of the node, for 0.7 to 1.4 s right
    /// after a rebalance settled, and steps one after the other held it almost as long.
    fn maybe_delete(&mut self, now: bool) {
        if self.doomed.is_empty() {
            return;
        }
        if !now {
            let due = match self.deleting {
                Some(next) => Instant::now() >= next,
                None => self.next_delete.elapsed() >= DELETE_EVERY,
            };
            if !due {
                return;
            }
        }
        let kept = self.shared.upgrade();
        // not while partitions move: the deletion's writes would compete with the moves' (and the Raft
        // log's fsyncs) for the disk; the keys wait as garbage until the layout has settled
        if !now && kept.as_ref().is_some_and(|s| s.layout().moving() > 0) {
            self.deleting = None;
            return;
        }
        let started = Instant::now();
        let mut keys = 0;
        while let Some(&p) = self.doomed.first() {
            if kept.as_ref().is_some_and(|s| s.keeps(p)) {
                self.doomed.remove(&p);
                continue;
            }
            match self
                .store
                .delete_partition_keys(p, self.partitions, DELETE_STEP)
            {
                Ok((deleted, gone)) => {
                    keys += deleted;
                    if gone {
                        self.doomed.remove(&p);
                        self.deleted.push(p);
                    }
                }
                Err(e) => {
                    tracing::error!(partition = p, error = %e, "cannot delete a dropped partition's keys (tried again later)");
                    self.deleting = None;
                    self.next_delete = Instant::now();
                    return;
                }
            }
            if !now && keys >= DELETE_STEP {
                break;
            }
        }
        let took = started.elapsed();
        self.deleting = Some(Instant::now() + (took * 4).max(Duration::from_millis(5)));
        if self.doomed.is_empty() {
            self.deleting = None;
            self.next_delete = Instant::now();
            let deleted = std::mem::take(&mut self.deleted);
            tracing::info!(partitions = ?deleted, last_step = ?started.elapsed(), "deleted the keys of partitions this node no longer keeps");
        }
    }

    /// Lets the driver drop the group's first entries (see [`ApplyInput::CompactNow`]), once the store
    /// has them durably: flushed first only if this node applied one of them with data since its last
    /// flush (the first entry of a log is its first leader's empty one, so a move rarely flushes: a
    /// flush for every moved partition held the apply thread, and the node's requests, for up to a few
    /// hundred ms each).
    fn compact_now(&mut self, partition: PartitionId) {
        let Some(&(index, _)) = self.last.get(&partition) else {
            return;
        };
        let to = self.compacted.get(&partition).copied().unwrap_or(0).max(2);
        let unflushed = std::iter::once(&self.unflushed)
            .chain(self.flushing.iter().map(|(_, asked)| asked))
            .filter_map(|u| u.get(&partition))
            .any(|first| *first < to);
        if unflushed {
            let started = Instant::now();
            if let Err(e) = self.store.flush_now() {
                tracing::error!(error = %e, "cannot flush the store before a compaction");
                return;
            }
            self.unflushed.clear();
            self.flushing.clear();
            tracing::debug!(partition, took = ?started.elapsed(), "flushed the store for a move");
        }
        if index + 1 >= to {
            self.compacted.insert(partition, to);
            if let Some(shared) = self.shared.upgrade() {
                let _ = lock(&shared.tx).send(Input::Compact(vec![(partition, to)]));
            }
        }
    }

    /// Installs a snapshot of `partition`'s data from its leader: its keys replaced, its applied index set
    /// to the snapshot's (the entries after it follow).
    ///
    /// A partition's keys are written on the snapshot installer thread, not here: installing tens of
    /// MiB takes a second or more, and on this thread it held every other partition's entries, and the
    /// node's answers, meanwhile (a joining node that already led some partitions stopped serving them
    /// while it installed the next). The entries committed to the partition wait until it is installed
    /// (see [`Busy`]); the other partitions are applied as they come.
    fn install(&mut self, partition: PartitionId, snapshot: raft::eraftpb::Snapshot) {
        let (index, term) = (snapshot.get_metadata().index, snapshot.get_metadata().term);
        let started = Instant::now();
        if partition == self.partitions {
            self.installed.push((partition, index));
            self.unpacked(partition, index);
            match serde_json::from_slice::<StoredMembership>(&snapshot.data) {
                Ok(stored) => {
                    // (installed again at start, it may be older than the record stored since)
                    if self.membership.is_none() || index.max(stored.index) > self.meta_index {
                        self.set_membership(index.max(stored.index), stored.membership);
                    }
                    self.last.insert(partition, (index, term));
                    self.compacted.insert(partition, index);
                }
                Err(e) => tracing::error!(error = %e, "a membership snapshot that does not decode"),
            }
            return;
        }
        let data = snapshot.data;
        let bytes = data.len();
        self.next_job += 1;
        let (done, done_rx) = mpsc::channel();
        let job = SnapshotJob {
            job: self.next_job,
            partition,
            install: Some(data),
            index,
            term,
            done,
        };
        if let Err(mpsc::SendError(job)) = self.queue(job) {
            // no installer thread: installed here
            run_job(
                &self.store,
                self.partitions,
                self.shared.upgrade().as_deref(),
                &job,
            );
            self.installed(partition, (index, term), bytes, started);
            self.unpacked(partition, index);
            return;
        }
        self.busy.insert(
            partition,
            Busy {
                job: self.next_job,
                work: Work::Install {
                    index,
                    term,
                    bytes,
                    started,
                },
                done: done_rx,
                held: Vec::new(),
            },
        );
    }

    /// An installation's keys are in: the partition's cached state goes, and its log starts after the
    /// snapshot. (`started` is when it was received: the time logged includes its wait for the installer
    /// thread.)
    fn installed(
        &mut self,
        partition: PartitionId,
        (index, term): (u64, u64),
        bytes: usize,
        started: Instant,
    ) {
        self.installed.push((partition, index));
        self.replica.forget(partition, index);
        self.last.insert(partition, (index, term));
        self.compacted.insert(partition, index);
        self.metrics.raft_snapshots_installed.inc();
        tracing::info!(partition, index, bytes, took = ?started.elapsed(), "installed a partition snapshot");
    }

    /// Tells the driver that `partition`'s snapshot at `index` is installed and the entries held for it
    /// applied ([`Input::Unpacked`]).
    fn unpacked(&self, partition: PartitionId, index: u64) {
        if let Some(shared) = self.shared.upgrade() {
            shared.set_applied(partition, index);
            let _ = lock(&shared.tx).send(Input::Unpacked { partition, index });
        }
    }

    /// Snapshots of the wanted partitions' data that this node has applied far enough (see
    /// [`ApplyInput::MakeSnapshots`]), at the last entry applied here, for the driver to offer (the
    /// partitions' keys; the metadata group's record as it is). One made before the index asked for
    /// would be refused by the follower, or be too old for the log that follows it.
    ///
    /// A partition's keys are read on the snapshot maker thread, not here: a large partition takes tens
    /// of ms to read, and a move makes a hundred such snapshots on each leader, each of which held every
    /// other partition's entries (and the node's answers) while this thread read it. Meanwhile the
    /// entries committed to that partition wait (see [`Snapshotting`]), so that the snapshot is its state
    /// at the index it names; the other partitions are applied as they come.
    fn make_snapshots(&mut self) {
        if self.wanted.is_empty() {
            return;
        }
        let last = &self.last;
        let meta = self.partitions;
        // one partition's keys at a time on the maker thread: a partition is held from when its job is
        // queued until it is made, so with a queue the last one waited for all the others (1.7 s in a
        // 1 GiB move); the next is queued when the maker reports
        let busy = &self.busy;
        let mut free = !busy.values().any(|b| matches!(b.work, Work::Make));
        let wanted: Vec<PartitionId> = self
            .wanted
            .iter()
            .filter(|(p, at)| last.get(p).is_some_and(|(index, _)| index >= at))
            .filter(|(p, _)| !busy.contains_key(p))
            .map(|(p, _)| *p)
            .filter(|p| *p == meta || std::mem::replace(&mut free, false))
            .collect();
        if wanted.is_empty() {
            return;
        }
        for p in &wanted {
            self.wanted.remove(p);
        }
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        for partition in wanted {
            let Some(&(index, term)) = self.last.get(&partition) else {
                continue;
            };
            if partition == self.partitions {
                let Some(membership) = self.membership.clone() else {
                    continue;
                };
                let stored = StoredMembership {
                    index: self.meta_index,
                    membership,
                };
                match serde_json::to_vec(&stored) {
                    Ok(data) => {
                        self.made.insert(partition, index);
                        let _ = lock(&shared.tx).send(Input::SnapshotReady {
                            partition,
                            index,
                            term,
                            data,
                        });
                    }
                    Err(e) => tracing::error!(error = %e, "cannot encode the membership snapshot"),
                }
                continue;
            }
            self.next_job += 1;
            let (done, done_rx) = mpsc::channel();
            let job = SnapshotJob {
                job: self.next_job,
                partition,
                install: None,
                index,
                term,
                done,
            };
            self.made.insert(partition, index);
            if let Err(mpsc::SendError(job)) = self.queue(job) {
                // no maker thread: read here
                run_job(&self.store, self.partitions, Some(&shared), &job);
                continue;
            }
            self.busy.insert(
                partition,
                Busy {
                    job: self.next_job,
                    work: Work::Make,
                    done: done_rx,
                    held: Vec::new(),
                },
            );
        }
    }

    /// Queues `job` for its snapshot thread, started at the first use: the installer's for a snapshot
    /// to install, the maker's otherwise (two threads: a leader's snapshots for its followers do not
    /// wait behind this node's installations). The job comes back if the thread could not start.
    fn queue(&mut self, job: SnapshotJob) -> Result<(), mpsc::SendError<SnapshotJob>> {
        let (slot, name) = match job.install {
            Some(_) => (&mut self.installer, "raft-snapshot-installer"),
            None => (&mut self.maker, "raft-snapshot-maker"),
        };
        if slot.is_none() {
            *slot = Some(spawn_worker(
                name,
                &self.store,
                self.partitions,
                &self.shared,
                &self.apply_tx,
                self.move_nice,
            ));
        }
        match slot {
            Some(tx) => tx.send(job),
            None => Err(mpsc::SendError(job)),
        }
    }

    /// Waits for the snapshot job on `partition`, if there is one (an installation is then finished), and
    /// applies the entries held for it meanwhile. Called before anything else touches the partition's
    /// keys (an installation, a drop) and when the snapshot thread reports.
    fn finish(&mut self, partition: PartitionId) {
        let Some(b) = self.busy.remove(&partition) else {
            return;
        };
        // an error only means the snapshot thread is gone: nothing touches the keys any more
        let _ = b.done.recv();
        let installed = match b.work {
            Work::Install {
                index,
                term,
                bytes,
                started,
            } => {
                self.installed(partition, (index, term), bytes, started);
                Some(index)
            }
            Work::Make => None,
        };
        if !b.held.is_empty() {
            self.apply(b.held);
        }
        if let Some(index) = installed {
            // only now: the entries held meanwhile (seconds of them, in a debug build under load) are
            // applied too, so a replica counted caught up can serve at once
            self.unpacked(partition, index);
        }
    }

    /// At most once per [`COMPACTION_CHECK`]: the partitions [`due_compactions`] picks (by entries, by
    /// bytes, and by the node's [`TAIL_BUDGET`]) are compacted, and the installations finished since are
    /// reported. The store is flushed first, by the compaction flusher thread while this one goes on
    /// (see `flusher.rs`): an entry leaves the log only once its effects are on disk.
    fn maybe_compact(&mut self) {
        let now = Instant::now();
        if now < self.next_compaction {
            return;
        }
        self.next_compaction = now + COMPACTION_CHECK;
        let tails = self.last.iter().map(|(p, (index, _))| Tail {
            partition: *p,
            applied: *index,
            compacted: self.compacted.get(p).copied().unwrap_or(0),
            bytes: self.tail_bytes.get(p).copied().unwrap_or(0),
            // (one being installed compacts once it is: the index here is its old one)
            busy: self.busy.contains_key(p),
        });
        let due = due_compactions(tails.collect(), self.compact_entries);
        if due.is_empty() && self.installed.is_empty() {
            return;
        }
        for (p, index) in &due {
            self.compacted.insert(*p, *index);
            self.tail_bytes.insert(*p, 0);
        }
        self.flush_generation += 1;
        let request = FlushRequest {
            generation: self.flush_generation,
            compact: due,
            installed: std::mem::take(&mut self.installed),
        };
        self.flushing
            .push_back((self.flush_generation, std::mem::take(&mut self.unflushed)));
        if self.flusher.is_none() {
            let (tx, rx) = mpsc::channel();
            let (store, shared, apply) = (
                self.store.clone(),
                self.shared.clone(),
                self.apply_tx.clone(),
            );
            match std::thread::Builder::new()
                .name("raft-flush".into())
                .spawn(move || flusher::run(rx, store, shared, apply))
            {
                Ok(_) => self.flusher = Some(tx),
                Err(e) => tracing::error!(error = %e, "cannot start the compaction flusher thread"),
            }
        }
        let request = match &self.flusher {
            Some(flusher) => match flusher.send(request) {
                Ok(()) => return,
                Err(mpsc::SendError(request)) => request,
            },
            None => request,
        };
        // (no flusher thread: the request is done here, as they all were before it)
        self.flusher = None;
        self.flush_here(request);
    }

    /// A flush request done on this thread (the flusher thread could not start, or is gone).
    fn flush_here(&mut self, request: FlushRequest) {
        if let Err(e) = self.store.flush_now() {
            tracing::error!(error = %e, "cannot flush the store before a compaction");
            return;
        }
        self.flushing.clear();
        flusher::report(&self.shared, request.installed, request.compact);
    }

    /// Proposals made under a leadership this node no longer has will not be answered by their entries.
    fn leadership(&mut self, changes: &[Leadership]) {
        for c in changes {
            let lost: Vec<u64> = self
                .pending
                .iter()
                .filter(|(_, (p, term, _, _))| *p == c.partition && (!c.local || *term != c.term))
                .map(|(id, _)| *id)
                .collect();
            for id in lost {
                if let Some((_, _, _, done)) = self.pending.remove(&id) {
                    done(Err(ChatError::unavailable(format!(
                        "partition {} changed leader; resend with the same cid",
                        c.partition
                    ))));
                }
            }
        }
    }
}

/// Starts a snapshot thread named `name` (see [`snapshot_worker`]) at CPU priority `nice` (see
/// `background.rs`) and returns its job queue.
fn spawn_worker(
    name: &str,
    store: &Store,
    partitions: u32,
    shared: &std::sync::Weak<Replication>,
    apply: &mpsc::Sender<ApplyInput>,
    nice: u8,
) -> mpsc::Sender<SnapshotJob> {
    let (tx, rx) = mpsc::channel();
    let (store, shared, apply) = (store.clone(), shared.clone(), apply.clone());
    if let Err(e) = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            background::lower_priority(nice);
            snapshot_worker(rx, store, partitions, shared, apply)
        })
    {
        // the jobs cannot be sent then (the receiver is gone), and the apply thread does each itself
        tracing::error!(error = %e, thread = name, "cannot start a snapshot thread");
    }
    tx
}

/// A snapshot thread (the maker's or the installer's): does each job on its partition's keys (the apply
/// thread holds the partition's entries meanwhile), then tells the apply thread. Ends when the apply
/// thread does.
fn snapshot_worker(
    jobs: mpsc::Receiver<SnapshotJob>,
    store: Store,
    partitions: u32,
    shared: std::sync::Weak<Replication>,
    apply: mpsc::Sender<ApplyInput>,
) {
    while let Ok(job) = jobs.recv() {
        run_job(&store, partitions, shared.upgrade().as_deref(), &job);
        let _ = job.done.send(());
        let _ = apply.send(ApplyInput::SnapshotDone {
            partition: job.partition,
            job: job.job,
        });
    }
}

/// Does a snapshot job: installs its snapshot, or makes one and hands it to the driver (if the node
/// still runs).
fn run_job(store: &Store, partitions: u32, shared: Option<&Replication>, job: &SnapshotJob) {
    match (&job.install, shared) {
        (Some(data), _) => {
            if let Err(e) = store.install_partition(job.partition, partitions, data, job.index) {
                tracing::error!(partition = job.partition, error = %e, "cannot install a snapshot: stopping the node");
                std::process::abort();
            }
        }
        (None, Some(shared)) => make_snapshot(store, partitions, shared, job),
        (None, None) => {}
    }
}

/// Reads a job's partition from the store and hands the snapshot to the driver.
fn make_snapshot(store: &Store, partitions: u32, shared: &Replication, job: &SnapshotJob) {
    let started = Instant::now();
    match store.partition_snapshot(job.partition, partitions) {
        Ok(data) => {
            tracing::debug!(partition = job.partition, bytes = data.len(), took = ?started.elapsed(), "made a partition snapshot");
            let _ = lock(&shared.tx).send(Input::SnapshotReady {
                partition: job.partition,
                index: job.index,
                term: job.term,
                data,
            });
        }
        Err(e) => tracing::error!(partition = job.partition, error = %e, "cannot make a snapshot"),
    }
}

/// One partition's applied log tail, as a compaction check sees it.
#[derive(Debug, Clone, Copy)]
struct Tail {
    partition: PartitionId,
    /// The last entry applied.
    applied: u64,
    /// Where the log was last compacted from here.
    compacted: u64,
    /// Bytes of entries applied since then.
    bytes: u64,
    /// Being installed: not compacted now.
    busy: bool,
}

/// The partitions a compaction check compacts, and up to which index:
/// - by count: past `compact_entries` applied entries, keeping the last half (a follower a little
///   behind catches up from the log, not a snapshot);
/// - by bytes: past [`COMPACT_BYTES`] since the last compaction, keeping [`KEEP_LARGE`] (large messages:
///   a tail of thousands would be hundreds of MiB held, copied and rewritten by the driver);
/// - by the node's budget: while all the tails together hold more than [`TAIL_BUDGET`], the largest are
///   compacted to [`KEEP_LARGE`] entries until the others hold at most half of it.
fn due_compactions(mut tails: Vec<Tail>, compact_entries: u64) -> Vec<(PartitionId, u64)> {
    let mut due = Vec::new();
    let mut held: u64 = 0;
    tails.retain(|t| {
        let entries = t.applied.saturating_sub(t.compacted);
        let rule = if t.busy {
            None
        } else if entries >= compact_entries {
            Some(t.applied.saturating_sub(compact_entries / 2))
        } else if t.bytes >= COMPACT_BYTES && entries > KEEP_LARGE {
            Some(t.applied.saturating_sub(KEEP_LARGE))
        } else {
            None
        };
        match rule {
            Some(index) => {
                due.push((t.partition, index));
                false
            }
            None => {
                held = held.saturating_add(t.bytes);
                true
            }
        }
    });
    if held > TAIL_BUDGET {
        tails.retain(|t| !t.busy && t.applied.saturating_sub(t.compacted) > KEEP_LARGE);
        tails.sort_unstable_by_key(|t| std::cmp::Reverse(t.bytes));
        for t in tails {
            if held <= TAIL_BUDGET / 2 {
                break;
            }
            due.push((t.partition, t.applied.saturating_sub(KEEP_LARGE)));
            held = held.saturating_sub(t.bytes);
        }
    }
    due
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tail(partition: PartitionId, applied: u64, bytes: u64) -> Tail {
        Tail {
            partition,
            applied,
            compacted: 0,
            bytes,
            busy: false,
        }
    }

    #[test]
    fn one_partition_is_compacted_by_its_count_or_its_bytes() {
        let mut due = due_compactions(
            vec![
                tail(1, 5_000, 1 << 20),
                tail(2, 100, COMPACT_BYTES),
                tail(3, KEEP_LARGE, COMPACT_BYTES),
                tail(4, 4_999, 1 << 20),
            ],
            5_000,
        );
        due.sort_unstable();
        assert_eq!(due, vec![(1, 2_500), (2, 100 - KEEP_LARGE)]);
    }

    #[test]
    fn tails_over_the_node_budget_are_compacted_largest_first_down_to_half_of_it() {
        // 1 GiB over 256 partitions, each under its own limits: 4 MiB and 512 entries apiece
        let mut tails: Vec<Tail> = (0..256)
            .map(|p| tail(p, 512, (4 << 20) - u64::from(p)))
            .collect();
        tails[0].busy = true;
        tails[1].applied = KEEP_LARGE;
        let due = due_compactions(tails, 5_000);
        let kept: u64 = (0..256u32)
            .filter(|p| !due.iter().any(|(d, _)| d == p))
            .map(|p| (4 << 20) - u64::from(p))
            .sum();
        assert!(kept <= TAIL_BUDGET / 2, "{kept} bytes kept in the tails");
        assert!(due.iter().all(|(_, index)| *index == 512 - KEEP_LARGE));
        let partitions: Vec<PartitionId> = due.iter().map(|(p, _)| *p).collect();
        assert!(
            !partitions.contains(&0),
            "a partition being installed waits"
        );
        assert!(
            !partitions.contains(&1),
            "nothing to drop past the kept entries"
        );
        assert_eq!(partitions[0], 2, "the largest first");
        assert!(partitions.windows(2).all(|w| w[0] < w[1]), "largest first");
        // the smallest tails stay: those that fit in half the budget
        assert!(!partitions.contains(&255));
    }

    #[test]
    fn tails_within_the_budget_are_left_alone() {
        let tails: Vec<Tail> = (0..256).map(|p| tail(p, 512, 100 << 10)).collect();
        assert!(due_compactions(tails, 5_000).is_empty());
    }
}
