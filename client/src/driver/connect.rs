//! Connection set-up: the client's identity, the QUIC settings of the server connection
//! and of direct connections, the one UDP socket and endpoint they all share, the login
//! (`login.rs`), then the shared state and every background task it needs.

use crate::client_events::ClientEvents;
use crate::config::ClientConfig;
use crate::config::TransportChoice;
use crate::driver::direct;
use crate::driver::event_pipe::{emit_events, EVENT_BATCH};
use crate::driver::login::{log_in, LoggedIn};
use crate::driver::server_reader::receive;
use crate::driver::shared::{Core, Dial, Inner, ResumeLink, Udp};
use crate::driver::timer::tick;
use crate::driver::writer::{write_control_stream, write_server_stream};
use crate::error::ConnectError;
use crate::event_batches::{EventBatch, SpareBatches};
use crate::events::ClientEvent;
use crate::outbound::UploadQueue;
use crate::session::{DirectWindow, Session, SessionTiming};
use crate::socket::{DemuxSocket, ProbeReceiver};
use crate::tls::{
    peer_server_config, server_client_config, server_tls_config, ClientIdentity, ExpectedPeers,
    RefusedCertificate,
};
use peergroup_protocol::resume::{DEFAULT_MAX_UNCONFIRMED_BYTES, DEFAULT_MAX_UNCONFIRMED_FRAMES};
use peergroup_protocol::{ClientToServer, Unconfirmed};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

/// UDP receive buffer asked of the kernel, bytes (capped by `net.core.rmem_max`).
const SOCKET_BUFFER: usize = 1 << 20;

/// What the server may have in flight to this client on its stream, bytes: 2 MiB passes
/// 40 MiB/s at 50 ms RTT, above what a game client takes in, and bounds what the server
/// can make the client buffer in quinn. Smaller would let more notices, high-priority
/// messages and newer latest values overtake what is queued at the server (what it has
/// written into QUIC is beyond its scheduler's reach), but 256 KiB was tried and made a
/// receiver fed as fast as it reads look like a slow consumer: its queue at the server
/// then sits at the soft limit instead of draining into this window.
const SERVER_STREAM_WINDOW: u32 = 2 << 20;

/// Unread datagrams kept from the server, bytes; older ones are dropped first.
const SERVER_DATAGRAM_BUFFER: usize = 2 << 20;

