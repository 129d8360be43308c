use super::*;

const T0: u64 = 1_709_164_800; // 2024-02-29T00:00:00Z, a leap day

fn budget(
    limit_usd: Option<u64>,
    limit_tokens: Option<u64>,
    period: BudgetPeriod,
    action: BudgetAction,
) -> BudgetState {
    BudgetState::new(
        Budget {
            namespace: "team".into(),
            name: "monthly".into(),
            routes: vec![],
            per_user: false,
            limit_usd,
            limit_tokens,
            period,
            action,
            downgrade_backend: Some("cheap".into()),
            alert_thresholds: vec![50, 80, 100],
        },
        None,
    )
}

// $1 per 1M input, $2 per 1M output.
const PRICES: Prices = Prices {
    input: 1_000_000,
    output: 2_000_000,
    cached_input: 0,
    cache_write: 0,
};

#[test]
fn calendar_periods_are_aligned_in_utc() {
    assert_eq!(rfc3339(T0), "2024-02-29T00:00:00Z");
    let (s, e) = period_bounds(BudgetPeriod::Month, T0 + 3600);
    assert_eq!(
        (rfc3339(s).as_str(), rfc3339(e).as_str()),
        ("2024-02-01T00:00:00Z", "2024-03-01T00:00:00Z")
    );
    let (s, e) = period_bounds(BudgetPeriod::Month, 1_735_689_599); // 2024-12-31T23:59:59Z
    assert_eq!(
        (rfc3339(s).as_str(), rfc3339(e).as_str()),
        ("2024-12-01T00:00:00Z", "2025-01-01T00:00:00Z")
    );
    let (s, e) = period_bounds(BudgetPeriod::Day, T0 + 5);
    assert_eq!((s, e), (T0, T0 + 86_400));
    let (s, _) = period_bounds(BudgetPeriod::Hour, T0 + 7_199);
    assert_eq!(s, T0 + 3600);
    for days in [-1000i64, 0, 59, 19_782, 60_000] {
        let (y, m, d) = civil_from_days(days);
        assert_eq!(days_from_civil(y, m, d), days);
    }
}

#[test]
fn clamps_max_tokens_to_what_the_allowance_pays_for() {
    // $0.01 cap = 10,000 micro-dollars.
    let b = budget(
        Some(10_000),
        None,
        BudgetPeriod::Month,
        BudgetAction::Reject,
    );
    // 1,000 input tokens cost 1,000; 9,000 left pays for 4,500 output tokens.
    let (a, r) = b.admit(None, 1_000, Some(100_000), None, &PRICES, T0);
    assert_eq!(
        a,
        Admission::Allow {
            max_tokens: Some(4_500)
        }
    );
    // Nothing to clamp when the request already fits.
    b.settle(r.unwrap(), 0, 0, T0);
    let (a, r) = b.admit(None, 1_000, Some(10), None, &PRICES, T0);
    assert_eq!(a, Admission::Allow { max_tokens: None });
    b.settle(r.unwrap(), 1_020, 1_010, T0);
    assert_eq!(b.spent(T0).0, 1_020);
}

#[test]
fn reservations_count_until_settled() {
    let b = budget(
        Some(10_000),
        None,
        BudgetPeriod::Month,
        BudgetAction::Reject,
    );
    let (_, r1) = b.admit(None, 1_000, Some(4_500), None, &PRICES, T0); // reserves 10,000
    let (a, _) = b.admit(None, 1_000, Some(10), None, &PRICES, T0);
    assert!(matches!(a, Admission::Reject { .. }), "{a:?}");
    b.settle(r1.unwrap(), 2_000, 1_500, T0); // really cost 2,000
    let (a, _) = b.admit(None, 1_000, Some(10), None, &PRICES, T0);
    assert!(matches!(a, Admission::Allow { .. }), "{a:?}");
}

