//! CORS (PROTOCOL.md, HTTP): with `http.cors_origins` set, answers to browsers from those origins carry the
//! CORS headers (preflight included), and `/ws` refuses an upgrade whose `Origin` is neither listed nor the
//! node's own. Raw requests over TCP, so every header is seen as sent.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::TestNode;

/// Sends `request` (with `Host`, and `Connection: close` unless it has a `Connection`) and returns the status
/// and the lowercased response head.
fn raw(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let close = if request.contains("Connection:") {
        ""
    } else {
        "Connection: close\r\n"
    };
    let text = format!("{request}Host: {addr}\r\n{close}\r\n");
    s.write_all(text.as_bytes()).expect("write");
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head)
}

fn upgrade(addr: SocketAddr, origin: Option<&str>) -> u16 {
    let origin = origin
        .map(|o| format!("Origin: {o}\r\n"))
        .unwrap_or_default();
    raw(
        addr,
        &format!(
            "GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{origin}"
        ),
    )
    .0
}

const APP: &str = "https://app.example";

#[test]
fn listed_origins_get_cors_headers_and_preflights() {
    let node = TestNode::start_with("[http]\ncors_origins = [\"https://app.example\"]");
    let (status, head) = raw(
        node.addr,
        &format!(
            "OPTIONS /v1/uploads HTTP/1.1\r\nOrigin: {APP}\r\nAccess-Control-Request-Method: POST\r\n\
             Access-Control-Request-Headers: authorization, content-type\r\n"
        ),
    );
    assert_eq!(status, 200, "{head}");
    assert!(
        head.contains("access-control-allow-origin: https://app.example"),
        "{head}"
    );
    assert!(head.contains("access-control-allow-methods:"), "{head}");
    assert!(head.contains("authorization"), "{head}");

    let (status, head) = raw(
        node.addr,
        &format!("GET /v1/nodes HTTP/1.1\r\nOrigin: {APP}\r\n"),
    );
    assert_eq!(status, 200);
    assert!(
        head.contains("access-control-allow-origin: https://app.example"),
        "{head}"
    );

    // another origin gets no grant: its page cannot read the answer
    let (_, head) = raw(
        node.addr,
        "GET /v1/nodes HTTP/1.1\r\nOrigin: https://evil.example\r\n",
    );
    assert!(!head.contains("access-control-allow-origin"), "{head}");
    let (status, _) = raw(
        node.addr,
        "OPTIONS /v1/uploads HTTP/1.1\r\nOrigin: https://evil.example\r\nAccess-Control-Request-Method: POST\r\n",
    );
    assert!(
        status >= 400,
        "a preflight from another origin is refused: {status}"
    );
}

#[test]
fn ws_refuses_other_origins_and_lets_listed_own_and_originless_through() {
    let node = TestNode::start_with("[http]\ncors_origins = [\"https://app.example\"]");
    assert_eq!(upgrade(node.addr, Some("https://evil.example")), 403);
    assert_eq!(upgrade(node.addr, Some(APP)), 101);
    assert_eq!(
        upgrade(node.addr, Some(&format!("http://{}", node.addr))),
        101,
        "the node's own page"
    );
    assert_eq!(upgrade(node.addr, None), 101, "not a browser");
}

#[test]
fn any_origin_with_a_star_and_none_without_the_key() {
    let any = TestNode::start_with("[http]\ncors_origins = [\"*\"]");
    let (_, head) = raw(
        any.addr,
        "GET /v1/nodes HTTP/1.1\r\nOrigin: https://whoever.example\r\n",
    );
    assert!(head.contains("access-control-allow-origin:"), "{head}");
    assert_eq!(upgrade(any.addr, Some("https://whoever.example")), 101);

    let plain = TestNode::start();
    let (_, head) = raw(
        plain.addr,
        "GET /v1/nodes HTTP/1.1\r\nOrigin: https://whoever.example\r\n",
    );
    assert!(!head.contains("access-control-allow-origin"), "{head}");
    assert_eq!(
        upgrade(plain.addr, Some("https://whoever.example")),
        101,
        "nothing checked"
    );
}
