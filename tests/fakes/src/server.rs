//! The scenario engine and the listener: everything that does not depend on a provider's wire
//! format. A request's path picks the scenario (`/s/<scenario>/...`), a [`Dialect`] recognises
//! the rest, and the engine records the request, applies the scenario's delays and failures, and
//! paces the dialect's answer onto the connection.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Limited};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::body::FakeBody;
use crate::dialect::{self, Ctx, DIALECTS, Dialect, Failure, Reply};
use crate::record::{Entry, Recorder};
use crate::scenario::{Kind, Scenario};

/// Largest request body read.
const MAX_BODY: usize = 64 * 1024 * 1024;

/// The fake's shared state.
pub struct Fake {
    start: Instant,
    seq: AtomicU64,
    recorder: Recorder,
    counters: Mutex<HashMap<String, u64>>,
    hang_limit: Duration,
    state: dialect::State,
}

impl Fake {
    /// A fake whose hanging scenarios give up after `hang_limit` (so nothing leaks forever).
    pub fn new(hang_limit: Duration) -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            seq: AtomicU64::new(0),
            recorder: Recorder::default(),
            counters: Mutex::new(HashMap::new()),
            hang_limit,
            state: dialect::State::default(),
        })
    }

    /// Counts one request of a counted scenario; returns how many came before it.
    fn count(&self, segment: &str) -> u64 {
        let mut c = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        let n = c.entry(segment.to_string()).or_insert(0);
        *n += 1;
        *n - 1
    }

    fn reset(&self) {
        self.recorder.clear();
        self.state.clear();
        self.counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

/// Binds `addr` and serves on the current runtime; returns the bound address.
pub async fn start(addr: SocketAddr, fake: Arc<Fake>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(serve(listener, fake));
    Ok(local)
}

/// Accepts connections forever (HTTP/1.1 and h2c).
pub async fn serve(listener: TcpListener, fake: Arc<Fake>) {
    let builder = Builder::new(TokioExecutor::new());
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(_) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let fake = fake.clone();
        let conn = builder
            .serve_connection(
                TokioIo::new(stream),
                service_fn(move |req| {
                    let fake = fake.clone();
                    async move { Ok::<_, Infallible>(handle(fake, req).await) }
                }),
            )
            .into_owned();
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

fn respond(r: Reply, body: FakeBody) -> Response<FakeBody> {
    let mut resp = Response::new(body);
    *resp.status_mut() = r.status;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(r.content_type));
    for (k, v) in r.headers {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.append(HeaderName::from_static(k), v);
        }
    }
    resp
}

fn whole(mut r: Reply) -> Response<FakeBody> {
    let mut chunks = std::mem::take(&mut r.parts);
    let body = if chunks.len() == 1 {
        FakeBody::full(chunks.pop().unwrap_or_default())
    } else {
        FakeBody::paced(chunks, Duration::ZERO)
    };
    respond(r, body)
}

fn plain(status: StatusCode, v: Value) -> Response<FakeBody> {
    whole(Reply::json(status, v.to_string()))
}

/// Decodes `%XX` and `+` in a query value.
fn unescape(s: &str) -> String {
    fn hex(c: u8) -> Option<u8> {
        (c as char).to_digit(16).map(|d| d as u8)
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query_param(query: Option<&str>, key: &str) -> Option<String> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| unescape(v))
}

fn label(kind: Kind) -> String {
    match kind {
        Kind::Ok => "ok".into(),
        Kind::Fast => "fast".into(),
        Kind::Status(s) => s.to_string(),
        Kind::Hang => "hang".into(),
        Kind::HangBeforeFirstByte => "hang-before-first-byte".into(),
        Kind::ResetMidStream => "reset-mid-stream".into(),
        Kind::SlowChunks => "slow-chunks".into(),
        Kind::MalformedJson => "malformed-json".into(),
        Kind::WrongContentType => "wrong-content-type".into(),
        Kind::ContextLength => "context-length".into(),
        Kind::Safety => "safety".into(),
        Kind::FailFirst(n) => format!("fail-first-{n}-then-ok"),
    }
}

const NOT_JSON: &str = "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON. If you have trouble figuring out how to fix this, please contact us through our help center at help.openai.com.)";

