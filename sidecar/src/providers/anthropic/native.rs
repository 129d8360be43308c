//! Anthropic clients on `/v1/messages` reaching an Anthropic backend: the request goes upstream
//! as the client wrote it (only the model and the route's token limits change) and the answer
//! comes back byte for byte, so prompt caching (`cache_control`), extended thinking, citations and
//! betas all work. Usage is read on the side for cost and budgets.

use bytes::{Bytes, BytesMut};
use serde::Deserialize;

use super::response::MessagesUsage;
use super::stream_error;
use crate::providers::{Chunk, Decoded, StreamDecoder, UpstreamError, Usage};
use crate::sse::{SseEvent, frame};

/// The client's body with the backend's model and the effective `max_tokens`.
pub fn body(
    native: &crate::providers::Native<'_>,
    model: &str,
    max_tokens: Option<u32>,
) -> Vec<u8> {
    crate::providers::native_body(native, model, "max_tokens", max_tokens)
}

#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    usage: Option<MessagesUsage>,
}

/// Reads usage from a complete `message`; the body goes to the client unchanged.
pub fn decode(body: Bytes, key: Option<&str>) -> Result<Decoded, UpstreamError> {
    match serde_json::from_slice::<Answer>(&body) {
        Ok(a) => Ok(Decoded {
            usage: a.usage.map(|u| u.normalise()),
            body,
        }),
        Err(e) => Err(UpstreamError::retryable(
            "malformed",
            format!(
                "Anthropic answered with malformed JSON: {}",
                crate::providers::redact(&e.to_string(), key)
            ),
        )),
    }
}

#[derive(Deserialize)]
struct Start {
    message: StartMessage,
}

#[derive(Deserialize)]
struct StartMessage {
    #[serde(default)]
    usage: Option<MessagesUsage>,
}

#[derive(Deserialize)]
struct Delta {
    #[serde(default)]
    usage: Option<MessagesUsage>,
}

/// Passes Anthropic's events through as complete SSE frames, reading usage from `message_start`
/// and `message_delta`. Frames before the first content (`message_start`, `ping`, the first
/// `content_block_start`) are held back so an `error` event there can still fail over.
pub struct Passthrough {
    key: Option<String>,
    held: BytesMut,
    committed: bool,
    usage: Option<MessagesUsage>,
    done: bool,
    output_bytes: u64,
}

impl Passthrough {
    /// A decoder for one stream.
    pub fn new(key: Option<String>) -> Self {
        Self {
            key,
            held: BytesMut::new(),
            committed: false,
            usage: None,
            done: false,
            output_bytes: 0,
        }
    }

    fn merge(&mut self, u: Option<MessagesUsage>) {
        if let Some(u) = u {
            match &mut self.usage {
                Some(cur) => cur.merge(&u),
                None => self.usage = Some(u),
            }
        }
    }
}

impl StreamDecoder for Passthrough {
    fn event(&mut self, ev: SseEvent, out: &mut Vec<Chunk>) -> Result<(), UpstreamError> {
        if self.done {
            return Ok(());
        }
        let hold = match ev.event.as_str() {
            "error" => return Err(stream_error(&ev.data, self.key.as_deref())),
            "message_start" => {
                let start: Option<Start> = serde_json::from_slice(&ev.data).ok();
                self.merge(start.and_then(|s| s.message.usage));
                true
            }
            "message_delta" => {
                let delta: Option<Delta> = serde_json::from_slice(&ev.data).ok();
                self.merge(delta.and_then(|d| d.usage));
                false
            }
            "content_block_delta" => {
                self.output_bytes += ev.data.len() as u64;
                false
            }
            "message_stop" => {
                self.done = true;
                false
            }
            _ => !self.committed,
        };
        frame(&ev, &mut self.held);
        if !hold || self.committed {
            self.committed = true;
            out.push(Chunk::Data(self.held.split().freeze()));
        }
        if self.done {
            out.push(Chunk::Done);
        }
        Ok(())
    }

