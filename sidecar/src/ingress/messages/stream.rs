//! Anthropic's streaming events from OpenAI chunks, written as each chunk arrives:
//! `message_start` and a `ping` on the first chunk; per content block (the text, then each tool
//! call, with increasing `index`) `content_block_start`, its `content_block_delta`s
//! (`text_delta`, `input_json_delta`) and `content_block_stop`; then `message_delta` with the
//! stop reason and usage, and `message_stop`.
//!
//! What is held back, and why: the block being written stays open until a chunk shows a different
//! block or a finish reason, since OpenAI never says a block ended. `message_delta` waits for the
//! usage chunk, which OpenAI sends after the finish reason (so it reports real token counts
//! rather than a guess), or for the end of the stream when a server sends no usage.
//!
//! On an in-band failure the stream ends with an `error` event and no `message_stop`, as
//! Anthropic's own streams do.

use std::collections::VecDeque;

use bytes::Bytes;
use serde_json::{Value, json};

use super::{stop_reason, tool_use_id, usage_json, usage_of};
use crate::internal::StreamEncoder;
use crate::internal::{Chunk, Usage};

/// The content block being written.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Open {
    None,
    Text(u32),
    Tool(u32),
}

/// Writes OpenAI chat chunks as Anthropic Messages stream events.
pub struct AnthropicSse {
    id: String,
    model: String,
    stop_sequences: Vec<String>,
    input_estimate: u32,
    started: bool,
    /// `message_stop` or `error` is out: nothing more may follow.
    ended: bool,
    open: Open,
    next_index: u32,
    /// (OpenAI tool-call index, Anthropic block index) of every tool call so far.
    tools: Vec<(u64, u32)>,
    stop: Option<(&'static str, Option<String>)>,
    usage: Option<Usage>,
    delta_sent: bool,
    /// Content deltas written: the output estimate when the server reports no usage.
    pieces: u64,
}

fn event(buf: &mut Vec<u8>, name: &str, data: &Value) {
    buf.extend_from_slice(b"event: ");
    buf.extend_from_slice(name.as_bytes());
    buf.extend_from_slice(b"\ndata: ");
    // Writing a `Value` into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *buf, data);
    buf.extend_from_slice(b"\n\n");
}

impl AnthropicSse {
    /// An encoder for the message `id`; `model` and `input_estimate` fill `message_start` until
    /// the backend says better.
    pub fn new(
        id: String,
        model: String,
        stop_sequences: Vec<String>,
        input_estimate: u32,
    ) -> Self {
        Self {
            id,
            model,
            stop_sequences,
            input_estimate,
            started: false,
            ended: false,
            open: Open::None,
            next_index: 0,
            tools: Vec::new(),
            stop: None,
            usage: None,
            delta_sent: false,
            pieces: 0,
        }
    }

    fn start(&mut self, model: Option<&str>, buf: &mut Vec<u8>) {
        self.started = true;
        let message = json!({
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": model.filter(|m| !m.is_empty()).unwrap_or(&self.model),
            "content": [],
            "stop_reason": null,
            "stop_sequence": null,
            "usage": {
                "input_tokens": self.input_estimate,
                "output_tokens": 1,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
            },
        });
        event(
            buf,
            "message_start",
            &json!({"type": "message_start", "message": message}),
        );
        event(buf, "ping", &json!({"type": "ping"}));
    }

    fn close(&mut self, buf: &mut Vec<u8>) {
        if let Open::Text(i) | Open::Tool(i) = self.open {
            event(
                buf,
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": i}),
            );
        }
        self.open = Open::None;
    }

    fn open_block(&mut self, block: Value, buf: &mut Vec<u8>) -> u32 {
        self.close(buf);
        let i = self.next_index;
        self.next_index += 1;
        event(
            buf,
            "content_block_start",
            &json!({"type": "content_block_start", "index": i, "content_block": block}),
        );
        i
    }

