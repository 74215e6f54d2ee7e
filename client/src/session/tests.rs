//! Session tests: notices, acks, sequence numbers, target rules and sizes.

use super::*;
use peergroup_protocol::{Fingerprint, RefuseReason};
use std::time::Duration;

const ME: HostId = HostId::from_raw(1 << 32 | 1);
const PEER: HostId = HostId::from_raw(1 << 32 | 2);
const OTHER: HostId = HostId::from_raw(1 << 32 | 3);
const G: GroupId = GroupId::from_raw(1 << 32 | 1);
const PAIR: PairId = PairId::from_raw(1 << 32 | 1);
const PAIR2: PairId = PairId::from_raw(1 << 32 | 2);

fn info(n: u8) -> PeerInfo {
    PeerInfo {
        identity: Fingerprint([n; 32]),
    }
}

fn joined(member: HostId, count: u32) -> ServerToClient {
    ServerToClient::MemberJoined {
        group: G,
        member,
        member_count: count,
        join_message: Bytes::from_static(b"j"),
    }
}

/// A session in group G with PEER (pair PAIR) and OTHER (pair PAIR2).
fn session_in_group() -> Session {
    let mut s = Session::new(ME, 1 << 20, 1024);
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
        s.handle_frame(frame).unwrap();
    }
    while s.poll_event().is_some() {}
    while s.poll_frame().is_some() {}
    s
}

fn events(s: &mut Session) -> Vec<ClientEvent> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

#[test]
fn every_join_notice_is_acked_and_reported_with_the_vouched_identity() {
    let mut s = Session::new(ME, 1 << 20, 1024);
    s.handle_frame(ServerToClient::PeerUp {
        peer: PEER,
        pair: PAIR,
        info: info(2),
    })
    .unwrap();
    s.handle_frame(joined(PEER, 2)).unwrap();
    s.handle_frame(joined(ME, 2)).unwrap();
    assert_eq!(
        std::iter::from_fn(|| s.poll_frame()).collect::<Vec<_>>(),
        vec![
            ClientToServer::JoinAck {
                group: G,
                member: PEER
            },
            ClientToServer::JoinAck {
                group: G,
                member: ME
            },
        ]
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
    let mut s = session_in_group();
    let payload = Bytes::from_static(b"hello");
    let first = s
        .plan_send(
            &Target::Group(G),
            payload.clone(),
            Delivery::ReliableOrdered,
            None,
        )
        .unwrap();
    let second = s
        .plan_send(
            &Target::Host(PEER),
            payload.clone(),
            Delivery::ReliableOrdered,
            None,
        )
        .unwrap();
    assert_eq!(
        first,
        vec![Upload::Frame(ClientToServer::Relay {
            group: Some(G),
            to_server: false,
            dests: vec![
                RelayDest { pair: PAIR, seq: 1 },
                RelayDest {
                    pair: PAIR2,
                    seq: 1
                }
            ],
            payload: payload.clone(),
        })]
    );
    assert_eq!(
        second,
        vec![Upload::Frame(ClientToServer::Relay {
            group: None,
            to_server: false,
            dests: vec![RelayDest { pair: PAIR, seq: 2 }],
            payload,
        })]
    );
}

#[test]
fn targets_this_client_may_not_use_are_refused_without_using_a_sequence_number() {
    let mut s = session_in_group();
    let other_group = GroupId::from_raw(99);
    let stranger = HostId::from_raw(77 << 32 | 9);
    let p = || Bytes::from_static(b"x");
    assert_eq!(
        s.plan_send(
            &Target::Group(other_group),
            p(),
            Delivery::ReliableOrdered,
            None
        ),
        Err(SendError::NotInGroup(other_group))
    );
    assert_eq!(
        s.plan_send(
            &Target::Hosts(vec![PEER, stranger]),
            p(),
            Delivery::ReliableOrdered,
            None
        ),
        Err(SendError::NotAPeer(stranger))
    );
    let ok = s
        .plan_send(&Target::Host(PEER), p(), Delivery::ReliableOrdered, None)
        .unwrap();
    assert!(
        matches!(&ok[0], Upload::Frame(ClientToServer::Relay { dests, .. }) if dests[0].seq == 1)
    );
}

#[test]
fn loopback_is_delivered_locally_and_the_server_is_reached_directly() {
    let mut s = session_in_group();
    let uploads = s
        .plan_send(
            &Target::GroupLoopback(G),
            Bytes::from_static(b"me too"),
            Delivery::ReliableOrdered,
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
            path: Path::Loopback
        }]
    );
    let to_server = s
        .plan_send(
            &Target::Server,
            Bytes::from_static(b"s"),
            Delivery::ReliableOrdered,
            None,
        )
        .unwrap();
    assert_eq!(
        to_server,
        vec![Upload::Frame(ClientToServer::Relay {
            group: None,
            to_server: true,
            dests: vec![],
            payload: Bytes::from_static(b"s")
        })]
    );
}

