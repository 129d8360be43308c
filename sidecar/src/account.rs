//! The bookkeeping of one request: metrics, cost, rate-limit and budget reconciliation and the
//! access-log line, done exactly once when the request ends, however it ends (a client that
//! drops a stream is still charged for what was generated).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use crate::accesslog::{AccessLog, Line};
use crate::budget::{BudgetState, Clock, Reservation};
use crate::cache::Status as CacheStatus;
use crate::internal::{Op, Usage};
use crate::limits::Buffers;
use crate::metrics::{BackendLabels, Metrics, Sink};
use crate::runtime::{BackendState, InFlight, Runtime};
use crate::usage::UsageReports;
use llmesh_api::ledger::Spend;

/// What every request accounts to: the app's metrics, access log and clock, and its budget of
/// buffered bytes. One per app, shared by its requests' tickets.
pub struct Ledger {
    /// Every metric.
    pub metrics: Arc<Metrics>,
    /// The access log.
    pub log: AccessLog,
    /// The wall clock (budget periods, log timestamps).
    pub clock: Arc<dyn Clock>,
    /// Bytes of request and answer bodies held by all requests (`--max-buffered-bytes`).
    pub buffers: Arc<Buffers>,
    /// Spend to report to the operator (operator mode only).
    pub usage: Option<Arc<UsageReports>>,
}

/// One admitted request: holds its place under `--max-in-flight` until dropped, which the
/// request's [`Ticket`] does when the answer's last byte is sent or the client goes away.
#[derive(Debug)]
pub struct Slot(Arc<AtomicUsize>);

