//! The usage-report load: every simulated sidecar also reports spend, as the real one does
//! (`sidecar/src/operator_client.rs`, `UsageSender`): once a second, over a second HTTPS
//! connection (the simulated poll holds the first over HTTP/1.1; the real sidecar multiplexes
//! both over one HTTP/2 connection), `POST /v1/usage` with the pod's token and one entry against one budget, the next
//! report only once the previous one is acknowledged (a failed one is sent again unchanged).
//! What the operator acknowledged is added up, to check `LLMBudget.status.spent` against it.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use llmesh_api::ledger::{Spend, UsageAck, UsageEntry, UsageReport};
use llmesh_api::protocol::USAGE_PATH;
use rustls::pki_types::ServerName;

use crate::sidecars::Target;

/// Micro-dollars each report carries.
pub const REPORT_MICRO_USD: u64 = 1_000;

/// What the reporters saw.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Reports acknowledged.
    pub acked: u64,
    /// Answers other than 200, and failed exchanges (each resent).
    pub failed: u64,
    /// Micro-dollars acknowledged, all reporters together.
    pub micro_usd: u64,
    /// Milliseconds from sending a report to its acknowledgement.
    pub latencies_ms: Vec<f64>,
}

async fn connect(target: &Target) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let tcp = tokio::net::TcpStream::connect(target.addr).await?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::IpAddress(target.addr.ip().into());
    let tls = tokio_rustls::TlsConnector::from(target.tls.clone())
        .connect(name, tcp)
        .await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Every token reports against budget `budget` (period starting `period_start`) for `length`,
/// starting at a random offset within the first second.
pub async fn run(
    target: &Target,
    tokens: &[String],
    budget: &str,
    period_start: u64,
    length: Duration,
) -> Outcome {
    let end = Instant::now() + length;
    let tasks = tokens.iter().enumerate().map(|(i, token)| {
        let (target, token, budget) = (target.clone(), token.clone(), budget.to_string());
        tokio::spawn(async move { reporter(i, &target, &token, &budget, period_start, end).await })
    });
    let mut all = Outcome::default();
    for t in futures::future::join_all(tasks).await {
        let Ok(o) = t else { continue };
        all.acked += o.acked;
        all.failed += o.failed;
        all.micro_usd += o.micro_usd;
        all.latencies_ms.extend(o.latencies_ms);
    }
    all
}

async fn reporter(
    i: usize,
    target: &Target,
    token: &str,
    budget: &str,
    period_start: u64,
    end: Instant,
) -> Outcome {
    let mut out = Outcome::default();
    tokio::time::sleep(Duration::from_millis(fastrand::u64(0..1000))).await;
    let mut seq = 1;
    let mut conn: Option<SendRequest<Full<Bytes>>> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while Instant::now() < end {
        tick.tick().await;
        let report = UsageReport {
            reporter: format!("cpbench-{i}"),
            seq,
            entries: vec![UsageEntry {
                budget: budget.to_string(),
                period_start,
                user: None,
                spend: Spend {
                    micro_usd: REPORT_MICRO_USD,
                    input_tokens: 10,
                    output_tokens: 5,
                    requests: 1,
                },
            }],
        };
        let body = serde_json::to_vec(&report).unwrap_or_default();
        if conn.as_ref().is_none_or(|c| c.is_closed()) {
            conn = connect(target).await.ok();
        }
        let Some(c) = conn.as_mut() else {
            out.failed += 1;
            continue;
        };
        let req = Request::post(USAGE_PATH)
            .header(HOST, target.addr.to_string())
            .header(AUTHORIZATION, format!("Bearer {token}"))
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .expect("a valid request");
        let t = Instant::now();
        let answer = async {
            c.ready().await?;
            let resp = c.send_request(req).await?;
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            anyhow::ensure!(status == StatusCode::OK, "{status}");
            Ok(serde_json::from_slice::<UsageAck>(&body)?)
        };
        match tokio::time::timeout(Duration::from_secs(10), answer).await {
            Ok(Ok(ack)) if ack.seq == seq => {
                out.acked += 1;
                out.micro_usd += REPORT_MICRO_USD;
                out.latencies_ms.push(t.elapsed().as_secs_f64() * 1000.0);
                seq += 1;
            }
            _ => {
                out.failed += 1;
                conn = None;
            }
        }
    }
    out
}
