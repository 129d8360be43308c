//! The Anthropic and Gemini adapters inside the whole data plane: handler, attempt loop and
//! relay, with fake upstreams that answer in each provider's wire format (fixture bodies).

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use parking_lot::Mutex;
use serde_json::{Value, json};

use llmesh_api::manifest::{self, LocalSecrets};
use llmesh_api::snapshot::Backend;
use llmesh_sidecar::App;
use llmesh_sidecar::handler::handle;
use llmesh_sidecar::transport::{BoxError, ResponseFuture, Transport, TransportFactory};

const CONFIG: &str = r#"
apiVersion: llmesh.io/v1alpha1
kind: LLMRoute
metadata: {name: claude-first}
spec:
  backends:
    - name: claude
      provider: anthropic
      model: claude-sonnet-4-5-20250929
      secretRef: {name: anthropic, key: api-key}
    - name: gemini
      provider: gemini
      model: gemini-2.5-flash
      secretRef: {name: gemini, key: api-key}
  retry: {attempts: 1}
---
apiVersion: llmesh.io/v1alpha1
kind: LLMRoute
metadata: {name: gemini-first}
spec:
  backends:
    - name: gemini
      provider: gemini
      model: gemini-2.5-flash
      secretRef: {name: gemini, key: api-key}
    - name: claude
      provider: anthropic
      model: claude-sonnet-4-5-20250929
      secretRef: {name: anthropic, key: api-key}
  retry: {attempts: 1}
"#;

const ANTHROPIC_KEY: &str = "sk-ant-api03-e2eTestKey0000";
const GEMINI_KEY: &str = "AIzaSyE2eTestKey00000000000000000";

/// One canned upstream answer.
struct Canned {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
}

/// What a fake upstream saw: URL, the key header, the JSON body.
type Seen = Arc<Mutex<Vec<(String, String, Value)>>>;

/// Answers from a per-backend queue, in 5-byte frames so events arrive split.
struct Fake {
    answers: Arc<Mutex<VecDeque<Canned>>>,
    seen: Seen,
}

impl Transport for Fake {
    fn send(&self, req: Request<Full<Bytes>>) -> ResponseFuture {
        let answers = self.answers.clone();
        let seen = self.seen.clone();
        Box::pin(async move {
            let key = ["x-api-key", "x-goog-api-key"]
                .iter()
                .find_map(|h| req.headers().get(*h))
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let uri = req.uri().to_string();
            let body = req.into_body().collect().await.map(|c| c.to_bytes());
            let body: Value = serde_json::from_slice(&body.unwrap_or_default()).unwrap_or_default();
            seen.lock().push((uri, key, body));
            let a = answers.lock().pop_front().expect("an answer is queued");
            let frames: Vec<Result<Frame<Bytes>, BoxError>> = a
                .body
                .chunks(5)
                .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
                .collect();
            let body = StreamBody::new(stream::iter(frames)).boxed_unsync();
            Ok(Response::builder()
                .status(a.status)
                .header("content-type", a.content_type)
                .body(body)
                .expect("response"))
        })
    }
}

struct World {
    app: Arc<App>,
    queues: Vec<(&'static str, Arc<Mutex<VecDeque<Canned>>>)>,
    seen: Seen,
}

impl World {
    fn new() -> Self {
        let queues: Vec<(&'static str, Arc<Mutex<VecDeque<Canned>>>)> =
            vec![("claude", Arc::default()), ("gemini", Arc::default())];
        let seen: Seen = Arc::default();
        let (q, s) = (queues.clone(), seen.clone());
        let factory: TransportFactory = Arc::new(move |b: &Backend| {
            let answers = q
                .iter()
                .find(|(name, _)| *name == b.name)
                .map(|(_, queue)| queue.clone())
                .expect("known backend");
            Arc::new(Fake {
                answers,
                seen: s.clone(),
            }) as Arc<dyn Transport>
        });
        let app = App::builder().transports(factory).build();
        let routes = manifest::parse("e2e.yaml", CONFIG, false).expect("manifests");
        let secrets = LocalSecrets::new(
            &[],
            [
                ("ANTHROPIC_API_KEY".to_string(), ANTHROPIC_KEY.to_string()),
                ("GEMINI_API_KEY".to_string(), GEMINI_KEY.to_string()),
            ],
        );
        let (snapshot, _) = manifest::compile("e2e.yaml", &routes, &secrets).expect("compile");
        app.apply(&snapshot);
        Self { app, queues, seen }
    }

    fn answer(&self, backend: &str, status: u16, content_type: &'static str, body: Vec<u8>) {
        let (_, q) = self
            .queues
            .iter()
            .find(|(n, _)| *n == backend)
            .expect("backend");
        q.lock().push_back(Canned {
            status,
            content_type,
            body,
        });
    }

    async fn call(&self, body: Value) -> (StatusCode, http::HeaderMap, String) {
        let req = Request::builder()
            .method("POST")
            .uri("/v1/chat/completions")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("request");
        let resp = handle(self.app.clone(), req).await;
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.expect("body").to_bytes();
        (
            parts.status,
            parts.headers,
            String::from_utf8(bytes.to_vec()).expect("utf8"),
        )
    }
}

fn fixture(provider: &str, name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(provider)
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The `data:` payloads of an OpenAI event stream.
fn events(sse: &str) -> Vec<Value> {
    sse.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap_or(Value::String(d.to_string())))
        .collect()
}

#[tokio::test]
async fn an_anthropic_stream_reaches_the_client_as_openai_chunks() {
    let w = World::new();
    w.answer(
        "claude",
        200,
        "text/event-stream",
        fixture("anthropic", "stream_tool_use.sse"),
    );
    let (status, headers, body) = w
        .call(json!({
            "model": "claude-first",
            "stream": true,
            "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": "Weather in San Francisco?"}],
            "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}}}]
        }))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(headers["content-type"], "text/event-stream");
    let ev = events(&body);
    assert_eq!(ev.last(), Some(&json!("[DONE]")));
    let text: String = ev
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "Okay, let's check the weather for San Francisco, CA:");
    let args: String = ev
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&args).expect("arguments are JSON"),
        json!({"location": "San Francisco, CA", "unit": "fahrenheit"})
    );
    let usage = &ev[ev.len() - 2]["usage"];
    assert_eq!(usage["prompt_tokens"], 472);
    assert_eq!(usage["completion_tokens"], 89);

    let seen = w.seen.lock();
    let (url, key, sent) = &seen[0];
    assert_eq!(url, "https://api.anthropic.com/v1/messages");
    assert_eq!(key, ANTHROPIC_KEY);
    assert_eq!(sent["stream"], true);
    assert_eq!(sent["tools"][0]["name"], "get_weather");
    assert!(sent["max_tokens"].is_u64());
}

