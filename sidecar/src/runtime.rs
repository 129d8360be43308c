//! A snapshot made servable: per-backend health, latency, concurrency and metric handles,
//! per-route rate limiters and caches, and the model-name index. Built once per config change
//! and swapped in atomically; live state carries over for whatever did not change.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use prometheus::IntGauge;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use llmesh_api::snapshot::{Backend, Route, Snapshot};

use crate::breaker::Breaker;
use crate::budget::BudgetState;
use crate::cache::ResponseCache;
use crate::metrics::{BackendLabels, Metrics};
use crate::providers::{self, Provider};
use crate::ratelimit::Bucket;
use crate::transport::{Transport, TransportFactory};

/// A backend with its live state.
pub struct BackendState {
    /// The compiled backend.
    pub spec: Backend,
    /// Its provider adapter.
    pub provider: &'static dyn Provider,
    /// How requests reach it.
    pub transport: Arc<dyn Transport>,
    /// Its circuit breaker.
    pub breaker: Breaker,
    /// Recent latency to first byte, microseconds (0: not measured yet).
    pub ewma_us: AtomicU64,
    /// Requests in flight.
    pub in_flight: AtomicI64,
    /// The `maxConcurrency` permits.
    pub permits: Option<Arc<Semaphore>>,
    /// The in-flight gauge for this backend.
    pub in_flight_gauge: IntGauge,
    /// Its metric label values.
    pub labels: BackendLabels,
    /// Metric handles for this backend's own labels.
    pub metrics: crate::metrics::BackendMetrics,
    /// Header values for `x-llmesh-backend`, `-variant`, `-provider`, `-route`, built once.
    pub header_values: [http::HeaderValue; 4],
    /// The most output tokens its model takes in one request, when the shipped table knows the
    /// model: a limit llmesh sets itself is never sent above it.
    pub output_cap: Option<u32>,
    /// The failure penalty fed to the latency average, microseconds.
    penalty_us: u64,
    breaker_cfg: (u32, u64),
}

impl BackendState {
    /// Records a successful attempt's latency to first byte.
    pub fn observe_latency(&self, d: Duration) {
        self.mix(d.as_micros().min(u128::from(u64::MAX)) as u64);
    }

    /// Records a failure: it counts as a very slow answer, so a backend returning fast errors
    /// (429s) never looks fast to latency-based routing.
    pub fn observe_failure(&self) {
        let cur = self.ewma_us.load(Ordering::Relaxed);
        self.mix(self.penalty_us.max(cur.saturating_mul(2)));
    }

    fn mix(&self, sample: u64) {
        // EWMA with weight 1/4 for the new sample; the first sample seeds it.
        let _ = self
            .ewma_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |cur| {
                Some(if cur == 0 {
                    sample.max(1)
                } else {
                    cur - cur / 4 + sample / 4
                })
            });
    }

    /// The latency average, microseconds.
    pub fn ewma(&self) -> u64 {
        self.ewma_us.load(Ordering::Relaxed)
    }

    /// Whether it may take a request at `now` (circuit not open, a permit free).
    pub fn available(&self, now: Instant) -> bool {
        self.breaker.is_available(now)
            && self
                .permits
                .as_ref()
                .is_none_or(|s| s.available_permits() > 0)
    }

    /// Marks a request in flight; the guard unmarks it.
    pub fn enter(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.in_flight_gauge.inc();
        InFlight(self.clone())
    }
}

/// Keeps a request counted in flight until dropped.
pub struct InFlight(Arc<BackendState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.in_flight_gauge.dec();
    }
}

/// A route with its live state.
pub struct RouteState {
    /// The compiled route.
    pub spec: Route,
    /// Its backends, in spec order.
    pub backends: Vec<Arc<BackendState>>,
    /// Requests per minute.
    pub rpm: Option<Arc<Bucket>>,
    /// Tokens per minute.
    pub tpm: Option<Arc<Bucket>>,
    /// The response cache.
    pub cache: Option<Arc<ResponseCache>>,
    /// Budgets covering this route.
    pub budgets: Vec<Arc<BudgetState>>,
}

/// What a model name resolves to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    /// Index into [`Runtime::routes`].
    pub route: usize,
    /// A backend pinned with `provider/model`.
    pub pinned: Option<usize>,
}

/// Everything one config version serves.
pub struct Runtime {
    /// The snapshot version.
    pub version: String,
    /// The routes.
    pub routes: Vec<RouteState>,
    /// Budgets.
    pub budgets: Vec<Arc<BudgetState>>,
    /// Model names and aliases -> route.
    models: HashMap<String, usize>,
    /// `provider/model` -> pinned backend.
    pins: HashMap<String, Target>,
    /// The `/v1/models` answer.
    pub models_body: Bytes,
    /// Largest request body any route accepts.
    pub max_request_bytes: u64,
}

