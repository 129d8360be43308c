//! Fleet budgets, the sidecar's side: what each settled request spent against each budget is
//! recorded for the operator ([`Outbox`], `llmesh_api::ledger`), sent as a usage report by
//! `operator_client` (one in flight, resent until acknowledged, flushed on shutdown), and the
//! fleet's totals the operator answers with become what the other sidecars spent, which this
//! sidecar's budgets then count beside its own (docs/architecture.md, "Fleet budgets").

use std::collections::HashMap;
use std::sync::Arc;

use llmesh_api::ledger::{Outbox, Spend, UsageAck, UsageReport};
use llmesh_api::period::period_bounds;
use llmesh_api::snapshot::Budget;
use parking_lot::Mutex;

use crate::budget::{BudgetState, FleetView};

/// A sidecar process's usage reports.
#[derive(Debug)]
pub struct UsageReports {
    nonce: String,
    outbox: Mutex<Outbox>,
    /// Per budget: the period and what the operator has acknowledged of this process's spend in
    /// it (so the fleet's total minus this is what the others spent).
    acked: Mutex<HashMap<String, (u64, Spend)>>,
}

impl UsageReports {
    /// Reports of the process `nonce` (the operator prefixes the pod's uid).
    pub fn new(nonce: impl Into<String>) -> Self {
        let nonce = nonce.into();
        Self {
            outbox: Mutex::new(Outbox::new(nonce.clone())),
            nonce,
            acked: Mutex::new(HashMap::new()),
        }
    }

    /// A nonce for this process: random, so a restarted sidecar is a new reporter.
    pub fn process_nonce() -> String {
        format!("{:016x}", fastrand::u64(..))
    }

    /// Records one settled request's spend against `budget` at `now`, in the period it finished
    /// in (as the local budget counts it).
    pub fn record(&self, budget: &Budget, now: u64, user: Option<&str>, spend: Spend) {
        let (period_start, _) = period_bounds(budget.period, now);
        let user = user.filter(|_| budget.per_user);
        self.outbox
            .lock()
            .record(&budget.name, period_start, user, spend);
    }

    /// The report to send now (the unacknowledged one again, until acknowledged).
    pub fn to_send(&self) -> Option<UsageReport> {
        self.outbox.lock().to_send().cloned()
    }

    /// A report without spend: it asks the operator only for the fleet's totals (`seq` 0 is
    /// never a real report's number).
    pub fn query(&self) -> UsageReport {
        UsageReport {
            reporter: self.nonce.clone(),
            seq: 0,
            entries: Vec::new(),
        }
    }

    /// Whether everything recorded has been acknowledged.
    pub fn is_empty(&self) -> bool {
        self.outbox.lock().is_empty()
    }

    /// Takes in the operator's answer, heard at `now`: the report it acknowledges is done, and
    /// each budget's fleet total, less what this process reported, is what the other sidecars
    /// spent. Returns whether `ack` acknowledged the report in flight.
    pub fn acknowledged(&self, ack: &UsageAck, budgets: &[Arc<BudgetState>], now: u64) -> bool {
        let report = self.outbox.lock().acked(ack.seq);
        let mut acked = self.acked.lock();
        for e in report.iter().flat_map(|r| &r.entries) {
            let slot = acked
                .entry(e.budget.clone())
                .or_insert((e.period_start, Spend::default()));
            if e.period_start > slot.0 {
                *slot = (e.period_start, Spend::default());
            }
            if e.period_start == slot.0 {
                slot.1.add(&e.spend);
            }
        }
        for fleet in &ack.budgets {
            let own = acked
                .get(&fleet.budget)
                .filter(|(p, _)| *p == fleet.period_start)
                .map_or(Spend::default(), |(_, s)| *s);
            let others_usd = fleet.spend.micro_usd.saturating_sub(own.micro_usd);
            let others_tokens = fleet.spend.tokens().saturating_sub(own.tokens());
            for b in budgets.iter().filter(|b| b.spec.name == fleet.budget) {
                b.set_fleet(FleetView {
                    period_start: fleet.period_start,
                    others: others_usd,
                    others_tokens,
                    sidecars: fleet.sidecars,
                    at: now,
                });
            }
        }
        report.is_some()
    }
}

#[cfg(test)]
mod tests;
