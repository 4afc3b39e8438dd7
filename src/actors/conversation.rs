//! `ConvActor`: one per conversation (`dm:A:B`, and groups: see `group.rs`), on the leader of its
//! partition. Owns the conversation's sequence numbers, its messages, `cid` dedupe, read and delivery
//! positions, and the pair's friendship. The rules of every state change are the pure core's
//! ([`crate::state::conv`]): the actor turns requests into [`ConvCommand`]s and publishes the outcomes.
//! Replicated, it proposes each command to the partition's Raft log (reading the history through its
//! proposals still in flight, [`Overlay`]) and every replica, this node's included, makes the writes when
//! the entry is applied; a single replica makes them itself, as an unreplicated node.
//!
//! Order and durability: a `send` gets the next seq; its message, dedupe entry and the sender's read
//! position are written together; `sent` and the pushes go out only once that is durable (committed on a
//! majority and applied here, or covered by the group-commit flush), in seq order. So no member ever sees a
//! seq that a crash could take back, and everyone sees the same seq for the same message. A proposal that
//! will not be applied (leadership moved) fails what is in flight with `unavailable` and stops the actor.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_util::future::join_all;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::oneshot;

use crate::actors::friendship::FriendOp;
use crate::actors::limits::Window;
use crate::actors::pull::PullView;
use crate::actors::session::Outbound;
use crate::actors::user::{AddConv, SetFriend};
use crate::actors::{now_ms, now_us};
use crate::cluster::pulls::{FetchMany, FetchedMany};
use crate::cluster::Router;
use crate::error::{ChatError, ChatResult};
use crate::ids::{Cid, ConvId, DeviceId, UserId};
use crate::net::protocol::{self, ConvSummary, Mention, ReceiptDetail, ServerFrame};
use crate::net::ws::WireFrame;
pub use crate::state::conv::Posted;
use crate::state::conv::{Appended, ConvCommand, ConvState, Outcome, Rules, Write};
use crate::state::overlay::Overlay;
use crate::state::replica::{CarriedEvent, Command};
use crate::store::ConvHistory;

/// Post a message; answered with its seq and ts once it is durable.
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "ChatResult<Posted>")]
pub struct Post {
    pub from: UserId,
    pub device: DeviceId,
    pub cid: Cid,
    pub body: Box<RawValue>,
    /// The earlier message this one answers.
    #[serde(default)]
    pub reply_to: Option<u64>,
    /// Members it mentions (or everyone).
    #[serde(default)]
    pub mentions: Option<Vec<Mention>>,
}

/// A device of `user` has received everything up to `seq`.
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "ChatResult<()>")]
pub struct Ack {
    pub user: UserId,
    pub seq: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub enum Range {
    After(u64),
    Before(u64),
}

/// Messages for `sync`.
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "ChatResult<Fetched>")]
pub struct Fetch {
    pub user: UserId,
    pub range: Range,
    pub limit: usize,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Fetched {
    pub msgs: Vec<Box<RawValue>>,
    pub last_seq: u64,
}

/// This conversation's entry in `user`'s `convs` (None if there is nothing to list).
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "Option<Summary>")]
pub struct Summarize {
    pub user: UserId,
}

#[derive(Serialize, Deserialize)]
pub struct Summary {
    pub entry: ConvSummary,
    /// When the last message was accepted, in microseconds (orders `convs`; finer than `ts`).
    pub last_activity_us: u64,
}

/// `user` has read up to `seq`.
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "ChatResult<()>")]
pub struct MarkRead {
    pub user: UserId,
    pub device: DeviceId,
    pub seq: u64,
}

/// Who has read message `seq`.
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "ChatResult<ReceiptDetail>")]
pub struct GetReceipts {
    pub user: UserId,
    pub seq: u64,
    pub counts: bool,
}

/// `user` is typing.
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "ChatResult<()>")]
pub struct Typing {
    pub user: UserId,
}

/// Recall message `seq` (its sender only, within the recall window).
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "ChatResult<()>")]
pub struct Recall {
    pub user: UserId,
    pub device: DeviceId,
    pub seq: u64,
}

/// A friendship operation by `user` on this pair.
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "ChatResult<()>")]
pub struct Friendship {
    pub user: UserId,
    pub op: FriendOp,
}

/// The flusher made everything registered under `epoch` durable (with replication: the proposal numbered
/// `epoch` is committed and applied here).
#[derive(Message)]
#[rtype(result = "()")]
struct Flushed(u64);

/// A proposal will not be answered by its entry (leadership moved): the actor's state may be ahead of the
/// log, so it fails what it has in flight with `unavailable` and stops; the next request starts a fresh
/// actor from the store on whichever node leads.
#[derive(Message)]
#[rtype(result = "()")]
struct Lost(ChatError);

/// This node no longer leads the conversation's partition (sent by the router): what is in flight fails
/// with `unavailable` and the actor stops.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Retire;

