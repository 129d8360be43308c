//! A circuit breaker per backend: after N consecutive failures the backend is out for a
//! cooldown, then one probe request decides whether it is back. Each failed probe doubles the
//! cooldown, up to 8 times the base. The clock is a parameter, so tests are exact.

use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// What the breaker currently allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Requests flow.
    Closed,
    /// The backend is out until the cooldown ends.
    Open,
    /// Cooldown over: the next request is a probe.
    HalfOpen,
}

impl BreakerState {
    /// The value of the `llmesh_backend_circuit_state` gauge.
    pub fn gauge(self) -> i64 {
        match self {
            Self::Closed => 0,
            Self::Open => 1,
            Self::HalfOpen => 2,
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    failures: u32,
    open_until: Option<Instant>,
    probe_started: Option<Instant>,
    trips: u32,
}

/// A circuit breaker.
#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    inner: Mutex<Inner>,
}

impl Breaker {
    /// Opens after `threshold` consecutive failures, for `cooldown`.
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            cooldown,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn cooldown_for(&self, trips: u32) -> Duration {
        self.cooldown * (1u32 << trips.saturating_sub(1).min(3))
    }

    /// The state at `now`.
    pub fn state(&self, now: Instant) -> BreakerState {
        let i = self.inner.lock();
        match i.open_until {
            None => BreakerState::Closed,
            Some(t) if now < t => BreakerState::Open,
            Some(_) => BreakerState::HalfOpen,
        }
    }

    /// Whether a request may go to the backend at `now`. In half-open state this admits one
    /// probe at a time; a probe that never reports back is replaced after one cooldown.
    pub fn try_acquire(&self, now: Instant) -> bool {
        let mut i = self.inner.lock();
        match i.open_until {
            None => true,
            Some(t) if now < t => false,
            Some(_) => match i.probe_started {
                Some(p) if now < p + self.cooldown => false,
                _ => {
                    i.probe_started = Some(now);
                    true
                }
            },
        }
    }

    /// Whether a request could go now, without claiming the probe (for ranking backends).
    pub fn is_available(&self, now: Instant) -> bool {
        let i = self.inner.lock();
        match i.open_until {
            None => true,
            Some(t) if now < t => false,
            Some(_) => i.probe_started.is_none_or(|p| now >= p + self.cooldown),
        }
    }

    /// A request succeeded: close the circuit.
    pub fn on_success(&self) {
        let mut i = self.inner.lock();
        *i = Inner::default();
    }

    /// A request failed at `now`. Returns true when this failure opened the circuit.
    pub fn on_failure(&self, now: Instant) -> bool {
        let mut i = self.inner.lock();
        i.failures = i.failures.saturating_add(1);
        if i.probe_started.take().is_some()
            || (i.open_until.is_none() && i.failures >= self.threshold)
        {
            i.trips = i.trips.saturating_add(1);
            i.open_until = Some(now + self.cooldown_for(i.trips));
            return true;
        }
        false
    }

    /// Takes the backend out until `until` regardless of the failure count (a 401 says the key
    /// is wrong; a long `retry-after` says the provider is refusing us).
    pub fn open_until(&self, until: Instant) {
        let mut i = self.inner.lock();
        i.open_until = Some(i.open_until.map_or(until, |t| t.max(until)));
        i.probe_started = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_probes_and_closes_on_success() {
        let t0 = Instant::now();
        let b = Breaker::new(3, Duration::from_secs(10));
        assert!(!b.on_failure(t0));
        assert!(!b.on_failure(t0));
        assert!(b.try_acquire(t0));
        assert!(b.on_failure(t0));
        assert_eq!(b.state(t0), BreakerState::Open);
        assert!(!b.try_acquire(t0 + Duration::from_secs(9)));
        // Cooldown over: exactly one probe.
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(b.state(t1), BreakerState::HalfOpen);
        assert!(b.try_acquire(t1));
        assert!(!b.try_acquire(t1));
        assert!(!b.is_available(t1));
        b.on_success();
        assert_eq!(b.state(t1), BreakerState::Closed);
        assert!(b.try_acquire(t1));
    }

    #[test]
    fn failed_probes_double_the_cooldown_up_to_eight_times() {
        let b = Breaker::new(1, Duration::from_secs(10));
        let mut t = Instant::now();
        b.on_failure(t);
        let mut open_for = Vec::new();
        for _ in 0..5 {
            let secs = (1..=200u64)
                .find(|s| b.state(t + Duration::from_secs(*s)) != BreakerState::Open)
                .unwrap();
            open_for.push(secs);
            t += Duration::from_secs(secs);
            assert!(b.try_acquire(t));
            b.on_failure(t);
        }
        assert_eq!(open_for, [10, 20, 40, 80, 80]);
    }

    #[test]
    fn an_abandoned_probe_is_replaced_after_one_cooldown() {
        let t0 = Instant::now();
        let b = Breaker::new(1, Duration::from_secs(5));
        b.on_failure(t0);
        let t1 = t0 + Duration::from_secs(5);
        assert!(b.try_acquire(t1));
        assert!(!b.try_acquire(t1 + Duration::from_secs(4)));
        assert!(b.try_acquire(t1 + Duration::from_secs(5)));
    }

    #[test]
    fn forced_open_holds_until_the_given_time() {
        let t0 = Instant::now();
        let b = Breaker::new(5, Duration::from_secs(1));
        b.open_until(t0 + Duration::from_secs(60));
        assert!(!b.try_acquire(t0 + Duration::from_secs(59)));
        assert!(b.try_acquire(t0 + Duration::from_secs(60)));
    }
}
