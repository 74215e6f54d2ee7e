//! The sans-IO core of the server: hosts, groups, membership acks, pairs and relay rules.
//!
//! Inputs are `handle_*` calls and group operations, each given `now` (a client's frames and
//! datagrams through one call each, [`Registry::handle_frame`] and
//! [`Registry::handle_datagram`]); outputs are
//! [`Action`]s taken with [`Registry::poll_action`], and [`Registry::poll_timeout`] says
//! when [`Registry::handle_timeout`] is due. It reads no clock and touches no socket, so
//! its tests drive it with a made-up clock in microseconds (the quinn-proto pattern).
//!
//! # Layout
//! - `mod.rs`: hosts (connect, disconnect, host data), notices and their acks, timers.
//! - `app_send.rs`: the server application's messages to clients.
//! - `input.rs`: a client's frames and datagrams, each dispatched to its handler, and the
//!   protocol violations a frame is refused with.
//! - `groups.rs`: groups and membership: create, join, leave, destroy, batches, group data.
//! - `acks.rs`: which operation waits on which notice; cumulative acks.
//! - `relay.rs`: the relay rule and relaying.
//! - `pairs.rs`, `punch.rs`, `referee.rs`: pair state, the punch policy, and applying it.
//!
//! This module is public only for benchmarks and tests of the core itself; applications
//! use [`Server`](crate::Server).

mod acks;
mod action;
mod app_send;
mod groups;
mod input;
mod pairs;
mod punch;
mod referee;
mod relay;
mod resume;

pub use acks::AckBeyondSent;
pub use action::{Action, NoticeOrder};
pub use groups::{
    BatchError, ChangeOutcome, GroupInfo, GroupOptions, JoinOutcome, MembershipBatch,
    MembershipChange,
};
pub use input::ProtocolViolation;
pub use punch::{punch_start_delays, PunchConfig, PunchStart};
pub use referee::{PairStats, PunchStats};
#[cfg(any(test, feature = "unstable-registry"))]
pub use resume::{ResumeRefusal, Resumed};

use crate::error::GroupError;
use crate::events::{JoinAckError, LeaveAckError, ServerEvent};
use crate::metrics::{AckKind, RelayByDelivery};
use acks::{NoticeLog, Op, OpKey, OpKind, PendingAcks};
use bytes::Bytes;
use pairs::PairTable;
use peergroup_protocol::budget::TokenBucket;
use peergroup_protocol::{
    Fingerprint, GroupId, HostId, LaneCounters, Notice, PairId, ServerToClient,
};
use relay::RateMeter;
use slotmap::{Key, KeyData, SlotMap};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

slotmap::new_key_type! {
    struct HostKey;
    struct GroupKey;
}

/// Rules and limits of the registry. Plain data with documented defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegistryConfig {
    /// How long a join or leave may wait for its acks before it completes with a timeout
    /// ([`JoinAckError::Timeout`], [`LeaveAckError::Timeout`]). Default 15 s, as in
    /// ProudNet.
    pub ack_timeout: Duration,
    /// How long a pair outlives the last group its hosts shared. Default 10 s, as in
    /// ProudNet, so view-group churn keeps the pair.
    pub pair_linger: Duration,
    /// Hole-punching policy.
    pub punch: PunchConfig,
    /// Largest host data, bytes. Default 1 KiB: it rides on every join notice about the
    /// host.
    pub max_host_data_len: usize,
    /// Largest group data, bytes. Default 4 KiB.
    pub max_group_data_len: usize,
    /// Notices a client may leave unacknowledged before it is disconnected (a client that
    /// never acks would otherwise hold the server's bookkeeping for every notice it was
    /// sent). Default 65,536.
    pub max_unacked_notices: u64,
    /// Datagram deliveries one host may cause a second (one per destination, so one
    /// datagram to a group of 100 counts 100), with as many again at once; past it its
    /// datagrams are dropped and counted in [`RegistryCounters::datagrams_rate_limited`].
    /// Why: one datagram in used to make up to ~170 go out, with nothing to slow a
    /// sender. A game sending 30 times a second to 170 members uses 5,100. Default
    /// 16,384.
    pub datagram_deliveries_per_sec: u32,
    /// How long a host whose connection was lost without a leave is kept offline for a
    /// resume (see [`Registry::handle_offline`]); zero turns resume off, and a lost
    /// connection removes its host at once. Default 30 s.
    pub resume_window: Duration,
}

