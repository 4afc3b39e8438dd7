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
use crate::state::replica::{Applied, CarriedEvent, Command, Proposal, Replica};
use crate::store::Store;

/// Largest `Raft` peer frame before base64: a batch bigger than this is split (one group's append is at
/// most 1 MiB, raft-rs's `max_size_per_msg`).
const MAX_FRAME_BATCH: usize = 4 << 20;

/// A partition goes back to its preferred replica only after being led elsewhere for this many election
/// timeouts, and at most this many move per election timeout.
const BALANCE_AFTER_ELECTIONS: u32 = 3;
const BALANCE_AT_ONCE: usize = 16;

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
    /// An encoded [`Proposal`] for `partition`'s log; `done` is called once it is applied here, or with
    /// `unavailable` if it cannot be (this node does not lead the partition, or lost it first).
    Propose {
        partition: PartitionId,
        id: u64,
        data: Vec<u8>,
        done: ProposalDone,
    },
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
    on_change: std::sync::OnceLock<ChangeHook>,
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
            on_change: std::sync::OnceLock::new(),
        });
        let applier = Applier {
            replica: Replica::new(store, Rules::from_config(&config.chat)),
            me,
            rx: apply_rx,
            pending: HashMap::new(),
            shared: Arc::downgrade(&replication),
            metrics: metrics.clone(),
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
    /// committed before its term. A node that does not replicate the partition sends to its preferred
    /// replica, which forwards to the leader.
    pub fn serving(&self, key: &str) -> Serving {
        let p = self.layout.partition(key);
        let replicas = self.layout.replicas(p);
        if !replicas.contains(&self.node) {
            return replicas
                .first()
                .map_or(Serving::Nobody, |n| Serving::At(n.clone()));
        }
        let view = self.partition(p);
        match view.leader {
            Some(leader) if leader == self.node => {
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
        let input = Input::Propose {
            partition,
            id,
            data,
            done: Box::new(done),
        };
        if let Err(mpsc::SendError(Input::Propose { done, .. })) = lock(&self.tx).send(input) {
            done(Err(ChatError::unavailable("the node is stopping")));
        }
    }

    /// Calls `hook` with the partitions whose leader (as this node sees it) changed, from the driver
    /// thread: it must not block. Set once.
    pub fn on_change(&self, hook: impl Fn(&[PartitionId]) + Send + Sync + 'static) {
        let _ = self.on_change.set(Box::new(hook));
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
    pub fn hand_over(&self, deadline: Duration) -> usize {
        let (done, answer) = mpsc::channel();
        if lock(&self.tx).send(Input::HandOver { done }).is_err() {
            return 0;
        }
        answer
            .recv_timeout(deadline)
            .unwrap_or_else(|_| self.led.load(Ordering::Relaxed))
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
            let inputs = first
                .into_iter()
                .chain(std::iter::from_fn(|| self.rx.try_recv().ok()));
            let mut stop = false;
            for input in inputs.collect::<Vec<_>>() {
                match input {
                    Input::Step { from, batch } => match decode(&batch) {
                        Ok(messages) => {
                            for (p, m) in messages {
                                self.raft.step(p, m);
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
                    Input::Stop => stop = true,
                }
            }
            let now = Instant::now();
            if now >= next_tick {
                self.raft.tick();
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
    fn balance(&mut self, now: Instant) {
        if now < self.next_balance || self.handing_over.is_some() {
            return;
        }
        let settle = self.election;
        self.next_balance = now + settle;
        let mut moved = 0;
        for p in self.raft.led().collect::<Vec<_>>() {
            let Some(&to) = self.preferred.get(&p) else {
                continue;
            };
            let long_enough = self.led_since.get(&p).is_some_and(|since| {
                now.duration_since(*since) >= settle * BALANCE_AFTER_ELECTIONS
            });
            if long_enough && self.raft.transfer_if_caught_up(p, to) {
                moved += 1;
                if moved == BALANCE_AT_ONCE {
                    break;
                }
            }
        }
    }

    /// Persists, sends and publishes what the groups produced.
    fn round(&mut self) {
        let started = Instant::now();
        let out = match self.raft.poll() {
            Ok(out) => out,
            Err(e) => {
                tracing::error!(error = %e, "the raft log cannot be written: stopping the node");
                std::process::abort();
            }
        };
        for batch in out.batches {
            self.send(batch);
        }
        if !out.committed.is_empty() {
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
            if c.local {
                self.led_since
                    .entry(c.partition)
                    .or_insert_with(Instant::now);
            } else {
                self.led_since.remove(&c.partition);
            }
            tracing::debug!(partition = c.partition, leader = ?c.leader, term = c.term, local = c.local, "raft leadership");
        }
        if let Some(hook) = shared.on_change.get() {
            let changed: Vec<PartitionId> = changes.iter().map(|c| c.partition).collect();
            hook(&changed);
        }
    }
}

/// The apply thread: committed entries of every group, applied in log order through the cores
/// ([`Replica`]) to this node's store; answers the proposals this node made once their entries are
/// applied, and marks a partition ready to serve once its leader's first entry of the term is applied.
struct Applier {
    replica: Replica,
    me: u64,
    rx: mpsc::Receiver<ApplyInput>,
    /// This node's proposals waiting for their entries: partition, term, when proposed, callback.
    pending: HashMap<u64, (PartitionId, u64, Instant, ProposalDone)>,
    shared: std::sync::Weak<Replication>,
    metrics: Arc<Metrics>,
}

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
                    for entry in entries {
                        self.apply(entry);
                    }
                }
                ApplyInput::Leadership(changes) => self.leadership(&changes),
                ApplyInput::Stop => break,
            }
        }
        for (_, (_, _, _, done)) in self.pending.drain() {
            done(Err(ChatError::unavailable("the node is stopping")));
        }
    }

    fn apply(&mut self, entry: Committed) {
        if entry.data.is_empty() {
            // a leader's first entry of its term: everything committed before it is applied now
            if let Some(shared) = self.shared.upgrade() {
                let view = shared.partition(entry.partition);
                if view.leader.as_ref() == Some(&shared.node) && view.term == entry.term {
                    if let Some(ready) = shared.ready.get(entry.partition as usize) {
                        ready.store(entry.term, Ordering::Release);
                    }
                }
            }
            return;
        }
        let proposal: Proposal = match serde_json::from_slice(&entry.data) {
            Ok(p) => p,
            Err(e) => {
                // every replica skips it alike: the data is the same everywhere
                tracing::error!(partition = entry.partition, index = entry.index, error = %e, "skipping an entry that does not decode");
                return;
            }
        };
        let mine = proposal.origin == self.me;
        let events = if mine { proposal.events } else { Vec::new() };
        match self
            .replica
            .apply_with(entry.partition, entry.index, proposal.command, events)
        {
            Ok(Applied::Conv(Err(e))) if mine => {
                tracing::warn!(partition = entry.partition, index = entry.index, error = %e, "an entry this node proposed was refused when applied");
            }
            Ok(_) => {}
            Err(e) => {
                // later entries must not be applied over a missing one
                tracing::error!(partition = entry.partition, index = entry.index, error = %e, "cannot apply a committed entry: stopping the node");
                std::process::abort();
            }
        }
        if mine {
            if let Some((_, _, since, done)) = self.pending.remove(&proposal.id) {
                self.metrics
                    .raft_proposal_seconds
                    .observe(since.elapsed().as_secs_f64());
                done(Ok(()));
            }
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
