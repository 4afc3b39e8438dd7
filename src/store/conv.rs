//! The state cores' view of the store: a conversation's state ([`crate::state::conv`]) loaded from the
//! `conv_log` tree and the core's [`Write`]s applied to it (it reads dedupe entries and messages through
//! [`ConvHistory`]); a user's state ([`crate::state::user`]) from the `user_index` tree and its writes.

use std::collections::BTreeMap;

use super::{keys, PairState, Store, StoreError, StoreResult};
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
        state.reads = self.read_positions(conv)?.into_iter().collect();
        if let Some((seq, json)) = &last {
            state.last_seq = *seq;
            if let Ok(message) = serde_json::from_str::<ChatMessage>(json) {
                state.last_ts = message.ts;
                // the last message's sender has read it (its read position is written only once
                // another user's message follows)
                let read = state.reads.entry(message.from.clone()).or_insert(0);
                *read = (*read).max(*seq);
                state.last_from = Some(message.from);
            }
        }
        state.pair = self.pair(conv)?;
        if conv.is_direct() {
            state.blocks = self.blocks(conv)?.into_iter().collect();
        }
        Ok((state, last.map(|(_, json)| json)))
    }

    /// Makes `writes` in their order (none of them waits for a flush; see [`super::Flusher`]). Single
    /// inserts, not one batch: in sled 0.34 every batch forces two log writes (`pin_log` rolls the log
    /// buffer before and after), which costs more than everything else a message does; the core's
    /// ordering (a dedupe entry before its message) keeps a torn sequence harmless for this path. Writes
    /// that carry webhook events ([`Write::Event`]) are one batch, so a message and its events are stored
    /// together or not at all.
    pub fn write_conv(&self, conv: &ConvId, writes: &[Write]) -> StoreResult<()> {
        let mut changes = Vec::new();
        conv_changes(conv, writes, &mut changes)?;
        let events = writes
            .iter()
            .filter(|w| matches!(w, Write::Event { .. }))
            .count();
        if events == 0 {
            return apply_each(&self.conv_log, changes);
        }
        let mut batch = sled::Batch::default();
        for (key, value) in changes {
            match value {
                Some(v) => batch.insert(key, v),
                None => batch.remove(key),
            }
        }
        self.conv_log.apply_batch(batch)?;
        self.outbox_added(events);
        Ok(())
    }

    /// A replica's application of committed entries ([`ReplicaBatch`]): one sled batch for `conv_log` and
    /// one for `user_index`, each with the applied index of every partition it covers, so that a crash
    /// leaves every entry applied whole or not at all (a replay of a half-applied entry could decide
    /// differently, e.g. a group's creation whose members landed but whose system message did not).
    pub fn apply_replica_batch(&self, batch: ReplicaBatch) -> StoreResult<()> {
        let ReplicaBatch {
            conv,
            user,
            conv_applied,
            user_applied,
            events,
        } = batch;
        if !conv_applied.is_empty() {
            apply_batch(&self.conv_log, conv, &conv_applied)?;
        }
        if !user_applied.is_empty() {
            apply_batch(&self.user_index, user, &user_applied)?;
        }
        if events > 0 {
            self.outbox_added(events);
        }
        Ok(())
    }

    /// The last log index of `partition` whose conversation command is applied here (0: none).
    pub fn conv_applied(&self, partition: u32) -> StoreResult<u64> {
        applied(&self.conv_log, partition)
    }
}

/// A key change: `Some(value)` puts, `None` removes.
type Change = (Vec<u8>, Option<Vec<u8>>);

fn json<T: serde::Serialize>(value: &T, owner: &str) -> StoreResult<Vec<u8>> {
    serde_json::to_vec(value).map_err(|_| StoreError::Corrupt(owner.to_owned()))
}

/// The key changes of a conversation command's writes, in order (the catalogue is in [`super::keys`]).
fn conv_changes(conv: &ConvId, writes: &[Write], out: &mut Vec<Change>) -> StoreResult<()> {
    let c = conv.as_str();
    for write in writes {
        match write {
            Write::Cid { from, cid, seq, ts } => out.push((
                keys::cid(c, from.as_str(), cid.as_str()),
                Some(keys::two_u64(*seq, *ts).to_vec()),
            )),
            Write::Message { seq, json } => {
                out.push((keys::msg(c, *seq), Some(json.as_bytes().to_vec())))
            }
            Write::Read { user, seq } | Write::SenderRead { user, seq } => out.push((
                keys::read(c, user.as_str()),
                Some(seq.to_be_bytes().to_vec()),
            )),
            Write::Pair(pair) => out.push((
                keys::pair(c),
                (*pair != PairState::None)
                    .then(|| json(pair, c))
                    .transpose()?,
            )),
            Write::Group(meta) => out.push((keys::group(c), Some(json(meta, c)?))),
            Write::Members { users, member } => {
                for user in users {
                    let value = member.then(Vec::new);
                    out.push((keys::member(c, user.as_str()), value));
                }
            }
            Write::Reaction {
                seq,
                user,
                emoji,
                on,
                count,
            } => {
                let held = on.then(Vec::new);
                out.push((keys::held(c, *seq, user.as_str(), emoji), held.clone()));
                out.push((keys::reactor(c, *seq, emoji, user.as_str()), held));
                let counter = (*count > 0).then(|| count.to_be_bytes().to_vec());
                out.push((keys::reaction_count(c, *seq, emoji), counter));
            }
            Write::Mentions { seq, mentions, on } => {
                for m in mentions {
                    out.push((keys::mention(c, m.as_str(), *seq), on.then(Vec::new)));
                }
            }
            Write::Block { user, on } => {
                out.push((keys::block(c, user.as_str()), on.then(Vec::new)))
            }
            Write::Event { id, at, json } => {
                out.push((keys::outbox(*id), Some(super::outbox::value(*at, json))))
            }
        }
    }
    Ok(())
}

