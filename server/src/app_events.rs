//! The application's event stream: lifecycle events and client messages, both bounded.
//!
//! Client messages wait for room (the sending client's stream stalls). Lifecycle events
//! (connects, disconnects, completions, removals, path changes) are never dropped: an
//! application that tracks clients or acks from them must see every one. They are bounded
//! by admission instead: past [`Limits::app_event_queue`](crate::Limits) unread events,
//! no new client is admitted and new group operations are refused, so what can still
//! arrive is bounded by what already exists (one disconnect per client, one completion
//! per pending join or leave).

use crate::events::ServerEvent;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The producing side, shared by the server's tasks.
#[derive(Debug)]
pub(crate) struct EventSink {
    lifecycle: mpsc::UnboundedSender<ServerEvent>,
    lifecycle_len: Arc<AtomicUsize>,
    lifecycle_cap: usize,
    messages: mpsc::Sender<ServerEvent>,
}

impl EventSink {
    pub fn new(
        lifecycle_cap: usize,
        message_cap: usize,
        shutdown: CancellationToken,
    ) -> (Self, ServerEvents) {
        let (lifecycle, lifecycle_rx) = mpsc::unbounded_channel();
        let (messages, messages_rx) = mpsc::channel(message_cap.max(1));
        let lifecycle_len = Arc::new(AtomicUsize::new(0));
        let sink = Self {
            lifecycle,
            lifecycle_len: lifecycle_len.clone(),
            lifecycle_cap: lifecycle_cap.max(1),
            messages,
        };
        let events = ServerEvents {
            lifecycle: lifecycle_rx,
            lifecycle_len,
            messages: messages_rx,
            shutdown,
        };
        (sink, events)
    }

    /// Queues a lifecycle event without waiting. Never dropped: callers that can wait or
    /// refuse check [`EventSink::has_room`] first.
    pub fn push_lifecycle(&self, event: ServerEvent) {
        self.lifecycle_len.fetch_add(1, Ordering::AcqRel);
        if self.lifecycle.send(event).is_err() {
            // The application dropped its stream: nobody will read it.
            self.lifecycle_len.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Whether the application has read enough that new work may add lifecycle events.
    pub fn has_room(&self) -> bool {
        self.queued() < self.lifecycle_cap
    }

    /// Lifecycle events queued and not yet read.
    pub fn queued(&self) -> usize {
        self.lifecycle_len.load(Ordering::Acquire)
    }

    /// Queues a client message, waiting for room: the sending client's stream stalls
    /// rather than the server's memory growing.
    pub async fn push_message(&self, event: ServerEvent) {
        // An error only means the application dropped its `ServerEvents`.
        let _ = self.messages.send(event).await;
    }

}

/// The application's stream of [`ServerEvent`]s. Keep reading it: client messages to the
/// server wait for room (default 4,096 queued), and past 65,536 unread lifecycle events
/// (the default) no new client is admitted and group operations are refused until the
/// application catches up. No event is ever dropped.
#[derive(Debug)]
pub struct ServerEvents {
    lifecycle: mpsc::UnboundedReceiver<ServerEvent>,
    lifecycle_len: Arc<AtomicUsize>,
    messages: mpsc::Receiver<ServerEvent>,
    shutdown: CancellationToken,
}

impl ServerEvents {
    /// The next event; lifecycle events first when both kinds are waiting. `None` once the
    /// server has shut down and everything queued was read.
    pub async fn next(&mut self) -> Option<ServerEvent> {
        loop {
            if let Ok(event) = self.lifecycle.try_recv() {
                self.lifecycle_len.fetch_sub(1, Ordering::AcqRel);
                return Some(event);
            }
            if let Ok(event) = self.messages.try_recv() {
                return Some(event);
            }
            if self.shutdown.is_cancelled() {
                return None;
            }
            tokio::select! {
                event = self.lifecycle.recv() => match event {
                    Some(event) => {
                        self.lifecycle_len.fetch_sub(1, Ordering::AcqRel);
                        return Some(event);
                    }
                    None => return self.messages.recv().await,
                },
                Some(event) = self.messages.recv() => return Some(event),
                _ = self.shutdown.cancelled() => {}
            }
        }
    }
}
