//! OpenAI's Responses API (`POST /v1/responses`), as its API reference describes it: a Response
//! object, or with `stream: true` the typed events (`event: <type>` + `data:` with the same
//! `type` and a `sequence_number` from 0, no `[DONE]`) in the documented order:
//! `response.created`, `response.in_progress`, then per output item `response.output_item.added`,
//! its content (`response.content_part.added`, `response.output_text.delta`...,
//! `response.output_text.done`, `response.content_part.done`; a function call's
//! `response.function_call_arguments.delta`... / `.done`; a web search's
//! `response.web_search_call.in_progress` / `.searching` / `.completed`),
//! `response.output_item.done`, and `response.completed` (or `response.incomplete`) with the
//! whole response and its usage (`input_tokens_details.cached_tokens`,
//! `output_tokens_details.reasoning_tokens`).
//!
//! What it does, so tests can see what reached it: built-in `web_search` / `web_search_preview`
//! tools run (a `web_search_call` item, then text with a `url_citation`), `file_search` gives a
//! `file_search_call`; function tools are called unless the last input is their output;
//! `text.format` json_schema answers a sample of the schema; `reasoning.effort` adds a reasoning
//! item and reasoning tokens; `max_output_tokens` cuts the text (`status: incomplete`).
//! Responses are stored (unless `store: false`) so `previous_response_id` continues them; the
//! earlier turns count as cached input tokens. An unknown id is OpenAI's 400
//! `previous_response_not_found`.

use bytes::Bytes;
use http::StatusCode;
use serde_json::{Map, Value, json};

use crate::content::{self, End, estimate_tokens, now_unix, pieces, reply_words};
use crate::dialect::{Ctx, Reply};

use super::error;

/// Built-in tools that search the web.
const WEB_SEARCH: &[&str] = &[
    "web_search",
    "web_search_2025_08_26",
    "web_search_preview",
    "web_search_preview_2025_03_11",
];

/// The URL every fake web search cites.
pub const CITED_URL: &str = "https://example.org/fake-search-result";

