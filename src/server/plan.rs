//! A request ready to run, made from either API's validated request: the prompt ids,
//! the engine request, and how the answer is shaped. Everything that can be checked before
//! a slot is taken is checked here.

use std::sync::Arc;
use std::time::Instant;

use super::error::ApiError;
use super::params::{
    new_id, scope_of, tool_call_constraint, ChatParams, CommonParams, CompletionParams, Prompt, ToolChoice,
};
use super::responses::response::Meta;
use super::responses::ResponsesParams;
use super::{Ready, State};
use crate::chat::{inline_tools, Callable, Message, RenderOptions, Tool};
use crate::constraint::Constraint;
use crate::engine::{FinishReason, GenerateRequest};
use crate::error::Error;
use crate::sampler::StopMatcher;

/// Which API a request came through, with what its answer needs.
pub(super) enum Kind {
    /// OpenAI chat completion.
    Chat { tools: Callable },
    /// Anthropic message.
    Messages { tools: Callable },
    /// OpenAI Responses API answer.
    Responses(Box<Meta>),
    /// OpenAI text completion.
    Completion { echo: Option<String> },
}

/// The API a conversation came through.
enum Api {
    Chat,
    Messages,
    Responses(Box<Meta>),
}

/// A request ready to run.
pub(super) struct Plan {
    pub(super) kind: Kind,
    pub(super) prompt: Vec<u32>,
    pub(super) request: GenerateRequest,
    pub(super) n: usize,
    pub(super) stream: bool,
    pub(super) include_usage: bool,
    pub(super) id: String,
    pub(super) created: u64,
    pub(super) start: Instant,
    /// The request parameter a bad grammar is reported against.
    pub(super) constraint_param: &'static str,
    /// How the tools reach the model (`template` or `system_message`), when given.
    pub(super) tools_via: Option<&'static str>,
    /// The `model` the request named.
    pub(super) model: Option<String>,
    /// The scope of the API key the request came with (0: none, or one key).
    pub(super) key_scope: u64,
}

pub(super) fn finish_name(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Length => "length",
        FinishReason::Stop | FinishReason::Cancelled => "stop",
    }
}

impl Plan {
    /// Renders the conversation and validates everything that can be checked before a slot is taken.
    pub(super) fn chat(state: &Arc<State>, p: ChatParams, created: u64) -> Result<Self, ApiError> {
        Self::conversation(state, p, created, Api::Chat)
    }

    /// An Anthropic Messages request (read into a chat request).
    pub(super) fn messages(state: &Arc<State>, p: ChatParams, created: u64) -> Result<Self, ApiError> {
        Self::conversation(state, p, created, Api::Messages)
    }

    /// A Responses API request (read into a chat request).
    pub(super) fn responses(state: &Arc<State>, p: ResponsesParams, created: u64) -> Result<Self, ApiError> {
        let meta = Meta {
            echo: p.echo,
            history: p.history,
            store: p.store,
            tools: p.chat.callable(),
        };
        Self::conversation(state, p.chat, created, Api::Responses(Box::new(meta)))
    }

    /// A chat request of any API (`api` picks the answer's shape and id prefix).
    fn conversation(state: &Arc<State>, p: ChatParams, created: u64, api: Api) -> Result<Self, ApiError> {
        let start = Instant::now();
        let ready = ready(state)?;
        check_model(state, &p.common)?;
        let prompt = chat_request_prompt(ready, &p)?;
        let via = tools_via(ready, &p);
        let tools = p.callable();
        let (kind, prefix) = match api {
            Api::Messages => (Kind::Messages { tools }, "msg_"),
            Api::Chat => (Kind::Chat { tools }, "chatcmpl-"),
            Api::Responses(meta) => (Kind::Responses(meta), "resp_"),
        };
        let constraint = chat_constraint(&p)?;
        let mut plan = Self::new(ready, kind, prompt, p.common, (prefix, created, start))?;
        plan.set_constraint(constraint);
        plan.tools_via = via;
        Ok(plan)
    }

