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
use utoipa::{IntoParams, ToSchema};

use crate::actors::conversation::Range;
use crate::actors::group::{
    GroupView, ServerChangeMembers, ServerCreateGroup, ServerDescribeGroup,
};
use crate::actors::now_ms;
use crate::actors::server_api::{ServerFetch, ServerPost};
use crate::actors::user::{DescribeUser, DeviceInfo, Logout, SetBan};
use crate::cluster::Router;
use crate::error::{ChatError, ChatResult};
use crate::ids::{Cid, ConvId, UserId};
use crate::net::http::{error_response, require_admin, ErrorBody};

/// Default and largest page of `GET /v1/conversations/C/messages` (as `sync`).
const PAGE_DEFAULT: u64 = 100;
const PAGE_MAX: u64 = 1000;

/// `POST /v1/messages`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PostMessageRequest {
    /// `dm:A:B` or `g:NAME`.
    #[schema(value_type = String, example = "dm:alice:bob")]
    pub conv: ConvId,
    /// The member the message is sent as.
    #[schema(value_type = String, example = "alice")]
    pub from: UserId,
    /// Unique per sender and conversation (1 to 64 characters): the same again stores nothing.
    #[schema(value_type = String, example = "c-81")]
    pub cid: Cid,
    /// Any JSON object.
    #[schema(value_type = Object)]
    pub body: serde_json::Map<String, serde_json::Value>,
    /// An earlier message of the conversation this one answers (else 400).
    #[serde(default)]
    pub reply_to: Option<u64>,
    /// Members the message mentions (at most 100), or `["*"]` (everyone; in a group the owner only).
    #[serde(default)]
    #[schema(value_type = Option<Vec<String>>)]
    pub mentions: Option<Vec<crate::net::protocol::Mention>>,
}

/// The answer to `POST /v1/messages`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PostedResponse {
    #[schema(value_type = String)]
    pub conv: ConvId,
    pub seq: u64,
    /// Unix milliseconds.
    pub ts: u64,
}

/// The query of `GET /v1/conversations/C/messages`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MessagesQuery {
    pub after: Option<u64>,
    pub before: Option<u64>,
    pub limit: Option<u64>,
}

/// The answer to `GET /v1/conversations/C/messages`.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessagesResponse {
    #[schema(value_type = String)]
    pub conv: ConvId,
    /// Stored messages, ascending by seq.
    #[schema(value_type = Vec<Object>)]
    pub msgs: Vec<Box<RawValue>>,
    pub last_seq: u64,
}

/// `POST /v1/groups`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateGroupRequest {
    #[schema(value_type = String, example = "g:team")]
    pub conv: ConvId,
    pub name: String,
    #[schema(value_type = String)]
    pub owner: UserId,
    #[serde(default)]
    #[schema(value_type = Vec<String>)]
    pub members: Vec<UserId>,
}

/// `POST /v1/groups/C/members`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeMembersRequest {
    #[serde(default)]
    #[schema(value_type = Vec<String>)]
    pub add: Vec<UserId>,
    #[serde(default)]
    #[schema(value_type = Vec<String>)]
    pub remove: Vec<UserId>,
}

/// The query of `GET /v1/groups/C`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct GroupQuery {
    #[serde(default)]
    pub members: bool,
}

