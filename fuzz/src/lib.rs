//! Shared by the fuzz targets: backends for each provider, the chunk splits a network may make,
//! the bound a decoder's usage must respect, and the checks of the translating ingresses.

use std::collections::VecDeque;

use bytes::Bytes;
use llmesh_api::ProviderKind;
use llmesh_api::snapshot::{Backend, SecretValue};
use llmesh_sidecar::error::ApiError;
use llmesh_sidecar::ingress::{Context, responses, translate};
use llmesh_sidecar::internal::Endpoint;
use llmesh_sidecar::providers::{Chunk, Usage};
use llmesh_sidecar::sse::{SseEvent, SseParser};
use llmesh_sidecar::tokens;
use serde_json::{Map, Value};

/// The key every fuzzed backend holds; no error message may show it.
pub const KEY: &str = "sk-fuzz-Zq7Rm2Xv9Lp4Ws8Tn3Yb6Hc1";

/// A backend of `provider` as a compiled route has it.
pub fn backend(provider: ProviderKind) -> Backend {
    Backend {
        name: "b".into(),
        variant: "b".into(),
        provider,
        model: "some-model".into(),
        base_url: provider
            .default_base_url()
            .unwrap_or("http://10.0.0.1:8000/v1")
            .into(),
        api_key: Some(SecretValue::new(KEY)),
        weight: 1,
        prices: Default::default(),
        priced: false,
        context_window: None,
        max_concurrency: None,
        headers: vec![],
        azure: None,
        mock: None,
    }
}

/// One backend per adapter: the OpenAI family (OpenAI itself also speaks the Responses API
/// natively), Anthropic (and its native Messages passthrough), Gemini.
pub fn backends() -> Vec<Backend> {
    vec![
        backend(ProviderKind::Openai),
        backend(ProviderKind::Groq),
        backend(ProviderKind::Anthropic),
        backend(ProviderKind::Gemini),
    ]
}

/// A small deterministic generator seeded from the input, so a crash replays exactly.
pub fn rng_for(data: &[u8]) -> fastrand::Rng {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    fastrand::Rng::with_seed(h)
}

/// The ways a network may cut `data`: whole, byte by byte (small inputs), and two random cuts.
pub fn splits(data: &[u8]) -> Vec<Vec<&[u8]>> {
    let mut out = vec![vec![data]];
    if data.len() <= 4096 {
        out.push(data.chunks(1).collect());
    }
    let mut rng = rng_for(data);
    for _ in 0..2 {
        let mut pieces = Vec::new();
        let mut rest = data;
        while !rest.is_empty() {
            let n = rng.usize(1..=rest.len().min(64));
            let (a, b) = rest.split_at(n);
            pieces.push(a);
            rest = b;
        }
        out.push(pieces);
    }
    out
}

/// Parses `pieces` as one event stream; `None` when an event outgrew the parser's limit.
pub fn parse_sse(pieces: &[&[u8]]) -> Option<Vec<SseEvent>> {
    let mut p = SseParser::default();
    let mut out = Vec::new();
    for piece in pieces {
        p.push(piece, &mut out).ok()?;
    }
    p.finish(&mut out);
    Some(out)
}

/// The sum of every non-negative integer in `v` (saturating): no usage figure a decoder reads
/// from `v` can be larger.
pub fn integer_sum(v: &Value) -> u64 {
    match v {
        Value::Number(n) => n.as_u64().unwrap_or(0),
        Value::Array(a) => a.iter().fold(0, |s, v| s.saturating_add(integer_sum(v))),
        Value::Object(m) => m.values().fold(0, |s, v| s.saturating_add(integer_sum(v))),
        _ => 0,
    }
}

/// The integer sum of `bytes` read as JSON, or of every JSON event in it read as an event
/// stream; 0 when nothing parses. Read lossily: serde_json does not check the UTF-8 of strings
/// a typed decoder skips, so a decoder may read usage next to bytes that are not UTF-8.
pub fn stated(bytes: &[u8]) -> u64 {
    let json = |b: &[u8]| serde_json::from_str::<Value>(&String::from_utf8_lossy(b)).ok();
    if let Some(v) = json(bytes) {
        return integer_sum(&v);
    }
    parse_sse(&[bytes])
        .unwrap_or_default()
        .iter()
        .filter_map(|e| json(&e.data))
        .fold(0, |s, v| s.saturating_add(integer_sum(&v)))
}

