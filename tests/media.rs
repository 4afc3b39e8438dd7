//! PROTOCOL.md "HTTP", media: chunked uploads in any order, resume after a restart, instant upload of known
//! content, sha256 mismatch, missing chunks, range downloads, thumbnails, and auth on every endpoint.

mod common;

use std::io::Read;

use common::*;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const MEDIA: &str =
    "[chat]\ndm_requires_friendship = false\n[media]\nchunk_bytes = 65536\nmax_bytes = 10000000";

struct Resp {
    status: u16,
    body: Vec<u8>,
    headers: Vec<(String, String)>,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn send(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&[u8]>,
    extra: &[(&str, &str)],
) -> Resp {
    let mut req = ureq::request(method, url);
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    for (k, v) in extra {
        req = req.set(k, v);
    }
    let result = match body {
        Some(b) => req.send_bytes(b),
        None => req.call(),
    };
    let resp = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {url}: {e}"),
    };
    let status = resp.status();
    let headers = resp
        .headers_names()
        .into_iter()
        .map(|n| {
            let v = resp.header(&n).unwrap_or_default().to_string();
            (n, v)
        })
        .collect();
    let mut body = Vec::new();
    resp.into_reader()
        .read_to_end(&mut body)
        .expect("read body");
    Resp {
        status,
        body,
        headers,
    }
}

fn content(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| i.to_le_bytes()[0].wrapping_mul(31).wrapping_add(seed) ^ (i >> 8).to_le_bytes()[0])
        .collect()
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

struct Media<'a> {
    node: &'a TestNode,
    token: String,
}

impl Media<'_> {
    fn start(&self, bytes: &[u8], mime: &str) -> Resp {
        let body =
            json!({"size": bytes.len(), "sha256": sha(bytes), "mime": mime, "name": "file.bin"})
                .to_string();
        send(
            "POST",
            &self.node.url("/v1/uploads"),
            Some(&self.token),
            Some(body.as_bytes()),
            &[],
        )
    }
    fn put(&self, upload: &str, index: usize, bytes: &[u8]) -> Resp {
        let url = self.node.url(&format!("/v1/uploads/{upload}/{index}"));
        send("PUT", &url, Some(&self.token), Some(bytes), &[])
    }
    fn status(&self, upload: &str) -> Resp {
        send(
            "GET",
            &self.node.url(&format!("/v1/uploads/{upload}")),
            Some(&self.token),
            None,
            &[],
        )
    }
    fn complete(&self, upload: &str) -> Resp {
        send(
            "POST",
            &self.node.url(&format!("/v1/uploads/{upload}/complete")),
            Some(&self.token),
            Some(b""),
            &[],
        )
    }
    fn get(&self, id: &str, extra: &[(&str, &str)]) -> Resp {
        send(
            "GET",
            &self.node.url(&format!("/v1/media/{id}")),
            Some(&self.token),
            None,
            extra,
        )
    }
    /// Uploads `bytes` in chunks in the given order and completes; returns the media id.
    fn upload(&self, bytes: &[u8], mime: &str, order: &[usize]) -> String {
        let started = self.start(bytes, mime);
        assert_eq!(
            started.status,
            201,
            "{}",
            String::from_utf8_lossy(&started.body)
        );
        let upload = started.json()["upload"]
            .as_str()
            .expect("upload id")
            .to_string();
        let chunk = usize::try_from(started.json()["chunk_size"].as_u64().expect("chunk size"))
            .expect("fits");
        let chunks: Vec<&[u8]> = bytes.chunks(chunk).collect();
        assert_eq!(order.len(), chunks.len());
        for &i in order {
            assert_eq!(self.put(&upload, i, chunks[i]).status, 204);
        }
        let done = self.complete(&upload);
        assert_eq!(done.status, 200, "{}", String::from_utf8_lossy(&done.body));
        done.json()["media"].as_str().expect("media id").to_string()
    }
}

fn client<'a>(node: &'a TestNode, user: &str) -> Media<'a> {
    Media {
        node,
        token: token(user),
    }
}

