//! A hostile chat template (one whose strings double in a loop) can take every byte of
//! memory while rendering, and the renderer has fuel but no memory limit. So before `chat`
//! and `serve` load the weights, a child process with its address space capped renders a
//! long conversation with tools: a template that runs it out of memory or time is refused.
//! A template that merely raises an error on that conversation is left to request time.

use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use llama32::chat::{Message, RenderOptions};

/// The hidden subcommand the child runs.
pub const SUBCOMMAND: &str = "__check-template";

/// Address space the child may use (the template, the tokenizer and the renderer).
const CHILD_MEMORY: u64 = 2 << 30;

/// How long the child may render.
const CHILD_TIME: Duration = Duration::from_secs(30);

/// Turns of the dry-run conversation (a template that grows per message meets them).
const TURNS: usize = 64;

/// Refuses `model`'s chat template when rendering a long conversation in a child process
/// exceeds [`CHILD_MEMORY`] or [`CHILD_TIME`].
pub fn check(model: &Path) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .arg(SUBCOMMAND)
        .arg(model)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if start.elapsed() > CHILD_TIME {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    match status {
        Some(s) if s.success() => Ok(()),
        Some(_) => anyhow::bail!(
            "the chat template of {} is refused: rendering a {TURNS}-message conversation took more than {} GiB of memory",
            model.display(),
            CHILD_MEMORY >> 30
        ),
        None => anyhow::bail!(
            "the chat template of {} is refused: rendering a {TURNS}-message conversation took more than {} s",
            model.display(),
            CHILD_TIME.as_secs()
        ),
    }
}

/// The child: caps its address space, renders, and exits 0 whether or not the template
/// accepted the conversation (running out of memory aborts it instead).
pub fn run_child(model: &Path) -> ExitCode {
    if rlimit::setrlimit(rlimit::Resource::AS, CHILD_MEMORY, CHILD_MEMORY).is_err() {
        return ExitCode::SUCCESS;
    }
    // A folder's template without its tokenizer (faster); a GGUF file's from its metadata.
    let template = match model.is_dir() {
        true => llama32::ChatTemplate::from_dir(model).ok().flatten(),
        false => llama32::checkpoint::open_text(model).ok().and_then(|(_, t)| t),
    };
    let Some(template) = template else {
        return ExitCode::SUCCESS;
    };
    let mut messages = vec![Message::text("system", "You are a helpful assistant.")];
    for i in 0..TURNS {
        let role = if i % 2 == 0 { "user" } else { "assistant" };
        messages.push(Message::text(role, format!("Message {i} of the conversation.")));
    }
    let tool = serde_json::json!({"type": "function", "function": {"name": "get_time", "description": "The time",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}}}});
    let options = RenderOptions {
        add_generation_prompt: true,
        date: None,
        content_as_text: true,
    };
    let _ = template.render(&messages, Some(std::slice::from_ref(&tool)), &options);
    let _ = template.render(&messages, None, &options);
    ExitCode::SUCCESS
}
