//! [`Replication`]: this node's replicas of the partitions (and of the metadata group that holds the
//! membership record), one Raft group each, driven by one thread (`driver.rs`) and applied by another
//! (`apply.rs`); replicas move where the membership wants them (`moves.rs`).
//!
//! The thread owns the [`MultiRaft`]. It ticks every group on one timer (`election_timeout_ms / 20`), steps
//! what peers sent, and after each round polls: every group's new entries and hard state are encoded for
//! the node's Raft log, which the log writer and sync threads write and sync once for the round, and
//! each other node gets all of its groups' messages (heartbeats, appends, votes) as one `Raft` peer frame
//! on this node's link to it, so a tick costs one frame per node pair however many groups there are.
//! Raft's disk work happens on those two threads, never on the driver's or an actor's.
//!
//! What leads where is published to a table that the router, `/v1/nodes`, `/v1/admin/cluster` and the
//! metrics read. On SIGTERM the node hands every partition it leads to its most caught-up live replica
//! before it closes its clients ([`Replication::hand_over`]).
//!
//! A failed write or sync of the Raft log aborts the process: after it, the node could vote or acknowledge
//! without the durable record Raft's safety rests on (TiKV makes the same choice).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

mod apply;
mod background;
mod behind;
mod driver;
mod flusher;
mod moves;
mod unpacking;
mod wire;

use apply::Applier;
pub use apply::StoredMembership;
use driver::Driver;

use super::membership::{MemberCommand, Membership, Shape};
use super::peer::Peer;
use super::placement::{Layout, PartitionId};
use crate::config::Config;
use crate::error::{ChatError, ChatResult};
use crate::ids::NodeId;
use crate::metrics::Metrics;
use crate::raft::log::{KeptSnapshot, LogError};
use crate::raft::multi::{raft_id, Committed, Leadership, MultiRaft, ELECTION_TICKS};
use crate::state::replica::{CarriedEvent, Command, Proposal};
use crate::store::Store;

/// A partition goes back to its preferred replica only after being led elsewhere for this many election
/// timeouts, and at most this many move per election timeout.
const BALANCE_AFTER_ELECTIONS: u32 = 3;
const BALANCE_AT_ONCE: usize = 16;

/// Before a hand-over: how long to wait at most for this node's proposals in flight to be applied, how
/// often to look, and for how many looks in a row none may be in flight (an actor may still be handling a
/// request that was routed here just before).
const DRAIN_PROPOSALS: Duration = Duration::from_secs(2);
const DRAIN_POLL: Duration = Duration::from_millis(10);
const DRAIN_QUIET_ROUNDS: u32 = 3;

/// What the driver thread is asked to do.
enum Input {
    /// A peer's `Raft` or `RaftBytes` frame: its groups' messages to this node's, still encoded.
    Step {
        from: NodeId,
        batch: wire::Received,
        /// Groups the sender (their leader) removed this node from, with the configuration's index.
        gone: Vec<(PartitionId, u64)>,
    },
    /// A peer's snapshot batch (from `RaftPart` pieces), decoded by the receiving thread, each
    /// snapshot's data kept in a file already (see [`driver::keep_snapshots`]).
    StepKept(Vec<(PartitionId, raft::eraftpb::Message, Option<KeptSnapshot>)>),
    /// An encoded [`MemberCommand`] for the metadata group: proposed if this node leads it, else sent to
    /// its leader (once: a forwarded command that finds no leader is dropped; the caller retries).
    ProposeMeta {
        data: Vec<u8>,
        forwarded: bool,
    },
    /// Hand every led partition to another replica; answered with how many are still led here when done.
    HandOver {
        done: mpsc::Sender<usize>,
    },
    /// A snapshot of `partition`'s data made by the apply thread at `index` (of `term`).
    SnapshotReady {
        partition: PartitionId,
        index: u64,
        term: u64,
        data: Vec<u8>,
    },
    /// The store has durably applied these partitions up to these indexes: their logs may drop what is
    /// before.
    Compact(Vec<(PartitionId, u64)>),
    /// The store has durably installed these partitions' snapshots (at these indexes): their logs let
    /// the data go (see [`MultiRaft::installs`]).
    Installed(Vec<(PartitionId, u64)>),
    /// The apply thread has installed `partition`'s snapshot at `index` (in the store, maybe not
    /// flushed yet) and applied the entries held for it meanwhile: the node now holds what it
    /// acknowledges (see [`unpacking`]).
    Unpacked {
        partition: PartitionId,
        index: u64,
    },
    /// An encoded [`Proposal`] for `partition`'s log; `done` is called once it is applied here, or with
    /// `unavailable` if it cannot be (this node does not lead the partition, or lost it first).
    Propose {
        partition: PartitionId,
        id: u64,
        data: Vec<u8>,
        done: ProposalDone,
    },
    /// The snapshot thread could not queue a snapshot for `to` (its link is down).
    SnapshotLost {
        partition: PartitionId,
        to: u64,
    },
    /// Rounds the sync thread made durable, in the order they were written.
    Synced(Vec<crate::raft::multi::Unsynced>),
    /// The node is leaving (after a hand-over): it keeps following (it learns the new leaders, to which it
    /// forwards what still reaches it, and stays up to date) but never leads again: no ticks (so no
    /// campaign) and no leadership transfer to it.
    Retire,
    Stop,
}

