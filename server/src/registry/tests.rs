//! Registry tests on a made-up clock: exact notices, ack completion, pairs and relay rules.

use super::*;
use peergroup_protocol::ServerToClient as S;
use peergroup_protocol::{DatagramLane, Delivery, Lane, Priority};
use peergroup_protocol::{Fingerprint, PairId, PeerInfo, RefuseReason, RelayDest, ServerDatagram};
use peergroup_protocol::{PairPath, PathReason, PunchOutcome};
use std::collections::HashMap;
use std::net::SocketAddr;

mod app_send;
mod inputs;
mod resume;

fn identity(n: u8) -> Fingerprint {
    Fingerprint([n; 32])
}

struct World {
    registry: Registry,
    now: Instant,
    /// Notices each host was sent so far, counted as the actions are drained.
    notices: HashMap<HostId, u64>,
}

impl World {
    fn new() -> Self {
        Self {
            registry: Registry::new(RegistryConfig::default(), Instant::now()),
            now: Instant::now(),
            notices: HashMap::new(),
        }
    }

    fn connect(&mut self, n: u8) -> HostId {
        // Each host behind its own NAT unless a test says otherwise.
        let seen_at = SocketAddr::from(([198, 18, 0, n], 40_000 + u16::from(n)));
        self.registry
            .handle_connect(identity(n), seen_at, Bytes::new())
    }

    fn connect_at(&mut self, n: u8, seen_at: &str) -> HostId {
        self.registry
            .handle_connect(identity(n), seen_at.parse().unwrap(), Bytes::new())
    }

    fn with_punch(punch: PunchConfig) -> Self {
        Self {
            registry: Registry::new(
                RegistryConfig {
                    punch,
                    ..RegistryConfig::default()
                },
                Instant::now(),
            ),
            now: Instant::now(),
            notices: HashMap::new(),
        }
    }

    fn drain(&mut self) -> Vec<Action> {
        let actions: Vec<Action> = std::iter::from_fn(|| self.registry.poll_action()).collect();
        for action in &actions {
            if let Action::Notice { to, .. } = action {
                *self.notices.entry(*to).or_default() += 1;
            }
        }
        actions
    }

    /// `host` acks every notice it was sent so far (as drained).
    fn ack(&mut self, host: HostId) {
        let sent = self.notices.get(&host).copied().unwrap_or(0);
        self.registry
            .handle_ack(host, sent)
            .expect("acks what was sent");
    }

    /// What `to` was sent, in order, from the drained actions: frames, and each notice
    /// as a `Notices` frame of its own (the driver merges them).
    fn frames_to(actions: &[Action], to: HostId) -> Vec<S> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send { to: t, message } | Action::SendData { to: t, message, .. }
                    if *t == to =>
                {
                    Some(message.clone())
                }
                Action::Notice { to: t, notice, .. } if *t == to => {
                    // Membership numbers have a test of their own; here they are left out.
                    let mut notice = notice.clone();
                    if let Notice::MemberJoined { membership, .. } = &mut notice {
                        *membership = 0;
                    }
                    Some(S::Notices(vec![notice]))
                }
                _ => None,
            })
            .collect()
    }

    fn events(actions: &[Action]) -> Vec<ServerEvent> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Event(e) => Some(e.clone()),
                _ => None,
            })
            .collect()
    }

    /// A group of `members` with default options and join message "hi", created now.
    fn group(&mut self, members: &[HostId]) -> GroupId {
        self.registry
            .create_group(
                members,
                GroupOptions::default(),
                Bytes::new(),
                "hi".into(),
                self.now,
            )
            .unwrap()
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        self.registry.handle_timeout(self.now);
    }
}

/// The notice about another `member` joining (hosts here have empty data).
fn joined(group: GroupId, member: HostId, member_count: u32) -> S {
    S::Notices(vec![Notice::MemberJoined {
        group,
        member,
        membership: 0,
        member_count,
        join_message: Bytes::from_static(b"hi"),
        member_data: Bytes::new(),
        group_data: None,
    }])
}

/// The joiner's notice about itself, which carries the group's (empty) data.
fn joined_self(group: GroupId, member: HostId, member_count: u32) -> S {
    S::Notices(vec![Notice::MemberJoined {
        group,
        member,
        membership: 0,
        member_count,
        join_message: Bytes::from_static(b"hi"),
        member_data: Bytes::new(),
        group_data: Some(Bytes::new()),
    }])
}

fn left(group: GroupId, member: HostId, member_count: u32) -> S {
    S::Notices(vec![Notice::MemberLeft {
        group,
        member,
        member_count,
    }])
}

fn pair_of(actions: &[Action], to: HostId, peer: HostId) -> PairId {
    World::frames_to(actions, to)
        .into_iter()
        .find_map(|f| match f {
            S::PeerUp { peer: p, pair, .. } if p == peer => Some(pair),
            _ => None,
        })
        .expect("a PeerUp about the peer")
}

fn ack_all(world: &mut World, hosts: &[HostId]) {
    for &host in hosts {
        world.ack(host);
    }
}

#[test]
fn join_notifies_everyone_in_proudnet_order_and_completes_on_all_acks() {
    let mut w = World::new();
    let (a, b) = (w.connect(1), w.connect(2));
    let g = w.group(&[a]);
    let first = w.drain();
    assert_eq!(World::frames_to(&first, a), vec![joined_self(g, a, 1)]);
    w.ack(a);
    assert_eq!(
        World::events(&w.drain()),
        vec![ServerEvent::JoinAckComplete {
            group: g,
            member: a,
            result: Ok(())
        }]
    );

    assert_eq!(
        w.registry.join_group(g, b, "hi".into(), w.now),
        Ok(JoinOutcome::Joined)
    );
    let actions = w.drain();
    let pair = pair_of(&actions, a, b);
    let to_a = World::frames_to(&actions, a);
    let to_b = World::frames_to(&actions, b);
    let peer_up = |peer, n| S::PeerUp {
        peer,
        pair,
        info: PeerInfo {
            identity: identity(n),
        },
    };
    assert_eq!(to_a, vec![peer_up(b, 2), joined(g, b, 2)]);
    assert_eq!(
        to_b,
        vec![peer_up(a, 1), joined(g, a, 2), joined_self(g, b, 2)]
    );

    // B's acks alone are not enough (its catch-up notice about A is not the one owed);
    // A's completes the join.
    w.registry.handle_ack(b, 1).unwrap();
    w.registry.handle_ack(b, 2).unwrap();
    assert!(World::events(&w.drain()).is_empty());
    w.registry.handle_ack(a, 2).unwrap();
    assert_eq!(
        World::events(&w.drain()),
        vec![ServerEvent::JoinAckComplete {
            group: g,
            member: b,
            result: Ok(())
        }]
    );
}

#[test]
fn joining_twice_is_already_member_and_sends_nothing() {
    let mut w = World::new();
    let a = w.connect(1);
    let g = w.group(&[a]);
    w.drain();
    assert_eq!(
        w.registry.join_group(g, a, "hi".into(), w.now),
        Ok(JoinOutcome::AlreadyMember)
    );
    assert!(w.drain().is_empty());
}

#[test]
fn leave_tells_the_rest_and_the_leaver_hears_everyone_including_itself() {
    let mut w = World::new();
    let (a, b, c) = (w.connect(1), w.connect(2), w.connect(3));
    let g = w.group(&[a, b, c]);
    w.drain();
    w.registry.leave_group(g, b, w.now).unwrap();
    let actions = w.drain();
    assert_eq!(World::frames_to(&actions, a), vec![left(g, b, 2)]);
    assert_eq!(World::frames_to(&actions, c), vec![left(g, b, 2)]);
    assert_eq!(
        World::frames_to(&actions, b),
        vec![left(g, a, 2), left(g, c, 2), left(g, b, 2)]
    );
    assert_eq!(
        w.registry.leave_group(g, b, w.now),
        Err(GroupError::NotMember { group: g, host: b })
    );
    assert_eq!(w.registry.group_members(g).unwrap(), vec![a, c]);
    assert_eq!(w.registry.groups_of(b).unwrap(), vec![]);
}

#[test]
fn leaving_before_acks_ends_the_join_with_member_left() {
    let mut w = World::new();
    let (a, b) = (w.connect(1), w.connect(2));
    let g = w.group(&[a, b]);
    w.drain();
    w.registry.leave_group(g, b, w.now).unwrap();
    let events = World::events(&w.drain());
    assert!(events.contains(&ServerEvent::JoinAckComplete {
        group: g,
        member: b,
        result: Err(JoinAckError::MemberLeft)
    }));
    // A's own join completes once A acks; B's leave needs B's ack too.
    w.ack(a);
    assert_eq!(
        World::events(&w.drain()),
        vec![ServerEvent::JoinAckComplete {
            group: g,
            member: a,
            result: Ok(())
        }]
    );
    w.ack(b);
    assert_eq!(
        World::events(&w.drain()),
        vec![ServerEvent::LeaveAckComplete {
            group: g,
            member: b,
            result: Ok(())
        }]
    );
}

#[test]
fn destroy_ends_pending_joins_then_removes_the_group() {
    let mut w = World::new();
    let (a, b) = (w.connect(1), w.connect(2));
    let g = w.group(&[a, b]);
    w.drain();
    w.registry.destroy_group(g, w.now).unwrap();
    let actions = w.drain();
    let events = World::events(&actions);
    assert_eq!(
        events.last(),
        Some(&ServerEvent::GroupRemoved { group: g }),
        "GroupRemoved comes after the leaves"
    );
    for member in [a, b] {
        assert!(events.contains(&ServerEvent::JoinAckComplete {
            group: g,
            member,
            result: Err(JoinAckError::GroupDestroyed)
        }));
    }
    assert!(World::frames_to(&actions, a).contains(&left(g, a, 1)));
    assert_eq!(
        w.registry.group_members(g),
        Err(GroupError::UnknownGroup(g))
    );
    assert_eq!(
        w.registry.destroy_group(g, w.now),
        Err(GroupError::UnknownGroup(g))
    );
}

