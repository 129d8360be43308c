//! The config push protocol between the operator and its sidecars.
//!
//! A sidecar long-polls the operator over HTTPS:
//!
//! ```text
//! GET /v1/snapshot?version=<the version it serves, empty if none> HTTP/1.1
//! Authorization: Bearer <projected service-account token, audience "llmesh">
//! ```
//!
//! - `200 OK`: the body is the full [`crate::Snapshot`] as JSON; its `version` (also in the
//!   [`VERSION_HEADER`] response header) differs from the one asked with. Answered at once when
//!   the pod's snapshot already differs, otherwise as soon as it changes.
//! - With `&delta=1` (a sidecar that can apply deltas), the `200` may instead carry a
//!   [`crate::SnapshotDelta`] from the version asked with, marked by the [`DELTA_BASE_HEADER`]
//!   response header naming that version: only the routes that changed, the routes removed,
//!   and the budgets if any changed. The sidecar checks that applying it reproduces the
//!   announced version and otherwise polls again without a version, for the whole snapshot.
//!   An operator that does not know the version asked with answers with the whole snapshot.
//! - `304 Not Modified`: nothing changed for [`HOLD`]; poll again.
//! - `401 Unauthorized`: the token is missing, expired, for another audience, or not bound to a
//!   Pod. `403 Forbidden`: the token is valid but the operator refuses it (for example the Pod
//!   it is bound to is gone). Both carry an [`ErrorBody`]; retry after re-reading the token.
//! - `503 Service Unavailable`: the operator is starting and has not seen the cluster yet;
//!   `retry-after` says when to come back.
//!
//! The pod behind the token decides what it receives: the routes of its namespace whose
//! `podSelector` matches its labels, the budgets of its namespace, and the keys of Secrets in
//! its namespace only. See `docs/architecture.md`, section "Config push".

use serde::{Deserialize, Serialize};

/// Path of the long-poll endpoint.
pub const SNAPSHOT_PATH: &str = "/v1/snapshot";
/// Query parameter carrying the version the sidecar serves.
pub const VERSION_PARAM: &str = "version";
/// Response header carrying the version of the snapshot in the body.
pub const VERSION_HEADER: &str = "x-llmesh-snapshot-version";
/// Query parameter by which a sidecar says it applies deltas (`delta=1`).
pub const DELTA_PARAM: &str = "delta";
/// Response header marking a `200` whose body is a delta; its value is the delta's base version.
pub const DELTA_BASE_HEADER: &str = "x-llmesh-snapshot-base";
/// The audience sidecar tokens are issued for and checked against.
pub const AUDIENCE: &str = "llmesh";
/// How long the operator holds a poll whose version is current before answering 304.
pub const HOLD: std::time::Duration = std::time::Duration::from_secs(30);
/// How long a sidecar waits for an answer before giving up on a poll: [`HOLD`] plus slack for
/// a slow network, so a healthy hold is never mistaken for a dead operator.
pub const CLIENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(45);
/// Path of the usage report endpoint: `POST` a [`crate::ledger::UsageReport`] as JSON with the
/// same `Authorization` as a poll; `200` answers a [`crate::ledger::UsageAck`] once the report is
/// persisted, any other status an [`ErrorBody`] (resend the same report later).
pub const USAGE_PATH: &str = "/v1/usage";
/// Largest usage report the operator reads (a report of [`crate::ledger::MAX_PENDING_KEYS`]
/// entries with long user keys stays below).
pub const MAX_USAGE_BYTES: usize = 8 * 1024 * 1024;
/// Path of the mutating admission webhook that injects sidecars.
pub const MUTATE_PODS_PATH: &str = "/mutate-pods";

/// The body of an error answer (`401`, `403`, `503`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ErrorBody {
    /// What went wrong and how to fix it. Never contains a token or a key.
    pub error: String,
}

/// Builds the query string for a poll from the version the sidecar serves, and whether it
/// takes a delta from that version.
pub fn snapshot_query(version: Option<&str>, delta: bool) -> String {
    let v = version.unwrap_or_default();
    // Versions are hex digests; anything else is dropped rather than escaped, so a corrupted
    // cache file cannot smuggle query syntax.
    let v: String = v.chars().filter(char::is_ascii_alphanumeric).collect();
    if delta && !v.is_empty() {
        format!("{SNAPSHOT_PATH}?{VERSION_PARAM}={v}&{DELTA_PARAM}=1")
    } else {
        format!("{SNAPSHOT_PATH}?{VERSION_PARAM}={v}")
    }
}

/// Whether a poll's query string asks for a delta (`delta=1`).
pub fn wants_delta(query: Option<&str>) -> bool {
    query
        .unwrap_or_default()
        .split('&')
        .any(|kv| kv == "delta=1")
}

/// The longest `retry-after` a sidecar honours from the operator, so a wrong header cannot
/// park a fleet.
pub const MAX_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(30);

/// How long a sidecar waits before polling again after the operator answered with this
/// `retry-after` value (whole seconds), at most [`MAX_RETRY_AFTER`]; `None` if absent or not
/// a number.
pub fn retry_after(value: Option<&str>) -> Option<std::time::Duration> {
    let secs: u64 = value?.parse().ok()?;
    Some(std::time::Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

/// Reads the sidecar's version from a query string (`version=abc&...`); empty means none.
pub fn version_from_query(query: Option<&str>) -> String {
    query
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == VERSION_PARAM)
        .map(|(_, v)| v.chars().filter(char::is_ascii_alphanumeric).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_whole_seconds_capped_at_thirty() {
        use std::time::Duration;
        assert_eq!(retry_after(Some("5")), Some(Duration::from_secs(5)));
        assert_eq!(retry_after(Some("3600")), Some(MAX_RETRY_AFTER));
        assert_eq!(retry_after(Some("soon")), None);
        assert_eq!(retry_after(Some("-1")), None);
        assert_eq!(retry_after(None), None);
    }

    #[test]
    fn the_query_round_trips_and_drops_junk() {
        assert_eq!(
            snapshot_query(Some("00ab12"), false),
            "/v1/snapshot?version=00ab12"
        );
        assert_eq!(snapshot_query(None, false), "/v1/snapshot?version=");
        let q = snapshot_query(Some("ab&x=1"), false);
        assert_eq!(q, "/v1/snapshot?version=abx1");
        // A delta needs a base: without a version the whole snapshot is asked for.
        let q = snapshot_query(Some("00ab12"), true);
        assert_eq!(q, "/v1/snapshot?version=00ab12&delta=1");
        assert!(wants_delta(q.split_once('?').map(|(_, q)| q)));
        assert_eq!(snapshot_query(None, true), "/v1/snapshot?version=");
        assert!(!wants_delta(Some("version=00ab12")));
        assert!(!wants_delta(Some("version=00ab12&delta=0")));
        assert!(!wants_delta(None));
        assert_eq!(version_from_query(Some("wait=1&version=00ab12")), "00ab12");
        assert_eq!(version_from_query(Some("version=")), "");
        assert_eq!(version_from_query(None), "");
    }
}
