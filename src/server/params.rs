//! A generation request as both APIs mean it, validated: what each API's wire types
//! (OpenAI's, Anthropic's) are read into, and what the plan is made of.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value as Json};

use super::body::{Int, SamplingFields};
use super::error::ApiError;
use crate::chat::{Callable, Message, Tool};
use crate::constraint::Constraint;
use crate::sampler::SamplingParams;

/// Most choices one request may ask for.
pub(super) const MAX_N: usize = 16;

/// Most stop strings, and most bytes of each (matching them runs on every token).
pub(super) const MAX_STOPS: usize = 16;
pub(super) const MAX_STOP_BYTES: usize = 256;

/// `logit_bias` values lie in this range (OpenAI's).
const MAX_BIAS: f64 = 100.0;

/// What every generation request has: model, sampling, length, stop, n, streaming.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct CommonParams {
    /// The `model` asked for.
    pub(super) model: Option<String>,
    /// Sampling parameters (unset ones take the model's defaults).
    pub(super) sampling: SamplingParams,
    /// `max_tokens` / `max_completion_tokens`.
    pub(super) max_tokens: Option<usize>,
    /// Stop strings.
    pub(super) stop: Vec<String>,
    /// Choices to generate.
    pub(super) n: usize,
    /// Server-sent events.
    pub(super) stream: bool,
    /// A last chunk with `usage`.
    pub(super) include_usage: bool,
    /// Log-probabilities with this many alternatives per token.
    pub(super) logprobs: Option<usize>,
    /// The prompt's log-probabilities with this many alternatives per token.
    pub(super) prompt_logprobs: Option<usize>,
    /// vLLM's `cache_salt`: its prefix-cache scope.
    pub(super) cache_salt: Option<String>,
}

impl CommonParams {
    /// Validates the shared fields; `max_completion_tokens` (chat, or the field named with
    /// it) takes the place of `max_tokens`, which may only repeat its value.
    pub(super) fn new(f: SamplingFields, max_completion_tokens: Option<(Int, &str)>) -> Result<Self, ApiError> {
        let mut logit_bias = BTreeMap::new();
        for (key, value) in f.logit_bias.unwrap_or_default() {
            let id: u32 = key
                .trim()
                .parse()
                .map_err(|_| ApiError::invalid("logit_bias", format!("`logit_bias` key `{key}` is not a token id")))?;
            let bias = value.as_f64().filter(|b| b.abs() <= MAX_BIAS).ok_or_else(|| {
                ApiError::invalid(
                    "logit_bias",
                    format!("`logit_bias[{key}]` must be a number from -100 to 100"),
                )
            })?;
            logit_bias.insert(id, bias as f32);
        }
        let num = |v: Option<super::body::Num>| v.map(|v| v.0);
        let sampling = SamplingParams {
            temperature: num(f.temperature),
            top_p: num(f.top_p),
            // vLLM's "-1 disables top_k" is accepted too.
            top_k: f.top_k.map(|k| if k.0 == -1 { 0 } else { k.0 }),
            min_p: num(f.min_p),
            repetition_penalty: num(f.repetition_penalty),
            frequency_penalty: num(f.frequency_penalty),
            presence_penalty: num(f.presence_penalty),
            seed: f.seed.map(|s| s.0),
            logit_bias,
        };
        let mut max_tokens = f.max_tokens.map(|m| m.count("max_tokens", 1)).transpose()?;
        if let Some((m, name)) = max_completion_tokens {
            let m = m.count(name, 1)?;
            if max_tokens.is_some_and(|old| old != m) {
                return Err(ApiError::invalid(
                    "max_tokens",
                    format!("`max_tokens` and `{name}` differ: send one of them"),
                ));
            }
            max_tokens = Some(m);
        }
        if f.stream_options
            .as_ref()
            .is_some_and(|o| o.include_obfuscation == Some(true))
        {
            return Err(ApiError::invalid(
                "stream_options.include_obfuscation",
                "stream events are not padded here: send `include_obfuscation: false` or leave it out",
            ));
        }
        if f.stream_options.is_some() && f.stream != Some(true) {
            return Err(ApiError::invalid(
                "stream_options",
                "`stream_options` is only allowed when `stream` is true",
            ));
        }
        let n = f.n.map(|n| n.count("n", 1)).transpose()?.unwrap_or(1);
        if n > MAX_N {
            return Err(ApiError::invalid("n", format!("`n` must be <= {MAX_N}, got {n}")));
        }
        let stop: Vec<String> = f.stop.map(Vec::from).unwrap_or_default();
        if stop.len() > MAX_STOPS || stop.iter().any(|s| s.len() > MAX_STOP_BYTES) {
            return Err(ApiError::invalid(
                "stop",
                format!("`stop` takes at most {MAX_STOPS} strings of at most {MAX_STOP_BYTES} bytes each"),
            ));
        }
        Ok(Self {
            model: f.model,
            sampling,
            max_tokens,
            stop,
            n,
            stream: f.stream.unwrap_or(false),
            include_usage: f.stream_options.and_then(|o| o.include_usage).unwrap_or(false),
            logprobs: None,
            prompt_logprobs: None,
            cache_salt: f.cache_salt,
        })
    }
}

