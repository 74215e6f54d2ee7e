//! State shared by the server's tasks and handles, and the one place actions are carried
//! out.
//!
//! The registry and the per-client links live under one `std` mutex that is never held
//! across an await. Actions are carried out under the lock and never wait: frames are
//! always admitted to a client's queue, in order, so every client sees them in exactly the
//! registry's order. Queues pushed past their soft limit are returned in a [`Deferred`]
//! for the task that caused the work to wait on once the lock is released.

use crate::admission::{Admission, AdmissionCounter, SharedAdmission};
use crate::app_events::EventSink;
use crate::config::{Limits, ResumeConfig, ServerConfig};
use crate::drain_state::Drain;
use crate::events::{DisconnectReason, ServerEvent};
use crate::metrics::DriverCounters;
use crate::notices::{NoticeFrames, PendingFrame};
use crate::outbound::{Fill, OutboundQueue, Outgoing, Waits};
use crate::registry::{punch_start_delays, Action, Registry};
use crate::wire::{DatagramRefused, Wire, WireSend};
use bytes::Bytes;
use peergroup_protocol::{
    encode_server_datagram, frame_to_bytes, CloseCode, DatagramLane, DeliverFrame, Fingerprint,
    HostId, PunchOrder, RefuseReason, ResumeToken, ServerDatagram, ServerToClient, Unconfirmed,
};
use peergroup_transport::Transport;
use ring::rand::SecureRandom;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// One connected client as the drivers see it.
#[derive(Debug)]
pub(crate) struct Link {
    /// Its connection, QUIC or WebSocket (`wire.rs`).
    pub wire: Wire,
    pub outbound: OutboundQueue,
    /// Where the client was seen: at login or resume, and again where a punch order
    /// found its QUIC connection migrated (`Shared::refresh_reflexive`).
    pub remote_addr: SocketAddr,
    pub identity: Fingerprint,
    /// The login payload of its hello.
    pub login: Bytes,
    /// When it logged in (wall clock, for operators).
    pub connected_at: std::time::SystemTime,
    /// Set by whoever closes the connection from this side, so the connection task can
    /// report why.
    pub close_reason: Arc<OnceLock<DisconnectReason>>,
    /// Which of the host's connections this is: 1 at login, one more per resume. A
    /// connection task that finds another number here has been replaced, and leaves the
    /// host alone.
    pub generation: u64,
    /// The frames written to the client and not confirmed by it, shared with the
    /// writer (`connection.rs`, "Resume" in ARCHITECTURE.md).
    pub unconfirmed: Arc<Mutex<Unconfirmed>>,
    /// Gives the writer a resumed connection's stream. Boxed: a tokio channel allocates 32 slots up front, and a host keeps this one for
    /// its whole session (32 unboxed handoffs were kilobytes per client).
    pub handoff: tokio::sync::mpsc::Sender<Box<Handoff>>,
    /// Set while the host is offline, waiting for a resume.
    pub offline: Option<Offline>,
}

/// A resumed connection's stream for the host's writer, which keeps its queue across
/// connections: it writes `reply` (the `Resumed` frame), then every frame from number
/// `from` on that it still holds, then goes on with its queue.
#[derive(Debug)]
pub(crate) struct Handoff {
    pub wire: Wire,
    pub send: WireSend,
    pub reply: Bytes,
    pub from: u64,
    /// The new connection's close reason, for the writer's own closes (a drain).
    pub close_reason: Arc<OnceLock<DisconnectReason>>,
    /// Whether the replay could be made (the frames from `from` on are still held).
    pub done: tokio::sync::oneshot::Sender<Result<(), peergroup_protocol::ReplayGap>>,
}

/// An offline host, as its links sees it.
#[derive(Debug)]
pub(crate) struct Offline {
    /// When the connection was found lost.
    pub since: std::time::Instant,
    /// Fired to have the task that keeps the host remove it (window ended, bound passed,
    /// kicked); dropped, with the `Offline`, when the host resumes.
    end: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
}

