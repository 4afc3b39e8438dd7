//! PROTOCOL.md "Groups": create, add, remove, leave, info, owner rules, system messages, removed members
//! refused, small-group pushes, large-group `notify`, group read receipts, unread counts, limits, restart.

mod common;

use std::time::Duration;

use common::*;
use rookery::client::Client;
use serde_json::{json, Value};

async fn create(owner: &mut Client, conv: &str, members: &[&str]) -> Value {
    owner
        .call(json!({"type":"group_create","conv":conv,"name":"Team","members":members}))
        .await
        .expect("created")
}

fn system(conv: &str, seq: u64, event: &str) -> impl Fn(&Value) -> bool {
    let (conv, event) = (conv.to_string(), event.to_string());
    move |f: &Value| {
        f["type"] == "msg"
            && f["conv"] == conv.as_str()
            && f["seq"] == seq
            && f["system"]["event"] == event.as_str()
    }
}

#[tokio::test]
async fn create_info_and_the_created_message() {
    let node = TestNode::start();
    let mut alice = node.login("alice", "phone").await;
    let mut alice_laptop = node.login("alice", "laptop").await;
    let mut bob = node.login("bob", "phone").await;
    let group = create(&mut alice, "g:team", &["bob", "carol", "bob"]).await;
    assert_eq!(group["type"], "group");
    assert_eq!(
        (
            group["conv"].clone(),
            group["owner"].clone(),
            group["count"].clone()
        ),
        (json!("g:team"), json!("alice"), json!(3))
    );
    assert!(group.get("members").is_none());
    for client in [&mut bob, &mut alice_laptop] {
        let created = client
            .expect(system("g:team", 1, "created"), WAIT)
            .await
            .expect("created pushed");
        assert_eq!(created["from"], "alice");
        assert_eq!(
            created["system"]["members"],
            json!(["alice", "bob", "carol"]),
            "owner first"
        );
        assert!(created.get("body").is_none());
    }
    alice
        .expect_none(|f| f["type"] == "msg", Duration::from_millis(200))
        .await
        .expect("not to the creating device");
    let info = bob
        .call(json!({"type":"group_info","conv":"g:team","members":true}))
        .await
        .expect("info");
    assert_eq!(info["members"], json!(["alice", "bob", "carol"]));
    assert_eq!(info["name"], "Team");
    let again = bob
        .request(json!({"type":"group_create","conv":"g:team","name":"X","members":[]}))
        .await
        .expect("reply");
    assert_eq!(again["code"], "conflict");
    let bad = alice
        .request(json!({"type":"group_create","conv":"g:empty","name":"","members":[]}))
        .await
        .expect("reply");
    assert_eq!(bad["code"], "bad_request");
    let dm = alice
        .request(json!({"type":"group_create","conv":"dm:alice:bob","name":"X","members":[]}))
        .await
        .expect("reply");
    assert_eq!(dm["code"], "bad_request");
    let missing = alice
        .request(json!({"type":"group_info","conv":"g:nope"}))
        .await
        .expect("reply");
    assert_eq!(missing["code"], "not_found");
}

#[tokio::test]
async fn small_groups_push_to_every_device_in_order() {
    let node = TestNode::start();
    let mut alice = node.login("alice", "phone").await;
    let mut alice2 = node.login("alice", "laptop").await;
    let mut bob = node.login("bob", "phone").await;
    let mut bob2 = node.login("bob", "tablet").await;
    let mut eve = node.login("eve", "phone").await;
    create(&mut alice, "g:team", &["bob"]).await;
    for i in 2..=11u64 {
        let sent = send_text(&mut alice, "g:team", &format!("c{i}"), "hi").await;
        assert_eq!(sent["seq"], i);
    }
    for client in [&mut alice2, &mut bob, &mut bob2] {
        for seq in 2..=11 {
            client
                .expect(is_msg("g:team", seq), WAIT)
                .await
                .expect("every device, in order");
        }
    }
    let e = eve
        .request(json!({"type":"send","cid":"x","conv":"g:team","body":{}}))
        .await
        .expect("reply");
    assert_eq!(e["code"], "forbidden");
    let e = eve
        .request(json!({"type":"sync","conv":"g:team"}))
        .await
        .expect("reply");
    assert_eq!(e["code"], "forbidden");
    let all = bob
        .call(json!({"type":"sync","conv":"g:team"}))
        .await
        .expect("sync");
    assert_eq!(
        all["msgs"].as_array().expect("msgs").len(),
        11,
        "members sync the whole history"
    );
}

