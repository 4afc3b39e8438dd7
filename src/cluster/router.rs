//! The routing boundary: the only way actors reach each other.
//!
//! Actors ask the router for "the conversation `dm:alice:bob`" or "the user `bob`", never for an address they
//! cached. The router consults the ring, spawns the actor on demand (on an arbiter chosen by key hash) and
//! enqueues the message. Every enqueue and every idle actor's removal happen under the registry lock, and a
//! stopping actor drains its mailbox before it stops, so no message is lost to an actor going idle.
//!
//! Mailboxes are created large (`MAILBOX`), so `send` always enqueues at once and keeps the order of calls;
//! the bounds are upstream (each session limits its requests in flight).

use std::collections::HashMap;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use actix::dev::channel::channel;
use actix::dev::ToEnvelope;
use actix::{Actor, Addr, ArbiterHandle, Context, Handler, Message, Recipient};

use crate::actors::conversation::ConvActor;
use crate::actors::session::{Deliver, Outbound};
use crate::actors::user::UserActor;
use crate::config::Config;
use crate::error::{ChatError, ChatResult};
use crate::ids::{ConvId, DeviceId, NodeId, UserId};
use crate::metrics::{ActorKind, Metrics};
use crate::store::Store;

use super::ring::Ring;

/// Mailbox capacity of user and conversation actors (never reached in practice; see module docs).
const MAILBOX: usize = 1 << 20;

/// How long a local request may wait for its actor before the caller gets `unavailable`.
pub const LOCAL_DEADLINE: Duration = Duration::from_secs(10);

/// A session connected to this node.
struct LocalSession {
    device: DeviceId,
    id: u64,
    addr: Recipient<Deliver>,
}

/// Everything a node's actors share. Cheap to clone.
#[derive(Clone)]
pub struct Router {
    inner: Arc<Inner>,
}

struct Inner {
    node: NodeId,
    ring: Ring,
    config: Arc<Config>,
    store: Store,
    metrics: Arc<Metrics>,
    arbiters: Vec<ArbiterHandle>,
    users: Mutex<HashMap<UserId, Addr<UserActor>>>,
    convs: Mutex<HashMap<ConvId, Addr<ConvActor>>>,
    /// The sessions connected to this node, by user: where pushes for a user are delivered. Sessions add
    /// themselves once their user actor knows them and remove themselves when they stop.
    sessions: Mutex<HashMap<UserId, Vec<LocalSession>>>,
    next_session: AtomicU64,
    listen: std::sync::OnceLock<std::net::SocketAddr>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Router {
    pub fn new(
        node: NodeId,
        config: Arc<Config>,
        store: Store,
        metrics: Arc<Metrics>,
        arbiters: Vec<ArbiterHandle>,
    ) -> Router {
        let ring = Ring::new(&config);
        Router {
            inner: Arc::new(Inner {
                node,
                ring,
                config,
                store,
                metrics,
                arbiters,
                users: Mutex::new(HashMap::new()),
                convs: Mutex::new(HashMap::new()),
                sessions: Mutex::new(HashMap::new()),
                next_session: AtomicU64::new(1),
                listen: std::sync::OnceLock::new(),
            }),
        }
    }

    pub fn node(&self) -> &NodeId {
        &self.inner.node
    }
    pub fn config(&self) -> &Config {
        &self.inner.config
    }
    pub fn store(&self) -> &Store {
        &self.inner.store
    }
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }
    pub fn ring(&self) -> &Ring {
        &self.inner.ring
    }

