//! The listener: HTTP/1.1 and HTTP/2 (h2c) on one port, TCP_NODELAY, and graceful shutdown that
//! stops accepting, lets in-flight requests and streams finish up to a deadline, then returns.
//! [`serve`] answers the model API (and the admin endpoints) on loopback; [`serve_admin`] only
//! the admin endpoints, for `--admin-listen` on the pod IP.
//!
//! Against clients that hold connections without using them: a deadline on request headers
//! (`--header-read-timeout`, hyper's), idle connections closed (`--idle-timeout`), and a cap on
//! connections (`--max-connections`) past which the oldest idle connection is closed to make room,
//! or, when none is idle, the new one is refused with a 503. Each request's buffered bytes
//! (`--max-buffered-bytes`) are counted from its first body byte to its answer's last.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulConnection;
use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};

use crate::app::App;
use crate::handler::{ResBody, admin, handle};
use crate::limits::{HELD, Held};
use crate::transport::BoxError;

/// Serves `app` on `listener` until `shutdown` resolves, then drains for at most `grace`.
pub async fn serve(
    app: Arc<App>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    let max = app.limits.max_connections;
    serve_with(
        app,
        listener,
        shutdown,
        grace,
        (max, "its limit (--max-connections, LLMESH_MAX_CONNECTIONS); retry after a second, or raise the limit together with the open-files limit"),
        handle,
    )
    .await;
}

/// Serves only `/metrics`, `/healthz` and `/readyz` ([`admin`]) on `listener`, the pod-IP
/// listener of `--admin-listen`, until `shutdown` resolves. The same header, idle and
/// connection limits hold, with a cap of [`ADMIN_MAX_CONNECTIONS`]: scrapers and probes hold
/// a few connections at most.
pub async fn serve_admin(
    app: Arc<App>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    serve_with(
        app,
        listener,
        shutdown,
        grace,
        (ADMIN_MAX_CONNECTIONS, "the admin listener's fixed limit; retry after a second, and let scrapers and probes reuse their connections"),
        admin,
    )
    .await;
}

/// Connections the admin listener keeps open at once.
pub const ADMIN_MAX_CONNECTIONS: usize = 64;