/// Called once a proposal is applied on the node that made it (`Ok`), or when it will not be (`unavailable`:
/// the entry may still commit under the next leader, which is why clients resend with the same `cid`).
pub type ProposalDone = Box<dyn FnOnce(ChatResult<()>) + Send>;

/// What the apply thread is given, in the order the driver produced it.
enum ApplyInput {
    /// A proposal accepted into the leader's log at `term`: its `done` waits for the entry.
    Track {
        partition: PartitionId,
        id: u64,
        term: u64,
        done: ProposalDone,
    },
    /// Snapshots of partitions' data from their leaders: installed before the entries that follow them.
    Install(Vec<(PartitionId, raft::eraftpb::Snapshot)>),
    /// Make snapshots of these partitions' data for the driver (followers need compacted entries), each
    /// once this node has applied its log up to the index given (see `MultiRaft::wanted_snapshots`).
    MakeSnapshots(Vec<(PartitionId, u64)>),
    /// The driver let go of the snapshots made of these partitions (see `MultiRaft::release_snapshots`):
    /// one wanted again is made again, even at an index already made.
    Released(Vec<PartitionId>),
    /// A snapshot thread has done job `job` on `partition` (made a snapshot, see
    /// `Applier::make_snapshots`, or installed one, see `Applier::install`): the entries held for it
    /// meanwhile are applied.
    SnapshotDone {
        partition: PartitionId,
        job: u64,
    },
    Committed(Vec<Committed>),
    /// Groups whose leader or term changed: what was proposed here under another term or leadership will
    /// not be answered by its entry.
    Leadership(Vec<Leadership>),
    /// Groups this node no longer keeps: their keys are deleted from the store (in batches, soon after).
    Drop(Vec<PartitionId>),
    /// A group led here with one replica is about to get more: its keys (written directly) are marked as
    /// held, so that a snapshot installed here later replaces them.
    Hold(PartitionId),
    /// Flush the store and let the driver compact this group's log from its second entry on: a replica
    /// about to be added then starts from a snapshot (which carries the group's configuration).
    CompactNow(PartitionId),
    /// The compaction flusher has flushed the store for every request up to this generation (see
    /// `flusher.rs`).
    Flushed(u64),
    Stop,
}

impl ApplyInput {
    /// The input's name, for the apply thread's slow-input warning.
    fn kind(&self) -> &'static str {
        match self {
            ApplyInput::Track { .. } => "track",
            ApplyInput::Install(_) => "install",
            ApplyInput::MakeSnapshots(_) => "make snapshots",
            ApplyInput::Released(_) => "released",
            ApplyInput::SnapshotDone { .. } => "snapshot done",
            ApplyInput::Committed(_) => "committed",
            ApplyInput::Leadership(_) => "leadership",
            ApplyInput::Drop(_) => "drop",
            ApplyInput::Hold(_) => "hold",
            ApplyInput::CompactNow(_) => "compact now",
            ApplyInput::Flushed(_) => "flushed",
            ApplyInput::Stop => "stop",
        }
    }
}

