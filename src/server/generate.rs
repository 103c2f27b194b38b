//! Running a validated request: prompt ids, admission (at most `parallel + queue`
//! requests in flight), the `n` choices submitted to the engine together (they share the
//! prompt's KV blocks through the prefix cache), and the answer as one JSON object; the
//! event stream is in [`super::stream`]. A client that goes away drops the request, which
//! cancels its sequences at once.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use axum::response::{IntoResponse, Response};
use serde_json::{json, Value as Json};

use super::api::{
    chat_message, new_id, tool_call_constraint, usage, ChatParams, CommonParams, CompletionParams, Prompt, ToolChoice,
};
use super::error::ApiError;
use super::routes::{Report, SelfReported};
use super::{anthropic, logprobs, messages, stream, Phase, Ready, State};
use crate::chat::RenderOptions;
use crate::constraint::Constraint;
use crate::engine::{Event, FinishReason, GenerateRequest, Generation, Handle};
use crate::error::Error;
use crate::sampler::StopMatcher;

/// The events of a request's choices, choice after choice, awaited from the engine's
/// handles (no thread, no polling). Dropping it drops the handles, which cancels the
/// sequences (the client left, the server is ending answers).
pub(super) struct Choices {
    handles: Vec<Handle>,
    current: usize,
}

impl Choices {
    pub(super) fn new(handles: Vec<Handle>) -> Self {
        Self { handles, current: 0 }
    }

    /// The next event and the choice it belongs to; `None` once every choice has ended.
    /// A choice whose handle closes without an end reports [`Error::EngineStopped`].
    pub(super) async fn recv(&mut self) -> Option<(usize, Event)> {
        let handle = self.handles.get(self.current)?;
        let event = handle.recv_async().await.unwrap_or(Event::Error(Error::EngineStopped));
        let index = self.current;
        if matches!(event, Event::Done(_) | Event::Error(_)) {
            self.current += 1;
        }
        Some((index, event))
    }
}

/// A generation request counted against the server's capacity until dropped.
pub(super) struct Admission(Arc<State>);

impl Admission {
    fn take(state: &Arc<State>, capacity: usize) -> Option<Self> {
        let before = state.in_flight.fetch_add(1, Ordering::SeqCst);
        if before >= capacity {
            state.in_flight.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(Self(state.clone()))
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Per-choice token timing for the latency histograms.
pub(super) struct TokenClock {
    pub(super) start: Instant,
    last: Option<Instant>,
}

impl TokenClock {
    pub(super) fn new(start: Instant) -> Self {
        Self { start, last: None }
    }

    /// Records one generated token: time to first token, then inter-token latency.
    pub(super) fn tick(&mut self, state: &State) {
        let now = Instant::now();
        match self.last {
            None => state.metrics.time_to_first_token((now - self.start).as_secs_f64()),
            Some(last) => state.metrics.inter_token((now - last).as_secs_f64()),
        }
        self.last = Some(now);
    }

    /// The next choice starts its own sequence of tokens.
    pub(super) fn next_choice(&mut self) {
        self.last = None;
    }
}

/// Waits until the server ends running answers (after the shutdown grace period).
pub(super) async fn aborting(state: &State) {
    let mut phase = state.phase.clone();
    let _ = phase.wait_for(|p| *p == Phase::Aborting).await;
}

/// Which API a request came through, with what its answer needs.
pub(super) enum Kind {
    /// OpenAI chat completion.
    Chat { tools_active: bool },
    /// Anthropic message.
    Messages { tools_active: bool },
    /// OpenAI text completion.
    Completion { echo: Option<String> },
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
        Self::conversation(state, p, created, false)
    }

    /// An Anthropic Messages request (read into a chat request).
    pub(super) fn messages(state: &Arc<State>, p: ChatParams, created: u64) -> Result<Self, ApiError> {
        Self::conversation(state, p, created, true)
    }

    /// A chat request of either API (`anthropic` picks the answer's shape and id prefix).
    fn conversation(state: &Arc<State>, p: ChatParams, created: u64, anthropic: bool) -> Result<Self, ApiError> {
        let start = Instant::now();
        let ready = ready(state)?;
        check_model(state, &p.common)?;
        let prompt = chat_prompt(ready, &p)?;
        let tools_active = p.tools_active();
        let (kind, prefix) = match anthropic {
            true => (Kind::Messages { tools_active }, "msg_"),
            false => (Kind::Chat { tools_active }, "chatcmpl-"),
        };
        let constraint = chat_constraint(&p);
        let mut plan = Self::new(ready, kind, prompt, p.common, (prefix, created, start))?;
        plan.set_constraint(constraint);
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
        let constraint = p.constraint.map(|c| (c, "response_format"));
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
        })
    }

