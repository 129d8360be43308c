//! The steps of one recompute, each a plain function on [`State`]: which Secrets the routes
//! read, compile routes, resolve model conflicts, compile budgets, fan out to pods. Each returns
//! what changed, so [`super::Hub::recompute`] only strings them together and triggers the
//! controllers.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::ResourceExt;
use llmesh_api::compile::{SecretSource, compile_budget, compile_route};
use llmesh_api::{LLMBudget, LLMRoute};

use super::assemble;
use super::state::{BudgetEntry, Key, RouteEntry, State};
use super::{Published, created};
use crate::decisions::outcome::{self, Claim};
use crate::metrics::Metrics;
use crate::secrets::Wanted;

/// `(Secret name, resourceVersion)` a route reads; `None`: the Secret is missing.
pub(super) type Refs = Vec<(String, Option<String>)>;

/// The Secrets `routes` read, at the resourceVersion `version` gives (`None`: missing): the
/// keys to fetch per existing Secret, and each route's references.
pub(super) fn secret_refs(
    routes: &[Arc<LLMRoute>],
    version: impl Fn(&str, &str) -> Option<String>,
) -> (Vec<Wanted>, HashMap<Key, Refs>) {
    let mut wanted: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    let mut refs_of: HashMap<Key, Refs> = HashMap::new();
    for r in routes {
        let ns = r.namespace().unwrap_or_default();
        let mut refs = Vec::new();
        for b in &r.spec.backends {
            if let Some(s) = &b.secret_ref {
                let rv = version(&ns, &s.name);
                if rv.is_some() {
                    wanted
                        .entry((ns.clone(), s.name.clone()))
                        .or_default()
                        .insert(s.key.clone());
                }
                refs.push((s.name.clone(), rv));
            }
        }
        refs.sort();
        refs.dedup();
        refs_of.insert((ns, r.name_any()), refs);
    }
    let wanted = wanted
        .into_iter()
        .filter_map(|(key, keys)| {
            let resource_version = version(&key.0, &key.1)?;
            Some(Wanted {
                key,
                resource_version,
                keys,
            })
        })
        .collect();
    (wanted, refs_of)
}

impl State {
    /// Compiles the routes that changed (uid, generation or the Secrets they read) and forgets
    /// the routes that are gone. Returns both: the routes whose outcome may have changed.
    pub(super) fn compile_routes(
        &mut self,
        routes: &[Arc<LLMRoute>],
        mut refs_of: HashMap<Key, Refs>,
        source: &dyn SecretSource,
        metrics: &Metrics,
    ) -> BTreeSet<Key> {
        let mut changed = BTreeSet::new();
        let mut live: BTreeSet<Key> = BTreeSet::new();
        for r in routes {
            let key = (r.namespace().unwrap_or_default(), r.name_any());
            let uid = r.uid().unwrap_or_default();
            let generation = r.metadata.generation.unwrap_or_default();
            let refs = refs_of.remove(&key).unwrap_or_default();
            live.insert(key.clone());
            if self
                .routes
                .get(&key)
                .is_some_and(|e| e.uid == uid && e.generation == generation && e.refs == refs)
            {
                continue;
            }
            let compiled = compile_route(&key.0, &key.1, &r.spec, source);
            let (base, route) = outcome::route_outcome(&key.1, generation, &r.spec, compiled);
            metrics.route_compiles.inc();
            self.seq += 1;
            self.routes.insert(
                key.clone(),
                RouteEntry {
                    uid,
                    generation,
                    refs,
                    created: created(&r.metadata),
                    selector: r.spec.pod_selector.clone(),
                    base,
                    conflict: None,
                    route: route.map(Arc::new),
                    seq: self.seq,
                },
            );
            changed.insert(key);
        }
        self.routes.retain(|k, _| {
            let keep = live.contains(k);
            if !keep {
                changed.insert(k.clone());
            }
            keep
        });
        changed
    }

