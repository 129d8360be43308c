//! Every routing behaviour of the sidecar, end to end in process: real snapshots compiled from
//! YAML, the real `App` and `handler::handle`, and a scripted upstream. Time is paused, so
//! backoff, timeouts and cooldowns are exact and cost nothing.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::{Instant, advance};

use common::*;
use llmesh_sidecar::tokens;

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);

/// A chat request body.
fn hello(model: &str) -> Value {
    chat_body(model, "Say hello")
}

fn elapsed_between(seen: &[Seen], from: usize, to: usize) -> Duration {
    seen[to].at - seen[from].at
}

/// Estimated prompt tokens of a chat body, as the sidecar counts them.
fn prompt_tokens(body: &Value) -> u32 {
    tokens::chat_prompt(body.as_object().unwrap(), false).tokens
}

fn words(n: usize) -> String {
    "word ".repeat(n)
}

// ---------------------------------------------------------------------------------------------
// Resolution

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

// ---------------------------------------------------------------------------------------------
// Weighted split

fn ab(weight_a: u32, weight_b: u32) -> String {
    route(
        "chat",
        &format!(
            r#"
            backends:
              - {{name: a, provider: openai, model: gpt-4o-mini-2024-07-18, secretRef: {{name: openai, key: api-key}}, weight: {weight_a}, variant: control}}
              - {{name: b, provider: openai, model: gpt-4o-2024-08-06, secretRef: {{name: openai, key: api-key}}, weight: {weight_b}, variant: treatment}}
            "#
        ),
    )
}

#[tokio::test(start_paused = true)]
async fn without_a_user_key_traffic_splits_by_weight() {
    fastrand::seed(7);
    let (app, up) = app(&ab(80, 20));
    up.always("a", Reply::ok("a", 5, 1))
        .always("b", Reply::ok("b", 5, 1));
    let n = 2_000;
    let mut by_variant: HashMap<String, usize> = HashMap::new();
    for _ in 0..n {
        let r = post(hello("chat")).send(&app).await;
        assert_eq!(r.status, 200);
        *by_variant
            .entry(r.header("x-llmesh-variant").unwrap().to_string())
            .or_default() += 1;
    }
    let a = up.count("a");
    assert_eq!(a + up.count("b"), n);
    // 80% of 2,000 is 1,600; a binomial's standard deviation here is about 18.
    assert!((1_520..=1_680).contains(&a), "a got {a} of {n}");
    assert_eq!(by_variant["control"], a);
    assert_eq!(by_variant["treatment"], n - a);
    assert_eq!(
        metric(
            &app,
            "llmesh_requests_total",
            &[
                ("variant", "control"),
                ("backend", "a"),
                ("status_class", "2xx")
            ]
        ),
        a as f64
    );
    assert_eq!(
        metric(&app, "llmesh_requests_total", &[("variant", "treatment")]),
        (n - a) as f64
    );
}

#[tokio::test(start_paused = true)]
async fn a_user_keeps_the_same_variant_by_header_or_body_user() {
    fastrand::seed(11);
    let (app, up) = app(&ab(50, 50));
    up.always("a", Reply::ok("a", 5, 1))
        .always("b", Reply::ok("b", 5, 1));
    let mut seen_variants = std::collections::HashSet::new();
    for u in 0..40 {
        let user = format!("user-{u}");
        let first = post(hello("chat"))
            .header("x-llmesh-user", &user)
            .send(&app)
            .await
            .backend()
            .to_string();
        seen_variants.insert(first.clone());
        for _ in 0..4 {
            let r = post(hello("chat"))
                .header("x-llmesh-user", &user)
                .send(&app)
                .await;
            assert_eq!(r.backend(), first, "{user} moved");
        }
        // The body's `user` is the same key.
        let mut body = hello("chat");
        body["user"] = json!(user);
        for _ in 0..3 {
            assert_eq!(post(body.clone()).send(&app).await.backend(), first);
        }
    }
    assert_eq!(seen_variants.len(), 2, "both variants have users");
}

#[tokio::test(start_paused = true)]
async fn changing_weights_moves_few_users_and_only_toward_the_heavier_backend() {
    let (app, up) = app(&ab(50, 50));
    up.always("a", Reply::ok("a", 5, 1))
        .always("b", Reply::ok("b", 5, 1));
    let users: Vec<String> = (0..2_000).map(|u| format!("customer-{u}")).collect();
    let mut before = Vec::new();
    for u in &users {
        let r = post(hello("chat"))
            .header("x-llmesh-user", u)
            .send(&app)
            .await;
        before.push(r.backend().to_string());
    }
    let on_a = before.iter().filter(|b| *b == "a").count();
    assert!((900..=1_100).contains(&on_a), "50/50 put {on_a} users on a");

    app.apply(&snapshot(&ab(60, 40)));
    let mut moved = 0;
    for (u, was) in users.iter().zip(&before) {
        let now = post(hello("chat"))
            .header("x-llmesh-user", u)
            .send(&app)
            .await;
        if now.backend() != was {
            assert_eq!(
                (was.as_str(), now.backend()),
                ("b", "a"),
                "{u} moved the wrong way"
            );
            moved += 1;
        }
    }
    // The least any scheme can move is 10% of users; rendezvous hashing moves about that.
    let share = moved as f64 / users.len() as f64;
    assert!((0.07..=0.13).contains(&share), "{moved} users moved");
}

