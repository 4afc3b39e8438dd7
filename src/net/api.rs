//! The server API (PROTOCOL.md, "Server API"): the product's own backend posts messages, reads
//! conversations, manages groups and logs users out or bans them, with `Authorization: Bearer ADMIN_KEY`.
//!
//! Every call goes through the router like a session's frames (a key owned by another node is a call on
//! the peer link to it) and through the same conversation and user cores, so validation, limits, dedupe
//! and system messages are the WebSocket frames'. Errors are `{"error":CODE,"message":TEXT}` with the
//! code's status ([`crate::error::ErrorCode::http_status`]).

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::actors::conversation::Range;
use crate::actors::group::{
    GroupView, ServerChangeMembers, ServerCreateGroup, ServerDescribeGroup,
};
use crate::actors::now_ms;
use crate::actors::server_api::{ServerFetch, ServerPost};
use crate::actors::user::{DescribeUser, DeviceInfo, Logout, SetBan};
use crate::cluster::Router;
use crate::error::{ChatError, ChatResult, ErrorCode};
use crate::ids::{Cid, ConvId, UserId};
use crate::net::http::{error_response, require_admin};

/// Default and largest page of `GET /v1/conversations/C/messages` (as `sync`).
const PAGE_DEFAULT: u64 = 100;
const PAGE_MAX: u64 = 1000;

/// `POST /v1/messages`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostMessageRequest {
    pub conv: ConvId,
    pub from: UserId,
    pub cid: Cid,
    /// Any JSON object.
    pub body: serde_json::Map<String, serde_json::Value>,
    /// Accepted as the contract allows; stored once the message features (replies, mentions) exist.
    #[serde(default)]
    pub reply_to: Option<u64>,
    #[serde(default)]
    pub mentions: Option<Vec<String>>,
}

/// The answer to `POST /v1/messages`.
#[derive(Debug, Serialize, Deserialize)]
pub struct PostedResponse {
    pub conv: ConvId,
    pub seq: u64,
    pub ts: u64,
}

/// The query of `GET /v1/conversations/C/messages`.
#[derive(Debug, Deserialize)]
pub struct MessagesQuery {
    pub after: Option<u64>,
    pub before: Option<u64>,
    pub limit: Option<u64>,
}

/// The answer to `GET /v1/conversations/C/messages`.
#[derive(Debug, Serialize)]
pub struct MessagesResponse {
    pub conv: ConvId,
    /// Stored messages, ascending by seq.
    pub msgs: Vec<Box<RawValue>>,
    pub last_seq: u64,
}

/// `POST /v1/groups`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateGroupRequest {
    pub conv: ConvId,
    pub name: String,
    pub owner: UserId,
    #[serde(default)]
    pub members: Vec<UserId>,
}

/// `POST /v1/groups/C/members`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeMembersRequest {
    #[serde(default)]
    pub add: Vec<UserId>,
    #[serde(default)]
    pub remove: Vec<UserId>,
}

/// The query of `GET /v1/groups/C`.
#[derive(Debug, Deserialize)]
pub struct GroupQuery {
    #[serde(default)]
    pub members: bool,
}

/// A group, as the `group` frame shows it (without `type` and `rid`).
#[derive(Debug, Serialize)]
pub struct GroupResponse {
    pub conv: ConvId,
    pub name: String,
    pub owner: UserId,
    pub count: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub members: Option<Vec<UserId>>,
}

impl GroupResponse {
    fn new(conv: ConvId, view: GroupView) -> GroupResponse {
        GroupResponse {
            conv,
            name: view.name,
            owner: view.owner,
            count: view.count,
            members: view.members,
        }
    }
}

