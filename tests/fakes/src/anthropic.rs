//! Anthropic's Messages API, as its API reference describes it: `POST /v1/messages` with
//! `x-api-key` and `anthropic-version`, a `message` object or the named-event stream
//! (`message_start`, `content_block_start` / `content_block_delta` (`text_delta`,
//! `input_json_delta`) / `content_block_stop`, `ping`, `message_delta`, `message_stop`),
//! `POST /v1/messages/count_tokens`, and errors as
//! `{"type": "error", "error": {"type", "message"}, "request_id"}` with a `request-id` header:
//! 529 `overloaded_error`, 429 `rate_limit_error` with `retry-after`, 400 "prompt is too long".
//!
//! Requests the real API refuses are refused here too, with its wording, so a gateway's
//! translation mistakes fail in tests: a `system` role inside `messages`, `tool_result` blocks
//! that do not answer the previous message's `tool_use` ids (or `tool_use` left unanswered),
//! empty text blocks, `temperature` above 1, a missing `max_tokens` or one above the model's
//! output limit ([`crate::limits`]).

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use serde_json::{Value, json};

use crate::content::{self, End, estimate_tokens, pieces, reply_words};
use crate::dialect::{Ctx, Dialect, Endpoint, Failure, Op, Reply};

/// The Anthropic Messages dialect.
pub struct Anthropic;

const NAME: &str = "anthropic";

/// The context window quoted by `context-length`.
const CONTEXT_WINDOW: u64 = 200_000;

fn request_id(seq: u64) -> String {
    content::id("req_011C", seq)
}

fn error(status: StatusCode, kind: &str, message: &str, seq: u64) -> Reply {
    Reply::json(
        status,
        json!({"type": "error", "error": {"type": kind, "message": message},
               "request_id": request_id(seq)})
        .to_string(),
    )
}

fn invalid(message: impl AsRef<str>, seq: u64) -> Reply {
    error(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        message.as_ref(),
        seq,
    )
}

/// One named server-sent event.
fn event(name: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

/// The text of a message's `content`: a string, or its `text` blocks.
fn text_of(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(blocks)) => blocks
            .iter()
            .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

fn blocks_of(m: &Value) -> &[Value] {
    m.get("content")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

fn ids_of<'a>(m: &'a Value, ty: &str, key: &str) -> Vec<&'a str> {
    blocks_of(m)
        .iter()
        .filter(|b| b.get("type").and_then(Value::as_str) == Some(ty))
        .filter_map(|b| b.get(key).and_then(Value::as_str))
        .collect()
}