impl Offline {
    /// An offline state and the receiver its keeper waits on.
    pub fn new(since: std::time::Instant) -> (Self, tokio::sync::oneshot::Receiver<()>) {
        let (end, ended) = tokio::sync::oneshot::channel();
        let offline = Self {
            since,
            end: Mutex::new(Some(end)),
        };
        (offline, ended)
    }

    /// Has the host removed (once).
    pub fn end(&self) {
        let end = self
            .end
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(end) = end {
            let _ = end.send(());
        }
    }
}

impl Link {
    /// Closes the connection, remembering why (the first reason wins). An offline host
    /// is removed instead (its connection is already gone).
    pub fn close(&self, code: CloseCode, reason: DisconnectReason, text: &str) {
        close_with(&self.wire, &self.close_reason, code, reason, text);
        if let Some(offline) = &self.offline {
            offline.end();
        }
    }
}

/// Closes `wire` with `code` and readable `text`, recording `reason` first.
pub(crate) fn close_with(
    wire: &Wire,
    close_reason: &OnceLock<DisconnectReason>,
    code: CloseCode,
    reason: DisconnectReason,
    text: &str,
) {
    let _ = close_reason.set(reason);
    wire.close(code, text);
}

const SLOW_CONSUMER_TEXT: &str = "send queue overflow: the client did not read fast enough";

/// A receiver whose queue went past its soft limit.
#[derive(Debug)]
struct Backlog {
    host: HostId,
    queue: OutboundQueue,
    wire: Wire,
    close_reason: Arc<OnceLock<DisconnectReason>>,
}

/// What an operation on the core leaves to do after the lock is released.
#[derive(Debug, Default)]
#[must_use = "call Shared::settle, or drop it where waiting is impossible"]
pub(crate) struct Deferred {
    /// Client messages for the application.
    pub messages: Vec<ServerEvent>,
    backlogged: Vec<Backlog>,
    /// Offline hosts whose queue passed its hard limit: no resume may bring them back.
    offline_overflowed: Vec<HostId>,
}

/// The registry and the links, locked together.
#[derive(Debug)]
pub(crate) struct Core {
    pub registry: Registry,
    /// Looked up for every frame sent; foldhash, not SipHash (the ids are the server's).
    pub links: HashMap<HostId, Link, foldhash::fast::RandomState>,
}

/// Everything the tasks share.
#[derive(Debug)]
pub(crate) struct Shared {
    core: Mutex<Core>,
    pub events: EventSink,
    pub limits: Limits,
    /// TLS handshake, hello and auth hook together.
    pub handshake: Duration,
    /// How long a connection may stay silent (`Timeouts::idle`): QUIC's idle timeout, and
    /// the WebSocket reader's (`websocket.rs` pings at half of it).
    pub idle: Duration,
    /// How long a backlogged receiver may take to drain before it is dropped.
    pub slow_consumer: Duration,
    /// Wakes the timer task when a new deadline may be earlier than the one it sleeps to.
    pub timer: Notify,
    /// Wakes whoever waits for clients to go (a graceful shutdown) when a link is removed.
    pub link_removed: Notify,
    /// Makes punch secrets.
    random: ring::rand::SystemRandom,
    /// `Notices` frames sent since start (each carries one or more notices).
    pub notice_frames: std::sync::atomic::AtomicU64,
    pub shutdown: CancellationToken,
    /// Graceful shutdown (`drain.rs`).
    pub drain: Drain,
    /// Counters only the drivers can keep (`metrics.rs`).
    pub counters: DriverCounters,
    /// Limits before login (`admission.rs`).
    pub admission_config: Admission,
    /// Session resume.
    pub resume: ResumeConfig,
    /// Connections in their handshake and clients logged in, per source.
    pub admission: SharedAdmission,
}

