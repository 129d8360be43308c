//! Resolution.

use super::*;

const TWO_ROUTES: &str = r#"
apiVersion: llmesh.io/v1alpha1
kind: LLMRoute
metadata: {name: chat}
spec:
  aliases: [gpt-4o]
  allowModelPinning: true
  backends:
    - {name: a, provider: openai, model: gpt-4o-mini-2024-07-18, secretRef: {name: openai, key: api-key}, weight: 100}
    - {name: b, provider: openai, model: gpt-4o-2024-08-06, secretRef: {name: openai, key: api-key}, weight: 0}
---
apiVersion: llmesh.io/v1alpha1
kind: LLMRoute
metadata: {name: closed}
spec:
  backends:
    - {name: c, provider: openai, model: gpt-4.1-mini-2025-04-14, secretRef: {name: openai, key: api-key}}
"#;

#[tokio::test(start_paused = true)]
async fn model_names_and_aliases_resolve_on_paths_with_and_without_v1() {
    let (app, up) = app(TWO_ROUTES);
    up.always("a", Reply::ok("hi", 10, 2))
        .always("c", Reply::ok("hi", 10, 2));

    for (path, model, backend) in [
        ("/v1/chat/completions", "chat", "a"),
        ("/chat/completions", "chat", "a"),
        ("/v1/chat/completions", "gpt-4o", "a"),
        ("/chat/completions", "closed", "c"),
    ] {
        let r = post_to(path, hello(model)).send(&app).await;
        assert_eq!(r.status, 200, "{path} {model}: {}", r.text());
        assert_eq!(r.backend(), backend, "{path} {model}");
        assert_eq!(r.json()["choices"][0]["message"]["content"], "hi");
    }
    assert_eq!(up.count("a"), 3);
    let seen = up.seen("a");
    assert_eq!(seen[0].url, "https://api.openai.com/v1/chat/completions");
    assert_eq!(seen[0].body["model"], "gpt-4o-mini-2024-07-18");
    assert_eq!(
        seen[0].headers["authorization"],
        format!("Bearer {KEY}").as_str()
    );
    assert_eq!(up.last_body("c")["model"], "gpt-4.1-mini-2025-04-14");
}

#[tokio::test(start_paused = true)]
async fn provider_slash_model_pins_a_backend_only_where_pinning_is_allowed() {
    let (app, up) = app(TWO_ROUTES);
    up.always("a", Reply::ok("from a", 10, 2));
    up.push("b", Reply::ok("from b", 10, 2))
        .always("b", Reply::error(500, "server_error", "boom"));

    // b has weight 0: only pinning reaches it.
    let r = post(hello("openai/gpt-4o-2024-08-06")).send(&app).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.backend(), "b");
    assert_eq!(r.header("x-llmesh-route"), Some("chat"));
    assert_eq!(up.last_body("b")["model"], "gpt-4o-2024-08-06");

    // A pinned backend has no fallback: a failure is the client's answer.
    let r = post(hello("openai/gpt-4o-2024-08-06")).send(&app).await;
    assert_eq!(r.status, 502);
    assert_eq!(up.count("a"), 0);

    // Route `closed` does not allow pinning.
    let r = post(hello("openai/gpt-4.1-mini-2025-04-14"))
        .send(&app)
        .await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(up.count("c"), 0);
}

#[tokio::test(start_paused = true)]
async fn an_unknown_model_is_a_404_listing_the_models_served() {
    let (app, up) = app(TWO_ROUTES);
    let r = post(hello("gpt-5")).send(&app).await;
    assert_eq!(r.status, 404);
    let e = r.json();
    assert_eq!(e["error"]["code"], "model_not_found");
    assert_eq!(e["error"]["param"], "model");
    assert_eq!(e["error"]["type"], "invalid_request_error");
    let msg = r.error_message();
    assert!(msg.contains("`gpt-5`"), "{msg}");
    for m in [
        "chat",
        "gpt-4o",
        "closed",
        "openai/gpt-4o-mini-2024-07-18",
        "openai/gpt-4o-2024-08-06",
    ] {
        assert!(msg.contains(m), "{m} missing from: {msg}");
    }
    assert!(
        !msg.contains("openai/gpt-4.1-mini"),
        "a route without pinning lists no pins: {msg}"
    );
    assert_eq!(up.count("a") + up.count("b") + up.count("c"), 0);
}

#[tokio::test(start_paused = true)]
async fn a_request_missing_model_or_messages_is_a_400_naming_the_param() {
    let (app, up) = app(TWO_ROUTES);
    for (body, param) in [
        (
            json!({"messages": [{"role": "user", "content": "hi"}]}),
            "model",
        ),
        (
            json!({"model": "", "messages": [{"role": "user", "content": "hi"}]}),
            "model",
        ),
        (json!({"model": "chat"}), "messages"),
        (json!({"model": "chat", "messages": []}), "messages"),
        (
            json!({"model": "chat", "messages": [{"content": "hi"}]}),
            "messages[0].role",
        ),
    ] {
        let r = post(body.clone()).send(&app).await;
        assert_eq!(r.status, 400, "{body}");
        assert_eq!(r.json()["error"]["param"], param, "{body}");
        assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    }
    let r = post_to("/v1/embeddings", json!({"model": "chat"}))
        .send(&app)
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["param"], "input");
    let r = post(json!({})).raw("not json").send(&app).await;
    assert_eq!(r.status, 400);
    assert_eq!(up.count("a"), 0);
}

#[tokio::test(start_paused = true)]
async fn models_are_listed_with_aliases_and_pins() {
    let (app, _up) = app(TWO_ROUTES);
    for path in ["/v1/models", "/models"] {
        let r = get(path).send(&app).await;
        assert_eq!(r.status, 200);
        let v = r.json();
        assert_eq!(v["object"], "list");
        let mut ids: Vec<&str> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap())
            .collect();
        ids.sort_unstable();
        assert_eq!(
            ids,
            [
                "chat",
                "closed",
                "gpt-4o",
                "openai/gpt-4o-2024-08-06",
                "openai/gpt-4o-mini-2024-07-18"
            ]
        );
    }
    assert_eq!(get("/v1/models/gpt-4o").send(&app).await.status, 200);
    assert_eq!(get("/models/nope").send(&app).await.status, 404);
}
