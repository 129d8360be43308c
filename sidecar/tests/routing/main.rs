//! Every routing behaviour of the sidecar, end to end in process: real snapshots compiled from
//! YAML, the real `App` and `handler::handle`, and a scripted upstream. Time is paused, so
//! backoff, timeouts and cooldowns are exact and cost nothing.

#[path = "../common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::{Instant, advance};

use common::*;
use llmesh_sidecar::tokens;

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);

/// A chat request body.
fn hello(model: &str) -> Value {
    chat_body(model, "Say hello")
}

fn elapsed_between(seen: &[Seen], from: usize, to: usize) -> Duration {
    seen[to].at - seen[from].at
}

/// Estimated prompt tokens of a chat body, as the sidecar counts them.
fn prompt_tokens(body: &Value) -> u32 {
    tokens::chat_prompt(body.as_object().unwrap(), false).tokens
}

fn words(n: usize) -> String {
    "word ".repeat(n)
}

/// Route `chat` with a `primary` and a `backup`; `extra` adds spec fields (its own `retry`
/// replaces the default of two attempts with 100ms backoff).
fn primary_and_backup(extra: &str) -> String {
    let retry = if extra.contains("retry:") {
        ""
    } else {
        "retry: {attempts: 2, backoff: 100ms}\n"
    };
    route(
        "chat",
        &format!(
            "{retry}{extra}\nbackends:\n\
             - {{name: primary, provider: openai, model: gpt-4o-2024-08-06, secretRef: {{name: openai, key: api-key}}}}\n\
             - {{name: backup, provider: openai, model: gpt-4o-mini-2024-07-18, secretRef: {{name: openai, key: api-key}}}}\n"
        ),
    )
}

fn streaming(model: &str) -> Value {
    let mut b = hello(model);
    b["stream"] = json!(true);
    b
}

mod bodies;
mod budgets;
mod cache;
mod circuit_breaker;
mod cost;
mod fallbacks;
mod hot_reload;
mod limits;
mod resolution;
mod retries;
mod strategies;
mod streams;
mod timeouts;
mod weighted_split;
