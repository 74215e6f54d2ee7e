//! What the registry asks its driver to do.

use crate::events::ServerEvent;
use peergroup_protocol::{HostId, PairId, ServerDatagram, ServerToClient};

/// One output of the [`Registry`](super::Registry), in the order it must be carried out.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send a frame on the host's control stream.
    Send {
        /// The receiving client.
        to: HostId,
        /// The frame.
        message: ServerToClient,
    },
    /// Send a QUIC datagram to the host. The driver checks it against the path's datagram
    /// size and reports [`peergroup_protocol::RefuseReason::TooLargeForPath`] to `sender`.
    Datagram {
        /// The receiving client.
        to: HostId,
        /// The client whose message this is, to tell if it does not fit.
        sender: HostId,
        /// The pair the datagram travels for, to name in that refusal.
        pair: PairId,
        /// The datagram.
        message: ServerDatagram,
    },
    /// Hand an event to the server application.
    Event(ServerEvent),
}
