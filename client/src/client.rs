//! The public [`Client`] handle: sends, queries and close. It holds the client's shared
//! state ([`Inner`]); connecting and every task behind the handle live in `driver/`.

use crate::client_events::ClientEvents;
use crate::clock::ServerTime;
use crate::config::ClientConfig;
use crate::driver;
use crate::driver::shared::{Core, Inner};
use crate::error::{ConnectError, SendError};
use crate::outbound::UploadQueue;
use crate::session::{PeerStats, Route, Session, Target};
use bytes::Bytes;
use peergroup_protocol::{
    Carrier, CloseCode, Fingerprint, GroupId, HostId, PairPath, PeerInfo, SendOptions,
};
use peergroup_transport::{close, close_endpoint};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

/// Closes the connections when the last handle goes.
struct CloseOnDrop {
    inner: Arc<Inner>,
}

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        // Set first, so the reader does not try to resume what this closes.
        self.inner.closed.store(true, Ordering::Release);
        self.inner
            .connection()
            .close(CloseCode::Normal, "client closed");
        // Closing the endpoint ends direct connections and the tasks that serve them.
        if let Some(udp) = &self.inner.udp {
            close_endpoint(&udp.endpoint, CloseCode::Normal, "client closed");
        }
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
        let (inner, events) = driver::connect::connect(config).await?;
        let guard = Arc::new(CloseOnDrop {
            inner: inner.clone(),
        });
        Ok((
            Client {
                inner,
                _guard: guard,
            },
            events,
        ))
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
        let mut payload = payload.into();
        let options = options.into();
        loop {
            let (full, back) = match self.enqueue(&target, payload, options)? {
                None => return Ok(()),
                Some(full) => full,
            };
            payload = back;
            match full {
                Full::Queue(full) => full.room().await,
                Full::Events => self.inner.event_room().await,
                Full::Window(seen) => self.window_room_after(seen).await,
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
        let options = options.into();
        match self.enqueue(&target, payload.into(), options)? {
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

    /// Queues the send if every queue it needs has room; otherwise says what to wait on
    /// and hands the payload back, having assigned and queued nothing. The payload moves
    /// into [`Session::plan`](crate::session::Session::plan), which avoids cloning it.
    fn enqueue(
        &self,
        target: &Target,
        payload: Bytes,
        options: SendOptions,
    ) -> Result<Option<(Full, Bytes)>, SendError> {
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
            return Ok(Some((Full::Events, payload)));
        }
        let max_datagram = match options.carrier() {
            // The smallest datagram size of every path the send takes.
            Carrier::Datagram(_) => route
                .direct
                .iter()
                .filter_map(|peer| core.directs.get(peer))
                .map(|link| link.connection.max_datagram_size())
                .fold(
                    inner.connection().max_datagram_size(inner.max_frame_len),
                    |a, b| match (a, b) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        _ => None,
                    },
                ),
            // Latest values wait too: they replace queued values of their key, but an
            // application that keeps inventing keys must not grow a queue without bound.
            Carrier::Stream(_) => {
                if let Some(full) = full_queue(inner, &core, &route) {
                    return Ok(Some((Full::Queue(full), payload)));
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
                    return Ok(Some((Full::Window(seen), payload)));
                }
                None
            }
        };
        let uploads = core.session.plan(route, payload, options, max_datagram)?;
        for upload in uploads {
            inner.dispatch(&mut core, upload);
        }
        inner.flush_and_wake(&mut core);
        Ok(None)
    }

    /// Resolves once a direct window may have room again: the window generation moved
    /// past `seen` (or the connection ended).
    async fn window_room_after(&self, seen: u64) {
        let inner = &self.inner;
        loop {
            let notified = inner.window_room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if inner.window_generation.load(Ordering::Acquire) != seen
                || inner.closed.load(Ordering::Acquire)
            {
                return;
            }
            tokio::select! {
                _ = notified => {}
                _ = inner.ended.cancelled() => return,
            }
        }
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

    /// Smoothed RTT to the server. Over WebSocket, where TCP hides its own, it is measured
    /// with WebSocket pings every `timeouts.keepalive` (RFC 6298's smoothing) and is zero
    /// until the first pong (within about one RTT of connecting).
    pub fn server_rtt(&self) -> Duration {
        self.inner.connection().rtt()
    }

    /// The carrier the server connection uses now: QUIC, or the WebSocket fallback
    /// (chosen at login by [`ClientConfig::transport`](crate::ClientConfig::transport);
    /// a resume may change it).
    pub fn transport(&self) -> crate::Transport {
        self.inner.connection().transport()
    }

    /// The local UDP address: the socket the server connection (on QUIC), direct
    /// connections and punch probes share.
    ///
    /// # Errors
    /// What the OS reports for the socket; [`std::io::ErrorKind::Unsupported`] for a
    /// client on [`TransportChoice::WebSocketOnly`](crate::TransportChoice), which opens
    /// no UDP socket.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match &self.inner.udp {
            Some(udp) => udp.endpoint.local_addr(),
            None => Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "a client on WebSocket alone has no UDP socket",
            )),
        }
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
        self.inner
            .connection()
            .close(CloseCode::Normal, "client closed");
        if let Some(udp) = &self.inner.udp {
            close_endpoint(&udp.endpoint, CloseCode::Normal, "client closed");
            let _ = tokio::time::timeout(Duration::from_secs(1), udp.endpoint.wait_idle()).await;
        }
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

/// The first queue of `route` that is full, if any.
fn full_queue(inner: &Inner, core: &Core, route: &Route) -> Option<UploadQueue> {
    if route.server && !inner.uploads.has_room() {
        return Some(inner.uploads.clone());
    }
    route
        .direct
        .iter()
        .filter_map(|peer| core.directs.get(peer))
        .find(|link| !link.queue.has_room())
        .map(|link| link.queue.clone())
}

/// A locked view of the session for queries.
struct SessionGuard<'a>(MutexGuard<'a, Core>);

impl std::ops::Deref for SessionGuard<'_> {
    type Target = Session;

    fn deref(&self) -> &Session {
        &self.0.session
    }
}