// ---------------------------------------------------------------------------------------------
// Latency, least busy, cost, hybrid and rules strategies

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

// ---------------------------------------------------------------------------------------------
// Fallbacks

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
                    ("reason", reason)
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

/// Route `chat` with a `primary` and a `backup`; `extra` adds spec fields (its own `retry`
/// replaces the default of two attempts with 100ms backoff).
fn primary_and_backup(extra: &str) -> String {
    let retry = if extra.contains("retry:") {
        ""
    } else {
        "retry: {attempts: 2, backoff: 100ms}\n"
    };
    route(
        "chat",
        &format!(
            "{retry}{extra}\nbackends:\n\
             - {{name: primary, provider: openai, model: gpt-4o-2024-08-06, secretRef: {{name: openai, key: api-key}}}}\n\
             - {{name: backup, provider: openai, model: gpt-4o-mini-2024-07-18, secretRef: {{name: openai, key: api-key}}}}\n"
        ),
    )
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

// ---------------------------------------------------------------------------------------------
// Retries

#[tokio::test(start_paused = true)]
async fn retries_back_off_exponentially_with_equal_jitter() {
    let (app, up) = app(&route(
        "chat",
        r#"
        retry: {attempts: 3, backoff: 200ms}
        circuitBreaker: {consecutiveFailures: 100}
        backends:
          - {name: a, provider: openai, model: gpt-4o-2024-08-06, secretRef: {name: openai, key: api-key}}
        "#,
    ));
    let mut firsts = Vec::new();
    let mut seconds = Vec::new();
    for seed in 0..30 {
        fastrand::seed(seed);
        up.push("a", Reply::error(500, "server_error", "x"))
            .push("a", Reply::error(502, "server_error", "x"))
            .push("a", Reply::ok("third time", 5, 1));
        let r = post(hello("chat")).send(&app).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-llmesh-attempts"), Some("3"));
        let seen = up.seen("a");
        let n = seen.len();
        firsts.push(elapsed_between(&seen, n - 3, n - 2));
        seconds.push(elapsed_between(&seen, n - 2, n - 1));
    }
    for d in &firsts {
        assert!((100 * MS..=200 * MS).contains(d), "first backoff {d:?}");
    }
    for d in &seconds {
        assert!((200 * MS..=400 * MS).contains(d), "second backoff {d:?}");
    }
    // Jittered, not constant.
    assert!(firsts.iter().any(|d| *d != firsts[0]));
    assert_eq!(
        metric(&app, "llmesh_retries_total", &[("backend", "a")]),
        60.0
    );
}

#[tokio::test(start_paused = true)]
async fn backoff_is_capped_by_max_backoff() {
    let (app, up) = app(&route(
        "chat",
        r#"
        retry: {attempts: 4, backoff: 1s, maxBackoff: 1500ms}
        circuitBreaker: {consecutiveFailures: 100}
        backends:
          - {name: a, provider: openai, model: gpt-4o-2024-08-06, secretRef: {name: openai, key: api-key}}
        "#,
    ));
    for _ in 0..3 {
        up.push("a", Reply::error(500, "server_error", "x"));
    }
    up.push("a", Reply::ok("ok", 5, 1));
    assert_eq!(post(hello("chat")).send(&app).await.status, 200);
    let seen = up.seen("a");
    let gaps: Vec<Duration> = (0..3).map(|i| elapsed_between(&seen, i, i + 1)).collect();
    assert!((500 * MS..=1000 * MS).contains(&gaps[0]), "{gaps:?}");
    assert!((750 * MS..=1500 * MS).contains(&gaps[1]), "{gaps:?}");
    assert!((750 * MS..=1500 * MS).contains(&gaps[2]), "{gaps:?}");
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured_in_seconds_and_milliseconds() {
    let (app, up) = app(&primary_and_backup(""));
    up.push(
        "primary",
        Reply::error(429, "rate_limit_exceeded", "slow").header("retry-after", "2"),
    )
    .push("primary", Reply::ok("ok", 5, 1));
    let r = post(hello("chat")).send(&app).await;
    assert_eq!(r.backend(), "primary");
    assert_eq!(elapsed_between(&up.seen("primary"), 0, 1), 2 * SEC);

    up.push(
        "primary",
        Reply::error(503, "server_error", "busy").header("retry-after-ms", "1500"),
    )
    .push("primary", Reply::ok("ok", 5, 1));
    let r = post(hello("chat")).send(&app).await;
    assert_eq!(r.backend(), "primary");
    assert_eq!(elapsed_between(&up.seen("primary"), 2, 3), 1500 * MS);
    assert_eq!(up.count("backup"), 0);
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_beyond_max_retry_after_moves_straight_to_the_fallback() {
    let (app, up) = app(&primary_and_backup(
        "retry: {attempts: 3, maxRetryAfter: 10s}",
    ));
    up.push(
        "primary",
        Reply::error(429, "rate_limit_exceeded", "quota").header("retry-after", "60"),
    )
    .always("backup", Reply::ok("backup", 5, 1));
    let t0 = Instant::now();
    let r = post(hello("chat")).send(&app).await;
    assert_eq!(r.backend(), "backup");
    assert_eq!(up.seen("backup")[0].at, t0, "no wait before the fallback");
    assert_eq!(up.count("primary"), 1);
    // The provider asked for 60s: the backend stays out that long.
    advance(59 * SEC).await;
    assert_eq!(post(hello("chat")).send(&app).await.backend(), "backup");
    assert_eq!(up.count("primary"), 1);
    advance(SEC).await;
    up.push("primary", Reply::ok("back", 5, 1));
    assert_eq!(post(hello("chat")).send(&app).await.backend(), "primary");
}

// ---------------------------------------------------------------------------------------------
// Timeouts

#[tokio::test(start_paused = true)]
async fn an_attempt_that_outlives_its_timeout_fails_over() {
    let (app, up) = app(&primary_and_backup(
        "retry: {attempts: 1}\ntimeouts: {attempt: 1s, firstToken: 30s}",
    ));
    // Headers at once, the body only after 5s.
    up.push(
        "primary",
        Reply::json(200, completion_body("late", None)).slow_body(5 * SEC),
    )
    .push("backup", Reply::ok("on time", 5, 1));
    let t0 = Instant::now();
    let r = post(hello("chat")).send(&app).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.backend(), "backup");
    assert_eq!(up.seen("backup")[0].at - t0, SEC);
    assert_eq!(
        metric(
            &app,
            "llmesh_upstream_errors_total",
            &[("backend", "primary"), ("reason", "timeout")]
        ),
        1.0
    );
}

#[tokio::test(start_paused = true)]
async fn a_stream_that_hangs_before_its_first_chunk_fails_over_at_first_token_timeout() {
    let (app, up) = app(&primary_and_backup(
        "retry: {attempts: 1}\ntimeouts: {firstToken: 2s}",
    ));
    up.push("primary", Reply::sse(vec![Part::Hang]))
        .push("backup", Reply::stream(&["Hello", " there"], Some((9, 2))));
    let t0 = Instant::now();
    let mut body = hello("chat");
    body["stream"] = json!(true);
    let r = post(body).send(&app).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    assert_eq!(r.backend(), "backup");
    assert_eq!(r.header("x-llmesh-fallback-from"), Some("primary"));
    assert_eq!(up.seen("backup")[0].at - t0, 2 * SEC);
    let events = r.events();
    assert!(
        events[1].contains("Hello") && events[2].contains(" there"),
        "{events:?}"
    );
    assert_eq!(events.last().unwrap(), "[DONE]");
}

#[tokio::test(start_paused = true)]
async fn the_total_deadline_answers_504() {
    let (app, up) = app(&primary_and_backup(
        "retry: {attempts: 2}\ntimeouts: {attempt: 2s, total: 3s}",
    ));
    up.always("primary", Reply::hang())
        .always("backup", Reply::hang());
    let t0 = Instant::now();
    let r = post(hello("chat")).send(&app).await;
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.json()["error"]["type"], "timeout");
    assert_eq!(t0.elapsed(), 3 * SEC, "the retry was cut at the deadline");
    assert_eq!(up.count("primary"), 2);
    assert_eq!(up.count("backup"), 0, "no time was left for the fallback");
}

fn streaming(model: &str) -> Value {
    let mut b = hello(model);
    b["stream"] = json!(true);
    b
}

#[tokio::test(start_paused = true)]
async fn a_stream_idle_after_its_first_chunk_ends_with_an_error_event() {
    let (app, up) = app(&primary_and_backup("timeouts: {streamIdle: 5s}"));
    up.push(
        "primary",
        Reply::sse(vec![
            Part::Data(role_chunk()),
            Part::Data(content_chunk("Hel")),
            Part::Hang,
        ]),
    );
    let resp = post(streaming("chat")).start(&app).await;
    assert_eq!(resp.status(), 200);
    let t0 = Instant::now();
    let mut body = resp.into_body();
    let mut text = String::new();
    while let Some(f) = next_frame(&mut body).await {
        text.push_str(&f.expect("the body itself does not fail"));
    }
    assert_eq!(t0.elapsed(), 5 * SEC);
    let events = sse_data(&text);
    assert!(events[1].contains("Hel"));
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "stream_error");
    assert!(
        last["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no data for 5s")
    );
    assert!(!text.contains("[DONE]"));
    assert_eq!(up.count("backup"), 0, "no failover after the first byte");
    assert_eq!(
        metric(
            &app,
            "llmesh_stream_errors_total",
            &[("backend", "primary"), ("reason", "idle_timeout")]
        ),
        1.0
    );
}

