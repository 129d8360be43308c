//! The shipped price table: USD per 1M tokens for the current models of each provider, in
//! micro-dollars. A backend's `prices` override it field by field.
//!
//! Lookup accepts dated and suffixed ids (`gpt-4o-2024-08-06`, `claude-sonnet-4-20250514`,
//! `mistral-large-latest`) and OpenRouter-style `vendor/model` ids by longest prefix on a `-`
//! boundary, so a pinned snapshot is priced like its family.

use serde::{Deserialize, Serialize};

use crate::money::MicroUsd;

/// Prices of one model in micro-dollars per 1M tokens.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct Prices {
    /// Uncached input tokens.
    pub input: MicroUsd,
    /// Output tokens.
    pub output: MicroUsd,
    /// Input tokens read from the provider's prompt cache.
    pub cached_input: MicroUsd,
    /// Input tokens written to the provider's prompt cache.
    pub cache_write: MicroUsd,
}

impl Prices {
    /// Input price averaged with output price: one number to compare backends by.
    pub fn blended(&self) -> MicroUsd {
        // In u128: the sum of two prices may pass u64::MAX, their mean never does.
        ((u128::from(self.input) + u128::from(self.output)) / 2) as MicroUsd
    }
}

/// Dollars with up to six decimals, written as `usd!(2.50)`-like integer pairs: `p(2, 500_000)`.
const fn p(dollars: u64, micro: u64) -> MicroUsd {
    dollars * 1_000_000 + micro
}

const fn m(input: MicroUsd, cached_input: MicroUsd, output: MicroUsd) -> Prices {
    Prices {
        input,
        output,
        cached_input,
        cache_write: input,
    }
}

/// Anthropic: cache writes (5-minute TTL) cost 1.25x input, cache reads 0.1x input.
const fn a(input: MicroUsd, output: MicroUsd) -> Prices {
    Prices {
        input,
        output,
        cached_input: input / 10,
        cache_write: input + input / 4,
    }
}

