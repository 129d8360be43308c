//! Google's Gemini API: `POST {baseUrl}/models/{model}:generateContent`, streaming through
//! `:streamGenerateContent?alt=sse`, key in `x-goog-api-key`.
//!
//! [`request`] turns the OpenAI chat-completions body into a `GenerateContentRequest` (tool
//! schemas cleaned by [`schema`]), [`response`] turns `GenerateContentResponse`s back into
//! OpenAI bodies and chunks as they arrive. A prompt or answer blocked by Gemini's safety
//! filters before any content is a [`ErrorClass::ContentPolicy`] failure, so routes fall back.
//! docs/providers.md lists what is translated and what is not.

mod request;
mod response;
mod schema;
#[cfg(test)]
mod tests;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::Full;
use serde::Deserialize;
use serde_json::{Map, Value};

use llmesh_api::snapshot::Backend;

use super::upstream::{self, Auth};
use super::{
    Decoded, ErrorClass, Op, Provider, StreamDecoder, UpstreamError, excerpt, key, redact,
    retry_after,
};

/// The Gemini adapter.
pub struct Gemini;

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The resource path of a model: bare ids live under `models/`; `tunedModels/...` and ids
/// already starting with `models/` are used as they are.
fn model_path(model: &str) -> String {
    if model.contains('/') {
        model.to_string()
    } else {
        format!("models/{model}")
    }
}

/// The URL of a chat call.
pub fn url(backend: &Backend, model: &str, stream: bool) -> String {
    let path = model_path(model);
    if stream {
        format!("{}/{path}:streamGenerateContent?alt=sse", backend.base_url)
    } else {
        format!("{}/{path}:generateContent", backend.base_url)
    }
}

impl Provider for Gemini {
    fn supports(&self, op: Op) -> bool {
        op == Op::Chat
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
            return Err(UpstreamError::cannot_serve("Gemini", op));
        }
        let model = body
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or(&backend.model);
        let translated = request::translate(body, model)?;
        upstream::post(
            backend,
            url(backend, model, stream),
            Auth::Header("x-goog-api-key"),
            &[],
            upstream::encode(&translated)?,
            stream,
        )
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
        response::decode(
            &body,
            &backend.model,
            now_unix(),
            &mut fastrand::Rng::new(),
            key(backend),
        )
    }

    fn stream(
        &self,
        backend: &Backend,
        _op: Op,
        client_wants_usage: bool,
    ) -> Box<dyn StreamDecoder> {
        Box::new(response::GeminiStream::new(
            &backend.model,
            client_wants_usage,
            now_unix(),
            fastrand::Rng::new(),
            key(backend).map(str::to_string),
        ))
    }
}

/// Google's error body: `{"error": {"code", "message", "status", "details": [...]}}`.
#[derive(Deserialize, Default)]
struct ErrorEnvelope {
    #[serde(default)]
    error: Option<GoogleError>,
}

/// One Google API error.
#[derive(Deserialize, Default, Debug)]
pub struct GoogleError {
    #[serde(default)]
    code: Option<u16>,
    #[serde(default)]
    message: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    details: Vec<ErrorDetail>,
}

/// `google.rpc` detail objects; only `RetryInfo` and `ErrorInfo` matter here.
#[derive(Deserialize, Default, Debug)]
#[serde(rename_all = "camelCase")]
struct ErrorDetail {
    #[serde(default)]
    retry_delay: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

/// A protobuf `Duration` in JSON: `"37s"`, `"0.5s"`.
fn proto_duration(s: &str) -> Option<Duration> {
    let secs: f64 = s.trim().strip_suffix('s')?.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_millis((secs * 1000.0) as u64))
}

fn parse_error(body: &[u8]) -> Option<GoogleError> {
    // Without `alt=sse` the streaming endpoint wraps everything, errors too, in an array.
    if body.first() == Some(&b'[') {
        return serde_json::from_slice::<Vec<ErrorEnvelope>>(body)
            .ok()?
            .into_iter()
            .next()?
            .error;
    }
    serde_json::from_slice::<ErrorEnvelope>(body).ok()?.error
}

/// Classifies a Gemini error answer (the Gemini API troubleshooting page lists the codes).
pub fn classify(
    key: Option<&str>,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
) -> UpstreamError {
    let err = parse_error(body).unwrap_or_else(|| GoogleError {
        message: excerpt(body, 300, key),
        ..GoogleError::default()
    });
    let mut e = classify_error(key, status, &err);
    e.retry_after = retry_after(headers).or(e.retry_after);
    e
}

/// Classifies a parsed Google error (also the ones that arrive inside a stream).
fn classify_error(key: Option<&str>, status: StatusCode, err: &GoogleError) -> UpstreamError {
    let lower = err.message.to_ascii_lowercase();
    let bad_key = err
        .details
        .iter()
        .any(|d| d.reason.as_deref() == Some("API_KEY_INVALID"))
        || lower.contains("api key not valid");
    let (class, reason) = match status.as_u16() {
        429 => (ErrorClass::Retryable, "status_429"),
        408 | 500..=599 => (ErrorClass::Retryable, "status_5xx"),
        401 | 403 => (ErrorClass::Auth, "auth"),
        404 => (ErrorClass::NotFound, "not_found"),
        // Gemini reports a bad key as 400 INVALID_ARGUMENT / API_KEY_INVALID.
        400 if bad_key => (ErrorClass::Auth, "auth"),
        // Billing not enabled, or the region not served: nothing this request can change.
        400 if err.status == "FAILED_PRECONDITION" => (ErrorClass::Auth, "precondition"),
        400 if lower.contains("input token count")
            || lower.contains("exceeds the maximum number of tokens") =>
        {
            (ErrorClass::ContextWindow, "context_window")
        }
        _ => (ErrorClass::Client, "status_4xx"),
    };
    let retry_delay = err
        .details
        .iter()
        .filter_map(|d| d.retry_delay.as_deref())
        .find_map(proto_duration);
    let safe = redact(&err.message, key);
    UpstreamError {
        class,
        status: Some(status),
        message: if err.status.is_empty() {
            format!("{} {safe}", status.as_u16())
        } else {
            format!("{} {}: {safe}", status.as_u16(), err.status)
        },
        retry_after: retry_delay,
        reason,
        openai_body: None,
    }
}