/// A group of more than 512 members reaches this node's sessions through the workers' lanes
/// (`actors::lane`): every device still gets every message once, in order.
#[tokio::test]
async fn big_groups_in_push_mode_deliver_in_order_through_the_lanes() {
    let node = TestNode::start_with("[chat]\npush_max_members = 2000");
    let mut alice = node.login("alice", "phone").await;
    let mut devices = vec![
        ("alice laptop", node.login("alice", "laptop").await),
        ("bob phone", node.login("bob", "phone").await),
        ("bob tablet", node.login("bob", "tablet").await),
        ("carol phone", node.login("carol", "phone").await),
    ];
    let mut names: Vec<String> = vec!["bob".into(), "carol".into()];
    names.extend((0..997).map(|i| format!("m{i}")));
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let created = create(&mut alice, "g:big", &names).await;
    assert_eq!(created["count"], 1000, "{created}");
    for i in 0..40 {
        let frame = json!({"type":"send","rid":format!("r{i}"),"cid":format!("c{i}"),"conv":"g:big","body":{"i":i}});
        alice.send(&frame).await.expect("send");
    }
    alice
        .expect(|f| f["rid"] == "r39", WAIT)
        .await
        .expect("all sent");
    for (name, client) in &mut devices {
        let mut seqs = Vec::new();
        while seqs.last() != Some(&41) {
            let f = client
                .expect(|f| f["type"] == "msg" && f["conv"] == "g:big", WAIT)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e} after {seqs:?}"));
            let seq = f["seq"].as_u64().expect("seq");
            seqs.push(seq);
            client
                .send(&json!({"type":"ack","conv":"g:big","seq":seq}))
                .await
                .expect("ack");
        }
        assert_eq!(
            seqs,
            (1..=41).collect::<Vec<u64>>(),
            "{name}: each once, in order"
        );
    }
}

