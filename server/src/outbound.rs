//! A per-client send queue bounded in bytes.
//!
//! The server never waits on one client's queue, so one slow reader cannot stall the relay
//! for anyone else: a push that does not fit fails, and the caller disconnects that client
//! as a slow consumer (the policy NATS and most game relays use).

use bytes::Bytes;
use std::sync::Arc;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// A frame waiting to be written, holding its share of the byte budget.
pub(crate) struct Queued {
    pub frame: Bytes,
    _budget: OwnedSemaphorePermit,
}

/// The sending half, kept in the shared state.
#[derive(Debug, Clone)]
pub(crate) struct OutboundQueue {
    tx: mpsc::UnboundedSender<Queued>,
    budget: Arc<Semaphore>,
}

/// The queue is full: the client is not reading fast enough.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Overflow;

impl OutboundQueue {
    /// A queue holding at most `capacity_bytes` of frames.
    pub fn new(capacity_bytes: usize) -> (Self, mpsc::UnboundedReceiver<Queued>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let budget = Arc::new(Semaphore::new(capacity_bytes.min(Semaphore::MAX_PERMITS)));
        (Self { tx, budget }, rx)
    }

    /// Queues a frame without waiting.
    pub fn try_push(&self, frame: Bytes) -> Result<(), Overflow> {
        let cost = u32::try_from(frame.len()).map_err(|_| Overflow)?;
        let permit = self
            .budget
            .clone()
            .try_acquire_many_owned(cost)
            .map_err(|_| Overflow)?;
        self.tx
            .send(Queued {
                frame,
                _budget: permit,
            })
            .map_err(|_| Overflow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_at_most_its_byte_budget_and_frees_it_when_written() {
        let (queue, mut rx) = OutboundQueue::new(10);
        queue.try_push(Bytes::from_static(b"123456")).unwrap();
        assert_eq!(queue.try_push(Bytes::from_static(b"12345")), Err(Overflow));
        queue.try_push(Bytes::from_static(b"1234")).unwrap();
        let written = rx.try_recv().unwrap();
        drop(written);
        queue.try_push(Bytes::from_static(b"123456")).unwrap();
    }
}
