use serde_json::json;

use super::*;

#[test]
fn routes_models_and_tuned_models_with_their_verbs() {
    let r = |p: &str, q: Option<&str>| Gemini.route(&Method::POST, p, q);
    let ep = r("/v1beta/models/gemini-2.5-flash:generateContent", None).unwrap();
    assert_eq!(
        (ep.op, ep.flavor, ep.path_model.as_deref()),
        (Op::Chat, NAME, Some("gemini-2.5-flash"))
    );
    let ep = r("/v1beta/models/g:streamGenerateContent", Some("alt=sse")).unwrap();
    assert_eq!(ep.flavor, SSE);
    let ep = r("/v1/models/g:streamGenerateContent", None).unwrap();
    assert_eq!(ep.flavor, JSON_STREAM);
    let ep = r("/v1beta/tunedModels/mine:generateContent", None).unwrap();
    assert_eq!(ep.path_model.as_deref(), Some("tunedModels/mine"));
    assert_eq!(
        r("/v1beta/models/g:countTokens", None).unwrap().op,
        Op::CountTokens
    );
    assert!(r("/v1beta/models/g:embedContent", None).is_none());
    assert!(r("/v1/chat/completions", None).is_none());
}

#[test]
fn gemini_schemas_become_json_schemas_for_the_sampler() {
    let s = json!({"type": "OBJECT", "nullable": true, "properties": {
        "a": {"type": "ARRAY", "items": {"type": "INTEGER", "minimum": 3}},
        "b": {"anyOf": [{"type": "STRING"}]}}});
    assert_eq!(check_schema(&s, "x"), Ok(()));
    assert_eq!(
        content::sample(&json_schema(&s)),
        json!({"a": [3], "b": "fake"})
    );
    let err = check_schema(
        &json!({"type": "OBJECT", "properties": {"a": {"type": "STRING", "const": "x"}}}),
        "p",
    )
    .unwrap_err();
    assert!(
        err.contains("Unknown name \"const\" at 'p.properties[a].value'"),
        "{err}"
    );
}