#[test]
fn disconnect_leaves_every_group_and_ends_pairs_at_once() {
    let mut w = World::new();
    let (a, b) = (w.connect(1), w.connect(2));
    let g1 = w.group(&[a, b]);
    let g2 = w.group(&[a, b]);
    let setup = w.drain();
    let pair = pair_of(&setup, a, b);
    ack_all(&mut w, &[a, b]);
    w.drain();

    w.registry.handle_disconnect(b, w.now);
    let actions = w.drain();
    assert_eq!(
        World::frames_to(&actions, a),
        vec![
            left(g1, b, 1),
            left(g2, b, 1),
            S::PeerDown { peer: b, pair }
        ]
    );
    assert!(World::frames_to(&actions, b).is_empty(), "b is gone");
    assert!(!w.registry.is_connected(b));
    assert_eq!(w.registry.pair_count(), 0);
    assert_eq!(
        w.registry.join_group(g1, b, "hi".into(), w.now),
        Err(GroupError::UnknownHost(b))
    );
}

#[test]
fn disconnect_during_join_reports_disconnected() {
    let mut w = World::new();
    let (a, b) = (w.connect(1), w.connect(2));
    let g = w.group(&[a, b]);
    w.drain();
    w.registry.handle_disconnect(b, w.now);
    assert!(
        World::events(&w.drain()).contains(&ServerEvent::JoinAckComplete {
            group: g,
            member: b,
            result: Err(JoinAckError::Disconnected)
        })
    );
}

#[test]
fn missing_acks_time_out_after_the_configured_time_and_not_before() {
    let mut w = World::new();
    let a = w.connect(1);
    let g = w.group(&[a]);
    w.drain();
    assert_eq!(
        w.registry.poll_timeout(),
        Some(w.now + Duration::from_secs(15))
    );
    w.advance(Duration::from_millis(14_999));
    assert!(World::events(&w.drain()).is_empty());
    w.advance(Duration::from_millis(1));
    assert_eq!(
        World::events(&w.drain()),
        vec![ServerEvent::JoinAckComplete {
            group: g,
            member: a,
            result: Err(JoinAckError::Timeout)
        }]
    );
    w.ack(a);
    assert!(w.drain().is_empty(), "a late ack changes nothing");
}

#[test]
fn a_pair_lingers_after_the_last_shared_group_and_survives_a_quick_rejoin() {
    let mut w = World::new();
    let (a, b) = (w.connect(1), w.connect(2));
    let g = w.group(&[a, b]);
    let pair = pair_of(&w.drain(), a, b);
    w.registry.leave_group(g, b, w.now).unwrap();
    w.drain();
    w.advance(Duration::from_secs(5));
    w.registry.join_group(g, b, "hi".into(), w.now).unwrap();
    let rejoin = w.drain();
    assert!(
        !World::frames_to(&rejoin, a)
            .iter()
            .any(|f| matches!(f, S::PeerUp { .. })),
        "the pair is kept, so no new PeerUp"
    );
    assert_eq!(w.registry.pair_between(a, b), Some((pair, 1)));

    w.registry.leave_group(g, b, w.now).unwrap();
    w.drain();
    w.advance(Duration::from_millis(9_999));
    assert_eq!(w.registry.pair_count(), 1);
    w.advance(Duration::from_millis(1));
    let actions = w.drain();
    assert_eq!(
        World::frames_to(&actions, a),
        vec![S::PeerDown { peer: b, pair }]
    );
    assert_eq!(
        World::frames_to(&actions, b),
        vec![S::PeerDown { peer: a, pair }]
    );
}

#[test]
fn two_groups_share_one_pair() {
    let mut w = World::new();
    let (a, b) = (w.connect(1), w.connect(2));
    let opts = GroupOptions::default();
    let g1 = w
        .registry
        .create_group(&[a, b], opts, Bytes::new(), "hi".into(), w.now)
        .unwrap();
    w.registry
        .create_group(&[a, b], opts, Bytes::new(), "hi".into(), w.now)
        .unwrap();
    let actions = w.drain();
    let ups = World::frames_to(&actions, a)
        .into_iter()
        .filter(|f| matches!(f, S::PeerUp { .. }))
        .count();
    assert_eq!(ups, 1);
    w.registry.leave_group(g1, a, w.now).unwrap();
    assert_eq!(w.registry.pair_between(a, b).map(|p| p.1), Some(1));
    assert_eq!(w.registry.poll_timeout().map(|t| t > w.now), Some(true));
}

#[test]
fn group_without_allow_empty_is_removed_as_it_empties() {
    let mut w = World::new();
    let a = w.connect(1);
    let options = GroupOptions {
        allow_empty: false,
        ..GroupOptions::default()
    };
    assert_eq!(
        w.registry
            .create_group(&[], options, Bytes::new(), "hi".into(), w.now),
        Err(GroupError::EmptyNotAllowed)
    );
    let g = w
        .registry
        .create_group(&[a], options, Bytes::new(), "hi".into(), w.now)
        .unwrap();
    w.drain();
    w.registry.leave_group(g, a, w.now).unwrap();
    assert!(World::events(&w.drain()).contains(&ServerEvent::GroupRemoved { group: g }));
    assert!(w.registry.groups().is_empty());
}

#[test]
fn create_group_with_an_unknown_member_changes_nothing() {
    let mut w = World::new();
    let a = w.connect(1);
    let ghost = HostId::from_raw(12345 << 32 | 7);
    assert_eq!(
        w.registry.create_group(
            &[a, ghost],
            GroupOptions::default(),
            Bytes::new(),
            "hi".into(),
            w.now
        ),
        Err(GroupError::UnknownHost(ghost))
    );
    assert!(w.registry.groups().is_empty());
    assert!(w.drain().is_empty());
}

#[test]
fn a_stale_host_id_never_names_the_new_host_in_its_slot() {
    let mut w = World::new();
    let old = w.connect(1);
    w.registry.handle_disconnect(old, w.now);
    let new = w.connect(2);
    assert_ne!(old, new);
    assert!(!w.registry.is_connected(old));
    assert!(w.registry.is_connected(new));
    assert_ne!(old, HostId::SERVER);
    assert_ne!(new, HostId::SERVER);
}

#[test]
fn server_member_appears_in_notices_and_receives_group_messages() {
    let mut w = World::new();
    let a = w.connect(1);
    let options = GroupOptions {
        server_is_member: true,
        ..GroupOptions::default()
    };
    let g = w
        .registry
        .create_group(&[a], options, Bytes::new(), "hi".into(), w.now)
        .unwrap();
    let actions = w.drain();
    assert_eq!(
        World::frames_to(&actions, a),
        vec![joined(g, HostId::SERVER, 2), joined_self(g, a, 2)]
    );
    assert_eq!(
        w.registry.group_members(g).unwrap(),
        vec![HostId::SERVER, a]
    );
    w.registry.handle_relay(
        a,
        Some(g),
        true,
        Lane::Ordered { channel: 0 },
        Priority::Medium,
        &[],
        Bytes::from_static(b"x"),
        w.now,
    );
    assert_eq!(
        World::events(&w.drain()),
        vec![ServerEvent::Message {
            from: a,
            group: Some(g),
            payload: Bytes::from_static(b"x"),
            delivery: Delivery::ReliableOrdered,
            channel: 0,
        }]
    );
}

#[test]
fn relay_delivers_within_a_shared_group_stamped_with_the_real_sender() {
    let mut w = World::new();
    let (a, b) = (w.connect(1), w.connect(2));
    let g = w.group(&[a, b]);
    let pair = pair_of(&w.drain(), a, b);
    w.registry.handle_relay(
        a,
        Some(g),
        false,
        Lane::Ordered { channel: 0 },
        Priority::Medium,
        &[RelayDest { pair, seq: 1 }],
        Bytes::from_static(b"p"),
        w.now,
    );
    let actions = w.drain();
    assert_eq!(
        World::frames_to(&actions, b),
        vec![S::Deliver {
            from: a,
            group: Some(g),
            lane: Lane::Ordered { channel: 0 },
            seq: 1,
            payload: Bytes::from_static(b"p")
        }]
    );
    assert_eq!(w.registry.counters().relayed, 1);
    assert_eq!(w.registry.counters().relayed_bytes, 1);
}

#[test]
fn a_relayed_payload_is_shared_by_every_receiver_not_copied() {
    // Fan-out used to copy an upload into every receiver's queue (8 uploads of 1 MiB to
    // 60 peers held 420 MiB); each receiver's frame now points at the one received buffer.
    let mut w = World::new();
    let (hosts, g, mut dests) = group_of(&mut w, 61);
    for (seq, dest) in dests.iter_mut().enumerate() {
        dest.seq = seq as u64 + 1;
    }
    let upload = Bytes::from(vec![9u8; 1 << 20]);
    w.registry.handle_relay(
        hosts[0],
        Some(g),
        false,
        Lane::Ordered { channel: 0 },
        Priority::Medium,
        &dests,
        upload.clone(),
        w.now,
    );
    let payloads: Vec<Bytes> = w
        .drain()
        .into_iter()
        .filter_map(|action| match action {
            Action::SendData {
                message: S::Deliver { payload, .. },
                ..
            } => Some(payload),
            _ => None,
        })
        .collect();
    assert_eq!(payloads.len(), 60);
    for payload in &payloads {
        assert_eq!(
            payload.as_ptr(),
            upload.as_ptr(),
            "the same bytes, not a copy"
        );
        assert_eq!(payload.len(), upload.len());
    }
}

