//! Session tests: notices, acks, lane numbers, delivery modes end to end and across path
//! switches, pings, the server clock, routes, target rules and sizes.

use super::*;
use peergroup_protocol::schedule::SendQueue;
use peergroup_protocol::{frame_to_bytes, Fingerprint, RefuseReason};

mod direct_timers;
mod resume;

const ME: HostId = HostId::from_raw(1 << 32 | 1);
const PEER: HostId = HostId::from_raw(1 << 32 | 2);
const OTHER: HostId = HostId::from_raw(1 << 32 | 3);
const G: GroupId = GroupId::from_raw(1 << 32 | 1);
const PAIR: PairId = PairId::from_raw(1 << 32 | 1);
const PAIR2: PairId = PairId::from_raw(1 << 32 | 2);

const MAX_FRAME_LEN: u32 = 1 << 20;
const WINDOW: u64 = 1024;
const MAX_DATAGRAM: Option<usize> = Some(1200);
/// No pings: most tests want no periodic traffic from peers.
const NO_PINGS: SessionTiming = SessionTiming {
    ping_interval: None,
    relay_ping_interval: Duration::from_secs(1),
};
/// Pings every second on either path.
const PINGS: SessionTiming = SessionTiming {
    ping_interval: Some(Duration::from_secs(1)),
    relay_ping_interval: Duration::from_secs(1),
};

const CH0: Lane = Lane::Ordered { channel: 0 };
const CH1: Lane = Lane::Ordered { channel: 1 };

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn info(n: u8) -> PeerInfo {
    PeerInfo {
        identity: Fingerprint([n; 32]),
    }
}

fn joined(member: HostId, count: u32) -> ServerToClient {
    joined_as(member, count, 1)
}

/// The notice that `member` joined G under membership number `membership`.
fn joined_as(member: HostId, count: u32, membership: u32) -> ServerToClient {
    ServerToClient::Notices(vec![Notice::MemberJoined {
        group: G,
        member,
        membership,
        member_count: count,
        join_message: Bytes::from_static(b"j"),
        member_data: Bytes::new(),
        group_data: None,
    }])
}

fn left(member: HostId, count: u32) -> ServerToClient {
    ServerToClient::Notices(vec![Notice::MemberLeft {
        group: G,
        member,
        member_count: count,
    }])
}

fn session(me: HostId, timing: SessionTiming, now: Instant) -> Session {
    Session::new(me, Bytes::new(), MAX_FRAME_LEN, WINDOW, timing, now)
}

/// Empties the upload and event queues.
fn drain(s: &mut Session) {
    while s.poll_upload().is_some() {}
    while s.poll_event().is_some() {}
}

/// A session in group G with PEER (pair PAIR) and OTHER (pair PAIR2).
fn session_in_group(now: Instant) -> Session {
    let mut s = session(ME, NO_PINGS, now);
    for frame in [
        ServerToClient::PeerUp {
            peer: PEER,
            pair: PAIR,
            info: info(2),
        },
        ServerToClient::PeerUp {
            peer: OTHER,
            pair: PAIR2,
            info: info(3),
        },
        joined(PEER, 3),
        joined(OTHER, 3),
        joined(ME, 3),
    ] {
        s.handle_frame(frame, now).unwrap();
    }
    drain(&mut s);
    s
}

/// ME's session and PEER's, each the other's peer on pair PAIR, both in group G.
fn two_sessions(timing: SessionTiming, now: Instant) -> (Session, Session) {
    let mut a = session(ME, timing, now);
    let mut b = session(PEER, timing, now);
    for (s, peer, n) in [(&mut a, PEER, 2), (&mut b, ME, 1)] {
        for frame in [
            ServerToClient::PeerUp {
                peer,
                pair: PAIR,
                info: info(n),
            },
            joined(ME, 2),
            joined(PEER, 2),
        ] {
            s.handle_frame(frame, now).unwrap();
        }
        drain(s);
    }
    (a, b)
}

/// As [`two_sessions`], with the direct connection up on both sides.
fn two_direct_sessions(now: Instant) -> (Session, Session) {
    let (mut a, mut b) = two_sessions(NO_PINGS, now);
    assert!(a.set_direct(PEER, ms(3), now));
    assert!(b.set_direct(ME, ms(3), now));
    drain(&mut a);
    drain(&mut b);
    (a, b)
}

fn uploads(s: &mut Session) -> Vec<Upload> {
    std::iter::from_fn(|| s.poll_upload()).collect()
}

fn events(s: &mut Session) -> Vec<ClientEvent> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

fn text(t: &str) -> Bytes {
    Bytes::copy_from_slice(t.as_bytes())
}

fn string(payload: &Bytes) -> String {
    String::from_utf8(payload.to_vec()).unwrap()
}

/// Sends `t` to the peer `to` from `s`, with a 1200-byte datagram size.
fn send(s: &mut Session, to: HostId, t: &str, options: impl Into<SendOptions>) -> Vec<Upload> {
    s.plan_send(&Target::Host(to), text(t), options.into(), MAX_DATAGRAM)
        .unwrap()
}

fn only(mut uploads: Vec<Upload>) -> Upload {
    assert_eq!(uploads.len(), 1, "{uploads:?}");
    uploads.remove(0)
}

/// Hands one upload of `from` to the session `to`, as the server would deliver it (relay
/// uploads and datagrams, to the destinations of `to`'s pair) or as the direct connection
/// carries it. Notices for the server go nowhere.
fn carry(from: HostId, upload: Upload, to: &mut Session, now: Instant) -> Result<(), String> {
    let pair = to
        .pair_of(from)
        .expect("the sender is a peer of the receiver");
    match upload {
        Upload::Control(_) => {}
        Upload::Relay { frame, .. } => {
            let ClientToServer::Relay {
                group,
                lane,
                dests,
                payload,
                ..
            } = frame
            else {
                panic!("not a relay upload: {frame:?}")
            };
            for dest in dests.iter().filter(|d| d.pair == pair) {
                to.handle_frame(
                    ServerToClient::Deliver {
                        from,
                        group,
                        lane,
                        seq: dest.seq,
                        payload: payload.clone(),
                    },
                    now,
                )?;
            }
        }
        Upload::Datagram(ClientDatagram::Relay {
            group,
            lane,
            dests,
            payload,
            ..
        }) => {
            for dest in dests.iter().filter(|d| d.pair == pair) {
                to.handle_datagram(
                    ServerDatagram::Deliver {
                        from,
                        group,
                        lane,
                        seq: dest.seq,
                        payload: payload.clone(),
                    },
                    now,
                );
            }
        }
        Upload::PeerControl {
            to: host,
            frame: PeerToPeer::Ack { received },
        } => {
            assert_eq!(host, to.host_id, "addressed to another peer");
            fifo_ack(to, from, received)?;
        }
        Upload::Peer {
            to: host, frame, ..
        }
        | Upload::PeerControl { to: host, frame } => {
            assert_eq!(host, to.host_id, "addressed to another peer");
            to.handle_peer_frame(from, frame, now)?;
        }
        Upload::PeerDatagram { to: host, datagram } => {
            assert_eq!(host, to.host_id, "addressed to another peer");
            to.handle_peer_datagram(from, datagram, now);
        }
    }
    Ok(())
}

fn carry_all(from: HostId, uploads: Vec<Upload>, to: &mut Session, now: Instant) {
    for upload in uploads {
        carry(from, upload, to, now).unwrap();
    }
}

type Got = (String, Delivery, u8, Path);

fn got(t: &str, delivery: Delivery, channel: u8, path: Path) -> Got {
    (t.to_owned(), delivery, channel, path)
}

/// The messages delivered, as (text, delivery, channel, path); any other event fails.
fn received(s: &mut Session) -> Vec<Got> {
    events(s)
        .into_iter()
        .map(|e| match e {
            ClientEvent::Message {
                payload,
                delivery,
                channel,
                path,
                ..
            } => (string(&payload), delivery, channel, path),
            other => panic!("unexpected {other:?}"),
        })
        .collect()
}

fn texts(s: &mut Session) -> Vec<String> {
    received(s).into_iter().map(|(t, ..)| t).collect()
}

/// The lane and number of a relay upload with one destination.
fn relay_number(upload: &Upload) -> (Lane, u64) {
    match upload {
        Upload::Relay {
            frame: ClientToServer::Relay { lane, dests, .. },
            ..
        } if dests.len() == 1 => (*lane, dests[0].seq),
        other => panic!("not a relay upload to one peer: {other:?}"),
    }
}

/// The lane and number of a relayed datagram with one destination.
fn datagram_number(upload: &Upload) -> (DatagramLane, u64) {
    match upload {
        Upload::Datagram(ClientDatagram::Relay { lane, dests, .. }) if dests.len() == 1 => {
            (*lane, dests[0].seq)
        }
        other => panic!("not a datagram to one peer: {other:?}"),
    }
}

/// The payload of a message upload, as text.
fn upload_text(upload: &Upload) -> String {
    match upload {
        Upload::Relay {
            frame: ClientToServer::Relay { payload, .. },
            ..
        }
        | Upload::Datagram(ClientDatagram::Relay { payload, .. })
        | Upload::Peer {
            frame: PeerToPeer::Data { payload, .. },
            ..
        }
        | Upload::PeerDatagram {
            datagram: ServerDatagram::Deliver { payload, .. },
            ..
        } => string(payload),
        other => panic!("not a message: {other:?}"),
    }
}

/// What ME's relay upload to PEER alone looks like.
fn relay_to_peer(lane: Lane, seq: u64, priority: Priority, t: &str) -> Upload {
    Upload::Relay {
        frame: ClientToServer::Relay {
            group: None,
            to_server: false,
            lane,
            priority,
            dests: smallvec![RelayDest { pair: PAIR, seq }],
            payload: text(t),
        },
        priority,
        flow: relay_flow(lane, &[PAIR], None, false),
        latest: lane.latest_key(),
    }
}

fn ack(received: u64) -> PeerToPeer {
    PeerToPeer::Ack { received }
}

/// Hands `s` an ack from `peer` as if the direct queue sent frames in the order they were
/// queued (no priorities or replacements in play): every unacked frame not reported yet
/// is reported as gone out, in id order, then the ack is handed in.
fn fifo_ack(s: &mut Session, peer: HostId, received: u64) -> Result<(), String> {
    let ids = s.peers[&peer].direct.unreported_ids();
    s.handle_direct_sent(peer, ids);
    s.handle_direct_ack(peer, received)
}

// ---- notices, targets, numbers (translated) ------------------------------------------

#[test]
fn every_join_notice_is_acked_and_reported_with_the_vouched_identity() {
    let now = Instant::now();
    let mut s = session(ME, NO_PINGS, now);
    s.handle_frame(
        ServerToClient::PeerUp {
            peer: PEER,
            pair: PAIR,
            info: info(2),
        },
        now,
    )
    .unwrap();
    s.handle_frame(joined(PEER, 2), now).unwrap();
    s.handle_frame(joined(ME, 2), now).unwrap();
    // Two frames of notices handled before anything was sent: one ack covers both.
    assert_eq!(
        uploads(&mut s),
        vec![Upload::Control(ClientToServer::Ack { notices: 2 })]
    );
    let evs = events(&mut s);
    assert!(matches!(
        &evs[0],
        ClientEvent::MemberJoined { member, peer: Some(p), .. } if *member == PEER && *p == info(2)
    ));
    assert!(matches!(
        &evs[1],
        ClientEvent::MemberJoined { member, peer: None, .. } if *member == ME
    ));
    assert_eq!(s.groups(), vec![G]);
    assert_eq!(s.group_members(G), Some(vec![ME, PEER]));
}

#[test]
fn a_group_send_is_one_upload_with_a_sequence_number_per_pair() {
    let mut s = session_in_group(Instant::now());
    let payload = Bytes::from_static(b"hello");
    let first = s
        .plan_send(
            &Target::Group(G),
            payload.clone(),
            Delivery::ReliableOrdered.into(),
            None,
        )
        .unwrap();
    let second = s
        .plan_send(
            &Target::Host(PEER),
            payload.clone(),
            Delivery::ReliableOrdered.into(),
            None,
        )
        .unwrap();
    assert_eq!(
        first,
        vec![Upload::Relay {
            frame: ClientToServer::Relay {
                group: Some(G),
                to_server: false,
                lane: CH0,
                priority: Priority::Medium,
                dests: smallvec![
                    RelayDest { pair: PAIR, seq: 1 },
                    RelayDest {
                        pair: PAIR2,
                        seq: 1
                    }
                ],
                payload: payload.clone(),
            },
            priority: Priority::Medium,
            // Only latest values have a flow.
            flow: 0,
            latest: None,
        }]
    );
    assert_eq!(
        second,
        vec![relay_to_peer(CH0, 2, Priority::Medium, "hello")]
    );
    // Different destination sets are different flows, so one never replaces the other.
    assert_ne!(
        flow_of(&[PAIR, PAIR2], Some(G), false),
        flow_of(&[PAIR], None, false)
    );
}

#[test]
fn targets_this_client_may_not_use_are_refused_without_using_a_sequence_number() {
    let mut s = session_in_group(Instant::now());
    let other_group = GroupId::from_raw(99);
    let stranger = HostId::from_raw(77 << 32 | 9);
    let p = || Bytes::from_static(b"x");
    let ordered = SendOptions::from(Delivery::ReliableOrdered);
    assert_eq!(
        s.plan_send(&Target::Group(other_group), p(), ordered, None),
        Err(SendError::NotInGroup(other_group))
    );
    assert_eq!(
        s.plan_send(&Target::Hosts(vec![PEER, stranger]), p(), ordered, None),
        Err(SendError::NotAPeer(stranger))
    );
    let ok = s
        .plan_send(&Target::Host(PEER), p(), ordered, None)
        .unwrap();
    assert_eq!(relay_number(&ok[0]), (CH0, 1));
}

