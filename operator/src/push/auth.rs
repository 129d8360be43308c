//! Who is polling: the sidecar's projected service-account token, checked with a TokenReview
//! for the `llmesh` audience. The pod it is bound to (from `status.user.extra`) and the
//! namespace of its ServiceAccount decide what the sidecar may receive.
//!
//! Reviews are cached for a minute per token, so a fleet of sidecars re-polling every 30 s
//! costs the API server one review per sidecar per minute; a token the kubelet rotates is a new
//! key and is reviewed afresh. At most [`MAX_REVIEWS_IN_FLIGHT`] reviews run at once: the
//! client speaks HTTP/1.1, so every review in flight is a connection to the API server, and a
//! fleet connecting at once (an operator restart) would otherwise open one per sidecar and keep
//! them in the pool. Tokens are never logged.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, UserInfo};
use kube::Client;
use kube::api::{Api, PostParams};
use llmesh_api::protocol::AUDIENCE;
use parking_lot::Mutex;

use crate::metrics::Metrics;
use crate::push::hub::PodIdentity;

const POD_NAME: &str = "authentication.kubernetes.io/pod-name";
const POD_UID: &str = "authentication.kubernetes.io/pod-uid";
const CACHE_FOR: Duration = Duration::from_secs(60);
/// TokenReviews in flight at most; polls beyond wait for a slot (and find the cache filled if
/// another poll with the same token got there first).
pub const MAX_REVIEWS_IN_FLIGHT: usize = 16;
/// Expired entries are swept when the cache doubles since the last sweep, so it stays near
/// the number of connected sidecars whatever the token rotation.
const FIRST_SWEEP: usize = 1024;

/// Why a token was refused. The message tells the sidecar's operator what to fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// No usable token in the request, or the API server did not authenticate it.
    #[error("{0}")]
    Unauthenticated(String),
    /// The API server could not be asked.
    #[error("cannot verify the token now: {0}")]
    Unavailable(String),
}

/// Verifies sidecar tokens.
pub struct Authenticator {
    client: Client,
    metrics: Arc<Metrics>,
    cache: Mutex<Cache>,
    in_flight: tokio::sync::Semaphore,
}

#[derive(Default)]
struct Cache {
    reviewed: HashMap<String, (PodIdentity, Instant)>,
    sweep_at: usize,
}

impl Authenticator {
    /// An authenticator asking the API server through `client`.
    pub fn new(client: Client, metrics: Arc<Metrics>) -> Self {
        Self {
            client,
            metrics,
            cache: Mutex::new(Cache {
                reviewed: HashMap::new(),
                sweep_at: FIRST_SWEEP,
            }),
            in_flight: tokio::sync::Semaphore::new(MAX_REVIEWS_IN_FLIGHT),
        }
    }

    /// The pod behind an `Authorization` header value.
    pub async fn identify(&self, authorization: Option<&str>) -> Result<PodIdentity, AuthError> {
        let token = authorization
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                AuthError::Unauthenticated(
                    "missing `Authorization: Bearer <token>`: send the pod's projected service-account token (audience llmesh)".into(),
                )
            })?;
        if let Some(id) = self.cached(token) {
            return Ok(id);
        }
        let _slot = self
            .in_flight
            .acquire()
            .await
            .map_err(|_| AuthError::Unavailable("the operator is shutting down".into()))?;
        if let Some(id) = self.cached(token) {
            return Ok(id);
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: Some(vec![AUDIENCE.to_string()]),
            },
            ..Default::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| {
                self.metrics
                    .token_reviews
                    .with_label_values(&["error"])
                    .inc();
                let why = match &e {
                    kube::Error::Api(s) => format!("TokenReview failed: {} {}", s.code, s.reason),
                    _ => "the API server is unreachable".to_string(),
                };
                AuthError::Unavailable(why)
            })?;
        let status = answer.status.unwrap_or_default();
        let identity = verdict(
            status.authenticated.unwrap_or(false),
            status.audiences.as_deref().unwrap_or_default(),
            status.user.as_ref(),
            status.error.as_deref(),
        );
        match identity {
            Ok(id) => {
                self.metrics.token_reviews.with_label_values(&["ok"]).inc();
                let mut cache = self.cache.lock();
                if cache.reviewed.len() >= cache.sweep_at {
                    cache.reviewed.retain(|_, (_, at)| at.elapsed() < CACHE_FOR);
                    cache.sweep_at = (cache.reviewed.len() * 2).max(FIRST_SWEEP);
                }
                cache
                    .reviewed
                    .insert(token.to_string(), (id.clone(), Instant::now()));
                Ok(id)
            }
            Err(e) => {
                self.metrics
                    .token_reviews
                    .with_label_values(&["rejected"])
                    .inc();
                Err(e)
            }
        }
    }
}

impl Authenticator {
    fn cached(&self, token: &str) -> Option<PodIdentity> {
        match self.cache.lock().reviewed.get(token) {
            Some((id, at)) if at.elapsed() < CACHE_FOR => Some(id.clone()),
            _ => None,
        }
    }
}

