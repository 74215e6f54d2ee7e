//! The public [`Client`] handle and its background tasks.

use crate::client_events::ClientEvents;
use crate::clock::ServerTime;
use crate::config::ClientConfig;
use crate::connect_failure::LoginProgress;
use crate::direct;
use crate::driver::shared::{Core, Inner, PunchHandle, PunchStart};
use crate::driver::writer::{write_control_stream, write_stream};
use crate::error::{ConnectError, SendError};
use crate::events::{ClientEvent, DisconnectReason};
use crate::outbound::UploadQueue;
use crate::session::{DirectWindow, PeerStats, Route, Session, SessionTiming, Target, Upload};
use crate::socket::DemuxSocket;
use crate::tls::{
    peer_server_config, server_client_config, ClientIdentity, ExpectedPeers, RefusedCertificate,
};
use bytes::Bytes;
use peergroup_protocol::{
    datagram_to_bytes, decode_body, decode_server_datagram, decode_server_frame, frame_to_bytes,
    Carrier, ClientToServer, CloseCode, Fingerprint, GroupId, Hello, HostId, PairPath, PeerInfo,
    PunchOrder, PunchOutcome, SendOptions, ServerDatagram, ServerToClient, DEFAULT_MAX_FRAME_LEN,
    PROTOCOL_VERSION,
};
use peergroup_transport::{close, close_endpoint, FrameReader, ReadEnd};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify};

impl Inner {
    /// Sends what the session produced after an operation: frames for the server and for
    /// peers, punch orders, ended pairs; wakes direct readers the session lets go on and
    /// the timer when a deadline came earlier. Events stay in the session: readers hand them
    /// over themselves ([`Inner::deliver_events`]); other callers wake the emitter
    /// ([`Inner::flush_and_wake`]).
    pub fn flush(self: &Arc<Self>, core: &mut Core) {
        while let Some(upload) = core.session.poll_upload() {
            self.dispatch(core, upload);
        }
        while let Some(order) = core.session.poll_punch_order() {
            self.start_punch(core, order);
        }
        while let Some(peer) = core.session.poll_stalled_link() {
            if let Some(link) = core.directs.get(&peer) {
                close(&link.connection, CloseCode::Normal, "messages left unacked");
            }
        }
        if core.session.take_window_moved() {
            self.window_generation.fetch_add(1, Ordering::AcqRel);
            self.window_room.notify_waiters();
        }
        while let Some(peer) = core.session.poll_ended_pair() {
            if let Some(link) = core.directs.get(&peer) {
                close(&link.connection, CloseCode::Normal, "pair ended");
            }
        }
        wake_resumed_readers(core);
        if core.session.take_timeout_moved() {
            // A stored permit if the timer is busy: it looks again when it next waits.
            self.timer_moved.notify_one();
        }
        self.pending_events
            .store(core.session.pending_events(), Ordering::Release);
    }

    /// As [`Inner::flush`], and wakes the emitter task if there are events: for work
    /// that is not a reader (sends, timers, path changes).
    pub fn flush_and_wake(self: &Arc<Self>, core: &mut Core) {
        self.flush(core);
        if core.session.pending_events() > 0 {
            self.event_ready.notify_one();
        }
    }

    /// Hands the session's events to the application, in order, waiting for room: one
    /// caller at a time (the turn lock), so events from the relay reader and a direct
    /// reader never interleave out of session order. Readers call it after each frame,
    /// so an application that stops reading stops them, and QUIC flow control then
    /// pauses the senders. Returns whether `Disconnected` went out.
    pub async fn deliver_events(&self) -> bool {
        let _turn = self.emit_turn.lock().await;
        let mut batch = Vec::with_capacity(EVENT_BATCH);
        let mut disconnected = false;
        loop {
            {
                let mut core = self.lock();
                batch.extend(std::iter::from_fn(|| core.session.poll_event()).take(EVENT_BATCH));
                self.pending_events
                    .store(core.session.pending_events(), Ordering::Release);
            }
            if batch.is_empty() {
                break;
            }
            disconnected |= batch
                .iter()
                .any(|event| matches!(event, ClientEvent::Disconnected { .. }));
            // An error only means the application dropped its event stream.
            let _ = self
                .events
                .send(std::mem::replace(
                    &mut batch,
                    Vec::with_capacity(EVENT_BATCH),
                ))
                .await;
            self.event_room.notify_waiters();
        }
        disconnected
    }