fn text_of(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// The request's input as items.
fn input_items(body: &Value) -> Vec<Value> {
    match body.get("input") {
        Some(Value::String(s)) => vec![json!({"role": "user", "content": s})],
        Some(Value::Array(items)) => items.clone(),
        _ => Vec::new(),
    }
}

/// What the model does.
enum Said {
    Text(Vec<String>, End),
    Call { name: String, args: String },
    WebSearch { query: String },
    FileSearch { query: String },
}

fn said(body: &Value, conversation: &[Value], words: Option<usize>) -> Said {
    let last = conversation.last();
    let last_type = last
        .and_then(|i| i.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("message");
    let user = conversation
        .iter()
        .rev()
        .find(|i| i.get("role").and_then(Value::as_str) == Some("user"))
        .map(|i| text_of(i.get("content")))
        .unwrap_or_default();
    let tools = body
        .get("tools")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let choice = body.get("tool_choice");
    let use_tools = choice.and_then(Value::as_str) != Some("none")
        && !last_type.ends_with("_output")
        && last_type != "web_search_call"
        && last_type != "file_search_call";
    let forced = choice
        .filter(|c| c.get("type").and_then(Value::as_str) == Some("function"))
        .and_then(|c| c.get("name"))
        .and_then(Value::as_str);
    if use_tools {
        for t in tools {
            let ty = t.get("type").and_then(Value::as_str).unwrap_or_default();
            if WEB_SEARCH.contains(&ty) && forced.is_none() {
                return Said::WebSearch { query: user };
            }
            if ty == "file_search" && forced.is_none() {
                return Said::FileSearch { query: user };
            }
            let name = t.get("name").and_then(Value::as_str).unwrap_or("tool");
            if ty == "function" && forced.is_none_or(|f| f == name) {
                return Said::Call {
                    name: name.to_string(),
                    args: t
                        .get("parameters")
                        .map_or(json!({}), content::sample)
                        .to_string(),
                };
            }
        }
    }
    let format = body.pointer("/text/format");
    let ps = match format.and_then(|f| f.get("type")).and_then(Value::as_str) {
        Some("json_schema") => content::json_pieces(
            &format
                .and_then(|f| f.get("schema"))
                .map_or(json!({}), content::sample),
        ),
        Some("json_object") => content::json_pieces(&json!({"answer": "fake"})),
        _ if last_type == "function_call_output" => content::tool_result_pieces(
            &last
                .and_then(|i| i.get("output"))
                .map(|o| o.as_str().map_or_else(|| o.to_string(), String::from))
                .unwrap_or_default(),
        ),
        _ => pieces(&reply_words(&user, words)),
    };
    let max = body
        .get("max_output_tokens")
        .and_then(Value::as_u64)
        .map(|n| n as usize);
    let (ps, end) = content::cut(ps, &[], max);
    Said::Text(ps, end)
}

fn usage(input: u64, cached: u64, output: u64, reasoning: u64) -> Value {
    json!({
        "input_tokens": input,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": input + output,
    })
}

/// The Response object's fields echoed from the request, in OpenAI's order.
fn skeleton(id: &str, created: u64, body: &Value, model: &str) -> Map<String, Value> {
    let get = |k: &str, default: Value| {
        body.get(k)
            .filter(|v| !v.is_null())
            .cloned()
            .unwrap_or(default)
    };
    let mut r = Map::new();
    r.insert("id".into(), json!(id));
    r.insert("object".into(), json!("response"));
    r.insert("created_at".into(), json!(created));
    r.insert("status".into(), json!("in_progress"));
    r.insert("background".into(), get("background", json!(false)));
    r.insert("error".into(), Value::Null);
    r.insert("incomplete_details".into(), Value::Null);
    r.insert("instructions".into(), get("instructions", Value::Null));
    r.insert(
        "max_output_tokens".into(),
        get("max_output_tokens", Value::Null),
    );
    r.insert("max_tool_calls".into(), get("max_tool_calls", Value::Null));
    r.insert("model".into(), json!(model));
    r.insert("output".into(), json!([]));
    r.insert(
        "parallel_tool_calls".into(),
        get("parallel_tool_calls", json!(true)),
    );
    r.insert(
        "previous_response_id".into(),
        get("previous_response_id", Value::Null),
    );
    r.insert(
        "reasoning".into(),
        get("reasoning", json!({"effort": null, "summary": null})),
    );
    r.insert("service_tier".into(), json!("default"));
    r.insert("store".into(), get("store", json!(true)));
    r.insert("temperature".into(), get("temperature", json!(1.0)));
    r.insert(
        "text".into(),
        get("text", json!({"format": {"type": "text"}})),
    );
    r.insert("tool_choice".into(), get("tool_choice", json!("auto")));
    r.insert("tools".into(), get("tools", json!([])));
    r.insert("top_p".into(), get("top_p", json!(1.0)));
    r.insert("truncation".into(), get("truncation", json!("disabled")));
    r.insert("usage".into(), Value::Null);
    r.insert("user".into(), get("user", Value::Null));
    r.insert("metadata".into(), get("metadata", json!({})));
    r
}

/// Writes the stream's events, numbering them.
struct Events {
    seq: u64,
    out: Vec<Bytes>,
}

impl Events {
    fn emit(&mut self, ty: &str, fields: Value) {
        let mut data = Map::new();
        data.insert("type".into(), json!(ty));
        if let Value::Object(f) = fields {
            data.extend(f);
        }
        data.insert("sequence_number".into(), json!(self.seq));
        self.seq += 1;
        self.out.push(Bytes::from(format!(
            "event: {ty}\ndata: {}\n\n",
            Value::Object(data)
        )));
    }
}

fn text_part(text: &str, annotations: Value) -> Value {
    json!({"type": "output_text", "annotations": annotations, "logprobs": [], "text": text})
}

fn message(id: &str, status: &str, content: Vec<Value>) -> Value {
    json!({"id": id, "type": "message", "status": status, "content": content, "role": "assistant"})
}

/// Streams one message item of text pieces.
fn stream_message(ev: &mut Events, index: usize, id: &str, ps: &[String], annotations: &Value) {
    ev.emit(
        "response.output_item.added",
        json!({"output_index": index, "item": message(id, "in_progress", vec![])}),
    );
    ev.emit(
        "response.content_part.added",
        json!({"item_id": id, "output_index": index, "content_index": 0, "part": text_part("", json!([]))}),
    );
    for p in ps {
        ev.emit(
            "response.output_text.delta",
            json!({"item_id": id, "output_index": index, "content_index": 0, "delta": p, "logprobs": []}),
        );
    }
    let text = ps.concat();
    if let Value::Array(list) = annotations {
        for (i, a) in list.iter().enumerate() {
            ev.emit(
                "response.output_text.annotation.added",
                json!({"item_id": id, "output_index": index, "content_index": 0, "annotation_index": i, "annotation": a}),
            );
        }
    }
    ev.emit(
        "response.output_text.done",
        json!({"item_id": id, "output_index": index, "content_index": 0, "text": text, "logprobs": []}),
    );
    let part = text_part(&text, annotations.clone());
    ev.emit(
        "response.content_part.done",
        json!({"item_id": id, "output_index": index, "content_index": 0, "part": part}),
    );
    ev.emit(
        "response.output_item.done",
        json!({"output_index": index, "item": message(id, "completed", vec![part])}),
    );
}

/// The answer to `POST /v1/responses`.
pub fn answer(body: &Value, ctx: &Ctx<'_>) -> Reply {
    let Some(model) = body.get("model").and_then(Value::as_str) else {
        return error(
            StatusCode::BAD_REQUEST,
            "Missing required parameter: 'model'.",
            "invalid_request_error",
            Some("model"),
            Some("missing_required_parameter"),
        );
    };
    let mut conversation = Vec::new();
    let previous = body.get("previous_response_id").and_then(Value::as_str);
    if let Some(id) = previous {
        match ctx.state.conversation(id) {
            Some(c) => conversation.extend(c.iter().cloned()),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("Previous response with id '{id}' not found."),
                    "invalid_request_error",
                    Some("previous_response_id"),
                    Some("previous_response_not_found"),
                );
            }
        }
    }
    let earlier = Value::Array(conversation.clone()).to_string().len();
    conversation.extend(input_items(body));
    if conversation.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "Missing required parameter: 'input'.",
            "invalid_request_error",
            Some("input"),
            Some("missing_required_parameter"),
        );
    }

    let id = content::id("resp_", ctx.seq);
    let created = now_unix();
    let instructions = body
        .get("instructions")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let prompt_len = Value::Array(conversation.clone()).to_string().len() + instructions.len();
    let input_tokens = estimate_tokens(prompt_len);
    // The earlier turns of a stored conversation are a cached prefix, as on OpenAI.
    let cached = if previous.is_some() {
        estimate_tokens(earlier).min(input_tokens)
    } else {
        0
    };
    let reasoning = body
        .pointer("/reasoning/effort")
        .and_then(Value::as_str)
        .is_some_and(|e| e != "none");
    let reasoning_tokens = if reasoning { 8 } else { 0 };

    let item_id = |prefix: &str, n: u64| content::id(prefix, ctx.seq * 8 + n);
    let mut ev = Events {
        seq: 0,
        out: Vec::new(),
    };
    let skel = skeleton(&id, created, body, model);
    let snapshot = |status: &str, output: &[Value], usage: Value, incomplete: Value| {
        let mut r = skel.clone();
        r.insert("status".into(), json!(status));
        r.insert("output".into(), Value::Array(output.to_vec()));
        r.insert("usage".into(), usage);
        r.insert("incomplete_details".into(), incomplete);
        Value::Object(r)
    };
    if ctx.stream {
        let r = snapshot("in_progress", &[], Value::Null, Value::Null);
        ev.emit("response.created", json!({ "response": r }));
        ev.emit("response.in_progress", json!({ "response": r }));
    }

    let mut output: Vec<Value> = Vec::new();
    if reasoning {
        let item = json!({"id": item_id("rs_", 0), "type": "reasoning", "summary": []});
        if ctx.stream {
            ev.emit(
                "response.output_item.added",
                json!({"output_index": 0, "item": item}),
            );
            ev.emit(
                "response.output_item.done",
                json!({"output_index": 0, "item": item}),
            );
        }
        output.push(item);
    }
    let mut output_tokens = reasoning_tokens;
    let mut status = "completed";
    let mut incomplete = Value::Null;
    let message_text =
        |ev: &mut Events, output: &mut Vec<Value>, ps: &[String], annotations: Value| {
            let index = output.len();
            let mid = item_id("msg_", 1);
            if ctx.stream {
                stream_message(ev, index, &mid, ps, &annotations);
            }
            output.push(message(
                &mid,
                "completed",
                vec![text_part(&ps.concat(), annotations)],
            ));
        };
    match said(body, &conversation, ctx.options.words) {
        Said::Text(ps, end) => {
            output_tokens += ps.len() as u64;
            if end == End::Length {
                status = "incomplete";
                incomplete = json!({"reason": "max_output_tokens"});
            }
            message_text(&mut ev, &mut output, &ps, json!([]));
        }
        Said::Call { name, args } => {
            output_tokens += estimate_tokens(name.len() + args.len());
            let index = output.len();
            let fid = item_id("fc_", 2);
            let call_id = item_id("call_", 3);
            let item = |args: &str, status: &str| {
                json!({"id": fid, "type": "function_call", "status": status, "arguments": args,
                       "call_id": call_id, "name": name})
            };
            if ctx.stream {
                ev.emit(
                    "response.output_item.added",
                    json!({"output_index": index, "item": item("", "in_progress")}),
                );
                let chars: Vec<char> = args.chars().collect();
                for piece in chars.chunks(12) {
                    let piece: String = piece.iter().collect();
                    ev.emit(
                        "response.function_call_arguments.delta",
                        json!({"item_id": fid, "output_index": index, "delta": piece}),
                    );
                }
                ev.emit(
                    "response.function_call_arguments.done",
                    json!({"item_id": fid, "output_index": index, "name": name, "arguments": args}),
                );
                ev.emit(
                    "response.output_item.done",
                    json!({"output_index": index, "item": item(&args, "completed")}),
                );
            }
            output.push(item(&args, "completed"));
        }
        Said::WebSearch { query } => {
            let index = output.len();
            let wid = item_id("ws_", 4);
            let call = |status: &str, sources: bool| {
                let mut action = json!({"type": "search", "query": query});
                if sources {
                    action["sources"] = json!([{"type": "url", "url": CITED_URL}]);
                }
                json!({"id": wid, "type": "web_search_call", "status": status, "action": action})
            };
            if ctx.stream {
                ev.emit(
                    "response.output_item.added",
                    json!({"output_index": index, "item": call("in_progress", false)}),
                );
                for step in ["in_progress", "searching", "completed"] {
                    ev.emit(
                        &format!("response.web_search_call.{step}"),
                        json!({"output_index": index, "item_id": wid}),
                    );
                }
                ev.emit(
                    "response.output_item.done",
                    json!({"output_index": index, "item": call("completed", true)}),
                );
            }
            output.push(call("completed", true));
            let words: Vec<String> = format!("The web says: {query}")
                .split_whitespace()
                .map(String::from)
                .collect();
            let ps = pieces(&words);
            let end = ps.concat().len();
            output_tokens += ps.len() as u64;
            message_text(
                &mut ev,
                &mut output,
                &ps,
                json!([{"type": "url_citation", "start_index": 0, "end_index": end,
                        "url": CITED_URL, "title": "Fake search result"}]),
            );
        }
        Said::FileSearch { query } => {
            let index = output.len();
            let fid = item_id("fs_", 5);
            let call = |status: &str| {
                json!({"id": fid, "type": "file_search_call", "status": status,
                       "queries": [query], "results": null})
            };
            if ctx.stream {
                ev.emit(
                    "response.output_item.added",
                    json!({"output_index": index, "item": call("in_progress")}),
                );
                for step in ["in_progress", "searching", "completed"] {
                    ev.emit(
                        &format!("response.file_search_call.{step}"),
                        json!({"output_index": index, "item_id": fid}),
                    );
                }
                ev.emit(
                    "response.output_item.done",
                    json!({"output_index": index, "item": call("completed")}),
                );
            }
            output.push(call("completed"));
            let ps = pieces(&["The".into(), "files".into(), "say:".into(), query]);
            output_tokens += ps.len() as u64;
            message_text(&mut ev, &mut output, &ps, json!([]));
        }
    }

    let u = usage(input_tokens, cached, output_tokens, reasoning_tokens);
    let done = snapshot(status, &output, u, incomplete);
    if body.get("store").and_then(Value::as_bool) != Some(false) {
        let mut kept = conversation;
        kept.extend(output.iter().cloned());
        ctx.state.store(id.clone(), kept);
    }
    if !ctx.stream {
        return Reply::json(StatusCode::OK, done.to_string());
    }
    let terminal = if status == "completed" {
        "response.completed"
    } else {
        "response.incomplete"
    };
    ev.emit(terminal, json!({ "response": done }));
    Reply::events(ev.out)
}

