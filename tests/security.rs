//! Every frame and endpoint as an outsider (issue 13): another user's conversations, groups and uploads,
//! forged tokens, a wrong admin key, hostile WebSocket bytes before `auth`, and forged handshakes on the
//! peer port. Each is refused with the contract's code, changes nothing, and the node keeps serving.

mod common;

use std::time::Duration;

use common::*;
use rookery::client::Client;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// base64url without padding (the JWT alphabet), enough to forge tokens by hand.
fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

fn now_s() -> u64 {
    rookery::net::auth::now_s()
}

fn hs256(secret: &str, claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode")
}

/// Tokens an outsider might try, each for user `alice`, with what is wrong with it.
fn forged_tokens() -> Vec<(&'static str, String)> {
    let good = token("alice");
    let claims = json!({"sub":"alice","exp":now_s() + 3600,"iat":now_s()});
    let none = format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"JWT"}"#),
        b64url(claims.to_string().as_bytes())
    );
    let mallory = token("mallory");
    let mut parts: Vec<&str> = mallory.split('.').collect();
    let alice_payload = b64url(claims.to_string().as_bytes());
    parts[1] = &alice_payload;
    let tampered = parts.join(".");
    let mut flipped = good.clone().into_bytes();
    let last = flipped.len() - 2;
    flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
    vec![
        ("wrong secret", hs256("not-the-secret", &claims)),
        ("alg none", none),
        (
            "expired",
            hs256(
                SECRET,
                &json!({"sub":"alice","exp":now_s() - 10,"iat":now_s() - 20}),
            ),
        ),
        ("tampered payload", tampered),
        ("missing exp", hs256(SECRET, &json!({"sub":"alice"}))),
        (
            "flipped signature",
            String::from_utf8(flipped).expect("ascii"),
        ),
        ("garbage", "not.a.token".into()),
        ("empty", String::new()),
    ]
}

#[tokio::test]
async fn forged_tokens_are_unauthorized_on_the_websocket_and_over_http() {
    let node = TestNode::start();
    for (what, forged) in forged_tokens() {
        let mut c = Client::connect(node.addr).await.expect("connect");
        let refused = c.auth(&forged, "phone").await;
        match refused {
            Err(rookery::client::ClientError::Refused(e)) => {
                assert_eq!(e["code"], "unauthorized", "{what}: {e}")
            }
            other => panic!("{what}: {other:?}"),
        }
        c.expect_close(WAIT).await.expect("closed after refusal");
        for (method, path) in [
            ("POST", "/v1/uploads"),
            ("GET", "/v1/uploads/0123456789abcdef0123456789abcdef"),
            ("GET", "/v1/media/0123456789abcdef0123456789abcdef"),
        ] {
            let (status, body) = http(method, &node.url(path), Some(&forged), Some("{}")).await;
            assert_eq!(status, 401, "{what}: {method} {path} -> {body}");
        }
    }
    // the genuine token still works
    node.login("alice", "phone").await;
}

#[tokio::test]
async fn the_admin_endpoint_wants_the_admin_key() {
    let node = TestNode::start();
    let url = node.url("/v1/token");
    let body = r#"{"user":"alice","ttl_s":60}"#;
    for key in [Some("wrong"), Some(""), None, Some(token("alice").as_str())] {
        let (status, reply) = http("POST", &url, key, Some(body)).await;
        assert_eq!(status, 401, "{key:?}: {reply}");
        assert_eq!(
            serde_json::from_str::<Value>(&reply).expect("json")["error"],
            "unauthorized"
        );
    }
}

