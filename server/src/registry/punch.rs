//! The punch referee: when a pair punches, how often it may retry, and what its path is.
//!
//! Pure policy with no IO. Retries wait at least 60 s and double each time, up to a bounded
//! number of attempts: a Linux router keeps a wrong conntrack entry alive for as long as
//! packets keep hitting it within 30 s, so retrying every few seconds can never succeed
//! (ARCHITECTURE.md, "Hole punching"), and libp2p's measurements show retries add little over a good
//! first attempt.

use peergroup_protocol::{PairPath, PathReason, PunchOutcome};
use std::time::{Duration, Instant};

/// When pairs punch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PunchStart {
    /// As soon as the two hosts share a group that allows direct P2P. The default.
    #[default]
    Always,
    /// Only once a user message first goes from one to the other (ProudNet's just-in-time
    /// hole punching), saving probes for pairs that never talk.
    OnFirstMessage,
}

/// Punch policy. Plain data with documented defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PunchConfig {
    /// When pairs punch. Default [`PunchStart::Always`].
    pub start: PunchStart,
    /// Wait before the first retry after a failed attempt or a dead direct path; each later
    /// retry waits twice as long. Default 60 s (over twice Linux conntrack's 30 s UDP
    /// timeout).
    pub first_retry: Duration,
    /// Failed attempts in a row at most before the pair stays on the relay; a direct
    /// path resets the count. Default 4.
    pub max_attempts: u32,
    /// Wait before punching again after a direct path that worked has died. Its NAT
    /// mappings were good, so there is no bad conntrack entry to outwait. Default 5 s.
    pub after_direct_lost: Duration,
    /// Punch orders one host may be sent in a burst (a token bucket, refilled by
    /// `order_refill`): past it, punches that would order the host wait for a token, so
    /// a peer that keeps asking for punches can never flood a host with orders, which
    /// go ahead of its messages. A client joining a crowded group is ordered to punch with
    /// each member at once, so this is sized for that. Default 128.
    pub order_burst: u32,
    /// One more punch order a host may be sent per this much time, up to `order_burst`.
    /// Default 100 ms (10 orders a second per host after a burst).
    pub order_refill: Duration,
    /// How long a pair must have lasted before it punches (with either `start`): in
    /// view-group games (an MMO's areas of interest) most pairs last only seconds, and
    /// each punch costs both peers probes and a QUIC handshake, so a crowd moving through
    /// an area spends its CPU on direct paths it drops again. Pairs that end younger stay
    /// on the relay and never punch. Default 0 (punch at once).
    pub min_pair_age: Duration,
}

impl Default for PunchConfig {
    fn default() -> Self {
        Self {
            start: PunchStart::Always,
            first_retry: Duration::from_secs(60),
            max_attempts: 4,
            after_direct_lost: Duration::from_secs(5),
            order_burst: 128,
            order_refill: Duration::from_millis(100),
            min_pair_age: Duration::ZERO,
        }
    }
}

/// Where a pair stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// On the relay, no punch under way; maybe a retry scheduled.
    Relay { retry_at: Option<Instant> },
    /// An order is out for this attempt; `failed` once either side reported failure.
    Punching { attempt: u32, failed: bool },
    /// Direct on the sides that reported so.
    Direct,
}

/// The punch state of one pair.
#[derive(Debug, Clone)]
pub(crate) struct PunchState {
    pub stage: Stage,
    /// Attempts so far; numbers each attempt.
    pub attempts: u32,
    /// Failed attempts since the last direct path.
    failures: u32,
    /// Which sides (lower id first) report a direct path now.
    direct_sides: (bool, bool),
    /// The latest attempt each side (lower id first) has reported on: a side's result
    /// counts once per attempt.
    reported: (u32, u32),
}

/// What the registry should do after a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Nothing changes.
    Nothing,
    /// The pair's path changed: tell the application.
    PathChanged(PairPath, PathReason),
    /// Schedule a retry at this time.
    RetryAt(Instant),
    /// Both: the path fell back and a retry is scheduled.
    FellBack(PathReason, Instant),
}

