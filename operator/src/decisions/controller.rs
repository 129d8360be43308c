//! The leader's controllers for `LLMRoute` and `LLMBudget`, in the controller-rs shape: one
//! generic, thin `reconcile` (span, timer, then the pure decisions in [`crate::decisions::status`] and
//! [`crate::decisions::events`]) and one `error_policy` that logs, counts and requeues, over the small
//! [`Reconciled`] trait each kind implements.
//!
//! The hub compiles every route on every replica; reconciles only turn its conclusions into
//! status and Events. The hub triggers a reconcile whenever a route's outcome or rollout
//! changes, so a status write never triggers another (no reconcile loop on our own writes).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{self, Action, Config, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use llmesh_api::compile::FieldError;
use llmesh_api::condition::Condition;
use llmesh_api::ledger::BudgetLedger;
use llmesh_api::period::{period_bounds, rfc3339};
use llmesh_api::{API_VERSION, LLMBudget, LLMBudgetStatus, LLMRoute, LLMRouteStatus};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tracing::{Instrument, info_span};

use crate::decisions::events;
use crate::decisions::outcome::Outcome;
use crate::decisions::status;
use crate::decisions::status::{Now, Rollout};
use crate::metrics::Metrics;
use crate::pki::tls::FIELD_MANAGER;
use crate::push::hub::{BudgetView, Hub, Key};
use crate::spend::{
    BUDGET_NAME_ANNOTATION, BUDGET_NAMESPACE_ANNOTATION, LEDGER_LABEL, UnixClock, ledger_name,
    read_ledger,
};
use crate::stores::Stores;

/// Reconciles (each one status write at most) in flight per kind. The client speaks HTTP/1.1,
/// so each is a connection to the API server: unbounded, creating 1,000 routes opened hundreds
/// and kept them in the pool.
const MAX_RECONCILES_IN_FLIGHT: u16 = 16;

/// Failures a reconcile reports to `error_policy`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Writing status failed.
    #[error("writing status: {0}")]
    Status(#[source] kube::Error),
}

/// A kind the leader reconciles: all that differs between `LLMRoute` and `LLMBudget`. The
/// reconcile, the error policy and the bookkeeping of written statuses are one generic code path
/// over it ([`reconcile`], [`error_policy`], [`Written`]).
pub trait Reconciled:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    /// The kind, as in metrics labels, spans and the status patch.
    const KIND: &'static str;
    /// The status subresource.
    type Status: Clone + serde::Serialize + Send + Sync + 'static;
    /// What the hub concluded about one object.
    type View: Send + 'static;

    /// What the operator concluded about `key` (the hub's compilation; for budgets also the
    /// fleet ledger), once the hub compiled the object.
    fn view(ctx: &Context, key: &Key) -> Option<Self::View>;
    /// The generation `view` is about.
    fn view_generation(view: &Self::View) -> i64;
    /// The status `view` calls for, given the last one written.
    fn status_for(
        generation: i64,
        view: &Self::View,
        old: Option<&Self::Status>,
        now: &Now,
    ) -> Self::Status;
    /// When to reconcile again without a trigger.
    fn requeue(_view: &Self::View, _now: &Now) -> Duration {
        Duration::from_secs(300)
    }
    /// Publishes what a reconcile concluded beyond status (metrics).
    fn observe(_ctx: &Context, _key: &Key, _view: &Self::View, _now: &Now) {}
    /// Forgets what [`Reconciled::observe`] published about an object that is gone.
    fn forget(_ctx: &Context, _key: &Key) {}
    /// Compiler warnings to report once per generation.
    fn warnings(view: &Self::View) -> &[FieldError];
    /// Whether something other than a timestamp changed.
    fn status_changed(old: Option<&Self::Status>, new: &Self::Status) -> bool;
    /// The conditions and observed generation of a status.
    fn conditions(status: &Self::Status) -> (&[Condition], Option<i64>);
    /// The status on the object as the store has it.
    fn stored_status(&self) -> Option<&Self::Status>;
    /// The statuses this leader term wrote for this kind.
    fn written(ctx: &Context) -> &Written<Self::Status>;
}

impl Reconciled for LLMRoute {
    const KIND: &'static str = "LLMRoute";
    type Status = LLMRouteStatus;
    type View = (Outcome, Rollout);

    fn view(ctx: &Context, key: &Key) -> Option<Self::View> {
        ctx.hub.route_view(key)
    }
    fn view_generation((outcome, _): &Self::View) -> i64 {
        outcome.generation
    }
    fn status_for(
        generation: i64,
        (outcome, rollout): &Self::View,
        old: Option<&Self::Status>,
        now: &Now,
    ) -> Self::Status {
        status::route_status(generation, outcome, *rollout, old, &now.text)
    }
    fn warnings((outcome, _): &Self::View) -> &[FieldError] {
        &outcome.warnings
    }
    fn status_changed(old: Option<&Self::Status>, new: &Self::Status) -> bool {
        status::route_status_changed(old, new)
    }
    fn conditions(s: &Self::Status) -> (&[Condition], Option<i64>) {
        (&s.conditions, s.observed_generation)
    }
    fn stored_status(&self) -> Option<&Self::Status> {
        self.status.as_ref()
    }
    fn written(ctx: &Context) -> &Written<Self::Status> {
        &ctx.written_routes
    }
}

