//! The OpenAI request bodies, read field by field so that a wrong type or value is a 400
//! naming the parameter, and the response objects (`chat.completion`, `text_completion`,
//! their stream chunks, `usage`, `tool_calls`).

use std::collections::BTreeMap;

use serde_json::{json, Map, Value as Json};

use super::error::ApiError;
use crate::chat::{parse_request_value, parse_tool_call, Message, Tool};
use crate::constraint::Constraint;
use crate::sampler::{SamplingParams, MAX_TOP_LOGPROBS};

/// Most choices one request may ask for.
pub const MAX_N: usize = 16;

/// A request body as a JSON object, its fields taken one by one.
pub struct Fields(Map<String, Json>);

/// 400 for a field of the wrong JSON type.
pub fn type_error(name: &str, expected: &str) -> ApiError {
    ApiError::invalid(name, format!("Invalid type for `{name}`: expected {expected}"))
}

impl Fields {
    /// Parses a body: it must be a JSON object.
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        match serde_json::from_slice::<Json>(body) {
            Ok(Json::Object(map)) => Ok(Self(map)),
            Ok(_) => Err(ApiError::bad_json("The request body must be a JSON object")),
            Err(e) => Err(ApiError::bad_json(format!("The request body is not valid JSON: {e}"))),
        }
    }

    /// Sets a field (a body read in another API's shape, renamed).
    pub fn insert(&mut self, name: &str, value: Json) {
        self.0.insert(name.to_string(), value);
    }

    /// Removes a field; `null` counts as absent.
    pub fn take(&mut self, name: &str) -> Option<Json> {
        self.0.remove(name).filter(|v| !v.is_null())
    }

    fn f32(&mut self, name: &str) -> Result<Option<f32>, ApiError> {
        match self.take(name) {
            None => Ok(None),
            Some(Json::Number(n)) => n
                .as_f64()
                .map(|v| Some(v as f32))
                .ok_or_else(|| type_error(name, "a number")),
            Some(_) => Err(type_error(name, "a number")),
        }
    }

    fn int(&mut self, name: &str) -> Result<Option<i64>, ApiError> {
        match self.take(name) {
            None => Ok(None),
            Some(Json::Number(n)) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
                (Some(v), _, _) => Ok(Some(v)),
                (_, Some(v), _) => Ok(Some(v as i64)),
                (_, _, Some(f)) if f.fract() == 0.0 && f.abs() < 9e15 => Ok(Some(f as i64)),
                _ => Err(type_error(name, "an integer")),
            },
            Some(_) => Err(type_error(name, "an integer")),
        }
    }

    fn count(&mut self, name: &str, min: i64) -> Result<Option<usize>, ApiError> {
        match self.int(name)? {
            None => Ok(None),
            Some(v) if v < min => Err(ApiError::invalid(name, format!("`{name}` must be >= {min}, got {v}"))),
            Some(v) => Ok(Some(usize::try_from(v).unwrap_or(usize::MAX))),
        }
    }

    fn bool(&mut self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.take(name) {
            None => Ok(None),
            Some(Json::Bool(b)) => Ok(Some(b)),
            Some(_) => Err(type_error(name, "a boolean")),
        }
    }

    fn string(&mut self, name: &str) -> Result<Option<String>, ApiError> {
        match self.take(name) {
            None => Ok(None),
            Some(Json::String(s)) => Ok(Some(s)),
            Some(_) => Err(type_error(name, "a string")),
        }
    }
}

/// What both endpoints share: model, sampling, length, stop, n, streaming.
#[derive(Debug, Clone, PartialEq)]
pub struct CommonParams {
    /// The `model` asked for.
    pub model: Option<String>,
    /// Sampling parameters (unset ones take the model's defaults).
    pub sampling: SamplingParams,
    /// `max_tokens` / `max_completion_tokens`.
    pub max_tokens: Option<usize>,
    /// Stop strings.
    pub stop: Vec<String>,
    /// Choices to generate.
    pub n: usize,
    /// Server-sent events.
    pub stream: bool,
    /// A last chunk with `usage`.
    pub include_usage: bool,
    /// Log-probabilities with this many alternatives per token.
    pub logprobs: Option<usize>,
}

