//! The Anthropic Messages dialect over real sockets: headers it requires, the message object,
//! the named-event stream with tool use, refusals of invalid requests, and every failure
//! scenario in Anthropic's error format.

mod common;

use std::time::Duration;

use serde_json::{Value, json};

use common::{LONG, body, fake, header, json, post, send, status};

const KEYS: &str = "x-api-key: sk-ant-test\r\nanthropic-version: 2023-06-01\r\n";

fn req(extra: Value) -> String {
    let mut b = json!({"model": "claude-sonnet-4-5-20250929", "max_tokens": 256,
                       "messages": [{"role": "user", "content": "hello claude"}]});
    for (k, v) in extra.as_object().unwrap() {
        b[k] = v.clone();
    }
    b.to_string()
}

/// The named events of a stream, in order.
fn events(resp: &str) -> Vec<(String, Value)> {
    body(resp)
        .split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let (name, data) = e.split_once('\n').unwrap();
            let name = name.strip_prefix("event: ").unwrap().to_string();
            let data = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
            (name, data)
        })
        .collect()
}

fn weather_tool() -> Value {
    json!({"name": "get_weather", "description": "Weather for a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"},
                            "days": {"type": "integer", "minimum": 2}}, "required": ["city", "days"]}})
}

#[tokio::test]
async fn a_message_needs_the_key_and_version_headers() {
    let addr = fake().await;
    let r = post(
        addr,
        "/v1/messages",
        "anthropic-version: 2023-06-01\r\n",
        &req(json!({})),
    )
    .await;
    assert_eq!(status(&r), 401);
    assert_eq!(
        json(&r),
        json!({"type": "error", "error": {"type": "authentication_error",
               "message": "x-api-key header is required"}, "request_id": json(&r)["request_id"]})
    );
    let r = post(addr, "/v1/messages", "x-api-key: k\r\n", &req(json!({}))).await;
    assert_eq!(status(&r), 400);
    assert_eq!(json(&r)["error"]["type"], "invalid_request_error");

    let r = post(addr, "/s/ok/v1/messages", KEYS, &req(json!({}))).await;
    assert_eq!(status(&r), 200);
    assert!(header(&r, "request-id").unwrap().starts_with("req_011C"));
    let m = json(&r);
    assert_eq!(m["type"], "message");
    assert_eq!(m["role"], "assistant");
    assert!(m["id"].as_str().unwrap().starts_with("msg_01"));
    assert_eq!(m["model"], "claude-sonnet-4-5-20250929");
    assert_eq!(
        m["content"],
        json!([{"type": "text", "text": "Hello from the fake provider. You said: hello claude"}])
    );
    assert_eq!(m["stop_reason"], "end_turn");
    assert_eq!(m["stop_sequence"], Value::Null);
    assert_eq!(m["usage"]["output_tokens"], 9);
    assert!(m["usage"]["input_tokens"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn the_stream_has_anthropics_event_sequence() {
    let addr = fake().await;
    let r = post(addr, "/v1/messages", KEYS, &req(json!({"stream": true}))).await;
    assert_eq!(
        header(&r, "content-type"),
        Some("text/event-stream; charset=utf-8")
    );
    let ev = events(&r);
    let names: Vec<&str> = ev.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names[..3],
        ["message_start", "content_block_start", "ping"],
        "{names:?}"
    );
    assert_eq!(
        names[names.len() - 3..],
        ["content_block_stop", "message_delta", "message_stop"]
    );
    for (name, data) in &ev {
        assert_eq!(
            data["type"],
            name.as_str(),
            "the data repeats the event name"
        );
    }
    let start = &ev[0].1["message"];
    assert_eq!(start["content"], json!([]));
    assert_eq!(start["stop_reason"], Value::Null);
    let text: String = ev
        .iter()
        .filter(|(n, _)| n == "content_block_delta")
        .map(|(_, d)| d["delta"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(text, "Hello from the fake provider. You said: hello claude");
    let delta = &ev[ev.len() - 2].1;
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert_eq!(delta["usage"]["output_tokens"], 9);
}

#[tokio::test]
async fn tool_use_streams_as_input_json_deltas_and_the_result_comes_back() {
    let addr = fake().await;
    let r = post(
        addr,
        "/v1/messages",
        KEYS,
        &req(json!({"stream": true, "tools": [weather_tool()]})),
    )
    .await;
    let ev = events(&r);
    // With tool_choice auto, a text block comes first, then the tool_use block.
    let starts: Vec<&Value> = ev
        .iter()
        .filter(|(n, _)| n == "content_block_start")
        .map(|(_, d)| d)
        .collect();
    assert_eq!(starts[0]["content_block"]["type"], "text");
    let tool = &starts[1]["content_block"];
    assert_eq!(tool["type"], "tool_use");
    assert_eq!(tool["name"], "get_weather");
    assert_eq!(tool["input"], json!({}));
    let args: String = ev
        .iter()
        .filter(|(_, d)| d["delta"]["type"] == "input_json_delta")
        .map(|(_, d)| d["delta"]["partial_json"].as_str().unwrap())
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&args).unwrap(),
        json!({"city": "fake", "days": 2})
    );
    assert_eq!(ev[ev.len() - 2].1["delta"]["stop_reason"], "tool_use");

    // A forced tool starts with the call, and the JSON answer has the input as an object.
    let r = post(
        addr,
        "/v1/messages",
        KEYS,
        &req(json!({"tools": [weather_tool()], "tool_choice": {"type": "tool", "name": "get_weather"}})),
    )
    .await;
    let m = json(&r);
    assert_eq!(m["content"].as_array().unwrap().len(), 1);
    let call = &m["content"][0];
    assert_eq!(call["type"], "tool_use");
    assert_eq!(call["input"], json!({"city": "fake", "days": 2}));
    let id = call["id"].as_str().unwrap();
    assert!(id.starts_with("toolu_01"));

    let round_trip = |result_id: &str| {
        req(json!({"tools": [weather_tool()], "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": [call.clone()]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": result_id,
                                          "content": [{"type": "text", "text": "12C and rain"}]}]}]}))
    };
    let r = post(addr, "/v1/messages", KEYS, &round_trip(id)).await;
    assert_eq!(
        json(&r)["content"][0]["text"],
        "The tool returned: 12C and rain"
    );
    let r = post(addr, "/v1/messages", KEYS, &round_trip("toolu_other")).await;
    assert_eq!(status(&r), 400);
    assert!(
        json(&r)["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ids were found without `tool_result` blocks immediately after")
    );
}