#[test]
fn unreliable_sends_must_fit_a_datagram_and_big_groups_are_split() {
    let mut s = Session::new(ME, 1 << 20, 1024);
    for n in 0..300u64 {
        let peer = HostId::from_raw(2 << 32 | (n + 10));
        s.handle_frame(ServerToClient::PeerUp {
            peer,
            pair: PairId::from_raw(3 << 32 | n),
            info: info(1),
        })
        .unwrap();
        s.handle_frame(joined(peer, 1)).unwrap();
    }
    s.handle_frame(joined(ME, 301)).unwrap();
    assert_eq!(
        s.plan_send(
            &Target::Group(G),
            Bytes::from(vec![0u8; 1200]),
            Delivery::Unreliable,
            Some(1200)
        ),
        Err(SendError::TooLargeForDatagram {
            len: 1200,
            // The upload (with one destination) is the tighter of the two legs.
            max: 1200 - UPLOAD_FIXED_OVERHEAD - DATAGRAM_DEST_LEN
        })
    );
    assert!(matches!(
        s.plan_send(&Target::Group(G), Bytes::new(), Delivery::Unreliable, None),
        Err(SendError::TooLargeForDatagram { max: 0, .. })
    ));
    let uploads = s
        .plan_send(
            &Target::Group(G),
            Bytes::from(vec![0u8; 100]),
            Delivery::Unreliable,
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

#[test]
fn reliable_payloads_over_the_frame_limit_are_refused() {
    let mut s = session_in_group();
    let result = s.plan_send(
        &Target::Host(PEER),
        Bytes::from(vec![0u8; 1 << 20]),
        Delivery::ReliableOrdered,
        None,
    );
    assert!(
        matches!(result, Err(SendError::TooLarge { .. })),
        "{result:?}"
    );
}

#[test]
fn relayed_messages_arrive_in_sequence_and_skips_fill_gaps() {
    let mut s = session_in_group();
    let deliver = |seq, text: &'static str| ServerToClient::Deliver {
        from: PEER,
        group: Some(G),
        seq,
        payload: Bytes::from_static(text.as_bytes()),
    };
    s.handle_frame(deliver(1, "a")).unwrap();
    s.handle_frame(ServerToClient::Skipped { from: PEER, seq: 2 })
        .unwrap();
    s.handle_frame(deliver(3, "c")).unwrap();
    let payloads: Vec<Bytes> = events(&mut s)
        .into_iter()
        .map(|e| match e {
            ClientEvent::Message { payload, path, .. } => {
                assert_eq!(path, Path::Relay);
                payload
            }
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        payloads,
        vec![Bytes::from_static(b"a"), Bytes::from_static(b"c")]
    );
    s.handle_frame(deliver(3, "c")).unwrap();
    assert!(
        events(&mut s).is_empty(),
        "a duplicate (sent again after a path switch) is dropped"
    );
    assert!(s
        .handle_frame(ServerToClient::Deliver {
            from: HostId::from_raw(555),
            group: None,
            seq: 1,
            payload: Bytes::new()
        })
        .is_err());
}

#[test]
fn a_stale_peer_down_does_not_remove_a_newer_pair_and_leaving_forgets_the_group() {
    let mut s = session_in_group();
    s.handle_frame(ServerToClient::PeerDown {
        peer: PEER,
        pair: PairId::from_raw(12345),
    })
    .unwrap();
    assert!(s.peer_info(PEER).is_some());
    s.handle_frame(ServerToClient::MemberLeft {
        group: G,
        member: ME,
        member_count: 2,
    })
    .unwrap();
    assert!(s.groups().is_empty());
    assert_eq!(
        s.plan_send(
            &Target::Group(G),
            Bytes::new(),
            Delivery::ReliableOrdered,
            None
        ),
        Err(SendError::NotInGroup(G))
    );
    s.handle_frame(ServerToClient::PeerDown {
        peer: PEER,
        pair: PAIR,
    })
    .unwrap();
    assert_eq!(s.peers(), vec![OTHER]);
}

#[test]
fn refusals_name_the_peer_of_the_pair() {
    let mut s = session_in_group();
    s.handle_frame(ServerToClient::Refused {
        pair: Some(PAIR2),
        group: None,
        reason: RefuseReason::NoSharedGroup,
    })
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
    let mut s = session_in_group();
    assert!(s.set_direct(PEER, Duration::from_millis(3)));
    assert_eq!(
        std::iter::from_fn(|| s.poll_frame()).collect::<Vec<_>>(),
        vec![ClientToServer::PathReport {
            pair: PAIR,
            path: PairPath::Direct,
            reason: PathReason::Punched
        }]
    );
    events(&mut s);
    let payload = Bytes::from_static(b"m");
    let uploads = s
        .plan_send(
            &Target::Group(G),
            payload.clone(),
            Delivery::ReliableOrdered,
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
                    seq: 1,
                    payload: payload.clone()
                }
            },
            Upload::Frame(ClientToServer::Relay {
                group: Some(G),
                to_server: false,
                dests: vec![RelayDest {
                    pair: PAIR2,
                    seq: 1
                }],
                payload,
            })
        ]
    );
    assert_eq!(s.peer_stats(PEER).unwrap().unacked, 1);
}

