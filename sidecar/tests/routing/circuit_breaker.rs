//! Circuit breaker.

use super::*;

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
