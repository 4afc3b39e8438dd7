//! The cluster's membership over HTTP (admin key): `GET /v1/admin/cluster`, `POST /v1/admin/nodes`,
//! `DELETE /v1/admin/nodes/{id}` (PROTOCOL.md, "Replication, failover and membership").
//!
//! Any member answers. A change is validated against this node's record, proposed to the metadata group
//! (through its leader) and answered `202` once this node has applied it; the partitions then move in the
//! background, and `moving` in `GET /v1/admin/cluster` counts down to 0.

use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::cluster::membership::{Member, MemberCommand, MemberError, MemberState};
use crate::cluster::peer::LinkState;
use crate::cluster::Router;
use crate::error::{ChatError, ErrorCode};
use crate::ids::NodeId;
use crate::net::http::{error_response, partition_leaders, require_admin, ErrorBody};

/// How often a proposed change is looked for in this node's record, and proposed again.
const POLL: Duration = Duration::from_millis(20);
const REPROPOSE: Duration = Duration::from_millis(500);

/// The members as this node's record lists them; a node that joins and has no record yet lists itself.
pub fn members(router: &Router) -> Vec<Member> {
    if let Some(m) = router
        .replication()
        .and_then(|r| r.layout().membership().map(|m| m.members.clone()))
    {
        return m;
    }
    let me = router.config().node(Some(router.node().as_str())).ok();
    vec![Member {
        id: router.node().clone(),
        listen: me.map(|n| n.listen.clone()).unwrap_or_default(),
        peer: me.map(|n| n.peer.clone()).unwrap_or_default(),
        state: MemberState::Joining,
    }]
}

/// A member of the cluster in `GET /v1/admin/cluster`.
#[derive(Serialize, ToSchema)]
pub struct ClusterNode {
    id: String,
    listen: String,
    peer: String,
    /// This node itself, or its link to the node is up.
    up: bool,
    /// `active`, `joining` or `leaving`.
    state: &'static str,
}

/// A partition's replicas (the preferred leader first) and its leader as the answering node knows it.
#[derive(Serialize, ToSchema)]
pub struct PartitionEntry {
    id: u32,
    replicas: Vec<String>,
    leader: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ClusterView {
    /// Grows with every change of the membership.
    epoch: u64,
    nodes: Vec<ClusterNode>,
    partitions: Vec<PartitionEntry>,
    /// Partitions whose replicas are not yet where the membership wants them.
    moving: u64,
}

fn view(router: &Router) -> ClusterView {
    let me = router.node();
    let layout = router.replication().map(|r| r.layout());
    let nodes = members(router)
        .into_iter()
        .map(|m| ClusterNode {
            up: m.id == *me
                || router
                    .peer(&m.id)
                    .is_some_and(|p| p.state() == LinkState::Up),
            id: m.id.to_string(),
            listen: m.listen,
            peer: m.peer,
            state: m.state.as_str(),
        })
        .collect();
    let leaders = partition_leaders(router);
    let partitions = layout
        .as_ref()
        .filter(|l| l.membership().is_some())
        .map(|layout| {
            (0..layout.partitions())
                .map(|p| PartitionEntry {
                    id: p,
                    replicas: layout.replicas(p).iter().map(ToString::to_string).collect(),
                    leader: leaders
                        .get(p as usize)
                        .cloned()
                        .flatten()
                        .map(|l| l.to_string()),
                })
                .collect()
        })
        .unwrap_or_default();
    ClusterView {
        epoch: layout
            .as_ref()
            .and_then(|l| l.membership().map(|m| m.epoch))
            .unwrap_or(0),
        nodes,
        partitions,
        moving: layout.map_or(0, |l| l.moving() as u64),
    }
}

/// The membership, every partition's replicas and leader, and how many partitions are moving.
#[utoipa::path(get, path = "/v1/admin/cluster", tag = "cluster", security(("admin_key" = [])),
    responses((status = 200, body = ClusterView), (status = 401, body = ErrorBody)))]
pub async fn admin_cluster(req: HttpRequest, router: web::Data<Router>) -> HttpResponse {
    if let Err(e) = require_admin(&req, &router) {
        return error_response(&e);
    }
    HttpResponse::Ok().json(view(&router))
}

/// A node to add.
#[derive(Deserialize, ToSchema)]
pub struct NewNode {
    id: String,
    /// Its client address (`listen` in its `[[nodes]]` entry).
    listen: String,
    /// Its peer address.
    peer: String,
}

