//! OpenAI chat-completions body -> Gemini `GenerateContentRequest`.

use std::collections::HashMap;

use serde_json::{Map, Value, json};

use super::response::signature_of;
use super::schema;
use crate::providers::{ErrorClass, UpstreamError};

type Result<T> = std::result::Result<T, UpstreamError>;

/// The value Google documents for function calls that carry no real thought signature
/// (history from another model), which Gemini 3 models otherwise refuse.
const SKIP_SIGNATURE: &str = "skip_thought_signature_validator";

fn unsupported(what: impl std::fmt::Display) -> UpstreamError {
    UpstreamError::cannot_express("Gemini", what)
}

/// Gemini 3 models validate thought signatures on replayed function calls.
fn validates_signatures(model: &str) -> bool {
    let id = model.rsplit('/').next().unwrap_or(model);
    id.starts_with("gemini-3")
}

/// Translates the body for `model` (the backend's model id).
pub fn translate(body: &Map<String, Value>, model: &str) -> Result<Map<String, Value>> {
    refuse_unexpressible(body)?;
    let mut out = Map::new();
    let (system, contents) = contents(body, validates_signatures(model))?;
    out.insert("contents".into(), Value::Array(contents));
    if let Some(system) = system {
        out.insert("systemInstruction".into(), system);
    }
    let tool_names = tools(body, &mut out)?;
    if tool_names > 0
        && let Some(config) = tool_config(body.get("tool_choice"))?
    {
        out.insert("toolConfig".into(), config);
    }
    let config = generation_config(body)?;
    if !config.is_empty() {
        out.insert("generationConfig".into(), Value::Object(config));
    }
    Ok(out)
}

fn refuse_unexpressible(body: &Map<String, Value>) -> Result<()> {
    if body.get("logprobs").and_then(Value::as_bool) == Some(true)
        || body
            .get("top_logprobs")
            .and_then(Value::as_u64)
            .is_some_and(|n| n > 0)
    {
        return Err(unsupported("logprobs in OpenAI's shape"));
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

/// `systemInstruction` and `contents`. Roles become `user`/`model`; tool results are `user`
/// turns of `functionResponse` parts named after the call they answer; consecutive turns of one
/// role are merged, so parallel calls and their responses each form one turn.
fn contents(body: &Map<String, Value>, sign: bool) -> Result<(Option<Value>, Vec<Value>)> {
    let empty = Vec::new();
    let list = body
        .get("messages")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    // Gemini names a function response by the function, OpenAI by the call id.
    let mut names: HashMap<&str, &str> = HashMap::new();
    for m in list {
        for call in m
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let (Some(id), Some(name)) = (
                call.get("id").and_then(Value::as_str),
                call.get("function")
                    .and_then(|f| f.get("name"))
                    .and_then(Value::as_str),
            ) {
                names.insert(id, name);
            }
        }
    }
    let mut system = Vec::new();
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for (i, m) in list.iter().enumerate() {
        let content = m.get("content").unwrap_or(&Value::Null);
        let (role, parts) = match m.get("role").and_then(Value::as_str).unwrap_or("") {
            "system" | "developer" => {
                system.extend(text_parts(content, i)?);
                continue;
            }
            "user" => ("user", user_parts(content, i)?),
            "assistant" => ("model", model_parts(m, i, sign)?),
            "tool" => ("user", vec![function_response(m, content, &names, i)?]),
            other => {
                return Err(unsupported(format!("messages[{i}] with role `{other}`")));
            }
        };
        if parts.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some((r, p)) if *r == role => p.extend(parts),
            _ => turns.push((role, parts)),
        }
    }
    let contents = turns
        .into_iter()
        .map(|(role, parts)| json!({"role": role, "parts": parts}))
        .collect();
    let system = (!system.is_empty()).then(|| json!({"parts": system}));
    Ok((system, contents))
}

fn text_part(text: &str) -> Option<Value> {
    (!text.is_empty()).then(|| json!({ "text": text }))
}

fn text_parts(content: &Value, i: usize) -> Result<Vec<Value>> {
    match content {
        Value::Null => Ok(Vec::new()),
        Value::String(s) => Ok(text_part(s).into_iter().collect()),
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
                out.extend(text_part(text.and_then(Value::as_str).unwrap_or("")));
            }
            Ok(out)
        }
        _ => Err(unsupported(format!("the content of messages[{i}]"))),
    }
}

fn parse_data_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("data:")?;
    let (meta, data) = rest.split_once(',')?;
    Some((meta.strip_suffix(";base64")?, data))
}

