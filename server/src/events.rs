//! Events the server hands to the application.

use bytes::Bytes;
use peergroup_protocol::{Delivery, GroupId, HostId, PairPath, PathReason};
use std::net::SocketAddr;

/// Something the application should know about. Read them with
/// [`ServerEvents::next`](crate::ServerEvents::next).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ServerEvent {
    /// A client passed the auth hook and got its id.
    ClientConnected {
        /// The new client's id.
        host: HostId,
        /// The address the server sees it at (its NAT mapping, if it is behind one).
        remote_addr: SocketAddr,
        /// What the auth hook attached to it: its first host data.
        app_data: Bytes,
    },
    /// A client is gone; it has already been removed from all its groups. It comes after
    /// every message the client sent (the completions its departure causes may come
    /// before it).
    ClientDisconnected {
        /// The client.
        host: HostId,
        /// Why.
        reason: DisconnectReason,
    },
    /// A client's connection was lost without a leave, and the server keeps it for a
    /// resume ([`ResumeConfig::window`](crate::ResumeConfig::window), default 30 s): its
    /// id, groups, pairs and the messages queued for it stay, and its peers are told
    /// nothing. Then either [`ServerEvent::ClientResumed`] or, once the window ends,
    /// [`ServerEvent::ClientDisconnected`].
    ClientOffline {
        /// The client.
        host: HostId,
        /// How the connection ended.
        reason: DisconnectReason,
    },
    /// An offline client (or one whose old connection was still half-open) came back
    /// with its resume token: same id, nothing lost.
    ClientResumed {
        /// The client.
        host: HostId,
        /// The address the server sees it at now.
        remote_addr: SocketAddr,
        /// How long it was offline (zero when it replaced a half-open connection).
        offline_for: std::time::Duration,
    },
    /// Every notice of `member`'s join into `group` was acknowledged, or the join ended
    /// before that (ProudNet's `OnP2PGroupJoinMemberAckComplete`).
    JoinAckComplete {
        /// The group.
        group: GroupId,
        /// The member whose join this is.
        member: HostId,
        /// `Ok` when all acks arrived.
        result: Result<(), JoinAckError>,
    },
    /// Every notice of `member`'s leave from `group` was acknowledged by the hosts told of
    /// it (the remaining members, and the member itself unless it disconnected), or the
    /// leave ended before that. A destroy is a leave of every member and completes the
    /// same way; a disconnect's leaves too (only the remaining members are told).
    LeaveAckComplete {
        /// The group.
        group: GroupId,
        /// The member whose leave this is.
        member: HostId,
        /// `Ok` when all acks arrived. A remaining member that disconnects meanwhile no
        /// longer owes one.
        result: Result<(), LeaveAckError>,
    },
    /// A group ended: destroyed by the application, or emptied with `allow_empty` off.
    GroupRemoved {
        /// The group.
        group: GroupId,
    },
    /// A client sent a message to the server application (directly, or to a group the
    /// server is a member of).
    Message {
        /// The sender, as the server authenticated it.
        from: HostId,
        /// The group the sender addressed, if any.
        group: Option<GroupId>,
        /// The application payload.
        payload: Bytes,
        /// How it was sent.
        delivery: Delivery,
        /// The channel it was sent on (0 for modes without channels).
        channel: u8,
    },
    /// A pair's traffic moved to a direct path, or back to the relay. ProudNet has no such
    /// server-side event; matchmakers and monitoring want one.
    PairPathChanged {
        /// One host (the lower id).
        a: HostId,
        /// The other.
        b: HostId,
        /// The path now in use.
        path: PairPath,
        /// Why it changed.
        reason: PathReason,
    },
}

/// Why a join ended before all its acks arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JoinAckError {
    /// The member left the group first.
    #[error("the member left the group before all acks arrived")]
    MemberLeft,
    /// The group was destroyed first.
    #[error("the group was destroyed before all acks arrived")]
    GroupDestroyed,
    /// The member disconnected first.
    #[error("the member disconnected before all acks arrived")]
    Disconnected,
    /// Not every ack arrived within the ack timeout (default 15 s).
    #[error("not every ack arrived within the ack timeout")]
    Timeout,
}

/// Why a leave ended before all its acks arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LeaveAckError {
    /// The member that left disconnected before acknowledging its own leave.
    #[error("the member disconnected before acknowledging its leave")]
    Disconnected,
    /// The group was destroyed before all acks of an earlier leave arrived.
    #[error("the group was destroyed before all acks arrived")]
    GroupDestroyed,
    /// Not every ack arrived within the ack timeout (default 15 s).
    #[error("not every ack arrived within the ack timeout")]
    Timeout,
}

/// Why a client's connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// The client closed the connection.
    ClientClosed {
        /// The reason text it gave, as sent (UTF-8 errors replaced); `Display` escapes
        /// its control characters, and anything else that shows it should too
        /// ([`peergroup_protocol::Escaped`]).
        reason: String,
    },
    /// Nothing was heard from the client for the idle timeout (default 10 s).
    TimedOut,
    /// The client sent bytes that broke the protocol; the connection was closed with that
    /// close code.
    ProtocolError {
        /// What was wrong.
        detail: String,
    },
    /// The client did not read fast enough and its send queue overflowed.
    SlowConsumer,
    /// The application disconnected it.
    Kicked,
    /// The server shut down.
    ServerShutdown,
    /// The connection failed in some other way.
    ConnectionLost {
        /// What quinn reported.
        detail: String,
    },
}

/// Shown with control characters in the texts escaped (a client chooses its close
/// reason, and quinn's details quote the peer's), so a reason cannot forge log lines.
impl std::fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use peergroup_protocol::Escaped;
        match self {
            DisconnectReason::ClientClosed { reason } => {
                write!(f, "client closed: {}", Escaped(reason))
            }
            DisconnectReason::TimedOut => f.write_str("timed out"),
            DisconnectReason::ProtocolError { detail } => {
                write!(f, "protocol error: {}", Escaped(detail))
            }
            DisconnectReason::SlowConsumer => f.write_str("slow consumer"),
            DisconnectReason::Kicked => f.write_str("kicked"),
            DisconnectReason::ServerShutdown => f.write_str("server shutdown"),
            DisconnectReason::ConnectionLost { detail } => {
                write!(f, "connection lost: {}", Escaped(detail))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_close_reason_cannot_forge_a_log_line() {
        // Issue 12, finding 11: a client's close reason was logged with its newlines.
        let reason = DisconnectReason::ClientClosed {
            reason: "bye\n2026-12-03T07:00:00Z  INFO peergroup_server: admin logged in".into(),
        };
        let shown = reason.to_string();
        assert!(!shown.contains('\n'), "{shown}");
        assert!(shown.starts_with("client closed: bye\\n2026"), "{shown}");
        let lost = DisconnectReason::ConnectionLost {
            detail: "closed by peer: \r\u{1b}[31m".into(),
        };
        assert!(!lost.to_string().contains(['\r', '\u{1b}']));
    }
}
