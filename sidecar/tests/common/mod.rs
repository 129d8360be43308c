//! Test harness for driving the sidecar in process: snapshots compiled from YAML manifests by the
//! real compiler, a scripted upstream transport that records what it received, and helpers to
//! send requests through `handler::handle` and read responses and metrics.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::time::Instant;

use llmesh_api::Snapshot;
use llmesh_api::manifest::{self, LocalSecrets};
use llmesh_sidecar::App;
use llmesh_sidecar::budget::Clock;
use llmesh_sidecar::handler::{self, ResBody};
use llmesh_sidecar::transport::{
    BoxError, ResponseFuture, Transport, TransportError, UpstreamBody,
};

/// The API key every `secretRef: {name: openai, key: api-key}` resolves to.
pub const KEY: &str = "sk-test-0123456789abcdefSECRET";

/// Removes the indentation common to every non-blank line, so YAML can sit indented in a test.
pub fn dedent(s: &str) -> String {
    let indent = s
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    s.lines()
        .map(|l| if l.len() >= indent { &l[indent..] } else { "" })
        .collect::<Vec<_>>()
        .join("\n")
}

/// An `LLMRoute` named `name` with the given spec (written as YAML, any indentation).
pub fn route(name: &str, spec: &str) -> String {
    let spec: String = dedent(spec).lines().map(|l| format!("  {l}\n")).collect();
    format!(
        "apiVersion: llmesh.io/v1alpha1\nkind: LLMRoute\nmetadata:\n  name: {name}\nspec:\n{spec}"
    )
}

/// Compiles manifests (multi-document YAML) with the real compiler; `openai` secrets resolve to
/// [`KEY`].
pub fn snapshot(yaml: &str) -> Snapshot {
    let text = dedent(yaml);
    let manifests = manifest::parse("test.yaml", &text, false).expect("manifests parse");
    let secrets = LocalSecrets::new(
        &manifests,
        [("OPENAI_API_KEY".to_string(), KEY.to_string())],
    );
    manifest::compile("test.yaml", &manifests, &secrets)
        .expect("manifests compile")
        .0
}

/// A wall clock the test moves by hand.
pub struct ManualClock(pub AtomicU64);