/// What to do once a write is durable.
enum Done {
    Posted {
        tx: oneshot::Sender<ChatResult<Posted>>,
        posted: Posted,
        /// What to publish; None for a duplicate `cid` (nothing new).
        fanout: Option<Publish>,
    },
    Replied {
        tx: oneshot::Sender<ChatResult<()>>,
        /// A frame for these users' devices, but the one that asked.
        fanout: Option<Delivery>,
    },
    /// A stored message changed: what pulls show of it is rendered again, once the change is in the store
    /// (with replication the store takes it only when its entry is applied, so rendering it at once read
    /// the message as it was).
    Rerender(Rerender),
}

/// How a changed message is rendered again for pulls (see [`ConvActor::rerender`]).
pub(super) enum Rerender {
    /// Its reactions changed: the message and its reaction counts as stored.
    Stored(u64),
    /// Edited: this JSON, with the stored reaction counts.
    Edited(u64, String),
    /// Recalled: this JSON as it is.
    Recalled(u64, String),
}

/// A new message, published once durable.
struct Publish {
    /// The `msg` push.
    frame: WireFrame,
    /// The stored JSON (for `convs` and for pulls of recent messages).
    json: String,
    from: UserId,
    /// The device whose frame caused it.
    device: Option<DeviceId>,
    /// Non-members who get it too (those a membership change removed).
    also: Vec<UserId>,
}

/// A frame for these users' devices, but the one whose frame caused it.
struct Delivery {
    recipients: Vec<UserId>,
    frame: WireFrame,
    except: Option<(UserId, DeviceId)>,
}

struct PendingWrite {
    epoch: u64,
    done: Done,
}

pub struct ConvActor {
    /// Sequence, members, read positions, friendship: changed only by [`ConvActor::execute`].
    pub(super) state: ConvState,
    rules: Rules,
    pub(super) router: Router,
    last_activity_us: u64,
    last_json: Option<String>,
    /// The highest seq whose `sent` and pushes went out: what `notify`, `sync` and `convs` may show (a
    /// message written but not yet durable could still be lost to a crash).
    published_seq: u64,
    /// A group's members, published seq and recent messages, shared with the router so pulls are served
    /// without this actor (see [`PullView`]); None for a direct conversation or a group that does not exist.
    pub(super) view: Option<Arc<PullView>>,
    /// Read positions advanced by sends and not yet written (written once per flush epoch).
    dirty_reads: Vec<UserId>,
    delivered: HashMap<UserId, u64>,
    pending: VecDeque<PendingWrite>,
    epoch: u64,
    durable_epoch: u64,
    waiting: Option<u64>,
    /// The first message waits until both users have the conversation in their index.
    index_pending: bool,
    /// Deliveries not yet handed to sessions, in seq order; worked off `FANOUT_BATCH` recipients per turn.
    fanout: VecDeque<FanoutJob>,
    pumping: bool,
    /// Fan-outs go through the workers' lanes: set once the group has more than [`FANOUT_BATCH`]
    /// members, and kept while the actor lives, so a shrinking group's pushes cannot overtake each other.
    lanes: bool,
    /// Large groups: at most one `notify` per window.
    notify_window: Window,
    notify_scheduled: bool,
    pub(super) last_active: Instant,
    /// With replication: changes are proposed to the partition's log, and the store is written only when
    /// the committed entry is applied (by the node's replica, as on every other replica).
    replicated: bool,
    /// What the actor proposed and has not seen applied yet (read before the store).
    overlay: Overlay,
    addr: Option<Addr<ConvActor>>,
    /// Stopped after a lost proposal or a move: changes are refused (messages still in the mailbox are
    /// handled while the actor stops).
    retired: bool,
}

/// Recipients handed to sessions per step of a fan-out. The steps of one fan-out run in the same poll of
/// the actor (`ctx.notify` to itself is handled at once): what interleaves a big group's deliveries with
/// other work is the workers' lanes. Yielding the arbiter between steps was measured and made no difference
/// (bench/README.md, fourth sitting).
const FANOUT_BATCH: usize = 512;

/// One delivery to many users: `except` is the device whose frame caused it.
struct FanoutJob {
    recipients: Vec<UserId>,
    next: usize,
    out: Outbound,
    except: Option<(UserId, DeviceId)>,
    /// Through the workers' lanes.
    bulk: bool,
}

/// Hands `out` to this node's sessions of `users` (but `except`), through their workers' lanes if `bulk`.
fn deliver(
    router: &Router,
    users: &[UserId],
    out: &Outbound,
    except: Option<&(UserId, DeviceId)>,
    bulk: bool,
) {
    if bulk {
        router.push_bulk(users, out, except);
        return;
    }
    for user in users {
        let skip = except.filter(|(u, _)| u == user).map(|(_, d)| d);
        router.push_local(user, out, skip);
    }
}

/// Continue a fan-out on the next turn.
#[derive(Message)]
#[rtype(result = "()")]
struct Pump;

#[derive(Deserialize)]
struct FromOnly {
    from: UserId,
}

