//! Every operator metric, registered in one place. Labels stay low-cardinality: no pod or route
//! names (a cluster has thousands of pods); the per-budget gauges name the namespace and budget
//! (one series per LLMBudget, what FinOps dashboards chart).

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// The operator's metrics.
pub struct Metrics {
    registry: Registry,
    /// Reconciles by kind and result (`ok`, `error`).
    pub reconciles: IntCounterVec,
    /// Seconds per reconcile.
    pub reconcile_seconds: Histogram,
    /// Status writes (server-side apply) by kind.
    pub status_writes: IntCounterVec,
    /// Events published by reason class (`warning`, `normal`).
    pub events: IntCounterVec,
    /// Route compilations (a spec, generation or Secret changed).
    pub route_compiles: IntCounter,
    /// Snapshots assembled and encoded (once per distinct set of routes, shared by every pod
    /// that runs that set).
    pub snapshots_encoded: IntCounter,
    /// Seconds per recompute pass over the watched state.
    pub recompute_seconds: Histogram,
    /// Secrets read (GET) because a referenced Secret changed.
    pub secret_reads: IntCounter,
    /// Secrets whose data is held.
    pub secrets_held: IntGauge,
    /// Sidecars with a poll open or answered in the last seconds.
    pub sidecars_connected: IntGauge,
    /// Poll answers by code (`200`, `304`, `401`, `403`, `503`).
    pub polls: IntCounterVec,
    /// Bytes of snapshots sent, by form (`full`, `delta`).
    pub snapshot_bytes: IntCounterVec,
    /// TokenReviews sent to the API server, by result (`ok`, `rejected`, `error`).
    pub token_reviews: IntCounterVec,
    /// Admission reviews by result (`injected`, `already`, `skipped`, `error`).
    pub admissions: IntCounterVec,
    /// 1 while this replica holds the leader Lease.
    pub leader: IntGauge,
    /// Unix time the serving certificate expires.
    pub cert_expiry: IntGauge,
    /// Seconds from a snapshot's assembly to its answer to a sidecar whose poll was waiting.
    pub snapshot_fanout_seconds: Histogram,
    /// Usage reports by answer (`ok`, `401`, `403`, `400`, `503`).
    pub usage_reports: IntCounterVec,
    /// Budget ledgers a report touched, by result (`counted`, `duplicate`, `unknown_budget`,
    /// `conflict`, `error`).
    pub ledger_updates: IntCounterVec,
    /// Budget ledger writes (each counts the reports that waited for it together).
    pub ledger_writes: IntCounter,
    /// Budget alert thresholds crossed (fleet-wide, once per threshold and period), by percent.
    pub budget_alerts: IntCounterVec,
    /// Fleet spend this period per budget, micro-dollars (leader only; `budget_namespace` and
    /// `budget` labels: one series per LLMBudget).
    pub budget_spent: IntGaugeVec,
    /// Fleet tokens this period per budget (leader only).
    pub budget_spent_tokens: IntGaugeVec,
    /// The USD cap per budget, micro-dollars (leader only; absent without a USD cap).
    pub budget_limit: IntGaugeVec,
    /// What is left of the USD cap this period, micro-dollars (leader only).
    pub budget_remaining: IntGaugeVec,
    /// Spend per hour so far this period, micro-dollars (leader only).
    pub budget_burn_rate: IntGaugeVec,
}

/// A gauge per LLMBudget (`budget_namespace`, `budget`). Not `namespace`: Prometheus sets that
/// label to the operator pod's own namespace when it scrapes, and would rename this one.
fn gauge_vec(r: &Registry, name: &str, help: &str) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), &["budget_namespace", "budget"])
        .expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

