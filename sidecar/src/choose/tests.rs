use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use llmesh_api::manifest::{self, LocalSecrets};

use super::*;
use crate::metrics::Metrics;
use crate::providers::mock::MockTransport;
use crate::runtime::{self, Carry};
use crate::tokens::PromptFacts;
use crate::transport::{Transport, TransportFactory};

/// Compiles one route (`spec` as YAML) with the real compiler and makes it servable.
fn route(spec: &str) -> RouteState {
    let spec: String = spec.lines().map(|l| format!("  {l}\n")).collect();
    let yaml = format!(
        "apiVersion: llmesh.io/v1alpha1\nkind: LLMRoute\nmetadata:\n  name: chat\nspec:\n{spec}"
    );
    let manifests = manifest::parse("test.yaml", &yaml, false).unwrap();
    let secrets = LocalSecrets::new(&manifests, []);
    let (snapshot, _) = manifest::compile("test.yaml", &manifests, &secrets).unwrap();
    let transports: TransportFactory = Arc::new(|b| MockTransport::new(b) as Arc<dyn Transport>);
    let mut rt = runtime::build(
        &snapshot,
        &mut Carry::default(),
        &transports,
        &Metrics::new(),
        Instant::now(),
    );
    rt.routes.remove(0)
}

/// A backend line for provider `mock` (no key needed), with extra fields.
fn b(name: &str, extra: &str) -> String {
    format!("  - {{name: {name}, provider: mock, model: m-{name}{extra}}}\n")
}

fn facts(tokens: u32) -> Facts<'static> {
    Facts {
        prompt: PromptFacts {
            tokens,
            complexity: Complexity::Simple,
        },
        op: Some(Op::Chat),
        ..Facts::default()
    }
}

fn first(r: &RouteState, f: &Facts<'_>) -> String {
    let p = plan(r, f, Instant::now(), None);
    r.backends[p.order[0]].spec.name.clone()
}

#[test]
fn the_user_hash_is_stable_across_versions() {
    // Sidecars of different versions must agree on every user's variant: pin the hash
    // (FNV-1a over `user 0xff backend`, then splitmix64's finaliser, computed independently).
    assert_eq!(stable_hash("alice", "a"), 0x2dc2_9271_d3e9_914b);
    assert_eq!(stable_hash("alice", "b"), 0x513b_8d8a_edfb_5f4e);
    assert_ne!(stable_hash("alice", "a"), stable_hash("alicea", ""));
}

#[test]
fn weighted_draws_follow_the_weights_and_skip_weight_zero() {
    fastrand::seed(3);
    let r = route(&format!(
        "backends:\n{}{}{}{}{}",
        b("a", ", weight: 10"),
        b("b", ", weight: 20"),
        b("c", ", weight: 70"),
        b("spare", ", weight: 0"),
        b("spare2", ", weight: 0"),
    ));
    let all = [0, 1, 2, 3, 4];
    let mut n = [0usize; 5];
    for _ in 0..20_000 {
        n[weighted(&r, &all, None)] += 1;
    }
    assert_eq!(n[3] + n[4], 0, "weight 0 is fallback only");
    for (i, share) in [(0, 0.10), (1, 0.20), (2, 0.70)] {
        let got = n[i] as f64 / 20_000.0;
        assert!((got - share).abs() < 0.015, "backend {i}: {got}");
    }
    // Among backends that all have weight 0 (a rule's set), each counts equally.
    let mut n = [0usize; 5];
    for _ in 0..4_000 {
        n[weighted(&r, &[3, 4], None)] += 1;
    }
    assert_eq!(n[3] + n[4], 4_000);
    assert!((1_800..=2_200).contains(&n[3]), "{n:?}");
}

#[test]
fn a_user_key_always_gets_the_same_backend() {
    let r = route(&format!(
        "backends:\n{}{}",
        b("a", ", weight: 1"),
        b("b", ", weight: 1")
    ));
    let mut on_a = 0;
    for u in 0..1_000 {
        let user = format!("u{u}");
        let pick = weighted(&r, &[0, 1], Some(&user));
        for _ in 0..3 {
            assert_eq!(weighted(&r, &[0, 1], Some(&user)), pick);
        }
        on_a += usize::from(pick == 0);
    }
    assert!((430..=570).contains(&on_a), "{on_a}");
}

