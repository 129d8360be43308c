//! Fallbacks.

use super::*;

#[tokio::test(start_paused = true)]
async fn falls_back_in_order_on_5xx_429_timeouts_and_connect_errors() {
    let (app, up) = app(&route(
        "chat",
        r#"
        retry: {attempts: 1}
        timeouts: {attempt: 2s}
        backends:
          - {name: a, provider: openai, model: gpt-4o-2024-08-06, secretRef: {name: openai, key: api-key}}
          - {name: b, provider: openai, model: gpt-4o-2024-08-06, secretRef: {name: openai, key: api-key}}
          - {name: c, provider: openai, model: gpt-4o-2024-08-06, secretRef: {name: openai, key: api-key}}
          - {name: d, provider: openai, model: gpt-4o-2024-08-06, secretRef: {name: openai, key: api-key}}
          - {name: e, provider: openai, model: gpt-4o-2024-08-06, secretRef: {name: openai, key: api-key}}
        fallbacks: [a, b, c, d, e]
        "#,
    ));
    up.push("a", Reply::error(503, "server_error", "overloaded"))
        .push("b", Reply::error(429, "rate_limit_exceeded", "slow down"))
        .push("c", Reply::hang())
        .push("d", Reply::connect_error())
        .push("e", Reply::ok("finally", 5, 1));
    let t0 = Instant::now();
    let r = post(hello("chat")).send(&app).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.backend(), "e");
    assert_eq!(r.header("x-llmesh-fallback-from"), Some("a,b,c,d"));
    assert_eq!(r.header("x-llmesh-attempts"), Some("5"));
    assert_eq!(
        up.seen("e")[0].at - t0,
        2 * SEC,
        "only c's timeout took time"
    );
    for (from, to, reason) in [
        ("a", "b", "status_5xx"),
        ("b", "c", "status_429"),
        ("c", "d", "timeout"),
        ("d", "e", "connect"),
    ] {
        assert_eq!(
            metric(
                &app,
                "llmesh_fallbacks_total",
                &[
                    ("from_backend", from),
                    ("to_backend", to),
                    ("reason", reason),
                    // Every move is counted under the variant the request was assigned (its
                    // first backend's), so an A/B arm's fallback rate can be read.
                    ("variant", "a"),
                ]
            ),
            1.0,
            "{from} -> {to}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn fallbacks_follow_the_listed_order() {
    let (app, up) = app(&route(
        "chat",
        r#"
        retry: {attempts: 1}
        backends:
          - {name: primary, provider: openai, model: gpt-4o-2024-08-06, secretRef: {name: openai, key: api-key}}
          - {name: second, provider: openai, model: gpt-4o-2024-08-06, secretRef: {name: openai, key: api-key}}
          - {name: third, provider: openai, model: gpt-4o-2024-08-06, secretRef: {name: openai, key: api-key}}
        fallbacks: [third, second]
        "#,
    ));
    up.push("primary", Reply::error(500, "server_error", "x"))
        .push("third", Reply::ok("third", 5, 1));
    let r = post(hello("chat")).send(&app).await;
    assert_eq!(r.backend(), "third");
    assert_eq!(up.count("second"), 0);
}

#[tokio::test(start_paused = true)]
async fn an_upstream_400_is_the_clients_answer_without_retry_or_fallback() {
    let (app, up) = app(&primary_and_backup(""));
    let body = json!({"error": {
        "message": "Invalid value for 'temperature': must be between 0 and 2.",
        "type": "invalid_request_error", "param": "temperature", "code": "invalid_value"
    }});
    up.push("primary", Reply::json(400, body.clone()));
    let r = post(hello("chat")).send(&app).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json(), body, "passed through unchanged");
    assert_eq!(up.count("primary"), 1);
    assert_eq!(up.count("backup"), 0);
}

#[tokio::test(start_paused = true)]
async fn a_401_falls_back_and_takes_the_backend_out() {
    let (app, up) = app(&primary_and_backup(""));
    up.push(
        "primary",
        Reply::error(
            401,
            "invalid_api_key",
            &format!("Incorrect API key provided: {KEY}. You can find your API key at https://platform.openai.com/account/api-keys."),
        ),
    )
    .always("backup", Reply::ok("backup", 5, 1));
    let r = post(hello("chat")).send(&app).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.backend(), "backup");
    assert_eq!(r.header("x-llmesh-fallback-from"), Some("primary"));
    assert_eq!(up.count("primary"), 1, "a 401 is not retried");
    for _ in 0..3 {
        assert_eq!(post(hello("chat")).send(&app).await.backend(), "backup");
    }
    assert_eq!(up.count("primary"), 1, "the backend is out");
    advance(60 * SEC).await;
    up.push("primary", Reply::ok("fixed", 5, 1));
    assert_eq!(post(hello("chat")).send(&app).await.backend(), "primary");
}

