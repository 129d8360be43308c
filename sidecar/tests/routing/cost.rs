//! Cost.

use super::*;

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
