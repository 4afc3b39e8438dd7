//! actix-web wiring: the routes of a node's `listen` address.

use std::convert::Infallible;
use std::sync::atomic::Ordering;

use actix::{Actor, AsyncContext};
use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse};
use tokio::sync::mpsc;

use crate::actors::session::SessionActor;
use crate::cluster::Router;
use crate::net::http;
use crate::net::ws::{FrameReader, OutQueue};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(http::healthz))
        .route("/metrics", web::get().to(http::metrics))
        .route("/v1/token", web::post().to(http::token))
        .route("/v1/nodes", web::get().to(http::nodes))
        .route("/v1/route", web::get().to(http::route))
        .route("/ws", web::get().to(websocket));
}

/// Upgrades to WebSocket and starts a session actor on this worker thread.
async fn websocket(
    req: HttpRequest,
    payload: web::Payload,
    router: web::Data<Router>,
) -> Result<HttpResponse, actix_web::Error> {
    let mut response = actix_web_actors::ws::handshake(&req)?;
    let router = router.get_ref().clone();
    let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
    let queue = OutQueue::new(tx);
    let queued = queue.counter();
    let reader = FrameReader::new(payload, router.config().limits.max_frame_bytes);
    SessionActor::create(move |ctx| {
        ctx.add_stream(reader);
        SessionActor::new(router, queue)
    });
    // The dispatcher polls the body only when the socket can take more, so what leaves here is written.
    let body = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx).map(|frame| {
            frame.map(|bytes| {
                queued.fetch_sub(bytes.len(), Ordering::Relaxed);
                Ok::<Bytes, Infallible>(bytes)
            })
        })
    });
    Ok(response.streaming(body))
}
