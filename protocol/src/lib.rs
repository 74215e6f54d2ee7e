//! The wire protocol of peergroup: everything the server and clients must agree on, once.
//!
//! No IO and no async runtime live here, only data and pure functions, so both sides and
//! every test share one definition of the bytes.
//!
//! # Layout
//! - [`ids`]: [`HostId`], [`GroupId`], [`PairId`] (generational `u64`s) and [`Fingerprint`].
//! - [`messages`]: one enum per direction and carrier ([`ClientToServer`], [`ServerToClient`],
//!   [`ClientDatagram`], [`ServerDatagram`], [`PeerToPeer`]).
//! - [`lanes`]: [`SendOptions`] (mode, channel, priority) and the per-lane sequence
//!   counters.
//! - [`frame`]: `u32` length prefix plus postcard body, checked before allocation.
//! - [`close`]: [`CloseCode`], one per wire error.
//! - [`probe`]: the punch probe packet, told apart from QUIC by its first byte.
//! - [`schedule`]: the send queue both sides use: notices first, then messages by
//!   priority (deficit round robin), with latest-value replacement.
//! - [`typed`]: applications' own serde message types, encoded with postcard.
//! - [`zero_copy`]: decoders for the hot path that share a message's payload with the
//!   received buffer instead of copying it; [`hand_encode`], their counterpart: encoders
//!   for the same messages that write postcard's bytes without serde.
//! - [`resume`]: session resume: the token, and the frames a side keeps until the other
//!   confirms them.
//! - [`rooms`]: the requests and replies of the rooms application in `peergroup-server`.
//!
//! # Wire rules
//! - ALPN [`ALPN`] (`peergroup/1`) in the TLS handshake, then [`PROTOCOL_VERSION`] in the
//!   client's [`Hello`]; a mismatch closes with [`CloseCode::VersionMismatch`].
//! - Reliable traffic: length-prefixed frames on QUIC streams, in order on each. A client
//!   has a main stream (bidirectional: its hello and relay uploads, and everything the
//!   server sends it) and a control stream (unidirectional: its acks and reports), so its
//!   acks never wait behind its messages; see [`ClientStream`].
//!   Unreliable traffic: one message per QUIC datagram (RFC 9221).
//! - Decoding never panics; errors are typed and map to close codes.

pub mod budget;
pub mod close;
pub mod frame;
mod hand_decode;
pub mod hand_encode;
pub mod ids;
pub mod lanes;
pub mod messages;
pub mod probe;
pub mod resume;
pub mod rooms;
pub mod schedule;
pub mod typed;
pub mod zero_copy;

pub use close::{escape_text, CloseCode, Escaped};
pub use frame::{
    body_len, datagram_to_bytes, decode_body, encode_frame, frame_to_bytes, peek_hello_version,
    FrameDecoder, FrameError, DEFAULT_MAX_FRAME_LEN, DEFAULT_MAX_MESSAGE_LEN, FRAME_HEADROOM,
    LENGTH_PREFIX_LEN,
};
pub use hand_encode::{
    encode_client_datagram, encode_client_frame, encode_peer_frame, encode_server_datagram,
};
pub use ids::{Fingerprint, GroupId, HostId, PairId, ParseFingerprintError, ParseIdError};
pub use lanes::{Carrier, LaneCounters, SendOptions, DEFAULT_CHANNEL};
pub use messages::{
    ClientDatagram, ClientStream, ClientToServer, DatagramLane, Delivery, Hello, Lane, Memberships,
    Notice, PairPath, Path, PathReason, PeerInfo, PeerToPeer, Priority, PunchOrder, PunchOutcome,
    RefuseReason, RelayDest, RelayDests, Resume, ServerDatagram, ServerToClient, MAX_RELAY_DESTS,
};
pub use probe::{is_probe, MalformedProbe, Probe, ProbeKind, PROBE_MAC_LEN};
pub use resume::{ReplayGap, ResumeToken, Unconfirmed};
pub use zero_copy::{
    decode_client_datagram, decode_client_frame, decode_peer_frame, decode_server_datagram,
    decode_server_frame, DeliverFrame,
};

/// The TLS ALPN token of this protocol (RFC 7301).
pub const ALPN: &[u8] = b"peergroup/1";

/// The ALPN token of direct connections between peers.
pub const PEER_ALPN: &[u8] = b"peergroup-p2p/1";

/// The protocol version checked at connect.
pub const PROTOCOL_VERSION: u32 = 6;

/// Bytes the server adds to an unreliable payload when it relays it (variant, sender,
/// group, lane, number and length), at most. A client subtracts this from the server
/// connection's datagram size before it accepts an unreliable send.
pub const DATAGRAM_DELIVER_OVERHEAD: usize = 1 + 10 + 11 + 6 + 10 + 5;
