//! `POST /v1/responses` passed through natively to OpenAI backends, in process: the client's body
//! reaches `{baseUrl}/responses` unchanged but for the model and token limit, answers and streams
//! come back byte for byte with usage read on the side, fallback across formats gives one valid
//! Responses answer, built-in tools and unknown `previous_response_id`s go only to backends that
//! speak the API, and ids this sidecar stored keep being translated.

mod common;

use std::time::Duration;

use serde_json::{Value, json};

use common::*;

const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/responses_native"
);

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{FIXTURES}/{name}")).expect("fixture")
}

/// The fixture's events, one part each (the upstream sends them one by one).
fn events_of(sse: &str) -> Vec<Part> {
    sse.split_inclusive("\n\n")
        .map(|e| Part::Data(e.to_string()))
        .collect()
}

const GPT: &str = "{name: gpt, provider: openai, model: gpt-4.1-2025-04-14, secretRef: {name: openai, key: api-key}, prices: {input: \"2.50\", cachedInput: \"1.25\", output: \"10.00\"}}";
const CLAUDE: &str = "{name: claude, provider: anthropic, model: claude-sonnet-4-5-20250929, secretRef: {name: openai, key: api-key}}";
const COMPAT: &str = "{name: compat, provider: openaiCompatible, model: llama-3.3-70b, baseUrl: \"http://vllm.local/v1\"}";

/// A route of `backends` (the first takes all traffic, the rest are fallbacks in order), one
/// attempt per backend.
fn routes(backends: &[&str]) -> String {
    let list: String = backends.iter().map(|b| format!("  - {b}\n")).collect();
    let names: Vec<String> = backends
        .iter()
        .map(|b| {
            b.split("name: ")
                .nth(1)
                .and_then(|r| r.split(',').next())
                .unwrap()
                .to_string()
        })
        .collect();
    route(
        "chat",
        &format!(
            "backends:\n{list}fallbacks: [{}]\nretry: {{attempts: 1}}\n",
            names[1..].join(", ")
        ),
    )
}

fn post_responses(body: Value) -> Call {
    post_to("/v1/responses", body)
}

/// Anthropic's answer to a translated request.
fn claude_message(text: &str) -> Reply {
    Reply::json(
        200,
        json!({"id": "msg_01", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929",
               "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": null,
               "usage": {"input_tokens": 10, "output_tokens": 4}}),
    )
}

/// Anthropic's event stream saying `text`.
fn claude_stream(text: &str) -> Reply {
    let ev = |name: &str, data: Value| Part::Data(format!("event: {name}\ndata: {data}\n\n"));
    Reply::sse(vec![
        ev(
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_01", "type": "message", "role": "assistant",
                   "model": "claude-sonnet-4-5-20250929", "content": [], "stop_reason": null, "stop_sequence": null,
                   "usage": {"input_tokens": 10, "output_tokens": 1}}}),
        ),
        ev(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}),
        ),
        ev(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ),
        ev(
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": 4}}),
        ),
        ev("message_stop", json!({"type": "message_stop"})),
    ])
}

/// The typed events of a Responses stream, checking the SSE framing and that sequence numbers
/// count up from 0.
fn typed_events(text: &str) -> Vec<Value> {
    let evs: Vec<Value> = text
        .split_terminator("\n\n")
        .map(|e| {
            let name = e.lines().find_map(|l| l.strip_prefix("event: "));
            let data = e.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
            let v: Value = serde_json::from_str(data).unwrap();
            assert_eq!(name, v["type"].as_str(), "{e}");
            v
        })
        .collect();
    for (i, e) in evs.iter().enumerate() {
        assert_eq!(e["sequence_number"], i, "{e}");
    }
    evs
}

fn types(evs: &[Value]) -> Vec<&str> {
    evs.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

fn rich_request() -> Value {
    json!({
        "model": "chat",
        "instructions": "Be brief.",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]},
                  {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAAA..."}],
        "store": false,
        "include": ["reasoning.encrypted_content", "web_search_call.action.sources"],
        "reasoning": {"effort": "low", "summary": "auto"},
        "text": {"verbosity": "low"},
        "prompt_cache_key": "user-42",
        "metadata": {"team": "a"},
        "max_output_tokens": 500,
    })
}

