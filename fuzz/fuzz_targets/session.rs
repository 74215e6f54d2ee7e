//! The client's sans-IO session (with its lane receivers and sequencing) driven through
//! `peergroup_client::fuzzing` by arbitrary frames from the server and from direct peers,
//! datagrams, path changes, sends and the passing of time, as the drivers would.
//!
//! Invariants:
//! - never panics; relayed traffic from a peer never closes the server connection, and
//!   a message from a host that is not a peer does;
//! - each delivered message is one this harness sent, from that sender, on its pair (never
//!   one sent under a pair that has ended), with its mode, channel and path;
//! - ordered lanes deliver in increasing sequence, each number at most once, and only
//!   after every earlier number arrived (as a message or a skip); the unordered lane at
//!   most once per number; the latest lane never an older number of a key after a newer
//!   one; sequenced datagrams only newer ones per channel;
//! - a message to a group is delivered only while the session has been told both it and
//!   the sender are members, under the memberships a direct message names;
//! - the session acks exactly the notices it was sent, counted one by one;
//! - what it holds stays bounded: early arrivals in a peer's lanes within 16 MiB (the
//!   driver stops reading a direct path past 4 MiB held), at most 4,096 messages and
//!   16 MiB waiting for membership notices, nothing waiting past the 10 s wait;
//! - its own sends number each (pair, lane) 1, 2, 3, ..., name only current pairs, and
//!   resend through the relay only what went direct.
#![no_main]

use arbitrary::Arbitrary;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use peergroup_client::fuzzing::{
    FuzzSession, Target, Upload, MAX_AWAITING, MAX_HELD_BYTES, MAX_HELD_BYTES_RELAYED,
    MEMBERSHIP_WAIT,
};
use peergroup_client::ClientEvent;
use peergroup_fuzz::{payload_tag, tagged_payload};
use peergroup_protocol::{
    decode_body, ClientDatagram, ClientToServer, DatagramLane, Delivery, Fingerprint, GroupId,
    HostId, Lane, Memberships, Notice, PairId, PathReason, PeerInfo, PeerToPeer, Priority,
    PunchOrder, RefuseReason, SendOptions, ServerDatagram, ServerToClient, FRAME_HEADROOM,
};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

const ME: HostId = HostId::from_raw(1 << 32 | 1);
/// Sequence numbers held at most ahead of the next due (small, so the fuzzer reaches it).
const WINDOW: u64 = 256;
const MAX_MESSAGE: usize = 1 << 20;
/// What one peer's messages may hold at most: early arrivals within the relayed bound (a
/// direct frame read while 4 MiB or less was held adds at most one message, so stays
/// within it too), and messages waiting for membership notices, held to the same bound.
const HELD_BYTES_BOUND: usize = 2 * MAX_HELD_BYTES_RELAYED;

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Len {
    Small(u8),
    Medium(u16),
    /// In 64 KiB steps, to reach the held-bytes limits in few messages.
    Large(u8),
}

