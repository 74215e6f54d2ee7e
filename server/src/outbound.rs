//! A per-client send queue bounded in bytes, ordered by the shared scheduler, with
//! back-pressure for whoever fills it.
//!
//! Notices leave first, in order; messages follow by priority (deficit round robin, see
//! [`peergroup_protocol::schedule`]), and a queued [`Delivery::Latest`] message is replaced
//! in place by a newer one from the same sender with the same key, so a slow receiver of
//! positions holds one per key instead of a backlog.
//!
//! A push that takes the queue past its soft limit tells the caller, which (outside the
//! lock) waits for the queue to drain: the client whose message is being relayed is paused,
//! like a TCP sender, instead of the receiver being dropped for a burst. A receiver is
//! disconnected as a slow consumer once its time over the soft limit, counted across
//! bursts, uses up its allowance ([`crate::backlog`]: the slow-consumer timeout at once, half
//! the time in the long run), or once its queue passes the hard limit. Each
//! sender pauses after one push over the soft limit, so the hard limit is the soft limit
//! plus the larger of the soft limit and two maximal frames per sender that pushed past
//! it: eight members sending 1 MiB at once to a receiver near its limit no longer get it
//! kicked, and memory stays bounded whatever a client does.
//!
//! [`Delivery::Latest`]: peergroup_protocol::Delivery::Latest

use crate::backlog::BacklogAllowance;
use bytes::{Bytes, BytesMut};
use peergroup_protocol::schedule::{Pushed, SendQueue};
use peergroup_protocol::{DeliverFrame, FrameError, HostId, Priority};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// One frame waiting in a client's queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outgoing {
    /// Encoded already: notices, skips, the server application's messages.
    Encoded(Bytes),
    /// A relayed message, encoded only by the writer: outside the server's lock, straight
    /// into the stream's buffer, its payload shared by every receiver until then.
    Deliver(DeliverFrame),
}

impl Outgoing {
    /// The frame's length in bytes, length prefix included.
    pub fn len(&self) -> usize {
        match self {
            Outgoing::Encoded(frame) => frame.len(),
            Outgoing::Deliver(frame) => frame.frame_len(),
        }
    }

    /// Appends the frame to `out`.
    ///
    /// # Errors
    /// [`FrameError::TooLarge`] for a relayed message over `max` bytes (the relay checks
    /// sizes earlier, so this does not happen); `out` is unchanged then.
    pub fn write_to(&self, out: &mut BytesMut, max: u32) -> Result<(), FrameError> {
        match self {
            Outgoing::Encoded(frame) => {
                out.extend_from_slice(frame);
                Ok(())
            }
            Outgoing::Deliver(frame) => frame.write_to(out, max),
        }
    }
}

#[derive(Debug)]
struct QueueState {
    queue: Mutex<SendQueue<Outgoing>>,
    /// Bytes queued plus bytes taken by the writer and not yet written.
    bytes: AtomicUsize,
    soft_limit: usize,
    /// The largest frame, bytes: what one sender may push past the soft limit before it
    /// pauses (twice, for the frames of one read).
    max_frame: usize,
    /// Senders whose messages went in past the soft limit since it was last under it.
    over_senders: Mutex<Vec<HostId>>,
    /// Time over the soft limit, counted across bursts.
    backlog: Mutex<BacklogAllowance>,
    /// Set once the writer is gone; pushes are dropped from then on.
    closed: AtomicBool,
    /// Wakes the writer.
    ready: Notify,
    /// Wakes producers waiting for the queue to drain.
    drained: Notify,
}

