//! What the registry asks its driver to do.

use crate::events::ServerEvent;
use peergroup_protocol::{HostId, Notice, PairId, Priority, ServerDatagram, ServerToClient};
use std::net::SocketAddr;

/// One output of the [`Registry`](super::Registry), in the order it must be carried out.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send a notice on the host's main stream: notices leave before any queued
    /// message, in the order given (a `PeerDown` waits for the messages its peer sent
    /// first).
    Send {
        /// The receiving client.
        to: HostId,
        /// The frame.
        message: ServerToClient,
    },
    /// Send one membership notice. Consecutive notices for one host are carried in one
    /// [`ServerToClient::Notices`] frame (they were numbered in this order); `order` says
    /// which queued messages the frame must not overtake.
    Notice {
        /// The receiving client.
        to: HostId,
        /// The notice.
        notice: Notice,
        /// Where it goes in the host's queue.
        order: NoticeOrder,
    },
    /// Disconnect a client that broke a rule the registry enforces.
    Disconnect {
        /// The client.
        host: HostId,
        /// Readable text for the close.
        reason: &'static str,
    },
    /// Queue a relayed message (or a skip in a sender's sequence) for the host: it waits
    /// in the host's queue at `priority`, behind notices, and while it waits a newer one
    /// with the same `from` and `latest` key replaces it.
    SendData {
        /// The receiving client.
        to: HostId,
        /// The frame.
        message: ServerToClient,
        /// Its priority in the receiver's queue.
        priority: Priority,
        /// The sender ([`HostId::SERVER`] for the application).
        from: HostId,
        /// The [`peergroup_protocol::Delivery::Latest`] key, if any.
        latest: Option<u64>,
    },
    /// Send one QUIC datagram to each recipient. The driver checks it against each path's
    /// datagram size and reports [`peergroup_protocol::RefuseReason::TooLargeForPath`] to
    /// `sender`.
    Datagram {
        /// The receiving clients, each with the pair the datagram travels for (named in a
        /// refusal) and its number in the datagram's lane (written into `message` for
        /// each; the datagram is encoded once when the lane is not numbered).
        to: Vec<(HostId, PairId, u64)>,
        /// The client whose message this is, to tell if it does not fit.
        sender: HostId,
        /// The datagram.
        message: ServerDatagram,
    },
    /// Send one QUIC datagram from the server application to each recipient. Unlike
    /// [`Action::Datagram`] nobody is told when one does not fit its path: the application
    /// checked each path's datagram size when it sent, and one that shrank since loses it,
    /// as any datagram may be lost.
    AppDatagram {
        /// The receiving clients, each with its number in the datagram's lane (written
        /// into `message` for each; the datagram is encoded once when the lane is not
        /// numbered).
        to: Vec<(HostId, u64)>,
        /// The datagram, from [`HostId::SERVER`].
        message: ServerDatagram,
    },
    /// Hand an event to the server application.
    Event(ServerEvent),
    /// An offline host's resume window ended: remove it as a disconnect would
    /// ([`Registry::handle_disconnect`](super::Registry::handle_disconnect)); no resume
    /// brings it back any more.
    ResumeWindowEnded {
        /// The host.
        host: HostId,
    },
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

/// Which queued messages a notice waits for in its receiver's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoticeOrder {
    /// Ahead of every queued message (joins, data changes): a message from a new member
    /// can never arrive before its join notice.
    AheadOfMessages,
    /// After every message queued from this sender (its `MemberLeft`): what it sent before
    /// leaving arrives first.
    AfterMessagesFrom(HostId),
    /// After every queued message (the receiver's own leave): nothing addressed to the
    /// group it left follows.
    AfterAllMessages,
}