/// Model id -> prices. Sorted by provider for reading; lookup does not depend on order.
pub static TABLE: &[(&str, Prices)] = &[
    // OpenAI (also Azure OpenAI and OpenRouter `openai/...`): platform.openai.com/docs/pricing
    ("gpt-5", m(p(1, 250_000), p(0, 125_000), p(10, 0))),
    ("gpt-5-mini", m(p(0, 250_000), p(0, 25_000), p(2, 0))),
    ("gpt-5-nano", m(p(0, 50_000), p(0, 5_000), p(0, 400_000))),
    ("gpt-4.1", m(p(2, 0), p(0, 500_000), p(8, 0))),
    (
        "gpt-4.1-mini",
        m(p(0, 400_000), p(0, 100_000), p(1, 600_000)),
    ),
    (
        "gpt-4.1-nano",
        m(p(0, 100_000), p(0, 25_000), p(0, 400_000)),
    ),
    ("gpt-4o", m(p(2, 500_000), p(1, 250_000), p(10, 0))),
    ("gpt-4o-mini", m(p(0, 150_000), p(0, 75_000), p(0, 600_000))),
    ("gpt-4-turbo", m(p(10, 0), p(10, 0), p(30, 0))),
    (
        "gpt-3.5-turbo",
        m(p(0, 500_000), p(0, 500_000), p(1, 500_000)),
    ),
    (
        "gpt-3.5-turbo-instruct",
        m(p(1, 500_000), p(1, 500_000), p(2, 0)),
    ),
    ("o1", m(p(15, 0), p(7, 500_000), p(60, 0))),
    ("o3", m(p(2, 0), p(0, 500_000), p(8, 0))),
    ("o3-mini", m(p(1, 100_000), p(0, 550_000), p(4, 400_000))),
    ("o4-mini", m(p(1, 100_000), p(0, 275_000), p(4, 400_000))),
    ("text-embedding-3-small", m(p(0, 20_000), p(0, 20_000), 0)),
    ("text-embedding-3-large", m(p(0, 130_000), p(0, 130_000), 0)),
    ("text-embedding-ada-002", m(p(0, 100_000), p(0, 100_000), 0)),
    // Anthropic: docs.anthropic.com/en/docs/about-claude/pricing
    ("claude-opus-4-5", a(p(5, 0), p(25, 0))),
    ("claude-opus-4-1", a(p(15, 0), p(75, 0))),
    ("claude-opus-4", a(p(15, 0), p(75, 0))),
    ("claude-sonnet-4-5", a(p(3, 0), p(15, 0))),
    ("claude-sonnet-4", a(p(3, 0), p(15, 0))),
    ("claude-3-7-sonnet", a(p(3, 0), p(15, 0))),
    ("claude-3-5-sonnet", a(p(3, 0), p(15, 0))),
    ("claude-haiku-4-5", a(p(1, 0), p(5, 0))),
    ("claude-3-5-haiku", a(p(0, 800_000), p(4, 0))),
    ("claude-3-haiku", a(p(0, 250_000), p(1, 250_000))),
    // Google Gemini (prompts up to 200k tokens): ai.google.dev/gemini-api/docs/pricing
    ("gemini-2.5-pro", m(p(1, 250_000), p(0, 312_500), p(10, 0))),
    (
        "gemini-2.5-flash",
        m(p(0, 300_000), p(0, 75_000), p(2, 500_000)),
    ),
    (
        "gemini-2.5-flash-lite",
        m(p(0, 100_000), p(0, 25_000), p(0, 400_000)),
    ),
    (
        "gemini-2.0-flash",
        m(p(0, 100_000), p(0, 25_000), p(0, 400_000)),
    ),
    (
        "gemini-2.0-flash-lite",
        m(p(0, 75_000), p(0, 75_000), p(0, 300_000)),
    ),
    ("gemini-embedding-001", m(p(0, 150_000), p(0, 150_000), 0)),
    ("text-embedding-004", m(0, 0, 0)),
    // Mistral: mistral.ai/pricing
    ("mistral-large", m(p(2, 0), p(2, 0), p(6, 0))),
    ("mistral-medium", m(p(0, 400_000), p(0, 400_000), p(2, 0))),
    (
        "mistral-small",
        m(p(0, 100_000), p(0, 100_000), p(0, 300_000)),
    ),
    ("codestral", m(p(0, 300_000), p(0, 300_000), p(0, 900_000))),
    (
        "open-mistral-nemo",
        m(p(0, 150_000), p(0, 150_000), p(0, 150_000)),
    ),
    ("mistral-embed", m(p(0, 100_000), p(0, 100_000), 0)),
    // Groq: groq.com/pricing
    (
        "llama-3.3-70b-versatile",
        m(p(0, 590_000), p(0, 590_000), p(0, 790_000)),
    ),
    (
        "llama-3.1-8b-instant",
        m(p(0, 50_000), p(0, 50_000), p(0, 80_000)),
    ),
    (
        "openai/gpt-oss-120b",
        m(p(0, 150_000), p(0, 150_000), p(0, 750_000)),
    ),
    (
        "openai/gpt-oss-20b",
        m(p(0, 100_000), p(0, 100_000), p(0, 500_000)),
    ),
    // Together AI: together.ai/pricing
    (
        "meta-llama/Llama-3.3-70B-Instruct-Turbo",
        m(p(0, 880_000), p(0, 880_000), p(0, 880_000)),
    ),
    (
        "meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo",
        m(p(0, 180_000), p(0, 180_000), p(0, 180_000)),
    ),
    (
        "deepseek-ai/DeepSeek-V3",
        m(p(1, 250_000), p(1, 250_000), p(1, 250_000)),
    ),
    (
        "Qwen/Qwen2.5-72B-Instruct-Turbo",
        m(p(1, 200_000), p(1, 200_000), p(1, 200_000)),
    ),
    // DeepSeek (V3.2 pricing for both aliases): api-docs.deepseek.com/quick_start/pricing
    (
        "deepseek-chat",
        m(p(0, 280_000), p(0, 28_000), p(0, 420_000)),
    ),
    (
        "deepseek-reasoner",
        m(p(0, 280_000), p(0, 28_000), p(0, 420_000)),
    ),
];

