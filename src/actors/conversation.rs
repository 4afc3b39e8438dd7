//! `ConvActor`: one per direct conversation (`dm:A:B`), on the node that owns it. Owns the conversation's
//! sequence numbers, its messages, `cid` dedupe, read and delivery positions, and the pair's friendship.
//!
//! Order and durability: a `send` gets the next seq and its message, dedupe entry and the sender's read
//! position are written in one batch; `sent` and the pushes go out only after the group-commit flush that
//! covers that batch, in seq order. So no member ever sees a seq that a crash could take back, and everyone
//! sees the same seq for the same message. It must never push before the flush, nor write another node's keys.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_util::future::join_all;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::oneshot;

use crate::actors::friendship::{self, FriendOp};
use crate::actors::session::Outbound;
use crate::actors::user::{AddConv, SetFriend};
use crate::actors::{now_ms, now_us};
use crate::cluster::Router;
use crate::error::{ChatError, ChatResult, ErrorCode};
use crate::ids::{Cid, ConvId, DeviceId, UserId};
use crate::net::protocol::{self, ConvSummary, Message as ChatMessage, ReceiptDetail, ServerFrame};
use crate::net::ws::WireFrame;
use crate::store::PairState;

/// Post a message; answered with its seq and ts once it is durable.
#[derive(Message)]
#[rtype(result = "ChatResult<Posted>")]
pub struct Post {
    pub from: UserId,
    pub device: DeviceId,
    pub cid: Cid,
    pub body: Box<RawValue>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Posted {
    pub seq: u64,
    pub ts: u64,
}

/// A device of `user` has received everything up to `seq`.
#[derive(Message)]
#[rtype(result = "ChatResult<()>")]
pub struct Ack {
    pub user: UserId,
    pub seq: u64,
}

#[derive(Debug, Clone, Copy)]
pub enum Range {
    After(u64),
    Before(u64),
}

/// Messages for `sync`.
#[derive(Message)]
#[rtype(result = "ChatResult<Fetched>")]
pub struct Fetch {
    pub user: UserId,
    pub range: Range,
    pub limit: usize,
}

pub struct Fetched {
    pub msgs: Vec<Box<RawValue>>,
    pub last_seq: u64,
}

/// This conversation's entry in `user`'s `convs` (None if there is nothing to list).
#[derive(Message)]
#[rtype(result = "Option<Summary>")]
pub struct Summarize {
    pub user: UserId,
}

pub struct Summary {
    pub entry: ConvSummary,
    /// When the last message was accepted, in microseconds (orders `convs`; finer than `ts`).
    pub last_activity_us: u64,
}

/// `user` has read up to `seq`.
#[derive(Message)]
#[rtype(result = "ChatResult<()>")]
pub struct MarkRead {
    pub user: UserId,
    pub device: DeviceId,
    pub seq: u64,
}

/// Who has read message `seq`.
#[derive(Message)]
#[rtype(result = "ChatResult<ReceiptDetail>")]
pub struct GetReceipts {
    pub user: UserId,
    pub seq: u64,
    pub counts: bool,
}

/// `user` is typing.
#[derive(Message)]
#[rtype(result = "ChatResult<()>")]
pub struct Typing {
    pub user: UserId,
}

/// Recall message `seq` (its sender only, within the recall window).
#[derive(Message)]
#[rtype(result = "ChatResult<()>")]
pub struct Recall {
    pub user: UserId,
    pub device: DeviceId,
    pub seq: u64,
}

/// A friendship operation by `user` on this pair.
#[derive(Message)]
#[rtype(result = "ChatResult<()>")]
pub struct Friendship {
    pub user: UserId,
    pub op: FriendOp,
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
        /// The push and who caused it; None for a duplicate `cid` (nothing new to push).
        fanout: Option<(WireFrame, UserId, DeviceId)>,
    },
    Replied {
        tx: oneshot::Sender<ChatResult<()>>,
        pushes: Vec<(UserId, Option<DeviceId>, WireFrame)>,
    },
}

