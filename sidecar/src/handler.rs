//! HTTP in: path dispatch (with or without the `/v1` prefix), request validation, limits,
//! budgets, cache, then the attempt loop, and the response with its `x-llmesh-*` headers.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE, HeaderName};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full, Limited};
use serde_json::Value;
use tokio::time::Instant;

use crate::account::{Slot, Ticket};
use crate::admit::{Admitted, admit};
use crate::app::App;
use crate::cache::{self, Hit, Status as CacheStatus};
use crate::error::{ApiError, ErrorFormat};
use crate::fields;
use crate::ingress::{self, Ingress};
use crate::internal::{Endpoint, StreamEncoder, Usage};
use crate::providers::Native;
use crate::proxy::{self, Call, Outcome, StreamStart};
use crate::relay::Relay;
use crate::runtime::{RouteState, Runtime, Target};
use crate::tokens;
use crate::transport::BoxError;

/// The response body type.
pub type ResBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

const ENDPOINTS: &str = "/v1/chat/completions, /v1/responses, /v1/messages, /v1/completions, /v1/embeddings and /v1/models (each also without /v1)";

fn full(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<ResBody> {
    let mut r = Response::new(
        Full::new(body.into())
            .map_err(|e| match e {})
            .boxed_unsync(),
    );
    *r.status_mut() = status;
    // Room for the `x-llmesh-*` and request-id headers added later, so the map is allocated once.
    let mut headers = HeaderMap::with_capacity(12);
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    *r.headers_mut() = headers;
    r
}

/// Renders an error in `format` ([`ApiError::response`], the one place errors become responses).
pub fn error_response(e: &ApiError, format: ErrorFormat) -> Response<ResBody> {
    e.response(format)
        .map(|b| Full::new(b).map_err(|e| match e {}).boxed_unsync())
}

/// Answers one HTTP request.
pub async fn handle<B>(app: Arc<App>, req: Request<B>) -> Response<ResBody>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let path = req.uri().path();
    let p = match path.strip_prefix("/v1") {
        Some(rest) if rest.starts_with('/') => rest,
        _ => path,
    };
    let method = req.method().clone();
    if let Some(r) = admin_endpoint(&app, &method, p) {
        return r;
    }
    // Anthropic clients get Anthropic-shaped errors, also for refusals before dispatch.
    let format = if p.starts_with("/messages") {
        ErrorFormat::Anthropic
    } else {
        ErrorFormat::OpenAi
    };
    if let Err(e) = check_local_key(&app, req.headers()) {
        return error_response(&e, format);
    }
    if method == Method::POST
        && let Err(e) = check_json(p, req.headers())
    {
        return error_response(&e, format);
    }
    match (&method, p) {
        (&Method::POST, "/chat/completions") => generate(app, req, Endpoint::Chat).await,
        (&Method::POST, "/completions") => generate(app, req, Endpoint::Completion).await,
        (&Method::POST, "/embeddings") => generate(app, req, Endpoint::Embedding).await,
        (&Method::POST, "/messages") => generate(app, req, Endpoint::Messages).await,
        (&Method::POST, "/messages/count_tokens") => count_tokens(&app, req).await,
        (&Method::POST, "/responses") => generate(app, req, Endpoint::Responses).await,
        (&Method::GET, "/models") => match app.runtime() {
            Some(rt) => full(StatusCode::OK, "application/json", rt.models_body.clone()),
            None => error_response(
                &ApiError::not_ready("llmesh: no config loaded yet"),
                ErrorFormat::OpenAi,
            ),
        },
        (&Method::GET, m) if m.starts_with("/models/") => model_info(&app, &m["/models/".len()..]),
        (&Method::GET | &Method::DELETE, r) if r.starts_with("/responses/") => {
            let id = &r["/responses/".len()..];
            let answer = if method == Method::GET {
                ingress::responses::retrieve(&app.responses, id)
            } else {
                ingress::responses::delete(&app.responses, id)
            };
            match answer {
                Ok(body) => full(StatusCode::OK, "application/json", body),
                Err(e) => error_response(&e, ErrorFormat::OpenAi),
            }
        }
        (_, "/chat/completions" | "/completions" | "/embeddings" | "/messages" | "/responses") => {
            let mut r = error_response(
                &ApiError::method_not_allowed(format!("llmesh: {p} takes POST")),
                format,
            );
            r.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("POST"));
            r
        }
        _ => error_response(
            &ApiError::not_found(format!(
                "llmesh: nothing at {method} {}: the sidecar serves {ENDPOINTS}",
                crate::error::excerpt(path, 256)
            )),
            ErrorFormat::OpenAi,
        ),
    }
}