async fn serve_with<H, F>(
    app: Arc<App>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
    (max_connections, limit): (usize, &str),
    handler: H,
) where
    H: Fn(Arc<App>, Request<Incoming>) -> F + Copy + Send + Sync + 'static,
    F: Future<Output = Response<ResBody>> + Send + 'static,
{
    let mut limits = app.limits.clone();
    limits.max_connections = max_connections;
    let mut builder = Builder::new(TokioExecutor::new());
    let header_timeout =
        (!limits.header_read_timeout.is_zero()).then_some(limits.header_read_timeout);
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let conns = Arc::new(Conns::default());
    // Built once; leaked so each refusal's task can borrow it (one per server).
    let refused: &'static [u8] = Vec::leak(refusal(limits.max_connections, limit));
    let (stop_tx, stop_rx) = watch::channel(());
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _peer) = match accepted {
                    Ok(s) => s,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Some((id, conn)) = conns.admit(limits.max_connections) else {
                    app.metrics
                        .limit_rejections
                        .with_label_values(&["none", "max_connections"])
                        .inc();
                    refuse(stream, refused);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let svc = {
                    let app = app.clone();
                    let conn = conn.clone();
                    service_fn(move |req| {
                        let app = app.clone();
                        let active = Active::begin(conn.clone());
                        async move {
                            let held = Held::new(app.buffers.clone());
                            let mut answer = std::pin::pin!(HELD.scope(held, handler(app, req)));
                            let resp = answer.as_mut().await;
                            let held = answer.as_mut().take_value();
                            Ok::<_, Infallible>(resp.map(|body| Tracked {
                                body,
                                _active: active,
                                _held: held,
                            }))
                        }
                    })
                };
                let served = builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .into_owned();
                tokio::spawn(watch_connection(
                    served,
                    conn,
                    limits.idle_timeout,
                    stop_rx.clone(),
                    (conns.clone(), id),
                ));
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    drop(stop_rx);
    tracing::info!(
        grace_seconds = grace.as_secs_f64(),
        "shutting down: no new connections; waiting for in-flight requests"
    );
    let _ = stop_tx.send(());
    tokio::select! {
        () = stop_tx.closed() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(grace) => tracing::warn!("shutdown deadline reached with requests still in flight"),
    }
}

/// Binds `addr`.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// One open connection, as the cap and the idle check see it.
#[derive(Default)]
struct Conn {
    /// Requests in progress, from their headers to their answer's last byte.
    active: AtomicUsize,
    /// Requests begun and ended, so a check can tell that nothing happened since the last one.
    events: AtomicUsize,
    /// Asks the connection to close once its requests are answered.
    close: Notify,
}

/// A request in progress on a connection.
struct Active(Arc<Conn>);

impl Active {
    fn begin(conn: Arc<Conn>) -> Self {
        conn.active.fetch_add(1, Ordering::Relaxed);
        conn.events.fetch_add(1, Ordering::Relaxed);
        Self(conn)
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.events.fetch_add(1, Ordering::Relaxed);
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The open connections, oldest first.
#[derive(Default)]
struct Conns {
    open: Mutex<BTreeMap<u64, Arc<Conn>>>,
    next: std::sync::atomic::AtomicU64,
}

impl Conns {
    /// A place for a new connection: past `max` (0: no cap) the oldest idle connection is asked
    /// to close and gives its place up; `None` when every connection is busy.
    fn admit(&self, max: usize) -> Option<(u64, Arc<Conn>)> {
        let mut open = self.open.lock();
        if max != 0 && open.len() >= max {
            let idle = open
                .iter()
                .find(|(_, c)| c.active.load(Ordering::Relaxed) == 0)
                .map(|(&id, _)| id)?;
            if let Some(c) = open.remove(&idle) {
                c.close.notify_one();
                tracing::debug!(
                    max_connections = max,
                    "closing the oldest idle connection to make room"
                );
            }
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn::default());
        open.insert(id, conn.clone());
        Some((id, conn))
    }

    fn remove(&self, id: u64) {
        self.open.lock().remove(&id);
    }
}

/// Runs one connection to its end: closes it gracefully when the server stops, when the cap
/// needs its place, or when it has had no request in progress for `idle` (0: never).
async fn watch_connection<C>(
    served: C,
    conn: Arc<Conn>,
    idle: Duration,
    mut stop: watch::Receiver<()>,
    (conns, id): (Arc<Conns>, u64),
) where
    C: GracefulConnection,
{
    let mut served = std::pin::pin!(served);
    // Checked twice per period: a connection with no request in progress and none begun or
    // ended over two checks has been idle at least `idle`; it is closed within 1.5 x `idle`.
    let check = idle / 2;
    let mut quiet = 0u32;
    let mut seen = conn.events.load(Ordering::Relaxed);
    let mut closing = false;
    let tick = tokio::time::sleep(check);
    tokio::pin!(tick);
    loop {
        tokio::select! {
            _ = served.as_mut() => break,
            _ = stop.changed(), if !closing => closing = true,
            () = conn.close.notified(), if !closing => closing = true,
            () = &mut tick, if !closing && !idle.is_zero() => {
                let events = conn.events.load(Ordering::Relaxed);
                if conn.active.load(Ordering::Relaxed) == 0 && events == seen {
                    quiet += 1;
                } else {
                    quiet = 0;
                }
                seen = events;
                closing = quiet >= 2;
                tick.as_mut().reset(tokio::time::Instant::now() + check);
            }
        }
        if closing {
            served.as_mut().graceful_shutdown();
            let _ = served.as_mut().await;
            break;
        }
    }
    conns.remove(id);
}

/// The answer to a connection past the listener's cap (`limit` says which) when none can be
/// closed for it: the 503 `overloaded` error (`retry-after: 1`), written before hyper takes the
/// connection.
fn refusal(max: usize, limit: &str) -> Vec<u8> {
    crate::error::ApiError::overloaded(format!(
        "llmesh: this listener already has {max} connections open, all busy, {limit}"
    ))
    .raw_response(crate::error::ErrorFormat::OpenAi)
}

/// Answers a refused connection and closes it. What the client sent is read and dropped for a
/// moment first: closing a socket with unread bytes resets it, and the reset can reach the
/// client before the answer does.
fn refuse(mut stream: TcpStream, answer: &'static [u8]) {
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let _ = tokio::time::timeout(REFUSAL_LINGER, async {
            stream.write_all(answer).await?;
            stream.shutdown().await?;
            let mut sink = [0u8; 1024];
            while stream.read(&mut sink).await? > 0 {}
            Ok::<_, std::io::Error>(())
        })
        .await;
    });
}

/// How long a refused connection is kept to deliver its 503.
const REFUSAL_LINGER: Duration = Duration::from_millis(250);

/// A response body that keeps its request counted (in progress on its connection, and its
/// buffered bytes) until hyper has written its last byte or dropped it.
struct Tracked {
    body: ResBody,
    _active: Active,
    _held: Option<Held>,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
