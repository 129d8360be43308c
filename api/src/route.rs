//! `LLMRoute`: one model name clients call, the backends behind it, and how to choose among them.
//!
//! The same spec is applied with `kubectl` (the operator derives the CRD from it) and written in a
//! standalone sidecar's config file.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::condition::Condition;
use crate::duration::DURATION_PATTERN;
use crate::money::USD_PATTERN;

/// Schema pattern for names clients send or headers carry (models, aliases, variants, rule
/// names): no control characters, no space at either end. `compile` checks the same.
pub const TEXT_PATTERN: &str = r"^[^\s\x00-\x1F\x7F]([^\x00-\x1F\x7F]*[^\s\x00-\x1F\x7F])?$";

/// Schema pattern for upstream ids that end up in request URLs (backend models, Azure
/// deployments, Secret references): no whitespace, control characters, `?` or `#`.
pub const TOKEN_PATTERN: &str = r"^[^\s\x00-\x1F\x7F?#]+$";

/// Schema pattern for `baseUrl`: absolute http(s), a host with no user info, and no whitespace,
/// control characters, query or fragment. `compile` checks the host, port and path further.
pub const BASE_URL_PATTERN: &str = r"^https?://[^\s\x00-\x1F\x7F/?#@]+(/[^\s\x00-\x1F\x7F?#]*)?$";

/// Schema pattern for backend names (also `fallbacks`, rule backends, `downgradeBackend`).
pub const BACKEND_NAME_PATTERN: &str = r"^[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$";

/// Routes one client-facing model name to a set of LLM backends with fallbacks, A/B splits,
/// retries, limits and a cache.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[cfg_attr(
    feature = "kube",
    derive(kube::CustomResource),
    kube(
        group = "llmesh.io",
        version = "v1alpha1",
        kind = "LLMRoute",
        plural = "llmroutes",
        shortname = "llmr",
        namespaced,
        status = "LLMRouteStatus",
        doc = "Routes one model name that clients send to LLM backends, with fallbacks, A/B splits, retries, limits and a cache. Served by the llmesh sidecars of the pods it selects.",
        printcolumn = r#"{"name":"Model","type":"string","jsonPath":".status.model"}"#,
        printcolumn = r#"{"name":"Backends","type":"string","jsonPath":".status.backends"}"#,
        printcolumn = r#"{"name":"Ready Sidecars","type":"integer","jsonPath":".status.readySidecars"}"#,
        printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
        printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(
    extend("x-kubernetes-validations" = [
        {
            "rule": "!has(self.fallbacks) || self.fallbacks.all(f, self.backends.exists(b, b.name == f))",
            "message": "every name in spec.fallbacks must be the name of a backend in spec.backends",
            "fieldPath": ".fallbacks"
        },
        {
            "rule": "!self.backends.exists(b, has(b.weight)) || self.backends.exists(b, has(b.weight) && b.weight > 0)",
            "message": "when weights are set, at least one backend needs a weight above 0",
            "fieldPath": ".backends"
        },
        {
            "rule": "!has(self.strategy) || self.strategy != 'rules' || (has(self.rules) && size(self.rules) > 0)",
            "message": "strategy `rules` needs at least one entry in spec.rules",
            "fieldPath": ".rules"
        },
        {
            "rule": "!has(self.rules) || self.rules.all(r, r.backends.all(n, self.backends.exists(b, b.name == n)))",
            "message": "every backend named in spec.rules[].backends must be in spec.backends",
            "fieldPath": ".rules"
        }
    ])
)]
pub struct LLMRouteSpec {
    /// The model name clients send (`"model": "chat"`). Defaults to the route's metadata.name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), pattern(TEXT_PATTERN))]
    pub model: Option<String>,