/// Answers one request on the admin listener (`--admin-listen`): `GET /metrics`, `/healthz` and
/// `/readyz`, nothing else. It is reachable from the pod network without a client key, so it
/// never serves the model API, and its refusal names nothing that is served elsewhere.
pub async fn admin<B>(app: Arc<App>, req: Request<B>) -> Response<ResBody> {
    let path = req.uri().path();
    if let Some(r) = admin_endpoint(&app, req.method(), path) {
        return r;
    }
    full(
        StatusCode::NOT_FOUND,
        "text/plain",
        "not found: the llmesh admin listener serves only GET /metrics, /healthz and /readyz\n",
    )
}

/// The admin endpoints, on either listener; `None` for any other request.
fn admin_endpoint(app: &App, method: &Method, path: &str) -> Option<Response<ResBody>> {
    if method != Method::GET {
        return None;
    }
    Some(match path {
        "/healthz" => full(StatusCode::OK, "text/plain", "ok\n"),
        "/readyz" if app.is_ready() => full(StatusCode::OK, "text/plain", "ready\n"),
        "/readyz" => full(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "not ready: no config loaded yet\n",
        ),
        "/metrics" => {
            app.refresh_gauges();
            full(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                app.metrics.render(),
            )
        }
        _ => return None,
    })
}

fn model_info(app: &App, id: &str) -> Response<ResBody> {
    let Some(rt) = app.runtime() else {
        return error_response(
            &ApiError::not_ready("llmesh: no config loaded yet"),
            ErrorFormat::OpenAi,
        );
    };
    match rt.resolve(id) {
        Some(_) => full(
            StatusCode::OK,
            "application/json",
            serde_json::json!({"id": id, "object": "model", "created": 0, "owned_by": "llmesh"})
                .to_string(),
        ),
        None => error_response(&unknown_model(&rt, id), ErrorFormat::OpenAi),
    }
}

/// A body for the model API must say it is JSON. Refusing other types also refuses the requests
/// a web page can make a browser send to `127.0.0.1` without asking first (a CORS "simple"
/// request: `text/plain`, a form, or no type at all), so a page cannot spend the pod's budget.
fn check_json(p: &str, headers: &HeaderMap) -> Result<(), ApiError> {
    if !matches!(
        p,
        "/chat/completions"
            | "/completions"
            | "/embeddings"
            | "/messages"
            | "/messages/count_tokens"
            | "/responses"
    ) {
        return Ok(());
    }
    let ct = headers.get(CONTENT_TYPE).map(HeaderValue::as_bytes);
    let essence = ct.map(|v| {
        let end = v.iter().position(|&b| b == b';').unwrap_or(v.len());
        v[..end].trim_ascii()
    });
    let json = essence.is_some_and(|e| {
        e.eq_ignore_ascii_case(b"application/json")
            || (e.len() > 5 && e[e.len() - 5..].eq_ignore_ascii_case(b"+json"))
    });
    if json {
        return Ok(());
    }
    let got = match ct {
        Some(v) => format!(
            "`{}`",
            crate::error::excerpt(&String::from_utf8_lossy(v), 64)
        ),
        None => "none".to_string(),
    };
    let mut e = ApiError::bad_request(
        None,
        format!(
            "llmesh: the request body must be JSON: send `Content-Type: application/json` (got {got})"
        ),
    );
    e.status = StatusCode::UNSUPPORTED_MEDIA_TYPE;
    e.reason = "content_type";
    Err(e)
}

