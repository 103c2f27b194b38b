//! Anthropic's Messages API: `POST /v1/messages` (plain and streamed) and
//! `POST /v1/messages/count_tokens`. Requests are read into the same validated chat
//! request as OpenAI's (messages, tools, sampling), so both APIs share one prompt and one
//! engine path; answers and errors come back in Anthropic's shapes.

use axum::body::{to_bytes, Body};
use axum::extract::Request;
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value as Json};

use super::api::{type_error, ChatParams, CommonParams, Fields, ToolChoice};
use super::error::ApiError;
use crate::chat::{parse_request_value, parse_tool_call};
use crate::engine::{FinishReason, Generation};

/// A validated `POST /v1/messages` body, as a chat request.
pub(super) fn parse(body: &[u8], need_max_tokens: bool) -> Result<ChatParams, ApiError> {
    let mut f = Fields::parse(body)?;
    let mut messages = Vec::new();
    match f.take("system") {
        None => {}
        Some(Json::String(s)) => messages.push(json!({"role": "system", "content": s})),
        Some(Json::Array(blocks)) => {
            let text = block_text("system", &blocks)?;
            messages.push(json!({"role": "system", "content": text}));
        }
        Some(_) => return Err(type_error("system", "a string or an array of text blocks")),
    }
    let turns = match f.take("messages") {
        Some(Json::Array(turns)) if !turns.is_empty() => turns,
        Some(Json::Array(_)) => return Err(ApiError::invalid("messages", "`messages` must not be empty")),
        Some(_) => return Err(type_error("messages", "an array of messages")),
        None => return Err(ApiError::invalid("messages", "messages: Field required")),
    };
    for (i, turn) in turns.into_iter().enumerate() {
        convert_turn(i, turn, &mut messages)?;
    }
    let tools = match f.take("tools") {
        None => None,
        Some(Json::Array(tools)) => Some(
            tools
                .iter()
                .enumerate()
                .map(convert_tool)
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Some(_) => return Err(type_error("tools", "an array of tools")),
    };
    let tool_choice = convert_tool_choice(f.take("tool_choice"))?;
    if let Some(stop) = f.take("stop_sequences") {
        f.insert("stop", stop);
    }
    f.take("metadata");
    let mut request = json!({ "messages": messages });
    if let Some(tools) = tools {
        request["tools"] = Json::Array(tools);
    }
    let parsed = parse_request_value(request).map_err(ApiError::from)?;
    let tools = parsed.tools.filter(|t| !t.is_empty());
    if tools.is_none() && matches!(tool_choice, ToolChoice::Required | ToolChoice::Function(_)) {
        return Err(ApiError::invalid("tool_choice", "`tool_choice` needs `tools`"));
    }
    let common = CommonParams::parse(&mut f, false)?;
    if need_max_tokens && common.max_tokens.is_none() {
        return Err(ApiError::invalid("max_tokens", "max_tokens: Field required"));
    }
    if common.n != 1 {
        return Err(ApiError::invalid("n", "the Messages API answers one message"));
    }
    Ok(ChatParams {
        common,
        messages: parsed.messages,
        tools,
        tool_choice,
        constraint: None,
    })
}

/// The text of an array of `{"type": "text", "text": ...}` blocks.
fn block_text(name: &str, blocks: &[Json]) -> Result<String, ApiError> {
    let mut text = String::new();
    for block in blocks {
        match (
            block.get("type").and_then(Json::as_str),
            block.get("text").and_then(Json::as_str),
        ) {
            (Some("text"), Some(t)) => text.push_str(t),
            (Some(other), _) if other != "text" => {
                return Err(ApiError::invalid(
                    name,
                    format!("content blocks of type `{other}` are not supported here"),
                ))
            }
            _ => return Err(ApiError::invalid(name, "a text block needs a string `text`")),
        }
    }
    Ok(text)
}

/// One Anthropic turn as OpenAI-shaped messages (a user turn with tool results becomes
/// `tool` messages; an assistant turn with `tool_use` blocks carries `tool_calls`).
fn convert_turn(i: usize, turn: Json, out: &mut Vec<Json>) -> Result<(), ApiError> {
    let name = format!("messages[{i}]");
    let role = match turn.get("role").and_then(Json::as_str) {
        Some(r @ ("user" | "assistant")) => r.to_string(),
        _ => {
            return Err(ApiError::invalid(
                "messages",
                format!("{name}.role must be `user` or `assistant`"),
            ))
        }
    };
    let blocks = match turn.get("content") {
        Some(Json::String(s)) => {
            out.push(json!({"role": role, "content": s}));
            return Ok(());
        }
        Some(Json::Array(blocks)) => blocks.clone(),
        _ => {
            return Err(ApiError::invalid(
                "messages",
                format!("{name}.content must be a string or an array of blocks"),
            ))
        }
    };
    let (mut text, mut calls) = (String::new(), Vec::new());
    for block in &blocks {
        match block.get("type").and_then(Json::as_str) {
            Some("text") => text.push_str(block.get("text").and_then(Json::as_str).unwrap_or_default()),
            Some("tool_use") if role == "assistant" => calls.push(json!({
                "id": block.get("id").cloned().unwrap_or(Json::Null),
                "type": "function",
                "function": {"name": block.get("name").cloned().unwrap_or(Json::Null),
                             "arguments": block.get("input").cloned().unwrap_or_else(|| json!({}))},
            })),
            Some("tool_result") if role == "user" => {
                let content = match block.get("content") {
                    Some(Json::String(s)) => s.clone(),
                    Some(Json::Array(parts)) => block_text("messages", parts)?,
                    _ => String::new(),
                };
                out.push(json!({"role": "tool", "tool_call_id": block.get("tool_use_id"), "content": content}));
            }
            Some(other) => {
                return Err(ApiError::invalid(
                    "messages",
                    format!("{name}: content blocks of type `{other}` are not supported for role `{role}`"),
                ))
            }
            None => {
                return Err(ApiError::invalid(
                    "messages",
                    format!("{name}: a content block has no `type`"),
                ))
            }
        }
    }
    if !text.is_empty() || !calls.is_empty() {
        let mut message = json!({"role": role, "content": text});
        if !calls.is_empty() {
            message["tool_calls"] = Json::Array(calls);
        }
        out.push(message);
    }
    Ok(())
}

fn convert_tool((i, tool): (usize, &Json)) -> Result<Json, ApiError> {
    let name = tool.get("name").and_then(Json::as_str);
    let Some(name) = name else {
        return Err(ApiError::invalid("tools", format!("tools[{i}].name is missing")));
    };
    let mut function = Map::new();
    function.insert("name".into(), json!(name));
    if let Some(d) = tool.get("description") {
        function.insert("description".into(), d.clone());
    }
    let schema = tool
        .get("input_schema")
        .cloned()
        .unwrap_or_else(|| json!({"type": "object"}));
    function.insert("parameters".into(), schema);
    Ok(json!({"type": "function", "function": function}))
}

fn convert_tool_choice(choice: Option<Json>) -> Result<ToolChoice, ApiError> {
    let Some(choice) = choice else {
        return Ok(ToolChoice::Auto);
    };
    match (
        choice.get("type").and_then(Json::as_str),
        choice.get("name").and_then(Json::as_str),
    ) {
        (Some("auto"), _) => Ok(ToolChoice::Auto),
        (Some("none"), _) => Ok(ToolChoice::None),
        (Some("any"), _) => Ok(ToolChoice::Required),
        (Some("tool"), Some(name)) => Ok(ToolChoice::Function(name.to_string())),
        (Some("tool"), None) => Err(ApiError::invalid("tool_choice", "`tool_choice.name` is missing")),
        _ => Err(ApiError::invalid(
            "tool_choice",
            "`tool_choice.type` must be auto, any, tool or none",
        )),
    }
}

/// Anthropic's `stop_reason` for a finished answer (`tool_use` is decided by the caller).
pub(super) fn stop_reason(g: &Generation) -> &'static str {
    match (g.finish_reason, &g.stop_sequence) {
        (FinishReason::Length, _) => "max_tokens",
        (FinishReason::Stop, Some(_)) => "stop_sequence",
        _ => "end_turn",
    }
}

