//! WebSocket plumbing: the upgrade, reading frames from the socket, and writing frames to it. With
//! `actors/session.rs`, the only code that knows WebSocket framing.
//!
//! Why not `actix_web_actors::ws::start`: a connection served through actix-web's HTTP/1 dispatcher keeps an
//! 8 KiB read and an 8 KiB write buffer for its whole life, its stream buffers an oversized frame whole before
//! refusing it (and then ends the connection), and its outgoing queue is unbounded and invisible. The contract
//! wants oversized frames refused before they are buffered with the connection staying open, and the issue
//! wants a bounded outgoing queue and idle connections under 8 KiB. So `/ws` is served by actix-http's upgrade
//! hook ([`accept`]): after the handshake the session actor owns the socket. It reads only when the socket
//! is readable, into a short-lived buffer ([`TcpReader`], parsed by [`FrameReader`], which skips an
//! oversized payload as it streams past), and writes frames encoded once ([`WireFrame`]) straight to the
//! socket, keeping only what the kernel would not take ([`OutQueue`], counted in bytes).

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use actix::Actor as _;
use actix_codec::Framed;
use actix_http::body::BodySize;
use actix_http::ws::{CloseReason, OpCode, Parser};
use actix_http::{h1, Request, Response, StatusCode};
use actix_rt::net::TcpStream;
use actix_web::web::{Bytes, BytesMut};
use futures_util::{SinkExt, Stream};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::actors::session::SessionActor;
use crate::cluster::Router;

/// The path clients open the WebSocket on.
pub const WS_PATH: &str = "/ws";
/// Bytes read from a socket at a time; the buffer lives only while its frames are parsed.
const READ_CHUNK: usize = 4096;
/// Frames handed to one `writev`.
const MAX_IOVECS: usize = 64;

/// A failed upgrade (the socket broke during the handshake); actix-http logs it and drops the connection.
#[derive(Debug, thiserror::Error)]
#[error("websocket upgrade failed: {0}")]
pub struct UpgradeError(#[from] io::Error);

impl From<UpgradeError> for Response<actix_http::body::BoxBody> {
    fn from(_: UpgradeError) -> Self {
        Response::internal_server_error()
    }
}

/// actix-http's upgrade hook: answers the WebSocket handshake on `/ws` and hands the socket to a new session
/// actor on this worker thread. Anything else that asks for an upgrade gets 404 or 400.
pub async fn accept(
    router: Router,
    req: Request,
    mut framed: Framed<TcpStream, h1::Codec>,
) -> Result<(), UpgradeError> {
    let refuse = |status| (Response::with_body(status, ()), BodySize::Sized(0));
    if req.path() != WS_PATH {
        let _ = framed.send(refuse(StatusCode::NOT_FOUND).into()).await;
        return Ok(());
    }
    if !origin_allowed(&router.config().http, req.head()) {
        let _ = framed.send(refuse(StatusCode::FORBIDDEN).into()).await;
        return Ok(());
    }
    let response = match actix_http::ws::handshake(req.head()) {
        Ok(mut builder) => builder
            .message_body(())
            .map_err(|e| io::Error::other(e.to_string()))?,
        Err(e) => {
            let status = match e {
                actix_http::ws::HandshakeError::GetMethodRequired => StatusCode::METHOD_NOT_ALLOWED,
                _ => StatusCode::BAD_REQUEST,
            };
            let _ = framed.send(refuse(status).into()).await;
            return Ok(());
        }
    };
    framed.send((response, BodySize::None).into()).await?;
    let parts = framed.into_parts();
    // Keep only the bytes a client pipelined after its handshake, not the dispatcher's buffers.
    let leftover = (!parts.read_buf.is_empty()).then(|| Bytes::copy_from_slice(&parts.read_buf));
    let (read_half, write_half) = parts.io.into_split();
    let reader = FrameReader::new(
        TcpReader::new(read_half, leftover),
        router.config().limits.max_frame_bytes,
    );
    SessionActor::create(move |ctx| {
        actix::AsyncContext::add_stream(ctx, reader);
        SessionActor::new(router, OutQueue::new(write_half))
    });
    Ok(())
}

/// With `http.cors_origins` set, a browser (which always sends `Origin`) may open `/ws` only from a listed
/// origin or from the node's own (the scheme and the `Host` it asked for); clients that send no `Origin`
/// are not browsers and are let through. Without the key nothing is checked.
fn origin_allowed(http: &crate::config::HttpConfig, head: &actix_http::RequestHead) -> bool {
    if http.cors_origins.is_empty() {
        return true;
    }
    let header = |name| head.headers().get(name).and_then(|v| v.to_str().ok());
    let Some(origin) = header(actix_http::header::ORIGIN) else {
        return true;
    };
    let own = header(actix_http::header::HOST).is_some_and(|host| {
        ["http://", "https://"].iter().any(|scheme| {
            origin
                .strip_prefix(scheme)
                .is_some_and(|rest| rest.eq_ignore_ascii_case(host))
        })
    });
    own || http.allows_origin(origin)
}

/// The socket's incoming bytes as a stream of chunks, holding no buffer between reads.
///
/// Reads through tokio's `AsyncRead`, which takes a read that did not fill the buffer as proof that the
/// socket is drained: a client frame costs one `recvfrom`, not a second one that answers `EAGAIN`.
pub struct TcpReader {
    stream: OwnedReadHalf,
    leftover: Option<Bytes>,
}

impl TcpReader {
    pub fn new(stream: OwnedReadHalf, leftover: Option<Bytes>) -> TcpReader {
        TcpReader { stream, leftover }
    }
}

impl Stream for TcpReader {
    type Item = io::Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(bytes) = this.leftover.take() {
            return Poll::Ready(Some(Ok(bytes)));
        }
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        match std::task::ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut this.stream),
            cx,
            &mut buf
        )) {
            Err(e) => Poll::Ready(Some(Err(e))),
            Ok(0) => Poll::Ready(None),
            Ok(_) => Poll::Ready(Some(Ok(buf.freeze()))),
        }
    }
}

