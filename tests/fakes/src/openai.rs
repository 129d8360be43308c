//! OpenAI's wire format, as its API reference describes it: chat completions (JSON and
//! `chat.completion.chunk` server-sent events ending in `data: [DONE]`, with the usage-only chunk
//! of `stream_options.include_usage`), legacy completions, embeddings (float or base64), models,
//! and errors as `{"error": {"message", "type", "param", "code"}}` with `x-request-id` and, on
//! 429, `retry-after` / `retry-after-ms`.
//!
//! Azure OpenAI's URL shape is served too: `/openai/deployments/{deployment}/chat/completions?
//! api-version=...` with the `api-key` header, its content-filter annotations, and its error
//! wording where it differs.
//!
//! Chat completions refuse what OpenAI refuses about the completion-token limit, with its error
//! body: `max_tokens` and `max_completion_tokens` together, a value that is not an integer or is
//! below 1, and one above the model's output limit ([`crate::limits`]).

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use serde_json::{Value, json};

use crate::content::{
    self, End, base64, embedding, estimate_tokens, now_unix, pieces, reply_words,
};
use crate::dialect::{Ctx, Dialect, Endpoint, Failure, Op, Reply};

/// The OpenAI dialect (and Azure OpenAI's URL shape).
pub struct OpenAi;

const AZURE: &str = "azure";
const OPENAI: &str = "openai";

/// Models `/v1/models` lists.
const MODELS: &[(&str, u64)] = &[
    ("gpt-4o-mini", 1_721_172_741),
    ("gpt-4o", 1_715_367_049),
    ("gpt-4.1-nano", 1_744_321_707),
    ("gpt-3.5-turbo-instruct", 1_692_901_427),
    ("text-embedding-3-small", 1_705_948_997),
    ("text-embedding-3-large", 1_705_953_180),
];

/// The context window quoted by `context-length`.
const CONTEXT_WINDOW: u64 = 128_000;

fn error_body(message: &str, kind: &str, param: Option<&str>, code: Option<&str>) -> Bytes {
    Bytes::from(
        json!({"error": {"message": message, "type": kind, "param": param, "code": code}})
            .to_string(),
    )
}

fn error(
    status: StatusCode,
    message: &str,
    kind: &str,
    param: Option<&str>,
    code: Option<&str>,
) -> Reply {
    Reply::json(status, error_body(message, kind, param, code))
}

/// Azure's own error shape: `{"error": {"code": "401", "message": ...}}`.
fn azure_error(status: StatusCode, message: &str) -> Reply {
    Reply::json(
        status,
        json!({"error": {"code": status.as_str(), "message": message}}).to_string(),
    )
}

/// Cloudflare's HTML page, which is what OpenAI's edge returns for 502 and 504.
fn cloudflare(status: StatusCode) -> Reply {
    let line = format!(
        "{} {}",
        status.as_str(),
        if status == StatusCode::BAD_GATEWAY {
            "Bad Gateway"
        } else {
            "Gateway Time-out"
        }
    );
    Reply {
        status,
        content_type: "text/html",
        headers: vec![("server", "cloudflare".into())],
        parts: vec![Bytes::from(format!(
            "<html>\r\n<head><title>{line}</title></head>\r\n<body>\r\n<center><h1>{line}</h1></center>\r\n<hr><center>cloudflare</center>\r\n</body>\r\n</html>\r\n"
        ))],
    }
}

