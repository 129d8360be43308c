//! What the provider adapters' tests share: their backends, the OpenAI-shaped results they
//! snapshot, and the feeding of a stream to a decoder.

use std::path::Path;

use bytes::Bytes;
use http_body_util::BodyExt;
use serde_json::{Map, Value, json};

use llmesh_api::ProviderKind;
use llmesh_api::prices::Prices;
use llmesh_api::snapshot::{Backend, SecretValue};
use llmesh_sidecar::providers::{
    Chunk, Decoded, Op, Provider, StreamDecoder, UpstreamError, Usage,
};
use llmesh_sidecar::sse::SseParser;

use super::pinning_clock;

/// A backend of `provider` named `name` (its variant too) serving `model` at `base_url` with
/// the API key `key`; nothing else set.
pub fn backend(
    provider: ProviderKind,
    name: &str,
    model: &str,
    base_url: &str,
    key: &str,
) -> Backend {
    Backend {
        name: name.into(),
        variant: name.into(),
        provider,
        model: model.into(),
        base_url: base_url.into(),
        api_key: Some(SecretValue::new(key)),
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
            json!({"url": url, "body": sent_body(req)})
        }
        Err(e) => error_json(&e),
    }
}

/// The JSON body of an upstream request.
pub fn sent_body(req: http::Request<http_body_util::Full<Bytes>>) -> Value {
    let bytes = futures::executor::block_on(req.into_body().collect())
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    serde_json::from_slice(&bytes).expect("json body")
}

/// What `provider` sends `backend` for the non-streaming OpenAI chat `body` (its model replaced
/// by the backend's, as the attempt loop does): the translated body, or the refusal.
pub fn translate(
    provider: &dyn Provider,
    backend: &Backend,
    body: Value,
) -> Result<Map<String, Value>, UpstreamError> {
    let mut body = body.as_object().expect("object").clone();
    body.insert("model".into(), backend.model.clone().into());
    let req = provider.request(backend, Op::Chat, &body, None, false)?;
    match sent_body(req) {
        Value::Object(sent) => Ok(sent),
        other => panic!("not an object: {other}"),
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
/// Returns the chunks made and how the stream ended.
pub fn feed(
    decoder: &mut dyn StreamDecoder,
    raw: &[u8],
    piece: usize,
) -> (Vec<Chunk>, Result<(), UpstreamError>) {
    let mut parser = SseParser::default();
    let mut events = Vec::new();
    let mut chunks = Vec::new();
    let pieces: Vec<&[u8]> = if piece == 0 {
        vec![raw]
    } else {
        raw.chunks(piece).collect()
    };
    let mut deliver = |events: &mut Vec<_>, chunks: &mut Vec<Chunk>| {
        events
            .drain(..)
            .try_for_each(|ev| decoder.event(ev, chunks))
    };
    for p in pieces {
        parser.push(p, &mut events).expect("sse");
        if let Err(e) = deliver(&mut events, &mut chunks) {
            return (chunks, Err(e));
        }
    }
    parser.finish(&mut events);
    if let Err(e) = deliver(&mut events, &mut chunks) {
        return (chunks, Err(e));
    }
    let end = decoder.finish(&mut chunks);
    (chunks, end)
}

/// Feeds a whole transcript to `decoder` (see [`feed`]). Returns the OpenAI chunks, how the
/// stream ended and the usage.
pub fn run_stream(mut decoder: Box<dyn StreamDecoder>, raw: &[u8], piece: usize) -> Value {
    let (chunks, end) = feed(decoder.as_mut(), raw, piece);
    let end = end.map_or_else(|e| error_json(&e), |()| json!("ok"));
    let chunks: Vec<Value> = chunks
        .into_iter()
        .map(|c| match c {
            Chunk::Data(b) => serde_json::from_slice(&b).expect("chunk json"),
            Chunk::Done => json!("[DONE]"),
        })
        .collect();
    json!({"chunks": chunks, "end": end, "usage": usage_json(decoder.usage())})
}

/// Decodes the whole stream at `path` with the decoders `decoder` makes (`wants_usage` as for
/// a client that asked for `stream_options.include_usage`: cases named `*_usage`), checks it
/// decodes the same whichever way its bytes are split, and returns [`run_stream`]'s result.
pub fn same_in_any_split(path: &Path, decoder: impl Fn(bool) -> Box<dyn StreamDecoder>) -> Value {
    let name = case_name(path, ".sse");
    let wants_usage = name.ends_with("_usage");
    let raw = raw(path);
    let run = |piece| pinning_created(|| run_stream(decoder(wants_usage), &raw, piece));
    let whole = run(0);
    for piece in SPLITS {
        assert_eq!(run(piece), whole, "{name} split every {piece} bytes");
    }
    whole
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
