//! Groups. A group `g:NAME` is a conversation actor ([`ConvActor`]) with a member set and a name and owner:
//! its messages, sequence, receipts and durability are the conversation's. This file holds the group
//! operations (create, add, remove, leave, info) as messages to that actor. Every membership change is stored
//! one key per member (never a rewrite of the list) and enters the timeline as a system message.
//!
//! Large groups (over `push_max_members`) are stored once and announced with a coalesced `notify`
//! (see `ConvActor::complete`); typing is not fanned out there, and read events reach other members only up
//! to `receipt_push_max_members`.

use std::sync::Arc;

use actix::prelude::*;
use futures_util::future::join_all;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::conversation::{ConvActor, Posted};
use super::now_ms;
use super::pull::PullView;
use super::user::{AddConv, RemoveConv};
use crate::cluster::Router;
use crate::error::{ChatError, ChatResult};
use crate::ids::{ConvId, DeviceId, UserId};
use crate::state::conv::{ConvCommand, Outcome};
pub use crate::state::conv::{MAX_GROUP_NAME, MAX_MEMBERS_PER_FRAME};

/// Create the group with `user` as owner; answered once the `created` message is durable.
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "ChatResult<GroupView>")]
pub struct CreateGroup {
    pub user: UserId,
    pub device: DeviceId,
    pub name: String,
    pub members: Vec<UserId>,
}

/// Add (`add`) or remove members; owner only.
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "ChatResult<GroupView>")]
pub struct ChangeMembers {
    pub user: UserId,
    pub device: DeviceId,
    pub members: Vec<UserId>,
    pub add: bool,
}

/// `user` leaves the group.
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "ChatResult<()>")]
pub struct LeaveGroup {
    pub user: UserId,
    pub device: DeviceId,
}

/// The group's description (with its member list when `members`).
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "ChatResult<GroupView>")]
pub struct DescribeGroup {
    pub user: UserId,
    pub members: bool,
}

/// Create the group for the product's backend (server API): as [`CreateGroup`] by `owner`, caused by no
/// device (every device of every member gets the `created` message).
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "ChatResult<GroupView>")]
pub struct ServerCreateGroup {
    pub owner: UserId,
    pub name: String,
    pub members: Vec<UserId>,
}

/// Add `add`, then remove `remove` (server API), each as the owner's `group_add` / `group_remove` would;
/// an empty list changes nothing. Answered with the group after both.
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "ChatResult<GroupView>")]
pub struct ServerChangeMembers {
    pub add: Vec<UserId>,
    pub remove: Vec<UserId>,
}

/// The group's description for the product's backend (no membership needed).
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "ChatResult<GroupView>")]
pub struct ServerDescribeGroup {
    pub members: bool,
}

/// What a `group` frame shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupView {
    pub name: String,
    pub owner: UserId,
    pub count: u64,
    pub members: Option<Vec<UserId>>,
}

impl ConvActor {
    fn view(&self, with_members: bool) -> ChatResult<GroupView> {
        let meta = self.state.group.as_ref().ok_or_else(|| {
            ChatError::not_found(format!("group {} does not exist", self.state.id))
        })?;
        let members = with_members.then(|| {
            let mut list: Vec<UserId> = self.state.members.iter().cloned().collect();
            list.sort();
            list
        });
        Ok(GroupView {
            name: meta.name.clone(),
            owner: meta.owner.clone(),
            count: self.state.members.len() as u64,
            members,
        })
    }

    /// Applies a group command. A membership change is published like a message (its system message is
    /// `sent` after the flush and fanned out, to the members it took out too); the answer waits for that and
    /// for the changed members' conversation indexes.
    fn change_group(
        &mut self,
        ctx: &mut Context<Self>,
        cmd: ConvCommand,
        device: Option<DeviceId>,
    ) -> ResponseFuture<ChatResult<GroupView>> {
        let (appended, changed, add) = match self.execute(cmd) {
            Ok(Outcome::Group {
                appended,
                changed,
                add,
            }) => (appended, changed, add),
            Ok(_) => return Box::pin(std::future::ready(self.view(false))),
            Err(e) => return failed(e),
        };
        match &self.view {
            Some(view) => view.change_members(&changed, add),
            None => {
                let view = Arc::new(PullView::new(
                    self.state.id.clone(),
                    self.state.members.clone(),
                    self.published_seq(),
                ));
                self.router.register_view(&self.state.id, view.clone());
                self.view = Some(view);
            }
        }
        let (tx, sent) = oneshot::channel();
        self.accepted(ctx, tx, appended, device);
        let view = match self.view(false) {
            Ok(v) => v,
            Err(e) => return failed(e),
        };
        answer(
            self.router.clone(),
            self.state.id.clone(),
            changed,
            add,
            sent,
            view,
        )
    }
}

