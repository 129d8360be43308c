//! How requests reach a provider: one pooled HTTP/1.1 and HTTP/2 client (TLS by rustls,
//! TCP_NODELAY, keep-alive), behind a small trait so the mock provider and tests can answer in
//! process.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// A boxed error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// An upstream response body.
pub type UpstreamBody = UnsyncBoxBody<Bytes, BoxError>;
/// The future of one upstream call.
pub type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<Response<UpstreamBody>, TransportError>> + Send>>;

/// A failure before any response arrived.
#[derive(Debug, Clone)]
pub struct TransportError {
    /// True when no connection could be made (nothing reached the provider).
    pub connect: bool,
    /// What happened.
    pub message: String,
}

/// Sends one request upstream.
pub trait Transport: Send + Sync {
    /// Sends `req` and resolves with the response head; the body streams.
    fn send(&self, req: Request<Full<Bytes>>) -> ResponseFuture;
}

/// The pooled HTTP client used for every real provider.
#[derive(Clone)]
pub struct HttpTransport {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl HttpTransport {
    /// A client with TCP_NODELAY, a 5 s connect timeout, TCP keep-alive and a 90 s idle pool.
    pub fn new() -> Self {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_secs(5)));
        http.set_keepalive(Some(Duration::from_secs(30)));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            .build(https);
        Self { client }
    }
}

impl Default for HttpTransport {
    fn default() -> Self {
        Self::new()
    }
}

impl Transport for HttpTransport {
    fn send(&self, req: Request<Full<Bytes>>) -> ResponseFuture {
        let fut = self.client.request(req);
        Box::pin(async move {
            match fut.await {
                Ok(resp) => Ok(resp.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed_unsync())),
                Err(e) => Err(TransportError {
                    connect: e.is_connect(),
                    message: error_chain(&e),
                }),
            }
        })
    }
}

/// An error and its causes on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// Picks the transport for each backend.
pub type TransportFactory =
    Arc<dyn Fn(&llmesh_api::snapshot::Backend) -> Arc<dyn Transport> + Send + Sync>;