fn check_local_key(app: &App, headers: &HeaderMap) -> Result<(), ApiError> {
    if app.local_keys.is_empty() {
        return Ok(());
    }
    let presented = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()));
    let Some(key) = presented else {
        return Err(ApiError::unauthorized(
            "llmesh: this gateway requires an API key: send `Authorization: Bearer <key>` (or `x-api-key`) with one of the keys it was started with",
        ));
    };
    // Compare against every key so timing does not reveal which one matched.
    let ok = crate::keys::accepts(&app.local_keys, key.trim());
    if ok {
        Ok(())
    } else {
        Err(ApiError::unauthorized(
            "llmesh: the API key is not one this gateway accepts",
        ))
    }
}

/// The most of a client's `model` that an error message or the access log repeats.
const MODEL_ECHO_BYTES: usize = 256;

fn unknown_model(rt: &Runtime, model: &str) -> ApiError {
    let names = rt.model_names();
    let list = if names.is_empty() {
        "none are configured".to_string()
    } else {
        names.join(", ")
    };
    ApiError::model_not_found(format!(
        "llmesh: the model `{}` does not exist here. Models served by this sidecar: {list}",
        crate::error::excerpt(model, MODEL_ECHO_BYTES)
    ))
}

fn request_id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(str::to_string)
        .unwrap_or_else(|| {
            // "llmesh-" and 16 hex digits, without the formatting machinery.
            const HEX: &[u8; 16] = b"0123456789abcdef";
            let n = fastrand::u64(..);
            let mut id = String::with_capacity(23);
            id.push_str("llmesh-");
            for i in (0..16).rev() {
                id.push(HEX[((n >> (i * 4)) & 0xf) as usize] as char);
            }
            id
        })
}

/// Anthropic's `POST /v1/messages/count_tokens`: an estimate, no upstream call.
async fn count_tokens<B>(app: &App, req: Request<B>) -> Response<ResBody>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let format = ErrorFormat::Anthropic;
    let Some(rt) = app.runtime() else {
        return error_response(&ApiError::not_ready("llmesh: no config loaded yet"), format);
    };
    let limit = rt.max_request_bytes;
    let raw = match read_body(app, req.into_body(), limit).await {
        Ok(raw) => raw,
        Err(e) => return error_response(&e, format),
    };
    match ingress::messages::count_tokens(&raw) {
        Ok((model, _)) if rt.resolve(&model).is_none() => {
            error_response(&unknown_model(&rt, &model), format)
        }
        Ok((_, body)) => full(StatusCode::OK, "application/json", body),
        Err(e) => error_response(&e, format),
    }
}

/// Reads the body (up to the largest size any route accepts), then answers.
async fn generate<B>(app: Arc<App>, req: Request<B>, endpoint: Endpoint) -> Response<ResBody>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let limit = app
        .runtime()
        .map_or(llmesh_api::compile::DEFAULT_MAX_REQUEST_BYTES, |rt| {
            rt.max_request_bytes
        });
    // The body first, under --body-read-timeout and --max-buffered-bytes: a client that never
    // finishes its body must not hold a place under --max-in-flight meanwhile.
    let raw = match read_body(&app, body, limit).await {
        Ok(raw) => raw,
        Err(e) => {
            if matches!(e.reason, "body_timeout" | "buffered_bytes") {
                app.metrics
                    .limit_rejections
                    .with_label_values(&["none", e.reason])
                    .inc();
            }
            return answer(app, parts.headers, path, Err(e), endpoint, None).await;
        }
    };
    // Refused before any routing or upstream work: shedding must cost far less than serving.
    let Some(slot) = app.admit() else {
        app.metrics
            .limit_rejections
            .with_label_values(&["none", "max_in_flight"])
            .inc();
        let e = ApiError::overloaded(format!(
            "llmesh: this sidecar already has {} requests in flight, its limit (--max-in-flight, LLMESH_MAX_IN_FLIGHT); retry after a second, or raise the limit",
            app.max_in_flight
        ));
        return answer(app, parts.headers, path, Err(e), endpoint, None).await;
    };
    answer(app, parts.headers, path, Ok(raw), endpoint, Some(slot)).await
}