impl ConvActor {
    pub fn new(id: ConvId, router: Router) -> ConvActor {
        let store = router.store();
        let (state, last_json) = store.conv_state_and_last(&id).unwrap_or_else(|e| {
            tracing::error!(conv = %id, error = %e, "cannot load conversation");
            (ConvState::empty(id.clone()), None)
        });
        let window = Duration::from_millis(router.config().chat.notify_window_ms);
        let replicated = router
            .replication()
            .is_some_and(|r| r.replicated(id.as_str()));
        let view = state
            .group
            .as_ref()
            .map(|_| Arc::new(PullView::new(id, state.members.clone(), state.last_seq)));
        ConvActor {
            replicated,
            overlay: Overlay::default(),
            addr: None,
            retired: false,
            rules: Rules::from_config(&router.config().chat),
            router,
            last_activity_us: state.last_ts.saturating_mul(1000),
            last_json,
            published_seq: state.last_seq,
            state,
            view,
            dirty_reads: Vec::new(),
            delivered: HashMap::new(),
            pending: VecDeque::new(),
            epoch: 0,
            durable_epoch: 0,
            waiting: None,
            index_pending: false,
            fanout: VecDeque::new(),
            pumping: false,
            lanes: false,
            notify_window: Window::new(window),
            notify_scheduled: false,
            last_active: Instant::now(),
        }
    }

    pub(super) fn check_member(&self, user: &UserId) -> ChatResult<()> {
        self.state.check_member(user)
    }

    /// Applies `cmd` through the conversation's core and makes its writes (a read position advanced by a
    /// post rides on the next flush). A store failure leaves the state as the store has it.
    pub(super) fn execute(&mut self, cmd: ConvCommand) -> ChatResult<Outcome> {
        if self.retired {
            return Err(ChatError::unavailable(format!(
                "{} moved to another node; resend with the same cid",
                self.state.id
            )));
        }
        if self.replicated {
            return self.propose(cmd);
        }
        let store = self.router.store();
        let mut writes = Vec::new();
        let id = self.state.id.clone();
        let history = ConvHistory { store, conv: &id };
        let outcome = self.state.apply(cmd, &self.rules, &history, &mut writes)?;
        crate::webhooks::events::for_outcome(&self.router, &self.state, &outcome, &mut writes);
        writes.retain(|w| match w {
            Write::SenderRead { user, .. } => {
                if !self.dirty_reads.contains(user) {
                    self.dirty_reads.push(user.clone());
                }
                false
            }
            _ => true,
        });
        if let Err(e) = store.write_conv(&self.state.id, &writes) {
            match store.conv_state(&self.state.id) {
                Ok(state) => self.state = state,
                Err(e) => {
                    tracing::error!(conv = %self.state.id, error = %e, "cannot reload conversation")
                }
            }
            return Err(e.into());
        }
        Ok(outcome)
    }

    /// [`ConvActor::execute`] with replication: the core decides against the store seen through what is
    /// still in flight, and the command (with the webhook events decided here) is proposed as epoch
    /// `self.epoch`; [`Flushed`] comes once its entry is applied on this node, [`Lost`] if it will not be.
    fn propose(&mut self, cmd: ConvCommand) -> ChatResult<Outcome> {
        let Some(replication) = self.router.replication().cloned() else {
            return Err(ChatError::internal("replication is not running"));
        };
        let mut writes = Vec::new();
        let id = self.state.id.clone();
        let stored = ConvHistory {
            store: self.router.store(),
            conv: &id,
        };
        let history = self.overlay.over(&stored);
        let outcome = self
            .state
            .apply(cmd.clone(), &self.rules, &history, &mut writes)?;
        if writes.is_empty() {
            return Ok(outcome);
        }
        crate::webhooks::events::for_outcome(&self.router, &self.state, &outcome, &mut writes);
        let events = CarriedEvent::take(&mut writes);
        self.epoch += 1;
        let epoch = self.epoch;
        self.overlay.push(epoch, writes);
        let addr = self.addr.clone();
        replication.propose(Command::Conv { conv: id, cmd }, events, move |result| {
            if let Some(addr) = addr {
                match result {
                    Ok(()) => addr.do_send(Flushed(epoch)),
                    Err(e) => addr.do_send(Lost(e)),
                }
            }
        });
        Ok(outcome)
    }

    /// Fails everything in flight with `e` and stops (see [`Lost`]).
    fn abandon(&mut self, ctx: &mut Context<Self>, e: &ChatError) {
        for p in self.pending.drain(..) {
            match p.done {
                Done::Posted { tx, .. } => {
                    let _ = tx.send(Err(e.clone()));
                }
                Done::Replied { tx, .. } => {
                    let _ = tx.send(Err(e.clone()));
                }
                Done::Rerender(_) => {}
            }
        }
        self.overlay.clear();
        self.retired = true;
        self.router.release_conv(&self.state.id, &ctx.address());
        ctx.stop();
    }

    /// Groups above `push_max_members` get `notify` instead of `msg`, and no typing.
    pub(super) fn is_large(&self) -> bool {
        self.state.group.is_some()
            && self.state.members.len() as u64 > self.router.config().chat.push_max_members
    }