impl ManualClock {
    /// A clock reading `unix` seconds.
    pub fn at(unix: u64) -> Arc<Self> {
        Arc::new(Self(AtomicU64::new(unix)))
    }
    /// Sets the time.
    pub fn set(&self, unix: u64) {
        self.0.store(unix, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn unix_now(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Builds an app serving `yaml` whose backends are answered by the returned [`Upstream`].
pub fn app(yaml: &str) -> (Arc<App>, Upstream) {
    app_with_clock(yaml, None)
}

/// Like [`app`], with a manual wall clock for budgets.
pub fn app_with_clock(yaml: &str, clock: Option<Arc<ManualClock>>) -> (Arc<App>, Upstream) {
    app_built(yaml, |b| match clock {
        Some(c) => b.clock(c),
        None => b,
    })
}

/// Like [`app`], with `configure` applied to the builder (limits, stores, clocks).
pub fn app_built(
    yaml: &str,
    configure: impl FnOnce(llmesh_sidecar::app::AppBuilder) -> llmesh_sidecar::app::AppBuilder,
) -> (Arc<App>, Upstream) {
    let up = Upstream::default();
    let factory_up = up.clone();
    let b = App::builder().transports(Arc::new(move |backend| {
        Arc::new(Scripted {
            backend: backend.name.clone(),
            up: factory_up.clone(),
        }) as Arc<dyn Transport>
    }));
    let app = configure(b).build();
    app.apply(&snapshot(yaml));
    (app, up)
}

// ---------------------------------------------------------------------------------------------
// The scripted upstream

/// One piece of a scripted response body.
#[derive(Clone, Debug)]
pub enum Part {
    /// Bytes delivered as one frame.
    Data(String),
    /// A pause before the next part.
    Wait(Duration),
    /// The connection breaks.
    Error(String),
    /// The body never continues.
    Hang,
}

#[derive(Clone, Debug)]
enum Head {
    Respond,
    ConnectError,
    Hang,
}

/// A scripted upstream response.
#[derive(Clone, Debug)]
pub struct Reply {
    head: Head,
    delay: Duration,
    status: u16,
    headers: Vec<(String, String)>,
    parts: Vec<Part>,
}

impl Reply {
    fn new(status: u16, content_type: &str, parts: Vec<Part>) -> Self {
        Self {
            head: Head::Respond,
            delay: Duration::ZERO,
            status,
            headers: vec![("content-type".into(), content_type.into())],
            parts,
        }
    }

    /// A JSON answer.
    pub fn json(status: u16, body: Value) -> Self {
        Self::new(
            status,
            "application/json",
            vec![Part::Data(body.to_string())],
        )
    }

    /// A 200 chat completion saying `text`, with OpenAI usage.
    pub fn ok(text: &str, prompt: u64, completion: u64) -> Self {
        Self::json(200, completion_body(text, Some((prompt, completion, 0))))
    }

    /// A 200 chat completion without any usage.
    pub fn ok_no_usage(text: &str) -> Self {
        Self::json(200, completion_body(text, None))
    }

    /// An OpenAI-shaped error.
    pub fn error(status: u16, code: &str, message: &str) -> Self {
        Self::json(
            status,
            json!({"error": {"message": message, "type": error_type(status), "param": null, "code": code}}),
        )
    }

    /// An event stream made of `parts`.
    pub fn sse(parts: Vec<Part>) -> Self {
        Self::new(200, "text/event-stream", parts)
    }

    /// A complete stream: one chunk per word of `words`, a finish chunk, the usage chunk when
    /// `usage` is given, and `[DONE]`.
    pub fn stream(words: &[&str], usage: Option<(u64, u64)>) -> Self {
        let mut parts = vec![Part::Data(role_chunk())];
        parts.extend(words.iter().map(|w| Part::Data(content_chunk(w))));
        parts.push(Part::Data(finish_chunk()));
        if let Some((p, c)) = usage {
            parts.push(Part::Data(usage_chunk(p, c)));
        }
        parts.push(Part::Data(DONE.into()));
        Self::sse(parts)
    }

    /// Nothing reaches the provider.
    pub fn connect_error() -> Self {
        Self {
            head: Head::ConnectError,
            ..Self::new(0, "", vec![])
        }
    }

    /// The provider never answers.
    pub fn hang() -> Self {
        Self {
            head: Head::Hang,
            ..Self::new(0, "", vec![])
        }
    }

    /// Answers after `d`.
    pub fn after(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }

    /// Delays the body by `d` after the headers.
    pub fn slow_body(mut self, d: Duration) -> Self {
        self.parts.insert(0, Part::Wait(d));
        self
    }

    /// Adds a response header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

fn error_type(status: u16) -> &'static str {
    match status {
        429 => "requests",
        400..=499 => "invalid_request_error",
        _ => "server_error",
    }
}

/// A `chat.completion` body.
pub fn completion_body(text: &str, usage: Option<(u64, u64, u64)>) -> Value {
    let mut v = json!({
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "upstream-model",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text, "refusal": null},
            "logprobs": null,
            "finish_reason": "stop"
        }],
        "system_fingerprint": "fp_test"
    });
    if let Some((p, c, cached)) = usage {
        v["usage"] = json!({
            "prompt_tokens": p,
            "completion_tokens": c,
            "total_tokens": p + c,
            "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0}
        });
    }
    v
}

/// `data: [DONE]`.
pub const DONE: &str = "data: [DONE]\n\n";

fn chunk(delta: Value, finish: Value) -> String {
    let v = json!({
        "id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 1_700_000_000,
        "model": "upstream-model", "system_fingerprint": "fp_test",
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]
    });
    format!("data: {v}\n\n")
}

/// The first chunk of an OpenAI stream (the role).
pub fn role_chunk() -> String {
    chunk(json!({"role": "assistant", "content": ""}), Value::Null)
}

/// A content chunk.
pub fn content_chunk(text: &str) -> String {
    chunk(json!({"content": text}), Value::Null)
}

/// The chunk carrying `finish_reason: stop`.
pub fn finish_chunk() -> String {
    chunk(json!({}), json!("stop"))
}

