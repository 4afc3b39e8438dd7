//! Which webhook events a state change causes, as JSON ready for the outbox.
//!
//! - `message` `{"conv","message"}`: every accepted message once, system messages included.
//! - `offline_message` `{"user","conv","message"}`: for each member other than the sender who had no online
//!   device on any node when the message was accepted (the session directory says so), decided by
//!   [`wants_offline_message`]. System messages cause none.
//! - `user_online` / `user_offline` `{"user"}`: a user's first device connected, last one left.
//!
//! Ids are stable: a message's events are named by conversation and seq (and user), a presence event by the
//! node and its outbox id; a retried delivery carries the same ids.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::actors::now_ms;
use crate::cluster::Router;
use crate::config::WebhooksConfig;
use crate::ids::{ConvId, UserId};
use crate::state::conv::{Appended, ConvState, Outcome, Write};

/// Is `kind` delivered (a `url` is set and `events` lists it)?
pub fn enabled(config: &WebhooksConfig, kind: &str) -> bool {
    !config.url.is_empty() && config.events.iter().any(|e| e == kind)
}

#[derive(Serialize)]
struct Event<'a> {
    id: String,
    #[serde(rename = "type")]
    kind: &'static str,
    ts: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a UserId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    conv: Option<&'a ConvId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a RawValue>,
}

fn encode(event: &Event<'_>) -> String {
    serde_json::to_string(event).unwrap_or_default()
}

/// What decides one member's `offline_message`, besides having no online device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OfflineCandidate {
    /// The conversation is a group over `chat.push_max_members`.
    pub large_group: bool,
    /// The message mentions the member (by name or `*`).
    pub mentioned: bool,
    /// Until when the member muted the conversation (Unix ms; 0 = not muted).
    pub muted_until: u64,
    /// When the message was accepted (Unix ms).
    pub now: u64,
}

/// Does an offline member get `offline_message` for a message? Not while the conversation is muted for
/// them; in a group over `push_max_members`, only when the message mentions them.
///
/// The one place that decides it. Mentions are read from the stored message (`"mentions"`, as the contract
/// stores them); mute settings are not kept by this version, so callers pass `muted_until = 0` until
/// `conv_settings` exists (then: the member's `muted_until` for the conversation).
pub fn wants_offline_message(c: OfflineCandidate) -> bool {
    if c.muted_until > c.now {
        return false;
    }
    !c.large_group || c.mentioned
}

/// The users a stored message mentions (`"*"` for everyone), as sent.
#[derive(Deserialize, Default)]
struct Mentions {
    #[serde(default)]
    mentions: Vec<String>,
}

/// Adds the events that `outcome` causes to `writes`, right after its message (one batch with it).
pub fn for_outcome(router: &Router, state: &ConvState, outcome: &Outcome, writes: &mut Vec<Write>) {
    let config = &router.config().webhooks;
    if config.url.is_empty() {
        return;
    }
    let (appended, user_message) = match outcome {
        Outcome::Appended(appended) => (appended, true),
        Outcome::Group { appended, .. } => (appended, false),
        _ => return,
    };
    let Some(message) = RawValue::from_string(appended.json.clone()).ok() else {
        return;
    };
    let store = router.store();
    let mut events = Vec::new();
    let at = now_ms();
    let mut push = |json: String| {
        events.push(Write::Event {
            id: store.outbox_id(),
            at,
            json,
        })
    };
    if enabled(config, "message") {
        push(encode(&Event {
            id: format!("message:{}:{}", state.id, appended.posted.seq),
            kind: "message",
            ts: appended.posted.ts,
            user: None,
            conv: Some(&state.id),
            message: Some(&message),
        }));
    }
    if user_message && enabled(config, "offline_message") {
        for user in offline_recipients(router, state, appended) {
            push(encode(&Event {
                id: format!("offline:{}:{}:{}", state.id, appended.posted.seq, user),
                kind: "offline_message",
                ts: appended.posted.ts,
                user: Some(&user),
                conv: Some(&state.id),
                message: Some(&message),
            }));
        }
    }
    if events.is_empty() {
        return;
    }
    let at = writes
        .iter()
        .rposition(|w| matches!(w, Write::Message { .. }))
        .map_or(writes.len(), |i| i + 1);
    writes.splice(at..at, events);
}

/// The members (but the sender) who get `offline_message` for `appended`, sorted. In a group over
/// `push_max_members` only mentioned members are looked at, so the work follows the mentions, not the
/// group's size.
fn offline_recipients(router: &Router, state: &ConvState, appended: &Appended) -> Vec<UserId> {
    let large_group =
        state.group.is_some() && state.members.len() as u64 > router.config().chat.push_max_members;
    let mentions = serde_json::from_str::<Mentions>(&appended.json).unwrap_or_default();
    let everyone = mentions.mentions.iter().any(|m| m == "*");
    let named: HashSet<&str> = mentions.mentions.iter().map(String::as_str).collect();
    let candidates: HashSet<UserId> = if large_group && !everyone {
        named
            .iter()
            .filter_map(|m| UserId::parse(m).ok())
            .filter(|u| state.members.contains(u))
            .collect()
    } else {
        state.members.clone()
    };
    let online: HashSet<UserId> = router.online_among(&candidates).into_iter().collect();
    let now = now_ms();
    let mut list: Vec<UserId> = candidates
        .into_iter()
        .filter(|u| *u != appended.from && !online.contains(u))
        .filter(|u| {
            wants_offline_message(OfflineCandidate {
                large_group,
                mentioned: everyone || named.contains(u.as_str()),
                // no mute settings in this version (see `wants_offline_message`)
                muted_until: 0,
                now,
            })
        })
        .collect();
    list.sort();
    list
}

/// Writes `user_online` / `user_offline` for `user` (the user's actor calls this when the first device
/// connects or the last leaves); durable with the next flush.
pub fn presence(router: &Router, user: &UserId, online: bool) {
    let kind = if online {
        "user_online"
    } else {
        "user_offline"
    };
    if !enabled(&router.config().webhooks, kind) {
        return;
    }
    let store = router.store();
    let id = store.outbox_id();
    let ts = now_ms();
    let json = encode(&Event {
        id: format!("{kind}:{}:{id}", router.node()),
        kind,
        ts,
        user: Some(user),
        conv: None,
        message: None,
    });
    if let Err(e) = store.push_events(&[(id, ts, json)]) {
        tracing::error!(%user, error = %e, "cannot write a presence event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offline_messages_skip_muted_members_and_unmentioned_members_of_large_groups() {
        let base = OfflineCandidate {
            large_group: false,
            mentioned: false,
            muted_until: 0,
            now: 1_000,
        };
        assert!(wants_offline_message(base));
        assert!(!wants_offline_message(OfflineCandidate {
            muted_until: 2_000,
            ..base
        }));
        assert!(
            wants_offline_message(OfflineCandidate {
                muted_until: 999,
                ..base
            }),
            "a mute that has ended"
        );
        let large = OfflineCandidate {
            large_group: true,
            ..base
        };
        assert!(!wants_offline_message(large));
        assert!(wants_offline_message(OfflineCandidate {
            mentioned: true,
            ..large
        }));
        assert!(!wants_offline_message(OfflineCandidate {
            mentioned: true,
            muted_until: 5_000,
            ..large
        }));
    }
}
