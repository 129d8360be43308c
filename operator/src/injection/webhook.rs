//! `POST /mutate-pods`: the mutating admission webhook. Decides with [`crate::injection::inject::decide`]
//! (pod label, else namespace label), builds the injected pod with [`crate::injection::inject::inject`],
//! and answers with the JSON patch between the two. A pod that opted in is refused, with a
//! message saying why, only when its `llmesh.io/sidecar-*` annotations are bad or the cluster
//! is too old for native sidecars; every other pod is allowed, and a malformed one is refused by
//! the API server's own validation.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use http::{Response, StatusCode, header::CONTENT_TYPE};
use http_body_util::Full;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Client;
use kube::api::Api;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};

use crate::injection::inject::{self, Decision, SidecarTemplate};
use crate::metrics::Metrics;
use crate::pki::tls::TlsManager;

/// What the webhook needs.
pub struct Injector {
    /// Reads namespace labels.
    pub client: Client,
    /// The sidecar to inject (its `ca_pem` is refreshed from `tls` per request).
    pub template: SidecarTemplate,
    /// The operator's CA, which sidecars trust.
    pub tls: Arc<TlsManager>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Why this cluster cannot run the injected sidecar (`None`: it can), learnt from the API
    /// server's `/version` on the first injection.
    pub cluster: tokio::sync::OnceCell<Option<String>>,
}

impl Injector {
    /// Answers one AdmissionReview.
    pub async fn handle(&self, body: &[u8]) -> Response<Full<Bytes>> {
        let review: AdmissionReview<DynamicObject> = match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => {
                return Response::builder()
                    .status(StatusCode::BAD_REQUEST)
                    .body(Full::new(Bytes::from(format!(
                        "not an AdmissionReview: {e}\n"
                    ))))
                    .unwrap_or_default();
            }
        };
        let request: Result<AdmissionRequest<DynamicObject>, _> = review.try_into();
        let response = match request {
            Ok(req) => self.review(&req).await,
            Err(e) => AdmissionResponse::invalid(e.to_string()),
        };
        let body = serde_json::to_vec(&response.into_review()).unwrap_or_default();
        Response::builder()
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_default()
    }

    async fn review(&self, req: &AdmissionRequest<DynamicObject>) -> AdmissionResponse {
        let allow = AdmissionResponse::from(req);
        let Some(object) = &req.object else {
            return allow;
        };
        let pod: Pod = match serde_json::to_value(object).and_then(serde_json::from_value) {
            Ok(p) => p,
            Err(e) => {
                self.count("error");
                tracing::warn!(error = %e, "admission: not a Pod; allowing unchanged");
                return allow;
            }
        };
        let ns = req.namespace.clone().unwrap_or_default();
        let labels = self.namespace_labels(&ns).await;
        match inject::decide(&pod, &labels) {
            Decision::AlreadyInjected => {
                self.count("already");
                allow
            }
            Decision::Skip(_) => {
                self.count("skipped");
                allow
            }
            Decision::Inject => {
                let checked = match self.cluster_refusal().await {
                    Some(why) => Err(why),
                    None => inject::annotations::apply(&pod, &self.template),
                };
                let mut template = match checked {
                    Ok(t) => t,
                    Err(why) => {
                        self.count("refused");
                        tracing::info!(namespace = %ns, pod = %pod_name(&pod), reason = %why, "refused a pod that opted in");
                        return allow.deny(why);
                    }
                };
                template.ca_pem = self.tls.ca_pem();
                let injected = inject::inject(&pod, &template);
                // Diff typed against typed, so fields this build does not know are untouched.
                let (Ok(before), Ok(after)) =
                    (serde_json::to_value(&pod), serde_json::to_value(&injected))
                else {
                    self.count("error");
                    return allow;
                };
                let patch = json_patch::diff(&before, &after);
                match allow.clone().with_patch(patch) {
                    Ok(r) => {
                        self.count("injected");
                        tracing::info!(namespace = %ns, pod = %pod_name(&pod), "injected the llmesh sidecar");
                        r
                    }
                    Err(e) => {
                        self.count("error");
                        tracing::error!(error = %e, "admission: cannot encode the patch");
                        allow
                    }
                }
            }
        }
    }

    /// Why the cluster cannot run native sidecars, if it cannot. When `/version` cannot be read
    /// the pod is injected, and the question asked again next time.
    async fn cluster_refusal(&self) -> Option<String> {
        let known = self
            .cluster
            .get_or_try_init(|| async {
                let v = self.client.apiserver_version().await?;
                Ok::<_, kube::Error>(inject::native_sidecars(&v.major, &v.minor).err())
            })
            .await;
        match known {
            Ok(refusal) => refusal.clone(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the cluster's version; injecting as if it has native sidecars");
                None
            }
        }
    }

    async fn namespace_labels(&self, ns: &str) -> BTreeMap<String, String> {
        if ns.is_empty() {
            return BTreeMap::new();
        }
        let api: Api<Namespace> = Api::all(self.client.clone());
        match api.get_metadata_opt(ns).await {
            Ok(Some(m)) => m.metadata.labels.unwrap_or_default(),
            Ok(None) => BTreeMap::new(),
            Err(e) => {
                tracing::warn!(namespace = %ns, error = %e, "cannot read namespace labels; only a pod label opts in now");
                BTreeMap::new()
            }
        }
    }

    fn count(&self, result: &str) {
        self.metrics.admissions.with_label_values(&[result]).inc();
    }
}

fn pod_name(pod: &Pod) -> String {
    pod.metadata
        .name
        .clone()
        .or_else(|| pod.metadata.generate_name.clone().map(|g| format!("{g}*")))
        .unwrap_or_default()
}
