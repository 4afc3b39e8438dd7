//! A conversation's state and the commands that change it (see the [module docs](super)).
//!
//! [`ConvState::apply`] validates a command against the state first and changes nothing when it refuses
//! it; otherwise it updates the state and lists the [`Write`]s that make the change durable. Seqs are
//! `last_seq + 1`, a message's `ts` never goes below the previous one's, and a `cid` is trusted only when
//! the stored message at its seq carries the same sender and `cid` (so a store that kept the dedupe entry
//! but lost the message it points at, or any partial application of a command's writes, can neither
//! duplicate nor misattribute a message: the retry is stored as new).

use std::collections::{BTreeSet, HashMap, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::json;
use serde_json::value::RawValue;

use crate::actors::friendship::{self, FriendOp, Transition};
use crate::config::ChatConfig;
use crate::error::{ChatError, ChatResult, ErrorCode};
use crate::ids::{Cid, ConvId, UserId};
use crate::net::protocol::{self, Mention, Message as ChatMessage};
use crate::store::{GroupMeta, PairState};

/// Most members one frame may add or remove.
pub const MAX_MEMBERS_PER_FRAME: usize = 1000;
/// Longest group display name, in characters.
pub const MAX_GROUP_NAME: usize = 128;
/// Most entries of a message's `mentions`.
pub const MAX_MENTIONS: usize = 100;
/// Most different emoji one user may hold on one message.
pub const MAX_REACTIONS_PER_USER: usize = 20;
/// Longest emoji (any text), in characters.
pub const MAX_EMOJI_CHARS: usize = 32;

/// The configuration the rules depend on (the same on every node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    pub dm_requires_friendship: bool,
    pub max_group_members: u64,
    pub recall_window_ms: u64,
    /// How long a sender may edit a message (`chat.edit_window_s`).
    pub edit_window_ms: u64,
}

impl Rules {
    pub fn from_config(chat: &ChatConfig) -> Rules {
        Rules {
            dm_requires_friendship: chat.dm_requires_friendship,
            max_group_members: chat.max_group_members,
            recall_window_ms: u64::try_from(chat.recall_window().as_millis()).unwrap_or(u64::MAX),
            edit_window_ms: chat.edit_window_s.saturating_mul(1000),
        }
    }
}

/// What the core reads from the stored history of its conversation.
pub trait History {
    /// The `(seq, ts)` the dedupe entry of (`from`, `cid`) points at, if there is one.
    fn cid(&self, from: &UserId, cid: &Cid) -> ChatResult<Option<(u64, u64)>>;
    /// The stored JSON of message `seq`.
    fn message(&self, seq: u64) -> ChatResult<Option<String>>;
    /// The emoji `user` holds on message `seq`.
    fn reactions_of(&self, seq: u64, user: &UserId) -> ChatResult<Vec<String>>;
    /// How many users hold `emoji` on message `seq`.
    fn reaction_count(&self, seq: u64, emoji: &str) -> ChatResult<u64>;
}

/// A state change of one conversation. Times are chosen by the proposer, never read from a clock here.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ConvCommand {
    /// A user's message (`send`), optionally answering `reply_to` and mentioning `mentions`.
    Post {
        from: UserId,
        cid: Cid,
        ts: u64,
        body: Box<RawValue>,
        #[serde(default)]
        reply_to: Option<u64>,
        #[serde(default)]
        mentions: Option<Vec<Mention>>,
    },
    /// `user` has read up to `seq` (clamped to the last seq).
    Read { user: UserId, seq: u64 },
    /// The sender takes message `seq` back; `now` is checked against the recall window.
    Recall { user: UserId, seq: u64, now: u64 },
    /// A friendship operation by `user` on a direct pair.
    Friend { user: UserId, op: FriendOp },
    /// Create the group with `owner` and `members` (the owner is added first).
    CreateGroup {
        owner: UserId,
        name: String,
        members: Vec<UserId>,
        ts: u64,
    },
    /// Add (`add`) or remove members; the owner only.
    ChangeMembers {
        user: UserId,
        members: Vec<UserId>,
        add: bool,
        ts: u64,
    },
    /// `user` leaves the group.
    Leave { user: UserId, ts: u64 },
    /// The sender replaces the body of message `seq`; `now` is checked against the edit window and
    /// becomes the message's `edited`.
    Edit {
        user: UserId,
        seq: u64,
        body: Box<RawValue>,
        now: u64,
    },
    /// `user` adds (`on`) or takes back `emoji` on message `seq`.
    React {
        user: UserId,
        seq: u64,
        emoji: String,
        on: bool,
    },
    /// `user` blocks (`on`) or unblocks the other user of a direct pair.
    Block { user: UserId, on: bool },
    /// A message the product's backend posts as `from` (server API, `POST /v1/messages`): a `Post` in
    /// every respect (membership, dedupe, read position) but that a direct conversation needs no friendship.
    ServerPost {
        from: UserId,
        cid: Cid,
        ts: u64,
        body: Box<RawValue>,
        #[serde(default)]
        reply_to: Option<u64>,
        #[serde(default)]
        mentions: Option<Vec<Mention>>,
    },
}

/// A write the store makes for an applied command, in list order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// The dedupe entry of (`from`, `cid`): written before the message it points at.
    Cid {
        from: UserId,
        cid: Cid,
        seq: u64,
        ts: u64,
    },
    /// A message's JSON at `seq` (new, or replacing a recalled one).
    Message { seq: u64, json: String },
    /// A read position set by a `read`.
    Read { user: UserId, seq: u64 },
    /// The read position a user's own message implied, written once another user's message follows it
    /// (while the user's message is the last one, loading the state derives it). It may ride on the next
    /// flush (the README's "durability of read positions").
    SenderRead { user: UserId, seq: u64 },
    /// The friendship of a direct pair.
    Pair(PairState),
    /// A group's name and owner.
    Group(GroupMeta),
    /// Members added (`member`) or removed, one key each.
    Members { users: Vec<UserId>, member: bool },
    /// `user` holds (`on`) or no longer holds `emoji` on message `seq`, which `count` users now hold:
    /// a counter and two set entries (by emoji for `reactors`, by user for the limit), never the message.
    Reaction {
        seq: u64,
        user: UserId,
        emoji: String,
        on: bool,
        count: u64,
    },
    /// Index entries of the users (or `*`) message `seq` mentions, added (`on`) or removed (a recall): one
    /// key per mentioned user, none for the others.
    Mentions {
        seq: u64,
        mentions: Vec<Mention>,
        on: bool,
    },
    /// `user` blocks (`on`) the other user of a direct pair, or no longer does.
    Block { user: UserId, on: bool },
    /// A webhook event (outbox `id`, enqueued at `at` ms) caused by the message written just before it, and
    /// written in one batch with it. The core never lists one: the actor adds them for an accepted message
    /// (who is offline is no state of the conversation; see [`crate::webhooks::events`]).
    Event { id: u64, at: u64, json: String },
}