#[test]
fn relay_outside_a_shared_group_is_refused_counted_and_skipped_for_the_receiver() {
    let mut w = World::new();
    let (a, b, c) = (w.connect(1), w.connect(2), w.connect(3));
    let g = w.group(&[a, b]);
    let g_ac = w.group(&[a, c]);
    let pair_ab = pair_of(&w.drain(), a, b);
    w.registry.leave_group(g, b, w.now).unwrap(); // the pair now lingers
    w.drain();

    w.registry.handle_relay(
        a,
        None,
        false,
        Lane::Ordered { channel: 0 },
        Priority::Medium,
        &[RelayDest {
            pair: pair_ab,
            seq: 4,
        }],
        Bytes::from_static(b"p"),
        w.now,
    );
    let actions = w.drain();
    assert_eq!(
        World::frames_to(&actions, b),
        vec![S::Skipped {
            from: a,
            lane: Lane::Ordered { channel: 0 },
            seq: 4
        }]
    );
    assert_eq!(
        World::frames_to(&actions, a),
        vec![S::Refused {
            pair: Some(pair_ab),
            group: None,
            reason: RefuseReason::NoSharedGroup
        }]
    );

    // Naming a group the destination is not in is refused too.
    w.registry.handle_relay(
        a,
        Some(g_ac),
        false,
        Lane::Ordered { channel: 0 },
        Priority::Medium,
        &[RelayDest {
            pair: pair_ab,
            seq: 5,
        }],
        Bytes::from_static(b"p"),
        w.now,
    );
    assert!(World::frames_to(&w.drain(), a).contains(&S::Refused {
        pair: Some(pair_ab),
        group: Some(g_ac),
        reason: RefuseReason::DestNotInGroup
    }));

    // A pair the sender is not part of (B-C never shared a group, so C can only guess ids).
    w.registry.handle_relay(
        c,
        None,
        false,
        Lane::Ordered { channel: 0 },
        Priority::Medium,
        &[RelayDest {
            pair: pair_ab,
            seq: 1,
        }],
        Bytes::from_static(b"forged"),
        w.now,
    );
    let actions = w.drain();
    assert!(World::frames_to(&actions, b).is_empty());
    assert!(World::frames_to(&actions, a).is_empty());
    assert_eq!(
        World::frames_to(&actions, c),
        vec![S::Refused {
            pair: Some(pair_ab),
            group: None,
            reason: RefuseReason::UnknownPair
        }]
    );
    assert_eq!(w.registry.counters().relay_refused, 3);
}

#[test]
fn datagram_relay_follows_the_same_rule_without_skips() {
    let mut w = World::new();
    let (a, b) = (w.connect(1), w.connect(2));
    let g = w.group(&[a, b]);
    let pair = pair_of(&w.drain(), a, b);
    w.registry.handle_relay_datagram(
        a,
        Some(g),
        false,
        DatagramLane::Plain,
        0,
        &[RelayDest { pair, seq: 0 }],
        Bytes::from_static(b"d"),
        w.now,
    );
    assert_eq!(
        w.drain(),
        vec![Action::Datagram {
            to: vec![(b, pair, 0)],
            sender: a,
            message: ServerDatagram::Deliver {
                from: a,
                group: Some(g),
                lane: DatagramLane::Plain,
                seq: 0,
                payload: Bytes::from_static(b"d")
            }
        }]
    );
    w.registry.leave_group(g, b, w.now).unwrap();
    w.drain();
    w.registry.handle_relay_datagram(
        a,
        None,
        false,
        DatagramLane::Plain,
        0,
        &[RelayDest { pair, seq: 0 }],
        Bytes::from_static(b"d"),
        w.now,
    );
    let actions = w.drain();
    assert!(World::frames_to(&actions, b).is_empty());
    assert_eq!(actions.len(), 1, "only the refusal to the sender");
}

/// A group of `size` hosts, host 1 first, and the pairs of host 1 with each other one.
fn group_of(w: &mut World, size: u8) -> (Vec<HostId>, GroupId, Vec<RelayDest>) {
    let hosts: Vec<HostId> = (1..=size).map(|n| w.connect(n)).collect();
    let g = w
        .registry
        .create_group(
            &hosts,
            GroupOptions::default(),
            Bytes::new(),
            "".into(),
            w.now,
        )
        .unwrap();
    let actions = w.drain();
    let dests = hosts[1..]
        .iter()
        .map(|&peer| RelayDest {
            pair: pair_of(&actions, hosts[0], peer),
            seq: 0,
        })
        .collect();
    (hosts, g, dests)
}

fn datagrams_out(actions: &[Action]) -> usize {
    actions
        .iter()
        .map(|a| match a {
            Action::Datagram { to, .. } => to.len(),
            _ => 0,
        })
        .sum()
}

#[test]
fn datagram_fan_out_is_held_to_the_senders_delivery_rate() {
    let mut w = World::new();
    w.registry = Registry::new(
        RegistryConfig {
            datagram_deliveries_per_sec: 100,
            ..RegistryConfig::default()
        },
        Instant::now(),
    );
    let (hosts, g, dests) = group_of(&mut w, 11); // 10 destinations a datagram
    let send = |w: &mut World| {
        w.registry.handle_relay_datagram(
            hosts[0],
            Some(g),
            false,
            DatagramLane::Plain,
            0,
            &dests,
            Bytes::from_static(b"d"),
            w.now,
        );
        datagrams_out(&w.drain())
    };
    // A burst of 100 deliveries: ten datagrams to ten members each, then nothing.
    for _ in 0..10 {
        assert_eq!(send(&mut w), 10);
    }
    assert_eq!(send(&mut w), 0, "past the budget");
    assert_eq!(w.registry.counters().datagrams_rate_limited, 1);
    // A tenth of a second refills ten deliveries: one more datagram.
    w.advance(Duration::from_millis(100));
    assert_eq!(send(&mut w), 10);
    assert_eq!(send(&mut w), 0);
    // Another member's budget is its own.
    w.registry.handle_relay_datagram(
        hosts[1],
        Some(g),
        false,
        DatagramLane::Plain,
        0,
        &[RelayDest {
            pair: dests[0].pair,
            seq: 0,
        }],
        Bytes::from_static(b"d"),
        w.now,
    );
    assert_eq!(datagrams_out(&w.drain()), 1);
}

#[test]
fn a_ping_goes_to_one_peer_never_to_a_group() {
    let mut w = World::new();
    let (hosts, g, dests) = group_of(&mut w, 4);
    let ping = |w: &mut World, dests: &[RelayDest]| {
        w.registry.handle_relay_datagram(
            hosts[0],
            Some(g),
            false,
            DatagramLane::Ping { id: 7 },
            0,
            dests,
            Bytes::new(),
            w.now,
        );
        datagrams_out(&w.drain())
    };
    // To three members at once, every one of them would answer: dropped.
    assert_eq!(ping(&mut w, &dests), 0);
    assert_eq!(w.registry.counters().datagrams_rate_limited, 1);
    assert_eq!(ping(&mut w, &dests[..1]), 1);
}

#[test]
fn messages_to_a_group_the_server_is_not_in_are_refused() {
    let mut w = World::new();
    let a = w.connect(1);
    let g = w.group(&[a]);
    w.drain();
    w.registry.handle_relay(
        a,
        Some(g),
        true,
        Lane::Ordered { channel: 0 },
        Priority::Medium,
        &[],
        Bytes::from_static(b"x"),
        w.now,
    );
    assert_eq!(
        World::frames_to(&w.drain(), a),
        vec![S::Refused {
            pair: None,
            group: Some(g),
            reason: RefuseReason::ServerNotMember
        }]
    );
    w.registry.handle_relay(
        a,
        None,
        true,
        Lane::Ordered { channel: 0 },
        Priority::Medium,
        &[],
        Bytes::from_static(b"x"),
        w.now,
    );
    assert!(matches!(
        World::events(&w.drain()).as_slice(),
        [ServerEvent::Message { group: None, .. }]
    ));
}

fn punches(actions: &[Action]) -> Vec<Action> {
    actions
        .iter()
        .filter(|a| matches!(a, Action::Punch { .. }))
        .cloned()
        .collect()
}

#[test]
fn a_new_pair_in_a_direct_group_is_ordered_to_punch_after_its_notices() {
    let mut w = World::new();
    let (a, b) = (w.connect(1), w.connect(2));
    w.group(&[a, b]);
    let actions = w.drain();
    let pair = pair_of(&actions, a, b);
    let last = actions.last().unwrap();
    assert_eq!(
        last,
        &Action::Punch {
            pair,
            attempt: 1,
            controlling: a.min(b),
            controlled: a.max(b),
            candidates_of_controlling: vec!["198.18.0.1:40001".parse().unwrap()],
            candidates_of_controlled: vec!["198.18.0.2:40002".parse().unwrap()],
        },
        "behind different NATs only server-reflexive candidates are offered"
    );
    assert_eq!(w.registry.punch_stats(a).unwrap().orders, 1);
    // A second shared group does not punch again.
    w.group(&[a, b]);
    assert!(punches(&w.drain()).is_empty());
}

#[test]
fn a_host_on_websocket_is_never_ordered_to_punch_and_its_pairs_stay_relayed() {
    let mut w = World::new();
    let (a, b, c) = (w.connect(1), w.connect(2), w.connect(3));
    // A has no UDP (WebSocket, issue 14): no pair of its punches, now or on a retry.
    w.registry.set_relay_only(a, true);
    w.group(&[a, b, c]);
    let actions = w.drain();
    let ordered = punches(&actions);
    let pair_bc = pair_of(&actions, b, c);
    assert!(
        matches!(ordered.as_slice(), [Action::Punch { pair, .. }] if *pair == pair_bc),
        "only the QUIC pair punches: {ordered:?}"
    );
    w.advance(Duration::from_secs(600));
    let later = punches(&w.drain());
    assert!(
        later
            .iter()
            .all(|p| matches!(p, Action::Punch { pair, .. } if *pair == pair_bc)),
        "{later:?}"
    );
    assert_eq!(w.registry.punch_stats(a).unwrap().orders, 0);
    assert_eq!(
        w.registry.pair_stats(a, b).unwrap().path,
        peergroup_protocol::PairPath::Relay
    );
}

