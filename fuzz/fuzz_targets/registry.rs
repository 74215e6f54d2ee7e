//! The server's sans-IO registry driven by arbitrary sequences of operations, with a
//! made-up clock, and checked against a simple model of hosts, groups and pairs.
//!
//! Invariants:
//! - every call's result (joined, already a member, which error) is the model's;
//! - `group_members`, `groups`, `groups_of`, `host_summary` and each pair's shared-group
//!   count match the model after every operation;
//! - every join and leave completes exactly once (`JoinAckComplete`/`LeaveAckComplete`),
//!   and all of them do once every host acks everything and the ack timeout passes;
//!   `pending_acks` counts exactly the ones still open;
//! - notices a host is sent are counted one by one; an ack beyond that count is refused,
//!   anything up to it is accepted; a host is disconnected for unacked notices only past
//!   the limit;
//! - relay only between hosts sharing a group (the group named, if any): no `SendData`
//!   delivery or `Datagram` recipient otherwise; and every destination the rule allows is
//!   delivered (exactly the model's count);
//! - the server application hears a group message only from a member of a group it is in;
//! - punch orders name a live pair's two connected hosts, lower id controlling;
//! - after `handle_timeout(now)`, nothing is due at or before `now`.
#![no_main]

use arbitrary::Arbitrary;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use peergroup_protocol::{
    ClientDatagram, ClientToServer, DatagramLane, Fingerprint, GroupId, HostId, Lane, PairId,
    PairPath, PathReason, Priority, PunchOutcome, RelayDest, RelayDests, ServerDatagram,
    ServerToClient,
};
use peergroup_server::registry::{
    Action, ChangeOutcome, GroupOptions, JoinOutcome, MembershipBatch, MembershipChange,
    ProtocolViolation, Registry, RegistryConfig,
};
use peergroup_server::{GroupError, ServerEvent};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// Unacked notices before a host is disconnected: small, so the fuzzer reaches it.
const MAX_UNACKED: u64 = 40;
const MAX_HOST_DATA: usize = 64;
const MAX_GROUP_DATA: usize = 64;
/// Clients connected at once, at most.
const MAX_CLIENTS: usize = 12;

