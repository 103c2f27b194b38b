//! Chat: OpenAI-shaped messages and tools, validated once at the boundary, rendered with
//! the model's own Jinja chat template, and multi-turn conversations that reuse the KV cache.

pub mod conversation;
mod encode;
mod inline_tools;
pub mod template;

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::error::{Error, Result};

pub use conversation::{Conversation, Turn};
pub use encode::encode_conversation;
pub use inline_tools::inline_tools;
pub use template::{ChatTemplate, RenderOptions};

/// The roles a Llama 3.x chat template understands.
pub const ROLES: [&str; 5] = ["system", "user", "assistant", "tool", "ipython"];

/// One message, in the shape the template sees (OpenAI's field names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// system, user, assistant, tool or ipython.
    pub role: String,
    /// Text for most roles; a tool result may be any JSON value.
    #[serde(default)]
    pub content: Json,
    /// The assistant's tool calls (absent from the template's view when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// For tool results: the id of the call answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

/// A tool call made by the assistant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// Always "function".
    #[serde(rename = "type", default = "function_kind")]
    pub kind: String,
    /// Which function, with which arguments.
    pub function: FunctionCall,
    /// The call's id, when the client gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// The function and arguments of a [`ToolCall`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionCall {
    /// Function name.
    pub name: String,
    /// Arguments as a JSON object (a JSON string in requests is parsed at the boundary).
    pub arguments: Json,
}

fn function_kind() -> String {
    "function".into()
}

/// A tool offered to the model: an OpenAI tool schema, passed to the template as is.
pub type Tool = Json;

impl Message {
    /// A plain text message.
    pub fn text(role: &str, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: Json::String(content.into()),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }
}

/// A conversation as read from a `--messages` file or a request body.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChatRequest {
    /// The messages, validated.
    pub messages: Vec<Message>,
    /// Tools offered, if any.
    pub tools: Option<Vec<Tool>>,
}

fn invalid(name: &'static str, reason: String) -> Error {
    Error::InvalidParameter { name, reason }
}

/// Parses a conversation: a JSON array of messages, or an object with `messages` and
/// optional `tools` (OpenAI's request shape).
pub fn parse_request(text: &str) -> Result<ChatRequest> {
    let json: Json = serde_json::from_str(text).map_err(|e| invalid("messages", format!("not valid JSON: {e}")))?;
    parse_request_value(json)
}

/// Like [`parse_request`] for an already parsed JSON value (e.g. a request body's fields).
pub fn parse_request_value(json: Json) -> Result<ChatRequest> {
    let (messages, tools) = match json {
        Json::Array(list) => (list, None),
        Json::Object(mut obj) => match obj.remove("messages") {
            Some(Json::Array(list)) => {
                let tools = obj.remove("tools");
                // Sampling and other request fields are not read from a conversation.
                if let Some(key) = obj.keys().next() {
                    let reason = format!("`{key}` is not read from a conversation (only `messages` and `tools`)");
                    return Err(invalid("messages", reason));
                }
                (list, tools)
            }
            _ => return Err(invalid("messages", "the object has no `messages` array".into())),
        },
        _ => {
            return Err(invalid(
                "messages",
                "expected an array of messages or an object with `messages`".into(),
            ))
        }
    };
    let empty = messages.is_empty();
    let messages = messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| parse_message(i, m))
        .collect::<Result<_>>()?;
    let tools = match tools {
        None | Some(Json::Null) => None,
        Some(t) => Some(parse_tools(t)?),
    };
    if empty {
        return Err(invalid("messages", "the conversation has no messages".into()));
    }
    Ok(ChatRequest { messages, tools })
}

/// Validates a list of OpenAI tool schemas (`{"type": "function", "function": {"name": ...}}`),
/// given as an array or as an object with `tools`.
pub fn parse_tools(json: Json) -> Result<Vec<Tool>> {
    let list = match json {
        Json::Array(list) => list,
        Json::Object(mut o) if o.contains_key("tools") => return parse_tools(o.remove("tools").unwrap_or_default()),
        _ => return Err(invalid("tools", "expected an array of tool schemas".into())),
    };
    check_tool_names(&list)?;
    Ok(list)
}