    /// More model names that reach this route (for example `gpt-4o`, so existing code keeps working).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 32),
        inner(length(min = 1, max = 253), pattern(TEXT_PATTERN))
    )]
    pub aliases: Vec<String>,

    /// Which pods' sidecars serve this route. Empty or absent: every injected pod in the namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,

    /// The upstream models behind this route. The first is the primary unless weights say otherwise.
    #[schemars(length(min = 1, max = 32))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub backends: Vec<BackendSpec>,

    /// How a backend is chosen for each request. Default `weighted`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,

    /// Backend names to try, in order, when the chosen one fails. Absent: every other backend in
    /// the order listed. Empty list: no fallback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 63)))]
    pub fallbacks: Option<Vec<String>>,

    /// Rules for `strategy: rules`, checked in order; the first that matches picks the backend set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub rules: Vec<RuleSpec>,

    /// Constraints and ranking for `strategy: hybrid` (also used as filters by `cost`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hybrid: Option<HybridSpec>,

    /// Retries of one backend before moving to the next fallback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,

    /// Time limits for each attempt, the first token and the whole request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<TimeoutSpec>,

    /// When a failing backend is taken out of rotation and how it is probed back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreakerSpec>,

    /// Token, rate and size limits applied before any upstream call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitsSpec>,

    /// Exact-match response cache, off unless enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheSpec>,

    /// Let clients bypass the split and pin one backend by sending `provider/model` (for example
    /// `openai/gpt-4o-mini`) as the model. Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_model_pinning: Option<bool>,
}

/// A Kubernetes label selector (the same shape as `metav1.LabelSelector`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    /// Labels a pod must carry, all of them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    /// Set-based requirements, all of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

/// One set-based label requirement.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelectorRequirement {
    /// The label key.
    pub key: String,
    /// `In`, `NotIn`, `Exists` or `DoesNotExist`.
    pub operator: SelectorOperator,
    /// Values for `In` and `NotIn`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// Operators of a label selector requirement.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum SelectorOperator {
    /// The label's value is one of `values`.
    #[default]
    In,
    /// The label is absent or its value is not in `values`.
    NotIn,
    /// The label is present.
    Exists,
    /// The label is absent.
    DoesNotExist,
}

/// One upstream model.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendSpec {
    /// A short name for this backend, unique in the route; used in fallbacks, rules, headers and metrics.
    #[schemars(length(min = 1, max = 63), pattern(BACKEND_NAME_PATTERN))]
    pub name: String,

    /// Which API the backend speaks.
    pub provider: ProviderKind,

    /// The upstream model id (for Azure OpenAI the underlying model, used for pricing).
    #[schemars(length(min = 1, max = 253), pattern(TOKEN_PATTERN))]
    pub model: String,

    /// Base URL of the API, up to and including the version prefix (for example
    /// `https://api.openai.com/v1`). Defaults to the provider's public endpoint; required for
    /// `openaiCompatible` and `azure`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(BASE_URL_PATTERN))]
    pub base_url: Option<String>,

    /// The Secret key holding the provider API key. Standalone, `{name: openai, key: api-key}` is
    /// read from the environment variable `OPENAI_API_KEY` (name and key upper-cased, joined by `_`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,

    /// Share of traffic for the weighted split. When no backend sets a weight, the first gets all
    /// traffic and the rest are fallbacks. Weight 0: fallback only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000000))]
    pub weight: Option<u32>,

    /// The A/B variant label in the `x-llmesh-variant` header and metrics. Defaults to the name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), pattern(TEXT_PATTERN))]
    pub variant: Option<String>,

    /// Prices in USD per 1M tokens, overriding the shipped price table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prices: Option<PriceSpec>,

    /// The model's context window in tokens. Requests that cannot fit skip this backend, and a
    /// context-window error falls back to a backend with a larger one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub context_window: Option<u32>,

    /// Most requests in flight to this backend from one sidecar; more go to the next backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_concurrency: Option<u32>,

    /// Extra request headers, for example OpenRouter's `HTTP-Referer` and `X-Title`. Headers
    /// that carry a credential (`Authorization`, `Cookie`, `X-Auth-Token`, any name with `auth`,
    /// `key`, `token`, `secret` or `password` in it) are refused: keys come only from `secretRef`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,

    /// Azure OpenAI deployment settings (provider `azure`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure: Option<AzureSpec>,

    /// Behaviour of the built-in `mock` provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mock: Option<MockSpec>,
}

