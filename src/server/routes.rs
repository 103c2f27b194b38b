//! Routing: authentication, `/health`, `/v1/models`, and the two generation endpoints.

use serde_json::json;

use super::api::{unix_now, ChatParams, CompletionParams};
use super::error::ApiError;
use super::generate::{self, Plan};
use super::http::{write_error, write_json, Conn, Request};
use super::{Outcome, State};

/// Answers one request.
pub(super) fn handle(state: &State, request: &Request, conn: &mut Conn) -> Outcome {
    let result = route(state, request, conn);
    match result {
        Ok(outcome) => outcome,
        Err(error) => {
            let sent = write_error(conn.writer(), &error, request.keep_alive).is_ok();
            Outcome::status(error.status, sent)
        }
    }
}

/// Compares without stopping at the first difference.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn authorized(state: &State, request: &Request) -> bool {
    let Some(key) = &state.config.api_key else {
        return true;
    };
    let given = request
        .header("authorization")
        .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
        .map(str::trim);
    given.is_some_and(|g| same_secret(g.as_bytes(), key.as_bytes()))
}

fn send_json(conn: &mut Conn, body: &serde_json::Value, keep_alive: bool) -> Outcome {
    Outcome::status(200, write_json(conn.writer(), body, keep_alive))
}

fn model_object(state: &State) -> serde_json::Value {
    json!({
        "id": state.config.model_id,
        "object": "model",
        "created": 0,
        "owned_by": "llama32",
        "max_model_len": state.ctx,
    })
}

fn route(state: &State, request: &Request, conn: &mut Conn) -> Result<Outcome, ApiError> {
    let (method, path) = (request.method.as_str(), request.path.trim_end_matches('/'));
    if path == "/health" {
        return match method {
            "GET" => {
                let (running, waiting) = state.slots.load();
                let body = json!({"status": "ok", "running": running, "waiting": waiting});
                Ok(send_json(conn, &body, request.keep_alive))
            }
            _ => Err(ApiError::method_not_allowed(method, path)),
        };
    }
    if path.starts_with("/v1") && !authorized(state, request) {
        return Err(ApiError::unauthorized());
    }
    let models_prefix = "/v1/models/";
    match (method, path) {
        ("GET", "/v1/models") => {
            let body = json!({"object": "list", "data": [model_object(state)]});
            Ok(send_json(conn, &body, request.keep_alive))
        }
        ("GET", p) if p.starts_with(models_prefix) => {
            let id = &p[models_prefix.len()..];
            if id != state.config.model_id {
                return Err(ApiError::model_not_found(id, &state.config.model_id));
            }
            Ok(send_json(conn, &model_object(state), request.keep_alive))
        }
        ("POST", "/v1/chat/completions") => {
            let params = ChatParams::parse(&request.body)?;
            let plan = Plan::chat(state, params, unix_now())?;
            Ok(generate::execute(state, plan, conn, request.keep_alive))
        }
        ("POST", "/v1/completions") => {
            let params = CompletionParams::parse(&request.body)?;
            let plan = Plan::completion(state, params, unix_now())?;
            Ok(generate::execute(state, plan, conn, request.keep_alive))
        }
        (_, "/v1/models" | "/v1/chat/completions" | "/v1/completions") => {
            Err(ApiError::method_not_allowed(method, path))
        }
        _ => Err(ApiError::no_route(method, path)),
    }
}
