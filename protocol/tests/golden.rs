//! Golden-byte tests: they pin the exact wire encoding of every message.
//!
//! A failing golden test means the wire format changed. That is a protocol break: bump
//! `PROTOCOL_VERSION` (and update the bytes here) rather than just editing the expectation.
//!
//! The expected bytes were derived by hand from postcard's format: unsigned integers are
//! LEB128 varints, a `u8` is one raw byte (not a varint), an enum variant is its index as a varint, `Option` is a `0`/`1` byte then
//! the value, `bool` is one `0`/`1` byte, `Bytes` and `Vec` are a varint length then the
//! elements, and `[u8; 32]` is 32 raw bytes. Stream frames add a 4-byte big-endian length
//! prefix in front of the body.
//!
//! A `SocketAddr` goes through serde's compact (non-human-readable) form: an enum, so the
//! variant index (`0` for V4, `1` for V6) as a varint, then the IP as its raw octets (4 or
//! 16 bytes, no length), then the port as a `u16` varint. An IPv6 address's flow info and
//! scope id are not carried.
//!
//! Punch probes are not postcard: they are laid out by hand (see `probe.rs`), and pinned
//! at the end of this file.

use bytes::Bytes;
use peergroup_protocol::rooms::{
    RoomSummary, RoomsReply, RoomsRequest, MAX_DISPLAY_NAME_LEN, MAX_PASSWORD_LEN,
    MAX_ROOM_NAME_LEN,
};
use peergroup_protocol::{
    datagram_to_bytes, decode_body, frame_to_bytes, is_probe, ClientDatagram, ClientToServer,
    DatagramLane, Delivery, Fingerprint, FrameDecoder, FrameError, GroupId, Hello, HostId, Lane,
    MalformedProbe, Memberships, Notice, PairId, PairPath, Path, PathReason, PeerInfo, PeerToPeer,
    Priority, Probe, ProbeKind, PunchOrder, PunchOutcome, RefuseReason, RelayDest, RelayDests,
    Resume, ResumeToken, ServerDatagram, ServerToClient, DATAGRAM_DELIVER_OVERHEAD,
    DEFAULT_MAX_FRAME_LEN, PROBE_MAC_LEN,
};
use serde::{de::DeserializeOwned, Serialize};
use smallvec::smallvec;
use std::fmt::Debug;
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};

/// `0x1_0000_0002` as a varint: five bytes, the last carrying bit 32.
const HOST: [u8; 5] = [0x82, 0x80, 0x80, 0x80, 0x10];
/// `0x2_0000_0005` as a varint: five bytes, the last carrying bit 33.
const GROUP: [u8; 5] = [0x85, 0x80, 0x80, 0x80, 0x20];
/// `300` as a varint.
const PAIR: [u8; 2] = [0xac, 0x02];
/// `u64::MAX` as a varint: nine bytes of seven one-bits, then the last bit (63).
const U64_MAX: [u8; 10] = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
/// `u32::MAX` as a varint: four bytes of seven one-bits, then the last four bits.
const U32_MAX: [u8; 5] = [0xff, 0xff, 0xff, 0xff, 0x0f];
/// [`v4_addr`]: variant `V4`, octets 203.0.113.7, port 40000 (`0x9c40`) as a varint.
const V4_ADDR: [u8; 8] = [0x00, 0xcb, 0x00, 0x71, 0x07, 0xc0, 0xb8, 0x02];
/// [`v6_addr`]: variant `V6`, the 16 octets of 2001:db8::1, port 9.
const V6_ADDR: [u8; 18] = [
    0x01, 0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x09,
];

fn host() -> HostId {
    HostId::from_raw(0x1_0000_0002)
}

fn group() -> GroupId {
    GroupId::from_raw(0x2_0000_0005)
}

fn pair() -> PairId {
    PairId::from_raw(300)
}

/// Bytes `0x00, 0x01, ..., 0x1f`.
fn fingerprint() -> Fingerprint {
    Fingerprint(core::array::from_fn(|i| i as u8))
}

/// An IPv4 candidate (TEST-NET-3, RFC 5737) with a port that needs a three-byte varint.
fn v4_addr() -> SocketAddr {
    "203.0.113.7:40000".parse().unwrap()
}

/// An IPv6 candidate (documentation prefix, RFC 3849) with a one-byte port.
fn v6_addr() -> SocketAddr {
    "[2001:db8::1]:9".parse().unwrap()
}

/// With `PEERGROUP_FUZZ_SEEDS=DIR` set, writes each golden message's bytes to
/// `DIR/TYPE/NAME`, where `fuzz/seed.sh` turns them into the fuzz targets' first corpus
/// (real encodings of every variant). Does nothing otherwise.
fn seed(type_name: &str, name: &str, bytes: &[u8]) {
    let Some(dir) = std::env::var_os("PEERGROUP_FUZZ_SEEDS") else {
        return;
    };
    let short = type_name.rsplit("::").next().unwrap_or(type_name);
    let dir = std::path::Path::new(&dir).join(short);
    std::fs::create_dir_all(&dir).expect("seed directory");
    let file: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    std::fs::write(dir.join(file), bytes).expect("seed file");
}

/// Concatenates byte pieces, so an expectation can reuse the id constants above.
fn cat(pieces: &[&[u8]]) -> Vec<u8> {
    pieces.concat()
}

/// Checks that `message` encodes as the frame `expected` (prefix included) and that the
/// frame reads back, through [`FrameDecoder`] and [`decode_body`], as `message`.
fn check_frame<T>(name: &str, message: &T, expected: &[u8])
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let encoded = frame_to_bytes(message, DEFAULT_MAX_FRAME_LEN)
        .unwrap_or_else(|error| panic!("{name}: encoding failed: {error}"));
    assert_eq!(encoded.as_ref(), expected, "{name}: frame bytes changed");
    seed(std::any::type_name::<T>(), name, &expected[4..]);

    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
    decoder.push(expected);
    let body = decoder
        .next_body()
        .unwrap_or_else(|error| panic!("{name}: decoder refused the frame: {error}"))
        .unwrap_or_else(|| panic!("{name}: decoder wants more bytes"));
    assert_eq!(
        body.as_ref(),
        &expected[4..],
        "{name}: body is not the rest"
    );
    assert!(
        matches!(decoder.next_body(), Ok(None)),
        "{name}: decoder has bytes left"
    );
    let decoded: T =
        decode_body(&body).unwrap_or_else(|error| panic!("{name}: decoding failed: {error}"));
    assert_eq!(&decoded, message, "{name}: decoded message differs");
}

/// Checks that `message` encodes as the bare body (datagram) `expected` and decodes back.
fn check_body<T>(name: &str, message: &T, expected: &[u8])
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let encoded = datagram_to_bytes(message)
        .unwrap_or_else(|error| panic!("{name}: encoding failed: {error}"));
    assert_eq!(encoded.as_ref(), expected, "{name}: bytes changed");
    seed(std::any::type_name::<T>(), name, expected);
    let decoded: T =
        decode_body(expected).unwrap_or_else(|error| panic!("{name}: decoding failed: {error}"));
    assert_eq!(&decoded, message, "{name}: decoded message differs");
}

// Exhaustive matches (no wildcard), so adding a variant to a message enum fails to compile
// here until it gets a golden case below.

