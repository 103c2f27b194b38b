//! What a browser must not be able to make this server do: answer a DNS-rebinding page
//! (a loopback server answers only local `Host` names, plus `--allowed-host`), take a
//! cross-site POST (an `Origin` other than the server's own is refused unless `--cors`
//! allows it), or read a "simple" `text/plain` body as JSON (POST bodies must say
//! `Content-Type: application/json`, else 415).

use std::sync::Arc;

use axum::extract::{Request, State as AxumState};
use axum::http::{header, HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::State;

/// Host names a loopback server always answers.
const LOCAL_HOSTS: [&str; 4] = ["localhost", "127.0.0.1", "[::1]", "::1"];

/// The host name of a `Host` header value (without the port).
fn host_name(host: &str) -> &str {
    match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().map_or(host, |inside| &host[..inside.len() + 2]),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    }
}

fn header(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Why `request` is refused, if it is.
fn refusal(state: &State, method: &Method, headers: &HeaderMap) -> Option<ApiError> {
    let host = header(headers, header::HOST);
    if let Some(host) = host.filter(|_| state.loopback) {
        let name = host_name(host).to_ascii_lowercase();
        let allowed = LOCAL_HOSTS.contains(&name.as_str()) || state.config.allowed_hosts.contains(&name);
        if !allowed {
            return Some(ApiError::status(
                403,
                format!("Host `{name}` is not served: this server listens on loopback (start it with --allowed-host {name} to allow it)"),
            ));
        }
    }
    if *method != Method::POST && *method != Method::DELETE {
        return None;
    }
    if let Some(origin) = header(headers, header::ORIGIN) {
        let cors = &state.config.cors_origins;
        let same = host.is_some_and(|h| origin.split_once("://").is_some_and(|(_, rest)| rest == h));
        if !same && !cors.iter().any(|o| o == "*" || o == origin) {
            return Some(ApiError::status(
                403,
                format!("Cross-origin requests from `{origin}` are refused (start the server with --cors {origin} to allow them)"),
            ));
        }
    }
    let json = header(headers, header::CONTENT_TYPE).is_some_and(|t| {
        t.split(';')
            .next()
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
    });
    let encoded = header(headers, header::CONTENT_ENCODING).filter(|e| !e.trim().eq_ignore_ascii_case("identity"));
    match (*method == Method::POST, json, encoded) {
        (true, false, _) => Some(ApiError::status(
            415,
            "Send the JSON body with `Content-Type: application/json` (curl: -H 'Content-Type: application/json')",
        )),
        (true, true, Some(encoding)) => Some(ApiError::status(
            415,
            format!("Request bodies are read as sent: `Content-Encoding: {encoding}` is not supported"),
        )),
        _ => None,
    }
}

/// The middleware.
pub(super) async fn guard(AxumState(state): AxumState<Arc<State>>, request: Request, next: Next) -> Response {
    match refusal(&state, request.method(), request.headers()) {
        Some(e) => e.into_response(),
        None => next.run(request).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_lose_their_port() {
        assert_eq!(host_name("localhost:8080"), "localhost");
        assert_eq!(host_name("[::1]:8080"), "[::1]");
        assert_eq!(host_name("[::1]"), "[::1]");
        assert_eq!(host_name("evil.example"), "evil.example");
    }
}
