//! Anthropic's answer objects: a `message` with its content blocks and stop reason,
//! `usage`, and the error body.

use serde_json::{json, Value as Json};

use crate::chat::Callable;
use crate::engine::{FinishReason, Generation};
use crate::server::error::ApiError;

/// Anthropic's `stop_reason` for a finished answer (`tool_use` is decided by the caller).
pub(in crate::server) fn stop_reason(g: &Generation) -> &'static str {
    match (g.finish_reason, &g.stop_sequence) {
        (FinishReason::Length, _) => "max_tokens",
        (FinishReason::Stop, Some(_)) => "stop_sequence",
        _ => "end_turn",
    }
}

/// A fresh `toolu_...` id.
pub(in crate::server) fn tool_use_id() -> String {
    crate::server::params::new_id("toolu_")
}

/// The content blocks and stop reason of a whole answer.
pub(in crate::server) fn content(g: &Generation, tools: &Callable) -> (Json, &'static str) {
    let reason = stop_reason(g);
    if g.finish_reason == FinishReason::Stop && g.text.trim_start().starts_with('{') {
        if let Some(call) = tools.call_in(&g.text) {
            let block = json!({"type": "tool_use", "id": tool_use_id(), "name": call.name, "input": call.arguments});
            return (json!([block]), "tool_use");
        }
    }
    (json!([{"type": "text", "text": g.text}]), reason)
}

/// `usage` of a message in Anthropic's meaning: `input_tokens` are the prompt tokens not
/// read from the cache (`prompt` counts them all), `cache_read_input_tokens` those read.
pub(in crate::server) fn usage(prompt: usize, output: usize, cached: usize) -> Json {
    json!({"input_tokens": prompt.saturating_sub(cached), "output_tokens": output,
           "cache_read_input_tokens": cached, "cache_creation_input_tokens": 0})
}

/// Anthropic's error `type` for an HTTP status.
pub(in crate::server) fn error_type(status: u16) -> &'static str {
    match status {
        400 | 405 | 408 | 411 | 415 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        _ => "api_error",
    }
}

/// An error body in Anthropic's shape.
pub(in crate::server) fn error_body(e: &ApiError) -> Json {
    json!({"type": "error", "error": {"type": error_type(e.status), "message": e.message}})
}

/// The whole answer as an Anthropic `message`.
pub(in crate::server) fn message_body(id: &str, model: &str, g: &Generation, tools: &Callable) -> Json {
    let (content, reason) = content(g, tools);
    json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": g.stop_sequence,
        "usage": usage(g.prompt_tokens, g.completion_tokens, g.cached_tokens),
    })
}
