//! The admission stage: a request in the internal format, checked against its route's limits
//! (body size, shape, prompt size, the `max_tokens` policy), rate limits (RPM, TPM) and budgets,
//! and planned (the backends to try, in order). Every refusal of a limit is counted in
//! `llmesh_limit_rejections_total`; budget reservations go into the ticket as they are taken, so
//! a refusal after some were taken still settles them.

use std::sync::Arc;

use bytes::Bytes;
use http::HeaderMap;
use serde_json::{Map, Value};
use tokio::time::Instant;

use llmesh_api::route::MaxTokensPolicy;
use llmesh_api::snapshot::Limits;

use crate::account::{PromptEstimate, Ticket};
use crate::budget::{Admission, BudgetState, Reservation};
use crate::choose::{self, Facts, Plan};
use crate::error::ApiError;
use crate::fields;
use crate::ingress::Ingress;
use crate::internal::Op;
use crate::metrics::Metrics;
use crate::runtime::RouteState;
use crate::tokens;

/// A request admitted on its route.
#[derive(Debug)]
pub struct Admitted {
    /// The backends to try, in order.
    pub plan: Plan,
    /// Estimated prompt tokens (0 when nothing needed the estimate: see `estimated`).
    pub prompt_tokens: u32,
    /// Whether the prompt was estimated now; if not, the ticket estimates it later if needed.
    pub estimated: bool,
    /// Whether the client asked for a stream.
    pub stream: bool,
    /// Whether the client asked for the usage chunk itself (translated formats always do).
    pub client_wants_usage: bool,
    /// The output limit the request goes out with.
    pub limit: OutputLimit,
}

/// A request's output limit and the field it is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutputLimit {
    /// `max_tokens` after route limits and budgets.
    pub max_tokens: Option<u32>,
    /// The field the limit is in: the one the client used, else the one the model takes.
    pub key: &'static str,
    /// Whether llmesh chose the limit (a route limit or a budget's clamp) rather than the
    /// client: then no backend is sent more than its model takes.
    pub chosen: bool,
}

impl OutputLimit {
    /// Sets the limit to `n` in the request's body.
    fn set(&mut self, ingress: &mut Ingress, n: u32) {
        fields::set_output_limit(&mut ingress.body, self.key, n);
        ingress.verbatim = false;
        self.max_tokens = Some(n);
        self.chosen = true;
    }
}

/// Counts refusals of one route's limits.
struct Refusals<'a> {
    metrics: &'a Metrics,
    route: &'a str,
}

impl Refusals<'_> {
    fn count(&self, limit: &str, e: ApiError) -> ApiError {
        self.metrics
            .limit_rejections
            .with_label_values(&[self.route, limit])
            .inc();
        e
    }
}

/// Admits a request on `route` (`pinned`: a backend the client named with `provider/model`),
/// or says why not. `raw` is the client's body as it arrived.
pub fn admit(
    route: &RouteState,
    raw: &Bytes,
    headers: &HeaderMap,
    ingress: &mut Ingress,
    pinned: Option<usize>,
    ticket: &mut Ticket,
) -> Result<Admitted, ApiError> {
    let name = route.spec.name.as_str();
    let refuse = Refusals {
        metrics: &ticket.ledger.metrics,
        route: name,
    };
    let endpoint = ingress.endpoint;
    let op = endpoint.op();
    // Refused before limits count it, as the translation's refusals are.
    if let Some(why) = &ingress.native_only
        && !route
            .backends
            .iter()
            .any(|b| b.provider.speaks(&b.spec, endpoint))
    {
        return Err(no_native_backend(why, name, None));
    }
    let limits = &route.spec.limits;
    if raw.len() as u64 > limits.max_request_bytes {
        return Err(refuse.count(
            "body_size",
            ApiError::too_large(format!(
                "llmesh: the request body is {} bytes, over route `{name}`'s limit of {} (limits.maxRequestBytes); send less, or raise the limit",
                raw.len(),
                limits.max_request_bytes
            )),
        ));
    }
    validate(op, &ingress.body)?;
    let stream = stream_asked(op, &ingress.body)?;
    ticket.stream = stream;
    // Translated formats report usage themselves, from the usage chunk.
    let client_wants_usage = ingress.translation.is_some()
        || fields::get(&ingress.body, "stream_options")
            .and_then(|o| fields::get_in(o, "include_usage"))
            .and_then(Value::as_bool)
            == Some(true);
    let (prompt, estimated) =
        estimate_prompt(route, raw, stream, ingress, &mut ticket.prompt_estimate);
    if let Some(max) = limits.max_input_tokens
        && prompt.tokens > max
    {
        return Err(refuse.count("input_tokens", input_too_long(op, prompt.tokens, max, name)));
    }
    let asked = max_tokens_asked(&ingress.body)?;
    let mut limit = output_limit(ingress, op, asked, limits, name)
        .map_err(|e| refuse.count("max_tokens", e))?;
    let now = Instant::now();
    ticket.tpm_reserved =
        rate_limits(route, prompt.tokens, now).map_err(|e| refuse.count(e.reason, e))?;

    let user_key = header_str(headers, "x-llmesh-user")
        .or_else(|| fields::get(&ingress.body, "user").and_then(Value::as_str));
    let facts = Facts {
        user_key,
        task: header_str(headers, "x-llmesh-task"),
        prompt,
        max_tokens: limit.max_tokens,
        op: Some(op),
    };
    let mut plan = choose::plan(route, &facts, now, pinned);
    if let Some(why) = &ingress.native_only {
        // A request only the native format can express goes to the backends that speak it,
        // and never to the others first: their refusal would hide the answer it can have.
        plan.order.retain(|&i| speaks_native(route, i, ingress));
        if plan.order.is_empty() {
            return Err(no_native_backend(why, name, None));
        }
    }
    let user_key = user_key.map(str::to_string);
    let unix = ticket.ledger.clock.unix_now();
    let budgets = Budgets {
        route,
        user_key: user_key.as_deref(),
        prompt_tokens: prompt.tokens,
        unix,
    };
    budgets.admit(
        ingress,
        &mut limit,
        &mut plan,
        &mut ticket.reservations,
        &refuse,
    )?;
    ticket.rule = plan.rule.map(|i| route.spec.rules[i].name.clone());
    ticket.variant = Some(route.backends[plan.order[0]].spec.variant.clone());
    Ok(Admitted {
        plan,
        prompt_tokens: prompt.tokens,
        estimated,
        stream,
        client_wants_usage,
        limit,
    })
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty())
}

