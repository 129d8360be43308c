//! Simulated sidecars: one task per pod running the real sidecar's poll loop
//! (`sidecar/src/operator_client.rs`) over its own HTTPS connection: `GET /v1/snapshot?version=V`
//! with the pod's bearer token, apply each `200` at once and poll again, poll again after a
//! `304`, back off (0.5 s doubling to `--backoff-max`, equal jitter) on errors, honour
//! `retry-after` on `503`.
//!
//! Like the sidecar, each asks for deltas (`delta=1`) unless the fleet is started without
//! them (`--no-deltas`, the protocol before deltas).
//!
//! A task reports every answer to the [`Tracker`] with the instant its body was complete. It
//! does not parse the snapshot (a thousand sidecars would be parsing on the operator's two
//! cores); the route names of each distinct version are read once, by the first sidecar that
//! receives it (from a whole snapshot, or a delta and the names of its base), and shared.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use http::header::{AUTHORIZATION, HOST, RETRY_AFTER};
use http::{HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use llmesh_api::delta::RouteName;
use llmesh_api::protocol::{
    self, CLIENT_TIMEOUT, DELTA_BASE_HEADER, VERSION_HEADER, snapshot_query,
};
use rustls::pki_types::ServerName;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

const BACKOFF_MIN: Duration = Duration::from_millis(500);

/// A snapshot version and what is in it.
#[derive(Debug)]
pub struct Version {
    /// The content version.
    pub id: String,
    /// Routes in the snapshot (`usize::MAX`: its body could not be read).
    pub routes: usize,
    /// Size of the whole snapshot's JSON, when a sidecar received it whole.
    pub bytes: Option<usize>,
    /// `(namespace, name)` of its routes, to follow deltas from it.
    names: BTreeSet<(String, String)>,
}

/// Versions seen so far: the routes of each are read from the first body that carries it.
#[derive(Default)]
pub struct Catalog(parking_lot::Mutex<HashMap<String, Arc<OnceLock<Arc<Version>>>>>);

impl Catalog {
    /// Version `id`, from a whole snapshot (`base` None) or a delta from `base`.
    fn info(&self, id: &str, body: &[u8], base: Option<&Version>) -> Arc<Version> {
        let cell = self.0.lock().entry(id.to_string()).or_default().clone();
        cell.get_or_init(|| {
            let unreadable = || {
                Arc::new(Version {
                    id: id.to_string(),
                    routes: usize::MAX,
                    bytes: None,
                    names: BTreeSet::new(),
                })
            };
            let (names, bytes) = match base {
                None => {
                    #[derive(serde::Deserialize)]
                    struct Whole {
                        // A route's identity; the rest of each route is skipped unread.
                        routes: Vec<RouteName>,
                    }
                    let Ok(w) = serde_json::from_slice::<Whole>(body) else {
                        return unreadable();
                    };
                    let names = w.routes.into_iter().map(|r| (r.namespace, r.name));
                    (names.collect(), Some(body.len()))
                }
                Some(base) => {
                    #[derive(serde::Deserialize)]
                    struct Delta {
                        routes: Vec<RouteName>,
                        removed: Vec<RouteName>,
                    }
                    let Ok(d) = serde_json::from_slice::<Delta>(body) else {
                        return unreadable();
                    };
                    let mut names = base.names.clone();
                    for r in d.removed {
                        names.remove(&(r.namespace, r.name));
                    }
                    names.extend(d.routes.into_iter().map(|r| (r.namespace, r.name)));
                    (names, None)
                }
            };
            Arc::new(Version {
                id: id.to_string(),
                routes: names.len(),
                bytes,
                names,
            })
        })
        .clone()
    }
}

/// What one answer was.
pub enum Answer {
    /// `200`: a new snapshot, complete at `at`, `bytes` long.
    Snapshot {
        /// Its version.
        version: Arc<Version>,
        /// Body length.
        bytes: usize,
    },
    /// `304`: nothing changed during the hold.
    NotModified,
    /// Anything else: a status code or a transport failure, by class.
    Failed(String),
}

/// One report from a sidecar.
pub struct Event {
    /// Which sidecar.
    pub idx: usize,
    /// When the answer was complete.
    pub at: Instant,
    /// What it was.
    pub answer: Answer,
}

/// Where the operator is.
#[derive(Clone)]
pub struct Target {
    /// The operator's HTTPS address.
    pub addr: SocketAddr,
    /// Trusts the operator's CA.
    pub tls: Arc<rustls::ClientConfig>,
}

impl Target {
    /// A target at `addr` whose certificate chains to `ca_pem` (HTTP/1.1 only, as the sidecar).
    pub fn new(addr: SocketAddr, ca_pem: &str) -> Result<Self> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(cert.context("operator CA")?)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            addr,
            tls: Arc::new(tls),
        })
    }
}

