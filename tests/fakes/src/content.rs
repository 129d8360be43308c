//! What the fake says, independent of wire format: reply words, values shaped by JSON schemas,
//! deterministic embeddings, ids and rough token counts. Every dialect shares these so the same
//! request gets the same answer whatever the format.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

/// The fixed start of every reply.
const PREFIX: [&str; 5] = ["Hello", "from", "the", "fake", "provider."];

/// Reply words: a fixed greeting, then the last user message echoed back (up to 24 words), so a
/// test can tell which request an answer belongs to. With `count`, exactly that many words.
pub fn reply_words(last_user: &str, count: Option<usize>) -> Vec<String> {
    let mut words: Vec<String> = PREFIX.iter().map(|w| w.to_string()).collect();
    if !last_user.is_empty() {
        words.push("You".into());
        words.push("said:".into());
        words.extend(last_user.split_whitespace().take(24).map(str::to_string));
    }
    if let Some(n) = count {
        let base = words.clone();
        words = (0..n).map(|i| base[i % base.len()].clone()).collect();
    }
    words
}

/// Joins words into streamable pieces: each word but the first carries its leading space, as
/// tokenizers emit them.
pub fn pieces(words: &[String]) -> Vec<String> {
    words
        .iter()
        .enumerate()
        .map(|(i, w)| if i == 0 { w.clone() } else { format!(" {w}") })
        .collect()
}

/// How an answer ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// The model finished.
    Natural,
    /// A stop sequence matched (the sequence; it is not part of the answer).
    Stop(String),
    /// The token limit cut it short.
    Length,
}

/// Applies stop sequences, then the token limit, to reply pieces (one piece ~ one token).
pub fn cut(mut ps: Vec<String>, stop: &[String], max: Option<usize>) -> (Vec<String>, End) {
    let text = ps.concat();
    let mut end = End::Natural;
    if let Some((at, seq)) = stop
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()).map(|i| (i, s)))
        .min_by_key(|(i, _)| *i)
    {
        let mut out = Vec::new();
        let mut len = 0;
        for p in ps {
            if len + p.len() >= at {
                let keep = &p[..at - len];
                if !keep.is_empty() {
                    out.push(keep.to_string());
                }
                break;
            }
            len += p.len();
            out.push(p);
        }
        ps = out;
        end = End::Stop(seq.clone());
    }
    match max {
        Some(m) if ps.len() > m => {
            ps.truncate(m);
            (ps, End::Length)
        }
        _ => (ps, end),
    }
}

/// Streams structured output in pieces too, so streaming clients must assemble it.
pub fn json_pieces(v: &Value) -> Vec<String> {
    let s: Vec<char> = v.to_string().chars().collect();
    s.chunks(8).map(|c| c.iter().collect()).collect()
}

/// The text a tool result echoes: "The tool returned: ..." as pieces.
pub fn tool_result_pieces(result: &str) -> Vec<String> {
    let words: Vec<String> = format!("The tool returned: {result}")
        .split_whitespace()
        .map(String::from)
        .collect();
    pieces(&words)
}

/// About four characters per token, never zero for non-empty text.
pub fn estimate_tokens(text_len: usize) -> u64 {
    (text_len as u64).div_ceil(4)
}

