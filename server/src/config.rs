//! Server configuration: plain data with documented defaults.

use crate::admission::Admission;
use crate::identity::Identity;
use crate::registry::{PunchConfig, RegistryConfig};
use peergroup_protocol::{DEFAULT_MAX_MESSAGE_LEN, FRAME_HEADROOM};
use std::net::SocketAddr;
use std::time::Duration;

/// Everything [`Server::start`](crate::Server::start) needs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// UDP address to listen on, e.g. `0.0.0.0:7700` or `[::]:7700`.
    pub listen: SocketAddr,
    /// The TLS certificate and key clients pin.
    pub identity: Identity,
    /// Size limits.
    pub limits: Limits,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Hole-punching policy.
    pub punch: PunchConfig,
    /// Limits on connections that have not logged in yet.
    pub admission: Admission,
    /// Session resume: how long a client whose connection was lost is kept.
    pub resume: ResumeConfig,
    /// Where the WebSocket-over-TLS fallback listens (TCP), for clients whose network
    /// blocks UDP. Default [`WebSocketListen::SamePort`].
    pub websocket: WebSocketListen,
}

/// The TCP listener of the WebSocket fallback (issue 14; ARCHITECTURE.md, "Fallback over
/// WebSocket"): WebSocket (RFC 6455) over TLS 1.3 with the server's certificate, clients
/// identified by their certificate as on QUIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WebSocketListen {
    /// On the QUIC listener's IP address and port number, over TCP (the default). When
    /// the OS picked the UDP port (`listen` port 0) and TCP has that number taken, on
    /// another free port ([`crate::Server::websocket_addr`] says which).
    #[default]
    SamePort,
    /// On this TCP address (port 0 picks a free one; [`crate::Server::websocket_addr`]
    /// says which).
    At(SocketAddr),
    /// No WebSocket listener: clients need UDP.
    Off,
}

/// Session resume (ARCHITECTURE.md, "Resume"): a client whose connection ends without a
/// leave stays, offline, for [`ResumeConfig::window`], and comes back as the same host
/// with nothing lost if it reconnects in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumeConfig {
    /// How long a host whose connection was lost is kept: its id, groups, pairs and the
    /// messages queued for it stay, and its peers see nothing unless the window ends.
    /// Zero turns resume off: a lost connection removes its host at once, as before.
    /// Default 30 s.
    pub window: Duration,
    /// Frames written to a client and not yet confirmed by it that are kept for a resume,
    /// at most. Past this (or [`ResumeConfig::max_unconfirmed_bytes`]) the oldest are
    /// dropped, and a resume that needs them is refused (the host is removed). A client
    /// confirms every 100 ms or 256 frames, so this covers about a round trip of
    /// traffic. Default 65,536.
    pub max_unconfirmed_frames: u64,
    /// Bytes of those frames kept at most, per client. Default 8 MiB.
    pub max_unconfirmed_bytes: usize,
}

impl Default for ResumeConfig {
    fn default() -> Self {
        Self {
            window: RegistryConfig::default().resume_window,
            max_unconfirmed_frames: peergroup_protocol::resume::DEFAULT_MAX_UNCONFIRMED_FRAMES,
            max_unconfirmed_bytes: peergroup_protocol::resume::DEFAULT_MAX_UNCONFIRMED_BYTES,
        }
    }
}

impl ServerConfig {
    /// A config with default limits and timeouts.
    pub fn new(listen: SocketAddr, identity: Identity) -> Self {
        Self {
            listen,
            identity,
            limits: Limits::default(),
            timeouts: Timeouts::default(),
            punch: PunchConfig::default(),
            admission: Admission::default(),
            resume: ResumeConfig::default(),
            websocket: WebSocketListen::default(),
        }
    }

    pub(crate) fn registry(&self) -> RegistryConfig {
        RegistryConfig {
            ack_timeout: self.timeouts.ack,
            pair_linger: self.timeouts.pair_linger,
            punch: self.punch,
            max_host_data_len: self.limits.max_host_data_len,
            max_group_data_len: self.limits.max_group_data_len,
            max_unacked_notices: self.limits.max_unacked_notices,
            datagram_deliveries_per_sec: self.limits.datagram_deliveries_per_sec,
            resume_window: self.resume.window,
        }
    }
}