// ---------------------------------------------------------------------------------------------
// Circuit breaker

#[tokio::test(start_paused = true)]
async fn the_circuit_opens_after_consecutive_failures_probes_after_cooldown_and_closes() {
    let (app, up) = app(&primary_and_backup(
        "retry: {attempts: 1}\ncircuitBreaker: {consecutiveFailures: 3, cooldown: 10s}",
    ));
    for _ in 0..4 {
        up.push("primary", Reply::error(500, "server_error", "down"));
    }
    up.always("primary", Reply::ok("primary", 5, 1))
        .always("backup", Reply::ok("backup", 5, 1));
    let state = |app: &llmesh_sidecar::App| {
        metric(
            app,
            "llmesh_backend_circuit_state",
            &[("backend", "primary")],
        )
    };

    for _ in 0..3 {
        assert_eq!(post(hello("chat")).send(&app).await.backend(), "backup");
    }
    assert_eq!(up.count("primary"), 3);
    assert_eq!(get("/metrics").send(&app).await.status, 200); // refreshes the gauges
    assert_eq!(state(&app), 1.0, "open");
    for _ in 0..3 {
        let r = post(hello("chat")).send(&app).await;
        assert_eq!(r.backend(), "backup");
        assert_eq!(
            r.header("x-llmesh-attempts"),
            Some("1"),
            "primary was skipped"
        );
    }
    assert_eq!(up.count("primary"), 3);

    // Cooldown over: one probe, which fails and doubles the cooldown to 20s.
    advance(10 * SEC).await;
    assert_eq!(post(hello("chat")).send(&app).await.backend(), "backup");
    assert_eq!(up.count("primary"), 4);
    advance(10 * SEC).await;
    assert_eq!(post(hello("chat")).send(&app).await.backend(), "backup");
    assert_eq!(up.count("primary"), 4, "still open after 10 of 20s");

    // The next probe succeeds and closes the circuit.
    advance(10 * SEC).await;
    assert_eq!(post(hello("chat")).send(&app).await.backend(), "primary");
    assert_eq!(post(hello("chat")).send(&app).await.backend(), "primary");
    app.refresh_gauges();
    assert_eq!(state(&app), 0.0, "closed");
}