/// A group, as the `group` frame shows it (without `type` and `rid`).
#[derive(Debug, Serialize, ToSchema)]
pub struct GroupResponse {
    #[schema(value_type = String)]
    pub conv: ConvId,
    pub name: String,
    #[schema(value_type = String)]
    pub owner: UserId,
    pub count: u64,
    /// Sorted; only when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<String>>)]
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
#[derive(Debug, Serialize, ToSchema)]
pub struct UserResponse {
    #[schema(value_type = String)]
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

/// Every server API call: the admin key first (401 without it, and `work` never runs), then `work`'s
/// answer as JSON with `status`, or its error with the error's status.
async fn admin<T: Serialize>(
    req: &HttpRequest,
    router: &Router,
    status: StatusCode,
    work: impl std::future::Future<Output = ChatResult<T>>,
) -> HttpResponse {
    match require_admin(req, router) {
        Ok(()) => respond(status, work.await),
        Err(e) => error_response(&e),
    }
}

/// [`admin`] for calls answered `204 No Content`.
async fn admin_no_content(
    req: &HttpRequest,
    router: &Router,
    work: impl std::future::Future<Output = ChatResult<()>>,
) -> HttpResponse {
    match require_admin(req, router) {
        Ok(()) => no_content(work.await),
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
#[utoipa::path(post, path = "/v1/messages", tag = "server API", security(("admin_key" = [])),
    request_body = PostMessageRequest,
    responses((status = 200, body = PostedResponse), (status = 413, body = ErrorBody), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn post_message(
    req: HttpRequest,
    router: web::Data<Router>,
    body: web::Bytes,
) -> HttpResponse {
    admin(&req, &router, StatusCode::OK, async {
        let request: PostMessageRequest = parse_json(&body)?;
        let max = router.config().limits.max_body_bytes;
        let body = crate::net::protocol::message_body(request.body, max)?;
        check_not_banned(&router, &request.from).await?;
        let post = ServerPost {
            from: request.from,
            cid: request.cid,
            body,
            reply_to: request.reply_to,
            mentions: request.mentions,
        };
        let posted = crate::webhooks::before_send::post(&router, &request.conv, post).await??;
        Ok(PostedResponse {
            conv: request.conv,
            seq: posted.seq,
            ts: posted.ts,
        })
    })
    .await
}

/// `GET /v1/conversations/C/messages`: as `sync`, for any conversation.
#[utoipa::path(get, path = "/v1/conversations/{conv}/messages", tag = "server API", security(("admin_key" = [])),
    params(("conv" = String, Path, description = "a conversation id as it is, e.g. dm:alice:bob"), MessagesQuery),
    responses((status = 200, body = MessagesResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn messages(
    req: HttpRequest,
    router: web::Data<Router>,
    path: web::Path<String>,
) -> HttpResponse {
    admin(&req, &router, StatusCode::OK, async {
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
    })
    .await
}

/// `POST /v1/groups` → 201 with the group.
#[utoipa::path(post, path = "/v1/groups", tag = "server API", security(("admin_key" = [])),
    request_body = CreateGroupRequest,
    responses((status = 201, body = GroupResponse), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn create_group(
    req: HttpRequest,
    router: web::Data<Router>,
    body: web::Bytes,
) -> HttpResponse {
    admin(&req, &router, StatusCode::CREATED, async {
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
    })
    .await
}

/// `POST /v1/groups/C/members`: `add`, then `remove`, as the owner.
#[utoipa::path(post, path = "/v1/groups/{conv}/members", tag = "server API", security(("admin_key" = [])),
    params(("conv" = String, Path, description = "a group id, g:NAME")),
    request_body = ChangeMembersRequest,
    responses((status = 200, body = GroupResponse), (status = 422, body = ErrorBody), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn change_members(
    req: HttpRequest,
    router: web::Data<Router>,
    path: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    admin(&req, &router, StatusCode::OK, async {
        let conv = parse_group(&path)?;
        let request: ChangeMembersRequest = parse_json(&body)?;
        let change = ServerChangeMembers {
            add: request.add,
            remove: request.remove,
        };
        let view = router.ask_conv(&conv, change).await??;
        Ok(GroupResponse::new(conv, view))
    })
    .await
}

/// `GET /v1/groups/C?members=true`.
#[utoipa::path(get, path = "/v1/groups/{conv}", tag = "server API", security(("admin_key" = [])),
    params(("conv" = String, Path, description = "a group id, g:NAME"), GroupQuery),
    responses((status = 200, body = GroupResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn group(
    req: HttpRequest,
    router: web::Data<Router>,
    path: web::Path<String>,
) -> HttpResponse {
    admin(&req, &router, StatusCode::OK, async {
        let conv = parse_group(&path)?;
        let query: GroupQuery = parse_query(&req)?;
        let describe = ServerDescribeGroup {
            members: query.members,
        };
        let view = router.ask_conv(&conv, describe).await??;
        Ok(GroupResponse::new(conv, view))
    })
    .await
}

/// `GET /v1/users/U`.
#[utoipa::path(get, path = "/v1/users/{user}", tag = "server API", security(("admin_key" = [])),
    params(("user" = String, Path)),
    responses((status = 200, body = UserResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn user(
    req: HttpRequest,
    router: web::Data<Router>,
    path: web::Path<String>,
) -> HttpResponse {
    admin(&req, &router, StatusCode::OK, async {
        let user = UserId::parse(&path)?;
        let info = router.ask_user(&user, DescribeUser).await?;
        Ok(UserResponse {
            user,
            online: info.online,
            devices: info.devices,
            banned: info.banned,
        })
    })
    .await
}

/// `POST /v1/users/U/logout` → 204: every device closed, every older token refused, on every node.
#[utoipa::path(post, path = "/v1/users/{user}/logout", tag = "server API", security(("admin_key" = [])),
    params(("user" = String, Path)),
    responses((status = 204, description = "every device closed, older tokens refused"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn logout(
    req: HttpRequest,
    router: web::Data<Router>,
    path: web::Path<String>,
) -> HttpResponse {
    admin_no_content(&req, &router, async {
        let user = UserId::parse(&path)?;
        router.ask_user(&user, Logout { at_ms: now_ms() }).await
    })
    .await
}

/// `PUT /v1/users/U/ban` → 204.
#[utoipa::path(put, path = "/v1/users/{user}/ban", tag = "server API", security(("admin_key" = [])),
    params(("user" = String, Path)),
    responses((status = 204, description = "banned: devices closed, auth refused"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn ban(
    req: HttpRequest,
    router: web::Data<Router>,
    path: web::Path<String>,
) -> HttpResponse {
    set_ban(req, router, path, true).await
}

/// `DELETE /v1/users/U/ban` → 204.
#[utoipa::path(delete, path = "/v1/users/{user}/ban", tag = "server API", security(("admin_key" = [])),
    params(("user" = String, Path)),
    responses((status = 204, description = "the ban is lifted"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
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
    admin_no_content(&req, &router, async {
        let user = UserId::parse(&path)?;
        router.ask_user(&user, SetBan { banned }).await
    })
    .await
}