/// Locks `mutex`, whatever a panicking holder left (the data stays consistent: each
/// critical section is one update).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl QueueState {
    fn lock(&self) -> MutexGuard<'_, SendQueue<Outgoing>> {
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The sending half, kept in the shared state.
#[derive(Debug, Clone)]
pub(crate) struct OutboundQueue {
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

/// Which queued messages a control frame must not overtake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Waits<'a> {
    /// None: it goes ahead of every queued message.
    Nothing,
    /// Those from these senders.
    For(&'a [HostId]),
    /// Every queued message.
    Everything,
}

/// The receiving half, owned by the writer task.
pub(crate) struct OutboundReceiver {
    state: Arc<QueueState>,
}

impl OutboundQueue {
    /// A queue with a soft limit of `soft_limit` bytes for frames of at most `max_frame`
    /// bytes, whose receiver may stay over the soft limit for `slow_consumer` at once (see
    /// the [module docs](self) for the hard limit).
    pub fn new(
        soft_limit: usize,
        max_frame: usize,
        slow_consumer: Duration,
    ) -> (Self, OutboundReceiver) {
        let state = Arc::new(QueueState {
            queue: Mutex::new(SendQueue::new()),
            bytes: AtomicUsize::new(0),
            soft_limit,
            max_frame,
            over_senders: Mutex::new(Vec::new()),
            backlog: Mutex::new(BacklogAllowance::new(slow_consumer, Instant::now())),
            closed: AtomicBool::new(false),
            ready: Notify::new(),
            drained: Notify::new(),
        });
        (
            Self {
                state: state.clone(),
            },
            OutboundReceiver { state },
        )
    }

    /// Queues a notice, to leave before every queued message.
    pub fn push_control(&self, frame: Bytes) -> Fill {
        let len = frame.len();
        self.push(
            |queue, len| {
                queue.push_control(Outgoing::Encoded(frame), len);
                0
            },
            len,
            None,
        )
    }

    /// Queues a message from `from` at `priority`; with a `latest` key, it replaces a
    /// queued message from the same sender with the same key (unless the queued one is
    /// newer: then this one is dropped).
    pub fn push_data(
        &self,
        frame: Outgoing,
        priority: Priority,
        from: HostId,
        latest: Option<u64>,
    ) -> Fill {
        let len = frame.len();
        self.push(
            |queue, len| {
                // A sender's uploads of one key can arrive out of order (its queue serves
                // priorities and destination sets by round robin): a value older than the
                // one queued is dropped rather than put in its place, or the last value
                // sent would never arrive (the receiver would drop it after the newer one
                // anyway).
                if let (Some(key), Outgoing::Deliver(new)) = (latest, &frame) {
                    if let Some(Outgoing::Deliver(queued)) = queue.queued_latest(from.raw(), key) {
                        if queued.seq > new.seq {
                            return 0;
                        }
                    }
                }
                match queue.push_data(frame, len, priority, from.raw(), latest) {
                    Pushed::Added => 0,
                    Pushed::Replaced { old_len } => old_len,
                }
            },
            len,
            Some(from),
        )
    }

    /// Queues a notice behind the queued messages it must not overtake: those from the
    /// hosts in `waits` (a `PeerDown`, or a `MemberLeft` behind the leaver's messages), or
    /// every queued message. They go out first, in the order they were queued.
    pub fn push_control_after(&self, frame: Bytes, waits: Waits<'_>) -> Fill {
        let frame = Outgoing::Encoded(frame);
        let len = frame.len();
        self.push(
            |queue, len| {
                match waits {
                    Waits::Nothing => {}
                    Waits::For(&[sender]) => queue.promote_flow(sender.raw()),
                    Waits::For(senders) => {
                        queue.promote_flows(|flow| senders.iter().any(|s| s.raw() == flow))
                    }
                    Waits::Everything => queue.promote_flows(|_| true),
                }
                queue.push_control(frame, len);
                0
            },
            len,
            None,
        )
    }