    /// Whether the session holds fewer undelivered events than the event queue's size.
    fn has_event_room(&self) -> bool {
        self.pending_events.load(Ordering::Acquire) < self.event_capacity
    }

    /// Waits until the session holds fewer undelivered events than the event queue's
    /// size: readers call it after each frame, so an application that stops reading
    /// stops them (and QUIC flow control then pauses the senders).
    pub async fn event_room(&self) {
        if self.has_event_room() {
            return;
        }
        loop {
            let notified = self.event_room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.has_event_room() || self.events.is_closed() {
                return;
            }
            notified.await;
        }
    }

    /// Resolves once a direct window may have room again: the window generation moved
    /// past `seen` (or the connection ended).
    async fn window_room_after(&self, seen: u64) {
        loop {
            let notified = self.window_room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.window_generation.load(Ordering::Acquire) != seen
                || self.closed.load(Ordering::Acquire)
            {
                return;
            }
            tokio::select! {
                _ = notified => {}
                _ = self.connection.closed() => return,
            }
        }
    }

    /// Puts one upload in its queue, or sends its datagram.
    pub fn dispatch(&self, core: &mut Core, upload: Upload) {
        match upload {
            Upload::Control(frame) => {
                if let Some(bytes) = encoded(&frame, self.max_frame_len) {
                    self.control.push_control(bytes);
                }
            }
            Upload::Relay {
                frame,
                priority,
                flow,
                latest,
            } => {
                if let Some(bytes) = encoded(&frame, self.max_frame_len) {
                    self.uploads.push_data(bytes, priority, flow, latest, 0);
                }
            }
            Upload::Datagram(datagram) => {
                if let Ok(bytes) = datagram_to_bytes(&datagram) {
                    let _ = self.connection.send_datagram(bytes);
                }
            }
            Upload::Peer {
                to,
                frame,
                priority,
                latest,
                id,
            } => {
                let (Some(link), Some(bytes)) =
                    (core.directs.get(&to), encoded(&frame, self.max_frame_len))
                else {
                    return;
                };
                if let Some(replaced) = link.queue.push_data(bytes, priority, 0, latest, id) {
                    core.session.forget_replaced(to, replaced);
                }
            }
            Upload::PeerControl { to, frame } => {
                if let (Some(link), Some(bytes)) =
                    (core.directs.get(&to), encoded(&frame, self.max_frame_len))
                {
                    link.queue.push_control(bytes);
                }
            }
            Upload::PeerDatagram { to, datagram } => {
                send_peer_datagram(core, to, &datagram);
            }
        }
    }

    /// Starts carrying out a punch order, or declines it. The punch is registered here,
    /// under the lock, so probes and the peer's connection find it at once;
    /// `run_punches` (`direct.rs`) starts its task, and probes that come first wait in its
    /// input queue.
    fn start_punch(&self, core: &mut Core, order: PunchOrder) {
        let at_limit = core.directs.len() >= self.direct.max_direct_peers;
        if !self.direct.enabled || at_limit {
            self.send_server_frame(&ClientToServer::PunchReport {
                pair: order.pair,
                attempt: order.attempt,
                outcome: PunchOutcome::Declined,
            });
            return;
        }
        if core.directs.contains_key(&order.peer) || core.punches.contains_key(&order.pair) {
            return; // already direct, or already punching: a stale order
        }
        let Some(info) = core.session.peer_info(order.peer) else {
            return;
        };
        self.expected_peers.insert(info.identity);
        let (input, inputs) = mpsc::channel(256);
        core.punches.insert(
            order.pair,
            PunchHandle {
                attempt: order.attempt,
                input,
            },
        );
        // An error only means the client is going away, and the punch with it.
        let _ = self.punch_starts.send(PunchStart {
            order,
            inputs,
            identity: info.identity,
        });
    }

    /// The first queue of `route` that is full, if any.
    fn full_queue(&self, core: &Core, route: &Route) -> Option<UploadQueue> {
        if route.server && !self.uploads.has_room() {
            return Some(self.uploads.clone());
        }
        route
            .direct
            .iter()
            .filter_map(|peer| core.directs.get(peer))
            .find(|link| !link.queue.has_room())
            .map(|link| link.queue.clone())
    }
}

