//! Errors of the client's API, one enum per operation.

use peergroup_protocol::{CloseCode, GroupId, HostId};

/// [`Client::connect`](crate::Client::connect) failed, and why: each cause a game shows
/// differently (a retry, "server full", "update your game", a security warning).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The local UDP socket could not be bound.
    #[error("binding the local socket: {0}")]
    Bind(#[source] std::io::Error),
    /// The local TLS set-up failed: an unreadable or empty certificate file, no system
    /// root certificates, a key that could not be generated. Nothing was sent.
    #[error("TLS set-up: {0}")]
    TlsSetup(String),
    /// Nothing answered at the server's address before `timeouts.idle` or
    /// `timeouts.connect` ran out: no server listening there, a wrong address, or a
    /// network that drops UDP. (A closed UDP port answers with ICMP, which QUIC stacks
    /// do not act on, so this is a timeout, not an immediate refusal.)
    #[error("no answer from {addr} within {waited:?}: no server there, or UDP is blocked")]
    Unreachable {
        /// The address tried.
        addr: std::net::SocketAddr,
        /// How long the client waited.
        waited: std::time::Duration,
    },
    /// The server presented a certificate other than the pinned one
    /// ([`ServerTrust::Fingerprint`](crate::ServerTrust) or `Certificate`): a wrong
    /// address, a server whose certificate changed, or someone in the middle.
    #[error("the server's certificate {presented} is not the pinned one {expected}")]
    PinMismatch {
        /// The pinned fingerprint (SHA-256 of the certificate).
        expected: peergroup_protocol::Fingerprint,
        /// The fingerprint of the certificate the server presented.
        presented: peergroup_protocol::Fingerprint,
    },
    /// The TLS handshake failed otherwise: a chain the system roots do not trust, a
    /// name that does not match, the server refusing this client's certificate, no
    /// common ALPN protocol. Carries the TLS alert or error text.
    #[error("TLS handshake failed: {0}")]
    Handshake(String),
    /// The server refused the login with a close code and readable text: the auth hook's
    /// reason ([`CloseCode::AuthRejected`]), a full server ([`CloseCode::ServerFull`]), a
    /// server shutting down, a protocol version it does not speak
    /// ([`CloseCode::VersionMismatch`]).
    #[error("the server refused the connection ({code}): {reason}")]
    Refused {
        /// The close code.
        code: CloseCode,
        /// The server's text.
        reason: String,
    },
    /// The server's welcome names another protocol version.
    #[error("protocol version mismatch: client speaks {ours}, server speaks {theirs}")]
    VersionMismatch {
        /// This client's version.
        ours: u32,
        /// The server's.
        theirs: u32,
    },
    /// The QUIC connection was up but the server sent no welcome within
    /// `timeouts.connect` (default 10 s): a server application slow to authenticate, or
    /// an overloaded server.
    #[error("the server did not welcome this client within {0:?}")]
    Timeout(std::time::Duration),
    /// The connection was lost during the login after QUIC had connected (the server
    /// reset or stopped answering).
    #[error("connection lost during login: {0}")]
    Lost(String),
    /// The server's first frame was not a welcome, or did not decode.
    #[error("the server broke the protocol: {0}")]
    Protocol(String),
    /// [`BlockingClient`](crate::blocking::BlockingClient) could not start its runtime or
    /// the thread that drives it.
    #[error("starting the client's runtime thread: {0}")]
    Runtime(#[source] std::io::Error),
}

/// A send was refused locally; nothing was sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The connection to the server has ended.
    #[error("not connected")]
    Disconnected,
    /// [`Client::try_send`](crate::Client::try_send) found a send queue it needs full
    /// (default 4 MiB each: the stream to the server, and each direct peer's).
    #[error("the send queue is full")]
    QueueFull,
    /// This client is not a member of the group.
    #[error("not a member of group {0}")]
    NotInGroup(GroupId),
    /// The host shares no group with this client (no pair exists).
    #[error("host {0} is not a peer of this client")]
    NotAPeer(HostId),
    /// An unreliable payload larger than the path's datagram size.
    #[error("{len} bytes do not fit in one datagram (at most {max} bytes now)")]
    TooLargeForDatagram {
        /// Payload length, bytes.
        len: usize,
        /// The largest payload that fits now, bytes. Grows as path MTU discovery runs.
        max: usize,
    },
    /// A reliable payload over the server's frame limit.
    #[error("{len} bytes exceed the maximum message size of {max} bytes")]
    TooLarge {
        /// Payload length, bytes.
        len: usize,
        /// The limit, bytes.
        max: usize,
    },
    /// A typed message could not be encoded (a custom `Serialize` that failed); see
    /// [`peergroup_protocol::typed`].
    #[error("the message could not be encoded: {0}")]
    Encode(String),
}

impl From<peergroup_protocol::typed::TypedError> for SendError {
    fn from(error: peergroup_protocol::typed::TypedError) -> Self {
        SendError::Encode(error.to_string())
    }
}