#[test]
fn chunked_upload_in_shuffled_order_then_download_with_ranges() {
    let node = TestNode::start_with(MEDIA);
    let alice = client(&node, "alice");
    let bytes = content(300_000, 7); // 5 chunks of 64 KiB, the last one short
    let started = alice.start(&bytes, "application/octet-stream");
    assert_eq!(started.status, 201);
    assert_eq!(started.json()["chunk_size"], 65536);
    assert_eq!(started.json()["received"], json!([]));
    let upload = started.json()["upload"]
        .as_str()
        .expect("upload")
        .to_string();
    let chunks: Vec<&[u8]> = bytes.chunks(65536).collect();
    for i in [3, 0, 4, 1, 2, 1] {
        assert_eq!(
            alice.put(&upload, i, chunks[i]).status,
            204,
            "chunk {i} (chunk 1 twice: idempotent)"
        );
    }
    assert_eq!(
        alice.status(&upload).json(),
        json!({"received":[0,1,2,3,4]})
    );
    let done = alice.complete(&upload);
    assert_eq!(done.status, 200);
    let id = done.json()["media"].as_str().expect("media").to_string();
    assert_eq!(id.len(), 32, "128 random bits");

    let whole = alice.get(&id, &[]);
    assert_eq!(whole.status, 200);
    assert_eq!(whole.body, bytes);
    assert_eq!(
        whole.header("content-type"),
        Some("application/octet-stream")
    );
    let etag = whole.header("etag").expect("etag").to_string();
    assert_eq!(alice.get(&id, &[("If-None-Match", &etag)]).status, 304);

    let part = alice.get(&id, &[("Range", "bytes=10-19")]);
    assert_eq!(part.status, 206);
    assert_eq!(part.body, &bytes[10..20]);
    assert_eq!(part.header("content-range"), Some("bytes 10-19/300000"));
    let tail = alice.get(&id, &[("Range", "bytes=-100")]);
    assert_eq!(
        (tail.status, tail.body.as_slice()),
        (206, &bytes[bytes.len() - 100..])
    );
    assert_eq!(alice.get(&id, &[("Range", "bytes=400000-")]).status, 416);
    // the upload is gone once completed
    assert_eq!(alice.status(&upload).status, 404);
}

impl Media<'_> {
    /// `POST /v1/uploads` for `bytes` with `extra` fields (a `name`, a `proof`) merged into the body.
    fn start_with(&self, bytes: &[u8], extra: Value) -> Resp {
        let mut body = json!({"size": bytes.len(), "sha256": sha(bytes), "mime": "audio/ogg"});
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            body.extend(extra.clone());
        }
        send(
            "POST",
            &self.node.url("/v1/uploads"),
            Some(&self.token),
            Some(body.to_string().as_bytes()),
            &[],
        )
    }
}

/// The proof for a challenge `{"offset":O,"length":L}`: the sha256 of those bytes of the file.
fn answer(bytes: &[u8], challenge: &Value) -> String {
    let offset = usize::try_from(challenge["offset"].as_u64().expect("offset")).expect("fits");
    let length = usize::try_from(challenge["length"].as_u64().expect("length")).expect("fits");
    sha(&bytes[offset..offset + length])
}

/// Own content is an instant upload; content only another user stored is never answered with its id from
/// the hash alone (issue 13, finding 5; PROTOCOL.md media): bob gets a proof-of-possession challenge, the
/// right proof gets the same id (stored once), a wrong one 403, and then he is a holder (instant).
#[test]
fn known_content_needs_a_proof_of_possession_from_other_users() {
    let node = TestNode::start_with(MEDIA);
    let bytes = content(100_000, 1);
    let alice = client(&node, "alice");
    let id = alice.upload(&bytes, "audio/ogg", &[1, 0]);
    let again = alice.start(&bytes, "audio/ogg");
    assert_eq!(
        (again.status, again.json()),
        (200, json!({"media": id})),
        "own content: instant"
    );

    let bob = client(&node, "bob");
    let asked = bob.start_with(&bytes, json!({}));
    assert_eq!(asked.status, 200);
    let challenge = asked.json()["proof"].clone();
    assert!(asked.json().get("media").is_none(), "{}", asked.json());
    let length = challenge["length"].as_u64().expect("length");
    let offset = challenge["offset"].as_u64().expect("offset");
    assert_eq!(length, 65536, "min(size, 64 KiB)");
    assert!(offset + length <= 100_000, "{challenge}");

    // asking again gives the same range: nothing to re-roll
    assert_eq!(bob.start_with(&bytes, json!({})).json()["proof"], challenge);
    // a wrong proof is 403
    let wrong = bob.start_with(&bytes, json!({"proof": sha(b"guess")}));
    assert_eq!(
        wrong.status,
        403,
        "{}",
        String::from_utf8_lossy(&wrong.body)
    );
    // the right proof gets the same id
    let proven = bob.start_with(&bytes, json!({"proof": answer(&bytes, &challenge)}));
    assert_eq!(
        (proven.status, proven.json()),
        (200, json!({"media": id})),
        "{challenge}"
    );
    // once proven, bob holds it: instant from now on
    assert_eq!(bob.start(&bytes, "audio/ogg").json(), json!({"media": id}));
    let blobs = std::fs::read_dir(node.dir.join("media/blobs"))
        .expect("blobs")
        .count();
    assert_eq!(blobs, 1, "stored once");

    // carol has a range of her own: bob's answer proves nothing for her
    let carol = client(&node, "carol");
    let hers = carol.start_with(&bytes, json!({})).json()["proof"].clone();
    assert_ne!(hers, challenge, "per-user ranges");
    let replayed = carol.start_with(&bytes, json!({"proof": answer(&bytes, &challenge)}));
    assert_eq!(
        replayed.status,
        403,
        "{}",
        String::from_utf8_lossy(&replayed.body)
    );
}