#[test]
fn loopback_is_delivered_locally_and_the_server_is_reached_directly() {
    let mut s = session_in_group(Instant::now());
    let uploads = s
        .plan_send(
            &Target::GroupLoopback(G),
            Bytes::from_static(b"me too"),
            Delivery::ReliableOrdered.on_channel(4),
            None,
        )
        .unwrap();
    assert_eq!(uploads.len(), 1);
    assert_eq!(
        events(&mut s),
        vec![ClientEvent::Message {
            from: ME,
            group: Some(G),
            payload: Bytes::from_static(b"me too"),
            delivery: Delivery::ReliableOrdered,
            channel: 4,
            path: Path::Loopback
        }]
    );
    let to_server = s
        .plan_send(
            &Target::Server,
            Bytes::from_static(b"s"),
            Delivery::ReliableOrdered.with_priority(Priority::High),
            None,
        )
        .unwrap();
    assert_eq!(
        to_server,
        vec![Upload::Relay {
            frame: ClientToServer::Relay {
                group: None,
                to_server: true,
                lane: CH0,
                priority: Priority::High,
                dests: smallvec![],
                payload: Bytes::from_static(b"s")
            },
            // The server application's messages keep their order in the upload queue.
            priority: Priority::Medium,
            flow: 0,
            latest: None,
        }]
    );
}

#[test]
fn unreliable_sends_must_fit_a_datagram_and_big_groups_are_split() {
    let now = Instant::now();
    let mut s = session(ME, NO_PINGS, now);
    for n in 0..300u64 {
        let peer = HostId::from_raw(2 << 32 | (n + 10));
        s.handle_frame(
            ServerToClient::PeerUp {
                peer,
                pair: PairId::from_raw(3 << 32 | n),
                info: info(1),
            },
            now,
        )
        .unwrap();
        s.handle_frame(joined(peer, 1), now).unwrap();
    }
    s.handle_frame(joined(ME, 301), now).unwrap();
    assert_eq!(
        s.plan_send(
            &Target::Group(G),
            Bytes::from(vec![0u8; 1200]),
            Delivery::Unreliable.into(),
            Some(1200)
        ),
        Err(SendError::TooLargeForDatagram {
            len: 1200,
            // The upload (with one destination) is the tighter of the two legs.
            max: 1200 - UPLOAD_FIXED_OVERHEAD - DATAGRAM_DEST_LEN
        })
    );
    assert!(matches!(
        s.plan_send(
            &Target::Group(G),
            Bytes::new(),
            Delivery::Unreliable.into(),
            None
        ),
        Err(SendError::TooLargeForDatagram { max: 0, .. })
    ));
    for delivery in [Delivery::Unreliable, Delivery::UnreliableSequenced] {
        let uploads = s
            .plan_send(
                &Target::Group(G),
                Bytes::from(vec![0u8; 100]),
                delivery.into(),
                Some(1200),
            )
            .unwrap();
        let mut total = 0;
        for upload in &uploads {
            let Upload::Datagram(datagram) = upload else {
                panic!("unreliable sends are datagrams")
            };
            let ClientDatagram::Relay { dests, .. } = datagram;
            total += dests.len();
            let encoded = peergroup_protocol::datagram_to_bytes(datagram).unwrap();
            assert!(encoded.len() <= 1200, "{} bytes", encoded.len());
        }
        assert_eq!(total, 300);
        assert!(uploads.len() > 1);
    }
}

#[test]
fn reliable_payloads_over_the_frame_limit_are_refused() {
    let mut s = session_in_group(Instant::now());
    let result = s.plan_send(
        &Target::Host(PEER),
        Bytes::from(vec![0u8; 1 << 20]),
        Delivery::ReliableOrdered.into(),
        None,
    );
    assert!(
        matches!(result, Err(SendError::TooLarge { .. })),
        "{result:?}"
    );
}

#[test]
fn peer_stats_count_the_early_arrivals_held_behind_a_gap() {
    let now = Instant::now();
    let mut s = session_in_group(now);
    let deliver = |lane, seq| ServerToClient::Deliver {
        from: PEER,
        group: Some(G),
        lane,
        seq,
        payload: Bytes::from_static(b"m"),
    };
    let held = |s: &Session| s.peer_stats(PEER, now).unwrap().held;
    s.handle_frame(deliver(CH0, 2), now).unwrap();
    s.handle_frame(deliver(CH0, 3), now).unwrap();
    // The unordered lane holds nothing back, so nothing of it is held.
    s.handle_frame(deliver(Lane::Unordered, 2), now).unwrap();
    assert_eq!(held(&s), 2, "channel 0 holds 2 and 3 until 1 comes");
    assert_eq!(s.peer_stats(OTHER, now).unwrap().held, 0);
    s.handle_frame(deliver(CH0, 1), now).unwrap();
    assert_eq!(held(&s), 0, "the gap filled: all three delivered");
    assert_eq!(received(&mut s).len(), 4);
}

#[test]
fn relayed_messages_arrive_in_sequence_and_skips_fill_gaps() {
    let now = Instant::now();
    let mut s = session_in_group(now);
    let deliver = |seq, text: &'static str| ServerToClient::Deliver {
        from: PEER,
        group: Some(G),
        lane: CH0,
        seq,
        payload: Bytes::from_static(text.as_bytes()),
    };
    s.handle_frame(deliver(1, "a"), now).unwrap();
    s.handle_frame(
        ServerToClient::Skipped {
            from: PEER,
            lane: CH0,
            seq: 2,
        },
        now,
    )
    .unwrap();
    s.handle_frame(deliver(3, "c"), now).unwrap();
    assert_eq!(
        received(&mut s),
        vec![
            got("a", Delivery::ReliableOrdered, 0, Path::Relay),
            got("c", Delivery::ReliableOrdered, 0, Path::Relay)
        ]
    );
    s.handle_frame(deliver(3, "c"), now).unwrap();
    assert!(
        events(&mut s).is_empty(),
        "a duplicate (sent again after a path switch) is dropped"
    );
    assert!(s
        .handle_frame(
            ServerToClient::Deliver {
                from: HostId::from_raw(555),
                group: None,
                lane: CH0,
                seq: 1,
                payload: Bytes::new()
            },
            now
        )
        .is_err());
}

#[test]
fn a_stale_peer_down_does_not_remove_a_newer_pair_and_leaving_forgets_the_group() {
    let now = Instant::now();
    let mut s = session_in_group(now);
    s.handle_frame(
        ServerToClient::PeerDown {
            peer: PEER,
            pair: PairId::from_raw(12345),
        },
        now,
    )
    .unwrap();
    assert!(s.peer_info(PEER).is_some());
    s.handle_frame(left(ME, 2), now).unwrap();
    assert!(s.groups().is_empty());
    assert_eq!(
        s.plan_send(
            &Target::Group(G),
            Bytes::new(),
            Delivery::ReliableOrdered.into(),
            None
        ),
        Err(SendError::NotInGroup(G))
    );
    s.handle_frame(
        ServerToClient::PeerDown {
            peer: PEER,
            pair: PAIR,
        },
        now,
    )
    .unwrap();
    assert_eq!(s.peers(), vec![OTHER]);
}

#[test]
fn refusals_name_the_peer_of_the_pair() {
    let now = Instant::now();
    let mut s = session_in_group(now);
    s.handle_frame(
        ServerToClient::Refused {
            pair: Some(PAIR2),
            group: None,
            reason: RefuseReason::NoSharedGroup,
        },
        now,
    )
    .unwrap();
    assert_eq!(
        events(&mut s),
        vec![ClientEvent::SendFailed {
            to: OTHER,
            group: None,
            reason: RefuseReason::NoSharedGroup
        }]
    );
}

#[test]
fn a_direct_peer_gets_its_copy_direct_and_the_rest_share_one_relay_upload() {
    let now = Instant::now();
    let mut s = session_in_group(now);
    assert!(s.set_direct(PEER, ms(3), now));
    assert_eq!(
        uploads(&mut s),
        vec![Upload::Control(ClientToServer::PathReport {
            pair: PAIR,
            path: PairPath::Direct,
            reason: PathReason::Punched
        })]
    );
    events(&mut s);
    let payload = Bytes::from_static(b"m");
    let uploads = s
        .plan_send(
            &Target::Group(G),
            payload.clone(),
            Delivery::ReliableOrdered.into(),
            None,
        )
        .unwrap();
    assert_eq!(
        uploads,
        vec![
            Upload::Peer {
                to: PEER,
                frame: PeerToPeer::Data {
                    group: Some(G),
                    memberships: Some(Memberships {
                        sender: 1,
                        receiver: 1
                    }),
                    lane: CH0,
                    seq: 1,
                    payload: payload.clone()
                },
                priority: Priority::Medium,
                latest: None,
                id: 1,
            },
            Upload::Relay {
                frame: ClientToServer::Relay {
                    group: Some(G),
                    to_server: false,
                    lane: CH0,
                    priority: Priority::Medium,
                    dests: smallvec![RelayDest {
                        pair: PAIR2,
                        seq: 1
                    }],
                    payload,
                },
                priority: Priority::Medium,
                flow: 0,
                latest: None,
            }
        ]
    );
    assert_eq!(s.peer_stats(PEER, now).unwrap().unacked, 1);
    assert_eq!(s.peer_stats(OTHER, now).unwrap().unacked, 0);
}

#[test]
fn when_the_direct_path_dies_unacked_messages_go_again_through_the_relay_with_their_numbers() {
    let now = Instant::now();
    let mut s = session_in_group(now);
    s.set_direct(PEER, ms(3), now);
    for t in ["a", "b", "c"] {
        send(&mut s, PEER, t, Delivery::ReliableOrdered);
    }
    fifo_ack(&mut s, PEER, 1).unwrap();
    assert_eq!(s.peer_stats(PEER, now).unwrap().unacked, 2);
    drain(&mut s);
    s.set_relay(PEER, PathReason::DirectTimedOut, now);
    assert_eq!(
        uploads(&mut s),
        vec![
            relay_to_peer(CH0, 2, Priority::Medium, "b"),
            relay_to_peer(CH0, 3, Priority::Medium, "c"),
            Upload::Control(ClientToServer::PathReport {
                pair: PAIR,
                path: PairPath::Relay,
                reason: PathReason::DirectTimedOut
            }),
        ]
    );
    assert_eq!(
        events(&mut s),
        vec![ClientEvent::PathChanged {
            peer: PEER,
            path: PairPath::Relay,
            rtt: None,
            reason: PathReason::DirectTimedOut
        }]
    );
    // New messages continue the same sequence on the relay.
    let next = only(send(&mut s, PEER, "d", Delivery::ReliableOrdered));
    assert_eq!(next, relay_to_peer(CH0, 4, Priority::Medium, "d"));
    s.set_relay(PEER, PathReason::DirectTimedOut, now);
    assert!(uploads(&mut s).is_empty(), "already on the relay");
    assert!(events(&mut s).is_empty());
}

