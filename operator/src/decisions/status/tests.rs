use super::*;
use llmesh_api::compile::FieldError;
use llmesh_api::ledger::Spend;
use std::sync::Arc;

fn fe(field: &str, message: &str) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

fn good() -> Outcome {
    Outcome {
        generation: 3,
        model: "chat".into(),
        backends: "a=mock/m 100%".into(),
        ..Outcome::default()
    }
}

fn cond<'a>(s: &'a LLMRouteStatus, t: &str) -> &'a Condition {
    s.conditions.iter().find(|c| c.type_ == t).unwrap()
}

#[test]
fn a_valid_served_route_is_accepted_resolved_and_ready() {
    let s = route_status(3, &good(), Rollout { ready: 2, total: 2 }, None, "T1");
    assert_eq!(s.observed_generation, Some(3));
    assert_eq!(s.model.as_deref(), Some("chat"));
    assert_eq!(s.ready_sidecars, Some(2));
    for t in [ACCEPTED, RESOLVED_REFS, READY] {
        let c = cond(&s, t);
        assert!(c.is_true(), "{t}: {c:?}");
        assert_eq!(c.observed_generation, Some(3));
        assert_eq!(c.last_transition_time.as_deref(), Some("T1"));
    }
    assert!(cond(&s, READY).message.contains("2 of 2"));
}

#[test]
fn rolling_out_is_not_ready_and_says_how_far() {
    let s = route_status(3, &good(), Rollout { ready: 1, total: 4 }, None, "T1");
    let r = cond(&s, READY);
    assert!(!r.is_true());
    assert_eq!(r.reason, reason::ROLLING_OUT);
    assert!(r.message.contains("1 of 4"), "{}", r.message);
}

#[test]
fn no_sidecar_yet_is_ready_and_says_how_to_get_one() {
    let s = route_status(3, &good(), Rollout::default(), None, "T1");
    let r = cond(&s, READY);
    assert!(r.is_true());
    assert!(
        r.message.contains("llmesh.io/inject=enabled"),
        "{}",
        r.message
    );
}

#[test]
fn a_missing_secret_is_resolved_refs_false_and_not_served() {
    let mut o = good();
    o.unresolved = vec![fe(
        "spec.backends[0].secretRef",
        "Secret team/openai not found: create it",
    )];
    let s = route_status(3, &o, Rollout::default(), None, "T1");
    assert!(cond(&s, ACCEPTED).is_true());
    let refs = cond(&s, RESOLVED_REFS);
    assert_eq!(refs.reason, reason::MISSING_SECRET);
    assert!(
        refs.message
            .starts_with("spec.backends[0].secretRef: Secret team/openai")
    );
    assert_eq!(cond(&s, READY).reason, reason::NOT_SERVED);
    assert_eq!(s.ready_sidecars, Some(0));
}

#[test]
fn spec_errors_name_their_fields_and_leave_refs_unknown() {
    let mut o = good();
    o.invalid = vec![
        fe("spec.retry.backoff", "`x` is not a duration"),
        fe("spec.fallbacks[0]", "`nope` is not a backend"),
    ];
    let s = route_status(3, &o, Rollout::default(), None, "T1");
    let a = cond(&s, ACCEPTED);
    assert_eq!(a.reason, reason::INVALID);
    assert!(a.message.contains("spec.retry.backoff") && a.message.contains("spec.fallbacks[0]"));
    assert_eq!(cond(&s, RESOLVED_REFS).status, "Unknown");
    assert!(!cond(&s, READY).is_true());
}

#[test]
fn a_model_conflict_refuses_the_route() {
    let mut o = good();
    o.conflict = Some("spec.model: model name `chat` is already served".into());
    let s = route_status(3, &o, Rollout::default(), None, "T1");
    assert_eq!(cond(&s, ACCEPTED).reason, reason::MODEL_CONFLICT);
    assert_eq!(cond(&s, READY).reason, reason::NOT_SERVED);
}

