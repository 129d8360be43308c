//! The fleet ledger of one `LLMBudget`: what every sidecar reported spending against it this
//! period, counted exactly once (issue "fleet budgets"; docs/architecture.md, "Fleet budgets").
//!
//! Sidecars send [`UsageReport`]s: batches of what they spent since their last report, numbered
//! by a per-process sequence (`seq`, from 1). A sidecar keeps one report in flight: it resends
//! the same report (same `seq`, same entries) until the operator acknowledges it, and only then
//! sends `seq + 1` with what it spent meanwhile. The operator applies a report to each budget's
//! ledger it names and acknowledges it only once every such ledger is persisted. So for one
//! budget and one reporter, a report with a `seq` above the last one counted is new, and any other
//! is a resend already counted: nothing is lost or counted twice when either side restarts, a
//! connection drops, or a resend reaches another operator replica, as long as the ledger is read
//! back from where it was persisted (the per-reporter sequence is persisted with the totals).
//!
//! Periods are calendar-aligned in UTC; each entry carries the start of the period its spend
//! belongs to, so a report that straddles a rollover puts the old period's part aside (`late`)
//! instead of charging it to the new one, and the reset happens once, keyed by the period start.
//!
//! Pure data: no clock (callers pass `now` and the current period start), no IO.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::money::MicroUsd;

/// Users tracked one by one in a `perUser` budget's ledger; spend of further users is added up
/// in [`BudgetLedger::other_users`] (so the ledger stays a few tens of KiB).
pub const MAX_USERS: usize = 500;

/// How long a reporter that has gone quiet is remembered. A resend of an already counted report
/// arriving later than this after its first delivery would be counted again: the documented
/// bound of double counting (a sidecar retries every few seconds, for as long as it lives).
pub const REPORTER_TTL_SECS: u64 = 24 * 3600;

/// Longest process nonce a report may carry.
pub const MAX_NONCE_LEN: usize = 64;

/// Whether `nonce` is a usable process nonce (1 to [`MAX_NONCE_LEN`] letters, digits, `-`, `_`).
pub fn valid_nonce(nonce: &str) -> bool {
    !nonce.is_empty()
        && nonce.len() <= MAX_NONCE_LEN
        && nonce
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// What one sidecar process spent since its previous report.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct UsageReport {
    /// The reporting process: a nonce chosen at process start (at most [`MAX_NONCE_LEN`]
    /// letters, digits, `-` or `_`), so a restarted sidecar is a new reporter and starts again
    /// from `seq` 1. The operator prefixes the Pod's uid from the verified token.
    pub reporter: String,
    /// 1, 2, 3, ... per reporter; a resend keeps its number.
    pub seq: u64,
    /// Spend per budget (and per user key for `perUser` budgets) and period.
    #[serde(default)]
    pub entries: Vec<UsageEntry>,
}

/// The operator's answer to a persisted report.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct UsageAck {
    /// The `seq` of the report persisted (counted now or before).
    pub seq: u64,
    /// The fleet's spend this period for each budget of the sidecar's namespace: what the
    /// sidecar counts as spent by the other sidecars.
    #[serde(default)]
    pub budgets: Vec<FleetSpend>,
    /// For each route of the namespace with `requestsPerMinute` or `tokensPerMinute`: how many
    /// sidecars share those limits (each takes its share).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteShare>,
}

/// How many sidecars share one route's rate limits.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RouteShare {
    /// The `LLMRoute`'s name.
    pub route: String,
    /// The injected pods the route selects (at least 1).
    pub sidecars: u32,
}

/// One budget's fleet-wide spend in one period, as persisted.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FleetSpend {
    /// The `LLMBudget`'s name.
    pub budget: String,
    /// Start (Unix seconds) of the period.
    pub period_start: u64,
    /// Everything the fleet spent in that period (this sidecar's acknowledged reports included).
    #[serde(flatten)]
    pub spend: Spend,
    /// The sidecars of the namespace (its injected pods): while the operator is away, each
    /// spends at most this share of what was left.
    #[serde(default)]
    pub sidecars: u32,
}