    pub(super) fn published_seq(&self) -> u64 {
        self.published_seq
    }

    pub(super) fn touch(&mut self) {
        self.last_active = Instant::now();
    }

    fn push_to(&self, user: &UserId, except: Option<DeviceId>, out: Outbound) {
        self.router.push_to_user(user, &out, except.as_ref());
    }

    pub(super) fn frame(frame: &ServerFrame) -> WireFrame {
        WireFrame::text(frame.kind(), &frame.to_json())
    }

    // ---- group commit ----

    fn enqueue(&mut self, ctx: &mut Context<Self>, done: Done) {
        if self.replicated {
            // answered once the last proposal so far is applied
            self.pending.push_back(PendingWrite {
                epoch: self.epoch,
                done,
            });
            self.drain(ctx);
            return;
        }
        let epoch = match self.waiting {
            Some(w) => w + 1,
            None => self.register(ctx),
        };
        self.pending.push_back(PendingWrite { epoch, done });
    }

    fn register(&mut self, ctx: &mut Context<Self>) -> u64 {
        // Read positions advanced since the last epoch ride on this flush.
        for user in std::mem::take(&mut self.dirty_reads) {
            let seq = self.state.reads.get(&user).copied().unwrap_or(0);
            if let Err(e) = self.router.store().set_read(&self.state.id, &user, seq) {
                tracing::error!(conv = %self.state.id, error = %e, "cannot write read position");
            }
        }
        self.epoch += 1;
        let epoch = self.epoch;
        self.waiting = Some(epoch);
        let addr = ctx.address();
        self.router
            .store()
            .flusher()
            .after_flush(move || addr.do_send(Flushed(epoch)));
        epoch
    }

    fn drain(&mut self, ctx: &mut Context<Self>) {
        while let Some(front) = self.pending.front() {
            let blocked = self.index_pending
                && matches!(
                    front.done,
                    Done::Posted {
                        fanout: Some(_),
                        ..
                    }
                );
            if front.epoch > self.durable_epoch || blocked {
                break;
            }
            if let Some(p) = self.pending.pop_front() {
                self.complete(ctx, p.done);
            }
        }
    }

    fn complete(&mut self, ctx: &mut Context<Self>, done: Done) {
        match done {
            Done::Posted { tx, posted, fanout } => {
                if let Some(p) = fanout {
                    self.router.metrics().messages_accepted.inc();
                    self.published_seq = self.published_seq.max(posted.seq);
                    // only groups are pulled by many members at once; a direct conversation reads the store
                    if let Some(view) = &self.view {
                        view.publish(posted.seq, protocol::raw(p.json.clone()));
                    }
                    if self.is_large() {
                        // mentioned members get the message itself (the others a `notify`, below)
                        self.push_mentioned(ctx, &p.json, posted.seq, &p.frame, &p.from, &p.device);
                    }
                    self.last_json = Some(p.json);
                    if self.is_large() {
                        self.notify_members(ctx);
                    } else {
                        let out = Outbound::Push {
                            conv: self.state.id.clone(),
                            seq: posted.seq,
                            frame: p.frame,
                        };
                        let recipients = self.state.members.iter().cloned().chain(p.also).collect();
                        self.fan_out(ctx, recipients, out, p.device.map(|d| (p.from, d)));
                    }
                }
                let _ = tx.send(Ok(posted));
            }
            Done::Replied { tx, fanout } => {
                if let Some(d) = fanout {
                    self.fan_out(ctx, d.recipients, Outbound::Frame(d.frame), d.except);
                }
                let _ = tx.send(Ok(()));
            }
            Done::Rerender(Rerender::Stored(seq)) => self.rerender(seq, None),
            Done::Rerender(Rerender::Edited(seq, json)) => self.rerender(seq, Some(json)),
            Done::Rerender(Rerender::Recalled(seq, json)) => {
                self.replaced(seq, &json, json.clone())
            }
        }
    }

    // ---- fan-out ----

    /// Delivers to `recipients`' connected devices (but `except`): one envelope now to each other node
    /// with recipients, and this node's sessions in turns, behind earlier deliveries. A group of more than
    /// [`FANOUT_BATCH`] members goes through the workers' lanes from then on (so its pushes stay in order),
    /// a smaller conversation never (its pushes are the latency-sensitive ones).
    pub(super) fn fan_out(
        &mut self,
        ctx: &mut Context<Self>,
        recipients: Vec<UserId>,
        out: Outbound,
        except: Option<(UserId, DeviceId)>,
    ) {
        self.lanes |= self.state.members.len() > FANOUT_BATCH;
        let bulk = self.lanes;
        let recipients = self
            .router
            .push_remote(&recipients, &out, except.as_ref(), bulk);
        if self.fanout.is_empty() && recipients.len() <= FANOUT_BATCH {
            // nothing queued ahead and small enough for one turn: deliver now
            deliver(&self.router, &recipients, &out, except.as_ref(), bulk);
            return;
        }
        self.fanout.push_back(FanoutJob {
            recipients,
            next: 0,
            out,
            except,
            bulk,
        });
        if !self.pumping {
            self.pump(ctx);
        }
    }

