//! What one peer's direct connection keeps so that no reliable message is lost on it,
//! sans-IO: the sender's side (each data frame's id, the messages kept until the peer
//! acks them, the order they left the direct queue, when each was dated for the ack
//! timeout) and the receiver's side (data frames taken in, and when an ack is due).
//!
//! [`Session`](super::Session) holds one per peer and starts it afresh when a direct
//! connection comes up (acks count the frames of one connection). The driver only tells
//! it what happened, with `now`: which frames left the queue, which were replaced in it,
//! what the peer acked.
//!
//! Why the order frames left is reported rather than decided here: the direct queue
//! schedules by priority and replaces queued latest values, so only the writer that takes
//! frames out knows their order. It logs the ids it takes (under the queue's own lock, in
//! the order it takes them), and the driver hands that log over before each ack it hands
//! in ([`DirectReliability::handle_left_queue`]). An ack of `n` frames can only arrive
//! after those `n` frames were written, so the log handed over then always covers them;
//! handing it over lazily costs no extra lock per write batch.

use bytes::Bytes;
use peergroup_protocol::{GroupId, Lane, Priority};
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// Acknowledge after this many direct data frames at once, without waiting for
/// [`ACK_DELAY`]: a fast sender hears back before its window fills.
const ACK_EVERY: u64 = 32;
/// How long after the first unacked direct data frame arrived an ack goes out at the
/// latest, ms: a quiet sender still hears back soon. 20 ms, the period of the ack ticker
/// this deadline replaced, so acks are never later than they were.
pub(crate) const ACK_DELAY: Duration = Duration::from_millis(20);
/// How long after its send a direct message is dated at the latest, ms, for the ack
/// timeout. Dating happens on a timer run ([`super::Session::handle_timeout`]) rather
/// than at each send, so a send never reads the clock; at most one extra run per this
/// period while sends go on.
pub(crate) const DATING_DELAY: Duration = Duration::from_millis(20);

/// A reliable message sent direct, kept until the peer acks it: what it takes to send it
/// again through the relay, under the same lane and number, if the direct path dies.
#[derive(Debug)]
pub(crate) struct Unacked {
    /// The group it was sent to, if any.
    pub group: Option<GroupId>,
    /// Its lane, and its number in that lane for this pair.
    pub lane: Lane,
    pub seq: u64,
    /// The message.
    pub payload: Bytes,
    /// Its priority, kept on the relay too.
    pub priority: Priority,
    /// When a timer run first saw it (at most [`DATING_DELAY`] after its send); the ack
    /// timeout runs from here.
    seen_at: Option<Instant>,
}

/// One peer's direct-path reliability state, both ways.
#[derive(Debug)]
pub(crate) struct DirectReliability {
    /// Reliable messages sent direct, by frame id (ids grow in send order), kept until
    /// the peer acks them, to be sent again through the relay if the direct path dies
    /// first.
    unacked: BTreeMap<u64, Unacked>,
    /// Payload bytes in `unacked`.
    unacked_bytes: usize,
    /// The id of the next direct data frame; never reset, so ids stay unique across
    /// connections.
    next_frame_id: u64,
    /// Frames up to this id have been dated (or are gone).
    dated_upto: u64,
    /// Ids of tracked frames in the order they left the direct queue and not yet acked:
    /// an ack of `n` more frames means the first `n` of these.
    left_queue: VecDeque<u64>,
    /// Data frames of this connection the peer has acked.
    acked_by_peer: u64,
    /// Data frames received on this connection.
    received: u64,
    /// The last count this client acked to the peer.
    acked_to_peer: u64,
    /// When the frames received since the last ack must be acked; `None` while all are.
    ack_due_at: Option<Instant>,
}

impl DirectReliability {
    /// Nothing kept, nothing counted; frame ids from 1.
    pub fn new() -> Self {
        Self {
            unacked: BTreeMap::new(),
            unacked_bytes: 0,
            next_frame_id: 1,
            dated_upto: 0,
            left_queue: VecDeque::new(),
            acked_by_peer: 0,
            received: 0,
            acked_to_peer: 0,
            ack_due_at: None,
        }
    }

    /// Starts over for a new direct connection: nothing kept, nothing counted either way;
    /// frame ids go on from where they were.
    pub fn restart(&mut self) {
        *self = Self {
            next_frame_id: self.next_frame_id,
            dated_upto: self.next_frame_id - 1,
            ..Self::new()
        };
    }

    /// Messages kept until the peer acks them.
    pub fn unacked_len(&self) -> usize {
        self.unacked.len()
    }

    /// Payload bytes kept until the peer acks them.
    pub fn unacked_bytes(&self) -> usize {
        self.unacked_bytes
    }

