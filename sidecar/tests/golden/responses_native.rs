//! OpenAI's Responses API passed through natively (`tests/fixtures/responses_native/`), the
//! fixtures written from OpenAI's Responses API reference:
//!
//! - `<case>.sse` (a whole Responses event stream): the snapshot is how many events reached the
//!   client, whether they are the upstream's bytes unchanged, how the stream ended (a proper end,
//!   a failure reported in-band, or an error that fails over / breaks the stream), and the usage
//!   read on the side; identical whichever way the bytes are split;
//! - `<case>.response.json` (a Response object): the snapshot is the usage read from it; the
//!   body must pass unchanged.

use serde_json::{Value, json};

use llmesh_api::ProviderKind;
use llmesh_api::prices::Prices;
use llmesh_api::snapshot::{Backend, SecretValue};
use llmesh_sidecar::providers::openai::OpenAiFamily;
use llmesh_sidecar::providers::{Chunk, Provider};
use llmesh_sidecar::sse::SseParser;

use super::adapters::{case_name, raw, usage_json};
use super::each_fixture;

const KEY: &str = "sk-proj-TestKeyNotReal0123456789";

fn backend() -> Backend {
    Backend {
        name: "openai".into(),
        variant: "openai".into(),
        provider: ProviderKind::Openai,
        model: "gpt-4.1".into(),
        base_url: "https://api.openai.com/v1".into(),
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

/// Feeds a whole stream to a fresh decoder in pieces of `piece` bytes (0: all at once), as the
/// attempt loop and the relay do: events until the first error, then the end of the body.
fn run_stream(raw: &[u8], piece: usize) -> Value {
    let mut parser = SseParser::default();
    let mut d = OpenAiFamily.native_stream(&backend());
    let mut out = Vec::new();
    let mut events = Vec::new();
    let pieces: Vec<&[u8]> = if piece == 0 {
        vec![raw]
    } else {
        raw.chunks(piece).collect()
    };
    let mut result = Ok(());
    'feed: for p in pieces {
        parser.push(p, &mut events).expect("parses");
        for ev in events.drain(..) {
            if let Err(e) = d.event(ev, &mut out) {
                result = Err(e);
                break 'feed;
            }
        }
    }
    if result.is_ok() {
        parser.finish(&mut events);
        for ev in events.drain(..) {
            if let Err(e) = d.event(ev, &mut out) {
                result = Err(e);
                break;
            }
        }
    }
    if result.is_ok() {
        result = d.finish(&mut out);
    }
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
            json!({"error": {"class": format!("{:?}", e.class), "reason": e.reason, "message": e.message}})
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
