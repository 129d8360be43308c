//! Operator mode: the sidecar long-polls the llmesh operator for its snapshot (protocol in
//! `llmesh_api::protocol`) over TLS, authenticated with the pod's projected service-account
//! token, and keeps the last good snapshot on disk.
//!
//! - At start, a snapshot on disk is served at once (marked stale) so a restarted sidecar
//!   serves while the operator is away; without one the sidecar is not ready (`/readyz`) and
//!   says so in its log.
//! - Each `200` is applied, then written to disk (mode 0600, atomically); a `304` confirms the
//!   current one. The disk copy is never deleted: an unreachable operator means "keep serving".
//! - Polls ask for deltas (`delta=1`): an edit of one route sends that route. A delta is applied
//!   to the snapshot served, and kept only if the result has exactly the version the operator
//!   announced; otherwise the next poll asks for the whole snapshot.
//! - Failures back off exponentially (0.5 s to 4 s, equal jitter) and are logged when the state
//!   changes, not on every retry. The token file is re-read on every poll (the kubelet rotates
//!   it). Neither the token nor any key is ever logged.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, RETRY_AFTER};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use llmesh_api::ledger::{RouteShare, UsageAck, UsageReport};
use llmesh_api::protocol::{
    self, CLIENT_TIMEOUT, DELTA_BASE_HEADER, ErrorBody, USAGE_PATH, snapshot_query,
};
use llmesh_api::{Snapshot, SnapshotDelta};

use crate::app::App;
use crate::runtime::Runtime;
use crate::usage::UsageReports;

/// Largest snapshot accepted (a namespace with hundreds of routes stays far below).
const MAX_SNAPSHOT_BYTES: usize = 64 * 1024 * 1024;
const BACKOFF_MIN: Duration = Duration::from_millis(500);
/// The longest wait between failed polls. It bounds how long a sidecar takes to notice that
/// the operator is back: with 30 s, an edit made during a 30 s outage reached sidecars up to
/// 21 s after the operator returned. With equal jitter the waits at the cap spread over
/// [2 s, 4 s], so a fleet's reconnects still arrive over two seconds, not at once
/// (`llmesh-cpbench --outage`; docs/benchmarks.md, "Reconnect after an operator outage").
const BACKOFF_MAX: Duration = Duration::from_secs(4);

/// Where the operator is and how to reach it.
#[derive(Clone, Debug)]
pub struct OperatorSource {
    /// `https://HOST:PORT` of the operator's config server.
    pub url: String,
    /// PEM of the CA that signs the operator's certificate.
    pub ca_pem: String,
    /// The projected service-account token (audience `llmesh`).
    pub token_file: PathBuf,
    /// Where the last good snapshot is kept.
    pub cache_path: PathBuf,
}

/// A setup problem, reported before serving.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SetupError(String);

/// The HTTPS client to the operator: one connection, HTTP/2 when the operator offers it (it
/// does), so the held poll and the usage reports share it.
pub type OperatorClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A client trusting `ca_pem` only.
pub fn client(ca_pem: &str) -> Result<OperatorClient, SetupError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| SetupError(format!("the operator CA is not PEM: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| SetupError(format!("the operator CA is not a usable certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(SetupError(
            "the operator CA holds no certificate: pass the PEM with --operator-ca FILE or LLMESH_OPERATOR_CA_PEM".into(),
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SetupError(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_all_versions()
        .build();
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .build(connector))
}

/// Reads a snapshot saved by a previous run, if there is a readable one.
pub fn load_cache(path: &Path) -> Option<Snapshot> {
    let bytes = std::fs::read(path).ok()?;
    match serde_json::from_slice::<Snapshot>(&bytes) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "the snapshot on disk is unreadable; ignoring it");
            None
        }
    }
}