/// A connection's outgoing frames: written straight to the socket (many frames per `writev`); what the
/// kernel does not take waits here, counted in bytes so the session can tell a slow reader from a dead one.
pub struct OutQueue {
    stream: Rc<OwnedWriteHalf>,
    frames: VecDeque<Bytes>,
    queued: usize,
}

impl OutQueue {
    pub fn new(stream: OwnedWriteHalf) -> OutQueue {
        OutQueue {
            stream: Rc::new(stream),
            frames: VecDeque::new(),
            queued: 0,
        }
    }

    /// Bytes waiting for the socket.
    pub fn queued(&self) -> usize {
        self.queued
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Queues a frame (call [`OutQueue::flush`] to write).
    pub fn push(&mut self, bytes: Bytes) {
        self.queued += bytes.len();
        self.frames.push_back(bytes);
    }

    /// Writes as much as the socket takes now. `Ok(true)` when everything is written, `Ok(false)` when the
    /// socket is full (wait for [`OutQueue::writable`]).
    pub fn flush(&mut self) -> io::Result<bool> {
        while !self.frames.is_empty() {
            let slices: Vec<io::IoSlice<'_>> = self
                .frames
                .iter()
                .take(MAX_IOVECS)
                .map(|b| io::IoSlice::new(b))
                .collect();
            let mut written = match self.stream.try_write_vectored(&slices) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            };
            self.queued -= written;
            while written > 0 {
                let Some(front) = self.frames.front_mut() else {
                    break;
                };
                if front.len() <= written {
                    written -= front.len();
                    self.frames.pop_front();
                } else {
                    let _ = front.split_to(written);
                    written = 0;
                }
            }
        }
        if self.frames.capacity() > 16 {
            self.frames = VecDeque::new();
        }
        Ok(true)
    }

    /// Resolves when the socket can take more bytes.
    pub fn writable(&self) -> impl std::future::Future<Output = io::Result<()>> + 'static {
        let stream = Rc::clone(&self.stream);
        async move { stream.writable().await }
    }
}

/// One encoded server-to-client frame (unmasked, so identical for every recipient and shareable).
#[derive(Clone, Debug)]
pub struct WireFrame {
    pub kind: &'static str,
    pub bytes: Bytes,
}

impl WireFrame {
    /// A text frame carrying `json`; `kind` is its `type`, for metrics.
    pub fn text(kind: &'static str, json: &str) -> WireFrame {
        let mut dst = BytesMut::with_capacity(json.len() + 10);
        Parser::write_message(&mut dst, json.as_bytes(), OpCode::Text, true, false);
        WireFrame {
            kind,
            bytes: dst.freeze(),
        }
    }

