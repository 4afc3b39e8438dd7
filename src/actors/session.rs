//! `SessionActor`: one per WebSocket connection, on whichever node the client reached. Owns the connection:
//! authentication, heartbeat, rate limits, turning frames into requests to user and conversation actors (via
//! the router) and their answers into frames, redelivery of unacknowledged pushes, and the bounded outgoing
//! queue. It holds no durable state and must never block or buffer without bound: a client that stops
//! reading is degraded to `notify`, then disconnected.

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_http::ws::{CloseCode, CloseReason};
use futures_util::future::join_all;
use serde_json::value::RawValue;

use crate::actors::conversation::{
    Ack, Fetch, Friendship, GetReceipts, MarkRead, Post, Range, Recall, Summarize, Typing,
};
use crate::actors::delivery::{Track, Tracker};
use crate::actors::features::{CheckMember, EditMessage, GetReactors, React, SetBlock};
use crate::actors::friendship::FriendOp;
use crate::actors::group::{ChangeMembers, CreateGroup, DescribeGroup, GroupView, LeaveGroup};
use crate::actors::lane::Lane;
use crate::actors::limits::{jittered, Deadline, TokenBucket, Window};
use crate::actors::now_ms;
use crate::actors::user::{Connect, Disconnect, ListConvEntries, ListFriends, SetConvSettings};
use crate::cluster::Router;
use crate::error::{ChatError, ChatResult, ErrorCode};
use crate::ids::{ConvId, DeviceId, UserId};
use crate::metrics::ActorKind;
use crate::net::auth;
use crate::net::protocol::{self, parse_client_frame, ClientFrame, Rid, ServerFrame};
use crate::net::ws::{Incoming, OutQueue, WireFrame};

/// Something for this connection's device (serializable: it travels to other nodes in envelopes).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub enum Outbound {
    /// A frame to write as is.
    Frame(WireFrame),
    /// A `msg` push, tracked until acknowledged.
    Push {
        conv: ConvId,
        seq: u64,
        frame: WireFrame,
    },
    /// A newer connection of the same device replaced this one.
    Kicked,
    /// This node is shutting down: close, telling the client to reconnect to another node.
    Shutdown,
    /// The user was logged out or banned (server API): close with 1008 and `reason`.
    Revoked { reason: String },
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Deliver(pub Outbound);

/// The close reason sent to clients when their node shuts down (close code 1012, "service restart").
pub const SHUTDOWN_REASON: &str = "node shutting down: reconnect to another node";

/// The first frame must arrive within this.
pub const AUTH_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests a connection may have in flight before further ones get `rate_limited`.
pub const MAX_IN_FLIGHT: usize = 256;
/// How long the outgoing queue may stay over `actors.session_queue_bytes` before the client is dropped.
const SLOW_GRACE: Duration = Duration::from_secs(2);
/// Past this multiple of `session_queue_bytes` the client is dropped at once.
const SLOW_HARD_FACTOR: usize = 8;
/// The longest friend-request note.
const MAX_NOTE_CHARS: usize = 1024;
/// Default and largest `sync` page.
const SYNC_DEFAULT: u64 = 100;
const SYNC_MAX: u64 = 1000;

enum State {
    /// Waiting for the `auth` frame.
    Anonymous,
    /// `auth` accepted, registering with the user actor.
    Joining,
    Active {
        user: UserId,
        device: DeviceId,
    },
    Closing,
}

/// A conversation whose pushes became `notify`: at most one per window, and whether one is scheduled.
struct Degraded {
    window: Window,
    notify_scheduled: bool,
}

pub struct SessionActor {
    id: u64,
    router: Router,
    out: OutQueue,
    /// Since when the outgoing queue has been over its limit.
    over_since: Option<Instant>,
    /// A flush of the outgoing queue is spawned for the end of this burst.
    flush_scheduled: bool,
    /// The socket was full; a flush waits for it to drain.
    awaiting_writable: bool,
    state: State,
    heartbeat: Deadline,
    sends: TokenBucket,
    frames: TokenBucket,
    in_flight: usize,
    tracker: Tracker<ConvId, WireFrame>,
    retransmit_scheduled: bool,
    /// Conversations whose pushes became `notify` because the device stopped keeping up.
    degraded: HashMap<ConvId, Degraded>,
    /// Closes a connection that sends no `auth` in time; cancelled once authenticated (a pending timer is
    /// a few hundred bytes an idle connection would keep).
    auth_timeout: Option<SpawnHandle>,
    /// The user this session is registered for pushes under (see `Router::register_session`).
    registered: Option<UserId>,
    /// The highest ack forwarded to each conversation (for `delivered`).
    acked: HashMap<ConvId, u64>,
}

