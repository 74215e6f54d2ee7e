//! Errors of the server's API, one enum per kind of operation.

use peergroup_protocol::{GroupId, HostId};

/// A group operation was refused. All are the caller's mistakes; nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GroupError {
    /// No such group (never existed, or already removed).
    #[error("no group {0}")]
    UnknownGroup(GroupId),
    /// No such connected client.
    #[error("no connected host {0}")]
    UnknownHost(HostId),
    /// The host is not a member of the group.
    #[error("host {host} is not a member of group {group}")]
    NotMember {
        /// The group.
        group: GroupId,
        /// The host.
        host: HostId,
    },
    /// A group with no members was asked for with `allow_empty` off.
    #[error("a group with no members needs allow_empty")]
    EmptyNotAllowed,
    /// The application has left too many lifecycle events unread
    /// ([`Limits::app_event_queue`](crate::Limits::app_event_queue)); read
    /// [`ServerEvents`](crate::ServerEvents), then try again.
    #[error("{queued} server events are unread; read them before changing groups")]
    EventBacklog {
        /// Events queued and not read.
        queued: usize,
    },
    /// Host data, group data or a join message is over its limit
    /// ([`Limits`](crate::Limits)).
    #[error("{len} bytes exceed the limit of {max} bytes")]
    DataTooLarge {
        /// Length given, bytes.
        len: usize,
        /// The limit, bytes.
        max: usize,
    },
}

/// A send by the server application failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// No such connected client.
    #[error("no connected host {0}")]
    UnknownHost(HostId),
    /// No such group.
    #[error("no group {0}")]
    UnknownGroup(GroupId),
    /// The payload is larger than the receiver's path takes in one datagram.
    #[error("{len} bytes do not fit in one datagram to host {host} (at most {max} bytes)")]
    TooLargeForDatagram {
        /// The receiver.
        host: HostId,
        /// Payload length in bytes.
        len: usize,
        /// The largest payload that fits, in bytes.
        max: usize,
    },
    /// The payload exceeds the maximum frame length.
    #[error("{len} bytes exceed the maximum message size of {max} bytes")]
    TooLarge {
        /// Payload length in bytes.
        len: usize,
        /// The maximum, in bytes.
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