    /// The frame's payload (for a text frame, the JSON text).
    pub fn payload(&self) -> &[u8] {
        let b = &self.bytes;
        let start = match b.get(1).map(|l| l & 0x7f) {
            Some(126) => 4,
            Some(127) => 10,
            Some(_) => 2,
            None => b.len(),
        };
        b.get(start..).unwrap_or_default()
    }

    pub fn pong(payload: &[u8]) -> WireFrame {
        let mut dst = BytesMut::with_capacity(payload.len() + 2);
        Parser::write_message(&mut dst, payload, OpCode::Pong, true, false);
        WireFrame {
            kind: "ws_pong",
            bytes: dst.freeze(),
        }
    }

    pub fn close(reason: Option<CloseReason>) -> WireFrame {
        let mut dst = BytesMut::with_capacity(32);
        Parser::write_close(&mut dst, reason, false);
        WireFrame {
            kind: "ws_close",
            bytes: dst.freeze(),
        }
    }
}

/// What the reader yields to the session.
#[derive(Debug, PartialEq)]
pub enum Incoming {
    Text(String),
    Binary,
    Ping(Bytes),
    Pong,
    Close(Option<CloseReason>),
    /// A data message over the frame limit; its payload was skipped, not buffered.
    TooLarge,
    /// A violation of RFC 6455 (bad opcode, unmasked frame, invalid UTF-8 text...): the connection must end.
    ProtocolError(String),
}

struct Header {
    len: usize,
    fin: bool,
    opcode: u8,
    payload: u64,
    mask: Option<[u8; 4]>,
}

/// Parses a frame header from the front of `buf`: `Ok(None)` until it is all there. Every length comes from
/// the network, so none is trusted: a 64-bit length with its top bit set breaks RFC 6455 5.2 and is an
/// error, and offsets are computed with checked arithmetic.
#[deny(clippy::arithmetic_side_effects)]
fn parse_header(buf: &[u8]) -> Result<Option<Header>, String> {
    let (Some(&b0), Some(&b1)) = (buf.first(), buf.get(1)) else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err("reserved bits set".into());
    }
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0f;
    let masked = b1 & 0x80 != 0;
    let (payload, len): (u64, usize) = match b1 & 0x7f {
        126 => match buf.get(2..4).and_then(|b| <[u8; 2]>::try_from(b).ok()) {
            None => return Ok(None),
            Some(b) => (u64::from(u16::from_be_bytes(b)), 4),
        },
        127 => match buf.get(2..10).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
            None => return Ok(None),
            Some(b) => (u64::from_be_bytes(b), 10),
        },
        n => (u64::from(n), 2),
    };
    if payload > MAX_PAYLOAD {
        return Err("frame length has its most significant bit set".into());
    }
    let mask = if masked {
        let Some(m) = buf
            .get(len..len.saturating_add(4))
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
        else {
            return Ok(None);
        };
        Some(m)
    } else {
        None
    };
    Ok(Some(Header {
        len: if masked { len.saturating_add(4) } else { len },
        fin,
        opcode,
        payload,
        mask,
    }))
}

/// The largest payload length RFC 6455 allows (the 64-bit length's top bit must be 0).
const MAX_PAYLOAD: u64 = i64::MAX as u64;

