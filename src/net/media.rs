//! Media over HTTP (PROTOCOL.md "HTTP", media): chunked, resumable, deduplicated uploads; streamed downloads
//! with `Range`; thumbnails. Every endpoint needs a user token (`Authorization: Bearer T`). File work runs on
//! the blocking pool ([`web::block`]), never on a worker thread; downloads stream from disk.
//!
//! Status codes beyond the contract's: 400 for a bad body, index or chunk length; 404 for an unknown upload or
//! media id; 413 for a declared size over `media.max_bytes`; 415 for a thumbnail of content that is not a
//! decodable image. Error bodies are `{"error":CODE,"message":TEXT}`.

use actix_files::NamedFile;
use actix_web::http::header::{ContentDisposition, DispositionParam, DispositionType};
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;

use crate::actors::now_ms;
use crate::cluster::peer::LinkState;
use crate::cluster::Router;
use crate::error::{ChatError, ErrorCode};
use crate::ids::UserId;
use crate::net::auth;
use crate::net::http::{bearer, error_response};
use crate::store::media::{Completed, Media, Started, Upload};

/// The longest `mime` and `name` accepted.
const MAX_MIME: usize = 255;
const MAX_NAME: usize = 255;

fn status(code: u16, error: ErrorCode, message: &str) -> HttpResponse {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST);
    HttpResponse::build(status).json(json!({"error": error, "message": message}))
}

fn internal(e: impl std::fmt::Display) -> ChatError {
    tracing::error!(error = %e, "media request failed");
    ChatError::internal("storage failure")
}

/// The user of a request's bearer token (401 otherwise).
fn user(req: &HttpRequest, router: &Router) -> Result<UserId, ChatError> {
    let unauthorized = || ChatError::new(ErrorCode::Unauthorized, "a valid user token is required");
    let token = bearer(req).ok_or_else(unauthorized)?;
    auth::verify(&router.config().auth.token_secret, token).map_err(|_| unauthorized())
}

/// For downloads: the bearer token, or a `token` query parameter (what a redirect from another node
/// carries, since clients drop `Authorization` when a redirect changes host; usable in `<img src>` too).
fn reader(req: &HttpRequest, router: &Router) -> Result<UserId, ChatError> {
    let from_query = || {
        web::Query::<TokenQuery>::from_query(req.query_string())
            .ok()
            .and_then(|q| q.into_inner().token)
    };
    match (bearer(req), from_query()) {
        (None, Some(token)) => auth::verify(&router.config().auth.token_secret, &token)
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

async fn known_media(router: &Router, id: String) -> Result<Media, ChatError> {
    let store = router.store().clone();
    let media = blocking(move || store.media().media(&id)).await?;
    media.ok_or_else(|| ChatError::not_found("no such media"))
}

/// Marks a lookup one node makes on another's behalf (answered from local media only: no loops).
const FORWARDED: &str = "x-rookery-forwarded";

/// In a cluster, media lives on the node that received its upload. For media this node does not have, asks
/// the live peers (a one-byte ranged GET with the client's own token) and redirects (307) to the one that
/// has it; `None` if none has.
async fn elsewhere(req: &HttpRequest, router: &Router, user: &UserId) -> Option<HttpResponse> {
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
                agent
                    .get(&format!("http://{listen}{path}"))
                    .set("Authorization", &auth)
                    .set(FORWARDED, "1")
                    .set("Range", "bytes=0-0")
                    .call()
                    .is_ok()
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
        Err(e) if e.code == ErrorCode::NotFound => match elsewhere(req, router, user).await {
            Some(redirect) => Err(redirect),
            None => Err(error_response(&e)),
        },
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

#[derive(Deserialize)]
pub struct StartUpload {
    size: u64,
    sha256: String,
    mime: String,
    #[serde(default)]
    name: String,
}

/// `POST /v1/uploads`: the stored content's id (200) or an upload to send chunks to (201).
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
    if r.name.chars().count() > MAX_NAME {
        return error_response(&ChatError::bad_request("name is over 255 characters"));
    }
    let request = Upload {
        id: String::new(),
        owner: user,
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
        Ok(Started::Known(media)) if media.size != r.size => status(
            422,
            ErrorCode::BadRequest,
            "the declared size does not match the stored content",
        ),
        Ok(Started::Known(media)) => HttpResponse::Ok().json(json!({"media": media.id})),
        Ok(Started::Upload(upload, received)) => HttpResponse::Created().json(
            json!({"upload": upload.id, "chunk_size": upload.chunk_size, "received": received}),
        ),
    }
}

/// `PUT /v1/uploads/{upload}/{index}`: stores one chunk of exactly the expected length (idempotent).
pub async fn put_chunk(
    req: HttpRequest,
    router: web::Data<Router>,
    path: web::Path<(String, String)>,
    mut payload: web::Payload,
) -> HttpResponse {
    let user = step!(user(&req, &router));
    let (id, index) = path.into_inner();
    let upload = step!(own_upload(&router, id, &user).await);
    let Ok(index) = index.parse::<u64>() else {
        return error_response(&ChatError::bad_request("chunk index must be a number"));
    };
    if index >= upload.chunks() {
        let message = format!(
            "chunk index {index} is out of range (0 to {})",
            upload.chunks() - 1
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
        if bytes.len() + part.len() > expected {
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
                .inc_by(expected as u64);
            HttpResponse::NoContent().finish()
        }
        Err(e) => error_response(&e),
    }
}

/// `GET /v1/uploads/{upload}`: the chunks received so far (to resume after a break).
pub async fn upload_status(
    req: HttpRequest,
    router: web::Data<Router>,
    path: web::Path<String>,
) -> HttpResponse {
    let user = step!(user(&req, &router));
    let upload = step!(own_upload(&router, path.into_inner(), &user).await);
    let store = router.store().clone();
    match blocking(move || store.media().received(&upload)).await {
        Ok(received) => HttpResponse::Ok().json(json!({"received": received})),
        Err(e) => error_response(&e),
    }
}

/// `POST /v1/uploads/{upload}/complete`: verifies the sha256 over the whole content and stores it.
pub async fn complete(
    req: HttpRequest,
    router: web::Data<Router>,
    path: web::Path<String>,
) -> HttpResponse {
    let user = step!(user(&req, &router));
    let upload = step!(own_upload(&router, path.into_inner(), &user).await);
    let store = router.store().clone();
    match blocking(move || store.media().complete(&upload)).await {
        Ok(Completed::Stored(media)) => {
            router.metrics().media_stored.inc();
            HttpResponse::Ok().json(json!({"media": media.id}))
        }
        Ok(Completed::Missing(missing)) => {
            HttpResponse::Conflict().json(json!({"missing": missing}))
        }
        Ok(Completed::Mismatch) => status(
            422,
            ErrorCode::BadRequest,
            "the content does not match the declared sha256; the upload was discarded",
        ),
        Err(e) => error_response(&e),
    }
}

/// `GET /v1/media/{id}`: the content, streamed, with `Content-Type`, `ETag` and `Range` support.
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
    let disposition = ContentDisposition {
        disposition: DispositionType::Inline,
        parameters: if media.name.is_empty() {
            vec![]
        } else {
            vec![DispositionParam::Filename(media.name.clone())]
        },
    };
    file.set_content_type(mime)
        .set_content_disposition(disposition)
        .into_response(&req)
}

/// `GET /v1/media/{id}/thumb`: a PNG of at most 256 px a side, for images; made once, then cached.
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
