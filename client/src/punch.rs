//! One punch attempt towards one peer, as a sans-IO state machine.
//!
//! The server's order gives the peer's candidates, a fresh secret and a start delay.
//! From the start time, requests go to every candidate: every 50 ms at first, backing off
//! by half again each round up to 500 ms, for a window of 5 s. Requests are answered from
//! any source. A candidate is validated once this side has both heard a request from it
//! (the peer's packets reach us from there) and had a response from it (ours reach the
//! peer there). A request from an address the order did not list makes it a
//! peer-reflexive candidate (RFC 8445 section 7.3.1.3). Every probe carries a MAC keyed
//! by the secret; anything without a valid one, of another pair or attempt, or reflected
//! back from our own side, is ignored.

use peergroup_protocol::{PairId, Probe, ProbeKind, PunchOrder, PROBE_MAC_LEN};
use ring::hmac;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Probe timing. Plain data with documented defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PunchTiming {
    /// First interval between probe rounds. Default 50 ms.
    pub first_interval: Duration,
    /// Longest interval between rounds. Default 500 ms.
    pub max_interval: Duration,
    /// How long an attempt probes before it fails. Default 5 s.
    pub window: Duration,
}

impl Default for PunchTiming {
    fn default() -> Self {
        Self {
            first_interval: Duration::from_millis(50),
            max_interval: Duration::from_millis(500),
            window: Duration::from_secs(5),
        }
    }
}

/// Most peer-reflexive candidates one attempt learns; more are ignored.
const MAX_LEARNED_CANDIDATES: usize = 8;
/// Outstanding request nonces kept; the oldest are forgotten first.
const MAX_NONCES: usize = 256;

/// Where a candidate came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CandidateKind {
    /// Listed in the order (server-reflexive or host).
    Given,
    /// Learned from a valid request's source address.
    PeerReflexive,
}

#[derive(Debug, Clone)]
struct Candidate {
    addr: SocketAddr,
    kind: CandidateKind,
    heard_request: bool,
    got_response: bool,
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PunchResult {
    /// This candidate works both ways.
    Validated(SocketAddr),
    /// No candidate validated within the window.
    TimedOut,
}

/// One punch attempt.
pub(crate) struct PunchSession {
    pair: PairId,
    attempt: u32,
    controlling: bool,
    key: hmac::Key,
    candidates: Vec<Candidate>,
    timing: PunchTiming,
    deadline: Instant,
    next_round_at: Instant,
    interval: Duration,
    next_nonce: u64,
    nonces: HashMap<u64, SocketAddr>,
    nonce_order: VecDeque<u64>,
    outbound: VecDeque<(SocketAddr, Vec<u8>)>,
    result: Option<PunchResult>,
}

impl std::fmt::Debug for PunchSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PunchSession")
            .field("pair", &self.pair)
            .field("attempt", &self.attempt)
            .field("result", &self.result)
            .finish_non_exhaustive()
    }
}

impl PunchSession {
    /// Starts an attempt from an order received at `now`. Candidates of another address
    /// family than `local` cannot be reached from our socket and are left out.
    /// `nonce_seed` should be random, so nonces are not guessable.
    pub fn new(
        order: &PunchOrder,
        local: SocketAddr,
        timing: PunchTiming,
        now: Instant,
        nonce_seed: u64,
    ) -> Self {
        let start_at = now + Duration::from_millis(u64::from(order.start_in_ms));
        let candidates = order
            .candidates
            .iter()
            .filter(|c| c.is_ipv4() == local.is_ipv4())
            .map(|&addr| Candidate {
                addr,
                kind: CandidateKind::Given,
                heard_request: false,
                got_response: false,
            })
            .collect();
        Self {
            pair: order.pair,
            attempt: order.attempt,
            controlling: order.controlling,
            key: hmac::Key::new(hmac::HMAC_SHA256, &order.secret),
            candidates,
            timing,
            deadline: start_at + timing.window,
            next_round_at: start_at,
            interval: timing.first_interval,
            next_nonce: nonce_seed,
            nonces: HashMap::new(),
            nonce_order: VecDeque::new(),
            outbound: VecDeque::new(),
            result: None,
        }
    }

    /// Whether this side opens the QUIC connection.
    pub fn controlling(&self) -> bool {
        self.controlling
    }

    /// How the attempt ended, once it has.
    pub fn result(&self) -> Option<PunchResult> {
        self.result
    }

