//! [`Replication`]: this node's replicas of the partitions the [`Layout`] gives it, one Raft group each,
//! driven by one thread.
//!
//! The thread owns the [`MultiRaft`]. It ticks every group on one timer (`election_timeout_ms / 20`), steps
//! what peers sent, and after each round polls: every group's new entries and hard state are appended to
//! the node's Raft log and synced once, then each other node gets all of its groups' messages (heartbeats,
//! appends, votes) as one `Raft` peer frame on this node's link to it, so a tick costs one frame per node
//! pair however many groups there are. Raft's disk work (the log's fdatasync) happens on this thread,
//! never on an actor thread.
//!
//! What leads where is published to a table that the router, `/v1/nodes`, `/v1/admin/cluster` and the
//! metrics read. On SIGTERM the node hands every partition it leads to its most caught-up live replica
//! before it closes its clients ([`Replication::hand_over`]).
//!
//! A failed write or sync of the Raft log aborts the process: after it, the node could vote or acknowledge
//! without the durable record Raft's safety rests on (TiKV makes the same choice).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::Engine as _;
use protobuf::Message as _;
use raft::eraftpb::Message;

use super::peer::Peer;
use super::placement::{Layout, PartitionId};
use super::remote::PeerFrame;
use crate::config::Config;
use crate::error::{ChatError, ChatResult};
use crate::ids::NodeId;
use crate::metrics::Metrics;
use crate::raft::log::LogError;
use crate::raft::multi::{raft_id, Batch, Committed, Leadership, MultiRaft, ELECTION_TICKS};
use crate::state::conv::Rules;
use crate::state::replica::{Applied, CarriedEvent, Command, Entry, Proposal, Replica};
use crate::store::Store;

/// Largest `Raft` peer frame before base64: a batch bigger than this is split (one group's append is at
/// most 1 MiB, raft-rs's `max_size_per_msg`).
const MAX_FRAME_BATCH: usize = 4 << 20;

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

/// The shortest time between the starts of two rounds that sync the log (as the store's group commit,
/// [`crate::store::writer::COMMIT_WINDOW`]).
const SYNC_WINDOW: Duration = Duration::from_micros(1000);

