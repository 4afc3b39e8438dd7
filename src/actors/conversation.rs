//! `ConvActor`: one per direct conversation (`dm:A:B`), on the node that owns it. Owns the conversation's
//! sequence numbers, its messages, `cid` dedupe, read and delivery positions, and the pair's friendship.
//!
//! Order and durability: a `send` gets the next seq and its message, dedupe entry and the sender's read
//! position are written in one batch; `sent` and the pushes go out only after the group-commit flush that
//! covers that batch, in seq order. So no member ever sees a seq that a crash could take back, and everyone
//! sees the same seq for the same message. It must never push before the flush, nor write another node's keys.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_util::future::join_all;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::oneshot;

use crate::actors::friendship::{self, FriendOp};
use crate::actors::limits::Window;
use crate::actors::pull::PullView;
use crate::actors::session::Outbound;
use crate::actors::user::{AddConv, SetFriend};
use crate::actors::{now_ms, now_us};
use crate::cluster::pulls::{FetchMany, FetchedMany};
use crate::cluster::Router;
use crate::error::{ChatError, ChatResult, ErrorCode};
use crate::ids::{Cid, ConvId, DeviceId, UserId};
use crate::net::protocol::{self, ConvSummary, Message as ChatMessage, ReceiptDetail, ServerFrame};
use crate::net::ws::WireFrame;
use crate::store::{GroupMeta, PairState};