/// Size limits. Every queue the server keeps is bounded by one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connected clients at most; one more is closed with `ServerFull`. Default 10,000.
    pub max_clients: usize,
    /// Largest message payload a client may send or receive, in bytes; larger sends fail
    /// on the sender with a `TooLarge` error, and messages up to it are delivered whole.
    /// Frames may be [`FRAME_HEADROOM`] (64 KiB) larger, for headers and destination
    /// lists; clients learn the limit in the welcome. Default 1 MiB
    /// ([`DEFAULT_MAX_MESSAGE_LEN`]).
    pub max_message_len: u32,
    /// Bytes queued for one client before back-pressure starts (soft limit): a client
    /// whose message pushes a receiver's queue past it is paused until the queue drains,
    /// and a receiver that does not drain within [`Timeouts::slow_consumer`], or whose
    /// queue passes twice this (hard limit), is disconnected as a slow consumer. Raised to
    /// at least one maximal frame. Default 8 MiB.
    pub client_queue_bytes: usize,
    /// Messages from clients to the server application held until the application reads
    /// them; when full, the sending client's stream waits. Default 4,096.
    pub app_message_queue: usize,
    /// Lifecycle events (connects, disconnects, completions, removals, path changes) the
    /// application has not read, past which the server admits no new client (it is
    /// refused with `ServerFull` and "busy") and refuses new group operations with
    /// [`GroupError::EventBacklog`](crate::GroupError::EventBacklog). Events are never
    /// dropped; what can still arrive past this is bounded by the clients, groups and
    /// pending acks that exist. Default 65,536.
    pub app_event_queue: usize,
    /// Largest host data ([`Server::set_host_data`](crate::Server::set_host_data), and
    /// what the auth hook attaches), bytes: it rides on every join notice about the host.
    /// Default 1 KiB.
    pub max_host_data_len: usize,
    /// Largest group data, bytes. Default 4 KiB.
    pub max_group_data_len: usize,
    /// Membership notices a client may leave unacknowledged; past it the client is
    /// disconnected (the client library acks everything it reads, so only a broken or
    /// hostile client gets there). Default 65,536.
    pub max_unacked_notices: u64,
    /// Datagram deliveries one client may cause a second (one per destination), with as
    /// many again at once; past it its datagrams are dropped and counted
    /// (`ServerStats::datagrams_rate_limited`). Default 16,384.
    pub datagram_deliveries_per_sec: u32,
    /// Bytes a logged-in client may send ahead of what the server has read on each of its
    /// streams (its QUIC stream receive window; the connection's is this plus 64 KiB for
    /// the control stream, and an eighth more for the lag in quinn's credit updates):
    /// what one client can make the server buffer in quinn while its reading is paused
    /// by back-pressure.
    /// A client uploads at most this per round trip (1 MiB at 50 ms is 20 MiB/s); a
    /// larger frame still passes, in steps. Before login the window is one hello
    /// ([`Admission::max_hello_len`]). Default 1 MiB.
    pub client_receive_window: u32,
}

impl Limits {
    /// The largest frame body accepted or sent, in bytes: the message limit plus
    /// [`FRAME_HEADROOM`].
    pub fn max_frame_len(&self) -> u32 {
        self.max_message_len.saturating_add(FRAME_HEADROOM)
    }
}

impl Default for Limits {
    fn default() -> Self {
        let registry = RegistryConfig::default();
        Self {
            max_clients: 10_000,
            max_message_len: DEFAULT_MAX_MESSAGE_LEN,
            client_queue_bytes: 8 << 20,
            app_message_queue: 4_096,
            app_event_queue: 65_536,
            max_host_data_len: registry.max_host_data_len,
            max_group_data_len: registry.max_group_data_len,
            max_unacked_notices: registry.max_unacked_notices,
            datagram_deliveries_per_sec: registry.datagram_deliveries_per_sec,
            client_receive_window: 1 << 20,
        }
    }
}

/// Timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// A client silent this long is disconnected (QUIC idle timeout, RFC 9000 section
    /// 10.1). Clients send keepalives well inside it. Default 10 s.
    pub idle: Duration,
    /// TLS handshake, hello and auth hook together (the handshake and hello alone have
    /// [`Admission::hello_timeout`], default 5 s). Default 10 s.
    pub handshake: Duration,
    /// How long a backlogged receiver may take to drain below its soft limit before it is
    /// disconnected as a slow consumer. Default 3 s.
    pub slow_consumer: Duration,
    /// How long a join or leave waits for its acks before it completes with a timeout
    /// ([`JoinAckError::Timeout`](crate::JoinAckError),
    /// [`LeaveAckError::Timeout`](crate::LeaveAckError)). Default 15 s, as in ProudNet.
    pub ack: Duration,
    /// How long a pair outlives its last shared group. Default 10 s.
    pub pair_linger: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        let registry = RegistryConfig::default();
        Self {
            idle: Duration::from_secs(10),
            handshake: Duration::from_secs(10),
            slow_consumer: Duration::from_secs(3),
            ack: registry.ack_timeout,
            pair_linger: registry.pair_linger,
        }
    }
}
