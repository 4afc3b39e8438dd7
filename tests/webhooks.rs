//! PROTOCOL.md "Webhooks": events for offline members only, every message once, presence, signatures,
//! large groups (an event for mentioned members only), muted conversations (none),
//! a receiver that fails for a while and gets every event after dedupe by id in seq order per conversation,
//! kill -9 between `sent` and delivery, and the before-send hook (allow, reject, replace, timeout under both
//! failure policies, no call on a dedupe hit). A real actix-web receiver on loopback, real nodes.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn of_type<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == kind).collect()
}

const ALL: &str = "events = [\"offline_message\", \"message\", \"user_online\", \"user_offline\"]";

/// Waits until the node reports no device of `user` (a closed client's disconnect is processed).
async fn wait_offline(node_url: &str, user: &str) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (status, info) = api("GET", &format!("{node_url}/v1/users/{user}"), None).await;
        assert_eq!(status, 200, "{info}");
        if info["online"] == false {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{user} still online: {info}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn post(node_url: &str, conv: &str, from: &str, cid: &str, text: &str) -> Value {
    let body = json!({"conv":conv,"from":from,"cid":cid,"body":{"text":text}});
    let (status, reply) = api("POST", &format!("{node_url}/v1/messages"), Some(body)).await;
    assert_eq!(status, 200, "{reply}");
    reply
}

#[tokio::test]
async fn offline_members_get_offline_message_and_every_message_a_signed_message_event() {
    let receiver = Receiver::start();
    let node = TestNode::start_with(&receiver.config(ALL));
    let base = node.url("");
    let mut alice = node.login("alice", "phone").await;
    let carol = node.login("carol", "phone").await;
    alice
        .call(json!({"type":"group_create","conv":"g:t","name":"T","members":["bob","carol"]}))
        .await
        .expect("created");
    send_text(&mut alice, "g:t", "a1", "hello").await;
    post(&base, "dm:alice:bob", "alice", "d1", "psst").await;
    carol.close().await;

    let events = receiver
        .wait_events(
            |e| of_type(e, "message").len() >= 3 && !of_type(e, "user_offline").is_empty(),
            WAIT,
        )
        .await;
    let events = dedupe(&events);
    let messages: Vec<(String, u64)> = of_type(&events, "message")
        .iter()
        .map(|e| {
            (
                e["conv"].as_str().unwrap_or("").to_string(),
                e["message"]["seq"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        messages,
        vec![
            ("g:t".into(), 1),
            ("g:t".into(), 2),
            ("dm:alice:bob".into(), 1)
        ],
        "every message once, the system message included"
    );
    let offline: Vec<(String, String, u64)> = of_type(&events, "offline_message")
        .iter()
        .map(|e| {
            assert_eq!(e["message"]["conv"], e["conv"], "{e}");
            (
                e["user"].as_str().unwrap_or("").to_string(),
                e["conv"].as_str().unwrap_or("").to_string(),
                e["message"]["seq"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        offline,
        vec![
            ("bob".into(), "g:t".into(), 2),
            ("bob".into(), "dm:alice:bob".into(), 1)
        ],
        "only bob was offline; the system message causes none"
    );
    let text = of_type(&events, "offline_message")[0]["message"]["body"]["text"].clone();
    assert_eq!(text, "hello");
    let online: Vec<&str> = of_type(&events, "user_online")
        .iter()
        .filter_map(|e| e["user"].as_str())
        .collect();
    assert_eq!(online, vec!["alice", "carol"]);
    let gone: Vec<&str> = of_type(&events, "user_offline")
        .iter()
        .filter_map(|e| e["user"].as_str())
        .collect();
    assert_eq!(gone, vec!["carol"]);
    for e in &events {
        assert!(e["id"].is_string() && e["ts"].as_u64().is_some(), "{e}");
    }
    for request in receiver.requests("/events") {
        let expected = rookery::webhooks::sign(HOOK_SECRET, &request.body);
        assert_eq!(request.signature.as_deref(), Some(expected.as_str()));
        assert!(request.json()["events"]
            .as_array()
            .is_some_and(|a| a.len() <= 100));
    }
}

/// In a group over `push_max_members` only mentioned offline members get `offline_message`; a member who
/// muted the conversation gets none, mentioned or not, and gets them again once the mute is lifted.
#[tokio::test]
async fn large_groups_announce_mentions_only_and_a_mute_silences_a_member() {
    let receiver = Receiver::start();
    let node = TestNode::start_with(&format!(
        "{}
[chat]
push_max_members = 2",
        receiver.config("")
    ));
    let base = node.url("");
    let group =
        json!({"conv":"g:big","name":"Big","owner":"alice","members":["bob","carol","dave"]});
    let (status, _) = api("POST", &node.url("/v1/groups"), Some(group)).await;
    assert_eq!(status, 201);
    // dave mutes the group (far into the future), then leaves: everyone but alice is offline
    let mut dave = node.login("dave", "phone").await;
    let muted = dave
        .call(json!({"type":"conv_settings","conv":"g:big","muted_until": 4_000_000_000_000u64}))
        .await
        .expect("muted");
    assert_eq!(muted["type"], "ok", "{muted}");
    dave.close().await;
    wait_offline(&base, "dave").await;
    let body = json!({"conv":"g:big","from":"alice","cid":"m1","body":{"text":"bob, dave"},"mentions":["bob","dave"]});
    let (status, reply) = api("POST", &format!("{base}/v1/messages"), Some(body)).await;
    assert_eq!(status, 200, "{reply}");
    post(&base, "g:big", "alice", "m2", "nobody in particular").await;
    receiver.wait_events(|e| !e.is_empty(), WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events = dedupe(&receiver.events());
    let got: Vec<(&str, u64)> = events
        .iter()
        .map(|e| {
            (
                e["user"].as_str().unwrap_or(""),
                e["message"]["seq"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![("bob", 2)],
        "the mentioned bob only (seq 1 is the group's creation); dave muted it: {events:#?}"
    );

    // lifted: dave's mentions reach the backend again
    let mut dave = node.login("dave", "phone").await;
    let unmuted = dave
        .call(json!({"type":"conv_settings","conv":"g:big","muted_until":0}))
        .await
        .expect("unmuted");
    assert_eq!(unmuted["type"], "ok");
    dave.close().await;
    wait_offline(&base, "dave").await;
    let body = json!({"conv":"g:big","from":"alice","cid":"m3","body":{"text":"dave?"},"mentions":["dave"]});
    let (status, _) = api("POST", &format!("{base}/v1/messages"), Some(body)).await;
    assert_eq!(status, 200);
    let events = receiver
        .wait_events(|e| e.iter().any(|e| e["user"] == "dave"), WAIT)
        .await;
    let dave_events: Vec<u64> = dedupe(&events)
        .iter()
        .filter(|e| e["user"] == "dave")
        .map(|e| e["message"]["seq"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(dave_events, vec![4]);
}

#[tokio::test]
async fn only_configured_types_are_sent_and_large_groups_emit_no_offline_message_without_a_mention()
{
    let receiver = Receiver::start();
    // default events: offline_message only; groups over 2 members are large
    let node = TestNode::start_with(&format!(
        "{}\n[chat]\npush_max_members = 2",
        receiver.config("")
    ));
    let base = node.url("");
    let group = json!({"conv":"g:big","name":"Big","owner":"alice","members":["bob","carol"]});
    let (status, _) = api("POST", &node.url("/v1/groups"), Some(group)).await;
    assert_eq!(status, 201);
    post(&base, "g:big", "alice", "b1", "to everyone").await;
    let small = json!({"conv":"g:small","name":"Small","owner":"alice","members":["bob"]});
    let (status, _) = api("POST", &node.url("/v1/groups"), Some(small)).await;
    assert_eq!(status, 201);
    post(&base, "g:small", "alice", "s1", "to bob").await;
    receiver.wait_events(|e| !e.is_empty(), WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events = dedupe(&receiver.events());
    assert!(
        events.iter().all(|e| e["type"] == "offline_message"),
        "{events:#?}"
    );
    let convs: Vec<&str> = events.iter().filter_map(|e| e["conv"].as_str()).collect();
    assert_eq!(
        convs,
        vec!["g:small"],
        "nothing for the large group's unmentioned members: {events:#?}"
    );
    let users: Vec<&str> = events.iter().filter_map(|e| e["user"].as_str()).collect();
    assert_eq!(users, vec!["bob"]);
}

#[tokio::test]
async fn a_receiver_failing_for_a_while_gets_every_event_in_seq_order_per_conversation() {
    let receiver = Receiver::start();
    receiver.set(|b| b.events_status = 500);
    let node = TestNode::start_with(&receiver.config("events = [\"message\"]"));
    let base = node.url("");
    let mut want = Vec::new();
    for i in 0..120 {
        let conv = if i % 3 == 0 { "dm:a:b" } else { "g:x" };
        if i == 1 {
            let group = json!({"conv":"g:x","name":"X","owner":"a","members":["b"]});
            let (status, _) = api("POST", &node.url("/v1/groups"), Some(group)).await;
            assert_eq!(status, 201);
        }
        let reply = post(&base, conv, "a", &format!("c{i}"), "x").await;
        want.push(format!("message:{conv}:{}", reply["seq"]));
    }
    want.push("message:g:x:1".into());
    // refused for a while: the sender backs off (1 s, then 2 s) and the outbox keeps everything
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(receiver.requests("/events").len() >= 2, "retried");
    let metrics = http_get(&node.url("/metrics")).await.1;
    assert!(
        metrics.contains("rookery_webhook_outbox_events 121"),
        "{metrics}"
    );
    let age: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("rookery_webhook_outbox_age_seconds "))
        .and_then(|v| v.parse().ok())
        .expect("outbox age");
    assert!(
        age >= 2.0,
        "the oldest event waits since the first post: {age}"
    );
    receiver.set(|b| b.events_status = 200);
    let events = receiver
        .wait_events(|e| dedupe(e).len() >= want.len(), Duration::from_secs(10))
        .await;
    // what the receiver acknowledged (2xx) arrived exactly once; the refused batches were sent again
    let acknowledged: Vec<Value> = receiver
        .requests("/events")
        .iter()
        .filter(|r| r.status == 200)
        .flat_map(|r| r.json()["events"].as_array().cloned().unwrap_or_default())
        .collect();
    assert_eq!(
        dedupe(&acknowledged).len(),
        acknowledged.len(),
        "no repeats after a 2xx"
    );
    let unique = dedupe(&events);
    let mut ids: Vec<String> = unique
        .iter()
        .map(|e| e["id"].as_str().unwrap_or("").to_string())
        .collect();
    ids.sort();
    want.sort();
    assert_eq!(ids, want);
    let mut acked: Vec<String> = acknowledged
        .iter()
        .map(|e| e["id"].as_str().unwrap_or("").to_string())
        .collect();
    acked.sort();
    assert_eq!(acked, want, "every event acknowledged once");
    // within each request, a conversation's events go up in seq
    for r in receiver.requests("/events") {
        let mut last: HashMap<String, u64> = HashMap::new();
        for e in r.json()["events"].as_array().cloned().unwrap_or_default() {
            let conv = e["conv"].as_str().unwrap_or("").to_string();
            let seq = e["message"]["seq"].as_u64().unwrap_or(0);
            let prev = last.insert(conv.clone(), seq).unwrap_or(0);
            assert!(seq > prev, "{conv}: {prev} then {seq}");
        }
    }
    for conv in ["dm:a:b", "g:x"] {
        let seqs: Vec<u64> = unique
            .iter()
            .filter(|e| e["conv"] == conv)
            .filter_map(|e| e["message"]["seq"].as_u64())
            .collect();
        let sorted: Vec<u64> = (1..=seqs.len() as u64).collect();
        assert_eq!(seqs, sorted, "{conv} in seq order");
    }
    let sizes: Vec<usize> = receiver
        .requests("/events")
        .iter()
        .map(|r| r.json()["events"].as_array().map_or(0, Vec::len))
        .collect();
    assert!(
        sizes.iter().all(|n| *n <= 100) && sizes.contains(&100),
        "{sizes:?}"
    );
    // delivered events leave the outbox
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let metrics = http_get(&node.url("/metrics")).await.1;
        if metrics.contains("rookery_webhook_outbox_events 0") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "outbox not emptied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn kill_9_between_sent_and_delivery_loses_no_event() {
    let receiver = Receiver::start();
    receiver.set(|b| b.events_status = 503);
    let mut cluster = Cluster::start(
        1,
        &receiver.config("events = [\"message\", \"offline_message\"]"),
    )
    .await;
    let base = cluster.url(0, "");
    for i in 1..=20 {
        let reply = post(&base, "dm:kim:lee", "kim", &format!("k{i}"), "x").await;
        assert_eq!(reply["seq"], i);
    }
    cluster.kill9(0);
    receiver.set(|b| b.events_status = 200);
    cluster.restart(0).await;
    let events = receiver
        .wait_events(|e| dedupe(e).len() >= 40, Duration::from_secs(10))
        .await;
    let unique = dedupe(&events);
    for kind in ["message", "offline_message"] {
        let seqs: Vec<u64> = of_type(&unique, kind)
            .iter()
            .filter_map(|e| e["message"]["seq"].as_u64())
            .collect();
        assert_eq!(seqs, (1..=20).collect::<Vec<u64>>(), "{kind}");
    }
}

#[tokio::test]
async fn before_send_allows_rejects_replaces_and_is_not_asked_on_a_dedupe_hit() {
    let receiver = Receiver::start();
    let hook = format!(
        "before_send_url = \"{}/hook\"\nbefore_send_timeout_ms = 300",
        receiver.base
    );
    let node = TestNode::start_with(&receiver.config(&hook));
    let mut alice = node.login("alice", "phone").await;
    alice
        .call(json!({"type":"group_create","conv":"g:h","name":"H","members":["bob"]}))
        .await
        .expect("created");
    assert_eq!(
        receiver.requests("/hook").len(),
        0,
        "group operations are not messages"
    );

    let sent = send_text(&mut alice, "g:h", "m1", "fine").await;
    assert_eq!(sent["seq"], 2);
    let asked = receiver.requests("/hook");
    assert_eq!(asked.len(), 1);
    assert_eq!(
        asked[0].json(),
        json!({"conv":"g:h","from":"alice","cid":"m1","body":{"text":"fine"}})
    );
    let expected = rookery::webhooks::sign(HOOK_SECRET, &asked[0].body);
    assert_eq!(asked[0].signature.as_deref(), Some(expected.as_str()));

    // a dedupe hit is answered without asking, whatever the hook would say now
    receiver.set(|b| b.hook_answer = json!({"action":"reject","reason":"no"}));
    let again = send_text(&mut alice, "g:h", "m1", "fine").await;
    assert_eq!(
        (again["seq"].clone(), again["ts"].clone()),
        (sent["seq"].clone(), sent["ts"].clone())
    );
    assert_eq!(
        receiver.requests("/hook").len(),
        1,
        "not asked for a known cid"
    );

    let refused = alice
        .request(json!({"type":"send","cid":"m2","conv":"g:h","body":{"text":"spam"}}))
        .await
        .expect("answer");
    assert_eq!(
        (refused["type"].as_str(), refused["code"].as_str()),
        (Some("error"), Some("forbidden")),
        "{refused}"
    );
    assert_eq!(refused["message"], "no");
    let post_body = json!({"conv":"g:h","from":"alice","cid":"m3","body":{"text":"spam"}});
    let (status, e) = api("POST", &node.url("/v1/messages"), Some(post_body)).await;
    assert_eq!(
        (status, e["error"].as_str(), e["message"].as_str()),
        (403, Some("forbidden"), Some("no"))
    );

    receiver.set(|b| b.hook_answer = json!({"action":"replace","body":{"text":"***"}}));
    let replaced = send_text(&mut alice, "g:h", "m4", "rude").await;
    assert_eq!(replaced["seq"], 3, "nothing stored for the rejected ones");
    let page = alice
        .call(json!({"type":"sync","conv":"g:h","after":2}))
        .await
        .expect("sync");
    assert_eq!(page["msgs"][0]["body"], json!({"text":"***"}));

    // no answer in time, policy "allow": stored as sent
    receiver.set(|b| {
        b.hook_answer = json!({"action":"reject","reason":"too late"});
        b.hook_delay = Duration::from_millis(800);
    });
    let started = std::time::Instant::now();
    let late = send_text(&mut alice, "g:h", "m5", "slow hook").await;
    assert_eq!(late["seq"], 4);
    assert!(
        started.elapsed() < Duration::from_millis(750),
        "{:?}",
        started.elapsed()
    );
    let metrics = http_get(&node.url("/metrics")).await.1;
    assert!(
        metrics.contains("rookery_before_send_total{answer=\"failed\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn before_send_failures_reject_under_the_reject_policy() {
    let receiver = Receiver::start();
    receiver.set(|b| b.hook_delay = Duration::from_millis(800));
    let hook = format!(
        "before_send_url = \"{}/hook\"\nbefore_send_timeout_ms = 200\nbefore_send_failure = \"reject\"",
        receiver.base
    );
    let node = TestNode::start_with(&receiver.config(&hook));
    let body = json!({"conv":"dm:x:y","from":"x","cid":"t1","body":{"text":"hi"}});
    let (status, e) = api("POST", &node.url("/v1/messages"), Some(body.clone())).await;
    assert_eq!(
        (status, e["error"].as_str()),
        (503, Some("unavailable")),
        "{e}"
    );
    receiver.set(|b| b.hook_delay = Duration::ZERO);
    let (status, reply) = api("POST", &node.url("/v1/messages"), Some(body)).await;
    assert_eq!(
        (status, reply["seq"].as_u64()),
        (200, Some(1)),
        "the retry with the same cid is stored once"
    );
}

#[tokio::test]
async fn a_slow_hook_does_not_stall_the_conversation() {
    let receiver = Receiver::start();
    receiver.set(|b| b.hook_delay = Duration::from_millis(1500));
    let hook = format!(
        "before_send_url = \"{}/hook\"\nbefore_send_timeout_ms = 3000",
        receiver.base
    );
    let node = TestNode::start_with(&receiver.config(&hook));
    let mut alice = node.login("alice", "phone").await;
    let mut bob = node.login("bob", "phone").await;
    alice
        .call(json!({"type":"group_create","conv":"g:s","name":"S","members":["bob"]}))
        .await
        .expect("created");
    // alice's message waits for the hook; meanwhile the conversation serves bob at once
    alice
        .send(&json!({"type":"send","rid":"slow","cid":"s1","conv":"g:s","body":{"text":"hi"}}))
        .await
        .expect("sent");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    let page = bob
        .call(json!({"type":"sync","conv":"g:s"}))
        .await
        .expect("sync");
    bob.call(json!({"type":"group_info","conv":"g:s"}))
        .await
        .expect("info");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        msg_seqs(&page),
        vec![1],
        "the message is not stored before the hook answers"
    );
    let sent = alice
        .expect(|f| f["rid"] == "slow", Duration::from_secs(5))
        .await
        .expect("sent after the hook");
    assert_eq!(
        (sent["type"].as_str(), sent["seq"].as_u64()),
        (Some("sent"), Some(2))
    );
}

#[tokio::test]
async fn offline_is_decided_from_every_nodes_sessions() {
    let receiver = Receiver::start();
    let cluster = Cluster::start(2, &receiver.config("")).await;
    // the group lives on node 0; bob is connected to node 1 only; carol nowhere
    let group = (0..1000)
        .map(|i| format!("g:team{i}"))
        .find(|g| cluster.owner(g) == 0)
        .expect("a group on node 0");
    let bob = cluster.user_on(1, "bob");
    let carol = cluster.user_on(0, "carol");
    let _bob_phone = cluster.login(1, &bob, "phone").await;
    let body = json!({"conv":group,"name":"T","owner":"alice","members":[bob, carol]});
    let (status, _) = api("POST", &cluster.url(1, "/v1/groups"), Some(body)).await;
    assert_eq!(status, 201);
    post(&cluster.url(1, ""), &group, "alice", "x1", "hi").await;
    receiver
        .wait_events(|e| !e.is_empty(), Duration::from_secs(10))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events = dedupe(&receiver.events());
    let users: Vec<&str> = events.iter().filter_map(|e| e["user"].as_str()).collect();
    assert_eq!(
        users,
        vec![carol.as_str()],
        "bob is online on the other node: {events:#?}"
    );
}
