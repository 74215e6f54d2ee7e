//! Every message on the wire, one enum per direction and carrier.
//!
//! Variant order is part of the wire format (postcard encodes the variant index), so new
//! variants go at the end and the golden-byte tests in `tests/golden.rs` pin the rest.

use crate::ids::{Fingerprint, GroupId, HostId, PairId};
use crate::resume::ResumeToken;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use std::net::SocketAddr;

/// How a message is delivered. Chosen per send; each mode keeps its guarantee across path
/// switches (relay to direct and back). The README's "Delivery modes" section says when a
/// game should use which.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Delivery {
    /// Exactly once, in order within its channel, for each (sender, receiver) pair. Carried
    /// on QUIC streams; a message waits for every earlier one of its channel.
    ReliableOrdered,
    /// At most once, in any order, carried in QUIC datagrams (RFC 9221). A payload larger
    /// than the path's datagram size is refused with an error, never silently dropped.
    Unreliable,
    /// Exactly once, in any order: each message is handed over as soon as it arrives,
    /// without waiting for earlier ones (no head-of-line blocking between messages).
    ReliableUnordered,
    /// At most once, never older than one already delivered on its channel: a message that
    /// arrives after a newer one of the same (pair, channel) is dropped. ENet's, laminar's
    /// and Godot's "unreliable ordered". Carried in datagrams.
    UnreliableSequenced,
    /// Reliable latest value per key: while a message waits in a send queue (the sender's,
    /// or the server's for a slow receiver), a newer one with the same key replaces it in
    /// place; the receiver never gets an older value after a newer one of the same key, and
    /// the last value sent for a key always arrives. ProudNet's unique-id send, for
    /// positions and other state.
    Latest {
        /// Names the value being updated, e.g. an entity id. Chosen by the application.
        key: u64,
    },
}

impl Delivery {
    /// Whether the mode is carried in datagrams (no retransmission).
    pub fn is_unreliable(self) -> bool {
        matches!(self, Delivery::Unreliable | Delivery::UnreliableSequenced)
    }
}

/// How urgently a message should leave, relative to other queued messages. Chosen per send.
///
/// Queues serve the three priorities by deficit round robin over bytes with weights 4:2:1
/// (see [`crate::schedule`]): when all are backlogged, High gets 4/7 of the bandwidth and
/// Low still 1/7, so none starves. Ordering within a channel beats priority: a High
/// message of a channel still waits for that channel's earlier messages at the receiver.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub enum Priority {
    /// Movement and other urgent traffic.
    High,
    /// The default.
    #[default]
    Medium,
    /// Bulk traffic such as chat history or asset chunks.
    Low,
}

/// The sequence space of a reliable message within its pair, and how the receiver treats
/// it. The sender numbers each space separately, from 1; both paths share the numbers, so
/// the receiver merges the relay and the direct path and drops what it already has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Lane {
    /// [`Delivery::ReliableOrdered`]: delivered in order within the channel.
    Ordered {
        /// The channel; channels are independent ordered streams.
        channel: u8,
    },
    /// [`Delivery::ReliableUnordered`]: delivered on arrival; the number only removes
    /// duplicates.
    Unordered,
    /// [`Delivery::Latest`]: delivered unless a newer message with the same key was.
    Latest {
        /// The application's key.
        key: u64,
    },
}

/// The sequence space of an unreliable message within its pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DatagramLane {
    /// [`Delivery::Unreliable`]: any order; the number is 0.
    Plain,
    /// [`Delivery::UnreliableSequenced`]: numbered per (pair, channel) from 1; older than
    /// the newest delivered is dropped.
    Sequenced {
        /// The channel.
        channel: u8,
    },
    /// An RTT probe to a peer (or relayed through the server); the peer answers with
    /// [`DatagramLane::Pong`] and the same `id`. The payload is empty.
    Ping {
        /// The ping's id.
        id: u32,
    },
    /// The answer to [`DatagramLane::Ping`].
    Pong {
        /// The ping's id.
        id: u32,
    },
}

/// Which path carried a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Path {
    /// Through the server's relay.
    Relay,
    /// Over a direct QUIC connection between the two peers.
    Direct,
    /// Delivered to the sender itself (a group send that asked for loopback).
    Loopback,
}

