//! A node's lifecycle: start (open the store, start the arbiters, bind the client and peer addresses, dial
//! the peers), run until a shutdown signal, stop (stop accepting, tell clients to reconnect elsewhere, end
//! the actors, flush the store). `main` and the tests use the same entry point.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Arbiter;

use crate::cluster::placement::Layout;
use crate::cluster::replication::Replication;
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
        let config_nodes = config.nodes.len();
        let router = Router::new(
            id.clone(),
            Arc::new(config),
            store.clone(),
            metrics.clone(),
            handles,
        );
        let layout = Layout::new(router.config(), router.ring());
        let replication = Replication::start(
            router.config(),
            &id,
            layout,
            &node.data_dir.join("raft"),
            router.peers().to_vec(),
            store.clone(),
            metrics,
        )?;
        router.set_replication(replication.clone());
        {
            let router = router.clone();
            replication.on_change(move |partitions| router.leadership_changed(partitions));
        }

        let (server, addr) =
            server::bind(&router, &node.listen, cores).map_err(|source| NodeError::Bind {
                addr: node.listen.clone(),
                source,
            })?;
        router.set_listen(addr);

        let mut peer_tasks = Vec::new();
        if !router.peers().is_empty() {
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
            for p in router.peers() {
                peer_tasks.push(actix_rt::spawn(peer::dial_forever(
                    router.clone(),
                    p.clone(),
                )));
            }
        }
        tracing::info!(node = %router.node(), %addr, peer = %node.peer, nodes = config_nodes, "node started");
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
