//! `POST /v1/responses` end to end, in process: `App` + `handler::handle`, the built-in mock
//! provider behind a scripted transport that records every upstream chat body and can fail a
//! backend's first requests.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use parking_lot::Mutex;
use serde_json::{Value, json};

use llmesh_api::manifest::{self, LocalSecrets};
use llmesh_sidecar::App;
use llmesh_sidecar::handler::{self, ResBody};
use llmesh_sidecar::providers::mock::MockTransport;
use llmesh_sidecar::transport::{ResponseFuture, Transport, TransportFactory};

const ROUTES: &str = r#"
apiVersion: llmesh.io/v1alpha1
kind: LLMRoute
metadata:
  name: chat
spec:
  backends:
    - name: primary
      provider: mock
      model: gpt-4o-mini-2024-07-18
      weight: 100
      mock: {outputTokens: 4, reply: "Hi from the mock."}
    - name: backup
      provider: mock
      model: gpt-4.1-nano-2025-04-14
      weight: 0
      mock: {outputTokens: 4, reply: "Hi from the backup."}
  fallbacks: [backup]
  retry:
    attempts: 1
"#;

/// Upstream chat bodies, by backend, in the order they were sent.
type Log = Arc<Mutex<Vec<(String, Value)>>>;

/// The mock provider, recording each request and failing the first `fail` with a 503.
struct Scripted {
    backend: String,
    mock: Arc<MockTransport>,
    fail: AtomicU32,
    log: Log,
}

impl Transport for Scripted {
    fn send(&self, req: Request<Full<Bytes>>) -> ResponseFuture {
        let mock = self.mock.clone();
        let log = self.log.clone();
        let backend = self.backend.clone();
        let fail = self
            .fail
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let bytes = body.collect().await.unwrap().to_bytes();
            log.lock()
                .push((backend, serde_json::from_slice(&bytes).unwrap()));
            if fail {
                let body = json!({"error": {"message": "The server is overloaded.", "type": "server_error", "param": null, "code": null}});
                return Ok(Response::builder()
                    .status(503)
                    .header("content-type", "application/json")
                    .body(
                        Full::new(Bytes::from(body.to_string()))
                            .map_err(|e| match e {})
                            .boxed_unsync(),
                    )
                    .unwrap());
            }
            mock.send(Request::from_parts(parts, Full::new(bytes)))
                .await
        })
    }
}

struct Harness {
    app: Arc<App>,
    log: Log,
}

fn harness_with(routes: &str, fail: &[(&str, u32)], store: Option<(usize, Duration)>) -> Harness {
    let log: Log = Arc::default();
    let fails: HashMap<String, u32> = fail.iter().map(|(b, n)| (b.to_string(), *n)).collect();
    let l = log.clone();
    let factory: TransportFactory = Arc::new(move |b| {
        Arc::new(Scripted {
            backend: b.name.clone(),
            mock: MockTransport::new(b),
            fail: AtomicU32::new(fails.get(&b.name).copied().unwrap_or(0)),
            log: l.clone(),
        }) as Arc<dyn Transport>
    });
    let mut builder = App::builder().transports(factory);
    if let Some((entries, ttl)) = store {
        builder = builder.responses_store(entries, ttl);
    }
    let app = builder.build();
    let docs = manifest::parse("routes.yaml", routes, false).unwrap();
    let (snapshot, _) =
        manifest::compile("routes.yaml", &docs, &LocalSecrets::new(&[], Vec::new())).unwrap();
    app.apply(&snapshot);
    Harness { app, log }
}

fn harness() -> Harness {
    harness_with(ROUTES, &[], None)
}

struct Answer {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The SSE events, checking `event:` names match `data.type` and sequence numbers count up.
    fn events(&self) -> Vec<Value> {
        let text = std::str::from_utf8(&self.body).unwrap();
        text.split_terminator("\n\n")
            .enumerate()
            .map(|(i, block)| {
                let (event, data) = block
                    .strip_prefix("event: ")
                    .and_then(|b| b.split_once("\ndata: "))
                    .unwrap_or_else(|| panic!("not an event block: {block:?}"));
                let data: Value = serde_json::from_str(data).unwrap();
                assert_eq!(data["type"], event);
                assert_eq!(data["sequence_number"], i);
                data
            })
            .collect()
    }
}

