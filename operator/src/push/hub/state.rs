//! The hub's state: compiled routes and budgets, connected pods, shared encoded snapshots, and
//! the per-route rollout counts derived from them.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use llmesh_api::compile::FieldError;
use llmesh_api::route::LabelSelector;
use llmesh_api::snapshot::{Budget, Route};
use tokio::sync::watch;

use super::{Content, Published};
use crate::decisions::outcome::{self, Outcome};
use crate::decisions::status::{BudgetView, Rollout};

/// `(namespace, name)`.
pub type Key = (String, String);

/// `(namespace, compile sequence numbers of the routes, of the budgets)`: equal keys mean an
/// identical snapshot, so it is assembled and encoded once.
pub(super) type AssemblyKey = (String, Vec<u64>, Vec<u64>);

/// A route as last compiled.
pub(super) struct RouteEntry {
    pub uid: String,
    pub generation: i64,
    /// `(Secret name, resourceVersion)` it was compiled against; `None`: the Secret was missing.
    pub refs: Vec<(String, Option<String>)>,
    pub created: String,
    pub selector: Option<LabelSelector>,
    pub base: Outcome,
    pub conflict: Option<String>,
    pub route: Option<Arc<Route>>,
    pub seq: u64,
}

impl RouteEntry {
    /// The outcome with the namespace-wide conflict check applied.
    pub fn outcome(&self) -> Outcome {
        let mut o = self.base.clone();
        o.conflict = self.conflict.clone();
        o
    }

    /// The compiled route, if it compiled (conflict or not).
    pub fn compiled_ok(&self) -> Option<&Route> {
        self.route.as_deref()
    }

    /// The compiled route, if it goes into snapshots.
    pub fn served(&self) -> Option<&Arc<Route>> {
        self.route.as_ref().filter(|_| self.conflict.is_none())
    }
}

/// A budget as last compiled.
pub(super) struct BudgetEntry {
    pub uid: String,
    pub generation: i64,
    pub limit: Option<String>,
    pub compiled: Result<Arc<Budget>, Vec<FieldError>>,
    /// Problems against the namespace's served routes (a missing downgrade backend).
    pub route_errors: Vec<FieldError>,
    pub seq: u64,
}

impl BudgetEntry {
    pub fn view(&self) -> BudgetView {
        let mut errors = self.compiled.as_ref().err().cloned().unwrap_or_default();
        errors.extend(self.route_errors.iter().cloned());
        BudgetView {
            generation: self.generation,
            limit: self.limit.clone(),
            errors,
            uid: self.uid.clone(),
            budget: self.served().cloned(),
        }
    }

    /// The compiled budget, if it goes into snapshots.
    pub fn served(&self) -> Option<&Arc<Budget>> {
        self.compiled
            .as_ref()
            .ok()
            .filter(|_| self.route_errors.is_empty())
    }
}

/// A pod with a connected sidecar.
pub(super) struct PodEntry {
    pub namespace: String,
    pub name: String,
    pub tx: watch::Sender<Option<Arc<Published>>>,
    /// The snapshot sent before the one in `tx` that the sidecar serves, kept while it fetches
    /// the new one: the routes that did not change are still served at their latest compile.
    pub previous: Option<Arc<Published>>,
    /// The version the sidecar said it serves on its last poll.
    pub serving: String,
    /// Polls open now.
    pub polls: u32,
    pub last_seen: Instant,
}

impl PodEntry {
    fn connected(&self, now: Instant, grace: Duration) -> bool {
        self.polls > 0 || now.duration_since(self.last_seen) < grace
    }

    /// Hands `published` to the pod's polls if its version differs from the current one
    /// (only then do they wake), keeping the snapshot the sidecar serves as `previous`.
    /// Whether it did.
    pub fn publish(&mut self, published: Arc<Published>) -> bool {
        let current = self.tx.borrow().clone();
        if current.as_ref().map(|p| p.version.as_str()) == Some(published.version.as_str()) {
            return false;
        }
        let previous = self.previous.take();
        self.previous = [current, previous]
            .into_iter()
            .flatten()
            .find(|p| p.version == self.serving);
        self.tx.send_replace(Some(published));
        true
    }

    /// The snapshot the sidecar serves, if the hub still knows it.
    fn served(&self, current: &Arc<Published>) -> Option<Arc<Published>> {
        if self.serving == current.version {
            Some(current.clone())
        } else {
            self.previous.clone().filter(|p| p.version == self.serving)
        }
    }
}

#[derive(Default)]
pub(super) struct State {
    pub seq: u64,
    pub routes: BTreeMap<Key, RouteEntry>,
    pub budgets: BTreeMap<Key, BudgetEntry>,
    pub pods: HashMap<String, PodEntry>,
    pub assembled: HashMap<AssemblyKey, Arc<Published>>,
    /// The contents of the last snapshots assembled, newest last: bases for deltas to
    /// sidecars that are a few versions behind (light: the routes are shared `Arc`s).
    pub recent: VecDeque<Arc<Content>>,
    pub rollouts: HashMap<Key, Rollout>,
}

/// Snapshot contents kept as delta bases. A fleet fetching while routes are created in bulk
/// lags by several snapshots; past this it gets the whole one.
const RECENT_KEPT: usize = 64;

