//! Who is polling: the sidecar's projected service-account token, checked with a TokenReview
//! for the `llmesh` audience. The pod it is bound to (from `status.user.extra`) and the
//! namespace of its ServiceAccount decide what the sidecar may receive.
//!
//! Reviews are cached for a minute per token, so a fleet of sidecars re-polling every 30 s
//! costs the API server one review per sidecar per minute; a token the kubelet rotates is a new
//! key and is reviewed afresh. Tokens are never logged.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, UserInfo};
use kube::Client;
use kube::api::{Api, PostParams};
use llmesh_api::protocol::AUDIENCE;
use parking_lot::Mutex;

use crate::hub::PodIdentity;
use crate::metrics::Metrics;

const POD_NAME: &str = "authentication.kubernetes.io/pod-name";
const POD_UID: &str = "authentication.kubernetes.io/pod-uid";
const CACHE_FOR: Duration = Duration::from_secs(60);
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
        if let Some((id, at)) = self.cache.lock().reviewed.get(token)
            && at.elapsed() < CACHE_FOR
        {
            return Ok(id.clone());
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
