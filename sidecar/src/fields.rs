//! Field lookups in request bodies without hashing. A body's maps are small (a chat request has
//! a handful of keys, a message two or three), where comparing the keys in order costs a few
//! instructions against the few hundred of hashing the key for `Map::get`; it is what the hot
//! path reads the client's body with.

use serde_json::{Map, Value};

/// Maps up to this many keys are searched in order; larger ones through their index.
const SCAN_UP_TO: usize = 12;

/// `m[key]`, like [`Map::get`].
pub fn get<'a>(m: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    if m.len() > SCAN_UP_TO {
        return m.get(key);
    }
    m.iter().find_map(|(k, v)| (k == key).then_some(v))
}

/// `m[key]`, mutable, like [`Map::get_mut`].
pub fn get_mut<'a>(m: &'a mut Map<String, Value>, key: &str) -> Option<&'a mut Value> {
    if m.len() > SCAN_UP_TO {
        return m.get_mut(key);
    }
    m.iter_mut().find_map(|(k, v)| (k == key).then_some(v))
}

/// Sets `m[key]`, like [`Map::insert`]; a key already there keeps its place.
pub fn set(m: &mut Map<String, Value>, key: &str, value: Value) {
    match get_mut(m, key) {
        Some(v) => *v = value,
        None => {
            m.insert(key.to_string(), value);
        }
    }
}

/// `v[key]` when `v` is an object, like [`Value::get`] with a string key.
pub fn get_in<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.as_object().and_then(|m| get(m, key))
}

/// Whether `m` has `key`, like [`Map::contains_key`].
pub fn has(m: &Map<String, Value>, key: &str) -> bool {
    get(m, key).is_some()
}

/// Sets a request's output limit to `n`: in every limit field the body has (`max_tokens`,
/// `max_completion_tokens`), else in `key`.
pub fn set_output_limit(m: &mut Map<String, Value>, key: &str, n: u32) {
    let mut set = false;
    for k in ["max_completion_tokens", "max_tokens"] {
        if let Some(v) = get_mut(m, k)
            && !v.is_null()
        {
            *v = Value::from(n);
            set = true;
        }
    }
    if !set {
        m.insert(key.into(), Value::from(n));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_what_map_get_finds_in_small_and_large_maps() {
        let small =
            json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": true});
        let mut large = Map::new();
        for i in 0..40 {
            large.insert(format!("k{i}"), json!(i));
        }
        for m in [small.as_object().unwrap(), &large] {
            for key in [
                "model", "messages", "stream", "k0", "k39", "k40", "", "Model",
            ] {
                assert_eq!(get(m, key), m.get(key), "key {key:?}");
                assert_eq!(has(m, key), m.contains_key(key), "key {key:?}");
            }
        }
        let mut m = small.as_object().unwrap().clone();
        set(&mut m, "model", json!("other"));
        set(&mut m, "user", json!("u"));
        assert_eq!(
            Value::Object(m),
            json!({"model": "other", "messages": small["messages"], "stream": true, "user": "u"})
        );
        if let Some(v) = get_mut(&mut large, "k39") {
            *v = json!("changed");
        }
        assert_eq!(large["k39"], json!("changed"));
        let msg = &small["messages"][0];
        assert_eq!(get_in(msg, "content"), Some(&json!("hi")));
        assert_eq!(get_in(msg, "name"), None);
        assert_eq!(get_in(&json!("not an object"), "content"), None);
    }
}