impl Runtime {
    /// Whether anything here is shared with the other sidecars (budgets, per-minute limits):
    /// then the operator's view of the fleet is worth asking for.
    pub fn shares_with_fleet(&self) -> bool {
        !self.budgets.is_empty()
            || self
                .routes
                .iter()
                .any(|r| r.rpm.is_some() || r.tpm.is_some())
    }

    /// Resolves the model a client asked for.
    pub fn resolve(&self, model: &str) -> Option<Target> {
        if let Some(&route) = self.models.get(model) {
            return Some(Target {
                route,
                pinned: None,
            });
        }
        self.pins.get(model).copied()
    }

    /// Whether every backend (with its labels) and budget of `old` is still here.
    pub fn covers(&self, old: &Runtime) -> bool {
        let labels: std::collections::HashSet<&BackendLabels> = self
            .routes
            .iter()
            .flat_map(|r| r.backends.iter().map(|b| &b.labels))
            .collect();
        let budgets: std::collections::HashSet<(&str, &str)> = self
            .budgets
            .iter()
            .map(|b| (b.spec.namespace.as_str(), b.spec.name.as_str()))
            .collect();
        old.routes
            .iter()
            .flat_map(|r| r.backends.iter())
            .all(|b| labels.contains(&b.labels))
            && old
                .budgets
                .iter()
                .all(|b| budgets.contains(&(b.spec.namespace.as_str(), b.spec.name.as_str())))
    }

    /// Whether a metric series with these labels (read by name) belongs to what this runtime
    /// serves: its route, backend (with the same provider and models), variant and budget. A
    /// series of a route, backend or budget a reload removed does not.
    pub fn serves_series(&self, series: &crate::metrics::Series) -> bool {
        let get = |name: &str| series.get(name);
        let given = |name: &str| get(name).filter(|v| !v.is_empty() && *v != "none");
        if let (Some(ns), Some(name)) = (given("namespace"), given("budget"))
            && !self
                .budgets
                .iter()
                .any(|b| b.spec.namespace == ns && b.spec.name == name)
        {
            return false;
        }
        let Some(route) = given("route") else {
            return true;
        };
        let backends = || {
            self.routes
                .iter()
                .filter(move |r| r.spec.name == route)
                .flat_map(|r| r.backends.iter())
        };
        if backends().next().is_none() {
            return false;
        }
        for name in ["from_backend", "to_backend"] {
            if let Some(b) = given(name)
                && !backends().any(|s| s.labels.backend == b)
            {
                return false;
            }
        }
        if let Some(m) = given("gen_ai_request_model")
            && !backends().any(|s| s.labels.route_model == m)
        {
            return false;
        }
        if let Some(v) = given("variant")
            && !backends().any(|s| s.labels.variant == v)
        {
            return false;
        }
        let Some(backend) = given("backend") else {
            return true;
        };
        let same = |s: &BackendState| {
            let l = &s.labels;
            l.backend == backend
                && [
                    ("gen_ai_provider_name", &l.gen_ai_provider),
                    ("gen_ai_response_model", &l.model),
                    ("gen_ai_request_model", &l.route_model),
                ]
                .iter()
                .all(|(name, value)| get(name).is_none_or(|v| v == value.as_str()))
        };
        backends().any(|s| same(s))
    }

    /// Every model name served, sorted, for error messages.
    pub fn model_names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.models.keys().map(String::as_str).collect();
        v.extend(self.pins.keys().map(String::as_str));
        v.sort_unstable();
        v
    }
}

