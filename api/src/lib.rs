//! Shared between the llmesh operator and sidecar: the `LLMRoute` and `LLMBudget` spec types,
//! the compiler from specs to the snapshot a sidecar serves, and the price table.
//! Serde only: no IO, no Kubernetes client.
#![forbid(unsafe_code)]

pub mod budget;
pub mod compile;
pub mod condition;
pub mod delta;
pub mod duration;
pub mod ledger;
pub mod manifest;
pub mod money;
pub mod period;
pub mod prices;
pub mod protocol;
pub mod route;
pub mod snapshot;

/// The API group of llmesh's custom resources.
pub const GROUP: &str = "llmesh.io";
/// The `apiVersion` of llmesh's custom resources.
pub const API_VERSION: &str = "llmesh.io/v1alpha1";

pub use budget::{
    BudgetAction, BudgetLimit, BudgetPeriod, LLMBudgetSpec, LLMBudgetStatus, UserSpend,
};
pub use delta::SnapshotDelta;
pub use route::{BackendSpec, LLMRouteSpec, LLMRouteStatus, ProviderKind, SecretKeyRef, Strategy};
pub use snapshot::Snapshot;

#[cfg(feature = "kube")]
pub use budget::LLMBudget;
#[cfg(feature = "kube")]
pub use route::LLMRoute;
