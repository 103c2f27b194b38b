//! Anthropic's Messages API: `POST /v1/messages` (plain and streamed) and
//! `POST /v1/messages/count_tokens`. Requests are read into the same validated chat
//! request as OpenAI's (messages, tools, sampling), so both APIs share one prompt and one
//! engine path; answers and errors come back in Anthropic's shapes.

mod request;
pub(super) mod response;
#[cfg(test)]
mod tests;

use axum::body::{to_bytes, Body};
use axum::extract::Request;
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value as Json};

pub(super) use request::MessagesRequest;
use response::error_type;

/// Rewrites the OpenAI-shaped error bodies of the Messages API's paths (`/v1/messages...`,
/// whichever layer or fallback answered: key, host and content-type checks, unknown
/// routes, wrong methods) into Anthropic's shape.
pub(super) async fn anthropic_errors(request: Request, next: Next) -> Response {
    let anthropic = request.uri().path().starts_with("/v1/messages");
    let response = next.run(request).await;
    if !anthropic {
        return response;
    }
    let status = response.status().as_u16();
    let json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if status < 400 || !json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = to_bytes(body, 1 << 20).await else {
        return (parts, Body::empty()).into_response();
    };
    let message = serde_json::from_slice::<Json>(&bytes)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_default();
    let body = json!({"type": "error", "error": {"type": error_type(status), "message": message}});
    parts.headers.remove(header::CONTENT_LENGTH);
    (parts, axum::Json(body)).into_response()
}