/// The API a backend speaks. OpenAI-compatible servers with a known public endpoint have their
/// own names so that only the key needs configuring.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ProviderKind {
    /// OpenAI (`https://api.openai.com/v1`).
    #[default]
    Openai,
    /// Azure OpenAI: deployment URLs, `api-version` and the `api-key` header.
    Azure,
    /// OpenRouter (`https://openrouter.ai/api/v1`), model ids like `anthropic/claude-sonnet-4`.
    Openrouter,
    /// Any server that speaks the OpenAI API; `baseUrl` is required.
    OpenaiCompatible,
    /// vLLM's OpenAI-compatible server (default `http://127.0.0.1:8000/v1`).
    Vllm,
    /// Ollama's OpenAI-compatible API (default `http://127.0.0.1:11434/v1`).
    Ollama,
    /// Mistral (`https://api.mistral.ai/v1`).
    Mistral,
    /// Groq (`https://api.groq.com/openai/v1`).
    Groq,
    /// Together AI (`https://api.together.xyz/v1`).
    Together,
    /// DeepSeek (`https://api.deepseek.com/v1`).
    Deepseek,
    /// Anthropic Messages API (`https://api.anthropic.com/v1`).
    Anthropic,
    /// Google Gemini API (`https://generativelanguage.googleapis.com/v1beta`).
    Gemini,
    /// A built-in fake that answers locally: for offline quickstarts and tests.
    Mock,
}

impl ProviderKind {
    /// Every provider, in documentation order.
    pub const ALL: [ProviderKind; 13] = [
        Self::Openai,
        Self::Azure,
        Self::Openrouter,
        Self::OpenaiCompatible,
        Self::Vllm,
        Self::Ollama,
        Self::Mistral,
        Self::Groq,
        Self::Together,
        Self::Deepseek,
        Self::Anthropic,
        Self::Gemini,
        Self::Mock,
    ];

    /// The name used in manifests, metrics and headers.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Openai => "openai",
            Self::Azure => "azure",
            Self::Openrouter => "openrouter",
            Self::OpenaiCompatible => "openaiCompatible",
            Self::Vllm => "vllm",
            Self::Ollama => "ollama",
            Self::Mistral => "mistral",
            Self::Groq => "groq",
            Self::Together => "together",
            Self::Deepseek => "deepseek",
            Self::Anthropic => "anthropic",
            Self::Gemini => "gemini",
            Self::Mock => "mock",
        }
    }

    /// The public endpoint used when `baseUrl` is not set.
    pub fn default_base_url(self) -> Option<&'static str> {
        match self {
            Self::Openai => Some("https://api.openai.com/v1"),
            Self::Openrouter => Some("https://openrouter.ai/api/v1"),
            Self::Vllm => Some("http://127.0.0.1:8000/v1"),
            Self::Ollama => Some("http://127.0.0.1:11434/v1"),
            Self::Mistral => Some("https://api.mistral.ai/v1"),
            Self::Groq => Some("https://api.groq.com/openai/v1"),
            Self::Together => Some("https://api.together.xyz/v1"),
            Self::Deepseek => Some("https://api.deepseek.com/v1"),
            Self::Anthropic => Some("https://api.anthropic.com/v1"),
            Self::Gemini => Some("https://generativelanguage.googleapis.com/v1beta"),
            Self::Mock => Some("mock://local"),
            Self::Azure | Self::OpenaiCompatible => None,
        }
    }

    /// Whether calls need an API key (self-hosted servers and the mock usually do not).
    pub fn needs_key(self) -> bool {
        !matches!(
            self,
            Self::Vllm | Self::Ollama | Self::OpenaiCompatible | Self::Mock
        )
    }

    /// Whether the backend speaks the OpenAI chat completions wire format natively.
    pub fn is_openai_family(self) -> bool {
        !matches!(self, Self::Anthropic | Self::Gemini)
    }
}

/// A reference to one key of a Secret in the route's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretKeyRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253), pattern(TOKEN_PATTERN))]
    pub name: String,
    /// The key inside the Secret's data.
    #[schemars(length(min = 1, max = 253), pattern(TOKEN_PATTERN))]
    pub key: String,
}

impl SecretKeyRef {
    /// The environment variable a standalone sidecar reads this key from:
    /// `{name: openai, key: api-key}` -> `OPENAI_API_KEY`.
    pub fn env_var(&self) -> String {
        format!("{}_{}", self.name, self.key)
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect()
    }
}

