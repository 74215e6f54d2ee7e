//! The sans-IO core of the client: what it knows of its groups and peers, the per-pair
//! lanes, and how a send becomes uploads.
//!
//! Frames from the server go in through [`Session::handle_frame`], frames from direct
//! peers through [`Session::handle_peer_frame`]; events for the application come out of
//! [`Session::poll_event`] and everything to send out of [`Session::poll_upload`].
//! [`Session::handle_timeout`] runs the timed work (acks due to direct peers, the direct
//! ack timeout, pings, clock requests, link reports) and [`Session::poll_timeout`] says
//! when it is next due. Direct-path reliability (frame ids, unacked messages, the order
//! frames left the direct queue, ack cadence, when to stop reading a peer, fallback to the
//! relay) is decided here too, per peer in `direct_reliability`. No IO; every method that
//! depends on time takes `now`.

use crate::clock::{ServerClock, ServerTime};
use crate::error::SendError;
use crate::event_batches::EventBatch;
use crate::events::{ClientEvent, PeerFault};
use crate::ping::PingTracker;
use crate::receive::{Accepted, LaneReceivers};
use crate::sequencing::{Ready, Rejected, Slot, HELD_ENTRY_COST};
use bytes::Bytes;
use direct_reliability::{DirectReliability, DATING_DELAY};
use peergroup_protocol::{
    Carrier, ClientDatagram, ClientToServer, DatagramLane, Delivery, GroupId, HostId, Lane,
    LaneCounters, Memberships, Notice, PairId, PairPath, Path, PathReason, PeerInfo, PeerToPeer,
    Priority, PunchOrder, RelayDest, RelayDests, SendOptions, ServerDatagram, ServerToClient,
    DATAGRAM_DELIVER_OVERHEAD, FRAME_HEADROOM, MAX_RELAY_DESTS,
};
use smallvec::{smallvec, SmallVec};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

/// The hasher of [`Session`]'s peers, whose iteration orders the uploads of one timer
/// run (pings, acks): randomly seeded, except with the feature `fuzzing`, whose harnesses
/// (the fuzz targets, the simulator in `sim/`) replay an input only if every run iterates
/// the same way.
#[cfg(not(feature = "fuzzing"))]
type PeerHasher = foldhash::fast::RandomState;
#[cfg(feature = "fuzzing")]
type PeerHasher = foldhash::fast::FixedState;

/// Where a message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Target {
    /// One host: a peer, the server ([`HostId::SERVER`]) or this client itself.
    Host(HostId),
    /// Every other member of a group this client is in (the server too, when it is a
    /// member), as this client knows the group when it sends: a member whose join notice
    /// has not arrived yet is not included (each destination needs its pair's sequence
    /// number). One upload, fanned out by the server.
    Group(GroupId),
    /// As [`Target::Group`], and delivered to this client as well, locally.
    GroupLoopback(GroupId),
    /// The server application.
    Server,
    /// Several hosts; duplicates are sent once.
    Hosts(Vec<HostId>),
}

/// One thing to send, ready to encode, with where it waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Upload {
    /// A notice for the server (acks, reports, clock requests): it leaves before queued
    /// messages.
    Control(ClientToServer),
    /// A message for the server's relay, queued by priority.
    Relay {
        /// The upload.
        frame: ClientToServer,
        /// Its priority in the upload queue.
        priority: Priority,
        /// Identifies the destination set, so a newer latest-value upload to the same
        /// destinations replaces a queued one.
        flow: u64,
        /// The [`Delivery::Latest`] key, if any.
        latest: Option<u64>,
    },
    /// In a QUIC datagram to the server.
    Datagram(ClientDatagram),
    /// A message on the direct connection to a peer, queued by priority.
    Peer {
        /// The peer.
        to: HostId,
        /// The frame.
        frame: PeerToPeer,
        /// Its priority in the peer's queue.
        priority: Priority,
        /// The [`Delivery::Latest`] key, if any.
        latest: Option<u64>,
        /// Names the frame among those kept for retransmission: the queue logs it when
        /// the frame goes out, and the driver hands the log over
        /// ([`Session::handle_direct_sent`]); the queue reports it when a newer latest
        /// value replaces it ([`Session::forget_replaced`]).
        id: u64,
    },
    /// A notice (an ack) on the direct connection to a peer.
    PeerControl {
        /// The peer.
        to: HostId,
        /// The frame.
        frame: PeerToPeer,
    },
    /// In a QUIC datagram on the direct connection to a peer (the server's datagram
    /// layout, with this client as the sender).
    PeerDatagram {
        /// The peer.
        to: HostId,
        /// The datagram.
        datagram: ServerDatagram,
    },
}

/// Messages and bytes one way on one path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathCounters {
    /// Messages.
    pub messages: u64,
    /// Payload bytes.
    pub bytes: u64,
}

/// Messages and bytes one way, per delivery mode (all paths together).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ModeCounters {
    /// [`Delivery::ReliableOrdered`].
    pub reliable_ordered: PathCounters,
    /// [`Delivery::ReliableUnordered`].
    pub reliable_unordered: PathCounters,
    /// [`Delivery::Unreliable`].
    pub unreliable: PathCounters,
    /// [`Delivery::UnreliableSequenced`].
    pub unreliable_sequenced: PathCounters,
    /// [`Delivery::Latest`].
    pub latest: PathCounters,
}

impl ModeCounters {
    fn count(&mut self, delivery: Delivery, payload: &Bytes) {
        let counters = match delivery {
            Delivery::ReliableOrdered => &mut self.reliable_ordered,
            Delivery::ReliableUnordered => &mut self.reliable_unordered,
            Delivery::Unreliable => &mut self.unreliable,
            Delivery::UnreliableSequenced => &mut self.unreliable_sequenced,
            Delivery::Latest { .. } => &mut self.latest,
            _ => return,
        };
        count(counters, payload);
    }
}

/// What the client measures about one peer (ProudNet's `GetP2PConnectionStats` and
/// `GetP2PRecentPingMs`, client side).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PeerStats {
    /// The path messages to this peer take now.
    pub path: Option<PairPath>,
    /// Smoothed RTT to the peer on the current path (through the server on the relay),
    /// from pings about once a second (RFC 6298 smoothing). `None` until the first pong
    /// after a path change.
    pub rtt: Option<Duration>,
    /// The last RTT sample.
    pub last_rtt: Option<Duration>,
    /// Fraction of the last 32 pings on the current path that got no answer (0.0 to 1.0).
    pub loss: Option<f32>,
    /// QUIC's smoothed RTT of the direct connection while it is up (`None` on the relay;
    /// the server's RTT is [`Client::server_rtt`](crate::Client::server_rtt)).
    pub direct_rtt: Option<Duration>,
    /// Sent through the relay.
    pub relay_sent: PathCounters,
    /// Received through the relay.
    pub relay_received: PathCounters,
    /// Sent on the direct path.
    pub direct_sent: PathCounters,
    /// Received on the direct path.
    pub direct_received: PathCounters,
    /// Sent, per delivery mode.
    pub sent_by_mode: ModeCounters,
    /// Delivered to the application, per delivery mode.
    pub delivered_by_mode: ModeCounters,
    /// Copies dropped because the other path had delivered them already (after a switch).
    pub duplicates_dropped: u64,
    /// Messages dropped because a newer one was delivered first: sequenced datagrams and
    /// latest values that arrived late.
    pub stale_dropped: u64,
    /// Reliable messages sent direct and not yet acknowledged.
    pub unacked: usize,
    /// Bytes waiting in the queue this peer's messages take now (the direct connection's,
    /// or the shared upload queue to the server on the relay).
    pub queued_bytes: usize,
    /// Punch orders received for this peer.
    pub punch_attempts: u32,
    /// Punch attempts that ended direct.
    pub punch_successes: u32,
    /// Messages from this peer addressed to a group that it or this client was not in,
    /// as this client had been told, when they arrived. The relay orders notices and
    /// messages so this never happens there; on the direct path a message can cross a
    /// membership change (see the README's "Membership").
    pub not_member_dropped: u64,
    /// Messages discarded because the peer broke its sequence: sent so far ahead of a gap
    /// that holding them would exceed [`MAX_HELD_ARRIVALS`] messages or
    /// [`MAX_HELD_ARRIVAL_BYTES`] bytes, or beyond the receive window on the relay, and
    /// everything from it after that ([`ClientEvent::PeerIgnored`]): a misbehaving peer.
    pub discarded: u64,
    /// Reliable ordered messages from this peer that arrived ahead of a gap in their
    /// channel and are held until the gap fills (early arrivals, not yet delivered).
    pub held: usize,
}

/// What a message carries to the application once delivered.
#[derive(Debug, Clone)]
struct Delivered {
    group: Option<GroupId>,
    /// The memberships a direct message to a group was sent under.
    memberships: Option<Memberships>,
    payload: Bytes,
    path: Path,
}

impl Delivered {
    fn relayed(group: Option<GroupId>, payload: Bytes) -> Self {
        Self {
            group,
            memberships: None,
            payload,
            path: Path::Relay,
        }
    }
}

