//! The client's send queues: two for the server (its main stream's messages and its
//! control stream's acks and reports), one per direct peer.
//!
//! Each holds encoded frames in the shared scheduler's order (notices first, then messages
//! by priority with latest-value replacement; see [`peergroup_protocol::schedule`]) until
//! its writer task (`driver/writer.rs`) takes them. Its bytes are the back-pressure: a
//! send waits (or `try_send` fails with `QueueFull`) while a queue it needs is at its
//! limit, so a slow path paces only the sends that use it.

use bytes::Bytes;
use peergroup_protocol::schedule::SendQueue;
use peergroup_protocol::Priority;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{oneshot, Notify};

#[derive(Debug)]
struct State {
    queue: Mutex<Inner>,
    /// Bytes queued plus bytes taken by the writer and not yet written.
    bytes: AtomicUsize,
    limit: usize,
    /// Set once the writer is gone: nothing is queued any more, and waiters are released.
    closed: AtomicBool,
    /// Wakes the writer.
    ready: Notify,
    /// Wakes senders waiting for room.
    room: Notify,
}

/// A queued frame and the id the session tracks it by (0: not tracked).
type Item = (Bytes, u64);

#[derive(Debug)]
struct Inner {
    frames: SendQueue<Item>,
    /// The ids of tracked frames in the order they went out (direct queues only: acks
    /// count frames in that order), until [`UploadQueue::take_sent`] hands them to the
    /// session, which keeps the order from then on.
    sent: Option<VecDeque<u64>>,
    /// Set by [`UploadQueue::finish`]: once the queue is empty the writer ends the stream
    /// and says so here.
    finish: Option<oneshot::Sender<()>>,
}

/// The sending half.
#[derive(Debug, Clone)]
pub(crate) struct UploadQueue {
    state: Arc<State>,
}

/// The writer's half.
#[derive(Debug)]
pub(crate) struct UploadReceiver {
    state: Arc<State>,
}

/// What the writer should do next.
#[derive(Debug)]
pub(crate) enum Next {
    /// Write this many frames (their bytes are reported with
    /// [`UploadReceiver::written`]).
    Frames(u64),
    /// Everything is written: finish the stream, then send on this.
    Finish(oneshot::Sender<()>),
}

impl UploadQueue {
    /// A queue that has room while it holds under `limit` bytes; with `log_sent`, it
    /// logs the ids of tracked frames as they go out.
    pub fn new(limit: usize, log_sent: bool) -> (Self, UploadReceiver) {
        let state = Arc::new(State {
            queue: Mutex::new(Inner {
                frames: SendQueue::new(),
                sent: log_sent.then(VecDeque::new),
                finish: None,
            }),
            bytes: AtomicUsize::new(0),
            limit: limit.max(1),
            closed: AtomicBool::new(false),
            ready: Notify::new(),
            room: Notify::new(),
        });
        (
            Self {
                state: state.clone(),
            },
            UploadReceiver { state },
        )
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        lock(&self.state)
    }

    /// Queues a notice (ack, report), to leave before queued messages. Notices never wait:
    /// they are small and bounded by what the other side sends.
    pub fn push_control(&self, frame: Bytes) {
        if self.state.closed.load(Ordering::Acquire) {
            return;
        }
        let len = frame.len();
        self.lock().frames.push_control((frame, 0), len);
        self.state.bytes.fetch_add(len, Ordering::AcqRel);
        self.state.ready.notify_one();
    }