/// What the server tells a host about a peer it shares a group with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// SHA-256 of the peer's TLS identity certificate, as the server saw it during the
    /// peer's handshake. A direct connection to the peer must present this certificate.
    pub identity: Fingerprint,
}

/// One membership notice. Joins and leaves are acknowledged (through
/// [`ClientToServer::Ack`]) so the server application learns when every member has been
/// told (ProudNet's join-ack completion, extended to leaves).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Notice {
    /// `member` joined `group`.
    MemberJoined {
        /// The group.
        group: GroupId,
        /// The member that joined (possibly the receiver itself, or [`HostId::SERVER`]).
        member: HostId,
        /// The member's membership number in the group: every join into a group gets a new
        /// one (increasing, from 1; 0 for [`HostId::SERVER`]), and every notice about the
        /// same membership carries the same number. Direct messages name the memberships
        /// they were sent under ([`Memberships`]).
        membership: u32,
        /// Members after the join.
        member_count: u32,
        /// The application's message for this join (the same on every notice of one join).
        join_message: Bytes,
        /// `member`'s host data, as the server application set it.
        member_data: Bytes,
        /// The group's data: on the receiver's own join notice only (`None` elsewhere).
        group_data: Option<Bytes>,
    },
    /// `member` left `group`.
    MemberLeft {
        /// The group.
        group: GroupId,
        /// The member that left (possibly the receiver itself).
        member: HostId,
        /// Members after the leave.
        member_count: u32,
    },
    /// The host data of `host` (the receiver itself, or a host it shares a group with)
    /// changed.
    HostData {
        /// The host.
        host: HostId,
        /// Its new data.
        data: Bytes,
    },
    /// The data of `group`, which the receiver is a member of, changed.
    GroupData {
        /// The group.
        group: GroupId,
        /// Its new data.
        data: Bytes,
    },
}

/// The memberships a direct message to a group was sent under: the membership numbers
/// ([`Notice::MemberJoined`]'s `membership`) of its sender and of its receiver in the group,
/// as the sender knew them. A direct path does not pass the server, so nothing orders it
/// against the membership notices; with these the receiver delivers the message only under
/// those same memberships: it waits for a join notice still on its way, and drops a message
/// sent under a membership that has ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Memberships {
    /// The sender's membership number.
    pub sender: u32,
    /// The receiver's membership number.
    pub receiver: u32,
}

/// Destinations one relay upload ([`ClientToServer::Relay`], [`ClientDatagram::Relay`])
/// may name at most: 4,096. The server refuses a larger upload whole, with one
/// [`RefuseReason::TooManyDestinations`], before looking at any destination; clients split
/// longer destination lists into several uploads.
pub const MAX_RELAY_DESTS: usize = 4_096;

/// A relay upload's destinations, in the order the sender listed them: inline for one
/// (a message to one peer, the usual case, costs no allocation to build or to decode),
/// on the heap for more. On the wire a sequence like any other (a length, then the
/// items), so it reads and writes as a `Vec<RelayDest>` would; build one from a `Vec`
/// with `.into()`.
pub type RelayDests = SmallVec<[RelayDest; 1]>;

/// One destination of a reliable relay upload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayDest {
    /// The pair between the sender and this destination.
    pub pair: PairId,
    /// The sender's sequence number for this pair, starting at 1 when the pair starts.
    /// The direct path continues the same sequence, so the receiver can merge both paths.
    pub seq: u64,
}

/// The first frame a client sends on its main stream.
///
/// `version` comes first so that any later version's hello can still be read far enough to
/// report a mismatch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// [`crate::PROTOCOL_VERSION`] of the client.
    pub version: u32,
    /// Opaque login payload for the server application's auth hook.
    pub login: Bytes,
}

/// Which of its two streams a client sends a frame on.
///
/// A client opens its main stream (bidirectional) to log in, and its control stream
/// (unidirectional, client to server) once welcomed. The server stops reading the main
/// stream while receivers of its messages drain (back-pressure), and keeps reading the
/// control stream all the while: so acks and reports never wait behind queued messages,
/// as they would on one stream (QUIC's streams are independent; RFC 9000, section 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientStream {
    /// The bidirectional stream: the hello, then reliable relay uploads.
    Main,
    /// The unidirectional stream: acks, reports and requests.
    Control,
}

