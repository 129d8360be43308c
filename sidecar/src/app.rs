//! The sidecar as a value: config, live state, metrics and log, and the request handler, so
//! tests can drive it in process and `main` can put it behind a listener.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use arc_swap::ArcSwapOption;
use parking_lot::Mutex;
use tokio::time::Instant;

use llmesh_api::Snapshot;

use crate::accesslog::AccessLog;
use crate::account::{Ledger, Slot};
use crate::budget::{Clock, SystemClock};
use crate::limits::{Buffers, Limits};
use crate::metrics::Metrics;
use crate::providers::mock::MockTransport;
use crate::runtime::{self, Carry, Runtime};
use crate::transport::{HttpTransport, Transport, TransportFactory};
use crate::usage::UsageReports;

/// Generation requests in flight at once before the sidecar answers 503 (Envoy's default for
/// its circuit breakers' `max_requests`).
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1024;

/// The sidecar.
pub struct App {
    runtime: ArcSwapOption<Runtime>,
    carry: Mutex<Carry>,
    transports: TransportFactory,
    /// Every metric.
    pub metrics: Arc<Metrics>,
    /// The access log.
    pub log: AccessLog,
    /// The wall clock (budget periods, log timestamps).
    pub clock: Arc<dyn Clock>,
    /// Whether the config came from the last good snapshot on disk rather than a fresh source.
    pub stale: AtomicBool,
    /// Unix time the config source last confirmed the config served (a load, an operator's
    /// answer).
    confirmed: AtomicU64,
    /// Whether the config source (the operator) failed its last poll.
    away: AtomicBool,
    /// Local API keys clients must present (empty: none required).
    pub local_keys: Vec<String>,
    /// Responses produced here, for the Responses API's `previous_response_id`.
    pub responses: crate::ingress::responses::Store,
    /// Generation requests admitted and not yet answered to their last byte.
    admitted: Arc<AtomicUsize>,
    /// The most admitted at once (`--max-in-flight`); more are refused with a fast 503.
    pub max_in_flight: usize,
    /// Connection timeouts and the connection cap, for the listener and the body read.
    pub limits: Limits,
    /// Bytes of request and answer bodies held by all requests (`--max-buffered-bytes`).
    pub buffers: Arc<Buffers>,
    /// The metrics, log, clock and buffers again, as each request's ticket holds them.
    ledger: Arc<Ledger>,
}

/// Builds an [`App`].
pub struct AppBuilder {
    transports: Option<TransportFactory>,
    clock: Arc<dyn Clock>,
    access_log: bool,
    local_keys: Vec<String>,
    responses: crate::ingress::responses::Store,
    max_in_flight: usize,
    limits: Limits,
    max_buffered_bytes: usize,
    usage: Option<Arc<UsageReports>>,
}

impl AppBuilder {
    /// Records spend for usage reports to the operator (operator mode).
    pub fn report_usage(mut self, reports: Arc<UsageReports>) -> Self {
        self.usage = Some(reports);
        self
    }

    /// Sets the connection timeouts and cap (defaults in [`crate::limits`]).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Holds at most `n` bytes of request and answer bodies at once, all requests together
    /// (0: no limit); the default is [`crate::limits::DEFAULT_MAX_BUFFERED_BYTES`].
    pub fn max_buffered_bytes(mut self, n: usize) -> Self {
        self.max_buffered_bytes = n;
        self
    }

    /// Sends upstream requests through `f(backend)` instead of the network (tests).
    pub fn transports(mut self, f: TransportFactory) -> Self {
        self.transports = Some(f);
        self
    }

    /// Uses `clock` for budget periods.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Writes the access log to stdout.
    pub fn access_log(mut self, on: bool) -> Self {
        self.access_log = on;
        self
    }

    /// Requires one of these keys on every request.
    pub fn local_keys(mut self, keys: Vec<String>) -> Self {
        self.local_keys = keys;
        self
    }

    /// Keeps at most `entries` Responses API responses, each for at most `ttl`, for
    /// `previous_response_id` (default 1000 for 1h; 0 keeps none).
    pub fn responses_store(mut self, entries: usize, ttl: std::time::Duration) -> Self {
        self.responses = crate::ingress::responses::Store::new(entries, ttl);
        self
    }

    /// Admits at most `n` generation requests at once (0: no limit); the default is
    /// [`DEFAULT_MAX_IN_FLIGHT`].
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = if n == 0 { usize::MAX } else { n };
        self
    }

    /// The app, with no config yet (not ready).
    pub fn build(self) -> Arc<App> {
        let metrics = Metrics::new();
        let log = if self.access_log {
            AccessLog::stdout(metrics.log_dropped.clone())
        } else {
            AccessLog::off(metrics.log_dropped.clone())
        };
        let transports = self.transports.unwrap_or_else(default_transports);
        let metrics = Arc::new(metrics);
        let buffers = Arc::new(Buffers::new(self.max_buffered_bytes));
        let ledger = Arc::new(Ledger {
            metrics: metrics.clone(),
            log: log.clone(),
            clock: self.clock.clone(),
            buffers: buffers.clone(),
            usage: self.usage,
        });
        Arc::new(App {
            runtime: ArcSwapOption::empty(),
            carry: Mutex::new(Carry::default()),
            transports,
            metrics,
            log,
            clock: self.clock,
            stale: AtomicBool::new(false),
            confirmed: AtomicU64::new(0),
            away: AtomicBool::new(false),
            local_keys: self.local_keys,
            responses: self.responses,
            admitted: Arc::new(AtomicUsize::new(0)),
            max_in_flight: self.max_in_flight,
            limits: self.limits,
            buffers,
            ledger,
        })
    }
}

