//! The request bodies of `POST /v1/chat/completions` and `POST /v1/completions` as serde
//! types, and their one conversion each into the validated request (`params`).
//! Fields this server does not know are ignored, as OpenAI's clients expect.

use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::Value as Json;

use crate::chat::{check_message, parse_tools, Message, ToolCall};
use crate::constraint::Constraint;
use crate::sampler::MAX_TOP_LOGPROBS;
use crate::server::body::{generation_body, Int};
use crate::server::error::ApiError;
use crate::server::params::{check_tool_choice, ChatParams, CommonParams, CompletionParams, Prompt, ToolChoice};

/// One message of a chat request (a `null` field counts as absent).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ChatMessage {
    role: String,
    content: Option<Json>,
    tool_calls: Option<Vec<ToolCall>>,
    tool_call_id: Option<String>,
}

impl From<ChatMessage> for Message {
    fn from(m: ChatMessage) -> Self {
        Message {
            role: m.role,
            content: m.content.unwrap_or(Json::Null),
            tool_calls: m.tool_calls.unwrap_or_default(),
            tool_call_id: m.tool_call_id,
        }
    }
}

/// The grammar fields both endpoints read: OpenAI's `response_format`, vLLM's `guided_*`.
#[derive(Debug, Clone, Default)]
struct GrammarFields {
    response_format: Option<Json>,
    guided_json: Option<Json>,
    guided_regex: Option<String>,
    guided_grammar: Option<String>,
}

generation_body! {
    /// A `POST /v1/chat/completions` body.
    pub(crate) struct ChatRequest {
        messages: Option<Vec<ChatMessage>>,
        tools: Option<Vec<Json>>,
        tool_choice: Option<Json>,
        response_format: Option<Json>,
        guided_json: Option<Json>,
        guided_regex: Option<String>,
        guided_grammar: Option<String>,
        logprobs: Option<bool>,
        top_logprobs: Option<Int>,
        max_completion_tokens: Option<Int>,
    }
}

generation_body! {
    /// A `POST /v1/completions` body.
    pub(crate) struct CompletionRequest {
        prompt: Option<Json>,
        echo: Option<bool>,
        suffix: Option<IgnoredAny>,
        logprobs: Option<Json>,
        best_of: Option<Int>,
        response_format: Option<Json>,
        guided_json: Option<Json>,
        guided_regex: Option<String>,
        guided_grammar: Option<String>,
    }
}

impl ChatRequest {
    /// Validates the request.
    pub(crate) fn into_params(mut self) -> Result<ChatParams, ApiError> {
        let messages = match self.messages.take() {
            None => return Err(ApiError::invalid("messages", "Missing required parameter: `messages`")),
            Some(m) if m.is_empty() => return Err(ApiError::invalid("messages", "`messages` must not be empty")),
            Some(m) => m,
        };
        let tool_choice = tool_choice(self.tool_choice.take())?;
        let messages = messages
            .into_iter()
            .enumerate()
            .map(|(i, m)| check_message(i, m.into()))
            .collect::<Result<Vec<_>, _>>()?;
        let tools = match self.tools.take() {
            Some(tools) => Some(parse_tools(Json::Array(tools))?).filter(|t| !t.is_empty()),
            None => None,
        };
        check_tool_choice(tools.as_deref(), &tool_choice)?;
        if let (Some(tools), ToolChoice::Function(name)) = (&tools, &tool_choice) {
            if !tools.iter().any(|t| t["function"]["name"].as_str() == Some(name)) {
                return Err(ApiError::invalid("tool_choice", format!("no tool is named `{name}`")));
            }
        }
        let constraint = GrammarFields {
            response_format: self.response_format.take(),
            guided_json: self.guided_json.take(),
            guided_regex: self.guided_regex.take(),
            guided_grammar: self.guided_grammar.take(),
        }
        .constraint()?;
        let logprobs = self.chat_logprobs()?;
        let max_completion_tokens = self.max_completion_tokens.take();
        let mut common = CommonParams::new(self.sampling_fields(), max_completion_tokens)?;
        common.logprobs = logprobs;
        Ok(ChatParams {
            common,
            messages,
            tools,
            tool_choice,
            constraint,
        })
    }

    /// `logprobs` and `top_logprobs`: how many alternatives per token, when asked.
    fn chat_logprobs(&self) -> Result<Option<usize>, ApiError> {
        let wanted = self.logprobs.unwrap_or(false);
        let top = self.top_logprobs.map(|k| k.count("top_logprobs", 0)).transpose()?;
        if top.is_some_and(|k| k > MAX_TOP_LOGPROBS) {
            return Err(ApiError::invalid(
                "top_logprobs",
                format!("`top_logprobs` must be from 0 to {MAX_TOP_LOGPROBS}"),
            ));
        }
        if top.is_some() && !wanted {
            return Err(ApiError::invalid(
                "top_logprobs",
                "`top_logprobs` needs `logprobs: true`",
            ));
        }
        Ok(wanted.then_some(top.unwrap_or(0)))
    }
}

