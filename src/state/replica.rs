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
use super::overlay::Overlay;
use super::user::{UserCommand, UserState};
use crate::cluster::placement::PartitionId;
use crate::error::{ChatError, ChatResult};
use crate::ids::{ConvId, UserId};
use crate::store::{ConvHistory, ReplicaBatch, Store, StoreResult};

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
        let mut applied = self.apply_entries(vec![Entry {
            partition,
            index,
            command,
            events: Vec::new(),
        }])?;
        Ok(applied.pop().unwrap_or(Applied::Skipped))
    }

    /// Applies committed entries in their order, with one sled batch per tree for all of them (sled 0.34
    /// writes its log twice per batch: one batch per entry was what bounded a replica's throughput). Each
    /// tree's batch carries the applied index of every partition it touches, so a crash leaves every entry
    /// applied whole or not at all, and a replay skips exactly what was applied. Later entries see the
    /// writes of earlier ones in the same batch through an [`Overlay`] per conversation.
    pub fn apply_entries(&mut self, entries: Vec<Entry>) -> StoreResult<Vec<Applied>> {
        if self.convs.len() >= CACHE_LIMIT {
            self.convs.clear();
        }
        if self.users.len() >= CACHE_LIMIT {
            self.users.clear();
        }
        let mut batch = ReplicaBatch::default();
        let mut pending: HashMap<ConvId, Overlay> = HashMap::new();
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            let applied = self.apply_one(entry, &mut batch, &mut pending);
            match applied {
                Ok(a) => out.push(a),
                Err(e) => {
                    self.drop_cache();
                    return Err(e);
                }
            }
        }
        if let Err(e) = self.store.apply_replica_batch(batch) {
            // the cached states and indexes are ahead of the store now
            self.drop_cache();
            return Err(e);
        }
        Ok(out)
    }

    fn drop_cache(&mut self) {
        self.convs.clear();
        self.users.clear();
        self.applied.clear();
    }

    fn apply_one(
        &mut self,
        entry: Entry,
        batch: &mut ReplicaBatch,
        pending: &mut HashMap<ConvId, Overlay>,
    ) -> StoreResult<Applied> {
        let Entry {
            partition,
            index,
            command,
            events,
        } = entry;
        let (conv_applied, user_applied) = self.applied(partition)?;
        match command {
            Command::Conv { conv, cmd } => {
                if index <= conv_applied {
                    return Ok(Applied::Skipped);
                }
                if !self.convs.contains_key(&conv) {
                    let state = self.store.conv_state(&conv)?;
                    self.convs.insert(conv.clone(), state);
                }
                let Some(state) = self.convs.get_mut(&conv) else {
                    return Ok(Applied::Conv(Err(ChatError::internal("state cache"))));
                };
                let overlay = pending.entry(conv.clone()).or_default();
                let stored = ConvHistory {
                    store: &self.store,
                    conv: &conv,
                };
                let mut writes = Vec::new();
                let outcome = state.apply(cmd, &self.rules, &overlay.over(&stored), &mut writes);
                if outcome.is_ok() {
                    writes.extend(events.into_iter().map(CarriedEvent::write));
                }
                batch.conv(&conv, &writes, partition, index)?;
                overlay.push(index, writes);
                self.applied.insert(partition, (index, user_applied));
                Ok(Applied::Conv(outcome))
            }
            Command::User { user, cmd } => {
                if index <= user_applied {
                    return Ok(Applied::Skipped);
                }
                if !self.users.contains_key(&user) {
                    let state = self.store.user_state(&user)?;
                    self.users.insert(user.clone(), state);
                }
                let mut writes = Vec::new();
                let changed = match self.users.get_mut(&user) {
                    Some(state) => state.apply(cmd, &mut writes),
                    None => false,
                };
                batch.user(&user, &writes, partition, index)?;
                self.applied.insert(partition, (conv_applied, index));
                Ok(Applied::User(changed))
            }
        }
    }
}

/// A committed entry to apply: its partition and log index, its command, and the webhook events to write
/// with it (on the node that proposed it; none elsewhere).
#[derive(Debug)]
pub struct Entry {
    pub partition: PartitionId,
    pub index: u64,
    pub command: Command,
    pub events: Vec<CarriedEvent>,
}