fn save_cache(path: &Path, body: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        // It holds provider keys.
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(body)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Serves the snapshot on disk, if any, and says what the sidecar is doing. Returns the
/// snapshot it serves.
pub fn start_from_disk(app: &App, source: &OperatorSource) -> Option<Snapshot> {
    match load_cache(&source.cache_path) {
        Some(snapshot) => {
            app.apply(&snapshot);
            app.set_stale(true);
            // Its age is that of the file: when the operator last sent a new snapshot.
            if let Some(written) = std::fs::metadata(&source.cache_path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            {
                app.confirmed_at(written.as_secs());
            }
            app.metrics.reloads.with_label_values(&["ok"]).inc();
            tracing::warn!(
                version = %snapshot.version,
                routes = snapshot.routes.len(),
                path = %source.cache_path.display(),
                "serving the last snapshot from disk (possibly stale) until the operator at {} answers",
                source.url
            );
            Some(snapshot)
        }
        None => {
            tracing::warn!(
                operator = %source.url,
                path = %source.cache_path.display(),
                "no snapshot on disk: not ready (/readyz answers 503) until the operator sends one"
            );
            None
        }
    }
}

struct Backoff(Duration);

impl Backoff {
    fn reset(&mut self) {
        self.0 = BACKOFF_MIN;
    }

    /// The next wait, with equal jitter, doubling up to the cap.
    fn next(&mut self) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(BACKOFF_MAX);
        let half = d / 2;
        half + Duration::from_millis(fastrand::u64(0..=half.as_millis() as u64))
    }
}

/// What went wrong on the last poll, so the log says it once per change.
#[derive(PartialEq, Eq)]
enum Trouble {
    None,
    Token(String),
    Unreachable(String),
    Refused(u16, String),
    Invalid(String),
}

/// Polls the operator forever, applying each new snapshot to `app`; `served` is what it
/// serves now (from disk), the base of the first delta.
pub async fn run(
    app: Arc<App>,
    source: OperatorSource,
    mut served: Option<Snapshot>,
    client: OperatorClient,
) {
    let mut backoff = Backoff(BACKOFF_MIN);
    let mut trouble = Trouble::None;
    let mut whole = false;
    loop {
        let (next, wait) = poll_once(&app, &client, &source, &mut served, &mut whole).await;
        // Snapshot freshness for `llmesh_config_age_seconds` and `llmesh_config_stale`.
        match next {
            Trouble::None => app.confirmed_at(app.clock.unix_now()),
            _ => app.source_away(),
        }
        if next != trouble {
            let version = served.as_ref().map(|s| s.version.as_str());
            report(&app, &next, version, &source);
            trouble = next;
        }
        match wait {
            Wait::Now => backoff.reset(),
            Wait::Backoff => tokio::time::sleep(backoff.next()).await,
            Wait::For(d) => tokio::time::sleep(d).await,
        }
    }
}

enum Wait {
    Now,
    Backoff,
    For(Duration),
}

fn report(app: &App, t: &Trouble, version: Option<&str>, source: &OperatorSource) {
    let serving = match version {
        Some(v) if app.stale.load(std::sync::atomic::Ordering::Relaxed) => {
            format!("serving snapshot {v} from disk")
        }
        Some(v) => format!("serving snapshot {v}"),
        None => "nothing to serve yet (not ready)".to_string(),
    };
    match t {
        Trouble::None => tracing::info!(operator = %source.url, "connected to the operator"),
        Trouble::Token(e) => {
            tracing::error!(path = %source.token_file.display(), error = %e, "cannot read the service-account token; {serving}")
        }
        Trouble::Unreachable(e) => {
            tracing::warn!(operator = %source.url, error = %e, "operator unreachable, retrying with backoff; {serving}")
        }
        Trouble::Refused(code, m) => {
            tracing::error!(operator = %source.url, status = code, reason = %m, "the operator refused this sidecar; {serving}")
        }
        Trouble::Invalid(e) => {
            tracing::error!(operator = %source.url, error = %e, "the operator sent an unreadable snapshot; {serving}")
        }
    }
}

/// One poll. `whole` asks for the whole snapshot rather than a delta (after a refused delta).
async fn poll_once(
    app: &App,
    client: &OperatorClient,
    source: &OperatorSource,
    served: &mut Option<Snapshot>,
    whole: &mut bool,
) -> (Trouble, Wait) {
    let token = match std::fs::read_to_string(&source.token_file) {
        Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
        Ok(_) => return (Trouble::Token("the file is empty".into()), Wait::Backoff),
        Err(e) => return (Trouble::Token(e.to_string()), Wait::Backoff),
    };
    let uri = format!(
        "{}{}",
        source.url.trim_end_matches('/'),
        snapshot_query(served.as_ref().map(|s| s.version.as_str()), !*whole)
    );
    let req = match Request::get(&uri)
        .header(AUTHORIZATION, format!("Bearer {token}"))
        .body(Full::new(Bytes::new()))
    {
        Ok(r) => r,
        Err(e) => {
            return (
                Trouble::Invalid(format!("bad operator URL {uri}: {e}")),
                Wait::Backoff,
            );
        }
    };
    let resp = match tokio::time::timeout(CLIENT_TIMEOUT, client.request(req)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return (Trouble::Unreachable(error_chain(&e)), Wait::Backoff),
        Err(_) => {
            return (
                Trouble::Unreachable("no answer in time".into()),
                Wait::Backoff,
            );
        }
    };
    let status = resp.status();
    let retry_after = protocol::retry_after(
        resp.headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok()),
    );
    let is_delta = resp.headers().contains_key(DELTA_BASE_HEADER);
    let body = match tokio::time::timeout(
        CLIENT_TIMEOUT,
        Limited::new(resp.into_body(), MAX_SNAPSHOT_BYTES).collect(),
    )
    .await
    {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) => {
            return (
                Trouble::Unreachable(format!("reading the answer: {e}")),
                Wait::Backoff,
            );
        }
        Err(_) => {
            return (
                Trouble::Unreachable("the answer stalled".into()),
                Wait::Backoff,
            );
        }
    };
    match status {
        StatusCode::OK if is_delta => match apply_delta(served.as_ref(), &body) {
            Ok(snapshot) => {
                app.metrics.deltas.with_label_values(&["applied"]).inc();
                let bytes = serde_json::to_vec(&snapshot).unwrap_or_default();
                serve(app, source, served, snapshot, &bytes, true);
                (Trouble::None, Wait::Now)
            }
            Err(e) => {
                // Nothing is lost: the snapshot served stays, and the whole new one is next.
                app.metrics.deltas.with_label_values(&["refused"]).inc();
                tracing::warn!(error = %e, "refused a snapshot delta from the operator; asking for the whole snapshot");
                *whole = true;
                (Trouble::None, Wait::Now)
            }
        },
        StatusCode::OK => match serde_json::from_slice::<Snapshot>(&body) {
            Ok(snapshot) => {
                serve(app, source, served, snapshot, &body, false);
                *whole = false;
                (Trouble::None, Wait::Now)
            }
            Err(e) => {
                app.metrics.reloads.with_label_values(&["invalid"]).inc();
                (Trouble::Invalid(e.to_string()), Wait::Backoff)
            }
        },
        StatusCode::NOT_MODIFIED => {
            if app.stale.swap(false, std::sync::atomic::Ordering::Relaxed) {
                tracing::info!("the operator confirms the snapshot from disk is current");
            }
            (Trouble::None, Wait::Now)
        }
        code => {
            let message = serde_json::from_slice::<ErrorBody>(&body)
                .map(|b| b.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).chars().take(300).collect());
            let wait = match (code, retry_after) {
                (StatusCode::SERVICE_UNAVAILABLE, Some(d)) => Wait::For(d),
                _ => Wait::Backoff,
            };
            (Trouble::Refused(code.as_u16(), message), wait)
        }
    }
}