/// Model id -> the most output tokens one request may ask for (`max_tokens` and its kin), from
/// each provider's model pages. A request asking for more is refused by the provider, so llmesh
/// never sends more than this when it sets the limit itself (route limits, budget clamps).
pub static OUTPUT_LIMITS: &[(&str, u32)] = &[
    // OpenAI: platform.openai.com/docs/models
    ("gpt-5", 128_000),
    ("gpt-4.1", 32_768),
    ("gpt-4o", 16_384),
    ("gpt-4-turbo", 4_096),
    ("gpt-3.5-turbo", 4_096),
    ("o1", 100_000),
    ("o3", 100_000),
    ("o3-mini", 100_000),
    ("o4-mini", 100_000),
    // Anthropic: docs.anthropic.com/en/docs/about-claude/models (without beta headers)
    ("claude-opus-4-5", 64_000),
    ("claude-opus-4-1", 32_000),
    ("claude-opus-4", 32_000),
    ("claude-sonnet-4-5", 64_000),
    ("claude-sonnet-4", 64_000),
    ("claude-3-7-sonnet", 64_000),
    ("claude-3-5-sonnet", 8_192),
    ("claude-haiku-4-5", 64_000),
    ("claude-3-5-haiku", 8_192),
    ("claude-3-haiku", 4_096),
    // Google: ai.google.dev/gemini-api/docs/models
    ("gemini-2.5-pro", 65_536),
    ("gemini-2.5-flash", 65_536),
    ("gemini-2.0-flash", 8_192),
    // Groq: console.groq.com/docs/models
    ("llama-3.3-70b-versatile", 32_768),
    ("llama-3.1-8b-instant", 131_072),
    ("openai/gpt-oss-120b", 65_536),
    ("openai/gpt-oss-20b", 65_536),
    // DeepSeek: api-docs.deepseek.com/quick_start/pricing
    ("deepseek-chat", 8_192),
    ("deepseek-reasoner", 65_536),
];

/// Prices for `model`, if the table knows it or a family it belongs to.
pub fn lookup(model: &str) -> Option<Prices> {
    find_any(TABLE, model)
}

/// The most output tokens `model` takes in one request, if the table knows it or its family.
pub fn max_output(model: &str) -> Option<u32> {
    find_any(OUTPUT_LIMITS, model)
}

fn find_any<T: Copy>(table: &[(&str, T)], model: &str) -> Option<T> {
    find(table, model).or_else(|| {
        // OpenRouter and Together style `vendor/model`: try the part after the vendor.
        model
            .split_once('/')
            .and_then(|(_, rest)| find(table, rest))
    })
}

fn find<T: Copy>(table: &[(&str, T)], model: &str) -> Option<T> {
    let mut best: Option<(&str, T)> = None;
    for &(id, value) in table {
        let matches = model == id
            || (model.len() > id.len()
                && model.starts_with(id)
                && matches!(model.as_bytes()[id.len()], b'-' | b'@' | b':'));
        if matches && best.is_none_or(|(b, _)| id.len() > b.len()) {
            best = Some((id, value));
        }
    }
    best.map(|(_, v)| v)
}

