//! The body splicer (`splice::replace`) and the output-limit setter (`fields::set_output_limit`).
//! Properties: a spliced body is the input byte for byte except the replaced value and the
//! appended members, and parses as the input with those changes; the splicer refuses only what
//! it must (not an object, no such member, a name given twice); the limit setter changes the
//! limit fields and nothing else.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use llmesh_sidecar::{fields, splice};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

/// The top-level member names of an object, in order, duplicates kept.
struct Names(Vec<String>);

impl<'de> serde::Deserialize<'de> for Names {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Names;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Names, A::Error> {
                let mut out = Vec::new();
                while let Some((k, _)) = m.next_entry::<String, serde::de::IgnoredAny>()? {
                    out.push(k);
                }
                Ok(Names(out))
            }
        }
        d.deserialize_map(V)
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The splicer's contract: the caller has already parsed the body.
    let Ok(parsed) = serde_json::from_str::<Value>(text) else {
        return;
    };
    let mut rng = llmesh_fuzz::rng_for(data);
    let names = serde_json::from_str::<Names>(text).map(|n| n.0).ok();
    // The member to replace: `model` (what the proxy splices), or one the input has.
    let key = match &names {
        Some(n) if !n.is_empty() && rng.bool() => n[rng.usize(0..n.len())].clone(),
        _ => "model".to_string(),
    };
    let values: [&[u8]; 4] = [br#""gpt-4o""#, b"1024", br#"{"a":[1,"}"]}"#, b"null"];
    let value = values[rng.usize(0..values.len())];
    let extra: &[u8] = if rng.bool() {
        br#""stream_options":{"include_usage":true}"#
    } else {
        b""
    };
    let out = splice::replace(data, &key, value, extra);

    let twice = names.as_ref().is_some_and(|n| {
        let mut seen = std::collections::HashSet::new();
        !n.iter().all(|k| seen.insert(k))
    });
    let has_key = names.as_ref().is_some_and(|n| n.contains(&key));
    match out {
        None => assert!(
            names.is_none() || !has_key || twice,
            "refused an object that has `{key}` once and no name twice: {text}"
        ),
        Some(out) => {
            assert!(has_key && !twice, "spliced what it must refuse: {text}");
            // Byte for byte: the input up to the old value, the new value, the rest of the
            // input up to the closing brace, the appended members, the brace and what follows.
            let raw: BTreeMap<String, &RawValue> = serde_json::from_str(text).unwrap();
            let old = raw[&key].get();
            let start = old.as_ptr() as usize - text.as_ptr() as usize;
            let end = start + old.len();
            let close = data.iter().rposition(|b| !b.is_ascii_whitespace()).unwrap();
            let mut expected = data[..start].to_vec();
            expected.extend_from_slice(value);
            expected.extend_from_slice(&data[end..close]);
            if !extra.is_empty() {
                expected.push(b',');
                expected.extend_from_slice(extra);
            }
            expected.extend_from_slice(&data[close..]);
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&expected),
                "input: {text}"
            );
            // And it parses as the input with the member replaced and the extra appended.
            let mut want = parsed.as_object().unwrap().clone();
            want.insert(key.clone(), serde_json::from_slice(value).unwrap());
            if !extra.is_empty() {
                want.insert("stream_options".into(), json!({"include_usage": true}));
            }
            let got: Value = serde_json::from_slice(&out).expect("the spliced body parses");
            assert_eq!(got, Value::Object(want), "input: {text}");
        }
    }

    // The output-limit setter: the limit fields that hold a value become `n`, or `field` is
    // added; every other member stays as it was.
    if let Value::Object(before) = parsed {
        let n = rng.u32(..);
        let field = if rng.bool() {
            "max_tokens"
        } else {
            "max_completion_tokens"
        };
        let mut after: Map<String, Value> = before.clone();
        fields::set_output_limit(&mut after, field, n);
        let limits = ["max_tokens", "max_completion_tokens"];
        let had = limits
            .iter()
            .any(|k| before.get(*k).is_some_and(|v| !v.is_null()));
        for (k, v) in &after {
            let was = before.get(k);
            if limits.contains(&k.as_str()) && was.is_some_and(|v| !v.is_null()) {
                assert_eq!(v, &json!(n), "{k} not set to {n}: {before:?}");
            } else if !had && k == field {
                assert_eq!(v, &json!(n), "{k} not added as {n}: {before:?}");
            } else {
                assert_eq!(Some(v), was, "{k} changed: {before:?}");
            }
        }
        let added = usize::from(!had && !before.contains_key(field));
        assert_eq!(after.len(), before.len() + added, "{before:?} -> {after:?}");
    }
});
