//! The fake over real sockets: scenario prefixes, counters, cut and hanging connections, and the
//! test hooks, as a client sees them.

mod common;

use std::time::Duration;

use serde_json::Value;

use common::{LONG, fake, header, send, status};

const CHAT: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;
const STREAM: &str =
    r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;

#[tokio::test]
async fn the_prefix_picks_the_behaviour() {
    let addr = fake().await;
    let (r, _) = send(addr, "POST", "/v1/chat/completions", "", CHAT, LONG).await;
    assert_eq!(status(&r), 200);
    assert!(header(&r, "x-request-id").unwrap().starts_with("req_"));
    let (r, _) = send(
        addr,
        "POST",
        "/s/429,retry-after=1500ms/v1/chat/completions",
        "",
        CHAT,
        LONG,
    )
    .await;
    assert_eq!(status(&r), 429);
    assert_eq!(header(&r, "retry-after"), Some("2"));
    assert_eq!(header(&r, "retry-after-ms"), Some("1500"));
    for (s, ct) in [
        ("502", "text/html"),
        ("503", "application/json"),
        ("wrong-content-type", "text/html; charset=utf-8"),
    ] {
        let (r, _) = send(
            addr,
            "POST",
            &format!("/s/{s}/v1/chat/completions"),
            "",
            CHAT,
            LONG,
        )
        .await;
        assert_eq!(header(&r, "content-type"), Some(ct), "{s}");
    }
    let (r, _) = send(
        addr,
        "POST",
        "/s/teapot/v1/chat/completions",
        "",
        CHAT,
        LONG,
    )
    .await;
    assert_eq!(status(&r), 400);
    assert!(r.contains("unknown fake scenario"));
    let (r, _) = send(addr, "POST", "/v1/assistants", "", CHAT, LONG).await;
    assert_eq!(status(&r), 404);
}

#[tokio::test]
async fn counted_scenarios_fail_first_then_recover_and_reset_forgets() {
    let addr = fake().await;
    let path = "/s/fail-first-2-then-ok,with=500/v1/chat/completions";
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(status(&send(addr, "POST", path, "", CHAT, LONG).await.0));
    }
    assert_eq!(got, [500, 500, 200]);
    let (r, _) = send(
        addr,
        "GET",
        "/__requests?scenario=fail-first-2-then-ok%2Cwith%3D500",
        "",
        "",
        LONG,
    )
    .await;
    let body: Value = serde_json::from_str(r.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    let answers: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["answer"].as_str().unwrap())
        .collect();
    assert_eq!(answers, ["500", "500", "ok"]);
    send(addr, "POST", "/__reset", "", "", LONG).await;
    assert_eq!(
        status(&send(addr, "POST", path, "", CHAT, LONG).await.0),
        500
    );
}

