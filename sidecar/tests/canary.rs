//! The canary sweep (issue 23): a provider key must never leave the sidecar toward a client, a
//! log or a metric, whatever the upstream sends.
//!
//! The real `llmesh-sidecar` binary runs with `LLMESH_LOG=trace` and its access log on, with one
//! route per case: every provider kind (openai, azure, openrouter, openaiCompatible, anthropic,
//! gemini) holds a canary key in its Secret, one that looks like `sk-...` and one that does not
//! (redacting `sk-` tokens must not be what saves us), and points at a hostile upstream in this
//! test that hands the key back in every way we could think of (see `canary/scenarios.rs`): JSON
//! errors with the key in each field, escaped, non-JSON bodies cut around 300 and 1,000 bytes,
//! redirects, echoed headers and status lines, in-stream errors before and after the first
//! content, malformed and mistyped JSON. Every endpoint that reaches an upstream is called,
//! plain and streaming; then `/v1/models`, `/v1/messages/count_tokens` and `/metrics`. No
//! response (status line, headers, body, also with JSON escapes decoded), no log line and no
//! metric may hold the key or any 8 consecutive characters of it.

#[path = "canary/scenarios.rs"]
mod scenarios;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aho_corasick::AhoCorasick;
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use scenarios::{Fam, Reply, Scenario, Want};

/// The shortest piece of a key that counts as a leak: a cut-off key leaks a part of it.
const WINDOW: usize = 8;

/// Random letters and digits.
fn alnum(n: usize) -> String {
    (0..n).map(|_| fastrand::alphanumeric()).collect()
}

/// The two canaries every provider's Secret holds.
struct Canary {
    keys: [(&'static str, String); 2],
    windows: AhoCorasick,
}

impl Canary {
    fn new() -> Self {
        let keys = [("sk", format!("sk-{}", alnum(48))), ("plain", alnum(39))];
        let mut pieces = Vec::new();
        for (_, k) in &keys {
            for i in 0..=k.len() - WINDOW {
                pieces.push(k[i..i + WINDOW].to_string());
            }
        }
        let windows = AhoCorasick::new(&pieces).expect("valid patterns");
        Self { keys, windows }
    }

    fn key(&self, name: &str) -> &str {
        &self.keys.iter().find(|(n, _)| *n == name).expect("a key").1
    }

    /// The first piece of a key in `text`, read as is and with JSON escapes decoded: the
    /// piece's surroundings, for the failure message.
    fn find(&self, text: &str) -> Option<String> {
        let unescaped = unescape(text);
        for t in [text, unescaped.as_str()] {
            if let Some(m) = self.windows.find(t) {
                let mut from = m.start().saturating_sub(80);
                while !t.is_char_boundary(from) {
                    from -= 1;
                }
                let mut to = (m.end() + 80).min(t.len());
                while !t.is_char_boundary(to) {
                    to += 1;
                }
                return Some(t[from..to].replace('\n', "\\n"));
            }
        }
        None
    }
}

/// `\uXXXX` and `\/` decoded, as any JSON reader of the text would see it.
fn unescape(s: &str) -> String {
    if !s.contains('\\') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(hex) = tail.strip_prefix("\\u").and_then(|t| t.get(..4))
            && let Some(c) = u32::from_str_radix(hex, 16).ok().and_then(char::from_u32)
        {
            out.push(c);
            rest = &tail[6..];
        } else if let Some(t) = tail.strip_prefix("\\/") {
            out.push('/');
            rest = t;
        } else {
            out.push('\\');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

// ---------------------------------------------------------------------------------------------
// Providers, endpoints, cases

#[derive(Clone, Copy, Debug)]
struct Provider {
    kind: &'static str,
    /// The backend's YAML after `name` (model, URL, extras); `{base}` is the case's URL prefix.
    backend: &'static str,
    /// The path appended to `{base}` in `baseUrl`.
    base_path: &'static str,
}

const PROVIDERS: [Provider; 6] = [
    Provider {
        kind: "openai",
        backend: "model: gpt-4o-2024-08-06",
        base_path: "/v1",
    },
    Provider {
        kind: "azure",
        backend: "model: gpt-4o-2024-08-06\n      azure: {deployment: chat-prod, apiVersion: \"2024-10-21\"}",
        base_path: "/openai",
    },
    Provider {
        kind: "openrouter",
        backend: "model: openai/gpt-4o-2024-08-06",
        base_path: "/api/v1",
    },
    Provider {
        kind: "openaiCompatible",
        backend: "model: llama-3.3-70b-instruct\n      prices: {input: \"0.10\", output: \"0.10\"}",
        base_path: "/v1",
    },
    Provider {
        kind: "anthropic",
        backend: "model: claude-sonnet-4-20250514",
        base_path: "/v1",
    },
    Provider {
        kind: "gemini",
        backend: "model: gemini-2.5-flash-001",
        base_path: "/v1beta",
    },
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint {
    Chat,
    Completions,
    Embeddings,
    Responses,
    Messages,
}

const ENDPOINTS: [Endpoint; 5] = [
    Endpoint::Chat,
    Endpoint::Completions,
    Endpoint::Embeddings,
    Endpoint::Responses,
    Endpoint::Messages,
];

impl Endpoint {
    fn path(self) -> &'static str {
        match self {
            Endpoint::Chat => "/v1/chat/completions",
            Endpoint::Completions => "/v1/completions",
            Endpoint::Embeddings => "/v1/embeddings",
            Endpoint::Responses => "/v1/responses",
            Endpoint::Messages => "/v1/messages",
        }
    }

    fn body(self, model: &str, stream: bool) -> Value {
        match self {
            Endpoint::Chat => {
                json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16, "stream": stream})
            }
            Endpoint::Completions => {
                json!({"model": model, "prompt": "hi", "max_tokens": 16, "stream": stream})
            }
            Endpoint::Embeddings => json!({"model": model, "input": "hi"}),
            Endpoint::Responses => {
                json!({"model": model, "input": "hi", "max_output_tokens": 16, "stream": stream})
            }
            Endpoint::Messages => {
                json!({"model": model, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}], "stream": stream})
            }
        }
    }

