//! Token estimates for limits, routing rules and cost when a provider reports no usage.
//!
//! A real BPE tokenizer (tiktoken's tables) would cost tens of MiB of resident memory in every
//! pod and tens of milliseconds to load, against an 8 MiB sidecar budget. Instead this counts the
//! pieces a GPT-style pre-tokenizer splits text into (words, digit groups, punctuation), which
//! tracks `cl100k`/`o200k` counts on English prose and code to within about 15%, erring high on
//! long rare words. Estimates are marked as such in metrics.

use serde_json::{Map, Value};

use llmesh_api::route::Complexity;

use crate::fields;

/// Tokens an image part is assumed to cost (a 1024x1024 high-detail image on OpenAI).
pub const IMAGE_TOKENS: u32 = 765;

/// What a character is to the estimate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    /// Alphabetic, below the CJK blocks: runs of them are words.
    Letter,
    /// An ASCII digit: runs of them split in groups of three.
    Digit,
    /// A line break: one token per run of blank lines.
    Newline,
    /// Other white space: separates, costs nothing.
    Space,
    /// Punctuation, symbols and CJK characters: about one token each.
    Other,
}

fn class_of(c: char) -> Class {
    if c.is_alphabetic() && (c as u32) < 0x2E80 {
        Class::Letter
    } else if c.is_ascii_digit() {
        Class::Digit
    } else if c == '\n' {
        Class::Newline
    } else if c.is_whitespace() {
        Class::Space
    } else {
        Class::Other
    }
}

/// [`class_of`] for every ASCII byte: prompts are mostly ASCII, and a table lookup costs much
/// less than decoding and classifying each character.
static ASCII: [Class; 128] = {
    let mut t = [Class::Other; 128];
    let mut b = 0;
    while b < 128 {
        t[b] = match b as u8 {
            b'a'..=b'z' | b'A'..=b'Z' => Class::Letter,
            b'0'..=b'9' => Class::Digit,
            b'\n' => Class::Newline,
            b'\t' | 0x0B | 0x0C | b'\r' | b' ' => Class::Space,
            _ => Class::Other,
        };
        b += 1;
    }
    t
};

/// Estimated tokens of plain text.
pub fn estimate_text(text: &str) -> u32 {
    let bytes = text.as_bytes();
    let mut tokens: u32 = 0;
    let mut letters = 0u32;
    let mut digits = 0u32;
    let flush = |letters: &mut u32, digits: &mut u32, tokens: &mut u32| {
        if *letters > 0 {
            *tokens += 1 + (*letters - 1) / 8;
        }
        if *digits > 0 {
            *tokens += (*digits).div_ceil(3);
        }
        *letters = 0;
        *digits = 0;
    };
    let mut last_newline = false;
    let mut i = 0;
    while i < bytes.len() {
        let class = match bytes[i] {
            b @ 0..0x80 => {
                i += 1;
                ASCII[usize::from(b)]
            }
            _ => {
                let c = text[i..].chars().next().unwrap_or(' ');
                i += c.len_utf8();
                class_of(c)
            }
        };
        match class {
            Class::Letter => {
                if digits > 0 {
                    flush(&mut letters, &mut digits, &mut tokens);
                }
                // The rest of an ASCII word in a tight loop.
                let from = i;
                while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
                    i += 1;
                }
                letters += 1 + (i - from) as u32;
                last_newline = false;
            }
            Class::Digit => {
                if letters > 0 {
                    flush(&mut letters, &mut digits, &mut tokens);
                }
                let from = i;
                while i < bytes.len() && bytes[i].is_ascii_digit() {
                    i += 1;
                }
                digits += 1 + (i - from) as u32;
                last_newline = false;
            }
            Class::Newline => {
                flush(&mut letters, &mut digits, &mut tokens);
                if !last_newline {
                    tokens += 1;
                }
                last_newline = true;
            }
            Class::Space => flush(&mut letters, &mut digits, &mut tokens),
            Class::Other => {
                flush(&mut letters, &mut digits, &mut tokens);
                tokens += 1;
                last_newline = false;
            }
        }
    }
    flush(&mut letters, &mut digits, &mut tokens);
    tokens
}

/// What the router needs to know about a prompt.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PromptFacts {
    /// Estimated input tokens.
    pub tokens: u32,
    /// Simple or complex, for routing rules.
    pub complexity: Complexity,
}

