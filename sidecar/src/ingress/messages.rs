//! Anthropic's Messages API (`POST /v1/messages`) on top of the OpenAI chat router, so apps
//! written with the Anthropic SDK reach any backend.
//!
//! The request becomes an OpenAI chat body; the answer comes back as an Anthropic `message`
//! (non-streaming) or as Anthropic's SSE event sequence ([`stream::AnthropicSse`]). Field by
//! field, following Anthropic's public API reference:
//!
//! - `system` (string, or text blocks joined by newlines) becomes the first message, `role: system`.
//! - content blocks: `text`; `image` (base64 -> data URL, url -> URL) as `image_url`; `document`
//!   with a plain-text or content source as text (PDFs are refused: a route may pick any
//!   backend, and most cannot read them); assistant `tool_use` as `tool_calls`; user `tool_result` as
//!   `role: tool` messages placed before the rest of that user turn, as OpenAI requires
//!   (`is_error` prefixes the content with `Error: `; images in a result move into the user
//!   message after it, since OpenAI tool messages carry text only); `thinking` blocks are dropped.
//! - `max_tokens` (required) becomes `max_completion_tokens`, the name the handler's limits and
//!   OpenAI's reasoning models use (adapters rename it for servers that only know `max_tokens`).
//! - `stop_sequences` -> `stop`; `temperature`, `top_p` as is; `top_k` passed through.
//! - `tools` -> function tools; Anthropic's server tools (web search, code execution, ...) run on
//!   Anthropic's servers and are refused. `tool_choice` auto/any/tool/none -> auto/required/
//!   function/none, `disable_parallel_tool_use` -> `parallel_tool_calls: false`.
//! - `metadata.user_id` -> `user` (so sticky A/B splits and per-user budgets see it).
//! - `output_config.format` / `output_format` (JSON schema) -> `response_format` `json_schema`.
//! - `thinking` and `output_config.effort` are dropped: the route decides which model answers,
//!   and OpenAI's non-reasoning models refuse `reasoning_effort` outright.
//! - `service_tier`, `container`, `context_management` are dropped; `mcp_servers` is refused;
//!   any other field passes through untouched.
//!
//! Tool ids: answers prefix upstream tool-call ids with `toolu_` (as Anthropic's look); requests
//! strip that prefix again, so ids round-trip exactly to providers that validate them (Mistral
//! wants its own 9-character ids back).

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::{Context, Translated, Translation};
use crate::error::ApiError;
use crate::internal::StreamEncoder;
use crate::internal::{OaUsage, Usage};
use crate::tokens;

pub mod stream;

#[cfg(test)]
mod tests;

/// The prefix of Anthropic tool-use ids.
const TOOL_ID_PREFIX: &str = "toolu_";

/// A 400 naming the field the way Anthropic does (`messages.1.content.0.source`): Anthropic's
/// error body has no `param`, so the message carries it.
fn bad(param: impl Into<String>, message: impl AsRef<str>) -> ApiError {
    let param = param.into();
    let message = format!("llmesh: {param}: {}", message.as_ref());
    ApiError::bad_request(Some(param), message)
}

/// Translates an Anthropic Messages request into an OpenAI chat body.
pub fn to_chat(body: Map<String, Value>, ctx: &Context<'_>) -> Result<Translated, ApiError> {
    let req = translate(body, true)?;
    let t = Messages {
        id: message_id(ctx.request_id),
        model: req.model,
        stop_sequences: req.stop_sequences,
        // Set by the handler, which estimates every translated prompt.
        input_estimate: 0,
    };
    Ok((req.body, Some(Box::new(t))))
}

/// `POST /v1/messages/count_tokens`: the model named and Anthropic's `{"input_tokens": n}`,
/// estimated with [`crate::tokens`] on the translated request (the same estimate the limits use).
pub fn count_tokens(raw: &[u8]) -> Result<(String, Bytes), ApiError> {
    let body: Map<String, Value> = serde_json::from_slice(raw).map_err(|e| {
        ApiError::bad_request(
            None,
            format!("llmesh: the request body is not a JSON object ({e})"),
        )
    })?;
    let req = translate(body, false)?;
    let n = tokens::chat_prompt(&req.body, false).tokens;
    let out = json!({ "input_tokens": n });
    Ok((req.model, Bytes::from(out.to_string())))
}