impl SessionActor {
    pub fn new(router: Router, out: OutQueue) -> SessionActor {
        let now = Instant::now();
        let config = router.config();
        let rate = config.limits.sends_per_s;
        let heartbeat_timeout = config.chat.heartbeat() * 3;
        let tracker_limit = 512;
        let ack_timeout = config.chat.ack_timeout();
        SessionActor {
            id: router.next_session_id(),
            out,
            over_since: None,
            flush_scheduled: false,
            awaiting_writable: false,
            state: State::Anonymous,
            heartbeat: Deadline::new(heartbeat_timeout, now),
            sends: TokenBucket::new(rate, rate.saturating_mul(2), now),
            frames: TokenBucket::new(rate.saturating_mul(5), rate.saturating_mul(10), now),
            in_flight: 0,
            tracker: Tracker::new(ack_timeout, tracker_limit),
            retransmit_scheduled: false,
            degraded: HashMap::new(),
            auth_timeout: None,
            acked: HashMap::new(),
            registered: None,
            router,
        }
    }

    // ---- output ----

    /// Queues a frame; a client that does not read its frames is disconnected.
    fn write(&mut self, ctx: &mut Context<Self>, frame: &WireFrame) -> bool {
        if matches!(self.state, State::Closing) {
            return false;
        }
        if self.is_slow_consumer(Instant::now()) {
            self.router.metrics().slow_consumer_disconnects.inc();
            tracing::info!(
                session = self.id,
                queued = self.out.queued(),
                "closing a connection whose client does not read"
            );
            self.close(
                ctx,
                CloseCode::Policy,
                "slow consumer: frames are not being read",
            );
            return false;
        }
        self.router.metrics().frame_out(frame.kind);
        self.out.push(frame.bytes.clone());
        self.schedule_flush(ctx);
        true
    }

    /// Writes queued frames once the current burst of messages is handled, so one `writev` carries them all.
    fn schedule_flush(&mut self, ctx: &mut Context<Self>) {
        if self.flush_scheduled || self.awaiting_writable {
            return;
        }
        self.flush_scheduled = true;
        ctx.spawn(actix::fut::ready(()).map(|(), act: &mut Self, ctx| {
            act.flush_scheduled = false;
            act.flush(ctx);
        }));
    }

    fn flush(&mut self, ctx: &mut Context<Self>) {
        match self.out.flush() {
            Ok(true) => {}
            Ok(false) => {
                // The socket is full: wait until it drains, then write the rest.
                self.awaiting_writable = true;
                ctx.spawn(actix::fut::wrap_future(self.out.writable()).map(
                    |result, act: &mut Self, ctx| {
                        act.awaiting_writable = false;
                        match result {
                            Ok(()) => act.flush(ctx),
                            Err(_) => ctx.stop(),
                        }
                    },
                ));
            }
            Err(e) => {
                tracing::debug!(session = self.id, error = %e, "write failed; closing");
                self.leave();
                self.state = State::Closing;
                ctx.stop();
            }
        }
    }

    /// True when the client has left too much unread: over the limit for longer than a grace period (a burst
    /// of replies is fine), or far over it.
    fn is_slow_consumer(&mut self, now: Instant) -> bool {
        let limit = self.router.config().actors.session_queue_bytes;
        let queued = self.out.queued();
        if queued <= limit {
            self.over_since = None;
            return false;
        }
        let since = *self.over_since.get_or_insert(now);
        queued > limit.saturating_mul(SLOW_HARD_FACTOR) || now.duration_since(since) >= SLOW_GRACE
    }

    fn reply(&mut self, ctx: &mut Context<Self>, frame: ServerFrame) {
        let wire = WireFrame::text(frame.kind(), &frame.to_json());
        self.write(ctx, &wire);
    }

    /// A `send` or `edit` may go ahead: the connection's rate allows it and its body fits (the body as
    /// it will be stored).
    fn take_send(
        &mut self,
        body: serde_json::Map<String, serde_json::Value>,
    ) -> ChatResult<Box<RawValue>> {
        if !self.sends.try_take(Instant::now()) {
            return Err(ChatError::new(ErrorCode::RateLimited, "too many messages"));
        }
        protocol::message_body(body, self.router.config().limits.max_body_bytes)
    }