/// Post a message; answered with its seq and ts once it is durable.
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "ChatResult<Posted>")]
pub struct Post {
    pub from: UserId,
    pub device: DeviceId,
    pub cid: Cid,
    pub body: Box<RawValue>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Posted {
    pub seq: u64,
    pub ts: u64,
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

/// A message to store: see [`ConvActor::append`].
pub(super) struct NewMessage {
    pub seq: u64,
    pub ts: u64,
    pub from: UserId,
    /// The device whose frame caused it (it gets no push of it).
    pub device: Option<DeviceId>,
    pub cid: Option<Cid>,
    pub body: Option<Box<RawValue>>,
    pub system: Option<serde_json::Value>,
    /// Users who get it although they are no longer members (those a change removed).
    pub also: Vec<UserId>,
}

/// The flusher made everything registered under `epoch` durable.
#[derive(Message)]
#[rtype(result = "()")]
struct Flushed(u64);

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
    pub(super) id: ConvId,
    /// Who may read and post: the pair of a direct conversation, or a group's members (one stored key each).
    pub(super) members: HashSet<UserId>,
    /// A group's name and owner; `None` for a direct conversation and for a group that does not exist.
    pub(super) group: Option<GroupMeta>,
    pub(super) router: Router,
    pub(super) last_seq: u64,
    last_ts: u64,
    last_activity_us: u64,
    last_json: Option<String>,
    /// The highest seq whose `sent` and pushes went out: what `notify`, `sync` and `convs` may show (a
    /// message written but not yet durable could still be lost to a crash).
    published_seq: u64,
    /// A group's members, published seq and recent messages, shared with the router so pulls are served
    /// without this actor (see [`PullView`]); None for a direct conversation or a group that does not exist.
    pub(super) view: Option<Arc<PullView>>,
    pub(super) reads: HashMap<UserId, u64>,
    /// Read positions advanced by sends and not yet written (written once per flush epoch).
    dirty_reads: Vec<UserId>,
    delivered: HashMap<UserId, u64>,
    pair: PairState,
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
        let (members, group) = match &id {
            ConvId::Direct { a, b, .. } => ([a.clone(), b.clone()].into_iter().collect(), None),
            ConvId::Group { .. } => match store.group(&id) {
                Ok(Some(meta)) => (
                    store
                        .group_members(&id)
                        .unwrap_or_default()
                        .into_iter()
                        .collect(),
                    Some(meta),
                ),
                Ok(None) => (HashSet::new(), None),
                Err(e) => {
                    tracing::error!(conv = %id, error = %e, "cannot load group");
                    (HashSet::new(), None)
                }
            },
        };
        let (last_seq, last_json) = match store.last_message(&id) {
            Ok(Some((seq, json))) => (seq, Some(json)),
            Ok(None) => (0, None),
            Err(e) => {
                tracing::error!(conv = %id, error = %e, "cannot load conversation");
                (0, None)
            }
        };
        let last_ts = last_json
            .as_deref()
            .and_then(|j| serde_json::from_str::<ChatMessage>(j).ok())
            .map_or(0, |m| m.ts);
        let reads = store
            .read_positions(&id)
            .unwrap_or_default()
            .into_iter()
            .collect();
        let pair = store.pair(&id).unwrap_or_default();
        let window = Duration::from_millis(router.config().chat.notify_window_ms);
        let view = group
            .as_ref()
            .map(|_| Arc::new(PullView::new(id.clone(), members.clone(), last_seq)));
        ConvActor {
            id,
            members,
            group,
            router,
            last_seq,
            last_ts,
            last_activity_us: last_ts.saturating_mul(1000),
            last_json,
            published_seq: last_seq,
            view,
            reads,
            dirty_reads: Vec::new(),
            delivered: HashMap::new(),
            pair,
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
        if !self.id.is_direct() && self.group.is_none() {
            return Err(ChatError::not_found(format!(
                "group {} does not exist",
                self.id
            )));
        }
        if self.members.contains(user) {
            Ok(())
        } else {
            Err(ChatError::forbidden(format!("not a member of {}", self.id)))
        }
    }

    /// Groups above `push_max_members` get `notify` instead of `msg`, and no typing.
    pub(super) fn is_large(&self) -> bool {
        self.group.is_some()
            && self.members.len() as u64 > self.router.config().chat.push_max_members
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
        let epoch = match self.waiting {
            Some(w) => w + 1,
            None => self.register(ctx),
        };
        self.pending.push_back(PendingWrite { epoch, done });
    }

    fn register(&mut self, ctx: &mut Context<Self>) -> u64 {
        // Read positions advanced since the last epoch ride on this flush.
        for user in std::mem::take(&mut self.dirty_reads) {
            let seq = self.reads.get(&user).copied().unwrap_or(0);
            if let Err(e) = self.router.store().set_read(&self.id, &user, seq) {
                tracing::error!(conv = %self.id, error = %e, "cannot write read position");
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
                    self.last_json = Some(p.json);
                    if self.is_large() {
                        self.notify_members(ctx);
                    } else {
                        let out = Outbound::Push {
                            conv: self.id.clone(),
                            seq: posted.seq,
                            frame: p.frame,
                        };
                        let recipients = self.members.iter().cloned().chain(p.also).collect();
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
        self.lanes |= self.members.len() > FANOUT_BATCH;
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
                conv: self.id.clone(),
                last_seq: self.published_seq,
            });
            let online = self.router.online_among(&self.members);
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
        let conv = self.id.clone();
        let members: Vec<UserId> = self.members.iter().cloned().collect();
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

    /// The seq and ts the next message gets.
    pub(super) fn next_slot(&self) -> (u64, u64) {
        (self.last_seq + 1, now_ms().max(self.last_ts))
    }

    /// Stores a message (a user's, or a system message) and answers `tx` once it is durable, then fans it out.
    pub(super) fn append(
        &mut self,
        ctx: &mut Context<Self>,
        tx: oneshot::Sender<ChatResult<Posted>>,
        m: NewMessage,
    ) -> ChatResult<()> {
        let message = ChatMessage {
            conv: self.id.clone(),
            seq: m.seq,
            from: m.from.clone(),
            cid: m.cid,
            ts: m.ts,
            body: m.body,
            recalled: false,
            system: m.system,
        };
        let json = protocol::encode_message(&message);
        self.router.store().append(&self.id, m.seq, &json)?;
        self.last_seq = m.seq;
        self.last_ts = m.ts;
        self.last_activity_us = now_us().max(self.last_activity_us + 1);
        // sending (or changing the group) advances one's own read position
        self.reads.insert(m.from.clone(), m.seq);
        if !self.dirty_reads.contains(&m.from) {
            self.dirty_reads.push(m.from.clone());
        }
        let frame = WireFrame::text("msg", &protocol::msg_frame(&json));
        if m.seq == 1 && self.id.is_direct() {
            self.index_members(ctx, true);
        }
        let posted = Posted {
            seq: m.seq,
            ts: m.ts,
        };
        let fanout = Some(Publish {
            frame,
            json,
            from: m.from,
            device: m.device,
            also: m.also,
        });
        self.enqueue(ctx, Done::Posted { tx, posted, fanout });
        Ok(())
    }

    /// Does stored message `seq` exist and come from `from` with `cid`? (Validates a dedupe entry.)
    fn is_message_of(&self, seq: u64, from: &UserId, cid: &Cid) -> ChatResult<bool> {
        if seq == 0 || seq > self.last_seq {
            return Ok(false);
        }
        let Some(json) = self.router.store().message(&self.id, seq)? else {
            return Ok(false);
        };
        #[derive(Deserialize)]
        struct Origin {
            from: UserId,
            cid: Option<Cid>,
        }
        Ok(serde_json::from_str::<Origin>(&json)
            .is_ok_and(|o| o.from == *from && o.cid.as_ref() == Some(cid)))
    }

    fn stored(&self, seq: u64) -> ChatResult<String> {
        if seq == 0 || seq > self.last_seq {
            return Err(ChatError::not_found(format!(
                "no message {seq} in {}",
                self.id
            )));
        }
        self.router
            .store()
            .message(&self.id, seq)?
            .ok_or_else(|| ChatError::not_found(format!("no message {seq} in {}", self.id)))
    }
}

impl Actor for ConvActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if let Some(view) = &self.view {
            self.router.register_view(&self.id, view.clone());
        }
        if self.last_seq > 0 {
            // Repairs a member index that a crash interrupted before the first `sent` (idempotent).
            self.index_members(ctx, false);
        }
        let idle = self.router.config().actors.idle();
        let period = (idle / 2).max(Duration::from_millis(100));
        ctx.run_interval(period, move |act, ctx| {
            if act.pending.is_empty()
                && act.dirty_reads.is_empty()
                && !act.index_pending
                && act.last_active.elapsed() >= idle
                && act.router.release_conv(&act.id, &ctx.address())
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
        if self.waiting == Some(epoch) {
            self.waiting = None;
        }
        self.drain(ctx);
        if self.waiting.is_none() && self.pending.iter().any(|p| p.epoch > self.durable_epoch) {
            self.register(ctx);
        }
    }
}

impl Handler<Post> for ConvActor {
    type Result = ResponseFuture<ChatResult<Posted>>;

    fn handle(&mut self, msg: Post, ctx: &mut Context<Self>) -> Self::Result {
        self.touch();
        let (tx, rx) = oneshot::channel();
        let reply = Box::pin(async move {
            rx.await
                .unwrap_or_else(|_| Err(ChatError::unavailable("conversation stopped")))
        });
        let result = (|| -> ChatResult<()> {
            self.check_member(&msg.from)?;
            let store = self.router.store();
            let seq = self.last_seq + 1;
            let ts = now_ms().max(self.last_ts);
            let duplicate = |act: &Self, found: Option<(u64, u64)>| -> ChatResult<Option<Posted>> {
                match found {
                    Some((seq, ts)) if act.is_message_of(seq, &msg.from, &msg.cid)? => {
                        Ok(Some(Posted { seq, ts }))
                    }
                    _ => Ok(None),
                }
            };
            let friends_needed = self.id.is_direct()
                && self.router.config().chat.dm_requires_friendship
                && self.pair != PairState::Friends;
            let claimed = if friends_needed {
                // Not allowed to post now, but a retry of a message accepted earlier still gets its `sent`.
                let earlier = duplicate(self, store.cid(&self.id, &msg.from, msg.cid.as_str())?)?;
                let Some(posted) = earlier else {
                    return Err(ChatError::new(
                        ErrorCode::NotFriends,
                        "a direct message needs friendship",
                    ));
                };
                Some(posted)
            } else {
                match store.claim_cid(&self.id, &msg.from, msg.cid.as_str(), seq, ts)? {
                    None => None,
                    Some(found) => match duplicate(self, Some(found))? {
                        Some(posted) => Some(posted),
                        None => {
                            // A crash took that message but left its dedupe entry: this retry is new.
                            store.set_cid(&self.id, &msg.from, msg.cid.as_str(), seq, ts)?;
                            None
                        }
                    },
                }
            };
            if let Some(posted) = claimed {
                self.enqueue(
                    ctx,
                    Done::Posted {
                        tx,
                        posted,
                        fanout: None,
                    },
                );
                return Ok(());
            }
            let message = NewMessage {
                seq,
                ts,
                from: msg.from,
                device: Some(msg.device),
                cid: Some(msg.cid),
                body: Some(msg.body),
                system: None,
                also: Vec::new(),
            };
            self.append(ctx, tx, message)
        })();
        match result {
            Ok(()) => reply,
            Err(e) => Box::pin(async move { Err(e) }),
        }
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
        if let Some(peer) = self.id.peer_of(&msg.user) {
            let frame = Self::frame(&ServerFrame::Delivered {
                conv: self.id.clone(),
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
                raws(self.router.store().messages_after(&self.id, after, limit)?)
            }
            Range::Before(before) => raws(self.router.store().messages_before(
                &self.id,
                before.min(published + 1),
                msg.limit,
            )?),
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
            .reads
            .get(&msg.user)
            .copied()
            .unwrap_or(0)
            .min(published);
        Some(Summary {
            entry: ConvSummary {
                conv: self.id.clone(),
                last_seq: published,
                read_seq,
                unread: published - read_seq,
                last: self.last_json.clone().and_then(protocol::raw),
            },
            last_activity_us: self.last_activity_us,
        })
    }
}

impl Handler<MarkRead> for ConvActor {
    type Result = ChatResult<()>;
    fn handle(&mut self, msg: MarkRead, ctx: &mut Context<Self>) -> ChatResult<()> {
        self.touch();
        self.check_member(&msg.user)?;
        let seq = msg.seq.min(self.published_seq);
        if seq <= self.reads.get(&msg.user).copied().unwrap_or(0) {
            return Ok(());
        }
        self.router.store().set_read(&self.id, &msg.user, seq)?;
        self.reads.insert(msg.user.clone(), seq);
        let frame = Self::frame(&ServerFrame::Read {
            conv: self.id.clone(),
            seq,
            by: msg.user.clone(),
        });
        // the user's other devices always; the other members in a direct conversation and small groups
        let others_too = self.group.is_none()
            || self.members.len() as u64 <= self.router.config().chat.receipt_push_max_members;
        let recipients = if others_too {
            self.members.iter().cloned().collect()
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
        let is_read = |m: &UserId| self.reads.get(m).copied().unwrap_or(0) >= msg.seq;
        let others = self.members.iter().filter(|m| **m != sender);
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
            conv: self.id.clone(),
            user: msg.user.clone(),
        });
        let others = self
            .members
            .iter()
            .filter(|m| **m != msg.user)
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
        let result = (|| -> ChatResult<Option<oneshot::Receiver<ChatResult<()>>>> {
            self.check_member(&msg.user)?;
            let json = self.stored(msg.seq)?;
            let mut message: ChatMessage =
                serde_json::from_str(&json).map_err(|_| ChatError::internal("corrupt message"))?;
            if message.from != msg.user {
                return Err(ChatError::forbidden("only the sender can recall a message"));
            }
            let window = self.router.config().chat.recall_window();
            let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
            if now_ms().saturating_sub(message.ts) > window_ms {
                return Err(ChatError::forbidden("the recall window has passed"));
            }
            if message.recalled {
                return Ok(None);
            }
            message.body = None;
            message.recalled = true;
            let json = protocol::encode_message(&message);
            self.router
                .store()
                .replace_message(&self.id, msg.seq, &json)?;
            if let (Some(view), Some(raw)) = (&self.view, protocol::raw(json.clone())) {
                view.replace(msg.seq, raw);
            }
            if msg.seq == self.published_seq {
                self.last_json = Some(json);
            }
            let frame = Self::frame(&ServerFrame::Recalled {
                conv: self.id.clone(),
                seq: msg.seq,
                by: msg.user.clone(),
            });
            let recipients = self.members.iter().cloned().collect();
            let fanout = Some(Delivery {
                recipients,
                frame,
                except: Some((msg.user.clone(), msg.device.clone())),
            });
            let (tx, rx) = oneshot::channel();
            self.enqueue(ctx, Done::Replied { tx, fanout });
            Ok(Some(rx))
        })();
        Box::pin(async move {
            match result? {
                None => Ok(()),
                Some(rx) => rx
                    .await
                    .unwrap_or_else(|_| Err(ChatError::unavailable("conversation stopped"))),
            }
        })
    }
}

impl Handler<Friendship> for ConvActor {
    type Result = ResponseFuture<ChatResult<()>>;
    fn handle(&mut self, msg: Friendship, _: &mut Context<Self>) -> Self::Result {
        self.touch();
        let Some(other) = self.id.peer_of(&msg.user).cloned() else {
            return Box::pin(async { Err(ChatError::forbidden("not a member of this pair")) });
        };
        let transition = match friendship::apply(&self.pair, &msg.user, &other, msg.op) {
            Ok(t) => t,
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        if transition.state != self.pair {
            if let Err(e) = self.router.store().set_pair(&self.id, &transition.state) {
                return Box::pin(async move { Err(ChatError::from(e)) });
            }
            self.pair = transition.state.clone();
        }
        let router = self.router.clone();
        Box::pin(async move {
            let mut pushes = transition.pushes;
            let updates = transition.index.into_iter().map(|(owner, other, entry)| {
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
            });
            let results = join_all(updates.collect::<Vec<_>>()).await;
            for (user, frame) in pushes {
                router.push_to_user(&user, &Outbound::Frame(Self::frame(&frame)), None);
            }
            results.into_iter().collect::<ChatResult<Vec<()>>>()?;
            router.store().flusher().flushed().await;
            Ok(())
        })
    }
}
