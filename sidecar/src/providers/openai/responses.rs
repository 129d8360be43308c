//! OpenAI's Responses API spoken natively: a `/v1/responses` client reaching an OpenAI backend
//! has its body sent to `{baseUrl}/responses` as written (only `model` and the route's token
//! limit on `max_output_tokens` change) and the answer comes back byte for byte, JSON or event
//! stream, so built-in tools, server-side conversation state (`previous_response_id`,
//! `conversation`), `include`, `reasoning` and whatever OpenAI adds next keep working. Usage is
//! read on the side, from the Response object or from the stream's terminal event.

use bytes::{Bytes, BytesMut};
use serde::Deserialize;

use crate::providers::{
    Chunk, Decoded, ErrorClass, StreamDecoder, UpstreamError, Usage, excerpt, redact, redact_json,
};
use crate::sse::{SseEvent, frame};

/// The client's body with the backend's model and `max_output_tokens` no larger than the limit
/// the route and its budgets allow.
pub fn body(
    native: &crate::providers::Native<'_>,
    model: &str,
    max_tokens: Option<u32>,
) -> Vec<u8> {
    crate::providers::native_body(native, model, "max_output_tokens", max_tokens)
}

/// Usage as the Responses API reports it. `input_tokens` includes the cached ones.
#[derive(Deserialize, Default, Debug, Clone, Copy)]
struct ResponsesUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
    #[serde(default)]
    input_tokens_details: Option<InputDetails>,
}

#[derive(Deserialize, Default, Debug, Clone, Copy)]
struct InputDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

impl ResponsesUsage {
    fn normalise(self) -> Usage {
        Usage {
            prompt: self.input_tokens,
            cached_input: self
                .input_tokens_details
                .and_then(|d| d.cached_tokens)
                .unwrap_or(0)
                .min(self.input_tokens),
            cache_write: 0,
            output: self.output_tokens,
            estimated: false,
        }
    }
}

/// The parts of a Response object the sidecar reads.
#[derive(Deserialize, Default)]
struct ResponseObject {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    usage: Option<ResponsesUsage>,
    #[serde(default)]
    error: Option<ErrorObject>,
}

#[derive(Deserialize, Default)]
struct ErrorObject {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

impl ErrorObject {
    fn describe(&self, key: Option<&str>) -> String {
        let message = self.message.as_deref().unwrap_or("(no message)");
        let message = redact(message, key);
        match self.code.as_deref() {
            Some(c) if !c.is_empty() => format!("{c}: {message}"),
            _ => message,
        }
    }

    /// How a failure the upstream reported inside a 200 is handled before the first byte.
    fn upstream_error(&self, reason: &'static str, key: Option<&str>) -> UpstreamError {
        let code = self.code.as_deref().unwrap_or_default();
        let mut e = UpstreamError::retryable(reason, self.describe(key));
        if code.contains("rate_limit") {
            e.reason = "status_429";
        } else if code.contains("context_length") {
            e.class = ErrorClass::ContextWindow;
            e.reason = "context_window";
        }
        e
    }
}

/// Reads usage from a complete Response object; the body goes to the client unchanged. A
/// response that failed (`status: failed`) is a failure before the first byte, like an early
/// `response.failed` in a stream: the next backend may answer.
pub fn decode(body: Bytes, key: Option<&str>) -> Result<Decoded, UpstreamError> {
    let r: ResponseObject = serde_json::from_slice(&body).map_err(|e| {
        UpstreamError::retryable(
            "malformed",
            format!(
                "the Responses API answered with malformed JSON: {}",
                redact(&e.to_string(), key)
            ),
        )
    })?;
    if r.status.as_deref() == Some("failed") {
        return Err(r
            .error
            .unwrap_or_default()
            .upstream_error("response_failed", key));
    }
    Ok(Decoded {
        usage: r.usage.map(ResponsesUsage::normalise),
        body,
    })
}

/// An event whose payload the decoder reads: the terminal events and `error`.
#[derive(Deserialize, Default)]
struct Terminal {
    #[serde(default)]
    response: Option<ResponseObject>,
    // `error` events carry code and message at the top level (the documented shape) and, from
    // OpenAI's servers, nested under `error` too.
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    error: Option<ErrorObject>,
}

#[derive(Deserialize)]
struct Typed {
    #[serde(rename = "type", default)]
    kind: String,
}

/// How the stream ended, once it did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// `response.completed` or `response.incomplete`.
    Done,
    /// `response.failed`: a proper end, but a failed response.
    Failed,
}

/// A failure event as the client may see it: every string in it redacted for `key`.
fn redacted(mut ev: SseEvent, key: Option<&str>) -> SseEvent {
    ev.data = redact_json(&ev.data, key)
        .unwrap_or_else(|| Bytes::from(excerpt(&ev.data, ev.data.len(), key)));
    ev
}