    fn pump(&mut self, ctx: &mut Context<Self>) {
        let mut budget = FANOUT_BATCH;
        while budget > 0 {
            let Some(job) = self.fanout.front_mut() else {
                break;
            };
            let end = job.recipients.len().min(job.next + budget);
            let turn = &job.recipients[job.next..end];
            budget -= turn.len();
            job.next = end;
            deliver(&self.router, turn, &job.out, job.except.as_ref(), job.bulk);
            if job.next >= job.recipients.len() {
                self.fanout.pop_front();
            }
        }
        self.pumping = !self.fanout.is_empty();
        if self.pumping {
            ctx.notify(Pump);
        }
    }

    /// A large group announces new messages with one `notify` per window to its online members.
    fn notify_members(&mut self, ctx: &mut Context<Self>) {
        if self.notify_window.allow(Instant::now()) {
            let frame = Self::frame(&ServerFrame::Notify {
                conv: self.state.id.clone(),
                last_seq: self.published_seq,
            });
            let online = self.router.online_among(&self.state.members);
            self.fan_out(ctx, online, Outbound::Frame(frame), None);
            return;
        }
        if self.notify_scheduled {
            return;
        }
        if let Some(at) = self.notify_window.next_allowed() {
            self.notify_scheduled = true;
            ctx.run_later(at.saturating_duration_since(Instant::now()), |act, ctx| {
                act.notify_scheduled = false;
                act.notify_members(ctx);
            });
        }
    }

    /// Makes sure both users list this conversation before its first message is acknowledged.
    pub(super) fn index_members(&mut self, ctx: &mut Context<Self>, wait: bool) {
        let router = self.router.clone();
        let conv = self.state.id.clone();
        let members: Vec<UserId> = self.state.members.iter().cloned().collect();
        let fut = async move {
            let asks = members
                .iter()
                .map(|m| router.ask_user(m, AddConv { conv: conv.clone() }));
            for result in join_all(asks).await {
                if let Err(e) = result {
                    tracing::warn!(conv = %conv, error = %e, "cannot index conversation for a member");
                }
            }
        };
        if wait {
            self.index_pending = true;
            ctx.spawn(fut.into_actor(self).map(|_, act, ctx| {
                act.index_pending = false;
                act.drain(ctx);
            }));
        } else {
            ctx.spawn(fut.into_actor(self));
        }
    }

    /// A message the core appended: `tx` gets its `sent` once it is durable, then it is fanned out (but to
    /// `device`, whose frame caused it).
    pub(super) fn accepted(
        &mut self,
        ctx: &mut Context<Self>,
        tx: oneshot::Sender<ChatResult<Posted>>,
        appended: Appended,
        device: Option<DeviceId>,
    ) {
        self.last_activity_us = now_us().max(self.last_activity_us + 1);
        let frame = WireFrame::text("msg", &protocol::msg_frame(&appended.json));
        if appended.posted.seq == 1 && self.state.id.is_direct() {
            self.index_members(ctx, true);
        }
        let fanout = Some(Publish {
            frame,
            json: appended.json,
            from: appended.from,
            device,
            also: appended.also,
        });
        let posted = appended.posted;
        self.enqueue(ctx, Done::Posted { tx, posted, fanout });
    }

    /// Answers once everything written so far is durable, then delivers `frame` (if any) to `recipients`'
    /// devices (but `except`), in order with the conversation's other pushes.
    pub(super) fn reply_when_durable(
        &mut self,
        ctx: &mut Context<Self>,
        frame: Option<WireFrame>,
        recipients: Vec<UserId>,
        except: Option<(UserId, DeviceId)>,
    ) -> ResponseFuture<ChatResult<()>> {
        let fanout = frame.map(|frame| Delivery {
            recipients,
            frame,
            except,
        });
        let (tx, rx) = oneshot::channel();
        self.enqueue(ctx, Done::Replied { tx, fanout });
        Box::pin(async move {
            rx.await
                .unwrap_or_else(|_| Err(ChatError::unavailable("conversation stopped")))
        })
    }

    /// Renders a changed message again for pulls once the change that is in flight now is in the store
    /// (in order with the answers and pushes queued before and after it).
    pub(super) fn rerender_when_durable(&mut self, ctx: &mut Context<Self>, rerender: Rerender) {
        self.enqueue(ctx, Done::Rerender(rerender));
    }

    /// Message `seq` was rewritten (edited, or its reactions changed): `rendered` is what pulls return.
    pub(super) fn replaced(&mut self, seq: u64, json: &str, rendered: String) {
        if let (Some(view), Some(raw)) = (&self.view, protocol::raw(rendered)) {
            view.replace(seq, raw);
        }
        if seq == self.published_seq {
            self.last_json = Some(json.to_string());
        }
    }