    fn streams(self) -> bool {
        self != Endpoint::Embeddings
    }
}

/// Whether `p` is called at all for `e` (Anthropic and Gemini serve chat, which the Responses
/// and Messages formats are translated into, but no text completions or embeddings).
fn reaches_upstream(p: &Provider, e: Endpoint) -> bool {
    !matches!(p.kind, "anthropic" | "gemini")
        || matches!(e, Endpoint::Chat | Endpoint::Responses | Endpoint::Messages)
}

/// The wire format `p` answers `e` in.
fn family(p: &Provider, e: Endpoint) -> Fam {
    match p.kind {
        "anthropic" => Fam::Anthropic,
        "gemini" => Fam::Gemini,
        "openai" if e == Endpoint::Responses => Fam::Responses,
        _ => Fam::OpenAi,
    }
}

/// One request through the sidecar, on a route of its own (so no circuit opened by one case
/// hides the upstream from the next).
#[derive(Clone, Debug)]
struct Case {
    id: usize,
    scenario: usize,
    provider: Provider,
    provider_index: usize,
    endpoint: Endpoint,
    stream: bool,
    key: &'static str,
    fam: Fam,
}

impl Case {
    /// The route: one per (scenario, provider).
    fn model(&self) -> String {
        format!("s{}p{}", self.scenario, self.provider_index)
    }

    /// The `x-llmesh-task` that picks this case's backend.
    fn task(&self) -> String {
        format!("t{}", self.id)
    }

