//! Round-trip time and loss to one peer, measured by pings.
//!
//! The client pings each peer about once a second on whatever path the pair uses (relay or
//! direct) and the peer echoes the ping's id. [`PingTracker`] holds one peer's side of that:
//! which ids are out, the smoothed RTT (RFC 6298 section 2) and which of the last
//! [`LOSS_WINDOW`] pings went unanswered.
//!
//! Sans-IO: the tracker reads no clock and sends nothing. The caller asks
//! [`PingTracker::poll_ping`] for an id to send, wakes at [`PingTracker::poll_timeout`] and
//! feeds echoes to [`PingTracker::handle_pong`].

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Default gap between pings to one peer: 1 s.
pub(crate) const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(1);

/// Shortest gap between pings, 1 ms: a shorter one (zero, say) would have the caller's loop
/// spin on [`PingTracker::poll_timeout`].
pub(crate) const MIN_PING_INTERVAL: Duration = Duration::from_millis(1);

/// Settled pings the loss fraction is taken over: the last 32, about half a minute at the
/// default interval.
pub(crate) const LOSS_WINDOW: u32 = 32;

/// A ping counts as lost once it has waited this many smoothed RTTs without a pong (or
/// [`MIN_LOSS_TIMEOUT`], if longer). Three RTTs is the retransmission timeout RFC 6298
/// section 2.2 sets after the first measurement `R` (`R + 4 × R/2`): room for the RTT to
/// vary without keeping a variance estimate per peer.
pub(crate) const LOSS_TIMEOUT_RTTS: u32 = 3;

/// The least time a ping is given before it counts as lost, 1 s: RFC 6298 section 2.4's
/// floor on the retransmission timeout, which keeps short RTTs from turning jitter into
/// loss.
pub(crate) const MIN_LOSS_TIMEOUT: Duration = Duration::from_secs(1);

/// Most pings kept awaiting a pong: 64. Sending one more drops the oldest, which counts as
/// lost, so a peer that never answers costs bounded memory.
pub(crate) const MAX_OUTSTANDING: usize = 64;

/// One peer's pings: the schedule, the pings awaiting pongs, RTT and recent loss.
#[derive(Debug)]
pub(crate) struct PingTracker {
    interval: Duration,
    next_ping: Instant,
    next_id: u32,
    /// `(id, sent)` in the order sent; ids are consecutive, so never repeated here.
    outstanding: VecDeque<(u32, Instant)>,
    srtt: Option<Duration>,
    last_rtt: Option<Duration>,
    /// Outcomes of the latest settled pings, newest in bit 0; a set bit is a loss.
    history: u32,
    /// How many bits of `history` hold outcomes, at most [`LOSS_WINDOW`].
    settled: u32,
}

impl PingTracker {
    /// A tracker pinging every `interval` (at least [`MIN_PING_INTERVAL`]; the usual value is
    /// [`DEFAULT_PING_INTERVAL`]), whose first ping is due at `now`.
    pub fn new(interval: Duration, now: Instant) -> Self {
        Self {
            interval: interval.max(MIN_PING_INTERVAL),
            next_ping: now,
            next_id: 0,
            outstanding: VecDeque::with_capacity(4),
            srtt: None,
            last_rtt: None,
            history: 0,
            settled: 0,
        }
    }

    /// The id of a ping to send at `now`, if one is due; the tracker then counts it as sent.
    /// Ids count up from 0 and wrap around `u32`.
    pub fn poll_ping(&mut self, now: Instant) -> Option<u32> {
        self.settle_expired(now);
        if now < self.next_ping {
            return None;
        }
        let id = self.next_id;
        self.next_id = id.wrapping_add(1);
        if self.outstanding.len() == MAX_OUTSTANDING {
            self.outstanding.pop_front();
            self.record(true);
        }
        self.outstanding.push_back((id, now));
        // From `now`, not from the missed deadline: a late caller gets one ping, not a burst.
        self.next_ping = now.checked_add(self.interval).unwrap_or(now);
        Some(id)
    }

    /// When [`PingTracker::poll_ping`] next wants to be called.
    pub fn poll_timeout(&self) -> Instant {
        self.next_ping
    }

