//! The attempt loop: try the planned backends in order, retrying retryable failures with
//! backoff that honours `retry-after`, skipping backends whose circuit is open, that are busy or
//! too small for the prompt, and failing over only before the first byte reaches the client.

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http::header::CONTENT_TYPE;
use http_body::Body;
use http_body_util::BodyExt;
use serde_json::{Map, Value};
use tokio::time::{Instant, sleep_until, timeout_at};

use llmesh_api::snapshot::Retry;

use crate::account::Ticket;
use crate::choose::Plan;
use crate::error::ApiError;
use crate::internal::{Chunk, Op, Usage};
use crate::providers::{ErrorClass, StreamDecoder, UpstreamError};
use crate::runtime::{BackendState, RouteState};
use crate::sse::SseParser;
use crate::transport::UpstreamBody;

/// Largest non-streaming answer read from a provider.
const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;
/// Largest error body read from a provider.
const MAX_ERROR_BYTES: usize = 64 * 1024;
/// How long a backend answering 401/403 stays out: its key is wrong until someone fixes it.
const AUTH_COOLDOWN: Duration = Duration::from_secs(60);

/// One request as the attempt loop sees it.
pub struct Call<'a> {
    /// What is asked.
    pub op: Op,
    /// The OpenAI-shaped body; `model` is rewritten per backend.
    pub body: &'a mut Map<String, Value>,
    /// The client's body as it arrived, when `body` is its parse unchanged but for `model`.
    pub raw: Option<&'a [u8]>,
    /// Whether the client asked for a stream.
    pub stream: bool,
    /// Whether the client asked for the usage chunk itself.
    pub client_wants_usage: bool,
    /// Estimated prompt tokens.
    pub prompt_tokens: u32,
    /// `max_tokens` after limits.
    pub max_tokens: Option<u32>,
    /// The field `max_tokens` is in, when llmesh chose it (a route limit or a budget's clamp)
    /// rather than the client: each backend is then sent no more than its model takes.
    pub max_tokens_chosen: Option<&'static str>,
    /// The client's own body, for backends that speak its format natively.
    pub native: Option<crate::providers::Native<'a>>,
}

/// A stream whose first chunk has arrived: nothing has reached the client yet.
pub struct StreamStart {
    /// Chunks decoded so far (at least one).
    pub head: Vec<Chunk>,
    /// The rest of the upstream body.
    pub body: UpstreamBody,
    /// SSE parser state.
    pub parser: SseParser,
    /// The provider's decoder.
    pub decoder: Box<dyn StreamDecoder>,
    /// Whether the stream already ended properly.
    pub finished: bool,
    /// Whether the chunks are the client's own format (native passthrough), not OpenAI chunks.
    pub native: bool,
}

/// What the winning attempt produced.
pub enum Outcome {
    /// A complete answer.
    Full {
        /// OpenAI-shaped body (or the client's own format when `native`).
        body: Bytes,
        /// Usage, when reported.
        usage: Option<Usage>,
        /// Whether the body is the client's own format (native passthrough).
        native: bool,
    },
    /// A stream ready to relay.
    Stream(StreamStart),
}

