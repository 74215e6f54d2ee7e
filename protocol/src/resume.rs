//! Session resume: the token a client comes back with, and the bookkeeping that makes a
//! resume lose and duplicate nothing.
//!
//! QUIC stream data in flight on a connection that dies is lost, so each side counts the
//! frames it has read from the other's main stream since login ([`Confirmer`]) and
//! confirms the count now and then ([`crate::ClientToServer::Received`],
//! [`crate::ServerToClient::Received`]); each side keeps the frames it wrote and the other
//! has not confirmed ([`Unconfirmed`], bounded in frames and bytes). On a resume each side
//! says how many it read and the other sends the rest again, in order, before anything
//! new, so the stream simply continues.

use bytes::{Buf, Bytes};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// A confirmation goes out at most this long after the first frame it covers was read:
/// 100 ms. What a side keeps unconfirmed is about its peer's round trip plus this.
pub const CONFIRM_DELAY: Duration = Duration::from_millis(100);

/// A confirmation goes out at once when this many frames were read since the last one
/// (256), so a fast stream is confirmed more often than every [`CONFIRM_DELAY`]; one small
/// frame per 256 leaves the relay's per-message cost as it was.
pub const CONFIRM_EVERY: u64 = 256;

/// Default frames kept unconfirmed per side of a session: 65,536.
pub const DEFAULT_MAX_UNCONFIRMED_FRAMES: u64 = 1 << 16;

/// Default bytes kept unconfirmed per side of a session: 8 MiB.
pub const DEFAULT_MAX_UNCONFIRMED_BYTES: usize = 8 << 20;

/// A resume token: 32 random bytes, single use. Its `Debug` output leaves the bytes out,
/// so logging one never leaks it.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumeToken(pub [u8; 32]);

impl ResumeToken {
    /// Compares in time independent of where the tokens differ, so a guesser learns
    /// nothing from how long a refusal took.
    pub fn matches(&self, other: &ResumeToken) -> bool {
        self.0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl std::fmt::Debug for ResumeToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResumeToken(<redacted>)")
    }
}

/// A resume cannot go on: the other side needs frames this side no longer holds (it
/// kept more than its bound, and dropped the oldest), or claims more than were sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplayGap {
    /// Frames from `needed` on are asked for, but only those from `kept_from` are held.
    #[error("frames from {needed} are needed, but only those from {kept_from} are kept")]
    Dropped {
        /// The first frame the other side has not read.
        needed: u64,
        /// The first frame still held.
        kept_from: u64,
    },
    /// The other side claims `claimed` frames, but only `sent` were sent.
    #[error("{claimed} frames confirmed, but only {sent} were sent")]
    BeyondSent {
        /// What the other side claimed.
        claimed: u64,
        /// Frames sent.
        sent: u64,
    },
}

#[derive(Debug)]
struct Batch {
    /// The number (from 0) of its first frame.
    first: u64,
    frames: u64,
    /// Whole frames, length prefixes included, as written.
    bytes: Bytes,
}

/// The frames one side wrote to its main stream that the other has not confirmed, kept
/// per written batch (one `Bytes` each, shared with what was handed to QUIC).
///
/// Bounded by a number of frames and of bytes: past either, the oldest batches are
/// dropped, and a resume that would need them fails with [`ReplayGap::Dropped`] (the
/// session then ends as if it could not resume).
#[derive(Debug)]
pub struct Unconfirmed {
    batches: VecDeque<Batch>,
    /// Frames written since login.
    sent: u64,
    /// Every frame from this number to `sent` is held.
    kept_from: u64,
    /// Frames and bytes held.
    frames: u64,
    bytes: usize,
    max_frames: u64,
    max_bytes: usize,
    /// Off: nothing is held, only counted (resume is off).
    enabled: bool,
}

impl Unconfirmed {
    /// An empty buffer holding at most `max_frames` frames and `max_bytes` bytes; a
    /// disabled one holds nothing.
    pub fn new(max_frames: u64, max_bytes: usize, enabled: bool) -> Self {
        Self {
            batches: VecDeque::new(),
            sent: 0,
            kept_from: 0,
            frames: 0,
            bytes: 0,
            max_frames,
            max_bytes,
            enabled,
        }
    }