// ---------------------------------------------------------------------------------------------
// Passthrough

#[tokio::test(start_paused = true)]
async fn a_response_passes_through_unchanged_with_usage_priced_on_the_side() {
    let (app, up) = app(&routes(&[GPT]));
    let answer = fixture("resp_text.response.json");
    up.push(
        "gpt",
        Reply::json(200, serde_json::from_str(&answer).unwrap()),
    );
    let r = post_responses(rich_request()).send(&app).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // The upstream's bytes (the scripted reply re-serialises the fixture).
    let upstream: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(r.text(), upstream.to_string());

    let seen = &up.seen("gpt")[0];
    assert_eq!(seen.url, "https://api.openai.com/v1/responses");
    assert_eq!(
        seen.headers.get("authorization").unwrap(),
        &format!("Bearer {KEY}")
    );
    let mut expect = rich_request();
    expect["model"] = json!("gpt-4.1-2025-04-14");
    assert_eq!(seen.body, expect, "only the model changes");

    // 176 uncached x $2.50 + 1,024 cached x $1.25 + 37 out x $10, per 1M.
    assert_eq!(r.header("x-llmesh-cost-usd"), Some("0.002090"));
    assert_eq!(r.backend(), "gpt");
    assert_eq!(
        metric(
            &app,
            "llmesh_tokens_total",
            &[("type", "cached_input"), ("estimated", "false")]
        ),
        1024.0
    );
    assert_eq!(
        metric(&app, "llmesh_tokens_total", &[("type", "output")]),
        37.0
    );
    // OpenAI keeps native responses; this sidecar's store does not.
    let id = upstream["id"].as_str().unwrap();
    assert_eq!(
        get(&format!("/v1/responses/{id}")).send(&app).await.status,
        404
    );
}

#[tokio::test(start_paused = true)]
async fn route_limits_clamp_max_output_tokens() {
    let spec = format!("backends:\n  - {GPT}\nlimits: {{maxTokens: 100, defaultMaxTokens: 50}}\n");
    let (app, up) = app(&route("chat", &spec));
    up.always(
        "gpt",
        Reply::json(
            200,
            serde_json::from_str(&fixture("resp_text.response.json")).unwrap(),
        ),
    );
    let mut body = rich_request();
    body["max_output_tokens"] = json!(5000);
    post_responses(body.clone()).send(&app).await;
    assert_eq!(up.last_body("gpt")["max_output_tokens"], 100);
    body.as_object_mut().unwrap().remove("max_output_tokens");
    post_responses(body.clone()).send(&app).await;
    assert_eq!(up.last_body("gpt")["max_output_tokens"], 50);
    body["max_output_tokens"] = json!(20);
    post_responses(body).send(&app).await;
    assert_eq!(up.last_body("gpt")["max_output_tokens"], 20);
}

#[tokio::test(start_paused = true)]
async fn a_stream_passes_through_event_by_event_with_usage_from_response_completed() {
    let (app, up) = app(&routes(&[GPT]));
    let sse = fixture("stream_text.sse");
    up.push("gpt", Reply::sse(events_of(&sse)));
    let mut body = rich_request();
    body["stream"] = json!(true);
    let r = post_responses(body).send(&app).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    assert_eq!(r.text(), sse, "byte for byte");
    assert_eq!(up.last_body("gpt")["stream"], true);
    assert_eq!(
        metric(
            &app,
            "llmesh_tokens_total",
            &[("type", "cached_input"), ("estimated", "false")]
        ),
        1024.0
    );
    assert_eq!(
        metric(
            &app,
            "llmesh_tokens_total",
            &[("type", "output"), ("estimated", "false")]
        ),
        37.0
    );
    assert_eq!(metric(&app, "llmesh_stream_errors_total", &[]), 0.0);
}