/// Encodes a frame, logging (and dropping) one that cannot be sent.
fn encoded<T: serde::Serialize>(frame: &T, max_frame_len: u32) -> Option<Bytes> {
    match frame_to_bytes(frame, max_frame_len) {
        Ok(bytes) => Some(bytes),
        Err(error) => {
            tracing::error!(%error, "frame not sent");
            None
        }
    }
}

/// Wakes the direct readers the session lets go on again (each waits in
/// `direct.rs`, `wait_until_resumed`).
fn wake_resumed_readers(core: &mut Core) {
    while let Some(peer) = core.session.poll_resumed_reader() {
        if let Some(link) = core.directs.get(&peer) {
            // Stored if the reader is not waiting yet, so the wake is never lost.
            link.resume_reading.notify_one();
        }
    }
}

/// Sends a datagram on the peer's direct link.
fn send_peer_datagram(core: &Core, to: HostId, datagram: &ServerDatagram) {
    if let (Some(link), Ok(bytes)) = (core.directs.get(&to), datagram_to_bytes(datagram)) {
        let _ = link.connection.send_datagram(bytes);
    }
}

/// UDP receive buffer asked of the kernel, bytes (capped by `net.core.rmem_max`).
const SOCKET_BUFFER: usize = 1 << 20;

/// The first wait before connecting again to a server that refused as busy; it doubles
/// up to [`BUSY_MAX_BACKOFF`], each wait jittered by up to half, within the connect timeout.
const BUSY_FIRST_BACKOFF: Duration = Duration::from_millis(50);
const BUSY_MAX_BACKOFF: Duration = Duration::from_secs(1);

/// `wait` times a random factor in [0.5, 1.5), so clients refused together do not all
/// come back together.
fn jittered(wait: Duration) -> Duration {
    use ring::rand::SecureRandom;
    let mut byte = [0u8; 1];
    let _ = ring::rand::SystemRandom::new().fill(&mut byte);
    wait.mul_f64(0.5 + f64::from(byte[0]) / 256.0)
}

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

/// Closes the connections when the last handle goes.
struct CloseOnDrop {
    connection: quinn::Connection,
    endpoint: quinn::Endpoint,
}

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        close(&self.connection, CloseCode::Normal, "client closed");
        // Closing the endpoint ends direct connections and the tasks that serve them.
        close_endpoint(&self.endpoint, CloseCode::Normal, "client closed");
    }
}

/// A connected client: a cheap `Clone` handle. Dropping the last handle closes the
/// connection.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    _guard: Arc<CloseOnDrop>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("host_id", &self.host_id())
            .finish()
    }
}

/// Events handed to the application in one batch at most.
const EVENT_BATCH: usize = 64;