/// A message in order for the application that waits for a membership notice (see
/// [`Session::membership_verdict`]).
#[derive(Debug)]
struct Awaiting {
    since: Instant,
    lane: Lane,
    message: Delivered,
}

/// What the client knows about one peer.
#[derive(Debug)]
struct Peer {
    pair: PairId,
    info: PeerInfo,
    sending: LaneCounters,
    receiving: LaneReceivers<Delivered>,
    path: PairPath,
    /// Frame ids, unacked messages, the order frames left the direct queue, and acks
    /// owed, on the current direct connection.
    direct: DirectReliability,
    ping: PingTracker,
    stats: PeerStats,
    /// Messages from this peer, in delivery order, held back until a membership notice
    /// they were sent under arrives; everything after the first waits behind it.
    awaiting: VecDeque<Awaiting>,
    /// Payload bytes in `awaiting`.
    awaiting_bytes: usize,
    /// This peer broke its sequence beyond the bounds ([`ClientEvent::PeerIgnored`]):
    /// everything from it is discarded until the pair ends.
    ignored: bool,
}

impl Peer {
    fn new(
        pair: PairId,
        info: PeerInfo,
        window: u64,
        ping_interval: Duration,
        now: Instant,
    ) -> Self {
        Self {
            pair,
            info,
            sending: LaneCounters::default(),
            receiving: LaneReceivers::new(window),
            path: PairPath::Relay,
            direct: DirectReliability::new(),
            ping: PingTracker::new(ping_interval, now),
            stats: PeerStats {
                path: Some(PairPath::Relay),
                ..PeerStats::default()
            },
            awaiting: VecDeque::new(),
            awaiting_bytes: 0,
            ignored: false,
        }
    }

    /// Whether as much as `window` allows is kept for this peer until it acks.
    fn window_full(&self, window: &DirectWindow) -> bool {
        self.direct.unacked_len() >= window.messages || self.direct.unacked_bytes() >= window.bytes
    }

    /// Bytes held from this peer: early arrivals waiting for a gap to fill, and messages
    /// waiting for a membership notice.
    fn held_bytes(&self) -> usize {
        self.receiving.held_bytes() + self.awaiting_bytes
    }

    /// Stops taking messages from this peer: drops everything held from it.
    fn ignore(&mut self, window: u64) {
        self.ignored = true;
        self.receiving = LaneReceivers::new(window);
        self.awaiting.clear();
        self.awaiting_bytes = 0;
    }
}

/// Bytes of early arrivals a receiver holds for one peer before it stops reading that
/// peer's direct connection until the relay catches up (QUIC flow control then pauses
/// the sender).
pub(crate) const MAX_HELD_BYTES: usize = 4 << 20;
/// Bytes of early arrivals held for one peer (payloads plus
/// [`crate::sequencing::HELD_ENTRY_COST`] each) past which the peer is
/// ignored ([`ClientEvent::PeerIgnored`]). The relay cannot be paused for one peer without
/// pausing all of them, and a well-behaved sender never gets this far ahead on it (the
/// direct path is paused at [`MAX_HELD_BYTES`]).
pub(crate) const MAX_HELD_BYTES_RELAYED: usize = 16 << 20;
/// Bytes of early arrivals held for one peer past which it is ignored, as
/// [`ClientEvent::PeerIgnored`] describes: 16 MiB, counting each message's payload plus
/// 160 bytes.
pub const MAX_HELD_ARRIVAL_BYTES: usize = MAX_HELD_BYTES_RELAYED;
/// Early arrivals held for one peer (reliable messages ahead of a gap in its sequence)
/// past which it is ignored, as [`ClientEvent::PeerIgnored`] describes: 65,536. A
/// well-behaved peer stays far below: its direct path is paused at 4 MiB held, which is
/// at most 26,214 messages.
pub const MAX_HELD_ARRIVALS: usize = 65_536;
/// How long a direct message may wait for the membership notice it was sent under; one
/// still waiting then was sent under a membership that never reached this client (a
/// broken or hostile peer), and is dropped.
pub(crate) const MEMBERSHIP_WAIT: Duration = Duration::from_secs(10);
/// Messages at most waiting for membership notices per peer; past it, or past
/// [`MAX_HELD_BYTES_RELAYED`] bytes of them, they are dropped.
pub(crate) const MAX_AWAITING: usize = 4_096;
/// How long an ended membership is remembered, to recognise direct messages sent under it
/// that are still on their way.
const ENDED_MEMBERSHIP_MEMORY: Duration = Duration::from_secs(60);
/// How often each peer's RTT and loss are reported to the server.
const LINK_REPORT_INTERVAL: Duration = Duration::from_secs(5);

/// Upper bounds of encoded sizes, used to split long destination lists.
const UPLOAD_FIXED_OVERHEAD: usize = 1 + 11 + 1 + 11 + 10 + 1 + 5 + 5;
const RELIABLE_DEST_LEN: usize = 20;
const DATAGRAM_DEST_LEN: usize = 20;

/// What a client keeps for one direct peer until the peer acks it
/// ([`DirectConfig`](crate::DirectConfig)'s `max_unacked_messages`, `max_unacked_bytes`
/// and `path_timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DirectWindow {
    /// Reliable messages sent direct and not acked, at most; sends to the peer wait while
    /// this many are kept.
    pub messages: usize,
    /// Their payload bytes, at most; sends to the peer wait while this many are kept.
    pub bytes: usize,
    /// A direct path whose oldest unacked message stays unacked this long is given up:
    /// its messages go back to the relay.
    pub ack_timeout: Duration,
}

impl Default for DirectWindow {
    fn default() -> Self {
        Self {
            messages: 16_384,
            bytes: 4 << 20,
            ack_timeout: Duration::from_secs(5),
        }
    }
}

/// How the periodic work is timed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SessionTiming {
    /// How often each peer on a direct path is pinged; `None` turns pings (and so RTT and
    /// loss) off.
    pub ping_interval: Option<Duration>,
    /// How often each peer on the relay is pinged (when pings are on).
    pub relay_ping_interval: Duration,
}

/// A group as this client has been told of it.
#[derive(Debug, Default)]
struct GroupView {
    /// Members and their membership numbers.
    members: BTreeMap<HostId, u32>,
    /// Members that left recently, with the membership that ended and when.
    left: HashMap<HostId, (u32, Instant)>,
    data: Bytes,
}

/// What becomes of a message to a group once it is next in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Deliver,
    /// Sender and receiver are not both members (as this client was told), or were not
    /// under the memberships the message was sent under.
    Drop,
    /// Sent under a membership this client has not been told of yet: the notice is on its
    /// way through the server.
    Wait,
}

/// The event queue's size when [`Session::take_events`] hands the old one over, events
/// (about 150 bytes each): room for a few frames' messages before it grows.
const EVENT_QUEUE_START: usize = 16;

/// The client's view of its groups and peers.
#[derive(Debug)]
pub(crate) struct Session {
    host_id: HostId,
    max_frame_len: usize,
    receive_window: u64,
    timing: SessionTiming,
    groups: BTreeMap<GroupId, GroupView>,
    /// This client's own memberships of groups it left recently, and when they ended.
    left_groups: HashMap<GroupId, (u32, Instant)>,
    /// Host data of this client and of every member of its groups.
    host_data: HashMap<HostId, Bytes>,
    /// Membership notices taken in; acked cumulatively.
    notices_taken: u64,
    /// Looked up for every message; foldhash, not SipHash (the ids are the server's).
    peers: HashMap<HostId, Peer, PeerHasher>,
    /// The server application's messages, numbered per lane like a peer's.
    from_server: LaneReceivers<Delivered>,
    /// Numbers this client's sequenced datagrams to the server application.
    to_server: LaneCounters,
    clock: ServerClock,
    next_link_report: Instant,
    events: VecDeque<ClientEvent>,
    uploads: VecDeque<Upload>,
    punch_orders: VecDeque<PunchOrder>,
    ended_pairs: VecDeque<HostId>,
    direct_window: DirectWindow,
    /// Direct peers given up because they left a message unacked too long; the driver
    /// closes their connections.
    stalled_links: VecDeque<HostId>,
    /// An ack made room in a direct window, or a peer left one, since the driver last
    /// asked: sends waiting on a window may go on.
    window_moved: bool,
    /// A deadline may have appeared earlier than the one [`Session::poll_timeout`] last
    /// gave, since the driver last asked ([`Session::take_timeout_moved`]): the driver's
    /// timer must look again. Set only where a deadline is made outside
    /// [`Session::handle_timeout`], so a steady stream of messages wakes the timer at
    /// most once per [`ACK_DELAY`](direct_reliability::ACK_DELAY) or [`DATING_DELAY`].
    timeout_moved: bool,
    /// The `now` of the last [`Session::handle_timeout`]: direct messages sent since are
    /// dated at the first run after it plus [`DATING_DELAY`].
    last_timer_run: Instant,
    /// Direct peers whose connection the driver must not read while this client holds
    /// more than [`MAX_HELD_BYTES`] from them (see [`Session::direct_reading_paused`]).
    paused_readers: BTreeSet<HostId>,
    /// Direct peers whose reading may go on again, for the driver
    /// ([`Session::poll_resumed_reader`]).
    resumed_readers: VecDeque<HostId>,
    /// The resume token and the count of frames read from the server (`resume.rs`).
    resume: resume::SessionResume,
}

