//! The built-in `mock` provider: an in-process OpenAI-compatible server with configurable
//! latency, chunk pacing, token counts and failures, so the quickstart and tests run offline.
//! It answers tool calls and JSON-schema output with values shaped by the request's schemas.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use futures::StreamExt;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use serde_json::{Map, Value, json};

use llmesh_api::snapshot::{Backend, Mock};

use crate::tokens;
use crate::transport::{BoxError, ResponseFuture, Transport, UpstreamBody};

/// The mock server of one backend.
pub struct MockTransport {
    backend: String,
    mock: Mock,
    requests: AtomicU64,
}

impl MockTransport {
    /// A mock answering as `backend`.
    pub fn new(backend: &Backend) -> Arc<Self> {
        Arc::new(Self {
            backend: backend.name.clone(),
            mock: backend.mock.clone().unwrap_or_default(),
            requests: AtomicU64::new(0),
        })
    }
}

fn full(status: StatusCode, headers: &[(&str, String)], body: Vec<u8>) -> Response<UpstreamBody> {
    let mut b = Response::builder()
        .status(status)
        .header("content-type", "application/json");
    for (k, v) in headers {
        b = b.header(*k, v.as_str());
    }
    b.body(
        Full::new(Bytes::from(body))
            .map_err(|e: Infallible| match e {})
            .boxed_unsync(),
    )
    .expect("static response parts are valid")
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Transport for MockTransport {
    fn send(&self, req: Request<Full<Bytes>>) -> ResponseFuture {
        let n = self.requests.fetch_add(1, Ordering::Relaxed);
        let mock = self.mock.clone();
        let backend = self.backend.clone();
        let path = req.uri().path().to_string();
        Box::pin(async move {
            let body = req
                .into_body()
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&body) else {
                return Ok(full(
                    StatusCode::BAD_REQUEST,
                    &[],
                    br#"{"error":{"message":"We could not parse the JSON body of your request.","type":"invalid_request_error","param":null,"code":null}}"#.to_vec(),
                ));
            };
            let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
            let failure = mock.failure.as_ref().filter(|f| {
                f.first_requests.is_none_or(|k| n < u64::from(k))
                    && (f.percent >= 100 || fastrand::u32(0..100) < f.percent)
            });
            if let Some(f) = failure
                && f.status != 0
            {
                tokio::time::sleep(Duration::from_millis(mock.latency_ms)).await;
                let status =
                    StatusCode::from_u16(f.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let (kind, code) = match f.status {
                    429 => ("requests", "rate_limit_exceeded"),
                    400..=499 => ("invalid_request_error", "mock_failure"),
                    _ => ("server_error", "mock_failure"),
                };
                let mut headers = vec![("x-request-id", format!("req_mock_{n}"))];
                if let Some(s) = f.retry_after_seconds {
                    headers.push(("retry-after", s.to_string()));
                }
                let body = json!({"error": {
                    "message": format!("The mock backend {backend} is configured to fail with {}.", f.status),
                    "type": kind, "param": null, "code": code,
                }});
                return Ok(full(status, &headers, body.to_string().into_bytes()));
            }
            let cut_after = failure.and_then(|f| f.mid_stream_after_chunks);
            let answer = Answer::new(&mock, &backend, &path, &body, n);
            if !stream || answer.op == "embeddings" {
                tokio::time::sleep(Duration::from_millis(mock.latency_ms)).await;
                return Ok(full(
                    StatusCode::OK,
                    &[],
                    answer.full().to_string().into_bytes(),
                ));
            }
            let include_usage = body
                .get("stream_options")
                .and_then(|o| o.get("include_usage"))
                .and_then(Value::as_bool)
                == Some(true);
            let events = answer.chunks(include_usage);
            let latency = Duration::from_millis(mock.latency_ms);
            let interval = Duration::from_millis(mock.chunk_interval_ms);
            let frames = futures::stream::iter(events.into_iter().enumerate()).then(
                move |(i, ev)| async move {
                    if cut_after.is_some_and(|c| i as u32 >= c) {
                        return Err::<Frame<Bytes>, BoxError>(
                            "connection reset by the mock (midStreamAfterChunks)".into(),
                        );
                    }
                    tokio::time::sleep(if i == 0 { latency } else { interval }).await;
                    Ok(Frame::data(Bytes::from(ev)))
                },
            );
            // Stop after the first error, as a reset connection would.
            let frames = frames.scan(false, |failed, item| {
                let out = if *failed { None } else { Some(item) };
                if matches!(out, Some(Err(_))) {
                    *failed = true;
                }
                futures::future::ready(out)
            });
            let body = StreamBody::new(frames).boxed_unsync();
            Ok(Response::builder()
                .status(StatusCode::OK)
                .header("content-type", "text/event-stream")
                .body(body)
                .expect("static response parts are valid"))
        })
    }
}

/// What the mock will answer to one request.
struct Answer {
    op: &'static str,
    id: String,
    model: String,
    created: u64,
    prompt_tokens: u32,
    words: Vec<String>,
    tool_call: Option<(String, String)>,
    n: u32,
    embed: Option<(Vec<String>, usize, bool)>,
}

impl Answer {
    fn new(mock: &Mock, backend: &str, path: &str, body: &Map<String, Value>, seq: u64) -> Self {
        let op = if path.ends_with("/embeddings") {
            "embeddings"
        } else if path.ends_with("/chat/completions") {
            "chat"
        } else {
            "completions"
        };
        let model = body
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or("mock")
            .to_string();
        let prompt_tokens = tokens::chat_prompt(body, false).tokens;
        let messages = body.get("messages").and_then(Value::as_array);
        let last_role = messages
            .and_then(|m| m.last())
            .and_then(|m| m.get("role"))
            .and_then(Value::as_str);
        let tools: Vec<&Value> = body
            .get("tools")
            .and_then(Value::as_array)
            .map(|t| t.iter().collect())
            .unwrap_or_default();
        let tool_choice_none = body.get("tool_choice").and_then(Value::as_str) == Some("none");
        let mut tool_call = None;
        let mut text = mock.reply.clone();
        if op == "chat" && !tools.is_empty() && !tool_choice_none && last_role != Some("tool") {
            let forced = body
                .get("tool_choice")
                .and_then(|c| c.pointer("/function/name"))
                .and_then(Value::as_str);
            let tool = tools
                .iter()
                .find(|t| {
                    forced.is_none()
                        || t.pointer("/function/name").and_then(Value::as_str) == forced
                })
                .unwrap_or(&tools[0]);
            let name = tool
                .pointer("/function/name")
                .and_then(Value::as_str)
                .unwrap_or("tool")
                .to_string();
            let args = tool
                .pointer("/function/parameters")
                .map_or(json!({}), sample_for_schema);
            tool_call = Some((name, args.to_string()));
        } else if last_role == Some("tool") {
            let result = messages
                .and_then(|m| m.last())
                .and_then(|m| m.get("content"))
                .map(|c| c.as_str().map_or_else(|| c.to_string(), str::to_string))
                .unwrap_or_default();
            text = format!("The tool returned: {result}");
        }
        let schema = body.get("response_format").and_then(|rf| {
            match rf.get("type").and_then(Value::as_str) {
                Some("json_schema") => Some(
                    rf.pointer("/json_schema/schema")
                        .map_or(json!({}), sample_for_schema),
                ),
                Some("json_object") => Some(json!({"answer": mock.reply})),
                _ => None,
            }
        });
        let words: Vec<String> = if let Some(v) = schema {
            // Structured output: the JSON, split into pieces so streams still stream.
            let s = v.to_string();
            s.as_bytes()
                .chunks(8)
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect()
        } else if last_role == Some("tool") {
            text.split_inclusive(' ').map(str::to_string).collect()
        } else {
            let base: Vec<&str> = text.split_whitespace().collect();
            let count = mock.output_tokens as usize;
            (0..count)
                .map(|i| {
                    let w = base.get(i % base.len().max(1)).copied().unwrap_or("ok");
                    if i + 1 == count {
                        w.to_string()
                    } else {
                        format!("{w} ")
                    }
                })
                .collect()
        };
        let embed = (op == "embeddings").then(|| {
            let inputs = match body.get("input") {
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_string))
                    .collect(),
                Some(Value::String(s)) => vec![s.clone()],
                Some(other) => vec![other.to_string()],
                None => vec![],
            };
            let dims = body
                .get("dimensions")
                .and_then(Value::as_u64)
                .unwrap_or(8)
                .clamp(1, 4096) as usize;
            let b64 = body.get("encoding_format").and_then(Value::as_str) == Some("base64");
            (inputs, dims, b64)
        });
        Self {
            op,
            id: format!(
                "{}-mock-{backend}-{seq}",
                if op == "chat" { "chatcmpl" } else { "cmpl" }
            ),
            model,
            created: now_unix(),
            prompt_tokens,
            words,
            tool_call,
            n: body
                .get("n")
                .and_then(Value::as_u64)
                .unwrap_or(1)
                .clamp(1, 8) as u32,
            embed,
        }
    }

    fn completion_tokens(&self) -> u32 {
        let one = match &self.tool_call {
            Some((name, args)) => tokens::estimate_text(name) + tokens::estimate_text(args),
            None => self.words.len() as u32,
        };
        one * self.n
    }

    fn usage(&self) -> Value {
        let c = if self.op == "embeddings" {
            0
        } else {
            self.completion_tokens()
        };
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": c,
            "total_tokens": self.prompt_tokens + c,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
        })
    }

    fn full(&self) -> Value {
        match self.op {
            "embeddings" => {
                let (inputs, dims, b64) = self.embed.clone().unwrap_or_default();
                let data: Vec<Value> = inputs
                    .iter()
                    .enumerate()
                    .map(|(i, text)| {
                        let v = embedding(text, dims);
                        let e = if b64 {
                            let bytes: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
                            Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
                        } else {
                            json!(v)
                        };
                        json!({"object": "embedding", "index": i, "embedding": e})
                    })
                    .collect();
                json!({"object": "list", "data": data, "model": self.model,
                       "usage": {"prompt_tokens": self.prompt_tokens, "total_tokens": self.prompt_tokens}})
            }
            "chat" => {
                let choices: Vec<Value> = (0..self.n)
                    .map(|i| {
                        let (message, finish) = match &self.tool_call {
                            Some((name, args)) => (
                                json!({"role": "assistant", "content": null, "refusal": null, "tool_calls": [{
                                    "id": format!("call_mock_{i}"), "type": "function",
                                    "function": {"name": name, "arguments": args}}]}),
                                "tool_calls",
                            ),
                            None => (json!({"role": "assistant", "content": self.words.concat(), "refusal": null}), "stop"),
                        };
                        json!({"index": i, "message": message, "logprobs": null, "finish_reason": finish})
                    })
                    .collect();
                json!({"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
                       "choices": choices, "usage": self.usage(), "system_fingerprint": "fp_mock"})
            }
            _ => {
                let choices: Vec<Value> = (0..self.n)
                    .map(|i| json!({"text": self.words.concat(), "index": i, "logprobs": null, "finish_reason": "stop"}))
                    .collect();
                json!({"id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
                       "choices": choices, "usage": self.usage()})
            }
        }
    }

    /// The SSE events of a streamed answer, each a complete `data: ...\n\n`.
    fn chunks(&self, include_usage: bool) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let chat = self.op == "chat";
        let object = if chat {
            "chat.completion.chunk"
        } else {
            "text_completion"
        };
        let usage_null = include_usage.then_some(Value::Null);
        let mut push = |choices: Value| {
            let mut c = json!({"id": self.id, "object": object, "created": self.created, "model": self.model,
                               "system_fingerprint": "fp_mock", "choices": choices});
            if let Some(u) = &usage_null {
                c["usage"] = u.clone();
            }
            out.push(format!("data: {c}\n\n").into_bytes());
        };
        if chat {
            push(
                json!([{"index": 0, "delta": {"role": "assistant", "content": "", "refusal": null}, "logprobs": null, "finish_reason": null}]),
            );
        }
        match (&self.tool_call, chat) {
            (Some((name, args)), true) => {
                push(
                    json!([{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_mock_0", "type": "function",
                    "function": {"name": name, "arguments": ""}}]}, "logprobs": null, "finish_reason": null}]),
                );
                for piece in args.as_bytes().chunks(12) {
                    push(
                        json!([{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": String::from_utf8_lossy(piece)}}]},
                        "logprobs": null, "finish_reason": null}]),
                    );
                }
                push(
                    json!([{"index": 0, "delta": {}, "logprobs": null, "finish_reason": "tool_calls"}]),
                );
            }
            _ => {
                for w in &self.words {
                    if chat {
                        push(
                            json!([{"index": 0, "delta": {"content": w}, "logprobs": null, "finish_reason": null}]),
                        );
                    } else {
                        push(
                            json!([{"text": w, "index": 0, "logprobs": null, "finish_reason": null}]),
                        );
                    }
                }
                if chat {
                    push(
                        json!([{"index": 0, "delta": {}, "logprobs": null, "finish_reason": "stop"}]),
                    );
                } else {
                    push(
                        json!([{"text": "", "index": 0, "logprobs": null, "finish_reason": "stop"}]),
                    );
                }
            }
        }
        if include_usage {
            let c = json!({"id": self.id, "object": object, "created": self.created, "model": self.model,
                           "system_fingerprint": "fp_mock", "choices": [], "usage": self.usage()});
            out.push(format!("data: {c}\n\n").into_bytes());
        }
        out.push(b"data: [DONE]\n\n".to_vec());
        out
    }
}

