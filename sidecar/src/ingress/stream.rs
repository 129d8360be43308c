//! The client formats' stream encoders, and the choice of one for an answer: OpenAI's own
//! events for the internal format, the client's own events passed through from a backend that
//! speaks them natively, or a translation's encoder.

use std::collections::VecDeque;

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::json;

use super::Translation;
use crate::error::{ErrorFormat, stream_error_event};
use crate::internal::{Chunk, Endpoint, StreamEncoder};
use crate::sse::SseParser;

/// The encoder for an answer to `endpoint`: the client's own events when the backend answered
/// in the client's format (`native`), else the translation's, else OpenAI's.
pub fn encoder(
    endpoint: Endpoint,
    native: bool,
    translation: Option<Box<dyn Translation>>,
) -> Box<dyn StreamEncoder> {
    match translation {
        _ if native && endpoint == Endpoint::Responses => Box::new(NativeResponsesSse::default()),
        _ if native => Box::new(NativeSse(endpoint.error_format())),
        Some(t) => t.encoder(),
        None => Box::new(OpenAiSse),
    }
}

/// OpenAI's `data: {...}` events, `data: [DONE]` at the end, and
/// `data: {"error": {...}}` on failure (no `[DONE]`, so clients see the break).
pub struct OpenAiSse;

impl StreamEncoder for OpenAiSse {
    fn chunk(&mut self, chunk: Chunk, out: &mut VecDeque<Bytes>) {
        match chunk {
            Chunk::Data(json) => {
                let mut b = BytesMut::with_capacity(json.len() + 8);
                b.put_slice(b"data: ");
                b.put_slice(&json);
                b.put_slice(b"\n\n");
                out.push_back(b.freeze());
            }
            Chunk::Done => out.push_back(Bytes::from_static(b"data: [DONE]\n\n")),
        }
    }

    fn error(&mut self, message: &str, out: &mut VecDeque<Bytes>) {
        out.push_back(stream_error_event(message, ErrorFormat::OpenAi));
    }
}

/// The client's own event stream, passed through: chunks are complete SSE frames from a native
/// backend. A failure after the first byte becomes an error event in the client's format.
pub struct NativeSse(pub ErrorFormat);

impl StreamEncoder for NativeSse {
    fn chunk(&mut self, chunk: Chunk, out: &mut VecDeque<Bytes>) {
        if let Chunk::Data(frame) = chunk {
            out.push_back(frame);
        }
    }

    fn error(&mut self, message: &str, out: &mut VecDeque<Bytes>) {
        out.push_back(stream_error_event(message, self.0));
    }
}

/// The Responses API's own event stream, passed through from a backend that speaks it: chunks
/// are complete SSE frames, one per event. A failure after the first byte becomes what OpenAI
/// sends: an `error` event (flat, as documented, and nested, as OpenAI's servers send it, so the
/// SDKs raise it) and `response.failed` with the response from `response.created`, numbered after
/// the last event passed.
#[derive(Default)]
pub struct NativeResponsesSse {
    events: u64,
    /// The `response` of `response.created`, for `response.failed`.
    created: Option<serde_json::Value>,
}

impl NativeResponsesSse {
    fn emit(&mut self, ty: &str, mut data: serde_json::Value, out: &mut VecDeque<Bytes>) {
        data["type"] = json!(ty);
        data["sequence_number"] = json!(self.events);
        self.events += 1;
        out.push_back(Bytes::from(format!("event: {ty}\ndata: {data}\n\n")));
    }
}

impl StreamEncoder for NativeResponsesSse {
    fn chunk(&mut self, chunk: Chunk, out: &mut VecDeque<Bytes>) {
        if let Chunk::Data(frame) = chunk {
            if self.events == 0 && self.created.is_none() {
                // The first frame is `response.created`: keep its response (parsed once).
                let mut events = Vec::new();
                let mut p = SseParser::default();
                if p.push(&frame, &mut events).is_ok() {
                    p.finish(&mut events);
                }
                self.created = events
                    .first()
                    .and_then(|e| serde_json::from_slice::<serde_json::Value>(&e.data).ok())
                    .and_then(|mut v| v.get_mut("response").map(serde_json::Value::take))
                    .filter(serde_json::Value::is_object);
            }
            self.events += 1;
            out.push_back(frame);
        }
    }

    fn error(&mut self, message: &str, out: &mut VecDeque<Bytes>) {
        self.emit(
            "error",
            json!({
                "code": "server_error", "message": message, "param": null,
                "error": {"type": "server_error", "code": "server_error", "message": message, "param": null},
            }),
            out,
        );
        if let Some(mut r) = self.created.take() {
            r["status"] = json!("failed");
            r["error"] = json!({"code": "server_error", "message": message});
            self.emit("response.failed", json!({ "response": r }), out);
        }
    }
}
