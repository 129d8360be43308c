//! `GET /v1/snapshot?version=V[&delta=1]`: the sidecar's long-poll (see
//! `llmesh_api::protocol`). Answers at once when the pod's snapshot differs from `V` (with
//! only the changes from `V` when the sidecar takes deltas and `V` is still known), holds
//! otherwise until it changes or [`HOLD`] passes (304), and ends held polls promptly when the
//! operator shuts down.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use llmesh_api::protocol::{
    DELTA_BASE_HEADER, ErrorBody, HOLD, VERSION_HEADER, version_from_query, wants_delta,
};
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::push::auth::{AuthError, Authenticator};
use crate::push::hub::{Hub, PodIdentity, Refusal};
use crate::push::podcheck::{CheckError, PodCheck};

/// What the poll handler needs.
pub struct Poller {
    /// The snapshot hub.
    pub hub: Arc<Hub>,
    /// Token verification.
    pub auth: Authenticator,
    /// Whether the pod behind a token runs the sidecar.
    pub pods: PodCheck,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Turns true when the operator shuts down.
    pub shutdown: watch::Receiver<bool>,
    /// How long to hold a poll whose version is current.
    pub hold: Duration,
}

/// How long to wait for a just-created pod to show up in the watch before refusing it.
const POD_GRACE: Duration = Duration::from_secs(3);

pub(crate) fn json_error(
    code: StatusCode,
    message: String,
    retry_after: Option<u64>,
) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(&ErrorBody { error: message }).unwrap_or_default();
    let mut r = Response::builder()
        .status(code)
        .header(CONTENT_TYPE, "application/json")
        .header(CACHE_CONTROL, "no-store");
    if let Some(s) = retry_after {
        r = r.header(RETRY_AFTER, s.to_string());
    }
    r.body(Full::new(Bytes::from(body))).unwrap_or_default()
}

impl Poller {
    /// A poller with the protocol's hold time.
    pub fn new(
        hub: Arc<Hub>,
        auth: Authenticator,
        pods: PodCheck,
        metrics: Arc<Metrics>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self {
            hub,
            auth,
            pods,
            metrics,
            shutdown,
            hold: HOLD,
        }
    }

    /// Answers one poll.
    pub async fn handle<B>(&self, req: Request<B>) -> Response<Full<Bytes>> {
        let response = self.answer(req).await;
        self.metrics
            .polls
            .with_label_values(&[response.status().as_str()])
            .inc();
        response
    }

    /// The pod behind an `Authorization` header value, checked to run the injected sidecar; or
    /// the error answer to send (`401`, `403`, `503`).
    pub async fn identify(
        &self,
        authorization: Option<&str>,
    ) -> Result<PodIdentity, Response<Full<Bytes>>> {
        let id = match self.auth.identify(authorization).await {
            Ok(id) => id,
            Err(AuthError::Unauthenticated(m)) => {
                return Err(json_error(StatusCode::UNAUTHORIZED, m, None));
            }
            Err(e @ AuthError::Unavailable(_)) => {
                return Err(json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    e.to_string(),
                    Some(2),
                ));
            }
        };
        // The label the pod watch selects on is the pod author's claim; its spec is proof.
        match Box::pin(self.pods.check(&id)).await {
            Ok(()) => Ok(id),
            Err(CheckError::Refused(m)) => Err(json_error(StatusCode::FORBIDDEN, m, None)),
            Err(e @ CheckError::Unavailable(_)) => Err(json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                e.to_string(),
                Some(2),
            )),
        }
    }

    async fn answer<B>(&self, req: Request<B>) -> Response<Full<Bytes>> {
        let serving = version_from_query(req.uri().query());
        let delta = wants_delta(req.uri().query()) && !serving.is_empty();
        let authorization = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        // The request's header values share hyper's read buffer. Held, they would keep that
        // buffer alive beside the one hyper reads into next, for as long as the poll is held.
        drop(req);
        // Boxed: the TokenReview's future is larger than everything else here, and this
        // future lives as long as the poll is held. The token is not needed past it.
        let identified = Box::pin(self.identify(authorization.as_deref())).await;
        drop(authorization);
        let id = match identified {
            Ok(id) => id,
            Err(refused) => return refused,
        };
        let mut shutdown = self.shutdown.clone();
        let deadline = tokio::time::Instant::now() + self.hold;
        let pod_deadline = tokio::time::Instant::now() + POD_GRACE;
        let mut sub = loop {
            match self.hub.subscribe(&id, &serving) {
                Ok(sub) => break sub,
                Err(Refusal::Starting) if tokio::time::Instant::now() < deadline => {
                    tokio::select! {
                        () = self.hub.synced() => {}
                        () = tokio::time::sleep_until(deadline) => {}
                    }
                }
                Err(Refusal::Starting) => {
                    return json_error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the operator is starting and has not read the cluster yet".into(),
                        Some(1),
                    );
                }
                Err(Refusal::UnknownPod(_)) if tokio::time::Instant::now() < pod_deadline => {
                    // The pod may be newer than our watch.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(Refusal::UnknownPod(m)) => {
                    return json_error(StatusCode::FORBIDDEN, m, None);
                }
            }
        };
        let mut woke = false;
        loop {
            let current = sub.rx.borrow_and_update().clone();
            if let Some(p) = current
                && p.version != serving
            {
                let mut r = Response::builder()
                    .status(StatusCode::OK)
                    .header(CONTENT_TYPE, "application/json")
                    .header(CACHE_CONTROL, "no-store")
                    .header(VERSION_HEADER, p.version.as_str());
                // A delta when the sidecar takes one, its base is still known here, and it is
                // smaller than the whole.
                let changes = delta
                    .then(|| sub.base(&serving))
                    .flatten()
                    .map(|base| p.delta_from(&base))
                    .filter(|d| d.len() < p.body.len());
                let (body, form) = match changes {
                    Some(d) => {
                        r = r.header(DELTA_BASE_HEADER, serving.as_str());
                        (d, "delta")
                    }
                    None => (p.body.clone(), "full"),
                };
                self.metrics
                    .snapshot_bytes
                    .with_label_values(&[form])
                    .inc_by(body.len() as u64);
                self.metrics.observe_fanout(woke, p.age());
                return r.body(Full::new(body)).unwrap_or_default();
            }
            tokio::select! {
                changed = sub.rx.changed() => {
                    woke = true;
                    if changed.is_err() {
                        return json_error(
                            StatusCode::FORBIDDEN,
                            format!("Pod {}/{} is gone or no longer injected", id.namespace, id.pod),
                            None,
                        );
                    }
                }
                () = tokio::time::sleep_until(deadline) => {
                    return Response::builder()
                        .status(StatusCode::NOT_MODIFIED)
                        .header(VERSION_HEADER, serving.as_str())
                        .body(Full::new(Bytes::new()))
                        .unwrap_or_default();
                }
                _ = shutdown.wait_for(|s| *s) => {
                    return json_error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the operator replica is shutting down; poll again".into(),
                        Some(1),
                    );
                }
            }
        }
    }
}