    fn error(&mut self, ctx: &mut Context<Self>, rid: Option<Rid>, error: &ChatError) {
        self.router.metrics().error(error.code);
        self.reply(ctx, ServerFrame::error(rid, error));
    }

    fn close(&mut self, ctx: &mut Context<Self>, code: CloseCode, reason: &str) {
        if matches!(self.state, State::Closing) {
            return;
        }
        let frame = WireFrame::close(Some(CloseReason {
            code,
            description: Some(reason.to_string()),
        }));
        self.out.push(frame.bytes);
        let _ = self.out.flush();
        self.leave();
        self.state = State::Closing;
        ctx.stop();
    }

    /// An error, then the connection ends (failures before `auth` completes).
    fn refuse(&mut self, ctx: &mut Context<Self>, rid: Option<Rid>, error: &ChatError) {
        self.error(ctx, rid, error);
        self.close(ctx, CloseCode::Policy, &error.message);
    }

    fn leave(&mut self) {
        if let State::Active { user, device } = &self.state {
            // a user actor with this device registered is live; never spawn one just to say goodbye
            self.router.tell_live_user(
                user,
                Disconnect {
                    device: device.clone(),
                    session_id: self.id,
                    node: Some(self.router.node().clone()),
                },
            );
        }
    }

    // ---- pushes ----

    fn push(&mut self, ctx: &mut Context<Self>, conv: ConvId, seq: u64, frame: WireFrame) {
        if self.degraded.contains_key(&conv) {
            self.notify(ctx, conv, seq);
            return;
        }
        match self
            .tracker
            .track(&conv, seq, frame.clone(), Instant::now())
        {
            Track::Push => {
                if self.write(ctx, &frame) {
                    self.router.metrics().pushes.inc();
                }
                self.schedule_retransmit(ctx);
            }
            Track::Duplicate => {}
            Track::Full => {
                let window = Duration::from_millis(self.router.config().chat.notify_window_ms);
                self.degraded.insert(
                    conv.clone(),
                    Degraded {
                        window: Window::new(window),
                        notify_scheduled: false,
                    },
                );
                self.notify(ctx, conv, seq);
            }
        }
    }

    /// A coalesced `notify` (at most one per conversation per window) for a degraded conversation.
    fn notify(&mut self, ctx: &mut Context<Self>, conv: ConvId, last_seq: u64) {
        let Some(degraded) = self.degraded.get_mut(&conv) else {
            return;
        };
        if degraded.window.allow(Instant::now()) {
            self.reply(ctx, ServerFrame::Notify { conv, last_seq });
            return;
        }
        if let Some(at) = degraded.window.next_allowed() {
            if !degraded.notify_scheduled {
                degraded.notify_scheduled = true;
                let delay = at.saturating_duration_since(Instant::now());
                ctx.run_later(delay, move |act, ctx| {
                    if let Some(d) = act.degraded.get_mut(&conv) {
                        d.notify_scheduled = false;
                    }
                    act.notify(ctx, conv, last_seq);
                });
            }
        }
    }

    fn schedule_retransmit(&mut self, ctx: &mut Context<Self>) {
        if self.retransmit_scheduled {
            return;
        }
        let Some(due) = self.tracker.next_due() else {
            return;
        };
        self.retransmit_scheduled = true;
        let delay = due.saturating_duration_since(Instant::now()) + Duration::from_millis(5);
        ctx.run_later(delay, |act, ctx| {
            act.retransmit_scheduled = false;
            for frame in act.tracker.due(Instant::now()) {
                if act.write(ctx, &frame) {
                    act.router.metrics().repushes.inc();
                }
            }
            act.schedule_retransmit(ctx);
        });
    }

    // ---- requests ----

    /// Runs a request to another actor; its answer becomes a frame through `on_ok`, its error an error frame.
    fn request<T, F>(
        &mut self,
        ctx: &mut Context<Self>,
        rid: Option<Rid>,
        fut: F,
        on_ok: impl FnOnce(&mut Self, &mut Context<Self>, Option<Rid>, T) + 'static,
    ) where
        T: 'static,
        F: Future<Output = ChatResult<T>> + 'static,
    {
        // `dispatch` refused the frame before enqueueing anything if the connection was at MAX_IN_FLIGHT
        self.in_flight += 1;
        ctx.spawn(fut.into_actor(self).map(move |result, act, ctx| {
            act.in_flight -= 1;
            match result {
                Ok(value) => on_ok(act, ctx, rid, value),
                Err(e) => act.error(ctx, rid, &e),
            }
        }));
    }

