//! A token bucket per client for rooms requests, on an injected clock.
//!
//! Why: every request costs the server work and a reply (a listing is up to
//! [`MAX_LIST_ROOMS`](peergroup_protocol::rooms::MAX_LIST_ROOMS) rooms for a request of
//! a few bytes), and one connection used to get 246k password checks a second.

use std::time::{Duration, Instant};

/// Requests a client may make: `burst` at once, then `per_sec` a second.
#[derive(Debug, Clone)]
pub(super) struct RequestBudget {
    tokens: f64,
    updated: Instant,
}

impl RequestBudget {
    /// A full bucket at `now`.
    pub(super) fn new(burst: u32, now: Instant) -> Self {
        Self {
            tokens: f64::from(burst),
            updated: now,
        }
    }

    /// Takes one request's token at `now`; `false` when none is left.
    pub(super) fn take(&mut self, burst: u32, per_sec: u32, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.updated);
        self.updated = self.updated.max(now);
        self.tokens =
            (self.tokens + elapsed.as_secs_f64() * f64::from(per_sec)).min(f64::from(burst));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// How long until a token is back, for the refusal's text.
    pub(super) fn wait(&self, per_sec: u32) -> Duration {
        let missing = (1.0 - self.tokens).max(0.0);
        Duration::from_secs_f64(missing / f64::from(per_sec.max(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let start = Instant::now();
        let mut budget = RequestBudget::new(4, start);
        for _ in 0..4 {
            assert!(budget.take(4, 2, start));
        }
        assert!(!budget.take(4, 2, start), "the burst is spent");
        assert!(budget.wait(2) > Duration::ZERO);
        // Two a second: one more after 500 ms, not before.
        assert!(!budget.take(4, 2, start + Duration::from_millis(400)));
        assert!(budget.take(4, 2, start + Duration::from_millis(550)));
        // Never more than the burst, however long the pause.
        let later = start + Duration::from_secs(3_600);
        for _ in 0..4 {
            assert!(budget.take(4, 2, later));
        }
        assert!(!budget.take(4, 2, later));
        // A clock that goes back costs nothing and gives nothing.
        assert!(!budget.take(4, 2, start));
    }
}