#[tokio::test(start_paused = true)]
async fn a_half_open_circuit_lets_one_probe_through_and_retries_do_not_hammer_it() {
    let (app, up) = app(&primary_and_backup(
        "retry: {attempts: 3, backoff: 100ms}\ncircuitBreaker: {consecutiveFailures: 2, cooldown: 10s}",
    ));
    up.always("primary", Reply::error(500, "server_error", "down"))
        .always("backup", Reply::ok("backup", 5, 1));
    assert_eq!(post(hello("chat")).send(&app).await.backend(), "backup");
    assert_eq!(
        up.count("primary"),
        2,
        "retries stop once the failures open the circuit"
    );
    advance(10 * SEC).await;
    assert_eq!(post(hello("chat")).send(&app).await.backend(), "backup");
    assert_eq!(up.count("primary"), 3, "one probe, not retried");
}

// ---------------------------------------------------------------------------------------------
// Streams

#[tokio::test(start_paused = true)]
async fn a_stream_reset_before_its_first_chunk_fails_over() {
    let (app, up) = app(&primary_and_backup("retry: {attempts: 1}"));
    up.push(
        "primary",
        Reply::sse(vec![Part::Error("connection reset by peer".into())]),
    )
    .push("backup", Reply::stream(&["from", " backup"], Some((9, 2))));
    let r = post(streaming("chat")).send(&app).await;
    assert_eq!(r.status, 200);
    let events = r.events();
    assert!(events.iter().any(|e| e.contains(" backup")), "{events:?}");
    assert_eq!(events.last().unwrap(), "[DONE]");
    assert!(!r.text().contains("error"));
    assert_eq!(
        metric(&app, "llmesh_stream_errors_total", &[]),
        0.0,
        "nothing had reached the client"
    );
}