/// Passes the Responses API's events through as complete SSE frames, one chunk per event,
/// reading usage from the terminal event (`response.completed`, `response.incomplete` or
/// `response.failed`). `response.created`, `response.in_progress` and `response.queued` are held
/// until the first event about the output, so an `error` or `response.failed` right after them
/// still fails over to the next backend. A stream that ends without a terminal event is broken.
pub struct Passthrough {
    key: Option<String>,
    held: Vec<Bytes>,
    committed: bool,
    usage: Option<Usage>,
    end: Option<End>,
    /// An `error` event passed through after the first byte.
    error_seen: bool,
    deltas: u64,
}

impl Passthrough {
    /// A decoder for one stream.
    pub fn new(key: Option<String>) -> Self {
        Self {
            key,
            held: Vec::new(),
            committed: false,
            usage: None,
            end: None,
            error_seen: false,
            deltas: 0,
        }
    }

    fn pass(&mut self, ev: &SseEvent, out: &mut Vec<Chunk>) {
        let mut b = BytesMut::new();
        frame(ev, &mut b);
        self.committed = true;
        for h in self.held.drain(..) {
            out.push(Chunk::Data(h));
        }
        out.push(Chunk::Data(b.freeze()));
    }

    fn terminal(&self, data: &[u8]) -> Terminal {
        serde_json::from_slice(data).unwrap_or_default()
    }
}

impl StreamDecoder for Passthrough {
    fn event(&mut self, ev: SseEvent, out: &mut Vec<Chunk>) -> Result<(), UpstreamError> {
        if self.end.is_some() {
            return Ok(());
        }
        // OpenAI names every event; a server that sends only `data:` still has `type` in it.
        let typed;
        let kind = if ev.event.is_empty() {
            typed = serde_json::from_slice::<Typed>(&ev.data)
                .map(|t| t.kind)
                .unwrap_or_default();
            typed.as_str()
        } else {
            ev.event.as_str()
        };
        let key = self.key.as_deref();
        match kind {
            "response.created" | "response.in_progress" | "response.queued" if !self.committed => {
                if serde_json::from_slice::<serde::de::IgnoredAny>(&ev.data).is_err() {
                    return Err(UpstreamError::retryable(
                        "malformed",
                        "malformed JSON in the first events of the stream",
                    ));
                }
                let mut b = BytesMut::new();
                frame(&ev, &mut b);
                self.held.push(b.freeze());
            }
            "error" => {
                let t = self.terminal(&ev.data);
                let err = t.error.unwrap_or(ErrorObject {
                    code: t.code,
                    message: t.message,
                });
                if !self.committed {
                    return Err(err.upstream_error("stream_error", key));
                }
                // The client gets OpenAI's own error event, redacted; a `response.failed` may
                // follow.
                self.error_seen = true;
                self.pass(&redacted(ev, key), out);
            }
            "response.failed" => {
                let r = self.terminal(&ev.data).response.unwrap_or_default();
                if !self.committed {
                    return Err(r
                        .error
                        .unwrap_or_default()
                        .upstream_error("response_failed", key));
                }
                self.usage = r.usage.map(ResponsesUsage::normalise);
                self.end = Some(End::Failed);
                self.pass(&redacted(ev, key), out);
                out.push(Chunk::Done);
            }
            "response.completed" | "response.incomplete" => {
                let r = self.terminal(&ev.data).response.unwrap_or_default();
                self.usage = r.usage.map(ResponsesUsage::normalise);
                self.end = Some(End::Done);
                self.pass(&ev, out);
                out.push(Chunk::Done);
            }
            k => {
                if k.ends_with(".delta") {
                    self.deltas += 1;
                }
                self.pass(&ev, out);
            }
        }
        Ok(())
    }

    fn finish(&mut self, _out: &mut Vec<Chunk>) -> Result<(), UpstreamError> {
        // After an `error` event the client already knows; only a silent end is a cut.
        if self.end.is_some() || self.error_seen {
            Ok(())
        } else {
            Err(UpstreamError::retryable(
                "stream_cut",
                "the upstream closed the stream before response.completed",
            ))
        }
    }

    fn usage(&self) -> Option<Usage> {
        self.usage
    }

    fn output_estimate(&self) -> u64 {
        // OpenAI sends about one token per delta event.
        self.deltas
    }

    fn failure(&self) -> Option<&'static str> {
        match self.end {
            Some(End::Failed) => Some("response_failed"),
            Some(End::Done) => None,
            None if self.error_seen => Some("stream_error"),
            None => None,
        }
    }
}
