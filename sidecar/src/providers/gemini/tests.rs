//! Error classification and the finer points of the translation. The golden fixtures
//! (`tests/fixtures/gemini/`) run in the `golden` test binary.

use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderMap, StatusCode};
use serde_json::{Map, Value, json};

use llmesh_api::ProviderKind;
use llmesh_api::prices::Prices;
use llmesh_api::snapshot::{Backend, SecretValue};

use super::response::{GeminiStream, call_id, decode, signature_of};
use super::{Gemini, classify, request, schema};
use crate::providers::{Chunk, ErrorClass, Op, Provider, StreamDecoder, UpstreamError, Usage};
use crate::sse::SseParser;

const CREATED: u64 = 1_700_000_000;
const KEY: &str = "AIzaSyD-TestKeyNotReal-0000000000000";
const SEED: u64 = 42;

fn backend() -> Backend {
    Backend {
        name: "gemini".into(),
        variant: "gemini".into(),
        provider: ProviderKind::Gemini,
        model: "gemini-2.5-flash".into(),
        base_url: "https://generativelanguage.googleapis.com/v1beta".into(),
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
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gemini")
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
    let mut decoder = GeminiStream::new(
        "gemini-2.5-flash",
        wants_usage,
        CREATED,
        fastrand::Rng::with_seed(SEED),
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

#[test]
fn safety_blocks_before_content_fail_over() {
    for case in ["stream_prompt_blocked", "stream_answer_blocked"] {
        let raw = std::fs::read(fixtures().join(format!("{case}.sse"))).expect("fixture");
        let out = run_stream(&raw, 0, false);
        assert_eq!(
            out["chunks"],
            json!([]),
            "{case}: nothing may reach the client"
        );
        assert_eq!(out["end"]["error"]["class"], "ContentPolicy", "{case}");
    }
    for case in ["resp_prompt_blocked", "resp_answer_blocked"] {
        let raw = std::fs::read(fixtures().join(format!("{case}.response.json"))).expect("fixture");
        let e = decode(&raw, "m", CREATED, &mut fastrand::Rng::with_seed(1), None).expect_err(case);
        assert_eq!(e.class, ErrorClass::ContentPolicy, "{case}");
    }
    // Once text went out, a later SAFETY stop is an ordinary content_filter finish.
    let raw = std::fs::read(fixtures().join("stream_safety_midway.sse")).expect("fixture");
    let out = run_stream(&raw, 0, false);
    assert_eq!(out["end"], "ok");
    assert_eq!(
        out["chunks"][1]["choices"][0]["finish_reason"],
        "content_filter"
    );
}

fn google_error(code: u16, status: &str, message: &str, details: Value) -> Vec<u8> {
    json!({"error": {"code": code, "message": message, "status": status, "details": details}})
        .to_string()
        .into_bytes()
}

fn classify_status(code: u16, status: &str, message: &str, details: Value) -> UpstreamError {
    classify(
        Some(KEY),
        StatusCode::from_u16(code).expect("status"),
        &HeaderMap::new(),
        &google_error(code, status, message, details),
    )
}

#[test]
fn resource_exhausted_is_retryable_after_googles_retry_delay() {
    let details = json!([
        {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{"quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests", "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"}]},
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "46s"}
    ]);
    let e = classify_status(
        429,
        "RESOURCE_EXHAUSTED",
        "You exceeded your current quota.",
        details.clone(),
    );
    assert_eq!(e.class, ErrorClass::Retryable);
    assert_eq!(e.retry_after, Some(Duration::from_secs(46)));
    assert_eq!(e.status, Some(StatusCode::TOO_MANY_REQUESTS));
    // A retry-after header, when present, wins.
    let mut h = HeaderMap::new();
    h.insert("retry-after", "3".parse().expect("value"));
    let e = classify(
        Some(KEY),
        StatusCode::TOO_MANY_REQUESTS,
        &h,
        &google_error(429, "RESOURCE_EXHAUSTED", "quota", details),
    );
    assert_eq!(e.retry_after, Some(Duration::from_secs(3)));
}

#[test]
fn error_classes_follow_googles_status_codes() {
    let cases = [
        (
            500,
            "INTERNAL",
            "An internal error has occurred.",
            ErrorClass::Retryable,
        ),
        (
            503,
            "UNAVAILABLE",
            "The model is overloaded.",
            ErrorClass::Retryable,
        ),
        (
            504,
            "DEADLINE_EXCEEDED",
            "Deadline exceeded.",
            ErrorClass::Retryable,
        ),
        (
            403,
            "PERMISSION_DENIED",
            "Permission denied.",
            ErrorClass::Auth,
        ),
        (
            401,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials.",
            ErrorClass::Auth,
        ),
        (
            404,
            "NOT_FOUND",
            "models/gemini-9 is not found for API version v1beta.",
            ErrorClass::NotFound,
        ),
        (
            400,
            "FAILED_PRECONDITION",
            "User location is not supported for the API use.",
            ErrorClass::Auth,
        ),
        (
            400,
            "INVALID_ARGUMENT",
            "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).",
            ErrorClass::ContextWindow,
        ),
        (
            400,
            "INVALID_ARGUMENT",
            "* GenerateContentRequest.contents: contents is not specified",
            ErrorClass::Client,
        ),
    ];
    for (code, status, message, class) in cases {
        let e = classify_status(code, status, message, json!([]));
        assert_eq!(e.class, class, "{code} {status}");
        assert!(e.message.contains(status), "{}", e.message);
    }
}

#[test]
fn an_invalid_key_is_an_auth_error_and_never_shown() {
    let details = json!([{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID", "domain": "googleapis.com"}]);
    let e = classify_status(
        400,
        "INVALID_ARGUMENT",
        &format!("API key not valid. Please pass a valid API key. ({KEY})"),
        details,
    );
    assert_eq!(e.class, ErrorClass::Auth);
    assert!(!e.message.contains(KEY), "{}", e.message);
    assert!(!e.message.contains("AIza"), "{}", e.message);
}

#[test]
fn array_wrapped_and_unparsable_errors() {
    let body = format!(
        "[{}]",
        String::from_utf8(google_error(503, "UNAVAILABLE", "busy", json!([]))).expect("utf8")
    );
    let e = classify(
        Some(KEY),
        StatusCode::SERVICE_UNAVAILABLE,
        &HeaderMap::new(),
        body.as_bytes(),
    );
    assert_eq!(e.class, ErrorClass::Retryable);
    assert!(e.message.contains("busy"));
    let e = classify(
        Some(KEY),
        StatusCode::BAD_REQUEST,
        &HeaderMap::new(),
        b"not json",
    );
    assert_eq!(e.class, ErrorClass::Client);
}

#[test]
fn requests_carry_the_key_and_pick_the_endpoint() {
    let body =
        json!({"model": "gemini-2.5-flash", "messages": [{"role": "user", "content": "hi"}]});
    let body = body.as_object().expect("obj");
    let req = Gemini
        .request(&backend(), Op::Chat, body, None, false)
        .expect("request");
    assert_eq!(
        req.uri(),
        "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent"
    );
    assert_eq!(req.headers()["x-goog-api-key"], KEY);
    assert!(req.headers()["x-goog-api-key"].is_sensitive());
    assert!(
        !req.uri().to_string().contains(KEY),
        "the key stays out of the URL"
    );
    let req = Gemini
        .request(&backend(), Op::Chat, body, None, true)
        .expect("request");
    assert_eq!(
        req.uri(),
        "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    );
    assert_eq!(req.headers()["accept"], "text/event-stream");
    let mut tuned = body.clone();
    tuned.insert("model".into(), "tunedModels/my-model-123".into());
    let req = Gemini
        .request(&backend(), Op::Chat, &tuned, None, false)
        .expect("request");
    assert_eq!(
        req.uri(),
        "https://generativelanguage.googleapis.com/v1beta/tunedModels/my-model-123:generateContent"
    );
    assert!(!Gemini.supports(Op::Embedding));
    assert!(Gemini.supports(Op::Chat));
}

#[test]
fn thought_signatures_ride_in_tool_call_ids() {
    let mut rng = fastrand::Rng::with_seed(9);
    let sig = "CiQB0e2Kb7Wz+/x9Aw==";
    let id = call_id(&mut rng, Some(sig));
    assert!(id.starts_with("call_"));
    assert!(
        id.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
        "{id}"
    );
    assert_eq!(signature_of(&id).as_deref(), Some(sig));
    assert_eq!(signature_of(&call_id(&mut rng, None)), None);
    assert_eq!(signature_of("toolu_01A09q90qw90lq917835lq9"), None);
}

fn translate(body: Value) -> Result<Map<String, Value>, UpstreamError> {
    request::translate(body.as_object().expect("object"), "gemini-2.5-flash")
}

#[test]
fn what_gemini_cannot_express_is_refused() {
    let unsupported = [
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "logprobs": true}),
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "functions": []}),
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "file_search"}]}),
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function", "function": {"name": "tree", "parameters": {"$defs": {"Node": {"type": "object", "properties": {"children": {"type": "array", "items": {"$ref": "#/$defs/Node"}}}}}, "$ref": "#/$defs/Node"}}}]}),
    ];
    for body in unsupported {
        let e = translate(body.clone()).expect_err(&body.to_string());
        assert_eq!(e.class, ErrorClass::Unsupported, "{body}");
    }
    // A tool result for a call no assistant made is the client's mistake.
    let e = translate(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "call_x", "content": "1"}]}))
        .expect_err("orphan tool result");
    assert_eq!(e.class, ErrorClass::Client);
}

#[test]
fn schemas_keep_only_what_gemini_reads() {
    let s = schema::convert(&json!({
        "type": "object",
        "additionalProperties": false,
        "$schema": "http://json-schema.org/draft-07/schema#",
        "properties": {"a": {"type": ["integer", "null"], "minimum": 1, "examples": [1]}},
        "required": ["a"]
    }))
    .expect("convertible");
    assert_eq!(
        s,
        json!({"type": "OBJECT", "properties": {"a": {"type": "INTEGER", "minimum": 1, "nullable": true}}, "required": ["a"]})
    );
}
