//! The client's JSON body sent on as the client wrote it, with one top-level member's value
//! replaced and members appended. Most requests change nothing but `model` on the way to an
//! OpenAI-shaped provider: splicing costs one scan of the top level, where serialising the
//! parsed body again cost about 9 instructions per byte and normalised what the client wrote
//! (number formats, escapes, integers past 2^64). serde_json's `RawValue` finds the same spans
//! but walks every nested token (about 3 instructions per byte, more than serialising a small
//! body); skipping strings with `memchr` walks only the structure.

use std::borrow::Cow;

/// `raw` (a JSON object) with the value of its top-level member `key` replaced by `value`
/// (JSON), and `extra` (JSON members, `"name":value,...`; empty for none) appended.
///
/// `raw` must be JSON the caller has already parsed: the scan trusts its structure and only
/// finds where the top-level members are. `None` when `raw` is not an object, has no `key`, or
/// names a top-level member twice: parsers disagree on which of two equal names wins, so the
/// body the sidecar checked (its limits read the last) might not be the one the provider
/// reads. The caller then serialises its parsed body instead.
pub fn replace(raw: &[u8], key: &str, value: &[u8], extra: &[u8]) -> Option<Vec<u8>> {
    let members = members(raw)?;
    let names_twice = if members.len() <= 16 {
        members
            .iter()
            .enumerate()
            .any(|(i, (a, _))| members[..i].iter().any(|(b, _)| a == b))
    } else {
        let mut seen = std::collections::HashSet::with_capacity(members.len());
        !members.iter().all(|(k, _)| seen.insert(k.as_ref()))
    };
    if names_twice {
        return None;
    }
    let (start, end) = members.iter().find(|(k, _)| k == key)?.1;
    // The object's closing brace: the last byte that is not white space.
    let close = raw.iter().rposition(|b| !b.is_ascii_whitespace())?;
    let mut out = Vec::with_capacity(raw.len() - (end - start) + value.len() + extra.len() + 1);
    out.extend_from_slice(&raw[..start]);
    out.extend_from_slice(value);
    out.extend_from_slice(&raw[end..close]);
    if !extra.is_empty() {
        out.push(b',');
        out.extend_from_slice(extra);
    }
    out.extend_from_slice(&raw[close..]);
    Some(out)
}

/// A member's name and where its value starts and ends.
type Member<'a> = (Cow<'a, str>, (usize, usize));