/// The snapshot a delta (`body`) makes of the one served, checked against its version.
fn apply_delta(served: Option<&Snapshot>, body: &[u8]) -> Result<Snapshot, String> {
    let delta: SnapshotDelta =
        serde_json::from_slice(body).map_err(|e| format!("unreadable delta: {e}"))?;
    let base = served.ok_or("a delta came, but this sidecar serves no snapshot")?;
    delta.apply(base).map_err(|e| e.to_string())
}

/// Serves `snapshot` (encoded as `bytes`), keeps it on disk and as the base of the next delta.
fn serve(
    app: &App,
    source: &OperatorSource,
    served: &mut Option<Snapshot>,
    snapshot: Snapshot,
    bytes: &[u8],
    delta: bool,
) {
    app.apply(&snapshot);
    app.metrics.reloads.with_label_values(&["ok"]).inc();
    let was_stale = app.stale.swap(false, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(
        version = %snapshot.version,
        routes = snapshot.routes.len(),
        budgets = snapshot.budgets.len(),
        delta,
        resynced = was_stale,
        "applied a snapshot from the operator"
    );
    if let Err(e) = save_cache(&source.cache_path, bytes) {
        tracing::warn!(path = %source.cache_path.display(), error = %e, "cannot save the snapshot to disk; a restart without the operator would start empty");
    }
    *served = Some(snapshot);
}

/// How often spend is reported while requests settle.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// How often a sidecar with nothing to report asks for the fleet's totals (while its config has
/// budgets or per-minute limits): with [`REPORT_INTERVAL`], how stale its view of the other
/// sidecars' spend may be.
pub const FLEET_REFRESH: Duration = Duration::from_secs(2);
/// How long one report may take.
const REPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends this sidecar's usage reports to the operator (`POST /v1/usage`, the poll's TLS and
/// token): every [`REPORT_INTERVAL`] while there is spend to report, the unacknowledged report
/// again until the operator acknowledges it, and once more on shutdown ([`UsageSender::flush`]).
pub struct UsageSender {
    client: OperatorClient,
    url: String,
    token_file: PathBuf,
    usage: Arc<UsageReports>,
    failing: std::sync::atomic::AtomicBool,
}

impl UsageSender {
    /// A sender to the operator of `source` through `client` (the poll's: they share the
    /// connection).
    pub fn new(source: &OperatorSource, client: OperatorClient, usage: Arc<UsageReports>) -> Self {
        Self {
            client,
            url: format!("{}{USAGE_PATH}", source.url.trim_end_matches('/')),
            token_file: source.token_file.clone(),
            usage,
            failing: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Reports forever; with nothing to report, asks for the fleet's totals every
    /// [`FLEET_REFRESH`] while the config has budgets or per-minute limits.
    pub async fn run(self: Arc<Self>, app: Arc<App>) {
        let mut idle = Duration::ZERO;
        loop {
            tokio::time::sleep(REPORT_INTERVAL).await;
            idle += REPORT_INTERVAL;
            let shared = app.runtime().is_some_and(|rt| rt.shares_with_fleet());
            let due = self.usage.to_send().is_some() || (shared && idle >= FLEET_REFRESH);
            if due && self.send(&app).await.is_ok() {
                idle = Duration::ZERO;
            }
        }
    }

    /// Sends until everything recorded is acknowledged or `within` passes (a stopping sidecar:
    /// every request has settled). What is left unsent is logged.
    pub async fn flush(&self, app: &App, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while !self.usage.is_empty() && tokio::time::Instant::now() < deadline {
            match tokio::time::timeout_at(deadline, self.send(app)).await {
                Ok(Ok(())) => {}
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        if !self.usage.is_empty() {
            tracing::warn!(operator = %self.url, "stopping with spend the operator has not acknowledged: it is not in the budgets' fleet totals");
        }
    }

    /// Sends the report due (else a query for the fleet's totals) and takes in the answer.
    async fn send(&self, app: &App) -> Result<(), String> {
        let report = self.usage.to_send().unwrap_or_else(|| self.usage.query());
        let result = self.post(&report).await.map(|ack| {
            let rt = app.runtime();
            let budgets = rt.as_ref().map(|rt| rt.budgets.clone()).unwrap_or_default();
            self.usage
                .acknowledged(&ack, &budgets, app.clock.unix_now());
            if let Some(rt) = &rt {
                share_limits(rt, &ack.routes, tokio::time::Instant::now());
            }
        });
        let was_failing = self
            .failing
            .swap(result.is_err(), std::sync::atomic::Ordering::Relaxed);
        match &result {
            Err(e) if !was_failing => {
                tracing::warn!(operator = %self.url, error = %e, seq = report.seq, "cannot deliver a usage report; resending it until the operator takes it")
            }
            Ok(()) if was_failing => {
                tracing::info!(operator = %self.url, seq = report.seq, "usage reports delivered again")
            }
            _ => {}
        }
        result
    }

    async fn post(&self, report: &UsageReport) -> Result<UsageAck, String> {
        let token = std::fs::read_to_string(&self.token_file)
            .map_err(|e| format!("reading the token: {e}"))?;
        let body = serde_json::to_vec(report).map_err(|e| e.to_string())?;
        let req = Request::post(&self.url)
            .header(AUTHORIZATION, format!("Bearer {}", token.trim()))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| error_chain(&e))?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), 1024 * 1024)
                .collect()
                .await
                .map_err(|e| format!("reading the answer: {e}"))?
                .to_bytes();
            if status != StatusCode::OK {
                let message = serde_json::from_slice::<ErrorBody>(&body)
                    .map(|b| b.error)
                    .unwrap_or_else(|_| String::from_utf8_lossy(&body).chars().take(300).collect());
                return Err(format!("{}: {message}", status.as_u16()));
            }
            serde_json::from_slice::<UsageAck>(&body)
                .map_err(|e| format!("unreadable acknowledgement: {e}"))
        };
        tokio::time::timeout(REPORT_TIMEOUT, exchange)
            .await
            .map_err(|_| "no answer in time".to_string())?
    }
}

/// Takes this sidecar's share of each route's per-minute limits, as the operator counts the
/// sidecars that share them.
pub fn share_limits(rt: &Runtime, shares: &[RouteShare], now: tokio::time::Instant) {
    for share in shares {
        for route in rt.routes.iter().filter(|r| r.spec.name == share.route) {
            for bucket in [&route.rpm, &route.tpm].into_iter().flatten() {
                bucket.share(share.sidecars, now);
            }
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap_and_resets() {
        let mut b = Backoff(BACKOFF_MIN);
        let first = b.next();
        assert!(
            first >= BACKOFF_MIN / 2 && first <= BACKOFF_MIN,
            "{first:?}"
        );
        for _ in 0..20 {
            let d = b.next();
            assert!(d <= BACKOFF_MAX, "{d:?}");
        }
        assert!(b.next() >= BACKOFF_MAX / 2);
        b.reset();
        assert!(b.next() <= BACKOFF_MIN);
    }

    #[test]
    fn after_a_long_outage_a_sidecar_retries_within_a_few_seconds_spread_by_jitter() {
        // A minute of failed polls: every wait at the cap is at most 4 s, so the operator's
        // return is noticed within 4 s, and the waits still differ, so a fleet spreads out.
        let mut b = Backoff(BACKOFF_MIN);
        let mut waited = Duration::ZERO;
        let mut at_cap = Vec::new();
        while waited < Duration::from_secs(60) {
            let d = b.next();
            waited += d;
            if waited > Duration::from_secs(10) {
                at_cap.push(d);
            }
        }
        let longest = at_cap.iter().max().copied().unwrap_or_default();
        let shortest = at_cap.iter().min().copied().unwrap_or_default();
        assert!(longest <= Duration::from_secs(4), "waits up to {longest:?}");
        assert!(
            shortest >= Duration::from_secs(2),
            "waits down to {shortest:?}"
        );
        assert!(longest > shortest, "no jitter: every wait {longest:?}");
    }

    #[test]
    fn the_cache_round_trips_and_is_private() {
        let dir = std::env::temp_dir().join(format!("llmesh-cache-test-{}", std::process::id()));
        let path = dir.join("nested/snapshot.json");
        let snapshot = Snapshot {
            version: "abc".into(),
            ..Default::default()
        };
        save_cache(&path, &serde_json::to_vec(&snapshot).unwrap()).unwrap();
        assert_eq!(load_cache(&path).unwrap().version, "abc");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::write(&path, b"{not json").unwrap();
        assert!(load_cache(&path).is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_delta_is_applied_to_the_snapshot_served_or_refused_with_the_reason() {
        let served = llmesh_api::compile::assemble(Vec::new(), Vec::new()).unwrap();
        let delta = SnapshotDelta {
            base: served.version.clone(),
            version: served.version.clone(),
            ..Default::default()
        };
        let body = serde_json::to_vec(&delta).unwrap();
        assert_eq!(apply_delta(Some(&served), &body).unwrap(), served);
        let e = apply_delta(None, &body).unwrap_err();
        assert!(e.contains("serves no snapshot"), "{e}");
        let e = apply_delta(Some(&served), b"{\"base\":1}").unwrap_err();
        assert!(e.starts_with("unreadable delta"), "{e}");
        let other = SnapshotDelta {
            base: "0123456789abcdef".into(),
            ..delta.clone()
        };
        let e = apply_delta(Some(&served), &serde_json::to_vec(&other).unwrap()).unwrap_err();
        assert!(e.contains("applies to snapshot 0123456789abcdef"), "{e}");
        let wrong = SnapshotDelta {
            version: "0123456789abcdef".into(),
            ..delta
        };
        let e = apply_delta(Some(&served), &serde_json::to_vec(&wrong).unwrap()).unwrap_err();
        assert!(e.contains("produced content with version"), "{e}");
    }

    #[test]
    fn a_ca_without_a_certificate_is_refused_with_a_hint() {
        let e = client("not a pem").err().unwrap().to_string();
        assert!(e.contains("--operator-ca"), "{e}");
    }
}
