//! PROTOCOL.md "Conversations and messages", "Send", "Receive, acknowledge, pull", "Conversation list",
//! "Read receipts" and the ephemeral events, against a real node with real WebSocket clients.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn send_sent_msg_ack_delivered() {
    let node = TestNode::start();
    let mut alice = node.login("alice", "phone").await;
    let mut bob = node.login("bob", "phone").await;
    befriend(&mut alice, "alice", &mut bob, "bob").await;
    let conv = dm("alice", "bob");

    let sent = send_text(&mut alice, &conv, "c-1", "hi").await;
    assert_eq!(sent["cid"], "c-1");
    assert_eq!(sent["conv"], conv.as_str());
    assert_eq!(sent["seq"], 1);
    assert!(sent["ts"].as_u64().expect("ts") > 1_700_000_000_000);

    let msg = bob
        .expect(is_msg(&conv, 1), WAIT)
        .await
        .expect("bob gets the message");
    assert_eq!(msg["from"], "alice");
    assert_eq!(msg["cid"], "c-1");
    assert_eq!(msg["ts"], sent["ts"]);
    assert_eq!(msg["body"], json!({"text":"hi"}));

    bob.send(&json!({"type":"ack","conv":conv,"seq":1}))
        .await
        .expect("ack");
    let delivered = alice
        .expect_type("delivered", WAIT)
        .await
        .expect("delivered");
    assert_eq!(
        delivered,
        json!({"type":"delivered","conv":conv,"seq":1,"by":"bob"})
    );
    // the sending device never gets its own message pushed
    alice
        .expect_none(|f| f["type"] == "msg", Duration::from_millis(300))
        .await
        .expect("no echo");
}

#[tokio::test]
async fn direct_messages_need_friendship_unless_configured_off() {
    let node = TestNode::start();
    let mut alice = node.login("alice", "phone").await;
    let conv = dm("alice", "bob");
    let reply = alice
        .request(json!({"type":"send","cid":"c","conv":conv,"body":{"text":"hi"}}))
        .await
        .expect("reply");
    assert_eq!(reply["code"], "not_friends", "{reply}");

    let open = TestNode::start_with("[chat]\ndm_requires_friendship = false");
    let mut alice = open.login("alice", "phone").await;
    let mut bob = open.login("bob", "phone").await;
    send_text(&mut alice, &conv, "c", "hi").await;
    bob.expect(is_msg(&conv, 1), WAIT)
        .await
        .expect("delivered without friendship");
}

#[tokio::test]
async fn duplicate_cid_returns_the_first_sent_and_stores_nothing() {
    let node = TestNode::start_with("[chat]\ndm_requires_friendship = false");
    let mut alice = node.login("alice", "phone").await;
    let conv = dm("alice", "bob");
    let first = send_text(&mut alice, &conv, "c-81", "hi").await;
    let again = send_text(&mut alice, &conv, "c-81", "hi (retry)").await;
    assert_eq!(first["seq"], again["seq"]);
    assert_eq!(first["ts"], again["ts"]);
    let next = send_text(&mut alice, &conv, "c-82", "next").await;
    assert_eq!(next["seq"], 2, "the duplicate took no seq");
    let msgs = alice
        .call(json!({"type":"sync","conv":conv}))
        .await
        .expect("sync");
    assert_eq!(msgs["msgs"].as_array().expect("msgs").len(), 2);
    assert_eq!(
        msgs["msgs"][0]["body"]["text"], "hi",
        "the first body is kept"
    );
}

#[tokio::test]
async fn other_devices_of_the_sender_get_the_message() {
    let node = TestNode::start_with("[chat]\ndm_requires_friendship = false");
    let mut phone = node.login("alice", "phone").await;
    let mut laptop = node.login("alice", "laptop").await;
    let mut bob_phone = node.login("bob", "phone").await;
    let mut bob_tablet = node.login("bob", "tablet").await;
    let conv = dm("alice", "bob");
    send_text(&mut phone, &conv, "c1", "hi").await;
    laptop
        .expect(is_msg(&conv, 1), WAIT)
        .await
        .expect("sender's other device");
    bob_phone
        .expect(is_msg(&conv, 1), WAIT)
        .await
        .expect("bob's phone");
    bob_tablet
        .expect(is_msg(&conv, 1), WAIT)
        .await
        .expect("bob's tablet");
    phone
        .expect_none(|f| f["type"] == "msg", Duration::from_millis(300))
        .await
        .expect("not to the sending device");
}