    fn on_text(&mut self, ctx: &mut Context<Self>, text: &str) {
        let parsed = parse_client_frame(text);
        self.router.metrics().frame_in(match &parsed {
            Ok((_, frame)) => frame.kind(),
            Err(_) => "invalid",
        });
        match (&self.state, parsed) {
            (State::Anonymous, Ok((rid, ClientFrame::Auth { token, device }))) => {
                self.authenticate(ctx, rid, &token, &device)
            }
            (State::Anonymous, Err(e)) if e.kind.as_deref() == Some("auth") => {
                self.refuse(ctx, e.rid, &e.error)
            }
            (State::Anonymous, Ok((rid, _))) => self.refuse(
                ctx,
                rid,
                &ChatError::new(ErrorCode::Unauthorized, "the first frame must be auth"),
            ),
            (State::Anonymous, Err(e)) => self.refuse(
                ctx,
                e.rid,
                &ChatError::new(ErrorCode::Unauthorized, "the first frame must be auth"),
            ),
            (State::Active { .. }, parsed) => {
                let (rid, frame) = match parsed {
                    Ok(ok) => ok,
                    Err(e) => return self.error(ctx, e.rid, &e.error),
                };
                if !self.frames.try_take(Instant::now()) {
                    return self.error(
                        ctx,
                        rid,
                        &ChatError::new(ErrorCode::RateLimited, "too many frames"),
                    );
                }
                self.dispatch(ctx, rid, frame);
            }
            (State::Joining | State::Closing, _) => {}
        }
    }

    fn authenticate(
        &mut self,
        ctx: &mut Context<Self>,
        rid: Option<Rid>,
        token: &str,
        device: &str,
    ) {
        let device = match DeviceId::parse(device) {
            Ok(d) => d,
            Err(e) => return self.refuse(ctx, rid, &ChatError::from(e)),
        };
        let (user, issued_ms) = match auth::verify_issued(
            &self.router.config().auth.token_secret,
            self.router.config().auth.max_token_ttl_s,
            token,
        ) {
            Ok(verified) => verified,
            Err(e) => {
                return self.refuse(
                    ctx,
                    rid,
                    &ChatError::new(ErrorCode::Unauthorized, e.to_string()),
                )
            }
        };
        self.state = State::Joining;
        let router = self.router.clone();
        let connect = Connect {
            device: device.clone(),
            session_id: self.id,
            node: self.router.node().clone(),
            issued_ms: Some(issued_ms),
        };
        // the user's actor refuses a banned user or a token older than the user's last logout
        let reply = router.ask_user(&user, connect);
        let joined = async move { reply.await?.map(|()| user) };
        // `wait`: no other frame is processed until the user actor knows this device.
        ctx.wait(
            joined
                .into_actor(self)
                .map(move |result, act, ctx| match result {
                    Ok(user) => {
                        let welcome = ServerFrame::Welcome {
                            rid,
                            user: user.clone(),
                            device: device.clone(),
                            node: act.router.node().to_string(),
                            heartbeat_s: act.router.config().chat.heartbeat_s,
                        };
                        // reachable for pushes from here on; anything accepted before, the client syncs
                        act.router.register_session(
                            &user,
                            &device,
                            act.id,
                            ctx.address().recipient(),
                            Lane::current(),
                        );
                        act.registered = Some(user.clone());
                        act.state = State::Active { user, device };
                        if let Some(timeout) = act.auth_timeout.take() {
                            ctx.cancel_future(timeout);
                        }
                        act.reply(ctx, welcome);
                    }
                    Err(e) => {
                        act.state = State::Anonymous;
                        act.refuse(ctx, rid, &e);
                    }
                }),
        );
    }