/// The answer to `GET /v1/users/U`.
#[derive(Debug, Serialize)]
pub struct UserResponse {
    pub user: UserId,
    pub online: bool,
    pub devices: Vec<DeviceInfo>,
    pub banned: bool,
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> ChatResult<T> {
    serde_json::from_slice(body).map_err(|e| ChatError::bad_request(format!("invalid body: {e}")))
}

fn parse_query<T: serde::de::DeserializeOwned>(req: &HttpRequest) -> ChatResult<T> {
    web::Query::<T>::from_query(req.query_string())
        .map(web::Query::into_inner)
        .map_err(|e| ChatError::bad_request(format!("invalid query: {e}")))
}

fn parse_conv(raw: &str) -> ChatResult<ConvId> {
    Ok(ConvId::parse(raw)?)
}

fn parse_group(raw: &str) -> ChatResult<ConvId> {
    let conv = parse_conv(raw)?;
    if conv.is_direct() {
        return Err(ChatError::bad_request("groups take a group id (g:NAME)"));
    }
    Ok(conv)
}

fn respond<T: Serialize>(status: StatusCode, result: ChatResult<T>) -> HttpResponse {
    match result {
        Ok(value) => HttpResponse::build(status).json(value),
        Err(e) => error_response(&e),
    }
}

fn no_content(result: ChatResult<()>) -> HttpResponse {
    match result {
        Ok(()) => HttpResponse::NoContent().finish(),
        Err(e) => error_response(&e),
    }
}

/// Refuses a banned user's messages (`forbidden`).
async fn check_not_banned(router: &Router, user: &UserId) -> ChatResult<()> {
    let info = router.ask_user(user, DescribeUser).await?;
    if info.banned {
        return Err(ChatError::forbidden(format!("{user} is banned")));
    }
    Ok(())
}

/// `POST /v1/messages`: stored and pushed as if `from` had sent it.
pub async fn post_message(
    req: HttpRequest,
    router: web::Data<Router>,
    body: web::Bytes,
) -> HttpResponse {
    if let Err(e) = require_admin(&req, &router) {
        return error_response(&e);
    }
    let result = async {
        let request: PostMessageRequest = parse_json(&body)?;
        let json = serde_json::Value::Object(request.body).to_string();
        let max = router.config().limits.max_body_bytes;
        if json.len() > max {
            return Err(ChatError::new(
                ErrorCode::TooLarge,
                format!("body is over {max} bytes"),
            ));
        }
        let body =
            RawValue::from_string(json).map_err(|_| ChatError::bad_request("body is not JSON"))?;
        check_not_banned(&router, &request.from).await?;
        let post = ServerPost {
            from: request.from,
            cid: request.cid,
            body,
        };
        let posted = crate::webhooks::before_send::post(&router, &request.conv, post).await??;
        Ok(PostedResponse {
            conv: request.conv,
            seq: posted.seq,
            ts: posted.ts,
        })
    }
    .await;
    respond(StatusCode::OK, result)
}

/// `GET /v1/conversations/C/messages`: as `sync`, for any conversation.
pub async fn messages(
    req: HttpRequest,
    router: web::Data<Router>,
    path: web::Path<String>,
) -> HttpResponse {
    if let Err(e) = require_admin(&req, &router) {
        return error_response(&e);
    }
    let result = async {
        let conv = parse_conv(&path)?;
        let query: MessagesQuery = parse_query(&req)?;
        let limit = match query.limit {
            Some(0) => return Err(ChatError::bad_request("limit must be at least 1")),
            Some(n) => n.min(PAGE_MAX),
            None => PAGE_DEFAULT,
        };
        let range = match (query.after, query.before) {
            (Some(_), Some(_)) => {
                return Err(ChatError::bad_request("give `after` or `before`, not both"))
            }
            (_, Some(before)) => Range::Before(before),
            (after, None) => Range::After(after.unwrap_or(0)),
        };
        let limit = usize::try_from(limit).unwrap_or(1000);
        let fetched = router
            .ask_conv(&conv, ServerFetch { range, limit })
            .await??;
        Ok(MessagesResponse {
            conv,
            msgs: fetched.msgs,
            last_seq: fetched.last_seq,
        })
    }
    .await;
    respond(StatusCode::OK, result)
}

/// `POST /v1/groups` → 201 with the group.
pub async fn create_group(
    req: HttpRequest,
    router: web::Data<Router>,
    body: web::Bytes,
) -> HttpResponse {
    if let Err(e) = require_admin(&req, &router) {
        return error_response(&e);
    }
    let result = async {
        let request: CreateGroupRequest = parse_json(&body)?;
        if request.conv.is_direct() {
            return Err(ChatError::bad_request("groups take a group id (g:NAME)"));
        }
        let create = ServerCreateGroup {
            owner: request.owner,
            name: request.name,
            members: request.members,
        };
        let view = router.ask_conv(&request.conv, create).await??;
        Ok(GroupResponse::new(request.conv, view))
    }
    .await;
    respond(StatusCode::CREATED, result)
}

/// `POST /v1/groups/C/members`: `add`, then `remove`, as the owner.
pub async fn change_members(
    req: HttpRequest,
    router: web::Data<Router>,
    path: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    if let Err(e) = require_admin(&req, &router) {
        return error_response(&e);
    }
    let result = async {
        let conv = parse_group(&path)?;
        let request: ChangeMembersRequest = parse_json(&body)?;
        let change = ServerChangeMembers {
            add: request.add,
            remove: request.remove,
        };
        let view = router.ask_conv(&conv, change).await??;
        Ok(GroupResponse::new(conv, view))
    }
    .await;
    respond(StatusCode::OK, result)
}

/// `GET /v1/groups/C?members=true`.
pub async fn group(
    req: HttpRequest,
    router: web::Data<Router>,
    path: web::Path<String>,
) -> HttpResponse {
    if let Err(e) = require_admin(&req, &router) {
        return error_response(&e);
    }
    let result = async {
        let conv = parse_group(&path)?;
        let query: GroupQuery = parse_query(&req)?;
        let describe = ServerDescribeGroup {
            members: query.members,
        };
        let view = router.ask_conv(&conv, describe).await??;
        Ok(GroupResponse::new(conv, view))
    }
    .await;
    respond(StatusCode::OK, result)
}

/// `GET /v1/users/U`.
pub async fn user(
    req: HttpRequest,
    router: web::Data<Router>,
    path: web::Path<String>,
) -> HttpResponse {
    if let Err(e) = require_admin(&req, &router) {
        return error_response(&e);
    }
    let result = async {
        let user = UserId::parse(&path)?;
        let info = router.ask_user(&user, DescribeUser).await?;
        Ok(UserResponse {
            user,
            online: info.online,
            devices: info.devices,
            banned: info.banned,
        })
    }
    .await;
    respond(StatusCode::OK, result)
}

/// `POST /v1/users/U/logout` → 204: every device closed, every older token refused, on every node.
pub async fn logout(
    req: HttpRequest,
    router: web::Data<Router>,
    path: web::Path<String>,
) -> HttpResponse {
    if let Err(e) = require_admin(&req, &router) {
        return error_response(&e);
    }
    let result = async {
        let user = UserId::parse(&path)?;
        router.ask_user(&user, Logout { at_ms: now_ms() }).await
    }
    .await;
    no_content(result)
}

/// `PUT /v1/users/U/ban` → 204.
pub async fn ban(
    req: HttpRequest,
    router: web::Data<Router>,
    path: web::Path<String>,
) -> HttpResponse {
    set_ban(req, router, path, true).await
}

/// `DELETE /v1/users/U/ban` → 204.
pub async fn unban(
    req: HttpRequest,
    router: web::Data<Router>,
    path: web::Path<String>,
) -> HttpResponse {
    set_ban(req, router, path, false).await
}

async fn set_ban(
    req: HttpRequest,
    router: web::Data<Router>,
    path: web::Path<String>,
    banned: bool,
) -> HttpResponse {
    if let Err(e) = require_admin(&req, &router) {
        return error_response(&e);
    }
    let result = async {
        let user = UserId::parse(&path)?;
        router.ask_user(&user, SetBan { banned }).await
    }
    .await;
    no_content(result)
}

/// The server API's routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/messages", web::post().to(post_message))
        .route("/v1/conversations/{conv}/messages", web::get().to(messages))
        .route("/v1/groups", web::post().to(create_group))
        .route("/v1/groups/{conv}/members", web::post().to(change_members))
        .route("/v1/groups/{conv}", web::get().to(group))
        .route("/v1/users/{user}", web::get().to(user))
        .route("/v1/users/{user}/logout", web::post().to(logout))
        .route("/v1/users/{user}/ban", web::put().to(ban))
        .route("/v1/users/{user}/ban", web::delete().to(unban));
}