    /// A model name belongs to one route per namespace: marks the others conflicting. Returns
    /// the routes whose conflict changed.
    pub(super) fn resolve_model_conflicts(&mut self) -> BTreeSet<Key> {
        let mut claims: BTreeMap<String, Vec<Claim>> = BTreeMap::new();
        for ((ns, _), e) in &self.routes {
            if let Some(route) = e.compiled_ok() {
                claims
                    .entry(ns.clone())
                    .or_default()
                    .push(Claim::of(route, &e.created));
            }
        }
        let mut conflicts: HashMap<Key, String> = HashMap::new();
        for (ns, c) in &claims {
            for (name, msg) in outcome::model_conflicts(ns, c) {
                conflicts.insert((ns.clone(), name), msg);
            }
        }
        let mut changed = BTreeSet::new();
        for (key, e) in self.routes.iter_mut() {
            let conflict = conflicts.remove(key);
            if e.conflict != conflict {
                // No new sequence number: the route leaving or joining the served set
                // changes the assembly key of every snapshot it is in.
                e.conflict = conflict;
                changed.insert(key.clone());
            }
        }
        changed
    }

    /// Compiles the budgets that changed, forgets those that are gone, then checks every
    /// budget against the served routes. Returns the budgets whose view may have changed.
    pub(super) fn compile_budgets(&mut self, budgets: &[Arc<LLMBudget>]) -> BTreeSet<Key> {
        let mut changed = BTreeSet::new();
        let mut live: BTreeSet<Key> = BTreeSet::new();
        for b in budgets {
            let key = (b.namespace().unwrap_or_default(), b.name_any());
            let uid = b.uid().unwrap_or_default();
            let generation = b.metadata.generation.unwrap_or_default();
            live.insert(key.clone());
            if self
                .budgets
                .get(&key)
                .is_some_and(|e| e.uid == uid && e.generation == generation)
            {
                continue;
            }
            self.seq += 1;
            let compiled = compile_budget(&key.0, &key.1, &b.spec)
                .map(Arc::new)
                .map_err(|e| e.errors);
            self.budgets.insert(
                key.clone(),
                BudgetEntry {
                    uid,
                    generation,
                    limit: outcome::limit_in_words(&b.spec),
                    compiled,
                    route_errors: Vec::new(),
                    seq: self.seq,
                },
            );
            changed.insert(key);
        }
        self.budgets.retain(|k, _| {
            let keep = live.contains(k);
            if !keep {
                changed.insert(k.clone());
            }
            keep
        });
        changed.extend(self.check_budgets());
        changed
    }

    /// Hands every connected pod its snapshot, waking only those whose snapshot changed, and
    /// forgets pods that are gone (`labels_of` gives `None`: no longer in the store) or silent
    /// for `forget_after`. Pods of a namespace that agree on the labels its selectors read
    /// get the same snapshot: it is looked up once per such group, not once per pod. Whether
    /// any pod was sent a new snapshot.
    pub(super) fn fan_out(
        &mut self,
        metrics: &Metrics,
        now: Instant,
        forget_after: Duration,
        labels_of: impl Fn(&str, &str, &str) -> Option<BTreeMap<String, String>>,
    ) -> bool {
        let pods: Vec<(String, String, String)> = self
            .pods
            .iter()
            .map(|(uid, p)| (uid.clone(), p.namespace.clone(), p.name.clone()))
            .collect();
        let keys = assemble::selector_keys(self);
        let mut decided: HashMap<assemble::PodGroup, Arc<Published>> = HashMap::new();
        let mut gone = Vec::new();
        let mut sent = false;
        for (uid, ns, name) in pods {
            let idle = self
                .pods
                .get(&uid)
                .is_some_and(|p| p.polls == 0 && now.duration_since(p.last_seen) > forget_after);
            let Some(labels) = labels_of(&uid, &ns, &name).filter(|_| !idle) else {
                gone.push(uid);
                continue;
            };
            let relevant = assemble::relevant_labels(&labels, keys.get(&ns));
            let group = (ns, relevant);
            let published = match decided.get(&group) {
                Some(p) => p.clone(),
                None => {
                    let p = assemble::for_pod(self, metrics, &group.0, &labels);
                    decided.insert(group, p.clone());
                    p
                }
            };
            sent |= self
                .pods
                .get_mut(&uid)
                .expect("listed above")
                .publish(published);
        }
        for uid in gone {
            // Dropping the sender ends the pod's open polls.
            self.pods.remove(&uid);
        }
        self.prune_assembled();
        sent
    }
}

#[cfg(test)]
mod tests;