    /// Tokenizes the prompt and validates the request.
    pub(super) fn completion(state: &Arc<State>, p: CompletionParams, created: u64) -> Result<Self, ApiError> {
        let start = Instant::now();
        let ready = ready(state)?;
        check_model(state, &p.common)?;
        let vocab = ready.engine.config().vocab_size;
        let (prompt, echo) = match p.prompt {
            Prompt::Text(text) => (ready.engine.tokenize(&text)?, p.echo.then_some(text)),
            Prompt::Tokens(ids) => {
                if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
                    return Err(ApiError::invalid(
                        "prompt",
                        format!("token id {bad} is not below the vocabulary size {vocab}"),
                    ));
                }
                // Special tokens (BOS) add no text, as in an answer's text and its offsets.
                let echo = match p.echo {
                    true => Some(ready.engine.tokenizer().decode(&ids, true)?),
                    false => None,
                };
                (ids, echo)
            }
        };
        let constraint = p.constraint;
        let mut plan = Self::new(
            ready,
            Kind::Completion { echo },
            prompt,
            p.common,
            ("cmpl-", created, start),
        )?;
        plan.set_constraint(constraint);
        Ok(plan)
    }

    fn new(
        state: &Ready,
        kind: Kind,
        prompt: Vec<u32>,
        common: CommonParams,
        (prefix, created, start): (&str, u64, Instant),
    ) -> Result<Self, ApiError> {
        let engine = &state.engine;
        if prompt.is_empty() {
            return Err(ApiError::invalid("prompt", "The prompt is empty"));
        }
        if prompt.len() >= state.ctx {
            let mut e = ApiError::from(Error::PromptTooLong {
                tokens: prompt.len(),
                limit: state.ctx,
            });
            if matches!(kind, Kind::Completion { .. }) {
                e.param = Some("prompt".into());
            }
            return Err(e);
        }
        // Answers end at the context window at the latest (finish_reason "length").
        let room = state.ctx - prompt.len();
        let names = match kind {
            Kind::Completion { .. } => ("logprobs", "logprobs"),
            _ => ("top_logprobs", "prompt_logprobs"),
        };
        let max_tokens = answer_tokens(state.answer_limit, &common, (room, prompt.len()), names)?;
        common
            .sampling
            .resolve(engine.generation_config(), engine.config().vocab_size)?;
        StopMatcher::new(common.stop.clone()).map_err(|e| match ApiError::from(e) {
            e if e.status == 400 => ApiError {
                param: Some("stop".into()),
                ..e
            },
            e => e,
        })?;
        Ok(Self {
            kind,
            prompt,
            request: GenerateRequest {
                max_tokens,
                sampling: common.sampling,
                stop: common.stop,
                ctx_size: Some(state.ctx),
                logprobs: common.logprobs,
                prompt_logprobs: common.prompt_logprobs,
                cache_scope: common.cache_salt.as_deref().map_or(0, |s| scope_of(&["salt", s])),
                speculation: state.speculation,
                ..GenerateRequest::default()
            },
            n: common.n,
            stream: common.stream,
            include_usage: common.include_usage,
            id: new_id(prefix),
            created,
            start,
            constraint_param: "response_format",
            tools_via: None,
            model: common.model,
            key_scope: 0,
        })
    }

    fn set_constraint(&mut self, constraint: Option<(Constraint, &'static str)>) {
        if let Some((c, param)) = constraint {
            self.request.constraint = Some(c);
            self.constraint_param = param;
        }
    }

    /// The answer to the client for an engine error of this request: a grammar's failure
    /// names the request field the grammar came from.
    pub(super) fn error(&self, e: Error) -> ApiError {
        let mut e = ApiError::from(e);
        if e.param.as_deref() == Some("constraint") {
            e.param = Some(self.constraint_param.into());
            e.message = e
                .message
                .replace("`constraint`", &format!("`{}`", self.constraint_param));
        }
        e
    }

    /// The request of choice `i`: seeds seed, seed+1, ... when a seed was given.
    pub(super) fn choice_request(&self, i: usize) -> GenerateRequest {
        let mut request = self.request.clone();
        request.sampling.seed = request.sampling.seed.map(|s| s.wrapping_add(i as u64));
        request
    }
}

/// A chat request's grammar and the parameter it came from: a forced tool call
/// (`tool_choice` required or named), or the format asked for; not both.
fn chat_constraint(p: &ChatParams) -> Result<Option<(Constraint, &'static str)>, ApiError> {
    let forced = match (&p.tools, &p.tool_choice) {
        (Some(tools), ToolChoice::Required) => tool_call_constraint(tools, None),
        (Some(tools), ToolChoice::Function(name)) => tool_call_constraint(tools, Some(name)),
        _ => return Ok(p.constraint.clone()),
    };
    match &p.constraint {
        Some((_, param)) => Err(ApiError::invalid(
            *param,
            format!("`tool_choice` forces a tool call, so `{param}` cannot shape the answer too"),
        )),
        None => Ok(Some((forced, "tool_choice"))),
    }
}