    fn set_constraint(&mut self, constraint: Option<(Constraint, &'static str)>) {
        if let Some((c, param)) = constraint {
            self.request.constraint = Some(c);
            self.constraint_param = param;
        }
    }

    /// The request of choice `i`: seeds seed, seed+1, ... when a seed was given.
    fn choice_request(&self, i: usize) -> GenerateRequest {
        let mut request = self.request.clone();
        request.sampling.seed = request.sampling.seed.map(|s| s.wrapping_add(i as u64));
        request
    }

    pub(super) fn object(&self, chunk: bool) -> &'static str {
        match (&self.kind, chunk) {
            (Kind::Chat { .. }, false) => "chat.completion",
            (Kind::Chat { .. }, true) => "chat.completion.chunk",
            (Kind::Completion { .. }, _) => "text_completion",
            (Kind::Messages { .. }, _) => "message",
        }
    }

    pub(super) fn envelope(&self, model: &str, chunk: bool, choices: Json) -> Json {
        json!({
            "id": self.id,
            "object": self.object(chunk),
            "created": self.created,
            "model": model,
            "system_fingerprint": null,
            "choices": choices,
        })
    }
}

/// A chat request's grammar and the parameter it came from: a forced tool call
/// (`tool_choice` required or named), else `response_format`.
fn chat_constraint(p: &ChatParams) -> Option<(Constraint, &'static str)> {
    match (&p.tools, &p.tool_choice) {
        (Some(tools), ToolChoice::Required) => Some((tool_call_constraint(tools, None), "tool_choice")),
        (Some(tools), ToolChoice::Function(name)) => Some((tool_call_constraint(tools, Some(name)), "tool_choice")),
        _ => p.constraint.clone().map(|c| (c, "response_format")),
    }
}

/// The prompt ids of a chat request; `tool_choice: none` leaves the tools out of the prompt.
pub(super) fn chat_prompt(ready: &Ready, p: &ChatParams) -> Result<Vec<u32>, ApiError> {
    let options = RenderOptions {
        add_generation_prompt: true,
        date: None,
        content_as_text: !ready.special_tokens_in_content,
    };
    let tools = match p.tool_choice {
        ToolChoice::None => None,
        _ => p.tools.as_deref(),
    };
    Ok(ready.engine.encode_chat(&p.messages, tools, &options)?)
}

pub(super) fn ready(state: &State) -> Result<&Ready, ApiError> {
    state.ready.get().ok_or_else(ApiError::loading)
}

fn check_model(state: &State, common: &CommonParams) -> Result<(), ApiError> {
    let ids = &state.config.model_ids;
    match &common.model {
        Some(m) if !ids.contains(m) => Err(ApiError::model_not_found(m, &ids[0])),
        _ => Ok(()),
    }
}

/// Admits the request, submits its choices, then answers (JSON or event stream).
pub(super) async fn execute(state: Arc<State>, plan: Plan, report: Report) -> Response {
    let fail = |e: ApiError, report: Report| {
        report.finish(&state, e.status, (0, 0, 0));
        self_reported(e.into_response())
    };
    let Some(ready) = state.ready.get() else {
        return fail(ApiError::loading(), report);
    };
    let Some(admission) = Admission::take(&state, ready.capacity) else {
        return fail(ApiError::overloaded(1), report);
    };
    let handles: Result<Vec<Handle>, Error> = (0..plan.n)
        .map(|i| {
            ready
                .engine
                .submit(plan.prompt.clone(), &plan.choice_request(i), plan.start)
        })
        .collect();
    let events = match handles {
        Ok(handles) => Choices::new(handles),
        Err(e) => {
            let mut e = ApiError::from(e);
            if e.param.as_deref() == Some("constraint") {
                e.param = Some(plan.constraint_param.into());
                e.message = e
                    .message
                    .replace("`constraint`", &format!("`{}`", plan.constraint_param));
            }
            return fail(e, report);
        }
    };
    match (plan.stream, &plan.kind) {
        (true, Kind::Messages { .. }) => messages::respond(state.clone(), plan, events, admission, report),
        (true, _) => stream::respond(state.clone(), plan, events, admission, report),
        (false, _) => whole(&state, &plan, events, report).await,
    }
}

/// Marks a response as logged by its handler.
pub(super) fn self_reported(mut response: Response) -> Response {
    response.extensions_mut().insert(SelfReported);
    response
}