fn unmask(data: &mut [u8], mask: [u8; 4]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

const OP_CONT: u8 = 0;
const OP_TEXT: u8 = 1;
const OP_BINARY: u8 = 2;
const OP_CLOSE: u8 = 8;
const OP_PING: u8 = 9;
const OP_PONG: u8 = 10;

/// Reads client frames from the raw request payload, enforcing `max` bytes per message (fragments summed).
pub struct FrameReader<S> {
    stream: S,
    buf: BytesMut,
    max: usize,
    /// Payload bytes of an oversized frame still to discard.
    skip: u64,
    /// The fragments of a message in progress (`true` for text).
    fragment: Option<(bool, BytesMut)>,
    /// Discarding the remaining fragments of an oversized message.
    discarding: bool,
    done: bool,
}

impl<S> FrameReader<S> {
    pub fn new(stream: S, max: usize) -> Self {
        FrameReader {
            stream,
            buf: BytesMut::new(),
            max,
            skip: 0,
            fragment: None,
            discarding: false,
            done: false,
        }
    }

    /// Parses one item from the buffer, if a whole one is there.
    ///
    /// Lengths and offsets here come from the network: all arithmetic on them is checked (an overflow in the
    /// running length of a fragmented message once panicked the reader before `auth`).
    #[deny(clippy::arithmetic_side_effects)]
    fn next_item(&mut self) -> Option<Incoming> {
        loop {
            if self.skip > 0 {
                self.skip_buffered();
                if self.skip > 0 {
                    return None;
                }
            }
            let header = match parse_header(&self.buf) {
                Err(e) => return Some(Incoming::ProtocolError(e)),
                Ok(None) => return None,
                Ok(Some(h)) => h,
            };
            let Some(mask) = header.mask else {
                return Some(Incoming::ProtocolError("unmasked client frame".into()));
            };
            let is_data = matches!(header.opcode, OP_CONT | OP_TEXT | OP_BINARY);
            if !is_data && !matches!(header.opcode, OP_CLOSE | OP_PING | OP_PONG) {
                return Some(Incoming::ProtocolError(format!(
                    "invalid opcode {}",
                    header.opcode
                )));
            }
            if !is_data && (header.payload > 125 || !header.fin) {
                return Some(Incoming::ProtocolError("invalid control frame".into()));
            }
            if is_data {
                if header.opcode == OP_CONT && self.fragment.is_none() && !self.discarding {
                    return Some(Incoming::ProtocolError(
                        "continuation without a first frame".into(),
                    ));
                }
                if header.opcode != OP_CONT && (self.fragment.is_some() || self.discarding) {
                    return Some(Incoming::ProtocolError(
                        "new message inside a fragmented one".into(),
                    ));
                }
                let so_far = self.fragment.as_ref().map_or(0, |f| f.1.len());
                let total = u64::try_from(so_far)
                    .ok()
                    .and_then(|n| n.checked_add(header.payload));
                let within =
                    total.is_some_and(|t| t <= u64::try_from(self.max).unwrap_or(u64::MAX));
                if self.discarding || !within {
                    let _ = self.buf.split_to(header.len);
                    self.skip = header.payload;
                    let first_notice = !self.discarding;
                    self.fragment = None;
                    self.discarding = !header.fin;
                    if first_notice {
                        return Some(Incoming::TooLarge);
                    }
                    continue;
                }
            }
            // within `max` (data) or 125 bytes (control) by now, so it fits a usize
            let Ok(payload) = usize::try_from(header.payload) else {
                return Some(Incoming::ProtocolError("frame length out of range".into()));
            };
            let Some(frame_len) = header.len.checked_add(payload) else {
                return Some(Incoming::ProtocolError("frame length out of range".into()));
            };
            if let Some(missing) = frame_len.checked_sub(self.buf.len()).filter(|m| *m > 0) {
                self.buf.reserve(missing);
                return None;
            }
            let _ = self.buf.split_to(header.len);
            let mut data = self.buf.split_to(payload);
            unmask(&mut data, mask);
            match header.opcode {
                OP_PING => return Some(Incoming::Ping(data.freeze())),
                OP_PONG => return Some(Incoming::Pong),
                OP_CLOSE => {
                    return Some(match Parser::try_parse_close_payload(&data) {
                        Ok(reason) => Incoming::Close(reason),
                        Err(_) => Incoming::Close(None),
                    })
                }
                OP_TEXT | OP_BINARY if !header.fin => {
                    self.fragment = Some((header.opcode == OP_TEXT, data));
                }
                OP_CONT => {
                    if let Some((_, acc)) = self.fragment.as_mut() {
                        acc.extend_from_slice(&data);
                    }
                    if header.fin {
                        if let Some((text, acc)) = self.fragment.take() {
                            return Some(message(text, acc));
                        }
                    }
                }
                op => return Some(message(op == OP_TEXT, data)),
            }
        }
    }

    /// Drops buffered bytes of an oversized payload being skipped.
    #[deny(clippy::arithmetic_side_effects)]
    fn skip_buffered(&mut self) {
        let n = usize::try_from(self.skip)
            .unwrap_or(usize::MAX)
            .min(self.buf.len());
        let _ = self.buf.split_to(n);
        self.skip = self
            .skip
            .saturating_sub(u64::try_from(n).unwrap_or(u64::MAX));
    }
}

fn message(text: bool, data: BytesMut) -> Incoming {
    if !text {
        return Incoming::Binary;
    }
    match String::from_utf8(data.to_vec()) {
        Ok(s) => Incoming::Text(s),
        Err(_) => Incoming::ProtocolError("text frame is not UTF-8".into()),
    }
}

#[deny(clippy::arithmetic_side_effects)]
impl<S, E> Stream for FrameReader<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
{
    type Item = Incoming;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Incoming>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            if let Some(item) = this.next_item() {
                if matches!(item, Incoming::ProtocolError(_) | Incoming::Close(_)) {
                    this.done = true;
                }
                return Poll::Ready(Some(item));
            }
            // Idle connections keep no buffer.
            if this.buf.is_empty() && this.buf.capacity() > 0 {
                this.buf = BytesMut::new();
            }
            match Pin::new(&mut this.stream).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {
                    this.done = true;
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Ok(mut chunk))) => {
                    if this.skip > 0 && this.buf.is_empty() {
                        let n = usize::try_from(this.skip)
                            .unwrap_or(usize::MAX)
                            .min(chunk.len());
                        let _ = chunk.split_to(n);
                        this.skip = this
                            .skip
                            .saturating_sub(u64::try_from(n).unwrap_or(u64::MAX));
                    }
                    if this.buf.is_empty() {
                        // the common case: take the chunk's buffer instead of copying it
                        this.buf = chunk
                            .try_into_mut()
                            .unwrap_or_else(|shared| BytesMut::from(&shared[..]));
                    } else {
                        this.buf.extend_from_slice(&chunk);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
        let mask = [1u8, 2, 3, 4];
        match payload.len() {
            n if n < 126 => out.push(0x80 | u8::try_from(n).unwrap_or(0)),
            n if n < 65536 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&u16::try_from(n).unwrap_or(0).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        let mut p = payload.to_vec();
        unmask(&mut p, mask);
        out.extend_from_slice(&p);
        out
    }

    fn read_all(chunks: Vec<Vec<u8>>, max: usize) -> Vec<Incoming> {
        let stream =
            futures_util::stream::iter(chunks.into_iter().map(|c| Ok::<_, ()>(Bytes::from(c))));
        let reader = FrameReader::new(stream, max);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(reader.collect())
    }

    #[test]
    fn text_ping_close() {
        let mut bytes = client_frame(true, OP_TEXT, b"{\"type\":\"ping\"}");
        bytes.extend(client_frame(true, OP_PING, b"p"));
        bytes.extend(client_frame(true, OP_CLOSE, &[0x03, 0xe8]));
        // deliver one byte at a time to exercise partial reads
        let chunks = bytes.into_iter().map(|b| vec![b]).collect();
        let items = read_all(chunks, 100);
        assert_eq!(items[0], Incoming::Text("{\"type\":\"ping\"}".into()));
        assert_eq!(items[1], Incoming::Ping(Bytes::from_static(b"p")));
        assert!(matches!(items[2], Incoming::Close(Some(_))));
    }

    #[test]
    fn oversized_frame_is_skipped_and_reading_goes_on() {
        let mut bytes = client_frame(true, OP_TEXT, &vec![b'x'; 5000]);
        bytes.extend(client_frame(true, OP_TEXT, b"after"));
        let chunks = bytes.chunks(700).map(<[u8]>::to_vec).collect();
        let items = read_all(chunks, 1000);
        assert_eq!(
            items,
            vec![Incoming::TooLarge, Incoming::Text("after".into())]
        );
    }

    #[test]
    fn oversized_fragmented_message_is_one_notice() {
        let mut bytes = client_frame(false, OP_TEXT, &[b'a'; 600]);
        bytes.extend(client_frame(false, OP_CONT, &[b'b'; 600]));
        bytes.extend(client_frame(true, OP_CONT, &[b'c'; 600]));
        bytes.extend(client_frame(false, OP_TEXT, b"he"));
        bytes.extend(client_frame(true, OP_CONT, b"llo"));
        let items = read_all(vec![bytes], 1000);
        assert_eq!(
            items,
            vec![Incoming::TooLarge, Incoming::Text("hello".into())]
        );
    }

    #[test]
    fn protocol_errors_end_the_stream() {
        let mut unmasked = vec![0x81, 0x01, b'x'];
        unmasked.extend(client_frame(true, OP_TEXT, b"never"));
        let items = read_all(vec![unmasked], 1000);
        assert_eq!(items.len(), 1);
        assert!(matches!(items[0], Incoming::ProtocolError(_)));
        let items = read_all(vec![client_frame(true, OP_TEXT, &[0xff, 0xfe])], 1000);
        assert!(matches!(items[0], Incoming::ProtocolError(_)));
    }

    /// Issue 13, finding 1: a text fragment, then a continuation declaring a length near 2^64, before
    /// `auth`. The running-length check overflowed (`split_to out of bounds`); now the stream ends with
    /// a protocol error (a 64-bit length with its top bit set breaks RFC 6455 5.2) and nothing panics.
    #[test]
    fn continuation_with_a_length_near_2_64_is_a_protocol_error_not_a_panic() {
        for declared in [u64::MAX, u64::MAX - 4, 1 << 63] {
            let mut bytes = client_frame(false, OP_TEXT, b"hello");
            bytes.push(OP_CONT | 0x80);
            bytes.push(0x80 | 127);
            bytes.extend_from_slice(&declared.to_be_bytes());
            bytes.extend_from_slice(&[1, 2, 3, 4]);
            bytes.extend_from_slice(b"tail");
            let items = read_all(vec![bytes], 65536);
            assert_eq!(items.len(), 1, "{declared}: {items:?}");
            assert!(
                matches!(items[0], Incoming::ProtocolError(_)),
                "{declared}: {items:?}"
            );
        }
    }

    /// A continuation whose length is legal but takes the message over the limit is `too_large`, skipped.
    #[test]
    fn continuation_over_the_limit_is_too_large() {
        let mut bytes = client_frame(false, OP_TEXT, b"hello");
        bytes.push(OP_CONT | 0x80);
        bytes.push(0x80 | 127);
        bytes.extend_from_slice(&((1u64 << 63) - 1).to_be_bytes());
        bytes.extend_from_slice(&[1, 2, 3, 4]);
        bytes.extend_from_slice(b"tail");
        let items = read_all(vec![bytes], 65536);
        assert_eq!(items, vec![Incoming::TooLarge]);
    }

    #[test]
    fn wire_frames_are_unmasked_rfc6455() {
        let f = WireFrame::text("pong", "{\"type\":\"pong\"}");
        assert_eq!(f.bytes[0], 0x81);
        assert_eq!(usize::from(f.bytes[1]), "{\"type\":\"pong\"}".len());
        assert_eq!(&f.bytes[2..], b"{\"type\":\"pong\"}");
    }
}

/// A text frame travels between nodes as `{"kind":K,"json":JSON}` (the JSON embedded as is) and is encoded
/// again once on the receiving node.
impl serde::Serialize for WireFrame {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeStruct};
        let text = std::str::from_utf8(self.payload()).map_err(S::Error::custom)?;
        let json =
            serde_json::value::RawValue::from_string(text.to_owned()).map_err(S::Error::custom)?;
        let mut st = s.serialize_struct("WireFrame", 2)?;
        st.serialize_field("kind", self.kind)?;
        st.serialize_field("json", &json)?;
        st.end()
    }
}