impl Shared {
    /// The shared state of a server started with `config`.
    pub fn new(
        registry: Registry,
        events: EventSink,
        config: &ServerConfig,
        shutdown: CancellationToken,
    ) -> Self {
        let limits = config.limits;
        let admission = config.admission;
        let (handshake, slow_consumer) = (config.timeouts.handshake, config.timeouts.slow_consumer);
        let resume = config.resume;
        Self {
            core: Mutex::new(Core {
                registry,
                links: HashMap::default(),
            }),
            events,
            limits,
            handshake,
            idle: config.timeouts.idle,
            slow_consumer,
            timer: Notify::new(),
            link_removed: Notify::new(),
            random: ring::rand::SystemRandom::new(),
            notice_frames: std::sync::atomic::AtomicU64::new(0),
            shutdown,
            drain: Drain::default(),
            counters: DriverCounters::default(),
            admission_config: admission,
            resume,
            admission: Arc::new(Mutex::new(AdmissionCounter::new(
                admission,
                limits.max_clients,
            ))),
        }
    }

    /// A fresh resume token from the system's secure random source.
    ///
    /// # Errors
    /// When the system has no randomness to give (then no token is issued).
    pub fn fresh_token(&self) -> Result<ResumeToken, ring::error::Unspecified> {
        let mut token = [0u8; 32];
        self.random.fill(&mut token)?;
        Ok(ResumeToken(token))
    }

    /// Locks the core. A panic elsewhere while holding it must not take the server down
    /// with it, so a poisoned lock is taken over.
    pub fn lock(&self) -> MutexGuard<'_, Core> {
        self.core
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `operation` on the core, carries out the actions it caused, and returns its
    /// result with what is left to wait for once the lock is released (see
    /// [`Shared::settle`]).
    pub fn with_core<T>(&self, operation: impl FnOnce(&mut Core) -> T) -> (T, Deferred) {
        let mut core = self.lock();
        let deadline_before = core.registry.poll_timeout();
        let result = operation(&mut core);
        let deferred = self.dispatch(&mut core);
        self.take_ack_samples(&mut core);
        let deadline_after = core.registry.poll_timeout();
        drop(core);
        // Only an earlier deadline needs the timer task to wake and re-arm.
        let earlier = match (deadline_before, deadline_after) {
            (Some(before), Some(after)) => after < before,
            (None, Some(_)) => true,
            _ => false,
        };
        if earlier {
            self.timer.notify_one();
        }
        (result, deferred)
    }

    /// Finishes what an operation left: hands client messages to the application (waiting
    /// for room) and waits for receivers it backlogged to drain, dropping any that take
    /// longer than the slow-consumer timeout. Called by the task whose client caused the
    /// work, so that client is the one paused.
    pub async fn settle(&self, deferred: Deferred) {
        for message in deferred.messages {
            self.events.push_message(message).await;
        }
        for backlog in deferred.backlogged {
            // What is left of the receiver's allowance over its soft limit, counted across
            // bursts (ARCHITECTURE.md, "Bounds"): a receiver that keeps dipping under the
            // limit for a moment still runs out.
            let allowance = backlog.queue.backlog_allowance();
            if tokio::time::timeout(allowance, backlog.queue.drained())
                .await
                .is_err()
            {
                tracing::warn!(host = %backlog.host, "receiver stayed backlogged; disconnecting");
                close_with(
                    &backlog.wire,
                    &backlog.close_reason,
                    CloseCode::SlowConsumer,
                    DisconnectReason::SlowConsumer,
                    SLOW_CONSUMER_TEXT,
                );
            }
        }
    }

    /// Turns the joins and leaves the last operation completed into latency samples.
    fn take_ack_samples(&self, core: &mut Core) {
        // Read the clock only when something completed: this runs after every relayed
        // message too.
        let mut now = None;
        core.registry.take_ack_samples(|kind, started| {
            let now = *now.get_or_insert_with(std::time::Instant::now);
            self.counters
                .observe_ack(kind, now.saturating_duration_since(started));
        });
    }

