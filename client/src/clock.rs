//! The server's clock, estimated on the client.
//!
//! The server answers a time request with its own clock: a [`Duration`] since it started,
//! monotonic, in whole microseconds. The client sends a request at local instant `t0`, the
//! reply carries server time `S` and arrives at local instant `t1`. Following NTP's on-wire
//! protocol (RFC 5905 section 8), simplified because the server replies at once (its
//! processing time is simply part of the delay):
//!
//! - the round-trip delay is `δ = t1 − t0`;
//! - the server read `S` somewhere inside that round trip, so at `t1` its clock lies in
//!   `[S, S + δ]` whatever the split between the two directions, and the estimate is its
//!   middle, `S + δ/2`, with error bound `δ/2`.
//!
//! Like NTP's dispersion `ε = r.rho + s.rho + PHI × (T4 − T1)` (RFC 5905 section 8), the
//! bound also allows for the clocks' resolution (half of the microsecond `S` is truncated
//! to) and for the drift of the clocks during the round trip ([`DRIFT_ALLOWANCE_PPM`] of
//! `δ`), which matter only when `δ` is a few milliseconds or less.
//!
//! The last [`SAMPLE_WINDOW`] samples are kept and the estimate comes from the best of them,
//! as NTP's clock filter does (RFC 5905 section 10). A sample's bound widens as it ages by
//! [`DRIFT_ALLOWANCE_PPM`], since neither clock keeps perfect time.
//!
//! Sans-IO: [`ServerClock`] reads no clock and sends nothing. The caller asks
//! [`ServerClock::poll_request`] for a token to send, wakes at [`ServerClock::poll_timeout`],
//! feeds replies to [`ServerClock::handle_reply`] and reads [`ServerClock::estimate`].

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Samples kept for the estimate: the last 8, the size of NTP's clock filter register
/// (RFC 5905 section 10).
pub(crate) const SAMPLE_WINDOW: usize = 8;

/// How fast the client's and the server's clocks may drift apart, in parts per million:
/// a sample's error bound grows by 100 µs per second of age.
///
/// NTP assumes 15 ppm (`PHI`, RFC 5905 section 7.2); game clients and servers run on
/// consumer and virtualised hardware whose oscillators are often worse, so the allowance is
/// looser.
pub(crate) const DRIFT_ALLOWANCE_PPM: u64 = 100;

/// Requests in the initial burst, so that an estimate exists and has a choice of samples
/// soon after connecting.
pub(crate) const BURST_REQUESTS: u32 = 4;

/// Gap between the requests of the initial burst: 100 ms.
pub(crate) const BURST_INTERVAL: Duration = Duration::from_millis(100);

/// Gap between requests after the burst: 5 s. Eight samples then span 40 s, during which a
/// sample's bound grows by at most 4 ms at [`DRIFT_ALLOWANCE_PPM`].
pub(crate) const REQUEST_INTERVAL: Duration = Duration::from_secs(5);

/// Oldest request whose reply is still taken: 60 s. A reply slower than that says more
/// about the server than about its clock, and its bound would be useless anyway.
pub(crate) const MAX_REPLY_AGE: Duration = Duration::from_secs(60);

/// Resolution of both tokens and server times on the wire.
const WIRE_RESOLUTION: Duration = Duration::from_micros(1);

/// Requests remembered while awaiting their replies: every request younger than
/// [`MAX_REPLY_AGE`] fits, so the bound only matters if the caller misbehaves.
const MAX_OUTSTANDING: usize =
    (MAX_REPLY_AGE.as_secs() / REQUEST_INTERVAL.as_secs()) as usize + BURST_REQUESTS as usize;

/// An estimate of the server's clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerTime {
    /// The server's clock now: time since the server started.
    pub time: Duration,
    /// The true server clock is within `time ± error`.
    pub error: Duration,
}

/// One answered request.
#[derive(Clone, Copy, Debug)]
struct Sample {
    /// When the request left, as the token recorded it.
    sent: Instant,
    /// When the reply arrived.
    received: Instant,
    /// The middle of the window the server's clock was in at `received`.
    server_at_received: Duration,
    /// Half the window's width, rounded up.
    radius: Duration,
}