/// The MIME type of a URL by its extension, for the file types Gemini reads.
fn mime_of(url: &str) -> Option<&'static str> {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let ext = path.rsplit('.').next()?.to_ascii_lowercase();
    Some(match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "heic" => "image/heic",
        "heif" => "image/heif",
        "pdf" => "application/pdf",
        "mp3" => "audio/mp3",
        "wav" => "audio/wav",
        "mp4" => "video/mp4",
        _ => return None,
    })
}

/// A `data:` URL becomes `inlineData`; an `http(s)`/`gs` URL `fileData` (Gemini fetches it).
fn media_part(url: &str, what: &str, i: usize) -> Result<Value> {
    if let Some((mime, data)) = parse_data_url(url) {
        return Ok(json!({"inlineData": {"mimeType": mime, "data": data}}));
    }
    if ["https://", "http://", "gs://"]
        .iter()
        .any(|p| url.starts_with(p))
    {
        let mut file = Map::new();
        if let Some(mime) = mime_of(url) {
            file.insert("mimeType".into(), mime.into());
        }
        file.insert("fileUri".into(), url.into());
        return Ok(json!({ "fileData": file }));
    }
    Err(unsupported(format!(
        "the {what} URL in messages[{i}] (only data:, http(s) and gs URLs)"
    )))
}

fn user_parts(content: &Value, i: usize) -> Result<Vec<Value>> {
    let Value::Array(parts) = content else {
        return text_parts(content, i);
    };
    let mut out = Vec::with_capacity(parts.len());
    for p in parts {
        let part = match p.get("type").and_then(Value::as_str) {
            Some("text") => match text_part(p.get("text").and_then(Value::as_str).unwrap_or("")) {
                Some(t) => t,
                None => continue,
            },
            Some("image_url") => {
                let image = p.get("image_url");
                let url = image
                    .and_then(|u| u.get("url"))
                    .or(image)
                    .and_then(Value::as_str)
                    .unwrap_or("");
                media_part(url, "image", i)?
            }
            Some("input_audio") => {
                let audio = p.get("input_audio").unwrap_or(&Value::Null);
                let format = audio.get("format").and_then(Value::as_str).unwrap_or("wav");
                let data = audio.get("data").and_then(Value::as_str).unwrap_or("");
                json!({"inlineData": {"mimeType": format!("audio/{format}"), "data": data}})
            }
            Some("file") => match p
                .get("file")
                .and_then(|f| f.get("file_data"))
                .and_then(Value::as_str)
            {
                Some(url) => media_part(url, "file", i)?,
                None => {
                    return Err(unsupported(format!(
                        "a file reference in messages[{i}] (only inline file_data)"
                    )));
                }
            },
            other => {
                return Err(unsupported(format!(
                    "a `{}` part in messages[{i}]",
                    other.unwrap_or("untyped")
                )));
            }
        };
        out.push(part);
    }
    Ok(out)
}

fn model_parts(m: &Value, i: usize, sign: bool) -> Result<Vec<Value>> {
    if m.get("function_call").is_some_and(|f| !f.is_null()) {
        return Err(unsupported(format!(
            "the legacy `function_call` in messages[{i}]"
        )));
    }
    let mut out = text_parts(m.get("content").unwrap_or(&Value::Null), i)?;
    let first_call = out.len();
    let mut signed = false;
    for call in m
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let f = call.get("function").unwrap_or(&Value::Null);
        let args = match f.get("arguments") {
            None | Some(Value::Null) => Value::Object(Map::new()),
            Some(Value::String(s)) if s.trim().is_empty() => Value::Object(Map::new()),
            Some(Value::String(s)) => serde_json::from_str(s).map_err(|_| {
                unsupported(format!(
                    "tool call arguments in messages[{i}] that are not JSON"
                ))
            })?,
            Some(other) => other.clone(),
        };
        let mut part = json!({"functionCall": {"name": f.get("name").cloned().unwrap_or(Value::Null), "args": args}});
        // The signature Gemini gave this call rides in its id (see `response::call_id`).
        if let Some(sig) = call
            .get("id")
            .and_then(Value::as_str)
            .and_then(signature_of)
        {
            part["thoughtSignature"] = sig.into();
            signed = true;
        }
        out.push(part);
    }
    // Only the first of parallel calls carries a signature; a turn without any came from
    // elsewhere, and Gemini 3 accepts it only with the documented placeholder.
    if sign
        && !signed
        && let Some(first) = out.get_mut(first_call)
    {
        first["thoughtSignature"] = SKIP_SIGNATURE.into();
    }
    Ok(out)
}