/// A translated request and what the answer's translation needs from it.
struct Request {
    body: Map<String, Value>,
    model: String,
    stop_sequences: Vec<String>,
}

fn translate(mut body: Map<String, Value>, generate: bool) -> Result<Request, ApiError> {
    let mut out = Map::new();
    let model = match body.remove("model") {
        Some(Value::String(m)) if !m.is_empty() => m,
        None | Some(Value::Null) => {
            return Err(bad(
                "model",
                "Field required: name the llmesh route to use (e.g. \"model\": \"chat\")",
            ));
        }
        Some(_) => return Err(bad("model", "must be a non-empty string")),
    };
    out.insert("model".into(), Value::String(model.clone()));

    let mut messages = Vec::new();
    match body.remove("system") {
        None | Some(Value::Null) => {}
        Some(system) => {
            let text = system_text(&system)?;
            if !text.is_empty() {
                messages.push(json!({"role": "system", "content": text}));
            }
        }
    }
    let input = match body.remove("messages") {
        Some(Value::Array(m)) if !m.is_empty() => m,
        Some(Value::Array(_)) => {
            return Err(bad("messages", "at least one message is required"));
        }
        None | Some(Value::Null) => return Err(bad("messages", "Field required")),
        Some(_) => {
            return Err(bad(
                "messages",
                "must be an array of {\"role\", \"content\"} objects",
            ));
        }
    };
    for (i, m) in input.iter().enumerate() {
        message(i, m, &mut messages)?;
    }
    out.insert("messages".into(), Value::Array(messages));

    match body.remove("max_tokens") {
        None | Some(Value::Null) if generate => {
            return Err(bad(
                "max_tokens",
                "Field required: the Messages API needs the most tokens to generate (e.g. \"max_tokens\": 1024)",
            ));
        }
        None | Some(Value::Null) => {}
        Some(v) => match v.as_u64() {
            Some(n) if n >= 1 => {
                out.insert("max_completion_tokens".into(), Value::from(n));
            }
            _ => return Err(bad("max_tokens", "must be an integer of at least 1")),
        },
    }

    let mut stop_sequences = Vec::new();
    match body.remove("stop_sequences") {
        None | Some(Value::Null) => {}
        Some(Value::Array(seqs)) => {
            for (i, s) in seqs.into_iter().enumerate() {
                match s {
                    Value::String(s) => stop_sequences.push(s),
                    _ => return Err(bad(format!("stop_sequences.{i}"), "must be a string")),
                }
            }
            if !stop_sequences.is_empty() {
                out.insert("stop".into(), json!(stop_sequences));
            }
        }
        Some(_) => return Err(bad("stop_sequences", "must be an array of strings")),
    }

    for key in ["temperature", "top_p", "top_k"] {
        match body.remove(key) {
            None | Some(Value::Null) => {}
            Some(v @ Value::Number(_)) => {
                out.insert(key.into(), v);
            }
            Some(_) => return Err(bad(key, "must be a number")),
        }
    }

    let tools = match body.remove("tools") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(tools)) => tools
            .iter()
            .enumerate()
            .map(|(i, t)| tool(i, t))
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => return Err(bad("tools", "must be an array of tool definitions")),
    };
    let choice = body.remove("tool_choice");
    if !tools.is_empty() {
        out.insert("tools".into(), Value::Array(tools));
        // OpenAI refuses tool_choice and parallel_tool_calls without tools, so both go only here.
        if let Some(c) = choice.filter(|c| !c.is_null()) {
            let (choice, parallel) = tool_choice(&c)?;
            out.insert("tool_choice".into(), choice);
            if !parallel {
                out.insert("parallel_tool_calls".into(), Value::Bool(false));
            }
        }
    }

    let output_config = body.remove("output_config");
    let format = match (&output_config, body.remove("output_format")) {
        (Some(Value::Object(c)), _) if c.get("format").is_some_and(|f| !f.is_null()) => c
            .get("format")
            .cloned()
            .map(|f| ("output_config.format", f)),
        (_, Some(f)) if !f.is_null() => Some(("output_format", f)),
        _ => None,
    };
    if let Some((param, f)) = format {
        out.insert("response_format".into(), response_format(param, &f)?);
    }

    match body.remove("metadata") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => match m.get("user_id") {
            None | Some(Value::Null) => {}
            Some(Value::String(u)) => {
                out.insert("user".into(), Value::String(u.clone()));
            }
            Some(_) => return Err(bad("metadata.user_id", "must be a string")),
        },
        Some(_) => return Err(bad("metadata", "must be an object")),
    }

    match body.remove("stream") {
        None | Some(Value::Null) => {}
        Some(Value::Bool(s)) => {
            out.insert("stream".into(), Value::Bool(s));
        }
        Some(_) => return Err(bad("stream", "must be a boolean")),
    }

    if body
        .get("mcp_servers")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty())
    {
        return Err(bad(
            "mcp_servers",
            "Anthropic's MCP connector runs on Anthropic's servers; llmesh routes to any backend and cannot call MCP servers for you. Run the MCP client in your app and pass its tools as `tools`",
        ));
    }
    for dropped in [
        "thinking",
        "service_tier",
        "container",
        "context_management",
        "mcp_servers",
    ] {
        body.remove(dropped);
    }
    // Anything else is not Anthropic's: a client's extra field for its backend.
    for (k, v) in body {
        out.entry(k).or_insert(v);
    }
    Ok(Request {
        body: out,
        model,
        stop_sequences,
    })
}

