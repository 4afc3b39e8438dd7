//! A node's lifecycle: start (open the store, start the arbiters, bind the client and peer addresses, dial
//! the peers), run until a shutdown signal, stop (stop accepting, tell clients to reconnect elsewhere, end
//! the actors, flush the store). `main` and the tests use the same entry point.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Arbiter;

use crate::cluster::membership::Membership;
use crate::cluster::replication::{Replication, StoredMembership};
use crate::cluster::{peer, Router};
use crate::config::{Config, ConfigError};
use crate::ids::NodeId;
use crate::metrics::Metrics;
use crate::net::server;
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot open store: {0}")]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Replication(#[from] crate::cluster::replication::ReplicationError),
    #[error("server failed: {0}")]
    Server(std::io::Error),
    #[error(
        "`cluster.partitions` is {configured}, but this node's data was created with {stored}: the partition \
         count is fixed once a cluster holds data (every key would hash to another partition); set it back to {stored}"
    )]
    Partitions { configured: u32, stored: u32 },
}

/// A started node. Must be created inside an actix `System`.
pub struct Node {
    router: Router,
    replication: Arc<Replication>,
    store: Store,
    server: actix_server::Server,
    addr: SocketAddr,
    arbiters: Vec<Arbiter>,
    /// The peer acceptor and one dialer per peer.
    peer_tasks: Vec<actix_rt::task::JoinHandle<()>>,
}

/// How long a stopping node waits for its clients to take the hint and leave.
const DRAIN: Duration = Duration::from_secs(2);
/// How long a stopping node keeps its peer links after its clients are gone.
const LINGER: Duration = Duration::from_millis(500);

impl Node {
    /// Opens the store, starts one arbiter per core for user and conversation actors, binds `listen`.
    pub fn start(config: Config, node_id: Option<&str>) -> Result<Node, NodeError> {
        Node::start_joining(config, node_id, None)
    }

    /// [`Node::start`] for a node that joins a running cluster through the member whose peer address is
    /// `join` (`rookery --join`): unless its data directory already holds a membership record (it joined
    /// before), it takes the membership from the cluster rather than from `[[nodes]]`, keeps no partition
    /// until a leader adds it, and exits if the member refuses it for good (another secret or shape).
    pub fn start_joining(
        config: Config,
        node_id: Option<&str>,
        join: Option<String>,
    ) -> Result<Node, NodeError> {
        config.validate()?;
        let node = config.node(node_id)?.clone();
        let id = NodeId::parse(&node.id).map_err(|e| ConfigError::Invalid(vec![e.to_string()]))?;
        std::fs::create_dir_all(&node.data_dir).map_err(|source| NodeError::DataDir {
            path: node.data_dir.display().to_string(),
            source,
        })?;

        let metrics = Arc::new(Metrics::new());
        let store = Store::open(
            &node.data_dir,
            &config.store,
            metrics.store_flush_seconds.clone(),
        )?;
        if let Some(stored) = store.fix_partitions(config.cluster.partitions)? {
            store.close()?;
            return Err(NodeError::Partitions {
                configured: config.cluster.partitions,
                stored,
            });
        }
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
        let arbiters: Vec<Arbiter> = (0..cores).map(|_| Arbiter::new()).collect();
        let handles = arbiters.iter().map(Arbiter::handle).collect();
        let stored = store
            .membership()?
            .and_then(|bytes| serde_json::from_slice::<StoredMembership>(&bytes).ok())
            .map(|s| s.membership);
        let (membership, first) = match (stored, &join) {
            (Some(stored), _) => (Some(stored), false),
            (None, Some(_)) => (None, false),
            (None, None) => (Some(Membership::initial(&config)), true),
        };
        let router = Router::new(
            id.clone(),
            Arc::new(config),
            store.clone(),
            metrics.clone(),
            handles,
        );
        let replication = Replication::start(
            router.config(),
            &id,
            membership.clone(),
            first,
            &node.data_dir.join("raft"),
            store.clone(),
            metrics,
        )?;
        router.set_replication(replication.clone());
        router.set_members(membership.as_ref());
        {
            let router = router.clone();
            replication.on_change(move |event| router.on_event(event));
        }
        {
            let router = router.clone();
            replication.on_membership(move |layout| router.set_members(layout.membership()));
        }

        let (server, addr) =
            server::bind(&router, &node.listen, cores).map_err(|source| NodeError::Bind {
                addr: node.listen.clone(),
                source,
            })?;
        router.set_listen(addr);

        // the peer address is bound even on a single node: nodes may join it later
        let mut peer_tasks = Vec::new();
        let bind = |listen: &str| -> std::io::Result<tokio::net::TcpListener> {
            let listener = std::net::TcpListener::bind(listen)?;
            listener.set_nonblocking(true)?;
            tokio::net::TcpListener::from_std(listener)
        };
        let listener = bind(&node.peer).map_err(|source| NodeError::Bind {
            addr: node.peer.clone(),
            source,
        })?;
        peer_tasks.push(actix_rt::spawn(peer::accept_forever(
            router.clone(),
            listener,
        )));
        if let Some(dialers) = router.take_dialers() {
            peer_tasks.push(actix_rt::spawn(peer::manage(dialers)));
        }
        if let Some(addr) = join {
            let router = router.clone();
            peer_tasks.push(actix_rt::spawn(async move {
                match peer::await_membership(router, addr.clone()).await {
                    Ok(member) => tracing::info!(%member, "accepted by the cluster"),
                    Err(reason) => {
                        tracing::error!(join = %addr, %reason, "the cluster refuses this node: stopping");
                        eprintln!("rookery: {addr} refuses this node: {reason}");
                        std::process::exit(2);
                    }
                }
            }));
        }
        let members = router.peers().len() + 1;
        tracing::info!(node = %router.node(), %addr, peer = %node.peer, members, "node started");
        Ok(Node {
            router,
            replication,
            store,
            server,
            addr,
            arbiters,
            peer_tasks,
        })
    }