impl PunchState {
    pub fn new() -> Self {
        Self {
            stage: Stage::Relay { retry_at: None },
            attempts: 0,
            failures: 0,
            direct_sides: (false, false),
            reported: (0, 0),
        }
    }

    /// Whether a side's report on `attempt` is its first on an attempt that was ordered
    /// (and not older than one it reported on): only those count in its punch record.
    pub fn first_report(&mut self, lower_side: bool, attempt: u32) -> bool {
        let reported = if lower_side {
            &mut self.reported.0
        } else {
            &mut self.reported.1
        };
        if attempt == 0 || attempt > self.attempts || attempt <= *reported {
            return false;
        }
        *reported = attempt;
        true
    }

    /// Whether another attempt is allowed.
    pub fn may_attempt(&self, config: &PunchConfig) -> bool {
        self.failures < config.max_attempts
    }

    /// Starts the next attempt; returns its number.
    pub fn begin_attempt(&mut self) -> u32 {
        self.attempts += 1;
        self.stage = Stage::Punching {
            attempt: self.attempts,
            failed: false,
        };
        self.attempts
    }

    /// The retry time after a failure: `first_retry`, doubled per earlier failure.
    fn retry_after_failure(&mut self, now: Instant, config: &PunchConfig) -> Option<Instant> {
        self.failures += 1;
        if !self.may_attempt(config) {
            return None;
        }
        let doublings = (self.failures - 1).min(16);
        Some(now + config.first_retry * 2u32.pow(doublings))
    }

    /// A side's report of how its punch ended.
    pub fn handle_punch_report(
        &mut self,
        attempt: u32,
        outcome: PunchOutcome,
        now: Instant,
        config: &PunchConfig,
    ) -> Verdict {
        let Stage::Punching {
            attempt: current,
            failed,
        } = self.stage
        else {
            return Verdict::Nothing;
        };
        if attempt != current || failed {
            return Verdict::Nothing;
        }
        match outcome {
            PunchOutcome::Direct { .. } => Verdict::Nothing, // the path report says more
            // A declined order is a failed attempt like any other: it backs off, so asking
            // for punches and declining them cannot make the server order the peer again
            // and again.
            _ => {
                let retry_at = self.retry_after_failure(now, config);
                self.stage = Stage::Relay { retry_at };
                retry_at.map_or(Verdict::Nothing, Verdict::RetryAt)
            }
        }
    }

    /// A side's report of the path it now uses. `lower_side` says which host reported.
    pub fn handle_path_report(
        &mut self,
        lower_side: bool,
        path: PairPath,
        reason: PathReason,
        now: Instant,
        config: &PunchConfig,
    ) -> Verdict {
        let side = if lower_side {
            &mut self.direct_sides.0
        } else {
            &mut self.direct_sides.1
        };
        *side = path == PairPath::Direct;
        let both_direct = self.direct_sides == (true, true);
        match (self.stage, path) {
            (Stage::Direct, PairPath::Relay) => {
                self.direct_sides = (false, false);
                let at = now + config.after_direct_lost;
                self.stage = Stage::Relay { retry_at: Some(at) };
                Verdict::FellBack(reason, at)
            }
            (Stage::Punching { .. }, PairPath::Direct) if both_direct => {
                self.stage = Stage::Direct;
                self.failures = 0;
                Verdict::PathChanged(PairPath::Direct, reason)
            }
            _ => Verdict::Nothing,
        }
    }

    /// The path the pair uses now, as the server knows it.
    pub fn path(&self) -> PairPath {
        match self.stage {
            Stage::Direct => PairPath::Direct,
            _ => PairPath::Relay,
        }
    }
}

