//! Every provider's stream decoder (`Provider::stream`, `Provider::native_stream`) on the same
//! event stream, cut at random points. Properties: a translated decoder emits JSON chunks;
//! usage is never larger than the integers the stream states; what a client may see (chunks
//! after `scrub_answer`, errors after `redacted`) never shows the backend's key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use llmesh_api::ProviderKind;
use llmesh_fuzz::{KEY, backends, check_usage, no_key, parse_sse, splits, stated};
use llmesh_sidecar::providers::{Chunk, Op, StreamDecoder, for_kind, scrub_answer};

fn run(mut d: Box<dyn StreamDecoder>, pieces: &[&[u8]], translated: bool, bound: u64, data: &[u8]) {
    let Some(events) = parse_sse(pieces) else {
        return;
    };
    let mut out = Vec::new();
    let mut failed = None;
    for ev in events {
        if let Err(e) = d.event(ev, &mut out) {
            failed = Some(e);
            break;
        }
    }
    if failed.is_none()
        && let Err(e) = d.finish(&mut out)
    {
        failed = Some(e);
    }
    if let Some(e) = failed {
        let e = e.redacted(Some(KEY));
        no_key("a stream error", e.message.as_bytes());
    }
    for c in out {
        if let Chunk::Data(bytes) = c {
            if translated {
                serde_json::from_slice::<serde_json::Value>(&bytes).unwrap_or_else(|e| {
                    panic!(
                        "chunk {:?} is not JSON: {e}",
                        String::from_utf8_lossy(&bytes)
                    )
                });
            }
            no_key("a chunk", &scrub_answer(bytes, Some(KEY)));
        }
    }
    if let Some(u) = d.usage() {
        check_usage(&u, bound, data, true);
    }
    let _ = d.output_estimate();
    let _ = d.failure();
}

fuzz_target!(|data: &[u8]| {
    let bound = stated(data);
    let cuts = splits(data);
    // The whole stream and one random cut (the SSE target shows cuts do not change events).
    for pieces in [&cuts[0], cuts.last().unwrap()] {
        for b in backends() {
            let p = for_kind(b.provider);
            let translated = matches!(b.provider, ProviderKind::Anthropic | ProviderKind::Gemini);
            for wants_usage in [false, true] {
                run(
                    p.stream(&b, Op::Chat, wants_usage),
                    pieces,
                    translated,
                    bound,
                    data,
                );
            }
            if b.provider == ProviderKind::Openai {
                run(
                    p.stream(&b, Op::Completion, true),
                    pieces,
                    false,
                    bound,
                    data,
                );
            }
            if matches!(b.provider, ProviderKind::Openai | ProviderKind::Anthropic) {
                run(p.native_stream(&b), pieces, false, bound, data);
            }
        }
    }
});
