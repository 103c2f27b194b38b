//! What both APIs' event streams share: the channel the response body reads, the task
//! that writes it (with `:` keep-alive comments while nothing comes), and the next engine
//! event or why the stream must stop (the engine ended, the client left, the server is
//! ending running answers).

use std::convert::Infallible;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::error::ApiError;
use super::events::{aborting, Choices, TokenClock, ToolHold};
use super::plan::Plan;
use super::report::{self_reported, CLIENT_GONE};
use super::State;
use crate::chat::{Callable, ParsedToolCall};
use crate::engine::{Event, FinishReason, Generation};
use crate::error::Error;

/// Events a stream holds for a client that is not reading, before sends wait.
const STREAM_BUFFER: usize = 64;

/// Where a stream's events go (the response body reads the other end).
pub(super) type Out = mpsc::Sender<Result<SseEvent, Infallible>>;

/// What ended a stream early.
pub(super) enum Stop {
    /// The client went away.
    Gone,
    /// An error to send as the last event.
    Failed(ApiError),
}

/// Spawns `write` with the sending end of an event stream and answers with the stream
/// (with `:` keep-alive comments while nothing comes).
pub(super) fn event_stream<F, Fut>(state: &State, write: F) -> Response
where
    F: FnOnce(Out) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (out, body) = mpsc::channel(STREAM_BUFFER);
    tokio::spawn(write(out));
    let keep_alive = KeepAlive::new().interval(state.config.keep_alive_interval).text("");
    self_reported(
        Sse::new(ReceiverStream::new(body))
            .keep_alive(keep_alive)
            .into_response(),
    )
}

/// Hands `event` to the response body; `Stop::Gone` when the client left, or when it has
/// not taken an event for `--send-timeout` (the body's buffer is full: a client that stopped
/// reading), which cancels the generation and frees its slot.
pub(super) async fn deliver(state: &State, out: &Out, event: SseEvent) -> Result<(), Stop> {
    match tokio::time::timeout(state.config.send_timeout, out.send(Ok(event))).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(Stop::Gone),
        Err(_) => {
            state.metrics.stalled_stream();
            Err(Stop::Gone)
        }
    }
}

/// A stream that sends an answer's text as it comes (Anthropic's and the Responses API's).
pub(super) trait TextSink {
    /// The server.
    fn state(&self) -> &State;
    /// Where the events go.
    fn out(&self) -> &Out;
    /// The request being answered.
    fn plan(&self) -> &Plan;
    /// Sends a piece of the answer's text.
    async fn text(&mut self, text: &str) -> Result<(), Stop>;
    /// Sends the event that ends a failed stream.
    async fn error(&mut self, e: &ApiError) -> Result<(), Stop>;

    /// How the stream ended, for the log: (status, generated tokens, cached prompt
    /// tokens); a failure is sent to the client first.
    async fn outcome(&mut self, result: Result<Generation, Stop>) -> (u16, usize, usize) {
        match result {
            Ok(g) => (200, g.completion_tokens, g.cached_tokens),
            Err(Stop::Gone) => (CLIENT_GONE, 0, 0),
            Err(Stop::Failed(e)) => match self.error(&e).await {
                Ok(()) => (e.status, 0, 0),
                Err(_) => (CLIENT_GONE, 0, 0),
            },
        }
    }
}

/// Streams one answer's text into `sink` until it ends, holding back what may be a tool
/// call to one of `tools`: the generation, and the call when the answer was one (else the
/// held text has been sent too).
pub(super) async fn stream_answer<S: TextSink>(
    sink: &mut S,
    events: &mut Choices,
    tools: Callable,
    start: std::time::Instant,
) -> Result<(Generation, Option<ParsedToolCall>), Stop> {
    let mut hold = ToolHold::new(tools);
    let mut clock = TokenClock::new(start);
    let generation = loop {
        match next_event(sink.state(), sink.out(), events).await? {
            Event::Token { text, .. } => {
                clock.tick(sink.state());
                sink.text(&hold.push(&text)).await?;
            }
            Event::Text(text) => sink.text(&hold.push(&text)).await?,
            Event::Done(g) => break g,
            Event::Error(e) => return Err(Stop::Failed(sink.plan().error(e))),
        }
    };
    let (held, call) = hold.finish(generation.finish_reason == FinishReason::Stop);
    if call.is_none() {
        sink.text(&held).await?;
    }
    Ok((generation, call))
}

/// The next engine event of a stream, or why it must stop: the engine ended without one,
/// the client went away (`out` closed), or the server is ending running answers.
pub(super) async fn next_event(state: &State, out: &Out, events: &mut Choices) -> Result<Event, Stop> {
    tokio::select! {
        event = events.recv() => match event {
            Some((_, event)) => Ok(event),
            None => Err(Stop::Failed(ApiError::from(Error::EngineStopped))),
        },
        _ = out.closed() => Err(Stop::Gone),
        _ = aborting(state) => Err(Stop::Failed(ApiError::shutting_down())),
    }
}