fn client_to_server_variant(message: &ClientToServer) -> u32 {
    match message {
        ClientToServer::Hello(_) => 0,
        ClientToServer::Ack { .. } => 1,
        ClientToServer::Relay { .. } => 2,
        ClientToServer::HostCandidates { .. } => 3,
        ClientToServer::WantDirect { .. } => 4,
        ClientToServer::PunchReport { .. } => 5,
        ClientToServer::PathReport { .. } => 6,
        ClientToServer::TimeRequest { .. } => 7,
        ClientToServer::LinkReport { .. } => 8,
        ClientToServer::Resume(_) => 9,
        ClientToServer::Received { .. } => 10,
        ClientToServer::Datagram(_) => 11,
    }
}

fn server_to_client_variant(message: &ServerToClient) -> u32 {
    match message {
        ServerToClient::Welcome { .. } => 0,
        ServerToClient::PeerUp { .. } => 1,
        ServerToClient::PeerDown { .. } => 2,
        ServerToClient::Notices(_) => 3,
        ServerToClient::Deliver { .. } => 4,
        ServerToClient::Skipped { .. } => 5,
        ServerToClient::FromServer { .. } => 6,
        ServerToClient::Refused { .. } => 7,
        ServerToClient::PunchOrder(_) => 8,
        ServerToClient::Time { .. } => 9,
        ServerToClient::RefusedMany { .. } => 10,
        ServerToClient::ResumeToken { .. } => 11,
        ServerToClient::Resumed { .. } => 12,
        ServerToClient::Received { .. } => 13,
        ServerToClient::Datagram(_) => 14,
    }
}

fn notice_variant(notice: &Notice) -> u32 {
    match notice {
        Notice::MemberJoined { .. } => 0,
        Notice::MemberLeft { .. } => 1,
        Notice::HostData { .. } => 2,
        Notice::GroupData { .. } => 3,
    }
}

fn client_datagram_variant(message: &ClientDatagram) -> u32 {
    match message {
        ClientDatagram::Relay { .. } => 0,
    }
}

fn server_datagram_variant(message: &ServerDatagram) -> u32 {
    match message {
        ServerDatagram::Deliver { .. } => 0,
    }
}

fn rooms_request_variant(message: &RoomsRequest) -> u32 {
    match message {
        RoomsRequest::Join { .. } => 0,
        RoomsRequest::Leave { .. } => 1,
        RoomsRequest::List => 2,
        RoomsRequest::ListAfter { .. } => 3,
    }
}

fn rooms_reply_variant(message: &RoomsReply) -> u32 {
    match message {
        RoomsReply::Joined { .. } => 0,
        RoomsReply::Refused { .. } => 1,
        RoomsReply::Left { .. } => 2,
        RoomsReply::Rooms(_) => 3,
    }
}

fn peer_to_peer_variant(message: &PeerToPeer) -> u32 {
    match message {
        PeerToPeer::Data { .. } => 0,
        PeerToPeer::Ack { .. } => 1,
        PeerToPeer::Hello { .. } => 2,
    }
}

fn pair_path_variant(path: PairPath) -> u32 {
    match path {
        PairPath::Relay => 0,
        PairPath::Direct => 1,
    }
}

fn priority_variant(priority: &Priority) -> u32 {
    match priority {
        Priority::High => 0,
        Priority::Medium => 1,
        Priority::Low => 2,
    }
}

fn lane_variant(lane: &Lane) -> u32 {
    match lane {
        Lane::Ordered { .. } => 0,
        Lane::Unordered => 1,
        Lane::Latest { .. } => 2,
    }
}

fn datagram_lane_variant(lane: &DatagramLane) -> u32 {
    match lane {
        DatagramLane::Plain => 0,
        DatagramLane::Sequenced { .. } => 1,
        DatagramLane::Ping { .. } => 2,
        DatagramLane::Pong { .. } => 3,
    }
}

/// Asserts that the cases cover variants `0..count`, and that each case's body starts with
/// its variant index (all indices here are below 128, so one varint byte).
fn assert_covers<T>(
    cases: &[(&str, T, Vec<u8>)],
    variant: fn(&T) -> u32,
    count: u32,
    prefix_len: usize,
) {
    let mut seen: Vec<u32> = cases.iter().map(|(_, m, _)| variant(m)).collect();
    for (name, message, bytes) in cases {
        assert_eq!(
            u32::from(bytes[prefix_len]),
            variant(message),
            "{name}: body does not start with the variant index"
        );
    }
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(
        seen,
        (0..count).collect::<Vec<_>>(),
        "a variant has no golden case"
    );
}

