//! Route and budget status as pure functions: what the operator concluded (an [`Outcome`]) plus
//! how many sidecars serve it (a [`Rollout`]) and the status already stored -> the status to
//! write, and whether writing it would change anything but a timestamp.

use llmesh_api::condition::{ACCEPTED, BUDGET_EXCEEDED, Condition, READY, RESOLVED_REFS};
use llmesh_api::ledger::{BudgetLedger, Cap};
use llmesh_api::money::format_usd;
use llmesh_api::period::{period_bounds, rfc3339};
use llmesh_api::snapshot::Budget;
use llmesh_api::{BudgetAction, LLMBudgetStatus, LLMRouteStatus, UserSpend};

use crate::decisions::outcome::Outcome;

/// The time a reconcile runs at: Unix seconds, and as metav1.Time serialises (seconds).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Now {
    /// RFC 3339, UTC.
    pub text: String,
    /// Unix seconds.
    pub unix: u64,
}

/// What the hub concluded about a budget.
#[derive(Clone, Debug, PartialEq)]
pub struct BudgetView {
    /// The generation compiled.
    pub generation: i64,
    /// The cap in words.
    pub limit: Option<String>,
    /// Everything wrong with it; empty when it is enforced.
    pub errors: Vec<llmesh_api::compile::FieldError>,
    /// The object's uid (its fleet ledger is named after it).
    pub uid: String,
    /// The compiled budget, when it is enforced.
    pub budget: Option<std::sync::Arc<Budget>>,
}

/// Reasons, one constant each, so programs can match on them.
pub mod reason {
    /// The spec is valid.
    pub const ACCEPTED: &str = "Accepted";
    /// The spec has errors the schema could not catch.
    pub const INVALID: &str = "Invalid";
    /// Another route of the namespace already serves one of this route's model names.
    pub const MODEL_CONFLICT: &str = "ModelConflict";
    /// Every referenced Secret and key exists.
    pub const RESOLVED_REFS: &str = "ResolvedRefs";
    /// A referenced Secret or key is missing or unreadable.
    pub const MISSING_SECRET: &str = "MissingSecret";
    /// References cannot be checked because the spec is invalid.
    pub const NOT_CHECKED: &str = "NotChecked";
    /// Every connected sidecar that should serve the route serves its latest generation.
    pub const SERVING: &str = "Serving";
    /// Some connected sidecars still serve an older generation.
    pub const ROLLING_OUT: &str = "RollingOut";
    /// The route is not pushed to sidecars until the other conditions are fixed.
    pub const NOT_SERVED: &str = "NotServed";
    /// A budget is compiled into the snapshots of its namespace.
    pub const ENFORCED: &str = "Enforced";
    /// The fleet reached a budget's cap this period.
    pub const EXHAUSTED: &str = "Exhausted";
    /// Some user keys of a `perUser` budget reached their cap this period.
    pub const USERS_EXHAUSTED: &str = "UsersExhausted";
    /// A budget's cap is not reached this period.
    pub const WITHIN_LIMIT: &str = "WithinLimit";
}

/// How many connected sidecars should serve a route, and how many serve its latest generation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rollout {
    /// Sidecars serving the latest generation.
    pub ready: u32,
    /// Connected sidecars whose pod the route selects.
    pub total: u32,
}

/// `Accepted=True`.
pub fn accepted() -> Condition {
    Condition::new(ACCEPTED, true, reason::ACCEPTED, "the spec is valid")
}

/// `Accepted=False` for spec errors, each naming its field.
pub fn invalid(message: &str) -> Condition {
    Condition::new(ACCEPTED, false, reason::INVALID, message)
}

/// `Accepted=False` because another route owns one of the model names.
pub fn model_conflict(message: &str) -> Condition {
    Condition::new(ACCEPTED, false, reason::MODEL_CONFLICT, message)
}

/// `ResolvedRefs=True`.
pub fn refs_resolved() -> Condition {
    Condition::new(
        RESOLVED_REFS,
        true,
        reason::RESOLVED_REFS,
        "every referenced Secret and key exists",
    )
}

/// `ResolvedRefs=False` for missing Secrets or keys.
pub fn missing_secret(message: &str) -> Condition {
    Condition::new(RESOLVED_REFS, false, reason::MISSING_SECRET, message)
}

/// `ResolvedRefs=Unknown`: nothing to resolve against while the spec is invalid.
pub fn refs_not_checked() -> Condition {
    let mut c = Condition::new(
        RESOLVED_REFS,
        false,
        reason::NOT_CHECKED,
        "fix the spec first (see Accepted)",
    );
    c.status = "Unknown".into();
    c
}