#[test]
fn direct_and_relay_arrivals_merge_into_one_sequence_and_are_acked() {
    let now = Instant::now();
    let mut s = session_in_group(now);
    s.set_direct(PEER, ms(3), now);
    drain(&mut s);
    let number = |seq: u64| Bytes::from(seq.to_be_bytes().to_vec());
    // 2 comes direct before 1 arrives through the relay; then 2 again through the relay.
    s.handle_peer_frame(
        PEER,
        PeerToPeer::Data {
            group: None,
            memberships: None,
            lane: CH0,
            seq: 2,
            payload: number(2),
        },
        now,
    )
    .unwrap();
    assert!(events(&mut s).is_empty());
    for seq in [1, 2] {
        s.handle_frame(
            ServerToClient::Deliver {
                from: PEER,
                group: None,
                lane: CH0,
                seq,
                payload: number(seq),
            },
            now,
        )
        .unwrap();
    }
    let delivered: Vec<(u64, Path)> = events(&mut s)
        .into_iter()
        .map(|e| match e {
            ClientEvent::Message { payload, path, .. } => (
                u64::from_be_bytes(payload.as_ref().try_into().unwrap()),
                path,
            ),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(delivered, vec![(1, Path::Relay), (2, Path::Direct)]);
    assert_eq!(s.peer_stats(PEER, now).unwrap().duplicates_dropped, 1);
    // One data frame came on the direct connection.
    s.flush_acks();
    assert_eq!(
        uploads(&mut s),
        vec![Upload::PeerControl {
            to: PEER,
            frame: ack(1)
        }]
    );
    s.flush_acks();
    assert!(uploads(&mut s).is_empty(), "nothing new to ack");
}

#[test]
fn a_direct_datagram_claiming_another_sender_is_dropped() {
    let now = Instant::now();
    let mut s = session_in_group(now);
    let datagram = |from, t: &'static str| ServerDatagram::Deliver {
        from,
        group: None,
        lane: DatagramLane::Plain,
        seq: 0,
        payload: Bytes::from_static(t.as_bytes()),
    };
    s.handle_peer_datagram(PEER, datagram(OTHER, "lie"), now);
    assert!(events(&mut s).is_empty());
    s.handle_peer_datagram(PEER, datagram(PEER, "true"), now);
    assert!(matches!(
        events(&mut s).as_slice(),
        [ClientEvent::Message { path: Path::Direct, from, .. }] if *from == PEER
    ));
}

#[test]
fn a_peer_that_skips_a_number_cannot_make_us_hold_unbounded_memory() {
    let now = Instant::now();
    let mut s = session_in_group(now);
    let big = Bytes::from(vec![0u8; 1 << 20]);
    // Sequence 1 never comes; 2, 3, ... arrive through the relay, 1 MiB each.
    for seq in 2..=40u64 {
        s.handle_frame(
            ServerToClient::Deliver {
                from: PEER,
                group: None,
                lane: CH0,
                seq,
                payload: big.clone(),
            },
            now,
        )
        .unwrap();
    }
    // 2..=16 are held (15 MiB and their entries); 17 would pass 16 MiB: PEER is ignored,
    // what it held is dropped, and 17..=40 are discarded.
    assert_eq!(
        events(&mut s),
        [ClientEvent::PeerIgnored {
            peer: PEER,
            fault: PeerFault::TooManyEarlyArrivals {
                held: 15,
                held_bytes: 15 * ((1 << 20) + HELD_ENTRY_COST),
            },
        }]
    );
    assert_eq!(s.held_bytes(PEER), 0);
    assert_eq!(s.peer_stats(PEER, now).unwrap().discarded, 40 - 16);
    // Other peers are unaffected.
    s.handle_frame(
        ServerToClient::Deliver {
            from: OTHER,
            group: None,
            lane: CH0,
            seq: 1,
            payload: Bytes::from_static(b"fine"),
        },
        now,
    )
    .unwrap();
    assert_eq!(events(&mut s).len(), 1);
}

// ---- each mode end to end, sender session to receiver session -------------------------

#[test]
fn reliable_ordered_is_in_order_per_channel_and_a_gap_in_one_channel_does_not_hold_back_another() {
    let now = Instant::now();
    let (mut a, mut b) = two_sessions(NO_PINGS, now);
    let ordered = |channel| Delivery::ReliableOrdered.on_channel(channel);
    let sent: Vec<Upload> = [("a1", 0), ("b1", 1), ("a2", 0), ("b2", 1), ("a3", 0)]
        .into_iter()
        .map(|(t, channel)| only(send(&mut a, PEER, t, ordered(channel))))
        .collect();
    assert_eq!(
        sent.iter().map(relay_number).collect::<Vec<_>>(),
        [(CH0, 1), (CH1, 1), (CH0, 2), (CH1, 2), (CH0, 3)]
    );
    let [a1, b1, a2, b2, a3] = <[Upload; 5]>::try_from(sent).unwrap();
    // a1 is late: channel 0 waits for it, channel 1 does not.
    carry_all(ME, vec![a3, b1, a2.clone(), b2], &mut b, now);
    let on = |t, channel| got(t, Delivery::ReliableOrdered, channel, Path::Relay);
    assert_eq!(received(&mut b), [on("b1", 1), on("b2", 1)]);
    assert_eq!(b.held_bytes(ME), 4 + 2 * HELD_ENTRY_COST);
    carry(ME, a1, &mut b, now).unwrap();
    assert_eq!(received(&mut b), [on("a1", 0), on("a2", 0), on("a3", 0)]);
    assert_eq!(b.held_bytes(ME), 0);
    // A copy of a delivered message is dropped.
    carry(ME, a2, &mut b, now).unwrap();
    assert!(received(&mut b).is_empty());
    let stats = b.peer_stats(ME, now).unwrap();
    assert_eq!(stats.duplicates_dropped, 1);
    assert_eq!(stats.delivered_by_mode.reliable_ordered.messages, 5);
    assert_eq!(a.peer_stats(PEER, now).unwrap().relay_sent.messages, 5);
}

#[test]
fn reliable_unordered_is_delivered_on_arrival_and_duplicates_are_dropped() {
    let now = Instant::now();
    let (mut a, mut b) = two_sessions(NO_PINGS, now);
    let sent: Vec<Upload> = ["u1", "u2", "u3"]
        .into_iter()
        // A channel means nothing to this mode.
        .map(|t| {
            only(send(
                &mut a,
                PEER,
                t,
                Delivery::ReliableUnordered.on_channel(5),
            ))
        })
        .collect();
    assert_eq!(
        sent.iter().map(relay_number).collect::<Vec<_>>(),
        [
            (Lane::Unordered, 1),
            (Lane::Unordered, 2),
            (Lane::Unordered, 3)
        ]
    );
    let at = |t| got(t, Delivery::ReliableUnordered, 0, Path::Relay);
    carry(ME, sent[2].clone(), &mut b, now).unwrap();
    assert_eq!(received(&mut b), [at("u3")], "no wait for 1 and 2");
    carry(ME, sent[0].clone(), &mut b, now).unwrap();
    assert_eq!(received(&mut b), [at("u1")]);
    for i in [2, 0] {
        carry(ME, sent[i].clone(), &mut b, now).unwrap();
    }
    assert!(received(&mut b).is_empty(), "copies are dropped");
    carry(ME, sent[1].clone(), &mut b, now).unwrap();
    assert_eq!(received(&mut b), [at("u2")]);
    assert_eq!(b.held_bytes(ME), 0);
    assert_eq!(b.peer_stats(ME, now).unwrap().duplicates_dropped, 2);
}

#[test]
fn unreliable_sequenced_drops_older_datagrams_and_duplicates_per_channel() {
    let now = Instant::now();
    let (mut a, mut b) = two_sessions(NO_PINGS, now);
    let sequenced = |channel| Delivery::UnreliableSequenced.on_channel(channel);
    let sent: Vec<Upload> = [("s1", 0), ("s2", 0), ("s3", 0), ("s4", 0), ("x1", 1)]
        .into_iter()
        .map(|(t, channel)| only(send(&mut a, PEER, t, sequenced(channel))))
        .collect();
    let ch = |channel| DatagramLane::Sequenced { channel };
    assert_eq!(
        sent.iter().map(datagram_number).collect::<Vec<_>>(),
        [(ch(0), 1), (ch(0), 2), (ch(0), 3), (ch(0), 4), (ch(1), 1)]
    );
    for i in [1, 0, 1, 3, 4, 2] {
        carry(ME, sent[i].clone(), &mut b, now).unwrap();
    }
    let at = |t, channel| got(t, Delivery::UnreliableSequenced, channel, Path::Relay);
    assert_eq!(received(&mut b), [at("s2", 0), at("s4", 0), at("x1", 1)]);
    assert_eq!(b.peer_stats(ME, now).unwrap().stale_dropped, 3);
}

#[test]
fn unreliable_datagrams_carry_number_zero_and_are_delivered_in_any_order() {
    let now = Instant::now();
    let (mut a, mut b) = two_sessions(NO_PINGS, now);
    let sent: Vec<Upload> = ["d1", "d2"]
        .into_iter()
        .map(|t| only(send(&mut a, PEER, t, Delivery::Unreliable)))
        .collect();
    assert_eq!(
        sent.iter().map(datagram_number).collect::<Vec<_>>(),
        [(DatagramLane::Plain, 0), (DatagramLane::Plain, 0)]
    );
    carry_all(ME, sent.into_iter().rev().collect(), &mut b, now);
    let at = |t| got(t, Delivery::Unreliable, 0, Path::Relay);
    assert_eq!(received(&mut b), [at("d2"), at("d1")]);
}

/// Every ordering of `items`.
fn permutations<T: Clone>(items: &[T]) -> Vec<Vec<T>> {
    if items.len() <= 1 {
        return vec![items.to_vec()];
    }
    let mut all = Vec::new();
    for i in 0..items.len() {
        let mut rest = items.to_vec();
        let first = rest.remove(i);
        for mut tail in permutations(&rest) {
            tail.insert(0, first.clone());
            all.push(tail);
        }
    }
    all
}

#[test]
fn latest_never_delivers_an_older_value_of_a_key_after_a_newer_one_and_the_last_arrives() {
    let now = Instant::now();
    let (mut a, mut b) = two_sessions(NO_PINGS, now);
    let latest = |key| Delivery::Latest { key };
    let sent: Vec<Upload> = [("7a", 7), ("8a", 8), ("7b", 7), ("7c", 7)]
        .into_iter()
        .map(|(t, key)| only(send(&mut a, PEER, t, latest(key))))
        .collect();
    // All keys share one counter; each upload names its key for replacement in queues.
    assert_eq!(
        sent.iter()
            .map(|u| match u {
                Upload::Relay { latest, .. } => (relay_number(u), *latest),
                other => panic!("unexpected {other:?}"),
            })
            .collect::<Vec<_>>(),
        [
            ((Lane::Latest { key: 7 }, 1), Some(7)),
            ((Lane::Latest { key: 8 }, 2), Some(8)),
            ((Lane::Latest { key: 7 }, 3), Some(7)),
            ((Lane::Latest { key: 7 }, 4), Some(7)),
        ]
    );
    // 7b first, then the older 7a (stale), 8a, 7c, and late copies.
    for i in [2, 0, 1, 3, 2, 0] {
        carry(ME, sent[i].clone(), &mut b, now).unwrap();
    }
    let at = |t, key| got(t, latest(key), 0, Path::Relay);
    assert_eq!(received(&mut b), [at("7b", 7), at("8a", 8), at("7c", 7)]);
    assert_eq!(b.peer_stats(ME, now).unwrap().stale_dropped, 3);

    // Whatever order the relay and the direct path bring them in.
    for order in permutations(&sent) {
        let (_, mut b) = two_sessions(NO_PINGS, now);
        carry_all(ME, order, &mut b, now);
        let delivered = texts(&mut b);
        let sevens: Vec<&String> = delivered.iter().filter(|t| t.starts_with('7')).collect();
        assert!(
            sevens.windows(2).all(|w| w[0] < w[1]),
            "an older value after a newer one: {delivered:?}"
        );
        assert_eq!(
            sevens.last().map(|t| t.as_str()),
            Some("7c"),
            "{delivered:?}"
        );
        assert!(delivered.contains(&"8a".to_owned()), "{delivered:?}");
    }
}

// ---- each mode across a path switch ---------------------------------------------------

#[test]
fn after_a_path_switch_unacked_reliable_messages_go_again_through_the_relay_with_lane_number_and_priority(
) {
    let now = Instant::now();
    let (mut a, mut b) = two_direct_sessions(now);
    let sends: [(&str, SendOptions); 8] = [
        ("o1", Delivery::ReliableOrdered.with_priority(Priority::Low)),
        (
            "p1",
            Delivery::ReliableOrdered
                .on_channel(1)
                .with_priority(Priority::High),
        ),
        ("u1", Delivery::ReliableUnordered.into()),
        (
            "l1",
            Delivery::Latest { key: 5 }.with_priority(Priority::High),
        ),
        ("d1", Delivery::Unreliable.into()),
        ("s1", Delivery::UnreliableSequenced.into()),
        ("o2", Delivery::ReliableOrdered.into()),
        (
            "l2",
            Delivery::Latest { key: 5 }.with_priority(Priority::Low),
        ),
    ];
    let mut direct = Vec::new();
    for (t, options) in sends {
        direct.extend(send(&mut a, PEER, t, options));
    }
    assert!(
        direct.iter().all(|u| matches!(
            u,
            Upload::Peer { to, .. } | Upload::PeerDatagram { to, .. } if *to == PEER
        )),
        "{direct:?}"
    );
    assert_eq!(a.peer_stats(PEER, now).unwrap().unacked, 6);
    // Every direct copy arrives...
    carry_all(ME, direct, &mut b, now);
    let first = received(&mut b);
    assert_eq!(
        first.iter().map(|(t, ..)| t.as_str()).collect::<Vec<_>>(),
        ["o1", "p1", "u1", "l1", "d1", "s1", "o2", "l2"]
    );
    assert!(first.iter().all(|(.., path)| *path == Path::Direct));
    // ...but the path dies before an ack comes back.
    a.set_relay(PEER, PathReason::DirectTimedOut, now);
    let resent = uploads(&mut a);
    let latest = Lane::Latest { key: 5 };
    // Datagrams are not among them.
    assert_eq!(
        resent,
        vec![
            relay_to_peer(CH0, 1, Priority::Low, "o1"),
            relay_to_peer(CH1, 1, Priority::High, "p1"),
            relay_to_peer(Lane::Unordered, 1, Priority::Medium, "u1"),
            relay_to_peer(latest, 1, Priority::High, "l1"),
            relay_to_peer(CH0, 2, Priority::Medium, "o2"),
            relay_to_peer(latest, 2, Priority::Low, "l2"),
            Upload::Control(ClientToServer::PathReport {
                pair: PAIR,
                path: PairPath::Relay,
                reason: PathReason::DirectTimedOut
            }),
        ]
    );
    let stats = a.peer_stats(PEER, now).unwrap();
    assert_eq!(stats.unacked, 0);
    assert_eq!(stats.path, Some(PairPath::Relay));
    // The relay copies come second and are all dropped.
    b.set_relay(ME, PathReason::DirectTimedOut, now);
    drain(&mut b);
    carry_all(ME, resent, &mut b, now);
    assert!(received(&mut b).is_empty());
    let stats = b.peer_stats(ME, now).unwrap();
    assert_eq!(stats.duplicates_dropped, 4);
    assert_eq!(stats.stale_dropped, 2);
    // New messages continue every lane's numbers on the relay; a new latest value has the
    // resent ones' flow, so it would replace them in the upload queue.
    let next: Vec<Upload> = [
        ("o3", SendOptions::from(Delivery::ReliableOrdered)),
        ("l3", Delivery::Latest { key: 5 }.into()),
        ("s2", Delivery::UnreliableSequenced.into()),
    ]
    .into_iter()
    .map(|(t, options)| only(send(&mut a, PEER, t, options)))
    .collect();
    assert_eq!(next[0], relay_to_peer(CH0, 3, Priority::Medium, "o3"));
    assert_eq!(next[1], relay_to_peer(latest, 3, Priority::Medium, "l3"));
    assert_eq!(
        datagram_number(&next[2]),
        (DatagramLane::Sequenced { channel: 0 }, 2)
    );
    carry_all(ME, next, &mut b, now);
    assert_eq!(
        received(&mut b),
        [
            got("o3", Delivery::ReliableOrdered, 0, Path::Relay),
            got("l3", Delivery::Latest { key: 5 }, 0, Path::Relay),
            got("s2", Delivery::UnreliableSequenced, 0, Path::Relay),
        ]
    );
}

#[test]
fn across_a_path_switch_each_reliable_message_is_delivered_once_and_channels_stay_in_order() {
    let now = Instant::now();
    let (mut a, mut b) = two_direct_sessions(now);
    let sends: [(&str, SendOptions); 10] = [
        ("o1", Delivery::ReliableOrdered.with_priority(Priority::Low)),
        ("p1", Delivery::ReliableOrdered.on_channel(1)),
        ("u1", Delivery::ReliableUnordered.into()),
        ("l1", Delivery::Latest { key: 5 }.into()),
        (
            "o2",
            Delivery::ReliableOrdered.with_priority(Priority::High),
        ),
        ("u2", Delivery::ReliableUnordered.into()),
        ("l2", Delivery::Latest { key: 5 }.into()),
        ("d1", Delivery::Unreliable.into()),
        ("s1", Delivery::UnreliableSequenced.into()),
        ("o3", Delivery::ReliableOrdered.into()),
    ];
    let mut direct = Vec::new();
    for (t, options) in sends {
        direct.extend(send(&mut a, PEER, t, options));
    }
    // The dying connection brought only some, the urgent ones first: o2 overtook o1.
    let arrived = ["p1", "o2", "u2", "l2", "d1"];
    let (mut came, _lost): (Vec<Upload>, Vec<Upload>) = direct
        .into_iter()
        .partition(|u| arrived.contains(&upload_text(u).as_str()));
    assert_eq!(came.len(), arrived.len());
    came.sort_by_key(|u| arrived.iter().position(|t| *t == upload_text(u)));
    carry_all(ME, came, &mut b, now);
    let on_direct = |t, delivery, channel| got(t, delivery, channel, Path::Direct);
    assert_eq!(
        received(&mut b),
        [
            on_direct("p1", Delivery::ReliableOrdered, 1),
            on_direct("u2", Delivery::ReliableUnordered, 0),
            on_direct("l2", Delivery::Latest { key: 5 }, 0),
            on_direct("d1", Delivery::Unreliable, 0),
        ],
        "o2 waits for o1"
    );
    a.set_relay(PEER, PathReason::DirectClosed, now);
    b.set_relay(ME, PathReason::DirectClosed, now);
    drain(&mut b);
    let resent = uploads(&mut a);
    assert!(
        resent
            .iter()
            .all(|u| matches!(u, Upload::Relay { .. } | Upload::Control(_))),
        "no datagram goes again: {resent:?}"
    );
    carry_all(ME, resent, &mut b, now);
    let on_relay = |t, delivery, channel| got(t, delivery, channel, Path::Relay);
    assert_eq!(
        received(&mut b),
        [
            on_relay("o1", Delivery::ReliableOrdered, 0),
            on_direct("o2", Delivery::ReliableOrdered, 0),
            on_relay("u1", Delivery::ReliableUnordered, 0),
            // l1 is older than l2, delivered already: never after it.
            on_relay("o3", Delivery::ReliableOrdered, 0),
        ]
    );
    let stats = b.peer_stats(ME, now).unwrap();
    // p1, o2 and u2 came twice; l1 is stale and l2's copy too.
    assert_eq!(stats.duplicates_dropped, 3);
    assert_eq!(stats.stale_dropped, 2);
    assert_eq!(b.held_bytes(ME), 0);
}

#[test]
fn a_sequenced_datagram_that_comes_late_on_the_old_path_is_dropped() {
    let now = Instant::now();
    let (mut a, mut b) = two_direct_sessions(now);
    let late = only(send(&mut a, PEER, "s1", Delivery::UnreliableSequenced));
    assert!(matches!(late, Upload::PeerDatagram { .. }));
    a.set_relay(PEER, PathReason::DirectTimedOut, now);
    assert!(
        uploads(&mut a)
            .iter()
            .all(|u| matches!(u, Upload::Control(_))),
        "datagrams are never sent again"
    );
    let newer = only(send(&mut a, PEER, "s2", Delivery::UnreliableSequenced));
    assert_eq!(
        datagram_number(&newer),
        (DatagramLane::Sequenced { channel: 0 }, 2)
    );
    carry(ME, newer, &mut b, now).unwrap();
    carry(ME, late, &mut b, now).unwrap();
    assert_eq!(texts(&mut b), ["s2"]);
    assert_eq!(b.peer_stats(ME, now).unwrap().stale_dropped, 1);
}

// ---- acks by count ---------------------------------------------------------------------

#[test]
fn the_receiver_acks_every_32_direct_frames_and_the_sender_forgets_exactly_that_many() {
    let now = Instant::now();
    let (mut a, mut b) = two_direct_sessions(now);
    let mut acks = Vec::new();
    for i in 1..=40u64 {
        let upload = only(send(
            &mut a,
            PEER,
            &format!("m{i}"),
            Delivery::ReliableOrdered,
        ));
        carry(ME, upload, &mut b, now).unwrap();
        // Datagrams are not data frames of the stream: they do not count.
        if i % 10 == 0 {
            let datagram = only(send(&mut a, PEER, "d", Delivery::Unreliable));
            carry(ME, datagram, &mut b, now).unwrap();
        }
        acks.extend(uploads(&mut b).into_iter().map(|u| (i, u)));
    }
    assert_eq!(
        acks,
        vec![(
            32,
            Upload::PeerControl {
                to: ME,
                frame: ack(32)
            }
        )]
    );
    assert_eq!(texts(&mut b).len(), 44);
    b.flush_acks();
    let flushed = uploads(&mut b);
    assert_eq!(
        flushed,
        vec![Upload::PeerControl {
            to: ME,
            frame: ack(40)
        }]
    );
    b.flush_acks();
    assert!(uploads(&mut b).is_empty(), "nothing new to ack");

    assert_eq!(a.peer_stats(PEER, now).unwrap().unacked, 40);
    let (_, first) = acks.remove(0);
    carry(PEER, first.clone(), &mut a, now).unwrap();
    assert_eq!(a.peer_stats(PEER, now).unwrap().unacked, 8);
    // An old ack again changes nothing.
    carry(PEER, first, &mut a, now).unwrap();
    assert_eq!(a.peer_stats(PEER, now).unwrap().unacked, 8);
    // Exactly the first 32 were forgotten: the other 8 would go again.
    a.set_relay(PEER, PathReason::DirectTimedOut, now);
    let resent: Vec<u64> = uploads(&mut a)
        .iter()
        .filter(|u| !matches!(u, Upload::Control(_)))
        .map(|u| relay_number(u).1)
        .collect();
    assert_eq!(resent, (33..=40).collect::<Vec<_>>());
}

#[test]
fn an_ack_drops_exactly_the_count_acked_and_an_ack_of_more_than_was_sent_is_an_error() {
    let now = Instant::now();
    let (mut a, _) = two_direct_sessions(now);
    for t in ["a", "b", "c"] {
        send(&mut a, PEER, t, Delivery::ReliableUnordered);
    }
    send(&mut a, PEER, "d", Delivery::Unreliable);
    let unacked = |a: &Session| a.peer_stats(PEER, now).unwrap().unacked;
    assert_eq!(unacked(&a), 3, "datagrams are never kept");
    fifo_ack(&mut a, PEER, 2).unwrap();
    assert_eq!(unacked(&a), 1);
    fifo_ack(&mut a, PEER, 1).unwrap();
    assert_eq!(unacked(&a), 1, "an older count acks nothing new");
    assert!(fifo_ack(&mut a, PEER, 4).is_err());
    fifo_ack(&mut a, PEER, 3).unwrap();
    assert_eq!(unacked(&a), 0);
    assert!(fifo_ack(&mut a, PEER, 4).is_err());
    // A new direct connection counts from zero again.
    a.set_relay(PEER, PathReason::DirectClosed, now);
    assert!(a.set_direct(PEER, ms(3), now));
    drain(&mut a);
    send(&mut a, PEER, "e", Delivery::ReliableOrdered);
    assert!(fifo_ack(&mut a, PEER, 2).is_err());
    fifo_ack(&mut a, PEER, 1).unwrap();
    assert_eq!(unacked(&a), 0);
}

/// The direct queue as the driver fills it (`driver/flush.rs`): each `Upload::Peer` is
/// pushed with its priority, latest key (flow 0) and id; a replaced value is reported to
/// the session; pops give the order frames go on the stream, and the ids that went out
/// are logged, as the driver does.
struct DirectQueue {
    queue: SendQueue<(PeerToPeer, u64)>,
    went_out: std::collections::VecDeque<u64>,
}

impl DirectQueue {
    fn new() -> Self {
        Self {
            queue: SendQueue::new(),
            went_out: Default::default(),
        }
    }

    fn push(&mut self, sender: &mut Session, uploads: Vec<Upload>) {
        for upload in uploads {
            let Upload::Peer {
                to,
                frame,
                priority,
                latest,
                id,
            } = upload
            else {
                panic!("not a direct frame: {upload:?}")
            };
            let len = frame_to_bytes(&frame, MAX_FRAME_LEN).unwrap().len();
            if let Some(((_, old), _)) =
                self.queue
                    .push_data_returning((frame, id), len, priority, 0, latest)
            {
                sender.forget_replaced(to, old);
            }
        }
    }

    fn pop(&mut self) -> Option<PeerToPeer> {
        let ((frame, id), _) = self.queue.pop()?;
        self.went_out.push_back(id);
        Some(frame)
    }

    /// Hands the sender the receiver's acks, resolved through the log.
    fn deliver_acks(&mut self, sender: &mut Session, from: HostId, acks: Vec<Upload>) {
        for upload in acks {
            if let Upload::PeerControl {
                frame: PeerToPeer::Ack { received },
                ..
            } = upload
            {
                sender.handle_direct_sent(from, self.went_out.drain(..));
                sender.handle_direct_ack(from, received).unwrap();
            }
        }
    }
}

#[test]
fn an_ack_never_drops_a_message_the_direct_queue_has_not_sent_yet() {
    let now = Instant::now();
    let (mut a, mut b) = two_direct_sessions(now);
    let mut queue = DirectQueue::new();
    let chat = send(
        &mut a,
        PEER,
        "chat",
        Delivery::ReliableOrdered.with_priority(Priority::Low),
    );
    queue.push(&mut a, chat);
    let pos = send(
        &mut a,
        PEER,
        "pos",
        Delivery::ReliableOrdered
            .on_channel(1)
            .with_priority(Priority::High),
    );
    queue.push(&mut a, pos);
    // One frame (the High one) makes it to the peer, which acks it; then the connection
    // dies.
    let first = queue.pop().unwrap();
    b.handle_peer_frame(ME, first, now).unwrap();
    let mut delivered = texts(&mut b);
    assert_eq!(delivered, ["pos"]);
    b.flush_acks();
    let acks = uploads(&mut b);
    queue.deliver_acks(&mut a, PEER, acks);
    assert_eq!(
        a.peer_stats(PEER, now).unwrap().unacked,
        1,
        "chat is still unacked"
    );
    a.set_relay(PEER, PathReason::DirectTimedOut, now);
    b.set_relay(ME, PathReason::DirectTimedOut, now);
    drain(&mut b);
    carry_all(ME, uploads(&mut a), &mut b, now);
    delivered.extend(texts(&mut b));
    delivered.sort();
    assert_eq!(delivered, ["chat", "pos"], "no reliable message is lost");
}

#[test]
fn latest_values_replaced_in_the_direct_queue_do_not_stay_unacked_forever() {
    let now = Instant::now();
    let (mut a, mut b) = two_direct_sessions(now);
    let mut queue = DirectQueue::new();
    for t in ["pos1", "pos2", "pos3"] {
        let sent = send(&mut a, PEER, t, Delivery::Latest { key: 1 });
        queue.push(&mut a, sent);
    }
    assert_eq!(
        a.peer_stats(PEER, now).unwrap().unacked,
        1,
        "replaced values are forgotten at once"
    );
    while let Some(frame) = queue.pop() {
        b.handle_peer_frame(ME, frame, now).unwrap();
    }
    assert_eq!(texts(&mut b), ["pos3"]);
    b.flush_acks();
    let acks = uploads(&mut b);
    queue.deliver_acks(&mut a, PEER, acks);
    assert_eq!(
        a.peer_stats(PEER, now).unwrap().unacked,
        0,
        "everything sent was received or superseded"
    );
}

// ---- pings ---------------------------------------------------------------------------

/// The uploads that are not notices for the server.
fn probes(uploads: Vec<Upload>) -> Vec<Upload> {
    uploads
        .into_iter()
        .filter(|u| !matches!(u, Upload::Control(_)))
        .collect()
}

fn relay_probe_to(pair: PairId, lane: DatagramLane) -> Upload {
    Upload::Datagram(ClientDatagram::Relay {
        group: None,
        to_server: false,
        lane,
        server_seq: 0,
        dests: smallvec![RelayDest { pair, seq: 0 }],
        payload: Bytes::new(),
    })
}

fn direct_probe_to(from: HostId, to: HostId, lane: DatagramLane) -> Upload {
    Upload::PeerDatagram {
        to,
        datagram: ServerDatagram::Deliver {
            from,
            group: None,
            lane,
            seq: 0,
            payload: Bytes::new(),
        },
    }
}

#[test]
fn a_relayed_peer_is_pinged_through_the_relay_and_the_pong_gives_rtt_and_a_link_report() {
    let t0 = Instant::now();
    let (mut a, mut b) = two_sessions(PINGS, t0);
    assert!(a.peer_stats(PEER, t0).unwrap().rtt.is_none());
    a.handle_timeout(t0);
    let pings = probes(uploads(&mut a));
    assert_eq!(
        pings,
        vec![relay_probe_to(PAIR, DatagramLane::Ping { id: 0 })]
    );
    carry_all(ME, pings, &mut b, t0 + ms(20));
    let pongs = uploads(&mut b);
    assert_eq!(
        pongs,
        vec![relay_probe_to(PAIR, DatagramLane::Pong { id: 0 })]
    );
    assert!(events(&mut b).is_empty(), "pings are not messages");
    carry_all(PEER, pongs, &mut a, t0 + ms(40));
    assert!(events(&mut a).is_empty(), "pongs are not messages");
    let stats = a.peer_stats(PEER, t0 + ms(40)).unwrap();
    assert_eq!(stats.rtt, Some(ms(40)));
    assert_eq!(stats.last_rtt, Some(ms(40)));
    assert_eq!(stats.loss, Some(0.0));
    // Every 5 s, a report per peer with an RTT.
    a.handle_timeout(t0 + Duration::from_secs(5));
    let reports: Vec<Upload> = uploads(&mut a)
        .into_iter()
        .filter(|u| matches!(u, Upload::Control(ClientToServer::LinkReport { .. })))
        .collect();
    assert_eq!(
        reports,
        vec![Upload::Control(ClientToServer::LinkReport {
            pair: PAIR,
            rtt_us: Some(40_000),
            last_rtt_us: Some(40_000),
            loss_permille: Some(0),
        })]
    );
}

#[test]
fn a_relayed_peer_is_pinged_less_often_than_a_direct_one_and_each_path_change_pings_at_once() {
    let timing = SessionTiming {
        ping_interval: Some(Duration::from_secs(1)),
        relay_ping_interval: Duration::from_secs(10),
    };
    let t0 = Instant::now();
    let (mut a, _b) = two_sessions(timing, t0);
    // On the relay: a ping at once, then none for 10 s.
    a.handle_timeout(t0);
    assert_eq!(probes(uploads(&mut a)).len(), 1);
    for secs in 1..10 {
        a.handle_timeout(t0 + Duration::from_secs(secs));
        assert!(
            probes(uploads(&mut a)).is_empty(),
            "no relay ping at {secs} s"
        );
    }
    a.handle_timeout(t0 + Duration::from_secs(10));
    assert_eq!(
        probes(uploads(&mut a)).len(),
        1,
        "the next relay ping at 10 s"
    );
    // Direct: a ping at once, then one a second.
    let direct = t0 + Duration::from_secs(11);
    assert!(a.set_direct(PEER, ms(3), direct));
    drain(&mut a);
    a.handle_timeout(direct);
    assert_eq!(probes(uploads(&mut a)).len(), 1);
    a.handle_timeout(direct + Duration::from_secs(1));
    assert_eq!(
        probes(uploads(&mut a)).len(),
        1,
        "direct pings every second"
    );
    // Back on the relay: a ping at once, then every 10 s again.
    let back = direct + Duration::from_millis(1_500);
    a.set_relay(PEER, PathReason::DirectTimedOut, back);
    drain(&mut a);
    a.handle_timeout(back);
    assert_eq!(probes(uploads(&mut a)).len(), 1);
    a.handle_timeout(back + Duration::from_secs(5));
    assert!(probes(uploads(&mut a)).is_empty());
}

#[test]
fn a_direct_peer_is_pinged_on_the_direct_path_and_pongs_from_the_old_path_do_not_count() {
    let t0 = Instant::now();
    let (mut a, mut b) = two_sessions(PINGS, t0);
    a.handle_timeout(t0);
    let old = probes(uploads(&mut a));
    assert_eq!(
        old,
        vec![relay_probe_to(PAIR, DatagramLane::Ping { id: 0 })]
    );
    let switch = t0 + ms(10);
    assert!(a.set_direct(PEER, ms(3), switch));
    drain(&mut a);
    // A ping is due on the new path at once.
    assert_eq!(a.poll_timeout().unwrap(), switch);
    a.handle_timeout(switch);
    let pings = probes(uploads(&mut a));
    assert_eq!(
        pings,
        vec![direct_probe_to(ME, PEER, DatagramLane::Ping { id: 1 })]
    );
    // The peer still thinks the pair is relayed: it answers on the path the ping came by.
    carry_all(ME, pings, &mut b, switch + ms(2));
    let pongs = uploads(&mut b);
    assert_eq!(
        pongs,
        vec![direct_probe_to(PEER, ME, DatagramLane::Pong { id: 1 })]
    );
    // Pongs on the relay measure the old path: the late one to the relayed ping, and one
    // that comes the wrong way.
    for id in [0, 1] {
        carry(
            PEER,
            relay_probe_to(PAIR, DatagramLane::Pong { id }),
            &mut a,
            switch + ms(3),
        )
        .unwrap();
    }
    assert_eq!(a.peer_stats(PEER, switch + ms(3)).unwrap().rtt, None);
    carry_all(PEER, pongs, &mut a, switch + ms(6));
    let stats = a.peer_stats(PEER, switch + ms(6)).unwrap();
    assert_eq!(stats.rtt, Some(ms(6)));
    assert_eq!(stats.last_rtt, Some(ms(6)));
    assert_eq!(stats.direct_rtt, Some(ms(3)));
    // And a relayed ping to a direct peer is answered on the relay.
    assert!(b.set_direct(ME, ms(3), switch));
    drain(&mut b);
    carry(
        ME,
        relay_probe_to(PAIR, DatagramLane::Ping { id: 9 }),
        &mut b,
        switch,
    )
    .unwrap();
    assert_eq!(
        uploads(&mut b),
        vec![relay_probe_to(PAIR, DatagramLane::Pong { id: 9 })]
    );
}

#[test]
fn with_pings_off_handle_timeout_sends_no_pings() {
    for (timing, pinged) in [(NO_PINGS, false), (PINGS, true)] {
        let t0 = Instant::now();
        let (mut a, _) = two_sessions(timing, t0);
        let mut sent = Vec::new();
        let mut now = t0;
        let mut direct = false;
        while now < t0 + Duration::from_secs(12) {
            let next = a.poll_timeout().unwrap();
            assert!(next >= now, "poll_timeout went back");
            now = next;
            a.handle_timeout(now);
            sent.extend(uploads(&mut a));
            assert!(
                a.poll_timeout().unwrap() > now,
                "handle_timeout left work due"
            );
            if !direct && now >= t0 + Duration::from_secs(3) {
                a.set_direct(PEER, ms(3), now);
                direct = true;
            }
        }
        let pings = sent
            .iter()
            .filter(|u| matches!(u, Upload::Datagram(_) | Upload::PeerDatagram { .. }))
            .count();
        assert_eq!(pings > 0, pinged, "{sent:?}");
        assert!(sent
            .iter()
            .any(|u| matches!(u, Upload::Control(ClientToServer::TimeRequest { .. }))));
        if !pinged {
            assert!(a.peer_stats(PEER, now).unwrap().rtt.is_none());
            assert!(!sent
                .iter()
                .any(|u| matches!(u, Upload::Control(ClientToServer::LinkReport { .. }))));
        }
    }
}

// ---- the server clock ----------------------------------------------------------------

#[test]
fn time_requests_come_from_handle_timeout_in_a_burst_then_every_five_seconds() {
    let t0 = Instant::now();
    let mut s = session(ME, NO_PINGS, t0);
    assert_eq!(s.poll_timeout().unwrap(), t0);
    let mut requests = Vec::new();
    let mut now = t0;
    while now < t0 + Duration::from_secs(16) {
        now = s.poll_timeout().unwrap();
        s.handle_timeout(now);
        for upload in uploads(&mut s) {
            let Upload::Control(ClientToServer::TimeRequest { token }) = upload else {
                panic!("unexpected {upload:?}")
            };
            requests.push(((now - t0).as_millis(), token));
        }
    }
    assert_eq!(
        requests.iter().map(|&(at, _)| at).collect::<Vec<_>>(),
        [0, 100, 200, 300, 5_300, 10_300, 15_300]
    );
    for (at, token) in requests {
        assert_eq!(token, at as u64 * 1_000, "the token is the send time in µs");
    }
}

#[test]
fn a_time_reply_gives_the_server_clock_within_its_error_bound() {
    let t0 = Instant::now();
    let mut s = session(ME, NO_PINGS, t0);
    // The server's clock reads 1000 s at t0.
    let truth = |at: Instant| Duration::from_secs(1000) + (at - t0);
    s.handle_timeout(t0);
    let [Upload::Control(ClientToServer::TimeRequest { token })] = uploads(&mut s)[..] else {
        panic!("one time request")
    };
    assert_eq!(s.server_time(t0), None);
    // A reply to a request never sent is ignored.
    s.handle_frame(
        ServerToClient::Time {
            token: token + 1,
            server_time_us: 1,
        },
        t0 + ms(5),
    )
    .unwrap();
    assert_eq!(s.server_time(t0 + ms(5)), None);
    // 15 ms there, 25 ms back.
    let reply = ServerToClient::Time {
        token,
        server_time_us: truth(t0 + ms(15)).as_micros() as u64,
    };
    s.handle_frame(reply, t0 + ms(40)).unwrap();
    assert!(events(&mut s).is_empty());
    for at in [t0 + ms(40), t0 + Duration::from_secs(10)] {
        let estimate = s.server_time(at).expect("an estimate after a reply");
        let error = if estimate.time > truth(at) {
            estimate.time - truth(at)
        } else {
            truth(at) - estimate.time
        };
        assert!(error <= estimate.error, "{estimate:?} vs {:?}", truth(at));
        // Half the round trip, plus a little for resolution and drift.
        assert!(estimate.error >= ms(20), "{estimate:?}");
        assert!(estimate.error < ms(22), "{estimate:?}");
    }
}

// ---- routes --------------------------------------------------------------------------

#[test]
fn route_names_the_server_queue_for_relayed_peers_and_the_server_and_direct_queues_for_direct_peers(
) {
    let now = Instant::now();
    let mut s = session_in_group(now);
    let route = |server, direct: &[HostId]| (server, super::Hosts::from_slice(direct));
    assert_eq!(
        s.route(&Target::Host(PEER)).map(|r| (r.server, r.direct)),
        Ok(route(true, &[]))
    );
    assert_eq!(
        s.route(&Target::Server).map(|r| (r.server, r.direct)),
        Ok(route(true, &[]))
    );
    assert_eq!(
        s.route(&Target::Host(HostId::SERVER))
            .map(|r| (r.server, r.direct)),
        Ok(route(true, &[]))
    );
    assert_eq!(
        s.route(&Target::Host(ME)).map(|r| (r.server, r.direct)),
        Ok(route(false, &[]))
    );
    assert_eq!(
        s.route(&Target::Group(G)).map(|r| (r.server, r.direct)),
        Ok(route(true, &[]))
    );
    s.set_direct(PEER, ms(3), now);
    assert_eq!(
        s.route(&Target::Host(PEER)).map(|r| (r.server, r.direct)),
        Ok(route(false, &[PEER]))
    );
    assert_eq!(
        s.route(&Target::Group(G)).map(|r| (r.server, r.direct)),
        Ok(route(true, &[PEER]))
    );
    assert_eq!(
        s.route(&Target::Hosts(vec![PEER, HostId::SERVER]))
            .map(|r| (r.server, r.direct)),
        Ok(route(true, &[PEER]))
    );
    s.set_direct(OTHER, ms(3), now);
    assert_eq!(
        s.route(&Target::Group(G)).map(|r| (r.server, r.direct)),
        Ok(route(false, &[PEER, OTHER]))
    );
    // The route is what a send then uses.
    let sent = s
        .plan_send(
            &Target::Group(G),
            Bytes::new(),
            Delivery::ReliableOrdered.into(),
            None,
        )
        .unwrap();
    assert!(sent.iter().all(|u| matches!(u, Upload::Peer { .. })));
    // A server in the group puts the server queue back in the route.
    s.handle_frame(joined(HostId::SERVER, 4), now).unwrap();
    assert_eq!(
        s.route(&Target::Group(G)).map(|r| (r.server, r.direct)),
        Ok(route(true, &[PEER, OTHER]))
    );
    // A direct peer that shares no group any more (the pair lingers) takes the relay.
    s.handle_frame(left(PEER, 3), now).unwrap();
    assert_eq!(
        s.route(&Target::Host(PEER)).map(|r| (r.server, r.direct)),
        Ok(route(true, &[]))
    );
    assert!(matches!(
        only(send(&mut s, PEER, "x", Delivery::ReliableOrdered)),
        Upload::Relay { .. }
    ));
    // Targets it may not use are refused as a send would refuse them.
    let stranger = HostId::from_raw(77 << 32 | 9);
    assert_eq!(
        s.route(&Target::Host(stranger)),
        Err(SendError::NotAPeer(stranger))
    );
    let elsewhere = GroupId::from_raw(99);
    assert_eq!(
        s.route(&Target::Group(elsewhere)),
        Err(SendError::NotInGroup(elsewhere))
    );
}

// ---- sizes -----------------------------------------------------------------------------

#[test]
fn a_reliable_payload_of_exactly_the_maximum_fits_and_one_byte_more_is_too_large() {
    let now = Instant::now();
    let mut s = session_in_group(now);
    let max = s.max_message_len();
    assert_eq!(max, (MAX_FRAME_LEN - FRAME_HEADROOM) as usize);
    let deliveries = [
        Delivery::ReliableOrdered.on_channel(0),
        Delivery::ReliableOrdered.on_channel(3),
        Delivery::ReliableUnordered.into(),
        Delivery::Latest { key: 1 }.into(),
    ];
    for options in deliveries {
        assert_eq!(
            s.plan_send(
                &Target::Host(PEER),
                Bytes::from(vec![0u8; max + 1]),
                options,
                None
            ),
            Err(SendError::TooLarge { len: max + 1, max })
        );
        // The refusal used no number: the next message is number 1.
        let upload = only(
            s.plan_send(
                &Target::Host(PEER),
                Bytes::from(vec![0u8; max]),
                options,
                None,
            )
            .unwrap(),
        );
        assert_eq!(relay_number(&upload).1, 1, "{options:?}");
        // Both legs fit the frame limit.
        let Upload::Relay { frame, .. } = &upload else {
            unreachable!()
        };
        frame_to_bytes(frame, MAX_FRAME_LEN).unwrap();
        let ClientToServer::Relay {
            lane,
            payload,
            dests,
            ..
        } = frame
        else {
            unreachable!()
        };
        let deliver = ServerToClient::Deliver {
            from: ME,
            group: Some(G),
            lane: *lane,
            seq: dests[0].seq,
            payload: payload.clone(),
        };
        frame_to_bytes(&deliver, MAX_FRAME_LEN).unwrap();
    }
    // On the direct path too.
    s.set_direct(PEER, ms(3), now);
    let options = Delivery::ReliableOrdered.on_channel(9);
    assert!(matches!(
        s.plan_send(
            &Target::Host(PEER),
            Bytes::from(vec![0u8; max + 1]),
            options,
            None
        ),
        Err(SendError::TooLarge { .. })
    ));
    let upload = only(
        s.plan_send(
            &Target::Host(PEER),
            Bytes::from(vec![0u8; max]),
            options,
            None,
        )
        .unwrap(),
    );
    let Upload::Peer { frame, .. } = &upload else {
        panic!("unexpected {upload:?}")
    };
    assert!(matches!(frame, PeerToPeer::Data { seq: 1, .. }));
    frame_to_bytes(frame, MAX_FRAME_LEN).unwrap();
}

#[test]
fn an_unreliable_payload_over_the_datagram_size_is_refused_without_using_a_number() {
    let now = Instant::now();
    let mut s = session_in_group(now);
    let fits = 1200 - UPLOAD_FIXED_OVERHEAD - DATAGRAM_DEST_LEN;
    for delivery in [Delivery::UnreliableSequenced, Delivery::Unreliable] {
        assert_eq!(
            s.plan_send(
                &Target::Host(PEER),
                Bytes::from(vec![0u8; fits + 1]),
                delivery.into(),
                Some(1200)
            ),
            Err(SendError::TooLargeForDatagram {
                len: fits + 1,
                max: fits
            })
        );
        let upload = only(
            s.plan_send(
                &Target::Host(PEER),
                Bytes::from(vec![0u8; fits]),
                delivery.into(),
                Some(1200),
            )
            .unwrap(),
        );
        let Upload::Datagram(datagram) = &upload else {
            panic!("unexpected {upload:?}")
        };
        let ClientDatagram::Relay {
            lane,
            dests,
            payload,
            ..
        } = datagram;
        let expected = if delivery == Delivery::Unreliable {
            0
        } else {
            1
        };
        assert_eq!(dests[0].seq, expected, "{delivery:?}");
        // Both legs fit the datagram.
        assert!(
            peergroup_protocol::datagram_to_bytes(datagram)
                .unwrap()
                .len()
                <= 1200
        );
        let deliver = ServerDatagram::Deliver {
            from: PEER,
            group: Some(G),
            lane: *lane,
            seq: u64::MAX,
            payload: payload.clone(),
        };
        assert!(
            peergroup_protocol::datagram_to_bytes(&deliver)
                .unwrap()
                .len()
                <= 1200
        );
    }
    // On the direct path, a refused datagram uses no number either.
    s.set_direct(PEER, ms(3), now);
    let sequenced = Delivery::UnreliableSequenced.on_channel(2);
    assert!(s
        .plan_send(
            &Target::Host(PEER),
            Bytes::from(vec![0u8; fits + 1]),
            sequenced,
            Some(1200)
        )
        .is_err());
    let upload = only(
        s.plan_send(&Target::Host(PEER), Bytes::new(), sequenced, Some(1200))
            .unwrap(),
    );
    assert!(
        matches!(
            &upload,
            Upload::PeerDatagram {
                datagram: ServerDatagram::Deliver { seq: 1, .. },
                ..
            }
        ),
        "{upload:?}"
    );
}

// ---- the receive window -----------------------------------------------------------------

#[test]
fn a_relayed_message_beyond_the_window_gets_its_sender_ignored_but_direct_it_is_an_error() {
    let now = Instant::now();
    let mut s = session_in_group(now);
    let deliver = |from, lane, seq| ServerToClient::Deliver {
        from,
        group: None,
        lane,
        seq,
        payload: Bytes::from_static(b"far"),
    };
    let discarded = |s: &Session, peer| s.peer_stats(peer, now).unwrap().discarded;
    // The last number within the window is held.
    s.handle_frame(deliver(PEER, CH0, WINDOW), now).unwrap();
    assert_eq!(discarded(&s, PEER), 0);
    assert_eq!(s.held_bytes(PEER), 3 + HELD_ENTRY_COST);
    s.handle_frame(deliver(PEER, CH0, WINDOW + 1), now).unwrap();
    assert_eq!(discarded(&s, PEER), 1);
    assert_eq!(
        events(&mut s),
        [ClientEvent::PeerIgnored {
            peer: PEER,
            fault: PeerFault::BeyondWindow { seq: WINDOW + 1 },
        }]
    );
    assert_eq!(s.held_bytes(PEER), 0, "what PEER held is dropped");
    // From now on everything from PEER is discarded, even what would be due...
    s.handle_frame(deliver(PEER, CH1, 1), now).unwrap();
    s.handle_datagram(
        ServerDatagram::Deliver {
            from: PEER,
            group: None,
            lane: DatagramLane::Plain,
            seq: 0,
            payload: Bytes::from_static(b"d"),
        },
        now,
    );
    assert!(events(&mut s).is_empty());
    assert_eq!(discarded(&s, PEER), 3);
    // ...while the connection goes on for everyone else.
    s.handle_frame(deliver(OTHER, Lane::Unordered, 10 * WINDOW), now)
        .unwrap();
    assert!(matches!(
        events(&mut s).as_slice(),
        [ClientEvent::PeerIgnored { peer, .. }] if *peer == OTHER
    ));
    // A new pair with PEER starts afresh.
    s.handle_frame(
        ServerToClient::PeerDown {
            peer: PEER,
            pair: PAIR,
        },
        now,
    )
    .unwrap();
    s.handle_frame(
        ServerToClient::PeerUp {
            peer: PEER,
            pair: PairId::from_raw(1 << 32 | 3),
            info: info(2),
        },
        now,
    )
    .unwrap();
    s.handle_frame(deliver(PEER, CH0, 1), now).unwrap();
    assert_eq!(events(&mut s).len(), 1);

    s.set_direct(PEER, ms(3), now);
    drain(&mut s);
    let data = |lane, seq| PeerToPeer::Data {
        group: None,
        memberships: None,
        lane,
        seq,
        payload: Bytes::from_static(b"far"),
    };
    assert!(s
        .handle_peer_frame(PEER, data(CH1, WINDOW + 2), now)
        .is_err());
    assert!(s
        .handle_peer_frame(PEER, data(Lane::Unordered, 10 * WINDOW), now)
        .is_err());
    assert_eq!(
        discarded(&s, PEER),
        0,
        "direct violations are errors, not discards"
    );
    assert!(events(&mut s).is_empty());
}

/// Issue 12, finding 2: early arrivals were bounded by payload bytes only, so a peer
/// sending empty messages numbered 2, 3, ... (1 never sent) made this client hold every
/// one of them (2 M such messages, 38 MiB sent, grew it by 340 MiB; with 256 channels and
/// the default window of 2^20 numbers each, tens of GiB). Each held message now costs
/// [`HELD_ENTRY_COST`] bytes and their number is bounded per peer, across channels.
#[test]
fn empty_relayed_messages_ahead_of_a_gap_are_bounded_in_count_and_the_peer_ignored() {
    let now = Instant::now();
    let mut s = Session::new(ME, Bytes::new(), MAX_FRAME_LEN, 1 << 20, NO_PINGS, now);
    for frame in [
        ServerToClient::PeerUp {
            peer: PEER,
            pair: PAIR,
            info: info(2),
        },
        ServerToClient::PeerUp {
            peer: OTHER,
            pair: PAIR2,
            info: info(3),
        },
        joined(PEER, 3),
        joined(OTHER, 3),
        joined(ME, 3),
    ] {
        s.handle_frame(frame, now).unwrap();
    }
    drain(&mut s);
    let mut max_held = 0;
    let sent = 2 * MAX_HELD_ARRIVALS as u64;
    // Spread over every channel, each far within the window: only a per-peer count
    // catches it.
    for i in 0..sent {
        s.handle_frame(
            ServerToClient::Deliver {
                from: PEER,
                group: None,
                lane: Lane::Ordered {
                    channel: (i % 256) as u8,
                },
                seq: 2 + i / 256,
                payload: Bytes::new(),
            },
            now,
        )
        .unwrap();
        max_held = max_held.max(s.peers[&PEER].receiving.held());
    }
    assert!(max_held <= MAX_HELD_ARRIVALS, "{max_held} messages held");
    assert!(s.held_bytes(PEER) == 0, "dropped once the peer is ignored");
    let ignored = events(&mut s);
    assert!(
        matches!(
            ignored.as_slice(),
            [ClientEvent::PeerIgnored {
                peer,
                fault: PeerFault::TooManyEarlyArrivals { held, .. },
            }] if *peer == PEER && *held == MAX_HELD_ARRIVALS
        ),
        "{ignored:?}"
    );
    let stats = s.peer_stats(PEER, now).unwrap();
    assert_eq!(stats.discarded, sent - MAX_HELD_ARRIVALS as u64);
    // Another peer is unaffected.
    s.handle_frame(
        ServerToClient::Deliver {
            from: OTHER,
            group: None,
            lane: CH0,
            seq: 1,
            payload: Bytes::from_static(b"fine"),
        },
        now,
    )
    .unwrap();
    assert_eq!(events(&mut s).len(), 1);
}

/// The direct half of finding 2: the driver stops reading a direct path once more than
/// [`MAX_HELD_BYTES`] are held, and empty messages used to count 0 bytes, so it never
/// stopped. Now each is charged its entry, and the pause comes after at most
/// `MAX_HELD_BYTES / HELD_ENTRY_COST` of them.
#[test]
fn empty_direct_messages_ahead_of_a_gap_count_towards_the_direct_pause() {
    let now = Instant::now();
    let mut s = Session::new(ME, Bytes::new(), MAX_FRAME_LEN, 1 << 20, NO_PINGS, now);
    for frame in [
        ServerToClient::PeerUp {
            peer: PEER,
            pair: PAIR,
            info: info(2),
        },
        joined(PEER, 2),
        joined(ME, 2),
    ] {
        s.handle_frame(frame, now).unwrap();
    }
    assert!(s.set_direct(PEER, ms(3), now));
    drain(&mut s);
    let mut read = 0u64;
    while s.held_bytes(PEER) <= MAX_HELD_BYTES {
        read += 1;
        assert!(read <= 1 << 20, "the direct reader would never pause");
        s.handle_peer_frame(
            PEER,
            PeerToPeer::Data {
                group: None,
                memberships: None,
                lane: CH0,
                seq: 1 + read,
                payload: Bytes::new(),
            },
            now,
        )
        .unwrap();
    }
    assert_eq!(read as usize, MAX_HELD_BYTES / HELD_ENTRY_COST + 1);
    assert!((read as usize) < MAX_HELD_ARRIVALS);
}

#[test]
fn sequenced_datagrams_to_the_server_are_numbered_for_it() {
    let now = Instant::now();
    let mut s = session_in_group(now);
    let lane = DatagramLane::Sequenced { channel: 4 };
    let numbers: Vec<(bool, u64)> = (0..3)
        .map(|_| {
            let uploads = s
                .plan_send(
                    &Target::Server,
                    Bytes::from_static(b"s"),
                    Delivery::UnreliableSequenced.on_channel(4),
                    Some(1200),
                )
                .unwrap();
            match uploads.as_slice() {
                [Upload::Datagram(ClientDatagram::Relay {
                    to_server,
                    lane: l,
                    server_seq,
                    ..
                })] if *l == lane => (*to_server, *server_seq),
                other => panic!("unexpected {other:?}"),
            }
        })
        .collect();
    assert_eq!(numbers, [(true, 1), (true, 2), (true, 3)]);
}

// ---- membership notices: batches, data, acks, and the group rule at the receiver -------

/// A direct message on channel 0: to G under (sender, receiver) memberships, or to no
/// group.
fn data_frame(to_g: Option<(u32, u32)>, seq: u64, body: &str) -> PeerToPeer {
    PeerToPeer::Data {
        group: to_g.map(|_| G),
        memberships: to_g.map(|(sender, receiver)| Memberships { sender, receiver }),
        lane: CH0,
        seq,
        payload: text(body),
    }
}

fn delivered(s: &mut Session) -> Vec<String> {
    events(s)
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Message { payload, .. } => Some(string(payload)),
            _ => None,
        })
        .collect()
}