#[test]
fn client_to_server_frames() {
    let cases: Vec<(&str, ClientToServer, Vec<u8>)> = vec![
        (
            "Hello",
            ClientToServer::Hello(Hello {
                version: 1,
                login: Bytes::from_static(b"tok"),
            }),
            vec![0x00, 0x00, 0x00, 0x06, 0x00, 0x01, 0x03, b't', b'o', b'k'],
        ),
        (
            "Ack",
            ClientToServer::Ack { notices: u64::MAX },
            cat(&[&[0x00, 0x00, 0x00, 0x0b, 0x01], &U64_MAX]),
        ),
        (
            "Relay with group, server, an ordered lane and two dests",
            ClientToServer::Relay {
                group: Some(group()),
                to_server: true,
                lane: Lane::Ordered { channel: 200 },
                priority: Priority::High,
                dests: smallvec![
                    RelayDest {
                        pair: pair(),
                        seq: 1,
                    },
                    RelayDest {
                        pair: PairId::from_raw(7),
                        seq: 16384,
                    },
                ],
                payload: Bytes::from_static(b"hi"),
            },
            // 22 bytes: variant, group, to_server, lane, priority, two dests, payload.
            cat(&[
                &[0x00, 0x00, 0x00, 0x16, 0x02, 0x01],
                &GROUP,
                &[0x01],
                // Lane::Ordered, channel 200 as one raw byte (a varint would be c8 01).
                &[0x00, 0xc8],
                // Priority::High.
                &[0x00],
                &[0x02],
                &PAIR,
                &[0x01, 0x07, 0x80, 0x80, 0x01],
                &[0x02, b'h', b'i'],
            ]),
        ),
        (
            "Relay with nothing, unordered, default priority",
            ClientToServer::Relay {
                group: None,
                to_server: false,
                lane: Lane::Unordered,
                priority: Priority::default(),
                dests: RelayDests::new(),
                payload: Bytes::new(),
            },
            // Variant, None, false, Lane::Unordered, Priority::Medium, no dests, no payload.
            vec![
                0x00, 0x00, 0x00, 0x07, 0x02, 0x00, 0x00, 0x01, 0x01, 0x00, 0x00,
            ],
        ),
        (
            "Relay, latest value of key u64::MAX, low priority",
            ClientToServer::Relay {
                group: None,
                to_server: false,
                lane: Lane::Latest { key: u64::MAX },
                priority: Priority::Low,
                dests: smallvec![RelayDest {
                    pair: pair(),
                    seq: 2,
                }],
                payload: Bytes::from_static(b"p"),
            },
            // 21 bytes: variant, None, false, lane (2 + 10-byte key), Low, one dest, payload.
            cat(&[
                &[0x00, 0x00, 0x00, 0x15, 0x02, 0x00, 0x00],
                &[0x02],
                &U64_MAX,
                &[0x02],
                &[0x01],
                &PAIR,
                &[0x02],
                &[0x01, b'p'],
            ]),
        ),
        (
            "HostCandidates, IPv4 and IPv6",
            ClientToServer::HostCandidates {
                addrs: vec![v4_addr(), v6_addr()],
            },
            cat(&[&[0x00, 0x00, 0x00, 0x1c, 0x03, 0x02], &V4_ADDR, &V6_ADDR]),
        ),
        (
            "HostCandidates, none",
            ClientToServer::HostCandidates { addrs: Vec::new() },
            vec![0x00, 0x00, 0x00, 0x02, 0x03, 0x00],
        ),
        (
            "WantDirect",
            ClientToServer::WantDirect { pair: pair() },
            cat(&[&[0x00, 0x00, 0x00, 0x03, 0x04], &PAIR]),
        ),
        (
            "PunchReport, direct",
            ClientToServer::PunchReport {
                pair: pair(),
                attempt: 3,
                outcome: PunchOutcome::Direct { rtt_us: 25_000 },
            },
            // 25000 = 0x61a8 as a varint: a8 c3 01.
            cat(&[
                &[0x00, 0x00, 0x00, 0x08, 0x05],
                &PAIR,
                &[0x03, 0x00, 0xa8, 0xc3, 0x01],
            ]),
        ),
        (
            "PunchReport, declined",
            ClientToServer::PunchReport {
                pair: pair(),
                attempt: 128,
                outcome: PunchOutcome::Declined,
            },
            cat(&[&[0x00, 0x00, 0x00, 0x06, 0x05], &PAIR, &[0x80, 0x01, 0x03]]),
        ),
        (
            "PathReport, punched",
            ClientToServer::PathReport {
                pair: pair(),
                path: PairPath::Direct,
                reason: PathReason::Punched,
            },
            cat(&[&[0x00, 0x00, 0x00, 0x05, 0x06], &PAIR, &[0x01, 0x00]]),
        ),
        (
            "PathReport, back to relay",
            ClientToServer::PathReport {
                pair: pair(),
                path: PairPath::Relay,
                reason: PathReason::DirectTimedOut,
            },
            cat(&[&[0x00, 0x00, 0x00, 0x05, 0x06], &PAIR, &[0x00, 0x01]]),
        ),
        (
            "TimeRequest",
            ClientToServer::TimeRequest { token: 1_000_000 },
            // 1_000_000 = 0xf4240 as a varint: c0 84 3d.
            vec![0x00, 0x00, 0x00, 0x04, 0x07, 0xc0, 0x84, 0x3d],
        ),
        (
            "TimeRequest with u64::MAX",
            ClientToServer::TimeRequest { token: u64::MAX },
            cat(&[&[0x00, 0x00, 0x00, 0x0b, 0x07], &U64_MAX]),
        ),
        (
            "LinkReport, all measured",
            ClientToServer::LinkReport {
                pair: pair(),
                rtt_us: Some(25_000),
                last_rtt_us: Some(127),
                loss_permille: Some(1000),
            },
            // 25000 = 0x61a8: a8 c3 01; 127 is one byte; 1000 = 0x3e8: e8 07.
            cat(&[
                &[0x00, 0x00, 0x00, 0x0c, 0x08],
                &PAIR,
                &[0x01, 0xa8, 0xc3, 0x01],
                &[0x01, 0x7f],
                &[0x01, 0xe8, 0x07],
            ]),
        ),
        (
            "LinkReport, nothing measured",
            ClientToServer::LinkReport {
                pair: pair(),
                rtt_us: None,
                last_rtt_us: None,
                loss_permille: None,
            },
            cat(&[&[0x00, 0x00, 0x00, 0x06, 0x08], &PAIR, &[0x00, 0x00, 0x00]]),
        ),
        (
            "LinkReport, extremes",
            ClientToServer::LinkReport {
                pair: PairId::from_raw(0),
                rtt_us: None,
                last_rtt_us: Some(u32::MAX),
                loss_permille: Some(u16::MAX),
            },
            // u16::MAX = 0xffff as a varint: ff ff 03.
            cat(&[
                &[0x00, 0x00, 0x00, 0x0d, 0x08, 0x00, 0x00, 0x01],
                &U32_MAX,
                &[0x01, 0xff, 0xff, 0x03],
            ]),
        ),
        // Added in protocol 6; the variants before them encode as they did.
        (
            "Resume",
            ClientToServer::Resume(Resume {
                version: 6,
                host: host(),
                token: ResumeToken([0x11; 32]),
                received: 5,
            }),
            // Variant 9, version 6, host, the token's 32 bytes as they are, received 5.
            cat(&[
                &[0x00, 0x00, 0x00, 0x28, 0x09, 0x06],
                &HOST,
                &[0x11; 32],
                &[0x05],
            ]),
        ),
        (
            "Received",
            ClientToServer::Received { frames: 300 },
            vec![0x00, 0x00, 0x00, 0x03, 0x0a, 0xac, 0x02],
        ),
        (
            // Variant 11, then the datagram's own encoding as it is.
            "Datagram",
            ClientToServer::Datagram(ClientDatagram::Relay {
                group: None,
                to_server: true,
                lane: DatagramLane::Plain,
                server_seq: 0,
                dests: RelayDests::new(),
                payload: Bytes::from_static(b"x"),
            }),
            vec![
                0x00, 0x00, 0x00, 0x09, 0x0b, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, b'x',
            ],
        ),
    ];
    for (name, message, expected) in &cases {
        check_frame(name, message, expected);
    }
    assert_covers(&cases, client_to_server_variant, 12, 4);
}