/// `Ready` from the rollout: True when every connected sidecar that should serve the route
/// serves its latest generation (also when none is connected yet, said in the message).
pub fn ready(rollout: Rollout) -> Condition {
    let Rollout { ready, total } = rollout;
    if total == 0 {
        Condition::new(
            READY,
            true,
            reason::SERVING,
            "pushed to sidecars; no connected sidecar selects it yet (label pods or the namespace llmesh.io/inject=enabled and check spec.podSelector)",
        )
    } else if ready >= total {
        Condition::new(
            READY,
            true,
            reason::SERVING,
            format!("served by {ready} of {total} connected sidecars"),
        )
    } else {
        Condition::new(
            READY,
            false,
            reason::ROLLING_OUT,
            format!("{ready} of {total} connected sidecars serve the latest generation"),
        )
    }
}

/// `Ready=False`: not pushed while the spec or its references are broken.
pub fn not_served() -> Condition {
    Condition::new(
        READY,
        false,
        reason::NOT_SERVED,
        "not pushed to sidecars (they answer 404 for its model) until Accepted and ResolvedRefs are True",
    )
}

/// The conditions for a route's outcome.
pub fn route_conditions(outcome: &Outcome, rollout: Rollout) -> Vec<Condition> {
    let mut out = Vec::with_capacity(3);
    if let Some(conflict) = &outcome.conflict {
        out.push(model_conflict(conflict));
    } else if outcome.invalid.is_empty() {
        out.push(accepted());
    } else {
        out.push(invalid(&join(&outcome.invalid)));
    }
    if !outcome.unresolved.is_empty() {
        out.push(missing_secret(&join(&outcome.unresolved)));
    } else if outcome.invalid.is_empty() {
        out.push(refs_resolved());
    } else {
        out.push(refs_not_checked());
    }
    out.push(if outcome.served() {
        ready(rollout)
    } else {
        not_served()
    });
    out
}

