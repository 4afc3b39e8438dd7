//! Model test of the conversation core (`rookery::state::conv`) over a real sled store: random sequences of
//! commands on a direct conversation and a group, with clean restarts and crashes that lose the tail of a
//! message's writes, checked after every step against a reference written from the contract's rules:
//! messages (replies, mentions, edits and recalls included), read positions, reaction counts, every user's
//! mention count and the pair's blocks.
//!
//! `PROPTEST_CASES=5000 cargo test --release --test state_model` runs it longer.

use std::collections::{BTreeMap, BTreeSet};

use rookery::net::protocol::Mention;
use std::path::Path;

use proptest::prelude::*;
use rookery::actors::friendship::FriendOp;
use rookery::config::StoreConfig;
use rookery::error::ErrorCode;
use rookery::ids::{Cid, ConvId, UserId};
use rookery::state::conv::{ConvCommand, ConvState, Outcome, Rules, Write};
use rookery::store::{ConvHistory, Store};
use serde_json::value::RawValue;
use serde_json::Value;

const USERS: [&str; 4] = ["alice", "bob", "carol", "dave"];
const DM: &str = "dm:alice:bob";
const GROUP: &str = "g:team";
const WINDOW_MS: u64 = 1000;
const EDIT_WINDOW_MS: u64 = 2000;
const MAX_MEMBERS: u64 = 3;

fn rules() -> Rules {
    Rules {
        dm_requires_friendship: true,
        max_group_members: MAX_MEMBERS,
        recall_window_ms: WINDOW_MS,
        edit_window_ms: EDIT_WINDOW_MS,
    }
}

#[derive(Debug, Clone)]
enum Op {
    Post {
        group: bool,
        from: usize,
        cid: u8,
        ts: u64,
    },
    Read {
        group: bool,
        user: usize,
        seq: u64,
    },
    Recall {
        group: bool,
        user: usize,
        seq: u64,
        late: bool,
    },
    Friend {
        user: usize,
        op: u8,
    },
    Create {
        owner: usize,
        members: Vec<usize>,
    },
    Change {
        user: usize,
        members: Vec<usize>,
        add: bool,
    },
    Leave {
        user: usize,
    },
    /// A post answering `reply_to` and mentioning `mentions` (index 4 is `*`).
    PostRefs {
        group: bool,
        from: usize,
        cid: u8,
        reply_to: Option<u64>,
        mentions: Vec<usize>,
    },
    Edit {
        group: bool,
        user: usize,
        seq: u64,
        late: bool,
    },
    React {
        group: bool,
        user: usize,
        seq: u64,
        emoji: u8,
        on: bool,
    },
    Block {
        user: usize,
        on: bool,
    },
    Restart,
    /// A post whose writes ([the previous sender's read,] cid, message) reach the store only up to `keep`, then a crash.
    Crash {
        group: bool,
        from: usize,
        cid: u8,
        ts: u64,
        keep: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let user = 0..USERS.len();
    let members = proptest::collection::vec(0..USERS.len(), 0..4);
    prop_oneof![
        8 => (any::<bool>(), user.clone(), 0..6u8, 0..50u64)
            .prop_map(|(group, from, cid, ts)| Op::Post { group, from, cid, ts }),
        3 => (any::<bool>(), user.clone(), 0..12u64)
            .prop_map(|(group, user, seq)| Op::Read { group, user, seq }),
        2 => (any::<bool>(), user.clone(), 0..8u64, any::<bool>())
            .prop_map(|(group, user, seq, late)| Op::Recall { group, user, seq, late }),
        3 => (0..2usize, 0..4u8).prop_map(|(user, op)| Op::Friend { user, op }),
        1 => (user.clone(), members.clone()).prop_map(|(owner, members)| Op::Create { owner, members }),
        2 => (user.clone(), members, any::<bool>())
            .prop_map(|(user, members, add)| Op::Change { user, members, add }),
        1 => user.clone().prop_map(|user| Op::Leave { user }),
        3 => (any::<bool>(), user.clone(), 0..6u8, proptest::option::of(0..8u64),
              proptest::collection::vec(0..=USERS.len(), 0..3))
            .prop_map(|(group, from, cid, reply_to, mentions)| Op::PostRefs { group, from, cid, reply_to, mentions }),
        2 => (any::<bool>(), user.clone(), 0..8u64, any::<bool>())
            .prop_map(|(group, user, seq, late)| Op::Edit { group, user, seq, late }),
        4 => (any::<bool>(), user.clone(), 0..8u64, 0..3u8, any::<bool>())
            .prop_map(|(group, user, seq, emoji, on)| Op::React { group, user, seq, emoji, on }),
        2 => (0..2usize, any::<bool>()).prop_map(|(user, on)| Op::Block { user, on }),
        1 => Just(Op::Restart),
        1 => (any::<bool>(), user, 0..6u8, 0..50u64, 0..4usize)
            .prop_map(|(group, from, cid, ts, keep)| Op::Crash { group, from, cid, ts, keep }),
    ]
}

// ---- the reference ----

#[derive(Debug, Clone, PartialEq)]
struct RefMsg {
    from: String,
    cid: Option<String>,
    ts: u64,
    recalled: bool,
    /// A group's system event.
    event: Option<String>,
    /// The body's text (none for recalled and system messages).
    text: Option<String>,
    reply_to: Option<u64>,
    mentions: Option<Vec<String>>,
    edited: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
enum RefPair {
    None,
    Pending(String),
    Friends,
}

#[derive(Debug, Clone)]
struct RefConv {
    group: bool,
    msgs: Vec<RefMsg>,
    members: BTreeSet<String>,
    owner: Option<String>,
    reads: BTreeMap<String, u64>,
    pair: RefPair,
    /// (seq, emoji) -> who holds it
    reactions: BTreeMap<(u64, String), BTreeSet<String>>,
    /// Who of the pair blocks the other.
    blocks: BTreeSet<String>,
}

/// What the reference expects of a command.
#[derive(Debug, PartialEq)]
enum Expect {
    New(u64, u64),
    Duplicate(u64, u64),
    Changed,
    Unchanged,
    Refused(ErrorCode),
}

impl RefConv {
    fn new(group: bool) -> RefConv {
        RefConv {
            group,
            msgs: Vec::new(),
            members: if group {
                BTreeSet::new()
            } else {
                ["alice".into(), "bob".into()].into()
            },
            owner: None,
            reads: BTreeMap::new(),
            pair: RefPair::None,
            reactions: BTreeMap::new(),
            blocks: BTreeSet::new(),
        }
    }

