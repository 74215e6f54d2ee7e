//! The public [`Client`] handle and its background tasks.

use crate::config::{ClientConfig, DirectConfig};
use crate::direct::{self, DirectLink, PunchHandle};
use crate::error::{ConnectError, SendError};
use crate::events::{ClientEvent, DisconnectReason};
use crate::session::{PeerStats, Session, Target, Upload};
use crate::socket::DemuxSocket;
use crate::tls::{peer_server_config, server_client_config, ClientIdentity, ExpectedPeers};
use bytes::Bytes;
use peergroup_protocol::{
    datagram_to_bytes, decode_body, frame_to_bytes, ClientToServer, CloseCode, Delivery,
    Fingerprint, FrameDecoder, FrameError, GroupId, Hello, HostId, PairId, PeerInfo,
    ServerDatagram, ServerToClient, DEFAULT_MAX_FRAME_LEN, PROTOCOL_VERSION,
};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

/// Bytes a queued message costs beyond its payload, so that many empty messages are
/// bounded too.
const PER_MESSAGE_COST: usize = 64;

/// A frame waiting for the writer, holding its share of the send budget.
struct Queued {
    frame: Bytes,
    _budget: Option<OwnedSemaphorePermit>,
    /// Set on the last item [`Client::close`] queues: finish the stream after everything
    /// before it, wait until the server has read it all, then say so.
    finished: Option<oneshot::Sender<()>>,
}

impl Queued {
    fn frame(frame: Bytes, budget: Option<OwnedSemaphorePermit>) -> Self {
        Self {
            frame,
            _budget: budget,
            finished: None,
        }
    }
}

/// Everything that changes together, under one lock: the sans-IO session, the direct
/// links and the punches under way.
pub(crate) struct Core {
    pub session: Session,
    pub directs: HashMap<HostId, DirectLink>,
    pub punches: HashMap<PairId, PunchHandle>,
}

pub(crate) struct Inner {
    core: Mutex<Core>,
    pub connection: quinn::Connection,
    /// Set once the server connection has ended, so sends need not ask quinn (which
    /// takes its connection lock) every time.
    closed: AtomicBool,
    pub endpoint: quinn::Endpoint,
    pub socket: Arc<DemuxSocket>,
    queue: mpsc::UnboundedSender<Queued>,
    budget: Arc<Semaphore>,
    events: mpsc::Sender<ClientEvent>,
    pub max_frame_len: u32,
    pub host_id: HostId,
    app_data: Bytes,
    pub identity: ClientIdentity,
    pub expected_peers: Arc<ExpectedPeers>,
    pub direct: DirectConfig,
    pub peer_transport: Arc<quinn::TransportConfig>,
    pub random: ring::rand::SystemRandom,
}