/// Phrases that mark a prompt as asking for reasoning, matched ignoring ASCII case.
const REASONING_CUES: &[&str] = &[
    "step by step",
    "prove",
    "analyze",
    "analyse",
    "derive",
    "reason about",
    "debug",
    "refactor",
    "architecture",
    "algorithm",
    "optimize",
    "trade-off",
    "tradeoff",
    "explain why",
    // A code fence.
    "```",
];

/// All the cues in one automaton: one pass over the text whatever the number of cues. Testing
/// each cue at every offset cost about 250 instructions per byte of prompt, more than the rest
/// of the request together for a prompt of a few KiB.
static CUES: std::sync::LazyLock<aho_corasick::AhoCorasick> = std::sync::LazyLock::new(|| {
    aho_corasick::AhoCorasick::builder()
        .ascii_case_insensitive(true)
        .build(REASONING_CUES)
        .expect("the cues are a handful of short literals")
});

/// Whether `text` holds a reasoning cue or a code fence.
fn has_cue(text: &str) -> bool {
    CUES.is_match(text)
}

/// Estimates an OpenAI chat request body: messages (text, images, tool calls), tool definitions,
/// plus OpenAI's per-message framing of about 4 tokens and 3 for the reply.
///
/// Complexity comes from tools, length and the number of messages; with `cues`, short prompts
/// are also searched for reasoning cues and code fences. That search is a second pass over the
/// text and only routing rules on complexity read its answer, so callers ask for it only then.
pub fn chat_prompt(body: &Map<String, Value>, cues: bool) -> PromptFacts {
    let mut tokens: u32 = 3;
    let mut complex = false;
    let messages = fields::get(body, "messages").and_then(Value::as_array);
    let count = messages.map_or(0, Vec::len);
    for m in messages.into_iter().flatten() {
        tokens += 4;
        if let Some(content) = fields::get_in(m, "content") {
            tokens += content_tokens(content);
        }
        if let Some(calls) = fields::get_in(m, "tool_calls").and_then(Value::as_array) {
            complex = true;
            for c in calls {
                if let Some(f) = fields::get_in(c, "function") {
                    tokens += fields::get_in(f, "name")
                        .and_then(Value::as_str)
                        .map_or(0, estimate_text);
                    tokens += fields::get_in(f, "arguments")
                        .and_then(Value::as_str)
                        .map_or(0, estimate_text);
                }
            }
        }
    }
    // Legacy completions prompt.
    if let Some(p) = fields::get(body, "prompt") {
        tokens += content_tokens(p);
    }
    // Embeddings input.
    if let Some(i) = fields::get(body, "input") {
        tokens += content_tokens(i);
    }
    if let Some(tools) = fields::get(body, "tools").and_then(Value::as_array) {
        complex |= !tools.is_empty();
        for t in tools {
            tokens += estimate_text(&t.to_string()) / 2 + 8;
        }
    }
    complex |= tokens > 1_000 || count > 6;
    // Only short, tool-free prompts get here.
    if cues && !complex {
        let mut cue = has_cue;
        complex = messages
            .into_iter()
            .flatten()
            .filter_map(|m| fields::get_in(m, "content"))
            .chain(fields::get(body, "prompt"))
            .any(|c| any_text(c, &mut cue));
    }
    PromptFacts {
        tokens,
        complexity: if complex {
            Complexity::Complex
        } else {
            Complexity::Simple
        },
    }
}

/// Whether `f` holds for any text in a content value (a string, or parts with `text`).
fn any_text(content: &Value, f: &mut impl FnMut(&str) -> bool) -> bool {
    match content {
        Value::String(s) => f(s),
        Value::Array(parts) => parts.iter().any(|p| match p {
            Value::String(s) => f(s),
            Value::Object(o) => o.get("text").is_some_and(|t| any_text(t, f)),
            _ => false,
        }),
        _ => false,
    }
}

/// Estimated completion tokens of an OpenAI-shaped answer (chat or text completion, or a
/// Responses API Response passed through natively): its text, refusals and tool-call arguments.
pub fn answer_output(body: &[u8]) -> u32 {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return 0;
    };
    let mut tokens = 0;
    for item in v
        .get("output")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        for part in item
            .get("content")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            for field in ["text", "refusal"] {
                tokens += part
                    .get(field)
                    .and_then(Value::as_str)
                    .map_or(0, estimate_text);
            }
        }
        for field in ["name", "arguments"] {
            tokens += item
                .get(field)
                .and_then(Value::as_str)
                .map_or(0, estimate_text);
        }
    }
    for c in v
        .get("choices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(t) = c.get("text") {
            tokens += content_tokens(t);
        }
        let Some(m) = c.get("message") else { continue };
        for field in ["content", "refusal"] {
            if let Some(t) = m.get(field) {
                tokens += content_tokens(t);
            }
        }
        for call in m
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(f) = call.get("function") {
                tokens += f
                    .get("name")
                    .and_then(Value::as_str)
                    .map_or(0, estimate_text);
                tokens += f
                    .get("arguments")
                    .and_then(Value::as_str)
                    .map_or(0, estimate_text);
            }
        }
    }
    tokens
}