struct PendingWrite {
    epoch: u64,
    done: Done,
}

pub struct ConvActor {
    id: ConvId,
    members: Vec<UserId>,
    router: Router,
    last_seq: u64,
    last_ts: u64,
    last_activity_us: u64,
    last_json: Option<String>,
    reads: HashMap<UserId, u64>,
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
    last_active: Instant,
}

#[derive(Deserialize)]
struct FromOnly {
    from: UserId,
}

impl ConvActor {
    pub fn new(id: ConvId, router: Router) -> ConvActor {
        let members = match &id {
            ConvId::Direct { a, b, .. } => vec![a.clone(), b.clone()],
            ConvId::Group { .. } => Vec::new(),
        };
        let store = router.store();
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
        ConvActor {
            id,
            members,
            router,
            last_seq,
            last_ts,
            last_activity_us: last_ts.saturating_mul(1000),
            last_json,
            reads,
            dirty_reads: Vec::new(),
            delivered: HashMap::new(),
            pair,
            pending: VecDeque::new(),
            epoch: 0,
            durable_epoch: 0,
            waiting: None,
            index_pending: false,
            last_active: Instant::now(),
        }
    }

    fn check_member(&self, user: &UserId) -> ChatResult<()> {
        if self.members.contains(user) {
            Ok(())
        } else {
            Err(ChatError::forbidden(format!("not a member of {}", self.id)))
        }
    }

    fn touch(&mut self) {
        self.last_active = Instant::now();
    }

    fn push_to(&self, user: &UserId, except: Option<DeviceId>, out: Outbound) {
        self.router.push_to_user(user, &out, except.as_ref());
    }

    fn frame(frame: &ServerFrame) -> WireFrame {
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

    fn drain(&mut self) {
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
                self.complete(p.done);
            }
        }
    }

    fn complete(&mut self, done: Done) {
        match done {
            Done::Posted { tx, posted, fanout } => {
                if let Some((frame, from, device)) = fanout {
                    self.router.metrics().messages_accepted.inc();
                    for member in &self.members {
                        let except = (*member == from).then(|| device.clone());
                        let out = Outbound::Push {
                            conv: self.id.clone(),
                            seq: posted.seq,
                            frame: frame.clone(),
                        };
                        self.push_to(member, except, out);
                    }
                }
                let _ = tx.send(Ok(posted));
            }
            Done::Replied { tx, pushes } => {
                for (user, except, frame) in pushes {
                    self.push_to(&user, except, Outbound::Frame(frame));
                }
                let _ = tx.send(Ok(()));
            }
        }
    }

    /// Makes sure both users list this conversation before its first message is acknowledged.
    fn index_members(&mut self, ctx: &mut Context<Self>, wait: bool) {
        let router = self.router.clone();
        let conv = self.id.clone();
        let members = self.members.clone();
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
            ctx.spawn(fut.into_actor(self).map(|_, act, _| {
                act.index_pending = false;
                act.drain();
            }));
        } else {
            ctx.spawn(fut.into_actor(self));
        }
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