#[test]
fn hosts_behind_one_nat_also_get_each_others_host_candidates() {
    let mut w = World::new();
    let a = w.connect_at(1, "203.0.113.9:50001");
    let b = w.connect_at(2, "203.0.113.9:50002");
    w.registry
        .handle_host_candidates(a, vec!["192.168.1.10:6000".parse().unwrap()]);
    w.registry
        .handle_host_candidates(b, vec!["192.168.1.11:6001".parse().unwrap()]);
    w.group(&[a, b]);
    let Some(Action::Punch {
        candidates_of_controlling,
        candidates_of_controlled,
        ..
    }) = punches(&w.drain()).pop()
    else {
        panic!("a punch order")
    };
    assert_eq!(
        candidates_of_controlling,
        vec![
            "203.0.113.9:50001".parse().unwrap(),
            "192.168.1.10:6000".parse().unwrap()
        ]
    );
    assert_eq!(
        candidates_of_controlled,
        vec![
            "203.0.113.9:50002".parse().unwrap(),
            "192.168.1.11:6001".parse().unwrap()
        ]
    );
}

#[test]
fn relay_only_groups_never_punch_until_a_direct_group_is_shared() {
    let mut w = World::new();
    let (a, b) = (w.connect(1), w.connect(2));
    let relay_only = GroupOptions {
        direct_p2p: false,
        ..GroupOptions::default()
    };
    w.registry
        .create_group(&[a, b], relay_only, Bytes::new(), "hi".into(), w.now)
        .unwrap();
    assert!(punches(&w.drain()).is_empty());
    w.group(&[a, b]);
    assert_eq!(punches(&w.drain()).len(), 1);
}

#[test]
fn just_in_time_mode_punches_on_the_first_message_only() {
    let mut w = World::with_punch(PunchConfig {
        start: PunchStart::OnFirstMessage,
        ..PunchConfig::default()
    });
    let (a, b) = (w.connect(1), w.connect(2));
    w.group(&[a, b]);
    let actions = w.drain();
    assert!(punches(&actions).is_empty());
    let pair = pair_of(&actions, a, b);
    w.registry.handle_want_direct(a, pair, w.now);
    assert_eq!(punches(&w.drain()).len(), 1);
    w.registry.handle_want_direct(b, pair, w.now);
    assert!(punches(&w.drain()).is_empty(), "one order per attempt");
}

#[test]
fn just_in_time_mode_also_punches_on_the_first_relayed_message() {
    let mut w = World::with_punch(PunchConfig {
        start: PunchStart::OnFirstMessage,
        ..PunchConfig::default()
    });
    let (a, b) = (w.connect(1), w.connect(2));
    w.group(&[a, b]);
    let pair = pair_of(&w.drain(), a, b);
    w.registry.handle_relay(
        a,
        None,
        false,
        Lane::Ordered { channel: 0 },
        Priority::Medium,
        &[RelayDest { pair, seq: 1 }],
        Bytes::from_static(b"first"),
        w.now,
    );
    let actions = w.drain();
    assert_eq!(punches(&actions).len(), 1);
    assert!(
        matches!(
            actions.first(),
            Some(Action::SendData {
                message: S::Deliver { .. },
                ..
            })
        ),
        "the message is relayed before the order goes out"
    );
}

#[test]
fn with_a_minimum_pair_age_only_pairs_that_last_punch() {
    let mut w = World::with_punch(PunchConfig {
        min_pair_age: Duration::from_secs(2),
        ..PunchConfig::default()
    });
    let (a, b, c) = (w.connect(1), w.connect(2), w.connect(3));
    w.registry
        .create_group(
            &[a, b],
            GroupOptions::default(),
            Bytes::new(),
            "lasting".into(),
            w.now,
        )
        .unwrap();
    let brief = w
        .registry
        .create_group(
            &[a, c],
            GroupOptions::default(),
            Bytes::new(),
            "brief".into(),
            w.now,
        )
        .unwrap();
    let actions = w.drain();
    assert!(punches(&actions).is_empty(), "young pairs do not punch");
    let pair_ab = pair_of(&actions, a, b);
    assert_eq!(
        w.registry.poll_timeout(),
        Some(w.now + Duration::from_secs(2))
    );

    // A and C part before their pair is old enough (and the pair ends after lingering):
    // it never punches. A and B's pair punches once it is 2 s old, not before.
    w.advance(Duration::from_millis(500));
    w.registry.leave_group(brief, c, w.now).unwrap();
    w.advance(Duration::from_millis(1_499));
    assert!(punches(&w.drain()).is_empty());
    w.advance(Duration::from_millis(1));
    let ordered = punches(&w.drain());
    assert!(
        matches!(ordered.as_slice(), [Action::Punch { pair, .. }] if *pair == pair_ab),
        "{ordered:?}"
    );
    w.advance(Duration::from_secs(30));
    assert!(
        punches(&w.drain()).is_empty(),
        "the brief pair never punched"
    );
}

#[test]
fn a_failed_punch_is_retried_after_60_s_and_recorded_per_host() {
    let mut w = World::new();
    let (a, b) = (w.connect(1), w.connect(2));
    w.group(&[a, b]);
    let actions = w.drain();
    let pair = pair_of(&actions, a, b);
    w.registry
        .handle_punch_report(a, pair, 1, PunchOutcome::NoResponse, w.now);
    w.registry
        .handle_punch_report(b, pair, 1, PunchOutcome::NoResponse, w.now);
    assert_eq!(w.registry.punch_stats(a).unwrap().no_response, 1);
    w.advance(Duration::from_secs(59));
    assert!(punches(&w.drain()).is_empty());
    w.advance(Duration::from_secs(1));
    let retry = punches(&w.drain());
    assert!(
        matches!(retry.as_slice(), [Action::Punch { attempt: 2, .. }]),
        "{retry:?}"
    );
    // A report from a host outside the pair is ignored.
    let c = w.connect(3);
    w.registry
        .handle_punch_report(c, pair, 2, PunchOutcome::NoResponse, w.now);
    assert_eq!(w.registry.punch_stats(c).unwrap().no_response, 0);
}

#[test]
fn path_reports_drive_pair_path_events_and_a_dead_direct_path_re_punches_later() {
    let mut w = World::new();
    let (a, b) = (w.connect(1), w.connect(2));
    w.group(&[a, b]);
    let pair = pair_of(&w.drain(), a, b);
    let (lo, hi) = (a.min(b), a.max(b));
    w.registry
        .handle_path_report(a, pair, PairPath::Direct, PathReason::Punched, w.now);
    assert!(
        World::events(&w.drain()).is_empty(),
        "one side is not enough"
    );
    w.registry
        .handle_path_report(b, pair, PairPath::Direct, PathReason::Punched, w.now);
    assert_eq!(
        World::events(&w.drain()),
        vec![ServerEvent::PairPathChanged {
            a: lo,
            b: hi,
            path: PairPath::Direct,
            reason: PathReason::Punched
        }]
    );
    assert_eq!(w.registry.pair_stats(a, b).unwrap().path, PairPath::Direct);
    w.registry
        .handle_path_report(b, pair, PairPath::Relay, PathReason::DirectTimedOut, w.now);
    assert_eq!(
        World::events(&w.drain()),
        vec![ServerEvent::PairPathChanged {
            a: lo,
            b: hi,
            path: PairPath::Relay,
            reason: PathReason::DirectTimedOut
        }]
    );
    assert_eq!(w.registry.punch_stats(b).unwrap().direct_lost, 1);
    w.advance(Duration::from_millis(4_999));
    assert!(punches(&w.drain()).is_empty());
    w.advance(Duration::from_millis(1));
    assert!(matches!(
        punches(&w.drain()).as_slice(),
        [Action::Punch { attempt: 2, .. }]
    ));
}

#[test]
fn a_host_that_moved_is_punched_at_its_new_address_and_host_candidates_follow() {
    let mut w = World::new();
    let (a, b) = (w.connect(1), w.connect(2));
    w.group(&[a, b]);
    let pair = pair_of(&w.drain(), a, b);
    for host in [a, b] {
        w.registry
            .handle_path_report(host, pair, PairPath::Direct, PathReason::Punched, w.now);
    }
    // A's NAT gives it a new port (its QUIC connection migrates); the direct path dies.
    let moved: SocketAddr = "198.18.0.1:45001".parse().unwrap();
    assert!(w.registry.handle_address_change(a, moved));
    assert!(
        !w.registry.handle_address_change(a, moved),
        "no change twice"
    );
    let ghost = HostId::from_raw(99);
    assert!(
        !w.registry.handle_address_change(ghost, moved),
        "unknown host"
    );
    w.registry
        .handle_path_report(b, pair, PairPath::Relay, PathReason::DirectTimedOut, w.now);
    w.drain();
    w.advance(Duration::from_secs(5));
    let Some(Action::Punch {
        controlling,
        candidates_of_controlling,
        candidates_of_controlled,
        ..
    }) = punches(&w.drain()).pop()
    else {
        panic!("a punch after the direct path died")
    };
    let of_a = if controlling == a {
        candidates_of_controlling
    } else {
        candidates_of_controlled
    };
    assert_eq!(of_a, vec![moved], "the new address, not the old mapping");
    let (x, y) = w.registry.punch_candidates(a, b).unwrap();
    assert_eq!(
        (x, y[0]),
        (vec![moved], "198.18.0.2:40002".parse().unwrap())
    );

    // A move that puts both behind one public address brings in host candidates.
    let c = w.connect_at(3, "203.0.113.9:50003");
    w.registry
        .handle_host_candidates(c, vec!["192.168.1.13:6003".parse().unwrap()]);
    w.registry
        .handle_host_candidates(a, vec!["192.168.1.11:6001".parse().unwrap()]);
    assert_eq!(w.registry.punch_candidates(a, c).unwrap().1.len(), 1);
    assert!(w
        .registry
        .handle_address_change(a, "203.0.113.9:50001".parse().unwrap()));
    let (of_a, of_c) = w.registry.punch_candidates(a, c).unwrap();
    assert_eq!(of_a.len(), 2, "{of_a:?}");
    assert_eq!(of_c.len(), 2, "{of_c:?}");
}

