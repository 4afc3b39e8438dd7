//! PROTOCOL.md "Session" and presence: auth, welcome, refusals before auth, kick, ping, heartbeat.

mod common;

use std::time::Duration;

use common::*;
use rookery::client::{Client, ClientError};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn auth_gives_welcome() {
    let node = TestNode::start();
    let (_client, welcome) = Client::login(node.addr, &token("alice"), "phone")
        .await
        .expect("login");
    assert_eq!(
        welcome,
        json!({"type":"welcome","user":"alice","device":"phone","node":"n1","heartbeat_s":30})
    );
}

#[tokio::test]
async fn bad_or_expired_token_is_unauthorized_then_closed() {
    let node = TestNode::start();
    for bad in [
        "garbage".to_string(),
        rookery::net::auth::mint("other-secret", &"alice".parse_user(), 60),
    ] {
        let mut c = Client::connect(node.addr).await.expect("connect");
        c.send(&json!({"type":"auth","token":bad,"device":"phone","rid":1}))
            .await
            .expect("send");
        let e = c.expect_type("error", WAIT).await.expect("error");
        assert_eq!(
            (e["code"].as_str(), e["rid"].as_i64()),
            (Some("unauthorized"), Some(1))
        );
        c.expect_close(WAIT).await.expect("closed");
    }
}

trait ParseUser {
    fn parse_user(&self) -> rookery::ids::UserId;
}
impl ParseUser for &str {
    fn parse_user(&self) -> rookery::ids::UserId {
        rookery::ids::UserId::parse(self).expect("user")
    }
}

#[tokio::test]
async fn any_other_frame_before_auth_is_unauthorized_then_closed() {
    let node = TestNode::start();
    for first in [
        Message::Text(json!({"type":"ping"}).to_string()),
        Message::Text("not json".into()),
        Message::Text(json!({"type":"send","cid":"c","conv":"dm:a:b","body":{}}).to_string()),
        Message::Binary(vec![1, 2, 3]),
    ] {
        let mut c = Client::connect(node.addr).await.expect("connect");
        c.send_raw(first.clone()).await.expect("send");
        let e = c.expect_type("error", WAIT).await.expect("error");
        assert_eq!(e["code"], "unauthorized", "{first:?}");
        c.expect_close(WAIT).await.expect("closed");
    }
}

#[tokio::test]
async fn invalid_device_name_is_bad_request_then_closed() {
    let node = TestNode::start();
    for device in ["", "has space", &"d".repeat(65)] {
        let mut c = Client::connect(node.addr).await.expect("connect");
        c.send(&json!({"type":"auth","token":token("alice"),"device":device}))
            .await
            .expect("send");
        let e = c.expect_type("error", WAIT).await.expect("error");
        assert_eq!(e["code"], "bad_request", "device {device:?}");
        c.expect_close(WAIT).await.expect("closed");
    }
}

/// A connection that sends nothing is closed after 10 s; one that authenticated in time (its auth timer
/// cancelled then) stays.
#[tokio::test]
async fn no_auth_within_ten_seconds_closes() {
    let node = TestNode::start();
    let mut c = Client::connect(node.addr).await.expect("connect");
    let started = std::time::Instant::now();
    let mut authed = node.login("alice", "phone").await;
    c.expect_close(Duration::from_secs(13))
        .await
        .expect("closed");
    assert!(
        started.elapsed() >= Duration::from_secs(9),
        "closed after {:?}",
        started.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(11).saturating_sub(started.elapsed())).await;
    let pong = authed.call(json!({"type":"ping"})).await.expect("pong");
    assert_eq!(pong["type"], "pong", "the authenticated connection stays");
}

#[tokio::test]
async fn same_device_again_kicks_the_older_connection_without_presence_change() {
    let node = TestNode::start();
    let mut bob = node.login("bob", "phone").await;
    let mut alice = node.login("alice", "phone").await;
    befriend(&mut alice, "alice", &mut bob, "bob").await;
    let mut newer = node.login("alice", "phone").await;
    let kicked = alice.expect_type("kicked", WAIT).await.expect("kicked");
    assert_eq!(kicked, json!({"type":"kicked"}));
    alice
        .expect_close(WAIT)
        .await
        .expect("old connection closed");
    bob.expect_none(|f| f["type"] == "presence", Duration::from_millis(400))
        .await
        .expect("a kick changes no presence");
    // the newer connection works and receives pushes
    let pong = newer.call(json!({"type":"ping"})).await.expect("pong");
    assert_eq!(pong["type"], "pong");
    send_text(&mut bob, &dm("alice", "bob"), "c1", "hi").await;
    newer
        .expect(is_msg(&dm("alice", "bob"), 1), WAIT)
        .await
        .expect("push reaches the newer connection");
}