#[tokio::test]
async fn requests_the_real_api_refuses_are_refused() {
    let addr = fake().await;
    for (body, says) in [
        (
            req(
                json!({"messages": [{"role": "system", "content": "x"}, {"role": "user", "content": "y"}]}),
            ),
            "Unexpected role \"system\"",
        ),
        (
            json!({"model": "m", "messages": [{"role": "user", "content": "y"}]}).to_string(),
            "max_tokens: Field required",
        ),
        (req(json!({"temperature": 1.5})), "temperature"),
        (
            req(json!({"messages": [{"role": "user", "content": [{"type": "text", "text": ""}]}]})),
            "text content blocks must be non-empty",
        ),
        (
            req(json!({"messages": [{"role": "user", "content": "a"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}]},
                {"role": "user", "content": "never answered"}]})),
            "`tool_use` ids were found without `tool_result` blocks immediately after: toolu_1",
        ),
        (
            req(json!({"messages": [{"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_x", "content": "r"}]}]})),
            "unexpected `tool_use_id` found in `tool_result` blocks: toolu_x",
        ),
    ] {
        let r = post(addr, "/v1/messages", KEYS, &body).await;
        assert_eq!(status(&r), 400, "{body}");
        let e = json(&r);
        assert_eq!(e["type"], "error");
        assert_eq!(e["error"]["type"], "invalid_request_error");
        assert!(
            e["error"]["message"].as_str().unwrap().contains(says),
            "{e}"
        );
    }
}

