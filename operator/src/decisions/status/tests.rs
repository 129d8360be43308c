use super::*;
use llmesh_api::compile::FieldError;

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

#[test]
fn budget_status_keeps_spend_and_reports_errors() {
    let old = LLMBudgetStatus {
        spent: Some("1.50".into()),
        ..Default::default()
    };
    let ok = budget_status(2, Some("$25.00/day".into()), &[], Some(&old), "T1");
    assert_eq!(ok.spent.as_deref(), Some("1.50"));
    assert_eq!(ok.limit.as_deref(), Some("$25.00/day"));
    assert!(ok.conditions.iter().all(Condition::is_true));
    let bad = budget_status(
        2,
        None,
        &[fe(
            "spec.downgradeBackend",
            "route x has no backend `cheap`",
        )],
        Some(&ok),
        "T2",
    );
    assert!(budget_status_changed(Some(&ok), &bad));
    let accepted = bad.conditions.iter().find(|c| c.type_ == ACCEPTED).unwrap();
    assert!(accepted.message.contains("spec.downgradeBackend"));
}