/// A message's seq and ts, as `sent` reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Posted {
    pub seq: u64,
    pub ts: u64,
}

/// A message the command appended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub posted: Posted,
    /// The stored JSON.
    pub json: String,
    pub from: UserId,
    /// Users who get it although they are no longer members (those a change removed).
    pub also: Vec<UserId>,
}

/// What an applied command did.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// A new message.
    Appended(Appended),
    /// A `cid` accepted before: its first answer; nothing was stored.
    Duplicate(Posted),
    /// A read position advanced to `seq`.
    Read { seq: u64 },
    /// Message `seq` was recalled; `json` is what is stored now.
    Recalled { seq: u64, json: String },
    /// A friendship operation: the pair's new state, the friend-index entries and pushes it calls for.
    Friendship(Transition),
    /// A group was created or its members changed (`changed`, added when `add`), announced by `appended`.
    Group {
        appended: Appended,
        changed: Vec<UserId>,
        add: bool,
    },
    /// Message `seq` was edited: `json` is what is stored now, `body` its new body, `edited` when.
    Edited {
        seq: u64,
        json: String,
        body: Box<RawValue>,
        edited: u64,
    },
    /// A reaction was added or taken back; `count` users now hold that emoji on message `seq`.
    Reacted { seq: u64, count: u64 },
    /// A block of a direct pair was set or lifted.
    Blocked,
    /// Valid, but nothing changed (a read that does not advance, a recall of a recalled message, a
    /// membership change that changes no one, a repeated reaction or block).
    Unchanged,
}

/// The state of one conversation that the rules need at hand (history stays in the store).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvState {
    pub id: ConvId,
    pub last_seq: u64,
    /// The ts of the last message: the next one's never goes below it.
    pub last_ts: u64,
    /// Who sent the last message. Their read position is implied by it (a sender has read what they
    /// sent), so it is written only once another user's message follows (see [`Write::SenderRead`]).
    pub last_from: Option<UserId>,
    /// Who may read and post: the pair of a direct conversation, or a group's members.
    pub members: HashSet<UserId>,
    /// A group's name and owner; `None` for a direct conversation and for a group that does not exist.
    pub group: Option<GroupMeta>,
    pub reads: HashMap<UserId, u64>,
    /// The friendship of a direct pair.
    pub pair: PairState,
    /// Who of a direct pair blocks the other.
    pub blocks: BTreeSet<UserId>,
}

impl ConvState {
    /// The state of a conversation that has never changed.
    pub fn empty(id: ConvId) -> ConvState {
        let members = match &id {
            ConvId::Direct { a, b, .. } => [a.clone(), b.clone()].into_iter().collect(),
            ConvId::Group { .. } => HashSet::new(),
        };
        ConvState {
            id,
            last_seq: 0,
            last_ts: 0,
            last_from: None,
            members,
            group: None,
            reads: HashMap::new(),
            pair: PairState::None,
            blocks: BTreeSet::new(),
        }
    }

    /// Does `blocker` block `user` (direct pairs only; groups are not affected)?
    pub fn blocks(&self, blocker: &UserId, user: &UserId) -> bool {
        blocker != user && self.blocks.contains(blocker) && self.id.peer_of(blocker) == Some(user)
    }

    pub fn check_member(&self, user: &UserId) -> ChatResult<()> {
        if !self.id.is_direct() && self.group.is_none() {
            return Err(ChatError::not_found(format!(
                "group {} does not exist",
                self.id
            )));
        }
        if self.members.contains(user) {
            Ok(())
        } else {
            Err(ChatError::forbidden(format!("not a member of {}", self.id)))
        }
    }

    pub fn check_owner(&self, user: &UserId) -> ChatResult<()> {
        self.check_member(user)?;
        match &self.group {
            Some(meta) if meta.owner == *user => Ok(()),
            _ => Err(ChatError::forbidden("only the group's owner may do that")),
        }
    }

    pub fn read_seq(&self, user: &UserId) -> u64 {
        self.reads.get(user).copied().unwrap_or(0)
    }

    /// Applies `cmd`: on success the state is updated and `writes` extended with what the store must write;
    /// on an error neither changes.
    pub fn apply(
        &mut self,
        cmd: ConvCommand,
        rules: &Rules,
        history: &dyn History,
        writes: &mut Vec<Write>,
    ) -> ChatResult<Outcome> {
        match cmd {
            ConvCommand::Post {
                from,
                cid,
                ts,
                body,
                reply_to,
                mentions,
            } => {
                let refs = Refs { reply_to, mentions };
                self.post(from, cid, ts, body, refs, rules, history, writes)
            }
            ConvCommand::Read { user, seq } => self.read(user, seq, writes),
            ConvCommand::Recall { user, seq, now } => {
                self.recall(&user, seq, now, rules, history, writes)
            }
            ConvCommand::Friend { user, op } => self.friend(&user, op, writes),
            ConvCommand::CreateGroup {
                owner,
                name,
                members,
                ts,
            } => self.create_group(owner, name, members, ts, rules, writes),
            ConvCommand::ChangeMembers {
                user,
                members,
                add,
                ts,
            } => self.change_members(user, members, add, ts, rules, writes),
            ConvCommand::Leave { user, ts } => self.leave(user, ts, writes),
            ConvCommand::Edit {
                user,
                seq,
                body,
                now,
            } => self.edit(&user, seq, body, now, rules, history, writes),
            ConvCommand::React {
                user,
                seq,
                emoji,
                on,
            } => self.react(user, seq, emoji, on, history, writes),
            ConvCommand::Block { user, on } => self.block(user, on, writes),
            ConvCommand::ServerPost {
                from,
                cid,
                ts,
                body,
                reply_to,
                mentions,
            } => {
                let rules = Rules {
                    dm_requires_friendship: false,
                    ..rules.clone()
                };
                let refs = Refs { reply_to, mentions };
                self.post(from, cid, ts, body, refs, &rules, history, writes)
            }
        }
    }