#[test]
fn one_notices_frame_yields_every_event_in_order_the_data_and_one_ack() {
    let now = Instant::now();
    let mut s = session(ME, NO_PINGS, now);
    s.handle_frame(
        ServerToClient::PeerUp {
            peer: PEER,
            pair: PAIR,
            info: info(2),
        },
        now,
    )
    .unwrap();
    let join = |member, member_data: &str, group_data: Option<&str>| Notice::MemberJoined {
        group: G,
        member,
        membership: 1,
        member_count: 2,
        join_message: text("j"),
        member_data: text(member_data),
        group_data: group_data.map(text),
    };
    s.handle_frame(
        ServerToClient::Notices(vec![
            join(PEER, "peer's name", None),
            join(ME, "my name", Some("rules")),
            Notice::HostData {
                host: PEER,
                data: text("renamed"),
            },
            Notice::GroupData {
                group: G,
                data: text("new rules"),
            },
        ]),
        now,
    )
    .unwrap();
    assert_eq!(
        uploads(&mut s),
        vec![Upload::Control(ClientToServer::Ack { notices: 4 })]
    );
    let evs = events(&mut s);
    assert!(
        matches!(&evs[0], ClientEvent::MemberJoined { member, member_data, group_data: None, .. }
        if *member == PEER && member_data == "peer's name")
    );
    assert!(
        matches!(&evs[1], ClientEvent::MemberJoined { member, group_data: Some(d), .. }
        if *member == ME && d == "rules")
    );
    assert_eq!(
        evs[2],
        ClientEvent::HostDataChanged {
            host: PEER,
            data: text("renamed")
        }
    );
    assert_eq!(
        evs[3],
        ClientEvent::GroupDataChanged {
            group: G,
            data: text("new rules")
        }
    );
    assert_eq!(s.host_data(PEER), Some(text("renamed")));
    assert_eq!(s.host_data(ME), Some(text("my name")));
    assert_eq!(s.group_data(G), Some(text("new rules")));
    assert_eq!(s.notices_taken(), 4);

    // Leaving forgets the group and the data of members no longer shared.
    s.handle_frame(left(ME, 1), now).unwrap();
    assert_eq!(
        uploads(&mut s),
        vec![Upload::Control(ClientToServer::Ack { notices: 5 })]
    );
    assert_eq!(s.group_data(G), None);
    assert_eq!(s.host_data(PEER), None);
    assert_eq!(s.host_data(ME), Some(text("my name")), "its own data stays");
}

