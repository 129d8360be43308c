use super::*;

const DAY: u64 = 86_400;
const D1: u64 = 20_000 * DAY; // a period start (midnight UTC)
const D2: u64 = D1 + DAY;

fn spend(micro_usd: u64, input: u64, output: u64) -> Spend {
    Spend {
        micro_usd,
        input_tokens: input,
        output_tokens: output,
        requests: 1,
    }
}

fn entry(budget: &str, period_start: u64, user: Option<&str>, s: Spend) -> UsageEntry {
    UsageEntry {
        budget: budget.into(),
        period_start,
        user: user.map(str::to_string),
        spend: s,
    }
}

fn report(reporter: &str, seq: u64, entries: Vec<UsageEntry>) -> UsageReport {
    UsageReport {
        reporter: reporter.into(),
        seq,
        entries,
    }
}

#[test]
fn counts_each_report_once_however_often_it_is_resent() {
    let mut l = BudgetLedger::new(D1);
    let r1 = report(
        "pod-a/1",
        1,
        vec![entry("team", D1, None, spend(1_250, 10, 20))],
    );
    let r2 = report(
        "pod-a/1",
        2,
        vec![entry("team", D1, None, spend(750, 5, 5))],
    );
    assert_eq!(l.apply("team", &r1, D1, 10), Applied::Counted);
    assert_eq!(l.apply("team", &r1, D1, 11), Applied::Duplicate);
    assert_eq!(l.apply("team", &r2, D1, 12), Applied::Counted);
    assert_eq!(
        l.apply("team", &r1, D1, 13),
        Applied::Duplicate,
        "an old resend after a newer report"
    );
    assert_eq!(l.apply("team", &r2, D1, 14), Applied::Duplicate);
    assert_eq!(
        l.total,
        Spend {
            micro_usd: 2_000,
            input_tokens: 15,
            output_tokens: 25,
            requests: 2
        }
    );
    assert_eq!(l.reporters["pod-a/1"], Reporter { seq: 2, at: 12 });
}

#[test]
fn reporters_are_counted_apart_and_only_their_entries_for_this_budget() {
    let mut team = BudgetLedger::new(D1);
    let both = |reporter: &str| {
        report(
            reporter,
            1,
            vec![
                entry("team", D1, None, spend(100, 1, 1)),
                entry("other", D1, None, spend(9_999, 1, 1)),
            ],
        )
    };
    assert_eq!(team.apply("team", &both("a"), D1, 1), Applied::Counted);
    assert_eq!(
        team.apply("team", &both("b"), D1, 1),
        Applied::Counted,
        "same seq, another reporter"
    );
    assert_eq!(team.total.micro_usd, 200);
    // A report with nothing for this budget still moves the reporter's sequence on.
    assert_eq!(
        team.apply("team", &report("a", 2, vec![]), D1, 2),
        Applied::Counted
    );
    assert_eq!(team.reporters["a"].seq, 2);
    assert_eq!(team.total.micro_usd, 200);
}

#[test]
fn survives_a_json_round_trip_so_a_restarted_operator_still_refuses_resends() {
    let mut l = BudgetLedger::new(D1);
    let r = report(
        "pod-a/1",
        7,
        vec![entry("team", D1, Some("bob"), spend(42, 3, 4))],
    );
    l.apply("team", &r, D1, 5);
    l.cross_thresholds(
        Cap {
            micro_usd: Some(50),
            tokens: None,
        },
        &[50],
    );
    let json = serde_json::to_string(&l).unwrap();
    let mut back: BudgetLedger = serde_json::from_str(&json).unwrap();
    assert_eq!(back, l);
    assert_eq!(back.apply("team", &r, D1, 6), Applied::Duplicate);
    assert_eq!(back.total.micro_usd, 42);
}