    /// The first answer to (`from`, `cid`) if that `cid` was accepted (a trusted dedupe entry), without
    /// changing anything: the before-send hook is not asked for such a retry.
    pub fn accepted_cid(
        &self,
        history: &dyn History,
        from: &UserId,
        cid: &Cid,
    ) -> ChatResult<Option<Posted>> {
        match history.cid(from, cid)? {
            Some((seq, ts)) if self.is_message_of(history, seq, from, cid)? => {
                Ok(Some(Posted { seq, ts }))
            }
            _ => Ok(None),
        }
    }

    /// Is stored message `seq` from `from` with `cid`? (Validates a dedupe entry.)
    fn is_message_of(
        &self,
        history: &dyn History,
        seq: u64,
        from: &UserId,
        cid: &Cid,
    ) -> ChatResult<bool> {
        if seq == 0 || seq > self.last_seq {
            return Ok(false);
        }
        let Some(json) = history.message(seq)? else {
            return Ok(false);
        };
        #[derive(Deserialize)]
        struct Origin {
            from: UserId,
            cid: Option<Cid>,
        }
        Ok(serde_json::from_str::<Origin>(&json)
            .is_ok_and(|o| o.from == *from && o.cid.as_ref() == Some(cid)))
    }

    #[allow(clippy::too_many_arguments)]
    fn post(
        &mut self,
        from: UserId,
        cid: Cid,
        ts: u64,
        body: Box<RawValue>,
        refs: Refs,
        rules: &Rules,
        history: &dyn History,
        writes: &mut Vec<Write>,
    ) -> ChatResult<Outcome> {
        self.check_member(&from)?;
        let earlier = match history.cid(&from, &cid)? {
            Some((seq, ts)) if self.is_message_of(history, seq, &from, &cid)? => {
                Some(Posted { seq, ts })
            }
            _ => None,
        };
        if let Some(posted) = earlier {
            // a retry of a message accepted earlier gets its first answer, even where it could not post now
            return Ok(Outcome::Duplicate(posted));
        }
        self.check_refs(&from, &refs)?;
        self.check_not_blocked(&from)?;
        if self.id.is_direct() && rules.dm_requires_friendship && self.pair != PairState::Friends {
            return Err(ChatError::new(
                ErrorCode::NotFriends,
                "a direct message needs friendship",
            ));
        }
        let (seq, ts) = self.next_slot(ts);
        let start = writes.len();
        writes.push(Write::Cid {
            from: from.clone(),
            cid: cid.clone(),
            seq,
            ts,
        });
        if let Some(mentions) = refs.mentions.as_ref().filter(|m| !m.is_empty()) {
            writes.push(Write::Mentions {
                seq,
                mentions: distinct(mentions),
                on: true,
            });
        }
        let appended = self.append_with(
            from,
            Some(cid),
            ts,
            Some(body),
            refs,
            None,
            Vec::new(),
            (writes, start),
        );
        Ok(Outcome::Appended(appended))
    }

    /// A user blocked by the other user of a direct pair writes nothing to it (messages, edits, reactions).
    fn check_not_blocked(&self, user: &UserId) -> ChatResult<()> {
        match self.id.peer_of(user) {
            Some(other) if self.blocks(other, user) => {
                Err(ChatError::forbidden("blocked by the other user"))
            }
            _ => Ok(()),
        }
    }

    /// `reply_to` names an earlier message; `mentions` names members (at most [`MAX_MENTIONS`]), or
    /// everyone (`*`: in a group, its owner only).
    fn check_refs(&self, from: &UserId, refs: &Refs) -> ChatResult<()> {
        if let Some(seq) = refs.reply_to {
            if seq == 0 || seq > self.last_seq {
                return Err(ChatError::bad_request(format!(
                    "reply_to {seq} is not an earlier message of {}",
                    self.id
                )));
            }
        }
        let Some(mentions) = &refs.mentions else {
            return Ok(());
        };
        if mentions.len() > MAX_MENTIONS {
            return Err(ChatError::bad_request(format!(
                "at most {MAX_MENTIONS} mentions"
            )));
        }
        for mention in mentions {
            match mention {
                Mention::All => {
                    if self.group.as_ref().is_some_and(|g| g.owner != *from) {
                        return Err(ChatError::forbidden(
                            "only the group's owner may mention everyone",
                        ));
                    }
                }
                Mention::User(user) if !self.members.contains(user) => {
                    return Err(ChatError::bad_request(format!(
                        "{user} is not a member of {}",
                        self.id
                    )));
                }
                Mention::User(_) => {}
            }
        }
        Ok(())
    }

    fn next_slot(&self, ts: u64) -> (u64, u64) {
        (self.last_seq.saturating_add(1), ts.max(self.last_ts))
    }

    /// Appends a message at the next seq (its sender's read position moves to it).
    #[allow(clippy::too_many_arguments)]
    fn append(
        &mut self,
        from: UserId,
        cid: Option<Cid>,
        ts: u64,
        body: Option<Box<RawValue>>,
        system: Option<serde_json::Value>,
        also: Vec<UserId>,
        writes: &mut Vec<Write>,
    ) -> Appended {
        let refs = Refs::default();
        let start = writes.len();
        self.append_with(from, cid, ts, body, refs, system, also, (writes, start))
    }

    /// [`ConvState::append`] with a reply and mentions; `writes.1` is where this message's writes begin.
    ///
    /// The previous sender's read position, implied by the last message until now, is written first
    /// (at `writes.1`), so that any prefix of the writes that holds the new message also holds that read.
    #[allow(clippy::too_many_arguments)]
    fn append_with(
        &mut self,
        from: UserId,
        cid: Option<Cid>,
        ts: u64,
        body: Option<Box<RawValue>>,
        refs: Refs,
        system: Option<serde_json::Value>,
        also: Vec<UserId>,
        (writes, start): (&mut Vec<Write>, usize),
    ) -> Appended {
        if let Some(previous) = self.last_from.as_ref().filter(|p| **p != from) {
            let read = Write::SenderRead {
                user: previous.clone(),
                seq: self.read_seq(previous),
            };
            writes.insert(start, read);
        }
        let (seq, ts) = self.next_slot(ts);
        let json = protocol::encode_message(&ChatMessage {
            conv: self.id.clone(),
            seq,
            from: from.clone(),
            cid,
            ts,
            body,
            reply_to: refs.reply_to,
            mentions: refs.mentions,
            edited: None,
            recalled: false,
            system,
        });
        writes.push(Write::Message {
            seq,
            json: json.clone(),
        });
        self.last_seq = seq;
        self.last_ts = ts;
        self.last_from = Some(from.clone());
        self.reads.insert(from.clone(), seq);
        Appended {
            posted: Posted { seq, ts },
            json,
            from,
            also,
        }
    }