#[test]
fn relayed_messages_are_counted_per_pair() {
    let mut w = World::new();
    let (a, b) = (w.connect(1), w.connect(2));
    let g = w.group(&[a, b]);
    let pair = pair_of(&w.drain(), a, b);
    for seq in 1..=3 {
        w.registry.handle_relay(
            a,
            Some(g),
            false,
            Lane::Ordered { channel: 0 },
            Priority::Medium,
            &[RelayDest { pair, seq }],
            Bytes::from_static(b"x"),
            w.now,
        );
    }
    assert_eq!(w.registry.pair_stats(a, b).unwrap().relayed, 3);
    assert_eq!(w.registry.pair_stats(a, b).unwrap().shared_groups, 1);
}

#[test]
fn a_pair_named_many_times_in_one_upload_gets_one_copy() {
    let mut w = World::new();
    let (a, b) = (w.connect(1), w.connect(2));
    w.group(&[a, b]);
    let pair = pair_of(&w.drain(), a, b);
    let dests: Vec<RelayDest> = (1..=100).map(|seq| RelayDest { pair, seq }).collect();
    w.registry.handle_relay(
        a,
        None,
        false,
        Lane::Ordered { channel: 0 },
        Priority::Medium,
        &dests,
        Bytes::from_static(b"x"),
        w.now,
    );
    let delivered = World::frames_to(&w.drain(), b)
        .into_iter()
        .filter(|f| matches!(f, S::Deliver { .. }))
        .count();
    assert_eq!(delivered, 1);
    assert_eq!(w.registry.counters().relay_refused, 99);
    let pairs: Vec<RelayDest> = std::iter::repeat_n(RelayDest { pair, seq: 0 }, 50).collect();
    w.registry.handle_relay_datagram(
        a,
        None,
        false,
        DatagramLane::Plain,
        0,
        &pairs,
        Bytes::from_static(b"d"),
        w.now,
    );
    assert!(matches!(
        w.drain().as_slice(),
        [Action::Datagram { to, .. }] if to.len() == 1
    ));
}

#[test]
fn relayed_messages_carry_their_lane_priority_and_latest_key_to_the_queue() {
    let mut w = World::new();
    let (a, b) = (w.connect(1), w.connect(2));
    w.registry
        .create_group(
            &[a, b],
            GroupOptions::default(),
            Bytes::new(),
            "".into(),
            w.now,
        )
        .unwrap();
    let pair = pair_of(&w.drain(), a, b);
    let lane = Lane::Latest { key: 42 };
    w.registry.handle_relay(
        a,
        None,
        false,
        lane,
        Priority::High,
        &[RelayDest { pair, seq: 7 }],
        Bytes::from_static(b"pos"),
        w.now,
    );
    let actions = w.drain();
    let relayed: Vec<&Action> = actions
        .iter()
        .filter(|a| matches!(a, Action::SendData { .. }))
        .collect();
    assert_eq!(
        relayed,
        [&Action::SendData {
            to: b,
            message: S::Deliver {
                from: a,
                group: None,
                lane,
                seq: 7,
                payload: Bytes::from_static(b"pos"),
            },
            priority: Priority::High,
            from: a,
            latest: Some(42),
        }]
    );
}

#[test]
fn sequenced_datagrams_keep_each_destinations_number() {
    let mut w = World::new();
    let (a, b, c) = (w.connect(1), w.connect(2), w.connect(3));
    let g = w
        .registry
        .create_group(
            &[a, b, c],
            GroupOptions::default(),
            Bytes::new(),
            "".into(),
            w.now,
        )
        .unwrap();
    let actions = w.drain();
    let (ab, ac) = (pair_of(&actions, a, b), pair_of(&actions, a, c));
    let lane = DatagramLane::Sequenced { channel: 3 };
    w.registry.handle_relay_datagram(
        a,
        Some(g),
        false,
        lane,
        0,
        &[
            RelayDest { pair: ab, seq: 5 },
            RelayDest { pair: ac, seq: 9 },
        ],
        Bytes::from_static(b"d"),
        w.now,
    );
    match w.drain().as_slice() {
        [Action::Datagram { to, message, .. }] => {
            assert_eq!(to, &vec![(b, ab, 5), (c, ac, 9)]);
            assert!(matches!(message, ServerDatagram::Deliver { lane: l, .. } if *l == lane));
        }
        other => panic!("expected one datagram action, got {other:?}"),
    }
    assert_eq!(w.registry.counters().relayed, 2);
}

#[test]
fn pings_are_relayed_but_not_counted_nor_given_to_the_application() {
    let mut w = World::with_punch(PunchConfig {
        start: PunchStart::OnFirstMessage,
        ..PunchConfig::default()
    });
    let (a, b) = (w.connect(1), w.connect(2));
    w.registry
        .create_group(
            &[a, b],
            GroupOptions::default(),
            Bytes::new(),
            "".into(),
            w.now,
        )
        .unwrap();
    let pair = pair_of(&w.drain(), a, b);
    w.registry.handle_relay_datagram(
        a,
        None,
        true,
        DatagramLane::Ping { id: 1 },
        0,
        &[RelayDest { pair, seq: 0 }],
        Bytes::new(),
        w.now,
    );
    let actions = w.drain();
    assert!(matches!(actions.as_slice(), [Action::Datagram { to, .. }] if to.len() == 1));
    assert!(
        World::events(&actions).is_empty(),
        "the server app never sees a ping"
    );
    assert!(
        punches(&actions).is_empty(),
        "a ping is not a first user message"
    );
    assert_eq!(w.registry.counters().relayed, 0);
}

#[test]
fn link_reports_and_relayed_bytes_show_in_pair_stats() {
    let mut w = World::new();
    let (a, b, outsider) = (w.connect(1), w.connect(2), w.connect(3));
    w.registry
        .create_group(
            &[a, b],
            GroupOptions::default(),
            Bytes::new(),
            "".into(),
            w.now,
        )
        .unwrap();
    let pair = pair_of(&w.drain(), a, b);
    w.registry.handle_link_report(
        a,
        pair,
        Some(Duration::from_millis(30)),
        Some(Duration::from_millis(35)),
        Some(0.25),
    );
    // Only a member of the pair may report on it.
    w.registry
        .handle_link_report(outsider, pair, Some(Duration::from_secs(9)), None, None);
    w.registry.handle_relay(
        a,
        None,
        false,
        Lane::Unordered,
        Priority::Low,
        &[RelayDest { pair, seq: 1 }],
        Bytes::from_static(b"12345"),
        w.now,
    );
    let stats = w.registry.pair_stats(a, b).unwrap();
    assert_eq!(stats.recent_rtt, Some(Duration::from_millis(30)));
    assert_eq!(stats.last_rtt, Some(Duration::from_millis(35)));
    assert_eq!(stats.loss, Some(0.25));
    assert_eq!((stats.relayed, stats.relayed_bytes), (1, 5));
}

#[test]
fn the_relay_rate_counts_whole_seconds_and_falls_to_zero_when_quiet() {
    let mut meter = RateMeter::default();
    let t0 = Instant::now();
    meter.add(100, t0);
    meter.add(50, t0 + Duration::from_millis(900));
    assert_eq!(
        meter.rate(t0 + Duration::from_millis(950)),
        0,
        "no whole second yet"
    );
    assert_eq!(meter.rate(t0 + Duration::from_millis(1_100)), 150);
    meter.add(10, t0 + Duration::from_millis(1_500));
    assert_eq!(meter.rate(t0 + Duration::from_millis(2_200)), 10);
    assert_eq!(
        meter.rate(t0 + Duration::from_secs(5)),
        0,
        "a silent second counts as 0"
    );
}

#[test]
fn the_application_never_gets_an_older_sequenced_datagram() {
    let mut w = World::new();
    let a = w.connect(1);
    let lane = DatagramLane::Sequenced { channel: 1 };
    for seq in [2, 1, 2, 3] {
        w.registry.handle_relay_datagram(
            a,
            None,
            true,
            lane,
            seq,
            &[],
            Bytes::from(vec![seq as u8]),
            w.now,
        );
    }
    // Another channel has its own numbers.
    w.registry.handle_relay_datagram(
        a,
        None,
        true,
        DatagramLane::Sequenced { channel: 2 },
        1,
        &[],
        Bytes::from_static(&[9]),
        w.now,
    );
    let payloads: Vec<Bytes> = World::events(&w.drain())
        .into_iter()
        .map(|e| match e {
            ServerEvent::Message { payload, .. } => payload,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(payloads, [vec![2u8], vec![3], vec![9]]);
}

#[test]
fn the_application_hears_the_mode_and_channel_of_a_message() {
    let mut w = World::new();
    let a = w.connect(1);
    w.registry.handle_relay(
        a,
        None,
        true,
        Lane::Ordered { channel: 7 },
        Priority::Low,
        &[],
        Bytes::from_static(b"x"),
        w.now,
    );
    w.registry.handle_relay_datagram(
        a,
        None,
        true,
        DatagramLane::Sequenced { channel: 3 },
        1,
        &[],
        Bytes::from_static(b"y"),
        w.now,
    );
    let heard: Vec<(Delivery, u8)> = World::events(&w.drain())
        .into_iter()
        .map(|e| match e {
            ServerEvent::Message {
                delivery, channel, ..
            } => (delivery, channel),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        heard,
        [
            (Delivery::ReliableOrdered, 7),
            (Delivery::UnreliableSequenced, 3)
        ]
    );
}

// ---- leave acks, data, batches, ordering and bounds ------------------------------------

fn leave_done(group: GroupId, member: HostId, result: Result<(), LeaveAckError>) -> ServerEvent {
    ServerEvent::LeaveAckComplete {
        group,
        member,
        result,
    }
}

/// The order each notice to `to` was given, in action order.
fn notice_orders(actions: &[Action], to: HostId) -> Vec<NoticeOrder> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Notice { to: t, order, .. } if *t == to => Some(*order),
            _ => None,
        })
        .collect()
}

