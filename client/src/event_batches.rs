//! The allocations that carry events from the session to the application, kept for
//! reuse.
//!
//! Events travel in batches: the session's queue is handed over whole
//! (`Session::take_events`) and the application's [`ClientEvents`] takes it as its buffer.
//! Without reuse, each batch costs an allocation (and the growing of the session's new
//! queue as events arrive) and a free on the application's side: 5.0 % of the clients'
//! CPU in a profile of the benchmark's 1→1 reliable relay flood, 1.3 % with it. The
//! application's side puts each emptied buffer back here; the session's side takes one
//! when it hands its queue over.
//!
//! [`ClientEvents`]: crate::ClientEvents

use crate::events::ClientEvent;
use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};

/// A batch of events, in the session's order.
pub(crate) type EventBatch = VecDeque<ClientEvent>;

/// Emptied batches kept at most: the one being filled, the one being read and one in the
/// channel between them cover a steady flow.
const KEPT: usize = 4;

/// Spare batches between the application's [`ClientEvents`](crate::ClientEvents) and the
/// event pipe. Bounded in entries ([`KEPT`]) and in bytes: a batch larger than
/// `max_events` (one that a burst grew) is freed rather than kept.
#[derive(Debug)]
pub(crate) struct SpareBatches {
    spares: Mutex<Vec<EventBatch>>,
    max_events: usize,
}

impl SpareBatches {
    /// Keeps batches with room for at most `max_events` events.
    pub fn new(max_events: usize) -> Self {
        Self {
            spares: Mutex::new(Vec::with_capacity(KEPT)),
            max_events,
        }
    }

    /// An emptied batch, or an empty one that has not allocated.
    pub fn take(&self) -> EventBatch {
        self.lock().pop().unwrap_or_default()
    }

    /// Keeps `batch` for reuse once it is emptied, unless it never allocated, is larger
    /// than the bound, or enough are kept already.
    pub fn put(&self, mut batch: EventBatch) {
        let capacity = batch.capacity();
        if capacity == 0 || capacity > self.max_events {
            return;
        }
        // Any events left would be dropped by the caller anyway; clearing also starts
        // the ring at its front again.
        batch.clear();
        let mut spares = self.lock();
        if spares.len() < KEPT {
            spares.push(batch);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<EventBatch>> {
        self.spares.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use peergroup_protocol::HostId;

    fn batch(capacity: usize, events: usize) -> EventBatch {
        let mut batch = EventBatch::with_capacity(capacity);
        for _ in 0..events {
            batch.push_back(ClientEvent::Connected {
                host_id: HostId::SERVER,
            });
        }
        batch
    }

    #[test]
    fn an_emptied_batch_comes_back_empty_with_its_allocation() {
        let spares = SpareBatches::new(128);
        spares.put(batch(64, 3));
        let again = spares.take();
        assert!(again.is_empty());
        assert!(again.capacity() >= 64);
        // Nothing kept any more: a fresh one that has not allocated.
        assert_eq!(spares.take().capacity(), 0);
    }

    #[test]
    fn batches_past_the_bounds_are_freed() {
        let spares = SpareBatches::new(128);
        spares.put(EventBatch::new());
        spares.put(batch(1024, 0));
        assert_eq!(spares.take().capacity(), 0, "neither was kept");

        for _ in 0..KEPT + 2 {
            spares.put(batch(16, 1));
        }
        let kept = std::iter::from_fn(|| Some(spares.take()))
            .take_while(|batch| batch.capacity() > 0)
            .count();
        assert_eq!(kept, KEPT);
    }
}