#[test]
fn a_direct_message_to_a_group_is_delivered_only_under_the_memberships_it_was_sent_under() {
    let now = Instant::now();
    let mut s = session_in_group(now); // PEER and ME both in G under membership 1
    s.handle_peer_frame(PEER, data_frame(Some((1, 1)), 1, "in"), now)
        .unwrap();
    // The peer left G, as this client was told: a direct message it sent under that
    // membership before it knew crosses the notice and is dropped; one to no group waits
    // for a notice that makes the two share a group again (the relay rule).
    s.handle_frame(left(PEER, 2), now).unwrap();
    s.handle_peer_frame(PEER, data_frame(Some((1, 1)), 2, "late"), now)
        .unwrap();
    s.handle_peer_frame(PEER, data_frame(None, 3, "no group"), now)
        .unwrap();
    assert_eq!(delivered(&mut s), ["in"]);
    assert_eq!(s.peer_stats(PEER, now).unwrap().not_member_dropped, 1);

    // Back in G under membership 4; then this client leaves: nothing addressed to G
    // follows its own leave.
    s.handle_frame(joined_as(PEER, 3, 4), now).unwrap();
    s.handle_peer_frame(PEER, data_frame(Some((4, 1)), 4, "again"), now)
        .unwrap();
    s.handle_frame(left(ME, 2), now).unwrap();
    s.handle_peer_frame(PEER, data_frame(Some((4, 1)), 5, "after"), now)
        .unwrap();
    assert_eq!(delivered(&mut s), ["no group", "again"]);
    assert_eq!(s.peer_stats(PEER, now).unwrap().not_member_dropped, 2);
}

