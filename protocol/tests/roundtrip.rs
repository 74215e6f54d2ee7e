//! Property tests of the codec: every message round-trips through frames (reassembled from
//! arbitrary chunks) and datagrams, arbitrary input never panics, and the framing errors
//! are the documented ones with the documented close codes. Punch probes (laid out by
//! hand, not postcard) round-trip too, and any datagram either decodes or is refused.

use bytes::{Bytes, BytesMut};
use peergroup_protocol::{
    body_len, datagram_to_bytes, decode_body, decode_client_datagram, decode_client_frame,
    decode_peer_frame, decode_server_datagram, decode_server_frame, encode_client_datagram,
    encode_client_frame, encode_frame, encode_peer_frame, encode_server_datagram, frame_to_bytes,
    is_probe, peek_hello_version, ClientDatagram, ClientToServer, CloseCode, DatagramLane,
    DeliverFrame, Delivery, Fingerprint, FrameDecoder, FrameError, GroupId, Hello, HostId, Lane,
    MalformedProbe, Memberships, Notice, PairId, PairPath, PathReason, PeerInfo, PeerToPeer,
    Priority, Probe, ProbeKind, PunchOrder, PunchOutcome, RefuseReason, RelayDest, ServerDatagram,
    ServerToClient, DATAGRAM_DELIVER_OVERHEAD, DEFAULT_MAX_FRAME_LEN, LENGTH_PREFIX_LEN,
    PROBE_MAC_LEN,
};
use proptest::prelude::*;
use serde::{de::DeserializeOwned, Serialize};
use std::fmt::Debug;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

// ---------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------

fn host_id() -> impl Strategy<Value = HostId> {
    any::<u64>().prop_map(HostId::from_raw)
}

fn group_id() -> impl Strategy<Value = GroupId> {
    any::<u64>().prop_map(GroupId::from_raw)
}

fn pair_id() -> impl Strategy<Value = PairId> {
    any::<u64>().prop_map(PairId::from_raw)
}

fn payload() -> impl Strategy<Value = Bytes> {
    // Up to 200 bytes, so lengths of one and two varint bytes both occur.
    prop::collection::vec(any::<u8>(), 0..200).prop_map(Bytes::from)
}

fn peer_info() -> impl Strategy<Value = PeerInfo> {
    prop::array::uniform32(any::<u8>()).prop_map(|bytes| PeerInfo {
        identity: Fingerprint(bytes),
    })
}

fn relay_dest() -> impl Strategy<Value = RelayDest> {
    (pair_id(), any::<u64>()).prop_map(|(pair, seq)| RelayDest { pair, seq })
}

fn relay_dests() -> impl Strategy<Value = Vec<RelayDest>> {
    prop::collection::vec(relay_dest(), 0..8)
}

fn priority() -> impl Strategy<Value = Priority> {
    prop_oneof![
        Just(Priority::High),
        Just(Priority::Medium),
        Just(Priority::Low),
    ]
}

fn lane() -> impl Strategy<Value = Lane> {
    prop_oneof![
        any::<u8>().prop_map(|channel| Lane::Ordered { channel }),
        Just(Lane::Unordered),
        any::<u64>().prop_map(|key| Lane::Latest { key }),
    ]
}

fn datagram_lane() -> impl Strategy<Value = DatagramLane> {
    prop_oneof![
        Just(DatagramLane::Plain),
        any::<u8>().prop_map(|channel| DatagramLane::Sequenced { channel }),
        any::<u32>().prop_map(|id| DatagramLane::Ping { id }),
        any::<u32>().prop_map(|id| DatagramLane::Pong { id }),
    ]
}

fn delivery() -> impl Strategy<Value = Delivery> {
    prop_oneof![
        Just(Delivery::ReliableOrdered),
        Just(Delivery::Unreliable),
        Just(Delivery::ReliableUnordered),
        Just(Delivery::UnreliableSequenced),
        any::<u64>().prop_map(|key| Delivery::Latest { key }),
    ]
}

fn optional_u32() -> impl Strategy<Value = Option<u32>> {
    prop::option::of(any::<u32>())
}

fn refuse_reason() -> impl Strategy<Value = RefuseReason> {
    prop_oneof![
        Just(RefuseReason::NoSharedGroup),
        Just(RefuseReason::SenderNotInGroup),
        Just(RefuseReason::DestNotInGroup),
        Just(RefuseReason::UnknownPair),
        Just(RefuseReason::ServerNotMember),
        Just(RefuseReason::TooLargeForPath),
        Just(RefuseReason::TooManyDestinations),
    ]
}

/// IPv4 and IPv6 addresses with any port. IPv6 ones have no flow info and no scope id:
/// the wire does not carry them, so only those round-trip exactly.
fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port)),
        (any::<[u8; 16]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port)),
    ]
}

fn socket_addrs() -> impl Strategy<Value = Vec<SocketAddr>> {
    prop::collection::vec(socket_addr(), 0..8)
}

fn pair_path() -> impl Strategy<Value = PairPath> {
    prop_oneof![Just(PairPath::Relay), Just(PairPath::Direct)]
}

fn punch_outcome() -> impl Strategy<Value = PunchOutcome> {
    prop_oneof![
        any::<u32>().prop_map(|rtt_us| PunchOutcome::Direct { rtt_us }),
        Just(PunchOutcome::NoResponse),
        Just(PunchOutcome::HandshakeFailed),
        Just(PunchOutcome::Declined),
    ]
}

