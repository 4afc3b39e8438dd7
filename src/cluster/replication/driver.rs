//! The driver thread ([`Driver`]): owns this node's [`MultiRaft`], ticks it, steps what peers sent, proposes,
//! and after each round encodes, sends and publishes what the groups produced; hands leadership over on
//! SIGTERM and back to the preferred replicas; moves replicas where the membership wants them
//! (`moves.rs`). Behind it the log writer thread ([`write_rounds`]) writes the rounds' records to the log
//! file and the sync thread ([`sync_rounds`]) makes them durable, so the driver never waits for the disk;
//! what waits for that is released when the sync thread answers. Snapshots go in pieces on the peer
//! link's bulk lane, and one that is not acknowledged is sent again; one received is decoded by the
//! receiving thread ([`keep_snapshots`]), which keeps its data in a file before the driver steps it.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::behind::Behind;
use super::unpacking::Unpacking;
use super::wire::{base64, encode, encode_snapshot, pieces};
use super::*;
use crate::cluster::remote::PeerFrame;
use crate::error::ChatError;
use crate::metrics::Metrics;
use crate::raft::multi::{raft_id, Batch, Leadership, MultiRaft, ProposeError, Stepped, Unsynced};

/// A hand-over in progress.
pub(super) struct HandingOver {
    done: mpsc::Sender<usize>,
    /// When to ask again (a transfer that raft gave up on) and when to give up.
    retry: Instant,
}

/// A partition's leadership being moved to another replica (drained first: see [`Driver::balance`]).
pub(super) struct Handing {
    /// To whom (its Raft id).
    pub(super) to: u64,
    pub(super) since: Instant,
    /// Raft was asked to transfer it.
    asked: bool,
}

impl Handing {
    pub(super) fn new(to: u64, since: Instant) -> Handing {
        Handing {
            to,
            since,
            asked: false,
        }
    }
}

/// Where a round's stepping went, for the slow-round warning.
#[derive(Default)]
struct Spent {
    inputs: usize,
    steps: Duration,
    synced: Duration,
    compactions: Duration,
    other: Duration,
}

impl Spent {
    fn add(&mut self, kind: InputKind, took: Duration) {
        let into = match kind {
            InputKind::Step => &mut self.steps,
            InputKind::Synced => &mut self.synced,
            InputKind::Compact => &mut self.compactions,
            InputKind::Other => &mut self.other,
        };
        *into += took;
    }
}

#[derive(Clone, Copy)]
enum InputKind {
    Step,
    Synced,
    Compact,
    Other,
}

impl Input {
    fn kind(&self) -> InputKind {
        match self {
            Input::Step { .. } | Input::StepKept(_) => InputKind::Step,
            Input::Synced(_) => InputKind::Synced,
            Input::Compact(_) => InputKind::Compact,
            _ => InputKind::Other,
        }
    }
}

/// The size of a piece of a snapshot on the bulk lane (base64 bytes).
const SNAPSHOT_PIECE: usize = 1 << 20;
/// A snapshot sent and not acknowledged after this long is sent again (see
/// [`Driver::expire_snapshots`]).
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(60);

/// A driver round at least this long is logged.
const SLOW_ROUND: Duration = Duration::from_millis(250);

pub(super) struct Driver {
    pub(super) raft: MultiRaft,
    rx: mpsc::Receiver<Input>,
    tick: Duration,
    /// `cluster.election_timeout_ms`.
    election: Duration,
    pub(super) metrics: Arc<Metrics>,
    pub(super) shared: std::sync::Weak<Replication>,
    handing_over: Option<HandingOver>,
    /// Since when this node leads each partition it leads.
    led_since: HashMap<PartitionId, Instant>,
    next_balance: Instant,
    /// To the apply thread.
    pub(super) apply: mpsc::Sender<ApplyInput>,
    /// See [`Input::Retire`].
    pub(super) retiring: bool,
    /// Partitions whose leadership is being moved to another replica.
    pub(super) moving: HashMap<PartitionId, Handing>,
    /// Partitions whose last leadership transfer was refused, and when the balancer may try again.
    refused: HashMap<PartitionId, Instant>,
    /// When the last round that wrote to the log started.
    last_sync: Option<Instant>,
    /// How long after it the next one waits.
    window: SyncWindow,
    /// To the log writer thread ([`write_rounds`], which hands each round on to [`sync_rounds`]), and
    /// how many rounds the sync thread has not answered yet.
    to_disk: mpsc::Sender<Unsynced>,
    syncing: usize,
    /// To the snapshot thread ([`send_snapshots`]).
    snapshots: mpsc::Sender<SnapshotOut>,
    /// Snapshots sent and not yet acknowledged: to whom, and when.
    snapshots_out: HashMap<(PartitionId, u64), SnapshotSent>,
    /// Moves of replicas led from here (see `moves.rs`).
    pub(super) moves: super::moves::Moves,
    /// Snapshots received that the apply thread is installing, and what waits for them.
    pub(super) unpacking: Unpacking,
    /// What the apply thread was handed, and the leaderships offered before it caught up.
    pub(super) behind: Behind,
}

