//! The Anthropic adapter (`tests/fixtures/anthropic/`):
//!
//! - `req_<case>.openai.json` (an OpenAI request): the snapshot is the URL and Messages body;
//! - `<case>.response.json` (a Messages answer): the snapshot is the OpenAI body and the
//!   normalised usage, or the classified error;
//! - `<case>.sse` (a whole Messages stream): the snapshot is the OpenAI chunks, the stream's end
//!   and the usage, identical whichever way the bytes are split. Cases named `*_usage` stream as
//!   for a client that asked for `stream_options.include_usage`.
//!
//! Then error classification and the finer points of the translation.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use serde_json::{Map, Value, json};

use llmesh_api::ProviderKind;
use llmesh_api::snapshot::Backend;
use llmesh_sidecar::providers::anthropic::Anthropic;
use llmesh_sidecar::providers::{Decoded, ErrorClass, Op, Provider, UpstreamError, Usage};

use super::adapters::{self, decoded, pinning_created, raw, request, same_in_any_split};
use super::{each_fixture, fixtures, read_json};

const KEY: &str = "sk-ant-api03-Zx9TestKeyNotReal0000";

fn backend() -> Backend {
    adapters::backend(
        ProviderKind::Anthropic,
        "claude",
        "claude-sonnet-4-5-20250929",
        "https://api.anthropic.com/v1",
        KEY,
    )
}

#[test]
fn requests() {
    each_fixture("anthropic", "req_*.openai.json", 6, |path| {
        let input = read_json(path);
        let body = input.as_object().expect("object body");
        insta::assert_json_snapshot!(request(&Anthropic, &backend(), body));
    });
}

#[test]
fn responses() {
    each_fixture("anthropic", "*.response.json", 7, |path| {
        let actual = pinning_created(|| decoded(Anthropic.decode(&backend(), Op::Chat, raw(path))));
        insta::assert_json_snapshot!(actual);
    });
}

#[test]
fn streams_in_any_split() {
    each_fixture("anthropic", "*.sse", 8, |path| {
        let whole = same_in_any_split(path, |wants_usage| {
            Anthropic.stream(&backend(), Op::Chat, wants_usage)
        });
        insta::assert_json_snapshot!(whole);
    });
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(
            http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
            v.parse().expect("value"),
        );
    }
    h
}

fn err_body(kind: &str, message: &str) -> Vec<u8> {
    json!({"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy"})
        .to_string()
        .into_bytes()
}

/// How the adapter classifies an Anthropic error of `kind` answered with `status`.
fn classify(status: u16, kind: &str, message: &str) -> UpstreamError {
    Anthropic.error(
        &backend(),
        StatusCode::from_u16(status).expect("status"),
        &HeaderMap::new(),
        &err_body(kind, message),
    )
}

#[test]
fn overloaded_529_is_retryable() {
    let e = classify(529, "overloaded_error", "Overloaded");
    assert_eq!(e.class, ErrorClass::Retryable);
    assert_eq!(e.reason, "overloaded");
    assert_eq!(e.message, "529 overloaded_error: Overloaded");
}

#[test]
fn rate_limit_429_is_retryable_and_keeps_retry_after() {
    let e = Anthropic.error(
        &backend(),
        StatusCode::TOO_MANY_REQUESTS,
        &headers(&[("retry-after", "7")]),
        &err_body(
            "rate_limit_error",
            "This request would exceed the rate limit for your organization of 50 input tokens per minute.",
        ),
    );
    assert_eq!(e.class, ErrorClass::Retryable);
    assert_eq!(e.status, Some(StatusCode::TOO_MANY_REQUESTS));
    assert_eq!(e.retry_after, Some(Duration::from_secs(7)));
}

#[test]
fn spend_cap_429_takes_the_backend_out() {
    let body = json!({"type": "error", "error": {"type": "rate_limit_error", "message": "You have reached your monthly spend limit.", "details": {"error_code": "enforced_spend_limit_reached"}}});
    let e = Anthropic.error(
        &backend(),
        StatusCode::TOO_MANY_REQUESTS,
        &HeaderMap::new(),
        body.to_string().as_bytes(),
    );
    assert_eq!(e.class, ErrorClass::Auth);
}

#[test]
fn prompt_too_long_is_a_context_window_error() {
    let e = classify(
        400,
        "invalid_request_error",
        "prompt is too long: 208310 tokens > 200000 maximum",
    );
    assert_eq!(e.class, ErrorClass::ContextWindow);
    let e = classify(
        413,
        "request_too_large",
        "Request exceeds the maximum allowed number of bytes.",
    );
    assert_eq!(e.class, ErrorClass::ContextWindow);
}

#[test]
fn auth_and_missing_model_errors() {
    let cases = [
        (401, "authentication_error", ErrorClass::Auth),
        (403, "permission_error", ErrorClass::Auth),
        (402, "billing_error", ErrorClass::Auth),
        (404, "not_found_error", ErrorClass::NotFound),
        (500, "api_error", ErrorClass::Retryable),
        (503, "api_error", ErrorClass::Retryable),
        (504, "api_error", ErrorClass::Retryable),
    ];
    for (status, kind, class) in cases {
        let e = classify(status, kind, "something");
        assert_eq!(e.class, class, "{status} {kind}");
    }
}

#[test]
fn other_400s_are_the_clients_with_the_key_redacted() {
    let e = classify(
        400,
        "invalid_request_error",
        &format!("messages: roles must alternate (key {KEY})"),
    );
    assert_eq!(e.class, ErrorClass::Client);
    assert!(!e.message.contains(KEY), "{}", e.message);
    assert!(e.message.contains("roles must alternate"), "{}", e.message);
    // Not an OpenAI body: the handler words the error itself.
    assert!(e.openai_body.is_none());
    let e = Anthropic.error(
        &Backend {
            api_key: None,
            ..backend()
        },
        StatusCode::BAD_REQUEST,
        &HeaderMap::new(),
        b"<html>bad gateway</html>",
    );
    assert_eq!(e.class, ErrorClass::Client);
    assert!(e.message.contains("<html>"));
}

