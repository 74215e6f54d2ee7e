//! Events the client hands to the application.

use bytes::Bytes;
use peergroup_protocol::{
    CloseCode, Delivery, GroupId, HostId, PairPath, Path, PathReason, PeerInfo, RefuseReason,
};
use peergroup_transport::ConnectionEnd;
use std::time::Duration;

/// Something the application should know about. Read them with
/// [`ClientEvents::next`](crate::ClientEvents::next).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// The server accepted the login. Always the first event.
    Connected {
        /// This client's id.
        host_id: HostId,
    },
    /// `member` joined `group`: another host, this client itself, or
    /// [`HostId::SERVER`]. The client acknowledges it to the server by itself.
    MemberJoined {
        /// The group.
        group: GroupId,
        /// Who joined.
        member: HostId,
        /// Members after the join (the server counts when it is a member).
        member_count: u32,
        /// The server application's message for this join (the same on every notice of
        /// one join).
        join_message: Bytes,
        /// `member`'s host data, as the server application set it (empty for the server).
        member_data: Bytes,
        /// The group's data, on this client's own join notice only.
        group_data: Option<Bytes>,
        /// What the server vouches for about the member (`None` for this client itself
        /// and for the server).
        peer: Option<PeerInfo>,
    },
    /// `member` left `group`. When `member` is this client, it is no longer in the group.
    MemberLeft {
        /// The group.
        group: GroupId,
        /// Who left.
        member: HostId,
        /// Members after the leave.
        member_count: u32,
        /// `member`'s host data as this client last knew it (so it can still be named when
        /// this was the last group the two shared).
        member_data: Bytes,
    },
    /// The host data of `host` changed: this client's own, or that of a member of one
    /// of its groups.
    HostDataChanged {
        /// The host.
        host: HostId,
        /// Its new data.
        data: Bytes,
    },
    /// The data of `group`, which this client is in, changed.
    GroupDataChanged {
        /// The group.
        group: GroupId,
        /// Its new data.
        data: Bytes,
    },
    /// A message arrived.
    Message {
        /// The sender, as the server authenticated it ([`HostId::SERVER`] for the server).
        from: HostId,
        /// The group the sender addressed, if any.
        group: Option<GroupId>,
        /// The application payload.
        payload: Bytes,
        /// How it was sent.
        delivery: Delivery,
        /// The channel it was sent on (0 for modes without channels).
        channel: u8,
        /// Which path carried it.
        path: Path,
    },
    /// The server refused to relay a message this client sent.
    SendFailed {
        /// The destination refused ([`HostId::SERVER`] when it was the server).
        to: HostId,
        /// The group addressed, if any.
        group: Option<GroupId>,
        /// Why.
        reason: RefuseReason,
    },
    /// Messages to and from `peer` moved to another path. Reliable messages keep their
    /// order and are neither lost nor duplicated across the change.
    PathChanged {
        /// The peer.
        peer: HostId,
        /// The path now in use.
        path: PairPath,
        /// The direct path's RTT when it is up.
        rtt: Option<Duration>,
        /// Why.
        reason: PathReason,
    },
    /// `peer` broke the reliable sequence so badly that this client stopped taking its
    /// messages: every message it had held from `peer` (early arrivals, and messages
    /// waiting for membership notices) is dropped, and everything from `peer` after this
    /// (reliable messages and datagrams, on either path) is discarded and counted in
    /// [`PeerStats::discarded`](crate::PeerStats::discarded), until the pair ends. Sending
    /// to `peer` is unaffected. A well-behaved peer never causes this; the application may
    /// report `peer` to its server (which can kick it).
    PeerIgnored {
        /// The peer.
        peer: HostId,
        /// What it did.
        fault: PeerFault,
    },
    /// The connection to the server was lost (no word from it for the idle timeout),
    /// and the client is reconnecting by itself to resume the session (see
    /// [`Timeouts::resume`](crate::Timeouts::resume)). Sends keep queueing meanwhile,
    /// and direct paths that stay up keep carrying messages. Then either
    /// [`ClientEvent::Resumed`] or, once the server's window ends or it refuses,
    /// [`ClientEvent::Disconnected`].
    ConnectionLost {
        /// How the connection ended.
        reason: DisconnectReason,
    },
    /// The session resumed on a new connection: same host id, groups and pairs, and no
    /// reliable message lost or duplicated either way.
    Resumed {
        /// From the loss being noticed to the server's answer.
        after: Duration,
    },
    /// The connection to the server ended. Always the last event.
    Disconnected {
        /// Why.
        reason: DisconnectReason,
    },
}

/// What a peer did to be ignored ([`ClientEvent::PeerIgnored`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeerFault {
    /// It sent reliable messages ahead of a gap in its sequence that it never filled, past
    /// what this client holds for one peer: [`MAX_HELD_ARRIVALS`](crate::MAX_HELD_ARRIVALS)
    /// messages, or [`MAX_HELD_ARRIVAL_BYTES`](crate::MAX_HELD_ARRIVAL_BYTES) bytes counting
    /// each message's payload plus a fixed cost per message.
    TooManyEarlyArrivals {
        /// Messages held when it happened.
        held: usize,
        /// Bytes charged for them.
        held_bytes: usize,
    },
    /// It numbered a reliable message further ahead of the next one due than
    /// [`Limits::receive_window`](crate::Limits::receive_window) allows.
    BeyondWindow {
        /// The sequence number.
        seq: u64,
    },
}

impl std::fmt::Display for PeerFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerFault::TooManyEarlyArrivals { held, held_bytes } => write!(
                f,
                "too many early arrivals ({held} messages, {held_bytes} bytes held)"
            ),
            PeerFault::BeyondWindow { seq } => {
                write!(f, "sequence number {seq} beyond the receive window")
            }
        }
    }
}

/// Why the client's connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// The server closed the connection with this code and text.
    ServerClosed {
        /// The application close code.
        code: CloseCode,
        /// The server's text.
        reason: String,
    },
    /// Nothing was heard from the server for the idle timeout (default 10 s).
    TimedOut,
    /// This client closed it ([`Client::close`](crate::Client::close) or the last handle
    /// dropped).
    Closed,
    /// The server sent something this client could not accept.
    ProtocolError {
        /// What was wrong.
        detail: String,
    },
    /// The connection failed in some other way.
    ConnectionLost {
        /// What quinn reported.
        detail: String,
    },
}

impl std::fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DisconnectReason::ServerClosed { code, reason } => {
                write!(f, "server closed the connection ({code}): {reason}")
            }
            DisconnectReason::TimedOut => f.write_str("timed out"),
            DisconnectReason::Closed => f.write_str("closed"),
            DisconnectReason::ProtocolError { detail } => write!(f, "protocol error: {detail}"),
            DisconnectReason::ConnectionLost { detail } => write!(f, "connection lost: {detail}"),
        }
    }
}

impl DisconnectReason {
    pub(crate) fn from_connection_error(error: &quinn::ConnectionError) -> Self {
        Self::from_end(ConnectionEnd::from(error))
    }

    /// How a connection of either carrier ended, as the application hears it.
    pub(crate) fn from_end(end: ConnectionEnd) -> Self {
        match end {
            ConnectionEnd::PeerClosed { code, reason } => {
                DisconnectReason::ServerClosed { code, reason }
            }
            ConnectionEnd::TimedOut => DisconnectReason::TimedOut,
            ConnectionEnd::LocallyClosed => DisconnectReason::Closed,
            ConnectionEnd::Lost(detail) => DisconnectReason::ConnectionLost { detail },
        }
    }
}