/// Where a key's requests go, as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Serving {
    /// This node leads the key's partition and has applied everything committed before its term.
    Here,
    /// Another node leads it (or is its preferred replica, for a partition not replicated here).
    At(NodeId),
    /// No leader is known, or this node leads but has not caught up yet: ask again shortly.
    Nobody,
}

/// A group's leadership as the driver last reported it: the leader's Raft id (0: none) and the term.
#[derive(Debug, Clone, Copy, Default)]
struct Seen {
    leader: u64,
    term: u64,
}

/// A partition's leadership as this node sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionView {
    pub leader: Option<NodeId>,
    pub term: u64,
}

/// This node's Raft groups. Cheap to share (`Arc`); the thread stops on [`Replication::stop`].
///
/// Per-group tables (`view`, `ready`, `moving`, `kept`, `wide`, ...) have one slot per partition and one
/// more for the metadata group ([`Layout::meta`]).
pub struct Replication {
    /// The membership record and the layouts it gives; replaced whenever the record changes.
    layout: RwLock<Arc<Layout>>,
    /// Every partition's leadership as seen here (`None`/0 for partitions not replicated here).
    view: RwLock<Vec<Seen>>,
    tx: Mutex<mpsc::Sender<Input>>,
    /// To the receiving thread ([`driver::keep_snapshots`]): peers' snapshot batches.
    snapshots_in: Mutex<mpsc::Sender<(NodeId, wire::Received)>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// This node's links to the other members, by Raft id (kept in step with the membership by the
    /// router).
    peers: RwLock<HashMap<u64, Arc<Peer>>>,
    led: AtomicUsize,
    /// This node.
    node: NodeId,
    me: u64,
    next_proposal: AtomicU64,
    /// Per partition: the term whose first entry this node has applied as its leader (0: none). A leader
    /// serves only at this term: everything committed before it is applied then.
    ready: Vec<AtomicU64>,
    /// Per partition: the last index the apply thread has applied (an entry, or a snapshot's point), to
    /// tell whether this replica could serve at once if it led (see [`behind`]).
    applied: Vec<AtomicU64>,
    apply_tx: Mutex<mpsc::Sender<ApplyInput>>,
    apply_thread: Mutex<Option<JoinHandle<()>>>,
    /// Told which partitions changed leader (from the driver thread; see [`Replication::on_change`]).
    on_change: Mutex<Option<ChangeHook>>,
    /// Set when the node starts handing its leaderships over: it serves nothing new from then on.
    draining: AtomicBool,
    /// This node's proposals not yet answered, in all and per partition.
    in_flight: Arc<AtomicUsize>,
    in_flight_by: Arc<Vec<AtomicUsize>>,
    /// Per partition: its leadership is being moved to another replica, or it is about to get more
    /// replicas than this one (not served here meanwhile).
    moving: Vec<AtomicBool>,
    /// Per partition: this node keeps a replica.
    kept: Vec<AtomicBool>,
    /// Per partition: the group has more than one replica (its changes then go through its log).
    wide: Vec<AtomicBool>,
    /// Told when the membership record changes (from the apply thread; see [`Replication::on_membership`]).
    on_membership: Mutex<Option<MembershipHook>>,
}