#[tokio::test]
async fn concurrent_interleaved_senders_see_one_contiguous_sequence() {
    let node = TestNode::start_with("[chat]\ndm_requires_friendship = false");
    let mut watcher_a = node.login("alice", "watch").await;
    let mut watcher_b = node.login("bob", "watch").await;
    const EACH: u64 = 100;
    let mut tasks = Vec::new();
    for (user, other) in [("alice", "bob"), ("bob", "alice")] {
        let mut client = node.login(user, "phone").await;
        let conv = dm(user, other);
        tasks.push(tokio::spawn(async move {
            // pipeline everything, then collect the replies
            for i in 0..EACH {
                client
                    .send(&json!({"type":"send","rid":i,"cid":format!("{user}-{i}"),"conv":conv,"body":{"i":i}}))
                    .await
                    .expect("send");
            }
            let mut seqs = HashMap::new();
            for i in 0..EACH {
                let sent = client.expect(move |f| f["type"] == "sent" && f["rid"] == i, WAIT).await.expect("sent");
                seqs.insert(format!("{user}-{i}"), sent["seq"].as_u64().expect("seq"));
            }
            seqs
        }));
    }
    let mut by_cid = HashMap::new();
    for t in tasks {
        by_cid.extend(t.await.expect("task"));
    }
    let mut seqs: Vec<u64> = by_cid.values().copied().collect();
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (1..=2 * EACH).collect::<Vec<_>>(),
        "no gaps, no duplicates"
    );
    // per-sender order is send order
    for user in ["alice", "bob"] {
        let mine: Vec<u64> = (0..EACH).map(|i| by_cid[&format!("{user}-{i}")]).collect();
        assert!(
            mine.windows(2).all(|w| w[0] < w[1]),
            "{user}'s messages keep their order"
        );
    }
    // both watchers receive the identical sequence, in order
    for watcher in [&mut watcher_a, &mut watcher_b] {
        let mut got = Vec::new();
        while got.len() < usize::try_from(2 * EACH).expect("fits") {
            let f = watcher
                .expect(|f| f["type"] == "msg", WAIT)
                .await
                .expect("msg");
            got.push((
                f["seq"].as_u64().expect("seq"),
                f["cid"].as_str().expect("cid").to_string(),
            ));
        }
        let expected: Vec<(u64, String)> = {
            let mut v: Vec<(u64, String)> = by_cid.iter().map(|(c, s)| (*s, c.clone())).collect();
            v.sort();
            v
        };
        assert_eq!(got, expected);
    }
}

#[tokio::test]
async fn sync_after_before_and_limit() {
    let node = TestNode::start_with("[chat]\ndm_requires_friendship = false");
    let mut alice = node.login("alice", "phone").await;
    let conv = dm("alice", "bob");
    for i in 1..=12 {
        send_text(&mut alice, &conv, &format!("c{i}"), &format!("m{i}")).await;
    }
    let seqs = |reply: &Value| -> Vec<u64> {
        reply["msgs"]
            .as_array()
            .expect("msgs")
            .iter()
            .map(|m| m["seq"].as_u64().expect("seq"))
            .collect()
    };
    let all = alice
        .call(json!({"type":"sync","conv":conv}))
        .await
        .expect("sync");
    assert_eq!(all["type"], "msgs");
    assert_eq!(all["last_seq"], 12);
    assert_eq!(seqs(&all), (1..=12).collect::<Vec<_>>());
    let after = alice
        .call(json!({"type":"sync","conv":conv,"after":5,"limit":3}))
        .await
        .expect("sync");
    assert_eq!(seqs(&after), vec![6, 7, 8]);
    let before = alice
        .call(json!({"type":"sync","conv":conv,"before":10,"limit":4}))
        .await
        .expect("sync");
    assert_eq!(seqs(&before), vec![6, 7, 8, 9]);
    let huge = alice
        .call(json!({"type":"sync","conv":conv,"limit":1_000_000}))
        .await
        .expect("sync");
    assert_eq!(seqs(&huge).len(), 12);
    let past_end = alice
        .call(json!({"type":"sync","conv":conv,"after":12}))
        .await
        .expect("sync");
    assert_eq!(seqs(&past_end), Vec::<u64>::new());
    assert_eq!(past_end["last_seq"], 12);
}

