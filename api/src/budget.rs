//! `LLMBudget`: a spend or token limit over a calendar period for some routes of a namespace.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::condition::Condition;
use crate::money::USD_PATTERN;
use crate::route::BACKEND_NAME_PATTERN;

/// Caps what routes in a namespace may spend per hour, day or month, and what happens at the cap.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[cfg_attr(
    feature = "kube",
    derive(kube::CustomResource),
    kube(
        group = "llmesh.io",
        version = "v1alpha1",
        kind = "LLMBudget",
        plural = "llmbudgets",
        shortname = "llmb",
        namespaced,
        status = "LLMBudgetStatus",
        doc = "Caps what the routes of a namespace may spend per hour, day or month, and says what happens at the cap.",
        printcolumn = r#"{"name":"Limit","type":"string","jsonPath":".status.limit"}"#,
        printcolumn = r#"{"name":"Spent","type":"string","jsonPath":".status.spent"}"#,
        printcolumn = r#"{"name":"Remaining","type":"string","jsonPath":".status.remaining"}"#,
        printcolumn = r#"{"name":"Period","type":"string","jsonPath":".spec.period"}"#,
        printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "has(self.limit.usd) || has(self.limit.tokens)",
        "message": "set spec.limit.usd, spec.limit.tokens or both",
        "fieldPath": ".limit"
    },
    {
        "rule": "!has(self.action) || self.action != 'downgrade' || has(self.downgradeBackend)",
        "message": "action `downgrade` needs spec.downgradeBackend: the backend name to use once the budget is spent",
        "fieldPath": ".downgradeBackend"
    }
]))]
pub struct LLMBudgetSpec {
    /// Names of the LLMRoutes (in this namespace) the budget covers. Empty: all of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 256),
        inner(
            length(min = 1, max = 253),
            pattern(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
        )
    )]
    pub routes: Vec<String>,
    /// Apply the limit to each user key (`x-llmesh-user` header or the body's `user`) separately.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_user: Option<bool>,
    /// The cap.
    pub limit: BudgetLimit,
    /// The period the cap applies to, aligned to the calendar in UTC. Default `month`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<BudgetPeriod>,
    /// What happens once the cap is reached. Default `reject`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<BudgetAction>,
    /// For `action: downgrade`: the backend (by name, in each covered route) to send requests to
    /// once the budget is spent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), pattern(BACKEND_NAME_PATTERN))]
    pub downgrade_backend: Option<String>,
    /// Percentages of the cap at which to raise an alert (Event and metric). Default 50, 80, 100.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(range(min = 1, max = 1000)))]
    pub alert_thresholds: Vec<u32>,
}

/// A spend cap in USD, tokens, or both (whichever is reached first).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BudgetLimit {
    /// USD per period, as a decimal string (`"250.00"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(USD_PATTERN))]
    pub usd: Option<String>,
    /// Tokens (input + output) per period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub tokens: Option<u64>,
}

/// Budget periods, calendar-aligned in UTC.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum BudgetPeriod {
    /// From the top of each hour.
    Hour,
    /// From midnight UTC.
    Day,
    /// From the first day of the month, midnight UTC.
    #[default]
    Month,
}

/// What a budget does once spent.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum BudgetAction {
    /// Refuse with 429 `budget_exceeded` until the next period.
    #[default]
    Reject,
    /// Send requests to `downgradeBackend` instead.
    Downgrade,
    /// Let requests through; only alert.
    Alert,
}

/// What the operator observed about a budget.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LLMBudgetStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The cap in words (`$250.000000/month`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
    /// USD spent this period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spent: Option<String>,
    /// Tokens used this period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spent_tokens: Option<u64>,
    /// USD (or tokens) left this period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining: Option<String>,
    /// Start of the current period (RFC 3339, UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_start: Option<String>,
    /// `perUser` budgets: user keys that spent this period (the first 500 are tracked one by
    /// one; spend of later keys is counted in the total only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<u64>,
    /// `perUser` budgets: the user keys that spent most this period, most first (at most 10).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top_users: Vec<UserSpend>,
    /// `Accepted`, `Ready` and `BudgetExceeded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// One user key's spend this period, in a `perUser` budget's status.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserSpend {
    /// The user key (`x-llmesh-user` header or the body's `user`).
    pub user: String,
    /// USD spent this period.
    pub spent: String,
    /// Tokens used this period.
    pub spent_tokens: u64,
}
