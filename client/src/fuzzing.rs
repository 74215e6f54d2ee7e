//! A thin facade over the client's sans-IO session for the fuzz targets in `fuzz/`.
//!
//! Only with the feature `fuzzing`, hidden from the docs, and not a stable API: it
//! exposes internals (the session, its limits) so a harness outside the crate can drive
//! them with arbitrary input and check their invariants. Applications use
//! [`Client`](crate::Client).

use crate::error::SendError;
use crate::events::ClientEvent;
use crate::session::{Session, SessionTiming, Upload as SessionUpload};
use bytes::Bytes;
use peergroup_protocol::{
    ClientDatagram, ClientToServer, GroupId, HostId, PairId, PathReason, PeerToPeer, Priority,
    PunchOrder, SendOptions, ServerDatagram, ServerToClient,
};
use std::time::{Duration, Instant};

pub use crate::session::Target;

/// Bytes of relayed early arrivals held per peer past which further ones are discarded.
pub const MAX_HELD_BYTES_RELAYED: usize = crate::session::MAX_HELD_BYTES_RELAYED;
/// Bytes held per peer past which the driver stops reading that peer's direct connection.
pub const MAX_HELD_BYTES: usize = crate::session::MAX_HELD_BYTES;
/// Messages at most waiting for membership notices per peer.
pub const MAX_AWAITING: usize = crate::session::MAX_AWAITING;
/// How long a message may wait for a membership notice.
pub const MEMBERSHIP_WAIT: Duration = crate::session::MEMBERSHIP_WAIT;

/// Something the session asks its driver to send, with the wire message it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upload {
    /// A control frame to the server (acks, reports, clock requests).
    Control(ClientToServer),
    /// A relay upload to the server, with where it waits in the upload queue.
    Relay {
        /// The frame.
        frame: ClientToServer,
        /// Its priority.
        priority: Priority,
        /// Its flow (destination set).
        flow: u64,
        /// Its latest key.
        latest: Option<u64>,
    },
    /// A datagram to the server.
    Datagram(ClientDatagram),
    /// A data frame on the direct connection to `to`, with its retransmission id.
    Peer {
        /// The peer.
        to: HostId,
        /// The frame.
        frame: PeerToPeer,
        /// Its priority in the peer's queue.
        priority: Priority,
        /// Its latest key (a newer frame with the same key replaces it while queued;
        /// tell the session with [`FuzzSession::forget_replaced`]).
        latest: Option<u64>,
        /// Its id among the frames kept for retransmission.
        id: u64,
    },
    /// A control frame (an ack) on the direct connection to `to`.
    PeerControl {
        /// The peer.
        to: HostId,
        /// The frame.
        frame: PeerToPeer,
    },
    /// A datagram on the direct connection to `to`.
    PeerDatagram {
        /// The peer.
        to: HostId,
        /// The datagram.
        datagram: ServerDatagram,
    },
}

impl From<SessionUpload> for Upload {
    fn from(upload: SessionUpload) -> Self {
        match upload {
            SessionUpload::Control(frame) => Upload::Control(frame),
            SessionUpload::Relay {
                frame,
                priority,
                flow,
                latest,
            } => Upload::Relay {
                frame,
                priority,
                flow,
                latest,
            },
            SessionUpload::Datagram(datagram) => Upload::Datagram(datagram),
            SessionUpload::Peer {
                to,
                frame,
                priority,
                latest,
                id,
            } => Upload::Peer {
                to,
                frame,
                priority,
                latest,
                id,
            },
            SessionUpload::PeerControl { to, frame } => Upload::PeerControl { to, frame },
            SessionUpload::PeerDatagram { to, datagram } => Upload::PeerDatagram { to, datagram },
        }
    }
}

/// The client's sans-IO session, as the drivers use it.
#[derive(Debug)]
pub struct FuzzSession {
    session: Session,
    /// Uploads a send planned (the driver queues them; here they wait to be polled).
    planned: std::collections::VecDeque<SessionUpload>,
}

impl FuzzSession {
    /// A session for `host_id` as after a welcome with `max_frame_len`, holding reliable
    /// messages at most `receive_window` numbers ahead; pings every second if `pings`.
    pub fn new(
        host_id: HostId,
        max_frame_len: u32,
        receive_window: u64,
        pings: bool,
        now: Instant,
    ) -> Self {
        let timing = SessionTiming {
            ping_interval: pings.then_some(Duration::from_secs(1)),
            relay_ping_interval: Duration::from_secs(1),
        };
        Self {
            session: Session::new(
                host_id,
                Bytes::new(),
                max_frame_len,
                receive_window,
                timing,
                now,
            ),
            planned: std::collections::VecDeque::new(),
        }
    }

    /// A frame from the server's main stream; `Err` closes the connection.
    pub fn handle_frame(&mut self, frame: ServerToClient, now: Instant) -> Result<(), String> {
        self.session.handle_frame(frame, now)
    }

    /// A datagram from the server.
    pub fn handle_datagram(&mut self, datagram: ServerDatagram, now: Instant) {
        self.session.handle_datagram(datagram, now);
    }

