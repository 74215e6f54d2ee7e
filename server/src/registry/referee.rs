//! The punch referee's side of the registry: just-in-time requests, punch and path
//! reports, per-host punch records, and the orders themselves. The policy (when to retry,
//! what a report means) lives in `punch.rs`; this file applies it to pairs and hosts.

use super::punch::{self, PunchStart, Verdict};
use super::{host_key, Action, HostState, Registry, Timer};
use crate::events::ServerEvent;
use peergroup_protocol::budget::TokenBucket;
use peergroup_protocol::{HostId, PairId, PairPath, PathReason, PunchOutcome};
use std::net::SocketAddr;
use std::time::Duration;
use std::time::Instant;

/// One host's punch record, for matchmakers that prefer hosts that punch well. Counts
/// the host's own reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PunchStats {
    /// Punch orders sent to the host.
    pub orders: u32,
    /// Attempts that ended with a direct path.
    pub direct: u32,
    /// Attempts where no candidate pair validated.
    pub no_response: u32,
    /// Attempts where probes passed but the QUIC handshake failed.
    pub handshake_failed: u32,
    /// Orders the host declined (relay-only, or at its direct-peer limit).
    pub declined: u32,
    /// Direct paths that later died.
    pub direct_lost: u32,
}

/// What the server knows of one pair: ProudNet's `GetP2PConnectionStats` for the server
/// side.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairStats {
    /// The pair's id.
    pub pair: PairId,
    /// Groups the two share now (0 while lingering).
    pub shared_groups: u32,
    /// The path in use, as both sides reported it.
    pub path: PairPath,
    /// Messages relayed between them, both ways, since the pair started.
    pub relayed: u64,
    /// Payload bytes relayed between them, both ways, since the pair started.
    pub relayed_bytes: u64,
    /// Punch attempts so far.
    pub punch_attempts: u32,
    /// The two hosts' RTT to each other on the pair's current path (relay or direct), as
    /// the lower id last reported it (ProudNet's `GetP2PRecentPingMs`). Clients report
    /// every few seconds; `None` before the first report.
    pub recent_rtt: Option<Duration>,
    /// The last RTT sample in that report.
    pub last_rtt: Option<Duration>,
    /// Pings lost of the last 32 that side sent, as a fraction (0.0 to 1.0).
    pub loss: Option<f32>,
}

impl Registry {
    /// Just-in-time mode: `from` sent its first user message to the pair's peer.
    pub(super) fn handle_want_direct(&mut self, from: HostId, pair: PairId, now: Instant) {
        let Some(state) = self.pairs.get_member_mut(pair, from) else {
            return;
        };
        state.talked = true;
        self.maybe_punch(pair, now);
    }

    /// `from`'s report of how its side of a punch attempt ended.
    pub(super) fn handle_punch_report(
        &mut self,
        from: HostId,
        pair: PairId,
        attempt: u32,
        outcome: PunchOutcome,
        now: Instant,
    ) {
        let config = self.config.punch;
        let Some(state) = self.pairs.get_member_mut(pair, from) else {
            return;
        };
        // One report per side and attempt counts, in the pair's state and in the host's
        // record: repeating a report cannot inflate either.
        if !state.punch.first_report(from == state.hosts.0, attempt) {
            return;
        }
        let verdict = state
            .punch
            .handle_punch_report(attempt, outcome, now, &config);
        if let Some(host) = self.hosts.get_mut(host_key(from)) {
            let stats = &mut host.punch;
            match outcome {
                PunchOutcome::Direct { .. } => stats.direct += 1,
                PunchOutcome::NoResponse => stats.no_response += 1,
                PunchOutcome::HandshakeFailed => stats.handshake_failed += 1,
                _ => stats.declined += 1,
            }
        }
        if let Verdict::RetryAt(at) = verdict {
            self.timers.insert((at, Timer::PunchRetry(pair)));
        }
    }

