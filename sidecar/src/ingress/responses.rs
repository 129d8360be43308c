//! OpenAI's Responses API (`POST /v1/responses`) on top of the chat router.
//!
//! A Responses request becomes one chat completions body (`request`), so routing, fallbacks,
//! limits, budgets, cost and metrics are the chat router's, and every backend that serves chat
//! serves this too. The answer comes back as a Response object (`output`) or, streamed, as the
//! documented typed events (`stream`). Responses are kept in a bounded in-memory [`Store`] for
//! `previous_response_id`, `item_reference` and `GET /v1/responses/{id}`.
//! What is and is not supported, and why: `docs/responses-api.md`.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::{Context, Translated};
use crate::error::ApiError;

mod output;
mod request;
mod store;
mod stream;
#[cfg(test)]
mod tests;

pub use store::{DEFAULT_ENTRIES, DEFAULT_TTL, Store};

/// Translates a Responses API request into an OpenAI chat body.
pub fn to_chat(body: Map<String, Value>, ctx: &Context<'_>) -> Result<Translated, ApiError> {
    let (chat, pending) = request::translate(body, ctx.responses, Ids::random())?;
    Ok((chat, Some(Box::new(pending))))
}

/// Whether `e`, returned by [`to_chat`], refuses only the translation: the request asks for
/// something chat completions cannot express (built-in tools, OpenAI-side state such as an
/// unknown `previous_response_id`), which a backend speaking the Responses API natively serves.
pub fn needs_native(e: &ApiError) -> bool {
    e.reason == request::UNTRANSLATABLE
}

/// A chat body standing in for a request that can only pass through natively: the model, the
/// text of `instructions` and `input` as one user message (for the prompt estimate behind
/// `maxInputTokens`, `tokensPerMinute` and routing rules), `stream`, `user`, and
/// `max_output_tokens` as `max_completion_tokens` (for `maxTokens` and budgets).
pub fn stand_in(body: &Map<String, Value>) -> Map<String, Value> {
    let mut text = String::new();
    for key in ["instructions", "input"] {
        if let Some(v) = body.get(key) {
            collect_text(v, &mut text);
        }
    }
    let mut chat = Map::new();
    if let Some(m) = body.get("model") {
        chat.insert("model".into(), m.clone());
    }
    chat.insert(
        "messages".into(),
        json!([{"role": "user", "content": text}]),
    );
    if let Some(n) = body
        .get("max_output_tokens")
        .and_then(Value::as_u64)
        .filter(|n| *n > 0)
    {
        chat.insert("max_completion_tokens".into(), json!(n));
    }
    for key in ["stream", "user"] {
        if let Some(v) = body.get(key).filter(|v| !v.is_null()) {
            chat.insert(key.into(), v.clone());
        }
    }
    chat
}

/// Appends the strings of `v` that are text a model reads (not ids, types, URLs or file bytes).
fn collect_text(v: &Value, out: &mut String) {
    const SKIP: &[&str] = &[
        "type",
        "id",
        "call_id",
        "role",
        "status",
        "detail",
        "image_url",
        "file_id",
        "file_url",
        "file_data",
        "filename",
        "encrypted_content",
    ];
    match v {
        Value::String(s) => {
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(s);
        }
        Value::Array(items) => items.iter().for_each(|i| collect_text(i, out)),
        Value::Object(m) => m
            .iter()
            .filter(|(k, _)| !SKIP.contains(&k.as_str()))
            .for_each(|(_, v)| collect_text(v, out)),
        _ => {}
    }
}

/// `GET /v1/responses/{id}`: a response this sidecar produced and stored.
pub fn retrieve(store: &Store, id: &str) -> Result<Bytes, ApiError> {
    match store.get(id) {
        Some(s) => Ok(Bytes::from(s.response.to_string())),
        None => Err(not_stored(id)),
    }
}

/// `DELETE /v1/responses/{id}`: forgets a stored response.
pub fn delete(store: &Store, id: &str) -> Result<Bytes, ApiError> {
    if store.remove(id) {
        Ok(Bytes::from(
            json!({"id": id, "object": "response", "deleted": true}).to_string(),
        ))
    } else {
        Err(not_stored(id))
    }
}

fn not_stored(id: &str) -> ApiError {
    ApiError::not_found(format!(
        "llmesh: no response with id '{id}' here: this sidecar keeps only the responses it produced with store: true, in memory, for a bounded number and time (--responses-store-entries, --responses-store-ttl)"
    ))
}

/// The ids of one response and its output items. Item ids carry the response's so an
/// `item_reference` finds its response in the store without a second index.
#[derive(Clone, Debug)]
pub(crate) struct Ids {
    base: String,
    created_at: u64,
}

