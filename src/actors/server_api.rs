//! The server API's requests to a conversation's actor that are not group operations (those are in
//! [`super::group`]): a message posted on a user's behalf, and reading a conversation as the product's
//! backend, which is no member; and the dedupe lookup the before-send hook asks first
//! ([`crate::webhooks::before_send`]). The rules are the conversation core's ([`crate::state::conv`]), exactly as
//! for a session's `send` and `sync`; only the caller differs (no device, no membership for reading).

use actix::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::conversation::{ConvActor, Fetched, Posted, Range};
use super::now_ms;
use crate::error::{ChatError, ChatResult};
use crate::ids::{Cid, UserId};
use crate::net::protocol::{self, Mention};
use crate::state::conv::ConvCommand;
use crate::store::ConvHistory;

/// Post `body` as `from` (`POST /v1/messages`): stored and pushed as if `from` had sent it (to every device
/// of every member, `from`'s included); answered with its seq and ts once durable. A known `cid` gets its
/// first answer.
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "ChatResult<Posted>")]
pub struct ServerPost {
    pub from: UserId,
    pub cid: Cid,
    pub body: Box<RawValue>,
    #[serde(default)]
    pub reply_to: Option<u64>,
    #[serde(default)]
    pub mentions: Option<Vec<Mention>>,
}

/// Messages of the conversation for the product's backend (`GET /v1/conversations/C/messages`), as `sync`
/// answers them but without a member asking.
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "ChatResult<Fetched>")]
pub struct ServerFetch {
    pub range: Range,
    pub limit: usize,
}

/// The first answer to (`from`, `cid`) if that `cid` was accepted here (asked before the before-send hook,
/// which a retry must not reach); `forbidden` / `not_found` as a post by `from` would get them.
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "ChatResult<Option<Posted>>")]
pub struct LookupCid {
    pub from: UserId,
    pub cid: Cid,
}

impl Handler<LookupCid> for ConvActor {
    type Result = ChatResult<Option<Posted>>;

    fn handle(&mut self, msg: LookupCid, _: &mut Context<Self>) -> Self::Result {
        self.touch();
        self.check_member(&msg.from)?;
        let history = ConvHistory {
            store: self.router.store(),
            conv: &self.state.id,
        };
        self.state.accepted_cid(&history, &msg.from, &msg.cid)
    }
}

impl Handler<ServerPost> for ConvActor {
    type Result = ResponseFuture<ChatResult<Posted>>;

    fn handle(&mut self, msg: ServerPost, ctx: &mut Context<Self>) -> Self::Result {
        self.touch();
        let cmd = ConvCommand::ServerPost {
            from: msg.from,
            cid: msg.cid,
            ts: now_ms(),
            body: msg.body,
            reply_to: msg.reply_to,
            mentions: msg.mentions,
        };
        self.post_command(ctx, cmd, None)
    }
}

impl Handler<ServerFetch> for ConvActor {
    type Result = ChatResult<Fetched>;

    fn handle(&mut self, msg: ServerFetch, _: &mut Context<Self>) -> ChatResult<Fetched> {
        self.touch();
        if !self.state.id.is_direct() && self.state.group.is_none() {
            return Err(ChatError::not_found(format!(
                "group {} does not exist",
                self.state.id
            )));
        }
        let published = self.published_seq();
        let store = self.router.store();
        let jsons = match msg.range {
            Range::After(after) if after >= published => Vec::new(),
            Range::After(after) => {
                let left = usize::try_from(published - after).unwrap_or(usize::MAX);
                store.messages_after(&self.state.id, after, msg.limit.min(left))?
            }
            Range::Before(before) => store.messages_before(
                &self.state.id,
                before.min(published.saturating_add(1)),
                msg.limit,
            )?,
        };
        Ok(Fetched {
            msgs: jsons.into_iter().filter_map(protocol::raw).collect(),
            last_seq: published,
        })
    }
}