/// Content of at most 64 KiB is never answered with a challenge (its only range would be the whole file,
/// whose sha256 the caller already sent): the bytes are asked for, and `complete` answers with the stored
/// copy's id, kept once.
#[test]
fn small_known_content_asks_for_the_bytes() {
    let node = TestNode::start_with(MEDIA);
    let bytes = content(1000, 8);
    let id = client(&node, "alice").upload(&bytes, "text/plain", &[0]);
    let bob = client(&node, "bob");
    let asked = bob.start_with(&bytes, json!({"proof": sha(&bytes)}));
    assert_eq!(
        asked.status,
        201,
        "{}",
        String::from_utf8_lossy(&asked.body)
    );
    assert!(asked.json().get("media").is_none(), "{}", asked.json());
    let upload = asked.json()["upload"].as_str().expect("upload").to_string();
    assert_eq!(bob.put(&upload, 0, &bytes).status, 204);
    assert_eq!(bob.complete(&upload).json(), json!({"media": id}));
    let blobs = std::fs::read_dir(node.dir.join("media/blobs"))
        .expect("blobs")
        .count();
    assert_eq!(blobs, 1, "stored once");
}

/// Issue 13, finding 3: a `name` with quotes and CR/LF was stored, then every download answered 500
/// (`failed to parse header value`). Control characters are refused at upload (400); any other name,
/// quotes and non-ASCII included, downloads with an RFC 6266/8187 `Content-Disposition`.
#[test]
fn upload_names_are_validated_and_downloads_encode_them() {
    let node = TestNode::start_with(MEDIA);
    let alice = client(&node, "alice");
    let bytes = content(2000, 11);
    for name in [
        "evil\"\r\nX-Injected: 1.png",
        "tab\there",
        "nul\u{0}",
        "del\u{7f}",
    ] {
        let refused = alice.start_with(&bytes, json!({"name": name}));
        assert_eq!(refused.status, 400, "{name:?}");
        let message = refused.json()["message"].as_str().unwrap_or("").to_string();
        assert!(message.contains("control characters"), "{message}");
    }

    let name = "résumé \"final\"; v2 100%.pdf";
    let started = alice.start_with(&bytes, json!({"name": name}));
    assert_eq!(
        started.status,
        201,
        "{}",
        String::from_utf8_lossy(&started.body)
    );
    let upload = started.json()["upload"]
        .as_str()
        .expect("upload")
        .to_string();
    assert_eq!(alice.put(&upload, 0, &bytes).status, 204);
    let id = alice.complete(&upload).json()["media"]
        .as_str()
        .expect("media")
        .to_string();
    let got = alice.get(&id, &[]);
    assert_eq!(got.status, 200);
    assert_eq!(got.body, bytes);
    let disposition = got.header("content-disposition").expect("disposition");
    assert_eq!(
        disposition,
        "inline; filename=\"r_sum_ _final_; v2 100%.pdf\"; \
         filename*=UTF-8''r%C3%A9sum%C3%A9%20%22final%22%3B%20v2%20100%25.pdf"
    );
}

#[test]
fn mismatched_sha_and_missing_chunks() {
    let node = TestNode::start_with(MEDIA);
    let alice = client(&node, "alice");
    let bytes = content(200_000, 3);
    let upload = alice.start(&bytes, "video/mp4").json()["upload"]
        .as_str()
        .expect("upload")
        .to_string();
    let chunks: Vec<&[u8]> = bytes.chunks(65536).collect();
    for i in [0, 1, 3] {
        alice.put(&upload, i, chunks[i]);
    }
    let missing = alice.complete(&upload);
    assert_eq!(
        (missing.status, missing.json()),
        (409, json!({"missing":[2]}))
    );
    let mut forged = chunks[2].to_vec();
    forged[5] ^= 0xff;
    alice.put(&upload, 2, &forged);
    let mismatch = alice.complete(&upload);
    assert_eq!(mismatch.status, 422);
    assert_eq!(
        alice.status(&upload).status,
        404,
        "a mismatched upload is discarded"
    );
    assert_eq!(
        std::fs::read_dir(node.dir.join("media/blobs"))
            .expect("blobs")
            .count(),
        0,
        "nothing stored"
    );
}