/// Frames a client sends to the server: [`ClientToServer::Hello`] and
/// [`ClientToServer::Relay`] on its main stream, the others on its control stream (see
/// [`ClientStream`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientToServer {
    /// First frame, exactly once.
    Hello(Hello),
    /// Acknowledges membership notices, cumulatively: the client has taken in the first
    /// `notices` entries of every [`ServerToClient::Notices`] frame on this connection
    /// (each [`Notice`] counts one). One ack covers any number of notices, so a client acks
    /// a whole batch, or everything it read in one go, with one frame.
    Ack {
        /// Notices taken in since the connection started.
        notices: u64,
    },
    /// A reliable message to relay.
    Relay {
        /// The group the sender addressed, if any; every destination must be in it.
        group: Option<GroupId>,
        /// Whether the server application is a destination too.
        to_server: bool,
        /// The sequence space of the `seq`s in `dests`.
        lane: Lane,
        /// Where the message goes in each receiver's queue at the server.
        priority: Priority,
        /// The peers to deliver to, each with its pair sequence number.
        dests: RelayDests,
        /// The application payload.
        payload: Bytes,
    },
    /// The client's host candidates: its interface addresses on the port of the socket it
    /// shares between the server connection, peers and probes. Sent after the welcome and
    /// whenever they change.
    HostCandidates {
        /// The addresses, IPv4 and IPv6.
        addrs: Vec<SocketAddr>,
    },
    /// Just-in-time mode: the first user message went to this pair's peer, so the pair
    /// should punch now.
    WantDirect {
        /// The pair.
        pair: PairId,
    },
    /// How a punch order ended on this side.
    PunchReport {
        /// The pair.
        pair: PairId,
        /// The order's attempt number.
        attempt: u32,
        /// What happened.
        outcome: PunchOutcome,
    },
    /// The pair's path changed on this side.
    PathReport {
        /// The pair.
        pair: PairId,
        /// The path now in use.
        path: PairPath,
        /// Why it changed.
        reason: PathReason,
    },
    /// Asks for the server's clock; answered with [`ServerToClient::Time`] at once.
    TimeRequest {
        /// Echoed in the answer (the client's send time, in its own microseconds).
        token: u64,
    },
    /// What this client measures of a peer, for the server's pair statistics. Sent every
    /// few seconds per peer.
    LinkReport {
        /// The pair.
        pair: PairId,
        /// Smoothed RTT to the peer on the pair's current path, microseconds.
        rtt_us: Option<u32>,
        /// The last RTT sample, microseconds.
        last_rtt_us: Option<u32>,
        /// Pings lost of the last 32, per mille.
        loss_permille: Option<u16>,
    },
    /// Instead of [`ClientToServer::Hello`], as the first frame of a new connection: come
    /// back as `host` after the previous connection was lost (see [`crate::resume`]).
    /// Added in protocol 6.
    Resume(Resume),
    /// The client has read the first `frames` frames the server sent on its main stream
    /// since login (the welcome counts one; a [`ServerToClient::Resumed`] does not), so
    /// the server may forget them. Cumulative, sent at most every
    /// [`crate::resume::CONFIRM_DELAY`] or [`crate::resume::CONFIRM_EVERY`] frames.
    /// Added in protocol 6.
    Received {
        /// Frames read from the server's main stream since login.
        frames: u64,
    },
    /// An unreliable relay upload as a frame, on a WebSocket (which has no datagrams;
    /// issue 14). The server refuses it on QUIC. Its guarantees stay a datagram's: the
    /// client drops it rather than queue it behind a backlog.
    Datagram(ClientDatagram),
}

/// The first frame of a connection that resumes a session: [`ClientToServer::Resume`].
///
/// `version` comes first, as in [`Hello`], so a server of another version can still read
/// it far enough to report a mismatch.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resume {
    /// [`crate::PROTOCOL_VERSION`] of the client.
    pub version: u32,
    /// The host the client was.
    pub host: HostId,
    /// The token of the last [`ServerToClient::ResumeToken`] or
    /// [`ServerToClient::Resumed`]: single use.
    pub token: ResumeToken,
    /// Frames the client has read from the server's main stream since login: the server
    /// sends the rest again, in order, before anything new.
    pub received: u64,
}

impl std::fmt::Debug for Resume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resume")
            .field("version", &self.version)
            .field("host", &self.host)
            .field("received", &self.received)
            .finish_non_exhaustive()
    }
}