impl Session {
    /// A session for `host_id`, whose host data the welcome gave as `data`, starting at
    /// `now`; reliable messages may arrive at most `receive_window` sequence numbers ahead
    /// of the next one due.
    pub fn new(
        host_id: HostId,
        data: Bytes,
        max_frame_len: u32,
        receive_window: u64,
        timing: SessionTiming,
        now: Instant,
    ) -> Self {
        Self {
            host_id,
            max_frame_len: max_frame_len as usize,
            receive_window,
            timing,
            groups: BTreeMap::new(),
            left_groups: HashMap::new(),
            host_data: HashMap::from([(host_id, data)]),
            notices_taken: 0,
            peers: HashMap::default(),
            from_server: LaneReceivers::new(receive_window),
            to_server: LaneCounters::default(),
            clock: ServerClock::new(now),
            next_link_report: now + LINK_REPORT_INTERVAL,
            events: VecDeque::new(),
            uploads: VecDeque::new(),
            punch_orders: VecDeque::new(),
            ended_pairs: VecDeque::new(),
            direct_window: DirectWindow::default(),
            stalled_links: VecDeque::new(),
            window_moved: false,
            timeout_moved: false,
            last_timer_run: now,
            paused_readers: BTreeSet::new(),
            resumed_readers: VecDeque::new(),
            resume: resume::SessionResume::default(),
        }
    }

    /// What is kept for each direct peer until it acks, at most (default
    /// [`DirectWindow::default`]).
    pub fn set_direct_window(&mut self, window: DirectWindow) {
        self.direct_window = DirectWindow {
            messages: window.messages.max(1),
            bytes: window.bytes.max(1),
            ack_timeout: window.ack_timeout,
        };
    }

    /// Whether sends to the direct peer `peer` must wait: as much as the direct window
    /// allows is kept for it until it acks (`false` for a peer on the relay).
    pub fn direct_window_full(&self, peer: HostId) -> bool {
        self.peers
            .get(&peer)
            .is_some_and(|p| p.path == PairPath::Direct && p.window_full(&self.direct_window))
    }

    /// Whether a direct window may have room it did not have (an ack came, a direct path
    /// or a pair ended) since the last call.
    pub fn take_window_moved(&mut self) -> bool {
        std::mem::take(&mut self.window_moved)
    }

    /// A direct peer given up because it left a message unacked for the ack timeout
    /// (its messages already went back to the relay): the driver closes its connection.
    pub fn poll_stalled_link(&mut self) -> Option<HostId> {
        self.stalled_links.pop_front()
    }

    /// Whether [`Session::poll_timeout`] may have moved earlier since the last call: the
    /// driver's timer, asleep until the deadline it was given, must look again. The
    /// driver asks after handling any input (a send, a frame, a path change).
    pub fn take_timeout_moved(&mut self) -> bool {
        std::mem::take(&mut self.timeout_moved)
    }

    /// Dates each direct peer's new unacked messages at `now`, and watches the oldest:
    /// one left unacked for [`DirectWindow::ack_timeout`] after it was dated means the
    /// peer reads but does not ack (or acks a trickle, or cannot keep up at all), so its
    /// direct path is given up, and what it did not ack goes through the relay, which
    /// needs no acks. Run by [`Session::handle_timeout`], which
    /// [`Session::poll_timeout`] brings within [`DATING_DELAY`] of a send.
    fn check_direct_acks(&mut self, now: Instant) {
        let timeout = self.direct_window.ack_timeout;
        let mut stalled = Vec::new();
        for (&host, peer) in &mut self.peers {
            if peer.path != PairPath::Direct {
                continue;
            }
            peer.direct.date(now);
            if peer
                .direct
                .unacked_deadline(timeout)
                .is_some_and(|deadline| now >= deadline)
            {
                stalled.push(host);
            }
        }
        for host in stalled {
            tracing::warn!(peer = %host, "a direct peer left a message unacked too long; back to the relay");
            self.set_relay(host, PathReason::DirectTimedOut, now);
            self.stalled_links.push_back(host);
        }
    }

    /// Acks, to each direct peer whose ack is due at `now`, every data frame it sent.
    fn send_due_acks(&mut self, now: Instant) {
        for (&host, peer) in &mut self.peers {
            if peer.path != PairPath::Direct {
                continue;
            }
            if let Some(received) = peer.direct.poll_due_ack(now) {
                self.uploads.push_back(Upload::PeerControl {
                    to: host,
                    frame: PeerToPeer::Ack { received },
                });
            }
        }
    }

    /// The largest payload a reliable send may carry, bytes.
    pub fn max_message_len(&self) -> usize {
        self.max_frame_len
            .saturating_sub(FRAME_HEADROOM as usize)
            .max(1)
    }

    /// The next event for the application.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// Takes up to `max` events, oldest first, in a batch: `spare`, an emptied batch to
    /// reuse (or an empty one that has not allocated). When all the events fit, the
    /// queue's allocation goes with them and `spare` becomes the queue (or, if it has
    /// too little room, a new queue sized to what was held, at least
    /// [`EVENT_QUEUE_START`] events): no event is moved again. A queue grown far past
    /// `max` by a burst is drained into `spare` instead, so a batch never carries a large
    /// allocation away. With no events, `spare` comes back empty.
    pub fn take_events(&mut self, max: usize, mut spare: EventBatch) -> EventBatch {
        let held = self.events.len();
        if held == 0 {
            return spare;
        }
        if held <= max && self.events.capacity() <= 2 * max.max(1) {
            if spare.capacity() < held.max(EVENT_QUEUE_START) {
                spare = EventBatch::with_capacity(held.max(EVENT_QUEUE_START));
            }
            return std::mem::replace(&mut self.events, spare);
        }
        spare.extend(self.events.drain(..held.min(max)));
        spare
    }

    /// Events produced and not yet taken.
    pub fn pending_events(&self) -> usize {
        self.events.len()
    }

    /// Queues an event the driver makes (the final `Disconnected`) behind all others.
    pub fn push_event(&mut self, event: ClientEvent) {
        self.events.push_back(event);
    }

    /// The next thing to send.
    pub fn poll_upload(&mut self) -> Option<Upload> {
        self.uploads.pop_front()
    }

    /// The next punch order for the driver, for a peer this session knows.
    pub fn poll_punch_order(&mut self) -> Option<PunchOrder> {
        self.punch_orders.pop_front()
    }

    /// A peer whose pair ended while its direct connection was up: the driver closes it.
    pub fn poll_ended_pair(&mut self) -> Option<HostId> {
        self.ended_pairs.pop_front()
    }