    fn describe(&self, scenarios: &[Scenario]) -> String {
        format!(
            "case c{} [{} | {} {}{} | key {}]",
            self.id,
            scenarios[self.scenario].name,
            self.provider.kind,
            self.endpoint.path(),
            if self.stream { " stream" } else { "" },
            self.key,
        )
    }
}

/// Every (scenario, provider, endpoint, plain or streaming, key) that reaches an upstream.
fn cases(scenarios: &[Scenario]) -> Vec<Case> {
    let mut out = Vec::new();
    for (si, s) in scenarios.iter().enumerate() {
        for (pi, p) in PROVIDERS.iter().enumerate() {
            for e in ENDPOINTS {
                let fam = family(p, e);
                if !reaches_upstream(p, e) || s.reply(fam, "probe").is_none() {
                    continue;
                }
                let streams: &[bool] = match s.want {
                    Want::Stream if !e.streams() => &[],
                    Want::Stream => &[true],
                    Want::Plain => &[false],
                    Want::Any if e.streams() => &[false, true],
                    Want::Any => &[false],
                };
                for &stream in streams {
                    for key in ["sk", "plain"] {
                        out.push(Case {
                            id: out.len(),
                            scenario: si,
                            provider: *p,
                            provider_index: pi,
                            endpoint: e,
                            stream,
                            key,
                            fam,
                        });
                    }
                }
            }
        }
    }
    out
}

/// One route per (scenario, provider): a config file holds at most 1,024 documents. Each case
/// has a backend of its own, chosen by its `x-llmesh-task` header, so no circuit opened by one
/// case (a 401 takes a backend out for a minute) hides the upstream from another.
fn config(cases: &[Case], port: u16) -> String {
    let mut routes: BTreeMap<String, Vec<&Case>> = BTreeMap::new();
    for c in cases {
        routes.entry(c.model()).or_default().push(c);
    }
    let mut y = String::new();
    for (name, cs) in routes {
        y.push_str(&format!(
            "---\napiVersion: llmesh.io/v1alpha1\nkind: LLMRoute\nmetadata: {{name: {name}}}\nspec:\n  strategy: rules\n  fallbacks: []\n  retry: {{attempts: 2, backoff: 1ms, maxBackoff: 1ms, maxRetryAfter: 1s}}\n  timeouts: {{attempt: 20s, firstToken: 20s, streamIdle: 10s, total: 30s}}\n  backends:\n"
        ));
        for c in &cs {
            y.push_str(&format!(
                "    - name: b{id}\n      provider: {kind}\n      {backend}\n      baseUrl: http://127.0.0.1:{port}/c{id}{base}\n      secretRef: {{name: provider-keys, key: {key}}}\n",
                id = c.id,
                kind = c.provider.kind,
                backend = c.provider.backend,
                base = c.provider.base_path,
                key = c.key,
            ));
        }
        y.push_str("  rules:\n");
        for c in &cs {
            y.push_str(&format!(
                "    - {{name: r{id}, match: {{tasks: [t{id}]}}, backends: [b{id}]}}\n",
                id = c.id
            ));
        }
    }
    y
}

fn secrets(canary: &Canary) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: provider-keys}}\nstringData:\n  sk: {}\n  plain: {}\n",
        canary.key("sk"),
        canary.key("plain")
    )
}

// ---------------------------------------------------------------------------------------------
// The hostile upstream

/// What the upstream received, per case: requests, and how many carried the case's key in a
/// credential header (proof the canary really is the key the sidecar holds).
#[derive(Default)]
struct Seen {
    requests: HashMap<usize, (u32, u32)>,
}

struct Upstream {
    port: u16,
    seen: Arc<Mutex<Seen>>,
}

async fn upstream(
    cases: Arc<Vec<Case>>,
    scenarios: Arc<Vec<Scenario>>,
    canary: Arc<Canary>,
) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                continue;
            };
            let (cases, scenarios, canary, seen) =
                (cases.clone(), scenarios.clone(), canary.clone(), s.clone());
            tokio::spawn(async move {
                let _ = serve(conn, &cases, &scenarios, &canary, &seen).await;
            });
        }
    });
    Upstream { port, seen }
}