#[test]
fn the_plan_is_the_choice_then_the_fallbacks_in_order() {
    let r = route(&format!(
        "backends:\n{}{}{}fallbacks: [c, a]\n",
        b("a", ""),
        b("b", ""),
        b("c", "")
    ));
    let p = plan(&r, &facts(10), Instant::now(), None);
    assert_eq!(
        p.order,
        [0, 2],
        "a first (no weights), then c; a is not repeated"
    );
    let forced = plan(&r, &facts(10), Instant::now(), Some(1));
    assert_eq!(
        forced,
        Plan {
            order: vec![1],
            rule: None
        }
    );
    let r = route(&format!(
        "backends:\n{}{}fallbacks: []\n",
        b("a", ""),
        b("b", "")
    ));
    assert_eq!(plan(&r, &facts(10), Instant::now(), None).order, [0]);
}

#[test]
fn latency_tries_unmeasured_backends_then_the_lowest_average_among_healthy_ones() {
    let r = route(&format!(
        "strategy: latency\nbackends:\n{}{}{}",
        b("a", ""),
        b("b", ""),
        b("c", "")
    ));
    r.backends[0].observe_latency(Duration::from_millis(300));
    assert_eq!(first(&r, &facts(10)), "b", "b is unmeasured");
    r.backends[1].observe_latency(Duration::from_millis(100));
    r.backends[2].observe_latency(Duration::from_millis(200));
    assert_eq!(first(&r, &facts(10)), "b");
    // A failure counts as a very slow answer.
    r.backends[1].observe_failure();
    assert_eq!(first(&r, &facts(10)), "c");
    // An open circuit is skipped.
    r.backends[2]
        .breaker
        .open_until(Instant::now() + Duration::from_secs(60));
    assert_eq!(first(&r, &facts(10)), "a");
    // With nothing healthy, every backend stays eligible so a probe can go out.
    r.backends[0]
        .breaker
        .open_until(Instant::now() + Duration::from_secs(60));
    r.backends[1]
        .breaker
        .open_until(Instant::now() + Duration::from_secs(60));
    assert_eq!(first(&r, &facts(10)), "c");
}

#[test]
fn the_latency_average_weighs_new_samples_by_a_quarter() {
    let r = route(&format!("backends:\n{}", b("a", "")));
    let a = &r.backends[0];
    a.observe_latency(Duration::from_millis(100));
    assert_eq!(a.ewma(), 100_000);
    a.observe_latency(Duration::from_millis(500));
    assert_eq!(a.ewma(), 75_000 + 125_000);
}

#[test]
fn least_busy_picks_the_fewest_in_flight() {
    let r = route(&format!(
        "strategy: leastBusy\nbackends:\n{}{}{}",
        b("a", ""),
        b("b", ""),
        b("c", "")
    ));
    assert_eq!(first(&r, &facts(10)), "a", "ties go to the first");
    let _a = r.backends[0].enter();
    assert_eq!(first(&r, &facts(10)), "b");
    let _b1 = r.backends[1].enter();
    let _b2 = r.backends[1].enter();
    assert_eq!(first(&r, &facts(10)), "c");
    let _c = r.backends[2].enter();
    assert_eq!(first(&r, &facts(10)), "a");
    drop(_b1);
    drop(_b2);
    assert_eq!(r.backends[1].in_flight.load(Ordering::Relaxed), 0);
    assert_eq!(first(&r, &facts(10)), "b");
}

const PRICED: &str = r#"backends:
  - {name: cheap, provider: mock, model: m1, contextWindow: 1000, prices: {input: "0.10", output: "0.40"}}
  - {name: mid, provider: mock, model: m2, contextWindow: 32000, prices: {input: "1.00", output: "4.00"}}
  - {name: premium, provider: mock, model: m3, contextWindow: 200000, prices: {input: "3.00", output: "15.00"}}
"#;

