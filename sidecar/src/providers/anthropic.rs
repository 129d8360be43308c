//! Anthropic's Messages API (`POST {baseUrl}/messages`, `x-api-key`,
//! `anthropic-version: 2023-06-01`).
//!
//! The internal request is an OpenAI chat-completions body; [`request`] turns it into a Messages
//! request, [`response`] turns Messages answers (JSON and the named-event SSE stream) back into
//! OpenAI `chat.completion` bodies and `chat.completion.chunk`s as they arrive. What has no
//! Anthropic equivalent either falls to the next backend ([`ErrorClass::Unsupported`]) when
//! dropping it would change the answer's shape (`n > 1`, `logprobs`, audio, legacy `functions`),
//! or is dropped when it only tunes sampling (`seed`, penalties, `logit_bias`). docs/providers.md
//! lists each field.

mod native;
mod request;
mod response;

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode};
use http_body_util::Full;
use serde::Deserialize;
use serde_json::{Map, Value};

use llmesh_api::snapshot::Backend;

use super::upstream::{self, Auth};
use super::{
    Decoded, ErrorClass, Op, Provider, StreamDecoder, UpstreamError, excerpt, key, redact,
    retry_after,
};

/// The Messages API version this adapter speaks.
pub const API_VERSION: &str = "2023-06-01";

/// `max_tokens` is required by Anthropic; used when neither the client nor the route set one.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

/// The tool forced to carry `response_format` JSON output (Anthropic has no JSON mode). Its
/// `tool_use` comes back as message content, never as a tool call.
pub const JSON_TOOL: &str = "llmesh_json_response";

/// The Anthropic Messages adapter.
pub struct Anthropic;

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Provider for Anthropic {
    fn supports(&self, op: Op) -> bool {
        op == Op::Chat
    }

    fn speaks(&self, _backend: &Backend, endpoint: crate::internal::Endpoint) -> bool {
        endpoint == crate::internal::Endpoint::Messages
    }

    fn native_request(
        &self,
        backend: &Backend,
        native: &crate::providers::Native<'_>,
        stream: bool,
        max_tokens: Option<u32>,
    ) -> Result<Request<Full<Bytes>>, UpstreamError> {
        let bytes = native::body(native, &backend.model, max_tokens);
        // The client's API version and betas go along: they describe the body it wrote.
        http_request(backend, bytes, stream, native.headers)
    }

    fn native_decode(&self, backend: &Backend, body: Bytes) -> Result<Decoded, UpstreamError> {
        native::decode(body, key(backend))
    }

    fn native_stream(&self, backend: &Backend) -> Box<dyn StreamDecoder> {
        Box::new(native::Passthrough::new(key(backend).map(str::to_string)))
    }

    fn request(
        &self,
        backend: &Backend,
        op: Op,
        body: &Map<String, Value>,
        _raw: Option<&[u8]>,
        stream: bool,
    ) -> Result<Request<Full<Bytes>>, UpstreamError> {
        if !self.supports(op) {
            return Err(UpstreamError::cannot_serve("Anthropic", op));
        }
        let translated = request::translate(body, stream)?;
        http_request(backend, upstream::encode(&translated)?, stream, &[])
    }

    fn error(
        &self,
        backend: &Backend,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
    ) -> UpstreamError {
        classify(key(backend), status, headers, body)
    }

    fn decode(&self, backend: &Backend, _op: Op, body: Bytes) -> Result<Decoded, UpstreamError> {
        response::decode(&body, now_unix(), key(backend))
    }

    fn stream(
        &self,
        backend: &Backend,
        _op: Op,
        client_wants_usage: bool,
    ) -> Box<dyn StreamDecoder> {
        Box::new(response::MessageStream::new(
            &backend.model,
            client_wants_usage,
            now_unix(),
            key(backend).map(str::to_string),
        ))
    }
}

/// Anthropic's error body: `{"type": "error", "error": {"type", "message"}, "request_id"}`.
#[derive(Deserialize, Default)]
struct ErrorEnvelope {
    #[serde(default)]
    error: Option<ErrorObject>,
}

#[derive(Deserialize, Default)]
struct ErrorObject {
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    details: Option<ErrorDetails>,
}

#[derive(Deserialize, Default)]
struct ErrorDetails {
    #[serde(default)]
    error_code: Option<String>,
}