fn join(errors: &[llmesh_api::compile::FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// The route status to store, keeping `lastTransitionTime` of conditions whose status did not
/// change and stamping `now` on the others.
pub fn route_status(
    generation: i64,
    outcome: &Outcome,
    rollout: Rollout,
    old: Option<&LLMRouteStatus>,
    now: &str,
) -> LLMRouteStatus {
    let conditions = route_conditions(outcome, rollout);
    LLMRouteStatus {
        observed_generation: Some(generation),
        model: Some(outcome.model.clone()),
        backends: Some(outcome.backends.clone()),
        ready_sidecars: Some(i32::try_from(rollout.ready).unwrap_or(i32::MAX)),
        conditions: stamp(
            conditions,
            old.map(|s| s.conditions.as_slice()).unwrap_or_default(),
            generation,
            now,
        ),
    }
}

/// The budget status to store: `Accepted` and `Ready` (enforced) with the cap in words, and,
/// for an enforced budget, the fleet's spend this period from its ledger (none yet: nothing
/// spent) with the `BudgetExceeded` condition.
pub fn budget_status(
    generation: i64,
    view: &BudgetView,
    ledger: Option<&BudgetLedger>,
    old: Option<&LLMBudgetStatus>,
    now: &Now,
) -> LLMBudgetStatus {
    let mut conditions = if view.errors.is_empty() {
        vec![
            accepted(),
            Condition::new(
                READY,
                true,
                reason::ENFORCED,
                "compiled into the snapshots of this namespace's sidecars",
            ),
        ]
    } else {
        vec![
            invalid(&join(&view.errors)),
            Condition::new(
                READY,
                false,
                reason::NOT_SERVED,
                "not pushed to sidecars until Accepted is True",
            ),
        ]
    };
    let old_conditions = old.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let mut status = match &view.budget {
        Some(budget) => {
            let (status, exceeded) = spend_status(budget, ledger, now.unix);
            conditions.push(exceeded);
            status
        }
        // Not enforced: keep the last figures rather than erasing them.
        None => LLMBudgetStatus {
            spent: old.and_then(|s| s.spent.clone()),
            spent_tokens: old.and_then(|s| s.spent_tokens),
            remaining: old.and_then(|s| s.remaining.clone()),
            period_start: old.and_then(|s| s.period_start.clone()),
            users: old.and_then(|s| s.users),
            top_users: old.map(|s| s.top_users.clone()).unwrap_or_default(),
            ..LLMBudgetStatus::default()
        },
    };
    status.observed_generation = Some(generation);
    status.limit = view.limit.clone();
    status.conditions = stamp(conditions, old_conditions, generation, &now.text);
    status
}

/// User keys listed in a `perUser` budget's status.
pub const TOP_USERS: usize = 10;

fn usd(micro: u64) -> String {
    format!("${}", format_usd(micro))
}

/// The spend figures and `BudgetExceeded` condition of an enforced budget at `now`, from its
/// ledger: a ledger of an earlier period counts as nothing spent (the period rolled over).
pub fn spend_status(
    budget: &Budget,
    ledger: Option<&BudgetLedger>,
    now: u64,
) -> (LLMBudgetStatus, Condition) {
    let (current, end) = period_bounds(budget.period, now);
    let fresh = BudgetLedger::new(current);
    let ledger = ledger
        .filter(|l| l.period_start >= current)
        .unwrap_or(&fresh);
    let cap = Cap::from(budget);
    let total = ledger.total;
    let remaining = (!budget.per_user)
        .then(|| {
            let usd_left = budget
                .limit_usd
                .map(|l| usd(l.saturating_sub(total.micro_usd)));
            let tokens_left = budget
                .limit_tokens
                .map(|l| format!("{} tokens", l.saturating_sub(total.tokens())));
            match (usd_left, tokens_left) {
                (Some(u), Some(t)) => Some(format!("{u}, {t}")),
                (u, t) => u.or(t),
            }
        })
        .flatten();
    let status = LLMBudgetStatus {
        spent: Some(usd(total.micro_usd)),
        spent_tokens: Some(total.tokens()),
        remaining,
        period_start: Some(rfc3339(ledger.period_start)),
        users: budget.per_user.then_some(ledger.users.len() as u64),
        top_users: ledger
            .top_users(TOP_USERS)
            .into_iter()
            .map(|(user, s)| UserSpend {
                user: user.to_string(),
                spent: usd(s.micro_usd),
                spent_tokens: s.tokens(),
            })
            .collect(),
        ..LLMBudgetStatus::default()
    };
    let resets = rfc3339(end);
    let exceeded = if budget.per_user {
        let n = ledger.users.values().filter(|s| cap.reached_by(s)).count();
        if n > 0 {
            Condition::new(
                BUDGET_EXCEEDED,
                true,
                reason::USERS_EXHAUSTED,
                format!(
                    "{n} user key(s) reached their per-user cap this period; it resets at {resets}"
                ),
            )
        } else {
            Condition::new(
                BUDGET_EXCEEDED,
                false,
                reason::WITHIN_LIMIT,
                "no user key has reached its per-user cap this period",
            )
        }
    } else if ledger.exhausted(cap) {
        Condition::new(
            BUDGET_EXCEEDED,
            true,
            reason::EXHAUSTED,
            format!(
                "the fleet spent the cap for this period (action {}); it resets at {resets}",
                action_word(budget.action)
            ),
        )
    } else {
        Condition::new(
            BUDGET_EXCEEDED,
            false,
            reason::WITHIN_LIMIT,
            format!(
                "{}% of the cap spent this period",
                ledger.used_permille(cap) / 10
            ),
        )
    };
    (status, exceeded)
}

fn action_word(a: BudgetAction) -> &'static str {
    match a {
        BudgetAction::Reject => "reject: requests get 429 until then",
        BudgetAction::Downgrade => "downgrade: requests go to downgradeBackend until then",
        BudgetAction::Alert => "alert: requests still go through",
    }
}

fn stamp(
    mut conditions: Vec<Condition>,
    old: &[Condition],
    generation: i64,
    now: &str,
) -> Vec<Condition> {
    for c in &mut conditions {
        c.observed_generation = Some(generation);
        c.last_transition_time = old
            .iter()
            .find(|o| o.type_ == c.type_ && o.status == c.status)
            .and_then(|o| o.last_transition_time.clone())
            .or_else(|| Some(now.to_string()));
    }
    conditions
}

/// Whether `new` differs from `old` in anything but condition timestamps.
pub fn route_status_changed(old: Option<&LLMRouteStatus>, new: &LLMRouteStatus) -> bool {
    let Some(old) = old else { return true };
    let strip = |s: &LLMRouteStatus| {
        let mut s = s.clone();
        s.conditions
            .iter_mut()
            .for_each(|c| c.last_transition_time = None);
        s
    };
    strip(old) != strip(new)
}

/// Whether `new` differs from `old` in anything but condition timestamps.
pub fn budget_status_changed(old: Option<&LLMBudgetStatus>, new: &LLMBudgetStatus) -> bool {
    let Some(old) = old else { return true };
    let strip = |s: &LLMBudgetStatus| {
        let mut s = s.clone();
        s.conditions
            .iter_mut()
            .for_each(|c| c.last_transition_time = None);
        s
    };
    strip(old) != strip(new)
}

#[cfg(test)]
mod tests;
