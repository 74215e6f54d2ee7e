//! The sans-IO core of the server: hosts, groups, join acks, pairs and relay rules.
//!
//! Inputs are `handle_*` calls and group operations, each given `now`; outputs are
//! [`Action`]s taken with [`Registry::poll_action`], and [`Registry::poll_timeout`] says
//! when [`Registry::handle_timeout`] is due. It reads no clock and touches no socket, so
//! its tests drive it with a made-up clock in microseconds (the quinn-proto pattern).

mod action;
mod join_acks;
mod pairs;
mod punch;

pub use action::Action;
pub use punch::{punch_start_delays, PunchConfig, PunchStart};

use crate::error::GroupError;
use crate::events::{JoinAckError, ServerEvent};
use bytes::Bytes;
use join_acks::PendingJoins;
use pairs::{PairChange, PairTable};
use peergroup_protocol::{
    DatagramLane, Delivery, Fingerprint, GroupId, HostId, Lane, PairId, PairPath, PathReason,
    PeerInfo, Priority, PunchOutcome, RefuseReason, RelayDest, ServerDatagram, ServerToClient,
};
use punch::Verdict;
use slotmap::{Key, KeyData, SlotMap};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

slotmap::new_key_type! {
    struct HostKey;
    struct GroupKey;
}

/// Timing rules of the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegistryConfig {
    /// How long a join may wait for its acks before it completes with
    /// [`JoinAckError::Timeout`]. Default 15 s, as in ProudNet.
    pub join_ack_timeout: Duration,
    /// How long a pair outlives the last group its hosts shared. Default 10 s, as in
    /// ProudNet, so view-group churn keeps the pair.
    pub pair_linger: Duration,
    /// Hole-punching policy.
    pub punch: PunchConfig,
}

/// Most host candidates kept per client; more are ignored.
pub const MAX_HOST_CANDIDATES: usize = 16;

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            join_ack_timeout: Duration::from_secs(15),
            pair_linger: Duration::from_secs(10),
            punch: PunchConfig::default(),
        }
    }
}

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

/// How a group behaves. Plain data with documented defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupOptions {
    /// Keep the group when its last member leaves. Default `true` (ProudNet's
    /// `AllowEmptyP2PGroup`); when `false` the group is removed with
    /// [`ServerEvent::GroupRemoved`] as it empties.
    pub allow_empty: bool,
    /// Let members go direct with each other. Default `true`; `false` keeps the group
    /// relay-only.
    pub direct_p2p: bool,
    /// Make the server application a member: it receives the group's messages and members
    /// see it as member [`HostId::SERVER`]. Default `false`.
    pub server_is_member: bool,
}

impl Default for GroupOptions {
    fn default() -> Self {
        Self {
            allow_empty: true,
            direct_p2p: true,
            server_is_member: false,
        }
    }
}

/// The result of a join that was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinOutcome {
    /// The host is now a member; notices went out and acks are awaited.
    Joined,
    /// The host already was a member. Not a failure; nothing was sent.
    AlreadyMember,
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
    /// The newest sequenced datagram number given to the application, per channel, so
    /// an older one that arrives late is dropped (at most 256 entries).
    app_sequenced: BTreeMap<u8, u64>,
}

#[derive(Debug)]
struct GroupState {
    options: GroupOptions,
    members: BTreeSet<HostId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    JoinAck(GroupId, HostId),
    PairLinger(PairId),
    PunchRetry(PairId),
}

/// Why a member is leaving; decides who is told and how a pending join ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LeaveCause {
    Left,
    Destroyed,
    Disconnected,
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
}

/// Relay bytes per second, over whole one-second windows.
#[derive(Debug, Clone, Copy, Default)]
struct RateMeter {
    window_start: Option<Instant>,
    in_window: u64,
    last_window: u64,
}

impl RateMeter {
    const WINDOW: Duration = Duration::from_secs(1);

    fn add(&mut self, bytes: u64, now: Instant) {
        self.roll(now);
        self.in_window += bytes;
    }

