//! The bodies of `POST /v1/messages` and `POST /v1/messages/count_tokens` as serde types,
//! and their one conversion into the validated chat request: system text, turns (text,
//! `tool_use`, `tool_result` blocks), tools and `tool_choice` become the engine's messages
//! and tools directly. The sampling fields keep OpenAI's names (`stop_sequences` is
//! Anthropic's `stop`); `output_config.format` is a JSON Schema constraint; `thinking` and
//! `redacted_thinking` blocks of earlier turns are left out of the prompt (Llama does not
//! think). A field this server does not know is a 400 naming it.

use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::{json, Map, Value as Json};

use crate::chat::{check_message, FunctionCall, Message, Tool, ToolCall};
use crate::constraint::Constraint;
use crate::server::body::{generation_body, Stop};
use crate::server::error::ApiError;
use crate::server::openai::grammar::schema as openai_schema;
use crate::server::params::{check_tool_choice, ChatParams, CommonParams, ToolChoice};

/// `system`: a string or text blocks.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged, expecting = "expected a string or an array of text blocks")]
enum System {
    Text(String),
    Blocks(Vec<TextBlock>),
}

/// A `{"type": "text", "text": ...}` block.
#[derive(Debug, Clone, Deserialize)]
struct TextBlock {
    #[serde(rename = "type")]
    kind: Option<String>,
    text: Option<String>,
}

/// One turn of the conversation.
#[derive(Debug, Clone, Deserialize)]
struct Turn {
    role: Option<String>,
    content: Option<Content>,
}

/// A turn's content: a string or content blocks.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged, expecting = "expected a string or an array of blocks")]
enum Content {
    Text(String),
    Blocks(Vec<Block>),
}

/// A content block: `text`, `tool_use` (assistant) or `tool_result` (user). The fields of
/// other block types are known so that their refusal names the type; any other is refused.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Block {
    #[serde(rename = "type")]
    kind: Option<String>,
    text: Option<String>,
    id: Option<String>,
    name: Option<String>,
    input: Option<Json>,
    tool_use_id: Option<String>,
    content: Option<ResultContent>,
    /// A failed tool's result: shown to the model as an error.
    is_error: Option<bool>,
    /// Prompt caching is automatic (every prefix is cached).
    #[allow(dead_code)]
    cache_control: Option<IgnoredAny>,
    #[allow(dead_code)]
    citations: Option<IgnoredAny>,
    #[allow(dead_code)]
    signature: Option<IgnoredAny>,
    #[allow(dead_code)]
    thinking: Option<IgnoredAny>,
    #[allow(dead_code)]
    data: Option<IgnoredAny>,
    #[allow(dead_code)]
    source: Option<IgnoredAny>,
    #[allow(dead_code)]
    title: Option<IgnoredAny>,
    #[allow(dead_code)]
    context: Option<IgnoredAny>,
}

/// A `tool_result`'s content: a string or text blocks (anything else reads as empty).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum ResultContent {
    Text(String),
    Blocks(Vec<TextBlock>),
    Other(IgnoredAny),
}

/// A tool: name, description and the JSON Schema of its input (a client tool: Anthropic's
/// server tools, `web_search_...`, `bash_...`, are not served).
#[derive(Debug, Clone, Deserialize)]
struct ToolDef {
    #[serde(rename = "type")]
    kind: Option<String>,
    name: Option<String>,
    description: Option<String>,
    input_schema: Option<Map<String, Json>>,
}

/// `tool_choice`: `{"type": "auto" | "any" | "none" | "tool", "name": ...}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ToolChoiceDef {
    #[serde(rename = "type")]
    kind: Option<String>,
    name: Option<String>,
    /// At most one tool call is made per answer, which either value allows.
    #[allow(dead_code)]
    disable_parallel_tool_use: Option<bool>,
}

/// `output_config`: the answer's format.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct OutputConfig {
    format: Option<OutputFormat>,
    /// Thinking effort: only `null` (Llama does not think).
    effort: Option<String>,
}

/// `output_config.format`: `{"type": "json_schema", "schema": {...}}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum OutputFormat {
    JsonSchema { schema: Json },
}

/// `thinking`: only `{"type": "disabled"}` (Llama does not think).
#[derive(Debug, Clone, Deserialize)]
struct ThinkingConfig {
    #[serde(rename = "type")]
    kind: String,
}

