//! Client configuration: plain data with documented defaults.

use crate::tls::ServerTrust;
use bytes::Bytes;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// Everything [`Client::connect`](crate::Client::connect) needs.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The server's UDP address.
    pub server_addr: SocketAddr,
    /// The name sent in TLS SNI and, with [`ServerTrust::SystemRoots`], checked against
    /// the certificate. Default `"peergroup"`; pinned trust ignores it.
    pub server_name: String,
    /// How the server is trusted.
    pub server_trust: ServerTrust,
    /// The login payload for the server's auth hook. Default empty.
    pub login: Bytes,
    /// Local UDP address to bind. Default: the unspecified address of the server's
    /// family, port 0 (the OS picks). Unused with [`TransportChoice::WebSocketOnly`],
    /// which opens no UDP socket.
    pub bind_addr: Option<SocketAddr>,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Size limits.
    pub limits: Limits,
    /// Direct paths to peers.
    pub direct: DirectConfig,
    /// Which carrier to reach the server over. Default [`TransportChoice::Auto`].
    pub transport: TransportChoice,
    /// The server's WebSocket-over-TLS address (TCP), for the fallback. Default: the
    /// server's address, same port number (the server's default).
    pub websocket_addr: Option<SocketAddr>,
}

/// Which carrier the client reaches the server over (issue 14; ARCHITECTURE.md,
/// "Fallback over WebSocket").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransportChoice {
    /// QUIC first; WebSocket over TLS starts [`WEBSOCKET_DELAY`] later, in parallel, if
    /// QUIC has not finished its handshake by then (at once if QUIC failed); the first
    /// carrier up logs in and the other closes before its hello (happy eyeballs, with
    /// RFC 8305's connection attempt delay). The default.
    #[default]
    Auto,
    /// QUIC only.
    QuicOnly,
    /// WebSocket over TLS only: no UDP at all (the client opens no UDP socket, so it
    /// works where UDP sockets are not allowed), so no direct paths (every pair stays on
    /// the relay) and unreliable messages ride the stream, dropped rather than queued.
    WebSocketOnly,
}

/// How long [`TransportChoice::Auto`] gives QUIC before starting WebSocket too: 250 ms,
/// RFC 8305's recommended connection attempt delay (section 8).
pub const WEBSOCKET_DELAY: Duration = Duration::from_millis(250);

impl ClientConfig {
    /// A config with defaults for everything but the server and its trust.
    pub fn new(server_addr: SocketAddr, server_trust: ServerTrust) -> Self {
        Self {
            server_addr,
            server_name: "peergroup".into(),
            server_trust,
            login: Bytes::new(),
            bind_addr: None,
            timeouts: Timeouts::default(),
            limits: Limits::default(),
            direct: DirectConfig::default(),
            transport: TransportChoice::default(),
            websocket_addr: None,
        }
    }

    /// The WebSocket address: [`ClientConfig::websocket_addr`], else the server's.
    pub(crate) fn websocket_addr(&self) -> SocketAddr {
        self.websocket_addr.unwrap_or(self.server_addr)
    }

    pub(crate) fn bind_addr(&self) -> SocketAddr {
        self.bind_addr.unwrap_or(match self.server_addr {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        })
    }
}

/// Timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Handshake and welcome. Default 10 s.
    pub connect: Duration,
    /// The server counts as gone after this much silence (QUIC idle timeout, RFC 9000
    /// section 10.1). Default 10 s.
    pub idle: Duration,
    /// A QUIC PING goes out after this much quiet, keeping the connection and the NAT
    /// mapping alive (Linux conntrack drops idle UDP after 30 s). Default 4 s; must be
    /// under `idle`.
    pub keepalive: Duration,
    /// How often each peer is pinged on its current path, for
    /// [`PeerStats`](crate::PeerStats)' RTT and loss and the server's pair statistics.
    /// `None` turns pings off (no RTT or loss then). Default 1 s.
    pub ping_interval: Option<Duration>,
    /// How often each peer on the relay is pinged, when pings are on. A relayed ping
    /// costs the server as much as a message and the relay RTT is mostly the two peers'
    /// RTTs to the server, which change slowly; at MMO pair counts (a client paired with
    /// hundreds of others) a ping a second per pair outweighed the game's own traffic in
    /// the soak. A path change still pings at once. Default 10 s.
    pub relay_ping_interval: Duration,
    /// How long the client tries to resume its session after losing the connection
    /// (ARCHITECTURE.md, "Resume"): it reconnects by itself, backing off from 100 ms to
    /// 2 s (jittered), within this and the server's own window, whichever is shorter.
    /// Zero turns resume off: a lost connection ends the client, as before. Default
    /// 30 s.
    pub resume: Duration,
}

