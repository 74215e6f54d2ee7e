//! The receiving side of every lane of one sender: what each delivery mode lets through.
//!
//! Both paths (relay and direct) feed the same [`LaneReceivers`], and the sender numbers
//! each lane once whatever path carries a message, so each mode keeps its guarantee across
//! a path switch:
//! - ordered channels deliver in sequence, holding early arrivals ([`ReliableReceiver`]);
//! - the unordered lane delivers on arrival and drops numbers it has seen;
//! - the latest lane delivers a key's message unless a newer one of that key was delivered;
//! - sequenced datagram channels drop anything not newer than the newest delivered.

use crate::sequencing::{Ready, Rejected, ReliableReceiver, Slot};
use peergroup_protocol::{DatagramLane, Lane};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Keys of [`Lane::Latest`] remembered per sender. Past this, the key delivered longest
/// ago is forgotten, and a later arrival for a forgotten key must be newer than every
/// forgotten one (so an old value can still never follow a newer one).
pub(crate) const MAX_LATEST_KEYS: usize = 65_536;

/// Sequence numbers above the contiguous floor the unordered lane remembers. A sender
/// that leaves more gaps than this open is broken or hostile.
pub(crate) const MAX_UNORDERED_GAPS: usize = 65_536;

/// Every lane of one sender.
#[derive(Debug)]
pub(crate) struct LaneReceivers<T> {
    window: u64,
    ordered: BTreeMap<u8, ReliableReceiver<T>>,
    /// Early arrivals held by all ordered channels, and the bytes charged for them.
    held: usize,
    held_bytes: usize,
    unordered: UnorderedReceiver,
    latest: LatestReceiver,
    sequenced: BTreeMap<u8, u64>,
}

/// What an arrival on a stream lane gave.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Accepted<T> {
    /// These messages are now deliverable, in order (possibly none: held for a gap).
    Deliver(Ready<T>),
    /// Already delivered or held: a copy that came on the other path after a switch.
    Duplicate,
    /// Older than a message already delivered for its key ([`Lane::Latest`]).
    Stale,
}

impl<T> LaneReceivers<T> {
    /// Receivers holding at most `window` numbers ahead of the next due, per channel.
    pub fn new(window: u64) -> Self {
        Self {
            window: window.max(1),
            ordered: BTreeMap::new(),
            held: 0,
            held_bytes: 0,
            unordered: UnorderedReceiver::default(),
            latest: LatestReceiver::default(),
            sequenced: BTreeMap::new(),
        }
    }

    /// Takes slot `seq` of `lane`, whose message is `size` bytes.
    ///
    /// # Errors
    /// [`Rejected::BeyondWindow`] when the number is further ahead than the receiver
    /// holds (the sender broke the protocol); nothing is kept then.
    pub fn accept(
        &mut self,
        lane: Lane,
        seq: u64,
        slot: Slot<T>,
        size: usize,
    ) -> Result<Accepted<T>, Rejected> {
        match lane {
            Lane::Ordered { channel } => {
                let window = self.window;
                let receiver = self
                    .ordered
                    .entry(channel)
                    .or_insert_with(|| ReliableReceiver::new(window));
                let (held, held_bytes) = (receiver.held(), receiver.held_bytes());
                let accepted = receiver.accept(seq, slot, size);
                self.held = self.held - held + receiver.held();
                self.held_bytes = self.held_bytes - held_bytes + receiver.held_bytes();
                match accepted {
                    Ok(ready) => Ok(Accepted::Deliver(ready)),
                    Err(Rejected::Duplicate) => Ok(Accepted::Duplicate),
                    Err(other) => Err(other),
                }
            }
            Lane::Unordered => {
                if !self.unordered.accept(seq, self.window)? {
                    return Ok(Accepted::Duplicate);
                }
                Ok(Accepted::Deliver(match slot {
                    Slot::Message(message) => Ready::from_buf([message]),
                    Slot::Skipped => Ready::new(),
                }))
            }
            Lane::Latest { key } => match slot {
                // Gaps mean nothing here: a skip only says an older value will not come.
                Slot::Skipped => Ok(Accepted::Deliver(Ready::new())),
                Slot::Message(message) if self.latest.accept(key, seq) => {
                    Ok(Accepted::Deliver(Ready::from_buf([message])))
                }
                Slot::Message(_) => Ok(Accepted::Stale),
            },
        }
    }