#[test]
fn a_spent_budget_rejects_until_the_next_period_and_says_when() {
    let b = budget(Some(1_000), None, BudgetPeriod::Day, BudgetAction::Reject);
    let (_, r) = b.admit(None, 10, None, None, &PRICES, T0);
    b.settle(r.unwrap(), 1_000, 10, T0);
    let (a, _) = b.admit(None, 10, None, None, &PRICES, T0 + 600);
    match a {
        Admission::Reject {
            retry_after,
            message,
        } => {
            assert_eq!(retry_after, Duration::from_secs(86_400 - 600));
            assert!(
                message.contains("team/monthly")
                    && message.contains("$0.001000")
                    && message.contains("2024-03-01T00:00:00Z"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    // A new day, a new allowance.
    let (a, _) = b.admit(None, 10, None, None, &PRICES, T0 + 86_400);
    assert!(matches!(a, Admission::Allow { .. }));
    assert_eq!(b.spent(T0 + 86_400).0, 0);
}

#[test]
fn token_caps_and_downgrade_and_alert_actions() {
    let b = budget(
        None,
        Some(100),
        BudgetPeriod::Month,
        BudgetAction::Downgrade,
    );
    let (a, r) = b.admit(None, 40, Some(1_000), None, &PRICES, T0);
    assert_eq!(
        a,
        Admission::Allow {
            max_tokens: Some(60)
        }
    );
    b.settle(r.unwrap(), 0, 100, T0);
    let (a, r) = b.admit(None, 1, None, None, &PRICES, T0);
    assert_eq!(a, Admission::Downgrade("cheap".into()));
    // What the downgraded request spends still counts.
    b.settle(r.expect("a downgraded request is reserved"), 7, 3, T0);
    assert_eq!(b.spent(T0), (7, 103, b.spent(T0).2));

    let b = budget(Some(1_000), None, BudgetPeriod::Month, BudgetAction::Alert);
    let (_, r) = b.admit(None, 10, None, None, &PRICES, T0);
    b.settle(r.unwrap(), 5_000, 10, T0);
    // Over the cap, alert-only lets requests through unclamped.
    assert_eq!(
        b.admit(None, 10, Some(50), None, &PRICES, T0).0,
        Admission::Allow { max_tokens: None }
    );
}

#[test]
fn alerts_fire_once_per_threshold_per_period() {
    let b = budget(Some(1_000), None, BudgetPeriod::Month, BudgetAction::Alert);
    let mut fired = Vec::new();
    for cost in [400, 200, 100, 300, 100] {
        let (_, r) = b.admit(None, 0, None, None, &PRICES, T0);
        fired.push(
            b.settle(r.unwrap(), cost, 1, T0)
                .iter()
                .map(|a| a.threshold)
                .collect::<Vec<_>>(),
        );
    }
    assert_eq!(fired, vec![vec![], vec![50], vec![], vec![80, 100], vec![]]);
}

#[test]
fn per_user_budgets_count_each_user_apart() {
    let mut spec = budget(Some(1_000), None, BudgetPeriod::Month, BudgetAction::Reject).spec;
    spec.per_user = true;
    let b = BudgetState::new(spec, None);
    let (_, r) = b.admit(Some("alice"), 10, None, None, &PRICES, T0);
    b.settle(r.unwrap(), 1_000, 10, T0);
    assert!(matches!(
        b.admit(Some("alice"), 10, None, None, &PRICES, T0).0,
        Admission::Reject { .. }
    ));
    assert!(matches!(
        b.admit(Some("bob"), 10, None, None, &PRICES, T0).0,
        Admission::Allow { .. }
    ));
}

#[test]
fn the_ledger_survives_a_config_reload() {
    let b = budget(Some(1_000), None, BudgetPeriod::Month, BudgetAction::Reject);
    let (_, r) = b.admit(None, 10, None, None, &PRICES, T0);
    b.settle(r.unwrap(), 700, 10, T0);
    let mut spec = b.spec.clone();
    spec.limit_usd = Some(2_000);
    let reloaded = BudgetState::new(spec, Some(&b));
    assert_eq!(reloaded.spent(T0).0, 700);
}

// gpt-4o-mini: $0.15 per 1M input, $0.60 per 1M output, at most 16,384 output tokens.
const MINI: Prices = Prices {
    input: 150_000,
    output: 600_000,
    cached_input: 75_000,
    cache_write: 150_000,
};
const MINI_CAP: Option<u32> = Some(16_384);

#[test]
fn a_large_budget_neither_clamps_nor_blocks_requests_without_max_tokens() {
    // $1,000 a day: no request without max_tokens is clamped (the upstream would refuse a
    // max_tokens over the model's 16,384), and 60 in flight at once all go ahead.
    let b = budget(
        Some(1_000_000_000),
        None,
        BudgetPeriod::Day,
        BudgetAction::Reject,
    );
    let mut held = Vec::new();
    for _ in 0..60 {
        let (a, r) = b.admit(None, 20, None, MINI_CAP, &MINI, T0);
        assert_eq!(a, Admission::Allow { max_tokens: None });
        held.push(r.unwrap());
    }
    // Each holds a bounded estimate (20 input + 4,096 output tokens), not the whole budget.
    assert_eq!(
        held[0].cost,
        cost_of(20, MINI.input) + cost_of(4_096, MINI.output)
    );
    for r in held {
        b.settle(r, 27, 47, T0);
    }
    assert_eq!(b.spent(T0).0, 60 * 27);
}

#[test]
fn a_clamp_is_never_above_the_models_output_limit() {
    // $1 left pays for 1.6M output tokens: the client's 100,000 is clamped to the model's limit,
    // never sent as the 1.6M the allowance could pay for.
    let b = budget(
        Some(1_000_000),
        None,
        BudgetPeriod::Day,
        BudgetAction::Reject,
    );
    let (a, r) = b.admit(None, 0, Some(100_000), MINI_CAP, &MINI, T0);
    assert_eq!(a, Admission::Allow { max_tokens: None });
    // It holds what the model can produce, not the 100,000 it asked for.
    assert_eq!(r.unwrap().cost, cost_of(16_384, MINI.output));
    let b = budget(Some(30_000), None, BudgetPeriod::Day, BudgetAction::Reject);
    // 30,000 micro-dollars pays for 50,000 output tokens: the client's 100,000 becomes 16,384.
    let (a, _) = b.admit(None, 0, Some(100_000), MINI_CAP, &MINI, T0);
    assert_eq!(
        a,
        Admission::Allow {
            max_tokens: Some(16_384)
        }
    );
}

#[test]
fn at_the_tail_a_request_without_max_tokens_gets_exactly_what_is_left() {
    // $0.006 left pays for 10,000 output tokens, less than the model's 16,384: the request is
    // clamped to 10,000 and holds all of it, so the next one in flight is refused, not let
    // through to overspend.
    let b = budget(Some(6_000), None, BudgetPeriod::Day, BudgetAction::Reject);
    let (a, r) = b.admit(None, 0, None, MINI_CAP, &MINI, T0);
    assert_eq!(
        a,
        Admission::Allow {
            max_tokens: Some(10_000)
        }
    );
    let (a, _) = b.admit(None, 0, None, MINI_CAP, &MINI, T0);
    assert!(matches!(a, Admission::Reject { .. }), "{a:?}");
    // It used 1,000: the rest is free again.
    b.settle(r.unwrap(), cost_of(1_000, MINI.output), 1_000, T0);
    let (a, _) = b.admit(None, 0, None, MINI_CAP, &MINI, T0);
    assert_eq!(
        a,
        Admission::Allow {
            max_tokens: Some(9_000)
        }
    );
}

#[test]
fn an_unknown_model_is_clamped_below_the_default_estimate_only() {
    let b = budget(Some(6_000), None, BudgetPeriod::Day, BudgetAction::Reject);
    // Pays for 10,000 tokens, more than the 4,096 a request without a limit is expected to use.
    let (a, _) = b.admit(None, 0, None, None, &MINI, T0);
    assert_eq!(a, Admission::Allow { max_tokens: None });
    let b = budget(Some(1_200), None, BudgetPeriod::Day, BudgetAction::Reject);
    let (a, _) = b.admit(None, 0, None, None, &MINI, T0);
    assert_eq!(
        a,
        Admission::Allow {
            max_tokens: Some(2_000)
        }
    );
}
