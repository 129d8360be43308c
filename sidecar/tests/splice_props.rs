//! Property tests of the body splicer (`splice::replace`) and the output-limit setter
//! (`fields::set_output_limit`): whatever the body, the spliced body parses and differs from the
//! client's only at the replaced value and the appended members.

use std::collections::BTreeMap;

use llmesh_sidecar::{fields, splice};
use proptest::prelude::*;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

/// Strings with what trips a hand-written scanner: quotes, backslashes, brackets, braces,
/// commas, colons, white space, escapes' letters and non-ASCII.
fn text() -> impl Strategy<Value = String> {
    "[a\"\\\\{}\\[\\],: \\nué😀]{0,10}"
}

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e300f64..1e300).prop_map(Value::from),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((text(), inner), 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A request body: members with distinct names around `model`, written compactly or pretty.
fn body() -> impl Strategy<Value = (Map<String, Value>, usize, bool)> {
    (
        prop::collection::vec((text(), value()), 0..6),
        value(),
        any::<prop::sample::Index>(),
        any::<bool>(),
    )
        .prop_map(|(members, model, at, pretty)| {
            let mut m: Map<String, Value> =
                members.into_iter().filter(|(k, _)| k != "model").collect();
            let at = at.index(m.len() + 1);
            let mut out = Map::new();
            for (i, (k, v)) in m.iter_mut().enumerate() {
                if i == at {
                    out.insert("model".into(), model.clone());
                }
                out.insert(k.clone(), v.take());
            }
            out.entry("model").or_insert(model);
            (out, at, pretty)
        })
}

const VALUES: [&[u8]; 4] = [br#""gpt-4o""#, b"1024", br#"{"a":[1,"}"]}"#, b"null"];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn a_spliced_body_differs_only_where_intended(
        (body, _at, pretty) in body(),
        which in 0..VALUES.len(),
        add in any::<bool>(),
        lead in "[ \\n\\t]{0,2}",
        trail in "[ \\n\\t]{0,2}",
    ) {
        let raw = format!(
            "{lead}{}{trail}",
            if pretty { serde_json::to_string_pretty(&body) } else { serde_json::to_string(&body) }.unwrap()
        );
        let value = VALUES[which];
        let extra: &[u8] = if add { br#""stream_options":{"include_usage":true}"# } else { b"" };
        let out = splice::replace(raw.as_bytes(), "model", value, extra).expect("spliced");

        // Byte for byte: everything but the old value, plus the appended members.
        let members: BTreeMap<String, &RawValue> = serde_json::from_str(&raw).unwrap();
        let old = members["model"].get();
        let start = old.as_ptr() as usize - raw.as_ptr() as usize;
        let close = raw.trim_end().len() - 1;
        let mut want = raw.as_bytes()[..start].to_vec();
        want.extend_from_slice(value);
        want.extend_from_slice(&raw.as_bytes()[start + old.len()..close]);
        if add {
            want.push(b',');
            want.extend_from_slice(extra);
        }
        want.extend_from_slice(&raw.as_bytes()[close..]);
        prop_assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(&want));

        // And it parses as the body with `model` replaced and the member appended.
        let mut parsed: Map<String, Value> = serde_json::from_str(&raw).unwrap();
        parsed.insert("model".into(), serde_json::from_slice(value).unwrap());
        if add {
            parsed.insert("stream_options".into(), json!({"include_usage": true}));
        }
        prop_assert_eq!(serde_json::from_slice::<Value>(&out).unwrap(), Value::Object(parsed));
    }

    #[test]
    fn a_name_given_twice_or_missing_is_refused((body, _at, _pretty) in body(), dup in any::<prop::sample::Index>()) {
        let raw = serde_json::to_string(&body).unwrap();
        // The same name again at the end (written escaped, as a client may): parsers disagree on
        // which one wins, so the splicer must not choose.
        let names: Vec<&String> = body.keys().collect();
        let name = names[dup.index(names.len())];
        let escaped: String = serde_json::to_string(name).unwrap()
            .chars()
            .map(|c| if c == 'm' { "\\u006d".to_string() } else { c.to_string() })
            .collect();
        let twice = format!("{},{escaped}:0}}", &raw[..raw.len() - 1]);
        prop_assert_eq!(splice::replace(twice.as_bytes(), "model", b"1", b""), None);
        let mut without = body.clone();
        without.remove("model");
        let raw = serde_json::to_string(&without).unwrap();
        prop_assert_eq!(splice::replace(raw.as_bytes(), "model", b"1", b""), None);
    }

    #[test]
    fn the_output_limit_changes_the_limit_fields_only(
        (mut body, _at, _pretty) in body(),
        limits in prop::collection::vec(prop_oneof![Just(Value::Null), any::<u32>().prop_map(Value::from)], 0..=2),
        n in any::<u32>(),
        field in prop_oneof![Just("max_tokens"), Just("max_completion_tokens")],
    ) {
        for (k, v) in ["max_tokens", "max_completion_tokens"].into_iter().zip(limits) {
            body.insert(k.into(), v);
        }
        let before = body.clone();
        fields::set_output_limit(&mut body, field, n);
        let set: Vec<&str> = ["max_tokens", "max_completion_tokens"]
            .into_iter()
            .filter(|k| before.get(*k).is_some_and(|v| !v.is_null()))
            .collect();
        let mut want = before.clone();
        if set.is_empty() {
            want.insert(field.into(), json!(n));
        }
        for k in set {
            want.insert(k.into(), json!(n));
        }
        prop_assert_eq!(body, want);
    }
}