    /// Whether a datagram numbered `seq` in `lane` is delivered: plain ones always, and
    /// sequenced ones only when newer than every one delivered on their channel.
    pub fn accept_datagram(&mut self, lane: DatagramLane, seq: u64) -> bool {
        match lane {
            DatagramLane::Sequenced { channel } => {
                let newest = self.sequenced.entry(channel).or_insert(0);
                if seq <= *newest {
                    return false;
                }
                *newest = seq;
                true
            }
            DatagramLane::Plain => true,
            DatagramLane::Ping { .. } | DatagramLane::Pong { .. } => false,
        }
    }

    /// Early arrivals held by the ordered channels, waiting for gaps to fill.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Bytes charged for what the ordered channels hold, waiting for gaps to fill
    /// (payloads plus a fixed cost per entry, [`crate::sequencing::HELD_ENTRY_COST`]).
    pub fn held_bytes(&self) -> usize {
        self.held_bytes
    }

    /// Whether `seq` of `lane` would be held rather than delivered at once (it is ahead of
    /// a gap in an ordered channel).
    pub fn is_early(&self, lane: Lane, seq: u64) -> bool {
        match lane {
            Lane::Ordered { channel } => self
                .ordered
                .get(&channel)
                .map_or(seq > 1, |r| seq > r.delivered() + 1),
            _ => false,
        }
    }
}

/// Numbers seen on the unordered lane: everything up to `floor`, and a set above it.
#[derive(Debug, Default)]
struct UnorderedReceiver {
    floor: u64,
    above: BTreeSet<u64>,
}

impl UnorderedReceiver {
    /// Marks `seq` seen; `false` if it was already.
    fn accept(&mut self, seq: u64, window: u64) -> Result<bool, Rejected> {
        if seq <= self.floor || self.above.contains(&seq) {
            return Ok(false);
        }
        if seq - self.floor > window || self.above.len() >= MAX_UNORDERED_GAPS {
            return Err(Rejected::BeyondWindow);
        }
        self.above.insert(seq);
        while self.above.first() == Some(&(self.floor + 1)) {
            self.above.pop_first();
            self.floor += 1;
        }
        Ok(true)
    }
}

/// The newest number delivered per key of the latest lane.
#[derive(Debug, Default)]
struct LatestReceiver {
    by_key: HashMap<u64, u64>,
    /// The same entries ordered by number, to forget the oldest.
    by_seq: BTreeMap<u64, u64>,
    /// Every forgotten key's number was at most this.
    forgotten_up_to: u64,
}

