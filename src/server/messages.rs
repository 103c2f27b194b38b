//! A Messages API answer as Anthropic's event stream: `message_start`, `ping`, then per
//! content block `content_block_start`, `content_block_delta` (`text_delta`, or one
//! `input_json_delta` for a tool call) and `content_block_stop`, then `message_delta` with
//! the stop reason and usage, and `message_stop`. Failures end the stream with an `error`
//! event. As for OpenAI streams, a client that goes away cancels the generation.

use std::sync::Arc;

use axum::response::sse::Event as SseEvent;
use axum::response::Response;
use serde_json::{json, Value as Json};

use super::anthropic::response::{error_body, stop_reason, tool_use_id, usage};
use super::error::ApiError;
use super::events::{Admission, Choices};
use super::plan::{Kind, Plan};
use super::report::Report;
use super::sse::{deliver, event_stream, stream_answer, Out, Stop, TextSink};
use super::State;
use crate::chat::ParsedToolCall;
use crate::engine::Generation;

/// Starts the event stream of an admitted Messages request.
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
            block_open: false,
            blocks: 0,
        };
        let (status, completion, cached) = writer.run(events).await;
        drop(admission);
        report.finish(&state, status, (plan.prompt.len(), completion, cached));
    })
}

struct Writer<'a> {
    state: &'a State,
    plan: &'a Plan,
    out: Out,
    /// A text block is open.
    block_open: bool,
    /// Blocks started so far (the next block's index).
    blocks: usize,
}

impl TextSink for Writer<'_> {
    fn state(&self) -> &State {
        self.state
    }

    fn out(&self) -> &Out {
        &self.out
    }

    fn plan(&self) -> &Plan {
        self.plan
    }

    async fn text(&mut self, text: &str) -> Result<(), Stop> {
        self.push_text(text).await
    }

    async fn error(&mut self, e: &ApiError) -> Result<(), Stop> {
        self.send("error", error_body(e)).await
    }
}

impl Writer<'_> {
    /// Sends the whole stream; (status to log, generated tokens, cached prompt tokens).
    async fn run(&mut self, mut events: Choices) -> (u16, usize, usize) {
        let result = self.message(&mut events).await;
        drop(events);
        self.outcome(result).await
    }

    async fn send(&self, name: &'static str, data: Json) -> Result<(), Stop> {
        let event = SseEvent::default().event(name).data(data.to_string());
        deliver(self.state, &self.out, event).await
    }

    async fn message(&mut self, events: &mut Choices) -> Result<Generation, Stop> {
        let model = self.state.config.answer_model(self.plan.model.as_deref());
        let start = json!({"type": "message_start", "message": {
            "id": self.plan.id, "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": null, "stop_sequence": null, "usage": usage(self.plan.prompt.len(), 0, 0)}});
        self.send("message_start", start).await?;
        self.send("ping", json!({"type": "ping"})).await?;
        let tools = match &self.plan.kind {
            Kind::Messages { tools } => tools.clone(),
            _ => Default::default(),
        };
        let (generation, call) = stream_answer(self, events, tools, self.plan.start).await?;
        let reason = match call {
            Some(call) => {
                self.tool_use(call).await?;
                "tool_use"
            }
            None => {
                if self.blocks == 0 {
                    self.open_text().await?;
                }
                self.close_text().await?;
                stop_reason(&generation)
            }
        };
        let delta = json!({"type": "message_delta",
            "delta": {"stop_reason": reason, "stop_sequence": generation.stop_sequence},
            "usage": usage(generation.prompt_tokens, generation.completion_tokens, generation.cached_tokens)});
        self.send("message_delta", delta).await?;
        self.send("message_stop", json!({"type": "message_stop"})).await?;
        Ok(generation)
    }

    /// Sends a tool call as a `tool_use` block (after closing the text block, if open).
    async fn tool_use(&mut self, call: ParsedToolCall) -> Result<(), Stop> {
        self.close_text().await?;
        let index = self.blocks;
        let block = json!({"type": "tool_use", "id": tool_use_id(), "name": call.name, "input": {}});
        self.send(
            "content_block_start",
            json!({"type": "content_block_start", "index": index, "content_block": block}),
        )
        .await?;
        let delta = json!({"type": "input_json_delta", "partial_json": call.arguments.to_string()});
        self.send(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": index, "delta": delta}),
        )
        .await?;
        self.send(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": index}),
        )
        .await
    }

    async fn open_text(&mut self) -> Result<(), Stop> {
        let start = json!({"type": "content_block_start", "index": self.blocks,
                           "content_block": {"type": "text", "text": ""}});
        self.send("content_block_start", start).await?;
        self.block_open = true;
        self.blocks += 1;
        Ok(())
    }

    async fn close_text(&mut self) -> Result<(), Stop> {
        if self.block_open {
            self.block_open = false;
            let index = self.blocks - 1;
            self.send(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": index}),
            )
            .await?;
        }
        Ok(())
    }

    async fn push_text(&mut self, text: &str) -> Result<(), Stop> {
        if text.is_empty() {
            return Ok(());
        }
        if !self.block_open {
            self.open_text().await?;
        }
        let delta = json!({"type": "content_block_delta", "index": self.blocks - 1,
                           "delta": {"type": "text_delta", "text": text}});
        self.send("content_block_delta", delta).await
    }
}
