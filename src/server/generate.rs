//! Running an admitted plan (at most `parallel + queue` requests in flight, counted from
//! before the plan is made: [`super::handlers`]), the `n`
//! choices submitted to the engine together (they share the prompt's KV blocks through
//! the prefix cache), and the answer as one JSON object or as an event stream
//! ([`super::stream`], [`super::messages`]). A client that goes away drops the request,
//! which cancels its sequences at once.

use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use serde_json::Value as Json;

use super::anthropic::response::message_body;
use super::error::ApiError;
use super::events::{aborting, Admission, Choices, TokenClock};
use super::openai::logprobs;
use super::openai::response::{choice, envelope, usage};
use super::plan::{ready, Kind, Plan};
use super::report::{self_reported, Report};
use super::{messages, responses, stream, State};
use crate::engine::{Event, Generation, Handle};
use crate::error::Error;

/// Submits the choices of an admitted request, then answers (JSON or event stream).
pub(super) async fn execute(state: Arc<State>, plan: Plan, admission: Admission, report: Report) -> Response {
    let fail = |e: ApiError, report: Report| {
        report.finish(&state, e.status, (0, 0, 0));
        self_reported(e.into_response())
    };
    let Some(ready) = state.ready.get() else {
        return fail(ApiError::loading(), report);
    };
    let events = match submit(ready, &plan).await {
        Ok(handles) => Choices::new(handles),
        Err(e) => return fail(plan.error(e), report),
    };
    match (plan.stream, &plan.kind) {
        (true, Kind::Messages { .. }) => messages::respond(state.clone(), plan, events, admission, report),
        (true, Kind::Responses(meta)) => {
            let meta = (**meta).clone();
            responses::stream::respond(state.clone(), plan, meta, events, admission, report)
        }
        (true, _) => stream::respond(state.clone(), plan, events, admission, report),
        (false, _) => whole(&state, &plan, events, report).await,
    }
}

/// Submits the request's choices off the network threads (grammars compile there).
async fn submit(ready: &super::Ready, plan: &Plan) -> Result<Vec<Handle>, Error> {
    let engine = ready.engine.clone();
    let prompt = plan.prompt.clone();
    let requests: Vec<_> = (0..plan.n).map(|i| plan.choice_request(i)).collect();
    let start = plan.start;
    let submitted = tokio::task::spawn_blocking(move || {
        requests
            .iter()
            .map(|r| engine.submit(prompt.clone(), r, start))
            .collect::<Result<Vec<Handle>, Error>>()
    });
    submitted
        .await
        .unwrap_or_else(|e| Err(Error::Internal(format!("submitting the request failed: {e}"))))
}

/// Waits for every choice and answers with the whole result as one JSON object.
async fn whole(state: &State, plan: &Plan, events: Choices, report: Report) -> Response {
    let (generations, error) = collect(state, plan, events, &report).await;
    let completion_tokens = generations.iter().map(|g| g.completion_tokens).sum();
    let cached_tokens = generations.iter().map(|g| g.cached_tokens).max().unwrap_or(0);
    let tokens = (plan.prompt.len(), completion_tokens, cached_tokens);
    if let Some(e) = error {
        report.finish(state, e.status, tokens);
        return self_reported(e.into_response());
    }
    let model = state.config.answer_model(plan.model.as_deref());
    let body = match (&plan.kind, generations.first()) {
        (Kind::Messages { tools }, Some(g)) => message_body(&plan.id, model, g, tools),
        (Kind::Responses(meta), Some(g)) => {
            let (body, item) = responses::response::finished((&plan.id, plan.created, model), meta, g);
            if meta.store {
                let mut conversation = meta.history.clone();
                conversation.push(item.message());
                state.responses.put(body.clone(), conversation, plan.key_scope);
            }
            body
        }
        _ => {
            let choices = generations
                .iter()
                .enumerate()
                .map(|(i, g)| openai_choice(state, plan, i, g));
            let mut body = envelope(plan, model, false, Json::Array(choices.collect()));
            body["usage"] = usage(plan.prompt.len(), completion_tokens, cached_tokens);
            let tok = ready(state).ok().map(|r| r.engine.tokenizer());
            if let (Kind::Chat { .. }, Some(_), Some(g), Some(tok)) =
                (&plan.kind, plan.request.prompt_logprobs, generations.first(), tok)
            {
                body["prompt_logprobs"] = logprobs::prompt_vllm(tok, &plan.prompt, &g.prompt_logprobs);
            }
            body
        }
    };
    report.finish(state, 200, tokens);
    self_reported(axum::Json(body).into_response())
}

/// The finished choices, and the error that ended the answer early, if one did.
async fn collect(
    state: &State,
    plan: &Plan,
    mut events: Choices,
    report: &Report,
) -> (Vec<Generation>, Option<ApiError>) {
    let mut generations: Vec<Generation> = Vec::with_capacity(plan.n);
    let mut clock = TokenClock::new(report.start());
    let error = loop {
        let event = tokio::select! {
            event = events.recv() => event,
            _ = aborting(state) => break Some(ApiError::shutting_down()),
        };
        match event {
            Some((_, Event::Token { .. })) => clock.tick(state),
            Some((_, Event::Text(_))) => {}
            Some((_, Event::Done(g))) => {
                if let Some(s) = g.speculation {
                    state.metrics.speculation(s.drafted, s.accepted);
                }
                generations.push(g);
                clock.next_choice();
                if generations.len() == plan.n {
                    break None;
                }
            }
            Some((_, Event::Error(e))) => break Some(plan.error(e)),
            None => break Some(ApiError::from(Error::EngineStopped)),
        }
    };
    (generations, error)
}

/// Choice `i` of an OpenAI answer, with its log-probabilities when asked.
fn openai_choice(state: &State, plan: &Plan, i: usize, g: &Generation) -> Json {
    let mut c = choice(plan, i, g);
    let tok = ready(state).ok().map(|r| r.engine.tokenizer());
    if let (Some(tok), Some(_)) = (tok, plan.request.logprobs) {
        c["logprobs"] = match &plan.kind {
            Kind::Completion { echo: Some(_) } if plan.request.prompt_logprobs.is_some() => {
                logprobs::completion_echoed(tok, &plan.prompt, &g.prompt_logprobs, &g.logprobs)
            }
            Kind::Completion { echo } => logprobs::completion(tok, &g.logprobs, echo.as_ref().map_or(0, String::len)),
            _ => logprobs::chat(tok, &g.logprobs),
        };
    }
    c
}