#[test]
fn an_interrupted_upload_resumes_after_a_restart() {
    let mut node = TestNode::start_with(MEDIA);
    let bytes = content(300_000, 9);
    let chunks: Vec<Vec<u8>> = bytes.chunks(65536).map(<[u8]>::to_vec).collect();
    let upload = {
        let alice = client(&node, "alice");
        let upload = alice.start(&bytes, "image/webp").json()["upload"]
            .as_str()
            .expect("upload")
            .to_string();
        for i in [0, 2, 3] {
            alice.put(&upload, i, &chunks[i]);
        }
        upload
    };
    node.restart();
    let alice = client(&node, "alice");
    assert_eq!(alice.status(&upload).json(), json!({"received":[0,2,3]}));
    let again = alice.start(&bytes, "image/webp");
    assert_eq!(again.status, 201);
    assert_eq!(
        again.json()["upload"],
        upload.as_str(),
        "posting the same content again resumes"
    );
    for i in [1, 4] {
        assert_eq!(alice.put(&upload, i, &chunks[i]).status, 204);
    }
    let id = alice.complete(&upload).json()["media"]
        .as_str()
        .expect("media")
        .to_string();
    assert_eq!(alice.get(&id, &[]).body, bytes);
}

#[test]
fn bad_uploads_get_clear_errors_and_store_nothing() {
    let node = TestNode::start_with(MEDIA);
    let alice = client(&node, "alice");
    let bytes = content(150_000, 5);
    let upload = alice.start(&bytes, "application/pdf").json()["upload"]
        .as_str()
        .expect("upload")
        .to_string();
    assert_eq!(
        alice.put(&upload, 0, &bytes[..1000]).status,
        400,
        "short chunk"
    );
    assert_eq!(
        alice.put(&upload, 2, &bytes[..65536]).status,
        400,
        "last chunk longer than the rest"
    );
    assert_eq!(
        alice.put(&upload, 3, &bytes[..1000]).status,
        400,
        "index out of range"
    );
    assert_eq!(
        alice.put(&upload, 0, &vec![0u8; 70_000]).status,
        400,
        "chunk over chunk_size"
    );
    let url = node.url(&format!("/v1/uploads/{upload}/x"));
    assert_eq!(
        send("PUT", &url, Some(&alice.token), Some(b"1"), &[]).status,
        400,
        "index not a number"
    );
    assert_eq!(
        alice.status(&upload).json(),
        json!({"received":[]}),
        "nothing stored"
    );
    let unknown = "0123456789abcdef0123456789abcdef";
    assert_eq!(alice.put(unknown, 0, b"x").status, 404);
    assert_eq!(alice.status("../../etc").status, 404);

    let bob = client(&node, "bob");
    assert_eq!(
        bob.put(&upload, 0, &bytes[..65536]).status,
        403,
        "another user's upload"
    );
    assert_eq!(bob.status(&upload).status, 403);
    assert_eq!(bob.complete(&upload).status, 403);

    let body = |size: u64, sha: &str, mime: &str| {
        json!({"size": size, "sha256": sha, "mime": mime}).to_string()
    };
    let post = |b: String| {
        send(
            "POST",
            &node.url("/v1/uploads"),
            Some(&alice.token),
            Some(b.as_bytes()),
            &[],
        )
    };
    let good_sha = sha(&bytes);
    assert_eq!(
        post(body(20_000_000, &good_sha, "video/mp4")).status,
        413,
        "over media.max_bytes"
    );
    assert_eq!(post(body(0, &good_sha, "video/mp4")).status, 400, "empty");
    assert_eq!(
        post(body(10, "abc", "video/mp4")).status,
        400,
        "not a sha256"
    );
    assert_eq!(post(body(10, &good_sha, "not a mime")).status, 400);
    assert_eq!(post("{}".into()).status, 400);
    assert_eq!(alice.get(unknown, &[]).status, 404);
}