/// A group of `hosts` whose joins have all been acked.
fn settled_group(w: &mut World, hosts: &[HostId]) -> GroupId {
    let g = w
        .registry
        .create_group(
            hosts,
            GroupOptions::default(),
            Bytes::new(),
            "hi".into(),
            w.now,
        )
        .unwrap();
    w.drain();
    ack_all(w, hosts);
    w.drain();
    g
}

#[test]
fn a_leave_completes_once_the_leaver_and_every_remaining_member_have_acked() {
    let mut w = World::new();
    let (a, b, c) = (w.connect(1), w.connect(2), w.connect(3));
    let g = settled_group(&mut w, &[a, b, c]);
    w.registry.leave_group(g, b, w.now).unwrap();
    w.drain();
    w.ack(b);
    w.ack(a);
    assert!(World::events(&w.drain()).is_empty(), "c has not acked");
    w.ack(c);
    assert_eq!(World::events(&w.drain()), vec![leave_done(g, b, Ok(()))]);
    assert_eq!(w.registry.pending_acks(), 0);
}

#[test]
fn a_leaver_that_disconnects_before_acking_ends_its_leave_with_disconnected() {
    let mut w = World::new();
    let (a, b) = (w.connect(1), w.connect(2));
    let g = settled_group(&mut w, &[a, b]);
    w.registry.leave_group(g, b, w.now).unwrap();
    w.drain();
    w.ack(a);
    w.registry.handle_disconnect(b, w.now);
    assert_eq!(
        World::events(&w.drain()),
        vec![leave_done(g, b, Err(LeaveAckError::Disconnected))]
    );
}

#[test]
fn a_remaining_member_that_disconnects_no_longer_owes_its_ack() {
    let mut w = World::new();
    let (a, b, c) = (w.connect(1), w.connect(2), w.connect(3));
    let g = settled_group(&mut w, &[a, b, c]);
    w.registry.leave_group(g, b, w.now).unwrap();
    w.drain();
    w.ack(b);
    w.ack(a);
    w.registry.handle_disconnect(c, w.now);
    let events = World::events(&w.drain());
    assert!(events.contains(&leave_done(g, b, Ok(()))), "{events:?}");
    // c's own disconnect leaves g: a is told, and that leave completes on a's ack.
    w.ack(a);
    assert_eq!(World::events(&w.drain()), vec![leave_done(g, c, Ok(()))]);
}

#[test]
fn a_disconnect_completes_its_leaves_when_the_remaining_members_ack() {
    let mut w = World::new();
    let (a, b) = (w.connect(1), w.connect(2));
    let g = settled_group(&mut w, &[a, b]);
    w.registry.handle_disconnect(b, w.now);
    w.drain();
    w.ack(a);
    assert_eq!(World::events(&w.drain()), vec![leave_done(g, b, Ok(()))]);

    // The last member of both groups disconnecting: nobody is told, so its leaves
    // complete at once.
    let lonely = settled_group(&mut w, &[a]);
    w.registry.handle_disconnect(a, w.now);
    assert_eq!(
        World::events(&w.drain()),
        vec![leave_done(g, a, Ok(())), leave_done(lonely, a, Ok(()))]
    );
}

#[test]
fn destroy_ends_earlier_leaves_with_group_destroyed_and_its_own_leaves_complete_on_acks() {
    let mut w = World::new();
    let (a, b, c) = (w.connect(1), w.connect(2), w.connect(3));
    let g = settled_group(&mut w, &[a, b, c]);
    w.registry.leave_group(g, c, w.now).unwrap();
    w.drain();
    w.registry.destroy_group(g, w.now).unwrap();
    let events = World::events(&w.drain());
    assert_eq!(
        events,
        vec![
            leave_done(g, c, Err(LeaveAckError::GroupDestroyed)),
            ServerEvent::GroupRemoved { group: g }
        ]
    );
    ack_all(&mut w, &[a, b, c]);
    let mut done = World::events(&w.drain());
    done.sort_by_key(|e| format!("{e:?}"));
    assert_eq!(
        done,
        vec![leave_done(g, a, Ok(())), leave_done(g, b, Ok(()))]
    );
}

#[test]
fn a_leave_times_out_when_an_ack_never_comes() {
    let mut w = World::new();
    let (a, b) = (w.connect(1), w.connect(2));
    let g = settled_group(&mut w, &[a, b]);
    w.registry.leave_group(g, b, w.now).unwrap();
    w.drain();
    w.ack(b);
    w.advance(Duration::from_millis(14_999));
    assert!(World::events(&w.drain()).is_empty());
    w.advance(Duration::from_millis(1));
    assert_eq!(
        World::events(&w.drain()),
        vec![leave_done(g, b, Err(LeaveAckError::Timeout))]
    );
    w.ack(a);
    assert!(w.drain().is_empty(), "a late ack changes nothing");
}

#[test]
fn acks_of_notices_never_sent_are_refused_and_change_nothing() {
    let mut w = World::new();
    let a = w.connect(1);
    let g = w.group(&[a]);
    w.drain();
    assert_eq!(
        w.registry.handle_ack(a, 2),
        Err(AckBeyondSent { acked: 2, sent: 1 })
    );
    assert!(w.drain().is_empty());
    w.registry.handle_ack(a, 1).unwrap();
    assert_eq!(
        World::events(&w.drain()),
        vec![ServerEvent::JoinAckComplete {
            group: g,
            member: a,
            result: Ok(())
        }]
    );
}

#[test]
fn leave_notices_wait_for_the_leavers_messages_and_the_leavers_own_for_everything() {
    let mut w = World::new();
    let (a, b, c) = (w.connect(1), w.connect(2), w.connect(3));
    let g = settled_group(&mut w, &[a, b, c]);
    w.registry.leave_group(g, b, w.now).unwrap();
    let actions = w.drain();
    for other in [a, c] {
        assert_eq!(
            notice_orders(&actions, other),
            vec![NoticeOrder::AfterMessagesFrom(b)]
        );
    }
    assert_eq!(
        notice_orders(&actions, b),
        vec![NoticeOrder::AfterAllMessages; 3]
    );
    w.registry.join_group(g, b, "hi".into(), w.now).unwrap();
    let actions = w.drain();
    assert!(notice_orders(&actions, a)
        .iter()
        .all(|o| *o == NoticeOrder::AheadOfMessages));
}

#[test]
fn host_data_rides_on_join_notices_and_changes_reach_everyone_sharing_a_group() {
    let mut w = World::new();
    let (a, b, c) = (w.connect(1), w.connect(2), w.connect(3));
    w.registry.set_host_data(a, "alice".into()).unwrap();
    w.drain();
    let g = w
        .registry
        .create_group(
            &[a],
            GroupOptions::default(),
            "rules".into(),
            "hi".into(),
            w.now,
        )
        .unwrap();
    w.drain();
    w.registry.join_group(g, b, "join".into(), w.now).unwrap();
    let actions = w.drain();
    let about = |to: HostId| -> Vec<(HostId, Bytes, Option<Bytes>, Bytes)> {
        actions
            .iter()
            .filter_map(|act| match act {
                Action::Notice {
                    to: t,
                    notice:
                        Notice::MemberJoined {
                            member,
                            member_data,
                            group_data,
                            join_message,
                            ..
                        },
                    ..
                } if *t == to => Some((
                    *member,
                    member_data.clone(),
                    group_data.clone(),
                    join_message.clone(),
                )),
                _ => None,
            })
            .collect()
    };
    // The joiner hears alice's data on the notice about her, and the group's data on its
    // own; the join message stays the join's own on every notice.
    assert_eq!(
        about(b),
        vec![
            (a, "alice".into(), None, "join".into()),
            (b, Bytes::new(), Some("rules".into()), "join".into())
        ]
    );
    assert_eq!(about(a), vec![(b, Bytes::new(), None, "join".into())]);

    w.registry.set_host_data(b, "bob".into()).unwrap();
    let actions = w.drain();
    let data_notice = S::Notices(vec![Notice::HostData {
        host: b,
        data: "bob".into(),
    }]);
    assert_eq!(World::frames_to(&actions, a), vec![data_notice.clone()]);
    assert_eq!(World::frames_to(&actions, b), vec![data_notice]);
    assert!(
        World::frames_to(&actions, c).is_empty(),
        "c shares no group"
    );

    w.registry.set_group_data(g, "new rules".into()).unwrap();
    let actions = w.drain();
    for member in [a, b] {
        assert_eq!(
            World::frames_to(&actions, member),
            vec![S::Notices(vec![Notice::GroupData {
                group: g,
                data: "new rules".into()
            }])]
        );
    }
    assert_eq!(
        w.registry.group_info(g).unwrap().data,
        Bytes::from("new rules")
    );
    assert_eq!(w.registry.host_data(b), Some(Bytes::from("bob")));
}

#[test]
fn data_over_its_limit_is_refused_and_changes_nothing() {
    let mut w = World::new();
    let a = w.connect(1);
    let config = *w.registry.config();
    let too_big = |n: usize| Bytes::from(vec![0; n + 1]);
    assert_eq!(
        w.registry
            .set_host_data(a, too_big(config.max_host_data_len)),
        Err(GroupError::DataTooLarge {
            len: config.max_host_data_len + 1,
            max: config.max_host_data_len
        })
    );
    assert_eq!(w.registry.host_data(a), Some(Bytes::new()));
    let opts = GroupOptions::default();
    assert!(matches!(
        w.registry.create_group(
            &[a],
            opts,
            too_big(config.max_group_data_len),
            "".into(),
            w.now
        ),
        Err(GroupError::DataTooLarge { .. })
    ));
    assert_eq!(w.registry.group_count(), 0);
    let g = settled_group(&mut w, &[a]);
    assert!(matches!(
        w.registry
            .set_group_data(g, too_big(config.max_group_data_len)),
        Err(GroupError::DataTooLarge { .. })
    ));
    assert!(w.drain().is_empty(), "nothing was sent");
}