    /// Carries out every pending action of the registry.
    fn dispatch(&self, core: &mut Core) -> Deferred {
        let mut deferred = Deferred::default();
        let mut notices = NoticeFrames::default();
        while let Some(action) = core.registry.poll_action() {
            match action {
                Action::Notice { to, notice, order } => {
                    if let Some(full) = notices.add(to, notice, order) {
                        self.send_notices(core, to, full, &mut deferred);
                    }
                }
                Action::Send { to, message } => {
                    // A `PeerUp` only has to precede the notices about its peer, so it may
                    // pass the ones gathered; anything else keeps its place after them.
                    if !matches!(message, ServerToClient::PeerUp { .. }) {
                        if let Some(frame) = notices.take(to) {
                            self.send_notices(core, to, frame, &mut deferred);
                        }
                    }
                    self.send_frame(core, to, &message, &mut deferred)
                }
                Action::Disconnect { host, reason } => {
                    if let Some(link) = core.links.get(&host) {
                        if link.offline.is_some() {
                            core.registry.end_resume(host);
                        }
                        let Some(link) = core.links.get(&host) else {
                            continue;
                        };
                        tracing::warn!(%host, reason, "disconnecting");
                        let detail = DisconnectReason::ProtocolError {
                            detail: reason.to_string(),
                        };
                        link.close(CloseCode::ProtocolViolation, detail, reason);
                    }
                }
                Action::SendData {
                    to,
                    message,
                    priority,
                    from,
                    latest,
                } => {
                    let Some(link) = core.links.get(&to) else {
                        continue;
                    };
                    let frame = match message {
                        // Encoded by the receiver's writer, outside this lock.
                        ServerToClient::Deliver {
                            from,
                            group,
                            lane,
                            seq,
                            payload,
                        } => Outgoing::Deliver(DeliverFrame {
                            from,
                            group,
                            lane,
                            seq,
                            payload,
                        }),
                        other => match frame_to_bytes(&other, self.limits.max_frame_len()) {
                            Ok(frame) => Outgoing::Encoded(frame),
                            Err(error) => {
                                tracing::error!(%to, %error, "frame not sent");
                                continue;
                            }
                        },
                    };
                    let fill = link.outbound.push_data(frame, priority, from, latest);
                    self.note_fill(to, link, fill, &mut deferred);
                }
                Action::Datagram {
                    to,
                    sender,
                    message,
                } => {
                    let too_large = send_datagrams(core, to, message, self.limits.max_frame_len())
                        .into_iter()
                        .map(|pair| (pair, RefuseReason::TooLargeForPath))
                        .collect();
                    // One refusal frame for the datagram, however many paths it missed.
                    core.registry.refuse_many(sender, None, too_large);
                }
                Action::AppDatagram { to, message } => {
                    let to = to.into_iter().map(|(host, number)| (host, (), number));
                    // The application checked the paths' sizes; see `Action::AppDatagram`.
                    let _ = send_datagrams(core, to, message, self.limits.max_frame_len());
                }
                Action::Event(event @ ServerEvent::Message { .. }) => deferred.messages.push(event),
                Action::Event(event) => self.events.push_lifecycle(event),
                Action::ResumeWindowEnded { host } => {
                    if let Some(offline) = core.links.get(&host).and_then(|l| l.offline.as_ref()) {
                        offline.end();
                    }
                }
                Action::Punch {
                    pair,
                    attempt,
                    controlling,
                    controlled,
                    candidates_of_controlling,
                    candidates_of_controlled,
                } => {
                    let (Some(link_a), Some(link_b)) =
                        (core.links.get(&controlling), core.links.get(&controlled))
                    else {
                        continue;
                    };
                    let (delay_a, delay_b) =
                        punch_start_delays(link_a.wire.rtt(), link_b.wire.rtt());
                    // A connection that migrated (the client's NAT gave it a new mapping)
                    // has a new server-reflexive address, which quinn took without telling
                    // anyone: the peer must punch to that one, not to the old mapping.
                    let (candidates_of_controlling, candidates_of_controlled) = self
                        .refresh_reflexive(core, controlling, controlled)
                        .unwrap_or((candidates_of_controlling, candidates_of_controlled));
                    let mut secret = [0u8; 32];
                    if self.random.fill(&mut secret).is_err() {
                        tracing::error!("no randomness for a punch secret; not punching");
                        continue;
                    }
                    let order = |peer, candidates, delay: Duration, controlling| {
                        ServerToClient::PunchOrder(PunchOrder {
                            peer,
                            pair,
                            attempt,
                            secret,
                            candidates,
                            start_in_ms: delay.as_millis().min(10_000) as u32,
                            controlling,
                        })
                    };
                    let to_a = order(controlled, candidates_of_controlled, delay_a, true);
                    let to_b = order(controlling, candidates_of_controlling, delay_b, false);
                    for (host, frame) in [(controlling, &to_a), (controlled, &to_b)] {
                        if let Some(gathered) = notices.take(host) {
                            self.send_notices(core, host, gathered, &mut deferred);
                        }
                        self.send_frame(core, host, frame, &mut deferred);
                    }
                }
            }
        }
        for (to, frame) in notices.drain() {
            self.send_notices(core, to, frame, &mut deferred);
        }
        for host in deferred.offline_overflowed.drain(..) {
            core.registry.end_resume(host);
        }
        deferred
    }

