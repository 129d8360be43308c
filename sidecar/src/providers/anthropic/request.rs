//! OpenAI chat-completions body -> Anthropic Messages request.

use serde_json::{Map, Value, json};

use super::{DEFAULT_MAX_TOKENS, JSON_TOOL};
use crate::providers::UpstreamError;

type Result<T> = std::result::Result<T, UpstreamError>;

fn unsupported(what: impl std::fmt::Display) -> UpstreamError {
    UpstreamError::cannot_express("Anthropic", what)
}

/// Translates the body. `stream` decides `stream: true` (the body's own flag is the client's).
pub fn translate(body: &Map<String, Value>, stream: bool) -> Result<Map<String, Value>> {
    refuse_unexpressible(body)?;
    let mut out = Map::new();
    out.insert(
        "model".into(),
        body.get("model").cloned().unwrap_or(Value::Null),
    );
    let max = body
        .get("max_completion_tokens")
        .and_then(Value::as_u64)
        .or_else(|| body.get("max_tokens").and_then(Value::as_u64))
        .unwrap_or(DEFAULT_MAX_TOKENS);
    out.insert("max_tokens".into(), max.into());

    let (system, messages) = messages(body)?;
    if let Some(system) = system {
        out.insert("system".into(), system);
    }
    out.insert("messages".into(), Value::Array(messages));

    tools(body, &mut out)?;

    if let Some(stop) = stop_sequences(body.get("stop")) {
        out.insert("stop_sequences".into(), stop);
    }
    if let Some(t) = body.get("temperature").and_then(Value::as_f64) {
        // OpenAI's range is 0..2, Anthropic's 0..1: clamp rather than have the request refused.
        out.insert("temperature".into(), json!(t.clamp(0.0, 1.0)));
    }
    for key in ["top_p", "top_k"] {
        if let Some(v) = body.get(key).filter(|v| v.is_number()) {
            out.insert(key.into(), v.clone());
        }
    }
    let user = body
        .get("user")
        .or_else(|| body.get("safety_identifier"))
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty());
    if let Some(user) = user {
        out.insert("metadata".into(), json!({ "user_id": user }));
    }
    if stream {
        out.insert("stream".into(), Value::Bool(true));
    }
    Ok(out)
}

/// Fields whose answer Anthropic cannot produce: the request goes to the next backend.
fn refuse_unexpressible(body: &Map<String, Value>) -> Result<()> {
    if let Some(n) = body.get("n").and_then(Value::as_u64)
        && n != 1
    {
        return Err(unsupported(format!("n = {n} (one choice per request)")));
    }
    if body.get("logprobs").and_then(Value::as_bool) == Some(true)
        || body
            .get("top_logprobs")
            .and_then(Value::as_u64)
            .is_some_and(|n| n > 0)
    {
        return Err(unsupported("logprobs"));
    }
    let audio_out = body.get("audio").is_some_and(|a| !a.is_null())
        || body
            .get("modalities")
            .and_then(Value::as_array)
            .is_some_and(|m| m.iter().any(|x| x.as_str() == Some("audio")));
    if audio_out {
        return Err(unsupported("audio output"));
    }
    if body.contains_key("functions") || body.contains_key("function_call") {
        return Err(unsupported(
            "the legacy `functions`/`function_call` fields (use `tools`)",
        ));
    }
    Ok(())
}

/// System text plus the alternating message list. Consecutive messages of one role are merged
/// into one, so tool results answering one assistant turn land in a single user message as the
/// Messages API requires.
fn messages(body: &Map<String, Value>) -> Result<(Option<Value>, Vec<Value>)> {
    let empty = Vec::new();
    let list = body
        .get("messages")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    let mut system: Vec<Value> = Vec::new();
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for (i, m) in list.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        let content = m.get("content").unwrap_or(&Value::Null);
        let (role, blocks) = match role {
            // Anthropic has one top-level system prompt: system messages anywhere go there.
            "system" | "developer" => {
                system.extend(text_blocks(content, i)?);
                continue;
            }
            "user" => ("user", user_blocks(content, i)?),
            "assistant" => ("assistant", assistant_blocks(m, i)?),
            "tool" => ("user", vec![tool_result(m, content, i)?]),
            other => {
                return Err(unsupported(format!("messages[{i}] with role `{other}`")));
            }
        };
        if blocks.is_empty() {
            continue; // empty text blocks are refused by Anthropic and carry nothing
        }
        match turns.last_mut() {
            Some((r, b)) if *r == role => b.extend(blocks),
            _ => turns.push((role, blocks)),
        }
    }
    let messages = turns
        .into_iter()
        .map(|(role, blocks)| json!({"role": role, "content": compact(blocks)}))
        .collect();
    let system = match system.len() {
        0 => None,
        _ => Some(compact(system)),
    };
    Ok((system, messages))
}