impl Inner {
    /// Locks the core; a panic elsewhere while holding it must not wedge the client.
    pub fn lock(&self) -> MutexGuard<'_, Core> {
        self.core
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues a frame for the server outside the send budget (control traffic is small
    /// and bounded by what the server sends).
    pub fn send_server_frame(&self, frame: &ClientToServer) {
        if let Ok(bytes) = frame_to_bytes(frame, self.max_frame_len) {
            let _ = self.queue.send(Queued::frame(bytes, None));
        }
    }

    /// Sends what the session produced after an operation: frames for the server and for
    /// peers, punch orders, ended pairs. Returns the events for the application, to be
    /// handed over once the lock is released.
    pub fn flush(self: &Arc<Self>, core: &mut Core) -> Vec<ClientEvent> {
        while let Some(frame) = core.session.poll_frame() {
            self.send_server_frame(&frame);
        }
        while let Some((to, frame)) = core.session.poll_peer_frame() {
            direct::send_peer_frame(core, to, &frame, self.max_frame_len, None);
        }
        while let Some(order) = core.session.poll_punch_order() {
            direct::start_punch(self, core, order);
        }
        while let Some(peer) = core.session.poll_ended_pair() {
            if let Some(link) = core.directs.get(&peer) {
                link.connection.close(
                    quinn::VarInt::from_u64(CloseCode::Normal.to_u64()).unwrap_or_default(),
                    b"pair ended",
                );
            }
        }
        std::iter::from_fn(|| core.session.poll_event()).collect()
    }

    /// Hands events to the application, waiting for room.
    pub async fn emit(&self, events: Vec<ClientEvent>) {
        for event in events {
            // An error only means the application dropped its event stream.
            let _ = self.events.send(event).await;
        }
    }

    /// Sends uploads on their paths, in order; the first frame for the server carries the
    /// send budget of the message.
    pub fn dispatch(
        &self,
        core: &mut Core,
        uploads: Vec<Upload>,
        mut budget: Option<OwnedSemaphorePermit>,
    ) {
        for upload in uploads {
            match upload {
                Upload::Frame(frame) => match frame_to_bytes(&frame, self.max_frame_len) {
                    Ok(bytes) => {
                        let _ = self.queue.send(Queued::frame(bytes, budget.take()));
                    }
                    Err(error) => tracing::error!(%error, "frame not sent"),
                },
                Upload::Datagram(datagram) => {
                    if let Ok(bytes) = datagram_to_bytes(&datagram) {
                        let _ = self.connection.send_datagram(bytes);
                    }
                }
                Upload::Peer { to, frame } => {
                    // The first copy of a message carries its budget, on any path.
                    direct::send_peer_frame(core, to, &frame, self.max_frame_len, budget.take());
                }
                Upload::PeerDatagram { to, datagram } => {
                    direct::send_peer_datagram(core, to, &datagram);
                }
            }
        }
    }
}

/// Closes the connections when the last handle goes.
struct CloseOnDrop {
    connection: quinn::Connection,
    endpoint: quinn::Endpoint,
}

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        close(&self.connection, CloseCode::Normal, "client closed");
        // Closing the endpoint ends direct connections and the tasks that serve them.
        self.endpoint.close(
            quinn::VarInt::from_u64(CloseCode::Normal.to_u64()).unwrap_or_default(),
            b"client closed",
        );
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

/// The application's stream of [`ClientEvent`]s: `Connected` first, `Disconnected` last.
#[derive(Debug)]
pub struct ClientEvents {
    rx: mpsc::Receiver<ClientEvent>,
}

impl ClientEvents {
    /// The next event; `None` after `Disconnected`.
    pub async fn next(&mut self) -> Option<ClientEvent> {
        self.rx.recv().await
    }
}

fn close(connection: &quinn::Connection, code: CloseCode, text: &str) {
    connection.close(
        quinn::VarInt::from_u64(code.to_u64()).unwrap_or_default(),
        text.as_bytes(),
    );
}

fn connection_error(error: quinn::ConnectionError) -> ConnectError {
    match error {
        quinn::ConnectionError::ApplicationClosed(close) => ConnectError::Refused {
            code: CloseCode::from_u64(close.error_code.into_inner()),
            reason: String::from_utf8_lossy(&close.reason).into_owned(),
        },
        other => ConnectError::Connection(other.to_string()),
    }
}

impl Client {
    /// Connects, logs in and waits for the server's welcome.
    ///
    /// # Errors
    /// [`ConnectError`]: [`ConnectError::Refused`] carries the server's close code and
    /// text (auth hook rejection, version mismatch, full server);
    /// [`ConnectError::Connection`] covers an unreachable server or a certificate that does
    /// not match the pin; [`ConnectError::Timeout`] after `timeouts.connect`.
    pub async fn connect(config: ClientConfig) -> Result<(Client, ClientEvents), ConnectError> {
        let identity = ClientIdentity::generate()?;
        let mut transport = quinn::TransportConfig::default();
        transport
            .max_idle_timeout(config.timeouts.idle.try_into().ok())
            .keep_alive_interval(Some(config.timeouts.keepalive));
        let transport = Arc::new(transport);
        let client_config = server_client_config(&config.server_trust, &identity, transport)?;
        let mut peer_transport = quinn::TransportConfig::default();
        peer_transport
            .max_idle_timeout(config.direct.path_timeout.try_into().ok())
            .keep_alive_interval(Some(config.direct.keepalive));
        let peer_transport = Arc::new(peer_transport);
        let expected_peers = Arc::new(ExpectedPeers::default());
        let peer_server =
            peer_server_config(&identity, expected_peers.clone(), peer_transport.clone())?;

        // One socket for the server connection, direct connections and punch probes, so
        // the address the server sees is the NAT mapping peers punch to.
        let std_socket =
            std::net::UdpSocket::bind(config.bind_addr()).map_err(ConnectError::Bind)?;
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

        let handshake = async {
            let connection = endpoint
                .connect_with(client_config, config.server_addr, &config.server_name)
                .map_err(|e| ConnectError::Connection(e.to_string()))?
                .await
                .map_err(connection_error)?;
            let (mut send, recv) = connection.open_bi().await.map_err(connection_error)?;
            let mut recv = FrameReader::new(recv, DEFAULT_MAX_FRAME_LEN);
            let hello = ClientToServer::Hello(Hello {
                version: PROTOCOL_VERSION,
                login: config.login.clone(),
            });
            let frame = frame_to_bytes(&hello, DEFAULT_MAX_FRAME_LEN)
                .map_err(|e| ConnectError::Protocol(e.to_string()))?;
            send.write_all(&frame).await.map_err(|e| match e {
                quinn::WriteError::ConnectionLost(e) => connection_error(e),
                other => ConnectError::Connection(other.to_string()),
            })?;
            let welcome = match recv.next().await {
                Ok(Some(body)) => decode_body::<ServerToClient>(&body)
                    .map_err(|e| ConnectError::Protocol(e.to_string()))?,
                Ok(None) => return Err(ConnectError::Protocol("stream closed".into())),
                Err(ReadEnd::Connection(error)) => return Err(connection_error(error)),
                Err(ReadEnd::Violation(_, text)) => return Err(ConnectError::Protocol(text)),
            };
            Ok((connection, send, recv, welcome))
        };
        let (connection, send, recv, welcome) =
            tokio::time::timeout(config.timeouts.connect, handshake)
                .await
                .map_err(|_| ConnectError::Timeout(config.timeouts.connect))??;

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

        let (events_tx, events_rx) = mpsc::channel(config.limits.event_queue.max(2));
        let _ = events_tx.try_send(ClientEvent::Connected { host_id });
        let (queue, queued) = mpsc::unbounded_channel();
        let guard = Arc::new(CloseOnDrop {
            connection: connection.clone(),
            endpoint: endpoint.clone(),
        });
        let inner = Arc::new(Inner {
            core: Mutex::new(Core {
                session: Session::new(host_id, max_frame_len, config.limits.receive_window),
                directs: HashMap::new(),
                punches: HashMap::new(),
            }),
            connection: connection.clone(),
            closed: AtomicBool::new(false),
            endpoint,
            socket,
            queue,
            budget: Arc::new(Semaphore::new(
                config.limits.send_queue_bytes.min(Semaphore::MAX_PERMITS),
            )),
            events: events_tx,
            max_frame_len,
            host_id,
            app_data,
            identity,
            expected_peers,
            direct: config.direct,
            peer_transport,
            random: ring::rand::SystemRandom::new(),
        });
        tokio::spawn(write_frames(send, queued));
        tokio::spawn(receive(inner.clone(), recv));
        tokio::spawn(direct::accept_peers(inner.clone()));
        tokio::spawn(direct::dispatch_probes(inner.clone(), probes));
        tokio::spawn(direct::flush_acks(inner.clone()));
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
        Ok((client, ClientEvents { rx: events_rx }))
    }

