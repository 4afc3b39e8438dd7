//! The routing boundary: the only way actors reach each other.
//!
//! Actors ask the router for "the conversation `dm:alice:bob`" or "the user `bob`", never for an address they
//! cached. The router maps the key to its partition and the partition to its leader ([`Replication::serving`]):
//! a key led by another node becomes a call on the peer link to that node (see [`super::peer`]), which hands
//! it to its own router (and forwards it again if leadership moved meanwhile); a key led here spawns the
//! actor on demand (on an arbiter chosen by key hash) and enqueues the message; a key with no leader ready
//! waits up to an election timeout and a second. When this node stops leading a partition its actors are
//! retired, and its sessions of that partition's users register with the new leader.
//!
//! Pushes go to sessions, which live on whichever node their client reached. Every node keeps a session
//! directory: its own sessions, and for each other node the users with a session there (each node announces
//! its users' first connect and last disconnect to its peers, and a full list whenever a link comes up). A
//! fan-out splits its recipients by node and sends one envelope per node, whatever the number of users. A
//! message push that cannot be sent because the link is down is remembered and becomes a `notify` for those
//! devices when the link is back (see [`Peer::record_missed`]). Every enqueue and every idle actor's removal happen under the registry lock, and a
//! stopping actor drains its mailbox before it stops, so no message is lost to an actor going idle.
//!
//! Mailboxes are created large (`MAILBOX`), so `send` always enqueues at once and keeps the order of calls;
//! the bounds are upstream (each session limits its requests in flight).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use actix::dev::channel::channel;
use actix::dev::ToEnvelope;
use actix::{Actor, Addr, ArbiterHandle, Context, Handler, Message, Recipient};
use bytes::Bytes;
use futures_util::future::Either;
use futures_util::FutureExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::actors::conversation::{ConvActor, Fetch, Fetched, Range, Retire as ConvRetire};
use crate::actors::lane::Lane;
use crate::actors::pull::PullView;
use crate::actors::session::{Deliver, Outbound};
use crate::actors::user::{Connect, Retire as UserRetire, UserActor};
use crate::config::Config;
use crate::error::{ChatError, ChatResult};
use crate::ids::{ConvId, DeviceId, NodeId, UserId};
use crate::metrics::{ActorKind, Metrics};
use crate::net::protocol::ServerFrame;
use crate::net::ws::WireFrame;
use crate::store::Store;

use super::peer::{self, LinkState, Peer};
use super::placement::PartitionId;
use super::pulls::{FetchMany, FetchedMany, PullBatches};
use super::remote::{self, PeerFrame, Remote, Target};
use super::replication::{Event, Replication, Serving};
use super::ring::Ring;

/// Mailbox capacity of user and conversation actors (never reached in practice; see module docs).
const MAILBOX: usize = 1 << 20;

/// How often a request that waits for a leader looks again.
const SETTLE_POLL: Duration = Duration::from_millis(10);

/// Where a key's requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Dest {
    Local,
    Remote(NodeId),
    /// Nowhere yet (a leader being elected or catching up).
    Wait,
}

type Waiting<T> = Pin<Box<dyn Future<Output = ChatResult<T>>>>;

/// How long a local request may wait for its actor before the caller gets `unavailable`.
pub const LOCAL_DEADLINE: Duration = Duration::from_secs(10);

