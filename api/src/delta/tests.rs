use super::*;
use crate::compile::{SecretSource, assemble, compile_budget, compile_route};
use crate::route::{BackendSpec, LLMRouteSpec, ProviderKind, SecretKeyRef};
use crate::{BudgetLimit, LLMBudgetSpec};

struct NoKeys;
impl SecretSource for NoKeys {
    fn get(&self, _ns: &str, r: &SecretKeyRef) -> Result<String, String> {
        Err(format!("no secret {}", r.name))
    }
}

/// Route `name` in `ns` with a blue/green split of `blue` percent.
fn route(ns: &str, name: &str, blue: u32) -> Route {
    let backend = |n: &str, weight: u32| BackendSpec {
        name: n.into(),
        provider: ProviderKind::Mock,
        model: format!("m-{n}"),
        weight: Some(weight),
        ..Default::default()
    };
    let spec = LLMRouteSpec {
        backends: vec![backend("blue", blue), backend("green", 100 - blue)],
        ..Default::default()
    };
    compile_route(ns, name, &spec, &NoKeys).unwrap().route
}

fn budget(ns: &str, name: &str, tokens: u64) -> Budget {
    let spec = LLMBudgetSpec {
        limit: BudgetLimit {
            usd: None,
            tokens: Some(tokens),
        },
        ..Default::default()
    };
    compile_budget(ns, name, &spec).unwrap()
}

fn snapshot(routes: Vec<Route>, budgets: Vec<Budget>) -> Snapshot {
    assemble(routes, budgets).unwrap()
}

fn delta(a: &Snapshot, b: &Snapshot) -> SnapshotDelta {
    SnapshotDelta::between(
        (&a.version, &a.routes, &a.budgets),
        (&b.version, &b.routes, &b.budgets),
    )
}

fn names(d: &SnapshotDelta) -> Vec<String> {
    d.routes.iter().map(|r| r.name.clone()).collect()
}

#[test]
fn an_edit_of_one_route_carries_that_route_alone_and_rebuilds_the_snapshot_exactly() {
    let routes: Vec<Route> = (0..50)
        .map(|i| route("ns", &format!("r{i:02}"), 50))
        .collect();
    let a = snapshot(routes.clone(), vec![budget("ns", "b", 1000)]);
    let mut edited = routes;
    edited[7] = route("ns", "r07", 90);
    let b = snapshot(edited, vec![budget("ns", "b", 1000)]);
    let d = delta(&a, &b);
    assert_eq!(names(&d), ["r07"]);
    assert!(d.removed.is_empty());
    assert_eq!(d.budgets, None);
    assert_eq!(d.apply(&a).unwrap(), b);
    // On the wire it is a small fraction of the whole.
    let whole = serde_json::to_vec(&b).unwrap().len();
    let part = serde_json::to_vec(&d).unwrap().len();
    assert!(part * 20 < whole, "delta {part} bytes, snapshot {whole}");
}

#[test]
fn added_removed_and_budget_changes_all_arrive() {
    let a = snapshot(
        vec![
            route("ns", "a", 50),
            route("ns", "b", 50),
            route("ns", "c", 50),
        ],
        vec![budget("ns", "x", 1000)],
    );
    let b = snapshot(
        vec![
            route("ns", "a", 50),
            route("ns", "c", 10),
            route("ns", "d", 50),
        ],
        vec![budget("ns", "x", 2000), budget("ns", "y", 5)],
    );
    let d = delta(&a, &b);
    assert_eq!(names(&d), ["c", "d"]);
    assert_eq!(
        d.removed,
        [RouteName {
            namespace: "ns".into(),
            name: "b".into()
        }]
    );
    assert_eq!(d.budgets.as_ref().map(Vec::len), Some(2));
    // Through JSON, as the sidecar receives it.
    let wire: SnapshotDelta = serde_json::from_slice(&serde_json::to_vec(&d).unwrap()).unwrap();
    assert_eq!(wire.apply(&a).unwrap(), b);
    // Every budget gone is a change too.
    let c = snapshot(b.routes.clone(), Vec::new());
    let d = delta(&b, &c);
    assert_eq!(d.budgets, Some(Vec::new()));
    assert!(d.routes.is_empty() && d.removed.is_empty());
    assert_eq!(d.apply(&b).unwrap(), c);
}

#[test]
fn a_delta_for_another_base_or_with_altered_content_is_refused() {
    let a = snapshot(vec![route("ns", "a", 50)], Vec::new());
    let b = snapshot(vec![route("ns", "a", 70)], Vec::new());
    let c = snapshot(vec![route("ns", "a", 90)], Vec::new());
    let d = delta(&a, &b);
    assert_eq!(
        d.apply(&c),
        Err(DeltaError::OtherBase {
            delta: a.version.clone(),
            serving: c.version.clone()
        })
    );
    let mut altered = d.clone();
    altered.routes[0].backends[0].weight += 1;
    assert!(matches!(
        altered.apply(&a),
        Err(DeltaError::Mismatch { expected, .. }) if expected == b.version
    ));
    // A removal the operator did not send leaves content the version does not match.
    let mut lost = delta(&b, &snapshot(Vec::new(), Vec::new()));
    lost.removed.clear();
    assert!(matches!(lost.apply(&b), Err(DeltaError::Mismatch { .. })));
}

#[test]
fn random_edits_round_trip_and_send_only_what_changed() {
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let mut current: BTreeMap<String, u32> = BTreeMap::new();
    let mut budgets: Vec<Budget> = Vec::new();
    let build = |routes: &BTreeMap<String, u32>, budgets: &[Budget]| {
        let ns = |n: &String| if n.starts_with('a') { "alpha" } else { "beta" };
        snapshot(
            routes.iter().map(|(n, w)| route(ns(n), n, *w)).collect(),
            budgets.to_vec(),
        )
    };
    let mut served = build(&current, &budgets);
    for _ in 0..300 {
        let before = current.clone();
        for _ in 0..=next(4) {
            let name = format!("{}{}", ["a", "b"][next(2) as usize], next(30));
            match next(3) {
                0 => {
                    current.remove(&name);
                }
                _ => {
                    current.insert(name, next(101) as u32);
                }
            }
        }
        if next(10) == 0 {
            budgets = (0..next(3))
                .map(|i| budget("alpha", &format!("b{i}"), 1 + next(1000)))
                .collect();
        }
        let target = build(&current, &budgets);
        let d = delta(&served, &target);
        let expected_changes = current
            .iter()
            .filter(|(n, w)| before.get(*n) != Some(*w))
            .count();
        assert_eq!(d.routes.len(), expected_changes);
        assert_eq!(
            d.removed.len(),
            before.keys().filter(|n| !current.contains_key(*n)).count()
        );
        let wire: SnapshotDelta = serde_json::from_slice(&serde_json::to_vec(&d).unwrap()).unwrap();
        served = wire.apply(&served).unwrap();
        assert_eq!(served, target);
    }
}

#[test]
fn the_version_is_the_fnv_hash_of_the_whole_json_as_before() {
    let s = snapshot(
        vec![route("ns", "a", 50), route("ns", "b", 20)],
        vec![budget("ns", "x", 1000)],
    );
    let json = serde_json::to_vec(&(&s.routes, &s.budgets)).unwrap();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in json {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    assert_eq!(s.version, format!("{h:016x}"));
}
