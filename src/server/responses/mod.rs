//! OpenAI's Responses API: `POST /v1/responses` (plain and streamed),
//! `POST /v1/responses/input_tokens`, and `GET` / `DELETE /v1/responses/{id}` for stored
//! responses. A request is read into the same validated chat request as a chat completion
//! (one prompt and one engine path); answers come back as response objects and typed events.

mod request;
pub(super) mod response;
mod store;
pub(super) mod stream;

use std::sync::Arc;

use axum::extract::{Path, Request, State as AxumState};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::json;

pub(super) use request::{ResponsesParams, ResponsesRequest};
pub(super) use store::ResponseStore;

use super::body::parse as parse_body;
use super::error::ApiError;
use super::handlers::counting;
use super::plan::{chat_request_prompt, check_model, ready};
use super::routes::KeyScope;
use super::State;

/// Reads a Responses body into its validated request, continuing the stored conversation
/// that `previous_response_id` names (404 when the key of scope `scope` has not stored it).
pub(super) fn read(state: &State, body: &[u8], scope: u64) -> Result<ResponsesParams, ApiError> {
    let request: ResponsesRequest = parse_body(body)?;
    let earlier = match request.previous() {
        None => Vec::new(),
        Some(id) => match state.responses.get(id, scope) {
            Some(stored) => stored.conversation,
            None => {
                return Err(ApiError::not_found(
                    Some("previous_response_id"),
                    format!("Previous response with id '{id}' not found."),
                ))
            }
        },
    };
    request.into_params(earlier)
}

/// `POST /v1/responses/input_tokens`: the prompt tokens the same body would use.
pub(super) async fn input_tokens(AxumState(state): AxumState<Arc<State>>, request: Request) -> Response {
    let scope = request.extensions().get::<KeyScope>().map_or(0, |k| k.0);
    let counted = counting(&state, request, move |state, body| {
        let ready = ready(state)?;
        let params = read(state, body, scope)?;
        check_model(state, &params.chat.common)?;
        Ok(chat_request_prompt(ready, &params.chat)?.len())
    });
    match counted.await {
        Ok(n) => Json(json!({"object": "response.input_tokens", "input_tokens": n})).into_response(),
        Err(e) => e.into_response(),
    }
}

fn not_stored(id: &str) -> ApiError {
    ApiError::not_found(None, format!("Response with id '{id}' not found."))
}

/// `GET /v1/responses/{id}`: a stored response.
pub(super) async fn retrieve(
    AxumState(state): AxumState<Arc<State>>,
    Path(id): Path<String>,
    scope: Option<Extension<KeyScope>>,
) -> Response {
    match state.responses.get(&id, scope.map_or(0, |s| s.0 .0)) {
        Some(stored) => Json(stored.response).into_response(),
        None => not_stored(&id).into_response(),
    }
}

/// `DELETE /v1/responses/{id}`: forgets a stored response.
pub(super) async fn delete(
    AxumState(state): AxumState<Arc<State>>,
    Path(id): Path<String>,
    scope: Option<Extension<KeyScope>>,
) -> Response {
    match state.responses.delete(&id, scope.map_or(0, |s| s.0 .0)) {
        true => Json(json!({"id": id, "object": "response", "deleted": true})).into_response(),
        false => not_stored(&id).into_response(),
    }
}
