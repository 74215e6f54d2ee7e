//! What every client sent and received, and the delivery guarantees checked on arrival.
//!
//! Payloads are `[lane][seq: u64 LE]` and padding; a sender numbers each lane from 1.

use peergroup_client::{GroupId, HostId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

/// Payload bytes of every soak message.
pub const PAYLOAD: usize = 48;

/// The streams a client numbers on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lane {
    /// Reliable ordered, channel 0, to the stable group.
    Ordered0,
    /// Reliable ordered, channel 1, to the stable group.
    Ordered1,
    /// Reliable unordered, to the stable group.
    Unordered,
    /// Unreliable sequenced, to the stable group.
    Sequenced,
    /// Latest value (key 0), to the stable group.
    Latest,
    /// Unreliable, to the stable group.
    Unreliable,
    /// Reliable ordered, channel 2, to a churn group (numbered per group).
    Churn,
}

impl Lane {
    pub const ALL: [Lane; 7] = [
        Lane::Ordered0,
        Lane::Ordered1,
        Lane::Unordered,
        Lane::Sequenced,
        Lane::Latest,
        Lane::Unreliable,
        Lane::Churn,
    ];
    /// Lanes to the stable group that must deliver everything exactly once.
    pub const RELIABLE: [Lane; 3] = [Lane::Ordered0, Lane::Ordered1, Lane::Unordered];

    fn index(self) -> usize {
        self as usize
    }

    fn from_byte(byte: u8) -> Option<Lane> {
        Lane::ALL.get(usize::from(byte)).copied()
    }
}

/// Encodes a soak payload.
pub fn payload(lane: Lane, seq: u64) -> bytes::Bytes {
    let mut out = vec![0u8; PAYLOAD];
    out[0] = lane.index() as u8;
    out[1..9].copy_from_slice(&seq.to_le_bytes());
    out.into()
}

/// Decodes a soak payload.
pub fn parse(payload: &[u8]) -> Option<(Lane, u64)> {
    let lane = Lane::from_byte(*payload.first()?)?;
    let seq = u64::from_le_bytes(payload.get(1..9)?.try_into().ok()?);
    Some((lane, seq))
}

/// Guarantees broken, counted by receivers.
#[derive(Debug, Default, Clone, Copy)]
pub struct Violations {
    /// A reliable message delivered twice.
    pub duplicates: u64,
    /// A reliable ordered message delivered after a later one.
    pub out_of_order: u64,
    /// A sequenced or latest value delivered after a newer one.
    pub stale: u64,
    /// A churn-group message delivered twice or after a later one of its sender.
    pub churn_reordered: u64,
    /// A message that did not parse, or came from a host that is not a client here.
    pub foreign: u64,
}

impl Violations {
    fn add(&mut self, other: &Violations) {
        self.duplicates += other.duplicates;
        self.out_of_order += other.out_of_order;
        self.stale += other.stale;
        self.churn_reordered += other.churn_reordered;
        self.foreign += other.foreign;
    }
}

/// One sender's stream as one receiver saw it.
#[derive(Debug, Default)]
struct Stream {
    /// The highest number delivered.
    last: u64,
    /// Messages delivered (duplicates not counted).
    delivered: u64,
    /// Numbers delivered, for lanes without order (bit n-1 for number n).
    seen: Vec<u64>,
}

impl Stream {
    /// Marks `seq` seen; false if it already was.
    fn first_sight(&mut self, seq: u64) -> bool {
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if self.seen.len() <= word {
            self.seen.resize(word + 1, 0);
        }
        let fresh = self.seen[word] & (1 << bit) == 0;
        self.seen[word] |= 1 << bit;
        fresh
    }
}

/// One client's arrivals.
#[derive(Debug, Default)]
pub struct Inbox {
    /// By (sender index, lane); churn messages by (sender index, group) in `churn`.
    streams: HashMap<(usize, Lane), Stream>,
    churn: HashMap<(usize, Option<GroupId>), u64>,
    /// The other members of this client's stable group, once it formed.
    pub stable_peers: Vec<usize>,
    pub violations: Violations,
    pub delivered: u64,
}

impl Inbox {
    /// Checks one arrival from client `sender` to `group`.
    pub fn on_message(&mut self, sender: usize, group: Option<GroupId>, lane: Lane, seq: u64) {
        self.delivered += 1;
        if lane == Lane::Churn {
            let last = self.churn.entry((sender, group)).or_default();
            // Gaps are allowed (the receiver was out of the group), going back is not.
            if seq <= *last {
                self.violations.churn_reordered += 1;
            } else {
                *last = seq;
            }
            return;
        }
        let stream = self.streams.entry((sender, lane)).or_default();
        match lane {
            Lane::Ordered0 | Lane::Ordered1 => {
                if seq <= stream.last {
                    self.violations.duplicates += 1;
                    return;
                }
                if seq != stream.last + 1 {
                    self.violations.out_of_order += 1;
                }
                stream.last = seq;
            }
            Lane::Unordered | Lane::Unreliable => {
                if !stream.first_sight(seq) {
                    self.violations.duplicates += 1;
                    return;
                }
            }
            Lane::Sequenced | Lane::Latest => {
                if seq <= stream.last {
                    self.violations.stale += 1;
                    return;
                }
                stream.last = seq;
            }
            Lane::Churn => {}
        }
        stream.delivered += 1;
    }