    /// Sends `payload` to `target`, waiting while the send queue is full.
    ///
    /// Reliable messages go on the server connection's stream, each with the next sequence
    /// number of each destination pair; unreliable ones go in datagrams and never wait.
    ///
    /// # Errors
    /// [`SendError`]: a target this client may not use ([`SendError::NotInGroup`],
    /// [`SendError::NotAPeer`]), a payload too large ([`SendError::TooLarge`],
    /// [`SendError::TooLargeForDatagram`]), or [`SendError::Disconnected`].
    pub async fn send(
        &self,
        target: Target,
        payload: impl Into<Bytes>,
        delivery: Delivery,
    ) -> Result<(), SendError> {
        let payload = payload.into();
        let budget = match delivery {
            Delivery::Unreliable => None,
            _ => Some(
                self.inner
                    .budget
                    .clone()
                    .acquire_many_owned(cost(&payload))
                    .await
                    .map_err(|_| SendError::Disconnected)?,
            ),
        };
        let loopback = match self.wants_loopback(&target) {
            true => Some(
                self.inner
                    .events
                    .reserve()
                    .await
                    .map_err(|_| SendError::Disconnected)?,
            ),
            false => None,
        };
        self.enqueue(&target, payload, delivery, budget, loopback)
    }

    /// As [`Client::send`], but never waits.
    ///
    /// # Errors
    /// As [`Client::send`], plus [`SendError::QueueFull`] when the send queue (or, for a
    /// loopback send, the event queue) is full.
    pub fn try_send(
        &self,
        target: Target,
        payload: impl Into<Bytes>,
        delivery: Delivery,
    ) -> Result<(), SendError> {
        let payload = payload.into();
        let budget = match delivery {
            Delivery::Unreliable => None,
            _ => Some(
                self.inner
                    .budget
                    .clone()
                    .try_acquire_many_owned(cost(&payload))
                    .map_err(|e| match e {
                        tokio::sync::TryAcquireError::Closed => SendError::Disconnected,
                        tokio::sync::TryAcquireError::NoPermits => SendError::QueueFull,
                    })?,
            ),
        };
        let loopback = match self.wants_loopback(&target) {
            true => Some(self.inner.events.try_reserve().map_err(|e| match e {
                mpsc::error::TrySendError::Full(()) => SendError::QueueFull,
                mpsc::error::TrySendError::Closed(()) => SendError::Disconnected,
            })?),
            false => None,
        };
        self.enqueue(&target, payload, delivery, budget, loopback)
    }