#[tokio::test(start_paused = true)]
async fn a_stream_reset_after_its_first_chunk_ends_with_an_error_and_no_done() {
    let (app, up) = app(&primary_and_backup(""));
    up.push(
        "primary",
        Reply::sse(vec![
            Part::Data(role_chunk()),
            Part::Data(content_chunk("Once upon")),
            Part::Wait(100 * MS),
            Part::Error("connection reset by peer".into()),
        ]),
    );
    let r = post(streaming("chat")).send(&app).await;
    assert_eq!(r.status, 200);
    let events = r.events();
    assert!(events[1].contains("Once upon"), "{events:?}");
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert!(
        last["error"]["message"]
            .as_str()
            .unwrap()
            .contains("connection reset by peer"),
        "{last}"
    );
    assert!(!r.text().contains("[DONE]"));
    assert_eq!(up.count("backup"), 0);
    assert_eq!(
        metric(
            &app,
            "llmesh_stream_errors_total",
            &[("backend", "primary"), ("reason", "reset")]
        ),
        1.0
    );
}

#[tokio::test(start_paused = true)]
async fn stream_usage_is_requested_upstream_and_shown_only_to_clients_that_asked() {
    let (app, up) = app(&route(
        "chat",
        r#"
        backends:
          - name: a
            provider: openai
            model: gpt-4o-2024-08-06
            secretRef: {name: openai, key: api-key}
            prices: {input: "1.00", output: "2.00"}
        "#,
    ));
    up.always("a", Reply::stream(&["Hi", "!"], Some((1_000, 500))));

    let r = post(streaming("chat")).send(&app).await;
    assert_eq!(
        up.last_body("a")["stream_options"],
        json!({"include_usage": true})
    );
    let events = r.events();
    assert!(!r.text().contains("\"usage\":{"), "{events:?}");
    assert_eq!(
        events.len(),
        5,
        "role, 2 contents, finish, [DONE]: {events:?}"
    );
    // Priced from the hidden usage chunk: 1,000 x $1 + 500 x $2 per 1M.
    assert_eq!(
        metric(
            &app,
            "llmesh_cost_microdollars_total",
            &[("estimated", "false")]
        ),
        2_000.0
    );

    let mut asks = streaming("chat");
    asks["stream_options"] = json!({"include_usage": true});
    let r = post(asks).send(&app).await;
    let usage: Vec<Value> = r
        .events()
        .iter()
        .filter(|e| e.contains("\"usage\""))
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(usage.len(), 1);
    assert_eq!(usage[0]["usage"]["completion_tokens"], 500);
    assert_eq!(usage[0]["choices"], json!([]));
    assert_eq!(
        metric(
            &app,
            "llmesh_tokens_total",
            &[("type", "input"), ("estimated", "false")]
        ),
        2_000.0
    );
}

#[tokio::test(start_paused = true)]
async fn a_client_that_drops_a_stream_midway_is_still_charged() {
    let (app, up) = app(&route(
        "chat",
        r#"
        backends:
          - name: a
            provider: openai
            model: gpt-4o-2024-08-06
            secretRef: {name: openai, key: api-key}
            prices: {input: "1.00", output: "2.00"}
        "#,
    ));
    let mut parts = vec![Part::Data(role_chunk())];
    for w in ["one", "two", "three", "four"] {
        parts.push(Part::Data(content_chunk(w)));
        parts.push(Part::Wait(SEC));
    }
    parts.push(Part::Data(finish_chunk()));
    parts.push(Part::Data(DONE.into()));
    up.push("a", Reply::sse(parts));

    let resp = post(streaming("chat")).start(&app).await;
    let mut body = resp.into_body();
    let mut got = String::new();
    while !got.contains("three") {
        got.push_str(&next_frame(&mut body).await.unwrap().unwrap());
    }
    assert_eq!(
        metric(&app, "llmesh_in_flight_requests", &[("backend", "a")]),
        1.0
    );
    drop(body);

    let cost = metric(
        &app,
        "llmesh_cost_microdollars_total",
        &[("estimated", "true")],
    );
    assert!(cost > 0.0, "charged {cost}");
    let output = metric(
        &app,
        "llmesh_tokens_total",
        &[("type", "output"), ("estimated", "true")],
    );
    assert!(output >= 2.0, "output tokens {output}");
    let input = metric(
        &app,
        "llmesh_tokens_total",
        &[("type", "input"), ("estimated", "true")],
    );
    assert_eq!(input, f64::from(prompt_tokens(&streaming("chat"))));
    assert_eq!(
        metric(&app, "llmesh_requests_total", &[("status_class", "4xx")]),
        1.0,
        "recorded as a 499"
    );
    assert_eq!(
        metric(&app, "llmesh_in_flight_requests", &[("backend", "a")]),
        0.0
    );
}