impl State {
    /// Routes of `ns`, in name order.
    pub fn routes_in<'a>(&'a self, ns: &'a str) -> impl Iterator<Item = (&'a Key, &'a RouteEntry)> {
        self.routes
            .range((ns.to_string(), String::new())..)
            .take_while(move |((n, _), _)| n == ns)
    }

    /// Budgets of `ns`, in name order.
    pub fn budgets_in<'a>(
        &'a self,
        ns: &'a str,
    ) -> impl Iterator<Item = (&'a Key, &'a BudgetEntry)> {
        self.budgets
            .range((ns.to_string(), String::new())..)
            .take_while(move |((n, _), _)| n == ns)
    }

    /// Re-checks every budget against the served routes of its namespace; returns the budgets
    /// whose verdict changed.
    pub fn check_budgets(&mut self) -> BTreeSet<Key> {
        let mut verdicts: Vec<(Key, Vec<FieldError>)> = Vec::new();
        for (key, b) in &self.budgets {
            let errors = match &b.compiled {
                Ok(budget) => {
                    let served: Vec<&Route> = self
                        .routes_in(&key.0)
                        .filter_map(|(_, r)| r.served().map(|r| r.as_ref()))
                        .collect();
                    outcome::budget_errors(budget, &served)
                }
                Err(_) => Vec::new(),
            };
            if errors != b.route_errors {
                verdicts.push((key.clone(), errors));
            }
        }
        let mut changed = BTreeSet::new();
        for (key, errors) in verdicts {
            if let Some(b) = self.budgets.get_mut(&key) {
                b.route_errors = errors;
                changed.insert(key);
            }
        }
        changed
    }

    /// Keeps `content` as a base for deltas.
    pub fn remember(&mut self, content: Arc<Content>) {
        if self.recent.len() == RECENT_KEPT {
            self.recent.pop_front();
        }
        self.recent.push_back(content);
    }

    /// The content of snapshot `version`, if the hub still holds it: the base of a delta to
    /// pod `uid`, whose sidecar serves it. Only a snapshot of the pod's own namespace: a delta
    /// names the routes it removes, and those of another namespace are not the pod's to see.
    pub fn base(&self, uid: &str, version: &str) -> Option<Arc<Content>> {
        let pod = self.pods.get(uid)?;
        let current = pod.tx.borrow().clone();
        current
            .into_iter()
            .chain(pod.previous.clone())
            .map(|p| p.content.clone())
            .chain(self.recent.iter().rev().cloned())
            .find(|c| c.version == version && c.namespace == pod.namespace)
    }

    /// Forgets encoded snapshots no connected pod runs.
    pub fn prune_assembled(&mut self) {
        let in_use: BTreeSet<*const Published> = self
            .pods
            .values()
            .filter_map(|p| p.tx.borrow().as_ref().map(Arc::as_ptr))
            .collect();
        self.assembled
            .retain(|_, p| in_use.contains(&Arc::as_ptr(p)));
    }

    /// Connected sidecars right now.
    pub fn connected(&self, now: Instant, grace: Duration) -> usize {
        self.pods
            .values()
            .filter(|p| p.connected(now, grace))
            .count()
    }

    /// Counts, per route, connected sidecars whose snapshot has it and those already serving
    /// its latest compile (a sidecar still fetching a snapshot in which only other routes
    /// changed serves this one). Returns the routes whose counts changed.
    ///
    /// Pods that have the same snapshot and serve the same one count alike, so the work is per
    /// distinct pair (a handful during a rollout), not per pod times routes.
    pub fn recount(&mut self, now: Instant, grace: Duration) -> BTreeSet<Key> {
        type Group = (Arc<Published>, Option<Arc<Published>>, u32);
        let mut groups: HashMap<(*const Published, *const Published), Group> = HashMap::new();
        for p in self.pods.values().filter(|p| p.connected(now, grace)) {
            let Some(current) = p.tx.borrow().clone() else {
                continue;
            };
            let served = p.served(&current);
            let id = (
                Arc::as_ptr(&current),
                served.as_ref().map_or(std::ptr::null(), Arc::as_ptr),
            );
            groups.entry(id).or_insert_with(|| (current, served, 0)).2 += 1;
        }
        let mut counts: HashMap<Key, Rollout> = HashMap::new();
        for (current, served, pods) in groups.into_values() {
            let all = served
                .as_ref()
                .is_some_and(|s| s.version == current.version);
            let fresh: BTreeSet<&(Key, u64)> = match &served {
                Some(s) if !all => s.routes.iter().collect(),
                _ => BTreeSet::new(),
            };
            for route in &current.routes {
                let c = counts.entry(route.0.clone()).or_default();
                c.total += pods;
                if all || fresh.contains(route) {
                    c.ready += pods;
                }
            }
        }
        let mut changed = BTreeSet::new();
        for key in self.routes.keys() {
            let new = counts.get(key).copied().unwrap_or_default();
            let old = self.rollouts.get(key).copied().unwrap_or_default();
            if new != old {
                changed.insert(key.clone());
            }
        }
        self.rollouts = counts;
        changed
    }
}