#[derive(Arbitrary, Debug, Clone, Copy)]
enum AckCount {
    /// Everything sent so far.
    All,
    /// This many fewer than sent.
    Behind(u8),
    /// This many more than sent (refused).
    Beyond(u8),
    Raw(u64),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum LaneSpec {
    Ordered(u8),
    Unordered,
    Latest(u8),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum DatagramSpec {
    Plain,
    Sequenced(u8),
    Ping(u32),
    Pong(u32),
}

#[derive(Arbitrary, Debug)]
enum Op {
    Connect {
        same_nat: bool,
    },
    Disconnect(u8),
    Create {
        members: u8,
        allow_empty: bool,
        direct: bool,
        server: bool,
        data: u8,
    },
    Join(u8, u8),
    Leave(u8, u8),
    Destroy(u8),
    Batch(Vec<(bool, u8, u8)>),
    SetHostData(u8, u8),
    SetGroupData(u8, u8),
    Ack(u8, AckCount),
    Relay {
        from: u8,
        group: Option<u8>,
        to_server: bool,
        lane: LaneSpec,
        priority: u8,
        dests: Vec<(u8, u8)>,
    },
    Datagram {
        from: u8,
        group: Option<u8>,
        to_server: bool,
        lane: DatagramSpec,
        server_seq: u8,
        dests: Vec<(u8, u8)>,
    },
    WantDirect(u8, u8),
    PunchReport(u8, u8, u8, u8),
    PathReport(u8, u8, bool, u8),
    LinkReport(u8, u8, Option<u16>),
    Candidates(u8, u8),
    Advance(u16),
    AdvanceSeconds(u8),
}

#[derive(Debug, Clone)]
struct ModelGroup {
    members: BTreeSet<HostId>,
    allow_empty: bool,
    server: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Kind {
    Join,
    Leave,
}

struct Harness {
    registry: Registry,
    now: Instant,
    /// Every host ever connected, in order (so stale ids get used too).
    hosts: Vec<HostId>,
    connected: BTreeSet<HostId>,
    /// Every group ever created.
    group_ids: Vec<GroupId>,
    groups: BTreeMap<GroupId, ModelGroup>,
    /// Notices sent to each connected host, and the most it acked.
    sent: HashMap<HostId, u64>,
    acked: HashMap<HostId, u64>,
    /// Joins and leaves started and not completed.
    pending: HashMap<(Kind, GroupId, HostId), u32>,
    /// Live pairs as the hosts were told (`PeerUp` until `PeerDown`), and every pair seen.
    pairs: HashMap<PairId, (HostId, HostId)>,
    /// Pairs that ended, as their hosts were told (`PeerDown` goes to both, in a row).
    ended: HashMap<PairId, (HostId, HostId)>,
    pair_ids: Vec<PairId>,
    /// Groups the model expects a `GroupRemoved` for.
    removals: BTreeSet<GroupId>,
    /// Hosts the registry asked to disconnect.
    to_disconnect: Vec<HostId>,
    /// Deliveries of the current relay call, for the model's count.
    delivered: usize,
    datagram_recipients: Option<Vec<HostId>>,
}

const BOGUS_HOSTS: [HostId; 3] = [
    HostId::SERVER,
    // An even slot version: an alias of slot 1's first key, which must name nothing.
    HostId::from_raw(2 << 32 | 1),
    HostId::from_raw(u64::MAX),
];

fn pick<T: Copy>(items: &[T], bogus: &[T], index: u8) -> T {
    let index = usize::from(index) % (items.len() + bogus.len());
    if index < items.len() {
        items[index]
    } else {
        bogus[index - items.len()]
    }
}

impl Harness {
    fn host(&self, index: u8) -> HostId {
        pick(&self.hosts, &BOGUS_HOSTS, index)
    }

    fn group(&self, index: u8) -> GroupId {
        pick(
            &self.group_ids,
            &[GroupId::from_raw(2 << 32 | 1), GroupId::from_raw(0)],
            index,
        )
    }

    fn pair(&self, index: u8) -> PairId {
        pick(
            &self.pair_ids,
            &[PairId::from_raw(0), PairId::from_raw(3 << 32 | 1)],
            index,
        )
    }

    /// A connected host, if any.
    fn client(&self, index: u8) -> Option<HostId> {
        let connected: Vec<HostId> = self.connected.iter().copied().collect();
        (!connected.is_empty()).then(|| connected[usize::from(index) % connected.len()])
    }

    fn shared(&self, a: HostId, b: HostId) -> u32 {
        self.groups
            .values()
            .filter(|g| g.members.contains(&a) && g.members.contains(&b))
            .count() as u32
    }

    fn start(&mut self, kind: Kind, group: GroupId, member: HostId) {
        *self.pending.entry((kind, group, member)).or_default() += 1;
    }

    fn complete(&mut self, kind: Kind, group: GroupId, member: HostId) {
        let count = self
            .pending
            .get_mut(&(kind, group, member))
            .unwrap_or_else(|| panic!("{kind:?} of {member} in {group} completed, never started"));
        assert!(
            *count > 0,
            "{kind:?} of {member} in {group} completed twice"
        );
        *count -= 1;
        if *count == 0 {
            self.pending.remove(&(kind, group, member));
        }
    }

    /// The model's side of a member leaving (for any reason but a destroy).
    fn model_leave(&mut self, group: GroupId, host: HostId) {
        let model = self.groups.get_mut(&group).expect("model group");
        assert!(model.members.remove(&host));
        let emptied = model.members.is_empty() && !model.allow_empty;
        self.start(Kind::Leave, group, host);
        if emptied {
            self.groups.remove(&group);
            self.removals.insert(group);
        }
    }

    fn model_join(&mut self, group: GroupId, host: HostId) {
        assert!(self
            .groups
            .get_mut(&group)
            .expect("model group")
            .members
            .insert(host));
        self.start(Kind::Join, group, host);
    }

    /// Whether the relay rule lets `from` reach `to` (`group` named or not).
    fn may_relay(&self, from: HostId, to: HostId, group: Option<GroupId>) -> bool {
        match group {
            Some(g) => self
                .groups
                .get(&g)
                .is_some_and(|g| g.members.contains(&from) && g.members.contains(&to)),
            None => self.shared(from, to) > 0,
        }
    }

    fn drain(&mut self) {
        while let Some(action) = self.registry.poll_action() {
            self.take(action);
        }
        // The driver closes the connection; its task then reports the disconnect.
        while let Some(host) = self.to_disconnect.pop() {
            if self.connected.contains(&host) {
                self.disconnect(host);
            }
        }
    }

    fn take(&mut self, action: Action) {
        match action {
            Action::Send { to, message } => {
                assert!(
                    self.connected.contains(&to),
                    "{message:?} to {to}, not connected"
                );
                match message {
                    ServerToClient::PeerUp { peer, pair, .. } => {
                        assert!(self.connected.contains(&peer));
                        let hosts = (to.min(peer), to.max(peer));
                        let old = self.pairs.insert(pair, hosts);
                        assert!(old.is_none_or(|old| old == hosts), "pair {pair} reused");
                        if !self.pair_ids.contains(&pair) {
                            self.pair_ids.push(pair);
                        }
                    }
                    ServerToClient::PeerDown { peer, pair } => {
                        let hosts = (to.min(peer), to.max(peer));
                        let known = self.pairs.remove(&pair).or(self.ended.get(&pair).copied());
                        assert_eq!(known, Some(hosts), "PeerDown for {pair}");
                        self.ended.insert(pair, hosts);
                    }
                    _ => {}
                }
            }
            Action::Notice { to, .. } => {
                assert!(
                    self.connected.contains(&to),
                    "a notice to {to}, not connected"
                );
                *self.sent.entry(to).or_default() += 1;
            }
            Action::Disconnect { host, .. } => {
                assert!(self.connected.contains(&host));
                let unacked = self.sent[&host] - self.acked.get(&host).copied().unwrap_or(0);
                assert!(unacked > MAX_UNACKED, "disconnected with {unacked} unacked");
                self.to_disconnect.push(host);
            }
            Action::SendData {
                to, message, from, ..
            } => {
                assert!(self.connected.contains(&to));
                match message {
                    ServerToClient::Deliver {
                        from: stamped,
                        group,
                        ..
                    } => {
                        assert_eq!(stamped, from);
                        assert!(
                            self.may_relay(from, to, group),
                            "relayed {from} -> {to} in {group:?} without a shared group"
                        );
                        self.delivered += 1;
                    }
                    ServerToClient::Skipped { from: stamped, .. } => assert_eq!(stamped, from),
                    other => panic!("SendData with {other:?}"),
                }
            }
            Action::Datagram {
                to,
                sender,
                message,
            } => {
                let ServerDatagram::Deliver { from, group, .. } = message;
                assert_eq!(from, sender);
                for &(host, pair, _) in &to {
                    assert!(self.connected.contains(&host));
                    assert!(
                        self.may_relay(from, host, group),
                        "datagram {from} -> {host} in {group:?} without a shared group"
                    );
                    assert_eq!(
                        self.pairs.get(&pair),
                        Some(&(from.min(host), from.max(host)))
                    );
                }
                assert!(self.datagram_recipients.is_none(), "two datagram actions");
                self.datagram_recipients = Some(to.iter().map(|(h, _, _)| *h).collect());
            }
            Action::AppDatagram { .. } => panic!("the model sends nothing from the application"),
            Action::Event(event) => match event {
                ServerEvent::JoinAckComplete { group, member, .. } => {
                    self.complete(Kind::Join, group, member)
                }
                ServerEvent::LeaveAckComplete { group, member, .. } => {
                    self.complete(Kind::Leave, group, member)
                }
                ServerEvent::GroupRemoved { group } => {
                    assert!(
                        self.removals.remove(&group),
                        "unexpected GroupRemoved {group}"
                    );
                }
                ServerEvent::Message {
                    from,
                    group: Some(g),
                    ..
                } => {
                    let model = self.groups.get(&g).expect("message to a live group");
                    assert!(model.server && model.members.contains(&from));
                }
                _ => {}
            },
            Action::ResumeWindowEnded { host } => {
                panic!("{host}'s resume window ended, but the model never takes a host offline")
            }
            Action::Punch {
                pair,
                controlling,
                controlled,
                ..
            } => {
                assert!(controlling < controlled);
                assert!(self.connected.contains(&controlling));
                assert!(self.connected.contains(&controlled));
                assert_eq!(self.pairs.get(&pair), Some(&(controlling, controlled)));
            }
        }
    }

    fn disconnect(&mut self, host: HostId) {
        let groups: Vec<GroupId> = self
            .groups
            .iter()
            .filter(|(_, g)| g.members.contains(&host))
            .map(|(id, _)| *id)
            .collect();
        self.connected.remove(&host);
        for group in groups {
            self.model_leave(group, host);
        }
        self.registry.handle_disconnect(host, self.now);
        // Its pairs end at once; only the other sides are told.
        let gone: Vec<PairId> = self
            .pairs
            .iter()
            .filter(|(_, (a, b))| *a == host || *b == host)
            .map(|(id, _)| *id)
            .collect();
        for pair in gone {
            if let Some(hosts) = self.pairs.remove(&pair) {
                self.ended.insert(pair, hosts);
            }
        }
        self.sent.remove(&host);
        self.acked.remove(&host);
        self.drain();
    }

    fn check(&mut self) {
        assert_eq!(self.registry.host_count(), self.connected.len());
        let groups: BTreeSet<GroupId> = self.registry.groups().into_iter().collect();
        let model: BTreeSet<GroupId> = self.groups.keys().copied().collect();
        assert_eq!(groups, model, "groups()");
        assert!(
            self.removals.is_empty(),
            "GroupRemoved missing for {:?}",
            self.removals
        );
        for (id, group) in &self.groups {
            let mut want: Vec<HostId> = Vec::new();
            if group.server {
                want.push(HostId::SERVER);
            }
            want.extend(group.members.iter().copied());
            assert_eq!(
                self.registry.group_members(*id).expect("group"),
                want,
                "members of {id}"
            );
        }
        let connected: Vec<HostId> = self.connected.iter().copied().collect();
        for &host in &connected {
            let want: Vec<GroupId> = self
                .groups
                .iter()
                .filter(|(_, g)| g.members.contains(&host))
                .map(|(id, _)| *id)
                .collect();
            assert_eq!(self.registry.groups_of(host).expect("connected"), want);
            let summary = self.registry.host_summary(host).expect("connected");
            assert_eq!(summary.groups, want);
        }
        for (i, &a) in connected.iter().enumerate() {
            for &b in &connected[i + 1..] {
                let shared = self.shared(a, b);
                let stats = self.registry.pair_stats(a, b);
                match stats {
                    Some(stats) => {
                        assert_eq!(stats.shared_groups, shared, "shared groups of {a}, {b}");
                        assert_eq!(self.pairs.get(&stats.pair), Some(&(a.min(b), a.max(b))));
                    }
                    None => assert_eq!(shared, 0, "no pair between {a} and {b}"),
                }
            }
        }
        let open: u32 = self.pending.values().sum();
        assert_eq!(
            self.registry.pending_acks(),
            open as usize,
            "pending_acks()"
        );
    }

    /// Moves the clock and runs what is due, as the server's timer task does.
    fn advance(&mut self, by: Duration) {
        self.now += by;
        self.registry.handle_timeout(self.now);
        if let Some(at) = self.registry.poll_timeout() {
            assert!(at > self.now, "a timer still due after handle_timeout");
        }
        self.drain();
    }
}

fn lane_of(spec: LaneSpec) -> Lane {
    match spec {
        LaneSpec::Ordered(channel) => Lane::Ordered {
            channel: channel % 4,
        },
        LaneSpec::Unordered => Lane::Unordered,
        LaneSpec::Latest(key) => Lane::Latest {
            key: u64::from(key % 4),
        },
    }
}

fn datagram_lane_of(spec: DatagramSpec) -> DatagramLane {
    match spec {
        DatagramSpec::Plain => DatagramLane::Plain,
        DatagramSpec::Sequenced(channel) => DatagramLane::Sequenced {
            channel: channel % 4,
        },
        DatagramSpec::Ping(id) => DatagramLane::Ping { id },
        DatagramSpec::Pong(id) => DatagramLane::Pong { id },
    }
}

fn data(len: u8) -> Bytes {
    Bytes::from(vec![len; usize::from(len)])
}

impl Harness {
    /// The destinations of an upload, and how many the relay rule lets through.
    fn dests(
        &self,
        from: HostId,
        group: Option<GroupId>,
        dests: &[(u8, u8)],
    ) -> (RelayDests, Vec<HostId>) {
        let dests: RelayDests = dests
            .iter()
            .take(24)
            .map(|&(pair, seq)| RelayDest {
                pair: self.pair(pair),
                seq: u64::from(seq),
            })
            .collect();
        let mut seen = BTreeSet::new();
        let mut allowed = Vec::new();
        for dest in &dests {
            // A pair named twice in one upload gets one copy.
            if dests.len() > 1 && !seen.insert(dest.pair) {
                continue;
            }
            let Some(&(a, b)) = self.pairs.get(&dest.pair) else {
                continue;
            };
            let to = match from {
                f if f == a => b,
                f if f == b => a,
                _ => continue,
            };
            if self.may_relay(from, to, group) {
                allowed.push(to);
            }
        }
        (dests, allowed)
    }

    fn run(&mut self, op: Op) {
        let now = self.now;
        match op {
            Op::Connect { same_nat } => {
                // A dozen clients show every behaviour; more only slow the model's
                // pairwise checks.
                if self.connected.len() >= MAX_CLIENTS {
                    return;
                }
                let n = self.hosts.len() as u8;
                let ip = if same_nat {
                    [198, 51, 100, 1]
                } else {
                    [198, 51, 100, n]
                };
                let addr = (ip, 40_000 + u16::from(n)).into();
                let host = self
                    .registry
                    .handle_connect(Fingerprint([n; 32]), addr, Bytes::new());
                assert!(self.connected.insert(host), "{host} handed out twice");
                assert!(!self.hosts.contains(&host), "{host} reused");
                self.hosts.push(host);
                self.sent.insert(host, 0);
            }
            Op::Disconnect(h) => {
                let host = self.host(h);
                if self.connected.contains(&host) {
                    self.disconnect(host);
                } else {
                    // Unknown or gone: nothing happens.
                    self.registry.handle_disconnect(host, now);
                }
            }
            Op::Create {
                members,
                allow_empty,
                direct,
                server,
                data: len,
            } => {
                let wanted: Vec<HostId> = (0..8)
                    .filter(|i| members & (1 << i) != 0)
                    .map(|i| self.host(i * 3))
                    .collect();
                let options = GroupOptions {
                    allow_empty,
                    direct_p2p: direct,
                    server_is_member: server,
                };
                let result = self
                    .registry
                    .create_group(&wanted, options, data(len), data(1), now);
                let expected =
                    if let Some(&unknown) = wanted.iter().find(|h| !self.connected.contains(h)) {
                        Err(GroupError::UnknownHost(unknown))
                    } else if wanted.is_empty() && !allow_empty {
                        Err(GroupError::EmptyNotAllowed)
                    } else if usize::from(len) > MAX_GROUP_DATA {
                        Err(GroupError::DataTooLarge {
                            len: usize::from(len),
                            max: MAX_GROUP_DATA,
                        })
                    } else {
                        Ok(())
                    };
                match (result, expected) {
                    (Ok(group), Ok(())) => {
                        assert!(!self.group_ids.contains(&group), "{group} reused");
                        self.group_ids.push(group);
                        self.groups.insert(
                            group,
                            ModelGroup {
                                members: BTreeSet::new(),
                                allow_empty,
                                server,
                            },
                        );
                        for host in wanted {
                            if !self.groups[&group].members.contains(&host) {
                                self.model_join(group, host);
                            }
                        }
                    }
                    (Err(got), Err(want)) => assert_eq!(got, want),
                    (got, want) => panic!("create_group gave {got:?}, model {want:?}"),
                }
            }
            Op::Join(g, h) => {
                let (group, host) = (self.group(g), self.host(h));
                let result = self.registry.join_group(group, host, data(2), now);
                let expected = match self.groups.get(&group) {
                    None => Err(GroupError::UnknownGroup(group)),
                    Some(_) if !self.connected.contains(&host) => {
                        Err(GroupError::UnknownHost(host))
                    }
                    Some(model) if model.members.contains(&host) => Ok(JoinOutcome::AlreadyMember),
                    Some(_) => Ok(JoinOutcome::Joined),
                };
                assert_eq!(result, expected, "join_group");
                if expected == Ok(JoinOutcome::Joined) {
                    self.model_join(group, host);
                }
            }
            Op::Leave(g, h) => {
                let (group, host) = (self.group(g), self.host(h));
                let result = self.registry.leave_group(group, host, now);
                let expected = match self.groups.get(&group) {
                    None => Err(GroupError::UnknownGroup(group)),
                    Some(model) if !model.members.contains(&host) => {
                        Err(GroupError::NotMember { group, host })
                    }
                    Some(_) => Ok(()),
                };
                assert_eq!(result, expected, "leave_group");
                if expected.is_ok() {
                    self.model_leave(group, host);
                }
            }
            Op::Destroy(g) => {
                let group = self.group(g);
                let result = self.registry.destroy_group(group, now);
                match self.groups.remove(&group) {
                    None => assert_eq!(result, Err(GroupError::UnknownGroup(group))),
                    Some(model) => {
                        assert_eq!(result, Ok(()));
                        for member in model.members {
                            self.start(Kind::Leave, group, member);
                        }
                        self.removals.insert(group);
                    }
                }
            }
            Op::Batch(changes) => {
                let mut batch = MembershipBatch::new();
                for &(join, g, h) in changes.iter().take(32) {
                    let (group, host) = (self.group(g), self.host(h));
                    batch.push(if join {
                        MembershipChange::Join {
                            group,
                            host,
                            join_message: data(3),
                        }
                    } else {
                        MembershipChange::Leave { group, host }
                    });
                }
                let result = self.registry.apply_batch(&batch, now);
                // The model plans on a copy of itself: all or nothing.
                let mut plan = self.groups.clone();
                let mut expected = Ok(Vec::new());
                for (index, change) in batch.changes().iter().enumerate() {
                    let (group, host, join) = match change {
                        MembershipChange::Join { group, host, .. } => (*group, *host, true),
                        MembershipChange::Leave { group, host } => (*group, *host, false),
                    };
                    let refuse = |error| Err(peergroup_server::BatchError { index, error });
                    let Some(model) = plan.get_mut(&group) else {
                        expected = refuse(GroupError::UnknownGroup(group));
                        break;
                    };
                    if !self.connected.contains(&host) {
                        expected = refuse(GroupError::UnknownHost(host));
                        break;
                    }
                    let outcome = if join {
                        if model.members.insert(host) {
                            ChangeOutcome::Joined
                        } else {
                            ChangeOutcome::AlreadyMember
                        }
                    } else if model.members.remove(&host) {
                        if model.members.is_empty() && !model.allow_empty {
                            plan.remove(&group);
                        }
                        ChangeOutcome::Left
                    } else {
                        expected = refuse(GroupError::NotMember { group, host });
                        break;
                    };
                    if let Ok(outcomes) = &mut expected {
                        outcomes.push(outcome);
                    }
                }
                assert_eq!(result, expected, "apply_batch");
                if let Ok(outcomes) = expected {
                    for (change, outcome) in batch.changes().iter().zip(outcomes) {
                        match (change, outcome) {
                            (MembershipChange::Join { group, host, .. }, ChangeOutcome::Joined) => {
                                self.model_join(*group, *host)
                            }
                            (MembershipChange::Leave { group, host }, ChangeOutcome::Left) => {
                                self.model_leave(*group, *host)
                            }
                            _ => {}
                        }
                    }
                }
            }
            Op::SetHostData(h, len) => {
                let host = self.host(h);
                let result = self.registry.set_host_data(host, data(len));
                let expected = if usize::from(len) > MAX_HOST_DATA {
                    Err(GroupError::DataTooLarge {
                        len: usize::from(len),
                        max: MAX_HOST_DATA,
                    })
                } else if !self.connected.contains(&host) {
                    Err(GroupError::UnknownHost(host))
                } else {
                    Ok(())
                };
                assert_eq!(result, expected, "set_host_data");
            }
            Op::SetGroupData(g, len) => {
                let group = self.group(g);
                let result = self.registry.set_group_data(group, data(len));
                let expected = if usize::from(len) > MAX_GROUP_DATA {
                    Err(GroupError::DataTooLarge {
                        len: usize::from(len),
                        max: MAX_GROUP_DATA,
                    })
                } else if !self.groups.contains_key(&group) {
                    Err(GroupError::UnknownGroup(group))
                } else {
                    Ok(())
                };
                assert_eq!(result, expected, "set_group_data");
            }
            Op::Ack(h, count) => {
                let host = self.host(h);
                let sent = self.sent.get(&host).copied().unwrap_or(0);
                let n = match count {
                    AckCount::All => sent,
                    AckCount::Behind(k) => sent.saturating_sub(u64::from(k)),
                    AckCount::Beyond(k) => sent + 1 + u64::from(k),
                    AckCount::Raw(n) => n,
                };
                let ack = ClientToServer::Ack { notices: n };
                let result = self.registry.handle_frame(host, ack, now);
                if !self.connected.contains(&host) {
                    assert!(result.is_ok(), "an ack from a host that is gone");
                } else if n > sent {
                    let refused = result.expect_err("an ack beyond what was sent");
                    let ProtocolViolation::AckBeyondSent(refused) = refused else {
                        panic!("an ack refused as {refused:?}");
                    };
                    assert_eq!((refused.acked, refused.sent), (n, sent));
                } else {
                    assert!(result.is_ok(), "an ack within what was sent refused");
                    let acked = self.acked.entry(host).or_default();
                    *acked = (*acked).max(n);
                }
            }
            Op::Relay {
                from,
                group,
                to_server,
                lane,
                priority,
                dests,
            } => {
                let Some(from) = self.client(from) else {
                    return;
                };
                let group = group.map(|g| self.group(g));
                let (dests, allowed) = self.dests(from, group, &dests);
                let priority =
                    [Priority::High, Priority::Medium, Priority::Low][usize::from(priority % 3)];
                self.delivered = 0;
                let upload = ClientToServer::Relay {
                    group,
                    to_server,
                    lane: lane_of(lane),
                    priority,
                    dests,
                    payload: data(5),
                };
                assert!(self.registry.handle_frame(from, upload, now).is_ok());
                self.drain();
                assert_eq!(
                    self.delivered,
                    allowed.len(),
                    "deliveries the relay rule allows"
                );
            }
            Op::Datagram {
                from,
                group,
                to_server,
                lane,
                server_seq,
                dests,
            } => {
                let Some(from) = self.client(from) else {
                    return;
                };
                let group = group.map(|g| self.group(g));
                let (dests, mut allowed) = self.dests(from, group, &dests);
                // A ping or pong goes to one peer; one naming several is dropped whole.
                if matches!(lane, DatagramSpec::Ping(_) | DatagramSpec::Pong(_)) && dests.len() > 1
                {
                    allowed.clear();
                }
                self.datagram_recipients = None;
                let datagram = ClientDatagram::Relay {
                    group,
                    to_server,
                    lane: datagram_lane_of(lane),
                    server_seq: u64::from(server_seq),
                    dests,
                    payload: data(6),
                };
                self.registry.handle_datagram(from, datagram, now);
                self.drain();
                let got = self.datagram_recipients.take().unwrap_or_default();
                assert_eq!(got, allowed, "datagram recipients the relay rule allows");
            }
            Op::WantDirect(h, p) => {
                let (host, pair) = (self.host(h), self.pair(p));
                let frame = ClientToServer::WantDirect { pair };
                assert!(self.registry.handle_frame(host, frame, now).is_ok());
            }
            Op::PunchReport(h, p, attempt, outcome) => {
                let (host, pair) = (self.host(h), self.pair(p));
                let outcome = match outcome % 4 {
                    0 => PunchOutcome::Direct {
                        rtt_us: u32::from(attempt) * 100,
                    },
                    1 => PunchOutcome::NoResponse,
                    2 => PunchOutcome::HandshakeFailed,
                    _ => PunchOutcome::Declined,
                };
                let frame = ClientToServer::PunchReport {
                    pair,
                    attempt: u32::from(attempt % 4),
                    outcome,
                };
                assert!(self.registry.handle_frame(host, frame, now).is_ok());
            }
            Op::PathReport(h, p, direct, reason) => {
                let (host, pair) = (self.host(h), self.pair(p));
                let path = if direct {
                    PairPath::Direct
                } else {
                    PairPath::Relay
                };
                let reason = [
                    PathReason::Punched,
                    PathReason::DirectTimedOut,
                    PathReason::DirectClosed,
                    PathReason::PairEnded,
                ][usize::from(reason % 4)];
                let frame = ClientToServer::PathReport { pair, path, reason };
                assert!(self.registry.handle_frame(host, frame, now).is_ok());
            }
            Op::LinkReport(h, p, rtt) => {
                let (host, pair) = (self.host(h), self.pair(p));
                let rtt_us = rtt.map(u32::from);
                // A loss past 100 % (2,500 per mille), which the registry clamps.
                let frame = ClientToServer::LinkReport {
                    pair,
                    rtt_us,
                    last_rtt_us: rtt_us,
                    loss_permille: rtt.map(|_| 2_500),
                };
                assert!(self.registry.handle_frame(host, frame, now).is_ok());
            }
            Op::Candidates(h, n) => {
                let host = self.host(h);
                let addrs = (0..n % 24)
                    .map(|i| ([10, 0, 0, i], 40_000).into())
                    .collect();
                let frame = ClientToServer::HostCandidates { addrs };
                assert!(self.registry.handle_frame(host, frame, now).is_ok());
            }
            Op::Advance(ms) => self.advance(Duration::from_millis(u64::from(ms))),
            Op::AdvanceSeconds(s) => self.advance(Duration::from_secs(u64::from(s))),
        }
        self.drain();
        let _ = (
            self.registry.counters(),
            self.registry.relay_bytes_per_sec(self.now),
        );
        self.check();
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let config = RegistryConfig {
        max_unacked_notices: MAX_UNACKED,
        max_host_data_len: MAX_HOST_DATA,
        max_group_data_len: MAX_GROUP_DATA,
        // The model checks the relay rule; the delivery budget has its own unit tests
        // (an input could otherwise spend it and the model would have to track time).
        datagram_deliveries_per_sec: u32::MAX,
        ..RegistryConfig::default()
    };
    let ack_timeout = config.ack_timeout;
    let mut h = Harness {
        registry: Registry::new(config, Instant::now()),
        now: Instant::now(),
        hosts: Vec::new(),
        connected: BTreeSet::new(),
        group_ids: Vec::new(),
        groups: BTreeMap::new(),
        sent: HashMap::new(),
        acked: HashMap::new(),
        pending: HashMap::new(),
        pairs: HashMap::new(),
        ended: HashMap::new(),
        pair_ids: Vec::new(),
        removals: BTreeSet::new(),
        to_disconnect: Vec::new(),
        delivered: 0,
        datagram_recipients: None,
    };
    for op in ops.into_iter().take(256) {
        h.run(op);
    }
    // To the end: every host acks everything it was sent, then the ack timeout passes.
    // Every join and leave must have completed, exactly once.
    let hosts: Vec<HostId> = h.connected.iter().copied().collect();
    for host in hosts {
        let sent = h.sent[&host];
        let ack = ClientToServer::Ack { notices: sent };
        assert!(h.registry.handle_frame(host, ack, h.now).is_ok());
        h.drain();
    }
    h.advance(ack_timeout + Duration::from_secs(1));
    h.check();
    assert!(
        h.pending.is_empty(),
        "joins and leaves never completed: {:?}",
        h.pending
    );
});