/// A fresh `toolu_...` id.
pub(super) fn tool_use_id() -> String {
    super::api::new_id("toolu_")
}

/// The content blocks and stop reason of a whole answer.
pub(super) fn content(g: &Generation, tools_active: bool) -> (Json, &'static str) {
    let reason = stop_reason(g);
    if tools_active && g.finish_reason == FinishReason::Stop && g.text.trim_start().starts_with('{') {
        if let Some(call) = parse_tool_call(&g.text) {
            let block = json!({"type": "tool_use", "id": tool_use_id(), "name": call.name, "input": call.arguments});
            return (json!([block]), "tool_use");
        }
    }
    (json!([{"type": "text", "text": g.text}]), reason)
}

/// `usage` of a message.
pub(super) fn usage(input: usize, output: usize, cached: usize) -> Json {
    json!({"input_tokens": input, "output_tokens": output, "cache_read_input_tokens": cached,
           "cache_creation_input_tokens": 0})
}

/// Anthropic's error `type` for an HTTP status.
pub(super) fn error_type(status: u16) -> &'static str {
    match status {
        400 | 405 | 408 | 411 | 422 => "invalid_request_error",
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
pub(super) fn error_body(e: &ApiError) -> Json {
    json!({"type": "error", "error": {"type": error_type(e.status), "message": e.message}})
}

/// Rewrites the OpenAI-shaped error bodies of the routes below it (including the
/// authentication and body-limit errors of the shared layers) into Anthropic's shape.
pub(super) async fn anthropic_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status().as_u16();
    let json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if status < 400 || !json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = to_bytes(body, 1 << 20).await else {
        return (parts, Body::empty()).into_response();
    };
    let message = serde_json::from_slice::<Json>(&bytes)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_default();
    let body = json!({"type": "error", "error": {"type": error_type(status), "message": message}});
    parts.headers.remove(header::CONTENT_LENGTH);
    (parts, axum::Json(body)).into_response()
}

/// The whole answer as an Anthropic `message`.
pub(super) fn message_body(id: &str, model: &str, g: &Generation, tools_active: bool) -> Json {
    let (content, reason) = content(g, tools_active);
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