/// OpenAI's `tool_choice`: `auto`, `none`, `required` or `{"function": {"name": ...}}`.
fn tool_choice(choice: Option<Json>) -> Result<ToolChoice, ApiError> {
    match choice {
        None => Ok(ToolChoice::Auto),
        Some(Json::String(s)) => match s.as_str() {
            "auto" => Ok(ToolChoice::Auto),
            "none" => Ok(ToolChoice::None),
            "required" => Ok(ToolChoice::Required),
            other => Err(ApiError::invalid(
                "tool_choice",
                format!("`tool_choice` must be none, auto, required or a function, got `{other}`"),
            )),
        },
        Some(Json::Object(o)) => match o.get("function").and_then(|f| f.get("name")).and_then(Json::as_str) {
            Some(name) => Ok(ToolChoice::Function(name.to_string())),
            None => Err(ApiError::invalid(
                "tool_choice",
                "`tool_choice.function.name` is missing",
            )),
        },
        Some(_) => Err(ApiError::invalid(
            "tool_choice",
            "Invalid type for `tool_choice`: expected a string or an object",
        )),
    }
}

impl GrammarFields {
    /// `response_format` (OpenAI) or vLLM's `guided_json` / `guided_regex` /
    /// `guided_grammar` as a grammar constraint.
    fn constraint(self) -> Result<Option<Constraint>, ApiError> {
        let bad = |m: &str| ApiError::invalid("response_format", m.to_string());
        if let Some(format) = self.response_format {
            return match format.get("type").and_then(Json::as_str) {
                Some("text") => Ok(None),
                Some("json_object") => Ok(Some(Constraint::JsonObject)),
                Some("json_schema") => match format.get("json_schema").and_then(|s| s.get("schema")) {
                    Some(schema @ (Json::Object(_) | Json::Bool(_))) => {
                        Ok(Some(Constraint::JsonSchema(schema.clone())))
                    }
                    _ => Err(bad("`response_format.json_schema.schema` must be a JSON Schema object")),
                },
                _ => Err(bad("`response_format.type` must be text, json_object or json_schema")),
            };
        }
        if let Some(schema) = self.guided_json {
            let schema = match schema {
                Json::String(s) => {
                    serde_json::from_str(&s).map_err(|e| ApiError::invalid("guided_json", format!("not JSON: {e}")))?
                }
                other => other,
            };
            return Ok(Some(Constraint::JsonSchema(schema)));
        }
        if let Some(rx) = self.guided_regex {
            return Ok(Some(Constraint::Regex(rx)));
        }
        Ok(self.guided_grammar.map(Constraint::Lark))
    }
}

impl CompletionRequest {
    /// Validates the request.
    pub(crate) fn into_params(mut self) -> Result<CompletionParams, ApiError> {
        let prompt = completion_prompt(self.prompt.take())?;
        if self.suffix.is_some() {
            return Err(ApiError::invalid("suffix", "`suffix` is not supported by this server"));
        }
        let logprobs = match self.logprobs.take() {
            None | Some(Json::Bool(false)) => None,
            Some(Json::Number(n)) => match n.as_u64() {
                Some(k) if k as usize <= MAX_TOP_LOGPROBS => Some(k as usize),
                _ => {
                    return Err(ApiError::invalid(
                        "logprobs",
                        format!("`logprobs` must be an integer from 0 to {MAX_TOP_LOGPROBS}"),
                    ))
                }
            },
            Some(_) => {
                return Err(ApiError::invalid(
                    "logprobs",
                    "Invalid type for `logprobs`: expected an integer",
                ))
            }
        };
        let constraint = GrammarFields {
            response_format: self.response_format.take(),
            guided_json: self.guided_json.take(),
            guided_regex: self.guided_regex.take(),
            guided_grammar: self.guided_grammar.take(),
        }
        .constraint()?;
        let best_of = self.best_of.map(|b| b.count("best_of", 1)).transpose()?;
        let mut common = CommonParams::new(self.sampling_fields(), None)?;
        common.logprobs = logprobs;
        if best_of.is_some_and(|b| b != common.n) {
            return Err(ApiError::invalid(
                "best_of",
                "`best_of` other than `n` is not supported",
            ));
        }
        // OpenAI's completions default.
        common.max_tokens.get_or_insert(16);
        Ok(CompletionParams {
            common,
            prompt,
            echo: self.echo.unwrap_or(false),
            constraint,
        })
    }
}

/// `prompt`: a string, token ids, or an array holding one of those.
fn completion_prompt(prompt: Option<Json>) -> Result<Prompt, ApiError> {
    let wrong = || {
        ApiError::invalid(
            "prompt",
            "Invalid type for `prompt`: expected a string, an array of token ids, or an array with one of those",
        )
    };
    let token_list = |items: &[Json]| -> Option<Vec<u32>> {
        items
            .iter()
            .map(|v| v.as_u64().and_then(|id| u32::try_from(id).ok()))
            .collect()
    };
    match prompt {
        None => Err(ApiError::invalid("prompt", "Missing required parameter: `prompt`")),
        Some(Json::String(s)) => Ok(Prompt::Text(s)),
        Some(Json::Array(items)) => match items.as_slice() {
            [Json::String(s)] => Ok(Prompt::Text(s.clone())),
            [Json::Array(ids)] => Ok(Prompt::Tokens(token_list(ids).ok_or_else(wrong)?)),
            [] => Err(ApiError::invalid("prompt", "`prompt` must not be empty")),
            ids if ids.iter().all(Json::is_number) => Ok(Prompt::Tokens(token_list(ids).ok_or_else(wrong)?)),
            _ => Err(ApiError::invalid(
                "prompt",
                "only one prompt per request is supported (use `n` for several answers)",
            )),
        },
        Some(_) => Err(wrong()),
    }
}