#[test]
fn a_rollover_resets_once_and_puts_the_old_periods_spend_aside() {
    let mut l = BudgetLedger::new(D1);
    l.apply(
        "team",
        &report("a", 1, vec![entry("team", D1, Some("u"), spend(500, 1, 1))]),
        D1,
        1,
    );
    l.cross_thresholds(
        Cap {
            micro_usd: Some(1_000),
            tokens: None,
        },
        &[50],
    );
    assert_eq!(l.fired, vec![50]);
    // The operator's clock passes midnight: the next report rolls the ledger over.
    let r = report(
        "a",
        2,
        vec![
            entry("team", D1, Some("u"), spend(30, 1, 1)), // spent before midnight, reported after
            entry("team", D2, Some("u"), spend(70, 1, 1)),
        ],
    );
    assert_eq!(l.apply("team", &r, D2, DAY + 1), Applied::Counted);
    assert_eq!(l.period_start, D2);
    assert_eq!(l.total.micro_usd, 70);
    assert_eq!(l.late.micro_usd, 30);
    assert_eq!(l.users["u"].micro_usd, 70);
    assert!(l.fired.is_empty(), "thresholds start again each period");
    assert_eq!(l.reporters["a"].seq, 2, "sequences run on across periods");
    assert!(!l.roll(D2), "rolling to the same period again is a no-op");
    assert!(!l.roll(D1), "and never backwards");
    assert_eq!(l.total.micro_usd, 70);
}

#[test]
fn a_sidecar_clock_ahead_of_the_operators_rolls_the_period_first() {
    let mut l = BudgetLedger::new(D1);
    l.apply(
        "team",
        &report("a", 1, vec![entry("team", D1, None, spend(10, 0, 0))]),
        D1,
        1,
    );
    // The operator still thinks it is D1; the sidecar's entry is already D2's.
    l.apply(
        "team",
        &report("b", 1, vec![entry("team", D2, None, spend(20, 0, 0))]),
        D1,
        2,
    );
    assert_eq!((l.period_start, l.total.micro_usd), (D2, 20));
    // A later entry of D1 from a slower clock is late, not charged to D2.
    l.apply(
        "team",
        &report("a", 2, vec![entry("team", D1, None, spend(5, 0, 0))]),
        D1,
        3,
    );
    assert_eq!((l.total.micro_usd, l.late.micro_usd), (20, 5));
}

#[test]
fn thresholds_fire_once_per_period_on_whichever_of_money_and_tokens_is_further() {
    let mut l = BudgetLedger::new(D1);
    let cap = Cap {
        micro_usd: Some(1_000_000),
        tokens: Some(1_000),
    };
    let thresholds = [100, 50, 80, 80];
    l.apply(
        "t",
        &report("a", 1, vec![entry("t", D1, None, spend(100_000, 300, 210))]),
        D1,
        1,
    );
    assert_eq!(l.used_permille(cap), 510, "tokens: 510 of 1000");
    assert_eq!(l.cross_thresholds(cap, &thresholds), vec![50]);
    assert_eq!(l.cross_thresholds(cap, &thresholds), Vec::<u32>::new());
    l.apply(
        "t",
        &report("a", 2, vec![entry("t", D1, None, spend(900_000, 0, 0))]),
        D1,
        2,
    );
    assert_eq!(l.cross_thresholds(cap, &thresholds), vec![80, 100]);
    assert!(l.exhausted(cap));
    assert_eq!(l.fired, vec![50, 80, 100]);
}

#[test]
fn exact_at_the_limit_and_a_zero_cap_is_always_exhausted() {
    let mut l = BudgetLedger::new(D1);
    let cap = Cap {
        micro_usd: Some(999),
        tokens: None,
    };
    l.apply(
        "t",
        &report("a", 1, vec![entry("t", D1, None, spend(998, 0, 0))]),
        D1,
        1,
    );
    assert!(!l.exhausted(cap));
    assert_eq!(l.cross_thresholds(cap, &[100]), Vec::<u32>::new());
    l.apply(
        "t",
        &report("a", 2, vec![entry("t", D1, None, spend(1, 0, 0))]),
        D1,
        2,
    );
    assert!(l.exhausted(cap));
    assert_eq!(l.cross_thresholds(cap, &[100]), vec![100]);
    assert_eq!(
        BudgetLedger::new(D1).used_permille(Cap {
            micro_usd: Some(0),
            tokens: None
        }),
        u128::MAX
    );
    assert_eq!(
        BudgetLedger::new(D1).used_permille(Cap::default()),
        0,
        "no cap, nothing used"
    );
}

#[test]
fn totals_saturate_instead_of_wrapping() {
    let mut l = BudgetLedger::new(D1);
    l.apply(
        "t",
        &report(
            "a",
            1,
            vec![entry("t", D1, None, spend(u64::MAX - 1, u64::MAX, 1))],
        ),
        D1,
        1,
    );
    l.apply(
        "t",
        &report("a", 2, vec![entry("t", D1, None, spend(10, 10, 10))]),
        D1,
        2,
    );
    assert_eq!(l.total.micro_usd, u64::MAX);
    assert_eq!(l.total.tokens(), u64::MAX);
}