/// Answers one request on `conn`, then closes it.
async fn serve(
    mut conn: TcpStream,
    cases: &[Case],
    scenarios: &[Scenario],
    canary: &Canary,
    seen: &Mutex<Seen>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let path = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .unwrap_or("/")
        .to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let id: Option<usize> = path
        .strip_prefix("/c")
        .and_then(|p| p.split('/').next())
        .and_then(|n| n.parse().ok());
    let Some(case) = id.and_then(|i| cases.get(i)) else {
        conn.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            .await?;
        return Ok(());
    };
    let key = canary.key(case.key);
    let credential = headers.iter().any(|(k, v)| {
        matches!(
            k.as_str(),
            "authorization" | "api-key" | "x-api-key" | "x-goog-api-key"
        ) && v.trim_start_matches("Bearer ") == key
    });
    {
        let mut s = seen.lock();
        let e = s.requests.entry(case.id).or_default();
        e.0 += 1;
        e.1 += u32::from(credential);
    }
    let reply: Reply = scenarios[case.scenario]
        .reply(case.fam, key)
        .expect("cases only use scenarios with an answer");
    let mut out = format!("HTTP/1.1 {} {}\r\n", reply.status, reply.reason).into_bytes();
    for (k, v) in &reply.headers {
        out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    out.extend_from_slice(
        format!(
            "content-length: {}\r\nconnection: close\r\n\r\n",
            reply.body.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(&reply.body);
    conn.write_all(&out).await?;
    conn.shutdown().await
}

// ---------------------------------------------------------------------------------------------
// The sidecar process and its clients

struct Sidecar {
    child: tokio::process::Child,
    port: u16,
    stdout: PathBuf,
    stderr: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Sidecar {
    async fn start(dir: &Path) -> Self {
        let port = free_port();
        let stdout = dir.join("stdout.log");
        let stderr = dir.join("stderr.log");
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_llmesh-sidecar"))
            .env("LLMESH_LOG", "trace")
            .env_remove("OPENAI_API_KEY")
            .args(["--config"])
            .arg(dir.join("routes.yaml"))
            .arg("--secrets")
            .arg(dir.join("secrets.yaml"))
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--access-log",
                "on",
                "--shutdown-grace",
                "5s",
            ])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).expect("stdout file"))
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .kill_on_drop(true)
            .spawn()
            .expect("start llmesh-sidecar");
        let sc = Self {
            child,
            port,
            stdout,
            stderr,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(t) = sc.get("/readyz").await
                && t.starts_with("HTTP 200")
            {
                return sc;
            }
            assert!(
                Instant::now() < deadline,
                "the sidecar did not become ready:\n{}",
                std::fs::read_to_string(&sc.stderr).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn get(&self, path: &str) -> Result<String, String> {
        self.call(http::Method::GET, path, None, "probe", None)
            .await
    }

    /// One request; its whole response as text: status line, headers, body.
    async fn call(
        &self,
        method: http::Method,
        path: &str,
        body: Option<&Value>,
        request_id: &str,
        task: Option<&str>,
    ) -> Result<String, String> {
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("http://127.0.0.1:{}{path}", self.port))
            .header("x-request-id", request_id);
        if let Some(t) = task {
            req = req.header("x-llmesh-task", t);
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(
                body.map(Value::to_string).unwrap_or_default(),
            )))
            .map_err(|e| e.to_string())?;
        let answer = async {
            let resp = client.request(req).await.map_err(|e| format!("{e:?}"))?;
            let reason = resp
                .extensions()
                .get::<hyper::ext::ReasonPhrase>()
                .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned())
                .unwrap_or_default();
            let mut text = format!("HTTP {} {reason}\n", resp.status());
            for (k, v) in resp.headers() {
                text.push_str(&format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())));
            }
            text.push('\n');
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("body: {e}"))?
                .to_bytes();
            text.push_str(&String::from_utf8_lossy(&body));
            Ok(text)
        };
        tokio::time::timeout(Duration::from_secs(40), answer)
            .await
            .map_err(|_| "no answer within 40 s".to_string())?
    }

    /// SIGTERM (the sidecar flushes its access log on the way out), then the logs.
    async fn stop(mut self) -> (String, String) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        if tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        let read =
            |p: &Path| String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned();
        (read(&self.stdout), read(&self.stderr))
    }
}