impl Driver {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        raft: MultiRaft,
        rx: mpsc::Receiver<Input>,
        tick: Duration,
        election: Duration,
        max_moving: usize,
        sync_window: Duration,
        metrics: Arc<Metrics>,
        shared: std::sync::Weak<Replication>,
        apply: mpsc::Sender<ApplyInput>,
        to_disk: mpsc::Sender<Unsynced>,
        snapshots: mpsc::Sender<SnapshotOut>,
    ) -> Driver {
        Driver {
            to_disk,
            syncing: 0,
            snapshots,
            snapshots_out: HashMap::new(),
            unpacking: Unpacking::default(),
            // the old leader gives a transfer up after raft-rs's election timeout (`ELECTION_TICKS`
            // ticks: half of `election_timeout_ms`); an offer expires well before
            behind: Behind::new(election / 4),
            raft,
            rx,
            tick,
            election,
            metrics,
            shared,
            handing_over: None,
            led_since: HashMap::new(),
            next_balance: Instant::now(),
            apply,
            retiring: false,
            moving: HashMap::new(),
            refused: HashMap::new(),
            last_sync: None,
            window: SyncWindow::new(sync_window, Instant::now()),
            moves: super::moves::Moves::new(max_moving),
        }
    }

    pub(super) fn run(mut self) {
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
                    .map(|t| self.window.get().saturating_sub(t.elapsed()))
                {
                    if !wait.is_zero() {
                        std::thread::sleep(wait);
                    }
                }
            }
            let round_started = Instant::now();
            let inputs = first
                .into_iter()
                .chain(std::iter::from_fn(|| self.rx.try_recv().ok()));
            let mut stop = false;
            let inputs: Vec<Input> = inputs.collect();
            let mut spent = Spent {
                inputs: inputs.len(),
                ..Spent::default()
            };
            for input in inputs {
                let began = Instant::now();
                let kind = input.kind();
                match input {
                    Input::Step { from, batch, gone } => {
                        match batch.decode() {
                            Ok(messages) => {
                                for (p, m) in messages {
                                    self.step(p, m);
                                }
                            }
                            Err(e) => {
                                tracing::warn!(peer = %from, error = %e, "dropping an undecodable raft frame")
                            }
                        }
                        for (p, index) in gone {
                            if let Err(e) = self.raft.gone(p, index) {
                                tracing::error!(error = %e, "the raft log cannot be written: stopping the node");
                                std::process::abort();
                            }
                        }
                    }
                    Input::StepKept(messages) => {
                        for (p, m, file) in messages {
                            self.step(p, m);
                            if let Some(file) = file {
                                self.raft.kept_snapshot(p, file);
                            }
                        }
                    }
                    Input::ProposeMeta { data, forwarded } => self.propose_meta(data, forwarded),
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
                        if let Err(e) = self.raft.compact_all(points) {
                            tracing::error!(error = %e, "the raft log cannot be compacted: stopping the node");
                            std::process::abort();
                        }
                    }
                    Input::Installed(points) => {
                        for (partition, index) in points {
                            if let Err(e) = self.raft.installed(partition, index) {
                                tracing::error!(error = %e, "the raft log cannot be written: stopping the node");
                                std::process::abort();
                            }
                        }
                    }
                    Input::Unpacked { partition, index } => {
                        for batch in self.unpacking.finished(partition, index) {
                            self.send(batch);
                        }
                    }
                    Input::Retire => self.retiring = true,
                    Input::SnapshotLost { partition, to } => {
                        self.snapshots_out.remove(&(partition, to));
                        self.raft.snapshot_failed(partition, to);
                    }
                    Input::Synced(rounds) => {
                        self.syncing -= rounds.len();
                        for unsynced in rounds {
                            let out = self.raft.persisted(unsynced);
                            self.deliver(out);
                        }
                    }
                    Input::Stop => stop = true,
                }
                spent.add(kind, began.elapsed());
            }
            let now = Instant::now();
            self.window.update(now);
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
            let stepped = now.duration_since(round_started);
            self.hand_over(now);
            self.expire_snapshots(now);
            self.caught_up(now);
            self.balance(now);
            self.reconcile(now);
            let planned = now.elapsed();
            let wrote = self.round();
            let took = round_started.elapsed();
            if took >= SLOW_ROUND {
                // peers hear nothing from this node meanwhile: a leader elsewhere that misses its
                // followers for an election timeout steps down
                tracing::warn!(?took, ?stepped, ?planned, ?wrote, inputs = spent.inputs, steps = ?spent.steps, synced = ?spent.synced, compactions = ?spent.compactions, other = ?spent.other, "a slow raft driver round");
            }
            if stop {
                return;
            }
        }
    }

    /// Steps a peer's message; a leader's message for a group not kept here starts a replica (the leader
    /// added this node). A retiring node takes no leadership; a replica whose store is behind its log
    /// (installing a snapshot of the partition, or applying a backlog) takes it once it has caught up
    /// (see `behind.rs`): it could not serve before.
    fn step(&mut self, p: PartitionId, m: raft::eraftpb::Message) {
        let m = if m.get_msg_type() == raft::eraftpb::MessageType::MsgTimeoutNow {
            if self.retiring {
                return;
            }
            let applied = self.shared.upgrade().map_or(0, |s| s.applied(p));
            match self.behind.offered(p, m, applied, Instant::now()) {
                Some(m) => m,
                None => return,
            }
        } else {
            m
        };
        if self.raft.has(p) {
            self.raft.step(p, m);
            return;
        }
        // kept for a second step, if the group is created (cloned only here: an append's entries)
        if self.raft.step(p, m.clone()) == Stepped::Unknown {
            let known = self
                .shared
                .upgrade()
                .is_some_and(|s| (p as usize) < s.kept.len());
            if !known {
                return;
            }
            if let Err(e) = self.raft.create(p) {
                tracing::error!(error = %e, "the raft log cannot be written: stopping the node");
                std::process::abort();
            }
            self.reconfigured(&[p]);
            self.raft.step(p, m);
        }
    }

    /// Takes the leaderships offered while the apply thread was behind, and sends the vote requests of
    /// the campaigns started meanwhile, now that it has caught up.
    fn caught_up(&mut self, now: Instant) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let due = self.behind.due(|p| shared.applied(p), now);
        for batch in due.campaigns {
            self.send(batch);
        }
        for (p, m) in due.offers {
            if !self.retiring {
                tracing::info!(
                    partition = p,
                    "taking a leadership offered while this node was applying"
                );
                self.raft.step(p, m);
            }
        }
    }

    /// Proposes a membership command if this node leads the metadata group, else sends it to the leader.
    fn propose_meta(&mut self, data: Vec<u8>, forwarded: bool) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let meta = shared.layout().meta();
        match self.raft.propose(meta, data.clone()) {
            Ok(()) => {}
            Err(ProposeError::NotLeader {
                leader: Some(leader),
            }) if !forwarded => {
                if let Some(peer) = shared.peer(leader) {
                    let command = String::from_utf8_lossy(&data).into_owned();
                    let _ = peer.send(&PeerFrame::Meta { command });
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "membership command not proposed (the caller retries)")
            }
        }
    }

    fn propose(&mut self, partition: PartitionId, id: u64, data: Vec<u8>, done: ProposalDone) {
        if self.handing_over.is_some() {
            return done(Err(ChatError::unavailable("the node is handing over")));
        }
        self.window.proposed();
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
            let layout = shared.layout();
            let Some(preferred) = layout.target(p).first() else {
                continue;
            };
            if layout.receiving(preferred) {
                // busy installing its share: it leads once it holds it
                continue;
            }
            let to = raft_id(preferred);
            if to == self.raft.id() {
                continue;
            }
            let long_enough = self.led_since.get(&p).is_some_and(|since| {
                now.duration_since(*since) >= settle * BALANCE_AFTER_ELECTIONS
            });
            let refused = self.refused.get(&p).is_some_and(|until| now < *until);
            if long_enough
                && !refused
                && !self.moving.contains_key(&p)
                && self.raft.caught_up(p, to)
            {
                shared.set_moving(p, true);
                self.moving.insert(p, Handing::new(to, now));
            }
        }
    }

    /// Transfers the partitions being moved whose proposals in flight are all applied; gives a move up
    /// after an election timeout, or as soon as raft gave the transfer up (the replica did not take the
    /// leadership: its store is behind, see `behind.rs`): the partition is served here again at once, and
    /// the balancer asks again only some elections later. (A move of a leader that goes is asked again
    /// by `moves.rs`.)
    fn transfer_drained(&mut self, now: Instant) {
        if self.moving.is_empty() {
            return;
        }
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let mut done = Vec::new();
        for (&p, h) in &mut self.moving {
            let waited = now.duration_since(h.since);
            if waited >= self.election {
                done.push(p);
            } else if h.asked {
                // (no longer leading: it was taken, and the leadership change ends the move)
                if self.raft.is_leader(p) && !self.raft.transferring(p) {
                    tracing::info!(
                        partition = p,
                        to = h.to,
                        "the leadership transfer was not taken: serving it here again"
                    );
                    self.refused
                        .insert(p, now + self.election * BALANCE_AFTER_ELECTIONS);
                    done.push(p);
                }
            } else if waited >= DRAIN_POLL * DRAIN_QUIET_ROUNDS
                && shared.in_flight_in(p) == 0
                && self.raft.transfer_if_caught_up(p, h.to)
            {
                h.asked = true;
                tracing::info!(partition = p, to = h.to, drained = ?waited, "handing the leadership to the preferred replica");
            }
        }
        for p in done {
            self.moving.remove(&p);
            shared.set_moving(p, false);
        }
        self.refused.retain(|_, until| now < *until);
    }

    /// Encodes what the groups produced for the log, sends and publishes what need not wait for the sync,
    /// and hands the write and the sync to the writer and sync threads (what waits for it is released
    /// when the sync thread answers, see [`Input::Synced`]). Rounds are synced in order: a round that
    /// wrote nothing waits behind the syncs in flight, else it is done here. Returns how long the poll
    /// and the encoding took (with `durability = "os"`, the writes too, which are made here).
    fn round(&mut self) -> Duration {
        let started = Instant::now();
        let (out, unsynced) = match self.raft.poll_write() {
            Ok(written) => written,
            Err(e) => {
                tracing::error!(error = %e, "the raft log cannot be written: stopping the node");
                std::process::abort();
            }
        };
        let wrote = started.elapsed();
        if out.synced {
            self.last_sync = Some(started);
        }
        self.deliver(out);
        if unsynced.needs_sync() || (self.syncing > 0 && !unsynced.is_empty()) {
            self.syncing += 1;
            if self.to_disk.send(unsynced).is_err() {
                tracing::error!("the raft log sync thread is gone: stopping the node");
                std::process::abort();
            }
        } else if !unsynced.is_empty() {
            let out = self.raft.persisted(unsynced);
            self.deliver(out);
        }
        self.metrics
            .raft_poll_seconds
            .observe(started.elapsed().as_secs_f64());
        wrote
    }

    /// Sends, hands to the apply thread and publishes what a half of a poll produced.
    fn deliver(&mut self, out: crate::raft::multi::Output) {
        let (snapshots, bytes) = MultiRaft::snapshots_in(&out.batches);
        if snapshots > 0 {
            self.metrics.raft_snapshots_sent.inc_by(snapshots as u64);
            self.metrics.move_bytes.inc_by(bytes);
        }
        for (p, snapshot) in &out.installs {
            self.unpacking
                .started(*p, snapshot.get_metadata(), self.raft.id());
            self.behind.handed(*p, snapshot.get_metadata().index);
        }
        let shared = self.shared.upgrade();
        let applied = |p| shared.as_ref().map_or(0, |s| s.applied(p));
        let now = Instant::now();
        for batch in out.batches {
            let batch = self.unpacking.withhold(batch);
            let batch = self.behind.campaigns(batch, applied, now);
            self.send(batch);
        }
        if !out.installs.is_empty() {
            let _ = self.apply.send(ApplyInput::Install(out.installs));
        }
        if !out.removed.is_empty() {
            let _ = self.apply.send(ApplyInput::Drop(out.removed.clone()));
        }
        if !out.committed.is_empty() {
            // entries come in log order per group: the last of each group is its commit index
            let mut seen = std::collections::HashSet::new();
            for c in out.committed.iter().rev() {
                if seen.insert(c.partition) {
                    self.metrics.raft_partition.set_commit(c.partition, c.index);
                    self.behind.handed(c.partition, c.index);
                }
            }
            let _ = self.apply.send(ApplyInput::Committed(out.committed));
        }
        // snapshots let go before the wants: the apply thread then makes another if one is wanted again
        let released = self.raft.release_snapshots();
        if !released.is_empty() {
            let _ = self.apply.send(ApplyInput::Released(released));
        }
        // after the round's entries (a snapshot then carries the configuration they changed)
        let wanted = self.raft.wanted_snapshots();
        if !wanted.is_empty() {
            let _ = self.apply.send(ApplyInput::MakeSnapshots(wanted));
        }
        let mut changed = out.reconfigured;
        changed.extend(out.removed.iter().copied());
        if !changed.is_empty() {
            self.reconfigured(&changed);
        }
        if !out.leadership.is_empty() {
            self.publish(&out.leadership);
            let _ = self.apply.send(ApplyInput::Leadership(out.leadership));
        }
    }

    /// Sends a batch to its node: snapshots of a partition's data in pieces on the link's bulk lane (see
    /// [`PeerFrame::RaftPart`]), everything else in one frame (or a few, if large). A snapshot that cannot
    /// be queued (the link is down) is reported failed at once, so that raft sends it again.
    fn send(&mut self, batch: Batch) {
        let to = batch.to;
        let Some(peer) = self.shared.upgrade().and_then(|s| s.peer(to)) else {
            return;
        };
        let (snapshots, messages): (Vec<_>, Vec<_>) = batch
            .messages
            .into_iter()
            .partition(|(_, m)| m.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot);
        let mut gone = batch.gone;
        let chunks = encode(&messages);
        let binary = peer.binary();
        let frame = |batch: Vec<u8>, gone: Vec<(PartitionId, u64)>| {
            if binary {
                PeerFrame::RaftBytes {
                    batch: batch.into(),
                    gone,
                }
            } else {
                PeerFrame::Raft {
                    batch: base64(&batch),
                    gone,
                }
            }
        };
        if chunks.is_empty() && !gone.is_empty() {
            let _ = peer.send(&frame(Vec::new(), gone));
        } else {
            for chunk in chunks {
                // a link that is down drops the frame; raft resends after the heartbeat or election timeout
                let _ = peer.send(&frame(chunk, std::mem::take(&mut gone)));
            }
        }
        for (p, snapshot) in snapshots {
            // encoded and queued on the snapshot thread: tens of MiB must not hold up this one
            self.snapshots_out.insert(
                (p, to),
                SnapshotSent {
                    at: Instant::now(),
                    receiver: peer.incarnation(),
                },
            );
            if self
                .snapshots
                .send(SnapshotOut {
                    peer: peer.clone(),
                    to,
                    partition: p,
                    message: snapshot,
                })
                .is_err()
            {
                self.raft.snapshot_failed(p, to);
            }
        }
    }

    /// Reports failed the snapshots that their replica has not acknowledged and that were sent long ago
    /// (refused, or lost) or to a replica that has restarted since (raft-rs would wait for the
    /// acknowledgement until the timeout): raft then probes the replica again and sends a new one if it
    /// still needs it. A link that only dropped and came back is not enough: under load links drop while
    /// a snapshot received whole waits for its installation, and sending it again doubled what a 1 GiB
    /// move streamed.
    fn expire_snapshots(&mut self, now: Instant) {
        let shared = self.shared.upgrade();
        let restarted = |to: u64, receiver: u64| {
            shared
                .as_ref()
                .and_then(|s| s.peer(to))
                .is_some_and(|peer| peer.incarnation() != receiver)
        };
        let expired: Vec<(PartitionId, u64)> = self
            .snapshots_out
            .iter()
            .filter(|((_, to), sent)| {
                now.duration_since(sent.at) >= SNAPSHOT_TIMEOUT || restarted(*to, sent.receiver)
            })
            .map(|(key, _)| *key)
            .collect();
        for (p, to) in expired {
            self.snapshots_out.remove(&(p, to));
            if self.raft.awaits_snapshot(p, to) {
                tracing::warn!(
                    partition = p,
                    to,
                    "a snapshot sent was not acknowledged: sending again"
                );
                self.raft.snapshot_failed(p, to);
            }
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
                    v.leader = c.leader.unwrap_or(0);
                    v.term = c.term;
                }
            }
        }
        self.metrics
            .raft_leader_changes
            .inc_by(changes.len() as u64);
        let led = self.raft.led().count();
        shared.led.store(led, Ordering::Relaxed);
        let meta = shared.layout().meta();
        let led_partitions = self.raft.led().filter(|p| *p != meta).count();
        self.metrics
            .raft_partitions_led
            .set(i64::try_from(led_partitions).unwrap_or(i64::MAX));
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
        for c in changes {
            if !c.local {
                self.lost(c.partition);
            }
        }
        let changed: Vec<PartitionId> = changes.iter().map(|c| c.partition).collect();
        shared.emit(Event::Leaders(&changed));
    }
}

