//! The store-backed behaviour of the Responses translation (`previous_response_id`,
//! `item_reference`, `store: false`). The golden files (`tests/fixtures/responses/*.json`) run
//! in the `golden` test binary.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::stream::Encoder;
use super::{Ids, Store, request};
use crate::error::ErrorFormat;
use crate::internal::Chunk;
use crate::internal::StreamEncoder;

fn ids() -> Ids {
    Ids::fixed("0123456789abcdef", 1_700_000_000)
}

fn store() -> Store {
    Store::new(16, Duration::from_secs(3600))
}

fn object(v: &Value) -> Map<String, Value> {
    v.as_object().cloned().expect("a JSON object")
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

fn stream(pending: super::Pending, chunks: &[Value], error: Option<&str>) -> Vec<Value> {
    let mut enc = Encoder::new(pending);
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

fn completion(content: Value, tool_calls: Option<Value>, finish: &str) -> Vec<u8> {
    let mut message = json!({"role": "assistant", "content": content});
    if let Some(t) = tool_calls {
        message["tool_calls"] = t;
    }
    json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    })
    .to_string()
    .into_bytes()
}

#[test]
fn previous_response_id_prepends_the_stored_conversation_but_not_its_instructions() {
    let store = store();
    let first = json!({"model": "chat", "instructions": "Be brief.", "input": "Hi, I am Ada.",
                       "tools": [{"type": "function", "name": "lookup", "parameters": {"type": "object"}}]});
    let (_, p1) = request::translate(object(&first), &store, Ids::fixed("aa", 1)).unwrap();
    let calls = json!([{"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\":\"Ada\"}"}}]);
    let r1 = p1
        .complete(
            &completion(json!("Hello Ada."), Some(calls.clone()), "tool_calls"),
            None,
        )
        .unwrap();
    assert_eq!(r1["id"], "resp_aa");
    assert_eq!(r1["output"][0]["type"], "message");
    assert_eq!(r1["output"][1]["call_id"], "call_1");

    let second = json!({"model": "chat", "previous_response_id": "resp_aa", "instructions": "Be formal.",
        "input": [{"type": "function_call_output", "call_id": "call_1", "output": "found"}]});
    let (chat, p2) = request::translate(object(&second), &store, Ids::fixed("bb", 2)).unwrap();
    assert_eq!(
        chat["messages"],
        json!([
            {"role": "system", "content": "Be formal."},
            {"role": "user", "content": "Hi, I am Ada."},
            {"role": "assistant", "content": "Hello Ada.", "tool_calls": calls},
            {"role": "tool", "tool_call_id": "call_1", "content": "found"},
        ])
    );
    let r2 = p2
        .complete(&completion(json!("Ada was found."), None, "stop"), None)
        .unwrap();
    assert_eq!(r2["previous_response_id"], "resp_aa");

    // The chain goes on: the third turn sees all of it.
    let third = json!({"model": "chat", "previous_response_id": "resp_bb", "input": "Thanks"});
    let (chat, _) = request::translate(object(&third), &store, Ids::fixed("cc", 3)).unwrap();
    let roles: Vec<&str> = chat["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["user", "assistant", "tool", "assistant", "user"]);
    assert_eq!(chat["messages"][3]["content"], "Ada was found.");
}

#[test]
fn an_unknown_previous_response_id_is_an_openai_shaped_400() {
    let body = json!({"model": "chat", "previous_response_id": "resp_nope", "input": "hi"});
    let e = request::translate(object(&body), &store(), ids())
        .err()
        .unwrap();
    assert_eq!(e.status, 400);
    let v: Value = serde_json::from_slice(&e.body(ErrorFormat::OpenAi)).unwrap();
    assert_eq!(v["error"]["param"], "previous_response_id");
    assert_eq!(v["error"]["code"], "previous_response_not_found");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("'resp_nope' not found")
    );
}

#[test]
fn store_false_keeps_nothing() {
    let store = store();
    let body = json!({"model": "chat", "input": "hi", "store": false});
    let (_, p) = request::translate(object(&body), &store, Ids::fixed("aa", 1)).unwrap();
    let r = p
        .complete(&completion(json!("hello"), None, "stop"), None)
        .unwrap();
    assert_eq!(r["store"], false);
    assert!(store.is_empty());
    assert!(super::retrieve(&store, "resp_aa").is_err());
}