impl Slot {
    /// A place counted in `admitted` (already incremented), given back when dropped.
    pub(crate) fn new(admitted: Arc<AtomicUsize>) -> Self {
        Self(admitted)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One request in progress.
pub struct Ticket {
    /// Where its accounting goes (metrics, log, clock).
    pub ledger: Arc<Ledger>,
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
    /// What the cache did.
    pub cache: CacheStatus,
    /// Estimated prompt tokens, for a provider that reports no usage and a client that goes
    /// away: see [`Ticket::prompt_tokens`].
    pub prompt_estimate: PromptEstimate,
    /// Tokens taken from the tokens-per-minute bucket at admission.
    pub tpm_reserved: u64,
    /// Budget reservations to settle.
    pub reservations: Vec<(Arc<BudgetState>, Reservation)>,
    /// Keeps the backend's in-flight count while the answer streams.
    pub in_flight: Option<InFlight>,
    /// Keeps the backend's concurrency permit while the answer streams.
    pub permit: Option<OwnedSemaphorePermit>,
    /// Keeps the request's place under the sidecar's `--max-in-flight`.
    pub slot: Option<Slot>,
    done: bool,
}

/// A prompt's token estimate, made before the call when routing or limits need it, else only
/// if the answer comes without usage.
#[derive(Clone, Debug)]
pub enum PromptEstimate {
    /// Estimated already.
    Known(u32),
    /// Not yet: the client's OpenAI-shaped body, to estimate from if it comes to that.
    Later(bytes::Bytes),
}

impl Ticket {
    /// The prompt's estimated tokens, estimated now if nothing needed them before.
    pub fn prompt_tokens(&self) -> u32 {
        match &self.prompt_estimate {
            PromptEstimate::Known(n) => *n,
            PromptEstimate::Later(raw) => serde_json::from_slice(raw)
                .map_or(0, |body| crate::tokens::chat_prompt(&body, false).tokens),
        }
    }

    /// A ticket for a request that just arrived.
    pub fn new(ledger: Arc<Ledger>, request_id: String, op: Op, path: String) -> Self {
        Self {
            ledger,
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
            cache: CacheStatus::Off,
            prompt_estimate: PromptEstimate::Known(0),
            tpm_reserved: 0,
            reservations: Vec::new(),
            in_flight: None,
            permit: None,
            slot: None,
            done: false,
        }
    }

    /// Where this request's metrics go: the answering backend's cached handles when it answered
    /// as its own variant, else labels looked up (the assigned variant, or `none`). Every value
    /// comes from the config: the model a client named is never a label.
    fn sink<'a>(&'a self, rt: Option<&'a Runtime>) -> Sink<'a> {
        match (rt, self.route, self.backend) {
            (Some(rt), Some(r), Some(b)) => {
                let b = &rt.routes[r].backends[b];
                let l = &b.labels;
                match &self.variant {
                    Some(v) if *v != l.variant => Sink::labels_of(
                        BackendLabels {
                            variant: v,
                            ..l.as_str()
                        },
                        self.op,
                    ),
                    _ => Sink::cached(&b.metrics, l, self.op),
                }
            }
            (Some(rt), Some(r), None) => {
                let spec = &rt.routes[r].spec;
                let l = BackendLabels {
                    route: spec.name.as_str(),
                    route_model: spec.model.as_str(),
                    ..BackendLabels::NONE
                };
                Sink::labels_of(l, self.op)
            }
            _ => Sink::labels_of(BackendLabels::NONE, self.op),
        }
    }

    /// The backend that answered (or is being tried), once one is chosen.
    pub fn backend_state(&self) -> Option<&BackendState> {
        let (rt, r, b) = (self.rt.as_ref()?, self.route?, self.backend?);
        Some(&rt.routes[r].backends[b])
    }

    /// The cost of `usage` on the answering backend, micro-dollars.
    pub fn cost(&self, usage: &Usage) -> u64 {
        self.backend_state()
            .map_or(0, |b| usage.cost(&b.spec.prices))
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
        // Release the backend first: the request no longer occupies it.
        self.in_flight = None;
        self.permit = None;
        self.slot = None;
        let reservations = std::mem::take(&mut self.reservations);
        let this = &*self;
        let ledger = &*this.ledger;
        let m = &*ledger.metrics;
        let rt = this.rt.as_deref();
        let elapsed = this.start.elapsed();
        let usage = usage.filter(|_| this.cache != CacheStatus::Hit);
        let cost = usage.as_ref().map_or(0, |u| this.cost(u));

        let sink = this.sink(rt);
        sink.request(m, status, error, elapsed.as_secs_f64());
        if let Some(t) = this.ttft {
            sink.ttft(m, t.as_secs_f64());
            // The pace of a stream after its first chunk, where it counted its output.
            if let Some(u) = &usage
                && u.output > 1
            {
                let after = elapsed.saturating_sub(t).as_secs_f64();
                sink.time_per_output_token(m, after / (u.output - 1) as f64);
            }
        }
        if let Some(u) = &usage {
            for (kind, n) in [u.prompt, u.output, u.cached_input, u.cache_write]
                .into_iter()
                .enumerate()
            {
                // Input and output always; cache classes only when they occur.
                if n > 0 || kind < 2 {
                    sink.tokens(m, kind, n, u.estimated);
                }
            }
            sink.cost(m, cost, u.estimated);
        }

        let tokens = usage.as_ref().map_or(0, Usage::total);
        if let (Some(rt), Some(r)) = (rt, this.route)
            && let Some(tpm) = &rt.routes[r].tpm
        {
            tpm.adjust(tokens as i64 - this.tpm_reserved as i64, Instant::now());
        }
        let unix = ledger.clock.unix_now();
        let spend = usage.as_ref().map_or(Spend::default(), |u| Spend {
            micro_usd: cost,
            input_tokens: u.prompt,
            output_tokens: u.output,
            requests: 1,
        });
        for (budget, reservation) in reservations {
            if let Some(report) = &ledger.usage {
                report.record(&budget.spec, unix, reservation.user(), spend);
            }
            settle_budget(m, &budget, reservation, cost, tokens, unix);
        }

        let labels = sink.labels();
        fn pick(v: &str) -> &str {
            if v == "none" { "" } else { v }
        }
        let u = usage.unwrap_or_default();
        let mut cost_buf = [0u8; 24];
        ledger.log.write(&Line {
            ts: unix,
            log: "access",
            request_id: &this.request_id,
            op: this.op.as_str(),
            path: &this.path,
            model: &this.model,
            route: pick(labels.route),
            backend: pick(labels.backend),
            provider: pick(labels.provider),
            variant: pick(labels.variant),
            rule: this.rule.as_deref().unwrap_or(""),
            status,
            attempts: this.attempts,
            fallbacks: &this.fallbacks,
            stream: this.stream,
            cache: this.cache.as_str(),
            duration_ms: elapsed.as_secs_f64() * 1000.0,
            ttft_ms: this.ttft.map(|t| t.as_secs_f64() * 1000.0),
            input_tokens: u.prompt,
            cached_input_tokens: u.cached_input,
            output_tokens: u.output,
            tokens_estimated: u.estimated,
            cost_usd: crate::accesslog::usd(cost, &mut cost_buf),
            error,
            cancelled,
        });
    }
}

/// Settles one budget reservation with the real cost, raising alerts for thresholds crossed.
fn settle_budget(
    m: &Metrics,
    budget: &BudgetState,
    r: Reservation,
    cost: u64,
    tokens: u64,
    unix: u64,
) {
    let l = [budget.spec.namespace.as_str(), budget.spec.name.as_str()];
    for alert in budget.settle(r, cost, tokens, unix) {
        m.budget_alerts
            .with_label_values(&[l[0], l[1], &alert.threshold.to_string()])
            .inc();
        tracing::warn!(
            budget = %format!("{}/{}", l[0], l[1]),
            threshold = alert.threshold,
            "budget crossed {}% of its cap",
            alert.threshold
        );
    }
    let (spent, spent_tokens, _) = budget.spent(unix);
    m.budget_spent.with_label_values(&l).set(spent as i64);
    m.budget_tokens
        .with_label_values(&l)
        .set(spent_tokens as i64);
}

impl Drop for Ticket {
    fn drop(&mut self) {
        // A ticket dropped unfinished is a request whose client went away mid-flight.
        if !self.done {
            let estimate = (self.backend.is_some() && self.attempts > 0).then(|| Usage {
                prompt: u64::from(self.prompt_tokens()),
                estimated: true,
                ..Usage::default()
            });
            self.finish_inner(499, estimate, "client_cancelled", true);
        }
    }
}