    /// Does the periodic work due at `now`: acks direct peers whose ack is due, dates
    /// new direct messages and gives up a direct path whose oldest message stayed
    /// unacked too long, pings each peer on its current path, asks the server for its
    /// clock, reports each peer's RTT and loss to the server.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.last_timer_run = now;
        self.release_awaiting(now);
        self.send_due_acks(now);
        self.check_direct_acks(now);
        self.forget_ended_memberships(now);
        self.confirm_server_frames(now);
        if let Some(token) = self.clock.poll_request(now) {
            self.uploads
                .push_back(Upload::Control(ClientToServer::TimeRequest { token }));
        }
        let report = now >= self.next_link_report;
        if report {
            self.next_link_report = now + LINK_REPORT_INTERVAL;
        }
        for (&host, peer) in &mut self.peers {
            if self.timing.ping_interval.is_some() {
                if let Some(id) = peer.ping.poll_ping(now) {
                    let lane = DatagramLane::Ping { id };
                    self.uploads
                        .push_back(probe_upload(self.host_id, host, peer, lane));
                }
            }
            if report && peer.ping.rtt().is_some() {
                let micros = |d: Duration| d.as_micros().min(u128::from(u32::MAX)) as u32;
                self.uploads
                    .push_back(Upload::Control(ClientToServer::LinkReport {
                        pair: peer.pair,
                        rtt_us: peer.ping.rtt().map(micros),
                        last_rtt_us: peer.ping.last_rtt().map(micros),
                        loss_permille: peer
                            .ping
                            .loss(now)
                            .map(|loss| (loss * 1000.0).round() as u16),
                    }));
            }
        }
        self.update_paused_readers();
    }

    /// When [`Session::handle_timeout`] next has work: the earliest of every deadline
    /// (pings, clock requests, link reports, messages waiting for a membership notice,
    /// acks due to direct peers, dating new direct messages, the oldest unacked direct
    /// message timing out). May be in the past: then the work is due at once. The
    /// driver sleeps until it, and looks again when [`Session::take_timeout_moved`] says
    /// so.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let pings = self
            .peers
            .values()
            .filter(|_| self.timing.ping_interval.is_some())
            .map(|p| p.ping.poll_timeout());
        // A message waiting for a membership notice is dropped once it waited too long.
        let awaiting = self
            .peers
            .values()
            .filter_map(|p| p.awaiting.front())
            .map(|front| front.since + MEMBERSHIP_WAIT);
        // A direct peer's oldest unacked message, once dated, times out.
        let timeout = self.direct_window.ack_timeout;
        let unacked = self
            .peers
            .values()
            .filter_map(|p| p.direct.unacked_deadline(timeout));
        // Frames received direct and not acked yet are acked when due.
        let acks = self
            .peers
            .values()
            .filter(|p| p.path == PairPath::Direct)
            .filter_map(|p| p.direct.ack_due_at());
        // Messages sent direct since the last run are dated by the next one.
        let dating = self
            .peers
            .values()
            .any(|p| p.path == PairPath::Direct && p.direct.has_undated())
            .then(|| self.last_timer_run + DATING_DELAY);
        pings
            .chain(awaiting)
            .chain(unacked)
            .chain(acks)
            .chain(dating)
            .chain([self.clock.poll_timeout(), self.next_link_report])
            .chain(self.confirm_timeout())
            .min()
    }

    /// The estimate of the server's clock at `now`, once a reply came.
    pub fn server_time(&self, now: Instant) -> Option<ServerTime> {
        self.clock.estimate(now)
    }

    /// Takes one frame from the server's main stream.
    ///
    /// # Errors
    /// A description of the violation when the server sent something out of place; the
    /// caller closes the connection with `ProtocolViolation`.
    pub fn handle_frame(&mut self, frame: ServerToClient, now: Instant) -> Result<(), String> {
        self.count_server_frame(now);
        let taken = self.take_frame(frame, now);
        // A relayed message may fill the gap a paused direct reader waits on.
        self.update_paused_readers();
        taken
    }

    fn take_frame(&mut self, frame: ServerToClient, now: Instant) -> Result<(), String> {
        match frame {
            ServerToClient::Welcome { .. } => return Err("a second welcome".into()),
            ServerToClient::Resumed { .. } => {
                return Err("a resume's answer on a connection that did not resume".into())
            }
            ServerToClient::ResumeToken { token, window_ms } => {
                self.handle_resume_token(token, Duration::from_millis(window_ms.into()))
            }
            // The driver forgets the uploads it covers (it keeps them, not the session).
            ServerToClient::Received { .. } => {}
            // A datagram carried as a frame (on a WebSocket): counted as a frame above,
            // taken as a datagram.
            ServerToClient::Datagram(datagram) => self.handle_datagram(datagram, now),
            ServerToClient::PeerUp { peer, pair, info } => {
                // A new pair starts on the relay. With pings off the tracker is never
                // polled; the interval does not matter then.
                let interval = self.timing.relay_ping_interval;
                self.peers.insert(
                    peer,
                    Peer::new(pair, info, self.receive_window, interval, now),
                );
                // Its first ping is due now.
                self.timeout_moved = true;
            }
            ServerToClient::PeerDown { peer, pair } => {
                if self.peers.get(&peer).is_some_and(|p| p.pair == pair) {
                    self.window_moved = true;
                    let ended = self.peers.remove(&peer);
                    if ended.is_some_and(|p| p.path == PairPath::Direct) {
                        self.ended_pairs.push_back(peer);
                    }
                }
            }
            ServerToClient::Notices(notices) => {
                self.notices_taken += notices.len() as u64;
                for notice in notices {
                    self.handle_notice(notice, now);
                }
                self.ack_notices();
                self.release_awaiting(now);
            }
            ServerToClient::Deliver {
                from,
                group,
                lane,
                seq,
                payload,
            } => {
                if let Some(peer) = self.peers.get_mut(&from) {
                    count(&mut peer.stats.relay_received, &payload);
                }
                self.receive(
                    from,
                    lane,
                    seq,
                    Slot::Message(Delivered::relayed(group, payload)),
                    now,
                )?
            }
            ServerToClient::Skipped { from, lane, seq } => {
                self.receive(from, lane, seq, Slot::Skipped, now)?
            }
            ServerToClient::FromServer {
                group,
                lane,
                seq,
                payload,
            } => {
                let size = payload.len();
                let slot = Slot::Message(Delivered::relayed(group, payload));
                match self.from_server.accept(lane, seq, slot, size) {
                    Ok(Accepted::Deliver(ready)) => {
                        for Delivered {
                            group,
                            payload,
                            path,
                            ..
                        } in ready
                        {
                            self.events.push_back(ClientEvent::Message {
                                from: HostId::SERVER,
                                group,
                                payload,
                                delivery: lane.delivery(),
                                channel: lane.channel(),
                                path,
                            });
                        }
                    }
                    Ok(Accepted::Duplicate | Accepted::Stale) => {}
                    Err(_) => {
                        return Err(format!("server message {seq} is beyond the receive window"))
                    }
                }
            }
            ServerToClient::PunchOrder(order)
                if self
                    .peers
                    .get(&order.peer)
                    .is_some_and(|p| p.pair == order.pair) =>
            {
                if let Some(peer) = self.peers.get_mut(&order.peer) {
                    peer.stats.punch_attempts += 1;
                }
                self.punch_orders.push_back(order);
            }
            // An order for a pair that has already ended.
            ServerToClient::PunchOrder(_) => {}
            ServerToClient::Refused {
                pair,
                group,
                reason,
            } => {
                let to = pair
                    .and_then(|pair| self.peers.iter().find(|(_, p)| p.pair == pair))
                    .map(|(host, _)| *host)
                    .unwrap_or(HostId::SERVER);
                self.events
                    .push_back(ClientEvent::SendFailed { to, group, reason });
            }
            ServerToClient::RefusedMany { group, refused } => {
                let hosts: HashMap<PairId, HostId> =
                    self.peers.iter().map(|(host, p)| (p.pair, *host)).collect();
                for (pair, reason) in refused {
                    let to = hosts.get(&pair).copied().unwrap_or(HostId::SERVER);
                    self.events
                        .push_back(ClientEvent::SendFailed { to, group, reason });
                }
            }
            ServerToClient::Time {
                token,
                server_time_us,
            } => self.clock.handle_reply(token, server_time_us, now),
        }
        Ok(())
    }

    /// Applies one membership notice and reports it to the application.
    fn handle_notice(&mut self, notice: Notice, now: Instant) {
        match notice {
            Notice::MemberJoined {
                group,
                member,
                membership,
                member_count,
                join_message,
                member_data,
                group_data,
            } => {
                let view = self.groups.entry(group).or_default();
                view.members.insert(member, membership);
                view.left.remove(&member);
                if let Some(data) = &group_data {
                    view.data = data.clone();
                }
                if member == self.host_id {
                    self.left_groups.remove(&group);
                }
                if member != HostId::SERVER {
                    self.host_data.insert(member, member_data.clone());
                }
                let peer = self.peers.get(&member).map(|p| p.info.clone());
                self.events.push_back(ClientEvent::MemberJoined {
                    group,
                    member,
                    member_count,
                    join_message,
                    member_data,
                    group_data,
                    peer,
                });
            }
            Notice::MemberLeft {
                group,
                member,
                member_count,
            } => {
                // The member's data stays on the event even when this was the last group
                // shared with it.
                let member_data = self.host_data.get(&member).cloned().unwrap_or_default();
                if member == self.host_id {
                    if let Some(view) = self.groups.remove(&group) {
                        if let Some(&mine) = view.members.get(&member) {
                            self.left_groups.insert(group, (mine, now));
                        }
                        for other in view.members.into_keys() {
                            self.forget_data_unless_shared(other);
                        }
                    }
                } else if let Some(view) = self.groups.get_mut(&group) {
                    if let Some(ended) = view.members.remove(&member) {
                        view.left.insert(member, (ended, now));
                    }
                    self.forget_data_unless_shared(member);
                }
                self.events.push_back(ClientEvent::MemberLeft {
                    group,
                    member,
                    member_count,
                    member_data,
                });
            }
            Notice::HostData { host, data } => {
                self.host_data.insert(host, data.clone());
                self.events
                    .push_back(ClientEvent::HostDataChanged { host, data });
            }
            Notice::GroupData { group, data } => {
                if let Some(view) = self.groups.get_mut(&group) {
                    view.data = data.clone();
                }
                self.events
                    .push_back(ClientEvent::GroupDataChanged { group, data });
            }
        }
    }

    /// Whether a message from `from` to `group`, sent under `memberships` (direct messages
    /// only), may be delivered now. A message on the relay needs sender and receiver to be
    /// members as this client was told: the server orders notices and messages so that
    /// always holds. A direct message passes no server, so it names the memberships it was
    /// sent under: it waits for a join notice still on its way, and is dropped if either
    /// membership has ended (the README's "Ordering around membership"). A direct message
    /// to no group (to this client alone) needs the two to share a group as this client
    /// was told, as the relay rule does; it waits for a join notice the same way.
    fn membership_verdict(
        &self,
        from: HostId,
        group: Option<GroupId>,
        memberships: Option<Memberships>,
        direct: bool,
    ) -> Verdict {
        let Some(group) = group else {
            // The relay rule for a message to this client alone: the server checked it on
            // the relay; a direct one passes no server, so it is checked here. A join
            // notice that would make the two share a group may still be on its way.
            return if !direct || self.shares_group(from) {
                Verdict::Deliver
            } else {
                Verdict::Wait
            };
        };
        let view = self.groups.get(&group);
        let Some(sent) = memberships else {
            let both = view.is_some_and(|v| {
                v.members.contains_key(&self.host_id) && v.members.contains_key(&from)
            });
            return if both {
                Verdict::Deliver
            } else {
                Verdict::Drop
            };
        };
        // Each side's membership as this client knows it: current, ended, or unknown.
        let mine = view
            .and_then(|v| v.members.get(&self.host_id))
            .map(|m| (*m, true))
            .or_else(|| self.left_groups.get(&group).map(|(m, _)| (*m, false)));
        let theirs = view.and_then(|v| {
            v.members
                .get(&from)
                .map(|m| (*m, true))
                .or_else(|| v.left.get(&from).map(|(m, _)| (*m, false)))
        });
        let judge = |sent: u32, known: Option<(u32, bool)>| match known {
            None => Verdict::Wait,
            Some((known, _)) if sent > known => Verdict::Wait,
            Some((known, current)) if sent == known && current => Verdict::Deliver,
            Some(_) => Verdict::Drop,
        };
        match (judge(sent.receiver, mine), judge(sent.sender, theirs)) {
            (Verdict::Drop, _) | (_, Verdict::Drop) => Verdict::Drop,
            (Verdict::Wait, _) | (_, Verdict::Wait) => Verdict::Wait,
            _ => Verdict::Deliver,
        }
    }

    /// Hands over, drops or holds messages from `from` that are next in order.
    fn deliver_in_order(
        &mut self,
        from: HostId,
        lane: Lane,
        ready: Ready<Delivered>,
        now: Instant,
    ) {
        for message in ready {
            let waiting = self
                .peers
                .get(&from)
                .is_some_and(|p| !p.awaiting.is_empty());
            let verdict = if waiting {
                Verdict::Wait
            } else {
                self.membership_verdict(
                    from,
                    message.group,
                    message.memberships,
                    message.path == Path::Direct,
                )
            };
            let Some(peer) = self.peers.get_mut(&from) else {
                return;
            };
            match verdict {
                Verdict::Deliver => hand_over(&mut self.events, peer, from, lane, message),
                Verdict::Drop => peer.stats.not_member_dropped += 1,
                // Bounded in count and in bytes: relayed messages wait here too (behind a
                // direct one), and the relay cannot be paused for one peer.
                Verdict::Wait
                    if peer.awaiting.len() >= MAX_AWAITING
                        || peer.awaiting_bytes + message.payload.len() > MAX_HELD_BYTES_RELAYED =>
                {
                    peer.stats.not_member_dropped += 1;
                }
                Verdict::Wait => {
                    // The first to wait brings the deadline of the wait.
                    self.timeout_moved |= peer.awaiting.is_empty();
                    peer.awaiting_bytes += message.payload.len();
                    peer.awaiting.push_back(Awaiting {
                        since: now,
                        lane,
                        message,
                    });
                }
            }
        }
    }

    /// Lets through what waited for membership notices that have now arrived, in order,
    /// and drops what waited longer than [`MEMBERSHIP_WAIT`].
    fn release_awaiting(&mut self, now: Instant) {
        let waiting: Vec<HostId> = self
            .peers
            .iter()
            .filter(|(_, p)| !p.awaiting.is_empty())
            .map(|(h, _)| *h)
            .collect();
        for from in waiting {
            while let Some(front) = self.peers.get(&from).and_then(|p| p.awaiting.front()) {
                let expired = now.saturating_duration_since(front.since) >= MEMBERSHIP_WAIT;
                let verdict = match self.membership_verdict(
                    from,
                    front.message.group,
                    front.message.memberships,
                    front.message.path == Path::Direct,
                ) {
                    Verdict::Wait if expired => Verdict::Drop,
                    verdict => verdict,
                };
                if verdict == Verdict::Wait {
                    break;
                }
                let Some(peer) = self.peers.get_mut(&from) else {
                    break;
                };
                let Some(Awaiting { lane, message, .. }) = peer.awaiting.pop_front() else {
                    break;
                };
                peer.awaiting_bytes -= message.payload.len();
                if verdict == Verdict::Drop {
                    peer.stats.not_member_dropped += 1;
                    continue;
                }
                // Its turn now: nothing before it holds it back any more.
                hand_over(&mut self.events, peer, from, lane, message);
            }
        }
    }

    /// Forgets ended memberships older than [`ENDED_MEMBERSHIP_MEMORY`].
    fn forget_ended_memberships(&mut self, now: Instant) {
        let fresh =
            |(_, at): &(u32, Instant)| now.saturating_duration_since(*at) < ENDED_MEMBERSHIP_MEMORY;
        self.left_groups.retain(|_, ended| fresh(ended));
        for view in self.groups.values_mut() {
            view.left.retain(|_, ended| fresh(ended));
        }
    }

    /// Keeps a host's data only while it is in one of this client's groups (and always
    /// this client's own), so the map stays as small as the groups.
    fn forget_data_unless_shared(&mut self, host: HostId) {
        if host != self.host_id && !self.groups.values().any(|v| v.members.contains_key(&host)) {
            self.host_data.remove(&host);
        }
    }

    /// Acks every notice taken in so far, in one frame: a queued, unsent ack is
    /// replaced, so the notices of many frames read in one go cost one ack.
    fn ack_notices(&mut self) {
        let ack = ClientToServer::Ack {
            notices: self.notices_taken,
        };
        match self.uploads.back_mut() {
            Some(Upload::Control(last @ ClientToServer::Ack { .. })) => *last = ack,
            _ => self.uploads.push_back(Upload::Control(ack)),
        }
    }

    /// Takes one datagram from the server.
    pub fn handle_datagram(&mut self, datagram: ServerDatagram, now: Instant) {
        self.receive_datagram(datagram, Path::Relay, now);
    }

    /// Takes one datagram from the direct connection to `from`.
    pub fn handle_peer_datagram(&mut self, from: HostId, datagram: ServerDatagram, now: Instant) {
        let ServerDatagram::Deliver { from: claimed, .. } = &datagram;
        // The connection's pinned identity names the sender; a different claim is a lie.
        if *claimed == from {
            self.receive_datagram(datagram, Path::Direct, now);
        }
    }

    fn receive_datagram(&mut self, datagram: ServerDatagram, path: Path, now: Instant) {
        let ServerDatagram::Deliver {
            from,
            group,
            lane,
            seq,
            payload,
        } = datagram;
        let Some(peer) = self.peers.get_mut(&from) else {
            if from == HostId::SERVER && self.from_server.accept_datagram(lane, seq) {
                self.events.push_back(ClientEvent::Message {
                    from,
                    group,
                    payload,
                    delivery: lane.delivery(),
                    channel: lane.channel(),
                    path,
                });
            }
            return;
        };
        if peer.ignored {
            peer.stats.discarded += 1;
            return;
        }
        match lane {
            DatagramLane::Ping { id } => {
                // Answered on the path it came by, so the RTT is that path's.
                let pong = DatagramLane::Pong { id };
                let upload = match path {
                    Path::Direct => direct_probe(self.host_id, from, pong),
                    _ => relay_probe(peer.pair, pong),
                };
                self.uploads.push_back(upload);
                return;
            }
            DatagramLane::Pong { id } => {
                let current = match path {
                    Path::Direct => PairPath::Direct,
                    _ => PairPath::Relay,
                };
                // A pong from the path the pair just left measures the wrong path.
                if current == peer.path {
                    peer.ping.handle_pong(id, now);
                }
                return;
            }
            DatagramLane::Plain | DatagramLane::Sequenced { .. } => {}
        }
        match path {
            Path::Direct => count(&mut peer.stats.direct_received, &payload),
            _ => count(&mut peer.stats.relay_received, &payload),
        }
        if !peer.receiving.accept_datagram(lane, seq) {
            peer.stats.stale_dropped += 1;
            return;
        }
        // A datagram is never held: one that crosses a membership change is lost, as
        // any datagram may be.
        if self.membership_verdict(from, group, None, path == Path::Direct) != Verdict::Deliver {
            if let Some(peer) = self.peers.get_mut(&from) {
                peer.stats.not_member_dropped += 1;
            }
            return;
        }
        let Some(peer) = self.peers.get_mut(&from) else {
            return;
        };
        let delivery = lane.delivery();
        peer.stats.delivered_by_mode.count(delivery, &payload);
        self.events.push_back(ClientEvent::Message {
            from,
            group,
            payload,
            delivery,
            channel: lane.channel(),
            path,
        });
    }

    /// Takes one frame from the direct connection to `from`.
    ///
    /// # Errors
    /// A description of the violation; the caller closes that direct connection.
    pub fn handle_peer_frame(
        &mut self,
        from: HostId,
        frame: PeerToPeer,
        now: Instant,
    ) -> Result<(), String> {
        match frame {
            PeerToPeer::Data {
                group,
                memberships,
                lane,
                seq,
                payload,
            } => {
                let Some(peer) = self.peers.get_mut(&from) else {
                    return Ok(());
                };
                count(&mut peer.stats.direct_received, &payload);
                let message = Delivered {
                    group,
                    memberships,
                    payload,
                    path: Path::Direct,
                };
                self.receive(from, lane, seq, Slot::Message(message), now)?;
                if let Some(peer) = self.peers.get_mut(&from) {
                    let idle = peer.direct.ack_due_at().is_none();
                    if let Some(received) = peer.direct.handle_data(now) {
                        self.uploads.push_back(Upload::PeerControl {
                            to: from,
                            frame: PeerToPeer::Ack { received },
                        });
                    }
                    self.timeout_moved |= idle && peer.direct.ack_due_at().is_some();
                }
                self.pause_reader_if_over(from);
                Ok(())
            }
            // The driver hands acks to `handle_direct_ack`, after the queue's log.
            PeerToPeer::Ack { .. } => Err("an ack outside handle_direct_ack".into()),
            PeerToPeer::Hello { .. } => Err("a second hello on a direct connection".into()),
        }
    }

    /// The writer of the direct queue to `peer` took these tracked data frames (the ids
    /// of [`Upload::Peer`]) out of the queue, in this order: acks count frames in that
    /// order, which only the queue knows, for it schedules by priority and replaces
    /// latest values. The driver hands the log over before each ack it hands in.
    pub fn handle_direct_sent(&mut self, peer: HostId, ids: impl IntoIterator<Item = u64>) {
        if let Some(peer) = self.peers.get_mut(&peer) {
            peer.direct.handle_left_queue(ids);
        }
    }

    /// An ack from the direct peer `from`: it has taken in the first `received` data
    /// frames of the connection, counted in the order they left the direct queue (as
    /// [`Session::handle_direct_sent`] reported).
    ///
    /// # Errors
    /// When the peer acks more frames than went out; the caller closes that direct
    /// connection.
    pub fn handle_direct_ack(&mut self, from: HostId, received: u64) -> Result<(), String> {
        let Some(peer) = self.peers.get_mut(&from) else {
            return Ok(());
        };
        if peer.direct.handle_ack(received)? {
            self.window_moved = true;
            peer.stats.unacked = peer.direct.unacked_len();
        }
        self.pause_reader_if_over(from);
        Ok(())
    }

    /// A newer latest value replaced frame `id` in the direct queue to `peer` before it
    /// went out: it will never be acked, and the newer value is kept in its place.
    pub fn forget_replaced(&mut self, peer: HostId, id: u64) {
        if let Some(peer) = self.peers.get_mut(&peer) {
            peer.direct.forget_replaced(id);
            peer.stats.unacked = peer.direct.unacked_len();
            self.window_moved = true;
        }
    }

    /// Acks everything received from direct peers and not acked yet, due or not (the
    /// driver leaves this to [`Session::handle_timeout`], when each ack is due).
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn flush_acks(&mut self) {
        for (&host, peer) in &mut self.peers {
            if peer.path != PairPath::Direct {
                continue;
            }
            if let Some(received) = peer.direct.take_ack() {
                self.uploads.push_back(Upload::PeerControl {
                    to: host,
                    frame: PeerToPeer::Ack { received },
                });
            }
        }
    }

    /// Whether the driver must stop reading the direct connection to `peer`: this client
    /// holds more than [`MAX_HELD_BYTES`] from it, waiting for a gap the relay has not
    /// filled yet (or for membership notices). Not reading lets QUIC flow control pause
    /// the sender, so held memory stays bounded; [`Session::poll_resumed_reader`] says
    /// when to read again.
    pub fn direct_reading_paused(&self, peer: HostId) -> bool {
        self.paused_readers.contains(&peer)
    }

    /// A direct peer whose reading was paused and may go on: what was held from it
    /// shrank to [`MAX_HELD_BYTES`] or less, or its direct path or pair ended. The
    /// driver wakes that peer's reader.
    pub fn poll_resumed_reader(&mut self) -> Option<HostId> {
        self.resumed_readers.pop_front()
    }

    /// After a frame read from the direct connection to `from`: pauses that reader while
    /// more than [`MAX_HELD_BYTES`] are held from the peer (relayed messages waiting
    /// behind a direct one count too, so any frame read may find it over).
    fn pause_reader_if_over(&mut self, from: HostId) {
        if self
            .peers
            .get(&from)
            .is_some_and(|p| p.held_bytes() > MAX_HELD_BYTES)
        {
            self.paused_readers.insert(from);
        }
    }

    /// Moves paused readers whose reason is gone to `resumed_readers`. Run after any
    /// input that can shrink what is held (relayed frames, notices, timeouts, path and
    /// pair changes); costs nothing while no reader is paused.
    fn update_paused_readers(&mut self) {
        if self.paused_readers.is_empty() {
            return;
        }
        let peers = &self.peers;
        let resumed = &mut self.resumed_readers;
        self.paused_readers.retain(|host| {
            let still = peers
                .get(host)
                .is_some_and(|p| p.path == PairPath::Direct && p.held_bytes() > MAX_HELD_BYTES);
            if !still {
                resumed.push_back(*host);
            }
            still
        });
    }

    /// The direct connection to `peer` is up: its messages take it from now on.
    pub fn set_direct(&mut self, peer: HostId, rtt: Duration, now: Instant) -> bool {
        let Some(state) = self.peers.get_mut(&peer) else {
            return false;
        };
        state.path = PairPath::Direct;
        state.direct.restart();
        // With pings off the tracker is never polled; the interval does not matter then.
        let interval = self
            .timing
            .ping_interval
            .unwrap_or(self.timing.relay_ping_interval);
        state.ping.reset(interval, now);
        // Its first ping on the new path is due now.
        self.timeout_moved = true;
        state.stats.path = Some(PairPath::Direct);
        state.stats.direct_rtt = Some(rtt);
        state.stats.punch_successes += 1;
        let pair = state.pair;
        self.uploads
            .push_back(Upload::Control(ClientToServer::PathReport {
                pair,
                path: PairPath::Direct,
                reason: PathReason::Punched,
            }));
        self.events.push_back(ClientEvent::PathChanged {
            peer,
            path: PairPath::Direct,
            rtt: Some(rtt),
            reason: PathReason::Punched,
        });
        true
    }

    /// The direct connection to `peer` is gone: its messages take the relay again, and
    /// reliable ones the peer has not acked are queued again for the relay with their
    /// original lanes and numbers (the peer drops any it already has).
    pub fn set_relay(&mut self, peer: HostId, reason: PathReason, now: Instant) {
        let Some(state) = self.peers.get_mut(&peer) else {
            return;
        };
        if state.path != PairPath::Direct {
            return;
        }
        state.path = PairPath::Relay;
        state.ping.reset(self.timing.relay_ping_interval, now);
        state.stats.path = Some(PairPath::Relay);
        state.stats.direct_rtt = None;
        let pair = state.pair;
        self.window_moved = true;
        // Its first ping on the relay is due now.
        self.timeout_moved = true;
        for unacked in state.direct.take_unacked() {
            count(&mut state.stats.relay_sent, &unacked.payload);
            self.uploads.push_back(Upload::Relay {
                frame: ClientToServer::Relay {
                    group: unacked.group,
                    to_server: false,
                    lane: unacked.lane,
                    priority: unacked.priority,
                    dests: smallvec![RelayDest {
                        pair,
                        seq: unacked.seq,
                    }],
                    payload: unacked.payload,
                },
                priority: unacked.priority,
                flow: relay_flow(unacked.lane, &[pair], None, false),
                latest: unacked.lane.latest_key(),
            });
        }
        state.stats.unacked = 0;
        self.uploads
            .push_back(Upload::Control(ClientToServer::PathReport {
                pair,
                path: PairPath::Relay,
                reason,
            }));
        self.events.push_back(ClientEvent::PathChanged {
            peer,
            path: PairPath::Relay,
            rtt: None,
            reason,
        });
        // Its direct reader, if paused, must go on to see its connection end.
        self.update_paused_readers();
    }

    /// What this client measures about a peer at `now`.
    pub fn peer_stats(&self, peer: HostId, now: Instant) -> Option<PeerStats> {
        self.peers.get(&peer).map(|p| PeerStats {
            held: p.receiving.held(),
            rtt: p.ping.rtt(),
            last_rtt: p.ping.last_rtt(),
            loss: p.ping.loss(now),
            ..p.stats
        })
    }

    /// The path messages to `peer` take now.
    pub fn path_of(&self, peer: HostId) -> Option<PairPath> {
        self.peers.get(&peer).map(|p| p.path)
    }

    /// The host whose identity certificate has this fingerprint, among current peers.
    pub fn peer_by_identity(
        &self,
        identity: &peergroup_protocol::Fingerprint,
    ) -> Option<(HostId, PairId)> {
        self.peers
            .iter()
            .find(|(_, p)| p.info.identity == *identity)
            .map(|(host, p)| (*host, p.pair))
    }

    /// Bytes held from `peer` waiting for gaps to fill.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn held_bytes(&self, peer: HostId) -> usize {
        self.peers.get(&peer).map_or(0, Peer::held_bytes)
    }

    /// Messages from `peer` waiting for a membership notice.
    #[cfg(feature = "fuzzing")]
    pub fn awaiting_len(&self, peer: HostId) -> usize {
        self.peers.get(&peer).map_or(0, |p| p.awaiting.len())
    }

    /// Bytes of relayed and direct early arrivals from `peer` held in its lanes, without
    /// the messages waiting for membership notices.
    #[cfg(feature = "fuzzing")]
    pub fn lane_held_bytes(&self, peer: HostId) -> usize {
        self.peers
            .get(&peer)
            .map_or(0, |p| p.receiving.held_bytes())
    }

    /// The current pair with `peer`.
    pub fn pair_of(&self, peer: HostId) -> Option<PairId> {
        self.peers.get(&peer).map(|p| p.pair)
    }

    fn receive(
        &mut self,
        from: HostId,
        lane: Lane,
        seq: u64,
        slot: Slot<Delivered>,
        now: Instant,
    ) -> Result<(), String> {
        let Some(peer) = self.peers.get_mut(&from) else {
            return Err(format!("a message from {from}, which is not a peer"));
        };
        let (size, relayed) = match &slot {
            Slot::Message(message) => (message.payload.len(), message.path == Path::Relay),
            Slot::Skipped => (0, true),
        };
        if peer.ignored {
            peer.stats.discarded += 1;
            return Ok(());
        }
        let early = peer.receiving.is_early(lane, seq);
        let charged = size.saturating_add(HELD_ENTRY_COST);
        if early
            && (peer.receiving.held() >= MAX_HELD_ARRIVALS
                || peer.receiving.held_bytes() + charged > MAX_HELD_BYTES_RELAYED)
        {
            // Relayed messages run ahead of a live direct path only by what is in flight,
            // and the driver stops reading a direct path long before this; this far ahead,
            // the sender skipped numbers on purpose to make us hold its messages.
            let fault = PeerFault::TooManyEarlyArrivals {
                held: peer.receiving.held(),
                held_bytes: peer.receiving.held_bytes(),
            };
            self.ignore_peer(from, fault);
            return Ok(());
        }
        match peer.receiving.accept(lane, seq, slot, size) {
            Ok(Accepted::Deliver(ready)) => {
                self.deliver_in_order(from, lane, ready, now);
                Ok(())
            }
            // A message sent again after a path switch, which the other path delivered.
            Ok(Accepted::Duplicate) => {
                peer.stats.duplicates_dropped += 1;
                Ok(())
            }
            Ok(Accepted::Stale) => {
                peer.stats.stale_dropped += 1;
                Ok(())
            }
            // On the relay a broken sequence is the peer's fault, and the server
            // connection serves every other peer too: ignore the peer, keep the
            // connection.
            Err(Rejected::BeyondWindow | Rejected::Duplicate) if relayed => {
                self.ignore_peer(from, PeerFault::BeyondWindow { seq });
                Ok(())
            }
            Err(_) => Err(format!(
                "sequence {seq} from {from} is beyond the receive window"
            )),
        }
    }

    /// Stops taking messages from `from`, which broke its sequence ([`PeerFault`]): what
    /// was held from it is dropped, and the application told once.
    fn ignore_peer(&mut self, from: HostId, fault: PeerFault) {
        let Some(peer) = self.peers.get_mut(&from) else {
            return;
        };
        peer.stats.discarded += 1;
        if peer.ignored {
            return;
        }
        peer.ignore(self.receive_window);
        tracing::warn!(%from, %fault, "ignoring a peer that broke its sequence");
        self.events
            .push_back(ClientEvent::PeerIgnored { peer: from, fault });
    }

    /// The queues a send would use, without assigning anything: whether it needs the
    /// upload queue to the server, and which direct peers' queues.
    ///
    /// # Errors
    /// As [`Session::plan`], for the target.
    pub fn route(&self, target: &Target) -> Result<Route, SendError> {
        let resolved = self.resolve(target)?;
        let (direct, relayed): (Hosts, Hosts) = resolved
            .peers
            .iter()
            .copied()
            .partition(|&host| self.takes_direct(host, resolved.group));
        Ok(Route {
            server: resolved.to_server || !relayed.is_empty(),
            direct,
            relayed,
            group: resolved.group,
            to_server: resolved.to_server,
            loopback: resolved.loopback,
        })
    }

    /// Whether a message to `host` goes direct: only on a direct path, and only within a
    /// shared group. A lingering pair keeps its direct link, but only a shared group
    /// entitles a message to skip the server: otherwise it takes the relay, where the
    /// server applies its rule.
    fn takes_direct(&self, host: HostId, group: Option<GroupId>) -> bool {
        // The path first: the group scan is the dearer test, and a relayed peer (every
        // peer until its punch succeeds) never needs it.
        self.peers
            .get(&host)
            .is_some_and(|p| p.path == PairPath::Direct)
            && (group.is_some() || self.shares_group(host))
    }

    /// [`Session::route`] then [`Session::plan`], for callers that need not look at the
    /// route in between.
    ///
    /// # Errors
    /// As both.
    #[cfg(test)]
    pub fn plan_send(
        &mut self,
        target: &Target,
        payload: Bytes,
        options: SendOptions,
        max_datagram: Option<usize>,
    ) -> Result<Vec<Upload>, SendError> {
        let route = self.route(target)?;
        self.plan(route, payload, options, max_datagram)
            .map(Uploads::into_vec)
    }

    /// Turns a routed send into uploads, assigning lane numbers per destination pair, and
    /// queues a loopback delivery if asked for. `max_datagram` is the smallest datagram
    /// size of the paths the send takes (`None` if datagrams are off). The route must be
    /// fresh: taken under the same lock, with nothing in between.
    ///
    /// # Errors
    /// [`SendError`] for a payload that does not fit; nothing is assigned or queued then.
    pub fn plan(
        &mut self,
        route: Route,
        mut payload: Bytes,
        options: SendOptions,
        max_datagram: Option<usize>,
    ) -> Result<Uploads, SendError> {
        let Route {
            direct,
            relayed,
            group,
            to_server,
            loopback,
            ..
        } = route;
        let carrier = options.carrier();
        // Check the size before any sequence number is used.
        let limit = match carrier {
            Carrier::Datagram(_) => {
                let Some(max) = max_datagram else {
                    // The server connection does not carry datagrams at all.
                    return Err(SendError::TooLargeForDatagram {
                        len: payload.len(),
                        max: 0,
                    });
                };
                let fits = max
                    .saturating_sub(UPLOAD_FIXED_OVERHEAD + DATAGRAM_DEST_LEN)
                    .min(max.saturating_sub(DATAGRAM_DELIVER_OVERHEAD));
                if payload.len() > fits {
                    return Err(SendError::TooLargeForDatagram {
                        len: payload.len(),
                        max: fits,
                    });
                }
                max
            }
            Carrier::Stream(_) => {
                let max = self.max_message_len();
                if payload.len() > max {
                    return Err(SendError::TooLarge {
                        len: payload.len(),
                        max,
                    });
                }
                self.max_frame_len
            }
        };

        if loopback {
            self.events.push_back(ClientEvent::Message {
                from: self.host_id,
                group,
                payload: payload.clone(),
                delivery: options.delivery,
                // As a remote receiver would see it: 0 for modes without channels.
                channel: carrier.channel(),
                path: Path::Loopback,
            });
        }
        let mut uploads = Uploads::new();
        // Peers on a direct path get their copy there; the rest share one relay upload. No
        // fallback to the relay for a busy direct path: the queue paces the sender instead,
        // and the two paths never drift far apart in sequence.
        for host in direct {
            // The memberships this is sent under, so the receiver can order it against the
            // membership notices it gets from the server.
            let memberships = group.and_then(|group| {
                let members = &self.groups.get(&group)?.members;
                Some(Memberships {
                    sender: *members.get(&self.host_id)?,
                    receiver: *members.get(&host)?,
                })
            });
            let peer = self.peers.get_mut(&host).expect("routed peers exist");
            count(&mut peer.stats.direct_sent, &payload);
            peer.stats.sent_by_mode.count(options.delivery, &payload);
            match carrier {
                Carrier::Datagram(lane) => uploads.push(Upload::PeerDatagram {
                    to: host,
                    datagram: ServerDatagram::Deliver {
                        from: self.host_id,
                        group,
                        lane,
                        seq: peer.sending.next_datagram(lane),
                        payload: payload.clone(),
                    },
                }),
                Carrier::Stream(lane) => {
                    let seq = peer.sending.next(lane);
                    // The first message since the last timer run brings the dating
                    // deadline; later ones share it.
                    self.timeout_moved |= !peer.direct.has_undated();
                    let id = peer
                        .direct
                        .track(group, lane, seq, payload.clone(), options.priority);
                    peer.stats.unacked = peer.direct.unacked_len();
                    uploads.push(Upload::Peer {
                        to: host,
                        frame: PeerToPeer::Data {
                            group,
                            memberships,
                            lane,
                            seq,
                            payload: payload.clone(),
                        },
                        priority: options.priority,
                        latest: lane.latest_key(),
                        id,
                    });
                }
            }
        }
        let dest_len = match carrier {
            Carrier::Datagram(_) => DATAGRAM_DEST_LEN,
            Carrier::Stream(_) => RELIABLE_DEST_LEN,
        };
        // The server refuses an upload naming more than MAX_RELAY_DESTS destinations.
        let per_upload = (limit.saturating_sub(UPLOAD_FIXED_OVERHEAD + payload.len()) / dest_len)
            .clamp(1, MAX_RELAY_DESTS);
        let mut to_server = to_server;
        let mut chunks = relayed.chunks(per_upload).peekable();
        if chunks.peek().is_none() && !to_server {
            return Ok(uploads);
        }
        loop {
            let chunk = chunks.next().unwrap_or(&[]);
            let last = chunks.peek().is_none();
            // The last upload takes the payload itself: the first clone of a `Bytes` made
            // from a `Vec` allocates, and every clone costs an atomic count.
            let body = if last {
                std::mem::take(&mut payload)
            } else {
                payload.clone()
            };
            let mut dests = RelayDests::with_capacity(chunk.len());
            for host in chunk {
                let peer = self.peers.get_mut(host).expect("routed peers exist");
                count(&mut peer.stats.relay_sent, &body);
                peer.stats.sent_by_mode.count(options.delivery, &body);
                let seq = match carrier {
                    Carrier::Datagram(lane) => peer.sending.next_datagram(lane),
                    Carrier::Stream(lane) => peer.sending.next(lane),
                };
                dests.push(RelayDest {
                    pair: peer.pair,
                    seq,
                });
            }
            let upload = match carrier {
                Carrier::Datagram(lane) => Upload::Datagram(ClientDatagram::Relay {
                    group,
                    to_server,
                    lane,
                    server_seq: if to_server {
                        self.to_server.next_datagram(lane)
                    } else {
                        0
                    },
                    dests,
                    payload: body,
                }),
                Carrier::Stream(lane) => {
                    let flow = match lane {
                        Lane::Latest { .. } => {
                            let pairs: Vec<PairId> = dests.iter().map(|d| d.pair).collect();
                            relay_flow(lane, &pairs, group, to_server)
                        }
                        // Saves collecting the pairs.
                        _ => 0,
                    };
                    Upload::Relay {
                        flow,
                        frame: ClientToServer::Relay {
                            group,
                            to_server,
                            lane,
                            priority: options.priority,
                            dests,
                            payload: body,
                        },
                        // Messages for the server application are delivered to it in the
                        // order they arrive, so they must not overtake each other here.
                        priority: if to_server {
                            Priority::Medium
                        } else {
                            options.priority
                        },
                        latest: lane.latest_key(),
                    }
                }
            };
            uploads.push(upload);
            to_server = false;
            if last {
                return Ok(uploads);
            }
        }
    }

    /// Whether this client shares a group with `host`, as far as it has been told.
    fn shares_group(&self, host: HostId) -> bool {
        self.groups.values().any(|view| {
            view.members.contains_key(&host) && view.members.contains_key(&self.host_id)
        })
    }

    fn resolve(&self, target: &Target) -> Result<Resolved, SendError> {
        let mut resolved = Resolved::default();
        let add_host = |resolved: &mut Resolved, host: HostId| -> Result<(), SendError> {
            if host == HostId::SERVER {
                resolved.to_server = true;
            } else if host == self.host_id {
                resolved.loopback = true;
            } else if self.peers.contains_key(&host) {
                resolved.peers.push(host);
            } else {
                return Err(SendError::NotAPeer(host));
            }
            Ok(())
        };
        match target {
            Target::Server => resolved.to_server = true,
            Target::Host(host) => add_host(&mut resolved, *host)?,
            Target::Hosts(hosts) => {
                let unique: BTreeSet<HostId> = hosts.iter().copied().collect();
                for host in unique {
                    add_host(&mut resolved, host)?;
                }
            }
            Target::Group(group) | Target::GroupLoopback(group) => {
                let members = self
                    .groups
                    .get(group)
                    .map(|view| &view.members)
                    .filter(|m| m.contains_key(&self.host_id))
                    .ok_or(SendError::NotInGroup(*group))?;
                resolved.group = Some(*group);
                for &member in members.keys() {
                    if member == HostId::SERVER {
                        resolved.to_server = true;
                    } else if member != self.host_id && self.peers.contains_key(&member) {
                        resolved.peers.push(member);
                    }
                }
                resolved.loopback = matches!(target, Target::GroupLoopback(_));
            }
        }
        Ok(resolved)
    }

    // ---- queries -------------------------------------------------------------------------

    /// Groups this client is in.
    pub fn groups(&self) -> Vec<GroupId> {
        self.groups
            .iter()
            .filter(|(_, view)| view.members.contains_key(&self.host_id))
            .map(|(group, _)| *group)
            .collect()
    }

    /// Members of a group this client is in, as it has been told.
    pub fn group_members(&self, group: GroupId) -> Option<Vec<HostId>> {
        self.groups
            .get(&group)
            .map(|view| view.members.keys().copied().collect())
    }

    /// A group's data, as this client was last told.
    pub fn group_data(&self, group: GroupId) -> Option<Bytes> {
        self.groups
            .get(&group)
            .filter(|view| view.members.contains_key(&self.host_id))
            .map(|view| view.data.clone())
    }

    /// The host data of this client or of a member of one of its groups.
    pub fn host_data(&self, host: HostId) -> Option<Bytes> {
        self.host_data.get(&host).cloned()
    }

    /// Membership notices taken in since the connection started.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn notices_taken(&self) -> u64 {
        self.notices_taken
    }

    /// What the server vouched for about a peer.
    pub fn peer_info(&self, peer: HostId) -> Option<PeerInfo> {
        self.peers.get(&peer).map(|p| p.info.clone())
    }

    /// Every current peer.
    pub fn peers(&self) -> Vec<HostId> {
        let mut peers: Vec<HostId> = self.peers.keys().copied().collect();
        peers.sort();
        peers
    }
}

