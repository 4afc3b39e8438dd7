//! PROTOCOL.md "Server API": every endpoint and its error statuses, idempotent `POST /v1/messages`, groups
//! with their system messages, and logout and ban across two nodes (and a restart). Real nodes, real HTTP
//! requests with the admin key, real WebSocket clients.

mod common;

use common::*;
use serde_json::{json, Value};

/// Every route of the server API, with a body where it takes one.
fn routes() -> Vec<(&'static str, &'static str)> {
    vec![
        ("POST", "/v1/messages"),
        ("GET", "/v1/conversations/dm:alice:bob/messages"),
        ("POST", "/v1/groups"),
        ("POST", "/v1/groups/g:team/members"),
        ("GET", "/v1/groups/g:team"),
        ("GET", "/v1/users/alice"),
        ("POST", "/v1/users/alice/logout"),
        ("PUT", "/v1/users/alice/ban"),
        ("DELETE", "/v1/users/alice/ban"),
    ]
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in metrics"))
}

#[tokio::test]
async fn every_call_needs_the_admin_key_and_refusals_are_counted() {
    let node = TestNode::start();
    let before = metric(
        &http_get(&node.url("/metrics")).await.1,
        "rookery_admin_auth_failures_total",
    );
    let mut refused = 0;
    for (method, path) in routes() {
        for key in [None, Some("test-admin-"), Some("wrong"), Some("")] {
            let (status, body) = http(method, &node.url(path), key, Some("{}")).await;
            assert_eq!(status, 401, "{method} {path} with {key:?}: {body}");
            let body: Value = serde_json::from_str(&body).expect("json error");
            assert_eq!(body["error"], "unauthorized", "{body}");
            assert!(body["message"].is_string(), "{body}");
            refused += 1;
        }
    }
    let after = metric(
        &http_get(&node.url("/metrics")).await.1,
        "rookery_admin_auth_failures_total",
    );
    assert_eq!(after - before, refused);
}

#[tokio::test]
async fn posted_messages_are_stored_pushed_and_idempotent() {
    // direct messages need friendship for users, not for the backend
    let node = TestNode::start();
    let mut alice = node.login("alice", "phone").await;
    let mut bob = node.login("bob", "phone").await;
    let post =
        json!({"conv":"dm:alice:bob","from":"alice","cid":"sys-1","body":{"text":"welcome"}});
    let (status, first) = api("POST", &node.url("/v1/messages"), Some(post.clone())).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["conv"], "dm:alice:bob");
    assert_eq!(first["seq"], 1);
    assert!(first["ts"].as_u64().is_some(), "{first}");
    // as if alice had sent it: pushed to bob and to alice's own devices (no device of hers caused it)
    let pushed = bob
        .expect(is_msg("dm:alice:bob", 1), WAIT)
        .await
        .expect("bob gets it");
    assert_eq!(pushed["from"], "alice");
    assert_eq!(pushed["cid"], "sys-1");
    assert_eq!(pushed["body"]["text"], "welcome");
    alice
        .expect(is_msg("dm:alice:bob", 1), WAIT)
        .await
        .expect("alice's device gets it");

    let (status, again) = api("POST", &node.url("/v1/messages"), Some(post)).await;
    assert_eq!((status, &again), (200, &first), "the first answer again");
    bob.expect_none(
        |f| f["type"] == "msg",
        std::time::Duration::from_millis(300),
    )
    .await
    .expect("nothing new pushed");

    // the sender's read position moved, as with `send`
    let convs = alice.call(json!({"type":"convs"})).await.expect("convs");
    assert_eq!(convs["convs"][0]["read_seq"], 1, "{convs}");

    let (status, page) = api(
        "GET",
        &node.url("/v1/conversations/dm:alice:bob/messages"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["conv"], "dm:alice:bob");
    assert_eq!(page["last_seq"], 1);
    assert_eq!(msg_seqs(&page), vec![1]);
    assert_eq!(page["msgs"][0]["body"]["text"], "welcome");
}