    /// The address clients reach this node at (the bound one, which differs from the config with port 0).
    pub fn listen(&self) -> std::net::SocketAddr {
        self.inner
            .listen
            .get()
            .copied()
            .unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    pub fn set_listen(&self, addr: std::net::SocketAddr) {
        let _ = self.inner.listen.set(addr);
    }

    /// A node-unique id for a new session.
    pub fn next_session_id(&self) -> u64 {
        self.inner.next_session.fetch_add(1, Ordering::Relaxed)
    }

    fn arbiter_for(&self, key: &str) -> &ArbiterHandle {
        let mut h = fnv::FnvHasher::default();
        key.hash(&mut h);
        let n = self.inner.arbiters.len().max(1) as u64;
        let i = usize::try_from(h.finish() % n).unwrap_or(0);
        &self.inner.arbiters[i]
    }

    fn check_local(&self, key: &str) -> ChatResult<()> {
        let owner = self.inner.ring.owner(key);
        if *owner == self.inner.node {
            Ok(())
        } else {
            Err(ChatError::unavailable(format!(
                "{key} is owned by node {owner}, which this node cannot reach"
            )))
        }
    }

    fn spawn<A, F>(&self, key: &str, kind: ActorKind, make: F) -> Addr<A>
    where
        A: Actor<Context = Context<A>>,
        F: FnOnce() -> A + Send + 'static,
    {
        let (tx, rx) = channel::<A>(MAILBOX);
        let addr = Addr::new(tx);
        self.inner.metrics.actor(kind).inc();
        self.arbiter_for(key).spawn_fn(move || {
            Context::with_receiver(rx).run(make());
        });
        addr
    }

    // ---- users ----

    fn user_entry(
        &self,
        users: &mut HashMap<UserId, Addr<UserActor>>,
        user: &UserId,
    ) -> Addr<UserActor> {
        if let Some(addr) = users.get(user) {
            if addr.connected() {
                return addr.clone();
            }
        }
        let router = self.clone();
        let id = user.clone();
        let addr = self.spawn(user.as_str(), ActorKind::User, move || {
            UserActor::new(id, router)
        });
        users.insert(user.clone(), addr.clone());
        addr
    }

    /// Sends a request to `user`'s actor (spawning it if needed) and awaits the reply.
    ///
    /// The message is enqueued when this is called, not when the future is first polled: requests made one
    /// after the other reach the actor in that order, however their futures are scheduled.
    pub fn ask_user<M>(
        &self,
        user: &UserId,
        msg: M,
    ) -> impl Future<Output = ChatResult<M::Result>> + 'static
    where
        M: Message + Send + 'static,
        M::Result: Send,
        UserActor: Handler<M>,
        <UserActor as Actor>::Context: ToEnvelope<UserActor, M>,
    {
        let request = self.check_local(user.as_str()).map(|()| {
            let mut users = lock(&self.inner.users);
            self.user_entry(&mut users, user).send(msg)
        });
        async move { Ok(request?.timeout(LOCAL_DEADLINE).await?) }
    }

    /// Delivers `msg` to `user`'s actor, spawning it if needed; no reply.
    pub fn tell_user<M>(&self, user: &UserId, msg: M)
    where
        M: Message<Result = ()> + Send + 'static,
        UserActor: Handler<M>,
        <UserActor as Actor>::Context: ToEnvelope<UserActor, M>,
    {
        if self.check_local(user.as_str()).is_err() {
            return;
        }
        let mut users = lock(&self.inner.users);
        self.user_entry(&mut users, user).do_send(msg);
    }

    /// Delivers `msg` to `user`'s actor only if it is live (a user with connected devices always is).
    /// Returns whether it was delivered.
    pub fn tell_live_user<M>(&self, user: &UserId, msg: M) -> bool
    where
        M: Message<Result = ()> + Send + 'static,
        UserActor: Handler<M>,
        <UserActor as Actor>::Context: ToEnvelope<UserActor, M>,
    {
        let users = lock(&self.inner.users);
        match users.get(user) {
            Some(addr) if addr.connected() => {
                addr.do_send(msg);
                true
            }
            _ => false,
        }
    }

    /// Called by an idle user actor: forgets it if `addr` is still the registered one. The caller must stop
    /// itself while this returns true, still inside the same handler.
    pub fn release_user(&self, user: &UserId, addr: &Addr<UserActor>) -> bool {
        let mut users = lock(&self.inner.users);
        if users.get(user) == Some(addr) {
            users.remove(user);
            self.inner.metrics.actor(ActorKind::User).dec();
            true
        } else {
            false
        }
    }

    // ---- conversations ----

    fn conv_entry(
        &self,
        convs: &mut HashMap<ConvId, Addr<ConvActor>>,
        conv: &ConvId,
    ) -> Addr<ConvActor> {
        if let Some(addr) = convs.get(conv) {
            if addr.connected() {
                return addr.clone();
            }
        }
        let router = self.clone();
        let id = conv.clone();
        let addr = self.spawn(conv.as_str(), ActorKind::Conversation, move || {
            ConvActor::new(id, router)
        });
        convs.insert(conv.clone(), addr.clone());
        addr
    }

    fn check_conv(&self, conv: &ConvId) -> ChatResult<()> {
        self.check_local(conv.as_str())
    }

    /// Sends a request to `conv`'s actor (spawning it if needed) and awaits the reply.
    ///
    /// Enqueued when called, like [`Router::ask_user`]: a connection's requests keep their order.
    pub fn ask_conv<M>(
        &self,
        conv: &ConvId,
        msg: M,
    ) -> impl Future<Output = ChatResult<M::Result>> + 'static
    where
        M: Message + Send + 'static,
        M::Result: Send,
        ConvActor: Handler<M>,
        <ConvActor as Actor>::Context: ToEnvelope<ConvActor, M>,
    {
        let request = self.check_conv(conv).map(|()| {
            let mut convs = lock(&self.inner.convs);
            self.conv_entry(&mut convs, conv).send(msg)
        });
        async move { Ok(request?.timeout(LOCAL_DEADLINE).await?) }
    }

    /// See [`Router::release_user`].
    pub fn release_conv(&self, conv: &ConvId, addr: &Addr<ConvActor>) -> bool {
        let mut convs = lock(&self.inner.convs);
        if convs.get(conv) == Some(addr) {
            convs.remove(conv);
            self.inner.metrics.actor(ActorKind::Conversation).dec();
            true
        } else {
            false
        }
    }

    // ---- sessions ----

    /// Makes a session of `user` reachable for pushes.
    pub fn register_session(
        &self,
        user: &UserId,
        device: &DeviceId,
        id: u64,
        addr: Recipient<Deliver>,
    ) {
        let session = LocalSession {
            device: device.clone(),
            id,
            addr,
        };
        lock(&self.inner.sessions)
            .entry(user.clone())
            .or_default()
            .push(session);
    }

    pub fn unregister_session(&self, user: &UserId, id: u64) {
        let mut sessions = lock(&self.inner.sessions);
        if let Some(list) = sessions.get_mut(user) {
            list.retain(|s| s.id != id);
            if list.is_empty() {
                sessions.remove(user);
            }
        }
    }

    /// Pushes `out` to every connected device of `user` but `except`, straight to the sessions: a message
    /// crosses no user actor on its way out.
    pub fn push_to_user(&self, user: &UserId, out: &Outbound, except: Option<&DeviceId>) {
        let sessions = lock(&self.inner.sessions);
        for s in sessions.get(user).into_iter().flatten() {
            if Some(&s.device) != except {
                s.addr.do_send(Deliver(out.clone()));
            }
        }
    }

    /// The users among `members` with a session on this node (work in proportion to the connected users,
    /// whatever the size of the group).
    pub fn online_among(&self, members: &std::collections::HashSet<UserId>) -> Vec<UserId> {
        let sessions = lock(&self.inner.sessions);
        if sessions.len() <= members.len() {
            sessions
                .keys()
                .filter(|u| members.contains(*u))
                .cloned()
                .collect()
        } else {
            members
                .iter()
                .filter(|u| sessions.contains_key(*u))
                .cloned()
                .collect()
        }
    }

    /// Live actors by kind (users, conversations), for tests and diagnostics.
    pub fn live_actors(&self) -> (usize, usize) {
        (lock(&self.inner.users).len(), lock(&self.inner.convs).len())
    }
}