/// The key changes of a user command's writes, in order.
fn user_changes(user: &UserId, writes: &[UserWrite], out: &mut Vec<Change>) -> StoreResult<()> {
    let u = user.as_str();
    for write in writes {
        match write {
            UserWrite::Conv { conv, member } => {
                out.push((keys::user_conv(u, conv.as_str()), member.then(Vec::new)))
            }
            UserWrite::Friend { other, entry } => out.push((
                keys::user_friend(u, other.as_str()),
                entry.as_ref().map(|e| json(e, u)).transpose()?,
            )),
            UserWrite::Block { other, on } => {
                out.push((keys::user_block(u, other.as_str()), on.then(Vec::new)))
            }
            UserWrite::Settings { conv, settings } => out.push((
                keys::user_settings(u, conv.as_str()),
                settings.as_ref().map(|s| json(s, u)).transpose()?,
            )),
            UserWrite::Access(access) => out.push((keys::user_access(u), Some(json(access, u)?))),
        }
    }
    Ok(())
}

fn apply_each(tree: &sled::Tree, changes: Vec<Change>) -> StoreResult<()> {
    for (key, value) in changes {
        match value {
            Some(v) => tree.insert(key, v)?,
            None => tree.remove(key)?,
        };
    }
    Ok(())
}

fn apply_batch(
    tree: &sled::Tree,
    changes: Vec<Change>,
    applied: &BTreeMap<u32, u64>,
) -> StoreResult<()> {
    let mut batch = sled::Batch::default();
    for (key, value) in changes {
        match value {
            Some(v) => batch.insert(key, v),
            None => batch.remove(key),
        }
    }
    for (partition, index) in applied {
        batch.insert(keys::applied(*partition), &index.to_be_bytes()[..]);
    }
    tree.apply_batch(batch)?;
    Ok(())
}

/// Committed entries' writes gathered for [`Store::apply_replica_batch`].
#[derive(Default)]
pub struct ReplicaBatch {
    conv: Vec<Change>,
    user: Vec<Change>,
    /// Per partition, the last entry whose conversation (user) command is in the batch.
    conv_applied: BTreeMap<u32, u64>,
    user_applied: BTreeMap<u32, u64>,
    /// Webhook events among the writes.
    events: usize,
}

impl ReplicaBatch {
    /// Entry `index` of `partition`: a conversation command's writes.
    pub fn conv(
        &mut self,
        conv: &ConvId,
        writes: &[Write],
        partition: u32,
        index: u64,
    ) -> StoreResult<()> {
        conv_changes(conv, writes, &mut self.conv)?;
        self.events += writes
            .iter()
            .filter(|w| matches!(w, Write::Event { .. }))
            .count();
        self.conv_applied.insert(partition, index);
        Ok(())
    }

    /// Entry `index` of `partition`: a user command's writes.
    pub fn user(
        &mut self,
        user: &UserId,
        writes: &[UserWrite],
        partition: u32,
        index: u64,
    ) -> StoreResult<()> {
        user_changes(user, writes, &mut self.user)?;
        self.user_applied.insert(partition, index);
        Ok(())
    }
}

fn applied(tree: &sled::Tree, partition: u32) -> StoreResult<u64> {
    Ok(tree
        .get(keys::applied(partition))?
        .and_then(|v| keys::parse_u64(&v, 0))
        .unwrap_or(0))
}

impl Store {
    /// The state of `user` as its last applied writes left it.
    pub fn user_state(&self, user: &UserId) -> StoreResult<UserState> {
        let mut state = UserState::empty(user.clone());
        state.friends = self.friends(user)?.into_iter().collect();
        state.blocked = self.blocked(user)?.into_iter().collect();
        state.settings = self.conv_settings(user)?.into_iter().collect();
        state.access = self.user_access(user)?;
        Ok(state)
    }

    /// Makes a user command's `writes` in their order.
    pub fn write_user(&self, user: &UserId, writes: &[UserWrite]) -> StoreResult<()> {
        let mut changes = Vec::new();
        user_changes(user, writes, &mut changes)?;
        apply_each(&self.user_index, changes)
    }

    /// The last log index of `partition` whose user command is applied here (0: none).
    pub fn user_applied(&self, partition: u32) -> StoreResult<u64> {
        applied(&self.user_index, partition)
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

    fn reactions_of(&self, seq: u64, user: &UserId) -> ChatResult<Vec<String>> {
        Ok(self.store.reactions_of(self.conv, seq, user)?)
    }

    fn reaction_count(&self, seq: u64, emoji: &str) -> ChatResult<u64> {
        Ok(self.store.reaction_count(self.conv, seq, emoji)?)
    }
}
