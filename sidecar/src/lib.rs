//! llmesh-sidecar: the data plane beside each app container. OpenAI-compatible endpoints on
//! localhost, routing to providers with fallbacks, A/B splits, retries, limits, budgets, a cache,
//! cost accounting and Prometheus metrics.
// `unsafe` only in `memory`, for two calls into glibc; denied everywhere else.
#![deny(unsafe_code)]
// Errors are the cold path: a refusal is rare next to the requests served, and keeping
// `ApiError` unboxed saves an allocation on each one.
#![allow(clippy::result_large_err)]

pub mod accesslog;
pub mod account;
pub mod admit;
pub mod app;
pub mod breaker;
pub mod budget;
pub mod cache;
pub mod choose;
pub mod config;
pub mod error;
pub mod fields;
pub mod handler;
pub mod import;
pub mod ingress;
pub mod internal;
mod keys;
pub mod limits;
pub mod memory;
pub mod metrics;
pub mod operator_client;
pub mod providers;
pub mod proxy;
pub mod ratelimit;
pub mod relay;
pub mod runtime;
pub mod server;
pub mod splice;
pub mod sse;
pub mod tokens;
pub mod transport;
pub mod usage;

pub use app::App;
