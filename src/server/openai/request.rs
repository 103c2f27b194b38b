//! The request bodies of `POST /v1/chat/completions` and `POST /v1/completions` as serde
//! types, and their one conversion each into the validated request (`params`). A field this
//! server does not know is a 400 naming it (as OpenAI answers "Unrecognized request
//! argument"); fields it accepts without effect are listed with why.

use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::{json, Map, Value as Json};

use super::grammar::{take_grammar_fields, ResponseFormat, StructuredOutputs};
use crate::chat::{check_message, Message, Tool, ToolCall};
use crate::sampler::MAX_TOP_LOGPROBS;
use crate::server::body::{generation_body, Int};
use crate::server::error::ApiError;
use crate::server::params::{
    check_labels, check_tool_choice, tool_choice, ChatParams, CommonParams, CompletionParams, Prompt,
};

/// One message of a chat request (a `null` field counts as absent).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ChatMessage {
    role: String,
    content: Option<Content>,
    tool_calls: Option<Vec<ToolCall>>,
    tool_call_id: Option<String>,
    /// A participant's name: Llama's templates have no place for it.
    #[allow(dead_code)]
    name: Option<String>,
    /// What the SDKs send back of an earlier answer: never part of a prompt.
    #[allow(dead_code)]
    refusal: Option<IgnoredAny>,
    #[allow(dead_code)]
    annotations: Option<IgnoredAny>,
}

/// A message's content: text, or content parts (only text parts are read).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged, expecting = "expected a string or an array of content parts")]
enum Content {
    Text(String),
    Parts(Vec<Json>),
}

impl From<ChatMessage> for Message {
    fn from(m: ChatMessage) -> Self {
        Message {
            role: m.role,
            content: match m.content {
                None => Json::Null,
                Some(Content::Text(s)) => Json::String(s),
                Some(Content::Parts(p)) => Json::Array(p),
            },
            tool_calls: m.tool_calls.unwrap_or_default(),
            tool_call_id: m.tool_call_id,
        }
    }
}

/// A tool: `{"type": "function", "function": {...}}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ToolDef {
    #[serde(rename = "type")]
    #[allow(dead_code)]
    kind: FunctionKind,
    function: FunctionDef,
}

/// The only kind of tool there is here.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum FunctionKind {
    /// A function the model may call.
    Function,
}

/// A function's name, description and the JSON Schema of its parameters.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FunctionDef {
    pub(crate) name: String,
    pub(crate) description: Option<String>,
    pub(crate) parameters: Option<Map<String, Json>>,
    /// Forced calls always follow the schema; free ones are parsed as they come.
    #[allow(dead_code)]
    pub(crate) strict: Option<bool>,
}

impl FunctionDef {
    /// The tool in the shape chat templates read.
    pub(crate) fn into_tool(self) -> Tool {
        let mut function = Map::new();
        function.insert("name".into(), Json::String(self.name));
        if let Some(d) = self.description {
            function.insert("description".into(), Json::String(d));
        }
        let params = self
            .parameters
            .map_or_else(|| json!({"type": "object", "properties": {}}), Json::Object);
        function.insert("parameters".into(), params);
        json!({"type": "function", "function": function})
    }
}