generation_body! {
    /// A `POST /v1/messages` (or `count_tokens`) body.
    pub(crate) struct MessagesRequest {
        system: Option<System>,
        messages: Option<Vec<Turn>>,
        tools: Option<Vec<ToolDef>>,
        tool_choice: Option<ToolChoiceDef>,
        stop_sequences: Option<Stop>,
        output_config: Option<OutputConfig>,
        thinking: Option<ThinkingConfig>,
        /// Prompt caching is automatic (every prefix is cached).
        #[allow(dead_code)]
        cache_control: Option<Json>,
        /// Labels for the caller's own records (no effect on the answer).
        #[allow(dead_code)]
        metadata: Option<Map<String, Json>>,
        #[allow(dead_code)]
        service_tier: Option<String>,
        #[allow(dead_code)]
        inference_geo: Option<String>,
        #[allow(dead_code)]
        user_profile_id: Option<String>,
    }
}

impl MessagesRequest {
    /// Validates the request; `max_tokens` is required for a message, not for counting.
    pub(crate) fn into_params(mut self, need_max_tokens: bool) -> Result<ChatParams, ApiError> {
        let mut messages = Vec::new();
        match self.system.take() {
            None => {}
            Some(System::Text(s)) => messages.push(Message::text("system", s)),
            Some(System::Blocks(blocks)) => messages.push(Message::text("system", block_text("system", &blocks)?)),
        }
        let turns = match self.messages.take() {
            Some(turns) if !turns.is_empty() => turns,
            Some(_) => return Err(ApiError::invalid("messages", "`messages` must not be empty")),
            None => return Err(ApiError::invalid("messages", "messages: Field required")),
        };
        let last = turns.len() - 1;
        // Which request turn each message came from, so that errors name it.
        let mut origin = vec![0; messages.len()];
        for (i, turn) in turns.into_iter().enumerate() {
            // An answer prefilled by a final assistant turn would not be continued (the
            // template closes the turn and opens another): refused rather than ignored.
            if need_max_tokens && i == last && turn.role.as_deref() == Some("assistant") {
                return Err(ApiError::invalid(
                    format!("messages[{i}]"),
                    "a final assistant message (a prefilled answer) is not continued here: end with a user message",
                ));
            }
            convert_turn(i, turn, &mut messages)?;
            origin.resize(messages.len(), i);
        }
        let tools = match self.tools.take() {
            None => None,
            Some(tools) => Some(
                tools
                    .into_iter()
                    .enumerate()
                    .map(convert_tool)
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        let tool_choice = convert_tool_choice(self.tool_choice.take())?;
        let messages = messages
            .into_iter()
            .zip(origin)
            .map(|(m, i)| check_message(i, m))
            .collect::<Result<Vec<_>, _>>()?;
        let tools = tools.filter(|t| !t.is_empty());
        check_tool_choice(tools.as_deref(), &tool_choice)?;
        let mut fields = self.sampling_fields();
        if let Some(stop) = self.stop_sequences.take() {
            if fields.stop.is_some() {
                return Err(ApiError::invalid(
                    "stop",
                    "send the stop strings once, as `stop_sequences`",
                ));
            }
            fields.stop = Some(stop);
        }
        let constraint = self.constraint()?;
        let common = CommonParams::new(fields, None)?;
        if need_max_tokens && common.max_tokens.is_none() {
            return Err(ApiError::invalid("max_tokens", "max_tokens: Field required"));
        }
        if common.n != 1 {
            return Err(ApiError::invalid("n", "the Messages API answers one message"));
        }
        Ok(ChatParams {
            common,
            messages,
            tools,
            tool_choice,
            constraint,
        })
    }

    /// `output_config.format` as a constraint; thinking asked for is a 400.
    fn constraint(&mut self) -> Result<Option<(Constraint, &'static str)>, ApiError> {
        if let Some(t) = self.thinking.take().filter(|t| t.kind != "disabled") {
            return Err(ApiError::invalid(
                "thinking",
                format!(
                    "thinking `{}` is not available: this server's models do not think (use `disabled`)",
                    t.kind
                ),
            ));
        }
        let Some(config) = self.output_config.take() else {
            return Ok(None);
        };
        if let Some(effort) = config.effort {
            return Err(ApiError::invalid(
                "output_config.effort",
                format!("effort `{effort}` is not available: this server's models do not think"),
            ));
        }
        match config.format {
            Some(OutputFormat::JsonSchema { schema }) => Ok(Some((
                openai_schema("output_config.format.schema", schema)?,
                "output_config",
            ))),
            None => Ok(None),
        }
    }
}

/// The text of text blocks (`name` is the parameter reported).
fn block_text(name: &str, blocks: &[TextBlock]) -> Result<String, ApiError> {
    let mut text = String::new();
    for block in blocks {
        match (block.kind.as_deref(), &block.text) {
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

/// One turn as the engine's messages: a user turn's tool results become `tool` messages;
/// an assistant turn's `tool_use` blocks become its tool calls.
fn convert_turn(i: usize, turn: Turn, out: &mut Vec<Message>) -> Result<(), ApiError> {
    let name = format!("messages[{i}]");
    let role = match turn.role.as_deref() {
        Some(r @ ("user" | "assistant")) => r.to_string(),
        _ => {
            return Err(ApiError::invalid(
                "messages",
                format!("{name}.role must be `user` or `assistant`"),
            ))
        }
    };
    let blocks = match turn.content {
        Some(Content::Text(s)) => {
            out.push(Message::text(&role, s));
            return Ok(());
        }
        Some(Content::Blocks(blocks)) => blocks,
        None => {
            return Err(ApiError::invalid(
                "messages",
                format!("{name}.content must be a string or an array of blocks"),
            ))
        }
    };
    let (mut text, mut calls) = (String::new(), Vec::new());
    for block in blocks {
        match block.kind.as_deref() {
            Some("text") => text.push_str(block.text.as_deref().unwrap_or_default()),
            // Earlier reasoning is not part of a Llama prompt.
            Some("thinking" | "redacted_thinking") if role == "assistant" => {}
            Some("tool_use") if role == "assistant" => calls.push(tool_call(&name, block)?),
            Some("tool_result") if role == "user" => out.push(tool_result(block)?),
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
        let mut message = Message::text(&role, text);
        message.tool_calls = calls;
        out.push(message);
    }
    Ok(())
}

/// A user's `tool_result` block as a `tool` message answering its call.
fn tool_result(block: Block) -> Result<Message, ApiError> {
    let content = match &block.content {
        Some(ResultContent::Text(s)) => s.clone(),
        Some(ResultContent::Blocks(parts)) => block_text("messages", parts)?,
        Some(ResultContent::Other(_)) | None => String::new(),
    };
    let content = match block.is_error {
        Some(true) => format!("Error: {content}"),
        _ => content,
    };
    let mut message = Message::text("tool", content);
    message.tool_call_id = block.tool_use_id;
    Ok(message)
}

/// A `tool_use` block as the assistant's tool call.
fn tool_call(turn: &str, block: Block) -> Result<ToolCall, ApiError> {
    let Some(name) = block.name else {
        return Err(ApiError::invalid(
            "messages",
            format!("{turn}: a `tool_use` block needs a `name`"),
        ));
    };
    Ok(ToolCall {
        kind: "function".into(),
        function: FunctionCall {
            name,
            arguments: block.input.unwrap_or_else(|| json!({})),
        },
        id: block.id,
    })
}

/// A tool in the shape the chat template reads (OpenAI's).
fn convert_tool((i, tool): (usize, ToolDef)) -> Result<Tool, ApiError> {
    if let Some(kind) = tool.kind.as_deref().filter(|k| *k != "custom") {
        return Err(ApiError::invalid(
            format!("tools[{i}].type"),
            format!("server tools (`{kind}`) are not served here: give client tools (`custom`, or no `type`)"),
        ));
    }
    let Some(name) = tool.name else {
        return Err(ApiError::invalid("tools", format!("tools[{i}].name is missing")));
    };
    let mut function = Map::new();
    function.insert("name".into(), json!(name));
    if let Some(d) = tool.description {
        function.insert("description".into(), Json::String(d));
    }
    let schema = tool
        .input_schema
        .map_or_else(|| json!({"type": "object"}), Json::Object);
    function.insert("parameters".into(), schema);
    Ok(json!({"type": "function", "function": function}))
}

fn convert_tool_choice(choice: Option<ToolChoiceDef>) -> Result<ToolChoice, ApiError> {
    let Some(choice) = choice else {
        return Ok(ToolChoice::Auto);
    };
    match (choice.kind.as_deref(), choice.name) {
        (Some("auto"), _) => Ok(ToolChoice::Auto),
        (Some("none"), _) => Ok(ToolChoice::None),
        (Some("any"), _) => Ok(ToolChoice::Required),
        (Some("tool"), Some(name)) => Ok(ToolChoice::Function(name)),
        (Some("tool"), None) => Err(ApiError::invalid("tool_choice", "`tool_choice.name` is missing")),
        _ => Err(ApiError::invalid(
            "tool_choice",
            "`tool_choice.type` must be auto, any, tool or none",
        )),
    }
}