#[test]
fn server_to_client_frames() {
    let cases: Vec<(&str, ServerToClient, Vec<u8>)> = vec![
        (
            "Welcome",
            ServerToClient::Welcome {
                version: 1,
                host_id: host(),
                app_data: Bytes::from_static(b"ok"),
                max_frame_len: DEFAULT_MAX_FRAME_LEN,
            },
            cat(&[
                &[0x00, 0x00, 0x00, 0x0d, 0x00, 0x01],
                &HOST,
                &[0x02, b'o', b'k'],
                // 0x110000 = 1 MiB + 64 KiB.
                &[0x80, 0x80, 0x44],
            ]),
        ),
        (
            "PeerUp",
            ServerToClient::PeerUp {
                peer: host(),
                pair: pair(),
                info: PeerInfo {
                    identity: fingerprint(),
                },
            },
            cat(&[
                &[0x00, 0x00, 0x00, 0x28, 0x01],
                &HOST,
                &PAIR,
                &[
                    0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c,
                    0x0d, 0x0e, 0x0f, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19,
                    0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f,
                ],
            ]),
        ),
        (
            "PeerDown",
            ServerToClient::PeerDown {
                peer: host(),
                pair: pair(),
            },
            cat(&[&[0x00, 0x00, 0x00, 0x08, 0x02], &HOST, &PAIR]),
        ),
        (
            "Notices, one join with data",
            ServerToClient::Notices(vec![Notice::MemberJoined {
                group: group(),
                member: HostId::SERVER,
                membership: 300,
                member_count: 200,
                join_message: Bytes::from_static(b"yo"),
                member_data: Bytes::from_static(b"d"),
                group_data: Some(Bytes::from_static(b"g")),
            }]),
            cat(&[
                // Variant 3, one notice, notice variant 0 (MemberJoined).
                &[0x00, 0x00, 0x00, 0x15, 0x03, 0x01, 0x00],
                &GROUP,
                // SERVER, membership 300, count 200.
                &[0x01, 0xac, 0x02, 0xc8, 0x01],
                // "yo", "d", Some("g").
                &[0x02, b'y', b'o', 0x01, b'd', 0x01, 0x01, b'g'],
            ]),
        ),
        (
            "Notices, a leave and both data changes",
            ServerToClient::Notices(vec![
                Notice::MemberLeft {
                    group: group(),
                    member: host(),
                    member_count: 0,
                },
                Notice::HostData {
                    host: host(),
                    data: Bytes::from_static(b"x"),
                },
                Notice::GroupData {
                    group: group(),
                    data: Bytes::new(),
                },
            ]),
            cat(&[
                &[0x00, 0x00, 0x00, 0x1d, 0x03, 0x03],
                &[0x01],
                &GROUP,
                &HOST,
                &[0x00],
                &[0x02],
                &HOST,
                &[0x01, b'x'],
                &[0x03],
                &GROUP,
                &[0x00],
            ]),
        ),
        (
            "Deliver, ordered",
            ServerToClient::Deliver {
                from: host(),
                group: Some(group()),
                lane: Lane::Ordered { channel: 0 },
                seq: 129,
                payload: Bytes::from_static(b"hi"),
            },
            cat(&[
                &[0x00, 0x00, 0x00, 0x13, 0x04],
                &HOST,
                &[0x01],
                &GROUP,
                // Lane::Ordered, channel 0.
                &[0x00, 0x00],
                &[0x81, 0x01, 0x02, b'h', b'i'],
            ]),
        ),
        (
            "Deliver, latest value of key 300, without group",
            ServerToClient::Deliver {
                from: host(),
                group: None,
                lane: Lane::Latest { key: 300 },
                seq: 1,
                payload: Bytes::new(),
            },
            cat(&[
                &[0x00, 0x00, 0x00, 0x0c, 0x04],
                &HOST,
                &[0x00],
                // Lane::Latest, key 300.
                &[0x02, 0xac, 0x02],
                &[0x01, 0x00],
            ]),
        ),
        (
            "Skipped, unordered",
            ServerToClient::Skipped {
                from: host(),
                lane: Lane::Unordered,
                seq: 16384,
            },
            cat(&[
                &[0x00, 0x00, 0x00, 0x0a, 0x05],
                &HOST,
                &[0x01],
                &[0x80, 0x80, 0x01],
            ]),
        ),
        (
            "FromServer, ordered",
            ServerToClient::FromServer {
                group: None,
                lane: Lane::Ordered { channel: 1 },
                seq: 1,
                payload: Bytes::from_static(b"srv"),
            },
            // Variant, None, Lane::Ordered channel 1, seq 1, payload.
            vec![
                0x00, 0x00, 0x00, 0x09, 0x06, 0x00, 0x00, 0x01, 0x01, 0x03, b's', b'r', b'v',
            ],
        ),
        (
            "FromServer in a group, latest value of key 0",
            ServerToClient::FromServer {
                group: Some(group()),
                lane: Lane::Latest { key: 0 },
                seq: 128,
                payload: Bytes::new(),
            },
            cat(&[
                &[0x00, 0x00, 0x00, 0x0c, 0x06, 0x01],
                &GROUP,
                &[0x02, 0x00],
                &[0x80, 0x01, 0x00],
            ]),
        ),
        (
            "Refused with pair",
            ServerToClient::Refused {
                pair: Some(pair()),
                group: None,
                reason: RefuseReason::DestNotInGroup,
            },
            cat(&[&[0x00, 0x00, 0x00, 0x06, 0x07, 0x01], &PAIR, &[0x00, 0x02]]),
        ),
        (
            "Refused with group",
            ServerToClient::Refused {
                pair: None,
                group: Some(group()),
                reason: RefuseReason::TooLargeForPath,
            },
            cat(&[&[0x00, 0x00, 0x00, 0x09, 0x07, 0x00, 0x01], &GROUP, &[0x05]]),
        ),
        (
            "PunchOrder, IPv4 and IPv6 candidates",
            ServerToClient::PunchOrder(PunchOrder {
                peer: host(),
                pair: pair(),
                attempt: 1,
                secret: [0x5a; 32],
                candidates: vec![v4_addr(), v6_addr()],
                start_in_ms: 150,
                controlling: true,
            }),
            cat(&[
                &[0x00, 0x00, 0x00, 0x47, 0x08],
                &HOST,
                &PAIR,
                &[0x01],
                &[0x5a; 32],
                &[0x02],
                &V4_ADDR,
                &V6_ADDR,
                &[0x96, 0x01, 0x01],
            ]),
        ),
        (
            "PunchOrder without candidates",
            ServerToClient::PunchOrder(PunchOrder {
                peer: HostId::SERVER,
                pair: PairId::from_raw(0),
                attempt: u32::MAX,
                secret: [0; 32],
                candidates: Vec::new(),
                start_in_ms: 0,
                controlling: false,
            }),
            cat(&[
                &[0x00, 0x00, 0x00, 0x2b, 0x08, 0x01, 0x00],
                &[0xff, 0xff, 0xff, 0xff, 0x0f],
                &[0x00; 32],
                &[0x00, 0x00, 0x00],
            ]),
        ),
        (
            "Time",
            ServerToClient::Time {
                token: 1_000_000,
                server_time_us: 1 << 32,
            },
            // 1_000_000: c0 84 3d; 2^32: four bytes of no bits, then bit 32 as 0x10.
            cat(&[
                &[0x00, 0x00, 0x00, 0x09, 0x09],
                &[0xc0, 0x84, 0x3d],
                &[0x80, 0x80, 0x80, 0x80, 0x10],
            ]),
        ),
        (
            "Time with u64::MAX",
            ServerToClient::Time {
                token: 0,
                server_time_us: u64::MAX,
            },
            cat(&[&[0x00, 0x00, 0x00, 0x0c, 0x09, 0x00], &U64_MAX]),
        ),
        // Added in protocol 4; the variants before it encode as they did.
        (
            "RefusedMany in a group",
            ServerToClient::RefusedMany {
                group: Some(group()),
                refused: vec![
                    (pair(), RefuseReason::DestNotInGroup),
                    (PairId::from_raw(1), RefuseReason::UnknownPair),
                ],
            },
            // Variant 10, Some(group), two entries: (pair 300, reason 2), (pair 1, reason 3).
            cat(&[
                &[0x00, 0x00, 0x00, 0x0d, 0x0a, 0x01],
                &GROUP,
                &[0x02],
                &PAIR,
                &[0x02, 0x01, 0x03],
            ]),
        ),
        (
            "RefusedMany, no group, empty",
            ServerToClient::RefusedMany {
                group: None,
                refused: Vec::new(),
            },
            vec![0x00, 0x00, 0x00, 0x03, 0x0a, 0x00, 0x00],
        ),
        // Added in protocol 6.
        (
            "ResumeToken",
            ServerToClient::ResumeToken {
                token: ResumeToken([0x22; 32]),
                window_ms: 30_000,
            },
            // 30,000 as a varint: b0 ea 01.
            cat(&[
                &[0x00, 0x00, 0x00, 0x24, 0x0b],
                &[0x22; 32],
                &[0xb0, 0xea, 0x01],
            ]),
        ),
        (
            "Resumed",
            ServerToClient::Resumed {
                received: 0,
                token: ResumeToken([0x33; 32]),
                window_ms: 0,
            },
            cat(&[&[0x00, 0x00, 0x00, 0x23, 0x0c, 0x00], &[0x33; 32], &[0x00]]),
        ),
        (
            "Received with u64::MAX",
            ServerToClient::Received { frames: u64::MAX },
            cat(&[&[0x00, 0x00, 0x00, 0x0b, 0x0d], &U64_MAX]),
        ),
        (
            // Variant 14, then the datagram's own encoding as it is.
            "Datagram",
            ServerToClient::Datagram(ServerDatagram::Deliver {
                from: HostId::SERVER,
                group: None,
                lane: DatagramLane::Plain,
                seq: 0,
                payload: Bytes::from_static(b"x"),
            }),
            vec![
                0x00, 0x00, 0x00, 0x08, 0x0e, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, b'x',
            ],
        ),
    ];
    for (name, message, expected) in &cases {
        check_frame(name, message, expected);
    }
    assert_covers(&cases, server_to_client_variant, 15, 4);
}

