//! A per-client send queue bounded in bytes, with back-pressure for whoever fills it.
//!
//! Frames are always admitted in order, since the order of notices and messages to one
//! client must never change. A push that takes the queue past its soft limit tells the
//! caller, which (outside the lock) waits for the queue to drain: the client whose message
//! is being relayed is paused, like a TCP sender, instead of the receiver being dropped
//! for a burst. A receiver that stays backlogged past the slow-consumer timeout, or whose
//! queue passes the hard limit (twice the soft one), is disconnected, so memory stays
//! bounded whatever a client does.

use bytes::Bytes;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, Notify};

#[derive(Debug)]
struct QueueState {
    bytes: AtomicUsize,
    soft_limit: usize,
    drained: Notify,
}

/// The sending half, kept in the shared state.
#[derive(Debug, Clone)]
pub(crate) struct OutboundQueue {
    tx: mpsc::UnboundedSender<Bytes>,
    state: Arc<QueueState>,
}

/// How full the queue is after a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fill {
    /// Under the soft limit.
    Fine,
    /// Over the soft limit: the producer should wait for [`OutboundQueue::drained`].
    Backlogged,
    /// Over the hard limit: the receiver must be disconnected now.
    Overflowing,
}

/// The receiving half, owned by the writer task.
pub(crate) struct OutboundReceiver {
    rx: mpsc::UnboundedReceiver<Bytes>,
    state: Arc<QueueState>,
}

impl OutboundQueue {
    /// A queue with a soft limit of `soft_limit` bytes (the hard limit is twice that).
    pub fn new(soft_limit: usize) -> (Self, OutboundReceiver) {
        let (tx, rx) = mpsc::unbounded_channel();
        let state = Arc::new(QueueState {
            bytes: AtomicUsize::new(0),
            soft_limit,
            drained: Notify::new(),
        });
        (
            Self {
                tx,
                state: state.clone(),
            },
            OutboundReceiver { rx, state },
        )
    }

    /// Queues a frame and says how full the queue now is.
    pub fn push(&self, frame: Bytes) -> Fill {
        let len = frame.len();
        // Count the bytes before the writer can see the frame, or its subtraction could
        // run first and wrap the counter.
        let queued = self.state.bytes.fetch_add(len, Ordering::AcqRel) + len;
        if self.tx.send(frame).is_err() {
            // The writer is gone (connection closing): nothing is held.
            self.state.bytes.fetch_sub(len, Ordering::AcqRel);
            return Fill::Fine;
        }
        if queued > self.state.soft_limit.saturating_mul(2) {
            Fill::Overflowing
        } else if queued > self.state.soft_limit {
            Fill::Backlogged
        } else {
            Fill::Fine
        }
    }

    /// Bytes queued now.
    pub fn queued_bytes(&self) -> usize {
        self.state.bytes.load(Ordering::Acquire)
    }

    /// Resolves once the queue is at or under its soft limit.
    pub async fn drained(&self) {
        loop {
            let notified = self.state.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.queued_bytes() <= self.state.soft_limit || self.tx.is_closed() {
                return;
            }
            notified.await;
        }
    }
}

impl OutboundReceiver {
    /// Up to `limit` frames, waiting for at least one; 0 when the queue is closed.
    pub async fn recv_many(&mut self, frames: &mut Vec<Bytes>, limit: usize) -> usize {
        self.rx.recv_many(frames, limit).await
    }

    /// Marks `bytes` as written, waking producers once the queue is under its soft limit.
    pub fn written(&self, bytes: usize) {
        let before = self.state.bytes.fetch_sub(bytes, Ordering::AcqRel);
        if before - bytes <= self.state.soft_limit {
            self.state.drained.notify_waiters();
        }
    }
}

impl Drop for OutboundReceiver {
    fn drop(&mut self) {
        // Nobody will drain this queue again: release every waiting producer.
        self.rx.close();
        self.state.drained.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn fills_past_the_soft_then_the_hard_limit_and_wakes_producers_when_drained() {
        let (queue, mut rx) = OutboundQueue::new(10);
        assert_eq!(queue.push(Bytes::from_static(b"123456")), Fill::Fine);
        assert_eq!(queue.push(Bytes::from_static(b"12345")), Fill::Backlogged);
        assert_eq!(
            queue.push(Bytes::from_static(b"1234567890")),
            Fill::Overflowing
        );

        let waiter = {
            let queue = queue.clone();
            tokio::spawn(async move { queue.drained().await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "still backlogged");
        let mut frames = Vec::new();
        rx.recv_many(&mut frames, 2).await;
        rx.written(frames.iter().map(Bytes::len).sum());
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("woken once under the soft limit")
            .unwrap();
        assert_eq!(queue.queued_bytes(), 10);
    }

    #[tokio::test]
    async fn a_closed_queue_releases_its_waiters() {
        let (queue, rx) = OutboundQueue::new(1);
        queue.push(Bytes::from_static(b"xx"));
        drop(rx);
        tokio::time::timeout(Duration::from_secs(1), queue.drained())
            .await
            .expect("released");
    }
}
