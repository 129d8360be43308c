//! A Responses request as a chat completions body, and the Response object's echoed fields.

use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::store::Store;
use super::{Ids, Pending};
use crate::error::ApiError;

/// Built-in tools that OpenAI runs on its own servers while it answers (search indexes, sandboxes,
/// image models, remote MCP connections). A chat completion has nowhere to run them.
const HOSTED_TOOLS: &[&str] = &[
    "web_search",
    "web_search_2025_08_26",
    "web_search_preview",
    "web_search_preview_2025_03_11",
    "file_search",
    "computer_use_preview",
    "computer_use",
    "computer",
    "code_interpreter",
    "image_generation",
    "mcp",
    "tool_search",
];

fn invalid(param: impl Into<String>, message: String) -> ApiError {
    ApiError::bad_request(Some(param.into()), message)
}

/// The `reason` of refusals for what chat completions cannot express but OpenAI's Responses API
/// can: a backend that speaks that API natively may still serve the request.
pub(crate) const UNTRANSLATABLE: &str = "untranslatable";

/// Marks `e` as a refusal of the translation only (see [`UNTRANSLATABLE`]).
fn untranslatable(mut e: ApiError) -> ApiError {
    e.reason = UNTRANSLATABLE;
    e
}

fn unsupported(param: impl Into<String>, message: String) -> ApiError {
    untranslatable(
        ApiError::bad_request(Some(param.into()), message).with_code("unsupported_value"),
    )
}

fn hosted_tool(param: String, ty: &str) -> ApiError {
    unsupported(
        param.clone(),
        format!(
            "llmesh: {param} is OpenAI's built-in `{ty}` tool, which cannot be run by the chosen backend: \
             OpenAI runs built-in tools on its own servers, so only a backend that speaks the Responses API \
             natively (provider: openai) can serve this request, and the route's others get /v1/responses \
             translated into chat completions, which has nowhere to run them. Use a route with an OpenAI \
             backend, or declare a `function` tool and run it in your app"
        ),
    )
}

fn present(body: &Map<String, Value>, key: &str) -> Option<Value> {
    body.get(key).filter(|v| !v.is_null()).cloned()
}

