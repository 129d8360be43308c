use super::*;
use llmesh_api::ledger::FleetSpend;
use llmesh_api::prices::Prices;
use llmesh_api::{BudgetAction, BudgetPeriod};

use crate::budget::Admission;

/// 2026-12-08T10:00:00Z.
const T: u64 = 1_796_724_000;
const DAY: u64 = T - T % 86_400;

fn budget(per_user: bool) -> Budget {
    Budget {
        namespace: "team-a".into(),
        name: "daily".into(),
        routes: vec![],
        per_user,
        limit_usd: Some(10_000_000),
        limit_tokens: None,
        period: BudgetPeriod::Day,
        action: BudgetAction::Reject,
        downgrade_backend: None,
        alert_thresholds: vec![],
    }
}

fn spend(micro_usd: u64) -> Spend {
    Spend {
        micro_usd,
        input_tokens: 100,
        output_tokens: 50,
        requests: 1,
    }
}

fn prices() -> Prices {
    Prices {
        input: 1_000_000,
        output: 2_000_000,
        ..Prices::default()
    }
}

#[test]
fn spend_is_reported_per_budget_period_and_user_and_resent_until_acknowledged() {
    let u = UsageReports::new("n1");
    assert!(u.to_send().is_none());
    u.record(&budget(false), T, Some("alice"), spend(5));
    u.record(&budget(false), T + 1, Some("bob"), spend(7));
    u.record(&budget(true), T + 2, Some("alice"), spend(11));
    let r = u.to_send().unwrap();
    assert_eq!(r.seq, 1);
    assert_eq!(r.reporter, "n1");
    // Users only for a perUser budget: two keys (no user: 5 + 7; alice: 11).
    assert_eq!(r.entries.len(), 2);
    let whole = r.entries.iter().find(|e| e.user.is_none()).unwrap();
    assert_eq!(whole.spend.micro_usd, 12);
    assert_eq!(whole.period_start, DAY);
    assert_eq!(whole.spend.requests, 2);
    let alice = r.entries.iter().find(|e| e.user.is_some()).unwrap();
    assert_eq!(alice.user.as_deref(), Some("alice"));
    // Spend recorded meanwhile waits for the next report; the same one goes again.
    u.record(&budget(false), T + 3, None, spend(1));
    assert_eq!(u.to_send().unwrap(), r);
    let wrong = UsageAck {
        seq: 2,
        budgets: vec![],
        routes: vec![],
    };
    assert!(!u.acknowledged(&wrong, &[], T));
    assert!(u.acknowledged(
        &UsageAck {
            seq: 1,
            budgets: vec![],
            routes: vec![]
        },
        &[],
        T
    ));
    let next = u.to_send().unwrap();
    assert_eq!(next.seq, 2);
    assert_eq!(next.entries[0].spend.micro_usd, 1);
    assert!(!u.is_empty());
    assert!(u.acknowledged(
        &UsageAck {
            seq: 2,
            budgets: vec![],
            routes: vec![]
        },
        &[],
        T
    ));
    assert!(u.is_empty());
}

#[test]
fn the_fleet_total_less_own_acknowledged_spend_counts_at_admission() {
    let state = Arc::new(BudgetState::new(budget(false), None));
    let u = UsageReports::new("n1");
    // This sidecar spent $2 (reported and acknowledged); the fleet total is $9.5, so the
    // others spent $7.5 and $0.5 is left of the $10 cap.
    u.record(&budget(false), T, None, spend(2_000_000));
    let seq = u.to_send().unwrap().seq;
    let reservation = state.admit(None, 0, Some(1), None, &prices(), T).1.unwrap();
    state.settle(reservation, 2_000_000, 150, T);
    let ack = UsageAck {
        seq,
        budgets: vec![FleetSpend {
            budget: "daily".into(),
            period_start: DAY,
            spend: spend(9_500_000),
            sidecars: 3,
        }],
        routes: vec![],
    };
    assert!(u.acknowledged(&ack, std::slice::from_ref(&state), T));
    // 400k input tokens cost $0.40: allowed, clamped to what $0.10 buys at $2/M output.
    let (a, _) = state.admit(None, 400_000, Some(1_000_000), None, &prices(), T + 1);
    assert_eq!(
        a,
        Admission::Allow {
            max_tokens: Some(50_000)
        }
    );
    // 600k input tokens cost $0.60, more than is left of the fleet's cap.
    let (a, _) = state.admit(None, 600_000, None, None, &prices(), T + 2);
    assert!(matches!(a, Admission::Reject { .. }), "{a:?}");
    // Next day the others' spend of yesterday no longer counts.
    let (a, _) = state.admit(None, 600_000, None, None, &prices(), DAY + 86_400 + 5);
    assert!(matches!(a, Admission::Allow { .. }), "{a:?}");
}

#[test]
fn with_the_operator_away_a_sidecar_spends_only_its_share_of_what_was_left() {
    let state = Arc::new(BudgetState::new(budget(false), None));
    let u = UsageReports::new("n1");
    u.record(&budget(false), T, None, spend(1_000_000));
    let seq = u.to_send().unwrap().seq;
    let r = state.admit(None, 0, Some(1), None, &prices(), T).1.unwrap();
    state.settle(r, 1_000_000, 150, T);
    // The fleet spent $5 of $10 (this sidecar $1 of it); four sidecars share the $5 left.
    let ack = UsageAck {
        seq,
        budgets: vec![FleetSpend {
            budget: "daily".into(),
            period_start: DAY,
            spend: spend(5_000_000),
            sidecars: 4,
        }],
        routes: vec![],
    };
    assert!(u.acknowledged(&ack, std::slice::from_ref(&state), T));
    // Fresh: the whole $5 left may go to one request ($4 of input allowed, no clamp needed
    // below what $1 buys).
    let (a, r) = state.admit(None, 4_000_000, Some(100), None, &prices(), T + 5);
    assert_eq!(a, Admission::Allow { max_tokens: None });
    state.settle(r.unwrap(), 0, 0, T + 5);
    // Ten seconds on the operator is away: only this sidecar's share, $1.25, is left. $1 of
    // input leaves $0.25: 125,000 output tokens at $2/M.
    let (a, r) = state.admit(None, 1_000_000, Some(1_000_000), None, &prices(), T + 11);
    assert_eq!(
        a,
        Admission::Allow {
            max_tokens: Some(125_000)
        }
    );
    state.settle(r.unwrap(), 1_200_000, 1_100_000, T + 11);
    // $1.20 of the share is spent: $0.10 of input is more than the $0.05 left.
    let (a, _) = state.admit(None, 100_000, None, None, &prices(), T + 12);
    assert!(matches!(a, Admission::Reject { .. }), "{a:?}");
}
