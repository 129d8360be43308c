//! `POST /v1/messages` end to end in process: `App` + `handler::handle`, with the built-in mock
//! provider and with a scripted transport that records what went upstream and answers what a
//! test says, so Anthropic clients get Anthropic's wire format with routing, fallbacks, cost and
//! metrics working as they do on the OpenAI endpoints.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use serde_json::{Value, json};

use llmesh_api::manifest::{self, LocalSecrets};
use llmesh_api::money::format_usd;
use llmesh_sidecar::App;
use llmesh_sidecar::handler;
use llmesh_sidecar::providers::Usage;
use llmesh_sidecar::transport::{
    BoxError, ResponseFuture, Transport, TransportFactory, UpstreamBody,
};

const MOCK_ROUTES: &str = r#"
apiVersion: llmesh.io/v1alpha1
kind: LLMRoute
metadata: {name: chat}
spec:
  backends:
    - name: primary
      provider: mock
      model: gpt-4o-mini-2024-07-18
      mock: {outputTokens: 6, reply: "Paris is the capital of France"}
---
apiVersion: llmesh.io/v1alpha1
kind: LLMRoute
metadata: {name: flaky}
spec:
  backends:
    - name: first
      provider: mock
      model: gpt-4o-mini-2024-07-18
      weight: 1
      mock: {failure: {status: 503}}
    - name: second
      provider: mock
      model: gpt-4.1-nano-2025-04-14
      weight: 0
      mock: {outputTokens: 3, reply: "served by second"}
  fallbacks: [second]
  retry: {attempts: 1}
---
apiVersion: llmesh.io/v1alpha1
kind: LLMRoute
metadata: {name: down}
spec:
  backends:
    - name: only
      provider: mock
      model: gpt-4o-mini-2024-07-18
      mock: {failure: {status: 503}}
  retry: {attempts: 1}
"#;

const SCRIPTED_ROUTES: &str = r#"
apiVersion: llmesh.io/v1alpha1
kind: LLMRoute
metadata: {name: local}
spec:
  backends:
    - name: vllm
      provider: vllm
      model: meta-llama/Llama-3.1-8B-Instruct
      baseUrl: http://vllm.test/v1
      prices: {input: "1.00", output: "2.00"}
  retry: {attempts: 1}
"#;

fn app_with(routes: &str, transports: Option<TransportFactory>) -> Arc<App> {
    let docs = manifest::parse("test.yaml", routes, false).expect("routes parse");
    let secrets = LocalSecrets::new(&[], std::iter::empty());
    let (snapshot, _) = manifest::compile("test.yaml", &docs, &secrets).expect("routes compile");
    let mut b = App::builder();
    if let Some(t) = transports {
        b = b.transports(t);
    }
    let app = b.build();
    app.apply(&snapshot);
    app
}

struct Answer {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    fn text(&self) -> String {
        String::from_utf8(self.body.to_vec()).unwrap()
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

async fn post(app: &Arc<App>, path: &str, body: &Value) -> Answer {
    let req = Request::post(path)
        .header("content-type", "application/json")
        .header("anthropic-version", "2023-06-01")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let resp = handler::handle(app.clone(), req).await;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body reads").to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// (event name, data) pairs of an SSE body; each `event:` line must match its data's `type`.
fn events(sse: &str) -> Vec<(String, Value)> {
    sse.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let mut name = None;
            let mut data = None;
            for line in e.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = Some(n.to_string());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data = Some(serde_json::from_str::<Value>(d).unwrap());
                }
            }
            let (name, data) = (name.expect("event line"), data.expect("data line"));
            assert_eq!(data["type"], name.as_str());
            (name, data)
        })
        .collect()
}

fn names(evs: &[(String, Value)]) -> Vec<&str> {
    evs.iter().map(|(n, _)| n.as_str()).collect()
}

