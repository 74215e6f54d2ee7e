//! A client for game loops without an async runtime: every call returns without `.await`.
//!
//! [`BlockingClient`] owns a tokio runtime on one thread of its own, named
//! `peergroup-rt`, where the client's network tasks run. The game's thread connects
//! (waiting until the server has accepted the login), then once per frame moves every event
//! that has arrived into its own buffer with [`BlockingClient::drain_events`] and sends with
//! [`BlockingClient::try_send`] (never waits) or [`BlockingClient::send`] (waits only while
//! a send queue is full). Dropping the client, or [`BlockingClient::close`], closes the
//! connection and ends the runtime thread before returning.
//!
//! Use it from threads that are not inside an async runtime; async code uses
//! [`Client`] itself.
//!
//! ```no_run
//! # fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use peergroup_client::blocking::BlockingClient;
//! use peergroup_client::{ClientConfig, ClientEvent, Delivery, ServerTrust, Target};
//! use std::time::Duration;
//!
//! let trust = ServerTrust::from_cert_file("peergroup-identity/cert.pem".as_ref())?;
//! let mut config = ClientConfig::new("127.0.0.1:7700".parse()?, trust);
//! config.login = "alice".into();
//! let mut client = BlockingClient::connect(config)?;
//! let mut events = Vec::new();
//! while !client.is_finished() {
//!     events.clear();
//!     client.drain_events(&mut events);
//!     for event in &events {
//!         match event {
//!             ClientEvent::MemberJoined { group, member, .. } if *member == client.host_id() => {
//!                 client.try_send(Target::Group(*group), "hello", Delivery::ReliableOrdered)?;
//!             }
//!             ClientEvent::Message { from, payload, .. } => println!("{from}: {payload:?}"),
//!             _ => {}
//!         }
//!     }
//!     // ... simulate and render one frame ...
//!     std::thread::sleep(Duration::from_millis(16));
//! }
//! # Ok(()) }
//! ```

use crate::clock::ServerTime;
use crate::config::ClientConfig;
use crate::error::{ConnectError, SendError};
use crate::events::ClientEvent;
use crate::session::{PeerStats, Target};
use crate::{Client, ClientEvents};
use bytes::Bytes;
use peergroup_protocol::{GroupId, HostId, PeerInfo, SendOptions};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// The name of the runtime thread each [`BlockingClient`] owns (what profilers and
/// `/proc/<pid>/task/*/comm` show).
const THREAD_NAME: &str = "peergroup-rt";

/// A connected client that never needs `.await`: a [`Client`] and its [`ClientEvents`],
/// with the runtime they run on, on one thread of its own.
///
/// Not `Clone`: it owns the event stream and the thread. [`BlockingClient::drain_events`]
/// takes `&mut self`, the rest `&self`; it is `Send`, so it may move to another thread.
/// Call it only from threads that are not inside an async runtime (waiting calls there
/// would stall that runtime, and tokio refuses them).
#[derive(Debug)]
pub struct BlockingClient {
    // Fields drop in this order: the client's handles go before the runtime that serves
    // them stops.
    client: Client,
    events: ClientEvents,
    runtime: RuntimeThread,
}

impl BlockingClient {
    /// Starts the runtime thread and connects, waiting until the server has accepted the
    /// login (at most [`Timeouts::connect`], default 10 s). The first event
    /// [`BlockingClient::drain_events`] gives is `Connected`.
    ///
    /// # Errors
    /// [`ConnectError::Runtime`] when the runtime or its thread cannot be started; otherwise
    /// as [`Client::connect`]. The runtime thread has ended when this returns an error.
    ///
    /// # Panics
    /// When called from inside an async runtime (tokio refuses to wait there).
    ///
    /// [`Timeouts::connect`]: crate::Timeouts::connect
    pub fn connect(config: ClientConfig) -> Result<Self, ConnectError> {
        let runtime = RuntimeThread::start().map_err(ConnectError::Runtime)?;
        let (client, events) = runtime.handle.block_on(Client::connect(config))?;
        Ok(Self {
            client,
            events,
            runtime,
        })
    }

    /// Moves every event queued now into `out` (appended, in order) without waiting, and
    /// returns how many. The per-frame call of a game loop. Events that arrive while it
    /// runs are left for the next call, so it always returns promptly.
    ///
    /// Keep calling it: while [`Limits::event_queue`] events (default 4,096) wait, the
    /// client stops reading from the server. After `Disconnected` (always the last event)
    /// it returns 0 and [`BlockingClient::is_finished`] is true.
    ///
    /// [`Limits::event_queue`]: crate::Limits::event_queue
    pub fn drain_events(&mut self, out: &mut Vec<ClientEvent>) -> usize {
        self.events.drain_now(out)
    }

    /// Whether `Disconnected` has been drained: no event will come any more.
    pub fn is_finished(&self) -> bool {
        self.events.is_finished()
    }