    /// Queues a message at `priority`, tracked as `id` (0 for none); with a `latest` key
    /// it replaces a queued message of the same `flow` and key, and returns the replaced
    /// message's id (if it was tracked).
    pub fn push_data(
        &self,
        frame: Bytes,
        priority: Priority,
        flow: u64,
        latest: Option<u64>,
        id: u64,
    ) -> Option<u64> {
        if self.state.closed.load(Ordering::Acquire) {
            return None;
        }
        let len = frame.len();
        let mut inner = self.lock();
        let replaced = inner
            .frames
            .push_data_returning((frame, id), len, priority, flow, latest);
        // Under the lock, so the writer cannot subtract in between.
        self.state.bytes.fetch_add(len, Ordering::AcqRel);
        let replaced_id = replaced.and_then(|((_, old_id), old_len)| {
            self.state.bytes.fetch_sub(old_len, Ordering::AcqRel);
            (old_id != 0).then_some(old_id)
        });
        drop(inner);
        self.state.ready.notify_one();
        replaced_id
    }

    /// The ids of the tracked frames that went out since the last call, in the order
    /// they went out (empty for a queue that does not log them).
    pub fn take_sent(&self) -> Vec<u64> {
        let mut inner = self.lock();
        inner
            .sent
            .as_mut()
            .map_or_else(Vec::new, |sent| sent.drain(..).collect())
    }

    /// Whether a message may be queued now (the queue is under its limit, or closed, in
    /// which case the send fails elsewhere).
    pub fn has_room(&self) -> bool {
        self.queued_bytes() < self.state.limit || self.state.closed.load(Ordering::Acquire)
    }

    /// Resolves once [`UploadQueue::has_room`] holds.
    pub async fn room(&self) {
        loop {
            let notified = self.state.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.has_room() {
                return;
            }
            notified.await;
        }
    }

    /// Bytes queued now, including what the writer is writing.
    pub fn queued_bytes(&self) -> usize {
        self.state.bytes.load(Ordering::Acquire)
    }

    /// Asks the writer to finish the stream once everything queued is written; the
    /// receiver resolves then (or errors if the writer ended first).
    pub fn finish(&self) -> oneshot::Receiver<()> {
        let (done, finished) = oneshot::channel();
        self.lock().finish = Some(done);
        self.state.ready.notify_one();
        finished
    }
}

fn lock(state: &State) -> MutexGuard<'_, Inner> {
    state
        .queue
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl UploadReceiver {
    /// Takes the next frames in scheduling order into `merged` (up to `max_bytes`, at
    /// least one frame), waiting for one, or says the stream should finish. Taking a few
    /// tens of KiB at a time keeps the order decided here rather than in quinn's stream
    /// buffer.
    pub async fn next(&mut self, merged: &mut bytes::BytesMut, max_bytes: usize) -> Next {
        loop {
            let frames = self.take_queued(merged, max_bytes);
            if !merged.is_empty() {
                return Next::Frames(frames);
            }
            if let Some(done) = lock(&self.state).finish.take() {
                return Next::Finish(done);
            }
            self.state.ready.notified().await;
        }
    }

    /// Moves the frames queued now into `merged`, in scheduling order, while it holds
    /// less than `max_bytes` (at least one frame when it is empty), without waiting;
    /// returns how many it moved.
    pub fn take_queued(&mut self, merged: &mut bytes::BytesMut, max_bytes: usize) -> u64 {
        let mut inner = lock(&self.state);
        let mut frames = 0;
        while merged.is_empty() || merged.len() < max_bytes {
            let Some(((frame, id), _)) = inner.frames.pop() else {
                break;
            };
            if let (Some(sent), true) = (inner.sent.as_mut(), id != 0) {
                sent.push_back(id);
            }
            // One buffer per batch: quinn scans a stream's unacknowledged buffers
            // for each packet it builds, so many small ones slow it down.
            merged.extend_from_slice(&frame);
            frames += 1;
        }
        frames
    }

    /// Marks `bytes` as written, waking senders once there is room.
    pub fn written(&self, bytes: usize) {
        self.state.bytes.fetch_sub(bytes, Ordering::AcqRel);
        if self.state.bytes.load(Ordering::Acquire) < self.state.limit {
            self.state.room.notify_waiters();
        }
    }
}

