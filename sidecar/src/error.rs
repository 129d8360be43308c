//! The one place errors become HTTP responses: an OpenAI-shaped
//! `{"error": {"message", "type", "param", "code"}}` (or Anthropic's shape on `/v1/messages`)
//! with the right status, and a low-cardinality reason for metrics.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use serde_json::json;

/// Which wire format errors are written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorFormat {
    /// `{"error": {"message", "type", "param", "code"}}`.
    OpenAi,
    /// `{"type": "error", "error": {"type", "message"}}`.
    Anthropic,
}

/// An error answered to the client.
#[derive(Clone, Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// The OpenAI `type` (`invalid_request_error`, `rate_limit_exceeded`, ...).
    pub kind: &'static str,
    /// The OpenAI `code`, when there is one.
    pub code: Option<&'static str>,
    /// The request field at fault.
    pub param: Option<String>,
    /// What went wrong and what to do, for people. Never contains a key or a prompt.
    pub message: String,
    /// Seconds for the `retry-after` header.
    pub retry_after: Option<Duration>,
    /// A low-cardinality label for metrics (`bad_request`, `rpm`, `upstream_5xx`, ...).
    pub reason: &'static str,
    /// An upstream error body to hand back unchanged (already in the client's format).
    pub passthrough: Option<Bytes>,
}

/// `Result` with [`ApiError`].
pub type Result<T, E = ApiError> = std::result::Result<T, E>;

impl ApiError {
    fn new(
        status: StatusCode,
        kind: &'static str,
        reason: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            kind,
            code: None,
            param: None,
            message: message.into(),
            retry_after: None,
            reason,
            passthrough: None,
        }
    }

    /// 400: the request is malformed or asks for something invalid.
    pub fn bad_request(param: impl Into<Option<String>>, message: impl Into<String>) -> Self {
        let mut e = Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "bad_request",
            message,
        );
        e.param = param.into();
        e
    }

    /// 404 for an unknown model.
    pub fn model_not_found(message: impl Into<String>) -> Self {
        let mut e = Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "model_not_found",
            message,
        );
        e.code = Some("model_not_found");
        e.param = Some("model".into());
        e
    }

    /// 404 for an unknown path.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "not_found",
            message,
        )
    }

    /// 405 for a known path with the wrong method.
    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            "method_not_allowed",
            message,
        )
    }

    /// 401 for a missing or wrong local API key.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        let mut e = Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "unauthorized",
            message,
        );
        e.code = Some("invalid_api_key");
        e
    }

    /// 413 for a body over the size limit.
    pub fn too_large(message: impl Into<String>) -> Self {
        let mut e = Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "body_size",
            message,
        );
        e.code = Some("request_too_large");
        e
    }

    /// 429 from a local limit; `kind` is OpenAI's `requests` or `tokens`.
    pub fn rate_limited(
        kind: &'static str,
        reason: &'static str,
        retry_after: Duration,
        message: impl Into<String>,
    ) -> Self {
        let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, kind, reason, message);
        e.code = Some("rate_limit_exceeded");
        e.retry_after = Some(retry_after);
        e
    }

    /// 429 when a budget is spent.
    pub fn budget_exceeded(retry_after: Option<Duration>, message: impl Into<String>) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "insufficient_quota",
            "budget",
            message,
        );
        e.code = Some("budget_exceeded");
        e.retry_after = retry_after;
        e
    }

    /// 502/503/504 when no backend answered.
    pub fn upstream(status: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(
            status,
            if status == StatusCode::GATEWAY_TIMEOUT {
                "timeout"
            } else {
                "server_error"
            },
            reason,
            message,
        )
    }

    /// 503 when the sidecar has no config to serve yet.
    pub fn not_ready(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "not_ready",
            message,
        )
    }

    /// 503 when the sidecar already holds as many requests as it admits; retry in a second.
    pub fn overloaded(message: impl Into<String>) -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "overloaded",
            message,
        );
        e.code = Some("overloaded");
        e.retry_after = Some(Duration::from_secs(1));
        e
    }

    /// 500 for a bug; the message says so.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "internal",
            message,
        )
    }

    /// Sets the `code`.
    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// Sets the `param`.
    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// The response body in `format`.
    pub fn body(&self, format: ErrorFormat) -> Bytes {
        if let Some(b) = &self.passthrough
            && format == ErrorFormat::OpenAi
        {
            return b.clone();
        }
        let v = match format {
            ErrorFormat::OpenAi => json!({
                "error": {
                    "message": self.message,
                    "type": self.kind,
                    "param": self.param,
                    "code": self.code,
                }
            }),
            ErrorFormat::Anthropic => json!({
                "type": "error",
                "error": { "type": anthropic_type(self.status), "message": self.message }
            }),
        };
        Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
    }

    /// The HTTP response in `format`: the status, the JSON body and `retry-after`, with room
    /// for the `x-llmesh-*` and request-id headers added later (one allocation for the map).
    pub fn response(&self, format: ErrorFormat) -> Response<Bytes> {
        let mut r = Response::new(self.body(format));
        *r.status_mut() = self.status;
        let mut headers = HeaderMap::with_capacity(12);
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(v) = self.retry_after_header() {
            headers.insert(RETRY_AFTER, v);
        }
        *r.headers_mut() = headers;
        r
    }

    /// The whole HTTP/1.1 answer in `format` as bytes, for a connection refused before hyper
    /// takes it: the status line, the headers of [`ApiError::response`] with
    /// `connection: close`, and the body.
    pub fn raw_response(&self, format: ErrorFormat) -> Vec<u8> {
        use std::fmt::Write as _;
        let body = self.body(format);
        let mut head = format!(
            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\n",
            self.status.as_str(),
            self.status.canonical_reason().unwrap_or(""),
        );
        if let Some(v) = self.retry_after_header()
            && let Ok(v) = v.to_str()
        {
            let _ = write!(head, "retry-after: {v}\r\n");
        }
        let _ = write!(
            head,
            "connection: close\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        let mut out = head.into_bytes();
        out.extend_from_slice(&body);
        out
    }

    /// The `retry-after` header value, whole seconds rounded up.
    pub fn retry_after_header(&self) -> Option<HeaderValue> {
        self.retry_after.map(|d| {
            let secs = d.as_millis().div_ceil(1000).max(1);
            HeaderValue::from(secs as u64)
        })
    }
}