#[tokio::test]
async fn stop_sequences_max_tokens_and_count_tokens() {
    let addr = fake().await;
    let m = json(
        &post(
            addr,
            "/v1/messages",
            KEYS,
            &req(json!({"stop_sequences": ["fake"]})),
        )
        .await,
    );
    assert_eq!(m["content"][0]["text"], "Hello from the ");
    assert_eq!(
        (&m["stop_reason"], &m["stop_sequence"]),
        (&json!("stop_sequence"), &json!("fake"))
    );
    let m = json(&post(addr, "/v1/messages", KEYS, &req(json!({"max_tokens": 2}))).await);
    assert_eq!(m["content"][0]["text"], "Hello from");
    assert_eq!(m["stop_reason"], "max_tokens");
    let r = post(addr, "/v1/messages/count_tokens", KEYS, &req(json!({}))).await;
    assert!(json(&r)["input_tokens"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn failures_speak_anthropics_error_format() {
    let addr = fake().await;
    let fail = |scenario: &'static str| async move {
        post(
            addr,
            &format!("/s/{scenario}/v1/messages"),
            KEYS,
            &req(json!({})),
        )
        .await
    };
    let r = fail("529").await;
    assert_eq!(status(&r), 529);
    assert_eq!(json(&r)["error"]["type"], "overloaded_error");
    assert_eq!(json(&r)["error"]["message"], "Overloaded");
    let r = fail("429,retry-after=1500ms").await;
    assert_eq!(status(&r), 429);
    assert_eq!(json(&r)["error"]["type"], "rate_limit_error");
    assert_eq!(header(&r, "retry-after"), Some("2"));
    assert!(header(&r, "request-id").is_some());
    let r = fail("401").await;
    assert_eq!(
        (status(&r), json(&r)["error"]["type"].clone()),
        (401, json!("authentication_error"))
    );
    let r = fail("500").await;
    assert_eq!(
        (status(&r), json(&r)["error"]["type"].clone()),
        (500, json!("api_error"))
    );
    let r = fail("context-length").await;
    assert_eq!(status(&r), 400);
    assert!(
        json(&r)["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("prompt is too long: 208310 tokens > 200000 maximum")
    );
    let r = fail("safety").await;
    assert_eq!(status(&r), 200);
    assert_eq!(
        (json(&r)["stop_reason"].clone(), json(&r)["content"].clone()),
        (json!("refusal"), json!([]))
    );
    let r = fail("malformed-json").await;
    assert_eq!(status(&r), 200);
    assert!(serde_json::from_str::<Value>(&body(&r)).is_err());
    let r = fail("fail-first-1-then-ok,with=529").await;
    assert_eq!(status(&r), 529);
    assert_eq!(status(&fail("fail-first-1-then-ok,with=529").await), 200);
}

#[tokio::test]
async fn streams_break_and_refuse_mid_way() {
    let addr = fake().await;
    let (r, _) = send(
        addr,
        "POST",
        "/s/reset-mid-stream,after=3/v1/messages",
        KEYS,
        &req(json!({"stream": true})),
        LONG,
    )
    .await;
    assert_eq!(r.matches("event: ").count(), 3);
    assert!(!r.contains("message_stop"));
    let r = post(
        addr,
        "/s/safety,block=answer/v1/messages",
        KEYS,
        &req(json!({"stream": true})),
    )
    .await;
    let ev = events(&r);
    assert!(ev.iter().any(|(n, _)| n == "content_block_delta"));
    assert_eq!(ev[ev.len() - 2].1["delta"]["stop_reason"], "refusal");
    let t0 = std::time::Instant::now();
    let r = post(
        addr,
        "/s/slow-chunks,interval=20ms,words=3/v1/messages",
        KEYS,
        &req(json!({"stream": true})),
    )
    .await;
    assert!(
        t0.elapsed() >= Duration::from_millis(20 * 8),
        "{:?}",
        t0.elapsed()
    );
    assert!(r.contains("event: message_stop"));
    let r = post(
        addr,
        "/s/fast/v1/messages",
        KEYS,
        &req(json!({"stream": true})),
    )
    .await;
    assert_eq!(events(&r).last().unwrap().0, "message_stop");
}