/// The refusals of the real API that a translating gateway could trigger.
fn validate(body: &Value, generate: bool) -> Result<(), String> {
    let Some(model) = body.get("model").and_then(Value::as_str) else {
        return Err("model: Field required".into());
    };
    if generate {
        let max = match body.get("max_tokens") {
            None | Some(Value::Null) => return Err("max_tokens: Field required".into()),
            Some(v) => v
                .as_u64()
                .ok_or("max_tokens: Input should be a valid integer")?,
        };
        if max < 1 {
            return Err("max_tokens: Input should be greater than or equal to 1".into());
        }
        if let Some(limit) = crate::limits::max_output_tokens(model)
            && max > limit
        {
            return Err(format!(
                "max_tokens: {max} > {limit}, which is the maximum allowed number of output tokens for {model}"
            ));
        }
    }
    if let Some(t) = body.get("temperature").and_then(Value::as_f64)
        && !(0.0..=1.0).contains(&t)
    {
        return Err("temperature: Input should be less than or equal to 1".into());
    }
    let messages = match body.get("messages") {
        Some(Value::Array(m)) if !m.is_empty() => m,
        Some(Value::Array(_)) => return Err("messages: at least one message is required".into()),
        _ => return Err("messages: Field required".into()),
    };
    for (i, m) in messages.iter().enumerate() {
        match m.get("role").and_then(Value::as_str) {
            Some("user" | "assistant") => {}
            Some("system") => {
                return Err("messages: Unexpected role \"system\". The Messages API accepts a top-level `system` parameter, not \"system\" as an input message role.".into());
            }
            _ => {
                return Err(format!(
                    "messages.{i}.role: Input should be 'user' or 'assistant'"
                ));
            }
        }
        let last_assistant = i + 1 == messages.len() && m.get("role") == Some(&json!("assistant"));
        match m.get("content") {
            Some(Value::String(s)) if s.is_empty() && !last_assistant => {
                return Err(format!(
                    "messages.{i}: all messages must have non-empty content except for the optional final assistant message"
                ));
            }
            Some(Value::String(_)) => {}
            Some(Value::Array(blocks)) => {
                if blocks.is_empty() && !last_assistant {
                    return Err(format!(
                        "messages.{i}: all messages must have non-empty content except for the optional final assistant message"
                    ));
                }
                for (j, b) in blocks.iter().enumerate() {
                    if b.get("type").and_then(Value::as_str) == Some("text")
                        && b.get("text")
                            .and_then(Value::as_str)
                            .is_none_or(str::is_empty)
                    {
                        return Err(format!(
                            "messages.{i}.content.{j}.text: text content blocks must be non-empty"
                        ));
                    }
                }
            }
            _ => return Err(format!("messages.{i}.content: Field required")),
        }
        // Each tool_result answers a tool_use of the message just before it, and every tool_use
        // is answered in the message just after it.
        let results = ids_of(m, "tool_result", "tool_use_id");
        let asked = if i > 0 {
            ids_of(&messages[i - 1], "tool_use", "id")
        } else {
            Vec::new()
        };
        if let Some(stray) = results.iter().find(|id| !asked.contains(id)) {
            return Err(format!(
                "messages.{i}.content.0: unexpected `tool_use_id` found in `tool_result` blocks: {stray}. Each `tool_result` block must have a corresponding `tool_use` block in the previous message."
            ));
        }
        let uses = ids_of(m, "tool_use", "id");
        if !uses.is_empty() && i + 1 < messages.len() {
            let answered = ids_of(&messages[i + 1], "tool_result", "tool_use_id");
            let missing: Vec<&str> = uses
                .iter()
                .copied()
                .filter(|id| !answered.contains(id))
                .collect();
            if !missing.is_empty() {
                return Err(format!(
                    "messages.{}: `tool_use` ids were found without `tool_result` blocks immediately after: {}. Each `tool_use` block must have a corresponding `tool_result` block in the next message.",
                    i + 1,
                    missing.join(", ")
                ));
            }
        }
    }
    if let Some(Value::Array(tools)) = body.get("tools") {
        for (i, t) in tools.iter().enumerate() {
            if t.get("name").and_then(Value::as_str).is_none() {
                return Err(format!("tools.{i}.custom.name: Field required"));
            }
            if t.get("input_schema").is_none() {
                return Err(format!("tools.{i}.custom.input_schema: Field required"));
            }
        }
    }
    Ok(())
}

/// One content block of the answer.
enum Block {
    Text(Vec<String>),
    ToolUse {
        id: String,
        name: String,
        input: Value,
    },
}

/// The answer to a valid request.
struct Answer {
    blocks: Vec<Block>,
    stop_reason: &'static str,
    stop_sequence: Option<String>,
}

impl Answer {
    fn output_tokens(&self) -> u64 {
        self.blocks
            .iter()
            .map(|b| match b {
                Block::Text(ps) => ps.len() as u64,
                Block::ToolUse { name, input, .. } => {
                    estimate_tokens(name.len() + input.to_string().len())
                }
            })
            .sum::<u64>()
            .max(1)
    }
}

fn prompt_tokens(body: &Value) -> u64 {
    let len = ["system", "messages", "tools"]
        .iter()
        .filter_map(|k| body.get(*k))
        .map(|v| v.to_string().len())
        .sum();
    estimate_tokens(len)
}

