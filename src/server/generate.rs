//! Running a validated request: prompt ids, a worker slot, the `n` choices submitted to
//! the engine together (they share the prompt's KV blocks through the prefix cache), and
//! the answer as one JSON object or as server-sent events. A client that goes away
//! cancels its sequences at once.

use std::time::{Duration, Instant};

use serde_json::{json, Value as Json};

use super::api::{chat_message, new_id, tool_call_json, usage, ChatParams, CommonParams, CompletionParams, Prompt};
use super::error::ApiError;
use super::http::{write_error, write_json, Conn};
use super::queue::Acquire;
use super::sse::EventStream;
use super::{Outcome, State};
use crate::chat::{parse_tool_call, RenderOptions};
use crate::engine::{Event, FinishReason, GenerateRequest, Generation, Handle};
use crate::error::Error;
use crate::sampler::StopMatcher;

/// Status logged when the client went away before its answer was complete (as nginx does).
pub(super) const CLIENT_GONE: u16 = 499;

/// How long to wait for an event before checking that the client is still there.
const CHECK_EVERY: Duration = Duration::from_millis(50);

/// The next event of `handle`; `None` when it ended without one or `gone()` said the
/// client left (the handle is then dropped by the caller, which cancels it). `gone()` is
/// asked every [`CHECK_EVERY`], also while events keep coming.
fn next_event(handle: &Handle, checked: &mut Instant, mut gone: impl FnMut() -> bool) -> Option<Event> {
    loop {
        if checked.elapsed() >= CHECK_EVERY {
            *checked = Instant::now();
            if gone() {
                return None;
            }
        }
        if let Ok(event) = handle.recv_timeout(CHECK_EVERY) {
            return event;
        }
    }
}

enum Kind {
    Chat { tools_active: bool },
    Completion { echo: Option<String> },
}

/// A request ready to run.
pub(super) struct Plan {
    kind: Kind,
    prompt: Vec<u32>,
    request: GenerateRequest,
    n: usize,
    stream: bool,
    include_usage: bool,
    id: String,
    created: u64,
    start: Instant,
}

fn finish_name(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Length => "length",
        FinishReason::Stop | FinishReason::Cancelled => "stop",
    }
}

impl Plan {
    /// Renders the conversation and validates everything that can be checked before a slot is taken.
    pub(super) fn chat(state: &State, p: ChatParams, created: u64) -> Result<Self, ApiError> {
        let start = Instant::now();
        check_model(state, &p.common)?;
        let options = RenderOptions {
            add_generation_prompt: true,
            date: None,
        };
        let prompt = state.engine.encode_chat(&p.messages, p.tools.as_deref(), &options)?;
        let kind = Kind::Chat {
            tools_active: p.tools_active(),
        };
        Self::new(state, kind, prompt, p.common, ("chatcmpl-", created, start))
    }