/// The usage-only chunk OpenAI sends when `stream_options.include_usage` is true.
pub fn usage_chunk(prompt: u64, completion: u64) -> String {
    let v = json!({
        "id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 1_700_000_000,
        "model": "upstream-model", "choices": [],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    });
    format!("data: {v}\n\n")
}

/// A request as the scripted upstream received it.
#[derive(Clone, Debug)]
pub struct Seen {
    /// The full URL.
    pub url: String,
    /// The request headers.
    pub headers: HeaderMap,
    /// The JSON body.
    pub body: Value,
    /// The body's bytes.
    pub raw: Bytes,
    /// When it arrived (tokio time, so exact under paused time).
    pub at: Instant,
}

#[derive(Default)]
struct BackendScript {
    queue: VecDeque<Reply>,
    always: Option<Reply>,
    seen: Vec<Seen>,
}

/// Every backend's script and what each one received.
#[derive(Clone, Default)]
pub struct Upstream {
    inner: Arc<Mutex<HashMap<String, BackendScript>>>,
}

impl Upstream {
    /// Queues `reply` as the next answer of `backend`.
    pub fn push(&self, backend: &str, reply: Reply) -> &Self {
        self.inner
            .lock()
            .entry(backend.into())
            .or_default()
            .queue
            .push_back(reply);
        self
    }

    /// Answers every request of `backend` with `reply` once its queue is empty.
    pub fn always(&self, backend: &str, reply: Reply) -> &Self {
        self.inner.lock().entry(backend.into()).or_default().always = Some(reply);
        self
    }

    /// What `backend` received, in order.
    pub fn seen(&self, backend: &str) -> Vec<Seen> {
        self.inner
            .lock()
            .get(backend)
            .map(|s| s.seen.clone())
            .unwrap_or_default()
    }

    /// How many requests `backend` received.
    pub fn count(&self, backend: &str) -> usize {
        self.inner.lock().get(backend).map_or(0, |s| s.seen.len())
    }

    /// The last body `backend` received.
    pub fn last_body(&self, backend: &str) -> Value {
        self.seen(backend)
            .last()
            .unwrap_or_else(|| panic!("backend `{backend}` received nothing"))
            .body
            .clone()
    }

    /// Waits (yielding to other tasks) until `backend` has received `n` requests.
    pub async fn wait_for(&self, backend: &str, n: usize) {
        for _ in 0..10_000 {
            if self.count(backend) >= n {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!(
            "backend `{backend}` received {} requests, expected {n}",
            self.count(backend)
        );
    }
}

struct Scripted {
    backend: String,
    up: Upstream,
}

impl Transport for Scripted {
    fn send(&self, req: Request<Full<Bytes>>) -> ResponseFuture {
        let backend = self.backend.clone();
        let up = self.up.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let bytes = body.collect().await.expect("infallible").to_bytes();
            let reply = {
                let mut all = up.inner.lock();
                let s = all.entry(backend.clone()).or_default();
                s.seen.push(Seen {
                    url: parts.uri.to_string(),
                    headers: parts.headers,
                    body: serde_json::from_slice(&bytes).expect("upstream body is JSON"),
                    raw: bytes.clone(),
                    at: Instant::now(),
                });
                s.queue.pop_front().or_else(|| s.always.clone())
            };
            let reply = reply
                .unwrap_or_else(|| panic!("backend `{backend}` got a request nobody scripted"));
            tokio::time::sleep(reply.delay).await;
            match reply.head {
                Head::Hang => futures::future::pending().await,
                Head::ConnectError => Err(TransportError {
                    connect: true,
                    message: "tcp connect error: Connection refused (os error 111)".into(),
                }),
                Head::Respond => {
                    let mut r = Response::builder().status(reply.status);
                    for (k, v) in &reply.headers {
                        r = r.header(k.as_str(), v.as_str());
                    }
                    Ok(r.body(body_of(reply.parts)).expect("valid response"))
                }
            }
        })
    }
}