#[tokio::test]
async fn owner_rules_and_membership_changes() {
    let node = TestNode::start();
    let mut alice = node.login("alice", "phone").await;
    let mut bob = node.login("bob", "phone").await;
    let mut carol = node.login("carol", "phone").await;
    create(&mut alice, "g:team", &["bob"]).await;
    let e = bob
        .request(json!({"type":"group_add","conv":"g:team","members":["carol"]}))
        .await
        .expect("reply");
    assert_eq!(e["code"], "forbidden", "only the owner adds");
    let added = alice
        .call(json!({"type":"group_add","conv":"g:team","members":["carol","bob"]}))
        .await
        .expect("add");
    assert_eq!(
        (added["type"].clone(), added["count"].clone()),
        (json!("group"), json!(3))
    );
    let m = bob
        .expect(system("g:team", 2, "members_added"), WAIT)
        .await
        .expect("system message");
    assert_eq!(
        m["system"]["members"],
        json!(["carol"]),
        "only the new ones"
    );
    carol
        .expect(system("g:team", 2, "members_added"), WAIT)
        .await
        .expect("the new member too");
    let history = carol
        .call(json!({"type":"sync","conv":"g:team"}))
        .await
        .expect("new members sync history");
    assert_eq!(history["last_seq"], 2);

    let e = carol
        .request(json!({"type":"group_remove","conv":"g:team","members":["bob"]}))
        .await
        .expect("reply");
    assert_eq!(e["code"], "forbidden", "only the owner removes");
    let removed = alice
        .call(json!({"type":"group_remove","conv":"g:team","members":["bob"]}))
        .await
        .expect("remove");
    assert_eq!(removed["count"], 2);
    let m = bob
        .expect(system("g:team", 3, "members_removed"), WAIT)
        .await
        .expect("the removed member learns it");
    assert_eq!(m["system"]["members"], json!(["bob"]));
    for frame in [
        json!({"type":"sync","conv":"g:team"}),
        json!({"type":"send","cid":"z","conv":"g:team","body":{}}),
    ] {
        let e = bob.request(frame).await.expect("reply");
        assert_eq!(e["code"], "forbidden", "a removed member is refused");
    }
    let convs = bob.call(json!({"type":"convs"})).await.expect("convs");
    assert_eq!(convs["convs"], json!([]), "no longer listed");

    let ok = carol
        .call(json!({"type":"group_leave","conv":"g:team"}))
        .await
        .expect("leave");
    assert_eq!(ok["type"], "ok");
    let left = alice
        .expect(system("g:team", 4, "member_left"), WAIT)
        .await
        .expect("member_left");
    assert_eq!(left["from"], "carol");
    let e = alice
        .request(json!({"type":"group_leave","conv":"g:team"}))
        .await
        .expect("reply");
    assert_eq!(e["code"], "forbidden", "the owner cannot leave");
    let e = alice
        .request(json!({"type":"group_remove","conv":"g:team","members":["alice"]}))
        .await
        .expect("reply");
    assert_eq!(e["code"], "bad_request");
    let info = alice
        .call(json!({"type":"group_info","conv":"g:team","members":true}))
        .await
        .expect("info");
    assert_eq!(info["members"], json!(["alice"]));
}

#[tokio::test]
async fn member_limits() {
    let node = TestNode::start_with("[chat]\nmax_group_members = 4");
    let mut alice = node.login("alice", "phone").await;
    let e = alice
        .request(
            json!({"type":"group_create","conv":"g:big","name":"Big","members":["b","c","d","e"]}),
        )
        .await
        .expect("reply");
    assert_eq!(e["code"], "limit", "5 with the owner");
    create(&mut alice, "g:team", &["b", "c"]).await;
    let e = alice
        .request(json!({"type":"group_add","conv":"g:team","members":["d","e"]}))
        .await
        .expect("reply");
    assert_eq!(e["code"], "limit");
    let info = alice
        .call(json!({"type":"group_info","conv":"g:team"}))
        .await
        .expect("info");
    assert_eq!(info["count"], 3, "nothing was added");
    let many: Vec<String> = (0..1001).map(|i| format!("u{i}")).collect();
    let e = alice
        .request(json!({"type":"group_add","conv":"g:team","members":many}))
        .await
        .expect("reply");
    assert_eq!(e["code"], "limit", "at most 1000 a frame");
}

#[tokio::test]
async fn large_groups_get_coalesced_notify_and_pull() {
    let node = TestNode::start_with("[chat]\npush_max_members = 3\nnotify_window_ms = 200");
    let mut alice = node.login("alice", "phone").await;
    let mut members = Vec::new();
    for name in ["bob", "carol", "dave", "erin"] {
        members.push((name, node.login(name, "phone").await));
    }
    create(&mut alice, "g:big", &["bob", "carol", "dave", "erin"]).await;
    let started = std::time::Instant::now();
    for i in 0..50 {
        alice.send(&json!({"type":"send","rid":format!("r{i}"),"cid":format!("c{i}"),"conv":"g:big","body":{"i":i}})).await.expect("send");
    }
    alice
        .expect(|f| f["rid"] == "r49", WAIT)
        .await
        .expect("all sent");
    let burst = started.elapsed();
    for (name, client) in &mut members {
        // the notify that covers the whole burst comes at most one window after the last message
        let last = client
            .expect(|f| f["type"] == "notify" && f["last_seq"] == 51, WAIT)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut frames: Vec<Value> = client.buffered().drain(..).collect();
        frames.push(last);
        let notifies: Vec<&Value> = frames.iter().filter(|f| f["type"] == "notify").collect();
        assert!(
            frames.iter().all(|f| f["type"] != "msg"),
            "{name}: no msg in a large group"
        );
        let allowed = usize::try_from(burst.as_millis() / 200).expect("fits") + 3;
        assert!(
            !notifies.is_empty() && notifies.len() <= allowed,
            "{name}: {} notifies for 50 messages",
            notifies.len()
        );
        assert_eq!(
            notifies.last().expect("one")["last_seq"],
            51,
            "{name}: the last notify covers everything"
        );
        let all = client
            .call(json!({"type":"sync","conv":"g:big","after":1}))
            .await
            .expect("pull");
        assert_eq!(
            all["msgs"].as_array().expect("msgs").len(),
            50,
            "{name}: sync returns all 50"
        );
    }
    // typing is not fanned out above push_max_members
    alice
        .send(&json!({"type":"typing","conv":"g:big"}))
        .await
        .expect("typing");
    members[0]
        .1
        .expect_none(|f| f["type"] == "typing", Duration::from_millis(300))
        .await
        .expect("no typing");
}