// ---------------------------------------------------------------------------------------------
// Bodies

#[tokio::test(start_paused = true)]
async fn the_clients_body_reaches_the_provider_as_written_but_for_the_model() {
    let (app, up) = app(&route(
        "chat",
        r#"
        backends:
          - {name: a, provider: openai, model: gpt-4o-2024-08-06, secretRef: {name: openai, key: api-key}}
        "#,
    ));
    up.always("a", Reply::ok("a", 5, 1));
    // Number forms and an integer past 2^64 a parse-and-serialise would rewrite, escapes, spaces.
    let sent = "{ \"model\" : \"chat\", \"temperature\": 1.0e0, \"seed\": 123456789012345678901234567890,\n  \"messages\": [{\"role\": \"user\", \"content\": \"caf\\u00e9 \\\"model\\\"\"}], \"metadata\": {\"model\": \"kept\"} }";
    let r = post(json!({})).raw(sent).send(&app).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let expected = sent.replacen("\"chat\"", "\"gpt-4o-2024-08-06\"", 1);
    assert_eq!(std::str::from_utf8(&up.seen("a")[0].raw).unwrap(), expected);

    // A stream gets the usage option appended, the rest as sent.
    up.always("a", Reply::stream(&["Hi"], Some((5, 1))));
    let sent = "{\"model\":\"chat\",\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}";
    post(json!({})).raw(sent).send(&app).await;
    assert_eq!(
        std::str::from_utf8(&up.seen("a")[1].raw).unwrap(),
        "{\"model\":\"gpt-4o-2024-08-06\",\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"stream_options\":{\"include_usage\":true}}"
    );

    // A member named twice is sent as the sidecar read it (the last one), never both.
    up.always("a", Reply::ok("a", 5, 1));
    let sent = "{\"model\":\"chat\",\"max_tokens\":100000,\"max_tokens\":5,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}";
    post(json!({})).raw(sent).send(&app).await;
    assert_eq!(
        std::str::from_utf8(&up.seen("a")[2].raw).unwrap(),
        "{\"model\":\"gpt-4o-2024-08-06\",\"max_tokens\":5,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}"
    );
}

// ---------------------------------------------------------------------------------------------
// Limits

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

// ---------------------------------------------------------------------------------------------
// Cost

const PRICED: &str = r#"
    backends:
      - name: a
        provider: openai
        model: gpt-4o-2024-08-06
        secretRef: {name: openai, key: api-key}
        prices: {input: "2.50", cachedInput: "1.25", output: "10.00"}
"#;

#[tokio::test(start_paused = true)]
async fn provider_usage_is_priced_exactly_with_cached_tokens_at_their_price() {
    let (app, up) = app(&route("chat", PRICED));
    up.push(
        "a",
        Reply::json(200, completion_body("priced", Some((1_000, 500, 400)))),
    );
    let r = post(hello("chat")).send(&app).await;
    // 600 uncached x $2.50 + 400 cached x $1.25 + 500 out x $10, per 1M: 1,500 + 500 + 5,000.
    assert_eq!(r.header("x-llmesh-cost-usd"), Some("0.007000"));
    assert_eq!(
        metric(
            &app,
            "llmesh_cost_microdollars_total",
            &[("backend", "a"), ("estimated", "false")]
        ),
        7_000.0
    );
    assert_eq!(
        metric(&app, "llmesh_tokens_total", &[("type", "cached_input")]),
        400.0
    );
    assert_eq!(
        metric(&app, "llmesh_tokens_total", &[("type", "output")]),
        500.0
    );
}