fn body_of(parts: Vec<Part>) -> UpstreamBody {
    let frames = futures::stream::unfold(VecDeque::from(parts), |mut parts| async move {
        loop {
            match parts.pop_front()? {
                Part::Wait(d) => tokio::time::sleep(d).await,
                Part::Hang => futures::future::pending::<()>().await,
                Part::Data(s) => return Some((Ok(Frame::data(Bytes::from(s))), parts)),
                Part::Error(m) => {
                    // A reset connection yields no more frames.
                    parts.clear();
                    return Some((Err::<Frame<Bytes>, BoxError>(m.into()), parts));
                }
            }
        }
    });
    StreamBody::new(frames.boxed()).boxed_unsync()
}

// ---------------------------------------------------------------------------------------------
// Requests and responses

/// A chat request for `model` saying `text`.
pub fn chat_body(model: &str, text: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": text}]})
}

/// A request builder for `POST {path}` with a JSON body.
pub struct Call {
    path: String,
    method: http::Method,
    headers: Vec<(String, String)>,
    body: Bytes,
}

/// `POST /v1/chat/completions` with `body`.
pub fn post(body: Value) -> Call {
    post_to("/v1/chat/completions", body)
}

/// `POST path` with `body`.
pub fn post_to(path: &str, body: Value) -> Call {
    Call {
        path: path.into(),
        method: http::Method::POST,
        headers: vec![("content-type".into(), "application/json".into())],
        body: Bytes::from(body.to_string()),
    }
}

/// `GET path`.
pub fn get(path: &str) -> Call {
    Call {
        path: path.into(),
        method: http::Method::GET,
        headers: vec![],
        body: Bytes::new(),
    }
}

impl Call {
    /// Adds a request header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Replaces the body with raw bytes.
    pub fn raw(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    fn request(self) -> Request<Full<Bytes>> {
        let mut b = Request::builder().method(self.method).uri(self.path);
        for (k, v) in &self.headers {
            b = b.header(k.as_str(), v.as_str());
        }
        b.body(Full::new(self.body)).expect("valid request")
    }

    /// Sends it and reads the whole answer.
    pub async fn send(self, app: &Arc<App>) -> Answer {
        let resp = self.start(app).await;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("body reads").to_bytes();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    /// Sends it and returns the response with its body unread (streams).
    pub async fn start(self, app: &Arc<App>) -> Response<ResBody> {
        handler::handle(app.clone(), self.request()).await
    }
}

/// A whole response.
#[derive(Debug)]
pub struct Answer {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Answer {
    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The backend that answered (`x-llmesh-backend`).
    pub fn backend(&self) -> &str {
        self.header("x-llmesh-backend").unwrap_or("")
    }

    /// The `error.message` of an OpenAI error body.
    pub fn error_message(&self) -> String {
        self.json()["error"]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("not an OpenAI error: {}", self.text()))
            .to_string()
    }

    /// The `data:` payloads of an event-stream body, in order.
    pub fn events(&self) -> Vec<String> {
        sse_data(&self.text())
    }
}

/// The `data:` payloads of an event stream.
pub fn sse_data(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

/// The next data frame of a streaming body, as text (None at the end).
pub async fn next_frame(body: &mut ResBody) -> Option<Result<String, BoxError>> {
    loop {
        match body.frame().await? {
            Ok(f) => {
                if let Ok(d) = f.into_data() {
                    return Some(Ok(String::from_utf8_lossy(&d).into_owned()));
                }
            }
            Err(e) => return Some(Err(e)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Metrics

/// The sum of every sample of `name` whose labels include all of `labels`.
pub fn metric(app: &App, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = String::from_utf8(app.metrics.render()).expect("utf-8 metrics");
    metric_in(&text, name, labels)
}

/// The sum of every sample of `name` in the exposition `text` whose labels include all of
/// `labels`.
pub fn metric_in(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            (n == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.split(',').any(|p| p == format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().expect("numeric sample"))
        })
        .sum()
}

impl Reply {
    /// An answer of `status` with a body of any type, as written.
    pub fn raw(status: u16, content_type: &str, body: String) -> Self {
        Self::new(status, content_type, vec![Part::Data(body)])
    }
}

impl Call {
    /// Sends it with another method.
    pub fn method(mut self, method: http::Method) -> Self {
        self.method = method;
        self
    }
}
