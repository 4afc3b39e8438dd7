//! PROTOCOL.md "Errors": every bad input gets its error frame and the connection stays usable.

mod common;

use std::time::Duration;

use common::*;
use rookery::client::Client;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

async fn still_usable(c: &mut Client) {
    assert_eq!(
        c.call(json!({"type":"ping"}))
            .await
            .expect("connection still usable")["type"],
        "pong"
    );
}

async fn error_for(c: &mut Client, text: String) -> Value {
    c.send_text(text).await.expect("send");
    c.expect_type("error", WAIT).await.expect("error frame")
}

#[tokio::test]
async fn malformed_frames_are_bad_requests_and_the_connection_stays_open() {
    let node = TestNode::start();
    let mut c = node.login("alice", "phone").await;
    let cases: Vec<(String, Option<Value>)> = vec![
        ("{not json".into(), None),
        ("[]".into(), None),
        (json!({"rid":1}).to_string(), Some(json!(1))),
        (
            json!({"type":"teleport","rid":"t"}).to_string(),
            Some(json!("t")),
        ),
        (
            json!({"type":"send","rid":2,"conv":"dm:alice:bob","body":{}}).to_string(),
            Some(json!(2)),
        ),
        (
            json!({"type":"send","rid":3,"cid":"c","conv":"dm:alice:bob","body":"text"})
                .to_string(),
            Some(json!(3)),
        ),
        (
            json!({"type":"sync","rid":4,"conv":"dm:bob:alice"}).to_string(),
            Some(json!(4)),
        ),
        (
            json!({"type":"sync","rid":5,"conv":"nonsense"}).to_string(),
            Some(json!(5)),
        ),
        (
            json!({"type":"ack","rid":6,"conv":"dm:alice:bob","seq":"seven"}).to_string(),
            Some(json!(6)),
        ),
        (
            json!({"type":"friend_request","rid":7,"user":"not valid!"}).to_string(),
            Some(json!(7)),
        ),
        (
            json!({"type":"send","rid":8,"cid":"x".repeat(65),"conv":"dm:alice:bob","body":{}})
                .to_string(),
            Some(json!(8)),
        ),
        (
            json!({"type":"sync","rid":9,"conv":"dm:alice:bob","limit":0}).to_string(),
            Some(json!(9)),
        ),
    ];
    for (text, rid) in cases {
        let e = error_for(&mut c, text.clone()).await;
        assert_eq!(e["code"], "bad_request", "{text} -> {e}");
        assert_eq!(e.get("rid").cloned(), rid, "{text} -> {e}");
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    c.send_raw(Message::Binary(vec![0, 1]))
        .await
        .expect("binary");
    assert_eq!(
        c.expect_type("error", WAIT).await.expect("error")["code"],
        "bad_request"
    );
    still_usable(&mut c).await;
}

#[tokio::test]
async fn oversized_frames_and_bodies_are_too_large_and_the_connection_stays_open() {
    let node = TestNode::start_with("[chat]\ndm_requires_friendship = false\n[limits]\nmax_frame_bytes = 4096\nmax_body_bytes = 1024");
    let mut c = node.login("alice", "phone").await;
    let conv = dm("alice", "bob");
    // a frame far over the limit (1 MiB against 4 KiB)
    let huge =
        json!({"type":"send","rid":1,"cid":"c","conv":conv,"body":{"text":"x".repeat(1 << 20)}})
            .to_string();
    let e = error_for(&mut c, huge).await;
    assert_eq!(e["code"], "too_large");
    still_usable(&mut c).await;
    // within the frame limit but a body over max_body_bytes
    let body =
        json!({"type":"send","rid":2,"cid":"c","conv":conv,"body":{"text":"x".repeat(2000)}})
            .to_string();
    let e = error_for(&mut c, body).await;
    assert_eq!(
        (e["code"].as_str(), e["rid"].as_i64()),
        (Some("too_large"), Some(2))
    );
    // nothing was stored by either
    let msgs = c
        .call(json!({"type":"sync","conv":conv}))
        .await
        .expect("sync");
    assert_eq!(msgs["msgs"], json!([]));
    send_text(&mut c, &conv, "c", "small is fine").await;
}

#[tokio::test]
async fn other_peoples_conversations_are_forbidden() {
    let node = TestNode::start_with("[chat]\ndm_requires_friendship = false");
    let mut alice = node.login("alice", "phone").await;
    send_text(&mut alice, &dm("alice", "bob"), "c1", "private").await;
    let mut eve = node.login("eve", "phone").await;
    let conv = dm("alice", "bob");
    for frame in [
        json!({"type":"send","cid":"c","conv":conv,"body":{"text":"hi"}}),
        json!({"type":"sync","conv":conv}),
        json!({"type":"receipts","conv":conv,"seq":1}),
        json!({"type":"read","conv":conv,"seq":1}),
        json!({"type":"ack","conv":conv,"seq":1}),
        json!({"type":"typing","conv":conv}),
        json!({"type":"recall","conv":conv,"seq":1}),
    ] {
        let e = eve.request(frame.clone()).await.expect("reply");
        assert_eq!(e["code"], "forbidden", "{frame} -> {e}");
    }
    let convs = eve.call(json!({"type":"convs"})).await.expect("convs");
    assert_eq!(convs["convs"], json!([]));
    let msgs = alice
        .call(json!({"type":"sync","conv":conv}))
        .await
        .expect("sync");
    assert_eq!(
        msgs["msgs"].as_array().expect("msgs").len(),
        1,
        "nothing was added by eve"
    );
}

#[tokio::test]
async fn groups_that_do_not_exist_are_not_found() {
    let node = TestNode::start();
    let mut c = node.login("alice", "phone").await;
    for frame in [
        json!({"type":"send","cid":"c","conv":"g:nope","body":{}}),
        json!({"type":"sync","conv":"g:nope"}),
        json!({"type":"group_info","conv":"g:nope"}),
    ] {
        let e = c.request(frame.clone()).await.expect("reply");
        assert_eq!(e["code"], "not_found", "{frame} -> {e}");
    }
}

#[tokio::test]
async fn floods_are_rate_limited_and_nothing_accepted_is_lost() {
    let node =
        TestNode::start_with("[chat]\ndm_requires_friendship = false\n[limits]\nsends_per_s = 5");
    let mut c = node.login("alice", "phone").await;
    let conv = dm("alice", "bob");
    for i in 0..30 {
        c.send(&json!({"type":"send","rid":i,"cid":format!("c{i}"),"conv":conv,"body":{"i":i}}))
            .await
            .expect("send");
    }
    let (mut accepted, mut limited) = (Vec::new(), 0);
    for i in 0..30 {
        let reply = c.expect(move |f| f["rid"] == i, WAIT).await.expect("reply");
        match reply["type"].as_str() {
            Some("sent") => accepted.push(reply["seq"].as_u64().expect("seq")),
            _ => {
                assert_eq!(reply["code"], "rate_limited");
                limited += 1;
            }
        }
    }
    assert!(
        (10..=12).contains(&accepted.len()),
        "burst of 2x rate: {} accepted",
        accepted.len()
    );
    assert_eq!(limited, 30 - accepted.len());
    let msgs = c
        .call(json!({"type":"sync","conv":conv}))
        .await
        .expect("sync");
    assert_eq!(
        msgs["msgs"].as_array().expect("msgs").len(),
        accepted.len(),
        "every sent is stored"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    send_text(&mut c, &conv, "later", "the bucket refills").await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_disconnected_not_buffered() {
    let node = TestNode::start_with(
        "[chat]\ndm_requires_friendship = false\n[actors]\nsession_queue_bytes = 65536",
    );
    let conv = dm("alice", "bob");
    let mut alice = node.login("alice", "phone").await;
    let big = "x".repeat(15_000);
    for i in 0..100 {
        alice
            .send(&json!({"type":"send","rid":format!("s{i}"),"cid":format!("c{i}"),"conv":conv,"body":{"text":big}}))
            .await
            .expect("send");
    }
    alice
        .expect(|f| f["rid"] == "s99", Duration::from_secs(10))
        .await
        .expect("all stored");
    // bob asks for ~1.5 MB a request, 200 times, and never reads
    let mut bob = node.login("bob", "phone").await;
    for i in 0..200 {
        if bob
            .send(&json!({"type":"sync","rid":i,"conv":conv}))
            .await
            .is_err()
        {
            break;
        }
    }
    let mut closed = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (_, metrics) = http_get(&node.url("/metrics")).await;
        if metrics
            .lines()
            .any(|l| l == "rookery_slow_consumer_disconnects_total 1")
        {
            closed = true;
            break;
        }
    }
    assert!(
        closed,
        "the server dropped the connection that did not read"
    );
    // the node is fine and nothing was lost
    let msgs = alice
        .call(json!({"type":"sync","conv":conv,"limit":1000}))
        .await
        .expect("sync");
    assert_eq!(msgs["msgs"].as_array().expect("msgs").len(), 100);
}
