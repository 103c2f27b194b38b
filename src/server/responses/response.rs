//! The Responses API's answer objects: the `response` with its output items (an assistant
//! `message` with `output_text`, or a `function_call`), `usage`, and the conversation a
//! stored response hands to the next turn.

use serde_json::{json, Map, Value as Json};

use crate::chat::{Callable, FunctionCall, Message, ToolCall};
use crate::engine::{FinishReason, Generation};
use crate::server::params::new_id;

/// What a Responses request's answer needs besides the generation.
#[derive(Debug, Clone)]
pub(crate) struct Meta {
    /// The request fields the response object repeats.
    pub(crate) echo: Map<String, Json>,
    /// The conversation so far, without instructions (stored with the answer).
    pub(crate) history: Vec<Message>,
    /// Keep the response for `retrieve` and `previous_response_id`.
    pub(crate) store: bool,
    /// The functions the answer may call.
    pub(crate) tools: Callable,
}

/// The answer's one output item.
#[derive(Debug, Clone)]
pub(crate) enum Output {
    /// Text.
    Message { id: String, text: String },
    /// A function call (`arguments` a JSON string).
    Call {
        id: String,
        call_id: String,
        name: String,
        arguments: String,
    },
}

impl Output {
    /// The item for a finished answer: a call when tools are active and it is one.
    pub(crate) fn of(text: &str, finish: FinishReason, tools: &Callable) -> Self {
        let call = match finish {
            FinishReason::Stop => tools.call_in(text),
            _ => None,
        };
        match call {
            Some(call) => Output::call(call.name, call.arguments.to_string()),
            None => Output::Message {
                id: new_id("msg_"),
                text: text.to_string(),
            },
        }
    }

    /// A function call item with fresh ids.
    pub(crate) fn call(name: String, arguments: String) -> Self {
        Output::Call {
            id: new_id("fc_"),
            call_id: new_id("call_"),
            name,
            arguments,
        }
    }

    /// The item as JSON with `status`.
    pub(crate) fn json(&self, status: &str) -> Json {
        match self {
            Output::Message { id, text } => json!({"type": "message", "id": id, "status": status, "role": "assistant",
                "content": [text_part(text)]}),
            Output::Call {
                id,
                call_id,
                name,
                arguments,
            } => json!({"type": "function_call", "id": id, "call_id": call_id, "name": name,
                "arguments": arguments, "status": status}),
        }
    }

    /// The assistant turn this item adds to the conversation.
    pub(crate) fn message(&self) -> Message {
        match self {
            Output::Message { text, .. } => Message::text("assistant", text.clone()),
            Output::Call {
                call_id,
                name,
                arguments,
                ..
            } => {
                let mut m = Message::text("assistant", "");
                m.tool_calls = vec![ToolCall {
                    kind: "function".into(),
                    function: FunctionCall {
                        name: name.clone(),
                        arguments: serde_json::from_str(arguments).unwrap_or_else(|_| json!({})),
                    },
                    id: Some(call_id.clone()),
                }];
                m
            }
        }
    }
}

/// An `output_text` content part.
pub(crate) fn text_part(text: &str) -> Json {
    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
}

/// `usage` of a response.
pub(crate) fn usage(prompt: usize, output: usize, cached: usize) -> Json {
    json!({"input_tokens": prompt, "input_tokens_details": {"cached_tokens": cached},
           "output_tokens": output, "output_tokens_details": {"reasoning_tokens": 0},
           "total_tokens": prompt + output})
}

/// How a response stands.
pub(crate) enum Status {
    /// Still generating (the first stream events).
    InProgress,
    /// Done; `complete` false when it ended at the length limit.
    Done { complete: bool },
}

/// The response object with `output` and `usage` (both empty while in progress).
pub(crate) fn response(
    (id, created, model): (&str, u64, &str),
    meta: &Meta,
    status: Status,
    output: Vec<Json>,
    usage: Json,
) -> Json {
    let (status, incomplete) = match status {
        Status::InProgress => ("in_progress", Json::Null),
        Status::Done { complete: true } => ("completed", Json::Null),
        Status::Done { complete: false } => ("incomplete", json!({"reason": "max_output_tokens"})),
    };
    let mut body = json!({"id": id, "object": "response", "created_at": created, "status": status,
        "model": model, "output": output, "usage": usage, "error": null, "incomplete_details": incomplete,
        "reasoning": {"effort": null, "summary": null}, "user": null});
    if let Json::Object(map) = &mut body {
        map.extend(meta.echo.clone());
    }
    body
}

/// An output item's status once the answer ended.
pub(crate) fn item_status(complete: bool) -> &'static str {
    match complete {
        true => "completed",
        false => "incomplete",
    }
}

/// The whole answer of a finished generation, and the item it ended with.
pub(crate) fn finished(ids: (&str, u64, &str), meta: &Meta, g: &Generation) -> (Json, Output) {
    let output = Output::of(&g.text, g.finish_reason, &meta.tools);
    let complete = g.finish_reason != FinishReason::Length;
    let body = response(
        ids,
        meta,
        Status::Done { complete },
        vec![output.json(item_status(complete))],
        usage(g.prompt_tokens, g.completion_tokens, g.cached_tokens),
    );
    (body, output)
}
