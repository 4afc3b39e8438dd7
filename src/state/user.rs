//! A user's durable state and the commands that change it: the conversation index (which conversations the
//! user is in, for `convs`) and the friend index (the user's side of every pair's friendship, derived from
//! the pair's conversation, which decides it). See the [module docs](super).
//!
//! The conversation index is not held here: adding or removing an entry is an idempotent write, so the core
//! needs no knowledge of the index to decide it, and an actor need not load a user's whole index to record
//! one conversation. The friend index is small and held, since presence and `friends` read it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::{ConvId, UserId};
use crate::store::FriendEntry;

/// A state change of one user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum UserCommand {
    /// The user is in `conv` (idempotent).
    AddConv { conv: ConvId },
    /// The user is no longer in `conv` (idempotent).
    RemoveConv { conv: ConvId },
    /// The user's friend-index entry for `other` (`None` removes it).
    SetFriend {
        other: UserId,
        entry: Option<FriendEntry>,
    },
}

/// A write the store makes for an applied command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserWrite {
    /// An entry of the conversation index, added (`member`) or removed.
    Conv { conv: ConvId, member: bool },
    /// An entry of the friend index (`None` removes it).
    Friend {
        other: UserId,
        entry: Option<FriendEntry>,
    },
}

/// The part of a user's state the core keeps at hand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserState {
    pub id: UserId,
    pub friends: BTreeMap<UserId, FriendEntry>,
}

impl UserState {
    pub fn empty(id: UserId) -> UserState {
        UserState {
            id,
            friends: BTreeMap::new(),
        }
    }

    /// Is `other` an accepted friend?
    pub fn is_friend(&self, other: &UserId) -> bool {
        self.friends.get(other) == Some(&FriendEntry::Friend)
    }

    /// Applies `cmd`: the state is updated and `writes` extended with what the store must write. Every
    /// command is valid (the pair's conversation decided it); the answer says whether the friend index
    /// changed.
    pub fn apply(&mut self, cmd: UserCommand, writes: &mut Vec<UserWrite>) -> bool {
        match cmd {
            UserCommand::AddConv { conv } => {
                writes.push(UserWrite::Conv { conv, member: true });
                false
            }
            UserCommand::RemoveConv { conv } => {
                writes.push(UserWrite::Conv {
                    conv,
                    member: false,
                });
                false
            }
            UserCommand::SetFriend { other, entry } => {
                let before = match &entry {
                    Some(e) => self.friends.insert(other.clone(), e.clone()),
                    None => self.friends.remove(&other),
                };
                let changed = before != entry;
                if changed {
                    writes.push(UserWrite::Friend { other, entry });
                }
                changed
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(s: &str) -> UserId {
        UserId::parse(s).expect("user id")
    }

    #[test]
    fn friend_entries_are_written_only_when_they_change() {
        let mut state = UserState::empty(user("alice"));
        let mut writes = Vec::new();
        let incoming = Some(FriendEntry::Incoming { note: "hi".into() });
        let set = |entry: &Option<FriendEntry>| UserCommand::SetFriend {
            other: user("bob"),
            entry: entry.clone(),
        };
        assert!(state.apply(set(&incoming), &mut writes));
        assert!(
            !state.apply(set(&incoming), &mut writes),
            "the same entry again"
        );
        assert!(!state.is_friend(&user("bob")));
        assert!(state.apply(set(&Some(FriendEntry::Friend)), &mut writes));
        assert!(state.is_friend(&user("bob")));
        assert!(state.apply(set(&None), &mut writes));
        assert!(!state.apply(set(&None), &mut writes), "nothing to remove");
        assert_eq!(writes.len(), 3);
        assert!(state.friends.is_empty());
    }

    #[test]
    fn conversation_index_changes_are_idempotent_writes() {
        let mut state = UserState::empty(user("alice"));
        let conv = ConvId::parse("dm:alice:bob").expect("conv");
        let mut writes = Vec::new();
        state.apply(UserCommand::AddConv { conv: conv.clone() }, &mut writes);
        state.apply(UserCommand::AddConv { conv: conv.clone() }, &mut writes);
        state.apply(UserCommand::RemoveConv { conv: conv.clone() }, &mut writes);
        assert_eq!(
            writes,
            vec![
                UserWrite::Conv {
                    conv: conv.clone(),
                    member: true
                },
                UserWrite::Conv {
                    conv: conv.clone(),
                    member: true
                },
                UserWrite::Conv {
                    conv,
                    member: false
                },
            ]
        );
    }
}
