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
use crate::chat::{inline_tools, Message, RenderOptions, Tool};
use crate::constraint::Constraint;
use crate::engine::{FinishReason, GenerateRequest};
use crate::error::Error;
use crate::sampler::StopMatcher;

/// Which API a request came through, with what its answer needs.
pub(super) enum Kind {
    /// OpenAI chat completion.
    Chat { tools_active: bool },
    /// Anthropic message.
    Messages { tools_active: bool },
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
            tools_active: p.chat.tools_active(),
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
        let tools_active = p.tools_active();
        let (kind, prefix) = match api {
            Api::Messages => (Kind::Messages { tools_active }, "msg_"),
            Api::Chat => (Kind::Chat { tools_active }, "chatcmpl-"),
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
                let echo = match p.echo {
                    true => Some(ready.engine.tokenizer().decode(&ids, false)?),
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
        let max_tokens = common.max_tokens.unwrap_or(room).min(room);
        check_answer_size(state.answer_limit, common.n, max_tokens, common.logprobs)?;
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
        })
    }

    fn set_constraint(&mut self, constraint: Option<(Constraint, &'static str)>) {
        if let Some((c, param)) = constraint {
            self.request.constraint = Some(c);
            self.constraint_param = param;
        }
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

/// Refuses an answer that could hold more than `limit` token entries.
fn check_answer_size(limit: usize, n: usize, max_tokens: usize, logprobs: Option<usize>) -> Result<(), ApiError> {
    let per_token = 1 + logprobs.unwrap_or(0);
    let entries = n.saturating_mul(max_tokens).saturating_mul(per_token);
    match entries > limit {
        true => Err(ApiError::invalid(
            "max_tokens",
            format!(
                "n ({n}) x max_tokens ({max_tokens}) x (1 + top_logprobs) ({per_token}) = {entries} token entries, over \
                 this server's limit of {limit} (--max-answer-entries): ask for fewer tokens, choices or alternatives"
            ),
        )),
        false => Ok(()),
    }
}

pub(super) fn ready(state: &State) -> Result<&Ready, ApiError> {
    state.ready.get().ok_or_else(ApiError::loading)
}

fn check_model(state: &State, common: &CommonParams) -> Result<(), ApiError> {
    let ids = &state.config.model_ids;
    match &common.model {
        Some(m) if !state.config.serves(m) => Err(ApiError::model_not_found(m, &ids[0])),
        _ => Ok(()),
    }
}
