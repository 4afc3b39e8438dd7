//! Model test of a replica's state machine (`rookery::state::replica`): a random committed log of
//! conversation and user commands, applied to a real sled store by a replica that stops at random entries,
//! has its store closed and reopened, and starts again by replaying the whole log (what a restarted node's
//! Raft log hands it), ends with exactly the store of a replica that applied the same log once. Replaying
//! everything once more changes nothing. That is the property replication rests on: every replica,
//! whatever its restarts, converges to the same keys.
//!
//! An entry's writes and its applied index are one sled batch, so a crash never leaves an entry half
//! applied. (An earlier version wrote them one by one; this test, crashing inside an entry, found the replay
//! of a group's creation whose members had landed but whose system message had not refused as a duplicate,
//! and the replicas diverged.)
//!
//! `PROPTEST_CASES=2000 cargo test --release --test replica_model` runs it longer.

use std::path::Path;

use proptest::prelude::*;
use rookery::actors::friendship::FriendOp;
use rookery::config::StoreConfig;
use rookery::ids::{Cid, ConvId, UserId};
use rookery::net::protocol::Mention;
use rookery::state::conv::{ConvCommand, Rules};
use rookery::state::replica::{Command, Entry, Replica};
use rookery::state::user::UserCommand;
use rookery::store::{FriendEntry, Store};
use serde_json::value::RawValue;

const USERS: [&str; 4] = ["alice", "bob", "carol", "dave"];
const CONVS: [&str; 2] = ["dm:alice:bob", "g:team"];
const CONV_PARTITION: u32 = 3;
const USER_PARTITION: u32 = 5;

fn rules() -> Rules {
    Rules {
        dm_requires_friendship: true,
        max_group_members: 3,
        recall_window_ms: 1000,
        edit_window_ms: 1000,
    }
}

fn user(i: usize) -> UserId {
    UserId::parse(USERS[i % USERS.len()]).expect("user")
}

fn conv(group: bool) -> ConvId {
    ConvId::parse(CONVS[usize::from(group)]).expect("conv")
}

/// One committed entry, with `ts` made non-decreasing by its position in the log.
fn command(kind: u8, a: usize, b: usize, n: u64, group: bool, ts: u64) -> Command {
    let c = conv(group);
    let body = || RawValue::from_string(format!("{{\"text\":\"m{n}\"}}")).expect("body");
    let cmd = match kind % 12 {
        0..=2 => ConvCommand::Post {
            from: user(a),
            cid: Cid::parse(&format!("c{}", n % 5)).expect("cid"),
            ts,
            body: body(),
            reply_to: (n % 3 == 1).then_some(n % 4),
            mentions: (n % 3 == 2).then(|| vec![Mention::User(user(b))]),
        },
        9 => ConvCommand::Edit {
            user: user(a),
            seq: n % 6,
            body: body(),
            now: ts,
        },
        10 => ConvCommand::React {
            user: user(a),
            seq: n % 6,
            emoji: ["👍", "🎉"][b % 2].to_owned(),
            on: !n.is_multiple_of(3),
        },
        11 => ConvCommand::Block {
            user: user(a % 2),
            on: n.is_multiple_of(2),
        },
        3 => ConvCommand::Read {
            user: user(a),
            seq: n % 10,
        },
        4 => ConvCommand::Recall {
            user: user(a),
            seq: n % 8,
            now: ts,
        },
        5 => ConvCommand::Friend {
            user: user(a % 2),
            op: match n % 4 {
                0 => FriendOp::Request { note: "hi".into() },
                1 => FriendOp::Accept,
                2 => FriendOp::Decline,
                _ => FriendOp::Remove,
            },
        },
        6 => ConvCommand::CreateGroup {
            owner: user(a),
            name: "team".into(),
            members: vec![user(b)],
            ts,
        },
        7 => ConvCommand::ChangeMembers {
            user: user(a),
            members: vec![user(b)],
            add: n.is_multiple_of(2),
            ts,
        },
        _ => {
            return Command::User {
                user: user(a),
                cmd: match n % 5 {
                    0 => UserCommand::AddConv { conv: c },
                    1 => UserCommand::RemoveConv { conv: c },
                    2 => UserCommand::Block {
                        other: user(b),
                        on: n.is_multiple_of(2),
                    },
                    3 => UserCommand::SetConvSettings {
                        conv: c,
                        muted_until: Some(n % 7),
                        pinned: Some(n % 2 == 1),
                    },
                    _ => UserCommand::SetFriend {
                        other: user(b),
                        entry: n.is_multiple_of(2).then_some(FriendEntry::Friend),
                    },
                },
            }
        }
    };
    Command::Conv { conv: c, cmd }
}