/// Spend against one budget in one period (for one user key of a `perUser` budget).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct UsageEntry {
    /// The `LLMBudget`'s name (in the reporter's own namespace: the channel is authorised per
    /// namespace).
    pub budget: String,
    /// Start (Unix seconds) of the period the spend belongs to, by the sidecar's clock.
    pub period_start: u64,
    /// The user key, for `perUser` budgets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// What was spent.
    #[serde(flatten)]
    pub spend: Spend,
}

/// Money, tokens and requests, added up exactly.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Spend {
    /// Micro-dollars.
    #[serde(default)]
    pub micro_usd: MicroUsd,
    /// Input tokens (cached ones included).
    #[serde(default)]
    pub input_tokens: u64,
    /// Output tokens.
    #[serde(default)]
    pub output_tokens: u64,
    /// Requests charged.
    #[serde(default)]
    pub requests: u64,
}

impl Spend {
    /// Input and output tokens together (what a token limit counts).
    pub fn tokens(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }

    /// Adds `other`, saturating.
    pub fn add(&mut self, other: &Spend) {
        self.micro_usd = self.micro_usd.saturating_add(other.micro_usd);
        self.input_tokens = self.input_tokens.saturating_add(other.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(other.output_tokens);
        self.requests = self.requests.saturating_add(other.requests);
    }
}

/// The last report counted from one reporter.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Reporter {
    /// Its `seq`.
    pub seq: u64,
    /// When it was counted (Unix seconds).
    pub at: u64,
}

/// What applying a report did to one budget's ledger.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// New: its entries for this budget were counted (or it had none).
    Counted,
    /// A resend of a report already counted: nothing changed.
    Duplicate,
}

/// A spend cap, as the ledger compares it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cap {
    /// Micro-dollars per period.
    pub micro_usd: Option<MicroUsd>,
    /// Tokens (input + output) per period.
    pub tokens: Option<u64>,
}

impl Cap {
    /// Whether `spend` reaches the cap (money or tokens, whichever is set).
    pub fn reached_by(&self, spend: &Spend) -> bool {
        self.micro_usd.is_some_and(|l| spend.micro_usd >= l)
            || self.tokens.is_some_and(|l| spend.tokens() >= l)
    }
}

impl From<&crate::snapshot::Budget> for Cap {
    fn from(b: &crate::snapshot::Budget) -> Self {
        Self {
            micro_usd: b.limit_usd,
            tokens: b.limit_tokens,
        }
    }
}

/// One budget's fleet-wide spend this period, and what is needed to count the next report
/// exactly once. Persisted as JSON; every field survives a round trip.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BudgetLedger {
    /// Start (Unix seconds) of the period the totals are for.
    pub period_start: u64,
    /// Everything spent this period (users included).
    pub total: Spend,
    /// Per user key, for `perUser` budgets: at most [`MAX_USERS`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub users: BTreeMap<String, Spend>,
    /// Spend of the user keys that arrived once [`MAX_USERS`] were tracked, together: their
    /// per-user figures are lost (the bound docs/configuration.md states), the total is not.
    #[serde(default)]
    pub other_users: Spend,
    /// Spend reported for periods already closed when it arrived: not charged to this period.
    #[serde(default)]
    pub late: Spend,
    /// Alert thresholds (percent) already crossed this period.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fired: Vec<u32>,
    /// The last report counted per reporter.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reporters: BTreeMap<String, Reporter>,
}

impl BudgetLedger {
    /// An empty ledger for the period starting at `period_start`.
    pub fn new(period_start: u64) -> Self {
        Self {
            period_start,
            ..Self::default()
        }
    }

