//! The router: strict requests, CORS, authentication, the request log, `/health`,
//! `/metrics`, `/v1/models` and the two generation endpoints.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Path, Request, State as AxumState};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Version};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

use super::error::ApiError;
use super::report::{Report, SelfReported};
use super::{handlers, Phase, State};

type Shared = AxumState<Arc<State>>;

/// Builds the application.
pub(super) fn router(state: Arc<State>) -> Router {
    let api = Router::new()
        .route("/v1/models", get(list_models))
        .route("/v1/models/{*id}", get(get_model))
        .route("/v1/chat/completions", post(handlers::chat))
        .route("/v1/completions", post(handlers::completions))
        .route("/v1/responses", post(handlers::responses))
        .route("/v1/responses/input_tokens", post(super::responses::input_tokens))
        .route(
            "/v1/responses/{id}",
            get(super::responses::retrieve).delete(super::responses::delete),
        )
        .route("/tokenize", post(super::tokens::tokenize))
        .route("/detokenize", post(super::tokens::detokenize))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_key));
    let anthropic = Router::new()
        .route("/v1/messages", post(handlers::messages))
        .route("/v1/messages/count_tokens", post(handlers::count_tokens))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_key));
    let mut app = Router::new()
        .route("/health", get(health))
        .route("/livez", get(livez))
        .route("/admin/drain", post(drain))
        .route(
            "/metrics",
            get(metrics).route_layer(middleware::from_fn_with_state(state.clone(), metrics_key)),
        )
        .merge(api)
        .merge(anthropic);
    if state.config.playground {
        app = app.merge(super::playground::routes());
    }
    let mut app = app
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), super::guard::guard))
        .layer(middleware::from_fn(super::anthropic::anthropic_errors))
        .layer(middleware::from_fn_with_state(state.clone(), log_request));
    if let Some(cors) = cors_layer(&state.config.cors_origins) {
        app = app.layer(cors);
    }
    app.layer(middleware::from_fn(strict_request)).with_state(state)
}

fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = match origins.iter().any(|o| o == "*") {
        true => AllowOrigin::any(),
        false => AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok())),
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
            .allow_headers(Any)
            .max_age(Duration::from_secs(3600)),
    )
}

/// RFC 9112 3.2: an HTTP/1.1 request has exactly one `Host` header (400 and close
/// otherwise). hyper refuses malformed framing itself, and serves a request with both
/// `Transfer-Encoding: chunked` and `Content-Length` by the chunks, then closes (6.1).
async fn strict_request(request: Request, next: Next) -> Response {
    // `OPTIONS *` asks about the server as a whole (RFC 9110 9.3.7).
    if request.method() == Method::OPTIONS && request.uri() == "*" {
        let mut response = StatusCode::NO_CONTENT.into_response();
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, POST, DELETE, OPTIONS"));
        return response;
    }
    let headers = request.headers();
    let hosts = headers.get_all(header::HOST).iter().count();
    let needs_host = request.version() == Version::HTTP_11;
    if hosts > 1 || (needs_host && hosts == 0) {
        let mut response = ApiError::status(400, "An HTTP/1.1 request needs exactly one Host header").into_response();
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return response;
    }
    next.run(request).await
}

/// Compares without stopping at the first difference.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn authorized(key: &str, headers: &HeaderMap) -> bool {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")));
    let given = bearer.or_else(|| headers.get("x-api-key").and_then(|h| h.to_str().ok()));
    given.is_some_and(|g| same_secret(g.trim().as_bytes(), key.as_bytes()))
}

/// The prefix-cache scope of the API key a request was made with (0 with one key or none).
#[derive(Debug, Clone, Copy)]
pub(super) struct KeyScope(pub(super) u64);

async fn require_key(AxumState(state): Shared, mut request: Request, next: Next) -> Response {
    let keys = &state.config.api_keys;
    if keys.is_empty() {
        return next.run(request).await;
    }
    // Every key is compared, so the time does not tell which one nearly matched.
    let matched = keys
        .iter()
        .fold(None, |found, key| match authorized(key, request.headers()) {
            true => Some(key),
            false => found,
        });
    match matched {
        None => ApiError::unauthorized().into_response(),
        Some(key) => {
            let scope = match keys.len() {
                1 => 0,
                _ => super::params::scope_of(&["key", key]),
            };
            request.extensions_mut().insert(KeyScope(scope));
            next.run(request).await
        }
    }
}