impl Len {
    fn bytes(self) -> usize {
        match self {
            Len::Small(n) => usize::from(n) + 8,
            Len::Medium(n) => usize::from(n) + 8,
            Len::Large(n) => (usize::from(n % 16) + 1) * (64 << 10),
        }
        .min(MAX_MESSAGE)
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum LaneSpec {
    Ordered(u8),
    Unordered,
    Latest(u8),
}

impl LaneSpec {
    fn lane(self) -> Lane {
        match self {
            LaneSpec::Ordered(c) => Lane::Ordered { channel: c % 3 },
            LaneSpec::Unordered => Lane::Unordered,
            LaneSpec::Latest(k) => Lane::Latest {
                key: u64::from(k % 3),
            },
        }
    }
}

/// Which number a frame carries, relative to what this harness's "sender" assigned.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Seq {
    /// The next one: in order.
    Next,
    /// Skips some: early.
    Ahead(u8),
    /// One already used: a duplicate or a retransmission.
    Back(u8),
    Raw(u64),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum DatagramSpec {
    Plain,
    Sequenced(u8),
    Ping(u32),
    Pong(u32),
}

#[derive(Arbitrary, Debug)]
enum NoticeSpec {
    Joined {
        group: u8,
        member: u8,
        membership: u8,
    },
    Left {
        group: u8,
        member: u8,
    },
    HostData {
        host: u8,
    },
    GroupData {
        group: u8,
    },
}

#[derive(Arbitrary, Debug)]
enum TargetSpec {
    Host(u8),
    Group(u8),
    GroupLoopback(u8),
    Server,
    Hosts(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum DeliverySpec {
    Ordered(u8),
    Unordered,
    Latest(u8),
    Unreliable,
    Sequenced(u8),
}

#[derive(Arbitrary, Debug)]
enum Op {
    PeerUp(u8),
    PeerDown {
        peer: u8,
        stale: bool,
    },
    Notices(Vec<NoticeSpec>),
    Deliver {
        from: u8,
        group: Option<u8>,
        lane: LaneSpec,
        seq: Seq,
        len: Len,
    },
    Skipped {
        from: u8,
        lane: LaneSpec,
        seq: Seq,
    },
    FromServer {
        group: Option<u8>,
        lane: LaneSpec,
        seq: Seq,
        len: Len,
    },
    Direct {
        from: u8,
        group: Option<u8>,
        memberships: Option<(i8, i8)>,
        lane: LaneSpec,
        seq: Seq,
        len: Len,
    },
    DirectAck {
        from: u8,
        received: Seq,
    },
    DirectOther {
        from: u8,
        hello: bool,
    },
    Datagram {
        from: u8,
        group: Option<u8>,
        lane: DatagramSpec,
        seq: Seq,
        len: Len,
        direct: bool,
        claim: Option<u8>,
    },
    SetDirect(u8),
    SetRelay(u8, u8),
    Send {
        target: TargetSpec,
        delivery: DeliverySpec,
        high: bool,
        len: Len,
        datagrams: bool,
    },
    Other(u8, u32),
    Raw(Vec<u8>),
    RawDatagram(Vec<u8>),
    RawPeer(u8, Vec<u8>),
    Wait(u16),
    WaitSeconds(u8),
    FlushAcks,
}

/// The sequence space of a lane: every latest key shares one counter.
fn space(lane: Lane) -> Lane {
    match lane {
        Lane::Latest { .. } => Lane::Latest { key: 0 },
        other => other,
    }
}

fn host(slot: u8) -> HostId {
    HostId::from_raw(1 << 32 | u64::from(slot))
}

/// Peers are hosts 2 to 5; index 4 names a host that never becomes one, 5 the server.
fn peer_of(index: u8) -> HostId {
    match index % 6 {
        4 => host(9),
        5 => HostId::SERVER,
        i => host(i + 2),
    }
}

fn group_of(index: u8) -> GroupId {
    GroupId::from_raw(1 << 32 | u64::from(index % 3 + 1))
}

/// What a tagged payload was: who sent it how.
#[derive(Debug, Clone, Copy)]
struct Offer {
    from: HostId,
    /// The pair it was sent under; `None` for the server application's messages.
    pair: Option<PairId>,
    lane: Option<Lane>,
    datagram: Option<DatagramLane>,
    seq: u64,
    direct: bool,
    memberships: Option<Memberships>,
}

/// The harness's picture of one peer: its pair as the session was told, what "it" sent.
#[derive(Debug, Default)]
struct PeerModel {
    pair: Option<PairId>,
    direct: bool,
    /// The numbers this harness's sender used per lane (the greatest).
    sent: HashMap<Lane, u64>,
    sent_datagrams: HashMap<u8, u64>,
    /// Numbers that arrived at the session, per lane (messages and skips).
    arrived: HashMap<Lane, BTreeSet<u64>>,
    /// Per lane, the numbers delivered.
    delivered: HashMap<Lane, BTreeSet<u64>>,
    delivered_datagrams: HashMap<u8, u64>,
    /// Ids of the direct data frames the session sent this peer, in order, and how many
    /// went out and were acked.
    direct_frames: Vec<u64>,
    direct_acked: usize,
    /// How many of `direct_frames` were reported to the session as gone out.
    direct_reported: usize,
    /// The session's own numbering towards the peer, per lane.
    assigned: HashMap<Lane, u64>,
    assigned_datagrams: HashMap<u8, u64>,
    /// Direct frames not yet acked: (lane, seq) by frame id.
    unacked: BTreeMap<u64, (Lane, u64)>,
}

struct Harness {
    session: FuzzSession,
    now: Instant,
    peers: HashMap<HostId, PeerModel>,
    /// Members and membership numbers of each group, as the session was told.
    groups: HashMap<GroupId, BTreeMap<HostId, u32>>,
    pair_gen: u64,
    ended_pairs: Vec<PairId>,
    offers: HashMap<u64, Offer>,
    delivered_offers: HashSet<u64>,
    next_offer: u64,
    notices: u64,
    last_ack: u64,
    server_sent: HashMap<Lane, u64>,
    server_arrived: HashMap<Lane, BTreeSet<u64>>,
    server_delivered: HashMap<Lane, BTreeSet<u64>>,
    closed: bool,
    /// Set once a raw frame was taken: the models no longer know what the session was
    /// told, so only the checks that need no model go on.
    raw: bool,
}

impl Harness {
    fn payload(&mut self, offer: Offer, len: Len) -> Bytes {
        let tag = self.next_offer;
        self.next_offer += 1;
        self.offers.insert(tag, offer);
        tagged_payload(tag, len.bytes())
    }

    fn seq(sent: &mut u64, spec: Seq) -> u64 {
        match spec {
            Seq::Next => {
                *sent += 1;
                *sent
            }
            Seq::Ahead(k) => {
                let seq = *sent + 2 + u64::from(k);
                *sent = seq;
                seq
            }
            Seq::Back(k) => sent.saturating_sub(u64::from(k)),
            Seq::Raw(n) => n,
        }
    }

    fn frame(&mut self, frame: ServerToClient) -> Result<(), String> {
        self.session.handle_frame(frame, self.now)
    }

    fn run(&mut self, op: Op) {
        let now = self.now;
        match op {
            Op::PeerUp(p) => {
                let peer = peer_of(p);
                if peer == HostId::SERVER {
                    return;
                }
                self.pair_gen += 1;
                let pair = PairId::from_raw(self.pair_gen << 33 | 1 << 32 | u64::from(p % 6));
                if let Some(old) = self.peers.get(&peer).and_then(|m| m.pair) {
                    self.ended_pairs.push(old);
                }
                self.peers.insert(
                    peer,
                    PeerModel {
                        pair: Some(pair),
                        ..PeerModel::default()
                    },
                );
                let info = PeerInfo {
                    identity: Fingerprint([p; 32]),
                };
                assert!(self
                    .frame(ServerToClient::PeerUp { peer, pair, info })
                    .is_ok());
            }
            Op::PeerDown { peer: p, stale } => {
                let peer = peer_of(p);
                let current = self.peers.get(&peer).and_then(|m| m.pair);
                let pair = match (stale, current) {
                    (false, Some(pair)) => pair,
                    _ => self
                        .ended_pairs
                        .last()
                        .copied()
                        .unwrap_or(PairId::from_raw(7)),
                };
                assert!(self.frame(ServerToClient::PeerDown { peer, pair }).is_ok());
                if current == Some(pair) {
                    self.peers.remove(&peer);
                    self.ended_pairs.push(pair);
                }
            }
            Op::Notices(specs) => {
                let mut notices = Vec::new();
                for spec in specs.into_iter().take(16) {
                    notices.push(match spec {
                        NoticeSpec::Joined {
                            group,
                            member,
                            membership,
                        } => {
                            let (group, member) = (
                                group_of(group),
                                if member % 7 == 6 { ME } else { peer_of(member) },
                            );
                            let membership = u32::from(membership % 8);
                            Notice::MemberJoined {
                                group,
                                member,
                                membership,
                                member_count: 1,
                                join_message: Bytes::new(),
                                member_data: Bytes::from_static(b"d"),
                                group_data: (member == ME).then(Bytes::new),
                            }
                        }
                        NoticeSpec::Left { group, member } => Notice::MemberLeft {
                            group: group_of(group),
                            member: if member % 7 == 6 { ME } else { peer_of(member) },
                            member_count: 0,
                        },
                        NoticeSpec::HostData { host } => Notice::HostData {
                            host: peer_of(host),
                            data: Bytes::new(),
                        },
                        NoticeSpec::GroupData { group } => Notice::GroupData {
                            group: group_of(group),
                            data: Bytes::new(),
                        },
                    });
                }
                // The model: a join records the membership; a leave of this client ends
                // its view of the group.
                for notice in &notices {
                    match notice {
                        Notice::MemberJoined {
                            group,
                            member,
                            membership,
                            ..
                        } => {
                            self.groups
                                .entry(*group)
                                .or_default()
                                .insert(*member, *membership);
                        }
                        Notice::MemberLeft { group, member, .. } if *member == ME => {
                            self.groups.remove(group);
                        }
                        Notice::MemberLeft { group, member, .. } => {
                            if let Some(view) = self.groups.get_mut(group) {
                                view.remove(member);
                            }
                        }
                        _ => {}
                    }
                }
                self.notices += notices.len() as u64;
                assert!(self.frame(ServerToClient::Notices(notices)).is_ok());
            }
            Op::Deliver {
                from,
                group,
                lane,
                seq,
                len,
            } => {
                let from = peer_of(from);
                let lane = lane.lane();
                let model = self.peers.get_mut(&from);
                let is_peer = model.is_some();
                let (pair, seq) = match model {
                    Some(m) => (
                        m.pair,
                        Self::seq(m.sent.entry(space(lane)).or_default(), seq),
                    ),
                    None => (None, Self::seq(&mut 0, seq)),
                };
                let offer = Offer {
                    from,
                    pair,
                    lane: Some(lane),
                    datagram: None,
                    seq,
                    direct: false,
                    memberships: None,
                };
                let payload = self.payload(offer, len);
                let result = self.frame(ServerToClient::Deliver {
                    from,
                    group: group.map(group_of),
                    lane,
                    seq,
                    payload,
                });
                // After a raw frame the model's peers may not be the session's.
                if self.raw {
                    self.closed |= result.is_err();
                } else if is_peer {
                    assert!(
                        result.is_ok(),
                        "a relayed message closed the connection: {result:?}"
                    );
                    self.arrived(from, lane, seq);
                } else {
                    assert!(
                        result.is_err(),
                        "a message from {from}, not a peer, accepted"
                    );
                    self.closed = true;
                }
            }
            Op::Skipped { from, lane, seq } => {
                let from = peer_of(from);
                let lane = lane.lane();
                let model = self.peers.get_mut(&from);
                let is_peer = model.is_some();
                let seq = match model {
                    Some(m) => Self::seq(m.sent.entry(space(lane)).or_default(), seq),
                    None => Self::seq(&mut 0, seq),
                };
                let result = self.frame(ServerToClient::Skipped { from, lane, seq });
                // After a raw frame the model's peers may not be the session's.
                if self.raw {
                    self.closed |= result.is_err();
                } else if is_peer {
                    assert!(
                        result.is_ok(),
                        "a relayed skip closed the connection: {result:?}"
                    );
                    self.arrived(from, lane, seq);
                } else {
                    assert!(result.is_err());
                    self.closed = true;
                }
            }
            Op::FromServer {
                group,
                lane,
                seq,
                len,
            } => {
                let lane = lane.lane();
                let seq = Self::seq(self.server_sent.entry(space(lane)).or_default(), seq);
                let offer = Offer {
                    from: HostId::SERVER,
                    pair: None,
                    lane: Some(lane),
                    datagram: None,
                    seq,
                    direct: false,
                    memberships: None,
                };
                let payload = self.payload(offer, len);
                let group = group.map(group_of);
                if self
                    .frame(ServerToClient::FromServer {
                        group,
                        lane,
                        seq,
                        payload,
                    })
                    .is_ok()
                {
                    self.server_arrived.entry(lane).or_default().insert(seq);
                } else {
                    self.closed = true;
                }
            }
            Op::Direct {
                from,
                group,
                memberships,
                lane,
                seq,
                len,
            } => {
                let from = peer_of(from);
                let Some(model) = self.peers.get_mut(&from) else {
                    return;
                };
                // The driver reads a direct connection only while it is up, and stops
                // reading while more than MAX_HELD_BYTES are held.
                if !model.direct || self.session.held_bytes(from) > MAX_HELD_BYTES {
                    return;
                }
                let lane = lane.lane();
                let seq = Self::seq(model.sent.entry(space(lane)).or_default(), seq);
                let pair = model.pair;
                let group = group.map(group_of);
                // Memberships relative to what the session was told: 0 is the current one.
                let memberships = group.zip(memberships).map(|(g, (sender, receiver))| {
                    let view = self.groups.get(&g);
                    let known = |h: HostId| view.and_then(|v| v.get(&h)).copied().unwrap_or(0);
                    Memberships {
                        sender: known(from).saturating_add_signed(i32::from(sender % 3)),
                        receiver: known(ME).saturating_add_signed(i32::from(receiver % 3)),
                    }
                });
                let offer = Offer {
                    from,
                    pair,
                    lane: Some(lane),
                    datagram: None,
                    seq,
                    direct: true,
                    memberships,
                };
                let payload = self.payload(offer, len);
                let frame = PeerToPeer::Data {
                    group,
                    memberships,
                    lane,
                    seq,
                    payload,
                };
                match self.session.handle_peer_frame(from, frame, now) {
                    Ok(()) => self.arrived(from, lane, seq),
                    Err(_) => self.direct_closed(from),
                }
            }
            Op::DirectAck { from, received } => {
                let from = peer_of(from);
                let Some(model) = self.peers.get_mut(&from) else {
                    return;
                };
                if !model.direct {
                    return;
                }
                let mut acked = model.direct_acked as u64;
                let received = Self::seq(&mut acked, received);
                let frames = model.direct_frames.clone();
                // The queue is modelled FIFO: every frame planned so far went out.
                let reported = std::mem::replace(&mut model.direct_reported, frames.len());
                self.session
                    .handle_direct_sent(from, frames[reported..].iter().copied());
                let result = self.session.handle_direct_ack(from, received);
                let model = self.peers.get_mut(&from).expect("peer");
                match result {
                    Ok(()) => {
                        if received as usize > model.direct_acked {
                            for id in &frames[model.direct_acked..received as usize] {
                                model.unacked.remove(id);
                            }
                            model.direct_acked = received as usize;
                        }
                    }
                    Err(_) => {
                        assert!(
                            self.raw || received as usize > frames.len(),
                            "a valid ack refused"
                        );
                        self.direct_closed(from);
                    }
                }
            }
            Op::DirectOther { from, hello } => {
                let from = peer_of(from);
                if !self.peers.get(&from).is_some_and(|m| m.direct) {
                    return;
                }
                let frame = if hello {
                    PeerToPeer::Hello {
                        pair: PairId::from_raw(1),
                        host: from,
                    }
                } else {
                    PeerToPeer::Ack { received: 1 }
                };
                assert!(self.session.handle_peer_frame(from, frame, now).is_err());
                self.direct_closed(from);
            }
            Op::Datagram {
                from,
                group,
                lane,
                seq,
                len,
                direct,
                claim,
            } => {
                let from = peer_of(from);
                let lane = match lane {
                    DatagramSpec::Plain => DatagramLane::Plain,
                    DatagramSpec::Sequenced(c) => DatagramLane::Sequenced { channel: c % 3 },
                    DatagramSpec::Ping(id) => DatagramLane::Ping { id },
                    DatagramSpec::Pong(id) => DatagramLane::Pong { id },
                };
                let model = self.peers.get_mut(&from);
                let pair = model.as_ref().and_then(|m| m.pair);
                let seq = match (model, lane) {
                    (Some(m), DatagramLane::Sequenced { channel }) => {
                        Self::seq(m.sent_datagrams.entry(channel).or_default(), seq)
                    }
                    _ => Self::seq(&mut 0, seq),
                };
                let offer = Offer {
                    from,
                    pair,
                    lane: None,
                    datagram: Some(lane),
                    seq,
                    direct,
                    memberships: None,
                };
                let payload = self.payload(offer, len);
                let datagram = |from| ServerDatagram::Deliver {
                    from,
                    group: group.map(group_of),
                    lane,
                    seq,
                    payload: payload.clone(),
                };
                if direct {
                    if !self.peers.get(&from).is_some_and(|m| m.direct) {
                        return;
                    }
                    // A claim of another sender is a lie the session must ignore.
                    let claimed = claim.map_or(from, peer_of);
                    if claimed != from {
                        self.offers
                            .get_mut(&(self.next_offer - 1))
                            .expect("offer")
                            .from = claimed;
                    }
                    self.session
                        .handle_peer_datagram(from, datagram(claimed), now);
                } else {
                    self.session.handle_datagram(datagram(from), now);
                }
            }
            Op::SetDirect(p) => {
                let peer = peer_of(p);
                let up = self.session.set_direct(peer, Duration::from_millis(5), now);
                assert!(self.raw || up == self.peers.contains_key(&peer));
                if let Some(model) = self.peers.get_mut(&peer) {
                    model.direct = true;
                    model.direct_frames.clear();
                    model.direct_acked = 0;
                    model.direct_reported = 0;
                    model.unacked.clear();
                }
            }
            Op::SetRelay(p, reason) => {
                let peer = peer_of(p);
                let reason = [
                    PathReason::DirectTimedOut,
                    PathReason::DirectClosed,
                    PathReason::PairEnded,
                ][usize::from(reason % 3)];
                self.session.set_relay(peer, reason, now);
                self.relayed_again(peer);
            }
            Op::Send {
                target,
                delivery,
                high,
                len,
                datagrams,
            } => {
                let target = match target {
                    TargetSpec::Host(h) => Target::Host(if h % 7 == 6 { ME } else { peer_of(h) }),
                    TargetSpec::Group(g) => Target::Group(group_of(g)),
                    TargetSpec::GroupLoopback(g) => Target::GroupLoopback(group_of(g)),
                    TargetSpec::Server => Target::Server,
                    TargetSpec::Hosts(hosts) => {
                        Target::Hosts(hosts.into_iter().take(8).map(peer_of).collect())
                    }
                };
                let (delivery, channel) = match delivery {
                    DeliverySpec::Ordered(c) => (Delivery::ReliableOrdered, c % 3),
                    DeliverySpec::Unordered => (Delivery::ReliableUnordered, 0),
                    DeliverySpec::Latest(k) => (
                        Delivery::Latest {
                            key: u64::from(k % 3),
                        },
                        0,
                    ),
                    DeliverySpec::Unreliable => (Delivery::Unreliable, 0),
                    DeliverySpec::Sequenced(c) => (Delivery::UnreliableSequenced, c % 3),
                };
                let priority = if high { Priority::High } else { Priority::Low };
                let options = SendOptions {
                    delivery,
                    channel,
                    priority,
                };
                let payload = tagged_payload(u64::MAX, len.bytes());
                let _ = self
                    .session
                    .send(&target, payload, options, datagrams.then_some(1200));
                self.sent_by_session();
            }
            Op::Other(kind, n) => {
                let frame = match kind % 5 {
                    0 => ServerToClient::Welcome {
                        version: 3,
                        host_id: ME,
                        app_data: Bytes::new(),
                        max_frame_len: n,
                    },
                    1 => ServerToClient::Refused {
                        pair: self.peers.values().next().and_then(|m| m.pair),
                        group: Some(group_of(kind)),
                        reason: RefuseReason::DestNotInGroup,
                    },
                    2 => ServerToClient::Time {
                        token: u64::from(n),
                        server_time_us: u64::from(n) * 3,
                    },
                    _ => {
                        let peer = peer_of(kind / 5);
                        let pair = self
                            .peers
                            .get(&peer)
                            .and_then(|m| m.pair)
                            .unwrap_or(PairId::from_raw(5));
                        ServerToClient::PunchOrder(PunchOrder {
                            peer,
                            pair,
                            attempt: n,
                            secret: [7; 32],
                            candidates: vec![([192, 0, 2, 1], 9).into()],
                            start_in_ms: n % 100,
                            controlling: kind % 2 == 0,
                        })
                    }
                };
                let welcome = matches!(frame, ServerToClient::Welcome { .. });
                let result = self.frame(frame);
                assert_eq!(result.is_err(), welcome, "{result:?}");
                self.closed |= welcome;
            }
            Op::Raw(bytes) => {
                // Any frame the server could send, as decoded from the wire. The harness
                // knows nothing of what it does, so the models stop at the first one that
                // decodes.
                if let Ok(frame) = decode_body::<ServerToClient>(&bytes) {
                    self.raw = true;
                    if self.frame(frame).is_err() {
                        self.closed = true;
                    }
                }
            }
            Op::RawDatagram(bytes) => {
                if let Ok(datagram) = decode_body::<ServerDatagram>(&bytes) {
                    self.raw = true;
                    self.session.handle_datagram(datagram, now);
                }
            }
            Op::RawPeer(p, bytes) => {
                let from = peer_of(p);
                if let Ok(frame) = decode_body::<PeerToPeer>(&bytes) {
                    self.raw = true;
                    if self.session.handle_peer_frame(from, frame, now).is_err() {
                        self.direct_closed(from);
                    }
                }
            }
            Op::Wait(ms) => self.wait(Duration::from_millis(u64::from(ms))),
            Op::WaitSeconds(s) => self.wait(Duration::from_secs(u64::from(s % 90))),
            Op::FlushAcks => self.session.flush_acks(),
        }
        self.take_uploads(&[]);
        self.take_events();
        self.check_bounds();
    }
}

impl Harness {
    fn arrived(&mut self, from: HostId, lane: Lane, seq: u64) {
        if let Some(model) = self.peers.get_mut(&from) {
            model.arrived.entry(lane).or_default().insert(seq);
        }
    }

    /// The driver closes a direct connection that broke the protocol: back to the relay.
    fn direct_closed(&mut self, peer: HostId) {
        self.session
            .set_relay(peer, PathReason::DirectClosed, self.now);
        self.relayed_again(peer);
    }

    /// After a fall back to the relay: what went direct unacked is sent again.
    fn relayed_again(&mut self, peer: HostId) {
        self.take_uploads(&[peer]);
        self.forget_direct(peer);
    }

    fn forget_direct(&mut self, peer: HostId) {
        if let Some(model) = self.peers.get_mut(&peer) {
            model.direct = false;
            model.unacked.clear();
            model.direct_frames.clear();
            model.direct_acked = 0;
            model.direct_reported = 0;
        }
    }

    fn wait(&mut self, by: Duration) {
        self.now += by;
        self.session.handle_timeout(self.now);
        // Direct peers that left a message unacked for the ack timeout went back to the
        // relay, with what they did not ack; the driver closes their connections.
        let stalled: Vec<HostId> =
            std::iter::from_fn(|| self.session.poll_stalled_link()).collect();
        if !stalled.is_empty() {
            self.take_uploads(&stalled);
            for peer in stalled {
                self.forget_direct(peer);
            }
        }
        assert!(
            self.session.poll_timeout().is_none_or(|at| at > self.now),
            "periodic work still due"
        );
    }

    /// The peer whose current pair is `pair`.
    fn peer_with_pair(&self, pair: PairId) -> Option<HostId> {
        self.peers
            .iter()
            .find(|(_, m)| m.pair == Some(pair))
            .map(|(h, _)| *h)
    }

    /// A number the session assigned towards `peer`: the next one, or (when `resent`)
    /// one that went direct unacked.
    fn assigned(&mut self, peer: HostId, lane: Lane, seq: u64, resent: bool) {
        let model = self.peers.get_mut(&peer).expect("peer");
        let last = model.assigned.entry(space(lane)).or_default();
        if resent {
            assert!(
                model.unacked.values().any(|&(l, s)| l == lane && s == seq),
                "resent {lane:?} {seq} to {peer}, which did not go direct unacked"
            );
        } else {
            assert_eq!(seq, *last + 1, "{lane:?} to {peer} not numbered in turn");
            *last = seq;
        }
    }

    fn assigned_datagram(&mut self, peer: HostId, lane: DatagramLane, seq: u64) {
        let model = self.peers.get_mut(&peer).expect("peer");
        match lane {
            DatagramLane::Plain => assert_eq!(seq, 0),
            DatagramLane::Sequenced { channel } => {
                let last = model.assigned_datagrams.entry(channel).or_default();
                assert_eq!(seq, *last + 1, "sequenced datagrams not numbered in turn");
                *last = seq;
            }
            DatagramLane::Ping { .. } | DatagramLane::Pong { .. } => {}
        }
    }

    fn sent_by_session(&mut self) {
        self.take_uploads(&[]);
    }

    /// Checks and records what the session asks to send. `resent_to`: the peers whose
    /// unacked direct messages may be sent again now.
    fn take_uploads(&mut self, resent_to: &[HostId]) {
        while let Some(upload) = self.session.poll_upload() {
            if self.raw {
                continue;
            }
            match upload {
                Upload::Control(ClientToServer::Ack { notices }) => {
                    assert_eq!(notices, self.notices, "acked notices");
                    assert!(notices >= self.last_ack);
                    self.last_ack = notices;
                }
                Upload::Control(_) => {}
                Upload::Relay { frame, .. } => {
                    let ClientToServer::Relay { lane, dests, .. } = frame else {
                        panic!("a relay upload with {frame:?}");
                    };
                    for dest in dests {
                        let peer = self.peer_with_pair(dest.pair).unwrap_or_else(|| {
                            panic!("an upload names {}, no current pair", dest.pair)
                        });
                        let resent = resent_to.contains(&peer);
                        self.assigned(peer, lane, dest.seq, resent);
                    }
                }
                Upload::Datagram(ClientDatagram::Relay { lane, dests, .. }) => {
                    for dest in dests {
                        let peer = self.peer_with_pair(dest.pair).unwrap_or_else(|| {
                            panic!("a datagram names {}, no current pair", dest.pair)
                        });
                        self.assigned_datagram(peer, lane, dest.seq);
                    }
                }
                Upload::Peer { to, frame, id, .. } => {
                    let PeerToPeer::Data { lane, seq, .. } = frame else {
                        panic!("a direct upload with {frame:?}");
                    };
                    assert!(
                        self.peers.get(&to).is_some_and(|m| m.direct),
                        "direct to {to}, not direct"
                    );
                    self.assigned(to, lane, seq, false);
                    let model = self.peers.get_mut(&to).expect("peer");
                    model.direct_frames.push(id);
                    model.unacked.insert(id, (lane, seq));
                }
                Upload::PeerControl { to, .. } => assert!(self.peers.contains_key(&to)),
                Upload::PeerDatagram { to, datagram } => {
                    let ServerDatagram::Deliver {
                        from, lane, seq, ..
                    } = datagram;
                    assert_eq!(from, ME);
                    self.assigned_datagram(to, lane, seq);
                }
            }
        }
    }

    fn take_events(&mut self) {
        while let Some(event) = self.session.poll_event() {
            let ClientEvent::Message {
                from,
                group,
                payload,
                delivery,
                channel,
                path,
            } = event
            else {
                continue;
            };
            if self.raw || path == peergroup_protocol::Path::Loopback {
                continue;
            }
            let tag = payload_tag(&payload).expect("a tagged payload");
            let offer = *self
                .offers
                .get(&tag)
                .unwrap_or_else(|| panic!("message {tag} never sent"));
            assert!(
                self.delivered_offers.insert(tag),
                "message {tag} delivered twice"
            );
            assert_eq!(offer.from, from, "sender");
            assert_eq!(
                offer.direct,
                path == peergroup_protocol::Path::Direct,
                "path"
            );
            if from == HostId::SERVER {
                if let Some(lane) = offer.lane {
                    assert_eq!((delivery, channel), (lane.delivery(), lane.channel()));
                    in_order(
                        lane,
                        offer.seq,
                        &self.server_arrived,
                        &mut self.server_delivered,
                    );
                }
                continue;
            }
            let model = self.peers.get_mut(&from).expect("a message from a peer");
            assert_eq!(model.pair, offer.pair, "a message sent under an ended pair");
            if let Some(g) = group {
                let view = self.groups.get(&g);
                let of = |h: HostId| view.and_then(|v| v.get(&h)).copied();
                assert!(
                    of(ME).is_some() && of(from).is_some(),
                    "{from} -> {g}: not both members"
                );
                if let Some(m) = offer.memberships {
                    assert_eq!(
                        (Some(m.sender), Some(m.receiver)),
                        (of(from), of(ME)),
                        "memberships"
                    );
                }
            }
            if let Some(lane) = offer.lane {
                assert_eq!((delivery, channel), (lane.delivery(), lane.channel()));
                in_order(lane, offer.seq, &model.arrived, &mut model.delivered);
            }
            if let Some(DatagramLane::Sequenced { channel }) = offer.datagram {
                let newest = model.delivered_datagrams.entry(channel).or_default();
                assert!(offer.seq > *newest, "an older sequenced datagram delivered");
                *newest = offer.seq;
            }
        }
    }

    fn check_bounds(&self) {
        for index in 0..6 {
            let peer = peer_of(index);
            let lanes = self.session.lane_held_bytes(peer);
            assert!(
                lanes <= MAX_HELD_BYTES_RELAYED,
                "{lanes} bytes of early arrivals held"
            );
            let awaiting = self.session.awaiting_len(peer);
            assert!(
                awaiting <= MAX_AWAITING,
                "{awaiting} messages wait for notices"
            );
            let held = self.session.held_bytes(peer);
            assert!(held <= HELD_BYTES_BOUND, "{held} bytes held for {peer}");
            let waiting = held - lanes;
            assert!(
                waiting <= MAX_HELD_BYTES_RELAYED,
                "{waiting} bytes wait for notices"
            );
        }
    }
}

/// Checks one delivery on a stream lane against what arrived and was delivered before.
fn in_order(
    lane: Lane,
    seq: u64,
    arrived: &HashMap<Lane, BTreeSet<u64>>,
    delivered: &mut HashMap<Lane, BTreeSet<u64>>,
) {
    let done = delivered.entry(lane).or_default();
    match lane {
        Lane::Ordered { .. } => {
            let last = done.last().copied().unwrap_or(0);
            assert!(seq > last, "ordered: {seq} after {last}");
            let arrived = arrived.get(&lane);
            for before in last + 1..seq {
                assert!(
                    arrived.is_some_and(|a| a.contains(&before)),
                    "ordered: {seq} delivered before {before} arrived"
                );
            }
        }
        Lane::Unordered => assert!(!done.contains(&seq), "unordered: {seq} twice"),
        Lane::Latest { .. } => {
            let last = done.last().copied().unwrap_or(0);
            assert!(seq > last, "latest: {seq} after {last}");
        }
    }
    done.insert(seq);
}

fuzz_target!(|ops: Vec<Op>| {
    let now = Instant::now();
    let max_frame_len = (MAX_MESSAGE as u32) + FRAME_HEADROOM;
    let mut h = Harness {
        session: FuzzSession::new(ME, max_frame_len, WINDOW, true, now),
        now,
        peers: HashMap::new(),
        groups: HashMap::new(),
        pair_gen: 0,
        ended_pairs: Vec::new(),
        offers: HashMap::new(),
        delivered_offers: HashSet::new(),
        next_offer: 0,
        notices: 0,
        last_ack: 0,
        server_sent: HashMap::new(),
        server_arrived: HashMap::new(),
        server_delivered: HashMap::new(),
        closed: false,
        raw: false,
    };
    for op in ops.into_iter().take(512) {
        // A frame the connection closed on ends it: nothing more arrives.
        if h.closed {
            return;
        }
        h.run(op);
    }
    // Nothing waits for a membership notice past the wait.
    h.wait(MEMBERSHIP_WAIT + Duration::from_millis(1));
    h.take_uploads(&[]);
    h.take_events();
    for index in 0..6 {
        assert_eq!(
            h.session.awaiting_len(peer_of(index)),
            0,
            "still waiting past the limit"
        );
    }
});