fn metric(app: &App, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = String::from_utf8(app.metrics.render()).unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

fn hello(model: &str) -> Value {
    json!({"model": model, "max_tokens": 256,
           "messages": [{"role": "user", "content": "What is the capital of France?"}]})
}

#[tokio::test]
async fn answers_a_message_with_cost_and_metrics() {
    let app = app_with(MOCK_ROUTES, None);
    let r = post(&app, "/v1/messages", &hello("chat")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let v = r.json();
    let rid = r.header("x-request-id").unwrap();
    let expected_id = format!(
        "msg_{}",
        rid.chars()
            .filter(char::is_ascii_alphanumeric)
            .collect::<String>()
    );
    assert_eq!(v["id"], expected_id.as_str());
    assert_eq!(v["type"], "message");
    assert_eq!(v["role"], "assistant");
    assert_eq!(v["model"], "gpt-4o-mini-2024-07-18");
    assert_eq!(
        v["content"],
        json!([{"type": "text", "text": "Paris is the capital of France"}])
    );
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(v["stop_sequence"], Value::Null);
    let input = v["usage"]["input_tokens"].as_u64().unwrap();
    assert!(input > 0);
    assert_eq!(v["usage"]["output_tokens"], 6);
    assert_eq!(v["usage"]["cache_read_input_tokens"], 0);
    assert_eq!(r.header("x-llmesh-route"), Some("chat"));
    assert_eq!(r.header("x-llmesh-backend"), Some("primary"));

    // Cost: the mock's reported usage priced on the backend, in the header and the counter.
    let rt = app.runtime().unwrap();
    let prices = &rt.routes[0].backends[0].spec.prices;
    let cost = Usage {
        prompt: input,
        output: 6,
        ..Usage::default()
    }
    .cost(prices);
    assert!(cost > 0);
    assert_eq!(
        r.header("x-llmesh-cost-usd"),
        Some(format_usd(cost).as_str())
    );
    let chat = [("route", "chat"), ("backend", "primary")];
    assert_eq!(
        metric(&app, "llmesh_cost_microdollars_total", &chat),
        cost as f64
    );
    let ok = [("route", "chat"), ("status_class", "2xx")];
    assert_eq!(metric(&app, "llmesh_requests_total", &ok), 1.0);
    let out = [
        ("route", "chat"),
        ("type", "output"),
        ("estimated", "false"),
    ];
    assert_eq!(metric(&app, "llmesh_tokens_total", &out), 6.0);
}

#[tokio::test]
async fn serves_the_path_without_v1_too() {
    let app = app_with(MOCK_ROUTES, None);
    let r = post(&app, "/messages", &hello("chat")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        r.json()["content"][0]["text"],
        "Paris is the capital of France"
    );
}

#[tokio::test]
async fn streams_anthropic_events() {
    let app = app_with(MOCK_ROUTES, None);
    let mut req = hello("chat");
    req["stream"] = json!(true);
    let r = post(&app, "/v1/messages", &req).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let evs = events(&r.text());
    let n = names(&evs);
    assert_eq!(
        &n[..4],
        [
            "message_start",
            "ping",
            "content_block_start",
            "content_block_delta"
        ]
    );
    assert_eq!(
        &n[n.len() - 3..],
        ["content_block_stop", "message_delta", "message_stop"]
    );
    let start = &evs[0].1["message"];
    assert_eq!(start["content"], json!([]));
    assert_eq!(start["stop_reason"], Value::Null);
    let estimate = start["usage"]["input_tokens"].as_u64().unwrap();
    assert!(estimate > 0);
    assert_eq!(
        evs[2].1["content_block"],
        json!({"type": "text", "text": ""})
    );
    let text: String = evs
        .iter()
        .filter(|(n, _)| n == "content_block_delta")
        .map(|(_, d)| {
            assert_eq!(d["index"], 0);
            assert_eq!(d["delta"]["type"], "text_delta");
            d["delta"]["text"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(text, "Paris is the capital of France");
    let delta = &evs[evs.len() - 2].1;
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert_eq!(delta["usage"]["output_tokens"], 6);
    // The real count from the usage chunk; the mock counts with the same estimator.
    assert_eq!(delta["usage"]["input_tokens"], estimate);

    let ok = [("route", "chat"), ("status_class", "2xx")];
    assert_eq!(metric(&app, "llmesh_requests_total", &ok), 1.0);
    let out = [
        ("route", "chat"),
        ("type", "output"),
        ("estimated", "false"),
    ];
    assert_eq!(metric(&app, "llmesh_tokens_total", &out), 6.0);
    assert!(metric(&app, "llmesh_cost_microdollars_total", &[("route", "chat")]) > 0.0);
}

fn weather_tools() -> Value {
    json!([{"name": "get_weather", "description": "Current weather",
            "input_schema": {"type": "object", "properties": {
                "location": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
             "required": ["location"]}}])
}

#[tokio::test]
async fn tool_use_round_trip_through_the_mock() {
    let app = app_with(MOCK_ROUTES, None);
    let question = json!({"role": "user", "content": "Weather in Paris?"});
    let req = json!({"model": "chat", "max_tokens": 256, "tools": weather_tools(),
                     "messages": [question]});
    let r = post(&app, "/v1/messages", &req).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let v = r.json();
    assert_eq!(v["stop_reason"], "tool_use");
    let call = &v["content"][0];
    assert_eq!(call["type"], "tool_use");
    assert_eq!(call["id"], "toolu_call_mock_0");
    assert_eq!(call["name"], "get_weather");
    assert_eq!(
        call["input"],
        json!({"location": "mock", "unit": "celsius"})
    );

    // The client runs the tool and sends the result back with the id it was given.
    let follow = json!({"model": "chat", "max_tokens": 256, "tools": weather_tools(),
        "messages": [question, {"role": "assistant", "content": v["content"]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call["id"],
                                          "content": "15 degrees"}]}]});
    let r = post(&app, "/v1/messages", &follow).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let v = r.json();
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(v["content"][0]["text"], "The tool returned: 15 degrees");
}

#[tokio::test]
async fn streams_a_tool_call_as_input_json_deltas() {
    let app = app_with(MOCK_ROUTES, None);
    let req = json!({"model": "chat", "max_tokens": 256, "stream": true,
                     "tools": weather_tools(), "tool_choice": {"type": "any"},
                     "messages": [{"role": "user", "content": "Weather in Paris?"}]});
    let r = post(&app, "/v1/messages", &req).await;
    assert_eq!(r.status, StatusCode::OK);
    let evs = events(&r.text());
    let start = evs
        .iter()
        .find(|(n, _)| n == "content_block_start")
        .unwrap();
    assert_eq!(
        start.1["content_block"],
        json!({"type": "tool_use", "id": "toolu_call_mock_0", "name": "get_weather", "input": {}})
    );
    let partial: String = evs
        .iter()
        .filter(|(n, _)| n == "content_block_delta")
        .map(|(_, d)| {
            assert_eq!(d["delta"]["type"], "input_json_delta");
            d["delta"]["partial_json"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&partial).unwrap(),
        json!({"location": "mock", "unit": "celsius"})
    );
    let delta = evs.iter().find(|(n, _)| n == "message_delta").unwrap();
    assert_eq!(delta.1["delta"]["stop_reason"], "tool_use");
    assert_eq!(names(&evs).last(), Some(&"message_stop"));
}

#[tokio::test]
async fn structured_output_reaches_the_backend_as_response_format() {
    let app = app_with(MOCK_ROUTES, None);
    let req = json!({"model": "chat", "max_tokens": 256,
        "output_config": {"format": {"type": "json_schema", "schema": {"type": "object",
            "properties": {"city": {"type": "string"}}, "required": ["city"],
            "additionalProperties": false}}},
        "messages": [{"role": "user", "content": "Which city?"}]});
    let r = post(&app, "/v1/messages", &req).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let text = r.json()["content"][0]["text"].as_str().unwrap().to_string();
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap(),
        json!({"city": "mock"})
    );
}

#[tokio::test]
async fn errors_are_anthropic_shaped() {
    let app = app_with(MOCK_ROUTES, None);
    let r = post(&app, "/v1/messages", &hello("nope")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let v = r.json();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "not_found_error");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("`nope`"),
        "{v}"
    );

    let mut req = hello("chat");
    req.as_object_mut().unwrap().remove("max_tokens");
    let r = post(&app, "/v1/messages", &req).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let v = r.json();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("llmesh: max_tokens: Field required"),
        "{v}"
    );

    let pdf = json!({"model": "chat", "max_tokens": 10, "messages": [{"role": "user", "content": [
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"}}]}]});
    let r = post(&app, "/v1/messages", &pdf).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("PDF")
    );

    let r = post(&app, "/v1/messages", &json!(["not", "an", "object"])).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");

    // Every backend failed: a 502, Anthropic's `api_error`, naming what each backend said.
    let r = post(&app, "/v1/messages", &hello("down")).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    let v = r.json();
    assert_eq!(v["error"]["type"], "api_error");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("only: 503"),
        "{v}"
    );
    let failed = [("route", "down"), ("status_class", "5xx")];
    assert_eq!(metric(&app, "llmesh_requests_total", &failed), 1.0);
}

#[tokio::test]
async fn falls_back_like_the_openai_endpoint() {
    let app = app_with(MOCK_ROUTES, None);
    let r = post(&app, "/v1/messages", &hello("flaky")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.header("x-llmesh-backend"), Some("second"));
    assert_eq!(r.header("x-llmesh-fallback-from"), Some("first"));
    let v = r.json();
    assert_eq!(v["model"], "gpt-4.1-nano-2025-04-14");
    assert_eq!(v["content"][0]["text"], "served by second");
    let moved = [
        ("route", "flaky"),
        ("from_backend", "first"),
        ("to_backend", "second"),
    ];
    assert_eq!(metric(&app, "llmesh_fallbacks_total", &moved), 1.0);

    let mut req = hello("flaky");
    req["stream"] = json!(true);
    let r = post(&app, "/v1/messages", &req).await;
    let evs = events(&r.text());
    assert_eq!(evs[0].1["message"]["model"], "gpt-4.1-nano-2025-04-14");
    assert_eq!(names(&evs).last(), Some(&"message_stop"));
    assert_eq!(metric(&app, "llmesh_fallbacks_total", &moved), 2.0);
}

#[tokio::test]
async fn counts_tokens() {
    let app = app_with(MOCK_ROUTES, None);
    let req = json!({"model": "chat", "messages": [{"role": "user", "content": "Hello, world!"}]});
    let r = post(&app, "/v1/messages/count_tokens", &req).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    // 3 reply framing + 4 message framing + 4 for the text.
    assert_eq!(r.json(), json!({"input_tokens": 11}));
    let r = post(
        &app,
        "/messages/count_tokens",
        &json!({"model": "nope", "messages": req["messages"]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.json()["error"]["type"], "not_found_error");
}

// --- A scripted upstream -------------------------------------------------------------------

/// One scripted answer: status, content type and body frames (`Err` resets the connection).
struct Scripted {
    status: u16,
    content_type: &'static str,
    frames: Vec<Result<String, &'static str>>,
}

#[derive(Default)]
struct Script {
    answers: Mutex<VecDeque<Scripted>>,
    seen: Mutex<Vec<(String, Value)>>,
}

impl Transport for Script {
    fn send(&self, req: Request<Full<Bytes>>) -> ResponseFuture {
        let answer = self
            .answers
            .lock()
            .unwrap()
            .pop_front()
            .expect("a scripted answer is left");
        let uri = req.uri().to_string();
        let body = req.into_body();
        let seen_body = futures::executor::block_on(body.collect())
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        self.seen
            .lock()
            .unwrap()
            .push((uri, serde_json::from_slice(&seen_body).unwrap()));
        Box::pin(async move {
            let frames = answer.frames.into_iter().map(|f| match f {
                Ok(s) => Ok::<_, BoxError>(Frame::data(Bytes::from(s))),
                Err(e) => Err(e.into()),
            });
            let body: UpstreamBody = StreamBody::new(futures::stream::iter(frames)).boxed_unsync();
            Ok(Response::builder()
                .status(answer.status)
                .header("content-type", answer.content_type)
                .body(body)
                .unwrap())
        })
    }
}

fn scripted(answers: Vec<Scripted>) -> (Arc<App>, Arc<Script>) {
    let script = Arc::new(Script::default());
    script.answers.lock().unwrap().extend(answers);
    let s = script.clone();
    let factory: TransportFactory = Arc::new(move |_| s.clone() as Arc<dyn Transport>);
    (app_with(SCRIPTED_ROUTES, Some(factory)), script)
}

fn sse(chunks: &[Value]) -> Vec<Result<String, &'static str>> {
    chunks
        .iter()
        .map(|c| Ok(format!("data: {c}\n\n")))
        .chain(std::iter::once(Ok("data: [DONE]\n\n".to_string())))
        .collect()
}

fn chunk(delta: Value, finish: Value) -> Value {
    json!({"id": "cmpl-1", "object": "chat.completion.chunk", "created": 1,
           "model": "meta-llama/Llama-3.1-8B-Instruct",
           "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]})
}

#[tokio::test]
async fn sends_openai_upstream_and_reads_stop_sequences_back() {
    let completion = json!({"id": "cmpl-1", "object": "chat.completion", "created": 1,
        "model": "meta-llama/Llama-3.1-8B-Instruct",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "one, two, "},
                     "finish_reason": "stop", "stop_reason": "STOP"}],
        "usage": {"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500}});
    let (app, script) = scripted(vec![Scripted {
        status: 200,
        content_type: "application/json",
        frames: vec![Ok(completion.to_string())],
    }]);
    let req = json!({"model": "local", "max_tokens": 64, "system": "Count.",
        "stop_sequences": ["STOP"], "temperature": 0.5, "top_k": 5,
        "metadata": {"user_id": "u-1"},
        "tools": weather_tools(), "tool_choice": {"type": "auto", "disable_parallel_tool_use": true},
        "messages": [{"role": "user", "content": "Count to three, then say STOP"}]});
    let r = post(&app, "/v1/messages", &req).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let v = r.json();
    assert_eq!(v["stop_reason"], "stop_sequence");
    assert_eq!(v["stop_sequence"], "STOP");
    assert_eq!(
        v["usage"],
        json!({"input_tokens": 1000, "output_tokens": 500,
               "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0})
    );
    // $1/M input and $2/M output: 1000 + 1000 micro-dollars.
    assert_eq!(r.header("x-llmesh-cost-usd"), Some("0.002000"));

    let seen = script.seen.lock().unwrap();
    let (uri, body) = &seen[0];
    assert_eq!(uri, "http://vllm.test/v1/chat/completions");
    assert_eq!(
        *body,
        json!({
            "model": "meta-llama/Llama-3.1-8B-Instruct",
            "messages": [{"role": "system", "content": "Count."},
                         {"role": "user", "content": "Count to three, then say STOP"}],
            "max_completion_tokens": 64,
            "stop": ["STOP"],
            "temperature": 0.5,
            "top_k": 5,
            "tools": [{"type": "function", "function": {"name": "get_weather",
                "description": "Current weather", "parameters": weather_tools()[0]["input_schema"]}}],
            "tool_choice": "auto",
            "parallel_tool_calls": false,
            "user": "u-1",
        })
    );
}

#[tokio::test]
async fn a_stream_cut_mid_way_ends_with_an_error_event() {
    let frames = vec![
        Ok(format!(
            "data: {}\n\n",
            chunk(json!({"role": "assistant", "content": ""}), Value::Null)
        )),
        Ok(format!(
            "data: {}\n\n",
            chunk(json!({"content": "Once upon"}), Value::Null)
        )),
        Err("connection reset by peer"),
    ];
    let (app, script) = scripted(vec![Scripted {
        status: 200,
        content_type: "text/event-stream",
        frames,
    }]);
    let mut req = hello("local");
    req["stream"] = json!(true);
    let r = post(&app, "/v1/messages", &req).await;
    assert_eq!(r.status, StatusCode::OK);
    let evs = events(&r.text());
    assert_eq!(
        names(&evs),
        [
            "message_start",
            "ping",
            "content_block_start",
            "content_block_delta",
            "error"
        ]
    );
    let err = &evs[4].1["error"];
    assert_eq!(err["type"], "api_error");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("connection reset by peer"),
        "{err}"
    );
    // The adapter asked upstream for usage on the client's behalf.
    assert_eq!(
        script.seen.lock().unwrap()[0].1["stream_options"],
        json!({"include_usage": true})
    );
    let broken = [("route", "local"), ("reason", "reset")];
    assert_eq!(metric(&app, "llmesh_stream_errors_total", &broken), 1.0);
}

#[tokio::test]
async fn a_streamed_answer_reports_usage_from_the_usage_chunk() {
    let mut usage = chunk(json!({}), Value::Null);
    usage["choices"] = json!([]);
    usage["usage"] = json!({"prompt_tokens": 40, "completion_tokens": 2, "total_tokens": 42,
                            "prompt_tokens_details": {"cached_tokens": 10}});
    let frames = sse(&[
        chunk(json!({"role": "assistant", "content": ""}), Value::Null),
        chunk(json!({"content": "Hi"}), Value::Null),
        chunk(json!({"content": "!"}), json!("length")),
        usage,
    ]);
    let (app, _) = scripted(vec![Scripted {
        status: 200,
        content_type: "text/event-stream",
        frames,
    }]);
    let mut req = hello("local");
    req["stream"] = json!(true);
    let r = post(&app, "/v1/messages", &req).await;
    let evs = events(&r.text());
    let delta = evs.iter().find(|(n, _)| n == "message_delta").unwrap();
    assert_eq!(
        delta.1,
        json!({"type": "message_delta",
               "delta": {"stop_reason": "max_tokens", "stop_sequence": null},
               "usage": {"input_tokens": 30, "output_tokens": 2,
                         "cache_creation_input_tokens": 0, "cache_read_input_tokens": 10}})
    );
    // 30 uncached and 10 cached at $1/M (cachedInput defaults to the input price) + 2 at $2/M.
    let cost = [("route", "local"), ("estimated", "false")];
    assert_eq!(
        metric(&app, "llmesh_cost_microdollars_total", &cost),
        30.0 + 10.0 + 4.0
    );
}