/// Seconds since the epoch.
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A mixed 64-bit value for ids (splitmix64 of the sequence number and the process start).
pub fn mix(seq: u64) -> u64 {
    static SALT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let salt = *SALT.get_or_init(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    let mut z = seq.wrapping_add(salt).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// An id like OpenAI's: a prefix and 24 alphanumerics (`chatcmpl-...`, `call_...`).
pub fn id(prefix: &str, seq: u64) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut s = String::with_capacity(prefix.len() + 24);
    s.push_str(prefix);
    let (mut a, mut b) = (mix(seq), mix(seq ^ 0x5555));
    for i in 0..24 {
        let x = if i < 12 { &mut a } else { &mut b };
        s.push(ALPHABET[(*x % 62) as usize] as char);
        *x /= 62;
    }
    s
}

/// A request id like OpenAI's `x-request-id`: `req_` and 32 hex digits.
pub fn request_id(seq: u64) -> String {
    format!("req_{:016x}{:016x}", mix(seq), mix(!seq))
}

/// Standard base64 with padding.
pub fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if c.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if c.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

/// A deterministic unit vector for `text`: the same input always embeds the same way.
pub fn embedding(text: &str, dims: usize) -> Vec<f32> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let mut v: Vec<f32> = (0..dims)
        .map(|i| {
            h = h
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407 + i as u64);
            ((h >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect();
    let norm = v
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::EPSILON);
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

/// A value that satisfies a JSON schema well enough for clients that validate tool arguments and
/// structured output (zod, pydantic): every property, the right types, enums' first member,
/// minimums, minimum lengths and common string formats.
pub fn sample(schema: &Value) -> Value {
    sample_in(schema, schema, 0)
}

fn sample_in(schema: &Value, root: &Value, depth: u32) -> Value {
    if depth > 16 {
        return Value::Null;
    }
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        // Local references only (`#/$defs/x`, `#/definitions/x`), which is what SDKs emit.
        let target = r
            .strip_prefix('#')
            .and_then(|p| root.pointer(p))
            .unwrap_or(&Value::Null);
        return sample_in(target, root, depth + 1);
    }
    if let Some(Value::Array(options)) = schema.get("enum") {
        return options.first().cloned().unwrap_or(Value::Null);
    }
    if let Some(c) = schema.get("const") {
        return c.clone();
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(Value::Array(options)) = schema.get(key)
            && let Some(first) = options
                .iter()
                .find(|o| o.get("type").and_then(Value::as_str) != Some("null"))
        {
            return sample_in(first, root, depth + 1);
        }
    }
    let ty = match schema.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("null"),
        _ if schema.get("properties").is_some() => "object",
        _ if schema.get("items").is_some() => "array",
        _ => "string",
    };
    let num = |k: &str| schema.get(k).and_then(Value::as_f64);
    match ty {
        "object" => {
            let mut out = Map::new();
            if let Some(Value::Object(props)) = schema.get("properties") {
                for (k, s) in props {
                    out.insert(k.clone(), sample_in(s, root, depth + 1));
                }
            }
            Value::Object(out)
        }
        "array" => {
            let item = schema
                .get("items")
                .map_or(json!("fake"), |s| sample_in(s, root, depth + 1));
            let n = schema
                .get("minItems")
                .and_then(Value::as_u64)
                .unwrap_or(1)
                .max(1);
            Value::Array((0..n).map(|_| item.clone()).collect())
        }
        "integer" => {
            let lo = num("minimum")
                .or(num("exclusiveMinimum").map(|m| m + 1.0))
                .unwrap_or(1.0);
            let hi = num("maximum").unwrap_or(f64::MAX);
            json!(lo.max(1.0f64.min(hi)).ceil() as i64)
        }
        "number" => {
            let lo = num("minimum").or(num("exclusiveMinimum").map(|m| m + 0.5));
            let v = lo.unwrap_or(1.5);
            json!(num("maximum").map_or(v, |hi| v.min(hi)))
        }
        "boolean" => json!(true),
        "null" => Value::Null,
        _ => {
            let s = match schema.get("format").and_then(Value::as_str) {
                Some("email") => "fake@example.com",
                Some("uri" | "url") => "https://example.com/fake",
                Some("date-time") => "2024-01-01T00:00:00Z",
                Some("date") => "2024-01-01",
                Some("time") => "00:00:00",
                Some("uuid") => "00000000-0000-4000-8000-000000000000",
                _ => "fake",
            };
            let min = schema.get("minLength").and_then(Value::as_u64).unwrap_or(0) as usize;
            let mut s = s.to_string();
            while s.len() < min {
                s.push('x');
            }
            Value::String(s)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_rfc_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn samples_follow_the_schema() {
        let schema = json!({"type": "object", "properties": {
            "city": {"type": "string", "minLength": 6}, "days": {"type": "integer", "minimum": 3},
            "unit": {"enum": ["celsius", "fahrenheit"]}, "tags": {"type": "array", "items": {"type": "string"}},
            "maybe": {"anyOf": [{"type": "null"}, {"type": "boolean"}]},
            "mail": {"type": "string", "format": "email"}, "who": {"$ref": "#/$defs/person"}
        }, "$defs": {"person": {"type": "object", "properties": {"age": {"type": "integer"}}}}});
        assert_eq!(
            sample(&schema),
            json!({"city": "fakexx", "days": 3, "unit": "celsius", "tags": ["fake"], "maybe": true,
                   "mail": "fake@example.com", "who": {"age": 1}})
        );
    }

    #[test]
    fn ids_and_embeddings_are_stable() {
        assert_eq!(id("chatcmpl-", 7), id("chatcmpl-", 7));
        assert_ne!(id("chatcmpl-", 7), id("chatcmpl-", 8));
        assert_eq!(id("call_", 1).len(), 5 + 24);
        assert_eq!(request_id(3).len(), 36);
        let v = embedding("hello", 16);
        assert_eq!(v, embedding("hello", 16));
        assert!((v.iter().map(|x| x * x).sum::<f32>() - 1.0).abs() < 1e-4);
    }

    #[test]
    fn cut_applies_stop_sequences_then_the_limit() {
        let ps = pieces(&reply_words("a b", None));
        let (out, end) = cut(ps.clone(), &["fake".into(), "from".into()], None);
        assert_eq!(
            (out.concat(), end),
            ("Hello ".into(), End::Stop("from".into()))
        );
        let (out, end) = cut(ps.clone(), &[], Some(2));
        assert_eq!((out.len(), end), (2, End::Length));
        assert_eq!(cut(ps.clone(), &[String::new()], None).1, End::Natural);
    }

    #[test]
    fn replies_echo_the_prompt_or_have_the_asked_length() {
        assert_eq!(
            reply_words("ping pong", None).join(" "),
            "Hello from the fake provider. You said: ping pong"
        );
        assert_eq!(reply_words("x", Some(12)).len(), 12);
        assert_eq!(
            pieces(&reply_words("", None)).concat(),
            "Hello from the fake provider."
        );
    }
}
