//! How long a client's send queue may stay over its soft limit, counted across bursts.
//!
//! Why: the slow-consumer rule used to time each wait on its own, so a receiver that read
//! a little every 2.7 s stayed over its soft limit nearly all the time without ever being
//! backlogged for 3 s in a row, and every sender to it waited up to 3 s per upload (a
//! bystander's latency went from 0.5 ms to 1.33 s at p50). Here the time over the limit is
//! spent from an allowance that refills at the same rate while the queue is under it: a
//! receiver may be backlogged for up to the slow-consumer timeout at once, and for at most
//! half the time over the long run; past that it is a slow consumer. (A refill at a
//! quarter of the rate was tried first: on a saturated machine it dropped ordinary
//! receivers of the `mmo_view` example at 200 bots, which passed in 2 runs of 10 with it
//! and 4 of 5 with this.)
//!
//! Sans-IO: the caller passes `now`.

use std::time::{Duration, Instant};

/// Seconds of allowance won back per second under the soft limit.
const REFILL_PER_SEC: f64 = 1.0;

/// The allowance of one queue.
#[derive(Debug, Clone)]
pub(crate) struct BacklogAllowance {
    max: Duration,
    /// What is left, as of `updated`.
    left: Duration,
    updated: Instant,
    /// Since when the queue is over its soft limit, if it is.
    over_since: Option<Instant>,
}

impl BacklogAllowance {
    /// A full allowance of `max` (the slow-consumer timeout) at `now`.
    pub(crate) fn new(max: Duration, now: Instant) -> Self {
        Self {
            max,
            left: max,
            updated: now,
            over_since: None,
        }
    }

    /// The queue went over its soft limit at `now` (again, or still: only the first call
    /// of a stretch counts).
    pub(crate) fn handle_over(&mut self, now: Instant) {
        if self.over_since.is_none() {
            self.settle(now);
            self.over_since = Some(now);
        }
    }

    /// The queue is at or under its soft limit at `now`.
    pub(crate) fn handle_under(&mut self, now: Instant) {
        self.settle(now);
        self.over_since = None;
    }

    /// How much longer the queue may stay over its soft limit from `now`; zero means the
    /// receiver is a slow consumer.
    pub(crate) fn remaining(&self, now: Instant) -> Duration {
        let mut copy = self.clone();
        copy.settle(now);
        copy.left
    }

    /// Brings `left` to `now`: spent while over, refilled while under.
    fn settle(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated);
        self.left = if self.over_since.is_some() {
            self.left.saturating_sub(elapsed)
        } else {
            (self.left + elapsed.mul_f64(REFILL_PER_SEC)).min(self.max)
        };
        self.updated = self.updated.max(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_secs(3);

    fn at(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    #[test]
    fn one_burst_may_last_the_whole_timeout() {
        let start = Instant::now();
        let mut a = BacklogAllowance::new(MAX, start);
        a.handle_over(start);
        a.handle_over(at(start, 1_000)); // still over: no change
        assert_eq!(a.remaining(at(start, 2_000)), Duration::from_secs(1));
        assert_eq!(a.remaining(at(start, 3_000)), Duration::ZERO);
        assert_eq!(a.remaining(at(start, 9_000)), Duration::ZERO);
    }

    #[test]
    fn a_receiver_that_dips_under_the_limit_briefly_still_runs_out() {
        // Over for 2.7 s, under for 0.3 s, again and again (the hovering reader).
        let start = Instant::now();
        let mut a = BacklogAllowance::new(MAX, start);
        let mut t = 0;
        let mut cycles = 0;
        while a.remaining(at(start, t)) > Duration::ZERO {
            a.handle_over(at(start, t));
            t += 2_700;
            if a.remaining(at(start, t)) == Duration::ZERO {
                break;
            }
            a.handle_under(at(start, t));
            t += 300;
            cycles += 1;
        }
        assert!(cycles <= 1, "ran out after {cycles} dips, at {t} ms");
        assert!(t <= 6_000, "{t} ms");
    }

    #[test]
    fn time_under_the_limit_wins_the_allowance_back_at_the_same_rate() {
        let start = Instant::now();
        let mut a = BacklogAllowance::new(MAX, start);
        a.handle_over(start);
        a.handle_under(at(start, 2_000)); // 1 s left
        assert_eq!(a.remaining(at(start, 2_000)), Duration::from_secs(1));
        assert_eq!(a.remaining(at(start, 3_000)), Duration::from_secs(2));
        assert_eq!(
            a.remaining(at(start, 60_000)),
            MAX,
            "never past the timeout"
        );
        // An occasional burst (1 s in every 10) never runs out.
        let mut a = BacklogAllowance::new(MAX, start);
        for burst in 0..100 {
            let t = burst * 10_000;
            a.handle_over(at(start, t));
            assert!(a.remaining(at(start, t + 1_000)) >= Duration::from_secs(2));
            a.handle_under(at(start, t + 1_000));
        }
    }
}
