//! Server wiring: one HTTP/1 service per worker thread. Plain requests go to the actix-web [`App`] (the
//! endpoints in [`crate::net::http`] and [`crate::net::media`], the browser client in [`crate::net::web`]);
//! WebSocket upgrades on `/ws` go to [`crate::net::ws::accept`], which
//! hands the socket to a session actor. With `http.cors_origins` set, the endpoints answer browsers from
//! those origins with CORS headers (actix-cors, preflight included), and `/ws` checks `Origin` itself (an
//! upgrade never reaches the App's middleware).

use std::net::SocketAddr;

use actix_cors::Cors;
use actix_http::HttpService;
use actix_rt::net::TcpStream;
use actix_service::{fn_service, map_config, ServiceFactoryExt};
use actix_web::dev::AppConfig;
use actix_web::http::header;
use actix_web::middleware::Condition;
use actix_web::{web, App, HttpResponse};

use crate::cluster::Router;
use crate::config::HttpConfig;
use crate::net::{api, http, media, web as web_client, ws};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(http::healthz))
        .route("/metrics", web::get().to(http::metrics))
        .route("/v1/token", web::post().to(http::token))
        .route("/v1/nodes", web::get().to(http::nodes))
        .route("/v1/route", web::get().to(http::route))
        .route("/v1/uploads", web::post().to(media::start))
        .route("/v1/uploads/{upload}", web::get().to(media::upload_status))
        .route(
            "/v1/uploads/{upload}/complete",
            web::post().to(media::complete),
        )
        .route(
            "/v1/uploads/{upload}/{index}",
            web::put().to(media::put_chunk),
        )
        .route("/v1/media/{id}", web::get().to(media::download))
        .route("/v1/media/{id}/thumb", web::get().to(media::thumbnail))
        .route(ws::WS_PATH, web::get().to(upgrade_required))
        .configure(api::routes)
        .configure(web_client::routes);
}

/// CORS for `http.cors_origins`: the methods and headers the endpoints use, and the response headers a
/// browser page needs to read (ranges, ETags, a redirect's target).
fn cors(http: &HttpConfig) -> Cors {
    let cors = Cors::default()
        .allowed_methods(["GET", "POST", "PUT", "DELETE", "OPTIONS"])
        .allowed_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::RANGE,
            header::IF_NONE_MATCH,
        ])
        .expose_headers([
            header::CONTENT_RANGE,
            header::ETAG,
            header::CONTENT_DISPOSITION,
            header::LOCATION,
        ])
        .max_age(3600);
    if http.cors_origins.iter().any(|o| o == "*") {
        return cors.allow_any_origin();
    }
    http.cors_origins
        .iter()
        .fold(cors, |cors, origin| cors.allowed_origin(origin))
}

/// `GET /ws` without the WebSocket upgrade headers.
async fn upgrade_required() -> HttpResponse {
    http::error_response(&crate::error::ChatError::bad_request(
        "GET /ws must ask for a WebSocket upgrade",
    ))
}

/// Binds `listen` with `workers` threads and returns the server (not yet awaited) and its bound address.
pub fn bind(
    router: &Router,
    listen: &str,
    workers: usize,
) -> std::io::Result<(actix_server::Server, SocketAddr)> {
    let std_listener = std::net::TcpListener::bind(listen)?;
    let addr = std_listener.local_addr()?;
    let router = router.clone();
    let server = actix_server::Server::build()
        .workers(workers)
        .backlog(8192)
        .max_concurrent_connections(50_000)
        .shutdown_timeout(1)
        .disable_signals()
        .listen("rookery", std_listener, move || {
            let http = &router.config().http;
            let app = App::new()
                .wrap(Condition::new(!http.cors_origins.is_empty(), cors(http)))
                .app_data(web::Data::new(router.clone()))
                .configure(routes);
            let upgrade_router = router.clone();
            let upgrade =
                fn_service(move |(req, framed)| ws::accept(upgrade_router.clone(), req, framed));
            let http = HttpService::build()
                .upgrade(upgrade)
                .h1(map_config(app, |_| AppConfig::default()));
            fn_service(|io: TcpStream| async move {
                // small frames must not wait for Nagle's algorithm
                let _ = io.set_nodelay(true);
                let peer = io.peer_addr().ok();
                Ok::<_, actix_http::error::DispatchError>((io, peer))
            })
            .and_then(http)
        })?
        .run();
    Ok((server, addr))
}