/// Prices in USD per 1M tokens, as decimal strings (`"2.50"`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PriceSpec {
    /// Uncached input tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(USD_PATTERN))]
    pub input: Option<String>,
    /// Output tokens (reasoning tokens included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(USD_PATTERN))]
    pub output: Option<String>,
    /// Input tokens served from the provider's prompt cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(USD_PATTERN))]
    pub cached_input: Option<String>,
    /// Input tokens written to the provider's prompt cache (Anthropic cache creation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(USD_PATTERN))]
    pub cache_write: Option<String>,
}

/// Azure OpenAI deployment settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AzureSpec {
    /// The deployment name in the Azure OpenAI resource.
    #[schemars(length(min = 1, max = 253), pattern(TOKEN_PATTERN))]
    pub deployment: String,
    /// The `api-version` query parameter. Default `2024-10-21`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), pattern(TOKEN_PATTERN))]
    pub api_version: Option<String>,
}

/// How the built-in mock provider answers.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MockSpec {
    /// Delay before the response (non-streaming) or before the first chunk (streaming).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub latency: Option<String>,
    /// Delay between streamed chunks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub chunk_interval: Option<String>,
    /// Completion tokens to produce. Default 16.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100000))]
    pub output_tokens: Option<u32>,
    /// Text to answer with (repeated or cut to `outputTokens` words). Default: a sentence naming
    /// the backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<String>,
    /// Make the mock fail, to try fallbacks and retries offline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<MockFailureSpec>,
}

/// A failure the mock provider injects.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MockFailureSpec {
    /// HTTP status to answer with (429, 500, 503, 529, ...). 0 with `midStream` only.
    #[schemars(range(min = 0, max = 599))]
    pub status: u16,
    /// Percentage of requests that fail (0-100). Default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub percent: Option<u32>,
    /// Only the first N requests fail, then the mock recovers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_requests: Option<u32>,
    /// The `retry-after` header value in seconds, for 429 and 503.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<u32>,
    /// Fail a stream after this many chunks instead of before the response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mid_stream_after_chunks: Option<u32>,
}

/// Backend choice strategies.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Strategy {
    /// Weighted split by `weight`, sticky per user key.
    #[default]
    Weighted,
    /// The healthy backend with the lowest recent latency (EWMA).
    Latency,
    /// The healthy backend with the fewest requests in flight.
    LeastBusy,
    /// The cheapest healthy backend that fits the request and the `hybrid` limits.
    Cost,
    /// The first matching entry of `rules` picks the backend set.
    Rules,
    /// Filter by `hybrid.maxCostPerMillionTokens` and `hybrid.maxLatency`, then rank by `hybrid.rankBy`.
    Hybrid,
}

/// A routing rule for `strategy: rules`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleSpec {
    /// A name for the rule, shown in the `x-llmesh-rule` header. Defaults to `rule-<index>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), pattern(TEXT_PATTERN))]
    pub name: Option<String>,
    /// What the request must look like; every condition given must hold. Empty: always matches.
    #[serde(default, rename = "match")]
    pub matches: RuleMatch,
    /// Backends to choose from (weighted among themselves) when the rule matches.
    #[schemars(length(min = 1, max = 32), inner(length(min = 1, max = 63)))]
    pub backends: Vec<String>,
}

/// Conditions of a routing rule.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleMatch {
    /// The `x-llmesh-task` request header is one of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(length(min = 1, max = 253), pattern(TEXT_PATTERN)))]
    pub tasks: Vec<String>,
    /// The estimated prompt is at least this many tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_prompt_tokens: Option<u32>,
    /// The estimated prompt is at most this many tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_prompt_tokens: Option<u32>,
    /// The prompt's estimated complexity: `simple` or `complex` (tools, code, long multi-turn
    /// history or reasoning words).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub complexity: Option<Complexity>,
}

/// Prompt complexity classes for rules.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Complexity {
    /// Short, single-turn prompts without tools, code or reasoning cues.
    #[default]
    Simple,
    /// Everything else.
    Complex,
}

