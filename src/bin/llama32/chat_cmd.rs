//! `llama32 chat`: one answer with `-p`, else an interactive multi-turn session on stdin.

use std::io::{self, BufRead, IsTerminal, Write};
use std::ops::ControlFlow;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use llama32::chat::{encode_conversation, parse_request, parse_tools, ChatTemplate, Message, RenderOptions, Tool};
use llama32::{Conversation, Engine, FinishReason, GenerateRequest, Tokenizer, Turn};

use crate::args::{ChatArgs, ConversationArgs};
use crate::common::{generation_json, load_engine, request, stats_line, Interrupt, Streamer};
use crate::EXIT_INTERRUPTED;

/// The history and tools given by `--messages`, `--tools` and `--system`.
fn read_conversation(a: &ConversationArgs) -> anyhow::Result<(Vec<Message>, Option<Vec<Tool>>)> {
    let (mut messages, mut tools) = match &a.messages {
        Some(path) => {
            let text = crate::common::read_flag_file("--messages", path)?;
            let request = parse_request(&text).with_context(|| format!("{}", path.display()))?;
            (request.messages, request.tools)
        }
        None => (Vec::new(), None),
    };
    if let Some(path) = &a.tools {
        let text = crate::common::read_flag_file("--tools", path)?;
        let json = serde_json::from_str(&text).map_err(|e| llama32::Error::InvalidParameter {
            name: "tools",
            reason: format!("{}: not valid JSON: {e}", path.display()),
        })?;
        tools = Some(parse_tools(json).with_context(|| format!("{}", path.display()))?);
    }
    if let Some(system) = &a.system {
        messages.retain(|m| m.role != "system");
        messages.insert(0, Message::text("system", system.clone()));
    }
    Ok((messages, tools))
}

/// Prompt ids of a conversation (for `tokenize --messages`): rendered with the
/// assistant header, tokenized without a second BOS.
pub fn conversation_ids(
    dir: &Path,
    template: Option<ChatTemplate>,
    tokenizer: &Tokenizer,
    a: &ConversationArgs,
) -> anyhow::Result<Vec<u32>> {
    let template = template.with_context(|| format!("{} has no chat template", dir.display()))?;
    let (messages, tools) = read_conversation(a)?;
    let options = RenderOptions {
        add_generation_prompt: true,
        date: a.date.clone(),
        content_as_text: a.content_as_text,
    };
    Ok(encode_conversation(
        &template,
        tokenizer,
        &messages,
        tools.as_deref(),
        &options,
    )?)
}

struct Chat<'e> {
    engine: &'e Engine,
    conversation: Conversation<'e>,
    request: GenerateRequest,
    interrupt: Interrupt,
    json: bool,
    last: Option<Turn>,
    /// The sampling flags, for the warnings a turn may need.
    sampling: crate::args::SamplingArgs,
}

impl Chat<'_> {
    /// Answers the history; returns the turn's finish reason.
    fn answer(&mut self, user: Option<&str>) -> anyhow::Result<FinishReason> {
        self.interrupt.clear();
        let mut stream = Streamer::new();
        let (interrupt, json) = (self.interrupt.clone(), self.json);
        let on_text = |piece: &str| {
            if interrupt.is_set() || (!json && !stream.write(piece)) {
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        };
        let turn = match user {
            Some(text) => self.conversation.send(text, &self.request, on_text)?,
            None => self.conversation.reply(&self.request, on_text)?,
        };
        stream.check().context("writing to stdout")?;
        crate::common::warn_if_cut(&self.sampling, &turn.generation);
        if turn.dropped_messages > 0 {
            eprintln!(
                "[context window full: dropped the {} oldest messages]",
                turn.dropped_messages
            );
        }
        let mut stdout = io::stdout().lock();
        if self.json {
            let mut v = generation_json(self.engine, &turn.generation);
            v["dropped_messages"] = turn.dropped_messages.into();
            if let Some(call) = &turn.tool_call {
                v["tool_calls"] = serde_json::json!([{"type": "function", "function": call}]);
            }
            writeln!(stdout, "{v}")?;
        } else {
            writeln!(stdout)?;
        }
        let reason = turn.generation.finish_reason;
        self.last = Some(turn);
        Ok(reason)
    }

    fn print_stats(&self) {
        let tokens = self.conversation.prompt_ids().map_or(0, |ids| ids.len());
        eprintln!(
            "[{} messages, {tokens} of {} context tokens]",
            self.conversation.messages().len(),
            self.conversation.context_window()
        );
        if let Some(turn) = &self.last {
            eprintln!("{}", stats_line(self.engine, &turn.generation));
        }
    }
}

