//! `rookery-client`: a line-mode client for trying a node by hand. It connects, authenticates, prints every
//! frame the server sends (one JSON object per line) and sends each line typed on stdin as a frame.
//!
//!     rookery-client --addr 127.0.0.1:7001 --token "$(rookery token alice)" --device laptop

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use rookery::client::Client;
use tokio::io::{AsyncBufReadExt, BufReader};

#[derive(Parser)]
#[command(
    name = "rookery-client",
    about = "Talk to a Rookery node: stdin lines out, frames in"
)]
struct Cli {
    #[arg(long, default_value = "127.0.0.1:7001")]
    addr: SocketAddr,
    #[arg(long)]
    token: String,
    #[arg(long, default_value = "cli")]
    device: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let (mut client, welcome) = Client::login(cli.addr, &cli.token, &cli.device).await?;
    println!("{welcome}");
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut ping = tokio::time::interval(Duration::from_secs(20));
    loop {
        tokio::select! {
            line = lines.next_line() => match line? {
                None => break,
                Some(l) if l.trim().is_empty() => {}
                Some(l) => client.send_text(l).await?,
            },
            frame = client.next(Duration::from_secs(3600)) => match frame {
                Ok(Some(f)) => println!("{f}"),
                Ok(None) => { eprintln!("connection closed"); break; }
                Err(rookery::client::ClientError::Timeout(_)) => {}
                Err(e) => return Err(e.into()),
            },
            _ = ping.tick() => client.send_text(r#"{"type":"ping"}"#.into()).await?,
        }
    }
    Ok(())
}
