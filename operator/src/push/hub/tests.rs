//! The fan-out decisions without a cluster: which routes a pod gets, that identical route sets
//! share one encoded snapshot, and how rollouts are counted.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use llmesh_api::compile::{SecretSource, compile_route};
use llmesh_api::route::{LLMRouteSpec, SecretKeyRef};
use tokio::sync::watch;

use super::assemble::for_pod;
use super::state::{PodEntry, RouteEntry, State};
use crate::decisions::outcome::route_outcome;
use crate::metrics::Metrics;

struct NoSecrets;

impl SecretSource for NoSecrets {
    fn get(&self, _: &str, r: &SecretKeyRef) -> Result<String, String> {
        Err(format!("no Secret {}", r.name))
    }
}

fn add_route(st: &mut State, ns: &str, name: &str, yaml: &str) {
    let spec: LLMRouteSpec = serde_saphyr::from_str(yaml).unwrap();
    let (base, route) = route_outcome(name, 1, &spec, compile_route(ns, name, &spec, &NoSecrets));
    st.seq += 1;
    st.routes.insert(
        (ns.into(), name.into()),
        RouteEntry {
            uid: format!("uid-{name}"),
            generation: 1,
            refs: Vec::new(),
            created: "2025-01-01T00:00:00Z".into(),
            selector: spec.pod_selector.clone(),
            base,
            conflict: None,
            route: route.map(Arc::new),
            seq: st.seq,
        },
    );
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

const CHAT: &str = "backends: [{name: a, provider: mock, model: m}]";
const WEB_ONLY: &str = "
model: web-only
podSelector: {matchLabels: {app: web}}
backends: [{name: a, provider: mock, model: m}]
";

#[test]
fn a_pod_gets_the_served_routes_of_its_namespace_that_select_it() {
    let mut st = State::default();
    let m = Metrics::new();
    add_route(&mut st, "team", "chat", CHAT);
    add_route(&mut st, "team", "web-only", WEB_ONLY);
    add_route(&mut st, "other", "elsewhere", CHAT);
    add_route(
        &mut st,
        "team",
        "broken",
        "backends: [{name: a, provider: openai, model: gpt-4o-2024-08-06, secretRef: {name: missing, key: k}}]",
    );

    let web = for_pod(&mut st, &m, "team", &labels(&[("app", "web")]));
    let names: Vec<&str> = web.routes.iter().map(|((_, n), _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["chat", "web-only"],
        "broken is not served; other namespaces never"
    );
    let body = String::from_utf8(web.body.to_vec()).unwrap();
    assert!(!body.contains("elsewhere") && !body.contains("broken"));

    let api = for_pod(&mut st, &m, "team", &labels(&[("app", "api")]));
    let names: Vec<&str> = api.routes.iter().map(|((_, n), _)| n.as_str()).collect();
    assert_eq!(names, ["chat"]);
    assert_ne!(web.version, api.version);
}

#[test]
fn pods_running_the_same_routes_share_one_encoded_snapshot() {
    let mut st = State::default();
    let m = Metrics::new();
    add_route(&mut st, "team", "chat", CHAT);
    let first = for_pod(&mut st, &m, "team", &labels(&[("app", "x"), ("pod", "0")]));
    for i in 1..1000 {
        let p = for_pod(
            &mut st,
            &m,
            "team",
            &labels(&[("app", "x"), ("pod", &i.to_string())]),
        );
        assert!(Arc::ptr_eq(&first, &p));
    }
    assert_eq!(m.snapshots_encoded.get(), 1, "1,000 pods, one encoding");

    // A recompiled route is a new set: encoded once more, then shared again.
    add_route(
        &mut st,
        "team",
        "chat",
        &CHAT.replace("model: m", "model: m2"),
    );
    let after = for_pod(&mut st, &m, "team", &labels(&[("app", "x")]));
    assert_ne!(after.version, first.version);
    let again = for_pod(&mut st, &m, "team", &labels(&[("app", "y")]));
    assert!(Arc::ptr_eq(&after, &again));
    assert_eq!(m.snapshots_encoded.get(), 2);
}

#[test]
fn equal_content_has_equal_versions_on_every_replica() {
    let m = Metrics::new();
    let mut a = State::default();
    add_route(&mut a, "team", "chat", CHAT);
    // Another replica, another history.
    let mut b = State {
        seq: 41,
        ..State::default()
    };
    add_route(&mut b, "team", "chat", CHAT);
    let pa = for_pod(&mut a, &m, "team", &labels(&[]));
    let pb = for_pod(&mut b, &m, "team", &labels(&[]));
    assert_eq!(pa.version, pb.version);
    assert_eq!(pa.body, pb.body);
}

fn connect(st: &mut State, uid: &str, published: Arc<super::Published>, serving: &str, polls: u32) {
    st.pods.insert(
        uid.into(),
        PodEntry {
            namespace: "team".into(),
            name: uid.into(),
            tx: watch::channel(Some(published)).0,
            previous: None,
            serving: serving.into(),
            polls,
            last_seen: Instant::now(),
        },
    );
}

#[test]
fn rollouts_count_connected_sidecars_and_those_serving_the_latest() {
    let mut st = State::default();
    let m = Metrics::new();
    add_route(&mut st, "team", "chat", CHAT);
    let p = for_pod(&mut st, &m, "team", &labels(&[]));
    connect(&mut st, "a", p.clone(), &p.version, 1);
    connect(&mut st, "b", p.clone(), "old-version", 1);
    let changed = st.recount(Instant::now(), Duration::from_secs(10));
    let key = ("team".to_string(), "chat".to_string());
    assert!(changed.contains(&key));
    let r = st.rollouts[&key];
    assert_eq!((r.ready, r.total), (1, 2));
    // Nothing moved: no trigger.
    assert!(
        st.recount(Instant::now(), Duration::from_secs(10))
            .is_empty()
    );
    // A sidecar gone quiet past the grace no longer counts.
    st.pods.get_mut("b").unwrap().polls = 0;
    st.pods.get_mut("b").unwrap().last_seen = Instant::now() - Duration::from_secs(60);
    st.recount(Instant::now(), Duration::from_secs(10));
    let r = st.rollouts[&key];
    assert_eq!((r.ready, r.total), (1, 1));
}

#[test]
fn a_sidecar_fetching_an_edit_of_one_route_still_serves_the_others() {
    let mut st = State::default();
    let m = Metrics::new();
    let grace = Duration::from_secs(10);
    add_route(&mut st, "team", "chat", CHAT);
    add_route(
        &mut st,
        "team",
        "other",
        &CHAT.replace("model: m", "model: o"),
    );
    let before = for_pod(&mut st, &m, "team", &labels(&[]));
    for i in 0..1000 {
        connect(
            &mut st,
            &format!("pod-{i}"),
            before.clone(),
            &before.version,
            1,
        );
    }
    st.recount(Instant::now(), grace);
    let chat = ("team".to_string(), "chat".to_string());
    let other = ("team".to_string(), "other".to_string());
    assert_eq!(st.rollouts[&chat].ready, 1000);

    // `chat` is edited: every pod gets a new snapshot; none has fetched it yet.
    add_route(
        &mut st,
        "team",
        "chat",
        &CHAT.replace("model: m", "model: m2"),
    );
    let after = for_pod(&mut st, &m, "team", &labels(&[]));
    assert_ne!(after.version, before.version);
    for p in st.pods.values_mut() {
        p.publish(after.clone());
    }
    let changed = st.recount(Instant::now(), grace);
    assert!(
        changed.len() == 1 && changed.contains(&chat),
        "only the edited route's rollout moves, so only its status is written: {changed:?}"
    );
    let r = st.rollouts[&chat];
    assert_eq!((r.ready, r.total), (0, 1000));
    let r = st.rollouts[&other];
    assert_eq!((r.ready, r.total), (1000, 1000));

    // Half the sidecars have it.
    for i in 0..500 {
        st.pods.get_mut(&format!("pod-{i}")).unwrap().serving = after.version.clone();
    }
    st.recount(Instant::now(), grace);
    assert_eq!(st.rollouts[&chat].ready, 500);
    assert_eq!(st.rollouts[&other].ready, 1000);

    // Publishing the same version again changes nothing; a sidecar serving something the hub
    // no longer knows serves nothing.
    let p = st.pods.get_mut("pod-999").unwrap();
    p.publish(after.clone());
    assert_eq!(p.previous.as_ref().unwrap().version, before.version);
    p.serving = "gone".into();
    st.recount(Instant::now(), grace);
    let (c, o) = (st.rollouts[&chat], st.rollouts[&other]);
    assert_eq!((c.ready, c.total, o.ready, o.total), (500, 1000, 999, 1000));
}

#[test]
fn only_the_labels_selectors_read_tell_pods_apart() {
    let mut st = State::default();
    let m = Metrics::new();
    add_route(&mut st, "team", "chat", CHAT);
    add_route(&mut st, "team", "web-only", WEB_ONLY);
    add_route(
        &mut st,
        "team",
        "canary",
        "
model: canary
podSelector: {matchExpressions: [{key: track, operator: Exists}]}
backends: [{name: a, provider: mock, model: m}]
",
    );
    add_route(&mut st, "quiet", "chat", CHAT);
    let keys = super::assemble::selector_keys(&st);
    let team: Vec<&str> = keys["team"].iter().map(String::as_str).collect();
    assert_eq!(team, ["app", "track"]);
    assert!(keys["quiet"].is_empty());

    // StatefulSet-style pods: a unique label each, which no selector reads.
    let pod = |name: &str, extra: &[(&str, &str)]| {
        let mut l = labels(&[("app", "web"), ("statefulset.kubernetes.io/pod-name", name)]);
        l.extend(labels(extra));
        l
    };
    let (a, b) = (pod("web-0", &[]), pod("web-1", &[]));
    let rel = |l| super::assemble::relevant_labels(l, keys.get("team"));
    assert_eq!(rel(&a), rel(&b));
    assert!(Arc::ptr_eq(
        &for_pod(&mut st, &m, "team", &a),
        &for_pod(&mut st, &m, "team", &b)
    ));
    // A label a selector reads does tell them apart, and so does the snapshot.
    let c = pod("web-2", &[("track", "canary")]);
    assert_ne!(rel(&a), rel(&c));
    assert_ne!(
        for_pod(&mut st, &m, "team", &a).version,
        for_pod(&mut st, &m, "team", &c).version
    );
    // Where no selector reads anything, every pod is alike.
    assert!(super::assemble::relevant_labels(&c, keys.get("quiet")).is_empty());
}

#[test]
fn an_edit_reaches_pods_as_a_delta_encoded_once_per_base() {
    let mut st = State::default();
    let m = Metrics::new();
    for i in 0..100 {
        add_route(
            &mut st,
            "team",
            &format!("r{i:03}"),
            &CHAT.replace("model: m", &format!("model: m{i}")),
        );
    }
    let before = for_pod(&mut st, &m, "team", &labels(&[]));
    add_route(
        &mut st,
        "team",
        "r042",
        &CHAT.replace("model: m", "model: edited"),
    );
    st.routes.remove(&("team".to_string(), "r007".to_string()));
    let after = for_pod(&mut st, &m, "team", &labels(&[]));

    let delta = after.delta_from(&before.content);
    for _ in 0..1000 {
        let again = after.delta_from(&before.content);
        assert_eq!(again.as_ptr(), delta.as_ptr(), "encoded once, shared");
    }
    let d: llmesh_api::SnapshotDelta = serde_json::from_slice(&delta).unwrap();
    assert_eq!(
        d.routes.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        ["r042"]
    );
    assert_eq!(d.removed.len(), 1);
    assert_eq!(d.removed[0].name, "r007");
    // What the sidecar builds from its snapshot and the delta is, byte for byte, what the
    // hub would have sent whole.
    let served: llmesh_api::Snapshot = serde_json::from_slice(&before.body).unwrap();
    let rebuilt = d.apply(&served).unwrap();
    assert_eq!(serde_json::to_vec(&rebuilt).unwrap(), after.body);
    assert!(
        delta.len() * 50 < after.body.len(),
        "delta {} bytes, whole {}",
        delta.len(),
        after.body.len()
    );
}

#[test]
fn a_delta_base_is_found_for_a_sidecar_a_few_snapshots_behind() {
    let mut st = State::default();
    let m = Metrics::new();
    let mut versions = Vec::new();
    for i in 0..70 {
        add_route(
            &mut st,
            "team",
            "chat",
            &CHAT.replace("model: m", &format!("model: m{i}")),
        );
        versions.push(for_pod(&mut st, &m, "team", &labels(&[])));
    }
    connect(&mut st, "a", versions[0].clone(), &versions[0].version, 1);
    // The pod's own snapshot, whatever came since.
    let base = st
        .base("a", &versions[0].version)
        .expect("the pod's current");
    assert!(Arc::ptr_eq(&base, &versions[0].content));
    // v60 was handed over while v61 came: the sidecar asks from v60, and the pod's
    // previous, v0, is still known too.
    let pod = st.pods.get_mut("a").unwrap();
    pod.publish(versions[60].clone());
    pod.publish(versions[61].clone());
    let base = st.base("a", &versions[60].version).expect("recent");
    assert!(Arc::ptr_eq(&base, &versions[60].content));
    assert!(st.base("a", &versions[0].version).is_some());
    // The last 64 assembled are kept, the ones before are not.
    assert!(st.base("a", &versions[6].version).is_some());
    assert!(st.base("a", &versions[5].version).is_none());
    assert!(st.base("a", "unknown").is_none());
    // Another namespace's snapshot is never a base for this pod, nor is any for a pod the hub
    // does not know.
    add_route(&mut st, "elsewhere", "chat", CHAT);
    let theirs = for_pod(&mut st, &m, "elsewhere", &labels(&[]));
    assert!(st.base("a", &theirs.version).is_none());
    connect(&mut st, "b", theirs.clone(), "", 1);
    st.pods.get_mut("b").unwrap().namespace = "elsewhere".into();
    assert!(st.base("b", &theirs.version).is_some());
    assert!(st.base("nobody", &versions[69].version).is_none());
}

#[test]
fn a_snapshot_encodes_to_the_same_json_whatever_size_was_expected() {
    let v = serde_json::json!({"routes": ["x".repeat(5000), "y".repeat(30)], "version": "v1"});
    let plain = serde_json::to_vec(&v).unwrap();
    for hint in [0, 10, plain.len() - 1, plain.len(), 10 * plain.len()] {
        assert_eq!(super::encode(&v, hint), plain, "hint {hint}");
    }
}