#[tokio::test(start_paused = true)]
async fn usage_the_provider_does_not_report_is_estimated_and_marked() {
    let (app, up) = app(&route("chat", PRICED));
    // A stream without a usage chunk.
    up.push("a", Reply::stream(&["a", "b", "c"], None));
    let r = post(streaming("chat")).send(&app).await;
    assert_eq!(r.events().last().unwrap(), "[DONE]");
    let streamed = metric(
        &app,
        "llmesh_cost_microdollars_total",
        &[("estimated", "true")],
    );
    assert!(streamed > 0.0);
    assert!(
        metric(
            &app,
            "llmesh_tokens_total",
            &[("type", "output"), ("estimated", "true")]
        ) >= 3.0
    );
    // The route needs no estimate before the call (no limit, budget, rule or context window):
    // it is made from the client's body when the answer brings no usage, and is the same.
    let input = || {
        metric(
            &app,
            "llmesh_tokens_total",
            &[("type", "input"), ("estimated", "true")],
        )
    };
    let mut expected = f64::from(prompt_tokens(&streaming("chat")));
    assert_eq!(input(), expected);

    // A complete answer without usage.
    up.push("a", Reply::ok_no_usage("Four words of answer"));
    let r = post(hello("chat")).send(&app).await;
    assert_eq!(r.status, 200);
    assert!(r.header("x-llmesh-cost-usd").is_some());
    expected += f64::from(prompt_tokens(&hello("chat")));
    assert_eq!(input(), expected);

    // A stream the client leaves after its first chunk is charged its prompt too.
    let long = {
        let mut b = chat_body("chat", &words(300));
        b["stream"] = json!(true);
        b
    };
    up.push("a", Reply::sse(vec![Part::Data(role_chunk()), Part::Hang]));
    let resp = post(long.clone()).start(&app).await;
    assert_eq!(resp.status(), 200);
    drop(resp);
    tokio::task::yield_now().await;
    expected += f64::from(prompt_tokens(&long));
    assert_eq!(input(), expected);
    assert!(
        metric(
            &app,
            "llmesh_cost_microdollars_total",
            &[("estimated", "true")]
        ) > streamed,
        "the answer without usage is charged an estimate"
    );
    assert_eq!(
        metric(
            &app,
            "llmesh_cost_microdollars_total",
            &[("estimated", "false")]
        ),
        0.0
    );
}

// ---------------------------------------------------------------------------------------------
// Cache

#[tokio::test(start_paused = true)]
async fn the_cache_answers_repeats_within_its_ttl_and_never_stores_errors() {
    let (app, up) = app(&route(
        "chat",
        r#"
        retry: {attempts: 1}
        fallbacks: []
        cache: {enabled: true, ttl: 1m}
        backends:
          - {name: a, provider: openai, model: gpt-4o-2024-08-06, secretRef: {name: openai, key: api-key}}
        "#,
    ));
    up.always("a", Reply::ok("cached answer", 10, 3));
    let first = post(hello("chat")).send(&app).await;
    assert_eq!(first.header("x-llmesh-cache"), Some("miss"));
    let second = post(hello("chat")).send(&app).await;
    assert_eq!(second.status, 200);
    assert_eq!(second.header("x-llmesh-cache"), Some("hit"));
    assert_eq!(second.backend(), "a");
    assert_eq!(second.body, first.body);
    assert_eq!(up.count("a"), 1, "the hit did not reach the provider");

    let bypass = post(hello("chat"))
        .header("cache-control", "no-store")
        .send(&app)
        .await;
    assert_eq!(bypass.header("x-llmesh-cache"), Some("bypass"));
    assert_eq!(up.count("a"), 2);

    // A different body is a different entry; streams are never cached.
    post(chat_body("chat", "Something else")).send(&app).await;
    assert_eq!(up.count("a"), 3);
    up.push("a", Reply::stream(&["x"], None))
        .push("a", Reply::stream(&["x"], None));
    post(streaming("chat")).send(&app).await;
    post(streaming("chat")).send(&app).await;
    assert_eq!(up.count("a"), 5);

    // Errors are not stored.
    let failing = chat_body("chat", "fails once");
    up.push("a", Reply::error(500, "server_error", "oops"));
    assert_eq!(post(failing.clone()).send(&app).await.status, 502);
    let r = post(failing).send(&app).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-llmesh-cache"), Some("miss"));
    assert_eq!(up.count("a"), 7);

    // Expiry.
    advance(59 * SEC).await;
    assert_eq!(
        post(hello("chat"))
            .send(&app)
            .await
            .header("x-llmesh-cache"),
        Some("hit")
    );
    advance(SEC).await;
    assert_eq!(
        post(hello("chat"))
            .send(&app)
            .await
            .header("x-llmesh-cache"),
        Some("miss")
    );
    assert_eq!(up.count("a"), 8);

    let count = |result| metric(&app, "llmesh_cache_requests_total", &[("result", result)]);
    assert_eq!(
        (count("hit"), count("miss"), count("bypass")),
        (2.0, 5.0, 1.0)
    );
}

// ---------------------------------------------------------------------------------------------
// Budgets

/// 2024-02-29T00:00:00Z.
const LEAP_DAY: u64 = 1_709_164_800;
/// 2024-03-01T00:00:00Z.
const MARCH: u64 = LEAP_DAY + 86_400;