/// The prompt ids of a chat request; `tool_choice: none` leaves the tools out of the prompt.
/// A template that does not render tools gets them in the system message.
pub(super) fn chat_request_prompt(ready: &Ready, p: &ChatParams) -> Result<Vec<u32>, ApiError> {
    match (tools_of(p), ready.template_tools) {
        (Some(tools), false) => chat_prompt(ready, &inline_tools(&p.messages, tools), None),
        (tools, _) => chat_prompt(ready, &p.messages, tools),
    }
}

/// The tools a request puts in its prompt.
fn tools_of(p: &ChatParams) -> Option<&[Tool]> {
    match p.tool_choice {
        ToolChoice::None => None,
        _ => p.tools.as_deref(),
    }
}

/// How a request's tools reach the model, for the request log.
fn tools_via(ready: &Ready, p: &ChatParams) -> Option<&'static str> {
    match (tools_of(p), ready.template_tools) {
        (None, _) => None,
        (Some(_), true) => Some("template"),
        (Some(_), false) => Some("system_message"),
    }
}

/// The prompt ids of a conversation, rendered with the generation prompt.
pub(super) fn chat_prompt(ready: &Ready, messages: &[Message], tools: Option<&[Tool]>) -> Result<Vec<u32>, ApiError> {
    let options = RenderOptions {
        add_generation_prompt: true,
        date: None,
        content_as_text: !ready.special_tokens_in_content,
    };
    Ok(ready.engine.encode_chat(messages, tools, &options)?)
}

/// The answer's length in tokens: `max_tokens` up to the context's `room`, or without it as
/// long as the room and the answer's size limit allow. The answer's entries (each choice's
/// tokens with their alternatives, and the prompt's when they are asked for) must fit the
/// server's `limit` (`--max-answer-entries`); `names` are the request's fields for the
/// alternatives of answer and prompt tokens.
fn answer_tokens(
    limit: usize,
    c: &CommonParams,
    (room, prompt_len): (usize, usize),
    (alternatives, prompt_alternatives): (&str, &str),
) -> Result<usize, ApiError> {
    let n = c.n;
    let per_token = 1 + c.logprobs.unwrap_or(0);
    let prompt_entries = match c.prompt_logprobs {
        Some(k) => n.saturating_mul(prompt_len).saturating_mul(1 + k),
        None => 0,
    };
    let over = |param: &str, what: String| {
        ApiError::invalid(
            param,
            format!("{what}, over this server's limit of {limit} token entries (--max-answer-entries)"),
        )
    };
    if prompt_entries > limit {
        let what = format!(
            "n ({n}) x prompt tokens ({prompt_len}) x (1 + {prompt_alternatives}) ({}) = {prompt_entries} entries",
            prompt_entries / n.max(1) / prompt_len.max(1)
        );
        return Err(over(
            prompt_alternatives,
            format!("{what}: ask for fewer alternatives or send a shorter prompt"),
        ));
    }
    let fits = (limit - prompt_entries) / n.saturating_mul(per_token).max(1);
    let max_tokens = match c.max_tokens {
        Some(m) => m.min(room),
        // Unasked, the answer's length is the server's to bound.
        None if fits > 0 => return Ok(room.min(fits)),
        None => room,
    };
    let entries = n
        .saturating_mul(max_tokens)
        .saturating_mul(per_token)
        .saturating_add(prompt_entries);
    match (entries > limit, c.max_tokens.is_some()) {
        (false, _) => Ok(max_tokens),
        (true, true) => Err(over(
            "max_tokens",
            format!(
                "n ({n}) x max_tokens ({max_tokens}) x (1 + {alternatives}) ({per_token}) + {prompt_entries} prompt \
                 entries = {entries} entries: ask for fewer tokens, choices or alternatives"
            ),
        )),
        (true, false) => Err(over(
            if per_token > 1 { alternatives } else { "n" },
            format!("n ({n}) x (1 + {alternatives}) ({per_token}) entries for each token leave no room for an answer"),
        )),
    }
}

pub(super) fn ready(state: &State) -> Result<&Ready, ApiError> {
    state.ready.get().ok_or_else(ApiError::loading)
}

pub(super) fn check_model(state: &State, common: &CommonParams) -> Result<(), ApiError> {
    let ids = &state.config.model_ids;
    match &common.model {
        Some(m) if !state.config.serves(m) => Err(ApiError::model_not_found(m, &ids[0])),
        _ => Ok(()),
    }
}
