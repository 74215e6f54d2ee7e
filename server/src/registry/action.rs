//! What the registry asks its driver to do.

use crate::events::ServerEvent;
use peergroup_protocol::{HostId, PairId, ServerDatagram, ServerToClient};
use std::net::SocketAddr;

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
    /// Send one QUIC datagram to each recipient (encoded once). The driver checks it
    /// against each path's datagram size and reports
    /// [`peergroup_protocol::RefuseReason::TooLargeForPath`] to `sender`.
    Datagram {
        /// The receiving clients, each with the pair the datagram travels for (named in a
        /// refusal).
        to: Vec<(HostId, PairId)>,
        /// The client whose message this is, to tell if it does not fit.
        sender: HostId,
        /// The datagram.
        message: ServerDatagram,
    },
    /// Hand an event to the server application.
    Event(ServerEvent),
    /// Order both hosts of a pair to punch. The driver adds what needs IO: a fresh secret
    /// and start delays from both hosts' RTTs
    /// ([`punch_start_delays`](super::punch_start_delays)).
    Punch {
        /// The pair.
        pair: PairId,
        /// The attempt number, from 1.
        attempt: u32,
        /// The host that opens the QUIC connection (the lower id).
        controlling: HostId,
        /// The other host.
        controlled: HostId,
        /// Where the controlled side should probe the controlling one.
        candidates_of_controlling: Vec<SocketAddr>,
        /// Where the controlling side should probe the controlled one.
        candidates_of_controlled: Vec<SocketAddr>,
    },
}