    /// A frame from the direct connection to `from` (acks go to
    /// [`FuzzSession::handle_direct_ack`], as the driver does); `Err` closes it.
    pub fn handle_peer_frame(
        &mut self,
        from: HostId,
        frame: PeerToPeer,
        now: Instant,
    ) -> Result<(), String> {
        self.session.handle_peer_frame(from, frame, now)
    }

    /// A datagram from the direct connection to `from`.
    pub fn handle_peer_datagram(&mut self, from: HostId, datagram: ServerDatagram, now: Instant) {
        self.session.handle_peer_datagram(from, datagram, now);
    }

    /// The direct queue to `peer` sent these tracked data frames, in this order.
    pub fn handle_direct_sent(&mut self, peer: HostId, ids: impl IntoIterator<Item = u64>) {
        self.session.handle_direct_sent(peer, ids);
    }

    /// An ack from the direct peer `from`, counting frames in the order
    /// [`FuzzSession::handle_direct_sent`] reported.
    pub fn handle_direct_ack(&mut self, from: HostId, received: u64) -> Result<(), String> {
        self.session.handle_direct_ack(from, received)
    }

    /// The periodic work due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.session.handle_timeout(now);
    }

    /// When [`FuzzSession::handle_timeout`] next has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.session.poll_timeout()
    }

    /// The direct connection to `peer` came up.
    pub fn set_direct(&mut self, peer: HostId, rtt: Duration, now: Instant) -> bool {
        self.session.set_direct(peer, rtt, now)
    }

    /// The direct connection to `peer` went down.
    pub fn set_relay(&mut self, peer: HostId, reason: PathReason, now: Instant) {
        self.session.set_relay(peer, reason, now);
    }

    /// Acks what direct peers sent.
    pub fn flush_acks(&mut self) {
        self.session.flush_acks();
    }

    /// A send, routed and planned as [`Client::send`](crate::Client::send) does; its
    /// uploads come out of [`FuzzSession::poll_upload`].
    pub fn send(
        &mut self,
        target: &Target,
        payload: Bytes,
        options: SendOptions,
        max_datagram: Option<usize>,
    ) -> Result<(), SendError> {
        let route = self.session.route(target)?;
        let uploads = self.session.plan(route, payload, options, max_datagram)?;
        self.planned.extend(uploads);
        Ok(())
    }

    /// A newer latest value replaced direct frame `id` to `peer` in its queue.
    pub fn forget_replaced(&mut self, peer: HostId, id: u64) {
        self.session.forget_replaced(peer, id);
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.session.poll_event()
    }

    /// The next upload: those of sends first, then the session's own.
    pub fn poll_upload(&mut self) -> Option<Upload> {
        self.planned
            .pop_front()
            .or_else(|| self.session.poll_upload())
            .map(Upload::from)
    }

    /// The next punch order.
    pub fn poll_punch_order(&mut self) -> Option<PunchOrder> {
        self.session.poll_punch_order()
    }

    /// The next direct peer given up because it left a message unacked for the ack
    /// timeout (its unacked messages were queued again for the relay).
    pub fn poll_stalled_link(&mut self) -> Option<HostId> {
        self.session.poll_stalled_link()
    }

    /// Whether sends to the direct peer `peer` wait for its acks (the driver waits).
    pub fn direct_window_full(&self, peer: HostId) -> bool {
        self.session.direct_window_full(peer)
    }

    /// The next peer whose pair ended while direct.
    pub fn poll_ended_pair(&mut self) -> Option<HostId> {
        self.session.poll_ended_pair()
    }

    /// Whether the driver must stop reading the direct connection to `peer`.
    pub fn direct_reading_paused(&self, peer: HostId) -> bool {
        self.session.direct_reading_paused(peer)
    }

    /// The next direct peer whose reading may go on again.
    pub fn poll_resumed_reader(&mut self) -> Option<HostId> {
        self.session.poll_resumed_reader()
    }

    /// Bytes held from `peer`: early arrivals and messages waiting for notices.
    pub fn held_bytes(&self, peer: HostId) -> usize {
        self.session.held_bytes(peer)
    }

    /// Bytes of early arrivals held in `peer`'s lanes.
    pub fn lane_held_bytes(&self, peer: HostId) -> usize {
        self.session.lane_held_bytes(peer)
    }

    /// Messages from `peer` waiting for a membership notice.
    pub fn awaiting_len(&self, peer: HostId) -> usize {
        self.session.awaiting_len(peer)
    }

    /// Membership notices taken in.
    pub fn notices_taken(&self) -> u64 {
        self.session.notices_taken()
    }

    /// Current peers, sorted.
    pub fn peers(&self) -> Vec<HostId> {
        self.session.peers()
    }

    /// The current pair with `peer`.
    pub fn pair_of(&self, peer: HostId) -> Option<PairId> {
        self.session.pair_of(peer)
    }

    /// Groups this client is in.
    pub fn groups(&self) -> Vec<GroupId> {
        self.session.groups()
    }

    /// Members of `group` as this client was told.
    pub fn group_members(&self, group: GroupId) -> Option<Vec<HostId>> {
        self.session.group_members(group)
    }
}