fn system_text(system: &Value) -> Result<String, ApiError> {
    match system {
        Value::String(s) => Ok(s.clone()),
        Value::Array(blocks) => {
            let mut texts = Vec::with_capacity(blocks.len());
            for (i, b) in blocks.iter().enumerate() {
                match (block_type(b), b.get("text")) {
                    (Some("text"), Some(Value::String(t))) => texts.push(t.as_str()),
                    _ => {
                        return Err(bad(
                            format!("system.{i}"),
                            "system blocks must be {\"type\": \"text\", \"text\": \"...\"}",
                        ));
                    }
                }
            }
            Ok(texts.join("\n"))
        }
        _ => Err(bad("system", "must be a string or an array of text blocks")),
    }
}

fn block_type(b: &Value) -> Option<&str> {
    b.get("type").and_then(Value::as_str)
}

/// An OpenAI content part of a user message.
fn text_part(text: &str) -> Value {
    json!({"type": "text", "text": text})
}

/// One Anthropic message, appended to `out` as one or more OpenAI messages.
fn message(i: usize, m: &Value, out: &mut Vec<Value>) -> Result<(), ApiError> {
    let role = m.get("role").and_then(Value::as_str);
    let content = m.get("content");
    let at = |rest: &str| format!("messages.{i}{rest}");
    match role {
        Some("user") => match content {
            Some(Value::String(s)) => out.push(json!({"role": "user", "content": s})),
            Some(Value::Array(blocks)) => user_blocks(i, blocks, out)?,
            _ => {
                return Err(bad(
                    at(".content"),
                    "must be a string or an array of content blocks",
                ));
            }
        },
        Some("assistant") => match content {
            Some(Value::String(s)) => out.push(json!({"role": "assistant", "content": s})),
            Some(Value::Array(blocks)) => out.push(assistant_blocks(i, blocks)?),
            _ => {
                return Err(bad(
                    at(".content"),
                    "must be a string or an array of content blocks",
                ));
            }
        },
        Some(other) => {
            return Err(bad(
                at(".role"),
                format!(
                    "unexpected role `{other}`: messages alternate `user` and `assistant`; put system prompts in the top-level `system` field"
                ),
            ));
        }
        None => return Err(bad(at(".role"), "Field required (`user` or `assistant`)")),
    }
    Ok(())
}