fn function_response(
    m: &Value,
    content: &Value,
    names: &HashMap<&str, &str>,
    i: usize,
) -> Result<Value> {
    let id = m.get("tool_call_id").and_then(Value::as_str).unwrap_or("");
    let name = names
        .get(id)
        .copied()
        .or_else(|| m.get("name").and_then(Value::as_str))
        .ok_or_else(|| UpstreamError {
            // OpenAI refuses such a conversation too: the client must fix it.
            class: ErrorClass::Client,
            status: None,
            message: format!(
                "messages[{i}] answers tool call `{id}`, which no assistant message made"
            ),
            retry_after: None,
            reason: "bad_request",
            openai_body: None,
        })?;
    let text = match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    // `response` must be an object: a JSON object result is passed as it is, anything else
    // is wrapped the way Google's SDKs do.
    let response = match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(o)) => Value::Object(o),
        Ok(v) => json!({ "result": v }),
        Err(_) => json!({ "result": text }),
    };
    Ok(json!({"functionResponse": {"name": name, "response": response}}))
}

/// `tools[].function` -> one `functionDeclarations` tool. Returns the number of functions.
fn tools(body: &Map<String, Value>, out: &mut Map<String, Value>) -> Result<usize> {
    let mut declarations = Vec::new();
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
        let mut d = Map::new();
        d.insert("name".into(), f.get("name").cloned().unwrap_or(Value::Null));
        if let Some(desc) = f.get("description").filter(|d| d.is_string()) {
            d.insert("description".into(), desc.clone());
        }
        if let Some(params) = f.get("parameters").filter(|p| p.is_object()) {
            let converted = schema::convert(params).ok_or_else(|| {
                unsupported(format!("the recursive parameter schema of tools[{i}]"))
            })?;
            if !schema::is_empty_object(&converted) {
                d.insert("parameters".into(), converted);
            }
        }
        declarations.push(Value::Object(d));
    }
    let n = declarations.len();
    if n > 0 {
        out.insert(
            "tools".into(),
            json!([{ "functionDeclarations": declarations }]),
        );
    }
    Ok(n)
}

fn tool_config(choice: Option<&Value>) -> Result<Option<Value>> {
    let config = match choice {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => match s.as_str() {
            "auto" => json!({"mode": "AUTO"}),
            "none" => json!({"mode": "NONE"}),
            "required" => json!({"mode": "ANY"}),
            other => return Err(unsupported(format!("tool_choice `{other}`"))),
        },
        Some(c) => match c.get("function").and_then(|f| f.get("name")) {
            Some(name) => json!({"mode": "ANY", "allowedFunctionNames": [name]}),
            None => return Err(unsupported("this tool_choice")),
        },
    };
    Ok(Some(json!({ "functionCallingConfig": config })))
}

fn generation_config(body: &Map<String, Value>) -> Result<Map<String, Value>> {
    let mut g = Map::new();
    let mut copy = |from: &str, to: &str| {
        if let Some(v) = body.get(from).filter(|v| v.is_number()) {
            g.insert(to.into(), v.clone());
        }
    };
    copy("temperature", "temperature");
    copy("top_p", "topP");
    copy("top_k", "topK");
    copy("n", "candidateCount");
    copy("seed", "seed");
    copy("presence_penalty", "presencePenalty");
    copy("frequency_penalty", "frequencyPenalty");
    if let Some(max) = body
        .get("max_completion_tokens")
        .filter(|v| v.is_number())
        .or_else(|| body.get("max_tokens").filter(|v| v.is_number()))
    {
        g.insert("maxOutputTokens".into(), max.clone());
    }
    let stop: Vec<Value> = match body.get("stop") {
        Some(Value::String(s)) if !s.is_empty() => vec![s.as_str().into()],
        Some(Value::Array(a)) => a
            .iter()
            .filter(|s| s.as_str().is_some_and(|s| !s.is_empty()))
            .cloned()
            .collect(),
        _ => Vec::new(),
    };
    if !stop.is_empty() {
        g.insert("stopSequences".into(), Value::Array(stop));
    }
    if let Some(format) = body.get("response_format").filter(|f| !f.is_null()) {
        match format.get("type").and_then(Value::as_str) {
            Some("text") | None => {}
            Some("json_object") => {
                g.insert("responseMimeType".into(), "application/json".into());
            }
            Some("json_schema") => {
                g.insert("responseMimeType".into(), "application/json".into());
                if let Some(s) = format.get("json_schema").and_then(|j| j.get("schema")) {
                    let converted = schema::convert(s)
                        .ok_or_else(|| unsupported("a recursive response_format schema"))?;
                    g.insert("responseSchema".into(), converted);
                }
            }
            Some(other) => return Err(unsupported(format!("response_format `{other}`"))),
        }
    }
    Ok(g)
}