#[tokio::test]
async fn outsiders_get_forbidden_for_every_conversation_and_group_frame() {
    let node = TestNode::start_with("[chat]\ndm_requires_friendship = false");
    let mut alice = node.login("alice", "phone").await;
    let mut bob = node.login("bob", "phone").await;
    let conv = dm("alice", "bob");
    send_text(&mut alice, &conv, "c1", "private").await;
    alice
        .call(json!({"type":"group_create","conv":"g:team","name":"Team","members":["bob"]}))
        .await
        .expect("group");
    let mut eve = node.login("eve", "phone").await;
    for target in [conv.as_str(), "g:team"] {
        for frame in [
            json!({"type":"send","cid":"e1","conv":target,"body":{"text":"hi"}}),
            json!({"type":"sync","conv":target}),
            json!({"type":"sync","conv":target,"before":10}),
            json!({"type":"read","conv":target,"seq":1}),
            json!({"type":"receipts","conv":target,"seq":1}),
            json!({"type":"receipts","conv":target,"seq":1,"counts":true}),
            json!({"type":"recall","conv":target,"seq":1}),
            json!({"type":"typing","conv":target}),
        ] {
            let e = eve
                .request(frame.clone())
                .await
                .unwrap_or_else(|e| panic!("{frame}: {e}"));
            assert_eq!(e["code"], "forbidden", "{frame} -> {e}");
        }
    }
    // `ack` has no reply of its own: a direct conversation's goes to its actor (forbidden), a group's ends
    // in the session (it only clears the session's own retransmit tracker)
    let e = eve
        .request(json!({"type":"ack","conv":conv,"seq":1}))
        .await
        .expect("reply");
    assert_eq!(e["code"], "forbidden", "{e}");
    eve.send(&json!({"type":"ack","rid":"ga","conv":"g:team","seq":1}))
        .await
        .expect("send");
    eve.expect_none(|f| f["rid"] == "ga", Duration::from_millis(300))
        .await
        .expect("a group ack is not answered");
    for frame in [
        json!({"type":"group_info","conv":"g:team","members":true}),
        json!({"type":"group_add","conv":"g:team","members":["eve"]}),
        json!({"type":"group_remove","conv":"g:team","members":["bob"]}),
    ] {
        let e = eve.request(frame.clone()).await.expect("reply");
        assert_eq!(e["code"], "forbidden", "{frame} -> {e}");
    }
    // bob (a member, not the owner) cannot change the group either
    let e = bob
        .request(json!({"type":"group_add","conv":"g:team","members":["eve"]}))
        .await
        .expect("reply");
    assert_eq!(e["code"], "forbidden", "{e}");

    // nothing changed: no message, no member, no event reached the members
    for target in [conv.as_str(), "g:team"] {
        let msgs = alice
            .call(json!({"type":"sync","conv":target}))
            .await
            .expect("sync");
        assert_eq!(msg_seqs(&msgs), vec![1], "{target}");
    }
    let info = alice
        .call(json!({"type":"group_info","conv":"g:team","members":true}))
        .await
        .expect("info");
    assert_eq!(info["members"], json!(["alice", "bob"]));
    bob.expect_none(
        |f| f["type"] == "typing" || [&f["user"], &f["from"], &f["by"]].contains(&&json!("eve")),
        Duration::from_millis(300),
    )
    .await
    .expect("nothing from eve");
    let convs = eve.call(json!({"type":"convs"})).await.expect("convs");
    assert_eq!(convs["convs"], json!([]));
}

#[tokio::test]
async fn another_users_upload_is_forbidden() {
    let node = TestNode::start_with("[media]\nchunk_bytes = 1024");
    let alice = token("alice");
    let eve = token("eve");
    let body =
        json!({"size": 2000, "sha256": "ab".repeat(32), "mime": "text/plain", "name": "a.txt"});
    let (status, started) = http(
        "POST",
        &node.url("/v1/uploads"),
        Some(&alice),
        Some(&body.to_string()),
    )
    .await;
    assert_eq!(status, 201, "{started}");
    let upload = serde_json::from_str::<Value>(&started).expect("json")["upload"]
        .as_str()
        .expect("upload")
        .to_string();
    let chunk = "x".repeat(1024);
    for (method, path, body) in [
        (
            "PUT",
            format!("/v1/uploads/{upload}/0"),
            Some(chunk.as_str()),
        ),
        ("GET", format!("/v1/uploads/{upload}"), None),
        ("POST", format!("/v1/uploads/{upload}/complete"), Some("")),
    ] {
        let (status, reply) = http(method, &node.url(&path), Some(&eve), body).await;
        assert_eq!(status, 403, "{method} {path}: {reply}");
        assert_eq!(
            serde_json::from_str::<Value>(&reply).expect("json")["error"],
            "forbidden"
        );
    }
    let (status, reply) = http(
        "GET",
        &node.url(&format!("/v1/uploads/{upload}")),
        Some(&alice),
        None,
    )
    .await;
    assert_eq!(
        (status, reply.as_str()),
        (200, r#"{"received":[]}"#),
        "eve stored nothing"
    );
}

/// Opens a raw WebSocket (handshake done) for writing hand-made frames.
async fn raw_ws(addr: std::net::SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(stream.read(&mut byte).await.expect("read"), 1, "closed");
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{head:?}");
    stream
}

/// A masked client frame header (the mask is zero, so the payload goes as is) declaring `len` bytes.
fn header(fin: bool, opcode: u8, len: u64) -> Vec<u8> {
    let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
    match len {
        0..=125 => out.push(0x80 | u8::try_from(len).expect("small")),
        126..=65535 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&u16::try_from(len).expect("u16").to_be_bytes());
        }
        _ => {
            out.push(0x80 | 127);
            out.extend_from_slice(&len.to_be_bytes());
        }
    }
    out.extend_from_slice(&[0, 0, 0, 0]);
    out
}

