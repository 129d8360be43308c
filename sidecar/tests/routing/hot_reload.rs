//! Hot reload.

use super::*;

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
