//! Edits, reactions, `reactors`, blocks and the membership check of `conv_settings`: messages to the
//! conversation actor ([`ConvActor`]), kept beside it the way `group.rs` keeps the group operations. The
//! rules are the pure core's ([`crate::state::conv`]: `Edit`, `React`, `Block`); here the outcomes become
//! answers and pushes, after the group-commit flush like everything the conversation stores.
//!
//! Big groups stay cheap: a reaction is a counter and two set entries beside the message (never a rewrite
//! of it), pushed as `reaction` only in direct conversations and groups of at most
//! `receipt_push_max_members`; an edit is pushed to the online members only; a mention in a group over
//! `push_max_members` pushes `msg` to the mentioned members' devices, and nothing is written for the others.

use actix::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::conversation::{ConvActor, Rerender};
use super::now_ms;
use super::session::Outbound;
use super::user::SetBlocked;
use crate::error::{ChatError, ChatResult};
use crate::ids::{DeviceId, UserId};
use crate::net::protocol::{self, Mention, Message as ChatMessage, ServerFrame};
use crate::net::ws::WireFrame;
use crate::state::conv::{check_emoji, ConvCommand, Outcome};

/// Most users a `reactors` answer lists.
pub const MAX_REACTORS: usize = 1000;

/// Replace the body of message `seq` (its sender only, within the edit window); answered once durable.
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "ChatResult<()>")]
pub struct EditMessage {
    pub user: UserId,
    pub device: DeviceId,
    pub seq: u64,
    pub body: Box<RawValue>,
}

/// Add (`on`) or take back a reaction; answered once durable.
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "ChatResult<()>")]
pub struct React {
    pub user: UserId,
    pub device: DeviceId,
    pub seq: u64,
    pub emoji: String,
    pub on: bool,
}

/// The users holding `emoji` on message `seq` (sorted, at most [`MAX_REACTORS`]).
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "ChatResult<Vec<UserId>>")]
pub struct GetReactors {
    pub user: UserId,
    pub seq: u64,
    pub emoji: String,
}

/// Is `user` a member (`forbidden` if not, `not_found` for a group that does not exist)?
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "ChatResult<()>")]
pub struct CheckMember {
    pub user: UserId,
}

/// `user` blocks (`on`) the other user of this direct pair, or no longer does; answered once both the
/// pair's conversation and the user's index hold it.
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "ChatResult<()>")]
pub struct SetBlock {
    pub user: UserId,
    pub on: bool,
}

impl ConvActor {
    /// Who gets an event of this conversation: the members, or in a group over `push_max_members` the
    /// online ones (work in proportion to those, not to the group).
    fn event_recipients(&self) -> Vec<UserId> {
        if self.is_large() {
            self.router.online_among(&self.state.members)
        } else {
            self.state.members.iter().cloned().collect()
        }
    }

    /// Reactions go to everyone in direct conversations and groups of at most `receipt_push_max_members`.
    fn pushes_reactions(&self) -> bool {
        self.state.group.is_none()
            || self.state.members.len() as u64 <= self.router.config().chat.receipt_push_max_members
    }

    /// `jsons` (stored messages, ascending) with their reaction counts, as `sync` returns them: one range
    /// scan over the page's seqs.
    pub(super) fn with_reactions(&self, jsons: Vec<String>) -> ChatResult<Vec<String>> {
        let seq_of = |json: &String| {
            serde_json::from_str::<SeqOnly>(json)
                .map(|m| m.seq)
                .unwrap_or(0)
        };
        let (Some(first), Some(last)) = (jsons.first(), jsons.last()) else {
            return Ok(jsons);
        };
        let (from, to) = (seq_of(first), seq_of(last));
        let counts = self
            .router
            .store()
            .reaction_counts(&self.state.id, from, to)?;
        if counts.is_empty() {
            return Ok(jsons);
        }
        Ok(jsons
            .into_iter()
            .map(|json| match counts.get(&seq_of(&json)) {
                Some(c) => protocol::with_reactions(json, c),
                None => json,
            })
            .collect())
    }

    /// Message `seq` as pulls show it now (stored JSON and reaction counts), for the pull view. Called
    /// once the change is in the store ([`ConvActor::rerender_when_durable`]).
    pub(super) fn rerender(&mut self, seq: u64, json: Option<String>) {
        let covered = self.view.as_ref().is_some_and(|v| v.covers(seq));
        if !covered && seq != self.published_seq() {
            return;
        }
        let json = match json {
            Some(j) => Some(j),
            None => self
                .router
                .store()
                .message(&self.state.id, seq)
                .ok()
                .flatten(),
        };
        let Some(json) = json else { return };
        let rendered = match self.with_reactions(vec![json.clone()]) {
            Ok(mut list) => list.pop().unwrap_or_else(|| json.clone()),
            Err(_) => json.clone(),
        };
        self.replaced(seq, &json, rendered);
    }

    /// A new message of a group over `push_max_members`: its mentioned members' devices get `msg` (all
    /// online members for `*`), but the sending device.
    pub(super) fn push_mentioned(
        &mut self,
        ctx: &mut Context<Self>,
        json: &str,
        seq: u64,
        frame: &WireFrame,
        from: &UserId,
        device: &Option<DeviceId>,
    ) {
        if !json.contains("\"mentions\":") {
            return;
        }
        let Ok(message) = serde_json::from_str::<ChatMessage>(json) else {
            return;
        };
        let Some(mentions) = message.mentions.filter(|m| !m.is_empty()) else {
            return;
        };
        let recipients: Vec<UserId> = if mentions.contains(&Mention::All) {
            self.router.online_among(&self.state.members)
        } else {
            let mut users: Vec<UserId> = mentions
                .into_iter()
                .filter_map(|m| match m {
                    Mention::User(u) if self.state.members.contains(&u) => Some(u),
                    _ => None,
                })
                .collect();
            users.sort();
            users.dedup();
            users
        };
        let out = Outbound::Push {
            conv: self.state.id.clone(),
            seq,
            frame: frame.clone(),
        };
        let except = device.clone().map(|d| (from.clone(), d));
        self.fan_out(ctx, recipients, out, except);
    }
}