#[test]
fn timestamps_survive_when_status_does_not_change_and_are_not_a_change() {
    let first = route_status(3, &good(), Rollout { ready: 1, total: 1 }, None, "T1");
    let again = route_status(
        3,
        &good(),
        Rollout { ready: 1, total: 1 },
        Some(&first),
        "T2",
    );
    assert_eq!(
        cond(&again, READY).last_transition_time.as_deref(),
        Some("T1")
    );
    assert!(!route_status_changed(Some(&first), &again));

    // Only a timestamp differs: no write.
    let mut touched = first.clone();
    touched.conditions[0].last_transition_time = Some("T9".into());
    assert!(!route_status_changed(Some(&first), &touched));

    // A real change is a write, and the changed condition gets the new time.
    let rolling = route_status(
        4,
        &good(),
        Rollout { ready: 0, total: 1 },
        Some(&first),
        "T3",
    );
    assert!(route_status_changed(Some(&first), &rolling));
    assert_eq!(
        cond(&rolling, READY).last_transition_time.as_deref(),
        Some("T3")
    );
    assert_eq!(
        cond(&rolling, ACCEPTED).last_transition_time.as_deref(),
        Some("T1")
    );
}

fn now(unix: u64) -> Now {
    Now {
        text: llmesh_api::period::rfc3339(unix),
        unix,
    }
}

/// 2026-12-08T10:00:00Z.
const T: u64 = 1_796_724_000;

fn day_budget(per_user: bool) -> Arc<Budget> {
    Arc::new(Budget {
        namespace: "team-a".into(),
        name: "daily".into(),
        routes: vec![],
        per_user,
        limit_usd: Some(25_000_000),
        limit_tokens: None,
        period: llmesh_api::BudgetPeriod::Day,
        action: BudgetAction::Reject,
        downgrade_backend: None,
        alert_thresholds: vec![50, 80, 100],
    })
}

fn view(budget: Option<Arc<Budget>>, errors: Vec<FieldError>) -> BudgetView {
    BudgetView {
        generation: 2,
        limit: Some("$25.000000/day".into()),
        errors,
        uid: "u1".into(),
        budget,
    }
}

fn ledger_with(period_start: u64, micro_usd: u64, users: &[(&str, u64)]) -> BudgetLedger {
    let mut l = BudgetLedger::new(period_start);
    l.total = Spend {
        micro_usd,
        input_tokens: 1000,
        output_tokens: 500,
        requests: 3,
    };
    for (u, m) in users {
        l.users.insert(
            u.to_string(),
            Spend {
                micro_usd: *m,
                ..Spend::default()
            },
        );
    }
    l
}

fn bcond<'a>(s: &'a LLMBudgetStatus, t: &str) -> &'a Condition {
    s.conditions.iter().find(|c| c.type_ == t).unwrap()
}

#[test]
fn an_enforced_budget_shows_the_fleet_spend_from_its_ledger() {
    let day = T - T % 86_400;
    let ledger = ledger_with(day, 20_500_000, &[]);
    let s = budget_status(
        2,
        &view(Some(day_budget(false)), vec![]),
        Some(&ledger),
        None,
        &now(T),
    );
    assert_eq!(s.spent.as_deref(), Some("$20.500000"));
    assert_eq!(s.spent_tokens, Some(1500));
    assert_eq!(s.remaining.as_deref(), Some("$4.500000"));
    assert_eq!(s.period_start.as_deref(), Some("2026-12-08T00:00:00Z"));
    assert_eq!(s.limit.as_deref(), Some("$25.000000/day"));
    let e = bcond(&s, BUDGET_EXCEEDED);
    assert!(!e.is_true());
    assert_eq!(e.reason, reason::WITHIN_LIMIT);
    assert_eq!(e.message, "82% of the cap spent this period");
    assert_eq!(s.users, None);
}

