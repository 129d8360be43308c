//! Sidecar injection: what an injected pod looks like (pure) and the admission webhook.

pub mod inject;
pub mod webhook;
