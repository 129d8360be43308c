//! Error classification and the finer points of the translation. The golden fixtures
//! (`tests/fixtures/anthropic/`) run in the `golden` test binary.

use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderMap, StatusCode};
use serde_json::{Map, Value, json};

use llmesh_api::ProviderKind;
use llmesh_api::prices::Prices;
use llmesh_api::snapshot::{Backend, SecretValue};

use super::response::{MessageStream, decode};
use super::{Anthropic, classify, request};
use crate::providers::{Chunk, ErrorClass, Op, Provider, StreamDecoder, UpstreamError, Usage};
use crate::sse::SseParser;

const CREATED: u64 = 1_700_000_000;
const KEY: &str = "sk-ant-api03-Zx9TestKeyNotReal0000";

fn backend() -> Backend {
    Backend {
        name: "claude".into(),
        variant: "claude".into(),
        provider: ProviderKind::Anthropic,
        model: "claude-sonnet-4-5-20250929".into(),
        base_url: "https://api.anthropic.com/v1".into(),
        api_key: Some(SecretValue::new(KEY)),
        weight: 1,
        prices: Prices::default(),
        priced: false,
        context_window: None,
        max_concurrency: None,
        headers: Vec::new(),
        azure: None,
        mock: None,
    }
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/anthropic")
}

fn error_json(e: &UpstreamError) -> Value {
    json!({"error": {"class": format!("{:?}", e.class), "reason": e.reason, "message": e.message}})
}

fn usage_json(u: Option<Usage>) -> Value {
    match u {
        None => Value::Null,
        Some(u) => json!({
            "prompt": u.prompt,
            "cached_input": u.cached_input,
            "cache_write": u.cache_write,
            "output": u.output,
            "estimated": u.estimated,
        }),
    }
}

/// Feeds a whole transcript to a fresh decoder in pieces of `piece` bytes (0: all at once).
fn run_stream(raw: &[u8], piece: usize, wants_usage: bool) -> Value {
    let mut decoder = MessageStream::new(
        "claude-sonnet-4-5-20250929",
        wants_usage,
        CREATED,
        Some(KEY.into()),
    );
    let mut parser = SseParser::default();
    let mut events = Vec::new();
    let mut chunks = Vec::new();
    let mut end = json!("ok");
    let pieces: Vec<&[u8]> = if piece == 0 {
        vec![raw]
    } else {
        raw.chunks(piece).collect()
    };
    'feed: {
        for p in pieces {
            parser.push(p, &mut events).expect("sse");
            for ev in events.drain(..) {
                if let Err(e) = decoder.event(ev, &mut chunks) {
                    end = error_json(&e);
                    break 'feed;
                }
            }
        }
        parser.finish(&mut events);
        for ev in events.drain(..) {
            if let Err(e) = decoder.event(ev, &mut chunks) {
                end = error_json(&e);
                break 'feed;
            }
        }
        if let Err(e) = decoder.finish(&mut chunks) {
            end = error_json(&e);
        }
    }
    let chunks: Vec<Value> = chunks
        .into_iter()
        .map(|c| match c {
            Chunk::Data(b) => serde_json::from_slice(&b).expect("chunk json"),
            Chunk::Done => json!("[DONE]"),
        })
        .collect();
    json!({"chunks": chunks, "end": end, "usage": usage_json(decoder.usage())})
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

#[test]
fn overloaded_529_is_retryable() {
    let e = classify(
        Some(KEY),
        StatusCode::from_u16(529).expect("status"),
        &HeaderMap::new(),
        &err_body("overloaded_error", "Overloaded"),
    );
    assert_eq!(e.class, ErrorClass::Retryable);
    assert_eq!(e.reason, "overloaded");
    assert_eq!(e.message, "529 overloaded_error: Overloaded");
}

#[test]
fn rate_limit_429_is_retryable_and_keeps_retry_after() {
    let e = classify(
        Some(KEY),
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
    let e = classify(
        Some(KEY),
        StatusCode::TOO_MANY_REQUESTS,
        &HeaderMap::new(),
        body.to_string().as_bytes(),
    );
    assert_eq!(e.class, ErrorClass::Auth);
}

#[test]
fn prompt_too_long_is_a_context_window_error() {
    let e = classify(
        Some(KEY),
        StatusCode::BAD_REQUEST,
        &HeaderMap::new(),
        &err_body(
            "invalid_request_error",
            "prompt is too long: 208310 tokens > 200000 maximum",
        ),
    );
    assert_eq!(e.class, ErrorClass::ContextWindow);
    let e = classify(
        Some(KEY),
        StatusCode::PAYLOAD_TOO_LARGE,
        &HeaderMap::new(),
        &err_body(
            "request_too_large",
            "Request exceeds the maximum allowed number of bytes.",
        ),
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
        let e = classify(
            Some(KEY),
            StatusCode::from_u16(status).expect("status"),
            &HeaderMap::new(),
            &err_body(kind, "something"),
        );
        assert_eq!(e.class, class, "{status} {kind}");
    }
}

#[test]
fn other_400s_are_the_clients_with_the_key_redacted() {
    let e = classify(
        Some(KEY),
        StatusCode::BAD_REQUEST,
        &HeaderMap::new(),
        &err_body(
            "invalid_request_error",
            &format!("messages: roles must alternate (key {KEY})"),
        ),
    );
    assert_eq!(e.class, ErrorClass::Client);
    assert!(!e.message.contains(KEY), "{}", e.message);
    assert!(e.message.contains("roles must alternate"), "{}", e.message);
    // Not an OpenAI body: the handler words the error itself.
    assert!(e.openai_body.is_none());
    let e = classify(
        None,
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
    request::translate(body.as_object().expect("object"), false)
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
    let raw = std::fs::read(fixtures().join("resp_cache_usage.response.json")).expect("fixture");
    let d = decode(&raw, CREATED, None).expect("decode");
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
    let raw = std::fs::read(fixtures().join("stream_error_overloaded.sse")).expect("fixture");
    let out = run_stream(&raw, 0, true);
    assert_eq!(out["chunks"], json!([]));
    assert_eq!(out["end"]["error"]["class"], "Retryable");
}

#[test]
fn a_cut_stream_is_charged_for_what_it_sent() {
    let raw = std::fs::read(fixtures().join("stream_cut.sse")).expect("fixture");
    let out = run_stream(&raw, 0, false);
    assert_eq!(out["end"]["error"]["reason"], "stream_cut");
    // 54 bytes of text: about 14 tokens, more than message_start's 1.
    assert_eq!(out["usage"]["output"], 14);
    assert_eq!(out["usage"]["estimated"], true);
}

#[test]
fn an_error_body_under_a_200_is_an_error() {
    let e =
        decode(&err_body("overloaded_error", "Overloaded"), CREATED, None).expect_err("error body");
    assert_eq!(e.class, ErrorClass::Retryable);
    assert_eq!(e.reason, "overloaded");
    let e = decode(b"{\"id\": 1", CREATED, None).expect_err("truncated");
    assert_eq!(e.reason, "malformed");
}