fn log() -> impl Strategy<Value = Vec<Command>> {
    proptest::collection::vec(
        (
            any::<u8>(),
            0..4usize,
            0..4usize,
            any::<u64>(),
            any::<bool>(),
            0..3u64,
        ),
        1..60,
    )
    .prop_map(|entries| {
        let mut ts = 0;
        entries
            .into_iter()
            .map(|(kind, a, b, n, group, step)| {
                ts += step * 400;
                command(kind, a, b, n, group, ts)
            })
            .collect()
    })
}

fn open(dir: &Path) -> Store {
    let config = StoreConfig::default();
    Store::open(
        dir,
        &config,
        prometheus::Histogram::with_opts(prometheus::HistogramOpts::new("t", "t"))
            .expect("histogram"),
    )
    .expect("store")
}

fn partition(cmd: &Command) -> u32 {
    match cmd {
        Command::Conv { .. } => CONV_PARTITION,
        Command::User { .. } => USER_PARTITION,
    }
}

/// Everything the log can have written, in a comparable form.
fn snapshot(store: &Store) -> String {
    let mut out = String::new();
    for group in [false, true] {
        let c = conv(group);
        let state = store.conv_state(&c).expect("state");
        let members: std::collections::BTreeSet<&UserId> = state.members.iter().collect();
        let reads: std::collections::BTreeMap<&UserId, &u64> = state.reads.iter().collect();
        out.push_str(&format!(
            "{c}: last {} at {}, members {members:?}, group {:?}, reads {reads:?}, pair {:?}\n",
            state.last_seq, state.last_ts, state.group, state.pair
        ));
        for json in store.messages_after(&c, 0, 1000).expect("messages") {
            out.push_str(&format!("  {json}\n"));
        }
        for seq in 0..8 {
            for emoji in ["👍", "🎉"] {
                let count = store.reaction_count(&c, seq, emoji).expect("count");
                if count > 0 {
                    out.push_str(&format!("  reaction {seq} {emoji} {count}\n"));
                }
            }
        }
        for i in 0..USERS.len() {
            let mentions = store.mention_count(&c, &user(i), 0, 100).expect("mentions");
            out.push_str(&format!("  mentions of {}: {mentions}\n", user(i)));
        }
    }
    for i in 0..USERS.len() {
        let u = user(i);
        out.push_str(&format!(
            "{u}: {:?} {:?} blocks {:?} settings {:?}\n",
            store.user_state(&u).expect("user"),
            store.user_convs(&u).expect("convs"),
            store.blocked(&u).expect("blocks"),
            store.conv_settings(&u).expect("settings"),
        ));
    }
    out
}

/// Applies `entries` (indexes from 1) `batch` at a time.
fn apply_in_batches(replica: &mut Replica, entries: &[Command], batch: usize) {
    let numbered: Vec<(u64, &Command)> = (1u64..).zip(entries).collect();
    for chunk in numbered.chunks(batch) {
        let list = chunk
            .iter()
            .map(|(index, cmd)| Entry {
                partition: partition(cmd),
                index: *index,
                command: (*cmd).clone(),
                events: Vec::new(),
            })
            .collect();
        replica.apply_entries(list).expect("apply");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn a_replica_that_stops_and_replays_the_log_ends_like_one_that_applied_it_once(
        entries in log(),
        crashes in proptest::collection::vec(any::<prop::sample::Index>(), 0..4),
        batch in 1usize..8,
    ) {
        // the replica that never crashes
        let clean_dir = tempfile::tempdir().expect("tempdir");
        let clean = open(clean_dir.path());
        let mut replica = Replica::new(clean.clone(), rules());
        for (i, cmd) in entries.iter().enumerate() {
            replica.apply(partition(cmd), i as u64 + 1, cmd.clone()).expect("apply");
        }
        let expected = snapshot(&clean);

        // the one that stops: at each stop it has applied the log up to some entry; it starts again from
        // its store and the whole log
        let dir = tempfile::tempdir().expect("tempdir");
        let mut stops: Vec<usize> = crashes.iter().map(|at| at.index(entries.len())).collect();
        stops.sort_unstable();
        let mut store = open(dir.path());
        // (it applies `batch` entries at a time, as the apply thread applies a round's entries: the
        // result must be the same as one entry at a time)
        for at in stops {
            let mut replica = Replica::new(store.clone(), rules());
            apply_in_batches(&mut replica, &entries[..at], batch);
            drop(replica);
            store.close().expect("close");
            drop(store);
            store = open(dir.path());
        }
        let mut replica = Replica::new(store.clone(), rules());
        apply_in_batches(&mut replica, &entries, batch);
        prop_assert_eq!(snapshot(&store), expected);
        // and a replay of everything once more changes nothing
        let mut again = Replica::new(store.clone(), rules());
        for (i, cmd) in entries.iter().enumerate() {
            again.apply(partition(cmd), i as u64 + 1, cmd.clone()).expect("apply");
        }
        prop_assert_eq!(snapshot(&store), snapshot(&clean));
    }
}