    /// Runs a post (`send`, or the server API's) through the core and answers with its seq and ts once
    /// durable; a `cid` accepted before gets its first answer, also only after the flush (the first `sent`
    /// may still be waiting for it). `device` caused it, if a device did.
    pub(super) fn post_command(
        &mut self,
        ctx: &mut Context<Self>,
        cmd: ConvCommand,
        device: Option<DeviceId>,
    ) -> ResponseFuture<ChatResult<Posted>> {
        let (tx, rx) = oneshot::channel();
        match self.execute(cmd) {
            Ok(Outcome::Appended(appended)) => self.accepted(ctx, tx, appended, device),
            Ok(Outcome::Duplicate(posted)) => self.answer_duplicate(ctx, tx, posted),
            Ok(other) => {
                tracing::error!(conv = %self.state.id, outcome = ?other, "unexpected outcome of a post");
                return Box::pin(async { Err(ChatError::internal("unexpected outcome")) });
            }
            Err(e) => return Box::pin(async move { Err(e) }),
        }
        Box::pin(async move {
            rx.await
                .unwrap_or_else(|_| Err(ChatError::unavailable("conversation stopped")))
        })
    }

    /// A `cid` accepted before: `tx` gets its first answer once everything written so far is durable (the
    /// first `sent` may still wait for the flush).
    pub(super) fn answer_duplicate(
        &mut self,
        ctx: &mut Context<Self>,
        tx: oneshot::Sender<ChatResult<Posted>>,
        posted: Posted,
    ) {
        let done = Done::Posted {
            tx,
            posted,
            fanout: None,
        };
        self.enqueue(ctx, done);
    }

    fn stored(&self, seq: u64) -> ChatResult<String> {
        if seq == 0 || seq > self.state.last_seq {
            return Err(ChatError::not_found(format!(
                "no message {seq} in {}",
                self.state.id
            )));
        }
        self.router
            .store()
            .message(&self.state.id, seq)?
            .ok_or_else(|| ChatError::not_found(format!("no message {seq} in {}", self.state.id)))
    }
}

impl Actor for ConvActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.addr = Some(ctx.address());
        if let Some(view) = &self.view {
            self.router.register_view(&self.state.id, view.clone());
        }
        if self.state.last_seq > 0 {
            // Repairs a member index that a crash interrupted before the first `sent` (idempotent).
            self.index_members(ctx, false);
        }
        let idle = self.router.config().actors.idle();
        let period = (idle / 2).max(Duration::from_millis(100));
        ctx.run_interval(period, move |act, ctx| {
            if act.pending.is_empty()
                && act.overlay.is_empty()
                && act.dirty_reads.is_empty()
                && !act.index_pending
                && act.last_active.elapsed() >= idle
                && act.router.release_conv(&act.state.id, &ctx.address())
            {
                ctx.stop();
            }
        });
    }
}

impl Handler<Pump> for ConvActor {
    type Result = ();
    fn handle(&mut self, _: Pump, ctx: &mut Context<Self>) {
        self.pump(ctx);
    }
}

impl Handler<Flushed> for ConvActor {
    type Result = ();
    fn handle(&mut self, Flushed(epoch): Flushed, ctx: &mut Context<Self>) {
        self.durable_epoch = self.durable_epoch.max(epoch);
        if self.replicated {
            self.overlay.applied(epoch);
            self.drain(ctx);
            return;
        }
        if self.waiting == Some(epoch) {
            self.waiting = None;
        }
        self.drain(ctx);
        if self.waiting.is_none() && self.pending.iter().any(|p| p.epoch > self.durable_epoch) {
            self.register(ctx);
        }
    }
}

impl Handler<Lost> for ConvActor {
    type Result = ();
    fn handle(&mut self, Lost(e): Lost, ctx: &mut Context<Self>) {
        tracing::debug!(conv = %self.state.id, error = %e, "a proposal was lost; the actor stops");
        self.abandon(ctx, &e);
    }
}

impl Handler<Retire> for ConvActor {
    type Result = ();
    fn handle(&mut self, _: Retire, ctx: &mut Context<Self>) {
        let e = ChatError::unavailable(format!(
            "{} moved to another node; resend with the same cid",
            self.state.id
        ));
        self.abandon(ctx, &e);
    }
}

impl Handler<Post> for ConvActor {
    type Result = ResponseFuture<ChatResult<Posted>>;

    fn handle(&mut self, msg: Post, ctx: &mut Context<Self>) -> Self::Result {
        self.touch();
        let cmd = ConvCommand::Post {
            from: msg.from,
            cid: msg.cid,
            ts: now_ms(),
            body: msg.body,
            reply_to: msg.reply_to,
            mentions: msg.mentions,
        };
        self.post_command(ctx, cmd, Some(msg.device))
    }
}

