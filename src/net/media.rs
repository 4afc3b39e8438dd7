//! Media over HTTP (PROTOCOL.md "HTTP", media): chunked, resumable, deduplicated uploads; streamed downloads
//! with `Range`; thumbnails. Every endpoint needs a user token (`Authorization: Bearer T`). File work runs on
//! the blocking pool ([`web::block`]), never on a worker thread; downloads stream from disk.
//!
//! Status codes beyond the contract's: 400 for a bad body, index or chunk length; 404 for an unknown upload or
//! media id; 413 for a declared size over `media.max_bytes`; 415 for a thumbnail of content that is not a
//! decodable image. Error bodies are `{"error":CODE,"message":TEXT}`.
//!
//! Content that only other users have stored is answered with a proof-of-possession challenge, never its
//! id (`prove`); names are checked at upload and sent back RFC 6266/8187-encoded ([`content_disposition`]).

use actix_files::NamedFile;
use actix_web::http::header::HeaderValue;
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use crate::actors::now_ms;
use crate::cluster::peer::LinkState;
use crate::cluster::Router;
use crate::error::{ChatError, ErrorCode};
use crate::ids::UserId;
use crate::net::auth;
use crate::net::http::{bearer, error_response, ErrorBody};
use crate::store::media::{Challenge, Completed, Media, Started, Upload};
use utoipa::ToSchema;

/// The longest `mime` and `name` accepted.
const MAX_MIME: usize = 255;
const MAX_NAME: usize = 255;

fn status(code: u16, error: ErrorCode, message: &str) -> HttpResponse {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST);
    HttpResponse::build(status).json(ErrorBody {
        error,
        message: message.to_owned(),
    })
}

/// Stored content's id.
#[derive(Serialize, ToSchema)]
pub struct MediaIdBody {
    media: String,
}

/// An upload to send chunks to.
#[derive(Serialize, ToSchema)]
pub struct UploadBody {
    upload: String,
    chunk_size: u64,
    /// Indices of the chunks already stored.
    received: Vec<u64>,
}

/// A proof of possession asked for: the sha256 of `length` bytes of the file from `offset`.
#[derive(Serialize, ToSchema)]
pub struct ProofBody {
    proof: ProofRange,
}

#[derive(Serialize, ToSchema)]
pub struct ProofRange {
    offset: u64,
    length: u64,
}

/// Chunks stored so far.
#[derive(Serialize, ToSchema)]
pub struct ReceivedBody {
    received: Vec<u64>,
}

/// Chunks still missing at `complete`.
#[derive(Serialize, ToSchema)]
pub struct MissingBody {
    missing: Vec<u64>,
}

fn internal(e: impl std::fmt::Display) -> ChatError {
    tracing::error!(error = %e, "media request failed");
    ChatError::internal("storage failure")
}

/// The user of a request's bearer token (401 otherwise).
fn user(req: &HttpRequest, router: &Router) -> Result<UserId, ChatError> {
    let unauthorized = || ChatError::new(ErrorCode::Unauthorized, "a valid user token is required");
    let token = bearer(req).ok_or_else(unauthorized)?;
    auth::verify(
        &router.config().auth.token_secret,
        router.config().auth.max_token_ttl_s,
        token,
    )
    .map_err(|_| unauthorized())
}

/// For downloads and an upload's own requests: the bearer token, or a `token` query parameter (what a
/// redirect from another node carries, since clients drop `Authorization` when a redirect changes host;
/// usable in `<img src>` too).
fn reader(req: &HttpRequest, router: &Router) -> Result<UserId, ChatError> {
    let from_query = || {
        web::Query::<TokenQuery>::from_query(req.query_string())
            .ok()
            .and_then(|q| q.into_inner().token)
    };
    match (bearer(req), from_query()) {
        (None, Some(token)) => auth::verify(
            &router.config().auth.token_secret,
            router.config().auth.max_token_ttl_s,
            &token,
        )
        .map_err(|_| ChatError::new(ErrorCode::Unauthorized, "a valid user token is required")),
        _ => user(req, router),
    }
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// How long the token in a cross-node media redirect is valid.
const REDIRECT_TOKEN_TTL_S: u64 = 60;

/// Runs blocking store work off the worker thread.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> crate::store::StoreResult<T> + Send + 'static,
) -> Result<T, ChatError> {
    match web::block(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(internal(e)),
        Err(e) => Err(internal(e)),
    }
}

