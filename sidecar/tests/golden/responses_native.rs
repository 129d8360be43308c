//! OpenAI's Responses API passed through natively (`tests/fixtures/responses_native/`), the
//! fixtures written from OpenAI's Responses API reference:
//!
//! - `<case>.sse` (a whole Responses event stream): the snapshot is how many events reached the
//!   client, whether they are the upstream's bytes unchanged, how the stream ended (a proper end,
//!   a failure reported in-band, or an error that fails over / breaks the stream), and the usage
//!   read on the side; identical whichever way the bytes are split;
//! - `<case>.response.json` (a Response object): the snapshot is the usage read from it; the
//!   body must pass unchanged.
//!
//! Then the passthrough's finer points on the same fixtures.

use bytes::Bytes;
use serde_json::{Map, Value, json};

use llmesh_api::ProviderKind;
use llmesh_api::snapshot::Backend;
use llmesh_sidecar::internal::Endpoint;
use llmesh_sidecar::providers::openai::OpenAiFamily;
use llmesh_sidecar::providers::{Chunk, Decoded, ErrorClass, Native, Provider, UpstreamError};

use super::adapters::{self, case_name, error_json, feed, raw, sent_body, usage_json};
use super::{each_fixture, fixtures};

const KEY: &str = "sk-proj-TestKeyNotReal0123456789";

fn backend() -> Backend {
    adapters::backend(
        ProviderKind::Openai,
        "openai",
        "gpt-4.1",
        "https://api.openai.com/v1",
        KEY,
    )
}

/// Feeds a whole stream to a fresh decoder in pieces of `piece` bytes (0: all at once) (see
/// [`feed`]).
fn run_stream(raw: &[u8], piece: usize) -> Value {
    let mut d = OpenAiFamily.native_stream(&backend());
    let (out, result) = feed(d.as_mut(), raw, piece);
    let mut passed = Vec::new();
    let mut frames = 0;
    let mut done = false;
    for c in &out {
        match c {
            Chunk::Data(b) => {
                assert!(!done, "data after the end");
                frames += 1;
                passed.extend_from_slice(b);
            }
            Chunk::Done => done = true,
        }
    }
    let end = match result {
        Ok(()) => json!("ok"),
        Err(e) => {
            assert!(!e.message.contains(KEY), "the key leaked: {}", e.message);
            error_json(&e)
        }
    };
    json!({
        "events_passed": frames,
        "unchanged": passed == raw || passed.is_empty(),
        "done": done,
        "end": end,
        "failure": d.failure(),
        "usage": usage_json(d.usage()),
        "output_estimate": d.output_estimate(),
    })
}

fn decode(body: Bytes) -> Result<Decoded, UpstreamError> {
    OpenAiFamily.native_decode(&backend(), body)
}

/// The body sent upstream for a native request, `max_tokens` the limit after route limits
/// and budgets.
fn body(native: &Native<'_>, max_tokens: Option<u32>) -> Vec<u8> {
    let req = OpenAiFamily
        .native_request(&backend(), native, false, max_tokens)
        .expect("request");
    serde_json::to_vec(&sent_body(req)).expect("json")
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixtures("responses_native").join(name)).expect("fixture")
}

#[test]
fn streams_in_any_split() {
    each_fixture("responses_native", "*.sse", 10, |path| {
        let name = case_name(path, ".sse");
        let raw = raw(path);
        let whole = run_stream(&raw, 0);
        for piece in [1, 2, 3, 7, 64, 500] {
            assert_eq!(
                run_stream(&raw, piece),
                whole,
                "{name} split every {piece} bytes"
            );
        }
        insta::assert_json_snapshot!(whole);
    });
}

#[test]
fn responses() {
    each_fixture("responses_native", "*.response.json", 3, |path| {
        let raw = raw(path);
        let d = OpenAiFamily
            .native_decode(&backend(), raw.clone())
            .expect("decodes");
        assert_eq!(d.body, raw, "the body must pass unchanged");
        insta::assert_json_snapshot!(json!({"usage": usage_json(d.usage)}));
    });
}

/// Sanity checks on the fixtures themselves, so the goldens cannot silently pin nonsense.
#[test]
fn fixtures_follow_the_documented_event_order() {
    let raw =
        std::fs::read_to_string(fixtures("responses_native").join("stream_text.sse")).unwrap();
    let types: Vec<String> = raw
        .split_terminator("\n\n")
        .map(|e| {
            let data = e.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
            let v: Value = serde_json::from_str(data).unwrap();
            let name = e.lines().find_map(|l| l.strip_prefix("event: ")).unwrap();
            assert_eq!(v["type"], name);
            name.to_string()
        })
        .collect();
    let mut expect = vec![
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ];
    expect.extend(std::iter::repeat_n("response.output_text.delta", 9));
    expect.extend([
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]);
    assert_eq!(types, expect);
}