#[tokio::test]
async fn offline_catch_up_through_convs_and_sync() {
    let node = TestNode::start_with("[chat]\ndm_requires_friendship = false");
    let mut alice = node.login("alice", "phone").await;
    let conv_b = dm("alice", "bob");
    let conv_c = dm("alice", "carol");
    for i in 1..=3 {
        send_text(&mut alice, &conv_b, &format!("b{i}"), "to bob").await;
    }
    send_text(&mut alice, &conv_c, "c1", "to carol").await;
    // bob was offline: nothing is pushed later; he finds everything through convs + sync
    let mut bob = node.login("bob", "phone").await;
    bob.expect_none(|f| f["type"] == "msg", Duration::from_millis(300))
        .await
        .expect("no push after the fact");
    let convs = bob.call(json!({"type":"convs"})).await.expect("convs");
    assert_eq!(convs["convs"].as_array().expect("list").len(), 1);
    let entry = &convs["convs"][0];
    assert_eq!(entry["conv"], conv_b.as_str());
    assert_eq!(entry["last_seq"], 3);
    assert_eq!(entry["read_seq"], 0);
    assert_eq!(entry["unread"], 3);
    assert_eq!(entry["last"]["seq"], 3);
    let msgs = bob
        .call(json!({"type":"sync","conv":conv_b,"after":0}))
        .await
        .expect("sync");
    assert_eq!(msgs["msgs"].as_array().expect("msgs").len(), 3);
    bob.send(&json!({"type":"read","conv":conv_b,"seq":3}))
        .await
        .expect("read");
    let convs = bob.call(json!({"type":"convs"})).await.expect("convs");
    assert_eq!(convs["convs"][0]["unread"], 0);
    // alice: most recent activity first; her own sends count as read
    let convs = alice.call(json!({"type":"convs"})).await.expect("convs");
    let order: Vec<&str> = convs["convs"]
        .as_array()
        .expect("list")
        .iter()
        .map(|c| c["conv"].as_str().expect("conv"))
        .collect();
    assert_eq!(order, vec![conv_c.as_str(), conv_b.as_str()]);
    assert_eq!(convs["convs"][0]["unread"], 0);
}

