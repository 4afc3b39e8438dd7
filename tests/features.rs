//! PROTOCOL.md "Replies, mentions, edits, reactions" and "Conversation settings and blocks", against a real
//! node and real WebSocket clients: every frame and its errors, mentions in a notify-mode group, mention
//! counts in `convs`, the edit window, reactions (idempotent, the limit of 20, counts after a restart),
//! pinned ordering, blocks and their reversal, and kill -9 right after the last `ok`.

mod common;

use std::time::Duration;

use common::*;
use rookery::client::{Client, ClientError};
use serde_json::{json, Value};

const QUIET: Duration = Duration::from_millis(300);

/// The `code` of a refused call.
async fn refused(c: &mut Client, frame: Value) -> String {
    match c.call(frame.clone()).await {
        Err(ClientError::Refused(reply)) => reply["code"].as_str().unwrap_or("?").to_string(),
        other => panic!("{frame} was not refused: {other:?}"),
    }
}

async fn ok(c: &mut Client, frame: Value) {
    let reply = c
        .call(frame.clone())
        .await
        .unwrap_or_else(|e| panic!("{frame}: {e:?}"));
    assert_eq!(reply["type"], "ok", "{frame} -> {reply}");
}

async fn group(owner: &mut Client, conv: &str, members: &[&str]) {
    owner
        .call(json!({"type":"group_create","conv":conv,"name":"Team","members":members}))
        .await
        .expect("group created");
}

async fn sync_all(c: &mut Client, conv: &str) -> Vec<Value> {
    let reply = c
        .call(json!({"type":"sync","conv":conv,"after":0,"limit":1000}))
        .await
        .expect("sync");
    reply["msgs"].as_array().expect("msgs").clone()
}

async fn convs(c: &mut Client) -> Vec<Value> {
    let reply = c.call(json!({"type":"convs"})).await.expect("convs");
    reply["convs"].as_array().expect("convs").clone()
}

fn entry<'a>(list: &'a [Value], conv: &str) -> &'a Value {
    list.iter()
        .find(|e| e["conv"] == conv)
        .unwrap_or_else(|| panic!("{conv} not in {list:?}"))
}

fn of_type(kind: &'static str) -> impl Fn(&Value) -> bool {
    move |f: &Value| f["type"] == kind
}

#[tokio::test]
async fn replies_and_mentions_are_stored_as_sent_and_checked() {
    let node = TestNode::start();
    let mut alice = node.login("alice", "phone").await;
    let mut bob = node.login("bob", "phone").await;
    group(&mut alice, "g:team", &["bob", "carol"]).await;
    send_text(&mut alice, "g:team", "a1", "first").await;

    let send = |cid: &str, extra: Value| {
        let mut f = json!({"type":"send","cid":cid,"conv":"g:team","body":{"text":cid}});
        for (k, v) in extra.as_object().expect("object") {
            f[k] = v.clone();
        }
        f
    };
    // replies to an earlier message only; mentions of members only, at most 100; `*` by the owner only
    for (extra, code) in [
        (json!({"reply_to":0}), "bad_request"),
        (json!({"reply_to":3}), "bad_request"),
        (json!({"reply_to":"2"}), "bad_request"),
        (json!({"mentions":["dave"]}), "bad_request"),
        (json!({"mentions":["bad id"]}), "bad_request"),
        (json!({"mentions":vec!["carol"; 101]}), "bad_request"),
        (json!({"mentions":["*"]}), "forbidden"),
    ] {
        assert_eq!(
            refused(&mut bob, send("b1", extra.clone())).await,
            code,
            "{extra}"
        );
    }
    let sent = bob
        .call(send(
            "b1",
            json!({"reply_to":2,"mentions":["alice","carol"]}),
        ))
        .await
        .expect("reply");
    assert_eq!(sent["seq"], 3);
    let pushed = alice.expect(is_msg("g:team", 3), WAIT).await.expect("msg");
    assert_eq!(pushed["reply_to"], 2);
    assert_eq!(pushed["mentions"], json!(["alice", "carol"]));
    alice
        .call(send("a2", json!({"mentions":["*"]})))
        .await
        .expect("the owner mentions everyone");
    let msgs = sync_all(&mut bob, "g:team").await;
    assert_eq!(msgs[2]["reply_to"], 2);
    assert_eq!(msgs[2]["mentions"], json!(["alice", "carol"]));
    assert_eq!(msgs[3]["mentions"], json!(["*"]));
    assert!(msgs[1].get("reply_to").is_none() && msgs[1].get("mentions").is_none());

    // in a direct conversation either member may mention everyone
    let node2 = TestNode::start_with("[chat]\ndm_requires_friendship = false");
    let mut carol = node2.login("carol", "phone").await;
    let reply = carol
        .call(json!({"type":"send","cid":"c1","conv":dm("carol","dave"),"body":{"text":"hi"},"mentions":["*","dave"]}))
        .await
        .expect("dm mention");
    assert_eq!(reply["type"], "sent");
}