impl Harness {
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Answer {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(
                body.map(|b| b.to_string()).unwrap_or_default(),
            )))
            .unwrap();
        let resp: Response<ResBody> = handler::handle(self.app.clone(), req).await;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Answer {
            status,
            headers,
            body,
        }
    }

    async fn post(&self, path: &str, body: Value) -> Answer {
        self.call(Method::POST, path, Some(body)).await
    }

    fn upstream(&self) -> Vec<(String, Value)> {
        self.log.lock().clone()
    }

    fn last_upstream(&self) -> Value {
        self.upstream()
            .last()
            .expect("an upstream request")
            .1
            .clone()
    }
}

fn types(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn a_plain_response_on_both_paths() {
    let h = harness();
    for path in ["/v1/responses", "/responses"] {
        let a = h
            .post(
                path,
                json!({"model": "chat", "input": "Hello", "metadata": {"ticket": "T-1"}}),
            )
            .await;
        assert_eq!(a.status, 200, "{path}: {:?}", a.body);
        let r = a.json();
        assert_eq!(r["object"], "response");
        assert!(r["id"].as_str().unwrap().starts_with("resp_"));
        assert_eq!(r["status"], "completed");
        assert_eq!(r["output"][0]["type"], "message");
        assert_eq!(r["output"][0]["content"][0]["type"], "output_text");
        assert_eq!(r["output"][0]["content"][0]["text"], "Hi from the mock.");
        assert_eq!(r["metadata"], json!({"ticket": "T-1"}));
        assert_eq!(r["usage"]["output_tokens"], 4);
        assert!(r["usage"]["input_tokens"].as_u64().unwrap() > 0);
        assert_eq!(
            r["usage"]["total_tokens"].as_u64().unwrap(),
            r["usage"]["input_tokens"].as_u64().unwrap() + 4
        );
        assert_eq!(a.header("x-llmesh-route"), Some("chat"));
        assert_eq!(a.header("x-llmesh-backend"), Some("primary"));
        assert!(a.header("x-llmesh-cost-usd").is_some());
    }
    // What went upstream is a chat body: no Responses fields, no metadata.
    let up = h.last_upstream();
    assert_eq!(
        up["messages"],
        json!([{"role": "user", "content": "Hello"}])
    );
    for key in ["input", "metadata", "store", "instructions"] {
        assert!(up.get(key).is_none(), "{key} leaked upstream: {up}");
    }
}

#[tokio::test]
async fn a_streamed_response_has_the_documented_events_in_order() {
    let h = harness();
    let a = h
        .post(
            "/v1/responses",
            json!({"model": "chat", "input": "Hello", "stream": true}),
        )
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("content-type"), Some("text/event-stream"));
    let ev = a.events();
    let t = types(&ev);
    assert_eq!(
        t[..4],
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added"
        ]
    );
    assert_eq!(
        t[t.len() - 4..],
        [
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed"
        ]
    );
    let deltas: String = ev
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    assert_eq!(deltas, "Hi from the mock.");
    assert!(!a.body.windows(6).any(|w| w == b"[DONE]"));
    let done = &ev[ev.len() - 1]["response"];
    assert_eq!(done["status"], "completed");
    assert_eq!(done["output"][0]["content"][0]["text"], "Hi from the mock.");
    assert_eq!(done["usage"]["output_tokens"], 4);
    // The sidecar asked the backend for usage in the stream.
    assert_eq!(h.last_upstream()["stream_options"]["include_usage"], true);
}

#[tokio::test]
async fn previous_response_id_continues_a_conversation_streamed_or_not() {
    let h = harness();
    // The first turn streams: the stream encoder stores it.
    let a = h
        .post(
            "/v1/responses",
            json!({"model": "chat", "instructions": "Be brief.", "input": "My name is Ada.", "stream": true}),
        )
        .await;
    let ev = a.events();
    let first = ev.last().unwrap()["response"]["id"]
        .as_str()
        .unwrap()
        .to_string();

    let b = h
        .post(
            "/v1/responses",
            json!({"model": "chat", "previous_response_id": first, "input": "What is my name?"}),
        )
        .await;
    assert_eq!(b.status, 200, "{:?}", b.body);
    assert_eq!(b.json()["previous_response_id"], first.as_str());
    assert_eq!(
        h.last_upstream()["messages"],
        json!([
            {"role": "user", "content": "My name is Ada."},
            {"role": "assistant", "content": "Hi from the mock."},
            {"role": "user", "content": "What is my name?"},
        ]),
        "earlier turns go upstream; earlier instructions do not"
    );

    // Stored responses can be fetched and deleted.
    let id = b.json()["id"].as_str().unwrap().to_string();
    let got = h
        .call(Method::GET, &format!("/v1/responses/{id}"), None)
        .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.json()["id"], id.as_str());
    let del = h
        .call(Method::DELETE, &format!("/responses/{id}"), None)
        .await;
    assert_eq!(del.json()["deleted"], true);
    let gone = h
        .call(Method::GET, &format!("/v1/responses/{id}"), None)
        .await;
    assert_eq!(gone.status, 404);
}