/// One plain text block reads as a string, as in Anthropic's own examples.
fn compact(mut blocks: Vec<Value>) -> Value {
    let plain = blocks.len() == 1
        && blocks[0].get("type").and_then(Value::as_str) == Some("text")
        && blocks[0].as_object().is_some_and(|o| o.len() == 2);
    if plain && let Some(Value::String(s)) = blocks[0].get_mut("text").map(Value::take) {
        return Value::String(s);
    }
    Value::Array(blocks)
}

fn text_block(text: &str, part: Option<&Value>) -> Option<Value> {
    if text.is_empty() {
        return None;
    }
    let mut b = json!({"type": "text", "text": text});
    // Prompt caching: clients that mark parts with Anthropic's `cache_control` keep it.
    if let Some(cc) = part.and_then(|p| p.get("cache_control")) {
        b["cache_control"] = cc.clone();
    }
    Some(b)
}

/// Text-only content (system messages, assistant text).
fn text_blocks(content: &Value, i: usize) -> Result<Vec<Value>> {
    match content {
        Value::Null => Ok(Vec::new()),
        Value::String(s) => Ok(text_block(s, None).into_iter().collect()),
        Value::Array(parts) => {
            let mut out = Vec::new();
            for p in parts {
                let text = match p.get("type").and_then(Value::as_str) {
                    Some("text") => p.get("text"),
                    Some("refusal") => p.get("refusal"),
                    other => {
                        return Err(unsupported(format!(
                            "a `{}` part in messages[{i}]",
                            other.unwrap_or("untyped")
                        )));
                    }
                };
                out.extend(text_block(
                    text.and_then(Value::as_str).unwrap_or(""),
                    Some(p),
                ));
            }
            Ok(out)
        }
        _ => Err(unsupported(format!("the content of messages[{i}]"))),
    }
}

/// Splits `data:<media type>;base64,<data>`.
pub fn parse_data_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("data:")?;
    let (meta, data) = rest.split_once(',')?;
    let media = meta.strip_suffix(";base64")?;
    Some((media, data))
}

fn image_block(url: &str, i: usize) -> Result<Value> {
    if let Some((media_type, data)) = parse_data_url(url) {
        return Ok(json!({
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data}
        }));
    }
    if url.starts_with("https://") || url.starts_with("http://") {
        return Ok(json!({"type": "image", "source": {"type": "url", "url": url}}));
    }
    Err(unsupported(format!(
        "the image URL in messages[{i}] (only data: and http(s) URLs)"
    )))
}

fn user_blocks(content: &Value, i: usize) -> Result<Vec<Value>> {
    let Value::Array(parts) = content else {
        return text_blocks(content, i);
    };
    let mut out = Vec::with_capacity(parts.len());
    for p in parts {
        let block = match p.get("type").and_then(Value::as_str) {
            Some("text") => {
                match text_block(p.get("text").and_then(Value::as_str).unwrap_or(""), Some(p)) {
                    Some(b) => b,
                    None => continue,
                }
            }
            Some("image_url") => {
                let image = p.get("image_url");
                let url = image
                    .and_then(|u| u.get("url"))
                    .or(image)
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let mut b = image_block(url, i)?;
                if let Some(cc) = p.get("cache_control") {
                    b["cache_control"] = cc.clone();
                }
                b
            }
            Some("file") => {
                let data = p
                    .get("file")
                    .and_then(|f| f.get("file_data"))
                    .and_then(Value::as_str)
                    .and_then(parse_data_url);
                match data {
                    Some((media @ "application/pdf", data)) => json!({
                        "type": "document",
                        "source": {"type": "base64", "media_type": media, "data": data}
                    }),
                    _ => {
                        return Err(unsupported(format!(
                            "the file in messages[{i}] (only inline PDF data)"
                        )));
                    }
                }
            }
            other => {
                return Err(unsupported(format!(
                    "a `{}` part in messages[{i}]",
                    other.unwrap_or("untyped")
                )));
            }
        };
        out.push(block);
    }
    Ok(out)
}

/// Tool call arguments are a JSON string in OpenAI and an object in Anthropic.
fn arguments(call: &Value, i: usize) -> Result<Value> {
    let raw = call
        .get("function")
        .and_then(|f| f.get("arguments"))
        .unwrap_or(&Value::Null);
    let parsed = match raw {
        Value::Null => Value::Object(Map::new()),
        Value::String(s) if s.trim().is_empty() => Value::Object(Map::new()),
        Value::String(s) => serde_json::from_str(s).map_err(|_| {
            unsupported(format!(
                "tool call arguments in messages[{i}] that are not JSON"
            ))
        })?,
        other => other.clone(),
    };
    if !parsed.is_object() {
        return Err(unsupported(format!(
            "tool call arguments in messages[{i}] that are not a JSON object"
        )));
    }
    Ok(parsed)
}

fn assistant_blocks(m: &Value, i: usize) -> Result<Vec<Value>> {
    if m.get("function_call").is_some_and(|f| !f.is_null()) {
        return Err(unsupported(format!(
            "the legacy `function_call` in messages[{i}]"
        )));
    }
    let mut out = text_blocks(m.get("content").unwrap_or(&Value::Null), i)?;
    for call in m
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let id = call.get("id").and_then(Value::as_str).unwrap_or("");
        let name = call
            .get("function")
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
            .unwrap_or("");
        out.push(json!({
            "type": "tool_use",
            "id": id,
            "name": name,
            "input": arguments(call, i)?,
        }));
    }
    Ok(out)
}

