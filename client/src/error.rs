//! Errors of the client's API, one enum per operation.

use peergroup_protocol::{CloseCode, GroupId, HostId};

/// [`Client::connect`](crate::Client::connect) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The local UDP socket could not be bound.
    #[error("binding the local socket: {0}")]
    Bind(#[source] std::io::Error),
    /// The TLS configuration could not be built (for example an unreadable certificate).
    #[error("TLS setup: {0}")]
    Tls(String),
    /// The server refused the connection with a close code and readable text: the auth
    /// hook's reason, a protocol version mismatch, a full server.
    #[error("the server refused the connection ({code}): {reason}")]
    Refused {
        /// The close code.
        code: CloseCode,
        /// The server's text.
        reason: String,
    },
    /// The server spoke another protocol version.
    #[error("protocol version mismatch: client speaks {ours}, server speaks {theirs}")]
    VersionMismatch {
        /// This client's version.
        ours: u32,
        /// The server's.
        theirs: u32,
    },
    /// No answer within the connect timeout (default 10 s).
    #[error("no answer from the server within {0:?}")]
    Timeout(std::time::Duration),
    /// The QUIC connection failed (unreachable server, TLS failure such as a certificate
    /// that does not match the pinned one).
    #[error("connection failed: {0}")]
    Connection(String),
    /// The server's first frame was not a welcome.
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