/// Translates `body` into a chat body; `ids` name the response it will produce.
pub(super) fn translate(
    body: Map<String, Value>,
    store: &Store,
    ids: Ids,
) -> Result<(Map<String, Value>, Pending), ApiError> {
    refuse_unsupported(&body)?;

    let previous_id = match body.get("previous_response_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            return Err(invalid(
                "previous_response_id",
                "llmesh: previous_response_id must be a string (the id of an earlier response)"
                    .into(),
            ));
        }
    };
    let earlier: Vec<Arc<Value>> = match &previous_id {
        None => Vec::new(),
        Some(id) => match store.get(id) {
            Some(s) => s.conversation.clone(),
            None => {
                return Err(untranslatable(
                    invalid(
                        "previous_response_id",
                        format!(
                            "llmesh: previous response with id '{id}' not found. This sidecar can continue only responses it produced itself with store: true \
                             (or, on a backend that speaks the Responses API natively, responses OpenAI stored), \
                             and keeps them in memory for a bounded number and time (--responses-store-entries, --responses-store-ttl); \
                             send the whole conversation in `input` instead"
                        ),
                    )
                    .with_code("previous_response_not_found"),
                ));
            }
        },
    };

    let input = input_items(&body, store, earlier.is_empty())?;

    let mut messages: Vec<Value> = Vec::new();
    match body.get("instructions") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            if !s.is_empty() {
                messages.push(json!({"role": "system", "content": s}));
            }
        }
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                add_item(&mut messages, item, &format!("instructions[{i}]"))?;
            }
        }
        Some(_) => {
            return Err(invalid(
                "instructions",
                "llmesh: instructions must be a string".into(),
            ));
        }
    }
    for item in &earlier {
        add_item(&mut messages, item, "previous_response_id")?;
    }
    for (i, item) in &input {
        add_item(&mut messages, item, &format!("input[{i}]"))?;
    }

    let mut chat = Map::new();
    if let Some(m) = body.get("model") {
        chat.insert("model".into(), m.clone());
    }
    chat.insert("messages".into(), Value::Array(messages));

    let (tools, echo_tools) = tools(&body)?;
    let tools = match tool_choice(&body, tools)? {
        (tools, Some(choice)) => {
            chat.insert("tool_choice".into(), choice);
            tools
        }
        (tools, None) => tools,
    };
    let has_tools = !tools.is_empty();
    if has_tools {
        chat.insert("tools".into(), Value::Array(tools));
        // OpenAI's chat API accepts parallel_tool_calls only next to tools.
        if let Some(p) = present(&body, "parallel_tool_calls") {
            chat.insert("parallel_tool_calls".into(), p);
        }
    }
    let text = text_format(&body, &mut chat)?;
    if let Some(v) = present(&body, "max_output_tokens") {
        if v.as_u64().is_none_or(|n| n == 0) {
            return Err(invalid(
                "max_output_tokens",
                "llmesh: max_output_tokens must be a positive integer".into(),
            ));
        }
        chat.insert("max_completion_tokens".into(), v);
    }
    for key in ["temperature", "top_p"] {
        if let Some(v) = present(&body, key) {
            if !v.is_number() {
                return Err(invalid(key, format!("llmesh: {key} must be a number")));
            }
            chat.insert(key.into(), v);
        }
    }
    if let Some(u) = present(&body, "user") {
        chat.insert("user".into(), u);
    }
    if let Some(effort) = body
        .get("reasoning")
        .and_then(|r| r.get("effort"))
        .filter(|e| e.is_string())
    {
        chat.insert("reasoning_effort".into(), effort.clone());
    }
    if let Some(s) = present(&body, "stream") {
        chat.insert("stream".into(), s);
    }

    let keep = match body.get("store") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(invalid(
                "store",
                "llmesh: store must be true or false".into(),
            ));
        }
    };
    let metadata = match present(&body, "metadata") {
        None => json!({}),
        Some(m @ Value::Object(_)) => m,
        Some(_) => {
            return Err(invalid(
                "metadata",
                "llmesh: metadata must be an object of string values".into(),
            ));
        }
    };

    // The Response object's fields in OpenAI's order; `status`, `error`, `incomplete_details`,
    // `model`, `output` and `usage` are filled in when the answer arrives.
    let mut skeleton = Map::new();
    let mut put = |k: &str, v: Value| {
        skeleton.insert(k.to_string(), v);
    };
    put("id", json!(ids.response()));
    put("object", json!("response"));
    put("created_at", json!(ids.created_at));
    put("status", json!("in_progress"));
    put("background", json!(false));
    put("error", Value::Null);
    put("incomplete_details", Value::Null);
    put(
        "instructions",
        present(&body, "instructions").unwrap_or(Value::Null),
    );
    put(
        "max_output_tokens",
        present(&body, "max_output_tokens").unwrap_or(Value::Null),
    );
    put(
        "max_tool_calls",
        present(&body, "max_tool_calls").unwrap_or(Value::Null),
    );
    put("model", body.get("model").cloned().unwrap_or(json!("")));
    put("output", json!([]));
    put(
        "parallel_tool_calls",
        present(&body, "parallel_tool_calls").unwrap_or(json!(true)),
    );
    put(
        "previous_response_id",
        previous_id.map_or(Value::Null, Value::String),
    );
    put(
        "reasoning",
        present(&body, "reasoning").unwrap_or(json!({"effort": null, "summary": null})),
    );
    put(
        "service_tier",
        present(&body, "service_tier").unwrap_or(Value::Null),
    );
    put("store", json!(keep));
    put(
        "temperature",
        present(&body, "temperature").unwrap_or(Value::Null),
    );
    put("text", text);
    put(
        "tool_choice",
        present(&body, "tool_choice").unwrap_or(json!("auto")),
    );
    put("tools", Value::Array(echo_tools));
    put("top_p", present(&body, "top_p").unwrap_or(Value::Null));
    put(
        "truncation",
        present(&body, "truncation").unwrap_or(json!("disabled")),
    );
    put("usage", Value::Null);
    put("user", present(&body, "user").unwrap_or(Value::Null));
    put("metadata", metadata);

    // Ids only this sidecar knows must not reach a native backend: it would not find them.
    let local_state = !earlier.is_empty()
        || body
            .get("input")
            .and_then(Value::as_array)
            .is_some_and(|items| {
                items
                    .iter()
                    .any(|i| i.get("type").and_then(Value::as_str) == Some("item_reference"))
            });
    let mut conversation = earlier;
    conversation.extend(input.into_iter().map(|(_, item)| item));
    let pending = Pending {
        ids,
        skeleton,
        conversation,
        store: keep.then(|| store.clone()),
        local_state,
    };
    Ok((chat, pending))
}

