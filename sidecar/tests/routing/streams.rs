//! Streams.

use super::*;

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