/// Answers one request.
pub async fn handle<B>(fake: Arc<Fake>, req: Request<B>) -> Response<FakeBody>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (parts, body) = req.into_parts();
    let path = parts.uri.path();
    let query = parts.uri.query();
    let method = &parts.method;

    match (method, path) {
        (&Method::GET, "/__requests") => {
            let scenario = query_param(query, "scenario");
            return plain(StatusCode::OK, fake.recorder.list(scenario.as_deref()));
        }
        (&Method::GET | &Method::POST, "/__reset") => {
            fake.reset();
            return plain(StatusCode::OK, json!({"reset": true}));
        }
        (&Method::GET, "/__health") => return plain(StatusCode::OK, json!({"ok": true})),
        _ => {}
    }

    let (segment, rest) = match path.strip_prefix("/s/") {
        Some(p) => p.split_at(p.find('/').unwrap_or(p.len())),
        None => ("ok", path),
    };
    let scenario = Scenario::parse(segment);
    let found = dialect::find(method, rest, query);
    let seq = fake.seq.fetch_add(1, Ordering::Relaxed);

    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return whole(DIALECTS[0].client_error(
                StatusCode::BAD_REQUEST,
                &format!("could not read the request body: {e}"),
            ));
        }
    };

    // Benchmarks: no recording, no parsing, no state; `latency=` makes a slow provider.
    if let (
        Ok(Scenario {
            kind: Kind::Fast,
            options,
        }),
        Some((d, ep)),
    ) = (&scenario, &found)
    {
        if !options.latency.is_zero() {
            tokio::time::sleep(options.latency).await;
        }
        return whole(d.fast(ep, &body, seq));
    }

    let dialect: &dyn Dialect = found.as_ref().map_or(DIALECTS[0], |(d, _)| *d);
    let effective = match &scenario {
        Ok(s) => match s.kind {
            Kind::FailFirst(n) if found.is_some() => {
                if fake.count(segment) < u64::from(n) {
                    s.options.with
                } else {
                    Kind::Ok
                }
            }
            k => k,
        },
        Err(_) => Kind::Status(400),
    };
    let answer = match (&scenario, &found) {
        (Err(_), _) => "bad_scenario".to_string(),
        (_, None) => "not_found".to_string(),
        _ => label(effective),
    };
    fake.recorder.push(Entry {
        seq,
        t_ms: fake.start.elapsed().as_secs_f64() * 1e3,
        method: method.as_str(),
        path,
        query,
        scenario: segment,
        dialect: found.as_ref().map(|(d, _)| d.name()),
        op: found.as_ref().map(|(_, ep)| ep.op.as_str()),
        answer: &answer,
        headers: &parts.headers,
        body: &body,
    });

    let scenario = match scenario {
        Ok(s) => s,
        Err(message) => return whole(dialect.client_error(StatusCode::BAD_REQUEST, &message)),
    };
    let Some((dialect, ep)) = found else {
        return whole(dialect.client_error(
            StatusCode::NOT_FOUND,
            &format!("Invalid URL ({method} {rest})"),
        ));
    };
    let o = &scenario.options;
    if !o.latency.is_zero() {
        tokio::time::sleep(o.latency).await;
    }
    if let Some(r) = dialect.check(&ep, &parts.headers, query) {
        return whole(r);
    }
    let json: Value = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(_) => return whole(dialect.client_error(StatusCode::BAD_REQUEST, NOT_JSON)),
        }
    };
    let stream = dialect.is_stream(&ep, &json);
    let ctx = Ctx {
        seq,
        options: o,
        headers: &parts.headers,
        stream,
        state: &fake.state,
    };
    let fail = |f: Failure| whole(dialect.failure(&ep, f, &ctx));
    match effective {
        Kind::Ok | Kind::Fast | Kind::FailFirst(_) => {
            let mut r = dialect.answer(&ep, &json, &ctx);
            let chunks = std::mem::take(&mut r.parts);
            respond(r, FakeBody::paced(chunks, o.interval))
        }
        Kind::SlowChunks => {
            let mut r = dialect.answer(&ep, &json, &ctx);
            if r.parts.len() == 1 {
                // A whole body arrives slowly too: in eight pieces.
                let b = r.parts[0].clone();
                let step = b.len().div_ceil(8).max(1);
                r.parts = (0..b.len())
                    .step_by(step)
                    .map(|i| b.slice(i..(i + step).min(b.len())))
                    .collect();
            }
            let chunks = std::mem::take(&mut r.parts);
            respond(r, FakeBody::paced(chunks, o.interval))
        }
        Kind::Status(s) => fail(Failure::Status(s)),
        Kind::ContextLength => fail(Failure::ContextLength),
        Kind::Safety => fail(Failure::Safety),
        Kind::MalformedJson => fail(Failure::Malformed),
        Kind::WrongContentType => whole(Reply {
            status: StatusCode::OK,
            content_type: "text/html; charset=utf-8",
            headers: Vec::new(),
            parts: vec![Bytes::from_static(
                b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body><h1>Sign in to continue</h1><form method=\"post\"><input name=\"user\"></form></body></html>\n",
            )],
        }),
        Kind::Hang => {
            tokio::time::sleep(fake.hang_limit).await;
            fail(Failure::Status(504))
        }
        Kind::HangBeforeFirstByte => {
            let r = Reply {
                status: StatusCode::OK,
                content_type: if stream {
                    "text/event-stream; charset=utf-8"
                } else {
                    "application/json"
                },
                headers: Vec::new(),
                parts: Vec::new(),
            };
            respond(
                r,
                FakeBody::paced(Vec::new(), Duration::ZERO).then_hang(fake.hang_limit),
            )
        }
        Kind::ResetMidStream => {
            let mut r = dialect.answer(&ep, &json, &ctx);
            let mut chunks = std::mem::take(&mut r.parts);
            let after = if chunks.len() == 1 {
                // A whole body: half of it, then the connection breaks.
                chunks[0] = chunks[0].slice(..chunks[0].len() / 2);
                1
            } else {
                o.after
            };
            respond(r, FakeBody::paced(chunks, o.interval).cut_after(after))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_unescaped() {
        assert_eq!(
            query_param(
                Some("a=1&scenario=fail-first-1-then-ok%2Cid%3Dx"),
                "scenario"
            )
            .as_deref(),
            Some("fail-first-1-then-ok,id=x")
        );
        assert_eq!(query_param(Some("scenario=ok"), "other"), None);
        assert_eq!(unescape("bad%zz%4"), "bad%zz%4");
    }
}