/// A user turn: `tool_result` blocks become `role: tool` messages first (they must follow the
/// assistant's tool calls directly), then the other blocks one user message.
fn user_blocks(i: usize, blocks: &[Value], out: &mut Vec<Value>) -> Result<(), ApiError> {
    let mut parts = Vec::new();
    let mut tool_images = Vec::new();
    for (j, b) in blocks.iter().enumerate() {
        let at = format!("messages.{i}.content.{j}");
        match block_type(b) {
            Some("tool_result") => {
                let id = match b.get("tool_use_id") {
                    Some(Value::String(id)) if !id.is_empty() => upstream_tool_id(id),
                    _ => return Err(bad(format!("{at}.tool_use_id"), "Field required")),
                };
                let mut texts = Vec::new();
                match b.get("content") {
                    None | Some(Value::Null) => {}
                    Some(Value::String(s)) => texts.push(s.clone()),
                    Some(Value::Array(inner)) => {
                        for (k, c) in inner.iter().enumerate() {
                            let at = format!("{at}.content.{k}");
                            let mut ps = Vec::new();
                            content_block(&at, c, &mut ps)?;
                            for p in ps {
                                match p.get("text").and_then(Value::as_str) {
                                    Some(t) => texts.push(t.to_string()),
                                    None => tool_images.push(p),
                                }
                            }
                        }
                    }
                    Some(_) => {
                        return Err(bad(
                            format!("{at}.content"),
                            "must be a string or an array of content blocks",
                        ));
                    }
                }
                let mut text = texts.join("\n");
                if b.get("is_error").and_then(Value::as_bool) == Some(true) {
                    // OpenAI has no error flag on tool results: say it in the content.
                    text = format!("Error: {text}");
                }
                out.push(json!({"role": "tool", "tool_call_id": id, "content": text}));
            }
            Some("tool_use") => {
                return Err(bad(
                    format!("{at}.type"),
                    "`tool_use` blocks belong in assistant messages",
                ));
            }
            Some("thinking" | "redacted_thinking") => {}
            _ => content_block(&at, b, &mut parts)?,
        }
    }
    parts.extend(tool_images);
    match parts.as_slice() {
        [] => {}
        [only] if only.get("type").and_then(Value::as_str) == Some("text") => {
            out.push(json!({"role": "user", "content": only["text"]}));
        }
        _ => out.push(json!({"role": "user", "content": parts})),
    }
    Ok(())
}

/// A text, image or document block as OpenAI content parts.
fn content_block(at: &str, b: &Value, parts: &mut Vec<Value>) -> Result<(), ApiError> {
    match block_type(b) {
        Some("text") => match b.get("text") {
            Some(Value::String(t)) => parts.push(text_part(t)),
            _ => return Err(bad(format!("{at}.text"), "Field required")),
        },
        Some("image") => parts.push(image(at, b.get("source"))?),
        Some("document") => document(at, b, parts)?,
        Some(other) => {
            return Err(bad(
                format!("{at}.type"),
                format!(
                    "content blocks of type `{other}` are not supported here (text, image, document, tool_use, tool_result and thinking are)"
                ),
            ));
        }
        None => return Err(bad(format!("{at}.type"), "Field required")),
    }
    Ok(())
}

fn image(at: &str, source: Option<&Value>) -> Result<Value, ApiError> {
    let at = format!("{at}.source");
    let source = source.ok_or_else(|| bad(&at, "Field required"))?;
    let url = match block_type(source) {
        Some("base64") => {
            let media = source.get("media_type").and_then(Value::as_str);
            let data = source.get("data").and_then(Value::as_str);
            match (media, data) {
                (Some(m), Some(d)) => format!("data:{m};base64,{d}"),
                _ => {
                    return Err(bad(
                        at,
                        "a base64 image source needs `media_type` and `data`",
                    ));
                }
            }
        }
        Some("url") => match source.get("url").and_then(Value::as_str) {
            Some(u) => u.to_string(),
            None => return Err(bad(format!("{at}.url"), "Field required")),
        },
        Some("file") => {
            return Err(bad(
                at,
                "file sources refer to Anthropic's Files API, which llmesh does not proxy; send the image as a base64 or url source",
            ));
        }
        _ => return Err(bad(format!("{at}.type"), "must be `base64` or `url`")),
    };
    Ok(json!({"type": "image_url", "image_url": {"url": url}}))
}