fn tool_result(m: &Value, content: &Value, i: usize) -> Result<Value> {
    let id = m.get("tool_call_id").and_then(Value::as_str).unwrap_or("");
    let content = match content {
        Value::String(s) => Value::String(s.clone()),
        Value::Null => Value::String(String::new()),
        _ => Value::Array(user_blocks(content, i)?),
    };
    Ok(json!({"type": "tool_result", "tool_use_id": id, "content": content}))
}

fn stop_sequences(stop: Option<&Value>) -> Option<Value> {
    let list: Vec<Value> = match stop? {
        Value::String(s) => vec![Value::String(s.clone())],
        Value::Array(a) => a
            .iter()
            .filter(|s| s.as_str().is_some_and(|s| !s.is_empty()))
            .cloned()
            .collect(),
        _ => Vec::new(),
    };
    (!list.is_empty()).then_some(Value::Array(list))
}

/// `tools`, `tool_choice`, `parallel_tool_calls` and `response_format` (as a forced tool).
fn tools(body: &Map<String, Value>, out: &mut Map<String, Value>) -> Result<()> {
    let mut list = Vec::new();
    for (i, t) in body
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        if t.get("type").and_then(Value::as_str).unwrap_or("function") != "function" {
            return Err(unsupported(format!("the non-function tool tools[{i}]")));
        }
        let f = t.get("function").unwrap_or(&Value::Null);
        let mut tool = Map::new();
        tool.insert("name".into(), f.get("name").cloned().unwrap_or(Value::Null));
        if let Some(d) = f.get("description").filter(|d| d.is_string()) {
            tool.insert("description".into(), d.clone());
        }
        let schema = f
            .get("parameters")
            .filter(|p| p.is_object())
            .cloned()
            .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
        tool.insert("input_schema".into(), schema);
        if let Some(cc) = t.get("cache_control") {
            tool.insert("cache_control".into(), cc.clone());
        }
        list.push(Value::Object(tool));
    }
    let user_tools = !list.is_empty();

    let choice = body.get("tool_choice");
    let mut tool_choice = match choice {
        _ if !user_tools => None,
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => match s.as_str() {
            "auto" => Some(json!({"type": "auto"})),
            "none" => Some(json!({"type": "none"})),
            "required" => Some(json!({"type": "any"})),
            other => return Err(unsupported(format!("tool_choice `{other}`"))),
        },
        Some(c) => match c.get("function").and_then(|f| f.get("name")) {
            Some(name) => Some(json!({"type": "tool", "name": name})),
            None => return Err(unsupported("this tool_choice")),
        },
    };

    if let Some(schema) = json_output_schema(body.get("response_format"))? {
        list.push(json!({
            "name": JSON_TOOL,
            "description": "Give the final answer by calling this tool: its input is the response, a JSON value matching the schema.",
            "input_schema": schema,
        }));
        // The model must answer through the JSON tool, or through one of the client's own
        // tools when it may call them (OpenAI lets it do either).
        tool_choice = match tool_choice {
            Some(c) if c["type"] == "tool" => Some(c),
            Some(c) if c["type"] != "none" && user_tools => Some(json!({"type": "any"})),
            None if user_tools => Some(json!({"type": "any"})),
            _ => Some(json!({"type": "tool", "name": JSON_TOOL})),
        };
    }

    if body.get("parallel_tool_calls").and_then(Value::as_bool) == Some(false) && user_tools {
        let c = tool_choice.get_or_insert_with(|| json!({"type": "auto"}));
        if c["type"] != "none" {
            c["disable_parallel_tool_use"] = Value::Bool(true);
        }
    }
    if !list.is_empty() {
        out.insert("tools".into(), Value::Array(list));
    }
    if let Some(c) = tool_choice {
        out.insert("tool_choice".into(), c);
    }
    Ok(())
}

/// The schema `response_format` asks for, when it asks for JSON.
fn json_output_schema(format: Option<&Value>) -> Result<Option<Value>> {
    let Some(format) = format.filter(|f| !f.is_null()) else {
        return Ok(None);
    };
    match format.get("type").and_then(Value::as_str) {
        Some("text") | None => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "object"}))),
        Some("json_schema") => {
            let schema = format
                .get("json_schema")
                .and_then(|s| s.get("schema"))
                .cloned()
                .unwrap_or_else(|| json!({"type": "object"}));
            // A tool's input is always an object.
            if schema.get("type").and_then(Value::as_str) != Some("object") {
                return Err(unsupported(
                    "a response_format json_schema whose root is not an object",
                ));
            }
            Ok(Some(schema))
        }
        Some(other) => Err(unsupported(format!("response_format `{other}`"))),
    }
}