/// The pod identity in a TokenReview's answer, or why there is none. Pure, for tests.
pub fn verdict(
    authenticated: bool,
    audiences: &[String],
    user: Option<&UserInfo>,
    error: Option<&str>,
) -> Result<PodIdentity, AuthError> {
    if !authenticated {
        return Err(AuthError::Unauthenticated(format!(
            "the token was not accepted ({}): use the projected token with audience llmesh, and check it has not expired",
            error.unwrap_or("no reason given")
        )));
    }
    if !audiences.iter().any(|a| a == AUDIENCE) {
        return Err(AuthError::Unauthenticated(
            "the token is not for audience llmesh: project it with `audience: llmesh`".into(),
        ));
    }
    let user = user.ok_or_else(|| AuthError::Unauthenticated("the token has no user".into()))?;
    let username = user.username.as_deref().unwrap_or_default();
    let namespace = username
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
        .map(|(ns, _)| ns.to_string())
        .ok_or_else(|| {
            AuthError::Unauthenticated(format!(
                "`{username}` is not a service account: sidecars authenticate with their pod's service-account token"
            ))
        })?;
    let extra = |key: &str| {
        user.extra
            .as_ref()
            .and_then(|e| e.get(key))
            .and_then(|v| v.first())
            .cloned()
    };
    match (extra(POD_NAME), extra(POD_UID)) {
        (Some(pod), Some(uid)) => Ok(PodIdentity {
            namespace,
            pod,
            uid,
        }),
        _ => Err(AuthError::Unauthenticated(
            "the token is not bound to a Pod: use the projected token the kubelet mounts (or a TokenRequest bound to the pod)".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn user(name: &str, pod: Option<(&str, &str)>) -> UserInfo {
        let mut extra = BTreeMap::new();
        if let Some((p, u)) = pod {
            extra.insert(POD_NAME.to_string(), vec![p.to_string()]);
            extra.insert(POD_UID.to_string(), vec![u.to_string()]);
        }
        UserInfo {
            username: Some(name.into()),
            extra: Some(extra),
            ..Default::default()
        }
    }

    fn aud() -> Vec<String> {
        vec!["llmesh".into()]
    }

    #[test]
    fn a_pod_bound_service_account_token_names_the_pod_and_namespace() {
        let u = user(
            "system:serviceaccount:team-a:default",
            Some(("web-1", "uid-1")),
        );
        assert_eq!(
            verdict(true, &aud(), Some(&u), None).unwrap(),
            PodIdentity {
                namespace: "team-a".into(),
                pod: "web-1".into(),
                uid: "uid-1".into()
            }
        );
    }

    #[tokio::test]
    async fn reviews_in_flight_are_bounded() {
        use http_body_util::BodyExt;
        use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
        let now = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let total = Arc::new(AtomicUsize::new(0));
        let (n, p, t) = (now.clone(), peak.clone(), total.clone());
        // An API server that takes 10 ms per TokenReview and binds each token to a pod of
        // the same name.
        let service = tower::service_fn(move |req: http::Request<kube::client::Body>| {
            let (n, p, t) = (n.clone(), p.clone(), t.clone());
            async move {
                p.fetch_max(n.fetch_add(1, SeqCst) + 1, SeqCst);
                t.fetch_add(1, SeqCst);
                let body = req.into_body().collect().await?.to_bytes();
                let review: TokenReview = serde_json::from_slice(&body)?;
                let token = review.spec.token.unwrap_or_default();
                tokio::time::sleep(Duration::from_millis(10)).await;
                n.fetch_sub(1, SeqCst);
                let answer = serde_json::json!({
                    "apiVersion": "authentication.k8s.io/v1",
                    "kind": "TokenReview",
                    "spec": {},
                    "status": {
                        "authenticated": true,
                        "audiences": ["llmesh"],
                        "user": {
                            "username": "system:serviceaccount:team:default",
                            "extra": {POD_NAME: [token], POD_UID: ["uid"]},
                        },
                    },
                });
                let body = kube::client::Body::from(serde_json::to_vec(&answer)?);
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(http::Response::new(body))
            }
        });
        let auth = Arc::new(Authenticator::new(
            Client::new(service, "default"),
            Arc::new(Metrics::new()),
        ));
        // A fleet connecting at once.
        let mut polls = tokio::task::JoinSet::new();
        for i in 0..200 {
            let auth = auth.clone();
            polls.spawn(async move {
                let id = auth.identify(Some(&format!("Bearer pod-{i}"))).await;
                (i, id)
            });
        }
        while let Some(done) = polls.join_next().await {
            let (i, id) = done.unwrap();
            assert_eq!(id.unwrap().pod, format!("pod-{i}"));
        }
        let peak = peak.load(SeqCst);
        assert!(
            (2..=MAX_REVIEWS_IN_FLIGHT).contains(&peak),
            "{peak} reviews in flight"
        );
        assert_eq!(total.load(SeqCst), 200);
        // Their next polls are answered from the cache.
        for i in 0..200 {
            auth.identify(Some(&format!("Bearer pod-{i}")))
                .await
                .unwrap();
        }
        assert_eq!(total.load(SeqCst), 200);
    }

    #[test]
    fn refusals_say_what_to_fix() {
        let u = user(
            "system:serviceaccount:team-a:default",
            Some(("web-1", "uid-1")),
        );
        let e = verdict(false, &aud(), Some(&u), Some("token expired")).unwrap_err();
        assert!(e.to_string().contains("token expired"), "{e}");
        let e = verdict(
            true,
            &["https://kubernetes.default.svc".into()],
            Some(&u),
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("audience llmesh"), "{e}");
        let unbound = user("system:serviceaccount:team-a:default", None);
        let e = verdict(true, &aud(), Some(&unbound), None).unwrap_err();
        assert!(e.to_string().contains("not bound to a Pod"), "{e}");
        let person = user("alice", Some(("web-1", "uid-1")));
        let e = verdict(true, &aud(), Some(&person), None).unwrap_err();
        assert!(e.to_string().contains("not a service account"), "{e}");
    }
}