fn document(at: &str, b: &Value, parts: &mut Vec<Value>) -> Result<(), ApiError> {
    let src_at = format!("{at}.source");
    let source = b
        .get("source")
        .ok_or_else(|| bad(&src_at, "Field required"))?;
    let title = b
        .get("title")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty());
    let mut text = match block_type(source) {
        Some("text") => match source.get("data").and_then(Value::as_str) {
            Some(d) => d.to_string(),
            None => return Err(bad(format!("{src_at}.data"), "Field required")),
        },
        Some("content") => match source.get("content") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(inner)) => {
                let mut texts = Vec::new();
                for (k, c) in inner.iter().enumerate() {
                    let at = format!("{src_at}.content.{k}");
                    let mut ps = Vec::new();
                    content_block(&at, c, &mut ps)?;
                    for p in ps {
                        match p.get("text").and_then(Value::as_str) {
                            Some(t) => texts.push(t.to_string()),
                            None => parts.push(p),
                        }
                    }
                }
                texts.join("\n")
            }
            _ => {
                return Err(bad(
                    format!("{src_at}.content"),
                    "must be a string or an array of content blocks",
                ));
            }
        },
        Some("base64" | "url") => {
            return Err(bad(
                src_at,
                "PDF documents are not supported on llmesh's Messages endpoint: a route may pick any backend, and most (vLLM, Ollama, Mistral, Groq, ...) cannot read PDFs. Extract the text and send it as a text document ({\"type\": \"text\", \"media_type\": \"text/plain\", \"data\": ...})",
            ));
        }
        Some("file") => {
            return Err(bad(
                src_at,
                "file sources refer to Anthropic's Files API, which llmesh does not proxy; send the document's text as a text source",
            ));
        }
        _ => {
            return Err(bad(
                format!("{src_at}.type"),
                "must be `text` or `content` (PDFs are not supported)",
            ));
        }
    };
    if let Some(t) = title {
        text = format!("{t}\n\n{text}");
    }
    parts.push(text_part(&text));
    Ok(())
}

/// An assistant turn: text joined into `content`, `tool_use` blocks as `tool_calls`.
fn assistant_blocks(i: usize, blocks: &[Value]) -> Result<Value, ApiError> {
    let mut texts = Vec::new();
    let mut calls = Vec::new();
    for (j, b) in blocks.iter().enumerate() {
        let at = format!("messages.{i}.content.{j}");
        match block_type(b) {
            Some("text") => match b.get("text") {
                Some(Value::String(t)) => texts.push(t.as_str()),
                _ => return Err(bad(format!("{at}.text"), "Field required")),
            },
            Some("tool_use") => {
                let id = match b.get("id") {
                    Some(Value::String(id)) if !id.is_empty() => upstream_tool_id(id),
                    _ => return Err(bad(format!("{at}.id"), "Field required")),
                };
                let name = match b.get("name") {
                    Some(Value::String(n)) => n.as_str(),
                    _ => return Err(bad(format!("{at}.name"), "Field required")),
                };
                let args = match b.get("input") {
                    None | Some(Value::Null) => "{}".to_string(),
                    Some(v) => v.to_string(),
                };
                calls.push(json!({"id": id, "type": "function",
                                  "function": {"name": name, "arguments": args}}));
            }
            // Reasoning from an earlier turn: only the model that wrote it can check its
            // signature, and OpenAI's format has no place for it.
            Some("thinking" | "redacted_thinking") => {}
            Some("tool_result") => {
                return Err(bad(
                    format!("{at}.type"),
                    "`tool_result` blocks belong in user messages",
                ));
            }
            Some(other) => {
                return Err(bad(
                    format!("{at}.type"),
                    format!(
                        "assistant content blocks of type `{other}` are not supported here (text, tool_use and thinking are)"
                    ),
                ));
            }
            None => return Err(bad(format!("{at}.type"), "Field required")),
        }
    }
    let mut m = Map::new();
    m.insert("role".into(), json!("assistant"));
    if calls.is_empty() {
        m.insert("content".into(), json!(texts.join("\n")));
    } else {
        m.insert(
            "content".into(),
            if texts.is_empty() {
                Value::Null
            } else {
                json!(texts.join("\n"))
            },
        );
        m.insert("tool_calls".into(), Value::Array(calls));
    }
    Ok(Value::Object(m))
}