/// Adds `conv` to (or removes it from) each user's conversation index, concurrently.
async fn index(router: &Router, conv: &ConvId, users: &[UserId], add: bool) {
    let asks = users.iter().map(|u| {
        let conv = conv.clone();
        async move {
            if add {
                router.ask_user(u, AddConv { conv }).await
            } else {
                router.ask_user(u, RemoveConv { conv }).await
            }
        }
    });
    for result in join_all(asks).await {
        if let Err(e) = result {
            tracing::warn!(conv = %conv, error = %e, "cannot update a member's conversation index");
        }
    }
}

/// Waits for the change's system message to be durable (and the indexes updated), then answers.
fn answer<T: Send + 'static>(
    router: Router,
    conv: ConvId,
    index_users: Vec<UserId>,
    add: bool,
    sent: oneshot::Receiver<ChatResult<Posted>>,
    value: T,
) -> ResponseFuture<ChatResult<T>> {
    Box::pin(async move {
        index(&router, &conv, &index_users, add).await;
        sent.await
            .unwrap_or_else(|_| Err(ChatError::unavailable("conversation stopped")))?;
        Ok(value)
    })
}

fn failed<T: 'static>(e: ChatError) -> ResponseFuture<ChatResult<T>> {
    Box::pin(async move { Err(e) })
}

impl Handler<CreateGroup> for ConvActor {
    type Result = ResponseFuture<ChatResult<GroupView>>;

    fn handle(&mut self, msg: CreateGroup, ctx: &mut Context<Self>) -> Self::Result {
        self.touch();
        let cmd = ConvCommand::CreateGroup {
            owner: msg.user,
            name: msg.name,
            members: msg.members,
            ts: now_ms(),
        };
        self.change_group(ctx, cmd, Some(msg.device))
    }
}

impl Handler<ChangeMembers> for ConvActor {
    type Result = ResponseFuture<ChatResult<GroupView>>;

    fn handle(&mut self, msg: ChangeMembers, ctx: &mut Context<Self>) -> Self::Result {
        self.touch();
        let cmd = ConvCommand::ChangeMembers {
            user: msg.user,
            members: msg.members,
            add: msg.add,
            ts: now_ms(),
        };
        self.change_group(ctx, cmd, Some(msg.device))
    }
}

impl Handler<LeaveGroup> for ConvActor {
    type Result = ResponseFuture<ChatResult<()>>;

    fn handle(&mut self, msg: LeaveGroup, ctx: &mut Context<Self>) -> Self::Result {
        self.touch();
        let cmd = ConvCommand::Leave {
            user: msg.user,
            ts: now_ms(),
        };
        let done = self.change_group(ctx, cmd, Some(msg.device));
        Box::pin(async move { done.await.map(|_| ()) })
    }
}

impl Handler<DescribeGroup> for ConvActor {
    type Result = ChatResult<GroupView>;

    fn handle(&mut self, msg: DescribeGroup, _: &mut Context<Self>) -> ChatResult<GroupView> {
        self.touch();
        self.check_member(&msg.user)?;
        self.view(msg.members)
    }
}

impl Handler<ServerCreateGroup> for ConvActor {
    type Result = ResponseFuture<ChatResult<GroupView>>;

    fn handle(&mut self, msg: ServerCreateGroup, ctx: &mut Context<Self>) -> Self::Result {
        self.touch();
        let cmd = ConvCommand::CreateGroup {
            owner: msg.owner,
            name: msg.name,
            members: msg.members,
            ts: now_ms(),
        };
        self.change_group(ctx, cmd, None)
    }
}

impl Handler<ServerChangeMembers> for ConvActor {
    type Result = ResponseFuture<ChatResult<GroupView>>;

    fn handle(&mut self, msg: ServerChangeMembers, ctx: &mut Context<Self>) -> Self::Result {
        self.touch();
        let owner = match &self.state.group {
            Some(meta) => meta.owner.clone(),
            None => {
                let e = ChatError::not_found(format!("group {} does not exist", self.state.id));
                return failed(e);
            }
        };
        let mut steps = Vec::new();
        for (members, add) in [(msg.add, true), (msg.remove, false)] {
            if members.is_empty() {
                continue;
            }
            let cmd = ConvCommand::ChangeMembers {
                user: owner.clone(),
                members,
                add,
                ts: now_ms(),
            };
            steps.push(self.change_group(ctx, cmd, None));
        }
        let view = self.view(false);
        Box::pin(async move {
            for step in steps {
                step.await?;
            }
            view
        })
    }
}

impl Handler<ServerDescribeGroup> for ConvActor {
    type Result = ChatResult<GroupView>;

    fn handle(&mut self, msg: ServerDescribeGroup, _: &mut Context<Self>) -> Self::Result {
        self.touch();
        self.view(msg.members)
    }
}