fn path_reason() -> impl Strategy<Value = PathReason> {
    prop_oneof![
        Just(PathReason::Punched),
        Just(PathReason::DirectTimedOut),
        Just(PathReason::DirectClosed),
        Just(PathReason::PairEnded),
    ]
}

fn punch_order() -> impl Strategy<Value = PunchOrder> {
    (
        host_id(),
        pair_id(),
        any::<u32>(),
        prop::array::uniform32(any::<u8>()),
        socket_addrs(),
        any::<u32>(),
        any::<bool>(),
    )
        .prop_map(
            |(peer, pair, attempt, secret, candidates, start_in_ms, controlling)| PunchOrder {
                peer,
                pair,
                attempt,
                secret,
                candidates,
                start_in_ms,
                controlling,
            },
        )
}

fn hello() -> impl Strategy<Value = Hello> {
    (any::<u32>(), payload()).prop_map(|(version, login)| Hello { version, login })
}

fn notice() -> impl Strategy<Value = Notice> {
    prop_oneof![
        (
            (group_id(), host_id(), any::<u32>(), any::<u32>()),
            payload(),
            payload(),
            prop::option::of(payload())
        )
            .prop_map(
                |(
                    (group, member, membership, member_count),
                    join_message,
                    member_data,
                    group_data,
                )| {
                    Notice::MemberJoined {
                        group,
                        member,
                        membership,
                        member_count,
                        join_message,
                        member_data,
                        group_data,
                    }
                }
            ),
        (group_id(), host_id(), any::<u32>()).prop_map(|(group, member, member_count)| {
            Notice::MemberLeft {
                group,
                member,
                member_count,
            }
        }),
        (host_id(), payload()).prop_map(|(host, data)| Notice::HostData { host, data }),
        (group_id(), payload()).prop_map(|(group, data)| Notice::GroupData { group, data }),
    ]
}

fn client_to_server() -> impl Strategy<Value = ClientToServer> {
    prop_oneof![
        hello().prop_map(ClientToServer::Hello),
        any::<u64>().prop_map(|notices| ClientToServer::Ack { notices }),
        (
            prop::option::of(group_id()),
            any::<bool>(),
            lane(),
            priority(),
            relay_dests(),
            payload(),
        )
            .prop_map(|(group, to_server, lane, priority, dests, payload)| {
                ClientToServer::Relay {
                    group,
                    to_server,
                    lane,
                    priority,
                    dests: dests.into(),
                    payload,
                }
            }),
        socket_addrs().prop_map(|addrs| ClientToServer::HostCandidates { addrs }),
        pair_id().prop_map(|pair| ClientToServer::WantDirect { pair }),
        (pair_id(), any::<u32>(), punch_outcome()).prop_map(|(pair, attempt, outcome)| {
            ClientToServer::PunchReport {
                pair,
                attempt,
                outcome,
            }
        }),
        (pair_id(), pair_path(), path_reason())
            .prop_map(|(pair, path, reason)| { ClientToServer::PathReport { pair, path, reason } }),
        any::<u64>().prop_map(|token| ClientToServer::TimeRequest { token }),
        (
            pair_id(),
            optional_u32(),
            optional_u32(),
            prop::option::of(any::<u16>()),
        )
            .prop_map(|(pair, rtt_us, last_rtt_us, loss_permille)| {
                ClientToServer::LinkReport {
                    pair,
                    rtt_us,
                    last_rtt_us,
                    loss_permille,
                }
            }),
    ]
}

fn server_to_client() -> impl Strategy<Value = ServerToClient> {
    prop_oneof![
        (any::<u32>(), host_id(), payload(), any::<u32>()).prop_map(
            |(version, host_id, app_data, max_frame_len)| ServerToClient::Welcome {
                version,
                host_id,
                app_data,
                max_frame_len,
            }
        ),
        (host_id(), pair_id(), peer_info()).prop_map(|(peer, pair, info)| ServerToClient::PeerUp {
            peer,
            pair,
            info
        }),
        (host_id(), pair_id()).prop_map(|(peer, pair)| ServerToClient::PeerDown { peer, pair }),
        prop::collection::vec(notice(), 0..6).prop_map(ServerToClient::Notices),
        (
            host_id(),
            prop::option::of(group_id()),
            lane(),
            any::<u64>(),
            payload()
        )
            .prop_map(
                |(from, group, lane, seq, payload)| ServerToClient::Deliver {
                    from,
                    group,
                    lane,
                    seq,
                    payload,
                }
            ),
        (host_id(), lane(), any::<u64>()).prop_map(|(from, lane, seq)| ServerToClient::Skipped {
            from,
            lane,
            seq
        }),
        (
            prop::option::of(group_id()),
            lane(),
            any::<u64>(),
            payload()
        )
            .prop_map(|(group, lane, seq, payload)| ServerToClient::FromServer {
                group,
                lane,
                seq,
                payload,
            }),
        (
            prop::option::of(pair_id()),
            prop::option::of(group_id()),
            refuse_reason()
        )
            .prop_map(|(pair, group, reason)| ServerToClient::Refused {
                pair,
                group,
                reason,
            }),
        punch_order().prop_map(ServerToClient::PunchOrder),
        (any::<u64>(), any::<u64>()).prop_map(|(token, server_time_us)| ServerToClient::Time {
            token,
            server_time_us,
        }),
        (
            prop::option::of(group_id()),
            prop::collection::vec((pair_id(), refuse_reason()), 0..8)
        )
            .prop_map(|(group, refused)| ServerToClient::RefusedMany { group, refused }),
    ]
}

