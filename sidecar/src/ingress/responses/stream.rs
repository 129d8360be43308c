//! OpenAI chat completion chunks as the Responses API's typed stream events, in their documented
//! order: `response.created`, `response.in_progress`; per output item `response.output_item.added`,
//! its content (`response.content_part.added`, `response.output_text.delta`...,
//! `response.output_text.done`, `response.content_part.done`, or
//! `response.function_call_arguments.delta`..., `response.function_call_arguments.done`), then
//! `response.output_item.done`; finally `response.completed` (or `response.incomplete`) with the
//! whole response and its usage. A failure after the start is an `error` event followed by
//! `response.failed`. Each event is `event: <type>` plus `data:` JSON carrying the same `type` and
//! a `sequence_number` counting from 0.

use std::collections::VecDeque;

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::output::{call_item, message_item, output_text, refusal};
use super::{Pending, Status, usage};
use crate::internal::Chunk;
use crate::internal::StreamEncoder;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    Text,
    Refusal,
}

/// The output item being written.
enum Open {
    Message {
        id: String,
        /// Finished content parts.
        parts: Vec<Value>,
        /// The part being written.
        part: Option<(Part, String)>,
    },
    Call {
        id: String,
        call_id: String,
        name: String,
        arguments: String,
        /// The chat `tool_calls[].index` this item follows.
        tool_index: u64,
    },
}

/// Writes a streamed chat completion as Responses API events.
pub(super) struct Encoder {
    pending: Pending,
    seq: u64,
    started: bool,
    ended: bool,
    model: String,
    /// Finished output items, in output order; the open one comes next.
    output: Vec<Value>,
    open: Option<Open>,
    /// Set by the chunk carrying `finish_reason`.
    finish: Option<Status>,
    /// The chat usage from the final chunk.
    usage: Option<Value>,
}

impl Encoder {
    pub(super) fn new(pending: Pending) -> Self {
        let model = pending
            .skeleton
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        Self {
            pending,
            seq: 0,
            started: false,
            ended: false,
            model,
            output: Vec::new(),
            open: None,
            finish: None,
            usage: None,
        }
    }

    fn emit(&mut self, ty: &str, fields: Value, out: &mut VecDeque<Bytes>) {
        let mut data = Map::new();
        data.insert("type".into(), json!(ty));
        if let Value::Object(f) = fields {
            data.extend(f);
        }
        data.insert("sequence_number".into(), json!(self.seq));
        self.seq += 1;
        let data = serde_json::to_string(&data).unwrap_or_default();
        out.push_back(Bytes::from(format!("event: {ty}\ndata: {data}\n\n")));
    }

    fn snapshot(&self, status: Status, output: Vec<Value>, error: Option<Value>) -> Value {
        let usage = match (status, &self.usage) {
            (Status::InProgress, _) | (Status::Failed, None) => None,
            (_, Some(u)) => Some(usage(u, None)),
            // A finished response always carries a usage object (clients read it from the final
            // event); a backend that reported none counts as zero here, and the sidecar's own
            // accounting estimates it.
            (_, None) => Some(usage(&Value::Null, None)),
        };
        self.pending
            .respond(status, &self.model, output, usage, error)
    }

    fn start(&mut self, out: &mut VecDeque<Bytes>) {
        if self.started {
            return;
        }
        self.started = true;
        let r = self.snapshot(Status::InProgress, Vec::new(), None);
        self.emit("response.created", json!({ "response": r }), out);
        self.emit("response.in_progress", json!({ "response": r }), out);
    }