    fn finish(&mut self, _out: &mut Vec<Chunk>) -> Result<(), UpstreamError> {
        if self.done {
            Ok(())
        } else {
            Err(UpstreamError::retryable(
                "stream_cut",
                "the upstream closed the stream before message_stop",
            ))
        }
    }

    fn usage(&self) -> Option<Usage> {
        // Output tokens arrive with message_delta; until then the stream was cut short.
        self.usage.filter(|_| self.done).map(|u| u.normalise())
    }

    fn output_estimate(&self) -> u64 {
        // A content_block_delta event is about 100 bytes of framing around a few tokens.
        self.output_bytes / 40
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sse::SseParser;
    use serde_json::Value;

    const STREAM: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-20250514\",\"usage\":{\"input_tokens\":25,\"cache_read_input_tokens\":1000,\"cache_creation_input_tokens\":0,\"output_tokens\":1}}}\n\n\
event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n\
event: ping\ndata: {\"type\": \"ping\"}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n\
event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n\
event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":15}}\n\n\
event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

    fn run(input: &str) -> (Vec<Chunk>, Result<(), UpstreamError>, Passthrough) {
        let mut p = SseParser::default();
        let mut events = Vec::new();
        p.push(input.as_bytes(), &mut events).unwrap();
        p.finish(&mut events);
        let mut d = Passthrough::new(None);
        let mut out = Vec::new();
        for ev in events {
            if let Err(e) = d.event(ev, &mut out) {
                return (out, Err(e), d);
            }
        }
        let r = d.finish(&mut out);
        (out, r, d)
    }

    #[test]
    fn passes_the_stream_through_byte_for_byte_and_reads_usage() {
        let (out, r, d) = run(STREAM);
        r.unwrap();
        let bytes: Vec<u8> = out
            .iter()
            .filter_map(|c| match c {
                Chunk::Data(b) => Some(b.to_vec()),
                Chunk::Done => None,
            })
            .flatten()
            .collect();
        assert_eq!(String::from_utf8(bytes).unwrap(), STREAM);
        assert_eq!(out.last(), Some(&Chunk::Done));
        let u = d.usage().unwrap();
        assert_eq!((u.prompt, u.cached_input, u.output), (1025, 1000, 15));
    }

    #[test]
    fn nothing_is_committed_before_content_so_an_early_error_fails_over() {
        let early = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":5}}}\n\n\
event: ping\ndata: {\"type\": \"ping\"}\n\n\
event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";
        let (out, r, _) = run(early);
        assert!(out.is_empty(), "{out:?}");
        let e = r.unwrap_err();
        assert_eq!(e.class, crate::providers::ErrorClass::Retryable);
        assert_eq!(e.reason, "overloaded");
    }

    #[test]
    fn a_stream_without_message_stop_is_cut() {
        let cut = &STREAM[..STREAM.find("event: message_delta").unwrap()];
        let (_, r, d) = run(cut);
        assert_eq!(r.unwrap_err().reason, "stream_cut");
        assert!(d.usage().is_none());
        assert!(d.output_estimate() == 0 || d.output_estimate() < 10);
    }

    #[test]
    fn the_body_keeps_everything_but_the_model_and_limits() {
        let body: serde_json::Map<String, Value> = serde_json::from_str(
            r#"{"model":"chat","max_tokens":8000,"system":[{"type":"text","text":"big","cache_control":{"type":"ephemeral"}}],"thinking":{"type":"enabled","budget_tokens":2000},"messages":[{"role":"user","content":"hi"}]}"#,
        )
        .unwrap();
        let native = crate::providers::Native {
            endpoint: crate::internal::Endpoint::Messages,
            body: &body,
            headers: &[],
        };
        let out: Value = serde_json::from_slice(&super::body(
            &native,
            "claude-sonnet-4-20250514",
            Some(4096),
        ))
        .unwrap();
        assert_eq!(out["model"], "claude-sonnet-4-20250514");
        assert_eq!(out["max_tokens"], 4096);
        assert_eq!(out["system"][0]["cache_control"]["type"], "ephemeral");
        assert_eq!(out["thinking"]["budget_tokens"], 2000);
    }
}