impl ClientStream {
    /// How errors name the stream ("main stream", "control stream").
    pub fn name(self) -> &'static str {
        match self {
            ClientStream::Main => "main stream",
            ClientStream::Control => "control stream",
        }
    }
}

impl ClientToServer {
    /// How errors name the frame ("an ack", "a relay upload", ...).
    pub fn name(&self) -> &'static str {
        match self {
            ClientToServer::Hello(_) => "a hello",
            ClientToServer::Ack { .. } => "an ack",
            ClientToServer::Relay { .. } => "a relay upload",
            ClientToServer::HostCandidates { .. } => "host candidates",
            ClientToServer::WantDirect { .. } => "a direct-path request",
            ClientToServer::PunchReport { .. } => "a punch report",
            ClientToServer::PathReport { .. } => "a path report",
            ClientToServer::TimeRequest { .. } => "a clock request",
            ClientToServer::LinkReport { .. } => "a link report",
            ClientToServer::Resume(_) => "a resume",
            ClientToServer::Received { .. } => "a receipt",
            ClientToServer::Datagram(_) => "a datagram frame",
        }
    }

    /// The stream this frame travels on; the server closes a connection that sends it on
    /// the other one with [`crate::CloseCode::ProtocolViolation`].
    pub fn stream(&self) -> ClientStream {
        match self {
            ClientToServer::Hello(_) | ClientToServer::Resume(_) | ClientToServer::Relay { .. } => {
                ClientStream::Main
            }
            ClientToServer::Ack { .. }
            | ClientToServer::HostCandidates { .. }
            | ClientToServer::WantDirect { .. }
            | ClientToServer::PunchReport { .. }
            | ClientToServer::PathReport { .. }
            | ClientToServer::TimeRequest { .. }
            | ClientToServer::LinkReport { .. }
            | ClientToServer::Received { .. }
            | ClientToServer::Datagram(_) => ClientStream::Control,
        }
    }
}

/// The path a pair's traffic uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PairPath {
    /// Through the server.
    Relay,
    /// Over a direct QUIC connection.
    Direct,
}

/// How a punch attempt ended on one side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum PunchOutcome {
    /// A candidate pair validated and the direct QUIC connection is up.
    Direct {
        /// Smoothed RTT of the direct path, microseconds.
        rtt_us: u32,
    },
    /// No candidate pair validated within the punch window.
    NoResponse,
    /// Probes got through but the QUIC handshake failed (for example a wrong identity).
    HandshakeFailed,
    /// This side would not punch (relay-only, or at its direct-peer limit).
    Declined,
}

/// Why a pair's path changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum PathReason {
    /// Hole punching succeeded.
    Punched,
    /// The direct path stopped answering for the path timeout.
    DirectTimedOut,
    /// The peer closed the direct connection.
    DirectClosed,
    /// The pair ended.
    PairEnded,
}

/// An order to punch towards a peer, from the server (the referee). Its `Debug` output
/// leaves the secret out, so logging an order never leaks it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PunchOrder {
    /// The other host.
    pub peer: HostId,
    /// The pair.
    pub pair: PairId,
    /// Counts the orders for this pair from 1; probes carry it.
    pub attempt: u32,
    /// A fresh secret for this attempt, known to the two hosts and the server only: it keys
    /// the probes' MAC.
    pub secret: [u8; 32],
    /// The peer's candidates: server-reflexive first, then host candidates.
    pub candidates: Vec<SocketAddr>,
    /// Wait this long before the first probe, so both sides' first probes leave together
    /// (the server times it from both RTTs, as libp2p's DCUtR does), milliseconds.
    pub start_in_ms: u32,
    /// Whether this side opens the QUIC connection once a candidate pair validates.
    pub controlling: bool,
}

impl std::fmt::Debug for PunchOrder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PunchOrder")
            .field("peer", &self.peer)
            .field("pair", &self.pair)
            .field("attempt", &self.attempt)
            .field("secret", &"<redacted>")
            .field("candidates", &self.candidates)
            .field("start_in_ms", &self.start_in_ms)
            .field("controlling", &self.controlling)
            .finish()
    }
}

