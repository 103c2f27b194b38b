//! A Responses API answer as its typed event stream: `response.created`,
//! `response.in_progress`, then for a message `response.output_item.added`,
//! `response.content_part.added`, `response.output_text.delta`s, `...output_text.done`,
//! `...content_part.done`, `...output_item.done`; for a function call
//! `response.output_item.added`, `response.function_call_arguments.delta`, `...done`,
//! `...output_item.done`; then `response.completed` (or `response.incomplete`). Every
//! event carries its `sequence_number`; a failure ends the stream with an `error` event.

use std::sync::Arc;

use axum::response::sse::Event as SseEvent;
use axum::response::Response;
use serde_json::{json, Value as Json};

use super::response::{item_status, response, text_part, usage, Meta, Output, Status};
use crate::engine::{FinishReason, Generation};
use crate::server::error::ApiError;
use crate::server::events::{Admission, Choices};
use crate::server::plan::Plan;
use crate::server::report::Report;
use crate::server::sse::{deliver, event_stream, stream_answer, Out, Stop, TextSink};
use crate::server::State;

/// Starts the event stream of an admitted Responses request.
pub(crate) fn respond(
    state: Arc<State>,
    plan: Plan,
    meta: Meta,
    events: Choices,
    admission: Admission,
    report: Report,
) -> Response {
    event_stream(&state.clone(), move |out| async move {
        let mut writer = Writer {
            state: &state,
            plan: &plan,
            meta: &meta,
            out,
            sequence: 0,
            message: None,
        };
        let (status, completion, cached) = writer.run(events).await;
        drop(admission);
        report.finish(&state, status, (plan.prompt.len(), completion, cached));
    })
}

struct Writer<'a> {
    state: &'a State,
    plan: &'a Plan,
    meta: &'a Meta,
    out: Out,
    sequence: u64,
    /// The open message item: its id and the text sent so far.
    message: Option<(String, String)>,
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
        let body = json!({"code": e.code, "message": e.message, "param": e.param});
        self.send("error", body).await
    }
}

impl Writer<'_> {
    async fn run(&mut self, mut events: Choices) -> (u16, usize, usize) {
        let result = self.answer(&mut events).await;
        drop(events);
        self.outcome(result).await
    }

    /// Sends event `kind` with `fields` and the next sequence number.
    async fn send(&mut self, kind: &'static str, mut fields: Json) -> Result<(), Stop> {
        fields["type"] = json!(kind);
        fields["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        let event = SseEvent::default().event(kind).data(fields.to_string());
        deliver(self.state, &self.out, event).await
    }

    fn ids(&self) -> (&str, u64, &str) {
        (
            &self.plan.id,
            self.plan.created,
            self.state.config.answer_model(self.plan.model.as_deref()),
        )
    }

    async fn answer(&mut self, events: &mut Choices) -> Result<Generation, Stop> {
        let start = response(self.ids(), self.meta, Status::InProgress, Vec::new(), Json::Null);
        self.send("response.created", json!({"response": start})).await?;
        self.send("response.in_progress", json!({"response": start})).await?;
        let (generation, call) = stream_answer(self, events, self.meta.tools.clone(), self.plan.start).await?;
        let complete = generation.finish_reason != FinishReason::Length;
        let item = match call {
            Some(call) => {
                self.function_call(Output::call(call.name, call.arguments.to_string()))
                    .await?
            }
            None => self.close_message(complete).await?,
        };
        let usage = usage(
            generation.prompt_tokens,
            generation.completion_tokens,
            generation.cached_tokens,
        );
        let whole = response(
            self.ids(),
            self.meta,
            Status::Done { complete },
            vec![item.json(item_status(complete))],
            usage,
        );
        if self.meta.store {
            let mut conversation = self.meta.history.clone();
            conversation.push(item.message());
            self.state
                .responses
                .put(whole.clone(), conversation, self.plan.key_scope);
        }
        let last = match complete {
            true => "response.completed",
            false => "response.incomplete",
        };
        self.send(last, json!({"response": whole})).await?;
        Ok(generation)
    }

    async fn open_message(&mut self) -> Result<(), Stop> {
        let id = crate::server::params::new_id("msg_");
        let item = json!({"type": "message", "id": id, "status": "in_progress", "role": "assistant", "content": []});
        self.send("response.output_item.added", json!({"output_index": 0, "item": item}))
            .await?;
        let part = json!({"item_id": id, "output_index": 0, "content_index": 0, "part": text_part("")});
        self.send("response.content_part.added", part).await?;
        self.message = Some((id, String::new()));
        Ok(())
    }

    async fn push_text(&mut self, text: &str) -> Result<(), Stop> {
        if text.is_empty() {
            return Ok(());
        }
        if self.message.is_none() {
            self.open_message().await?;
        }
        let Some((id, sent)) = self.message.as_mut() else {
            return Ok(());
        };
        sent.push_str(text);
        let delta = json!({"item_id": id, "output_index": 0, "content_index": 0, "delta": text, "logprobs": []});
        self.send("response.output_text.delta", delta).await
    }

    /// Ends the message item (opened empty if no text came); the finished item.
    async fn close_message(&mut self, complete: bool) -> Result<Output, Stop> {
        if self.message.is_none() {
            self.open_message().await?;
        }
        let (id, text) = self.message.take().unwrap_or_default();
        let at = json!({"item_id": id, "output_index": 0, "content_index": 0});
        let mut done = at.clone();
        done["text"] = json!(text);
        done["logprobs"] = json!([]);
        self.send("response.output_text.done", done).await?;
        let mut part = at;
        part["part"] = text_part(&text);
        self.send("response.content_part.done", part).await?;
        let item = Output::Message { id, text };
        let done = json!({"output_index": 0, "item": item.json(item_status(complete))});
        self.send("response.output_item.done", done).await?;
        Ok(item)
    }

    /// Sends a function call item whole: added, its arguments, done.
    async fn function_call(&mut self, item: Output) -> Result<Output, Stop> {
        let Output::Call {
            id, name, arguments, ..
        } = &item
        else {
            return Ok(item);
        };
        let mut added = item.json("in_progress");
        added["arguments"] = json!("");
        self.send("response.output_item.added", json!({"output_index": 0, "item": added}))
            .await?;
        let at = json!({"item_id": id, "output_index": 0});
        let mut delta = at.clone();
        delta["delta"] = json!(arguments);
        self.send("response.function_call_arguments.delta", delta).await?;
        let mut done = at;
        done["arguments"] = json!(arguments);
        done["name"] = json!(name);
        self.send("response.function_call_arguments.done", done).await?;
        let finished = json!({"output_index": 0, "item": item.json("completed")});
        self.send("response.output_item.done", finished).await?;
        Ok(item)
    }
}