async fn metrics_key(state: Shared, request: Request, next: Next) -> Response {
    match state.config.metrics_public {
        true => next.run(request).await,
        false => require_key(state, request, next).await,
    }
}

async fn log_request(AxumState(state): Shared, request: Request, next: Next) -> Response {
    let report = Report::new(&request);
    let response = next.run(request).await;
    if response.extensions().get::<SelfReported>().is_some() {
        report.disarm();
    } else {
        report.finish(&state, response.status().as_u16(), (0, 0, 0));
    }
    response
}

async fn health(AxumState(state): Shared) -> Response {
    let draining = state.draining();
    match state.ready.get() {
        None => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "loading"}))).into_response(),
        Some(_) if draining => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "draining"}))).into_response(),
        Some(ready) => {
            let load = ready.engine.load_stats();
            Json(json!({"status": "ok", "running": load.running, "waiting": load.waiting})).into_response()
        }
    }
}

/// Liveness: the process answers (also while loading and draining).
async fn livez() -> Response {
    Json(json!({"status": "alive"})).into_response()
}

/// `POST /admin/drain`: what SIGTERM does (readiness 503, new requests 503, running
/// answers finish, then the server stops). Needs an API key when the server has keys;
/// without keys, only a client on this machine may ask.
async fn drain(
    AxumState(state): Shared,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    request: Request,
) -> Response {
    let keys = &state.config.api_keys;
    let allowed = match keys.is_empty() {
        true => peer.ip().to_canonical().is_loopback(),
        false => keys
            .iter()
            .fold(false, |ok, key| authorized(key, request.headers()) | ok),
    };
    if !allowed {
        return match keys.is_empty() {
            true => ApiError::status(403, "Only a client on this machine may drain a server without API keys")
                .into_response(),
            false => ApiError::unauthorized().into_response(),
        };
    }
    state.advance(Phase::Draining);
    (StatusCode::ACCEPTED, Json(json!({"status": "draining"}))).into_response()
}

async fn metrics(AxumState(state): Shared) -> Response {
    let load = state.ready.get().map(|r| r.engine.load_stats());
    let draining = state.draining();
    let text = state
        .metrics
        .render(load, state.in_flight.load(Ordering::SeqCst), draining);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        text,
    )
        .into_response()
}

/// A `/v1/models` entry: with the context window and the sampling a request gets when it
/// sets nothing (the model's `generation_config.json` defaults), once the model is loaded.
fn model_object(state: &State, id: &str) -> serde_json::Value {
    let ready = state.ready.get();
    let defaults = ready.and_then(|r| {
        let engine = &r.engine;
        let resolved = llama32_defaults(engine)?;
        let mut v = serde_json::to_value(resolved).ok()?;
        if let serde_json::Value::Object(map) = &mut v {
            for private in ["seed", "logit_bias", "vocab_size"] {
                map.remove(private);
            }
            // f32 values as typed (0.6, not 0.6000000238418579).
            for value in map.values_mut() {
                if let Some(x) = value.as_f64().filter(|_| value.is_f64()) {
                    let shortest: f64 = (x as f32).to_string().parse().unwrap_or(x);
                    *value = json!(shortest);
                }
            }
        }
        Some(v)
    });
    json!({"id": id, "object": "model", "created": 0, "owned_by": "llama32", "max_model_len": ready.map(|r| r.ctx),
           "sampling_defaults": defaults})
}

fn llama32_defaults(engine: &crate::engine::Engine) -> Option<crate::sampler::ResolvedSampling> {
    crate::sampler::SamplingParams::default()
        .resolve(engine.generation_config(), engine.config().vocab_size)
        .ok()
}

async fn list_models(AxumState(state): Shared) -> Response {
    let data: Vec<_> = state
        .config
        .model_ids
        .iter()
        .map(|id| model_object(&state, id))
        .collect();
    Json(json!({"object": "list", "data": data})).into_response()
}

/// `{*id}` is percent-decoded by axum, so `owner%2Fname` and `owner/name` both match.
async fn get_model(AxumState(state): Shared, Path(id): Path<String>) -> Response {
    match state.config.serves(&id) {
        true => Json(model_object(&state, &id)).into_response(),
        false => ApiError::model_not_found(&id, &state.config.model_ids[0]).into_response(),
    }
}

async fn no_route(method: Method, uri: axum::http::Uri) -> Response {
    ApiError::no_route(method.as_str(), uri.path()).into_response()
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> Response {
    ApiError::method_not_allowed(method.as_str(), uri.path()).into_response()
}
