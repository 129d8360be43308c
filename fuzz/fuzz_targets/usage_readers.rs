//! The usage readers of each provider (OpenAI's `usage`, Anthropic's `usage`, Gemini's
//! `usageMetadata`) and the arithmetic on what they read. Properties: each normalised figure
//! is exactly what the provider stated (sums saturate instead of wrapping or panicking); totals
//! and costs at any price saturate; a cost is the sum of its token classes' costs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use llmesh_api::ProviderKind;
use llmesh_api::money::cost_of;
use llmesh_api::prices::Prices;
use llmesh_sidecar::internal::OaUsage;
use llmesh_sidecar::providers::{Op, Usage, for_kind};
use serde_json::{Value, json};

/// The usage a provider's decoder reads from `answer` (Anthropic's and Gemini's usage types are
/// private to their adapters: they are reached through the answer decoder).
fn decoded(kind: ProviderKind, answer: Value) -> Option<Usage> {
    let b = llmesh_fuzz::backend(kind);
    let body = bytes::Bytes::from(answer.to_string());
    for_kind(kind).decode(&b, Op::Chat, body).ok()?.usage
}

fn n(v: &Value, k: &str) -> u64 {
    v.get(k).and_then(Value::as_u64).unwrap_or(0)
}

fn arithmetic(u: &Usage, prices: &Prices) {
    assert_eq!(u.total(), u.prompt.saturating_add(u.output));
    assert_eq!(
        u.uncached_input(),
        u.prompt
            .saturating_sub(u.cached_input.saturating_add(u.cache_write))
    );
    let want = [
        cost_of(u.uncached_input(), prices.input),
        cost_of(u.cached_input, prices.cached_input),
        cost_of(u.cache_write, prices.cache_write),
        cost_of(u.output, prices.output),
    ]
    .into_iter()
    .fold(0u64, u64::saturating_add);
    assert_eq!(u.cost(prices), want, "{u:?} at {prices:?}");
}

fuzz_target!(|data: &[u8]| {
    // Objects only: serde also reads a struct from an array, by position.
    let Ok(v @ Value::Object(_)) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let mut rng = llmesh_fuzz::rng_for(data);
    let mut price = || match rng.u8(..4) {
        0 => 0,
        1 => u64::MAX,
        _ => rng.u64(..=100_000_000),
    };
    let prices = Prices {
        input: price(),
        output: price(),
        cached_input: price(),
        cache_write: price(),
    };
    // (`prompt_tokens_details` as an array would be read by position, as above.)
    if let Ok(u) = serde_json::from_value::<OaUsage>(v.clone())
        && v.get("prompt_tokens_details").is_none_or(|d| !d.is_array())
    {
        let u = u.normalise();
        assert_eq!(u.prompt, n(&v, "prompt_tokens"));
        assert_eq!(u.output, n(&v, "completion_tokens"));
        let cached = v
            .get("prompt_tokens_details")
            .and_then(|d| d.get("cached_tokens"))
            .and_then(Value::as_u64)
            .or_else(|| v.get("prompt_cache_hit_tokens").and_then(Value::as_u64))
            .unwrap_or(0);
        assert_eq!(u.cached_input, cached);
        arithmetic(&u, &prices);
    }
    let anthropic = json!({"type": "message", "id": "m", "model": "m", "role": "assistant",
        "content": [{"type": "text", "text": "x"}], "stop_reason": "end_turn", "usage": v});
    if let Some(u) = decoded(ProviderKind::Anthropic, anthropic) {
        let (read, write) = (
            n(&v, "cache_read_input_tokens"),
            n(&v, "cache_creation_input_tokens"),
        );
        assert_eq!(
            u.prompt,
            n(&v, "input_tokens")
                .saturating_add(read)
                .saturating_add(write)
        );
        assert_eq!((u.cached_input, u.cache_write), (read, write));
        assert_eq!(u.output, n(&v, "output_tokens"));
        arithmetic(&u, &prices);
    }
    let gemini = json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "x"}]},
        "finishReason": "STOP"}], "usageMetadata": v});
    if let Some(u) = decoded(ProviderKind::Gemini, gemini) {
        assert_eq!(u.prompt, n(&v, "promptTokenCount"));
        assert_eq!(u.cached_input, n(&v, "cachedContentTokenCount"));
        assert_eq!(
            u.output,
            n(&v, "candidatesTokenCount").saturating_add(n(&v, "thoughtsTokenCount"))
        );
        arithmetic(&u, &prices);
    }
});
