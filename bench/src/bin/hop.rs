//! `llmesh-hop`: the least a proxy built on llmesh's stack can do, as a benchmark baseline.
//!
//! The same parts the sidecar serves with (tokio's current-thread runtime, hyper-util's server
//! with HTTP/1.1 and h2c, TCP_NODELAY both ways, hyper-util's pooled client), forwarding each
//! request to one upstream unread and unchanged: no JSON, no routing, no metrics, no logs. What
//! llmesh adds over this hop is the cost of its own features; what this hop adds over nginx is
//! the cost of the stack.
#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use clap::Parser;
use http::uri::{Authority, Scheme};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use tokio::net::TcpListener;

#[derive(Parser)]
#[command(
    name = "llmesh-hop",
    about = "A bare hyper forwarding hop: the floor of llmesh's stack"
)]
struct Args {
    /// Address to listen on; the bound port is printed as `listening on <addr>`.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Where every request goes, as `host:port`.
    #[arg(long)]
    upstream: Authority,
}

type Body = UnsyncBoxBody<Bytes, hyper::Error>;

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    // The sidecar raises its soft open-files limit to the hard one at start; so does the hop.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(serve(args))
}

async fn serve(args: Args) -> std::io::Result<()> {
    let listener = TcpListener::bind(args.listen).await?;
    println!("listening on {}", listener.local_addr()?);
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(http);
    let builder = Builder::new(TokioExecutor::new());
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: back off, as the sidecar does, and go on.
                eprintln!("llmesh-hop: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (client, upstream) = (client.clone(), args.upstream.clone());
        let svc = service_fn(move |req: http::Request<Incoming>| {
            let (client, upstream) = (client.clone(), upstream.clone());
            async move { Ok::<_, Infallible>(forward(&client, upstream, req).await) }
        });
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), svc)
            .into_owned();
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

/// Reads the request body whole (as the sidecar does before routing), sends it upstream and
/// streams the answer back as it arrives.
async fn forward(
    client: &Client<HttpConnector, Full<Bytes>>,
    upstream: Authority,
    req: http::Request<Incoming>,
) -> http::Response<Body> {
    let (mut parts, body) = req.into_parts();
    let Ok(body) = body.collect().await.map(|c| c.to_bytes()) else {
        return status(http::StatusCode::BAD_REQUEST);
    };
    let path = parts.uri.path_and_query().cloned();
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(Scheme::HTTP);
    uri.authority = Some(upstream);
    uri.path_and_query = path;
    let Ok(uri) = http::Uri::from_parts(uri) else {
        return status(http::StatusCode::BAD_REQUEST);
    };
    parts.uri = uri;
    parts.headers.remove(http::header::HOST);
    match client
        .request(http::Request::from_parts(parts, Full::new(body)))
        .await
    {
        Ok(resp) => resp.map(|b| b.boxed_unsync()),
        Err(_) => status(http::StatusCode::BAD_GATEWAY),
    }
}

fn status(code: http::StatusCode) -> http::Response<Body> {
    let mut r = http::Response::new(
        Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *r.status_mut() = code;
    r
}
