//! A replica's state machine: the committed [`Command`]s of its partitions, applied in log order through
//! the cores ([`super::conv`], [`super::user`]) to the node's store, exactly as every other replica applies
//! them.
//!
//! Each partition remembers the log index it has applied up to, written in one atomic batch with the entry's
//! writes (a conversation command's in `conv_log`, a user command's in `user_index`: one index per tree);
//! after a restart, entries at or below it are skipped and the rest are applied again from the Raft log. An
//! entry is never half applied: its replay could decide differently (a group's creation whose members landed
//! but whose system message did not would be refused as a duplicate). `tests/replica_model.rs` checks it. States are
//! cached (a conversation's members and read positions are not re-read per entry) and loaded from the
//! store when missing; the cache is a pure optimisation, dropped when it grows past its bound.
//!
//! This is what a partition's followers run, and what its leader runs once an entry is committed (the
//! leader's actors never write themselves): the apply thread of [`crate::cluster::replication`] feeds it.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::conv::{ConvCommand, ConvState, Outcome, Rules, Write};
use super::user::{UserCommand, UserState};
use crate::cluster::placement::PartitionId;
use crate::error::ChatResult;
use crate::ids::{ConvId, UserId};
use crate::store::{ConvHistory, Store, StoreResult};

/// A replicated state change: one key's core command. The entry data of a partition's Raft log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Command {
    Conv { conv: ConvId, cmd: ConvCommand },
    User { user: UserId, cmd: UserCommand },
}

impl Command {
    /// The key the command changes (its partition is this key's).
    pub fn key(&self) -> &str {
        match self {
            Command::Conv { conv, .. } => conv.as_str(),
            Command::User { user, .. } => user.as_str(),
        }
    }
}

/// A Raft log entry's data: a command, who proposed it (the node's Raft id and a node-unique id, so that the
/// proposer can answer its client once the entry is applied) and the webhook events its leader decided for
/// it (who was offline is no state of the conversation; only the proposing node writes them to its outbox,
/// so each event is sent by one node).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Proposal {
    pub origin: u64,
    pub id: u64,
    pub command: Command,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<CarriedEvent>,
}

/// A webhook event carried by a proposal (outbox id, enqueue time in ms, JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CarriedEvent {
    pub id: u64,
    pub at: u64,
    pub json: String,
}

impl CarriedEvent {
    /// Takes the events out of a command's writes.
    pub fn take(writes: &mut Vec<Write>) -> Vec<CarriedEvent> {
        let mut events = Vec::new();
        writes.retain(|w| match w {
            Write::Event { id, at, json } => {
                events.push(CarriedEvent {
                    id: *id,
                    at: *at,
                    json: json.clone(),
                });
                false
            }
            _ => true,
        });
        events
    }

    fn write(self) -> Write {
        Write::Event {
            id: self.id,
            at: self.at,
            json: self.json,
        }
    }
}

/// What applying an entry did.
#[derive(Debug)]
pub enum Applied {
    /// At or below the partition's applied index: applied before (a replay after a restart).
    Skipped,
    /// A conversation command's outcome (an error when the core refused it: no writes were made).
    Conv(ChatResult<Outcome>),
    /// A user command; true if the friend index changed.
    User(bool),
}

/// States kept at most (conversations and users each) before the cache is dropped.
const CACHE_LIMIT: usize = 10_000;

pub struct Replica {
    store: Store,
    rules: Rules,
    convs: HashMap<ConvId, ConvState>,
    users: HashMap<UserId, UserState>,
    /// Per partition: the last index applied to `conv_log` and to `user_index`.
    applied: HashMap<PartitionId, (u64, u64)>,
}

impl Replica {
    pub fn new(store: Store, rules: Rules) -> Replica {
        Replica {
            store,
            rules,
            convs: HashMap::new(),
            users: HashMap::new(),
            applied: HashMap::new(),
        }
    }