/// The log writer thread: writes each of the driver's rounds to the log file as it comes, while the sync
/// thread makes the rounds before it durable, then hands it on to the sync thread. The driver keeps
/// stepping, ticking and answering heartbeats meanwhile: under the page cache's writeback a write can
/// block for seconds, and a driver blocked that long would look dead to its peers. Ends when the driver
/// does.
pub(super) fn write_rounds(rounds: mpsc::Receiver<Unsynced>, sync: mpsc::Sender<Unsynced>) {
    while let Ok(round) = rounds.recv() {
        let started = Instant::now();
        if let Err(e) = round.write() {
            tracing::error!(error = %e, "the raft log cannot be written: stopping the node");
            std::process::abort();
        }
        let took = started.elapsed();
        if took >= SLOW_ROUND {
            tracing::warn!(?took, "a slow raft log write");
        }
        if sync.send(round).is_err() {
            return;
        }
    }
}

/// The sync thread: makes the rounds the writer thread wrote durable in their order, several at a time
/// when they come faster than one sync (group commit), and hands them back to the driver. Ends when the
/// writer thread does.
pub(super) fn sync_rounds(rounds: mpsc::Receiver<Unsynced>, driver: mpsc::Sender<Input>) {
    while let Ok(first) = rounds.recv() {
        let mut batch = vec![first];
        batch.extend(rounds.try_iter());
        let started = Instant::now();
        if let Err(e) = Unsynced::sync_together(&batch) {
            tracing::error!(error = %e, "the raft log cannot be synced: stopping the node");
            std::process::abort();
        }
        let took = started.elapsed();
        if took >= SLOW_ROUND {
            tracing::warn!(?took, rounds = batch.len(), "a slow raft log sync");
        }
        if driver.send(Input::Synced(batch)).is_err() {
            return;
        }
    }
}

