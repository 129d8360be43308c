//! A backend's extra headers (`backends[].headers`) reach the provider by one rule, whatever the
//! provider: each goes out exactly once, and one named like a header the provider sets itself
//! (`accept`, `anthropic-version`, a forwarded `anthropic-beta`) replaces it, whatever its case.

mod common;

use serde_json::{Value, json};

use common::*;
use llmesh_api::ProviderKind;

/// The backend YAML after `provider` for `kind`: model, URL and deployment where needed.
fn backend_of(kind: ProviderKind) -> &'static str {
    match kind {
        ProviderKind::Azure => {
            "model: gpt-4o-2024-08-06, baseUrl: \"https://res.openai.azure.com/openai\", azure: {deployment: chat-prod, apiVersion: \"2024-10-21\"}"
        }
        ProviderKind::OpenaiCompatible => {
            "model: llama-3.3-70b-instruct, baseUrl: \"http://vllm.test/v1\""
        }
        ProviderKind::Anthropic => "model: claude-sonnet-4-20250514",
        ProviderKind::Gemini => "model: gemini-2.5-flash-001",
        _ => "model: some-model",
    }
}

/// A 200 answer in `kind`'s wire format.
fn answer_of(kind: ProviderKind) -> Reply {
    match kind {
        ProviderKind::Anthropic => Reply::json(
            200,
            json!({
                "id": "msg_1", "type": "message", "role": "assistant",
                "model": "claude-sonnet-4-20250514",
                "content": [{"type": "text", "text": "hi"}],
                "stop_reason": "end_turn", "stop_sequence": null,
                "usage": {"input_tokens": 3, "output_tokens": 1}
            }),
        ),
        ProviderKind::Gemini => Reply::json(
            200,
            json!({
                "candidates": [{"content": {"role": "model", "parts": [{"text": "hi"}]}, "finishReason": "STOP", "index": 0}],
                "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 1, "totalTokenCount": 4},
                "modelVersion": "gemini-2.5-flash-001"
            }),
        ),
        _ => Reply::ok("hi", 3, 1),
    }
}

/// The header the key goes in.
fn auth_header(kind: ProviderKind) -> &'static str {
    match kind {
        ProviderKind::Azure => "api-key",
        ProviderKind::Anthropic => "x-api-key",
        ProviderKind::Gemini => "x-goog-api-key",
        _ => "authorization",
    }
}

/// Every value of header `name` the upstream received.
fn values(seen: &Seen, name: &str) -> Vec<String> {
    seen.headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().expect("visible ASCII").to_string())
        .collect()
}

/// A route `chat` with one backend `b` of `kind` carrying `headers` (YAML flow mapping).
fn app_for(kind: ProviderKind, headers: &str) -> (std::sync::Arc<llmesh_sidecar::App>, Upstream) {
    let yaml = route(
        "chat",
        &format!(
            "backends:\n  - {{name: b, provider: {}, {}, secretRef: {{name: openai, key: api-key}}, headers: {headers}}}\nretry: {{attempts: 1}}\n",
            kind.as_str(),
            backend_of(kind),
        ),
    );
    app(&yaml)
}

#[tokio::test]
async fn every_provider_sends_a_backend_header_once_replacing_its_own_default() {
    let kinds: Vec<ProviderKind> = ProviderKind::ALL
        .into_iter()
        .filter(|k| *k != ProviderKind::Mock)
        .collect();
    assert_eq!(kinds.len(), 12, "every provider that calls out is covered");
    for kind in kinds {
        let (app, up) = app_for(
            kind,
            "{Accept: application/vnd.test+json, X-Title: llmesh-test}",
        );
        up.always("b", answer_of(kind));
        let r = post(json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}]}))
            .send(&app)
            .await;
        assert_eq!(r.status, 200, "{kind:?}: {}", r.text());
        let seen = up.seen("b");
        assert_eq!(seen.len(), 1, "{kind:?}");
        let s = &seen[0];
        // The backend's `Accept` replaced the provider's `accept: application/json`.
        assert_eq!(
            values(s, "accept"),
            ["application/vnd.test+json"],
            "{kind:?}"
        );
        assert_eq!(values(s, "x-title"), ["llmesh-test"], "{kind:?}");
        assert_eq!(values(s, "content-type"), ["application/json"], "{kind:?}");
        let auth = values(s, auth_header(kind));
        assert_eq!(auth.len(), 1, "{kind:?}: one key header");
        assert!(auth[0].ends_with(KEY), "{kind:?}");
        // No header at all is repeated.
        for name in s.headers.keys() {
            assert_eq!(
                s.headers.get_all(name).iter().count(),
                1,
                "{kind:?}: {name}"
            );
        }
    }
}

#[tokio::test]
async fn a_backend_header_replaces_the_version_and_betas_an_anthropic_client_forwards() {
    let (app, up) = app_for(
        ProviderKind::Anthropic,
        "{Anthropic-Version: \"2023-01-01\", anthropic-beta: pinned-beta}",
    );
    up.always("b", answer_of(ProviderKind::Anthropic));
    let body: Value =
        json!({"model": "chat", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]});
    let r = post_to("/v1/messages", body.clone())
        .header("anthropic-version", "2023-06-01")
        .header("anthropic-beta", "client-beta")
        .send(&app)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let s = &up.seen("b")[0];
    assert_eq!(values(s, "anthropic-version"), ["2023-01-01"]);
    assert_eq!(values(s, "anthropic-beta"), ["pinned-beta"]);
    assert_eq!(values(s, "x-api-key"), [KEY]);

    // Without backend headers the client's own go along, once each.
    let (app, up) = app_for(ProviderKind::Anthropic, "{X-Title: t}");
    up.always("b", answer_of(ProviderKind::Anthropic));
    let r = post_to("/v1/messages", body)
        .header("anthropic-version", "2023-06-01")
        .header("anthropic-beta", "client-beta")
        .send(&app)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let s = &up.seen("b")[0];
    assert_eq!(values(s, "anthropic-version"), ["2023-06-01"]);
    assert_eq!(values(s, "anthropic-beta"), ["client-beta"]);
    assert_eq!(values(s, "x-title"), ["t"]);
}