    fn read(&mut self, user: UserId, seq: u64, writes: &mut Vec<Write>) -> ChatResult<Outcome> {
        self.check_member(&user)?;
        let seq = seq.min(self.last_seq);
        if seq <= self.read_seq(&user) {
            return Ok(Outcome::Unchanged);
        }
        writes.push(Write::Read {
            user: user.clone(),
            seq,
        });
        self.reads.insert(user, seq);
        Ok(Outcome::Read { seq })
    }

    fn recall(
        &mut self,
        user: &UserId,
        seq: u64,
        now: u64,
        rules: &Rules,
        history: &dyn History,
        writes: &mut Vec<Write>,
    ) -> ChatResult<Outcome> {
        self.check_member(user)?;
        let missing = || ChatError::not_found(format!("no message {seq} in {}", self.id));
        if seq == 0 || seq > self.last_seq {
            return Err(missing());
        }
        let json = history.message(seq)?.ok_or_else(missing)?;
        let mut message: ChatMessage =
            serde_json::from_str(&json).map_err(|_| ChatError::internal("corrupt message"))?;
        if message.from != *user {
            return Err(ChatError::forbidden("only the sender can recall a message"));
        }
        if now.saturating_sub(message.ts) > rules.recall_window_ms {
            return Err(ChatError::forbidden("the recall window has passed"));
        }
        if message.recalled {
            return Ok(Outcome::Unchanged);
        }
        // a recalled message keeps no body, edit time or mentions (it no longer counts as one)
        if let Some(mentions) = message.mentions.take().filter(|m| !m.is_empty()) {
            writes.push(Write::Mentions {
                seq,
                mentions: distinct(&mentions),
                on: false,
            });
        }
        message.body = None;
        message.edited = None;
        message.recalled = true;
        let json = protocol::encode_message(&message);
        writes.push(Write::Message {
            seq,
            json: json.clone(),
        });
        Ok(Outcome::Recalled { seq, json })
    }

    /// The stored message `seq`, parsed (`not_found` if there is none).
    fn stored_message(&self, history: &dyn History, seq: u64) -> ChatResult<ChatMessage> {
        let missing = || ChatError::not_found(format!("no message {seq} in {}", self.id));
        if seq == 0 || seq > self.last_seq {
            return Err(missing());
        }
        let json = history.message(seq)?.ok_or_else(missing)?;
        serde_json::from_str(&json).map_err(|_| ChatError::internal("corrupt message"))
    }

    #[allow(clippy::too_many_arguments)]
    fn edit(
        &mut self,
        user: &UserId,
        seq: u64,
        body: Box<RawValue>,
        now: u64,
        rules: &Rules,
        history: &dyn History,
        writes: &mut Vec<Write>,
    ) -> ChatResult<Outcome> {
        self.check_member(user)?;
        self.check_not_blocked(user)?;
        let mut message = self.stored_message(history, seq)?;
        if message.from != *user {
            return Err(ChatError::forbidden("only the sender can edit a message"));
        }
        if message.recalled || message.system.is_some() {
            return Err(ChatError::forbidden(
                "a recalled or system message cannot be edited",
            ));
        }
        if now.saturating_sub(message.ts) > rules.edit_window_ms {
            return Err(ChatError::forbidden("the edit window has passed"));
        }
        let edited = now.max(message.ts);
        message.body = Some(body.clone());
        message.edited = Some(edited);
        let json = protocol::encode_message(&message);
        writes.push(Write::Message {
            seq,
            json: json.clone(),
        });
        Ok(Outcome::Edited {
            seq,
            json,
            body,
            edited,
        })
    }

    fn react(
        &mut self,
        user: UserId,
        seq: u64,
        emoji: String,
        on: bool,
        history: &dyn History,
        writes: &mut Vec<Write>,
    ) -> ChatResult<Outcome> {
        self.check_member(&user)?;
        self.check_not_blocked(&user)?;
        check_emoji(&emoji)?;
        let message = self.stored_message(history, seq)?;
        if message.recalled {
            return Err(ChatError::forbidden(
                "a recalled message cannot be reacted to",
            ));
        }
        let held = history.reactions_of(seq, &user)?;
        let holds = held.contains(&emoji);
        if holds == on {
            return Ok(Outcome::Unchanged);
        }
        if on && held.len() >= MAX_REACTIONS_PER_USER {
            return Err(ChatError::new(
                ErrorCode::Limit,
                format!("at most {MAX_REACTIONS_PER_USER} different reactions on one message"),
            ));
        }
        let count = history.reaction_count(seq, &emoji)?;
        let count = if on {
            count.saturating_add(1)
        } else {
            count.saturating_sub(1)
        };
        writes.push(Write::Reaction {
            seq,
            user,
            emoji,
            on,
            count,
        });
        Ok(Outcome::Reacted { seq, count })
    }

    fn block(&mut self, user: UserId, on: bool, writes: &mut Vec<Write>) -> ChatResult<Outcome> {
        if !self.id.is_direct() {
            return Err(ChatError::bad_request("a block names a user"));
        }
        if self.id.peer_of(&user).is_none() {
            return Err(ChatError::forbidden("not a member of this pair"));
        }
        if self.blocks.contains(&user) == on {
            return Ok(Outcome::Unchanged);
        }
        if on {
            self.blocks.insert(user.clone());
        } else {
            self.blocks.remove(&user);
        }
        writes.push(Write::Block { user, on });
        Ok(Outcome::Blocked)
    }

    fn friend(
        &mut self,
        user: &UserId,
        op: FriendOp,
        writes: &mut Vec<Write>,
    ) -> ChatResult<Outcome> {
        let Some(other) = self.id.peer_of(user).cloned() else {
            return Err(ChatError::forbidden("not a member of this pair"));
        };
        if matches!(op, FriendOp::Request { .. }) && self.blocks(&other, user) {
            // answered `ok` like any request, but neither stored nor delivered
            return Ok(Outcome::Friendship(Transition {
                state: self.pair.clone(),
                index: Vec::new(),
                pushes: Vec::new(),
            }));
        }
        let transition = friendship::apply(&self.pair, user, &other, op)?;
        if transition.state != self.pair {
            writes.push(Write::Pair(transition.state.clone()));
            self.pair = transition.state.clone();
        }
        Ok(Outcome::Friendship(transition))
    }

