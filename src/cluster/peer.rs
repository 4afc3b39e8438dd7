//! Peer links: one persistent TCP connection from this node to each other node's `peer` address.
//!
//! A node *dials* every other node and sends everything it has for that node over its own link (calls,
//! tells, pushes, kicks, directory updates, pings), so what one node sends another arrives in the order
//! sent. It *accepts* the links of the others and answers calls on them. A link is authenticated with a
//! challenge and an HMAC keyed by the cluster's `token_secret` (a client token cannot open one), and carries
//! the ring signature: a peer with a different membership or `vnodes` is refused (`rookery_peer_link_state`
//! 2) instead of both nodes owning the same keys.
//!
//! Liveness: the dialer pings every `peer_timeout / 4`; a link silent for `peer_timeout` is dropped, its
//! pending calls fail with `unavailable`, and the dialer reconnects with jittered exponential backoff.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use hmac::{Hmac, Mac};
use serde_json::value::RawValue;
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

use crate::actors::limits::Backoff;
use crate::error::{ChatError, ChatResult};
use crate::ids::{ConvId, NodeId, UserId};
use crate::metrics::PeerMetrics;

use super::remote::{self, PeerFrame, Target};
use super::Router;

/// The largest peer frame accepted (a group's member list or a `sync` page fits easily).
const MAX_PEER_FRAME: usize = 64 << 20;
/// Reconnect delays of a dialer.
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// The state of this node's link to a peer (the values of `rookery_peer_link_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum LinkState {
    Down = 0,
    Up = 1,
    /// The peer's cluster configuration differs from ours.
    Refused = 2,
}

type Pending = oneshot::Sender<ChatResult<Box<RawValue>>>;

/// Another node, as this node sees it.
pub struct Peer {
    /// The node's position in the sorted node list (its bit in the session directory).
    pub index: usize,
    pub id: NodeId,
    pub peer_addr: String,
    pub listen: String,
    pub metrics: PeerMetrics,
    state: AtomicU8,
    /// The peer's client connection count, from its last `Pong`.
    connections: AtomicU64,
    /// The writer of the dialed link while it is up.
    link: Mutex<Option<mpsc::UnboundedSender<Bytes>>>,
    pending: Mutex<HashMap<u64, Pending>>,
    next_call: AtomicU64,
    /// Message pushes for this peer's devices that could not be sent (the link was down): per conversation
    /// the highest seq and the users. Sent as `notify` frames when the link is back, so a device that stayed
    /// connected there pulls what it missed.
    missed: Mutex<Missed>,
}

#[derive(Default)]
struct Missed {
    convs: HashMap<ConvId, (u64, HashSet<UserId>)>,
    users: usize,
    overflowed: bool,
}

/// The most (conversation, user) pairs a peer's missed pushes remember.
const MAX_MISSED: usize = 100_000;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Encodes one frame: 4 bytes of big-endian length, then JSON.
pub fn encode(frame: &PeerFrame) -> Bytes {
    let mut buf = BytesMut::with_capacity(256);
    buf.put_u32(0);
    let mut w = buf.writer();
    if let Err(e) = serde_json::to_writer(&mut w, frame) {
        tracing::error!(error = %e, "cannot encode a peer frame");
    }
    let mut buf = w.into_inner();
    let len = u32::try_from(buf.len() - 4).unwrap_or(u32::MAX);
    buf[..4].copy_from_slice(&len.to_be_bytes());
    buf.freeze()
}

async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<(PeerFrame, usize)> {
    let len = r.read_u32().await? as usize;
    if len > MAX_PEER_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("peer frame of {len} bytes"),
        ));
    }
    let mut buf = vec![0; len];
    r.read_exact(&mut buf).await?;
    let frame = serde_json::from_slice(&buf)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    Ok((frame, len + 4))
}