#[tokio::test(start_paused = true)]
async fn a_budget_clamps_max_tokens_then_refuses_once_spent() {
    let clock = ManualClock::at(LEAP_DAY);
    let (app, up) = app_with_clock(
        &format!(
            "{}\n---\n{}",
            route(
                "chat",
                r#"
                backends:
                  - {name: a, provider: openai, model: gpt-4o-2024-08-06, secretRef: {name: openai, key: api-key}, prices: {input: "1.00", output: "2.00"}}
                "#
            ),
            r#"
apiVersion: llmesh.io/v1alpha1
kind: LLMBudget
metadata: {name: team}
spec:
  limit: {usd: "0.01"}
  period: month
"#
        ),
        Some(clock.clone()),
    );
    let mut body = hello("chat");
    body["max_tokens"] = json!(100_000);
    let p = u64::from(prompt_tokens(&body));
    // $0.01 = 10,000 micro-dollars; the prompt costs p; each output token 2.
    up.push("a", Reply::ok("a", 2_000, 4_000));
    let r = post(body.clone()).send(&app).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last_body("a")["max_tokens"], (10_000 - p) / 2);
    // That answer cost 2,000 + 8,000 = the whole budget.
    let r = post(body.clone()).send(&app).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["code"], "budget_exceeded");
    assert_eq!(r.json()["error"]["type"], "insufficient_quota");
    assert_eq!(r.header("retry-after"), Some("86400"), "until March");
    assert_eq!(up.count("a"), 1);

    clock.set(MARCH);
    up.push("a", Reply::ok("a", 10, 10));
    assert_eq!(post(body).send(&app).await.status, 200);
}

#[tokio::test(start_paused = true)]
async fn a_downgrade_budget_switches_backend_until_the_next_period() {
    let clock = ManualClock::at(LEAP_DAY);
    let (app, up) = app_with_clock(
        &format!(
            "{}\n---\n{}",
            route(
                "chat",
                r#"
                backends:
                  - {name: premium, provider: openai, model: gpt-4o-2024-08-06, secretRef: {name: openai, key: api-key}, prices: {input: "1.00", output: "2.00"}}
                  - {name: cheap, provider: openai, model: gpt-4o-mini-2024-07-18, secretRef: {name: openai, key: api-key}, prices: {input: "0.10", output: "0.20"}}
                "#
            ),
            r#"
apiVersion: llmesh.io/v1alpha1
kind: LLMBudget
metadata: {name: team}
spec:
  limit: {usd: "0.01"}
  action: downgrade
  downgradeBackend: cheap
"#
        ),
        Some(clock.clone()),
    );
    up.push("premium", Reply::ok("p", 2_000, 4_000))
        .always("cheap", Reply::ok("c", 1_000, 1_000));
    assert_eq!(post(hello("chat")).send(&app).await.backend(), "premium");
    for _ in 0..3 {
        let r = post(hello("chat")).send(&app).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.backend(), "cheap");
    }
    assert_eq!(up.count("premium"), 1);
    app.refresh_gauges();
    // Downgraded traffic still counts: 10,000 + 3 x (100 + 200).
    assert_eq!(
        metric(
            &app,
            "llmesh_budget_spent_microdollars",
            &[("budget", "team")]
        ),
        10_900.0
    );

    clock.set(MARCH);
    up.push("premium", Reply::ok("p", 10, 10));
    assert_eq!(post(hello("chat")).send(&app).await.backend(), "premium");
}

// ---------------------------------------------------------------------------------------------
// Hot reload

#[tokio::test(start_paused = true)]
async fn a_reload_leaves_streams_in_flight_alone_and_applies_to_the_next_request() {
    let (app, up) = app(&route(
        "chat",
        r#"
        backends:
          - {name: old, provider: openai, model: gpt-4o-2024-08-06, secretRef: {name: openai, key: api-key}}
        "#,
    ));
    up.push(
        "old",
        Reply::sse(vec![
            Part::Data(role_chunk()),
            Part::Data(content_chunk("one")),
            Part::Wait(SEC),
            Part::Data(content_chunk(" two")),
            Part::Wait(SEC),
            Part::Data(finish_chunk()),
            Part::Data(usage_chunk(9, 2)),
            Part::Data(DONE.into()),
        ]),
    );
    let resp = post(streaming("chat")).start(&app).await;
    let mut body = resp.into_body();
    let first = next_frame(&mut body).await.unwrap().unwrap();
    assert!(first.contains("assistant"));

    app.apply(&snapshot(&route(
        "chat",
        r#"
        backends:
          - {name: new, provider: openai, model: gpt-4o-mini-2024-07-18, secretRef: {name: openai, key: api-key}}
        "#,
    )));
    let mut rest = String::new();
    while let Some(f) = next_frame(&mut body).await {
        rest.push_str(&f.unwrap());
    }
    assert!(rest.contains(" two"), "{rest}");
    assert!(rest.ends_with("data: [DONE]\n\n"), "{rest}");
    assert_eq!(
        metric(
            &app,
            "llmesh_requests_total",
            &[("backend", "old"), ("status_class", "2xx")]
        ),
        1.0
    );

    up.push("new", Reply::ok("new", 5, 1));
    let r = post(hello("chat")).send(&app).await;
    assert_eq!(r.backend(), "new");
    assert_eq!(up.count("old"), 1);
}
