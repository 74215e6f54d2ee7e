//! The state every part of the driver shares: [`Inner`], one per client, holding the
//! [`Core`] under the client's one lock, and the types of the direct paths and punches
//! that live in the core ([`DirectLink`], [`PunchHandle`]).
//!
//! It sits below everything else in the driver and imports none of it, so the tasks that
//! read and write (the server reader, the direct paths, the timer) and the code that acts
//! on the session's output (`flush.rs`) all import from here and never from each other.
//! `Inner`'s methods live with their concern: carrying out the session's output in
//! `flush.rs`, handing events to the application in `event_pipe.rs`.

use crate::config::{DirectConfig, TransportChoice};
use crate::driver::wire::{ServerSend, ServerWire};
use crate::event_batches::{EventBatch, SpareBatches};
use crate::outbound::UploadQueue;
use crate::session::Session;
use crate::socket::DemuxSocket;
use crate::tls::{ClientIdentity, ExpectedPeers};
use bytes::Bytes;
use peergroup_protocol::{
    frame_to_bytes, ClientToServer, Fingerprint, HostId, PairId, PunchOrder, ReplayGap, Unconfirmed,
};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

/// Everything that changes together, under one lock: the sans-IO session, the direct
/// links and the punches under way.
pub(crate) struct Core {
    pub session: Session,
    pub directs: HashMap<HostId, DirectLink, foldhash::fast::RandomState>,
    pub punches: HashMap<PairId, PunchHandle>,
}

/// The one UDP socket the server connection, direct connections and punch probes share
/// (so the address the server sees is the NAT mapping peers punch to), and the QUIC
/// endpoint on it.
pub(crate) struct Udp {
    pub endpoint: quinn::Endpoint,
    pub socket: Arc<DemuxSocket>,
}

pub(crate) struct Inner {
    pub core: Mutex<Core>,
    /// The server connection, QUIC or WebSocket: replaced when the session resumes on a
    /// new one, maybe over the other carrier (read it with [`Inner::connection`]).
    pub connection: RwLock<ServerWire>,
    /// Set once the session has ended (not while it is being resumed), so sends need not
    /// ask quinn (which takes its connection lock) every time.
    pub closed: AtomicBool,
    /// Cancelled once the session has ended for good: the tasks that live as long as the
    /// session (the timer, the direct paths) end on it rather than on one connection.
    pub ended: CancellationToken,
    /// Resuming the session (`reconnect.rs`).
    pub resume: ResumeLink,
    /// The UDP side; `None` on [`TransportChoice::WebSocketOnly`](crate::TransportChoice),
    /// which never uses UDP (the server never asks a WebSocket client to punch), so such
    /// a client works where UDP sockets cannot even be opened.
    pub udp: Option<Udp>,
    /// Messages for the server, in the scheduler's order, for the main stream.
    pub uploads: UploadQueue,
    /// Acks, reports and requests for the server, for the control stream: the server
    /// keeps reading it while it pauses the main stream, so they never wait behind
    /// messages (ARCHITECTURE.md, "Streams").
    pub control: UploadQueue,
    /// Each direct peer's send queue holds at most about this many bytes.
    pub peer_queue_bytes: usize,
    /// Events go to the application in batches: one channel operation (and one wake of
    /// the application) per batch rather than per event.
    pub events: mpsc::Sender<EventBatch>,
    /// Batches the application emptied, for the next hand-over to reuse.
    pub spare_events: Arc<SpareBatches>,
    /// The event queue's size; readers pause while the session holds this many events.
    pub event_capacity: usize,
    /// Wakes the emitter: the session has events.
    pub event_ready: Notify,
    /// Whose turn it is to hand events over (see [`Inner::deliver_events`]).
    pub emit_turn: tokio::sync::Mutex<()>,
    /// The session's undelivered events as of the last change, so readers check for room
    /// without taking the lock.
    pub pending_events: AtomicUsize,
    /// Wakes readers and senders waiting for the session's events to drain.
    pub event_room: Notify,
    /// Counts the times a direct window may have made room (acks, paths and pairs
    /// ending), under the core lock; senders waiting on one wait for it to move.
    pub window_generation: AtomicU64,
    /// Wakes senders waiting on a direct window.
    pub window_room: Notify,
    /// Wakes the session's timer task (`timer.rs`): a deadline may have come earlier
    /// than the one it sleeps until (`Session::take_timeout_moved`).
    pub timer_moved: Notify,
    /// Punches [`Inner::flush`] registered, for the task that runs them
    /// (`direct/punch.rs`): code that acts on the session's output cannot start the punch
    /// task itself without depending on the direct paths, which depend on it. Unbounded
    /// in type only: each entry is a punch already in `Core::punches`, which
    /// `DirectConfig::max_direct_peers` bounds.
    pub punch_starts: mpsc::UnboundedSender<PunchStart>,
    pub max_frame_len: u32,
    pub host_id: HostId,
    pub identity: ClientIdentity,
    pub expected_peers: Arc<ExpectedPeers>,
    pub direct: DirectConfig,
    pub peer_transport: Arc<quinn::TransportConfig>,
    pub random: ring::rand::SystemRandom,
}

