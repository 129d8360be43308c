//! The boundary between the scenario engine and one provider's wire format.
//!
//! The engine (`server.rs`) owns everything provider-independent: the scenario prefix, recording,
//! counters, delays, hangs and cut connections. A [`Dialect`] owns URLs, bodies, stream events and
//! error shapes. OpenAI (with Azure's URL shape) lives in `openai.rs`, Anthropic Messages in
//! `anthropic.rs`, Gemini in `gemini.rs`; [`DIALECTS`] lists them.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use serde_json::Value;

use crate::scenario::Options;

/// Every dialect the fake speaks, tried in order.
pub static DIALECTS: &[&dyn Dialect] = &[
    &crate::openai::OpenAi,
    &crate::anthropic::Anthropic,
    &crate::gemini::Gemini,
];

/// An operation a dialect serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Op {
    /// Chat: OpenAI chat completions, Anthropic messages, Gemini generateContent.
    Chat,
    /// OpenAI's legacy text completions.
    Completion,
    /// Embeddings.
    Embedding,
    /// The model list.
    ListModels,
    /// One model.
    GetModel,
    /// Counting a prompt's tokens (Anthropic `count_tokens`, Gemini `countTokens`).
    CountTokens,
    /// OpenAI's Responses API (`POST /v1/responses`).
    Responses,
}

impl Op {
    /// Name in `/__requests`.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Chat => "chat",
            Op::Completion => "completion",
            Op::Embedding => "embedding",
            Op::ListModels => "list_models",
            Op::GetModel => "get_model",
            Op::CountTokens => "count_tokens",
            Op::Responses => "responses",
        }
    }
}

/// A recognised request target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// What is asked.
    pub op: Op,
    /// The dialect's URL shape (`openai`, `azure`, ...), for dialect-specific details.
    pub flavor: &'static str,
    /// A model, deployment or id named in the path.
    pub path_model: Option<String>,
}

/// What went wrong, for the dialect to phrase in its own error format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// An error status: 401, 429, 500, 502, 503, 504, 529.
    Status(u16),
    /// The prompt is over the model's context window.
    ContextLength,
    /// The provider's safety filter stopped the prompt or the answer.
    Safety,
    /// A success status whose body does not parse.
    Malformed,
}

/// Facts about the request a dialect may use.
pub struct Ctx<'a> {
    /// The request's sequence number (for ids).
    pub seq: u64,
    /// The scenario's options.
    pub options: &'a Options,
    /// The request headers.
    pub headers: &'a HeaderMap,
    /// Whether the client asked for a stream.
    pub stream: bool,
    /// State kept between requests (stored responses).
    pub state: &'a State,
}

/// How many stored responses the fake keeps (the oldest go first).
pub const STORED_RESPONSES: usize = 1000;

/// What the fake remembers between requests, as a provider's servers do: stored Responses API
/// conversations, for `previous_response_id`. `/__reset` forgets it.
#[derive(Default)]
pub struct State {
    responses: Mutex<VecDeque<(String, Arc<Vec<Value>>)>>,
}

impl State {
    /// The conversation (input and output items) up to and including response `id`.
    pub fn conversation(&self, id: &str) -> Option<Arc<Vec<Value>>> {
        let r = self.responses.lock().unwrap_or_else(|p| p.into_inner());
        r.iter().find(|(k, _)| k == id).map(|(_, v)| v.clone())
    }

    /// Keeps the conversation of response `id`.
    pub fn store(&self, id: String, conversation: Vec<Value>) {
        let mut r = self.responses.lock().unwrap_or_else(|p| p.into_inner());
        if r.len() == STORED_RESPONSES {
            r.pop_front();
        }
        r.push_back((id, Arc::new(conversation)));
    }

    /// Forgets everything.
    pub fn clear(&self) {
        self.responses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

/// A response before pacing: one part for a whole body, one part per event for a stream.
pub struct Reply {
    /// The status.
    pub status: StatusCode,
    /// The content type.
    pub content_type: &'static str,
    /// More headers.
    pub headers: Vec<(&'static str, String)>,
    /// The body, in the pieces it may be paced in.
    pub parts: Vec<Bytes>,
}

impl Reply {
    /// A one-part JSON answer.
    pub fn json(status: StatusCode, body: impl Into<Bytes>) -> Self {
        Self {
            status,
            content_type: "application/json",
            headers: Vec::new(),
            parts: vec![body.into()],
        }
    }

    /// A server-sent event stream, one part per event.
    pub fn events(parts: Vec<Bytes>) -> Self {
        Self {
            status: StatusCode::OK,
            content_type: "text/event-stream; charset=utf-8",
            headers: Vec::new(),
            parts,
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

/// One provider API.
pub trait Dialect: Send + Sync {
    /// Name in `/__requests`.
    fn name(&self) -> &'static str;
    /// Recognises a path (the scenario prefix already removed).
    fn route(&self, method: &Method, path: &str, query: Option<&str>) -> Option<Endpoint>;
    /// Whether the request asks for a stream.
    fn is_stream(&self, ep: &Endpoint, body: &Value) -> bool;
    /// Refusals that come before any scenario: missing credentials or query parameters the real
    /// API requires.
    fn check(&self, ep: &Endpoint, headers: &HeaderMap, query: Option<&str>) -> Option<Reply>;
    /// The correct answer (or the provider's 400 when the request is invalid).
    fn answer(&self, ep: &Endpoint, body: &Value, ctx: &Ctx<'_>) -> Reply;
    /// A failure in this provider's words.
    fn failure(&self, ep: &Endpoint, failure: Failure, ctx: &Ctx<'_>) -> Reply;
    /// A correct answer with the least work: no JSON parsing of the request.
    fn fast(&self, ep: &Endpoint, body: &[u8], seq: u64) -> Reply;
    /// A client error in this provider's error format (a body that is not JSON, a scenario or
    /// path the fake does not know).
    fn client_error(&self, status: StatusCode, message: &str) -> Reply;
}

/// Finds the dialect and endpoint for a path.
pub fn find(
    method: &Method,
    path: &str,
    query: Option<&str>,
) -> Option<(&'static dyn Dialect, Endpoint)> {
    DIALECTS
        .iter()
        .find_map(|d| d.route(method, path, query).map(|ep| (*d, ep)))
}
