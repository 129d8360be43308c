//! One pod's snapshot: the served routes of its namespace that select it, the namespace's
//! enforced budgets, assembled and encoded once per distinct set and shared after that.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use llmesh_api::compile::assemble;
use llmesh_api::snapshot::{Budget, Route};

use super::state::{AssemblyKey, State};
use super::{Content, Published};
use crate::metrics::Metrics;
use crate::selector;

/// The label keys the route selectors of each namespace read: which routes select a pod
/// depends on its namespace and its values for these keys only.
pub(super) fn selector_keys(st: &State) -> HashMap<String, BTreeSet<String>> {
    let mut keys: HashMap<String, BTreeSet<String>> = HashMap::new();
    for ((ns, _), e) in &st.routes {
        if !keys.contains_key(ns) {
            keys.insert(ns.clone(), BTreeSet::new());
        }
        if let Some(s) = &e.selector {
            let k = keys.get_mut(ns).expect("inserted above");
            k.extend(s.match_labels.keys().cloned());
            k.extend(s.match_expressions.iter().map(|r| r.key.clone()));
        }
    }
    keys
}

/// A namespace and the labels its selectors read: pods in the same group get the same snapshot.
pub(super) type PodGroup = (String, Vec<(String, String)>);

/// The labels of a pod that decide its routes (see [`selector_keys`]): pods equal in these, in
/// the same namespace, get the same snapshot.
pub(super) fn relevant_labels(
    labels: &BTreeMap<String, String>,
    keys: Option<&BTreeSet<String>>,
) -> Vec<(String, String)> {
    let Some(keys) = keys else {
        return Vec::new();
    };
    labels
        .iter()
        .filter(|(k, _)| keys.contains(*k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The snapshot for a pod in `ns` with `labels`, from the cache when another pod runs the same.
pub(super) fn for_pod(
    st: &mut State,
    metrics: &Metrics,
    ns: &str,
    labels: &BTreeMap<String, String>,
) -> Arc<Published> {
    let routes: Vec<(&super::Key, &Arc<Route>, u64)> = st
        .routes_in(ns)
        .filter(|(_, e)| selector::matches(e.selector.as_ref(), labels))
        .filter_map(|(k, e)| e.served().map(|r| (k, r, e.seq)))
        .collect();
    let budgets: Vec<(&Arc<Budget>, u64)> = st
        .budgets_in(ns)
        .filter_map(|(_, b)| b.served().map(|c| (c, b.seq)))
        .collect();
    let key: AssemblyKey = (
        ns.to_string(),
        routes.iter().map(|(_, _, s)| *s).collect(),
        budgets.iter().map(|(_, s)| *s).collect(),
    );
    if let Some(p) = st.assembled.get(&key) {
        return p.clone();
    }
    let route_keys: Vec<(super::Key, u64)> =
        routes.iter().map(|(k, _, s)| ((*k).clone(), *s)).collect();
    let served: Vec<Arc<Route>> = routes.iter().map(|(_, r, _)| Arc::clone(r)).collect();
    let mut served_budgets: Vec<Arc<Budget>> = budgets.iter().map(|(b, _)| Arc::clone(b)).collect();
    // One copy of the routes, not two: at 1,000 routes each copy is megabytes, made per encode.
    let route_values =
        || -> Vec<Route> { routes.iter().map(|(_, r, _)| Route::clone(r)).collect() };
    let budget_values: Vec<Budget> = budgets.iter().map(|(b, _)| Budget::clone(b)).collect();
    let snapshot = match assemble(route_values(), budget_values) {
        Ok(s) => s,
        Err(e) => {
            // Conflicts and budget references are checked before this point, so this is a
            // bug; serving the routes without budgets beats serving nothing.
            tracing::error!(namespace = ns, error = %e, "snapshot assembly failed; serving routes without budgets");
            served_budgets.clear();
            assemble(route_values(), Vec::new()).unwrap_or_default()
        }
    };
    // The namespace's last snapshot is about this one's size: encode into a buffer of that
    // size rather than one that doubles its way there.
    let hint = st
        .assembled
        .iter()
        .filter(|(k, _)| k.0 == ns)
        .map(|(_, p)| p.body.len())
        .max()
        .unwrap_or(0);
    let body = super::encode(&snapshot, hint);
    metrics.snapshots_encoded.inc();
    let content = Arc::new(Content {
        version: snapshot.version.clone(),
        namespace: ns.to_string(),
        routes: served,
        budgets: served_budgets,
    });
    st.remember(content.clone());
    let published = Arc::new(Published::new(content, body, route_keys));
    st.assembled.insert(key, published.clone());
    published
}
