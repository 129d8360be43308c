//! The two listeners: HTTPS for sidecars and the API server (snapshot long-poll, admission
//! webhook), and plain HTTP on a separate port for Prometheus and probes (`/metrics`,
//! `/healthz`, `/readyz`), so scraping never needs the CA and probes never need a token.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use http::header::AUTHORIZATION;
use http::{Method, Request, Response, StatusCode, header::CONTENT_TYPE};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use llmesh_api::ledger::UsageReport;
use llmesh_api::protocol::{MAX_USAGE_BYTES, MUTATE_PODS_PATH, SNAPSHOT_PATH, USAGE_PATH};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::injection::webhook::Injector;
use crate::metrics::Metrics;
use crate::push::poll::{Poller, json_error};
use crate::spend::Accountant;

/// AdmissionReviews of large pods stay well under this.
const MAX_ADMISSION_BYTES: usize = 4 * 1024 * 1024;

fn text(code: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(code)
        .header(CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(body.into()))
        .unwrap_or_default()
}

/// Routes HTTPS requests.
pub struct Api {
    /// The snapshot long-poll.
    pub poller: Poller,
    /// The admission webhook.
    pub injector: Injector,
    /// Usage reports.
    pub accountant: Arc<Accountant>,
}

impl Api {
    /// hyper keeps this future for as long as a request is in flight, and a sidecar's poll is
    /// in flight for most of its life: with 1,000 sidecars, every byte of it is a KiB of the
    /// operator's memory. The admission path's future is several KiB, so it is boxed and
    /// allocated only for admission requests.
    async fn route(self: Arc<Self>, req: Request<Incoming>) -> Response<Full<Bytes>> {
        match (req.method(), req.uri().path()) {
            (&Method::GET, SNAPSHOT_PATH) => self.poller.handle(req).await,
            (&Method::POST, MUTATE_PODS_PATH) => Box::pin(self.admit(req)).await,
            (&Method::POST, USAGE_PATH) => Box::pin(self.usage(req)).await,
            (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
            _ => text(
                StatusCode::NOT_FOUND,
                format!(
                    "not found: the operator serves GET {SNAPSHOT_PATH}, POST {USAGE_PATH} and POST {MUTATE_PODS_PATH}\n"
                ),
            ),
        }
    }

    /// `POST /v1/usage`: a sidecar's usage report, acknowledged once persisted.
    async fn usage(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let response = self.usage_answer(req).await;
        self.poller
            .metrics
            .usage_reports
            .with_label_values(&[response.status().as_str()])
            .inc();
        response
    }

    async fn usage_answer(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let authorization = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let id = match self.poller.identify(authorization.as_deref()).await {
            Ok(id) => id,
            Err(refused) => return refused,
        };
        let body = match Limited::new(req.into_body(), MAX_USAGE_BYTES)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                return json_error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!(
                        "the usage report is unreadable or larger than {MAX_USAGE_BYTES} bytes: {e}"
                    ),
                    None,
                );
            }
        };
        let report: UsageReport = match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                return json_error(
                    StatusCode::BAD_REQUEST,
                    format!("the usage report is not a UsageReport (llmesh_api::ledger): {e}"),
                    None,
                );
            }
        };
        if !llmesh_api::ledger::valid_nonce(&report.reporter) {
            return json_error(
                StatusCode::BAD_REQUEST,
                format!(
                    "reporter must be 1 to {} letters, digits, - or _ (the sidecar process's nonce)",
                    llmesh_api::ledger::MAX_NONCE_LEN
                ),
                None,
            );
        }
        match self.accountant.apply(&id, report).await {
            Ok(ack) => Response::builder()
                .status(StatusCode::OK)
                .header(CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(
                    serde_json::to_vec(&ack).unwrap_or_default(),
                )))
                .unwrap_or_default(),
            Err(e) => json_error(StatusCode::SERVICE_UNAVAILABLE, e.to_string(), Some(1)),
        }
    }

    async fn admit(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        match Limited::new(req.into_body(), MAX_ADMISSION_BYTES)
            .collect()
            .await
        {
            Ok(body) => self.injector.handle(&body.to_bytes()).await,
            Err(e) => text(StatusCode::PAYLOAD_TOO_LARGE, format!("{e}\n")),
        }
    }
}

/// Serves `api` over TLS until `shutdown`, then drains for at most `grace`.
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    api: Arc<Api>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    let acceptor = TlsAcceptor::from(tls);
    let builder = Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let acceptor = acceptor.clone();
                let api = api.clone();
                let builder = builder.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    // A handshake that stalls must not hold a task forever.
                    let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                        Ok(Ok(s)) => s,
                        _ => return,
                    };
                    let svc = service_fn(move |req| api.clone().route(req).map(Ok::<_, Infallible>));
                    let conn = builder.serve_connection(TokioIo::new(tls), svc).into_owned();
                    let _ = watcher.watch(conn).await;
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(grace) => {}
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` (ready when `ready()` says so) until `shutdown`.
pub async fn serve_admin(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    ready: Arc<dyn Fn() -> Result<(), String> + Send + Sync>,
    shutdown: impl Future<Output = ()>,
) {
    let builder = Builder::new(TokioExecutor::new());
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let metrics = metrics.clone();
                let ready = ready.clone();
                let builder = builder.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let metrics = metrics.clone();
                        let ready = ready.clone();
                        async move {
                            Ok::<_, Infallible>(match req.uri().path() {
                                "/metrics" => Response::builder()
                                    .header(CONTENT_TYPE, "text/plain; version=0.0.4")
                                    .body(Full::new(Bytes::from(metrics.render())))
                                    .unwrap_or_default(),
                                "/healthz" => text(StatusCode::OK, "ok\n"),
                                "/readyz" => match ready() {
                                    Ok(()) => text(StatusCode::OK, "ready\n"),
                                    Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
                                },
                                _ => text(StatusCode::NOT_FOUND, "not found: /metrics, /healthz, /readyz\n"),
                            })
                        }
                    });
                    let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                });
            }
            () = &mut shutdown => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn future_size<A, F: Future>(_: impl FnOnce(A) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// hyper allocates the service's future once per connection, sized for its largest state,
    /// and a sidecar's poll keeps it for most of the connection's life. It was 8.5 KiB (the
    /// admission webhook's and the TokenReview's futures inlined), 8.5 MiB for 1,000 sidecars.
    #[test]
    fn the_future_a_held_poll_keeps_is_small() {
        let route = future_size(|(api, req): (Arc<Api>, Request<Incoming>)| api.route(req));
        assert!(route <= 3 * 1024, "Api::route's future is {route} bytes");
    }
}