impl Handler<Ack> for ConvActor {
    type Result = ChatResult<()>;
    fn handle(&mut self, msg: Ack, _: &mut Context<Self>) -> ChatResult<()> {
        self.touch();
        self.check_member(&msg.user)?;
        let seq = msg.seq.min(self.published_seq);
        let current = self.delivered.entry(msg.user.clone()).or_insert(0);
        if seq <= *current {
            return Ok(());
        }
        *current = seq;
        if let Some(peer) = self.state.id.peer_of(&msg.user) {
            let frame = Self::frame(&ServerFrame::Delivered {
                conv: self.state.id.clone(),
                seq,
                by: msg.user.clone(),
            });
            self.push_to(peer, None, Outbound::Frame(frame));
        }
        Ok(())
    }
}

impl Handler<Fetch> for ConvActor {
    type Result = ChatResult<Fetched>;
    fn handle(&mut self, msg: Fetch, _: &mut Context<Self>) -> ChatResult<Fetched> {
        self.touch();
        if let Some(answer) = self
            .view
            .as_ref()
            .and_then(|v| v.serve(&msg.user, msg.range, msg.limit))
        {
            return answer;
        }
        self.check_member(&msg.user)?;
        let published = self.published_seq;
        let msgs = match msg.range {
            Range::After(after) if after >= published => Vec::new(),
            Range::After(after) => {
                let limit = msg
                    .limit
                    .min(usize::try_from(published - after).unwrap_or(usize::MAX));
                raws(self.with_reactions(self.router.store().messages_after(
                    &self.state.id,
                    after,
                    limit,
                )?)?)
            }
            Range::Before(before) => {
                raws(self.with_reactions(self.router.store().messages_before(
                    &self.state.id,
                    before.min(published + 1),
                    msg.limit,
                )?)?)
            }
        };
        Ok(Fetched {
            msgs,
            last_seq: published,
        })
    }
}

/// A node's batch of pulls when the pull view does not cover them: the messages read once, for the first
/// member among the users; the others are refused with the reason [`Handler<Fetch>`] would give.
impl Handler<FetchMany> for ConvActor {
    type Result = ChatResult<FetchedMany>;
    fn handle(&mut self, msg: FetchMany, ctx: &mut Context<Self>) -> ChatResult<FetchedMany> {
        let mut refused = Vec::new();
        let mut reader = None;
        for user in msg.users {
            match self.check_member(&user) {
                Ok(()) => reader = reader.or(Some(user)),
                Err(e) => refused.push((user, e)),
            }
        }
        let fetched = match reader {
            Some(user) => {
                let fetch = Fetch {
                    user,
                    range: Range::After(msg.after),
                    limit: msg.limit,
                };
                self.handle(fetch, ctx)?
            }
            None => Fetched {
                msgs: Vec::new(),
                last_seq: 0,
            },
        };
        Ok(FetchedMany { fetched, refused })
    }
}

fn raws(jsons: Vec<String>) -> Vec<Box<RawValue>> {
    jsons.into_iter().filter_map(protocol::raw).collect()
}

impl Handler<Summarize> for ConvActor {
    type Result = Option<Summary>;
    fn handle(&mut self, msg: Summarize, _: &mut Context<Self>) -> Option<Summary> {
        self.touch();
        let published = self.published_seq;
        if self.check_member(&msg.user).is_err() || published == 0 {
            return None;
        }
        let read_seq = self
            .state
            .reads
            .get(&msg.user)
            .copied()
            .unwrap_or(0)
            .min(published);
        let mentions = self
            .router
            .store()
            .mention_count(&self.state.id, &msg.user, read_seq, published)
            .unwrap_or_else(|e| {
                tracing::error!(conv = %self.state.id, error = %e, "cannot count mentions");
                0
            });
        Some(Summary {
            entry: ConvSummary {
                conv: self.state.id.clone(),
                last_seq: published,
                read_seq,
                unread: published - read_seq,
                last: self.last_json.clone().and_then(protocol::raw),
                mentions,
                // the user's own settings are the user actor's; the session fills them in
                muted_until: 0,
                pinned: false,
            },
            last_activity_us: self.last_activity_us,
        })
    }
}

impl Handler<MarkRead> for ConvActor {
    type Result = ChatResult<()>;
    fn handle(&mut self, msg: MarkRead, ctx: &mut Context<Self>) -> ChatResult<()> {
        self.touch();
        // a read position never passes what has been published (durable)
        let cmd = ConvCommand::Read {
            user: msg.user.clone(),
            seq: msg.seq.min(self.published_seq),
        };
        let Outcome::Read { seq } = self.execute(cmd)? else {
            return Ok(());
        };
        let frame = Self::frame(&ServerFrame::Read {
            conv: self.state.id.clone(),
            seq,
            by: msg.user.clone(),
        });
        // the user's other devices always; the other members in a direct conversation and small groups
        let others_too = self.state.group.is_none()
            || self.state.members.len() as u64
                <= self.router.config().chat.receipt_push_max_members;
        let recipients = if others_too {
            self.state.members.iter().cloned().collect()
        } else {
            vec![msg.user.clone()]
        };
        self.fan_out(
            ctx,
            recipients,
            Outbound::Frame(frame),
            Some((msg.user, msg.device)),
        );
        Ok(())
    }
}

