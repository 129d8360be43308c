//! Every metric the sidecar exports, registered in one place. OpenTelemetry GenAI names where
//! they exist, `llmesh_*` for the rest. Labels stay low-cardinality: route, backend, provider,
//! model, variant, status class; never user ids or prompts.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Labels identifying a backend's traffic.
pub const BACKEND_LABELS: [&str; 5] = ["route", "backend", "provider", "model", "variant"];

/// Buckets for request durations, seconds (OpenTelemetry's GenAI advice, extended).
const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];
/// Buckets for time to first token, seconds.
const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
/// Buckets for tokens per request (OpenTelemetry's `gen_ai.client.token.usage` advice).
const TOKEN_BUCKETS: &[f64] = &[
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
];

/// The sidecar's metrics.
pub struct Metrics {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    /// `llmesh_requests_total`: requests by outcome.
    pub requests: IntCounterVec,
    /// `gen_ai_server_request_duration_seconds`: whole request duration.
    pub duration: HistogramVec,
    /// `gen_ai_server_time_to_first_token_seconds`: first streamed chunk.
    pub ttft: HistogramVec,
    /// `gen_ai_client_token_usage`: tokens per request by type.
    pub token_usage: HistogramVec,
    /// `llmesh_tokens_total`: tokens by type, marked estimated or reported.
    pub tokens: IntCounterVec,
    /// `llmesh_cost_microdollars_total`: spend in micro-dollars.
    pub cost: IntCounterVec,
    /// `llmesh_fallbacks_total`: moves from one backend to the next.
    pub fallbacks: IntCounterVec,
    /// `llmesh_retries_total`: retries of the same backend.
    pub retries: IntCounterVec,
    /// `llmesh_upstream_errors_total`: failed upstream attempts by reason.
    pub upstream_errors: IntCounterVec,
    /// `llmesh_stream_errors_total`: streams that broke after the first byte.
    pub stream_errors: IntCounterVec,
    /// `llmesh_backend_up`: 1 unless the circuit is open.
    pub backend_up: IntGaugeVec,
    /// `llmesh_backend_circuit_state`: 0 closed, 1 open, 2 half-open.
    pub circuit_state: IntGaugeVec,
    /// `llmesh_backend_latency_ewma_seconds`-like gauge in microseconds.
    pub latency_ewma: IntGaugeVec,
    /// `llmesh_cache_requests_total`: hit, miss, bypass.
    pub cache: IntCounterVec,
    /// `llmesh_limit_rejections_total`: refusals by limit.
    pub limit_rejections: IntCounterVec,
    /// `llmesh_in_flight_requests`.
    pub in_flight: IntGaugeVec,
    /// `llmesh_budget_spent_microdollars`.
    pub budget_spent: IntGaugeVec,
    /// `llmesh_budget_limit_microdollars`.
    pub budget_limit: IntGaugeVec,
    /// `llmesh_budget_spent_tokens`.
    pub budget_tokens: IntGaugeVec,
    /// `llmesh_budget_alerts_total`: threshold crossings.
    pub budget_alerts: IntCounterVec,
    /// `llmesh_config_reloads_total`: by result.
    pub reloads: IntCounterVec,
    /// `llmesh_config_deltas_total`: snapshot deltas from the operator, `applied` or `refused`.
    pub deltas: IntCounterVec,
    /// `llmesh_config_info`: 1, labelled with the serving version.
    pub config_info: IntGaugeVec,
    /// `llmesh_access_log_dropped_total`: lines dropped because the writer fell behind.
    pub log_dropped: IntCounter,
    /// `llmesh_routes`: routes served.
    pub routes: IntGauge,
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn histogram(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )
    .expect("valid metric");
    r.register(Box::new(h.clone())).expect("unique metric");
    h
}

