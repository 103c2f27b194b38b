//! What runs alongside an admitted request: its events, choice after choice, awaited from
//! the engine; its place among the requests in flight; token timing; the end of running
//! answers at shutdown; and the holding back of what may be a tool call.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::{Phase, State};
use crate::chat::{Callable, ParsedToolCall};
use crate::engine::{Event, Handle};
use crate::error::Error;

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
    pub(super) fn take(state: &Arc<State>, capacity: usize) -> Option<Self> {
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
    let mut phase = state.phase.subscribe();
    let _ = phase.wait_for(|p| *p == Phase::Aborting).await;
}

/// Holds back the text of an answer that may be a tool call (it starts with `{`), so that
/// it is sent as `tool_calls` instead of content.
pub(super) struct ToolHold {
    tools: Callable,
    tool_like: Option<bool>,
    held: String,
}

impl ToolHold {
    /// Holds back answers that may be calls to `tools` (none: every piece goes out at once).
    pub(super) fn new(tools: Callable) -> Self {
        Self {
            tools,
            tool_like: None,
            held: String::new(),
        }
    }

    /// At the answer's end (`stopped`: it ended on its own, not at a length limit): what
    /// was held back, and the call it makes when it is one to an offered function (then
    /// the text is not sent).
    pub(super) fn finish(&mut self, stopped: bool) -> (String, Option<ParsedToolCall>) {
        let held = std::mem::take(&mut self.held);
        let call = match stopped && !held.is_empty() {
            true => self.tools.call_in(&held),
            false => None,
        };
        (held, call)
    }

    /// The text to send now.
    pub(super) fn push(&mut self, piece: &str) -> String {
        if !self.tools.any() || self.tool_like == Some(false) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_like_answers_are_held_back() {
        let tools = Callable::of(&[serde_json::json!({"type": "function", "function": {"name": "f"}})]);
        let mut hold = ToolHold::new(tools.clone());
        assert_eq!(hold.push("  "), "");
        assert_eq!(hold.push("{\"name\""), "");
        assert_eq!(hold.held, "  {\"name\"");
        let mut hold = ToolHold::new(tools.clone());
        assert_eq!(hold.push(" Hello"), " Hello");
        assert_eq!(hold.push(" world"), " world");
        let mut hold = ToolHold::new(Callable::default());
        assert_eq!(hold.push("{"), "{");
    }

    #[test]
    fn only_calls_to_offered_functions_are_calls() {
        let tools = Callable::of(&[serde_json::json!({"type": "function", "function": {"name": "f"}})]);
        for (answer, stopped, call) in [
            (r#"{"name": "f", "parameters": {}}"#, true, true),
            (r#"{"name": "f", "parameters": {}}"#, false, false),
            (r#"{"name": "g", "parameters": {}}"#, true, false),
        ] {
            let mut hold = ToolHold::new(tools.clone());
            assert_eq!(hold.push(answer), "");
            let (held, parsed) = hold.finish(stopped);
            assert_eq!(held, answer);
            assert_eq!(parsed.is_some(), call, "{answer} {stopped}");
        }
    }
}