    fn push(
        &self,
        insert: impl FnOnce(&mut SendQueue<Outgoing>, usize) -> usize,
        len: usize,
        sender: Option<HostId>,
    ) -> Fill {
        if self.state.closed.load(Ordering::Acquire) {
            // The writer is gone (connection closing): nothing is held.
            return Fill::Fine;
        }
        let queued = {
            let mut queue = self.state.lock();
            let before = queue.bytes();
            let replaced = insert(&mut queue, len);
            let added = queue.bytes() + replaced - before;
            // Counted under the queue's lock, before the writer can take the frame, so its
            // subtraction can never run first and wrap the counter.
            let now = self.state.bytes.fetch_add(added, Ordering::AcqRel) + added;
            self.state.bytes.fetch_sub(replaced, Ordering::AcqRel);
            now - replaced
        };
        self.state.ready.notify_one();
        if queued <= self.state.soft_limit {
            return Fill::Fine;
        }
        let senders = {
            let mut over = lock(&self.state.over_senders);
            if let Some(sender) = sender {
                if !over.contains(&sender) {
                    over.push(sender);
                }
            }
            over.len()
        };
        lock(&self.state.backlog).handle_over(Instant::now());
        let overshoot = self.state.soft_limit.max(
            senders
                .saturating_mul(2)
                .saturating_mul(self.state.max_frame),
        );
        if queued > self.state.soft_limit.saturating_add(overshoot) {
            Fill::Overflowing
        } else {
            Fill::Backlogged
        }
    }

    /// How much longer the receiver may stay over its soft limit: what a producer waits
    /// for at most before it is disconnected as a slow consumer (zero: at once).
    pub fn backlog_allowance(&self) -> Duration {
        lock(&self.state.backlog).remaining(Instant::now())
    }

    /// Bytes queued now (including what the writer is writing).
    pub fn queued_bytes(&self) -> usize {
        self.state.bytes.load(Ordering::Acquire)
    }

    /// Resolves once the queue is at or under its soft limit.
    pub async fn drained(&self) {
        loop {
            let notified = self.state.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.queued_bytes() <= self.state.soft_limit
                || self.state.closed.load(Ordering::Acquire)
            {
                return;
            }
            notified.await;
        }
    }
}

impl OutboundReceiver {
    /// The next frames in scheduling order, up to `limit` frames or `max_bytes` bytes
    /// (at least one frame), waiting for at least one. Taking few at a time keeps the
    /// order decided here rather than in quinn's stream buffer.
    pub async fn recv_many(&mut self, frames: &mut Vec<Outgoing>, limit: usize, max_bytes: usize) {
        loop {
            {
                let mut queue = self.state.lock();
                let mut taken = 0;
                while frames.len() < limit && (frames.is_empty() || taken < max_bytes) {
                    let Some((frame, len)) = queue.pop() else {
                        break;
                    };
                    taken += len;
                    frames.push(frame);
                }
            }
            if !frames.is_empty() {
                return;
            }
            self.state.ready.notified().await;
        }
    }

    /// Whether nothing is queued (frames taken but not yet written do not count).
    pub fn is_empty(&self) -> bool {
        self.state.lock().is_empty()
    }