    fn dispatch(&mut self, ctx: &mut Context<Self>, rid: Option<Rid>, frame: ClientFrame) {
        let State::Active { user, device } = &self.state else {
            return;
        };
        let (user, device) = (user.clone(), device.clone());
        let router = self.router.clone();
        let frame_kind = frame.kind();
        if self.in_flight >= MAX_IN_FLIGHT && !matches!(frame, ClientFrame::Ping) {
            let e = ChatError::new(ErrorCode::RateLimited, "too many requests in flight");
            return self.error(ctx, rid, &e);
        }
        match frame {
            ClientFrame::Ping => self.reply(ctx, ServerFrame::Pong { rid }),
            ClientFrame::Auth { .. } => {
                self.error(ctx, rid, &ChatError::bad_request("already authenticated"));
            }
            ClientFrame::Send {
                cid,
                conv,
                body,
                reply_to,
                mentions,
            } => {
                let body = match self.take_send(body) {
                    Ok(body) => body,
                    Err(e) => return self.error(ctx, rid, &e),
                };
                let started = Instant::now();
                let post = Post {
                    from: user,
                    device,
                    cid: cid.clone(),
                    body,
                    reply_to,
                    mentions,
                };
                // enqueued now, so a connection's sends are numbered in the order they arrived (with a
                // before-send hook, each once its own answer is in)
                let reply = crate::webhooks::before_send::post(&router, &conv, post);
                let fut = async move { reply.await?.map(|p| (conv, p)) };
                self.request(ctx, rid, fut, move |act, ctx, rid, (conv, posted)| {
                    act.router
                        .metrics()
                        .send_seconds
                        .observe(started.elapsed().as_secs_f64());
                    act.reply(
                        ctx,
                        ServerFrame::Sent {
                            rid,
                            cid,
                            conv,
                            seq: posted.seq,
                            ts: posted.ts,
                        },
                    );
                });
            }
            ClientFrame::Ack { conv, seq } => {
                self.tracker.ack(&conv, seq);
                if self.degraded.contains_key(&conv) && self.tracker.is_empty() {
                    self.degraded.remove(&conv);
                }
                // only a direct conversation reports acks (`delivered` to the other member); a group's
                // acks end here, sparing its actor one message per member and message
                if !conv.is_direct() {
                    return;
                }
                let forwarded = self.acked.entry(conv.clone()).or_insert(0);
                if seq > *forwarded {
                    *forwarded = seq;
                    let reply = router.ask_conv(&conv, Ack { user, seq });
                    let fut = async move { reply.await? };
                    self.request(ctx, rid, fut, |_, _, _, ()| {});
                }
            }
            ClientFrame::Sync {
                conv,
                after,
                before,
                limit,
            } => {
                let limit = match limit {
                    Some(0) => {
                        return self.error(
                            ctx,
                            rid,
                            &ChatError::bad_request("limit must be at least 1"),
                        )
                    }
                    Some(n) => n.min(SYNC_MAX),
                    None => SYNC_DEFAULT,
                };
                let range = match (after, before) {
                    (Some(_), Some(_)) => {
                        return self.error(
                            ctx,
                            rid,
                            &ChatError::bad_request("give `after` or `before`, not both"),
                        )
                    }
                    (_, Some(before)) => Range::Before(before),
                    (after, None) => Range::After(after.unwrap_or(0)),
                };
                let limit = usize::try_from(limit).unwrap_or(1000);
                let reply = router.fetch(&conv, Fetch { user, range, limit });
                let fut = async move { Ok((conv, reply.await??)) };
                self.request(ctx, rid, fut, |act, ctx, rid, (conv, f)| {
                    act.reply(
                        ctx,
                        ServerFrame::Msgs {
                            rid,
                            conv,
                            msgs: f.msgs,
                            last_seq: f.last_seq,
                        },
                    );
                });
            }
            ClientFrame::Convs => {
                let fut = async move {
                    let convs = router.ask_user(&user, ListConvEntries).await?;
                    let asks = convs
                        .iter()
                        .map(|(c, _)| router.ask_conv(c, Summarize { user: user.clone() }));
                    let now = now_ms();
                    let mut list: Vec<_> = join_all(asks)
                        .await
                        .into_iter()
                        .zip(&convs)
                        .filter_map(|(r, (_, settings))| {
                            let mut summary = r.ok().flatten()?;
                            summary.entry.muted_until = settings.muted_until_at(now);
                            summary.entry.pinned = settings.pinned;
                            Some(summary)
                        })
                        .collect();
                    // pinned conversations first, each part most recent first
                    list.sort_by(|a, b| {
                        b.entry
                            .pinned
                            .cmp(&a.entry.pinned)
                            .then(b.last_activity_us.cmp(&a.last_activity_us))
                            .then(a.entry.conv.cmp(&b.entry.conv))
                    });
                    Ok(list.into_iter().map(|s| s.entry).collect())
                };
                self.request(ctx, rid, fut, |act, ctx, rid, convs| {
                    act.reply(ctx, ServerFrame::Convs { rid, convs })
                });
            }
            ClientFrame::Read { conv, seq } => {
                let reply = router.ask_conv(&conv, MarkRead { user, device, seq });
                let fut = async move { reply.await? };
                self.request(ctx, rid, fut, |_, _, _, ()| {});
            }
            ClientFrame::Receipts { conv, seq, counts } => {
                let reply = router.ask_conv(&conv, GetReceipts { user, seq, counts });
                let fut = async move { Ok((conv, reply.await??)) };
                self.request(ctx, rid, fut, move |act, ctx, rid, (conv, detail)| {
                    act.reply(
                        ctx,
                        ServerFrame::Receipts {
                            rid,
                            conv,
                            seq,
                            detail,
                        },
                    );
                });
            }
            ClientFrame::FriendRequest { user: other, note } => {
                let note = note.unwrap_or_default();
                if note.chars().count() > MAX_NOTE_CHARS {
                    let e = ChatError::new(
                        ErrorCode::TooLarge,
                        format!("note is over {MAX_NOTE_CHARS} characters"),
                    );
                    return self.error(ctx, rid, &e);
                }
                if !self.sends.try_take(Instant::now()) {
                    return self.error(
                        ctx,
                        rid,
                        &ChatError::new(ErrorCode::RateLimited, "too many requests"),
                    );
                }
                self.friendship(ctx, rid, user, other, FriendOp::Request { note });
            }
            ClientFrame::FriendAccept { user: other } => {
                self.friendship(ctx, rid, user, other, FriendOp::Accept)
            }
            ClientFrame::FriendDecline { user: other } => {
                self.friendship(ctx, rid, user, other, FriendOp::Decline)
            }
            ClientFrame::FriendRemove { user: other } => {
                self.friendship(ctx, rid, user, other, FriendOp::Remove)
            }
            ClientFrame::Friends => {
                let fut = router.ask_user(&user, ListFriends);
                self.request(ctx, rid, fut, |act, ctx, rid, list| {
                    let frame = ServerFrame::Friends {
                        rid,
                        friends: list.friends,
                        incoming: list.incoming,
                        outgoing: list.outgoing,
                        blocked: list.blocked,
                    };
                    act.reply(ctx, frame);
                });
            }
            ClientFrame::GroupCreate { conv, .. }
            | ClientFrame::GroupAdd { conv, .. }
            | ClientFrame::GroupRemove { conv, .. }
            | ClientFrame::GroupLeave { conv }
            | ClientFrame::GroupInfo { conv, .. }
                if conv.is_direct() =>
            {
                self.error(
                    ctx,
                    rid,
                    &ChatError::bad_request("group frames take a group id (g:NAME)"),
                );
            }
            ClientFrame::GroupCreate {
                conv,
                name,
                members,
            } => {
                let create = CreateGroup {
                    user,
                    device,
                    name,
                    members,
                };
                let reply = router.ask_conv(&conv, create);
                let fut = async move { reply.await?.map(|v| (conv, v)) };
                self.request(ctx, rid, fut, |act, ctx, rid, (conv, view)| {
                    act.reply(ctx, group_frame(rid, conv, view))
                });
            }
            ClientFrame::GroupAdd { conv, members }
            | ClientFrame::GroupRemove { conv, members } => {
                let add = matches!(frame_kind, "group_add");
                let change = ChangeMembers {
                    user,
                    device,
                    members,
                    add,
                };
                let reply = router.ask_conv(&conv, change);
                let fut = async move { reply.await?.map(|v| (conv, v)) };
                self.request(ctx, rid, fut, |act, ctx, rid, (conv, view)| {
                    act.reply(ctx, group_frame(rid, conv, view))
                });
            }
            ClientFrame::GroupLeave { conv } => {
                let reply = router.ask_conv(&conv, LeaveGroup { user, device });
                let fut = async move { reply.await? };
                self.request(ctx, rid, fut, |act, ctx, rid, ()| {
                    act.reply(ctx, ServerFrame::Ok { rid })
                });
            }
            ClientFrame::GroupInfo { conv, members } => {
                let reply = router.ask_conv(&conv, DescribeGroup { user, members });
                let fut = async move { reply.await?.map(|v| (conv, v)) };
                self.request(ctx, rid, fut, |act, ctx, rid, (conv, view)| {
                    act.reply(ctx, group_frame(rid, conv, view))
                });
            }
            ClientFrame::Typing { conv } => {
                if !self.sends.try_take(Instant::now()) {
                    return self.error(
                        ctx,
                        rid,
                        &ChatError::new(ErrorCode::RateLimited, "too many events"),
                    );
                }
                let reply = router.ask_conv(&conv, Typing { user });
                let fut = async move { reply.await? };
                self.request(ctx, rid, fut, |_, _, _, ()| {});
            }
            ClientFrame::Recall { conv, seq } => {
                let reply = router.ask_conv(&conv, Recall { user, device, seq });
                let fut = async move { reply.await? };
                self.request(ctx, rid, fut, |act, ctx, rid, ()| {
                    act.reply(ctx, ServerFrame::Ok { rid })
                });
            }
            ClientFrame::Edit { conv, seq, body } => {
                let body = match self.take_send(body) {
                    Ok(body) => body,
                    Err(e) => return self.error(ctx, rid, &e),
                };
                let edit = EditMessage {
                    user,
                    device,
                    seq,
                    body,
                };
                let reply = router.ask_conv(&conv, edit);
                self.ok_when(ctx, rid, async move { reply.await? });
            }
            ClientFrame::React {
                conv,
                seq,
                emoji,
                on,
            } => {
                if !self.sends.try_take(Instant::now()) {
                    return self.error(
                        ctx,
                        rid,
                        &ChatError::new(ErrorCode::RateLimited, "too many reactions"),
                    );
                }
                let react = React {
                    user,
                    device,
                    seq,
                    emoji,
                    on,
                };
                let reply = router.ask_conv(&conv, react);
                self.ok_when(ctx, rid, async move { reply.await? });
            }
            ClientFrame::Reactors { conv, seq, emoji } => {
                let ask = GetReactors {
                    user,
                    seq,
                    emoji: emoji.clone(),
                };
                let reply = router.ask_conv(&conv, ask);
                let fut = async move { Ok((conv, reply.await??)) };
                self.request(ctx, rid, fut, move |act, ctx, rid, (conv, users)| {
                    let frame = ServerFrame::Reactors {
                        rid,
                        conv,
                        seq,
                        emoji,
                        users,
                    };
                    act.reply(ctx, frame);
                });
            }
            ClientFrame::ConvSettings {
                conv,
                muted_until,
                pinned,
            } => {
                // a member's own settings: checked by the conversation, kept by the user
                let member = router.ask_conv(&conv, CheckMember { user: user.clone() });
                let fut = async move {
                    member.await??;
                    let set = SetConvSettings {
                        conv,
                        device,
                        muted_until,
                        pinned,
                    };
                    router.ask_user(&user, set).await
                };
                self.ok_when(ctx, rid, fut);
            }
            ClientFrame::Block { user: other, on } => {
                let Some(conv) = ConvId::direct(&user, &other) else {
                    return self.error(ctx, rid, &ChatError::bad_request("that is yourself"));
                };
                let reply = router.ask_conv(&conv, SetBlock { user, on });
                self.ok_when(ctx, rid, async move { reply.await? });
            }
        }
    }