/// Frames the server sends to a client on the client's main stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerToClient {
    /// The login was accepted.
    Welcome {
        /// [`crate::PROTOCOL_VERSION`] of the server.
        version: u32,
        /// The client's own id.
        host_id: HostId,
        /// Data the auth hook attached to the login (empty if none).
        app_data: Bytes,
        /// The largest frame body the server accepts, in bytes.
        max_frame_len: u32,
    },
    /// A pair with `peer` started: the two hosts now share a group. Sent before the first
    /// notice or message that involves the peer. The sequence numbers of the pair start at 1.
    PeerUp {
        /// The other host.
        peer: HostId,
        /// The pair's id, used to address relay uploads to the peer.
        pair: PairId,
        /// What the server vouches for about the peer.
        info: PeerInfo,
    },
    /// The pair with `peer` ended: the hosts shared no group for the linger time, or the peer
    /// disconnected.
    PeerDown {
        /// The other host.
        peer: HostId,
        /// The pair that ended.
        pair: PairId,
    },
    /// Membership notices, in the order they happened: everything the server owes this
    /// client from one operation (or one batch of them) in one frame. Each entry counts one
    /// towards [`ClientToServer::Ack`].
    Notices(Vec<Notice>),
    /// A relayed reliable message. The server writes `from` itself.
    Deliver {
        /// The sender.
        from: HostId,
        /// The group the sender addressed, if any.
        group: Option<GroupId>,
        /// The sequence space of `seq`.
        lane: Lane,
        /// The sender's sequence number for this pair and lane.
        seq: u64,
        /// The application payload.
        payload: Bytes,
    },
    /// The server refused to relay the sender's message with this sequence number to the
    /// receiver; the receiver's sequence moves past it. Sent only within a live pair, so the
    /// receiver never waits for a message that will not come.
    Skipped {
        /// The sender.
        from: HostId,
        /// The sequence space of `seq`.
        lane: Lane,
        /// The sequence number that will not be delivered.
        seq: u64,
    },
    /// A reliable message from the server application.
    FromServer {
        /// The group it was addressed to, if any.
        group: Option<GroupId>,
        /// The sequence space of `seq`.
        lane: Lane,
        /// The server's sequence number for this client and lane, from 1.
        seq: u64,
        /// The application payload.
        payload: Bytes,
    },
    /// The server refused to relay one of this client's messages.
    Refused {
        /// The destination pair, or `None` when the refusal concerns the server or the
        /// whole message.
        pair: Option<PairId>,
        /// The group the message addressed, if any.
        group: Option<GroupId>,
        /// Why.
        reason: RefuseReason,
    },
    /// Punch towards a peer.
    PunchOrder(PunchOrder),
    /// The answer to [`ClientToServer::TimeRequest`].
    Time {
        /// The request's token.
        token: u64,
        /// The server's clock: microseconds since the server started (monotonic).
        server_time_us: u64,
    },
    /// The server refused to relay several destinations of one of this client's uploads:
    /// one frame per upload, however many it refused (one refused destination comes as
    /// [`ServerToClient::Refused`]). Added in protocol 4.
    RefusedMany {
        /// The group the message addressed, if any.
        group: Option<GroupId>,
        /// Each refused destination pair (at most [`MAX_RELAY_DESTS`]), with why.
        refused: Vec<(PairId, RefuseReason)>,
    },
    /// The server keeps this host for `window_ms` after its connection is lost, and
    /// `token` brings it back ([`ClientToServer::Resume`]). Sent right after the welcome
    /// when the server allows resuming (never otherwise). Added in protocol 6.
    ResumeToken {
        /// Single use; the server binds it to the client's identity.
        token: ResumeToken,
        /// How long the server keeps the host after a loss, milliseconds.
        window_ms: u32,
    },
    /// The answer to [`ClientToServer::Resume`], the first frame on the new connection:
    /// the session goes on. The frames the client had not read follow, then new ones.
    /// Added in protocol 6.
    Resumed {
        /// Frames the server has read from the client's main stream since login: the
        /// client sends the rest again, in order, before anything new.
        received: u64,
        /// The token for the next resume (the one presented is spent).
        token: ResumeToken,
        /// As in [`ServerToClient::ResumeToken`], milliseconds.
        window_ms: u32,
    },
    /// The server has read the first `frames` frames of the client's main stream since
    /// login (the hello does not count), so the client may forget them. Cumulative, sent
    /// at most every [`crate::resume::CONFIRM_DELAY`] or [`crate::resume::CONFIRM_EVERY`]
    /// frames. Added in protocol 6.
    Received {
        /// Frames read from the client's main stream since login.
        frames: u64,
    },
    /// A relayed unreliable message as a frame, to a client on a WebSocket (which has no
    /// datagrams; issue 14). Counted like every frame of the stream; the server drops it
    /// rather than queue it behind a backlog, so it stays at most once and never older
    /// than one delivered for sequenced lanes.
    Datagram(ServerDatagram),
}