/// [`Timeouts::relay_ping_interval`]'s default.
pub const DEFAULT_RELAY_PING_INTERVAL: Duration = Duration::from_secs(10);

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(10),
            idle: Duration::from_secs(10),
            keepalive: Duration::from_secs(4),
            ping_interval: Some(crate::ping::DEFAULT_PING_INTERVAL),
            relay_ping_interval: DEFAULT_RELAY_PING_INTERVAL,
            resume: Duration::from_secs(30),
        }
    }
}

/// Size limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes one send queue holds before sends that need it wait
    /// ([`Client::send`](crate::Client::send)) or fail with `QueueFull`
    /// ([`Client::try_send`](crate::Client::try_send)). There is one queue for the stream
    /// to the server and one per direct peer, each bounded by this, so a slow peer holds
    /// back only the sends that go to it. A message is admitted while its queue is under
    /// the limit, so a queue can exceed it by one message. Default 4 MiB.
    pub send_queue_bytes: usize,
    /// Events held for the application; when full, the client stops reading from the
    /// server, and the server eventually drops it as a slow consumer. Default 4,096.
    pub event_queue: usize,
    /// How far ahead of the next expected reliable message another may arrive (in
    /// sequence numbers, per channel) before the sender counts as broken: a direct path
    /// that breaks it is closed, and a peer that breaks it on the relay is ignored
    /// ([`ClientEvent::PeerIgnored`](crate::ClientEvent::PeerIgnored)). Memory is bounded
    /// separately, per peer and across channels, each message counted as its payload plus
    /// 160 bytes: past 4 MiB of early arrivals the direct path's reader pauses, and past
    /// [`MAX_HELD_ARRIVAL_BYTES`](crate::MAX_HELD_ARRIVAL_BYTES) (16 MiB) or
    /// [`MAX_HELD_ARRIVALS`](crate::MAX_HELD_ARRIVALS) (65,536 messages) the peer is
    /// ignored. Default 1,048,576.
    pub receive_window: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            send_queue_bytes: 4 << 20,
            event_queue: 4_096,
            receive_window: 1 << 20,
        }
    }
}

/// Direct paths to peers: hole punching and the direct QUIC connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirectConfig {
    /// Take part in hole punching at all. `false` keeps this client relay-only: it
    /// declines every punch order. Default `true`.
    pub enabled: bool,
    /// Direct connections at most, counting punches under way; orders beyond it are
    /// declined and those peers stay on the relay (ProudNet's direct-peer limit). Each
    /// direct peer costs this client a QUIC connection and its own packets, where the relay
    /// batches many peers' messages into one connection. Default 32.
    pub max_direct_peers: usize,
    /// A direct path silent this long is dropped and its traffic goes back to the relay
    /// (the direct connection's QUIC idle timeout), and so is one whose peer leaves a
    /// reliable message unacknowledged this long. Default 5 s.
    pub path_timeout: Duration,
    /// Idle direct paths send a QUIC PING this often, keeping the NAT mappings open
    /// (ICE keeps them with 15 s; this is well inside). Default 1 s; must be under
    /// `path_timeout`.
    pub keepalive: Duration,
    /// Probe rounds start 50 ms apart and back off to this. Default 500 ms.
    pub probe_max_interval: Duration,
    /// How long one attempt probes before it gives up. Default 5 s.
    pub punch_window: Duration,
    /// Reliable messages sent direct to one peer and not yet acknowledged by it, at most
    /// (they are kept to be sent again through the relay if the direct path dies). While
    /// this many are kept, sends to that peer wait as for a full queue
    /// ([`Client::send`](crate::Client::send) waits, `try_send` fails with `QueueFull`).
    /// A peer that leaves a message unacked for `path_timeout` loses its direct path:
    /// what it did not ack goes through the relay, and so does everything after, so a
    /// peer that reads but never acks cannot hold the sender's memory or its sends.
    /// Default 16,384.
    pub max_unacked_messages: usize,
    /// The payload bytes of those messages, at most; as `max_unacked_messages`. Default
    /// 4 MiB.
    pub max_unacked_bytes: usize,
    /// Bytes one peer may send on its direct connection ahead of what this client has
    /// read (the QUIC stream and connection receive windows; a direct connection carries
    /// one stream), and the unread datagrams kept from it (older ones are dropped first):
    /// what one peer can make this client buffer in quinn. A peer sends at most this per
    /// round trip. Default 1 MiB.
    pub peer_receive_window: u32,
}

impl Default for DirectConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_direct_peers: 32,
            path_timeout: Duration::from_secs(5),
            keepalive: Duration::from_secs(1),
            probe_max_interval: Duration::from_millis(500),
            punch_window: Duration::from_secs(5),
            max_unacked_messages: 16_384,
            max_unacked_bytes: 4 << 20,
            peer_receive_window: 1 << 20,
        }
    }
}
