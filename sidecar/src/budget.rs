//! Budgets enforced in the sidecar: spend per calendar period (UTC), reserved before the call
//! and reconciled with actual usage after, with `max_tokens` clamped to what the remaining
//! allowance can pay for. The wall clock is a parameter.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

use llmesh_api::money::{MicroUsd, cost_of, format_usd};
use llmesh_api::prices::Prices;
use llmesh_api::snapshot::Budget;
use llmesh_api::{BudgetAction, BudgetPeriod};

pub use llmesh_api::period::{civil_from_days, days_from_civil, period_bounds, rfc3339};

/// The wall clock, in whole seconds since the Unix epoch.
pub trait Clock: Send + Sync {
    /// Now, in Unix seconds (UTC).
    fn unix_now(&self) -> u64;
}

/// The system clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn unix_now(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    spent: MicroUsd,
    tokens: u64,
    reserved: MicroUsd,
    reserved_tokens: u64,
}

#[derive(Debug, Default)]
struct Ledger {
    period_start: u64,
    total: Tally,
    users: HashMap<String, Tally>,
    alerted: u32,
    /// The fleet's spend, as the operator last said (operator mode). Counted only while its
    /// period is current.
    fleet: Option<Seen>,
}

/// What the operator last said about a budget's fleet-wide spend.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FleetView {
    /// Start of the period it is about.
    pub period_start: u64,
    /// What the other sidecars had spent, micro-dollars.
    pub others: MicroUsd,
    /// What the other sidecars had used, tokens.
    pub others_tokens: u64,
    /// Sidecars sharing the budget (the namespace's injected pods).
    pub sidecars: u32,
    /// When it was heard (Unix seconds).
    pub at: u64,
}

/// How old the fleet view may be before the operator counts as away: then this sidecar spends
/// only its share (1/`sidecars`) of what was left when it last heard.
pub const FLEET_STALE_SECS: u64 = 10;

#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    view: FleetView,
    /// This sidecar's own spend this period when the view was heard.
    own: MicroUsd,
    own_tokens: u64,
}

/// Spend counted against one budget, kept across config reloads.
#[derive(Debug)]
pub struct BudgetState {
    /// The compiled budget.
    pub spec: Budget,
    ledger: Arc<Mutex<Ledger>>,
}

/// A budget's answer to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead; `max_tokens` is the most output tokens the remaining allowance pays for (None:
    /// no clamp needed).
    Allow {
        /// Clamp for `max_tokens`.
        max_tokens: Option<u32>,
    },
    /// The budget is spent and its action is `reject`.
    Reject {
        /// When the next period starts.
        retry_after: Duration,
        /// Why, for the client.
        message: String,
    },
    /// The budget is spent and its action is `downgrade` to this backend.
    Downgrade(String),
}

/// What was held for one request, released when it finishes.
#[derive(Debug, Clone, Default)]
pub struct Reservation {
    cost: MicroUsd,
    tokens: u64,
    user: Option<String>,
}

impl Reservation {
    /// The user key charged, for `perUser` budgets.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }
}

impl BudgetState {
    /// What is left of the USD cap at `now` for the request holding `r` (its own reservation
    /// not counted against it; other requests in flight are): the spend this sidecar counts
    /// (its own, plus the fleet's as the operator last said), per user for `perUser` budgets.
    /// `None` without a USD cap.
    pub fn usd_left_for(&self, r: &Reservation, now: u64) -> Option<MicroUsd> {
        let cap = self.spec.limit_usd?;
        let mut l = self.ledger.lock();
        self.roll(&mut l, now);
        let t = match &r.user {
            Some(u) => l.users.get(u).copied().unwrap_or_default(),
            None => self.fleet_tally(&l, now),
        };
        let held = t.reserved.saturating_sub(r.cost);
        Some(cap.saturating_sub(t.spent.saturating_add(held)))
    }
}

/// A threshold crossing to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    /// Percent of the cap.
    pub threshold: u32,
}

impl BudgetState {
    /// Budget state with a ledger carried over from an earlier config, if any.
    pub fn new(spec: Budget, carried: Option<&BudgetState>) -> Self {
        Self {
            spec,
            ledger: carried.map_or_else(Default::default, |c| c.ledger.clone()),
        }
    }

    fn roll(&self, l: &mut Ledger, now: u64) {
        let (start, _) = period_bounds(self.spec.period, now);
        if l.period_start != start {
            l.period_start = start;
            l.total = Tally {
                reserved: l.total.reserved,
                reserved_tokens: l.total.reserved_tokens,
                ..Tally::default()
            };
            for t in l.users.values_mut() {
                t.spent = 0;
                t.tokens = 0;
            }
            l.users
                .retain(|_, t| t.reserved > 0 || t.reserved_tokens > 0);
            l.alerted = 0;
        }
    }

    fn remaining(&self, t: &Tally) -> (Option<i128>, Option<i128>) {
        (
            self.spec
                .limit_usd
                .map(|l| i128::from(l) - i128::from(t.spent) - i128::from(t.reserved)),
            self.spec
                .limit_tokens
                .map(|l| i128::from(l) - i128::from(t.tokens) - i128::from(t.reserved_tokens)),
        )
    }