    /// Runs a request whose success is answered with `ok`.
    fn ok_when(
        &mut self,
        ctx: &mut Context<Self>,
        rid: Option<Rid>,
        fut: impl Future<Output = ChatResult<()>> + 'static,
    ) {
        self.request(ctx, rid, fut, |act, ctx, rid, ()| {
            act.reply(ctx, ServerFrame::Ok { rid })
        });
    }

    fn friendship(
        &mut self,
        ctx: &mut Context<Self>,
        rid: Option<Rid>,
        me: UserId,
        other: UserId,
        op: FriendOp,
    ) {
        let Some(conv) = ConvId::direct(&me, &other) else {
            return self.error(ctx, rid, &ChatError::bad_request("that is yourself"));
        };
        let router = self.router.clone();
        let reply = router.ask_conv(&conv, Friendship { user: me, op });
        let fut = async move { reply.await? };
        self.request(ctx, rid, fut, |act, ctx, rid, ()| {
            act.reply(ctx, ServerFrame::Ok { rid })
        });
    }
}

fn group_frame(rid: Option<Rid>, conv: ConvId, view: GroupView) -> ServerFrame {
    ServerFrame::Group {
        rid,
        conv,
        name: view.name,
        owner: view.owner,
        count: view.count,
        members: view.members,
    }
}

