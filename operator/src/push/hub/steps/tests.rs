//! Each recompute step on its own, without a cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::ObjectMeta;
use llmesh_api::compile::SecretSource;
use llmesh_api::route::SecretKeyRef;
use llmesh_api::{LLMBudget, LLMBudgetSpec, LLMRoute, LLMRouteSpec};
use tokio::sync::watch;

use super::secret_refs;
use crate::metrics::Metrics;
use crate::push::hub::state::{Key, PodEntry, State};

struct Keys;

impl SecretSource for Keys {
    fn get(&self, _: &str, r: &SecretKeyRef) -> Result<String, String> {
        if r.name == "present" {
            Ok("sk-test".into())
        } else {
            Err(format!("no Secret {}", r.name))
        }
    }
}

fn meta(ns: &str, name: &str, generation: i64, created: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(ns.into()),
        uid: Some(format!("uid-{ns}-{name}")),
        generation: Some(generation),
        creation_timestamp: Some(Time(created.parse().unwrap())),
        ..Default::default()
    }
}

fn route(ns: &str, name: &str, generation: i64, created: &str, yaml: &str) -> Arc<LLMRoute> {
    let spec: LLMRouteSpec = serde_saphyr::from_str(yaml).unwrap();
    let mut r = LLMRoute::new(name, spec);
    r.metadata = meta(ns, name, generation, created);
    Arc::new(r)
}

fn budget(ns: &str, name: &str, generation: i64, yaml: &str) -> Arc<LLMBudget> {
    let spec: LLMBudgetSpec = serde_saphyr::from_str(yaml).unwrap();
    let mut b = LLMBudget::new(name, spec);
    b.metadata = meta(ns, name, generation, "2025-01-01T00:00:00Z");
    Arc::new(b)
}

fn key(ns: &str, name: &str) -> Key {
    (ns.into(), name.into())
}

fn keys(list: &[(&str, &str)]) -> BTreeSet<Key> {
    list.iter().map(|(n, m)| key(n, m)).collect()
}

const OLD: &str = "2025-01-01T00:00:00Z";
const NEW: &str = "2025-02-01T00:00:00Z";
const MOCK: &str = "backends: [{name: a, provider: mock, model: m}]";
const SHARED: &str = "model: shared\nbackends: [{name: a, provider: mock, model: m}]";
const TWO_SECRETS: &str = "
backends:
- {name: a, provider: openai, model: gpt-4o-2024-08-06, secretRef: {name: present, key: k1}}
- {name: b, provider: openai, model: gpt-4o-2024-08-06, secretRef: {name: present, key: k2}}
- {name: c, provider: openai, model: gpt-4o-2024-08-06, secretRef: {name: absent, key: k}}
- {name: d, provider: openai, model: gpt-4o-2024-08-06, secretRef: {name: present, key: k1}}
";

/// Compiles `routes` into `st` the way a recompute does, with every Secret at version 1.
fn compile(st: &mut State, m: &Metrics, routes: &[Arc<LLMRoute>]) -> BTreeSet<Key> {
    let (_, refs) = secret_refs(routes, |_, name| (name == "present").then(|| "1".into()));
    st.compile_routes(routes, refs, &Keys, m)
}

#[test]
fn secret_refs_list_each_existing_secret_once_with_every_key_read() {
    let routes = [route("team", "chat", 1, OLD, TWO_SECRETS)];
    let (wanted, refs) = secret_refs(&routes, |_, name| (name == "present").then(|| "7".into()));
    assert_eq!(wanted.len(), 1, "the missing Secret is not fetched");
    assert_eq!(wanted[0].key, key("team", "present"));
    assert_eq!(wanted[0].resource_version, "7");
    assert_eq!(
        wanted[0]
            .keys
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        ["k1", "k2"]
    );
    assert_eq!(
        refs[&key("team", "chat")],
        vec![
            ("absent".to_string(), None),
            ("present".to_string(), Some("7".to_string()))
        ],
        "sorted, one entry per Secret; a missing one is noted as such"
    );
}

#[test]
fn routes_compile_once_per_generation_and_leave_when_deleted() {
    let mut st = State::default();
    let m = Metrics::new();
    let a = route("team", "a", 1, OLD, MOCK);
    let b = route("team", "b", 1, OLD, MOCK);
    let changed = compile(&mut st, &m, &[a.clone(), b.clone()]);
    assert_eq!(changed, keys(&[("team", "a"), ("team", "b")]));
    assert_eq!(m.route_compiles.get(), 2);

    assert!(compile(&mut st, &m, &[a.clone(), b.clone()]).is_empty());
    assert_eq!(
        m.route_compiles.get(),
        2,
        "unchanged routes are not recompiled"
    );

    let a2 = route("team", "a", 2, OLD, MOCK);
    assert_eq!(
        compile(&mut st, &m, &[a2.clone(), b]),
        keys(&[("team", "a")])
    );
    assert_eq!(m.route_compiles.get(), 3);
    assert_eq!(st.routes[&key("team", "a")].generation, 2);

    // b is deleted: it leaves the state and is reported, so its controller finds it gone.
    assert_eq!(compile(&mut st, &m, &[a2]), keys(&[("team", "b")]));
    assert_eq!(st.routes.len(), 1);
    assert_eq!(m.route_compiles.get(), 3);
}