/// Runs `llama32 chat`.
pub fn run(a: ChatArgs) -> anyhow::Result<ExitCode> {
    if a.prompt.as_deref().is_some_and(|p| p.trim().is_empty()) {
        return Err(llama32::Error::InvalidParameter {
            name: "prompt",
            reason: "the question is empty".into(),
        }
        .into());
    }
    let (messages, tools) = read_conversation(&a.conversation)?;
    let request = request(&a.sampling, a.model.ctx_size)?;
    crate::template_check::check(&a.model.model)?;
    crate::common::check_constraint(&a.sampling, &request)?;
    crate::common::warn_about_flags(&a.sampling, a.json);
    crate::common::check_draft_flags(&a.sampling.spec, &a.model)?;
    let engine = load_engine(&a.model, None)?;
    crate::common::warn_if_no_speculation(&engine, request.speculation.is_some());
    // A template that does not render tools gets them in the system message (as the server
    // does), rather than silently dropping them.
    let messages = match &tools {
        Some(list) if !engine.template_renders_tools() => {
            eprintln!(
                "[this model's chat template does not render tools: --tools are described in the system message]"
            );
            llama32::chat::inline_tools(&messages, list)
        }
        _ => messages,
    };
    let mut conversation = Conversation::new(&engine, a.model.ctx_size, tools, a.conversation.date.clone())?;
    conversation.set_content_as_text(a.conversation.content_as_text);
    for m in messages {
        conversation.push(m);
    }
    let mut chat = Chat {
        engine: &engine,
        conversation,
        request,
        interrupt: Interrupt::install(),
        json: a.json,
        last: None,
        sampling: a.sampling.clone(),
    };
    if let Some(prompt) = &a.prompt {
        let reason = chat.answer(Some(prompt))?;
        if let (false, Some(turn)) = (a.json, &chat.last) {
            eprintln!("{}", stats_line(&engine, &turn.generation));
        }
        return Ok(if reason == FinishReason::Cancelled {
            ExitCode::from(EXIT_INTERRUPTED)
        } else {
            ExitCode::SUCCESS
        });
    }
    if chat.conversation.messages().last().is_some_and(|m| m.role == "user") {
        chat.answer(None)?;
    }
    interactive(&mut chat)
}

const HELP: &str = "commands: /reset (forget the conversation), /system TEXT (set the system message), \
/stats (sizes and speed), /exit; Ctrl-C stops an answer, Ctrl-D exits";

/// Where the interactive session's lines come from: a line editor with history on a
/// terminal (arrows, Home/End, Ctrl-A/E/W/U, Ctrl-R...), plain lines from a pipe.
enum Input {
    /// The lines entered so far, oldest first (the editor's history).
    Editor(Vec<String>),
    Plain(io::Lines<io::StdinLock<'static>>),
}

/// Entries of history kept.
const HISTORY: usize = 1000;

impl Input {
    fn new() -> Self {
        match io::stdin().is_terminal() && io::stdout().is_terminal() {
            true => Self::Editor(Vec::new()),
            false => Self::Plain(io::stdin().lock().lines()),
        }
    }

    /// The next line; `None` at the end (Ctrl-D, or EOF). Ctrl-C at the prompt clears the
    /// line and says how to leave.
    fn next(&mut self) -> anyhow::Result<Option<String>> {
        use rustyline::error::ReadlineError;
        let history = match self {
            Self::Plain(lines) => return lines.next().transpose().context("reading stdin"),
            Self::Editor(history) => history,
        };
        loop {
            // An editor per line: it takes SIGINT over while it lives, and Ctrl-C during an
            // answer must reach our handler.
            let mut editor = rustyline::DefaultEditor::new().context("opening the terminal")?;
            for entry in history.iter() {
                let _ = editor.add_history_entry(entry.as_str());
            }
            match editor.readline(">>> ") {
                Ok(line) => {
                    if !line.trim().is_empty() && history.last() != Some(&line) {
                        history.push(line.clone());
                        if history.len() > HISTORY {
                            history.remove(0);
                        }
                    }
                    return Ok(Some(line));
                }
                Err(ReadlineError::Interrupted) => eprintln!("(Ctrl-D or /exit leaves)"),
                Err(ReadlineError::Eof) => {
                    println!();
                    return Ok(None);
                }
                Err(e) => return Err(e).context("reading the terminal"),
            }
        }
    }
}

fn interactive(chat: &mut Chat) -> anyhow::Result<ExitCode> {
    let mut input = Input::new();
    if matches!(input, Input::Editor(_)) {
        eprintln!("{HELP}");
    }
    loop {
        let Some(line) = input.next()? else { break };
        let line = line.trim();
        match line.split_once(' ').map_or((line, ""), |(c, rest)| (c, rest.trim())) {
            ("", _) => continue,
            ("/exit" | "/bye" | "/quit", _) => break,
            ("/reset", _) => {
                chat.conversation.reset();
                eprintln!("[conversation reset]");
            }
            ("/system", text) => {
                chat.conversation
                    .set_system((!text.is_empty()).then(|| text.to_string()));
                eprintln!("[system message {}]", if text.is_empty() { "removed" } else { "set" });
            }
            ("/stats", _) => chat.print_stats(),
            ("/help" | "/?", _) => eprintln!("{HELP}"),
            (cmd, _) if cmd.starts_with('/') => eprintln!("unknown command {cmd}; {HELP}"),
            _ => match chat.answer(Some(line)) {
                Ok(FinishReason::Cancelled) => eprintln!("[interrupted]"),
                Ok(_) => {}
                Err(e) if e.downcast_ref::<io::Error>().is_some() => return Err(e),
                Err(e) => eprintln!("error: {e:#}"),
            },
        }
    }
    Ok(ExitCode::SUCCESS)
}