fn with(extra: &[&'static str]) -> Vec<&'static str> {
    BACKEND_LABELS
        .iter()
        .copied()
        .chain(extra.iter().copied())
        .collect()
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let r = Registry::new();
        let log_dropped = IntCounter::new(
            "llmesh_access_log_dropped_total",
            "Access log lines dropped because the log writer fell behind.",
        )
        .expect("valid metric");
        r.register(Box::new(log_dropped.clone()))
            .expect("unique metric");
        let routes =
            IntGauge::new("llmesh_routes", "Routes this sidecar serves.").expect("valid metric");
        r.register(Box::new(routes.clone())).expect("unique metric");
        Self {
            requests: counter(
                &r,
                "llmesh_requests_total",
                "Requests answered, by route, backend and status class.",
                &with(&["status_class"]),
            ),
            duration: histogram(
                &r,
                "gen_ai_server_request_duration_seconds",
                "Time from receiving a request to its last byte.",
                &with(&["status_class"]),
                DURATION_BUCKETS,
            ),
            ttft: histogram(
                &r,
                "gen_ai_server_time_to_first_token_seconds",
                "Time from receiving a streaming request to sending its first chunk.",
                &BACKEND_LABELS,
                TTFT_BUCKETS,
            ),
            token_usage: histogram(
                &r,
                "gen_ai_client_token_usage",
                "Tokens per request, by gen_ai_token_type (input, output, cached_input, cache_write).",
                &with(&["gen_ai_token_type"]),
                TOKEN_BUCKETS,
            ),
            tokens: counter(
                &r,
                "llmesh_tokens_total",
                "Tokens by type; estimated=\"true\" where the provider reported none.",
                &with(&["type", "estimated"]),
            ),
            cost: counter(
                &r,
                "llmesh_cost_microdollars_total",
                "Spend in micro-dollars (1e-6 USD); estimated=\"true\" where usage was estimated.",
                &with(&["estimated"]),
            ),
            fallbacks: counter(
                &r,
                "llmesh_fallbacks_total",
                "Requests moved from one backend to the next, by reason.",
                &["route", "from_backend", "to_backend", "reason"],
            ),
            retries: counter(
                &r,
                "llmesh_retries_total",
                "Retries of the same backend, by reason.",
                &["route", "backend", "reason"],
            ),
            upstream_errors: counter(
                &r,
                "llmesh_upstream_errors_total",
                "Failed upstream attempts, by reason.",
                &["route", "backend", "reason"],
            ),
            stream_errors: counter(
                &r,
                "llmesh_stream_errors_total",
                "Streams that failed after their first byte reached the client.",
                &["route", "backend", "reason"],
            ),
            backend_up: gauge(
                &r,
                "llmesh_backend_up",
                "1 when the backend takes traffic, 0 while its circuit is open.",
                &["route", "backend"],
            ),
            circuit_state: gauge(
                &r,
                "llmesh_backend_circuit_state",
                "Circuit breaker state: 0 closed, 1 open, 2 half-open.",
                &["route", "backend"],
            ),
            latency_ewma: gauge(
                &r,
                "llmesh_backend_latency_ewma_microseconds",
                "Recent latency of the backend (EWMA) used by latency-based routing.",
                &["route", "backend"],
            ),
            cache: counter(
                &r,
                "llmesh_cache_requests_total",
                "Cache lookups by result: hit, miss, bypass.",
                &["route", "result"],
            ),
            limit_rejections: counter(
                &r,
                "llmesh_limit_rejections_total",
                "Requests refused by a limit: rpm, tpm, max_tokens, input_tokens, body_size, concurrency, budget.",
                &["route", "limit"],
            ),
            in_flight: gauge(
                &r,
                "llmesh_in_flight_requests",
                "Requests in flight to each backend.",
                &["route", "backend"],
            ),
            budget_spent: gauge(
                &r,
                "llmesh_budget_spent_microdollars",
                "Spend counted against the budget this period, micro-dollars.",
                &["namespace", "budget"],
            ),
            budget_limit: gauge(
                &r,
                "llmesh_budget_limit_microdollars",
                "The budget's USD cap, micro-dollars (absent when capped by tokens only).",
                &["namespace", "budget"],
            ),
            budget_tokens: gauge(
                &r,
                "llmesh_budget_spent_tokens",
                "Tokens counted against the budget this period.",
                &["namespace", "budget"],
            ),
            budget_alerts: counter(
                &r,
                "llmesh_budget_alerts_total",
                "Budget alert thresholds crossed.",
                &["namespace", "budget", "threshold"],
            ),
            reloads: counter(
                &r,
                "llmesh_config_reloads_total",
                "Config loads by result: ok, invalid.",
                &["result"],
            ),
            deltas: counter(
                &r,
                "llmesh_config_deltas_total",
                "Snapshot deltas from the operator by result: applied, refused (then the whole snapshot is fetched).",
                &["result"],
            ),
            config_info: gauge(
                &r,
                "llmesh_config_info",
                "1 for the config version being served.",
                &["version"],
            ),
            log_dropped,
            routes,
            registry: r,
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding cannot fail");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The status class label for a status code.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// Index of a status class in per-class handle arrays.
pub fn class_index(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
/// `gen_ai_token_type` values, in the order of [`BackendMetrics`]' token arrays.
pub const TOKEN_TYPES: [&str; 4] = ["input", "output", "cached_input", "cache_write"];

/// One backend's metric handles, resolved on first use and kept, so the request path does not
/// hash label values on every request.
#[derive(Default)]
pub struct BackendMetrics {
    requests: [std::sync::OnceLock<IntCounter>; 5],
    duration: [std::sync::OnceLock<prometheus::Histogram>; 5],
    ttft: std::sync::OnceLock<prometheus::Histogram>,
    usage: [std::sync::OnceLock<prometheus::Histogram>; 4],
    tokens: [[std::sync::OnceLock<IntCounter>; 2]; 4],
    cost: [std::sync::OnceLock<IntCounter>; 2],
}

/// Where one request's metrics go: a backend's cached handles, or label values looked up now
/// (a fallback answering for another variant, or a refusal before any backend).
pub enum Sink<'a> {
    /// Cached handles of the answering backend, labelled with its own variant.
    Cached(&'a BackendMetrics, &'a [String; 5]),
    /// Labels looked up per call.
    Labels([&'a str; 5]),
}

impl Sink<'_> {
    /// The label values: route, backend, provider, model, variant.
    pub fn labels(&self) -> [&str; 5] {
        match self {
            Sink::Cached(_, l) => [&l[0], &l[1], &l[2], &l[3], &l[4]],
            Sink::Labels(l) => *l,
        }
    }

    /// Records one finished request.
    pub fn request(&self, m: &Metrics, status: u16, seconds: f64) {
        let c = class_index(status);
        let l = self.labels();
        match self {
            Sink::Cached(h, _) => {
                h.requests[c]
                    .get_or_init(|| {
                        m.requests
                            .with_label_values(&[l[0], l[1], l[2], l[3], l[4], CLASSES[c]])
                    })
                    .inc();
                h.duration[c]
                    .get_or_init(|| {
                        m.duration
                            .with_label_values(&[l[0], l[1], l[2], l[3], l[4], CLASSES[c]])
                    })
                    .observe(seconds);
            }
            Sink::Labels(_) => {
                m.requests
                    .with_label_values(&[l[0], l[1], l[2], l[3], l[4], CLASSES[c]])
                    .inc();
                m.duration
                    .with_label_values(&[l[0], l[1], l[2], l[3], l[4], CLASSES[c]])
                    .observe(seconds);
            }
        }
    }

    /// Records time to first token.
    pub fn ttft(&self, m: &Metrics, seconds: f64) {
        let l = self.labels();
        match self {
            Sink::Cached(h, _) => h
                .ttft
                .get_or_init(|| m.ttft.with_label_values(&l))
                .observe(seconds),
            Sink::Labels(_) => m.ttft.with_label_values(&l).observe(seconds),
        }
    }

    /// Records tokens of type `TOKEN_TYPES[kind]`.
    pub fn tokens(&self, m: &Metrics, kind: usize, n: u64, estimated: bool) {
        let l = self.labels();
        let est = usize::from(estimated);
        let est_label = if estimated { "true" } else { "false" };
        let t = TOKEN_TYPES[kind];
        match self {
            Sink::Cached(h, _) => {
                h.usage[kind]
                    .get_or_init(|| {
                        m.token_usage
                            .with_label_values(&[l[0], l[1], l[2], l[3], l[4], t])
                    })
                    .observe(n as f64);
                h.tokens[kind][est]
                    .get_or_init(|| {
                        m.tokens
                            .with_label_values(&[l[0], l[1], l[2], l[3], l[4], t, est_label])
                    })
                    .inc_by(n);
            }
            Sink::Labels(_) => {
                m.token_usage
                    .with_label_values(&[l[0], l[1], l[2], l[3], l[4], t])
                    .observe(n as f64);
                m.tokens
                    .with_label_values(&[l[0], l[1], l[2], l[3], l[4], t, est_label])
                    .inc_by(n);
            }
        }
    }

    /// Records spend.
    pub fn cost(&self, m: &Metrics, micro: u64, estimated: bool) {
        let l = self.labels();
        let est = usize::from(estimated);
        let est_label = if estimated { "true" } else { "false" };
        match self {
            Sink::Cached(h, _) => h.cost[est]
                .get_or_init(|| {
                    m.cost
                        .with_label_values(&[l[0], l[1], l[2], l[3], l[4], est_label])
                })
                .inc_by(micro),
            Sink::Labels(_) => m
                .cost
                .with_label_values(&[l[0], l[1], l[2], l[3], l[4], est_label])
                .inc_by(micro),
        }
    }
}