impl Reconciled for LLMBudget {
    const KIND: &'static str = "LLMBudget";
    type Status = LLMBudgetStatus;
    type View = (BudgetView, Option<BudgetLedger>);

    fn view(ctx: &Context, key: &Key) -> Option<Self::View> {
        let view = ctx.hub.budget_view(key)?;
        let ledger = ctx
            .ledgers
            .get(&ObjectRef::new(&ledger_name(&view.uid)).within(&ctx.namespace))
            .and_then(|cm| read_ledger(&cm));
        Some((view, ledger))
    }
    fn view_generation((view, _): &Self::View) -> i64 {
        view.generation
    }
    fn status_for(
        generation: i64,
        (view, ledger): &Self::View,
        old: Option<&Self::Status>,
        now: &Now,
    ) -> Self::Status {
        status::budget_status(generation, view, ledger.as_ref(), old, now)
    }
    fn requeue((view, _): &Self::View, now: &Now) -> Duration {
        // Status shows the new period from its first second, reports or not.
        let to_rollover = view.budget.as_ref().map_or(u64::MAX, |b| {
            period_bounds(b.period, now.unix).1.saturating_sub(now.unix) + 1
        });
        Duration::from_secs(to_rollover.min(300))
    }
    fn observe(ctx: &Context, (ns, name): &Key, (view, ledger): &Self::View, now: &Now) {
        let Some(budget) = &view.budget else {
            ctx.metrics.forget_budget(ns, name);
            return;
        };
        let (current, _) = period_bounds(budget.period, now.unix);
        let total = ledger
            .as_ref()
            .filter(|l| l.period_start >= current)
            .map(|l| l.total)
            .unwrap_or_default();
        // Per hour so far this period (at least one minute in, so the first seconds do not
        // extrapolate a few cents into dollars an hour).
        let elapsed = now.unix.saturating_sub(current).max(60);
        let burn = u128::from(total.micro_usd) * 3600 / u128::from(elapsed);
        ctx.metrics.set_budget(
            ns,
            name,
            total.micro_usd,
            total.tokens(),
            budget.limit_usd,
            u64::try_from(burn).unwrap_or(u64::MAX),
        );
    }
    fn forget(ctx: &Context, (ns, name): &Key) {
        ctx.metrics.forget_budget(ns, name);
    }
    fn warnings(_: &Self::View) -> &[FieldError] {
        &[]
    }
    fn status_changed(old: Option<&Self::Status>, new: &Self::Status) -> bool {
        status::budget_status_changed(old, new)
    }
    fn conditions(s: &Self::Status) -> (&[Condition], Option<i64>) {
        (&s.conditions, s.observed_generation)
    }
    fn stored_status(&self) -> Option<&Self::Status> {
        self.status.as_ref()
    }
    fn written(ctx: &Context) -> &Written<Self::Status> {
        &ctx.written_budgets
    }
}

/// The last status written per object, by `(namespace, name)` with the uid it was written for:
/// the store may not have caught up with our own write yet, and comparing against it would
/// repeat Events. An object's entry goes when the controller finds the object gone (the hub
/// triggers a reconcile for every object that leaves), so the map holds live objects only.
pub struct Written<S> {
    by_key: Mutex<HashMap<Key, (String, S)>>,
}

impl<S: Clone> Default for Written<S> {
    fn default() -> Self {
        Self {
            by_key: Mutex::new(HashMap::new()),
        }
    }
}

impl<S: Clone> Written<S> {
    /// The status last written for the object `key` with `uid` (not one of a deleted
    /// namesake).
    pub fn get(&self, key: &Key, uid: &str) -> Option<S> {
        self.by_key
            .lock()
            .get(key)
            .filter(|(u, _)| u == uid)
            .map(|(_, s)| s.clone())
    }

    /// Notes `status` as written for `key` with `uid`.
    pub fn record(&self, key: Key, uid: String, status: S) {
        self.by_key.lock().insert(key, (uid, status));
    }

    /// Objects with a status noted.
    pub fn len(&self) -> usize {
        self.by_key.lock().len()
    }