/// The running sidecars; dropping it stops them.
pub struct Fleet {
    tasks: JoinSet<()>,
}

impl Fleet {
    /// Starts one sidecar per token, asking for deltas when `deltas` and backing off up to
    /// `backoff_max`; their reports go to the returned channel.
    pub fn start(
        target: &Target,
        tokens: Vec<String>,
        deltas: bool,
        backoff_max: Duration,
    ) -> (Self, mpsc::UnboundedReceiver<Event>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let catalog = Arc::new(Catalog::default());
        let mut tasks = JoinSet::new();
        for (idx, token) in tokens.into_iter().enumerate() {
            tasks.spawn(sidecar(
                idx,
                target.clone(),
                token,
                tx.clone(),
                catalog.clone(),
                deltas,
                backoff_max,
            ));
        }
        (Self { tasks }, rx)
    }

    /// Stops every sidecar and waits until their connections are closed.
    pub async fn stop(mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }
}

struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    fn new(max: Duration) -> Self {
        Self {
            next: BACKOFF_MIN.min(max),
            max,
        }
    }

    fn next(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        let half = d / 2;
        half + Duration::from_millis(fastrand::u64(0..=half.as_millis() as u64))
    }
}

async fn connect(target: &Target) -> Result<SendRequest<Empty<Bytes>>, &'static str> {
    let tcp = tokio::net::TcpStream::connect(target.addr)
        .await
        .map_err(|_| "connect")?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::IpAddress(target.addr.ip().into());
    let tls = tokio_rustls::TlsConnector::from(target.tls.clone())
        .connect(name, tcp)
        .await
        .map_err(|_| "tls handshake")?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|_| "http handshake")?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

async fn sidecar(
    idx: usize,
    target: Target,
    token: String,
    tx: mpsc::UnboundedSender<Event>,
    catalog: Arc<Catalog>,
    deltas: bool,
    backoff_max: Duration,
) {
    let Ok(mut auth) = HeaderValue::from_str(&format!("Bearer {token}")) else {
        let _ = tx.send(Event {
            idx,
            at: Instant::now(),
            answer: Answer::Failed("token is not a header value".into()),
        });
        return;
    };
    drop(token);
    auth.set_sensitive(true);
    let host = HeaderValue::from_str(&target.addr.to_string()).expect("an address is a header");
    let mut serving: Option<Arc<Version>> = None;
    let mut sender: Option<SendRequest<Empty<Bytes>>> = None;
    let mut backoff = Backoff::new(backoff_max);
    let report = |answer: Answer| {
        let _ = tx.send(Event {
            idx,
            at: Instant::now(),
            answer,
        });
    };
    loop {
        let asked = Ask {
            serving: serving.as_deref(),
            deltas,
        };
        let (answer, wait) = poll(&target, &mut sender, asked, &auth, &host, &catalog).await;
        let wait = match (&answer, wait) {
            (Answer::Snapshot { version: v, .. }, _) => {
                serving = Some(v.clone());
                backoff = Backoff::new(backoff_max);
                None
            }
            (Answer::NotModified, _) => {
                backoff = Backoff::new(backoff_max);
                None
            }
            (Answer::Failed(_), Some(d)) => Some(d),
            (Answer::Failed(_), None) => Some(backoff.next()),
        };
        report(answer);
        if let Some(d) = wait {
            tokio::time::sleep(d).await;
        }
    }
}

/// What a poll asks with: the version served, and whether a delta from it will do.
#[derive(Clone, Copy)]
pub struct Ask<'a> {
    /// The version served.
    pub serving: Option<&'a Version>,
    /// Whether to ask for a delta.
    pub deltas: bool,
}