#[tokio::test(start_paused = true)]
async fn a_stream_is_not_buffered() {
    let (app, up) = app(&routes(&[GPT]));
    let sse = fixture("stream_text.sse");
    let mut parts = events_of(&sse);
    parts.truncate(5); // created, in_progress, item added, part added, first delta
    parts.push(Part::Hang);
    up.push("gpt", Reply::sse(parts));
    let resp = post_responses(json!({"model": "chat", "input": "hi", "stream": true}))
        .start(&app)
        .await;
    let mut body = resp.into_body();
    let mut got = String::new();
    while !got.contains("response.output_text.delta") {
        let frame = tokio::time::timeout(Duration::from_secs(5), next_frame(&mut body))
            .await
            .expect("events arrive while the upstream is still generating")
            .unwrap()
            .unwrap();
        got.push_str(&frame);
    }
    assert_eq!(got, sse.split_inclusive("\n\n").take(5).collect::<String>());
}

#[tokio::test(start_paused = true)]
async fn a_stream_without_a_terminal_event_is_reported_and_counted_as_broken() {
    let (app, up) = app(&routes(&[GPT]));
    let sse = fixture("stream_cut.sse");
    up.push("gpt", Reply::sse(events_of(&sse)));
    let r = post_responses(json!({"model": "chat", "input": "hi", "stream": true}))
        .send(&app)
        .await;
    let text = r.text();
    assert!(text.starts_with(&sse), "the upstream's events come first");
    let evs = typed_events(&text);
    let tail = &types(&evs)[evs.len() - 2..];
    assert_eq!(tail, ["error", "response.failed"]);
    assert!(
        evs[evs.len() - 2]["message"]
            .as_str()
            .unwrap()
            .contains("before response.completed")
    );
    assert_eq!(evs[evs.len() - 2]["error"]["code"], "server_error");
    // response.failed carries the response OpenAI announced in response.created.
    assert_eq!(
        evs[evs.len() - 1]["response"]["id"],
        evs[0]["response"]["id"]
    );
    assert_eq!(evs[evs.len() - 1]["response"]["status"], "failed");
    assert_eq!(
        metric(
            &app,
            "llmesh_stream_errors_total",
            &[("reason", "stream_cut")]
        ),
        1.0
    );
    assert!(metric(&app, "llmesh_tokens_total", &[("estimated", "true")]) > 0.0);
}

#[tokio::test(start_paused = true)]
async fn a_failure_reported_in_band_reaches_the_client_once_and_is_counted() {
    let (app, up) = app(&routes(&[GPT]));
    for (case, reason) in [
        ("stream_failed_late.sse", "response_failed"),
        ("stream_error_late.sse", "stream_error"),
    ] {
        let sse = fixture(case);
        up.push("gpt", Reply::sse(events_of(&sse)));
        let r = post_responses(json!({"model": "chat", "input": "hi", "stream": true}))
            .send(&app)
            .await;
        assert_eq!(r.text(), sse, "{case}: nothing added");
        assert_eq!(
            metric(&app, "llmesh_stream_errors_total", &[("reason", reason)]),
            1.0,
            "{case}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn upstream_client_errors_come_back_as_openai_wrote_them() {
    let (app, up) = app(&routes(&[GPT, CLAUDE]));
    let e = json!({"error": {"message": "Previous response with id 'resp_gone' not found.",
                   "type": "invalid_request_error", "param": "previous_response_id",
                   "code": "previous_response_not_found"}});
    up.push("gpt", Reply::json(400, e.clone()));
    let r = post_responses(
        json!({"model": "chat", "input": "hi", "previous_response_id": "resp_gone"}),
    )
    .send(&app)
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json(), e);
    assert_eq!(up.count("claude"), 0, "a client error does not fall back");
}

// ---------------------------------------------------------------------------------------------
// Fallback across formats

#[tokio::test(start_paused = true)]
async fn openai_native_falls_back_to_anthropic_translated() {
    let (app, up) = app(&routes(&[GPT, CLAUDE]));
    up.push("gpt", Reply::error(503, "server_error", "overloaded"));
    up.push("claude", claude_message("Hi from Claude."));
    let r = post_responses(json!({"model": "chat", "input": "hi"}))
        .send(&app)
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.backend(), "claude");
    assert_eq!(r.header("x-llmesh-fallback-from"), Some("gpt"));
    let v = r.json();
    assert_eq!(v["object"], "response");
    assert_eq!(v["status"], "completed");
    assert_eq!(v["output"][0]["content"][0]["text"], "Hi from Claude.");
    assert!(up.seen("claude")[0].url.ends_with("/messages"));

    // Streamed: OpenAI fails before any output, Anthropic's answer is translated into events.
    up.push(
        "gpt",
        Reply::sse(events_of(&fixture("stream_failed_early.sse"))),
    );
    up.push("claude", claude_stream("Hi from Claude."));
    let r = post_responses(json!({"model": "chat", "input": "hi", "stream": true}))
        .send(&app)
        .await;
    assert_eq!(r.backend(), "claude");
    let evs = typed_events(&r.text());
    assert_eq!(types(&evs)[0], "response.created");
    assert_eq!(*types(&evs).last().unwrap(), "response.completed");
    assert!(
        !r.text().contains("resp_67ccd2bed1ec"),
        "nothing of the failed attempt reached the client"
    );
    let text: String = evs
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    assert_eq!(text, "Hi from Claude.");
}