    /// Takes the addresses the connections of `a` and `b` have now as their
    /// server-reflexive candidates, where they changed (QUIC connection migration), and
    /// then returns the punch candidates of both anew (`a`'s first); `None` if neither
    /// moved. An offline host's lost connection says nothing new and is left alone.
    fn refresh_reflexive(
        &self,
        core: &mut Core,
        a: HostId,
        b: HostId,
    ) -> Option<(Vec<SocketAddr>, Vec<SocketAddr>)> {
        let mut moved = false;
        for host in [a, b] {
            let Some(link) = core.links.get_mut(&host) else {
                continue;
            };
            if link.offline.is_some() || link.wire.transport() != Transport::Quic {
                continue;
            }
            let now_at = link.wire.remote_address();
            if core.registry.handle_address_change(host, now_at) {
                tracing::info!(%host, from = %link.remote_addr, to = %now_at, "client moved");
                link.remote_addr = now_at;
                moved = true;
            }
        }
        if moved {
            core.registry.punch_candidates(a, b)
        } else {
            None
        }
    }

    /// Queues one frame of gathered notices for `to`, behind the messages it must not
    /// overtake.
    fn send_notices(&self, core: &Core, to: HostId, frame: PendingFrame, deferred: &mut Deferred) {
        let Some(link) = core.links.get(&to) else {
            return;
        };
        let message = ServerToClient::Notices(frame.notices);
        let bytes = match frame_to_bytes(&message, self.limits.max_frame_len()) {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::error!(%to, %error, "notices not sent");
                return;
            }
        };
        let waits = if frame.after_everything {
            Waits::Everything
        } else if frame.after_senders.is_empty() {
            Waits::Nothing
        } else {
            Waits::For(&frame.after_senders)
        };
        let fill = link.outbound.push_control_after(bytes, waits);
        self.notice_frames
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.note_fill(to, link, fill, deferred);
    }

    /// Encodes and queues one frame for `to`.
    fn send_frame(
        &self,
        core: &Core,
        to: HostId,
        message: &ServerToClient,
        deferred: &mut Deferred,
    ) {
        let Some(link) = core.links.get(&to) else {
            return;
        };
        let frame = match frame_to_bytes(message, self.limits.max_frame_len()) {
            Ok(frame) => frame,
            Err(error) => {
                tracing::error!(%to, %error, "frame not sent");
                return;
            }
        };
        let fill = match message {
            // The peer's messages queued before its pair ended go first.
            ServerToClient::PeerDown { peer, .. } => link
                .outbound
                .push_control_after(frame, Waits::For(&[*peer])),
            _ => link.outbound.push_control(frame),
        };
        self.note_fill(to, link, fill, deferred);
    }

    /// Acts on how full a push left `link`'s queue. Past the soft limit the link is noted
    /// in `deferred` for the caller to wait on; past the hard limit it is disconnected now.
    pub fn note_fill(&self, host: HostId, link: &Link, fill: Fill, deferred: &mut Deferred) {
        if link.offline.is_some() {
            // Nobody reads an offline host's queue until it resumes, so waiting for it to
            // drain would only pause the senders; past its hard limit it cannot be kept.
            if fill == Fill::Overflowing {
                tracing::warn!(%host, "offline host's queue past its hard limit; removing it");
                deferred.offline_overflowed.push(host);
                link.close(
                    CloseCode::SlowConsumer,
                    DisconnectReason::SlowConsumer,
                    SLOW_CONSUMER_TEXT,
                );
            }
            return;
        }
        match fill {
            Fill::Fine => {}
            Fill::Backlogged => {
                if !deferred.backlogged.iter().any(|b| b.host == host) {
                    deferred.backlogged.push(Backlog {
                        host,
                        queue: link.outbound.clone(),
                        wire: link.wire.clone(),
                        close_reason: link.close_reason.clone(),
                    });
                }
            }
            Fill::Overflowing => {
                if link.close_reason.get().is_none() {
                    tracing::warn!(%host, "send queue past its hard limit; disconnecting");
                }
                link.close(
                    CloseCode::SlowConsumer,
                    DisconnectReason::SlowConsumer,
                    SLOW_CONSUMER_TEXT,
                );
            }
        }
    }
}