/// Constraints and ranking for the hybrid and cost strategies.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HybridSpec {
    /// Skip backends whose blended price (input + output per 1M tokens, averaged) is above this, in USD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(USD_PATTERN))]
    pub max_cost_per_million_tokens: Option<String>,
    /// Skip backends whose recent latency (EWMA) is above this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub max_latency: Option<String>,
    /// What to rank the remaining backends by: `cost` or `latency`. Default `latency`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rank_by: Option<RankBy>,
}

/// Ranking keys for the hybrid strategy.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum RankBy {
    /// Lowest recent latency first.
    #[default]
    Latency,
    /// Cheapest first.
    Cost,
}

/// Retries of one backend.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetrySpec {
    /// Tries per backend, the first included, for retryable errors (connect errors, timeouts
    /// before the first byte, 408, 429, 500, 502, 503, 504, 529). Default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10))]
    pub attempts: Option<u32>,
    /// First backoff; doubles each retry, with full jitter. Default `200ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub backoff: Option<String>,
    /// Longest backoff. Default `5s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub max_backoff: Option<String>,
    /// Honour `retry-after` up to this long; a longer wait moves on to the next fallback. Default `10s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub max_retry_after: Option<String>,
}

/// Time limits.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TimeoutSpec {
    /// One upstream attempt, from sending the request to the last byte of a non-streaming answer.
    /// Default `120s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub attempt: Option<String>,
    /// From sending the request to the first token (streaming) or the response headers. Default `30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub first_token: Option<String>,
    /// Longest silence between two chunks of a stream. Default `60s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub stream_idle: Option<String>,
    /// The whole request across retries and fallbacks, until the first byte reaches the client.
    /// Default `300s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub total: Option<String>,
}

/// Circuit breaker settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CircuitBreakerSpec {
    /// Consecutive failures that open the circuit. Default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub consecutive_failures: Option<u32>,
    /// How long an open circuit keeps the backend out before one probe request. Default `30s`;
    /// doubles after each failed probe up to 8 times this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub cooldown: Option<String>,
}

/// Limits checked before any upstream call.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LimitsSpec {
    /// Largest `max_tokens` / `max_completion_tokens` a request may ask for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_tokens: Option<u32>,
    /// What happens to a request above `maxTokens`: `clamp` it (default) or `reject` it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens_policy: Option<MaxTokensPolicy>,
    /// `max_tokens` to send when the client gives none (Anthropic requires one). Default 4096 for
    /// providers that require it, otherwise unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub default_max_tokens: Option<u32>,
    /// Largest estimated prompt, in tokens; bigger requests are refused before any upstream call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_input_tokens: Option<u32>,
    /// Requests per minute for the route. In a cluster the limit is the fleet's: the sidecars
    /// of the pods the route selects each take an equal share. Standalone: this sidecar's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub requests_per_minute: Option<u32>,
    /// Tokens (prompt + completion) per minute for the route, shared like
    /// `requestsPerMinute`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub tokens_per_minute: Option<u64>,
    /// Largest request body in bytes. Default 20 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1024))]
    pub max_request_bytes: Option<u64>,
}

/// What to do with a request above `limits.maxTokens`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum MaxTokensPolicy {
    /// Lower it to the limit and send it on.
    #[default]
    Clamp,
    /// Refuse it with a 400 naming the limit.
    Reject,
}

/// Exact-match response cache.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CacheSpec {
    /// Turn the cache on for this route. Default false.
    #[serde(default)]
    pub enabled: bool,
    /// How long an answer stays fresh. Default `5m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub ttl: Option<String>,
    /// Most answers kept. Default 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_entries: Option<u32>,
    /// Most bytes of answers kept. Default 16 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1024))]
    pub max_bytes: Option<u64>,
}

/// What the operator observed about a route.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LLMRouteStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The model name clients use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The backends, in words (`primary=openai/gpt-4o 90%, canary=anthropic/claude-sonnet-4 10%`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backends: Option<String>,
    /// Sidecars currently serving this route's latest generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_sidecars: Option<i32>,
    /// `Accepted`, `ResolvedRefs` and `Ready`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}