    fn wants_loopback(&self, target: &Target) -> bool {
        match target {
            Target::GroupLoopback(_) => true,
            Target::Host(host) => *host == self.host_id(),
            Target::Hosts(hosts) => hosts.contains(&self.host_id()),
            _ => false,
        }
    }

    fn enqueue(
        &self,
        target: &Target,
        payload: Bytes,
        delivery: Delivery,
        budget: Option<OwnedSemaphorePermit>,
        loopback: Option<mpsc::Permit<'_, ClientEvent>>,
    ) -> Result<(), SendError> {
        let inner = &self.inner;
        if inner.closed.load(Ordering::Acquire) {
            return Err(SendError::Disconnected);
        }
        let max_datagram = match delivery {
            Delivery::Unreliable => inner.connection.max_datagram_size(),
            _ => None,
        };
        // Sequence numbers are assigned, paths chosen and frames queued under one lock, so
        // each path carries a pair's messages in sequence order and none slips between
        // paths while one changes.
        let mut core = inner.lock();
        let uploads = core
            .session
            .plan_send(target, payload, delivery, max_datagram)?;
        inner.dispatch(&mut core, uploads, budget);
        let mut events = inner.flush(&mut core).into_iter();
        drop(core);
        if let (Some(permit), Some(event)) = (loopback, events.next()) {
            permit.send(event);
        }
        for event in events {
            let _ = inner.events.try_send(event);
        }
        Ok(())
    }

    fn session(&self) -> SessionGuard<'_> {
        SessionGuard(self.inner.lock())
    }

    /// This client's id.
    pub fn host_id(&self) -> HostId {
        self.inner.host_id
    }

    /// What the server's auth hook attached to the login.
    pub fn app_data(&self) -> Bytes {
        self.inner.app_data.clone()
    }

    /// SHA-256 of this client's identity certificate, as peers will see it.
    pub fn identity(&self) -> Fingerprint {
        self.inner.identity.fingerprint()
    }

    /// What this client measures about a peer: path, direct RTT, messages and bytes per
    /// path, punch attempts. `None` if it is not a peer.
    pub fn peer_stats(&self, peer: HostId) -> Option<PeerStats> {
        self.session().peer_stats(peer)
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
            link.connection.close(
                quinn::VarInt::from_u64(CloseCode::Normal.to_u64()).unwrap_or_default(),
                b"closed for a test",
            );
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
        let (done, finished) = oneshot::channel();
        let marker = Queued {
            frame: Bytes::new(),
            _budget: None,
            finished: Some(done),
        };
        if self.inner.queue.send(marker).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(2), finished).await;
        }
        self.inner.closed.store(true, Ordering::Release);
        close(&self.inner.connection, CloseCode::Normal, "client closed");
        self.inner.endpoint.close(
            quinn::VarInt::from_u64(CloseCode::Normal.to_u64()).unwrap_or_default(),
            b"client closed",
        );
        let _ = tokio::time::timeout(Duration::from_secs(1), self.inner.endpoint.wait_idle()).await;
    }
}

fn cost(payload: &Bytes) -> u32 {
    u32::try_from(payload.len() + PER_MESSAGE_COST).unwrap_or(u32::MAX)
}