    /// The bound client address (HTTP and `/ws`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn router(&self) -> &Router {
        &self.router
    }

    /// Serves until `shutdown` resolves, then stops cleanly: no new connections, clients told to reconnect
    /// elsewhere (close code 1012) and given up to 2 s to leave, peer links closed, actors stopped, store
    /// flushed.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), NodeError> {
        let handle = self.server.handle();
        let server = actix_rt::spawn(self.server);
        let sweeper = actix_rt::spawn(crate::net::media::sweep_forever(self.router.clone()));
        let webhooks = actix_rt::spawn(crate::webhooks::sender::deliver_forever(
            self.router.clone(),
        ));
        shutdown.await;
        tracing::info!(node = %self.router.node(), "shutting down");
        handle.pause().await;
        let replication = self.replication.clone();
        let deadline = self.router.config().cluster.election_timeout() * 2;
        let still_led = actix_rt::task::spawn_blocking(move || replication.hand_over(deadline))
            .await
            .unwrap_or(0);
        // follow on until the end (requests that still reach this node are forwarded to the new leaders
        // it learns of), but never lead again
        self.replication.retire();
        tracing::info!(still_led, "partition leadership handed over");
        let told = self.router.shutdown_sessions();
        let deadline = Instant::now() + DRAIN;
        while told > 0 && self.router.connections() > 0 && Instant::now() < deadline {
            actix_rt::time::sleep(Duration::from_millis(20)).await;
        }
        handle.stop(true).await;
        // requests that reached this node just before its hand-over were forwarded to the new leaders:
        // their answers come back over the peer links, which stay up a moment longer
        actix_rt::time::sleep(LINGER).await;
        self.replication.stop();
        for task in self.peer_tasks {
            task.abort();
        }
        let _ = server.await;
        sweeper.abort();
        webhooks.abort();
        for arbiter in self.arbiters {
            arbiter.stop();
            let _ = arbiter.join();
        }
        self.store.close()?;
        tracing::info!("store flushed; bye");
        Ok(())
    }
}