    /// Keeps a reliable message sent direct until it is acked; returns the id its frame
    /// is tracked by in the direct queue.
    pub fn track(
        &mut self,
        group: Option<GroupId>,
        lane: Lane,
        seq: u64,
        payload: Bytes,
        priority: Priority,
    ) -> u64 {
        let id = self.next_frame_id;
        self.next_frame_id += 1;
        self.unacked_bytes += payload.len();
        self.unacked.insert(
            id,
            Unacked {
                group,
                lane,
                seq,
                payload,
                priority,
                seen_at: None,
            },
        );
        id
    }

    /// Forgets the kept frame `id`: a newer latest value replaced it in the queue before
    /// it went out, so it will never be acked (and is not waited on).
    pub fn forget_replaced(&mut self, id: u64) {
        if let Some(gone) = self.unacked.remove(&id) {
            self.unacked_bytes -= gone.payload.len();
        }
    }

    /// The writer took these tracked frames out of the direct queue, in this order.
    pub fn handle_left_queue(&mut self, ids: impl IntoIterator<Item = u64>) {
        self.left_queue.extend(ids);
    }

    /// The peer has taken in the first `received` data frames of the connection: forgets
    /// the frames newly acked, in the order they left the queue. Returns whether anything
    /// was newly acked.
    ///
    /// # Errors
    /// When the peer acks more frames than left the queue; nothing is forgotten then.
    pub fn handle_ack(&mut self, received: u64) -> Result<bool, String> {
        let newly = received.saturating_sub(self.acked_by_peer);
        if newly == 0 {
            return Ok(false);
        }
        let count = usize::try_from(newly)
            .ok()
            .filter(|&n| n <= self.left_queue.len())
            .ok_or_else(|| format!("an ack of {received} messages, more than were sent"))?;
        for id in self.left_queue.drain(..count) {
            if let Some(gone) = self.unacked.remove(&id) {
                self.unacked_bytes -= gone.payload.len();
            }
        }
        self.acked_by_peer = received;
        Ok(true)
    }

    /// Whether some kept message has not been dated yet (it was sent since the last
    /// timer run).
    pub fn has_undated(&self) -> bool {
        self.unacked.range(self.dated_upto + 1..).next().is_some()
    }

    /// Dates every kept message not dated yet at `now`.
    pub fn date(&mut self, now: Instant) {
        for unacked in self
            .unacked
            .range_mut(self.dated_upto + 1..)
            .map(|(_, u)| u)
        {
            unacked.seen_at.get_or_insert(now);
        }
        self.dated_upto = self.next_frame_id - 1;
    }

    /// When the oldest kept message times out, `timeout` after it was dated.
    pub fn unacked_deadline(&self, timeout: Duration) -> Option<Instant> {
        let dated = self.unacked.values().next()?.seen_at?;
        Some(dated + timeout)
    }

    /// Hands over every kept message, oldest first, to go again through the relay; the
    /// direct path is gone. Nothing is owed or due on it any more.
    pub fn take_unacked(&mut self) -> impl Iterator<Item = Unacked> {
        self.unacked_bytes = 0;
        self.left_queue.clear();
        self.ack_due_at = None;
        std::mem::take(&mut self.unacked).into_values()
    }

    /// A data frame arrived on the direct connection at `now`. Returns the count to ack
    /// at once (every [`ACK_EVERY`] frames); otherwise an ack is due [`ACK_DELAY`] after
    /// the first frame not acked yet ([`DirectReliability::ack_due_at`]).
    pub fn handle_data(&mut self, now: Instant) -> Option<u64> {
        self.received += 1;
        if self.received >= self.acked_to_peer + ACK_EVERY {
            return self.take_ack();
        }
        self.ack_due_at.get_or_insert(now + ACK_DELAY);
        None
    }

    /// When an ack is due, if any frames wait for one.
    pub fn ack_due_at(&self) -> Option<Instant> {
        self.ack_due_at
    }

    /// The count to ack if an ack is due at `now`.
    pub fn poll_due_ack(&mut self, now: Instant) -> Option<u64> {
        match self.ack_due_at {
            Some(due) if due <= now => self.take_ack(),
            _ => None,
        }
    }

    /// The count to ack if any frame has not been acked yet, due or not.
    pub fn take_ack(&mut self) -> Option<u64> {
        self.ack_due_at = None;
        (self.received > self.acked_to_peer).then(|| {
            self.acked_to_peer = self.received;
            self.received
        })
    }

    /// The ids of the kept messages not reported as gone out of the queue, in send
    /// order.
    #[cfg(test)]
    pub fn unreported_ids(&self) -> Vec<u64> {
        self.unacked
            .keys()
            .copied()
            .filter(|id| !self.left_queue.contains(id))
            .collect()
    }
}
