//! The benchmark's own tools, run as `bench/run.py` runs them: `llmesh-bench` (closed and open
//! loop, failure accounting) and `llmesh-hop`, against an upstream in this test that counts what
//! it is sent. A load generator that miscounted, dropped its schedule or hid failures would
//! skew every ratio in docs/benchmarks.md without any other test noticing.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};

/// How long `/slow` takes to answer.
const SLOW: Duration = Duration::from_millis(20);

/// An OpenAI-shaped upstream: `/fail` answers 503 with an error body, `/slow` answers after
/// [`SLOW`], anything else at once. Counts every request it receives.
async fn upstream() -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicU64::new(0));
    let counted = hits.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            tcp.set_nodelay(true).unwrap();
            let hits = counted.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let hits = hits.clone();
                    async move {
                        hits.fetch_add(1, Ordering::SeqCst);
                        let path = req.uri().path().to_string();
                        if path == "/slow" {
                            tokio::time::sleep(SLOW).await;
                        }
                        let (status, body) = if path == "/fail" {
                            (
                                503,
                                r#"{"error":{"message":"overloaded","type":"server_error"}}"#,
                            )
                        } else {
                            (200, r#"{"id":"x","object":"chat.completion","choices":[]}"#)
                        };
                        let resp = Response::builder()
                            .status(status)
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from_static(body.as_bytes())))
                            .unwrap();
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (addr, hits)
}

/// Runs `llmesh-bench <mode...>` at `url` for `secs` seconds, with no warm-up (so every request
/// sent is recorded), and returns its JSON report.
async fn bench(mode: &[&str], url: &str, secs: &str) -> Value {
    let args = [mode, &["--url", url, "--duration", secs, "--warmup", "0"]].concat();
    let out = Command::new(env!("CARGO_BIN_EXE_llmesh-bench"))
        .args(&args)
        .output()
        .await
        .expect("running llmesh-bench");
    assert!(
        out.status.success(),
        "llmesh-bench {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("llmesh-bench prints one JSON object")
}

fn n(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("{key} in {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_counts_every_answer_and_orders_its_percentiles() {
    let (addr, hits) = upstream().await;
    let url = format!("http://{addr}/ok");
    let r = bench(&["closed", "--concurrency", "2"], &url, "1").await;
    assert_eq!(r["mode"], "closed");
    assert_eq!(n(&r, "errors"), 0, "{r}");
    let requests = n(&r, "requests");
    assert!(requests > 0, "{r}");
    // No warm-up, and a worker sends only before the end and waits for the answer: every
    // request the upstream saw is in the report.
    assert_eq!(requests, hits.load(Ordering::SeqCst), "{r}");
    let l = &r["latency_us"];
    assert!(
        n(l, "p50") >= 1 && n(l, "p50") <= n(l, "p99") && n(l, "p99") <= n(l, "max"),
        "{l}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_at_concurrency_1_waits_for_each_answer() {
    let (addr, _) = upstream().await;
    let url = format!("http://{addr}/slow");
    let r = bench(&["closed"], &url, "1").await;
    // One at a time, 20 ms each: at most 50 in a second, and none faster than the upstream.
    assert!(n(&r, "requests") <= 50, "{r}");
    assert!(n(&r["latency_us"], "p50") >= SLOW.as_micros() as u64, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_keeps_its_schedule_whatever_the_answers_take() {
    let (addr, hits) = upstream().await;
    let url = format!("http://{addr}/slow");
    let r = bench(&["open", "--rate", "100"], &url, "1").await;
    assert_eq!(r["mode"], "open");
    // 100 due in the second, each sent on time though the one before has not been answered
    // (a closed loop would manage 50), and each latency includes the upstream's 20 ms.
    assert_eq!(n(&r, "requests") + n(&r, "errors"), 100, "{r}");
    assert_eq!(n(&r, "errors"), 0, "{r}");
    assert_eq!(hits.load(Ordering::SeqCst), 100);
    assert!(n(&r["latency_us"], "p50") >= SLOW.as_micros() as u64, "{r}");
    // Sent when due: a generator that waited for answers would send the last of them about a
    // second late (and the median half a second), and its lag says so.
    assert!(n(&r["lag_us"], "p50") < SLOW.as_micros() as u64, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_counted_by_status_and_kept_out_of_latency() {
    let (addr, hits) = upstream().await;
    let url = format!("http://{addr}/fail");
    let r = bench(&["closed"], &url, "0.3").await;
    let errors = n(&r, "errors");
    assert!(errors > 0, "{r}");
    assert_eq!(errors, hits.load(Ordering::SeqCst), "{r}");
    assert_eq!(n(&r, "requests"), 0, "{r}");
    assert_eq!(n(&r["failures"], "503"), errors, "{r}");
    assert!(r["latency_us"].is_null(), "{r}");
}

/// Starts `llmesh-hop` in front of `upstream` and returns it with its address.
async fn hop(upstream: SocketAddr) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_llmesh-hop"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &upstream.to_string(),
        ])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starting llmesh-hop");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("llmesh-hop prints its address")
        .unwrap()
        .expect("a line");
    let addr = line
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {line}"))
        .to_string();
    (child, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hop_forwards_every_request_and_its_status() {
    let (addr, hits) = upstream().await;
    let (_hop, at) = hop(addr).await;
    let ok = bench(&["closed"], &format!("http://{at}/ok"), "0.5").await;
    assert_eq!(n(&ok, "errors"), 0, "{ok}");
    assert!(n(&ok, "requests") > 0, "{ok}");
    assert_eq!(n(&ok, "requests"), hits.load(Ordering::SeqCst), "{ok}");
    let failed = bench(&["closed"], &format!("http://{at}/fail"), "0.3").await;
    assert!(n(&failed, "errors") > 0, "{failed}");
    assert_eq!(
        n(&failed["failures"], "503"),
        n(&failed, "errors"),
        "the upstream's status comes through: {failed}"
    );
}