    /// A pong for ping `id` arrived at `now`.
    ///
    /// Ignored when `id` is not awaiting a pong: never sent, already answered (a duplicate),
    /// sent before the last [`PingTracker::reset`], or already counted lost (too late).
    pub fn handle_pong(&mut self, id: u32, now: Instant) {
        // First, so that a pong arriving after its ping's timeout finds it already lost.
        self.settle_expired(now);
        let Some(index) = self.outstanding.iter().position(|&(out, _)| out == id) else {
            return;
        };
        let Some((_, sent)) = self.outstanding.remove(index) else {
            return;
        };
        self.record(false);
        let sample = now.saturating_duration_since(sent);
        self.last_rtt = Some(sample);
        self.srtt = Some(match self.srtt {
            // RFC 6298 section 2.2: the first measurement is taken as is.
            None => sample,
            // Section 2.3 with alpha = 1/8.
            Some(srtt) => from_nanos((srtt.as_nanos() * 7 + sample.as_nanos()) / 8),
        });
    }

    /// The smoothed RTT (RFC 6298 section 2: `SRTT = 7/8 SRTT + 1/8 R`, the first sample
    /// taken as is), or `None` before the first pong.
    pub fn rtt(&self) -> Option<Duration> {
        self.srtt
    }

    /// The latest RTT sample, or `None` before the first pong.
    pub fn last_rtt(&self) -> Option<Duration> {
        self.last_rtt
    }

    /// The fraction of the last [`LOSS_WINDOW`] settled pings that got no pong, from 0.0 to
    /// 1.0, or `None` before any ping settled.
    ///
    /// A ping settles when its pong arrives, or counts as lost once it has waited longer than
    /// [`PingTracker::loss_timeout`] at `now`, or when [`MAX_OUTSTANDING`] newer ones are out.
    pub fn loss(&self, now: Instant) -> Option<f32> {
        let mut history = self.history;
        let mut settled = self.settled;
        // The pings that the next call taking `now` would settle, as it would.
        let timeout = self.loss_timeout();
        let expired = self
            .outstanding
            .iter()
            .filter(|&&(_, sent)| expired(sent, now, timeout))
            .count();
        for _ in 0..expired.min(LOSS_WINDOW as usize) {
            push_outcome(&mut history, &mut settled, true);
        }
        if settled == 0 {
            return None;
        }
        let window = if settled == LOSS_WINDOW {
            u32::MAX
        } else {
            (1 << settled) - 1
        };
        Some((history & window).count_ones() as f32 / settled as f32)
    }

    /// The pair changed path: RTT samples and pings in flight no longer apply. Forgets the
    /// RTT, the pings awaiting pongs and the loss history, makes a ping due at `now` to
    /// measure the new path at once, and pings every `interval` from then on (at least
    /// [`MIN_PING_INTERVAL`]; a pair's path sets how often it is worth measuring).
    ///
    /// Ids keep counting, so a pong to a ping sent before the reset is not mistaken for one
    /// sent after it.
    pub fn reset(&mut self, interval: Duration, now: Instant) {
        self.interval = interval.max(MIN_PING_INTERVAL);
        self.outstanding.clear();
        self.srtt = None;
        self.last_rtt = None;
        self.history = 0;
        self.settled = 0;
        self.next_ping = now;
    }

    /// How long a ping may wait for its pong before it counts as lost:
    /// [`LOSS_TIMEOUT_RTTS`] × the smoothed RTT, or [`MIN_LOSS_TIMEOUT`] if longer.
    pub fn loss_timeout(&self) -> Duration {
        self.srtt
            .map_or(MIN_LOSS_TIMEOUT, |srtt| {
                srtt.saturating_mul(LOSS_TIMEOUT_RTTS)
            })
            .max(MIN_LOSS_TIMEOUT)
    }

    /// Counts as lost every ping that has waited past the timeout at `now`.
    fn settle_expired(&mut self, now: Instant) {
        let timeout = self.loss_timeout();
        let before = self.outstanding.len();
        self.outstanding
            .retain(|&(_, sent)| !expired(sent, now, timeout));
        for _ in 0..before - self.outstanding.len() {
            self.record(true);
        }
    }

    fn record(&mut self, lost: bool) {
        push_outcome(&mut self.history, &mut self.settled, lost);
    }
}

fn expired(sent: Instant, now: Instant, timeout: Duration) -> bool {
    now.saturating_duration_since(sent) > timeout
}

fn push_outcome(history: &mut u32, settled: &mut u32, lost: bool) {
    *history = (*history << 1) | u32::from(lost);
    *settled = (*settled + 1).min(LOSS_WINDOW);
}