    /// Whether no status is noted.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets the object a controller result says is gone from the store.
    pub fn settle<T, E1: std::fmt::Debug + 'static, E2: std::fmt::Debug + 'static>(
        &self,
        result: &Result<T, controller::Error<E1, E2>>,
    ) {
        if let Err(controller::Error::ObjectNotFound(gone)) = result {
            let key = (
                gone.namespace.clone().unwrap_or_default(),
                gone.name.clone(),
            );
            self.by_key.lock().remove(&key);
        }
    }
}

/// What reconciles share.
pub struct Context {
    client: Client,
    hub: Arc<Hub>,
    recorder: Recorder,
    metrics: Arc<Metrics>,
    written_routes: Written<LLMRouteStatus>,
    written_budgets: Written<LLMBudgetStatus>,
    /// The operator's namespace, where budget ledgers live.
    namespace: String,
    /// The budget ledgers, as the leader's watch has them.
    ledgers: Store<ConfigMap>,
    ledger_writer: Mutex<Option<Writer<ConfigMap>>>,
    clock: UnixClock,
}

impl Context {
    /// A context for a leader term.
    pub fn new(
        client: Client,
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
        identity: &str,
        namespace: &str,
        clock: UnixClock,
    ) -> Arc<Self> {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: Some(identity.to_string()),
        };
        let (ledgers, writer) = reflector::store();
        Arc::new(Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            hub,
            metrics,
            written_routes: Written::default(),
            written_budgets: Written::default(),
            namespace: namespace.to_string(),
            ledgers,
            ledger_writer: Mutex::new(Some(writer)),
            clock,
        })
    }

    fn now(&self) -> Now {
        let unix = (self.clock)();
        Now {
            text: rfc3339(unix),
            unix,
        }
    }

    /// Objects of kind `K` with a written status noted.
    pub fn written_len<K: Reconciled>(&self) -> usize {
        K::written(self).len()
    }

    async fn publish(&self, obj: &impl Resource<DynamicType = ()>, emits: Vec<events::Emit>) {
        let reference = obj.object_ref(&());
        for e in emits {
            let kind = if e.warning { "warning" } else { "normal" };
            self.metrics.events.with_label_values(&[kind]).inc();
            if let Err(err) = self.recorder.publish(&e.to_event(), &reference).await {
                tracing::warn!(error = %err, reason = %e.reason, "cannot publish Event");
            }
        }
    }
}

/// Runs both controllers until the returned future is dropped (leadership lost).
pub async fn run(ctx: Arc<Context>, stores: Stores) {
    let (route_tx, route_rx) = mpsc::unbounded_channel::<ObjectRef<LLMRoute>>();
    let (budget_tx, budget_rx) = mpsc::unbounded_channel::<ObjectRef<LLMBudget>>();
    ctx.hub.set_triggers(route_tx, budget_tx.clone());
    futures::future::join4(
        controller_for(&ctx, stores.routes.clone(), route_rx),
        controller_for(&ctx, stores.budgets.clone(), budget_rx),
        watch_ledgers(&ctx, budget_tx),
        sweep_ledgers(&ctx, stores.budgets.clone()),
    )
    .await;
}

/// How often the leader deletes the ledgers of budgets that are gone.
const LEDGER_SWEEP: Duration = Duration::from_secs(600);

/// Deletes, a minute into each leader term and every [`LEDGER_SWEEP`] after, the ledger
/// ConfigMaps whose budget (by uid) is gone: a deleted budget's spend goes with it, and a
/// budget recreated under the same name starts from zero.
async fn sweep_ledgers(ctx: &Arc<Context>, budgets: Store<LLMBudget>) {
    tokio::time::sleep(Duration::from_secs(60)).await;
    loop {
        if budgets.wait_until_ready().await.is_ok() && ctx.ledgers.wait_until_ready().await.is_ok()
        {
            let live: std::collections::HashSet<String> = budgets
                .state()
                .iter()
                .filter_map(|b| b.uid())
                .map(|uid| ledger_name(&uid))
                .collect();
            let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
            for cm in ctx.ledgers.state() {
                let name = cm.name_any();
                if !live.contains(&name) {
                    match api.delete(&name, &Default::default()).await {
                        Ok(_) => {
                            tracing::info!(configmap = %name, "deleted the ledger of a budget that is gone")
                        }
                        Err(e) => {
                            tracing::warn!(configmap = %name, error = %e, "cannot delete the ledger of a budget that is gone")
                        }
                    }
                }
            }
        }
        tokio::time::sleep(LEDGER_SWEEP).await;
    }
}

