//! The bookkeeping of one request: metrics, cost, rate-limit and budget reconciliation and the
//! access-log line, done exactly once when the request ends, however it ends (a client that
//! drops a stream is still charged for what was generated).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use llmesh_api::money::format_usd;

use crate::accesslog::Line;
use crate::app::App;
use crate::budget::{BudgetState, Reservation, rfc3339};
use crate::metrics::status_class;
use crate::providers::{Op, Usage};
use crate::runtime::{InFlight, Runtime};

/// One request in progress.
pub struct Ticket {
    /// The app (metrics, log, clock).
    pub app: Arc<App>,
    /// The config version serving it.
    pub rt: Option<Arc<Runtime>>,
    /// Index of the route.
    pub route: Option<usize>,
    /// Index of the backend that answered (or was last tried).
    pub backend: Option<usize>,
    /// `x-request-id`.
    pub request_id: String,
    /// What was asked.
    pub op: Op,
    /// The path called.
    pub path: String,
    /// The model the client named.
    pub model: String,
    /// When the request arrived.
    pub start: Instant,
    /// When the first streamed byte left.
    pub ttft: Option<Duration>,
    /// Whether it streams.
    pub stream: bool,
    /// Upstream attempts.
    pub attempts: u32,
    /// Backends failed over from, in order.
    pub fallbacks: Vec<String>,
    /// The rule that chose the backend.
    pub rule: Option<String>,
    /// The A/B variant the strategy assigned (the first backend of the plan). It stays the
    /// request's variant when a fallback answers, so experiments count their fallbacks.
    pub variant: Option<String>,
    /// Cache result: hit, miss, bypass, off.
    pub cache: &'static str,
    /// Estimated prompt tokens (used when the provider reports no usage).
    pub prompt_estimate: u32,
    /// Tokens taken from the tokens-per-minute bucket at admission.
    pub tpm_reserved: u64,
    /// Budget reservations to settle.
    pub reservations: Vec<(Arc<BudgetState>, Reservation)>,
    /// Keeps the backend's in-flight count while the answer streams.
    pub in_flight: Option<InFlight>,
    /// Keeps the backend's concurrency permit while the answer streams.
    pub permit: Option<OwnedSemaphorePermit>,
    done: bool,
}

impl Ticket {
    /// A ticket for a request that just arrived.
    pub fn new(app: Arc<App>, request_id: String, op: Op, path: String) -> Self {
        Self {
            app,
            rt: None,
            route: None,
            backend: None,
            request_id,
            op,
            path,
            model: String::new(),
            start: Instant::now(),
            ttft: None,
            stream: false,
            attempts: 0,
            fallbacks: Vec::new(),
            rule: None,
            variant: None,
            cache: "off",
            prompt_estimate: 0,
            tpm_reserved: 0,
            reservations: Vec::new(),
            in_flight: None,
            permit: None,
            done: false,
        }
    }

    /// Labels of the answering backend (with the assigned variant), or of the route alone.
    fn labels(&self) -> [String; 5] {
        let rt = self.rt.as_ref();
        match (rt, self.route, self.backend) {
            (Some(rt), Some(r), Some(b)) => {
                let mut l = rt.routes[r].backends[b].labels.clone();
                if let Some(v) = &self.variant {
                    l[4].clone_from(v);
                }
                l
            }
            (Some(rt), Some(r), None) => [
                rt.routes[r].spec.name.clone(),
                "none".into(),
                "none".into(),
                "none".into(),
                "none".into(),
            ],
            _ => [
                "none".into(),
                "none".into(),
                "none".into(),
                "none".into(),
                "none".into(),
            ],
        }
    }

    /// The cost of `usage` on the answering backend, micro-dollars.
    pub fn cost(&self, usage: &Usage) -> u64 {
        match (&self.rt, self.route, self.backend) {
            (Some(rt), Some(r), Some(b)) => usage.cost(&rt.routes[r].backends[b].spec.prices),
            _ => 0,
        }
    }

    /// Ends the request: `usage` is what the provider reported (or None), `error` a reason label
    /// (empty on success).
    pub fn finish(mut self, status: u16, usage: Option<Usage>, error: &str, cancelled: bool) {
        self.finish_inner(status, usage, error, cancelled);
    }

