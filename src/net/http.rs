//! HTTP endpoints of PROTOCOL.md ("HTTP"): health, metrics, token minting, node list and routing.
//! Errors are JSON `{"error":CODE,"message":TEXT}` with the code's HTTP status.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::cluster::peer::LinkState;
use crate::cluster::Router;
use crate::error::{ChatError, ErrorCode};
use crate::ids::UserId;
use crate::net::auth;

/// Every HTTP error's body.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorCode,
    /// Lowercase, human-readable.
    pub message: String,
}

pub fn error_response(e: &ChatError) -> HttpResponse {
    let status =
        StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    HttpResponse::build(status).json(ErrorBody {
        error: e.code,
        message: e.message.clone(),
    })
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

/// Liveness.
#[utoipa::path(get, path = "/healthz", tag = "node",
    responses((status = 200, description = "the node runs", content_type = "text/plain", body = String)))]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

/// Every metric of the node (Prometheus text format).
#[utoipa::path(get, path = "/metrics", tag = "node",
    responses((status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain", body = String)))]
pub async fn metrics(router: web::Data<Router>) -> HttpResponse {
    crate::webhooks::sender::observe_outbox(&router);
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(router.metrics().render())
}

#[derive(Deserialize, ToSchema)]
pub struct TokenRequest {
    user: String,
    /// Seconds (default 86400, or `auth.max_token_ttl_s` when lower).
    ttl_s: Option<u64>,
}

/// A client token (HS256 JWT with `sub`, `exp`, `iat`, `iat_ms`).
#[derive(Serialize, ToSchema)]
pub struct TokenResponse {
    token: String,
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

/// Mints a client token.
#[utoipa::path(post, path = "/v1/token", tag = "node", security(("admin_key" = [])),
    request_body = TokenRequest,
    responses((status = 200, body = TokenResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
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
    HttpResponse::Ok().json(TokenResponse { token })
}

/// Compares in time that depends on the lengths only (the admin key's bytes are never a timing oracle).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// One node of `GET /v1/nodes`.
#[derive(Serialize, ToSchema)]
pub struct NodeEntry {
    id: String,
    listen: String,
    up: bool,
    connections: u64,
    /// Partitions this node leads, as the answering node sees it.
    partitions_led: usize,
}

/// Every node of the cluster as this node sees it: `up` is the state of this node's link to it (a node
/// refused for a different config is not up), `connections` its client connections as last reported.
#[utoipa::path(get, path = "/v1/nodes", tag = "node",
    responses((status = 200, body = Vec<NodeEntry>)))]
pub async fn nodes(router: web::Data<Router>) -> HttpResponse {
    let me = router.node().as_str();
    let leaders: Vec<crate::ids::NodeId> =
        partition_leaders(&router).into_iter().flatten().collect();
    let list: Vec<_> = crate::net::cluster::members(&router)
        .into_iter()
        .map(|m| {
            let peer = router.peer(&m.id);
            let (listen, up, connections) = match peer {
                Some(p) => (
                    m.listen.clone(),
                    p.state() == LinkState::Up,
                    p.connections(),
                ),
                None if m.id.as_str() == me => {
                    (router.listen().to_string(), true, router.connections())
                }
                None => (m.listen.clone(), false, 0),
            };
            NodeEntry {
                id: m.id.to_string(),
                listen,
                up,
                connections,
                partitions_led: leaders.iter().filter(|l| **l == m.id).count(),
            }
        })
        .collect();
    HttpResponse::Ok().json(list)
}

/// The leader of every partition (the metadata group not included): as this node knows it for those it
/// replicates, as the leading peer last said for the others.
pub(crate) fn partition_leaders(router: &Router) -> Vec<Option<crate::ids::NodeId>> {
    let Some(replication) = router.replication() else {
        return Vec::new();
    };
    let meta = replication.layout().meta();
    replication
        .partitions()
        .into_iter()
        .enumerate()
        .filter_map(|(p, v)| {
            let p = u32::try_from(p).ok().filter(|p| *p != meta)?;
            Some(v.leader.or_else(|| router.led_by_peer(p)))
        })
        .collect()
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RouteQuery {
    /// A user id.
    user: Option<String>,
}

/// Where a user's partition is led.
#[derive(Serialize, ToSchema)]
pub struct RouteResponse {
    node: String,
    ws: String,
}

/// The node that leads `user`'s partition, as this node sees it (the shortest path for the user's client);
/// while a leader is being elected, the partition's preferred replica.
#[utoipa::path(get, path = "/v1/route", tag = "node", params(RouteQuery),
    responses((status = 200, body = RouteResponse), (status = 400, body = ErrorBody)))]
pub async fn route(router: web::Data<Router>, query: web::Query<RouteQuery>) -> HttpResponse {
    let Some(user) = query.user.as_deref() else {
        return error_response(&ChatError::bad_request("missing query parameter `user`"));
    };
    let user = match UserId::parse(user) {
        Ok(u) => u,
        Err(e) => return error_response(&ChatError::from(e)),
    };
    let owner = router.leader_of(user.as_str());
    let listen = if owner == *router.node() {
        router.listen().to_string()
    } else {
        crate::net::cluster::members(&router)
            .into_iter()
            .find(|m| m.id == owner)
            .map(|m| m.listen)
            .unwrap_or_default()
    };
    HttpResponse::Ok().json(RouteResponse {
        node: owner.to_string(),
        ws: format!("ws://{listen}/ws"),
    })
}