#[test]
fn usage_comes_from_the_terminal_event_with_cached_tokens_apart() {
    let v = run_stream(&fixture("stream_text.sse"), 0);
    assert_eq!(v["usage"]["prompt"], 1200);
    assert_eq!(v["usage"]["cached_input"], 1024);
    assert_eq!(v["usage"]["output"], 37);
    assert_eq!(v["end"], "ok");
    assert_eq!(v["unchanged"], true);
    let u = decode(Bytes::from(fixture("resp_text.response.json")))
        .unwrap()
        .usage
        .unwrap();
    assert_eq!(
        (u.prompt, u.cached_input, u.uncached_input(), u.output),
        (1200, 1024, 176, 37)
    );
}

#[test]
fn a_stream_without_a_terminal_event_is_broken() {
    let v = run_stream(&fixture("stream_cut.sse"), 0);
    assert_eq!(v["end"]["error"]["reason"], "stream_cut");
    assert_eq!(v["usage"], Value::Null);
    assert!(v["events_passed"].as_u64().unwrap() > 2);
}

#[test]
fn failures_before_the_first_output_fail_over_and_after_it_pass_through() {
    let early = run_stream(&fixture("stream_failed_early.sse"), 0);
    assert_eq!(early["events_passed"], 0);
    assert_eq!(early["end"]["error"]["class"], "Retryable");
    let rate = run_stream(&fixture("stream_error_early.sse"), 0);
    assert_eq!(rate["end"]["error"]["reason"], "status_429");
    let late = run_stream(&fixture("stream_failed_late.sse"), 0);
    assert_eq!(
        (&late["end"], &late["failure"], &late["unchanged"]),
        (&json!("ok"), &json!("response_failed"), &json!(true))
    );
    let late = run_stream(&fixture("stream_error_late.sse"), 0);
    assert_eq!(
        (&late["end"], &late["failure"], &late["done"]),
        (&json!("ok"), &json!("stream_error"), &json!(false))
    );
}

#[test]
fn a_context_window_error_in_the_stream_falls_back_to_a_larger_window() {
    let raw = "event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{}}\n\n\
               event: error\ndata: {\"type\":\"error\",\"sequence_number\":1,\"code\":\"context_length_exceeded\",\"message\":\"Your input exceeds the context window of this model.\",\"param\":\"input\"}\n\n";
    let v = run_stream(raw.as_bytes(), 0);
    assert_eq!(
        v["end"]["error"]["class"],
        format!("{:?}", ErrorClass::ContextWindow)
    );
}

#[test]
fn a_failed_response_fails_over_like_an_early_response_failed() {
    let body = json!({"id": "resp_1", "object": "response", "status": "failed", "output": [],
                      "error": {"code": "server_error", "message": format!("boom for {KEY}")},
                      "usage": null});
    let e = decode(Bytes::from(body.to_string())).unwrap_err();
    assert_eq!(
        (e.class, e.reason),
        (ErrorClass::Retryable, "response_failed")
    );
    assert!(!e.message.contains(KEY), "{}", e.message);
    assert!(e.message.starts_with("server_error: boom for"));
}

#[test]
fn a_malformed_first_event_fails_over() {
    let raw = "event: response.created\ndata: {\"type\":\"response.created\",\"respon\n\n";
    let v = run_stream(raw.as_bytes(), 0);
    assert_eq!(v["end"]["error"]["reason"], "malformed");
    assert!(decode(Bytes::from_static(b"{\"id\":\"resp_1\",\"usa")).is_err());
}

#[test]
fn the_body_keeps_everything_but_the_model_and_the_limit() {
    let b: Map<String, Value> = serde_json::from_value(json!({
        "model": "chat", "input": "hi", "max_output_tokens": 9000,
        "tools": [{"type": "web_search"}], "previous_response_id": "resp_abc",
        "store": false, "include": ["reasoning.encrypted_content"],
        "reasoning": {"effort": "high", "summary": "auto"}, "conversation": "conv_1",
    }))
    .unwrap();
    let native = Native {
        endpoint: Endpoint::Responses,
        body: &b,
        headers: &[],
    };
    let out: Value = serde_json::from_slice(&body(&native, Some(4096))).unwrap();
    let mut expect = Value::Object(b.clone());
    expect["model"] = json!("gpt-4.1");
    expect["max_output_tokens"] = json!(4096);
    assert_eq!(out, expect);
    // Under the limit, or without one, the client's value stays.
    let out: Value = serde_json::from_slice(&body(&native, None)).unwrap();
    assert_eq!(out["max_output_tokens"], 9000);
    let mut small = b.clone();
    small.insert("max_output_tokens".into(), json!(100));
    let native = Native {
        body: &small,
        ..native
    };
    let out: Value = serde_json::from_slice(&body(&native, Some(4096))).unwrap();
    assert_eq!(out["max_output_tokens"], 100);
}
