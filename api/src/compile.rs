//! spec -> snapshot: the one compiler both the operator and a standalone sidecar use.
//!
//! Every check the CRD's schema and CEL rules make is repeated here, so a standalone config file
//! gets the same answers as `kubectl apply`, and errors name the field and the fix.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use crate::budget::{BudgetAction, LLMBudgetSpec};
use crate::duration::parse_duration;
use crate::money::parse_usd;
use crate::prices::{self, Prices};
use crate::route::{BackendSpec, LLMRouteSpec, ProviderKind, SecretKeyRef, Strategy};
use crate::snapshot::{
    Azure, Backend, Breaker, Budget, Cache, Hybrid, Limits, Mock, MockFailure, Retry, Route, Rule,
    SecretValue, Snapshot, Timeouts,
};

/// Default Azure OpenAI `api-version`.
pub const DEFAULT_AZURE_API_VERSION: &str = "2024-10-21";
/// Default largest request body: 20 MiB (base64 images make prompts big).
pub const DEFAULT_MAX_REQUEST_BYTES: u64 = 20 * 1024 * 1024;

/// One problem with one field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// The field's path, like `spec.backends[0].secretRef`.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// The problems found in one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectError {
    /// `LLMRoute` or `LLMBudget`.
    pub kind: &'static str,
    /// `namespace/name`.
    pub object: String,
    /// The problems.
    pub errors: Vec<FieldError>,
}

impl fmt::Display for ObjectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: ", self.kind, self.object)?;
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ObjectError {}

/// Where API keys come from: Kubernetes Secrets in the operator, the environment standalone.
pub trait SecretSource {
    /// The value of `secret` in `namespace`, or a message saying what is missing and how to add it.
    fn get(&self, namespace: &str, secret: &SecretKeyRef) -> Result<String, String>;
}

/// A route and the warnings its compilation raised.
#[derive(Clone, Debug)]
pub struct CompiledRoute {
    /// The route.
    pub route: Route,
    /// Things that work but deserve attention (unpinned model versions, unknown prices).
    pub warnings: Vec<FieldError>,
}

#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }

    fn duration(&mut self, field: &str, value: Option<&String>, default_ms: u64) -> u64 {
        match value {
            None => default_ms,
            Some(text) => match parse_duration(text) {
                Ok(d) => d.as_millis() as u64,
                Err(e) => {
                    self.push(field, e);
                    default_ms
                }
            },
        }
    }

    /// Records `problem` (from a [`check`] function) for `field`.
    fn check(&mut self, field: impl Into<String>, problem: Option<String>) {
        if let Some(message) = problem {
            self.push(field, message);
        }
    }

    fn usd(&mut self, field: &str, value: Option<&String>) -> Option<u64> {
        let text = value?;
        match parse_usd(text) {
            Ok(v) => Some(v),
            Err(e) => {
                self.push(field, e);
                None
            }
        }
    }
}

fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'-' | b'_' | b'.')
        })
}

