//! Leader election with a `coordination.k8s.io` Lease, client-go style: the holder renews
//! every `retry` seconds; anyone may take the Lease once `renewTime + leaseDurationSeconds` has
//! passed; every write is a compare-and-swap on the Lease's resourceVersion, so exactly one
//! replica wins a race. Only the leader writes status, Events and the webhook's caBundle; every
//! replica serves sidecars and the webhook. On shutdown the leader releases the Lease so a
//! successor takes over at once instead of after the lease duration.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;

use crate::metrics::Metrics;

/// Lease settings.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// The Lease's namespace (the operator's).
    pub namespace: String,
    /// The Lease's name.
    pub name: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    /// How long a Lease stays valid without renewal.
    pub duration: Duration,
    /// How often to renew or try to acquire.
    pub retry: Duration,
}

/// What to do with a Lease as observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// We hold it: write a new renewTime.
    Renew,
    /// Free or expired: take it over.
    Acquire,
    /// Someone else holds a live Lease.
    Wait,
}

/// Decides from the Lease's spec, our identity and the time. Pure, for tests.
pub fn step(spec: Option<&LeaseSpec>, identity: &str, now: Timestamp) -> Step {
    let Some(spec) = spec else {
        return Step::Acquire;
    };
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder == identity {
        return Step::Renew;
    }
    if holder.is_empty() {
        return Step::Acquire;
    }
    let seconds = i64::from(spec.lease_duration_seconds.unwrap_or(15));
    let expired = match &spec.renew_time {
        Some(MicroTime(t)) => *t + SignedDuration::from_secs(seconds) < now,
        None => true,
    };
    if expired { Step::Acquire } else { Step::Wait }
}

/// Runs the election until `shutdown` turns true; publishes leadership on `leader`.
pub async fn run(
    client: Client,
    config: LeaseConfig,
    leader: watch::Sender<bool>,
    metrics: std::sync::Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let mut last_renew = tokio::time::Instant::now();
    loop {
        let held = match try_once(&api, &config).await {
            Ok(held) => {
                if held {
                    last_renew = tokio::time::Instant::now();
                }
                held
            }
            Err(e) => {
                tracing::warn!(error = %e, lease = %config.name, "lease update failed");
                // Keep leading through brief API errors, but stop well before the Lease could
                // expire and another replica take over.
                *leader.borrow() && last_renew.elapsed() < config.duration * 2 / 3
            }
        };
        if leader.send_if_modified(|l| std::mem::replace(l, held) != held) {
            metrics.leader.set(i64::from(held));
            if held {
                tracing::info!(identity = %config.identity, "became the leader");
            } else {
                tracing::info!(identity = %config.identity, "not the leader");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(config.retry) => {}
            _ = shutdown.wait_for(|s| *s) => break,
        }
    }
    if *leader.borrow() {
        leader.send_replace(false);
        metrics.leader.set(0);
        if let Err(e) = release(&api, &config).await {
            tracing::warn!(error = %e, "could not release the lease; a successor waits for it to expire");
        } else {
            tracing::info!("released the leader lease");
        }
    }
}

async fn try_once(api: &Api<Lease>, config: &LeaseConfig) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let existing = api.get_opt(&config.name).await?;
    let decision = step(
        existing.as_ref().and_then(|l| l.spec.as_ref()),
        &config.identity,
        now,
    );
    let seconds = i32::try_from(config.duration.as_secs()).unwrap_or(15);
    let result = match (decision, existing) {
        (Step::Wait, _) => return Ok(false),
        (Step::Acquire, None) => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(config.name.clone()),
                    namespace: Some(config.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(config.identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            api.create(&PostParams::default(), &lease).await
        }
        (step, Some(mut lease)) => {
            let spec = lease.spec.get_or_insert_with(Default::default);
            if step == Step::Acquire {
                spec.holder_identity = Some(config.identity.clone());
                spec.acquire_time = Some(MicroTime(now));
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            }
            spec.lease_duration_seconds = Some(seconds);
            spec.renew_time = Some(MicroTime(now));
            // resourceVersion from the GET makes this a compare-and-swap.
            api.replace(&config.name, &PostParams::default(), &lease)
                .await
        }
        (Step::Renew, None) => return Ok(false),
    };
    match result {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

async fn release(api: &Api<Lease>, config: &LeaseConfig) -> Result<(), kube::Error> {
    let Some(mut lease) = api.get_opt(&config.name).await? else {
        return Ok(());
    };
    let spec = lease.spec.get_or_insert_with(Default::default);
    if spec.holder_identity.as_deref() != Some(config.identity.as_str()) {
        return Ok(());
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    api.replace(&config.name, &PostParams::default(), &lease)
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: &str, renewed_secs_ago: i64, duration: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(duration),
            renew_time: Some(MicroTime(
                Timestamp::now() - SignedDuration::from_secs(renewed_secs_ago),
            )),
            ..Default::default()
        }
    }

    #[test]
    fn holder_renews_others_wait_until_expiry() {
        let now = Timestamp::now();
        assert_eq!(step(None, "a", now), Step::Acquire);
        assert_eq!(step(Some(&spec("a", 5, 15)), "a", now), Step::Renew);
        assert_eq!(step(Some(&spec("b", 5, 15)), "a", now), Step::Wait);
        assert_eq!(step(Some(&spec("b", 20, 15)), "a", now), Step::Acquire);
        assert_eq!(step(Some(&spec("", 1, 15)), "a", now), Step::Acquire);
        let mut released = spec("b", 0, 1);
        released.holder_identity = None;
        assert_eq!(step(Some(&released), "a", now), Step::Acquire);
    }
}