impl Metrics {
    /// Sets the per-budget gauges of `ns/name` (`limit` None: no USD cap).
    pub fn set_budget(
        &self,
        ns: &str,
        name: &str,
        spent: u64,
        tokens: u64,
        limit: Option<u64>,
        burn_per_hour: u64,
    ) {
        let l = [ns, name];
        let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.budget_spent.with_label_values(&l).set(clamp(spent));
        self.budget_spent_tokens
            .with_label_values(&l)
            .set(clamp(tokens));
        self.budget_burn_rate
            .with_label_values(&l)
            .set(clamp(burn_per_hour));
        match limit {
            Some(cap) => {
                self.budget_limit.with_label_values(&l).set(clamp(cap));
                self.budget_remaining
                    .with_label_values(&l)
                    .set(clamp(cap.saturating_sub(spent)));
            }
            None => {
                let _ = self.budget_limit.remove_label_values(&l);
                let _ = self.budget_remaining.remove_label_values(&l);
            }
        }
    }

    /// Drops the per-budget gauges of a budget that is gone.
    pub fn forget_budget(&self, ns: &str, name: &str) {
        let l = [ns, name];
        for g in [
            &self.budget_spent,
            &self.budget_spent_tokens,
            &self.budget_limit,
            &self.budget_remaining,
            &self.budget_burn_rate,
        ] {
            let _ = g.remove_label_values(&l);
        }
    }
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

/// Buckets for the operator's own work, seconds.
const WORK_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
/// Buckets for a snapshot's fan-out to sidecars, seconds.
const FANOUT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

fn histogram(r: &Registry, name: &str, help: &str) -> Histogram {
    histogram_with(r, name, help, WORK_BUCKETS)
}

fn histogram_with(r: &Registry, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
        .expect("valid metric");
    r.register(Box::new(h.clone())).expect("unique metric");
    h
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
            reconciles: counter_vec(
                &r,
                "llmesh_operator_reconciles_total",
                "Reconciles by kind and result",
                &["kind", "result"],
            ),
            reconcile_seconds: histogram(
                &r,
                "llmesh_operator_reconcile_duration_seconds",
                "Time per reconcile",
            ),
            status_writes: counter_vec(
                &r,
                "llmesh_operator_status_writes_total",
                "Status writes (server-side apply) by kind",
                &["kind"],
            ),
            events: counter_vec(
                &r,
                "llmesh_operator_events_total",
                "Kubernetes Events published, by type",
                &["type"],
            ),
            route_compiles: counter(
                &r,
                "llmesh_operator_route_compiles_total",
                "Route compilations",
            ),
            snapshots_encoded: counter(
                &r,
                "llmesh_operator_snapshots_encoded_total",
                "Snapshots assembled and encoded (once per distinct route set)",
            ),
            recompute_seconds: histogram(
                &r,
                "llmesh_operator_recompute_duration_seconds",
                "Time per recompute pass",
            ),
            secret_reads: counter(
                &r,
                "llmesh_operator_secret_reads_total",
                "Secrets read because a referenced Secret changed",
            ),
            secrets_held: gauge(
                &r,
                "llmesh_operator_secrets_held",
                "Secrets whose data the operator holds",
            ),
            sidecars_connected: gauge(
                &r,
                "llmesh_operator_sidecars_connected",
                "Sidecars connected to this replica",
            ),
            polls: counter_vec(
                &r,
                "llmesh_operator_snapshot_polls_total",
                "Snapshot poll answers by status code",
                &["code"],
            ),
            snapshot_bytes: counter_vec(
                &r,
                "llmesh_operator_snapshot_bytes_total",
                "Bytes of snapshots sent to sidecars, whole (full) or as changes (delta)",
                &["form"],
            ),
            token_reviews: counter_vec(
                &r,
                "llmesh_operator_token_reviews_total",
                "TokenReviews by result",
                &["result"],
            ),
            admissions: counter_vec(
                &r,
                "llmesh_operator_admissions_total",
                "Pod admission reviews by result",
                &["result"],
            ),
            leader: gauge(
                &r,
                "llmesh_operator_leader",
                "1 while this replica holds the leader Lease",
            ),
            cert_expiry: gauge(
                &r,
                "llmesh_operator_certificate_expiry_timestamp_seconds",
                "When the serving certificate expires (Unix time)",
            ),
            snapshot_fanout_seconds: histogram_with(
                &r,
                "llmesh_operator_snapshot_fanout_seconds",
                "Time from a snapshot's assembly to its answer to a sidecar whose poll was waiting for it",
                FANOUT_BUCKETS,
            ),
            usage_reports: counter_vec(
                &r,
                "llmesh_operator_usage_reports_total",
                "Usage reports from sidecars by answer",
                &["code"],
            ),
            ledger_updates: counter_vec(
                &r,
                "llmesh_operator_ledger_updates_total",
                "Budget ledgers touched by usage reports, by result",
                &["result"],
            ),
            ledger_writes: counter(
                &r,
                "llmesh_operator_ledger_writes_total",
                "Budget ledger writes (reports that wait for a write go together in it)",
            ),
            budget_alerts: counter_vec(
                &r,
                "llmesh_operator_budget_alerts_total",
                "Budget alert thresholds crossed fleet-wide (once per threshold and period), by percent",
                &["threshold"],
            ),
            budget_spent: gauge_vec(
                &r,
                "llmesh_operator_budget_spent_microdollars",
                "Fleet spend this period per LLMBudget, micro-dollars",
            ),
            budget_spent_tokens: gauge_vec(
                &r,
                "llmesh_operator_budget_spent_tokens",
                "Fleet tokens this period per LLMBudget",
            ),
            budget_limit: gauge_vec(
                &r,
                "llmesh_operator_budget_limit_microdollars",
                "USD cap per LLMBudget and period, micro-dollars",
            ),
            budget_remaining: gauge_vec(
                &r,
                "llmesh_operator_budget_remaining_microdollars",
                "What is left of each LLMBudget's USD cap this period, micro-dollars",
            ),
            budget_burn_rate: gauge_vec(
                &r,
                "llmesh_operator_budget_burn_rate_microdollars_per_hour",
                "Fleet spend per hour so far this period per LLMBudget, micro-dollars",
            ),
            registry: r,
        }
    }

    /// Records a snapshot answered to a sidecar `age` after its assembly; only answers to a
    /// poll that was waiting for it (`woke`) measure the fan-out: a sidecar that polls later
    /// (a new pod, a reconnect) gets an older snapshot for reasons of its own.
    pub fn observe_fanout(&self, woke: bool, age: std::time::Duration) {
        if woke {
            self.snapshot_fanout_seconds.observe(age.as_secs_f64());
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_operator_exports_its_own_metrics() {
        let m = Metrics::new();
        m.reconciles.with_label_values(&["route", "error"]).inc();
        m.leader.set(1);
        m.cert_expiry.set(1_900_000_000);
        m.sidecars_connected.set(3);
        m.observe_fanout(true, std::time::Duration::from_millis(20));
        // A late poll is not a fan-out.
        m.observe_fanout(false, std::time::Duration::from_secs(600));
        let text = m.render();
        let value = |series: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
                .unwrap_or_else(|| panic!("{series} missing from:\n{text}"))
                .parse::<f64>()
                .unwrap()
        };
        assert_eq!(value("llmesh_operator_sidecars_connected"), 3.0);
        assert_eq!(value("llmesh_operator_snapshot_fanout_seconds_count"), 1.0);
        assert!((value("llmesh_operator_snapshot_fanout_seconds_sum") - 0.02).abs() < 1e-9);
        assert_eq!(
            value("llmesh_operator_reconciles_total{kind=\"route\",result=\"error\"}"),
            1.0
        );
        assert_eq!(
            value("llmesh_operator_certificate_expiry_timestamp_seconds"),
            1_900_000_000.0
        );
        assert_eq!(value("llmesh_operator_leader"), 1.0);
        #[cfg(target_os = "linux")]
        {
            assert!(value("process_resident_memory_bytes") > 0.0);
            assert!(value("process_open_fds") > 0.0);
            value("process_cpu_seconds_total");
        }
    }
}