#[tokio::test]
async fn anthropic_overloaded_falls_back_to_gemini() {
    let w = World::new();
    w.answer(
        "claude",
        529,
        "application/json",
        br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"},"request_id":"req_1"}"#.to_vec(),
    );
    w.answer(
        "gemini",
        200,
        "application/json",
        fixture("gemini", "resp_simple.response.json"),
    );
    let (status, headers, body) = w
        .call(json!({"model": "claude-first", "messages": [{"role": "user", "content": "Explain how AI works in a few words"}]}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(headers["x-llmesh-backend"], "gemini");
    assert_eq!(headers["x-llmesh-fallback-from"], "claude");
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "AI learns patterns from data to make predictions or decisions."
    );
    let seen = w.seen.lock();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen[1].0,
        "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent"
    );
    assert_eq!(seen[1].1, GEMINI_KEY);
    assert_eq!(
        seen[1].2["contents"][0]["parts"][0]["text"],
        "Explain how AI works in a few words"
    );
}

#[tokio::test]
async fn a_gemini_safety_block_before_the_first_chunk_falls_back() {
    let w = World::new();
    w.answer(
        "gemini",
        200,
        "text/event-stream",
        fixture("gemini", "stream_prompt_blocked.sse"),
    );
    w.answer(
        "claude",
        200,
        "text/event-stream",
        fixture("anthropic", "stream_text.sse"),
    );
    let (status, headers, body) = w
        .call(json!({"model": "gemini-first", "stream": true, "messages": [{"role": "user", "content": "Hello"}]}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(headers["content-type"], "text/event-stream");
    // Gemini was asked first, then Claude.
    let urls: Vec<String> = w.seen.lock().iter().map(|s| s.0.clone()).collect();
    assert_eq!(
        urls,
        [
            "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            "https://api.anthropic.com/v1/messages"
        ]
    );
    let ev = events(&body);
    let text: String = ev
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "Hello!");
    assert_eq!(ev.last(), Some(&json!("[DONE]")));
    // The client did not ask for usage: no usage chunk.
    assert!(ev.iter().all(|e| e.get("usage").is_none()));
}

#[tokio::test]
async fn a_prompt_too_long_for_claude_is_retried_on_gemini() {
    let w = World::new();
    w.answer(
        "claude",
        400,
        "application/json",
        br#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 208310 tokens > 200000 maximum"}}"#.to_vec(),
    );
    w.answer(
        "gemini",
        200,
        "application/json",
        fixture("gemini", "resp_simple.response.json"),
    );
    let (status, headers, body) = w
        .call(json!({"model": "claude-first", "messages": [{"role": "user", "content": "long"}]}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(headers["x-llmesh-backend"], "gemini");
}

#[tokio::test]
async fn a_bad_request_is_reported_without_the_key() {
    let w = World::new();
    let msg = format!("messages.0.content: invalid (x-api-key {ANTHROPIC_KEY})");
    w.answer(
        "claude",
        400,
        "application/json",
        json!({"type": "error", "error": {"type": "invalid_request_error", "message": msg}})
            .to_string()
            .into_bytes(),
    );
    let (status, _, body) = w
        .call(json!({"model": "claude-first", "messages": [{"role": "user", "content": "x"}]}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("messages.0.content: invalid"), "{body}");
    assert!(!body.contains(ANTHROPIC_KEY), "{body}");
    // A client error is not retried elsewhere.
    assert_eq!(w.seen.lock().len(), 1);
}
