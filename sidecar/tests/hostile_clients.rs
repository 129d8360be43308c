//! Clients that hold connections without using them, and answers too big to hold many of: the
//! real sidecar binary, with small timeouts so each probe ends in seconds, and its peak resident
//! size read from /proc against the 128 MiB the operator gives it.
//!
//! Every wait here is bounded by [`PATIENCE`]; a probe that is still open past it fails.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;

/// The longest any probe waits for the sidecar to act.
const PATIENCE: Duration = Duration::from_secs(20);
/// The memory limit the operator injects.
const POD_MEMORY: u64 = 128 << 20;
const KEY: &str = "sk-local-test";

const MOCK_ROUTE: &str = r#"
apiVersion: llmesh.io/v1alpha1
kind: LLMRoute
metadata: {name: chat}
spec:
  backends:
    - {name: m, provider: mock, model: mock-1, mock: {outputTokens: 4}}
"#;

/// A sidecar process on a free port, killed when dropped.
struct Sidecar {
    child: Child,
    addr: SocketAddr,
    dir: std::path::PathBuf,
}

impl Sidecar {
    /// Starts the binary with `config`, `flags`, and an open-files limit when given.
    fn start(config: &str, flags: &[&str], open_files: Option<u32>) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "llmesh-hostile-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("routes.yaml");
        std::fs::write(&path, config).unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let bin = env!("CARGO_BIN_EXE_llmesh-sidecar");
        let mut args = vec![
            "--config".to_string(),
            path.display().to_string(),
            "--listen".into(),
            addr.to_string(),
            "--access-log".into(),
            "off".into(),
            "--api-keys-env".into(),
            "LLMESH_TEST_KEYS".into(),
        ];
        args.extend(flags.iter().map(|s| s.to_string()));
        // The limit is set in a shell so the test needs no `unsafe` pre-exec hook; the hard one
        // too, so the sidecar cannot raise its soft limit past it.
        let mut cmd = match open_files {
            Some(n) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!(
                        "ulimit -Sn {n} && ulimit -Hn {n} && exec \"$0\" \"$@\""
                    ))
                    .arg(bin)
                    .args(&args);
                c
            }
            None => {
                let mut c = Command::new(bin);
                c.args(&args);
                c
            }
        };
        let child = cmd
            .env("LLMESH_TEST_KEYS", KEY)
            .env("OPENAI_API_KEY", "sk-upstream-test")
            .env("LLMESH_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let s = Self { child, addr, dir };
        let start = Instant::now();
        loop {
            if let Ok(r) =
                s.try_request("GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                && r.status == 200
            {
                break;
            }
            assert!(start.elapsed() < PATIENCE, "the sidecar did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        s
    }

    /// Sends one raw request with `connection: close` and reads the whole answer.
    fn try_request(&self, raw: &str) -> std::io::Result<Answer> {
        let mut s = TcpStream::connect(self.addr)?;
        s.set_read_timeout(Some(PATIENCE))?;
        s.write_all(raw.as_bytes())?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf)?;
        Ok(Answer::parse(&buf))
    }

    fn request(&self, raw: &str) -> Answer {
        self.try_request(raw).unwrap()
    }

    /// The most memory the process has held resident.
    fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .unwrap()
            .trim()
            .trim_end_matches(" kB")
            .trim()
            .parse()
            .unwrap();
        kib << 10
    }

    fn assert_under_pod_memory(&self, probe: &str) {
        let peak = self.peak_rss();
        eprintln!("{probe}: peak RSS {:.1} MiB", peak as f64 / 1048576.0);
        assert!(
            peak < POD_MEMORY,
            "{probe}: the sidecar peaked at {} MiB resident, over the pod's 128 MiB",
            peak >> 20
        );
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Answer {
    fn parse(buf: &[u8]) -> Self {
        let end = buf
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no HTTP answer: {:?}", String::from_utf8_lossy(buf)));
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let status = head[9..12].parse().unwrap();
        Self {
            status,
            head,
            body: buf[end + 4..].to_vec(),
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            l.strip_prefix(name)
                .and_then(|r| r.strip_prefix(':'))
                .map(str::trim)
        })
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn chat(stream: bool) -> String {
    let body = format!(
        r#"{{"model":"chat","stream":{stream},"messages":[{{"role":"user","content":"Say hello"}}]}}"#
    );
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Whether the sidecar closes `s` within [`PATIENCE`], `send` called every 100 ms meanwhile.
fn closed_within_patience(s: &mut TcpStream, mut send: impl FnMut(&mut TcpStream) -> bool) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    while start.elapsed() < PATIENCE {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
        if !send(s) {
            return true;
        }
    }
    false
}

/// Whether `s` is still open: a read neither ends nor fails within 200 ms.
fn is_open(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    matches!(
        s.read(&mut [0u8; 1]),
        Err(ref e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
    )
}

#[test]
fn slow_and_partial_headers_are_cut_off_after_the_header_timeout() {
    let sc = Sidecar::start(
        MOCK_ROUTE,
        &["--header-read-timeout", "500ms", "--idle-timeout", "0"],
        None,
    );
    // One byte at a time, forever: a header that never ends.
    let mut slow = sc.connect();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-slow: ")
        .unwrap();
    assert!(
        closed_within_patience(&mut slow, |s| s.write_all(b"a").is_ok()),
        "a client sending its headers a byte at a time was never cut off"
    );
    // Half a header block, then silence.
    let mut partial = sc.connect();
    partial
        .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n")
        .unwrap();
    assert!(
        closed_within_patience(&mut partial, |_| true),
        "a partial header block was kept open"
    );
    // A prompt client is unaffected.
    assert_eq!(sc.request(&chat(false)).status, 200);
}

#[test]
fn idle_connections_are_closed_after_the_idle_timeout() {
    let sc = Sidecar::start(
        MOCK_ROUTE,
        &["--header-read-timeout", "0", "--idle-timeout", "400ms"],
        None,
    );
    // Connected, never a byte.
    let mut silent = sc.connect();
    assert!(
        closed_within_patience(&mut silent, |_| true),
        "a connection that never sent a byte was kept open"
    );
    // One request answered, then kept alive and left idle.
    let mut kept = sc.connect();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = kept.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    assert!(
        closed_within_patience(&mut kept, |_| true),
        "an idle keep-alive connection was kept open"
    );
    // A stream in progress is not idle, however quiet: the mock paces its chunks 300 ms apart,
    // longer than half the idle timeout, and the whole stream outlasts it.
    let paced = MOCK_ROUTE.replace("outputTokens: 4", "outputTokens: 4, chunkInterval: 300ms");
    let sc = Sidecar::start(
        &paced,
        &["--header-read-timeout", "0", "--idle-timeout", "400ms"],
        None,
    );
    let r = sc.request(&chat(true));
    assert_eq!(r.status, 200);
    assert!(
        r.text().contains("[DONE]"),
        "the stream was cut: {}",
        r.text()
    );
}

#[test]
fn bodies_that_never_end_get_408_and_hold_no_place_under_max_in_flight() {
    let sc = Sidecar::start(
        MOCK_ROUTE,
        &["--max-in-flight", "20", "--body-read-timeout", "3s"],
        None,
    );
    // 20 chunked bodies: one chunk, then nothing.
    let mut hanging: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut s = sc.connect();
            s.write_all(
                format!("POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n5\r\n{{\"mod\r\n").as_bytes(),
            )
            .unwrap();
            s
        })
        .collect();
    // Let the sidecar read all 20 heads.
    std::thread::sleep(Duration::from_millis(300));
    // Meanwhile generation requests are served: the hanging bodies hold no place.
    for _ in 0..3 {
        let r = sc.request(&chat(false));
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // Each hanging body ends with a 408 naming the flag.
    for s in &mut hanging {
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        let a = Answer::parse(&buf);
        assert_eq!(a.status, 408, "{}", a.text());
        let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
        assert_eq!(v["error"]["code"], "request_timeout");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains("--body-read-timeout"), "{msg}");
    }
    sc.assert_under_pod_memory("20 never-ending bodies");
}

#[test]
fn past_the_connection_cap_idle_connections_are_closed_first() {
    // The issue's probe: 300 idle sockets against a 256-file limit (cap: half of it, 128).
    let sc = Sidecar::start(MOCK_ROUTE, &[], Some(256));
    let mut idle: Vec<TcpStream> = (0..300).map(|_| sc.connect()).collect();
    // Health and an authenticated request still go through, on new connections.
    let h = sc.request("GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    assert_eq!(h.status, 200);
    let r = sc.request(&chat(false));
    assert_eq!(r.status, 200, "{}", r.text());
    // The oldest idle sockets were the ones closed; the newest are still open.
    assert!(
        !is_open(&mut idle[0]),
        "the oldest idle connection is closed first"
    );
    assert!(
        is_open(idle.last_mut().unwrap()),
        "the newest idle connection stays open"
    );
    sc.assert_under_pod_memory("300 idle sockets");
    drop(idle);

    // When every connection is busy, a new one is refused at once with a 503.
    let sc = Sidecar::start(
        MOCK_ROUTE,
        &["--max-connections", "2", "--body-read-timeout", "60s"],
        None,
    );
    let busy: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = sc.connect();
            s.write_all(format!("POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n").as_bytes()).unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let refused = sc.request(&chat(false));
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert!(
        refused.text().contains("--max-connections"),
        "{}",
        refused.text()
    );
    drop(busy);
}

/// A fake OpenAI upstream whose every chat answer is `size` bytes, sent once `together`
/// requests have arrived (so they are read at the same time); `chunked` hides the length.
fn big_answer_upstream(size: usize, together: usize, chunked: bool) -> (SocketAddr, usize) {
    let content = "a".repeat(size - 200);
    let answer = Bytes::from(format!(
        r#"{{"id":"chatcmpl-big","object":"chat.completion","created":0,"model":"gpt-4o-mini","choices":[{{"index":0,"message":{{"role":"assistant","content":"{content}"}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":9,"completion_tokens":1,"total_tokens":10}}}}"#
    ));
    let len = answer.len();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    let arrived = Arc::new((AtomicUsize::new(0), tokio::sync::Notify::new()));
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let (s, _) = listener.accept().await.unwrap();
                let answer = answer.clone();
                let arrived = arrived.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let answer = answer.clone();
                            let arrived = arrived.clone();
                            async move {
                                use http_body_util::BodyExt;
                                let _ = req.into_body().collect().await;
                                if arrived.0.fetch_add(1, Ordering::SeqCst) + 1 >= together {
                                    arrived.1.notify_waiters();
                                } else {
                                    let wait = arrived.1.notified();
                                    if arrived.0.load(Ordering::SeqCst) < together {
                                        wait.await;
                                    }
                                }
                                let body: http_body_util::combinators::BoxBody<
                                    Bytes,
                                    std::convert::Infallible,
                                > = if chunked {
                                    let chunks: Vec<
                                        Result<http_body::Frame<Bytes>, std::convert::Infallible>,
                                    > = (0..answer.len())
                                        .step_by(64 << 10)
                                        .map(|i| {
                                            Ok(http_body::Frame::data(
                                                answer.slice(i..(i + (64 << 10)).min(answer.len())),
                                            ))
                                        })
                                        .collect();
                                    http_body_util::BodyExt::boxed(http_body_util::StreamBody::new(
                                        futures::stream::iter(chunks),
                                    ))
                                } else {
                                    http_body_util::BodyExt::boxed(http_body_util::Full::new(
                                        answer,
                                    ))
                                };
                                let mut r = http::Response::new(body);
                                r.headers_mut().insert(
                                    "content-type",
                                    http::HeaderValue::from_static("application/json"),
                                );
                                Ok::<_, std::convert::Infallible>(r)
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
                });
            }
        });
    });
    (addr, len)
}