/// The hosts of one send: inline up to a group of eight peers, so routing the usual send
/// allocates nothing (it runs under the client's lock, for every message).
pub(crate) type Hosts = SmallVec<[HostId; 8]>;

/// The uploads one send makes: one relay upload inline (the usual case), more spill to
/// the heap (a direct copy per peer, or a relay upload per `MAX_RELAY_DESTS` peers).
pub(crate) type Uploads = SmallVec<[Upload; 1]>;

/// Where a send goes, decided once: which queues it needs (for back-pressure) and then
/// what [`Session::plan`] uploads.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Route {
    /// Whether it needs the upload queue to the server (relay or server application).
    pub server: bool,
    /// Peers whose copy goes on their direct path, each through its own queue.
    pub direct: Hosts,
    /// Peers whose copy goes through the relay.
    relayed: Hosts,
    group: Option<GroupId>,
    to_server: bool,
    loopback: bool,
}

/// Gives a message from `peer` to the application, counting it.
fn hand_over(
    events: &mut VecDeque<ClientEvent>,
    peer: &mut Peer,
    from: HostId,
    lane: Lane,
    message: Delivered,
) {
    let delivery = lane.delivery();
    peer.stats
        .delivered_by_mode
        .count(delivery, &message.payload);
    events.push_back(ClientEvent::Message {
        from,
        group: message.group,
        payload: message.payload,
        delivery,
        channel: lane.channel(),
        path: message.path,
    });
}

