//! PROTOCOL.md "Friends": request, crossing requests, accept, decline, remove, list.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

#[tokio::test]
async fn request_accept_and_list() {
    let node = TestNode::start();
    let mut alice = node.login("alice", "phone").await;
    let mut bob = node.login("bob", "phone").await;
    let ok = alice
        .call(json!({"type":"friend_request","user":"bob","note":"hi"}))
        .await
        .expect("request");
    assert_eq!(ok["type"], "ok");
    let pushed = bob
        .expect_type("friend_request", WAIT)
        .await
        .expect("pushed");
    assert_eq!(
        pushed,
        json!({"type":"friend_request","from":"alice","note":"hi"})
    );

    let a = alice
        .call(json!({"type":"friends"}))
        .await
        .expect("friends");
    assert_eq!(
        (a["friends"].clone(), a["outgoing"].clone()),
        (json!([]), json!([{"to":"bob","note":"hi"}]))
    );
    let b = bob.call(json!({"type":"friends"})).await.expect("friends");
    assert_eq!(b["incoming"], json!([{"from":"alice","note":"hi"}]));

    bob.call(json!({"type":"friend_accept","user":"alice"}))
        .await
        .expect("accept");
    assert_eq!(
        alice.expect_type("friend", WAIT).await.expect("added"),
        json!({"type":"friend","user":"bob","state":"added"})
    );
    assert_eq!(
        bob.expect_type("friend", WAIT).await.expect("added"),
        json!({"type":"friend","user":"alice","state":"added"})
    );
    let a = alice
        .call(json!({"type":"friends"}))
        .await
        .expect("friends");
    assert_eq!(
        a,
        json!({"type":"friends","rid":a["rid"],"friends":["bob"],"incoming":[],"outgoing":[],"blocked":[]})
    );
    send_text(&mut alice, &dm("alice", "bob"), "c1", "now we can talk").await;
}

#[tokio::test]
async fn pending_requests_are_listed_for_devices_that_were_offline() {
    let node = TestNode::start();
    let mut alice = node.login("alice", "phone").await;
    alice
        .call(json!({"type":"friend_request","user":"bob"}))
        .await
        .expect("request");
    let mut bob = node.login("bob", "phone").await;
    bob.expect_none(
        |f| f["type"] == "friend_request",
        Duration::from_millis(300),
    )
    .await
    .expect("not pushed later");
    let b = bob.call(json!({"type":"friends"})).await.expect("friends");
    assert_eq!(b["incoming"], json!([{"from":"alice","note":""}]));
}

#[tokio::test]
async fn crossing_requests_make_friends() {
    let node = TestNode::start();
    let mut alice = node.login("alice", "phone").await;
    let mut bob = node.login("bob", "phone").await;
    alice
        .call(json!({"type":"friend_request","user":"bob"}))
        .await
        .expect("request");
    bob.call(json!({"type":"friend_request","user":"alice"}))
        .await
        .expect("crossing request");
    alice
        .expect(|f| f["type"] == "friend" && f["state"] == "added", WAIT)
        .await
        .expect("added");
    bob.expect(|f| f["type"] == "friend" && f["state"] == "added", WAIT)
        .await
        .expect("added");
    let b = bob.call(json!({"type":"friends"})).await.expect("friends");
    assert_eq!(
        (
            b["friends"].clone(),
            b["incoming"].clone(),
            b["outgoing"].clone()
        ),
        (json!(["alice"]), json!([]), json!([]))
    );
}

#[tokio::test]
async fn decline_and_remove() {
    let node = TestNode::start();
    let mut alice = node.login("alice", "phone").await;
    let mut bob = node.login("bob", "phone").await;
    alice
        .call(json!({"type":"friend_request","user":"bob"}))
        .await
        .expect("request");
    bob.call(json!({"type":"friend_decline","user":"alice"}))
        .await
        .expect("decline");
    let a = alice
        .call(json!({"type":"friends"}))
        .await
        .expect("friends");
    assert_eq!(a["outgoing"], json!([]));
    let no = bob
        .request(json!({"type":"friend_accept","user":"alice"}))
        .await
        .expect("reply");
    assert_eq!(no["code"], "not_found", "nothing left to accept");

    befriend(&mut alice, "alice", &mut bob, "bob").await;
    alice
        .call(json!({"type":"friend_remove","user":"bob"}))
        .await
        .expect("remove");
    assert_eq!(
        alice.expect_type("friend", WAIT).await.expect("removed")["state"],
        "removed"
    );
    assert_eq!(
        bob.expect_type("friend", WAIT).await.expect("removed"),
        json!({"type":"friend","user":"alice","state":"removed"})
    );
    let reply = alice
        .request(json!({"type":"send","cid":"c","conv":dm("alice","bob"),"body":{}}))
        .await
        .expect("reply");
    assert_eq!(reply["code"], "not_friends");
    let again = alice
        .request(json!({"type":"friend_remove","user":"bob"}))
        .await
        .expect("reply");
    assert_eq!(again["code"], "not_found");
}

#[tokio::test]
async fn friendships_and_requests_survive_a_restart() {
    let mut node = TestNode::start();
    {
        let mut alice = node.login("alice", "phone").await;
        let mut bob = node.login("bob", "phone").await;
        befriend(&mut alice, "alice", &mut bob, "bob").await;
        alice
            .call(json!({"type":"friend_request","user":"carol","note":"yo"}))
            .await
            .expect("request");
    }
    node.restart();
    let mut alice = node.login("alice", "phone").await;
    let a = alice
        .call(json!({"type":"friends"}))
        .await
        .expect("friends");
    assert_eq!(a["friends"], json!(["bob"]));
    assert_eq!(a["outgoing"], json!([{"to":"carol","note":"yo"}]));
    let mut carol = node.login("carol", "phone").await;
    carol
        .call(json!({"type":"friend_accept","user":"alice"}))
        .await
        .expect("accept after restart");
    send_text(&mut alice, &dm("alice", "bob"), "c1", "still friends").await;
}

#[tokio::test]
async fn befriending_oneself_is_a_bad_request() {
    let node = TestNode::start();
    let mut alice = node.login("alice", "phone").await;
    let e = alice
        .request(json!({"type":"friend_request","user":"alice"}))
        .await
        .expect("reply");
    assert_eq!(e["code"], "bad_request");
}