impl CommonParams {
    /// Reads the shared fields.
    pub fn parse(f: &mut Fields, chat: bool) -> Result<Self, ApiError> {
        let model = f.string("model")?;
        let mut logit_bias = BTreeMap::new();
        match f.take("logit_bias") {
            None => {}
            Some(Json::Object(map)) => {
                for (key, value) in map {
                    let id: u32 = key.trim().parse().map_err(|_| {
                        ApiError::invalid("logit_bias", format!("`logit_bias` key `{key}` is not a token id"))
                    })?;
                    let bias = value.as_f64().ok_or_else(|| {
                        ApiError::invalid("logit_bias", format!("`logit_bias[{key}]` must be a number"))
                    })?;
                    logit_bias.insert(id, bias as f32);
                }
            }
            Some(_) => return Err(type_error("logit_bias", "an object mapping token ids to biases")),
        }
        // vLLM's "-1 disables top_k" is accepted too.
        let top_k = f.int("top_k")?.map(|k| if k == -1 { 0 } else { k });
        let seed = f.int("seed")?.map(|s| s as u64);
        let sampling = SamplingParams {
            temperature: f.f32("temperature")?,
            top_p: f.f32("top_p")?,
            top_k,
            min_p: f.f32("min_p")?,
            repetition_penalty: f.f32("repetition_penalty")?,
            frequency_penalty: f.f32("frequency_penalty")?,
            presence_penalty: f.f32("presence_penalty")?,
            seed,
            logit_bias,
        };
        let mut max_tokens = f.count("max_tokens", 1)?;
        if chat {
            if let Some(m) = f.count("max_completion_tokens", 1)? {
                max_tokens = Some(m);
            }
        }
        let stop = match f.take("stop") {
            None => Vec::new(),
            Some(Json::String(s)) => vec![s],
            Some(Json::Array(items)) => items
                .into_iter()
                .map(|v| match v {
                    Json::String(s) => Ok(s),
                    _ => Err(type_error("stop", "a string or an array of strings")),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(type_error("stop", "a string or an array of strings")),
        };
        let n = f.count("n", 1)?.unwrap_or(1);
        if n > MAX_N {
            return Err(ApiError::invalid("n", format!("`n` must be <= {MAX_N}, got {n}")));
        }
        let stream = f.bool("stream")?.unwrap_or(false);
        let include_usage = match f.take("stream_options") {
            None => false,
            Some(Json::Object(mut o)) => match o.remove("include_usage") {
                None | Some(Json::Null) => false,
                Some(Json::Bool(b)) => b,
                Some(_) => return Err(type_error("stream_options.include_usage", "a boolean")),
            },
            Some(_) => return Err(type_error("stream_options", "an object")),
        };
        Ok(Self {
            model,
            sampling,
            max_tokens,
            stop,
            n,
            stream,
            include_usage,
            logprobs: None,
        })
    }
}

/// `tool_choice`.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolChoice {
    /// The model may answer with a tool call (the default when tools are given).
    Auto,
    /// The answer is never read as a tool call.
    None,
    /// A tool call is wanted (the model is asked through the prompt; not enforced).
    Required,
    /// A named function is wanted (likewise).
    Function(String),
}

/// A validated `POST /v1/chat/completions` body.
#[derive(Debug, Clone)]
pub struct ChatParams {
    /// Shared fields.
    pub common: CommonParams,
    /// The conversation.
    pub messages: Vec<Message>,
    /// Tools offered.
    pub tools: Option<Vec<Tool>>,
    /// `tool_choice`.
    pub tool_choice: ToolChoice,
    /// `response_format` as a grammar.
    pub constraint: Option<Constraint>,
}

impl ChatParams {
    /// Reads and validates the body.
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let mut f = Fields::parse(body)?;
        let messages = match f.take("messages") {
            Some(m @ Json::Array(_)) => m,
            Some(_) => return Err(type_error("messages", "an array of messages")),
            None => return Err(ApiError::invalid("messages", "Missing required parameter: `messages`")),
        };
        if messages.as_array().is_some_and(|m| m.is_empty()) {
            return Err(ApiError::invalid("messages", "`messages` must not be empty"));
        }
        let tools = f.take("tools");
        let tool_choice = match f.take("tool_choice") {
            None => ToolChoice::Auto,
            Some(Json::String(s)) => match s.as_str() {
                "auto" => ToolChoice::Auto,
                "none" => ToolChoice::None,
                "required" => ToolChoice::Required,
                other => {
                    return Err(ApiError::invalid(
                        "tool_choice",
                        format!("`tool_choice` must be none, auto, required or a function, got `{other}`"),
                    ))
                }
            },
            Some(Json::Object(o)) => match o.get("function").and_then(|f| f.get("name")).and_then(Json::as_str) {
                Some(name) => ToolChoice::Function(name.to_string()),
                None => {
                    return Err(ApiError::invalid(
                        "tool_choice",
                        "`tool_choice.function.name` is missing",
                    ))
                }
            },
            Some(_) => return Err(type_error("tool_choice", "a string or an object")),
        };
        let mut request = json!({ "messages": messages });
        if let Some(tools) = tools {
            if !tools.is_array() {
                return Err(type_error("tools", "an array of tools"));
            }
            request["tools"] = tools;
        }
        let parsed = parse_request_value(request).map_err(ApiError::from)?;
        let tools = parsed.tools.filter(|t| !t.is_empty());
        if tools.is_none() && matches!(tool_choice, ToolChoice::Required | ToolChoice::Function(_)) {
            return Err(ApiError::invalid("tool_choice", "`tool_choice` needs `tools`"));
        }
        if let (Some(tools), ToolChoice::Function(name)) = (&tools, &tool_choice) {
            let known = tools.iter().any(|t| t["function"]["name"].as_str() == Some(name));
            if !known {
                return Err(ApiError::invalid("tool_choice", format!("no tool is named `{name}`")));
            }
        }
        let constraint = response_format(&mut f)?;
        let wanted = f.bool("logprobs")?.unwrap_or(false);
        let top = f.count("top_logprobs", 0)?;
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
        let mut common = CommonParams::parse(&mut f, true)?;
        common.logprobs = wanted.then_some(top.unwrap_or(0));
        Ok(Self {
            common,
            messages: parsed.messages,
            tools,
            tool_choice,
            constraint,
        })
    }

