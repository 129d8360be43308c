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
    /// This sidecar's part of the limit, in thousandths (the limit divided by the sharers).
    capacity: i64,
}

/// A bucket holding up to `per_minute` units that refills continuously over a minute. In a
/// fleet the limit is shared: with [`Bucket::share`] set to `n`, this sidecar's bucket holds and
/// refills `per_minute / n`.
#[derive(Debug)]
pub struct Bucket {
    /// The whole limit, in thousandths.
    limit: i64,
    state: Mutex<State>,
}

impl Bucket {
    /// A full bucket of `per_minute` units at `now`.
    pub fn new(per_minute: u64, now: Instant) -> Self {
        let limit = (per_minute.min(i64::MAX as u64 / 2 / MILLI as u64) as i64) * MILLI;
        Self {
            limit,
            state: Mutex::new(State {
                level: limit,
                last: now,
                capacity: limit,
            }),
        }
    }

    /// Units per minute (the whole limit, before any share).
    pub fn per_minute(&self) -> u64 {
        (self.limit / MILLI) as u64
    }

    /// Shares the limit among `sidecars` (at least 1): from `now` this bucket holds and refills
    /// its part only, and holds no more than that part at once.
    pub fn share(&self, sidecars: u32, now: Instant) {
        let mut s = self.state.lock();
        self.refill(&mut s, now);
        s.capacity = self.limit / i64::from(sidecars.max(1));
        s.level = s.level.min(s.capacity);
    }

    fn refill(&self, s: &mut State, now: Instant) {
        let elapsed = now.saturating_duration_since(s.last);
        // capacity per minute -> milli-units per elapsed time.
        let add = (elapsed.as_micros() as i128 * s.capacity as i128 / 60_000_000) as i64;
        if add > 0 {
            s.level = (s.level + add).min(s.capacity);
            s.last = now;
        }
    }

    /// Takes `n` units if the bucket has them; otherwise says how long until it will.
    pub fn try_take(&self, n: u64, now: Instant) -> Result<(), Duration> {
        let mut s = self.state.lock();
        self.refill(&mut s, now);
        let need = (n as i64).saturating_mul(MILLI).min(s.capacity);
        if s.level >= need {
            s.level -= (n as i64).saturating_mul(MILLI);
            Ok(())
        } else {
            Err(Self::wait_for(s.capacity, need - s.level))
        }
    }

    /// Adds (or with a negative `delta`, takes) units after the fact: actual usage replacing an
    /// estimate. The level may go below zero, which delays later requests.
    pub fn adjust(&self, delta: i64, now: Instant) {
        let mut s = self.state.lock();
        self.refill(&mut s, now);
        s.level = (s.level - delta.saturating_mul(MILLI)).min(s.capacity);
    }

    fn wait_for(capacity: i64, missing_milli: i64) -> Duration {
        if capacity == 0 {
            return Duration::from_secs(60);
        }
        let (num, den) = (missing_milli as i128 * 60_000_000, capacity as i128);
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
    fn a_shared_limit_holds_and_refills_only_this_sidecars_part() {
        let t0 = Instant::now();
        let b = Bucket::new(120, t0); // two per second, for the fleet
        b.try_take(10, t0).unwrap();
        // Four sidecars share it: this one holds at most 30 and refills one every two seconds.
        b.share(4, t0);
        assert_eq!(b.per_minute(), 120);
        for _ in 0..30 {
            b.try_take(1, t0).unwrap();
        }
        assert_eq!(b.try_take(1, t0), Err(Duration::from_secs(2)));
        b.try_take(1, t0 + Duration::from_secs(2)).unwrap();
        // Alone again: the whole limit refills.
        b.share(1, t0 + Duration::from_secs(2));
        let later = t0 + Duration::from_secs(62);
        for _ in 0..120 {
            b.try_take(1, later).unwrap();
        }
        assert!(b.try_take(1, later).is_err());
        // A share of 0 sidecars counts as one.
        b.share(0, later);
        assert!(b.try_take(1, later + Duration::from_secs(60)).is_ok());
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
