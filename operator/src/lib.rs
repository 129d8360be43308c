//! llmesh-operator: reconciles `LLMRoute` and `LLMBudget` into per-pod snapshots, pushes them
//! to sidecars over an authenticated long-poll, and injects sidecars into pods that opt in.
//!
//! Pure decisions (what a route's status is, which Events to emit, what an injected pod looks
//! like, whether a certificate or Lease needs action) live in their own modules with plain
//! unit tests; the modules that talk to the API server are thin around them.
#![forbid(unsafe_code)]

pub mod crd;
pub mod crd_doc;
pub mod decisions;
pub mod injection;
pub mod leader;
pub mod metrics;
pub mod pki;
pub mod push;
pub mod run;
pub mod secrets;
pub mod selector;
pub mod server;
pub mod settings;
pub mod spend;
pub mod stores;
