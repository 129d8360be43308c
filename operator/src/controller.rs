//! The leader's controllers for `LLMRoute` and `LLMBudget`, in the controller-rs shape: a thin
//! `reconcile` (span, timer, then the pure decisions in [`crate::status`] and
//! [`crate::events`]), an `error_policy` that logs, counts and requeues.
//!
//! The hub compiles every route on every replica; reconciles only turn its conclusions into
//! status and Events. The hub triggers a reconcile whenever a route's outcome or rollout
//! changes, so a status write never triggers another (no reconcile loop on our own writes).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Config, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::{Client, Resource, ResourceExt};
use llmesh_api::{API_VERSION, LLMBudget, LLMBudgetStatus, LLMRoute, LLMRouteStatus};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tracing::{Instrument, info_span};

use crate::events;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::status;
use crate::stores::Stores;
use crate::tls::FIELD_MANAGER;

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

/// What reconciles share.
pub struct Context {
    client: Client,
    hub: Arc<Hub>,
    recorder: Recorder,
    metrics: Arc<Metrics>,
    /// The last status written per object (keyed by uid): the store may not have caught up
    /// with our own write yet, and comparing against it would repeat Events.
    written_routes: Mutex<HashMap<String, LLMRouteStatus>>,
    written_budgets: Mutex<HashMap<String, LLMBudgetStatus>>,
}

impl Context {
    /// A context for a leader term.
    pub fn new(client: Client, hub: Arc<Hub>, metrics: Arc<Metrics>, identity: &str) -> Arc<Self> {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: Some(identity.to_string()),
        };
        Arc::new(Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            hub,
            metrics,
            written_routes: Mutex::new(HashMap::new()),
            written_budgets: Mutex::new(HashMap::new()),
        })
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

fn now() -> String {
    // Seconds precision, as metav1.Time serialises.
    Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .unwrap_or_else(|_| Timestamp::now())
        .to_string()
}

/// Runs both controllers until the returned future is dropped (leadership lost).
pub async fn run(ctx: Arc<Context>, stores: Stores) {
    let (route_tx, mut route_rx) = mpsc::unbounded_channel::<ObjectRef<LLMRoute>>();
    let (budget_tx, mut budget_rx) = mpsc::unbounded_channel::<ObjectRef<LLMBudget>>();
    ctx.hub.set_triggers(route_tx, budget_tx);
    let config = Config::default()
        .debounce(Duration::from_millis(100))
        .concurrency(MAX_RECONCILES_IN_FLIGHT);
    let routes = Controller::for_shared_stream(futures::stream::pending(), stores.routes.clone())
        .reconcile_on(futures::stream::poll_fn(move |cx| route_rx.poll_recv(cx)))
        .with_config(config.clone())
        .run(reconcile_route, error_policy_route, ctx.clone())
        .for_each(|r| count_ok(&ctx, "LLMRoute", r.is_ok()));
    let budgets = Controller::for_shared_stream(futures::stream::pending(), stores.budgets.clone())
        .reconcile_on(futures::stream::poll_fn(move |cx| budget_rx.poll_recv(cx)))
        .with_config(config)
        .run(reconcile_budget, error_policy_budget, ctx.clone())
        .for_each(|r| count_ok(&ctx, "LLMBudget", r.is_ok()));
    futures::future::join(routes, budgets).await;
}

/// Counts successful reconciles (failures are counted by the error policies).
fn count_ok(ctx: &Context, kind: &str, ok: bool) -> futures::future::Ready<()> {
    if ok {
        ctx.metrics
            .reconciles
            .with_label_values(&[kind, "ok"])
            .inc();
    }
    futures::future::ready(())
}

