//! One watch per resource kind, each feeding an in-memory store, shared by everything in the
//! process (the snapshot hub, the controllers, the webhook). Every change pokes the hub.
//!
//! Pods and Secrets are watched as metadata only, with annotations and managed fields dropped
//! before they are stored: `kubectl apply` leaves a Secret's data in its
//! `last-applied-configuration` annotation, which must not sit in the operator's memory.
//! Pods are filtered to those the webhook injected (`llmesh.io/sidecar=injected`).
//!
//! Secrets are watched in every namespace, or, with `--secret-namespaces`, with one watch per
//! listed namespace, so the operator needs Secret permissions only there.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use llmesh_api::{LLMBudget, LLMRoute};
use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::injection::inject::{SIDECAR_LABEL, SIDECAR_LABEL_VALUE};

/// Where the operator reads Secrets (`--secret-namespaces`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretScope {
    /// Every namespace (the chart's default: a ClusterRole rule on Secrets).
    Cluster,
    /// Only these namespaces (a Role in each: the chart's `secrets.namespaces`).
    Namespaces(BTreeSet<String>),
}

impl SecretScope {
    /// The scope a `--secret-namespaces` list asks for; an empty list means every namespace.
    pub fn from_list(list: &[String]) -> Self {
        let names: BTreeSet<String> = list
            .iter()
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
            .collect();
        if names.is_empty() {
            Self::Cluster
        } else {
            Self::Namespaces(names)
        }
    }

    /// Whether Secrets in `ns` are read.
    pub fn covers(&self, ns: &str) -> bool {
        match self {
            Self::Cluster => true,
            Self::Namespaces(names) => names.contains(ns),
        }
    }

    /// Why a route in `ns` cannot have the Secret it references (`ns` is outside the scope).
    pub fn refusal(&self, ns: &str) -> String {
        let listed = match self {
            Self::Cluster => String::new(),
            Self::Namespaces(names) => names.iter().cloned().collect::<Vec<_>>().join(","),
        };
        format!(
            "the operator reads Secrets only in the namespaces {listed} (--secret-namespaces / LLMESH_SECRET_NAMESPACES), not in {ns}: ask the platform team to add {ns} to that list and to grant the operator get/list/watch on secrets there (a Role and RoleBinding there: the Helm chart's secrets.namespaces, as in deploy/rendered-namespaced.yaml)"
        )
    }
}

/// Metadata of Secrets (names and resourceVersions; no data, no annotations): one store for
/// the cluster, or one per namespace in the scope.
#[derive(Clone)]
pub struct SecretStores {
    scope: SecretScope,
    stores: Arc<BTreeMap<String, Store<PartialObjectMeta<Secret>>>>,
}

/// The key of the one cluster-wide store in [`SecretStores`].
const ALL: &str = "";

impl SecretStores {
    fn start(
        client: &Client,
        scope: SecretScope,
        changed: &Arc<Notify>,
        tasks: &mut JoinSet<()>,
    ) -> Self {
        let mut stores: BTreeMap<String, Store<PartialObjectMeta<Secret>>> = BTreeMap::new();
        match &scope {
            SecretScope::Cluster => {
                let api = Api::all(client.clone());
                stores.insert(
                    ALL.to_string(),
                    watch(api, watcher::Config::default(), changed, tasks),
                );
            }
            SecretScope::Namespaces(names) => {
                for ns in names {
                    let api = Api::namespaced(client.clone(), ns);
                    stores.insert(
                        ns.clone(),
                        watch(api, watcher::Config::default(), changed, tasks),
                    );
                }
            }
        }
        Self {
            scope,
            stores: Arc::new(stores),
        }
    }

    /// Where Secrets are read.
    pub fn scope(&self) -> &SecretScope {
        &self.scope
    }

    fn store_for(&self, ns: &str) -> Option<&Store<PartialObjectMeta<Secret>>> {
        match self.scope {
            SecretScope::Cluster => self.stores.get(ALL),
            SecretScope::Namespaces(_) => self.stores.get(ns),
        }
    }
}

/// Read handles on the four watched kinds.
#[derive(Clone)]
pub struct Stores {
    /// Every LLMRoute.
    pub routes: Store<LLMRoute>,
    /// Every LLMBudget.
    pub budgets: Store<LLMBudget>,
    /// Metadata of injected Pods.
    pub pods: Store<PartialObjectMeta<Pod>>,
    /// Metadata of the Secrets in the scope.
    pub secrets: SecretStores,
}

impl Stores {
    /// Starts the watches on `tasks` (Secrets in `secret_scope`); each event notifies
    /// `changed`.
    pub fn start(
        client: &Client,
        secret_scope: SecretScope,
        changed: Arc<Notify>,
        tasks: &mut JoinSet<()>,
    ) -> Self {
        let pods_config =
            watcher::Config::default().labels(&format!("{SIDECAR_LABEL}={SIDECAR_LABEL_VALUE}"));
        Self {
            routes: watch(
                Api::all(client.clone()),
                watcher::Config::default(),
                &changed,
                tasks,
            ),
            budgets: watch(
                Api::all(client.clone()),
                watcher::Config::default(),
                &changed,
                tasks,
            ),
            pods: watch(Api::all(client.clone()), pods_config, &changed, tasks),
            secrets: SecretStores::start(client, secret_scope, &changed, tasks),
        }
    }

    /// Waits until every store holds its initial list.
    pub async fn ready(&self) {
        let _ = self.routes.wait_until_ready().await;
        let _ = self.budgets.wait_until_ready().await;
        let _ = self.pods.wait_until_ready().await;
        for store in self.secrets.stores.values() {
            let _ = store.wait_until_ready().await;
        }
    }

    /// The resourceVersion of Secret `ns/name`, if it exists and is in the scope.
    pub fn secret_version(&self, ns: &str, name: &str) -> Option<String> {
        self.secrets
            .store_for(ns)?
            .get(&reflector::ObjectRef::new(name).within(ns))
            .map(|s| s.metadata.resource_version.clone().unwrap_or_default())
    }

    /// What the watch knows of Secret `ns/name`: whether it exists, or why it cannot know.
    pub fn secret_seen(&self, ns: &str, name: &str) -> Result<bool, String> {
        if !self.secrets.scope.covers(ns) {
            return Err(self.secrets.scope.refusal(ns));
        }
        Ok(self.secret_version(ns, name).is_some())
    }
}

fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
    changed: &Arc<Notify>,
    tasks: &mut JoinSet<()>,
) -> Store<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let changed = changed.clone();
    let kind = K::kind(&()).to_string();
    let strip_annotations = matches!(kind.as_str(), "Secret" | "Pod");
    let stream = watcher(api, config)
        .default_backoff()
        .modify(move |o| {
            let meta = o.meta_mut();
            meta.managed_fields = None;
            if strip_annotations {
                meta.annotations = None;
            }
        })
        .reflect(writer);
    tasks.spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => changed.notify_one(),
                Err(e) => {
                    tracing::warn!(kind = %kind, error = %e, "watch failed; retrying with backoff")
                }
            }
        }
    });
    reader
}