/// A snapshot handed to the snapshot thread, not yet known acknowledged.
struct SnapshotSent {
    at: Instant,
    /// The receiver's [`Peer::incarnation`] then.
    receiver: u64,
}

/// A snapshot for the snapshot thread to send.
pub(super) struct SnapshotOut {
    peer: Arc<crate::cluster::peer::Peer>,
    to: u64,
    partition: PartitionId,
    message: raft::eraftpb::Message,
}

/// `cluster.sync_window_ms`: how long after a round that synced the log the next one waits, so that
/// the proposals and acknowledgements that come meanwhile share its write, its fsync, its frames to each
/// replica and its apply batch. Each round costs the same fixed work (thread wake-ups on this node and
/// its peers, a sync) however much it carries, so under load fewer, fuller rounds leave CPU to the
/// messages; but a message waits for the window on the leader and again on its followers. The window is
/// therefore [`SyncWindow::MIN`] on a quiet node and grows with the rate at which this node's leaders
/// take proposals, [`SyncWindow::PER_PROPOSAL`] for each proposal a second, up to the configured most.
pub(super) struct SyncWindow {
    max: Duration,
    /// Proposals since `since`.
    counted: u32,
    since: Instant,
    /// Proposals a second, smoothed (none measured yet: `None`).
    rate: Option<f64>,
    window: Duration,
}

