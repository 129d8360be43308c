//! The adapter boundary: each provider turns the internal request (an OpenAI chat-completions
//! body) into its own HTTP request, and its answers back into OpenAI-shaped bodies, stream
//! chunks and usage. The router never sees a provider's wire format.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::Full;
use serde_json::{Map, Value};

use llmesh_api::ProviderKind;
use llmesh_api::snapshot::Backend;

pub use crate::internal::{Chunk, Op, Usage};
use crate::sse::SseEvent;

// Public for sidecar/tests (golden translations) and fuzz/; the rest of this module is crate-only.
pub mod anthropic;
pub mod gemini;
pub mod mock;
pub mod openai;
mod shape;
mod upstream;

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
    pub endpoint: crate::internal::Endpoint,
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
    fn speaks(&self, _backend: &Backend, _endpoint: crate::internal::Endpoint) -> bool {
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
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
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

/// Removes anything that looks like a credential from a provider message: the backend's own key,
/// any run of [`KEY_FRAGMENT`] or more of its characters (a key cut in two by someone's
/// truncation), and `sk-...`-style tokens (OpenAI echoes a masked key in 401 messages). Cuts the
/// result to 1,000 bytes, after redacting, so a cut never leaves part of a key behind.
pub(crate) fn redact(message: &str, key: Option<&str>) -> String {
    let mut s = redact_whole(message, key);
    cut(&mut s, 1_000);
    s
}

/// [`redact`] of an upstream body that may not be text or JSON: decoded lossily, redacted whole,
/// then cut to `max` bytes.
pub(crate) fn excerpt(body: &[u8], max: usize, key: Option<&str>) -> String {
    let mut s = redact_whole(&String::from_utf8_lossy(body), key);
    cut(&mut s, max);
    s
}

/// The shortest run of a key's characters that counts as a part of it.
pub(crate) const KEY_FRAGMENT: usize = 8;

fn cut(s: &mut String, max: usize) {
    if s.len() > max {
        let mut at = max;
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        s.truncate(at);
        s.push_str("...");
    }
}

fn redact_whole(message: &str, key: Option<&str>) -> String {
    let message = unescape_ascii(message);
    let mut s = match key {
        Some(k) if k.len() >= 4 => redact_fragments(&message.replace(k, "<redacted>"), k),
        _ => message.into_owned(),
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
    s
}

/// Replaces every run of at least [`KEY_FRAGMENT`] bytes that also occurs in `key` (a prefix
/// left by a cut, a suffix, any middle part) with `<redacted>`. Each 8-byte window of the text
/// is looked up among the key's windows, so a 64 KiB body costs a binary search per byte.
fn redact_fragments(s: &str, key: &str) -> String {
    const N: usize = KEY_FRAGMENT;
    const _: () = assert!(KEY_FRAGMENT == 8, "windows are compared as u64");
    let (t, k) = (s.as_bytes(), key.as_bytes());
    if k.len() < N || t.len() < N {
        return s.to_string();
    }
    let word = |b: &[u8]| {
        let mut w = [0u8; N];
        w.copy_from_slice(&b[..N]);
        u64::from_le_bytes(w)
    };
    let mut parts: Vec<u64> = k.windows(N).map(word).collect();
    parts.sort_unstable();
    let mut hidden: Option<Vec<bool>> = None;
    for i in 0..=t.len() - N {
        if parts.binary_search(&word(&t[i..])).is_ok() {
            hidden.get_or_insert_with(|| vec![false; t.len()])[i..i + N].fill(true);
        }
    }
    let Some(hidden) = hidden else {
        return s.to_string();
    };
    // A hidden run is made of the key's bytes; a key is ASCII (a header value), so every run
    // starts and ends on a character boundary.
    let mut out = Vec::with_capacity(t.len());
    let mut i = 0;
    while i < t.len() {
        if hidden[i] {
            out.extend_from_slice(b"<redacted>");
            while i < t.len() && hidden[i] {
                i += 1;
            }
        } else {
            out.push(t[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// `s` with `\uXXXX` escapes of printable ASCII decoded, so a key written with escapes in text
/// that is not parsed as JSON (a malformed body, a message quoting one) is still found.
fn unescape_ascii(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.contains("\\u") {
        return s.into();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("\\u") {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        let c = tail
            .get(2..6)
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .and_then(char::from_u32)
            .filter(|c| c.is_ascii_graphic() || *c == ' ');
        match c {
            Some(c) => {
                out.push(c);
                rest = &tail[6..];
            }
            None => {
                out.push_str("\\u");
                rest = &tail[2..];
            }
        }
    }
    out.push_str(rest);
    out.into()
}

/// An answer or stream chunk as a client may see it: when it holds the backend's key as written,
/// the key (and anything key-like) is redacted; otherwise it is returned as is, after one
/// `memmem` search. Success content is searched for the whole key only: a part of a key comes
/// from a cut, and only error paths cut.
pub fn scrub_answer(data: Bytes, key: Option<&str>) -> Bytes {
    match key {
        Some(k) if k.len() >= 4 && memchr::memmem::find(&data, k.as_bytes()).is_some() => {
            Bytes::from(redact_whole(&String::from_utf8_lossy(&data), key))
        }
        _ => data,
    }
}

/// A JSON error body with every string in it (keys included) redacted as by [`redact`] but
/// uncut; `None` when the body is not JSON. What a client gets back of an upstream's own error
/// body: escapes (`\u0073k-...`) are decoded before the search, so they hide nothing. A body
/// with nothing to redact comes back byte for byte.
pub(crate) fn redact_json(body: &[u8], key: Option<&str>) -> Option<Bytes> {
    fn clean(s: &str, key: Option<&str>, changed: &mut bool) -> String {
        let r = redact_whole(s, key);
        *changed |= r != s;
        r
    }
    fn walk(v: &mut Value, key: Option<&str>, changed: &mut bool) {
        match v {
            Value::String(s) => *s = clean(s, key, changed),
            Value::Array(a) => a.iter_mut().for_each(|v| walk(v, key, changed)),
            Value::Object(m) => {
                for (k, mut v) in std::mem::take(m) {
                    walk(&mut v, key, changed);
                    m.insert(clean(&k, key, changed), v);
                }
            }
            _ => {}
        }
    }
    let mut v: Value = serde_json::from_slice(body).ok()?;
    let mut changed = false;
    walk(&mut v, key, &mut changed);
    if !changed {
        return Some(Bytes::copy_from_slice(body));
    }
    serde_json::to_vec(&v).ok().map(Bytes::from)
}

impl UpstreamError {
    /// This error with its message and passed-through body redacted for `key`: the one place
    /// every upstream failure goes through before a client, a log or a metric sees it.
    pub fn redacted(mut self, key: Option<&str>) -> Self {
        self.message = redact(&self.message, key);
        if let Some(body) = self.openai_body.take() {
            self.openai_body = redact_json(&body, key);
        }
        self
    }
}

impl UpstreamError {
    /// The one refusal of a request a provider's API cannot express: `{provider} cannot express
    /// {what}`. The request goes to the next backend without calling this one.
    pub(crate) fn cannot_express(provider: &str, what: impl std::fmt::Display) -> Self {
        Self::unsupported(format!("{provider} cannot express {what}"))
    }

    /// The refusal of an operation a provider does not serve at all (Anthropic and Gemini have
    /// no text completions or embeddings here).
    pub(crate) fn cannot_serve(provider: &str, op: Op) -> Self {
        Self::unsupported(format!("{provider} does not serve {}", op.as_str()))
    }
}

/// The backend's API key, when it has one: the one place the sidecar reads it (to send it, and
/// to redact it from what reaches clients and logs).
pub(crate) fn key(backend: &Backend) -> Option<&str> {
    backend.api_key.as_ref().map(|k| k.expose())
}

#[cfg(test)]
mod tests {
    use super::*;

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

    const KEY: &str = "Zq7Rm2Xv9Lp4Ws8Tn3Yb6Hc1Jd5Kf0Ga";

    #[test]
    fn redaction_runs_before_any_cut_and_hides_key_fragments() {
        // A key straddling the cut: redacted whole first, so nothing of it is left after the cut.
        for at in [280, 290, 299] {
            let body = format!("{}{KEY} tail", "x".repeat(at));
            let e = excerpt(body.as_bytes(), 300, Some(KEY));
            assert!(!e.contains(&KEY[..8]), "{e}");
            assert!(!e.contains("Zq7R"), "at {at}: {e}");
        }
        // A part of the key that someone else's cut left behind is still a part of the key.
        let m = redact(
            &format!("key was {}... and {}", &KEY[..12], &KEY[20..]),
            Some(KEY),
        );
        assert_eq!(m, "key was <redacted>... and <redacted>");
        // Text that merely shares a few characters is untouched.
        assert_eq!(redact("Zq7Rm2X is short", Some(KEY)), "Zq7Rm2X is short");
    }

    #[test]
    fn json_bodies_are_redacted_in_every_string_and_key_even_escaped() {
        let escaped = KEY.replace('Z', "\\u005a");
        let body = format!(
            r#"{{"error":{{"message":"m","param":"{KEY}","code":"{escaped}","x":[{{"{KEY}":1}}]}}}}"#
        );
        let out = redact_json(body.as_bytes(), Some(KEY)).unwrap();
        let text = String::from_utf8(out.to_vec()).unwrap();
        assert!(
            !text.contains(&KEY[..8]) && !text.contains(&KEY[10..18]),
            "{text}"
        );
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["error"]["param"], "<redacted>");
        assert_eq!(v["error"]["code"], "<redacted>");
        assert_eq!(redact_json(b"not json", Some(KEY)), None);
    }
}