    fn other(me: &str) -> &'static str {
        if me == "alice" {
            "bob"
        } else {
            "alice"
        }
    }

    /// Unread messages that mention `user` (by name or `*`).
    fn mentions_of(&self, user: &str) -> u64 {
        let read = self.reads.get(user).copied().unwrap_or(0);
        self.msgs
            .iter()
            .enumerate()
            .filter(|(i, m)| {
                *i as u64 >= read
                    && m.mentions
                        .as_ref()
                        .is_some_and(|l| l.iter().any(|x| x == user || x == "*"))
            })
            .count() as u64
    }

    /// Reaction counts by seq (as `sync` shows them: none for recalled messages is the store's business,
    /// so all are listed here).
    fn counts(&self) -> BTreeMap<u64, BTreeMap<String, u64>> {
        let mut out: BTreeMap<u64, BTreeMap<String, u64>> = BTreeMap::new();
        for ((seq, emoji), users) in &self.reactions {
            if !users.is_empty() {
                out.entry(*seq)
                    .or_default()
                    .insert(emoji.clone(), users.len() as u64);
            }
        }
        out
    }

    fn last_ts(&self) -> u64 {
        self.msgs.last().map_or(0, |m| m.ts)
    }

    fn check_member(&self, user: &str) -> Result<(), ErrorCode> {
        if self.group && self.owner.is_none() {
            return Err(ErrorCode::NotFound);
        }
        if self.members.contains(user) {
            Ok(())
        } else {
            Err(ErrorCode::Forbidden)
        }
    }

    fn push(
        &mut self,
        from: &str,
        cid: Option<String>,
        ts: u64,
        event: Option<&str>,
    ) -> (u64, u64) {
        let ts = ts.max(self.last_ts());
        self.msgs.push(RefMsg {
            from: from.into(),
            text: event.is_none().then(|| cid.clone()).flatten(),
            cid,
            ts,
            recalled: false,
            event: event.map(str::to_string),
            reply_to: None,
            mentions: None,
            edited: None,
        });
        let seq = self.msgs.len() as u64;
        self.reads.insert(from.into(), seq);
        (seq, ts)
    }