    /// When [`PunchSession::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Instant {
        match self.result {
            None => self.next_round_at.min(self.deadline),
            // Keep probing while the QUIC handshake runs: it holds the mappings open
            // and lets the peer validate too.
            Some(_) => self.next_round_at,
        }
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.outbound.pop_front()
    }

    /// Sends a round of requests if one is due, and fails the attempt past the window.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.result.is_none() && now >= self.deadline {
            self.result = Some(PunchResult::TimedOut);
            return;
        }
        if now < self.next_round_at {
            return;
        }
        for i in 0..self.candidates.len() {
            let to = self.candidates[i].addr;
            self.send_request(to);
        }
        self.next_round_at = now + self.interval;
        self.interval = (self.interval * 3 / 2).min(self.timing.max_interval);
    }

    /// Takes a probe datagram that arrived from `from`. Returns whether it belonged to
    /// this attempt and was authentic.
    pub fn handle_probe(&mut self, from: SocketAddr, datagram: &[u8], now: Instant) -> bool {
        let Ok((probe, signed, mac)) = Probe::decode(datagram) else {
            return false;
        };
        if probe.pair != self.pair
            || probe.attempt != self.attempt
            || probe.from_controlling == self.controlling
            || !constant_time_eq(&self.mac(signed), mac)
        {
            return false;
        }
        match probe.kind {
            ProbeKind::Request => {
                let response = Probe {
                    kind: ProbeKind::Response { observed: from },
                    pair: self.pair,
                    attempt: self.attempt,
                    nonce: probe.nonce,
                    from_controlling: self.controlling,
                };
                let bytes = response.encode(|b| self.mac(b));
                self.outbound.push_back((from, bytes));
                if let Some(index) = self.candidate_index(from, true) {
                    let learned = self.candidates[index].kind == CandidateKind::PeerReflexive
                        && !self.candidates[index].heard_request;
                    self.candidates[index].heard_request = true;
                    if learned && now < self.deadline {
                        // Probe the new candidate at once rather than at the next round.
                        self.send_request(from);
                    }
                }
            }
            ProbeKind::Response { .. } => {
                if self.nonces.get(&probe.nonce) != Some(&from) {
                    return false;
                }
                if let Some(index) = self.candidate_index(from, false) {
                    self.candidates[index].got_response = true;
                }
            }
        }
        if self.result.is_none() {
            if let Some(c) = self
                .candidates
                .iter()
                .find(|c| c.heard_request && c.got_response)
            {
                self.result = Some(PunchResult::Validated(c.addr));
            }
        }
        true
    }

    fn candidate_index(&mut self, addr: SocketAddr, may_learn: bool) -> Option<usize> {
        if let Some(i) = self.candidates.iter().position(|c| c.addr == addr) {
            return Some(i);
        }
        let learned = self
            .candidates
            .iter()
            .filter(|c| c.kind == CandidateKind::PeerReflexive)
            .count();
        if !may_learn || learned >= MAX_LEARNED_CANDIDATES {
            return None;
        }
        self.candidates.push(Candidate {
            addr,
            kind: CandidateKind::PeerReflexive,
            heard_request: false,
            got_response: false,
        });
        Some(self.candidates.len() - 1)
    }

    fn send_request(&mut self, to: SocketAddr) {
        let nonce = self.next_nonce;
        self.next_nonce = self.next_nonce.wrapping_add(0x9E37_79B9_7F4A_7C15);
        self.nonces.insert(nonce, to);
        self.nonce_order.push_back(nonce);
        if self.nonce_order.len() > MAX_NONCES {
            if let Some(old) = self.nonce_order.pop_front() {
                self.nonces.remove(&old);
            }
        }
        let request = Probe {
            kind: ProbeKind::Request,
            pair: self.pair,
            attempt: self.attempt,
            nonce,
            from_controlling: self.controlling,
        };
        let bytes = request.encode(|b| self.mac(b));
        self.outbound.push_back((to, bytes));
    }

    fn mac(&self, signed: &[u8]) -> [u8; PROBE_MAC_LEN] {
        let tag = hmac::sign(&self.key, signed);
        let mut out = [0u8; PROBE_MAC_LEN];
        out.copy_from_slice(&tag.as_ref()[..PROBE_MAC_LEN]);
        out
    }
}

/// Compares MACs without an early exit, so timing does not reveal how much matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests;