    fn create_group(
        &mut self,
        owner: UserId,
        name: String,
        invited: Vec<UserId>,
        ts: u64,
        rules: &Rules,
        writes: &mut Vec<Write>,
    ) -> ChatResult<Outcome> {
        if self.id.is_direct() {
            return Err(ChatError::bad_request(
                "group frames take a group id (g:NAME)",
            ));
        }
        if self.group.is_some() || self.last_seq > 0 {
            return Err(ChatError::new(
                ErrorCode::Conflict,
                format!("group {} exists", self.id),
            ));
        }
        let chars = name.chars().count();
        if chars == 0 || chars > MAX_GROUP_NAME {
            return Err(ChatError::bad_request(
                "a group name has 1 to 128 characters",
            ));
        }
        if invited.len() > MAX_MEMBERS_PER_FRAME {
            return Err(ChatError::new(
                ErrorCode::Limit,
                "at most 1000 members a frame",
            ));
        }
        let mut members = vec![owner.clone()];
        let mut seen: HashSet<&UserId> = HashSet::from([&owner]);
        for m in &invited {
            if seen.insert(m) {
                members.push(m.clone());
            }
        }
        if members.len() as u64 > rules.max_group_members {
            return Err(ChatError::new(
                ErrorCode::Limit,
                "more than max_group_members members",
            ));
        }
        let meta = GroupMeta {
            name,
            owner: owner.clone(),
        };
        writes.push(Write::Group(meta.clone()));
        writes.push(Write::Members {
            users: members.clone(),
            member: true,
        });
        self.group = Some(meta);
        self.members = members.iter().cloned().collect();
        let appended = self.system_message(owner, "created", &members, Vec::new(), ts, writes);
        Ok(Outcome::Group {
            appended,
            changed: members,
            add: true,
        })
    }

    fn change_members(
        &mut self,
        user: UserId,
        members: Vec<UserId>,
        add: bool,
        ts: u64,
        rules: &Rules,
        writes: &mut Vec<Write>,
    ) -> ChatResult<Outcome> {
        self.check_owner(&user)?;
        if members.len() > MAX_MEMBERS_PER_FRAME {
            return Err(ChatError::new(
                ErrorCode::Limit,
                "at most 1000 members a frame",
            ));
        }
        let mut changed: Vec<UserId> = Vec::new();
        let mut seen: HashSet<&UserId> = HashSet::new();
        for m in &members {
            if self.members.contains(m) != add && seen.insert(m) {
                changed.push(m.clone());
            }
        }
        if !add && seen.contains(&user) {
            return Err(ChatError::bad_request("the owner cannot be removed"));
        }
        if add && (self.members.len() + changed.len()) as u64 > rules.max_group_members {
            return Err(ChatError::new(
                ErrorCode::Limit,
                "more than max_group_members members; nothing was added",
            ));
        }
        if changed.is_empty() {
            return Ok(Outcome::Unchanged);
        }
        writes.push(Write::Members {
            users: changed.clone(),
            member: add,
        });
        for m in &changed {
            if add {
                self.members.insert(m.clone());
            } else {
                self.members.remove(m);
            }
        }
        let (event, also) = if add {
            ("members_added", Vec::new())
        } else {
            ("members_removed", changed.clone())
        };
        let appended = self.system_message(user, event, &changed, also, ts, writes);
        Ok(Outcome::Group {
            appended,
            changed,
            add,
        })
    }

    fn leave(&mut self, user: UserId, ts: u64, writes: &mut Vec<Write>) -> ChatResult<Outcome> {
        self.check_member(&user)?;
        if self.group.as_ref().is_some_and(|g| g.owner == user) {
            return Err(ChatError::forbidden("the owner cannot leave the group"));
        }
        let leaver = vec![user.clone()];
        writes.push(Write::Members {
            users: leaver.clone(),
            member: false,
        });
        self.members.remove(&user);
        let appended =
            self.system_message(user, "member_left", &leaver, leaver.clone(), ts, writes);
        Ok(Outcome::Group {
            appended,
            changed: leaver,
            add: false,
        })
    }

    /// Appends a group's system message by `from` about `members`.
    fn system_message(
        &mut self,
        from: UserId,
        event: &str,
        members: &[UserId],
        also: Vec<UserId>,
        ts: u64,
        writes: &mut Vec<Write>,
    ) -> Appended {
        let system = json!({"event": event, "members": members});
        self.append(from, None, ts, None, Some(system), also, writes)
    }
}

/// What a post refers to: the message it answers and who it mentions.
#[derive(Debug, Default)]
struct Refs {
    reply_to: Option<u64>,
    mentions: Option<Vec<Mention>>,
}

/// Each mention once, in order.
fn distinct(mentions: &[Mention]) -> Vec<Mention> {
    let mut seen = BTreeSet::new();
    mentions
        .iter()
        .filter(|m| seen.insert(*m))
        .cloned()
        .collect()
}