#[tokio::test]
async fn group_read_receipts_small_and_large() {
    let node = TestNode::start_with("[chat]\nreceipt_push_max_members = 3");
    let mut alice = node.login("alice", "phone").await;
    let mut bob = node.login("bob", "phone").await;
    let mut bob2 = node.login("bob", "laptop").await;
    let mut carol = node.login("carol", "phone").await;
    create(&mut alice, "g:small", &["bob", "carol"]).await;
    send_text(&mut alice, "g:small", "s1", "x").await;
    bob.send(&json!({"type":"read","conv":"g:small","seq":2}))
        .await
        .expect("read");
    assert_eq!(
        carol.expect_type("read", WAIT).await.expect("pushed")["by"],
        "bob",
        "3 members: read events pushed"
    );
    bob2.expect_type("read", WAIT)
        .await
        .expect("own other device");
    let r = alice
        .call(json!({"type":"receipts","conv":"g:small","seq":2}))
        .await
        .expect("receipts");
    assert_eq!(
        (r["read"].clone(), r["unread"].clone()),
        (json!(["bob"]), json!(["carol"]))
    );
    let c = alice
        .call(json!({"type":"receipts","conv":"g:small","seq":2,"counts":true}))
        .await
        .expect("counts");
    assert_eq!(
        (c["read_count"].clone(), c["unread_count"].clone()),
        (json!(1), json!(1))
    );

    create(&mut alice, "g:large", &["bob", "carol", "dave"]).await;
    send_text(&mut alice, "g:large", "l1", "x").await;
    bob.send(&json!({"type":"read","conv":"g:large","seq":2}))
        .await
        .expect("read");
    bob2.expect(|f| f["type"] == "read" && f["conv"] == "g:large", WAIT)
        .await
        .expect("own devices always");
    carol
        .expect_none(
            |f| f["type"] == "read" && f["conv"] == "g:large",
            Duration::from_millis(300),
        )
        .await
        .expect("4 members: no push");
    let r = alice
        .call(json!({"type":"receipts","conv":"g:large","seq":2}))
        .await
        .expect("receipts");
    assert_eq!(
        (r["read"].clone(), r["unread"].clone()),
        (json!(["bob"]), json!(["carol", "dave"]))
    );
    let c = alice
        .call(json!({"type":"receipts","conv":"g:large","seq":2,"counts":true}))
        .await
        .expect("counts");
    assert_eq!(
        (c["read_count"].clone(), c["unread_count"].clone()),
        (json!(1), json!(2))
    );
}