    /// Starts new windows as time passes; a silent window counts as zero.
    fn roll(&mut self, now: Instant) {
        let start = *self.window_start.get_or_insert(now);
        let elapsed = now.saturating_duration_since(start);
        if elapsed < Self::WINDOW {
            return;
        }
        self.last_window = if elapsed < 2 * Self::WINDOW {
            self.in_window
        } else {
            0
        };
        self.in_window = 0;
        let whole = elapsed.as_nanos() / Self::WINDOW.as_nanos();
        self.window_start = Some(start + Self::WINDOW * whole.min(u128::from(u32::MAX)) as u32);
    }

    /// Bytes in the last complete window.
    fn rate(&mut self, now: Instant) -> u64 {
        self.roll(now);
        self.last_window
    }
}

/// Hosts, groups, join acks and pairs: everything the server holds, with no IO.
#[derive(Debug)]
pub struct Registry {
    config: RegistryConfig,
    hosts: SlotMap<HostKey, HostState>,
    groups: SlotMap<GroupKey, GroupState>,
    pairs: PairTable,
    joins: PendingJoins,
    timers: BTreeSet<(Instant, Timer)>,
    actions: VecDeque<Action>,
    counters: RegistryCounters,
    relay_rate: RateMeter,
}

fn host_id(key: HostKey) -> HostId {
    HostId::from_raw(key.data().as_ffi())
}

fn host_key(id: HostId) -> HostKey {
    KeyData::from_ffi(id.raw()).into()
}

fn group_id(key: GroupKey) -> GroupId {
    GroupId::from_raw(key.data().as_ffi())
}

fn group_key(id: GroupId) -> GroupKey {
    KeyData::from_ffi(id.raw()).into()
}

