//! Timeouts.

use super::*;

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