/// `tool_choice`.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum ToolChoice {
    /// The model may answer with a tool call (the default when tools are given).
    Auto,
    /// The answer is never read as a tool call.
    None,
    /// A tool call is wanted (forced with a grammar).
    Required,
    /// A call of the named function is wanted (likewise).
    Function(String),
}

/// A validated chat request (an OpenAI chat completion or an Anthropic message).
#[derive(Debug, Clone)]
pub(super) struct ChatParams {
    /// Shared fields.
    pub(super) common: CommonParams,
    /// The conversation.
    pub(super) messages: Vec<Message>,
    /// Tools offered.
    pub(super) tools: Option<Vec<Tool>>,
    /// `tool_choice`.
    pub(super) tool_choice: ToolChoice,
    /// `response_format` (or another grammar field) as a grammar, with the field's name.
    pub(super) constraint: Option<(Constraint, &'static str)>,
}

impl ChatParams {
    /// The functions an answer may call: none when no tools are offered, `tool_choice` is
    /// `none`, or a format grammar shapes the answer (then it is the format's answer).
    pub(super) fn callable(&self) -> Callable {
        match &self.tools {
            Some(tools) if self.tool_choice != ToolChoice::None && self.constraint.is_none() => Callable::of(tools),
            _ => Callable::default(),
        }
    }
}

/// OpenAI's `tool_choice`: `auto`, `none`, `required`, or a function named as chat
/// completions write it (`{"type": "function", "function": {"name": ...}}`) or as the
/// Responses API does (`{"type": "function", "name": ...}`).
pub(super) fn tool_choice(choice: Option<Json>) -> Result<ToolChoice, ApiError> {
    let bad = |m: String| ApiError::invalid("tool_choice", m);
    match choice {
        None => Ok(ToolChoice::Auto),
        Some(Json::String(s)) => match s.as_str() {
            "auto" => Ok(ToolChoice::Auto),
            "none" => Ok(ToolChoice::None),
            "required" => Ok(ToolChoice::Required),
            other => Err(bad(format!(
                "`tool_choice` must be none, auto, required or a function, got `{other}`"
            ))),
        },
        Some(Json::Object(o)) => {
            if let Some(kind) = o.get("type").filter(|t| t.as_str() != Some("function")) {
                return Err(bad(format!("`tool_choice.type` must be `function`, got {kind}")));
            }
            let nested = o.get("function").and_then(|f| f.get("name"));
            let flat = o
                .get("name")
                .filter(|_| o.get("type").and_then(Json::as_str) == Some("function"));
            match nested.or(flat).and_then(Json::as_str) {
                Some(name) => Ok(ToolChoice::Function(name.to_string())),
                None => Err(bad("`tool_choice` names no function (`function.name`)".into())),
            }
        }
        Some(_) => Err(bad(
            "Invalid type for `tool_choice`: expected a string or an object".into()
        )),
    }
}

/// Checks that the tools have names, none twice (an answer's call names its function), that
/// a `tool_choice` asking for a tool has tools to choose from, and that a named one is
/// among them.
pub(super) fn check_tool_choice(tools: Option<&[Tool]>, choice: &ToolChoice) -> Result<(), ApiError> {
    crate::chat::check_tool_names(tools.unwrap_or_default())?;
    match (tools, choice) {
        (None, ToolChoice::Required | ToolChoice::Function(_)) => {
            Err(ApiError::invalid("tool_choice", "`tool_choice` needs `tools`"))
        }
        (Some(tools), ToolChoice::Function(name))
            if !tools.iter().any(|t| t["function"]["name"].as_str() == Some(name)) =>
        {
            Err(ApiError::invalid("tool_choice", format!("no tool is named `{name}`")))
        }
        _ => Ok(()),
    }
}

/// The grammar that forces a Llama 3.2 JSON tool call (`{"name": ..., "parameters": ...}`)
/// to one of `tools` (or to the one named), its parameters valid against the tool's schema.
/// Each tool's `$defs` (pydantic's and zod's nested models) move to the root, renamed per
/// tool, with the `$ref`s that point at them.
pub(super) fn tool_call_constraint(tools: &[Tool], only: Option<&str>) -> Constraint {
    let mut defs = Map::new();
    let calls: Vec<Json> = tools
        .iter()
        .enumerate()
        .filter(|(_, t)| only.is_none_or(|name| t["function"]["name"].as_str() == Some(name)))
        .map(|(i, t)| {
            let mut params = match &t["function"]["parameters"] {
                p @ Json::Object(_) => p.clone(),
                _ => json!({"type": "object"}),
            };
            hoist_defs(&mut params, &format!("t{i}_"), &mut defs);
            json!({"type": "object", "properties": {"name": {"const": t["function"]["name"]}, "parameters": params},
                   "required": ["name", "parameters"], "additionalProperties": false})
        })
        .collect();
    let mut schema = json!({"anyOf": calls});
    if !defs.is_empty() {
        schema["$defs"] = Json::Object(defs);
    }
    Constraint::JsonSchema(schema)
}

/// Moves `schema`'s `$defs` / `definitions` into `defs` with `prefix` on their names, and
/// points its `$ref`s (and theirs) at the new names.
fn hoist_defs(schema: &mut Json, prefix: &str, defs: &mut Map<String, Json>) {
    let Json::Object(map) = schema else { return };
    let mut own = Map::new();
    for key in ["$defs", "definitions"] {
        if let Some(Json::Object(found)) = map.remove(key) {
            own.extend(found);
        }
    }
    let names: Vec<String> = own.keys().cloned().collect();
    let rename = |value: &mut Json| rewrite_refs(value, prefix, &names);
    rename(schema);
    for (name, mut def) in own {
        rename(&mut def);
        defs.insert(format!("{prefix}{name}"), def);
    }
}

/// Points `#/$defs/NAME` and `#/definitions/NAME` references (NAME in `names`) at
/// `#/$defs/{prefix}NAME`, everywhere in `value`.
fn rewrite_refs(value: &mut Json, prefix: &str, names: &[String]) {
    match value {
        Json::Object(map) => {
            for (key, v) in map.iter_mut() {
                match (key.as_str(), &mut *v) {
                    ("$ref", Json::String(r)) => {
                        let name = r.strip_prefix("#/$defs/").or_else(|| r.strip_prefix("#/definitions/"));
                        if let Some(name) = name.filter(|n| names.iter().any(|x| x == n)) {
                            *r = format!("#/$defs/{prefix}{name}");
                        }
                    }
                    _ => rewrite_refs(v, prefix, names),
                }
            }
        }
        Json::Array(items) => items.iter_mut().for_each(|v| rewrite_refs(v, prefix, names)),
        _ => {}
    }
}

/// The prompt of a text completion.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Prompt {
    /// Text (tokenized with one BOS).
    Text(String),
    /// Token ids, used as they are.
    Tokens(Vec<u32>),
}