#[tokio::test]
async fn read_positions_receipts_and_read_events() {
    let node = TestNode::start_with("[chat]\ndm_requires_friendship = false");
    let mut alice = node.login("alice", "phone").await;
    let mut bob = node.login("bob", "phone").await;
    let mut bob_laptop = node.login("bob", "laptop").await;
    let conv = dm("alice", "bob");
    for i in 1..=3 {
        send_text(&mut alice, &conv, &format!("c{i}"), "x").await;
    }
    let receipts = alice
        .call(json!({"type":"receipts","conv":conv,"seq":2}))
        .await
        .expect("receipts");
    assert_eq!(receipts["read"], json!([]));
    assert_eq!(receipts["unread"], json!(["bob"]));

    bob.send(&json!({"type":"read","conv":conv,"seq":2}))
        .await
        .expect("read");
    let event = alice
        .expect_type("read", WAIT)
        .await
        .expect("peer gets read");
    assert_eq!(event, json!({"type":"read","conv":conv,"seq":2,"by":"bob"}));
    let own = bob_laptop
        .expect_type("read", WAIT)
        .await
        .expect("other device gets read");
    assert_eq!(own["by"], "bob");
    bob.expect_none(|f| f["type"] == "read", Duration::from_millis(200))
        .await
        .expect("not the reading device");

    let receipts = alice
        .call(json!({"type":"receipts","conv":conv,"seq":2}))
        .await
        .expect("receipts");
    assert_eq!(receipts["read"], json!(["bob"]));
    let counts = alice
        .call(json!({"type":"receipts","conv":conv,"seq":3,"counts":true}))
        .await
        .expect("counts");
    assert_eq!(
        (counts["read_count"].clone(), counts["unread_count"].clone()),
        (json!(0), json!(1))
    );
    assert!(counts.get("read").is_none());

    // a read position never moves back
    bob.send(&json!({"type":"read","conv":conv,"seq":1}))
        .await
        .expect("read");
    alice
        .expect_none(|f| f["type"] == "read", Duration::from_millis(300))
        .await
        .expect("no event for going back");
    let receipts = alice
        .call(json!({"type":"receipts","conv":conv,"seq":2}))
        .await
        .expect("receipts");
    assert_eq!(receipts["read"], json!(["bob"]));
    let missing = alice
        .request(json!({"type":"receipts","conv":conv,"seq":99}))
        .await
        .expect("reply");
    assert_eq!(missing["code"], "not_found");
}

#[tokio::test]
async fn unacknowledged_pushes_are_pushed_again() {
    let node = TestNode::start_with("[chat]\ndm_requires_friendship = false\nack_timeout_ms = 300");
    let mut alice = node.login("alice", "phone").await;
    let mut bob = node.login("bob", "phone").await;
    let conv = dm("alice", "bob");
    send_text(&mut alice, &conv, "c1", "x").await;
    send_text(&mut alice, &conv, "c2", "y").await;
    bob.expect(is_msg(&conv, 1), WAIT)
        .await
        .expect("first push");
    bob.expect(is_msg(&conv, 2), WAIT)
        .await
        .expect("first push");
    bob.send(&json!({"type":"ack","conv":conv,"seq":1}))
        .await
        .expect("ack 1 only");
    let again = bob
        .expect(is_msg(&conv, 2), WAIT)
        .await
        .expect("seq 2 pushed again");
    assert_eq!(again["cid"], "c2");
    bob.expect_none(is_msg(&conv, 1), Duration::from_millis(700))
        .await
        .expect("acked seq 1 is not pushed again");
    bob.send(&json!({"type":"ack","conv":conv,"seq":2}))
        .await
        .expect("ack 2");
    // forget re-pushes that were already on their way when the ack left, then expect silence
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = bob.expect_none(|_| false, Duration::from_millis(100)).await;
    bob.buffered().clear();
    bob.expect_none(|f| f["type"] == "msg", Duration::from_millis(800))
        .await
        .expect("nothing after the ack");
}

#[tokio::test]
async fn typing_and_recall() {
    let node = TestNode::start_with("[chat]\ndm_requires_friendship = false\nrecall_window_s = 2");
    let mut alice = node.login("alice", "phone").await;
    let mut alice2 = node.login("alice", "laptop").await;
    let mut bob = node.login("bob", "phone").await;
    let conv = dm("alice", "bob");

    alice
        .send(&json!({"type":"typing","conv":conv}))
        .await
        .expect("typing");
    assert_eq!(
        bob.expect_type("typing", WAIT).await.expect("typing"),
        json!({"type":"typing","conv":conv,"user":"alice"})
    );
    alice2
        .expect_none(|f| f["type"] == "typing", Duration::from_millis(200))
        .await
        .expect("only other members");

    send_text(&mut alice, &conv, "c1", "oops").await;
    send_text(&mut alice, &conv, "c2", "old").await;
    let by_bob = bob
        .request(json!({"type":"recall","conv":conv,"seq":1}))
        .await
        .expect("reply");
    assert_eq!(by_bob["code"], "forbidden", "only the sender recalls");
    let ok = alice
        .call(json!({"type":"recall","conv":conv,"seq":1}))
        .await
        .expect("recall");
    assert_eq!(ok["type"], "ok");
    let recalled = bob
        .expect_type("recalled", WAIT)
        .await
        .expect("recalled pushed");
    assert_eq!(
        recalled,
        json!({"type":"recalled","conv":conv,"seq":1,"by":"alice"})
    );
    alice2
        .expect_type("recalled", WAIT)
        .await
        .expect("to the sender's other devices too");
    let msgs = bob
        .call(json!({"type":"sync","conv":conv}))
        .await
        .expect("sync");
    assert_eq!(msgs["msgs"][0]["recalled"], true);
    assert!(msgs["msgs"][0].get("body").is_none());
    assert_eq!(msgs["msgs"][1]["body"]["text"], "old");

    tokio::time::sleep(Duration::from_millis(2100)).await;
    let late = alice
        .request(json!({"type":"recall","conv":conv,"seq":2}))
        .await
        .expect("reply");
    assert_eq!(late["code"], "forbidden", "past the recall window");
}