/// An emoji is any text of 1 to [`MAX_EMOJI_CHARS`] characters without control characters.
pub fn check_emoji(emoji: &str) -> ChatResult<()> {
    let chars = emoji.chars().count();
    if chars == 0 || chars > MAX_EMOJI_CHARS || emoji.chars().any(char::is_control) {
        return Err(ChatError::bad_request(format!(
            "an emoji has 1 to {MAX_EMOJI_CHARS} characters"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::mem::Mem;
    use super::*;

    fn user(s: &str) -> UserId {
        UserId::parse(s).expect("user id")
    }

    fn conv(s: &str) -> ConvId {
        ConvId::parse(s).expect("conv id")
    }

    fn rules() -> Rules {
        Rules {
            dm_requires_friendship: true,
            max_group_members: 4,
            recall_window_ms: 1000,
            edit_window_ms: 5000,
        }
    }

    fn body(text: &str) -> Box<RawValue> {
        RawValue::from_string(json!({ "text": text }).to_string()).expect("raw")
    }

    fn post(from: &str, cid: &str, ts: u64) -> ConvCommand {
        ConvCommand::Post {
            from: user(from),
            cid: Cid::parse(cid).expect("cid"),
            ts,
            body: body(cid),
            reply_to: None,
            mentions: None,
        }
    }

    /// Applies and writes; returns the outcome.
    fn run(state: &mut ConvState, mem: &mut Mem, cmd: ConvCommand) -> ChatResult<Outcome> {
        let mut writes = Vec::new();
        let before = state.clone();
        let outcome = state.apply(cmd, &rules(), mem, &mut writes);
        if outcome.is_err() {
            assert_eq!(*state, before, "a refused command changes nothing");
            assert!(writes.is_empty(), "a refused command writes nothing");
        }
        mem.write(writes);
        outcome
    }

    fn befriend(state: &mut ConvState, mem: &mut Mem) {
        let request = FriendOp::Request {
            note: String::new(),
        };
        run(
            state,
            mem,
            ConvCommand::Friend {
                user: user("alice"),
                op: request,
            },
        )
        .expect("request");
        run(
            state,
            mem,
            ConvCommand::Friend {
                user: user("bob"),
                op: FriendOp::Accept,
            },
        )
        .expect("accept");
        assert_eq!(state.pair, PairState::Friends);
    }

    fn posted(outcome: ChatResult<Outcome>) -> Posted {
        match outcome {
            Ok(Outcome::Appended(a)) => a.posted,
            Ok(Outcome::Duplicate(p)) => p,
            other => panic!("expected a post, got {other:?}"),
        }
    }

    #[test]
    fn direct_messages_need_friendship_then_number_without_gaps() {
        let mut state = ConvState::empty(conv("dm:alice:bob"));
        let mut mem = Mem::default();
        let refused = run(&mut state, &mut mem, post("alice", "c1", 10));
        assert_eq!(refused.err().map(|e| e.code), Some(ErrorCode::NotFriends));
        befriend(&mut state, &mut mem);
        assert_eq!(
            posted(run(&mut state, &mut mem, post("alice", "c1", 10))).seq,
            1
        );
        assert_eq!(
            posted(run(&mut state, &mut mem, post("bob", "c1", 5))),
            Posted { seq: 2, ts: 10 }
        );
        assert_eq!(
            state.read_seq(&user("bob")),
            2,
            "sending advances one's read position"
        );
        let outsider = run(&mut state, &mut mem, post("carol", "c1", 11));
        assert_eq!(outsider.err().map(|e| e.code), Some(ErrorCode::Forbidden));
    }

    #[test]
    fn a_cid_is_answered_with_its_first_seq_and_ts() {
        let mut state = ConvState::empty(conv("dm:alice:bob"));
        let mut mem = Mem::default();
        befriend(&mut state, &mut mem);
        let first = posted(run(&mut state, &mut mem, post("alice", "c1", 10)));
        posted(run(&mut state, &mut mem, post("alice", "c2", 11)));
        let again = run(&mut state, &mut mem, post("alice", "c1", 99));
        assert!(matches!(again, Ok(Outcome::Duplicate(p)) if p == first));
        assert_eq!(state.last_seq, 2);
        // the same cid from the other member is another message
        assert_eq!(
            posted(run(&mut state, &mut mem, post("bob", "c1", 12))).seq,
            3
        );
        // a retry after the friendship ended still gets its first answer
        run(
            &mut state,
            &mut mem,
            ConvCommand::Friend {
                user: user("bob"),
                op: FriendOp::Remove,
            },
        )
        .expect("remove");
        assert!(
            matches!(run(&mut state, &mut mem, post("alice", "c2", 13)), Ok(Outcome::Duplicate(p)) if p.seq == 2)
        );
    }

    #[test]
    fn a_dedupe_entry_whose_message_was_lost_is_not_trusted() {
        let mut state = ConvState::empty(conv("dm:alice:bob"));
        let mut mem = Mem::default();
        befriend(&mut state, &mut mem);
        let mut writes = Vec::new();
        let outcome = state.apply(post("alice", "c1", 10), &rules(), &mem, &mut writes);
        assert!(matches!(outcome, Ok(Outcome::Appended(_))));
        // only the dedupe entry reached the store; the restarted state has no message
        writes.truncate(1);
        mem.write(writes);
        let mut state = ConvState {
            last_seq: 0,
            last_ts: 0,
            ..state
        };
        let retry = posted(run(&mut state, &mut mem, post("alice", "c1", 20)));
        assert_eq!(retry, Posted { seq: 1, ts: 20 });
        assert!(mem.msgs[&1].contains("\"cid\":\"c1\""));
    }

    #[test]
    fn reads_never_move_back_and_stop_at_the_last_seq() {
        let mut state = ConvState::empty(conv("dm:alice:bob"));
        let mut mem = Mem::default();
        befriend(&mut state, &mut mem);
        posted(run(&mut state, &mut mem, post("alice", "c1", 10)));
        posted(run(&mut state, &mut mem, post("alice", "c2", 10)));
        let read = |seq| ConvCommand::Read {
            user: user("bob"),
            seq,
        };
        assert!(matches!(
            run(&mut state, &mut mem, read(99)),
            Ok(Outcome::Read { seq: 2 })
        ));
        assert!(matches!(
            run(&mut state, &mut mem, read(1)),
            Ok(Outcome::Unchanged)
        ));
        assert_eq!(state.read_seq(&user("bob")), 2);
    }

    #[test]
    fn recall_by_the_sender_within_the_window_only() {
        let mut state = ConvState::empty(conv("dm:alice:bob"));
        let mut mem = Mem::default();
        befriend(&mut state, &mut mem);
        posted(run(&mut state, &mut mem, post("alice", "c1", 10)));
        let recall = |who: &str, seq, now| ConvCommand::Recall {
            user: user(who),
            seq,
            now,
        };
        let code = |r: ChatResult<Outcome>| r.err().map(|e| e.code);
        assert_eq!(
            code(run(&mut state, &mut mem, recall("bob", 1, 10))),
            Some(ErrorCode::Forbidden)
        );
        assert_eq!(
            code(run(&mut state, &mut mem, recall("alice", 1, 2000))),
            Some(ErrorCode::Forbidden)
        );
        assert_eq!(
            code(run(&mut state, &mut mem, recall("alice", 2, 10))),
            Some(ErrorCode::NotFound)
        );
        assert!(matches!(
            run(&mut state, &mut mem, recall("alice", 1, 500)),
            Ok(Outcome::Recalled { seq: 1, .. })
        ));
        assert!(mem.msgs[&1].contains("\"recalled\":true") && !mem.msgs[&1].contains("body"));
        assert!(matches!(
            run(&mut state, &mut mem, recall("alice", 1, 600)),
            Ok(Outcome::Unchanged)
        ));
    }

    #[test]
    fn groups_owner_rules_limits_and_system_messages() {
        let mut state = ConvState::empty(conv("g:team"));
        let mut mem = Mem::default();
        let code = |r: ChatResult<Outcome>| r.err().map(|e| e.code);
        assert_eq!(
            code(run(&mut state, &mut mem, post("alice", "c1", 1))),
            Some(ErrorCode::NotFound)
        );
        let create = |members: &[&str]| ConvCommand::CreateGroup {
            owner: user("alice"),
            name: "Team".into(),
            members: members.iter().map(|m| user(m)).collect(),
            ts: 5,
        };
        assert_eq!(
            code(run(&mut state, &mut mem, create(&["b", "c", "d", "e"]))),
            Some(ErrorCode::Limit)
        );
        match run(&mut state, &mut mem, create(&["bob", "bob", "alice"])) {
            Ok(Outcome::Group {
                appended,
                changed,
                add: true,
            }) => {
                assert_eq!(appended.posted.seq, 1);
                assert_eq!(changed, vec![user("alice"), user("bob")]);
                assert!(appended.json.contains("\"event\":\"created\""));
            }
            other => panic!("create: {other:?}"),
        }
        assert_eq!(
            code(run(&mut state, &mut mem, create(&[]))),
            Some(ErrorCode::Conflict)
        );
        let change = |who: &str, members: &[&str], add| ConvCommand::ChangeMembers {
            user: user(who),
            members: members.iter().map(|m| user(m)).collect(),
            add,
            ts: 6,
        };
        assert_eq!(
            code(run(&mut state, &mut mem, change("bob", &["carol"], true))),
            Some(ErrorCode::Forbidden)
        );
        assert!(matches!(
            run(&mut state, &mut mem, change("alice", &["bob"], true)),
            Ok(Outcome::Unchanged)
        ));
        assert_eq!(
            code(run(
                &mut state,
                &mut mem,
                change("alice", &["alice"], false)
            )),
            Some(ErrorCode::BadRequest)
        );
        assert_eq!(
            code(run(
                &mut state,
                &mut mem,
                change("alice", &["c", "d", "e"], true)
            )),
            Some(ErrorCode::Limit)
        );
        match run(&mut state, &mut mem, change("alice", &["bob"], false)) {
            Ok(Outcome::Group {
                appended,
                add: false,
                ..
            }) => {
                assert_eq!(appended.posted.seq, 2);
                assert_eq!(
                    appended.also,
                    vec![user("bob")],
                    "the removed member still gets the news"
                );
            }
            other => panic!("remove: {other:?}"),
        }
        assert_eq!(
            code(run(&mut state, &mut mem, post("bob", "c1", 7))),
            Some(ErrorCode::Forbidden)
        );
        assert_eq!(
            code(run(
                &mut state,
                &mut mem,
                ConvCommand::Leave {
                    user: user("alice"),
                    ts: 8
                }
            )),
            Some(ErrorCode::Forbidden),
            "the owner cannot leave"
        );
        // a group message needs no friendship
        assert_eq!(
            posted(run(&mut state, &mut mem, post("alice", "c1", 9))).seq,
            3
        );
    }

    fn post_with(
        from: &str,
        cid: &str,
        ts: u64,
        reply_to: Option<u64>,
        mentions: &[&str],
    ) -> ConvCommand {
        let mentions = mentions
            .iter()
            .map(|m| match *m {
                "*" => Mention::All,
                u => Mention::User(user(u)),
            })
            .collect();
        ConvCommand::Post {
            from: user(from),
            cid: Cid::parse(cid).expect("cid"),
            ts,
            body: body(cid),
            reply_to,
            mentions: Some(mentions),
        }
    }

    fn group(mem: &mut Mem) -> ConvState {
        let mut state = ConvState::empty(conv("g:team"));
        let create = ConvCommand::CreateGroup {
            owner: user("alice"),
            name: "Team".into(),
            members: vec![user("bob"), user("carol")],
            ts: 5,
        };
        run(&mut state, mem, create).expect("create");
        state
    }

    #[test]
    fn replies_and_mentions_are_checked_and_indexed() {
        let mut mem = Mem::default();
        let mut state = group(&mut mem);
        let code = |r: ChatResult<Outcome>| r.err().map(|e| e.code);
        assert_eq!(
            code(run(
                &mut state,
                &mut mem,
                post_with("bob", "c1", 6, Some(2), &[])
            )),
            Some(ErrorCode::BadRequest),
            "reply_to a later message"
        );
        assert_eq!(
            code(run(
                &mut state,
                &mut mem,
                post_with("bob", "c1", 6, None, &["dave"])
            )),
            Some(ErrorCode::BadRequest),
            "a mention of a non-member"
        );
        assert_eq!(
            code(run(
                &mut state,
                &mut mem,
                post_with("bob", "c1", 6, None, &["*"])
            )),
            Some(ErrorCode::Forbidden),
            "everyone: the owner only"
        );
        let many: Vec<String> = (0..=MAX_MENTIONS).map(|_| "carol".to_string()).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(
            code(run(
                &mut state,
                &mut mem,
                post_with("bob", "c1", 6, None, &many)
            )),
            Some(ErrorCode::BadRequest)
        );
        let p = posted(run(
            &mut state,
            &mut mem,
            post_with("bob", "c1", 6, Some(1), &["carol", "carol"]),
        ));
        assert_eq!(p.seq, 2);
        assert!(mem.msgs[&2].contains("\"reply_to\":1,\"mentions\":[\"carol\",\"carol\"]"));
        assert_eq!(mem.mentions, [(2, "carol".to_string())].into());
        posted(run(
            &mut state,
            &mut mem,
            post_with("alice", "c2", 7, None, &["*"]),
        ));
        assert!(mem.mentions.contains(&(3, "*".to_string())));
        // a recall takes the mention back
        let recall = ConvCommand::Recall {
            user: user("bob"),
            seq: 2,
            now: 8,
        };
        run(&mut state, &mut mem, recall).expect("recall");
        assert!(!mem.mentions.contains(&(2, "carol".to_string())));
        assert!(!mem.msgs[&2].contains("mentions"));
    }

    #[test]
    fn edits_by_the_sender_within_the_window() {
        let mut mem = Mem::default();
        let mut state = group(&mut mem);
        posted(run(&mut state, &mut mem, post("bob", "c1", 100)));
        let edit = |who: &str, seq, now| ConvCommand::Edit {
            user: user(who),
            seq,
            body: body("new"),
            now,
        };
        let code = |r: ChatResult<Outcome>| r.err().map(|e| e.code);
        assert_eq!(
            code(run(&mut state, &mut mem, edit("alice", 2, 200))),
            Some(ErrorCode::Forbidden)
        );
        assert_eq!(
            code(run(&mut state, &mut mem, edit("alice", 1, 200))),
            Some(ErrorCode::Forbidden),
            "system"
        );
        assert_eq!(
            code(run(&mut state, &mut mem, edit("bob", 2, 5101))),
            Some(ErrorCode::Forbidden),
            "late"
        );
        assert_eq!(
            code(run(&mut state, &mut mem, edit("bob", 9, 200))),
            Some(ErrorCode::NotFound)
        );
        match run(&mut state, &mut mem, edit("bob", 2, 5100)) {
            Ok(Outcome::Edited {
                seq: 2,
                edited: 5100,
                ..
            }) => {}
            other => panic!("edit: {other:?}"),
        }
        assert!(mem.msgs[&2].contains("\"body\":{\"text\":\"new\"},\"edited\":5100"));
        assert_eq!(state.last_seq, 2, "an edit appends nothing");
        let recall = ConvCommand::Recall {
            user: user("bob"),
            seq: 2,
            now: 200,
        };
        run(&mut state, &mut mem, recall).expect("recall");
        assert_eq!(
            code(run(&mut state, &mut mem, edit("bob", 2, 300))),
            Some(ErrorCode::Forbidden)
        );
    }

    #[test]
    fn reactions_count_repeat_nothing_and_stop_at_the_limit() {
        let mut mem = Mem::default();
        let mut state = group(&mut mem);
        posted(run(&mut state, &mut mem, post("bob", "c1", 100)));
        let react = |who: &str, emoji: &str, on| ConvCommand::React {
            user: user(who),
            seq: 2,
            emoji: emoji.into(),
            on,
        };
        assert!(matches!(
            run(&mut state, &mut mem, react("alice", "+1", true)),
            Ok(Outcome::Reacted { count: 1, .. })
        ));
        assert!(matches!(
            run(&mut state, &mut mem, react("alice", "+1", true)),
            Ok(Outcome::Unchanged)
        ));
        assert!(matches!(
            run(&mut state, &mut mem, react("carol", "+1", true)),
            Ok(Outcome::Reacted { count: 2, .. })
        ));
        assert!(matches!(
            run(&mut state, &mut mem, react("carol", "+1", false)),
            Ok(Outcome::Reacted { count: 1, .. })
        ));
        assert!(matches!(
            run(&mut state, &mut mem, react("carol", "+1", false)),
            Ok(Outcome::Unchanged)
        ));
        for i in 1..MAX_REACTIONS_PER_USER {
            run(&mut state, &mut mem, react("alice", &format!("e{i}"), true)).expect("react");
        }
        let code = |r: ChatResult<Outcome>| r.err().map(|e| e.code);
        assert_eq!(
            code(run(&mut state, &mut mem, react("alice", "one-more", true))),
            Some(ErrorCode::Limit)
        );
        assert_eq!(
            code(run(&mut state, &mut mem, react("alice", "", true))),
            Some(ErrorCode::BadRequest)
        );
        assert_eq!(
            code(run(
                &mut state,
                &mut mem,
                react("alice", &"x".repeat(33), true)
            )),
            Some(ErrorCode::BadRequest)
        );
        assert_eq!(
            code(run(&mut state, &mut mem, react("dave", "+1", true))),
            Some(ErrorCode::Forbidden)
        );
        let recall = ConvCommand::Recall {
            user: user("bob"),
            seq: 2,
            now: 200,
        };
        run(&mut state, &mut mem, recall).expect("recall");
        assert_eq!(
            code(run(&mut state, &mut mem, react("carol", "+1", true))),
            Some(ErrorCode::Forbidden)
        );
    }

    #[test]
    fn a_block_refuses_the_blocked_users_messages_and_requests_in_the_pair_only() {
        let mut state = ConvState::empty(conv("dm:alice:bob"));
        let mut mem = Mem::default();
        befriend(&mut state, &mut mem);
        let block = |on| ConvCommand::Block {
            user: user("alice"),
            on,
        };
        assert!(matches!(
            run(&mut state, &mut mem, block(true)),
            Ok(Outcome::Blocked)
        ));
        assert!(matches!(
            run(&mut state, &mut mem, block(true)),
            Ok(Outcome::Unchanged)
        ));
        assert!(state.blocks(&user("alice"), &user("bob")));
        assert!(!state.blocks(&user("bob"), &user("alice")));
        let code = |r: ChatResult<Outcome>| r.err().map(|e| e.code);
        assert_eq!(
            code(run(&mut state, &mut mem, post("bob", "c1", 1))),
            Some(ErrorCode::Forbidden)
        );
        assert_eq!(
            posted(run(&mut state, &mut mem, post("alice", "c1", 1))).seq,
            1,
            "the blocker still may"
        );
        // bob's request after a removal: `ok`, but nothing stored
        run(
            &mut state,
            &mut mem,
            ConvCommand::Friend {
                user: user("alice"),
                op: FriendOp::Remove,
            },
        )
        .expect("remove");
        let request = ConvCommand::Friend {
            user: user("bob"),
            op: FriendOp::Request {
                note: String::new(),
            },
        };
        match run(&mut state, &mut mem, request) {
            Ok(Outcome::Friendship(t)) => assert!(t.index.is_empty() && t.pushes.is_empty()),
            other => panic!("request: {other:?}"),
        }
        assert_eq!(state.pair, PairState::None);
        assert!(matches!(
            run(&mut state, &mut mem, block(false)),
            Ok(Outcome::Blocked)
        ));
        let mut group = ConvState::empty(conv("g:team"));
        assert_eq!(
            code(run(&mut group, &mut mem, block(true))),
            Some(ErrorCode::BadRequest)
        );
    }
}
