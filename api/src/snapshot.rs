//! The compiled configuration a sidecar serves: every default applied, every reference resolved,
//! durations in milliseconds and money in micro-dollars. It is also what the operator pushes to
//! sidecars, so it is plain serde data.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::budget::{BudgetAction, BudgetPeriod};
use crate::money::MicroUsd;
use crate::prices::Prices;
use crate::route::{Complexity, MaxTokensPolicy, ProviderKind, RankBy, Strategy};

/// Everything one sidecar serves.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// Opaque version; changes whenever the content does.
    pub version: String,
    /// Routes, sorted by namespace and name.
    pub routes: Vec<Route>,
    /// Budgets, sorted by namespace and name.
    pub budgets: Vec<Budget>,
}

/// A compiled route.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    /// Namespace of the LLMRoute.
    pub namespace: String,
    /// Name of the LLMRoute.
    pub name: String,
    /// The model name clients send.
    pub model: String,
    /// More names for the same route.
    pub aliases: Vec<String>,
    /// How a backend is chosen.
    pub strategy: Strategy,
    /// The backends, in spec order.
    pub backends: Vec<Backend>,
    /// Indices into `backends`: the fallback order.
    pub fallbacks: Vec<usize>,
    /// Rules for the rules strategy.
    pub rules: Vec<Rule>,
    /// Hybrid and cost strategy constraints.
    pub hybrid: Hybrid,
    /// Retry policy per backend.
    pub retry: Retry,
    /// Time limits.
    pub timeouts: Timeouts,
    /// Circuit breaker.
    pub breaker: Breaker,
    /// Limits checked before any upstream call.
    pub limits: Limits,
    /// The response cache, when enabled.
    pub cache: Option<Cache>,
    /// Whether clients may pin a backend with `provider/model`.
    pub allow_model_pinning: bool,
}

/// A compiled backend.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Backend {
    /// Unique name in the route.
    pub name: String,
    /// A/B variant label.
    pub variant: String,
    /// The API it speaks.
    pub provider: ProviderKind,
    /// Upstream model id.
    pub model: String,
    /// Base URL without a trailing slash.
    pub base_url: String,
    /// The provider API key, when the provider needs one.
    pub api_key: Option<SecretValue>,
    /// Split weight (0: fallback only).
    pub weight: u32,
    /// Prices in micro-dollars per 1M tokens.
    pub prices: Prices,
    /// Whether `prices` came from the table or the spec (false: unknown, costs read 0).
    pub priced: bool,
    /// Context window in tokens, when known.
    pub context_window: Option<u32>,
    /// Concurrency cap per sidecar.
    pub max_concurrency: Option<u32>,
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
    /// Azure deployment settings.
    pub azure: Option<Azure>,
    /// Mock behaviour.
    pub mock: Option<Mock>,
}

/// An API key. Its `Debug` and `Display` never show the value.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
#[serde(transparent)]
pub struct SecretValue(String);

impl SecretValue {
    /// Wraps a key.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The key itself, for the one place that puts it in a request header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretValue(<redacted>)")
    }
}

impl fmt::Display for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Azure OpenAI deployment.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Azure {
    /// Deployment name.
    pub deployment: String,
    /// `api-version` query parameter.
    pub api_version: String,
}

/// Mock provider behaviour.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Mock {
    /// Delay before the answer or the first chunk, ms.
    pub latency_ms: u64,
    /// Delay between chunks, ms.
    pub chunk_interval_ms: u64,
    /// Completion tokens to produce.
    pub output_tokens: u32,
    /// Answer text.
    pub reply: String,
    /// Injected failure.
    pub failure: Option<MockFailure>,
}

/// An injected mock failure.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MockFailure {
    /// HTTP status (0: only a mid-stream failure).
    pub status: u16,
    /// Percentage of requests failing.
    pub percent: u32,
    /// Only the first N requests fail.
    pub first_requests: Option<u32>,
    /// `retry-after` seconds.
    pub retry_after_seconds: Option<u32>,
    /// Fail a stream after this many chunks.
    pub mid_stream_after_chunks: Option<u32>,
}

/// A compiled routing rule.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    /// Rule name for headers and metrics.
    pub name: String,
    /// Task header values that match (empty: any).
    pub tasks: Vec<String>,
    /// Lower bound on estimated prompt tokens.
    pub min_prompt_tokens: Option<u32>,
    /// Upper bound on estimated prompt tokens.
    pub max_prompt_tokens: Option<u32>,
    /// Required complexity class.
    pub complexity: Option<Complexity>,
    /// Indices into the route's backends.
    pub backends: Vec<usize>,
}

/// Hybrid and cost constraints.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Hybrid {
    /// Largest blended price per 1M tokens.
    pub max_cost_per_million: Option<MicroUsd>,
    /// Largest recent latency, ms.
    pub max_latency_ms: Option<u64>,
    /// Ranking key.
    pub rank_by: RankBy,
}

/// Retry policy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Retry {
    /// Tries per backend, first included.
    pub attempts: u32,
    /// First backoff, ms.
    pub backoff_ms: u64,
    /// Backoff cap, ms.
    pub max_backoff_ms: u64,
    /// Longest honoured `retry-after`, ms.
    pub max_retry_after_ms: u64,
}

/// Time limits, ms.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Timeouts {
    /// One attempt.
    pub attempt_ms: u64,
    /// Until the first token or response headers.
    pub first_token_ms: u64,
    /// Between stream chunks.
    pub stream_idle_ms: u64,
    /// The whole request until the first byte reaches the client.
    pub total_ms: u64,
}

/// Circuit breaker settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Breaker {
    /// Consecutive failures that open the circuit.
    pub consecutive_failures: u32,
    /// Base cooldown, ms.
    pub cooldown_ms: u64,
}

/// Limits.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    /// Largest `max_tokens`.
    pub max_tokens: Option<u32>,
    /// Clamp or reject above `max_tokens`.
    pub max_tokens_policy: MaxTokensPolicy,
    /// `max_tokens` when the client gives none.
    pub default_max_tokens: Option<u32>,
    /// Largest estimated prompt.
    pub max_input_tokens: Option<u32>,
    /// Requests per minute.
    pub requests_per_minute: Option<u32>,
    /// Tokens per minute.
    pub tokens_per_minute: Option<u64>,
    /// Largest request body.
    pub max_request_bytes: u64,
}

/// Cache settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Cache {
    /// Freshness, ms.
    pub ttl_ms: u64,
    /// Most entries.
    pub max_entries: u32,
    /// Most bytes.
    pub max_bytes: u64,
}

/// A compiled budget.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Budget {
    /// Namespace of the LLMBudget.
    pub namespace: String,
    /// Name of the LLMBudget.
    pub name: String,
    /// Route names covered (empty: all in the namespace).
    pub routes: Vec<String>,
    /// Count per user key.
    pub per_user: bool,
    /// USD cap.
    pub limit_usd: Option<MicroUsd>,
    /// Token cap.
    pub limit_tokens: Option<u64>,
    /// Period.
    pub period: BudgetPeriod,
    /// Action at the cap.
    pub action: BudgetAction,
    /// Backend for the downgrade action.
    pub downgrade_backend: Option<String>,
    /// Alert thresholds, percent, ascending.
    pub alert_thresholds: Vec<u32>,
}

impl Budget {
    /// Whether this budget covers the route `namespace/name`.
    pub fn covers(&self, namespace: &str, route: &str) -> bool {
        self.namespace == namespace
            && (self.routes.is_empty() || self.routes.iter().any(|r| r == route))
    }
}
