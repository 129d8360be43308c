//! `--max-in-flight`: past the limit a generation request is refused at once with a 503 and
//! `retry-after`, in the client's own error shape, without reaching a provider; places come back
//! when answers finish, when streams end and when clients go away.

mod common;

use http_body_util::BodyExt;
use serde_json::json;

use common::*;

const ONE_ROUTE: &str = r#"
apiVersion: llmesh.io/v1alpha1
kind: LLMRoute
metadata: {name: chat}
spec:
  backends:
    - {name: a, provider: openai, model: gpt-4o-mini-2024-07-18, secretRef: {name: openai, key: api-key}}
"#;

fn stream_body() -> serde_json::Value {
    json!({"model": "chat", "stream": true, "messages": [{"role": "user", "content": "Say hello"}]})
}

fn rejections(app: &std::sync::Arc<llmesh_sidecar::App>) -> String {
    String::from_utf8(app.metrics.render())
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("llmesh_limit_rejections_total{"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(start_paused = true)]
async fn requests_past_max_in_flight_get_a_fast_503_until_a_place_frees() {
    let (app, up) = app_built(ONE_ROUTE, |b| b.max_in_flight(2));
    // Two streams that send their first chunk and then wait: both hold their places.
    for _ in 0..2 {
        up.push("a", Reply::sse(vec![Part::Data(role_chunk()), Part::Hang]));
    }
    let mut first = post(stream_body()).start(&app).await;
    let second = post(stream_body()).start(&app).await;
    assert_eq!(
        (first.status().as_u16(), second.status().as_u16()),
        (200, 200)
    );
    assert_eq!(app.in_flight(), 2);

    // A third, in OpenAI's shape: refused without reaching the provider.
    let r = post(chat_body("chat", "Say hello")).send(&app).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("1"));
    let e = &r.json()["error"];
    assert_eq!(e["type"], "server_error");
    assert_eq!(e["code"], "overloaded");
    let msg = e["message"].as_str().unwrap();
    assert!(
        msg.contains("2 requests in flight") && msg.contains("--max-in-flight"),
        "the message names the limit and how to raise it: {msg}"
    );
    assert!(r.header("x-request-id").is_some());

    // Anthropic's clients get Anthropic's overload shape.
    let m = post_to(
        "/v1/messages",
        json!({"model": "chat", "max_tokens": 10, "messages": [{"role": "user", "content": "Hi"}]}),
    )
    .send(&app)
    .await;
    assert_eq!(m.status, 503, "{}", m.text());
    assert_eq!(m.json()["type"], "error");
    assert_eq!(m.json()["error"]["type"], "overloaded_error");
    assert_eq!(m.header("retry-after"), Some("1"));

    assert_eq!(
        up.count("a"),
        2,
        "refused requests never reach the provider"
    );
    assert!(
        rejections(&app)
            .contains(r#"llmesh_limit_rejections_total{limit="max_in_flight",route="none"} 2"#),
        "{}",
        rejections(&app)
    );
    // Health, readiness and metrics are not generation requests: always answered.
    assert_eq!(get("/healthz").send(&app).await.status, 200);
    assert_eq!(get("/readyz").send(&app).await.status, 200);

    // The client of the second stream goes away: its place comes back.
    drop(second);
    assert_eq!(app.in_flight(), 1);
    up.push("a", Reply::ok("Hello", 9, 1));
    let ok = post(chat_body("chat", "Say hello")).send(&app).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(
        app.in_flight(),
        1,
        "an answered request gives its place back"
    );

    // The first stream still holds its place while its body is being read.
    let frame = next_frame(first.body_mut()).await.unwrap().unwrap();
    assert!(frame.contains("chat.completion.chunk"), "{frame}");
    assert_eq!(app.in_flight(), 1);
    drop(first);
    assert_eq!(app.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_stream_holds_its_place_until_its_last_byte() {
    let (app, up) = app_built(ONE_ROUTE, |b| b.max_in_flight(1));
    up.push("a", Reply::stream(&["Hello", " there"], Some((9, 2))));
    let resp = post(stream_body()).start(&app).await;
    assert_eq!(resp.status(), 200);
    // Headers are out but the body is not: a second request is refused.
    assert_eq!(post(stream_body()).send(&app).await.status, 503);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).ends_with("data: [DONE]\n\n"));
    assert_eq!(app.in_flight(), 0);
    up.push("a", Reply::stream(&["Again"], Some((9, 1))));
    assert_eq!(post(stream_body()).send(&app).await.status, 200);
}

#[tokio::test(start_paused = true)]
async fn refused_and_failed_requests_give_their_places_back() {
    let (app, up) = app_built(ONE_ROUTE, |b| b.max_in_flight(1));
    // Bad JSON, an unknown model and an upstream error all end the request.
    assert_eq!(
        post(json!({})).raw("{not json").send(&app).await.status,
        400
    );
    assert_eq!(post(chat_body("nope", "hi")).send(&app).await.status, 404);
    up.push("a", Reply::error(500, "boom", "upstream broke"));
    up.push("a", Reply::error(500, "boom", "upstream broke"));
    up.push("a", Reply::error(500, "boom", "upstream broke"));
    let r = post(chat_body("chat", "hi")).send(&app).await;
    assert!(r.status.is_server_error(), "{}", r.text());
    assert_eq!(app.in_flight(), 0);
    up.always("a", Reply::ok("Hello", 9, 1));
    assert_eq!(post(chat_body("chat", "hi")).send(&app).await.status, 200);
}

#[tokio::test(start_paused = true)]
async fn zero_means_no_limit() {
    let (app, up) = app_built(ONE_ROUTE, |b| b.max_in_flight(0));
    let mut held = Vec::new();
    for _ in 0..3000 {
        up.push("a", Reply::sse(vec![Part::Data(role_chunk()), Part::Hang]));
    }
    for _ in 0..3000 {
        let r = post(stream_body()).start(&app).await;
        assert_eq!(r.status(), 200);
        held.push(r);
    }
    assert_eq!(app.in_flight(), 3000);
    drop(held);
    assert_eq!(app.in_flight(), 0);
}
