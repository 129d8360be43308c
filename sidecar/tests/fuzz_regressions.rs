//! Inputs the fuzz targets (fuzz/) found failing, minimised, kept as ordinary tests.

use bytes::Bytes;
use llmesh_api::ProviderKind;
use llmesh_api::prices::Prices;
use llmesh_api::snapshot::Backend;
use llmesh_sidecar::providers::{Op, Usage, for_kind};
use llmesh_sidecar::sse::{SseEvent, SseParser};
use serde_json::Value;

fn backend(provider: ProviderKind) -> Backend {
    Backend {
        name: "b".into(),
        variant: "b".into(),
        provider,
        model: "some-model".into(),
        base_url: "http://127.0.0.1:1/v1".into(),
        api_key: None,
        weight: 1,
        prices: Prices::default(),
        priced: false,
        context_window: None,
        max_concurrency: None,
        headers: vec![],
        azure: None,
        mock: None,
    }
}

fn decode(kind: ProviderKind, body: &str) -> (Usage, Value) {
    let d = for_kind(kind)
        .decode(&backend(kind), Op::Chat, Bytes::from(body.to_string()))
        .expect("decoded");
    (
        d.usage.expect("usage"),
        serde_json::from_slice(&d.body).unwrap(),
    )
}

/// fuzz target `usage_readers`: Anthropic's prompt is its three input counts together, which
/// overflowed (a panic in debug builds, a wrapped, tiny prompt in release ones).
#[test]
fn anthropic_usage_past_u64_saturates() {
    let (u, body) = decode(
        ProviderKind::Anthropic,
        r#"{"type":"message","id":"m","model":"m","role":"assistant","content":[{"type":"text","text":"x"}],
            "stop_reason":"end_turn","usage":{"input_tokens":18446744073709551615,"cache_read_input_tokens":1,"output_tokens":1}}"#,
    );
    assert_eq!(u.prompt, u64::MAX);
    assert_eq!(u.cached_input, 1);
    assert_eq!(u.total(), u64::MAX);
    assert_eq!(body["usage"]["total_tokens"], u64::MAX);
}

/// The same for Gemini's output: answer tokens plus thinking tokens.
#[test]
fn gemini_usage_past_u64_saturates() {
    let (u, body) = decode(
        ProviderKind::Gemini,
        r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"x"}]},"finishReason":"STOP"}],
            "usageMetadata":{"promptTokenCount":18446744073709551615,"candidatesTokenCount":18446744073709551615,"thoughtsTokenCount":2}}"#,
    );
    assert_eq!((u.prompt, u.output), (u64::MAX, u64::MAX));
    assert_eq!(body["usage"]["total_tokens"], u64::MAX);
}

/// Totals and costs of such usage saturate too: a cost is never a wrapped, smaller one.
#[test]
fn usage_arithmetic_saturates() {
    let u = Usage {
        prompt: 10,
        cached_input: u64::MAX,
        cache_write: u64::MAX,
        output: u64::MAX,
        estimated: false,
    };
    assert_eq!(u.uncached_input(), 0);
    assert_eq!(u.total(), u64::MAX);
    let p = Prices {
        input: 1,
        output: 2_000_000,
        cached_input: 1,
        cache_write: 1,
    };
    assert_eq!(u.cost(&p), u64::MAX);
}

fn parse(input: &[u8]) -> Vec<SseEvent> {
    let mut p = SseParser::default();
    let mut out = Vec::new();
    p.push(input, &mut out).unwrap();
    p.finish(&mut out);
    out
}

/// fuzz target `sse_split`: a stream whose last line ends with a lone `\r` (a line ending) kept
/// the `\r` in the final event's data, so the event did not survive being framed again.
#[test]
fn a_final_lone_carriage_return_ends_the_line() {
    let ev = parse(b"event: e\rdata: {\"seq\r");
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].event, "e");
    assert_eq!(&ev[0].data[..], b"{\"seq");
    assert_eq!(parse(b"data: x\r\r"), parse(b"data: x\n\n"));
}