/// Parameters that name OpenAI-side state or execution a gateway in front of other backends
/// cannot provide. Refused rather than ignored: ignoring them would change the answer silently.
fn refuse_unsupported(body: &Map<String, Value>) -> Result<(), ApiError> {
    let error = |key: &str, why: &str| {
        ApiError::bad_request(
            Some(key.to_string()),
            format!("llmesh: {key} is not supported on /v1/responses here: {why}"),
        )
        .with_code("unsupported_parameter")
    };
    let refuse =
        |key: &str, why: &str| -> Result<(), ApiError> { Err(untranslatable(error(key, why))) };
    if body.get("background").and_then(Value::as_bool) == Some(true) {
        // Not even natively: a background response is polled with GET /v1/responses/{id}, which
        // the sidecar answers from its own store only.
        return Err(error(
            "background",
            "the sidecar answers while the request is open; send it without background (stream it if it is long)",
        ));
    }
    if present(body, "conversation").is_some() {
        refuse(
            "conversation",
            "conversations are stored by OpenAI's Conversations API; continue with previous_response_id, or send the conversation in input",
        )?;
    }
    if present(body, "prompt").is_some() {
        refuse(
            "prompt",
            "prompt templates live in OpenAI's dashboard; send instructions and input instead",
        )?;
    }
    Ok(())
}

/// This request's input items with their index in `input`, `item_reference`s resolved, and
/// reasoning items dropped (they are OpenAI's encrypted model state, meaningless elsewhere).
fn input_items(
    body: &Map<String, Value>,
    store: &Store,
    required: bool,
) -> Result<Vec<(usize, Arc<Value>)>, ApiError> {
    match body.get("input") {
        Some(Value::String(s)) => Ok(vec![(0, Arc::new(json!({"role": "user", "content": s})))]),
        Some(Value::Array(items)) => {
            if items.is_empty() && required {
                return Err(invalid(
                    "input",
                    "llmesh: input is empty: send at least one message".into(),
                ));
            }
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                match item.get("type").and_then(Value::as_str) {
                    Some("reasoning") => {}
                    Some("item_reference") => out.push((i, Arc::new(referenced(item, store, i)?))),
                    _ => out.push((i, Arc::new(item.clone()))),
                }
            }
            Ok(out)
        }
        None | Some(Value::Null) if !required => Ok(Vec::new()),
        None | Some(Value::Null) => Err(invalid(
            "input",
            "llmesh: input is required: a string, or an array of input items (messages, function calls and their outputs)".into(),
        )),
        Some(_) => Err(invalid(
            "input",
            "llmesh: input must be a string or an array of input items".into(),
        )),
    }
}

/// The output item an `item_reference` names, from a stored response of this sidecar.
fn referenced(item: &Value, store: &Store, i: usize) -> Result<Value, ApiError> {
    let id = item.get("id").and_then(Value::as_str).unwrap_or_default();
    Ids::owner(id)
        .and_then(|(resp, index)| {
            let stored = store.get(&resp)?;
            stored
                .response
                .get("output")?
                .get(index)
                .filter(|o| o.get("id").and_then(Value::as_str) == Some(id))
                .cloned()
        })
        .ok_or_else(|| {
            untranslatable(invalid(
                format!("input[{i}].id"),
                format!(
                    "llmesh: input[{i}] refers to item '{id}', which this sidecar does not have: it resolves references only to output items of responses it produced and still stores \
                     (a backend that speaks the Responses API natively resolves OpenAI's own); send the item itself instead"
                ),
            ))
        })
}

