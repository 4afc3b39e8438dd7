//! The browser client, served by every node from its own binary: `GET /` (the web chat app), `/app.js` and
//! `/app.css` (its script and styles), `GET /sdk/rookery.js` (the JavaScript client library as an ES module).
//! The files are the committed build outputs (`web/dist/`, `clients/js/dist/`, rebuilt by `npm run build`),
//! embedded at compile time: no file is read at run time and a node needs no Node.js.
//!
//! Every answer carries a strong `ETag` (a hash of the bytes, computed once) and `Cache-Control: no-cache`,
//! so a browser revalidates each load and gets `304 Not Modified` until the node is upgraded.

use std::sync::OnceLock;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse};

/// One embedded file: its bytes, content type and (lazily) its `ETag`.
pub struct Asset {
    pub body: &'static str,
    pub content_type: &'static str,
    etag: OnceLock<String>,
}

impl Asset {
    const fn new(body: &'static str, content_type: &'static str) -> Asset {
        Asset {
            body,
            content_type,
            etag: OnceLock::new(),
        }
    }

    /// A strong validator: FNV-1a 64 of the bytes, quoted.
    pub fn etag(&self) -> &str {
        self.etag.get_or_init(|| {
            let mut hasher = fnv::FnvHasher::default();
            std::hash::Hasher::write(&mut hasher, self.body.as_bytes());
            format!("\"{:016x}\"", std::hash::Hasher::finish(&hasher))
        })
    }
}

pub static INDEX_HTML: Asset = Asset::new(
    include_str!("../../web/dist/index.html"),
    "text/html; charset=utf-8",
);
pub static APP_JS: Asset = Asset::new(
    include_str!("../../web/dist/app.js"),
    "text/javascript; charset=utf-8",
);
pub static APP_CSS: Asset = Asset::new(
    include_str!("../../web/dist/app.css"),
    "text/css; charset=utf-8",
);
pub static SDK_JS: Asset = Asset::new(
    include_str!("../../clients/js/dist/rookery.js"),
    "text/javascript; charset=utf-8",
);

/// The page may load its own script and styles, show media from any node (thumbnails redirect between
/// nodes) and connect to any node's WebSocket; nothing may frame it.
const PAGE_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     img-src 'self' data: blob: http: https:; connect-src 'self' ws: wss: http: https:; \
     frame-ancestors 'none'; base-uri 'none'";

/// The web chat app (its routes are registered in [`crate::net::server`]).
#[utoipa::path(get, path = "/", tag = "browser client",
    responses((status = 200, content_type = "text/html", body = String), (status = 304, description = "not modified")))]
pub async fn index(req: HttpRequest) -> HttpResponse {
    let mut response = serve(&req, &INDEX_HTML);
    if let Ok(csp) = header::HeaderValue::from_str(PAGE_CSP) {
        response
            .headers_mut()
            .insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    response
}

/// The web chat app, by its file name.
#[utoipa::path(get, path = "/index.html", tag = "browser client",
    responses((status = 200, content_type = "text/html", body = String), (status = 304, description = "not modified")))]
pub async fn index_html(req: HttpRequest) -> HttpResponse {
    index(req).await
}

/// The web chat app's script.
#[utoipa::path(get, path = "/app.js", tag = "browser client",
    responses((status = 200, content_type = "text/javascript", body = String), (status = 304, description = "not modified")))]
pub async fn app_js(req: HttpRequest) -> HttpResponse {
    serve(&req, &APP_JS)
}

/// The web chat app's styles.
#[utoipa::path(get, path = "/app.css", tag = "browser client",
    responses((status = 200, content_type = "text/css", body = String), (status = 304, description = "not modified")))]
pub async fn app_css(req: HttpRequest) -> HttpResponse {
    serve(&req, &APP_CSS)
}

/// The JavaScript client library (an ES module).
#[utoipa::path(get, path = "/sdk/rookery.js", tag = "browser client",
    responses((status = 200, content_type = "text/javascript", body = String), (status = 304, description = "not modified")))]
pub async fn sdk_js(req: HttpRequest) -> HttpResponse {
    let mut response = serve(&req, &SDK_JS);
    // the library may be imported by pages of other origins (`import ... from "http://node/sdk/rookery.js"`)
    response.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        header::HeaderValue::from_static("*"),
    );
    response
}

/// The asset, or `304` when the request already holds this version.
fn serve(req: &HttpRequest, asset: &Asset) -> HttpResponse {
    let etag = asset.etag();
    let fresh = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut builder = if fresh {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    builder
        .insert_header((header::ETAG, etag))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"));
    if fresh {
        return builder.finish();
    }
    builder.content_type(asset.content_type).body(asset.body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_files_are_the_built_ones() {
        assert!(INDEX_HTML.body.contains("app.js"));
        assert!(INDEX_HTML.body.contains("app.css"));
        assert!(SDK_JS.body.contains("RookeryClient"));
        assert!(!APP_JS.body.is_empty() && !APP_CSS.body.is_empty());
    }

    #[test]
    fn etags_are_quoted_and_differ_per_file() {
        assert!(APP_JS.etag().starts_with('"') && APP_JS.etag().ends_with('"'));
        assert_ne!(APP_JS.etag(), SDK_JS.etag());
        assert_eq!(APP_JS.etag(), APP_JS.etag());
    }
}