/// Real providers over the shared HTTP client; `mock` backends answer in process.
pub fn default_transports() -> TransportFactory {
    let http = Arc::new(HttpTransport::new());
    Arc::new(move |b| {
        if b.provider == llmesh_api::ProviderKind::Mock {
            MockTransport::new(b) as Arc<dyn Transport>
        } else {
            http.clone() as Arc<dyn Transport>
        }
    })
}

impl App {
    /// Starts building an app.
    pub fn builder() -> AppBuilder {
        AppBuilder {
            transports: None,
            clock: Arc::new(SystemClock),
            access_log: false,
            local_keys: Vec::new(),
            responses: crate::ingress::responses::Store::default(),
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            limits: Limits::default(),
            max_buffered_bytes: crate::limits::DEFAULT_MAX_BUFFERED_BYTES,
            usage: None,
        }
    }

    /// A place for one more generation request, or `None` when `max_in_flight` are already
    /// in flight.
    pub fn admit(&self) -> Option<Slot> {
        let before = self.admitted.fetch_add(1, Ordering::Relaxed);
        let slot = Slot::new(self.admitted.clone());
        (before < self.max_in_flight).then_some(slot)
    }

    /// Where requests account to: a ticket holds this, not the app.
    pub fn ledger(&self) -> &Arc<Ledger> {
        &self.ledger
    }

    /// Generation requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.admitted.load(Ordering::Relaxed)
    }

    /// Serves `snapshot` from now on. In-flight requests finish on the config they started with;
    /// breaker, latency, limiter, cache and budget state carry over for what did not change.
    pub fn apply(&self, snapshot: &Snapshot) {
        let mut carry = self.carry.lock();
        let rt = runtime::build(
            snapshot,
            &mut carry,
            &self.transports,
            &self.metrics,
            Instant::now(),
        );
        self.metrics.config_info.reset();
        self.metrics
            .config_info
            .with_label_values(&[&snapshot.version])
            .set(1);
        // What the reload removed stops being exported (a pass over every series, so only
        // when something was removed or relabelled).
        if self.runtime().is_some_and(|old| !rt.covers(&old)) {
            self.metrics.prune(&|series| rt.serves_series(series));
        }
        self.confirmed
            .store(self.clock.unix_now(), Ordering::Relaxed);
        self.runtime.store(Some(Arc::new(rt)));
    }

    /// Records that the config source confirmed the config served at Unix time `unix` (an
    /// operator's answer, or when the snapshot on disk was written) and is reachable.
    pub fn confirmed_at(&self, unix: u64) {
        self.confirmed.store(unix, Ordering::Relaxed);
        self.away.store(false, Ordering::Relaxed);
    }

    /// Records that the config source (the operator) failed to answer: the config served is
    /// stale until it answers again.
    pub fn source_away(&self) {
        self.away.store(true, Ordering::Relaxed);
    }

    /// The config being served, if any.
    pub fn runtime(&self) -> Option<Arc<Runtime>> {
        self.runtime.load_full()
    }

    /// Whether a config is loaded.
    pub fn is_ready(&self) -> bool {
        self.runtime.load().is_some()
    }

    /// Marks the served config as loaded from the on-disk copy while its source is away.
    pub fn set_stale(&self, stale: bool) {
        self.stale.store(stale, Ordering::Relaxed);
    }

    /// Refreshes gauges that depend on time (circuit states, budgets) before a scrape.
    pub fn refresh_gauges(&self) {
        let Some(rt) = self.runtime() else { return };
        let confirmed = self.confirmed.load(Ordering::Relaxed);
        self.metrics
            .config_age
            .set(self.clock.unix_now().saturating_sub(confirmed) as i64);
        let stale = self.stale.load(Ordering::Relaxed) || self.away.load(Ordering::Relaxed);
        self.metrics.config_stale.set(i64::from(stale));
        let now = Instant::now();
        for r in &rt.routes {
            for b in &r.backends {
                let state = b.breaker.state(now);
                let l = [b.labels.route.as_str(), b.labels.backend.as_str()];
                self.metrics
                    .circuit_state
                    .with_label_values(&l)
                    .set(state.gauge());
                self.metrics
                    .backend_up
                    .with_label_values(&l)
                    .set(i64::from(state != crate::breaker::BreakerState::Open));
                self.metrics
                    .latency_ewma
                    .with_label_values(&l)
                    .set(b.ewma() as f64 / 1e6);
            }
        }
        let unix = self.clock.unix_now();
        for b in &rt.budgets {
            let l = [b.spec.namespace.as_str(), b.spec.name.as_str()];
            let (spent, tokens, _) = b.spent(unix);
            self.metrics
                .budget_spent
                .with_label_values(&l)
                .set(spent as i64);
            self.metrics
                .budget_tokens
                .with_label_values(&l)
                .set(tokens as i64);
            if let Some(limit) = b.spec.limit_usd {
                self.metrics
                    .budget_limit
                    .with_label_values(&l)
                    .set(limit as i64);
            }
        }
    }
}
