//! A user's own settings of a conversation (`conv_settings`: mute and pin), and the one rule that reads them
//! on behalf of other parts of the server: whether a user wants an `offline_message` webhook event for a
//! message ([`wants_offline_message`]). Pure: times come in as arguments.

use serde::{Deserialize, Serialize};

use crate::ids::UserId;
use crate::net::protocol::Message;

/// One user's settings of one conversation (the defaults: not muted, not pinned).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvSettings {
    /// Muted until this Unix time in milliseconds; 0: not muted.
    #[serde(default)]
    pub muted_until: u64,
    #[serde(default)]
    pub pinned: bool,
}

impl ConvSettings {
    /// Is the conversation muted at `now_ms`?
    pub fn is_muted(&self, now_ms: u64) -> bool {
        self.muted_until > now_ms
    }

    /// `muted_until` as `convs` shows it at `now_ms`: 0 once the mute has run out.
    pub fn muted_until_at(&self, now_ms: u64) -> u64 {
        if self.is_muted(now_ms) {
            self.muted_until
        } else {
            0
        }
    }

    /// These settings with the fields a `conv_settings` frame gave replaced.
    pub fn with(self, muted_until: Option<u64>, pinned: Option<bool>) -> ConvSettings {
        ConvSettings {
            muted_until: muted_until.unwrap_or(self.muted_until),
            pinned: pinned.unwrap_or(self.pinned),
        }
    }

    /// True for the defaults (nothing to store).
    pub fn is_default(&self) -> bool {
        *self == ConvSettings::default()
    }
}

/// Does `user` want an `offline_message` webhook event for `message` (PROTOCOL.md, "Webhooks")?
///
/// `settings` are the user's settings of the message's conversation (`None`: the defaults), `now_ms` the
/// time the message was accepted, `large_group` whether the conversation is a group over
/// `chat.push_max_members`. Whether the user had an online device is the caller's to check (a user with one
/// gets no event). The rule: never for the sender, nor for a system message; never while the user has the
/// conversation muted (a mention does not break through a mute); in a large group only when the message
/// mentions the user (by name or `"*"`); otherwise yes.
pub fn wants_offline_message(
    user: &UserId,
    message: &Message,
    settings: Option<&ConvSettings>,
    now_ms: u64,
    large_group: bool,
) -> bool {
    if message.from == *user || message.system.is_some() || message.recalled {
        return false;
    }
    if settings.is_some_and(|s| s.is_muted(now_ms)) {
        return false;
    }
    !large_group || message.mentions_user(user)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ConvId;
    use crate::net::protocol::{raw, Mention};

    fn user(s: &str) -> UserId {
        UserId::parse(s).expect("user")
    }

    fn message(from: &str, mentions: Option<Vec<Mention>>) -> Message {
        Message {
            conv: ConvId::parse("g:team").expect("conv"),
            seq: 3,
            from: user(from),
            cid: None,
            ts: 1000,
            body: raw("{\"text\":\"hi\"}".into()),
            reply_to: None,
            mentions,
            edited: None,
            recalled: false,
            system: None,
        }
    }

    #[test]
    fn offline_message_follows_mute_mentions_and_group_size() {
        let bob = user("bob");
        let plain = message("alice", None);
        let to_bob = message("alice", Some(vec![Mention::User(bob.clone())]));
        let to_all = message("alice", Some(vec![Mention::All]));
        let muted = ConvSettings {
            muted_until: 5000,
            pinned: false,
        };
        // small conversations: everyone but the sender, unless muted
        assert!(wants_offline_message(&bob, &plain, None, 1000, false));
        assert!(!wants_offline_message(
            &user("alice"),
            &plain,
            None,
            1000,
            false
        ));
        assert!(!wants_offline_message(
            &bob,
            &plain,
            Some(&muted),
            1000,
            false
        ));
        assert!(
            !wants_offline_message(&bob, &to_bob, Some(&muted), 1000, false),
            "a mention does not break through a mute"
        );
        assert!(
            wants_offline_message(&bob, &plain, Some(&muted), 5000, false),
            "the mute has run out"
        );
        // large groups: only the mentioned
        assert!(!wants_offline_message(&bob, &plain, None, 1000, true));
        assert!(wants_offline_message(&bob, &to_bob, None, 1000, true));
        assert!(wants_offline_message(&bob, &to_all, None, 1000, true));
        assert!(!wants_offline_message(
            &user("carol"),
            &to_bob,
            None,
            1000,
            true
        ));
        // system messages cause none
        let mut system = message("alice", None);
        system.system = Some(serde_json::json!({"event":"created","members":["alice","bob"]}));
        assert!(!wants_offline_message(&bob, &system, None, 1000, false));
    }

    #[test]
    fn settings_merge_and_mutes_run_out() {
        let s = ConvSettings::default().with(Some(10), None);
        assert_eq!(
            s,
            ConvSettings {
                muted_until: 10,
                pinned: false
            }
        );
        let s = s.with(None, Some(true));
        assert!(s.pinned && s.muted_until == 10);
        assert_eq!(s.muted_until_at(9), 10);
        assert_eq!(s.muted_until_at(10), 0);
        assert!(s.with(Some(0), Some(false)).is_default());
    }
}
