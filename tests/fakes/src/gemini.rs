//! Google's Gemini API, as its API reference describes it: `POST /v1beta/models/{model}:
//! generateContent`, `:streamGenerateContent?alt=sse` (server-sent events, one
//! `GenerateContentResponse` each, separated by CRLF pairs as Google sends them; without
//! `alt=sse`, one JSON array) and `:countTokens`, with the key in `x-goog-api-key` (or `?key=`).
//! Answers carry `candidates[].content.parts` (text, `functionCall`), `finishReason`,
//! `usageMetadata`, `modelVersion` and `responseId`; safety blocks come as
//! `promptFeedback.blockReason` or a candidate stopped with `finishReason: SAFETY`. Errors are
//! `{"error": {"code", "message", "status", "details"}}`: 429 `RESOURCE_EXHAUSTED` with a
//! `RetryInfo` delay (Google sends no `retry-after` header), 503 `UNAVAILABLE`, 400
//! `INVALID_ARGUMENT` (context length, a bad key as `API_KEY_INVALID`).
//!
//! Requests the real API refuses are refused here too: unknown schema keys in tools or
//! `responseSchema` (`additionalProperties`, `$schema`, ...), roles other than `user` / `model`,
//! empty parts, a `maxOutputTokens` above the model's output limit ([`crate::limits`]),
//! function responses that do not follow a call turn one for one, and, for
//! `gemini-3` models, replayed function calls without their `thoughtSignature`.

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use serde_json::{Map, Value, json};

use crate::content::{self, End, estimate_tokens, pieces, reply_words};
use crate::dialect::{Ctx, Dialect, Endpoint, Failure, Op, Reply};

/// The Gemini dialect.
pub struct Gemini;

const NAME: &str = "gemini";
const SSE: &str = "gemini-sse";
const JSON_STREAM: &str = "gemini-json-stream";

/// The context window quoted by `context-length`.
const CONTEXT_WINDOW: u64 = 1_048_576;

/// The thought signature the fake attaches to function calls of `gemini-3` models.
pub const SIGNATURE: &str = "CiQBjz1rX2Zha2Utc2lnbmF0dXJlLW9mLXRoZS1mYWtlLXByb3ZpZGVy";

/// The keys Gemini's `Schema` object accepts (an OpenAPI subset).
const SCHEMA_KEYS: &[&str] = &[
    "type",
    "format",
    "title",
    "description",
    "nullable",
    "enum",
    "maxItems",
    "minItems",
    "properties",
    "required",
    "minProperties",
    "maxProperties",
    "minLength",
    "maxLength",
    "pattern",
    "example",
    "anyOf",
    "propertyOrdering",
    "default",
    "items",
    "minimum",
    "maximum",
];

fn status_name(code: u16) -> &'static str {
    match code {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        500 => "INTERNAL",
        504 => "DEADLINE_EXCEEDED",
        _ => "UNAVAILABLE",
    }
}

fn error_with(code: u16, message: &str, details: Value) -> Reply {
    let mut e = json!({"code": code, "message": message, "status": status_name(code)});
    if details.as_array().is_some_and(|d| !d.is_empty()) {
        e["details"] = details;
    }
    Reply::json(
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        json!({ "error": e }).to_string(),
    )
}

fn error(code: u16, message: &str) -> Reply {
    error_with(code, message, json!([]))
}

fn invalid(message: impl AsRef<str>) -> Reply {
    error(400, message.as_ref())
}

/// Google's HTML error page, which its front end returns for 502.
fn google_502() -> Reply {
    Reply {
        status: StatusCode::BAD_GATEWAY,
        content_type: "text/html; charset=UTF-8",
        headers: Vec::new(),
        parts: vec![Bytes::from_static(
            "<!DOCTYPE html>\n<html lang=en>\n  <meta charset=utf-8>\n  <title>Error 502 (Server Error)!!1</title>\n  <p><b>502.</b> <ins>That\u{2019}s an error.</ins>\n  <p>The server encountered a temporary error and could not complete your request.<p>Please try again in 30 seconds.  <ins>That\u{2019}s all we know.</ins>\n".as_bytes(),
        )],
    }
}