#[tokio::test]
async fn unread_counts_in_convs() {
    let node = TestNode::start();
    let mut alice = node.login("alice", "phone").await;
    create(&mut alice, "g:team", &["bob"]).await;
    for i in 0..4 {
        send_text(&mut alice, "g:team", &format!("c{i}"), "x").await;
    }
    let mut bob = node.login("bob", "phone").await;
    let convs = bob.call(json!({"type":"convs"})).await.expect("convs");
    let entry = &convs["convs"][0];
    assert_eq!(
        (
            entry["conv"].clone(),
            entry["last_seq"].clone(),
            entry["unread"].clone()
        ),
        (json!("g:team"), json!(5), json!(5))
    );
    bob.send(&json!({"type":"read","conv":"g:team","seq":3}))
        .await
        .expect("read");
    let convs = bob.call(json!({"type":"convs"})).await.expect("convs");
    assert_eq!(convs["convs"][0]["unread"], 2);
    let convs = alice.call(json!({"type":"convs"})).await.expect("convs");
    assert_eq!(
        convs["convs"][0]["unread"], 0,
        "the owner's own messages count as read"
    );
}

#[tokio::test]
async fn groups_survive_a_restart() {
    let mut node = TestNode::start();
    {
        let mut alice = node.login("alice", "phone").await;
        let mut bob = node.login("bob", "phone").await;
        create(&mut alice, "g:team", &["bob", "carol"]).await;
        send_text(&mut alice, "g:team", "c1", "x").await;
        alice
            .call(json!({"type":"group_remove","conv":"g:team","members":["carol"]}))
            .await
            .expect("remove");
        bob.send(&json!({"type":"read","conv":"g:team","seq":2}))
            .await
            .expect("read");
        // `read` has no reply: wait until the group shows it before restarting
        let mut applied = false;
        for _ in 0..50 {
            let r = alice
                .call(json!({"type":"receipts","conv":"g:team","seq":2}))
                .await
                .expect("receipts");
            if r["read"] == json!(["bob"]) {
                applied = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(applied, "the read was applied");
    }
    node.restart();
    let mut alice = node.login("alice", "phone").await;
    let info = alice
        .call(json!({"type":"group_info","conv":"g:team","members":true}))
        .await
        .expect("info");
    assert_eq!(
        (info["owner"].clone(), info["members"].clone()),
        (json!("alice"), json!(["alice", "bob"]))
    );
    let r = alice
        .call(json!({"type":"receipts","conv":"g:team","seq":2}))
        .await
        .expect("receipts");
    assert_eq!(r["read"], json!(["bob"]));
    let next = send_text(&mut alice, "g:team", "c2", "y").await;
    assert_eq!(next["seq"], 4, "the sequence continues");
    let mut carol = node.login("carol", "phone").await;
    let e = carol
        .request(json!({"type":"sync","conv":"g:team"}))
        .await
        .expect("reply");
    assert_eq!(e["code"], "forbidden");
}

/// With replication a member's conversation index takes a new group when its entry is applied, which can
/// come after the member has the group's first message: a `convs` asked at once lists the group (a user
/// actor whose list was not loaded yet used to load it then, without the group still in flight, and keep
/// it for as long as the user stayed connected).
#[tokio::test]
async fn a_new_group_is_in_convs_as_soon_as_its_first_message_arrives_with_replication() {
    let cluster = Cluster::start(2, "").await;
    let alice_name = cluster.user_on(0, "alice");
    let mut alice = cluster.login(1, &alice_name, "phone").await;
    for i in 0..20 {
        // a member whose user actor has not loaded its list yet, each time
        let member = cluster.user_on(i % 2, &format!("m{i}x"));
        let mut client = cluster.login(1 - i % 2, &member, "phone").await;
        let conv = format!("g:fresh{i}");
        // the creator's answer waits for the indexes; the member's push does not
        alice
            .send(&json!({"type":"group_create","conv":conv,"name":"Team","members":[member]}))
            .await
            .expect("group_create");
        client
            .expect(system(&conv, 1, "created"), WAIT)
            .await
            .expect("created pushed");
        for _ in 0..2 {
            let listed = client.call(json!({"type":"convs"})).await.expect("convs");
            assert_eq!(listed["convs"][0]["conv"], conv.as_str(), "{listed}");
        }
    }
}
