//! Fleet spend: the usage reports sidecars send (`POST /v1/usage`), counted exactly once into
//! each budget's [`BudgetLedger`], persisted in a ConfigMap per budget in the operator's
//! namespace (named after the budget's uid), with the API server's optimistic concurrency so any
//! replica can take a report and no two count one. The leader turns the ledgers into
//! `LLMBudget.status` (see `decisions::controller`); the replica that persists a threshold
//! crossing raises its Event, once per threshold and period. docs/architecture.md, "Fleet
//! budgets".

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use llmesh_api::ledger::{
    Applied, BudgetLedger, Cap, FleetSpend, RouteShare, UsageAck, UsageReport,
};
use llmesh_api::money::format_usd;
use llmesh_api::period::period_bounds;
use llmesh_api::snapshot::Budget;
use llmesh_api::{API_VERSION, LLMBudget};
use parking_lot::Mutex;
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use crate::metrics::Metrics;
use crate::pki::tls::FIELD_MANAGER;
use crate::push::hub::Hub;
use crate::push::hub::PodIdentity;

/// The label every ledger ConfigMap carries (the leader watches by it).
pub const LEDGER_LABEL: &str = "llmesh.io/ledger";
/// The annotation naming the namespace of a ledger's budget.
pub const BUDGET_NAMESPACE_ANNOTATION: &str = "llmesh.io/budget-namespace";
/// The annotation naming a ledger's budget.
pub const BUDGET_NAME_ANNOTATION: &str = "llmesh.io/budget-name";
/// The ConfigMap key holding the ledger's JSON.
pub const LEDGER_KEY: &str = "ledger.json";
/// Writes retried when another replica wrote the same ledger in between.
const CONFLICT_RETRIES: usize = 10;

/// The wall clock, Unix seconds (a parameter, so tests are exact).
pub type UnixClock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The system clock.
pub fn system_clock() -> UnixClock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    })
}

/// The name of the ConfigMap holding the ledger of the budget with `uid`.
pub fn ledger_name(uid: &str) -> String {
    format!("llmesh-ledger-{uid}")
}

/// The ledger a ConfigMap holds, if it holds a readable one.
pub fn read_ledger(cm: &ConfigMap) -> Option<BudgetLedger> {
    let text = cm.data.as_ref()?.get(LEDGER_KEY)?;
    match serde_json::from_str(text) {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::warn!(configmap = ?cm.metadata.name, error = %e, "a budget ledger is unreadable; it starts again from zero");
            None
        }
    }
}

/// Why a report was not persisted (the sidecar resends it).
#[derive(Clone, Debug, thiserror::Error)]
pub enum SpendError {
    /// The API server refused or failed a read or write.
    #[error("cannot persist the budget ledger now: {0}")]
    Api(String),
    /// Other replicas kept writing the same ledger.
    #[error("the budget ledger kept changing under this write; resend")]
    Conflict,
    /// The operator has not read the cluster yet: it cannot tell a budget it does not know yet
    /// from one that is gone.
    #[error("the operator is starting and has not read the cluster yet; resend")]
    Starting,
}

/// Counts usage reports into budget ledgers.
pub struct Accountant {
    client: Client,
    /// The operator's namespace: where the ledgers live.
    namespace: String,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    recorder: Recorder,
    clock: UnixClock,
    /// Every ledger, as this replica's watch has them: what fleet totals are answered from.
    ledgers: Store<ConfigMap>,
    /// Reports waiting for their budget's ledger write, by budget uid.
    queues: Mutex<HashMap<String, Queue>>,
    /// Per namespace, counted at most once a second (a count walks every pod): its injected
    /// pods, and how many of them share each limited route.
    sidecars: Mutex<HashMap<String, Sharers>>,
}

/// How long a ledger write waits for more reports to join it.
const BATCH_LINGER: std::time::Duration = std::time::Duration::from_millis(50);

/// The sidecars of one namespace, as last counted.
struct Sharers {
    at: std::time::Instant,
    /// Its injected pods.
    pods: u32,
    /// The pods each route with per-minute limits selects.
    routes: Vec<RouteShare>,
}