impl Registry {
    /// An empty registry.
    pub fn new(config: RegistryConfig) -> Self {
        Self {
            config,
            hosts: SlotMap::with_key(),
            groups: SlotMap::with_key(),
            pairs: PairTable::default(),
            joins: PendingJoins::default(),
            timers: BTreeSet::new(),
            actions: VecDeque::new(),
            counters: RegistryCounters::default(),
            relay_rate: RateMeter::default(),
        }
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

    // ---- hosts ---------------------------------------------------------------------------

    /// Registers an authenticated client, seen at `server_reflexive`, and gives it its id.
    pub fn handle_connect(
        &mut self,
        identity: Fingerprint,
        server_reflexive: SocketAddr,
    ) -> HostId {
        host_id(self.hosts.insert(HostState {
            identity,
            groups: BTreeSet::new(),
            server_reflexive,
            host_candidates: Vec::new(),
            punch: PunchStats::default(),
            app_sequenced: BTreeMap::new(),
        }))
    }

    /// Records a client's host candidates (at most [`MAX_HOST_CANDIDATES`]).
    pub fn handle_host_candidates(&mut self, host: HostId, mut addrs: Vec<SocketAddr>) {
        addrs.truncate(MAX_HOST_CANDIDATES);
        if let Some(state) = self.hosts.get_mut(host_key(host)) {
            state.host_candidates = addrs;
        }
    }

    /// Removes a client: it leaves every group (the others are told), its pending joins end
    /// with [`JoinAckError::Disconnected`] and its pairs end at once.
    pub fn handle_disconnect(&mut self, host: HostId, now: Instant) {
        let Some(state) = self.hosts.get(host_key(host)) else {
            return;
        };
        for group in state.groups.clone() {
            self.remove_member(group, host, LeaveCause::Disconnected, now);
        }
        for pair in self.pairs.of_host(host) {
            if let Some((a, b)) = self.pairs.remove(pair) {
                let other = if a == host { b } else { a };
                self.send(other, ServerToClient::PeerDown { peer: host, pair });
            }
        }
        self.hosts.remove(host_key(host));
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
    pub fn pair_between(&self, a: HostId, b: HostId) -> Option<(PairId, u32)> {
        self.pairs
            .between(a, b)
            .map(|(id, p)| (id, p.shared_groups))
    }

    // ---- groups --------------------------------------------------------------------------

    /// Creates a group and joins `members` to it in order, each with `join_message`.
    ///
    /// # Errors
    /// [`GroupError::UnknownHost`] if any member is not connected, and
    /// [`GroupError::EmptyNotAllowed`] for no members without `allow_empty`; nothing
    /// changes then.
    pub fn create_group(
        &mut self,
        members: &[HostId],
        options: GroupOptions,
        join_message: Bytes,
        now: Instant,
    ) -> Result<GroupId, GroupError> {
        if let Some(unknown) = members.iter().find(|h| !self.is_connected(**h)) {
            return Err(GroupError::UnknownHost(*unknown));
        }
        if members.is_empty() && !options.allow_empty {
            return Err(GroupError::EmptyNotAllowed);
        }
        let group = group_id(self.groups.insert(GroupState {
            options,
            members: BTreeSet::new(),
        }));
        for &member in members {
            self.join_group(group, member, join_message.clone(), now)?;
        }
        Ok(group)
    }

    /// Adds `host` to `group`. Every existing member is told of it, and the host is told
    /// of every member including itself (the server too, when it is a member); the join
    /// completes with [`ServerEvent::JoinAckComplete`] once all of them ack.
    ///
    /// # Errors
    /// [`GroupError::UnknownGroup`] or [`GroupError::UnknownHost`].
    pub fn join_group(
        &mut self,
        group: GroupId,
        host: HostId,
        join_message: Bytes,
        now: Instant,
    ) -> Result<JoinOutcome, GroupError> {
        let state = self
            .groups
            .get(group_key(group))
            .ok_or(GroupError::UnknownGroup(group))?;
        if !self.is_connected(host) {
            return Err(GroupError::UnknownHost(host));
        }
        if state.members.contains(&host) {
            return Ok(JoinOutcome::AlreadyMember);
        }
        let existing: Vec<HostId> = state.members.iter().copied().collect();
        let server_is_member = state.options.server_is_member;
        let direct = state.options.direct_p2p;
        let member_count = (existing.len() + 1 + usize::from(server_is_member)) as u32;

        self.groups[group_key(group)].members.insert(host);
        self.hosts[host_key(host)].groups.insert(group);
        let mut pairs = Vec::with_capacity(existing.len());
        for &other in &existing {
            match self.pairs.add_shared_group(host, other, direct) {
                PairChange::Started(pair) => {
                    self.announce_pair(pair, host, other);
                    pairs.push(pair);
                }
                PairChange::Kept(pair) => pairs.push(pair),
            }
        }

        let notice = |member: HostId| ServerToClient::MemberJoined {
            group,
            member,
            member_count,
            join_message: join_message.clone(),
        };
        for &other in &existing {
            self.send(other, notice(host));
        }
        if server_is_member {
            self.send(host, notice(HostId::SERVER));
        }
        for &other in &existing {
            self.send(host, notice(other));
        }
        // The joiner's notice about itself comes last, so its ack means it has read all.
        self.send(host, notice(host));

        let waiting_on: BTreeSet<HostId> = existing.iter().copied().chain([host]).collect();
        let deadline = now + self.config.join_ack_timeout;
        self.joins.start(group, host, waiting_on, deadline);
        self.timers.insert((deadline, Timer::JoinAck(group, host)));
        // Punch orders go after the notices, so each side already knows the peer.
        for pair in pairs {
            self.maybe_punch(pair, now);
        }
        Ok(JoinOutcome::Joined)
    }

    /// Removes `host` from `group`. Each remaining member is told, and the host is told of
    /// every member including itself. A group without `allow_empty` is removed as it
    /// empties.
    ///
    /// # Errors
    /// [`GroupError::UnknownGroup`] or [`GroupError::NotMember`].
    pub fn leave_group(
        &mut self,
        group: GroupId,
        host: HostId,
        now: Instant,
    ) -> Result<(), GroupError> {
        let state = self
            .groups
            .get(group_key(group))
            .ok_or(GroupError::UnknownGroup(group))?;
        if !state.members.contains(&host) {
            return Err(GroupError::NotMember { group, host });
        }
        self.remove_member(group, host, LeaveCause::Left, now);
        Ok(())
    }

    /// Ends a group: every member leaves, then [`ServerEvent::GroupRemoved`].
    ///
    /// # Errors
    /// [`GroupError::UnknownGroup`].
    pub fn destroy_group(&mut self, group: GroupId, now: Instant) -> Result<(), GroupError> {
        let state = self
            .groups
            .get(group_key(group))
            .ok_or(GroupError::UnknownGroup(group))?;
        let members: Vec<HostId> = state.members.iter().copied().collect();
        for member in members {
            self.remove_member(group, member, LeaveCause::Destroyed, now);
        }
        self.remove_group(group);
        Ok(())
    }

    /// Members of a group, with [`HostId::SERVER`] first when the server is a member.
    ///
    /// # Errors
    /// [`GroupError::UnknownGroup`].
    pub fn group_members(&self, group: GroupId) -> Result<Vec<HostId>, GroupError> {
        let state = self
            .groups
            .get(group_key(group))
            .ok_or(GroupError::UnknownGroup(group))?;
        let server = state.options.server_is_member.then_some(HostId::SERVER);
        Ok(server
            .into_iter()
            .chain(state.members.iter().copied())
            .collect())
    }

    /// The options a group was made with.
    ///
    /// # Errors
    /// [`GroupError::UnknownGroup`].
    pub fn group_options(&self, group: GroupId) -> Result<GroupOptions, GroupError> {
        self.groups
            .get(group_key(group))
            .map(|g| g.options)
            .ok_or(GroupError::UnknownGroup(group))
    }

    /// Groups `host` is a member of.
    ///
    /// # Errors
    /// [`GroupError::UnknownHost`].
    pub fn groups_of(&self, host: HostId) -> Result<Vec<GroupId>, GroupError> {
        self.hosts
            .get(host_key(host))
            .map(|h| h.groups.iter().copied().collect())
            .ok_or(GroupError::UnknownHost(host))
    }

    /// Every group.
    pub fn groups(&self) -> Vec<GroupId> {
        self.groups.keys().map(group_id).collect()
    }

    /// Records `from`'s ack of the notice that `member` joined `group`.
    pub fn handle_join_ack(&mut self, from: HostId, group: GroupId, member: HostId) {
        if self.joins.ack(group, member, from) {
            self.event(ServerEvent::JoinAckComplete {
                group,
                member,
                result: Ok(()),
            });
        }
    }

    // ---- relay ---------------------------------------------------------------------------

    /// Relays a reliable message from `from`. Each destination that passes the relay rule
    /// gets it stamped with `from`; each one refused is reported to the sender (and, within
    /// a live pair, skipped in the receiver's sequence so it never waits for it).
    ///
    /// The rule: with a `group`, sender and destination must both be members of it;
    /// without one, they must share at least one group.
    #[allow(clippy::too_many_arguments)] // one per field of the upload
    pub fn handle_relay(
        &mut self,
        from: HostId,
        group: Option<GroupId>,
        to_server: bool,
        lane: Lane,
        priority: Priority,
        dests: &[RelayDest],
        payload: Bytes,
        now: Instant,
    ) {
        if to_server {
            self.relay_to_server(
                from,
                group,
                payload.clone(),
                lane.delivery(),
                lane.channel(),
            );
        }
        let mut seen = DestinationSet::default();
        for dest in dests {
            // One copy per pair and upload: a client cannot turn one upload into thousands
            // of deliveries to one victim by repeating its pair.
            if dests.len() > 1 && !seen.insert(dest.pair) {
                self.counters.relay_refused += 1;
                continue;
            }
            match self.relay_verdict(from, group, dest.pair) {
                Ok(to) => {
                    self.actions.push_back(Action::SendData {
                        to,
                        message: ServerToClient::Deliver {
                            from,
                            group,
                            lane,
                            seq: dest.seq,
                            payload: payload.clone(),
                        },
                        priority,
                        from,
                        latest: lane.latest_key(),
                    });
                    self.count_relayed(dest.pair, payload.len(), now);
                }
                Err((reason, live_peer)) => {
                    if let Some(peer) = live_peer {
                        // Travels with the sender's messages, so it never overtakes the
                        // ones numbered before it.
                        self.actions.push_back(Action::SendData {
                            to: peer,
                            message: ServerToClient::Skipped {
                                from,
                                lane,
                                seq: dest.seq,
                            },
                            priority,
                            from,
                            latest: None,
                        });
                    }
                    self.refuse(from, Some(dest.pair), group, reason);
                }
            }
        }
    }

    /// Relays an unreliable message from `from` under the same rule as
    /// [`Registry::handle_relay`]; refused destinations are reported to the sender.
    ///
    /// Pings and pongs between peers ([`DatagramLane::Ping`], [`DatagramLane::Pong`]) are
    /// relayed like messages but are not user messages: they are not counted, do not start
    /// just-in-time punching, and the server application never sees one.
    #[allow(clippy::too_many_arguments)] // one per field of the upload
    pub fn handle_datagram(
        &mut self,
        from: HostId,
        group: Option<GroupId>,
        to_server: bool,
        lane: DatagramLane,
        server_seq: u64,
        dests: &[RelayDest],
        payload: Bytes,
        now: Instant,
    ) {
        if to_server && !lane.is_probe() {
            if let DatagramLane::Sequenced { channel } = lane {
                let newest = self
                    .hosts
                    .get_mut(host_key(from))
                    .map(|h| h.app_sequenced.entry(channel).or_insert(0));
                match newest {
                    Some(newest) if server_seq > *newest => *newest = server_seq,
                    // Older than one the application already has: dropped, as the
                    // mode promises.
                    _ => return self.relay_datagram(from, group, lane, dests, payload, now),
                }
            }
            self.relay_to_server(
                from,
                group,
                payload.clone(),
                lane.delivery(),
                lane.channel(),
            );
        }
        self.relay_datagram(from, group, lane, dests, payload, now);
    }

    /// The peer part of [`Registry::handle_datagram`].
    fn relay_datagram(
        &mut self,
        from: HostId,
        group: Option<GroupId>,
        lane: DatagramLane,
        dests: &[RelayDest],
        payload: Bytes,
        now: Instant,
    ) {
        let probe = lane.is_probe();
        let mut recipients = Vec::with_capacity(dests.len());
        let mut seen = DestinationSet::default();
        for dest in dests {
            if dests.len() > 1 && !seen.insert(dest.pair) {
                self.counters.relay_refused += 1;
                continue;
            }
            match self.relay_verdict(from, group, dest.pair) {
                Ok(to) => recipients.push((to, dest.pair, dest.seq)),
                Err((reason, _)) if !probe => self.refuse(from, Some(dest.pair), group, reason),
                Err(_) => {}
            }
        }
        if recipients.is_empty() {
            return;
        }
        if !probe {
            for &(_, pair, _) in &recipients {
                self.count_relayed(pair, payload.len(), now);
            }
        }
        self.actions.push_back(Action::Datagram {
            to: recipients,
            sender: from,
            message: ServerDatagram::Deliver {
                from,
                group,
                lane,
                seq: 0,
                payload,
            },
        });
    }

    /// Records what `from` measured of its peer in `pair` (ProudNet's recent ping).
    pub fn handle_link_report(
        &mut self,
        from: HostId,
        pair: PairId,
        rtt: Option<Duration>,
        last_rtt: Option<Duration>,
        loss: Option<f32>,
    ) {
        let Some(state) = self.pairs.get_member_mut(pair, from) else {
            return;
        };
        state.link = Some(pairs::LinkMeasure {
            rtt,
            last_rtt,
            loss: loss.map(|l| l.clamp(0.0, 1.0)),
        });
    }

    /// Reports to `sender` that a destination was refused, and counts it.
    pub fn refuse(
        &mut self,
        sender: HostId,
        pair: Option<PairId>,
        group: Option<GroupId>,
        reason: RefuseReason,
    ) {
        self.counters.relay_refused += 1;
        self.send(
            sender,
            ServerToClient::Refused {
                pair,
                group,
                reason,
            },
        );
    }

    /// Decides one destination: the receiving host, or why not (with the receiver when the
    /// pair is live, so its sequence can skip the message).
    fn relay_verdict(
        &self,
        from: HostId,
        group: Option<GroupId>,
        pair: PairId,
    ) -> Result<HostId, (RefuseReason, Option<HostId>)> {
        let Some(state) = self.pairs.get(pair) else {
            return Err((RefuseReason::UnknownPair, None));
        };
        let Some(to) = state.other(from) else {
            return Err((RefuseReason::UnknownPair, None));
        };
        match group {
            Some(group) => {
                let members = self.groups.get(group_key(group)).map(|g| &g.members);
                if !members.is_some_and(|m| m.contains(&from)) {
                    return Err((RefuseReason::SenderNotInGroup, Some(to)));
                }
                if !members.is_some_and(|m| m.contains(&to)) {
                    return Err((RefuseReason::DestNotInGroup, Some(to)));
                }
            }
            None if state.shared_groups == 0 => {
                return Err((RefuseReason::NoSharedGroup, Some(to)));
            }
            None => {}
        }
        Ok(to)
    }

    /// A client may always message the server directly; to a group only when the server is
    /// one of its members and so is the sender.
    fn relay_to_server(
        &mut self,
        from: HostId,
        group: Option<GroupId>,
        payload: Bytes,
        delivery: Delivery,
        channel: u8,
    ) {
        if let Some(g) = group {
            let allowed = self.groups.get(group_key(g)).is_some_and(|state| {
                state.options.server_is_member && state.members.contains(&from)
            });
            if !allowed {
                self.refuse(from, None, group, RefuseReason::ServerNotMember);
                return;
            }
        }
        self.event(ServerEvent::Message {
            from,
            group,
            payload,
            delivery,
            channel,
        });
    }

    // ---- time ----------------------------------------------------------------------------

    /// Ends what is due at `now`: joins whose acks timed out and pairs whose linger ran out.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(at, timer)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            match timer {
                Timer::JoinAck(group, member) => {
                    if self.joins.expire(group, member, now) {
                        self.event(ServerEvent::JoinAckComplete {
                            group,
                            member,
                            result: Err(JoinAckError::Timeout),
                        });
                    }
                }
                Timer::PunchRetry(pair) => self.maybe_punch(pair, now),
                Timer::PairLinger(pair) => {
                    if let Some((a, b)) = self.pairs.expire(pair, now) {
                        self.send(a, ServerToClient::PeerDown { peer: b, pair });
                        self.send(b, ServerToClient::PeerDown { peer: a, pair });
                    }
                }
            }
        }
    }

    // ---- hole punching --------------------------------------------------------------------

    /// Just-in-time mode: `from` sent its first user message to the pair's peer.
    pub fn handle_want_direct(&mut self, from: HostId, pair: PairId, now: Instant) {
        let Some(state) = self.pairs.get_member_mut(pair, from) else {
            return;
        };
        state.talked = true;
        self.maybe_punch(pair, now);
    }

    /// `from`'s report of how its side of a punch attempt ended.
    pub fn handle_punch_report(
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
    pub fn handle_path_report(
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
        Some(PairStats {
            pair,
            shared_groups: state.shared_groups,
            path: state.punch.path(),
            relayed: state.relayed,
            relayed_bytes: state.relayed_bytes,
            punch_attempts: state.punch.attempts,
            recent_rtt: state.link.and_then(|l| l.rtt),
            last_rtt: state.link.and_then(|l| l.last_rtt),
            loss: state.link.and_then(|l| l.loss),
        })
    }

    fn count_relayed(&mut self, pair: PairId, bytes: usize, now: Instant) {
        self.counters.relayed += 1;
        self.counters.relayed_bytes += bytes as u64;
        self.relay_rate.add(bytes as u64, now);
        let Some(state) = self.pairs.get_mut(pair) else {
            return;
        };
        state.relayed += 1;
        state.relayed_bytes += bytes as u64;
        if !state.talked {
            // The first user message between the two: just-in-time punching starts now,
            // with no extra round trip from the client.
            state.talked = true;
            self.maybe_punch(pair, now);
        }
    }

    /// Orders both sides of `pair` to punch, if the policy allows it now.
    fn maybe_punch(&mut self, pair: PairId, now: Instant) {
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
        let (a, b) = state.hosts;
        let (Some(host_a), Some(host_b)) =
            (self.hosts.get(host_key(a)), self.hosts.get(host_key(b)))
        else {
            return;
        };
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
        let (candidates_of_a, candidates_of_b) = (candidates(host_a), candidates(host_b));
        let attempt = self
            .pairs
            .get_mut(pair)
            .map_or(0, |s| s.punch.begin_attempt());
        for host in [a, b] {
            if let Some(h) = self.hosts.get_mut(host_key(host)) {
                h.punch.orders += 1;
            }
        }
        self.actions.push_back(Action::Punch {
            pair,
            attempt,
            controlling: a,
            controlled: b,
            candidates_of_controlling: candidates_of_a,
            candidates_of_controlled: candidates_of_b,
        });
    }

    // ---- internals -----------------------------------------------------------------------

    fn remove_member(&mut self, group: GroupId, host: HostId, cause: LeaveCause, now: Instant) {
        let Some(state) = self.groups.get_mut(group_key(group)) else {
            return;
        };
        if !state.members.remove(&host) {
            return;
        }
        let server_is_member = state.options.server_is_member;
        let allow_empty = state.options.allow_empty;
        let direct = state.options.direct_p2p;
        let remaining: Vec<HostId> = state.members.iter().copied().collect();
        let member_count = (remaining.len() + usize::from(server_is_member)) as u32;
        if let Some(h) = self.hosts.get_mut(host_key(host)) {
            h.groups.remove(&group);
        }

        let notice = |member: HostId| ServerToClient::MemberLeft {
            group,
            member,
            member_count,
        };
        for &other in &remaining {
            self.send(other, notice(host));
        }
        if cause != LeaveCause::Disconnected {
            if server_is_member {
                self.send(host, notice(HostId::SERVER));
            }
            for &other in &remaining {
                self.send(host, notice(other));
            }
            self.send(host, notice(host));
        }

        if self.joins.cancel(group, host) {
            let error = match cause {
                LeaveCause::Left => JoinAckError::MemberLeft,
                LeaveCause::Destroyed => JoinAckError::GroupDestroyed,
                LeaveCause::Disconnected => JoinAckError::Disconnected,
            };
            self.event(ServerEvent::JoinAckComplete {
                group,
                member: host,
                result: Err(error),
            });
        }
        for member in self.joins.forget_acker(group, host) {
            self.event(ServerEvent::JoinAckComplete {
                group,
                member,
                result: Ok(()),
            });
        }

        let linger_until = now + self.config.pair_linger;
        for &other in &remaining {
            if let Some((pair, at)) =
                self.pairs
                    .remove_shared_group(host, other, direct, linger_until)
            {
                self.timers.insert((at, Timer::PairLinger(pair)));
            }
        }

        if remaining.is_empty() && !allow_empty && cause != LeaveCause::Destroyed {
            self.remove_group(group);
        }
    }

    fn remove_group(&mut self, group: GroupId) {
        for member in self.joins.members_pending_in(group) {
            self.joins.cancel(group, member);
        }
        if self.groups.remove(group_key(group)).is_some() {
            self.event(ServerEvent::GroupRemoved { group });
        }
    }

    /// Tells both hosts of a new pair about each other, before any notice that needs it.
    fn announce_pair(&mut self, pair: PairId, a: HostId, b: HostId) {
        for (to, peer) in [(a, b), (b, a)] {
            let identity = self.hosts[host_key(peer)].identity;
            self.send(
                to,
                ServerToClient::PeerUp {
                    peer,
                    pair,
                    info: PeerInfo { identity },
                },
            );
        }
    }

    fn send(&mut self, to: HostId, message: ServerToClient) {
        self.actions.push_back(Action::Send { to, message });
    }

    fn event(&mut self, event: ServerEvent) {
        self.actions.push_back(Action::Event(event));
    }
}

/// The pairs one upload named so far. Most uploads name a handful, so a short list is
/// searched until it grows.
#[derive(Default)]
struct DestinationSet {
    few: Vec<PairId>,
    many: Option<std::collections::HashSet<PairId>>,
}

impl DestinationSet {
    /// Adds `pair`; false if it was already there.
    fn insert(&mut self, pair: PairId) -> bool {
        if let Some(many) = &mut self.many {
            return many.insert(pair);
        }
        if self.few.contains(&pair) {
            return false;
        }
        self.few.push(pair);
        if self.few.len() > 16 {
            self.many = Some(self.few.drain(..).collect());
        }
        true
    }
}

#[cfg(test)]
mod tests;
