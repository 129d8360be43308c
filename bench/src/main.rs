//! `llmesh-bench`: the load generator behind `bench/run.sh`.
//!
//! - `closed`: N workers each send a request, wait for the whole answer, repeat. With N = 1 this
//!   measures latency without queueing.
//! - `open`: requests start at a fixed rate whatever the answers do, and each latency is measured
//!   from when the request was due, so a slow server cannot hide its queueing (no coordinated
//!   omission).
//!
//! With `--stream` it also records time to first byte of the body and the gaps between body
//! chunks. Prints one JSON object with percentiles in microseconds.
#![forbid(unsafe_code)]

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use tokio::time::Instant;

#[derive(Parser)]
#[command(name = "llmesh-bench", about = "Load generator for llmesh benchmarks")]
struct Args {
    #[command(subcommand)]
    mode: Mode,
    /// URL to POST to.
    #[arg(
        long,
        global = true,
        default_value = "http://127.0.0.1:4000/v1/chat/completions"
    )]
    url: String,
    /// JSON request body.
    #[arg(
        long,
        global = true,
        default_value = r#"{"model":"bench","messages":[{"role":"user","content":"Say hello"}]}"#
    )]
    body: String,
    /// How long to measure.
    #[arg(long, global = true, default_value = "10", value_parser = secs)]
    duration: Duration,
    /// Unmeasured warm-up before measuring.
    #[arg(long, global = true, default_value = "1", value_parser = secs)]
    warmup: Duration,
    /// Record time to first body byte and gaps between body chunks.
    #[arg(long, global = true)]
    stream: bool,
    /// A label copied into the output.
    #[arg(long, global = true, default_value = "")]
    label: String,
}

#[derive(Subcommand)]
enum Mode {
    /// N concurrent workers, each waiting for its answer before the next request.
    Closed {
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
    },
    /// A fixed request rate, latency measured from each request's due time.
    Open {
        #[arg(long)]
        rate: u64,
    },
}

fn secs(s: &str) -> Result<Duration, String> {
    s.trim_end_matches('s')
        .parse::<f64>()
        .map(Duration::from_secs_f64)
        .map_err(|e| format!("{s}: {e}"))
}

struct Stats {
    latency: Histogram<u64>,
    ttfb: Histogram<u64>,
    gap: Histogram<u64>,
    lag: Histogram<u64>,
    errors: u64,
    /// Why requests failed: an HTTP status, `transport` (no response) or `body` (broken body).
    failures: std::collections::BTreeMap<String, u64>,
    chunks: u64,
}

impl Stats {
    fn new() -> Self {
        let h = || Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
        Self {
            latency: h(),
            ttfb: h(),
            gap: h(),
            lag: h(),
            errors: 0,
            failures: Default::default(),
            chunks: 0,
        }
    }
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// One request; records into `stats` when `record` is set. `due` is when it should have started.
async fn one(
    client: &HttpClient,
    args: &Args,
    body: &Bytes,
    due: Instant,
    record: bool,
    stats: &RefCell<Stats>,
) {
    let req = http::Request::post(&args.url)
        .header("content-type", "application/json")
        .body(Full::new(body.clone()))
        .expect("valid request");
    let res = client.request(req).await;
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    let mut gaps: Vec<u64> = Vec::new();
    let failure = match res {
        Ok(resp) if resp.status().is_success() => {
            let mut body = resp.into_body();
            let mut failure = None;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) if f.is_data() => {
                        let now = Instant::now();
                        match first {
                            None => first = Some(now),
                            Some(_) => gaps.push(now.duration_since(last).as_micros() as u64),
                        }
                        last = now;
                    }
                    Ok(_) => {}
                    Err(_) => {
                        failure = Some("body".to_string());
                        break;
                    }
                }
            }
            failure
        }
        Ok(resp) => {
            // Read the error body, as SDKs do, so the connection can be used again.
            let status = resp.status().as_u16().to_string();
            let _ = resp.into_body().collect().await;
            Some(status)
        }
        Err(_) => Some("transport".to_string()),
    };
    if !record {
        return;
    }
    let mut s = stats.borrow_mut();
    if let Some(f) = failure {
        s.errors += 1;
        *s.failures.entry(f).or_default() += 1;
        return;
    }
    let end = Instant::now();
    let _ = s
        .latency
        .record(end.duration_since(due).as_micros().max(1) as u64);
    if args.stream {
        if let Some(f) = first {
            let _ = s
                .ttfb
                .record(f.duration_since(due).as_micros().max(1) as u64);
        }
        s.chunks += gaps.len() as u64 + 1;
        for g in gaps {
            let _ = s.gap.record(g.max(1));
        }
    }
}

