//! Latency, least busy, cost, hybrid and rules strategies.

use super::*;

#[tokio::test(start_paused = true)]
async fn latency_strategy_prefers_the_faster_backend() {
    let (app, up) = app(&route(
        "chat",
        r#"
        strategy: latency
        backends:
          - {name: slow, provider: openai, model: gpt-4o-2024-08-06, secretRef: {name: openai, key: api-key}}
          - {name: fast, provider: openai, model: gpt-4o-mini-2024-07-18, secretRef: {name: openai, key: api-key}}
        "#,
    ));
    up.always("slow", Reply::ok("slow", 5, 1).after(500 * MS))
        .always("fast", Reply::ok("fast", 5, 1).after(50 * MS));
    let mut served = Vec::new();
    for _ in 0..10 {
        served.push(post(hello("chat")).send(&app).await.backend().to_string());
    }
    // Each backend is measured once (unmeasured ones go first), then the fast one wins.
    assert_eq!(served[..2], ["slow", "fast"]);
    assert!(served[2..].iter().all(|b| b == "fast"), "{served:?}");
}

#[tokio::test(start_paused = true)]
async fn latency_strategy_does_not_prefer_a_backend_answering_fast_429s() {
    let (app, up) = app(&route(
        "chat",
        r#"
        strategy: latency
        retry: {attempts: 1}
        backends:
          - {name: limited, provider: openai, model: gpt-4o-2024-08-06, secretRef: {name: openai, key: api-key}}
          - {name: steady, provider: openai, model: gpt-4o-mini-2024-07-18, secretRef: {name: openai, key: api-key}}
        "#,
    ));
    up.always(
        "limited",
        Reply::error(429, "rate_limit_exceeded", "Rate limit reached"),
    )
    .always("steady", Reply::ok("ok", 5, 1).after(200 * MS));
    for _ in 0..10 {
        let r = post(hello("chat")).send(&app).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.backend(), "steady");
    }
    assert_eq!(
        up.count("limited"),
        1,
        "an instant 429 is not a fast answer"
    );
}

#[tokio::test(start_paused = true)]
async fn least_busy_sends_to_the_backend_with_the_fewest_requests_in_flight() {
    let (app, up) = app(&route(
        "chat",
        r#"
        strategy: leastBusy
        backends:
          - {name: a, provider: openai, model: gpt-4o-2024-08-06, secretRef: {name: openai, key: api-key}}
          - {name: b, provider: openai, model: gpt-4o-mini-2024-07-18, secretRef: {name: openai, key: api-key}}
        "#,
    ));
    up.always("a", Reply::ok("a", 5, 1).after(10 * SEC))
        .always("b", Reply::ok("b", 5, 1).after(10 * SEC));
    let spawn = |app: &std::sync::Arc<llmesh_sidecar::App>| {
        let app = app.clone();
        tokio::spawn(async move { post(hello("chat")).send(&app).await.backend().to_string() })
    };
    let r1 = spawn(&app);
    up.wait_for("a", 1).await;
    let r2 = spawn(&app);
    up.wait_for("b", 1).await;
    let r3 = spawn(&app);
    up.wait_for("a", 2).await;
    let r4 = spawn(&app);
    up.wait_for("b", 2).await;
    let served = [
        r1.await.unwrap(),
        r2.await.unwrap(),
        r3.await.unwrap(),
        r4.await.unwrap(),
    ];
    assert_eq!(served, ["a", "b", "a", "b"]);
    assert_eq!(
        metric(&app, "llmesh_in_flight_requests", &[("route", "chat")]),
        0.0
    );
}

#[tokio::test(start_paused = true)]
async fn cost_strategy_picks_the_cheapest_healthy_backend_that_fits() {
    let (app, up) = app(&route(
        "chat",
        r#"
        strategy: cost
        retry: {attempts: 1}
        circuitBreaker: {consecutiveFailures: 1, cooldown: 1m}
        backends:
          - name: cheap
            provider: openai
            model: gpt-4o-mini-2024-07-18
            secretRef: {name: openai, key: api-key}
            contextWindow: 1000
            prices: {input: "0.10", output: "0.20"}
          - name: mid
            provider: openai
            model: gpt-4.1-mini-2025-04-14
            secretRef: {name: openai, key: api-key}
            contextWindow: 16000
            prices: {input: "1.00", output: "2.00"}
          - name: premium
            provider: openai
            model: gpt-4o-2024-08-06
            secretRef: {name: openai, key: api-key}
            contextWindow: 128000
            prices: {input: "10.00", output: "30.00"}
        "#,
    ));
    for b in ["cheap", "mid", "premium"] {
        up.always(b, Reply::ok(b, 5, 1));
    }
    let small = post(hello("chat")).send(&app).await;
    assert_eq!(small.backend(), "cheap");
    // ~2,000 tokens do not fit cheap's 1,000-token window.
    let medium = post(chat_body("chat", &words(2_000))).send(&app).await;
    assert_eq!(medium.backend(), "mid");
    let large = post(chat_body("chat", &words(20_000))).send(&app).await;
    assert_eq!(large.backend(), "premium");
    // max_tokens counts toward the window too.
    let mut asks_a_lot = hello("chat");
    asks_a_lot["max_tokens"] = json!(4_000);
    assert_eq!(post(asks_a_lot).send(&app).await.backend(), "mid");

    // Once cheap's circuit opens, the cheapest healthy one is chosen first.
    up.push("cheap", Reply::error(500, "server_error", "down"));
    let r = post(hello("chat")).send(&app).await;
    assert_eq!(r.backend(), "mid");
    assert_eq!(r.header("x-llmesh-fallback-from"), Some("cheap"));
    let r = post(hello("chat")).send(&app).await;
    assert_eq!(r.backend(), "mid");
    assert_eq!(
        r.header("x-llmesh-fallback-from"),
        None,
        "cheap was not planned first"
    );
    assert_eq!(up.count("cheap"), 2);
}

