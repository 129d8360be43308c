//! A fake LLM provider for llmesh's end-to-end tests and benchmarks.
//!
//! It speaks providers' wire formats (OpenAI with Azure OpenAI's URL shape, Anthropic Messages,
//! Gemini; each format is a [`dialect::Dialect`] in its own module) and misbehaves on request: the path prefix
//! `/s/<scenario>` picks a behaviour, so a backend's `baseUrl` alone decides how its upstream
//! acts (`http://127.0.0.1:PORT/s/429,retry-after=200ms/v1`). See [`scenario`] for the list.
//!
//! Test hooks: `GET /__requests[?scenario=SEGMENT]` lists recent requests (path, query, headers
//! with credentials reduced to `"<present>"`, JSON body, what the fake answered);
//! `POST /__reset` forgets them and every counter.
#![forbid(unsafe_code)]

pub mod anthropic;
pub mod body;
pub mod content;
pub mod dialect;
pub mod gemini;
pub mod limits;
pub mod openai;
pub mod record;
pub mod scenario;
pub mod server;

pub use server::{Fake, handle, serve, start};