#[tokio::test(start_paused = true)]
async fn anthropic_translated_falls_back_to_openai_native() {
    let (app, up) = app(&routes(&[CLAUDE, GPT]));
    let overloaded =
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}});
    up.push("claude", Reply::json(529, overloaded.clone()));
    let answer = fixture("resp_text.response.json");
    up.push(
        "gpt",
        Reply::json(200, serde_json::from_str(&answer).unwrap()),
    );
    let r = post_responses(json!({"model": "chat", "input": "hi", "store": false}))
        .send(&app)
        .await;
    assert_eq!(r.backend(), "gpt");
    assert_eq!(
        r.json(),
        serde_json::from_str::<Value>(&answer).unwrap(),
        "OpenAI's Response, unchanged"
    );
    assert_eq!(
        up.last_body("gpt"),
        json!({"model": "gpt-4.1-2025-04-14", "input": "hi", "store": false})
    );

    up.push("claude", Reply::json(529, overloaded));
    let sse = fixture("stream_function_call.sse");
    up.push("gpt", Reply::sse(events_of(&sse)));
    let r = post_responses(json!({"model": "chat", "input": "weather?", "stream": true}))
        .send(&app)
        .await;
    assert_eq!(r.backend(), "gpt");
    assert_eq!(r.text(), sse);
}

// ---------------------------------------------------------------------------------------------
// Built-in tools

fn web_search(stream: bool) -> Value {
    json!({"model": "chat", "input": "positive news today?", "stream": stream,
           "tools": [{"type": "web_search", "search_context_size": "low"}],
           "include": ["web_search_call.action.sources"]})
}

#[tokio::test(start_paused = true)]
async fn built_in_tools_go_only_to_native_backends_never_to_the_others_first() {
    // Anthropic takes all traffic; OpenAI is the fallback.
    let (app, up) = app(&routes(&[CLAUDE, COMPAT, GPT]));
    let answer = fixture("resp_web_search.response.json");
    up.push(
        "gpt",
        Reply::json(200, serde_json::from_str(&answer).unwrap()),
    );
    let r = post_responses(web_search(false)).send(&app).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.backend(), "gpt");
    assert_eq!(r.header("x-llmesh-fallback-from"), None);
    assert_eq!(r.json()["output"][0]["type"], "web_search_call");
    let mut sent = web_search(false);
    sent["model"] = json!("gpt-4.1-2025-04-14");
    assert_eq!(up.last_body("gpt"), sent);

    let sse = fixture("stream_web_search.sse");
    up.push("gpt", Reply::sse(events_of(&sse)));
    let r = post_responses(web_search(true)).send(&app).await;
    assert_eq!(r.text(), sse);
    assert_eq!((up.count("claude"), up.count("compat")), (0, 0));
    assert_eq!(metric(&app, "llmesh_fallbacks_total", &[]), 0.0);
}