fn from_nanos(nanos: u128) -> Duration {
    let secs = u64::try_from(nanos / 1_000_000_000).unwrap_or(u64::MAX);
    // In range: the remainder is below one second.
    Duration::new(secs, (nanos % 1_000_000_000) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A tracker whose pings all get a pong after `rtt`, `count` times.
    fn answered(count: usize, rtt: Duration) -> (PingTracker, Instant) {
        let t0 = Instant::now();
        let mut tracker = PingTracker::new(DEFAULT_PING_INTERVAL, t0);
        let mut now = t0;
        for _ in 0..count {
            let id = tracker.poll_ping(now).unwrap();
            tracker.handle_pong(id, now + rtt);
            now = tracker.poll_timeout();
        }
        (tracker, now)
    }

    #[test]
    fn the_first_ping_is_due_at_once_then_one_per_interval() {
        let t0 = Instant::now();
        let mut tracker = PingTracker::new(ms(250), t0);
        assert_eq!(tracker.poll_timeout(), t0);
        assert_eq!(tracker.poll_ping(t0), Some(0));
        assert_eq!(tracker.poll_ping(t0), None);
        assert_eq!(tracker.poll_ping(t0 + ms(249)), None);
        assert_eq!(tracker.poll_timeout(), t0 + ms(250));
        assert_eq!(tracker.poll_ping(t0 + ms(250)), Some(1));
        // Late by more than an interval: one ping, and the next an interval after it.
        assert_eq!(tracker.poll_ping(t0 + ms(900)), Some(2));
        assert_eq!(tracker.poll_ping(t0 + ms(900)), None);
        assert_eq!(tracker.poll_timeout(), t0 + ms(1_150));
    }

    #[test]
    fn the_default_interval_is_one_second_and_zero_is_raised() {
        let t0 = Instant::now();
        let mut tracker = PingTracker::new(DEFAULT_PING_INTERVAL, t0);
        tracker.poll_ping(t0).unwrap();
        assert_eq!(tracker.poll_timeout(), t0 + Duration::from_secs(1));
        let mut tracker = PingTracker::new(Duration::ZERO, t0);
        tracker.poll_ping(t0).unwrap();
        assert_eq!(tracker.poll_timeout(), t0 + MIN_PING_INTERVAL);
    }

    #[test]
    fn the_first_sample_is_taken_as_is() {
        let (tracker, _) = answered(0, ms(0));
        assert_eq!(tracker.rtt(), None);
        assert_eq!(tracker.last_rtt(), None);
        let (tracker, _) = answered(1, ms(80));
        assert_eq!(tracker.rtt(), Some(ms(80)));
        assert_eq!(tracker.last_rtt(), Some(ms(80)));
    }

    #[test]
    fn later_samples_are_smoothed_per_rfc_6298() {
        let t0 = Instant::now();
        let mut tracker = PingTracker::new(DEFAULT_PING_INTERVAL, t0);
        let mut expected: Option<f64> = None;
        let mut now = t0;
        for rtt_ms in [80u64, 160, 40, 40, 300, 100] {
            let id = tracker.poll_ping(now).unwrap();
            tracker.handle_pong(id, now + ms(rtt_ms));
            let sample = rtt_ms as f64;
            let srtt = expected.map_or(sample, |srtt| 0.875 * srtt + 0.125 * sample);
            expected = Some(srtt);
            let got = tracker.rtt().unwrap().as_secs_f64() * 1e3;
            assert!(
                (got - srtt).abs() < 1e-5,
                "SRTT {got} ms, expected {srtt} ms"
            );
            now = tracker.poll_timeout();
        }
        // 80, then 7/8 × 80 + 1/8 × 160 = 90 exactly.
        let t0 = Instant::now();
        let mut tracker = PingTracker::new(DEFAULT_PING_INTERVAL, t0);
        let id = tracker.poll_ping(t0).unwrap();
        tracker.handle_pong(id, t0 + ms(80));
        let at = tracker.poll_timeout();
        let id = tracker.poll_ping(at).unwrap();
        tracker.handle_pong(id, at + ms(160));
        assert_eq!(tracker.rtt(), Some(ms(90)));
    }

    #[test]
    fn the_last_sample_moves_at_once_while_the_smoothed_rtt_lags() {
        let (mut tracker, now) = answered(10, ms(50));
        assert_eq!(tracker.rtt(), Some(ms(50)));
        let id = tracker.poll_ping(now).unwrap();
        tracker.handle_pong(id, now + ms(450));
        assert_eq!(tracker.last_rtt(), Some(ms(450)));
        assert_eq!(tracker.rtt(), Some(ms(100)));
    }

    #[test]
    fn loss_is_none_until_a_ping_settles() {
        let t0 = Instant::now();
        let mut tracker = PingTracker::new(DEFAULT_PING_INTERVAL, t0);
        assert_eq!(tracker.loss(t0), None);
        tracker.poll_ping(t0).unwrap();
        assert_eq!(tracker.loss(t0 + ms(999)), None);
        let (tracker, now) = answered(1, ms(30));
        assert_eq!(tracker.loss(now), Some(0.0));
    }

    #[test]
    fn an_unanswered_ping_counts_as_lost_after_the_timeout() {
        // A 30 ms SRTT: the 1 s floor applies.
        let (mut tracker, now) = answered(3, ms(30));
        assert_eq!(tracker.loss_timeout(), MIN_LOSS_TIMEOUT);
        tracker.poll_ping(now).unwrap();
        assert_eq!(tracker.loss(now + ms(1_000)), Some(0.0));
        assert_eq!(tracker.loss(now + ms(1_001)), Some(0.25));
        // The view agrees with what the tracker records once it is told the time.
        assert_eq!(tracker.poll_ping(now + ms(1_001)), Some(4));
        assert_eq!(tracker.loss(now + ms(1_001)), Some(0.25));
        assert_eq!(tracker.history, 0b0001);
        assert_eq!(tracker.settled, 4);
    }

    #[test]
    fn the_timeout_is_three_smoothed_rtts_when_that_exceeds_one_second() {
        let (mut tracker, now) = answered(1, ms(500));
        assert_eq!(tracker.loss_timeout(), ms(1_500));
        let id = tracker.poll_ping(now).unwrap();
        assert_eq!(tracker.loss(now + ms(1_400)), Some(0.0));
        // A pong within the timeout still counts.
        tracker.handle_pong(id, now + ms(1_400));
        assert_eq!(tracker.loss(now + ms(5_000)), Some(0.0));
        assert_eq!(tracker.last_rtt(), Some(ms(1_400)));
    }

    #[test]
    fn a_late_pong_after_its_ping_was_counted_lost_is_ignored() {
        let (mut tracker, now) = answered(1, ms(20));
        let id = tracker.poll_ping(now).unwrap();
        let late = now + ms(1_200);
        assert_eq!(tracker.loss(late), Some(0.5));
        tracker.handle_pong(id, late);
        assert_eq!(tracker.loss(late), Some(0.5));
        assert_eq!(tracker.last_rtt(), Some(ms(20)));
        assert_eq!(tracker.rtt(), Some(ms(20)));
    }

    #[test]
    fn duplicate_and_unknown_pongs_are_ignored() {
        let t0 = Instant::now();
        let mut tracker = PingTracker::new(DEFAULT_PING_INTERVAL, t0);
        let id = tracker.poll_ping(t0).unwrap();
        tracker.handle_pong(id + 1, t0 + ms(5));
        tracker.handle_pong(u32::MAX, t0 + ms(5));
        assert_eq!(tracker.rtt(), None);
        tracker.handle_pong(id, t0 + ms(40));
        tracker.handle_pong(id, t0 + ms(90));
        assert_eq!(tracker.last_rtt(), Some(ms(40)));
        assert_eq!(tracker.rtt(), Some(ms(40)));
        assert_eq!(tracker.loss(t0 + ms(90)), Some(0.0));
        assert_eq!(tracker.settled, 1);
    }

    #[test]
    fn ids_wrap_around_u32() {
        let t0 = Instant::now();
        let mut tracker = PingTracker::new(ms(100), t0);
        tracker.next_id = u32::MAX - 1;
        let mut ids = Vec::new();
        let mut now = t0;
        for _ in 0..4 {
            ids.push(tracker.poll_ping(now).unwrap());
            now = tracker.poll_timeout();
        }
        assert_eq!(ids, [u32::MAX - 1, u32::MAX, 0, 1]);
        // Answered out of order, across the wrap.
        tracker.handle_pong(0, now);
        tracker.handle_pong(u32::MAX, now);
        assert_eq!(tracker.outstanding.len(), 2);
        assert_eq!(tracker.loss(now), Some(0.0));
    }

    #[test]
    fn reset_starts_over_and_ignores_pongs_from_before() {
        let (mut tracker, now) = answered(5, ms(60));
        let old = tracker.poll_ping(now).unwrap();
        let unanswered = tracker.poll_ping(tracker.poll_timeout()).unwrap();
        assert_ne!(old, unanswered);
        let switch = now + ms(1_100);
        tracker.reset(DEFAULT_PING_INTERVAL, switch);
        assert_eq!(tracker.rtt(), None);
        assert_eq!(tracker.last_rtt(), None);
        assert_eq!(tracker.loss(switch + Duration::from_secs(10)), None);
        // A ping is due on the new path at once, and the old pong does not count on it.
        assert_eq!(tracker.poll_timeout(), switch);
        let new = tracker.poll_ping(switch).unwrap();
        assert!(new != old && new != unanswered);
        tracker.handle_pong(old, switch + ms(5));
        assert_eq!(tracker.rtt(), None);
        tracker.handle_pong(new, switch + ms(15));
        assert_eq!(tracker.rtt(), Some(ms(15)));
        assert_eq!(tracker.loss(switch + ms(15)), Some(0.0));
    }

    #[test]
    fn outstanding_pings_are_bounded_and_the_evicted_count_as_lost() {
        let t0 = Instant::now();
        // Pings every millisecond, so none reach the 1 s timeout.
        let mut tracker = PingTracker::new(MIN_PING_INTERVAL, t0);
        let mut now = t0;
        for _ in 0..MAX_OUTSTANDING {
            tracker.poll_ping(now).unwrap();
            now = tracker.poll_timeout();
        }
        assert_eq!(tracker.loss(now), None);
        for evicted in 1..=10u32 {
            tracker.poll_ping(now).unwrap();
            now = tracker.poll_timeout();
            assert_eq!(tracker.outstanding.len(), MAX_OUTSTANDING);
            assert_eq!(tracker.settled, evicted);
        }
        assert_eq!(tracker.loss(now), Some(1.0));
        // The oldest kept ping (id 10) is still answerable.
        tracker.handle_pong(10, now);
        assert_eq!(tracker.loss(now), Some(10.0 / 11.0));
        // An evicted one is not.
        tracker.handle_pong(0, now);
        assert_eq!(tracker.settled, 11);
    }

    #[test]
    fn loss_covers_only_the_last_32_settled_pings() {
        let t0 = Instant::now();
        let mut tracker = PingTracker::new(DEFAULT_PING_INTERVAL, t0);
        let mut now = t0;
        // 32 lost, then 24 answered: 8 of the last 32 were lost.
        for _ in 0..32 {
            tracker.poll_ping(now).unwrap();
            now = tracker.poll_timeout();
        }
        for _ in 0..24 {
            let id = tracker.poll_ping(now).unwrap();
            tracker.handle_pong(id, now + ms(10));
            now = tracker.poll_timeout();
        }
        let at = now + ms(10);
        assert_eq!(tracker.loss(at), Some(0.25));
        for _ in 0..8 {
            let id = tracker.poll_ping(now).unwrap();
            tracker.handle_pong(id, now + ms(10));
            now = tracker.poll_timeout();
        }
        assert_eq!(tracker.loss(now), Some(0.0));
    }

    #[test]
    fn the_loss_view_caps_a_burst_of_expiries_at_the_window() {
        let t0 = Instant::now();
        let mut tracker = PingTracker::new(MIN_PING_INTERVAL, t0);
        let mut now = t0;
        for _ in 0..MAX_OUTSTANDING {
            tracker.poll_ping(now).unwrap();
            now = tracker.poll_timeout();
        }
        let later = now + Duration::from_secs(5);
        assert_eq!(tracker.loss(later), Some(1.0));
        tracker.poll_ping(later).unwrap();
        assert_eq!(tracker.settled, LOSS_WINDOW);
        assert_eq!(tracker.outstanding.len(), 1);
    }

    proptest! {
        #[test]
        fn any_sequence_keeps_the_invariants(
            steps in proptest::collection::vec(
                (0u64..3_000, any::<u32>(), 0u8..4),
                1..300,
            ),
        ) {
            let t0 = Instant::now();
            let mut tracker = PingTracker::new(ms(100), t0);
            let mut now = t0;
            let mut sent = Vec::new();
            for (advance_ms, id, action) in steps {
                now += ms(advance_ms);
                match action {
                    0 => sent.extend(tracker.poll_ping(now)),
                    1 => tracker.handle_pong(id, now),
                    2 if !sent.is_empty() => {
                        tracker.handle_pong(sent[id as usize % sent.len()], now);
                    }
                    _ => {
                        if id % 16 == 0 {
                            tracker.reset(ms(100), now);
                        }
                    }
                }
                prop_assert!(tracker.outstanding.len() <= MAX_OUTSTANDING);
                prop_assert!(tracker.settled <= LOSS_WINDOW);
                if let Some(loss) = tracker.loss(now) {
                    prop_assert!((0.0..=1.0).contains(&loss));
                }
                // The view at `now` is what a call taking `now` then records.
                let view = tracker.loss(now);
                tracker.settle_expired(now);
                prop_assert_eq!(view, tracker.loss(now));
            }
        }
    }
}