#[test]
fn per_user_tables_stay_bounded_and_the_total_stays_whole() {
    let mut l = BudgetLedger::new(D1);
    let entries = (0..MAX_USERS + 20)
        .map(|i| {
            entry(
                "t",
                D1,
                Some(&format!("user-{i:04}")),
                spend(i as u64 + 1, 0, 0),
            )
        })
        .collect();
    l.apply("t", &report("a", 1, entries), D1, 1);
    assert_eq!(l.users.len(), MAX_USERS);
    let n = (MAX_USERS + 20) as u64;
    assert_eq!(
        l.total.micro_usd,
        n * (n + 1) / 2,
        "every user's spend is in the total"
    );
    let tracked: u64 = l.users.values().map(|s| s.micro_usd).sum();
    assert_eq!(tracked + l.other_users.micro_usd, l.total.micro_usd);
    // A tracked user keeps being tracked.
    l.apply(
        "t",
        &report(
            "a",
            2,
            vec![entry("t", D1, Some("user-0000"), spend(1_000_000, 0, 0))],
        ),
        D1,
        2,
    );
    assert_eq!(
        l.top_users(2)[0],
        (
            "user-0000",
            Spend {
                micro_usd: 1_000_001,
                requests: 2,
                ..Spend::default()
            }
        )
    );
    assert_eq!(l.top_users(2)[1].0, "user-0499");
}

#[test]
fn quiet_reporters_are_forgotten_after_the_ttl_only() {
    let mut l = BudgetLedger::new(D1);
    l.apply("t", &report("old", 1, vec![]), D1, 100);
    l.apply("t", &report("new", 1, vec![]), D1, 100 + REPORTER_TTL_SECS);
    assert_eq!(l.prune_reporters(100 + REPORTER_TTL_SECS), 1);
    assert!(l.reporters.contains_key("new") && !l.reporters.contains_key("old"));
    assert_eq!(l.prune_reporters(100 + REPORTER_TTL_SECS), 0);
}

#[test]
fn the_wire_format_is_camel_case_with_spend_flattened() {
    let r = report(
        "uid/nonce",
        3,
        vec![entry("team", D1, Some("bob"), spend(1, 2, 3))],
    );
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"reporter": "uid/nonce", "seq": 3, "entries": [{
            "budget": "team", "periodStart": D1, "user": "bob",
            "microUsd": 1, "inputTokens": 2, "outputTokens": 3, "requests": 1
        }]})
    );
    assert_eq!(serde_json::from_value::<UsageReport>(json).unwrap(), r);
}

#[test]
fn an_outbox_resends_the_same_report_until_acknowledged() {
    let mut out = Outbox::new("pod-a/n1");
    assert!(
        out.to_send().is_none() && out.is_empty(),
        "nothing to report"
    );
    out.record("team", D1, None, spend(100, 1, 2));
    out.record("team", D1, None, spend(50, 1, 1));
    out.record("per-user", D1, Some("bob"), spend(7, 0, 1));
    let first = out.to_send().cloned().unwrap();
    assert_eq!(first.seq, 1);
    assert_eq!(
        first.entries,
        vec![
            entry("per-user", D1, Some("bob"), spend(7, 0, 1)),
            entry(
                "team",
                D1,
                None,
                Spend {
                    micro_usd: 150,
                    input_tokens: 2,
                    output_tokens: 3,
                    requests: 2
                }
            ),
        ]
    );
    // Spend recorded while report 1 is unacknowledged waits for report 2.
    out.record("team", D1, None, spend(1, 0, 0));
    assert_eq!(out.to_send(), Some(&first), "a resend is the same report");
    assert!(!out.ack(2), "a wrong number acknowledges nothing");
    assert!(out.ack(1));
    assert!(!out.ack(1), "acknowledged once");
    let second = out.to_send().cloned().unwrap();
    assert_eq!(
        (second.seq, second.entries.clone()),
        (2, vec![entry("team", D1, None, spend(1, 0, 0))])
    );
    assert!(out.ack(2) && out.is_empty() && out.to_send().is_none());
}

