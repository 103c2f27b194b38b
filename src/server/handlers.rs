//! The generation endpoints: read the body (size and time limits), parse it into its
//! API's wire type, convert it into a plan, and run it.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State as AxumState};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use http_body_util::BodyExt;
use serde_json::json;

use super::anthropic::MessagesRequest;
use super::body::parse as parse_body;
use super::error::ApiError;
use super::events::Admission;
use super::generate;
use super::openai::{ChatRequest, CompletionRequest};
use super::params::unix_now;
use super::plan::{self, Plan};
use super::report::{self_reported, Report};
use super::routes::KeyScope;
use super::State;

type Shared = AxumState<Arc<State>>;

/// Most bytes read and thrown away from a body that is over the limit, so that the client
/// sees the 413 instead of a reset connection.
const DRAIN_LIMIT: usize = 64 << 20;

/// Reads a body of at most `max_body_bytes` within `request_timeout` (413, 408).
pub(super) async fn read_body(state: &State, body: Body) -> Result<Bytes, ApiError> {
    let limit = state.config.max_body_bytes;
    let read = async {
        let mut body = body;
        let mut bytes = Vec::new();
        let mut seen = 0usize;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ApiError::status(400, format!("Could not read the request body: {e}")))?;
            let Ok(data) = frame.into_data() else { continue };
            seen = seen.saturating_add(data.len());
            if seen > DRAIN_LIMIT {
                break;
            }
            if seen <= limit {
                bytes.extend_from_slice(&data);
            }
        }
        match seen > limit {
            true => Err(ApiError::too_large(limit)),
            false => Ok(Bytes::from(bytes)),
        }
    };
    match tokio::time::timeout(state.config.request_timeout, read).await {
        Ok(result) => result,
        Err(_) => Err(ApiError::status(408, "The request body did not arrive in time")),
    }
}

/// What every generation endpoint does before the answer: readiness, body, admission
/// (before the plan, so that what waits beyond the server's capacity costs no more than
/// its body; after the body, so that slow senders hold no slot), parsing, plan.
async fn prepare(
    state: &Arc<State>,
    request: Request,
    plan: impl FnOnce(&Arc<State>, &Bytes, u64) -> Result<Plan, ApiError> + Send + 'static,
) -> Result<(Plan, Admission, Report), (ApiError, Report)> {
    let report = Report::new(&request).armed(state);
    let key_scope = request.extensions().get::<KeyScope>().map_or(0, |k| k.0);
    let Some(ready) = state.ready.get() else {
        return Err((ApiError::loading(), report));
    };
    if state.draining() {
        return Err((ApiError::shutting_down(), report));
    }
    let announced = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > state.config.max_body_bytes as u64) {
        return Err((ApiError::too_large(state.config.max_body_bytes), report));
    }
    let body = match read_body(state, request.into_body()).await {
        Ok(body) => body,
        Err(e) => return Err((e, report)),
    };
    let Some(admission) = Admission::take(state, ready.capacity) else {
        return Err((ApiError::overloaded(1), report));
    };
    // Rendering the chat template and tokenizing run off the network threads.
    let planned = off_the_network(state, move |state| plan(state, &body, key_scope)).await;
    match planned {
        Ok(mut plan) => {
            let report = report.with_tools(plan.tools_via);
            plan.request.cache_scope = combine_scopes(key_scope, plan.request.cache_scope);
            plan.key_scope = key_scope;
            Ok((plan, admission, report))
        }
        Err(e) => Err((e, report)),
    }
}

/// The scope of a request made with a key of scope `key` and salted into `salt`.
fn combine_scopes(key: u64, salt: u64) -> u64 {
    match (key, salt) {
        (0, s) | (s, 0) => s,
        (k, s) => super::params::scope_of(&[&k.to_string(), &s.to_string()]),
    }
}

async fn generation(state: Arc<State>, prepared: Result<(Plan, Admission, Report), (ApiError, Report)>) -> Response {
    match prepared {
        Ok((plan, admission, report)) => generate::execute(state, plan, admission, report).await,
        Err((error, report)) => {
            report.finish(&state, error.status, (0, 0, 0));
            self_reported(error.into_response())
        }
    }
}

pub(super) async fn chat(AxumState(state): Shared, request: Request) -> Response {
    let prepared = prepare(&state, request, |state, body, _| {
        Plan::chat(state, parse_body::<ChatRequest>(body)?.into_params()?, unix_now())
    })
    .await;
    generation(state, prepared).await
}

pub(super) async fn completions(AxumState(state): Shared, request: Request) -> Response {
    let prepared = prepare(&state, request, |state, body, _| {
        Plan::completion(state, parse_body::<CompletionRequest>(body)?.into_params()?, unix_now())
    })
    .await;
    generation(state, prepared).await
}

pub(super) async fn messages(AxumState(state): Shared, request: Request) -> Response {
    let prepared = prepare(&state, request, |state, body, _| {
        Plan::messages(
            state,
            parse_body::<MessagesRequest>(body)?.into_params(true)?,
            unix_now(),
        )
    })
    .await;
    generation(state, prepared).await
}

pub(super) async fn responses(AxumState(state): Shared, request: Request) -> Response {
    let prepared = prepare(&state, request, |state, body, scope| {
        Plan::responses(state, super::responses::read(state, body, scope)?, unix_now())
    })
    .await;
    generation(state, prepared).await
}

/// Runs `work` on a request's body off the network threads, a few at a time (the rest
/// wait, each holding only its body): what the token counting endpoints do.
pub(super) async fn counting<T: Send + 'static>(
    state: &Arc<State>,
    request: Request,
    work: impl FnOnce(&Arc<State>, &Bytes) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let body = read_body(state, request.into_body()).await?;
    off_the_network(state, move |state| work(state, &body)).await
}

/// Runs `work` on a blocking thread, a few at a time (the rest wait, each holding only its
/// body): the task keeps its permit until it ends, even when its client has gone.
async fn off_the_network<T: Send + 'static>(
    state: &Arc<State>,
    work: impl FnOnce(&Arc<State>) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let permit = state
        .planning
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| ApiError::shutting_down())?;
    let state = state.clone();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        work(&state)
    })
    .await
    .unwrap_or_else(|e| Err(ApiError::internal(format!("planning the request failed: {e}"))))
}

/// `POST /v1/messages/count_tokens`: the prompt tokens the same body would use.
pub(super) async fn count_tokens(AxumState(state): Shared, request: Request) -> Response {
    let counted = counting(&state, request, |state, body| {
        let ready = plan::ready(state)?;
        let params = parse_body::<MessagesRequest>(body)?.into_params(false)?;
        plan::check_model(state, &params.common)?;
        plan::chat_request_prompt(ready, &params).map(|ids| ids.len())
    });
    match counted.await {
        Ok(n) => Json(json!({"input_tokens": n})).into_response(),
        Err(e) => e.into_response(),
    }
}