#[tokio::test]
async fn requests_are_recorded_without_credentials() {
    let addr = fake().await;
    send(
        addr,
        "POST",
        "/s/ok,id=rec/v1/chat/completions",
        "authorization: Bearer sk-very-secret\r\nx-trace: t1\r\n",
        CHAT,
        LONG,
    )
    .await;
    let (r, _) = send(addr, "GET", "/__requests?scenario=ok,id=rec", "", "", LONG).await;
    assert!(!r.contains("sk-very-secret"));
    let body: Value = serde_json::from_str(r.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    let e = &body["data"][0];
    assert_eq!(e["headers"]["authorization"], "<present>");
    assert_eq!(e["headers"]["x-trace"], "t1");
    assert_eq!(e["body"]["messages"][0]["content"], "hi");
    assert_eq!(e["op"], "chat");
}

#[tokio::test]
async fn reset_mid_stream_breaks_the_connection_after_n_chunks() {
    let addr = fake().await;
    let (r, _) = send(
        addr,
        "POST",
        "/s/reset-mid-stream,after=2/v1/chat/completions",
        "",
        STREAM,
        LONG,
    )
    .await;
    assert_eq!(status(&r), 200);
    assert_eq!(r.matches("data: ").count(), 2);
    assert!(!r.contains("[DONE]"));
    // The chunked body never gets its terminating zero-length chunk.
    assert!(!r.ends_with("0\r\n\r\n"));
}

#[tokio::test]
async fn hang_before_first_byte_sends_headers_then_nothing() {
    let addr = fake().await;
    let (r, _) = send(
        addr,
        "POST",
        "/s/hang-before-first-byte/v1/chat/completions",
        "",
        STREAM,
        Duration::from_millis(400),
    )
    .await;
    assert_eq!(status(&r), 200);
    assert_eq!(
        header(&r, "content-type"),
        Some("text/event-stream; charset=utf-8")
    );
    assert!(!r.contains("data:"));
    let (r, _) = send(
        addr,
        "POST",
        "/s/hang/v1/chat/completions",
        "",
        CHAT,
        Duration::from_millis(400),
    )
    .await;
    assert_eq!(r, "");
}

#[tokio::test]
async fn slow_chunks_are_spaced() {
    let addr = fake().await;
    let t0 = std::time::Instant::now();
    let (r, _) = send(
        addr,
        "POST",
        "/s/slow-chunks,interval=30ms,words=4/v1/chat/completions",
        "",
        STREAM,
        LONG,
    )
    .await;
    // role, 4 words, finish, [DONE]: six gaps.
    assert!(
        t0.elapsed() >= Duration::from_millis(180),
        "{:?}",
        t0.elapsed()
    );
    assert!(r.contains("[DONE]"));
}

#[tokio::test]
async fn azure_deployments_need_a_key_and_an_api_version() {
    let addr = fake().await;
    let p = "/s/ok/openai/deployments/dep/chat/completions";
    assert_eq!(
        status(
            &send(
                addr,
                "POST",
                &format!("{p}?api-version=2024-10-21"),
                "",
                CHAT,
                LONG
            )
            .await
            .0
        ),
        401
    );
    assert_eq!(
        status(&send(addr, "POST", p, "api-key: k\r\n", CHAT, LONG).await.0),
        404
    );
    let (r, _) = send(
        addr,
        "POST",
        &format!("{p}?api-version=2024-10-21"),
        "api-key: k\r\n",
        CHAT,
        LONG,
    )
    .await;
    assert_eq!(status(&r), 200);
    assert!(r.contains("prompt_filter_results"));
}

#[tokio::test]
async fn fast_mode_answers_without_recording() {
    let addr = fake().await;
    let (r, _) = send(
        addr,
        "POST",
        "/s/fast/v1/chat/completions",
        "",
        STREAM,
        LONG,
    )
    .await;
    assert!(r.contains("chat.completion.chunk") && r.contains("data: [DONE]"));
    let (r, _) = send(addr, "GET", "/__requests", "", "", LONG).await;
    assert!(!r.contains("/s/fast/"));
}

#[tokio::test]
async fn fast_mode_with_latency_is_a_slow_provider() {
    let addr = fake().await;
    let path = "/s/fast,latency=1s/v1/chat/completions";
    let (r, _) = send(addr, "POST", path, "", CHAT, Duration::from_millis(300)).await;
    assert_eq!(r, "", "nothing before the latency is up");
    let (r, _) = send(addr, "POST", path, "", CHAT, Duration::from_secs(10)).await;
    assert_eq!(status(&r), 200);
    assert!(r.contains("chat.completion"), "{r}");
}

const RESPONSES: &str = r#"{"model":"gpt-4.1","input":"hi","stream":true}"#;

#[tokio::test]
async fn the_responses_api_gets_the_same_scenarios_and_keeps_responses_until_reset() {
    let addr = fake().await;
    let (r, _) = send(
        addr,
        "POST",
        "/s/429,retry-after=1500ms/v1/responses",
        "",
        RESPONSES,
        LONG,
    )
    .await;
    assert_eq!(status(&r), 429);
    assert_eq!(header(&r, "retry-after-ms"), Some("1500"));
    assert!(r.contains("rate_limit_exceeded"));
    let (r, _) = send(addr, "POST", "/s/503/v1/responses", "", RESPONSES, LONG).await;
    assert_eq!(status(&r), 503);

    let (r, _) = send(
        addr,
        "POST",
        "/s/reset-mid-stream,after=4/v1/responses",
        "",
        RESPONSES,
        LONG,
    )
    .await;
    assert_eq!(status(&r), 200);
    assert_eq!(r.matches("event: ").count(), 4);
    assert!(!r.contains("response.completed"));

    let (r, broken) = send(
        addr,
        "POST",
        "/s/hang-before-first-byte/v1/responses",
        "",
        RESPONSES,
        Duration::from_millis(300),
    )
    .await;
    assert_eq!(status(&r), 200);
    assert!(!broken && !r.contains("event: "));

    let (r, _) = send(
        addr,
        "POST",
        "/s/ok,id=chain/v1/responses",
        "",
        r#"{"model":"gpt-4.1","input":"my name is Ada"}"#,
        LONG,
    )
    .await;
    let first: Value = serde_json::from_str(&common::body(&r)).unwrap();
    let next = format!(
        r#"{{"model":"gpt-4.1","input":"name?","previous_response_id":"{}"}}"#,
        first["id"].as_str().unwrap()
    );
    let (r, _) = send(addr, "POST", "/v1/responses", "", &next, LONG).await;
    assert_eq!(status(&r), 200, "{r}");
    let (r, _) = send(
        addr,
        "GET",
        "/__requests?scenario=ok,id=chain",
        "",
        "",
        LONG,
    )
    .await;
    let log: Value = serde_json::from_str(&common::body(&r)).unwrap();
    assert_eq!(log["data"][0]["op"], "responses");
    assert_eq!(log["data"][0]["body"]["input"], "my name is Ada");
    send(addr, "POST", "/__reset", "", "", LONG).await;
    let (r, _) = send(addr, "POST", "/v1/responses", "", &next, LONG).await;
    assert_eq!(status(&r), 400);
    assert!(r.contains("previous_response_not_found"));
}