#[test]
fn an_outbox_and_a_ledger_count_every_micro_dollar_once_through_lost_acks() {
    // Two sidecars, each losing every other acknowledgement; the ledger sees every report at
    // least twice, and counts exactly what was recorded.
    let mut ledger = BudgetLedger::new(D1);
    let mut boxes = [Outbox::new("a"), Outbox::new("b")];
    let mut recorded = 0u64;
    for round in 0..50u64 {
        for (i, out) in boxes.iter_mut().enumerate() {
            let cost = round * 7 + i as u64;
            out.record("t", D1, None, spend(cost, 0, 0));
            recorded += cost;
            let report = out.to_send().cloned().unwrap();
            ledger.apply("t", &report, D1, round);
            ledger.apply("t", &report, D1, round); // a resend that reached another replica
            if round % 2 == 0 {
                out.ack(report.seq);
            }
        }
    }
    for out in &mut boxes {
        while let Some(report) = out.to_send().cloned() {
            ledger.apply("t", &report, D1, 99);
            out.ack(report.seq);
        }
    }
    assert_eq!(ledger.total.micro_usd, recorded);
    assert_eq!(ledger.total.requests, 100);
}

#[test]
fn an_outbox_bounds_its_user_keys_without_losing_spend() {
    let mut out = Outbox::new("a");
    for i in 0..MAX_PENDING_KEYS + 5 {
        out.record("t", D1, Some(&format!("u{i}")), spend(1, 0, 0));
    }
    out.record("t", D1, Some("u0"), spend(1, 0, 0)); // a known key keeps its own entry
    let report = out.to_send().unwrap();
    assert_eq!(report.entries.len(), MAX_PENDING_KEYS + 1);
    let other = report
        .entries
        .iter()
        .find(|e| e.user.as_deref() == Some(OTHER_USERS))
        .unwrap();
    assert_eq!(other.spend.micro_usd, 5);
    let total: u64 = report.entries.iter().map(|e| e.spend.micro_usd).sum();
    assert_eq!(total, MAX_PENDING_KEYS as u64 + 6);
}

#[test]
fn spend_a_sidecar_could_not_split_by_user_lands_with_the_other_users() {
    let mut l = BudgetLedger::new(D1);
    l.apply(
        "t",
        &report(
            "a",
            1,
            vec![entry("t", D1, Some(OTHER_USERS), spend(9, 0, 0))],
        ),
        D1,
        1,
    );
    assert!(l.users.is_empty());
    assert_eq!((l.other_users.micro_usd, l.total.micro_usd), (9, 9));
}

#[test]
fn a_pods_new_process_retires_its_earlier_ones_so_reporters_stay_one_per_pod() {
    let mut l = BudgetLedger::new(D1);
    let one =
        |reporter: &str, seq| report(reporter, seq, vec![entry("b", D1, None, spend(1, 0, 0))]);
    assert_eq!(l.apply("b", &one("pod-a/n1", 1), D1, 1), Applied::Counted);
    assert_eq!(l.apply("b", &one("pod-b/n1", 1), D1, 1), Applied::Counted);
    // pod-a's sidecar restarted (a new nonce): its old process is forgotten, pod-b's is not.
    assert_eq!(l.apply("b", &one("pod-a/n2", 1), D1, 2), Applied::Counted);
    let names: Vec<&str> = l.reporters.keys().map(String::as_str).collect();
    assert_eq!(names, ["pod-a/n2", "pod-b/n1"]);
    // A thousand made-up nonces from one pod leave one reporter for it.
    for i in 0..1000 {
        l.apply("b", &one(&format!("pod-c/x{i}"), 1), D1, 3);
    }
    assert_eq!(l.reporters.len(), 3);
    assert_eq!(l.total.micro_usd, 1003);
    // Its current process's resend is still recognised.
    assert_eq!(
        l.apply("b", &one("pod-c/x999", 1), D1, 4),
        Applied::Duplicate
    );
}

#[test]
fn process_nonces_are_short_plain_words() {
    assert!(valid_nonce("0123456789abcdef"));
    assert!(valid_nonce("cpbench-7"));
    for bad in ["", "a/b", "a b", "ü", &"x".repeat(MAX_NONCE_LEN + 1)] {
        assert!(!valid_nonce(bad), "{bad:?}");
    }
}
