//! Cluster: three real `rookery` processes from one config, clients on different nodes, a node killed with
//! SIGKILL and restarted, and a node with a different config refused.

mod common;

use std::io::Read;
use std::time::{Duration, Instant};

use common::*;
use rookery::client::{Client, ClientError};
use serde_json::json;

/// A direct conversation and a group whose members sit on different nodes: pushes, `convs`, `sync`, reads
/// and receipts cross the peer links; a second device on a third node gets the pushes too; a device that
/// connects again on another node kicks its old session there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversations_span_nodes() {
    let cluster = Cluster::start(3, "").await;
    // each user owned by a different node, each client on yet another one
    let alice = cluster.user_on(0, "alice");
    let bob = cluster.user_on(1, "bob");
    let carol = cluster.user_on(2, "carol");
    let mut a = cluster.login(1, &alice, "phone").await;
    let mut b = cluster.login(2, &bob, "phone").await;
    let mut c = cluster.login(0, &carol, "phone").await;
    let mut a2 = cluster.login(2, &alice, "laptop").await;

    befriend(&mut a, &alice, &mut b, &bob).await;
    let conv = dm(&alice, &bob);
    for i in 1..=3u64 {
        let sent = send_text(&mut a, &conv, &format!("c{i}"), &format!("hello {i}")).await;
        assert_eq!(sent["seq"], i);
    }
    for i in 1..=3u64 {
        let m = b.expect(is_msg(&conv, i), WAIT).await.expect("bob gets it");
        assert_eq!(m["from"], alice.as_str());
        a2.expect(is_msg(&conv, i), WAIT)
            .await
            .expect("alice's other device gets it");
    }
    b.send(&json!({"type":"ack","conv":conv,"seq":3}))
        .await
        .unwrap();
    a.expect(
        |f| f["type"] == "delivered" && f["conv"] == conv.as_str() && f["seq"] == 3,
        WAIT,
    )
    .await
    .expect("delivered crosses back");

    let synced = b
        .call(json!({"type":"sync","conv":conv,"after":0}))
        .await
        .unwrap();
    let seqs = msg_seqs(&synced);
    assert_eq!(seqs, vec![1, 2, 3]);

    // a group of three, members on three nodes
    let group = "g:span";
    let created = a
        .call(json!({"type":"group_create","conv":group,"name":"Span","members":[bob, carol]}))
        .await
        .unwrap();
    assert_eq!(created["count"], 3);
    let sent = send_text(&mut c, group, "g1", "from carol").await;
    let seq = sent["seq"].as_u64().unwrap();
    for client in [&mut a, &mut b, &mut a2] {
        client
            .expect(is_msg(group, seq), WAIT)
            .await
            .expect("group message reaches every node");
    }
    let convs = b.call(json!({"type":"convs"})).await.unwrap();
    let entry = convs["convs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["conv"] == group)
        .cloned()
        .expect("group listed for bob");
    assert_eq!(entry["last_seq"], seq);
    assert_eq!(entry["unread"], seq, "bob has read nothing in the group");

    b.send(&json!({"type":"read","conv":group,"seq":seq}))
        .await
        .unwrap();
    a.expect(|f| f["type"] == "read" && f["by"] == bob.as_str(), WAIT)
        .await
        .expect("read event crosses nodes (small group)");
    let receipts = c
        .call(json!({"type":"receipts","conv":group,"seq":seq}))
        .await
        .unwrap();
    assert_eq!(receipts["read"], json!([bob]));
    assert_eq!(receipts["unread"], json!([alice]));

    // pulls of the group from the other nodes (batched per node): members get the history, an outsider
    // pulling in the same moment on the same node is refused
    let owner = cluster.owner(group);
    let members = [(1, &mut a), (2, &mut b), (0, &mut c)];
    for (node, member) in members.into_iter().filter(|(n, _)| *n != owner) {
        let outsider_name = cluster.user_on(node, &format!("mallory{node}"));
        let mut outsider = cluster.login(node, &outsider_name, "d").await;
        let pull = json!({"type":"sync","rid":"p","conv":group,"after":0});
        member.send(&pull).await.unwrap();
        outsider.send(&pull).await.unwrap();
        let refused = outsider.expect(|f| f["rid"] == "p", WAIT).await.unwrap();
        assert_eq!(
            refused["code"], "forbidden",
            "outsider on node {node}: {refused}"
        );
        let pulled = member.expect(|f| f["rid"] == "p", WAIT).await.unwrap();
        let seqs = msg_seqs(&pulled);
        assert_eq!(seqs, vec![1, seq], "member on node {node}");
    }

    // older than the owner's pull view (its last 256 messages): the batch is served by the group's actor
    // (two fresh connections of 150 sends each: within the per-connection send rate's burst)
    for device in ["bulk1", "bulk2"] {
        let mut sender = cluster.login(0, &carol, device).await;
        for i in 0..150 {
            let frame = json!({"type":"send","rid":format!("old{i}"),"cid":format!("{device}-{i}"),"conv":group,"body":{"i":i}});
            sender.send(&frame).await.unwrap();
        }
        for i in 0..150 {
            let rid = format!("old{i}");
            let reply = sender
                .expect(|f| f["rid"] == rid.as_str(), WAIT)
                .await
                .unwrap();
            assert_eq!(reply["type"], "sent", "{reply}");
        }
    }
    let node = (0..3).find(|n| *n != owner).unwrap();
    let member_name = [&carol, &alice, &bob][node];
    let mut member = cluster.login(node, member_name, "puller").await;
    let mut outsider = cluster
        .login(node, &cluster.user_on(node, "trudy"), "d")
        .await;
    let pull = json!({"type":"sync","rid":"old","conv":group,"after":0,"limit":1000});
    member.send(&pull).await.unwrap();
    outsider.send(&pull).await.unwrap();
    let refused = outsider.expect(|f| f["rid"] == "old", WAIT).await.unwrap();
    assert_eq!(refused["code"], "forbidden", "{refused}");
    let pulled = member.expect(|f| f["rid"] == "old", WAIT).await.unwrap();
    let seqs = msg_seqs(&pulled);
    assert_eq!(seqs, (1..=seq + 300).collect::<Vec<u64>>());

    // alice's phone connects again on node 0: the old session on node 1 is kicked
    let mut a3 = cluster.login(0, &alice, "phone").await;
    a.expect(|f| f["type"] == "kicked", WAIT)
        .await
        .expect("old session kicked across nodes");

    // bob's last device leaves node 2: his friend alice hears it on nodes 0 and 2 (bob's user is on node 1)
    b.close().await;
    for client in [&mut a3, &mut a2] {
        client
            .expect(
                |f| f["type"] == "presence" && f["user"] == bob.as_str() && f["online"] == false,
                WAIT,
            )
            .await
            .expect("presence crosses nodes");
    }
}