    fn post(&mut self, from: &str, cid: &str, ts: u64) -> Expect {
        self.post_refs(from, cid, ts, None, None)
    }

    fn post_refs(
        &mut self,
        from: &str,
        cid: &str,
        ts: u64,
        reply_to: Option<u64>,
        mentions: Option<Vec<String>>,
    ) -> Expect {
        if let Err(code) = self.check_member(from) {
            return Expect::Refused(code);
        }
        let earlier = self
            .msgs
            .iter()
            .position(|m| m.from == from && m.cid.as_deref() == Some(cid));
        if let Some(i) = earlier {
            return Expect::Duplicate(i as u64 + 1, self.msgs[i].ts);
        }
        if reply_to.is_some_and(|r| r == 0 || r > self.msgs.len() as u64) {
            return Expect::Refused(ErrorCode::BadRequest);
        }
        for m in mentions.iter().flatten() {
            if m == "*" {
                if self.group && self.owner.as_deref() != Some(from) {
                    return Expect::Refused(ErrorCode::Forbidden);
                }
            } else if !self.members.contains(m) {
                return Expect::Refused(ErrorCode::BadRequest);
            }
        }
        if self.blocked(from) {
            return Expect::Refused(ErrorCode::Forbidden);
        }
        if !self.group && self.pair != RefPair::Friends {
            return Expect::Refused(ErrorCode::NotFriends);
        }
        let (seq, ts) = self.push(from, Some(cid.into()), ts, None);
        if let Some(m) = self.msgs.last_mut() {
            m.reply_to = reply_to;
            m.mentions = mentions;
        }
        Expect::New(seq, ts)
    }

    /// A user the other of the pair blocks writes nothing to it.
    fn blocked(&self, user: &str) -> bool {
        !self.group && self.blocks.contains(Self::other(user))
    }

    fn edit(&mut self, user: &str, seq: u64, now: u64, text: &str) -> Expect {
        if let Err(code) = self.check_member(user) {
            return Expect::Refused(code);
        }
        if self.blocked(user) {
            return Expect::Refused(ErrorCode::Forbidden);
        }
        let Some(m) = seq
            .checked_sub(1)
            .and_then(|i| self.msgs.get_mut(usize::try_from(i).ok()?))
        else {
            return Expect::Refused(ErrorCode::NotFound);
        };
        if m.from != user
            || m.recalled
            || m.event.is_some()
            || now.saturating_sub(m.ts) > EDIT_WINDOW_MS
        {
            return Expect::Refused(ErrorCode::Forbidden);
        }
        m.text = Some(text.into());
        m.edited = Some(now.max(m.ts));
        Expect::Changed
    }

    fn react(&mut self, user: &str, seq: u64, emoji: &str, on: bool) -> Expect {
        if let Err(code) = self.check_member(user) {
            return Expect::Refused(code);
        }
        if self.blocked(user) {
            return Expect::Refused(ErrorCode::Forbidden);
        }
        let Some(m) = seq
            .checked_sub(1)
            .and_then(|i| self.msgs.get(usize::try_from(i).ok()?))
        else {
            return Expect::Refused(ErrorCode::NotFound);
        };
        if m.recalled {
            return Expect::Refused(ErrorCode::Forbidden);
        }
        let holders = self.reactions.entry((seq, emoji.into())).or_default();
        let changed = if on {
            holders.insert(user.into())
        } else {
            holders.remove(user)
        };
        if changed {
            Expect::Changed
        } else {
            Expect::Unchanged
        }
    }

    fn block(&mut self, user: &str, on: bool) -> Expect {
        let changed = if on {
            self.blocks.insert(user.into())
        } else {
            self.blocks.remove(user)
        };
        if changed {
            Expect::Changed
        } else {
            Expect::Unchanged
        }
    }

    fn read(&mut self, user: &str, seq: u64) -> Expect {
        if let Err(code) = self.check_member(user) {
            return Expect::Refused(code);
        }
        let seq = seq.min(self.msgs.len() as u64);
        let current = self.reads.get(user).copied().unwrap_or(0);
        if seq <= current {
            return Expect::Unchanged;
        }
        self.reads.insert(user.into(), seq);
        Expect::Changed
    }