#[test]
fn a_batch_applies_every_change_in_order_with_one_completion_each() {
    let mut w = World::new();
    let hosts: Vec<HostId> = (1..=4).map(|n| w.connect(n)).collect();
    let (g1, g2) = (
        settled_group(&mut w, &hosts[..2]),
        settled_group(&mut w, &[]),
    );
    let mut batch = MembershipBatch::new();
    batch
        .leave(g1, hosts[0])
        .join(g2, hosts[0], "in")
        .join(g2, hosts[2], "in")
        .join(g2, hosts[2], "in")
        .leave(g1, hosts[1])
        .join(g1, hosts[1], "back");
    let outcomes = w.registry.apply_batch(&batch, w.now).unwrap();
    assert_eq!(
        outcomes,
        vec![
            ChangeOutcome::Left,
            ChangeOutcome::Joined,
            ChangeOutcome::Joined,
            ChangeOutcome::AlreadyMember,
            ChangeOutcome::Left,
            ChangeOutcome::Joined,
        ]
    );
    assert_eq!(w.registry.group_members(g1).unwrap(), vec![hosts[1]]);
    assert_eq!(
        w.registry.group_members(g2).unwrap(),
        vec![hosts[0], hosts[2]]
    );
    let actions = w.drain();
    // Punch orders come after every notice, so each host's notices are contiguous.
    let last_notice = actions
        .iter()
        .rposition(|a| matches!(a, Action::Notice { .. }));
    let first_punch = actions
        .iter()
        .position(|a| matches!(a, Action::Punch { .. }));
    assert!(first_punch.is_none_or(|p| Some(p) > last_notice));
    ack_all(&mut w, &hosts);
    let events = World::events(&w.drain());
    let joins = events
        .iter()
        .filter(|e| matches!(e, ServerEvent::JoinAckComplete { result: Ok(()), .. }))
        .count();
    let leaves = events
        .iter()
        .filter(|e| matches!(e, ServerEvent::LeaveAckComplete { result: Ok(()), .. }))
        .count();
    assert_eq!((joins, leaves), (3, 2), "{events:?}");
}

#[test]
fn a_batch_with_an_invalid_change_is_refused_whole() {
    let mut w = World::new();
    let (a, b) = (w.connect(1), w.connect(2));
    let opts = GroupOptions {
        allow_empty: false,
        ..GroupOptions::default()
    };
    let g = w
        .registry
        .create_group(&[a], opts, Bytes::new(), "hi".into(), w.now)
        .unwrap();
    w.drain();
    let mut batch = MembershipBatch::new();
    batch.join(g, b, "").leave(g, b).leave(g, b);
    assert_eq!(
        w.registry.apply_batch(&batch, w.now),
        Err(BatchError {
            index: 2,
            error: GroupError::NotMember { group: g, host: b }
        })
    );
    // Emptying a group without allow_empty removes it, so a later join in the batch fails.
    let mut batch = MembershipBatch::new();
    batch.leave(g, a).join(g, a, "");
    assert_eq!(
        w.registry.apply_batch(&batch, w.now),
        Err(BatchError {
            index: 1,
            error: GroupError::UnknownGroup(g)
        })
    );
    let gone = HostId::from_raw(0xdead_0000_0001);
    let mut batch = MembershipBatch::new();
    batch.join(g, b, "").join(g, gone, "");
    assert_eq!(
        w.registry.apply_batch(&batch, w.now).map_err(|e| e.index),
        Err(1)
    );
    assert!(w.drain().is_empty(), "nothing was sent");
    assert_eq!(w.registry.group_members(g).unwrap(), vec![a]);
    assert_eq!(
        w.registry.pending_acks(),
        1,
        "only a's own join from the start"
    );
}

#[test]
fn a_client_that_never_acks_is_disconnected_past_the_unacked_limit() {
    let mut w = World {
        registry: Registry::new(
            RegistryConfig {
                max_unacked_notices: 5,
                ..RegistryConfig::default()
            },
            Instant::now(),
        ),
        now: Instant::now(),
        notices: HashMap::new(),
    };
    let (a, b) = (w.connect(1), w.connect(2));
    let g = w
        .registry
        .create_group(
            &[a],
            GroupOptions::default(),
            Bytes::new(),
            "".into(),
            w.now,
        )
        .unwrap();
    let mut disconnects = Vec::new();
    for _ in 0..4 {
        w.registry.join_group(g, b, "".into(), w.now).unwrap();
        w.registry.leave_group(g, b, w.now).unwrap();
        disconnects.extend(w.drain().into_iter().filter_map(|act| match act {
            Action::Disconnect { host, .. } => Some(host),
            _ => None,
        }));
        w.ack(b);
    }
    assert_eq!(
        disconnects,
        vec![a],
        "once, and only the host that never acked"
    );
}

#[test]
fn the_server_id_and_aliases_of_live_ids_name_nothing() {
    let mut w = World::new();
    let a = w.connect(1);
    assert!(w.registry.is_connected(a));
    assert!(
        !w.registry.is_connected(HostId::SERVER),
        "HostId::SERVER is not the first client"
    );
    let alias = HostId::from_raw(a.raw() - (1 << 32));
    assert!(
        !w.registry.is_connected(alias),
        "an even version is not a's"
    );
}

#[test]
fn the_host_summary_counts_groups_and_pairs_by_path() {
    let mut w = World::new();
    let (a, b, c) = (w.connect(1), w.connect(2), w.connect(3));
    let g = settled_group(&mut w, &[a, b, c]);
    let summary = w.registry.host_summary(a).unwrap();
    assert_eq!(summary.groups, vec![g]);
    assert_eq!((summary.direct_pairs, summary.relayed_pairs), (0, 2));
    assert!(w.registry.host_summary(HostId::from_raw(77)).is_none());
}

#[test]
fn the_host_summary_counts_notices_sent_and_acked() {
    let mut w = World::new();
    let (a, b, c) = (w.connect(1), w.connect(2), w.connect(3));
    let g = settled_group(&mut w, &[a, b, c]);
    let counts = |w: &World| {
        let summary = w.registry.host_summary(a).unwrap();
        (summary.notices_sent, summary.notices_acked)
    };
    // One join notice per member of the group formed at once, all acked.
    assert_eq!(counts(&w), (3, 3));
    w.registry.leave_group(g, c, w.now).unwrap();
    w.drain();
    assert_eq!(counts(&w), (4, 3), "the leave notice waits for a's ack");
    w.ack(a);
    assert_eq!(counts(&w), (4, 4));
}

#[test]
fn every_join_gets_a_new_membership_number_and_every_notice_of_it_carries_the_same() {
    let mut w = World::new();
    let (a, b) = (w.connect(1), w.connect(2));
    let g = settled_group(&mut w, &[a]);
    let memberships = |actions: &[Action], to: HostId| -> Vec<(HostId, u32)> {
        actions
            .iter()
            .filter_map(|act| match act {
                Action::Notice {
                    to: t,
                    notice:
                        Notice::MemberJoined {
                            member, membership, ..
                        },
                    ..
                } if *t == to => Some((*member, *membership)),
                _ => None,
            })
            .collect()
    };
    w.registry.join_group(g, b, "".into(), w.now).unwrap();
    let actions = w.drain();
    // a joined first (1), b second (2); b's catch-up notice about a carries a's number.
    assert_eq!(memberships(&actions, a), vec![(b, 2)]);
    assert_eq!(memberships(&actions, b), vec![(a, 1), (b, 2)]);
    // A rejoin is a new membership.
    w.registry.leave_group(g, b, w.now).unwrap();
    w.registry.join_group(g, b, "".into(), w.now).unwrap();
    let actions = w.drain();
    assert_eq!(memberships(&actions, a), vec![(b, 3)]);
    assert_eq!(memberships(&actions, b), vec![(a, 1), (b, 3)]);
}