/// One poll: the answer, and for a `503` with `retry-after` how long to wait.
async fn poll(
    target: &Target,
    sender: &mut Option<SendRequest<Empty<Bytes>>>,
    ask: Ask<'_>,
    auth: &HeaderValue,
    host: &HeaderValue,
    catalog: &Catalog,
) -> (Answer, Option<Duration>) {
    let failed = |what: &str| (Answer::Failed(what.to_string()), None);
    if sender.as_ref().is_none_or(|s| s.is_closed()) {
        match connect(target).await {
            Ok(s) => *sender = Some(s),
            Err(what) => return failed(what),
        }
    }
    let s = sender.as_mut().expect("connected above");
    if s.ready().await.is_err() {
        *sender = None;
        return failed("connection closed");
    }
    let version = ask.serving.map(|v| v.id.as_str());
    let req = Request::get(snapshot_query(version, ask.deltas))
        .header(HOST, host.clone())
        .header(AUTHORIZATION, auth.clone())
        .body(Empty::new())
        .expect("a valid request");
    let resp = match tokio::time::timeout(CLIENT_TIMEOUT, s.send_request(req)).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => {
            *sender = None;
            return failed("request failed");
        }
        Err(_) => {
            *sender = None;
            return failed("no answer in time");
        }
    };
    let status = resp.status();
    let retry_after = protocol::retry_after(
        resp.headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok()),
    );
    let header_version = resp
        .headers()
        .get(VERSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let is_delta = resp.headers().contains_key(DELTA_BASE_HEADER);
    let body = match tokio::time::timeout(CLIENT_TIMEOUT, resp.into_body().collect()).await {
        Ok(Ok(b)) => b.to_bytes(),
        _ => {
            *sender = None;
            return failed("reading the body failed");
        }
    };
    match status {
        StatusCode::OK => match (header_version, is_delta) {
            (None, _) => failed("200 without a version header"),
            (Some(_), true) if ask.serving.is_none() => failed("a delta without a base"),
            (Some(v), delta) => (
                Answer::Snapshot {
                    version: catalog.info(&v, &body, ask.serving.filter(|_| delta)),
                    bytes: body.len(),
                },
                None,
            ),
        },
        StatusCode::NOT_MODIFIED => (Answer::NotModified, None),
        code => {
            let wait = retry_after.filter(|_| code == StatusCode::SERVICE_UNAVAILABLE);
            (Answer::Failed(format!("HTTP {}", code.as_u16())), wait)
        }
    }
}

/// Polls at `per_second` from one more pod, each abandoned after 10 ms (before the hold ends),
/// the way other sidecars' polls keep arriving in a large cluster (each sidecar polls at least
/// every 30 s). Runs until the returned task is aborted.
pub fn background_polls(
    target: &Target,
    token: String,
    per_second: f64,
) -> tokio::task::JoinHandle<()> {
    let target = target.clone();
    tokio::spawn(async move {
        let Ok(mut auth) = HeaderValue::from_str(&format!("Bearer {token}")) else {
            return;
        };
        auth.set_sensitive(true);
        let host = HeaderValue::from_str(&target.addr.to_string()).expect("an address is a header");
        let version = Arc::new(parking_lot::Mutex::new(String::new()));
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_second));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let (target, auth, host, version) =
                (target.clone(), auth.clone(), host.clone(), version.clone());
            tokio::spawn(async move {
                let Ok(mut s) = connect(&target).await else {
                    return;
                };
                let v = version.lock().clone();
                let req = Request::get(snapshot_query(Some(&v), false))
                    .header(HOST, host)
                    .header(AUTHORIZATION, auth)
                    .body(Empty::new())
                    .expect("a valid request");
                // Dropping the connection ends the poll on the operator's side.
                if let Ok(Ok(resp)) =
                    tokio::time::timeout(Duration::from_millis(10), s.send_request(req)).await
                    && let Some(v) = resp
                        .headers()
                        .get(VERSION_HEADER)
                        .and_then(|v| v.to_str().ok())
                {
                    *version.lock() = v.to_string();
                }
            });
        }
    })
}