/// Why reading stopped.
pub(crate) enum ReadEnd {
    Connection(quinn::ConnectionError),
    Violation(CloseCode, String),
}

impl From<FrameError> for ReadEnd {
    fn from(error: FrameError) -> Self {
        ReadEnd::Violation(error.close_code(), error.to_string())
    }
}

/// Reads length-prefixed frames from a QUIC stream in large chunks, so one read (and one
/// lock of quinn's connection state) serves many small frames.
pub(crate) struct FrameReader {
    recv: quinn::RecvStream,
    decoder: FrameDecoder,
}

/// The most bytes taken from the stream in one read.
const READ_CHUNK: usize = 64 * 1024;

impl FrameReader {
    /// Frames of at most `max` bytes from `recv`.
    pub fn new(recv: quinn::RecvStream, max: u32) -> Self {
        Self {
            recv,
            decoder: FrameDecoder::new(max),
        }
    }

    /// The next frame body; `Ok(None)` on a clean end of stream between frames.
    pub async fn next(&mut self) -> Result<Option<Bytes>, ReadEnd> {
        loop {
            if let Some(body) = self.decoder.next_body()? {
                return Ok(Some(body));
            }
            match self.recv.read_chunk(READ_CHUNK, true).await {
                Ok(Some(chunk)) => self.decoder.push(&chunk.bytes),
                Ok(None) if self.decoder.buffered() == 0 => return Ok(None),
                Ok(None) => {
                    return Err(ReadEnd::Violation(
                        CloseCode::ProtocolViolation,
                        "stream ended inside a frame".into(),
                    ))
                }
                Err(quinn::ReadError::ConnectionLost(error)) => {
                    return Err(ReadEnd::Connection(error))
                }
                Err(other) => {
                    return Err(ReadEnd::Violation(
                        CloseCode::ProtocolViolation,
                        other.to_string(),
                    ))
                }
            }
        }
    }
}

async fn write_frames(mut send: quinn::SendStream, mut queued: mpsc::UnboundedReceiver<Queued>) {
    let mut batch = Vec::with_capacity(64);
    let mut chunks = bytes::BytesMut::new();
    while queued.recv_many(&mut batch, 64).await > 0 {
        for item in batch.drain(..) {
            if let Some(done) = item.finished {
                if send.write_all(&chunks).await.is_err() || send.finish().is_err() {
                    return;
                }
                // Resolves once the server has read the stream to its end.
                let _ = send.stopped().await;
                let _ = done.send(());
                return;
            }
            // One buffer per batch: quinn scans a stream's unacknowledged buffers for
            // each packet it builds, so many small ones slow it down.
            chunks.extend_from_slice(&item.frame);
        }
        if send.write_all(&chunks).await.is_err() {
            return;
        }
        chunks.clear();
    }
}

/// Reads the control stream and datagrams until the connection ends, then reports
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
    let _ = inner
        .events
        .send(ClientEvent::Disconnected { reason })
        .await;
}

async fn read_frames(inner: &Arc<Inner>, mut recv: FrameReader) -> ReadEnd {
    loop {
        let body = match recv.next().await {
            Ok(Some(body)) => body,
            Ok(None) => {
                return ReadEnd::Violation(
                    CloseCode::ProtocolViolation,
                    "control stream closed".into(),
                )
            }
            Err(end) => return end,
        };
        let frame = match decode_body::<ServerToClient>(&body) {
            Ok(frame) => frame,
            Err(error) => return error.into(),
        };
        let events = {
            let mut core = inner.lock();
            if let Err(text) = core.session.handle_frame(frame) {
                return ReadEnd::Violation(CloseCode::ProtocolViolation, text);
            }
            inner.flush(&mut core)
        };
        inner.emit(events).await;
    }
}

async fn read_datagrams(inner: &Arc<Inner>) -> ReadEnd {
    loop {
        let datagram = match inner.connection.read_datagram().await {
            Ok(datagram) => datagram,
            Err(error) => return ReadEnd::Connection(error),
        };
        let message = match decode_body::<ServerDatagram>(&datagram) {
            Ok(message) => message,
            Err(error) => return error.into(),
        };
        let events = {
            let mut core = inner.lock();
            core.session.handle_datagram(message);
            inner.flush(&mut core)
        };
        inner.emit(events).await;
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