    /// Text or refusal content: opens a message item and the right content part as needed.
    fn content(&mut self, kind: Part, delta: &str, out: &mut VecDeque<Bytes>) {
        if !matches!(self.open, Some(Open::Message { .. })) {
            self.close(Status::Completed, out);
            let id = self.pending.ids.message(self.output.len());
            let item = message_item(&id, "in_progress", Vec::new());
            let output_index = self.output.len();
            self.emit(
                "response.output_item.added",
                json!({"output_index": output_index, "item": item}),
                out,
            );
            self.open = Some(Open::Message {
                id,
                parts: Vec::new(),
                part: None,
            });
        }
        let output_index = self.output.len();
        let (id, same) = match &self.open {
            Some(Open::Message { id, part, .. }) => {
                (id.clone(), part.as_ref().is_some_and(|(k, _)| *k == kind))
            }
            _ => return,
        };
        if !same {
            self.close_part(out);
            let Some(Open::Message { parts, part, .. }) = &mut self.open else {
                return;
            };
            *part = Some((kind, String::new()));
            let content_index = parts.len();
            let empty = match kind {
                Part::Text => output_text(""),
                Part::Refusal => refusal(""),
            };
            self.emit(
                "response.content_part.added",
                json!({"item_id": id, "output_index": output_index, "content_index": content_index, "part": empty}),
                out,
            );
        }
        let content_index = match &mut self.open {
            Some(Open::Message {
                parts,
                part: Some((_, text)),
                ..
            }) => {
                text.push_str(delta);
                parts.len()
            }
            _ => return,
        };
        let ev = match kind {
            Part::Text => {
                json!({"item_id": id, "output_index": output_index, "content_index": content_index, "delta": delta, "logprobs": []})
            }
            Part::Refusal => {
                json!({"item_id": id, "output_index": output_index, "content_index": content_index, "delta": delta})
            }
        };
        let ty = match kind {
            Part::Text => "response.output_text.delta",
            Part::Refusal => "response.refusal.delta",
        };
        self.emit(ty, ev, out);
    }

    /// Finishes the open message's content part.
    fn close_part(&mut self, out: &mut VecDeque<Bytes>) {
        let output_index = self.output.len();
        let Some(Open::Message { id, parts, part }) = &mut self.open else {
            return;
        };
        let Some((kind, text)) = part.take() else {
            return;
        };
        let id = id.clone();
        let content_index = parts.len();
        let (done_ty, done, full) = match kind {
            Part::Text => (
                "response.output_text.done",
                json!({"item_id": id, "output_index": output_index, "content_index": content_index, "text": text, "logprobs": []}),
                output_text(&text),
            ),
            Part::Refusal => (
                "response.refusal.done",
                json!({"item_id": id, "output_index": output_index, "content_index": content_index, "refusal": text}),
                refusal(&text),
            ),
        };
        parts.push(full.clone());
        self.emit(done_ty, done, out);
        self.emit(
            "response.content_part.done",
            json!({"item_id": id, "output_index": output_index, "content_index": content_index, "part": full}),
            out,
        );
    }