/// A validated text completion request.
#[derive(Debug, Clone)]
pub(super) struct CompletionParams {
    /// Shared fields.
    pub(super) common: CommonParams,
    /// The prompt.
    pub(super) prompt: Prompt,
    /// Prepend the prompt to the answer.
    pub(super) echo: bool,
    /// `response_format` (or another grammar field) as a grammar, with the field's name.
    pub(super) constraint: Option<(Constraint, &'static str)>,
}

/// A prefix-cache scope from labels (an API key, a `cache_salt`): never 0, the scope of
/// requests that name none.
pub(super) fn scope_of(labels: &[&str]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    labels.hash(&mut h);
    h.finish().max(1)
}

/// A random id with a prefix (`chatcmpl-...`, `cmpl-...`, `call_...`, `msg_...`).
pub(super) fn new_id(prefix: &str) -> String {
    format!("{prefix}{:024x}", rand::random::<u128>() >> 32)
}

/// Seconds since the Unix epoch.
pub(super) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// OpenAI's record-keeping fields: `service_tier` (one tier is served: `auto` or `default`)
/// and `metadata` (at most 16 string values under keys of at most 64 characters).
pub(super) fn check_labels(service_tier: Option<&str>, metadata: Option<&Map<String, Json>>) -> Result<(), ApiError> {
    if let Some(tier) = service_tier.filter(|t| !matches!(*t, "auto" | "default")) {
        return Err(ApiError::invalid(
            "service_tier",
            format!("service tier `{tier}` is not served: this server has one tier (`auto` or `default`)"),
        ));
    }
    let Some(metadata) = metadata else { return Ok(()) };
    if metadata.len() > 16 {
        return Err(ApiError::invalid("metadata", "`metadata` takes at most 16 pairs"));
    }
    match metadata.iter().find(|(k, v)| k.chars().count() > 64 || !v.is_string()) {
        Some((k, _)) => Err(ApiError::invalid(
            format!("metadata.{k}"),
            format!("`metadata.{k}`: keys are at most 64 characters and values are strings"),
        )),
        None => Ok(()),
    }
}
