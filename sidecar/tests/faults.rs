//! The fault figures of issue 20 that concern streams, measured on the real sidecar binary over
//! TCP against a fake OpenAI-compatible upstream that speaks HTTP/1.1 and server-sent events:
//!
//! - streams cancelled by the client at random points: every one billed (`499`,
//!   `client_cancelled`), input tokens billed for each, and billed output >= the output tokens the
//!   client actually received, per request (from the access log) and in total (from the metrics);
//! - upstreams killed mid-stream (closed in a chunked body, closed at the end of an
//!   EOF-delimited body, or reset): every client stream ends with the error event in the
//!   client's format (OpenAI chat completions, and Anthropic Messages translated to the OpenAI
//!   backend), never a silent truncation, and `llmesh_stream_errors_total` counts each.
//!
//! [`N`] streams each in CI; `LLMESH_FAULT_SCALE=1000` (or the `#[ignore]`d `*_at_scale` tests)
//! runs the longer figure. Each test prints what it measured. Random points come from a seeded
//! RNG, so a failure reproduces.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Streams per test in CI.
const N: usize = 200;
/// Streams per test in the longer run (`LLMESH_FAULT_SCALE` overrides both).
const N_AT_SCALE: usize = 1_000;
/// Streams in flight at once.
const CONCURRENCY: usize = 16;
/// The longest any wait lasts.
const PATIENCE: Duration = Duration::from_secs(30);
/// The prompt every request sends; the access log's input tokens must be at least 1.
const PROMPT: &str = "Tell me a long story about a lighthouse keeper and the sea.";