fn count(counters: &mut PathCounters, payload: &Bytes) {
    counters.messages += 1;
    counters.bytes += payload.len() as u64;
}

/// The flow of a relay upload on `lane`: 0 unless it carries a latest value, for only a
/// latest value is ever replaced by flow, and hashing costs on every send.
fn relay_flow(lane: Lane, pairs: &[PairId], group: Option<GroupId>, to_server: bool) -> u64 {
    match lane {
        Lane::Latest { .. } => flow_of(pairs, group, to_server),
        _ => 0,
    }
}

/// Names a destination set, so that only a latest-value upload to the very same
/// destinations replaces a queued one (a subset would lose some receiver its value).
fn flow_of(pairs: &[PairId], group: Option<GroupId>, to_server: bool) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    pairs.hash(&mut hasher);
    group.hash(&mut hasher);
    to_server.hash(&mut hasher);
    hasher.finish()
}

/// A ping or pong to `peer` on its current path.
fn probe_upload(me: HostId, host: HostId, peer: &Peer, lane: DatagramLane) -> Upload {
    match peer.path {
        PairPath::Direct => direct_probe(me, host, lane),
        PairPath::Relay => relay_probe(peer.pair, lane),
    }
}

fn direct_probe(me: HostId, to: HostId, lane: DatagramLane) -> Upload {
    Upload::PeerDatagram {
        to,
        datagram: ServerDatagram::Deliver {
            from: me,
            group: None,
            lane,
            seq: 0,
            payload: Bytes::new(),
        },
    }
}

fn relay_probe(pair: PairId, lane: DatagramLane) -> Upload {
    Upload::Datagram(ClientDatagram::Relay {
        group: None,
        to_server: false,
        lane,
        server_seq: 0,
        dests: smallvec![RelayDest { pair, seq: 0 }],
        payload: Bytes::new(),
    })
}

#[derive(Debug, Default)]
struct Resolved {
    group: Option<GroupId>,
    to_server: bool,
    loopback: bool,
    peers: Hosts,
}

mod direct_reliability;
mod resume;
#[cfg(test)]
mod tests;