generation_body! {
    /// A `POST /v1/chat/completions` body.
    pub(crate) struct ChatRequest {
        messages: Option<Vec<ChatMessage>>,
        tools: Option<Vec<ToolDef>>,
        tool_choice: Option<Json>,
        response_format: Option<ResponseFormat>,
        guided_json: Option<Json>,
        guided_regex: Option<String>,
        guided_choice: Option<Vec<String>>,
        guided_grammar: Option<String>,
        structured_outputs: Option<StructuredOutputs>,
        json_schema: Option<Json>,
        grammar: Option<String>,
        logprobs: Option<bool>,
        top_logprobs: Option<Int>,
        prompt_logprobs: Option<Int>,
        max_completion_tokens: Option<Int>,
        /// At most one tool call is made per answer, which either value allows.
        #[allow(dead_code)]
        parallel_tool_calls: Option<bool>,
        /// Stored chat completions are not served: `true` is refused.
        store: Option<bool>,
        /// Labels for the caller's own records (no effect on the answer).
        #[allow(dead_code)]
        user: Option<String>,
        metadata: Option<Map<String, Json>>,
        #[allow(dead_code)]
        safety_identifier: Option<String>,
        #[allow(dead_code)]
        prompt_cache_key: Option<String>,
        /// One tier is served: `auto` or `default`.
        service_tier: Option<String>,
        /// Text is the only modality: `["text"]`.
        modalities: Option<Vec<String>>,
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
        response_format: Option<ResponseFormat>,
        guided_json: Option<Json>,
        guided_regex: Option<String>,
        guided_choice: Option<Vec<String>>,
        guided_grammar: Option<String>,
        structured_outputs: Option<StructuredOutputs>,
        json_schema: Option<Json>,
        grammar: Option<String>,
        /// A label for the caller's own records.
        #[allow(dead_code)]
        user: Option<String>,
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
        self.refuse_what_is_not_served()?;
        let tool_choice = tool_choice(self.tool_choice.take())?;
        let messages = messages
            .into_iter()
            .enumerate()
            .map(|(i, m)| check_message(i, m.into()))
            .collect::<Result<Vec<_>, _>>()?;
        let tools = self
            .tools
            .take()
            .map(|t| t.into_iter().map(|t| t.function.into_tool()).collect::<Vec<_>>());
        let tools = tools.filter(|t| !t.is_empty());
        check_tool_choice(tools.as_deref(), &tool_choice)?;
        let constraint = take_grammar_fields!(self).constraint()?;
        let logprobs = self.chat_logprobs()?;
        let prompt_logprobs = prompt_logprobs(self.prompt_logprobs.take())?;
        if prompt_logprobs.is_some() && self.stream == Some(true) {
            return Err(ApiError::invalid(
                "prompt_logprobs",
                "`prompt_logprobs` are answered whole: drop `stream`",
            ));
        }
        let max_completion_tokens = self.max_completion_tokens.take();
        let max_completion_tokens = max_completion_tokens.map(|m| (m, "max_completion_tokens"));
        let mut common = CommonParams::new(self.sampling_fields(), max_completion_tokens)?;
        common.logprobs = logprobs;
        common.prompt_logprobs = prompt_logprobs;
        Ok(ChatParams {
            common,
            messages,
            tools,
            tool_choice,
            constraint,
        })
    }

    /// `store: true` and modalities other than text ask for what this server does not do.
    fn refuse_what_is_not_served(&self) -> Result<(), ApiError> {
        check_labels(self.service_tier.as_deref(), self.metadata.as_ref())?;
        if self.store == Some(true) {
            return Err(ApiError::invalid(
                "store",
                "stored chat completions are not served here (`store: true`); the Responses API stores answers",
            ));
        }
        if let Some(m) = self.modalities.as_ref().filter(|m| m.iter().any(|m| m != "text")) {
            return Err(ApiError::invalid(
                "modalities",
                format!("only the `text` modality is served, got {m:?}"),
            ));
        }
        Ok(())
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

/// vLLM's `prompt_logprobs`: alternatives per prompt token (0 to the top-logprobs limit).
fn prompt_logprobs(k: Option<Int>) -> Result<Option<usize>, ApiError> {
    let k = k.map(|k| k.count("prompt_logprobs", 0)).transpose()?;
    match k {
        Some(k) if k > MAX_TOP_LOGPROBS => Err(ApiError::invalid(
            "prompt_logprobs",
            format!("`prompt_logprobs` must be from 0 to {MAX_TOP_LOGPROBS}"),
        )),
        k => Ok(k),
    }
}

impl CompletionRequest {
    /// Validates the request.
    pub(crate) fn into_params(mut self) -> Result<CompletionParams, ApiError> {
        let prompt = completion_prompt(self.prompt.take())?;
        if self.suffix.is_some() {
            return Err(ApiError::invalid("suffix", "`suffix` is not supported by this server"));
        }
        let logprobs = completion_logprobs(self.logprobs.take())?;
        let constraint = take_grammar_fields!(self).constraint()?;
        let best_of = self.best_of.map(|b| b.count("best_of", 1)).transpose()?;
        let echo = self.echo.unwrap_or(false);
        let mut fields = self.sampling_fields();
        // `max_tokens: 0` with `echo` scores the prompt only (evaluation harnesses).
        let score_only = echo && fields.max_tokens.is_some_and(|m| m.0 == 0);
        if score_only {
            fields.max_tokens = None;
        }
        let mut common = CommonParams::new(fields, None)?;
        common.logprobs = logprobs;
        if best_of.is_some_and(|b| b != common.n) {
            return Err(ApiError::invalid(
                "best_of",
                "`best_of` other than `n` is not supported",
            ));
        }
        // The echoed prompt's log-probabilities come with the answer's.
        if echo && (logprobs.is_some() || score_only) {
            common.prompt_logprobs = Some(logprobs.unwrap_or(0));
            if common.stream {
                return Err(ApiError::invalid(
                    "echo",
                    "`echo` with `logprobs` or `max_tokens: 0` is answered whole: drop `stream`",
                ));
            }
        }
        // OpenAI's completions default.
        common.max_tokens = Some(match score_only {
            true => 0,
            false => common.max_tokens.unwrap_or(16),
        });
        Ok(CompletionParams {
            common,
            prompt,
            echo,
            constraint,
        })
    }
}

/// The completions API's `logprobs`: how many alternatives per token (an integer up to
/// [`MAX_TOP_LOGPROBS`]), `None` when absent or `false`.
fn completion_logprobs(value: Option<Json>) -> Result<Option<usize>, ApiError> {
    match value {
        None | Some(Json::Bool(false)) => Ok(None),
        Some(Json::Number(n)) => match n.as_u64() {
            Some(k) if k as usize <= MAX_TOP_LOGPROBS => Ok(Some(k as usize)),
            _ => Err(ApiError::invalid(
                "logprobs",
                format!("`logprobs` must be an integer from 0 to {MAX_TOP_LOGPROBS}"),
            )),
        },
        Some(_) => Err(ApiError::invalid(
            "logprobs",
            "Invalid type for `logprobs`: expected an integer",
        )),
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