#[test]
fn item_references_resolve_to_stored_output_items() {
    let store = store();
    let (_, p) = request::translate(
        object(&json!({"model": "chat", "input": "hi"})),
        &store,
        Ids::fixed("aa", 1),
    )
    .unwrap();
    p.complete(&completion(json!("hello"), None, "stop"), None)
        .unwrap();
    let body = json!({"model": "chat", "input": [
        {"role": "user", "content": "hi"},
        {"type": "item_reference", "id": "msg_aa_0"},
        {"role": "user", "content": "again"},
    ]});
    let (chat, _) = request::translate(object(&body), &store, ids()).unwrap();
    assert_eq!(
        chat["messages"][1],
        json!({"role": "assistant", "content": "hello"})
    );

    let missing = json!({"model": "chat", "input": [{"type": "item_reference", "id": "msg_zz_0"}]});
    let e = request::translate(object(&missing), &store, ids())
        .err()
        .unwrap();
    assert_eq!(e.param.as_deref(), Some("input[0].id"));
}

#[test]
fn retrieve_and_delete_answer_stored_responses() {
    let store = store();
    let (_, p) = request::translate(
        object(&json!({"model": "chat", "input": "hi", "metadata": {"k": "v"}})),
        &store,
        Ids::fixed("aa", 1),
    )
    .unwrap();
    p.complete(&completion(json!("hello"), None, "stop"), None)
        .unwrap();
    let got: Value = serde_json::from_slice(&super::retrieve(&store, "resp_aa").unwrap()).unwrap();
    assert_eq!(got["output"][0]["content"][0]["text"], "hello");
    assert_eq!(got["metadata"], json!({"k": "v"}));
    let deleted: Value =
        serde_json::from_slice(&super::delete(&store, "resp_aa").unwrap()).unwrap();
    assert_eq!(deleted["deleted"], true);
    assert_eq!(
        super::retrieve(&store, "resp_aa").err().unwrap().status,
        404
    );
}

#[test]
fn unsupported_inputs_name_the_field_and_the_fix() {
    let cases = [
        (
            json!({"model": "c", "input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file-1"}]}]}),
            "input[0].content[0].file_id",
            "image_url",
        ),
        (
            json!({"model": "c", "input": "x", "tools": [{"type": "file_search", "vector_store_ids": ["vs"]}]}),
            "tools[0]",
            "cannot be run by the chosen backend",
        ),
        (
            json!({"model": "c", "input": "x", "tool_choice": {"type": "web_search_preview"}}),
            "tool_choice",
            "`web_search_preview`",
        ),
        (
            json!({"model": "c", "input": [{"type": "web_search_call", "id": "ws_1", "status": "completed"}]}),
            "input[0].type",
            "`web_search_call` item",
        ),
        (
            json!({"model": "c", "input": "x", "background": true}),
            "background",
            "not supported",
        ),
        (json!({"model": "c"}), "input", "input is required"),
        (
            json!({"model": "c", "input": "x", "text": {"format": {"type": "json_schema", "schema": {}}}}),
            "text.format.name",
            "needs a name",
        ),
    ];
    for (body, param, says) in cases {
        let e = request::translate(object(&body), &store(), ids())
            .err()
            .unwrap_or_else(|| panic!("{body} should be refused"));
        assert_eq!(e.status, 400, "{body}");
        assert_eq!(e.param.as_deref(), Some(param), "{body}");
        assert!(e.message.contains(says), "{body}: {}", e.message);
    }
}

#[test]
fn allowed_tools_narrows_the_tool_list() {
    let body = json!({"model": "c", "input": "x",
        "tools": [{"type": "function", "name": "a"}, {"type": "function", "name": "b"}],
        "tool_choice": {"type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "b"}]}});
    let (chat, _) = request::translate(object(&body), &store(), ids()).unwrap();
    assert_eq!(
        chat["tools"],
        json!([{"type": "function", "function": {"name": "b"}}])
    );
    assert_eq!(chat["tool_choice"], "required");
}

#[test]
fn an_error_before_any_chunk_still_opens_and_fails_the_response() {
    let (_, p) = request::translate(
        object(&json!({"model": "chat", "input": "x", "stream": true})),
        &store(),
        ids(),
    )
    .unwrap();
    let ev = stream(p, &[], Some("boom"));
    let types: Vec<&str> = ev.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "response.created",
            "response.in_progress",
            "error",
            "response.failed"
        ]
    );
    assert_eq!(ev[3]["response"]["status"], "failed");
    assert_eq!(ev[3]["response"]["error"]["message"], "boom");
}
