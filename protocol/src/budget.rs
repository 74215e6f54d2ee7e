//! A token bucket on an injected clock: the rate limits of the server's registry and of
//! the rooms application.
//!
//! `burst` tokens at most, refilled at `per_sec` a second (or one every `interval`); each
//! admitted unit of work takes one (or `n`). Sans-IO like the rest of the crate: the
//! caller passes `now`. Also the punch-order budget of each host in the registry.

use std::time::{Duration, Instant};

/// The interval of a bucket that never refills: a century, so that even `u32::MAX` of
/// them still fit in a `Duration`.
const NEVER: Duration = Duration::from_secs(100 * 365 * 86_400);

/// A token bucket: `burst` at once, then one more every `interval`.
///
/// Kept in exact time rather than fractional tokens: the bucket holds up to `burst`
/// intervals' worth of credit, a unit of work spends one interval, and the time the next
/// token comes is exact, so a timer set for it never fires a nanosecond early.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Credit, as time: one token per `interval`.
    credit: Duration,
    updated: Instant,
    burst: u32,
    /// Zero: the bucket is always full.
    interval: Duration,
}

impl TokenBucket {
    /// A full bucket at `now`: `burst` tokens, then `per_sec` a second (0: none).
    pub fn new(burst: u32, per_sec: u32, now: Instant) -> Self {
        let interval = match per_sec {
            0 => NEVER,
            n => Duration::from_secs(1) / n,
        };
        Self::with_interval(burst, interval, now)
    }

    /// A full bucket at `now`: `burst` tokens, then one more every `interval` (zero: the
    /// bucket never runs dry).
    pub fn with_interval(burst: u32, interval: Duration, now: Instant) -> Self {
        let mut bucket = Self {
            credit: Duration::ZERO,
            updated: now,
            burst,
            interval,
        };
        bucket.credit = bucket.capacity();
        bucket
    }

    fn capacity(&self) -> Duration {
        self.interval
            .checked_mul(self.burst)
            .unwrap_or(Duration::MAX)
    }

    /// Adds the credit earned since the last update, up to the burst. A clock that goes
    /// back neither adds nor removes any.
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated);
        self.updated = self.updated.max(now);
        self.credit = self.credit.saturating_add(elapsed).min(self.capacity());
    }

    /// Takes `n` tokens at `now` if there are that many; `false` (taking none) otherwise.
    pub fn take(&mut self, n: u32, now: Instant) -> bool {
        if self.interval.is_zero() {
            return true;
        }
        self.refill(now);
        match self.interval.checked_mul(n) {
            Some(cost) if cost <= self.credit => {
                self.credit -= cost;
                true
            }
            _ => false,
        }
    }

    /// `None` if a token is there at `now` (taking nothing), else when the next one comes.
    pub fn ready_at(&mut self, now: Instant) -> Option<Instant> {
        if self.interval.is_zero() {
            return None;
        }
        self.refill(now);
        let missing = self.interval.checked_sub(self.credit)?;
        (!missing.is_zero()).then(|| now + missing)
    }

    /// How long from the last update until one token is back.
    pub fn wait(&self) -> Duration {
        self.interval.saturating_sub(self.credit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(4, 2, start);
        for _ in 0..4 {
            assert!(bucket.take(1, start));
        }
        assert!(!bucket.take(1, start), "the burst is spent");
        assert!(bucket.wait() > Duration::ZERO);
        // Two a second: one more after 500 ms, not before.
        assert!(!bucket.take(1, start + Duration::from_millis(400)));
        assert!(bucket.take(1, start + Duration::from_millis(550)));
        // Never more than the burst, however long the pause.
        let later = start + Duration::from_secs(3_600);
        assert!(!bucket.take(5, later), "more than the burst never fits");
        assert!(bucket.take(4, later));
        assert!(!bucket.take(1, later));
        // A clock that goes back costs nothing and gives nothing.
        assert!(!bucket.take(1, start));
    }

    #[test]
    fn an_interval_bucket_says_exactly_when_the_next_token_comes() {
        let start = Instant::now();
        let interval = Duration::from_millis(100);
        let mut bucket = TokenBucket::with_interval(3, interval, start);
        for _ in 0..3 {
            assert_eq!(bucket.ready_at(start), None);
            assert!(bucket.take(1, start));
        }
        let next = start + interval;
        assert_eq!(bucket.ready_at(start), Some(next));
        assert_eq!(bucket.ready_at(next - Duration::from_nanos(1)), Some(next));
        assert_eq!(bucket.ready_at(next), None);
        assert!(bucket.take(1, next));
        assert_eq!(bucket.ready_at(next), Some(next + interval));
        // A long quiet refills the burst and no more.
        let later = next + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(bucket.take(1, later));
        }
        assert!(bucket.ready_at(later).is_some());
        // A zero interval never runs dry; a zero rate never refills.
        let mut open = TokenBucket::with_interval(1, Duration::ZERO, start);
        assert!((0..1_000).all(|_| open.take(1, start)));
        assert_eq!(open.ready_at(start), None);
        let mut shut = TokenBucket::new(2, 0, start);
        assert!(shut.take(1, start) && shut.take(1, start));
        assert!(!shut.take(1, start + Duration::from_secs(3_600)));
    }
}