    /// `from`'s report of the path its side of the pair uses now.
    pub(super) fn handle_path_report(
        &mut self,
        from: HostId,
        pair: PairId,
        path: PairPath,
        reason: PathReason,
        now: Instant,
    ) {
        let config = self.config.punch;
        let Some(state) = self.pairs.get_member_mut(pair, from) else {
            return;
        };
        let (a, b) = state.hosts;
        let verdict = state
            .punch
            .handle_path_report(from == a, path, reason, now, &config);
        let changed = match verdict {
            Verdict::PathChanged(path, reason) => Some((path, reason)),
            Verdict::FellBack(reason, at) => {
                self.timers.insert((at, Timer::PunchRetry(pair)));
                Some((PairPath::Relay, reason))
            }
            _ => None,
        };
        if let Some((path, reason)) = changed {
            if path == PairPath::Direct && reason == PathReason::Punched {
                self.counters.punch_successes += 1;
            }
            if path == PairPath::Relay {
                if let Some(host) = self.hosts.get_mut(host_key(from)) {
                    host.punch.direct_lost += 1;
                }
            }
            self.event(ServerEvent::PairPathChanged { a, b, path, reason });
        }
    }

    /// A host's punch record.
    pub fn punch_stats(&self, host: HostId) -> Option<PunchStats> {
        self.hosts.get(host_key(host)).map(|h| h.punch)
    }

    /// What the server knows of the pair between two hosts.
    pub fn pair_stats(&self, a: HostId, b: HostId) -> Option<PairStats> {
        let (pair, state) = self.pairs.between(a, b)?;
        Some(pair_stats_of(pair, state))
    }

    /// Every pair's hosts (lower id first) and stats, lingering pairs included.
    pub fn all_pair_stats(&self) -> Vec<(HostId, HostId, PairStats)> {
        self.pairs
            .iter()
            .map(|(pair, state)| (state.hosts.0, state.hosts.1, pair_stats_of(pair, state)))
            .collect()
    }

    /// `host` is back on a new connection at `now` (a resume): a punch ordered or failed
    /// while its connection was down (its side could not answer, and the server may not
    /// have known it was gone yet) must not hold its pairs on the relay for the back-off
    /// of a real failure (60 s and more). Each of its pairs with a punch under way, or on
    /// the relay with a retry scheduled later than [`PunchConfig::after_direct_lost`] from
    /// now, retries then instead, the wait after a lost direct path.
    pub(super) fn hasten_punches_after_resume(&mut self, host: HostId, now: Instant) {
        let at = now + self.config.punch.after_direct_lost;
        for pair in self.pairs.of_host(host) {
            let Some(state) = self.pairs.get_mut(pair) else {
                continue;
            };
            match state.punch.stage {
                // Far off, or due while it was offline (skipped then).
                punch::Stage::Relay {
                    retry_at: Some(scheduled),
                } if scheduled > at || scheduled <= now => {
                    self.timers.remove(&(scheduled, Timer::PunchRetry(pair)));
                }
                // An attempt ordered while it was away: its side missed the moment (the
                // order may yet be replayed to it, but the peer has given up), so the
                // attempt is dropped, its late reports ignored, and not counted a failure.
                punch::Stage::Punching { .. } => {}
                _ => continue,
            }
            state.punch.stage = punch::Stage::Relay { retry_at: Some(at) };
            self.timers.insert((at, Timer::PunchRetry(pair)));
        }
    }