/// Why the server refused to relay a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RefuseReason {
    /// The two hosts share no group.
    NoSharedGroup,
    /// The sender addressed a group it is not a member of.
    SenderNotInGroup,
    /// The destination is not a member of the addressed group.
    DestNotInGroup,
    /// The pair no longer exists (it ended while the message was in flight).
    UnknownPair,
    /// The server application is not a member of the addressed group, or shares no group
    /// with the sender.
    ServerNotMember,
    /// The datagram does not fit the destination's path.
    TooLargeForPath,
    /// The upload named more than [`MAX_RELAY_DESTS`] destinations; none was relayed.
    /// Added in protocol 4.
    TooManyDestinations,
}

/// QUIC datagrams from a client to the server (unreliable relay).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientDatagram {
    /// An unreliable message to relay.
    Relay {
        /// The group the sender addressed, if any.
        group: Option<GroupId>,
        /// Whether the server application is a destination too.
        to_server: bool,
        /// The sequence space of the `seq`s in `dests`.
        lane: DatagramLane,
        /// The number in `lane` for the server application when `to_server` (it numbers
        /// its own [`DatagramLane::Sequenced`] channels per client); 0 otherwise.
        server_seq: u64,
        /// The pairs to deliver to, each with its number in `lane` (0 for
        /// [`DatagramLane::Plain`]).
        dests: RelayDests,
        /// The application payload.
        payload: Bytes,
    },
}

/// QUIC datagrams from the server to a client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerDatagram {
    /// A relayed unreliable message, stamped with its sender by the server.
    Deliver {
        /// The sender ([`HostId::SERVER`] for the server application).
        from: HostId,
        /// The group the sender addressed, if any.
        group: Option<GroupId>,
        /// The sequence space of `seq`.
        lane: DatagramLane,
        /// The sender's number in `lane` for this pair (0 for [`DatagramLane::Plain`]).
        seq: u64,
        /// The application payload.
        payload: Bytes,
    },
}

/// Frames between two peers on a direct path, on one QUIC stream per connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerToPeer {
    /// A reliable message, numbered in the same per-pair lanes as
    /// [`ServerToClient::Deliver`].
    Data {
        /// The group the sender addressed, if any.
        group: Option<GroupId>,
        /// With a group: the memberships it was sent under.
        memberships: Option<Memberships>,
        /// The sequence space of `seq`.
        lane: Lane,
        /// The sender's sequence number for this pair and lane.
        seq: u64,
        /// The application payload.
        payload: Bytes,
    },
    /// The receiver has taken in the first `received` data frames of this connection (it
    /// holds or delivered them, so a path switch cannot lose them); the sender may forget
    /// them. The stream is ordered, so a count names them exactly.
    Ack {
        /// Data frames received on this connection so far.
        received: u64,
    },
    /// The first frame on a direct connection, from the side that opened it.
    Hello {
        /// The pair the connection serves.
        pair: PairId,
        /// The opener's id.
        host: HostId,
    },
}

/// Variant indices of the payload-carrying variants, which `zero_copy.rs` decodes and
/// `hand_encode.rs` encodes without serde (postcard writes the index as a varint; all are
/// below 128, so one byte). Pinned by the golden-byte tests.
pub(crate) mod variant {
    /// [`super::ClientToServer::Relay`].
    pub const CLIENT_RELAY: u8 = 2;
    /// [`super::ServerToClient::Deliver`].
    pub const SERVER_DELIVER: u8 = 4;
    /// [`super::ServerToClient::FromServer`].
    pub const SERVER_FROM_SERVER: u8 = 6;
    /// [`super::PeerToPeer::Data`].
    pub const PEER_DATA: u8 = 0;
    /// [`super::ClientDatagram::Relay`].
    pub const DATAGRAM_RELAY: u8 = 0;
    /// [`super::ServerDatagram::Deliver`].
    pub const DATAGRAM_DELIVER: u8 = 0;
}
