//! The public [`Client`] handle and its background tasks.

use crate::config::ClientConfig;
use crate::error::{ConnectError, SendError};
use crate::events::{ClientEvent, DisconnectReason};
use crate::session::{Session, Target, Upload};
use crate::tls::{server_client_config, ClientIdentity};
use bytes::Bytes;
use peergroup_protocol::{
    body_len, datagram_to_bytes, decode_body, frame_to_bytes, ClientToServer, CloseCode, Delivery,
    Fingerprint, FrameError, GroupId, Hello, HostId, PeerInfo, ServerDatagram, ServerToClient,
    DEFAULT_MAX_FRAME_LEN, LENGTH_PREFIX_LEN, PROTOCOL_VERSION,
};
use std::net::SocketAddr;
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

struct Inner {
    session: Mutex<Session>,
    connection: quinn::Connection,
    endpoint: quinn::Endpoint,
    queue: mpsc::UnboundedSender<Queued>,
    budget: Arc<Semaphore>,
    events: mpsc::Sender<ClientEvent>,
    max_frame_len: u32,
    app_data: Bytes,
    identity: Fingerprint,
}

/// Closes the connection when the last handle goes.
struct CloseOnDrop(quinn::Connection);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        close(&self.0, CloseCode::Normal, "client closed");
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

        let socket = std::net::UdpSocket::bind(config.bind_addr()).map_err(ConnectError::Bind)?;
        let mut endpoint_config = quinn::EndpointConfig::default();
        // Punch probes share this socket and are told apart by the QUIC fixed bit.
        endpoint_config.grease_quic_bit(false);
        let endpoint =
            quinn::Endpoint::new(endpoint_config, None, socket, Arc::new(quinn::TokioRuntime))
                .map_err(ConnectError::Bind)?;

        let handshake = async {
            let connection = endpoint
                .connect_with(client_config, config.server_addr, &config.server_name)
                .map_err(|e| ConnectError::Connection(e.to_string()))?
                .await
                .map_err(connection_error)?;
            let (mut send, mut recv) = connection.open_bi().await.map_err(connection_error)?;
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
            let welcome = match read_frame(&mut recv, DEFAULT_MAX_FRAME_LEN).await {
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
        let inner = Arc::new(Inner {
            session: Mutex::new(Session::new(
                host_id,
                max_frame_len,
                config.limits.receive_window,
            )),
            connection: connection.clone(),
            endpoint,
            queue,
            budget: Arc::new(Semaphore::new(
                config.limits.send_queue_bytes.min(Semaphore::MAX_PERMITS),
            )),
            events: events_tx,
            max_frame_len,
            app_data,
            identity: identity.fingerprint(),
        });
        tokio::spawn(write_frames(send, queued));
        tokio::spawn(receive(inner.clone(), recv));
        tracing::info!(%host_id, server = %config.server_addr, "connected");
        let client = Client {
            _guard: Arc::new(CloseOnDrop(connection)),
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
        mut budget: Option<OwnedSemaphorePermit>,
        loopback: Option<mpsc::Permit<'_, ClientEvent>>,
    ) -> Result<(), SendError> {
        let inner = &self.inner;
        if inner.connection.close_reason().is_some() {
            return Err(SendError::Disconnected);
        }
        let max_datagram = inner.connection.max_datagram_size();
        // Sequence numbers are assigned and frames queued under one lock, so the stream
        // carries each pair's messages in sequence order.
        let len = payload.len();
        let mut session = self.session();
        let uploads = session.plan_send(target, payload, delivery, max_datagram)?;
        if let (Some(permit), Some(event)) = (loopback, session.poll_event()) {
            permit.send(event);
        }
        for upload in uploads {
            match upload {
                Upload::Frame(frame) => {
                    let frame = frame_to_bytes(&frame, inner.max_frame_len).map_err(|_| {
                        SendError::TooLarge {
                            len: 0,
                            max: inner.max_frame_len as usize,
                        }
                    })?;
                    let queued = Queued::frame(frame, budget.take());
                    inner
                        .queue
                        .send(queued)
                        .map_err(|_| SendError::Disconnected)?;
                }
                Upload::Datagram(datagram) => {
                    let bytes = datagram_to_bytes(&datagram).map_err(|_| {
                        SendError::TooLargeForDatagram {
                            len,
                            max: max_datagram.unwrap_or(0),
                        }
                    })?;
                    match inner.connection.send_datagram(bytes) {
                        Ok(()) => {}
                        Err(quinn::SendDatagramError::TooLarge) => {
                            return Err(SendError::TooLargeForDatagram {
                                len,
                                max: inner.connection.max_datagram_size().unwrap_or(0),
                            })
                        }
                        Err(_) => return Err(SendError::Disconnected),
                    }
                }
            }
        }
        Ok(())
    }

    fn session(&self) -> MutexGuard<'_, Session> {
        self.inner
            .session
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// This client's id.
    pub fn host_id(&self) -> HostId {
        self.session().host_id()
    }

    /// What the server's auth hook attached to the login.
    pub fn app_data(&self) -> Bytes {
        self.inner.app_data.clone()
    }

    /// SHA-256 of this client's identity certificate, as peers will see it.
    pub fn identity(&self) -> Fingerprint {
        self.inner.identity
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
    /// 1 s for it to leave). Other handles see [`SendError::Disconnected`] afterwards.
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
        close(&self.inner.connection, CloseCode::Normal, "client closed");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.inner.endpoint.wait_idle()).await;
    }
}

