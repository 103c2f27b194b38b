//! # llama32
//!
//! A Rust engine for Meta's Llama 3.2 (1B and 3B, Instruct and base) on
//! [candle](https://github.com/huggingface/candle): load a Hugging Face checkpoint
//! directory, prefill and decode with a KV cache, and stream text.
//!
//! ```no_run
//! use std::ops::ControlFlow;
//! use llama32::{Engine, GenerateRequest, LoadOptions, SamplingParams};
//!
//! # fn main() -> llama32::Result<()> {
//! let engine = Engine::load("path/to/Llama-3.2-1B".as_ref(), &LoadOptions::default())?;
//! let request = GenerateRequest {
//!     max_tokens: 32,
//!     sampling: SamplingParams::greedy(),
//!     ..Default::default()
//! };
//! let out = engine.generate("Once upon a time", &request, |piece| {
//!     print!("{piece}");
//!     ControlFlow::Continue(())
//! })?;
//! eprintln!("\n{} tokens, {:.1} tok/s", out.completion_tokens, out.timings.decode_tokens_per_s);
//! # Ok(())
//! # }
//! ```
//!
//! Many requests at once: [`Engine::submit`] returns a [`Handle`] at once; the engine runs
//! every submitted request in the same forward passes. Read a handle's [`Event`]s from any
//! thread, and cancel it (or drop it) to stop that request alone:
//!
//! ```no_run
//! use std::time::Instant;
//! use llama32::{Engine, Event, GenerateRequest, LoadOptions};
//!
//! # fn main() -> llama32::Result<()> {
//! let engine = Engine::load("path/to/Llama-3.2-1B-Instruct".as_ref(), &LoadOptions::default())?;
//! let request = GenerateRequest { max_tokens: 64, ..Default::default() };
//! let handles: Vec<_> = ["The sea is", "Mountains are"]
//!     .into_iter()
//!     .map(|p| engine.submit(engine.tokenize(p)?, &request, Instant::now()))
//!     .collect::<llama32::Result<_>>()?;
//! let mut pieces = 0;
//! while let Some(event) = handles[0].recv() {
//!     match event {
//!         Event::Token { text, .. } => {
//!             print!("{text}");
//!             pieces += 1;
//!             if pieces == 10 {
//!                 handles[0].cancel(); // a Done with FinishReason::Cancelled follows
//!             }
//!         }
//!         Event::Text(text) => print!("{text}"),
//!         Event::Done(generation) => eprintln!("\n{:?}", generation.finish_reason),
//!         Event::Error(e) => return Err(e),
//!     }
//! }
//! drop(handles); // the other request is cancelled with its handle
//! # Ok(())
//! # }
//! ```
//!
//! The library reads no environment variables and prints nothing: configuration comes in
//! as structs, text goes out through callbacks and return values.

#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod backend;
pub mod bench;
pub mod chat;
pub mod checkpoint;
pub mod config;
pub mod constraint;
pub mod device;
pub mod engine;
pub mod error;
pub mod gguf;
#[cfg(feature = "hub")]
pub mod hub;
pub(crate) mod kv;
pub mod model;
pub mod perplexity;
pub mod sampler;
#[cfg(feature = "server")]
pub mod server;
pub mod synthetic;
pub mod tokenizer;
pub mod weights;

pub use backend::{BackendKind, Session};
pub use chat::{ChatRequest, ChatTemplate, Conversation, Message, RenderOptions, Turn};
pub use config::{GenerationConfig, LlamaConfig};
pub use device::{ComputeDType, DeviceKind};
pub use engine::{Engine, Event, FinishReason, GenerateRequest, Generation, Handle, LoadOptions, Timings};
pub use error::{Error, Result};
pub use kv::KvDType;
pub use sampler::{ResolvedSampling, Sampler, SamplingParams, StopMatcher, TokenLogprob};
pub use tokenizer::Tokenizer;
