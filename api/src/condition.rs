//! Status conditions, the same shape as `metav1.Condition`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Condition type: the spec is valid and was taken in.
pub const ACCEPTED: &str = "Accepted";
/// Condition type: every Secret, key and backend the spec names exists.
pub const RESOLVED_REFS: &str = "ResolvedRefs";
/// Condition type: sidecars are serving the latest generation.
pub const READY: &str = "Ready";
/// Condition type (budgets): the fleet reached the cap this period (for `perUser` budgets: some
/// user key did).
pub const BUDGET_EXCEEDED: &str = "BudgetExceeded";

/// One observation about an object, keyed by `type`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Accepted`, `ResolvedRefs` or `Ready` (budgets add `BudgetExceeded`).
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// A CamelCase word for programs.
    pub reason: String,
    /// What is wrong and how to fix it, for people.
    #[serde(default)]
    pub message: String,
    /// When `status` last changed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    /// The `metadata.generation` this condition was set for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl Condition {
    /// A condition with the given type, truth, reason and message (no timestamp yet).
    pub fn new(type_: &str, ok: bool, reason: &str, message: impl Into<String>) -> Self {
        Self {
            type_: type_.to_string(),
            status: if ok { "True" } else { "False" }.to_string(),
            reason: reason.to_string(),
            message: message.into(),
            last_transition_time: None,
            observed_generation: None,
        }
    }

    /// Whether `status` is `True`.
    pub fn is_true(&self) -> bool {
        self.status == "True"
    }
}
