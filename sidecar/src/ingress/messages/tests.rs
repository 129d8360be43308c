//! Golden fixtures (`tests/fixtures/messages/`) and the finer points of the translation.
//!
//! - `requests/<case>.json`: `{"anthropic": request, "openai": expected body}` or, for refusals,
//!   `{"anthropic": request, "error": {"status", "param", "message"}}`.
//! - `responses/<case>.json`: `{"request": anthropic request, "openai": completion,
//!   "anthropic": expected message}`.
//! - `streams/<case>.in`: one OpenAI chunk per line, `[DONE]`, or `ERROR <message>` (an in-band
//!   failure); an optional first line `# request: {...}` gives the Anthropic request.
//!   `streams/<case>.sse` is the exact client-facing output.
//!
//! `LLMESH_BLESS=1 cargo test -p llmesh-sidecar ingress::messages` rewrites the expectations;
//! review the diff before committing it.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::*;
use crate::ingress::responses::Store;
use crate::internal::Chunk;

const REQUEST_ID: &str = "req_test-1";

fn dir(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/messages")
        .join(kind)
}

fn bless() -> bool {
    std::env::var_os("LLMESH_BLESS").is_some()
}

fn cases(kind: &str, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir(kind))
        .unwrap_or_else(|e| panic!("fixture dir {kind}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no {kind} fixtures");
    v
}

fn translate_obj(v: &Value) -> Result<Translated, ApiError> {
    let store = Store::default();
    let ctx = Context {
        responses: &store,
        request_id: REQUEST_ID,
    };
    // As the handler does: it estimates every translated prompt and hands the count over.
    let (body, mut t) = to_chat(v.as_object().expect("request is an object").clone(), &ctx)?;
    if let Some(t) = t.as_mut() {
        t.prompt_estimate(crate::tokens::chat_prompt(&body, false).tokens);
    }
    Ok((body, t))
}