fn tool(i: usize, t: &Value) -> Result<Value, ApiError> {
    let at = format!("tools.{i}");
    match block_type(t) {
        None | Some("custom") => {}
        Some(other) => {
            return Err(bad(
                format!("{at}.type"),
                format!(
                    "`{other}` is an Anthropic-defined tool (run on Anthropic's servers, or with a schema only Claude knows), which other backends cannot use; define it as a custom tool with a name, description and input_schema"
                ),
            ));
        }
    }
    let name = match t.get("name") {
        Some(Value::String(n)) if !n.is_empty() => n,
        _ => return Err(bad(format!("{at}.name"), "Field required")),
    };
    let schema = match t.get("input_schema") {
        Some(s @ Value::Object(_)) => s.clone(),
        _ => {
            return Err(bad(
                format!("{at}.input_schema"),
                "Field required (a JSON schema object)",
            ));
        }
    };
    let mut f = Map::new();
    f.insert("name".into(), json!(name));
    if let Some(d) = t.get("description").filter(|d| !d.is_null()) {
        f.insert("description".into(), d.clone());
    }
    f.insert("parameters".into(), schema);
    if let Some(s) = t.get("strict").filter(|s| s.is_boolean()) {
        f.insert("strict".into(), s.clone());
    }
    Ok(json!({"type": "function", "function": f}))
}

/// OpenAI's `tool_choice`, and whether parallel tool calls stay allowed.
fn tool_choice(c: &Value) -> Result<(Value, bool), ApiError> {
    let parallel = c.get("disable_parallel_tool_use").and_then(Value::as_bool) != Some(true);
    let choice = match block_type(c) {
        Some("auto") => json!("auto"),
        Some("any") => json!("required"),
        Some("none") => json!("none"),
        Some("tool") => match c.get("name") {
            Some(Value::String(n)) => json!({"type": "function", "function": {"name": n}}),
            _ => return Err(bad("tool_choice.name", "Field required")),
        },
        _ => {
            return Err(bad(
                "tool_choice.type",
                "must be `auto`, `any`, `tool` or `none`",
            ));
        }
    };
    Ok((choice, parallel))
}

fn response_format(param: &str, f: &Value) -> Result<Value, ApiError> {
    match (block_type(f), f.get("schema")) {
        (Some("json_schema"), Some(schema @ Value::Object(_))) => Ok(json!({
            "type": "json_schema",
            // Anthropic guarantees the schema; on OpenAI only strict mode does.
            "json_schema": {"name": "output", "schema": schema, "strict": true}
        })),
        _ => Err(bad(
            param,
            "must be {\"type\": \"json_schema\", \"schema\": {...}}",
        )),
    }
}

/// An upstream tool-call id for an Anthropic one: strips the prefix answers add.
fn upstream_tool_id(id: &str) -> &str {
    id.strip_prefix(TOOL_ID_PREFIX)
        .filter(|rest| !rest.is_empty())
        .unwrap_or(id)
}

/// An Anthropic tool-use id for an upstream tool call (`n`: its position, when it has no id).
fn tool_use_id(upstream: Option<&str>, message_id: &str, n: usize) -> String {
    match upstream.filter(|id| !id.is_empty()) {
        Some(id) if id.starts_with(TOOL_ID_PREFIX) => id.to_string(),
        Some(id) => format!("{TOOL_ID_PREFIX}{id}"),
        None => format!(
            "{TOOL_ID_PREFIX}{}_{n}",
            message_id.trim_start_matches("msg_")
        ),
    }
}

/// `msg_` and the request id's letters and digits, so a message can be found in the access log.
fn message_id(request_id: &str) -> String {
    let id: String = request_id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(64)
        .collect();
    format!("msg_{id}")
}

/// Anthropic's `stop_reason` and `stop_sequence` for an OpenAI choice. Which stop sequence
/// matched is only knowable where the server says so (vLLM's `stop_reason`).
fn stop_reason(
    finish: Option<&str>,
    matched: Option<&Value>,
    stop_sequences: &[String],
    tool_calls: bool,
) -> (&'static str, Option<String>) {
    match finish {
        Some("length") => ("max_tokens", None),
        Some("tool_calls" | "function_call") => ("tool_use", None),
        Some("content_filter") => ("refusal", None),
        // Some servers (Gemini's compatibility layer, Ollama) finish tool calls with `stop`.
        _ if tool_calls => ("tool_use", None),
        Some("stop") => match matched.and_then(Value::as_str) {
            Some(s) if stop_sequences.iter().any(|q| q == s) => ("stop_sequence", Some(s.into())),
            _ => ("end_turn", None),
        },
        _ => ("end_turn", None),
    }
}