fn answer_of(body: &Value, ctx: &Ctx<'_>) -> Answer {
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let last = messages.last().unwrap_or(&Value::Null);
    let tool_results: Vec<&Value> = blocks_of(last)
        .iter()
        .filter(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"))
        .collect();
    let tools = body
        .get("tools")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let choice = body.get("tool_choice");
    let choice_type = choice.and_then(|c| c.get("type")).and_then(Value::as_str);
    let stops: Vec<String> = body
        .get("stop_sequences")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    let max = body
        .get("max_tokens")
        .and_then(Value::as_u64)
        .map(|n| n as usize);

    if tool_results.is_empty() && !tools.is_empty() && choice_type != Some("none") {
        let forced = choice
            .filter(|_| choice_type == Some("tool"))
            .and_then(|c| c.get("name"))
            .and_then(Value::as_str);
        let tool = tools
            .iter()
            .find(|t| forced.is_none_or(|f| t.get("name") == Some(&json!(f))))
            .unwrap_or(&tools[0]);
        let mut blocks = Vec::new();
        // With `auto`, Claude says what it is about to do before the call; a forced tool
        // (`any`, `tool`) starts with the call.
        if matches!(choice_type, None | Some("auto")) {
            let words: Vec<String> = "I'll look that up.".split(' ').map(String::from).collect();
            blocks.push(Block::Text(pieces(&words)));
        }
        blocks.push(Block::ToolUse {
            id: content::id("toolu_01", ctx.seq),
            name: tool
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("tool")
                .to_string(),
            input: tool.get("input_schema").map_or(json!({}), content::sample),
        });
        return Answer {
            blocks,
            stop_reason: "tool_use",
            stop_sequence: None,
        };
    }
    let ps = if let Some(result) = tool_results.last() {
        content::tool_result_pieces(&text_of(result.get("content")))
    } else {
        pieces(&reply_words(
            &text_of(last.get("content")),
            ctx.options.words,
        ))
    };
    let (ps, end) = content::cut(ps, &stops, max);
    let (stop_reason, stop_sequence) = match end {
        End::Natural => ("end_turn", None),
        End::Stop(s) => ("stop_sequence", Some(s)),
        End::Length => ("max_tokens", None),
    };
    Answer {
        blocks: vec![Block::Text(ps)],
        stop_reason,
        stop_sequence,
    }
}

fn usage(input: u64, output: u64) -> Value {
    json!({"input_tokens": input, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
           "output_tokens": output, "service_tier": "standard"})
}

fn message(id: &str, model: &str, content: Vec<Value>, a: (&str, Option<&str>), u: Value) -> Value {
    json!({"id": id, "type": "message", "role": "assistant", "model": model, "content": content,
           "stop_reason": a.0, "stop_sequence": a.1, "usage": u})
}

fn messages(body: &Value, ctx: &Ctx<'_>) -> Reply {
    if let Err(m) = validate(body, true) {
        return invalid(m, ctx.seq);
    }
    let model = body["model"].as_str().unwrap_or_default();
    let id = content::id("msg_01", ctx.seq);
    let a = answer_of(body, ctx);
    let input = prompt_tokens(body);
    let output = a.output_tokens();

    if !ctx.stream {
        let content: Vec<Value> = a
            .blocks
            .iter()
            .map(|b| match b {
                Block::Text(ps) => json!({"type": "text", "text": ps.concat()}),
                Block::ToolUse { id, name, input } => {
                    json!({"type": "tool_use", "id": id, "name": name, "input": input})
                }
            })
            .collect();
        let m = message(
            &id,
            model,
            content,
            (a.stop_reason, a.stop_sequence.as_deref()),
            usage(input, output),
        );
        return Reply::json(StatusCode::OK, m.to_string());
    }

    // `message_start` carries `stop_reason: null` until `message_delta` sets it.
    let mut start = message(&id, model, vec![], ("", None), usage(input, 1));
    start["stop_reason"] = Value::Null;
    let mut out = vec![event(
        "message_start",
        &json!({"type": "message_start", "message": start}),
    )];
    for (index, b) in a.blocks.iter().enumerate() {
        let start = |block: Value| {
            event(
                "content_block_start",
                &json!({"type": "content_block_start", "index": index, "content_block": block}),
            )
        };
        let delta = |d: Value| {
            event(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": index, "delta": d}),
            )
        };
        match b {
            Block::Text(ps) => {
                out.push(start(json!({"type": "text", "text": ""})));
                if index == 0 {
                    out.push(event("ping", &json!({"type": "ping"})));
                }
                for p in ps {
                    out.push(delta(json!({"type": "text_delta", "text": p})));
                }
            }
            Block::ToolUse { id, name, input } => {
                out.push(start(
                    json!({"type": "tool_use", "id": id, "name": name, "input": {}}),
                ));
                out.push(delta(
                    json!({"type": "input_json_delta", "partial_json": ""}),
                ));
                let chars: Vec<char> = input.to_string().chars().collect();
                for piece in chars.chunks(12) {
                    let piece: String = piece.iter().collect();
                    out.push(delta(
                        json!({"type": "input_json_delta", "partial_json": piece}),
                    ));
                }
            }
        }
        out.push(event(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": index}),
        ));
    }
    out.push(event(
        "message_delta",
        &json!({"type": "message_delta",
                "delta": {"stop_reason": a.stop_reason, "stop_sequence": a.stop_sequence},
                "usage": {"output_tokens": output}}),
    ));
    out.push(event("message_stop", &json!({"type": "message_stop"})));
    Reply::events(out)
}

fn count_tokens(body: &Value, seq: u64) -> Reply {
    if let Err(m) = validate(body, false) {
        return invalid(m, seq);
    }
    Reply::json(
        StatusCode::OK,
        json!({"input_tokens": prompt_tokens(body)}).to_string(),
    )
}

/// A refusal (`stop_reason: refusal`): Claude's safety classifiers stop the answer, before any
/// text (`block=prompt`) or part-way (`block=answer`).
fn refusal(ctx: &Ctx<'_>) -> Reply {
    let id = content::id("msg_01", ctx.seq);
    let model = "claude-sonnet-4-5-20250929";
    let said = if ctx.options.block_answer {
        pieces(&reply_words("", None))
    } else {
        Vec::new()
    };
    let output = said.len() as u64;
    if !ctx.stream {
        let content: Vec<Value> = if said.is_empty() {
            Vec::new()
        } else {
            vec![json!({"type": "text", "text": said.concat()})]
        };
        let m = message(&id, model, content, ("refusal", None), usage(12, output));
        return Reply::json(StatusCode::OK, m.to_string());
    }
    let mut start = message(&id, model, vec![], ("", None), usage(12, 1));
    start["stop_reason"] = Value::Null;
    let mut out = vec![event(
        "message_start",
        &json!({"type": "message_start", "message": start}),
    )];
    if !said.is_empty() {
        out.push(event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ));
        for p in &said {
            out.push(event(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}}),
            ));
        }
        out.push(event(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": 0}),
        ));
    }
    out.push(event(
        "message_delta",
        &json!({"type": "message_delta", "delta": {"stop_reason": "refusal", "stop_sequence": null},
                "usage": {"output_tokens": output}}),
    ));
    out.push(event("message_stop", &json!({"type": "message_stop"})));
    Reply::events(out)
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
}

