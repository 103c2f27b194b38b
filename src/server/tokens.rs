//! `POST /tokenize` and `POST /detokenize` in llama-server's shape (vLLM's field names read
//! too), so that clients can budget the context window: text (`content` or `prompt`) or a
//! conversation (`messages`, rendered as a chat request is) to ids, and ids to text.

use std::sync::Arc;

use axum::extract::{Request, State as AxumState};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value as Json_};

use super::body::parse as parse_body;
use super::error::ApiError;
use super::handlers::{counting, read_body};
use super::plan::{chat_prompt, ready};
use super::State;
use crate::chat::check_message;

/// A `POST /tokenize` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenizeRequest {
    /// llama-server's name for the text.
    content: Option<String>,
    /// vLLM's name for it.
    prompt: Option<String>,
    /// A conversation, rendered with the chat template and a generation prompt.
    messages: Option<Vec<crate::chat::Message>>,
    /// Add the BOS token (llama-server: `add_special`, default false; vLLM:
    /// `add_special_tokens`, default true).
    add_special: Option<bool>,
    add_special_tokens: Option<bool>,
    /// Also return each id's text.
    with_pieces: Option<bool>,
    /// The served model's name (checked against it).
    model: Option<String>,
}

/// A `POST /detokenize` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DetokenizeRequest {
    tokens: Vec<u32>,
    model: Option<String>,
}

fn check_model(state: &State, model: Option<&String>) -> Result<(), ApiError> {
    let ids = &state.config.model_ids;
    match model {
        Some(m) if !state.config.serves(m) => Err(ApiError::model_not_found(m, &ids[0])),
        _ => Ok(()),
    }
}

fn tokenize_body(state: &Arc<State>, body: &[u8]) -> Result<Json_, ApiError> {
    let ready = ready(state)?;
    let r: TokenizeRequest = parse_body(body)?;
    check_model(state, r.model.as_ref())?;
    let ids = match (r.content.or(r.prompt), r.messages) {
        (Some(text), None) => {
            let special = r.add_special.or(r.add_special_tokens).unwrap_or(false);
            ready.engine.tokenizer().encode(&text, special)?
        }
        (None, Some(messages)) => {
            let messages = messages
                .into_iter()
                .enumerate()
                .map(|(i, m)| check_message(i, m))
                .collect::<Result<Vec<_>, _>>()?;
            chat_prompt(ready, &messages, None)?
        }
        _ => {
            return Err(ApiError::invalid(
                "content",
                "give the text as `content` (or `prompt`), or a conversation as `messages`",
            ))
        }
    };
    let tok = ready.engine.tokenizer();
    let tokens: Json_ = match r.with_pieces.unwrap_or(false) {
        true => ids
            .iter()
            .map(|&id| json!({"id": id, "piece": tok.decode(&[id], false).unwrap_or_default()}))
            .collect(),
        false => json!(ids),
    };
    Ok(json!({"tokens": tokens, "count": ids.len(), "max_model_len": ready.ctx}))
}

/// `POST /tokenize`: `{"tokens": [...], "count": n, "max_model_len": ctx}`.
pub(super) async fn tokenize(AxumState(state): AxumState<Arc<State>>, request: Request) -> Response {
    match counting(&state, request, |state, body| tokenize_body(state, body)).await {
        Ok(body) => Json(body).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn detokenize_body(state: &Arc<State>, request: Request) -> Result<Json_, ApiError> {
    let ready = ready(state)?;
    let body = read_body(state, request.into_body()).await?;
    let r: DetokenizeRequest = parse_body(&body)?;
    check_model(state, r.model.as_ref())?;
    let vocab = ready.engine.config().vocab_size;
    if let Some((i, bad)) = r.tokens.iter().enumerate().find(|(_, &id)| id as usize >= vocab) {
        return Err(ApiError::invalid(
            format!("tokens[{i}]"),
            format!("token id {bad} is not below the vocabulary size {vocab}"),
        ));
    }
    Ok(json!({"content": ready.engine.tokenizer().decode(&r.tokens, false)?}))
}

/// `POST /detokenize`: `{"content": text}`.
pub(super) async fn detokenize(AxumState(state): AxumState<Arc<State>>, request: Request) -> Response {
    match detokenize_body(&state, request).await {
        Ok(body) => Json(body).into_response(),
        Err(e) => e.into_response(),
    }
}
