//! The adapter boundary: each provider turns the internal request (an OpenAI chat-completions
//! body) into its own HTTP request, and its answers back into OpenAI-shaped bodies, stream
//! chunks and usage. The router never sees a provider's wire format.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::Full;
use serde_json::{Map, Value};

use llmesh_api::ProviderKind;
use llmesh_api::money::{MicroUsd, cost_of};
use llmesh_api::prices::Prices;
use llmesh_api::snapshot::Backend;

use crate::sse::SseEvent;

pub mod anthropic;
pub mod gemini;
pub mod mock;
pub mod openai;

/// What the client asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// `/v1/chat/completions` (and every format translated into it).
    Chat,
    /// `/v1/completions`.
    Completion,
    /// `/v1/embeddings`.
    Embedding,
}

impl Op {
    /// Name for logs and metrics (`gen_ai.operation.name`).
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Chat => "chat",
            Op::Completion => "text_completion",
            Op::Embedding => "embeddings",
        }
    }
}

/// Token usage of one request, normalised across providers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// All prompt tokens, cached and cache-write ones included.
    pub prompt: u64,
    /// Prompt tokens read from the provider's cache (part of `prompt`).
    pub cached_input: u64,
    /// Prompt tokens written to the provider's cache (part of `prompt`).
    pub cache_write: u64,
    /// Completion tokens, reasoning included.
    pub output: u64,
    /// True when counted by our estimator rather than reported by the provider.
    pub estimated: bool,
}

impl Usage {
    /// Uncached, unwritten prompt tokens.
    pub fn uncached_input(&self) -> u64 {
        self.prompt
            .saturating_sub(self.cached_input + self.cache_write)
    }

    /// Prompt plus completion.
    pub fn total(&self) -> u64 {
        self.prompt + self.output
    }

    /// Cost in micro-dollars at `prices`, each token class at its own price.
    pub fn cost(&self, prices: &Prices) -> MicroUsd {
        cost_of(self.uncached_input(), prices.input)
            + cost_of(self.cached_input, prices.cached_input)
            + cost_of(self.cache_write, prices.cache_write)
            + cost_of(self.output, prices.output)
    }
}

/// How an upstream failure is handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// Connect errors, timeouts before the first byte, 408, 429, 5xx, 529, broken answers:
    /// retry with backoff, then fall back.
    Retryable,
    /// The prompt does not fit: fall back to a backend with a larger context window.
    ContextWindow,
    /// The provider refused the content: fall back (another provider may answer).
    ContentPolicy,
    /// 401/403: the backend is misconfigured; take it out and fall back.
    Auth,
    /// 404: the model or deployment does not exist there; fall back.
    NotFound,
    /// The request itself is wrong (400, 422): no retry, no fallback; tell the client.
    Client,
    /// This backend cannot express the request (a feature its API lacks): try the next one.
    Unsupported,
}

/// An upstream failure, classified.
#[derive(Clone, Debug)]
pub struct UpstreamError {
    /// How to handle it.
    pub class: ErrorClass,
    /// The upstream status, when there was a response.
    pub status: Option<StatusCode>,
    /// What happened, safe to show (keys redacted).
    pub message: String,
    /// The provider's `retry-after`.
    pub retry_after: Option<Duration>,
    /// Low-cardinality label: `connect`, `timeout`, `status_429`, `status_5xx`, `malformed`, ...
    pub reason: &'static str,
    /// The provider's error body when it is already OpenAI-shaped, to pass back unchanged.
    pub openai_body: Option<Bytes>,
}

impl UpstreamError {
    /// The backend cannot express this request.
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self {
            class: ErrorClass::Unsupported,
            status: None,
            message: message.into(),
            retry_after: None,
            reason: "unsupported",
            openai_body: None,
        }
    }

    /// A retryable failure without a response.
    pub fn retryable(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            class: ErrorClass::Retryable,
            status: None,
            message: message.into(),
            retry_after: None,
            reason,
            openai_body: None,
        }
    }
}

/// A non-streaming answer in OpenAI shape.
#[derive(Clone, Debug)]
pub struct Decoded {
    /// The OpenAI-shaped JSON body.
    pub body: Bytes,
    /// Usage, when the provider reported it.
    pub usage: Option<Usage>,
}

