//! A small client that speaks the contract, shared by the tests and the load generator (`bench/`).
//!
//! Frames are `serde_json::Value`s. [`Client::expect`] waits for a frame matching a predicate and keeps the
//! frames it passes over, so a test can wait for a reply without losing the pushes that came first.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Message, WebSocketConfig};
use tokio_tungstenite::{client_async_with_config, WebSocketStream};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("websocket: {0}")]
    Ws(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("timed out waiting for {0}")]
    Timeout(String),
    #[error("connection closed{}", .0.as_ref().map(|c| format!(" ({} {})", c.code, c.reason)).unwrap_or_default())]
    Closed(Option<CloseFrame<'static>>),
    #[error("server sent a frame that is not JSON: {0}")]
    NotJson(String),
    #[error("server answered with an error: {0}")]
    Refused(Value),
}

pub type ClientResult<T> = Result<T, ClientError>;

pub struct Client {
    ws: WebSocketStream<TcpStream>,
    buffered: VecDeque<Value>,
    next_rid: u64,
    closed: Option<Option<CloseFrame<'static>>>,
}

impl Client {
    /// Opens a WebSocket to `addr` (`/ws`) without authenticating.
    pub async fn connect(addr: SocketAddr) -> ClientResult<Client> {
        Self::connect_from(addr, None).await
    }

    /// Like [`Client::connect`], from a chosen local address (spreads many connections over 127.0.0.x).
    pub async fn connect_from(addr: SocketAddr, local: Option<IpAddr>) -> ClientResult<Client> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(ip) = local {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        let stream = socket.connect(addr).await?;
        stream.set_nodelay(true)?;
        let config = WebSocketConfig {
            max_message_size: Some(64 << 20),
            ..Default::default()
        };
        let (ws, _) =
            client_async_with_config(format!("ws://{addr}/ws"), stream, Some(config)).await?;
        Ok(Client {
            ws,
            buffered: VecDeque::new(),
            next_rid: 1,
            closed: None,
        })
    }

    /// Connects and authenticates; returns the client and its `welcome` frame.
    pub async fn login(
        addr: SocketAddr,
        token: &str,
        device: &str,
    ) -> ClientResult<(Client, Value)> {
        let mut client = Self::connect(addr).await?;
        let welcome = client.auth(token, device).await?;
        Ok((client, welcome))
    }

    /// Logs in to the first node of `nodes` that accepts, starting at a random one and waiting a jittered,
    /// growing delay after each full round that failed (so the clients of a node that died do not all land
    /// on the same node at the same instant). Gives up after `rounds` rounds; returns the client, its
    /// `welcome` and the node it reached. A client whose node closed it (crash or shutdown, close code 1012)
    /// calls this with the other nodes, then pulls with `convs` and `sync`.
    pub async fn login_any(
        nodes: &[SocketAddr],
        token: &str,
        device: &str,
        rounds: u32,
    ) -> ClientResult<(Client, Value, SocketAddr)> {
        let mut backoff =
            crate::actors::limits::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let start = usize::try_from(rand::random::<u32>()).unwrap_or(0);
        let mut last = ClientError::Timeout("a node to log in to".into());
        for _ in 0..rounds {
            for i in 0..nodes.len() {
                let addr = nodes[(start + i) % nodes.len()];
                match Self::login(addr, token, device).await {
                    Ok((client, welcome)) => return Ok((client, welcome, addr)),
                    Err(e) => last = e,
                }
            }
            tokio::time::sleep(backoff.next(rand::random())).await;
        }
        Err(last)
    }

    /// Sends `auth` and waits for `welcome` (an `error` is returned as [`ClientError::Refused`]).
    pub async fn auth(&mut self, token: &str, device: &str) -> ClientResult<Value> {
        self.send(&json!({"type":"auth","token":token,"device":device}))
            .await?;
        let reply = self
            .expect(
                |f| f["type"] == "welcome" || f["type"] == "error",
                Duration::from_secs(10),
            )
            .await?;
        if reply["type"] == "error" {
            return Err(ClientError::Refused(reply));
        }
        Ok(reply)
    }

    pub async fn send(&mut self, frame: &Value) -> ClientResult<()> {
        self.send_text(frame.to_string()).await
    }

    pub async fn send_text(&mut self, text: String) -> ClientResult<()> {
        self.ws.send(Message::Text(text)).await?;
        Ok(())
    }

    pub async fn send_raw(&mut self, message: Message) -> ClientResult<()> {
        self.ws.send(message).await?;
        Ok(())
    }