    /// One `delta.tool_calls[]` entry.
    fn tool_call(&mut self, call: &Value, out: &mut VecDeque<Bytes>) {
        let tool_index = call.get("index").and_then(Value::as_u64).unwrap_or(0);
        let name = call
            .pointer("/function/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let continues =
            matches!(&self.open, Some(Open::Call { tool_index: t, .. }) if *t == tool_index);
        if !continues {
            self.close(Status::Completed, out);
            let output_index = self.output.len();
            let id = self.pending.ids.call(output_index);
            let call_id = call
                .get("id")
                .and_then(Value::as_str)
                .map_or_else(|| format!("call_{id}"), str::to_string);
            let item = call_item(&id, "in_progress", "", &call_id, name);
            self.emit(
                "response.output_item.added",
                json!({"output_index": output_index, "item": item}),
                out,
            );
            self.open = Some(Open::Call {
                id,
                call_id,
                name: name.to_string(),
                arguments: String::new(),
                tool_index,
            });
        } else if let Some(Open::Call { name: n, .. }) = &mut self.open
            && n.is_empty()
        {
            n.push_str(name);
        }
        let delta = call
            .pointer("/function/arguments")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if delta.is_empty() {
            return;
        }
        let output_index = self.output.len();
        if let Some(Open::Call { id, arguments, .. }) = &mut self.open {
            arguments.push_str(delta);
            let id = id.clone();
            self.emit(
                "response.function_call_arguments.delta",
                json!({"item_id": id, "output_index": output_index, "delta": delta}),
                out,
            );
        }
    }

    /// Finishes the open output item.
    fn close(&mut self, status: Status, out: &mut VecDeque<Bytes>) {
        self.close_part(out);
        let output_index = self.output.len();
        let item = match self.open.take() {
            None => return,
            Some(Open::Message { id, parts, .. }) => message_item(&id, status.item(), parts),
            Some(Open::Call {
                id,
                call_id,
                name,
                arguments,
                ..
            }) => {
                self.emit(
                    "response.function_call_arguments.done",
                    json!({"item_id": id, "name": name, "output_index": output_index, "arguments": arguments}),
                    out,
                );
                call_item(&id, status.item(), &arguments, &call_id, &name)
            }
        };
        self.emit(
            "response.output_item.done",
            json!({"output_index": output_index, "item": item}),
            out,
        );
        self.output.push(item);
    }

    fn data(&mut self, chunk: &Value, out: &mut VecDeque<Bytes>) {
        if let Some(u) = chunk.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(u.clone());
        }
        // One answer per response: choices other than the first are not asked for (no `n`).
        let Some(choice) = chunk
            .get("choices")
            .and_then(Value::as_array)
            .and_then(|c| {
                c.iter()
                    .find(|c| c.get("index").and_then(Value::as_u64).unwrap_or(0) == 0)
            })
        else {
            return;
        };
        if let Some(delta) = choice.get("delta") {
            if let Some(t) = delta.get("content").and_then(Value::as_str)
                && !t.is_empty()
            {
                self.content(Part::Text, t, out);
            }
            if let Some(t) = delta.get("refusal").and_then(Value::as_str)
                && !t.is_empty()
            {
                self.content(Part::Refusal, t, out);
            }
            for call in delta
                .get("tool_calls")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                self.tool_call(call, out);
            }
        }
        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
            let status = Status::from_finish_reason(Some(reason));
            self.finish = Some(status);
            self.close(status, out);
        }
    }

    fn done(&mut self, out: &mut VecDeque<Bytes>) {
        let status = self.finish.unwrap_or(Status::Completed);
        self.close(status, out);
        let r = self.snapshot(status, self.output.clone(), None);
        let ty = match status {
            Status::Incomplete(_) => "response.incomplete",
            _ => "response.completed",
        };
        self.emit(ty, json!({ "response": r }), out);
        self.pending.keep(&r);
        self.ended = true;
    }
}

impl StreamEncoder for Encoder {
    fn chunk(&mut self, chunk: Chunk, out: &mut VecDeque<Bytes>) {
        if self.ended {
            return;
        }
        match chunk {
            Chunk::Data(json) => {
                let Ok(v) = serde_json::from_slice::<Value>(&json) else {
                    return;
                };
                if !self.started
                    && let Some(m) = v.get("model").and_then(Value::as_str)
                    && !m.is_empty()
                {
                    self.model = m.to_string();
                }
                self.start(out);
                self.data(&v, out);
            }
            Chunk::Done => {
                self.start(out);
                self.done(out);
            }
        }
    }

    fn error(&mut self, message: &str, out: &mut VecDeque<Bytes>) {
        if self.ended {
            return;
        }
        self.start(out);
        self.ended = true;
        // OpenAI's own streams send `error` (which its SDKs raise) and then `response.failed`.
        // The error is written both flat (the documented event) and nested (OpenAI's wire).
        self.emit(
            "error",
            json!({
                "code": "server_error", "message": message, "param": null,
                "error": {"type": "server_error", "code": "server_error", "message": message, "param": null},
            }),
            out,
        );
        let mut output = self.output.clone();
        match &self.open {
            Some(Open::Message { id, parts, part }) => {
                let mut parts = parts.clone();
                if let Some((kind, text)) = part {
                    parts.push(match kind {
                        Part::Text => output_text(text),
                        Part::Refusal => refusal(text),
                    });
                }
                output.push(message_item(id, "incomplete", parts));
            }
            Some(Open::Call {
                id,
                call_id,
                name,
                arguments,
                ..
            }) => output.push(call_item(id, "incomplete", arguments, call_id, name)),
            None => {}
        }
        let r = self.snapshot(
            Status::Failed,
            output,
            Some(json!({"code": "server_error", "message": message})),
        );
        self.emit("response.failed", json!({ "response": r }), out);
    }
}