fn speaks_native(route: &RouteState, i: usize, ingress: &Ingress) -> bool {
    let b = &route.backends[i];
    b.provider.speaks(&b.spec, ingress.endpoint)
}

/// Whether the client asked for a stream. `"true"` is not `true`: served as a plain answer, it
/// would surprise a client that waits for events (the Messages endpoint refuses it too).
fn stream_asked(op: Op, body: &Map<String, Value>) -> Result<bool, ApiError> {
    match fields::get(body, "stream") {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(op != Op::Embedding && *b),
        Some(v) => Err(ApiError::bad_request(
            Some("stream".into()),
            format!(
                "llmesh: stream must be true or false (got {}); send it as a JSON boolean, without quotes",
                crate::error::excerpt(&v.to_string(), 40)
            ),
        )),
    }
}

/// The prompt's facts, and whether they were estimated now. The estimate reads every byte of
/// the prompt (about 13 instructions each): made now only when routing, a limit or a budget
/// reads it, or when the client's bytes are not the internal body (a translated format).
/// Otherwise the ticket keeps the client's bytes, to estimate from for an answer without usage
/// or a client that goes away.
fn estimate_prompt(
    route: &RouteState,
    raw: &Bytes,
    stream: bool,
    ingress: &mut Ingress,
    estimate: &mut PromptEstimate,
) -> (tokens::PromptFacts, bool) {
    let reads = choose::reads_prompt(route);
    let now = !ingress.verbatim
        || reads.size
        || route.spec.limits.max_input_tokens.is_some()
        || route.tpm.is_some()
        || !route.budgets.is_empty();
    if !now {
        // A stream outlives this body: keep a copy of its own size, not the read buffer a
        // slice of it may hold.
        *estimate = PromptEstimate::Later(if stream {
            Bytes::copy_from_slice(raw)
        } else {
            raw.clone()
        });
        return (tokens::PromptFacts::default(), false);
    }
    let p = tokens::chat_prompt(&ingress.body, reads.cues);
    *estimate = PromptEstimate::Known(p.tokens);
    if let Some(t) = ingress.translation.as_mut() {
        t.prompt_estimate(p.tokens);
    }
    (p, true)
}

fn input_too_long(op: Op, tokens: u32, max: u32, route: &str) -> ApiError {
    let param = match op {
        Op::Chat => "messages",
        Op::Embedding => "input",
        Op::Completion => "prompt",
    };
    ApiError::bad_request(
        Some(param.into()),
        format!(
            "llmesh: the prompt is about {tokens} tokens (estimated), over route `{route}`'s limit of {max} (limits.maxInputTokens); shorten it or ask the route's owner to raise the limit"
        ),
    )
    .with_code("input_tokens_exceeded")
}