    fn recall(&mut self, user: &str, seq: u64, now: u64) -> Expect {
        if let Err(code) = self.check_member(user) {
            return Expect::Refused(code);
        }
        let Some(m) = seq
            .checked_sub(1)
            .and_then(|i| self.msgs.get_mut(usize::try_from(i).ok()?))
        else {
            return Expect::Refused(ErrorCode::NotFound);
        };
        if m.from != user || now.saturating_sub(m.ts) > WINDOW_MS {
            return Expect::Refused(ErrorCode::Forbidden);
        }
        if m.recalled {
            return Expect::Unchanged;
        }
        m.recalled = true;
        m.text = None;
        m.mentions = None;
        m.edited = None;
        Expect::Changed
    }

    fn friend(&mut self, me: &str, op: u8) -> Expect {
        let other = Self::other(me);
        if op == 0 && self.blocks.contains(other) {
            return Expect::Changed; // `ok`, but neither stored nor delivered
        }
        let from_other = self.pair == RefPair::Pending(other.into());
        let from_me = self.pair == RefPair::Pending(me.into());
        let next = match op {
            0 => match self.pair {
                RefPair::Friends => RefPair::Friends,
                _ if from_other => RefPair::Friends,
                _ => RefPair::Pending(me.into()),
            },
            1 if from_other => RefPair::Friends,
            2 if from_other => RefPair::None,
            1 | 2 => return Expect::Refused(ErrorCode::NotFound),
            _ if self.pair == RefPair::Friends || from_me => RefPair::None,
            _ => return Expect::Refused(ErrorCode::NotFound),
        };
        self.pair = next;
        Expect::Changed
    }

    fn create(&mut self, owner: &str, invited: &[&str], ts: u64) -> Expect {
        if self.owner.is_some() || !self.msgs.is_empty() {
            return Expect::Refused(ErrorCode::Conflict);
        }
        let mut members: BTreeSet<String> = invited.iter().map(|m| m.to_string()).collect();
        members.insert(owner.into());
        if members.len() as u64 > MAX_MEMBERS {
            return Expect::Refused(ErrorCode::Limit);
        }
        self.members = members;
        self.owner = Some(owner.into());
        self.push(owner, None, ts, Some("created"));
        Expect::Changed
    }

    fn change(&mut self, user: &str, listed: &[&str], add: bool, ts: u64) -> Expect {
        if let Err(code) = self.check_member(user) {
            return Expect::Refused(code);
        }
        if self.owner.as_deref() != Some(user) {
            return Expect::Refused(ErrorCode::Forbidden);
        }
        let changed: BTreeSet<String> = listed
            .iter()
            .filter(|m| self.members.contains(**m) != add)
            .map(|m| m.to_string())
            .collect();
        if !add && changed.contains(user) {
            return Expect::Refused(ErrorCode::BadRequest);
        }
        if add && (self.members.len() + changed.len()) as u64 > MAX_MEMBERS {
            return Expect::Refused(ErrorCode::Limit);
        }
        if changed.is_empty() {
            return Expect::Unchanged;
        }
        for m in &changed {
            if add {
                self.members.insert(m.clone());
            } else {
                self.members.remove(m);
            }
        }
        let event = if add {
            "members_added"
        } else {
            "members_removed"
        };
        self.push(user, None, ts, Some(event));
        Expect::Changed
    }