impl Client {
    /// Connects, logs in and waits for the server's welcome.
    ///
    /// # Errors
    /// [`ConnectError`], naming the cause: [`ConnectError::Unreachable`] when nothing
    /// answers at the address, [`ConnectError::PinMismatch`] for a certificate other than
    /// the pinned one, [`ConnectError::Handshake`] for other TLS failures,
    /// [`ConnectError::Refused`] with the server's close code and text (auth hook
    /// rejection, full server, version it does not speak), [`ConnectError::Timeout`] when
    /// QUIC connected but no welcome came within `timeouts.connect`.
    pub async fn connect(config: ClientConfig) -> Result<(Client, ClientEvents), ConnectError> {
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
        let transport = Arc::new(transport);
        let refused = RefusedCertificate::default();
        let client_config =
            server_client_config(&config.server_trust, &identity, transport, &refused)?;
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
        let peer_transport = Arc::new(peer_transport);
        let expected_peers = Arc::new(ExpectedPeers::default());
        let peer_server =
            peer_server_config(&identity, expected_peers.clone(), peer_transport.clone())?;

        // One socket for the server connection, direct connections and punch probes, so
        // the address the server sees is the NAT mapping peers punch to.
        let std_socket =
            std::net::UdpSocket::bind(config.bind_addr()).map_err(ConnectError::Bind)?;
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

        let mut progress = LoginProgress {
            addr: config.server_addr,
            started: Instant::now(),
            pinned: config.server_trust.pinned(),
            refused: &refused,
            quic_up: false,
        };
        let quic_up = AtomicBool::new(false);
        let refused_busy = AtomicBool::new(false);
        let handshake = async {
            // A server busy with other logins refuses at the first packet and means "try
            // again later": so the client does, backing off, within the connect timeout.
            let mut backoff = BUSY_FIRST_BACKOFF;
            let connection = loop {
                let attempt = endpoint
                    .connect_with(
                        client_config.clone(),
                        config.server_addr,
                        &config.server_name,
                    )
                    .map_err(|e| progress.not_started(e))?
                    .await;
                match attempt {
                    Ok(connection) => break connection,
                    Err(quinn::ConnectionError::ConnectionClosed(close))
                        if crate::connect_failure::is_busy(&close) =>
                    {
                        refused_busy.store(true, Ordering::Relaxed);
                        tracing::debug!(?backoff, "the server is busy; trying again");
                        tokio::time::sleep(jittered(backoff)).await;
                        backoff = (backoff * 2).min(BUSY_MAX_BACKOFF);
                    }
                    Err(error) => return Err(progress.connection_failed(error)),
                }
            };
            quic_up.store(true, Ordering::Relaxed);
            let failed = |e| {
                LoginProgress {
                    quic_up: true,
                    ..progress
                }
                .connection_failed(e)
            };
            let (mut send, recv) = connection.open_bi().await.map_err(failed)?;
            let mut recv = FrameReader::new(recv, DEFAULT_MAX_FRAME_LEN);
            let hello = ClientToServer::Hello(Hello {
                version: PROTOCOL_VERSION,
                login: config.login.clone(),
            });
            let frame = frame_to_bytes(&hello, DEFAULT_MAX_FRAME_LEN)
                .map_err(|e| ConnectError::Protocol(e.to_string()))?;
            send.write_all(&frame).await.map_err(|e| match e {
                quinn::WriteError::ConnectionLost(e) => failed(e),
                other => ConnectError::Lost(other.to_string()),
            })?;
            let welcome = match recv.next().await {
                Ok(Some(body)) => decode_body::<ServerToClient>(&body)
                    .map_err(|e| ConnectError::Protocol(e.to_string()))?,
                Ok(None) => return Err(ConnectError::Protocol("stream closed".into())),
                Err(ReadEnd::Connection(error)) => return Err(failed(error)),
                Err(ReadEnd::Violation(_, text)) => return Err(ConnectError::Protocol(text)),
            };
            Ok((connection, send, recv, welcome))
        };
        let outcome = tokio::time::timeout(config.timeouts.connect, handshake).await;
        progress.quic_up = quic_up.load(Ordering::Relaxed);
        let (connection, send, recv, welcome) = outcome.map_err(|_| {
            progress.timed_out(
                config.timeouts.connect,
                refused_busy.load(Ordering::Relaxed),
            )
        })??;

        let ServerToClient::Welcome {
            version,
            host_id,
            app_data,
            max_frame_len,
        } = welcome
        else {
            close(
                &connection,
                CloseCode::ProtocolViolation,
                "expected a welcome",
            );
            return Err(ConnectError::Protocol(
                "the first frame was not a welcome".into(),
            ));
        };
        if version != PROTOCOL_VERSION {
            let text = format!(
                "protocol version mismatch: client speaks {PROTOCOL_VERSION}, server {version}"
            );
            close(&connection, CloseCode::VersionMismatch, &text);
            return Err(ConnectError::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: version,
            });
        }