#[test]
fn cost_picks_the_cheapest_backend_whose_window_fits_prompt_and_output() {
    let r = route(&format!("strategy: cost\n{PRICED}"));
    assert_eq!(first(&r, &facts(100)), "cheap");
    assert_eq!(first(&r, &facts(2_000)), "mid");
    let mut f = facts(500);
    f.max_tokens = Some(600);
    assert_eq!(first(&r, &f), "mid", "500 + 600 > 1000");
    assert_eq!(first(&r, &facts(50_000)), "premium");
    r.backends[0]
        .breaker
        .open_until(Instant::now() + Duration::from_secs(5));
    assert_eq!(first(&r, &facts(100)), "mid");
}

#[test]
fn cost_compares_what_this_request_would_cost() {
    // Cheap input but dear output loses when the request asks for a long answer.
    let r = route(
        r#"strategy: cost
backends:
  - {name: readers, provider: mock, model: m1, prices: {input: "0.10", output: "20.00"}}
  - {name: writers, provider: mock, model: m2, prices: {input: "2.00", output: "2.00"}}
"#,
    );
    let mut short = facts(10_000);
    short.max_tokens = Some(10);
    assert_eq!(first(&r, &short), "readers");
    let mut long = facts(100);
    long.max_tokens = Some(4_000);
    assert_eq!(first(&r, &long), "writers");
}

#[test]
fn hybrid_filters_by_price_and_latency_then_ranks() {
    let r = route(&format!(
        "strategy: hybrid\nhybrid: {{maxCostPerMillionTokens: \"3.00\", maxLatency: 1s, rankBy: latency}}\n{PRICED}"
    ));
    // premium's blended price (9.00) is over the cap; mid (2.50) and cheap (0.25) pass.
    r.backends[2].observe_latency(Duration::from_millis(10));
    r.backends[0].observe_latency(Duration::from_millis(400));
    r.backends[1].observe_latency(Duration::from_millis(300));
    assert_eq!(first(&r, &facts(10)), "mid");
    // Over maxLatency: filtered out.
    r.backends[1].observe_latency(Duration::from_secs(10));
    r.backends[1].observe_latency(Duration::from_secs(10));
    assert_eq!(first(&r, &facts(10)), "cheap");
    // When the filters leave nothing, every healthy backend competes.
    r.backends[0].observe_latency(Duration::from_secs(30));
    r.backends[0].observe_latency(Duration::from_secs(30));
    assert_eq!(first(&r, &facts(10)), "premium");

    let r = route(&format!(
        "strategy: hybrid\nhybrid: {{maxCostPerMillionTokens: \"3.00\", rankBy: cost}}\n{PRICED}"
    ));
    assert_eq!(first(&r, &facts(10)), "cheap");
    assert_eq!(first(&r, &facts(5_000)), "mid");
}

#[test]
fn rules_match_in_order_and_fall_back_to_the_weighted_split() {
    let r = route(&format!(
        r#"strategy: rules
rules:
  - name: code
    match: {{tasks: [code]}}
    backends: [coder]
  - name: big-and-hard
    match: {{minPromptTokens: 500, complexity: complex}}
    backends: [big]
  - name: tiny
    match: {{maxPromptTokens: 20}}
    backends: [small]
backends:
{}{}{}{}"#,
        b("default", ", weight: 1"),
        b("coder", ", weight: 0"),
        b("big", ", weight: 0"),
        b("small", ", weight: 0"),
    ));
    let check = |f: Facts<'_>, backend: &str, rule: Option<&str>| {
        let p = plan(&r, &f, Instant::now(), None);
        assert_eq!(r.backends[p.order[0]].spec.name, backend);
        assert_eq!(p.rule.map(|i| r.spec.rules[i].name.as_str()), rule);
    };
    let mut f = facts(10_000);
    f.task = Some("code");
    check(f, "coder", Some("code"));
    let mut f = facts(600);
    f.prompt.complexity = Complexity::Complex;
    check(f, "big", Some("big-and-hard"));
    check(facts(600), "default", None);
    check(facts(20), "small", Some("tiny"));
    check(facts(21), "default", None);
    let mut f = facts(10);
    f.task = Some("chat");
    check(f, "small", Some("tiny"));
}
