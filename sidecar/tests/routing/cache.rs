//! Cache.

use super::*;

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