        // The queue holds batches: about `event_queue` events in all.
        let batches = config.limits.event_queue.div_ceil(EVENT_BATCH).max(2);
        let (events_tx, events_rx) = mpsc::channel(batches);
        let _ = events_tx.try_send(vec![ClientEvent::Connected { host_id }]);
        let (uploads, queued) = UploadQueue::new(config.limits.send_queue_bytes, false);
        // Control frames never wait for room (they are small and bounded by what the server
        // sends), so the queue has no limit to consult.
        let (control, queued_control) = UploadQueue::new(usize::MAX, false);
        let (punch_starts, punch_starts_rx) = mpsc::unbounded_channel();
        let guard = Arc::new(CloseOnDrop {
            connection: connection.clone(),
            endpoint: endpoint.clone(),
        });
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
            connection: connection.clone(),
            closed: AtomicBool::new(false),
            endpoint,
            socket,
            uploads,
            control,
            peer_queue_bytes: config.limits.send_queue_bytes,
            events: events_tx,
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
        tokio::spawn(write_stream(connection.clone(), send, queued));
        tokio::spawn(write_control_stream(connection.clone(), queued_control));
        tokio::spawn(emit_events(inner.clone()));
        tokio::spawn(receive(inner.clone(), recv));
        tokio::spawn(direct::accept_peers(inner.clone()));
        tokio::spawn(direct::dispatch_probes(inner.clone(), probes));
        tokio::spawn(direct::run_punches(Arc::downgrade(&inner), punch_starts_rx));
        tokio::spawn(direct::tick(inner.clone()));
        if let Ok(local) = inner.endpoint.local_addr() {
            let addrs = host_candidates(local);
            tracing::debug!(?addrs, "host candidates");
            inner.send_server_frame(&ClientToServer::HostCandidates { addrs });
        }
        tracing::info!(%host_id, server = %config.server_addr, "connected");
        let client = Client {
            _guard: guard,
            inner,
        };
        Ok((client, ClientEvents::new(events_rx)))
    }

    /// Sends `payload` to `target` with `options`: a [`Delivery`] mode, or
    /// [`SendOptions`] with a channel and a priority (see the README's "Delivery modes").
    ///
    /// Reliable modes are queued for their path (the stream to the server, or the direct
    /// connection to a peer) with the next number of each destination pair's lane; a send
    /// waits while a queue it needs holds [`Limits::send_queue_bytes`] (default 4 MiB) or
    /// more, so a slow path paces only the sends that use it. Unreliable modes go straight
    /// into datagrams and never wait. A [`Delivery::Latest`] send replaces a queued value
    /// of its key instead of growing the queue, so it rarely finds one full.
    ///
    /// While a send waits, so does whatever awaits it: a game loop that also reads
    /// [`ClientEvents`] reads none meanwhile, and a client whose events are not read stops
    /// reading the server, so its acks of membership notices stall as well (the server's
    /// joins and leaves wait on them). Such a loop should use [`Client::try_send`] and skip
    /// or coalesce on [`SendError::QueueFull`], or send from a task of its own.
    ///
    /// # Errors
    /// [`SendError`]: a target this client may not use ([`SendError::NotInGroup`],
    /// [`SendError::NotAPeer`]), a payload too large ([`SendError::TooLarge`] over the
    /// server's message limit, default 1 MiB; [`SendError::TooLargeForDatagram`] for an
    /// unreliable payload over the path's datagram size), or [`SendError::Disconnected`].
    ///
    /// [`Limits::send_queue_bytes`]: crate::Limits::send_queue_bytes
    /// [`Delivery`]: crate::Delivery
    /// [`Delivery::Latest`]: crate::Delivery::Latest
    pub async fn send(
        &self,
        target: Target,
        payload: impl Into<Bytes>,
        options: impl Into<SendOptions>,
    ) -> Result<(), SendError> {
        let payload = payload.into();
        let options = options.into();
        loop {
            match self.enqueue(&target, &payload, options)? {
                None => return Ok(()),
                Some(Full::Queue(full)) => full.room().await,
                Some(Full::Events) => self.inner.event_room().await,
                Some(Full::Window(seen)) => self.inner.window_room_after(seen).await,
            }
        }
    }

    /// Sends an application message type, encoded with postcard ([`crate::encode`]); the
    /// receiver reads it with [`crate::decode`]. Declare the message types once, in a
    /// module or crate both sides use (the role of ProudNet's PIDL files). Otherwise as
    /// [`Client::send`].
    ///
    /// # Errors
    /// As [`Client::send`], plus [`SendError::Encode`] when the value cannot be encoded.
    pub async fn send_message<T: serde::Serialize + ?Sized>(
        &self,
        target: Target,
        message: &T,
        options: impl Into<SendOptions>,
    ) -> Result<(), SendError> {
        let payload = crate::encode(message)?;
        self.send(target, payload, options).await
    }

    /// As [`Client::send_message`], but never waits: what a game loop uses for values the
    /// next tick replaces anyway, such as positions.
    ///
    /// # Errors
    /// As [`Client::try_send`], plus [`SendError::Encode`] when the value cannot be
    /// encoded.
    pub fn try_send_message<T: serde::Serialize + ?Sized>(
        &self,
        target: Target,
        message: &T,
        options: impl Into<SendOptions>,
    ) -> Result<(), SendError> {
        let payload = crate::encode(message)?;
        self.try_send(target, payload, options)
    }

    /// As [`Client::send`], but never waits.
    ///
    /// # Errors
    /// As [`Client::send`], plus [`SendError::QueueFull`] when a queue the send needs is
    /// full (or, for a loopback send, the event queue is).
    pub fn try_send(
        &self,
        target: Target,
        payload: impl Into<Bytes>,
        options: impl Into<SendOptions>,
    ) -> Result<(), SendError> {
        let payload = payload.into();
        let options = options.into();
        match self.enqueue(&target, &payload, options)? {
            None => Ok(()),
            Some(_) => Err(SendError::QueueFull),
        }
    }

    fn wants_loopback(&self, target: &Target) -> bool {
        match target {
            Target::GroupLoopback(_) => true,
            Target::Host(host) => *host == self.host_id(),
            Target::Hosts(hosts) => hosts.contains(&self.host_id()),
            _ => false,
        }
    }

    /// Queues the send if every queue it needs has room; otherwise says what to wait on,
    /// having assigned and queued nothing.
    fn enqueue(
        &self,
        target: &Target,
        payload: &Bytes,
        options: SendOptions,
    ) -> Result<Option<Full>, SendError> {
        let inner = &self.inner;
        if inner.closed.load(Ordering::Acquire) {
            return Err(SendError::Disconnected);
        }
        // Lane numbers are assigned, paths chosen and frames queued under one lock, so
        // each path carries a pair's messages in number order and none slips between
        // paths while one changes.
        let mut core = inner.lock();
        let route = core.session.route(target)?;
        // A copy for this client itself is an event, bounded like the others.
        if self.wants_loopback(target) && !inner.has_event_room() {
            return Ok(Some(Full::Events));
        }
        let max_datagram = match options.carrier() {
            // The smallest datagram size of every path the send takes.
            Carrier::Datagram(_) => route
                .direct
                .iter()
                .filter_map(|peer| core.directs.get(peer))
                .map(|link| link.connection.max_datagram_size())
                .fold(inner.connection.max_datagram_size(), |a, b| match (a, b) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    _ => None,
                }),
            // Latest values wait too: they replace queued values of their key, but an
            // application that keeps inventing keys must not grow a queue without bound.
            Carrier::Stream(_) => {
                if let Some(full) = inner.full_queue(&core, &route) {
                    return Ok(Some(Full::Queue(full)));
                }
                // A direct peer that has not acked what it was sent holds its sends back
                // like a full queue; one that never acks loses its direct path after the
                // path timeout (`Session::handle_timeout`), and its sends go on.
                if route
                    .direct
                    .iter()
                    .any(|&peer| core.session.direct_window_full(peer))
                {
                    let seen = inner.window_generation.load(Ordering::Acquire);
                    return Ok(Some(Full::Window(seen)));
                }
                None
            }
        };
        let uploads = core
            .session
            .plan(route, payload.clone(), options, max_datagram)?;
        for upload in uploads {
            inner.dispatch(&mut core, upload);
        }
        inner.flush_and_wake(&mut core);
        Ok(None)
    }

    fn session(&self) -> SessionGuard<'_> {
        SessionGuard(self.inner.lock())
    }

    /// This client's id.
    pub fn host_id(&self) -> HostId {
        self.inner.host_id
    }

    /// Host data: this client's own (what the server's auth hook attached to the login,
    /// or what the server application set since), or that of a member of one of its
    /// groups, as this client was last told. `None` for a host in none of its groups.
    pub fn host_data(&self, host: HostId) -> Option<Bytes> {
        self.session().host_data(host)
    }

    /// A group's data, as this client was last told; `None` if it is not in the group.
    pub fn group_data(&self, group: GroupId) -> Option<Bytes> {
        self.session().group_data(group)
    }

    /// SHA-256 of this client's identity certificate, as peers will see it.
    pub fn identity(&self) -> Fingerprint {
        self.inner.identity.fingerprint()
    }

    /// What this client measures about a peer: path, RTT (smoothed and last) and loss on
    /// that path, messages and bytes per path and per mode, queue depth, punch attempts.
    /// `None` if it is not a peer.
    pub fn peer_stats(&self, peer: HostId) -> Option<PeerStats> {
        let core = self.inner.lock();
        let mut stats = core.session.peer_stats(peer, Instant::now())?;
        stats.queued_bytes = match (core.session.path_of(peer), core.directs.get(&peer)) {
            (Some(PairPath::Direct), Some(link)) => link.queue.queued_bytes(),
            _ => self.inner.uploads.queued_bytes(),
        };
        Some(stats)
    }

    /// The server's clock as this client estimates it now: time since the server started,
    /// with an error bound (NTP's on-wire method, RFC 5905, over the server connection;
    /// refreshed every 5 s). All clients of a server share this timeline, so it suits
    /// game timing such as scheduled events and lag compensation. `None` until the first
    /// answer, a few milliseconds after connecting.
    pub fn server_time(&self) -> Option<ServerTime> {
        self.session().server_time(Instant::now())
    }

    /// Bytes waiting in the upload queue to the server.
    pub fn queued_bytes(&self) -> usize {
        self.inner.uploads.queued_bytes()
    }

    /// Groups this client is in.
    pub fn groups(&self) -> Vec<GroupId> {
        self.session().groups()
    }

    /// Members of a group this client is in, as it has been told; `None` if it is not in
    /// the group.
    pub fn group_members(&self, group: GroupId) -> Option<Vec<HostId>> {
        self.session().group_members(group)
    }

    /// What the server vouched for about a peer; `None` if it shares no group (pair).
    pub fn peer_info(&self, peer: HostId) -> Option<PeerInfo> {
        self.session().peer_info(peer)
    }

    /// Hosts this client has a pair with (shares a group, or did within the linger time).
    pub fn peers(&self) -> Vec<HostId> {
        self.session().peers()
    }

    /// Closes the direct connection to `peer`, as if the path had died, so its traffic
    /// falls back to the relay. For tests of path switching; not part of the supported API.
    #[doc(hidden)]
    pub fn close_direct_path(&self, peer: HostId) {
        if let Some(link) = self.inner.lock().directs.get(&peer) {
            close(&link.connection, CloseCode::Normal, "closed for a test");
        }
    }

    /// Smoothed RTT to the server.
    pub fn server_rtt(&self) -> Duration {
        self.inner.connection.rtt()
    }

    /// The local UDP address.
    ///
    /// # Errors
    /// What the OS reports for the socket.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.endpoint.local_addr()
    }

    /// Closes the connection gracefully: reliable messages already queued are delivered
    /// to the server first (waiting up to 2 s), then the close goes out (waiting up to
    /// 1 s for it to leave), and direct connections close too. Other handles see
    /// [`SendError::Disconnected`] afterwards.
    pub async fn close(&self) {
        let finished = self.inner.uploads.finish();
        let control_finished = self.inner.control.finish();
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = tokio::join!(finished, control_finished);
        })
        .await;
        self.inner.closed.store(true, Ordering::Release);
        close(&self.inner.connection, CloseCode::Normal, "client closed");
        close_endpoint(&self.inner.endpoint, CloseCode::Normal, "client closed");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.inner.endpoint.wait_idle()).await;
    }
}