/// Runs the plan. On success the ticket names the backend that answered, holds its in-flight
/// guard and concurrency permit, and counts attempts and fallbacks.
pub async fn run(
    route: &RouteState,
    plan: &Plan,
    call: Call<'_>,
    ticket: &mut Ticket,
) -> Result<Outcome, ApiError> {
    let t = &route.spec.timeouts;
    let deadline = ticket.start + Duration::from_millis(t.total_ms);
    let need = u64::from(call.prompt_tokens) + u64::from(call.max_tokens.unwrap_or(0));
    let mut failures: Vec<(usize, UpstreamError)> = Vec::new();
    // After a context-window error, only backends with a larger window are worth trying.
    let mut min_window: Option<u32> = None;
    let mut previous: Option<(usize, &'static str)> = None;
    let ledger = ticket.ledger.clone();
    let metrics = &*ledger.metrics;
    let route_name = route.spec.name.as_str();

    for &idx in &plan.order {
        let b = &route.backends[idx];
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        // Moving on from the previous backend, whether this one is then tried or skipped, so a
        // failure followed by skips still names the backend that failed.
        if let Some((from, reason)) = previous.take() {
            metrics
                .fallbacks
                .with_label_values(&[
                    route_name,
                    &route.backends[from].spec.name,
                    &b.spec.name,
                    reason,
                    ticket.variant.as_deref().unwrap_or("none"),
                ])
                .inc();
            ticket
                .fallbacks
                .push(route.backends[from].spec.name.clone());
        }
        let skip = if !b.provider.supports(call.op) {
            Some(UpstreamError::unsupported(format!(
                "does not support {}",
                call.op.as_str()
            )))
        } else if let (Some(floor), Some(w)) = (min_window, b.spec.context_window)
            && w <= floor
        {
            Some(skipped(
                "context_window",
                format!(
                    "its context window ({w} tokens) is no larger than the one that overflowed"
                ),
            ))
        } else if let Some(w) = b.spec.context_window
            && u64::from(w) < need
        {
            Some(skipped(
                "context_window",
                format!(
                    "the prompt (~{} tokens) plus max_tokens does not fit its {w}-token context window",
                    call.prompt_tokens
                ),
            ))
        } else if !b.breaker.try_acquire(now) {
            Some(skipped(
                "circuit_open",
                "its circuit is open after repeated failures".to_string(),
            ))
        } else {
            None
        };
        if let Some(e) = skip {
            previous = Some((idx, e.reason));
            failures.push((idx, e));
            continue;
        }
        let permit = match &b.permits {
            Some(s) => match s.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    let e = skipped(
                        "busy",
                        format!(
                            "it has {} requests in flight (maxConcurrency)",
                            b.spec.max_concurrency.unwrap_or(0)
                        ),
                    );
                    previous = Some((idx, e.reason));
                    failures.push((idx, e));
                    continue;
                }
            },
            None => None,
        };
        ticket.backend = Some(idx);
        crate::fields::set(call.body, "model", Value::String(b.spec.model.clone()));
        if let (Some(key), Some(m)) = (call.max_tokens_chosen, call.max_tokens) {
            crate::fields::set_output_limit(call.body, key, capped(m, b));
        }

        let mut last: Option<UpstreamError> = None;
        for try_n in 0..route.spec.retry.attempts {
            ticket.attempts += 1;
            let guard = b.enter();
            let sent = Instant::now();
            match attempt(b, &call, route, deadline).await {
                Ok(outcome) => {
                    b.breaker.on_success();
                    b.observe_latency(sent.elapsed());
                    ticket.in_flight = Some(guard);
                    ticket.permit = permit;
                    return Ok(outcome);
                }
                Err(e) if e.reason == BUFFERS_SPENT => {
                    // Memory, not the backend, is short: neither a retry nor a fallback helps.
                    metrics
                        .limit_rejections
                        .with_label_values(&[route_name, "buffered_bytes"])
                        .inc();
                    return Err(crate::limits::Spent {
                        max: ledger.buffers.max(),
                    }
                    .error());
                }
                Err(e) => {
                    drop(guard);
                    metrics
                        .upstream_errors
                        .with_label_values(&[route_name, &b.spec.name, e.reason])
                        .inc();
                    let now = Instant::now();
                    match e.class {
                        ErrorClass::Client => return Err(client_error(route, idx, e)),
                        ErrorClass::Retryable => {
                            b.observe_failure();
                            b.breaker.on_failure(now);
                        }
                        ErrorClass::Auth => b.breaker.open_until(now + AUTH_COOLDOWN),
                        ErrorClass::NotFound => b.breaker.open_until(
                            now + Duration::from_millis(route.spec.breaker.cooldown_ms),
                        ),
                        ErrorClass::ContextWindow => {
                            min_window = Some(
                                min_window
                                    .unwrap_or(0)
                                    .max(b.spec.context_window.unwrap_or(0)),
                            );
                        }
                        ErrorClass::ContentPolicy | ErrorClass::Unsupported => {}
                    }
                    // A failure that opened the circuit (or failed its probe) ends the retries:
                    // the backend is out, so the next fallback gets the request.
                    let retry = e.class == ErrorClass::Retryable
                        && try_n + 1 < route.spec.retry.attempts
                        && b.breaker.is_available(now);
                    let wait = retry
                        .then(|| backoff(&route.spec.retry, try_n, e.retry_after))
                        .flatten();
                    let too_long = e.retry_after.is_some_and(|ra| {
                        ra > Duration::from_millis(route.spec.retry.max_retry_after_ms)
                    });
                    if too_long && let Some(ra) = e.retry_after {
                        // The provider asked us to stay away longer than we wait: honour it.
                        b.breaker.open_until(now + ra);
                    }
                    let reason = e.reason;
                    last = Some(e);
                    match wait {
                        Some(d) if !too_long && now + d < deadline => {
                            metrics
                                .retries
                                .with_label_values(&[route_name, &b.spec.name, reason])
                                .inc();
                            sleep_until(now + d).await;
                        }
                        _ => break,
                    }
                }
            }
        }
        if let Some(e) = last {
            previous = Some((idx, e.reason));
            failures.push((idx, e));
        }
    }
    Err(exhausted(route, failures, Instant::now() >= deadline))
}