impl Drop for UploadReceiver {
    fn drop(&mut self) {
        // Nobody will write this queue again: free what it holds and release waiters.
        self.state.closed.store(true, Ordering::Release);
        let mut inner = lock(&self.state);
        while inner.frames.pop().is_some() {}
        inner.finish = None;
        self.state.bytes.store(0, Ordering::Release);
        self.state.room.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn room_returns_once_the_writer_catches_up() {
        let (queue, mut rx) = UploadQueue::new(10, false);
        queue.push_data(Bytes::from_static(b"0123456789"), Priority::Low, 0, None, 0);
        assert!(!queue.has_room());
        let waiter = {
            let queue = queue.clone();
            tokio::spawn(async move { queue.room().await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "no room yet");
        let mut merged = bytes::BytesMut::new();
        assert!(matches!(
            rx.next(&mut merged, 1 << 10).await,
            Next::Frames(_)
        ));
        rx.written(merged.len());
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("woken")
            .unwrap();
        assert_eq!(queue.queued_bytes(), 0);
    }

    #[tokio::test]
    async fn notices_and_high_priority_leave_first_and_latest_values_replace() {
        let (queue, mut rx) = UploadQueue::new(1 << 20, false);
        queue.push_data(Bytes::from_static(b"[chat]"), Priority::Low, 0, None, 0);
        queue.push_data(Bytes::from_static(b"[pos1]"), Priority::High, 0, Some(1), 0);
        queue.push_control(Bytes::from_static(b"[ack]"));
        queue.push_data(Bytes::from_static(b"[pos2]"), Priority::High, 0, Some(1), 0);
        assert_eq!(queue.queued_bytes(), 17);
        let mut merged = bytes::BytesMut::new();
        rx.next(&mut merged, 1 << 10).await;
        assert_eq!(&merged[..], b"[ack][pos2][chat]");
    }

    #[tokio::test]
    async fn tracked_frames_are_logged_in_the_order_they_go_out() {
        let (queue, mut rx) = UploadQueue::new(1 << 20, true);
        queue.push_data(Bytes::from_static(b"[chat]"), Priority::Low, 0, None, 1);
        queue.push_data(Bytes::from_static(b"[pos1]"), Priority::High, 0, Some(9), 2);
        queue.push_control(Bytes::from_static(b"[ack]"));
        assert_eq!(
            queue.push_data(Bytes::from_static(b"[pos2]"), Priority::High, 0, Some(9), 3),
            Some(2),
            "the replaced value is reported"
        );
        assert_eq!(queue.take_sent(), Vec::<u64>::new(), "nothing went out yet");
        let mut merged = bytes::BytesMut::new();
        rx.next(&mut merged, 1 << 10).await;
        assert_eq!(&merged[..], b"[ack][pos2][chat]");
        assert_eq!(
            queue.take_sent(),
            vec![3, 1],
            "only two tracked frames went out"
        );
        assert_eq!(
            queue.take_sent(),
            Vec::<u64>::new(),
            "each is handed over once"
        );
    }

    #[tokio::test]
    async fn finishes_only_after_everything_queued() {
        let (queue, mut rx) = UploadQueue::new(1 << 20, false);
        queue.push_data(Bytes::from_static(b"last"), Priority::Medium, 0, None, 0);
        let _finished = queue.finish();
        let mut merged = bytes::BytesMut::new();
        assert!(matches!(
            rx.next(&mut merged, 1 << 10).await,
            Next::Frames(_)
        ));
        merged.clear();
        assert!(matches!(
            rx.next(&mut merged, 1 << 10).await,
            Next::Finish(_)
        ));
    }

    #[tokio::test]
    async fn a_closed_queue_frees_its_frames_and_releases_waiters() {
        let (queue, rx) = UploadQueue::new(1, false);
        queue.push_data(Bytes::from_static(b"xx"), Priority::Medium, 0, None, 0);
        drop(rx);
        assert_eq!(queue.queued_bytes(), 0);
        tokio::time::timeout(Duration::from_secs(1), queue.room())
            .await
            .expect("released");
    }
}