#[tokio::test(start_paused = true)]
async fn when_the_native_backend_fails_its_error_is_what_the_client_sees() {
    let (app, up) = app(&routes(&[GPT, CLAUDE]));
    up.push(
        "gpt",
        Reply::error(429, "rate_limit_exceeded", "Rate limit reached").header("retry-after", "7"),
    );
    let r = post_responses(web_search(false)).send(&app).await;
    assert_eq!(r.status, 429);
    assert!(r.error_message().contains("Rate limit reached"));
    assert_eq!(up.count("claude"), 0, "Anthropic cannot run web_search");
}

#[tokio::test(start_paused = true)]
async fn a_route_without_a_native_backend_refuses_built_in_tools_clearly() {
    let (app, up) = app(&routes(&[CLAUDE, COMPAT]));
    let r = post_responses(web_search(false)).send(&app).await;
    assert_eq!(r.status, 400);
    let e = r.json()["error"].clone();
    assert_eq!(e["param"], "tools[0]");
    assert_eq!(e["code"], "unsupported_value");
    let m = e["message"].as_str().unwrap();
    assert!(m.contains("`web_search`"), "{m}");
    assert!(
        m.contains("Route `chat` has no backend that speaks the Responses API natively"),
        "{m}"
    );
    assert_eq!((up.count("claude"), up.count("compat")), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_refused_built_in_tool_does_not_count_against_the_rate_limit() {
    let spec = format!("backends:\n  - {CLAUDE}\nlimits: {{requestsPerMinute: 1}}\n");
    let (app, up) = app(&route("chat", &spec));
    for _ in 0..2 {
        assert_eq!(
            post_responses(web_search(false)).send(&app).await.status,
            400
        );
    }
    up.push("claude", claude_message("still here"));
    let r = post_responses(json!({"model": "chat", "input": "hi"}))
        .send(&app)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test(start_paused = true)]
async fn native_only_requests_still_get_route_limits() {
    let spec = format!("backends:\n  - {GPT}\nlimits: {{maxTokens: 64, maxInputTokens: 20}}\n");
    let (app, up) = app(&route("chat", &spec));
    up.always(
        "gpt",
        Reply::json(
            200,
            serde_json::from_str(&fixture("resp_web_search.response.json")).unwrap(),
        ),
    );
    let mut body = web_search(false);
    body["max_output_tokens"] = json!(4000);
    assert_eq!(post_responses(body.clone()).send(&app).await.status, 200);
    assert_eq!(up.last_body("gpt")["max_output_tokens"], 64);
    body["input"] = json!("news ".repeat(100));
    let r = post_responses(body).send(&app).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], "input_tokens_exceeded");
    assert_eq!(up.count("gpt"), 1);
}

// ---------------------------------------------------------------------------------------------
// previous_response_id and server-side state

#[tokio::test(start_paused = true)]
async fn an_id_this_sidecar_stored_is_expanded_and_translated_even_for_openai() {
    let (app, up) = app(&routes(&[CLAUDE, GPT]));
    up.push("claude", claude_message("Nice to meet you, Ada."));
    let first = post_responses(json!({"model": "chat", "input": "my name is Ada"}))
        .send(&app)
        .await;
    assert_eq!(first.backend(), "claude");
    let id = first.json()["id"].as_str().unwrap().to_string();

    // Anthropic is down: OpenAI answers, through chat completions, with the history expanded.
    up.push(
        "claude",
        Reply::json(
            529,
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
        ),
    );
    up.push("gpt", Reply::ok("Your name is Ada.", 30, 5));
    let r = post_responses(
        json!({"model": "chat", "input": "what is my name?", "previous_response_id": id}),
    )
    .send(&app)
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.backend(), "gpt");
    let v = r.json();
    assert_eq!(v["previous_response_id"], json!(id));
    assert_eq!(v["output"][0]["content"][0]["text"], "Your name is Ada.");
    let seen = &up.seen("gpt")[0];
    assert!(seen.url.ends_with("/chat/completions"), "{}", seen.url);
    let roles: Vec<&str> = seen.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["user", "assistant", "user"]);
    assert!(seen.body.get("previous_response_id").is_none());
}