/// A limit llmesh chose, no larger than what backend `b`'s model takes (providers refuse more).
fn capped(max_tokens: u32, b: &BackendState) -> u32 {
    b.output_cap.map_or(max_tokens, |cap| max_tokens.min(cap))
}

/// The reason of an attempt whose answer did not fit under `--max-buffered-bytes`.
const BUFFERS_SPENT: &str = "buffered_bytes";

fn buffers_spent(spent: crate::limits::Spent) -> UpstreamError {
    UpstreamError {
        class: ErrorClass::Unsupported,
        status: None,
        message: spent.to_string(),
        retry_after: None,
        reason: BUFFERS_SPENT,
        openai_body: None,
    }
}

fn skipped(reason: &'static str, message: String) -> UpstreamError {
    UpstreamError {
        class: ErrorClass::Unsupported,
        status: None,
        message,
        retry_after: None,
        reason,
        openai_body: None,
    }
}

/// Backoff before retry `n + 1`: exponential from `backoff` with equal jitter, capped at
/// `max_backoff`, and never shorter than the provider's `retry-after`.
pub fn backoff(r: &Retry, n: u32, retry_after: Option<Duration>) -> Option<Duration> {
    let cap = r
        .backoff_ms
        .saturating_mul(1u64 << n.min(20))
        .min(r.max_backoff_ms);
    let jittered = cap / 2 + fastrand::u64(0..=cap / 2);
    let d = Duration::from_millis(jittered);
    Some(match retry_after {
        Some(ra) if ra <= Duration::from_millis(r.max_retry_after_ms) => d.max(ra),
        _ => d,
    })
}

/// One attempt at backend `b`. Every failure leaves here redacted for the backend's key, whatever
/// the provider's classifier or decoder put in it.
async fn attempt(
    b: &BackendState,
    call: &Call<'_>,
    route: &RouteState,
    deadline: Instant,
) -> Result<Outcome, UpstreamError> {
    attempt_unredacted(b, call, route, deadline)
        .await
        .map_err(|e| e.redacted(crate::providers::key(&b.spec)))
}