    /// Tokenizes the prompt and validates the request.
    pub(super) fn completion(state: &State, p: CompletionParams, created: u64) -> Result<Self, ApiError> {
        let start = Instant::now();
        check_model(state, &p.common)?;
        let vocab = state.engine.config().vocab_size;
        let (prompt, echo) = match p.prompt {
            Prompt::Text(text) => (state.engine.tokenize(&text)?, p.echo.then_some(text)),
            Prompt::Tokens(ids) => {
                if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
                    return Err(ApiError::invalid(
                        "prompt",
                        format!("token id {bad} is not below the vocabulary size {vocab}"),
                    ));
                }
                let echo = match p.echo {
                    true => Some(state.engine.tokenizer().decode(&ids, false)?),
                    false => None,
                };
                (ids, echo)
            }
        };
        Self::new(
            state,
            Kind::Completion { echo },
            prompt,
            p.common,
            ("cmpl-", created, start),
        )
    }

    fn new(
        state: &State,
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
                ..GenerateRequest::default()
            },
            n: common.n,
            stream: common.stream,
            include_usage: common.include_usage,
            id: new_id(prefix),
            created,
            start,
        })
    }

    /// The request of choice `i`: seeds seed, seed+1, ... when a seed was given.
    fn choice_request(&self, i: usize) -> GenerateRequest {
        let mut request = self.request.clone();
        request.sampling.seed = request.sampling.seed.map(|s| s.wrapping_add(i as u64));
        request
    }

    fn object(&self, chunk: bool) -> &'static str {
        match (&self.kind, chunk) {
            (Kind::Chat { .. }, false) => "chat.completion",
            (Kind::Chat { .. }, true) => "chat.completion.chunk",
            (Kind::Completion { .. }, _) => "text_completion",
        }
    }

    fn envelope(&self, model: &str, chunk: bool, choices: Json) -> Json {
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

fn check_model(state: &State, common: &CommonParams) -> Result<(), ApiError> {
    match &common.model {
        Some(m) if *m != state.config.model_id => Err(ApiError::model_not_found(m, &state.config.model_id)),
        _ => Ok(()),
    }
}

/// Waits for a worker slot, submits the choices, then answers.
pub(super) fn execute(state: &State, plan: Plan, conn: &mut Conn, keep_alive: bool) -> Outcome {
    let permit = match state.slots.acquire(|| conn.client_gone()) {
        Acquire::Granted(permit) => permit,
        Acquire::Full => {
            let sent = write_error(conn.writer(), &ApiError::overloaded(1), keep_alive).is_ok();
            return Outcome::status(503, sent);
        }
        Acquire::Abandoned => return Outcome::status(CLIENT_GONE, false),
    };
    let handles: Result<Vec<Handle>, Error> = (0..plan.n)
        .map(|i| {
            state
                .engine
                .submit(plan.prompt.clone(), &plan.choice_request(i), plan.start)
        })
        .collect();
    let handles = match handles {
        Ok(h) => h,
        Err(e) => {
            let e = ApiError::from(e);
            let sent = write_error(conn.writer(), &e, keep_alive).is_ok();
            return Outcome::status(e.status, sent);
        }
    };
    let outcome = match plan.stream {
        true => stream(state, &plan, handles, conn),
        false => whole(state, &plan, handles, conn, keep_alive),
    };
    drop(permit);
    outcome
}

/// Holds back the text of an answer that may be a tool call (it starts with `{`), so that
/// it is sent as `tool_calls` instead of content.
struct ToolHold {
    active: bool,
    tool_like: Option<bool>,
    held: String,
}

impl ToolHold {
    fn new(active: bool) -> Self {
        Self {
            active,
            tool_like: None,
            held: String::new(),
        }
    }

    /// The text to send now.
    fn push(&mut self, piece: &str) -> String {
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

fn whole(state: &State, plan: &Plan, handles: Vec<Handle>, conn: &mut Conn, keep_alive: bool) -> Outcome {
    let model = &state.config.model_id;
    let mut choices = Vec::new();
    let (mut completion_tokens, mut cached_tokens) = (0, 0);
    let mut checked = Instant::now();
    for (i, handle) in handles.iter().enumerate() {
        let result = loop {
            match next_event(handle, &mut checked, || conn.client_gone()) {
                Some(Event::Done(g)) => break Ok(g),
                Some(Event::Error(e)) => break Err(e),
                Some(_) => {}
                None => break Err(Error::EngineStopped),
            }
        };
        let generation = match result {
            Ok(g) => g,
            Err(_) if conn.client_gone() => {
                return Outcome {
                    completion_tokens,
                    prompt_tokens: plan.prompt.len(),
                    ..Outcome::status(CLIENT_GONE, false)
                }
            }
            Err(e) => {
                let e = ApiError::from(e);
                let sent = write_error(conn.writer(), &e, keep_alive).is_ok();
                return Outcome::status(e.status, sent);
            }
        };
        completion_tokens += generation.completion_tokens;
        cached_tokens = cached_tokens.max(generation.cached_tokens);
        choices.push(choice(plan, i, &generation));
    }
    let mut body = plan.envelope(model, false, Json::Array(choices));
    body["usage"] = usage(plan.prompt.len(), completion_tokens, cached_tokens);
    let sent = write_json(conn.writer(), &body, keep_alive);
    Outcome {
        status: 200,
        prompt_tokens: plan.prompt.len(),
        completion_tokens,
        keep_alive: sent,
    }
}

fn choice(plan: &Plan, index: usize, g: &Generation) -> Json {
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
    }
}

fn stream(state: &State, plan: &Plan, handles: Vec<Handle>, conn: &mut Conn) -> Outcome {
    let model = &state.config.model_id;
    let gone = |completion_tokens| Outcome {
        prompt_tokens: plan.prompt.len(),
        completion_tokens,
        ..Outcome::status(CLIENT_GONE, false)
    };
    let Some(mut sse) = EventStream::start(conn) else {
        return gone(0);
    };
    let event = |choice: Json| {
        let mut chunk = plan.envelope(model, true, json!([choice]));
        if plan.include_usage {
            chunk["usage"] = Json::Null;
        }
        chunk
    };
    let chat = matches!(plan.kind, Kind::Chat { .. });
    let tools_active = matches!(plan.kind, Kind::Chat { tools_active: true });
    let piece_choice = |i: usize, text: &str| match chat {
        true => json!({"index": i, "delta": {"content": text}, "logprobs": null, "finish_reason": null}),
        false => json!({"index": i, "text": text, "logprobs": null, "finish_reason": null}),
    };
    let (mut completion_tokens, mut cached_tokens) = (0, 0);
    let mut checked = Instant::now();
    for (i, handle) in handles.iter().enumerate() {
        let first = match &plan.kind {
            Kind::Chat { .. } => {
                json!({"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null})
            }
            Kind::Completion { echo: Some(text) } => piece_choice(i, text),
            Kind::Completion { echo: None } => piece_choice(i, ""),
        };
        if !sse.send(&event(first)) {
            return gone(completion_tokens);
        }
        let mut hold = ToolHold::new(tools_active);
        let result = loop {
            match next_event(handle, &mut checked, || sse.client_gone()) {
                Some(Event::Token { text, .. } | Event::Text(text)) => {
                    let text = hold.push(&text);
                    if !text.is_empty() && !sse.send(&event(piece_choice(i, &text))) {
                        return gone(completion_tokens);
                    }
                }
                Some(Event::Done(g)) => break Ok(g),
                Some(Event::Error(e)) => break Err(e),
                None if sse.client_gone() => return gone(completion_tokens),
                None => break Err(Error::EngineStopped),
            }
        };
        let generation = match result {
            Ok(g) => g,
            Err(e) => {
                let e = ApiError::from(e);
                sse.send(&e.body());
                sse.done();
                return Outcome {
                    prompt_tokens: plan.prompt.len(),
                    completion_tokens,
                    ..Outcome::status(e.status, false)
                };
            }
        };
        cached_tokens = cached_tokens.max(generation.cached_tokens);
        completion_tokens += generation.completion_tokens;
        let mut reason = finish_name(generation.finish_reason);
        let held = std::mem::take(&mut hold.held);
        let call = match reason {
            "stop" if !held.is_empty() => parse_tool_call(&held),
            _ => None,
        };
        let sent = match call {
            Some(call) => {
                reason = "tool_calls";
                let mut tool_call = tool_call_json(&call.name, &call.arguments);
                tool_call["index"] = json!(0);
                let delta =
                    json!({"index": i, "delta": {"tool_calls": [tool_call]}, "logprobs": null, "finish_reason": null});
                sse.send(&event(delta))
            }
            None if !held.is_empty() => sse.send(&event(piece_choice(i, &held))),
            None => true,
        };
        let last = match chat {
            true => json!({"index": i, "delta": {}, "logprobs": null, "finish_reason": reason}),
            false => json!({"index": i, "text": "", "logprobs": null, "finish_reason": reason}),
        };
        if !sent || !sse.send(&event(last)) {
            return gone(completion_tokens);
        }
    }
    if plan.include_usage {
        let mut chunk = plan.envelope(model, true, json!([]));
        chunk["usage"] = usage(plan.prompt.len(), completion_tokens, cached_tokens);
        if !sse.send(&chunk) {
            return gone(completion_tokens);
        }
    }
    let sent = sse.done();
    Outcome {
        status: if sent { 200 } else { CLIENT_GONE },
        prompt_tokens: plan.prompt.len(),
        completion_tokens,
        keep_alive: sent,
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
