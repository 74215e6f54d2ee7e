//! State shared by the server's tasks and handles, and the one place actions are carried
//! out.
//!
//! The registry and the per-client links live under one `std` mutex that is never held
//! across an await. Actions are carried out under the lock and never wait (queues are
//! pushed with `try_push`), so every client sees frames in exactly the registry's order.

use crate::app_events::EventSink;
use crate::config::Limits;
use crate::events::{DisconnectReason, ServerEvent};
use crate::outbound::OutboundQueue;
use crate::registry::{Action, Registry};
use bytes::Bytes;
use peergroup_protocol::{
    datagram_to_bytes, frame_to_bytes, CloseCode, Fingerprint, HostId, RefuseReason, ServerToClient,
};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// One connected client as the drivers see it.
#[derive(Debug)]
pub(crate) struct Link {
    pub connection: quinn::Connection,
    pub outbound: OutboundQueue,
    pub remote_addr: SocketAddr,
    pub identity: Fingerprint,
    pub app_data: Bytes,
    /// Set by whoever closes the connection from this side, so the connection task can
    /// report why.
    pub close_reason: Arc<OnceLock<DisconnectReason>>,
}

impl Link {
    /// Closes the connection, remembering why (the first reason wins).
    pub fn close(&self, code: CloseCode, reason: DisconnectReason, text: &str) {
        close_with(&self.connection, &self.close_reason, code, reason, text);
    }
}

/// Closes `connection` with `code` and readable `text`, recording `reason` first.
pub(crate) fn close_with(
    connection: &quinn::Connection,
    close_reason: &OnceLock<DisconnectReason>,
    code: CloseCode,
    reason: DisconnectReason,
    text: &str,
) {
    let _ = close_reason.set(reason);
    // A close frame must fit in one packet: keep the text short.
    let mut end = text.len().min(512);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    connection.close(
        quinn::VarInt::from_u64(code.to_u64()).unwrap_or(quinn::VarInt::MAX),
        &text.as_bytes()[..end],
    );
}

/// The registry and the links, locked together.
#[derive(Debug)]
pub(crate) struct Core {
    pub registry: Registry,
    pub links: HashMap<HostId, Link>,
}

/// Everything the tasks share.
#[derive(Debug)]
pub(crate) struct Shared {
    core: Mutex<Core>,
    pub events: EventSink,
    pub limits: Limits,
    /// TLS handshake, hello and auth hook together.
    pub handshake: Duration,
    /// Wakes the timer task when a new deadline may be earlier than the one it sleeps to.
    pub timer: Notify,
    pub shutdown: CancellationToken,
}

impl Shared {
    pub fn new(
        registry: Registry,
        events: EventSink,
        limits: Limits,
        handshake: Duration,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            core: Mutex::new(Core {
                registry,
                links: HashMap::new(),
            }),
            events,
            limits,
            handshake,
            timer: Notify::new(),
            shutdown,
        }
    }

    /// Locks the core. A panic elsewhere while holding it must not take the server down
    /// with it, so a poisoned lock is taken over.
    pub fn lock(&self) -> MutexGuard<'_, Core> {
        self.core
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `operation` on the core, carries out the actions it caused, and returns its
    /// result with the client messages for the application (to be awaited after the lock
    /// is released).
    pub fn with_core<T>(&self, operation: impl FnOnce(&mut Core) -> T) -> (T, Vec<ServerEvent>) {
        let mut core = self.lock();
        let deadline_before = core.registry.poll_timeout();
        let result = operation(&mut core);
        let messages = self.dispatch(&mut core);
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
        (result, messages)
    }

    /// Carries out every pending action of the registry.
    fn dispatch(&self, core: &mut Core) -> Vec<ServerEvent> {
        let mut messages = Vec::new();
        while let Some(action) = core.registry.poll_action() {
            match action {
                Action::Send { to, message } => self.send_frame(core, to, &message),
                Action::Datagram {
                    to,
                    sender,
                    pair,
                    message,
                } => {
                    let Some(link) = core.links.get(&to) else {
                        continue;
                    };
                    let Ok(bytes) = datagram_to_bytes(&message) else {
                        continue;
                    };
                    if let Err(quinn::SendDatagramError::TooLarge) =
                        link.connection.send_datagram(bytes)
                    {
                        core.registry.refuse(
                            sender,
                            Some(pair),
                            None,
                            RefuseReason::TooLargeForPath,
                        );
                    }
                }
                Action::Event(event @ ServerEvent::Message { .. }) => messages.push(event),
                Action::Event(event) => self.events.push_lifecycle(event),
            }
        }
        messages
    }

    /// Encodes and queues one frame for `to`; a full queue disconnects it.
    pub fn send_frame(&self, core: &Core, to: HostId, message: &ServerToClient) {
        let Some(link) = core.links.get(&to) else {
            return;
        };
        match frame_to_bytes(message, self.limits.max_frame_len) {
            Ok(frame) => self.push_frame(link, frame),
            Err(error) => tracing::error!(%to, %error, "frame not sent"),
        }
    }

    /// Queues an encoded frame for `link`; a full queue disconnects it.
    pub fn push_frame(&self, link: &Link, frame: Bytes) {
        if link.outbound.try_push(frame).is_err() {
            tracing::warn!(remote = %link.remote_addr, "send queue overflow; disconnecting");
            link.close(
                CloseCode::SlowConsumer,
                DisconnectReason::SlowConsumer,
                "send queue overflow: the client did not read fast enough",
            );
        }
    }
}