/// What reconnecting needs: how to reach the server, and the writers' inputs for a new
/// connection's streams.
pub(crate) struct ResumeLink {
    /// How the login reached the server; a resume does the same.
    pub dial: Dial,
    /// The client's own resume window (zero: off).
    pub window: Duration,
    /// Each attempt's handshake and answer, at most.
    pub attempt_timeout: Duration,
    /// The relay uploads written to the main stream and not yet confirmed by the server.
    pub unconfirmed: Arc<Mutex<Unconfirmed>>,
    /// Hands the main writer a resumed connection's stream; taken (so the writers end,
    /// releasing their queues) once the session ends.
    pub main: Mutex<Option<mpsc::Sender<MainHandoff>>>,
    /// Hands the control writer a resumed connection, likewise.
    pub control: Mutex<Option<mpsc::Sender<ServerWire>>>,
}

/// How to reach the server over either carrier: what the login uses and a resume uses
/// again (`login.rs`).
#[derive(Clone)]
pub(crate) struct Dial {
    pub transport: TransportChoice,
    pub client_config: quinn::ClientConfig,
    /// The same trust and identity as QUIC's, for the WebSocket's TLS.
    pub tls: Arc<rustls::ClientConfig>,
    pub server_addr: SocketAddr,
    pub websocket_addr: SocketAddr,
    pub server_name: String,
    /// The WebSocket's ping interval and idle timeout (QUIC's keepalive and idle).
    pub keepalive: Duration,
    pub idle: Duration,
}

/// A resumed connection's main stream for the main writer: it writes every upload from
/// number `from` on that it still holds, then goes on with its queue.
pub(crate) struct MainHandoff {
    pub send: ServerSend,
    pub from: u64,
    /// Whether the uploads from `from` on were still held.
    pub done: tokio::sync::oneshot::Sender<Result<(), ReplayGap>>,
}

impl Inner {
    /// The current server connection.
    pub fn connection(&self) -> ServerWire {
        self.connection
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Locks the core; a panic elsewhere while holding it must not wedge the client.
    pub fn lock(&self) -> MutexGuard<'_, Core> {
        self.core
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues an ack, report or request for the server's control stream (control traffic
    /// is small and bounded by what the server sends, so it never waits).
    pub fn send_server_frame(&self, frame: &ClientToServer) {
        if let Ok(bytes) = frame_to_bytes(frame, self.max_frame_len) {
            self.control.push_control(bytes);
        }
    }
}

/// A live direct connection to one peer.
#[derive(Debug)]
pub(crate) struct DirectLink {
    pub connection: quinn::Connection,
    /// Frames for the link's writer task, in the scheduler's order; sends to this peer
    /// wait while it is full.
    pub queue: UploadQueue,
    /// Wakes the link's reader while it is paused (the session held too much from the
    /// peer) once the session says it may read again.
    pub resume_reading: Arc<Notify>,
}

/// What a punch task is told.
#[derive(Debug)]
pub(crate) enum PunchInput {
    /// A probe for its pair arrived.
    Probe(SocketAddr, Bytes),
    /// The peer opened the direct connection to us: the attempt succeeded.
    Connected,
}

/// A punch under way, as the rest of the client sees it.
#[derive(Debug)]
pub(crate) struct PunchHandle {
    pub attempt: u32,
    pub input: mpsc::Sender<PunchInput>,
}

/// A punch registered in the core (its [`PunchHandle`] holds the other end of `inputs`),
/// for the punch task to carry out.
#[derive(Debug)]
pub(crate) struct PunchStart {
    pub order: PunchOrder,
    pub inputs: mpsc::Receiver<PunchInput>,
    /// The peer's certificate, as the server vouched for it.
    pub identity: Fingerprint,
}