    /// Sends `frame` with a fresh `rid` and waits for the frame that carries it back.
    pub async fn request(&mut self, mut frame: Value) -> ClientResult<Value> {
        let rid = self.next_rid;
        self.next_rid += 1;
        frame["rid"] = json!(rid);
        self.send(&frame).await?;
        self.expect(move |f| f["rid"] == json!(rid), Duration::from_secs(10))
            .await
    }

    /// Like [`Client::request`], but an `error` reply is an `Err`.
    pub async fn call(&mut self, frame: Value) -> ClientResult<Value> {
        let reply = self.request(frame).await?;
        if reply["type"] == "error" {
            return Err(ClientError::Refused(reply));
        }
        Ok(reply)
    }

    /// The next frame from the server, buffered ones first; `Ok(None)` when the server closed.
    pub async fn next(&mut self, timeout: Duration) -> ClientResult<Option<Value>> {
        if let Some(f) = self.buffered.pop_front() {
            return Ok(Some(f));
        }
        self.read(timeout).await
    }

    async fn read(&mut self, timeout: Duration) -> ClientResult<Option<Value>> {
        if self.closed.is_some() {
            return Ok(None);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let msg = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Err(ClientError::Timeout("a frame".into())),
                Ok(None) => {
                    self.closed = Some(None);
                    return Ok(None);
                }
                Ok(Some(Err(e))) => {
                    self.closed = Some(None);
                    return match e {
                        tokio_tungstenite::tungstenite::Error::ConnectionClosed
                        | tokio_tungstenite::tungstenite::Error::AlreadyClosed => Ok(None),
                        tokio_tungstenite::tungstenite::Error::Protocol(_)
                        | tokio_tungstenite::tungstenite::Error::Io(_) => Ok(None),
                        e => Err(e.into()),
                    };
                }
                Ok(Some(Ok(m))) => m,
            };
            match msg {
                Message::Text(t) => {
                    return serde_json::from_str(&t)
                        .map(Some)
                        .map_err(|_| ClientError::NotJson(t));
                }
                Message::Close(frame) => {
                    self.closed = Some(frame.map(CloseFrame::into_owned));
                    return Ok(None);
                }
                _ => continue,
            }
        }
    }

    /// The next text frame as it came, without parsing and without a timer (for load generation); `Ok(None)`
    /// when the connection closed. Frames buffered by [`Client::expect`] are not seen here.
    pub async fn next_text(&mut self) -> ClientResult<Option<String>> {
        loop {
            match self.ws.next().await {
                None => return Ok(None),
                Some(Ok(Message::Text(t))) => return Ok(Some(t)),
                Some(Ok(Message::Close(_))) => return Ok(None),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.into()),
            }
        }
    }

    /// Waits up to `timeout` for a frame matching `pred`; frames passed over stay buffered for later.
    pub async fn expect(
        &mut self,
        pred: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> ClientResult<Value> {
        if let Some(i) = self.buffered.iter().position(&pred) {
            if let Some(f) = self.buffered.remove(i) {
                return Ok(f);
            }
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.read(left).await? {
                None => return Err(ClientError::Closed(self.close_frame())),
                Some(f) if pred(&f) => return Ok(f),
                Some(f) => self.buffered.push_back(f),
            }
        }
    }

    /// Waits for a frame of `type` (and, if given, `conv`).
    pub async fn expect_type(&mut self, kind: &str, timeout: Duration) -> ClientResult<Value> {
        let kind = kind.to_string();
        self.expect(move |f| f["type"] == kind.as_str(), timeout)
            .await
    }

    /// Ok(()) if no frame matching `pred` arrives within `wait`.
    pub async fn expect_none(
        &mut self,
        pred: impl Fn(&Value) -> bool,
        wait: Duration,
    ) -> ClientResult<()> {
        match self.expect(&pred, wait).await {
            Ok(f) => Err(ClientError::Refused(f)),
            Err(ClientError::Timeout(_) | ClientError::Closed(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Waits until the server closes the connection; returns its close frame, if any.
    pub async fn expect_close(
        &mut self,
        timeout: Duration,
    ) -> ClientResult<Option<CloseFrame<'static>>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.read(left).await {
                Ok(None) => return Ok(self.close_frame()),
                Ok(Some(f)) => self.buffered.push_back(f),
                Err(ClientError::Timeout(_)) => {
                    return Err(ClientError::Timeout("the connection to close".into()))
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn close_frame(&self) -> Option<CloseFrame<'static>> {
        self.closed.clone().flatten()
    }

    /// Frames received but not yet taken.
    pub fn buffered(&mut self) -> &mut VecDeque<Value> {
        &mut self.buffered
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}