#[test]
fn requests_carry_the_key_the_version_and_backend_headers() {
    let mut b = backend();
    let body = json!({"model": "claude-sonnet-4-5-20250929", "messages": [{"role": "user", "content": "hi"}]});
    let req = Anthropic
        .request(&b, Op::Chat, body.as_object().expect("obj"), None, true)
        .expect("request");
    assert_eq!(req.uri(), "https://api.anthropic.com/v1/messages");
    let h = req.headers();
    assert_eq!(h["x-api-key"], KEY);
    assert!(h["x-api-key"].is_sensitive());
    assert_eq!(h["anthropic-version"], "2023-06-01");
    assert_eq!(h["content-type"], "application/json");
    assert_eq!(h["accept"], "text/event-stream");
    assert!(h.get("authorization").is_none());

    b.headers = vec![
        ("anthropic-version".into(), "2024-01-01".into()),
        ("anthropic-beta".into(), "prompt-caching-2024-07-31".into()),
    ];
    let req = Anthropic
        .request(&b, Op::Chat, body.as_object().expect("obj"), None, false)
        .expect("request");
    let versions: Vec<_> = req.headers().get_all("anthropic-version").iter().collect();
    assert_eq!(versions, ["2024-01-01"]);
    assert_eq!(req.headers()["anthropic-beta"], "prompt-caching-2024-07-31");
}

fn translate(body: Value) -> Result<Map<String, Value>, UpstreamError> {
    adapters::translate(&Anthropic, &backend(), body)
}

fn decode(body: &[u8]) -> Result<Decoded, UpstreamError> {
    Anthropic.decode(&backend(), Op::Chat, Bytes::copy_from_slice(body))
}

fn run_stream(raw: &[u8], piece: usize, wants_usage: bool) -> Value {
    adapters::run_stream(
        Anthropic.stream(&backend(), Op::Chat, wants_usage),
        raw,
        piece,
    )
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixtures("anthropic").join(name)).expect("fixture")
}

#[test]
fn what_anthropic_cannot_express_falls_to_the_next_backend() {
    let base = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    let with = |k: &str, v: Value| {
        let mut b = base.clone();
        b[k] = v;
        b
    };
    for body in [
        with("n", json!(2)),
        with("logprobs", json!(true)),
        with("modalities", json!(["text", "audio"])),
        with("functions", json!([{"name": "f"}])),
        with("tools", json!([{"type": "web_search"}])),
        with(
            "messages",
            json!([{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]}]),
        ),
        with(
            "messages",
            json!([{"role": "assistant", "tool_calls": [{"id": "t", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]}]),
        ),
    ] {
        let e = translate(body.clone()).expect_err(&body.to_string());
        assert_eq!(e.class, ErrorClass::Unsupported, "{body}");
    }
    assert!(translate(with("n", json!(1))).is_ok());
    assert!(!Anthropic.supports(Op::Embedding));
    assert!(!Anthropic.supports(Op::Completion));
    assert!(Anthropic.supports(Op::Chat));
}

#[test]
fn tool_choice_maps_onto_anthropics_four_kinds() {
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}}]);
    let choice = |c: Value| {
        let out = translate(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": tools, "tool_choice": c}))
            .expect("translate");
        out.get("tool_choice").cloned().unwrap_or(Value::Null)
    };
    assert_eq!(choice(json!("auto")), json!({"type": "auto"}));
    assert_eq!(choice(json!("none")), json!({"type": "none"}));
    assert_eq!(choice(json!("required")), json!({"type": "any"}));
    assert_eq!(
        choice(json!({"type": "function", "function": {"name": "get_weather"}})),
        json!({"type": "tool", "name": "get_weather"})
    );
    // Without tools a tool_choice means nothing, and Anthropic would refuse it.
    let out = translate(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "tool_choice": "auto"}))
        .expect("translate");
    assert!(!out.contains_key("tool_choice"));
}

#[test]
fn cache_tokens_are_part_of_the_prompt() {
    let d = decode(&fixture("resp_cache_usage.response.json")).expect("decode");
    assert_eq!(
        d.usage,
        Some(Usage {
            prompt: 21 + 1000 + 188_086,
            cached_input: 188_086,
            cache_write: 1000,
            output: 393,
            estimated: false,
        })
    );
}

#[test]
fn an_error_event_before_content_leaves_nothing_for_the_client() {
    // The attempt loop fails over only while no chunk exists: message_start must not make one.
    let out = run_stream(&fixture("stream_error_overloaded.sse"), 0, true);
    assert_eq!(out["chunks"], json!([]));
    assert_eq!(out["end"]["error"]["class"], "Retryable");
}

#[test]
fn a_cut_stream_is_charged_for_what_it_sent() {
    let out = run_stream(&fixture("stream_cut.sse"), 0, false);
    assert_eq!(out["end"]["error"]["reason"], "stream_cut");
    // 54 bytes of text: about 14 tokens, more than message_start's 1.
    assert_eq!(out["usage"]["output"], 14);
    assert_eq!(out["usage"]["estimated"], true);
}

#[test]
fn an_error_body_under_a_200_is_an_error() {
    let e = decode(&err_body("overloaded_error", "Overloaded")).expect_err("error body");
    assert_eq!(e.class, ErrorClass::Retryable);
    assert_eq!(e.reason, "overloaded");
    let e = decode(b"{\"id\": 1").expect_err("truncated");
    assert_eq!(e.reason, "malformed");
}
