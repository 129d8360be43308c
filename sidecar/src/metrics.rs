//! Every metric the sidecar exports, registered in one place. OpenTelemetry GenAI names and
//! labels where they exist (`gen_ai_*`), `llmesh_*` for the rest, base units (`_seconds`,
//! `_bytes`, USD). Labels stay bounded: every value comes from the config (route, backend,
//! provider, the route's and the backend's model, variant) or from a fixed set (operation, status
//! class, error type); never user ids, prompts, request ids or a model name a client made up.
//! Series of routes, backends and budgets a reload removed are removed with them ([`Metrics::prune`]).

use prometheus::core::{Collector, MetricVec, MetricVecBuilder};
use prometheus::{
    Counter, CounterVec, Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::providers::Op;

/// Labels identifying a backend's traffic, in the order label values are given.
pub const BACKEND_LABELS: [&str; 7] = [
    "route",
    "backend",
    "gen_ai_provider_name",
    "gen_ai_response_model",
    "variant",
    "gen_ai_request_model",
    "gen_ai_operation_name",
];

/// Label values of a backend, all from the config: owned (`String`) in a backend's live state,
/// borrowed (`&str`) where a request's metrics are recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BackendLabels<S = String> {
    /// The route's name.
    pub route: S,
    /// The backend's name.
    pub backend: S,
    /// The provider, llmesh's name (the access log's `provider`).
    pub provider: S,
    /// The backend's model: `gen_ai_response_model`.
    pub model: S,
    /// The backend's A/B variant.
    pub variant: S,
    /// The route's model, what clients ask for: `gen_ai_request_model`.
    pub route_model: S,
    /// The provider, OpenTelemetry's name where it has one: `gen_ai_provider_name`.
    pub gen_ai_provider: S,
}

impl BackendLabels {
    /// The same values, borrowed.
    pub fn as_str(&self) -> BackendLabels<&str> {
        BackendLabels {
            route: &self.route,
            backend: &self.backend,
            provider: &self.provider,
            model: &self.model,
            variant: &self.variant,
            route_model: &self.route_model,
            gen_ai_provider: &self.gen_ai_provider,
        }
    }
}

impl<'a> BackendLabels<&'a str> {
    /// Every value `none`: a request refused before any route.
    pub const NONE: Self = Self {
        route: "none",
        backend: "none",
        provider: "none",
        model: "none",
        variant: "none",
        route_model: "none",
        gen_ai_provider: "none",
    };

    /// Values for [`BACKEND_LABELS`], in their order, with the operation `op`.
    pub fn values(&self, op: Op) -> [&'a str; 7] {
        [
            self.route,
            self.backend,
            self.gen_ai_provider,
            self.model,
            self.variant,
            self.route_model,
            op.as_str(),
        ]
    }
}

/// `gen_ai_provider_name`: OpenTelemetry's well-known value where there is one, else llmesh's
/// name.
pub fn gen_ai_provider(kind: llmesh_api::ProviderKind) -> &'static str {
    use llmesh_api::ProviderKind as P;
    match kind {
        P::Azure => "azure.ai.openai",
        P::Mistral => "mistral_ai",
        P::Gemini => "gcp.gemini",
        other => other.as_str(),
    }
}

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

/// Buckets for time per output token, seconds (OpenTelemetry's GenAI advice).
const TPOT_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
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
    /// `gen_ai_server_time_per_output_token_seconds`: streaming pace after the first chunk.
    pub tpot: HistogramVec,
    /// `gen_ai_client_token_usage`: tokens per request by type.
    pub token_usage: HistogramVec,
    /// `llmesh_tokens_total`: tokens by type, marked estimated or reported.
    pub tokens: IntCounterVec,
    /// `llmesh_cost_usd_total`: spend in USD.
    pub cost_usd: CounterVec,
    /// `llmesh_cost_microdollars_total`: spend in micro-dollars, exact.
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
    /// `llmesh_backend_latency_ewma_seconds`: the latency average latency routing uses.
    pub latency_ewma: GaugeVec,
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
    /// `llmesh_config_age_seconds`: since the config source last confirmed the served config.
    pub config_age: IntGauge,
    /// `llmesh_config_stale`: 1 while the served config is not confirmed by its source.
    pub config_stale: IntGauge,
    /// `llmesh_access_log_dropped_total`: lines dropped because the writer fell behind.
    pub log_dropped: IntCounter,
    /// `llmesh_routes`: routes served.
    pub routes: IntGauge,
}