    /// True when the answer should be read as a possible tool call.
    pub fn tools_active(&self) -> bool {
        self.tools.is_some() && self.tool_choice != ToolChoice::None
    }
}

/// `response_format` (OpenAI) or vLLM's `guided_json` / `guided_regex` / `guided_grammar`
/// as a grammar constraint.
fn response_format(f: &mut Fields) -> Result<Option<Constraint>, ApiError> {
    let bad = |m: &str| ApiError::invalid("response_format", m.to_string());
    if let Some(format) = f.take("response_format") {
        return match format.get("type").and_then(Json::as_str) {
            Some("text") => Ok(None),
            Some("json_object") => Ok(Some(Constraint::JsonObject)),
            Some("json_schema") => match format.get("json_schema").and_then(|s| s.get("schema")) {
                Some(schema @ (Json::Object(_) | Json::Bool(_))) => Ok(Some(Constraint::JsonSchema(schema.clone()))),
                _ => Err(bad("`response_format.json_schema.schema` must be a JSON Schema object")),
            },
            _ => Err(bad("`response_format.type` must be text, json_object or json_schema")),
        };
    }
    if let Some(schema) = f.take("guided_json") {
        let schema = match schema {
            Json::String(s) => {
                serde_json::from_str(&s).map_err(|e| ApiError::invalid("guided_json", format!("not JSON: {e}")))?
            }
            other => other,
        };
        return Ok(Some(Constraint::JsonSchema(schema)));
    }
    if let Some(rx) = f.string("guided_regex")? {
        return Ok(Some(Constraint::Regex(rx)));
    }
    Ok(f.string("guided_grammar")?.map(Constraint::Lark))
}

