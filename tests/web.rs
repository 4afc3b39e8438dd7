//! PROTOCOL.md "HTTP": `GET /` (the web chat client) and `GET /sdk/rookery.js` (the JavaScript SDK), served by
//! every node from its binary, with validators so a browser revalidates cheaply. The app itself is tested in
//! Chromium by `web/run-tests.sh`.

mod common;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A GET with extra header lines; the status, the header block (lowercased) and the body.
async fn get(node: &TestNode, path: &str, headers: &str) -> (u16, String, String) {
    let mut stream = tokio::net::TcpStream::connect(node.addr)
        .await
        .expect("connect");
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\n{headers}Connection: close\r\n\r\n",
        node.addr
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("read");
    let text = String::from_utf8_lossy(&response).to_string();
    let (head, body) = text.split_once("\r\n\r\n").expect("a head");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    (status, head.to_ascii_lowercase(), body.to_string())
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .map(str::trim)
}

#[tokio::test]
async fn the_web_client_and_the_sdk_are_served_with_validators() {
    let node = TestNode::start();
    for (path, content_type, needle) in [
        ("/", "text/html; charset=utf-8", "<title>Rookery</title>"),
        ("/app.js", "text/javascript; charset=utf-8", "/v1/nodes"),
        ("/app.css", "text/css; charset=utf-8", ".bubble"),
        (
            "/sdk/rookery.js",
            "text/javascript; charset=utf-8",
            "export {",
        ),
    ] {
        let (status, head, body) = get(&node, path, "").await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(header(&head, "content-type"), Some(content_type), "{path}");
        assert_eq!(header(&head, "cache-control"), Some("no-cache"), "{path}");
        assert!(body.contains(needle), "{path} lacks {needle}");
        let etag = header(&head, "etag").expect("an etag").to_string();
        let (status, head, body) = get(&node, path, &format!("If-None-Match: {etag}\r\n")).await;
        assert_eq!(status, 304, "{path} revalidated");
        assert_eq!(header(&head, "etag"), Some(etag.as_str()));
        assert!(body.is_empty());
        let (status, _, _) = get(&node, path, "If-None-Match: \"other\"\r\n").await;
        assert_eq!(status, 200, "{path} with a stale etag");
    }
    let (_, head, _) = get(&node, "/", "").await;
    assert!(
        header(&head, "content-security-policy").is_some_and(|v| v.contains("script-src 'self'"))
    );
    let (_, head, _) = get(&node, "/sdk/rookery.js", "").await;
    assert_eq!(header(&head, "access-control-allow-origin"), Some("*"));
}

/// `rookery token USER --link`: one line, a sign-in link to the web client on the config's first node, with
/// a valid token in the fragment; a wildcard listen address is shown as loopback.
#[test]
fn token_link_points_at_the_first_node() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for (listen, host) in [
        ("127.0.0.1:7001", "127.0.0.1:7001"),
        ("0.0.0.0:7005", "127.0.0.1:7005"),
    ] {
        let path = tmp.path().join("cluster.toml");
        std::fs::write(&path, config_text("", listen, &tmp.path().join("data"))).expect("write");
        let line = token_line(&["alice", "--link"], &path);
        let prefix = format!("http://{host}/#token=");
        let token = line
            .strip_prefix(&prefix)
            .unwrap_or_else(|| panic!("{line:?} does not start with {prefix}"));
        let user = rookery::net::auth::verify(SECRET, 2_592_000, token).expect("valid token");
        assert_eq!(user.as_str(), "alice");
    }
}
