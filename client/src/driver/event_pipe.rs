//! The event pipe: the session's events go to the application's [`ClientEvents`] in
//! the session's order, in batches, and only as fast as the application reads.
//!
//! Readers (of the server and of direct paths) hand over the events their input made
//! ([`Inner::deliver_events`]) and wait for room ([`Inner::event_room`]) before reading
//! more, so an application that stops reading stops them and QUIC flow control then
//! pauses the senders. Events nobody reads in (those of sends, timers and path changes,
//! and the final `Disconnected`) go through the emitter task, [`emit_events`].
//!
//! [`ClientEvents`]: crate::ClientEvents

use crate::driver::shared::Inner;
use crate::events::ClientEvent;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Events handed to the application in one batch at most.
pub(crate) const EVENT_BATCH: usize = 64;

impl Inner {
    /// Hands the session's events to the application, in order, waiting for room: one
    /// caller at a time (the turn lock), so events from the relay reader and a direct
    /// reader never interleave out of session order. Readers call it after each frame,
    /// so an application that stops reading stops them, and QUIC flow control then
    /// pauses the senders. Returns whether `Disconnected` went out.
    pub async fn deliver_events(&self) -> bool {
        let _turn = self.emit_turn.lock().await;
        let mut disconnected = false;
        loop {
            let batch = {
                let mut core = self.lock();
                if core.session.pending_events() == 0 {
                    self.pending_events.store(0, Ordering::Release);
                    break;
                }
                let batch = core
                    .session
                    .take_events(EVENT_BATCH, self.spare_events.take());
                self.pending_events
                    .store(core.session.pending_events(), Ordering::Release);
                batch
            };
            disconnected |= batch
                .iter()
                .any(|event| matches!(event, ClientEvent::Disconnected { .. }));
            // An error only means the application dropped its event stream.
            let _ = self.events.send(batch).await;
            self.event_room.notify_waiters();
        }
        disconnected
    }

    /// Whether the session holds fewer undelivered events than the event queue's size.
    pub fn has_event_room(&self) -> bool {
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
}

/// Hands over the events that no reader delivers (those of sends, timers and path
/// changes, and the final `Disconnected`), through [`Inner::deliver_events`], so they
/// keep the session's order too. Ends after `Disconnected`.
pub(crate) async fn emit_events(inner: Arc<Inner>) {
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