#[tokio::test]
async fn message_pages_work_like_sync() {
    let node = TestNode::start();
    for i in 1..=5 {
        let post = json!({"conv":"dm:alice:bob","from":"bob","cid":format!("c{i}"),"body":{"n":i}});
        let (status, reply) = api("POST", &node.url("/v1/messages"), Some(post)).await;
        assert_eq!((status, reply["seq"].as_u64()), (200, Some(i)), "{reply}");
    }
    let page = |q: &str| {
        let url = node.url(&format!("/v1/conversations/dm:alice:bob/messages{q}"));
        async move { api("GET", &url, None).await }
    };
    let (_, p) = page("?after=2&limit=2").await;
    assert_eq!(
        (msg_seqs(&p), p["last_seq"].as_u64()),
        (vec![3, 4], Some(5))
    );
    let (_, p) = page("?before=5&limit=2").await;
    assert_eq!(msg_seqs(&p), vec![3, 4]);
    let (_, p) = page("?after=5").await;
    assert_eq!(msg_seqs(&p), Vec::<u64>::new());
    let (_, p) = page("?limit=100000").await;
    assert_eq!(
        msg_seqs(&p),
        vec![1, 2, 3, 4, 5],
        "larger limits are taken as 1000"
    );
    for bad in ["?after=1&before=3", "?limit=0", "?after=x"] {
        let (status, e) = page(bad).await;
        assert_eq!(
            (status, e["error"].as_str()),
            (400, Some("bad_request")),
            "{bad}: {e}"
        );
    }
    let (status, e) = api(
        "GET",
        &node.url("/v1/conversations/g:nothing/messages"),
        None,
    )
    .await;
    assert_eq!(
        (status, e["error"].as_str()),
        (404, Some("not_found")),
        "{e}"
    );
    let (status, e) = api("GET", &node.url("/v1/conversations/dm:b:a/messages"), None).await;
    assert_eq!(
        (status, e["error"].as_str()),
        (400, Some("bad_request")),
        "{e}"
    );
}

#[tokio::test]
async fn posting_errors_map_to_their_statuses() {
    let node = TestNode::start_with("[limits]\nmax_body_bytes = 64");
    let url = node.url("/v1/messages");
    let cases: Vec<(Value, u16, &str)> = vec![
        (
            json!({"conv":"dm:alice:bob","from":"carol","cid":"x","body":{}}),
            403,
            "forbidden",
        ),
        (
            json!({"conv":"g:none","from":"alice","cid":"x","body":{}}),
            404,
            "not_found",
        ),
        (
            json!({"conv":"dm:alice:bob","from":"alice","cid":"r","body":{},"reply_to":7}),
            400,
            "bad_request",
        ),
        (
            json!({"conv":"dm:alice:bob","from":"alice","cid":"m","body":{},"mentions":["carol"]}),
            400,
            "bad_request",
        ),
        (
            json!({"conv":"dm:alice:bob","from":"alice","cid":"x","body":"text"}),
            400,
            "bad_request",
        ),
        (
            json!({"conv":"dm:alice:bob","from":"al ice","cid":"x","body":{}}),
            400,
            "bad_request",
        ),
        (
            json!({"conv":"dm:alice:bob","from":"alice","body":{}}),
            400,
            "bad_request",
        ),
        (
            json!({"conv":"dm:alice:bob","from":"alice","cid":"","body":{}}),
            400,
            "bad_request",
        ),
        (
            json!({"conv":"dm:alice:bob","from":"alice","cid":"x","body":{"text":"x".repeat(100)}}),
            413,
            "too_large",
        ),
    ];
    for (body, status, code) in cases {
        let (got, e) = api("POST", &url, Some(body.clone())).await;
        assert_eq!(
            (got, e["error"].as_str()),
            (status, Some(code)),
            "{body} -> {e}"
        );
        assert!(e["message"].is_string(), "{e}");
    }
    let (status, e) = http("POST", &url, Some(ADMIN_KEY), Some("not json")).await;
    assert_eq!(status, 400, "{e}");
    let (status, page) = api(
        "GET",
        &node.url("/v1/conversations/dm:alice:bob/messages"),
        None,
    )
    .await;
    assert_eq!(
        (status, page["last_seq"].as_u64()),
        (200, Some(0)),
        "nothing stored"
    );
}