#[test]
fn a_budget_without_reports_shows_nothing_spent_and_a_spent_one_is_exceeded() {
    let fresh = budget_status(
        2,
        &view(Some(day_budget(false)), vec![]),
        None,
        None,
        &now(T),
    );
    assert_eq!(fresh.spent.as_deref(), Some("$0.000000"));
    assert_eq!(fresh.remaining.as_deref(), Some("$25.000000"));
    assert!(!bcond(&fresh, BUDGET_EXCEEDED).is_true());

    let day = T - T % 86_400;
    let spent = ledger_with(day, 25_000_001, &[]);
    let s = budget_status(
        2,
        &view(Some(day_budget(false)), vec![]),
        Some(&spent),
        Some(&fresh),
        &now(T),
    );
    assert!(budget_status_changed(Some(&fresh), &s));
    assert_eq!(s.remaining.as_deref(), Some("$0.000000"));
    let e = bcond(&s, BUDGET_EXCEEDED);
    assert!(e.is_true());
    assert_eq!(e.reason, reason::EXHAUSTED);
    assert!(
        e.message.contains("resets at 2026-12-09T00:00:00Z"),
        "{}",
        e.message
    );
}

#[test]
fn a_ledger_of_an_earlier_period_counts_as_nothing_spent() {
    let yesterday = T - T % 86_400 - 86_400;
    let old = ledger_with(yesterday, 25_000_000, &[]);
    let s = budget_status(
        2,
        &view(Some(day_budget(false)), vec![]),
        Some(&old),
        None,
        &now(T),
    );
    assert_eq!(s.spent.as_deref(), Some("$0.000000"));
    assert_eq!(s.period_start.as_deref(), Some("2026-12-08T00:00:00Z"));
    assert!(!bcond(&s, BUDGET_EXCEEDED).is_true());
}

#[test]
fn a_per_user_budget_lists_its_top_spenders_and_counts_capped_users() {
    let day = T - T % 86_400;
    let l = ledger_with(
        day,
        40_000_000,
        &[("alice", 26_000_000), ("bob", 14_000_000)],
    );
    let s = budget_status(
        2,
        &view(Some(day_budget(true)), vec![]),
        Some(&l),
        None,
        &now(T),
    );
    assert_eq!(s.users, Some(2));
    assert_eq!(s.remaining, None);
    assert_eq!(s.top_users[0].user, "alice");
    assert_eq!(s.top_users[0].spent, "$26.000000");
    assert_eq!(s.top_users[1].user, "bob");
    let e = bcond(&s, BUDGET_EXCEEDED);
    assert!(e.is_true());
    assert_eq!(e.reason, reason::USERS_EXHAUSTED);
    assert!(e.message.starts_with("1 user key(s)"), "{}", e.message);
}

#[test]
fn budget_status_keeps_spend_and_reports_errors() {
    let old = LLMBudgetStatus {
        spent: Some("1.50".into()),
        ..Default::default()
    };
    let bad = budget_status(
        2,
        &view(
            None,
            vec![fe(
                "spec.downgradeBackend",
                "route x has no backend `cheap`",
            )],
        ),
        None,
        Some(&old),
        &now(T),
    );
    assert!(budget_status_changed(Some(&old), &bad));
    assert_eq!(bad.spent.as_deref(), Some("1.50"));
    let accepted = bad.conditions.iter().find(|c| c.type_ == ACCEPTED).unwrap();
    assert!(accepted.message.contains("spec.downgradeBackend"));
    assert!(bad.conditions.iter().all(|c| c.type_ != BUDGET_EXCEEDED));
}

#[test]
fn an_unchanged_spend_is_not_a_change() {
    let day = T - T % 86_400;
    let l = ledger_with(day, 1_000_000, &[]);
    let v = view(Some(day_budget(false)), vec![]);
    let a = budget_status(2, &v, Some(&l), None, &now(T));
    let b = budget_status(2, &v, Some(&l), Some(&a), &now(T + 30));
    assert!(!budget_status_changed(Some(&a), &b));
}