/// Most host candidates kept per client; more are ignored.
pub const MAX_HOST_CANDIDATES: usize = 16;

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            ack_timeout: Duration::from_secs(15),
            pair_linger: Duration::from_secs(10),
            punch: PunchConfig::default(),
            max_host_data_len: 1 << 10,
            max_group_data_len: 4 << 10,
            max_unacked_notices: 1 << 16,
            datagram_deliveries_per_sec: 16_384,
            resume_window: Duration::from_secs(30),
        }
    }
}

#[derive(Debug)]
struct HostState {
    identity: Fingerprint,
    groups: BTreeSet<GroupId>,
    /// The address the server sees: the host's server-reflexive candidate.
    server_reflexive: SocketAddr,
    /// The host's interface addresses on its socket's port.
    host_candidates: Vec<SocketAddr>,
    punch: PunchStats,
    /// Punch orders the host may still be sent now (`None`: a full budget, not yet used).
    punch_budget: Option<TokenBucket>,
    /// The newest sequenced datagram number given to the application, per channel, so
    /// an older one that arrives late is dropped (at most 256 entries).
    app_sequenced: BTreeMap<u8, u64>,
    /// What the application says about the host; peers see it on join notices.
    data: Bytes,
    /// Notices sent to the host and the acks operations wait for.
    notices: NoticeLog,
    /// Set once the host is being disconnected by the registry, so it is asked once.
    closing: bool,
    /// Its datagram deliveries ([`RegistryConfig::datagram_deliveries_per_sec`]), from
    /// its first datagram on.
    datagram_budget: Option<TokenBucket>,
    /// Numbers the server application's messages to the host, per lane.
    app_lanes: LaneCounters,
    /// Its token, whether it is offline, and the frames read from it (`resume.rs`).
    resume: resume::HostResume,
    /// Connected over a carrier without UDP (WebSocket): its pairs are never ordered to
    /// punch and stay on the relay.
    relay_only: bool,
}

#[derive(Debug)]
struct GroupState {
    options: GroupOptions,
    /// Members, each with its membership number (see `Notice::MemberJoined`).
    members: BTreeMap<HostId, u32>,
    /// The next membership number: every join into the group gets a new one, so a
    /// membership is told apart from an earlier one of the same host.
    next_membership: u32,
    data: Bytes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Ack(OpKey),
    PairLinger(PairId),
    PunchRetry(PairId),
    /// A confirmation of the frames read from a host is due (`resume.rs`).
    Confirm(HostId),
    /// An offline host's resume window ends (`resume.rs`).
    ResumeWindow(HostId),
}

/// How a pending join or leave ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// Every host that was told acked.
    Acked,
    /// The member left before its join was acked.
    Left,
    Destroyed,
    Disconnected,
    Timeout,
}

/// Counters the registry keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegistryCounters {
    /// Relay destinations refused since start (one per refused destination).
    pub relay_refused: u64,
    /// Messages relayed since start (one per delivered destination).
    pub relayed: u64,
    /// Payload bytes relayed since start (counted per delivered destination).
    pub relayed_bytes: u64,
    /// Membership notices sent since start (one per notice, however they were framed).
    pub notices: u64,
    /// Messages and bytes relayed since start, by delivery mode.
    pub relayed_by_delivery: RelayByDelivery,
    /// Punch attempts ordered since start (one per pair and attempt).
    pub punch_attempts: u64,
    /// Pairs that moved to a direct path by punching, since start.
    pub punch_successes: u64,
    /// Datagrams dropped since start because their sender was past its delivery rate
    /// ([`RegistryConfig::datagram_deliveries_per_sec`]), or because a ping or pong named
    /// more than one destination.
    pub datagrams_rate_limited: u64,
    /// Host candidates dropped since start as unusable (unspecified, multicast, broadcast,
    /// loopback, port 0, another family, repeated, or past [`MAX_HOST_CANDIDATES`]).
    pub host_candidates_dropped: u64,
    /// Punches put off because a host had used up its order budget
    /// ([`PunchConfig::order_burst`]), since start.
    pub punch_orders_deferred: u64,
}

/// Ack latency samples kept between two [`Registry::take_ack_samples`] calls at most; the
/// server takes them after every operation, so only a registry driven without it (tests,
/// benchmarks) reaches the cap, and then further samples are not kept.
const MAX_ACK_SAMPLES: usize = 4_096;

