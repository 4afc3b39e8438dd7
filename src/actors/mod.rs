//! The actors of a node. Each file holds one actor with its messages at the top.
//!
//! - [`session`]: one per WebSocket connection, on the node the client reached.
//! - [`user`]: one per user, on the user's owner node: devices, presence, friend and conversation indexes.
//! - [`conversation`]: one per direct conversation, on its owner node: seq, messages, receipts, friendship.
//! - [`group`], [`features`] (edits, reactions, blocks of a pair) and [`server_api`]: more messages of the
//!   conversation actor (group operations; the server API's posts and reads on behalf of the product's
//!   backend).
//! - [`friendship`], [`delivery`], [`limits`]: pure state machines the actors use (unit-tested without actors).

pub mod conversation;
pub mod delivery;
pub mod features;
pub mod friendship;
pub mod group;
pub mod lane;
pub mod limits;
pub mod pull;
pub mod server_api;
pub mod session;
pub mod user;

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix time in microseconds.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