#[tokio::test]
async fn ping_pong_with_and_without_rid() {
    let node = TestNode::start();
    let mut c = node.login("alice", "phone").await;
    c.send(&json!({"type":"ping"})).await.expect("send");
    assert_eq!(
        c.expect_type("pong", WAIT).await.expect("pong"),
        json!({"type":"pong"})
    );
    let pong = c.request(json!({"type":"ping"})).await.expect("pong");
    assert_eq!(pong["type"], "pong");
    // WebSocket-level pings are answered too
    c.send_raw(Message::Ping(b"x".to_vec()))
        .await
        .expect("ws ping");
    assert_eq!(
        c.call(json!({"type":"ping"})).await.expect("still open")["type"],
        "pong"
    );
}

#[tokio::test]
async fn silent_connections_are_closed_after_three_heartbeats() {
    let node = TestNode::start_with("[chat]\nheartbeat_s = 1");
    let mut quiet = node.login("alice", "phone").await;
    let mut chatty = node.login("bob", "phone").await;
    let started = std::time::Instant::now();
    let pinger = tokio::spawn(async move {
        for _ in 0..10 {
            chatty
                .call(json!({"type":"ping"}))
                .await
                .expect("chatty stays open");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        chatty
    });
    quiet
        .expect_close(Duration::from_secs(8))
        .await
        .expect("silent connection closed");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(2900) && waited < Duration::from_secs(6),
        "closed after {waited:?}"
    );
    pinger.await.expect("pinging connection kept alive");
}

#[tokio::test]
async fn presence_reaches_online_friends() {
    let node = TestNode::start();
    let mut alice = node.login("alice", "phone").await;
    let mut bob = node.login("bob", "phone").await;
    let mut carol = node.login("carol", "phone").await;
    befriend(&mut alice, "alice", &mut bob, "bob").await;
    bob.close().await;
    assert_eq!(
        alice.expect_type("presence", WAIT).await.expect("offline"),
        json!({"type":"presence","user":"bob","online":false})
    );
    let bob = node.login("bob", "phone").await;
    assert_eq!(
        alice.expect_type("presence", WAIT).await.expect("online"),
        json!({"type":"presence","user":"bob","online":true})
    );
    // a second device is not a new "online"
    let bob2 = node.login("bob", "laptop").await;
    alice
        .expect_none(|f| f["type"] == "presence", Duration::from_millis(300))
        .await
        .expect("no second online");
    bob.close().await;
    alice
        .expect_none(|f| f["type"] == "presence", Duration::from_millis(300))
        .await
        .expect("still online on laptop");
    bob2.close().await;
    assert_eq!(
        alice.expect_type("presence", WAIT).await.expect("offline")["online"],
        false
    );
    // not a friend: nothing
    carol
        .expect_none(|f| f["type"] == "presence", Duration::from_millis(200))
        .await
        .expect("carol is no friend");
}

#[tokio::test]
async fn welcome_then_frames_in_order_of_the_connection() {
    let node = TestNode::start();
    let mut c = Client::connect(node.addr).await.expect("connect");
    // pipelined: auth immediately followed by a ping, before the welcome is back
    c.send(&json!({"type":"auth","token":token("alice"),"device":"phone"}))
        .await
        .expect("auth");
    c.send(&json!({"type":"ping","rid":"p"}))
        .await
        .expect("ping");
    let first = c.next(WAIT).await.expect("frame").expect("open");
    assert_eq!(first["type"], "welcome");
    let second = c.next(WAIT).await.expect("frame").expect("open");
    assert_eq!(second, json!({"type":"pong","rid":"p"}));
    match c
        .call(json!({"type":"auth","token":token("alice"),"device":"phone"}))
        .await
    {
        Err(ClientError::Refused(e)) => assert_eq!(e["code"], "bad_request"),
        other => panic!("second auth: {other:?}"),
    }
}
