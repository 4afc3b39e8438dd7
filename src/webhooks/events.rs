//! Which webhook events a state change causes, as JSON ready for the outbox.
//!
//! - `message` `{"conv","message"}`: every accepted message once, system messages included.
//! - `offline_message` `{"user","conv","message"}`: for each member other than the sender who had no online
//!   device on any node when the message was accepted (the session directory says so), decided by
//!   [`wants_offline_message`] (in [`crate::state::settings`]). System messages cause none.
//! - `user_online` / `user_offline` `{"user"}`: a user's first device connected, last one left.
//!
//! Ids are stable: a message's events are named by conversation and seq (and user), a presence event by the
//! node and its outbox id; a retried delivery carries the same ids.

use std::collections::HashSet;

use serde::Serialize;
use serde_json::value::RawValue;

use crate::actors::now_ms;
use crate::cluster::Router;
use crate::config::WebhooksConfig;
use crate::ids::{ConvId, UserId};
use crate::net::protocol::{Mention, Message as ChatMessage};
use crate::state::conv::{Appended, ConvState, Outcome, Write};
use crate::state::settings::wants_offline_message;

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

/// The members (but the sender) who get `offline_message` for `appended`, sorted: offline when it was
/// accepted and wanting it by [`wants_offline_message`] (the one rule). In a group over `push_max_members`
/// only mentioned members are looked at, so the work follows the mentions, not the group's size. A
/// member's mute lives with the member's user actor, possibly on another node: the sender drops the events
/// of muted members when it delivers them ([`super::sender`]), so a mute takes effect for every event not
/// yet delivered.
fn offline_recipients(router: &Router, state: &ConvState, appended: &Appended) -> Vec<UserId> {
    let Ok(message) = serde_json::from_str::<ChatMessage>(&appended.json) else {
        return Vec::new();
    };
    let large_group =
        state.group.is_some() && state.members.len() as u64 > router.config().chat.push_max_members;
    let mentions = message.mentions.as_deref().unwrap_or_default();
    let everyone = mentions.iter().any(|m| matches!(m, Mention::All));
    let candidates: HashSet<UserId> = if large_group && !everyone {
        mentions
            .iter()
            .filter_map(|m| match m {
                Mention::User(u) if state.members.contains(u) => Some(u.clone()),
                _ => None,
            })
            .collect()
    } else {
        state.members.clone()
    };
    let online: HashSet<UserId> = router.online_among(&candidates).into_iter().collect();
    let now = now_ms();
    let mut list: Vec<UserId> = candidates
        .into_iter()
        .filter(|u| !online.contains(u))
        .filter(|u| wants_offline_message(u, &message, None, now, large_group))
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