#[test]
fn when_the_direct_path_dies_unacked_messages_go_again_through_the_relay_with_their_numbers() {
    let mut s = session_in_group();
    s.set_direct(PEER, Duration::from_millis(3));
    for text in ["a", "b", "c"] {
        s.plan_send(
            &Target::Host(PEER),
            Bytes::from_static(text.as_bytes()),
            Delivery::ReliableOrdered,
            None,
        )
        .unwrap();
    }
    s.handle_peer_frame(PEER, PeerToPeer::Ack { delivered: 1 })
        .unwrap();
    assert_eq!(s.peer_stats(PEER).unwrap().unacked, 2);
    let resend = s.set_relay(PEER, PathReason::DirectTimedOut);
    let seqs: Vec<u64> = resend
        .iter()
        .map(|u| match u {
            Upload::Frame(ClientToServer::Relay { dests, .. }) => dests[0].seq,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(seqs, vec![2, 3]);
    assert!(events(&mut s).contains(&ClientEvent::PathChanged {
        peer: PEER,
        path: PairPath::Relay,
        rtt: None,
        reason: PathReason::DirectTimedOut
    }));
    // New messages continue the same sequence on the relay.
    let next = s
        .plan_send(
            &Target::Host(PEER),
            Bytes::new(),
            Delivery::ReliableOrdered,
            None,
        )
        .unwrap();
    assert!(
        matches!(&next[0], Upload::Frame(ClientToServer::Relay { dests, .. }) if dests[0].seq == 4)
    );
    assert!(
        s.set_relay(PEER, PathReason::DirectTimedOut).is_empty(),
        "already on the relay"
    );
}

#[test]
fn direct_and_relay_arrivals_merge_into_one_sequence_and_are_acked() {
    let mut s = session_in_group();
    s.set_direct(PEER, Duration::from_millis(3));
    events(&mut s);
    let number = |seq: u64| Bytes::from(seq.to_be_bytes().to_vec());
    // 2 comes direct before 1 arrives through the relay; then 2 again through the relay.
    s.handle_peer_frame(
        PEER,
        PeerToPeer::Data {
            group: None,
            seq: 2,
            payload: number(2),
        },
    )
    .unwrap();
    assert!(events(&mut s).is_empty());
    for seq in [1, 2] {
        s.handle_frame(ServerToClient::Deliver {
            from: PEER,
            group: None,
            seq,
            payload: number(seq),
        })
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
    s.flush_acks();
    assert_eq!(
        s.poll_peer_frame(),
        Some((PEER, PeerToPeer::Ack { delivered: 2 }))
    );
    s.flush_acks();
    assert_eq!(s.poll_peer_frame(), None, "nothing new to ack");
}

#[test]
fn a_direct_datagram_claiming_another_sender_is_dropped() {
    let mut s = session_in_group();
    s.handle_peer_datagram(
        PEER,
        ServerDatagram::Deliver {
            from: OTHER,
            group: None,
            payload: Bytes::from_static(b"lie"),
        },
    );
    assert!(events(&mut s).is_empty());
    s.handle_peer_datagram(
        PEER,
        ServerDatagram::Deliver {
            from: PEER,
            group: None,
            payload: Bytes::from_static(b"true"),
        },
    );
    assert!(matches!(
        events(&mut s).as_slice(),
        [ClientEvent::Message { path: Path::Direct, from, .. }] if *from == PEER
    ));
}

#[test]
fn a_peer_that_skips_a_number_cannot_make_us_hold_unbounded_memory() {
    let mut s = session_in_group();
    let big = Bytes::from(vec![0u8; 1 << 20]);
    // Sequence 1 never comes; 2, 3, ... arrive through the relay, 1 MiB each.
    for seq in 2..=40u64 {
        s.handle_frame(ServerToClient::Deliver {
            from: PEER,
            group: None,
            seq,
            payload: big.clone(),
        })
        .unwrap();
    }
    assert!(events(&mut s).is_empty(), "nothing deliverable before 1");
    assert!(s.held_bytes(PEER) <= MAX_HELD_BYTES_RELAYED);
    assert_eq!(s.peer_stats(PEER).unwrap().discarded, 40 - 1 - 16);
    // Other peers are unaffected.
    s.handle_frame(ServerToClient::Deliver {
        from: OTHER,
        group: None,
        seq: 1,
        payload: Bytes::from_static(b"fine"),
    })
    .unwrap();
    assert_eq!(events(&mut s).len(), 1);
}
