//! A token bucket on an injected clock: the rate limits of the server's registry and of
//! the rooms application.
//!
//! `burst` tokens at most, refilled at `per_sec` a second; each admitted unit of work
//! takes one (or `n`). Sans-IO like the rest of the crate: the caller passes `now`.

use std::time::{Duration, Instant};

/// A token bucket: `burst` at once, then `per_sec` a second.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f64,
    updated: Instant,
    burst: u32,
    per_sec: u32,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub fn new(burst: u32, per_sec: u32, now: Instant) -> Self {
        Self {
            tokens: f64::from(burst),
            updated: now,
            burst,
            per_sec,
        }
    }

    /// Takes `n` tokens at `now` if there are that many; `false` (taking none) otherwise.
    /// A clock that goes back neither adds nor removes any.
    pub fn take(&mut self, n: u32, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.updated);
        self.updated = self.updated.max(now);
        self.tokens = (self.tokens + elapsed.as_secs_f64() * f64::from(self.per_sec))
            .min(f64::from(self.burst));
        if self.tokens >= f64::from(n) {
            self.tokens -= f64::from(n);
            true
        } else {
            false
        }
    }

    /// How long from the last `take` until one token is back.
    pub fn wait(&self) -> Duration {
        let missing = (1.0 - self.tokens).max(0.0);
        Duration::from_secs_f64(missing / f64::from(self.per_sec.max(1)))
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
}