    /// Checks a request that will send `input_tokens` and may produce up to `max_tokens` (the
    /// client's limit, if any) on a model that takes at most `model_cap` output tokens, at
    /// `prices`, and reserves its estimated cost when it may go ahead.
    ///
    /// A request with a limit reserves that limit, clamped to what the allowance can pay for. A
    /// request without one reserves [`DEFAULT_OUTPUT_ESTIMATE`] (or the model's limit, if lower)
    /// and is clamped only when the allowance cannot pay for the model's whole output limit: then
    /// it reserves, and may produce, exactly what is left. A clamp is never above `model_cap`,
    /// which the provider would refuse.
    pub fn admit(
        &self,
        user: Option<&str>,
        input_tokens: u64,
        max_tokens: Option<u32>,
        model_cap: Option<u32>,
        prices: &Prices,
        now: u64,
    ) -> (Admission, Option<Reservation>) {
        let mut l = self.ledger.lock();
        self.roll(&mut l, now);
        let user = if self.spec.per_user {
            Some(user.unwrap_or("").to_string())
        } else {
            None
        };
        let tally = match &user {
            Some(u) => l.users.get(u).copied().unwrap_or_default(),
            None => self.fleet_tally(&l, now),
        };
        let (usd_left, tokens_left) = self.remaining(&tally);
        let input_cost = i128::from(cost_of(input_tokens, prices.input));
        let spent = usd_left.is_some_and(|r| r <= input_cost)
            || tokens_left.is_some_and(|r| r <= i128::from(input_tokens));
        if spent {
            let (_, end) = period_bounds(self.spec.period, now);
            return match self.spec.action {
                BudgetAction::Reject => (
                    Admission::Reject {
                        retry_after: Duration::from_secs(end.saturating_sub(now)),
                        message: format!(
                            "llmesh: budget {}/{} is spent for this {} ({}{}); it resets at {}. Ask its owner to raise spec.limit",
                            self.spec.namespace,
                            self.spec.name,
                            period_word(self.spec.period),
                            self.limit_words(),
                            if user.is_some() { " per user" } else { "" },
                            rfc3339(end)
                        ),
                    },
                    None,
                ),
                BudgetAction::Downgrade => {
                    // Downgraded requests still spend: reserve so that they are settled and
                    // counted like any other.
                    let out = estimate(max_tokens, model_cap);
                    let (_, r) = self.reserve(&mut l, user, input_tokens, out, prices, None);
                    (
                        Admission::Downgrade(
                            self.spec.downgrade_backend.clone().unwrap_or_default(),
                        ),
                        r,
                    )
                }
                BudgetAction::Alert => {
                    let out = estimate(max_tokens, model_cap);
                    self.reserve(&mut l, user, input_tokens, out, prices, None)
                }
            };
        }
        // Output tokens the allowance pays for after the input is paid for.
        let mut affordable: Option<u64> = None;
        if let Some(left) = usd_left
            && prices.output > 0
        {
            affordable =
                Some(((left - input_cost) * 1_000_000 / i128::from(prices.output)).max(1) as u64);
        }
        if let Some(left) = tokens_left {
            let a = (left - i128::from(input_tokens)).max(1) as u64;
            affordable = Some(affordable.map_or(a, |c| c.min(a)));
        }
        // The most the request may produce unless clamped: its own limit, else the model's.
        let worst = max_tokens
            .or(model_cap)
            .map_or(u64::from(DEFAULT_OUTPUT_ESTIMATE), u64::from);
        let clamp = affordable
            .filter(|a| *a < worst)
            .map(|a| model_cap.map_or(a, |cap| a.min(u64::from(cap))))
            .filter(|_| self.spec.action != BudgetAction::Alert);
        let out = clamp.unwrap_or_else(|| estimate(max_tokens, model_cap));
        self.reserve(&mut l, user, input_tokens, out, prices, clamp)
    }

    fn reserve(
        &self,
        l: &mut Ledger,
        user: Option<String>,
        input_tokens: u64,
        out: u64,
        prices: &Prices,
        clamp: Option<u64>,
    ) -> (Admission, Option<Reservation>) {
        let r = Reservation {
            cost: cost_of(input_tokens, prices.input) + cost_of(out, prices.output),
            tokens: input_tokens + out,
            user: user.clone(),
        };
        let t = match &user {
            Some(u) => l.users.entry(u.clone()).or_default(),
            None => &mut l.total,
        };
        t.reserved += r.cost;
        t.reserved_tokens += r.tokens;
        (
            Admission::Allow {
                max_tokens: clamp.map(|c| c.min(u64::from(u32::MAX)) as u32),
            },
            Some(r),
        )
    }