fn event(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

const DONE: &[u8] = b"data: [DONE]\n\n";

/// Azure's content-filter verdicts, all clear.
fn filter_results() -> Value {
    let safe = json!({"filtered": false, "severity": "safe"});
    json!({"hate": safe, "self_harm": safe, "sexual": safe, "violence": safe})
}

fn prompt_filter_results() -> Value {
    json!([{"prompt_index": 0, "content_filter_results": filter_results()}])
}

/// Text of a message's `content`: a string, or the text parts of an array.
fn text_of(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        Some(v @ Value::Object(_)) => v.to_string(),
        _ => String::new(),
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `"key":true` or `"key": true`, without parsing the body.
pub(crate) fn flag(body: &[u8], key: &[u8]) -> bool {
    find(body, key).is_some_and(|i| {
        let rest = &body[i + key.len()..];
        let rest = rest.strip_prefix(b":").unwrap_or(rest);
        let rest = rest.strip_prefix(b" ").unwrap_or(rest);
        rest.starts_with(b"true")
    })
}

/// The `"model"` value, without parsing the body.
fn model_of(body: &[u8]) -> &str {
    let Some(i) = find(body, b"\"model\"") else {
        return "gpt-4o-mini";
    };
    let rest = &body[i + 7..];
    let Some(q) = rest.iter().position(|&b| b == b'"') else {
        return "gpt-4o-mini";
    };
    let rest = &rest[q + 1..];
    let end = rest.iter().position(|&b| b == b'"').unwrap_or(0);
    std::str::from_utf8(&rest[..end])
        .ok()
        .filter(|m| !m.is_empty() && !m.contains('\\'))
        .unwrap_or("gpt-4o-mini")
}

/// What one choice says.
enum Said {
    Text {
        pieces: Vec<String>,
        finish: &'static str,
    },
    Tool {
        name: String,
        args: String,
    },
}

impl Said {
    fn tokens(&self) -> u64 {
        match self {
            Said::Text { pieces, .. } => pieces.len() as u64,
            Said::Tool { name, args } => estimate_tokens(name.len() + args.len()),
        }
    }
}

fn max_tokens(body: &Value) -> Option<usize> {
    body.get("max_completion_tokens")
        .or(body.get("max_tokens"))
        .and_then(Value::as_u64)
        .map(|n| n as usize)
}

fn stops(body: &Value) -> Vec<String> {
    match body.get("stop") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(String::from)
            .collect(),
        _ => Vec::new(),
    }
}

/// Applies `stop` sequences and the token limit to reply pieces (one piece ~ one token).
fn limit(ps: Vec<String>, stop: &[String], max: Option<usize>) -> (Vec<String>, &'static str) {
    match content::cut(ps, stop, max) {
        (ps, End::Length) => (ps, "length"),
        (ps, _) => (ps, "stop"),
    }
}

fn chat_said(body: &Value, words: Option<usize>) -> Said {
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let last = messages.last();
    let last_role = last.and_then(|m| m.get("role")).and_then(Value::as_str);
    let tools = body
        .get("tools")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let choice = body.get("tool_choice");
    if !tools.is_empty()
        && last_role != Some("tool")
        && choice.and_then(Value::as_str) != Some("none")
    {
        let forced = choice
            .and_then(|c| c.pointer("/function/name"))
            .and_then(Value::as_str);
        let tool = tools
            .iter()
            .find(|t| forced.is_none_or(|f| t.pointer("/function/name") == Some(&json!(f))))
            .unwrap_or(&tools[0]);
        return Said::Tool {
            name: tool
                .pointer("/function/name")
                .and_then(Value::as_str)
                .unwrap_or("tool")
                .to_string(),
            args: tool
                .pointer("/function/parameters")
                .map_or(json!({}), content::sample)
                .to_string(),
        };
    }
    let structured =
        body.get("response_format")
            .and_then(|rf| match rf.get("type").and_then(Value::as_str) {
                Some("json_schema") => Some(
                    rf.pointer("/json_schema/schema")
                        .map_or(json!({}), content::sample),
                ),
                Some("json_object") => Some(json!({"answer": "fake"})),
                _ => None,
            });
    let ps = if let Some(v) = structured {
        content::json_pieces(&v)
    } else if last_role == Some("tool") {
        content::tool_result_pieces(&text_of(last.and_then(|m| m.get("content"))))
    } else {
        let user = messages
            .iter()
            .rev()
            .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
            .map(|m| text_of(m.get("content")))
            .unwrap_or_default();
        pieces(&reply_words(&user, words))
    };
    let (ps, finish) = limit(ps, &stops(body), max_tokens(body));
    Said::Text { pieces: ps, finish }
}

fn usage(prompt: u64, completion: u64, chat: bool) -> Value {
    if chat {
        json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
               "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
               "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                   "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}})
    } else {
        json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
    }
}

fn wants_usage(body: &Value) -> bool {
    body.pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        == Some(true)
}

fn n_of(body: &Value) -> u64 {
    body.get("n")
        .and_then(Value::as_u64)
        .unwrap_or(1)
        .clamp(1, 8)
}

fn model(ep: &Endpoint, body: &Value) -> String {
    if ep.flavor == AZURE {
        // Azure answers with the deployment's underlying model name.
        return "gpt-4o-mini-2024-07-18".into();
    }
    body.get("model")
        .and_then(Value::as_str)
        .unwrap_or("gpt-4o-mini")
        .to_string()
}