/// Appends one input item to chat `messages`.
fn add_item(messages: &mut Vec<Value>, item: &Value, path: &str) -> Result<(), ApiError> {
    let Some(obj) = item.as_object() else {
        return Err(invalid(
            path,
            format!(
                "llmesh: {path} must be an object (a message, function_call or function_call_output item)"
            ),
        ));
    };
    match obj.get("type").and_then(Value::as_str) {
        None | Some("message") => message(messages, obj, path),
        Some("function_call") => {
            let field = |k: &str| {
                obj.get(k).and_then(Value::as_str).ok_or_else(|| {
                    invalid(
                        format!("{path}.{k}"),
                        format!("llmesh: {path} is a function_call without a string `{k}`"),
                    )
                })
            };
            let call = json!({
                "id": field("call_id")?,
                "type": "function",
                "function": {"name": field("name")?, "arguments": field("arguments")?},
            });
            // Calls that follow an assistant message belong to it: chat carries one assistant
            // turn as text plus tool_calls.
            if let Some(Value::Object(last)) = messages.last_mut()
                && last.get("role").and_then(Value::as_str) == Some("assistant")
            {
                match last.get_mut("tool_calls") {
                    Some(Value::Array(calls)) => calls.push(call),
                    _ => {
                        last.insert("tool_calls".into(), json!([call]));
                    }
                }
            } else {
                messages.push(json!({"role": "assistant", "content": null, "tool_calls": [call]}));
            }
            Ok(())
        }
        Some("function_call_output") => {
            let Some(call_id) = obj.get("call_id").and_then(Value::as_str) else {
                return Err(invalid(
                    format!("{path}.call_id"),
                    format!("llmesh: {path} is a function_call_output without a string `call_id`"),
                ));
            };
            let output = match obj.get("output") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => {
                    text_of(parts, &format!("{path}.output"), "a function_call_output")?
                }
                _ => {
                    return Err(invalid(
                        format!("{path}.output"),
                        format!("llmesh: {path}.output must be a string (the function's result)"),
                    ));
                }
            };
            messages.push(json!({"role": "tool", "tool_call_id": call_id, "content": output}));
            Ok(())
        }
        Some(other) => Err(unsupported(
            format!("{path}.type"),
            format!(
                "llmesh: {path} is a `{other}` item, which only OpenAI's built-in tools produce and only OpenAI's Responses API can replay; \
                 send messages, function_call and function_call_output items"
            ),
        )),
    }
}

fn message(
    messages: &mut Vec<Value>,
    obj: &Map<String, Value>,
    path: &str,
) -> Result<(), ApiError> {
    let role = obj.get("role").and_then(Value::as_str).ok_or_else(|| {
        invalid(
            format!("{path}.role"),
            format!("llmesh: {path} has no role: a message needs \"role\" (user, assistant, system or developer)"),
        )
    })?;
    let content = obj.get("content").ok_or_else(|| {
        invalid(
            format!("{path}.content"),
            format!("llmesh: {path} has no content"),
        )
    })?;
    let content_path = format!("{path}.content");
    let m = match role {
        "user" => json!({"role": "user", "content": user_content(content, &content_path)?}),
        // Every backend knows `system`; OpenAI treats it as `developer` for models that want that.
        "system" | "developer" => {
            json!({"role": "system", "content": text_content(content, &content_path, role)?})
        }
        "assistant" => {
            json!({"role": "assistant", "content": text_content(content, &content_path, role)?})
        }
        other => {
            return Err(invalid(
                format!("{path}.role"),
                format!(
                    "llmesh: {path} has role `{other}`: use user, assistant, system or developer (tool results are function_call_output items)"
                ),
            ));
        }
    };
    messages.push(m);
    Ok(())
}

/// A user message's content: a string, or chat content parts (text, images, files).
fn user_content(content: &Value, path: &str) -> Result<Value, ApiError> {
    let parts = match content {
        Value::String(_) => return Ok(content.clone()),
        Value::Array(parts) => parts,
        _ => {
            return Err(invalid(
                path,
                format!("llmesh: {path} must be a string or an array of content parts"),
            ));
        }
    };
    let mut out = Vec::with_capacity(parts.len());
    for (j, part) in parts.iter().enumerate() {
        let p = format!("{path}[{j}]");
        let ty = part.get("type").and_then(Value::as_str).unwrap_or_default();
        let field = |k: &str| part.get(k).and_then(Value::as_str);
        out.push(match ty {
            "input_text" | "output_text" | "text" => {
                json!({"type": "text", "text": field("text").unwrap_or_default()})
            }
            "input_image" => match field("image_url") {
                Some(url) => {
                    let mut image = json!({"url": url});
                    if let Some(d) = field("detail") {
                        image["detail"] = json!(d);
                    }
                    json!({"type": "image_url", "image_url": image})
                }
                None => {
                    return Err(unsupported(
                        format!("{p}.file_id"),
                        format!(
                            "llmesh: {p} is an input_image by file_id: files uploaded to OpenAI cannot be read by other backends; \
                             send the image as image_url (an https URL or a data: URL with base64 bytes)"
                        ),
                    ));
                }
            },
            "input_file" => match (field("file_data"), field("filename")) {
                (Some(data), name) => {
                    json!({"type": "file", "file": {"filename": name.unwrap_or("file"), "file_data": data}})
                }
                _ => {
                    return Err(unsupported(
                        p.clone(),
                        format!(
                            "llmesh: {p} is an input_file by file_id or file_url, which only OpenAI can fetch; \
                             send the file inline as file_data (a data: URL with base64 bytes) with a filename"
                        ),
                    ));
                }
            },
            other => {
                return Err(unsupported(
                    format!("{p}.type"),
                    format!("llmesh: {p} has type `{other}`: user content parts are input_text, input_image and input_file"),
                ));
            }
        });
    }
    Ok(Value::Array(out))
}