/// The size of the whole snapshot the pod behind `token` runs now: one poll without a
/// version, then one with the version received, abandoned, so the operator counts the pod as
/// serving it (its rollout counts stay whole).
pub async fn whole_snapshot_bytes(target: &Target, token: &str) -> Result<usize> {
    let mut s = connect(target)
        .await
        .map_err(|e| anyhow::anyhow!("{e} failed"))?;
    let get = |version: Option<&str>| {
        Request::get(snapshot_query(version, false))
            .header(HOST, target.addr.to_string())
            .header(AUTHORIZATION, format!("Bearer {token}"))
            .body(Empty::new())
    };
    let resp = tokio::time::timeout(CLIENT_TIMEOUT, s.send_request(get(None)?)).await??;
    anyhow::ensure!(resp.status() == StatusCode::OK, "HTTP {}", resp.status());
    let version = resp
        .headers()
        .get(VERSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let size = resp.into_body().collect().await?.to_bytes().len();
    s.ready().await?;
    let _ = tokio::time::timeout(
        Duration::from_millis(200),
        s.send_request(get(Some(&version))?),
    )
    .await;
    Ok(size)
}

/// Counts of answers over a window.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Pushes {
    /// `200` answers.
    pub snapshots: u64,
    /// Body bytes of those answers.
    pub bytes: u64,
    /// `304` answers.
    pub not_modified: u64,
    /// Failures by class.
    pub failures: BTreeMap<String, u64>,
}

/// Follows every sidecar's answers: what each serves, when it first received a snapshot that
/// satisfies the current goal, and the counts of the current window.
pub struct Tracker {
    rx: mpsc::UnboundedReceiver<Event>,
    /// The version each sidecar serves.
    pub serving: Vec<Option<Arc<Version>>>,
    goal: Option<Goal>,
    /// When each sidecar reached the goal.
    pub reached: Vec<Option<Instant>>,
    reached_count: usize,
    /// Every version any sidecar has received.
    history: HashSet<String>,
    window: Pushes,
    phase: Pushes,
}

/// What a sidecar must receive to count as arrived.
enum Goal {
    /// A version no sidecar had received when the goal was set.
    Change(HashSet<String>),
    /// A snapshot with exactly this many routes.
    Routes(usize),
}

impl Tracker {
    /// A tracker for `n` sidecars reporting on `rx`.
    pub fn new(n: usize, rx: mpsc::UnboundedReceiver<Event>) -> Self {
        Self {
            rx,
            serving: vec![None; n],
            goal: None,
            reached: vec![None; n],
            reached_count: 0,
            history: HashSet::new(),
            window: Pushes::default(),
            phase: Pushes::default(),
        }
    }

    /// Sidecars.
    pub fn len(&self) -> usize {
        self.serving.len()
    }

    /// Starts a new goal: each sidecar arrives with its first snapshot of a version no
    /// sidecar has received before (a late answer carrying an older version does not count).
    pub fn expect_change(&mut self) {
        self.set_goal(Goal::Change(self.history.clone()));
    }

    /// Starts a new goal: each sidecar arrives when it serves a snapshot with `routes` routes
    /// (at once if it already does).
    pub fn expect_routes(&mut self, routes: usize) {
        self.set_goal(Goal::Routes(routes));
        let now = Instant::now();
        for i in 0..self.serving.len() {
            if self.serving[i].as_ref().is_some_and(|v| v.routes == routes) {
                self.reached[i] = Some(now);
                self.reached_count += 1;
            }
        }
    }

    fn set_goal(&mut self, goal: Goal) {
        self.goal = Some(goal);
        self.reached.iter_mut().for_each(|r| *r = None);
        self.reached_count = 0;
    }

    /// Sidecars that reached the goal.
    pub fn reached_count(&self) -> usize {
        self.reached_count
    }

    /// The counts since the last call, starting a new window.
    pub fn take_window(&mut self) -> Pushes {
        std::mem::take(&mut self.window)
    }

    /// The counts since the last call, starting a new phase.
    pub fn take_phase(&mut self) -> Pushes {
        std::mem::take(&mut self.phase)
    }

    fn record(&mut self, e: Event) {
        for w in [&mut self.window, &mut self.phase] {
            match &e.answer {
                Answer::Snapshot { bytes, .. } => {
                    w.snapshots += 1;
                    w.bytes += *bytes as u64;
                }
                Answer::NotModified => w.not_modified += 1,
                Answer::Failed(what) => *w.failures.entry(what.clone()).or_default() += 1,
            }
        }
        if let Answer::Snapshot { version, .. } = e.answer {
            if self.reached[e.idx].is_none() {
                let arrived = match &self.goal {
                    Some(Goal::Change(old)) => !old.contains(&version.id),
                    Some(Goal::Routes(n)) => version.routes == *n,
                    None => false,
                };
                if arrived {
                    self.reached[e.idx] = Some(e.at);
                    self.reached_count += 1;
                }
            }
            if !self.history.contains(&version.id) {
                self.history.insert(version.id.clone());
            }
            self.serving[e.idx] = Some(version);
        }
    }