#[tokio::test]
async fn idle_actors_stop_and_come_back_with_their_state() {
    let node = TestNode::start_with("[chat]\ndm_requires_friendship = false\n[actors]\nidle_s = 1");
    let conv = dm("alice", "bob");
    {
        let mut alice = node.login("alice", "phone").await;
        send_text(&mut alice, &conv, "c1", "x").await;
        alice.close().await;
    }
    let gauge = |text: &str, kind: &str| -> i64 {
        let prefix = format!("rookery_actors{{kind=\"{kind}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|v| v.parse().ok())
            .expect("gauge")
    };
    let mut stopped = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (_, metrics) = http_get(&node.url("/metrics")).await;
        if gauge(&metrics, "user") == 0 && gauge(&metrics, "conversation") == 0 {
            stopped = true;
            break;
        }
    }
    assert!(stopped, "idle user and conversation actors stop");
    let mut alice = node.login("alice", "phone").await;
    let next = send_text(&mut alice, &conv, "c2", "y").await;
    assert_eq!(next["seq"], 2, "the sequence continues from the store");
    let again = send_text(&mut alice, &conv, "c1", "x").await;
    assert_eq!(again["seq"], 1, "dedupe survives the actor's restart");
}

#[tokio::test]
async fn a_device_that_stops_acknowledging_gets_notify_and_pulls() {
    let node = TestNode::start_with(
        "[chat]\ndm_requires_friendship = false\n[limits]\nsends_per_s = 5000",
    );
    let conv = dm("alice", "bob");
    let mut alice = node.login("alice", "phone").await;
    let mut bob = node.login("bob", "phone").await;
    const N: u64 = 600;
    // in batches under the 256 requests a connection may have in flight
    for batch in 0..N / 200 {
        for i in batch * 200..(batch + 1) * 200 {
            alice
                .send(&json!({"type":"send","rid":format!("r{i}"),"cid":format!("c{i}"),"conv":conv,"body":{"i":i}}))
                .await
                .expect("send");
        }
        for i in batch * 200..(batch + 1) * 200 {
            let reply = alice
                .expect(move |f| f["rid"] == format!("r{i}").as_str(), WAIT)
                .await
                .expect("reply");
            assert_eq!(reply["type"], "sent", "{reply}");
        }
    }
    // bob reads but never acknowledges: after 512 unacknowledged pushes the rest become a notify
    let notify = bob.expect_type("notify", WAIT).await.expect("notify");
    assert_eq!(notify["conv"], conv.as_str());
    assert!(notify["last_seq"].as_u64().expect("last_seq") > 512);
    let pushed = bob.buffered().iter().filter(|f| f["type"] == "msg").count();
    assert_eq!(pushed, 512, "pushes stopped at the limit");
    // the device pulls what it missed
    let all = bob
        .call(json!({"type":"sync","conv":conv,"after":512,"limit":1000}))
        .await
        .expect("sync");
    assert_eq!(
        all["msgs"].as_array().expect("msgs").len(),
        usize::try_from(N - 512).expect("fits")
    );
    assert_eq!(all["last_seq"], N);
}
