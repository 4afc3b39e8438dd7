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
use serde_json::json;
use tokio::sync::oneshot;

use super::conversation::{ConvActor, NewMessage};
use super::pull::PullView;
use super::user::{AddConv, RemoveConv};
use crate::cluster::Router;
use crate::error::{ChatError, ChatResult, ErrorCode};
use crate::ids::{ConvId, DeviceId, UserId};
use crate::store::GroupMeta;

/// Most members one frame may add or remove.
pub const MAX_MEMBERS_PER_FRAME: usize = 1000;
/// Longest group display name, in characters.
pub const MAX_GROUP_NAME: usize = 128;

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
        let meta = self
            .group
            .as_ref()
            .ok_or_else(|| ChatError::not_found(format!("group {} does not exist", self.id)))?;
        let members = with_members.then(|| {
            let mut list: Vec<UserId> = self.members.iter().cloned().collect();
            list.sort();
            list
        });
        Ok(GroupView {
            name: meta.name.clone(),
            owner: meta.owner.clone(),
            count: self.members.len() as u64,
            members,
        })
    }

    fn check_owner(&self, user: &UserId) -> ChatResult<()> {
        self.check_member(user)?;
        match &self.group {
            Some(meta) if meta.owner == *user => Ok(()),
            _ => Err(ChatError::forbidden("only the group's owner may do that")),
        }
    }

    /// Appends a system message by `user` and returns the receiver of its `sent`.
    fn system_message(
        &mut self,
        ctx: &mut Context<Self>,
        user: &UserId,
        device: DeviceId,
        event: &str,
        members: &[UserId],
        also: Vec<UserId>,
    ) -> ChatResult<oneshot::Receiver<ChatResult<super::conversation::Posted>>> {
        let (tx, rx) = oneshot::channel();
        let (seq, ts) = self.next_slot();
        let message = NewMessage {
            seq,
            ts,
            from: user.clone(),
            device: Some(device),
            cid: None,
            body: None,
            system: Some(json!({"event": event, "members": members})),
            also,
        };
        self.append(ctx, tx, message)?;
        Ok(rx)
    }
}

impl ConvActor {
    /// Records a membership change (`changed`, added when `add`) as a system message by `user` and answers with
    /// the group once that message is durable and the changed members' indexes are updated. Members a change
    /// takes out still get its message.
    fn announce(
        &mut self,
        ctx: &mut Context<Self>,
        user: &UserId,
        device: DeviceId,
        event: &str,
        changed: Vec<UserId>,
        add: bool,
    ) -> ResponseFuture<ChatResult<GroupView>> {
        let also = if add { Vec::new() } else { changed.clone() };
        let sent = match self.system_message(ctx, user, device, event, &changed, also) {
            Ok(rx) => rx,
            Err(e) => return failed(e),
        };
        let view = match self.view(false) {
            Ok(v) => v,
            Err(e) => return failed(e),
        };
        answer(
            self.router.clone(),
            self.id.clone(),
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
    sent: oneshot::Receiver<ChatResult<super::conversation::Posted>>,
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
        if self.id.is_direct() {
            return failed(ChatError::bad_request(
                "group frames take a group id (g:NAME)",
            ));
        }
        if self.group.is_some() || self.last_seq > 0 {
            return failed(ChatError::new(
                ErrorCode::Conflict,
                format!("group {} exists", self.id),
            ));
        }
        let chars = msg.name.chars().count();
        if chars == 0 || chars > MAX_GROUP_NAME {
            return failed(ChatError::bad_request(
                "a group name has 1 to 128 characters",
            ));
        }
        if msg.members.len() > MAX_MEMBERS_PER_FRAME {
            return failed(ChatError::new(
                ErrorCode::Limit,
                "at most 1000 members a frame",
            ));
        }
        let mut members = vec![msg.user.clone()];
        for m in msg.members {
            if !members.contains(&m) {
                members.push(m);
            }
        }
        if members.len() as u64 > self.router.config().chat.max_group_members {
            return failed(ChatError::new(
                ErrorCode::Limit,
                "more than max_group_members members",
            ));
        }
        let meta = GroupMeta {
            name: msg.name,
            owner: msg.user.clone(),
        };
        let store = self.router.store();
        if let Err(e) = store
            .set_group(&self.id, &meta)
            .and_then(|()| store.set_members(&self.id, &members, true))
        {
            return failed(e.into());
        }
        self.group = Some(meta);
        self.members = members.iter().cloned().collect();
        let view = Arc::new(PullView::new(
            self.id.clone(),
            self.members.clone(),
            self.published_seq(),
        ));
        self.router.register_view(&self.id, view.clone());
        self.view = Some(view);
        self.announce(ctx, &msg.user, msg.device, "created", members, true)
    }
}

impl Handler<ChangeMembers> for ConvActor {
    type Result = ResponseFuture<ChatResult<GroupView>>;

    fn handle(&mut self, msg: ChangeMembers, ctx: &mut Context<Self>) -> Self::Result {
        self.touch();
        if let Err(e) = self.check_owner(&msg.user) {
            return failed(e);
        }
        if msg.members.len() > MAX_MEMBERS_PER_FRAME {
            return failed(ChatError::new(
                ErrorCode::Limit,
                "at most 1000 members a frame",
            ));
        }
        let mut changed: Vec<UserId> = Vec::new();
        for m in msg.members {
            if self.members.contains(&m) != msg.add && !changed.contains(&m) {
                changed.push(m);
            }
        }
        if !msg.add && changed.contains(&msg.user) {
            return failed(ChatError::bad_request("the owner cannot be removed"));
        }
        if msg.add
            && (self.members.len() + changed.len()) as u64
                > self.router.config().chat.max_group_members
        {
            return failed(ChatError::new(
                ErrorCode::Limit,
                "more than max_group_members members; nothing was added",
            ));
        }
        if changed.is_empty() {
            return Box::pin(std::future::ready(self.view(false)));
        }
        if let Err(e) = self.router.store().set_members(&self.id, &changed, msg.add) {
            return failed(e.into());
        }
        for m in &changed {
            if msg.add {
                self.members.insert(m.clone());
            } else {
                self.members.remove(m);
            }
        }
        if let Some(view) = &self.view {
            view.change_members(&changed, msg.add);
        }
        let event = if msg.add {
            "members_added"
        } else {
            "members_removed"
        };
        self.announce(ctx, &msg.user, msg.device, event, changed, msg.add)
    }
}

impl Handler<LeaveGroup> for ConvActor {
    type Result = ResponseFuture<ChatResult<()>>;

    fn handle(&mut self, msg: LeaveGroup, ctx: &mut Context<Self>) -> Self::Result {
        self.touch();
        if let Err(e) = self.check_member(&msg.user) {
            return failed(e);
        }
        if self.group.as_ref().is_some_and(|g| g.owner == msg.user) {
            return failed(ChatError::forbidden("the owner cannot leave the group"));
        }
        let leaver = vec![msg.user.clone()];
        if let Err(e) = self.router.store().set_members(&self.id, &leaver, false) {
            return failed(e.into());
        }
        self.members.remove(&msg.user);
        if let Some(view) = &self.view {
            view.change_members(&leaver, false);
        }
        let done = self.announce(ctx, &msg.user, msg.device, "member_left", leaver, false);
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