/// What a send must wait for.
enum Full {
    /// Room in this send queue.
    Queue(UploadQueue),
    /// Room for the loopback copy among the application's events.
    Events,
    /// Room in a direct peer's window of unacked messages: waits for the window
    /// generation to move past this.
    Window(u64),
}

/// Hands over the events that no reader delivers (those of sends, timers and path
/// changes, and the final `Disconnected`), through [`Inner::deliver_events`], so they
/// keep the session's order too. Ends after `Disconnected`.
async fn emit_events(inner: Arc<Inner>) {
    loop {
        let notified = inner.event_ready.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if inner.deliver_events().await {
            return;
        }
        notified.await;
    }
}

/// Reads the main stream and datagrams until the connection ends, then reports
/// `Disconnected`.
async fn receive(inner: Arc<Inner>, recv: FrameReader) {
    // Both loops run to their end (an error in one closes the connection, which ends the
    // other): cancelling one could drop messages it was handing to the application.
    let (frames_end, datagrams_end) = tokio::join!(
        async {
            let end = read_frames(&inner, recv).await;
            if let ReadEnd::Violation(code, text) = &end {
                close(&inner.connection, *code, text);
            }
            end
        },
        async {
            let end = read_datagrams(&inner).await;
            if let ReadEnd::Violation(code, text) = &end {
                close(&inner.connection, *code, text);
            }
            end
        }
    );
    let reason = match (&frames_end, &datagrams_end) {
        (ReadEnd::Violation(code, text), _) | (_, ReadEnd::Violation(code, text)) => {
            tracing::warn!(%code, %text, "closed: the server broke the protocol");
            DisconnectReason::ProtocolError {
                detail: text.clone(),
            }
        }
        (ReadEnd::Connection(error), _) => DisconnectReason::from_connection_error(error),
    };
    inner.closed.store(true, Ordering::Release);
    tracing::info!(%reason, "disconnected");
    // After every event before it, through the emitter.
    {
        let mut core = inner.lock();
        core.session
            .push_event(ClientEvent::Disconnected { reason });
        inner.flush_and_wake(&mut core);
    }
}