/// System and assistant content as one string: every backend takes a string there, and only
/// user messages carry images.
fn text_content(content: &Value, path: &str, role: &str) -> Result<String, ApiError> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => text_of(parts, path, &format!("a {role} message")),
        _ => Err(invalid(
            path,
            format!("llmesh: {path} must be a string or an array of content parts"),
        )),
    }
}

fn text_of(parts: &[Value], path: &str, what: &str) -> Result<String, ApiError> {
    let mut text = String::new();
    for (j, part) in parts.iter().enumerate() {
        let ty = part.get("type").and_then(Value::as_str).unwrap_or_default();
        let key = match ty {
            "input_text" | "output_text" | "text" => "text",
            "refusal" => "refusal",
            other => {
                return Err(unsupported(
                    format!("{path}[{j}].type"),
                    format!(
                        "llmesh: {path}[{j}] has type `{other}`: {what} can hold only text here (images go in user messages)"
                    ),
                ));
            }
        };
        text.push_str(part.get(key).and_then(Value::as_str).unwrap_or_default());
    }
    Ok(text)
}

/// Chat tools for the request's function tools, and the tools as the Response echoes them.
fn tools(body: &Map<String, Value>) -> Result<(Vec<Value>, Vec<Value>), ApiError> {
    let list = match body.get("tools") {
        None | Some(Value::Null) => return Ok((Vec::new(), Vec::new())),
        Some(Value::Array(list)) => list,
        Some(_) => {
            return Err(invalid("tools", "llmesh: tools must be an array".into()));
        }
    };
    let mut chat = Vec::with_capacity(list.len());
    let mut echo = Vec::with_capacity(list.len());
    for (i, t) in list.iter().enumerate() {
        let ty = t.get("type").and_then(Value::as_str).unwrap_or_default();
        if ty != "function" {
            if HOSTED_TOOLS.contains(&ty) {
                return Err(hosted_tool(format!("tools[{i}]"), ty));
            }
            return Err(unsupported(
                format!("tools[{i}].type"),
                format!(
                    "llmesh: tools[{i}] has type `{ty}`: only `function` tools can be served by every backend on /v1/responses"
                ),
            ));
        }
        let Some(name) = t.get("name").and_then(Value::as_str) else {
            return Err(invalid(
                format!("tools[{i}].name"),
                format!(
                    "llmesh: tools[{i}] has no name: function tools are {{\"type\": \"function\", \"name\", \"description\", \"parameters\"}}"
                ),
            ));
        };
        let mut f = Map::new();
        f.insert("name".into(), json!(name));
        for key in ["description", "parameters", "strict"] {
            if let Some(v) = t.get(key).filter(|v| !v.is_null()) {
                f.insert(key.into(), v.clone());
            }
        }
        chat.push(json!({"type": "function", "function": f}));
        echo.push(json!({
            "type": "function",
            "name": name,
            "description": t.get("description").cloned().unwrap_or(Value::Null),
            "parameters": t.get("parameters").cloned().unwrap_or(Value::Null),
            "strict": t.get("strict").cloned().unwrap_or(Value::Null),
        }));
    }
    Ok((chat, echo))
}

fn tool_name(tool: &Value) -> Option<&str> {
    tool.pointer("/function/name").and_then(Value::as_str)
}