async fn attempt_unredacted(
    b: &BackendState,
    call: &Call<'_>,
    route: &RouteState,
    deadline: Instant,
) -> Result<Outcome, UpstreamError> {
    let t = &route.spec.timeouts;
    let sent = Instant::now();
    let first_deadline = deadline.min(sent + Duration::from_millis(t.first_token_ms));
    let attempt_deadline = deadline.min(sent + Duration::from_millis(t.attempt_ms));
    let native = call
        .native
        .as_ref()
        .filter(|n| b.provider.speaks(&b.spec, n.endpoint));
    let req = match native {
        Some(n) => {
            let max_tokens = match call.max_tokens_chosen {
                Some(_) => call.max_tokens.map(|m| capped(m, b)),
                None => call.max_tokens,
            };
            b.provider
                .native_request(&b.spec, n, call.stream, max_tokens)?
        }
        None => b
            .provider
            .request(&b.spec, call.op, call.body, call.raw, call.stream)?,
    };
    let native = native.is_some();
    let timeout = |what: &str| {
        UpstreamError::retryable("timeout", format!("no {what} within the time limit"))
    };

    let resp = match timeout_at(first_deadline.min(attempt_deadline), b.transport.send(req)).await {
        Err(_) => return Err(timeout("response")),
        Ok(Err(e)) => {
            let reason = if e.connect { "connect" } else { "transport" };
            return Err(UpstreamError::retryable(reason, e.message));
        }
        Ok(Ok(r)) => r,
    };
    let (parts, mut body) = resp.into_parts();
    if parts.status.is_redirection() {
        // Clients cannot follow a redirect they never see, and llmesh does not follow one: a
        // provider's API does not redirect, so the base URL is wrong.
        return Err(UpstreamError {
            class: ErrorClass::NotFound,
            status: Some(parts.status),
            message: format!(
                "answered {} (a redirect, which llmesh does not follow); set the backend's baseUrl to the API's final URL",
                parts.status
            ),
            retry_after: None,
            reason: "redirect",
            openai_body: None,
        });
    }
    if !parts.status.is_success() {
        let bytes =
            match timeout_at(attempt_deadline, read_to_end(&mut body, MAX_ERROR_BYTES)).await {
                Ok(Ok(b)) => b,
                Ok(Err(ReadError::Spent(spent))) => return Err(buffers_spent(spent)),
                _ => Bytes::new(),
            };
        return Err(b
            .provider
            .error(&b.spec, parts.status, &parts.headers, &bytes));
    }
    let content_type = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");

    if !call.stream {
        let bytes =
            match timeout_at(attempt_deadline, read_to_end(&mut body, MAX_ANSWER_BYTES)).await {
                Err(_) => return Err(timeout("complete answer")),
                Ok(Err(ReadError::Cut(e))) => {
                    return Err(UpstreamError::retryable(
                        "reset",
                        format!("the answer was cut off: {e}"),
                    ));
                }
                Ok(Err(ReadError::Spent(spent))) => return Err(buffers_spent(spent)),
                Ok(Ok(b)) => b,
            };
        if !content_type.is_empty() && !content_type.contains("json") {
            return Err(UpstreamError::retryable(
                "malformed",
                format!("expected a JSON answer, got content-type `{content_type}`"),
            ));
        }
        let decoded = if native {
            b.provider.native_decode(&b.spec, bytes)?
        } else {
            b.provider.decode(&b.spec, call.op, bytes)?
        };
        return Ok(Outcome::Full {
            body: crate::providers::scrub_answer(decoded.body, crate::providers::key(&b.spec)),
            usage: decoded.usage,
            native,
        });
    }

    if !content_type.contains("text/event-stream") {
        return Err(UpstreamError::retryable(
            "malformed",
            format!("expected an event stream, got content-type `{content_type}`"),
        ));
    }
    let mut parser = SseParser::default();
    let mut decoder = if native {
        b.provider.native_stream(&b.spec)
    } else {
        b.provider.stream(&b.spec, call.op, call.client_wants_usage)
    };
    let mut head = Vec::new();
    let mut events = Vec::new();
    // Read until the first chunk: up to here a failure can still fail over.
    loop {
        let frame = match timeout_at(first_deadline, body.frame()).await {
            Err(_) => return Err(timeout("first token")),
            Ok(None) => {
                parser.finish(&mut events);
                for ev in events.drain(..) {
                    decoder.event(ev, &mut head)?;
                }
                decoder.finish(&mut head)?;
                if head.iter().any(|c| matches!(c, Chunk::Data(_))) {
                    return Ok(Outcome::Stream(StreamStart {
                        head,
                        body,
                        parser,
                        decoder,
                        finished: true,
                        native,
                    }));
                }
                return Err(UpstreamError::retryable(
                    "stream_cut",
                    "the stream ended without any content",
                ));
            }
            Ok(Some(Err(e))) => {
                return Err(UpstreamError::retryable(
                    "reset",
                    format!("the stream broke before its first token: {e}"),
                ));
            }
            Ok(Some(Ok(f))) => f,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        parser
            .push(&data, &mut events)
            .map_err(|m| UpstreamError::retryable("malformed", m))?;
        for ev in events.drain(..) {
            decoder.event(ev, &mut head)?;
        }
        if head.iter().any(|c| matches!(c, Chunk::Data(_))) {
            return Ok(Outcome::Stream(StreamStart {
                head,
                body,
                parser,
                decoder,
                finished: false,
                native,
            }));
        }
    }
}

/// Why a body could not be read whole.
enum ReadError {
    /// The body broke off or was too long.
    Cut(String),
    /// `--max-buffered-bytes` has no room for it.
    Spent(crate::limits::Spent),
}

/// Reads a whole body, up to `max` bytes, each counted under `--max-buffered-bytes` until the
/// request's answer is sent: all of it at once when its length is known, so an answer that
/// cannot fit is refused before it is read.
async fn read_to_end(body: &mut UpstreamBody, max: usize) -> Result<Bytes, ReadError> {
    let mut taken = 0;
    let read = read_counted(body, max, &mut taken).await;
    if read.is_err() {
        // The buffer is gone: give its bytes back now, not when the error has been answered.
        crate::limits::release(taken);
    }
    read
}

async fn read_counted(
    body: &mut UpstreamBody,
    max: usize,
    taken: &mut usize,
) -> Result<Bytes, ReadError> {
    let mut buf = match body.size_hint().exact().map(|n| n as usize) {
        Some(n) if n > max => {
            return Err(ReadError::Cut(format!("the answer is over {max} bytes")));
        }
        Some(n) => {
            crate::limits::reserve(n).map_err(ReadError::Spent)?;
            *taken = n;
            bytes::BytesMut::with_capacity(n)
        }
        None => bytes::BytesMut::new(),
    };
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ReadError::Cut(crate::transport::error_chain(e.as_ref())))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > max {
                return Err(ReadError::Cut(format!("the answer is over {max} bytes")));
            }
            // A body longer than it said is counted for what it adds.
            let extra = (buf.len() + data.len()).saturating_sub(*taken);
            if extra > 0 {
                reserve_more(extra, *taken).await?;
                *taken += extra;
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// Reserves `n` more bytes for an answer that holds `taken`. When several answers of unknown
/// length meet the limit together, those holding less than half of it fail at once and give
/// their bytes back, while the one holding more waits for them (up to [`ROOM_WAIT`]): otherwise
/// readers in step could all fail, and none be answered.
async fn reserve_more(n: usize, taken: usize) -> Result<(), ReadError> {
    let mut waited = Duration::ZERO;
    loop {
        match crate::limits::reserve(n) {
            Ok(()) => return Ok(()),
            Err(spent) if taken > spent.max / 2 && waited < ROOM_WAIT => {
                tokio::time::sleep(Duration::from_millis(1)).await;
                waited += Duration::from_millis(1);
            }
            Err(spent) => return Err(ReadError::Spent(spent)),
        }
    }
}

/// How long the largest answer waits for the others to give memory back.
const ROOM_WAIT: Duration = Duration::from_secs(1);

fn client_error(route: &RouteState, idx: usize, e: UpstreamError) -> ApiError {
    let status = e.status.unwrap_or(StatusCode::BAD_REQUEST);
    let mut err = ApiError::bad_request(
        None,
        format!(
            "backend `{}` refused the request: {}",
            route.backends[idx].spec.name, e.message
        ),
    );
    err.status = status;
    err.reason = "upstream_4xx";
    err.passthrough = e.openai_body;
    err
}

/// The error when every backend failed or was skipped.
fn exhausted(
    route: &RouteState,
    failures: Vec<(usize, UpstreamError)>,
    timed_out: bool,
) -> ApiError {
    let detail: Vec<String> = failures
        .iter()
        .map(|(i, e)| format!("{}: {}", route.backends[*i].spec.name, e.message))
        .collect();
    let attempted: Vec<&UpstreamError> = failures
        .iter()
        .map(|(_, e)| e)
        .filter(|e| e.class != ErrorClass::Unsupported)
        .collect();
    let all_429 = !attempted.is_empty()
        && attempted
            .iter()
            .all(|e| e.status == Some(StatusCode::TOO_MANY_REQUESTS));
    let all_timeouts = !attempted.is_empty() && attempted.iter().all(|e| e.reason == "timeout");
    let context = failures
        .iter()
        .any(|(_, e)| e.class == ErrorClass::ContextWindow);
    let policy = failures
        .iter()
        .any(|(_, e)| e.class == ErrorClass::ContentPolicy);
    let what = if detail.is_empty() {
        "no backend could be tried".to_string()
    } else {
        detail.join("; ")
    };
    let msg = format!(
        "llmesh: no backend of route `{}` answered ({what})",
        route.spec.name
    );
    if context
        && attempted
            .iter()
            .all(|e| matches!(e.class, ErrorClass::ContextWindow))
    {
        return ApiError::bad_request(Some("messages".into()), format!("{msg}. The prompt is too long for every backend: shorten it or add a backend with a larger contextWindow"))
            .with_code("context_length_exceeded");
    }
    if policy
        && attempted
            .iter()
            .all(|e| matches!(e.class, ErrorClass::ContentPolicy))
    {
        return ApiError::bad_request(None, msg).with_code("content_policy_violation");
    }
    if all_429 {
        let mut e = ApiError::rate_limited("requests", "upstream_429", Duration::ZERO, msg);
        e.retry_after = attempted
            .iter()
            .filter_map(|e| e.retry_after)
            .min()
            .or(Some(Duration::from_secs(1)));
        return e;
    }
    if timed_out || all_timeouts {
        return ApiError::upstream(StatusCode::GATEWAY_TIMEOUT, "upstream_timeout", msg);
    }
    if attempted.is_empty() {
        return ApiError::upstream(StatusCode::SERVICE_UNAVAILABLE, "no_backend", msg);
    }
    ApiError::upstream(StatusCode::BAD_GATEWAY, "upstream_error", msg)
}