impl<'de> serde::Deserialize<'de> for WireFrame {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        struct Repr {
            kind: String,
            json: Box<serde_json::value::RawValue>,
        }
        let r = Repr::deserialize(d)?;
        let kind = crate::net::protocol::SERVER_FRAME_KINDS
            .iter()
            .find(|k| **k == r.kind)
            .copied()
            .unwrap_or("other");
        Ok(WireFrame::text(kind, r.json.get()))
    }
}

#[cfg(test)]
mod wire_frame_tests {
    use super::WireFrame;

    #[test]
    fn text_frames_round_trip_through_json() {
        for len in [10, 200, 70_000] {
            let json = format!("{{\"type\":\"msg\",\"pad\":\"{}\"}}", "x".repeat(len));
            let frame = WireFrame::text("msg", &json);
            assert_eq!(frame.payload(), json.as_bytes());
            let back: WireFrame =
                serde_json::from_str(&serde_json::to_string(&frame).unwrap()).unwrap();
            assert_eq!(back.kind, "msg");
            assert_eq!(back.bytes, frame.bytes);
        }
    }
}

/// Fuzzing the frame reader (issue 13): random byte streams split at random points, with declared lengths at
/// every integer boundary the header can express, fragments and control frames. `PROPTEST_CASES=100000 cargo
/// test --release fuzz` runs it longer.
#[cfg(test)]
mod fuzz {
    use super::*;
    use futures_util::StreamExt;
    use proptest::prelude::*;