#[tokio::test(start_paused = true)]
async fn an_unknown_id_goes_natively_to_openai_which_resolves_it() {
    let (app, up) = app(&routes(&[CLAUDE, GPT]));
    let answer = fixture("resp_text.response.json");
    up.push(
        "gpt",
        Reply::json(200, serde_json::from_str(&answer).unwrap()),
    );
    let body = json!({"model": "chat", "input": "and then?",
                      "previous_response_id": "resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b",
                      "conversation": null, "store": true});
    let r = post_responses(body.clone()).send(&app).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.backend(), "gpt");
    let mut sent = body;
    sent["model"] = json!("gpt-4.1-2025-04-14");
    assert_eq!(up.last_body("gpt"), sent);
    assert_eq!(up.count("claude"), 0);

    // OpenAI's Conversations API state passes through the same way.
    up.push(
        "gpt",
        Reply::json(200, serde_json::from_str(&answer).unwrap()),
    );
    let r = post_responses(json!({"model": "chat", "input": "hi", "conversation": "conv_689667905b048191b4740501625afd940c7533ace33a2dab"}))
        .send(&app)
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        up.last_body("gpt")["conversation"],
        "conv_689667905b048191b4740501625afd940c7533ace33a2dab"
    );
}

#[tokio::test(start_paused = true)]
async fn references_to_items_only_openai_has_pass_through() {
    let (app, up) = app(&routes(&[CLAUDE, GPT]));
    up.push(
        "gpt",
        Reply::json(
            200,
            serde_json::from_str(&fixture("resp_text.response.json")).unwrap(),
        ),
    );
    let body = json!({"model": "chat", "input": [
        {"type": "item_reference", "id": "msg_67ccd2bf17f0819081ff3bb2cf6508e60bb6a6b452d3795b"},
        {"type": "web_search_call", "id": "ws_1", "status": "completed", "action": {"type": "search", "query": "q"}},
        {"role": "user", "content": "go on"}]});
    let r = post_responses(body.clone()).send(&app).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.last_body("gpt")["input"], body["input"]);
    assert_eq!(up.count("claude"), 0);
}

#[tokio::test(start_paused = true)]
async fn an_unknown_id_on_a_route_without_openai_is_the_clear_error() {
    let (app, up) = app(&routes(&[CLAUDE, COMPAT]));
    let r = post_responses(
        json!({"model": "chat", "input": "x", "previous_response_id": "resp_unknown"}),
    )
    .send(&app)
    .await;
    assert_eq!(r.status, 400);
    let e = r.json()["error"].clone();
    assert_eq!(e["param"], "previous_response_id");
    assert_eq!(e["code"], "previous_response_not_found");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("'resp_unknown' not found")
    );
    assert_eq!((up.count("claude"), up.count("compat")), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn background_stays_refused_even_with_an_openai_backend() {
    let (app, up) = app(&routes(&[GPT]));
    let r = post_responses(json!({"model": "chat", "input": "x", "background": true}))
        .send(&app)
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["param"], "background");
    assert_eq!(up.count("gpt"), 0);
}

#[tokio::test(start_paused = true)]
async fn other_openai_compatible_providers_stay_translated() {
    let (app, up) = app(&routes(&[COMPAT]));
    up.push("compat", Reply::ok("hello", 5, 1));
    let r = post_responses(json!({"model": "chat", "input": "hi"}))
        .send(&app)
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["object"], "response");
    assert_eq!(
        up.seen("compat")[0].url,
        "http://vllm.local/v1/chat/completions"
    );
}
