//! What a hostile client or a misbehaving upstream must not get through, in process: budgets
//! that neither break real providers nor refuse concurrent requests, limits that bind every
//! request in every form, keys that never reach a client, and the smaller refusals (redirects,
//! content types, oversized echoes).

mod common;

use std::time::Duration;

use serde_json::{Value, json};

use common::*;

fn hello(model: &str) -> Value {
    chat_body(model, "Say hello")
}

const MINI: &str =
    "{name: a, provider: openai, model: gpt-4o-mini, secretRef: {name: openai, key: api-key}}";

fn budget(limit_usd: &str) -> String {
    format!(
        "apiVersion: llmesh.io/v1alpha1\nkind: LLMBudget\nmetadata: {{name: team}}\nspec:\n  limit: {{usd: \"{limit_usd}\"}}\n  period: day\n"
    )
}

// ---------------------------------------------------------------------------------------------
// Budgets and output limits

#[tokio::test(start_paused = true)]
async fn a_large_budget_sends_no_max_tokens_and_refuses_nothing_at_concurrency_2() {
    let (app, up) = app(&format!(
        "{}\n---\n{}",
        route("chat", &format!("backends:\n  - {MINI}\n")),
        budget("1000")
    ));
    up.always("a", Reply::ok("a", 12, 30).after(Duration::from_millis(50)));
    let mut statuses = Vec::new();
    for _ in 0..30 {
        let (a, b) = tokio::join!(
            post(hello("chat")).send(&app),
            post(hello("chat")).send(&app)
        );
        statuses.push(a.status.as_u16());
        statuses.push(b.status.as_u16());
    }
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(up.count("a"), 60);
    // The client set no limit and $1,000 pays for far more than the model's 16,384 tokens:
    // nothing is added, so the provider's own default applies.
    for seen in up.seen("a") {
        let b = &seen.body;
        assert!(b.get("max_tokens").is_none(), "{b}");
        assert!(b.get("max_completion_tokens").is_none(), "{b}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_budget_clamp_is_never_above_the_models_output_limit() {
    let (app, up) = app(&format!(
        "{}\n---\n{}",
        route("chat", &format!("backends:\n  - {MINI}\n")),
        budget("0.02")
    ));
    up.always("a", Reply::ok("a", 12, 30));
    // $0.02 pays for ~33,000 output tokens of gpt-4o-mini; it takes 16,384 at most.
    let mut body = hello("chat");
    body["max_tokens"] = json!(100_000);
    assert_eq!(post(body).send(&app).await.status, 200);
    assert_eq!(up.last_body("a")["max_tokens"], 16_384);
}

#[tokio::test(start_paused = true)]
async fn a_route_limit_binds_requests_that_name_no_limit_within_the_models_own() {
    let (app, up) = app(&route(
        "chat",
        &format!(
            "backends:\n  - {MINI}\n  - {{name: big, provider: openai, model: gpt-4.1, secretRef: {{name: openai, key: api-key}}}}\nfallbacks: [big]\nretry: {{attempts: 1}}\nlimits: {{maxTokens: 20000}}\n"
        ),
    ));
    // gpt-4o-mini takes at most 16,384; the fallback, gpt-4.1, takes the route's 20,000.
    up.push("a", Reply::error(503, "overloaded", "busy"));
    up.push("big", Reply::ok("b", 12, 30));
    let r = post(hello("chat")).send(&app).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.last_body("a")["max_completion_tokens"], 16_384);
    assert_eq!(up.last_body("big")["max_completion_tokens"], 20_000);
}

#[tokio::test(start_paused = true)]
async fn max_tokens_in_any_other_form_than_an_integer_is_refused() {
    let (app, up) = app(&route(
        "chat",
        &format!("backends:\n  - {MINI}\nlimits: {{maxTokens: 100}}\n"),
    ));
    up.always("a", Reply::ok("a", 12, 30));
    for (field, value) in [
        ("max_tokens", json!(100_000.0)),
        ("max_tokens", json!(1e5)),
        ("max_tokens", json!("100000")),
        ("max_completion_tokens", json!("100000")),
        ("max_tokens", json!(-1)),
    ] {
        let mut body = hello("chat");
        body[field] = value.clone();
        let r = post(body).send(&app).await;
        assert_eq!(r.status, 400, "{field}: {value}: {}", r.text());
        assert_eq!(r.json()["error"]["param"], field);
        assert!(r.error_message().contains("whole number"), "{}", r.text());
    }
    assert_eq!(up.count("a"), 0);

    // Both fields: each binds, both are clamped.
    let mut body = hello("chat");
    body["max_tokens"] = json!(50);
    body["max_completion_tokens"] = json!(100_000);
    assert_eq!(post(body).send(&app).await.status, 200);
    let sent = up.last_body("a");
    assert_eq!(
        (&sent["max_tokens"], &sent["max_completion_tokens"]),
        (&json!(100), &json!(100))
    );
}

// ---------------------------------------------------------------------------------------------
// Keys never reach the client

/// Whether `text` holds `key` or any run of 8 of its characters.
fn leaks(text: &str, key: &str) -> Option<String> {
    (0..=key.len() - 8)
        .map(|i| &key[i..i + 8])
        .find(|part| text.contains(part))
        .map(str::to_string)
}

#[tokio::test(start_paused = true)]
async fn an_upstream_error_never_hands_the_key_to_the_client() {
    let (app, up) = app(&route(
        "chat",
        &format!("backends:\n  - {MINI}\nretry: {{attempts: 1}}\n"),
    ));
    // The key may come back in any field, escaped, or in a body that is not JSON, cut anywhere.
    let escaped = KEY.replace('s', "\\u0073");
    let mut replies = vec![
        Reply::json(
            400,
            json!({"error": {"message": "bad request", "type": "invalid_request_error", "param": KEY, "code": null}}),
        ),
        Reply::json(
            400,
            json!({"error": {"message": "x", "type": "invalid_request_error", "code": KEY, "extra": {"k": [KEY]}}, KEY: 1}),
        ),
        Reply::raw(
            400,
            "application/json",
            format!(
                r#"{{"error": {{"message": "{escaped}", "type": "invalid_request_error", "param": null, "code": null}}}}"#
            ),
        ),
        Reply::error(
            401,
            "invalid_api_key",
            &format!("Incorrect API key provided: {KEY}"),
        ),
    ];
    for at in [280, 290, 295, 1_000 - 10] {
        let body = format!("{}{KEY}{}", "x".repeat(at), "y".repeat(50));
        replies.push(Reply::raw(400, "text/html", body.clone()));
        replies.push(Reply::raw(502, "text/plain", body));
    }
    for (i, reply) in replies.into_iter().enumerate() {
        up.push("a", reply);
        let r = post(hello("chat")).send(&app).await;
        assert!(r.status.is_client_error() || r.status.is_server_error());
        let text = format!("{:?} {}", r.headers, r.text());
        assert_eq!(leaks(&text, KEY), None, "case {i}: {text}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_native_responses_stream_failing_after_its_first_event_is_redacted() {
    let (app, up) = app(&route(
        "chat",
        "backends:\n  - {name: a, provider: openai, model: gpt-4.1, secretRef: {name: openai, key: api-key}}\n",
    ));
    let event = |ty: &str, data: Value| Part::Data(format!("event: {ty}\ndata: {data}\n\n"));
    up.push(
        "a",
        Reply::sse(vec![
            event(
                "response.created",
                json!({"type": "response.created", "sequence_number": 0, "response": {"id": "resp_1", "status": "in_progress"}}),
            ),
            event(
                "response.output_text.delta",
                json!({"type": "response.output_text.delta", "sequence_number": 1, "delta": "Hi"}),
            ),
            event(
                "error",
                json!({"type": "error", "sequence_number": 2, "code": "server_error", "message": format!("boom {KEY}"), "param": KEY}),
            ),
            event(
                "response.failed",
                json!({"type": "response.failed", "sequence_number": 3, "response": {"id": "resp_1", "status": "failed", "error": {"code": "server_error", "message": KEY}}}),
            ),
        ]),
    );
    let r = post_to(
        "/v1/responses",
        json!({"model": "chat", "input": "hi", "stream": true}),
    )
    .send(&app)
    .await;
    assert_eq!(r.status, 200);
    let text = r.text();
    assert!(text.contains("response.failed"), "{text}");
    assert_eq!(leaks(&text, KEY), None, "{text}");
}

// ---------------------------------------------------------------------------------------------
// Smaller refusals

#[tokio::test(start_paused = true)]
async fn an_upstream_redirect_is_a_502_naming_the_cause_and_falls_back() {
    let (app, up) = app(&route(
        "chat",
        &format!("backends:\n  - {MINI}\nretry: {{attempts: 1}}\n"),
    ));
    up.push(
        "a",
        Reply::raw(302, "text/html", "moved".into())
            .header("location", "https://elsewhere.example/"),
    );
    let r = post(hello("chat")).send(&app).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.error_message().contains("redirect"), "{}", r.text());
    assert!(r.error_message().contains("baseUrl"), "{}", r.text());
    assert!(r.header("location").is_none());

    // With a fallback, the next backend answers.
    let (app, up) = common::app(&route(
        "chat",
        &format!(
            "backends:\n  - {MINI}\n  - {{name: b, provider: openai, model: gpt-4o-mini, secretRef: {{name: openai, key: api-key}}}}\nfallbacks: [b]\nretry: {{attempts: 1}}\n"
        ),
    ));
    up.push("a", Reply::raw(301, "text/html", String::new()));
    up.push("b", Reply::ok("b", 1, 1));
    let r = post(hello("chat")).send(&app).await;
    assert_eq!((r.status.as_u16(), r.backend()), (200, "b"));
}

#[tokio::test(start_paused = true)]
async fn a_body_that_does_not_say_it_is_json_is_refused() {
    let (app, up) = app(&route("chat", &format!("backends:\n  - {MINI}\n")));
    up.always("a", Reply::ok("a", 1, 1));
    let body = hello("chat").to_string();
    for path in ["/v1/chat/completions", "/v1/messages", "/v1/responses"] {
        for ct in [
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
            None,
        ] {
            let mut call = get(path).raw(body.clone());
            call = call.method(http::Method::POST);
            if let Some(ct) = ct {
                call = call.header("content-type", ct);
            }
            let r = call.send(&app).await;
            assert_eq!(r.status, 415, "{path} {ct:?}: {}", r.text());
            assert!(r.text().contains("application/json"), "{}", r.text());
        }
    }
    let r = post(hello("chat"))
        .header("content-type", "application/json; charset=utf-8")
        .send(&app)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.count("a"), 1);
}

#[tokio::test(start_paused = true)]
async fn stream_as_a_string_is_refused_on_every_endpoint() {
    let (app, up) = app(&route("chat", &format!("backends:\n  - {MINI}\n")));
    up.always("a", Reply::ok("a", 1, 1));
    let mut chat = hello("chat");
    chat["stream"] = json!("true");
    let r = post(chat).send(&app).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["param"], "stream");
    let r = post_to(
        "/v1/responses",
        json!({"model": "chat", "input": "hi", "stream": "true"}),
    )
    .send(&app)
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    let r = post_to(
        "/v1/messages",
        json!({"model": "chat", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}], "stream": "true"}),
    )
    .send(&app)
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(up.count("a"), 0);
}

#[tokio::test(start_paused = true)]
async fn a_huge_model_name_is_not_copied_into_the_answer() {
    let (app, _up) = app(&route("chat", &format!("backends:\n  - {MINI}\n")));
    let model = "m".repeat(15 << 20);
    let r = post(hello(&model)).send(&app).await;
    assert_eq!(r.status, 404);
    assert!(r.body.len() < 2_000, "{} bytes", r.body.len());
    assert!(
        r.error_message()
            .contains(&format!("({} bytes)", model.len()))
    );
}