// ---------------------------------------------------------------------------------------------
// The sweep

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_piece_of_a_provider_key_reaches_a_client_a_log_or_a_metric() {
    let t0 = Instant::now();
    let canary = Arc::new(Canary::new());
    // The detector itself: whole keys, cut-off keys and escaped keys are found, clean text is not.
    for (_, k) in &canary.keys {
        assert!(canary.find(&format!("x{k}y")).is_some());
        assert!(
            canary
                .find(&format!("cut here: x{}", &k[..WINDOW]))
                .is_some()
        );
        assert!(canary.find(&scenarios::escaped(k)).is_some());
        assert!(canary.find(&k[..WINDOW - 1]).is_none());
    }

    let scenarios = Arc::new(scenarios::all());
    let cases = Arc::new(cases(&scenarios));
    let up = upstream(cases.clone(), scenarios.clone(), canary.clone()).await;
    let dir = std::env::temp_dir().join(format!("llmesh-sweep-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::File::create(dir.join("routes.yaml"))
        .and_then(|mut f| f.write_all(config(&cases, up.port).as_bytes()))
        .expect("routes.yaml");
    std::fs::write(dir.join("secrets.yaml"), secrets(&canary)).expect("secrets.yaml");
    let sc = Arc::new(Sidecar::start(&dir).await);

    // Every case, 16 at a time.
    let answers: Vec<(usize, Result<String, String>)> =
        futures::stream::iter(cases.iter().cloned())
            .map(|c| {
                let sc = sc.clone();
                async move {
                    let body = c.endpoint.body(&c.model(), c.stream);
                    let r = sc
                        .call(
                            http::Method::POST,
                            c.endpoint.path(),
                            Some(&body),
                            &format!("req-c{}", c.id),
                            Some(&c.task()),
                        )
                        .await;
                    (c.id, r)
                }
            })
            .buffer_unordered(16)
            .collect()
            .await;

    // The endpoints that never call an upstream, and what the sidecar shows about itself.
    let mut extra = Vec::new();
    for path in ["/v1/models", "/v1/models/s0p0", "/readyz", "/healthz"] {
        extra.push((path.to_string(), sc.get(path).await));
    }
    let count = json!({"model": "s0p0", "messages": [{"role": "user", "content": "hi"}]});
    extra.push((
        "/v1/messages/count_tokens".into(),
        sc.call(
            http::Method::POST,
            "/v1/messages/count_tokens",
            Some(&count),
            "count",
            None,
        )
        .await,
    ));
    let metrics = sc.get("/metrics").await;
    extra.push(("/metrics".into(), metrics.clone()));

    let sc = Arc::into_inner(sc).expect("no request in flight");
    let (stdout, stderr) = sc.stop().await;
    let elapsed = t0.elapsed();

    // Findings.
    let mut hollow = Vec::new();
    let mut broken = Vec::new();
    // Scenario -> the cases that leaked, and one example.
    let mut leaked: BTreeMap<usize, (Vec<&Case>, String)> = BTreeMap::new();
    let seen = up.seen.lock();
    for (id, answer) in &answers {
        let c = &cases[*id];
        match seen.requests.get(id) {
            Some((_, with_key)) if *with_key > 0 => {}
            other => hollow.push(format!(
                "{} (upstream saw {other:?})",
                c.describe(&scenarios)
            )),
        }
        match answer {
            Ok(text) => {
                if let Some(ctx) = canary.find(text) {
                    let e = leaked.entry(c.scenario).or_insert_with(|| {
                        (
                            Vec::new(),
                            format!("{} -> ...{ctx}...", c.describe(&scenarios)),
                        )
                    });
                    e.0.push(c);
                }
            }
            Err(e) => broken.push(format!("{}: {e}", c.describe(&scenarios))),
        }
    }
    drop(seen);
    let mut elsewhere = Vec::new();
    for (path, answer) in &extra {
        match answer {
            Ok(text) => {
                if let Some(ctx) = canary.find(text) {
                    elsewhere.push(format!("{path}: ...{ctx}..."));
                }
            }
            Err(e) => broken.push(format!("{path}: {e}")),
        }
    }
    for (name, text) in [
        ("stdout (access log)", &stdout),
        ("stderr (trace log)", &stderr),
    ] {
        for line in text.lines() {
            if let Some(ctx) = canary.find(line) {
                elsewhere.push(format!("{name} line: ...{ctx}..."));
            }
        }
    }
    let access_lines = stdout
        .lines()
        .filter(|l| l.contains("\"log\":\"access\""))
        .count();
    eprintln!(
        "canary sweep: {} scenarios, {} cases, {} access-log lines, {} KiB of trace log, {:.1?}",
        scenarios.len(),
        cases.len(),
        access_lines,
        stderr.len() / 1024,
        elapsed
    );

    assert!(
        broken.is_empty(),
        "requests without an answer:\n{}",
        broken.join("\n")
    );
    assert!(
        hollow.is_empty(),
        "cases whose upstream never received the canary key (they prove nothing):\n{}",
        hollow.join("\n")
    );
    assert!(
        access_lines >= cases.len(),
        "the access log has {access_lines} lines for {} requests: it was not flushed",
        cases.len()
    );
    assert!(
        metrics
            .as_deref()
            .is_ok_and(|m| m.contains("llmesh_upstream_errors_total")),
        "metrics without upstream errors: the sweep did not fail anything"
    );
    if !leaked.is_empty() || !elsewhere.is_empty() {
        let mut report = String::new();
        let total: usize = leaked.values().map(|(cs, _)| cs.len()).sum();
        report.push_str(&format!(
            "a provider key (or {WINDOW}+ characters of it) left the sidecar: {total} client response(s) in {} scenario(s), {} log line(s) or other pages\n",
            leaked.len(),
            elsewhere.len()
        ));
        for (si, (cs, example)) in &leaked {
            let all = cases.iter().filter(|c| c.scenario == *si).count();
            report.push_str(&format!(
                "\n{}: {} of {all} cases leak: {}\n  e.g. {example}\n",
                scenarios[*si].name,
                cs.len(),
                where_(cs)
            ));
        }
        for e in elsewhere.iter().take(20) {
            report.push_str(&format!("\n{e}"));
        }
        report.push_str(&format!("\nlogs kept in {}", dir.display()));
        panic!("{report}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The leaking cases, compactly: `openai[chat chat~ responses] azure[...]` (`~`: streaming),
/// with the keys that leaked.
fn where_(cases: &[&Case]) -> String {
    let mut by: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    let mut keys: Vec<&str> = Vec::new();
    for c in cases {
        let e = format!(
            "{}{}",
            c.endpoint.path().trim_start_matches("/v1/"),
            if c.stream { "~" } else { "" }
        );
        let list = by.entry(c.provider_index).or_default();
        if !list.contains(&e) {
            list.push(e);
        }
        if !keys.contains(&c.key) {
            keys.push(c.key);
        }
    }
    let mut out: Vec<String> = by
        .into_iter()
        .map(|(pi, es)| format!("{}[{}]", PROVIDERS[pi].kind, es.join(" ")))
        .collect();
    out.push(format!("(keys: {})", keys.join("+")));
    out.join(" ")
}