fn client_datagram() -> impl Strategy<Value = ClientDatagram> {
    (
        prop::option::of(group_id()),
        any::<bool>(),
        datagram_lane(),
        any::<u64>(),
        relay_dests(),
        payload(),
    )
        .prop_map(|(group, to_server, lane, server_seq, dests, payload)| {
            ClientDatagram::Relay {
                group,
                to_server,
                lane,
                server_seq,
                dests: dests.into(),
                payload,
            }
        })
}

fn server_datagram() -> impl Strategy<Value = ServerDatagram> {
    (
        host_id(),
        prop::option::of(group_id()),
        datagram_lane(),
        any::<u64>(),
        payload(),
    )
        .prop_map(
            |(from, group, lane, seq, payload)| ServerDatagram::Deliver {
                from,
                group,
                lane,
                seq,
                payload,
            },
        )
}

fn peer_to_peer() -> impl Strategy<Value = PeerToPeer> {
    prop_oneof![
        (
            prop::option::of(group_id()),
            prop::option::of((any::<u32>(), any::<u32>())),
            lane(),
            any::<u64>(),
            payload()
        )
            .prop_map(
                |(group, memberships, lane, seq, payload)| PeerToPeer::Data {
                    group,
                    memberships: memberships
                        .map(|(sender, receiver)| Memberships { sender, receiver }),
                    lane,
                    seq,
                    payload
                }
            ),
        any::<u64>().prop_map(|received| PeerToPeer::Ack { received }),
        (pair_id(), host_id()).prop_map(|(pair, host)| PeerToPeer::Hello { pair, host }),
    ]
}

fn probe_kind() -> impl Strategy<Value = ProbeKind> {
    prop_oneof![
        Just(ProbeKind::Request),
        socket_addr().prop_map(|observed| ProbeKind::Response { observed }),
    ]
}

fn probe() -> impl Strategy<Value = Probe> {
    (
        probe_kind(),
        pair_id(),
        any::<u32>(),
        any::<u64>(),
        any::<bool>(),
    )
        .prop_map(|(kind, pair, attempt, nonce, from_controlling)| Probe {
            kind,
            pair,
            attempt,
            nonce,
            from_controlling,
        })
}

/// Chunk sizes for feeding a decoder; used cyclically.
fn chunk_sizes() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..=24, 1..8)
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// Encodes `messages` as consecutive frames, feeds them to a [`FrameDecoder`] in chunks of
/// the given sizes (cycled), and checks that exactly the same messages come out.
fn stream_round_trip<T>(messages: &[T], chunks: &[usize]) -> Result<(), TestCaseError>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let mut wire = BytesMut::new();
    for message in messages {
        encode_frame(message, DEFAULT_MAX_FRAME_LEN, &mut wire)
            .map_err(|error| TestCaseError::fail(format!("encode failed: {error}")))?;
    }
    // Frames appended to one buffer are the same bytes as frames encoded alone.
    let separately: Vec<u8> = messages
        .iter()
        .flat_map(|m| frame_to_bytes(m, DEFAULT_MAX_FRAME_LEN).unwrap().to_vec())
        .collect();
    prop_assert_eq!(&wire[..], &separately[..]);

    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
    let mut decoded = Vec::new();
    let mut rest = &wire[..];
    for &size in chunks.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (chunk, tail) = rest.split_at(size.min(rest.len()));
        rest = tail;
        decoder.push(chunk);
        while let Some(body) = decoder
            .next_body()
            .map_err(|error| TestCaseError::fail(format!("decoder failed: {error}")))?
        {
            let message: T = decode_body(&body)
                .map_err(|error| TestCaseError::fail(format!("decode failed: {error}")))?;
            decoded.push(message);
        }
    }
    prop_assert!(matches!(decoder.next_body(), Ok(None)));
    prop_assert_eq!(&decoded[..], messages);
    Ok(())
}

/// Datagram round trip, plus: every strict prefix of the encoding is refused (a truncated
/// body never decodes as some other message).
fn datagram_round_trip<T>(message: &T) -> Result<(), TestCaseError>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let bytes = datagram_to_bytes(message).unwrap();
    let decoded: T = decode_body(&bytes)
        .map_err(|error| TestCaseError::fail(format!("decode failed: {error}")))?;
    prop_assert_eq!(&decoded, message);
    check_truncations::<T>(&bytes)
}

fn check_truncations<T: DeserializeOwned + Debug>(bytes: &[u8]) -> Result<(), TestCaseError> {
    for cut in 0..bytes.len() {
        let result = decode_body::<T>(&bytes[..cut]);
        prop_assert!(
            matches!(result, Err(FrameError::Malformed(_))),
            "prefix of {} of {} bytes gave {:?}",
            cut,
            bytes.len(),
            result
        );
    }
    Ok(())
}

