//! The snapshot hub: every replica turns the watched state into one snapshot per pod and hands
//! it to that pod's waiting long-polls.
//!
//! Built for fan-out (thousands of sidecars, apply -> all serving in well under a second):
//! - a route is compiled once per (uid, generation, resourceVersions of its Secrets);
//! - a snapshot is assembled and encoded once per distinct set of compiled routes and budgets
//!   (`namespace + compile sequence numbers`) and the encoded bytes are shared (`Arc`) by every
//!   pod that runs that set;
//! - each pod has a `watch` channel; a recompute sends on it only when the pod's snapshot
//!   version changed, so only those waiters wake;
//! - the watches live in [`crate::stores`]: one per kind, not one per stream.
//!
//! The hub also concludes each route's [`Outcome`] and counts, per route, the connected
//! sidecars that serve it ([`Rollout`]), and pokes the leader's controllers when either changes.

mod assemble;
mod state;
mod steps;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kube::runtime::reflector::ObjectRef;
use llmesh_api::ledger::RouteShare;
use llmesh_api::route::LabelSelector;
use llmesh_api::snapshot::{Budget, Route};
use llmesh_api::{LLMBudget, LLMRoute, SnapshotDelta};
use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc, watch};

use crate::decisions::outcome::Outcome;
use crate::decisions::status::Rollout;
use crate::metrics::Metrics;
use crate::secrets::SecretCache;
use crate::stores::Stores;

pub use crate::decisions::status::BudgetView;
pub use state::Key;
use state::{BudgetEntry, PodEntry, State};

/// One encoded snapshot, shared by every pod that runs the same routes and budgets.
#[derive(Debug)]
pub struct Published {
    /// The snapshot's content version.
    pub version: String,
    /// The snapshot as JSON.
    pub body: Bytes,
    /// The routes in it, each with the compile sequence number it was assembled from.
    pub routes: Vec<(Key, u64)>,
    /// What is in it, as the base of later deltas and the target of this one's.
    pub content: Arc<Content>,
    /// Deltas to this snapshot, encoded, by base version: one encoding per base, shared by
    /// every pod moving from that base.
    deltas: Mutex<Vec<(String, Bytes)>>,
    /// When it was assembled: the start of its fan-out to sidecars.
    assembled: tokio::time::Instant,
}

/// `value` as JSON, in a buffer no larger than the JSON, written into one of about `hint`
/// bytes (its expected size, 0 when unknown). A buffer grown by doubling would otherwise hold up
/// to 2 MiB for a 1 MiB snapshot for as long as any pod runs it, and reach it through copies.
fn encode(value: &impl serde::Serialize, hint: usize) -> Bytes {
    let mut body = Vec::with_capacity(hint + hint / 16);
    if serde_json::to_writer(&mut body, value).is_err() {
        body.clear();
    }
    body.shrink_to_fit();
    Bytes::from(body)
}

/// A snapshot's content, without its encoding.
#[derive(Debug)]
pub struct Content {
    /// The snapshot's content version.
    pub version: String,
    /// The namespace whose routes and budgets it holds: a base is used only for pods there.
    pub namespace: String,
    /// The routes, in snapshot order (shared with the hub's compiled routes).
    pub routes: Vec<Arc<Route>>,
    /// The budgets, in snapshot order.
    pub budgets: Vec<Arc<Budget>>,
}

/// Deltas kept per snapshot: the bases its pods serve while a rollout reaches them (one, or
/// a few when edits come faster than sidecars poll).
const DELTAS_KEPT: usize = 8;

impl Published {
    /// A snapshot of `content`, encoded as `body`.
    pub fn new(content: Arc<Content>, body: Bytes, routes: Vec<(Key, u64)>) -> Self {
        Self {
            version: content.version.clone(),
            body,
            routes,
            content,
            deltas: Mutex::new(Vec::new()),
            assembled: tokio::time::Instant::now(),
        }
    }

    /// Time since it was assembled.
    pub fn age(&self) -> Duration {
        self.assembled.elapsed()
    }

    /// This snapshot as a delta from `base`, encoded once per base.
    pub fn delta_from(&self, base: &Content) -> Bytes {
        let mut kept = self.deltas.lock();
        if let Some((_, body)) = kept.iter().find(|(v, _)| *v == base.version) {
            return body.clone();
        }
        let next = &self.content;
        let delta = SnapshotDelta::between(
            (&base.version, &base.routes, &base.budgets),
            (&next.version, &next.routes, &next.budgets),
        );
        let body = encode(&delta, 0);
        if kept.len() >= DELTAS_KEPT {
            kept.remove(0);
        }
        kept.push((base.version.clone(), body.clone()));
        body
    }
}