/// Checks that every tool has a function name and that no name is given twice (an
/// answer's call names its function: two of one name could not be told apart).
pub fn check_tool_names(tools: &[Tool]) -> Result<()> {
    let mut names = std::collections::HashSet::new();
    for (i, tool) in tools.iter().enumerate() {
        let name = tool.get("function").and_then(|f| f.get("name")).and_then(Json::as_str);
        match name {
            None => return Err(invalid("tools", format!("tools[{i}] has no function.name"))),
            Some("") => return Err(invalid("tools", format!("tools[{i}].function.name is empty"))),
            Some(n) if !names.insert(n) => {
                return Err(invalid("tools", format!("tools[{i}]: two tools are named `{n}`")))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

fn parse_message(i: usize, mut json: Json) -> Result<Message> {
    // Like transformers, a key whose value is null counts as absent.
    if let Json::Object(obj) = &mut json {
        obj.retain(|_, v| !v.is_null());
    }
    let m: Message = serde_json::from_value(json).map_err(|e| invalid("messages", format!("messages[{i}]: {e}")))?;
    check_message(i, m)
}

/// Checks message `i` of a conversation read by other means (a server's request types) as
/// [`parse_request`] does: a known role (`developer` read as `system`), text content parts
/// joined, no empty content where it is needed, tool call arguments given as a JSON string
/// parsed.
pub fn check_message(i: usize, mut m: Message) -> Result<Message> {
    // OpenAI's newer name for the system message (what current SDKs and agents send).
    if m.role == "developer" {
        m.role = "system".into();
    }
    if !ROLES.contains(&m.role.as_str()) {
        let reason = format!(
            "messages[{i}]: unknown role `{}` (expected one of {})",
            m.role,
            ROLES.join(", ")
        );
        return Err(invalid("messages", reason));
    }
    check_role_fields(i, &m)?;
    m.content = match std::mem::take(&mut m.content) {
        // OpenAI content parts: keep the text parts. A tool result may be any JSON value,
        // so there only an array of typed objects is read as content parts.
        Json::Array(parts) if !is_tool_role(&m.role) || are_content_parts(&parts) => {
            Json::String(text_parts(i, &parts)?)
        }
        other => other,
    };
    let empty = match &m.content {
        Json::Null => true,
        Json::String(s) => s.trim().is_empty(),
        _ => false,
    };
    if empty && m.role == "assistant" && !m.tool_calls.is_empty() {
        m.content = Json::String(String::new());
    } else if empty && m.role == "user" {
        return Err(invalid(
            "messages",
            format!("messages[{i}] ({}): content is empty", m.role),
        ));
    } else if m.content.is_null() {
        m.content = Json::String(String::new());
    }
    for (j, call) in m.tool_calls.iter_mut().enumerate() {
        if let Json::String(s) = &call.function.arguments {
            call.function.arguments = serde_json::from_str(s).map_err(|e| {
                invalid(
                    "messages",
                    format!("messages[{i}].tool_calls[{j}].function.arguments is not valid JSON: {e}"),
                )
            })?;
        }
    }
    Ok(m)
}

fn is_tool_role(role: &str) -> bool {
    role == "tool" || role == "ipython"
}

/// A non-empty array of OpenAI content parts (objects whose `type` is one of OpenAI's
/// content part types); other arrays of a tool result stay JSON.
fn are_content_parts(parts: &[Json]) -> bool {
    const KINDS: [&str; 5] = ["text", "image_url", "input_audio", "file", "refusal"];
    !parts.is_empty()
        && parts
            .iter()
            .all(|p| p.get("type").and_then(Json::as_str).is_some_and(|k| KINDS.contains(&k)))
}

/// Only assistant messages carry tool calls and only tool results a call's id (a template
/// renders a call on another role as the assistant's, or drops it), and every call is a
/// function's.
fn check_role_fields(i: usize, m: &Message) -> Result<()> {
    if !m.tool_calls.is_empty() && m.role != "assistant" {
        let reason = format!(
            "messages[{i}].tool_calls: only assistant messages carry tool calls, not {}",
            m.role
        );
        return Err(invalid("messages", reason));
    }
    if m.tool_call_id.is_some() && !is_tool_role(&m.role) {
        let reason = format!(
            "messages[{i}].tool_call_id: only tool messages answer a tool call, not {}",
            m.role
        );
        return Err(invalid("messages", reason));
    }
    match m.tool_calls.iter().position(|c| c.kind != "function") {
        Some(j) => Err(invalid(
            "messages",
            format!(
                "messages[{i}].tool_calls[{j}].type must be `function`, got `{}`",
                m.tool_calls[j].kind
            ),
        )),
        None => Ok(()),
    }
}

fn text_parts(i: usize, parts: &[Json]) -> Result<String> {
    let mut text = String::new();
    for (j, part) in parts.iter().enumerate() {
        // `cache_control` asks for what the prefix cache does anyway; other keys are refused.
        let extra = part
            .as_object()
            .filter(|o| o.get("type").and_then(Json::as_str) == Some("text"))
            .and_then(|o| {
                o.keys()
                    .find(|k| !matches!(k.as_str(), "type" | "text" | "cache_control"))
            });
        if let Some(key) = extra {
            return Err(invalid(
                "messages",
                format!("messages[{i}].content[{j}]: unknown field `{key}` in a text part"),
            ));
        }
        match (
            part.get("type").and_then(|t| t.as_str()),
            part.get("text").and_then(|t| t.as_str()),
        ) {
            (Some("text"), Some(t)) => text.push_str(t),
            _ => {
                return Err(invalid(
                    "messages",
                    format!("messages[{i}]: only text content parts are supported"),
                ))
            }
        }
    }
    Ok(text)
}

/// A tool call the model wrote as its answer: `{"name": ..., "parameters": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ParsedToolCall {
    /// Function name.
    pub name: String,
    /// Arguments object.
    pub arguments: Json,
}

/// The functions an answer may call: an answer is read as a tool call only when it calls
/// one of them (a made-up name stays text, as does any answer when the list is empty).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Callable(Vec<String>);

impl Callable {
    /// The functions of `tools` (OpenAI tool schemas, as [`parse_tools`] validated them).
    pub fn of(tools: &[Tool]) -> Self {
        let names = tools
            .iter()
            .filter_map(|t| t.get("function")?.get("name")?.as_str())
            .map(str::to_string)
            .collect();
        Self(names)
    }

    /// Whether any answer may be a call (some function is offered).
    pub fn any(&self) -> bool {
        !self.0.is_empty()
    }

    /// The call `answer` makes, when it is a Llama 3.x JSON tool call to an offered function.
    pub fn call_in(&self, answer: &str) -> Option<ParsedToolCall> {
        parse_tool_call(answer).filter(|call| self.0.contains(&call.name))
    }
}

/// Recognises a Llama 3.x JSON tool call in an answer (optionally after `<|python_tag|>`).
fn parse_tool_call(answer: &str) -> Option<ParsedToolCall> {
    let text = answer.trim().trim_start_matches("<|python_tag|>").trim();
    let json: Json = serde_json::from_str(text).ok()?;
    let name = json.get("name")?.as_str()?.to_string();
    let arguments = json.get("parameters").or_else(|| json.get("arguments"))?.clone();
    arguments.is_object().then_some(ParsedToolCall { name, arguments })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_shapes_and_string_arguments() {
        let r = parse_request(r#"[{"role": "user", "content": "hi"}]"#).unwrap();
        assert_eq!(r.messages, vec![Message::text("user", "hi")]);
        let r = parse_request(
            r#"{"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"role": "assistant", "content": null, "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{\"x\": 1}"}}]}],
            "tools": [{"type": "function", "function": {"name": "f"}}]}"#,
        )
        .unwrap();
        assert_eq!(r.messages[0].content, Json::String("ab".into()));
        assert_eq!(
            r.messages[1].tool_calls[0].function.arguments,
            serde_json::json!({"x": 1})
        );
        assert_eq!(r.tools.unwrap().len(), 1);
    }

    #[test]
    fn tool_results_join_text_parts_and_keep_other_json() {
        let r = parse_request(
            r#"[{"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "4"}, {"type": "text", "text": "2"}]},
            {"role": "tool", "content": [1, 2]}, {"role": "ipython", "content": {"x": 1}},
            {"role": "tool", "content": [{"type": "dir", "name": "src"}]}]"#,
        )
        .unwrap();
        assert_eq!(r.messages[0].content, Json::String("42".into()));
        assert_eq!(r.messages[1].content, serde_json::json!([1, 2]));
        assert_eq!(r.messages[2].content, serde_json::json!({"x": 1}));
        assert_eq!(
            r.messages[3].content,
            serde_json::json!([{"type": "dir", "name": "src"}])
        );
    }

    #[test]
    fn bad_conversations_are_clear_errors() {
        for (text, needle) in [
            ("{not json", "not valid JSON"),
            (r#"[{"role": "wizard", "content": "x"}]"#, "unknown role `wizard`"),
            (
                r#"[{"role": "user", "content": "  "}]"#,
                "messages[0] (user): content is empty",
            ),
            (r#"[{"role": "user"}]"#, "messages[0]"),
            (
                r#"[{"role": "user", "content": "hi", "tool_calls": [{"function": {"name": "f", "arguments": {}}}]}]"#,
                "messages[0].tool_calls: only assistant messages",
            ),
            (
                r#"[{"role": "system", "content": "hi", "tool_call_id": "c1"}]"#,
                "messages[0].tool_call_id: only tool messages",
            ),
            (
                r#"[{"role": "assistant", "tool_calls": [{"type": "bogus", "function": {"name": "f", "arguments": {}}}]}]"#,
                "messages[0].tool_calls[0].type must be `function`",
            ),
            (
                r#"[{"role": "tool", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]"#,
                "only text content parts",
            ),
            (
                r#"[{"role": "user", "content": [{"type": "text", "text": "a", "bogus": 1}]}]"#,
                "messages[0].content[0]: unknown field `bogus`",
            ),
            (r#"{"messages": 3}"#, "no `messages` array"),
            ("[]", "the conversation has no messages"),
            (
                r#"{"messages": [{"role": "user", "content": "hi"}], "temperature": 0}"#,
                "`temperature` is not read from a conversation",
            ),
            (r#"{"messages": [], "tools": [{"type": "function"}]}"#, "tools[0]"),
        ] {
            let e = parse_request(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn recognises_tool_calls() {
        let call = parse_tool_call(r#" {"name": "get_weather", "parameters": {"city": "Paris"}} "#).unwrap();
        assert_eq!(call.name, "get_weather");
        assert!(parse_tool_call("The weather is nice.").is_none());
    }

    #[test]
    fn only_offered_functions_are_calls() {
        let tools =
            parse_tools(serde_json::json!([{"type": "function", "function": {"name": "get_weather"}}])).unwrap();
        let callable = Callable::of(&tools);
        assert!(callable.any());
        let call = callable.call_in(r#"{"name": "get_weather", "parameters": {"city": "Paris"}}"#);
        assert_eq!(call.map(|c| c.name).as_deref(), Some("get_weather"));
        assert_eq!(
            callable.call_in(r#"{"name": "delete_everything", "parameters": {}}"#),
            None
        );
        let none = Callable::default();
        assert!(!none.any());
        assert_eq!(none.call_in(r#"{"name": "get_weather", "parameters": {}}"#), None);
    }
}
