//! The Gemini adapter (`tests/fixtures/gemini/`):
//!
//! - `req_<case>.openai.json` (an OpenAI request): the snapshot is the URL and Gemini body;
//! - `<case>.response.json` (a `GenerateContentResponse`): the snapshot is the OpenAI body, or
//!   the classified error;
//! - `<case>.sse` (a whole `alt=sse` stream): the snapshot is the OpenAI chunks, the stream's
//!   end and the usage, identical whichever way the bytes are split. Cases named `*_usage`
//!   stream as for a client that asked for `stream_options.include_usage`.
//!
//! Tool-call and completion ids come from the thread's generator, seeded before each decoder
//! is made, so the snapshots are stable.
//!
//! Then error classification and the finer points of the translation.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use serde_json::{Map, Value, json};

use llmesh_api::ProviderKind;
use llmesh_api::snapshot::Backend;
use llmesh_sidecar::providers::gemini::Gemini;
use llmesh_sidecar::providers::{ErrorClass, Op, Provider, UpstreamError};

use super::adapters::{self, decoded, pinning_created, raw, request, same_in_any_split};
use super::{each_fixture, fixtures, read_json};

const KEY: &str = "AIzaSyD-TestKeyNotReal-0000000000000";
const SEED: u64 = 42;

fn backend() -> Backend {
    adapters::backend(
        ProviderKind::Gemini,
        "gemini",
        "gemini-2.5-flash",
        "https://generativelanguage.googleapis.com/v1beta",
        KEY,
    )
}

#[test]
fn requests() {
    each_fixture("gemini", "req_*.openai.json", 7, |path| {
        let input = read_json(path);
        let body = input.as_object().expect("object body");
        insta::assert_json_snapshot!(request(&Gemini, &backend(), body));
    });
}

#[test]
fn responses() {
    each_fixture("gemini", "*.response.json", 6, |path| {
        let actual = pinning_created(|| {
            fastrand::seed(SEED);
            decoded(Gemini.decode(&backend(), Op::Chat, raw(path)))
        });
        insta::assert_json_snapshot!(actual);
    });
}

#[test]
fn streams_in_any_split() {
    each_fixture("gemini", "*.sse", 8, |path| {
        let whole = same_in_any_split(path, |wants_usage| {
            fastrand::seed(SEED);
            Gemini.stream(&backend(), Op::Chat, wants_usage)
        });
        insta::assert_json_snapshot!(whole);
    });
}

/// Feeds a whole transcript to a fresh decoder, its ids seeded, in pieces of `piece` bytes (0:
/// all at once).
fn run_stream(raw: &[u8], piece: usize, wants_usage: bool) -> Value {
    fastrand::seed(SEED);
    adapters::run_stream(Gemini.stream(&backend(), Op::Chat, wants_usage), raw, piece)
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixtures("gemini").join(name)).expect("fixture")
}

#[test]
fn safety_blocks_before_content_fail_over() {
    for case in ["stream_prompt_blocked", "stream_answer_blocked"] {
        let out = run_stream(&fixture(&format!("{case}.sse")), 0, false);
        assert_eq!(
            out["chunks"],
            json!([]),
            "{case}: nothing may reach the client"
        );
        assert_eq!(out["end"]["error"]["class"], "ContentPolicy", "{case}");
    }
    for case in ["resp_prompt_blocked", "resp_answer_blocked"] {
        let raw = fixture(&format!("{case}.response.json"));
        let e = Gemini
            .decode(&backend(), Op::Chat, Bytes::from(raw))
            .expect_err(case);
        assert_eq!(e.class, ErrorClass::ContentPolicy, "{case}");
    }
    // Once text went out, a later SAFETY stop is an ordinary content_filter finish.
    let out = run_stream(&fixture("stream_safety_midway.sse"), 0, false);
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
    Gemini.error(
        &backend(),
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
    let e = Gemini.error(
        &backend(),
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
    let e = Gemini.error(
        &backend(),
        StatusCode::SERVICE_UNAVAILABLE,
        &HeaderMap::new(),
        body.as_bytes(),
    );
    assert_eq!(e.class, ErrorClass::Retryable);
    assert!(e.message.contains("busy"));
    let e = Gemini.error(
        &backend(),
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

fn translate(body: Value) -> Result<Map<String, Value>, UpstreamError> {
    adapters::translate(&Gemini, &backend(), body)
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