/// Adds a node: it becomes `joining` and receives its share of the partitions (started with
/// `rookery --config F --node ID --join A`), then `active`. Repeating the call changes nothing.
#[utoipa::path(post, path = "/v1/admin/nodes", tag = "cluster", security(("admin_key" = [])),
    request_body = NewNode,
    responses((status = 202, body = ClusterView), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn add_node(
    req: HttpRequest,
    router: web::Data<Router>,
    body: web::Bytes,
) -> HttpResponse {
    if let Err(e) = require_admin(&req, &router) {
        return error_response(&e);
    }
    let node: NewNode = match serde_json::from_slice(&body) {
        Ok(n) => n,
        Err(e) => {
            return error_response(&ChatError::bad_request(format!(
                "expected {{\"id\",\"listen\",\"peer\"}}: {e}"
            )))
        }
    };
    let id = match NodeId::parse(&node.id) {
        Ok(id) => id,
        Err(e) => return error_response(&ChatError::bad_request(format!("`id`: {e}"))),
    };
    for (field, addr) in [("listen", &node.listen), ("peer", &node.peer)] {
        if addr.parse::<std::net::SocketAddr>().is_err() {
            return error_response(&ChatError::bad_request(format!(
                "`{field}` must be HOST:PORT with an IP address, got {addr:?}"
            )));
        }
    }
    let command = MemberCommand::Add {
        id: id.clone(),
        listen: node.listen,
        peer: node.peer,
    };
    change(&router, command, move |m| {
        m.member(&id)
            .is_some_and(|m| m.state != MemberState::Leaving)
    })
    .await
}

/// Removes a node: its partitions move to the other nodes and its leaderships are handed over; once
/// `moving` is 0 it holds nothing, is no longer listed, and may be stopped. A dead node's replicas are
/// rebuilt from the live copies.
#[utoipa::path(delete, path = "/v1/admin/nodes/{id}", tag = "cluster", security(("admin_key" = [])),
    params(("id" = String, Path, description = "the node's id")),
    responses((status = 202, body = ClusterView), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn remove_node(
    req: HttpRequest,
    router: web::Data<Router>,
    path: web::Path<String>,
) -> HttpResponse {
    if let Err(e) = require_admin(&req, &router) {
        return error_response(&e);
    }
    let id = match NodeId::parse(&path) {
        Ok(id) => id,
        Err(e) => return error_response(&ChatError::not_found(format!("no node {path:?}: {e}"))),
    };
    let command = MemberCommand::Remove { id: id.clone() };
    change(&router, command, move |m| {
        m.member(&id)
            .is_none_or(|m| m.state == MemberState::Leaving)
    })
    .await
}

/// Checks `command` against this node's record, proposes it, and answers `202` with the cluster once
/// `done` holds for the record here (proposing again while the metadata group elects a leader), or
/// `unavailable` after an election timeout and a second.
async fn change(
    router: &Router,
    command: MemberCommand,
    done: impl Fn(&crate::cluster::membership::Membership) -> bool,
) -> HttpResponse {
    let Some(replication) = router.replication().cloned() else {
        return error_response(&ChatError::unavailable("replication has not started"));
    };
    let layout = replication.layout();
    let Some(record) = layout.membership() else {
        return error_response(&ChatError::unavailable(
            "this node has not received the cluster's membership yet; ask a member",
        ));
    };
    if let Err(e) = record.clone().apply(&command, layout.shape()) {
        return error_response(&refusal(&e));
    }
    if done(record) {
        return HttpResponse::Accepted().json(view(router));
    }
    let deadline = tokio::time::Instant::now()
        + router.config().cluster.election_timeout()
        + Duration::from_secs(1);
    let mut next = tokio::time::Instant::now();
    loop {
        let now = tokio::time::Instant::now();
        if replication.layout().membership().is_some_and(&done) {
            return HttpResponse::Accepted().json(view(router));
        }
        if now >= deadline {
            return error_response(&ChatError::unavailable(
                "the membership change was not committed in time (is a majority of the nodes up?); \
                 try again",
            ));
        }
        if now >= next {
            replication.propose_meta(&command);
            next = now + REPROPOSE;
        }
        tokio::time::sleep(POLL).await;
    }
}

fn refusal(e: &MemberError) -> ChatError {
    let code = match e {
        MemberError::Unknown(_) | MemberError::NoPartition(_) => ErrorCode::NotFound,
        MemberError::Full => ErrorCode::Limit,
        MemberError::Conflict(_)
        | MemberError::AddressTaken(..)
        | MemberError::Leaving(_)
        | MemberError::Last(_) => ErrorCode::Conflict,
    };
    ChatError::new(code, e.to_string())
}