#[test]
fn frame_length_prefix_is_big_endian() {
    // A 307-byte body (variant, `None`, lane `Ordered` channel 0, seq 1, two-byte length
    // 300, payload) shows the byte order of the prefix: 0x0133.
    let payload = vec![0xab; 300];
    let message = ServerToClient::FromServer {
        group: None,
        lane: Lane::Ordered { channel: 0 },
        seq: 1,
        payload: Bytes::from(payload.clone()),
    };
    let expected = cat(&[
        &[0x00, 0x00, 0x01, 0x33, 0x06, 0x00, 0x00, 0x00, 0x01],
        &PAIR,
        &payload,
    ]);
    check_frame("FromServer with 300 bytes", &message, &expected);
}

#[test]
fn peer_to_peer_frames() {
    let cases: Vec<(&str, PeerToPeer, Vec<u8>)> = vec![
        (
            "Data, ordered",
            PeerToPeer::Data {
                group: Some(group()),
                memberships: Some(Memberships {
                    sender: 1,
                    receiver: 300,
                }),
                lane: Lane::Ordered { channel: 7 },
                seq: 1,
                payload: Bytes::from_static(b"hi"),
            },
            cat(&[
                &[0x00, 0x00, 0x00, 0x11, 0x00, 0x01],
                &GROUP,
                // Some(sender 1, receiver 300).
                &[0x01, 0x01, 0xac, 0x02],
                // Lane::Ordered, channel 7.
                &[0x00, 0x07],
                &[0x01, 0x02, b'h', b'i'],
            ]),
        ),
        (
            "Data without group, unordered",
            PeerToPeer::Data {
                group: None,
                memberships: None,
                lane: Lane::Unordered,
                seq: 0,
                payload: Bytes::new(),
            },
            vec![0x00, 0x00, 0x00, 0x06, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00],
        ),
        (
            "Data, latest value of key u64::MAX",
            PeerToPeer::Data {
                group: None,
                memberships: None,
                lane: Lane::Latest { key: u64::MAX },
                seq: 16384,
                payload: Bytes::from_static(b"x"),
            },
            cat(&[
                &[0x00, 0x00, 0x00, 0x13, 0x00, 0x00, 0x00],
                &[0x02],
                &U64_MAX,
                &[0x80, 0x80, 0x01],
                &[0x01, b'x'],
            ]),
        ),
        (
            "Ack of 300",
            PeerToPeer::Ack { received: 300 },
            cat(&[&[0x00, 0x00, 0x00, 0x03, 0x01], &PAIR]),
        ),
        (
            "Ack of u64::MAX",
            PeerToPeer::Ack { received: u64::MAX },
            vec![
                0x00, 0x00, 0x00, 0x0b, 0x01, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                0x01,
            ],
        ),
        (
            "Hello",
            PeerToPeer::Hello {
                pair: pair(),
                host: host(),
            },
            cat(&[&[0x00, 0x00, 0x00, 0x08, 0x02], &PAIR, &HOST]),
        ),
    ];
    for (name, message, expected) in &cases {
        check_frame(name, message, expected);
    }
    assert_covers(&cases, peer_to_peer_variant, 3, 4);
}

#[test]
fn client_datagrams() {
    let cases: Vec<(&str, ClientDatagram, Vec<u8>)> = vec![
        (
            "Relay with group, sequenced, to the server and two dests",
            ClientDatagram::Relay {
                group: Some(group()),
                to_server: true,
                lane: DatagramLane::Sequenced { channel: 2 },
                server_seq: 300,
                dests: smallvec![
                    RelayDest {
                        pair: pair(),
                        seq: 5,
                    },
                    RelayDest {
                        pair: PairId::from_raw(1),
                        seq: 128,
                    },
                ],
                payload: Bytes::from_static(b"ping"),
            },
            cat(&[
                &[0x00, 0x01],
                &GROUP,
                &[0x01],
                // DatagramLane::Sequenced, channel 2.
                &[0x01, 0x02],
                // server_seq 300.
                &[0xac, 0x02],
                &[0x02],
                &PAIR,
                &[0x05],
                &[0x01, 0x80, 0x01],
                &[0x04, b'p', b'i', b'n', b'g'],
            ]),
        ),
        (
            "Relay to the server only, plain",
            ClientDatagram::Relay {
                group: None,
                to_server: true,
                lane: DatagramLane::Plain,
                server_seq: 0,
                dests: RelayDests::new(),
                payload: Bytes::from_static(b"x"),
            },
            vec![0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, b'x'],
        ),
        (
            "Relay, plain, to one peer",
            ClientDatagram::Relay {
                group: None,
                to_server: false,
                lane: DatagramLane::Plain,
                server_seq: 0,
                dests: smallvec![RelayDest {
                    pair: pair(),
                    seq: 0,
                }],
                payload: Bytes::from_static(b"x"),
            },
            cat(&[
                &[0x00, 0x00, 0x00, 0x00, 0x00, 0x01],
                &PAIR,
                &[0x00, 0x01, b'x'],
            ]),
        ),
        (
            "Relay, ping 300",
            ClientDatagram::Relay {
                group: None,
                to_server: false,
                lane: DatagramLane::Ping { id: 300 },
                server_seq: 0,
                dests: smallvec![RelayDest {
                    pair: PairId::from_raw(7),
                    seq: 0,
                }],
                payload: Bytes::new(),
            },
            // DatagramLane::Ping with id 300 (ac 02), server_seq 0, one dest, empty payload.
            vec![
                0x00, 0x00, 0x00, 0x02, 0xac, 0x02, 0x00, 0x01, 0x07, 0x00, 0x00,
            ],
        ),
        (
            "Relay, pong u32::MAX",
            ClientDatagram::Relay {
                group: None,
                to_server: false,
                lane: DatagramLane::Pong { id: u32::MAX },
                server_seq: 0,
                dests: smallvec![RelayDest {
                    pair: PairId::from_raw(7),
                    seq: 0,
                }],
                payload: Bytes::new(),
            },
            cat(&[
                &[0x00, 0x00, 0x00],
                &[0x03],
                &U32_MAX,
                &[0x00],
                &[0x01, 0x07, 0x00, 0x00],
            ]),
        ),
    ];
    for (name, message, expected) in &cases {
        check_body(name, message, expected);
    }
    assert_covers(&cases, client_datagram_variant, 1, 0);
}

#[test]
fn server_datagrams() {
    let cases: Vec<(&str, ServerDatagram, Vec<u8>)> = vec![
        (
            "Deliver from a host in a group, sequenced",
            ServerDatagram::Deliver {
                from: host(),
                group: Some(group()),
                lane: DatagramLane::Sequenced { channel: 255 },
                seq: 129,
                payload: Bytes::from_static(b"hi"),
            },
            cat(&[
                &[0x00],
                &HOST,
                &[0x01],
                &GROUP,
                // DatagramLane::Sequenced, channel 255 as one raw byte.
                &[0x01, 0xff],
                &[0x81, 0x01],
                &[0x02, b'h', b'i'],
            ]),
        ),
        (
            "Deliver from the server, plain",
            ServerDatagram::Deliver {
                from: HostId::SERVER,
                group: None,
                lane: DatagramLane::Plain,
                seq: 0,
                payload: Bytes::from_static(b"x"),
            },
            vec![0x00, 0x01, 0x00, 0x00, 0x00, 0x01, b'x'],
        ),
        (
            "Deliver, ping 1",
            ServerDatagram::Deliver {
                from: host(),
                group: None,
                lane: DatagramLane::Ping { id: 1 },
                seq: 0,
                payload: Bytes::new(),
            },
            cat(&[&[0x00], &HOST, &[0x00, 0x02, 0x01, 0x00, 0x00]]),
        ),
        (
            "Deliver, pong 1",
            ServerDatagram::Deliver {
                from: host(),
                group: None,
                lane: DatagramLane::Pong { id: 1 },
                seq: 0,
                payload: Bytes::new(),
            },
            cat(&[&[0x00], &HOST, &[0x00, 0x03, 0x01, 0x00, 0x00]]),
        ),
    ];
    for (name, message, expected) in &cases {
        check_body(name, message, expected);
    }
    assert_covers(&cases, server_datagram_variant, 1, 0);
}