#[tokio::test(start_paused = true)]
async fn the_prompt_is_measured_for_context_windows_cost_and_size_rules_alone() {
    // No route has a limit or a budget: only the window, the price or a rule on size reads the
    // prompt's size.
    let (app, up) = app(&format!(
        "{}\n---\n{}\n---\n{}",
        route(
            "windows",
            r#"
            backends:
              - {name: small, provider: openai, model: gpt-4o-mini-2024-07-18, secretRef: {name: openai, key: api-key}, contextWindow: 1000}
              - {name: big, provider: openai, model: gpt-4.1-2025-04-14, secretRef: {name: openai, key: api-key}, contextWindow: 128000}
            "#
        ),
        route(
            "priced",
            r#"
            strategy: cost
            backends:
              - {name: dear-in, provider: openai, model: gpt-4o-2024-08-06, secretRef: {name: openai, key: api-key}, prices: {input: "10.00", output: "0.10"}}
              - {name: dear-out, provider: openai, model: gpt-4o-2024-08-06, secretRef: {name: openai, key: api-key}, prices: {input: "0.10", output: "10.00"}}
            "#
        ),
        route(
            "sized",
            r#"
            strategy: rules
            rules:
              - {name: long, match: {minPromptTokens: 1000}, backends: [long]}
            backends:
              - {name: usual, provider: openai, model: gpt-4o-mini-2024-07-18, secretRef: {name: openai, key: api-key}, weight: 1}
              - {name: long, provider: openai, model: gpt-4.1-2025-04-14, secretRef: {name: openai, key: api-key}, weight: 0}
            "#
        ),
    ));
    for b in ["small", "big", "dear-in", "dear-out", "usual", "long"] {
        up.always(b, Reply::ok(b, 5, 1));
    }
    assert_eq!(post(hello("windows")).send(&app).await.backend(), "small");
    let r = post(chat_body("windows", &words(2_000))).send(&app).await;
    assert_eq!(r.backend(), "big");
    assert_eq!(up.count("small"), 1, "skipped, not tried");
    // 256 output tokens assumed: a short prompt is cheaper where input is dear, a long one
    // where output is.
    assert_eq!(post(hello("priced")).send(&app).await.backend(), "dear-in");
    let long = post(chat_body("priced", &words(2_000))).send(&app).await;
    assert_eq!(long.backend(), "dear-out");
    assert_eq!(post(hello("sized")).send(&app).await.backend(), "usual");
    let long = post(chat_body("sized", &words(2_000))).send(&app).await;
    assert_eq!(long.backend(), "long");
}

#[tokio::test(start_paused = true)]
async fn a_context_window_error_falls_back_to_a_larger_window_only() {
    let (app, up) = app(&route(
        "chat",
        r#"
        backends:
          - {name: a, provider: openai, model: gpt-4o-2024-08-06, secretRef: {name: openai, key: api-key}, contextWindow: 8000}
          - {name: same, provider: openai, model: gpt-4o-2024-08-06, secretRef: {name: openai, key: api-key}, contextWindow: 8000}
          - {name: smaller, provider: openai, model: gpt-4o-2024-08-06, secretRef: {name: openai, key: api-key}, contextWindow: 4000}
          - {name: larger, provider: openai, model: gpt-4.1-2025-04-14, secretRef: {name: openai, key: api-key}, contextWindow: 1000000}
        "#,
    ));
    up.push(
        "a",
        Reply::error(
            400,
            "context_length_exceeded",
            "This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens. Please reduce the length of the messages.",
        ),
    )
    .push("larger", Reply::ok("fits", 5, 1));
    let r = post(hello("chat")).send(&app).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.backend(), "larger");
    assert_eq!(up.count("a"), 1, "a context-window error is not retried");
    assert_eq!(up.count("same") + up.count("smaller"), 0);
    assert_eq!(r.header("x-llmesh-fallback-from"), Some("a,same,smaller"));
}

const TWO_BACKENDS_NO_RETRY: &str = r#"
    retry: {attempts: 1}
    timeouts: {attempt: 1s}
    backends:
      - {name: a, provider: openai, model: gpt-4o-2024-08-06, secretRef: {name: openai, key: api-key}}
      - {name: b, provider: openai, model: gpt-4o-mini-2024-07-18, secretRef: {name: openai, key: api-key}}
"#;

#[tokio::test(start_paused = true)]
async fn when_every_backend_fails_the_error_names_each_failure_and_never_the_key() {
    let (app, up) = app(&route("chat", TWO_BACKENDS_NO_RETRY));
    // Errors of every class, one echoing the key.
    up.push(
        "a",
        Reply::error(
            500,
            "server_error",
            &format!("internal error for key {KEY}"),
        ),
    )
    .push("b", Reply::error(503, "server_error", "engine overloaded"));
    let r = post(hello("chat")).send(&app).await;
    assert_eq!(r.status, 502);
    let msg = r.error_message();
    assert!(msg.contains("a: 500"), "{msg}");
    assert!(msg.contains("b: 503 engine overloaded"), "{msg}");
    assert!(!r.text().contains(KEY), "{msg}");
    assert!(!r.text().contains("SECRET"), "{msg}");

    // Every backend rate limited: 429 with the shortest retry-after.
    up.push(
        "a",
        Reply::error(429, "rate_limit_exceeded", "slow").header("retry-after", "7"),
    )
    .push(
        "b",
        Reply::error(429, "rate_limit_exceeded", "slow").header("retry-after", "3"),
    );
    let r = post(hello("chat")).send(&app).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("3"));

    // Every backend timed out.
    up.push("a", Reply::hang()).push("b", Reply::hang());
    let r = post(hello("chat")).send(&app).await;
    assert_eq!(r.status, 504);
    assert!(r.error_message().contains("a: no response"), "{}", r.text());

    // Both keys refused: each backend's circuit opens, and then nothing is left to try.
    up.push("a", Reply::error(401, "invalid_api_key", "bad key"))
        .push("b", Reply::error(403, "forbidden", "no access"));
    let r = post(hello("chat")).send(&app).await;
    assert_eq!(r.status, 502);
    let r = post(hello("chat")).send(&app).await;
    assert_eq!(r.status, 503);
    let msg = r.error_message();
    assert!(msg.contains("a: its circuit is open"), "{msg}");
    assert!(msg.contains("b: its circuit is open"), "{msg}");
}