impl Actor for SessionActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.router.metrics().ws_connections.inc();
        self.router.metrics().actor(ActorKind::Session).inc();
        self.auth_timeout = Some(ctx.run_later(AUTH_TIMEOUT, |act, ctx| {
            act.auth_timeout = None;
            if matches!(act.state, State::Anonymous) {
                act.close(ctx, CloseCode::Policy, "no auth frame in time");
            }
        }));
        // Check well within the 3x deadline; jitter spreads the timers of many connections.
        let period = jittered(
            self.router.config().chat.heartbeat() / 2,
            0.2,
            self.id.wrapping_mul(7919),
        );
        ctx.run_interval(period, |act, ctx| {
            let now = Instant::now();
            if act.heartbeat.expired(now) {
                act.close(ctx, CloseCode::Normal, "heartbeat timeout");
            } else if act.is_slow_consumer(now) {
                act.router.metrics().slow_consumer_disconnects.inc();
                act.close(
                    ctx,
                    CloseCode::Policy,
                    "slow consumer: frames are not being read",
                );
            }
        });
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        if let Some(user) = self.registered.take() {
            self.router.unregister_session(&user, self.id);
        }
        // best effort: a close frame still queued goes out before the socket is dropped
        let _ = self.out.flush();
        self.leave();
        self.router.metrics().ws_connections.dec();
        self.router.metrics().actor(ActorKind::Session).dec();
    }
}

