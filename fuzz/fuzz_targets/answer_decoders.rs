//! Every provider's answer decoder (`Provider::decode`, `Provider::native_decode`) and error
//! classifier (`Provider::error`) on the same bytes. Properties: usage is never larger than the
//! integers the answer states; a translated answer is a JSON object; what a client may see of
//! an answer or an error (after `scrub_answer` / `UpstreamError::redacted`, as the proxy hands
//! them on) never shows the backend's key.
#![no_main]

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use libfuzzer_sys::fuzz_target;
use llmesh_api::ProviderKind;
use llmesh_fuzz::{KEY, backends, check_usage, no_key, stated};
use llmesh_sidecar::providers::{Decoded, Op, UpstreamError, for_kind, scrub_answer};

fn check_error(e: UpstreamError) {
    let e = e.redacted(Some(KEY));
    no_key("an error message", e.message.as_bytes());
    if let Some(b) = &e.openai_body {
        no_key("an error body", b);
    }
}

fn check(result: Result<Decoded, UpstreamError>, translated: bool, bound: u64, data: &[u8]) {
    match result {
        Ok(d) => {
            if let Some(u) = &d.usage {
                check_usage(u, bound, data, false);
            }
            if translated {
                let v: serde_json::Value =
                    serde_json::from_slice(&d.body).expect("a translated answer is JSON");
                assert!(v.is_object(), "not an object: {v}");
            }
            no_key("an answer", &scrub_answer(d.body, Some(KEY)));
        }
        Err(e) => check_error(e),
    }
}

fuzz_target!(|data: &[u8]| {
    let bound = stated(data);
    let body = Bytes::copy_from_slice(data);
    for b in backends() {
        let p = for_kind(b.provider);
        let family = !matches!(b.provider, ProviderKind::Anthropic | ProviderKind::Gemini);
        for op in [Op::Chat, Op::Completion, Op::Embedding] {
            if p.supports(op) {
                check(p.decode(&b, op, body.clone()), !family, bound, data);
            }
        }
        if matches!(b.provider, ProviderKind::Openai | ProviderKind::Anthropic) {
            check(p.native_decode(&b, body.clone()), false, bound, data);
        }
        for status in [400, 401, 404, 413, 429, 500, 529] {
            let mut h = HeaderMap::new();
            h.insert("retry-after", "1".parse().unwrap());
            check_error(p.error(&b, StatusCode::from_u16(status).unwrap(), &h, data));
        }
    }
});