/// The API's refusals of the completion-token limit: `max_tokens` and `max_completion_tokens`
/// together, a value that is not an integer or is below 1, or one above what the model can write
/// ([`crate::limits`]; a model the fake does not know takes any value).
fn check_max_tokens(model: &str, body: &Value) -> Option<Reply> {
    let bad = |message: &str, param: &str, code: Option<&str>| {
        Some(error(
            StatusCode::BAD_REQUEST,
            message,
            "invalid_request_error",
            Some(param),
            code,
        ))
    };
    let given: Vec<(&str, &Value)> = ["max_tokens", "max_completion_tokens"]
        .into_iter()
        .filter_map(|k| body.get(k).filter(|v| !v.is_null()).map(|v| (k, v)))
        .collect();
    if given.len() == 2 {
        return bad(
            "Setting 'max_tokens' and 'max_completion_tokens' at the same time is not supported.",
            "max_tokens",
            Some("invalid_parameter_combination"),
        );
    }
    let &(param, v) = given.first()?;
    let n = match v {
        Value::Number(n) if n.is_i64() || n.is_u64() => n.as_i64().unwrap_or(i64::MAX),
        other => {
            let got = match other {
                Value::Number(_) => "a decimal number",
                Value::String(_) => "a string",
                Value::Bool(_) => "a boolean",
                Value::Array(_) => "an array",
                _ => "an object",
            };
            return bad(
                &format!("Invalid type for '{param}': expected an integer, but got {got} instead."),
                param,
                Some("invalid_type"),
            );
        }
    };
    if n < 1 {
        return bad(
            &format!(
                "Invalid '{param}': integer below minimum value. Expected a value >= 1, but got {n} instead."
            ),
            param,
            Some("integer_below_min_value"),
        );
    }
    let limit = crate::limits::max_output_tokens(model)?;
    if n as u64 > limit {
        // OpenAI's wording for `max_tokens`; the same sentence names `max_completion_tokens`.
        return bad(
            &format!(
                "{param} is too large: {n}. This model supports at most {limit} completion tokens, whereas you provided {n}."
            ),
            param,
            None,
        );
    }
    None
}

fn chat(ep: &Endpoint, body: &Value, ctx: &Ctx<'_>) -> Reply {
    if ep.flavor == OPENAI && body.get("model").and_then(Value::as_str).is_none() {
        return error(
            StatusCode::BAD_REQUEST,
            "you must provide a model parameter",
            "invalid_request_error",
            None,
            None,
        );
    }
    let messages = match body.get("messages") {
        Some(Value::Array(m)) if !m.is_empty() => m,
        Some(Value::Array(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.",
                "invalid_request_error",
                Some("messages"),
                Some("empty_array"),
            );
        }
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "Missing required parameter: 'messages'.",
                "invalid_request_error",
                Some("messages"),
                Some("missing_required_parameter"),
            );
        }
    };
    let model = model(ep, body);
    if ep.flavor == OPENAI
        && let Some(refused) = check_max_tokens(&model, body)
    {
        return refused;
    }
    let id = content::id("chatcmpl-", ctx.seq);
    let created = now_unix();
    let n = n_of(body);
    let said = chat_said(body, ctx.options.words);
    let prompt = estimate_tokens(Value::Array(messages.clone()).to_string().len());
    let completion = said.tokens() * n;
    let azure = ep.flavor == AZURE;

    if !ctx.stream {
        let choices: Vec<Value> = (0..n)
            .map(|i| {
                let (message, finish) = match &said {
                    Said::Text { pieces, finish } => (
                        json!({"role": "assistant", "content": pieces.concat(), "refusal": null, "annotations": []}),
                        *finish,
                    ),
                    Said::Tool { name, args } => (
                        json!({"role": "assistant", "content": null, "refusal": null, "annotations": [],
                               "tool_calls": [{"id": content::id("call_", ctx.seq * 8 + i), "type": "function",
                                               "function": {"name": name, "arguments": args}}]}),
                        "tool_calls",
                    ),
                };
                let mut c = json!({"index": i, "message": message, "logprobs": null, "finish_reason": finish});
                if azure {
                    c["content_filter_results"] = filter_results();
                }
                c
            })
            .collect();
        let mut v = json!({"id": id, "object": "chat.completion", "created": created, "model": model,
                           "choices": choices, "usage": usage(prompt, completion, true),
                           "service_tier": "default", "system_fingerprint": "fp_fake"});
        if azure {
            v["prompt_filter_results"] = prompt_filter_results();
        }
        return Reply::json(StatusCode::OK, v.to_string());
    }

    let include_usage = wants_usage(body);
    let mut out = Vec::new();
    if azure {
        // Azure's first event carries only the prompt's filter verdicts, with empty fields.
        out.push(event(
            &json!({"choices": [], "created": 0, "id": "", "model": "", "object": "",
                               "prompt_filter_results": prompt_filter_results()}),
        ));
    }
    let chunk = |choices: Value| {
        let mut c = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                           "service_tier": "default", "system_fingerprint": "fp_fake", "choices": choices});
        if include_usage {
            c["usage"] = Value::Null;
        }
        event(&c)
    };
    let delta = |i: u64, d: Value, finish: Option<&str>| json!([{"index": i, "delta": d, "logprobs": null, "finish_reason": finish}]);
    for i in 0..n {
        out.push(chunk(delta(
            i,
            json!({"role": "assistant", "content": "", "refusal": null}),
            None,
        )));
        let finish = match &said {
            Said::Text { pieces, finish } => {
                for p in pieces {
                    out.push(chunk(delta(i, json!({"content": p}), None)));
                }
                *finish
            }
            Said::Tool { name, args } => {
                out.push(chunk(delta(
                    i,
                    json!({"tool_calls": [{"index": 0, "id": content::id("call_", ctx.seq * 8 + i),
                                           "type": "function", "function": {"name": name, "arguments": ""}}]}),
                    None,
                )));
                let chars: Vec<char> = args.chars().collect();
                for piece in chars.chunks(12) {
                    let piece: String = piece.iter().collect();
                    out.push(chunk(delta(
                        i,
                        json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}),
                        None,
                    )));
                }
                "tool_calls"
            }
        };
        out.push(chunk(delta(i, json!({}), Some(finish))));
    }
    if include_usage {
        out.push(event(&json!({"id": id, "object": "chat.completion.chunk", "created": created,
                               "model": model, "service_tier": "default", "system_fingerprint": "fp_fake",
                               "choices": [], "usage": usage(prompt, completion, true)})));
    }
    out.push(Bytes::from_static(DONE));
    Reply::events(out)
}