/// A session connected to this node.
struct LocalSession {
    device: DeviceId,
    id: u64,
    addr: Recipient<Deliver>,
    /// The lane of the worker thread the session runs on.
    lane: Lane,
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
    /// Pull views of the groups whose actors run here (see [`PullView`]).
    views: Mutex<HashMap<ConvId, Arc<PullView>>>,
    /// This node's pulls of conversations owned elsewhere, batched.
    pulls: PullBatches,
    /// The sessions connected to this node, by user: where pushes for a user are delivered. Sessions add
    /// themselves once their user actor knows them and remove themselves when they stop.
    sessions: Mutex<HashMap<UserId, Vec<LocalSession>>>,
    /// Users with sessions on other nodes: a bit per node (by [`Peer::index`]).
    remote_online: Mutex<HashMap<UserId, u64>>,
    /// The other members, as this node's membership record lists them (see [`Router::set_members`]).
    peers: RwLock<Arc<Vec<Arc<Peer>>>>,
    /// Starts and stops the dialers of peers as the membership changes (see [`peer::manage`]).
    dialers: tokio::sync::mpsc::UnboundedSender<peer::Dialer>,
    dialer_rx: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<peer::Dialer>>>,
    signature: String,
    next_session: AtomicU64,
    listen: std::sync::OnceLock<std::net::SocketAddr>,
    /// This node's Raft groups, set once at start.
    replication: std::sync::OnceLock<Arc<Replication>>,
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
        let signature = format!(
            "{:016x}",
            crate::cluster::membership::Shape::of(&config).signature()
        );
        let (dialers, dialer_rx) = tokio::sync::mpsc::unbounded_channel();
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
                views: Mutex::new(HashMap::new()),
                pulls: PullBatches::default(),
                sessions: Mutex::new(HashMap::new()),
                remote_online: Mutex::new(HashMap::new()),
                peers: RwLock::new(Arc::new(Vec::new())),
                dialers,
                dialer_rx: Mutex::new(Some(dialer_rx)),
                signature,
                next_session: AtomicU64::new(1),
                listen: std::sync::OnceLock::new(),
                replication: std::sync::OnceLock::new(),
            }),
        }
    }

    /// The other members become this node's peers: links to new members are dialed, links to members that
    /// are gone are closed (and what their sessions told this node is forgotten). `None` (a node that
    /// joins, before its first record) keeps the peers it has. Called at start and whenever the
    /// membership record changes.
    pub fn set_members(&self, membership: Option<&crate::cluster::membership::Membership>) {
        let Some(membership) = membership else {
            return;
        };
        let mut gone = Vec::new();
        self.change_peers(|list| {
            let (kept, left): (Vec<Arc<Peer>>, Vec<Arc<Peer>>) = list
                .drain(..)
                .partition(|p| membership.member(&p.id).is_some());
            *list = kept;
            gone = left;
            for m in &membership.members {
                if m.id == self.inner.node || list.iter().any(|p| p.id == m.id) {
                    continue;
                }
                if let Some(peer) = self.new_peer(list, m.id.clone(), &m.peer, &m.listen) {
                    list.push(peer);
                }
            }
        });
        for peer in gone {
            tracing::info!(peer = %peer.id, "no longer a member: closing its link");
            let _ = self.inner.dialers.send(peer::Dialer::Stop(peer.id.clone()));
            peer.close();
            self.set_remote_online(peer.index, &[], false, true);
        }
    }

    /// A node that joins (and has no membership record yet) takes a member that dialed it as a peer.
    pub fn adopt_peer(&self, id: &NodeId, peer_addr: &str, listen: &str) -> Option<Arc<Peer>> {
        if let Some(known) = self.peer(id) {
            return Some(known);
        }
        self.change_peers(|list| {
            if list.iter().all(|p| p.id != *id) {
                if let Some(peer) = self.new_peer(list, id.clone(), peer_addr, listen) {
                    list.push(peer);
                }
            }
        });
        self.peer(id)
    }

    /// Changes the peer list under its lock (kept sorted by id), then hands the new list to the Raft
    /// driver.
    fn change_peers(&self, change: impl FnOnce(&mut Vec<Arc<Peer>>)) {
        let peers = {
            let mut peers = self
                .inner
                .peers
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut list: Vec<Arc<Peer>> = peers.as_ref().clone();
            change(&mut list);
            list.sort_by(|a, b| a.id.cmp(&b.id));
            *peers = Arc::new(list);
            peers.clone()
        };
        if let Some(replication) = self.replication() {
            replication.set_peers(&peers);
        }
    }

    /// A peer for `id` with the lowest directory bit `list` leaves free; its dialer is started.
    fn new_peer(
        &self,
        list: &[Arc<Peer>],
        id: NodeId,
        peer_addr: &str,
        listen: &str,
    ) -> Option<Arc<Peer>> {
        let index = (0..crate::config::MAX_NODES).find(|i| list.iter().all(|p| p.index != *i))?;
        let metrics = self.inner.metrics.peer(id.as_str());
        let peer = Arc::new(Peer::new(
            index,
            id,
            peer_addr.to_owned(),
            listen.to_owned(),
            metrics,
        ));
        let _ = self
            .inner
            .dialers
            .send(peer::Dialer::Start(self.clone(), peer.clone()));
        Some(peer)
    }

    /// The receiving end of the dialer commands, taken once by the task that runs the dialers.
    pub fn take_dialers(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<peer::Dialer>> {
        lock(&self.inner.dialer_rx).take()
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

    /// The hash of the cluster membership every peer must share (hex).
    pub fn signature(&self) -> String {
        self.inner.signature.clone()
    }

    /// The other members of the cluster.
    pub fn peers(&self) -> Arc<Vec<Arc<Peer>>> {
        self.inner
            .peers
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub fn peer(&self, id: &NodeId) -> Option<Arc<Peer>> {
        self.peers().iter().find(|p| p.id == *id).cloned()
    }

    /// Open client connections on this node.
    pub fn connections(&self) -> u64 {
        u64::try_from(self.inner.metrics.ws_connections.get()).unwrap_or(0)
    }

    /// Where `key`'s requests go now. With replication, to its partition's leader (see
    /// [`Replication::serving`]); a leader that is not known yet, not caught up yet, or whose link is down
    /// means waiting ([`Router::settled`]). Without (unit tests), to the ring's owner.
    fn dest(&self, key: &str) -> Dest {
        let Some(replication) = self.replication() else {
            let owner = self.inner.ring.owner(key);
            return if *owner == self.inner.node {
                Dest::Local
            } else {
                Dest::Remote(owner.clone())
            };
        };
        match replication.serving(key, |n| self.is_up(n)) {
            Serving::Here => Dest::Local,
            Serving::At(node) if node != self.inner.node && self.is_up(&node) => Dest::Remote(node),
            Serving::At(_) | Serving::Nobody => Dest::Wait,
        }
    }

    /// Waits until `key` has somewhere to go: at most an election timeout and a second (the contract's
    /// failover bound), then `unavailable`.
    async fn settled(&self, key: &str) -> ChatResult<Dest> {
        let deadline = tokio::time::Instant::now()
            + self.inner.config.cluster.election_timeout()
            + Duration::from_secs(1);
        loop {
            match self.dest(key) {
                Dest::Wait => {}
                dest => return Ok(dest),
            }
            if tokio::time::Instant::now() >= deadline {
                self.inner.metrics.unrouted.inc();
                return Err(ChatError::unavailable(format!(
                    "no leader serves {key} yet; try again"
                )));
            }
            tokio::time::sleep(SETTLE_POLL).await;
        }
    }

    /// Sends `msg` for `key` where [`Router::dest`] says: to the actor `to` on the leading node, or to this
    /// node's actor through `local`, or (no leader yet) wherever [`Router::settled`] finds one.
    fn routed<M, L, F>(
        &self,
        key: &str,
        to: Target,
        msg: M,
        local: L,
    ) -> impl Future<Output = ChatResult<M::Result>> + 'static
    where
        M: Remote,
        M::Result: Serialize + DeserializeOwned + Send,
        L: FnOnce(&Router, M) -> F + 'static,
        F: Future<Output = ChatResult<M::Result>> + 'static,
    {
        match self.dest(key) {
            Dest::Remote(owner) => Either::Left(Either::Left(self.call_remote(&owner, to, msg))),
            Dest::Local => Either::Left(Either::Right(local(self, msg))),
            Dest::Wait => {
                let router = self.clone();
                let key = key.to_owned();
                let waiting: Waiting<M::Result> = Box::pin(async move {
                    match router.settled(&key).await? {
                        Dest::Remote(owner) => router.call_remote(&owner, to, msg).await,
                        _ => local(&router, msg).await,
                    }
                });
                Either::Right(waiting)
            }
        }
    }

    /// The node that serves `key` (its partition's leader as this node sees it; its preferred replica
    /// while none is known).
    pub fn leader_of(&self, key: &str) -> NodeId {
        let Some(replication) = self.replication() else {
            return self.inner.ring.owner(key).clone();
        };
        let layout = replication.layout();
        let p = layout.partition(key);
        replication
            .leader_of(key)
            .or_else(|| self.led_by_peer(p))
            .unwrap_or_else(|| {
                layout
                    .replicas(p)
                    .first()
                    .cloned()
                    .unwrap_or_else(|| self.inner.node.clone())
            })
    }

    /// The node `key`'s requests go to now, if it is another one (`None` also while they wait).
    fn remote_owner(&self, key: &str) -> Option<NodeId> {
        match self.dest(key) {
            Dest::Remote(node) => Some(node),
            Dest::Local | Dest::Wait => None,
        }
    }

    /// Sends `msg` to the actor `to` on node `owner` now, and returns its reply.
    fn call_remote<M>(
        &self,
        owner: &NodeId,
        to: Target,
        msg: M,
    ) -> impl Future<Output = ChatResult<M::Result>> + 'static
    where
        M: Remote,
        M::Result: Serialize + DeserializeOwned + Send,
    {
        let peer = self.peer(owner);
        let sent = match peer {
            Some(peer) => remote::encode_message(&msg)
                .and_then(|body| peer.call(to, M::NAME, body))
                .map(|rx| (peer, rx)),
            None => Err(ChatError::unavailable(format!("unknown node {owner}"))),
        };
        async move {
            let (peer, rx) = sent?;
            let started = std::time::Instant::now();
            let reply = tokio::time::timeout(LOCAL_DEADLINE, rx).await;
            peer.metrics
                .call_seconds
                .observe(started.elapsed().as_secs_f64());
            match reply {
                Ok(Ok(Ok(body))) => remote::decode_reply(M::NAME, &body),
                Ok(Ok(Err(e))) => Err(e),
                Ok(Err(_)) | Err(_) => Err(ChatError::unavailable(format!(
                    "node {} did not answer",
                    peer.id
                ))),
            }
        }
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
    /// This node's Raft groups (set once, when the node starts).
    pub fn replication(&self) -> Option<&Arc<Replication>> {
        self.inner.replication.get()
    }

    pub fn set_replication(&self, replication: Arc<Replication>) {
        let _ = self.inner.replication.set(replication);
    }

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

    /// Sends a request to `user`'s actor (spawning it if needed), on whichever node owns it, and awaits the
    /// reply. A user owned by an unreachable node gives `unavailable`.
    ///
    /// The message is enqueued (or sent on the peer link) when this is called, not when the future is first
    /// polled: requests made one after the other reach the actor in that order, however their futures are
    /// scheduled.
    pub fn ask_user<M>(
        &self,
        user: &UserId,
        msg: M,
    ) -> impl Future<Output = ChatResult<M::Result>> + 'static
    where
        M: Remote,
        M::Result: Serialize + DeserializeOwned + Send,
        UserActor: Handler<M>,
        <UserActor as Actor>::Context: ToEnvelope<UserActor, M>,
    {
        let id = user.clone();
        self.routed(
            user.as_str(),
            Target::User(user.clone()),
            msg,
            move |router: &Router, msg| router.ask_local_user(&id, msg),
        )
    }

    /// [`Router::ask_user`] for a user owned by this node (and for calls arriving from peers).
    pub fn ask_local_user<M>(
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
        let request = {
            let mut users = lock(&self.inner.users);
            self.user_entry(&mut users, user).send(msg)
        };
        async move { Ok(request.timeout(LOCAL_DEADLINE).await?) }
    }

    /// Delivers `msg` to `user`'s actor, on whichever node owns it, only if it is live (a user with connected
    /// devices always is); no reply.
    pub fn tell_live_user<M>(&self, user: &UserId, msg: M)
    where
        M: Remote<Result = ()>,
        UserActor: Handler<M>,
        <UserActor as Actor>::Context: ToEnvelope<UserActor, M>,
    {
        match self.dest(user.as_str()) {
            Dest::Remote(owner) => {
                let frame = remote::encode_message(&msg).map(|body| PeerFrame::Tell {
                    to: Target::User(user.clone()),
                    name: M::NAME.to_owned(),
                    body,
                    forwarded: false,
                });
                if let (Ok(frame), Some(peer)) = (frame, self.peer(&owner)) {
                    let _ = peer.send(&frame);
                }
            }
            Dest::Local => {
                self.tell_local_live_user(user, msg);
            }
            // a user whose partition is between leaders has no live actor to tell
            Dest::Wait => {}
        }
    }

    /// Passes a peer's tell for `user` on to the node that serves the user now, if that is another node;
    /// true if it did (see [`remote::dispatch_tell`]).
    pub fn forward_tell(
        &self,
        user: &UserId,
        name: &str,
        body: &serde_json::value::RawValue,
    ) -> bool {
        let Dest::Remote(owner) = self.dest(user.as_str()) else {
            return false;
        };
        let Some(peer) = self.peer(&owner) else {
            return false;
        };
        let _ = peer.send(&PeerFrame::Tell {
            to: Target::User(user.clone()),
            name: name.to_owned(),
            body: body.to_owned(),
            forwarded: true,
        });
        true
    }

    /// [`Router::tell_live_user`] for a user owned by this node. Returns whether it was delivered.
    pub fn tell_local_live_user<M>(&self, user: &UserId, msg: M) -> bool
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

    /// Sends a request to `conv`'s actor (spawning it if needed), on whichever node owns it, and awaits the
    /// reply. Sent when called, like [`Router::ask_user`]: a connection's requests keep their order.
    pub fn ask_conv<M>(
        &self,
        conv: &ConvId,
        msg: M,
    ) -> impl Future<Output = ChatResult<M::Result>> + 'static
    where
        M: Remote,
        M::Result: Serialize + DeserializeOwned + Send,
        ConvActor: Handler<M>,
        <ConvActor as Actor>::Context: ToEnvelope<ConvActor, M>,
    {
        let id = conv.clone();
        self.routed(
            conv.as_str(),
            Target::Conv(conv.clone()),
            msg,
            move |router: &Router, msg| router.ask_local_conv(&id, msg),
        )
    }

    /// [`Router::ask_conv`] for a conversation owned by this node (and for calls arriving from peers).
    pub fn ask_local_conv<M>(
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
        let request = {
            let mut convs = lock(&self.inner.convs);
            self.conv_entry(&mut convs, conv).send(msg)
        };
        async move { Ok(request.timeout(LOCAL_DEADLINE).await?) }
    }

    /// Makes `view` answer the pulls of `conv` (its actor calls this when it starts or creates the group).
    pub fn register_view(&self, conv: &ConvId, view: Arc<PullView>) {
        lock(&self.inner.views).insert(conv.clone(), view);
    }

    /// The pull view of `conv`, if its actor runs here.
    pub fn pull_view(&self, conv: &ConvId) -> Option<Arc<PullView>> {
        lock(&self.inner.views).get(conv).cloned()
    }

    /// A `sync`: answered from the group's [`PullView`] when this node owns it and the view covers the
    /// range (no actor involved); for a group owned elsewhere, batched with this node's other pulls of the
    /// same range (see [`super::pulls`]); else by the conversation's actor, wherever it is.
    pub fn fetch(
        &self,
        conv: &ConvId,
        msg: Fetch,
    ) -> Pin<Box<dyn Future<Output = ChatResult<ChatResult<Fetched>>>>> {
        match (self.dest(conv.as_str()), msg.range) {
            (Dest::Local, range) => {
                let answer = self
                    .pull_view(conv)
                    .and_then(|v| v.serve(&msg.user, range, msg.limit));
                if let Some(answer) = answer {
                    return Box::pin(std::future::ready(Ok(answer)));
                }
            }
            (Dest::Remote(_), Range::After(after)) if !conv.is_direct() => {
                let rx = self
                    .inner
                    .pulls
                    .pull(self, conv, msg.user, after, msg.limit);
                return Box::pin(async move {
                    rx.await
                        .map_err(|_| ChatError::unavailable("the pull was dropped"))
                });
            }
            (_, _) => {}
        }
        Box::pin(self.ask_conv(conv, msg))
    }

    /// Sends a batch of pulls to the node that owns `conv`.
    pub fn call_conv_node(
        &self,
        conv: &ConvId,
        msg: FetchMany,
    ) -> impl Future<Output = ChatResult<ChatResult<FetchedMany>>> + 'static {
        match self.remote_owner(conv.as_str()) {
            Some(owner) => Either::Left(self.call_remote(&owner, Target::Conv(conv.clone()), msg)),
            None => Either::Right(super::pulls::serve(self.clone(), msg).map(Ok)),
        }
    }

    /// See [`Router::release_user`].
    pub fn release_conv(&self, conv: &ConvId, addr: &Addr<ConvActor>) -> bool {
        let mut convs = lock(&self.inner.convs);
        if convs.get(conv) == Some(addr) {
            convs.remove(conv);
            lock(&self.inner.views).remove(conv);
            self.inner.metrics.actor(ActorKind::Conversation).dec();
            true
        } else {
            false
        }
    }

    // ---- sessions ----

    /// Tells every peer that `user`'s first session on this node came up or its last one ended.
    fn announce(&self, user: &UserId, online: bool) {
        let peers = self.peers();
        if peers.is_empty() {
            return;
        }
        let frame = PeerFrame::Online {
            users: vec![user.clone()],
            online,
            reset: false,
        };
        for peer in peers.iter() {
            let _ = peer.send(&frame);
        }
    }

    /// Makes a session of `user` reachable for pushes (from any node).
    pub fn register_session(
        &self,
        user: &UserId,
        device: &DeviceId,
        id: u64,
        addr: Recipient<Deliver>,
        lane: Lane,
    ) {
        let session = LocalSession {
            device: device.clone(),
            id,
            addr,
            lane,
        };
        let mut sessions = lock(&self.inner.sessions);
        let list = sessions.entry(user.clone()).or_default();
        // no spare room: every connected user has a list, most with one session
        list.reserve_exact(1);
        list.push(session);
        if list.len() == 1 {
            // under the lock: a link coming up sends either a list with this user or this update after it
            self.announce(user, true);
        }
    }

    pub fn unregister_session(&self, user: &UserId, id: u64) {
        let mut sessions = lock(&self.inner.sessions);
        if let Some(list) = sessions.get_mut(user) {
            list.retain(|s| s.id != id);
            if list.is_empty() {
                sessions.remove(user);
                self.announce(user, false);
            }
        }
    }

    /// The dialed link to `peer` is up: it carries the list of this node's users first, then every update.
    pub fn link_up(&self, peer: &Peer, tx: mpsc::UnboundedSender<Bytes>) {
        let sessions = lock(&self.inner.sessions);
        let users = sessions.keys().cloned().collect();
        peer.attach(
            tx,
            &PeerFrame::Online {
                users,
                online: true,
                reset: true,
            },
        );
        drop(sessions);
        // what could not be pushed while the link was down: a `notify` makes those devices pull
        for (conv, last_seq, users) in peer.take_missed() {
            let notify = ServerFrame::Notify { conv, last_seq };
            let _ = peer.send(&PeerFrame::Push {
                users,
                except: None,
                out: Outbound::Frame(WireFrame::text(notify.kind(), &notify.to_json())),
                bulk: true,
            });
        }
    }

    /// Registers this node's sessions again with the user actors `peer` runs: a node that restarted has
    /// forgotten which devices are connected (for kicks and presence).
    pub fn reregister_sessions(&self, peer: &Peer) {
        self.reregister(|user| self.remote_owner(user.as_str()).as_ref() == Some(&peer.id));
    }

    /// The dialed link to `peer` went down: this node's sessions of users whose partitions `peer`
    /// replicates, and this node does not, register with the users' actors wherever they lead now (the
    /// partitions this node replicates are handled by `Router::leadership_changed`).
    pub fn link_down(&self, peer: &Peer) {
        let Some(replication) = self.replication() else {
            return;
        };
        let layout = replication.layout();
        self.reregister(|user| {
            let p = layout.partition(user.as_str());
            layout.replicas(p).contains(&peer.id) && !replication.keeps(p)
        });
    }

    /// A peer now leads `partitions` (new in its last `Pong`): this node's sessions of users in those it
    /// keeps no replica of register with the users' actors there. A node that keeps a replica does that on
    /// its own leadership change (`Router::leadership_changed`); one that keeps none hears of a change
    /// made while its links stayed up (a restarted preferred replica taking its partitions back) only this
    /// way, and the users' new actors would otherwise not know its devices (presence, kicks, user pushes).
    pub fn peer_leads(&self, partitions: &[PartitionId]) {
        let Some(replication) = self.replication() else {
            return;
        };
        let layout = replication.layout();
        let outside: HashSet<PartitionId> = partitions
            .iter()
            .copied()
            .filter(|p| !replication.keeps(*p))
            .collect();
        if outside.is_empty() {
            return;
        }
        self.reregister(|user| outside.contains(&layout.partition(user.as_str())));
    }

    /// What changed in this node's Raft groups (called from the Raft driver thread; it does not block).
    pub fn on_event(&self, event: Event<'_>) {
        match event {
            Event::Leaders(partitions) => self.leadership_changed(partitions),
            Event::Widened(partitions) => {
                let which: HashSet<PartitionId> = partitions.iter().copied().collect();
                self.retire_partitions(&which);
            }
        }
    }

    /// The leaders of `partitions` changed, as this node sees it. The actors of those partitions that this
    /// node no longer leads are retired (what they have in flight fails with `unavailable`; the next
    /// request finds the new leader), and this node's sessions of users in them register with the users'
    /// new actors.
    fn leadership_changed(&self, partitions: &[PartitionId]) {
        let Some(replication) = self.replication() else {
            return;
        };
        let layout = replication.layout();
        let gone: HashSet<PartitionId> = partitions
            .iter()
            .copied()
            .filter(|p| replication.partition(*p).leader.as_ref() != Some(&self.inner.node))
            .collect();
        self.retire_partitions(&gone);
        let changed: HashSet<PartitionId> = partitions.iter().copied().collect();
        self.reregister(|user| changed.contains(&layout.partition(user.as_str())));
    }

    /// Retires the actors of `partitions` that run here (their next requests go wherever the partition is
    /// served then).
    fn retire_partitions(&self, partitions: &HashSet<PartitionId>) {
        let Some(replication) = self.replication() else {
            return;
        };
        if partitions.is_empty() {
            return;
        }
        let layout = replication.layout();
        let mut convs = lock(&self.inner.convs);
        let mut views = lock(&self.inner.views);
        convs.retain(|conv, addr| {
            if !partitions.contains(&layout.partition(conv.as_str())) {
                return true;
            }
            addr.do_send(ConvRetire);
            views.remove(conv);
            self.inner.metrics.actor(ActorKind::Conversation).dec();
            false
        });
        drop((convs, views));
        lock(&self.inner.users).retain(|user, addr| {
            if !partitions.contains(&layout.partition(user.as_str())) {
                return true;
            }
            addr.do_send(UserRetire);
            self.inner.metrics.actor(ActorKind::User).dec();
            false
        });
    }

    /// The partitions this node leads (told to peers in `Pong`).
    pub fn led_partitions(&self) -> Vec<u32> {
        self.replication()
            .map(|r| r.led_partitions())
            .unwrap_or_default()
    }

    /// The peer that said it leads partition `p`.
    pub fn led_by_peer(&self, p: PartitionId) -> Option<NodeId> {
        self.peers()
            .iter()
            .find(|peer| peer.state() == LinkState::Up && peer.leads(p))
            .map(|peer| peer.id.clone())
    }

    /// Registers this node's sessions of the users `which` selects again with their user actors.
    fn reregister(&self, which: impl Fn(&UserId) -> bool) {
        let connects: Vec<(UserId, Connect)> = {
            let sessions = lock(&self.inner.sessions);
            sessions
                .iter()
                .filter(|(user, _)| which(user))
                .flat_map(|(user, list)| {
                    list.iter().map(|s| {
                        let connect = Connect {
                            device: s.device.clone(),
                            session_id: s.id,
                            node: self.inner.node.clone(),
                            issued_ms: None,
                        };
                        (user.clone(), connect)
                    })
                })
                .collect()
        };
        if connects.is_empty() {
            return;
        }
        let router = self.clone();
        // from the Raft driver thread too: the requests are made on an arbiter
        self.inner.arbiters[0].spawn(async move {
            for (user, connect) in connects {
                let reply = router.ask_user(&user, connect);
                actix_rt::spawn(async move {
                    if let Err(e) = reply.await {
                        tracing::debug!(%user, error = %e, "cannot re-register a session");
                    }
                });
            }
        });
    }

    /// What `peer`'s accepted link says about the users connected there.
    pub fn set_remote_online(&self, index: usize, users: &[UserId], online: bool, reset: bool) {
        let bit = 1u64 << index;
        let mut map = lock(&self.inner.remote_online);
        if reset {
            map.retain(|_, bits| {
                *bits &= !bit;
                *bits != 0
            });
        }
        for user in users {
            if online {
                *map.entry(user.clone()).or_insert(0) |= bit;
            } else if let Some(bits) = map.get_mut(user) {
                *bits &= !bit;
                if *bits == 0 {
                    map.remove(user);
                }
            }
        }
    }

    /// Pushes `out` to every connected device of `user` but `except`, on every node.
    pub fn push_to_user(&self, user: &UserId, out: &Outbound, except: Option<&DeviceId>) {
        let except = except.map(|d| (user.clone(), d.clone()));
        for user in self.push_remote(std::slice::from_ref(user), out, except.as_ref(), false) {
            self.push_local(&user, out, except.as_ref().map(|(_, d)| d));
        }
    }

    /// Sends `out` for `users` to the other nodes, one envelope per node holding all of that node's users,
    /// and returns the users with a session on this node (to push to with [`Router::push_local`], or
    /// [`Router::push_bulk`] if `bulk`, as the receiving nodes will).
    pub fn push_remote(
        &self,
        users: &[UserId],
        out: &Outbound,
        except: Option<&(UserId, DeviceId)>,
        bulk: bool,
    ) -> Vec<UserId> {
        let mut local = Vec::new();
        let peers = self.peers();
        let mut per_node: Vec<Vec<UserId>> = vec![Vec::new(); peers.len()];
        {
            let sessions = lock(&self.inner.sessions);
            let remote = lock(&self.inner.remote_online);
            for user in users {
                if sessions.contains_key(user) {
                    local.push(user.clone());
                }
                if let Some(bits) = remote.get(user) {
                    for (i, peer) in peers.iter().enumerate() {
                        if bits & (1 << peer.index) != 0 {
                            per_node[i].push(user.clone());
                        }
                    }
                }
            }
        }
        for (peer, users) in peers.iter().zip(per_node) {
            if users.is_empty() {
                continue;
            }
            let frame = PeerFrame::Push {
                users,
                except: except.cloned(),
                out: out.clone(),
                bulk,
            };
            if peer.send(&frame).is_err() {
                if let (PeerFrame::Push { users, .. }, Some((conv, seq))) = (frame, news_of(out)) {
                    peer.record_missed(&conv, seq, users);
                }
            }
        }
        local
    }

    /// Pushes `out` to the devices of `user` connected to this node, but `except`.
    pub fn push_local(&self, user: &UserId, out: &Outbound, except: Option<&DeviceId>) {
        let sessions = lock(&self.inner.sessions);
        for s in sessions.get(user).into_iter().flatten() {
            if Some(&s.device) != except {
                s.addr.do_send(Deliver(out.clone()));
            }
        }
    }

    /// Pushes `out` to the devices of `users` connected to this node (but `except`) through their workers'
    /// lanes: one batch per worker thread, handed out a turn at a time (see [`crate::actors::lane`]).
    pub fn push_bulk(&self, users: &[UserId], out: &Outbound, except: Option<&(UserId, DeviceId)>) {
        let mut per_lane: Vec<(Lane, Vec<Recipient<Deliver>>)> = Vec::new();
        {
            let sessions = lock(&self.inner.sessions);
            for user in users {
                let skip = except.filter(|(u, _)| u == user).map(|(_, d)| d);
                for s in sessions.get(user).into_iter().flatten() {
                    if Some(&s.device) == skip {
                        continue;
                    }
                    match per_lane
                        .iter_mut()
                        .find(|(lane, _)| lane.id() == s.lane.id())
                    {
                        Some((_, targets)) => targets.push(s.addr.clone()),
                        None => per_lane.push((s.lane.clone(), vec![s.addr.clone()])),
                    }
                }
            }
        }
        for (lane, targets) in per_lane {
            lane.send(out.clone(), targets);
        }
    }

    /// An envelope from a peer: `out` to this node's sessions of `users`.
    pub fn deliver_local(
        &self,
        users: &[UserId],
        out: &Outbound,
        except: Option<&(UserId, DeviceId)>,
        bulk: bool,
    ) {
        if bulk {
            return self.push_bulk(users, out, except);
        }
        for user in users {
            let skip = except.filter(|(u, _)| u == user).map(|(_, d)| d);
            self.push_local(user, out, skip);
        }
    }

    /// Ends the session `session` of `user` on `node` (its device connected again).
    pub fn kick(&self, node: &NodeId, user: &UserId, session: u64) {
        if *node == self.inner.node {
            self.kick_local(user, session);
        } else if let Some(peer) = self.peer(node) {
            let _ = peer.send(&PeerFrame::Kick {
                user: user.clone(),
                session,
            });
        }
    }

    pub fn kick_local(&self, user: &UserId, session: u64) {
        let sessions = lock(&self.inner.sessions);
        for s in sessions.get(user).into_iter().flatten() {
            if s.id == session {
                s.addr.do_send(Deliver(Outbound::Kicked));
            }
        }
    }

    /// Tells every session of this node to close with "reconnect elsewhere" (graceful shutdown). Returns
    /// how many were told.
    pub fn shutdown_sessions(&self) -> usize {
        let sessions = lock(&self.inner.sessions);
        let mut n = 0;
        for s in sessions.values().flatten() {
            s.addr.do_send(Deliver(Outbound::Shutdown));
            n += 1;
        }
        n
    }

    /// The users among `members` with a session on any node (work in proportion to the connected users,
    /// whatever the size of the group).
    pub fn online_among(&self, members: &std::collections::HashSet<UserId>) -> Vec<UserId> {
        let sessions = lock(&self.inner.sessions);
        let remote = lock(&self.inner.remote_online);
        let online = |u: &UserId| sessions.contains_key(u) || remote.contains_key(u);
        if sessions.len() + remote.len() <= members.len() {
            let mut list: Vec<UserId> = sessions
                .keys()
                .filter(|u| members.contains(*u))
                .cloned()
                .collect();
            list.extend(
                remote
                    .keys()
                    .filter(|u| members.contains(*u) && !sessions.contains_key(*u))
                    .cloned(),
            );
            list
        } else {
            members.iter().filter(|u| online(u)).cloned().collect()
        }
    }

    /// Whether this node's link to `node` is up (this node itself always is).
    pub fn is_up(&self, node: &NodeId) -> bool {
        *node == self.inner.node || self.peer(node).is_some_and(|p| p.state() == LinkState::Up)
    }

    /// Live actors by kind (users, conversations), for tests and diagnostics.
    pub fn live_actors(&self) -> (usize, usize) {
        (lock(&self.inner.users).len(), lock(&self.inner.convs).len())
    }
}

/// The news a push carries, if it announces a message: a `msg` push, or a large group's `notify`. A peer
/// that could not take it remembers the conversation and seq, and its devices are told to pull once the
/// link is back ([`Peer::record_missed`]); other frames (receipts, edits, reactions) are not replayed.
fn news_of(out: &Outbound) -> Option<(ConvId, u64)> {
    match out {
        Outbound::Push { conv, seq, .. } => Some((conv.clone(), *seq)),
        Outbound::Frame(frame) if frame.kind == "notify" => {
            #[derive(serde::Deserialize)]
            struct Notify {
                conv: ConvId,
                last_seq: u64,
            }
            serde_json::from_slice::<Notify>(frame.payload())
                .ok()
                .map(|n| (n.conv, n.last_seq))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_msg_push_and_a_notify_carry_news_and_other_frames_do_not() {
        let conv = ConvId::parse("g:team").expect("conv");
        let frame = |f: &ServerFrame| WireFrame::text(f.kind(), &f.to_json());
        let notify = frame(&ServerFrame::Notify {
            conv: conv.clone(),
            last_seq: 41,
        });
        assert_eq!(
            news_of(&Outbound::Frame(notify.clone())),
            Some((conv.clone(), 41))
        );
        let push = Outbound::Push {
            conv: conv.clone(),
            seq: 7,
            frame: notify,
        };
        assert_eq!(news_of(&push), Some((conv.clone(), 7)));
        let read = frame(&ServerFrame::Read {
            conv,
            seq: 3,
            by: UserId::parse("alice").expect("user"),
        });
        assert_eq!(news_of(&Outbound::Frame(read)), None);
        assert_eq!(news_of(&Outbound::Kicked), None);
    }
}
