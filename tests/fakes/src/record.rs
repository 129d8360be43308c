//! `/__requests`: the most recent requests as they reached the fake, so tests can assert on what
//! the gateway sent upstream (bodies, rewritten models, headers), without credentials.

use std::collections::VecDeque;
use std::sync::Mutex;

use http::HeaderMap;
use serde_json::{Map, Value, json};

/// How many requests are kept.
pub const CAPACITY: usize = 2000;

/// Headers whose values are never kept, only their presence.
const SECRET_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "api-key",
    "x-api-key",
    "x-goog-api-key",
    "cookie",
];

/// A bounded log of requests.
#[derive(Default)]
pub struct Recorder {
    log: Mutex<VecDeque<Value>>,
}

/// The request fields kept.
pub struct Entry<'a> {
    /// Sequence number.
    pub seq: u64,
    /// Milliseconds since the fake started.
    pub t_ms: f64,
    /// The method.
    pub method: &'a str,
    /// The path, scenario prefix included.
    pub path: &'a str,
    /// The query string.
    pub query: Option<&'a str>,
    /// The scenario segment (`ok` without a prefix).
    pub scenario: &'a str,
    /// The dialect that recognised the path, if any.
    pub dialect: Option<&'a str>,
    /// The operation, if recognised.
    pub op: Option<&'a str>,
    /// What the fake did (`ok`, `429`, `hang`, ...).
    pub answer: &'a str,
    /// The headers.
    pub headers: &'a HeaderMap,
    /// The body.
    pub body: &'a [u8],
}

/// Headers as a JSON object; credentials become `"<present>"`; repeated headers join with `, `.
pub fn headers_json(headers: &HeaderMap) -> Value {
    let mut out = Map::new();
    for (name, value) in headers {
        let name = name.as_str();
        let v = if SECRET_HEADERS.contains(&name) {
            "<present>".to_string()
        } else {
            String::from_utf8_lossy(value.as_bytes()).into_owned()
        };
        match out.get_mut(name) {
            Some(Value::String(prev)) => {
                prev.push_str(", ");
                prev.push_str(&v);
            }
            _ => {
                out.insert(name.to_string(), Value::String(v));
            }
        }
    }
    Value::Object(out)
}

impl Recorder {
    /// Keeps one request, dropping the oldest when full.
    pub fn push(&self, e: Entry<'_>) {
        let body = if e.body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(e.body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(e.body).into_owned()))
        };
        let v = json!({
            "seq": e.seq, "t_ms": e.t_ms, "method": e.method, "path": e.path, "query": e.query,
            "scenario": e.scenario, "dialect": e.dialect, "op": e.op, "answer": e.answer,
            "headers": headers_json(e.headers), "body": body,
        });
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        if log.len() == CAPACITY {
            log.pop_front();
        }
        log.push_back(v);
    }

    /// The kept requests, oldest first, optionally only one scenario's.
    pub fn list(&self, scenario: Option<&str>) -> Value {
        let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let items: Vec<Value> = log
            .iter()
            .filter(|v| scenario.is_none_or(|s| v["scenario"] == s))
            .cloned()
            .collect();
        json!({"object": "list", "data": items})
    }

    /// Forgets everything.
    pub fn clear(&self) {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_reduced_to_presence() {
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer sk-secret".parse().unwrap());
        h.insert("api-key", "azure-secret".parse().unwrap());
        h.insert("x-custom", "kept".parse().unwrap());
        let j = headers_json(&h);
        assert_eq!(j["authorization"], "<present>");
        assert_eq!(j["api-key"], "<present>");
        assert_eq!(j["x-custom"], "kept");
        assert!(!j.to_string().contains("secret"));
    }

    #[test]
    fn the_log_is_bounded_and_filterable() {
        let r = Recorder::default();
        let h = HeaderMap::new();
        for i in 0..CAPACITY as u64 + 5 {
            r.push(Entry {
                seq: i,
                t_ms: 0.0,
                method: "POST",
                path: "/v1/chat/completions",
                query: None,
                scenario: if i % 2 == 0 { "ok" } else { "429" },
                dialect: Some("openai"),
                op: Some("chat"),
                answer: "ok",
                headers: &h,
                body: br#"{"model":"m"}"#,
            });
        }
        let all = r.list(None);
        assert_eq!(all["data"].as_array().unwrap().len(), CAPACITY);
        assert_eq!(all["data"][0]["seq"], 5);
        assert_eq!(all["data"][0]["body"]["model"], "m");
        let some = r.list(Some("429"));
        assert_eq!(some["data"].as_array().unwrap().len(), CAPACITY / 2);
        r.clear();
        assert_eq!(r.list(None)["data"].as_array().unwrap().len(), 0);
    }
}
