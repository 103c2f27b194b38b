//! The router: strict requests, CORS, authentication, the request log, `/health`,
//! `/metrics`, `/v1/models` and the two generation endpoints.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path, Request, State as AxumState};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Version};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http_body_util::BodyExt;
use serde_json::json;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

use super::api::{unix_now, ChatParams, CompletionParams};
use super::error::ApiError;
use super::generate::{self, Plan};
use super::{Phase, State};

type Shared = AxumState<Arc<State>>;

/// Status logged when the client went away before its answer was complete (as nginx does).
pub(super) const CLIENT_GONE: u16 = 499;

/// Most bytes read and thrown away from a body that is over the limit, so that the client
/// sees the 413 instead of a reset connection.
const DRAIN_LIMIT: usize = 64 << 20;

/// Builds the application.
pub(super) fn router(state: Arc<State>) -> Router {
    let api = Router::new()
        .route("/v1/models", get(list_models))
        .route("/v1/models/{*id}", get(get_model))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_key));
    let anthropic = Router::new()
        .route("/v1/messages", post(messages))
        .route("/v1/messages/count_tokens", post(count_tokens))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_key))
        .route_layer(middleware::from_fn(super::anthropic::anthropic_errors));
    let mut app = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .merge(api)
        .merge(anthropic);
    if state.config.playground {
        app = app.merge(super::playground::routes());
    }
    let mut app = app
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
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

async fn require_key(AxumState(state): Shared, request: Request, next: Next) -> Response {
    match &state.config.api_key {
        Some(key) if !authorized(key, request.headers()) => ApiError::unauthorized().into_response(),
        _ => next.run(request).await,
    }
}

/// Marks a response whose request is reported by its handler (with token counts, once
/// the answer is complete).
#[derive(Clone, Copy)]
pub(super) struct SelfReported;

/// The route label of a path (bounded, for metrics).
fn route_label(path: &str) -> &'static str {
    match path {
        "/health" => "health",
        "/metrics" => "metrics",
        "/v1/models" => "models",
        "/v1/chat/completions" => "chat_completions",
        "/v1/completions" => "completions",
        "/v1/messages" => "messages",
        "/v1/messages/count_tokens" => "count_tokens",
        "/" | "/playground.js" | "/playground.css" => "playground",
        p if p.starts_with("/v1/models/") => "model",
        _ => "other",
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

/// One request's log line and metrics; a report dropped before it finished (the client
/// went away and the handler was dropped) is logged as 499.
pub(super) struct Report {
    peer: Option<SocketAddr>,
    method: String,
    path: String,
    start: Instant,
    state: Option<Arc<State>>,
}

impl Report {
    fn new(request: &Request) -> Self {
        Self {
            peer: request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0),
            method: request.method().to_string(),
            path: request.uri().path().to_string(),
            start: Instant::now(),
            state: None,
        }
    }

    /// Logs 499 unless finished first.
    fn armed(mut self, state: &Arc<State>) -> Self {
        self.state = Some(state.clone());
        self
    }

    fn disarm(mut self) {
        self.state = None;
    }

    /// When the request started.
    pub(super) fn start(&self) -> Instant {
        self.start
    }

    /// Logs and counts the request: status, then (prompt, completion, cached) tokens.
    pub(super) fn finish(mut self, state: &State, status: u16, (prompt, completion, cached): (usize, usize, usize)) {
        self.state = None;
        self.emit(state, status, (prompt, completion, cached));
    }

    fn emit(&self, state: &State, status: u16, (prompt, completion, cached): (usize, usize, usize)) {
        let seconds = self.start.elapsed().as_secs_f64();
        state.metrics.request(route_label(&self.path), status, seconds);
        if prompt + completion > 0 {
            state.metrics.tokens(prompt, completion, cached);
        }
        let peer = self.peer.map_or_else(|| "-".to_string(), |p| p.to_string());
        tracing::info!(
            target: "llama32::request",
            peer = %peer,
            method = %self.method,
            path = %self.path,
            status,
            prompt_tokens = prompt,
            completion_tokens = completion,
            duration_ms = (seconds * 1e3).round() as u64,
            "{} {} {}",
            self.method,
            self.path,
            status
        );
    }
}

impl Drop for Report {
    fn drop(&mut self) {
        if let Some(state) = self.state.take() {
            self.emit(&state, CLIENT_GONE, (0, 0, 0));
        }
    }
}