/// `/v1/nodes` lists every node up with its live connection count; `/v1/route` names the leader of the
/// user's partition, the same on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_and_route_agree() {
    let cluster = Cluster::start(3, "").await;
    let _x = cluster.login(1, "xavier", "d1").await;
    let _y = cluster.login(1, "yolanda", "d1").await;
    let deadline = Instant::now() + WAIT;
    loop {
        let nodes = cluster.nodes_view(0).await;
        assert_eq!(nodes.len(), 3);
        assert!(nodes.iter().all(|n| n["up"] == true), "{nodes:?}");
        if nodes[1]["connections"] == 2 {
            assert_eq!(nodes[1]["listen"], cluster.addrs[1].to_string());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "connection count not seen: {nodes:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for user in ["alice", "bob", "carol", "dave", "u17"] {
        let owner = cluster.owner(user);
        for i in 0..3 {
            let (status, body) = http_get(&cluster.url(i, &format!("/v1/route?user={user}"))).await;
            assert_eq!(status, 200);
            let route: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(route["node"], cluster.ids[owner].as_str());
            assert_eq!(route["ws"], format!("ws://{}/ws", cluster.addrs[owner]));
        }
    }
}

/// SIGKILL the node that leads a conversation's partition: its replicas elect a new leader and the next
/// `send` is served within `election_timeout_ms` + 1 s, with every acknowledged message kept; its clients
/// log in elsewhere; restarted, it catches up from the others, takes its partitions back and serves
/// everything, including what was sent while it was dead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_node_fails_over_and_comes_back_whole() {
    let mut cluster = Cluster::start(3, "[chat]\ndm_requires_friendship = false").await;
    // users served by nodes 0 and 1, one conversation led by node 2 and one by a live node
    let (u, v, w) = (0..10_000)
        .map(|k| {
            (
                cluster.user_on(0, &format!("u{k}x")),
                cluster.user_on(1, &format!("v{k}x")),
                cluster.user_on(1, &format!("w{k}x")),
            )
        })
        .find(|(u, v, w)| cluster.owner(&dm(u, v)) == 2 && cluster.owner(&dm(u, w)) != 2)
        .expect("a pair whose conversation lands on node 2");
    let doomed = dm(&u, &v);
    let alive = dm(&u, &w);
    let mut cu = cluster.login(0, &u, "d").await;
    let mut cv = cluster.login(1, &v, "d").await;
    let mut on_doomed = cluster.login(2, &w, "d").await;
    for i in 1..=5u64 {
        let sent = send_text(&mut cu, &doomed, &format!("k{i}"), "before").await;
        assert_eq!(sent["seq"], i);
    }
    cv.expect(is_msg(&doomed, 5), WAIT).await.expect("pushed");

    cluster.kill9(2);
    let ended = on_doomed.expect_close(WAIT).await;
    assert!(
        !matches!(ended, Err(ClientError::Timeout(_))),
        "the dead node's client sees its connection end"
    );
    let started = Instant::now();
    let sent = loop {
        let reply = cu
            .request(json!({"type":"send","cid":"k6","conv":doomed,"body":{"text":"during"}}))
            .await
            .unwrap();
        if reply["type"] == "sent" {
            break reply;
        }
        assert_eq!(reply["code"], "unavailable", "{reply}");
    };
    let outage = started.elapsed();
    assert_eq!(sent["seq"], 6, "{sent}");
    assert!(
        outage < Duration::from_millis(2_500),
        "served again after {outage:?} (election timeout 1 s)"
    );
    cv.expect(is_msg(&doomed, 6), WAIT)
        .await
        .expect("pushed by the new leader");

    // the dead node's client logs in elsewhere
    let (mut cw, welcome, addr) = Client::login_any(&cluster.addrs, &token(&w), "d", 20)
        .await
        .unwrap();
    assert_ne!(addr, cluster.addrs[2]);
    assert_ne!(welcome["node"], "n3");
    let sent = send_text(&mut cu, &alive, "a1", "still here").await;
    assert_eq!(sent["seq"], 1);
    cw.expect(is_msg(&alive, 1), WAIT)
        .await
        .expect("pushed to the moved client");

    // back, caught up, and leading its partitions again (`restart` waits for that)
    cluster.restart(2).await;
    let sync = cv
        .call(json!({"type":"sync","conv":doomed,"after":0}))
        .await
        .unwrap();
    let bodies: Vec<(u64, String)> = sync["msgs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["seq"].as_u64().unwrap(),
                m["cid"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected: Vec<(u64, String)> = (1..=6).map(|i| (i, format!("k{i}"))).collect();
    assert_eq!(bodies, expected, "every acknowledged message, once");
    let sent = send_text(&mut cu, &doomed, "k7", "after").await;
    assert_eq!(sent["seq"], 7);
    cv.expect(is_msg(&doomed, 7), WAIT)
        .await
        .expect("pushed after restart");
}

/// A node whose cluster config differs (here `vnodes`) is refused by its peers instead of sharing keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_with_a_different_config_is_refused() {
    let mut cluster = Cluster::start(2, "").await;
    cluster.kill9(1);
    let text = std::fs::read_to_string(&cluster.config_path).unwrap();
    let other = cluster.dir.path().join("other.toml");
    std::fs::write(&other, format!("[cluster]\nvnodes = 32\n{text}")).unwrap();
    let _n2 = NodeProcess::start_node(&other, Some("n2"), None);

    let deadline = Instant::now() + WAIT;
    loop {
        let (_, metrics) = http_get(&cluster.url(0, "/metrics")).await;
        if metrics.contains("rookery_peer_link_state{peer=\"n2\"} 2") {
            break;
        }
        assert!(Instant::now() < deadline, "n2 not refused:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let nodes = cluster.nodes_view(0).await;
    assert_eq!(nodes[1]["up"], false);
    // and n2's keys are unavailable from n1 rather than owned twice
    let user = cluster.user_on(1, "r");
    let err = Client::login(cluster.addrs[0], &token(&user), "d")
        .await
        .err()
        .expect("login for a key of the refused node fails");
    assert!(err.to_string().contains("unavailable"), "{err}");
}

/// SIGTERM: the node tells its clients to reconnect elsewhere (close 1012 with a reason), exits 0, and what
/// it acknowledged is served again when it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_sends_clients_elsewhere() {
    let mut cluster = Cluster::start(3, "[chat]\ndm_requires_friendship = false").await;
    let (p, q) = (cluster.user_on(0, "p"), cluster.user_on(1, "q"));
    let conv = dm(&p, &q);
    let mut cp = cluster.login(0, &p, "d").await;
    let mut leaving = cluster.login(2, &q, "d").await;
    let sent = send_text(&mut cp, &conv, "t1", "one").await;
    assert_eq!(sent["seq"], 1);
    leaving
        .expect(is_msg(&conv, 1), WAIT)
        .await
        .expect("pushed");

    let status = cluster.terminate(2);
    assert!(status.success(), "{status:?}");
    let close = leaving
        .expect_close(WAIT)
        .await
        .expect("closed by the server")
        .expect("with a close frame");
    assert_eq!(u16::from(close.code), 1012);
    assert!(close.reason.contains("reconnect"), "{}", close.reason);

    let others = [cluster.addrs[0], cluster.addrs[1]];
    let (mut cq, _, _) = Client::login_any(&others, &token(&q), "d", 5)
        .await
        .unwrap();
    let sync = cq
        .call(json!({"type":"sync","conv":conv,"after":0}))
        .await
        .unwrap();
    assert_eq!(sync["msgs"][0]["cid"], "t1");
    cluster.restart(2).await;
    let sent = send_text(&mut cp, &conv, "t2", "two").await;
    assert_eq!(sent["seq"], 2);
    cq.expect(is_msg(&conv, 2), WAIT).await.expect("pushed");
}

/// Starts an upload of `bytes` on the node at `url` for the user of `auth` (blocking); its id.
fn start_upload(url: &str, auth: &str, bytes: &[u8]) -> String {
    use sha2::Digest;
    let sha = hex::encode(sha2::Sha256::digest(bytes));
    let body = json!({"size":bytes.len(),"sha256":sha,"mime":"application/octet-stream"});
    let start: serde_json::Value = serde_json::from_str(
        &ureq::post(&format!("{url}/v1/uploads"))
            .set("Authorization", auth)
            .send_string(&body.to_string())
            .expect("upload started")
            .into_string()
            .expect("answer"),
    )
    .expect("JSON");
    start["upload"].as_str().expect("upload id").to_string()
}

/// The bytes of `media` from the node at `url`, following its redirect (blocking).
fn download(url: &str, auth: &str, media: &str) -> Vec<u8> {
    let mut got = Vec::new();
    ureq::get(&format!("{url}/v1/media/{media}"))
        .set("Authorization", auth)
        .call()
        .expect("downloaded")
        .into_reader()
        .read_to_end(&mut got)
        .expect("the bytes");
    got
}

/// An upload started on one node goes on through any other (a client behind a load balancer): chunks,
/// status and `complete` sent elsewhere answer 307 to the node that has the upload, with a short-lived
/// token, and a client that follows the redirect uploads the file; another user's upload is still 403.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_goes_on_through_any_node() {
    let cluster = Cluster::start(3, "[media]\nchunk_bytes = 4096").await;
    let bytes: Vec<u8> = (0..10_000u32).map(|i| (i * 13 % 251) as u8).collect();
    let auth = format!("Bearer {}", token("uma"));
    let other = format!("Bearer {}", token("otto"));
    let (url0, url1, url2) = (cluster.url(0, ""), cluster.url(1, ""), cluster.url(2, ""));
    tokio::task::spawn_blocking(move || {
        let upload = start_upload(&url0, &auth, &bytes);
        let chunk = |i: usize| &bytes[i * 4096..((i + 1) * 4096).min(bytes.len())];

        // a chunk sent to another node: 307 to the node that has the upload, method and body kept
        let no_follow = ureq::AgentBuilder::new().redirects(0).build();
        let resp = no_follow
            .put(&format!("{url1}/v1/uploads/{upload}/0"))
            .set("Authorization", &auth)
            .send_bytes(chunk(0))
            .unwrap();
        assert_eq!(resp.status(), 307);
        let location = resp.header("Location").unwrap().to_string();
        assert!(
            location.starts_with(&format!("{url0}/v1/uploads/{upload}/0?token=")),
            "{location}"
        );
        // followed by hand as a client does (without the header: the token is in the URL)
        let stored = ureq::put(&location).send_bytes(chunk(0)).unwrap();
        assert_eq!(stored.status(), 204);
        for (i, url) in [(1, &url2), (2, &url1)] {
            let resp = no_follow
                .put(&format!("{url}/v1/uploads/{upload}/{i}"))
                .set("Authorization", &auth)
                .send_bytes(chunk(i))
                .unwrap();
            let location = resp.header("Location").unwrap().to_string();
            assert_eq!(
                ureq::put(&location).send_bytes(chunk(i)).unwrap().status(),
                204
            );
        }
        // status and complete through the others (ureq follows a 307 for a GET and a POST without body)
        let status: serde_json::Value = serde_json::from_str(
            &ureq::get(&format!("{url2}/v1/uploads/{upload}"))
                .set("Authorization", &auth)
                .call()
                .unwrap()
                .into_string()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(status["received"], json!([0, 1, 2]));
        // another user's upload: still 403, wherever it is asked
        let refused = ureq::get(&format!("{url1}/v1/uploads/{upload}"))
            .set("Authorization", &other)
            .call();
        assert!(
            matches!(refused, Err(ureq::Error::Status(403, _))),
            "{refused:?}"
        );
        let resp = no_follow
            .post(&format!("{url1}/v1/uploads/{upload}/complete"))
            .set("Authorization", &auth)
            .call()
            .unwrap();
        assert_eq!(resp.status(), 307);
        let location = resp.header("Location").unwrap().to_string();
        let done: serde_json::Value =
            serde_json::from_str(&ureq::post(&location).call().unwrap().into_string().unwrap())
                .unwrap();
        let media = done["media"].as_str().unwrap().to_string();
        assert_eq!(download(&url1, &auth, &media), bytes);
        // an upload no node has: 404
        let missing = ureq::get(&format!("{url2}/v1/uploads/{}", "0".repeat(32)))
            .set("Authorization", &auth)
            .call();
        assert!(matches!(missing, Err(ureq::Error::Status(404, _))));
    })
    .await
    .unwrap();
}

/// Media uploaded to one node is found from any other: the node without it redirects (307) to the one that
/// has it, and an HTTP client that follows redirects gets the bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_is_found_from_any_node() {
    let cluster = Cluster::start(3, "").await;
    let bytes: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
    let auth = format!("Bearer {}", token("mia"));
    let (url0, url1, url2) = (cluster.url(0, ""), cluster.url(1, ""), cluster.url(2, ""));
    tokio::task::spawn_blocking(move || {
        let upload = start_upload(&url0, &auth, &bytes);
        ureq::put(&format!("{url0}/v1/uploads/{upload}/0"))
            .set("Authorization", &auth)
            .send_bytes(&bytes)
            .unwrap();
        let done: serde_json::Value = serde_json::from_str(
            &ureq::post(&format!("{url0}/v1/uploads/{upload}/complete"))
                .set("Authorization", &auth)
                .call()
                .unwrap()
                .into_string()
                .unwrap(),
        )
        .unwrap();
        let media = done["media"].as_str().unwrap().to_string();

        let no_follow = ureq::AgentBuilder::new().redirects(0).build();
        let resp = no_follow
            .get(&format!("{url1}/v1/media/{media}"))
            .set("Authorization", &auth)
            .call()
            .unwrap();
        assert_eq!(resp.status(), 307);
        let location = resp.header("Location").unwrap();
        assert!(
            location.starts_with(&format!("{url0}/v1/media/{media}?token=")),
            "{location}"
        );
        assert_eq!(download(&url2, &auth, &media), bytes);
        let missing = ureq::get(&format!("{url2}/v1/media/{}", "0".repeat(32)))
            .set("Authorization", &auth)
            .call();
        assert!(matches!(missing, Err(ureq::Error::Status(404, _))));
    })
    .await
    .unwrap();
}