/// Who a sidecar is, from its verified token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodIdentity {
    /// The pod's namespace (also its ServiceAccount's).
    pub namespace: String,
    /// The pod's name.
    pub pod: String,
    /// The pod's uid.
    pub uid: String,
}

/// Why a poll cannot be served.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The hub has not seen the cluster yet.
    Starting,
    /// The pod is not (yet) among the injected pods the operator watches.
    UnknownPod(String),
}

/// A sidecar's open poll: its pod's snapshot channel. Dropping it marks the poll finished.
pub struct Subscription {
    hub: Arc<Hub>,
    uid: String,
    /// Receives the pod's snapshot whenever it changes.
    pub rx: watch::Receiver<Option<Arc<Published>>>,
}

impl Subscription {
    /// The content of the snapshot this pod's sidecar serves as `version`, while the hub
    /// still holds it: the base of a delta.
    pub fn base(&self, version: &str) -> Option<Arc<Content>> {
        self.hub.state.lock().base(&self.uid, version)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut st = self.hub.state.lock();
        if let Some(p) = st.pods.get_mut(&self.uid) {
            p.polls = p.polls.saturating_sub(1);
            p.last_seen = Instant::now();
        }
    }
}

/// Senders into the leader's controllers.
#[derive(Default)]
struct Triggers {
    routes: Option<mpsc::UnboundedSender<ObjectRef<LLMRoute>>>,
    budgets: Option<mpsc::UnboundedSender<ObjectRef<LLMBudget>>>,
}

/// How long after its last poll a sidecar still counts as connected: it polls again right
/// after each answer, so a few seconds of silence mean it is gone.
const CONNECTED_GRACE: Duration = Duration::from_secs(10);
/// How long polls are gathered into one rollout count.
const RECOUNT_BATCH: Duration = Duration::from_millis(100);
/// The least time from the start of a recompute that sent a pod a new snapshot to the start of
/// the next. Each such pass is a fan-out to every sidecar that runs the snapshot, so during a
/// bulk apply of 1,000 routes one pass per change was one fan-out per change. An edit after a
/// quiet spell, or after a pass that sent nothing, starts its pass at once.
const RECOMPUTE_GAP: Duration = Duration::from_millis(100);
/// Pods silent for this long are forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(120);

/// The hub.
pub struct Hub {
    stores: Stores,
    secrets: SecretCache,
    metrics: Arc<Metrics>,
    changed: Arc<Notify>,
    recount: Notify,
    synced: watch::Sender<bool>,
    state: Mutex<State>,
    triggers: Mutex<Triggers>,
}