#[tokio::test]
async fn a_function_call_round_trip() {
    let h = harness();
    let tools = json!([{"type": "function", "name": "get_weather", "description": "Weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]);
    let a = h
        .post(
            "/v1/responses",
            json!({"model": "chat", "input": "Weather in Paris?", "tools": tools}),
        )
        .await;
    let r = a.json();
    let call = &r["output"][0];
    assert_eq!(call["type"], "function_call", "{r}");
    assert_eq!(call["name"], "get_weather");
    assert_eq!(call["status"], "completed");
    assert_eq!(
        serde_json::from_str::<Value>(call["arguments"].as_str().unwrap()).unwrap(),
        json!({"city": "mock"})
    );
    assert_eq!(
        h.last_upstream()["tools"],
        json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}])
    );

    let call_id = call["call_id"].as_str().unwrap();
    let b = h
        .post(
            "/v1/responses",
            json!({"model": "chat", "previous_response_id": r["id"], "tools": tools,
               "input": [{"type": "function_call_output", "call_id": call_id, "output": "18C and sunny"}]}),
        )
        .await;
    let r2 = b.json();
    assert_eq!(
        r2["output"][0]["content"][0]["text"],
        "The tool returned: 18C and sunny"
    );
    let msgs = h.last_upstream()["messages"].clone();
    assert_eq!(msgs[1]["role"], "assistant");
    assert_eq!(msgs[1]["tool_calls"][0]["id"], call_id);
    assert_eq!(
        msgs[2],
        json!({"role": "tool", "tool_call_id": call_id, "content": "18C and sunny"})
    );
}

#[tokio::test]
async fn a_streamed_function_call() {
    let h = harness();
    let a = h
        .post(
            "/v1/responses",
            json!({"model": "chat", "input": "Weather?", "stream": true,
               "tools": [{"type": "function", "name": "get_weather",
                          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]}),
        )
        .await;
    let ev = a.events();
    assert_eq!(ev[2]["type"], "response.output_item.added");
    assert_eq!(ev[2]["item"]["type"], "function_call");
    let args: String = ev
        .iter()
        .filter(|e| e["type"] == "response.function_call_arguments.delta")
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    assert_eq!(args, r#"{"city":"mock"}"#);
    let t = types(&ev);
    assert_eq!(
        t[t.len() - 3..],
        [
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed"
        ]
    );
}

#[tokio::test]
async fn json_schema_output() {
    let h = harness();
    let a = h
        .post(
            "/v1/responses",
            json!({"model": "chat", "input": "Extract the person.",
               "text": {"format": {"type": "json_schema", "name": "person", "strict": true,
                 "schema": {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
                            "required": ["name", "age"], "additionalProperties": false}}}}),
        )
        .await;
    let r = a.json();
    let text = r["output"][0]["content"][0]["text"].as_str().unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(text).unwrap(),
        json!({"name": "mock", "age": 1})
    );
    assert_eq!(r["text"]["format"]["name"], "person");
    assert_eq!(
        h.last_upstream()["response_format"]["json_schema"]["name"],
        "person"
    );
}

#[tokio::test]
async fn an_unknown_previous_response_id_is_refused_before_any_upstream_call() {
    let h = harness();
    let a = h
        .post(
            "/v1/responses",
            json!({"model": "chat", "previous_response_id": "resp_missing", "input": "hi"}),
        )
        .await;
    assert_eq!(a.status, 400);
    let e = &a.json()["error"];
    assert_eq!(e["param"], "previous_response_id");
    assert_eq!(e["code"], "previous_response_not_found");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("'resp_missing' not found")
    );
    assert!(h.upstream().is_empty());
}