impl StreamHandler<Incoming> for SessionActor {
    fn handle(&mut self, item: Incoming, ctx: &mut Context<Self>) {
        self.heartbeat.touch(Instant::now());
        let anonymous = matches!(self.state, State::Anonymous);
        match item {
            Incoming::Text(text) => self.on_text(ctx, &text),
            Incoming::Ping(payload) => {
                self.write(ctx, &WireFrame::pong(&payload));
            }
            Incoming::Pong => {}
            Incoming::Close(_) => self.close(ctx, CloseCode::Normal, "bye"),
            Incoming::ProtocolError(e) => self.close(ctx, CloseCode::Protocol, &e),
            Incoming::Binary | Incoming::TooLarge if anonymous => {
                self.router.metrics().frame_in("invalid");
                self.refuse(
                    ctx,
                    None,
                    &ChatError::new(ErrorCode::Unauthorized, "the first frame must be auth"),
                );
            }
            Incoming::Binary => {
                self.router.metrics().frame_in("invalid");
                self.error(
                    ctx,
                    None,
                    &ChatError::bad_request("binary frames are not supported; send JSON text"),
                );
            }
            Incoming::TooLarge => {
                self.router.metrics().frame_in("invalid");
                let max = self.router.config().limits.max_frame_bytes;
                self.error(
                    ctx,
                    None,
                    &ChatError::new(ErrorCode::TooLarge, format!("frame is over {max} bytes")),
                );
            }
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl Handler<Deliver> for SessionActor {
    type Result = ();
    fn handle(&mut self, Deliver(out): Deliver, ctx: &mut Context<Self>) {
        if !matches!(self.state, State::Active { .. }) {
            return;
        }
        match out {
            Outbound::Frame(frame) => {
                self.write(ctx, &frame);
            }
            Outbound::Push { conv, seq, frame } => self.push(ctx, conv, seq, frame),
            Outbound::Kicked => {
                self.reply(ctx, ServerFrame::Kicked);
                // The newer session owns the device now: leave without a Disconnect.
                self.state = State::Closing;
                let frame = WireFrame::close(Some(CloseReason {
                    code: CloseCode::Policy,
                    description: Some("replaced by a newer connection of this device".into()),
                }));
                self.out.push(frame.bytes);
                let _ = self.out.flush();
                ctx.stop();
            }
            Outbound::Shutdown => self.close(ctx, CloseCode::Restart, SHUTDOWN_REASON),
            Outbound::Revoked { reason } => self.close(ctx, CloseCode::Policy, &reason),
        }
    }
}