/// Compiles one `LLMRoute` spec.
pub fn compile_route(
    namespace: &str,
    name: &str,
    spec: &LLMRouteSpec,
    secrets: &dyn SecretSource,
) -> Result<CompiledRoute, ObjectError> {
    let mut errs = Errors::default();
    let mut warnings = Errors::default();

    errs.check("metadata.namespace", check::object_name(namespace, true));
    errs.check("metadata.name", check::object_name(name, false));
    if spec.backends.is_empty() {
        errs.push(
            "spec.backends",
            "a route needs at least one backend: add an entry with name, provider and model",
        );
    }
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (i, b) in spec.backends.iter().enumerate() {
        if !valid_name(&b.name) {
            errs.push(
                format!("spec.backends[{i}].name"),
                format!(
                    "{} is not a valid backend name: use 1-63 lower-case letters, digits, `-`, `_` or `.`, starting and ending with a letter or digit",
                    check::shown(&b.name)
                ),
            );
        }
        if index.insert(b.name.as_str(), i).is_some() {
            errs.push(
                format!("spec.backends[{i}].name"),
                format!(
                    "backend name `{}` is used twice: names must be unique in a route",
                    b.name
                ),
            );
        }
    }

    let any_weight = spec.backends.iter().any(|b| b.weight.is_some());
    if any_weight && !spec.backends.iter().any(|b| b.weight.unwrap_or(0) > 0) {
        errs.push(
            "spec.backends",
            "when weights are set, at least one backend needs a weight above 0",
        );
    }

    let backends: Vec<Backend> = spec
        .backends
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let weight = if any_weight {
                b.weight.unwrap_or(0)
            } else if i == 0 {
                1
            } else {
                0
            };
            compile_backend(namespace, i, b, weight, secrets, &mut errs, &mut warnings)
        })
        .collect();

    let lookup = |errs: &mut Errors, field: String, n: &str| -> Option<usize> {
        match index.get(n) {
            Some(&i) => Some(i),
            None => {
                errs.push(
                    field,
                    format!(
                        "`{n}` is not a backend of this route; known backends: {}",
                        spec.backends
                            .iter()
                            .map(|b| b.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
                None
            }
        }
    };

    let fallbacks: Vec<usize> = match &spec.fallbacks {
        None => (0..backends.len()).collect(),
        Some(names) => names
            .iter()
            .enumerate()
            .filter_map(|(i, n)| lookup(&mut errs, format!("spec.fallbacks[{i}]"), n))
            .collect(),
    };

    let strategy = spec.strategy.unwrap_or_default();
    if strategy == Strategy::Rules && spec.rules.is_empty() {
        errs.push(
            "spec.rules",
            "strategy `rules` needs at least one rule: add spec.rules with match and backends",
        );
    }
    let rules = spec
        .rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            if r.backends.is_empty() {
                errs.push(
                    format!("spec.rules[{i}].backends"),
                    "a rule needs at least one backend name",
                );
            }
            if let Some(n) = &r.name {
                errs.check(format!("spec.rules[{i}].name"), check::text(n, "long-prompts"));
            }
            for (j, t) in r.matches.tasks.iter().enumerate() {
                errs.check(
                    format!("spec.rules[{i}].match.tasks[{j}]"),
                    check::text(t, "summarize"),
                );
            }
            let backends = r
                .backends
                .iter()
                .enumerate()
                .filter_map(|(j, n)| lookup(&mut errs, format!("spec.rules[{i}].backends[{j}]"), n))
                .collect();
            if let (Some(lo), Some(hi)) = (r.matches.min_prompt_tokens, r.matches.max_prompt_tokens)
                && lo > hi
            {
                errs.push(
                    format!("spec.rules[{i}].match"),
                    format!("minPromptTokens ({lo}) is above maxPromptTokens ({hi}): the rule could never match"),
                );
            }
            Rule {
                name: r.name.clone().unwrap_or_else(|| format!("rule-{i}")),
                tasks: r.matches.tasks.clone(),
                min_prompt_tokens: r.matches.min_prompt_tokens,
                max_prompt_tokens: r.matches.max_prompt_tokens,
                complexity: r.matches.complexity,
                backends,
            }
        })
        .collect();

    let h = spec.hybrid.clone().unwrap_or_default();
    let hybrid = Hybrid {
        max_cost_per_million: errs.usd(
            "spec.hybrid.maxCostPerMillionTokens",
            h.max_cost_per_million_tokens.as_ref(),
        ),
        max_latency_ms: h
            .max_latency
            .as_ref()
            .map(|_| errs.duration("spec.hybrid.maxLatency", h.max_latency.as_ref(), 0)),
        rank_by: h.rank_by.unwrap_or_default(),
    };

    let r = spec.retry.clone().unwrap_or_default();
    let retry = Retry {
        attempts: r.attempts.unwrap_or(2).clamp(1, 10),
        backoff_ms: errs.duration("spec.retry.backoff", r.backoff.as_ref(), 200),
        max_backoff_ms: errs.duration("spec.retry.maxBackoff", r.max_backoff.as_ref(), 5_000),
        max_retry_after_ms: errs.duration(
            "spec.retry.maxRetryAfter",
            r.max_retry_after.as_ref(),
            10_000,
        ),
    };
    if r.attempts == Some(0) {
        errs.push(
            "spec.retry.attempts",
            "attempts counts the first try: use 1 for no retries",
        );
    }

    let t = spec.timeouts.clone().unwrap_or_default();
    let timeouts = Timeouts {
        attempt_ms: errs.duration("spec.timeouts.attempt", t.attempt.as_ref(), 120_000),
        first_token_ms: errs.duration("spec.timeouts.firstToken", t.first_token.as_ref(), 30_000),
        stream_idle_ms: errs.duration("spec.timeouts.streamIdle", t.stream_idle.as_ref(), 60_000),
        total_ms: errs.duration("spec.timeouts.total", t.total.as_ref(), 300_000),
    };
    for (field, v) in [
        ("spec.timeouts.attempt", timeouts.attempt_ms),
        ("spec.timeouts.firstToken", timeouts.first_token_ms),
        ("spec.timeouts.streamIdle", timeouts.stream_idle_ms),
        ("spec.timeouts.total", timeouts.total_ms),
    ] {
        if v == 0 {
            errs.push(
                field,
                "a timeout of 0 would fail every request: use at least 1ms",
            );
        }
    }

    let cb = spec.circuit_breaker.clone().unwrap_or_default();
    let breaker = Breaker {
        consecutive_failures: cb.consecutive_failures.unwrap_or(5).max(1),
        cooldown_ms: errs.duration("spec.circuitBreaker.cooldown", cb.cooldown.as_ref(), 30_000),
    };

    let l = spec.limits.clone().unwrap_or_default();
    let limits = Limits {
        max_tokens: l.max_tokens,
        max_tokens_policy: l.max_tokens_policy.unwrap_or_default(),
        default_max_tokens: l.default_max_tokens,
        max_input_tokens: l.max_input_tokens,
        requests_per_minute: l.requests_per_minute,
        tokens_per_minute: l.tokens_per_minute,
        max_request_bytes: l.max_request_bytes.unwrap_or(DEFAULT_MAX_REQUEST_BYTES),
    };
    if let (Some(d), Some(m)) = (limits.default_max_tokens, limits.max_tokens)
        && d > m
    {
        errs.push(
            "spec.limits.defaultMaxTokens",
            format!("defaultMaxTokens ({d}) is above maxTokens ({m}): lower it or raise maxTokens"),
        );
    }

    let cache = match &spec.cache {
        Some(c) if c.enabled => Some(Cache {
            ttl_ms: errs.duration("spec.cache.ttl", c.ttl.as_ref(), 300_000),
            max_entries: c.max_entries.unwrap_or(1_000).max(1),
            max_bytes: c.max_bytes.unwrap_or(16 * 1024 * 1024),
        }),
        _ => None,
    };

    let model = spec.model.clone().unwrap_or_else(|| name.to_string());
    if spec.model.is_some() {
        errs.check("spec.model", check::text(&model, "chat"));
    }
    for (i, a) in spec.aliases.iter().enumerate() {
        errs.check(format!("spec.aliases[{i}]"), check::text(a, "gpt-4o"));
    }

    if !errs.0.is_empty() {
        return Err(ObjectError {
            kind: "LLMRoute",
            object: format!("{}/{}", namespace.escape_debug(), name.escape_debug()),
            errors: errs.0,
        });
    }
    Ok(CompiledRoute {
        route: Route {
            namespace: namespace.to_string(),
            name: name.to_string(),
            model,
            aliases: spec.aliases.clone(),
            strategy,
            backends,
            fallbacks,
            rules,
            hybrid,
            retry,
            timeouts,
            breaker,
            limits,
            cache,
            allow_model_pinning: spec.allow_model_pinning.unwrap_or(false),
        },
        warnings: warnings.0,
    })
}