#[derive(Deserialize)]
struct SeqOnly {
    seq: u64,
}

fn failed<T: 'static>(e: ChatError) -> ResponseFuture<ChatResult<T>> {
    Box::pin(async move { Err(e) })
}

impl Handler<EditMessage> for ConvActor {
    type Result = ResponseFuture<ChatResult<()>>;

    fn handle(&mut self, msg: EditMessage, ctx: &mut Context<Self>) -> Self::Result {
        self.touch();
        let cmd = ConvCommand::Edit {
            user: msg.user.clone(),
            seq: msg.seq,
            body: msg.body,
            now: now_ms(),
        };
        let (seq, json, body, edited) = match self.execute(cmd) {
            Ok(Outcome::Edited {
                seq,
                json,
                body,
                edited,
            }) => (seq, json, body, edited),
            Ok(_) => return self.reply_when_durable(ctx, None, Vec::new(), None),
            Err(e) => return failed(e),
        };
        self.rerender_when_durable(ctx, Rerender::Edited(seq, json));
        let frame = Self::frame(&ServerFrame::Edited {
            conv: self.state.id.clone(),
            seq,
            by: msg.user.clone(),
            body,
            edited,
        });
        let recipients = self.event_recipients();
        self.reply_when_durable(ctx, Some(frame), recipients, Some((msg.user, msg.device)))
    }
}

impl Handler<React> for ConvActor {
    type Result = ResponseFuture<ChatResult<()>>;

    fn handle(&mut self, msg: React, ctx: &mut Context<Self>) -> Self::Result {
        self.touch();
        let cmd = ConvCommand::React {
            user: msg.user.clone(),
            seq: msg.seq,
            emoji: msg.emoji.clone(),
            on: msg.on,
        };
        let seq = match self.execute(cmd) {
            Ok(Outcome::Reacted { seq, .. }) => seq,
            // a repeat: answered once what it repeats is durable
            Ok(_) => return self.reply_when_durable(ctx, None, Vec::new(), None),
            Err(e) => return failed(e),
        };
        self.rerender_when_durable(ctx, Rerender::Stored(seq));
        if !self.pushes_reactions() {
            return self.reply_when_durable(ctx, None, Vec::new(), None);
        }
        let frame = Self::frame(&ServerFrame::Reaction {
            conv: self.state.id.clone(),
            seq,
            user: msg.user.clone(),
            emoji: msg.emoji,
            on: msg.on,
        });
        let recipients = self.state.members.iter().cloned().collect();
        self.reply_when_durable(ctx, Some(frame), recipients, Some((msg.user, msg.device)))
    }
}

impl Handler<GetReactors> for ConvActor {
    type Result = ChatResult<Vec<UserId>>;

    fn handle(&mut self, msg: GetReactors, _: &mut Context<Self>) -> ChatResult<Vec<UserId>> {
        self.touch();
        self.check_member(&msg.user)?;
        check_emoji(&msg.emoji)?;
        let missing =
            || ChatError::not_found(format!("no message {} in {}", msg.seq, self.state.id));
        if msg.seq == 0 || msg.seq > self.published_seq() {
            return Err(missing());
        }
        let json = self
            .router
            .store()
            .message(&self.state.id, msg.seq)?
            .ok_or_else(missing)?;
        if protocol::is_recalled(&json) {
            return Ok(Vec::new());
        }
        Ok(self
            .router
            .store()
            .reactors(&self.state.id, msg.seq, &msg.emoji, MAX_REACTORS)?)
    }
}

impl Handler<CheckMember> for ConvActor {
    type Result = ChatResult<()>;

    fn handle(&mut self, msg: CheckMember, _: &mut Context<Self>) -> ChatResult<()> {
        self.touch();
        self.check_member(&msg.user)
    }
}

impl Handler<SetBlock> for ConvActor {
    type Result = ResponseFuture<ChatResult<()>>;

    fn handle(&mut self, msg: SetBlock, ctx: &mut Context<Self>) -> Self::Result {
        self.touch();
        let cmd = ConvCommand::Block {
            user: msg.user.clone(),
            on: msg.on,
        };
        match self.execute(cmd) {
            Ok(Outcome::Blocked | Outcome::Unchanged) => {}
            Ok(_) => return failed(ChatError::internal("unexpected outcome")),
            Err(e) => return failed(e),
        }
        let Some(other) = self.state.id.peer_of(&msg.user).cloned() else {
            return failed(ChatError::forbidden("not a member of this pair"));
        };
        // the pair's decision first, then the user's own list (`friends`, presence); a retry repairs a
        // crash between the two (both writes are idempotent)
        let durable = self.reply_when_durable(ctx, None, Vec::new(), None);
        let router = self.router.clone();
        let user = msg.user;
        let on = msg.on;
        Box::pin(async move {
            durable.await?;
            router.ask_user(&user, SetBlocked { other, on }).await
        })
    }
}