impl Handler<GetReceipts> for ConvActor {
    type Result = ChatResult<ReceiptDetail>;
    fn handle(&mut self, msg: GetReceipts, _: &mut Context<Self>) -> ChatResult<ReceiptDetail> {
        self.touch();
        self.check_member(&msg.user)?;
        let json = self.stored(msg.seq)?;
        let sender = serde_json::from_str::<FromOnly>(&json)
            .map_err(|_| ChatError::internal("corrupt message"))?
            .from;
        let is_read = |m: &UserId| self.state.reads.get(m).copied().unwrap_or(0) >= msg.seq;
        let others = self.state.members.iter().filter(|m| **m != sender);
        if msg.counts {
            let (read, total) =
                others.fold((0u64, 0u64), |(r, t), m| (r + u64::from(is_read(m)), t + 1));
            return Ok(ReceiptDetail::Counts {
                read_count: read,
                unread_count: total - read,
            });
        }
        let (mut read, mut unread): (Vec<UserId>, Vec<UserId>) =
            others.cloned().partition(|m| is_read(m));
        read.sort();
        unread.sort();
        Ok(ReceiptDetail::Lists { read, unread })
    }
}

impl Handler<Typing> for ConvActor {
    type Result = ChatResult<()>;
    fn handle(&mut self, msg: Typing, ctx: &mut Context<Self>) -> ChatResult<()> {
        self.touch();
        self.check_member(&msg.user)?;
        if self.is_large() {
            return Ok(()); // not fanned out in groups over push_max_members
        }
        let frame = Self::frame(&ServerFrame::Typing {
            conv: self.state.id.clone(),
            user: msg.user.clone(),
        });
        let others = self
            .state
            .members
            .iter()
            .filter(|m| **m != msg.user && !self.state.blocks(m, &msg.user))
            .cloned()
            .collect();
        self.fan_out(ctx, others, Outbound::Frame(frame), None);
        Ok(())
    }
}

impl Handler<Recall> for ConvActor {
    type Result = ResponseFuture<ChatResult<()>>;
    fn handle(&mut self, msg: Recall, ctx: &mut Context<Self>) -> Self::Result {
        self.touch();
        let cmd = ConvCommand::Recall {
            user: msg.user.clone(),
            seq: msg.seq,
            now: now_ms(),
        };
        let (seq, json) = match self.execute(cmd) {
            Ok(Outcome::Recalled { seq, json }) => (seq, json),
            Ok(_) => return Box::pin(async { Ok(()) }),
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        self.rerender_when_durable(ctx, Rerender::Recalled(seq, json));
        let frame = Self::frame(&ServerFrame::Recalled {
            conv: self.state.id.clone(),
            seq,
            by: msg.user.clone(),
        });
        let fanout = Some(Delivery {
            recipients: self.state.members.iter().cloned().collect(),
            frame,
            except: Some((msg.user, msg.device)),
        });
        let (tx, rx) = oneshot::channel();
        self.enqueue(ctx, Done::Replied { tx, fanout });
        Box::pin(async move {
            rx.await
                .unwrap_or_else(|_| Err(ChatError::unavailable("conversation stopped")))
        })
    }
}

impl Handler<Friendship> for ConvActor {
    type Result = ResponseFuture<ChatResult<()>>;
    fn handle(&mut self, msg: Friendship, ctx: &mut Context<Self>) -> Self::Result {
        self.touch();
        let cmd = ConvCommand::Friend {
            user: msg.user,
            op: msg.op,
        };
        let transition = match self.execute(cmd) {
            Ok(Outcome::Friendship(t)) => t,
            Ok(_) => return Box::pin(async { Err(ChatError::internal("unexpected outcome")) }),
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        // the pair's own change, answered once durable (with replication: once its entry is applied, so
        // a proposal lost to a leader change fails the request instead of leaving the two users' friend
        // lists ahead of the pair)
        let (tx, rx) = oneshot::channel();
        self.enqueue(ctx, Done::Replied { tx, fanout: None });
        let router = self.router.clone();
        Box::pin(async move {
            let mut pushes = transition.pushes;
            let updates: Vec<_> = transition
                .index
                .into_iter()
                .map(|(owner, other, entry)| {
                    let push = pushes
                        .iter()
                        .position(|(u, _)| *u == owner)
                        .map(|i| pushes.remove(i).1);
                    let push = push.map(|f| WireFrame::text(f.kind(), &f.to_json()));
                    let router = router.clone();
                    async move {
                        router
                            .ask_user(&owner, SetFriend { other, entry, push })
                            .await
                    }
                })
                .collect();
            let pair = async {
                rx.await
                    .unwrap_or_else(|_| Err(ChatError::unavailable("conversation stopped")))
            };
            let (pair, results) = futures_util::future::join(pair, join_all(updates)).await;
            pair?;
            for (user, frame) in pushes {
                router.push_to_user(&user, &Outbound::Frame(Self::frame(&frame)), None);
            }
            results.into_iter().collect::<ChatResult<Vec<()>>>()?;
            Ok(())
        })
    }
}