    /// Whether frames are held (resume is on).
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// Stops holding frames, and forgets those held: the other side does not resume.
    pub fn disable(&mut self) {
        self.enabled = false;
        self.batches.clear();
        self.frames = 0;
        self.bytes = 0;
        self.kept_from = self.sent;
    }

    /// Frames written since login.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Records a batch of `frames` whole frames, `bytes`, as written (before it is handed
    /// to the stream, so a batch the stream fails on is still held).
    pub fn record(&mut self, frames: u64, bytes: Bytes) {
        let first = self.sent;
        self.sent += frames;
        if !self.enabled {
            self.kept_from = self.sent;
            return;
        }
        self.frames += frames;
        self.bytes += bytes.len();
        self.batches.push_back(Batch {
            first,
            frames,
            bytes,
        });
        while self.frames > self.max_frames || self.bytes > self.max_bytes {
            let Some(oldest) = self.batches.pop_front() else {
                break;
            };
            self.frames -= oldest.frames;
            self.bytes -= oldest.bytes.len();
            self.kept_from = oldest.first + oldest.frames;
        }
    }

    /// The other side has read the first `count` frames: forgets the batches they cover
    /// whole.
    ///
    /// # Errors
    /// [`ReplayGap::BeyondSent`] when `count` is more than was sent (nothing changes).
    pub fn confirm(&mut self, count: u64) -> Result<(), ReplayGap> {
        if count > self.sent {
            return Err(ReplayGap::BeyondSent {
                claimed: count,
                sent: self.sent,
            });
        }
        while let Some(oldest) = self.batches.front() {
            if oldest.first + oldest.frames > count {
                break;
            }
            self.frames -= oldest.frames;
            self.bytes -= oldest.bytes.len();
            self.kept_from = oldest.first + oldest.frames;
            self.batches.pop_front();
        }
        self.kept_from = self.kept_from.max(count.min(self.sent));
        Ok(())
    }

    /// The frames from number `received` on, in order, to write again on a new
    /// connection (whole batches, the first one cut at a frame boundary). They stay held
    /// until confirmed.
    ///
    /// # Errors
    /// [`ReplayGap`] when `received` is more than was sent, or frames from it were
    /// dropped; nothing changes then.
    pub fn replay_from(&mut self, received: u64) -> Result<Vec<Bytes>, ReplayGap> {
        if received > self.sent {
            return Err(ReplayGap::BeyondSent {
                claimed: received,
                sent: self.sent,
            });
        }
        if received < self.kept_from {
            return Err(ReplayGap::Dropped {
                needed: received,
                kept_from: self.kept_from,
            });
        }
        self.confirm(received)?;
        let mut out = Vec::with_capacity(self.batches.len());
        for batch in &self.batches {
            if batch.first >= received {
                out.push(batch.bytes.clone());
                continue;
            }
            // Skip the frames already read: each is a length prefix and its body.
            let mut offset = 0usize;
            for _ in batch.first..received {
                let mut prefix = batch.bytes.get(offset..offset + 4).unwrap_or(&[]);
                if prefix.len() < 4 {
                    // Not whole frames: nothing held can be trusted to replay.
                    return Err(ReplayGap::Dropped {
                        needed: received,
                        kept_from: self.sent,
                    });
                }
                offset += 4 + prefix.get_u32() as usize;
            }
            if offset < batch.bytes.len() {
                out.push(batch.bytes.slice(offset..));
            }
        }
        Ok(out)
    }
}

/// Counts the frames one side read from the other's main stream and says when to confirm
/// them: [`CONFIRM_EVERY`] frames after the last confirmation at once, otherwise
/// [`CONFIRM_DELAY`] after the first unconfirmed one (sans-IO: the caller passes `now` and
/// sleeps on [`Confirmer::poll_timeout`]).
#[derive(Debug, Default, Clone)]
pub struct Confirmer {
    read: u64,
    confirmed: u64,
    due: Option<Instant>,
}

impl Confirmer {
    /// A counter that has read `read` frames already (and confirmed none).
    pub fn new(read: u64) -> Self {
        Self {
            read,
            confirmed: 0,
            due: None,
        }
    }