/// Connects, logs in and waits for the server's welcome (as [`crate::Client::connect`]),
/// then starts the client's tasks; returns the shared state for the handle, and the
/// application's end of the event pipe.
pub(crate) async fn connect(
    config: ClientConfig,
) -> Result<(Arc<Inner>, ClientEvents), ConnectError> {
    let identity = ClientIdentity::generate()?;
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(config.timeouts.idle.try_into().ok())
        .keep_alive_interval(Some(config.timeouts.keepalive))
        // The server never opens a stream: the client opens the two it uses.
        .max_concurrent_bidi_streams(0u8.into())
        .max_concurrent_uni_streams(0u8.into())
        // What the server may send ahead of our reads on that stream: the reader takes
        // it as it comes unless the application stops reading events, and then the
        // server's own queue (and its slow-consumer limit) holds the rest. quinn's
        // default is 1.25 MB per stream and no limit per connection.
        .stream_receive_window(SERVER_STREAM_WINDOW.into())
        .receive_window(SERVER_STREAM_WINDOW.into())
        .datagram_receive_buffer_size(Some(SERVER_DATAGRAM_BUFFER));
    // The server acknowledges our uploads every tenth packet, not every second.
    peergroup_transport::ack_less_often(&mut transport);
    let transport = Arc::new(transport);
    let refused = RefusedCertificate::default();
    let tls = server_tls_config(&config.server_trust, &identity, &refused)?;
    let client_config = server_client_config(tls.clone(), transport)?;
    let dial = Dial {
        transport: config.transport,
        client_config,
        tls: Arc::new(tls),
        server_addr: config.server_addr,
        websocket_addr: config.websocket_addr(),
        server_name: config.server_name.clone(),
        keepalive: config.timeouts.keepalive,
        idle: config.timeouts.idle,
    };
    let peer_window = config.direct.peer_receive_window;
    let mut peer_transport = quinn::TransportConfig::default();
    peer_transport
        .max_idle_timeout(config.direct.path_timeout.try_into().ok())
        .keep_alive_interval(Some(config.direct.keepalive))
        // A direct connection carries one stream, opened by the dialling side; quinn's
        // default lets a peer open 100 + 100 streams of 1.25 MB each.
        .max_concurrent_bidi_streams(1u8.into())
        .max_concurrent_uni_streams(0u8.into())
        .stream_receive_window(peer_window.into())
        .receive_window(peer_window.into())
        .datagram_receive_buffer_size(Some(peer_window as usize))
        // What a peer that never acknowledges can make us keep (quinn's default is
        // 10 MB per connection); the peer's own queue holds the rest.
        .send_window(2 * u64::from(peer_window));
    peergroup_transport::ack_less_often(&mut peer_transport);
    let peer_transport = Arc::new(peer_transport);
    let expected_peers = Arc::new(ExpectedPeers::default());
    let peer_server =
        peer_server_config(&identity, expected_peers.clone(), peer_transport.clone())?;

    // A client on WebSocket alone never uses UDP, so it opens no socket at all.
    let (udp, probes) = match config.transport {
        TransportChoice::WebSocketOnly => (None, None),
        TransportChoice::QuicOnly | TransportChoice::Auto => {
            let (udp, probes) = bind_udp(config.bind_addr(), peer_server)?;
            (Some(udp), Some(probes))
        }
    };

    let LoggedIn {
        connection,
        send,
        recv,
        host_id,
        app_data,
        max_frame_len,
    } = log_in(
        udp.as_ref().map(|udp| &udp.endpoint),
        &dial,
        &config,
        &refused,
    )
    .await?;
    let transport = connection.transport();

    // The queue holds batches: about `event_queue` events in all.
    let batches = config.limits.event_queue.div_ceil(EVENT_BATCH).max(2);
    let (events_tx, events_rx) = mpsc::channel(batches);
    let _ = events_tx.try_send(EventBatch::from([ClientEvent::Connected { host_id }]));
    // Room for every batch the session hands over whole (at most twice a batch's
    // events, `Session::take_events`).
    let spare_events = Arc::new(SpareBatches::new(2 * EVENT_BATCH));
    let (uploads, queued) = UploadQueue::new(config.limits.send_queue_bytes, false);
    // Control frames never wait for room (they are small and bounded by what the server
    // sends), so the queue has no limit to consult.
    let (control, queued_control) = UploadQueue::new(usize::MAX, false);
    let (punch_starts, punch_starts_rx) = mpsc::unbounded_channel();
    // The uploads written and not yet confirmed by the server, kept for a resume (until
    // the server's first frame after the welcome shows whether it resumes at all).
    let unconfirmed = Arc::new(Mutex::new(Unconfirmed::new(
        DEFAULT_MAX_UNCONFIRMED_FRAMES,
        DEFAULT_MAX_UNCONFIRMED_BYTES,
        !config.timeouts.resume.is_zero(),
    )));
    let (main_handoff, main_handoffs) = mpsc::channel(1);
    let (control_handoff, control_handoffs) = mpsc::channel(1);
    let inner = Arc::new(Inner {
        core: Mutex::new(Core {
            session: {
                let mut session = Session::new(
                    host_id,
                    app_data,
                    max_frame_len,
                    config.limits.receive_window,
                    SessionTiming {
                        ping_interval: config.timeouts.ping_interval,
                        relay_ping_interval: config.timeouts.relay_ping_interval,
                    },
                    Instant::now(),
                );
                session.set_direct_window(DirectWindow {
                    messages: config.direct.max_unacked_messages,
                    bytes: config.direct.max_unacked_bytes,
                    ack_timeout: config.direct.path_timeout,
                });
                session
            },
            directs: HashMap::default(),
            punches: HashMap::new(),
        }),
        connection: RwLock::new(connection.clone()),
        closed: AtomicBool::new(false),
        ended: CancellationToken::new(),
        resume: ResumeLink {
            dial,
            window: config.timeouts.resume,
            attempt_timeout: config.timeouts.connect,
            unconfirmed: unconfirmed.clone(),
            main: Mutex::new(Some(main_handoff)),
            control: Mutex::new(Some(control_handoff)),
        },
        udp,
        uploads,
        control,
        peer_queue_bytes: config.limits.send_queue_bytes,
        events: events_tx,
        spare_events: spare_events.clone(),
        event_capacity: config.limits.event_queue.max(2),
        event_ready: Notify::new(),
        emit_turn: tokio::sync::Mutex::new(()),
        pending_events: AtomicUsize::new(0),
        event_room: Notify::new(),
        window_generation: AtomicU64::new(0),
        window_room: Notify::new(),
        timer_moved: Notify::new(),
        punch_starts,
        max_frame_len,
        host_id,
        identity,
        expected_peers,
        direct: config.direct,
        peer_transport,
        random: ring::rand::SystemRandom::new(),
    });
    tokio::spawn(write_server_stream(
        send,
        queued,
        unconfirmed,
        main_handoffs,
    ));
    tokio::spawn(write_control_stream(
        connection.clone(),
        queued_control,
        control_handoffs,
    ));
    tokio::spawn(emit_events(inner.clone()));
    tokio::spawn(receive(inner.clone(), recv));
    if let Some(probes) = probes {
        tokio::spawn(direct::accept_peers(inner.clone()));
        tokio::spawn(direct::dispatch_probes(inner.clone(), probes));
    }
    tokio::spawn(direct::run_punches(Arc::downgrade(&inner), punch_starts_rx));
    tokio::spawn(tick(inner.clone()));
    if let Some(Ok(local)) = inner.udp.as_ref().map(|udp| udp.endpoint.local_addr()) {
        let addrs = host_candidates(local);
        tracing::debug!(?addrs, "host candidates");
        inner.send_server_frame(&ClientToServer::HostCandidates { addrs });
    }
    tracing::info!(%host_id, server = %config.server_addr, %transport, "connected");
    Ok((inner, ClientEvents::new(events_rx, spare_events)))
}