/// Writes queued frames, coalescing whatever is queued into one write.
async fn write_loop<W: AsyncWrite + Unpin>(mut w: W, mut rx: mpsc::UnboundedReceiver<Bytes>) {
    let mut batch = Vec::with_capacity(64 * 1024);
    while let Some(first) = rx.recv().await {
        batch.clear();
        batch.extend_from_slice(&first);
        while batch.len() < 1 << 20 {
            match rx.try_recv() {
                Ok(more) => batch.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        if w.write_all(&batch).await.is_err() {
            break;
        }
    }
    let _ = w.shutdown().await;
}

/// The HMAC a dialer proves its knowledge of the cluster secret with.
fn mac(secret: &str, nonce: &str, node: &NodeId, signature: &str) -> Hmac<Sha256> {
    // HMAC takes keys of any length
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    for part in [
        nonce.as_bytes(),
        node.as_str().as_bytes(),
        signature.as_bytes(),
    ] {
        mac.update(part);
        mac.update(&[0]);
    }
    mac
}

fn proof(secret: &str, nonce: &str, node: &NodeId, signature: &str) -> String {
    hex::encode(mac(secret, nonce, node, signature).finalize().into_bytes())
}

fn verify_proof(secret: &str, nonce: &str, node: &NodeId, signature: &str, given: &str) -> bool {
    hex::decode(given).is_ok_and(|bytes| {
        mac(secret, nonce, node, signature)
            .verify_slice(&bytes)
            .is_ok()
    })
}

fn io_error(message: impl Into<String>) -> std::io::Error {
    std::io::Error::other(message.into())
}

impl Peer {
    pub fn new(
        index: usize,
        id: NodeId,
        peer_addr: String,
        listen: String,
        metrics: PeerMetrics,
    ) -> Peer {
        Peer {
            index,
            id,
            peer_addr,
            listen,
            metrics,
            state: AtomicU8::new(LinkState::Down as u8),
            connections: AtomicU64::new(0),
            link: Mutex::new(None),
            pending: Mutex::new(HashMap::new()),
            next_call: AtomicU64::new(1),
            missed: Mutex::new(Missed::default()),
        }
    }

    pub fn state(&self) -> LinkState {
        match self.state.load(Ordering::Relaxed) {
            1 => LinkState::Up,
            2 => LinkState::Refused,
            _ => LinkState::Down,
        }
    }

    fn set_state(&self, state: LinkState) {
        let old = self.state.swap(state as u8, Ordering::Relaxed);
        self.metrics.state.set(i64::from(state as u8));
        if old != state as u8 {
            match state {
                LinkState::Up => tracing::info!(peer = %self.id, "peer link up"),
                LinkState::Down => tracing::warn!(peer = %self.id, "peer link down"),
                LinkState::Refused => {}
            }
        }
    }

    /// The peer's client connections as last reported.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    fn unavailable(&self) -> ChatError {
        ChatError::unavailable(format!("node {} is unreachable", self.id))
    }

    /// Queues `frame` on the link to this peer. Fails if the link is down.
    pub fn send(&self, frame: &PeerFrame) -> ChatResult<()> {
        let link = lock(&self.link);
        let tx = link.as_ref().ok_or_else(|| self.unavailable())?;
        self.send_on(tx, frame)
    }

    fn send_on(&self, tx: &mpsc::UnboundedSender<Bytes>, frame: &PeerFrame) -> ChatResult<()> {
        let bytes = encode(frame);
        self.metrics.envelopes_sent[frame.kind()].inc();
        self.metrics.bytes_sent.inc_by(bytes.len() as u64);
        tx.send(bytes).map_err(|_| self.unavailable())
    }

    /// Remembers that message `seq` of `conv` could not be pushed to `users` on this peer.
    pub fn record_missed(&self, conv: &ConvId, seq: u64, users: Vec<UserId>) {
        let mut missed = lock(&self.missed);
        if missed.users + users.len() > MAX_MISSED {
            if !missed.overflowed {
                tracing::warn!(peer = %self.id, "too many missed pushes to remember; their devices pull on their next notify or reconnect");
                missed.overflowed = true;
            }
            return;
        }
        let entry = missed.convs.entry(conv.clone()).or_default();
        entry.0 = entry.0.max(seq);
        let before = entry.1.len();
        entry.1.extend(users);
        let added = entry.1.len() - before;
        missed.users += added;
    }

    /// What [`Peer::record_missed`] remembered, forgotten here.
    pub fn take_missed(&self) -> Vec<(ConvId, u64, Vec<UserId>)> {
        let missed = std::mem::take(&mut *lock(&self.missed));
        missed
            .convs
            .into_iter()
            .map(|(conv, (seq, users))| (conv, seq, users.into_iter().collect()))
            .collect()
    }

    /// Makes `tx` the link to this peer, sending `first` ahead of anything else.
    pub fn attach(&self, tx: mpsc::UnboundedSender<Bytes>, first: &PeerFrame) {
        let mut link = lock(&self.link);
        let _ = self.send_on(&tx, first);
        *link = Some(tx);
    }

    /// Sends a call now (so calls keep their order) and returns the receiver of its reply.
    pub fn call(
        &self,
        to: Target,
        name: &str,
        body: Box<RawValue>,
    ) -> ChatResult<oneshot::Receiver<ChatResult<Box<RawValue>>>> {
        let id = self.next_call.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let link = lock(&self.link);
        let writer = link.as_ref().ok_or_else(|| self.unavailable())?;
        lock(&self.pending).insert(id, tx);
        let frame = PeerFrame::Call {
            id,
            to,
            name: name.to_owned(),
            body,
        };
        if let Err(e) = self.send_on(writer, &frame) {
            lock(&self.pending).remove(&id);
            return Err(e);
        }
        Ok(rx)
    }

    /// The link is gone: every call waiting on it fails with `unavailable`.
    fn fail_pending(&self) {
        let pending: Vec<Pending> = lock(&self.pending).drain().map(|(_, tx)| tx).collect();
        for tx in pending {
            let _ = tx.send(Err(self.unavailable()));
        }
    }
}

/// Keeps this node's link to `peer` up until the task is aborted.
pub async fn dial_forever(router: Router, peer: Arc<Peer>) {
    let mut backoff = Backoff::new(BACKOFF_BASE, BACKOFF_MAX);
    loop {
        match dial(&router, &peer).await {
            Ok(stream) => {
                backoff.reset();
                run_dialed(&router, &peer, stream).await;
            }
            Err(Refusal::Refused(reason)) => {
                if peer.state() != LinkState::Refused {
                    tracing::error!(peer = %peer.id, %reason, "peer refused: fix the cluster config");
                }
                peer.set_state(LinkState::Refused);
            }
            Err(Refusal::Io(e)) => {
                tracing::debug!(peer = %peer.id, error = %e, "cannot reach peer");
                if peer.state() == LinkState::Up {
                    peer.set_state(LinkState::Down);
                }
            }
        }
        tokio::time::sleep(backoff.next(rand::random())).await;
    }
}

enum Refusal {
    Refused(String),
    Io(std::io::Error),
}

impl From<std::io::Error> for Refusal {
    fn from(e: std::io::Error) -> Self {
        Refusal::Io(e)
    }
}

async fn with_timeout<T>(
    timeout: Duration,
    fut: impl std::future::Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| io_error("peer timed out"))?
}

