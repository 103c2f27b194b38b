//! OpenAI's `logprobs` objects: chat (`{"content": [{token, logprob, bytes, top_logprobs}]}`)
//! and legacy completions (`tokens`, `token_logprobs`, `top_logprobs`, `text_offset`).

use serde_json::{json, Map, Value as Json};

use crate::sampler::TokenLogprob;
use crate::tokenizer::Tokenizer;

fn token_text(tok: &Tokenizer, id: u32) -> String {
    tok.decode(&[id], false).unwrap_or_default()
}

fn entry(tok: &Tokenizer, id: u32, logprob: f32) -> Json {
    json!({"token": token_text(tok, id), "logprob": logprob, "bytes": tok.token_bytes(id)})
}

/// A chat choice's `logprobs` for these tokens.
pub(in crate::server) fn chat(tok: &Tokenizer, list: &[TokenLogprob]) -> Json {
    let content: Vec<Json> = list
        .iter()
        .map(|t| {
            let mut e = entry(tok, t.id, t.logprob);
            e["top_logprobs"] = t.top.iter().map(|&(id, lp)| entry(tok, id, lp)).collect();
            e
        })
        .collect();
    json!({"content": content})
}

/// A completion choice's `logprobs` for these tokens; `offset` is where their text starts
/// in the choice's text (after an echoed prompt).
pub(in crate::server) fn completion(tok: &Tokenizer, list: &[TokenLogprob], offset: usize) -> Json {
    let (mut tokens, mut values, mut tops, mut offsets) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut at = offset;
    for t in list {
        let text = token_text(tok, t.id);
        offsets.push(at);
        at += text.len();
        tokens.push(Json::String(text));
        values.push(json!(t.logprob));
        let top: Map<String, Json> = t.top.iter().map(|&(id, lp)| (token_text(tok, id), json!(lp))).collect();
        tops.push(Json::Object(top));
    }
    json!({"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets})
}
