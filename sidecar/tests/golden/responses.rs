//! The Responses endpoint's translation (`tests/fixtures/responses/*.json`). Each fixture holds
//! a Responses `request` and, optionally, `chat_response` (an upstream chat completion) and
//! `chunks` (upstream chat chunks, `"[DONE]"` for the end, then an optional `stream_error`).
//! The snapshot holds what they become: `chat_request` (the chat body sent upstream) or `error`
//! (status and body); with `chat_response`, the `response` object; with `chunks`, the `events`
//! written to the client.
//!
//! Response and item ids carry a random base and the clock's `created_at`: the snapshot reads
//! them as `0123456789abcdef` and a fixed stamp, after checking each is what it must be.

use std::collections::VecDeque;

use bytes::Bytes;
use serde_json::{Map, Value, json};

use llmesh_sidecar::error::ErrorFormat;
use llmesh_sidecar::ingress::responses::{self, Store};
use llmesh_sidecar::ingress::{Context, Translation};
use llmesh_sidecar::providers::Chunk;

use super::{each_fixture, pinning_clock, read_json};

/// What the random base of ids reads in a snapshot.
const BASE: &str = "0123456789abcdef";

fn store() -> Store {
    Store::new(16, std::time::Duration::from_secs(3600))
}

/// A chat body and the translation back.
type Chat = (Map<String, Value>, Box<dyn Translation>);

/// The chat body and the translation back, or the refusal as a snapshot value.
fn translate(request: &Map<String, Value>) -> Result<Chat, Value> {
    let store = store();
    let ctx = Context {
        responses: &store,
        request_id: "req_test-1",
    };
    match responses::to_chat(request.clone(), &ctx) {
        Ok((chat, t)) => Ok((chat, t.expect("a translation back"))),
        Err(e) => {
            let body: Value = serde_json::from_slice(&e.body(ErrorFormat::OpenAi)).unwrap();
            Err(json!({"status": e.status.as_u16(), "body": body}))
        }
    }
}

/// Replaces the random base of `response_id` (`resp_<32 hex digits>`) with [`BASE`] wherever
/// it appears in `v`.
fn pin_ids(v: Value, response_id: &Value) -> Value {
    let id = response_id
        .as_str()
        .unwrap_or_else(|| panic!("no response id: {v}"));
    let base = id.strip_prefix("resp_").expect("a resp_ id");
    assert!(
        base.len() == 32 && base.bytes().all(|b| b.is_ascii_hexdigit()),
        "response id {id}"
    );
    serde_json::from_str(&v.to_string().replace(base, BASE)).unwrap()
}

/// The client-facing events of a stream, checking the SSE framing on the way.
fn events(out: VecDeque<Bytes>) -> Vec<Value> {
    let text: String = out
        .iter()
        .map(|b| std::str::from_utf8(b).expect("utf-8"))
        .collect();
    let mut events = Vec::new();
    for (i, block) in text.split_terminator("\n\n").enumerate() {
        let (event, data) = block
            .strip_prefix("event: ")
            .and_then(|b| b.split_once("\ndata: "))
            .unwrap_or_else(|| panic!("not an `event:` + `data:` block: {block:?}"));
        let data: Value = serde_json::from_str(data).expect("data is JSON");
        assert_eq!(data["type"], event, "event name and data.type agree");
        assert_eq!(data["sequence_number"], i, "sequence numbers count from 0");
        events.push(data);
    }
    events
}

fn stream(t: Box<dyn Translation>, chunks: &[Value], error: Option<&str>) -> Vec<Value> {
    let mut enc = t.encoder();
    let mut out = VecDeque::new();
    for c in chunks {
        let chunk = match c {
            Value::String(s) if s == "[DONE]" => Chunk::Done,
            other => Chunk::Data(Bytes::from(other.to_string())),
        };
        enc.chunk(chunk, &mut out);
    }
    if let Some(m) = error {
        enc.error(m, &mut out);
    }
    events(out)
}

#[test]
fn translations() {
    each_fixture("responses", "*.json", 13, |path| {
        let case = read_json(path);
        let actual = pinning_clock("created_at", || run(&case));
        insta::assert_json_snapshot!(actual);
    });
}

/// What one fixture's request, answer and stream become.
fn run(case: &Value) -> Value {
    let request = case["request"].as_object().expect("a request object");
    let (chat, mut t) = match translate(request) {
        Ok(translated) => translated,
        Err(error) => return json!({"error": error}),
    };
    let mut actual = Map::new();
    actual.insert("chat_request".into(), Value::Object(chat));
    if let Some(upstream) = case.get("chat_response") {
        let out = t.response(upstream.to_string().as_bytes(), None).unwrap();
        let r: Value = serde_json::from_slice(&out).unwrap();
        let id = r["id"].clone();
        actual.insert("response".into(), pin_ids(r, &id));
    }
    if let Some(chunks) = case.get("chunks").and_then(Value::as_array) {
        // A fresh translation, as for a streamed request.
        let (_, t) = translate(request).expect("translates again");
        let error = case.get("stream_error").and_then(Value::as_str);
        let ev = Value::Array(stream(t, chunks, error));
        let id = ev[0]["response"]["id"].clone();
        actual.insert("events".into(), pin_ids(ev, &id));
    }
    Value::Object(actual)
}