/// How long the client waits for the server's close after the server finished its control
/// stream: the server closes as soon as our acknowledgement of the stream's end arrives,
/// so a few round trips; 5 s covers a lossy path before calling it a protocol error.
const STREAM_END_GRACE: Duration = Duration::from_secs(5);

async fn read_frames(inner: &Arc<Inner>, mut recv: FrameReader) -> ReadEnd {
    loop {
        let body = match recv.next().await {
            Ok(Some(body)) => body,
            Ok(None) => {
                // A server shutting down gracefully finishes its main stream after its
                // last frame and closes the connection once we have acknowledged all of it
                // (the server's `drain.rs`): everything has been read, so wait for that
                // close and report its reason.
                return match tokio::time::timeout(STREAM_END_GRACE, inner.connection.closed()).await
                {
                    Ok(error) => ReadEnd::Connection(error),
                    Err(_) => ReadEnd::Violation(
                        CloseCode::ProtocolViolation,
                        "main stream closed without a connection close".into(),
                    ),
                };
            }
            Err(end) => return end,
        };
        {
            let mut core = inner.lock();
            let now = Instant::now();
            // Every frame this read brought is handled before anything is sent, so the
            // notices of many frames cost one ack.
            let mut next = Some(body);
            while let Some(body) = next {
                let frame = match decode_server_frame(&body) {
                    Ok(frame) => frame,
                    Err(error) => return error.into(),
                };
                if let Err(text) = core.session.handle_frame(frame, now) {
                    return ReadEnd::Violation(CloseCode::ProtocolViolation, text);
                }
                if core.session.pending_events() >= inner.event_capacity {
                    break;
                }
                next = match recv.buffered() {
                    Ok(next) => next,
                    Err(end) => return end,
                };
            }
            inner.flush(&mut core);
        }
        inner.deliver_events().await;
    }
}

async fn read_datagrams(inner: &Arc<Inner>) -> ReadEnd {
    loop {
        let datagram = match inner.connection.read_datagram().await {
            Ok(datagram) => datagram,
            Err(error) => return ReadEnd::Connection(error),
        };
        let message = match decode_server_datagram(&datagram) {
            Ok(message) => message,
            Err(error) => return error.into(),
        };
        {
            let mut core = inner.lock();
            core.session.handle_datagram(message, Instant::now());
            inner.flush(&mut core);
        }
        inner.deliver_events().await;
    }
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

/// A locked view of the session for queries.
struct SessionGuard<'a>(MutexGuard<'a, Core>);

impl std::ops::Deref for SessionGuard<'_> {
    type Target = Session;

    fn deref(&self) -> &Session {
        &self.0.session
    }
}