fn compile_backend(
    namespace: &str,
    i: usize,
    b: &BackendSpec,
    weight: u32,
    secrets: &dyn SecretSource,
    errs: &mut Errors,
    warnings: &mut Errors,
) -> Backend {
    let at = |f: &str| format!("spec.backends[{i}].{f}");
    let provider = b.provider;

    let base_url = match (&b.base_url, provider.default_base_url()) {
        (Some(url), _) => {
            errs.check(at("baseUrl"), check::base_url(url));
            url.trim_end_matches('/').to_string()
        }
        (None, Some(default)) => default.to_string(),
        (None, None) => {
            let example = if provider == ProviderKind::Azure {
                "https://RESOURCE.openai.azure.com/openai"
            } else {
                "http://my-server:8000/v1"
            };
            errs.push(
                at("baseUrl"),
                format!(
                    "provider `{}` has no public endpoint: set baseUrl, like `{example}`",
                    provider.as_str()
                ),
            );
            String::new()
        }
    };

    let api_key = match &b.secret_ref {
        Some(r) => match secrets.get(namespace, r) {
            Ok(v) if !v.trim().is_empty() => Some(SecretValue::new(v.trim().to_string())),
            Ok(_) => {
                errs.push(
                    at("secretRef"),
                    format!(
                        "secret `{}` key `{}` is empty: put the provider API key in it",
                        r.name, r.key
                    ),
                );
                None
            }
            Err(e) => {
                errs.push(at("secretRef"), e);
                None
            }
        },
        None if provider.needs_key() => {
            errs.push(
                at("secretRef"),
                format!(
                    "provider `{}` needs an API key: set secretRef {{name, key}} to the Secret holding it",
                    provider.as_str()
                ),
            );
            None
        }
        None => None,
    };

    errs.check(at("model"), check::token(&b.model, "gpt-4o-2024-08-06"));
    if let Some(v) = &b.variant {
        errs.check(at("variant"), check::text(v, "control"));
    }
    if let Some(r) = &b.secret_ref {
        errs.check(at("secretRef.name"), check::token(&r.name, "openai"));
        errs.check(at("secretRef.key"), check::token(&r.key, "api-key"));
    }

    let azure = if provider == ProviderKind::Azure {
        match &b.azure {
            Some(a) => Some({
                errs.check(
                    at("azure.deployment"),
                    check::token(&a.deployment, "gpt-4o-mini"),
                );
                if let Some(v) = &a.api_version {
                    errs.check(
                        at("azure.apiVersion"),
                        check::token(v, DEFAULT_AZURE_API_VERSION),
                    );
                }
                Azure {
                    deployment: a.deployment.clone(),
                    api_version: a
                        .api_version
                        .clone()
                        .unwrap_or_else(|| DEFAULT_AZURE_API_VERSION.to_string()),
                }
            }),
            None => {
                errs.push(
                    at("azure"),
                    "provider `azure` needs azure.deployment (the deployment name in your Azure OpenAI resource)",
                );
                None
            }
        }
    } else {
        None
    };

    let table = prices::lookup(&b.model);
    let (prices, priced) = match (&b.prices, table) {
        (Some(spec), base) => {
            let base = base.unwrap_or_default();
            let input = errs
                .usd(&at("prices.input"), spec.input.as_ref())
                .unwrap_or(base.input);
            let p = Prices {
                input,
                output: errs
                    .usd(&at("prices.output"), spec.output.as_ref())
                    .unwrap_or(base.output),
                cached_input: errs
                    .usd(&at("prices.cachedInput"), spec.cached_input.as_ref())
                    .unwrap_or(if spec.input.is_some() {
                        input
                    } else {
                        base.cached_input
                    }),
                cache_write: errs
                    .usd(&at("prices.cacheWrite"), spec.cache_write.as_ref())
                    .unwrap_or(if spec.input.is_some() {
                        input
                    } else {
                        base.cache_write
                    }),
            };
            (p, true)
        }
        (None, Some(p)) => (p, true),
        (None, None) => {
            if provider != ProviderKind::Mock {
                warnings.push(
                    at("prices"),
                    format!(
                        "no shipped price for model `{}`: its cost will read 0; set prices {{input, output}} in USD per 1M tokens",
                        b.model
                    ),
                );
            }
            (Prices::default(), false)
        }
    };

    let hosted = matches!(
        provider,
        ProviderKind::Openai
            | ProviderKind::Anthropic
            | ProviderKind::Gemini
            | ProviderKind::Mistral
            | ProviderKind::Openrouter
    );
    if hosted && prices::is_unpinned(&b.model) {
        warnings.push(
            at("model"),
            format!(
                "`{}` is an alias the provider can move to a new snapshot: pin a dated version for reproducible behaviour and cost",
                b.model
            ),
        );
    }

    let mock = if provider == ProviderKind::Mock {
        let m = b.mock.clone().unwrap_or_default();
        let failure = m.failure.as_ref().map(|f| {
            if f.status != 0 && !(400..=599).contains(&f.status) {
                errs.push(
                    at("mock.failure.status"),
                    format!(
                        "{} is not an error status: use 400-599 (or 0 with midStreamAfterChunks)",
                        f.status
                    ),
                );
            }
            MockFailure {
                status: f.status,
                percent: f.percent.unwrap_or(100).min(100),
                first_requests: f.first_requests,
                retry_after_seconds: f.retry_after_seconds,
                mid_stream_after_chunks: f.mid_stream_after_chunks,
            }
        });
        Some(Mock {
            latency_ms: errs.duration(&at("mock.latency"), m.latency.as_ref(), 0),
            chunk_interval_ms: errs.duration(
                &at("mock.chunkInterval"),
                m.chunk_interval.as_ref(),
                0,
            ),
            output_tokens: m.output_tokens.unwrap_or(16),
            reply: m.reply.unwrap_or_else(|| {
                format!(
                    "This is the mock backend {} answering as {}.",
                    b.name, b.model
                )
            }),
            failure,
        })
    } else {
        if b.mock.is_some() {
            errs.push(
                at("mock"),
                "mock settings only apply to provider `mock`: remove them or change the provider",
            );
        }
        None
    };

    let mut headers: Vec<(String, String)> = Vec::new();
    for (k, v) in &b.headers {
        match check::header(k, v) {
            None => headers.push((k.to_ascii_lowercase(), v.clone())),
            Some(e) => errs.push(at(&format!("headers.{}", k.escape_debug())), e),
        }
    }

    Backend {
        name: b.name.clone(),
        variant: b.variant.clone().unwrap_or_else(|| b.name.clone()),
        provider,
        model: b.model.clone(),
        base_url,
        api_key,
        weight,
        prices,
        priced,
        context_window: b.context_window,
        max_concurrency: b.max_concurrency,
        headers,
        azure,
        mock,
    }
}