/// Checks a reported usage against what the input stated. A stream cut before its usage may
/// report an estimate (`estimated`), which counts the text instead; an answer never does.
pub fn check_usage(u: &Usage, bound: u64, input: &[u8], estimate_allowed: bool) {
    if u.estimated {
        assert!(
            estimate_allowed,
            "a decoder reported estimated usage as read"
        );
        return;
    }
    for (what, n) in [
        ("prompt", u.prompt),
        ("cached_input", u.cached_input),
        ("cache_write", u.cache_write),
        ("output", u.output),
    ] {
        assert!(
            n <= bound,
            "usage {what} = {n} exceeds every integer in the input together ({bound}): {}",
            String::from_utf8_lossy(input)
        );
    }
    assert!(u.uncached_input() <= u.prompt);
}

/// Asserts `text` does not hold the key.
pub fn no_key(what: &str, text: &[u8]) {
    assert!(
        memchr_find(text, KEY.as_bytes()).is_none(),
        "{what} shows the backend's key: {}",
        String::from_utf8_lossy(text)
    );
}

fn memchr_find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A chat answer and stream (with a tool call and usage) for a translating ingress to turn back
/// into its client's format.
pub const ANSWER: &str = r#"{"id":"c","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hi","tool_calls":[{"id":"call_1","type":"function","function":{"name":"f","arguments":"{\"a\":1}"}}]},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#;
/// The same answer as a chat stream.
pub const CHUNKS: &[&str] = &[
    r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":"h"},"finish_reason":null}]}"#,
    r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"f","arguments":"{}"}}]},"finish_reason":"tool_calls"}]}"#,
    r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#,
];

/// A refusal says why; a 400 for a JSON object names the field at fault (`param`).
pub fn check_refusal(e: &ApiError, data: &[u8]) {
    assert!(!e.message.is_empty());
    if e.status == http::StatusCode::BAD_REQUEST
        && serde_json::from_slice::<Map<String, Value>>(data).is_ok()
        && e.reason != "untranslatable"
    {
        assert!(
            e.param.as_deref().is_some_and(|p| !p.is_empty()),
            "a refusal of a JSON object names no field: {} ({})",
            e.message,
            String::from_utf8_lossy(data)
        );
    }
}

/// Translates `body` as a client of `endpoint` sent it and checks what both translating
/// ingresses promise: the route name passes through as written, the result is a chat body the
/// prompt estimator reads, and the answer and a stream translate back (the encoder writes
/// events). A refusal is checked by [`check_refusal`]. Returns whether it translated.
pub fn check_translation(endpoint: Endpoint, body: Map<String, Value>, data: &[u8]) -> bool {
    let store = responses::Store::new(4, std::time::Duration::from_secs(60));
    let ctx = Context {
        responses: &store,
        request_id: "req_fuzz",
    };
    let model = body.get("model").cloned();
    match translate(endpoint, body, &ctx) {
        Ok((chat, translation)) => {
            // The route name passes through as the client wrote it (the handler refuses a
            // missing one).
            assert_eq!(chat.get("model"), model.as_ref(), "{chat:?}");
            assert!(
                chat.get("messages").is_some_and(Value::is_array),
                "no messages: {chat:?}"
            );
            let _ = tokens::chat_prompt(&chat, true);
            serde_json::to_vec(&chat).unwrap();
            let Some(mut t) = translation else {
                panic!("the {endpoint:?} format is translated back");
            };
            t.prompt_estimate(7);
            let usage = Usage {
                prompt: 3,
                output: 2,
                ..Usage::default()
            };
            let out = t
                .response(ANSWER.as_bytes(), Some(&usage))
                .expect("the answer translates");
            serde_json::from_slice::<Value>(&out).expect("a translated answer is JSON");
            let mut enc = t.encoder();
            let mut out = VecDeque::new();
            for c in CHUNKS {
                enc.chunk(Chunk::Data(Bytes::from_static(c.as_bytes())), &mut out);
            }
            enc.chunk(Chunk::Done, &mut out);
            assert!(!out.is_empty(), "the stream encoder wrote nothing");
            true
        }
        Err(e) => {
            check_refusal(&e, data);
            false
        }
    }
}