/// `safety`: the answer stopped by the content filter (`status: incomplete`, reason
/// `content_filter`), as a Response or as its events.
pub fn content_filtered(ctx: &Ctx<'_>) -> Reply {
    let id = content::id("resp_", ctx.seq);
    let mut r = skeleton(&id, now_unix(), &Value::Null, "gpt-4o-mini");
    if !ctx.stream {
        r.insert("status".into(), json!("incomplete"));
        r.insert(
            "incomplete_details".into(),
            json!({"reason": "content_filter"}),
        );
        r.insert("usage".into(), usage(12, 0, 0, 0));
        return Reply::json(StatusCode::OK, Value::Object(r).to_string());
    }
    let mut ev = Events {
        seq: 0,
        out: Vec::new(),
    };
    let start = Value::Object(r.clone());
    ev.emit("response.created", json!({ "response": start }));
    ev.emit("response.in_progress", json!({ "response": start }));
    r.insert("status".into(), json!("incomplete"));
    r.insert(
        "incomplete_details".into(),
        json!({"reason": "content_filter"}),
    );
    r.insert("usage".into(), usage(12, 0, 0, 0));
    ev.emit(
        "response.incomplete",
        json!({ "response": Value::Object(r) }),
    );
    Reply::events(ev.out)
}

/// `malformed-json`: a Response, or its first event, cut off mid-JSON.
pub fn malformed(ctx: &Ctx<'_>) -> Reply {
    let head = format!(
        "{{\"id\":\"{}\",\"object\":\"response\",\"created_at\":{},\"status\":\"in_progress\",\"output\":[{{\"type\":\"message\",\"content\":[{{\"type\":\"output_text\",\"text\":\"Hel",
        content::id("resp_", ctx.seq),
        now_unix()
    );
    if ctx.stream {
        Reply::events(vec![Bytes::from(format!(
            "event: response.created\ndata: {{\"type\":\"response.created\",\"sequence_number\":0,\"response\":{head}\n\n"
        ))])
    } else {
        Reply::json(StatusCode::OK, head)
    }
}