/// Connects and authenticates; returns the stream once the peer welcomed us.
async fn dial(router: &Router, peer: &Peer) -> Result<TcpStream, Refusal> {
    let timeout = router.config().cluster.peer_timeout();
    let mut stream = with_timeout(timeout, TcpStream::connect(&peer.peer_addr)).await?;
    let _ = stream.set_nodelay(true);
    let signature = router.signature();
    let nonce = match with_timeout(timeout, read_frame(&mut stream)).await? {
        (PeerFrame::Challenge { nonce }, _) => nonce,
        (PeerFrame::Refused { reason }, _) => return Err(Refusal::Refused(reason)),
        _ => return Err(Refusal::Io(io_error("expected a challenge"))),
    };
    let hello = PeerFrame::Hello {
        node: router.node().clone(),
        signature: signature.clone(),
        proof: proof(
            &router.config().auth.token_secret,
            &nonce,
            router.node(),
            &signature,
        ),
    };
    stream.write_all(&encode(&hello)).await?;
    match with_timeout(timeout, read_frame(&mut stream)).await? {
        (
            PeerFrame::Welcome {
                node,
                signature: theirs,
            },
            _,
        ) => {
            if node != peer.id {
                Err(Refusal::Refused(format!(
                    "{} answered as node {node}",
                    peer.peer_addr
                )))
            } else if theirs != signature {
                Err(Refusal::Refused(format!(
                    "node {node} has cluster signature {theirs}, this node {signature}"
                )))
            } else {
                Ok(stream)
            }
        }
        (PeerFrame::Refused { reason }, _) => Err(Refusal::Refused(reason)),
        _ => Err(Refusal::Io(io_error("expected welcome"))),
    }
}