/// One piece of a stream, in OpenAI chat-completion-chunk shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Chunk {
    /// The JSON of one `chat.completion.chunk` (or text completion chunk).
    Data(Bytes),
    /// The end of the stream (`data: [DONE]`).
    Done,
}

/// Turns one provider's event stream into OpenAI chunks.
pub trait StreamDecoder: Send {
    /// Handles one SSE event; pushes zero or more chunks. An `Err` is an error the provider
    /// reported inside the stream.
    fn event(&mut self, event: SseEvent, out: &mut Vec<Chunk>) -> Result<(), UpstreamError>;
    /// The upstream body ended. `Err` when the stream was cut before its proper end.
    fn finish(&mut self, out: &mut Vec<Chunk>) -> Result<(), UpstreamError>;
    /// Usage reported so far.
    fn usage(&self) -> Option<Usage>;
    /// Estimated completion tokens seen so far, for streams cut short.
    fn output_estimate(&self) -> u64;
    /// After a proper end: why the stream failed, when the upstream reported the failure in-band
    /// in the client's own format (a native `response.failed`), so the client already has it and
    /// the relay only counts it.
    fn failure(&self) -> Option<&'static str> {
        None
    }
}

/// A client's request in its own wire format, for backends that speak that format natively:
/// passed through (model and limits applied) instead of translated, so every feature of the
/// format survives (Anthropic prompt caching, thinking, betas; OpenAI's built-in tools and
/// server-side conversation state on the Responses API).
pub struct Native<'a> {
    /// The endpoint the client called.
    pub endpoint: crate::ingress::Endpoint,
    /// The client's body.
    pub body: &'a Map<String, Value>,
    /// Client headers to forward (`anthropic-version`, `anthropic-beta`).
    pub headers: &'a [(http::HeaderName, http::HeaderValue)],
}

/// A native body as sent upstream: the client's, with the backend's model and the token limit
/// `field` no larger than `max_tokens` (the route's and budgets' limit).
pub(crate) fn native_body(
    native: &Native<'_>,
    model: &str,
    field: &str,
    max_tokens: Option<u32>,
) -> Vec<u8> {
    let mut b = native.body.clone();
    b.insert("model".into(), Value::String(model.to_string()));
    if let Some(limit) = max_tokens {
        let asked = b.get(field).and_then(Value::as_u64);
        if asked.is_none_or(|a| a > u64::from(limit)) {
            b.insert(field.into(), Value::from(limit));
        }
    }
    serde_json::to_vec(&b).unwrap_or_default()
}

/// One provider's translation in both directions.
pub trait Provider: Send + Sync {
    /// Whether `backend` speaks the format of `endpoint` natively.
    fn speaks(&self, _backend: &Backend, _endpoint: crate::ingress::Endpoint) -> bool {
        false
    }
    /// The upstream request for a native body; `max_tokens` is the limit after route limits and
    /// budgets.
    fn native_request(
        &self,
        backend: &Backend,
        _native: &Native<'_>,
        _stream: bool,
        _max_tokens: Option<u32>,
    ) -> Result<Request<Full<Bytes>>, UpstreamError> {
        Err(UpstreamError::unsupported(format!(
            "backend `{}` has no native format",
            backend.name
        )))
    }
    /// Reads usage from a native answer and hands the body back unchanged.
    fn native_decode(&self, backend: &Backend, _body: Bytes) -> Result<Decoded, UpstreamError> {
        Err(UpstreamError::unsupported(format!(
            "backend `{}` has no native format",
            backend.name
        )))
    }
    /// A decoder that passes native events through as `Chunk::Data` frames, reading usage.
    fn native_stream(&self, backend: &Backend) -> Box<dyn StreamDecoder> {
        self.stream(backend, Op::Chat, true)
    }
    /// Whether the backend can serve `op` at all (Anthropic has no embeddings).
    fn supports(&self, op: Op) -> bool;
    /// The upstream request for an OpenAI-shaped body. `body["model"]` is already the
    /// backend's model. `raw`, when given, is the client's body as it arrived: `body` is its
    /// parse with nothing changed but `model`, so a provider that sends OpenAI's format can send
    /// it on (see [`crate::splice`]) instead of serialising `body`.
    fn request(
        &self,
        backend: &Backend,
        op: Op,
        body: &Map<String, Value>,
        raw: Option<&[u8]>,
        stream: bool,
    ) -> Result<Request<Full<Bytes>>, UpstreamError>;
    /// Classifies a non-2xx answer.
    fn error(
        &self,
        backend: &Backend,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
    ) -> UpstreamError;
    /// Decodes a 2xx non-streaming answer.
    fn decode(&self, backend: &Backend, op: Op, body: Bytes) -> Result<Decoded, UpstreamError>;
    /// A decoder for a 2xx streaming answer.
    fn stream(&self, backend: &Backend, op: Op, client_wants_usage: bool)
    -> Box<dyn StreamDecoder>;
}

