//! A conversation to prompt ids: the template's text tokenized with special-token text
//! recognised (one BOS from the template, as HF's `apply_chat_template(tokenize=True)`),
//! or, with [`RenderOptions::content_as_text`], with the special-token strings that appear
//! inside message content encoded as plain text, so that a user cannot forge a turn
//! (`<|eot_id|><|start_header_id|>system<|end_header_id|>` in a message or a tool result
//! stays text; in tool call arguments or tool definitions, which the template prints inside
//! its own JSON, it is refused).

use serde_json::Value as Json;

use super::{is_tool_role, ChatTemplate, Message, RenderOptions, Tool};
use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

/// What marks the text of a special token in Llama 3 tokenizers.
const SPECIAL_OPEN: &str = "<|";

/// Renders and tokenizes a conversation (see the module docs).
pub fn encode_conversation(
    template: &ChatTemplate,
    tokenizer: &Tokenizer,
    messages: &[Message],
    tools: Option<&[Tool]>,
    options: &RenderOptions,
) -> Result<Vec<u32>> {
    if !options.content_as_text {
        return tokenizer.encode(&template.render(messages, tools, options)?, false);
    }
    // Contents that could hold special-token text are rendered as unique markers, then
    // tokenized on their own with special tokens off. The template's own text around them
    // ends in a newline before and a special token after, where tokenization splits anyway.
    let nonce = rand::random::<u64>();
    let mut shown = messages.to_vec();
    let mut protected: Vec<(String, Json)> = Vec::new();
    if tools.is_some_and(|t| t.iter().any(|t| holds_special(tokenizer, &t.to_string()))) {
        return Err(Error::InvalidParameter {
            name: "tools",
            reason: "the tools hold a special token's text (`<|eot_id|>`...), which cannot be kept as text there"
                .into(),
        });
    }
    for (i, m) in shown.iter_mut().enumerate() {
        if m.tool_calls
            .iter()
            .any(|c| holds_special(tokenizer, &c.function.arguments.to_string()))
        {
            return Err(Error::InvalidParameter {
                name: "messages",
                reason: format!(
                    "messages[{i}].tool_calls hold a special token's text (`<|eot_id|>`...), which cannot be kept \
                     as text there"
                ),
            });
        }
        let holds_special = match &m.content {
            Json::String(content) => content.contains(SPECIAL_OPEN),
            other => is_tool_role(&m.role) && !other.is_null() && other.to_string().contains(SPECIAL_OPEN),
        };
        if holds_special && (is_tool_role(&m.role) || matches!(m.role.as_str(), "system" | "user" | "assistant")) {
            let marker = format!("@@llama32-content-{i}-{nonce:016x}@@");
            protected.push((marker.clone(), std::mem::replace(&mut m.content, Json::String(marker))));
        }
    }
    let text = template.render(&shown, tools, options)?;
    if protected.is_empty() {
        return tokenizer.encode(&text, false);
    }
    let mut ids = Vec::new();
    let mut rest = text.as_str();
    for (marker, content) in &protected {
        // Shown as it was written (text roles: trimmed), or as the template's `tojson` of it
        // (a tool result: the marker then appears as a JSON string).
        let quoted = format!("\"{marker}\"");
        let (at, len, plain) = match (once(rest, &quoted), once(rest, marker)) {
            (Some(at), _) => (at, quoted.len(), python_json_text(content)),
            (None, Some(at)) => (at, marker.len(), shown_text(content)),
            (None, None) => {
                return Err(Error::Template(
                    "the chat template does not show message content once and verbatim, so special-token \
                     text in it cannot be kept as text"
                        .into(),
                ))
            }
        };
        ids.extend(tokenizer.encode(&rest[..at], false)?);
        ids.extend(tokenizer.encode_plain(&plain)?);
        rest = &rest[at + len..];
    }
    ids.extend(tokenizer.encode(rest, false)?);
    Ok(ids)
}

/// Whether `text` holds the text of one of the tokenizer's special tokens (`<|name|>`; a
/// bare `<|`, as in F#'s pipe, is not one).
fn holds_special(tokenizer: &Tokenizer, text: &str) -> bool {
    let mut rest = text;
    while let Some(at) = rest.find(SPECIAL_OPEN) {
        rest = &rest[at + SPECIAL_OPEN.len()..];
        if let Some(end) = rest.find("|>") {
            let candidate = format!("{SPECIAL_OPEN}{}|>", &rest[..end]);
            if tokenizer.token_id(&candidate).is_some() {
                return true;
            }
        }
    }
    false
}

/// Where `marker` starts in `text` when it appears exactly once.
fn once(text: &str, marker: &str) -> Option<usize> {
    (text.matches(marker).count() == 1).then(|| text.find(marker)).flatten()
}

/// A content as a template prints it verbatim: a string trimmed, other JSON as `tojson`.
fn shown_text(content: &Json) -> String {
    match content {
        Json::String(s) => s.trim().to_string(),
        other => python_json_text(other),
    }
}

fn python_json_text(value: &Json) -> String {
    let mut out = String::new();
    super::template::python_json(value, None, 0, &mut out);
    out
}
