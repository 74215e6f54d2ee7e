//! [`ClientEvents`], the application's end of the event pipe (the client's end is
//! `driver/event_pipe.rs`): batches of events arrive on a channel and are handed out one
//! at a time, by waiting, by polling once per game tick, or as a `Stream`.

use crate::event_batches::{EventBatch, SpareBatches};
use crate::events::ClientEvent;
use futures_core::stream::{FusedStream, Stream};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::mpsc;

/// The application's stream of [`ClientEvent`]s: `Connected` first, `Disconnected` last,
/// and nothing after it (an event a direct path hands over after `Disconnected` is
/// dropped).
///
/// Three ways to read, all giving the same events in the same order:
/// - [`ClientEvents::next`] waits for the next event;
/// - [`ClientEvents::try_next`] never waits, for a game loop that polls once per tick;
/// - the [`Stream`] implementation, for stream combinators (`futures::StreamExt`).
///
/// Keep reading: while [`Limits::event_queue`] events (default 4,096) wait unread, the
/// client stops reading from the server, which eventually drops it as a slow consumer.
///
/// [`Limits::event_queue`]: crate::Limits::event_queue
#[derive(Debug)]
pub struct ClientEvents {
    rx: mpsc::Receiver<EventBatch>,
    /// The rest of the batch the last read took.
    buffer: EventBatch,
    /// Where emptied batches go back for the client to reuse.
    spares: Arc<SpareBatches>,
    /// `Disconnected` was handed over, or the queue closed: nothing more will come.
    finished: bool,
}

impl ClientEvents {
    pub(crate) fn new(rx: mpsc::Receiver<EventBatch>, spares: Arc<SpareBatches>) -> Self {
        Self {
            rx,
            buffer: EventBatch::new(),
            spares,
            finished: false,
        }
    }

    /// The next event, waiting for one; `None` after `Disconnected`.
    pub async fn next(&mut self) -> Option<ClientEvent> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }

    /// The next event queued now, without waiting. Call it in a loop once per tick of a
    /// game loop: `while let Some(event) = events.try_next() { .. }`.
    ///
    /// `None` means nothing is queued at this moment; more may come. The stream has ended
    /// once [`ClientEvent::Disconnected`] (always the last event) has been returned, and
    /// [`ClientEvents::is_finished`] says so.
    pub fn try_next(&mut self) -> Option<ClientEvent> {
        if self.finished {
            return None;
        }
        if self.buffer.is_empty() {
            match self.rx.try_recv() {
                Ok(batch) => self.absorb(batch),
                Err(mpsc::error::TryRecvError::Empty) => return None,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    self.finished = true;
                    return None;
                }
            }
        }
        let event = self.buffer.pop_front()?;
        Some(self.note(event))
    }

    /// Whether the stream has ended: `Disconnected` has been returned (or the client's
    /// tasks are gone, as when their runtime shut down, and nothing is left queued), so
    /// every later read returns `None`.
    pub fn is_finished(&self) -> bool {
        self.finished || (self.buffer.is_empty() && self.rx.is_closed() && self.rx.is_empty())
    }

    /// Moves every event queued now into `out`, without waiting; how many. Events that
    /// arrive meanwhile are left for the next call, so it always returns promptly.
    pub(crate) fn drain_now(&mut self, out: &mut Vec<ClientEvent>) -> usize {
        let before = out.len();
        for _ in 0..self.rx.len() {
            match self.rx.try_recv() {
                Ok(batch) => self.absorb(batch),
                Err(_) => break,
            }
        }
        while let Some(event) = self.try_next_buffered() {
            out.push(event);
        }
        out.len() - before
    }

    /// Queues a batch behind what is buffered. An empty buffer is swapped for the batch,
    /// so each event is moved once less (an event is about 150 bytes); the emptied
    /// allocation goes back to the client for a later batch (`event_batches.rs`).
    fn absorb(&mut self, mut batch: EventBatch) {
        if self.buffer.is_empty() {
            std::mem::swap(&mut self.buffer, &mut batch);
        } else {
            self.buffer.extend(batch.drain(..));
        }
        self.spares.put(batch);
    }

    fn try_next_buffered(&mut self) -> Option<ClientEvent> {
        if self.finished {
            return None;
        }
        let event = self.buffer.pop_front()?;
        Some(self.note(event))
    }

    /// Marks the end when `event` is the last one.
    fn note(&mut self, event: ClientEvent) -> ClientEvent {
        if matches!(event, ClientEvent::Disconnected { .. }) {
            self.finished = true;
            self.buffer.clear();
            // A direct path can outlive the server connection for a moment; closing the
            // queue keeps its reader from waiting for room that no one will make.
            self.rx.close();
        }
        event
    }
}

/// As [`ClientEvents::next`]: every event in order, then `None` after `Disconnected`.
/// Fused: after the end it stays `None`.
impl Stream for ClientEvents {
    type Item = ClientEvent;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ClientEvent>> {
        let this = self.get_mut();
        loop {
            if this.finished {
                return Poll::Ready(None);
            }
            if let Some(event) = this.buffer.pop_front() {
                return Poll::Ready(Some(this.note(event)));
            }
            match this.rx.poll_recv(cx) {
                Poll::Ready(Some(batch)) => this.absorb(batch),
                Poll::Ready(None) => {
                    this.finished = true;
                    return Poll::Ready(None);
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl FusedStream for ClientEvents {
    fn is_terminated(&self) -> bool {
        self.finished
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use peergroup_protocol::HostId;

    fn batch(capacity: usize, events: usize) -> EventBatch {
        let mut batch = EventBatch::with_capacity(capacity);
        batch.extend((0..events).map(|_| ClientEvent::Connected {
            host_id: HostId::SERVER,
        }));
        batch
    }

    #[test]
    fn emptied_batches_go_back_for_reuse() {
        let (tx, rx) = mpsc::channel(4);
        let spares = Arc::new(SpareBatches::new(128));
        let mut events = ClientEvents::new(rx, spares.clone());
        tx.try_send(batch(64, 2)).unwrap();
        tx.try_send(batch(32, 1)).unwrap();
        tx.try_send(batch(16, 1)).unwrap();

        // The first batch becomes the buffer; the empty buffer it replaced never
        // allocated, so nothing is kept yet.
        assert!(events.try_next().is_some());
        assert_eq!(spares.take().capacity(), 0);
        // Taken into a buffer that still holds an event, the other two batches are
        // emptied into it and both kept.
        let mut out = Vec::new();
        assert_eq!(events.drain_now(&mut out), 3);
        assert!(spares.take().capacity() >= 16);
        assert!(spares.take().capacity() >= 16);
        assert_eq!(spares.take().capacity(), 0);
    }
}
