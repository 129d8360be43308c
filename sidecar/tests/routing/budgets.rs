//! Budgets.

use super::*;

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
    // What was left for it: the whole $0.01 (its own reservation is not counted against it).
    assert_eq!(r.header("x-llmesh-budget-remaining-usd"), Some("0.010000"));
    // That answer cost 2,000 + 8,000 = the whole budget.
    let r = post(body.clone()).send(&app).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["code"], "budget_exceeded");
    assert_eq!(r.json()["error"]["type"], "insufficient_quota");
    assert_eq!(r.header("retry-after"), Some("86400"), "until March");
    assert_eq!(up.count("a"), 1);

    clock.set(MARCH);
    up.push("a", Reply::ok("a", 10, 10));
    let r = post(body.clone()).send(&app).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("x-llmesh-budget-remaining-usd"),
        Some("0.010000"),
        "a new month"
    );
    // 10 input tokens at $1/M and 10 output at $2/M: 30 micro-dollars spent.
    up.push("a", Reply::ok("a", 10, 10));
    let r = post(body).send(&app).await;
    assert_eq!(r.header("x-llmesh-budget-remaining-usd"), Some("0.009970"));
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