impl LatestReceiver {
    /// Whether the message numbered `seq` for `key` is newer than what was delivered.
    fn accept(&mut self, key: u64, seq: u64) -> bool {
        let newest = self.by_key.get(&key).copied();
        let newer = match newest {
            Some(newest) => seq > newest,
            None => seq > self.forgotten_up_to,
        };
        if !newer {
            return false;
        }
        if let Some(old) = newest {
            self.by_seq.remove(&old);
        }
        self.by_key.insert(key, seq);
        self.by_seq.insert(seq, key);
        while self.by_key.len() > MAX_LATEST_KEYS {
            let Some((oldest_seq, oldest_key)) = self.by_seq.pop_first() else {
                break;
            };
            self.by_key.remove(&oldest_key);
            self.forgotten_up_to = self.forgotten_up_to.max(oldest_seq);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smallvec::smallvec;

    fn message(rx: &mut LaneReceivers<u32>, lane: Lane, seq: u64, m: u32) -> Accepted<u32> {
        rx.accept(lane, seq, Slot::Message(m), 4).unwrap()
    }

    #[test]
    fn ordered_channels_are_independent() {
        let mut rx = LaneReceivers::new(64);
        let ch = |channel| Lane::Ordered { channel };
        // Channel 0 has a gap; channel 1 is not held back by it.
        assert_eq!(
            message(&mut rx, ch(0), 2, 2),
            Accepted::Deliver(smallvec![])
        );
        assert_eq!(
            message(&mut rx, ch(1), 1, 10),
            Accepted::Deliver(smallvec![10])
        );
        assert_eq!(
            message(&mut rx, ch(0), 1, 1),
            Accepted::Deliver(smallvec![1, 2])
        );
        assert_eq!(message(&mut rx, ch(0), 1, 1), Accepted::Duplicate);
        assert!(rx.is_early(ch(1), 3));
        assert!(!rx.is_early(ch(1), 2));
    }

    #[test]
    fn unordered_delivers_at_once_and_drops_duplicates() {
        let mut rx = LaneReceivers::new(64);
        let lane = Lane::Unordered;
        assert_eq!(
            message(&mut rx, lane, 3, 3),
            Accepted::Deliver(smallvec![3])
        );
        assert_eq!(
            message(&mut rx, lane, 1, 1),
            Accepted::Deliver(smallvec![1])
        );
        assert_eq!(message(&mut rx, lane, 3, 3), Accepted::Duplicate);
        assert_eq!(
            message(&mut rx, lane, 2, 2),
            Accepted::Deliver(smallvec![2])
        );
        assert_eq!(message(&mut rx, lane, 1, 1), Accepted::Duplicate);
        // A skip fills its number without a message.
        assert_eq!(
            rx.accept(lane, 4, Slot::Skipped, 0),
            Ok(Accepted::Deliver(smallvec![]))
        );
        assert_eq!(message(&mut rx, lane, 4, 4), Accepted::Duplicate);
        assert_eq!(
            rx.accept(lane, 4 + 65, Slot::Message(0), 4),
            Err(Rejected::BeyondWindow)
        );
    }

    #[test]
    fn unordered_bounds_the_gaps_it_remembers() {
        let mut rx = LaneReceivers::new(u64::MAX);
        // Every other number, so the floor never moves.
        for i in 0..MAX_UNORDERED_GAPS as u64 {
            assert_eq!(
                message(&mut rx, Lane::Unordered, 2 + 2 * i, 0),
                Accepted::Deliver(smallvec![0])
            );
        }
        assert_eq!(
            rx.accept(Lane::Unordered, u64::MAX / 2, Slot::Message(0), 4),
            Err(Rejected::BeyondWindow)
        );
    }

    #[test]
    fn latest_never_goes_back_in_time_per_key() {
        let mut rx = LaneReceivers::new(64);
        let key = |key| Lane::Latest { key };
        assert_eq!(
            message(&mut rx, key(7), 5, 50),
            Accepted::Deliver(smallvec![50])
        );
        // An older value of the same key (say, relayed before a switch) is stale.
        assert_eq!(message(&mut rx, key(7), 3, 30), Accepted::Stale);
        assert_eq!(message(&mut rx, key(7), 5, 50), Accepted::Stale);
        // Other keys are independent of key 7's number.
        assert_eq!(
            message(&mut rx, key(8), 4, 40),
            Accepted::Deliver(smallvec![40])
        );
        assert_eq!(
            message(&mut rx, key(7), 6, 60),
            Accepted::Deliver(smallvec![60])
        );
        assert_eq!(
            rx.accept(key(7), 9, Slot::Skipped, 0),
            Ok(Accepted::Deliver(smallvec![]))
        );
    }

    #[test]
    fn latest_forgets_old_keys_without_letting_old_values_through() {
        let mut latest = LatestReceiver::default();
        for key in 0..=MAX_LATEST_KEYS as u64 {
            assert!(latest.accept(key, key + 1));
        }
        assert_eq!(latest.by_key.len(), MAX_LATEST_KEYS);
        // Key 0 (number 1) was forgotten: an old value for it is still refused...
        assert!(!latest.accept(0, 1));
        // ...and a newer one is taken.
        assert!(latest.accept(0, MAX_LATEST_KEYS as u64 + 5));
    }

    #[test]
    fn sequenced_datagrams_only_move_forward_per_channel() {
        let mut rx = LaneReceivers::<u32>::new(64);
        let ch = |channel| DatagramLane::Sequenced { channel };
        assert!(rx.accept_datagram(ch(0), 2));
        assert!(!rx.accept_datagram(ch(0), 1), "older than delivered");
        assert!(!rx.accept_datagram(ch(0), 2), "a duplicate");
        assert!(rx.accept_datagram(ch(1), 1), "channels are independent");
        assert!(rx.accept_datagram(ch(0), 9));
        assert!(rx.accept_datagram(DatagramLane::Plain, 0));
        assert!(rx.accept_datagram(DatagramLane::Plain, 0));
    }
}