#[test]
fn a_direct_message_that_outruns_its_join_notice_waits_for_it_and_keeps_its_order() {
    let now = Instant::now();
    let mut s = session_in_group(now);
    s.handle_frame(left(PEER, 2), now).unwrap();
    // PEER rejoined under membership 5 and sent at once over the direct path; the notice
    // is still on its way through the server. Later messages wait behind it, whatever
    // their group.
    s.handle_peer_frame(PEER, data_frame(Some((5, 1)), 1, "first"), now)
        .unwrap();
    s.handle_peer_frame(PEER, data_frame(None, 2, "second"), now)
        .unwrap();
    assert!(delivered(&mut s).is_empty(), "held, not lost");
    assert!(
        s.held_bytes(PEER) > 0,
        "counted against the peer's receive budget"
    );
    s.handle_frame(joined_as(PEER, 3, 5), now).unwrap();
    assert_eq!(delivered(&mut s), ["first", "second"]);
    assert_eq!(s.held_bytes(PEER), 0);
    assert_eq!(s.peer_stats(PEER, now).unwrap().not_member_dropped, 0);

    // This client's own join can lag the same way: the message names a membership of
    // ME that it has not been told of yet.
    s.handle_frame(left(ME, 2), now).unwrap();
    s.handle_peer_frame(PEER, data_frame(Some((5, 7)), 3, "welcome"), now)
        .unwrap();
    assert!(delivered(&mut s).is_empty());
    s.handle_frame(joined_as(PEER, 2, 5), now).unwrap();
    assert!(
        delivered(&mut s).is_empty(),
        "still waiting for its own notice"
    );
    s.handle_frame(joined_as(ME, 3, 7), now).unwrap();
    assert_eq!(delivered(&mut s), ["welcome"]);
}

