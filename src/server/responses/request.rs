//! The body of `POST /v1/responses` (and `/v1/responses/input_tokens`) as serde types, and
//! its one conversion into the validated chat request: `instructions` become the system
//! message, `input` items (messages, `function_call`, `function_call_output`) the turns,
//! function `tools` and `tool_choice` the chat's, `text.format` the grammar. Reasoning
//! items from other models are left out of the prompt; anything else unknown is a 400.

use std::fmt;

use serde::de::{self, IgnoredAny, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::{json, Map, Value as Json};

use crate::chat::{check_message, FunctionCall, Message, ToolCall};
use crate::server::body::{generation_body, Int};
use crate::server::error::ApiError;
use crate::server::openai::grammar::schema;
use crate::server::params::{check_labels, check_tool_choice, tool_choice, ChatParams, CommonParams};

/// `input`: a string (one user message) or a list of items.
#[derive(Debug, Clone)]
pub(crate) enum Input {
    Text(String),
    Items(Vec<Item>),
}

impl<'de> Deserialize<'de> for Input {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Input;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or an array of input items")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Input, E> {
                Ok(Input::Text(v.to_string()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Input, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Input::Items(items))
            }
        }
        d.deserialize_any(V)
    }
}

/// One input item: a message (`type` absent or `message`), a `function_call`, a
/// `function_call_output`, or a `reasoning` item.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Item {
    #[serde(rename = "type")]
    kind: Option<String>,
    role: Option<String>,
    content: Option<Content>,
    call_id: Option<String>,
    name: Option<String>,
    arguments: Option<String>,
    output: Option<Content>,
    /// What the SDKs send back of an earlier answer's items.
    #[allow(dead_code)]
    id: Option<String>,
    #[allow(dead_code)]
    status: Option<String>,
    /// Parts of reasoning items (left out of the prompt).
    #[allow(dead_code)]
    summary: Option<IgnoredAny>,
    #[allow(dead_code)]
    encrypted_content: Option<IgnoredAny>,
}

/// A message's content or a call's output: text or content parts.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged, expecting = "expected a string or an array of text parts")]
pub(crate) enum Content {
    Text(String),
    Parts(Vec<Part>),
}

/// A content part: `input_text`, `output_text` (or `text`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Part {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
    #[allow(dead_code)]
    annotations: Option<IgnoredAny>,
    #[allow(dead_code)]
    logprobs: Option<IgnoredAny>,
}

/// A tool: only functions.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum ToolDef {
    Function {
        name: String,
        description: Option<String>,
        parameters: Option<Map<String, Json>>,
        /// Forced calls always follow the schema; free ones are parsed as they come.
        #[allow(dead_code)]
        strict: Option<bool>,
    },
}

/// `text`: the answer's format.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TextConfig {
    format: Option<TextFormat>,
    /// Only `medium` (the model's own length).
    verbosity: Option<String>,
}

/// `text.format`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum TextFormat {
    Text,
    JsonObject,
    JsonSchema {
        #[allow(dead_code)]
        name: Option<String>,
        #[allow(dead_code)]
        description: Option<String>,
        schema: Json,
        #[allow(dead_code)]
        strict: Option<bool>,
    },
}

generation_body! {
    /// A `POST /v1/responses` body.
    pub(crate) struct ResponsesRequest {
        input: Option<Input>,
        instructions: Option<String>,
        tools: Option<Vec<ToolDef>>,
        tool_choice: Option<Json>,
        text: Option<TextConfig>,
        max_output_tokens: Option<Int>,
        store: Option<bool>,
        previous_response_id: Option<String>,
        /// `disabled` only: a prompt over the window is a 400, never cut.
        truncation: Option<String>,
        /// At most one tool call is made per answer, which either value allows.
        parallel_tool_calls: Option<bool>,
        /// Labels for the caller's own records (no effect on the answer).
        metadata: Option<Map<String, Json>>,
        /// A label for the caller's own records, repeated in the answer.
        user: Option<String>,
        #[allow(dead_code)]
        safety_identifier: Option<String>,
        #[allow(dead_code)]
        prompt_cache_key: Option<String>,
        /// One tier is served: `auto` or `default`.
        service_tier: Option<String>,
    }
}