    /// Sends, waiting (blocking this thread) while a send queue it needs is full; as
    /// [`Client::send`] otherwise. A game loop that must not stall uses
    /// [`BlockingClient::try_send`].
    ///
    /// A send to this client itself (a loopback target) waits for room among the events,
    /// which only [`BlockingClient::drain_events`] makes: from the thread that drains, use
    /// `try_send` for those.
    ///
    /// # Errors
    /// As [`Client::send`].
    ///
    /// # Panics
    /// When called from inside an async runtime.
    pub fn send(
        &self,
        target: Target,
        payload: impl Into<Bytes>,
        options: impl Into<SendOptions>,
    ) -> Result<(), SendError> {
        self.runtime
            .handle
            .block_on(self.client.send(target, payload, options))
    }

    /// Sends without ever waiting; as [`Client::try_send`].
    ///
    /// # Errors
    /// As [`Client::try_send`]: [`SendError::QueueFull`] when a queue it needs is full
    /// (send it again on a later frame, or use [`BlockingClient::send`]).
    pub fn try_send(
        &self,
        target: Target,
        payload: impl Into<Bytes>,
        options: impl Into<SendOptions>,
    ) -> Result<(), SendError> {
        // A send can start work on the runtime (a punch), which needs its context.
        let _runtime = self.runtime.handle.enter();
        self.client.try_send(target, payload, options)
    }

    /// Sends an application message type, encoded with postcard ([`crate::encode`]),
    /// waiting while a send queue it needs is full; as [`BlockingClient::send`].
    ///
    /// # Errors
    /// As [`Client::send_message`].
    ///
    /// # Panics
    /// When called from inside an async runtime.
    pub fn send_message<T: serde::Serialize + ?Sized>(
        &self,
        target: Target,
        message: &T,
        options: impl Into<SendOptions>,
    ) -> Result<(), SendError> {
        self.send(target, crate::encode(message)?, options)
    }

    /// As [`BlockingClient::send_message`], but never waits.
    ///
    /// # Errors
    /// As [`BlockingClient::try_send`], plus [`SendError::Encode`] when the value cannot be
    /// encoded.
    pub fn try_send_message<T: serde::Serialize + ?Sized>(
        &self,
        target: Target,
        message: &T,
        options: impl Into<SendOptions>,
    ) -> Result<(), SendError> {
        self.try_send(target, crate::encode(message)?, options)
    }

    /// This client's id.
    pub fn host_id(&self) -> HostId {
        self.client.host_id()
    }

    /// Host data of this client or a member of its groups; as [`Client::host_data`].
    pub fn host_data(&self, host: HostId) -> Option<Bytes> {
        self.client.host_data(host)
    }

    /// A group's data; as [`Client::group_data`].
    pub fn group_data(&self, group: GroupId) -> Option<Bytes> {
        self.client.group_data(group)
    }

    /// Groups this client is in; as [`Client::groups`].
    pub fn groups(&self) -> Vec<GroupId> {
        self.client.groups()
    }

    /// Members of a group this client is in, as it has been told; `None` if it is not in
    /// the group. As [`Client::group_members`].
    pub fn group_members(&self, group: GroupId) -> Option<Vec<HostId>> {
        self.client.group_members(group)
    }

    /// Hosts this client has a pair with; as [`Client::peers`].
    pub fn peers(&self) -> Vec<HostId> {
        self.client.peers()
    }

    /// What the server vouched for about a peer; as [`Client::peer_info`].
    pub fn peer_info(&self, peer: HostId) -> Option<PeerInfo> {
        self.client.peer_info(peer)
    }

    /// Path, RTT, loss and counters for a peer; as [`Client::peer_stats`].
    pub fn peer_stats(&self, peer: HostId) -> Option<PeerStats> {
        self.client.peer_stats(peer)
    }

    /// The server's clock as this client estimates it now; as [`Client::server_time`].
    pub fn server_time(&self) -> Option<ServerTime> {
        self.client.server_time()
    }

    /// Smoothed RTT to the server.
    pub fn server_rtt(&self) -> Duration {
        self.client.server_rtt()
    }

    /// Bytes waiting in the upload queue to the server.
    pub fn queued_bytes(&self) -> usize {
        self.client.queued_bytes()
    }

    /// Closes gracefully, as [`Client::close`] (queued reliable messages go to the server
    /// first, waiting up to 2 s, then the close, up to 1 s more), and ends the runtime
    /// thread. Dropping the client does the same.
    pub fn close(self) {
        drop(self);
    }
}

impl Drop for BlockingClient {
    fn drop(&mut self) {
        // Inside an async runtime (a misuse) waiting is refused: the client's own drop
        // still closes the connection, without flushing.
        if Handle::try_current().is_err() {
            self.runtime.handle.block_on(self.client.close());
        }
    }
}

/// A current-thread tokio runtime driven by a thread of its own until dropped; dropping
/// it stops the runtime (cancelling its tasks) and waits for the thread to end.
#[derive(Debug)]
struct RuntimeThread {
    handle: Handle,
    /// Dropping it tells the thread to stop.
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl RuntimeThread {
    fn start() -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        // The thread drives the runtime's IO and timers, so `Handle::block_on` from other
        // threads makes progress (tokio's rule for current-thread runtimes).
        let thread = std::thread::Builder::new()
            .name(THREAD_NAME.into())
            .spawn(move || {
                runtime.block_on(async {
                    let _ = stopped.await;
                });
                drop(runtime);
            })?;
        Ok(Self {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for RuntimeThread {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            // A panic on the runtime thread has been reported there already.
            let _ = thread.join();
        }
    }
}