    fn leave(&mut self, user: &str, ts: u64) -> Expect {
        if let Err(code) = self.check_member(user) {
            return Expect::Refused(code);
        }
        if self.owner.as_deref() == Some(user) {
            return Expect::Refused(ErrorCode::Forbidden);
        }
        self.members.remove(user);
        self.push(user, None, ts, Some("member_left"));
        Expect::Changed
    }
}

// ---- the system under test ----

struct Live {
    conv: ConvId,
    state: ConvState,
    model: RefConv,
}

fn open(dir: &Path) -> Store {
    let hist =
        prometheus::Histogram::with_opts(prometheus::HistogramOpts::new("t", "t")).expect("hist");
    Store::open(dir, &StoreConfig::default(), hist).expect("open store")
}

fn user(i: usize) -> UserId {
    UserId::parse(USERS[i]).expect("user")
}

fn body(text: &str) -> Box<RawValue> {
    RawValue::from_string(serde_json::json!({ "text": text }).to_string()).expect("raw")
}

fn outcome_of(result: rookery::error::ChatResult<Outcome>) -> Expect {
    match result {
        Ok(Outcome::Appended(a)) => Expect::New(a.posted.seq, a.posted.ts),
        Ok(Outcome::Duplicate(p)) => Expect::Duplicate(p.seq, p.ts),
        Ok(Outcome::Unchanged) => Expect::Unchanged,
        Ok(
            Outcome::Group { .. }
            | Outcome::Read { .. }
            | Outcome::Recalled { .. }
            | Outcome::Friendship(_)
            | Outcome::Edited { .. }
            | Outcome::Reacted { .. }
            | Outcome::Blocked,
        ) => Expect::Changed,
        Err(e) => Expect::Refused(e.code),
    }
}

/// Applies `cmd` to the live state; returns the outcome and the writes (not yet made).
fn apply(store: &Store, live: &mut Live, cmd: ConvCommand) -> (Expect, Vec<Write>) {
    let mut writes = Vec::new();
    let before = live.state.clone();
    let history = ConvHistory {
        store,
        conv: &live.conv,
    };
    let result = live.state.apply(cmd, &rules(), &history, &mut writes);
    if result.is_err() {
        assert_eq!(live.state, before, "a refused command changes nothing");
        assert!(writes.is_empty(), "a refused command writes nothing");
    }
    (outcome_of(result), writes)
}

/// The store's messages of `live`'s conversation against the reference.
fn check_stored(store: &Store, live: &Live) {
    let stored = store.messages_after(&live.conv, 0, 1000).expect("messages");
    let got: Vec<RefMsg> = stored
        .iter()
        .map(|json| {
            let v: Value = serde_json::from_str(json).expect("stored json");
            RefMsg {
                from: v["from"].as_str().expect("from").into(),
                cid: v["cid"].as_str().map(str::to_string),
                ts: v["ts"].as_u64().expect("ts"),
                recalled: v["recalled"].as_bool().unwrap_or(false),
                event: v["system"]["event"].as_str().map(str::to_string),
                text: v["body"]["text"].as_str().map(str::to_string),
                reply_to: v["reply_to"].as_u64(),
                mentions: v["mentions"].as_array().map(|l| {
                    l.iter()
                        .map(|m| m.as_str().expect("mention").to_string())
                        .collect()
                }),
                edited: v["edited"].as_u64(),
            }
        })
        .collect();
    assert_eq!(got, live.model.msgs, "stored messages of {}", live.conv);
    for (i, json) in stored.iter().enumerate() {
        let v: Value = serde_json::from_str(json).expect("stored json");
        assert_eq!(v["seq"].as_u64(), Some(i as u64 + 1), "gapless seqs");
        assert_eq!(
            v.get("body").is_some(),
            !got[i].recalled && got[i].event.is_none()
        );
    }
    assert_eq!(live.state.last_seq, live.model.msgs.len() as u64);
    let members: BTreeSet<String> = live.state.members.iter().map(|u| u.to_string()).collect();
    assert_eq!(members, live.model.members);
    // a position of 0 and no position are the same
    let positive = |reads: Vec<(String, u64)>| -> BTreeMap<String, u64> {
        reads.into_iter().filter(|(_, seq)| *seq > 0).collect()
    };
    let reads = positive(
        live.state
            .reads
            .iter()
            .map(|(u, s)| (u.to_string(), *s))
            .collect(),
    );
    let expected = positive(live.model.reads.clone().into_iter().collect());
    assert_eq!(reads, expected, "read positions of {}", live.conv);
    let counts = store
        .reaction_counts(&live.conv, 1, u64::MAX)
        .expect("reaction counts");
    assert_eq!(
        counts,
        live.model.counts(),
        "reaction counts of {}",
        live.conv
    );
    let last = live.state.last_seq;
    for u in USERS {
        let user = UserId::parse(u).expect("user");
        let read = live.state.read_seq(&user);
        let got = store
            .mention_count(&live.conv, &user, read, last)
            .expect("mentions");
        assert_eq!(
            got,
            live.model.mentions_of(u),
            "mentions of {u} in {}",
            live.conv
        );
    }
    let blocks: BTreeSet<String> = live.state.blocks.iter().map(|u| u.to_string()).collect();
    assert_eq!(blocks, live.model.blocks, "blocks of {}", live.conv);
}

fn run(ops: Vec<Op>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = open(dir.path());
    let mut lives: Vec<Live> = [(DM, false), (GROUP, true)]
        .into_iter()
        .map(|(c, group)| Live {
            conv: ConvId::parse(c).expect("conv"),
            state: ConvState::empty(ConvId::parse(c).expect("conv")),
            model: RefConv::new(group),
        })
        .collect();
    let mut clock = 1000u64;
    for op in ops {
        clock += 7;
        let restart = |store: Store, lives: &mut [Live]| -> Store {
            store.close().expect("close");
            drop(store);
            let store = open(dir.path());
            for live in lives.iter_mut() {
                let loaded = store.conv_state(&live.conv).expect("load");
                assert_eq!(loaded, live.state, "state after a restart of {}", live.conv);
            }
            store
        };
        match op {
            Op::Post {
                group,
                from,
                cid,
                ts,
            } => {
                let live = &mut lives[usize::from(group)];
                let cid_text = format!("c{cid}");
                let cmd = ConvCommand::Post {
                    from: user(from),
                    cid: Cid::parse(&cid_text).expect("cid"),
                    ts: clock + ts,
                    body: body(&cid_text),
                    reply_to: None,
                    mentions: None,
                };
                let (got, writes) = apply(&store, live, cmd);
                let want = live.model.post(USERS[from], &cid_text, clock + ts);
                assert_eq!(got, want, "post c{cid} by {} to {}", USERS[from], live.conv);
                store.write_conv(&live.conv, &writes).expect("write");
            }
            Op::Read {
                group,
                user: u,
                seq,
            } => {
                let live = &mut lives[usize::from(group)];
                let (got, writes) = apply(&store, live, ConvCommand::Read { user: user(u), seq });
                assert_eq!(got, live.model.read(USERS[u], seq), "read");
                store.write_conv(&live.conv, &writes).expect("write");
            }
            Op::Recall {
                group,
                user: u,
                seq,
                late,
            } => {
                let live = &mut lives[usize::from(group)];
                let sent_at = seq
                    .checked_sub(1)
                    .and_then(|i| live.model.msgs.get(usize::try_from(i).ok()?))
                    .map_or(clock, |m| m.ts);
                let now = if late {
                    sent_at + WINDOW_MS + 1
                } else {
                    sent_at
                };
                let (got, writes) = apply(
                    &store,
                    live,
                    ConvCommand::Recall {
                        user: user(u),
                        seq,
                        now,
                    },
                );
                assert_eq!(got, live.model.recall(USERS[u], seq, now), "recall");
                store.write_conv(&live.conv, &writes).expect("write");
            }
            Op::Friend { user: u, op } => {
                let live = &mut lives[0];
                let friend_op = match op {
                    0 => FriendOp::Request { note: "hi".into() },
                    1 => FriendOp::Accept,
                    2 => FriendOp::Decline,
                    _ => FriendOp::Remove,
                };
                let (got, writes) = apply(
                    &store,
                    live,
                    ConvCommand::Friend {
                        user: user(u),
                        op: friend_op,
                    },
                );
                assert_eq!(
                    got,
                    live.model.friend(USERS[u], op),
                    "friendship op {op} by {}",
                    USERS[u]
                );
                store.write_conv(&live.conv, &writes).expect("write");
            }
            Op::Create { owner, members } => {
                let live = &mut lives[1];
                let cmd = ConvCommand::CreateGroup {
                    owner: user(owner),
                    name: "Team".into(),
                    members: members.iter().map(|m| user(*m)).collect(),
                    ts: clock,
                };
                let (got, writes) = apply(&store, live, cmd);
                let listed: Vec<&str> = members.iter().map(|m| USERS[*m]).collect();
                assert_eq!(
                    got,
                    live.model.create(USERS[owner], &listed, clock),
                    "create"
                );
                store.write_conv(&live.conv, &writes).expect("write");
            }
            Op::Change {
                user: u,
                members,
                add,
            } => {
                let live = &mut lives[1];
                let cmd = ConvCommand::ChangeMembers {
                    user: user(u),
                    members: members.iter().map(|m| user(*m)).collect(),
                    add,
                    ts: clock,
                };
                let (got, writes) = apply(&store, live, cmd);
                let listed: Vec<&str> = members.iter().map(|m| USERS[*m]).collect();
                assert_eq!(
                    got,
                    live.model.change(USERS[u], &listed, add, clock),
                    "change"
                );
                store.write_conv(&live.conv, &writes).expect("write");
            }
            Op::Leave { user: u } => {
                let live = &mut lives[1];
                let (got, writes) = apply(
                    &store,
                    live,
                    ConvCommand::Leave {
                        user: user(u),
                        ts: clock,
                    },
                );
                assert_eq!(got, live.model.leave(USERS[u], clock), "leave");
                store.write_conv(&live.conv, &writes).expect("write");
            }
            Op::PostRefs {
                group,
                from,
                cid,
                reply_to,
                mentions,
            } => {
                let live = &mut lives[usize::from(group)];
                let cid_text = format!("c{cid}");
                let names: Vec<String> = mentions
                    .iter()
                    .map(|m| USERS.get(*m).map_or("*".to_string(), |u| u.to_string()))
                    .collect();
                let typed = names
                    .iter()
                    .map(|n| match n.as_str() {
                        "*" => Mention::All,
                        u => Mention::User(UserId::parse(u).expect("user")),
                    })
                    .collect();
                let cmd = ConvCommand::Post {
                    from: user(from),
                    cid: Cid::parse(&cid_text).expect("cid"),
                    ts: clock,
                    body: body(&cid_text),
                    reply_to,
                    mentions: Some(typed),
                };
                let (got, writes) = apply(&store, live, cmd);
                let want =
                    live.model
                        .post_refs(USERS[from], &cid_text, clock, reply_to, Some(names));
                assert_eq!(
                    got, want,
                    "post with refs by {} to {}",
                    USERS[from], live.conv
                );
                store.write_conv(&live.conv, &writes).expect("write");
            }
            Op::Edit {
                group,
                user: u,
                seq,
                late,
            } => {
                let live = &mut lives[usize::from(group)];
                let sent_at = seq
                    .checked_sub(1)
                    .and_then(|i| live.model.msgs.get(usize::try_from(i).ok()?))
                    .map_or(clock, |m| m.ts);
                let now = if late {
                    sent_at + EDIT_WINDOW_MS + 1
                } else {
                    sent_at + 3
                };
                let text = format!("e{now}");
                let cmd = ConvCommand::Edit {
                    user: user(u),
                    seq,
                    body: body(&text),
                    now,
                };
                let (got, writes) = apply(&store, live, cmd);
                assert_eq!(got, live.model.edit(USERS[u], seq, now, &text), "edit");
                store.write_conv(&live.conv, &writes).expect("write");
            }
            Op::React {
                group,
                user: u,
                seq,
                emoji,
                on,
            } => {
                let live = &mut lives[usize::from(group)];
                let emoji = ["+1", "ok", "\u{1f600}"][usize::from(emoji)];
                let cmd = ConvCommand::React {
                    user: user(u),
                    seq,
                    emoji: emoji.into(),
                    on,
                };
                let (got, writes) = apply(&store, live, cmd);
                assert_eq!(got, live.model.react(USERS[u], seq, emoji, on), "react");
                store.write_conv(&live.conv, &writes).expect("write");
            }
            Op::Block { user: u, on } => {
                let live = &mut lives[0];
                let (got, writes) = apply(&store, live, ConvCommand::Block { user: user(u), on });
                assert_eq!(got, live.model.block(USERS[u], on), "block");
                store.write_conv(&live.conv, &writes).expect("write");
            }
            Op::Restart => store = restart(store, &mut lives),
            Op::Crash {
                group,
                from,
                cid,
                ts,
                keep,
            } => {
                let idx = usize::from(group);
                let cid_text = format!("c{cid}");
                let cmd = ConvCommand::Post {
                    from: user(from),
                    cid: Cid::parse(&cid_text).expect("cid"),
                    ts: clock + ts,
                    body: body(&cid_text),
                    reply_to: None,
                    mentions: None,
                };
                let live = &mut lives[idx];
                let (got, mut writes) = apply(&store, live, cmd);
                let mut model = live.model.clone();
                assert_eq!(
                    got,
                    model.post(USERS[from], &cid_text, clock + ts),
                    "post before a crash"
                );
                if matches!(got, Expect::New(..)) {
                    // writes are [the previous sender's read (when another user sent the last
                    // message), cid, message]: what reached the disk decides what survives
                    let message_at = writes
                        .iter()
                        .position(|w| matches!(w, Write::Message { .. }))
                        .expect("a new message is written");
                    writes.truncate(keep);
                    if keep <= message_at {
                        // the message is lost, and with it the read position it implied
                        model.msgs.pop();
                        match live.model.reads.get(USERS[from]) {
                            Some(seq) => model.reads.insert(USERS[from].into(), *seq),
                            None => model.reads.remove(USERS[from]),
                        };
                    }
                }
                store.write_conv(&live.conv, &writes).expect("write");
                store.close().expect("close");
                drop(store);
                store = open(dir.path());
                for (i, live) in lives.iter_mut().enumerate() {
                    live.state = store.conv_state(&live.conv).expect("load");
                    if i == idx {
                        live.model = model.clone();
                    }
                }
            }
        }
        for live in &lives {
            check_stored(&store, live);
        }
    }
    let _ = restart_final(store, &lives, dir.path());
}

/// A last restart: everything the model holds is what the store gives back.
fn restart_final(store: Store, lives: &[Live], dir: &Path) -> Store {
    store.close().expect("close");
    drop(store);
    let store = open(dir);
    for live in lives {
        assert_eq!(store.conv_state(&live.conv).expect("load"), live.state);
        check_stored(&store, live);
    }
    store
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn conversation_core_matches_the_reference(ops in proptest::collection::vec(op(), 1..60)) {
        run(ops);
    }
}

/// A fixed sequence that walks every rule once (readable when the random test fails).
#[test]
fn a_walk_through_every_rule() {
    run(vec![
        Op::Post {
            group: false,
            from: 0,
            cid: 1,
            ts: 0,
        },
        Op::Friend { user: 0, op: 0 },
        Op::Friend { user: 1, op: 1 },
        Op::Post {
            group: false,
            from: 0,
            cid: 1,
            ts: 5,
        },
        Op::Post {
            group: false,
            from: 0,
            cid: 1,
            ts: 9,
        },
        Op::Crash {
            group: false,
            from: 1,
            cid: 2,
            ts: 0,
            keep: 1,
        },
        Op::Post {
            group: false,
            from: 1,
            cid: 2,
            ts: 0,
        },
        Op::Read {
            group: false,
            user: 0,
            seq: 9,
        },
        Op::Recall {
            group: false,
            user: 0,
            seq: 1,
            late: false,
        },
        Op::Create {
            owner: 0,
            members: vec![1, 2],
        },
        Op::Change {
            user: 0,
            members: vec![3],
            add: true,
        },
        Op::Change {
            user: 0,
            members: vec![1],
            add: false,
        },
        Op::Leave { user: 2 },
        Op::Restart,
        Op::Post {
            group: true,
            from: 0,
            cid: 1,
            ts: 0,
        },
        Op::Crash {
            group: true,
            from: 0,
            cid: 3,
            ts: 0,
            keep: 2,
        },
        Op::PostRefs {
            group: true,
            from: 0,
            cid: 4,
            reply_to: Some(1),
            mentions: vec![3, 4],
        },
        Op::React {
            group: true,
            user: 3,
            seq: 7,
            emoji: 0,
            on: true,
        },
        Op::Edit {
            group: true,
            user: 0,
            seq: 7,
            late: false,
        },
        Op::Restart,
        Op::Read {
            group: true,
            user: 3,
            seq: 7,
        },
        Op::Block { user: 1, on: true },
        Op::Post {
            group: false,
            from: 0,
            cid: 5,
            ts: 0,
        },
        Op::Friend { user: 0, op: 3 },
        Op::Friend { user: 0, op: 0 },
        Op::Block { user: 0, on: true },
        Op::Friend { user: 1, op: 0 },
        Op::Post {
            group: true,
            from: 0,
            cid: 3,
            ts: 0,
        },
    ]);
}
