//! A user's durable state and the commands that change it: the conversation index (which conversations the
//! user is in, for `convs`) and the friend index (the user's side of every pair's friendship, derived from
//! the pair's conversation, which decides it). See the [module docs](super).
//!
//! The conversation index is not held here: adding or removing an entry is an idempotent write, so the core
//! needs no knowledge of the index to decide it, and an actor need not load a user's whole index to record
//! one conversation. The friend index is small and held, since presence and `friends` read it; so are the
//! user's blocks (presence and `friends` read them) and its settings of conversations (mute, pin: `convs`
//! reads them), which exist only for conversations the user changed a setting of.
//!
//! The user's access record is held too: the time before which the user's tokens are void (a logout by the
//! server API) and the ban flag. Every `auth` for the user is checked against it by the user's actor, on
//! the node that owns the user, so a logout or ban takes effect for every node at once.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::ids::{ConvId, UserId};
use crate::state::settings::ConvSettings;
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
    /// The user blocks (`on`) `other`, or no longer does (the pair's conversation decided it).
    Block { other: UserId, on: bool },
    /// The user's settings of `conv`: the fields given replace the stored ones.
    SetConvSettings {
        conv: ConvId,
        muted_until: Option<u64>,
        pinned: Option<bool>,
    },
    /// Tokens issued before `at_ms`, or in that same millisecond, are void from now on (a logout; an
    /// earlier time changes nothing).
    Logout { at_ms: u64 },
    /// Ban (`banned`) or unban the user.
    SetBan { banned: bool },
}

/// Who may authenticate as the user: stored with the user, one record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    /// Tokens issued before this time (Unix milliseconds) are refused.
    pub void_before_ms: u64,
    pub banned: bool,
}

/// Why a token is refused for the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Banned,
    LoggedOut,
}

impl Refusal {
    /// The close reason of the devices this closes, and the message of a refused `auth`.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Banned => "banned",
            Refusal::LoggedOut => "logged out",
        }
    }
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
    /// A block entry, set (`on`) or removed.
    Block { other: UserId, on: bool },
    /// The user's settings of `conv` (`None`: the defaults, nothing stored).
    Settings {
        conv: ConvId,
        settings: Option<ConvSettings>,
    },
    /// The access record, replaced whole.
    Access(Access),
}

/// The part of a user's state the core keeps at hand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserState {
    pub id: UserId,
    pub friends: BTreeMap<UserId, FriendEntry>,
    /// The users this user blocks.
    pub blocked: BTreeSet<UserId>,
    /// Settings of the conversations whose settings differ from the defaults.
    pub settings: BTreeMap<ConvId, ConvSettings>,
    pub access: Access,
}

impl UserState {
    pub fn empty(id: UserId) -> UserState {
        UserState {
            id,
            friends: BTreeMap::new(),
            blocked: BTreeSet::new(),
            settings: BTreeMap::new(),
            access: Access::default(),
        }
    }

    /// Does this user block `other`?
    pub fn blocks(&self, other: &UserId) -> bool {
        self.blocked.contains(other)
    }

    /// The user's settings of `conv` (the defaults when none were set).
    pub fn settings_of(&self, conv: &ConvId) -> ConvSettings {
        self.settings.get(conv).copied().unwrap_or_default()
    }

    /// May a token issued at `issued_ms` authenticate the user?
    pub fn admits(&self, issued_ms: u64) -> Result<(), Refusal> {
        if self.access.banned {
            return Err(Refusal::Banned);
        }
        if issued_ms <= self.access.void_before_ms {
            return Err(Refusal::LoggedOut);
        }
        Ok(())
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
            UserCommand::Block { other, on } => {
                let changed = if on {
                    self.blocked.insert(other.clone())
                } else {
                    self.blocked.remove(&other)
                };
                if changed {
                    writes.push(UserWrite::Block { other, on });
                }
                changed
            }
            UserCommand::SetConvSettings {
                conv,
                muted_until,
                pinned,
            } => {
                let before = self.settings_of(&conv);
                let after = before.with(muted_until, pinned);
                if after == before {
                    return false;
                }
                let settings = if after.is_default() {
                    self.settings.remove(&conv);
                    None
                } else {
                    self.settings.insert(conv.clone(), after);
                    Some(after)
                };
                writes.push(UserWrite::Settings { conv, settings });
                true
            }
            UserCommand::Logout { at_ms } => {
                let changed = at_ms > self.access.void_before_ms;
                if changed {
                    self.access.void_before_ms = at_ms;
                    writes.push(UserWrite::Access(self.access));
                }
                changed
            }
            UserCommand::SetBan { banned } => {
                let changed = banned != self.access.banned;
                if changed {
                    self.access.banned = banned;
                    writes.push(UserWrite::Access(self.access));
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
    fn blocks_and_settings_are_written_only_when_they_change() {
        let mut state = UserState::empty(user("alice"));
        let mut writes = Vec::new();
        let block = |on| UserCommand::Block {
            other: user("bob"),
            on,
        };
        assert!(state.apply(block(true), &mut writes));
        assert!(
            !state.apply(block(true), &mut writes),
            "repeating changes nothing"
        );
        assert!(state.blocks(&user("bob")));
        assert!(state.apply(block(false), &mut writes));
        assert!(!state.blocks(&user("bob")));
        let conv = ConvId::parse("g:team").expect("conv");
        let set = |muted_until, pinned| UserCommand::SetConvSettings {
            conv: conv.clone(),
            muted_until,
            pinned,
        };
        assert!(state.apply(set(Some(99), None), &mut writes));
        assert!(state.apply(set(None, Some(true)), &mut writes));
        assert!(!state.apply(set(Some(99), Some(true)), &mut writes));
        assert_eq!(
            state.settings_of(&conv),
            ConvSettings {
                muted_until: 99,
                pinned: true
            }
        );
        assert!(state.apply(set(Some(0), Some(false)), &mut writes));
        assert!(state.settings.is_empty(), "the defaults are not kept");
        assert_eq!(
            writes.last(),
            Some(&UserWrite::Settings {
                conv,
                settings: None
            })
        );
        assert_eq!(writes.len(), 5);
    }

    #[test]
    fn logout_voids_older_tokens_and_ban_refuses_all() {
        let mut state = UserState::empty(user("alice"));
        let mut writes = Vec::new();
        assert_eq!(state.admits(5), Ok(()));
        assert!(state.apply(UserCommand::Logout { at_ms: 100 }, &mut writes));
        assert_eq!(state.admits(99), Err(Refusal::LoggedOut));
        assert_eq!(
            state.admits(100),
            Err(Refusal::LoggedOut),
            "issued in the logout's millisecond: it may have been minted before it"
        );
        assert_eq!(state.admits(101), Ok(()));
        assert!(
            !state.apply(UserCommand::Logout { at_ms: 50 }, &mut writes),
            "an earlier logout changes nothing"
        );
        assert!(state.apply(UserCommand::SetBan { banned: true }, &mut writes));
        assert!(!state.apply(UserCommand::SetBan { banned: true }, &mut writes));
        assert_eq!(state.admits(1_000), Err(Refusal::Banned));
        assert!(state.apply(UserCommand::SetBan { banned: false }, &mut writes));
        assert_eq!(state.admits(1_000), Ok(()));
        assert_eq!(
            writes.last(),
            Some(&UserWrite::Access(Access {
                void_before_ms: 100,
                banned: false
            }))
        );
        assert_eq!(writes.len(), 3);
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
