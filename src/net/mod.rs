//! The client edge: HTTP endpoints and the WebSocket upgrade ([`server`], [`http`], [`ws`]), the typed wire
//! protocol ([`protocol`]) and client tokens ([`auth`]).

pub mod auth;
pub mod http;
pub mod media;
pub mod protocol;
pub mod server;
pub mod ws;
