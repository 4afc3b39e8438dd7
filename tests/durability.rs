//! Crash tests against the real `rookery` binary: SIGKILL right after the last `sent`, restart on the same
//! data directory, and check every promise (PROTOCOL.md "Send": `sent` with durability "sync" survives kill -9).
//! Also the command line: SIGTERM exits 0 after flushing, `rookery token`, config errors.

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use common::*;
use rookery::client::Client;
use serde_json::json;

#[tokio::test]
async fn kill_9_right_after_the_last_sent_loses_nothing_acknowledged() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = write_node_config(
        tmp.path(),
        "[chat]\ndm_requires_friendship = false\n[store]\ndurability = \"sync\"",
    );
    let mut node = NodeProcess::start(&config);
    let conv = dm("alice", "bob");

    // two senders pipeline 200 messages each; 200 more each are in flight when the node dies
    let mut acked: HashMap<String, (u64, u64)> = HashMap::new();
    let mut clients = Vec::new();
    for user in ["alice", "bob"] {
        let (mut c, _) = Client::login(node.addr, &token(user), "phone")
            .await
            .expect("login");
        for i in 0..200 {
            c.send(&json!({"type":"send","rid":format!("{user}{i}"),"cid":format!("{user}-{i}"),"conv":conv,"body":{"i":i}}))
                .await
                .expect("send");
        }
        clients.push((user, c));
    }
    for (user, c) in clients.iter_mut() {
        for i in 0..200 {
            let rid = format!("{user}{i}");
            let sent = c
                .expect(move |f| f["rid"] == rid.as_str(), Duration::from_secs(20))
                .await
                .expect("sent");
            assert_eq!(sent["type"], "sent", "{sent}");
            acked.insert(
                format!("{user}-{i}"),
                (
                    sent["seq"].as_u64().expect("seq"),
                    sent["ts"].as_u64().expect("ts"),
                ),
            );
        }
    }
    for (user, c) in clients.iter_mut() {
        for i in 200..400 {
            let _ = c
                .send(
                    &json!({"type":"send","cid":format!("{user}-{i}"),"conv":conv,"body":{"i":i}}),
                )
                .await;
        }
    }
    node.kill9();
    drop(clients);

    let node = NodeProcess::start(&config);
    let (mut bob, _) = Client::login(node.addr, &token("bob"), "phone")
        .await
        .expect("login after restart");
    let mut stored = Vec::new();
    loop {
        let after = stored.len();
        let page = bob
            .call(json!({"type":"sync","conv":conv,"after":after,"limit":1000}))
            .await
            .expect("sync");
        let msgs = page["msgs"].as_array().expect("msgs").clone();
        if msgs.is_empty() {
            break;
        }
        stored.extend(msgs);
    }
    assert_gapless(&stored);
    let by_cid: HashMap<String, (u64, u64)> = stored
        .iter()
        .map(|m| {
            (
                m["cid"].as_str().expect("cid").to_string(),
                (
                    m["seq"].as_u64().expect("seq"),
                    m["ts"].as_u64().expect("ts"),
                ),
            )
        })
        .collect();
    assert_eq!(by_cid.len(), stored.len(), "no cid stored twice");
    for (cid, at) in &acked {
        assert_eq!(
            by_cid.get(cid),
            Some(at),
            "acknowledged message {cid} survives with its seq and ts"
        );
    }
    // dedupe survives the crash: a retried cid gets its first `sent` again
    let retry = bob
        .call(json!({"type":"send","cid":"bob-7","conv":conv,"body":{"i":7}}))
        .await
        .expect("retry");
    assert_eq!(
        (retry["seq"].as_u64(), retry["ts"].as_u64()),
        (Some(acked["bob-7"].0), Some(acked["bob-7"].1))
    );
    // the conversation index survived too
    let convs = bob.call(json!({"type":"convs"})).await.expect("convs");
    assert_eq!(convs["convs"][0]["conv"], conv.as_str());
    assert_eq!(convs["convs"][0]["last_seq"], stored.len() as u64);
}

#[tokio::test]
async fn read_positions_and_sequences_survive_kill_9() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = write_node_config(tmp.path(), "[chat]\ndm_requires_friendship = false");
    let mut node = NodeProcess::start(&config);
    let conv = dm("alice", "bob");
    {
        let (mut alice, _) = Client::login(node.addr, &token("alice"), "phone")
            .await
            .expect("login");
        let (mut bob, _) = Client::login(node.addr, &token("bob"), "phone")
            .await
            .expect("login");
        for i in 1..=5 {
            send_text(&mut alice, &conv, &format!("c{i}"), "x").await;
        }
        bob.send(&json!({"type":"read","conv":conv,"seq":3}))
            .await
            .expect("read");
        alice.expect_type("read", WAIT).await.expect("read event");
        // a request after the read is answered only after the read was handled; a flush covers it
        send_text(&mut bob, &conv, "b1", "reply").await;
    }
    node.kill9();
    let node = NodeProcess::start(&config);
    let (mut bob, _) = Client::login(node.addr, &token("bob"), "phone")
        .await
        .expect("login");
    let convs = bob.call(json!({"type":"convs"})).await.expect("convs");
    assert_eq!(convs["convs"][0]["last_seq"], 6);
    assert_eq!(
        convs["convs"][0]["read_seq"], 6,
        "bob's own send moved his read position"
    );
    let (mut alice, _) = Client::login(node.addr, &token("alice"), "phone")
        .await
        .expect("login");
    let receipts = alice
        .call(json!({"type":"receipts","conv":conv,"seq":3}))
        .await
        .expect("receipts");
    assert_eq!(receipts["read"], json!(["bob"]));
    let next = send_text(&mut alice, &conv, "c6", "after the crash").await;
    assert_eq!(next["seq"], 7);
}

