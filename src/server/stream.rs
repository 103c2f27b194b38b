//! The answer as server-sent events, as OpenAI streams: `data: {json}` per chunk,
//! `data: [DONE]` at the end, `:` comments while nothing comes (long prefills). A task
//! turns the engine's events into chunks; when the client goes away the body is dropped,
//! the task ends and the request's sequences are cancelled. When the server ends running
//! answers (shutdown grace over) the stream gets an error event and `[DONE]`.

use std::sync::Arc;

use axum::response::sse::Event as SseEvent;
use axum::response::Response;
use serde_json::{json, Value as Json};

use super::events::{Admission, Choices, TokenClock, ToolHold};
use super::openai::logprobs;
use super::openai::response::{envelope, last_piece, text_piece, tool_call_json, usage};
use super::plan::{finish_name, Kind, Plan};
use super::report::{Report, CLIENT_GONE};
use super::sse::{deliver, event_stream, next_event, Out, Stop};
use super::State;
use crate::engine::{Event, Generation};
use crate::sampler::TokenLogprob;

/// Starts the event stream of an admitted request.
pub(super) fn respond(
    state: Arc<State>,
    plan: Plan,
    events: Choices,
    admission: Admission,
    report: Report,
) -> Response {
    event_stream(&state.clone(), move |out| async move {
        let mut writer = Writer {
            state: &state,
            plan: &plan,
            out,
            completion_tokens: 0,
            cached_tokens: 0,
            pending: Vec::new(),
            offset: 0,
        };
        let status = writer.run(events).await;
        let tokens = (plan.prompt.len(), writer.completion_tokens, writer.cached_tokens);
        drop(admission);
        report.finish(&state, status, tokens);
    })
}

struct Writer<'a> {
    state: &'a State,
    plan: &'a Plan,
    out: Out,
    completion_tokens: usize,
    cached_tokens: usize,
    /// Log-probabilities of tokens whose text has not been sent yet.
    pending: Vec<TokenLogprob>,
    /// Bytes of this choice's text sent so far (completions' `text_offset`).
    offset: usize,
}

impl Writer<'_> {
    /// Sends the whole stream; the status to log.
    async fn run(&mut self, mut events: Choices) -> u16 {
        let result = self.choices(&mut events).await;
        drop(events);
        let status = match result {
            Ok(()) => 200,
            Err(Stop::Gone) => return CLIENT_GONE,
            Err(Stop::Failed(e)) => {
                if !self.send(e.body()).await {
                    return CLIENT_GONE;
                }
                e.status
            }
        };
        match self.send_raw("[DONE]".into()).await {
            true => status,
            false => CLIENT_GONE,
        }
    }

    async fn send_raw(&self, data: String) -> bool {
        deliver(self.state, &self.out, SseEvent::default().data(data))
            .await
            .is_ok()
    }

    async fn send(&self, data: Json) -> bool {
        self.send_raw(data.to_string()).await
    }

    async fn chunk(&self, choice: Json) -> Result<(), Stop> {
        let model = self.state.config.answer_model(self.plan.model.as_deref());
        let mut chunk = envelope(self.plan, model, true, json!([choice]));
        if self.plan.include_usage {
            chunk["usage"] = Json::Null;
        }
        match self.send(chunk).await {
            true => Ok(()),
            false => Err(Stop::Gone),
        }
    }

    fn is_chat(&self) -> bool {
        matches!(self.plan.kind, Kind::Chat { .. })
    }

    fn piece(&self, i: usize, text: &str) -> Json {
        text_piece(self.is_chat(), i, text)
    }

    /// Attaches the log-probabilities of the tokens whose text `choice` carries.
    fn with_logprobs(&mut self, mut choice: Json, text_len: usize) -> Json {
        let tok = self.state.ready.get().map(|r| r.engine.tokenizer());
        if let (Some(tok), false) = (tok, self.pending.is_empty()) {
            choice["logprobs"] = match self.is_chat() {
                true => logprobs::chat(tok, &self.pending),
                false => logprobs::completion(tok, &self.pending, self.offset),
            };
            self.pending.clear();
        }
        self.offset += text_len;
        choice
    }

    /// The next event, or why the stream must stop.
    async fn next(&self, events: &mut Choices) -> Result<Event, Stop> {
        next_event(self.state, &self.out, events).await
    }

    async fn choices(&mut self, events: &mut Choices) -> Result<(), Stop> {
        let mut clock = TokenClock::new(self.plan.start);
        for i in 0..self.plan.n {
            let first = match &self.plan.kind {
                Kind::Chat { .. } | Kind::Messages { .. } | Kind::Responses(_) => {
                    json!({"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null})
                }
                Kind::Completion { echo: Some(text) } => self.piece(i, text),
                Kind::Completion { echo: None } => self.piece(i, ""),
            };
            self.offset = 0;
            if let Kind::Completion { echo: Some(text) } = &self.plan.kind {
                self.offset = text.len();
            }
            self.chunk(first).await?;
            let tools = match &self.plan.kind {
                Kind::Chat { tools } => tools.clone(),
                _ => Default::default(),
            };
            let mut hold = ToolHold::new(tools);
            let generation = loop {
                match self.next(events).await? {
                    Event::Token { text, logprob, .. } => {
                        clock.tick(self.state);
                        self.pending.extend(logprob);
                        self.text(i, &mut hold, &text).await?;
                    }
                    Event::Text(text) => self.text(i, &mut hold, &text).await?,
                    Event::Done(g) => break g,
                    Event::Error(e) => return Err(Stop::Failed(self.plan.error(e))),
                }
            };
            clock.next_choice();
            self.finish_choice(i, hold, &generation).await?;
        }
        if self.plan.include_usage {
            let model = self.state.config.answer_model(self.plan.model.as_deref());
            let mut chunk = envelope(self.plan, model, true, json!([]));
            chunk["usage"] = usage(self.plan.prompt.len(), self.completion_tokens, self.cached_tokens);
            if !self.send(chunk).await {
                return Err(Stop::Gone);
            }
        }
        Ok(())
    }

    async fn text(&mut self, i: usize, hold: &mut ToolHold, text: &str) -> Result<(), Stop> {
        let text = hold.push(text);
        if text.is_empty() {
            return Ok(());
        }
        let piece = self.piece(i, &text);
        let piece = self.with_logprobs(piece, text.len());
        self.chunk(piece).await
    }

    /// Sends what was held back (a tool call, or text) and the chunk with the finish reason.
    async fn finish_choice(&mut self, i: usize, mut hold: ToolHold, generation: &Generation) -> Result<(), Stop> {
        self.cached_tokens = self.cached_tokens.max(generation.cached_tokens);
        if let Some(s) = generation.speculation {
            self.state.metrics.speculation(s.drafted, s.accepted);
        }
        self.completion_tokens += generation.completion_tokens;
        let mut reason = finish_name(generation.finish_reason);
        let (held, call) = hold.finish(reason == "stop");
        match call {
            Some(call) => {
                reason = "tool_calls";
                let mut tool_call = tool_call_json(&call.name, &call.arguments);
                tool_call["index"] = json!(0);
                let delta =
                    json!({"index": i, "delta": {"tool_calls": [tool_call]}, "logprobs": null, "finish_reason": null});
                self.chunk(delta).await?;
            }
            None if !held.is_empty() => {
                let piece = self.piece(i, &held);
                let piece = self.with_logprobs(piece, held.len());
                self.chunk(piece).await?
            }
            None => {}
        }
        let last = self.with_logprobs(last_piece(self.is_chat(), i, reason), 0);
        self.chunk(last).await
    }
}