async fn whole(state: &State, plan: &Plan, mut events: Choices, report: Report) -> Response {
    let model = &state.config.model_ids[0];
    let mut generations: Vec<Generation> = Vec::with_capacity(plan.n);
    let mut clock = TokenClock::new(report.start());
    let error = loop {
        let event = tokio::select! {
            event = events.recv() => event,
            _ = aborting(state) => break Some(ApiError::shutting_down()),
        };
        match event {
            Some((_, Event::Token { .. })) => clock.tick(state),
            Some((_, Event::Text(_))) => {}
            Some((_, Event::Done(g))) => {
                if let Some(s) = g.speculation {
                    state.metrics.speculation(s.drafted, s.accepted);
                }
                generations.push(g);
                clock.next_choice();
                if generations.len() == plan.n {
                    break None;
                }
            }
            Some((_, Event::Error(e))) => break Some(ApiError::from(e)),
            None => break Some(ApiError::from(Error::EngineStopped)),
        }
    };
    let completion_tokens = generations.iter().map(|g| g.completion_tokens).sum();
    let cached_tokens = generations.iter().map(|g| g.cached_tokens).max().unwrap_or(0);
    let tokens = (plan.prompt.len(), completion_tokens, cached_tokens);
    if let Some(e) = error {
        report.finish(state, e.status, tokens);
        return self_reported(e.into_response());
    }
    let body = match (&plan.kind, generations.first()) {
        (Kind::Messages { tools_active }, Some(g)) => anthropic::message_body(&plan.id, model, g, *tools_active),
        _ => {
            let tok = ready(state).ok().map(|r| r.engine.tokenizer());
            let choices = generations
                .iter()
                .enumerate()
                .map(|(i, g)| {
                    let mut c = choice(plan, i, g);
                    if let (Some(tok), Some(_)) = (tok, plan.request.logprobs) {
                        c["logprobs"] = match &plan.kind {
                            Kind::Completion { echo } => {
                                logprobs::completion(tok, &g.logprobs, echo.as_ref().map_or(0, String::len))
                            }
                            _ => logprobs::chat(tok, &g.logprobs),
                        };
                    }
                    c
                })
                .collect();
            let mut body = plan.envelope(model, false, Json::Array(choices));
            body["usage"] = usage(plan.prompt.len(), completion_tokens, cached_tokens);
            body
        }
    };
    report.finish(state, 200, tokens);
    self_reported(axum::Json(body).into_response())
}

/// Holds back the text of an answer that may be a tool call (it starts with `{`), so that
/// it is sent as `tool_calls` instead of content.
pub(super) struct ToolHold {
    active: bool,
    tool_like: Option<bool>,
    pub(super) held: String,
}

impl ToolHold {
    pub(super) fn new(active: bool) -> Self {
        Self {
            active,
            tool_like: None,
            held: String::new(),
        }
    }

    /// The text to send now.
    pub(super) fn push(&mut self, piece: &str) -> String {
        if !self.active || self.tool_like == Some(false) {
            return piece.to_string();
        }
        self.held.push_str(piece);
        if self.tool_like.is_none() {
            let start = self.held.trim_start();
            if !start.is_empty() {
                self.tool_like = Some(start.starts_with('{'));
            }
            if self.tool_like == Some(false) {
                return std::mem::take(&mut self.held);
            }
        }
        String::new()
    }
}

pub(super) fn choice(plan: &Plan, index: usize, g: &Generation) -> Json {
    let reason = finish_name(g.finish_reason);
    match &plan.kind {
        Kind::Chat { tools_active } => {
            let (message, reason) = chat_message(&g.text, *tools_active, reason);
            json!({"index": index, "message": message, "logprobs": null, "finish_reason": reason})
        }
        Kind::Completion { echo } => {
            let text = format!("{}{}", echo.as_deref().unwrap_or(""), g.text);
            json!({"index": index, "text": text, "logprobs": null, "finish_reason": reason})
        }
        Kind::Messages { .. } => Json::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_like_answers_are_held_back() {
        let mut hold = ToolHold::new(true);
        assert_eq!(hold.push("  "), "");
        assert_eq!(hold.push("{\"name\""), "");
        assert_eq!(hold.held, "  {\"name\"");
        let mut hold = ToolHold::new(true);
        assert_eq!(hold.push(" Hello"), " Hello");
        assert_eq!(hold.push(" world"), " world");
        let mut hold = ToolHold::new(false);
        assert_eq!(hold.push("{"), "{");
    }
}
