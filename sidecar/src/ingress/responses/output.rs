//! A chat completion as a Response object.

use bytes::Bytes;
use http::StatusCode;
use serde_json::{Value, json};

use super::{Ids, Pending, Status, stream, usage};
use crate::error::ApiError;
use crate::ingress::Translation;
use crate::internal::StreamEncoder;
use crate::internal::Usage;

/// An `output_text` content part.
pub(super) fn output_text(text: &str) -> Value {
    json!({"type": "output_text", "annotations": [], "logprobs": [], "text": text})
}

/// A `refusal` content part.
pub(super) fn refusal(text: &str) -> Value {
    json!({"type": "refusal", "refusal": text})
}

/// An assistant `message` output item.
pub(super) fn message_item(id: &str, status: &str, content: Vec<Value>) -> Value {
    json!({"id": id, "type": "message", "status": status, "content": content, "role": "assistant"})
}

/// A `function_call` output item.
pub(super) fn call_item(
    id: &str,
    status: &str,
    arguments: &str,
    call_id: &str,
    name: &str,
) -> Value {
    json!({"id": id, "type": "function_call", "status": status, "arguments": arguments, "call_id": call_id, "name": name})
}

/// The output items of a chat completion's first choice: one message (text and refusal) if the
/// model wrote any, then one `function_call` item per tool call.
fn output_items(ids: &Ids, message: &Value, status: Status) -> Vec<Value> {
    let mut content = Vec::new();
    match message.get("content") {
        Some(Value::String(s)) if !s.is_empty() => content.push(output_text(s)),
        // Some OpenAI-compatible servers answer with content parts.
        Some(Value::Array(parts)) => {
            let text: String = parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect();
            if !text.is_empty() {
                content.push(output_text(&text));
            }
        }
        _ => {}
    }
    if let Some(r) = message.get("refusal").and_then(Value::as_str)
        && !r.is_empty()
    {
        content.push(refusal(r));
    }
    let mut out = Vec::new();
    if !content.is_empty() {
        out.push(message_item(&ids.message(0), status.item(), content));
    }
    for call in message
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let f = |k: &str| {
            call.pointer(&format!("/function/{k}"))
                .and_then(Value::as_str)
                .unwrap_or_default()
        };
        let call_id = call.get("id").and_then(Value::as_str).unwrap_or_default();
        out.push(call_item(
            &ids.call(out.len()),
            status.item(),
            f("arguments"),
            call_id,
            f("name"),
        ));
    }
    out
}

impl Pending {
    /// The Response object for a complete chat completion (`openai`), stored when asked.
    pub(super) fn complete(
        &self,
        openai: &[u8],
        normalized: Option<&Usage>,
    ) -> Result<Value, ApiError> {
        let chat: Value = serde_json::from_slice(openai).map_err(|e| {
            ApiError::upstream(
                StatusCode::BAD_GATEWAY,
                "malformed",
                format!("llmesh: the backend's answer is not JSON ({e})"),
            )
        })?;
        let Some(choice) = chat.pointer("/choices/0") else {
            return Err(ApiError::upstream(
                StatusCode::BAD_GATEWAY,
                "malformed",
                "llmesh: the backend's answer has no choices",
            ));
        };
        let status =
            Status::from_finish_reason(choice.get("finish_reason").and_then(Value::as_str));
        let output = output_items(
            &self.ids,
            choice.get("message").unwrap_or(&Value::Null),
            status,
        );
        let model = chat
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let usage = usage(chat.get("usage").unwrap_or(&Value::Null), normalized);
        let response = self.respond(status, model, output, Some(usage), None);
        self.keep(&response);
        Ok(response)
    }
}

impl Translation for Pending {
    fn response(&mut self, openai: &[u8], usage: Option<&Usage>) -> Result<Bytes, ApiError> {
        let r = self.complete(openai, usage)?;
        Ok(Bytes::from(serde_json::to_vec(&r).unwrap_or_default()))
    }

    fn encoder(self: Box<Self>) -> Box<dyn StreamEncoder> {
        Box::new(stream::Encoder::new(*self))
    }

    fn passthrough(&self) -> bool {
        !self.local_state
    }
}