    const MAX: usize = 1000;

    /// Lengths where an off-by-one or an overflow would show.
    fn length() -> impl Strategy<Value = u64> {
        prop_oneof![
            4 => 0u64..=130,
            3 => prop::sample::select(vec![
                125,
                126,
                127,
                999,
                1000,
                1001,
                65535,
                65536,
                (1 << 32) - 1,
                1 << 32,
                (1 << 63) - 1,
                1 << 63,
                (1 << 63) + 1,
                u64::MAX - 1,
                u64::MAX,
            ]),
            2 => (0u64..2000).prop_map(|d| u64::MAX - d),
            1 => any::<u64>(),
        ]
    }

    /// Encodes a frame header and payload: `encoding` picks the 7-bit, 16-bit or 64-bit length form when
    /// the length fits it; the payload is as long as declared when that is small, else whatever was given.
    fn encode(
        fin: bool,
        rsv: bool,
        opcode: u8,
        len: u64,
        encoding: u8,
        masked: bool,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut out = vec![(if fin { 0x80 } else { 0 }) | (if rsv { 0x40 } else { 0 }) | opcode];
        let mask_bit = if masked { 0x80 } else { 0 };
        match (encoding, u8::try_from(len), u16::try_from(len)) {
            (0, Ok(n), _) if n < 126 => out.push(mask_bit | n),
            (0 | 1, _, Ok(n)) => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&n.to_be_bytes());
            }
            _ => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&len.to_be_bytes());
            }
        }
        if masked {
            out.extend_from_slice(&[7, 0, 255, 3]);
        }
        match usize::try_from(len) {
            Ok(n) if n <= 300 => {
                out.extend((0..n).map(|i| payload.get(i).copied().unwrap_or(b'a')))
            }
            _ => out.extend_from_slice(payload),
        }
        out
    }

    /// One frame as a client might write it, honest or not: any opcode, any declared length (in any of the
    /// three encodings that can hold it), masked or not, reserved bits now and then.
    fn frame() -> impl Strategy<Value = Vec<u8>> {
        (
            any::<bool>(),
            prop_oneof![
                Just(0u8),
                Just(1),
                Just(2),
                Just(8),
                Just(9),
                Just(10),
                0u8..16
            ],
            length(),
            0u8..3,
            prop::bool::weighted(0.95),
            prop::bool::weighted(0.05),
            prop::collection::vec(any::<u8>(), 0..200),
        )
            .prop_map(|(fin, opcode, len, encoding, masked, rsv, payload)| {
                encode(fin, rsv, opcode, len, encoding, masked, &payload)
            })
    }

    /// An honest first fragment, then continuations of any declared length (the shape of finding 1).
    fn fragmented() -> impl Strategy<Value = Vec<u8>> {
        (
            prop_oneof![Just(OP_TEXT), Just(OP_BINARY)],
            0u64..=130,
            prop::collection::vec((any::<bool>(), length(), 0u8..3), 1..4),
        )
            .prop_map(|(opcode, first, rest)| {
                let mut out = encode(false, false, opcode, first, 0, true, b"");
                for (fin, len, encoding) in rest {
                    out.extend(encode(fin, false, OP_CONT, len, encoding, true, b""));
                }
                out
            })
    }

    /// A byte stream and the points it arrives split at.
    fn stream() -> impl Strategy<Value = (Vec<u8>, Vec<usize>)> {
        (
            prop::collection::vec(
                prop_oneof![
                    6 => frame(),
                    3 => fragmented(),
                    1 => prop::collection::vec(any::<u8>(), 0..20),
                ],
                0..8,
            ),
            prop::collection::vec(0usize..4096, 0..8),
        )
            .prop_map(|(frames, cuts)| (frames.concat(), cuts))
    }

    fn split(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        points.sort_unstable();
        let mut out = Vec::new();
        let mut from = 0;
        for p in points.into_iter().chain([bytes.len()]) {
            out.push(bytes[from..p].to_vec());
            from = p;
        }
        out
    }

    fn read(chunks: Vec<Vec<u8>>) -> Vec<Incoming> {
        let stream =
            futures_util::stream::iter(chunks.into_iter().map(|c| Ok::<_, ()>(Bytes::from(c))));
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(FrameReader::new(stream, MAX).collect())
    }

    /// A well-formed client message: text or binary, in 1 to 4 fragments, with a ping between fragments.
    fn message() -> impl Strategy<Value = (Vec<u8>, Incoming)> {
        (
            "[a-z\u{e9}\u{1f600} ]{0,300}",
            any::<bool>(),
            prop::collection::vec(0usize..400, 0..3),
            any::<bool>(),
        )
            .prop_map(|(text, binary, cuts, ping)| {
                let bytes = text.as_bytes();
                let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
                points.sort_unstable();
                points.push(bytes.len());
                let mut out = Vec::new();
                let mut from = 0;
                for (i, p) in points.iter().enumerate() {
                    let opcode = match (i, binary) {
                        (0, true) => OP_BINARY,
                        (0, false) => OP_TEXT,
                        _ => OP_CONT,
                    };
                    out.extend(tests_frame(i + 1 == points.len(), opcode, &bytes[from..*p]));
                    if ping && i == 0 {
                        out.extend(tests_frame(true, OP_PING, b"p"));
                    }
                    from = *p;
                }
                let expected = match (binary, bytes.len() > MAX) {
                    (_, true) => Incoming::TooLarge,
                    (true, false) => Incoming::Binary,
                    (false, false) => Incoming::Text(text),
                };
                (out, expected)
            })
    }

    fn tests_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
        let len = u64::try_from(payload.len()).unwrap_or(u64::MAX);
        match u8::try_from(len) {
            Ok(n) if n < 126 => out.push(0x80 | n),
            _ => match u16::try_from(len) {
                Ok(n) => {
                    out.push(0x80 | 126);
                    out.extend_from_slice(&n.to_be_bytes());
                }
                Err(_) => {
                    out.push(0x80 | 127);
                    out.extend_from_slice(&len.to_be_bytes());
                }
            },
        }
        let mask = [9u8, 8, 7, 6];
        out.extend_from_slice(&mask);
        let mut p = payload.to_vec();
        unmask(&mut p, mask);
        out.extend(p);
        out
    }

    proptest! {
        #![proptest_config(crate::fuzz_config())]

        /// Any bytes, split anywhere: no panic; text within the limit; nothing after the end of the stream.
        #[test]
        fn fuzz_frame_reader_never_panics((bytes, cuts) in stream()) {
            let items = read(split(&bytes, &cuts));
            for (i, item) in items.iter().enumerate() {
                match item {
                    Incoming::Text(t) => prop_assert!(t.len() <= MAX),
                    Incoming::Ping(p) => prop_assert!(p.len() <= 125),
                    Incoming::ProtocolError(_) | Incoming::Close(_) => {
                        prop_assert_eq!(i + 1, items.len(), "the stream ends after {:?}", item)
                    }
                    Incoming::Binary | Incoming::Pong | Incoming::TooLarge => {}
                }
            }
        }

        /// Well-formed messages arrive whole and in order however the bytes are split.
        #[test]
        fn fuzz_frame_reader_reassembles_messages(
            messages in prop::collection::vec(message(), 1..5),
            cuts in prop::collection::vec(0usize..8192, 0..10),
        ) {
            let bytes: Vec<u8> = messages.iter().flat_map(|(b, _)| b.clone()).collect();
            let items: Vec<Incoming> = read(split(&bytes, &cuts))
                .into_iter()
                .filter(|i| !matches!(i, Incoming::Ping(_)))
                .collect();
            let expected: Vec<&Incoming> = messages.iter().map(|(_, e)| e).collect();
            prop_assert_eq!(items.iter().collect::<Vec<_>>(), expected);
        }
    }
}
