//! The playground page (`GET /`): a chat with the model in a browser, embedded in the
//! binary (no CDN, works offline). Served with a strict Content-Security-Policy: scripts
//! and styles only from this server, so even a bug that put model text into the page as
//! HTML could not run it.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

const INDEX: &str = include_str!("playground/index.html");
const SCRIPT: &str = include_str!("playground/playground.js");
const MARKDOWN: &str = include_str!("playground/markdown.js");
const CHATS: &str = include_str!("playground/chats.js");
const STYLE: &str = include_str!("playground/playground.css");

const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                      img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let headers = [
        (header::CONTENT_TYPE, content_type),
        (header::CONTENT_SECURITY_POLICY, POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::CACHE_CONTROL, "no-cache"),
    ];
    (headers, body).into_response()
}

/// The page's routes.
pub(super) fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { asset("text/html; charset=utf-8", INDEX) }))
        .route(
            "/playground.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/markdown.js",
            get(|| async { asset("text/javascript; charset=utf-8", MARKDOWN) }),
        )
        .route(
            "/chats.js",
            get(|| async { asset("text/javascript; charset=utf-8", CHATS) }),
        )
        .route(
            "/playground.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
}