#[test]
fn server_datagram_worst_case_overhead() {
    // The most the server puts around a relayed payload: every number at its maximum, a
    // group, and the largest lanes (a ping or pong id at u32::MAX: six bytes; a sequenced
    // channel is two bytes at most).
    let payload = vec![0x5a; 16_384];
    let mut worst = 0;
    for (name, lane, lane_bytes) in [
        (
            "Ping",
            DatagramLane::Ping { id: u32::MAX },
            cat(&[&[0x02], &U32_MAX]),
        ),
        (
            "Pong",
            DatagramLane::Pong { id: u32::MAX },
            cat(&[&[0x03], &U32_MAX]),
        ),
        (
            "Sequenced",
            DatagramLane::Sequenced { channel: u8::MAX },
            vec![0x01, 0xff],
        ),
    ] {
        let header = cat(&[
            // Variant Deliver.
            &[0x00],
            // from.
            &U64_MAX,
            // Some(group).
            &[0x01],
            &U64_MAX,
            &lane_bytes,
            // seq.
            &U64_MAX,
            // Payload length 16384 = 0x4000: 80 80 01.
            &[0x80, 0x80, 0x01],
        ]);
        check_body(
            name,
            &ServerDatagram::Deliver {
                from: HostId::from_raw(u64::MAX),
                group: Some(GroupId::from_raw(u64::MAX)),
                lane,
                seq: u64::MAX,
                payload: Bytes::from(payload.clone()),
            },
            &cat(&[&header, &payload]),
        );
        // The length of any datagram (below 2^32 bytes) takes at most five varint bytes
        // instead of the three here.
        let overhead = header.len() - 3 + 5;
        assert!(
            overhead <= DATAGRAM_DELIVER_OVERHEAD,
            "{name}: {overhead} bytes of overhead"
        );
        worst = worst.max(overhead);
    }
    // The bound is tight (1 + 10 + 11 + 6 + 10 + 5), so clients give up no payload room.
    assert_eq!(worst, DATAGRAM_DELIVER_OVERHEAD);
}

// The parts below are pinned as bare bodies: they travel only inside the messages above.

#[test]
fn delivery_variants() {
    check_body("ReliableOrdered", &Delivery::ReliableOrdered, &[0x00]);
    check_body("Unreliable", &Delivery::Unreliable, &[0x01]);
    check_body("ReliableUnordered", &Delivery::ReliableUnordered, &[0x02]);
    check_body(
        "UnreliableSequenced",
        &Delivery::UnreliableSequenced,
        &[0x03],
    );
    check_body(
        "Latest with key 0",
        &Delivery::Latest { key: 0 },
        &[0x04, 0x00],
    );
    check_body(
        "Latest with key 300",
        &Delivery::Latest { key: 300 },
        &[0x04, 0xac, 0x02],
    );
    check_body(
        "Latest with key u64::MAX",
        &Delivery::Latest { key: u64::MAX },
        &cat(&[&[0x04], &U64_MAX]),
    );
    assert_variant_count::<Delivery>("Delivery", 5);
}

#[test]
fn priority_variants() {
    let cases: Vec<(&str, Priority, Vec<u8>)> = vec![
        ("High", Priority::High, vec![0x00]),
        ("Medium", Priority::Medium, vec![0x01]),
        ("Low", Priority::Low, vec![0x02]),
    ];
    for (name, priority, expected) in &cases {
        check_body(name, priority, expected);
    }
    assert_covers(&cases, priority_variant, 3, 0);
    assert_variant_count::<Priority>("Priority", 3);
    assert_eq!(Priority::default(), Priority::Medium);
}

#[test]
fn lane_variants() {
    let cases: Vec<(&str, Lane, Vec<u8>)> = vec![
        ("Ordered 0", Lane::Ordered { channel: 0 }, vec![0x00, 0x00]),
        // A `u8` is one raw byte: 128 and 255 would need two bytes as varints.
        (
            "Ordered 128",
            Lane::Ordered { channel: 128 },
            vec![0x00, 0x80],
        ),
        (
            "Ordered 255",
            Lane::Ordered { channel: 255 },
            vec![0x00, 0xff],
        ),
        ("Unordered", Lane::Unordered, vec![0x01]),
        ("Latest 0", Lane::Latest { key: 0 }, vec![0x02, 0x00]),
        ("Latest 127", Lane::Latest { key: 127 }, vec![0x02, 0x7f]),
        (
            "Latest 2^32",
            Lane::Latest { key: 1 << 32 },
            vec![0x02, 0x80, 0x80, 0x80, 0x80, 0x10],
        ),
        (
            "Latest u64::MAX",
            Lane::Latest { key: u64::MAX },
            cat(&[&[0x02], &U64_MAX]),
        ),
    ];
    for (name, lane, expected) in &cases {
        check_body(name, lane, expected);
    }
    assert_covers(&cases, lane_variant, 3, 0);
    assert_variant_count::<Lane>("Lane", 3);
}

#[test]
fn datagram_lane_variants() {
    let cases: Vec<(&str, DatagramLane, Vec<u8>)> = vec![
        ("Plain", DatagramLane::Plain, vec![0x00]),
        (
            "Sequenced 0",
            DatagramLane::Sequenced { channel: 0 },
            vec![0x01, 0x00],
        ),
        (
            "Sequenced 255",
            DatagramLane::Sequenced { channel: 255 },
            vec![0x01, 0xff],
        ),
        ("Ping 0", DatagramLane::Ping { id: 0 }, vec![0x02, 0x00]),
        (
            "Ping 16384",
            DatagramLane::Ping { id: 16384 },
            vec![0x02, 0x80, 0x80, 0x01],
        ),
        (
            "Ping u32::MAX",
            DatagramLane::Ping { id: u32::MAX },
            cat(&[&[0x02], &U32_MAX]),
        ),
        (
            "Pong 300",
            DatagramLane::Pong { id: 300 },
            vec![0x03, 0xac, 0x02],
        ),
        (
            "Pong u32::MAX",
            DatagramLane::Pong { id: u32::MAX },
            cat(&[&[0x03], &U32_MAX]),
        ),
    ];
    for (name, lane, expected) in &cases {
        check_body(name, lane, expected);
    }
    assert_covers(&cases, datagram_lane_variant, 4, 0);
    assert_variant_count::<DatagramLane>("DatagramLane", 4);
}

#[test]
fn path_variants() {
    check_body("Relay", &Path::Relay, &[0x00]);
    check_body("Direct", &Path::Direct, &[0x01]);
    check_body("Loopback", &Path::Loopback, &[0x02]);
    assert_variant_count::<Path>("Path", 3);
}

