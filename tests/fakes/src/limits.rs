//! Models' output-token limits, from the providers' public model pages, so the fake refuses a
//! `max_tokens` the real API refuses. A model not listed here accepts any value.

/// (model family, most output tokens one answer may ask for). A family matches its own id,
/// its dated snapshots (`gpt-4o-2024-08-06`, `claude-sonnet-4-20250514`) and `-latest`; a
/// family ending in `*` matches every id that starts with the rest.
const LIMITS: &[(&str, u64)] = &[
    // OpenAI: platform.openai.com/docs/models ("Max output tokens").
    ("gpt-4o", 16_384),
    ("gpt-4o-mini", 16_384),
    ("gpt-4.1", 32_768),
    ("gpt-4.1-mini", 32_768),
    ("gpt-4.1-nano", 32_768),
    ("gpt-5", 128_000),
    ("gpt-5-mini", 128_000),
    ("gpt-5-nano", 128_000),
    ("o3", 100_000),
    ("o3-mini", 100_000),
    ("o4-mini", 100_000),
    ("gpt-3.5-turbo", 4_096),
    // Anthropic: docs.anthropic.com/en/docs/about-claude/models ("Max output").
    ("claude-sonnet-4", 64_000),
    ("claude-sonnet-4-5", 64_000),
    ("claude-opus-4", 32_000),
    ("claude-opus-4-1", 32_000),
    ("claude-3-7-sonnet", 64_000),
    ("claude-3-5-haiku", 8_192),
    ("claude-haiku-4-5", 64_000),
    // Gemini: ai.google.dev/gemini-api/docs/models ("Output token limit").
    ("gemini-2.5-*", 65_536),
    ("gemini-2.0-flash*", 8_192),
];

fn matches(model: &str, family: &str) -> bool {
    if let Some(prefix) = family.strip_suffix('*') {
        return model.starts_with(prefix);
    }
    match model.strip_prefix(family) {
        Some("") => true,
        Some(rest) => rest.strip_prefix('-').is_some_and(|r| {
            r == "latest" || (r.len() >= 4 && r.bytes().take(4).all(|c| c.is_ascii_digit()))
        }),
        None => false,
    }
}

/// The most output tokens `model` may be asked for, if the fake knows the model.
pub fn max_output_tokens(model: &str) -> Option<u64> {
    LIMITS
        .iter()
        .filter(|(family, _)| matches(model, family))
        .max_by_key(|(family, _)| family.len())
        .map(|&(_, n)| n)
}

#[cfg(test)]
mod tests {
    use super::max_output_tokens;

    #[test]
    fn families_match_their_snapshots_and_nothing_else() {
        for (model, want) in [
            ("gpt-4o", Some(16_384)),
            ("gpt-4o-2024-08-06", Some(16_384)),
            ("gpt-4o-mini-2024-07-18", Some(16_384)),
            ("gpt-4.1-2025-04-14", Some(32_768)),
            ("gpt-5", Some(128_000)),
            ("o4-mini-2025-04-16", Some(100_000)),
            ("claude-sonnet-4-20250514", Some(64_000)),
            ("claude-opus-4-20250514", Some(32_000)),
            ("claude-3-5-haiku-latest", Some(8_192)),
            ("claude-haiku-4-5-20251001", Some(64_000)),
            ("gemini-2.5-flash", Some(65_536)),
            ("gemini-2.0-flash-lite", Some(8_192)),
            // Unknown models (and families the table does not list) accept any value.
            ("claude-opus-4-5-20251101", None),
            ("gpt-4o-audio-preview", None),
            ("llama-3.1-8b", None),
            ("fake-model", None),
        ] {
            assert_eq!(max_output_tokens(model), want, "{model}");
        }
    }
}