fn pct(h: &Histogram<u64>) -> serde_json::Value {
    if h.is_empty() {
        return json!(null);
    }
    json!({
        "p50": h.value_at_quantile(0.50),
        "p90": h.value_at_quantile(0.90),
        "p99": h.value_at_quantile(0.99),
        "p999": h.value_at_quantile(0.999),
        "max": h.max(),
        "mean": (h.mean() * 10.0).round() / 10.0,
    })
}

fn main() {
    let args = Rc::new(Args::parse());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let local = tokio::task::LocalSet::new();
    let out = local.block_on(&rt, run(args.clone()));
    println!("{out}");
}

async fn run(args: Rc<Args>) -> serde_json::Value {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(4096)
        .build(http);
    let body = Bytes::from(args.body.clone());
    let stats = Rc::new(RefCell::new(Stats::new()));
    let start = Instant::now();
    let measure_from = start + args.warmup;
    let end = measure_from + args.duration;
    let (mode, param) = match &args.mode {
        Mode::Closed { concurrency } => {
            let mut workers = Vec::new();
            for _ in 0..*concurrency {
                let (client, args, body, stats) =
                    (client.clone(), args.clone(), body.clone(), stats.clone());
                workers.push(tokio::task::spawn_local(async move {
                    loop {
                        let due = Instant::now();
                        if due >= end {
                            break;
                        }
                        one(&client, &args, &body, due, due >= measure_from, &stats).await;
                    }
                }));
            }
            for w in workers {
                let _ = w.await;
            }
            ("closed", json!({"concurrency": concurrency}))
        }
        Mode::Open { rate } => {
            let interval = Duration::from_nanos(1_000_000_000 / (*rate).max(1));
            // The schedule comes from a thread of its own (tokio's timer has millisecond
            // granularity). Latency is measured from when a request is sent; how late it was
            // sent against the schedule is recorded as `lag_us`, so a generator that falls
            // behind (and would hide latency: coordinated omission) shows in the results.
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
            let (start_std, end_std) = (start.into_std(), end.into_std());
            std::thread::spawn(move || {
                let mut due = start_std;
                while due < end_std {
                    let now = std::time::Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    if tx.send(Instant::from_std(due)).is_err() {
                        break;
                    }
                    due += interval;
                }
            });
            let mut tasks = Vec::new();
            while let Some(due) = rx.recv().await {
                let (client, args, body, stats) =
                    (client.clone(), args.clone(), body.clone(), stats.clone());
                let record = due >= measure_from;
                tasks.push(tokio::task::spawn_local(async move {
                    let sent = Instant::now();
                    if record {
                        let lag = sent.duration_since(due).as_micros().max(1) as u64;
                        let _ = stats.borrow_mut().lag.record(lag);
                    }
                    one(&client, &args, &body, sent, record, &stats).await;
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
            ("open", json!({"rate": rate}))
        }
    };
    let s = stats.borrow();
    let n = s.latency.len();
    json!({
        "label": args.label,
        "mode": mode,
        "params": param,
        "url": args.url,
        "stream": args.stream,
        "requests": n,
        "errors": s.errors,
        "failures": s.failures,
        "rps": (n as f64 / args.duration.as_secs_f64() * 10.0).round() / 10.0,
        "latency_us": pct(&s.latency),
        "ttfb_us": pct(&s.ttfb),
        "chunk_gap_us": pct(&s.gap),
        "lag_us": pct(&s.lag),
        "chunks_per_request": if n > 0 { s.chunks as f64 / n as f64 } else { 0.0 },
    })
}