/// The prompts of a legacy completion: a string, strings, tokens, or lists of tokens.
fn prompts(body: &Value) -> Vec<String> {
    match body.get("prompt") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) if a.iter().all(Value::is_number) => {
            vec![Value::Array(a.clone()).to_string()]
        }
        Some(Value::Array(a)) => a
            .iter()
            .map(|p| p.as_str().map_or_else(|| p.to_string(), String::from))
            .collect(),
        // The API's default prompt is the end-of-text token.
        _ => vec!["<|endoftext|>".into()],
    }
}

fn completion(ep: &Endpoint, body: &Value, ctx: &Ctx<'_>) -> Reply {
    let model = model(ep, body);
    let id = content::id("cmpl-", ctx.seq);
    let created = now_unix();
    let n = n_of(body);
    let echo = body.get("echo").and_then(Value::as_bool) == Some(true);
    // Legacy completions stop at 16 tokens unless told otherwise.
    let max = max_tokens(body).or(Some(16));
    let stop = stops(body);
    let ps: Vec<String> = prompts(body);
    let texts: Vec<(Vec<String>, &str)> = ps
        .iter()
        .map(|p| limit(pieces(&reply_words(p, ctx.options.words)), &stop, max))
        .collect();
    let prompt_tokens: u64 = ps.iter().map(|p| estimate_tokens(p.len())).sum();
    let completion_tokens: u64 = texts.iter().map(|(t, _)| t.len() as u64).sum::<u64>() * n;
    let choice_iter = || {
        texts
            .iter()
            .zip(&ps)
            .flat_map(|(t, p)| (0..n).map(move |_| (t, p)))
            .enumerate()
    };
    if !ctx.stream {
        let choices: Vec<Value> = choice_iter()
            .map(|(i, ((pieces, finish), prompt))| {
                let text = if echo {
                    format!("{prompt}{}", pieces.concat())
                } else {
                    pieces.concat()
                };
                json!({"text": text, "index": i, "logprobs": null, "finish_reason": finish})
            })
            .collect();
        let v = json!({"id": id, "object": "text_completion", "created": created, "model": model,
                       "system_fingerprint": "fp_fake", "choices": choices,
                       "usage": usage(prompt_tokens, completion_tokens, false)});
        return Reply::json(StatusCode::OK, v.to_string());
    }
    let include_usage = wants_usage(body);
    let chunk = |choices: Value| {
        let mut c = json!({"id": id, "object": "text_completion", "created": created,
                           "choices": choices, "model": model, "system_fingerprint": "fp_fake"});
        if include_usage {
            c["usage"] = Value::Null;
        }
        event(&c)
    };
    let mut out = Vec::new();
    for (i, ((pieces, finish), prompt)) in choice_iter() {
        if echo {
            out.push(chunk(
                json!([{"text": prompt, "index": i, "logprobs": null, "finish_reason": null}]),
            ));
        }
        for p in pieces {
            out.push(chunk(
                json!([{"text": p, "index": i, "logprobs": null, "finish_reason": null}]),
            ));
        }
        out.push(chunk(
            json!([{"text": "", "index": i, "logprobs": null, "finish_reason": finish}]),
        ));
    }
    if include_usage {
        out.push(event(
            &json!({"id": id, "object": "text_completion", "created": created,
                               "model": model, "system_fingerprint": "fp_fake", "choices": [],
                               "usage": usage(prompt_tokens, completion_tokens, false)}),
        ));
    }
    out.push(Bytes::from_static(DONE));
    Reply::events(out)
}

