//! OpenAI's API: the request bodies of chat completions and legacy text completions as
//! serde types with their conversion into the validated request, and the answer objects
//! (whole and as stream chunks).

pub(super) mod grammar;
pub(super) mod logprobs;
mod request;
pub(super) mod response;
#[cfg(test)]
mod tests;

pub(super) use request::{ChatRequest, CompletionRequest, FunctionDef};