/// The grammar that forces a Llama 3.2 JSON tool call (`{"name": ..., "parameters": ...}`)
/// to one of `tools` (or to the one named), its parameters valid against the tool's schema.
pub fn tool_call_constraint(tools: &[Tool], only: Option<&str>) -> Constraint {
    let calls: Vec<Json> = tools
        .iter()
        .filter(|t| only.is_none_or(|name| t["function"]["name"].as_str() == Some(name)))
        .map(|t| {
            let params = match &t["function"]["parameters"] {
                p @ Json::Object(_) => p.clone(),
                _ => json!({"type": "object"}),
            };
            json!({"type": "object", "properties": {"name": {"const": t["function"]["name"]}, "parameters": params},
                   "required": ["name", "parameters"], "additionalProperties": false})
        })
        .collect();
    Constraint::JsonSchema(json!({"anyOf": calls}))
}

/// The prompt of `POST /v1/completions`.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// Text (tokenized with one BOS).
    Text(String),
    /// Token ids, used as they are.
    Tokens(Vec<u32>),
}

/// A validated `POST /v1/completions` body.
#[derive(Debug, Clone)]
pub struct CompletionParams {
    /// Shared fields.
    pub common: CommonParams,
    /// The prompt.
    pub prompt: Prompt,
    /// Prepend the prompt to the answer.
    pub echo: bool,
    /// `response_format` / `guided_*` as a grammar.
    pub constraint: Option<Constraint>,
}

fn token_list(items: &[Json]) -> Option<Vec<u32>> {
    items
        .iter()
        .map(|v| v.as_u64().and_then(|id| u32::try_from(id).ok()))
        .collect()
}

impl CompletionParams {
    /// Reads and validates the body.
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let mut f = Fields::parse(body)?;
        let wrong = || {
            type_error(
                "prompt",
                "a string, an array of token ids, or an array with one of those",
            )
        };
        let prompt = match f.take("prompt") {
            None => return Err(ApiError::invalid("prompt", "Missing required parameter: `prompt`")),
            Some(Json::String(s)) => Prompt::Text(s),
            Some(Json::Array(items)) => match items.as_slice() {
                [Json::String(s)] => Prompt::Text(s.clone()),
                [Json::Array(ids)] => Prompt::Tokens(token_list(ids).ok_or_else(wrong)?),
                [] => return Err(ApiError::invalid("prompt", "`prompt` must not be empty")),
                ids if ids.iter().all(Json::is_number) => Prompt::Tokens(token_list(ids).ok_or_else(wrong)?),
                _ => {
                    return Err(ApiError::invalid(
                        "prompt",
                        "only one prompt per request is supported (use `n` for several answers)",
                    ))
                }
            },
            Some(_) => return Err(wrong()),
        };
        let echo = f.bool("echo")?.unwrap_or(false);
        if f.take("suffix").is_some() {
            return Err(ApiError::invalid("suffix", "`suffix` is not supported by this server"));
        }
        let logprobs = match f.take("logprobs") {
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
            Some(_) => return Err(type_error("logprobs", "an integer")),
        };
        let constraint = response_format(&mut f)?;
        let best_of = f.count("best_of", 1)?;
        let mut common = CommonParams::parse(&mut f, false)?;
        common.logprobs = logprobs;
        if best_of.is_some_and(|b| b != common.n) {
            return Err(ApiError::invalid(
                "best_of",
                "`best_of` other than `n` is not supported",
            ));
        }
        // OpenAI's completions default.
        common.max_tokens.get_or_insert(16);
        Ok(Self {
            common,
            prompt,
            echo,
            constraint,
        })
    }
}

/// A random id with a prefix (`chatcmpl-...`, `cmpl-...`, `call_...`).
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}{:024x}", rand::random::<u128>() >> 32)
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The `usage` object.
pub fn usage(prompt_tokens: usize, completion_tokens: usize, cached_tokens: usize) -> Json {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    })
}

/// A tool call in OpenAI's response shape (`arguments` as a JSON string).
pub fn tool_call_json(name: &str, arguments: &Json) -> Json {
    json!({
        "id": new_id("call_"),
        "type": "function",
        "function": {"name": name, "arguments": arguments.to_string()},
    })
}

/// The assistant message of a finished answer and its `finish_reason`: a tool call when
/// tools are active and the answer is one (`content: null`, `finish_reason: "tool_calls"`).
pub fn chat_message(text: &str, tools_active: bool, finish_reason: &'static str) -> (Json, &'static str) {
    if tools_active && finish_reason == "stop" {
        if let Some(call) = parse_tool_call(text) {
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

#[cfg(test)]
mod tests;