/// The caller's own upload `id` (404 unknown, 403 someone else's).
async fn own_upload(router: &Router, id: String, user: &UserId) -> Result<Upload, ChatError> {
    let store = router.store().clone();
    let upload = blocking(move || store.media().upload(&id)).await?;
    let upload = upload.ok_or_else(|| ChatError::not_found("no such upload"))?;
    if upload.owner != *user {
        return Err(ChatError::forbidden("another user's upload"));
    }
    Ok(upload)
}

/// [`own_upload`], or the redirect to the node that has the upload (a client behind a load balancer sends
/// an upload's requests to any node).
async fn own_upload_or_redirect(
    req: &HttpRequest,
    router: &Router,
    user: &UserId,
    id: String,
) -> Result<Upload, HttpResponse> {
    match own_upload(router, id.clone(), user).await {
        Ok(upload) => Ok(upload),
        Err(e) if e.code == ErrorCode::NotFound => {
            match elsewhere(req, router, user, format!("/v1/uploads/{id}")).await {
                Some(redirect) => Err(redirect),
                None => Err(error_response(&e)),
            }
        }
        Err(e) => Err(error_response(&e)),
    }
}

async fn known_media(router: &Router, id: String) -> Result<Media, ChatError> {
    let store = router.store().clone();
    let media = blocking(move || store.media().media(&id)).await?;
    media.ok_or_else(|| ChatError::not_found("no such media"))
}

/// Marks a lookup one node makes on another's behalf (answered from local media only: no loops).
const FORWARDED: &str = "x-rookery-forwarded";

/// In a cluster, media and unfinished uploads live on the node that received the upload. For media (or an
/// upload) this node does not have, asks the live peers (a GET of `probe` with the client's own identity:
/// a one-byte range of the media, or the upload's status) and redirects (307, which keeps the method and
/// the body) to the one that has it; `None` if none has.
async fn elsewhere(
    req: &HttpRequest,
    router: &Router,
    user: &UserId,
    probe: String,
) -> Option<HttpResponse> {
    if router.peers().is_empty() || req.headers().contains_key(FORWARDED) {
        return None;
    }
    let secret = &router.config().auth.token_secret;
    let auth = format!("Bearer {}", auth::mint(secret, user, REDIRECT_TOKEN_TTL_S));
    let redirect_token = auth::mint(secret, user, REDIRECT_TOKEN_TTL_S);
    let path = req.uri().path().to_owned();
    let candidates: Vec<String> = router
        .peers()
        .iter()
        .filter(|p| p.state() == LinkState::Up)
        .map(|p| p.listen.clone())
        .collect();
    let timeout = router.config().cluster.peer_timeout();
    let found = actix_web::web::block(move || {
        let agent = ureq::AgentBuilder::new()
            .timeout(timeout)
            .redirects(0)
            .build();
        candidates
            .into_iter()
            .find(|listen| {
                // that node has it: the bytes, another user's upload (403), or an empty file's range (416)
                match agent
                    .get(&format!("http://{listen}{probe}"))
                    .set("Authorization", &auth)
                    .set(FORWARDED, "1")
                    .set("Range", "bytes=0-0")
                    .call()
                {
                    Ok(_) => true,
                    Err(ureq::Error::Status(status, _)) => matches!(status, 403 | 416),
                    Err(_) => false,
                }
            })
            .map(|listen| format!("http://{listen}{path}?token={redirect_token}"))
    })
    .await
    .ok()??;
    Some(
        HttpResponse::TemporaryRedirect()
            .insert_header((header::LOCATION, found))
            .finish(),
    )
}