async fn reconcile_route(route: Arc<LLMRoute>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = route.namespace().unwrap_or_default();
    let name = route.name_any();
    let span = info_span!("reconcile", kind = "LLMRoute", namespace = %ns, name = %name);
    async move {
        let _timer = ctx.metrics.reconcile_seconds.start_timer();
        let generation = route.metadata.generation.unwrap_or_default();
        let Some((outcome, rollout)) = ctx.hub.route_view(&(ns.clone(), name.clone())) else {
            return Ok(Action::requeue(Duration::from_secs(1)));
        };
        if outcome.generation != generation {
            // The hub has not compiled this generation yet; it triggers us when it has.
            return Ok(Action::requeue(Duration::from_secs(2)));
        }
        let uid = route.uid().unwrap_or_default();
        let old = ctx
            .written_routes
            .lock()
            .get(&uid)
            .cloned()
            .or_else(|| route.status.clone());
        let new = status::route_status(generation, &outcome, rollout, old.as_ref(), &now());
        if status::route_status_changed(old.as_ref(), &new) {
            let emits = events::for_change(
                old.as_ref()
                    .map(|s| s.conditions.as_slice())
                    .unwrap_or_default(),
                old.as_ref().and_then(|s| s.observed_generation),
                &new.conditions,
                generation,
                &outcome.warnings,
            );
            apply_status::<LLMRoute>(&ctx.client, &ns, &name, "LLMRoute", &new).await?;
            ctx.metrics
                .status_writes
                .with_label_values(&["LLMRoute"])
                .inc();
            ctx.written_routes.lock().insert(uid, new);
            ctx.publish(route.as_ref(), emits).await;
        }
        Ok(Action::requeue(Duration::from_secs(300)))
    }
    .instrument(span)
    .await
}

async fn reconcile_budget(budget: Arc<LLMBudget>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = budget.namespace().unwrap_or_default();
    let name = budget.name_any();
    let span = info_span!("reconcile", kind = "LLMBudget", namespace = %ns, name = %name);
    async move {
        let _timer = ctx.metrics.reconcile_seconds.start_timer();
        let generation = budget.metadata.generation.unwrap_or_default();
        let Some(view) = ctx.hub.budget_view(&(ns.clone(), name.clone())) else {
            return Ok(Action::requeue(Duration::from_secs(1)));
        };
        if view.generation != generation {
            return Ok(Action::requeue(Duration::from_secs(2)));
        }
        let uid = budget.uid().unwrap_or_default();
        let old = ctx
            .written_budgets
            .lock()
            .get(&uid)
            .cloned()
            .or_else(|| budget.status.clone());
        let new = status::budget_status(generation, view.limit, &view.errors, old.as_ref(), &now());
        if status::budget_status_changed(old.as_ref(), &new) {
            let emits = events::for_change(
                old.as_ref()
                    .map(|s| s.conditions.as_slice())
                    .unwrap_or_default(),
                old.as_ref().and_then(|s| s.observed_generation),
                &new.conditions,
                generation,
                &[],
            );
            apply_status::<LLMBudget>(&ctx.client, &ns, &name, "LLMBudget", &new).await?;
            ctx.metrics
                .status_writes
                .with_label_values(&["LLMBudget"])
                .inc();
            ctx.written_budgets.lock().insert(uid, new);
            ctx.publish(budget.as_ref(), emits).await;
        }
        Ok(Action::requeue(Duration::from_secs(300)))
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

fn error_policy_route(route: Arc<LLMRoute>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(namespace = ?route.namespace(), name = %route.name_any(), error = %error, "reconcile failed; retrying");
    ctx.metrics
        .reconciles
        .with_label_values(&["LLMRoute", "error"])
        .inc();
    Action::requeue(Duration::from_secs(5))
}

fn error_policy_budget(budget: Arc<LLMBudget>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(namespace = ?budget.namespace(), name = %budget.name_any(), error = %error, "reconcile failed; retrying");
    ctx.metrics
        .reconciles
        .with_label_values(&["LLMBudget", "error"])
        .inc();
    Action::requeue(Duration::from_secs(5))
}