/// Compiles one `LLMBudget` spec.
pub fn compile_budget(
    namespace: &str,
    name: &str,
    spec: &LLMBudgetSpec,
) -> Result<Budget, ObjectError> {
    let mut errs = Errors::default();
    errs.check("metadata.namespace", check::object_name(namespace, true));
    errs.check("metadata.name", check::object_name(name, false));
    for (i, r) in spec.routes.iter().enumerate() {
        errs.check(format!("spec.routes[{i}]"), check::object_name(r, false));
    }
    if let Some(d) = &spec.downgrade_backend
        && !valid_name(d)
    {
        errs.push(
            "spec.downgradeBackend",
            format!(
                "{} is not a backend name: use the name of a backend of the covered routes, like `cheap`",
                check::shown(d)
            ),
        );
    }
    let limit_usd = errs.usd("spec.limit.usd", spec.limit.usd.as_ref());
    if spec.limit.usd.is_none() && spec.limit.tokens.is_none() {
        errs.push(
            "spec.limit",
            "set limit.usd (like \"100.00\"), limit.tokens, or both",
        );
    }
    let action = spec.action.unwrap_or_default();
    if action == BudgetAction::Downgrade && spec.downgrade_backend.is_none() {
        errs.push(
            "spec.downgradeBackend",
            "action `downgrade` needs downgradeBackend: the backend name to use once the budget is spent",
        );
    }
    let mut alert_thresholds = if spec.alert_thresholds.is_empty() {
        vec![50, 80, 100]
    } else {
        spec.alert_thresholds.clone()
    };
    alert_thresholds.sort_unstable();
    alert_thresholds.dedup();
    if !errs.0.is_empty() {
        return Err(ObjectError {
            kind: "LLMBudget",
            object: format!("{}/{}", namespace.escape_debug(), name.escape_debug()),
            errors: errs.0,
        });
    }
    Ok(Budget {
        namespace: namespace.to_string(),
        name: name.to_string(),
        routes: spec.routes.clone(),
        per_user: spec.per_user.unwrap_or(false),
        limit_usd,
        limit_tokens: spec.limit.tokens,
        period: spec.period.unwrap_or_default(),
        action,
        downgrade_backend: spec.downgrade_backend.clone(),
        alert_thresholds,
    })
}