/// Issue 12, finding 3: each refused destination of an upload was refused with a frame
/// of its own, all under the server's lock: one upload naming 250,000 pairs that do not
/// exist produced 250,000 refusals (about 245 ms of lock per upload, 2.8 times its bytes
/// back), and a bystander's p99 went from 0.4 ms to 164 ms. Now an upload over
/// `MAX_RELAY_DESTS` is refused whole with one reason before any destination is looked
/// at, and the refusals of one upload go back in one frame, no larger than the upload.
#[test]
fn an_upload_naming_many_bogus_destinations_gets_one_refusal_of_bounded_size() {
    use peergroup_protocol::{frame_to_bytes, ClientToServer, MAX_RELAY_DESTS};
    let mut w = World::new();
    let (a, b) = (w.connect(1), w.connect(2));
    w.registry
        .create_group(
            &[a, b],
            GroupOptions::default(),
            Bytes::new(),
            "".into(),
            w.now,
        )
        .unwrap();
    w.drain();
    let bogus = |n: usize| -> Vec<RelayDest> {
        (0..n as u64)
            .map(|i| RelayDest {
                pair: PairId::from_raw(7 << 32 | (1_000 + i)),
                seq: 1,
            })
            .collect()
    };
    let upload_len = |dests: &[RelayDest]| {
        frame_to_bytes(
            &ClientToServer::Relay {
                group: None,
                to_server: false,
                lane: Lane::Ordered { channel: 0 },
                priority: Priority::Medium,
                dests: dests.into(),
                payload: Bytes::new(),
            },
            u32::MAX,
        )
        .unwrap()
        .len()
    };
    let relay = |w: &mut World, dests: &[RelayDest]| {
        w.registry.handle_relay(
            a,
            None,
            false,
            Lane::Ordered { channel: 0 },
            Priority::Medium,
            dests,
            Bytes::new(),
            w.now,
        );
        w.drain()
    };

    // Far over the limit: one refusal of the whole upload, nothing looked up.
    let dests = bogus(250_000);
    let actions = relay(&mut w, &dests);
    assert_eq!(actions.len(), 1, "{:?}", &actions[..actions.len().min(3)]);
    assert_eq!(
        World::frames_to(&actions, a),
        [S::Refused {
            pair: None,
            group: None,
            reason: RefuseReason::TooManyDestinations
        }]
    );
    assert_eq!(w.registry.counters().relay_refused, 1);

    // At the limit: every destination refused, in one frame no larger than the upload.
    let dests = bogus(MAX_RELAY_DESTS);
    let actions = relay(&mut w, &dests);
    let frames = World::frames_to(&actions, a);
    assert_eq!(frames.len(), 1);
    let S::RefusedMany {
        group: None,
        refused,
    } = &frames[0]
    else {
        panic!("{:?}", frames[0]);
    };
    assert_eq!(refused.len(), MAX_RELAY_DESTS);
    assert!(refused
        .iter()
        .all(|(_, reason)| *reason == RefuseReason::UnknownPair));
    assert!(World::frames_to(&actions, b).is_empty());
    let back = frame_to_bytes(&frames[0], u32::MAX).unwrap().len();
    let sent = upload_len(&dests);
    assert!(back <= sent, "{back} bytes back for {sent} bytes sent");
    assert_eq!(
        w.registry.counters().relay_refused,
        1 + MAX_RELAY_DESTS as u64
    );

    // The same for datagrams.
    let actions = {
        w.registry.handle_relay_datagram(
            a,
            None,
            false,
            DatagramLane::Plain,
            0,
            &bogus(MAX_RELAY_DESTS + 1),
            Bytes::new(),
            w.now,
        );
        w.drain()
    };
    assert_eq!(
        World::frames_to(&actions, a),
        [S::Refused {
            pair: None,
            group: None,
            reason: RefuseReason::TooManyDestinations
        }]
    );
    w.registry.handle_relay_datagram(
        a,
        None,
        false,
        DatagramLane::Plain,
        0,
        &bogus(100),
        Bytes::new(),
        w.now,
    );
    let frames = World::frames_to(&w.drain(), a);
    assert!(
        matches!(frames.as_slice(), [S::RefusedMany { refused, .. }] if refused.len() == 100),
        "{frames:?}"
    );
}

/// Punch orders among `actions` that name `host` on either side.
fn orders_to(actions: &[Action], host: HostId) -> usize {
    actions
        .iter()
        .filter(|a| {
            matches!(a, Action::Punch { controlling, controlled, .. }
                if *controlling == host || *controlled == host)
        })
        .count()
}

#[test]
fn asking_for_punches_and_declining_them_cannot_flood_the_peer_with_orders() {
    // Issue 12, finding 6: `WantDirect` then `Declined`, repeated, made the server order
    // the victim to punch every time (100,000 orders for 100,000 rounds), each a control
    // frame ahead of the victim's messages.
    let mut w = World::with_punch(PunchConfig {
        start: PunchStart::OnFirstMessage,
        ..PunchConfig::default()
    });
    let (attacker, victim) = (w.connect(1), w.connect(2));
    w.group(&[attacker, victim]);
    let pair = pair_of(&w.drain(), attacker, victim);
    let mut orders = 0;
    for _ in 0..100_000 {
        w.registry.handle_want_direct(attacker, pair, w.now);
        let actions = w.drain();
        orders += orders_to(&actions, victim);
        for action in &actions {
            if let Action::Punch { attempt, .. } = action {
                w.registry.handle_punch_report(
                    attacker,
                    pair,
                    *attempt,
                    PunchOutcome::Declined,
                    w.now,
                );
            }
        }
        // Declines count as failures: retries wait a minute, doubling, then stop.
        w.advance(Duration::from_secs(1));
    }
    assert_eq!(
        orders,
        PunchConfig::default().max_attempts as usize,
        "one order per allowed attempt"
    );
    let stats = w.registry.punch_stats(attacker).unwrap();
    assert_eq!(stats.declined, 4);
}

#[test]
fn a_host_is_sent_at_most_its_order_budget_in_a_burst_then_one_per_refill() {
    let config = PunchConfig::default();
    let mut w = World::with_punch(config);
    let victim = w.connect(1);
    // 200 peers behind their own NATs.
    let peers: Vec<HostId> = (0..200u32)
        .map(|n| {
            let addr = format!("198.19.{}.{}:5000", n / 200, n % 200 + 1);
            w.registry
                .handle_connect(Fingerprint([9; 32]), addr.parse().unwrap(), Bytes::new())
        })
        .collect();
    // Each shares a group of two with the victim (200 pairs that all order the victim).
    for peer in &peers {
        w.registry
            .create_group(
                &[victim, *peer],
                GroupOptions::default(),
                Bytes::new(),
                "two".into(),
                w.now,
            )
            .unwrap();
    }
    let burst = orders_to(&w.drain(), victim);
    assert_eq!(burst, config.order_burst as usize);
    assert!(w.registry.counters().punch_orders_deferred > 0);
    w.advance(config.order_refill / 2);
    assert_eq!(orders_to(&w.drain(), victim), 0, "no token yet");
    w.advance(config.order_refill / 2);
    assert_eq!(orders_to(&w.drain(), victim), 1, "one token per refill");
    // Every pair is ordered in the end, at the refill rate.
    w.advance(config.order_refill * 200);
    let total = burst + 1 + orders_to(&w.drain(), victim);
    assert_eq!(total, 200, "each pair punches once");
}

#[test]
fn repeated_punch_reports_count_once_per_attempt_in_the_hosts_record() {
    // Issue 12, finding 11: a host could inflate its own punch record by repeating a
    // report.
    let mut w = World::new();
    let (a, b) = (w.connect(1), w.connect(2));
    w.group(&[a, b]);
    let pair = pair_of(&w.drain(), a, b);
    for _ in 0..1_000 {
        w.registry
            .handle_punch_report(a, pair, 1, PunchOutcome::Direct { rtt_us: 100 }, w.now);
        w.registry
            .handle_punch_report(a, pair, 7, PunchOutcome::NoResponse, w.now);
    }
    let stats = w.registry.punch_stats(a).unwrap();
    assert_eq!(stats.direct, 1, "{stats:?}");
    assert_eq!(
        stats.no_response, 0,
        "attempt 7 was never ordered: {stats:?}"
    );
}

#[test]
fn unusable_host_candidates_are_dropped_before_peers_are_told_to_probe_them() {
    // Issue 12, finding 11: any address a client named was handed to peers behind the
    // same public address to probe (loopback, multicast, broadcast, port 0, ...).
    let mut w = World::new();
    let a = w.connect_at(1, "203.0.113.9:50001");
    let b = w.connect_at(2, "203.0.113.9:50002");
    let named = [
        "0.0.0.0:6000",
        "224.0.0.251:5353",
        "255.255.255.255:6000",
        "127.0.0.1:6000",
        "192.168.1.10:0",
        "192.168.1.10:6000",
        "192.168.1.10:6000",
        "[fe80::1]:6000",
        "10.0.0.7:6000",
    ];
    w.registry
        .handle_host_candidates(a, named.iter().map(|s| s.parse().unwrap()).collect());
    w.group(&[a, b]);
    let Some(Action::Punch {
        candidates_of_controlling,
        ..
    }) = punches(&w.drain()).pop()
    else {
        panic!("a punch order")
    };
    assert_eq!(
        candidates_of_controlling,
        vec![
            "203.0.113.9:50001".parse().unwrap(),
            "192.168.1.10:6000".parse().unwrap(),
            "10.0.0.7:6000".parse().unwrap(),
        ]
    );
    assert_eq!(w.registry.counters().host_candidates_dropped, 7);
}

#[test]
fn loopback_candidates_are_kept_for_a_host_on_loopback() {
    let mut w = World::new();
    let a = w.connect_at(1, "127.0.0.1:50001");
    w.registry
        .handle_host_candidates(a, vec!["127.0.0.1:50001".parse().unwrap()]);
    assert_eq!(w.registry.counters().host_candidates_dropped, 0);
}

#[test]
fn an_aliased_pair_id_names_no_pair_and_cannot_double_a_delivery() {
    // Issue 12, finding 11: slotmap reads raw values 2k and 2k + 1 of the version as the
    // same key, so a pair named twice (once by its alias) passed the per-upload
    // de-duplication and was delivered twice.
    let mut w = World::new();
    let (a, b) = (w.connect(1), w.connect(2));
    w.registry
        .create_group(
            &[a, b],
            GroupOptions {
                direct_p2p: false,
                ..GroupOptions::default()
            },
            Bytes::new(),
            "hi".into(),
            w.now,
        )
        .unwrap();
    let pair = pair_of(&w.drain(), a, b);
    let alias = PairId::from_raw(pair.raw() & !(1 << 32));
    assert_ne!(alias, pair);
    let deliveries = |w: &mut World, dests: &[RelayDest]| {
        w.registry.handle_relay(
            a,
            None,
            false,
            Lane::Unordered,
            Priority::Medium,
            dests,
            Bytes::from_static(b"x"),
            w.now,
        );
        w.drain()
            .iter()
            .filter(|action| matches!(action, Action::SendData { to, .. } if *to == b))
            .count()
    };
    let both = [
        RelayDest { pair, seq: 1 },
        RelayDest {
            pair: alias,
            seq: 2,
        },
    ];
    assert_eq!(deliveries(&mut w, &both), 1);
    assert_eq!(
        deliveries(
            &mut w,
            &[RelayDest {
                pair: alias,
                seq: 3
            }]
        ),
        0
    );
    assert!(w.registry.pair_stats(a, b).is_some());
}