/// A validated Responses request: the chat request it runs as, and what its answer
/// repeats and stores.
#[derive(Debug, Clone)]
pub(crate) struct ResponsesParams {
    pub(crate) chat: ChatParams,
    /// The conversation without the instructions (what a later turn continues).
    pub(crate) history: Vec<Message>,
    /// The request's own fields, repeated in the response object.
    pub(crate) echo: Map<String, Json>,
    pub(crate) store: bool,
}

fn part_text(param: &str, parts: Vec<Part>) -> Result<String, ApiError> {
    let mut text = String::new();
    for (j, part) in parts.into_iter().enumerate() {
        match (part.kind.as_str(), part.text) {
            ("input_text" | "output_text" | "text", Some(t)) => text.push_str(&t),
            (kind, _) => {
                return Err(ApiError::invalid(
                    format!("{param}[{j}]"),
                    format!("only text parts are read here (`input_text`, `output_text`), got `{kind}`"),
                ))
            }
        }
    }
    Ok(text)
}

fn content_text(param: &str, content: Option<Content>) -> Result<String, ApiError> {
    match content {
        Some(Content::Text(t)) => Ok(t),
        Some(Content::Parts(parts)) => part_text(param, parts),
        None => Err(ApiError::invalid(param, format!("`{param}` is missing"))),
    }
}

/// One input item as the conversation's message (none for reasoning items).
fn item_message(i: usize, item: Item) -> Result<Option<Message>, ApiError> {
    let at = format!("input[{i}]");
    match item.kind.as_deref() {
        None | Some("message") => {
            let role = match item.role.as_deref() {
                Some(r @ ("user" | "assistant" | "system" | "developer")) => r.to_string(),
                _ => {
                    return Err(ApiError::invalid(
                        format!("{at}.role"),
                        "`role` must be user, assistant, system or developer",
                    ))
                }
            };
            Ok(Some(Message::text(
                &role,
                content_text(&format!("{at}.content"), item.content)?,
            )))
        }
        Some("function_call") => {
            let (Some(name), Some(arguments)) = (item.name, item.arguments) else {
                return Err(ApiError::invalid(
                    at,
                    "a `function_call` item needs `name` and `arguments`",
                ));
            };
            let mut m = Message::text("assistant", "");
            m.tool_calls = vec![ToolCall {
                kind: "function".into(),
                function: FunctionCall {
                    name,
                    arguments: Json::String(arguments),
                },
                id: item.call_id,
            }];
            Ok(Some(m))
        }
        Some("function_call_output") => {
            let mut m = Message::text("tool", content_text(&format!("{at}.output"), item.output)?);
            m.tool_call_id = item.call_id;
            Ok(Some(m))
        }
        Some("reasoning") => Ok(None),
        Some(other) => Err(ApiError::invalid(
            format!("{at}.type"),
            format!("input items of type `{other}` are not served (message, function_call, function_call_output)"),
        )),
    }
}