#[tokio::test(start_paused = true)]
async fn hybrid_filters_by_max_cost_then_ranks_by_latency() {
    let (app, up) = app(&route(
        "chat",
        r#"
        strategy: hybrid
        hybrid: {maxCostPerMillionTokens: "5.00", rankBy: latency}
        backends:
          - {name: premium, provider: openai, model: gpt-4o-2024-08-06, secretRef: {name: openai, key: api-key}, prices: {input: "10.00", output: "30.00"}}
          - {name: slow, provider: openai, model: gpt-4o-mini-2024-07-18, secretRef: {name: openai, key: api-key}, prices: {input: "1.00", output: "2.00"}}
          - {name: quick, provider: openai, model: gpt-4.1-mini-2025-04-14, secretRef: {name: openai, key: api-key}, prices: {input: "2.00", output: "4.00"}}
        "#,
    ));
    up.always("premium", Reply::ok("p", 5, 1).after(10 * MS))
        .always("slow", Reply::ok("s", 5, 1).after(800 * MS))
        .always("quick", Reply::ok("q", 5, 1).after(100 * MS));
    let mut served = Vec::new();
    for _ in 0..6 {
        served.push(post(hello("chat")).send(&app).await.backend().to_string());
    }
    assert_eq!(
        served,
        ["slow", "quick", "quick", "quick", "quick", "quick"]
    );
    assert_eq!(up.count("premium"), 0, "over maxCostPerMillionTokens");
}

#[tokio::test(start_paused = true)]
async fn hybrid_by_cost_drops_backends_slower_than_max_latency() {
    let (app, up) = app(&route(
        "chat",
        r#"
        strategy: hybrid
        hybrid: {maxLatency: 500ms, rankBy: cost}
        backends:
          - {name: sluggish, provider: openai, model: gpt-4o-mini-2024-07-18, secretRef: {name: openai, key: api-key}, prices: {input: "0.10", output: "0.20"}}
          - {name: snappy, provider: openai, model: gpt-4o-2024-08-06, secretRef: {name: openai, key: api-key}, prices: {input: "1.00", output: "2.00"}}
        "#,
    ));
    up.always("sluggish", Reply::ok("s", 5, 1).after(SEC))
        .always("snappy", Reply::ok("f", 5, 1).after(50 * MS));
    let mut served = Vec::new();
    for _ in 0..4 {
        served.push(post(hello("chat")).send(&app).await.backend().to_string());
    }
    // Cheapest first until it is measured above maxLatency.
    assert_eq!(served, ["sluggish", "snappy", "snappy", "snappy"]);
}

#[tokio::test(start_paused = true)]
async fn rules_route_by_task_prompt_size_and_complexity() {
    let (app, up) = app(&route(
        "chat",
        r#"
        strategy: rules
        rules:
          - name: coding
            match: {tasks: [code, review]}
            backends: [coder]
          - name: long-prompts
            match: {minPromptTokens: 1000}
            backends: [long]
          - name: hard
            match: {complexity: complex}
            backends: [big]
          - name: short
            match: {maxPromptTokens: 50}
            backends: [small]
        backends:
          - {name: general, provider: openai, model: gpt-4o-2024-08-06, secretRef: {name: openai, key: api-key}, weight: 1}
          - {name: coder, provider: openai, model: gpt-4.1-2025-04-14, secretRef: {name: openai, key: api-key}, weight: 0}
          - {name: long, provider: openai, model: gpt-4.1-mini-2025-04-14, secretRef: {name: openai, key: api-key}, weight: 0}
          - {name: big, provider: openai, model: o3-2025-04-16, secretRef: {name: openai, key: api-key}, weight: 0}
          - {name: small, provider: openai, model: gpt-4o-mini-2024-07-18, secretRef: {name: openai, key: api-key}, weight: 0}
        "#,
    ));
    for b in ["general", "coder", "long", "big", "small"] {
        up.always(b, Reply::ok(b, 5, 1));
    }
    let cases: Vec<(Value, Option<&str>, &str, Option<&str>)> = vec![
        (hello("chat"), Some("review"), "coder", Some("coding")),
        (
            chat_body("chat", &words(1_500)),
            None,
            "long",
            Some("long-prompts"),
        ),
        (
            chat_body("chat", "Explain step by step why the sky is blue"),
            None,
            "big",
            Some("hard"),
        ),
        (hello("chat"), None, "small", Some("short")),
        (hello("chat"), Some("chit-chat"), "small", Some("short")),
        // Simple, 100 words: no rule matches, the weighted default serves.
        (chat_body("chat", &words(100)), None, "general", None),
    ];
    for (body, task, backend, rule) in cases {
        let mut c = post(body);
        if let Some(t) = task {
            c = c.header("x-llmesh-task", t);
        }
        let r = c.send(&app).await;
        assert_eq!(r.status, 200);
        assert_eq!((r.backend(), r.header("x-llmesh-rule")), (backend, rule));
    }
}
