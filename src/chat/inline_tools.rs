//! Tools for chat templates that do not render them (SmolLM2's, many base-model and older
//! templates): the tools go into the system message with the JSON shape of a call, earlier
//! calls become the assistant's JSON text and tool results user turns, as llama-server's
//! generic tool format does. Calls are then parsed back from the answer as for Llama 3.x
//! templates (`{"name": ..., "parameters": {...}}`).

use serde_json::{json, Value as Json};

use super::{Message, Tool};

/// The instructions put before the tool list.
const PREAMBLE: &str = "You can call the following functions. To call one, answer with only a JSON object \
of the form {\"name\": <function name>, \"parameters\": <arguments object>} and nothing else. \
Otherwise, answer the user directly.";

/// The conversation with `tools` written into its system message (a first one is added when
/// it has none), assistant tool calls written as their JSON, and tool results as user turns.
pub fn inline_tools(messages: &[Message], tools: &[Tool]) -> Vec<Message> {
    let listing: Vec<Json> = tools
        .iter()
        .map(|t| t.get("function").cloned().unwrap_or_else(|| t.clone()))
        .collect();
    let listing = serde_json::to_string_pretty(&listing).unwrap_or_default();
    let described = format!("{PREAMBLE}\n\nFunctions:\n{listing}");
    let mut out = Vec::with_capacity(messages.len() + 1);
    match messages.first() {
        Some(first) if first.role == "system" => {
            let text = first.content.as_str().unwrap_or_default();
            let joined = match text.trim().is_empty() {
                true => described,
                false => format!("{text}\n\n{described}"),
            };
            out.push(Message::text("system", joined));
        }
        _ => out.push(Message::text("system", described)),
    }
    let rest = match messages.first() {
        Some(first) if first.role == "system" => &messages[1..],
        _ => messages,
    };
    for m in rest {
        out.push(match m.role.as_str() {
            "assistant" if !m.tool_calls.is_empty() => {
                let calls: Vec<String> = m
                    .tool_calls
                    .iter()
                    .map(|c| json!({"name": c.function.name, "parameters": c.function.arguments}).to_string())
                    .collect();
                let text = m.content.as_str().unwrap_or_default();
                let joined = [text.trim(), &calls.join("\n")]
                    .into_iter()
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
                    .join("\n");
                Message::text("assistant", joined)
            }
            "tool" | "ipython" => {
                let content = match &m.content {
                    Json::String(s) => Json::String(s.clone()),
                    other => other.clone(),
                };
                let mut result = json!({"tool_response": content});
                if let Some(id) = &m.tool_call_id {
                    result["id"] = json!(id);
                }
                Message::text("user", result.to_string())
            }
            _ => m.clone(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::{FunctionCall, ToolCall};

    #[test]
    fn tools_go_into_the_system_message_and_calls_into_text() {
        let tool = json!({"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}});
        let mut call = Message::text("assistant", "");
        call.tool_calls = vec![ToolCall {
            kind: "function".into(),
            function: FunctionCall {
                name: "get_time".into(),
                arguments: json!({"zone": "UTC"}),
            },
            id: Some("call_1".into()),
        }];
        let mut result = Message::text("tool", "12:00");
        result.tool_call_id = Some("call_1".into());
        let messages = [
            Message::text("system", "Be brief."),
            Message::text("user", "Time?"),
            call,
            result,
        ];
        let out = inline_tools(&messages, &[tool]);
        assert_eq!(out.len(), 4);
        let system = out[0].content.as_str().unwrap();
        assert!(system.starts_with("Be brief.\n\nYou can call") && system.contains("\"get_time\""));
        assert_eq!(
            out[2].content,
            json!(r#"{"name":"get_time","parameters":{"zone":"UTC"}}"#)
        );
        assert!(out[2].tool_calls.is_empty());
        assert_eq!(
            (out[3].role.as_str(), out[3].content.as_str()),
            ("user", Some(r#"{"tool_response":"12:00","id":"call_1"}"#))
        );
        let bare = inline_tools(&[Message::text("user", "hi")], &[json!({"function": {"name": "f"}})]);
        assert_eq!(bare[0].role, "system");
        assert_eq!(bare[1], Message::text("user", "hi"));
    }
}
