//! OpenAI's JSON error body (`{"error": {"message", "type", "param", "code"}}`) and the
//! HTTP status that goes with each kind of failure.

use serde_json::{json, Value as Json};

use crate::error::Error;

/// An error answered to a client.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// Human-readable message (never contains prompt text or keys).
    pub message: String,
    /// OpenAI's `type`: `invalid_request_error`, `authentication_error`, `server_error`...
    pub kind: &'static str,
    /// The request parameter at fault, when there is one.
    pub param: Option<String>,
    /// OpenAI's machine-readable `code`.
    pub code: Option<&'static str>,
    /// Seconds for a `Retry-After` header (503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: u16, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after: None,
        }
    }

    /// 400 naming the parameter at fault.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        let param = param.into();
        Self {
            param: Some(param),
            code: Some("invalid_value"),
            ..Self::new(400, "invalid_request_error", message)
        }
    }

    /// 400 for a body that is not a JSON object.
    pub fn bad_json(message: impl Into<String>) -> Self {
        Self {
            code: Some("invalid_json"),
            ..Self::new(400, "invalid_request_error", message)
        }
    }

    /// 401: missing or wrong bearer token.
    pub fn unauthorized() -> Self {
        Self {
            code: Some("invalid_api_key"),
            ..Self::new(
                401,
                "authentication_error",
                "Incorrect or missing API key: send `Authorization: Bearer <key>`",
            )
        }
    }

    /// 404 for a stored object that is not there (`param` names what was asked for).
    pub fn not_found(param: Option<&str>, message: impl Into<String>) -> Self {
        Self {
            param: param.map(str::to_string),
            code: Some("not_found"),
            ..Self::new(404, "invalid_request_error", message)
        }
    }

    /// 404 for a route that does not exist.
    pub fn no_route(method: &str, path: &str) -> Self {
        Self {
            code: Some("unknown_url"),
            ..Self::new(
                404,
                "invalid_request_error",
                format!("Unknown request URL: {method} {path}"),
            )
        }
    }

    /// 405 for a known route with the wrong method.
    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        Self {
            code: Some("method_not_allowed"),
            ..Self::new(
                405,
                "invalid_request_error",
                format!("{method} is not allowed on {path}"),
            )
        }
    }

    /// 404 for a model this server does not serve.
    pub fn model_not_found(requested: &str, served: &str) -> Self {
        Self {
            param: Some("model".into()),
            code: Some("model_not_found"),
            ..Self::new(
                404,
                "invalid_request_error",
                format!("The model `{requested}` does not exist; this server serves `{served}`"),
            )
        }
    }

    /// 413: the body is larger than the limit.
    pub fn too_large(limit: usize) -> Self {
        Self {
            code: Some("request_too_large"),
            ..Self::new(
                413,
                "invalid_request_error",
                format!("The request body is larger than the limit of {limit} bytes"),
            )
        }
    }

    /// 503 with `Retry-After`: every worker slot and queue place is taken.
    pub fn overloaded(retry_after: u64) -> Self {
        Self {
            code: Some("server_overloaded"),
            retry_after: Some(retry_after),
            ..Self::new(
                503,
                "server_error",
                "The server is busy: the request queue is full, retry later",
            )
        }
    }

    /// 503 while the model is loading.
    pub fn loading() -> Self {
        Self {
            code: Some("model_loading"),
            retry_after: Some(5),
            ..Self::new(503, "server_error", "The model is still loading, retry later")
        }
    }

    /// 503 once the server is shutting down.
    pub fn shutting_down() -> Self {
        Self {
            code: Some("server_shutting_down"),
            retry_after: Some(1),
            ..Self::new(
                503,
                "server_error",
                "The server is shutting down (draining): retry the request on another replica",
            )
        }
    }

    /// 500 for a failure on our side.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "server_error", message)
    }

    /// A plain status with a message (408, 411, 431...).
    pub fn status(status: u16, message: impl Into<String>) -> Self {
        Self::new(status, "invalid_request_error", message)
    }

    /// The JSON body.
    pub fn body(&self) -> Json {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl axum::response::IntoResponse for ApiError {
    fn into_response(self) -> axum::response::Response {
        let status =
            axum::http::StatusCode::from_u16(self.status).unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, axum::Json(self.body())).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from(seconds));
        }
        if self.code == Some("server_shutting_down") {
            // A draining server: the client should open its next connection elsewhere.
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        response
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        match e {
            Error::InvalidParameter { name, reason } => {
                let param = name.replace('-', "_");
                ApiError::invalid(param.clone(), format!("Invalid parameter `{param}`: {reason}"))
            }
            Error::PromptTooLong { tokens, limit } => Self {
                param: Some("messages".into()),
                code: Some("context_length_exceeded"),
                ..Self::new(
                    400,
                    "invalid_request_error",
                    format!(
                        "This model's maximum context length is {limit} tokens, but the prompt has {tokens} tokens"
                    ),
                )
            },
            Error::Template(reason) => Self {
                param: Some("messages".into()),
                ..Self::new(400, "invalid_request_error", format!("Chat template: {reason}"))
            },
            Error::Constraint(reason) => Self {
                param: Some("constraint".into()),
                ..Self::new(
                    400,
                    "invalid_request_error",
                    format!("The answer's grammar failed {reason}"),
                )
            },
            Error::Tokenizer(reason) => Self::new(400, "invalid_request_error", format!("Tokenizer: {reason}")),
            Error::Unsupported(reason) => Self::new(400, "invalid_request_error", reason),
            other => Self::internal(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_errors_map_to_openai_statuses() {
        let e: ApiError = Error::InvalidParameter {
            name: "top_p",
            reason: "must be in (0, 1]".into(),
        }
        .into();
        assert_eq!((e.status, e.param.as_deref()), (400, Some("top_p")));
        let e: ApiError = Error::PromptTooLong { tokens: 9, limit: 4 }.into();
        assert_eq!((e.status, e.code), (400, Some("context_length_exceeded")));
        let body = ApiError::overloaded(1).body();
        assert_eq!(body["error"]["type"], "server_error");
        assert_eq!(ApiError::unauthorized().status, 401);
    }
}