/// Serves an established dialed link until it fails or goes silent for `peer_timeout`.
async fn run_dialed(router: &Router, peer: &Arc<Peer>, stream: TcpStream) {
    let timeout = router.config().cluster.peer_timeout();
    let (read, write) = stream.into_split();
    let (tx, rx) = mpsc::unbounded_channel();
    let writer = actix_rt::spawn(write_loop(write, rx));
    router.link_up(peer, tx);
    peer.set_state(LinkState::Up);
    router.reregister_sessions(peer);

    let pinger = {
        let peer = peer.clone();
        let router = router.clone();
        actix_rt::spawn(async move {
            let mut tick = tokio::time::interval((timeout / 4).max(Duration::from_millis(50)));
            loop {
                tick.tick().await;
                let ping = PeerFrame::Ping {
                    connections: router.connections(),
                };
                if peer.send(&ping).is_err() {
                    break;
                }
            }
        })
    };

    let mut reader = BufReader::with_capacity(64 * 1024, read);
    loop {
        let frame = match tokio::time::timeout(timeout, read_frame(&mut reader)).await {
            Ok(Ok(frame)) => frame,
            Ok(Err(e)) => {
                tracing::warn!(peer = %peer.id, error = %e, "peer link lost");
                break;
            }
            Err(_) => {
                tracing::warn!(peer = %peer.id, "peer silent for peer_timeout_ms: link dropped");
                break;
            }
        };
        peer.metrics.envelopes_received[frame.0.kind()].inc();
        peer.metrics.bytes_received.inc_by(frame.1 as u64);
        match frame.0 {
            PeerFrame::Reply { id, result } => {
                if let Some(tx) = lock(&peer.pending).remove(&id) {
                    let _ = tx.send(result);
                }
            }
            PeerFrame::Pong { connections } => {
                peer.connections.store(connections, Ordering::Relaxed);
            }
            other => {
                tracing::warn!(peer = %peer.id, frame = ?other, "unexpected frame on a dialed link")
            }
        }
    }
    *lock(&peer.link) = None;
    peer.set_state(LinkState::Down);
    peer.fail_pending();
    pinger.abort();
    writer.abort();
}