/// Sends `message` in one QUIC datagram to each recipient `(host, tag, number)` that is
/// still connected, with its number in the lane written in, and returns the tags of the
/// recipients whose path it did not fit. Encoded once, whatever the fan-out, unless each
/// copy has its own number.
///
/// A recipient on WebSocket gets it as a [`ServerToClient::Datagram`] frame in its queue,
/// unless the queue already holds a writer batch or more: then it is dropped rather than
/// queued behind the backlog, so it adds no latency and stays at most once (never older
/// than one delivered, for sequenced lanes, since queued frames keep their order).
fn send_datagrams<T>(
    core: &Core,
    to: impl IntoIterator<Item = (HostId, T, u64)>,
    mut message: ServerDatagram,
    max_frame: u32,
) -> Vec<T> {
    let ServerDatagram::Deliver { lane, .. } = &message;
    let numbered = matches!(lane, DatagramLane::Sequenced { .. });
    let mut too_large = Vec::new();
    let Ok(mut bytes) = encode_server_datagram(&message) else {
        return too_large;
    };
    for (host, tag, number) in to {
        let Some(link) = core.links.get(&host) else {
            continue;
        };
        if numbered {
            let ServerDatagram::Deliver { seq, .. } = &mut message;
            *seq = number;
            let Ok(encoded) = encode_server_datagram(&message) else {
                continue;
            };
            bytes = encoded;
        }
        match &link.wire {
            Wire::Quic(_) => {
                if let Err(DatagramRefused::TooLarge) = link.wire.send_datagram(bytes.clone()) {
                    too_large.push(tag);
                }
            }
            Wire::WebSocket(_) => {
                if link.offline.is_some()
                    || link.outbound.queued_bytes() >= peergroup_transport::WRITE_BATCH_BYTES
                {
                    continue;
                }
                let frame = ServerToClient::Datagram(message.clone());
                match frame_to_bytes(&frame, max_frame) {
                    // Past the soft limit it would have been dropped above.
                    Ok(frame) => {
                        let _ = link.outbound.push_control(frame);
                    }
                    Err(_) => too_large.push(tag),
                }
            }
        }
    }
    too_large
}
