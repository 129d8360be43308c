//! The Anthropic Messages endpoint's translation (`tests/fixtures/messages/`):
//!
//! - `requests/<case>.json`: an Anthropic request; the snapshot is the OpenAI chat body sent
//!   upstream (`openai`) or the refusal (`error`: status, param, message and the Anthropic body);
//! - `responses/<case>.json`: `{"request": Anthropic request, "openai": chat completion}`; the
//!   snapshot is the Anthropic message the client gets;
//! - `streams/<case>.in`: one OpenAI chunk per line, `[DONE]`, or `ERROR <message>` (an in-band
//!   failure); an optional first line `# request: {...}` gives the Anthropic request. The
//!   snapshot is the exact client-facing SSE, which must also be a valid Anthropic event sequence.

use std::collections::VecDeque;

use bytes::Bytes;
use serde_json::{Value, json};

use llmesh_sidecar::error::{ApiError, ErrorFormat};
use llmesh_sidecar::ingress::responses::Store;
use llmesh_sidecar::ingress::{Context, Translated, messages};
use llmesh_sidecar::internal::StreamEncoder;
use llmesh_sidecar::providers::Chunk;
use llmesh_sidecar::tokens;

use super::{each_fixture, read_json};

const REQUEST_ID: &str = "req_test-1";

fn translate(v: &Value) -> Result<Translated, ApiError> {
    let store = Store::default();
    let ctx = Context {
        responses: &store,
        request_id: REQUEST_ID,
    };
    // As the handler does: it estimates every translated prompt and hands the count over.
    let (body, mut t) =
        messages::to_chat(v.as_object().expect("request is an object").clone(), &ctx)?;
    if let Some(t) = t.as_mut() {
        t.prompt_estimate(tokens::chat_prompt(&body, false).tokens);
    }
    Ok((body, t))
}

#[test]
fn requests() {
    each_fixture("messages", "requests/*.json", 15, |path| {
        let actual = match translate(&read_json(path)) {
            Ok((body, t)) => {
                assert!(t.is_some(), "{}: no translation back", path.display());
                json!({"openai": body})
            }
            Err(e) => json!({"error": {
                "status": e.status.as_u16(),
                "param": e.param,
                "message": e.message,
                "anthropic": serde_json::from_slice::<Value>(&e.body(ErrorFormat::Anthropic)).unwrap(),
            }}),
        };
        insta::assert_json_snapshot!(actual);
    });
}

#[test]
fn responses() {
    each_fixture("messages", "responses/*.json", 9, |path| {
        let f = read_json(path);
        let (_, t) = translate(&f["request"]).unwrap();
        let openai = serde_json::to_vec(&f["openai"]).unwrap();
        // No usage from the provider layer: the translation reads the body's own, as on a
        // cache hit.
        let out = t.unwrap().response(&openai, None).unwrap();
        let actual: Value = serde_json::from_slice(&out).unwrap();
        insta::assert_json_snapshot!(actual);
    });
}

fn default_stream_request() -> Value {
    json!({"model": "chat", "max_tokens": 256, "stream": true,
           "messages": [{"role": "user", "content": "What is the weather in Paris?"}]})
}

/// Runs a stream transcript through the encoder, line by line; returns the client's SSE.
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
        let e = enc.get_or_insert_with(|| translate(&request).unwrap().1.unwrap().encoder());
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
fn streams() {
    each_fixture("messages", "streams/*.in", 7, |path| {
        let actual = run_stream(&std::fs::read_to_string(path).unwrap());
        // Every transcript is a valid Anthropic event sequence.
        if let Err(e) = check_sequence(&actual) {
            panic!("{}: {e}\n{actual}", path.display());
        }
        // The snapshot ignores trailing newlines; every event, the last too, ends with a blank line.
        assert!(actual.ends_with("\n\n"), "{}: {actual:?}", path.display());
        insta::assert_snapshot!(actual);
    });
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