fn embeddings(ep: &Endpoint, body: &Value) -> Reply {
    let inputs: Vec<String> = match body.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) if a.iter().all(Value::is_number) => {
            vec![Value::Array(a.clone()).to_string()]
        }
        Some(Value::Array(a)) if !a.is_empty() => a
            .iter()
            .map(|i| i.as_str().map_or_else(|| i.to_string(), String::from))
            .collect(),
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "'input' is a required property",
                "invalid_request_error",
                Some("input"),
                None,
            );
        }
    };
    let model = model(ep, body);
    let dims = body
        .get("dimensions")
        .and_then(Value::as_u64)
        .map(|d| d.clamp(1, 8192) as usize)
        .unwrap_or(if model.contains("large") { 3072 } else { 1536 });
    let b64 = body.get("encoding_format").and_then(Value::as_str) == Some("base64");
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let v = embedding(text, dims);
            let e = if b64 {
                let bytes: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
                Value::String(base64(&bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": e})
        })
        .collect();
    let tokens: u64 = inputs.iter().map(|t| estimate_tokens(t.len())).sum();
    Reply::json(
        StatusCode::OK,
        json!({"object": "list", "data": data, "model": model,
               "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})
        .to_string(),
    )
}

fn model_object(id: &str, created: u64) -> Value {
    json!({"id": id, "object": "model", "created": created, "owned_by": "system"})
}

fn models(ep: &Endpoint) -> Reply {
    if ep.op == Op::GetModel {
        let id = ep.path_model.as_deref().unwrap_or_default();
        return match MODELS.iter().find(|(m, _)| *m == id) {
            Some((m, c)) => Reply::json(StatusCode::OK, model_object(m, *c).to_string()),
            None => error(
                StatusCode::NOT_FOUND,
                &format!("The model `{id}` does not exist or you do not have access to it."),
                "invalid_request_error",
                None,
                Some("model_not_found"),
            ),
        };
    }
    let data: Vec<Value> = MODELS.iter().map(|(m, c)| model_object(m, *c)).collect();
    Reply::json(
        StatusCode::OK,
        json!({"object": "list", "data": data}).to_string(),
    )
}

/// Masks a key the way OpenAI's 401 message does: a few characters each side.
fn masked(key: &str) -> String {
    if key.len() > 12 {
        format!("{}****{}", &key[..4], &key[key.len() - 4..])
    } else {
        "****".into()
    }
}

fn with_common(r: Reply, seq: u64) -> Reply {
    r.header("x-request-id", content::request_id(seq))
        .header("openai-version", "2020-10-01")
        .header("openai-processing-ms", "1")
}

impl Dialect for OpenAi {
    fn name(&self) -> &'static str {
        OPENAI
    }

    fn route(&self, method: &Method, path: &str, _query: Option<&str>) -> Option<Endpoint> {
        let ep = |op, flavor, path_model: Option<&str>| {
            Some(Endpoint {
                op,
                flavor,
                path_model: path_model.map(String::from),
            })
        };
        if let Some(rest) = path.strip_prefix("/openai/deployments/") {
            let (deployment, op) = rest.split_once('/')?;
            if method != Method::POST || deployment.is_empty() {
                return None;
            }
            let op = match op {
                "chat/completions" => Op::Chat,
                "completions" => Op::Completion,
                "embeddings" => Op::Embedding,
                _ => return None,
            };
            return ep(op, AZURE, Some(deployment));
        }
        let p = match path.strip_prefix("/v1") {
            Some(rest) if rest.starts_with('/') => rest,
            _ => path,
        };
        match (method, p) {
            (&Method::POST, "/chat/completions") => ep(Op::Chat, OPENAI, None),
            (&Method::POST, "/completions") => ep(Op::Completion, OPENAI, None),
            (&Method::POST, "/embeddings") => ep(Op::Embedding, OPENAI, None),
            (&Method::POST, "/responses") => ep(Op::Responses, OPENAI, None),
            (&Method::GET, "/models") => ep(Op::ListModels, OPENAI, None),
            (&Method::GET, m) if m.starts_with("/models/") && m.len() > 8 => {
                ep(Op::GetModel, OPENAI, Some(&m[8..]))
            }
            _ => None,
        }
    }

    fn is_stream(&self, ep: &Endpoint, body: &Value) -> bool {
        matches!(ep.op, Op::Chat | Op::Completion | Op::Responses)
            && body.get("stream").and_then(Value::as_bool) == Some(true)
    }

    fn check(&self, ep: &Endpoint, headers: &HeaderMap, query: Option<&str>) -> Option<Reply> {
        if ep.flavor != AZURE {
            return None;
        }
        let has_version = query
            .unwrap_or_default()
            .split('&')
            .any(|kv| kv.starts_with("api-version=") && kv.len() > 12);
        if !has_version {
            return Some(azure_error(StatusCode::NOT_FOUND, "Resource not found"));
        }
        if !headers.contains_key("api-key") && !headers.contains_key("authorization") {
            return Some(azure_error(
                StatusCode::UNAUTHORIZED,
                "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an active subscription and use a correct regional API endpoint for your resource.",
            ));
        }
        None
    }

    fn answer(&self, ep: &Endpoint, body: &Value, ctx: &Ctx<'_>) -> Reply {
        let r = match ep.op {
            Op::Chat => chat(ep, body, ctx),
            Op::Completion => completion(ep, body, ctx),
            Op::Embedding => embeddings(ep, body),
            Op::Responses => responses::answer(body, ctx),
            _ => models(ep),
        };
        with_common(r, ctx.seq)
            .header("x-ratelimit-limit-requests", "10000")
            .header("x-ratelimit-remaining-requests", "9999")
            .header("x-ratelimit-reset-requests", "6ms")
    }

    fn failure(&self, ep: &Endpoint, failure: Failure, ctx: &Ctx<'_>) -> Reply {
        let azure = ep.flavor == AZURE;
        let retry = |r: Reply| match ctx.options.retry_after {
            Some(d) => r
                .header("retry-after", d.as_secs_f64().ceil().max(0.0).to_string())
                .header("retry-after-ms", d.as_millis().to_string()),
            None => r,
        };
        let r = match failure {
            Failure::Status(401) if azure => azure_error(
                StatusCode::UNAUTHORIZED,
                "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an active subscription and use a correct regional API endpoint for your resource.",
            ),
            Failure::Status(401) => {
                match ctx
                    .headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                {
                    Some(key) => error(
                        StatusCode::UNAUTHORIZED,
                        &format!(
                            "Incorrect API key provided: {}. You can find your API key at https://platform.openai.com/account/api-keys.",
                            masked(key)
                        ),
                        "invalid_request_error",
                        None,
                        Some("invalid_api_key"),
                    ),
                    None => error(
                        StatusCode::UNAUTHORIZED,
                        "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with blank username) if you're accessing the API from your browser and are prompted for a username and password. You can obtain an API key from https://platform.openai.com/account/api-keys.",
                        "invalid_request_error",
                        None,
                        None,
                    ),
                }
            }
            Failure::Status(429) => {
                let secs = ctx.options.retry_after.map_or(1.0, |d| d.as_secs_f64());
                let r = if azure {
                    azure_error(
                        StatusCode::TOO_MANY_REQUESTS,
                        &format!(
                            "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-10-21 have exceeded call rate limit of your current OpenAI S0 pricing tier. Please retry after {} seconds.",
                            secs.ceil()
                        ),
                    )
                } else {
                    error(
                        StatusCode::TOO_MANY_REQUESTS,
                        &format!(
                            "Rate limit reached for gpt-4o-mini in organization org-fake on requests per min (RPM): Limit 3, Used 3, Requested 1. Please try again in {secs}s. Visit https://platform.openai.com/account/rate-limits to learn more."
                        ),
                        "requests",
                        None,
                        Some("rate_limit_exceeded"),
                    )
                };
                retry(r)
                    .header("x-ratelimit-limit-requests", "3")
                    .header("x-ratelimit-remaining-requests", "0")
                    .header("x-ratelimit-reset-requests", format!("{secs}s"))
            }
            Failure::Status(s @ (502 | 504)) => {
                cloudflare(StatusCode::from_u16(s).unwrap_or(StatusCode::BAD_GATEWAY))
            }
            Failure::Status(503) => retry(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "The engine is currently overloaded, please try again later.",
                "server_error",
                None,
                None,
            )),
            Failure::Status(s) => error(
                StatusCode::from_u16(s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                "The server had an error while processing your request. Sorry about that!",
                "server_error",
                None,
                None,
            ),
            Failure::ContextLength if ep.op == Op::Responses => error(
                StatusCode::BAD_REQUEST,
                "Your input exceeds the context window of this model. Please adjust your input and try again.",
                "invalid_request_error",
                Some("input"),
                Some("context_length_exceeded"),
            ),
            Failure::Safety if ep.op == Op::Responses => responses::content_filtered(ctx),
            Failure::Malformed if ep.op == Op::Responses => responses::malformed(ctx),
            Failure::ContextLength => {
                let (param, what) = match ep.op {
                    Op::Completion => ("prompt", "prompt"),
                    Op::Embedding => ("input", "input"),
                    _ => ("messages", "messages"),
                };
                error(
                    StatusCode::BAD_REQUEST,
                    &format!(
                        "This model's maximum context length is {CONTEXT_WINDOW} tokens. However, your {what} resulted in {} tokens. Please reduce the length of the {what}.",
                        CONTEXT_WINDOW + 1_337
                    ),
                    "invalid_request_error",
                    Some(param),
                    Some("context_length_exceeded"),
                )
            }
            Failure::Safety if azure => Reply::json(
                StatusCode::BAD_REQUEST,
                json!({"error": {"message": "The response was filtered due to the prompt triggering Azure OpenAI's content management policy. Please modify your prompt and retry. To learn more about our content filtering policies please read our documentation: https://go.microsoft.com/fwlink/?linkid=2198766",
                                 "type": null, "param": "prompt", "code": "content_filter", "status": 400,
                                 "innererror": {"code": "ResponsibleAIPolicyViolation", "content_filter_result": {
                                     "hate": {"filtered": false, "severity": "safe"},
                                     "self_harm": {"filtered": false, "severity": "safe"},
                                     "sexual": {"filtered": false, "severity": "safe"},
                                     "violence": {"filtered": true, "severity": "high"}}}}})
                .to_string(),
            ),
            Failure::Safety => {
                // OpenAI's own API ends the answer with `finish_reason: content_filter`.
                let id = content::id("chatcmpl-", ctx.seq);
                let created = now_unix();
                if ctx.stream {
                    let chunk = |delta: Value, finish: Option<&str>| {
                        event(&json!({"id": id, "object": "chat.completion.chunk", "created": created,
                                      "model": "gpt-4o-mini", "choices": [{"index": 0, "delta": delta,
                                      "logprobs": null, "finish_reason": finish}]}))
                    };
                    Reply::events(vec![
                        chunk(json!({"role": "assistant", "content": ""}), None),
                        chunk(json!({}), Some("content_filter")),
                        Bytes::from_static(DONE),
                    ])
                } else {
                    Reply::json(
                        StatusCode::OK,
                        json!({"id": id, "object": "chat.completion", "created": created, "model": "gpt-4o-mini",
                               "choices": [{"index": 0, "message": {"role": "assistant", "content": null, "refusal": null},
                                            "logprobs": null, "finish_reason": "content_filter"}],
                               "usage": usage(12, 0, true)})
                        .to_string(),
                    )
                }
            }
            Failure::Malformed if ctx.stream => {
                // A chunk cut off mid-JSON, as a truncating proxy would leave it.
                Reply::events(vec![
                    Bytes::from(format!(
                        "data: {{\"id\":\"{}\",\"object\":\"chat.completion.chunk\",\"created\":{},\"model\":\"gpt-4o-mini\",\"choices\":[{{\"index\":0,\"delta\":{{\"role\":\"assistant\",\"content\":\"Hel\n\n",
                        content::id("chatcmpl-", ctx.seq),
                        now_unix()
                    )),
                    Bytes::from_static(DONE),
                ])
            }
            Failure::Malformed => Reply::json(
                StatusCode::OK,
                format!(
                    "{{\"id\":\"{}\",\"object\":\"chat.completion\",\"created\":{},\"model\":\"gpt-4o-mini\",\"choices\":[{{\"index\":0,\"message\":{{\"role\":\"assistant\",\"content\":\"Hel",
                    content::id("chatcmpl-", ctx.seq),
                    now_unix()
                ),
            ),
        };
        with_common(r, ctx.seq)
    }

    fn fast(&self, ep: &Endpoint, body: &[u8], seq: u64) -> Reply {
        let model = if ep.flavor == AZURE {
            "gpt-4o-mini-2024-07-18"
        } else {
            model_of(body)
        };
        let stream = ep.op != Op::Embedding && flag(body, b"\"stream\"");
        let usage = r#"{"prompt_tokens":9,"completion_tokens":3,"total_tokens":12}"#;
        let r = match ep.op {
            Op::Responses => responses::fast(model, stream, seq),
            Op::Chat if stream => {
                let head = format!(
                    r#"data: {{"id":"chatcmpl-fast{seq}","object":"chat.completion.chunk","created":1700000000,"model":"{model}","choices":[{{"index":0,"delta":"#
                );
                let mut s = String::with_capacity(768);
                for (delta, finish) in [
                    (r#"{"role":"assistant","content":""}"#, "null"),
                    (r#"{"content":"Hello"}"#, "null"),
                    (r#"{"content":" from"}"#, "null"),
                    (r#"{"content":" fast."}"#, "null"),
                    ("{}", "\"stop\""),
                ] {
                    s.push_str(&head);
                    s.push_str(delta);
                    s.push_str(r#","logprobs":null,"finish_reason":"#);
                    s.push_str(finish);
                    s.push_str("}]}\n\n");
                }
                if flag(body, b"\"include_usage\"") {
                    s.push_str(&format!(
                        r#"data: {{"id":"chatcmpl-fast{seq}","object":"chat.completion.chunk","created":1700000000,"model":"{model}","choices":[],"usage":{usage}}}"#
                    ));
                    s.push_str("\n\n");
                }
                s.push_str("data: [DONE]\n\n");
                Reply::events(vec![Bytes::from(s)])
            }
            Op::Chat => Reply::json(
                StatusCode::OK,
                format!(
                    r#"{{"id":"chatcmpl-fast{seq}","object":"chat.completion","created":1700000000,"model":"{model}","choices":[{{"index":0,"message":{{"role":"assistant","content":"Hello from fast.","refusal":null}},"logprobs":null,"finish_reason":"stop"}}],"usage":{usage}}}"#
                ),
            ),
            Op::Completion if stream => {
                let mut s = String::with_capacity(512);
                for (text, finish) in [("Hello", "null"), (" from fast.", "null"), ("", "\"stop\"")]
                {
                    s.push_str(&format!(
                        r#"data: {{"id":"cmpl-fast{seq}","object":"text_completion","created":1700000000,"choices":[{{"text":"{text}","index":0,"logprobs":null,"finish_reason":{finish}}}],"model":"{model}"}}"#
                    ));
                    s.push_str("\n\n");
                }
                s.push_str("data: [DONE]\n\n");
                Reply::events(vec![Bytes::from(s)])
            }
            Op::Completion => Reply::json(
                StatusCode::OK,
                format!(
                    r#"{{"id":"cmpl-fast{seq}","object":"text_completion","created":1700000000,"model":"{model}","choices":[{{"text":"Hello from fast.","index":0,"logprobs":null,"finish_reason":"stop"}}],"usage":{usage}}}"#
                ),
            ),
            Op::Embedding => {
                // Eight dimensions, in whichever encoding was asked.
                let e = if find(body, b"\"base64\"").is_some() {
                    format!("\"{}\"", base64(&0.375f32.to_le_bytes().repeat(8)))
                } else {
                    "[0.375,0.375,0.375,0.375,0.375,0.375,0.375,0.375]".to_string()
                };
                Reply::json(
                    StatusCode::OK,
                    format!(
                        r#"{{"object":"list","data":[{{"object":"embedding","index":0,"embedding":{e}}}],"model":"{model}","usage":{{"prompt_tokens":2,"total_tokens":2}}}}"#
                    ),
                )
            }
            _ => models(ep),
        };
        r.header("x-request-id", format!("req_fast{seq}"))
    }

    fn client_error(&self, status: StatusCode, message: &str) -> Reply {
        error(status, message, "invalid_request_error", None, None)
    }
}

mod responses;
#[cfg(test)]
mod tests;