fn read_json(p: &Path) -> Map<String, Value> {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn write_json(p: &Path, v: &Map<String, Value>) {
    let mut s = serde_json::to_string_pretty(v).unwrap();
    s.push('\n');
    std::fs::write(p, s).unwrap();
}

/// Compares or, when blessing, records `actual` under `key`; returns a failure line.
fn check(p: &Path, f: &mut Map<String, Value>, key: &str, actual: Value) -> Option<String> {
    if bless() {
        f.insert(key.into(), actual);
        write_json(p, f);
        return None;
    }
    let expected = f.get(key).cloned().unwrap_or(Value::Null);
    (expected != actual).then(|| {
        format!(
            "{}: {key} differs\nexpected: {expected:#}\nactual:   {actual:#}",
            p.display()
        )
    })
}

#[test]
fn request_fixtures() {
    let mut failures = Vec::new();
    for p in cases("requests", "json") {
        let mut f = read_json(&p);
        let result = translate_obj(&f["anthropic"]);
        let failure = match result {
            Ok((body, t)) => {
                assert!(t.is_some(), "{}: no translation back", p.display());
                if f.contains_key("error") && !bless() {
                    Some(format!("{}: expected an error, got {body:?}", p.display()))
                } else {
                    f.remove("error");
                    check(&p, &mut f, "openai", Value::Object(body))
                }
            }
            Err(e) => {
                let actual = json!({
                    "status": e.status.as_u16(),
                    "param": e.param,
                    "message": e.message,
                    "anthropic": serde_json::from_slice::<Value>(&e.body(crate::error::ErrorFormat::Anthropic)).unwrap(),
                });
                f.remove("openai");
                check(&p, &mut f, "error", actual)
            }
        };
        failures.extend(failure);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn response_fixtures() {
    let mut failures = Vec::new();
    for p in cases("responses", "json") {
        let mut f = read_json(&p);
        let (_, t) = translate_obj(&f["request"]).unwrap();
        let openai = serde_json::to_vec(&f["openai"]).unwrap();
        // No usage from the provider layer: the translation reads the body's own, as on a
        // cache hit.
        let out = t.unwrap().response(&openai, None).unwrap();
        let actual: Value = serde_json::from_slice(&out).unwrap();
        failures.extend(check(&p, &mut f, "anthropic", actual));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

fn default_stream_request() -> Value {
    json!({"model": "chat", "max_tokens": 256, "stream": true,
           "messages": [{"role": "user", "content": "What is the weather in Paris?"}]})
}

/// Runs a stream transcript; returns the output, and asserts every input line's events came out
/// before the next line went in (nothing is held for later except what the module doc says).
fn run_stream(input: &str) -> String {
    let mut request = default_stream_request();
    let mut enc: Option<Box<dyn StreamEncoder>> = None;
    let mut out = VecDeque::new();
    let mut text = String::new();
    for line in input.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(r) = line.strip_prefix("# request: ") {
            request = serde_json::from_str(r).unwrap();
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let e = enc.get_or_insert_with(|| translate_obj(&request).unwrap().1.unwrap().encoder());
        if let Some(m) = line.strip_prefix("ERROR ") {
            e.error(m, &mut out);
        } else if line == "[DONE]" {
            e.chunk(Chunk::Done, &mut out);
        } else {
            e.chunk(Chunk::Data(Bytes::from(line.to_string())), &mut out);
        }
        for b in out.drain(..) {
            text.push_str(std::str::from_utf8(&b).unwrap());
        }
    }
    text
}

#[test]
fn stream_fixtures() {
    let mut failures = Vec::new();
    for p in cases("streams", "in") {
        let actual = run_stream(&std::fs::read_to_string(&p).unwrap());
        let golden = p.with_extension("sse");
        if bless() {
            std::fs::write(&golden, &actual).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&golden).unwrap_or_default();
        if expected != actual {
            failures.push(format!(
                "{} differs\nexpected:\n{expected}\nactual:\n{actual}",
                golden.display()
            ));
        }
        // Every transcript is a valid Anthropic event sequence.
        if let Err(e) = check_sequence(&actual) {
            failures.push(format!("{}: {e}", golden.display()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Parses SSE text into (event name, data JSON) pairs, checking each `event:` names the `type`.
fn events(sse: &str) -> Vec<(String, Value)> {
    sse.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let (name, data) = e.split_once('\n').expect("event and data lines");
            let name = name
                .strip_prefix("event: ")
                .expect("event line")
                .to_string();
            let data: Value =
                serde_json::from_str(data.strip_prefix("data: ").expect("data line")).unwrap();
            assert_eq!(data["type"], name.as_str(), "event name matches its type");
            (name, data)
        })
        .collect()
}

/// Anthropic's documented order: message_start, then per block start/deltas/stop with
/// increasing indexes, then message_delta and message_stop; or an error event at the end.
fn check_sequence(sse: &str) -> Result<(), String> {
    let evs = events(sse);
    let names: Vec<&str> = evs.iter().map(|(n, _)| n.as_str()).collect();
    if names.first() != Some(&"message_start") {
        return Err(format!("does not open with message_start: {names:?}"));
    }
    let mut open: Option<u64> = None;
    let mut next = 0u64;
    let mut after_delta = false;
    for (i, (name, d)) in evs.iter().enumerate().skip(1) {
        let last = i + 1 == evs.len();
        match name.as_str() {
            "ping" => {}
            "content_block_start" => {
                if open.is_some() || after_delta || d["index"] != next {
                    return Err(format!("bad content_block_start at {i}: {d}"));
                }
                open = Some(next);
                next += 1;
            }
            "content_block_delta" | "content_block_stop" => {
                if open != d["index"].as_u64() {
                    return Err(format!("{name} outside its block at {i}: {d}"));
                }
                if name == "content_block_stop" {
                    open = None;
                }
            }
            "message_delta" => {
                if open.is_some() || after_delta {
                    return Err(format!("message_delta at {i} with a block open"));
                }
                after_delta = true;
            }
            "message_stop" if last && after_delta => {}
            "error" if last => {}
            _ => return Err(format!("unexpected {name} at {i}")),
        }
    }
    Ok(())
}

#[test]
fn tool_ids_round_trip_to_the_upstream_id() {
    assert_eq!(tool_use_id(Some("call_abc"), "msg_x", 0), "toolu_call_abc");
    assert_eq!(tool_use_id(Some("toolu_01A"), "msg_x", 0), "toolu_01A");
    assert_eq!(tool_use_id(None, "msg_x", 2), "toolu_x_2");
    assert_eq!(upstream_tool_id("toolu_call_abc"), "call_abc");
    assert_eq!(upstream_tool_id("Ab3dE6gh9"), "Ab3dE6gh9");
    assert_eq!(upstream_tool_id("toolu_"), "toolu_");
    assert_eq!(message_id("llmesh-00ff"), "msg_llmesh00ff");
}

#[test]
fn count_tokens_matches_the_limit_estimate() {
    let req = json!({"model": "chat", "system": "Be brief.",
                     "messages": [{"role": "user", "content": "Hello, world!"}]});
    let (model, body) = count_tokens(req.to_string().as_bytes()).unwrap();
    assert_eq!(model, "chat");
    // 3 reply framing + (4 + 3) system + (4 + 4) user, as tokens::chat_prompt counts.
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap(),
        json!({"input_tokens": 18})
    );
    // count_tokens takes no max_tokens; an unknown role is still refused.
    let bad = json!({"model": "chat", "messages": [{"role": "system", "content": "x"}]});
    let e = count_tokens(bad.to_string().as_bytes()).unwrap_err();
    assert_eq!(e.param.as_deref(), Some("messages.0.role"));
}

#[test]
fn provider_usage_wins_over_the_body() {
    let (_, t) = translate_obj(&default_stream_request()).unwrap();
    let openai = json!({"model": "m", "choices": [{"index": 0, "finish_reason": "stop",
                        "message": {"role": "assistant", "content": "Hi"}}],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1}});
    let usage = Usage {
        prompt: 100,
        cached_input: 30,
        cache_write: 20,
        output: 7,
        estimated: false,
    };
    let out = t
        .unwrap()
        .response(openai.to_string().as_bytes(), Some(&usage))
        .unwrap();
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(
        v["usage"],
        json!({"input_tokens": 50, "output_tokens": 7,
               "cache_creation_input_tokens": 20, "cache_read_input_tokens": 30})
    );
}

#[test]
fn nothing_follows_the_end_of_a_stream() {
    let (_, t) = translate_obj(&default_stream_request()).unwrap();
    let mut e = t.unwrap().encoder();
    let mut out = VecDeque::new();
    let chunk = |s: &str| Chunk::Data(Bytes::from(s.to_string()));
    e.chunk(
        chunk(r#"{"model":"m","choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}"#),
        &mut out,
    );
    // The text is out at once, not held for the next chunk.
    let first: String = out
        .drain(..)
        .map(|b| String::from_utf8(b.to_vec()).unwrap())
        .collect();
    assert!(first.contains(r#""text_delta","text":"Hi""#), "{first}");
    e.error("llmesh: upstream overloaded (529)", &mut out);
    e.chunk(Chunk::Done, &mut out);
    e.error("again", &mut out);
    let rest: String = out
        .drain(..)
        .map(|b| String::from_utf8(b.to_vec()).unwrap())
        .collect();
    assert_eq!(
        rest,
        "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"llmesh: upstream overloaded (529)\"}}\n\n"
    );
}
