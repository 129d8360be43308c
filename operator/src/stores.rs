//! One watch per resource kind, each feeding an in-memory store, shared by everything in the
//! process (the snapshot hub, the controllers, the webhook). Every change pokes the hub.
//!
//! Pods and Secrets are watched as metadata only, with annotations and managed fields dropped
//! before they are stored: `kubectl apply` leaves a Secret's data in its
//! `last-applied-configuration` annotation, which must not sit in the operator's memory.
//! Pods are filtered to those the webhook injected (`llmesh.io/sidecar=injected`).

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

use crate::inject::{SIDECAR_LABEL, SIDECAR_LABEL_VALUE};

/// Read handles on the four watched kinds.
#[derive(Clone)]
pub struct Stores {
    /// Every LLMRoute.
    pub routes: Store<LLMRoute>,
    /// Every LLMBudget.
    pub budgets: Store<LLMBudget>,
    /// Metadata of injected Pods.
    pub pods: Store<PartialObjectMeta<Pod>>,
    /// Metadata of every Secret (names and resourceVersions; no data, no annotations).
    pub secrets: Store<PartialObjectMeta<Secret>>,
}

impl Stores {
    /// Starts the four watches on `tasks`; each event notifies `changed`.
    pub fn start(client: &Client, changed: Arc<Notify>, tasks: &mut JoinSet<()>) -> Self {
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
            secrets: watch(
                Api::all(client.clone()),
                watcher::Config::default(),
                &changed,
                tasks,
            ),
        }
    }

    /// Waits until every store holds its initial list.
    pub async fn ready(&self) {
        let _ = self.routes.wait_until_ready().await;
        let _ = self.budgets.wait_until_ready().await;
        let _ = self.pods.wait_until_ready().await;
        let _ = self.secrets.wait_until_ready().await;
    }

    /// The resourceVersion of Secret `ns/name`, if it exists.
    pub fn secret_version(&self, ns: &str, name: &str) -> Option<String> {
        self.secrets
            .get(&reflector::ObjectRef::new(name).within(ns))
            .map(|s| s.metadata.resource_version.clone().unwrap_or_default())
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