#[tokio::test]
async fn a_mentioned_member_of_a_notify_mode_group_gets_msg_and_the_others_notify() {
    let node = TestNode::start_with("[chat]\npush_max_members = 2\nnotify_window_ms = 50");
    let mut alice = node.login("alice", "phone").await;
    let mut bob = node.login("bob", "phone").await;
    let mut carol = node.login("carol", "phone").await;
    group(&mut alice, "g:big", &["bob", "carol", "dave"]).await;
    // drain what creating the group caused
    tokio::time::sleep(QUIET).await;
    bob.buffered().clear();
    carol.buffered().clear();
    let _ = bob.expect_none(|_| true, Duration::from_millis(100)).await;
    let _ = carol
        .expect_none(|_| true, Duration::from_millis(100))
        .await;

    let sent = alice
        .call(json!({"type":"send","cid":"m1","conv":"g:big","body":{"text":"@bob"},"mentions":["bob"]}))
        .await
        .expect("sent");
    let seq = sent["seq"].as_u64().expect("seq");
    let msg = bob
        .expect(is_msg("g:big", seq), WAIT)
        .await
        .expect("bob gets msg");
    assert_eq!(msg["mentions"], json!(["bob"]));
    carol
        .expect(|f| f["type"] == "notify" && f["conv"] == "g:big", WAIT)
        .await
        .expect("carol gets notify");
    carol
        .expect_none(of_type("msg"), QUIET)
        .await
        .expect("carol gets no msg");
    // everyone, by the owner: every online member gets the message
    let sent = alice
        .call(json!({"type":"send","cid":"m2","conv":"g:big","body":{"text":"@all"},"mentions":["*"]}))
        .await
        .expect("sent");
    let seq = sent["seq"].as_u64().expect("seq");
    bob.expect(is_msg("g:big", seq), WAIT).await.expect("bob");
    carol
        .expect(is_msg("g:big", seq), WAIT)
        .await
        .expect("carol");
    alice
        .expect_none(is_msg("g:big", seq), QUIET)
        .await
        .expect("not the sending device");
    // a message without mentions: notify only
    let sent = send_text(&mut alice, "g:big", "m3", "plain").await;
    let seq = sent["seq"].as_u64().expect("seq");
    bob.expect_none(is_msg("g:big", seq), QUIET)
        .await
        .expect("no msg without a mention");
}