/// [`known_media`], or the redirect to the node that has it.
async fn local_or_redirect(
    req: &HttpRequest,
    router: &Router,
    user: &UserId,
    id: String,
) -> Result<Media, HttpResponse> {
    match known_media(router, id).await {
        Ok(media) => Ok(media),
        Err(e) if e.code == ErrorCode::NotFound => {
            match elsewhere(req, router, user, req.uri().path().to_owned()).await {
                Some(redirect) => Err(redirect),
                None => Err(error_response(&e)),
            }
        }
        Err(e) => Err(error_response(&e)),
    }
}

/// Unwraps a step of a handler, answering its error as JSON with the code's status.
macro_rules! step {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return error_response(&e),
        }
    };
}

#[derive(Deserialize, ToSchema)]
pub struct StartUpload {
    size: u64,
    sha256: String,
    mime: String,
    #[serde(default)]
    name: String,
    /// The answer to a proof-of-possession challenge: the sha256 (hex) of the range it named.
    #[serde(default)]
    proof: Option<String>,
}

/// A file name as stored: at most 255 characters and no control characters. A name is sent back in
/// `Content-Disposition`, and a line break there once made every download of the file a 500.
fn check_name(name: &str) -> Result<(), ChatError> {
    if name.chars().count() > MAX_NAME {
        return Err(ChatError::bad_request("name is over 255 characters"));
    }
    if name.chars().any(char::is_control) {
        return Err(ChatError::bad_request(
            "name must not contain control characters (line breaks, tabs, NUL, DEL...)",
        ));
    }
    Ok(())
}

/// `Content-Disposition: inline` naming the file as RFC 6266 and RFC 8187 say: `filename*=UTF-8''...`
/// percent-encoded, and a `filename="..."` fallback of printable ASCII (anything else, quotes and
/// backslashes included, becomes `_`). Valid for any stored name, even one stored before names were
/// checked, so no name can turn a download into a 5xx.
pub fn content_disposition(name: &str) -> HeaderValue {
    if name.is_empty() {
        return HeaderValue::from_static("inline");
    }
    let fallback: String = name
        .chars()
        .map(|c| match c {
            ' ' => ' ',
            '"' | '\\' => '_',
            c if c.is_ascii_graphic() => c,
            _ => '_',
        })
        .collect();
    let mut encoded = String::with_capacity(name.len());
    for b in name.bytes() {
        // RFC 8187 attr-char: ALPHA / DIGIT / "!" / "#" / "$" / "&" / "+" / "-" / "." / "^" / "_" / "`" / "|" / "~"
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            encoded.push(char::from(b));
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    let value = format!("inline; filename=\"{fallback}\"; filename*=UTF-8''{encoded}");
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("inline"))
}

/// `POST /v1/uploads`: the stored content's id (200) or an upload to send chunks to (201).
/// Starts an upload (or answers with stored content's id, or a proof of possession to give).
#[utoipa::path(post, path = "/v1/uploads", tag = "media", security(("user_token" = [])),
    request_body = StartUpload,
    responses((status = 200, description = "instant upload (`media`) or a proof to give (`proof`)", body = MediaIdBody),
        (status = 201, body = UploadBody), (status = 413, body = ErrorBody), (status = 422, body = ErrorBody), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn start(req: HttpRequest, router: web::Data<Router>, body: web::Bytes) -> HttpResponse {
    let user = step!(user(&req, &router));
    let r: StartUpload = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error_response(&ChatError::bad_request(format!("invalid body: {e}"))),
    };
    let sha256 = r.sha256.to_ascii_lowercase();
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return error_response(&ChatError::bad_request("sha256 must be 64 hex digits"));
    }
    let limits = &router.config().media;
    if r.size == 0 {
        return error_response(&ChatError::bad_request("size must be at least 1"));
    }
    if r.size > limits.max_bytes {
        let message = format!("size is over media.max_bytes ({})", limits.max_bytes);
        return error_response(&ChatError::new(ErrorCode::TooLarge, message));
    }
    if r.mime.len() > MAX_MIME || r.mime.parse::<mime::Mime>().is_err() {
        return error_response(&ChatError::bad_request(
            "mime must be a media type like image/png",
        ));
    }
    if let Err(e) = check_name(&r.name) {
        return error_response(&e);
    }
    if r.proof
        .as_deref()
        .is_some_and(|p| p.len() != 64 || !p.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return error_response(&ChatError::bad_request("proof must be 64 hex digits"));
    }
    let request = Upload {
        id: String::new(),
        owner: user.clone(),
        size: r.size,
        sha256,
        mime: r.mime,
        name: r.name,
        chunk_size: limits.chunk_bytes,
        created_ms: now_ms(),
    };
    let store = router.store().clone();
    let started = blocking(move || store.media().start(request)).await;
    match started {
        Err(e) => error_response(&e),
        Ok(Started::Known(media) | Started::KnownToOthers(media)) if media.size != r.size => {
            status(
                422,
                ErrorCode::BadRequest,
                "the declared size does not match the stored content",
            )
        }
        Ok(Started::Known(media)) => HttpResponse::Ok().json(MediaIdBody { media: media.id }),
        Ok(Started::KnownToOthers(media)) => prove(&router, user, media, r.proof).await,
        Ok(Started::Upload(upload, received)) => HttpResponse::Created().json(UploadBody {
            upload: upload.id,
            chunk_size: upload.chunk_size,
            received,
        }),
    }
}