/// A correct answer with the least work (benchmarks).
pub fn fast(model: &str, stream: bool, seq: u64) -> Reply {
    let usage = r#"{"input_tokens":9,"input_tokens_details":{"cached_tokens":0},"output_tokens":3,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":12}"#;
    let msg = r#"{"id":"msg_fast","type":"message","status":"completed","content":[{"type":"output_text","annotations":[],"logprobs":[],"text":"Hello from fast."}],"role":"assistant"}"#;
    let response = |status: &str, output: &str, usage: &str| {
        format!(
            r#"{{"id":"resp_fast{seq}","object":"response","created_at":1700000000,"status":"{status}","error":null,"incomplete_details":null,"model":"{model}","output":[{output}],"usage":{usage}}}"#
        )
    };
    if !stream {
        return Reply::json(StatusCode::OK, response("completed", msg, usage));
    }
    let start = response("in_progress", "", "null");
    let mut s = String::with_capacity(1024);
    let mut n = 0;
    let mut ev = |ty: &str, fields: &str| {
        s.push_str(&format!(
            "event: {ty}\ndata: {{\"type\":\"{ty}\",\"sequence_number\":{n},{fields}}}\n\n"
        ));
        n += 1;
    };
    ev("response.created", &format!(r#""response":{start}"#));
    for delta in ["Hello", " from", " fast."] {
        ev(
            "response.output_text.delta",
            &format!(
                r#""item_id":"msg_fast","output_index":0,"content_index":0,"delta":"{delta}","logprobs":[]"#
            ),
        );
    }
    ev(
        "response.completed",
        &format!(r#""response":{}"#, response("completed", msg, usage)),
    );
    Reply::events(vec![Bytes::from(s)])
}
