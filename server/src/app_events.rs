//! The application's event stream: lifecycle events and client messages, both bounded.
//!
//! Client messages wait for room (the sending client's stream stalls); a client's
//! `ClientDisconnected` queues behind them, so it never overtakes what that client sent.
//! Lifecycle events (connects, completions, removals, path changes) are never dropped: an
//! application that tracks clients or acks from them must see every one. They are bounded
//! by admission instead: past [`Limits::app_event_queue`](crate::Limits) unread events,
//! no new client is admitted and new group operations are refused, so what can still
//! arrive is bounded by what already exists (one disconnect per client, one completion
//! per pending join or leave).

use crate::events::ServerEvent;
use futures_core::stream::{FusedStream, Stream};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

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
            shutdown_wait: None,
            finished: false,
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
///
/// Three ways to read, all with the same order rules (lifecycle events before client
/// messages when both are waiting, except that a client's `ClientDisconnected` comes after
/// every message it sent; the end only once the server has shut down and every queued
/// event was read):
/// - [`ServerEvents::next`] waits for the next event;
/// - [`ServerEvents::try_next`] never waits, for a game loop that polls once per tick;
/// - the [`Stream`] implementation, for stream combinators (`futures::StreamExt`).
#[derive(Debug)]
pub struct ServerEvents {
    lifecycle: mpsc::UnboundedReceiver<ServerEvent>,
    lifecycle_len: Arc<AtomicUsize>,
    messages: mpsc::Receiver<ServerEvent>,
    shutdown: CancellationToken,
    /// Resolves once `shutdown` is cancelled: made by the first poll that has to wait, so
    /// a stream that is only polled with `try_next` never allocates it.
    shutdown_wait: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    /// The stream has ended (it returned `None`); it stays ended.
    finished: bool,
}

impl ServerEvents {
    /// The next event, waiting for one; lifecycle events first when both kinds are
    /// waiting. `None` once the server has shut down and everything queued was read.
    pub async fn next(&mut self) -> Option<ServerEvent> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }

    /// The next event queued now, without waiting; lifecycle events first when both
    /// kinds are queued. Call it in a loop once per tick of a game loop:
    /// `while let Some(event) = events.try_next() { .. }`.
    ///
    /// `None` means nothing is queued at this moment; more may come. Whether the stream
    /// has ended for good (the server shut down and everything queued was read) is
    /// [`ServerEvents::is_finished`].
    pub fn try_next(&mut self) -> Option<ServerEvent> {
        if self.finished {
            return None;
        }
        if let Some(event) = self.take_queued() {
            return Some(event);
        }
        if self.shutdown.is_cancelled() {
            self.finished = true;
        }
        None
    }

    /// Whether the stream has ended: the server has shut down and every queued event was
    /// read, so [`ServerEvents::try_next`] and [`ServerEvents::next`] return `None` from
    /// now on.
    pub fn is_finished(&self) -> bool {
        self.finished
            || (self.shutdown.is_cancelled()
                && self.lifecycle.is_empty()
                && self.messages.is_empty())
    }

    /// A queued event, lifecycle events first.
    fn take_queued(&mut self) -> Option<ServerEvent> {
        if let Ok(event) = self.lifecycle.try_recv() {
            self.lifecycle_len.fetch_sub(1, Ordering::AcqRel);
            return Some(event);
        }
        self.messages.try_recv().ok()
    }
}

/// As [`ServerEvents::next`]: lifecycle events first when both kinds are waiting, and
/// `None` once the server has shut down and everything queued was read. Fused: after
/// `None` it stays `None`.
impl Stream for ServerEvents {
    type Item = ServerEvent;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ServerEvent>> {
        let this = self.get_mut();
        loop {
            if this.finished {
                return Poll::Ready(None);
            }
            // What is queued decides, in the stated order; the polls below only register
            // for wake-ups (tokio's task budget can make them answer `Pending` even when
            // something is queued, so they must not decide the end).
            if let Some(event) = this.take_queued() {
                return Poll::Ready(Some(event));
            }
            if this.shutdown.is_cancelled() {
                this.finished = true;
                return Poll::Ready(None);
            }
            if let Poll::Ready(Some(event)) = this.lifecycle.poll_recv(cx) {
                this.lifecycle_len.fetch_sub(1, Ordering::AcqRel);
                return Poll::Ready(Some(event));
            }
            if let Poll::Ready(Some(event)) = this.messages.poll_recv(cx) {
                return Poll::Ready(Some(event));
            }
            let token = &this.shutdown;
            let shutdown = this
                .shutdown_wait
                .get_or_insert_with(|| Box::pin(token.clone().cancelled_owned()));
            if shutdown.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // Shut down meanwhile: take what is still queued, then end.
        }
    }
}

impl FusedStream for ServerEvents {
    fn is_terminated(&self) -> bool {
        self.finished
    }
}