#[test]
fn a_message_waiting_for_a_notice_that_never_comes_is_dropped_and_the_rest_go_on() {
    let now = Instant::now();
    let mut s = session_in_group(now);
    // A membership the server never announces (a broken or hostile peer).
    s.handle_peer_frame(PEER, data_frame(Some((9, 1)), 1, "bogus"), now)
        .unwrap();
    s.handle_peer_frame(PEER, data_frame(Some((1, 1)), 2, "fine"), now)
        .unwrap();
    assert!(delivered(&mut s).is_empty());
    assert!(s.poll_timeout().unwrap() <= now + Duration::from_secs(10));
    s.handle_timeout(now + Duration::from_secs(9));
    assert!(delivered(&mut s).is_empty(), "still within the wait");
    s.handle_timeout(now + Duration::from_secs(10));
    assert_eq!(delivered(&mut s), ["fine"]);
    assert_eq!(s.peer_stats(PEER, now).unwrap().not_member_dropped, 1);
}

#[test]
fn a_message_sent_to_an_earlier_membership_of_the_receiver_is_dropped() {
    let now = Instant::now();
    let mut s = session_in_group(now);
    // This client left and rejoined as 6 (told of the peer again, then of itself); the
    // peer sent before it heard.
    s.handle_frame(left(ME, 2), now).unwrap();
    s.handle_frame(joined_as(PEER, 3, 1), now).unwrap();
    s.handle_frame(joined_as(ME, 3, 6), now).unwrap();
    drain(&mut s);
    s.handle_peer_frame(PEER, data_frame(Some((1, 1)), 1, "stale"), now)
        .unwrap();
    s.handle_peer_frame(PEER, data_frame(Some((1, 6)), 2, "fresh"), now)
        .unwrap();
    assert_eq!(delivered(&mut s), ["fresh"]);
    assert_eq!(s.peer_stats(PEER, now).unwrap().not_member_dropped, 1);
}

#[test]
fn direct_sends_to_a_group_name_both_memberships() {
    let now = Instant::now();
    let mut s = session(ME, NO_PINGS, now);
    for frame in [
        ServerToClient::PeerUp {
            peer: PEER,
            pair: PAIR,
            info: info(2),
        },
        joined_as(PEER, 2, 3),
        joined_as(ME, 2, 8),
    ] {
        s.handle_frame(frame, now).unwrap();
    }
    s.set_direct(PEER, ms(3), now);
    drain(&mut s);
    let sent = s
        .plan_send(
            &Target::Group(G),
            text("x"),
            Delivery::ReliableOrdered.into(),
            None,
        )
        .unwrap();
    assert!(matches!(
        &sent[..],
        [Upload::Peer {
            frame: PeerToPeer::Data {
                group: Some(G),
                memberships: Some(Memberships {
                    sender: 8,
                    receiver: 3
                }),
                ..
            },
            ..
        }]
    ));
}

#[test]
fn a_datagram_to_a_group_follows_the_same_rule() {
    let now = Instant::now();
    let mut s = session_in_group(now);
    let datagram = |group, body: &str| ServerDatagram::Deliver {
        from: PEER,
        group,
        lane: DatagramLane::Plain,
        seq: 0,
        payload: text(body),
    };
    s.handle_datagram(datagram(Some(G), "in"), now);
    s.handle_frame(left(PEER, 1), now).unwrap();
    s.handle_datagram(datagram(Some(G), "late"), now);
    s.handle_datagram(datagram(None, "plain"), now);
    assert_eq!(delivered(&mut s), ["in", "plain"]);
    assert_eq!(s.peer_stats(PEER, now).unwrap().not_member_dropped, 1);
}

/// Found while writing the session fuzz target's held-bytes bound: while a direct message waits for
/// a membership notice, every later message from that peer waits behind it, relayed ones
/// too, and only their count was bounded (4,096): a peer sending 1 MiB relayed messages
/// behind one direct message with a made-up membership made this client hold 4 GiB for
/// 10 s. Waiting bytes are now held to the relayed early-arrival budget.
#[test]
fn messages_waiting_for_a_notice_stay_within_the_held_bytes_budget() {
    let now = Instant::now();
    let mut s = session_in_group(now);
    assert!(s.set_direct(PEER, ms(3), now));
    drain(&mut s);
    // Membership 9 of the sender: a join this client has not been told of (it knows 1).
    s.handle_peer_frame(PEER, data_frame(Some((9, 1)), 1, "waits"), now)
        .unwrap();
    assert_eq!(s.held_bytes(PEER), 5);
    let big = Bytes::from(vec![0u8; 1 << 20]);
    for seq in 2..=40 {
        s.handle_frame(
            ServerToClient::Deliver {
                from: PEER,
                group: None,
                lane: CH0,
                seq,
                payload: big.clone(),
            },
            now,
        )
        .unwrap();
    }
    let held = s.held_bytes(PEER);
    assert!(held <= MAX_HELD_BYTES_RELAYED, "{held} bytes held");
    assert!(s.peer_stats(PEER, now).unwrap().not_member_dropped > 0);
    // Past the wait the made-up membership's message is dropped and nothing stays held.
    s.handle_timeout(now + MEMBERSHIP_WAIT);
    assert_eq!(s.held_bytes(PEER), 0);
}

// ---- the direct window (issue 12, finding 9) ----------------------------------------------

/// Issue 12, finding 9: reliable messages sent direct are kept until the peer acks them,
/// and nothing bounded that, so a direct peer that read everything but never acked made
/// the sender keep all of it (200,000 messages, 48 MiB), then send it all through the
/// relay at once when the path died. Now the window is bounded (sends wait while it is
/// full, `direct_window_full`), and a peer that leaves its oldest message unacked for the
/// ack timeout loses its direct path: what it did not ack (at most a window) goes through
/// the relay, and so does everything after.
#[test]
fn a_direct_peer_that_never_acks_fills_a_bounded_window_then_loses_its_direct_path() {
    let now = Instant::now();
    let (mut a, _b) = two_direct_sessions(now);
    let window = DirectWindow::default();
    let mut sent = 0;
    while !a.direct_window_full(PEER) {
        sent += 1;
        assert!(sent <= 200_000, "the window never fills");
        let upload = only(send(&mut a, PEER, "x", Delivery::ReliableOrdered));
        assert!(matches!(upload, Upload::Peer { .. }), "{upload:?}");
    }
    assert_eq!(sent, window.messages);
    assert_eq!(a.peer_stats(PEER, now).unwrap().unacked, window.messages);
    drain(&mut a);
    // The driver looks at the oldest unacked message; the peer stays silent.
    a.handle_timeout(now);
    assert!(a.poll_timeout().unwrap() <= now + window.ack_timeout);
    a.handle_timeout(now + window.ack_timeout - ms(1));
    assert!(a.poll_stalled_link().is_none());
    assert_eq!(a.path_of(PEER), Some(PairPath::Direct));
    drain(&mut a);
    a.handle_timeout(now + window.ack_timeout);
    assert_eq!(a.poll_stalled_link(), Some(PEER), "the driver closes it");
    assert_eq!(a.path_of(PEER), Some(PairPath::Relay));
    assert!(a.take_window_moved(), "waiting sends are woken");
    let resent = uploads(&mut a)
        .iter()
        .filter(|u| matches!(u, Upload::Relay { .. }))
        .count();
    assert_eq!(
        resent, window.messages,
        "at most a window goes to the relay"
    );
    assert!(events(&mut a).iter().any(|e| matches!(
        e,
        ClientEvent::PathChanged {
            path: PairPath::Relay,
            reason: PathReason::DirectTimedOut,
            ..
        }
    )));
    // Sends go on through the relay, which keeps nothing.
    assert!(!a.direct_window_full(PEER));
    let upload = only(send(&mut a, PEER, "y", Delivery::ReliableOrdered));
    assert!(matches!(upload, Upload::Relay { .. }));
    assert_eq!(a.peer_stats(PEER, now).unwrap().unacked, 0);
}