/// Content (over [`PROOF_BYTES`]) only other users have stored (PROTOCOL.md media): never its id from the
/// hash alone. Without a proof the answer is the user's challenge, `200 {"proof":{"offset":O,"length":L}}`:
/// a range of the content keyed by the cluster's secret, the user and the content (see
/// [`Challenge::for_user`]), the same each time and on every node. With a proof, that range of the stored
/// bytes is hashed: right, `200 {"media":ID}` and the user becomes a holder (instant from then on); wrong,
/// 403.
///
/// [`PROOF_BYTES`]: crate::store::media::PROOF_BYTES
async fn prove(router: &Router, user: UserId, media: Media, proof: Option<String>) -> HttpResponse {
    let secret = &router.config().auth.token_secret;
    let challenge = Challenge::for_user(secret, &user, &media.sha256, media.size);
    let Some(given) = proof else {
        return HttpResponse::Ok().json(ProofBody {
            proof: ProofRange {
                offset: challenge.offset,
                length: challenge.length,
            },
        });
    };
    let store = router.store().clone();
    let id = media.id.clone();
    let verified = blocking(move || {
        let expected = store.media().range_sha256(&media, challenge)?;
        let right = expected.eq_ignore_ascii_case(&given);
        if right {
            store.media().add_holder(&media.sha256, &user)?;
        }
        Ok(right)
    })
    .await;
    match verified {
        Err(e) => error_response(&e),
        Ok(true) => HttpResponse::Ok().json(MediaIdBody { media: id }),
        Ok(false) => error_response(&ChatError::forbidden(
            "the proof does not match the requested range of the content",
        )),
    }
}