fn scale(default: usize) -> usize {
    std::env::var("LLMESH_FAULT_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// ---------------------------------------------------------------------------------------------
// The sidecar binary

struct Sidecar {
    child: Child,
    addr: SocketAddr,
    dir: std::path::PathBuf,
    /// Access-log lines by request id.
    log: Arc<Mutex<HashMap<String, Value>>>,
}

impl Sidecar {
    fn start(upstream: SocketAddr) -> Self {
        static RUN: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "llmesh-faults-{}-{}",
            std::process::id(),
            RUN.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("routes.yaml");
        std::fs::write(
            &config,
            format!(
                r#"apiVersion: llmesh.io/v1alpha1
kind: LLMRoute
metadata: {{name: chat}}
spec:
  retry: {{attempts: 1}}
  circuitBreaker: {{consecutiveFailures: 1000000, cooldown: 1s}}
  timeouts: {{attempt: 20s, firstToken: 20s, streamIdle: 10s, total: 60s}}
  backends:
    - name: up
      provider: openai
      model: gpt-4o-mini
      baseUrl: http://{upstream}/v1
      secretRef: {{name: openai, key: api-key}}
      prices: {{input: "1.00", output: "2.00"}}
"#
            ),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_llmesh-sidecar"))
            .args(["--config", &config.display().to_string()])
            .args(["--listen", &addr.to_string()])
            .args(["--access-log", "on"])
            .env("OPENAI_API_KEY", "sk-upstream-test")
            .env("LLMESH_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let log: Arc<Mutex<HashMap<String, Value>>> = Arc::default();
        let stdout = child.stdout.take().unwrap();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && v["log"] == "access"
                    && let Some(id) = v["request_id"].as_str()
                {
                    lines.lock().insert(id.to_string(), v);
                }
            }
        });
        Self {
            child,
            addr,
            dir,
            log,
        }
    }

    async fn wait_ready(&self) {
        let start = Instant::now();
        loop {
            if let Ok(text) = self.get("/healthz").await
                && text.starts_with("HTTP/1.1 200")
            {
                return;
            }
            assert!(start.elapsed() < PATIENCE, "the sidecar did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn get(&self, path: &str) -> std::io::Result<String> {
        let mut s = TcpStream::connect(self.addr).await?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut buf = Vec::new();
        tokio::time::timeout(PATIENCE, s.read_to_end(&mut buf))
            .await
            .map_err(|_| std::io::Error::other("timed out"))??;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    /// The sum of every sample of `name` whose labels include all of `labels`.
    async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        common::metric_in(&self.get("/metrics").await.unwrap(), name, labels)
    }

    /// Waits until the access log holds a line for each of `ids`.
    async fn logged(&self, ids: &[String]) -> Vec<Value> {
        let start = Instant::now();
        loop {
            {
                let log = self.log.lock();
                if ids.iter().all(|id| log.contains_key(id)) {
                    return ids.iter().map(|id| log[id].clone()).collect();
                }
            }
            if start.elapsed() > PATIENCE {
                let log = self.log.lock();
                let missing: Vec<_> = ids.iter().filter(|id| !log.contains_key(*id)).collect();
                panic!(
                    "{} of {} requests have no access-log line after {PATIENCE:?} (unbilled): {:?}",
                    missing.len(),
                    ids.len(),
                    &missing[..missing.len().min(10)]
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------------------------
// The fake upstream: OpenAI's chat completions stream over HTTP/1.1

/// Requests the upstream has received, by request id (from the prompt).
static RECEIVED: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// Upstream streams still writing, and those that reached their end (the sidecar never hung up).
static OPEN: AtomicUsize = AtomicUsize::new(0);
static RAN_TO_THE_END: AtomicUsize = AtomicUsize::new(0);

/// How the upstream ends a stream, chosen by the client in its prompt
/// (`fault:<how>:<words>:<ms before the answer>:<id>:...`).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Ending {
    /// Words until the sidecar hangs up (at most `words`), then a proper end with usage.
    UntilHangUp,
    /// `words` words, then the connection closed in the middle of a chunked body.
    CloseChunked,
    /// `words` words of a body delimited by the connection's end, then the connection closed
    /// (a clean EOF with no finish, no usage, no `[DONE]`).
    CloseEof,
    /// `words` words, then the connection reset (RST).
    Reset,
}

impl Ending {
    fn name(self) -> &'static str {
        match self {
            Self::UntilHangUp => "until_hang_up",
            Self::CloseChunked => "close_chunked",
            Self::CloseEof => "close_eof",
            Self::Reset => "reset",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "until_hang_up" => Self::UntilHangUp,
            "close_chunked" => Self::CloseChunked,
            "close_eof" => Self::CloseEof,
            "reset" => Self::Reset,
            _ => panic!("unknown ending {s}"),
        }
    }
}

fn event(v: &Value) -> String {
    format!("data: {v}\n\n")
}

fn chunk(delta: Value, finish: Value) -> String {
    event(&json!({
        "id": "chatcmpl-fault", "object": "chat.completion.chunk", "created": 1_700_000_000,
        "model": "gpt-4o-mini", "system_fingerprint": "fp_test",
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]
    }))
}

/// A word of one token, as OpenAI sends it: one per chunk.
fn word(i: usize) -> String {
    chunk(json!({"content": format!(" w{}", i % 10)}), Value::Null)
}

async fn upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                continue;
            };
            let _ = conn.set_nodelay(true);
            tokio::spawn(serve_upstream(conn));
        }
    });
    addr
}