/// Reads a whole request body: at most `limit` bytes, within `--body-read-timeout`, each byte
/// counted under `--max-buffered-bytes` for as long as the request lasts.
async fn read_body<B>(app: &App, body: B, limit: u64) -> Result<Bytes, ApiError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let body = std::pin::pin!(body);
    let timeout = app.limits.body_read_timeout;
    let read = Limited::new(crate::limits::Counted(body), limit as usize).collect();
    match tokio::time::timeout(timeout, read).await {
        Err(_) => Err(crate::limits::body_timeout_error(timeout)),
        Ok(Ok(c)) => Ok(c.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ApiError::too_large(format!(
                "llmesh: the request body is over {limit} bytes, the most any route here accepts (limits.maxRequestBytes)"
            )))
        }
        Ok(Err(e)) => match e.downcast_ref::<crate::limits::Spent>() {
            Some(spent) => Err(spent.error()),
            None => Err(ApiError::bad_request(
                None,
                format!("llmesh: could not read the request body: {e}"),
            )),
        },
    }
}

/// A generation request (chat, completion, embedding), end to end. Boxed as `Send` here, at one
/// concrete point, so the server's spawned futures are `Send` without higher-ranked bounds.
fn answer(
    app: Arc<App>,
    headers: HeaderMap,
    path: String,
    raw: Result<Bytes, ApiError>,
    endpoint: Endpoint,
    slot: Option<Slot>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response<ResBody>> + Send>> {
    Box::pin(async move {
        let mut ticket = Ticket::new(
            app.ledger().clone(),
            request_id(&headers),
            endpoint.op(),
            path,
        );
        ticket.slot = slot;
        let rid = ticket.request_id.clone();
        let mut resp = match run(&app, &headers, raw, endpoint, &mut ticket).await {
            Ok(Done::Full { body, usage }) => {
                let cost = usage.as_ref().map(|u| ticket.cost(u));
                let mut r = full(StatusCode::OK, "application/json", body);
                llmesh_headers(&ticket, r.headers_mut(), cost);
                ticket.finish(StatusCode::OK.as_u16(), usage, "", false);
                r
            }
            Ok(Done::Stream {
                start,
                encoder,
                idle,
            }) => {
                // The backend is settled before the first byte: streams get the same headers.
                let mut headers = HeaderMap::with_capacity(12);
                llmesh_headers(&ticket, &mut headers, None);
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
                headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
                let mut r = Response::new(Relay::new(start, encoder, idle, ticket).boxed_unsync());
                *r.headers_mut() = headers;
                r
            }
            Err(e) => {
                let mut r = error_response(&e, endpoint.error_format());
                llmesh_headers(&ticket, r.headers_mut(), None);
                ticket.finish(e.status.as_u16(), None, e.reason, false);
                r
            }
        };
        if let Ok(v) = HeaderValue::from_str(&rid) {
            if endpoint == Endpoint::Messages {
                // Anthropic's SDKs read the request id from `request-id`.
                resp.headers_mut().insert("request-id", v.clone());
            }
            resp.headers_mut().insert("x-request-id", v);
        }
        resp
    })
}

/// A generation request's answer, before it becomes a response.
enum Done {
    /// A complete answer in the client's format.
    Full { body: Bytes, usage: Option<Usage> },
    /// A stream whose first chunk arrived, the encoder for the client's format, and the idle
    /// timeout between chunks.
    Stream {
        start: StreamStart,
        encoder: Box<dyn StreamEncoder>,
        idle: Duration,
    },
}

/// The stages of a generation request: the client's format read into the internal one
/// ([`Ingress::read`]), the route resolved, [`admit`] (limits, rate limits, budgets, the plan),
/// the cache ([`cache::lookup`]), the attempt loop ([`proxy::run`]) and [`respond`]. The ticket
/// records what happened for the accounting when the request ends.
async fn run(
    app: &App,
    headers: &HeaderMap,
    raw: Result<Bytes, ApiError>,
    endpoint: Endpoint,
    ticket: &mut Ticket,
) -> Result<Done, ApiError> {
    let rt = app.runtime().ok_or_else(|| {
        ApiError::not_ready(
            "llmesh: no config loaded yet: the sidecar is waiting for its first snapshot",
        )
    })?;
    ticket.rt = Some(rt.clone());
    let raw = raw?;
    let ctx = ingress::Context {
        responses: &app.responses,
        request_id: &ticket.request_id,
    };
    let mut ingress = Ingress::read(endpoint, &raw, headers, &ctx)?;
    let model = match fields::get(&ingress.body, "model") {
        Some(Value::String(m)) if !m.is_empty() => m,
        _ => {
            return Err(ApiError::bad_request(
                Some("model".into()),
                "llmesh: you must provide a model parameter (the route name, e.g. \"model\": \"chat\")",
            ));
        }
    };
    ticket.model = crate::error::excerpt(model, MODEL_ECHO_BYTES).into_owned();
    let Target { route: ri, pinned } =
        rt.resolve(model).ok_or_else(|| unknown_model(&rt, model))?;
    ticket.route = Some(ri);
    let route = &rt.routes[ri];
    let admitted = admit(route, &raw, headers, &mut ingress, pinned, ticket)?;
    let first = admitted.plan.order[0];

    let (status, hit) = cache::lookup(
        route.cache.as_deref(),
        admitted.stream,
        headers,
        first,
        &raw,
        |h| h.native || ingress.native_only.is_none(),
        Instant::now(),
    );
    ticket.cache = status;
    if status != CacheStatus::Off {
        ticket
            .ledger
            .metrics
            .cache
            .with_label_values(&[&route.spec.name, status.as_str()])
            .inc();
    }
    if let Some(hit) = hit {
        ticket.backend = Some(hit.backend);
        ticket.variant = None;
        let body = ingress.answer(hit.body, None, hit.native)?;
        return Ok(Done::Full { body, usage: None });
    }

    let call = Call {
        op: endpoint.op(),
        body: &mut ingress.body,
        raw: ingress.verbatim.then_some(&raw[..]),
        stream: admitted.stream,
        client_wants_usage: admitted.client_wants_usage,
        prompt_tokens: admitted.prompt_tokens,
        max_tokens: admitted.limit.max_tokens,
        max_tokens_chosen: admitted.limit.chosen.then_some(admitted.limit.key),
        native: ingress.native.as_ref().map(|b| Native {
            endpoint,
            body: b,
            headers: &ingress.native_headers,
        }),
    };
    let outcome = proxy::run(route, &admitted.plan, call, ticket).await?;
    respond(route, ingress, &admitted, raw, outcome, ticket)
}

/// The answer in the client's format. A complete one is charged at the provider's usage, or
/// at an estimate marked as such when it reports none, and stored in the cache after a miss.
fn respond(
    route: &RouteState,
    mut ingress: Ingress,
    admitted: &Admitted,
    raw: Bytes,
    outcome: Outcome,
    ticket: &Ticket,
) -> Result<Done, ApiError> {
    match outcome {
        Outcome::Full {
            body,
            usage,
            native,
        } => {
            let usage = usage.or_else(|| {
                Some(Usage {
                    prompt: u64::from(if admitted.estimated {
                        admitted.prompt_tokens
                    } else {
                        tokens::chat_prompt(&ingress.body, false).tokens
                    }),
                    output: u64::from(tokens::answer_output(&body)),
                    estimated: true,
                    ..Default::default()
                })
            });
            if let (Some(c), CacheStatus::Miss, Some(b)) =
                (&route.cache, ticket.cache, ticket.backend)
            {
                let hit = Hit {
                    body: body.clone(),
                    backend: b,
                    native,
                };
                c.put(admitted.plan.order[0], raw, hit, Instant::now());
            }
            let body = ingress.answer(body, usage.as_ref(), native)?;
            Ok(Done::Full { body, usage })
        }
        Outcome::Stream(start) => Ok(Done::Stream {
            encoder: ingress.encoder(start.native),
            idle: Duration::from_millis(route.spec.timeouts.stream_idle_ms),
            start,
        }),
    }
}

fn set(h: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(HeaderName::from_static(name), v);
    }
}