/// `PUT /v1/uploads/{upload}/{index}`: stores one chunk of exactly the expected length (idempotent). The
/// index and the lengths come from the request: the arithmetic on them is checked.
/// Stores one chunk (idempotent).
#[utoipa::path(put, path = "/v1/uploads/{upload}/{index}", tag = "media", security(("user_token" = [])),
    params(("upload" = String, Path), ("index" = u64, Path, description = "from 0")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 204, description = "stored"), (status = 307, description = "on another node of the cluster: the same request there, with a short-lived `token`"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[deny(clippy::arithmetic_side_effects)]
pub async fn put_chunk(
    req: HttpRequest,
    router: web::Data<Router>,
    path: web::Path<(String, String)>,
    mut payload: web::Payload,
) -> HttpResponse {
    let response = store_chunk(req, router, path, &mut payload).await;
    if !response.status().is_success() {
        // read what the client is still sending (up to a bound) before answering: a client that is still
        // writing its chunk when the connection closes sees a broken pipe instead of this answer
        let mut left = DRAIN_MAX;
        while let Some(Ok(part)) = payload.next().await {
            left = left.saturating_sub(part.len());
            if left == 0 {
                break;
            }
        }
    }
    response
}

/// At most this much of a refused chunk's body is read (and dropped) so the client gets the answer.
const DRAIN_MAX: usize = 8 << 20;

async fn store_chunk(
    req: HttpRequest,
    router: web::Data<Router>,
    path: web::Path<(String, String)>,
    payload: &mut web::Payload,
) -> HttpResponse {
    let user = step!(reader(&req, &router));
    let (id, index) = path.into_inner();
    let upload = match own_upload_or_redirect(&req, &router, &user, id).await {
        Ok(upload) => upload,
        Err(response) => return response,
    };
    let Ok(index) = index.parse::<u64>() else {
        return error_response(&ChatError::bad_request("chunk index must be a number"));
    };
    if index >= upload.chunks() {
        let message = format!(
            "chunk index {index} is out of range (0 to {})",
            upload.chunks().saturating_sub(1)
        );
        return error_response(&ChatError::bad_request(message));
    }
    let expected = usize::try_from(upload.chunk_len(index)).unwrap_or(usize::MAX);
    let wrong_length = || {
        error_response(&ChatError::bad_request(format!(
            "chunk {index} must be {expected} bytes"
        )))
    };
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n != expected) {
        return wrong_length();
    }
    let mut bytes = web::BytesMut::with_capacity(expected.min(16 << 20));
    while let Some(part) = payload.next().await {
        let Ok(part) = part else {
            return error_response(&ChatError::bad_request("the request body broke off"));
        };
        if bytes.len().saturating_add(part.len()) > expected {
            return wrong_length();
        }
        bytes.extend_from_slice(&part);
    }
    if bytes.len() != expected {
        return wrong_length();
    }
    let store = router.store().clone();
    let stored = blocking(move || store.media().put_chunk(&upload, index, &bytes)).await;
    match stored {
        Ok(()) => {
            router
                .metrics()
                .media_bytes_received
                .inc_by(u64::try_from(expected).unwrap_or(u64::MAX));
            HttpResponse::NoContent().finish()
        }
        Err(e) => error_response(&e),
    }
}