/// Reads server frames until a close frame; returns its code (`None` if the socket ended without one).
async fn close_code(stream: &mut TcpStream) -> Option<u16> {
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        // parse whole frames from the front of `buf`
        while buf.len() >= 2 {
            let len = usize::from(buf[1] & 0x7f);
            assert!(len < 126, "server frames here are small");
            if buf.len() < 2 + len {
                break;
            }
            if buf[0] & 0x0f == 8 {
                return (len >= 2).then(|| u16::from_be_bytes([buf[2], buf[3]]));
            }
            buf.drain(..2 + len);
        }
        let mut chunk = [0u8; 512];
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return None,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => panic!("no close within {WAIT:?}"),
        }
    }
}

/// Issue 13, finding 1: a text fragment, then a continuation declaring a length near 2^64, before `auth`:
/// the reader panicked (`split_to out of bounds`). Now: close 1002 (or 1009/1008 for the oversized
/// variants) and the node keeps serving.
#[tokio::test]
async fn hostile_websocket_lengths_before_auth_get_a_clean_close() {
    let node = TestNode::start();
    let cases: Vec<(&str, Vec<u8>, &[u16])> = vec![
        (
            "fragment then 2^64-1 continuation",
            [
                header(false, 1, 5),
                b"hello".to_vec(),
                header(true, 0, u64::MAX),
            ]
            .concat(),
            &[1002],
        ),
        (
            "fragment then 2^63 continuation",
            [
                header(false, 1, 2),
                b"he".to_vec(),
                header(true, 0, 1 << 63),
            ]
            .concat(),
            &[1002],
        ),
        ("2^64-1 text frame", header(true, 1, u64::MAX), &[1002]),
        (
            "2^63-1 text frame (legal length, over the limit)",
            header(true, 1, (1 << 63) - 1),
            &[1008, 1009],
        ),
        ("ping with a 2^16 payload", header(true, 9, 65536), &[1002]),
        (
            "continuation without a first frame",
            [header(true, 0, 3), b"abc".to_vec()].concat(),
            &[1002],
        ),
    ];
    for (what, bytes, codes) in cases {
        let mut ws = raw_ws(node.addr).await;
        ws.write_all(&bytes).await.expect("write");
        let code = close_code(&mut ws).await;
        assert!(
            code.is_some_and(|c| codes.contains(&c)),
            "{what}: close code {code:?}, expected one of {codes:?}"
        );
    }
    // the node is alive and serving
    let mut alice = node.login("alice", "phone").await;
    assert_eq!(
        alice.call(json!({"type":"ping"})).await.expect("pong")["type"],
        "pong"
    );
}

/// One frame on a peer link as an outsider writes it: 4 bytes of length, then JSON.
fn peer_frame(json: &Value) -> Vec<u8> {
    let body = json.to_string().into_bytes();
    let mut out = u32::try_from(body.len())
        .expect("small")
        .to_be_bytes()
        .to_vec();
    out.extend(body);
    out
}

/// Reads one length-prefixed peer frame (the listener's challenge or answer); `None` when the link ends.
async fn read_peer_frame(stream: &mut TcpStream) -> Option<Value> {
    let len = tokio::time::timeout(WAIT, stream.read_u32())
        .await
        .expect("peer answers in time")
        .ok()?;
    let mut body = vec![0u8; usize::try_from(len).expect("fits")];
    stream.read_exact(&mut body).await.ok()?;
    serde_json::from_slice(&body).ok()
}