/// A deterministic unit vector for `text`.
fn embedding(text: &str, dims: usize) -> Vec<f32> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let mut v: Vec<f32> = (0..dims)
        .map(|i| {
            h = h
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407 + i as u64);
            ((h >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect();
    let norm = v
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::EPSILON);
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

/// A value that satisfies a JSON schema well enough for clients that validate tool arguments and
/// structured output: objects with every property, strings, numbers, enums' first member.
pub fn sample_for_schema(schema: &Value) -> Value {
    if let Some(Value::Array(options)) = schema.get("enum") {
        return options.first().cloned().unwrap_or(Value::Null);
    }
    if let Some(c) = schema.get("const") {
        return c.clone();
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(Value::Array(options)) = schema.get(key)
            && let Some(first) = options
                .iter()
                .find(|o| o.get("type").and_then(Value::as_str) != Some("null"))
        {
            return sample_for_schema(first);
        }
    }
    let ty = match schema.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("null"),
        _ if schema.get("properties").is_some() => "object",
        _ => "string",
    };
    match ty {
        "object" => {
            let mut out = Map::new();
            if let Some(Value::Object(props)) = schema.get("properties") {
                for (k, s) in props {
                    out.insert(k.clone(), sample_for_schema(s));
                }
            }
            Value::Object(out)
        }
        "array" => {
            let item = schema.get("items").map_or(json!("mock"), sample_for_schema);
            let min = schema
                .get("minItems")
                .and_then(Value::as_u64)
                .unwrap_or(1)
                .max(1);
            Value::Array((0..min).map(|_| item.clone()).collect())
        }
        "integer" => json!(
            schema
                .get("minimum")
                .and_then(Value::as_i64)
                .unwrap_or(1)
                .max(1)
        ),
        "number" => json!(schema.get("minimum").and_then(Value::as_f64).unwrap_or(1.5)),
        "boolean" => json!(true),
        "null" => Value::Null,
        _ => json!("mock"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_samples_fill_every_property_with_the_right_type() {
        let schema = json!({"type": "object", "properties": {
            "city": {"type": "string"}, "days": {"type": "integer", "minimum": 3},
            "unit": {"enum": ["celsius", "fahrenheit"]}, "tags": {"type": "array", "items": {"type": "string"}},
            "maybe": {"anyOf": [{"type": "null"}, {"type": "boolean"}]}
        }, "required": ["city"]});
        assert_eq!(
            sample_for_schema(&schema),
            json!({"city": "mock", "days": 3, "unit": "celsius", "tags": ["mock"], "maybe": true})
        );
    }

    #[test]
    fn embeddings_are_deterministic_unit_vectors() {
        let a = embedding("hello", 16);
        assert_eq!(a, embedding("hello", 16));
        assert_ne!(a, embedding("world", 16));
        let norm: f32 = a.iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-4);
    }
}