/// The same for a group in notify mode: the device hears of the message sent while its node was frozen.
/// (A frozen node's connection may still take the frame and deliver it once the node runs again; where the
/// link is gone, a `notify` that could not be sent is now remembered like a `msg` push and replayed when
/// the link is back, which the router's unit test `a_msg_push_and_a_notify_carry_news_...` covers.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_groups_notify_behind_a_broken_link_is_told_when_it_is_back() {
    let cluster = Cluster::start(3, "[chat]\npush_max_members = 1").await;
    let conv = (0..1000)
        .map(|k| format!("g:big{k}"))
        .find(|c| cluster.owner(c) != 2)
        .unwrap();
    let owner = cluster.user_on(0, "own");
    let member = cluster.user_on(1, "mem");
    let mut co = cluster.login(0, &owner, "d").await;
    let mut cm = cluster.login(2, &member, "d").await;
    co.call(json!({"type":"group_create","conv":conv,"name":"Big","members":[member]}))
        .await
        .expect("created");
    cm.expect(
        |f| f["type"] == "notify" && f["conv"] == conv.as_str(),
        WAIT,
    )
    .await
    .expect("notified of the group");

    cluster.signal(2, "STOP");
    let deadline = Instant::now() + WAIT;
    while cluster.nodes_view(0).await[2]["up"] == true {
        assert!(Instant::now() < deadline, "node 2 still up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sent = send_text(&mut co, &conv, "s2", "while the link is down").await;
    let seq = sent["seq"].as_u64().expect("seq");
    cluster.signal(2, "CONT");
    cluster.wait_links().await;

    cm.expect(
        |f| f["type"] == "notify" && f["conv"] == conv.as_str() && f["last_seq"] == seq,
        WAIT,
    )
    .await
    .expect("the device hears of the message sent while its node was cut off");
    let sync = cm
        .call(json!({"type":"sync","conv":conv,"after":seq - 1}))
        .await
        .unwrap();
    assert_eq!(sync["msgs"][0]["cid"], "s2");
}

/// A node that stops answering (SIGSTOP) loses its links; messages for its connected devices meanwhile are
/// stored, and when it answers again those devices get a `notify` (or the push) and pull them: nothing is
/// lost for a device that stayed connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_behind_a_broken_link_are_told_to_pull() {
    let cluster = Cluster::start(3, "[chat]\ndm_requires_friendship = false").await;
    let (p, q) = (0..1000)
        .map(|k| {
            (
                cluster.user_on(0, &format!("p{k}x")),
                cluster.user_on(1, &format!("q{k}x")),
            )
        })
        .find(|(p, q)| cluster.owner(&dm(p, q)) != 2)
        .unwrap();
    let conv = dm(&p, &q);
    let mut cp = cluster.login(0, &p, "d").await;
    let mut cq = cluster.login(2, &q, "d").await;
    send_text(&mut cp, &conv, "s1", "before").await;
    cq.expect(is_msg(&conv, 1), WAIT).await.expect("pushed");

    cluster.signal(2, "STOP");
    // the other nodes drop their links to node 2 after peer_timeout_ms (2 s)
    let deadline = Instant::now() + WAIT;
    while cluster.nodes_view(0).await[2]["up"] == true {
        assert!(Instant::now() < deadline, "node 2 still up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sent = send_text(&mut cp, &conv, "s2", "while the link is down").await;
    assert_eq!(sent["seq"], 2);
    cluster.signal(2, "CONT");
    cluster.wait_links().await;

    let told = cq
        .expect(
            |f| {
                f["conv"] == conv.as_str()
                    && ((f["type"] == "notify" && f["last_seq"] == 2) || is_msg(&conv, 2)(f))
            },
            WAIT,
        )
        .await
        .expect("the device hears of message 2");
    if told["type"] == "notify" {
        let sync = cq
            .call(json!({"type":"sync","conv":conv,"after":1}))
            .await
            .unwrap();
        assert_eq!(sync["msgs"][0]["cid"], "s2");
    }
}
