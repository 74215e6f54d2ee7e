//! The public [`Server`] handle and its background tasks (accept loop, timer).

use crate::app_events::{EventSink, ServerEvents};
use crate::auth::AuthHook;
use crate::config::{ServerConfig, WebSocketListen};
use crate::error::SendError;
use crate::identity::IdentityError;
use crate::metrics::{AckLatency, RelayByDelivery};
use crate::registry::Registry;
use crate::shared::Shared;
use crate::tls::quic_server_config;
use bytes::Bytes;
use peergroup_protocol::{
    Carrier, CloseCode, Fingerprint, GroupId, HostId, SendOptions, DATAGRAM_DELIVER_OVERHEAD,
};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// UDP receive buffer asked of the kernel, bytes (the kernel may cap it at
/// `net.core.rmem_max`).
const SOCKET_BUFFER: usize = 4 << 20;

/// The server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The UDP socket could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The TLS identity was unusable.
    #[error("TLS setup: {0}")]
    Tls(#[from] rustls::Error),
    /// The identity could not be loaded.
    #[error(transparent)]
    Identity(#[from] IdentityError),
}

/// Where a message from the server application goes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerTarget {
    /// One client.
    Host(HostId),
    /// Every client member of a group.
    Group(GroupId),
    /// Several clients.
    Hosts(Vec<HostId>),
}

/// Counters for monitoring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerStats {
    /// Connected clients.
    pub clients: usize,
    /// Of those, the ones connected over the WebSocket fallback (offline ones counted by
    /// their last connection).
    pub websocket_clients: usize,
    /// Groups.
    pub groups: usize,
    /// Pairs, lingering ones included.
    pub pairs: usize,
    /// Pairs whose traffic takes the direct path.
    pub direct_pairs: usize,
    /// Pairs whose traffic takes the relay, lingering ones included.
    pub relayed_pairs: usize,
    /// Messages relayed (one per destination) since start.
    pub relayed: u64,
    /// Payload bytes relayed (counted per destination) since start.
    pub relayed_bytes: u64,
    /// Payload bytes relayed in the last whole second.
    pub relay_bytes_per_sec: u64,
    /// Relay destinations refused since start.
    pub relay_refused: u64,
    /// Datagrams dropped since start because their sender was past its delivery rate
    /// ([`Limits::datagram_deliveries_per_sec`](crate::Limits::datagram_deliveries_per_sec)),
    /// or because a ping or pong named more than one destination.
    pub datagrams_rate_limited: u64,
    /// Lifecycle events queued for the application and not yet read.
    pub events_queued: usize,
    /// Joins and leaves waiting for their acks.
    pub acks_pending: usize,
    /// Membership notices sent since start (joins, leaves, data changes; one per notice
    /// and receiver).
    pub notices_sent: u64,
    /// Frames those notices travelled in: one per client per operation or batch.
    pub notice_frames_sent: u64,
    /// Messages and payload bytes relayed since start, by delivery mode.
    pub relayed_by_delivery: RelayByDelivery,
    /// Incoming connections that failed before the client was admitted, since start: TLS
    /// handshake (a client that does not trust the certificate, or sends none), the hello
    /// (wrong protocol version, malformed, longer than
    /// [`Admission::max_hello_len`](crate::Admission::max_hello_len)), the hello timeout
    /// ([`Admission::hello_timeout`](crate::Admission::hello_timeout), default 5 s) or
    /// the handshake timeout ([`Timeouts::handshake`](crate::Timeouts::handshake), default
    /// 10 s). Auth rejections and refusals are counted apart.
    pub handshake_failures: u64,
    /// Logins the auth hook rejected, since start.
    pub auth_rejections: u64,
    /// Connections refused since start: at the client limit (in all, or
    /// [`Admission::max_clients_per_source`](crate::Admission::max_clients_per_source)),
    /// while the application's event backlog is full, or while draining.
    pub connections_refused: u64,
    /// Connections refused at their first packet since start, before any state was kept
    /// for them: too many in their handshake in all or from their source
    /// ([`Admission::max_handshakes`](crate::Admission::max_handshakes),
    /// [`Admission::max_handshakes_per_source`](crate::Admission::max_handshakes_per_source)).
    pub admission_refusals: u64,
    /// Connections asked to validate their address with a QUIC Retry since start (while
    /// [`Admission::validate_above`](crate::Admission::validate_above) connections were in
    /// their handshake).
    pub address_validations: u64,
    /// Host candidates clients named that were dropped as unusable since start
    /// (unspecified, multicast, broadcast, loopback, port 0, another address family,
    /// repeated, or more than 16).
    pub host_candidates_dropped: u64,
    /// Punches put off since start because a host had used up its punch order budget
    /// ([`PunchConfig::order_burst`](crate::PunchConfig::order_burst)).
    pub punch_orders_deferred: u64,
    /// Clients disconnected as slow consumers since start (see
    /// [`Limits::client_queue_bytes`](crate::Limits::client_queue_bytes)).
    pub slow_consumer_disconnects: u64,
    /// Punch attempts ordered since start, one per pair and attempt.
    pub punch_attempts: u64,
    /// Pairs that moved to a direct path by punching, since start.
    pub punch_successes: u64,
    /// How long joins took to complete with every ack, since start.
    pub join_ack_latency: AckLatency,
    /// How long leaves took to complete with every ack, since start.
    pub leave_ack_latency: AckLatency,
}