#[tokio::test]
async fn groups_through_the_api_follow_the_frames_rules() {
    let node = TestNode::start_with("[chat]\nmax_group_members = 4");
    let mut bob = node.login("bob", "phone").await;
    let create =
        json!({"conv":"g:proj","name":"Project","owner":"alice","members":["bob","carol"]});
    let (status, group) = api("POST", &node.url("/v1/groups"), Some(create.clone())).await;
    assert_eq!(status, 201, "{group}");
    assert_eq!(
        group,
        json!({"conv":"g:proj","name":"Project","owner":"alice","count":3})
    );
    let created = bob
        .expect(is_msg("g:proj", 1), WAIT)
        .await
        .expect("created pushed");
    assert_eq!(created["from"], "alice");
    assert_eq!(created["system"]["event"], "created");
    assert_eq!(
        created["system"]["members"],
        json!(["alice", "bob", "carol"])
    );
    let (status, e) = api("POST", &node.url("/v1/groups"), Some(create)).await;
    assert_eq!(
        (status, e["error"].as_str()),
        (409, Some("conflict")),
        "{e}"
    );

    let members = node.url("/v1/groups/g:proj/members");
    let (status, group) = api(
        "POST",
        &members,
        Some(json!({"add":["dave"],"remove":["carol"]})),
    )
    .await;
    assert_eq!((status, group["count"].as_u64()), (200, Some(3)), "{group}");
    let added = bob.expect(is_msg("g:proj", 2), WAIT).await.expect("added");
    assert_eq!(
        (added["from"].clone(), added["system"]["event"].clone()),
        (json!("alice"), json!("members_added"))
    );
    let removed = bob
        .expect(is_msg("g:proj", 3), WAIT)
        .await
        .expect("removed");
    assert_eq!(removed["system"]["event"], "members_removed");

    let (status, e) = api("POST", &members, Some(json!({"add":["erin","frank"]}))).await;
    assert_eq!((status, e["error"].as_str()), (422, Some("limit")), "{e}");
    let (status, e) = api("POST", &members, Some(json!({"remove":["alice"]}))).await;
    assert_eq!(
        (status, e["error"].as_str()),
        (400, Some("bad_request")),
        "{e}"
    );
    let (status, e) = api(
        "POST",
        &node.url("/v1/groups/g:none/members"),
        Some(json!({"add":["x"]})),
    )
    .await;
    assert_eq!(
        (status, e["error"].as_str()),
        (404, Some("not_found")),
        "{e}"
    );

    let (status, info) = api("GET", &node.url("/v1/groups/g:proj?members=true"), None).await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["members"], json!(["alice", "bob", "dave"]));
    let (_, info) = api("GET", &node.url("/v1/groups/g:proj"), None).await;
    assert!(info.get("members").is_none(), "{info}");
    let (status, e) = api("GET", &node.url("/v1/groups/g:none"), None).await;
    assert_eq!(
        (status, e["error"].as_str()),
        (404, Some("not_found")),
        "{e}"
    );
    let (status, e) = api("GET", &node.url("/v1/groups/dm:alice:bob"), None).await;
    assert_eq!(
        (status, e["error"].as_str()),
        (400, Some("bad_request")),
        "{e}"
    );

    // a member's messages from the backend; the removed member may no longer post
    let post = json!({"conv":"g:proj","from":"dave","cid":"d1","body":{"text":"hi"}});
    let (status, sent) = api("POST", &node.url("/v1/messages"), Some(post)).await;
    assert_eq!((status, sent["seq"].as_u64()), (200, Some(4)), "{sent}");
    let post = json!({"conv":"g:proj","from":"carol","cid":"c1","body":{"text":"hi"}});
    let (status, e) = api("POST", &node.url("/v1/messages"), Some(post)).await;
    assert_eq!(
        (status, e["error"].as_str()),
        (403, Some("forbidden")),
        "{e}"
    );
}