    /// Releases a reservation and records what the request really cost. Returns alerts for
    /// thresholds crossed.
    pub fn settle(&self, r: Reservation, cost: MicroUsd, tokens: u64, now: u64) -> Vec<Alert> {
        let mut l = self.ledger.lock();
        self.roll(&mut l, now);
        // Spend lands in the period it finished in; a reservation carries across a rollover.
        let release = |t: &mut Tally| {
            t.reserved = t.reserved.saturating_sub(r.cost);
            t.reserved_tokens = t.reserved_tokens.saturating_sub(r.tokens);
        };
        match &r.user {
            Some(u) => {
                let t = l.users.entry(u.clone()).or_default();
                release(t);
                t.spent += cost;
                t.tokens += tokens;
            }
            None => release(&mut l.total),
        }
        l.total.spent += cost;
        l.total.tokens += tokens;
        let mut alerts = Vec::new();
        let pct = self.percent_used(&l.total);
        for &th in &self.spec.alert_thresholds {
            if pct >= u128::from(th) && th > l.alerted && !self.spec.per_user {
                alerts.push(Alert { threshold: th });
            }
        }
        if let Some(a) = alerts.last() {
            l.alerted = a.threshold;
        }
        alerts
    }

    fn percent_used(&self, t: &Tally) -> u128 {
        let usd = self
            .spec
            .limit_usd
            .filter(|l| *l > 0)
            .map(|l| u128::from(t.spent) * 100 / u128::from(l));
        let tok = self
            .spec
            .limit_tokens
            .filter(|l| *l > 0)
            .map(|l| u128::from(t.tokens) * 100 / u128::from(l));
        usd.unwrap_or(0).max(tok.unwrap_or(0))
    }

    /// Takes in what the operator said about the fleet (its answer to a usage report, heard at
    /// `view.at`). Admission counts the others' spend beside this sidecar's own while the view
    /// is fresh; once it is older than [`FLEET_STALE_SECS`] (the operator away), this sidecar
    /// spends at most its share of what was left. Per-user budgets do not use it (the fleet's
    /// per-user split is not sent back).
    pub fn set_fleet(&self, view: FleetView) {
        let mut l = self.ledger.lock();
        self.roll(&mut l, view.at);
        if l.fleet
            .is_some_and(|s| s.view.period_start > view.period_start)
        {
            return;
        }
        let (own, own_tokens) = if view.period_start == l.period_start {
            (l.total.spent, l.total.tokens)
        } else {
            (0, 0)
        };
        l.fleet = Some(Seen {
            view,
            own,
            own_tokens,
        });
    }

    /// The whole budget's tally as this sidecar counts it at `now`: its own spend, plus the
    /// others' from a fresh fleet view; with a stale one, as if all but this sidecar's share of
    /// what was left had been spent.
    fn fleet_tally(&self, l: &Ledger, now: u64) -> Tally {
        let mut t = l.total;
        let Some(seen) = l.fleet.filter(|s| s.view.period_start == l.period_start) else {
            return t;
        };
        let v = seen.view;
        if now.saturating_sub(v.at) <= FLEET_STALE_SECS {
            t.spent = t.spent.saturating_add(v.others);
            t.tokens = t.tokens.saturating_add(v.others_tokens);
            return t;
        }
        let n = u64::from(v.sidecars.max(1));
        let since_usd = t.spent.saturating_sub(seen.own);
        let since_tokens = t.tokens.saturating_sub(seen.own_tokens);
        if let Some(cap) = self.spec.limit_usd {
            let share = cap.saturating_sub(seen.own.saturating_add(v.others)) / n;
            t.spent = cap.saturating_sub(share).saturating_add(since_usd);
        }
        if let Some(cap) = self.spec.limit_tokens {
            let share = cap.saturating_sub(seen.own_tokens.saturating_add(v.others_tokens)) / n;
            t.tokens = cap.saturating_sub(share).saturating_add(since_tokens);
        }
        t
    }

    /// (spent micro-dollars, spent tokens, period start) this period, by this sidecar.
    pub fn spent(&self, now: u64) -> (MicroUsd, u64, u64) {
        let mut l = self.ledger.lock();
        self.roll(&mut l, now);
        (l.total.spent, l.total.tokens, l.period_start)
    }

    fn limit_words(&self) -> String {
        match (self.spec.limit_usd, self.spec.limit_tokens) {
            (Some(u), Some(t)) => format!("${} or {t} tokens", format_usd(u)),
            (Some(u), None) => format!("${}", format_usd(u)),
            (None, Some(t)) => format!("{t} tokens"),
            (None, None) => "no cap".into(),
        }
    }
}

/// Output tokens reserved for a request that sets no limit of its own, when its model's limit is
/// larger or unknown: a bounded estimate, so one request does not hold the whole allowance.
pub const DEFAULT_OUTPUT_ESTIMATE: u32 = 4_096;

/// Output tokens to reserve: the request's own limit (no more than the model can produce), else
/// the bounded estimate.
fn estimate(max_tokens: Option<u32>, model_cap: Option<u32>) -> u64 {
    let cap = |n: u32| model_cap.map_or(n, |c| n.min(c));
    u64::from(max_tokens.map_or_else(|| cap(DEFAULT_OUTPUT_ESTIMATE), cap))
}

fn period_word(p: BudgetPeriod) -> &'static str {
    match p {
        BudgetPeriod::Hour => "hour",
        BudgetPeriod::Day => "day",
        BudgetPeriod::Month => "month",
    }
}

#[cfg(test)]
mod tests;
