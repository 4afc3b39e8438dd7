//! A bare WebSocket relay: the yardstick of issue 18 ("the last member within 1.3x the bare relay's time
//! measured in the same sitting"). `rookery-bench --relay WORKLOAD` starts it as a process of its own (this
//! binary, `serve-relay`) in place of the nodes, so the same load generator measures both in one sitting.
//!
//! It speaks just enough of PROTOCOL.md for the `dm` and `fanout` workloads and does nothing a chat server
//! must do beyond that: the token is checked once per connection, then every `send` gets the next number of
//! its conversation and is written, at once, to the other member's connections (`dm:A:B`) or to every other
//! connection (`g:...`); the sender gets `sent` after that, not after a store. Nothing is stored,
//! deduplicated, ordered across connections beyond the numbering, or pulled (`sync` answers an empty
//! page). Each connection is a reader task and a writer task that drains its queue and flushes once the
//! queue is empty, the usual shape of a tokio relay.
//!
//! It trusts its clients, the bench's own: ids are written into frames unescaped and the queues are
//! unbounded. A yardstick on loopback, not a server to expose.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};
use tokio_tungstenite::tungstenite::Message;

/// One connection's queue of frames to write.
type Outbox = UnboundedSender<Message>;

#[derive(Default)]
struct Relay {
    /// Every authenticated connection: its id, its user and its queue.
    connections: Mutex<Vec<(u64, Arc<str>, Outbox)>>,
    /// The last number given in each conversation.
    seqs: Mutex<HashMap<String, u64>>,
    next_id: AtomicU64,
}

/// The fields of a client frame the relay reads.
#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    #[serde(default)]
    rid: Option<u64>,
    #[serde(default, borrow)]
    token: Option<&'a str>,
    #[serde(default, borrow)]
    conv: Option<&'a str>,
    #[serde(default, borrow)]
    cid: Option<&'a str>,
    #[serde(default, borrow)]
    body: Option<&'a RawValue>,
}

/// Serves the relay on `listen` until the process is stopped, on two worker threads (as a node's HTTP
/// workers).
pub fn serve(listen: SocketAddr, secret: &str) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = TcpListener::bind(listen).await?;
        let relay = Arc::new(Relay::default());
        let secret: Arc<str> = secret.into();
        loop {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            tokio::spawn(connection(relay.clone(), secret.clone(), stream));
        }
    })
}

async fn connection(relay: Arc<Relay>, secret: Arc<str>, stream: TcpStream) {
    // anything but a WebSocket upgrade (the bench's `/metrics` scrapes) is simply closed
    let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = unbounded_channel::<Message>();
    let writer = tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut next = Some(first);
            while let Some(message) = next {
                if sink.feed(message).await.is_err() {
                    return;
                }
                next = rx.try_recv().ok();
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    let id = relay.next_id.fetch_add(1, Ordering::Relaxed);
    let mut user: Option<Arc<str>> = None;
    while let Some(Ok(message)) = stream.next().await {
        let Message::Text(text) = message else {
            continue;
        };
        let Ok(frame) = serde_json::from_str::<Frame<'_>>(&text) else {
            let _ = tx.send(Message::Text(error(None, "malformed frame")));
            continue;
        };
        match (&user, frame.kind) {
            (None, "auth") => {
                let verified = frame
                    .token
                    .and_then(|t| rookery::net::auth::verify(&secret, 86_400 * 30, t).ok());
                let Some(name) = verified else {
                    let _ = tx.send(Message::Text(error(None, "bad token")));
                    break;
                };
                let name: Arc<str> = name.as_str().into();
                relay
                    .connections
                    .lock()
                    .expect("relay lock")
                    .push((id, name.clone(), tx.clone()));
                let welcome = format!(r#"{{"type":"welcome","user":"{name}"}}"#);
                let _ = tx.send(Message::Text(welcome));
                user = Some(name);
            }
            (None, _) => {
                let _ = tx.send(Message::Text(error(frame.rid, "auth first")));
            }
            (Some(from), "send") => relay.send(id, from, &frame, &tx),
            (Some(_), "ping") => {
                let _ = tx.send(Message::Text(format!(
                    r#"{{"type":"pong","rid":{}}}"#,
                    frame.rid.unwrap_or(0)
                )));
            }
            (Some(_), "sync") => {
                let reply = format!(
                    r#"{{"type":"msgs","rid":{},"conv":"{}","msgs":[],"last_seq":{}}}"#,
                    frame.rid.unwrap_or(0),
                    frame.conv.unwrap_or(""),
                    relay.last_seq(frame.conv.unwrap_or(""))
                );
                let _ = tx.send(Message::Text(reply));
            }
            (Some(_), _) => {
                // group_create, group_add and the like: accepted; `ack` and the rest: nothing to answer
                if let Some(rid) = frame.rid {
                    let _ = tx.send(Message::Text(format!(r#"{{"type":"ok","rid":{rid}}}"#)));
                }
            }
        }
    }
    relay
        .connections
        .lock()
        .expect("relay lock")
        .retain(|(c, _, _)| *c != id);
    drop(tx);
    let _ = writer.await;
}

impl Relay {
    fn last_seq(&self, conv: &str) -> u64 {
        self.seqs
            .lock()
            .expect("relay lock")
            .get(conv)
            .copied()
            .unwrap_or(0)
    }

    /// Numbers the message, writes it to its recipients' queues, then answers `sent`.
    fn send(&self, id: u64, from: &str, frame: &Frame<'_>, tx: &Outbox) {
        let (Some(conv), Some(cid)) = (frame.conv, frame.cid) else {
            let _ = tx.send(Message::Text(error(frame.rid, "send needs conv and cid")));
            return;
        };
        let seq = {
            let mut seqs = self.seqs.lock().expect("relay lock");
            let seq = seqs.entry(conv.to_string()).or_insert(0);
            *seq += 1;
            *seq
        };
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let body = frame.body.map_or("{}", RawValue::get);
        let msg = format!(
            r#"{{"type":"msg","conv":"{conv}","seq":{seq},"from":"{from}","cid":"{cid}","ts":{ts},"body":{body}}}"#
        );
        // a direct conversation's other member, or everyone for a group
        let peer = conv
            .strip_prefix("dm:")
            .and_then(|pair| pair.split_once(':'))
            .map(|(a, b)| if a == from { b } else { a });
        for (c, user, outbox) in self.connections.lock().expect("relay lock").iter() {
            let to = match peer {
                Some(peer) => &**user == peer,
                None => *c != id,
            };
            if to {
                let _ = outbox.send(Message::Text(msg.clone()));
            }
        }
        let _ = tx.send(Message::Text(format!(
            r#"{{"type":"sent","rid":{},"cid":"{cid}","conv":"{conv}","seq":{seq},"ts":{ts}}}"#,
            frame.rid.unwrap_or(0)
        )));
    }
}

fn error(rid: Option<u64>, message: &str) -> String {
    format!(
        r#"{{"type":"error","rid":{},"code":"bad_request","message":"{message}"}}"#,
        rid.unwrap_or(0)
    )
}