/// What the registry knows of one connected host, for the server's client listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSummary {
    /// The host.
    pub host: HostId,
    /// Its data.
    pub data: Bytes,
    /// Groups it is a member of, in id order.
    pub groups: Vec<GroupId>,
    /// Its pairs whose traffic takes the direct path.
    pub direct_pairs: u32,
    /// Its pairs on the relay, lingering ones included.
    pub relayed_pairs: u32,
    /// Membership notices sent to it so far (each entry of a `Notices` frame counts one).
    pub notices_sent: u64,
    /// Of those, how many it has acknowledged (its latest cumulative ack).
    pub notices_acked: u64,
}

/// Hosts, groups, membership acks and pairs: everything the server holds, with no IO.
#[derive(Debug)]
pub struct Registry {
    config: RegistryConfig,
    hosts: SlotMap<HostKey, HostState>,
    groups: SlotMap<GroupKey, GroupState>,
    pairs: PairTable,
    acks: PendingAcks,
    timers: BTreeSet<(Instant, Timer)>,
    actions: VecDeque<Action>,
    counters: RegistryCounters,
    relay_rate: RateMeter,
    /// Joins and leaves completed by their acks since the last
    /// [`Registry::take_ack_samples`], with when each started (the registry reads no
    /// clock, and an ack carries no time, so the driver measures the latency).
    ack_samples: Vec<(AckKind, Instant)>,
    /// The origin of the server clock clients synchronise to: a clock request is
    /// answered with the time since it.
    epoch: Instant,
}

fn host_id(key: HostKey) -> HostId {
    HostId::from_raw(key.data().as_ffi())
}

/// The slot a client id names. `None` for [`HostId::SERVER`] and for raw values slotmap
/// would read as a live key's alias (an even version): every id has one spelling.
fn host_key(id: HostId) -> HostKey {
    canonical_key(id.raw()).into()
}

fn group_id(key: GroupKey) -> GroupId {
    GroupId::from_raw(key.data().as_ffi())
}

fn group_key(id: GroupId) -> GroupKey {
    canonical_key(id.raw()).into()
}

/// Slotmap versions of live keys are odd and `KeyData::from_ffi` sets the low bit, so the
/// raw values `2k` and `2k + 1` would name the same slot. Only the value slotmap itself
/// hands out is accepted; any other names nothing (the null key).
pub(super) fn canonical_key(raw: u64) -> KeyData {
    let key = KeyData::from_ffi(raw);
    if key.as_ffi() == raw {
        key
    } else {
        KeyData::default()
    }
}

/// Whether a host candidate names an address one of the host's interfaces could have, on
/// a port, of the family the host reached the server with: not unspecified, multicast or
/// broadcast, and not loopback unless the host reached the server over loopback itself (a
/// peer would otherwise probe its own machine).
pub fn usable_host_candidate(addr: SocketAddr, server_reflexive: SocketAddr) -> bool {
    let ip = addr.ip();
    let broadcast = matches!(ip, std::net::IpAddr::V4(v4) if v4.is_broadcast());
    addr.port() != 0
        && ip.is_ipv4() == server_reflexive.is_ipv4()
        && !ip.is_unspecified()
        && !ip.is_multicast()
        && !broadcast
        && (!ip.is_loopback() || server_reflexive.ip().is_loopback())
}

impl Registry {
    /// An empty registry whose clock, the one clients synchronise to, starts at `epoch`
    /// (see [`Registry::handle_frame`]).
    pub fn new(config: RegistryConfig, epoch: Instant) -> Self {
        Self {
            config,
            hosts: SlotMap::with_key(),
            groups: SlotMap::with_key(),
            pairs: PairTable::default(),
            acks: PendingAcks::default(),
            timers: BTreeSet::new(),
            actions: VecDeque::new(),
            counters: RegistryCounters::default(),
            relay_rate: RateMeter::default(),
            ack_samples: Vec::new(),
            epoch,
        }
    }

    /// The rules and limits it was made with.
    #[cfg(any(test, feature = "unstable-registry"))]
    pub fn config(&self) -> &RegistryConfig {
        &self.config
    }

    // ---- outputs -------------------------------------------------------------------------