impl SyncWindow {
    /// The window of a quiet node (or the most, if less).
    pub(super) const MIN: Duration = Duration::from_millis(1);
    /// What each proposal a second adds: 5 ms at about 670 a second, a third of 2,000 msgs/s on three
    /// nodes.
    pub(super) const PER_PROPOSAL: Duration = Duration::from_micros(6);
    /// How often the rate is measured.
    const SAMPLE: Duration = Duration::from_millis(100);

    pub(super) fn new(max: Duration, now: Instant) -> SyncWindow {
        SyncWindow {
            max,
            counted: 0,
            since: now,
            rate: None,
            window: Self::MIN.min(max),
        }
    }

    pub(super) fn proposed(&mut self) {
        self.counted = self.counted.saturating_add(1);
    }

    /// Measures the rate once per [`SyncWindow::SAMPLE`] and sets the window from it.
    pub(super) fn update(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.since);
        if elapsed < Self::SAMPLE {
            return;
        }
        let sample = f64::from(self.counted) / elapsed.as_secs_f64();
        let rate = self.rate.map_or(sample, |r| 0.7 * r + 0.3 * sample);
        self.rate = Some(rate);
        self.counted = 0;
        self.since = now;
        self.window = Self::MIN
            .saturating_add(Self::PER_PROPOSAL.mul_f64(rate.min(1e6)))
            .min(self.max);
    }

    pub(super) fn get(&self) -> Duration {
        self.window
    }
}