#[tokio::test]
async fn logout_and_ban_take_effect_on_every_node_and_survive_a_restart() {
    let mut cluster = Cluster::start(2, "").await;
    // alice's actor lives on node 0; her devices connect to both nodes; calls go to node 1
    let alice = cluster.user_on(0, "alice");
    let old_token = token(&alice);
    let mut phone = cluster.login(0, &alice, "phone").await;
    let mut laptop = cluster.login(1, &alice, "laptop").await;
    let user_url = cluster.url(1, &format!("/v1/users/{alice}"));

    let (status, info) = api("GET", &user_url, None).await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(
        (
            info["user"].as_str(),
            info["online"].as_bool(),
            info["banned"].as_bool()
        ),
        (Some(alice.as_str()), Some(true), Some(false))
    );
    let devices: Vec<(String, String)> = info["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .map(|d| {
            assert!(d["since"].as_u64().is_some_and(|t| t > 0), "{d}");
            (
                d["device"].as_str().unwrap_or_default().to_string(),
                d["node"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(
        devices,
        vec![
            ("laptop".into(), "n2".into()),
            ("phone".into(), "n1".into())
        ]
    );

    let (status, body) = api(
        "POST",
        &cluster.url(1, &format!("/v1/users/{alice}/logout")),
        None,
    )
    .await;
    assert_eq!((status, body), (204, Value::Null));
    for client in [&mut phone, &mut laptop] {
        assert_eq!(closed_with(client).await, (1008, "logged out".to_string()));
    }
    for i in 0..2 {
        let refused = try_login(cluster.addrs[i], &old_token, "tablet").await;
        let frame = refused.expect_err("a token from before the logout");
        assert_eq!(frame["code"], "unauthorized", "{frame}");
    }
    let fresh = token(&alice);
    let mut phone = cluster.login(1, &alice, "phone").await;

    // ban: devices closed, auth refused with any token, posting as her forbidden
    let ban_url = cluster.url(0, &format!("/v1/users/{alice}/ban"));
    let (status, _) = api("PUT", &ban_url, None).await;
    assert_eq!(status, 204);
    assert_eq!(closed_with(&mut phone).await, (1008, "banned".to_string()));
    let (_, info) = api("GET", &user_url, None).await;
    assert_eq!(info["banned"], true, "{info}");
    let bob = cluster.user_on(1, "bob");
    let group = json!({"conv":"g:banned","name":"B","owner":bob,"members":[alice]});
    let (status, _) = api("POST", &cluster.url(0, "/v1/groups"), Some(group)).await;
    assert_eq!(status, 201);
    let post = json!({"conv":"g:banned","from":alice,"cid":"x","body":{"text":"hi"}});
    let (status, e) = api("POST", &cluster.url(1, "/v1/messages"), Some(post.clone())).await;
    assert_eq!(
        (status, e["error"].as_str()),
        (403, Some("forbidden")),
        "{e}"
    );

    // the ban is stored with the user: it outlives a crash of the node that owns her
    cluster.kill9(0);
    cluster.restart(0).await;
    for i in 0..2 {
        let frame = try_login(cluster.addrs[i], &fresh, "phone")
            .await
            .expect_err("banned");
        assert_eq!(frame["code"], "unauthorized", "{frame}");
    }
    let (status, _) = api("DELETE", &ban_url, None).await;
    assert_eq!(status, 204);
    try_login(cluster.addrs[1], &fresh, "phone")
        .await
        .expect("unbanned");
    let (status, sent) = api("POST", &cluster.url(1, "/v1/messages"), Some(post)).await;
    assert_eq!((status, sent["seq"].as_u64()), (200, Some(2)), "{sent}");
    // and the logout too: the old token stays void
    let frame = try_login(cluster.addrs[0], &old_token, "phone")
        .await
        .expect_err("still void");
    assert_eq!(frame["code"], "unauthorized", "{frame}");
}

#[tokio::test]
async fn a_device_racing_a_logout_is_closed_too() {
    let node = TestNode::start();
    let logout = node.url("/v1/users/racer/logout");
    for round in 0..10 {
        let old = token("racer");
        let addr = node.addr;
        let device = format!("d{round}");
        let login = tokio::spawn(async move {
            let mut c = rookery::client::Client::connect(addr)
                .await
                .expect("connect");
            c.auth(&old, &device).await.ok().map(|_| c)
        });
        let (status, _) = api("POST", &logout, None).await;
        assert_eq!(status, 204);
        // whichever came first: refused, or accepted and then closed
        if let Some(mut client) = login.await.expect("login task") {
            let (code, reason) = closed_with(&mut client).await;
            assert_eq!(
                (code, reason.as_str()),
                (1008, "logged out"),
                "round {round}"
            );
        }
    }
    // a token minted in the last logout's millisecond is void too: mint the next one later
    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    node.login("racer", "after").await;
}