async fn link_state(cluster: &Cluster, i: usize, peer: &str) -> Option<i64> {
    let (status, text) = http_get(&cluster.url(i, "/metrics")).await;
    assert_eq!(status, 200);
    let needle = format!("rookery_peer_link_state{{peer=\"{peer}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(needle.as_str()))
        .and_then(|v| v.trim().parse().ok())
}

/// Issue 13, finding 2, and the peer port's other forgeries: a `Hello` naming n2 without a valid HMAC used
/// to mark n1's link to n2 refused (`/v1/nodes` showed n2 down, the metric read 2) until the next re-dial.
/// Nothing that fails authentication may change any state: garbage, a bad HMAC, a Hello for an unknown
/// node and an oversized length prefix are all refused or dropped, and n1 still sees n2 up and serves.
#[tokio::test]
async fn forged_peer_handshakes_change_no_state() {
    let cluster = Cluster::start(2, "[chat]\ndm_requires_friendship = false").await;
    let peer_addr = cluster.config.nodes[0].peer.clone();
    let signature_guess = "0123456789abcdef";

    // a Hello naming n2 with a bad HMAC, then one for a node that does not exist, then one with no proof
    for hello in [
        json!({"Hello":{"node":"n2","signature":signature_guess,"proof":"00".repeat(32)}}),
        json!({"Hello":{"node":"n2","signature":signature_guess,"proof":"not hex"}}),
        json!({"Hello":{"node":"n9","signature":signature_guess,"proof":"00"}}),
    ] {
        let mut s = TcpStream::connect(&peer_addr).await.expect("connect");
        let challenge = read_peer_frame(&mut s).await.expect("challenge");
        assert!(challenge["Challenge"]["nonce"].is_string(), "{challenge}");
        s.write_all(&peer_frame(&hello)).await.expect("write");
        let answer = read_peer_frame(&mut s).await;
        assert!(
            answer.as_ref().is_some_and(|a| a.get("Refused").is_some()),
            "{hello} -> {answer:?}"
        );
        // the refused connection carries nothing further
        s.write_all(&peer_frame(&json!({"Ping":{"connections":1}})))
            .await
            .ok();
        assert!(read_peer_frame(&mut s).await.is_none(), "{hello}");
    }
    // garbage instead of a Hello, and a length prefix over the frame limit (4 GiB - 1)
    for bytes in [
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        vec![0xff, 0xff, 0xff, 0xff, b'{'],
        peer_frame(&json!({"Call":{"id":1,"to":{"User":"alice"},"name":"x","body":{}}})),
    ] {
        let mut s = TcpStream::connect(&peer_addr).await.expect("connect");
        read_peer_frame(&mut s).await.expect("challenge");
        s.write_all(&bytes).await.ok();
        assert!(read_peer_frame(&mut s).await.is_none(), "{bytes:?}");
    }

    // the state a forged handshake used to change is changed before `Refused` is written: no wait needed
    let nodes = cluster.nodes_view(0).await;
    assert_eq!(nodes[1]["up"], true, "n1 still sees n2 up: {nodes:?}");
    assert_eq!(link_state(&cluster, 0, "n2").await, Some(1));
    // and the cluster still works across the link
    let alice = cluster.user_on(1, "alice");
    let mut a = cluster.login(0, &alice, "phone").await;
    send_text(&mut a, &dm(&alice, "bob"), "c1", "still linked").await;
}

/// The dialer's side of the same rule: whoever answers on a peer's address must prove the cluster secret
/// too. n2 is killed and a fake takes its peer port, answering n1's `Hello` with a `Welcome` that echoes
/// the right node and signature but cannot prove the secret: n1 hangs up on it before sending anything
/// else, keeps n2 down (not refused: the next dial may reach the real n2), and comes back up with n2.
#[tokio::test]
async fn a_peer_that_cannot_prove_the_secret_is_not_linked() {
    let mut cluster = Cluster::start(2, "").await;
    cluster.kill9(1);
    let fake = tokio::net::TcpListener::bind(&cluster.config.nodes[1].peer)
        .await
        .expect("take n2's peer port");
    let mut dials = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while dials < 2 {
        assert!(tokio::time::Instant::now() < deadline, "n1 did not dial");
        let Ok(Ok((mut s, _))) = tokio::time::timeout(Duration::from_secs(5), fake.accept()).await
        else {
            continue;
        };
        s.write_all(&peer_frame(&json!({"Challenge":{"nonce":"00"}})))
            .await
            .expect("challenge");
        let Some(hello) = read_peer_frame(&mut s).await else {
            continue;
        };
        let signature = hello["Hello"]["signature"].clone();
        assert!(
            hello["Hello"]["nonce"]
                .as_str()
                .is_some_and(|n| n.len() == 32),
            "{hello}"
        );
        let welcome =
            json!({"Welcome":{"node":"n2","signature":signature,"proof":"00".repeat(32)}});
        s.write_all(&peer_frame(&welcome)).await.expect("welcome");
        assert_eq!(
            read_peer_frame(&mut s).await,
            None,
            "n1 hangs up, sending nothing"
        );
        dials += 1;
        let nodes = cluster.nodes_view(0).await;
        assert_eq!(nodes[1]["up"], false, "{nodes:?}");
        assert_eq!(
            link_state(&cluster, 0, "n2").await,
            Some(0),
            "down, not refused"
        );
    }
    drop(fake);
    cluster.restart(1).await;
}