impl Dialect for Anthropic {
    fn name(&self) -> &'static str {
        NAME
    }

    fn route(&self, method: &Method, path: &str, _query: Option<&str>) -> Option<Endpoint> {
        let op = match (method, path) {
            (&Method::POST, "/v1/messages") => Op::Chat,
            (&Method::POST, "/v1/messages/count_tokens") => Op::CountTokens,
            _ => return None,
        };
        Some(Endpoint {
            op,
            flavor: NAME,
            path_model: None,
        })
    }

    fn is_stream(&self, ep: &Endpoint, body: &Value) -> bool {
        ep.op == Op::Chat && body.get("stream").and_then(Value::as_bool) == Some(true)
    }

    fn check(&self, _ep: &Endpoint, headers: &HeaderMap, _query: Option<&str>) -> Option<Reply> {
        if header(headers, "x-api-key").is_none() {
            return Some(error(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "x-api-key header is required",
                0,
            ));
        }
        if header(headers, "anthropic-version").is_none() {
            return Some(invalid("anthropic-version: header is required", 0));
        }
        None
    }

    fn answer(&self, ep: &Endpoint, body: &Value, ctx: &Ctx<'_>) -> Reply {
        let r = match ep.op {
            Op::CountTokens => count_tokens(body, ctx.seq),
            _ => messages(body, ctx),
        };
        r.header("request-id", request_id(ctx.seq))
            .header(
                "anthropic-organization-id",
                "00000000-0000-4000-8000-00000000fa4e",
            )
            .header("anthropic-ratelimit-requests-limit", "4000")
            .header("anthropic-ratelimit-requests-remaining", "3999")
    }

    fn failure(&self, _ep: &Endpoint, failure: Failure, ctx: &Ctx<'_>) -> Reply {
        let seq = ctx.seq;
        let retry = |r: Reply| match ctx.options.retry_after {
            // Anthropic sends whole seconds.
            Some(d) => r.header("retry-after", d.as_secs_f64().ceil().max(0.0).to_string()),
            None => r,
        };
        let r = match failure {
            Failure::Status(401) => error(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "invalid x-api-key",
                seq,
            ),
            Failure::Status(429) => retry(error(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "This request would exceed the rate limit for your organization (00000000-0000-4000-8000-00000000fa4e) of 50 requests per minute. For details, refer to: https://docs.claude.com/en/api/rate-limits. You can see the response headers for current usage. Please reduce the prompt length or the maximum tokens requested, or try again later. You may also contact sales at https://www.anthropic.com/contact-sales to discuss your options for a rate limit increase.",
                seq,
            ))
            .header("anthropic-ratelimit-requests-limit", "50")
            .header("anthropic-ratelimit-requests-remaining", "0"),
            Failure::Status(529) => retry(error(
                StatusCode::from_u16(529).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                "overloaded_error",
                "Overloaded",
                seq,
            )),
            Failure::Status(s) => error(
                StatusCode::from_u16(s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                "api_error",
                "Internal server error",
                seq,
            ),
            Failure::ContextLength => invalid(
                format!(
                    "prompt is too long: {} tokens > {CONTEXT_WINDOW} maximum",
                    CONTEXT_WINDOW + 8_310
                ),
                seq,
            ),
            Failure::Safety => refusal(ctx),
            Failure::Malformed if ctx.stream => Reply::events(vec![
                event(
                    "message_start",
                    &json!({"type": "message_start", "message": message(
                        &content::id("msg_01", seq), "claude-sonnet-4-5-20250929", vec![],
                        ("end_turn", None), usage(12, 1))}),
                ),
                Bytes::from_static(
                    b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hel\n\n",
                ),
            ]),
            Failure::Malformed => Reply::json(
                StatusCode::OK,
                format!(
                    "{{\"id\":\"{}\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[{{\"type\":\"text\",\"text\":\"Hel",
                    content::id("msg_01", seq)
                ),
            ),
        };
        r.header("request-id", request_id(seq))
    }

    fn fast(&self, ep: &Endpoint, body: &[u8], seq: u64) -> Reply {
        if ep.op == Op::CountTokens {
            return Reply::json(StatusCode::OK, r#"{"input_tokens":9}"#);
        }
        let stream = crate::openai::flag(body, b"\"stream\"");
        let r = if stream {
            let mut s = format!(
                "event: message_start\ndata: {{\"type\":\"message_start\",\"message\":{{\"id\":\"msg_fast{seq}\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-fast\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{{\"input_tokens\":9,\"output_tokens\":1}}}}}}\n\n\
                 event: content_block_start\ndata: {{\"type\":\"content_block_start\",\"index\":0,\"content_block\":{{\"type\":\"text\",\"text\":\"\"}}}}\n\n"
            );
            for t in ["Hello", " from", " fast."] {
                s.push_str(&format!(
                    "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"{t}\"}}}}\n\n"
                ));
            }
            s.push_str(
                "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n\
                 event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":3}}\n\n\
                 event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
            );
            Reply::events(vec![Bytes::from(s)])
        } else {
            Reply::json(
                StatusCode::OK,
                format!(
                    r#"{{"id":"msg_fast{seq}","type":"message","role":"assistant","model":"claude-fast","content":[{{"type":"text","text":"Hello from fast."}}],"stop_reason":"end_turn","stop_sequence":null,"usage":{{"input_tokens":9,"output_tokens":3}}}}"#
                ),
            )
        };
        r.header("request-id", format!("req_fast{seq}"))
    }

    fn client_error(&self, status: StatusCode, message: &str) -> Reply {
        error(status, "invalid_request_error", message, 0)
    }
}

#[cfg(test)]
mod tests;