/// Anthropic's usage object: `input_tokens` excludes cache reads and writes.
fn usage_json(u: &Usage) -> Value {
    json!({
        "input_tokens": u.uncached_input(),
        "output_tokens": u.output,
        "cache_creation_input_tokens": u.cache_write,
        "cache_read_input_tokens": u.cached_input,
    })
}

/// Usage from an OpenAI body or chunk (`usage`, or Groq's `x_groq.usage`).
fn usage_of(v: &Value) -> Option<Usage> {
    let u = v
        .get("usage")
        .filter(|u| u.is_object())
        .or_else(|| v.pointer("/x_groq/usage").filter(|u| u.is_object()))?;
    serde_json::from_value::<OaUsage>(u.clone())
        .ok()
        .map(|u| u.normalise())
}

/// What the request leaves for its answer.
struct Messages {
    id: String,
    model: String,
    stop_sequences: Vec<String>,
    input_estimate: u32,
}

impl Translation for Messages {
    fn response(&mut self, openai: &[u8], usage: Option<&Usage>) -> Result<Bytes, ApiError> {
        let v: Value = serde_json::from_slice(openai).map_err(|e| {
            ApiError::upstream(
                http::StatusCode::BAD_GATEWAY,
                "malformed",
                format!("llmesh: the backend's answer is not JSON ({e})"),
            )
        })?;
        let choice = v.pointer("/choices/0").unwrap_or(&Value::Null);
        let msg = choice.get("message").unwrap_or(&Value::Null);
        let mut content = Vec::new();
        let nonempty = |key: &str| {
            msg.get(key)
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
        };
        // A refusal (OpenAI's `refusal` instead of content) is still text for the reader.
        let refusal = nonempty("content").is_none() && nonempty("refusal").is_some();
        let text = nonempty("content").or_else(|| nonempty("refusal"));
        if let Some(t) = text {
            content.push(json!({"type": "text", "text": t}));
        }
        let calls = msg
            .get("tool_calls")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for (n, c) in calls.iter().enumerate() {
            let f = c.get("function").unwrap_or(&Value::Null);
            let args = f.get("arguments").and_then(Value::as_str).unwrap_or("");
            // Arguments cut short by max_tokens are not JSON; Anthropic's input is always an
            // object, and stop_reason already says the answer was cut.
            let input = serde_json::from_str::<Value>(args)
                .ok()
                .filter(Value::is_object)
                .unwrap_or_else(|| json!({}));
            content.push(json!({
                "type": "tool_use",
                "id": tool_use_id(c.get("id").and_then(Value::as_str), &self.id, n),
                "name": f.get("name").and_then(Value::as_str).unwrap_or(""),
                "input": input,
            }));
        }
        let (mut reason, seq) = stop_reason(
            choice.get("finish_reason").and_then(Value::as_str),
            choice.get("stop_reason"),
            &self.stop_sequences,
            !calls.is_empty(),
        );
        if refusal {
            reason = "refusal";
        }
        let usage = usage.copied().or_else(|| usage_of(&v)).unwrap_or(Usage {
            prompt: u64::from(self.input_estimate),
            output: text.map_or(0, |t| u64::from(tokens::estimate_text(t))),
            estimated: true,
            ..Usage::default()
        });
        let out = json!({
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": v.get("model").and_then(Value::as_str).unwrap_or(&self.model),
            "content": content,
            "stop_reason": reason,
            "stop_sequence": seq,
            "usage": usage_json(&usage),
        });
        Ok(Bytes::from(out.to_string()))
    }

    fn prompt_estimate(&mut self, tokens: u32) {
        self.input_estimate = tokens;
    }

    fn encoder(self: Box<Self>) -> Box<dyn StreamEncoder> {
        Box::new(stream::AnthropicSse::new(
            self.id,
            self.model,
            self.stop_sequences,
            self.input_estimate,
        ))
    }
}