fn content_tokens(content: &Value) -> u32 {
    match content {
        Value::String(s) => estimate_text(s),
        Value::Array(parts) => parts
            .iter()
            .map(|p| match p {
                Value::String(s) => estimate_text(s),
                Value::Number(_) => 1,
                Value::Object(o) => match o.get("type").and_then(Value::as_str) {
                    Some("image_url" | "image" | "input_image") => IMAGE_TOKENS,
                    _ => o.get("text").map_or(0, content_tokens),
                },
                _ => 0,
            })
            .sum(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tracks_known_tokenizer_counts() {
        // cl100k_base counts, for reference: 4, 9, 10.
        assert_eq!(estimate_text("Hello, world!"), 4);
        assert_eq!(
            estimate_text("The quick brown fox jumps over the lazy dog."),
            10
        );
        let n = estimate_text("fn main() { println!(\"hi\"); }");
        assert!((9..=14).contains(&n), "{n}");
        assert_eq!(estimate_text(""), 0);
        // Long numbers split in groups of three digits.
        assert_eq!(estimate_text("1234567"), 3);
    }

    #[test]
    fn chat_bodies_count_framing_images_and_tools() {
        let body = json!({
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
                ]}
            ]
        });
        let f = chat_prompt(body.as_object().unwrap(), true);
        assert_eq!(f.tokens, 3 + 4 + 3 + 4 + 4 + IMAGE_TOKENS);
        assert_eq!(f.complexity, Complexity::Simple);
    }

    #[test]
    fn answers_count_text_and_tool_arguments() {
        let chat = json!({"choices": [{"message": {"role": "assistant", "content": "Hello, world!",
            "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]}}]});
        assert_eq!(answer_output(chat.to_string().as_bytes()), 4 + 1 + 7);
        let text = json!({"choices": [{"text": "Hello, world!"}]});
        assert_eq!(answer_output(text.to_string().as_bytes()), 4);
        assert_eq!(answer_output(b"not json"), 0);
        let response = json!({"object": "response", "output": [
            {"type": "message", "content": [{"type": "output_text", "text": "Hello there friend"}]},
            {"type": "function_call", "name": "f", "arguments": "{\"a\":1}"}]});
        assert_eq!(
            answer_output(response.to_string().as_bytes()),
            estimate_text("Hello there friend") + estimate_text("f") + estimate_text("{\"a\":1}")
        );
        assert!(answer_output(response.to_string().as_bytes()) > 0);
    }

    /// The estimate as it was written first, a character at a time: the reference the table
    /// must agree with.
    fn estimate_text_reference(text: &str) -> u32 {
        let mut tokens: u32 = 0;
        let (mut letters, mut digits) = (0u32, 0u32);
        let flush = |letters: &mut u32, digits: &mut u32, tokens: &mut u32| {
            if *letters > 0 {
                *tokens += 1 + (*letters - 1) / 8;
            }
            if *digits > 0 {
                *tokens += (*digits).div_ceil(3);
            }
            *letters = 0;
            *digits = 0;
        };
        let mut last_newline = false;
        for c in text.chars() {
            if c.is_alphabetic() && (c as u32) < 0x2E80 {
                if digits > 0 {
                    flush(&mut letters, &mut digits, &mut tokens);
                }
                letters += 1;
                last_newline = false;
            } else if c.is_ascii_digit() {
                if letters > 0 {
                    flush(&mut letters, &mut digits, &mut tokens);
                }
                digits += 1;
                last_newline = false;
            } else {
                flush(&mut letters, &mut digits, &mut tokens);
                if c == '\n' {
                    if !last_newline {
                        tokens += 1;
                    }
                    last_newline = true;
                } else if !c.is_whitespace() {
                    tokens += 1;
                    last_newline = false;
                }
            }
        }
        flush(&mut letters, &mut digits, &mut tokens);
        tokens
    }

    #[test]
    fn the_ascii_table_agrees_with_classifying_each_character() {
        for b in 0u8..128 {
            assert_eq!(ASCII[usize::from(b)], class_of(char::from(b)), "byte {b}");
        }
        let fixed = [
            "",
            "Hello, world!",
            "line one\n\n\nline two \n \n three",
            "über naïve café, 東京タワー 123456 ٣٤٥ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \u{a0}nbsp\u{2003}em",
            "tabs\tand\rreturns\x0bvt\x0cff",
            "emoji 🎉🎉 and ZWJ 👩‍💻, mixed42abc7",
        ];
        for t in fixed {
            assert_eq!(estimate_text(t), estimate_text_reference(t), "{t:?}");
        }
        // Random texts drawn from a mix of ASCII, Latin-1, CJK, emoji and white space.
        let pool: Vec<char> = "aZ09 \n\t.,;{}\"'éßñ東京한글😀\u{a0}\u{2028}\u{85}٣"
            .chars()
            .collect();
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..2_000 {
            let n = rng.usize(0..64);
            let t: String = (0..n).map(|_| pool[rng.usize(0..pool.len())]).collect();
            assert_eq!(estimate_text(&t), estimate_text_reference(&t), "{t:?}");
        }
    }

    /// The cue test as it was before the automaton: every cue at every offset.
    fn has_cue_reference(text: &str) -> bool {
        let h = text.as_bytes();
        REASONING_CUES.iter().any(|c| {
            let n = c.as_bytes();
            h.windows(n.len())
                .any(|w| w.iter().zip(n).all(|(a, b)| a.to_ascii_lowercase() == *b))
        })
    }

    #[test]
    fn cue_automaton_agrees_with_testing_each_cue() {
        let texts = [
            "",
            "Say hello",
            "Please PROVE it",
            "Step By Step, please",
            "step by  step",
            "an AlGoRiThM",
            "``",
            "some ``` code",
            "trade–off with an en dash",
            "trade-off",
            "débug ünicode analyse",
            "Ｐｒｏｖｅ in full-width letters",
            "reason about it",
            "reasonabout",
        ];
        let mut matched = 0;
        for t in texts {
            assert_eq!(has_cue(t), has_cue_reference(t), "{t:?}");
            matched += usize::from(has_cue(t));
        }
        assert_eq!(matched, 7, "the cases above hold both answers");
        // Every cue, at the start, the middle and the end of a longer text, in both cases.
        let filler = "lorem ipsum dolor sit amet ".repeat(40);
        for c in REASONING_CUES {
            for t in [
                format!("{c}{filler}"),
                format!("{filler}{}{filler}", c.to_ascii_uppercase()),
                format!("{filler}{c}"),
            ] {
                assert!(has_cue(&t) && has_cue_reference(&t), "{c}");
            }
        }
        assert!(!has_cue(&filler) && !has_cue_reference(&filler));
    }

    #[test]
    fn complexity_sees_tools_code_length_and_cues() {
        let simple = json!({"messages": [{"role": "user", "content": "Say hi"}]});
        assert_eq!(
            chat_prompt(simple.as_object().unwrap(), true).complexity,
            Complexity::Simple
        );
        for body in [
            json!({"messages": [{"role": "user", "content": "Prove that sqrt(2) is irrational"}]}),
            json!({"messages": [{"role": "user", "content": "fix ```x = 1```"}]}),
            json!({"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function", "function": {"name": "f"}}]}),
            json!({"messages": [{"role": "user", "content": "word ".repeat(1200)}]}),
        ] {
            assert_eq!(
                chat_prompt(body.as_object().unwrap(), true).complexity,
                Complexity::Complex,
                "{body}"
            );
        }
        // Without the cue search, only a cue makes no difference; the count does not change.
        let cue =
            json!({"messages": [{"role": "user", "content": "Prove that sqrt(2) is irrational"}]});
        let (with, without) = (
            chat_prompt(cue.as_object().unwrap(), true),
            chat_prompt(cue.as_object().unwrap(), false),
        );
        assert_eq!(with.complexity, Complexity::Complex);
        assert_eq!(without.complexity, Complexity::Simple);
        assert_eq!(with.tokens, without.tokens);
        let long = json!({"messages": [{"role": "user", "content": "word ".repeat(1200)}]});
        assert_eq!(
            chat_prompt(long.as_object().unwrap(), false).complexity,
            Complexity::Complex
        );
    }
}