impl Sample {
    fn delay(&self) -> Duration {
        self.received.saturating_duration_since(self.sent)
    }

    /// This sample's view of the server clock at `now`.
    fn at(&self, now: Instant) -> ServerTime {
        let (time, since) = if now >= self.received {
            let since = now - self.received;
            (self.server_at_received.saturating_add(since), since)
        } else {
            let before = self.received - now;
            (self.server_at_received.saturating_sub(before), before)
        };
        // The clocks may have drifted apart both while the round trip was being measured
        // (NTP's `PHI × (T4 − T1)`) and since.
        let error = self
            .radius
            .saturating_add(drift_allowance(self.delay().saturating_add(since)));
        ServerTime { time, error }
    }
}

/// How far the two clocks may have drifted apart over `elapsed`, rounded up.
fn drift_allowance(elapsed: Duration) -> Duration {
    let nanos = (elapsed.as_nanos() * u128::from(DRIFT_ALLOWANCE_PPM)).div_ceil(1_000_000);
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// The client's estimate of the server's clock, fed by time requests and their replies.
#[derive(Debug)]
pub(crate) struct ServerClock {
    /// Origin of the tokens.
    start: Instant,
    next_request: Instant,
    requests_sent: u32,
    /// Tokens sent and not yet answered, oldest first.
    outstanding: VecDeque<u64>,
    /// Answered requests, oldest first.
    samples: VecDeque<Sample>,
}

impl ServerClock {
    /// A clock with no samples whose first request is due at `now`.
    pub fn new(now: Instant) -> Self {
        Self {
            start: now,
            next_request: now,
            requests_sent: 0,
            outstanding: VecDeque::with_capacity(MAX_OUTSTANDING),
            samples: VecDeque::with_capacity(SAMPLE_WINDOW),
        }
    }

    /// Whether a request should go out at `now`: [`BURST_REQUESTS`] requests
    /// [`BURST_INTERVAL`] apart at first, then one every [`REQUEST_INTERVAL`].
    ///
    /// Returns the token to put in the request, marking the request sent: the local send time
    /// in whole microseconds since [`ServerClock::new`]'s `now`, which the server echoes so
    /// that the reply says when its request left.
    pub fn poll_request(&mut self, now: Instant) -> Option<u64> {
        if now < self.next_request {
            return None;
        }
        // Rounding down puts the recorded send time at or before the real one, which can
        // only lengthen the measured delay and so only widen the bound.
        let token = micros(now.saturating_duration_since(self.start));
        self.requests_sent = self.requests_sent.saturating_add(1);
        let gap = if self.requests_sent < BURST_REQUESTS {
            BURST_INTERVAL
        } else {
            REQUEST_INTERVAL
        };
        self.next_request = now.checked_add(gap).unwrap_or(now);
        self.forget_requests_before(now);
        if self.outstanding.len() == MAX_OUTSTANDING {
            self.outstanding.pop_front();
        }
        self.outstanding.push_back(token);
        Some(token)
    }

    /// When [`ServerClock::poll_request`] next wants to be called.
    pub fn poll_timeout(&self) -> Instant {
        self.next_request
    }

    /// A reply arrived at `now`, echoing `token` and carrying the server's clock,
    /// `server_time_us` microseconds since the server started.
    ///
    /// Ignored, as the work of a confused or hostile server: a token from the future (which
    /// would make the delay negative), one older than [`MAX_REPLY_AGE`], and one this clock
    /// did not send or already took a reply for. Never panics, whatever the inputs.
    pub fn handle_reply(&mut self, token: u64, server_time_us: u64, now: Instant) {
        let Some(sent) = self.start.checked_add(Duration::from_micros(token)) else {
            return;
        };
        let Some(delay) = now.checked_duration_since(sent) else {
            return;
        };
        if delay > MAX_REPLY_AGE {
            return;
        }
        // A forged or replayed token would otherwise pass for a round trip of any length,
        // including a tiny one that would win the filter.
        let Some(index) = self.outstanding.iter().position(|&t| t == token) else {
            return;
        };
        self.outstanding.remove(index);
        // The server's clock is truncated to whole microseconds, so at `now` it lies in
        // `[S, S + δ + 1 µs)`.
        let width = delay.saturating_add(WIRE_RESOLUTION);
        let Some(server_at_received) = Duration::from_micros(server_time_us).checked_add(width / 2)
        else {
            return;
        };
        if self.samples.len() == SAMPLE_WINDOW {
            self.samples.pop_front();
        }
        self.samples.push_back(Sample {
            sent,
            received: now,
            server_at_received,
            // Rounded up so that `middle ± radius` covers the whole window.
            radius: width - width / 2,
        });
    }

    /// The estimate at `now`, or `None` before the first reply.
    ///
    /// Every kept sample bounds the server's clock on its own; the estimate is the sample
    /// whose bound is tightest at `now`. That is the sample with the smallest delay, unless
    /// an older one has aged by more than its delay advantage: the order of NTP's
    /// synchronization distance `δ/2 + ε` (RFC 5905 section 10). Ties go to the newest.
    pub fn estimate(&self, now: Instant) -> Option<ServerTime> {
        self.samples
            .iter()
            .rev()
            .map(|sample| sample.at(now))
            .reduce(|best, next| if next.error < best.error { next } else { best })
    }

    fn forget_requests_before(&mut self, now: Instant) {
        let Some(cutoff) = now.checked_sub(MAX_REPLY_AGE) else {
            return;
        };
        let cutoff = micros(cutoff.saturating_duration_since(self.start));
        self.outstanding.retain(|&token| token >= cutoff);
    }
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A server whose clock reads `offset` at local instant `base` and runs at the client's
    /// rate changed by `rate_ppm` parts per million.
    struct SimServer {
        base: Instant,
        offset: Duration,
        rate_ppm: i64,
    }

    impl SimServer {
        fn steady(base: Instant, offset: Duration) -> Self {
            Self {
                base,
                offset,
                rate_ppm: 0,
            }
        }

        /// The server's true clock at local instant `at`, to the nanosecond.
        fn clock(&self, at: Instant) -> Duration {
            let local = at.duration_since(self.base).as_nanos() as i128;
            let nanos =
                self.offset.as_nanos() as i128 + local + local * self.rate_ppm as i128 / 1_000_000;
            Duration::from_nanos(u64::try_from(nanos).unwrap())
        }

        /// What it puts on the wire when a request reaches it at `at`.
        fn reply(&self, at: Instant) -> u64 {
            micros(self.clock(at))
        }
    }

    /// Sends one request at `at` (which must be due) that takes `out` to reach the server
    /// and `back` to return; returns the arrival instant.
    fn exchange(
        clock: &mut ServerClock,
        server: &SimServer,
        at: Instant,
        out: Duration,
        back: Duration,
    ) -> Instant {
        let token = clock.poll_request(at).expect("a request is due");
        let arrived = at + out + back;
        clock.handle_reply(token, server.reply(at + out), arrived);
        arrived
    }

    fn assert_within(estimate: ServerTime, truth: Duration) {
        let low = estimate.time.saturating_sub(estimate.error);
        let high = estimate.time + estimate.error;
        assert!(
            low <= truth && truth <= high,
            "true clock {truth:?} outside {:?} ± {:?}",
            estimate.time,
            estimate.error
        );
    }

    /// The bound at the reply's arrival for a round trip of `delay`.
    fn fresh_error(delay: Duration) -> Duration {
        let width = delay + WIRE_RESOLUTION;
        (width - width / 2) + drift_allowance(delay)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn no_estimate_before_the_first_reply() {
        let t0 = Instant::now();
        let mut clock = ServerClock::new(t0);
        assert_eq!(clock.estimate(t0), None);
        clock.poll_request(t0).unwrap();
        assert_eq!(clock.estimate(t0 + ms(50)), None);
    }

    #[test]
    fn symmetric_delay_is_estimated_within_half_the_delay() {
        let t0 = Instant::now();
        let server = SimServer::steady(t0, Duration::from_secs(1234));
        let mut clock = ServerClock::new(t0);
        let arrived = exchange(&mut clock, &server, t0, ms(20), ms(20));
        let estimate = clock.estimate(arrived).unwrap();
        assert_within(estimate, server.clock(arrived));
        // δ/2, plus half the wire's microsecond and 100 ppm of the 40 ms round trip (4 µs).
        assert_eq!(estimate.error, fresh_error(ms(40)));
        assert_eq!(
            estimate.error,
            ms(20) + Duration::from_nanos(500) + Duration::from_micros(4)
        );
        // Symmetric and whole microseconds: the middle of the window is the truth.
        assert_eq!(
            estimate.time,
            server.clock(arrived) + Duration::from_nanos(500)
        );
    }

    #[test]
    fn the_bound_holds_for_the_most_lopsided_splits() {
        for (out, back) in [(ms(0), ms(80)), (ms(80), ms(0)), (ms(1), ms(79))] {
            let t0 = Instant::now();
            let server = SimServer::steady(t0, Duration::from_nanos(987_654_321));
            let mut clock = ServerClock::new(t0);
            let arrived = exchange(&mut clock, &server, t0, out, back);
            let estimate = clock.estimate(arrived).unwrap();
            assert_within(estimate, server.clock(arrived));
            assert_eq!(estimate.error, fresh_error(ms(80)));
        }
    }

    #[test]
    fn the_bound_covers_the_microsecond_the_server_truncates() {
        // The server's clock is 999 ns past the microsecond it reports, and the round trip
        // is too short for the drift allowance to hide that.
        for (out, back) in [(0, 0), (0, 3_000), (3_000, 0)] {
            let t0 = Instant::now();
            let server = SimServer::steady(t0, Duration::from_nanos(5_000_000_999));
            let mut clock = ServerClock::new(t0);
            let out = Duration::from_nanos(out);
            let back = Duration::from_nanos(back);
            let arrived = exchange(&mut clock, &server, t0, out, back);
            assert_within(clock.estimate(arrived).unwrap(), server.clock(arrived));
        }
    }

    #[test]
    fn the_smallest_delay_sample_wins() {
        let t0 = Instant::now();
        let server = SimServer::steady(t0, Duration::from_secs(99));
        let mut clock = ServerClock::new(t0);
        let mut at = t0;
        for delay in [50, 10, 30, 70] {
            exchange(&mut clock, &server, at, ms(delay / 2), ms(delay / 2));
            at = clock.poll_timeout();
        }
        // 300 ms after the 10 ms sample's reply, which left at t0 + 100 ms.
        let now = t0 + ms(410);
        let estimate = clock.estimate(now).unwrap();
        assert_eq!(
            estimate.error,
            fresh_error(ms(10)) + drift_allowance(ms(300))
        );
        assert_within(estimate, server.clock(now));
    }

    #[test]
    fn an_old_sample_loses_once_its_age_outweighs_its_smaller_delay() {
        let t0 = Instant::now();
        let server = SimServer::steady(t0, Duration::from_secs(7));
        let mut clock = ServerClock::new(t0);
        exchange(&mut clock, &server, t0, ms(1), ms(1));
        // A sample 20 s younger with 3 ms more delay: 20 s of drift is 2 ms of bound, more
        // than the 1.5 ms the smaller delay saves.
        let later = t0 + Duration::from_secs(20);
        let arrived = exchange(&mut clock, &server, later, ms(2), ms(3));
        let estimate = clock.estimate(arrived).unwrap();
        assert_eq!(estimate.error, fresh_error(ms(5)));
        assert_within(estimate, server.clock(arrived));
    }

    #[test]
    fn the_error_grows_with_age_by_the_drift_allowance() {
        let t0 = Instant::now();
        let server = SimServer::steady(t0, Duration::from_secs(5));
        let mut clock = ServerClock::new(t0);
        let arrived = exchange(&mut clock, &server, t0, ms(10), ms(10));
        let fresh = clock.estimate(arrived).unwrap();
        let aged = clock.estimate(arrived + Duration::from_secs(10)).unwrap();
        // 100 ppm of 10 s.
        assert_eq!(aged.error - fresh.error, ms(1));
        assert_eq!(aged.time - fresh.time, Duration::from_secs(10));
        let older = clock.estimate(arrived + Duration::from_secs(100)).unwrap();
        assert_eq!(older.error - fresh.error, ms(10));
    }

    #[test]
    fn the_bound_holds_for_a_server_drifting_at_the_allowance() {
        for rate_ppm in [-100, 100] {
            let t0 = Instant::now();
            let server = SimServer {
                base: t0,
                offset: Duration::from_secs(3),
                rate_ppm,
            };
            let mut clock = ServerClock::new(t0);
            exchange(&mut clock, &server, t0, ms(0), ms(200));
            for later in [0, 1_000, 60_000, 3_600_000] {
                let now = t0 + ms(200 + later);
                assert_within(clock.estimate(now).unwrap(), server.clock(now));
            }
        }
    }

    #[test]
    fn the_window_keeps_the_last_eight_samples() {
        let t0 = Instant::now();
        let server = SimServer::steady(t0, Duration::from_secs(1));
        let mut clock = ServerClock::new(t0);
        // The smallest delay first, so it is the first to go.
        let mut at = t0;
        for delay in [2, 40, 40, 40, 40, 40, 40, 40] {
            exchange(&mut clock, &server, at, ms(delay / 2), ms(delay / 2));
            at = clock.poll_timeout();
        }
        assert_eq!(clock.samples.len(), SAMPLE_WINDOW);
        let now = at;
        assert!(clock.estimate(now).unwrap().error < ms(10));
        exchange(&mut clock, &server, at, ms(20), ms(20));
        assert_eq!(clock.samples.len(), SAMPLE_WINDOW);
        assert!(clock.estimate(now + ms(40)).unwrap().error > ms(20));
    }

    #[test]
    fn requests_come_in_a_burst_then_periodically() {
        let t0 = Instant::now();
        let mut clock = ServerClock::new(t0);
        assert_eq!(clock.poll_timeout(), t0);
        let mut sent = Vec::new();
        let mut now = t0;
        while now < t0 + Duration::from_secs(16) {
            if let Some(token) = clock.poll_request(now) {
                sent.push((now - t0, token));
                // Nothing more is due until the timeout.
                assert_eq!(clock.poll_request(now), None);
                assert!(clock.poll_timeout() > now);
            }
            now += ms(10);
        }
        let times: Vec<_> = sent.iter().map(|&(at, _)| at.as_millis()).collect();
        assert_eq!(times, [0, 100, 200, 300, 5_300, 10_300, 15_300]);
        for (at, token) in sent {
            assert_eq!(token, at.as_micros() as u64);
        }
    }

    #[test]
    fn a_late_caller_is_not_owed_a_burst_of_catch_up_requests() {
        let t0 = Instant::now();
        let mut clock = ServerClock::new(t0);
        for _ in 0..BURST_REQUESTS {
            let at = clock.poll_timeout();
            clock.poll_request(at).unwrap();
        }
        let late = clock.poll_timeout() + Duration::from_secs(30);
        assert!(clock.poll_request(late).is_some());
        assert_eq!(clock.poll_request(late + ms(1)), None);
        assert_eq!(clock.poll_timeout(), late + REQUEST_INTERVAL);
    }

    #[test]
    fn garbage_replies_are_ignored() {
        let t0 = Instant::now();
        let mut clock = ServerClock::new(t0);
        let first = clock.poll_request(t0).unwrap();
        let second = clock.poll_request(t0 + ms(100)).unwrap();
        let now = t0 + ms(150);
        // From the future: the delay would be negative.
        clock.handle_reply(micros(ms(151)), 1, now);
        clock.handle_reply(u64::MAX, 1, now);
        // Never sent, though plausible.
        clock.handle_reply(micros(ms(50)), 1, now);
        assert_eq!(clock.estimate(now), None);
        // Older than a minute.
        clock.handle_reply(first, 1, t0 + Duration::from_secs(61));
        assert_eq!(clock.estimate(t0 + Duration::from_secs(61)), None);
        // A real reply is taken once; a replay of it is not another sample.
        clock.handle_reply(second, 5_000_000, now);
        clock.handle_reply(second, 9_000_000, now);
        assert_eq!(clock.samples.len(), 1);
        let estimate = clock.estimate(now).unwrap();
        assert!(estimate.time < Duration::from_secs(6));
        // Still unanswered, but too old whenever its reply comes.
        clock.handle_reply(first, 1, t0 + Duration::from_secs(100));
        assert_eq!(clock.samples.len(), 1);
    }

    #[test]
    fn the_outstanding_requests_are_bounded() {
        let t0 = Instant::now();
        let mut clock = ServerClock::new(t0);
        let mut now = t0;
        for _ in 0..1_000 {
            now = clock.poll_timeout();
            clock.poll_request(now).unwrap();
            assert!(clock.outstanding.len() <= MAX_OUTSTANDING);
        }
        // Only the last minute's worth is remembered.
        let oldest = clock.outstanding[0];
        assert!(now - (t0 + Duration::from_micros(oldest)) <= MAX_REPLY_AGE);
    }

    #[test]
    fn extreme_server_times_do_not_panic() {
        let t0 = Instant::now();
        let mut clock = ServerClock::new(t0);
        let token = clock.poll_request(t0).unwrap();
        clock.handle_reply(token, u64::MAX, t0 + ms(3));
        let estimate = clock.estimate(t0 + Duration::from_secs(3600)).unwrap();
        assert!(estimate.time > Duration::from_micros(u64::MAX));
        // An instant before the sample: extrapolated backwards.
        let token = clock.poll_request(clock.poll_timeout()).unwrap();
        clock.handle_reply(token, 0, t0 + ms(101));
        let _ = clock.estimate(t0);
    }

    proptest! {
        #[test]
        fn the_bound_holds_for_any_split_and_offset(
            offset_ns in 0u64..1 << 60,
            out_ns in 0u64..2_000_000_000,
            back_ns in 0u64..2_000_000_000,
            start_ns in 0u64..10_000_000_000,
            later_ns in 0u64..100_000_000_000,
        ) {
            let base = Instant::now();
            let server = SimServer::steady(base, Duration::from_nanos(offset_ns));
            let start = base + Duration::from_nanos(start_ns);
            let mut clock = ServerClock::new(start);
            let out = Duration::from_nanos(out_ns);
            let back = Duration::from_nanos(back_ns);
            let arrived = exchange(&mut clock, &server, start, out, back);
            let fresh = clock.estimate(arrived).unwrap();
            assert_within(fresh, server.clock(arrived));
            prop_assert_eq!(fresh.error, fresh_error(out + back));
            let now = arrived + Duration::from_nanos(later_ns);
            assert_within(clock.estimate(now).unwrap(), server.clock(now));
        }

        #[test]
        fn the_bound_holds_for_any_drift_within_the_allowance(
            rate_ppm in -(DRIFT_ALLOWANCE_PPM as i64)..=DRIFT_ALLOWANCE_PPM as i64,
            offset_ns in 0u64..1 << 40,
            // Whole milliseconds keep the simulated drift exact to the nanosecond.
            out_ms in 0u64..2_000,
            back_ms in 0u64..2_000,
            later_ms in 0u64..10_000_000,
            gap_ms in 0u64..60_000,
        ) {
            let base = Instant::now();
            let server = SimServer { base, offset: Duration::from_nanos(offset_ns), rate_ppm };
            let mut clock = ServerClock::new(base);
            exchange(&mut clock, &server, base, ms(out_ms), ms(back_ms));
            let at = clock.poll_timeout() + ms(gap_ms);
            let arrived = exchange(&mut clock, &server, at, ms(back_ms), ms(out_ms));
            let now = arrived + ms(later_ms);
            assert_within(clock.estimate(now).unwrap(), server.clock(now));
        }

        #[test]
        fn any_input_is_safe(
            steps in proptest::collection::vec(
                (any::<u64>(), any::<u64>(), 0u64..200_000_000_000, any::<bool>()),
                1..40,
            ),
        ) {
            let t0 = Instant::now();
            let mut clock = ServerClock::new(t0);
            for (token, server_time, at_us, poll) in steps {
                let now = t0 + Duration::from_micros(at_us);
                // Sometimes a real token, or one just off it.
                let sent = if poll { clock.poll_request(now) } else { None };
                let token = sent.map_or(token, |sent| sent.wrapping_add(token % 3));
                clock.handle_reply(token, server_time, now);
                prop_assert!(clock.samples.len() <= SAMPLE_WINDOW);
                prop_assert!(clock.outstanding.len() <= MAX_OUTSTANDING);
                let _ = clock.estimate(now);
                let _ = clock.estimate(t0);
            }
        }
    }
}