fn register<C: Collector + Clone + 'static>(r: &Registry, c: C) -> C {
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(
        r,
        IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(
        r,
        IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

fn int_gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    register(r, IntGauge::new(name, help).expect("valid metric"))
}

fn histogram(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    register(
        r,
        HistogramVec::new(
            HistogramOpts::new(name, help).buckets(buckets.to_vec()),
            labels,
        )
        .expect("valid metric"),
    )
}

fn with(extra: &[&'static str]) -> Vec<&'static str> {
    BACKEND_LABELS
        .iter()
        .copied()
        .chain(extra.iter().copied())
        .collect()
}

impl Metrics {
    /// Registers every metric, and the process's own (resident memory, CPU, open files) on
    /// Linux.
    pub fn new() -> Self {
        let r = Registry::new();
        #[cfg(target_os = "linux")]
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("unique metric");
        Self {
            requests: counter(
                &r,
                "llmesh_requests_total",
                "Requests answered, by route, backend, status class and error type.",
                &with(&["status_class", "error_type"]),
            ),
            duration: histogram(
                &r,
                "gen_ai_server_request_duration_seconds",
                "Time from receiving a request to its last byte.",
                &with(&["status_class", "error_type"]),
                DURATION_BUCKETS,
            ),
            ttft: histogram(
                &r,
                "gen_ai_server_time_to_first_token_seconds",
                "Time from receiving a streaming request to sending its first chunk.",
                &BACKEND_LABELS,
                TTFT_BUCKETS,
            ),
            tpot: histogram(
                &r,
                "gen_ai_server_time_per_output_token_seconds",
                "Time per output token of a stream after its first chunk.",
                &BACKEND_LABELS,
                TPOT_BUCKETS,
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
            cost_usd: register(
                &r,
                CounterVec::new(
                    Opts::new(
                        "llmesh_cost_usd_total",
                        "Spend in USD; estimated=\"true\" where usage was estimated.",
                    ),
                    &with(&["estimated"]),
                )
                .expect("valid metric"),
            ),
            cost: counter(
                &r,
                "llmesh_cost_microdollars_total",
                "Spend in micro-dollars (1e-6 USD), exact; estimated=\"true\" where usage was estimated.",
                &with(&["estimated"]),
            ),
            fallbacks: counter(
                &r,
                "llmesh_fallbacks_total",
                "Requests moved from one backend to the next, by reason and the request's A/B variant.",
                &["route", "from_backend", "to_backend", "reason", "variant"],
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
            latency_ewma: register(
                &r,
                GaugeVec::new(
                    Opts::new(
                        "llmesh_backend_latency_ewma_seconds",
                        "Recent latency of the backend (EWMA) used by latency-based routing.",
                    ),
                    &["route", "backend"],
                )
                .expect("valid metric"),
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
            config_age: int_gauge(
                &r,
                "llmesh_config_age_seconds",
                "Seconds since the config source last confirmed the config served (the operator's last answer, or the file's last load).",
            ),
            config_stale: int_gauge(
                &r,
                "llmesh_config_stale",
                "1 while the config served is not confirmed by its source: loaded from disk at start, or the operator unreachable or refusing.",
            ),
            log_dropped: int_counter(
                &r,
                "llmesh_access_log_dropped_total",
                "Access log lines dropped because the log writer fell behind.",
            ),
            routes: int_gauge(&r, "llmesh_routes", "Routes this sidecar serves."),
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

    /// Removes every labelled series `keep` refuses. Run after a reload, so routes, backends
    /// and budgets no longer served stop being exported.
    pub fn prune(&self, keep: &dyn Fn(&Series) -> bool) {
        prune(&self.requests, keep);
        prune(&self.duration, keep);
        prune(&self.ttft, keep);
        prune(&self.tpot, keep);
        prune(&self.token_usage, keep);
        prune(&self.tokens, keep);
        prune(&self.cost_usd, keep);
        prune(&self.cost, keep);
        prune(&self.fallbacks, keep);
        prune(&self.retries, keep);
        prune(&self.upstream_errors, keep);
        prune(&self.stream_errors, keep);
        prune(&self.backend_up, keep);
        prune(&self.circuit_state, keep);
        prune(&self.latency_ewma, keep);
        prune(&self.cache, keep);
        prune(&self.limit_rejections, keep);
        prune(&self.in_flight, keep);
        prune(&self.budget_spent, keep);
        prune(&self.budget_limit, keep);
        prune(&self.budget_tokens, keep);
        prune(&self.budget_alerts, keep);
    }
}

fn int_counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    register(r, IntCounter::new(name, help).expect("valid metric"))
}

/// One series' labels, read by name.
pub struct Series<'a>(&'a [prometheus::proto::LabelPair]);

impl<'a> Series<'a> {
    /// The value of label `name`, if the series has it.
    pub fn get(&self, name: &str) -> Option<&'a str> {
        self.0.iter().find(|p| p.name() == name).map(|p| p.value())
    }
}

/// Removes the series of `vec` that `keep` refuses.
fn prune<T: MetricVecBuilder>(vec: &MetricVec<T>, keep: &dyn Fn(&Series) -> bool) {
    let Some(names) = vec.desc().first().map(|d| d.variable_labels.clone()) else {
        return;
    };
    for family in vec.collect() {
        for m in family.get_metric() {
            let series = Series(m.get_label());
            if !keep(&series) {
                let values: Vec<&str> = names.iter().map(|n| series.get(n).unwrap_or("")).collect();
                let _ = vec.remove_label_values(&values);
            }
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The status class label for a status code.
pub fn status_class(status: u16) -> &'static str {
    CLASSES[class_index(status)]
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

fn op_index(op: Op) -> usize {
    match op {
        Op::Chat => 0,
        Op::Completion => 1,
        Op::Embedding => 2,
    }
}

type Once<T> = std::sync::OnceLock<T>;

/// One backend's metric handles, by operation (chat, text completion, embeddings), resolved on
/// first use and kept, so the request path does not hash label values on every request.
#[derive(Default)]
pub struct BackendMetrics {
    requests: [[Once<IntCounter>; 5]; 3],
    duration: [[Once<Histogram>; 5]; 3],
    ttft: [Once<Histogram>; 3],
    tpot: [Once<Histogram>; 3],
    usage: [[Once<Histogram>; 4]; 3],
    tokens: [[[Once<IntCounter>; 2]; 4]; 3],
    cost: [[Once<IntCounter>; 2]; 3],
    cost_usd: [[Once<Counter>; 2]; 3],
}

/// Where one request's metrics go: the answering backend's cached handles, or label values
/// looked up now (a fallback answering for another variant, a refusal before any backend, a
/// failure with an error type).
pub struct Sink<'a> {
    cached: Option<&'a BackendMetrics>,
    labels: BackendLabels<&'a str>,
    op: Op,
}

impl<'a> Sink<'a> {
    /// The answering backend's cached handles, labelled with its own values.
    pub fn cached(h: &'a BackendMetrics, labels: &'a BackendLabels, op: Op) -> Self {
        Self {
            cached: Some(h),
            labels: labels.as_str(),
            op,
        }
    }

    /// Labels looked up per call.
    pub fn labels_of(labels: BackendLabels<&'a str>, op: Op) -> Self {
        Self {
            cached: None,
            labels,
            op,
        }
    }

    /// The label values.
    pub fn labels(&self) -> BackendLabels<&'a str> {
        self.labels
    }

    /// Values for [`BACKEND_LABELS`].
    fn base(&self) -> [&'a str; 7] {
        self.labels.values(self.op)
    }

    /// Values for [`BACKEND_LABELS`] followed by `extra` (`M` is 7 + `N`).
    fn base_and<const N: usize, const M: usize>(&self, extra: [&'a str; N]) -> [&'a str; M] {
        const { assert!(M == BACKEND_LABELS.len() + N) };
        let base = self.base();
        std::array::from_fn(|i| match i.checked_sub(base.len()) {
            None => base[i],
            Some(j) => extra[j],
        })
    }

    /// Records one finished request; `error` is its error type (empty on success).
    pub fn request(&self, m: &Metrics, status: u16, error: &str, seconds: f64) {
        let c = class_index(status);
        let o = op_index(self.op);
        let values: [&str; 9] = self.base_and([CLASSES[c], error]);
        match self.cached {
            Some(h) if error.is_empty() => {
                h.requests[o][c]
                    .get_or_init(|| m.requests.with_label_values(&values))
                    .inc();
                h.duration[o][c]
                    .get_or_init(|| m.duration.with_label_values(&values))
                    .observe(seconds);
            }
            _ => {
                m.requests.with_label_values(&values).inc();
                m.duration.with_label_values(&values).observe(seconds);
            }
        }
    }

    /// Records time to first token.
    pub fn ttft(&self, m: &Metrics, seconds: f64) {
        let b = self.base();
        match self.cached {
            Some(h) => h.ttft[op_index(self.op)]
                .get_or_init(|| m.ttft.with_label_values(&b))
                .observe(seconds),
            None => m.ttft.with_label_values(&b).observe(seconds),
        }
    }

    /// Records the time per output token of a stream after its first chunk.
    pub fn time_per_output_token(&self, m: &Metrics, seconds: f64) {
        let b = self.base();
        match self.cached {
            Some(h) => h.tpot[op_index(self.op)]
                .get_or_init(|| m.tpot.with_label_values(&b))
                .observe(seconds),
            None => m.tpot.with_label_values(&b).observe(seconds),
        }
    }

    /// Records tokens of type `TOKEN_TYPES[kind]`.
    pub fn tokens(&self, m: &Metrics, kind: usize, n: u64, estimated: bool) {
        let o = op_index(self.op);
        let est = usize::from(estimated);
        let est_label = if estimated { "true" } else { "false" };
        let t = TOKEN_TYPES[kind];
        let usage: [&str; 8] = self.base_and([t]);
        let counted: [&str; 9] = self.base_and([t, est_label]);
        match self.cached {
            Some(h) => {
                h.usage[o][kind]
                    .get_or_init(|| m.token_usage.with_label_values(&usage))
                    .observe(n as f64);
                h.tokens[o][kind][est]
                    .get_or_init(|| m.tokens.with_label_values(&counted))
                    .inc_by(n);
            }
            None => {
                m.token_usage.with_label_values(&usage).observe(n as f64);
                m.tokens.with_label_values(&counted).inc_by(n);
            }
        }
    }

    /// Records spend, in micro-dollars and in USD.
    pub fn cost(&self, m: &Metrics, micro: u64, estimated: bool) {
        let o = op_index(self.op);
        let est = usize::from(estimated);
        let est_label = if estimated { "true" } else { "false" };
        let values: [&str; 8] = self.base_and([est_label]);
        let usd = micro as f64 / 1e6;
        match self.cached {
            Some(h) => {
                h.cost[o][est]
                    .get_or_init(|| m.cost.with_label_values(&values))
                    .inc_by(micro);
                h.cost_usd[o][est]
                    .get_or_init(|| m.cost_usd.with_label_values(&values))
                    .inc_by(usd);
            }
            None => {
                m.cost.with_label_values(&values).inc_by(micro);
                m.cost_usd.with_label_values(&values).inc_by(usd);
            }
        }
    }
}