async fn health(AxumState(state): Shared) -> Response {
    let draining = *state.phase.borrow() != Phase::Serving;
    match state.ready.get() {
        None => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "loading"}))).into_response(),
        Some(_) if draining => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "shutting_down"})),
        )
            .into_response(),
        Some(ready) => {
            let load = ready.engine.load_stats();
            Json(json!({"status": "ok", "running": load.running, "waiting": load.waiting})).into_response()
        }
    }
}

async fn metrics(AxumState(state): Shared) -> Response {
    let load = state.ready.get().map(|r| r.engine.load_stats());
    let text = state.metrics.render(load, state.in_flight.load(Ordering::SeqCst));
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        text,
    )
        .into_response()
}

fn model_object(state: &State, id: &str) -> serde_json::Value {
    let ctx = state.ready.get().map(|r| r.ctx);
    json!({"id": id, "object": "model", "created": 0, "owned_by": "llama32", "max_model_len": ctx})
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
    match state.config.model_ids.contains(&id) {
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

/// Reads a body of at most `max_body_bytes` within `request_timeout` (413, 408).
async fn read_body(state: &State, body: Body) -> Result<Bytes, ApiError> {
    let limit = state.config.max_body_bytes;
    let read = async {
        let mut body = body;
        let mut bytes = Vec::new();
        let mut seen = 0usize;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ApiError::status(400, format!("Could not read the request body: {e}")))?;
            let Ok(data) = frame.into_data() else { continue };
            seen = seen.saturating_add(data.len());
            if seen > DRAIN_LIMIT {
                break;
            }
            if seen <= limit {
                bytes.extend_from_slice(&data);
            }
        }
        match seen > limit {
            true => Err(ApiError::too_large(limit)),
            false => Ok(Bytes::from(bytes)),
        }
    };
    match tokio::time::timeout(state.config.request_timeout, read).await {
        Ok(result) => result,
        Err(_) => Err(ApiError::status(408, "The request body did not arrive in time")),
    }
}

/// What both generation endpoints do before the answer: readiness, body, parsing, plan.
async fn prepare(
    state: &Arc<State>,
    request: Request,
    plan: impl FnOnce(&Arc<State>, &Bytes) -> Result<Plan, ApiError>,
) -> Result<(Plan, Report), (ApiError, Report)> {
    let report = Report::new(&request).armed(state);
    if state.ready.get().is_none() {
        return Err((ApiError::loading(), report));
    }
    if *state.phase.borrow() != Phase::Serving {
        return Err((ApiError::shutting_down(), report));
    }
    let announced = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > state.config.max_body_bytes as u64) {
        return Err((ApiError::too_large(state.config.max_body_bytes), report));
    }
    let body = match read_body(state, request.into_body()).await {
        Ok(body) => body,
        Err(e) => return Err((e, report)),
    };
    match plan(state, &body) {
        Ok(plan) => Ok((plan, report)),
        Err(e) => Err((e, report)),
    }
}

async fn generation(state: Arc<State>, prepared: Result<(Plan, Report), (ApiError, Report)>) -> Response {
    match prepared {
        Ok((plan, report)) => generate::execute(state, plan, report).await,
        Err((error, report)) => {
            report.finish(&state, error.status, (0, 0, 0));
            let mut response = error.into_response();
            response.extensions_mut().insert(SelfReported);
            response
        }
    }
}

async fn chat(AxumState(state): Shared, request: Request) -> Response {
    let prepared = prepare(&state, request, |state, body| {
        Plan::chat(state, ChatParams::parse(body)?, unix_now())
    })
    .await;
    generation(state, prepared).await
}

async fn completions(AxumState(state): Shared, request: Request) -> Response {
    let prepared = prepare(&state, request, |state, body| {
        Plan::completion(state, CompletionParams::parse(body)?, unix_now())
    })
    .await;
    generation(state, prepared).await
}

async fn messages(AxumState(state): Shared, request: Request) -> Response {
    let prepared = prepare(&state, request, |state, body| {
        Plan::messages(state, super::anthropic::parse(body, true)?, unix_now())
    })
    .await;
    generation(state, prepared).await
}

/// `POST /v1/messages/count_tokens`: the prompt tokens the same body would use.
async fn count_tokens(AxumState(state): Shared, request: Request) -> Response {
    let counted = async {
        let ready = super::generate::ready(&state)?;
        let body = read_body(&state, request.into_body()).await?;
        let params = super::anthropic::parse(&body, false)?;
        Ok::<_, ApiError>(super::generate::chat_prompt(ready, &params)?.len())
    };
    match counted.await {
        Ok(n) => Json(json!({"input_tokens": n})).into_response(),
        Err(e) => e.into_response(),
    }
}