/// `message` encoded with `extra` appended must be refused with exactly `extra.len()` bytes
/// over.
fn check_trailing<T>(message: &T, extra: &[u8]) -> Result<(), TestCaseError>
where
    T: Serialize + DeserializeOwned + Debug,
{
    let mut bytes = datagram_to_bytes(message).unwrap().to_vec();
    bytes.extend_from_slice(extra);
    match decode_body::<T>(&bytes) {
        Err(error @ FrameError::TrailingBytes { extra: n }) => {
            prop_assert_eq!(n, extra.len());
            prop_assert_eq!(error.close_code(), CloseCode::ProtocolViolation);
        }
        other => prop_assert!(false, "expected TrailingBytes, got {:?}", other),
    }
    Ok(())
}

/// The `len` and `max` of a [`FrameError::TooLarge`], after checking its close code.
fn too_large<T: Debug>(result: Result<T, FrameError>) -> Result<(u64, u32), TestCaseError> {
    match result {
        Err(error) => match &error {
            FrameError::TooLarge { len, max } => {
                prop_assert_eq!(error.close_code(), CloseCode::FrameTooLarge);
                Ok((*len, *max))
            }
            _ => Err(TestCaseError::fail(format!(
                "expected TooLarge, got {error:?}"
            ))),
        },
        Ok(value) => Err(TestCaseError::fail(format!(
            "expected TooLarge, got Ok({value:?})"
        ))),
    }
}

/// LEB128, written here independently of postcard.
fn varint(mut value: u32) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

// ---------------------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------------------

proptest! {
    #[test]
    fn client_to_server_frames_round_trip(
        messages in prop::collection::vec(client_to_server(), 1..6),
        chunks in chunk_sizes(),
    ) {
        stream_round_trip(&messages, &chunks)?;
        for message in &messages {
            check_truncations::<ClientToServer>(
                &frame_to_bytes(message, DEFAULT_MAX_FRAME_LEN).unwrap()[LENGTH_PREFIX_LEN..],
            )?;
        }
    }

    #[test]
    fn server_to_client_frames_round_trip(
        messages in prop::collection::vec(server_to_client(), 1..6),
        chunks in chunk_sizes(),
    ) {
        stream_round_trip(&messages, &chunks)?;
        for message in &messages {
            check_truncations::<ServerToClient>(
                &frame_to_bytes(message, DEFAULT_MAX_FRAME_LEN).unwrap()[LENGTH_PREFIX_LEN..],
            )?;
        }
    }

    #[test]
    fn peer_to_peer_frames_round_trip(
        messages in prop::collection::vec(peer_to_peer(), 1..6),
        chunks in chunk_sizes(),
    ) {
        stream_round_trip(&messages, &chunks)?;
        for message in &messages {
            check_truncations::<PeerToPeer>(
                &frame_to_bytes(message, DEFAULT_MAX_FRAME_LEN).unwrap()[LENGTH_PREFIX_LEN..],
            )?;
        }
    }

    #[test]
    fn client_datagrams_round_trip(message in client_datagram()) {
        datagram_round_trip(&message)?;
    }

    #[test]
    fn server_datagrams_round_trip(message in server_datagram()) {
        datagram_round_trip(&message)?;
    }

    #[test]
    fn punch_parts_round_trip(
        order in punch_order(),
        addr in socket_addr(),
        outcome in punch_outcome(),
        path in pair_path(),
        reason in path_reason(),
    ) {
        datagram_round_trip(&order)?;
        datagram_round_trip(&addr)?;
        datagram_round_trip(&outcome)?;
        datagram_round_trip(&path)?;
        datagram_round_trip(&reason)?;
    }

    #[test]
    fn delivery_parts_round_trip(
        delivery in delivery(),
        priority in priority(),
        lane in lane(),
        datagram_lane in datagram_lane(),
        dest in relay_dest(),
    ) {
        datagram_round_trip(&delivery)?;
        datagram_round_trip(&priority)?;
        datagram_round_trip(&lane)?;
        datagram_round_trip(&datagram_lane)?;
        datagram_round_trip(&dest)?;
    }

    #[test]
    fn server_datagram_overhead_is_bounded(
        from in prop_oneof![Just(u64::MAX), any::<u64>()],
        group in prop::option::of(prop_oneof![Just(u64::MAX), any::<u64>()]),
        lane in prop_oneof![
            Just(DatagramLane::Ping { id: u32::MAX }),
            Just(DatagramLane::Pong { id: u32::MAX }),
            Just(DatagramLane::Sequenced { channel: u8::MAX }),
            datagram_lane(),
        ],
        seq in prop_oneof![Just(u64::MAX), any::<u64>()],
        len in prop_oneof![0usize..200, 16_000usize..17_000, Just(65_535usize)],
    ) {
        // The server adds at most DATAGRAM_DELIVER_OVERHEAD bytes to a relayed payload,
        // whatever the ids, the lane and the number (the golden test pins the worst case).
        let message = ServerDatagram::Deliver {
            from: HostId::from_raw(from),
            group: group.map(GroupId::from_raw),
            lane,
            seq,
            payload: Bytes::from(vec![0x5a; len]),
        };
        let bytes = datagram_to_bytes(&message).unwrap();
        prop_assert!(
            bytes.len() - len <= DATAGRAM_DELIVER_OVERHEAD,
            "{} bytes of overhead",
            bytes.len() - len
        );
    }
}