    /// The next action to carry out, in order.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Registry::handle_timeout`] should next be called, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|(at, _)| *at)
    }

    /// Counters since start.
    pub fn counters(&self) -> RegistryCounters {
        self.counters
    }

    /// Payload bytes relayed in the last whole second before `now`.
    pub fn relay_bytes_per_sec(&mut self, now: Instant) -> u64 {
        self.relay_rate.rate(now)
    }

    /// Pairs on the direct path and pairs on the relay, in that order.
    pub fn pair_paths(&self) -> (usize, usize) {
        self.pairs.count_paths()
    }

    /// Joins and leaves waiting for acks.
    pub fn pending_acks(&self) -> usize {
        self.acks.len()
    }

    /// Hands each join and leave completed by its acks since the last call to `sample`,
    /// with when it started, and forgets them.
    pub(crate) fn take_ack_samples(&mut self, mut sample: impl FnMut(AckKind, Instant)) {
        for (kind, started) in self.ack_samples.drain(..) {
            sample(kind, started);
        }
    }

    // ---- hosts ---------------------------------------------------------------------------

    /// Registers an authenticated client, seen at `server_reflexive`, with its initial
    /// host `data` (what the auth hook returned; the caller checks it against
    /// [`RegistryConfig::max_host_data_len`]), and gives it its id.
    pub fn handle_connect(
        &mut self,
        identity: Fingerprint,
        server_reflexive: SocketAddr,
        data: Bytes,
    ) -> HostId {
        host_id(self.hosts.insert(HostState {
            identity,
            groups: BTreeSet::new(),
            server_reflexive,
            host_candidates: Vec::new(),
            punch: PunchStats::default(),
            punch_budget: None,
            app_sequenced: BTreeMap::new(),
            data,
            notices: NoticeLog::default(),
            closing: false,
            datagram_budget: None,
            app_lanes: LaneCounters::default(),
            resume: resume::HostResume::default(),
            relay_only: false,
        }))
    }

    /// Whether `host` can only use the relay: a client on WebSocket has no UDP to punch
    /// with, so its pairs are never ordered to (issue 14). Set at login and on each
    /// resume (the carrier may change); a pair that skipped punching for it punches at its
    /// next occasion once both hosts may.
    pub fn set_relay_only(&mut self, host: HostId, relay_only: bool) {
        if let Some(state) = self.hosts.get_mut(host_key(host)) {
            state.relay_only = relay_only;
        }
    }

    /// The address the server now sees `host` at, when its connection moved there
    /// (QUIC connection migration: its NAT gave it a new mapping, or it changed
    /// networks). It becomes the host's server-reflexive candidate for the punches ordered
    /// from now on; the candidates of one ordered before are not changed. Returns whether
    /// the address differed from the one known.
    pub fn handle_address_change(&mut self, host: HostId, addr: SocketAddr) -> bool {
        let Some(state) = self.hosts.get_mut(host_key(host)) else {
            return false;
        };
        if state.server_reflexive == addr {
            return false;
        }
        state.server_reflexive = addr;
        true
    }

    /// Records a client's host candidates (at most [`MAX_HOST_CANDIDATES`]). Peers behind
    /// the same public address are told to probe them, so only addresses a host could
    /// hold are kept (see [`usable_host_candidate`]); the rest are dropped and counted.
    fn handle_host_candidates(&mut self, host: HostId, addrs: Vec<SocketAddr>) {
        let Some(state) = self.hosts.get_mut(host_key(host)) else {
            return;
        };
        let reflexive = state.server_reflexive;
        let mut kept: Vec<SocketAddr> = Vec::with_capacity(addrs.len().min(MAX_HOST_CANDIDATES));
        let mut dropped = 0u64;
        for addr in addrs {
            if kept.len() == MAX_HOST_CANDIDATES {
                break;
            }
            if usable_host_candidate(addr, reflexive) && !kept.contains(&addr) {
                kept.push(addr);
            } else {
                dropped += 1;
            }
        }
        state.host_candidates = kept;
        self.counters.host_candidates_dropped += dropped;
    }

    /// Removes a client. Its own pending joins and leaves end with `Disconnected`, it
    /// owes no acks any more, it leaves every group (the remaining members are told, and
    /// each of those leaves completes once they ack) and its pairs end at once.
    pub fn handle_disconnect(&mut self, host: HostId, now: Instant) {
        let Some(state) = self.hosts.get_mut(host_key(host)) else {
            return;
        };
        let groups: Vec<GroupId> = state.groups.iter().copied().collect();
        let mut owed = std::mem::take(&mut state.notices);
        for op in self.acks.of_member(host) {
            if let Some(op) = self.acks.remove(op) {
                self.finish(op, Ending::Disconnected);
            }
        }
        let mut completed = Vec::new();
        self.acks.forget_host(&mut owed, &mut completed);
        self.finish_all(completed);
        for group in groups {
            self.remove_member(group, host, groups::LeaveCause::Disconnected, now);
        }
        for pair in self.pairs.of_host(host) {
            if let Some((a, b)) = self.pairs.remove(pair) {
                let other = if a == host { b } else { a };
                self.send(other, ServerToClient::PeerDown { peer: host, pair });
            }
        }
        self.hosts.remove(host_key(host));
    }

    /// Records that `host` has taken in its first `notices` notices (a cumulative ack);
    /// every join and leave this completes is reported.
    ///
    /// # Errors
    /// [`AckBeyondSent`] when it acks more notices than it was sent: a protocol
    /// violation (nothing changes).
    fn handle_ack(&mut self, host: HostId, notices: u64) -> Result<(), AckBeyondSent> {
        let Some(state) = self.hosts.get_mut(host_key(host)) else {
            return Ok(());
        };
        let mut completed = Vec::new();
        self.acks.ack(&mut state.notices, notices, &mut completed)?;
        self.finish_all(completed);
        Ok(())
    }

    /// Whether `host` is a connected client.
    pub fn is_connected(&self, host: HostId) -> bool {
        self.hosts.contains_key(host_key(host))
    }

    /// Connected clients.
    pub fn host_count(&self) -> usize {
        self.hosts.len()
    }

    /// Pairs, lingering ones included.
    pub fn pair_count(&self) -> usize {
        self.pairs.len()
    }

    /// The pair between two clients, if any, and how many groups they share now.
    #[cfg(any(test, feature = "unstable-registry"))]
    pub fn pair_between(&self, a: HostId, b: HostId) -> Option<(PairId, u32)> {
        self.pairs
            .between(a, b)
            .map(|(id, p)| (id, p.shared_groups))
    }

    /// Sets `host`'s data. The host and every host that shares a group with it are told
    /// ([`Notice::HostData`]); hosts that share a group with it later see it on their join
    /// notices.
    ///
    /// # Errors
    /// [`GroupError::UnknownHost`], or [`GroupError::DataTooLarge`] over
    /// [`RegistryConfig::max_host_data_len`]; nothing changes then.
    pub fn set_host_data(&mut self, host: HostId, data: Bytes) -> Result<(), GroupError> {
        let max = self.config.max_host_data_len;
        if data.len() > max {
            return Err(GroupError::DataTooLarge {
                len: data.len(),
                max,
            });
        }
        let state = self
            .hosts
            .get_mut(host_key(host))
            .ok_or(GroupError::UnknownHost(host))?;
        state.data = data.clone();
        let notice = || Notice::HostData {
            host,
            data: data.clone(),
        };
        self.notify(host, notice(), NoticeOrder::AheadOfMessages, None);
        for peer in self.pairs.sharing_a_group_with(host) {
            self.notify(peer, notice(), NoticeOrder::AheadOfMessages, None);
        }
        Ok(())
    }

    /// A host's data.
    #[cfg(any(test, feature = "unstable-registry"))]
    pub fn host_data(&self, host: HostId) -> Option<Bytes> {
        self.hosts.get(host_key(host)).map(|h| h.data.clone())
    }

    /// What the registry knows of a connected host; `None` if it is not connected.
    pub fn host_summary(&self, host: HostId) -> Option<HostSummary> {
        let state = self.hosts.get(host_key(host))?;
        let (direct_pairs, relayed_pairs) = self.pairs.count_paths_of(host);
        Some(HostSummary {
            host,
            data: state.data.clone(),
            groups: state.groups.iter().copied().collect(),
            direct_pairs,
            relayed_pairs,
            notices_sent: state.notices.sent(),
            notices_acked: state.notices.acked(),
        })
    }

    /// Every connected host, in slot order.
    pub fn hosts(&self) -> Vec<HostId> {
        self.hosts.keys().map(host_id).collect()
    }

    // ---- time ----------------------------------------------------------------------------

    /// Ends what is due at `now`: joins and leaves whose acks timed out, pairs whose linger
    /// ran out, punch retries.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(at, timer)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            match timer {
                Timer::Ack(op) => {
                    if let Some(op) = self.acks.expire(op, now) {
                        self.finish(op, Ending::Timeout);
                    }
                }
                Timer::PunchRetry(pair) => self.maybe_punch(pair, now),
                Timer::Confirm(host) => self.confirm_uploads(host, now),
                Timer::ResumeWindow(host) => self.end_window(host, now),
                Timer::PairLinger(pair) => {
                    if let Some((a, b)) = self.pairs.expire(pair, now) {
                        self.send(a, ServerToClient::PeerDown { peer: b, pair });
                        self.send(b, ServerToClient::PeerDown { peer: a, pair });
                    }
                }
            }
        }
    }

    // ---- internals -----------------------------------------------------------------------

    /// Starts a join or leave that completes when every notice owed to it is acked (see
    /// [`Registry::notify`]), or at its deadline.
    fn start_op(&mut self, kind: OpKind, group: GroupId, member: HostId, now: Instant) -> OpKey {
        let deadline = now + self.config.ack_timeout;
        let op = self.acks.start(kind, group, member, deadline);
        self.timers.insert((deadline, Timer::Ack(op)));
        op
    }

    /// Completes `op` at once if no host was told (nothing to wait for).
    fn settle_if_untold(&mut self, op: OpKey) {
        if !self.acks.is_waiting(op) {
            if let Some(op) = self.acks.remove(op) {
                self.finish(op, Ending::Acked);
            }
        }
    }

    /// Sends `to` one notice, numbered in its notice log; `op`, if any, waits for its ack.
    /// A host past [`RegistryConfig::max_unacked_notices`] is disconnected.
    fn notify(&mut self, to: HostId, notice: Notice, order: NoticeOrder, op: Option<OpKey>) {
        let Some(host) = self.hosts.get_mut(host_key(to)) else {
            return;
        };
        let number = host.notices.next();
        if let Some(op) = op {
            self.acks.owe(op, &mut host.notices, number);
        }
        let overdue = !host.closing && host.notices.unacked() > self.config.max_unacked_notices;
        host.closing |= overdue;
        self.counters.notices += 1;
        self.actions.push_back(Action::Notice { to, notice, order });
        if overdue {
            self.actions.push_back(Action::Disconnect {
                host: to,
                reason: "too many membership notices left unacknowledged",
            });
        }
    }

    fn finish_all(&mut self, completed: Vec<Op>) {
        for op in completed {
            self.finish(op, Ending::Acked);
        }
    }

    /// Reports how a join or leave ended.
    fn finish(&mut self, op: Op, ending: Ending) {
        let (group, member) = (op.group, op.member);
        if ending == Ending::Acked && self.ack_samples.len() < MAX_ACK_SAMPLES {
            let kind = match op.kind {
                OpKind::Join => AckKind::Join,
                OpKind::Leave => AckKind::Leave,
            };
            // Every operation's deadline is its start plus the ack timeout.
            let started = op.deadline.checked_sub(self.config.ack_timeout);
            if let Some(started) = started {
                self.ack_samples.push((kind, started));
            }
        }
        let event = match op.kind {
            OpKind::Join => ServerEvent::JoinAckComplete {
                group,
                member,
                result: match ending {
                    Ending::Acked => Ok(()),
                    Ending::Left => Err(JoinAckError::MemberLeft),
                    Ending::Destroyed => Err(JoinAckError::GroupDestroyed),
                    Ending::Disconnected => Err(JoinAckError::Disconnected),
                    Ending::Timeout => Err(JoinAckError::Timeout),
                },
            },
            OpKind::Leave => ServerEvent::LeaveAckComplete {
                group,
                member,
                result: match ending {
                    // A leave ends only by acks or what overrides them.
                    Ending::Acked | Ending::Left => Ok(()),
                    Ending::Destroyed => Err(LeaveAckError::GroupDestroyed),
                    Ending::Disconnected => Err(LeaveAckError::Disconnected),
                    Ending::Timeout => Err(LeaveAckError::Timeout),
                },
            },
        };
        self.event(event);
    }

    fn send(&mut self, to: HostId, message: ServerToClient) {
        self.actions.push_back(Action::Send { to, message });
    }

    fn event(&mut self, event: ServerEvent) {
        self.actions.push_back(Action::Event(event));
    }
}

#[cfg(test)]
mod tests;