#[test]
fn refuse_reason_variants() {
    check_body("NoSharedGroup", &RefuseReason::NoSharedGroup, &[0x00]);
    check_body("SenderNotInGroup", &RefuseReason::SenderNotInGroup, &[0x01]);
    check_body("DestNotInGroup", &RefuseReason::DestNotInGroup, &[0x02]);
    check_body("UnknownPair", &RefuseReason::UnknownPair, &[0x03]);
    check_body("ServerNotMember", &RefuseReason::ServerNotMember, &[0x04]);
    check_body("TooLargeForPath", &RefuseReason::TooLargeForPath, &[0x05]);
    // Added in protocol 4.
    check_body(
        "TooManyDestinations",
        &RefuseReason::TooManyDestinations,
        &[0x06],
    );
    assert_variant_count::<RefuseReason>("RefuseReason", 7);
}

/// Asserts that the variant index `count` of `T` is unknown, so a variant added at the end
/// fails here until it gets a golden case (the enums are `#[non_exhaustive]`, so a test
/// outside the crate cannot match them exhaustively).
fn assert_variant_count<T: DeserializeOwned + Debug>(name: &str, count: u8) {
    let result = decode_body::<T>(&[count]);
    assert!(
        matches!(result, Err(FrameError::Malformed(_))),
        "{name}: variant {count} decoded as {result:?}; give it a golden case"
    );
}

#[test]
fn pair_path_variants() {
    let cases = [
        ("Relay", PairPath::Relay, [0x00]),
        ("Direct", PairPath::Direct, [0x01]),
    ];
    for (name, path, expected) in &cases {
        check_body(name, path, expected);
        assert_eq!(u32::from(expected[0]), pair_path_variant(*path), "{name}");
    }
    assert_variant_count::<PairPath>("PairPath", 2);
}

#[test]
fn punch_outcome_variants() {
    check_body(
        "Direct with 0 us",
        &PunchOutcome::Direct { rtt_us: 0 },
        &[0x00, 0x00],
    );
    check_body(
        "Direct with u32::MAX us",
        &PunchOutcome::Direct { rtt_us: u32::MAX },
        &[0x00, 0xff, 0xff, 0xff, 0xff, 0x0f],
    );
    check_body("NoResponse", &PunchOutcome::NoResponse, &[0x01]);
    check_body("HandshakeFailed", &PunchOutcome::HandshakeFailed, &[0x02]);
    check_body("Declined", &PunchOutcome::Declined, &[0x03]);
    assert_variant_count::<PunchOutcome>("PunchOutcome", 4);
}

#[test]
fn path_reason_variants() {
    check_body("Punched", &PathReason::Punched, &[0x00]);
    check_body("DirectTimedOut", &PathReason::DirectTimedOut, &[0x01]);
    check_body("DirectClosed", &PathReason::DirectClosed, &[0x02]);
    check_body("PairEnded", &PathReason::PairEnded, &[0x03]);
    assert_variant_count::<PathReason>("PathReason", 4);
}

#[test]
fn socket_addrs() {
    check_body("IPv4", &v4_addr(), &V4_ADDR);
    check_body("IPv6", &v6_addr(), &V6_ADDR);
    check_body(
        "IPv4 any, port 0",
        &"0.0.0.0:0".parse::<SocketAddr>().unwrap(),
        &[0x00, 0x00, 0x00, 0x00, 0x00, 0x00],
    );
    check_body(
        "IPv4-mapped IPv6 stays IPv6, port 65535",
        &"[::ffff:1.2.3.4]:65535".parse::<SocketAddr>().unwrap(),
        &[
            0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0x01,
            0x02, 0x03, 0x04, 0xff, 0xff, 0x03,
        ],
    );
    assert_variant_count::<SocketAddr>("SocketAddr", 2);

    // Flow info and scope id are dropped on the wire: a link-local address arrives without
    // its zone, which is the sender's to interpret anyway.
    let scoped = SocketAddr::V6(SocketAddrV6::new(
        "fe80::1".parse::<Ipv6Addr>().unwrap(),
        9,
        7,
        3,
    ));
    let bytes = datagram_to_bytes(&scoped).unwrap();
    assert_eq!(
        bytes.as_ref(),
        cat(&[&[0x01, 0xfe, 0x80], &[0x00; 13], &[0x01, 0x09],])
    );
    let decoded: SocketAddr = decode_body(&bytes).unwrap();
    assert_eq!(decoded, "[fe80::1]:9".parse::<SocketAddr>().unwrap());
}

#[test]
fn punch_order() {
    check_body(
        "PunchOrder",
        &PunchOrder {
            peer: host(),
            pair: pair(),
            attempt: 2,
            secret: core::array::from_fn(|i| 0xe0 + i as u8),
            candidates: vec![v6_addr()],
            start_in_ms: 1,
            controlling: false,
        },
        &cat(&[
            &HOST,
            &PAIR,
            &[0x02],
            &[
                0xe0, 0xe1, 0xe2, 0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xeb, 0xec, 0xed,
                0xee, 0xef, 0xf0, 0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa, 0xfb,
                0xfc, 0xfd, 0xfe, 0xff,
            ],
            &[0x01],
            &V6_ADDR,
            &[0x01, 0x00],
        ]),
    );
}

#[test]
fn peer_info() {
    check_body(
        "PeerInfo",
        &PeerInfo {
            identity: fingerprint(),
        },
        &[
            0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d,
            0x0e, 0x0f, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b,
            0x1c, 0x1d, 0x1e, 0x1f,
        ],
    );
}

#[test]
fn relay_dest() {
    check_body(
        "RelayDest",
        &RelayDest {
            pair: pair(),
            seq: 129,
        },
        &[0xac, 0x02, 0x81, 0x01],
    );
}

#[test]
fn hello() {
    check_body(
        "Hello",
        &Hello {
            version: 300,
            login: Bytes::from_static(b"ab"),
        },
        &[0xac, 0x02, 0x02, b'a', b'b'],
    );
    check_body(
        "Hello with u32::MAX",
        &Hello {
            version: u32::MAX,
            login: Bytes::new(),
        },
        &[0xff, 0xff, 0xff, 0xff, 0x0f, 0x00],
    );
}

// The rooms application's messages travel as the payloads of reliable messages to and from
// the server, so they are pinned as bare bodies.

#[test]
fn rooms_requests() {
    let cases: Vec<(&str, RoomsRequest, Vec<u8>)> = vec![
        (
            "Join with a password",
            RoomsRequest::Join {
                room: "lobby".into(),
                password: Some("pw".into()),
                name: "al".into(),
            },
            vec![
                0x00, 0x05, b'l', b'o', b'b', b'b', b'y', 0x01, 0x02, b'p', b'w', 0x02, b'a', b'l',
            ],
        ),
        (
            "Join without a password",
            RoomsRequest::Join {
                room: "r".into(),
                password: None,
                name: "n".into(),
            },
            vec![0x00, 0x01, b'r', 0x00, 0x01, b'n'],
        ),
        (
            "Leave",
            RoomsRequest::Leave { room: "ab".into() },
            vec![0x01, 0x02, b'a', b'b'],
        ),
        ("List", RoomsRequest::List, vec![0x02]),
        (
            "ListAfter",
            RoomsRequest::ListAfter { after: "ab".into() },
            vec![0x03, 0x02, b'a', b'b'],
        ),
    ];
    for (name, message, expected) in &cases {
        check_body(name, message, expected);
    }
    assert_covers(&cases, rooms_request_variant, 4, 0);
}