/// `GET /v1/uploads/{upload}`: the chunks received so far (to resume after a break).
/// The chunks an upload has (to resume after a break).
#[utoipa::path(get, path = "/v1/uploads/{upload}", tag = "media", security(("user_token" = [])),
    params(("upload" = String, Path)),
    responses((status = 200, body = ReceivedBody), (status = 307, description = "on another node of the cluster: the same request there, with a short-lived `token`"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn upload_status(
    req: HttpRequest,
    router: web::Data<Router>,
    path: web::Path<String>,
) -> HttpResponse {
    let user = step!(reader(&req, &router));
    let upload = match own_upload_or_redirect(&req, &router, &user, path.into_inner()).await {
        Ok(upload) => upload,
        Err(response) => return response,
    };
    let store = router.store().clone();
    match blocking(move || store.media().received(&upload)).await {
        Ok(received) => HttpResponse::Ok().json(ReceivedBody { received }),
        Err(e) => error_response(&e),
    }
}

/// `POST /v1/uploads/{upload}/complete`: verifies the sha256 over the whole content and stores it.
/// Finishes an upload: the content is checked against its sha256 and stored once.
#[utoipa::path(post, path = "/v1/uploads/{upload}/complete", tag = "media", security(("user_token" = [])),
    params(("upload" = String, Path)),
    responses((status = 200, body = MediaIdBody), (status = 409, body = MissingBody), (status = 307, description = "on another node of the cluster: the same request there, with a short-lived `token`"), (status = 422, body = ErrorBody), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn complete(
    req: HttpRequest,
    router: web::Data<Router>,
    path: web::Path<String>,
) -> HttpResponse {
    let user = step!(reader(&req, &router));
    let upload = match own_upload_or_redirect(&req, &router, &user, path.into_inner()).await {
        Ok(upload) => upload,
        Err(response) => return response,
    };
    let store = router.store().clone();
    match blocking(move || store.media().complete(&upload)).await {
        Ok(Completed::Stored(media)) => {
            router.metrics().media_stored.inc();
            HttpResponse::Ok().json(MediaIdBody { media: media.id })
        }
        Ok(Completed::Missing(missing)) => HttpResponse::Conflict().json(MissingBody { missing }),
        Ok(Completed::Mismatch) => status(
            422,
            ErrorCode::BadRequest,
            "the content does not match the declared sha256; the upload was discarded",
        ),
        Err(e) => error_response(&e),
    }
}

/// `GET /v1/media/{id}`: the content, streamed, with `Content-Type`, `ETag` and `Range` support.
/// The content's bytes, with `Range` support.
#[utoipa::path(get, path = "/v1/media/{id}", tag = "media", security(("user_token" = [])),
    params(("id" = String, Path)),
    responses((status = 200, description = "the bytes, with the declared Content-Type", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 206, description = "a range of the bytes", content_type = "application/octet-stream", body = Vec<u8>), (status = 304, description = "not modified"), (status = 307, description = "on another node of the cluster: the same request there, with a short-lived `token`"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn download(
    req: HttpRequest,
    router: web::Data<Router>,
    path: web::Path<String>,
) -> HttpResponse {
    let user = step!(reader(&req, &router));
    let media = match local_or_redirect(&req, &router, &user, path.into_inner()).await {
        Ok(m) => m,
        Err(response) => return response,
    };
    let file = match NamedFile::open_async(router.store().media().blob_path(&media)).await {
        Ok(f) => f,
        Err(e) => return error_response(&internal(e)),
    };
    let mime = media
        .mime
        .parse::<mime::Mime>()
        .unwrap_or(mime::APPLICATION_OCTET_STREAM);
    let mut response = file
        .set_content_type(mime)
        .disable_content_disposition()
        .into_response(&req);
    response.headers_mut().insert(
        header::CONTENT_DISPOSITION,
        content_disposition(&media.name),
    );
    response
}

/// `GET /v1/media/{id}/thumb`: a PNG of at most 256 px a side, for images; made once, then cached.
/// A PNG thumbnail of at most 256 px a side (images only).
#[utoipa::path(get, path = "/v1/media/{id}/thumb", tag = "media", security(("user_token" = [])),
    params(("id" = String, Path)),
    responses((status = 200, content_type = "image/png", body = Vec<u8>), (status = 307, description = "on another node of the cluster: the same request there, with a short-lived `token`"), (status = 415, body = ErrorBody), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn thumbnail(
    req: HttpRequest,
    router: web::Data<Router>,
    path: web::Path<String>,
) -> HttpResponse {
    let user = step!(reader(&req, &router));
    let media = match local_or_redirect(&req, &router, &user, path.into_inner()).await {
        Ok(m) => m,
        Err(response) => return response,
    };
    let not_image = || status(415, ErrorCode::BadRequest, "this media is not an image");
    if !media.mime.starts_with("image/") {
        return not_image();
    }
    let store = router.store().clone();
    match blocking(move || store.media().thumbnail(&media)).await {
        Err(e) => error_response(&e),
        Ok(None) => not_image(),
        Ok(Some(thumb)) => match NamedFile::open_async(thumb).await {
            Ok(f) => f.set_content_type(mime::IMAGE_PNG).into_response(&req),
            Err(e) => error_response(&internal(e)),
        },
    }
}

/// Removes abandoned uploads every so often (`media.upload_ttl_s`).
pub async fn sweep_forever(router: Router) {
    let ttl = router.config().media.upload_ttl_s;
    let period = std::time::Duration::from_secs((ttl / 4).clamp(1, 60));
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        let store = router.store().clone();
        let cutoff = now_ms().saturating_sub(ttl.saturating_mul(1000));
        match web::block(move || store.media().sweep(cutoff)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(removed = n, "removed abandoned uploads"),
            Ok(Err(e)) => tracing::error!(error = %e, "upload sweep failed"),
            Err(e) => tracing::error!(error = %e, "upload sweep failed"),
        }
    }
}

/// Fuzzing the media request parsing (issue 13): the `Range` header as downloads parse it (actix-files'
/// `HttpRange`, which `NamedFile` uses), file names into `Content-Disposition`, and the chunk arithmetic
/// on indices from the request path. Longer: `PROPTEST_CASES=100000 cargo test --release fuzz`.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn size() -> impl Strategy<Value = u64> {
        prop_oneof![
            0u64..2000,
            prop::sample::select(vec![
                1,
                65535,
                65536,
                1 << 32,
                (1 << 63) - 1,
                1 << 63,
                u64::MAX - 1,
                u64::MAX
            ]),
            any::<u64>(),
        ]
    }

    fn number() -> impl Strategy<Value = String> {
        prop_oneof![
            size().prop_map(|n| n.to_string()),
            Just("18446744073709551616".to_string()),
            Just("99999999999999999999999".to_string()),
            Just("-1".to_string()),
            Just(String::new()),
        ]
    }

    /// `bytes=a-b, c-, -d` with numbers at every boundary, plus arbitrary text.
    fn range_header() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::collection::vec(
                (number(), number(), 0u8..3).prop_map(|(a, b, form)| match form {
                    0 => format!("{a}-{b}"),
                    1 => format!("{a}-"),
                    _ => format!("-{b}"),
                }),
                0..4,
            )
            .prop_map(|specs| format!("bytes={}", specs.join(","))),
            ".{0,40}",
        ]
    }

    /// Percent-decodes an RFC 8187 value (for checking the round trip).
    fn decode(value: &str) -> Vec<u8> {
        let bytes = value.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' {
                out.push(u8::from_str_radix(&value[i + 1..i + 3], 16).expect("hex"));
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        out
    }

    proptest! {
        #![proptest_config(crate::fuzz_config())]

        /// Every range handed to the file server lies inside the file.
        #[test]
        fn fuzz_range_header(header in range_header(), size in size()) {
            if let Ok(ranges) = actix_files::HttpRange::parse(&header, size) {
                for r in ranges {
                    prop_assert!(r.start.checked_add(r.length).is_some_and(|end| end <= size), "{r:?} of {size}");
                }
            }
        }

        /// Any name, control characters included (stored before names were checked), gives a valid header
        /// whose `filename*` decodes back to the name.
        #[test]
        fn fuzz_content_disposition(name in prop_oneof![".{0,40}", any::<String>(), "[\"\\\\\r\n;%' ]{0,10}"]) {
            let value = content_disposition(&name);
            let text = value.to_str().expect("visible ASCII");
            if name.is_empty() {
                prop_assert_eq!(text, "inline");
            } else {
                let encoded = text.split("filename*=UTF-8''").nth(1).expect("extended parameter");
                prop_assert_eq!(decode(encoded), name.as_bytes());
                prop_assert_eq!(text.matches('"').count(), 2, "only the fallback's quotes");
            }
            prop_assert_eq!(check_name(&name).is_ok(), name.chars().count() <= MAX_NAME && !name.chars().any(char::is_control));
        }

        /// Chunk counts and lengths for any size, chunk size and index: no overflow, and the chunks add up.
        #[test]
        fn fuzz_chunk_arithmetic(size in size(), chunk in size(), index in size()) {
            let upload = Upload {
                id: String::new(),
                owner: UserId::parse("a").expect("valid"),
                size,
                sha256: String::new(),
                mime: String::new(),
                name: String::new(),
                chunk_size: chunk,
                created_ms: 0,
            };
            let chunks = upload.chunks();
            let len = upload.chunk_len(index);
            prop_assert!(len <= chunk);
            if index >= chunks {
                prop_assert_eq!(len, 0);
            } else {
                prop_assert!(len > 0);
            }
            if chunk > 0 && chunks > 0 {
                let last = upload.chunk_len(chunks - 1);
                prop_assert_eq!(u128::from(chunks - 1) * u128::from(chunk) + u128::from(last), u128::from(size));
            }
        }
    }
}