/// How long each side waits before its first probe, so both first probes leave together.
///
/// The orders leave the server at once and reach each side after about half its RTT, so
/// the nearer side waits the difference (libp2p DCUtR times its simultaneous open the same
/// way, from a measured RTT).
pub fn punch_start_delays(rtt_a: Duration, rtt_b: Duration) -> (Duration, Duration) {
    let (one_way_a, one_way_b) = (rtt_a / 2, rtt_b / 2);
    let latest = one_way_a.max(one_way_b);
    (latest - one_way_a, latest - one_way_b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> PunchConfig {
        PunchConfig::default()
    }

    #[test]
    fn the_nearer_side_waits_so_both_start_together() {
        let (a, b) = punch_start_delays(Duration::from_millis(20), Duration::from_millis(100));
        assert_eq!(a, Duration::from_millis(40));
        assert_eq!(b, Duration::ZERO);
        assert_eq!(
            Duration::from_millis(10) + a,
            Duration::from_millis(50) + b,
            "arrival plus wait is equal on both sides"
        );
    }

    #[test]
    fn failures_retry_no_sooner_than_60_s_then_double_and_stop_after_the_limit() {
        let now = Instant::now();
        let mut state = PunchState::new();
        let mut waits = Vec::new();
        while state.may_attempt(&config()) {
            let attempt = state.begin_attempt();
            match state.handle_punch_report(attempt, PunchOutcome::NoResponse, now, &config()) {
                Verdict::RetryAt(at) => waits.push((at - now).as_secs()),
                Verdict::Nothing => break,
                other => panic!("unexpected {other:?}"),
            }
            // The other side's report of the same failed attempt changes nothing.
            assert_eq!(
                state.handle_punch_report(attempt, PunchOutcome::NoResponse, now, &config()),
                Verdict::Nothing
            );
        }
        assert_eq!(waits, vec![60, 120, 240]);
        assert_eq!(state.attempts, 4);
    }

    #[test]
    fn a_pair_is_direct_once_both_sides_say_so_and_falls_back_when_either_does_not() {
        let now = Instant::now();
        let mut state = PunchState::new();
        state.begin_attempt();
        let direct = |s: &mut PunchState, lower| {
            s.handle_path_report(lower, PairPath::Direct, PathReason::Punched, now, &config())
        };
        assert_eq!(direct(&mut state, true), Verdict::Nothing);
        assert_eq!(
            direct(&mut state, false),
            Verdict::PathChanged(PairPath::Direct, PathReason::Punched)
        );
        assert_eq!(state.path(), PairPath::Direct);
        let fell = state.handle_path_report(
            false,
            PairPath::Relay,
            PathReason::DirectTimedOut,
            now,
            &config(),
        );
        assert_eq!(
            fell,
            Verdict::FellBack(PathReason::DirectTimedOut, now + Duration::from_secs(5)),
            "a path that worked is punched again soon"
        );
        assert!(state.may_attempt(&config()));
        assert_eq!(state.begin_attempt(), 2, "attempt numbers keep counting");
        assert_eq!(state.path(), PairPath::Relay);
    }

    #[test]
    fn stale_reports_change_nothing_and_a_decline_backs_off_as_a_failure() {
        let now = Instant::now();
        let mut state = PunchState::new();
        let attempt = state.begin_attempt();
        assert_eq!(
            state.handle_punch_report(attempt + 7, PunchOutcome::NoResponse, now, &config()),
            Verdict::Nothing
        );
        let retry_at = now + Duration::from_secs(60);
        assert_eq!(
            state.handle_punch_report(attempt, PunchOutcome::Declined, now, &config()),
            Verdict::RetryAt(retry_at)
        );
        assert_eq!(
            state.stage,
            Stage::Relay {
                retry_at: Some(retry_at)
            }
        );
        let mut declines = 1;
        while state.may_attempt(&config()) {
            let attempt = state.begin_attempt();
            state.handle_punch_report(attempt, PunchOutcome::Declined, now, &config());
            declines += 1;
        }
        assert_eq!(declines, 4, "declines stop punching after max_attempts");
    }

    #[test]
    fn each_side_reports_once_per_ordered_attempt() {
        let mut state = PunchState::new();
        assert!(!state.first_report(true, 1), "no attempt ordered yet");
        state.begin_attempt();
        assert!(state.first_report(true, 1));
        assert!(!state.first_report(true, 1), "a repeat does not count");
        assert!(!state.first_report(true, 2), "an attempt never ordered");
        assert!(
            state.first_report(false, 1),
            "the other side counts once too"
        );
        state.begin_attempt();
        assert!(state.first_report(false, 2));
        assert!(
            !state.first_report(false, 1),
            "older than one already reported"
        );
    }
}
