//! What the provider adapters' golden tests share: the OpenAI-shaped results they snapshot.

use bytes::Bytes;
use http_body_util::BodyExt;
use serde_json::{Map, Value, json};

use llmesh_api::snapshot::Backend;
use llmesh_sidecar::providers::{
    Chunk, Decoded, Op, Provider, StreamDecoder, UpstreamError, Usage,
};
use llmesh_sidecar::sse::SseParser;

use super::pinning_clock;

/// The byte splits a stream must decode identically under (0: all at once).
pub const SPLITS: [usize; 5] = [1, 2, 3, 7, 64];

/// Runs `f`, then replaces every `created` stamp in its result with a fixed one, after checking
/// the adapter took it from the clock while `f` ran.
pub fn pinning_created(f: impl FnOnce() -> Value) -> Value {
    pinning_clock("created", f)
}

pub fn error_json(e: &UpstreamError) -> Value {
    json!({"error": {"class": format!("{:?}", e.class), "reason": e.reason, "message": e.message}})
}

pub fn usage_json(u: Option<Usage>) -> Value {
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

/// The upstream request for an OpenAI chat body: its URL and JSON body, or the refusal.
pub fn request(provider: &dyn Provider, backend: &Backend, body: &Map<String, Value>) -> Value {
    let stream = body.get("stream").and_then(Value::as_bool) == Some(true);
    match provider.request(backend, Op::Chat, body, None, stream) {
        Ok(req) => {
            let url = req.uri().to_string();
            let bytes = futures::executor::block_on(req.into_body().collect())
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            let sent: Value = serde_json::from_slice(&bytes).expect("json body");
            json!({"url": url, "body": sent})
        }
        Err(e) => error_json(&e),
    }
}

/// A decoded answer: the OpenAI body and the normalised usage, or the classified error.
pub fn decoded(result: Result<Decoded, UpstreamError>) -> Value {
    match result {
        Ok(d) => json!({
            "body": serde_json::from_slice::<Value>(&d.body).expect("json"),
            "usage": usage_json(d.usage),
        }),
        Err(e) => error_json(&e),
    }
}

/// Feeds a whole transcript to `decoder` in pieces of `piece` bytes (0: all at once), as the
/// attempt loop and the relay do: events until the first error, then the end of the body.
/// Returns the OpenAI chunks, how the stream ended and the usage.
pub fn run_stream(mut decoder: Box<dyn StreamDecoder>, raw: &[u8], piece: usize) -> Value {
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

/// The file name of a fixture without `suffix`.
pub fn case_name(path: &std::path::Path, suffix: &str) -> String {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .expect("file name");
    name.strip_suffix(suffix).expect("suffix").to_string()
}

/// The raw bytes of a fixture.
pub fn raw(path: &std::path::Path) -> Bytes {
    Bytes::from(std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}