#[test]
fn rooms_replies() {
    let cases: Vec<(&str, RoomsReply, Vec<u8>)> = vec![
        (
            "Joined",
            RoomsReply::Joined {
                room: "r".into(),
                group: group(),
                members: vec![(host(), "al".into()), (HostId::from_raw(7), "b".into())],
            },
            cat(&[
                &[0x00, 0x01, b'r'],
                &GROUP,
                &[0x02],
                &HOST,
                &[0x02, b'a', b'l', 0x07, 0x01, b'b'],
            ]),
        ),
        (
            "Refused without a room",
            RoomsReply::Refused {
                room: String::new(),
                reason: "no".into(),
            },
            vec![0x01, 0x00, 0x02, b'n', b'o'],
        ),
        (
            "Left",
            RoomsReply::Left { room: "r".into() },
            vec![0x02, 0x01, b'r'],
        ),
        (
            "Rooms",
            RoomsReply::Rooms(vec![RoomSummary {
                name: "a".into(),
                members: 300,
                password: true,
            }]),
            vec![0x03, 0x01, 0x01, b'a', 0xac, 0x02, 0x01],
        ),
        ("Rooms, none", RoomsReply::Rooms(vec![]), vec![0x03, 0x00]),
    ];
    for (name, message, expected) in &cases {
        check_body(name, message, expected);
    }
    assert_covers(&cases, rooms_reply_variant, 4, 0);
}

#[test]
fn room_summary() {
    check_body(
        "RoomSummary",
        &RoomSummary {
            name: "ab".into(),
            members: 0,
            password: false,
        },
        &[0x02, b'a', b'b', 0x00, 0x00],
    );
}

#[test]
fn rooms_limits() {
    // Both sides validate against these; changing one is a protocol change.
    assert_eq!(MAX_ROOM_NAME_LEN, 64);
    assert_eq!(MAX_DISPLAY_NAME_LEN, 32);
    assert_eq!(MAX_PASSWORD_LEN, 64);
}

// Punch probes are laid out by hand (the table in `probe.rs`), big-endian, and end with a
// 16-byte MAC the caller computes. A fixed fake MAC stands in for the HMAC here.

/// The fake MAC every probe below carries.
const MAC: [u8; PROBE_MAC_LEN] = [0xaa; PROBE_MAC_LEN];

/// The fields shared by the probes below: kind byte, magic, pair, attempt, nonce and the
/// controlling byte, chosen so that byte order shows.
fn probe_header(kind: u8, from_controlling: bool) -> Vec<u8> {
    cat(&[
        &[kind],
        b"PGP1",
        &[0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08],
        &[0x0a, 0x0b, 0x0c, 0x0d],
        &[0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18],
        &[u8::from(from_controlling)],
    ])
}

fn probe(kind: ProbeKind, from_controlling: bool) -> Probe {
    Probe {
        kind,
        pair: PairId::from_raw(0x0102_0304_0506_0708),
        attempt: 0x0a0b_0c0d,
        nonce: 0x1112_1314_1516_1718,
        from_controlling,
    }
}

/// Checks that `probe` encodes as `signed` followed by [`MAC`], that the MAC function is
/// handed exactly `signed`, and that the datagram decodes back into the same three parts.
fn check_probe(name: &str, probe: &Probe, signed: &[u8]) {
    let mut seen = None;
    let encoded = probe.encode(|bytes| {
        seen = Some(bytes.to_vec());
        MAC
    });
    assert_eq!(seen.as_deref(), Some(signed), "{name}: MAC input changed");
    assert_eq!(probe.signed_bytes(), signed, "{name}: signed bytes changed");
    assert_eq!(encoded, cat(&[signed, &MAC]), "{name}: probe bytes changed");
    seed("Probe", name, &encoded);
    assert!(is_probe(&encoded), "{name}: taken for QUIC");

    let (decoded, decoded_signed, mac) =
        Probe::decode(&encoded).unwrap_or_else(|error| panic!("{name}: decoding failed: {error}"));
    assert_eq!(&decoded, probe, "{name}: decoded probe differs");
    assert_eq!(
        decoded_signed, signed,
        "{name}: decoded signed bytes differ"
    );
    assert_eq!(mac, MAC, "{name}: decoded MAC differs");
}

#[test]
fn probe_request() {
    let signed = probe_header(0x01, true);
    assert_eq!(signed.len(), 26);
    check_probe("Request", &probe(ProbeKind::Request, true), &signed);
}

#[test]
fn probe_response_ipv4() {
    let signed = cat(&[
        &probe_header(0x02, false),
        // Family 4, 203.0.113.7, port 40000 = 0x9c40.
        &[0x04, 0xcb, 0x00, 0x71, 0x07, 0x9c, 0x40],
    ]);
    assert_eq!(signed.len(), 33);
    check_probe(
        "Response, IPv4",
        &probe(
            ProbeKind::Response {
                observed: v4_addr(),
            },
            false,
        ),
        &signed,
    );
}

#[test]
fn probe_response_ipv6() {
    let signed = cat(&[
        &probe_header(0x02, true),
        // Family 6, 2001:db8::1, port 9.
        &[0x06, 0x20, 0x01, 0x0d, 0xb8],
        &[0x00; 11],
        &[0x01, 0x00, 0x09],
    ]);
    assert_eq!(signed.len(), 45);
    check_probe(
        "Response, IPv6",
        &probe(
            ProbeKind::Response {
                observed: v6_addr(),
            },
            true,
        ),
        &signed,
    );
}

#[test]
fn malformed_probes_are_refused() {
    let request = cat(&[&probe_header(0x01, false), &MAC]);
    let response = cat(&[
        &probe_header(0x02, false),
        &[0x04, 0xcb, 0x00, 0x71, 0x07, 0x9c, 0x40],
        &MAC,
    ]);
    let with = |base: &[u8], at: usize, value: u8| {
        let mut bytes = base.to_vec();
        bytes[at] = value;
        bytes
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("one byte short", request[..request.len() - 1].to_vec()),
        ("one byte over", cat(&[&request, &[0x00]])),
        ("unknown kind", with(&request, 0, 0x03)),
        ("kind 0", with(&request, 0, 0x00)),
        ("wrong magic", with(&request, 4, b'2')),
        ("controlling byte 2", with(&request, 25, 0x02)),
        ("request with an address", with(&response, 0, 0x01)),
        ("response without an address", with(&request, 0, 0x02)),
        ("unknown address family", with(&response, 26, 0x05)),
        ("IPv6 family with IPv4 length", with(&response, 26, 0x06)),
        (
            "IPv4 address cut short",
            cat(&[&response[..response.len() - PROBE_MAC_LEN - 1], &MAC]),
        ),
    ];
    for (name, bytes) in cases {
        assert_eq!(Probe::decode(&bytes), Err(MalformedProbe), "{name}");
    }
}

#[test]
fn probes_and_quic_are_told_apart_by_the_first_byte() {
    // Probe kinds, and every first byte without the QUIC fixed bit (0x40) or long-header
    // bit (0x80).
    for first in 0x00..=0x3f {
        assert!(is_probe(&[first]), "{first:#04x}");
    }
    for first in 0x40..=0xff {
        assert!(!is_probe(&[first, 0x01, 0x02]), "{first:#04x}");
    }
    assert!(!is_probe(&[]));
}

#[test]
fn notice_variants() {
    let cases = [
        Notice::MemberJoined {
            group: group(),
            member: host(),
            membership: 1,
            member_count: 1,
            join_message: Bytes::new(),
            member_data: Bytes::new(),
            group_data: None,
        },
        Notice::MemberLeft {
            group: group(),
            member: host(),
            member_count: 0,
        },
        Notice::HostData {
            host: host(),
            data: Bytes::new(),
        },
        Notice::GroupData {
            group: group(),
            data: Bytes::new(),
        },
    ];
    for (index, notice) in cases.iter().enumerate() {
        let body = postcard::to_allocvec(notice).unwrap();
        assert_eq!(u32::from(body[0]), notice_variant(notice));
        assert_eq!(usize::from(body[0]), index);
    }
    assert_variant_count::<Notice>("Notice", 4);
}