/// Reads one request's head and body; None at the connection's end.
async fn read_request(conn: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Value> {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut b = [0u8; 4096];
        let n = conn.read(&mut b).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&b[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    while buf.len() < head_end + len {
        let mut b = [0u8; 4096];
        let n = conn.read(&mut b).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&b[..n]);
    }
    let body = serde_json::from_slice(&buf[head_end..head_end + len]).unwrap();
    buf.drain(..head_end + len);
    Some(body)
}

async fn serve_upstream(mut conn: TcpStream) {
    let mut buf = Vec::new();
    while let Some(body) = read_request(&mut conn, &mut buf).await {
        // A string from a chat completions client; Messages clients' text may come as parts.
        let content = &body["messages"][0]["content"];
        let plan = content
            .as_str()
            .or_else(|| content[0]["text"].as_str())
            .unwrap_or_default();
        let mut it = plan.split(':').skip(1);
        let ending = Ending::parse(it.next().unwrap());
        let words: usize = it.next().unwrap().parse().unwrap();
        let delay: u64 = it.next().unwrap().parse().unwrap();
        RECEIVED.lock().push(it.next().unwrap().to_string());
        let _open = (ending == Ending::UntilHangUp).then(Open::new);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        let chunked = ending != Ending::CloseEof;
        let head = if chunked {
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        } else {
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
        };
        if conn.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let frame = |e: String| {
            if chunked {
                format!("{:x}\r\n{e}\r\n", e.len())
            } else {
                e
            }
        };
        let role = chunk(json!({"role": "assistant", "content": ""}), Value::Null);
        let events = std::iter::once(role).chain((0..words).map(word));
        for (i, e) in events.enumerate() {
            if conn.write_all(frame(e).as_bytes()).await.is_err() {
                return; // the sidecar hung up
            }
            if ending == Ending::UntilHangUp && i > 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        match ending {
            Ending::UntilHangUp => {
                let usage = json!({
                    "id": "chatcmpl-fault", "object": "chat.completion.chunk",
                    "created": 1_700_000_000, "model": "gpt-4o-mini", "choices": [],
                    "usage": {"prompt_tokens": 14, "completion_tokens": words, "total_tokens": 14 + words}
                });
                let mut end = String::new();
                for e in [
                    chunk(json!({}), json!("stop")),
                    event(&usage),
                    "data: [DONE]\n\n".into(),
                ] {
                    end.push_str(&frame(e));
                }
                end.push_str("0\r\n\r\n");
                if conn.write_all(end.as_bytes()).await.is_err() {
                    return;
                }
                RAN_TO_THE_END.fetch_add(1, Ordering::SeqCst);
            }
            Ending::CloseChunked | Ending::CloseEof => {
                let _ = conn.flush().await;
                return;
            }
            Ending::Reset => {
                #[allow(deprecated)] // the replacement is newer than the tokio this builds with
                let _ = conn.set_linger(Some(Duration::ZERO));
                return;
            }
        }
    }
}

/// Counts an upstream stream in [`OPEN`] while it lives.
struct Open;

impl Open {
    fn new() -> Self {
        OPEN.fetch_add(1, Ordering::SeqCst);
        Self
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        OPEN.fetch_sub(1, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------------------------------------
// The client

fn request(id: &str, ending: Ending, words: usize, delay_ms: u64, close: bool) -> Vec<u8> {
    request_to(Client::Chat, id, ending, words, delay_ms, close)
}

/// The API a client speaks.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Client {
    /// OpenAI's `POST /v1/chat/completions`.
    Chat,
    /// Anthropic's `POST /v1/messages`, translated to the OpenAI backend.
    Messages,
}

fn request_to(
    client: Client,
    id: &str,
    ending: Ending,
    words: usize,
    delay_ms: u64,
    close: bool,
) -> Vec<u8> {
    let plan = format!("fault:{}:{words}:{delay_ms}:{id}:{PROMPT}", ending.name());
    let (path, body) = match client {
        Client::Chat => (
            "/v1/chat/completions",
            json!({"model": "chat", "stream": true, "messages": [{"role": "user", "content": plan}]}),
        ),
        Client::Messages => (
            "/v1/messages",
            json!({"model": "chat", "max_tokens": 1024, "stream": true,
                   "messages": [{"role": "user", "content": plan}]}),
        ),
    };
    let body = body.to_string();
    format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nanthropic-version: 2023-06-01\r\nx-request-id: {id}\r\ncontent-length: {}\r\n{}\r\n{body}",
        body.len(),
        if close { "connection: close\r\n" } else { "" }
    )
    .into_bytes()
}

/// Splits a response into its head and its de-chunked body; `complete` says whether the chunked
/// body reached its terminating `0` chunk.
fn parse_response(raw: &[u8]) -> (String, Vec<u8>, bool) {
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return (String::from_utf8_lossy(raw).into_owned(), Vec::new(), false);
    };
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    let mut rest = &raw[end + 4..];
    if !head.contains("transfer-encoding: chunked") {
        return (head, rest.to_vec(), false);
    }
    let mut body = Vec::new();
    loop {
        let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
            return (head, body, false);
        };
        let size =
            usize::from_str_radix(std::str::from_utf8(&rest[..eol]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            return (head, body, true);
        }
        let data = &rest[eol + 2..];
        if data.len() < size {
            body.extend_from_slice(data); // a partial chunk: what reached the client
            return (head, body, false);
        }
        body.extend_from_slice(&data[..size]);
        rest = data.get(size + 2..).unwrap_or_default();
    }
}

/// The complete `data:` payloads of an event-stream body (a partial last event is not one).
fn complete_events(body: &[u8]) -> Vec<String> {
    named_events(body).into_iter().map(|(_, d)| d).collect()
}

/// The complete events of an event-stream body: each one's `event:` name (empty when it has
/// none) and `data:`.
fn named_events(body: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(body);
    let mut events: Vec<&str> = text.split("\n\n").collect();
    events.pop(); // what follows the last separator is incomplete (or empty)
    events
        .into_iter()
        .filter_map(|e| {
            let (name, data) = match e.strip_prefix("event: ") {
                Some(rest) => rest.split_once('\n')?,
                None => ("", e),
            };
            Some((name.to_string(), data.strip_prefix("data: ")?.to_string()))
        })
        .collect()
}

/// Output tokens in `events`: one per chunk with non-empty content (each word is one token).
fn delivered_tokens(events: &[String]) -> u64 {
    events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|c| !c.is_empty())
        })
        .count() as u64
}