/// Checks a schema against Gemini's `Schema` object, naming the path the way Google does.
fn check_schema(schema: &Value, at: &str) -> Result<(), String> {
    let Value::Object(map) = schema else {
        return Ok(());
    };
    for (k, v) in map {
        if !SCHEMA_KEYS.contains(&k.as_str()) {
            return Err(format!(
                "Invalid JSON payload received. Unknown name \"{k}\" at '{at}': Cannot find field."
            ));
        }
        match k.as_str() {
            "properties" => {
                for (name, s) in v.as_object().into_iter().flatten() {
                    check_schema(s, &format!("{at}.properties[{name}].value"))?;
                }
            }
            "items" => check_schema(v, &format!("{at}.items"))?,
            "anyOf" => {
                for (i, s) in v.as_array().into_iter().flatten().enumerate() {
                    check_schema(s, &format!("{at}.any_of[{i}]"))?;
                }
            }
            "type" if !v.is_string() => {
                return Err(format!(
                    "Invalid value at '{at}.type' (type.googleapis.com/google.ai.generativelanguage.v1beta.Type), {v}"
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// A Gemini schema as JSON Schema (lower-case types, `nullable` dropped), for the shared sampler.
fn json_schema(schema: &Value) -> Value {
    match schema {
        Value::Object(map) => {
            let mut out = Map::new();
            for (k, v) in map {
                let v = match (k.as_str(), v) {
                    ("type", Value::String(t)) => Value::String(t.to_ascii_lowercase()),
                    ("properties", Value::Object(props)) => Value::Object(
                        props
                            .iter()
                            .map(|(n, s)| (n.clone(), json_schema(s)))
                            .collect(),
                    ),
                    ("items", s) => json_schema(s),
                    ("anyOf", Value::Array(a)) => Value::Array(a.iter().map(json_schema).collect()),
                    ("nullable", _) => continue,
                    (_, v) => v.clone(),
                };
                out.insert(k.clone(), v);
            }
            Value::Object(out)
        }
        v => v.clone(),
    }
}

fn parts_of(c: &Value) -> &[Value] {
    c.get("parts")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

fn count(c: &Value, key: &str) -> usize {
    parts_of(c).iter().filter(|p| p.get(key).is_some()).count()
}

fn validate(body: &Value, model: &str, generate: bool) -> Result<(), String> {
    let contents = match body.get("contents") {
        Some(Value::Array(c)) if !c.is_empty() => c,
        _ => {
            return Err("* GenerateContentRequest.contents: contents is not specified\n".into());
        }
    };
    for (i, c) in contents.iter().enumerate() {
        match c.get("role").and_then(Value::as_str) {
            None | Some("user" | "model") => {}
            Some(_) => return Err("Please use a valid role: user, model.".into()),
        }
        if parts_of(c).is_empty() {
            return Err(format!(
                "* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty.\n"
            ));
        }
        let responses = count(c, "functionResponse");
        if responses > 0 {
            let prev = if i > 0 {
                count(&contents[i - 1], "functionCall")
            } else {
                0
            };
            if prev == 0 {
                return Err("Please ensure that function response turn comes immediately after a function call turn.".into());
            }
            if prev != responses {
                return Err("Please ensure that the number of function response parts is equal to the number of function call parts of the function call turn.".into());
            }
        }
        // Gemini 3 checks that each model turn's first function call carries its signature.
        if model.starts_with("gemini-3")
            && let Some((pos, call)) = parts_of(c)
                .iter()
                .enumerate()
                .find(|(_, p)| p.get("functionCall").is_some())
            && call.get("thoughtSignature").is_none()
        {
            let name = call
                .pointer("/functionCall/name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            return Err(format!(
                "Function call is missing a thought_signature in functionCall parts. This is required for tools to work correctly, and missing thought_signature may lead to degraded model performance. Additional data, function call `default_api:{name}` , position {}. Please refer to https://ai.google.dev/gemini-api/docs/thought-signatures for more details.",
                pos + 1
            ));
        }
    }
    if !generate {
        return Ok(());
    }
    if let Some(n) = body
        .pointer("/generationConfig/maxOutputTokens")
        .and_then(Value::as_u64)
        && let Some(limit) = crate::limits::max_output_tokens(model)
        && n > limit
    {
        return Err(format!(
            "Unable to submit request because it has a maxOutputTokens value of {n} but the supported range is from 1 (inclusive) to {} (exclusive). Update the value and try again.",
            limit + 1
        ));
    }
    for (i, t) in body
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        for (j, f) in t
            .get("functionDeclarations")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            if f.get("name")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                return Err(format!(
                    "* GenerateContentRequest.tools[{i}].function_declarations[{j}].name: Name cannot be empty.\n"
                ));
            }
            if let Some(p) = f.get("parameters") {
                check_schema(
                    p,
                    &format!("tools[{i}].function_declarations[{j}].parameters"),
                )?;
            }
        }
    }
    if let Some(s) = body.pointer("/generationConfig/responseSchema") {
        check_schema(s, "generation_config.response_schema")?;
    }
    Ok(())
}

fn prompt_tokens(body: &Value) -> u64 {
    let len = ["systemInstruction", "contents", "tools"]
        .iter()
        .filter_map(|k| body.get(*k))
        .map(|v| v.to_string().len())
        .sum();
    estimate_tokens(len)
}

/// What one candidate says.
enum Said {
    Text { pieces: Vec<String>, length: bool },
    Call { name: String, args: Value },
}

fn said(body: &Value, ctx: &Ctx<'_>) -> Said {
    let contents = body
        .get("contents")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let last = contents.last().unwrap_or(&Value::Null);
    let responses: Vec<&Value> = parts_of(last)
        .iter()
        .filter_map(|p| p.get("functionResponse"))
        .collect();
    let decls: Vec<&Value> = body
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| t.get("functionDeclarations").and_then(Value::as_array))
        .flatten()
        .collect();
    let calling = body.pointer("/toolConfig/functionCallingConfig");
    let mode = calling
        .and_then(|c| c.get("mode"))
        .and_then(Value::as_str)
        .unwrap_or("AUTO");
    let config = body.get("generationConfig");
    if responses.is_empty() && !decls.is_empty() && mode != "NONE" {
        let allowed = calling
            .and_then(|c| c.get("allowedFunctionNames"))
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .and_then(Value::as_str);
        let decl = decls
            .iter()
            .find(|d| allowed.is_none_or(|a| d.get("name") == Some(&json!(a))))
            .unwrap_or(&decls[0]);
        return Said::Call {
            name: decl
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("tool")
                .to_string(),
            args: decl
                .get("parameters")
                .map_or(json!({}), |p| content::sample(&json_schema(p))),
        };
    }
    let json_mode = config
        .and_then(|g| g.get("responseMimeType"))
        .and_then(Value::as_str)
        == Some("application/json");
    let ps = if let Some(r) = responses.last() {
        let resp = r.get("response").cloned().unwrap_or_default();
        let text = match resp.get("result") {
            Some(Value::String(s)) if resp.as_object().is_some_and(|o| o.len() == 1) => s.clone(),
            _ => resp.to_string(),
        };
        content::tool_result_pieces(&text)
    } else if json_mode {
        let v = match config.and_then(|g| g.get("responseSchema")) {
            Some(s) => content::sample(&json_schema(s)),
            None => match config.and_then(|g| g.get("responseJsonSchema")) {
                Some(s) => content::sample(s),
                None => json!({"answer": "fake"}),
            },
        };
        content::json_pieces(&v)
    } else {
        let user = contents
            .iter()
            .rev()
            .find(|c| c.get("role").and_then(Value::as_str) != Some("model"))
            .map(|c| {
                parts_of(c)
                    .iter()
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        pieces(&reply_words(&user, ctx.options.words))
    };
    let stops: Vec<String> = config
        .and_then(|g| g.get("stopSequences"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    let max = config
        .and_then(|g| g.get("maxOutputTokens"))
        .and_then(Value::as_u64)
        .map(|n| n as usize);
    let (pieces, end) = content::cut(ps, &stops, max);
    Said::Text {
        pieces,
        length: end == End::Length,
    }
}

fn usage(prompt: u64, candidates: Option<u64>) -> Value {
    let mut u = json!({"promptTokenCount": prompt,
                       "totalTokenCount": prompt + candidates.unwrap_or(0),
                       "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}]});
    if let Some(c) = candidates {
        u["candidatesTokenCount"] = json!(c);
    }
    u
}

fn response_id(seq: u64) -> String {
    content::id("", seq)[..22].to_string()
}

fn model_of(ep: &Endpoint) -> &str {
    let m = ep.path_model.as_deref().unwrap_or("gemini-2.5-flash");
    m.rsplit('/').next().unwrap_or(m)
}

/// Pieces per streamed event: Gemini sends text in larger chunks than OpenAI.
const PIECES_PER_EVENT: usize = 3;

fn generate(ep: &Endpoint, body: &Value, ctx: &Ctx<'_>) -> Reply {
    let model = model_of(ep);
    if let Err(m) = validate(body, model, true) {
        return invalid(m);
    }
    let n = body
        .pointer("/generationConfig/candidateCount")
        .and_then(Value::as_u64)
        .unwrap_or(1)
        .clamp(1, 8);
    let said = said(body, ctx);
    let prompt = prompt_tokens(body);
    let per = match &said {
        Said::Text { pieces, .. } => pieces.len() as u64,
        Said::Call { name, args } => estimate_tokens(name.len() + args.to_string().len()),
    };
    let total_out = per * n;
    let finish = match &said {
        Said::Text { length: true, .. } => "MAX_TOKENS",
        _ => "STOP",
    };
    let call_part = |name: &str, args: &Value| {
        let mut p = json!({"functionCall": {"name": name, "args": args}});
        if model.starts_with("gemini-3") {
            p["thoughtSignature"] = json!(SIGNATURE);
        }
        p
    };
    let envelope = |candidates: Vec<Value>, usage: Value| {
        json!({"candidates": candidates, "usageMetadata": usage, "modelVersion": model,
               "responseId": response_id(ctx.seq)})
    };
    if !ctx.stream {
        let candidates = (0..n)
            .map(|i| {
                let parts = match &said {
                    Said::Text { pieces, .. } => json!([{"text": pieces.concat()}]),
                    Said::Call { name, args } => json!([call_part(name, args)]),
                };
                json!({"content": {"parts": parts, "role": "model"}, "finishReason": finish,
                       "index": i})
            })
            .collect();
        let v = envelope(candidates, usage(prompt, Some(total_out)));
        return Reply::json(StatusCode::OK, v.to_string());
    }
    // Events: each candidate's parts in turn; the last event of a candidate has its finish reason,
    // and the very last one the whole usage.
    let mut events: Vec<Value> = Vec::new();
    for i in 0..n {
        let chunks: Vec<Value> = match &said {
            Said::Text { pieces, .. } if pieces.is_empty() => vec![json!([{"text": ""}])],
            Said::Text { pieces, .. } => pieces
                .chunks(PIECES_PER_EVENT)
                .map(|c| json!([{"text": c.concat()}]))
                .collect(),
            Said::Call { name, args } => vec![json!([call_part(name, args)])],
        };
        let last = chunks.len() - 1;
        for (k, parts) in chunks.into_iter().enumerate() {
            let mut c = json!({"content": {"parts": parts, "role": "model"}, "index": i});
            if k == last {
                c["finishReason"] = json!(finish);
            }
            events.push(envelope(vec![c], usage(prompt, None)));
        }
    }
    if let Some(last) = events.last_mut() {
        last["usageMetadata"] = usage(prompt, Some(total_out));
    }
    stream_reply(ep, &events)
}

/// Events as SSE (`alt=sse`) or as the JSON array the stream endpoint sends without it.
fn stream_reply(ep: &Endpoint, events: &[Value]) -> Reply {
    if ep.flavor == JSON_STREAM {
        let mut parts: Vec<Bytes> = events
            .iter()
            .enumerate()
            .map(|(i, e)| Bytes::from(format!("{}{e}\n", if i == 0 { "[" } else { ",\r\n" })))
            .collect();
        parts.push(Bytes::from_static(b"]"));
        return Reply {
            status: StatusCode::OK,
            content_type: "application/json; charset=UTF-8",
            headers: Vec::new(),
            parts,
        };
    }
    Reply::events(
        events
            .iter()
            .map(|e| Bytes::from(format!("data: {e}\r\n\r\n")))
            .collect(),
    )
}

fn safety_ratings(blocked: bool) -> Value {
    json!([
        {"category": "HARM_CATEGORY_SEXUALLY_EXPLICIT", "probability": "NEGLIGIBLE"},
        {"category": "HARM_CATEGORY_HATE_SPEECH", "probability": "NEGLIGIBLE"},
        {"category": "HARM_CATEGORY_HARASSMENT", "probability": "NEGLIGIBLE"},
        if blocked {
            json!({"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": true})
        } else {
            json!({"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "NEGLIGIBLE"})
        }
    ])
}

/// A safety block: the prompt (`promptFeedback.blockReason`, no candidates) or the answer (a
/// candidate with `finishReason: SAFETY` and no content). Both are a 200.
fn blocked(ep: &Endpoint, ctx: &Ctx<'_>) -> Reply {
    let model = model_of(ep);
    let v = if ctx.options.block_answer {
        json!({"candidates": [{"finishReason": "SAFETY", "index": 0, "safetyRatings": safety_ratings(true)}],
               "usageMetadata": usage(12, Some(0)), "modelVersion": model,
               "responseId": response_id(ctx.seq)})
    } else {
        json!({"promptFeedback": {"blockReason": "SAFETY", "safetyRatings": safety_ratings(true)},
               "usageMetadata": usage(12, None), "modelVersion": model,
               "responseId": response_id(ctx.seq)})
    };
    if ctx.stream {
        stream_reply(ep, &[v])
    } else {
        Reply::json(StatusCode::OK, v.to_string())
    }
}

fn count_tokens(ep: &Endpoint, body: &Value) -> Reply {
    // countTokens takes `contents`, or a whole `generateContentRequest`.
    let req = body.get("generateContentRequest").unwrap_or(body);
    if let Err(m) = validate(req, model_of(ep), false) {
        return invalid(m);
    }
    let n = prompt_tokens(req);
    Reply::json(
        StatusCode::OK,
        json!({"totalTokens": n, "promptTokensDetails": [{"modality": "TEXT", "tokenCount": n}]})
            .to_string(),
    )
}

fn query_has(query: Option<&str>, key: &str, value: Option<&str>) -> bool {
    query.unwrap_or_default().split('&').any(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        k == key && !v.is_empty() && value.is_none_or(|want| v == want)
    })
}

impl Dialect for Gemini {
    fn name(&self) -> &'static str {
        NAME
    }

    fn route(&self, method: &Method, path: &str, query: Option<&str>) -> Option<Endpoint> {
        if method != Method::POST {
            return None;
        }
        let rest = ["/v1beta/", "/v1/", "/v1alpha/"]
            .iter()
            .find_map(|p| path.strip_prefix(p))?;
        let (resource, verb) = rest.rsplit_once(':')?;
        let id = resource
            .strip_prefix("models/")
            .or_else(|| resource.strip_prefix("tunedModels/").map(|_| resource))?;
        if id.is_empty() || id.contains(':') {
            return None;
        }
        let (op, flavor) = match verb {
            "generateContent" => (Op::Chat, NAME),
            "streamGenerateContent" if query_has(query, "alt", Some("sse")) => (Op::Chat, SSE),
            "streamGenerateContent" => (Op::Chat, JSON_STREAM),
            "countTokens" => (Op::CountTokens, NAME),
            _ => return None,
        };
        Some(Endpoint {
            op,
            flavor,
            path_model: Some(id.to_string()),
        })
    }

    fn is_stream(&self, ep: &Endpoint, _body: &Value) -> bool {
        ep.flavor != NAME
    }

    fn check(&self, _ep: &Endpoint, headers: &HeaderMap, query: Option<&str>) -> Option<Reply> {
        let has_key = headers.get("x-goog-api-key").is_some_and(|v| !v.is_empty())
            || query_has(query, "key", None);
        if !has_key {
            return Some(error(
                403,
                "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.",
            ));
        }
        None
    }

    fn answer(&self, ep: &Endpoint, body: &Value, ctx: &Ctx<'_>) -> Reply {
        let r = match ep.op {
            Op::CountTokens => count_tokens(ep, body),
            _ => generate(ep, body, ctx),
        };
        r.header("server", "scaffolding on HTTPServer2")
            .header("server-timing", "gfet4t7; dur=1")
    }

    fn failure(&self, ep: &Endpoint, failure: Failure, ctx: &Ctx<'_>) -> Reply {
        match failure {
            // A bad key is a 400 on Gemini, not a 401.
            Failure::Status(401) => error_with(
                400,
                "API key not valid. Please pass a valid API key.",
                json!([
                    {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                     "domain": "googleapis.com", "metadata": {"service": "generativelanguage.googleapis.com"}},
                    {"@type": "type.googleapis.com/google.rpc.LocalizedMessage", "locale": "en-US",
                     "message": "API key not valid. Please pass a valid API key."}
                ]),
            ),
            Failure::Status(429) => {
                let mut details = vec![
                    json!({"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{
                        "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                        "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                        "quotaDimensions": {"location": "global", "model": model_of(ep)},
                        "quotaValue": "10"}]}),
                    json!({"@type": "type.googleapis.com/google.rpc.Help", "links": [{
                        "description": "Learn more about Gemini API quotas",
                        "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}]}),
                ];
                let mut message = "You exceeded your current quota, please check your plan and billing details. For more information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.".to_string();
                if let Some(d) = ctx.options.retry_after {
                    let secs = d.as_secs_f64();
                    message.push_str(&format!(" Please retry in {secs}s."));
                    details.push(json!({"@type": "type.googleapis.com/google.rpc.RetryInfo",
                                        "retryDelay": format!("{}s", secs.ceil())}));
                }
                error_with(429, &message, Value::Array(details))
            }
            Failure::Status(500) => error(
                500,
                "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
            ),
            Failure::Status(502) => google_502(),
            Failure::Status(504) => error(504, "Deadline expired before operation could complete."),
            Failure::Status(s) if s >= 500 => {
                error(s, "The model is overloaded. Please try again later.")
            }
            Failure::Status(s) => error(s, "Request had invalid authentication credentials."),
            Failure::ContextLength => invalid(format!(
                "The input token count ({}) exceeds the maximum number of tokens allowed ({CONTEXT_WINDOW}).",
                CONTEXT_WINDOW + 1
            )),
            Failure::Safety => blocked(ep, ctx),
            Failure::Malformed if ctx.stream => Reply::events(vec![Bytes::from_static(
                b"data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"Hel\r\n\r\n",
            )]),
            Failure::Malformed => Reply::json(
                StatusCode::OK,
                "{\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"Hel",
            ),
        }
    }

    fn fast(&self, ep: &Endpoint, _body: &[u8], seq: u64) -> Reply {
        if ep.op == Op::CountTokens {
            return Reply::json(StatusCode::OK, r#"{"totalTokens":9}"#);
        }
        let model = model_of(ep);
        let usage = r#"{"promptTokenCount":9,"candidatesTokenCount":3,"totalTokenCount":12}"#;
        let one = |text: &str, tail: &str| {
            format!(
                r#"{{"candidates":[{{"content":{{"parts":[{{"text":"{text}"}}],"role":"model"}}{tail},"index":0}}],"usageMetadata":{usage},"modelVersion":"{model}","responseId":"fast{seq}"}}"#
            )
        };
        if ep.flavor == NAME {
            return Reply::json(
                StatusCode::OK,
                one("Hello from fast.", r#","finishReason":"STOP""#),
            );
        }
        let events = [
            one("Hello", ""),
            one(" from fast.", r#","finishReason":"STOP""#),
        ];
        let events: Vec<Value> = events
            .iter()
            .filter_map(|e| serde_json::from_str(e).ok())
            .collect();
        let mut r = stream_reply(ep, &events);
        let joined: Vec<u8> = r.parts.concat();
        r.parts = vec![Bytes::from(joined)];
        r
    }

    fn client_error(&self, status: StatusCode, message: &str) -> Reply {
        error(status.as_u16(), message)
    }
}

#[cfg(test)]
mod tests;
