//! OpenAI's answer objects: `chat.completion` and `text_completion` with their choices,
//! the stream chunk shapes (`chat.completion.chunk`), `usage` and `tool_calls`.

use serde_json::{json, Value as Json};

use crate::chat::Callable;
use crate::engine::Generation;
use crate::server::params::new_id;
use crate::server::plan::{finish_name, Kind, Plan};

/// The `usage` object.
pub(in crate::server) fn usage(prompt_tokens: usize, completion_tokens: usize, cached_tokens: usize) -> Json {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    })
}

/// A tool call in OpenAI's response shape (`arguments` as a JSON string).
pub(in crate::server) fn tool_call_json(name: &str, arguments: &Json) -> Json {
    json!({
        "id": new_id("call_"),
        "type": "function",
        "function": {"name": name, "arguments": arguments.to_string()},
    })
}

/// The assistant message of a finished answer and its `finish_reason`: a tool call when
/// the answer is one to a function of `tools` (`content: null`, `finish_reason: "tool_calls"`).
pub(in crate::server) fn chat_message(
    text: &str,
    tools: &Callable,
    finish_reason: &'static str,
) -> (Json, &'static str) {
    if finish_reason == "stop" {
        if let Some(call) = tools.call_in(text) {
            let message = json!({
                "role": "assistant",
                "content": null,
                "tool_calls": [tool_call_json(&call.name, &call.arguments)],
            });
            return (message, "tool_calls");
        }
    }
    (json!({"role": "assistant", "content": text}), finish_reason)
}

/// The `object` of an answer or of one of its stream chunks.
fn object(plan: &Plan, chunk: bool) -> &'static str {
    match (&plan.kind, chunk) {
        (Kind::Chat { .. }, false) => "chat.completion",
        (Kind::Chat { .. }, true) => "chat.completion.chunk",
        (Kind::Completion { .. }, _) => "text_completion",
        (Kind::Messages { .. }, _) => "message",
        (Kind::Responses(_), _) => "response",
    }
}

/// An answer (or stream chunk) around `choices`.
pub(in crate::server) fn envelope(plan: &Plan, model: &str, chunk: bool, choices: Json) -> Json {
    json!({
        "id": plan.id,
        "object": object(plan, chunk),
        "created": plan.created,
        "model": model,
        "system_fingerprint": null,
        "choices": choices,
    })
}

/// Choice `index` of a whole answer.
pub(in crate::server) fn choice(plan: &Plan, index: usize, g: &Generation) -> Json {
    let reason = finish_name(g.finish_reason);
    match &plan.kind {
        Kind::Chat { tools } => {
            let (message, reason) = chat_message(&g.text, tools, reason);
            json!({"index": index, "message": message, "logprobs": null, "finish_reason": reason})
        }
        Kind::Completion { echo } => {
            let text = format!("{}{}", echo.as_deref().unwrap_or(""), g.text);
            json!({"index": index, "text": text, "logprobs": null, "finish_reason": reason})
        }
        Kind::Messages { .. } | Kind::Responses(_) => Json::Null,
    }
}

/// A stream chunk's choice carrying new text.
pub(in crate::server) fn text_piece(chat: bool, index: usize, text: &str) -> Json {
    match chat {
        true => json!({"index": index, "delta": {"content": text}, "logprobs": null, "finish_reason": null}),
        false => json!({"index": index, "text": text, "logprobs": null, "finish_reason": null}),
    }
}

/// A stream chunk's choice carrying the finish reason.
pub(in crate::server) fn last_piece(chat: bool, index: usize, reason: &str) -> Json {
    match chat {
        true => json!({"index": index, "delta": {}, "logprobs": null, "finish_reason": reason}),
        false => json!({"index": index, "text": "", "logprobs": null, "finish_reason": reason}),
    }
}