fn big_route(upstream: SocketAddr) -> String {
    format!(
        r#"
apiVersion: llmesh.io/v1alpha1
kind: LLMRoute
metadata: {{name: chat}}
spec:
  backends:
    - {{name: a, provider: openai, model: gpt-4o-mini, baseUrl: "http://{upstream}/v1", secretRef: {{name: openai, key: api-key}}}}
  timeouts: {{total: 120s, attempt: 120s, firstToken: 120s}}
"#
    )
}

/// The issue's probe: 8 answers of 50 MB at once. One fits under the 64 MiB default; the
/// others get a 503 naming the flag, and the sidecar stays under the pod's memory limit.
fn eight_big_answers(chunked: bool) {
    const SIZE: usize = 50_000_000;
    let (up, len) = big_answer_upstream(SIZE, 8, chunked);
    let sc = Sidecar::start(&big_route(up), &[], None);
    let answers: Vec<Answer> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8)
            .map(|_| s.spawn(|| sc.request(&chat(false))))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok: Vec<&Answer> = answers.iter().filter(|a| a.status == 200).collect();
    let refused: Vec<&Answer> = answers.iter().filter(|a| a.status == 503).collect();
    assert_eq!(
        (ok.len(), refused.len()),
        (1, 7),
        "statuses: {:?}; first: {}",
        answers.iter().map(|a| a.status).collect::<Vec<_>>(),
        answers[0].text()
    );
    assert_eq!(ok[0].body.len(), len, "the answer arrives whole");
    for r in refused {
        assert_eq!(r.header("retry-after"), Some("1"));
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["error"]["code"], "overloaded");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains("--max-buffered-bytes"), "{msg}");
    }
    // Memory comes back: the next answer fits again.
    let again = sc.request(&chat(false));
    assert_eq!(again.status, 200, "{}", again.text());
    sc.assert_under_pod_memory(if chunked {
        "8 x 50 MB chunked answers"
    } else {
        "8 x 50 MB answers"
    });
}

#[test]
fn eight_50_mb_answers_at_once_stay_under_the_pod_memory_limit() {
    eight_big_answers(false);
}

#[test]
fn eight_50_mb_chunked_answers_at_once_stay_under_the_pod_memory_limit() {
    eight_big_answers(true);
}