impl Handler<Flushed> for ConvActor {
    type Result = ();
    fn handle(&mut self, Flushed(epoch): Flushed, ctx: &mut Context<Self>) {
        self.durable_epoch = self.durable_epoch.max(epoch);
        if self.waiting == Some(epoch) {
            self.waiting = None;
        }
        self.drain();
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
            let friends_needed =
                self.router.config().chat.dm_requires_friendship && self.pair != PairState::Friends;
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
            let message = ChatMessage {
                conv: self.id.clone(),
                seq,
                from: msg.from.clone(),
                cid: Some(msg.cid.clone()),
                ts,
                body: Some(msg.body),
                recalled: false,
                system: None,
            };
            let json = protocol::encode_message(&message);
            store.append(&self.id, seq, &json)?;
            self.last_seq = seq;
            self.last_ts = ts;
            self.last_activity_us = now_us().max(self.last_activity_us + 1);
            self.reads.insert(msg.from.clone(), seq);
            if !self.dirty_reads.contains(&msg.from) {
                self.dirty_reads.push(msg.from.clone());
            }
            let frame = WireFrame::text("msg", &protocol::msg_frame(&json));
            self.last_json = Some(json);
            if seq == 1 {
                self.index_members(ctx, true);
            }
            let fanout = Some((frame, msg.from, msg.device));
            self.enqueue(
                ctx,
                Done::Posted {
                    tx,
                    posted: Posted { seq, ts },
                    fanout,
                },
            );
            Ok(())
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
        let seq = msg.seq.min(self.last_seq);
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
        self.check_member(&msg.user)?;
        let store = self.router.store();
        let jsons = match msg.range {
            Range::After(after) => store.messages_after(&self.id, after, msg.limit)?,
            Range::Before(before) => store.messages_before(&self.id, before, msg.limit)?,
        };
        let msgs = jsons.into_iter().filter_map(protocol::raw).collect();
        Ok(Fetched {
            msgs,
            last_seq: self.last_seq,
        })
    }
}

impl Handler<Summarize> for ConvActor {
    type Result = Option<Summary>;
    fn handle(&mut self, msg: Summarize, _: &mut Context<Self>) -> Option<Summary> {
        self.touch();
        if self.check_member(&msg.user).is_err() || self.last_seq == 0 {
            return None;
        }
        let read_seq = self
            .reads
            .get(&msg.user)
            .copied()
            .unwrap_or(0)
            .min(self.last_seq);
        Some(Summary {
            entry: ConvSummary {
                conv: self.id.clone(),
                last_seq: self.last_seq,
                read_seq,
                unread: self.last_seq - read_seq,
                last: self.last_json.clone().and_then(protocol::raw),
            },
            last_activity_us: self.last_activity_us,
        })
    }
}

impl Handler<MarkRead> for ConvActor {
    type Result = ChatResult<()>;
    fn handle(&mut self, msg: MarkRead, _: &mut Context<Self>) -> ChatResult<()> {
        self.touch();
        self.check_member(&msg.user)?;
        let seq = msg.seq.min(self.last_seq);
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
        self.push_to(&msg.user, Some(msg.device), Outbound::Frame(frame.clone()));
        if let Some(peer) = self.id.peer_of(&msg.user) {
            self.push_to(peer, None, Outbound::Frame(frame));
        }
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
        let (read, unread): (Vec<UserId>, Vec<UserId>) = self
            .members
            .iter()
            .filter(|m| **m != sender)
            .cloned()
            .partition(|m| self.reads.get(m).copied().unwrap_or(0) >= msg.seq);
        Ok(if msg.counts {
            ReceiptDetail::Counts {
                read_count: read.len() as u64,
                unread_count: unread.len() as u64,
            }
        } else {
            ReceiptDetail::Lists { read, unread }
        })
    }
}

impl Handler<Typing> for ConvActor {
    type Result = ChatResult<()>;
    fn handle(&mut self, msg: Typing, _: &mut Context<Self>) -> ChatResult<()> {
        self.touch();
        self.check_member(&msg.user)?;
        let frame = Self::frame(&ServerFrame::Typing {
            conv: self.id.clone(),
            user: msg.user.clone(),
        });
        for member in self.members.iter().filter(|m| **m != msg.user) {
            self.push_to(member, None, Outbound::Frame(frame.clone()));
        }
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
            if msg.seq == self.last_seq {
                self.last_json = Some(json);
            }
            let frame = Self::frame(&ServerFrame::Recalled {
                conv: self.id.clone(),
                seq: msg.seq,
                by: msg.user.clone(),
            });
            let pushes = self
                .members
                .iter()
                .map(|m| {
                    (
                        m.clone(),
                        (*m == msg.user).then(|| msg.device.clone()),
                        frame.clone(),
                    )
                })
                .collect();
            let (tx, rx) = oneshot::channel();
            self.enqueue(ctx, Done::Replied { tx, pushes });
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