/// What the driver thread is asked to do.
enum Input {
    /// A peer's `Raft` frame: its groups' messages to this node's, still encoded.
    Step {
        from: NodeId,
        batch: String,
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
    /// An encoded [`Proposal`] for `partition`'s log; `done` is called once it is applied here, or with
    /// `unavailable` if it cannot be (this node does not lead the partition, or lost it first).
    Propose {
        partition: PartitionId,
        id: u64,
        data: Vec<u8>,
        done: ProposalDone,
    },
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
    /// Make a snapshot of a partition's data for the driver (a follower needs compacted entries).
    MakeSnapshot(PartitionId),
    Committed(Vec<Committed>),
    /// Groups whose leader or term changed: what was proposed here under another term or leadership will
    /// not be answered by its entry.
    Leadership(Vec<Leadership>),
    Stop,
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

/// A partition's leadership as this node sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionView {
    pub leader: Option<NodeId>,
    pub term: u64,
}

/// This node's Raft groups. Cheap to share (`Arc`); the thread stops on [`Replication::stop`].
pub struct Replication {
    layout: Layout,
    /// Every partition's leadership as seen here (`None`/0 for partitions not replicated here).
    view: RwLock<Vec<PartitionView>>,
    tx: Mutex<mpsc::Sender<Input>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Raft ids of the cluster's nodes.
    nodes: HashMap<u64, NodeId>,
    led: AtomicUsize,
    /// This node.
    node: NodeId,
    me: u64,
    next_proposal: AtomicU64,
    /// Per partition: the term whose first entry this node has applied as its leader (0: none). A leader
    /// serves only at this term: everything committed before it is applied then.
    ready: Vec<AtomicU64>,
    apply_tx: Mutex<mpsc::Sender<ApplyInput>>,
    apply_thread: Mutex<Option<JoinHandle<()>>>,
    /// Told which partitions changed leader (from the driver thread; see [`Replication::on_change`]).
    on_change: Mutex<Option<ChangeHook>>,
    /// Set when the node starts handing its leaderships over: it serves nothing new from then on.
    draining: std::sync::atomic::AtomicBool,
    /// This node's proposals not yet answered, in all and per partition.
    in_flight: Arc<AtomicUsize>,
    in_flight_by: Arc<Vec<AtomicUsize>>,
    /// Per partition: being moved to another replica (not served here meanwhile).
    moving: Vec<std::sync::atomic::AtomicBool>,
}

type ChangeHook = Box<dyn Fn(&[PartitionId]) + Send + Sync>;

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

impl Replication {
    /// Opens (or creates) the Raft log in `dir` and starts the driver thread for the partitions `layout`
    /// gives `node`. `peers` are this node's links, over which the groups' messages travel.
    pub fn start(
        config: &Config,
        node: &NodeId,
        layout: Layout,
        dir: &std::path::Path,
        peers: Vec<Arc<Peer>>,
        store: Store,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Replication>, ReplicationError> {
        let nodes: HashMap<u64, NodeId> = config
            .nodes
            .iter()
            .filter_map(|n| NodeId::parse(&n.id).ok())
            .map(|id| (raft_id(&id), id))
            .collect();
        let groups: Vec<(PartitionId, Vec<u64>)> = layout
            .partitions_of(node)
            .map(|p| (p, layout.replicas(p).iter().map(raft_id).collect()))
            .collect();
        metrics
            .raft_partitions
            .set(i64::try_from(groups.len()).unwrap_or(i64::MAX));
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
        let (apply_tx, apply_rx) = mpsc::channel();
        let view = vec![PartitionView::default(); layout.partitions() as usize];
        let layout_partitions = layout.partitions();
        let ready = (0..layout.partitions())
            .map(|_| AtomicU64::new(0))
            .collect();
        let replication = Arc::new(Replication {
            layout,
            view: RwLock::new(view),
            tx: Mutex::new(tx),
            thread: Mutex::new(None),
            nodes,
            led: AtomicUsize::new(0),
            node: node.clone(),
            me,
            next_proposal: AtomicU64::new(1),
            ready,
            apply_tx: Mutex::new(apply_tx.clone()),
            apply_thread: Mutex::new(None),
            on_change: Mutex::new(None),
            draining: std::sync::atomic::AtomicBool::new(false),
            in_flight: Arc::new(AtomicUsize::new(0)),
            in_flight_by: Arc::new(
                (0..layout_partitions)
                    .map(|_| AtomicUsize::new(0))
                    .collect(),
            ),
            moving: (0..layout_partitions)
                .map(|_| std::sync::atomic::AtomicBool::new(false))
                .collect(),
        });
        let applier = Applier {
            replica: Replica::new(store.clone(), Rules::from_config(&config.chat)),
            store,
            partitions: replication.layout.partitions(),
            compact_entries: config.cluster.log_compact_entries.max(2),
            me,
            rx: apply_rx,
            pending: HashMap::new(),
            shared: Arc::downgrade(&replication),
            metrics: metrics.clone(),
            last: HashMap::new(),
            compacted: HashMap::new(),
            next_compaction: Instant::now() + COMPACTION_CHECK,
        };
        let apply_thread = std::thread::Builder::new()
            .name("raft-apply".into())
            .spawn(move || applier.run())
            .map_err(ReplicationError::Thread)?;
        *lock(&replication.apply_thread) = Some(apply_thread);
        let peers: HashMap<u64, Arc<Peer>> =
            peers.into_iter().map(|p| (raft_id(&p.id), p)).collect();
        let driver = Driver {
            raft,
            rx,
            peers,
            tick,
            election,
            metrics,
            shared: Arc::downgrade(&replication),
            handing_over: None,
            preferred,
            led_since: HashMap::new(),
            next_balance: Instant::now(),
            apply: apply_tx,
            retiring: false,
            moving: HashMap::new(),
            last_sync: None,
        };
        let thread = std::thread::Builder::new()
            .name("raft".into())
            .spawn(move || driver.run())
            .map_err(ReplicationError::Thread)?;
        *lock(&replication.thread) = Some(thread);
        Ok(replication)
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Partition `p`'s leadership as this node sees it.
    pub fn partition(&self, p: PartitionId) -> PartitionView {
        let view = self
            .view
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        view.get(p as usize).cloned().unwrap_or_default()
    }

    /// Every partition's leadership as this node sees it.
    pub fn partitions(&self) -> Vec<PartitionView> {
        self.view
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The leader of `key`'s partition, if known here.
    pub fn leader_of(&self, key: &str) -> Option<NodeId> {
        self.partition(self.layout.partition(key)).leader
    }

    /// Where `key`'s actor runs: on its partition's leader, once that leader has applied everything
    /// committed before its term. A node that does not replicate the partition sends to the first of its
    /// replicas that `is_up` (the preferred one while it lives), which forwards to the leader.
    pub fn serving(&self, key: &str, is_up: impl Fn(&NodeId) -> bool) -> Serving {
        let p = self.layout.partition(key);
        let replicas = self.layout.replicas(p);
        if !replicas.contains(&self.node) {
            return replicas
                .iter()
                .find(|n| is_up(n))
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
        self.layout.replicas(self.layout.partition(key)).len() > 1
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
        let partition = self.layout.partition(command.key());
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

    /// Calls `hook` with the partitions whose leader (as this node sees it) changed, from the driver
    /// thread: it must not block. Dropped by [`Replication::stop`] (it holds the router, which holds this).
    pub fn on_change(&self, hook: impl Fn(&[PartitionId]) + Send + Sync + 'static) {
        *lock(&self.on_change) = Some(Box::new(hook));
    }

    /// A `Raft` frame from `from`: its groups' messages, decoded and stepped on the driver thread (not on
    /// the peer link's task). A frame that does not decode is dropped and logged (raft resends what
    /// matters).
    pub fn receive(&self, from: &NodeId, batch: String) {
        let _ = lock(&self.tx).send(Input::Step {
            from: from.clone(),
            batch,
        });
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
    }
}

/// A hand-over in progress.
struct HandingOver {
    done: mpsc::Sender<usize>,
    /// When to ask again (a transfer that raft gave up on) and when to give up.
    retry: Instant,
}

struct Driver {
    raft: MultiRaft,
    rx: mpsc::Receiver<Input>,
    peers: HashMap<u64, Arc<Peer>>,
    tick: Duration,
    /// `cluster.election_timeout_ms`.
    election: Duration,
    metrics: Arc<Metrics>,
    shared: std::sync::Weak<Replication>,
    handing_over: Option<HandingOver>,
    /// Each partition's preferred leader (its first replica on the ring), by Raft id.
    preferred: HashMap<PartitionId, u64>,
    /// Since when this node leads each partition it leads.
    led_since: HashMap<PartitionId, Instant>,
    next_balance: Instant,
    /// To the apply thread.
    apply: mpsc::Sender<ApplyInput>,
    /// See [`Input::Retire`].
    retiring: bool,
    /// Partitions being moved to their preferred replica: where to, and since when.
    moving: HashMap<PartitionId, (u64, Instant)>,
    /// When the last round that synced the log started.
    last_sync: Option<Instant>,
}

impl Driver {
    fn run(mut self) {
        let mut next_tick = Instant::now() + self.tick;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            let first = match self.rx.recv_timeout(wait) {
                Ok(input) => Some(input),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            // under load, let a round's worth of proposals and acks gather: one fsync (and one apply
            // batch on every replica) then covers them all; an idle node syncs at once
            if first.is_some() {
                if let Some(wait) = self
                    .last_sync
                    .map(|t| SYNC_WINDOW.saturating_sub(t.elapsed()))
                {
                    if !wait.is_zero() {
                        std::thread::sleep(wait);
                    }
                }
            }
            let inputs = first
                .into_iter()
                .chain(std::iter::from_fn(|| self.rx.try_recv().ok()));
            let mut stop = false;
            for input in inputs.collect::<Vec<_>>() {
                match input {
                    Input::Step { from, batch } => match decode(&batch) {
                        Ok(messages) => {
                            for (p, m) in messages {
                                let to_lead =
                                    m.get_msg_type() == raft::eraftpb::MessageType::MsgTimeoutNow;
                                if !(self.retiring && to_lead) {
                                    self.raft.step(p, m);
                                }
                            }
                        }
                        Err(e) => {
                            tracing::warn!(peer = %from, error = %e, "dropping an undecodable raft frame")
                        }
                    },
                    Input::HandOver { done } => {
                        self.handing_over = Some(HandingOver {
                            done,
                            retry: Instant::now(),
                        });
                    }
                    Input::Propose {
                        partition,
                        id,
                        data,
                        done,
                    } => self.propose(partition, id, data, done),
                    Input::SnapshotReady {
                        partition,
                        index,
                        term,
                        data,
                    } => {
                        if let Err(e) = self.raft.offer_snapshot(partition, index, term, data) {
                            tracing::warn!(partition, error = %e, "cannot offer a snapshot");
                        }
                    }
                    Input::Compact(points) => {
                        for (partition, index) in points {
                            if let Err(e) = self.raft.compact(partition, index) {
                                tracing::error!(error = %e, "the raft log cannot be compacted: stopping the node");
                                std::process::abort();
                            }
                        }
                    }
                    Input::Retire => self.retiring = true,
                    Input::Stop => stop = true,
                }
            }
            let now = Instant::now();
            if now >= next_tick {
                if !self.retiring {
                    self.raft.tick();
                }
                next_tick += self.tick;
                if next_tick < now {
                    // the thread fell behind (a long sync): skip the missed ticks rather than burst them
                    next_tick = now + self.tick;
                }
            }
            self.hand_over(now);
            self.balance(now);
            self.round();
            if stop {
                return;
            }
        }
    }

    fn propose(&mut self, partition: PartitionId, id: u64, data: Vec<u8>, done: ProposalDone) {
        if self.handing_over.is_some() {
            return done(Err(ChatError::unavailable("the node is handing over")));
        }
        let term = self.raft.term(partition).unwrap_or(0);
        match self.raft.propose(partition, data) {
            Ok(()) => {
                let _ = self.apply.send(ApplyInput::Track {
                    partition,
                    id,
                    term,
                    done,
                });
            }
            Err(e) => done(Err(ChatError::unavailable(format!(
                "partition {partition}: {e}"
            )))),
        }
    }

    /// While handing over: asks each led group to transfer (again after an election timeout, if raft gave
    /// up), and answers once nothing is led here.
    fn hand_over(&mut self, now: Instant) {
        let Some(h) = &mut self.handing_over else {
            return;
        };
        let led: Vec<PartitionId> = self.raft.led().collect();
        if led.is_empty() {
            let _ = h.done.send(0);
            self.handing_over = None;
            return;
        }
        if now >= h.retry {
            let still = led.len();
            let asked = led
                .into_iter()
                .filter(|p| self.raft.hand_over(*p).is_some())
                .count();
            if asked == 0 {
                // nobody to take them (a single node, or every other replica down)
                let _ = h.done.send(still);
                self.handing_over = None;
                return;
            }
            h.retry = now + self.election;
        }
    }

    /// Gives partitions back to their preferred replica, a few at a time, so that leadership (and with it
    /// the actors' work) spreads over the nodes the way the ring spreads the partitions, instead of
    /// staying wherever the last election happened to put it. Only partitions led here for a while are
    /// moved, so a node that has just stopped (and still looks active for an election timeout) never gets
    /// a partition back; never while this node hands its partitions over.
    ///
    /// A move is drained like a hand-over: the partition stops being served here first (requests wait,
    /// then go to the new leader), and is transferred once what its actors proposed has been applied, so
    /// no request fails because leadership moved under it.
    fn balance(&mut self, now: Instant) {
        self.transfer_drained(now);
        if now < self.next_balance || self.handing_over.is_some() || self.retiring {
            return;
        }
        let settle = self.election;
        self.next_balance = now + settle;
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        for p in self.raft.led().collect::<Vec<_>>() {
            if self.moving.len() >= BALANCE_AT_ONCE {
                break;
            }
            let Some(&to) = self.preferred.get(&p) else {
                continue;
            };
            let long_enough = self.led_since.get(&p).is_some_and(|since| {
                now.duration_since(*since) >= settle * BALANCE_AFTER_ELECTIONS
            });
            if long_enough && !self.moving.contains_key(&p) && self.raft.caught_up(p, to) {
                shared.set_moving(p, true);
                self.moving.insert(p, (to, now));
            }
        }
    }

    /// Transfers the partitions being moved whose proposals in flight are all applied; gives a move up
    /// after an election timeout (it is tried again later).
    fn transfer_drained(&mut self, now: Instant) {
        if self.moving.is_empty() {
            return;
        }
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let mut done = Vec::new();
        for (&p, &(to, since)) in &self.moving {
            let waited = now.duration_since(since);
            if waited >= self.election {
                done.push(p);
            } else if waited >= DRAIN_POLL * DRAIN_QUIET_ROUNDS && shared.in_flight_in(p) == 0 {
                self.raft.transfer_if_caught_up(p, to);
            }
        }
        for p in done {
            self.moving.remove(&p);
            shared.set_moving(p, false);
        }
    }

    /// Persists, sends and publishes what the groups produced.
    fn round(&mut self) {
        let started = Instant::now();
        let out = match self.raft.poll() {
            Ok(out) => {
                if out.synced {
                    self.last_sync = Some(started);
                }
                out
            }
            Err(e) => {
                tracing::error!(error = %e, "the raft log cannot be written: stopping the node");
                std::process::abort();
            }
        };
        let snapshots = MultiRaft::snapshots_in(&out.batches);
        if snapshots > 0 {
            self.metrics.raft_snapshots_sent.inc_by(snapshots as u64);
        }
        for batch in out.batches {
            self.send(batch);
        }
        if !out.installs.is_empty() {
            let _ = self.apply.send(ApplyInput::Install(out.installs));
        }
        for partition in self.raft.wanted_snapshots() {
            let _ = self.apply.send(ApplyInput::MakeSnapshot(partition));
        }
        if !out.committed.is_empty() {
            // entries come in log order per group: the last of each group is its commit index
            let mut seen = std::collections::HashSet::new();
            for c in out.committed.iter().rev() {
                if seen.insert(c.partition) {
                    self.metrics.raft_partition.set_commit(c.partition, c.index);
                }
            }
            let _ = self.apply.send(ApplyInput::Committed(out.committed));
        }
        if !out.leadership.is_empty() {
            self.publish(&out.leadership);
            let _ = self.apply.send(ApplyInput::Leadership(out.leadership));
        }
        self.metrics
            .raft_poll_seconds
            .observe(started.elapsed().as_secs_f64());
    }

    fn send(&self, batch: Batch) {
        let Some(peer) = self.peers.get(&batch.to) else {
            return;
        };
        for chunk in encode(&batch.messages) {
            // a link that is down drops the frame; raft resends after the heartbeat or election timeout
            let _ = peer.send(&PeerFrame::Raft { batch: chunk });
        }
    }

    fn publish(&mut self, changes: &[Leadership]) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        {
            let mut view = shared
                .view
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for c in changes {
                if let Some(v) = view.get_mut(c.partition as usize) {
                    v.leader = c.leader.and_then(|id| shared.nodes.get(&id).cloned());
                    v.term = c.term;
                }
            }
        }
        self.metrics
            .raft_leader_changes
            .inc_by(changes.len() as u64);
        let led = self.raft.led().count();
        shared.led.store(led, Ordering::Relaxed);
        self.metrics
            .raft_partitions_led
            .set(i64::try_from(led).unwrap_or(i64::MAX));
        for c in changes {
            if self.moving.remove(&c.partition).is_some() {
                shared.set_moving(c.partition, false);
            }
            self.metrics
                .raft_partition
                .set_leader(c.partition, c.local, c.term);
            if c.local {
                self.led_since
                    .entry(c.partition)
                    .or_insert_with(Instant::now);
            } else {
                self.led_since.remove(&c.partition);
            }
            tracing::debug!(partition = c.partition, leader = ?c.leader, term = c.term, local = c.local, "raft leadership");
        }
        let changed: Vec<PartitionId> = changes.iter().map(|c| c.partition).collect();
        let hook = lock(&shared.on_change);
        if let Some(hook) = hook.as_ref() {
            hook(&changed);
        }
    }
}

/// The apply thread: committed entries of every group, applied in log order through the cores
/// ([`Replica`]) to this node's store; answers the proposals this node made once their entries are
/// applied, and marks a partition ready to serve once its leader's first entry of the term is applied.
struct Applier {
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
    next_compaction: Instant,
}

/// How often the apply thread looks for logs to compact (each time it flushes the store first).
const COMPACTION_CHECK: Duration = Duration::from_secs(1);

impl Applier {
    fn run(mut self) {
        while let Ok(input) = self.rx.recv() {
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
                }
                ApplyInput::Install(snapshots) => {
                    for (partition, snapshot) in snapshots {
                        self.install(partition, &snapshot);
                    }
                }
                ApplyInput::MakeSnapshot(partition) => self.make_snapshot(partition),
                ApplyInput::Leadership(changes) => self.leadership(&changes),
                ApplyInput::Stop => break,
            }
        }
        for (_, (_, _, _, done)) in self.pending.drain() {
            done(Err(ChatError::unavailable("the node is stopping")));
        }
    }

    /// Applies a round's committed entries in one batch ([`Replica::apply_entries`]); then marks the
    /// partitions whose leader's first entry of its term is among them as caught up, and answers this
    /// node's proposals.
    fn apply(&mut self, committed: Vec<Committed>) {
        let mut entries = Vec::with_capacity(committed.len());
        let mut ready = Vec::new();
        let mut mine = Vec::new();
        for c in committed {
            self.metrics
                .raft_partition
                .set_applied(c.partition, c.index);
            self.last.insert(c.partition, (c.index, c.term));
            if c.conf {
                // applied to the group by the driver; a snapshot from here on carries it
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

    /// Installs a snapshot of `partition`'s data from its leader: its keys replaced, its applied index set
    /// to the snapshot's (the entries after it follow).
    fn install(&mut self, partition: PartitionId, snapshot: &raft::eraftpb::Snapshot) {
        let meta = snapshot.get_metadata();
        let started = Instant::now();
        if let Err(e) =
            self.store
                .install_partition(partition, self.partitions, &snapshot.data, meta.index)
        {
            tracing::error!(partition, error = %e, "cannot install a snapshot: stopping the node");
            std::process::abort();
        }
        self.replica.forget(partition, meta.index);
        self.last.insert(partition, (meta.index, meta.term));
        self.compacted.insert(partition, meta.index);
        self.metrics.raft_snapshots_installed.inc();
        tracing::info!(partition, index = meta.index, bytes = snapshot.data.len(), took = ?started.elapsed(), "installed a partition snapshot");
    }

    /// A snapshot of `partition`'s data at the last entry applied here, for the driver to offer.
    fn make_snapshot(&mut self, partition: PartitionId) {
        let Some(&(index, term)) = self.last.get(&partition) else {
            // nothing applied since the start: raft asks again with its next probe
            return;
        };
        let data = match self.store.partition_snapshot(partition, self.partitions) {
            Ok(data) => data,
            Err(e) => {
                tracing::error!(partition, error = %e, "cannot make a snapshot");
                return;
            }
        };
        if let Some(shared) = self.shared.upgrade() {
            let _ = lock(&shared.tx).send(Input::SnapshotReady {
                partition,
                index,
                term,
                data,
            });
        }
    }

    /// At most once per [`COMPACTION_CHECK`]: the partitions whose logs hold more than
    /// `log_compact_entries` applied entries are compacted, keeping the last half. The store is flushed
    /// first: an entry leaves the log only once its effects are on disk.
    fn maybe_compact(&mut self) {
        let now = Instant::now();
        if now < self.next_compaction {
            return;
        }
        self.next_compaction = now + COMPACTION_CHECK;
        let due: Vec<(PartitionId, u64)> = self
            .last
            .iter()
            .filter_map(|(p, (index, _))| {
                let from = self.compacted.get(p).copied().unwrap_or(0);
                (index.saturating_sub(from) >= self.compact_entries)
                    .then(|| (*p, index.saturating_sub(self.compact_entries / 2)))
            })
            .collect();
        if due.is_empty() {
            return;
        }
        if let Err(e) = self.store.flush_now() {
            tracing::error!(error = %e, "cannot flush the store before a compaction");
            return;
        }
        for (p, index) in &due {
            self.compacted.insert(*p, *index);
        }
        if let Some(shared) = self.shared.upgrade() {
            let _ = lock(&shared.tx).send(Input::Compact(due));
        }
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

/// A batch as `Raft` frame payloads: per message its partition and length (4 bytes each, big-endian) and
/// its protobuf bytes, split so that no payload exceeds [`MAX_FRAME_BATCH`] (unless one message does),
/// in base64.
fn encode(messages: &[(PartitionId, Message)]) -> Vec<String> {
    let mut chunks = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    for (p, m) in messages {
        let bytes = match m.write_to_bytes() {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a raft message");
                continue;
            }
        };
        let Ok(len) = u32::try_from(bytes.len()) else {
            continue;
        };
        if !buf.is_empty() && buf.len() + bytes.len() + 8 > MAX_FRAME_BATCH {
            chunks.push(base64::engine::general_purpose::STANDARD.encode(&buf));
            buf.clear();
        }
        buf.extend_from_slice(&p.to_be_bytes());
        buf.extend_from_slice(&len.to_be_bytes());
        buf.extend_from_slice(&bytes);
    }
    if !buf.is_empty() {
        chunks.push(base64::engine::general_purpose::STANDARD.encode(&buf));
    }
    chunks
}

#[derive(Debug, thiserror::Error)]
enum DecodeError {
    #[error("not base64: {0}")]
    Base64(#[from] base64::DecodeError),
    #[error("truncated at byte {0}")]
    Truncated(usize),
    #[error("not a raft message: {0}")]
    Protobuf(#[from] protobuf::ProtobufError),
}

fn decode(batch: &str) -> Result<Vec<(PartitionId, Message)>, DecodeError> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(batch)?;
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let header = bytes
            .get(at..at.saturating_add(8))
            .ok_or(DecodeError::Truncated(at))?;
        let p = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        let len = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
        let start = at.saturating_add(8);
        let end = start.checked_add(len).ok_or(DecodeError::Truncated(at))?;
        let body = bytes.get(start..end).ok_or(DecodeError::Truncated(at))?;
        out.push((p, Message::parse_from_bytes(body)?));
        at = end;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(to: u64, term: u64) -> Message {
        let mut m = Message {
            to,
            from: 7,
            term,
            ..Default::default()
        };
        m.set_msg_type(raft::eraftpb::MessageType::MsgHeartbeat);
        m
    }

    #[test]
    fn batches_round_trip_and_split_at_the_frame_limit() {
        let small: Vec<(PartitionId, Message)> =
            (0..300).map(|p| (p, message(2, u64::from(p)))).collect();
        let chunks = encode(&small);
        assert_eq!(chunks.len(), 1);
        assert_eq!(decode(&chunks[0]).expect("decodes"), small);

        let mut big = message(2, 1);
        big.set_entries(
            vec![raft::eraftpb::Entry {
                data: vec![7u8; 1 << 20].into(),
                ..Default::default()
            }]
            .into(),
        );
        let many: Vec<(PartitionId, Message)> = (0..9).map(|p| (p, big.clone())).collect();
        let chunks = encode(&many);
        assert!(
            chunks.len() >= 3,
            "9 MiB in frames of at most 4 MiB: {}",
            chunks.len()
        );
        let back: Vec<(PartitionId, Message)> = chunks
            .iter()
            .flat_map(|c| decode(c).expect("decodes"))
            .collect();
        assert_eq!(back, many);
    }

    #[test]
    fn garbage_is_refused_not_panicked_on() {
        assert!(decode("!!").is_err());
        let truncated =
            base64::engine::general_purpose::STANDARD.encode([0u8, 0, 0, 1, 0, 0, 1, 0, 9]);
        assert!(decode(&truncated).is_err());
        let huge_len =
            base64::engine::general_purpose::STANDARD.encode([0u8, 0, 0, 1, 255, 255, 255, 255]);
        assert!(decode(&huge_len).is_err());
    }
}
