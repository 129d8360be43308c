//! Retries.

use super::*;

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
