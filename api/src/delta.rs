//! Snapshot deltas: what changed between the snapshot a sidecar serves and the one it should
//! serve, so an edit of one route sends that route, not every route the pod runs.
//!
//! The operator builds a delta with [`SnapshotDelta::between`]; the sidecar applies it with
//! [`SnapshotDelta::apply`], which checks the result against the delta's `version` (the content
//! hash of the whole snapshot, [`crate::compile::content_version`]). A delta that does not
//! reproduce that version exactly is refused, and the sidecar asks for the whole snapshot.

use std::borrow::Borrow;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::compile::content_version;
use crate::snapshot::{Budget, Route, Snapshot};

/// The change from snapshot `base` to snapshot `version`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotDelta {
    /// The version this delta applies to.
    pub base: String,
    /// The version of the snapshot it produces.
    pub version: String,
    /// Routes added or changed since `base`, whole, sorted by namespace and name.
    pub routes: Vec<Route>,
    /// Routes in `base` that are gone.
    pub removed: Vec<RouteName>,
    /// Every budget, when any budget changed; absent when `base`'s budgets stand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budgets: Option<Vec<Budget>>,
}

/// A route's identity.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RouteName {
    /// Namespace of the LLMRoute.
    pub namespace: String,
    /// Name of the LLMRoute.
    pub name: String,
}

/// Why a delta was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    /// The delta is for another snapshot than the one served.
    #[error("the delta applies to snapshot {delta}, but this sidecar serves {serving}")]
    OtherBase {
        /// The delta's base.
        delta: String,
        /// What the sidecar serves.
        serving: String,
    },
    /// Applying it did not reproduce the version it announced.
    #[error("the delta to snapshot {expected} produced content with version {got}")]
    Mismatch {
        /// The delta's version.
        expected: String,
        /// The version of what applying it produced.
        got: String,
    },
}

fn key(r: &Route) -> (&str, &str) {
    (&r.namespace, &r.name)
}

impl SnapshotDelta {
    /// The delta from `base` (its version, routes and budgets) to `next`. Routes and budgets
    /// are each sorted by namespace and name, as in a [`Snapshot`].
    pub fn between<R: Borrow<Route>, B: Borrow<Budget>>(
        base: (&str, &[R], &[B]),
        next: (&str, &[R], &[B]),
    ) -> Self {
        let (base_version, base_routes, base_budgets) = base;
        let (version, routes, budgets) = next;
        let old: BTreeMap<(&str, &str), &Route> = base_routes
            .iter()
            .map(|r| (key(r.borrow()), r.borrow()))
            .collect();
        let new: BTreeMap<(&str, &str), &Route> = routes
            .iter()
            .map(|r| (key(r.borrow()), r.borrow()))
            .collect();
        let mut changed = Vec::new();
        for (k, r) in &new {
            let same = old.get(k).is_some_and(|o| std::ptr::eq(*o, *r) || *o == *r);
            if !same {
                changed.push(Route::clone(r));
            }
        }
        let removed = old
            .keys()
            .filter(|k| !new.contains_key(*k))
            .map(|(namespace, name)| RouteName {
                namespace: namespace.to_string(),
                name: name.to_string(),
            })
            .collect();
        let same_budgets = base_budgets.len() == budgets.len()
            && base_budgets
                .iter()
                .zip(budgets)
                .all(|(a, b)| a.borrow() == b.borrow());
        Self {
            base: base_version.to_string(),
            version: version.to_string(),
            routes: changed,
            removed,
            budgets: (!same_budgets).then(|| budgets.iter().map(|b| b.borrow().clone()).collect()),
        }
    }

    /// The snapshot this delta makes of `base`, checked against [`Self::version`].
    pub fn apply(&self, base: &Snapshot) -> Result<Snapshot, DeltaError> {
        if base.version != self.base {
            return Err(DeltaError::OtherBase {
                delta: self.base.clone(),
                serving: base.version.clone(),
            });
        }
        let mut routes: BTreeMap<(String, String), Route> = base
            .routes
            .iter()
            .map(|r| ((r.namespace.clone(), r.name.clone()), r.clone()))
            .collect();
        for gone in &self.removed {
            routes.remove(&(gone.namespace.clone(), gone.name.clone()));
        }
        for r in &self.routes {
            routes.insert((r.namespace.clone(), r.name.clone()), r.clone());
        }
        let mut next = Snapshot {
            version: String::new(),
            routes: routes.into_values().collect(),
            budgets: self.budgets.clone().unwrap_or_else(|| base.budgets.clone()),
        };
        let got = content_version(&next);
        if got != self.version {
            return Err(DeltaError::Mismatch {
                expected: self.version.clone(),
                got,
            });
        }
        next.version = got;
        Ok(next)
    }
}

#[cfg(test)]
mod tests;
