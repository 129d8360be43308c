//! HTTP in: path dispatch (with or without the `/v1` prefix), request validation, limits,
//! budgets, cache, then the attempt loop, and the response with its `x-llmesh-*` headers.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE, HeaderName};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full, Limited};
use serde_json::{Map, Value};
use tokio::time::Instant;

use llmesh_api::route::MaxTokensPolicy;

use crate::account::{PromptEstimate, Ticket};
use crate::app::App;
use crate::budget::Admission;
use crate::cache::Hit;
use crate::choose::{self, Facts};
use crate::error::{ApiError, ErrorFormat};
use crate::fields;
use crate::ingress::{self, Endpoint};
use crate::providers::Op;
use crate::proxy::{self, Call, Outcome};
use crate::relay::{OpenAiSse, Relay};
use crate::runtime::{Runtime, Target};
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

/// Renders an error in `format`.
pub fn error_response(e: &ApiError, format: ErrorFormat) -> Response<ResBody> {
    let mut r = full(e.status, "application/json", e.body(format));
    if let Some(v) = e.retry_after_header() {
        r.headers_mut().insert("retry-after", v);
    }
    r
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

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty())
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
    slot: Option<crate::app::Slot>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response<ResBody>> + Send>> {
    Box::pin(async move {
        let mut ticket = Ticket::new(app.clone(), request_id(&headers), endpoint.op(), path);
        ticket.slot = slot;
        let rid = ticket.request_id.clone();
        let mut resp = match run(&app, &headers, raw, endpoint, ticket).await {
            Ok(Done::Full {
                body,
                usage,
                status,
                ticket,
            }) => {
                let cost = usage.as_ref().map(|u| ticket.cost(u));
                let mut r = full(status, "application/json", body);
                llmesh_headers(&ticket, r.headers_mut(), cost);
                ticket.finish(status.as_u16(), usage, "", false);
                r
            }
            Ok(Done::Stream(relay, headers)) => {
                let mut r = Response::new(relay.boxed_unsync());
                r.headers_mut().extend(headers);
                r.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
                r.headers_mut()
                    .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
                r
            }
            Err((e, t)) => {
                let mut r = error_response(&e, endpoint.error_format());
                llmesh_headers(&t, r.headers_mut(), None);
                t.finish(e.status.as_u16(), None, e.reason, false);
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

#[allow(clippy::large_enum_variant)] // transient, moved once into the response
enum Done {
    Full {
        body: Bytes,
        usage: Option<crate::providers::Usage>,
        status: StatusCode,
        ticket: Ticket,
    },
    /// The relay and the `x-llmesh-*` headers, taken before the ticket moved into the relay.
    Stream(Relay, HeaderMap),
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
    if t.cache != "off" {
        h.insert(X_CACHE, HeaderValue::from_static(t.cache));
    }
    if let Some(c) = cost {
        let mut buf = [0u8; 24];
        if let Ok(v) = HeaderValue::from_str(crate::accesslog::usd(c, &mut buf)) {
            h.insert(X_COST, v);
        }
    }
}

/// Everything between the parsed request and the response. The ticket comes back with the
/// answer or the error so the caller accounts for it; for streams it moves into the relay.
async fn run(
    app: &Arc<App>,
    headers: &HeaderMap,
    raw: Result<Bytes, ApiError>,
    endpoint: Endpoint,
    mut ticket: Ticket,
) -> Result<Done, (ApiError, Ticket)> {
    let op = endpoint.op();
    macro_rules! fail {
        ($e:expr) => {{
            return Err(($e, ticket));
        }};
    }
    let Some(rt) = app.runtime() else {
        fail!(ApiError::not_ready(
            "llmesh: no config loaded yet: the sidecar is waiting for its first snapshot"
        ))
    };
    ticket.rt = Some(rt.clone());
    let raw = match raw {
        Ok(b) => b,
        Err(e) => fail!(e),
    };
    let mut body: Map<String, Value> = match serde_json::from_slice(&raw) {
        Ok(b) => b,
        Err(e) => fail!(ApiError::bad_request(
            None,
            format!(
                "llmesh: the request body is not a JSON object ({e}); send Content-Type: application/json with an object body"
            )
        )),
    };
    // Kept for backends that speak the client's format natively (Anthropic on /v1/messages,
    // OpenAI on /v1/responses).
    let original =
        matches!(endpoint, Endpoint::Messages | Endpoint::Responses).then(|| body.clone());
    let native_headers: Vec<(HeaderName, HeaderValue)> = ["anthropic-version", "anthropic-beta"]
        .into_iter()
        .filter_map(|n| Some((HeaderName::from_static(n), headers.get(n)?.clone())))
        .collect();
    let mut native_only: Option<ApiError> = None;
    let mut translation = match ingress::translate(
        endpoint,
        body,
        &ingress::Context {
            responses: &app.responses,
            request_id: &ticket.request_id,
        },
    ) {
        Ok((b, t)) => {
            body = b;
            t
        }
        // Only a backend that speaks the Responses API natively can serve it (built-in tools,
        // state kept at OpenAI): routed on a stand-in body, sent as the client wrote it.
        Err(e) if ingress::responses::needs_native(&e) && original.is_some() => {
            body = ingress::responses::stand_in(original.as_ref().unwrap_or(&Map::new()));
            native_only = Some(e);
            None
        }
        Err(e) => fail!(e),
    };
    let passthrough = translation.as_ref().is_none_or(|t| t.passthrough());
    // Whether `body` is still the parse of `raw`: then a provider may send `raw` on with the
    // backend's model spliced in. Every change below clears it.
    let mut verbatim = matches!(
        endpoint,
        Endpoint::Chat | Endpoint::Completion | Endpoint::Embedding
    );
    let model = match fields::get(&body, "model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        _ => fail!(ApiError::bad_request(
            Some("model".into()),
            "llmesh: you must provide a model parameter (the route name, e.g. \"model\": \"chat\")"
        )),
    };
    ticket.model = crate::error::excerpt(&model, MODEL_ECHO_BYTES).into_owned();
    let Some(Target { route: ri, pinned }) = rt.resolve(&model) else {
        fail!(unknown_model(&rt, &model))
    };
    ticket.route = Some(ri);
    let route = &rt.routes[ri];
    let name = route.spec.name.as_str();
    // Refused before limits count it, as the translation's refusals are.
    if let Some(why) = &native_only
        && !route
            .backends
            .iter()
            .any(|b| b.provider.speaks(&b.spec, endpoint))
    {
        fail!(no_native_backend(why, name, None))
    }
    let limits = &route.spec.limits;
    let m = &app.metrics;
    let reject = |limit: &str| m.limit_rejections.with_label_values(&[name, limit]).inc();

    if raw.len() as u64 > limits.max_request_bytes {
        reject("body_size");
        fail!(ApiError::too_large(format!(
            "llmesh: the request body is {} bytes, over route `{name}`'s limit of {} (limits.maxRequestBytes); send less, or raise the limit",
            raw.len(),
            limits.max_request_bytes
        )))
    }
    if let Err(e) = validate(op, &body) {
        fail!(e)
    }
    let stream = match fields::get(&body, "stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => op != Op::Embedding && *b,
        // `"true"` is not `true`: served as a plain answer, it would surprise a client that
        // waits for events (the Messages endpoint refuses it too).
        Some(v) => fail!(ApiError::bad_request(
            Some("stream".into()),
            format!(
                "llmesh: stream must be true or false (got {}); send it as a JSON boolean, without quotes",
                crate::error::excerpt(&v.to_string(), 40)
            )
        )),
    };
    ticket.stream = stream;
    // Translated formats report usage themselves, from the usage chunk.
    let client_wants_usage = translation.is_some()
        || fields::get(&body, "stream_options")
            .and_then(|o| fields::get_in(o, "include_usage"))
            .and_then(Value::as_bool)
            == Some(true);
    // The estimate reads every byte of the prompt (about 13 instructions each): made now only
    // when routing, a limit or a budget reads it, or when the client's bytes are not the chat
    // body (a translated format). Otherwise it waits for an answer without usage or a client
    // that goes away, and is made then from the client's bytes.
    let reads = choose::reads_prompt(route);
    let estimate_now = !verbatim
        || reads.size
        || limits.max_input_tokens.is_some()
        || route.tpm.is_some()
        || !route.budgets.is_empty();
    let prompt = if estimate_now {
        let p = tokens::chat_prompt(&body, reads.cues);
        ticket.prompt_estimate = PromptEstimate::Known(p.tokens);
        if let Some(t) = translation.as_mut() {
            t.prompt_estimate(p.tokens);
        }
        p
    } else {
        // A stream outlives this body: keep a copy of its own size, not the read buffer a
        // slice of it may hold.
        ticket.prompt_estimate = PromptEstimate::Later(if stream {
            Bytes::copy_from_slice(&raw)
        } else {
            raw.clone()
        });
        tokens::PromptFacts::default()
    };

    if let Some(max) = limits.max_input_tokens
        && prompt.tokens > max
    {
        reject("input_tokens");
        fail!(ApiError::bad_request(
            Some(if op == Op::Chat { "messages" } else if op == Op::Embedding { "input" } else { "prompt" }.into()),
            format!(
                "llmesh: the prompt is about {} tokens (estimated), over route `{name}`'s limit of {max} (limits.maxInputTokens); shorten it or ask the route's owner to raise the limit",
                prompt.tokens
            )
        )
        .with_code("input_tokens_exceeded"))
    }

    // max_tokens: every field the client set binds, in whatever form it came; a limit llmesh
    // sets goes into the field the client used, else the one the model takes.
    let asked = match max_tokens_asked(&body) {
        Ok(a) => a,
        Err(e) => fail!(e),
    };
    let mut max_tokens = asked.map(|(n, _)| n);
    let mt_key = match asked {
        Some((_, key)) => key,
        None if op == Op::Chat => "max_completion_tokens",
        None => "max_tokens",
    };
    // Whether llmesh chose `max_tokens` (a route limit or a budget's clamp) rather than the
    // client: then no backend is sent more than its model takes.
    let mut chosen = false;
    if op != Op::Embedding {
        if let (Some(asked), Some(limit)) = (max_tokens, limits.max_tokens)
            && asked > limit
        {
            match limits.max_tokens_policy {
                MaxTokensPolicy::Clamp => {
                    fields::set_output_limit(&mut body, mt_key, limit);
                    verbatim = false;
                    max_tokens = Some(limit);
                    chosen = true;
                }
                MaxTokensPolicy::Reject => {
                    reject("max_tokens");
                    fail!(ApiError::bad_request(
                        Some(mt_key.into()),
                        format!("llmesh: {mt_key} is {asked}, over route `{name}`'s limit of {limit} (limits.maxTokens); ask for {limit} or fewer")
                    )
                    .with_code("max_tokens_exceeded"))
                }
            }
        }
        // A request that sets no limit gets the route's default, else its limit: a route
        // limit binds every request, not only those that name one.
        let default = match (limits.default_max_tokens, limits.max_tokens) {
            (Some(d), Some(l)) => Some(d.min(l)),
            (d, l) => d.or(l),
        };
        if max_tokens.is_none()
            && let Some(d) = default
        {
            fields::set_output_limit(&mut body, mt_key, d);
            verbatim = false;
            max_tokens = Some(d);
            chosen = true;
        }
    }

    let now = Instant::now();
    if let Some(b) = &route.rpm
        && let Err(wait) = b.try_take(1, now)
    {
        reject("rpm");
        fail!(ApiError::rate_limited(
            "requests",
            "rpm",
            wait,
            format!(
                "llmesh: route `{name}` allows {} requests per minute from this pod (limits.requestsPerMinute); retry after {:.1}s",
                b.per_minute(),
                wait.as_secs_f64()
            )
        ))
    }
    if let Some(b) = &route.tpm {
        if let Err(wait) = b.try_take(u64::from(prompt.tokens), now) {
            reject("tpm");
            fail!(ApiError::rate_limited(
                "tokens",
                "tpm",
                wait,
                format!(
                    "llmesh: route `{name}` allows {} tokens per minute from this pod (limits.tokensPerMinute); retry after {:.1}s",
                    b.per_minute(),
                    wait.as_secs_f64()
                )
            ))
        }
        ticket.tpm_reserved = u64::from(prompt.tokens);
    }

    let user_key = header_str(headers, "x-llmesh-user")
        .map(str::to_string)
        .or_else(|| {
            fields::get(&body, "user")
                .and_then(Value::as_str)
                .map(str::to_string)
        });
    let facts = Facts {
        user_key: user_key.as_deref(),
        task: header_str(headers, "x-llmesh-task"),
        prompt,
        max_tokens,
        op: Some(op),
    };
    let mut plan = choose::plan(route, &facts, now, pinned);
    // A request only the native format can express goes to the backends that speak it, and
    // never to the others first: their refusal would hide the answer the client can have.
    let speaks = |i: usize| {
        let b = &route.backends[i];
        b.provider.speaks(&b.spec, endpoint)
    };
    if let Some(why) = &native_only {
        plan.order.retain(|&i| speaks(i));
        if plan.order.is_empty() {
            fail!(no_native_backend(why, name, None))
        }
    }

    // Budgets: priced on the backend chosen first.
    let unix = app.clock.unix_now();
    for budget in &route.budgets {
        let prices = &route.backends[plan.order[0]].spec.prices;
        match budget.admit(
            user_key.as_deref(),
            u64::from(prompt.tokens),
            max_tokens,
            route.backends[plan.order[0]].output_cap,
            prices,
            unix,
        ) {
            (Admission::Allow { max_tokens: clamp }, reservation) => {
                if let Some(c) = clamp
                    && op != Op::Embedding
                {
                    fields::set_output_limit(&mut body, mt_key, c);
                    verbatim = false;
                    max_tokens = Some(c);
                    chosen = true;
                }
                if let Some(r) = reservation {
                    ticket.reservations.push((budget.clone(), r));
                }
            }
            (
                Admission::Reject {
                    retry_after,
                    message,
                },
                _,
            ) => {
                reject("budget");
                fail!(ApiError::budget_exceeded(Some(retry_after), message))
            }
            (Admission::Downgrade(backend), reservation) => {
                if let Some(r) = reservation {
                    ticket.reservations.push((budget.clone(), r));
                }
                match route.backends.iter().position(|b| b.spec.name == backend) {
                    Some(i) if native_only.is_some() && !speaks(i) => {
                        let why = native_only
                            .clone()
                            .unwrap_or_else(|| ApiError::internal(""));
                        fail!(no_native_backend(&why, name, Some(&backend)))
                    }
                    Some(i) => {
                        plan = choose::Plan {
                            order: vec![i],
                            rule: None,
                        }
                    }
                    None => fail!(ApiError::internal(format!(
                        "llmesh: budget downgrade backend `{backend}` is not in route `{name}`"
                    ))),
                }
            }
        }
    }
    ticket.rule = plan.rule.map(|i| route.spec.rules[i].name.clone());
    ticket.variant = Some(route.backends[plan.order[0]].spec.variant.clone());

    // Cache: exact match on the request body, non-streaming answers only.
    let cache = if stream { None } else { route.cache.as_ref() };
    if let Some(c) = cache {
        let no_store = headers
            .get(CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("no-store") || v.contains("no-cache"));
        if no_store {
            ticket.cache = "bypass";
        } else if let Some(hit) = c
            .get(plan.order[0], &raw, now)
            .filter(|h| h.native || native_only.is_none())
        {
            ticket.cache = "hit";
            ticket.backend = Some(hit.backend);
            ticket.variant = None;
            m.cache.with_label_values(&[name, "hit"]).inc();
            let body = match translation {
                Some(mut t) if !hit.native => match t.response(&hit.body, None) {
                    Ok(b) => b,
                    Err(e) => fail!(e),
                },
                _ => hit.body,
            };
            return Ok(Done::Full {
                body,
                usage: None,
                status: StatusCode::OK,
                ticket,
            });
        } else {
            ticket.cache = "miss";
        }
        m.cache.with_label_values(&[name, ticket.cache]).inc();
    }

    let call = Call {
        op,
        body: &mut body,
        raw: verbatim.then_some(&raw[..]),
        stream,
        client_wants_usage,
        prompt_tokens: prompt.tokens,
        max_tokens,
        max_tokens_chosen: chosen.then_some(mt_key),
        native: original
            .as_ref()
            .filter(|_| passthrough)
            .map(|b| crate::providers::Native {
                endpoint,
                body: b,
                headers: &native_headers,
            }),
    };
    let outcome = proxy::run(route, &plan, call, &mut ticket).await;
    let asked = &body;
    match outcome {
        Err(e) => fail!(e),
        Ok(Outcome::Full {
            body,
            usage,
            native,
        }) => {
            // A provider that reports no usage is still charged, at an estimate marked as such.
            let usage = usage.or_else(|| {
                Some(crate::providers::Usage {
                    prompt: u64::from(if estimate_now {
                        prompt.tokens
                    } else {
                        tokens::chat_prompt(asked, false).tokens
                    }),
                    output: u64::from(tokens::answer_output(&body)),
                    estimated: true,
                    ..Default::default()
                })
            });
            if let (Some(c), "miss", Some(b)) = (cache, ticket.cache, ticket.backend) {
                c.put(
                    plan.order[0],
                    raw,
                    Hit {
                        body: body.clone(),
                        backend: b,
                        native,
                    },
                    Instant::now(),
                );
            }
            let body = match translation {
                Some(mut t) if !native => match t.response(&body, usage.as_ref()) {
                    Ok(b) => b,
                    Err(e) => fail!(e),
                },
                _ => body,
            };
            Ok(Done::Full {
                body,
                usage,
                status: StatusCode::OK,
                ticket,
            })
        }
        Ok(Outcome::Stream(start)) => {
            let idle = Duration::from_millis(route.spec.timeouts.stream_idle_ms);
            let encoder: Box<dyn crate::relay::StreamEncoder> = match translation {
                _ if start.native && endpoint == Endpoint::Responses => {
                    Box::new(crate::relay::NativeResponsesSse::default())
                }
                _ if start.native => Box::new(crate::relay::NativeSse(endpoint.error_format())),
                Some(t) => t.encoder(),
                None => Box::new(OpenAiSse),
            };
            // The backend is settled before the first byte: streams get the same headers.
            let mut headers = HeaderMap::new();
            llmesh_headers(&ticket, &mut headers, None);
            Ok(Done::Stream(
                Relay::new(start, encoder, idle, ticket),
                headers,
            ))
        }
    }
}

/// The refusal for a request only a native backend could serve, on a route (or a budget
/// downgrade to `downgraded`) without one.
fn no_native_backend(why: &ApiError, route: &str, downgraded: Option<&str>) -> ApiError {
    let mut e = why.clone();
    match downgraded {
        None => e.message.push_str(&format!(
            ". Route `{route}` has no backend that speaks the Responses API natively (provider: openai)"
        )),
        Some(b) => e.message.push_str(&format!(
            ". A budget of route `{route}` moved the request to backend `{b}`, which does not speak the Responses API natively"
        )),
    }
    e
}

/// The minimal shape each operation needs; everything else passes through to the provider.
/// The output limit the client asked for (the larger of `max_tokens` and
/// `max_completion_tokens` when both are set, as each binds) and the field it came in. A limit
/// that is not a whole number (`100000.0`, `1e5`, `"100000"`) is refused: forwarded as written,
/// it would pass no check and reach servers that accept it.
fn max_tokens_asked(body: &Map<String, Value>) -> Result<Option<(u32, &'static str)>, ApiError> {
    let mut asked: Option<(u32, &'static str)> = None;
    for key in ["max_completion_tokens", "max_tokens"] {
        match fields::get(body, key) {
            None | Some(Value::Null) => {}
            Some(v) => match v.as_u64() {
                Some(n) => {
                    let n = n.min(u64::from(u32::MAX)) as u32;
                    if asked.is_none_or(|(a, _)| n > a) {
                        asked = Some((n, key));
                    }
                }
                None => {
                    return Err(ApiError::bad_request(
                        Some(key.into()),
                        format!(
                            "llmesh: {key} must be a whole number of tokens, such as 1024 (got {}); send it as a JSON integer, without quotes, decimals or exponent",
                            crate::error::excerpt(&v.to_string(), 40)
                        ),
                    ));
                }
            },
        }
    }
    Ok(asked)
}

fn validate(op: Op, body: &Map<String, Value>) -> Result<(), ApiError> {
    match op {
        Op::Chat => match fields::get(body, "messages") {
            Some(Value::Array(m)) if !m.is_empty() => {
                for (i, msg) in m.iter().enumerate() {
                    if fields::get_in(msg, "role")
                        .and_then(Value::as_str)
                        .is_none()
                    {
                        return Err(ApiError::bad_request(
                            Some(format!("messages[{i}].role")),
                            format!(
                                "llmesh: messages[{i}] has no role: each message needs \"role\" (system, user, assistant or tool)"
                            ),
                        ));
                    }
                }
                Ok(())
            }
            Some(Value::Array(_)) => Err(ApiError::bad_request(
                Some("messages".into()),
                "llmesh: messages is empty: send at least one message",
            )),
            _ => Err(ApiError::bad_request(
                Some("messages".into()),
                "llmesh: messages is required and must be an array of {\"role\", \"content\"} objects",
            )),
        },
        Op::Completion => match fields::get(body, "prompt") {
            Some(Value::String(_) | Value::Array(_)) => Ok(()),
            _ => Err(ApiError::bad_request(
                Some("prompt".into()),
                "llmesh: prompt is required (a string or an array of strings)",
            )),
        },
        Op::Embedding => match fields::get(body, "input") {
            Some(Value::String(_) | Value::Array(_)) => Ok(()),
            _ => Err(ApiError::bad_request(
                Some("input".into()),
                "llmesh: input is required (a string or an array of strings or token arrays)",
            )),
        },
    }
}