impl Hub {
    /// A hub over `stores`; `changed` is the notifier the stores poke.
    pub fn new(
        stores: Stores,
        secrets: SecretCache,
        changed: Arc<Notify>,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Self {
            stores,
            secrets,
            metrics,
            changed,
            recount: Notify::new(),
            synced: watch::channel(false).0,
            state: Mutex::new(State::default()),
            triggers: Mutex::new(Triggers::default()),
        })
    }

    /// Recomputes whenever the stores change, forever.
    pub async fn run(self: Arc<Self>) {
        self.stores.ready().await;
        loop {
            let started = tokio::time::Instant::now();
            let sent = self.recompute().await;
            self.metrics
                .recompute_seconds
                .observe(started.elapsed().as_secs_f64());
            self.synced.send_replace(true);
            tokio::select! {
                () = self.changed.notified() => {}
                () = self.recount.notified() => {
                    // Batch the polls of a rollout into one count, but never make a change
                    // wait for the batch: the recompute counts too. (Polls arrive all the
                    // time with many sidecars, so a plain sleep here delayed most edits.)
                    tokio::select! {
                        () = tokio::time::sleep(RECOUNT_BATCH) => {
                            self.recount_rollouts();
                            continue;
                        }
                        () = self.changed.notified() => {}
                    }
                }
                () = tokio::time::sleep(Duration::from_secs(15)) => {}
            }
            // A burst of changes (a bulk apply) makes one fan-out per gap, not one per change.
            // A pass that sent nothing (a status write, a pod's poll) does not hold the next.
            if sent {
                tokio::time::sleep_until(started + RECOMPUTE_GAP).await;
            }
        }
    }

    /// Whether the first recompute is done.
    pub fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    /// Waits until the first recompute is done.
    pub async fn synced(&self) {
        let mut rx = self.synced.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Connects the leader's controllers; every route and budget is reconciled once.
    pub fn set_triggers(
        &self,
        routes: mpsc::UnboundedSender<ObjectRef<LLMRoute>>,
        budgets: mpsc::UnboundedSender<ObjectRef<LLMBudget>>,
    ) {
        let st = self.state.lock();
        for (ns, name) in st.routes.keys() {
            let _ = routes.send(ObjectRef::new(name).within(ns));
        }
        for (ns, name) in st.budgets.keys() {
            let _ = budgets.send(ObjectRef::new(name).within(ns));
        }
        *self.triggers.lock() = Triggers {
            routes: Some(routes),
            budgets: Some(budgets),
        };
    }

    /// Disconnects the controllers (leadership lost).
    pub fn clear_triggers(&self) {
        *self.triggers.lock() = Triggers::default();
    }

    /// The outcome and rollout of a route, once compiled.
    pub fn route_view(&self, key: &Key) -> Option<(Outcome, Rollout)> {
        let st = self.state.lock();
        let e = st.routes.get(key)?;
        Some((
            e.outcome(),
            st.rollouts.get(key).copied().unwrap_or_default(),
        ))
    }

    /// What the hub concluded about a budget, once compiled.
    pub fn budget_view(&self, key: &Key) -> Option<BudgetView> {
        self.state.lock().budgets.get(key).map(BudgetEntry::view)
    }

    /// The enforced budget `name` of namespace `ns`, with its object's uid: what a usage report
    /// for it is counted against.
    pub fn served_budget(&self, ns: &str, name: &str) -> Option<(String, Arc<Budget>)> {
        let st = self.state.lock();
        let entry = st.budgets.get(&(ns.to_string(), name.to_string()))?;
        Some((entry.uid.clone(), entry.served()?.clone()))
    }

    /// Injected pods in namespace `ns` (the sidecars that share its budgets).
    pub fn injected_pods(&self, ns: &str) -> u32 {
        let n = self
            .stores
            .pods
            .state()
            .iter()
            .filter(|p| p.metadata.namespace.as_deref() == Some(ns))
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// For each served route of namespace `ns` with a requests- or tokens-per-minute limit, how
    /// many injected pods it selects: the sidecars that share the limit.
    pub fn route_shares(&self, ns: &str) -> Vec<RouteShare> {
        let limited: Vec<(String, Option<LabelSelector>)> = {
            let st = self.state.lock();
            st.routes
                .range((ns.to_string(), String::new())..)
                .take_while(|((n, _), _)| n == ns)
                .filter_map(|((_, name), e)| {
                    let r = e.served()?;
                    let l = &r.limits;
                    (l.requests_per_minute.is_some() || l.tokens_per_minute.is_some())
                        .then(|| (name.clone(), e.selector.clone()))
                })
                .collect()
        };
        if limited.is_empty() {
            return Vec::new();
        }
        let pods = self.stores.pods.state();
        let empty = std::collections::BTreeMap::new();
        limited
            .into_iter()
            .map(|(route, selector)| {
                let n = pods
                    .iter()
                    .filter(|p| p.metadata.namespace.as_deref() == Some(ns))
                    .filter(|p| {
                        crate::selector::matches(
                            selector.as_ref(),
                            p.metadata.labels.as_ref().unwrap_or(&empty),
                        )
                    })
                    .count();
                RouteShare {
                    route,
                    sidecars: u32::try_from(n.max(1)).unwrap_or(u32::MAX),
                }
            })
            .collect()
    }

    /// The enforced budgets of namespace `ns`, with their objects' uids.
    pub fn served_budgets(&self, ns: &str) -> Vec<(String, Arc<Budget>)> {
        let st = self.state.lock();
        st.budgets
            .range((ns.to_string(), String::new())..)
            .take_while(|((n, _), _)| n == ns)
            .filter_map(|(_, e)| Some((e.uid.clone(), e.served()?.clone())))
            .collect()
    }

    /// Opens a poll for the pod behind a verified token, noting the version it serves.
    pub fn subscribe(
        self: &Arc<Self>,
        id: &PodIdentity,
        serving: &str,
    ) -> Result<Subscription, Refusal> {
        if !self.is_synced() {
            return Err(Refusal::Starting);
        }
        let meta = self
            .stores
            .pods
            .get(&ObjectRef::new(&id.pod).within(&id.namespace))
            .filter(|p| p.metadata.uid.as_deref() == Some(id.uid.as_str()))
            .ok_or_else(|| {
                Refusal::UnknownPod(format!(
                    "Pod {}/{} (uid {}) is not among the pods the operator serves: only pods the injection webhook injected are (label the pod or its namespace llmesh.io/inject=enabled and recreate the pod)",
                    id.namespace, id.pod, id.uid
                ))
            })?;
        let labels = meta.metadata.labels.clone().unwrap_or_default();
        let mut st = self.state.lock();
        let now = Instant::now();
        if !st.pods.contains_key(&id.uid) {
            let published = assemble::for_pod(&mut st, &self.metrics, &id.namespace, &labels);
            st.pods.insert(
                id.uid.clone(),
                PodEntry {
                    namespace: id.namespace.clone(),
                    name: id.pod.clone(),
                    tx: watch::channel(Some(published)).0,
                    previous: None,
                    serving: String::new(),
                    polls: 0,
                    last_seen: now,
                },
            );
        }
        let entry = st.pods.get_mut(&id.uid).expect("inserted above");
        entry.serving = serving.to_string();
        entry.polls += 1;
        entry.last_seen = now;
        let rx = entry.tx.subscribe();
        drop(st);
        self.recount.notify_one();
        Ok(Subscription {
            hub: self.clone(),
            uid: id.uid.clone(),
            rx,
        })
    }

    /// One pass over the watched state: fetch the Secrets routes read, compile routes, resolve
    /// model conflicts, compile budgets, fan out to pods (the steps are on [`State`], in
    /// `steps.rs`), then trigger the controllers for whatever changed. Whether any pod was sent
    /// a new snapshot.
    async fn recompute(&self) -> bool {
        let routes = self.stores.routes.state();
        let budgets = self.stores.budgets.state();

        let (wanted, refs_of) =
            steps::secret_refs(&routes, |ns, name| self.stores.secret_version(ns, name));
        let reads = self.secrets.refresh(&wanted).await;
        self.metrics.secret_reads.inc_by(reads as u64);
        self.metrics.secrets_held.set(self.secrets.len() as i64);

        let exists = |ns: &str, name: &str| self.stores.secret_seen(ns, name);
        let mut st = self.state.lock();
        let mut changed_routes = {
            // The Secret cache stays locked for the compile only.
            let source = self.secrets.source(&exists);
            st.compile_routes(&routes, refs_of, &source, &self.metrics)
        };
        changed_routes.extend(st.resolve_model_conflicts());
        let changed_budgets = st.compile_budgets(&budgets);
        let now = Instant::now();
        let sent = st.fan_out(&self.metrics, now, FORGET_AFTER, |uid, ns, name| {
            self.stores
                .pods
                .get(&ObjectRef::new(name).within(ns))
                .filter(|p| p.metadata.uid.as_deref() == Some(uid))
                .map(|p| p.metadata.labels.clone().unwrap_or_default())
        });
        changed_routes.extend(st.recount(now, CONNECTED_GRACE));
        self.metrics
            .sidecars_connected
            .set(st.connected(now, CONNECTED_GRACE) as i64);
        drop(st);
        self.trigger(changed_routes, changed_budgets);
        sent
    }

    fn recount_rollouts(&self) {
        let now = Instant::now();
        let mut st = self.state.lock();
        let changed = st.recount(now, CONNECTED_GRACE);
        self.metrics
            .sidecars_connected
            .set(st.connected(now, CONNECTED_GRACE) as i64);
        drop(st);
        self.trigger(changed, BTreeSet::new());
    }

    fn trigger(&self, routes: BTreeSet<Key>, budgets: BTreeSet<Key>) {
        let t = self.triggers.lock();
        if let Some(tx) = &t.routes {
            for (ns, name) in routes {
                let _ = tx.send(ObjectRef::new(&name).within(&ns));
            }
        }
        if let Some(tx) = &t.budgets {
            for (ns, name) in budgets {
                let _ = tx.send(ObjectRef::new(&name).within(&ns));
            }
        }
    }
}

fn created(meta: &kube::api::ObjectMeta) -> String {
    meta.creation_timestamp
        .as_ref()
        .map(|t| t.0.to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