    /// Marks `bytes` as written, waking producers once the queue is under its soft limit.
    pub fn written(&self, bytes: usize) {
        let before = self.state.bytes.fetch_sub(bytes, Ordering::AcqRel);
        if before - bytes <= self.state.soft_limit {
            if before > self.state.soft_limit {
                // Back under: the stretch over the limit ends here.
                lock(&self.state.over_senders).clear();
                lock(&self.state.backlog).handle_under(Instant::now());
            }
            self.state.drained.notify_waiters();
        }
    }
}

impl Drop for OutboundReceiver {
    fn drop(&mut self) {
        // Nobody will drain this queue again: release every waiting producer and the
        // memory it holds.
        self.state.closed.store(true, Ordering::Release);
        let mut queue = self.state.lock();
        while queue.pop().is_some() {}
        self.state.drained.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const SENDER: HostId = HostId::SERVER;
    const SLOW: Duration = Duration::from_secs(3);

    fn encoded(frame: &'static [u8]) -> Outgoing {
        Outgoing::Encoded(Bytes::from_static(frame))
    }

    fn data(queue: &OutboundQueue, frame: &'static [u8]) -> Fill {
        queue.push_data(encoded(frame), Priority::Medium, SENDER, None)
    }

    #[tokio::test]
    async fn fills_past_the_soft_then_the_hard_limit_and_wakes_producers_when_drained() {
        let (queue, mut rx) = OutboundQueue::new(10, 5, SLOW);
        assert_eq!(data(&queue, b"123456"), Fill::Fine);
        assert_eq!(data(&queue, b"12345"), Fill::Backlogged);
        assert_eq!(data(&queue, b"1234567890"), Fill::Overflowing);

        let waiter = {
            let queue = queue.clone();
            tokio::spawn(async move { queue.drained().await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "still backlogged");
        let mut frames = Vec::new();
        rx.recv_many(&mut frames, 2, usize::MAX).await;
        rx.written(frames.iter().map(Outgoing::len).sum());
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("woken once under the soft limit")
            .unwrap();
        assert_eq!(queue.queued_bytes(), 10);
    }

    #[tokio::test]
    async fn a_closed_queue_releases_its_waiters_and_holds_nothing() {
        let (queue, rx) = OutboundQueue::new(1, 1, SLOW);
        data(&queue, b"xx");
        drop(rx);
        tokio::time::timeout(Duration::from_secs(1), queue.drained())
            .await
            .expect("released");
        assert_eq!(data(&queue, b"yy"), Fill::Fine);
    }

    /// Found by the simulator (`sim/`, seed 40 of its first version): a sender's uploads
    /// of one latest key can reach the server out of order (its queue serves priorities,
    /// and destination sets, by round robin), and the older value used to overwrite the
    /// newer one queued for the receiver, so the last value sent never arrived.
    #[tokio::test]
    async fn an_older_latest_value_arriving_late_leaves_the_newer_one_queued() {
        use peergroup_protocol::Lane;
        let (queue, mut rx) = OutboundQueue::new(1 << 20, 1 << 10, SLOW);
        let sender = HostId::from_raw(5);
        let value = |seq| {
            Outgoing::Deliver(DeliverFrame {
                from: sender,
                group: None,
                lane: Lane::Latest { key: 1 },
                seq,
                payload: Bytes::from_static(b"position"),
            })
        };
        let latest = |seq, priority| queue.push_data(value(seq), priority, sender, Some(1));
        latest(20, Priority::Medium);
        latest(18, Priority::Low);
        assert_eq!(
            queue.queued_bytes(),
            value(20).len(),
            "one message per key is held"
        );
        let mut frames = Vec::new();
        rx.recv_many(&mut frames, 64, usize::MAX).await;
        assert_eq!(frames, vec![value(20)], "the newest value stays");
        rx.written(value(20).len());

        // A newer value still replaces a queued older one.
        latest(21, Priority::Medium);
        latest(22, Priority::Low);
        let mut frames = Vec::new();
        rx.recv_many(&mut frames, 64, usize::MAX).await;
        assert_eq!(frames, vec![value(22)]);
    }

    #[tokio::test]
    async fn a_replaced_latest_message_costs_nothing_more() {
        let (queue, mut rx) = OutboundQueue::new(1 << 20, 1 << 10, SLOW);
        let latest =
            |frame: &'static [u8]| queue.push_data(encoded(frame), Priority::High, SENDER, Some(7));
        for _ in 0..1000 {
            latest(b"old position");
        }
        latest(b"new");
        assert_eq!(queue.queued_bytes(), 3, "one message per key is held");
        let mut frames = Vec::new();
        rx.recv_many(&mut frames, 64, usize::MAX).await;
        assert_eq!(frames, vec![encoded(b"new")]);
        rx.written(3);
        assert_eq!(queue.queued_bytes(), 0);
    }

    #[tokio::test]
    async fn notices_go_first_but_a_peer_down_waits_for_that_peers_messages() {
        let (queue, mut rx) = OutboundQueue::new(1 << 20, 1 << 10, SLOW);
        let peer = HostId::from_raw(99);
        queue.push_data(encoded(b"m1"), Priority::Low, peer, None);
        queue.push_data(encoded(b"other"), Priority::Low, SENDER, None);
        queue.push_control(Bytes::from_static(b"notice"));
        queue.push_data(encoded(b"m2"), Priority::High, peer, None);
        queue.push_control_after(Bytes::from_static(b"down"), Waits::For(&[peer]));
        let mut frames = Vec::new();
        rx.recv_many(&mut frames, 64, usize::MAX).await;
        let order: Vec<Outgoing> = ["notice", "m1", "m2", "down", "other"]
            .map(|f| encoded(f.as_bytes()))
            .to_vec();
        assert_eq!(frames, order);
    }

    #[test]
    fn eight_senders_at_once_past_the_soft_limit_do_not_get_the_receiver_kicked() {
        const MIB: usize = 1 << 20;
        let max_frame = MIB + (64 << 10);
        let (queue, _rx) = OutboundQueue::new(8 * MIB, max_frame, SLOW);
        // A 1 MiB message's frame: the payload and its headers.
        let message = || Outgoing::Encoded(Bytes::from(vec![0; MIB + 32]));
        // The receiver is just under its soft limit.
        let almost = Outgoing::Encoded(Bytes::from(vec![0; 8 * MIB - 1]));
        queue.push_data(almost, Priority::Medium, HostId::from_raw(1), None);
        // Eight members send 1 MiB each at once: each pauses after its push, and the
        // receiver stays: the hard limit was twice the soft one (16 MiB), passed here.
        for sender in 2..10 {
            let fill = queue.push_data(message(), Priority::Medium, HostId::from_raw(sender), None);
            assert_eq!(fill, Fill::Backlogged, "sender {sender}");
        }
        assert!(
            queue.queued_bytes() > 2 * 8 * MIB,
            "past what was the hard limit"
        );
        // One sender that keeps pushing (it should have paused) still meets a hard limit.
        let mut fill = Fill::Backlogged;
        for _ in 0..32 {
            fill = queue.push_data(message(), Priority::Medium, HostId::from_raw(2), None);
            if fill == Fill::Overflowing {
                break;
            }
        }
        assert_eq!(fill, Fill::Overflowing);
    }

    #[tokio::test]
    async fn the_allowance_over_the_soft_limit_is_spent_across_bursts() {
        let (queue, mut rx) = OutboundQueue::new(10, 5, Duration::from_millis(300));
        assert_eq!(queue.backlog_allowance(), Duration::from_millis(300));
        assert_eq!(data(&queue, b"123456789012"), Fill::Backlogged);
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Back under for a moment: the time spent is not given back at once.
        let mut frames = Vec::new();
        rx.recv_many(&mut frames, 1, usize::MAX).await;
        rx.written(frames[0].len());
        assert!(queue.backlog_allowance() <= Duration::from_millis(150));
        assert_eq!(data(&queue, b"123456789012"), Fill::Backlogged);
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(
            queue.backlog_allowance(),
            Duration::ZERO,
            "a slow consumer now"
        );
    }
}

#[cfg(test)]
mod outgoing_tests {
    use super::*;
    use peergroup_protocol::{frame_to_bytes, Lane, DEFAULT_MAX_FRAME_LEN};

    #[test]
    fn a_relayed_message_is_written_as_its_encoded_frame_would_be() {
        let frame = DeliverFrame {
            from: HostId::from_raw(9),
            group: None,
            lane: Lane::Ordered { channel: 1 },
            seq: 42,
            payload: Bytes::from_static(b"position"),
        };
        let expected = frame_to_bytes(&frame.message(), DEFAULT_MAX_FRAME_LEN).unwrap();
        let outgoing = Outgoing::Deliver(frame);
        assert_eq!(outgoing.len(), expected.len());
        let mut out = BytesMut::new();
        outgoing.write_to(&mut out, DEFAULT_MAX_FRAME_LEN).unwrap();
        Outgoing::Encoded(Bytes::from_static(b"next"))
            .write_to(&mut out, DEFAULT_MAX_FRAME_LEN)
            .unwrap();
        assert_eq!(&out[..expected.len()], &expected[..]);
        assert_eq!(&out[expected.len()..], b"next");
    }
}