/// Live state from the previous runtime, reused where the config did not change.
#[derive(Default)]
pub struct Carry {
    backends: HashMap<(String, String, String), Arc<BackendState>>,
    buckets: HashMap<(String, String, &'static str, u64), Arc<Bucket>>,
    caches: HashMap<(String, String), (llmesh_api::snapshot::Cache, Arc<ResponseCache>)>,
    budgets: HashMap<(String, String), Arc<BudgetState>>,
}

/// Builds a runtime from a snapshot, reusing live state from `carry` and replacing it with the
/// new runtime's state.
pub fn build(
    snapshot: &Snapshot,
    carry: &mut Carry,
    transports: &TransportFactory,
    metrics: &Metrics,
    now: Instant,
) -> Runtime {
    let mut next = Carry::default();

    let budgets: Vec<Arc<BudgetState>> = snapshot
        .budgets
        .iter()
        .map(|b| {
            let key = (b.namespace.clone(), b.name.clone());
            let state = Arc::new(BudgetState::new(
                b.clone(),
                carry.budgets.get(&key).map(|s| s.as_ref()),
            ));
            next.budgets.insert(key, state.clone());
            state
        })
        .collect();

    let mut models = HashMap::new();
    let mut pins = HashMap::new();
    let mut routes = Vec::with_capacity(snapshot.routes.len());
    let mut listed = Vec::new();
    let mut max_request_bytes = 0;
    for (ri, r) in snapshot.routes.iter().enumerate() {
        let backends = r
            .backends
            .iter()
            .map(|b| {
                let key = (r.namespace.clone(), r.name.clone(), b.name.clone());
                let state = match carry.backends.get(&key) {
                    Some(s)
                        if s.spec == *b
                            && s.labels.route_model == r.model
                            && s.breaker_config()
                                == (r.breaker.consecutive_failures, r.breaker.cooldown_ms) =>
                    {
                        s.clone()
                    }
                    _ => Arc::new(new_backend(r, b, transports, metrics)),
                };
                next.backends.insert(key, state.clone());
                state
            })
            .collect();
        let bucket = |carry: &Carry, next: &mut Carry, kind: &'static str, per_min: Option<u64>| {
            per_min.map(|n| {
                let key = (r.namespace.clone(), r.name.clone(), kind, n);
                let b = carry
                    .buckets
                    .get(&key)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Bucket::new(n, now)));
                next.buckets.insert(key, b.clone());
                b
            })
        };
        let rpm = bucket(
            carry,
            &mut next,
            "rpm",
            r.limits.requests_per_minute.map(u64::from),
        );
        let tpm = bucket(carry, &mut next, "tpm", r.limits.tokens_per_minute);
        let cache = r.cache.as_ref().map(|c| {
            let key = (r.namespace.clone(), r.name.clone());
            let cache = match carry.caches.get(&key) {
                Some((spec, cache)) if spec == c => cache.clone(),
                _ => Arc::new(ResponseCache::new(c.clone())),
            };
            next.caches.insert(key, (c.clone(), cache.clone()));
            cache
        });
        for name in std::iter::once(&r.model).chain(&r.aliases) {
            models.insert(name.clone(), ri);
            listed.push(json!({"id": name, "object": "model", "created": 0, "owned_by": format!("llmesh:{}/{}", r.namespace, r.name)}));
        }
        if r.allow_model_pinning {
            for (bi, b) in r.backends.iter().enumerate() {
                let id = format!("{}/{}", b.provider.as_str(), b.model);
                if pins
                    .insert(
                        id.clone(),
                        Target {
                            route: ri,
                            pinned: Some(bi),
                        },
                    )
                    .is_none()
                {
                    listed.push(json!({"id": id, "object": "model", "created": 0, "owned_by": format!("llmesh:{}/{}", r.namespace, r.name)}));
                }
            }
        }
        max_request_bytes = max_request_bytes.max(r.limits.max_request_bytes);
        routes.push(RouteState {
            spec: r.clone(),
            backends,
            rpm,
            tpm,
            cache,
            budgets: budgets
                .iter()
                .filter(|b| b.spec.covers(&r.namespace, &r.name))
                .cloned()
                .collect(),
        });
    }
    *carry = next;
    metrics.routes.set(routes.len() as i64);
    Runtime {
        version: snapshot.version.clone(),
        routes,
        budgets,
        models,
        pins,
        models_body: Bytes::from(json!({"object": "list", "data": listed}).to_string()),
        max_request_bytes: if max_request_bytes == 0 {
            llmesh_api::compile::DEFAULT_MAX_REQUEST_BYTES
        } else {
            max_request_bytes
        },
    }
}

impl BackendState {
    fn breaker_config(&self) -> (u32, u64) {
        self.breaker_cfg
    }
}

fn new_backend(
    r: &Route,
    b: &Backend,
    transports: &TransportFactory,
    metrics: &Metrics,
) -> BackendState {
    let labels = BackendLabels {
        route: r.name.clone(),
        backend: b.name.clone(),
        provider: b.provider.as_str().to_string(),
        model: b.model.clone(),
        variant: b.variant.clone(),
        route_model: r.model.clone(),
        gen_ai_provider: crate::metrics::gen_ai_provider(b.provider).to_string(),
    };
    BackendState {
        spec: b.clone(),
        provider: providers::for_kind(b.provider),
        transport: transports(b),
        breaker: Breaker::new(
            r.breaker.consecutive_failures,
            Duration::from_millis(r.breaker.cooldown_ms),
        ),
        breaker_cfg: (r.breaker.consecutive_failures, r.breaker.cooldown_ms),
        ewma_us: AtomicU64::new(0),
        in_flight: AtomicI64::new(0),
        permits: b
            .max_concurrency
            .map(|n| Arc::new(Semaphore::new(n as usize))),
        in_flight_gauge: metrics
            .in_flight
            .with_label_values(&[&labels.route, &labels.backend]),
        metrics: Default::default(),
        header_values: [
            header_value(&b.name),
            header_value(&b.variant),
            header_value(b.provider.as_str()),
            header_value(&r.name),
        ],
        labels,
        output_cap: llmesh_api::prices::max_output(&b.model),
        penalty_us: r.timeouts.first_token_ms.min(10_000) * 1_000,
    }
}

fn header_value(s: &str) -> http::HeaderValue {
    http::HeaderValue::from_str(s).unwrap_or_else(|_| http::HeaderValue::from_static("invalid"))
}
