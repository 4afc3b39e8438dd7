//! The state cores' view of the store: a conversation's state ([`crate::state::conv`]) loaded from the
//! `conv_log` tree and the core's [`Write`]s applied to it (it reads dedupe entries and messages through
//! [`ConvHistory`]); a user's state ([`crate::state::user`]) from the `user_index` tree and its writes.

use super::{keys, Store, StoreResult};
use crate::error::ChatResult;
use crate::ids::{Cid, ConvId, UserId};
use crate::net::protocol::Message as ChatMessage;
use crate::state::conv::{ConvState, History, Write};
use crate::state::user::{UserState, UserWrite};

impl Store {
    /// The state of `conv` as its last applied writes left it (an empty state for a new conversation).
    pub fn conv_state(&self, conv: &ConvId) -> StoreResult<ConvState> {
        Ok(self.conv_state_and_last(conv)?.0)
    }

    /// [`Store::conv_state`] and the last message's JSON, read once (an actor starting up wants both).
    pub fn conv_state_and_last(&self, conv: &ConvId) -> StoreResult<(ConvState, Option<String>)> {
        let mut state = ConvState::empty(conv.clone());
        if !conv.is_direct() {
            state.group = self.group(conv)?;
            if state.group.is_some() {
                state.members = self.group_members(conv)?.into_iter().collect();
            }
        }
        let last = self.last_message(conv)?;
        if let Some((seq, json)) = &last {
            state.last_seq = *seq;
            state.last_ts = serde_json::from_str::<ChatMessage>(json).map_or(0, |m| m.ts);
        }
        state.reads = self.read_positions(conv)?.into_iter().collect();
        state.pair = self.pair(conv)?;
        Ok((state, last.map(|(_, json)| json)))
    }

    /// Makes `writes` in their order (none of them waits for a flush; see [`super::Flusher`]). A message
    /// followed by webhook events ([`Write::Event`]) is written with them in one sled batch.
    pub fn write_conv(&self, conv: &ConvId, writes: &[Write]) -> StoreResult<()> {
        let mut rest = writes;
        while let Some((write, after)) = rest.split_first() {
            let events = after
                .iter()
                .take_while(|w| matches!(w, Write::Event { .. }))
                .count();
            if let (Write::Message { seq, json }, 1..) = (write, events) {
                let mut batch = sled::Batch::default();
                batch.insert(keys::msg(conv.as_str(), *seq), json.as_bytes());
                for event in &after[..events] {
                    if let Write::Event { id, at, json } = event {
                        batch.insert(keys::outbox(*id), super::outbox::value(*at, json));
                    }
                }
                self.conv_log.apply_batch(batch)?;
                self.outbox_added(events);
                rest = &after[events..];
                continue;
            }
            rest = after;
            match write {
                Write::Cid { from, cid, seq, ts } => {
                    self.set_cid(conv, from, cid.as_str(), *seq, *ts)?
                }
                Write::Message { seq, json } => self.append(conv, *seq, json)?,
                Write::Read { user, seq } | Write::SenderRead { user, seq } => {
                    self.set_read(conv, user, *seq)?;
                }
                Write::Pair(pair) => self.set_pair(conv, pair)?,
                Write::Group(meta) => self.set_group(conv, meta)?,
                Write::Members { users, member } => self.set_members(conv, users, *member)?,
                Write::Event { id, at, json } => {
                    self.push_events(&[(*id, *at, json.clone())])?;
                }
            }
        }
        Ok(())
    }
}

impl Store {
    /// The state of `user` as its last applied writes left it.
    pub fn user_state(&self, user: &UserId) -> StoreResult<UserState> {
        let mut state = UserState::empty(user.clone());
        state.friends = self.friends(user)?.into_iter().collect();
        state.access = self.user_access(user)?;
        Ok(state)
    }

    /// Makes a user command's `writes` in their order.
    pub fn write_user(&self, user: &UserId, writes: &[UserWrite]) -> StoreResult<()> {
        for write in writes {
            match write {
                UserWrite::Conv { conv, member: true } => self.add_user_conv(user, conv)?,
                UserWrite::Conv {
                    conv,
                    member: false,
                } => self.remove_user_conv(user, conv)?,
                UserWrite::Friend { other, entry } => {
                    self.set_friend(user, other, entry.as_ref())?
                }
                UserWrite::Access(access) => self.set_user_access(user, access)?,
            }
        }
        Ok(())
    }
}

/// The stored history of one conversation, for [`ConvState::apply`].
pub struct ConvHistory<'a> {
    pub store: &'a Store,
    pub conv: &'a ConvId,
}

impl History for ConvHistory<'_> {
    fn cid(&self, from: &UserId, cid: &Cid) -> ChatResult<Option<(u64, u64)>> {
        Ok(self.store.cid(self.conv, from, cid.as_str())?)
    }

    fn message(&self, seq: u64) -> ChatResult<Option<String>> {
        Ok(self.store.message(self.conv, seq)?)
    }
}
