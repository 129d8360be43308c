//! Whether a pod that polls really runs the injected sidecar.
//!
//! The operator's pod watch selects `llmesh.io/sidecar=injected`, a label anyone creating a pod
//! can set: a pod that opted out (`llmesh.io/inject=disabled`) and has no sidecar, but carries
//! the label by hand, would otherwise receive its namespace's snapshot, keys included. So the
//! first poll of each pod reads the pod's spec (a `list` by name, which the operator's RBAC
//! already allows, rather than a `get` it does not need otherwise) and checks that it holds the
//! sidecar ([`inject::has_sidecar`]). A pod's containers cannot change after creation, so the
//! verdict is kept for the pod's uid: later polls, and reconnects after an operator outage of
//! the same replica, cost nothing. At most [`MAX_CHECKS_IN_FLIGHT`] reads run at once, as for
//! TokenReviews.
//!
//! The refusal does not name the label: it says what the operator serves, not what to forge.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, ListParams};
use kube::runtime::reflector::Store;
use parking_lot::Mutex;

use crate::injection::inject;
use crate::push::hub::PodIdentity;

/// Pod reads in flight at most.
pub const MAX_CHECKS_IN_FLIGHT: usize = 16;
/// Verdicts are swept (pods no longer watched are forgotten) when their number doubles.
const FIRST_SWEEP: usize = 1024;

/// Why a pod is not served.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    /// The pod is gone, or does not run the injected sidecar.
    #[error("{0}")]
    Refused(String),
    /// The API server could not be asked.
    #[error("cannot check the pod now: {0}")]
    Unavailable(String),
}

/// Checks pods' specs, once per pod uid.
pub struct PodCheck {
    client: Client,
    pods: Store<kube::api::PartialObjectMeta<Pod>>,
    verdicts: Mutex<Verdicts>,
    in_flight: tokio::sync::Semaphore,
}

struct Verdicts {
    by_uid: HashMap<String, bool>,
    sweep_at: usize,
}

impl PodCheck {
    /// Reads pods with `client`; `pods` (the watched injected pods) bounds what is remembered.
    pub fn new(client: Client, pods: Store<kube::api::PartialObjectMeta<Pod>>) -> Self {
        Self {
            client,
            pods,
            verdicts: Mutex::new(Verdicts {
                by_uid: HashMap::new(),
                sweep_at: FIRST_SWEEP,
            }),
            in_flight: tokio::sync::Semaphore::new(MAX_CHECKS_IN_FLIGHT),
        }
    }

    /// Ok when the pod behind `id` runs the injected sidecar.
    pub async fn check(&self, id: &PodIdentity) -> Result<(), CheckError> {
        if let Some(ok) = self.known(&id.uid) {
            return verdict(ok, id);
        }
        let _slot = self
            .in_flight
            .acquire()
            .await
            .map_err(|_| CheckError::Unavailable("the operator is shutting down".into()))?;
        if let Some(ok) = self.known(&id.uid) {
            return verdict(ok, id);
        }
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &id.namespace);
        let params = ListParams::default().fields(&format!("metadata.name={}", id.pod));
        let list = api.list(&params).await.map_err(|e| {
            CheckError::Unavailable(match e {
                kube::Error::Api(s) => format!("reading the pod failed: {} {}", s.code, s.reason),
                _ => "the API server is unreachable".into(),
            })
        })?;
        let Some(pod) = list
            .items
            .into_iter()
            .find(|p| p.metadata.uid.as_deref() == Some(id.uid.as_str()))
        else {
            // Not remembered: a pod created a moment ago may show up on the next poll.
            return Err(gone(id));
        };
        let ok = inject::has_sidecar(&pod);
        self.remember(&id.uid, ok);
        verdict(ok, id)
    }

    fn known(&self, uid: &str) -> Option<bool> {
        self.verdicts.lock().by_uid.get(uid).copied()
    }

    fn remember(&self, uid: &str, ok: bool) {
        let mut v = self.verdicts.lock();
        if v.by_uid.len() >= v.sweep_at {
            let live: std::collections::HashSet<String> = self
                .pods
                .state()
                .iter()
                .filter_map(|p| p.metadata.uid.clone())
                .collect();
            v.by_uid.retain(|uid, _| live.contains(uid));
            v.sweep_at = (v.by_uid.len() * 2).max(FIRST_SWEEP);
        }
        v.by_uid.insert(uid.to_string(), ok);
    }
}

fn gone(id: &PodIdentity) -> CheckError {
    CheckError::Refused(format!(
        "Pod {}/{} (uid {}) does not exist",
        id.namespace, id.pod, id.uid
    ))
}

/// The answer for a pod whose spec does (`true`) or does not hold the sidecar. Pure, for tests.
pub fn verdict(runs_sidecar: bool, id: &PodIdentity) -> Result<(), CheckError> {
    if runs_sidecar {
        Ok(())
    } else {
        Err(CheckError::Refused(format!(
            "Pod {}/{} does not run the llmesh sidecar: the operator serves only pods the injection webhook injected (label the pod or its namespace llmesh.io/inject=enabled and recreate the pod)",
            id.namespace, id.pod
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> PodIdentity {
        PodIdentity {
            namespace: "team".into(),
            pod: "web".into(),
            uid: "u1".into(),
        }
    }

    #[test]
    fn a_pod_without_the_sidecar_is_refused_without_naming_the_injected_label() {
        assert_eq!(verdict(true, &id()), Ok(()));
        let e = verdict(false, &id()).unwrap_err().to_string();
        assert!(e.contains("team/web") && e.contains("does not run"), "{e}");
        assert!(!e.contains(inject::SIDECAR_LABEL), "{e}");
    }

    #[test]
    fn the_spec_decides_not_the_label() {
        let mut pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "labels": {"llmesh.io/sidecar": "injected"}},
            "spec": {"containers": [{"name": "app", "image": "app:1"}]},
        }))
        .unwrap();
        assert!(!inject::has_sidecar(&pod));
        use clap::Parser;
        let template =
            crate::settings::Settings::parse_from(["llmesh-operator"]).sidecar_template();
        pod = inject::inject(&pod, &template);
        assert!(inject::has_sidecar(&pod));
    }
}