/// The chat `tool_choice` (and the tools it leaves). `allowed_tools` narrows the tool list
/// itself, which every backend understands.
fn tool_choice(
    body: &Map<String, Value>,
    tools: Vec<Value>,
) -> Result<(Vec<Value>, Option<Value>), ApiError> {
    let choice = match body.get("tool_choice") {
        None | Some(Value::Null) => return Ok((tools, None)),
        Some(c) => c,
    };
    let bad = || {
        invalid(
            "tool_choice",
            "llmesh: tool_choice must be \"auto\", \"none\", \"required\", {\"type\": \"function\", \"name\"} or {\"type\": \"allowed_tools\", \"mode\", \"tools\"}".into(),
        )
    };
    match choice {
        Value::String(s) if matches!(s.as_str(), "auto" | "none" | "required") => {
            Ok((tools, Some(choice.clone())))
        }
        Value::Object(o) => match o.get("type").and_then(Value::as_str).unwrap_or_default() {
            "function" => {
                let name = o.get("name").and_then(Value::as_str).ok_or_else(bad)?;
                if !tools.iter().any(|t| tool_name(t) == Some(name)) {
                    return Err(invalid(
                        "tool_choice.name",
                        format!(
                            "llmesh: tool_choice names the function `{name}`, which is not in tools"
                        ),
                    ));
                }
                Ok((
                    tools,
                    Some(json!({"type": "function", "function": {"name": name}})),
                ))
            }
            "allowed_tools" => {
                let mode = match o.get("mode").and_then(Value::as_str) {
                    Some(m @ ("auto" | "required")) => m,
                    _ => return Err(bad()),
                };
                let mut names = Vec::new();
                for (i, t) in o
                    .get("tools")
                    .and_then(Value::as_array)
                    .ok_or_else(bad)?
                    .iter()
                    .enumerate()
                {
                    let ty = t.get("type").and_then(Value::as_str).unwrap_or_default();
                    match (ty, t.get("name").and_then(Value::as_str)) {
                        ("function", Some(n)) => names.push(n),
                        _ if HOSTED_TOOLS.contains(&ty) => {
                            return Err(hosted_tool(format!("tool_choice.tools[{i}]"), ty));
                        }
                        _ => return Err(bad()),
                    }
                }
                let tools = tools
                    .into_iter()
                    .filter(|t| tool_name(t).is_some_and(|n| names.contains(&n)))
                    .collect();
                Ok((tools, Some(json!(mode))))
            }
            ty if HOSTED_TOOLS.contains(&ty) => Err(hosted_tool("tool_choice".into(), ty)),
            _ => Err(bad()),
        },
        _ => Err(bad()),
    }
}

/// `text.format` as chat `response_format`; returns `text` as the Response echoes it.
fn text_format(
    body: &Map<String, Value>,
    chat: &mut Map<String, Value>,
) -> Result<Value, ApiError> {
    let mut text = match body.get("text") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(t)) => t.clone(),
        Some(_) => {
            return Err(invalid(
                "text",
                "llmesh: text must be an object like {\"format\": {\"type\": \"json_schema\", ...}}".into(),
            ));
        }
    };
    let format = match text.get("format") {
        None | Some(Value::Null) => {
            text.insert("format".into(), json!({"type": "text"}));
            return Ok(Value::Object(text));
        }
        Some(f) => f,
    };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => {}
        Some("json_object") => {
            chat.insert("response_format".into(), json!({"type": "json_object"}));
        }
        Some("json_schema") => {
            let Some(name) = format.get("name").and_then(Value::as_str) else {
                return Err(invalid(
                    "text.format.name",
                    "llmesh: text.format of type json_schema needs a name".into(),
                ));
            };
            let Some(schema @ Value::Object(_)) = format.get("schema") else {
                return Err(invalid(
                    "text.format.schema",
                    "llmesh: text.format of type json_schema needs a schema (a JSON Schema object)"
                        .into(),
                ));
            };
            let mut js = Map::new();
            js.insert("name".into(), json!(name));
            if let Some(d) = format.get("description").filter(|d| !d.is_null()) {
                js.insert("description".into(), d.clone());
            }
            js.insert("schema".into(), schema.clone());
            if let Some(s) = format.get("strict").filter(|s| !s.is_null()) {
                js.insert("strict".into(), s.clone());
            }
            chat.insert(
                "response_format".into(),
                json!({"type": "json_schema", "json_schema": js}),
            );
        }
        _ => {
            return Err(invalid(
                "text.format.type",
                "llmesh: text.format.type must be text, json_object or json_schema".into(),
            ));
        }
    }
    Ok(Value::Object(text))
}