/// Cancels the server when the last handle goes.
#[derive(Debug)]
struct ShutdownOnDrop(CancellationToken);

impl Drop for ShutdownOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// A running server: a cheap `Clone` handle. Dropping the last handle shuts it down;
/// [`Server::shutdown`] does so at once.
#[derive(Debug, Clone)]
pub struct Server {
    pub(crate) shared: Arc<Shared>,
    local_addr: SocketAddr,
    websocket_addr: Option<SocketAddr>,
    fingerprint: Fingerprint,
    _guard: Arc<ShutdownOnDrop>,
}

impl Server {
    /// Binds and starts a server that accepts every client.
    ///
    /// # Errors
    /// [`StartError`] when the socket cannot be bound or the identity is unusable.
    pub async fn start(config: ServerConfig) -> Result<(Server, ServerEvents), StartError> {
        Self::start_with_auth(config, AuthHook::accept_all(), CancellationToken::new()).await
    }

    /// Binds and starts a server with an auth hook, stopping when `shutdown` is cancelled
    /// (or the last handle is dropped).
    ///
    /// # Errors
    /// [`StartError`] when the socket cannot be bound or the identity is unusable.
    pub async fn start_with_auth(
        config: ServerConfig,
        auth: AuthHook,
        shutdown: CancellationToken,
    ) -> Result<(Server, ServerEvents), StartError> {
        let pre_login_window = crate::admission::pre_login_receive_window(&config.admission);
        let mut transport = quinn::TransportConfig::default();
        transport
            .max_idle_timeout(Some(
                config
                    .timeouts
                    .idle
                    .try_into()
                    .unwrap_or(quinn::IdleTimeout::from(quinn::VarInt::MAX)),
            ))
            // Datagrams queued for a slow client: the oldest go first (RFC 9221 allows it).
            .datagram_send_buffer_size(256 << 10)
            // Stream bytes written to a client and not yet acknowledged: the writer hands
            // quinn 32 KiB at a time and the client's queue holds the rest (bounded by
            // the slow-consumer limits), so this only caps what a client that advertises
            // a large window and never acknowledges can pin in quinn (its default is
            // 10 MB per connection). 2 MiB is 40 MiB/s per client at 50 ms RTT.
            .send_window(2 << 20)
            // Datagrams received and not yet read: the reader takes them as they come once
            // the client is logged in (and drops them before), so this only fills while the
            // relay waits on a backlogged receiver; older ones are dropped first. quinn's
            // default is 1.25 MB per connection.
            .datagram_receive_buffer_size(Some(256 << 10))
            // Clients use one bidirectional stream, and one unidirectional control stream
            // once logged in (the connection task allows it then); quinn reserves state
            // for every stream it allows up front (about 8.5 KiB per client at its default
            // of 100 + 100).
            .max_concurrent_bidi_streams(1u8.into())
            .max_concurrent_uni_streams(0u8.into())
            // Each stream may carry a logged-in client's window...
            .stream_receive_window(config.limits.client_receive_window.into())
            // ...but the connection starts with room for one hello only (quinn's default
            // is unlimited): a client that never finishes its hello holds at most this.
            // The connection task raises it at login (`Connection::set_receive_window`).
            .receive_window(pre_login_window.into());
        // Clients acknowledge what we send every tenth packet, not every second.
        peergroup_transport::ack_less_often(&mut transport);
        let mut quic = quic_server_config(&config.identity, transport)?;
        // Connection attempts quinn holds before the accept loop has ruled on them (it
        // rules on each at once: accept, Retry or refuse). quinn's defaults (65,536
        // attempts, 10 MiB each, 100 MiB in all) are sized for slow applications; past
        // these quinn refuses new attempts itself. No 0-RTT is offered, so an attempt's
        // later packets are only its handshake's.
        quic.max_incoming(config.admission.max_handshakes.saturating_mul(4).max(1_024))
            .incoming_buffer_size(64 << 10)
            .incoming_buffer_size_total(8 << 20);
        let mut endpoint_config = quinn::EndpointConfig::default();
        // Clients demultiplex punch probes by the QUIC fixed bit (ARCHITECTURE.md, "Hole
        // punching").
        endpoint_config.grease_quic_bit(false);
        let socket =
            std::net::UdpSocket::bind(config.listen).map_err(|source| StartError::Bind {
                addr: config.listen,
                source,
            })?;
        // Bursts of handshakes overflow the kernel's default receive buffer (about
        // 208 KiB on Linux), and each lost handshake packet costs its client a ~1 s resend.
        if let Ok(state) = quinn::udp::UdpSocketState::new((&socket).into()) {
            if let Err(error) = state.set_recv_buffer_size((&socket).into(), SOCKET_BUFFER) {
                tracing::warn!(%error, "could not enlarge the UDP receive buffer");
            }
        }
        let endpoint = quinn::Endpoint::new(
            endpoint_config,
            Some(quic),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
        let local_addr = endpoint.local_addr().map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;

        let (sink, events) = EventSink::new(
            config.limits.app_event_queue,
            config.limits.app_message_queue,
            shutdown.clone(),
        );
        let shared = Arc::new(Shared::new(
            // The clock clients synchronise to starts with the server.
            Registry::new(config.registry(), Instant::now()),
            sink,
            &config,
            shutdown.clone(),
        ));
        let fingerprint = config.identity.fingerprint();
        let websocket = match config.websocket {
            WebSocketListen::Off => None,
            WebSocketListen::SamePort => Some(local_addr),
            WebSocketListen::At(addr) => Some(addr),
        };
        let websocket_addr = match websocket {
            None => None,
            Some(addr) => {
                let bind_error = |source| StartError::Bind { addr, source };
                let listener = match tokio::net::TcpListener::bind(addr).await {
                    Ok(listener) => listener,
                    // The OS picked the UDP port (`listen` port 0), so nobody can rely on
                    // the number: when TCP has it taken, any free port will do
                    // (`Server::websocket_addr` tells which). A port given on purpose
                    // must be had.
                    Err(_)
                        if config.websocket == WebSocketListen::SamePort
                            && config.listen.port() == 0 =>
                    {
                        let any = SocketAddr::new(addr.ip(), 0);
                        tokio::net::TcpListener::bind(any)
                            .await
                            .map_err(bind_error)?
                    }
                    Err(source) => return Err(bind_error(source)),
                };
                let bound = listener.local_addr().map_err(bind_error)?;
                let tls = crate::tls::websocket_tls_config(&config.identity)?;
                tracing::info!(%bound, "WebSocket fallback listening");
                tokio::spawn(crate::websocket::accept_loop(
                    listener,
                    Arc::new(tls),
                    shared.clone(),
                    auth.clone(),
                ));
                Some(bound)
            }
        };
        tracing::info!(%local_addr, %fingerprint, "peergroup server listening");
        tokio::spawn(accept_loop(endpoint, shared.clone(), auth));
        tokio::spawn(timer_loop(shared.clone()));
        let server = Server {
            shared,
            local_addr,
            websocket_addr,
            fingerprint,
            _guard: Arc::new(ShutdownOnDrop(shutdown)),
        };
        Ok((server, events))
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The bound TCP address of the WebSocket fallback; `None` when it is
    /// [`WebSocketListen::Off`].
    pub fn websocket_addr(&self) -> Option<SocketAddr> {
        self.websocket_addr
    }

    /// SHA-256 of the server certificate: what clients pin.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// Stops accepting, closes every connection with `ServerShutdown` at once (what is
    /// still queued for a client is lost; [`Server::shutdown_gracefully`] sends it first),
    /// and ends the event stream once it is drained.
    pub fn shutdown(&self) {
        self.shared.shutdown.cancel();
    }

    /// Sends a message from the server application with `options` (a [`Delivery`], or
    /// [`SendOptions`] with a channel and priority). Reliable modes go on each client's
    /// stream, through its queue (a client whose queue passes the hard limit is
    /// disconnected as a slow consumer; a [`Delivery::Latest`] message replaces a queued
    /// one with the same key); unreliable ones in one datagram each.
    ///
    /// # Errors
    /// [`SendError::UnknownHost`] / [`SendError::UnknownGroup`] for a bad target,
    /// [`SendError::TooLarge`] over the message limit ([`Limits::max_message_len`],
    /// default 1 MiB), [`SendError::TooLargeForDatagram`] when an unreliable payload does
    /// not fit some receiver's path. Nothing is sent then.
    ///
    /// [`Limits::max_message_len`]: crate::Limits::max_message_len
    /// [`Delivery`]: crate::Delivery
    /// [`Delivery::Latest`]: crate::Delivery::Latest
    pub fn send(
        &self,
        target: ServerTarget,
        payload: impl Into<Bytes>,
        options: impl Into<SendOptions>,
    ) -> Result<(), SendError> {
        let payload = payload.into();
        let options = options.into();
        let max_message = self.shared.limits.max_message_len;
        if payload.len() > max_message as usize {
            return Err(SendError::TooLarge {
                len: payload.len(),
                max: max_message as usize,
            });
        }
        let carrier = options.carrier();
        // Checked here, where the links are; numbered and queued by the registry, so the
        // client gets it in the registry's order among everything else it is sent.
        let (sent, unsettled) = self.shared.with_core(|core| {
            let (hosts, group) = match target {
                ServerTarget::Host(host) => (vec![host], None),
                ServerTarget::Hosts(hosts) => (hosts, None),
                ServerTarget::Group(group) => {
                    let members = core
                        .registry
                        .group_members(group)
                        .map_err(|_| SendError::UnknownGroup(group))?;
                    let clients = members.into_iter().filter(|h| *h != HostId::SERVER);
                    (clients.collect(), Some(group))
                }
            };
            for host in &hosts {
                if !core.links.contains_key(host) {
                    return Err(SendError::UnknownHost(*host));
                }
            }
            if let Carrier::Datagram(_) = carrier {
                for host in &hosts {
                    let max = core.links[host]
                        .wire
                        .max_datagram_size(self.shared.limits.max_frame_len())
                        .unwrap_or(0)
                        .saturating_sub(DATAGRAM_DELIVER_OVERHEAD);
                    if payload.len() > max {
                        return Err(SendError::TooLargeForDatagram {
                            host: *host,
                            len: payload.len(),
                            max,
                        });
                    }
                }
            }
            core.registry
                .handle_app_send(&hosts, group, carrier, options.priority, payload);
            Ok(())
        });
        // The application's call cannot wait, so only the hard limit applies here.
        drop(unsettled);
        sent
    }

    /// Sends an application message type, encoded with postcard
    /// ([`peergroup_protocol::typed`]); clients read it with `decode`. Otherwise as
    /// [`Server::send`].
    ///
    /// # Errors
    /// As [`Server::send`], plus [`SendError::Encode`] when the value cannot be encoded.
    pub fn send_message<T: serde::Serialize + ?Sized>(
        &self,
        target: ServerTarget,
        message: &T,
        options: impl Into<SendOptions>,
    ) -> Result<(), SendError> {
        let payload = peergroup_protocol::typed::encode(message)?;
        self.send(target, payload, options)
    }

    /// A client's punch record: orders, successes, failures by kind, lost direct paths.
    /// `None` for a host that is not connected.
    pub fn punch_stats(&self, host: HostId) -> Option<crate::PunchStats> {
        self.shared.lock().registry.punch_stats(host)
    }

    /// The server's view of the pair between two clients: path, relayed messages, punch
    /// attempts. `None` if they have no pair.
    pub fn pair_stats(&self, a: HostId, b: HostId) -> Option<crate::PairStats> {
        self.shared.lock().registry.pair_stats(a, b)
    }

    /// Counters for monitoring.
    pub fn stats(&self) -> ServerStats {
        let driver = self.shared.counters.snapshot();
        let mut core = self.shared.lock();
        let counters = core.registry.counters();
        let websocket_clients = core
            .links
            .values()
            .filter(|link| link.wire.transport() == crate::Transport::WebSocket)
            .count();
        ServerStats {
            clients: core.registry.host_count(),
            websocket_clients,
            groups: core.registry.group_count(),
            pairs: core.registry.pair_count(),
            relayed: counters.relayed,
            relayed_bytes: counters.relayed_bytes,
            relay_bytes_per_sec: core.registry.relay_bytes_per_sec(Instant::now()),
            direct_pairs: core.registry.pair_paths().0,
            relayed_pairs: core.registry.pair_paths().1,
            relay_refused: counters.relay_refused,
            datagrams_rate_limited: counters.datagrams_rate_limited,
            events_queued: self.shared.events.queued(),
            acks_pending: core.registry.pending_acks(),
            notices_sent: counters.notices,
            notice_frames_sent: self
                .shared
                .notice_frames
                .load(std::sync::atomic::Ordering::Relaxed),
            relayed_by_delivery: counters.relayed_by_delivery,
            handshake_failures: driver.handshake_failures,
            auth_rejections: driver.auth_rejections,
            connections_refused: driver.connections_refused,
            admission_refusals: driver.admission_refusals,
            address_validations: driver.address_validations,
            host_candidates_dropped: counters.host_candidates_dropped,
            punch_orders_deferred: counters.punch_orders_deferred,
            slow_consumer_disconnects: driver.slow_consumer_disconnects,
            punch_attempts: counters.punch_attempts,
            punch_successes: counters.punch_successes,
            join_ack_latency: driver.join_ack_latency,
            leave_ack_latency: driver.leave_ack_latency,
        }
    }
}

async fn accept_loop(endpoint: quinn::Endpoint, shared: Arc<Shared>, auth: AuthHook) {
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                let Some(admitted) = admit(&shared, incoming) else {
                    continue;
                };
                if shared.drain.is_started() {
                    // Draining (graceful shutdown): the client is told so once TLS is up
                    // (a refusal at the first packet would read as "busy, try again").
                    shared.counters.refused_draining();
                    tokio::spawn(refuse_draining(shared.clone(), admitted));
                    continue;
                }
                tokio::spawn(crate::connection::serve(shared.clone(), admitted, auth.clone()));
            }
            _ = shared.shutdown.cancelled() => break,
        }
    }
    peergroup_transport::close_endpoint(
        &endpoint,
        CloseCode::ServerShutdown,
        "server shutting down",
    );
    // Give the close frames a moment to leave before the socket goes.
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
}