    /// A snapshot of `partition`'s data replaced its keys in the store, applied up to `index`: cached
    /// states may be stale.
    pub fn forget(&mut self, partition: PartitionId, index: u64) {
        self.convs.clear();
        self.users.clear();
        self.applied.insert(partition, (index, index));
    }

    /// The last log index of `partition` applied to the store, for conversation and for user commands.
    fn applied(&mut self, partition: PartitionId) -> StoreResult<(u64, u64)> {
        if let Some(applied) = self.applied.get(&partition) {
            return Ok(*applied);
        }
        let applied = (
            self.store.conv_applied(partition)?,
            self.store.user_applied(partition)?,
        );
        self.applied.insert(partition, applied);
        Ok(applied)
    }

    /// Applies the committed entry `index` of `partition`. A store failure is returned as is: the node
    /// must not go on applying later entries over a missing one.
    pub fn apply(
        &mut self,
        partition: PartitionId,
        index: u64,
        command: Command,
    ) -> StoreResult<Applied> {
        self.apply_with(partition, index, command, Vec::new())
    }

    /// [`Replica::apply`], writing `events` to the outbox with a conversation command's writes (on the
    /// node that proposed it).
    pub fn apply_with(
        &mut self,
        partition: PartitionId,
        index: u64,
        command: Command,
        events: Vec<CarriedEvent>,
    ) -> StoreResult<Applied> {
        let (conv_applied, user_applied) = self.applied(partition)?;
        match command {
            Command::Conv { conv, cmd } => {
                if index <= conv_applied {
                    return Ok(Applied::Skipped);
                }
                let outcome = self.apply_conv(partition, index, conv, cmd, events)?;
                self.applied.insert(partition, (index, user_applied));
                Ok(Applied::Conv(outcome))
            }
            Command::User { user, cmd } => {
                if index <= user_applied {
                    return Ok(Applied::Skipped);
                }
                let changed = self.apply_user(partition, index, user, cmd)?;
                self.applied.insert(partition, (conv_applied, index));
                Ok(Applied::User(changed))
            }
        }
    }

    fn apply_conv(
        &mut self,
        partition: PartitionId,
        index: u64,
        conv: ConvId,
        cmd: ConvCommand,
        events: Vec<CarriedEvent>,
    ) -> StoreResult<ChatResult<Outcome>> {
        if !self.convs.contains_key(&conv) {
            if self.convs.len() >= CACHE_LIMIT {
                self.convs.clear();
            }
            let state = self.store.conv_state(&conv)?;
            self.convs.insert(conv.clone(), state);
        }
        let Some(state) = self.convs.get_mut(&conv) else {
            return Ok(Err(crate::error::ChatError::internal("state cache")));
        };
        let mut writes = Vec::new();
        let history = ConvHistory {
            store: &self.store,
            conv: &conv,
        };
        let outcome = state.apply(cmd, &self.rules, &history, &mut writes);
        if outcome.is_ok() {
            writes.extend(events.into_iter().map(CarriedEvent::write));
        }
        if let Err(e) = self.store.apply_conv(&conv, &writes, partition, index) {
            // the cached state is ahead of the store now: forget it
            self.convs.remove(&conv);
            return Err(e);
        }
        Ok(outcome)
    }

    fn apply_user(
        &mut self,
        partition: PartitionId,
        index: u64,
        user: UserId,
        cmd: UserCommand,
    ) -> StoreResult<bool> {
        if !self.users.contains_key(&user) {
            if self.users.len() >= CACHE_LIMIT {
                self.users.clear();
            }
            let state = self.store.user_state(&user)?;
            self.users.insert(user.clone(), state);
        }
        let mut writes = Vec::new();
        let changed = match self.users.get_mut(&user) {
            Some(state) => state.apply(cmd, &mut writes),
            None => false,
        };
        if let Err(e) = self.store.apply_user(&user, &writes, partition, index) {
            self.users.remove(&user);
            return Err(e);
        }
        Ok(changed)
    }
}