/// The adapter for a provider kind.
pub fn for_kind(kind: ProviderKind) -> &'static dyn Provider {
    match kind {
        ProviderKind::Anthropic => &anthropic::Anthropic,
        ProviderKind::Gemini => &gemini::Gemini,
        _ => &openai::OpenAiFamily,
    }
}

/// Parses `retry-after` (seconds or an HTTP date is not trusted: only seconds) and OpenAI's
/// `retry-after-ms`.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    if let Some(ms) = headers
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        && ms.is_finite()
        && ms >= 0.0
    {
        return Some(Duration::from_micros((ms * 1000.0) as u64));
    }
    let v = headers.get("retry-after")?.to_str().ok()?.trim();
    let secs: f64 = v.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_millis((secs * 1000.0) as u64))
}

/// Removes anything that looks like a credential from a provider message: the backend's own key
/// and `sk-...`-style tokens (OpenAI echoes a masked key in 401 messages).
pub fn redact(message: &str, key: Option<&str>) -> String {
    let mut s = match key {
        Some(k) if k.len() >= 4 => message.replace(k, "<redacted>"),
        _ => message.to_string(),
    };
    for prefix in ["sk-", "sk_", "AIza", "key-"] {
        let mut out = String::with_capacity(s.len());
        let mut rest = s.as_str();
        while let Some(i) = rest.find(prefix) {
            out.push_str(&rest[..i]);
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '*')))
                .unwrap_or(tail.len());
            // Only whole tokens: `task-sk-1` is not a key.
            let boundary = out
                .chars()
                .next_back()
                .is_none_or(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_')));
            if boundary && end > prefix.len() + 3 {
                out.push_str("<redacted>");
            } else {
                out.push_str(&tail[..end]);
            }
            rest = &tail[end..];
        }
        out.push_str(rest);
        s = out;
    }
    if s.len() > 1_000 {
        let mut cut = 1_000;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_price_each_token_class() {
        let p = Prices {
            input: 3_000_000,
            output: 15_000_000,
            cached_input: 300_000,
            cache_write: 3_750_000,
        };
        let u = Usage {
            prompt: 10_000,
            cached_input: 6_000,
            cache_write: 2_000,
            output: 1_000,
            estimated: false,
        };
        // 2,000 uncached * $3 + 6,000 cached * $0.30 + 2,000 written * $3.75 + 1,000 out * $15, per 1M.
        assert_eq!(u.cost(&p), 6_000 + 1_800 + 7_500 + 15_000);
    }

    #[test]
    fn retry_after_reads_seconds_and_milliseconds() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", "2".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after-ms", "150".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_millis(150)));
        let mut h = HeaderMap::new();
        h.insert(
            "retry-after",
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn redaction_hides_keys_and_key_like_tokens() {
        let m = redact(
            "Incorrect API key provided: sk-proj-****abcd. See docs.",
            None,
        );
        assert_eq!(m, "Incorrect API key provided: <redacted>. See docs.");
        assert_eq!(
            redact("bad key zzzz-secret-zzzz", Some("zzzz-secret-zzzz")),
            "bad key <redacted>"
        );
        assert_eq!(redact("task-sk-1 ok", None), "task-sk-1 ok");
    }
}