    /// Moves the ledger to the period starting at `period_start` when that is later than its
    /// own: totals, users and crossed thresholds start again from zero (reporters are kept, their
    /// sequence numbers run on across periods). Returns whether it rolled over. Idempotent.
    pub fn roll(&mut self, period_start: u64) -> bool {
        if period_start <= self.period_start {
            return false;
        }
        *self = Self {
            period_start,
            reporters: std::mem::take(&mut self.reporters),
            ..Self::default()
        };
        true
    }

    /// Counts `report`'s entries for budget `name`, unless this reporter's report of that `seq`
    /// (or a later one) was counted already. `current_period` is the start of the period that
    /// holds `now` by the caller's clock; an entry of a later period (the sidecar's clock ahead)
    /// rolls the ledger over, one of an earlier period is put aside as `late`.
    pub fn apply(
        &mut self,
        name: &str,
        report: &UsageReport,
        current_period: u64,
        now: u64,
    ) -> Applied {
        if self
            .reporters
            .get(&report.reporter)
            .is_some_and(|r| report.seq <= r.seq)
        {
            return Applied::Duplicate;
        }
        self.roll(current_period);
        for entry in report.entries.iter().filter(|e| e.budget == name) {
            self.roll(entry.period_start);
            if entry.period_start < self.period_start {
                self.late.add(&entry.spend);
                continue;
            }
            self.total.add(&entry.spend);
            if let Some(user) = &entry.user {
                self.charge_user(user, &entry.spend);
            }
        }
        if !self.reporters.contains_key(&report.reporter) {
            self.retire_other_processes(&report.reporter);
        }
        self.reporters.insert(
            report.reporter.clone(),
            Reporter {
                seq: report.seq,
                at: now,
            },
        );
        Applied::Counted
    }

    /// Forgets the earlier processes of a new reporter's pod: reporters are named
    /// `<pod uid>/<process nonce>` and a pod runs one sidecar process at a time, so the ledger
    /// keeps one reporter per pod however often its sidecar restarts (or however many nonces a
    /// misbehaving one makes up).
    fn retire_other_processes(&mut self, reporter: &str) {
        let Some((pod, _)) = reporter.split_once('/') else {
            return;
        };
        self.reporters
            .retain(|r, _| r.split_once('/').is_none_or(|(p, _)| p != pod));
    }

    fn charge_user(&mut self, user: &str, spend: &Spend) {
        if user == OTHER_USERS {
            self.other_users.add(spend);
        } else if let Some(s) = self.users.get_mut(user) {
            s.add(spend);
        } else if self.users.len() < MAX_USERS {
            self.users.insert(user.to_string(), *spend);
        } else {
            self.other_users.add(spend);
        }
    }

    /// Thresholds (percent of `cap`, whichever of money or tokens is further along) crossed
    /// and not yet marked this period: each is returned once per period, then remembered.
    pub fn cross_thresholds(&mut self, cap: Cap, thresholds: &[u32]) -> Vec<u32> {
        let used = self.used_permille(cap);
        let mut crossed = Vec::new();
        let mut sorted = thresholds.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        for t in sorted {
            if used >= u128::from(t) * 10 && !self.fired.contains(&t) {
                self.fired.push(t);
                crossed.push(t);
            }
        }
        self.fired.sort_unstable();
        crossed
    }

    /// How much of `cap` is used, in thousandths (exact integer arithmetic; the larger of the
    /// money and token shares; 0 without a cap).
    pub fn used_permille(&self, cap: Cap) -> u128 {
        let share = |used: u64, limit: Option<u64>| match limit {
            Some(0) => u128::MAX,
            Some(l) => u128::from(used) * 1000 / u128::from(l),
            None => 0,
        };
        share(self.total.micro_usd, cap.micro_usd).max(share(self.total.tokens(), cap.tokens))
    }

    /// Whether the cap is reached.
    pub fn exhausted(&self, cap: Cap) -> bool {
        cap.reached_by(&self.total)
    }