/// `cluster.move_mib_per_s`: the snapshot thread's pace. Each piece queued books its bytes at the budget's
/// rate from when the last one's time ran out (or from now, if the thread was idle), and the thread waits
/// until then: a steady rate, with no burst saved up while idle.
pub(super) struct Pace {
    bytes_per_s: u64,
    free_at: Option<Instant>,
}

impl Pace {
    /// A pace of `bytes_per_s` (0: none).
    pub(super) fn new(bytes_per_s: u64) -> Pace {
        Pace {
            bytes_per_s,
            free_at: None,
        }
    }

    /// How long to wait, at `now`, after sending `bytes`.
    pub(super) fn after(&mut self, now: Instant, bytes: usize) -> Duration {
        if self.bytes_per_s == 0 {
            return Duration::ZERO;
        }
        let from = self.free_at.map_or(now, |at| at.max(now));
        #[allow(clippy::cast_precision_loss)]
        let booked = Duration::from_secs_f64(bytes as f64 / self.bytes_per_s as f64);
        let free_at = from + booked;
        self.free_at = Some(free_at);
        free_at.saturating_duration_since(now)
    }
}

/// The snapshot thread: encodes each snapshot and queues it in [`SNAPSHOT_PIECE`]s on its link's bulk
/// lane (see [`PeerFrame::RaftPart`]); one that cannot be queued (the link is down) is reported lost to
/// the driver, so that raft sends it again. Ends when the driver does.
pub(super) fn send_snapshots(
    snapshots: mpsc::Receiver<SnapshotOut>,
    driver: mpsc::Sender<Input>,
    mut pace: Pace,
) {
    let mut id = 0u64;
    while let Ok(out) = snapshots.recv() {
        // the snapshot's data is not copied (see `encode_snapshot`); base64 is ASCII, so any byte offset
        // of it is a character boundary
        let binary = out.peer.binary();
        let parts = encode_snapshot(out.partition, &out.message).unwrap_or_default();
        let parts = if binary {
            parts
        } else {
            vec![bytes::Bytes::from(base64(&parts.concat()).into_bytes())]
        };
        let cut = pieces(&parts, SNAPSHOT_PIECE);
        let count = cut.len();
        id += 1;
        let mut sent = true;
        for (i, part) in cut.into_iter().enumerate() {
            let len = part.len();
            let last = i + 1 == count;
            let frame = if binary {
                PeerFrame::RaftPartBytes { id, part, last }
            } else {
                PeerFrame::RaftPart {
                    id,
                    part: String::from_utf8(part.to_vec()).unwrap_or_default(),
                    last,
                }
            };
            sent = out.peer.send_bulk(&frame).is_ok();
            if !sent {
                break;
            }
            let wait = pace.after(Instant::now(), len);
            if !wait.is_zero() {
                std::thread::sleep(wait);
            }
        }
        if !sent {
            let lost = Input::SnapshotLost {
                partition: out.partition,
                to: out.to,
            };
            if driver.send(lost).is_err() {
                return;
            }
        }
    }
}

