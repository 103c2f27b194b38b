//! A conversation to prompt ids: the template's text tokenized with special-token text
//! recognised (one BOS from the template, as HF's `apply_chat_template(tokenize=True)`),
//! or, with [`RenderOptions::content_as_text`], with the special-token strings that appear
//! inside message content encoded as plain text, so that a user cannot forge a turn
//! (`<|eot_id|><|start_header_id|>system<|end_header_id|>` in a message stays text).

use serde_json::Value as Json;

use super::{ChatTemplate, Message, RenderOptions, Tool};
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
    let mut protected: Vec<(String, String)> = Vec::new();
    for (i, m) in shown.iter_mut().enumerate() {
        let text_role = matches!(m.role.as_str(), "system" | "user" | "assistant");
        if let (true, Json::String(content)) = (text_role, &m.content) {
            if content.contains(SPECIAL_OPEN) {
                let marker = format!("@@llama32-content-{i}-{nonce:016x}@@");
                protected.push((marker.clone(), content.trim().to_string()));
                m.content = Json::String(marker);
            }
        }
    }
    let text = template.render(&shown, tools, options)?;
    if protected.is_empty() {
        return tokenizer.encode(&text, false);
    }
    let mut ids = Vec::new();
    let mut rest = text.as_str();
    for (marker, content) in &protected {
        let at = match (rest.find(marker.as_str()), rest.matches(marker.as_str()).count()) {
            (Some(at), 1) => at,
            _ => {
                return Err(Error::Template(
                    "the chat template does not show message content once and verbatim, so special-token \
                     text in it cannot be kept as text"
                        .into(),
                ))
            }
        };
        ids.extend(tokenizer.encode(&rest[..at], false)?);
        ids.extend(tokenizer.encode_plain(content)?);
        rest = &rest[at + marker.len()..];
    }
    ids.extend(tokenizer.encode(rest, false)?);
    Ok(ids)
}