    fn text(&mut self, text: &str, buf: &mut Vec<u8>) {
        let i = match self.open {
            Open::Text(i) => i,
            _ => {
                let i = self.open_block(json!({"type": "text", "text": ""}), buf);
                self.open = Open::Text(i);
                i
            }
        };
        self.pieces += 1;
        event(
            buf,
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": i,
                    "delta": {"type": "text_delta", "text": text}}),
        );
    }

    fn tool_call(&mut self, tc: &Value, buf: &mut Vec<u8>) {
        let oa = tc.get("index").and_then(Value::as_u64).unwrap_or(0);
        let f = tc.get("function").unwrap_or(&Value::Null);
        let i = match self.tools.iter().find(|(o, _)| *o == oa) {
            Some(&(_, i)) => i,
            None => {
                let id = tool_use_id(
                    tc.get("id").and_then(Value::as_str),
                    &self.id,
                    self.tools.len(),
                );
                let name = f.get("name").and_then(Value::as_str).unwrap_or("");
                let block = json!({"type": "tool_use", "id": id, "name": name, "input": {}});
                let i = self.open_block(block, buf);
                self.open = Open::Tool(i);
                self.tools.push((oa, i));
                i
            }
        };
        // A server interleaving two calls' arguments gets deltas on the earlier block's index
        // after its stop; the SDKs accumulate by index, so the input still comes out whole.
        if let Some(args) = f
            .get("arguments")
            .and_then(Value::as_str)
            .filter(|a| !a.is_empty())
        {
            self.pieces += 1;
            event(
                buf,
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": i,
                        "delta": {"type": "input_json_delta", "partial_json": args}}),
            );
        }
    }

    fn message_delta(&mut self, buf: &mut Vec<u8>) {
        self.delta_sent = true;
        let (reason, seq) = self.stop.clone().unwrap_or(if self.tools.is_empty() {
            ("end_turn", None)
        } else {
            ("tool_use", None)
        });
        let usage = match &self.usage {
            Some(u) => usage_json(u),
            None => json!({"output_tokens": self.pieces}),
        };
        event(
            buf,
            "message_delta",
            &json!({"type": "message_delta",
                    "delta": {"stop_reason": reason, "stop_sequence": seq},
                    "usage": usage}),
        );
    }

    fn data(&mut self, v: &Value, buf: &mut Vec<u8>) {
        if !self.started {
            self.start(v.get("model").and_then(Value::as_str), buf);
        }
        // Anthropic has no `n`: only the first choice is the message.
        let choice = v.get("choices").and_then(Value::as_array).and_then(|cs| {
            cs.iter()
                .find(|c| c.get("index").and_then(Value::as_u64).unwrap_or(0) == 0)
        });
        if let Some(c) = choice {
            let delta = c.get("delta").unwrap_or(&Value::Null);
            for key in ["content", "refusal"] {
                if let Some(t) = delta
                    .get(key)
                    .and_then(Value::as_str)
                    .filter(|t| !t.is_empty())
                {
                    self.text(t, buf);
                }
            }
            if let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) {
                for tc in calls {
                    self.tool_call(tc, buf);
                }
            }
            if let Some(finish) = c.get("finish_reason").and_then(Value::as_str) {
                self.close(buf);
                self.stop = Some(stop_reason(
                    Some(finish),
                    c.get("stop_reason"),
                    &self.stop_sequences,
                    !self.tools.is_empty(),
                ));
            }
        }
        if let Some(u) = usage_of(v) {
            self.usage = Some(u);
        }
        if self.stop.is_some() && self.usage.is_some() && !self.delta_sent {
            self.message_delta(buf);
        }
    }
}

impl StreamEncoder for AnthropicSse {
    fn chunk(&mut self, chunk: Chunk, out: &mut VecDeque<Bytes>) {
        if self.ended {
            return;
        }
        let mut buf = Vec::new();
        match chunk {
            Chunk::Data(json) => {
                // Decoders hand over whole JSON objects; anything else carries nothing to say.
                if let Ok(v) = serde_json::from_slice::<Value>(&json) {
                    self.data(&v, &mut buf);
                }
            }
            Chunk::Done => {
                if !self.started {
                    self.start(None, &mut buf);
                }
                self.close(&mut buf);
                if !self.delta_sent {
                    self.message_delta(&mut buf);
                }
                event(&mut buf, "message_stop", &json!({"type": "message_stop"}));
                self.ended = true;
            }
        }
        if !buf.is_empty() {
            out.push_back(Bytes::from(buf));
        }
    }

    fn error(&mut self, message: &str, out: &mut VecDeque<Bytes>) {
        if self.ended {
            return;
        }
        self.ended = true;
        // Anthropic's in-stream errors are typed; an upstream that said it was overloaded is
        // worth a retry by clients that retry `overloaded_error`, anything else is `api_error`.
        let lower = message.to_ascii_lowercase();
        let kind = if lower.contains("overloaded") || lower.contains("529") {
            "overloaded_error"
        } else {
            "api_error"
        };
        let mut buf = Vec::new();
        event(
            &mut buf,
            "error",
            &json!({"type": "error", "error": {"type": kind, "message": message}}),
        );
        out.push_back(Bytes::from(buf));
    }
}