    fn finish_inner(&mut self, status: u16, usage: Option<Usage>, error: &str, cancelled: bool) {
        if self.done {
            return;
        }
        self.done = true;
        let m = &self.app.metrics;
        let labels = self.labels();
        let l: [&str; 5] = [&labels[0], &labels[1], &labels[2], &labels[3], &labels[4]];
        let class = status_class(status);
        let elapsed = self.start.elapsed();
        m.requests
            .with_label_values(&[l[0], l[1], l[2], l[3], l[4], class])
            .inc();
        m.duration
            .with_label_values(&[l[0], l[1], l[2], l[3], l[4], class])
            .observe(elapsed.as_secs_f64());
        if let Some(t) = self.ttft {
            m.ttft.with_label_values(&l).observe(t.as_secs_f64());
        }
        let usage = usage.filter(|_| self.cache != "hit");
        let cost = usage.as_ref().map_or(0, |u| self.cost(u));
        if let Some(u) = &usage {
            let est = if u.estimated { "true" } else { "false" };
            for (kind, n) in [
                ("input", u.prompt),
                ("output", u.output),
                ("cached_input", u.cached_input),
                ("cache_write", u.cache_write),
            ] {
                if n > 0 || kind == "input" || kind == "output" {
                    m.token_usage
                        .with_label_values(&[l[0], l[1], l[2], l[3], l[4], kind])
                        .observe(n as f64);
                    m.tokens
                        .with_label_values(&[l[0], l[1], l[2], l[3], l[4], kind, est])
                        .inc_by(n);
                }
            }
            m.cost
                .with_label_values(&[l[0], l[1], l[2], l[3], l[4], est])
                .inc_by(cost);
        }
        let now = Instant::now();
        if let (Some(rt), Some(r)) = (&self.rt, self.route)
            && let Some(tpm) = &rt.routes[r].tpm
        {
            let actual = usage.as_ref().map_or(0, Usage::total) as i64;
            tpm.adjust(actual - self.tpm_reserved as i64, now);
        }
        let unix = self.app.clock.unix_now();
        let tokens = usage.as_ref().map_or(0, Usage::total);
        for (budget, reservation) in self.reservations.drain(..) {
            for alert in budget.settle(reservation, cost, tokens, unix) {
                m.budget_alerts
                    .with_label_values(&[
                        &budget.spec.namespace,
                        &budget.spec.name,
                        &alert.threshold.to_string(),
                    ])
                    .inc();
                tracing::warn!(
                    budget = %format!("{}/{}", budget.spec.namespace, budget.spec.name),
                    threshold = alert.threshold,
                    "budget crossed {}% of its cap",
                    alert.threshold
                );
            }
            let (spent, spent_tokens, _) = budget.spent(unix);
            m.budget_spent
                .with_label_values(&[&budget.spec.namespace, &budget.spec.name])
                .set(spent as i64);
            m.budget_tokens
                .with_label_values(&[&budget.spec.namespace, &budget.spec.name])
                .set(spent_tokens as i64);
        }
        self.in_flight = None;
        self.permit = None;

        let u = usage.unwrap_or_default();
        self.app.log.write(&Line {
            ts: rfc3339(unix),
            log: "access",
            request_id: std::mem::take(&mut self.request_id),
            op: self.op.as_str(),
            path: std::mem::take(&mut self.path),
            model: std::mem::take(&mut self.model),
            route: if labels[0] == "none" {
                String::new()
            } else {
                labels[0].clone()
            },
            backend: if labels[1] == "none" {
                String::new()
            } else {
                labels[1].clone()
            },
            provider: if labels[2] == "none" {
                String::new()
            } else {
                labels[2].clone()
            },
            variant: if labels[4] == "none" {
                String::new()
            } else {
                labels[4].clone()
            },
            rule: self.rule.take().unwrap_or_default(),
            status,
            attempts: self.attempts,
            fallbacks: std::mem::take(&mut self.fallbacks),
            stream: self.stream,
            cache: self.cache,
            duration_ms: elapsed.as_secs_f64() * 1000.0,
            ttft_ms: self.ttft.map(|t| t.as_secs_f64() * 1000.0),
            input_tokens: u.prompt,
            cached_input_tokens: u.cached_input,
            output_tokens: u.output,
            tokens_estimated: u.estimated,
            cost_usd: format_usd(cost),
            error: error.to_string(),
            cancelled,
        });
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        // A ticket dropped unfinished is a request whose client went away mid-flight.
        if !self.done {
            let estimate = (self.backend.is_some() && self.attempts > 0).then(|| Usage {
                prompt: u64::from(self.prompt_estimate),
                estimated: true,
                ..Usage::default()
            });
            self.finish_inner(499, estimate, "client_cancelled", true);
        }
    }
}
