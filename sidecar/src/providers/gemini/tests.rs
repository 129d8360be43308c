//! The finer points of the translation that live below its public API: thought signatures in
//! tool-call ids and schema conversion. The rest of the adapter's tests, golden fixtures
//! (`tests/fixtures/gemini/`) included, run in the `golden` test binary.

use serde_json::json;

use super::response::{call_id, signature_of};
use super::schema;

#[test]
fn thought_signatures_ride_in_tool_call_ids() {
    let mut rng = fastrand::Rng::with_seed(9);
    let sig = "CiQB0e2Kb7Wz+/x9Aw==";
    let id = call_id(&mut rng, Some(sig));
    assert!(id.starts_with("call_"));
    assert!(
        id.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
        "{id}"
    );
    assert_eq!(signature_of(&id).as_deref(), Some(sig));
    assert_eq!(signature_of(&call_id(&mut rng, None)), None);
    assert_eq!(signature_of("toolu_01A09q90qw90lq917835lq9"), None);
}

#[test]
fn schemas_keep_only_what_gemini_reads() {
    let s = schema::convert(&json!({
        "type": "object",
        "additionalProperties": false,
        "$schema": "http://json-schema.org/draft-07/schema#",
        "properties": {"a": {"type": ["integer", "null"], "minimum": 1, "examples": [1]}},
        "required": ["a"]
    }))
    .expect("convertible");
    assert_eq!(
        s,
        json!({"type": "OBJECT", "properties": {"a": {"type": "INTEGER", "minimum": 1, "nullable": true}}, "required": ["a"]})
    );
}