/// Puts compiled routes and budgets together into one snapshot, refusing model names that two
/// routes claim (a sidecar has one flat model namespace).
pub fn assemble(mut routes: Vec<Route>, mut budgets: Vec<Budget>) -> Result<Snapshot, ObjectError> {
    routes.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    budgets.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let mut owner: BTreeMap<&str, &Route> = BTreeMap::new();
    for r in &routes {
        for (field, m) in std::iter::once(("spec.model".to_string(), &r.model)).chain(
            r.aliases
                .iter()
                .enumerate()
                .map(|(i, a)| (format!("spec.aliases[{i}]"), a)),
        ) {
            if let Some(other) = owner.insert(m.as_str(), r)
                && !std::ptr::eq(other, r)
            {
                return Err(ObjectError {
                    kind: "LLMRoute",
                    object: format!("{}/{}", r.namespace, r.name),
                    errors: vec![FieldError {
                        field,
                        message: format!(
                            "model name `{m}` is already served by LLMRoute {}/{}: each model name can belong to one route",
                            other.namespace, other.name
                        ),
                    }],
                });
            }
        }
    }
    for b in &budgets {
        if let Some(backend) = &b.downgrade_backend {
            for r in routes.iter().filter(|r| b.covers(&r.namespace, &r.name)) {
                if !r.backends.iter().any(|x| &x.name == backend) {
                    return Err(ObjectError {
                        kind: "LLMBudget",
                        object: format!("{}/{}", b.namespace, b.name),
                        errors: vec![FieldError {
                            field: "spec.downgradeBackend".into(),
                            message: format!(
                                "route {}/{} has no backend `{backend}`: add it to the route or narrow spec.routes",
                                r.namespace, r.name
                            ),
                        }],
                    });
                }
            }
        }
    }
    let mut snapshot = Snapshot {
        version: String::new(),
        routes,
        budgets,
    };
    snapshot.version = content_version(&snapshot);
    Ok(snapshot)
}

/// A short hash of the snapshot's content (FNV-1a over its JSON), so equal content has equal versions.
///
/// The JSON is hashed as it is written, never held: a sidecar checks every delta it applies
/// with this, and a pod with a thousand routes has a megabyte of it.
pub fn content_version(snapshot: &Snapshot) -> String {
    struct Fnv(u64);
    impl std::io::Write for Fnv {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            for &b in buf {
                self.0 ^= u64::from(b);
                self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    // Writing plain data to a hasher cannot fail.
    let _ = serde_json::to_writer(&mut h, &(&snapshot.routes, &snapshot.budgets));
    format!("{:016x}", h.0)
}

mod check;
#[cfg(test)]
mod tests;
