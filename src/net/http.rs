//! HTTP endpoints of PROTOCOL.md ("HTTP"): health, metrics, token minting, node list and routing.
//! Errors are JSON `{"error":CODE,"message":TEXT}` with the code's HTTP status.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use crate::cluster::peer::LinkState;
use crate::cluster::Router;
use crate::error::{ChatError, ErrorCode};
use crate::ids::UserId;
use crate::net::auth;

pub fn error_response(e: &ChatError) -> HttpResponse {
    let status =
        StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    HttpResponse::build(status).json(json!({"error": e.code, "message": e.message}))
}

/// The bearer token of a request, if it has one.
pub fn bearer(req: &HttpRequest) -> Option<&str> {
    req.headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

pub async fn metrics(router: web::Data<Router>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(router.metrics().render())
}

#[derive(Deserialize)]
pub struct TokenRequest {
    user: String,
    ttl_s: Option<u64>,
}

/// Lets a request through only with `Authorization: Bearer ADMIN_KEY` (compared in constant time); any
/// other is refused with `unauthorized` (401) and counted in `rookery_admin_auth_failures_total`.
pub fn require_admin(req: &HttpRequest, router: &Router) -> Result<(), ChatError> {
    let admin_key = &router.config().auth.admin_key;
    if bearer(req).is_some_and(|k| constant_time_eq(k.as_bytes(), admin_key.as_bytes())) {
        return Ok(());
    }
    router.metrics().admin_auth_failures.inc();
    Err(ChatError::new(
        ErrorCode::Unauthorized,
        "a valid admin key is required",
    ))
}

pub async fn token(req: HttpRequest, router: web::Data<Router>, body: web::Bytes) -> HttpResponse {
    if let Err(e) = require_admin(&req, &router) {
        return error_response(&e);
    }
    let request: TokenRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error_response(&ChatError::bad_request(format!("invalid body: {e}"))),
    };
    let user = match UserId::parse(&request.user) {
        Ok(u) => u,
        Err(e) => return error_response(&ChatError::from(e)),
    };
    let config = &router.config().auth;
    let ttl = request
        .ttl_s
        .unwrap_or(auth::DEFAULT_TTL_S.min(config.max_token_ttl_s));
    if let Err(e) = auth::check_ttl(ttl, config.max_token_ttl_s) {
        return error_response(&ChatError::bad_request(format!("ttl_s: {e}")));
    }
    let token = auth::mint(&config.token_secret, &user, ttl);
    HttpResponse::Ok().json(json!({ "token": token }))
}

/// Compares in time that depends on the lengths only (the admin key's bytes are never a timing oracle).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Every node of the cluster as this node sees it: `up` is the state of this node's link to it (a node
/// refused for a different config is not up), `connections` its client connections as last reported.
pub async fn nodes(router: web::Data<Router>) -> HttpResponse {
    let me = router.node().as_str();
    let list: Vec<_> = router
        .config()
        .nodes
        .iter()
        .map(|n| {
            let peer = router.peers().iter().find(|p| p.id.as_str() == n.id);
            let (listen, up, connections) = match peer {
                Some(p) => (
                    n.listen.clone(),
                    p.state() == LinkState::Up,
                    p.connections(),
                ),
                None if n.id == me => (router.listen().to_string(), true, router.connections()),
                None => (n.listen.clone(), false, 0),
            };
            json!({ "id": n.id, "listen": listen, "up": up, "connections": connections })
        })
        .collect();
    HttpResponse::Ok().json(list)
}

#[derive(Deserialize)]
pub struct RouteQuery {
    user: Option<String>,
}

pub async fn route(router: web::Data<Router>, query: web::Query<RouteQuery>) -> HttpResponse {
    let Some(user) = query.user.as_deref() else {
        return error_response(&ChatError::bad_request("missing query parameter `user`"));
    };
    let user = match UserId::parse(user) {
        Ok(u) => u,
        Err(e) => return error_response(&ChatError::from(e)),
    };
    let owner = router.ring().owner(user.as_str()).clone();
    let listen = if owner == *router.node() {
        router.listen().to_string()
    } else {
        router
            .config()
            .nodes
            .iter()
            .find(|n| n.id == owner.as_str())
            .map(|n| n.listen.clone())
            .unwrap_or_default()
    };
    HttpResponse::Ok().json(json!({ "node": owner, "ws": format!("ws://{listen}/ws") }))
}