/// Whether a model id names a moving alias rather than a pinned snapshot, for hosted providers.
pub fn is_unpinned(model: &str) -> bool {
    let name = model.rsplit('/').next().unwrap_or(model);
    if name.ends_with("-latest") {
        return true;
    }
    // Dated: -2024-08-06, -20250514; versioned: -001, -002; or an explicit @version.
    let bytes = name.as_bytes();
    let tail_digits = bytes
        .iter()
        .rev()
        .take_while(|b| b.is_ascii_digit())
        .count();
    let dated_compact = tail_digits >= 3 && name.len() > tail_digits && {
        let before = bytes[bytes.len() - tail_digits - 1];
        before == b'-' || before == b'@'
    };
    let dated_iso = name.len() >= 11 && {
        let tail = &name[name.len() - 11..];
        let t = tail.as_bytes();
        t[0] == b'-'
            && t[5] == b'-'
            && t[8] == b'-'
            && t[1..5].iter().all(u8::is_ascii_digit)
            && t[6..8].iter().all(u8::is_ascii_digit)
            && t[9..11].iter().all(u8::is_ascii_digit)
    };
    !(dated_compact || dated_iso)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_dated_ids_resolve() {
        let gpt4o = lookup("gpt-4o").unwrap();
        assert_eq!(gpt4o.input, 2_500_000);
        assert_eq!(gpt4o.cached_input, 1_250_000);
        assert_eq!(lookup("gpt-4o-2024-08-06"), Some(gpt4o));
        // The longer family wins over its prefix.
        assert_eq!(lookup("gpt-4o-mini-2024-07-18").unwrap().input, 150_000);
        assert_eq!(
            lookup("claude-sonnet-4-20250514").unwrap().output,
            15_000_000
        );
        assert_eq!(
            lookup("claude-sonnet-4-5-20250929").unwrap().input,
            3_000_000
        );
        assert_eq!(lookup("mistral-large-latest").unwrap().output, 6_000_000);
    }

    #[test]
    fn anthropic_cache_prices_follow_the_published_multipliers() {
        let sonnet = lookup("claude-sonnet-4").unwrap();
        assert_eq!(sonnet.cache_write, 3_750_000);
        assert_eq!(sonnet.cached_input, 300_000);
    }

    #[test]
    fn vendor_prefixed_ids_resolve() {
        assert_eq!(lookup("openai/gpt-4o"), lookup("gpt-4o"));
        assert_eq!(lookup("anthropic/claude-3-5-haiku").unwrap().input, 800_000);
        assert!(lookup("openai/gpt-oss-120b").is_some());
    }

    #[test]
    fn unknown_models_and_non_boundaries_do_not_match() {
        assert_eq!(lookup("my-finetune"), None);
        assert_eq!(lookup("o1x"), None);
        assert_eq!(lookup("gpt-4oo"), None);
    }

    #[test]
    fn output_limits_resolve_like_prices() {
        assert_eq!(max_output("gpt-4o-mini"), Some(16_384));
        assert_eq!(max_output("gpt-4o-mini-2024-07-18"), Some(16_384));
        assert_eq!(max_output("gpt-5-mini"), Some(128_000));
        assert_eq!(max_output("claude-sonnet-4-20250514"), Some(64_000));
        assert_eq!(max_output("claude-3-5-haiku-latest"), Some(8_192));
        assert_eq!(max_output("anthropic/claude-opus-4-1"), Some(32_000));
        assert_eq!(max_output("gemini-2.5-flash-lite"), Some(65_536));
        assert_eq!(max_output("my-finetune"), None);
        // Every model with a limit has a price: the two tables name the same families.
        for (id, _) in OUTPUT_LIMITS {
            assert!(
                lookup(id).is_some(),
                "{id} has an output limit but no price"
            );
        }
    }

    #[test]
    fn unpinned_aliases_are_recognised() {
        assert!(is_unpinned("gpt-4o"));
        assert!(is_unpinned("mistral-large-latest"));
        assert!(is_unpinned("claude-sonnet-4-5"));
        assert!(!is_unpinned("gpt-4o-2024-08-06"));
        assert!(!is_unpinned("claude-sonnet-4-20250514"));
        assert!(!is_unpinned("gemini-1.5-pro-002"));
    }
}