#[test]
fn every_media_endpoint_needs_a_user_token() {
    let node = TestNode::start_with(MEDIA);
    let id = client(&node, "alice").upload(&content(1000, 2), "text/plain", &[0]);
    let upload = "0123456789abcdef0123456789abcdef";
    let forged = rookery::net::auth::mint(
        "wrong-secret",
        &rookery::ids::UserId::parse("alice").expect("id"),
        60,
    );
    for token in [None, Some(forged.as_str()), Some("garbage")] {
        for (method, path) in [
            ("POST", "/v1/uploads".to_string()),
            ("PUT", format!("/v1/uploads/{upload}/0")),
            ("GET", format!("/v1/uploads/{upload}")),
            ("POST", format!("/v1/uploads/{upload}/complete")),
            ("GET", format!("/v1/media/{id}")),
            ("GET", format!("/v1/media/{id}/thumb")),
        ] {
            let resp = send(method, &node.url(&path), token, Some(b"{}"), &[]);
            assert_eq!(resp.status, 401, "{method} {path} with {token:?}");
        }
    }
}

#[test]
fn thumbnails_of_images_are_at_most_256_px() {
    let node = TestNode::start_with(MEDIA);
    let alice = client(&node, "alice");
    let img = image::RgbImage::from_fn(640, 480, |x, y| {
        image::Rgb([x.to_le_bytes()[0], y.to_le_bytes()[0], 128])
    });
    let mut png = std::io::Cursor::new(Vec::new());
    img.write_to(&mut png, image::ImageFormat::Png)
        .expect("encode");
    let png = png.into_inner();
    let order: Vec<usize> = (0..png.len().div_ceil(65536)).collect();
    let id = alice.upload(&png, "image/png", &order);
    let url = node.url(&format!("/v1/media/{id}/thumb"));
    for _ in 0..2 {
        let thumb = send("GET", &url, Some(&alice.token), None, &[]);
        assert_eq!(thumb.status, 200);
        assert_eq!(thumb.header("content-type"), Some("image/png"));
        let decoded = image::load_from_memory(&thumb.body).expect("a png");
        assert_eq!(
            (decoded.width(), decoded.height()),
            (256, 192),
            "aspect kept, longest side 256"
        );
    }
    // a forged mime type: text declared as an image
    let forged = alice.upload(b"this is not a picture", "image/png", &[0]);
    let thumb = send(
        "GET",
        &node.url(&format!("/v1/media/{forged}/thumb")),
        Some(&alice.token),
        None,
        &[],
    );
    assert_eq!(thumb.status, 415);
    let pdf = alice.upload(&content(5000, 4), "application/pdf", &[0]);
    let thumb = send(
        "GET",
        &node.url(&format!("/v1/media/{pdf}/thumb")),
        Some(&alice.token),
        None,
        &[],
    );
    assert_eq!(thumb.status, 415);
    assert_eq!(
        std::fs::read_dir(node.dir.join("media/thumbs"))
            .expect("thumbs")
            .count(),
        1,
        "only the real image"
    );
}

#[tokio::test]
async fn a_message_refers_to_media_by_id() {
    let node = TestNode::start_with(MEDIA);
    let id = client(&node, "alice").upload(&content(70_000, 8), "image/jpeg", &[0, 1]);
    let mut alice = node.login("alice", "phone").await;
    let mut bob = node.login("bob", "phone").await;
    let conv = dm("alice", "bob");
    let body = json!({"kind":"image","media":id,"w":640,"h":480});
    alice
        .call(json!({"type":"send","cid":"m1","conv":conv,"body":body}))
        .await
        .expect("sent");
    let msg = bob.expect(is_msg(&conv, 1), WAIT).await.expect("msg");
    assert_eq!(msg["body"]["media"], id.as_str());
    // the receiver fetches the content the message refers to (a blocking call is fine here: the node runs
    // on its own threads)
    assert_eq!(client(&node, "bob").get(&id, &[]).body, content(70_000, 8));
}

#[test]
fn abandoned_uploads_are_removed_after_the_ttl() {
    let node = TestNode::start_with("[media]\nchunk_bytes = 65536\nupload_ttl_s = 1");
    let alice = client(&node, "alice");
    let bytes = content(100_000, 6);
    let upload = alice.start(&bytes, "video/mp4").json()["upload"]
        .as_str()
        .expect("upload")
        .to_string();
    assert_eq!(alice.put(&upload, 0, &bytes[..65536]).status, 204);
    let mut gone = false;
    for _ in 0..40 {
        std::thread::sleep(std::time::Duration::from_millis(100));
        if alice.status(&upload).status == 404 {
            gone = true;
            break;
        }
    }
    assert!(gone, "the abandoned upload was swept");
    assert_eq!(
        std::fs::read_dir(node.dir.join("media/uploads"))
            .expect("uploads")
            .count(),
        0,
        "chunks removed"
    );
}