/// Opens the client's one UDP socket on `bind` and the QUIC endpoint on it, which
/// accepts direct connections with `peer_server`; returns them and the socket's punch
/// probes.
///
/// # Errors
/// [`ConnectError::Bind`] when the socket cannot be opened or the endpoint set up.
fn bind_udp(
    bind: SocketAddr,
    peer_server: quinn::ServerConfig,
) -> Result<(Udp, ProbeReceiver), ConnectError> {
    let std_socket = std::net::UdpSocket::bind(bind).map_err(ConnectError::Bind)?;
    // The socket takes the server connection, every direct connection and the punch
    // probes: a client entering a crowded area handshakes with many peers at once, and
    // the kernel's default receive buffer (about 208 KiB on Linux) drops the burst.
    if let Ok(state) = quinn::udp::UdpSocketState::new((&std_socket).into()) {
        if let Err(error) = state.set_recv_buffer_size((&std_socket).into(), SOCKET_BUFFER) {
            tracing::debug!(%error, "could not enlarge the UDP receive buffer");
        }
    }
    let (socket, probes) = DemuxSocket::new(std_socket).map_err(ConnectError::Bind)?;
    let mut endpoint_config = quinn::EndpointConfig::default();
    // Probes are told apart from QUIC by the fixed bit, so it must never be greased.
    endpoint_config.grease_quic_bit(false);
    let endpoint = quinn::Endpoint::new_with_abstract_socket(
        endpoint_config,
        Some(peer_server),
        socket.clone(),
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(ConnectError::Bind)?;
    Ok((Udp { endpoint, socket }, probes))
}

/// The client's host candidates: its interface addresses (of the socket's family) on the
/// socket's port, or just the bound address if it is a specific one.
fn host_candidates(local: SocketAddr) -> Vec<SocketAddr> {
    if !local.ip().is_unspecified() {
        return vec![local];
    }
    let mut addrs: Vec<SocketAddr> = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .map(|interface| interface.ip())
        .filter(|ip| ip.is_ipv4() == local.is_ipv4() && !ip.is_loopback())
        .map(|ip| SocketAddr::new(ip, local.port()))
        .collect();
    addrs.sort();
    addrs.dedup();
    addrs.truncate(16);
    addrs
}