/// Watches the budget ledgers (any replica may write one) and reconciles the budget of each
/// that changes, so its status follows the fleet's spend within a second or so.
async fn watch_ledgers(ctx: &Arc<Context>, budgets: mpsc::UnboundedSender<ObjectRef<LLMBudget>>) {
    let Some(writer) = ctx.ledger_writer.lock().take() else {
        return;
    };
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let config = watcher::Config::default().labels(LEDGER_LABEL);
    let stream = watcher(api, config)
        .default_backoff()
        .reflect(writer)
        .applied_objects();
    let mut stream = std::pin::pin!(stream);
    while let Some(item) = stream.next().await {
        match item {
            Ok(cm) => {
                let a = cm.metadata.annotations.unwrap_or_default();
                if let (Some(ns), Some(name)) = (
                    a.get(BUDGET_NAMESPACE_ANNOTATION),
                    a.get(BUDGET_NAME_ANNOTATION),
                ) {
                    let _ = budgets.send(ObjectRef::new(name).within(ns));
                }
            }
            Err(e) => tracing::warn!(error = %e, "watching budget ledgers failed; retrying"),
        }
    }
}

/// The controller of kind `K` over its shared store, reconciling what the hub triggers.
async fn controller_for<K>(
    ctx: &Arc<Context>,
    store: kube::runtime::reflector::Store<K>,
    mut triggers: mpsc::UnboundedReceiver<ObjectRef<K>>,
) where
    K: Reconciled,
{
    let config = Config::default()
        .debounce(Duration::from_millis(100))
        .concurrency(MAX_RECONCILES_IN_FLIGHT);
    Controller::for_shared_stream(futures::stream::pending(), store)
        .reconcile_on(futures::stream::poll_fn(move |cx| triggers.poll_recv(cx)))
        .with_config(config)
        .run(reconcile::<K>, error_policy::<K>, ctx.clone())
        .for_each(|r| {
            if let Err(controller::Error::ObjectNotFound(gone)) = &r {
                K::forget(
                    ctx,
                    &(
                        gone.namespace.clone().unwrap_or_default(),
                        gone.name.clone(),
                    ),
                );
            }
            K::written(ctx).settle(&r);
            count_ok(ctx, K::KIND, r.is_ok())
        })
        .await;
}

/// Counts successful reconciles (failures are counted by the error policy).
fn count_ok(ctx: &Context, kind: &str, ok: bool) -> futures::future::Ready<()> {
    if ok {
        ctx.metrics
            .reconciles
            .with_label_values(&[kind, "ok"])
            .inc();
    }
    futures::future::ready(())
}

/// Turns the hub's conclusion about `obj` into its status and Events.
async fn reconcile<K: Reconciled>(obj: Arc<K>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = obj.namespace().unwrap_or_default();
    let name = obj.name_any();
    let span = info_span!("reconcile", kind = K::KIND, namespace = %ns, name = %name);
    async move {
        let _timer = ctx.metrics.reconcile_seconds.start_timer();
        let generation = obj.meta().generation.unwrap_or_default();
        let key = (ns.clone(), name.clone());
        let Some(view) = K::view(&ctx, &key) else {
            return Ok(Action::requeue(Duration::from_secs(1)));
        };
        if K::view_generation(&view) != generation {
            // The hub has not compiled this generation yet; it triggers us when it has.
            return Ok(Action::requeue(Duration::from_secs(2)));
        }
        let uid = obj.uid().unwrap_or_default();
        let old = K::written(&ctx)
            .get(&key, &uid)
            .or_else(|| obj.stored_status().cloned());
        let now = ctx.now();
        K::observe(&ctx, &key, &view, &now);
        let new = K::status_for(generation, &view, old.as_ref(), &now);
        if K::status_changed(old.as_ref(), &new) {
            let (old_conditions, old_generation) =
                old.as_ref().map(K::conditions).unwrap_or_default();
            let emits = events::for_change(
                old_conditions,
                old_generation,
                K::conditions(&new).0,
                generation,
                K::warnings(&view),
            );
            apply_status::<K>(&ctx.client, &ns, &name, K::KIND, &new).await?;
            ctx.metrics
                .status_writes
                .with_label_values(&[K::KIND])
                .inc();
            K::written(&ctx).record(key, uid, new);
            ctx.publish(obj.as_ref(), emits).await;
        }
        Ok(Action::requeue(K::requeue(&view, &now)))
    }
    .instrument(span)
    .await
}

/// Server-side applies `status` under the operator's field manager.
async fn apply_status<K>(
    client: &Client,
    ns: &str,
    name: &str,
    kind: &str,
    status: &impl serde::Serialize,
) -> Result<(), Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let patch = serde_json::json!({
        "apiVersion": API_VERSION,
        "kind": kind,
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map(|_| ())
    .map_err(Error::Status)
}

/// Logs, counts and retries a failed reconcile.
fn error_policy<K: Reconciled>(obj: Arc<K>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(kind = K::KIND, namespace = ?obj.namespace(), name = %obj.name_any(), error = %error, "reconcile failed; retrying");
    ctx.metrics
        .reconciles
        .with_label_values(&[K::KIND, "error"])
        .inc();
    Action::requeue(Duration::from_secs(5))
}

#[cfg(test)]
mod tests;
