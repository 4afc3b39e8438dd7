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
use crate::net::{api, cluster, http, media, openapi, web as web_client};

/// Every route of the App, from one table: the App's routes and [`SERVED`] are both made from it, so the
/// OpenAPI document ([`crate::net::openapi`]) can be checked against what is really served.
macro_rules! served {
    ($( $method:ident $path:literal => $handler:path ),* $(,)?) => {
        /// Every `(method, path)` the App serves (paths with `{param}`s, as in OpenAPI).
        pub const SERVED: &[(&str, &str)] = &[$((stringify!($method), $path)),*];

        pub fn routes(cfg: &mut web::ServiceConfig) {
            $(cfg.route($path, web::$method().to($handler));)*
        }
    };
}

served! {
    get "/healthz" => http::healthz,
    get "/metrics" => http::metrics,
    post "/v1/token" => http::token,
    get "/v1/nodes" => http::nodes,
    get "/v1/route" => http::route,
    get "/v1/admin/cluster" => cluster::admin_cluster,
    post "/v1/admin/nodes" => cluster::add_node,
    delete "/v1/admin/nodes/{id}" => cluster::remove_node,
    get "/v1/openapi.json" => openapi::openapi_json,
    post "/v1/uploads" => media::start,
    get "/v1/uploads/{upload}" => media::upload_status,
    post "/v1/uploads/{upload}/complete" => media::complete,
    put "/v1/uploads/{upload}/{index}" => media::put_chunk,
    get "/v1/media/{id}" => media::download,
    get "/v1/media/{id}/thumb" => media::thumbnail,
    get "/ws" => upgrade_required,
    post "/v1/messages" => api::post_message,
    get "/v1/conversations/{conv}/messages" => api::messages,
    post "/v1/groups" => api::create_group,
    post "/v1/groups/{conv}/members" => api::change_members,
    get "/v1/groups/{conv}" => api::group,
    get "/v1/users/{user}" => api::user,
    post "/v1/users/{user}/logout" => api::logout,
    put "/v1/users/{user}/ban" => api::ban,
    delete "/v1/users/{user}/ban" => api::unban,
    get "/" => web_client::index,
    get "/index.html" => web_client::index_html,
    get "/app.js" => web_client::app_js,
    get "/app.css" => web_client::app_css,
    get "/sdk/rookery.js" => web_client::sdk_js,
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

/// The WebSocket endpoint (PROTOCOL.md, "WebSocket frames"): one JSON frame per text message. Answered
/// here only without the upgrade headers (400); an upgrade is taken before routing.
#[utoipa::path(get, path = "/ws", tag = "node",
    responses((status = 101, description = "switching to the WebSocket protocol"),
        (status = 400, description = "no upgrade asked for", body = crate::net::http::ErrorBody),
        (status = 403, description = "an `Origin` not in http.cors_origins")))]
pub async fn upgrade_required() -> HttpResponse {
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
            let upgrade = fn_service(move |(req, framed)| {
                crate::net::ws::accept(upgrade_router.clone(), req, framed)
            });
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