#[test]
fn the_direct_window_counts_bytes_too_and_acks_make_room() {
    let now = Instant::now();
    let (mut a, _b) = two_direct_sessions(now);
    let window = DirectWindow::default();
    let big = Bytes::from(vec![7u8; 64 << 10]);
    let mut sent = 0;
    while !a.direct_window_full(PEER) {
        sent += 1;
        assert!(sent <= 1_000, "the window never fills");
        a.plan_send(
            &Target::Host(PEER),
            big.clone(),
            Delivery::ReliableOrdered.into(),
            MAX_DATAGRAM,
        )
        .unwrap();
    }
    assert_eq!(sent, window.bytes / big.len());
    assert!(!a.take_window_moved());
    // The peer acks the first half (frames 1.. in the order they went out).
    fifo_ack(&mut a, PEER, sent as u64 / 2).unwrap();
    assert!(a.take_window_moved());
    assert!(!a.direct_window_full(PEER));
    assert_eq!(a.peer_stats(PEER, now).unwrap().unacked, sent / 2);
}

/// A peer that acks keeps its direct path however long the sender keeps it busy: the
/// timeout is on the oldest unacked message, not on the window being in use.
#[test]
fn a_direct_peer_that_acks_keeps_its_direct_path() {
    let now = Instant::now();
    let (mut a, _b) = two_direct_sessions(now);
    let timeout = DirectWindow::default().ack_timeout;
    let (mut sent, mut acked) = (0u64, 0u64);
    for step in 0..10u32 {
        for _ in 0..10 {
            send(&mut a, PEER, "x", Delivery::ReliableOrdered);
        }
        sent += 10;
        a.handle_timeout(now + timeout * step / 2);
        // Everything but the last 5 is acked within half the timeout.
        let upto = sent - 5;
        let unacked = |a: &Session| a.peer_stats(PEER, now).unwrap().unacked as u64;
        assert_eq!(unacked(&a), sent - acked);
        fifo_ack(&mut a, PEER, upto).unwrap();
        assert_eq!(unacked(&a), sent - upto, "the ack covers upto - acked more");
        acked = upto;
        assert!(a.poll_stalled_link().is_none(), "step {step}");
        assert_eq!(a.path_of(PEER), Some(PairPath::Direct));
    }
}

// ---- the relay rule on the direct path (issue 12, finding 5) -------------------------------

/// Issue 12, finding 5: the server relays only between hosts that share a group (and, for
/// a message to a group, only between its members), but a direct message passes no
/// server, and the receiver let through any direct message that named no group: a peer
/// kept messaging a client it no longer shared a group with while their pair lingered.
/// Now a direct message is delivered only while the receiver knows the two share a group
/// (for one to a group, that both are members of it, under the memberships it names);
/// one that does not is held for the notice that would make it so, and dropped and
/// counted once [`MEMBERSHIP_WAIT`] passes without it.
#[test]
fn direct_messages_from_a_peer_that_shares_no_group_are_dropped_and_counted() {
    let now = Instant::now();
    let mut s = session_in_group(now);
    assert!(s.set_direct(PEER, ms(3), now));
    // PEER leaves G, the only group the two shared; the pair lingers, and so does the
    // direct connection.
    s.handle_frame(left(PEER, 2), now).unwrap();
    drain(&mut s);
    assert_eq!(s.path_of(PEER), Some(PairPath::Direct));
    let ghost = GroupId::from_raw(1 << 32 | 9);
    let frames = [
        // To this client alone.
        data_frame(None, 1, "to me"),
        // To G, which PEER left, under its old membership.
        data_frame(Some((1, 1)), 2, "to G"),
        // To a group that does not exist, under made-up memberships.
        PeerToPeer::Data {
            group: Some(ghost),
            memberships: Some(Memberships {
                sender: 1,
                receiver: 1,
            }),
            lane: CH0,
            seq: 3,
            payload: text("to a ghost"),
        },
        // To a group, naming no memberships.
        PeerToPeer::Data {
            group: Some(ghost),
            memberships: None,
            lane: CH0,
            seq: 4,
            payload: text("no memberships"),
        },
    ];
    for frame in frames {
        s.handle_peer_frame(PEER, frame, now).unwrap();
    }
    s.handle_peer_datagram(
        PEER,
        ServerDatagram::Deliver {
            from: PEER,
            group: None,
            lane: DatagramLane::Plain,
            seq: 0,
            payload: text("datagram"),
        },
        now,
    );
    assert!(delivered(&mut s).is_empty());
    s.handle_timeout(now + MEMBERSHIP_WAIT);
    assert!(delivered(&mut s).is_empty());
    assert_eq!(s.peer_stats(PEER, now).unwrap().not_member_dropped, 5);
    assert_eq!(s.held_bytes(PEER), 0);
    // OTHER still shares G: its direct messages to this client go through.
    assert!(s.set_direct(OTHER, ms(3), now));
    s.handle_peer_frame(OTHER, data_frame(None, 1, "from other"), now)
        .unwrap();
    assert_eq!(delivered(&mut s), ["from other"]);
}

/// The other side of the rule: a direct message to this client that outruns the join
/// notice making the two share a group waits for it, as one to a group does.
#[test]
fn a_direct_message_to_this_client_that_outruns_the_shared_join_waits_for_it() {
    let now = Instant::now();
    let mut s = session_in_group(now);
    assert!(s.set_direct(PEER, ms(3), now));
    s.handle_frame(left(PEER, 2), now).unwrap();
    drain(&mut s);
    s.handle_peer_frame(PEER, data_frame(None, 1, "hi again"), now)
        .unwrap();
    assert!(delivered(&mut s).is_empty(), "held, not lost");
    s.handle_frame(joined_as(PEER, 3, 2), now + ms(500))
        .unwrap();
    assert_eq!(delivered(&mut s), ["hi again"]);
    assert_eq!(s.peer_stats(PEER, now).unwrap().not_member_dropped, 0);
}

/// The server refuses an upload naming more than `MAX_RELAY_DESTS` destinations (issue
/// 12, finding 3), so a send to a bigger group is split into uploads within it.
#[test]
fn a_send_to_a_group_larger_than_the_destination_limit_is_split() {
    let now = Instant::now();
    let mut s = session(ME, NO_PINGS, now);
    let members = MAX_RELAY_DESTS as u64 + 10;
    let mut notices = vec![Notice::MemberJoined {
        group: G,
        member: ME,
        membership: 1,
        member_count: 1,
        join_message: Bytes::new(),
        member_data: Bytes::new(),
        group_data: None,
    }];
    for n in 0..members {
        let peer = HostId::from_raw(1 << 32 | (100 + n));
        s.handle_frame(
            ServerToClient::PeerUp {
                peer,
                pair: PairId::from_raw(1 << 32 | (100 + n)),
                info: info(9),
            },
            now,
        )
        .unwrap();
        notices.push(Notice::MemberJoined {
            group: G,
            member: peer,
            membership: 1,
            member_count: 2,
            join_message: Bytes::new(),
            member_data: Bytes::new(),
            group_data: None,
        });
    }
    s.handle_frame(ServerToClient::Notices(notices), now)
        .unwrap();
    drain(&mut s);
    let uploads = s
        .plan_send(
            &Target::Group(G),
            text("hi"),
            Delivery::ReliableOrdered.into(),
            MAX_DATAGRAM,
        )
        .unwrap();
    let sizes: Vec<usize> = uploads
        .iter()
        .map(|u| match u {
            Upload::Relay {
                frame: ClientToServer::Relay { dests, .. },
                ..
            } => dests.len(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(sizes, [MAX_RELAY_DESTS, 10]);
}

#[test]
fn one_refusal_frame_for_many_destinations_reports_each() {
    let now = Instant::now();
    let mut s = session_in_group(now);
    s.handle_frame(
        ServerToClient::RefusedMany {
            group: Some(G),
            refused: vec![
                (PAIR2, RefuseReason::DestNotInGroup),
                (PairId::from_raw(7 << 32 | 7), RefuseReason::UnknownPair),
            ],
        },
        now,
    )
    .unwrap();
    assert_eq!(
        events(&mut s),
        [
            ClientEvent::SendFailed {
                to: OTHER,
                group: Some(G),
                reason: RefuseReason::DestNotInGroup,
            },
            ClientEvent::SendFailed {
                to: HostId::SERVER,
                group: Some(G),
                reason: RefuseReason::UnknownPair,
            },
        ]
    );
}

/// A peer that acks a trickle (one message just before each would time out) still loses
/// its direct path: the timeout runs from each message's send, not from the last ack, so
/// such a peer cannot keep a full window (and the sends that wait on it) crawling.
#[test]
fn a_direct_peer_that_acks_a_trickle_still_loses_its_direct_path() {
    let now = Instant::now();
    let (mut a, _b) = two_direct_sessions(now);
    let timeout = DirectWindow::default().ack_timeout;
    for _ in 0..100 {
        send(&mut a, PEER, "x", Delivery::ReliableOrdered);
    }
    a.handle_timeout(now);
    // One ack of one message just before the first would time out.
    fifo_ack(&mut a, PEER, 1).unwrap();
    a.handle_timeout(now + timeout - ms(1));
    assert!(a.poll_stalled_link().is_none());
    a.handle_timeout(now + timeout);
    assert_eq!(a.poll_stalled_link(), Some(PEER));
    assert_eq!(a.path_of(PEER), Some(PairPath::Relay));
}

/// `Resumed` events with `after` of 0, 1, .. ms: cheap, and each tells its place.
fn numbered(s: &mut Session, from: u64, count: u64) {
    for n in from..from + count {
        s.push_event(ClientEvent::Resumed { after: ms(n) });
    }
}

/// The `after` of each event, ms.
fn numbers(events: &EventBatch) -> Vec<u64> {
    events
        .iter()
        .map(|event| match event {
            ClientEvent::Resumed { after } => after.as_millis() as u64,
            other => panic!("unexpected event {other:?}"),
        })
        .collect()
}

#[test]
fn take_events_hands_over_at_most_max_oldest_first_and_keeps_the_rest() {
    let now = Instant::now();
    let mut s = session(ME, NO_PINGS, now);
    let none = EventBatch::new;
    assert!(s.take_events(4, none()).is_empty());

    // All of them fit: all go, in order, and the session keeps taking events after.
    numbered(&mut s, 0, 3);
    assert_eq!(numbers(&s.take_events(4, none())), [0, 1, 2]);
    assert_eq!(s.pending_events(), 0);
    numbered(&mut s, 3, 2);
    assert_eq!(numbers(&s.take_events(4, none())), [3, 4]);

    // More than fit: the oldest `max` go, the rest wait for the next call.
    numbered(&mut s, 5, 6);
    assert_eq!(numbers(&s.take_events(4, none())), [5, 6, 7, 8]);
    assert_eq!(s.pending_events(), 2);
    numbered(&mut s, 11, 1);
    assert_eq!(numbers(&s.take_events(4, none())), [9, 10, 11]);

    // A queue a burst grew far past `max` is drained, not handed over: the batch is no
    // larger than what it carries.
    numbered(&mut s, 12, 300);
    for first in (12..268).step_by(64) {
        assert_eq!(
            numbers(&s.take_events(64, none())),
            (first..first + 64).collect::<Vec<_>>()
        );
    }
    let rest = s.take_events(64, none());
    assert_eq!(numbers(&rest), (268..312).collect::<Vec<_>>());
    assert!(rest.capacity() <= 2 * 64, "capacity {}", rest.capacity());
    assert_eq!(s.pending_events(), 0);
}

#[test]
fn take_events_reuses_the_spare_batch_it_is_given() {
    let now = Instant::now();
    let mut s = session(ME, NO_PINGS, now);
    let spare = |capacity| EventBatch::with_capacity(capacity);

    // Nothing to take: the spare comes back untouched.
    let back = s.take_events(64, spare(100));
    assert!(back.is_empty());
    assert!(back.capacity() >= 100);

    // All fit: the queue goes, and the spare becomes the queue, so the next hand-over
    // carries the spare's allocation.
    numbered(&mut s, 0, 2);
    assert_eq!(numbers(&s.take_events(64, spare(100))), [0, 1]);
    numbered(&mut s, 2, 1);
    // A spare too small to take the queue's place is replaced by a new queue.
    let next = s.take_events(64, spare(1));
    assert_eq!(numbers(&next), [2]);
    assert!(next.capacity() >= 100, "capacity {}", next.capacity());

    // More than fit: the oldest go in the spare's allocation.
    numbered(&mut s, 3, 6);
    let drained = s.take_events(4, spare(100));
    assert_eq!(numbers(&drained), [3, 4, 5, 6]);
    assert!(drained.capacity() >= 100, "capacity {}", drained.capacity());
    assert_eq!(numbers(&s.take_events(4, spare(0))), [7, 8]);
}