impl ResponsesRequest {
    /// Validates the request; `earlier` is the stored conversation `previous_response_id`
    /// names (looked up by the caller).
    pub(crate) fn into_params(mut self, earlier: Vec<Message>) -> Result<ResponsesParams, ApiError> {
        self.refuse_what_is_not_served()?;
        let mut history = earlier;
        match self.input.take() {
            None => return Err(ApiError::invalid("input", "Missing required parameter: `input`")),
            Some(Input::Text(t)) => history.push(Message::text("user", t)),
            Some(Input::Items(items)) => {
                let before = history.len();
                for (i, item) in items.into_iter().enumerate() {
                    history.extend(item_message(i, item)?);
                }
                if history.len() == before {
                    return Err(ApiError::invalid(
                        "input",
                        "`input` holds no message or function call output",
                    ));
                }
            }
        }
        let mut messages = Vec::with_capacity(history.len() + 1);
        if let Some(instructions) = &self.instructions {
            messages.push(Message::text("system", instructions.clone()));
        }
        messages.extend(history.iter().cloned());
        let messages = messages
            .into_iter()
            .enumerate()
            .map(|(i, m)| check_message(i, m))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ApiError {
                param: Some("input".into()),
                ..ApiError::from(e)
            })?;
        let echo = self.echo();
        let tools: Option<Vec<Json>> = self.tools.take().map(|t| t.into_iter().map(tool_json).collect());
        let tools = tools.filter(|t| !t.is_empty());
        let choice = tool_choice(self.tool_choice.take())?;
        check_tool_choice(tools.as_deref(), &choice)?;
        let constraint = match self.text.take().and_then(|t| t.format) {
            None | Some(TextFormat::Text) => None,
            Some(TextFormat::JsonObject) => Some((crate::constraint::Constraint::JsonObject, "text")),
            Some(TextFormat::JsonSchema { schema: s, .. }) => Some((schema("text.format.schema", s)?, "text")),
        };
        let max_output_tokens = self.max_output_tokens.take().map(|m| (m, "max_output_tokens"));
        let common = CommonParams::new(self.sampling_fields(), max_output_tokens)?;
        if common.n != 1 {
            return Err(ApiError::invalid("n", "a response has one answer"));
        }
        Ok(ResponsesParams {
            chat: ChatParams {
                common,
                messages,
                tools,
                tool_choice: choice,
                constraint,
            },
            history,
            echo,
            store: self.store.unwrap_or(true),
        })
    }

    fn refuse_what_is_not_served(&self) -> Result<(), ApiError> {
        check_labels(self.service_tier.as_deref(), self.metadata.as_ref())?;
        if let Some(t) = self.truncation.as_deref().filter(|t| *t != "disabled") {
            return Err(ApiError::invalid(
                "truncation",
                format!("truncation `{t}` is not served: a prompt over the window is refused, never cut"),
            ));
        }
        if let Some(v) = self
            .text
            .as_ref()
            .and_then(|t| t.verbosity.as_deref())
            .filter(|v| *v != "medium")
        {
            return Err(ApiError::invalid(
                "text.verbosity",
                format!("verbosity `{v}` is not served (only `medium`)"),
            ));
        }
        if self.max_tokens.is_some() {
            return Err(ApiError::invalid(
                "max_tokens",
                "use `max_output_tokens` in the Responses API",
            ));
        }
        Ok(())
    }

    /// The request fields a response object repeats.
    fn echo(&self) -> Map<String, Json> {
        let tools: Vec<Json> = self
            .tools
            .iter()
            .flatten()
            .map(
                |ToolDef::Function {
                     name,
                     description,
                     parameters,
                     strict,
                 }| {
                    json!({"type": "function", "name": name, "description": description,
                       "parameters": parameters, "strict": strict.unwrap_or(true)})
                },
            )
            .collect();
        let format = match self.text.as_ref().and_then(|t| t.format.as_ref()) {
            None | Some(TextFormat::Text) => json!({"type": "text"}),
            Some(TextFormat::JsonObject) => json!({"type": "json_object"}),
            Some(TextFormat::JsonSchema {
                name,
                description,
                schema,
                strict,
            }) => {
                json!({"type": "json_schema", "name": name, "description": description, "schema": schema,
                       "strict": strict})
            }
        };
        let mut echo = Map::new();
        echo.insert("instructions".into(), json!(self.instructions));
        echo.insert("tools".into(), Json::Array(tools));
        echo.insert(
            "tool_choice".into(),
            self.tool_choice.clone().unwrap_or_else(|| json!("auto")),
        );
        echo.insert("text".into(), json!({"format": format}));
        // As written (`0.7`, not the f32's `0.699999988079071`).
        let shortest = |x: f32| x.to_string().parse::<f64>().unwrap_or(f64::from(x));
        echo.insert("temperature".into(), json!(self.temperature.map(|t| shortest(t.0))));
        echo.insert("top_p".into(), json!(self.top_p.map(|t| shortest(t.0))));
        echo.insert("user".into(), json!(self.user));
        echo.insert("max_output_tokens".into(), json!(self.max_output_tokens.map(|m| m.0)));
        echo.insert(
            "parallel_tool_calls".into(),
            json!(self.parallel_tool_calls.unwrap_or(true)),
        );
        echo.insert(
            "metadata".into(),
            Json::Object(self.metadata.clone().unwrap_or_default()),
        );
        echo.insert("previous_response_id".into(), json!(self.previous_response_id));
        echo.insert("store".into(), json!(self.store.unwrap_or(true)));
        echo.insert("truncation".into(), json!("disabled"));
        echo
    }

    /// The `previous_response_id` asked for.
    pub(crate) fn previous(&self) -> Option<&str> {
        self.previous_response_id.as_deref()
    }
}

/// A function tool in the shape chat templates read.
fn tool_json(tool: ToolDef) -> Json {
    let ToolDef::Function {
        name,
        description,
        parameters,
        ..
    } = tool;
    crate::server::openai::FunctionDef {
        name,
        description,
        parameters,
        strict: None,
    }
    .into_tool()
}
