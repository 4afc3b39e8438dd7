//! The client edge: HTTP endpoints and the WebSocket upgrade ([`server`], [`http`], [`ws`]), the server API
//! for the product's backend ([`api`]), the cluster's membership ([`cluster`]), the OpenAPI document of them all ([`openapi`]), the typed wire
//! protocol ([`protocol`]), client tokens ([`auth`]) and the embedded browser client ([`web`]).

pub mod api;
pub mod auth;
pub mod cluster;
pub mod http;
pub mod media;
pub mod openapi;
pub mod protocol;
pub mod server;
pub mod web;
pub mod ws;