/// Applies the handshake caps (`admission.rs`) to a new connection: the connection and
/// its counted slot if it may go on; otherwise it has been asked to validate its address
/// or refused, and nothing is kept for it.
fn admit(
    shared: &Shared,
    incoming: quinn::Incoming,
) -> Option<(quinn::Incoming, crate::admission::HandshakeSlot)> {
    use crate::admission::{lock, HandshakeSlot, Verdict};
    let remote = incoming.remote_address();
    let verdict =
        lock(&shared.admission).handle_incoming(remote.ip(), incoming.remote_address_validated());
    match verdict {
        Verdict::Accept => Some((
            incoming,
            HandshakeSlot::new(shared.admission.clone(), remote.ip()),
        )),
        Verdict::Validate => {
            shared.counters.address_validation();
            tracing::debug!(%remote, "many handshakes in flight: asking for address validation");
            if let Err(error) = incoming.retry() {
                // Only a connection that already answered a Retry cannot get another,
                // and those are validated.
                error.into_incoming().refuse();
            }
            None
        }
        Verdict::Refuse(reason) => {
            shared.counters.admission_refused();
            tracing::debug!(%remote, %reason, "connection refused");
            incoming.refuse();
            None
        }
    }
}

/// Closes a connection made while the server drains with `ServerShutdown`, once its TLS
/// handshake is done (within the hello timeout); it keeps its handshake slot until then.
async fn refuse_draining(
    shared: Arc<Shared>,
    (incoming, _slot): (quinn::Incoming, crate::admission::HandshakeSlot),
) {
    let timeout = shared.admission_config.hello_timeout;
    if let Ok(Ok(connection)) = tokio::time::timeout(timeout, incoming).await {
        peergroup_transport::close(
            &connection,
            CloseCode::ServerShutdown,
            "server shutting down",
        );
    }
}

/// Fires the registry's deadlines: join-ack timeouts and pair lingers.
async fn timer_loop(shared: Arc<Shared>) {
    loop {
        let deadline = shared.lock().registry.poll_timeout();
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = sleep => {
                // Timeouts only send notices; the timer must never wait on a client's queue.
                let (_, unsettled) =
                    shared.with_core(|core| core.registry.handle_timeout(Instant::now()));
                drop(unsettled);
            }
            _ = shared.timer.notified() => {}
            _ = shared.shutdown.cancelled() => return,
        }
    }
}
