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

fn parse_header(buf: &[u8]) -> Result<Option<Header>, String> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x70 != 0 {
        return Err("reserved bits set".into());
    }
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0f;
    let masked = b1 & 0x80 != 0;
    let (payload, mut len) = match b1 & 0x7f {
        126 => match buf.get(2..4) {
            None => return Ok(None),
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
        },
        127 => match buf.get(2..10).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
            None => return Ok(None),
            Some(b) => (u64::from_be_bytes(b), 10),
        },
        n => (u64::from(n), 2),
    };
    let mask = if masked {
        let Some(m) = buf
            .get(len..len + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
        else {
            return Ok(None);
        };
        len += 4;
        Some(m)
    } else {
        None
    };
    Ok(Some(Header {
        len,
        fin,
        opcode,
        payload,
        mask,
    }))
}

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
    fn next_item(&mut self) -> Option<Incoming> {
        loop {
            if self.skip > 0 {
                let n = usize::try_from(self.skip)
                    .unwrap_or(usize::MAX)
                    .min(self.buf.len());
                let _ = self.buf.split_to(n);
                self.skip -= n as u64;
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
                let so_far = self.fragment.as_ref().map_or(0, |f| f.1.len()) as u64;
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
                if self.discarding || so_far + header.payload > self.max as u64 {
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
            let payload = usize::try_from(header.payload).unwrap_or(usize::MAX);
            if self.buf.len() < header.len + payload {
                self.buf.reserve(header.len + payload - self.buf.len());
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
                        this.skip -= n as u64;
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
