//! Token buckets for requests and tokens per minute, local to this sidecar. Integer arithmetic
//! in thousandths of a token; the clock is a parameter.

use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

const MILLI: i64 = 1_000;

#[derive(Debug)]
struct State {
    level: i64,
    last: Instant,
}

/// A bucket holding up to `per_minute` units that refills continuously over a minute.
#[derive(Debug)]
pub struct Bucket {
    capacity: i64,
    state: Mutex<State>,
}

impl Bucket {
    /// A full bucket of `per_minute` units at `now`.
    pub fn new(per_minute: u64, now: Instant) -> Self {
        let capacity = (per_minute.min(i64::MAX as u64 / 2 / MILLI as u64) as i64) * MILLI;
        Self {
            capacity,
            state: Mutex::new(State {
                level: capacity,
                last: now,
            }),
        }
    }

    /// Units per minute.
    pub fn per_minute(&self) -> u64 {
        (self.capacity / MILLI) as u64
    }

    fn refill(&self, s: &mut State, now: Instant) {
        let elapsed = now.saturating_duration_since(s.last);
        // capacity per minute -> milli-units per elapsed time.
        let add = (elapsed.as_micros() as i128 * self.capacity as i128 / 60_000_000) as i64;
        if add > 0 {
            s.level = (s.level + add).min(self.capacity);
            s.last = now;
        }
    }

    /// Takes `n` units if the bucket has them; otherwise says how long until it will.
    pub fn try_take(&self, n: u64, now: Instant) -> Result<(), Duration> {
        let mut s = self.state.lock();
        self.refill(&mut s, now);
        let need = (n as i64).saturating_mul(MILLI).min(self.capacity);
        if s.level >= need {
            s.level -= (n as i64).saturating_mul(MILLI);
            Ok(())
        } else {
            Err(self.wait_for(need - s.level))
        }
    }

    /// Adds (or with a negative `delta`, takes) units after the fact: actual usage replacing an
    /// estimate. The level may go below zero, which delays later requests.
    pub fn adjust(&self, delta: i64, now: Instant) {
        let mut s = self.state.lock();
        self.refill(&mut s, now);
        s.level = (s.level - delta.saturating_mul(MILLI)).min(self.capacity);
    }

    fn wait_for(&self, missing_milli: i64) -> Duration {
        if self.capacity == 0 {
            return Duration::from_secs(60);
        }
        let (num, den) = (missing_milli as i128 * 60_000_000, self.capacity as i128);
        let micros = (num + den - 1) / den;
        Duration::from_micros(micros as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refills_continuously_and_reports_the_wait() {
        let t0 = Instant::now();
        let b = Bucket::new(60, t0); // one per second
        for _ in 0..60 {
            b.try_take(1, t0).unwrap();
        }
        assert_eq!(b.try_take(1, t0), Err(Duration::from_secs(1)));
        assert_eq!(
            b.try_take(1, t0 + Duration::from_millis(500)),
            Err(Duration::from_millis(500))
        );
        b.try_take(1, t0 + Duration::from_secs(1)).unwrap();
        // Never more than capacity, however long it sat.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..60 {
            b.try_take(1, later).unwrap();
        }
        assert!(b.try_take(1, later).is_err());
    }

    #[test]
    fn actual_usage_can_overdraw_and_delay_later_requests() {
        let t0 = Instant::now();
        let b = Bucket::new(600, t0); // ten per second
        b.try_take(100, t0).unwrap();
        // The request really used 1,000 tokens: 900 more than reserved.
        b.adjust(900, t0);
        let wait = b.try_take(1, t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(40_100));
        // A request cheaper than estimated gives tokens back.
        let b = Bucket::new(600, t0);
        b.try_take(600, t0).unwrap();
        b.adjust(-300, t0);
        b.try_take(300, t0).unwrap();
    }

    #[test]
    fn a_request_bigger_than_the_bucket_waits_for_a_full_bucket_only() {
        let t0 = Instant::now();
        let b = Bucket::new(100, t0);
        b.try_take(1000, t0).unwrap();
        assert!(b.try_take(1, t0).is_err());
    }
}