/// The route's `max_tokens` policy applied to what the client asked (`asked`: the limit and
/// its field). Every field the client set binds, in whatever form it came; a limit llmesh sets
/// goes into the field the client used, else the one the model takes. A request that sets no
/// limit gets the route's default, else its limit: a route limit binds every request.
fn output_limit(
    ingress: &mut Ingress,
    op: Op,
    asked: Option<(u32, &'static str)>,
    limits: &Limits,
    route: &str,
) -> Result<OutputLimit, ApiError> {
    let mut limit = OutputLimit {
        max_tokens: asked.map(|(n, _)| n),
        key: match asked {
            Some((_, key)) => key,
            None if op == Op::Chat => "max_completion_tokens",
            None => "max_tokens",
        },
        chosen: false,
    };
    if op == Op::Embedding {
        return Ok(limit);
    }
    if let (Some(n), Some(max)) = (limit.max_tokens, limits.max_tokens)
        && n > max
    {
        match limits.max_tokens_policy {
            MaxTokensPolicy::Clamp => limit.set(ingress, max),
            MaxTokensPolicy::Reject => {
                let key = limit.key;
                return Err(ApiError::bad_request(
                    Some(key.into()),
                    format!("llmesh: {key} is {n}, over route `{route}`'s limit of {max} (limits.maxTokens); ask for {max} or fewer"),
                )
                .with_code("max_tokens_exceeded"));
            }
        }
    }
    let default = match (limits.default_max_tokens, limits.max_tokens) {
        (Some(d), Some(l)) => Some(d.min(l)),
        (d, l) => d.or(l),
    };
    if limit.max_tokens.is_none()
        && let Some(d) = default
    {
        limit.set(ingress, d);
    }
    Ok(limit)
}

/// Takes one request from the route's RPM bucket and the prompt's tokens from its TPM bucket:
/// the tokens taken (to reconcile with the real count at the end), or a 429 whose reason is the
/// limit (`rpm`, `tpm`).
fn rate_limits(route: &RouteState, prompt_tokens: u32, now: Instant) -> Result<u64, ApiError> {
    let name = &route.spec.name;
    if let Some(b) = &route.rpm
        && let Err(wait) = b.try_take(1, now)
    {
        return Err(ApiError::rate_limited(
            "requests",
            "rpm",
            wait,
            format!(
                "llmesh: route `{name}` allows {} requests per minute from this pod (limits.requestsPerMinute); retry after {:.1}s",
                b.per_minute(),
                wait.as_secs_f64()
            ),
        ));
    }
    let Some(b) = &route.tpm else { return Ok(0) };
    if let Err(wait) = b.try_take(u64::from(prompt_tokens), now) {
        return Err(ApiError::rate_limited(
            "tokens",
            "tpm",
            wait,
            format!(
                "llmesh: route `{name}` allows {} tokens per minute from this pod (limits.tokensPerMinute); retry after {:.1}s",
                b.per_minute(),
                wait.as_secs_f64()
            ),
        ));
    }
    Ok(u64::from(prompt_tokens))
}

/// The route's budgets, asked for one request.
struct Budgets<'a> {
    route: &'a RouteState,
    user_key: Option<&'a str>,
    prompt_tokens: u32,
    unix: u64,
}

impl Budgets<'_> {
    /// Asks each budget, priced on the backend planned first: a budget may clamp the output
    /// limit, move the request to a cheaper backend, or refuse it (reason `budget`).
    fn admit(
        &self,
        ingress: &mut Ingress,
        limit: &mut OutputLimit,
        plan: &mut Plan,
        reservations: &mut Vec<(Arc<BudgetState>, Reservation)>,
        refuse: &Refusals<'_>,
    ) -> Result<(), ApiError> {
        let route = self.route;
        let name = route.spec.name.as_str();
        let op = ingress.endpoint.op();
        for budget in &route.budgets {
            let first = &route.backends[plan.order[0]];
            let (admission, reservation) = budget.admit(
                self.user_key,
                u64::from(self.prompt_tokens),
                limit.max_tokens,
                first.output_cap,
                &first.spec.prices,
                self.unix,
            );
            match admission {
                Admission::Allow { max_tokens: clamp } => {
                    if let Some(c) = clamp
                        && op != Op::Embedding
                    {
                        limit.set(ingress, c);
                    }
                    if let Some(r) = reservation {
                        reservations.push((budget.clone(), r));
                    }
                }
                Admission::Reject {
                    retry_after,
                    message,
                } => {
                    return Err(refuse.count(
                        "budget",
                        ApiError::budget_exceeded(Some(retry_after), message),
                    ));
                }
                Admission::Downgrade(backend) => {
                    if let Some(r) = reservation {
                        reservations.push((budget.clone(), r));
                    }
                    let Some(i) = route.backends.iter().position(|b| b.spec.name == backend) else {
                        return Err(ApiError::internal(format!(
                            "llmesh: budget downgrade backend `{backend}` is not in route `{name}`"
                        )));
                    };
                    if let Some(why) = &ingress.native_only
                        && !speaks_native(route, i, ingress)
                    {
                        return Err(no_native_backend(why, name, Some(&backend)));
                    }
                    *plan = Plan {
                        order: vec![i],
                        rule: None,
                    };
                }
            }
        }
        Ok(())
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

/// The minimal shape each operation needs; everything else passes through to the provider.
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

#[cfg(test)]
mod tests;
