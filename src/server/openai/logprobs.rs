//! OpenAI's `logprobs` objects: chat (`{"content": [{token, logprob, bytes, top_logprobs}]}`)
//! and legacy completions (`tokens`, `token_logprobs`, `top_logprobs`, `text_offset`).

use serde_json::{json, Map, Value as Json};

use crate::sampler::TokenLogprob;
use crate::tokenizer::Tokenizer;

fn token_text(tok: &Tokenizer, id: u32) -> String {
    tok.decode(&[id], false).unwrap_or_default()
}

/// Bytes `id` adds to a choice's text (special tokens, such as BOS, add none).
fn text_len(tok: &Tokenizer, id: u32) -> usize {
    tok.decode(&[id], true).map_or(0, |t| t.len())
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
    let mut columns = Columns::default();
    columns.extend(tok, list, offset);
    columns.into_json()
}

/// A completion choice's `logprobs` with the echoed prompt first (`prompt` its ids,
/// `scored` the log-probabilities of all but the first, which has `null`, as OpenAI and
/// vLLM report it), then the generated tokens (`generated`).
pub(in crate::server) fn completion_echoed(
    tok: &Tokenizer,
    prompt: &[u32],
    scored: &[TokenLogprob],
    generated: &[TokenLogprob],
) -> Json {
    let mut columns = Columns::default();
    let mut at = 0;
    if let Some(&first) = prompt.first() {
        let text = token_text(tok, first);
        columns.offsets.push(at);
        at += text_len(tok, first);
        columns.tokens.push(Json::String(text));
        columns.values.push(Json::Null);
        columns.tops.push(Json::Null);
    }
    at = columns.extend(tok, scored, at);
    columns.extend(tok, generated, at);
    columns.into_json()
}

/// The four parallel lists of a completion's `logprobs`.
#[derive(Default)]
struct Columns {
    tokens: Vec<Json>,
    values: Vec<Json>,
    tops: Vec<Json>,
    offsets: Vec<usize>,
}

impl Columns {
    /// Appends `list` with its text starting at byte `at`; returns where the text ends.
    fn extend(&mut self, tok: &Tokenizer, list: &[TokenLogprob], mut at: usize) -> usize {
        for t in list {
            let text = token_text(tok, t.id);
            self.offsets.push(at);
            at += text_len(tok, t.id);
            self.tokens.push(Json::String(text));
            self.values.push(json!(t.logprob));
            let top: Map<String, Json> = t.top.iter().map(|&(id, lp)| (token_text(tok, id), json!(lp))).collect();
            self.tops.push(Json::Object(top));
        }
        at
    }

    fn into_json(self) -> Json {
        json!({"tokens": self.tokens, "token_logprobs": self.values, "top_logprobs": self.tops,
               "text_offset": self.offsets})
    }
}

/// vLLM's `prompt_logprobs`: `null` for the first prompt token, then per token an object
/// from token id to `{logprob, rank, decoded_token}` holding the token and the most likely
/// alternatives.
pub(in crate::server) fn prompt_vllm(tok: &Tokenizer, prompt: &[u32], scored: &[TokenLogprob]) -> Json {
    let mut out = Vec::with_capacity(prompt.len());
    if !prompt.is_empty() {
        out.push(Json::Null);
    }
    for t in scored {
        let mut entry = Map::new();
        let mut add = |id: u32, logprob: f32, rank: usize| {
            entry.insert(
                id.to_string(),
                json!({"logprob": logprob, "rank": rank, "decoded_token": token_text(tok, id)}),
            );
        };
        add(t.id, t.logprob, t.rank);
        for (r, &(id, lp)) in t.top.iter().enumerate() {
            if id != t.id {
                add(id, lp, r + 1);
            }
        }
        out.push(Json::Object(entry));
    }
    Json::Array(out)
}