#[tokio::test]
async fn a_built_in_tool_is_refused_naming_it() {
    let h = harness();
    let a = h
        .post(
            "/v1/responses",
            json!({"model": "chat", "input": "news?", "tools": [{"type": "web_search_preview"}]}),
        )
        .await;
    assert_eq!(a.status, 400);
    let e = &a.json()["error"];
    assert_eq!(e["param"], "tools[0]");
    let m = e["message"].as_str().unwrap();
    assert!(m.contains("`web_search_preview`"), "{m}");
    assert!(m.contains("cannot be run by the chosen backend"), "{m}");
    assert!(h.upstream().is_empty());
}

#[tokio::test]
async fn routing_fallback_cost_and_metrics_apply() {
    let h = harness_with(ROUTES, &[("primary", 1)], None);
    let a = h
        .post("/v1/responses", json!({"model": "chat", "input": "Hello"}))
        .await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.header("x-llmesh-backend"), Some("backup"));
    assert_eq!(a.header("x-llmesh-fallback-from"), Some("primary"));
    let cost = a.header("x-llmesh-cost-usd").expect("a cost header");
    assert!(cost.parse::<f64>().unwrap() > 0.0, "{cost}");
    let r = a.json();
    assert_eq!(r["output"][0]["content"][0]["text"], "Hi from the backup.");
    assert_eq!(r["model"], "gpt-4.1-nano-2025-04-14");
    let up = h.upstream();
    assert_eq!(up.len(), 2);
    assert_eq!((up[0].0.as_str(), up[1].0.as_str()), ("primary", "backup"));
    // The route's model is swapped for the backend's, as for chat completions.
    assert_eq!(up[1].1["model"], "gpt-4.1-nano-2025-04-14");

    let m = h.call(Method::GET, "/metrics", None).await.body;
    let m = String::from_utf8_lossy(&m);
    let line = |prefix: &str, needles: &[&str]| {
        m.lines().any(|l| {
            l.starts_with(prefix) && needles.iter().all(|n| l.contains(n)) && !l.ends_with(" 0")
        })
    };
    assert!(
        line(
            "llmesh_fallbacks_total",
            &["from_backend=\"primary\"", "to_backend=\"backup\""]
        ),
        "{m}"
    );
    assert!(
        line(
            "llmesh_requests_total",
            &["backend=\"backup\"", "route=\"chat\""]
        ),
        "{m}"
    );
    assert!(
        line("llmesh_cost_microdollars_total", &["backend=\"backup\""]),
        "{m}"
    );
}

#[tokio::test]
async fn a_mid_stream_failure_ends_with_error_and_response_failed() {
    let routes = ROUTES.replace(
        "mock: {outputTokens: 4, reply: \"Hi from the mock.\"}",
        "mock: {outputTokens: 4, reply: \"Hi from the mock.\", failure: {status: 0, midStreamAfterChunks: 3}}",
    );
    let h = harness_with(&routes, &[], None);
    let a = h
        .post(
            "/v1/responses",
            json!({"model": "chat", "input": "Hello", "stream": true}),
        )
        .await;
    assert_eq!(a.status, 200);
    let ev = a.events();
    let t = types(&ev);
    assert_eq!(t[t.len() - 2..], ["error", "response.failed"], "{t:?}");
    let failed = &ev[ev.len() - 1]["response"];
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["error"]["code"], "server_error");
    assert!(
        failed["error"]["message"]
            .as_str()
            .unwrap()
            .contains("failed after it started")
    );
    assert!(!t.contains(&"response.completed"));
    // A failed response is not kept for previous_response_id.
    let id = failed["id"].as_str().unwrap();
    let b = h
        .post(
            "/v1/responses",
            json!({"model": "chat", "previous_response_id": id, "input": "again"}),
        )
        .await;
    assert_eq!(b.status, 400);
}

#[tokio::test]
async fn the_store_is_bounded_by_the_builder_option() {
    let h = harness_with(ROUTES, &[], Some((1, Duration::from_secs(3600))));
    let first = h
        .post("/v1/responses", json!({"model": "chat", "input": "one"}))
        .await
        .json();
    let second = h
        .post("/v1/responses", json!({"model": "chat", "input": "two"}))
        .await
        .json();
    let gone = h
        .post(
            "/v1/responses",
            json!({"model": "chat", "previous_response_id": first["id"], "input": "x"}),
        )
        .await;
    assert_eq!(gone.status, 400, "the oldest response was pushed out");
    let kept = h
        .post(
            "/v1/responses",
            json!({"model": "chat", "previous_response_id": second["id"], "input": "x"}),
        )
        .await;
    assert_eq!(kept.status, 200);
}