const X_ROUTE: HeaderName = HeaderName::from_static("x-llmesh-route");
const X_BACKEND: HeaderName = HeaderName::from_static("x-llmesh-backend");
const X_VARIANT: HeaderName = HeaderName::from_static("x-llmesh-variant");
const X_PROVIDER: HeaderName = HeaderName::from_static("x-llmesh-provider");
const X_ATTEMPTS: HeaderName = HeaderName::from_static("x-llmesh-attempts");
const X_CACHE: HeaderName = HeaderName::from_static("x-llmesh-cache");
const X_COST: HeaderName = HeaderName::from_static("x-llmesh-cost-usd");
const X_BUDGET_LEFT: HeaderName = HeaderName::from_static("x-llmesh-budget-remaining-usd");

/// The `x-llmesh-*` headers for what served the request (values built once per backend).
fn llmesh_headers(t: &Ticket, h: &mut HeaderMap, cost: Option<u64>) {
    let Some(rt) = &t.rt else { return };
    let Some(r) = t.route else { return };
    let route = &rt.routes[r];
    match t.backend {
        Some(b) => {
            let b = &route.backends[b];
            let [backend, variant, provider, route_name] = &b.header_values;
            h.insert(X_ROUTE, route_name.clone());
            h.insert(X_BACKEND, backend.clone());
            match t.variant.as_deref() {
                Some(v) if v != b.spec.variant => set(h, "x-llmesh-variant", v),
                _ => {
                    h.insert(X_VARIANT, variant.clone());
                }
            }
            h.insert(X_PROVIDER, provider.clone());
        }
        None => set(h, "x-llmesh-route", &route.spec.name),
    }
    h.insert(X_ATTEMPTS, HeaderValue::from(t.attempts));
    if !t.fallbacks.is_empty() {
        set(h, "x-llmesh-fallback-from", &t.fallbacks.join(","));
    }
    if let Some(rule) = &t.rule {
        set(h, "x-llmesh-rule", rule);
    }
    if t.cache != CacheStatus::Off {
        h.insert(X_CACHE, HeaderValue::from_static(t.cache.as_str()));
    }
    if let Some(c) = cost {
        let mut buf = [0u8; 24];
        if let Ok(v) = HeaderValue::from_str(crate::accesslog::usd(c, &mut buf)) {
            h.insert(X_COST, v);
        }
    }
    // The tightest USD budget covering the request: what was left for it when it was admitted.
    if !t.reservations.is_empty() {
        let now = t.ledger.clock.unix_now();
        let left = t
            .reservations
            .iter()
            .filter_map(|(b, r)| b.usd_left_for(r, now))
            .min();
        if let Some(left) = left {
            let mut buf = [0u8; 24];
            if let Ok(v) = HeaderValue::from_str(crate::accesslog::usd(left, &mut buf)) {
                h.insert(X_BUDGET_LEFT, v);
            }
        }
    }
}