/// The event that tells a client in-band that its stream failed after it started (a 502
/// `stream_error`): OpenAI's `data: {"error": ...}` or Anthropic's `event: error`.
pub fn stream_error_event(message: &str, format: ErrorFormat) -> Bytes {
    let e = ApiError::upstream(StatusCode::BAD_GATEWAY, "stream_error", message)
        .with_code("stream_error");
    let body = e.body(format);
    let mut b = BytesMut::with_capacity(body.len() + 24);
    if format == ErrorFormat::Anthropic {
        b.put_slice(b"event: error\n");
    }
    b.put_slice(b"data: ");
    b.put_slice(&body);
    b.put_slice(b"\n\n");
    b.freeze()
}

/// Anthropic's error `type` for a status.
pub fn anthropic_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        413 => "request_too_large",
        400 | 405 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        504 => "timeout_error",
        _ => "api_error",
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.kind,
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

/// At most `max` bytes of a value a client sent, for an error message or a log line: a 15 MB
/// model name is not copied whole into either.
pub fn excerpt(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if s.len() <= max {
        return s.into();
    }
    let mut at = max;
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    format!("{}... ({} bytes)", &s[..at], s.len()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_shape_has_all_four_fields() {
        let e = ApiError::bad_request(Some("messages".to_string()), "messages must be an array");
        let v: serde_json::Value = serde_json::from_slice(&e.body(ErrorFormat::OpenAi)).unwrap();
        assert_eq!(v["error"]["message"], "messages must be an array");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["param"], "messages");
        assert!(v["error"]["code"].is_null());
    }

    #[test]
    fn anthropic_shape_maps_the_type_from_the_status() {
        let e = ApiError::rate_limited("requests", "rpm", Duration::from_millis(1500), "slow down");
        let v: serde_json::Value = serde_json::from_slice(&e.body(ErrorFormat::Anthropic)).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "rate_limit_error");
        assert_eq!(e.retry_after_header().unwrap(), "2");
    }

    #[test]
    fn response_carries_status_body_and_retry_after() {
        let e = ApiError::overloaded("busy");
        let r = e.response(ErrorFormat::Anthropic);
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()["content-type"], "application/json");
        assert_eq!(r.headers()["retry-after"], "1");
        let v: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
        assert_eq!(v["error"]["type"], "overloaded_error");
        let r = ApiError::not_found("nothing").response(ErrorFormat::OpenAi);
        assert!(r.headers().get("retry-after").is_none());
    }

    #[test]
    fn raw_response_is_the_same_answer_on_a_closing_connection() {
        let e = ApiError::overloaded("busy");
        let raw = e.raw_response(ErrorFormat::OpenAi);
        let body = e.body(ErrorFormat::OpenAi);
        let head = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        assert_eq!(raw, [head.as_bytes(), &body[..]].concat());
        let raw = ApiError::not_found("nothing").raw_response(ErrorFormat::OpenAi);
        let raw = String::from_utf8(raw).unwrap();
        assert!(raw.starts_with("HTTP/1.1 404 Not Found\r\n"), "{raw}");
        assert!(!raw.contains("retry-after"), "{raw}");
    }

    #[test]
    fn stream_errors_are_events_in_the_client_format() {
        let openai = stream_error_event("cut", ErrorFormat::OpenAi);
        let json = openai
            .strip_prefix(b"data: ")
            .unwrap()
            .strip_suffix(b"\n\n")
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(json).unwrap();
        assert_eq!(
            v,
            json!({"error": {"message": "cut", "type": "server_error", "param": null, "code": "stream_error"}})
        );
        let anthropic = stream_error_event("cut", ErrorFormat::Anthropic);
        let json = anthropic
            .strip_prefix(b"event: error\ndata: ")
            .unwrap()
            .strip_suffix(b"\n\n")
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(json).unwrap();
        assert_eq!(
            v,
            json!({"type": "error", "error": {"type": "api_error", "message": "cut"}})
        );
    }
}