/// Accepts the other nodes' links until the task is aborted.
pub async fn accept_forever(router: Router, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, addr)) => {
                let router = router.clone();
                actix_rt::spawn(async move {
                    if let Err(e) = serve_accepted(&router, stream).await {
                        tracing::debug!(%addr, error = %e, "peer connection ended");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot accept a peer connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve_accepted(router: &Router, mut stream: TcpStream) -> std::io::Result<()> {
    let timeout = router.config().cluster.peer_timeout();
    let _ = stream.set_nodelay(true);
    let nonce = hex::encode(rand::random::<[u8; 16]>());
    stream
        .write_all(&encode(&PeerFrame::Challenge {
            nonce: nonce.clone(),
        }))
        .await?;
    let (node, signature, given) = match with_timeout(timeout, read_frame(&mut stream)).await? {
        (
            PeerFrame::Hello {
                node,
                signature,
                proof,
            },
            _,
        ) => (node, signature, proof),
        _ => return Err(io_error("expected hello")),
    };
    let secret = &router.config().auth.token_secret;
    let refusal = if !verify_proof(secret, &nonce, &node, &signature, &given) {
        Some("authentication failed (different token_secret?)".to_owned())
    } else if signature != router.signature() {
        Some(format!(
            "cluster signature {signature} differs from this node's {} (nodes or vnodes differ)",
            router.signature()
        ))
    } else if router.peer(&node).is_none() {
        Some(format!("{node} is not a peer of this node"))
    } else {
        None
    };
    if let Some(reason) = refusal {
        tracing::error!(peer = %node, %reason, "refusing peer");
        if let Some(peer) = router.peer(&node) {
            peer.set_state(LinkState::Refused);
        }
        stream
            .write_all(&encode(&PeerFrame::Refused { reason }))
            .await?;
        return Ok(());
    }
    let Some(peer) = router.peer(&node).cloned() else {
        return Ok(());
    };
    stream
        .write_all(&encode(&PeerFrame::Welcome {
            node: router.node().clone(),
            signature: router.signature(),
        }))
        .await?;
    let (read, write) = stream.into_split();
    let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
    let writer = actix_rt::spawn(write_loop(write, rx));
    let reply = |frame: &PeerFrame| {
        let bytes = encode(frame);
        peer.metrics.envelopes_sent[frame.kind()].inc();
        peer.metrics.bytes_sent.inc_by(bytes.len() as u64);
        let _ = tx.send(bytes);
    };
    let mut reader = BufReader::with_capacity(64 * 1024, read);
    let result = loop {
        let (frame, len) = match tokio::time::timeout(timeout, read_frame(&mut reader)).await {
            Ok(Ok(frame)) => frame,
            Ok(Err(e)) => break Err(e),
            Err(_) => break Err(io_error("peer silent for peer_timeout_ms")),
        };
        peer.metrics.envelopes_received[frame.kind()].inc();
        peer.metrics.bytes_received.inc_by(len as u64);
        match frame {
            PeerFrame::Call { id, to, name, body } => {
                let started = Instant::now();
                let answer = remote::dispatch(router, to, &name, &body);
                let tx = tx.clone();
                let metrics = peer.metrics.clone();
                actix_rt::spawn(async move {
                    let result = answer.await;
                    let reply = PeerFrame::Reply { id, result };
                    let bytes = encode(&reply);
                    metrics.envelopes_sent[reply.kind()].inc();
                    metrics.bytes_sent.inc_by(bytes.len() as u64);
                    let _ = tx.send(bytes);
                    tracing::trace!(name, elapsed = ?started.elapsed(), "served a remote call");
                });
            }
            PeerFrame::Tell { to, name, body } => remote::dispatch_tell(router, to, &name, &body),
            PeerFrame::Push {
                users,
                except,
                out,
                bulk,
            } => router.deliver_local(&users, &out, except.as_ref(), bulk),
            PeerFrame::Kick { user, session } => router.kick_local(&user, session),
            PeerFrame::Online {
                users,
                online,
                reset,
            } => router.set_remote_online(peer.index, &users, online, reset),
            PeerFrame::Ping { connections } => {
                peer.connections.store(connections, Ordering::Relaxed);
                reply(&PeerFrame::Pong {
                    connections: router.connections(),
                });
            }
            other => {
                tracing::warn!(peer = %peer.id, frame = ?other, "unexpected frame on an accepted link");
            }
        }
    };
    // The directory keeps what this peer last said about its users (it sends a new list when it is back):
    // pushes for them meanwhile fail and are remembered as missed, not silently skipped.
    drop(tx);
    let _ = writer.await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_verify_only_with_the_same_secret_nonce_node_and_signature() {
        let node = NodeId::parse("n2").unwrap();
        let p = proof("s3cret", "abc", &node, "42");
        assert!(verify_proof("s3cret", "abc", &node, "42", &p));
        assert!(!verify_proof("other", "abc", &node, "42", &p));
        assert!(!verify_proof("s3cret", "abd", &node, "42", &p));
        assert!(!verify_proof("s3cret", "abc", &node, "43", &p));
        let n3 = NodeId::parse("n3").unwrap();
        assert!(!verify_proof("s3cret", "abc", &n3, "42", &p));
        assert!(!verify_proof("s3cret", "abc", &node, "42", "not hex"));
    }

    #[tokio::test]
    async fn frames_round_trip_with_their_length() {
        let frame = PeerFrame::Ping { connections: 7 };
        let bytes = encode(&frame);
        let mut r = &bytes[..];
        let (back, len) = read_frame(&mut r).await.unwrap();
        assert_eq!(len, bytes.len());
        assert!(matches!(back, PeerFrame::Ping { connections: 7 }));
    }
}