/// Runs `n` jobs, `CONCURRENCY` at a time.
async fn run_all<F, Fut, T>(n: usize, job: F) -> Vec<T>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let sem = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let permit = sem.clone().acquire_owned().await.unwrap();
        let fut = job(i);
        tasks.push(tokio::spawn(async move {
            let out = fut.await;
            drop(permit);
            out
        }));
    }
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Streams cancelled by the client

/// What one cancelled stream's client saw.
struct Cancelled {
    id: String,
    delivered: u64,
    bytes: usize,
}

/// Where a client leaves.
#[derive(Clone, Copy)]
enum Cut {
    /// Once the upstream has the request, before the answer starts (the upstream waits
    /// [`EARLY_DELAY`] before its first byte).
    BeforeTheAnswer,
    /// After this many bytes of the (chunked) body.
    After(usize),
}

const EARLY_DELAY: u64 = 200;

async fn cancel_one(addr: SocketAddr, id: String, cut: Cut) -> Cancelled {
    // Far more words than any cut reads: the stream is still going when the client leaves.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let cut = match cut {
        Cut::BeforeTheAnswer => {
            s.write_all(&request(
                &id,
                Ending::UntilHangUp,
                20_000,
                EARLY_DELAY,
                false,
            ))
            .await
            .unwrap();
            let start = Instant::now();
            while !RECEIVED.lock().contains(&id) {
                assert!(
                    start.elapsed() < PATIENCE,
                    "{id}: never reached the upstream"
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            drop(s);
            return Cancelled {
                id,
                delivered: 0,
                bytes: 0,
            };
        }
        Cut::After(n) => n,
    };
    s.write_all(&request(&id, Ending::UntilHangUp, 20_000, 0, false))
        .await
        .unwrap();
    let mut raw = Vec::new();
    let mut head_len: Option<usize> = None;
    let read = async {
        loop {
            let mut b = [0u8; 512];
            // Reads no further than the cut, so the client received exactly `cut` body bytes.
            let want = match head_len {
                Some(h) => (h + cut).saturating_sub(raw.len()).min(b.len()),
                None => b.len(),
            };
            if head_len.is_some() && want == 0 {
                return;
            }
            let n = s.read(&mut b[..want.max(1)]).await.unwrap();
            assert!(n > 0, "{id}: the sidecar ended the stream before the cut");
            raw.extend_from_slice(&b[..n]);
            if head_len.is_none()
                && let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n")
            {
                head_len = Some(i + 4);
            }
        }
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .unwrap_or_else(|_| panic!("{id}: the stream stalled before the cut"));
    drop(s); // the client goes away mid-stream
    let (head, body, complete) = parse_response(&raw);
    assert!(head.starts_with("http/1.1 200"), "{id}: {head}");
    assert!(!complete, "{id}: the stream ended before the cut");
    let events = complete_events(&body);
    assert!(
        !events.iter().any(|e| e == "[DONE]"),
        "{id}: the stream finished before the cut"
    );
    Cancelled {
        delivered: delivered_tokens(&events),
        bytes: raw.len(),
        id,
    }
}

async fn streams_cancelled_by_the_client(n: usize) {
    let started = Instant::now();
    let sidecar = Sidecar::start(upstream().await);
    sidecar.wait_ready().await;
    let mut rng = fastrand::Rng::with_seed(0x11e5_c4c3);
    // One in ten before the answer starts; the others at random points in the chunked body,
    // from nothing at all to about 40 chunks.
    let cuts: Vec<Cut> = (0..n)
        .map(|_| match rng.usize(0..10) {
            0 => Cut::BeforeTheAnswer,
            _ => Cut::After(rng.usize(0..8_000)),
        })
        .collect();
    let early = cuts
        .iter()
        .filter(|c| matches!(c, Cut::BeforeTheAnswer))
        .count();
    let addr = sidecar.addr;
    let seen = run_all(n, |i| cancel_one(addr, format!("cancel-{i}"), cuts[i])).await;

    let clients_done = started.elapsed();
    let ids: Vec<String> = seen.iter().map(|c| c.id.clone()).collect();
    let log = sidecar.logged(&ids).await;
    let settled = started.elapsed();
    // The sidecar hangs up on the upstream of every cancelled stream: none keeps generating.
    while OPEN.load(Ordering::SeqCst) > 0 {
        assert!(
            started.elapsed() < settled + PATIENCE,
            "{} upstream streams still generating after their clients left",
            OPEN.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let hung_up = started.elapsed();
    assert_eq!(
        RAN_TO_THE_END.load(Ordering::SeqCst),
        0,
        "upstreams ran to the end"
    );
    let (mut billed_out, mut billed_in, mut delivered) = (0u64, 0u64, 0u64);
    for (c, line) in seen.iter().zip(&log) {
        let out = line["output_tokens"].as_u64().unwrap();
        let input = line["input_tokens"].as_u64().unwrap();
        assert_eq!(line["status"], 499, "{}: {line}", c.id);
        assert_eq!(line["cancelled"], true, "{}: {line}", c.id);
        assert_eq!(line["error"], "client_cancelled", "{}: {line}", c.id);
        assert!(input > 0, "{}: no input tokens billed: {line}", c.id);
        assert!(
            out >= c.delivered,
            "{}: billed {out} output tokens, the client received {} ({} bytes read): {line}",
            c.id,
            c.delivered,
            c.bytes
        );
        billed_out += out;
        billed_in += input;
        delivered += c.delivered;
    }

    let cancelled = sidecar
        .metric(
            "llmesh_requests_total",
            &[("status_class", "4xx"), ("error_type", "client_cancelled")],
        )
        .await;
    let all = sidecar.metric("llmesh_requests_total", &[]).await;
    let m_out = sidecar
        .metric("llmesh_tokens_total", &[("type", "output")])
        .await;
    let m_in = sidecar
        .metric("llmesh_tokens_total", &[("type", "input")])
        .await;
    let cost = sidecar.metric("llmesh_cost_microdollars_total", &[]).await;
    assert_eq!(cancelled as usize, n, "cancelled requests counted");
    assert_eq!(all as usize, n, "requests counted");
    assert_eq!(
        m_out as u64, billed_out,
        "output tokens in the metrics and the log"
    );
    assert_eq!(
        m_in as u64, billed_in,
        "input tokens in the metrics and the log"
    );
    // input $1.00 and output $2.00 per million tokens: 1 and 2 micro-dollars a token.
    assert_eq!(cost as u64, billed_in + 2 * billed_out, "cost billed");
    assert!(billed_out >= delivered);
    eprintln!(
        "streams cancelled by the client: N={n} ({early} before the answer started), billed \
         {n}/{n} (499 client_cancelled), output tokens billed {billed_out} >= delivered \
         {delivered} (per request too), input tokens billed {billed_in}, cost {cost} micro-USD; \
         clients done in {:.1}s, all billed {:.2}s later, every upstream hung up on {:.2}s later",
        clients_done.as_secs_f64(),
        (settled - clients_done).as_secs_f64(),
        (hung_up - clients_done).as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stream_cancelled_by_its_client_is_billed_at_least_what_it_delivered() {
    streams_cancelled_by_the_client(scale(N)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the longer figure for docs/benchmarks.md: run with --ignored"]
async fn every_stream_cancelled_by_its_client_is_billed_at_scale() {
    streams_cancelled_by_the_client(scale(N_AT_SCALE)).await;
}

// ---------------------------------------------------------------------------------------------
// Upstreams killed mid-stream

/// What one client saw of a stream whose upstream was killed.
struct Killed {
    id: String,
    client: Client,
    ending: Ending,
    words: usize,
    delivered: u64,
    events: Vec<(String, String)>,
    complete: bool,
    head: String,
}

async fn kill_one(
    addr: SocketAddr,
    id: String,
    client: Client,
    ending: Ending,
    words: usize,
) -> Killed {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&request_to(client, &id, ending, words, 0, true))
        .await
        .unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(PATIENCE, s.read_to_end(&mut raw))
        .await
        .unwrap_or_else(|_| panic!("{id}: the stream did not end"))
        .unwrap();
    let (head, body, complete) = parse_response(&raw);
    let events = named_events(&body);
    let delivered = match client {
        Client::Chat => {
            let data: Vec<String> = events.iter().map(|(_, d)| d.clone()).collect();
            delivered_tokens(&data)
        }
        Client::Messages => events
            .iter()
            .filter_map(|(_, d)| serde_json::from_str::<Value>(d).ok())
            .filter(|v| {
                v["type"] == "content_block_delta"
                    && v["delta"]["text"].as_str().is_some_and(|t| !t.is_empty())
            })
            .count() as u64,
    };
    Killed {
        delivered,
        id,
        client,
        ending,
        words,
        events,
        complete,
        head,
    }
}

async fn upstreams_killed_mid_stream(n: usize) {
    let started = Instant::now();
    let sidecar = Sidecar::start(upstream().await);
    sidecar.wait_ready().await;
    let mut rng = fastrand::Rng::with_seed(0x0b5e_55ed);
    let endings = [Ending::CloseChunked, Ending::CloseEof, Ending::Reset];
    // At least one word, so the stream has started (reached the client) when the kill comes.
    // One client in four speaks Anthropic's Messages API, translated to the OpenAI backend.
    let plans: Vec<(Client, Ending, usize)> = (0..n)
        .map(|_| {
            let client = if rng.usize(0..4) == 0 {
                Client::Messages
            } else {
                Client::Chat
            };
            (
                client,
                endings[rng.usize(0..endings.len())],
                rng.usize(1..40),
            )
        })
        .collect();
    let addr = sidecar.addr;
    let seen = run_all(n, |i| {
        let (client, ending, words) = plans[i];
        kill_one(addr, format!("kill-{i}"), client, ending, words)
    })
    .await;

    let mut by_ending: HashMap<&str, usize> = HashMap::new();
    let (mut messages, mut reset_short, mut reset_lost) = (0, 0, 0);
    for k in &seen {
        let what = format!(
            "{} ({:?}, {:?} after {} words)",
            k.id, k.client, k.ending, k.words
        );
        assert!(k.head.starts_with("http/1.1 200"), "{what}: {}", k.head);
        assert!(
            k.complete,
            "{what}: the HTTP body was cut, not ended: {:?}",
            k.events.last()
        );
        let (name, last) = k.events.last().cloned().unwrap_or_default();
        let v: Value = serde_json::from_str(&last).unwrap_or_else(|_| {
            panic!("{what}: a silent truncation, the last event is {name:?} {last:?}")
        });
        let message = match k.client {
            Client::Chat => {
                assert!(
                    !k.events.iter().any(|(_, d)| d == "[DONE]"),
                    "{what}: [DONE] after a killed upstream"
                );
                assert_eq!(
                    v["error"]["code"], "stream_error",
                    "{what}: the stream ended without an error event; last: {last}"
                );
                &v["error"]["message"]
            }
            Client::Messages => {
                messages += 1;
                assert!(
                    !k.events.iter().any(|(n, _)| n == "message_stop"),
                    "{what}: message_stop after a killed upstream"
                );
                assert!(
                    name == "error" && v["type"] == "error",
                    "{what}: the stream ended without an error event; last: {name} {last}"
                );
                &v["error"]["message"]
            }
        };
        assert!(
            message
                .as_str()
                .is_some_and(|m| m.starts_with("llmesh: the upstream stream failed")),
            "{what}: {last}"
        );
        if k.ending == Ending::Reset {
            // A reset flushes the sidecar's receive queue (RFC 793): words the sidecar had not
            // read yet (past the first 8 KiB read, 32 words here) are lost to it, as to any
            // reader; the stream must still end with the error event.
            assert!(k.delivered <= k.words as u64, "{what}: words made up");
            if k.delivered < k.words as u64 {
                reset_short += 1;
                reset_lost += k.words as u64 - k.delivered;
            }
        } else {
            assert_eq!(
                k.delivered, k.words as u64,
                "{what}: every word sent before the close reaches the client"
            );
        }
        *by_ending.entry(k.ending.name()).or_default() += 1;
    }
    let ids: Vec<String> = seen.iter().map(|k| k.id.clone()).collect();
    let log = sidecar.logged(&ids).await;
    let delivered: u64 = seen.iter().map(|k| k.delivered).sum();
    let mut billed_out = 0;
    for (k, line) in seen.iter().zip(&log) {
        assert!(
            line["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{}: the access log records no error: {line}",
            k.id
        );
        billed_out += line["output_tokens"].as_u64().unwrap();
    }
    let stream_errors = sidecar.metric("llmesh_stream_errors_total", &[]).await;
    let mut reasons = String::new();
    for r in ["reset", "stream_cut", "malformed", "idle_timeout"] {
        let c = sidecar
            .metric("llmesh_stream_errors_total", &[("reason", r)])
            .await;
        if c > 0.0 {
            reasons.push_str(&format!(" {r}={c}"));
        }
    }
    assert_eq!(stream_errors as usize, n, "stream errors counted:{reasons}");
    eprintln!(
        "upstreams killed mid-stream: N={n} ({by_ending:?}; {messages} Messages API clients), \
         {n}/{n} ended with the error event in the client's format, 0 silent truncations, \
         reset streams missing words sent before the reset: {reset_short} ({reset_lost} words), \
         llmesh_stream_errors_total={stream_errors} ({reasons} ), \
         words delivered before the kill {delivered}, output tokens billed {billed_out}, {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stream_whose_upstream_is_killed_ends_with_an_error_event() {
    upstreams_killed_mid_stream(scale(N)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the longer figure for docs/benchmarks.md: run with --ignored"]
async fn every_stream_whose_upstream_is_killed_ends_with_an_error_event_at_scale() {
    upstreams_killed_mid_stream(scale(N_AT_SCALE)).await;
}