/// The receiving thread: decodes peers' snapshot batches and keeps each snapshot's data in a file of
/// its own, written and synced here ([`KeptSnapshot::write`]), before handing them to the driver to
/// step: the log's record for it then names the file, and the driver's rounds (every partition's)
/// carry no data (see `RaftLog`'s module docs). A snapshot whose file cannot be written goes on
/// without one (its data then goes in the log, as before). Ends when the driver does.
pub(super) fn keep_snapshots(
    batches: mpsc::Receiver<(NodeId, super::wire::Received)>,
    driver: mpsc::Sender<Input>,
    dir: &std::path::Path,
    fsync: bool,
) {
    while let Ok((from, batch)) = batches.recv() {
        let messages = match batch.decode() {
            Ok(messages) => messages,
            Err(e) => {
                tracing::warn!(peer = %from, error = %e, "dropping an undecodable raft snapshot batch");
                continue;
            }
        };
        let messages = messages
            .into_iter()
            .map(|(p, m)| {
                let snapshot = m.get_snapshot();
                let file = (m.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot
                    && !snapshot.get_data().is_empty())
                .then(|| {
                    let started = Instant::now();
                    KeptSnapshot::write(dir, p, snapshot, fsync)
                        .inspect(|_| {
                            tracing::debug!(partition = p, bytes = snapshot.get_data().len(), took = ?started.elapsed(), "kept a received snapshot's data")
                        })
                        .inspect_err(|e| {
                            tracing::warn!(partition = p, error = %e, "cannot keep a received snapshot's data in a file: it goes in the raft log")
                        })
                        .ok()
                })
                .flatten();
                (p, m, file)
            })
            .collect();
        if driver.send(Input::StepKept(messages)).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sync_window_grows_with_the_proposal_rate_up_to_its_most() {
        let start = Instant::now();
        let mut w = SyncWindow::new(Duration::from_millis(5), start);
        assert_eq!(w.get(), SyncWindow::MIN, "a quiet node waits the least");
        let mut at = start;
        // 100 proposals a second: 1.6 ms
        for _ in 0..20 {
            for _ in 0..10 {
                w.proposed();
            }
            at += Duration::from_millis(100);
            w.update(at);
        }
        let low = w.get();
        assert!(
            low > SyncWindow::MIN && low < Duration::from_millis(2),
            "{low:?}"
        );
        // 2,000 a second: capped at the most
        for _ in 0..20 {
            for _ in 0..200 {
                w.proposed();
            }
            at += Duration::from_millis(100);
            w.update(at);
        }
        assert_eq!(w.get(), Duration::from_millis(5));
        // quiet again: back to the least within a few seconds
        for _ in 0..40 {
            at += Duration::from_millis(100);
            w.update(at);
        }
        assert!(
            w.get() < SyncWindow::MIN + Duration::from_micros(50),
            "{:?}",
            w.get()
        );
        // a most below the least (0: never wait) holds whatever the rate
        let mut none = SyncWindow::new(Duration::ZERO, start);
        for _ in 0..500 {
            none.proposed();
        }
        none.update(start + Duration::from_millis(100));
        assert_eq!(none.get(), Duration::ZERO);
    }

    #[test]
    fn the_snapshot_pace_holds_its_rate_and_saves_no_burst_while_idle() {
        let start = Instant::now();
        let mut none = Pace::new(0);
        assert_eq!(none.after(start, 1 << 30), Duration::ZERO);
        // 1 MiB/s: a piece of 1 MiB books one second, the next one the second after
        let mut pace = Pace::new(1 << 20);
        assert_eq!(pace.after(start, 1 << 20), Duration::from_secs(1));
        assert_eq!(
            pace.after(start + Duration::from_secs(1), 1 << 19),
            Duration::from_millis(500)
        );
        // sent late (the link was slow): the wait is what is left of the booking
        assert_eq!(
            pace.after(start + Duration::from_millis(1_200), 1 << 19),
            Duration::from_millis(800)
        );
        // idle for a minute: the next piece books from now, not from the past
        let later = start + Duration::from_secs(60);
        assert_eq!(pace.after(later, 1 << 20), Duration::from_secs(1));
    }
}
