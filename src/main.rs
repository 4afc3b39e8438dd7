//! The `rookery` command: start a node (or join one to a running cluster), mint a client token, or change
//! the cluster's membership.

#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use rookery::cli::ClusterAction;
use rookery::config::Config;
use rookery::ids::UserId;
use rookery::net::auth;
use rookery::Node;

/// mimalloc: fewer cycles per allocation than glibc's under cross-thread frees (the profile showed ~15% in
/// malloc/free) and less fragmentation for many idle connections.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "rookery", version, about = "Rookery instant-messaging node")]
struct Cli {
    /// The cluster config (the same file on every node).
    #[arg(long, global = true, default_value = "cluster.toml")]
    config: PathBuf,
    /// Which node of the config to run (default: the first).
    #[arg(long)]
    node: Option<String>,
    /// Join the running cluster whose member has this peer address (HOST:PORT) instead of starting from
    /// the config's `[[nodes]]`: the node waits until it is added (`rookery cluster add`), then receives
    /// its share of the partitions.
    #[arg(long, value_name = "PEER_ADDR")]
    join: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Print a client token for USER, signed with the config's secret.
    Token {
        user: String,
        /// Validity in seconds (default 86400, or `auth.max_token_ttl_s` when that is lower).
        #[arg(long)]
        ttl: Option<u64>,
        /// Print a sign-in link to the web client on the config's first node instead of the bare token.
        #[arg(long)]
        link: bool,
    },
    /// Show or change the cluster's membership (with the config's admin key).
    Cluster {
        #[command(subcommand)]
        action: ClusterCommand,
        /// A member's client address (HOST:PORT) to ask (default: the config's nodes, first that answers).
        #[arg(long, global = true)]
        via: Option<String>,
        /// Return once the change is accepted instead of showing progress until it has settled.
        #[arg(long, global = true)]
        no_wait: bool,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// The members, their state, and how many partitions are moving.
    Status,
    /// Add node ID (its addresses from its `[[nodes]]` entry in the config, or given); shows progress
    /// until it holds its share of the partitions.
    Add {
        id: String,
        #[arg(long)]
        listen: Option<String>,
        #[arg(long)]
        peer: Option<String>,
    },
    /// Remove node ID; shows progress until its partitions have moved and it may be stopped.
    Remove { id: String },
}

fn main() -> anyhow::Result<()> {
    // colours only on a terminal: a log file or the journal gets plain text
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    let config = Config::load(&cli.config)?;
    match cli.command {
        Some(Command::Token { user, ttl, link }) => {
            let user = UserId::parse(&user)?;
            let max = config.auth.max_token_ttl_s;
            let ttl = ttl.unwrap_or(auth::DEFAULT_TTL_S.min(max));
            auth::check_ttl(ttl, max).map_err(|e| anyhow::anyhow!("--ttl: {e}"))?;
            let token = auth::mint(&config.auth.token_secret, &user, ttl);
            if link {
                let node = config
                    .nodes
                    .first()
                    .context("the config has no [[nodes]]")?;
                println!("{}", sign_in_link(&node.listen, &token));
            } else {
                println!("{token}");
            }
            Ok(())
        }
        Some(Command::Cluster {
            action,
            via,
            no_wait,
        }) => {
            let action = match action {
                ClusterCommand::Status => ClusterAction::Status,
                ClusterCommand::Add { id, listen, peer } => ClusterAction::Add { id, listen, peer },
                ClusterCommand::Remove { id } => ClusterAction::Remove { id },
            };
            rookery::cli::cluster(&config, &action, via.as_deref(), !no_wait)
        }
        None => {
            no_transparent_huge_pages();
            actix_rt::System::new().block_on(async move {
                let node = Node::start_joining(config, cli.node.as_deref(), cli.join)?;
                let addr = node.addr();
                println!(
                    "rookery node {} listening on http://{addr} (WebSocket ws://{addr}/ws)",
                    node.router().node()
                );
                node.run(shutdown_signal()).await.context("node failed")
            })
        }
    }
}

/// The web client's address on a node, with the token in the fragment (never sent to the server, never
/// logged). A wildcard listen address is shown as loopback, which is where a browser on this machine finds it.
fn sign_in_link(listen: &str, token: &str) -> String {
    let host = match listen.rsplit_once(':') {
        Some(("0.0.0.0", port)) => format!("127.0.0.1:{port}"),
        Some(("[::]", port)) => format!("[::1]:{port}"),
        _ => listen.to_string(),
    };
    format!("http://{host}/#token={token}")
}

/// Turns transparent huge pages off for this process, before the node allocates its store's page cache and
/// log buffers. With them on (`always`, or `madvise`, which mimalloc asks for), the first write to each new
/// 2 MiB of heap zeroes a whole huge page in one page fault: on the virtual machines this was measured on, 30
/// to 60 ms, during which the thread that faulted (a conversation's arbiter in the middle of a sled insert,
/// or a session's worker) serves nobody. That was the whole tail at a fixed rate: p99 at 10,000 msgs/s 37 to
/// 81 ms with them and 5.5 to 9.6 ms without; replicated at 2,000 msgs/s 41 to 121 ms and 20 to 25 ms. The
/// same CPU per message on one node, about 5% more replicated, and a third to half less memory
/// (bench/README.md, "Stop 34").
fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        tracing::warn!(error = %e, "cannot turn transparent huge pages off; latency may spike as memory grows");
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