type ChangeHook = Box<dyn Fn(Event<'_>) + Send + Sync>;

/// What the router is told about this node's groups (from the driver thread; see
/// [`Replication::on_change`]).
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    /// These groups' leader (as this node sees it) changed.
    Leaders(&'a [PartitionId]),
    /// These groups, led here with one replica, are about to get more: their actors (which wrote the
    /// store directly) are to be retired.
    Widened(&'a [PartitionId]),
}
type MembershipHook = Box<dyn Fn(&Arc<Layout>) + Send + Sync>;

fn flags(n: usize) -> Vec<AtomicBool> {
    (0..n).map(|_| AtomicBool::new(false)).collect()
}

#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    #[error("cannot open the raft log in {path}: {source}")]
    Log { path: String, source: LogError },
    #[error("cannot start the raft driver: {0}")]
    Thread(std::io::Error),
    #[error("cannot read the replicas' applied positions: {0}")]
    Store(#[from] crate::store::StoreError),
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Drop for Replication {
    /// Stops the threads of a replication that was not stopped (they hold only a weak reference to it).
    fn drop(&mut self) {
        let _ = lock(&self.tx).send(Input::Stop);
        let _ = lock(&self.apply_tx).send(ApplyInput::Stop);
    }
}

impl Replication {
    /// Opens (or creates) the Raft log in `dir` and starts the driver and apply threads.
    ///
    /// `membership` is the record this node starts from: the stored one, the config's first members, or
    /// none (a node that joins an existing cluster). `first` says the record is the config's and nothing
    /// is stored yet: the groups the layout gives this node are then created from it if the log does not
    /// know them (a new cluster, or the metadata group of a cluster made before it existed); otherwise the
    /// log alone says which groups this node keeps, and leaders add the others.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        config: &Config,
        node: &NodeId,
        membership: Option<Membership>,
        first: bool,
        dir: &std::path::Path,
        store: Store,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Replication>, ReplicationError> {
        let shape = Shape::of(config);
        let layout = Layout::of(shape, membership);
        let groups: Vec<(PartitionId, Vec<u64>)> = if first {
            layout
                .partitions_of(node)
                .map(|p| (p, layout.replicas(p).iter().map(raft_id).collect()))
                .collect()
        } else {
            Vec::new()
        };
        let preferred: HashMap<PartitionId, u64> = groups
            .iter()
            .filter_map(|(p, voters)| Some((*p, *voters.first()?)))
            .collect();
        std::fs::create_dir_all(dir).map_err(|e| ReplicationError::Log {
            path: dir.display().to_string(),
            source: LogError::Io {
                path: dir.to_path_buf(),
                source: e,
            },
        })?;
        let fsync = config.store.durability == crate::config::Durability::Sync;
        let mut raft = MultiRaft::open(dir, fsync, raft_id(node), groups, &crate::raft::logger())
            .map_err(|source| ReplicationError::Log {
            path: dir.display().to_string(),
            source,
        })?;
        let kept_partitions = raft.partitions().filter(|p| *p != shape.partitions).count();
        metrics
            .raft_partitions
            .set(i64::try_from(kept_partitions).unwrap_or(i64::MAX));
        // the preferred replica of each partition stands at once (a single node leads everything before
        // its first request; a starting cluster need not wait an election timeout)
        let me = raft_id(node);
        for (p, first) in &preferred {
            if *first == me {
                raft.campaign(*p);
            }
        }
        let election = config.cluster.election_timeout();
        let ticks = u32::try_from(2 * ELECTION_TICKS).unwrap_or(u32::MAX);
        let tick = (election / ticks).max(Duration::from_millis(1));
        let (tx, rx) = mpsc::channel();
        // the sync and snapshot threads answer on the driver's channel, which then no longer closes by itself: dropping
        // `Replication` stops the driver instead (see its `Drop`)
        let synced = tx.clone();
        let lost = tx.clone();
        let kept_in = tx.clone();
        let (snapshots_in, snapshots_in_rx) = mpsc::channel();
        let (apply_tx, apply_rx) = mpsc::channel();
        // one slot per partition and one for the metadata group
        let slots = shape.partitions as usize + 1;
        let kept = flags(slots);
        let wide = flags(slots);
        for p in raft.partitions() {
            if let Some(k) = kept.get(p as usize) {
                k.store(true, Ordering::Relaxed);
            }
            let many = raft
                .replicas(p)
                .is_some_and(|r| r.voters.len() + r.outgoing.len() + r.learners.len() > 1);
            if let Some(w) = wide.get(p as usize) {
                w.store(many, Ordering::Relaxed);
            }
        }
        let membership = layout.membership().cloned();
        let replication = Arc::new(Replication {
            layout: RwLock::new(Arc::new(layout)),
            view: RwLock::new(vec![Seen::default(); slots]),
            tx: Mutex::new(tx),
            snapshots_in: Mutex::new(snapshots_in),
            thread: Mutex::new(None),
            peers: RwLock::new(HashMap::new()),
            led: AtomicUsize::new(0),
            node: node.clone(),
            me,
            next_proposal: AtomicU64::new(1),
            ready: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            applied: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            apply_tx: Mutex::new(apply_tx.clone()),
            apply_thread: Mutex::new(None),
            on_change: Mutex::new(None),
            draining: AtomicBool::new(false),
            in_flight: Arc::new(AtomicUsize::new(0)),
            in_flight_by: Arc::new((0..slots).map(|_| AtomicUsize::new(0)).collect()),
            moving: flags(slots),
            kept,
            wide,
            on_membership: Mutex::new(None),
        });
        let applier = Applier::new(
            config,
            store,
            membership,
            me,
            apply_rx,
            apply_tx.clone(),
            Arc::downgrade(&replication),
            metrics.clone(),
        )?;
        // snapshots received before a crash and perhaps not installed durably: installed again first
        // (the groups' logs start after them; see `RaftLog`'s module docs)
        let unfinished = raft.installs();
        let reinstalling: Vec<(PartitionId, raft::eraftpb::SnapshotMetadata)> = unfinished
            .iter()
            .map(|(p, snapshot)| (*p, snapshot.get_metadata().clone()))
            .collect();
        if !unfinished.is_empty() {
            tracing::warn!(
                partitions = ?unfinished.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
                "installing again the snapshots received before the node stopped"
            );
            let _ = apply_tx.send(ApplyInput::Install(unfinished));
        }
        let apply_thread = std::thread::Builder::new()
            .name("raft-apply".into())
            .spawn(move || applier.run())
            .map_err(ReplicationError::Thread)?;
        *lock(&replication.apply_thread) = Some(apply_thread);
        // the driver's rounds go to the log writer thread, then to the sync thread, then back
        let (to_disk, write_rx) = mpsc::channel();
        let (written_tx, written_rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("raft-write".into())
            .spawn(move || driver::write_rounds(write_rx, written_tx))
            .map_err(ReplicationError::Thread)?;
        std::thread::Builder::new()
            .name("raft-sync".into())
            .spawn(move || driver::sync_rounds(written_rx, synced))
            .map_err(ReplicationError::Thread)?;
        let (snapshots_tx, snapshots_rx) = mpsc::channel();
        let pace = driver::Pace::new(config.cluster.move_mib_per_s.saturating_mul(1 << 20));
        let nice = config.cluster.move_nice;
        std::thread::Builder::new()
            .name("raft-snapshots".into())
            .spawn(move || {
                background::lower_priority(nice);
                driver::send_snapshots(snapshots_rx, lost, pace)
            })
            .map_err(ReplicationError::Thread)?;
        let keep_dir = dir.to_path_buf();
        std::thread::Builder::new()
            .name("raft-snaps-in".into())
            .spawn(move || {
                background::lower_priority(nice);
                driver::keep_snapshots(snapshots_in_rx, kept_in, &keep_dir, fsync)
            })
            .map_err(ReplicationError::Thread)?;
        let mut driver = Driver::new(
            raft,
            rx,
            tick,
            election,
            config.cluster.max_moving_partitions.max(1),
            config.cluster.sync_window(),
            metrics,
            Arc::downgrade(&replication),
            apply_tx,
            to_disk,
            snapshots_tx,
        );
        let me = driver.raft.id();
        for (p, meta) in &reinstalling {
            driver.unpacking.started(*p, meta, me);
            driver.behind.handed(*p, meta.index);
        }
        let thread = std::thread::Builder::new()
            .name("raft".into())
            .spawn(move || driver.run())
            .map_err(ReplicationError::Thread)?;
        *lock(&replication.thread) = Some(thread);
        Ok(replication)
    }

    /// The membership record and the layouts it gives, as this node last applied it.
    pub fn layout(&self) -> Arc<Layout> {
        self.layout
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Applies a new membership record (from the apply thread): the layouts change, the membership hook
    /// runs (the router adds and drops peer links).
    fn set_membership(&self, membership: Membership) {
        let layout = Arc::new(Layout::of(self.layout().shape(), Some(membership)));
        *self
            .layout
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = layout.clone();
        if let Some(hook) = lock(&self.on_membership).as_ref() {
            hook(&layout);
        }
    }

    /// Calls `hook` with the new layout whenever the membership record changes (from the apply thread),
    /// and once now with the current one if there is a record: the apply thread starts before the hook
    /// can be set, and a record it sets first (a node restarted with a membership snapshot to install
    /// again) is not missed. Dropped by [`Replication::stop`].
    pub fn on_membership(&self, hook: impl Fn(&Arc<Layout>) + Send + Sync + 'static) {
        // under the hook's lock: a record set meanwhile waits for it, then calls the hook itself
        let mut slot = lock(&self.on_membership);
        let layout = self.layout();
        if layout.membership().is_some() {
            hook(&layout);
        }
        *slot = Some(Box::new(hook));
    }

    /// The links the Raft traffic goes over: the router's peers, by Raft id.
    pub fn set_peers(&self, peers: &[Arc<Peer>]) {
        let map = peers.iter().map(|p| (raft_id(&p.id), p.clone())).collect();
        *self
            .peers
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = map;
    }

    fn peer(&self, id: u64) -> Option<Arc<Peer>> {
        self.peers
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&id)
            .cloned()
    }

    /// The partitions this node leads (the metadata group not counted).
    pub fn led_partitions(&self) -> Vec<PartitionId> {
        let meta = self.layout().meta();
        self.partitions()
            .iter()
            .enumerate()
            .filter(|(_, v)| v.leader.as_ref() == Some(&self.node))
            .filter_map(|(p, _)| PartitionId::try_from(p).ok())
            .filter(|p| *p != meta)
            .collect()
    }

    /// Whether this node keeps a replica of `p`.
    pub fn keeps(&self, p: PartitionId) -> bool {
        self.kept
            .get(p as usize)
            .is_some_and(|k| k.load(Ordering::Acquire))
    }

    /// Proposes a change of the membership to the metadata group (through its leader); what it did shows
    /// in the record ([`Replication::layout`]) once committed and applied here.
    pub fn propose_meta(&self, command: &MemberCommand) {
        match serde_json::to_vec(command) {
            Ok(data) => self.meta_input(data, false),
            Err(e) => tracing::error!(error = %e, "cannot encode a membership command"),
        }
    }

    /// A membership command another node forwarded to this one (it saw this node lead the metadata group).
    pub fn receive_meta(&self, data: Vec<u8>) {
        self.meta_input(data, true);
    }

    fn meta_input(&self, data: Vec<u8>, forwarded: bool) {
        let _ = lock(&self.tx).send(Input::ProposeMeta { data, forwarded });
    }

    /// Partition `p`'s leadership as this node sees it.
    pub fn partition(&self, p: PartitionId) -> PartitionView {
        let seen = self
            .view
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(p as usize)
            .copied()
            .unwrap_or_default();
        self.resolve(seen, &self.layout())
    }

    /// Every partition's leadership as this node sees it.
    pub fn partitions(&self) -> Vec<PartitionView> {
        let layout = self.layout();
        let seen = self
            .view
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        seen.into_iter().map(|s| self.resolve(s, &layout)).collect()
    }

    /// Names a leader by the membership record in force now (a node that joins learns the record after
    /// its first leaders: they are named once it does).
    fn resolve(&self, seen: Seen, layout: &Layout) -> PartitionView {
        let leader = match seen.leader {
            0 => None,
            id if id == self.me => Some(self.node.clone()),
            id => layout.node(id).cloned(),
        };
        PartitionView {
            leader,
            term: seen.term,
        }
    }

    /// The leader of `key`'s partition, if known here.
    pub fn leader_of(&self, key: &str) -> Option<NodeId> {
        self.partition(self.layout().partition(key)).leader
    }

    /// Where `key`'s actor runs: on its partition's leader, once that leader has applied everything
    /// committed before its term. A node that does not replicate the partition sends to the first of its
    /// replicas that `is_up` (the preferred one while it lives), which forwards to the leader.
    pub fn serving(&self, key: &str, is_up: impl Fn(&NodeId) -> bool) -> Serving {
        let layout = self.layout();
        let p = layout.partition(key);
        if !self.keeps(p) {
            return layout
                .replicas(p)
                .iter()
                .find(|n| **n != self.node && is_up(n))
                .map_or(Serving::Nobody, |n| Serving::At(n.clone()));
        }
        let view = self.partition(p);
        match view.leader {
            Some(leader) if leader == self.node => {
                let moving = self
                    .moving
                    .get(p as usize)
                    .is_some_and(|m| m.load(Ordering::Acquire));
                if moving || self.draining.load(Ordering::Acquire) {
                    return Serving::Nobody;
                }
                let ready = self
                    .ready
                    .get(p as usize)
                    .is_some_and(|r| r.load(Ordering::Acquire) == view.term);
                if ready {
                    Serving::Here
                } else {
                    Serving::Nobody
                }
            }
            Some(leader) => Serving::At(leader),
            None => Serving::Nobody,
        }
    }

    /// Whether `key`'s partition has more than one replica: its changes then go through its Raft log
    /// ([`Replication::propose`]); a single replica writes its store directly, as an unreplicated node.
    pub fn replicated(&self, key: &str) -> bool {
        let p = self.layout().partition(key);
        self.wide
            .get(p as usize)
            .is_some_and(|w| w.load(Ordering::Acquire))
    }

    /// Proposes `command` (with the webhook `events` its leader decided) to its partition's log; `done` is
    /// called once the entry is applied on this node (after its commit on a majority), or with
    /// `unavailable` when it will not be answered here.
    pub fn propose(
        &self,
        command: Command,
        events: Vec<CarriedEvent>,
        done: impl FnOnce(ChatResult<()>) + Send + 'static,
    ) {
        let partition = self.layout().partition(command.key());
        let id = self.next_proposal.fetch_add(1, Ordering::Relaxed);
        let proposal = Proposal {
            origin: self.me,
            id,
            command,
            events,
        };
        let data = match serde_json::to_vec(&proposal) {
            Ok(data) => data,
            Err(e) => return done(Err(ChatError::internal(format!("cannot encode: {e}")))),
        };
        let in_flight = Arc::clone(&self.in_flight);
        let in_flight_by = Arc::clone(&self.in_flight_by);
        in_flight.fetch_add(1, Ordering::AcqRel);
        if let Some(n) = in_flight_by.get(partition as usize) {
            n.fetch_add(1, Ordering::AcqRel);
        }
        let input = Input::Propose {
            partition,
            id,
            data,
            done: Box::new(move |result| {
                in_flight.fetch_sub(1, Ordering::AcqRel);
                if let Some(n) = in_flight_by.get(partition as usize) {
                    n.fetch_sub(1, Ordering::AcqRel);
                }
                done(result);
            }),
        };
        if let Err(mpsc::SendError(Input::Propose { done, .. })) = lock(&self.tx).send(input) {
            done(Err(ChatError::unavailable("the node is stopping")));
        }
    }

    /// Calls `hook` with what changed in this node's groups ([`Event`]), from the driver
    /// thread: it must not block. Dropped by [`Replication::stop`] (it holds the router, which holds this).
    pub fn on_change(&self, hook: impl Fn(Event<'_>) + Send + Sync + 'static) {
        *lock(&self.on_change) = Some(Box::new(hook));
    }

    fn emit(&self, event: Event<'_>) {
        if let Some(hook) = lock(&self.on_change).as_ref() {
            hook(event);
        }
    }

    /// The apply thread has applied `p` up to `index` (see [`Replication::applied`]).
    fn set_applied(&self, p: PartitionId, index: u64) {
        if let Some(a) = self.applied.get(p as usize) {
            a.fetch_max(index, Ordering::AcqRel);
        }
    }

    /// The last index of `p` the apply thread has applied in this process (0: none yet).
    fn applied(&self, p: PartitionId) -> u64 {
        self.applied
            .get(p as usize)
            .map_or(0, |a| a.load(Ordering::Acquire))
    }

    /// Whether this node leads `p` and has applied everything committed before its term.
    fn is_ready(&self, p: PartitionId) -> bool {
        let view = self.partition(p);
        view.leader.as_ref() == Some(&self.node)
            && self
                .ready
                .get(p as usize)
                .is_some_and(|r| r.load(Ordering::Acquire) == view.term)
    }

    /// A `Raft` frame from `from`: its groups' messages, decoded and stepped on the driver thread (not on
    /// the peer link's task). A frame that does not decode is dropped and logged (raft resends what
    /// matters).
    pub fn receive(&self, from: &NodeId, batch: String, gone: Vec<(PartitionId, u64)>) {
        let _ = lock(&self.tx).send(Input::Step {
            from: from.clone(),
            batch: wire::Received::Base64(batch),
            gone,
        });
    }

    /// [`Replication::receive`] for a `RaftBytes` frame.
    pub fn receive_bytes(&self, from: &NodeId, batch: bytes::Bytes, gone: Vec<(PartitionId, u64)>) {
        let _ = lock(&self.tx).send(Input::Step {
            from: from.clone(),
            batch: wire::Received::Bytes(batch),
            gone,
        });
    }

    /// A peer's snapshot batch, joined from its `RaftPart` pieces: to the receiving thread, which keeps
    /// each snapshot's data in a file before the driver steps it (see `RaftLog`'s module docs).
    pub fn receive_snapshots(&self, from: &NodeId, batch: String) {
        let _ = lock(&self.snapshots_in).send((from.clone(), wire::Received::Base64(batch)));
    }

    /// [`Replication::receive_snapshots`] from `RaftPartBytes` pieces, as they came: the receiving
    /// thread joins them, at their exact size.
    pub fn receive_snapshot_pieces(&self, from: &NodeId, pieces: Vec<bytes::Bytes>) {
        let _ = lock(&self.snapshots_in).send((from.clone(), wire::Received::Pieces(pieces)));
    }

    /// Hands every partition this node leads to another live replica and waits until they have taken over
    /// or `deadline` passes; returns how many it still leads.
    ///
    /// First the node stops serving: requests for its partitions wait (and then go to the new leaders)
    /// while what its actors have already proposed commits, so that no client of another node sees a
    /// request fail because leadership moved under it. Then each partition is transferred.
    pub fn hand_over(&self, deadline: Duration) -> usize {
        self.draining.store(true, Ordering::Release);
        let started = Instant::now();
        let mut quiet = 0;
        while quiet < DRAIN_QUIET_ROUNDS && started.elapsed() < DRAIN_PROPOSALS {
            if self.in_flight.load(Ordering::Acquire) == 0 {
                quiet += 1;
            } else {
                quiet = 0;
            }
            std::thread::sleep(DRAIN_POLL);
        }
        let (done, answer) = mpsc::channel();
        if lock(&self.tx).send(Input::HandOver { done }).is_err() {
            return 0;
        }
        answer
            .recv_timeout(deadline)
            .unwrap_or_else(|_| self.led.load(Ordering::Relaxed))
    }

    fn set_moving(&self, partition: PartitionId, on: bool) {
        if let Some(m) = self.moving.get(partition as usize) {
            m.store(on, Ordering::Release);
        }
    }

    /// This node's proposals to `partition` not yet answered.
    fn in_flight_in(&self, partition: PartitionId) -> usize {
        self.in_flight_by
            .get(partition as usize)
            .map_or(0, |n| n.load(Ordering::Acquire))
    }

    /// After a hand-over: this node keeps following but will not lead again (no ticks, so no campaign,
    /// and no leadership transfer to it).
    pub fn retire(&self) {
        let _ = lock(&self.tx).send(Input::Retire);
    }

    /// How many partitions this node leads.
    pub fn led(&self) -> usize {
        self.led.load(Ordering::Relaxed)
    }

    /// Stops the driver thread (after its current round; the log is synced every round), then the apply
    /// thread once it has applied what the driver handed it.
    pub fn stop(&self) {
        let _ = lock(&self.tx).send(Input::Stop);
        if let Some(thread) = lock(&self.thread).take() {
            let _ = thread.join();
        }
        let _ = lock(&self.apply_tx).send(ApplyInput::Stop);
        if let Some(thread) = lock(&self.apply_thread).take() {
            let _ = thread.join();
        }
        lock(&self.on_change).take();
        lock(&self.on_membership).take();
    }
}
