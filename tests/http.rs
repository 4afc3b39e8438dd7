//! PROTOCOL.md "HTTP": health, metrics, tokens, nodes, route.

mod common;

use common::*;
use rookery::client::Client;
use serde_json::{json, Value};

#[tokio::test]
async fn health_and_metrics() {
    let node = TestNode::start_with("[chat]\ndm_requires_friendship = false");
    let (status, _) = http_get(&node.url("/healthz")).await;
    assert_eq!(status, 200);
    let mut alice = node.login("alice", "phone").await;
    send_text(&mut alice, &dm("alice", "bob"), "c1", "x").await;
    let _ = alice
        .request(json!({"type":"sync","conv":"dm:bob:alice"}))
        .await;
    let (status, text) = http_get(&node.url("/metrics")).await;
    assert_eq!(status, 200);
    for needle in [
        "rookery_ws_connections 1",
        "rookery_actors{kind=\"session\"} 1",
        "rookery_frames_in_total{type=\"send\"} 1",
        "rookery_frames_out_total{type=\"sent\"} 1",
        "rookery_messages_accepted_total 1",
        "rookery_errors_total{code=\"bad_request\"} 1",
        "rookery_send_seconds_count 1",
        "rookery_store_flush_seconds_count",
        "rookery_pushes_total",
    ] {
        assert!(text.contains(needle), "metrics lack {needle}:\n{text}");
    }
}

#[tokio::test]
async fn tokens_are_minted_with_the_admin_key() {
    let node = TestNode::start();
    let url = node.url("/v1/token");
    let (status, body) = http(
        "POST",
        &url,
        Some(ADMIN_KEY),
        Some(r#"{"user":"alice","ttl_s":60}"#),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let token = serde_json::from_str::<Value>(&body).expect("json")["token"]
        .as_str()
        .expect("token")
        .to_string();
    let (_, welcome) = Client::login(node.addr, &token, "phone")
        .await
        .expect("token works");
    assert_eq!(welcome["user"], "alice");

    assert_eq!(
        http("POST", &url, Some("wrong"), Some(r#"{"user":"alice"}"#))
            .await
            .0,
        401
    );
    assert_eq!(
        http("POST", &url, None, Some(r#"{"user":"alice"}"#))
            .await
            .0,
        401
    );
    let (status, body) = http(
        "POST",
        &url,
        Some(ADMIN_KEY),
        Some(r#"{"user":"not valid"}"#),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("json")["error"],
        "bad_request"
    );
    assert_eq!(
        http("POST", &url, Some(ADMIN_KEY), Some("nope")).await.0,
        400
    );
}

/// Issue 13, finding 4: `ttl_s` = 2^64-1 minted a token with `exp` = u64::MAX, one that never expires.
/// TTLs over `auth.max_token_ttl_s` (default 30 days) are refused with 400; the limit itself is fine.
#[tokio::test]
async fn token_ttls_over_the_configured_maximum_are_refused() {
    let node = TestNode::start();
    let url = node.url("/v1/token");
    for ttl in [u64::MAX, u64::MAX / 2, 2_592_001] {
        let body = format!(r#"{{"user":"alice","ttl_s":{ttl}}}"#);
        let (status, reply) = http("POST", &url, Some(ADMIN_KEY), Some(&body)).await;
        assert_eq!(status, 400, "ttl {ttl}: {reply}");
        let reply: Value = serde_json::from_str(&reply).expect("json");
        assert_eq!(reply["error"], "bad_request");
        assert!(
            reply["message"]
                .as_str()
                .is_some_and(|m| m.contains("max_token_ttl_s")),
            "{reply}"
        );
    }
    let (status, body) = http(
        "POST",
        &url,
        Some(ADMIN_KEY),
        Some(r#"{"user":"alice","ttl_s":2592000}"#),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // extra config lands right after the harness's own `[auth]` keys
    let small = TestNode::start_with("max_token_ttl_s = 60");
    let url = small.url("/v1/token");
    let ask = |ttl: u64| format!(r#"{{"user":"alice","ttl_s":{ttl}}}"#);
    assert_eq!(
        http("POST", &url, Some(ADMIN_KEY), Some(&ask(61))).await.0,
        400
    );
    assert_eq!(
        http("POST", &url, Some(ADMIN_KEY), Some(&ask(60))).await.0,
        200
    );
}

#[tokio::test]
async fn nodes_and_route() {
    let node = TestNode::start();
    let _alice = node.login("alice", "phone").await;
    // a single node leads every partition (it campaigns at start: no election timeout to wait for)
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let (status, body) = http_get(&node.url("/v1/nodes")).await;
        assert_eq!(status, 200);
        let nodes: Value = serde_json::from_str(&body).expect("json");
        if nodes[0]["partitions_led"] == 256 {
            assert_eq!(
                nodes,
                json!([{"id":"n1","listen":node.addr.to_string(),"up":true,"connections":1,"partitions_led":256}])
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{nodes}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (status, body) = http_get(&node.url("/v1/route?user=alice")).await;
    assert_eq!(status, 200);
    let route: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        route,
        json!({"node":"n1","ws":format!("ws://{}/ws", node.addr)})
    );
    assert_eq!(http_get(&node.url("/v1/route?user=bad%20id")).await.0, 400);
    assert_eq!(http_get(&node.url("/v1/route")).await.0, 400);
}

#[tokio::test]
async fn websocket_upgrades_only_on_ws() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let node = TestNode::start();
    assert_eq!(
        http_get(&node.url("/ws")).await.0,
        400,
        "GET /ws without an upgrade"
    );
    let mut stream = tokio::net::TcpStream::connect(node.addr)
        .await
        .expect("connect");
    let request = "GET /elsewhere HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                   Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = vec![0u8; 256];
    let n = stream.read(&mut response).await.expect("read");
    let head = String::from_utf8_lossy(&response[..n]);
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
}