    /// Messages delivered from `sender` on `lane`.
    pub fn delivered_from(&self, sender: usize, lane: Lane) -> u64 {
        self.streams.get(&(sender, lane)).map_or(0, |s| s.delivered)
    }

    pub fn foreign(&mut self) {
        self.violations.foreign += 1;
    }
}

/// The whole population's books.
pub struct Ledger {
    /// Messages each client sent to its stable group, by `client * lanes + lane`.
    sent: Vec<AtomicU64>,
    /// Which client each host is.
    hosts: RwLock<HashMap<HostId, usize>>,
    inboxes: Vec<Mutex<Inbox>>,
}

/// A receiver short of a sender's reliable messages: (receiver, sender, lane, sent,
/// delivered).
pub type Gap = (usize, usize, Lane, u64, u64);

/// The totals at one moment.
#[derive(Debug, Default, Clone, Copy)]
pub struct Totals {
    /// Reliable messages to stable groups, counted once per receiver.
    pub reliable_expected: u64,
    pub reliable_delivered: u64,
    /// Reliable messages to stable groups not (yet) delivered.
    pub reliable_missing: u64,
    pub delivered: u64,
    pub violations: Violations,
}

impl Ledger {
    pub fn new(clients: usize) -> Self {
        Self {
            sent: (0..clients * Lane::ALL.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
            hosts: RwLock::new(HashMap::new()),
            inboxes: (0..clients).map(|_| Mutex::new(Inbox::default())).collect(),
        }
    }

    pub fn register(&self, host: HostId, client: usize) {
        self.hosts
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(host, client);
    }

    pub fn client_of(&self, host: HostId) -> Option<usize> {
        self.hosts
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&host)
            .copied()
    }

    /// Records that `client` sent message number `seq` on `lane` to its stable group.
    pub fn sent(&self, client: usize, lane: Lane, seq: u64) {
        self.sent[client * Lane::ALL.len() + lane.index()].store(seq, Ordering::Relaxed);
    }

    fn sent_on(&self, client: usize, lane: Lane) -> u64 {
        self.sent[client * Lane::ALL.len() + lane.index()].load(Ordering::Relaxed)
    }

    pub fn inbox(&self, client: usize) -> std::sync::MutexGuard<'_, Inbox> {
        self.inboxes[client]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Every receiver against every stable-group sender's count.
    pub fn totals(&self) -> Totals {
        let mut totals = Totals::default();
        for receiver in 0..self.inboxes.len() {
            let inbox = self.inbox(receiver);
            totals.delivered += inbox.delivered;
            totals.violations.add(&inbox.violations);
            for &sender in &inbox.stable_peers {
                for lane in Lane::RELIABLE {
                    let sent = self.sent_on(sender, lane);
                    let delivered = inbox.delivered_from(sender, lane);
                    totals.reliable_expected += sent;
                    totals.reliable_delivered += delivered.min(sent);
                    totals.reliable_missing += sent.saturating_sub(delivered);
                }
            }
        }
        totals
    }

    /// Receivers still missing reliable messages from their stable group, and for up to
    /// `limit` of them, spread over the population, one (receiver, sender, lane, sent,
    /// delivered) each: for the report of a failed run.
    pub fn missing(&self, limit: usize) -> (usize, Vec<Gap>) {
        let mut found = Vec::new();
        for receiver in 0..self.inboxes.len() {
            let inbox = self.inbox(receiver);
            let first_gap = inbox.stable_peers.iter().find_map(|&sender| {
                Lane::RELIABLE.into_iter().find_map(|lane| {
                    let sent = self.sent_on(sender, lane);
                    let delivered = inbox.delivered_from(sender, lane);
                    (delivered < sent).then_some((receiver, sender, lane, sent, delivered))
                })
            });
            found.extend(first_gap);
        }
        let receivers = found.len();
        let step = receivers.div_ceil(limit.max(1)).max(1);
        (receivers, found.into_iter().step_by(step).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_inbox_counts_each_broken_guarantee() {
        let mut inbox = Inbox::default();
        for seq in [1, 2, 2, 4, 3] {
            inbox.on_message(7, None, Lane::Ordered0, seq);
        }
        // 2 again and 3 after 4 are duplicates of what the stream already passed; 4 after
        // 2 skipped one.
        assert_eq!(inbox.violations.duplicates, 2);
        assert_eq!(inbox.violations.out_of_order, 1);
        assert_eq!(inbox.delivered_from(7, Lane::Ordered0), 3);
        for seq in [3, 1, 3] {
            inbox.on_message(7, None, Lane::Unordered, seq);
        }
        assert_eq!(inbox.violations.duplicates, 3);
        for seq in [5, 4] {
            inbox.on_message(7, None, Lane::Latest, seq);
        }
        assert_eq!(inbox.violations.stale, 1);
        for seq in [1, 5, 5] {
            inbox.on_message(7, None, Lane::Churn, seq);
        }
        assert_eq!(inbox.violations.churn_reordered, 1);
    }

    #[test]
    fn payloads_round_trip() {
        for lane in Lane::ALL {
            assert_eq!(parse(&payload(lane, 123_456)), Some((lane, 123_456)));
        }
        assert_eq!(parse(&[200, 0]), None);
    }
}