/// The reports waiting for one budget's next ledger write.
#[derive(Default)]
struct Queue {
    waiting: Vec<(Arc<UsageReport>, Waiter)>,
    /// Whether a task is writing this budget's ledger (it takes the waiting ones next).
    writing: bool,
}

type Waiter = oneshot::Sender<Result<BudgetLedger, SpendError>>;

/// Watches the ledgers in `namespace` into a store (on `tasks`).
pub fn watch_ledgers(
    client: &Client,
    namespace: &str,
    tasks: &mut JoinSet<()>,
) -> Store<ConfigMap> {
    let (reader, writer) = reflector::store();
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let stream = watcher(api, watcher::Config::default().labels(LEDGER_LABEL))
        .default_backoff()
        .reflect(writer);
    tasks.spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            if let Err(e) = event {
                tracing::warn!(error = %e, "watching budget ledgers failed; retrying");
            }
        }
    });
    reader
}

impl Accountant {
    /// An accountant persisting into `namespace`, answering fleet totals from `ledgers`.
    pub fn new(
        client: Client,
        namespace: String,
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
        identity: &str,
        clock: UnixClock,
        ledgers: Store<ConfigMap>,
    ) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: Some(identity.to_string()),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            namespace,
            hub,
            metrics,
            clock,
            ledgers,
            queues: Mutex::new(HashMap::new()),
            sidecars: Mutex::new(HashMap::new()),
        }
    }

    /// The sidecars of `ns` and of its limited routes, counted at most once a second.
    fn sidecars_in(&self, ns: &str) -> (u32, Vec<RouteShare>) {
        let now = std::time::Instant::now();
        if let Some(s) = self.sidecars.lock().get(ns)
            && now.duration_since(s.at) < std::time::Duration::from_secs(1)
        {
            return (s.pods, s.routes.clone());
        }
        let counted = Sharers {
            at: now,
            pods: self.hub.injected_pods(ns),
            routes: self.hub.route_shares(ns),
        };
        let answer = (counted.pods, counted.routes.clone());
        let mut all = self.sidecars.lock();
        // Namespaces come and go: keep the map to the ones reporting lately.
        all.retain(|_, s| now.duration_since(s.at) < std::time::Duration::from_secs(60));
        all.insert(ns.to_string(), counted);
        answer
    }

    /// Counts `report` from the sidecar of pod `id` into the ledger of every budget of the pod's
    /// namespace it names, and answers once all are persisted, with the fleet's totals for every
    /// budget of the namespace. The reporter is the pod's uid plus the sidecar's own process
    /// nonce: a sidecar cannot write under another pod's name. Entries for budgets that are not
    /// enforced (deleted, invalid) are dropped. A report without entries (`seq` 0) only asks for
    /// the totals.
    pub async fn apply(
        self: &Arc<Self>,
        id: &PodIdentity,
        mut report: UsageReport,
    ) -> Result<UsageAck, SpendError> {
        if !self.hub.is_synced() {
            return Err(SpendError::Starting);
        }
        report.reporter = format!("{}/{}", id.uid, report.reporter);
        if report.seq == 0 {
            // A query: real reports are numbered from 1.
            report.entries.clear();
        }
        let names: BTreeSet<String> = report.entries.iter().map(|e| e.budget.clone()).collect();
        let report = Arc::new(report);
        let mut persisted = BTreeMap::new();
        for name in names {
            let Some((uid, budget)) = self.hub.served_budget(&id.namespace, &name) else {
                self.count("unknown_budget");
                continue;
            };
            let ledger = self.persist(&uid, &budget, &report).await?;
            persisted.insert(name, ledger);
        }
        let now = (self.clock)();
        let (sidecars, routes) = self.sidecars_in(&id.namespace);
        let mut budgets = Vec::new();
        for (uid, budget) in self.hub.served_budgets(&id.namespace) {
            let ledger = match persisted.remove(&budget.name) {
                Some(l) => Some(l),
                None => self
                    .ledgers
                    .get(&ObjectRef::new(&ledger_name(&uid)).within(&self.namespace))
                    .and_then(|cm| read_ledger(&cm)),
            };
            // No ledger for this period yet: nothing spent (the answer still carries the
            // sidecar count, for the share each takes while the operator is away).
            let (current, _) = period_bounds(budget.period, now);
            let ledger = ledger.filter(|l| l.period_start >= current);
            budgets.push(FleetSpend {
                budget: budget.name.clone(),
                period_start: ledger.as_ref().map_or(current, |l| l.period_start),
                spend: ledger.map(|l| l.total).unwrap_or_default(),
                sidecars,
            });
        }
        Ok(UsageAck {
            seq: report.seq,
            budgets,
            routes,
        })
    }

    fn count(&self, result: &str) {
        self.count_n(result, 1);
    }

    fn count_n(&self, result: &str, n: u64) {
        if n > 0 {
            self.metrics
                .ledger_updates
                .with_label_values(&[result])
                .inc_by(n);
        }
    }

    /// Counts `report` into the ledger of `budget` (uid `uid`); returns the ledger as persisted.
    /// Reports for one budget that arrive while its ledger is being written wait and go together
    /// in the next write (one GET and one PUT for all of them), so a fleet reporting every
    /// second makes a few writes a second per budget, not one per sidecar. The write runs in its
    /// own task: a sidecar that hangs up does not stop it for the others.
    async fn persist(
        self: &Arc<Self>,
        uid: &str,
        budget: &Arc<Budget>,
        report: &Arc<UsageReport>,
    ) -> Result<BudgetLedger, SpendError> {
        let (tx, rx) = oneshot::channel();
        let lead = {
            let mut queues = self.queues.lock();
            let q = queues.entry(uid.to_string()).or_default();
            q.waiting.push((report.clone(), tx));
            !std::mem::replace(&mut q.writing, true)
        };
        if lead {
            tokio::spawn(self.clone().drain(uid.to_string(), budget.clone()));
        }
        rx.await.unwrap_or(Err(SpendError::Conflict))
    }

    /// Writes the waiting reports of budget `uid` in batches until none wait.
    async fn drain(self: Arc<Self>, uid: String, budget: Arc<Budget>) {
        loop {
            // Let the reports arriving meanwhile join this write.
            tokio::time::sleep(BATCH_LINGER).await;
            let batch = {
                let mut queues = self.queues.lock();
                let Some(q) = queues.get_mut(&uid) else {
                    return;
                };
                if q.waiting.is_empty() {
                    queues.remove(&uid);
                    return;
                }
                std::mem::take(&mut q.waiting)
            };
            let reports: Vec<&UsageReport> = batch.iter().map(|(r, _)| r.as_ref()).collect();
            let result = self.write(&uid, &budget, &reports).await;
            for (_, tx) in batch {
                let _ = tx.send(result.clone());
            }
        }
    }

    /// Applies `reports` to the ledger and writes it back, retrying on a concurrent write.
    async fn write(
        &self,
        uid: &str,
        budget: &Budget,
        reports: &[&UsageReport],
    ) -> Result<BudgetLedger, SpendError> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
        let name = ledger_name(uid);
        for _ in 0..CONFLICT_RETRIES {
            let now = (self.clock)();
            let (current, _) = period_bounds(budget.period, now);
            let existing = api.get_opt(&name).await.map_err(|e| {
                self.count("error");
                SpendError::Api(e.to_string())
            })?;
            let mut ledger = existing
                .as_ref()
                .and_then(read_ledger)
                .unwrap_or_else(|| BudgetLedger::new(current));
            let counted = reports
                .iter()
                .filter(|r| ledger.apply(&budget.name, r, current, now) == Applied::Counted)
                .count() as u64;
            // Counted once this attempt is final (a conflict applies them all again).
            let duplicates = reports.len() as u64 - counted;
            if counted == 0 {
                self.count_n("duplicate", duplicates);
                return Ok(ledger);
            }
            let crossed = if budget.per_user {
                Vec::new()
            } else {
                ledger.cross_thresholds(Cap::from(budget), &budget.alert_thresholds)
            };
            ledger.prune_reporters(now);
            let cm = self.config_map(&name, budget, &ledger, existing.as_ref());
            let written = match &existing {
                Some(_) => api.replace(&name, &PostParams::default(), &cm).await,
                None => api.create(&PostParams::default(), &cm).await,
            };
            match written {
                Ok(_) => {
                    self.count_n("counted", counted);
                    self.count_n("duplicate", duplicates);
                    self.metrics.ledger_writes.inc();
                    self.alert(uid, budget, &ledger, &crossed).await;
                    return Ok(ledger);
                }
                // 409: another replica wrote it (or created it) in between: read it again.
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    self.count("conflict");
                }
                Err(e) => {
                    self.count("error");
                    return Err(SpendError::Api(e.to_string()));
                }
            }
        }
        Err(SpendError::Conflict)
    }

    fn config_map(
        &self,
        name: &str,
        budget: &Budget,
        ledger: &BudgetLedger,
        existing: Option<&ConfigMap>,
    ) -> ConfigMap {
        let labels = BTreeMap::from([
            (LEDGER_LABEL.to_string(), "true".to_string()),
            (
                "app.kubernetes.io/managed-by".to_string(),
                "llmesh-operator".to_string(),
            ),
        ]);
        let annotations = BTreeMap::from([
            (
                BUDGET_NAMESPACE_ANNOTATION.to_string(),
                budget.namespace.clone(),
            ),
            (BUDGET_NAME_ANNOTATION.to_string(), budget.name.clone()),
        ]);
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(self.namespace.clone()),
                labels: Some(labels),
                annotations: Some(annotations),
                resource_version: existing.and_then(|c| c.metadata.resource_version.clone()),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([(
                LEDGER_KEY.to_string(),
                serde_json::to_string(ledger).unwrap_or_default(),
            )])),
            ..ConfigMap::default()
        }
    }

    /// Raises one Event per threshold crossed (on the LLMBudget) and counts it.
    async fn alert(&self, uid: &str, budget: &Budget, ledger: &BudgetLedger, crossed: &[u32]) {
        if crossed.is_empty() {
            return;
        }
        let reference = ObjectReference {
            api_version: Some(API_VERSION.to_string()),
            kind: Some(LLMBudget::kind(&()).to_string()),
            namespace: Some(budget.namespace.clone()),
            name: Some(budget.name.clone()),
            uid: Some(uid.to_string()),
            ..ObjectReference::default()
        };
        for &threshold in crossed {
            self.metrics
                .budget_alerts
                .with_label_values(&[&threshold.to_string()])
                .inc();
            let event = threshold_event(budget, ledger, threshold);
            let kind = if event.type_ == EventType::Warning {
                "warning"
            } else {
                "normal"
            };
            self.metrics.events.with_label_values(&[kind]).inc();
            if let Err(e) = self.recorder.publish(&event, &reference).await {
                tracing::warn!(error = %e, budget = %budget.name, "cannot publish the budget threshold Event");
            }
            tracing::warn!(
                budget = %format!("{}/{}", budget.namespace, budget.name),
                threshold,
                "the fleet crossed {threshold}% of the budget"
            );
        }
    }
}

/// The Event for a threshold crossed: Normal below 100%, Warning at or above.
pub fn threshold_event(budget: &Budget, ledger: &BudgetLedger, threshold: u32) -> Event {
    let spent = match (budget.limit_usd, budget.limit_tokens) {
        (Some(l), _) => format!(
            "${} of ${}",
            format_usd(ledger.total.micro_usd),
            format_usd(l)
        ),
        (None, Some(t)) => format!("{} of {t} tokens", ledger.total.tokens()),
        (None, None) => String::new(),
    };
    Event {
        type_: if threshold >= 100 {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: "BudgetThreshold".into(),
        note: Some(format!(
            "the pods of namespace {} spent {threshold}% of this budget this period ({spent})",
            budget.namespace
        )),
        action: "CountUsage".into(),
        secondary: None,
    }
}