    /// Takes in reports until every sidecar reached the goal or `deadline` passes; true if all did.
    pub async fn wait_all(&mut self, deadline: Instant) -> bool {
        while self.reached_count < self.serving.len() {
            match tokio::time::timeout_at(deadline.into(), self.rx.recv()).await {
                Ok(Some(e)) => self.record(e),
                Ok(None) | Err(_) => return false,
            }
        }
        true
    }

    /// Takes in reports for `d`.
    pub async fn pump_for(&mut self, d: Duration) {
        let deadline = tokio::time::Instant::now() + d;
        while let Ok(Some(e)) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
            self.record(e);
        }
    }

    /// The distinct versions sidecars serve now, with how many serve each.
    pub fn serving_versions(&self) -> Vec<(Option<Arc<Version>>, usize)> {
        let mut counts: Vec<(Option<Arc<Version>>, usize)> = Vec::new();
        for v in &self.serving {
            let id = v.as_ref().map(|v| v.id.as_str());
            match counts
                .iter_mut()
                .find(|(c, _)| c.as_ref().map(|c| c.id.as_str()) == id)
            {
                Some((_, n)) => *n += 1,
                None => counts.push((v.clone(), 1)),
            }
        }
        counts.sort_by_key(|c| std::cmp::Reverse(c.1));
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A whole snapshot's body with routes `names` in namespace `n`.
    fn whole(names: &[&str]) -> String {
        let routes: Vec<String> = names
            .iter()
            .map(|r| format!(r#"{{"namespace":"n","name":"{r}","model":"m"}}"#))
            .collect();
        format!(
            r#"{{"version":"x","routes":[{}],"budgets":[]}}"#,
            routes.join(",")
        )
    }

    fn snap(catalog: &Catalog, idx: usize, id: &str, body: &str) -> Event {
        Event {
            idx,
            at: Instant::now(),
            answer: Answer::Snapshot {
                version: catalog.info(id, body.as_bytes(), None),
                bytes: body.len(),
            },
        }
    }

    #[test]
    fn a_sidecar_arrives_with_its_first_different_version() {
        let (_tx, rx) = mpsc::unbounded_channel();
        let catalog = Catalog::default();
        let mut t = Tracker::new(2, rx);
        let (a, b, c) = (whole(&["a"]), whole(&["a", "b"]), whole(&["a", "b", "c"]));
        t.record(snap(&catalog, 0, "a", &a));
        t.record(snap(&catalog, 1, "a", &a));
        t.expect_change();
        t.record(snap(&catalog, 0, "a", &a));
        assert_eq!(t.reached_count(), 0);
        t.record(snap(&catalog, 0, "b", &b));
        let first = t.reached[0];
        t.record(snap(&catalog, 0, "c", &c));
        assert_eq!(t.reached[0], first, "the first arrival counts");
        assert_eq!(t.reached_count(), 1);
        let w = t.take_window();
        let sent = 3 * a.len() + b.len() + c.len();
        assert_eq!((w.snapshots, w.bytes), (5, sent as u64));
        t.expect_routes(3);
        assert_eq!(t.reached_count(), 1, "sidecar 0 already serves 3 routes");
        t.record(snap(&catalog, 1, "c", "ignored: the catalog knows c"));
        assert_eq!(t.reached_count(), 2);
        assert_eq!(t.serving_versions()[0].1, 2);
    }

    #[test]
    fn a_delta_version_has_its_base_routes_less_the_removed_plus_the_sent() {
        let catalog = Catalog::default();
        let base = catalog.info("v1", whole(&["a", "b", "c"]).as_bytes(), None);
        assert_eq!(
            (base.routes, base.bytes),
            (3, Some(whole(&["a", "b", "c"]).len()))
        );
        let delta = r#"{"base":"v1","version":"v2","routes":[{"namespace":"n","name":"b"},{"namespace":"n","name":"d"},{"namespace":"n","name":"e"}],"removed":[{"namespace":"n","name":"a"}]}"#;
        let v2 = catalog.info("v2", delta.as_bytes(), Some(&base));
        assert_eq!(
            (v2.routes, v2.bytes),
            (4, None),
            "b c d e; its whole size unseen"
        );
        let junk = catalog.info("v3", b"{}", Some(&v2));
        assert_eq!(junk.routes, usize::MAX);
    }
}