/// Whether a message says the prompt does not fit the model's context window.
fn is_context_overflow(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("prompt is too long")
        || m.contains("exceed context limit")
        || m.contains("context window")
}

/// Classifies an Anthropic error answer (see the "Errors" page of the API docs).
pub fn classify(
    key: Option<&str>,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
) -> UpstreamError {
    let err = serde_json::from_slice::<ErrorEnvelope>(body)
        .ok()
        .and_then(|e| e.error);
    let (kind, message) = match &err {
        Some(e) => (e.kind.as_str(), e.message.clone()),
        None => ("", excerpt(body, 300, key)),
    };
    let spend_cap = err
        .as_ref()
        .and_then(|e| e.details.as_ref())
        .and_then(|d| d.error_code.as_deref())
        == Some("enforced_spend_limit_reached");
    let (class, reason) = match status.as_u16() {
        // The monthly spend cap does not lift by waiting seconds: take the backend out.
        429 if spend_cap => (ErrorClass::Auth, "spend_limit"),
        429 => (ErrorClass::Retryable, "status_429"),
        529 => (ErrorClass::Retryable, "overloaded"),
        408 | 500..=599 => (ErrorClass::Retryable, "status_5xx"),
        // 402 billing_error: the account cannot pay; like a bad key, another backend may work.
        401..=403 => (ErrorClass::Auth, "auth"),
        404 => (ErrorClass::NotFound, "not_found"),
        // 413 request_too_large: the body is over Anthropic's byte limit; others may take it.
        413 => (ErrorClass::ContextWindow, "context_window"),
        400 if is_context_overflow(&message) => (ErrorClass::ContextWindow, "context_window"),
        _ if kind == "overloaded_error" => (ErrorClass::Retryable, "overloaded"),
        _ => (ErrorClass::Client, "status_4xx"),
    };
    let safe = redact(&message, key);
    UpstreamError {
        class,
        status: Some(status),
        message: if kind.is_empty() {
            format!("{} {safe}", status.as_u16())
        } else {
            format!("{} {kind}: {safe}", status.as_u16())
        },
        retry_after: retry_after(headers),
        reason,
        openai_body: None,
    }
}

/// Classifies an `error` event inside a stream (sent after a 200, so it has no status).
fn stream_error(data: &[u8], key: Option<&str>) -> UpstreamError {
    let err = serde_json::from_slice::<ErrorEnvelope>(data)
        .ok()
        .and_then(|e| e.error)
        .unwrap_or_default();
    let reason = match err.kind.as_str() {
        "overloaded_error" => "overloaded",
        "rate_limit_error" => "status_429",
        _ => "stream_error",
    };
    // Every documented in-stream error (overloaded, api_error) is transient; before the first
    // chunk the attempt loop retries or falls back, after it the relay reports it in-band.
    UpstreamError::retryable(
        reason,
        format!(
            "{}: {}",
            if err.kind.is_empty() {
                "error"
            } else {
                &err.kind
            },
            redact(&err.message, key)
        ),
    )
}

/// The HTTP request to `{base}/messages`: the API version (the client's, when forwarded), the
/// client's other forwarded headers (`anthropic-beta`), the key in `x-api-key`, and the
/// backend's own headers, which replace any of these of the same name: a backend may pin another
/// API version or its own betas.
fn http_request(
    backend: &Backend,
    bytes: Vec<u8>,
    stream: bool,
    forwarded: &[(HeaderName, HeaderValue)],
) -> Result<Request<Full<Bytes>>, UpstreamError> {
    let version = HeaderName::from_static("anthropic-version");
    // Only visible ASCII values go along.
    let forwarded = forwarded.iter().filter(|(_, v)| v.to_str().is_ok());
    let mut defaults = Vec::with_capacity(2);
    defaults.push((
        version.clone(),
        forwarded
            .clone()
            .find(|(k, _)| *k == version)
            .map_or(HeaderValue::from_static(API_VERSION), |(_, v)| v.clone()),
    ));
    defaults.extend(forwarded.filter(|(k, _)| *k != version).cloned());
    upstream::post(
        backend,
        format!("{}/messages", backend.base_url),
        Auth::Header("x-api-key"),
        &defaults,
        bytes,
        stream,
    )
}