    /// The `n` users who spent most this period, most first (ties by name).
    pub fn top_users(&self, n: usize) -> Vec<(&str, Spend)> {
        let mut all: Vec<(&str, Spend)> =
            self.users.iter().map(|(u, s)| (u.as_str(), *s)).collect();
        all.sort_by(|a, b| b.1.micro_usd.cmp(&a.1.micro_usd).then(a.0.cmp(b.0)));
        all.truncate(n);
        all
    }

    /// Forgets reporters not counted for [`REPORTER_TTL_SECS`]; returns how many.
    pub fn prune_reporters(&mut self, now: u64) -> usize {
        let before = self.reporters.len();
        self.reporters
            .retain(|_, r| now.saturating_sub(r.at) < REPORTER_TTL_SECS);
        before - self.reporters.len()
    }
}

/// Distinct (budget, period, user) keys a sidecar accumulates between reports; further user keys
/// are reported under [`OTHER_USERS`] (totals stay exact, the per-user split of the excess is
/// lost). Reached only with the operator away and many distinct users.
pub const MAX_PENDING_KEYS: usize = 10_000;

/// The user key under which spend beyond [`MAX_PENDING_KEYS`] is reported.
pub const OTHER_USERS: &str = "(other users)";

/// A sidecar's side of the report protocol: it records spend as requests settle, and hands out
/// the report to send (the unacknowledged one again, until [`Outbox::ack`]).
#[derive(Debug)]
pub struct Outbox {
    reporter: String,
    next_seq: u64,
    in_flight: Option<UsageReport>,
    pending: BTreeMap<(String, u64, Option<String>), Spend>,
}

impl Outbox {
    /// An empty outbox for the process `reporter` (its first report is `seq` 1).
    pub fn new(reporter: impl Into<String>) -> Self {
        Self {
            reporter: reporter.into(),
            next_seq: 1,
            in_flight: None,
            pending: BTreeMap::new(),
        }
    }

    /// Adds spend against `budget` in the period starting at `period_start`.
    pub fn record(&mut self, budget: &str, period_start: u64, user: Option<&str>, spend: Spend) {
        let mut key = (budget.to_string(), period_start, user.map(str::to_string));
        if key.2.is_some()
            && !self.pending.contains_key(&key)
            && self.pending.len() >= MAX_PENDING_KEYS
        {
            key.2 = Some(OTHER_USERS.to_string());
        }
        self.pending.entry(key).or_default().add(&spend);
    }

    /// The report to send now: the unacknowledged one, unchanged; else one made of everything
    /// recorded since (numbered next); `None` when there is nothing to report.
    pub fn to_send(&mut self) -> Option<&UsageReport> {
        if self.in_flight.is_none() && !self.pending.is_empty() {
            let entries = std::mem::take(&mut self.pending)
                .into_iter()
                .map(|((budget, period_start, user), spend)| UsageEntry {
                    budget,
                    period_start,
                    user,
                    spend,
                })
                .collect();
            self.in_flight = Some(UsageReport {
                reporter: self.reporter.clone(),
                seq: self.next_seq,
                entries,
            });
            self.next_seq += 1;
        }
        self.in_flight.as_ref()
    }

    /// The operator persisted report `seq`: it is done. Any other number changes nothing.
    pub fn ack(&mut self, seq: u64) -> bool {
        self.acked(seq).is_some()
    }

    /// Like [`Outbox::ack`], returning the report acknowledged (so the caller can add it to what
    /// the operator has counted of this sidecar).
    pub fn acked(&mut self, seq: u64) -> Option<UsageReport> {
        if self.in_flight.as_ref().is_some_and(|r| r.seq == seq) {
            return self.in_flight.take();
        }
        None
    }

    /// Whether everything recorded has been acknowledged.
    pub fn is_empty(&self) -> bool {
        self.in_flight.is_none() && self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests;