fn cost(payload: &Bytes) -> u32 {
    u32::try_from(payload.len() + PER_MESSAGE_COST).unwrap_or(u32::MAX)
}

/// Why reading stopped.
enum ReadEnd {
    Connection(quinn::ConnectionError),
    Violation(CloseCode, String),
}

impl From<FrameError> for ReadEnd {
    fn from(error: FrameError) -> Self {
        ReadEnd::Violation(error.close_code(), error.to_string())
    }
}

async fn read_frame(recv: &mut quinn::RecvStream, max: u32) -> Result<Option<Bytes>, ReadEnd> {
    let mut prefix = [0u8; LENGTH_PREFIX_LEN];
    let ended = |error: quinn::ReadExactError| match error {
        quinn::ReadExactError::FinishedEarly(_) => ReadEnd::Violation(
            CloseCode::ProtocolViolation,
            "stream ended inside a frame".into(),
        ),
        quinn::ReadExactError::ReadError(quinn::ReadError::ConnectionLost(e)) => {
            ReadEnd::Connection(e)
        }
        quinn::ReadExactError::ReadError(other) => {
            ReadEnd::Violation(CloseCode::ProtocolViolation, other.to_string())
        }
    };
    match recv.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(error) => return Err(ended(error)),
    }
    let len = body_len(prefix, max)?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await.map_err(ended)?;
    Ok(Some(body.into()))
}

async fn write_frames(mut send: quinn::SendStream, mut queued: mpsc::UnboundedReceiver<Queued>) {
    let mut batch = Vec::with_capacity(64);
    let mut chunks = Vec::with_capacity(64);
    while queued.recv_many(&mut batch, 64).await > 0 {
        for item in batch.drain(..) {
            if let Some(done) = item.finished {
                if send.write_all_chunks(&mut chunks).await.is_err() || send.finish().is_err() {
                    return;
                }
                // Resolves once the server has read the stream to its end.
                let _ = send.stopped().await;
                let _ = done.send(());
                return;
            }
            chunks.push(item.frame);
        }
        if send.write_all_chunks(&mut chunks).await.is_err() {
            return;
        }
        chunks.clear();
    }
}

/// Reads the control stream and datagrams until the connection ends, then reports
/// `Disconnected`.
async fn receive(inner: Arc<Inner>, recv: quinn::RecvStream) {
    let end = tokio::select! {
        end = read_frames(&inner, recv) => end,
        end = read_datagrams(&inner) => end,
    };
    let reason = match end {
        ReadEnd::Connection(error) => DisconnectReason::from_connection_error(&error),
        ReadEnd::Violation(code, text) => {
            tracing::warn!(%code, %text, "closing: the server broke the protocol");
            close(&inner.connection, code, &text);
            DisconnectReason::ProtocolError { detail: text }
        }
    };
    tracing::info!(%reason, "disconnected");
    let _ = inner
        .events
        .send(ClientEvent::Disconnected { reason })
        .await;
}

async fn read_frames(inner: &Inner, mut recv: quinn::RecvStream) -> ReadEnd {
    let mut events = Vec::new();
    loop {
        let body = match read_frame(&mut recv, inner.max_frame_len).await {
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
        {
            let mut session = inner
                .session
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Err(text) = session.handle_frame(frame) {
                return ReadEnd::Violation(CloseCode::ProtocolViolation, text);
            }
            while let Some(ack) = session.poll_frame() {
                // Acks are tiny and bounded by the notices the server sends; they skip
                // the send budget so a full queue never stalls them.
                if let Ok(frame) = frame_to_bytes(&ack, inner.max_frame_len) {
                    let _ = inner.queue.send(Queued::frame(frame, None));
                }
            }
            events.extend(std::iter::from_fn(|| session.poll_event()));
        }
        for event in events.drain(..) {
            if inner.events.send(event).await.is_err() {
                // The application dropped its event stream; keep the connection serving.
            }
        }
    }
}

async fn read_datagrams(inner: &Inner) -> ReadEnd {
    loop {
        let datagram = match inner.connection.read_datagram().await {
            Ok(datagram) => datagram,
            Err(error) => return ReadEnd::Connection(error),
        };
        let message = match decode_body::<ServerDatagram>(&datagram) {
            Ok(message) => message,
            Err(error) => return error.into(),
        };
        let event = {
            let mut session = inner
                .session
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            session.handle_datagram(message);
            session.poll_event()
        };
        if let Some(event) = event {
            let _ = inner.events.send(event).await;
        }
    }
}
