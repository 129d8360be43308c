//! Limits.

use super::*;

#[tokio::test(start_paused = true)]
async fn max_tokens_is_clamped_or_rejected_and_a_default_is_inserted() {
    let (app, up) = app(&format!(
        "{}\n---\n{}\n---\n{}",
        route(
            "clamp",
            r#"
            limits: {maxTokens: 100}
            backends:
              - {name: a, provider: openai, model: gpt-4o-2024-08-06, secretRef: {name: openai, key: api-key}}
            "#
        ),
        route(
            "reject",
            r#"
            limits: {maxTokens: 100, maxTokensPolicy: reject}
            backends:
              - {name: b, provider: openai, model: gpt-4o-2024-08-06, secretRef: {name: openai, key: api-key}}
            "#
        ),
        route(
            "default",
            r#"
            limits: {defaultMaxTokens: 64}
            backends:
              - {name: c, provider: openai, model: gpt-4o-2024-08-06, secretRef: {name: openai, key: api-key}}
            "#
        ),
    ));
    for b in ["a", "b", "c"] {
        up.always(b, Reply::ok(b, 5, 1));
    }
    let mut body = hello("clamp");
    body["max_tokens"] = json!(500);
    assert_eq!(post(body).send(&app).await.status, 200);
    assert_eq!(up.last_body("a")["max_tokens"], 100);
    let mut body = hello("clamp");
    body["max_completion_tokens"] = json!(500);
    post(body).send(&app).await;
    assert_eq!(up.last_body("a")["max_completion_tokens"], 100);
    assert!(up.last_body("a").get("max_tokens").is_none());
    let mut body = hello("clamp");
    body["max_tokens"] = json!(50);
    post(body).send(&app).await;
    assert_eq!(
        up.last_body("a")["max_tokens"],
        50,
        "under the limit: untouched"
    );

    let mut body = hello("reject");
    body["max_tokens"] = json!(101);
    let r = post(body).send(&app).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["param"], "max_tokens");
    assert_eq!(r.json()["error"]["code"], "max_tokens_exceeded");
    assert!(r.error_message().contains("101"));
    assert_eq!(up.count("b"), 0);

    post(hello("default")).send(&app).await;
    assert_eq!(up.last_body("c")["max_completion_tokens"], 64);
    let mut body = hello("default");
    body["max_tokens"] = json!(10);
    post(body).send(&app).await;
    assert_eq!(up.last_body("c")["max_tokens"], 10);
    assert!(up.last_body("c").get("max_completion_tokens").is_none());
}

#[tokio::test(start_paused = true)]
async fn max_input_tokens_refuses_before_any_upstream_call() {
    let (app, up) = app(&route(
        "chat",
        r#"
        limits: {maxInputTokens: 50}
        backends:
          - {name: a, provider: openai, model: gpt-4o-2024-08-06, secretRef: {name: openai, key: api-key}}
        "#,
    ));
    up.always("a", Reply::ok("a", 5, 1));
    let r = post(chat_body("chat", &words(200))).send(&app).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], "input_tokens_exceeded");
    assert_eq!(r.json()["error"]["param"], "messages");
    assert_eq!(up.count("a"), 0);
    assert_eq!(
        metric(
            &app,
            "llmesh_limit_rejections_total",
            &[("limit", "input_tokens")]
        ),
        1.0
    );
    assert_eq!(post(hello("chat")).send(&app).await.status, 200);
}

#[tokio::test(start_paused = true)]
async fn requests_and_tokens_per_minute_answer_429_with_retry_after() {
    let (app, up) = app(&format!(
        "{}\n---\n{}",
        route(
            "rpm",
            r#"
            limits: {requestsPerMinute: 2}
            backends:
              - {name: a, provider: openai, model: gpt-4o-2024-08-06, secretRef: {name: openai, key: api-key}}
            "#
        ),
        route(
            "tpm",
            r#"
            limits: {tokensPerMinute: 1000}
            backends:
              - {name: b, provider: openai, model: gpt-4o-2024-08-06, secretRef: {name: openai, key: api-key}}
            "#
        ),
    ));
    up.always("a", Reply::ok("a", 5, 1));
    for _ in 0..2 {
        assert_eq!(post(hello("rpm")).send(&app).await.status, 200);
    }
    let r = post(hello("rpm")).send(&app).await;
    assert_eq!(r.status, 429);
    assert_eq!(
        r.header("retry-after"),
        Some("30"),
        "one request refills in 30s"
    );
    assert_eq!(r.json()["error"]["code"], "rate_limit_exceeded");
    assert_eq!(r.json()["error"]["type"], "requests");
    assert_eq!(up.count("a"), 2);
    advance(30 * SEC).await;
    assert_eq!(post(hello("rpm")).send(&app).await.status, 200);

    // The provider reports 1,000 tokens used: the minute's allowance is gone.
    up.push("b", Reply::ok("long answer", 10, 990));
    assert_eq!(post(hello("tpm")).send(&app).await.status, 200);
    let r = post(hello("tpm")).send(&app).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["type"], "tokens");
    let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    assert_eq!(up.count("b"), 1);
    advance(Duration::from_secs(wait)).await;
    up.push("b", Reply::ok("ok", 5, 1));
    assert_eq!(post(hello("tpm")).send(&app).await.status, 200);
}

#[tokio::test(start_paused = true)]
async fn a_body_over_max_request_bytes_is_a_413() {
    let (app, up) = app(&format!(
        "{}\n---\n{}",
        route(
            "small",
            r#"
            limits: {maxRequestBytes: 1024}
            backends:
              - {name: a, provider: openai, model: gpt-4o-2024-08-06, secretRef: {name: openai, key: api-key}}
            "#
        ),
        route(
            "big",
            r#"
            backends:
              - {name: b, provider: openai, model: gpt-4o-2024-08-06, secretRef: {name: openai, key: api-key}}
            "#
        ),
    ));
    up.always("b", Reply::ok("b", 5, 1));
    let r = post(chat_body("small", &words(400))).send(&app).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"]["code"], "request_too_large");
    assert!(r.error_message().contains("route `small`"), "{}", r.text());
    assert_eq!(up.count("a"), 0);
    assert_eq!(
        post(chat_body("big", &words(400))).send(&app).await.status,
        200
    );
}

#[tokio::test(start_paused = true)]
async fn max_concurrency_sends_overflow_to_the_next_backend() {
    let (app, up) = app(&route(
        "chat",
        r#"
        backends:
          - {name: a, provider: openai, model: gpt-4o-2024-08-06, secretRef: {name: openai, key: api-key}, maxConcurrency: 1}
          - {name: b, provider: openai, model: gpt-4o-mini-2024-07-18, secretRef: {name: openai, key: api-key}}
        "#,
    ));
    up.always("a", Reply::ok("a", 5, 1).after(5 * SEC))
        .always("b", Reply::ok("b", 5, 1));
    let app2 = app.clone();
    let held = tokio::spawn(async move { post(hello("chat")).send(&app2).await });
    up.wait_for("a", 1).await;
    let r = post(hello("chat")).send(&app).await;
    assert_eq!(r.backend(), "b");
    assert_eq!(r.header("x-llmesh-fallback-from"), Some("a"));
    assert_eq!(
        metric(&app, "llmesh_fallbacks_total", &[("reason", "busy")]),
        1.0
    );
    assert_eq!(held.await.unwrap().backend(), "a");
    // The permit is back.
    assert_eq!(post(hello("chat")).send(&app).await.backend(), "a");
}
