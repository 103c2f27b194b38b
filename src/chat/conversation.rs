//! A multi-turn conversation: history, the rendered prompt, context-window management.
//! Each turn submits the whole rendered history; the engine's prefix cache finds what
//! earlier turns already computed, so only the new tokens are prefilled.

use std::ops::ControlFlow;
use std::time::Instant;

use crate::chat::{Callable, Message, ParsedToolCall, RenderOptions, Tool};
use crate::engine::{Engine, FinishReason, GenerateRequest, Generation};
use crate::error::{Error, Result};

/// A chat with an Instruct model.
pub struct Conversation<'e> {
    engine: &'e Engine,
    ctx: usize,
    messages: Vec<Message>,
    tools: Option<Vec<Tool>>,
    date: Option<String>,
    content_as_text: bool,
}

/// The outcome of one assistant turn.
#[derive(Debug, Clone)]
pub struct Turn {
    /// The answer and its statistics.
    pub generation: Generation,
    /// How many old messages were dropped to fit the context window (0 normally).
    pub dropped_messages: usize,
    /// The answer parsed as a tool call, when tools were offered and it is one.
    pub tool_call: Option<ParsedToolCall>,
}

impl<'e> Conversation<'e> {
    /// An empty conversation. `date` overrides the template's "Today Date" (e.g. "26 Jul 2024").
    pub fn new(
        engine: &'e Engine,
        ctx_size: Option<usize>,
        tools: Option<Vec<Tool>>,
        date: Option<String>,
    ) -> Result<Self> {
        if engine.chat_template().is_none() {
            return Err(Error::Template(format!(
                "{} has no chat template (chat_template.jinja, chat_template.json or tokenizer_config.json): a base model? use `generate`",
                engine.dir().display()
            )));
        }
        Ok(Self {
            engine,
            ctx: engine.context_window(ctx_size)?,
            messages: Vec::new(),
            tools,
            date,
            content_as_text: false,
        })
    }

    /// Encode special-token strings inside messages as plain text (default: as special
    /// tokens, HF's behaviour).
    pub fn set_content_as_text(&mut self, on: bool) {
        self.content_as_text = on;
    }

    /// The history so far.
    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    /// Appends a message to the history without generating (e.g. a saved conversation).
    pub fn push(&mut self, message: Message) {
        self.messages.push(message);
    }

    /// Sets (or with `None` removes) the system message, kept at the start of the history.
    pub fn set_system(&mut self, text: Option<String>) {
        if self.messages.first().is_some_and(|m| m.role == "system") {
            self.messages.remove(0);
        }
        if let Some(text) = text {
            self.messages.insert(0, Message::text("system", text));
        }
    }

    /// Forgets every message but the system message, and the KV cache.
    pub fn reset(&mut self) {
        self.messages.retain(|m| m.role == "system");
    }

    /// The context window in tokens.
    pub fn context_window(&self) -> usize {
        self.ctx
    }

    /// The prompt ids of the history plus the assistant header.
    pub fn prompt_ids(&self) -> Result<Vec<u32>> {
        let options = RenderOptions {
            add_generation_prompt: true,
            date: self.date.clone(),
            content_as_text: self.content_as_text,
        };
        self.engine.encode_chat(&self.messages, self.tools.as_deref(), &options)
    }

    /// Adds a user message and generates the answer (see [`Conversation::reply`]). On
    /// error the user message is taken back.
    pub fn send(
        &mut self,
        text: &str,
        request: &GenerateRequest,
        on_text: impl FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Turn> {
        self.messages.push(Message::text("user", text));
        let turn = self.reply(request, on_text);
        if turn.is_err() {
            self.messages.pop();
        }
        turn
    }

    /// Generates the assistant's answer to the history and appends it. Only tokens not
    /// already in the KV cache are prefilled. When the prompt would leave less than
    /// `min(max_tokens, window / 4)` tokens to answer, the oldest turns (never the system
    /// message) are dropped first.
    pub fn reply(&mut self, request: &GenerateRequest, on_text: impl FnMut(&str) -> ControlFlow<()>) -> Result<Turn> {
        let start = Instant::now();
        let window = self.context_window();
        let reserve = request.max_tokens.min(window / 4).max(1);
        let mut dropped = 0;
        let ids = loop {
            let ids = self.prompt_ids()?;
            if ids.len() + reserve <= window || !self.drop_oldest_turn(&mut dropped) {
                break ids;
            }
        };
        let request = GenerateRequest {
            ctx_size: Some(self.ctx),
            ..request.clone()
        };
        let generation = self.engine.generate_from_ids(&ids, &request, start, on_text)?;
        // A format grammar shapes the answer: then it is the format's, never a call.
        let tool_call = match request.constraint {
            Some(_) => None,
            None => self
                .tools
                .as_deref()
                .and_then(|t| Callable::of(t).call_in(&generation.text)),
        };
        self.messages.push(self.answer_message(&generation, tool_call.as_ref()));
        Ok(Turn {
            generation,
            dropped_messages: dropped,
            tool_call,
        })
    }

    fn answer_message(&self, generation: &Generation, tool_call: Option<&ParsedToolCall>) -> Message {
        match tool_call {
            Some(call) if generation.finish_reason != FinishReason::Cancelled => Message {
                tool_calls: vec![crate::chat::ToolCall {
                    kind: "function".into(),
                    function: crate::chat::FunctionCall {
                        name: call.name.clone(),
                        arguments: call.arguments.clone(),
                    },
                    id: None,
                }],
                ..Message::text("assistant", "")
            },
            _ => Message::text("assistant", generation.text.clone()),
        }
    }

    /// Removes the oldest non-system message and the rest of its turn (up to the next user
    /// message); false when nothing but the system message and the last message are left.
    fn drop_oldest_turn(&mut self, dropped: &mut usize) -> bool {
        let first = usize::from(self.messages.first().is_some_and(|m| m.role == "system"));
        if self.messages.len() <= first + 1 {
            return false;
        }
        let end = (first + 1..self.messages.len() - 1)
            .find(|&i| self.messages[i].role == "user")
            .unwrap_or(self.messages.len() - 1);
        *dropped += end - first;
        self.messages.drain(first..end);
        true
    }
}