/// The top-level members of the JSON object `raw`: each name (unescaped) and where its value
/// starts and ends. Strings are skipped with `memchr`; nesting is counted without telling
/// arrays from objects, which valid JSON makes safe. `None` for anything but an object.
fn members(raw: &[u8]) -> Option<Vec<Member<'_>>> {
    let ws = |mut i: usize| {
        while raw.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        i
    };
    // The index just past the string whose opening quote is at `i`.
    let string_end = |mut i: usize| -> Option<usize> {
        i += 1;
        loop {
            i += memchr::memchr2(b'"', b'\\', raw.get(i..)?)?;
            if raw[i] == b'"' {
                return Some(i + 1);
            }
            i += 2; // an escape and the byte it escapes
        }
    };
    let mut out = Vec::with_capacity(12);
    let mut i = ws(0);
    if raw.get(i) != Some(&b'{') {
        return None;
    }
    i = ws(i + 1);
    if raw.get(i) == Some(&b'}') {
        return (ws(i + 1) == raw.len()).then_some(out);
    }
    loop {
        if raw.get(i) != Some(&b'"') {
            return None;
        }
        let name_end = string_end(i)?;
        let quoted = &raw[i..name_end];
        let name = if quoted.contains(&b'\\') {
            Cow::Owned(serde_json::from_slice::<String>(quoted).ok()?)
        } else {
            Cow::Borrowed(std::str::from_utf8(&quoted[1..quoted.len() - 1]).ok()?)
        };
        i = ws(name_end);
        if raw.get(i) != Some(&b':') {
            return None;
        }
        let start = ws(i + 1);
        let end = match *raw.get(start)? {
            b'"' => string_end(start)?,
            b'{' | b'[' => {
                let mut depth = 0usize;
                let mut j = start;
                loop {
                    match *raw.get(j)? {
                        b'"' => {
                            j = string_end(j)?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                break j + 1;
                            }
                        }
                        _ => {}
                    }
                    j += 1;
                }
            }
            // A number, true, false or null.
            _ => {
                let n = raw[start..]
                    .iter()
                    .position(|b| matches!(b, b',' | b'}' | b']') || b.is_ascii_whitespace())?;
                start + n
            }
        };
        out.push((name, (start, end)));
        i = ws(end);
        match raw.get(i)? {
            b',' => i = ws(i + 1),
            b'}' if ws(i + 1) == raw.len() => return Some(out),
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn s(v: Option<Vec<u8>>) -> Option<String> {
        v.map(|b| String::from_utf8(b).unwrap())
    }

    #[test]
    fn replaces_one_member_and_keeps_every_other_byte() {
        let raw =
            br#"{ "temperature" : 1.0e0, "model":"chat" ,"seed":123456789012345678901234567890,
            "messages":[{"role":"user","content":"caf\u00e9 \"model\": x","model":"inner"}] }"#;
        let out = s(replace(raw, "model", br#""gpt-4o""#, b"")).unwrap();
        assert_eq!(
            out,
            String::from_utf8(raw.to_vec()).unwrap().replacen(
                r#""model":"chat""#,
                r#""model":"gpt-4o""#,
                1
            )
        );
        // Only the top-level member changed: the nested one and the text are as sent.
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["model"], "gpt-4o");
        assert_eq!(v["messages"][0]["model"], "inner");
    }

    #[test]
    fn appends_members_before_the_closing_brace() {
        let raw = b"{\"model\":\"chat\",\"stream\":true}\n\n";
        let out = s(replace(
            raw,
            "model",
            br#""m""#,
            br#""stream_options":{"include_usage":true}"#,
        ))
        .unwrap();
        assert_eq!(
            out,
            "{\"model\":\"m\",\"stream\":true,\"stream_options\":{\"include_usage\":true}}\n\n"
        );
        assert_eq!(
            serde_json::from_str::<Value>(&out).unwrap(),
            json!({"model": "m", "stream": true, "stream_options": {"include_usage": true}})
        );
    }

    #[test]
    fn finds_an_escaped_name_and_values_of_every_kind() {
        let raw = br#"{"mod\u0065l":{"a":[1,{"b":"}"}]},"x":null}"#;
        assert_eq!(
            s(replace(raw, "model", b"2", b"")).unwrap(),
            r#"{"mod\u0065l":2,"x":null}"#
        );
        for value in [&b"null"[..], b"[]", b"\"\"", b"-0.5e-3", b"true"] {
            let mut raw = b"{\"model\":".to_vec();
            raw.extend_from_slice(value);
            raw.push(b'}');
            assert_eq!(
                s(replace(&raw, "model", b"\"m\"", b"")).unwrap(),
                r#"{"model":"m"}"#
            );
        }
    }

    /// A random JSON value whose strings hold quotes, backslashes, brackets and non-ASCII.
    fn random_value(rng: &mut fastrand::Rng, depth: u32) -> Value {
        let text = |rng: &mut fastrand::Rng| -> String {
            let pool = [
                'a', '"', '\\', '{', '}', '[', ']', ',', ':', ' ', 'é', '😀', '\n',
            ];
            (0..rng.usize(0..12))
                .map(|_| pool[rng.usize(0..pool.len())])
                .collect()
        };
        match rng.u32(0..if depth > 3 { 4 } else { 6 }) {
            0 => Value::Null,
            1 => Value::Bool(rng.bool()),
            2 => json!(rng.i64(..) as f64 / 7.0),
            3 => Value::String(text(rng)),
            4 => Value::Array(
                (0..rng.usize(0..4))
                    .map(|_| random_value(rng, depth + 1))
                    .collect(),
            ),
            _ => Value::Object(
                (0..rng.usize(0..4))
                    .map(|_| (text(rng), random_value(rng, depth + 1)))
                    .collect(),
            ),
        }
    }

    #[test]
    fn splices_random_bodies_as_a_parse_and_insert_would() {
        let mut rng = fastrand::Rng::with_seed(11);
        for n in 0..3_000 {
            let mut body = serde_json::Map::new();
            for _ in 0..rng.usize(0..6) {
                body.insert(format!("k{}", rng.u8(..)), random_value(&mut rng, 0));
            }
            body.insert("model".into(), random_value(&mut rng, 0));
            for _ in 0..rng.usize(0..3) {
                body.insert(format!("z{}", rng.u8(..)), random_value(&mut rng, 0));
            }
            let raw = if n % 2 == 0 {
                serde_json::to_vec(&body).unwrap()
            } else {
                serde_json::to_vec_pretty(&body).unwrap()
            };
            let out = replace(&raw, "model", br#""m""#, br#""x":[1]"#).expect("spliced");
            // Parsed back from `raw`: serde_json does not round-trip every float exactly.
            let mut expected: serde_json::Map<String, Value> =
                serde_json::from_slice(&raw).unwrap();
            expected.insert("model".into(), json!("m"));
            expected.insert("x".into(), json!([1]));
            assert_eq!(
                serde_json::from_slice::<Value>(&out).unwrap(),
                Value::Object(expected),
                "{}",
                String::from_utf8_lossy(&raw)
            );
        }
    }

    #[test]
    fn refuses_what_it_cannot_splice_safely() {
        // A name given twice: which one a parser keeps differs.
        assert_eq!(
            replace(
                br#"{"model":"a","max_tokens":9,"max_tokens":1}"#,
                "model",
                b"1",
                b""
            ),
            None
        );
        assert_eq!(
            replace(br#"{"model":"a","mod\u0065l":"b"}"#, "model", b"1", b""),
            None
        );
        let many: String = (0..40).map(|i| format!("\"k{i}\":{i},")).collect();
        let twice = format!("{{{many}\"model\":1,\"k7\":0}}");
        assert_eq!(replace(twice.as_bytes(), "model", b"1", b""), None);
        let once = format!("{{{many}\"model\":1}}");
        assert!(replace(once.as_bytes(), "model", b"2", b"").is_some());
        // No such member, not an object, not JSON.
        assert_eq!(replace(br#"{"messages":[]}"#, "model", b"1", b""), None);
        assert_eq!(replace(br#"["model"]"#, "model", b"1", b""), None);
        assert_eq!(replace(br#"{"model":"a""#, "model", b"1", b""), None);
        assert_eq!(replace(br#"{"model":"a"} x"#, "model", b"1", b""), None);
    }
}
