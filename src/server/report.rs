//! One request's log line and metrics: logged once, by the router for most requests, by
//! the handler (with token counts, once the answer is complete) for generation requests;
//! a request whose client went away before the end is logged as 499.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{ConnectInfo, Request};
use axum::response::Response;

use super::State;

/// Status logged when the client went away before its answer was complete (as nginx does).
pub(super) const CLIENT_GONE: u16 = 499;

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
        "/v1/responses" => "responses",
        "/v1/responses/input_tokens" => "input_tokens",
        "/tokenize" | "/detokenize" => "tokenize",
        "/" | "/playground.js" | "/markdown.js" | "/chats.js" | "/playground.css" => "playground",
        p if p.starts_with("/v1/models/") => "model",
        _ => "other",
    }
}

/// Marks a response as logged by its handler.
pub(super) fn self_reported(mut response: Response) -> Response {
    response.extensions_mut().insert(SelfReported);
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
    /// How a chat request's tools reached the model.
    tools: Option<&'static str>,
}

impl Report {
    pub(super) fn new(request: &Request) -> Self {
        Self {
            peer: request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0),
            method: request.method().to_string(),
            path: request.uri().path().to_string(),
            start: Instant::now(),
            tools: None,
            state: None,
        }
    }

    /// Logs 499 unless finished first.
    pub(super) fn armed(mut self, state: &Arc<State>) -> Self {
        self.state = Some(state.clone());
        self
    }

    pub(super) fn disarm(mut self) {
        self.state = None;
    }

    /// When the request started.
    pub(super) fn start(&self) -> Instant {
        self.start
    }

    /// Logs and counts the request: status, then (prompt, completion, cached) tokens.
    /// Logs how the request's tools reached the model (`template`, `system_message`).
    pub(super) fn with_tools(mut self, via: Option<&'static str>) -> Self {
        self.tools = via;
        self
    }

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
            tools = self.tools.unwrap_or("-"),
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