// ---------------------------------------------------------------------------------------
// Arbitrary input never panics
// ---------------------------------------------------------------------------------------

proptest! {
    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode_body::<ClientToServer>(&bytes);
        let _ = decode_body::<ServerToClient>(&bytes);
        let _ = decode_body::<ClientDatagram>(&bytes);
        let _ = decode_body::<ServerDatagram>(&bytes);
        let _ = decode_body::<PeerToPeer>(&bytes);
        let _ = decode_body::<Hello>(&bytes);
        let _ = decode_body::<PeerInfo>(&bytes);
        let _ = decode_body::<RelayDest>(&bytes);
        let _ = decode_body::<RefuseReason>(&bytes);
        let _ = decode_body::<PunchOrder>(&bytes);
        let _ = decode_body::<PunchOutcome>(&bytes);
        let _ = decode_body::<PathReason>(&bytes);
        let _ = decode_body::<PairPath>(&bytes);
        let _ = decode_body::<SocketAddr>(&bytes);
        let _ = decode_body::<Delivery>(&bytes);
        let _ = decode_body::<Priority>(&bytes);
        let _ = decode_body::<Lane>(&bytes);
        let _ = decode_body::<DatagramLane>(&bytes);
        let _ = peek_hello_version(&bytes);
    }

    #[test]
    fn decoding_mutated_messages_never_panics(
        message in server_to_client(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        // Near-valid input reaches deeper into the decoder than random bytes do.
        let mut bytes = datagram_to_bytes(&message).unwrap().to_vec();
        for (index, value) in flips {
            let at = index.index(bytes.len());
            bytes[at] = value;
        }
        let _ = decode_body::<ServerToClient>(&bytes);
        let _ = decode_body::<ClientToServer>(&bytes);
        let _ = decode_body::<PeerToPeer>(&bytes);
    }

    #[test]
    fn decoding_mutated_datagrams_never_panics(
        client in client_datagram(),
        server in server_datagram(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        // The lanes and their numbers sit early in a datagram, so flips often hit them.
        for mut bytes in [
            datagram_to_bytes(&client).unwrap().to_vec(),
            datagram_to_bytes(&server).unwrap().to_vec(),
        ] {
            for (index, value) in &flips {
                let at = index.index(bytes.len());
                bytes[at] = *value;
            }
            let _ = decode_body::<ClientDatagram>(&bytes);
            let _ = decode_body::<ServerDatagram>(&bytes);
        }
    }

    #[test]
    fn frame_decoder_on_arbitrary_bytes_never_panics(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
        max in 0u32..64,
        chunk in 1usize..64,
    ) {
        let mut decoder = FrameDecoder::new(max);
        for piece in bytes.chunks(chunk) {
            decoder.push(piece);
            loop {
                match decoder.next_body() {
                    Ok(Some(body)) => {
                        prop_assert!(body.len() <= max as usize);
                        let _ = decode_body::<ClientToServer>(&body);
                        let _ = decode_body::<ServerToClient>(&body);
                        let _ = decode_body::<PeerToPeer>(&body);
                    }
                    Ok(None) => break,
                    result @ Err(_) => {
                        let (len, m) = too_large(result)?;
                        prop_assert_eq!(m, max);
                        prop_assert!(len > u64::from(max));
                        // The stream cannot be resynchronised: the error stays.
                        too_large(decoder.next_body())?;
                        return Ok(());
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Framing errors
// ---------------------------------------------------------------------------------------

proptest! {
    #[test]
    fn oversized_prefix_is_refused_before_the_body(
        max in 0u32..=DEFAULT_MAX_FRAME_LEN,
        excess in prop_oneof![Just(1u64), 1u64..=u64::from(u32::MAX)],
    ) {
        let len = (u64::from(max) + excess).min(u64::from(u32::MAX)) as u32;
        let mut decoder = FrameDecoder::new(max);
        // Only the prefix, none of the body.
        decoder.push(&len.to_be_bytes());
        prop_assert_eq!(too_large(decoder.next_body())?, (u64::from(len), max));
        prop_assert_eq!(too_large(body_len(len.to_be_bytes(), max))?, (u64::from(len), max));
    }

    #[test]
    fn prefix_within_max_waits_for_the_body(
        max in 1u32..=DEFAULT_MAX_FRAME_LEN,
        len_seed in any::<u32>(),
    ) {
        let len = len_seed % (max + 1);
        let mut decoder = FrameDecoder::new(max);
        decoder.push(&len.to_be_bytes());
        if len == 0 {
            prop_assert_eq!(decoder.next_body().unwrap(), Some(Bytes::new()));
        } else {
            prop_assert!(matches!(decoder.next_body(), Ok(None)));
            // One byte short is still not a frame.
            decoder.push(&vec![0u8; len as usize - 1]);
            prop_assert!(matches!(decoder.next_body(), Ok(None)));
            decoder.push(&[0]);
            prop_assert_eq!(decoder.next_body().unwrap().map(|b| b.len()), Some(len as usize));
        }
        prop_assert_eq!(body_len(len.to_be_bytes(), max).unwrap(), len as usize);
    }

    #[test]
    fn trailing_bytes_are_refused(
        c2s in client_to_server(),
        s2c in server_to_client(),
        p2p in peer_to_peer(),
        cd in client_datagram(),
        sd in server_datagram(),
        extra in prop::collection::vec(any::<u8>(), 1..16),
    ) {
        check_trailing(&c2s, &extra)?;
        check_trailing(&s2c, &extra)?;
        check_trailing(&p2p, &extra)?;
        check_trailing(&cd, &extra)?;
        check_trailing(&sd, &extra)?;
    }

    #[test]
    fn encode_frame_over_max_leaves_the_buffer_alone(
        message in server_to_client(),
        existing in prop::collection::vec(any::<u8>(), 0..32),
        shortfall_seed in any::<u32>(),
    ) {
        let body = frame_to_bytes(&message, DEFAULT_MAX_FRAME_LEN).unwrap().len()
            - LENGTH_PREFIX_LEN;
        let body = u32::try_from(body).unwrap();
        // Any max below the body length: body - 1 down to 0.
        let max = body - 1 - shortfall_seed % body;

        let mut out = BytesMut::from(&existing[..]);
        prop_assert_eq!(
            too_large(encode_frame(&message, max, &mut out))?,
            (u64::from(body), max)
        );
        prop_assert_eq!(&out[..], &existing[..]);
        prop_assert_eq!(too_large(frame_to_bytes(&message, max))?, (u64::from(body), max));

        // Exactly at the maximum is allowed, and appends after what was there.
        encode_frame(&message, body, &mut out).unwrap();
        prop_assert_eq!(&out[..existing.len()], &existing[..]);
        prop_assert_eq!(
            &out[existing.len()..],
            &frame_to_bytes(&message, DEFAULT_MAX_FRAME_LEN).unwrap()[..]
        );
    }
}

#[test]
fn malformed_bodies_are_protocol_violations() {
    let cases: [(&str, &[u8]); 4] = [
        ("empty", &[]),
        ("unknown variant", &[0x09]),
        ("bool out of range", &[0x02, 0x00, 0x02, 0x00, 0x00]),
        ("length past the end", &[0x00, 0x01, 0x05, b'a']),
    ];
    for (name, body) in cases {
        match decode_body::<ClientToServer>(body) {
            Err(error @ FrameError::Malformed(_)) => {
                assert_eq!(error.close_code(), CloseCode::ProtocolViolation, "{name}");
            }
            other => panic!("{name}: expected Malformed, got {other:?}"),
        }
    }
    let trailing = decode_body::<PeerToPeer>(&[0x01, 0x00, 0x00]).unwrap_err();
    assert!(matches!(trailing, FrameError::TrailingBytes { extra: 1 }));
    assert_eq!(trailing.close_code(), CloseCode::ProtocolViolation);
}

// ---------------------------------------------------------------------------------------
// Reading the version of any hello
// ---------------------------------------------------------------------------------------

proptest! {
    #[test]
    fn peek_reads_the_version_of_a_hello(hello in hello()) {
        let version = hello.version;
        let frame = frame_to_bytes(&ClientToServer::Hello(hello), DEFAULT_MAX_FRAME_LEN).unwrap();
        prop_assert_eq!(peek_hello_version(&frame[LENGTH_PREFIX_LEN..]), Some(version));
    }

    #[test]
    fn peek_reads_the_version_of_a_newer_hello(
        version in any::<u32>(),
        rest in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        // A later version may change everything after `version`.
        let mut body = vec![0x00];
        body.extend(varint(version));
        body.extend(&rest);
        prop_assert_eq!(peek_hello_version(&body), Some(version));
    }

    #[test]
    fn peek_is_none_for_other_frames(message in client_to_server()) {
        let frame = frame_to_bytes(&message, DEFAULT_MAX_FRAME_LEN).unwrap();
        let peeked = peek_hello_version(&frame[LENGTH_PREFIX_LEN..]);
        match message {
            ClientToServer::Hello(hello) => prop_assert_eq!(peeked, Some(hello.version)),
            _ => prop_assert_eq!(peeked, None),
        }
    }
}

#[test]
fn peek_is_none_for_empty_or_truncated_bodies() {
    assert_eq!(peek_hello_version(&[]), None);
    // Hello variant, but the version varint is cut short.
    assert_eq!(peek_hello_version(&[0x00]), None);
    assert_eq!(peek_hello_version(&[0x00, 0x80]), None);
    // Ack and Relay.
    assert_eq!(peek_hello_version(&[0x01, 0x01, 0x01]), None);
    assert_eq!(peek_hello_version(&[0x02, 0x01]), None);
}

// ---------------------------------------------------------------------------------------
// Punch probes
// ---------------------------------------------------------------------------------------

/// Bytes of a probe before its MAC: 26 of header, plus the observed address of a response.
fn probe_signed_len(probe: &Probe) -> usize {
    26 + match probe.kind {
        ProbeKind::Request => 0,
        ProbeKind::Response {
            observed: SocketAddr::V4(_),
        } => 1 + 4 + 2,
        ProbeKind::Response {
            observed: SocketAddr::V6(_),
        } => 1 + 16 + 2,
    }
}

proptest! {
    #[test]
    fn probes_round_trip(probe in probe(), mac in any::<[u8; PROBE_MAC_LEN]>()) {
        let mut mac_input = None;
        let bytes = probe.encode(|signed| {
            mac_input = Some(signed.to_vec());
            mac
        });
        let signed = probe.signed_bytes();
        prop_assert_eq!(signed.len(), probe_signed_len(&probe));
        prop_assert_eq!(mac_input.as_deref(), Some(&signed[..]));
        prop_assert_eq!(&bytes[..signed.len()], &signed[..]);
        prop_assert_eq!(&bytes[signed.len()..], &mac[..]);
        prop_assert!(is_probe(&bytes));

        let (decoded, decoded_signed, decoded_mac) = Probe::decode(&bytes)
            .map_err(|error| TestCaseError::fail(format!("decode failed: {error}")))?;
        prop_assert_eq!(decoded, probe);
        prop_assert_eq!(decoded_signed, &signed[..]);
        prop_assert_eq!(decoded_mac, &mac[..]);
    }

    #[test]
    fn truncated_or_extended_probes_are_refused(
        probe in probe(),
        mac in any::<[u8; PROBE_MAC_LEN]>(),
        extra in prop::collection::vec(any::<u8>(), 1..32),
    ) {
        // A probe is exactly its layout: no prefix of one, and nothing longer, is a probe.
        let bytes = probe.encode(|_| mac);
        for cut in 0..bytes.len() {
            prop_assert_eq!(Probe::decode(&bytes[..cut]), Err(MalformedProbe), "cut at {}", cut);
        }
        let mut longer = bytes.clone();
        longer.extend_from_slice(&extra);
        prop_assert_eq!(Probe::decode(&longer), Err(MalformedProbe));
    }

    #[test]
    fn decoding_arbitrary_datagrams_never_panics(
        bytes in prop::collection::vec(any::<u8>(), 0..128),
    ) {
        let probe = is_probe(&bytes);
        prop_assert_eq!(probe, bytes.first().is_some_and(|b| b & 0xc0 == 0));
        if let Ok((decoded, signed, mac)) = Probe::decode(&bytes) {
            // Whatever decodes is a probe, and encodes back to the same bytes.
            prop_assert!(probe);
            prop_assert_eq!(signed.len() + mac.len(), bytes.len());
            prop_assert_eq!(mac.len(), PROBE_MAC_LEN);
            prop_assert_eq!(&decoded.signed_bytes()[..], signed);
        }
    }

    #[test]
    fn decoding_mutated_probes_never_panics(
        probe in probe(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        // Near-valid input gets past the length and magic checks that random bytes fail.
        let mut bytes = probe.encode(|_| [0xaa; PROBE_MAC_LEN]);
        for (index, value) in flips {
            let at = index.index(bytes.len());
            bytes[at] = value;
        }
        if let Ok((decoded, signed, _)) = Probe::decode(&bytes) {
            prop_assert!(is_probe(&bytes));
            prop_assert_eq!(&decoded.signed_bytes()[..], signed);
        }
        let _ = Probe::decode(&bytes[..cut.index(bytes.len() + 1)]);
    }
}

// ---------------------------------------------------------------------------------------
// Zero-copy decoders agree with the plain ones
// ---------------------------------------------------------------------------------------

/// The zero-copy decoder and `decode_body` agree on `bytes`: the same message, or both an
/// error.
fn agree<T: PartialEq + std::fmt::Debug + serde::de::DeserializeOwned>(
    bytes: &[u8],
    fast: fn(&Bytes) -> Result<T, FrameError>,
) -> Result<(), TestCaseError> {
    let plain = decode_body::<T>(bytes);
    let shared = fast(&Bytes::copy_from_slice(bytes));
    match (&plain, &shared) {
        (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
        (Err(_), Err(_)) => {}
        _ => prop_assert!(false, "plain {:?} but zero-copy {:?}", plain, shared),
    }
    Ok(())
}

/// `agree` on `bytes`, on every truncation of them, and on one byte more.
fn agree_around<T: PartialEq + std::fmt::Debug + serde::de::DeserializeOwned>(
    bytes: &[u8],
    fast: fn(&Bytes) -> Result<T, FrameError>,
) -> Result<(), TestCaseError> {
    for cut in 0..=bytes.len() {
        agree(&bytes[..cut], fast)?;
    }
    let mut longer = bytes.to_vec();
    longer.push(0);
    agree(&longer, fast)
}

/// `agree` on `bytes` with each byte in turn replaced by each of a few values: 0 to 4 (a
/// tag, a small varint), 0x0F and 0x10 (around a `u32` varint's largest last byte), 0x7F,
/// 0x80 and 0xFF (a varint's continuation bit).
fn agree_altered<T: PartialEq + std::fmt::Debug + serde::de::DeserializeOwned>(
    bytes: &[u8],
    fast: fn(&Bytes) -> Result<T, FrameError>,
) -> Result<(), TestCaseError> {
    for at in 0..bytes.len() {
        for value in [0, 1, 2, 3, 4, 0x0F, 0x10, 0x7F, 0x80, 0xFF] {
            let mut altered = bytes.to_vec();
            altered[at] = value;
            agree(&altered, fast)?;
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn zero_copy_decoders_give_what_decode_body_gives(
        client in client_to_server(),
        server in server_to_client(),
        peer in peer_to_peer(),
        client_datagram in client_datagram(),
        server_datagram in server_datagram(),
    ) {
        agree_around(&datagram_to_bytes(&client).unwrap(), decode_client_frame)?;
        agree_around(&datagram_to_bytes(&server).unwrap(), decode_server_frame)?;
        agree_around(&datagram_to_bytes(&peer).unwrap(), decode_peer_frame)?;
        agree_around(&datagram_to_bytes(&client_datagram).unwrap(), decode_client_datagram)?;
        agree_around(&datagram_to_bytes(&server_datagram).unwrap(), decode_server_datagram)?;
    }

    /// Every byte of a valid message changed in turn to each value that matters to a
    /// field (a tag just past the valid ones, a varint's continuation bit, its largest
    /// last byte): a bad tag or varint in the middle of an otherwise good message.
    #[test]
    fn zero_copy_decoders_agree_on_altered_messages(
        client in client_to_server(),
        server in server_to_client(),
        peer in peer_to_peer(),
        client_datagram in client_datagram(),
        server_datagram in server_datagram(),
    ) {
        agree_altered(&datagram_to_bytes(&client).unwrap(), decode_client_frame)?;
        agree_altered(&datagram_to_bytes(&server).unwrap(), decode_server_frame)?;
        agree_altered(&datagram_to_bytes(&peer).unwrap(), decode_peer_frame)?;
        agree_altered(&datagram_to_bytes(&client_datagram).unwrap(), decode_client_datagram)?;
        agree_altered(&datagram_to_bytes(&server_datagram).unwrap(), decode_server_datagram)?;
    }

    #[test]
    fn zero_copy_decoders_agree_on_arbitrary_bytes(
        variant in 0u8..12,
        rest in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut bytes = vec![variant];
        bytes.extend(rest);
        agree(&bytes, decode_client_frame)?;
        agree(&bytes, decode_server_frame)?;
        agree(&bytes, decode_peer_frame)?;
        agree(&bytes, decode_client_datagram)?;
        agree(&bytes, decode_server_datagram)?;
    }
}

#[test]
fn a_zero_copy_payload_shares_the_received_buffer() {
    let message = ServerToClient::Deliver {
        from: HostId::from_raw(1),
        group: None,
        lane: Lane::Unordered,
        seq: 3,
        payload: Bytes::from(vec![7u8; 100]),
    };
    let body = datagram_to_bytes(&message).unwrap();
    let Ok(ServerToClient::Deliver { payload, .. }) = decode_server_frame(&body) else {
        panic!("decodes");
    };
    let start = payload.as_ptr() as usize - body.as_ptr() as usize;
    assert_eq!(
        start + payload.len(),
        body.len(),
        "a slice of the body, not a copy"
    );
}

proptest! {
    #[test]
    fn a_deliver_frame_writes_what_frame_to_bytes_writes(
        message in server_to_client(),
        prefix in prop::collection::vec(any::<u8>(), 0..8),
    ) {
        let ServerToClient::Deliver { from, group, lane, seq, payload } = message.clone() else {
            return Ok(());
        };
        let frame = DeliverFrame { from, group, lane, seq, payload };
        let expected = frame_to_bytes(&message, DEFAULT_MAX_FRAME_LEN).unwrap();
        prop_assert_eq!(frame.frame_len(), expected.len());
        let mut out = BytesMut::from(&prefix[..]);
        frame.write_to(&mut out, DEFAULT_MAX_FRAME_LEN).unwrap();
        prop_assert_eq!(&out[..prefix.len()], &prefix[..], "appends");
        prop_assert_eq!(&out[prefix.len()..], &expected[..]);
        prop_assert_eq!(frame.message(), message);
        // Over the limit: refused, and nothing written.
        let body = expected.len() - LENGTH_PREFIX_LEN;
        let mut untouched = BytesMut::from(&prefix[..]);
        prop_assert!(frame.write_to(&mut untouched, body as u32 - 1).is_err());
        prop_assert_eq!(&untouched[..], &prefix[..]);
    }
}

/// An encoder's frame, or the body length it refused as too large; any other error fails
/// the test.
fn refused_len(result: Result<Bytes, FrameError>) -> Result<Bytes, u64> {
    match result {
        Ok(bytes) => Ok(bytes),
        Err(FrameError::TooLarge { len, .. }) => Err(len),
        Err(other) => panic!("encoding failed: {other}"),
    }
}

proptest! {
    // The hand encoders (`hand_encode.rs`) must write postcard's bytes for every message,
    // payload-carrying or not, and refuse the same frames at the same limit. (The server's
    // `Deliver`, kept as a `DeliverFrame`, is checked above.)
    #[test]
    fn the_hand_encoders_write_what_postcard_writes(
        client in client_to_server(),
        peer in peer_to_peer(),
        client_datagram in client_datagram(),
        server_datagram in server_datagram(),
        max in prop_oneof![Just(DEFAULT_MAX_FRAME_LEN), 0u32..300],
    ) {
        prop_assert_eq!(
            refused_len(encode_client_frame(&client, max)),
            refused_len(frame_to_bytes(&client, max))
        );
        prop_assert_eq!(
            refused_len(encode_peer_frame(&peer, max)),
            refused_len(frame_to_bytes(&peer, max))
        );
        prop_assert_eq!(
            encode_client_datagram(&client_datagram).unwrap(),
            datagram_to_bytes(&client_datagram).unwrap()
        );
        prop_assert_eq!(
            encode_server_datagram(&server_datagram).unwrap(),
            datagram_to_bytes(&server_datagram).unwrap()
        );
    }
}