#[tokio::test]
async fn convs_count_unread_mentions_until_they_are_read() {
    let node = TestNode::start_with("[chat]\npush_max_members = 2");
    let mut alice = node.login("alice", "phone").await;
    group(&mut alice, "g:big", &["bob", "carol"]).await;
    let mut last = 0;
    for (cid, mentions) in [
        ("m1", json!(["bob"])),
        ("m2", json!([])),
        ("m3", json!(["*"])),
        ("m4", json!(["carol"])),
        ("m5", json!(["bob", "*"])),
    ] {
        let sent = alice
            .call(json!({"type":"send","cid":cid,"conv":"g:big","body":{"text":cid},"mentions":mentions}))
            .await
            .expect("sent");
        last = sent["seq"].as_u64().expect("seq");
    }
    let mut bob = node.login("bob", "phone").await;
    let list = convs(&mut bob).await;
    let e = entry(&list, "g:big");
    assert_eq!(e["mentions"], 3, "{e}");
    assert_eq!(e["muted_until"], 0);
    assert_eq!(e["pinned"], false);
    let mut carol = node.login("carol", "phone").await;
    assert_eq!(entry(&convs(&mut carol).await, "g:big")["mentions"], 3);
    assert_eq!(
        entry(&convs(&mut alice).await, "g:big")["mentions"],
        0,
        "the sender has read their own"
    );
    // reading up to m3 (seq 4) leaves m5
    bob.send(&json!({"type":"read","conv":"g:big","seq":4}))
        .await
        .expect("read");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let e = entry(&convs(&mut bob).await, "g:big").clone();
        if e["read_seq"] == 4 {
            assert_eq!(e["mentions"], 1, "{e}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "read not applied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bob.send(&json!({"type":"read","conv":"g:big","seq":last}))
        .await
        .expect("read");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let e = entry(&convs(&mut bob).await, "g:big").clone();
        if e["read_seq"] == last {
            assert_eq!(e["mentions"], 0, "{e}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "read not applied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // a recalled mention no longer counts
    let sent = alice
        .call(json!({"type":"send","cid":"m6","conv":"g:big","body":{"text":"x"},"mentions":["carol"]}))
        .await
        .expect("sent");
    let seq = sent["seq"].as_u64().expect("seq");
    assert_eq!(entry(&convs(&mut carol).await, "g:big")["mentions"], 4);
    ok(
        &mut alice,
        json!({"type":"recall","conv":"g:big","seq":seq}),
    )
    .await;
    assert_eq!(entry(&convs(&mut carol).await, "g:big")["mentions"], 3);
}

#[tokio::test]
async fn edits_by_the_sender_reach_members_and_later_syncs() {
    let node = TestNode::start_with(
        "[chat]\ndm_requires_friendship = false\n[limits]\nmax_body_bytes = 100",
    );
    let conv = dm("alice", "bob");
    let mut alice = node.login("alice", "phone").await;
    let mut alice_laptop = node.login("alice", "laptop").await;
    let mut bob = node.login("bob", "phone").await;
    send_text(&mut alice, &conv, "a1", "helo").await;
    send_text(&mut bob, &conv, "b1", "hi").await;

    ok(
        &mut alice,
        json!({"type":"edit","conv":conv,"seq":1,"body":{"text":"hello"}}),
    )
    .await;
    let edited = bob.expect(of_type("edited"), WAIT).await.expect("edited");
    assert_eq!(
        (
            &edited["conv"],
            &edited["seq"],
            &edited["by"],
            &edited["body"]
        ),
        (
            &json!(conv),
            &json!(1),
            &json!("alice"),
            &json!({"text":"hello"})
        )
    );
    let at = edited["edited"].as_u64().expect("edited ts");
    alice_laptop
        .expect(of_type("edited"), WAIT)
        .await
        .expect("the editor's other devices");
    alice
        .expect_none(of_type("edited"), QUIET)
        .await
        .expect("not the editing device");
    let msgs = sync_all(&mut bob, &conv).await;
    assert_gapless(&msgs);
    assert_eq!(msgs[0]["body"], json!({"text":"hello"}));
    assert_eq!(msgs[0]["edited"], at);
    assert!(at >= msgs[0]["ts"].as_u64().expect("ts"));
    assert!(msgs[1].get("edited").is_none());

    let edit = |seq: u64, body: Value| json!({"type":"edit","conv":conv,"seq":seq,"body":body});
    assert_eq!(
        refused(&mut bob, edit(1, json!({"text":"mine"}))).await,
        "forbidden"
    );
    assert_eq!(
        refused(&mut alice, edit(9, json!({"text":"x"}))).await,
        "not_found"
    );
    assert_eq!(
        refused(&mut alice, edit(1, json!({"text":"x".repeat(200)}))).await,
        "too_large"
    );
    assert_eq!(
        refused(&mut alice, edit(1, json!("text"))).await,
        "bad_request"
    );
    let mut carol = node.login("carol", "phone").await;
    assert_eq!(
        refused(&mut carol, edit(1, json!({"text":"x"}))).await,
        "forbidden"
    );
    ok(&mut alice, json!({"type":"recall","conv":conv,"seq":1})).await;
    assert_eq!(
        refused(&mut alice, edit(1, json!({"text":"again"}))).await,
        "forbidden"
    );
    let msgs = sync_all(&mut bob, &conv).await;
    assert!(msgs[0].get("body").is_none() && msgs[0].get("edited").is_none());
    // system messages cannot be edited
    group(&mut alice, "g:team", &["bob"]).await;
    assert_eq!(
        refused(
            &mut alice,
            json!({"type":"edit","conv":"g:team","seq":1,"body":{"t":1}})
        )
        .await,
        "forbidden"
    );
    assert_eq!(
        refused(
            &mut alice,
            json!({"type":"edit","conv":"g:nope","seq":1,"body":{"t":1}})
        )
        .await,
        "not_found"
    );
}

#[tokio::test]
async fn an_edit_after_the_window_is_forbidden() {
    let node = TestNode::start_with("[chat]\ndm_requires_friendship = false\nedit_window_s = 1");
    let conv = dm("alice", "bob");
    let mut alice = node.login("alice", "phone").await;
    send_text(&mut alice, &conv, "a1", "one").await;
    send_text(&mut alice, &conv, "a2", "two").await;
    ok(
        &mut alice,
        json!({"type":"edit","conv":conv,"seq":2,"body":{"text":"2"}}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(
        refused(
            &mut alice,
            json!({"type":"edit","conv":conv,"seq":1,"body":{"text":"1"}})
        )
        .await,
        "forbidden"
    );
    assert_eq!(
        refused(
            &mut alice,
            json!({"type":"edit","conv":conv,"seq":2,"body":{"text":"again"}})
        )
        .await,
        "forbidden",
        "the window runs from the message, not the last edit"
    );
}

#[tokio::test]
async fn reactions_count_repeat_nothing_hold_20_and_survive_a_restart() {
    let mut node = TestNode::start_with("[chat]\ndm_requires_friendship = false");
    let conv = dm("alice", "bob");
    {
        let mut alice = node.login("alice", "phone").await;
        let mut bob = node.login("bob", "phone").await;
        send_text(&mut alice, &conv, "a1", "hi").await;
        send_text(&mut alice, &conv, "a2", "there").await;
        let react = |emoji: &str, on: bool| json!({"type":"react","conv":conv,"seq":1,"emoji":emoji,"on":on});
        ok(&mut bob, react("👍", true)).await;
        let pushed = alice
            .expect(of_type("reaction"), WAIT)
            .await
            .expect("reaction");
        assert_eq!(
            pushed,
            json!({"type":"reaction","conv":conv,"seq":1,"user":"bob","emoji":"👍","on":true})
        );
        ok(&mut bob, react("👍", true)).await;
        alice
            .expect_none(of_type("reaction"), QUIET)
            .await
            .expect("a repeat changes nothing");
        ok(&mut alice, react("👍", true)).await;
        ok(&mut alice, react("🎉", true)).await;
        ok(&mut alice, react("🎉", false)).await;
        ok(&mut alice, react("🎉", false)).await;
        let msgs = sync_all(&mut bob, &conv).await;
        assert_eq!(msgs[0]["reactions"], json!({"👍":2}));
        assert!(msgs[1].get("reactions").is_none(), "absent when none");
        let reactors = bob
            .call(json!({"type":"reactors","conv":conv,"seq":1,"emoji":"👍"}))
            .await
            .expect("reactors");
        let rid = reactors["rid"].clone();
        assert_eq!(
            reactors,
            json!({"type":"reactors","rid":rid,"conv":conv,"seq":1,"emoji":"👍","users":["alice","bob"]})
        );
        let none = bob
            .call(json!({"type":"reactors","conv":conv,"seq":1,"emoji":"🎉"}))
            .await
            .expect("reactors");
        assert_eq!(none["users"], json!([]));
        // 20 different emoji per user and message
        for i in 1..20 {
            ok(&mut bob, react(&format!("e{i}"), true)).await;
        }
        assert_eq!(refused(&mut bob, react("e20", true)).await, "limit");
        ok(&mut bob, react("e19", false)).await;
        ok(&mut bob, react("e20", true)).await;
        // errors
        assert_eq!(refused(&mut bob, react("", true)).await, "bad_request");
        assert_eq!(
            refused(&mut bob, react(&"x".repeat(33), true)).await,
            "bad_request"
        );
        assert_eq!(
            refused(
                &mut bob,
                json!({"type":"react","conv":conv,"seq":9,"emoji":"x","on":true})
            )
            .await,
            "not_found"
        );
        let mut carol = node.login("carol", "phone").await;
        assert_eq!(refused(&mut carol, react("x", true)).await, "forbidden");
        assert_eq!(
            refused(
                &mut carol,
                json!({"type":"reactors","conv":conv,"seq":1,"emoji":"x"})
            )
            .await,
            "forbidden"
        );
        ok(&mut alice, json!({"type":"recall","conv":conv,"seq":2})).await;
        assert_eq!(
            refused(
                &mut bob,
                json!({"type":"react","conv":conv,"seq":2,"emoji":"x","on":true})
            )
            .await,
            "forbidden"
        );
    }
    node.restart();
    let mut bob = node.login("bob", "phone").await;
    let msgs = sync_all(&mut bob, &conv).await;
    let counts = msgs[0]["reactions"].as_object().expect("reactions").clone();
    assert_eq!(counts["👍"], 2);
    assert_eq!(counts.len(), 20, "👍, e1..e18 and e20: {counts:?}");
    let reactors = bob
        .call(json!({"type":"reactors","conv":conv,"seq":1,"emoji":"👍"}))
        .await
        .expect("reactors");
    assert_eq!(reactors["users"], json!(["alice", "bob"]));
    assert_eq!(
        refused(
            &mut bob,
            json!({"type":"react","conv":conv,"seq":1,"emoji":"e21","on":true})
        )
        .await,
        "limit",
        "the limit holds after a restart"
    );
}

#[tokio::test]
async fn reactions_in_groups_are_pushed_only_up_to_receipt_push_max_members() {
    let node = TestNode::start_with("[chat]\nreceipt_push_max_members = 2");
    let mut alice = node.login("alice", "phone").await;
    let mut bob = node.login("bob", "phone").await;
    group(&mut alice, "g:small", &["bob"]).await;
    group(&mut alice, "g:large", &["bob", "carol"]).await;
    for conv in ["g:small", "g:large"] {
        send_text(&mut alice, conv, "a1", "hi").await;
        ok(
            &mut bob,
            json!({"type":"react","conv":conv,"seq":2,"emoji":"ok","on":true}),
        )
        .await;
    }
    alice
        .expect(|f| f["type"] == "reaction" && f["conv"] == "g:small", WAIT)
        .await
        .expect("small group: pushed");
    alice
        .expect_none(|f| f["type"] == "reaction" && f["conv"] == "g:large", QUIET)
        .await
        .expect("large group: not pushed");
    // but counted and listed, also through the group's pull view
    let msgs = sync_all(&mut alice, "g:large").await;
    assert_eq!(msgs[1]["reactions"], json!({"ok":1}));
    let page = alice
        .call(json!({"type":"sync","conv":"g:large","after":1}))
        .await
        .expect("sync");
    assert_eq!(page["msgs"][0]["reactions"], json!({"ok":1}));
    // an edit keeps the counts, in the pull view and in the store
    ok(
        &mut alice,
        json!({"type":"edit","conv":"g:large","seq":2,"body":{"text":"edited"}}),
    )
    .await;
    let page = bob
        .call(json!({"type":"sync","conv":"g:large","after":1}))
        .await
        .expect("sync");
    assert_eq!(page["msgs"][0]["body"], json!({"text":"edited"}));
    assert_eq!(page["msgs"][0]["reactions"], json!({"ok":1}));
    let page = bob
        .call(json!({"type":"sync","conv":"g:large","before":3}))
        .await
        .expect("sync");
    assert_eq!(page["msgs"][1]["body"], json!({"text":"edited"}));
    assert_eq!(page["msgs"][1]["reactions"], json!({"ok":1}));
    assert_eq!(
        entry(&convs(&mut bob).await, "g:large")["last"]["body"],
        json!({"text":"edited"}),
        "convs shows the edited last message"
    );
}

#[tokio::test]
async fn conv_settings_mute_and_pin_and_order_convs() {
    let mut node = TestNode::start_with("[chat]\ndm_requires_friendship = false");
    {
        let mut alice = node.login("alice", "phone").await;
        let mut alice_laptop = node.login("alice", "laptop").await;
        for (i, other) in ["bob", "carol", "dave"].iter().enumerate() {
            send_text(&mut alice, &dm("alice", other), &format!("c{i}"), "hi").await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let order = |list: &[Value]| -> Vec<String> {
            list.iter()
                .map(|e| e["conv"].as_str().expect("conv").to_string())
                .collect()
        };
        let (ab, ac, ad) = (
            dm("alice", "bob"),
            dm("alice", "carol"),
            dm("alice", "dave"),
        );
        assert_eq!(
            order(&convs(&mut alice).await),
            vec![ad.clone(), ac.clone(), ab.clone()]
        );

        ok(
            &mut alice,
            json!({"type":"conv_settings","conv":ab,"pinned":true}),
        )
        .await;
        let pushed = alice_laptop
            .expect(of_type("conv_settings"), WAIT)
            .await
            .expect("pushed to the other device");
        assert_eq!(
            pushed,
            json!({"type":"conv_settings","conv":ab,"muted_until":0,"pinned":true})
        );
        alice
            .expect_none(of_type("conv_settings"), QUIET)
            .await
            .expect("not to the device that set it");
        assert_eq!(
            order(&convs(&mut alice).await),
            vec![ab.clone(), ad.clone(), ac.clone()]
        );
        ok(
            &mut alice,
            json!({"type":"conv_settings","conv":ac,"pinned":true}),
        )
        .await;
        assert_eq!(
            order(&convs(&mut alice).await),
            vec![ac.clone(), ab.clone(), ad.clone()],
            "pinned first, each part most recent first"
        );
        // new activity reorders within the pinned part
        send_text(&mut alice, &ab, "c9", "again").await;
        assert_eq!(
            order(&convs(&mut alice).await),
            vec![ab.clone(), ac.clone(), ad.clone()]
        );

        let until = rookery::actors::now_ms() + 3_600_000;
        ok(
            &mut alice,
            json!({"type":"conv_settings","conv":ad,"muted_until":until}),
        )
        .await;
        let list = convs(&mut alice).await;
        assert_eq!(entry(&list, &ad)["muted_until"], until);
        assert_eq!(entry(&list, &ad)["pinned"], false);
        assert_eq!(entry(&list, &ab)["muted_until"], 0);
        let pushed = alice_laptop
            .expect(
                |f| f["type"] == "conv_settings" && f["conv"] == ad.as_str(),
                WAIT,
            )
            .await
            .expect("pushed");
        assert_eq!(pushed["muted_until"], until);
        // a mute that has run out shows as 0
        ok(
            &mut alice,
            json!({"type":"conv_settings","conv":ac,"muted_until":1000}),
        )
        .await;
        assert_eq!(entry(&convs(&mut alice).await, &ac)["muted_until"], 0);
        // the settings are the user's own: bob sees none of them
        let mut bob = node.login("bob", "phone").await;
        assert_eq!(entry(&convs(&mut bob).await, &ab)["pinned"], false);
        // errors
        let mut carol = node.login("carol", "phone").await;
        group(&mut carol, "g:team", &["dave"]).await;
        assert_eq!(
            refused(
                &mut alice,
                json!({"type":"conv_settings","conv":"g:team","pinned":true})
            )
            .await,
            "forbidden"
        );
        assert_eq!(
            refused(
                &mut alice,
                json!({"type":"conv_settings","conv":"g:nope","pinned":true})
            )
            .await,
            "not_found"
        );
        assert_eq!(
            refused(
                &mut alice,
                json!({"type":"conv_settings","conv":ab,"pinned":"yes"})
            )
            .await,
            "bad_request"
        );
    }
    node.restart();
    let mut alice = node.login("alice", "phone").await;
    let list = convs(&mut alice).await;
    assert_eq!(list[0]["conv"], dm("alice", "bob"));
    assert_eq!(list[0]["pinned"], true);
    assert_eq!(list[1]["pinned"], true);
    assert!(list[2]["muted_until"].as_u64().expect("muted_until") > 0);
    // unmute and unpin
    let ad = dm("alice", "dave");
    let ab = dm("alice", "bob");
    ok(
        &mut alice,
        json!({"type":"conv_settings","conv":ad,"muted_until":0}),
    )
    .await;
    ok(
        &mut alice,
        json!({"type":"conv_settings","conv":ab,"pinned":false}),
    )
    .await;
    let list = convs(&mut alice).await;
    assert_eq!(entry(&list, &ad)["muted_until"], 0);
    assert_eq!(entry(&list, &ab)["pinned"], false);
}

#[tokio::test]
async fn blocks_silence_messages_requests_typing_and_presence_until_lifted() {
    let node = TestNode::start();
    let conv = dm("alice", "bob");
    let mut alice = node.login("alice", "phone").await;
    let mut bob = node.login("bob", "phone").await;
    befriend(&mut alice, "alice", &mut bob, "bob").await;
    group(&mut alice, "g:team", &["bob"]).await;

    ok(&mut alice, json!({"type":"block","user":"bob","on":true})).await;
    ok(&mut alice, json!({"type":"block","user":"bob","on":true})).await;
    let friends = alice
        .call(json!({"type":"friends"}))
        .await
        .expect("friends");
    assert_eq!(friends["blocked"], json!(["bob"]));
    assert_eq!(
        friends["friends"],
        json!(["bob"]),
        "a block is not an unfriending"
    );
    let bobs = bob.call(json!({"type":"friends"})).await.expect("friends");
    assert_eq!(bobs["blocked"], json!([]));

    // messages: bob's are refused, alice's still go
    assert_eq!(
        refused(
            &mut bob,
            json!({"type":"send","cid":"b1","conv":conv,"body":{"text":"hi"}})
        )
        .await,
        "forbidden"
    );
    let sent = send_text(&mut alice, &conv, "a1", "I may").await;
    let seq = sent["seq"].as_u64().expect("seq");
    assert_eq!(
        refused(
            &mut bob,
            json!({"type":"react","conv":conv,"seq":seq,"emoji":"x","on":true})
        )
        .await,
        "forbidden",
        "nor react in the pair"
    );
    // typing and presence from bob do not reach alice
    bob.send(&json!({"type":"typing","conv":conv}))
        .await
        .expect("typing");
    alice
        .expect_none(of_type("typing"), QUIET)
        .await
        .expect("no typing from a blocked user");
    let bob_laptop = node.login("bob", "laptop").await;
    drop(bob_laptop);
    bob.close().await;
    alice
        .expect_none(of_type("presence"), Duration::from_millis(500))
        .await
        .expect("no presence from a blocked user");
    let mut bob = node.login("bob", "phone").await;
    alice
        .expect_none(of_type("presence"), QUIET)
        .await
        .expect("no presence from a blocked user");
    // groups are not affected
    let sent = send_text(&mut bob, "g:team", "g1", "in the group").await;
    alice
        .expect(is_msg("g:team", sent["seq"].as_u64().expect("seq")), WAIT)
        .await
        .expect("group message");
    // friend requests: `ok`, neither delivered nor listed
    ok(&mut alice, json!({"type":"friend_remove","user":"bob"})).await;
    bob.expect(of_type("friend"), WAIT).await.expect("removed");
    ok(
        &mut bob,
        json!({"type":"friend_request","user":"alice","note":"please"}),
    )
    .await;
    alice
        .expect_none(of_type("friend_request"), QUIET)
        .await
        .expect("not delivered");
    let friends = alice
        .call(json!({"type":"friends"}))
        .await
        .expect("friends");
    assert_eq!(friends["incoming"], json!([]));
    assert_eq!(friends["friends"], json!([]));
    assert_eq!(
        refused(&mut alice, json!({"type":"block","user":"alice","on":true})).await,
        "bad_request"
    );
    assert_eq!(
        refused(
            &mut alice,
            json!({"type":"block","user":"no body","on":true})
        )
        .await,
        "bad_request"
    );

    // lifted: everything flows again
    ok(&mut alice, json!({"type":"block","user":"bob","on":false})).await;
    let friends = alice
        .call(json!({"type":"friends"}))
        .await
        .expect("friends");
    assert_eq!(friends["blocked"], json!([]));
    ok(
        &mut bob,
        json!({"type":"friend_request","user":"alice","note":"again"}),
    )
    .await;
    alice
        .expect(
            |f| f["type"] == "friend_request" && f["from"] == "bob",
            WAIT,
        )
        .await
        .expect("delivered");
    ok(&mut alice, json!({"type":"friend_accept","user":"bob"})).await;
    send_text(&mut bob, &conv, "b2", "thanks").await;
    bob.send(&json!({"type":"typing","conv":conv}))
        .await
        .expect("typing");
    alice
        .expect(|f| f["type"] == "typing" && f["user"] == "bob", WAIT)
        .await
        .expect("typing again");
    bob.close().await;
    alice
        .expect(|f| f["type"] == "presence" && f["user"] == "bob", WAIT)
        .await
        .expect("presence again");
}

#[tokio::test]
async fn kill_9_right_after_the_last_ok_loses_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = write_node_config(
        tmp.path(),
        "[chat]\ndm_requires_friendship = false\n[store]\ndurability = \"sync\"",
    );
    let mut node = NodeProcess::start(&config);
    let conv = dm("alice", "bob");
    {
        let (mut alice, _) = Client::login(node.addr, &token("alice"), "phone")
            .await
            .expect("login");
        let (mut bob, _) = Client::login(node.addr, &token("bob"), "phone")
            .await
            .expect("login");
        for i in 0..5 {
            send_text(&mut alice, &conv, &format!("a{i}"), "hi").await;
        }
        ok(
            &mut alice,
            json!({"type":"edit","conv":conv,"seq":2,"body":{"text":"edited"}}),
        )
        .await;
        for i in 1..=5 {
            ok(
                &mut bob,
                json!({"type":"react","conv":conv,"seq":i,"emoji":"👍","on":true}),
            )
            .await;
        }
        ok(
            &mut alice,
            json!({"type":"react","conv":conv,"seq":5,"emoji":"👍","on":true}),
        )
        .await;
        ok(
            &mut bob,
            json!({"type":"conv_settings","conv":conv,"pinned":true,"muted_until":u64::MAX / 2}),
        )
        .await;
        ok(&mut alice, json!({"type":"block","user":"bob","on":true})).await;
    }
    node.kill9();

    let node = NodeProcess::start(&config);
    let (mut bob, _) = Client::login(node.addr, &token("bob"), "phone")
        .await
        .expect("login after restart");
    let msgs = sync_all(&mut bob, &conv).await;
    assert_gapless(&msgs);
    assert_eq!(msgs.len(), 5);
    assert_eq!(msgs[1]["body"], json!({"text":"edited"}));
    assert!(msgs[1]["edited"].as_u64().is_some());
    for m in &msgs[..4] {
        assert_eq!(m["reactions"], json!({"👍":1}), "{m}");
    }
    assert_eq!(msgs[4]["reactions"], json!({"👍":2}));
    let list = convs(&mut bob).await;
    assert_eq!(list[0]["pinned"], true);
    assert_eq!(list[0]["muted_until"], u64::MAX / 2);
    assert_eq!(
        refused(
            &mut bob,
            json!({"type":"send","cid":"b1","conv":conv,"body":{"text":"hi"}})
        )
        .await,
        "forbidden",
        "the block survived"
    );
    let (mut alice, _) = Client::login(node.addr, &token("alice"), "phone")
        .await
        .expect("login");
    let friends = alice
        .call(json!({"type":"friends"}))
        .await
        .expect("friends");
    assert_eq!(friends["blocked"], json!(["bob"]));
}

#[tokio::test]
async fn the_features_work_across_nodes() {
    let cluster = Cluster::start(2, "[chat]\ndm_requires_friendship = false").await;
    // alice's and bob's actors and sessions on different nodes; the pair's conversation on one of them
    let alice_name = cluster.user_on(0, "alice");
    let bob_name = cluster.user_on(1, "bob");
    let conv = dm(&alice_name, &bob_name);
    let mut alice = cluster.login(1, &alice_name, "phone").await;
    let mut alice_laptop = cluster.login(0, &alice_name, "laptop").await;
    let mut bob = cluster.login(0, &bob_name, "phone").await;
    let sent = bob
        .call(json!({"type":"send","cid":"b1","conv":conv,"body":{"text":"hi"},"mentions":[alice_name]}))
        .await
        .expect("sent");
    let seq = sent["seq"].as_u64().expect("seq");
    assert_eq!(entry(&convs(&mut alice).await, &conv)["mentions"], 1);
    ok(
        &mut alice,
        json!({"type":"react","conv":conv,"seq":seq,"emoji":"ok","on":true}),
    )
    .await;
    bob.expect(of_type("reaction"), WAIT)
        .await
        .expect("reaction");
    let reactors = bob
        .call(json!({"type":"reactors","conv":conv,"seq":seq,"emoji":"ok"}))
        .await
        .expect("reactors");
    assert_eq!(reactors["users"], json!([alice_name]));
    ok(
        &mut bob,
        json!({"type":"edit","conv":conv,"seq":seq,"body":{"text":"hello"}}),
    )
    .await;
    alice.expect(of_type("edited"), WAIT).await.expect("edited");
    let msgs = sync_all(&mut alice, &conv).await;
    assert_eq!(msgs[0]["body"], json!({"text":"hello"}));
    assert_eq!(msgs[0]["reactions"], json!({"ok":1}));
    ok(
        &mut alice,
        json!({"type":"conv_settings","conv":conv,"pinned":true}),
    )
    .await;
    alice_laptop
        .expect(of_type("conv_settings"), WAIT)
        .await
        .expect("pushed across nodes");
    assert_eq!(
        entry(&convs(&mut alice_laptop).await, &conv)["pinned"],
        true
    );
    ok(
        &mut alice,
        json!({"type":"block","user":bob_name,"on":true}),
    )
    .await;
    assert_eq!(
        refused(
            &mut bob,
            json!({"type":"send","cid":"b2","conv":conv,"body":{"text":"x"}})
        )
        .await,
        "forbidden"
    );
    let friends = alice_laptop
        .call(json!({"type":"friends"}))
        .await
        .expect("friends");
    assert_eq!(friends["blocked"], json!([bob_name]));
}

/// With replication a change reaches the store only when its entry is applied: a group's pull view, which
/// serves recent messages from memory, renders a changed message once the change is applied, so pulls on
/// every node show a reaction, an edit and a recall as soon as their `ok` is answered (it used to render
/// the message as the store held it before the change, and kept that).
#[tokio::test]
async fn pulls_of_a_replicated_group_show_reactions_edits_and_recalls_once_answered() {
    let cluster = Cluster::start(2, "").await;
    let alice_name = cluster.user_on(0, "alice");
    let bob_name = cluster.user_on(1, "bob");
    let mut alice = cluster.login(1, &alice_name, "phone").await;
    let mut bob = cluster.login(0, &bob_name, "phone").await;
    let conv = "g:replicated";
    group(&mut alice, conv, &[&bob_name]).await;
    let first = send_text(&mut alice, conv, "a1", "first").await["seq"].clone();
    let second = send_text(&mut alice, conv, "a2", "second").await["seq"].clone();
    let react = |seq: &Value, emoji: &str| json!({"type":"react","conv":conv,"seq":seq,"emoji":emoji,"on":true});
    ok(&mut bob, react(&first, "👍")).await;
    ok(&mut alice, react(&first, "👍")).await;
    ok(&mut alice, react(&first, "🎉")).await;
    ok(
        &mut alice,
        json!({"type":"edit","conv":conv,"seq":second,"body":{"text":"edited"}}),
    )
    .await;
    let third = send_text(&mut alice, conv, "a3", "oops").await["seq"].clone();
    alice
        .call(json!({"type":"recall","conv":conv,"seq":third}))
        .await
        .expect("recall");
    for client in [&mut alice, &mut bob] {
        let msgs = sync_all(client, conv).await;
        let at = |seq: &Value| {
            msgs.iter()
                .find(|m| m["seq"] == *seq)
                .unwrap_or_else(|| panic!("{seq} not in {msgs:?}"))
                .clone()
        };
        assert_eq!(at(&first)["reactions"], json!({"👍":2,"🎉":1}));
        assert_eq!(at(&second)["body"], json!({"text":"edited"}));
        assert_eq!(at(&third)["recalled"], true, "{:?}", at(&third));
        assert!(at(&third).get("body").is_none(), "{:?}", at(&third));
    }
    // the last message as `convs` shows it is the recalled one
    let listed = convs(&mut bob).await;
    assert_eq!(entry(&listed, conv)["last"]["recalled"], true, "{listed:?}");
}