    /// Orders both sides of `pair` to punch, if the policy allows it now.
    pub(super) fn maybe_punch(&mut self, pair: PairId, now: Instant) {
        let config = self.config.punch;
        let Some(state) = self.pairs.get_mut(pair) else {
            return;
        };
        let due = match state.punch.stage {
            punch::Stage::Relay { retry_at } => retry_at.is_none_or(|at| at <= now),
            _ => false,
        };
        let wanted = config.start == PunchStart::Always || state.talked;
        if !due || !wanted || state.direct_groups == 0 || !state.punch.may_attempt(&config) {
            return;
        }
        // A young pair waits until it is old enough; one that ends first never punches.
        let old_enough_at = state.started + config.min_pair_age;
        if now < old_enough_at {
            state.punch.stage = punch::Stage::Relay {
                retry_at: Some(old_enough_at),
            };
            self.timers.insert((old_enough_at, Timer::PunchRetry(pair)));
            return;
        }
        let (a, b) = state.hosts;
        let relay_only = |host| self.hosts.get(host_key(host)).is_none_or(|h| h.relay_only);
        // A host without UDP (WebSocket) cannot punch: its pairs stay on the relay.
        if relay_only(a) || relay_only(b) {
            return;
        }
        // An offline host cannot take its order; its resume schedules the punch again
        // (`hasten_punches_after_resume`).
        if self.is_offline(a) || self.is_offline(b) {
            return;
        }
        // Both hosts must have an order left in their budget; otherwise the punch waits
        // until both do (a host that drew many orders slows only punches that involve it).
        let mut wait = None;
        for host in [a, b] {
            if let Some(h) = self.hosts.get_mut(host_key(host)) {
                let budget = h.punch_budget.get_or_insert_with(|| {
                    TokenBucket::with_interval(config.order_burst, config.order_refill, now)
                });
                wait = wait.max(budget.ready_at(now));
            }
        }
        if let Some(at) = wait {
            if let Some(state) = self.pairs.get_mut(pair) {
                state.punch.stage = punch::Stage::Relay { retry_at: Some(at) };
            }
            self.counters.punch_orders_deferred += 1;
            self.timers.insert((at, Timer::PunchRetry(pair)));
            return;
        }
        let Some((candidates_of_a, candidates_of_b)) = self.punch_candidates(a, b) else {
            return;
        };
        let attempt = self
            .pairs
            .get_mut(pair)
            .map_or(0, |s| s.punch.begin_attempt());
        for host in [a, b] {
            if let Some(h) = self.hosts.get_mut(host_key(host)) {
                h.punch.orders += 1;
                if let Some(budget) = &mut h.punch_budget {
                    // There is one: `ready_at` said so above, under the same `now`.
                    budget.take(1, now);
                }
            }
        }
        self.counters.punch_attempts += 1;
        self.actions.push_back(Action::Punch {
            pair,
            attempt,
            controlling: a,
            controlled: b,
            candidates_of_controlling: candidates_of_a,
            candidates_of_controlled: candidates_of_b,
        });
    }
}

impl Registry {
    /// The candidates a punch between `a` and `b` hands each side about the other (`a`'s
    /// first): its server-reflexive address and, only when both are behind the same
    /// public address, its host candidates. `None` if either host is unknown.
    pub fn punch_candidates(
        &self,
        a: HostId,
        b: HostId,
    ) -> Option<(Vec<SocketAddr>, Vec<SocketAddr>)> {
        let (host_a, host_b) = (self.hosts.get(host_key(a))?, self.hosts.get(host_key(b))?);
        // Host candidates only help behind the same NAT (the same public address), where
        // they avoid hairpinning; elsewhere they point into another private network.
        let same_nat = host_a.server_reflexive.ip() == host_b.server_reflexive.ip();
        let candidates = |h: &HostState| {
            let mut out = vec![h.server_reflexive];
            if same_nat {
                out.extend(
                    h.host_candidates
                        .iter()
                        .copied()
                        .filter(|c| *c != h.server_reflexive),
                );
            }
            out
        };
        Some((candidates(host_a), candidates(host_b)))
    }
}

fn pair_stats_of(pair: PairId, state: &super::pairs::Pair) -> PairStats {
    PairStats {
        pair,
        shared_groups: state.shared_groups,
        path: state.punch.path(),
        relayed: state.relayed,
        relayed_bytes: state.relayed_bytes,
        punch_attempts: state.punch.attempts,
        recent_rtt: state.link.and_then(|l| l.rtt),
        last_rtt: state.link.and_then(|l| l.last_rtt),
        loss: state.link.and_then(|l| l.loss),
    }
}