    /// Frames read so far.
    pub fn read(&self) -> u64 {
        self.read
    }

    /// One more frame read at `now`; `true` when a confirmation is due at once (take it
    /// with [`Confirmer::take`]).
    pub fn on_read(&mut self, now: Instant) -> bool {
        self.read += 1;
        if self.read - self.confirmed >= CONFIRM_EVERY {
            return true;
        }
        if self.due.is_none() {
            self.due = Some(now + CONFIRM_DELAY);
        }
        false
    }

    /// When a confirmation falls due, if one is pending.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.due
    }

    /// The count to confirm now, if it moved since the last one.
    pub fn take(&mut self) -> Option<u64> {
        self.due = None;
        (self.read > self.confirmed).then(|| {
            self.confirmed = self.read;
            self.read
        })
    }

    /// Sets the count after a resume: the other side resends from here, and what was
    /// confirmed stays so.
    pub fn set_confirmed(&mut self, confirmed: u64) {
        self.confirmed = confirmed;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::frame_to_bytes;
    use crate::messages::ClientToServer;

    fn frames(counts: std::ops::Range<u64>) -> Bytes {
        let mut out = Vec::new();
        for n in counts {
            let frame = frame_to_bytes(&ClientToServer::Ack { notices: n }, 1 << 20).unwrap();
            out.extend_from_slice(&frame);
        }
        Bytes::from(out)
    }

    #[test]
    fn replays_exactly_the_frames_not_read_cutting_a_batch_at_a_frame_boundary() {
        let mut kept = Unconfirmed::new(100, 1 << 20, true);
        kept.record(3, frames(0..3));
        kept.record(2, frames(3..5));
        assert_eq!(kept.sent(), 5);
        let replay = kept.replay_from(1).unwrap();
        let joined: Vec<u8> = replay.iter().flat_map(|b| b.iter().copied()).collect();
        assert_eq!(joined, frames(1..5).to_vec());
        // Still held until confirmed; a confirmation of all forgets all.
        assert_eq!(kept.replay_from(5).unwrap(), Vec::<Bytes>::new());
        kept.confirm(5).unwrap();
        assert_eq!(kept.bytes(), 0);
        assert!(matches!(
            kept.confirm(6),
            Err(ReplayGap::BeyondSent {
                claimed: 6,
                sent: 5
            })
        ));
    }

    #[test]
    fn past_its_bound_the_oldest_frames_go_and_a_resume_that_needs_them_fails() {
        let mut kept = Unconfirmed::new(4, 1 << 20, true);
        kept.record(3, frames(0..3));
        kept.record(3, frames(3..6));
        assert_eq!(
            kept.replay_from(0),
            Err(ReplayGap::Dropped {
                needed: 0,
                kept_from: 3
            })
        );
        assert!(kept.replay_from(4).is_ok());
        let mut off = Unconfirmed::new(4, 1 << 20, false);
        off.record(2, frames(0..2));
        assert_eq!(off.bytes(), 0);
        assert!(off.replay_from(1).is_err());
        assert!(off.replay_from(2).is_ok());
    }

    #[test]
    fn confirms_after_the_delay_or_at_once_after_many_frames() {
        let start = Instant::now();
        let mut counter = Confirmer::new(1);
        assert!(!counter.on_read(start));
        assert_eq!(counter.poll_timeout(), Some(start + CONFIRM_DELAY));
        assert_eq!(counter.take(), Some(2));
        assert_eq!(counter.poll_timeout(), None);
        let mut due_now = false;
        for _ in 0..CONFIRM_EVERY {
            due_now = counter.on_read(start);
        }
        assert!(due_now);
        assert_eq!(counter.take(), Some(2 + CONFIRM_EVERY));
        assert_eq!(counter.take(), None);
    }

    #[test]
    fn tokens_compare_whole() {
        let a = ResumeToken([7; 32]);
        let mut b = a;
        assert!(a.matches(&b));
        b.0[31] ^= 1;
        assert!(!a.matches(&b));
        assert_eq!(format!("{a:?}"), "ResumeToken(<redacted>)");
    }
}