#[test]
fn a_route_recompiles_when_a_secret_it_reads_changes() {
    let mut st = State::default();
    let m = Metrics::new();
    let r = [route("team", "chat", 1, OLD, TWO_SECRETS)];
    compile(&mut st, &m, &r);
    assert!(
        st.routes[&key("team", "chat")].served().is_none(),
        "a missing Secret keeps it out"
    );
    let (_, refs) = secret_refs(&r, |_, _| Some("2".into()));
    assert_eq!(
        st.compile_routes(&r, refs, &Keys, &m),
        keys(&[("team", "chat")])
    );
    assert_eq!(m.route_compiles.get(), 2);
}

#[test]
fn a_model_name_stays_with_the_oldest_route_of_its_namespace() {
    let mut st = State::default();
    let m = Metrics::new();
    let older = route("team", "older", 1, OLD, SHARED);
    let newer = route("team", "newer", 1, NEW, SHARED);
    let elsewhere = route("other", "same-model", 1, NEW, SHARED);
    compile(
        &mut st,
        &m,
        &[older.clone(), newer.clone(), elsewhere.clone()],
    );
    assert_eq!(st.resolve_model_conflicts(), keys(&[("team", "newer")]));
    assert!(st.routes[&key("team", "older")].served().is_some());
    assert!(st.routes[&key("other", "same-model")].served().is_some());
    let loser = &st.routes[&key("team", "newer")];
    assert!(loser.served().is_none());
    assert!(
        loser.outcome().conflict.unwrap().contains("team/older"),
        "the conflict names the route that keeps the model"
    );
    assert!(st.resolve_model_conflicts().is_empty(), "settled");

    // The older route goes: the newer one takes the name.
    compile(&mut st, &m, &[newer, elsewhere]);
    assert_eq!(st.resolve_model_conflicts(), keys(&[("team", "newer")]));
    assert!(st.routes[&key("team", "newer")].served().is_some());
}

#[test]
fn budgets_compile_per_generation_are_checked_against_routes_and_leave_when_deleted() {
    let mut st = State::default();
    let m = Metrics::new();
    compile(&mut st, &m, &[route("team", "chat", 1, OLD, MOCK)]);
    let cap = budget("team", "cap", 1, "limit: {usd: \"10\"}\n");
    let down = budget(
        "team",
        "down",
        1,
        "limit: {usd: \"10\"}\naction: downgrade\ndowngradeBackend: cheap\n",
    );
    let changed = st.compile_budgets(&[cap.clone(), down.clone()]);
    assert_eq!(changed, keys(&[("team", "cap"), ("team", "down")]));
    assert!(st.budgets[&key("team", "cap")].view().errors.is_empty());
    let errors = st.budgets[&key("team", "down")].view().errors;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].message.contains("cheap"), "{errors:?}");
    assert!(st.budgets[&key("team", "down")].served().is_none());

    assert!(st.compile_budgets(&[cap.clone(), down]).is_empty());
    assert_eq!(st.compile_budgets(&[cap]), keys(&[("team", "down")]));
    assert_eq!(st.budgets.len(), 1);
}

fn connect(st: &mut State, uid: &str, ns: &str, last_seen: Instant, polls: u32) {
    st.pods.insert(
        uid.into(),
        PodEntry {
            namespace: ns.into(),
            name: format!("pod-{uid}"),
            tx: watch::channel(None).0,
            previous: None,
            serving: String::new(),
            polls,
            last_seen,
        },
    );
}

#[test]
fn fan_out_shares_snapshots_wakes_only_changed_pods_and_forgets_gone_ones() {
    let mut st = State::default();
    let m = Metrics::new();
    compile(&mut st, &m, &[route("team", "chat", 1, OLD, MOCK)]);
    let start = Instant::now();
    let forget = Duration::from_secs(120);
    for uid in ["p1", "p2", "gone"] {
        connect(&mut st, uid, "team", start, 1);
    }
    connect(&mut st, "idle", "team", start, 0);
    // Five minutes on: the pods with a poll open are connected, the idle one is past forgetting.
    let now = start + Duration::from_secs(300);
    let labels = |uid: &str, _: &str, _: &str| -> Option<BTreeMap<String, String>> {
        (uid != "gone").then(|| BTreeMap::from([("app".to_string(), uid.to_string())]))
    };

    assert!(st.fan_out(&m, now, forget, labels));
    let mut uids: Vec<&String> = st.pods.keys().collect();
    uids.sort();
    assert_eq!(
        uids,
        ["p1", "p2"],
        "the pod gone from the store and the idle one are forgotten"
    );
    let snap = |st: &State, uid: &str| st.pods[uid].tx.borrow().clone().unwrap();
    assert!(
        Arc::ptr_eq(&snap(&st, "p1"), &snap(&st, "p2")),
        "labels no selector reads do not split pods: one snapshot for both"
    );

    assert!(
        !st.fan_out(&m, now, forget, labels),
        "nothing changed: nobody wakes"
    );
    assert_eq!(st.pods.len(), 2);

    compile(
        &mut st,
        &m,
        &[
            route("team", "chat", 1, OLD, MOCK),
            route("team", "more", 1, OLD, MOCK),
        ],
    );
    assert!(st.fan_out(&m, now, forget, labels));
    assert_eq!(snap(&st, "p1").routes.len(), 2);
}