impl Ids {
    fn random() -> Self {
        let created_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Self {
            base: format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..)),
            created_at,
        }
    }

    #[cfg(test)]
    fn fixed(base: &str, created_at: u64) -> Self {
        Self {
            base: base.to_string(),
            created_at,
        }
    }

    fn response(&self) -> String {
        format!("resp_{}", self.base)
    }

    fn message(&self, output_index: usize) -> String {
        format!("msg_{}_{output_index}", self.base)
    }

    fn call(&self, output_index: usize) -> String {
        format!("fc_{}_{output_index}", self.base)
    }

    /// The response an output item id of ours belongs to, and its output index.
    fn owner(item_id: &str) -> Option<(String, usize)> {
        let rest = item_id
            .strip_prefix("msg_")
            .or_else(|| item_id.strip_prefix("fc_"))?;
        let (base, index) = rest.rsplit_once('_')?;
        Some((format!("resp_{base}"), index.parse().ok()?))
    }
}

/// What a translated request keeps for its answer: the Response object's echoed fields, the
/// conversation so far (for the store) and where to store the result.
pub(crate) struct Pending {
    ids: Ids,
    /// The Response object without `status`, `output`, `usage` and the other answer fields, in
    /// OpenAI's field order; `respond` fills them in.
    skeleton: Map<String, Value>,
    /// Earlier turns (from `previous_response_id`) and this request's input, as input items.
    conversation: Vec<Arc<Value>>,
    /// Where to keep the answer (`store: true`).
    store: Option<Store>,
    /// Whether the request refers to responses or items in this sidecar's store (it then goes
    /// to every backend translated, history expanded: OpenAI does not know those ids).
    local_state: bool,
}

/// How a response ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    InProgress,
    Completed,
    /// Cut short; the reason is OpenAI's `incomplete_details.reason`.
    Incomplete(&'static str),
    Failed,
}

impl Status {
    fn from_finish_reason(reason: Option<&str>) -> Self {
        match reason {
            Some("length") => Status::Incomplete("max_output_tokens"),
            Some("content_filter") => Status::Incomplete("content_filter"),
            _ => Status::Completed,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Status::InProgress => "in_progress",
            Status::Completed => "completed",
            Status::Incomplete(_) => "incomplete",
            Status::Failed => "failed",
        }
    }

    /// The status of output items in a response with this status.
    fn item(self) -> &'static str {
        match self {
            Status::Completed => "completed",
            Status::InProgress => "in_progress",
            Status::Incomplete(_) | Status::Failed => "incomplete",
        }
    }
}

impl Pending {
    /// The Response object.
    fn respond(
        &self,
        status: Status,
        model: &str,
        output: Vec<Value>,
        usage: Option<Value>,
        error: Option<Value>,
    ) -> Value {
        let mut r = Map::new();
        for (k, v) in &self.skeleton {
            let v = match k.as_str() {
                "status" => json!(status.as_str()),
                "error" => error.clone().unwrap_or(Value::Null),
                "incomplete_details" => match status {
                    Status::Incomplete(reason) => json!({ "reason": reason }),
                    _ => Value::Null,
                },
                "model" if !model.is_empty() => json!(model),
                "output" => Value::Array(output.clone()),
                "usage" => usage.clone().unwrap_or(Value::Null),
                _ => v.clone(),
            };
            r.insert(k.clone(), v);
        }
        Value::Object(r)
    }

    /// Keeps a finished response for `previous_response_id`, when the request asked for it.
    fn keep(&self, response: &Value) {
        let Some(store) = &self.store else { return };
        let mut conversation = self.conversation.clone();
        if let Some(out) = response.get("output").and_then(Value::as_array) {
            conversation.extend(out.iter().cloned().map(Arc::new));
        }
        store.put(
            self.ids.response(),
            store::Stored {
                response: response.clone(),
                conversation,
            },
        );
    }
}

/// OpenAI chat usage as Responses usage.
fn usage(chat: &Value, normalized: Option<&crate::internal::Usage>) -> Value {
    let n = |p: &str| chat.pointer(p).and_then(Value::as_u64).unwrap_or(0);
    let (input, cached, out) = match normalized {
        Some(u) => (u.prompt, u.cached_input, u.output),
        None => (
            n("/prompt_tokens"),
            n("/prompt_tokens_details/cached_tokens"),
            n("/completion_tokens"),
        ),
    };
    json!({
        "input_tokens": input,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": out,
        "output_tokens_details": {"reasoning_tokens": n("/completion_tokens_details/reasoning_tokens")},
        "total_tokens": input + out,
    })
}