#[tokio::test]
async fn sigterm_flushes_and_exits_zero() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = write_node_config(
        tmp.path(),
        "[chat]\ndm_requires_friendship = false\n[store]\ndurability = \"os\"",
    );
    let mut node = NodeProcess::start(&config);
    let conv = dm("alice", "bob");
    {
        let (mut alice, _) = Client::login(node.addr, &token("alice"), "phone")
            .await
            .expect("login");
        for i in 1..=20 {
            send_text(&mut alice, &conv, &format!("c{i}"), "x").await;
        }
    }
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(node.child.id().to_string())
        .status()
        .expect("kill");
    assert!(status.success());
    let mut exited = None;
    for _ in 0..100 {
        if let Some(s) = node.child.try_wait().expect("wait") {
            exited = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        exited.map(|s| s.code()),
        Some(Some(0)),
        "SIGTERM ends the node with status 0"
    );
    assert!(
        tmp.path().join("data/n1").is_dir(),
        "data_dir is relative to the config file"
    );
    let node = NodeProcess::start(&config);
    let (mut alice, _) = Client::login(node.addr, &token("alice"), "phone")
        .await
        .expect("login");
    let msgs = alice
        .call(json!({"type":"sync","conv":conv}))
        .await
        .expect("sync");
    assert_eq!(msgs["msgs"].as_array().expect("msgs").len(), 20);
}

#[test]
fn token_subcommand_prints_only_the_token() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = write_node_config(tmp.path(), "");
    let line = token_line(&["alice", "--ttl", "60"], &config);
    let user = rookery::net::auth::verify(SECRET, 2_592_000, &line).expect("valid token");
    assert_eq!(user.as_str(), "alice");
    let bad = Command::new(env!("CARGO_BIN_EXE_rookery"))
        .args(["token", "not valid"])
        .arg("--config")
        .arg(&config)
        .output()
        .expect("run");
    assert!(!bad.status.success());
}

/// Issue 13, finding 4: `rookery token --ttl` obeys `auth.max_token_ttl_s` too, with a clear error.
#[test]
fn token_subcommand_refuses_a_ttl_over_the_maximum() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = write_node_config(tmp.path(), "");
    for ttl in ["18446744073709551615", "2592001"] {
        let out = Command::new(env!("CARGO_BIN_EXE_rookery"))
            .args(["token", "alice", "--ttl", ttl, "--config"])
            .arg(&config)
            .output()
            .expect("run");
        assert!(!out.status.success(), "--ttl {ttl} accepted");
        assert!(out.stdout.is_empty(), "no token printed");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("max_token_ttl_s"), "{stderr}");
    }
}

#[test]
fn config_errors_name_the_key_and_stop_startup() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("bad.toml");
    std::fs::write(&path, "[chat]\nheartbeat_secs = 5\n[[nodes]]\nid='n1'\nlisten='127.0.0.1:1'\npeer='127.0.0.1:2'\ndata_dir='d'\n")
        .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_rookery"))
        .arg("--config")
        .arg(&path)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("heartbeat_secs"), "{stderr}");
    let missing = Command::new(env!("CARGO_BIN_EXE_rookery"))
        .args(["--config", "/nonexistent/cluster.toml"])
        .output()
        .expect("run");
    assert!(!missing.status.success());
}

/// A crash between claiming a `cid` and writing its message leaves a dedupe entry with no message. Such an
/// entry (and one pointing at another message) must never answer a retry: the retry is stored as new.
#[tokio::test]
async fn dedupe_entries_without_their_message_are_not_trusted() {
    let mut node = TestNode::start_with("[chat]\ndm_requires_friendship = false");
    let conv_text = dm("alice", "bob");
    {
        let mut alice = node.login("alice", "phone").await;
        send_text(&mut alice, &conv_text, "c1", "real").await;
    }
    node.shutdown();
    {
        let hist = prometheus::Histogram::with_opts(prometheus::HistogramOpts::new("t", "t"))
            .expect("hist");
        let store =
            rookery::store::Store::open(&node.dir, &rookery::config::StoreConfig::default(), hist)
                .expect("open");
        let conv = rookery::ids::ConvId::parse(&conv_text).expect("conv");
        let alice = rookery::ids::UserId::parse("alice").expect("user");
        store
            .set_cid(&conv, &alice, "ghost", 2, 1)
            .expect("dangling entry");
        store
            .set_cid(&conv, &alice, "impostor", 1, 1)
            .expect("entry pointing at another message");
        store.close().expect("close");
    }
    node.restart();
    let mut alice = node.login("alice", "phone").await;
    let ghost = send_text(&mut alice, &conv_text, "ghost", "retry after crash").await;
    assert_eq!(ghost["seq"], 2, "stored as new");
    let impostor = send_text(&mut alice, &conv_text, "impostor", "another").await;
    assert_eq!(impostor["seq"], 3, "not answered with message 1");
    let again = send_text(&mut alice, &conv_text, "ghost", "retry again").await;
    assert_eq!(
        (again["seq"].clone(), again["ts"].clone()),
        (ghost["seq"].clone(), ghost["ts"].clone())
    );
    let msgs = alice
        .call(json!({"type":"sync","conv":conv_text}))
        .await
        .expect("sync");
    let cids: Vec<&str> = msgs["msgs"]
        .as_array()
        .expect("msgs")
        .iter()
        .map(|m| m["cid"].as_str().expect("cid"))
        .collect();
    assert_eq!(cids, vec!["c1", "ghost", "impostor"]);
}
