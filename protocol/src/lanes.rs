//! How a send's options map to a sequence space on the wire, and the counters that number
//! each space.
//!
//! Every pair numbers its messages per lane, separately on each side, and both paths (the
//! relay and the direct connection) carry the same numbers: that is what lets a receiver
//! merge the two paths across a switch without loss, duplicates or reordering.

use crate::messages::{DatagramLane, Delivery, Lane, Priority};
use std::collections::BTreeMap;

/// The channel used when a send names none.
pub const DEFAULT_CHANNEL: u8 = 0;

/// How one message is sent: its [`Delivery`] mode, its channel and its [`Priority`].
///
/// Build it from a mode and adjust it, e.g.
/// `Delivery::ReliableOrdered.on_channel(1).with_priority(Priority::Low)`. A plain
/// `Delivery` converts into the defaults: channel 0, [`Priority::Medium`].
///
/// Channels (ENet's channels, Steam's lanes) are independent ordered streams: ordering
/// holds per (pair, channel), so a gap in one never holds back another. They matter for
/// [`Delivery::ReliableOrdered`] and [`Delivery::UnreliableSequenced`]; the other modes
/// ignore them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SendOptions {
    /// The mode. No default: every send names one.
    pub delivery: Delivery,
    /// The channel, 0 to 255. Default 0.
    pub channel: u8,
    /// Where the message goes in send queues. Default [`Priority::Medium`].
    pub priority: Priority,
}

impl SendOptions {
    /// The same options on `channel`.
    pub fn on_channel(self, channel: u8) -> Self {
        Self { channel, ..self }
    }

    /// The same options at `priority`.
    pub fn with_priority(self, priority: Priority) -> Self {
        Self { priority, ..self }
    }

    /// Where the message travels: a stream lane or a datagram lane.
    pub fn carrier(&self) -> Carrier {
        match self.delivery {
            Delivery::ReliableOrdered => Carrier::Stream(Lane::Ordered {
                channel: self.channel,
            }),
            Delivery::ReliableUnordered => Carrier::Stream(Lane::Unordered),
            Delivery::Latest { key } => Carrier::Stream(Lane::Latest { key }),
            Delivery::Unreliable => Carrier::Datagram(DatagramLane::Plain),
            Delivery::UnreliableSequenced => Carrier::Datagram(DatagramLane::Sequenced {
                channel: self.channel,
            }),
        }
    }
}

impl From<Delivery> for SendOptions {
    fn from(delivery: Delivery) -> Self {
        Self {
            delivery,
            channel: DEFAULT_CHANNEL,
            priority: Priority::Medium,
        }
    }
}

impl Delivery {
    /// This mode on `channel`, at the default priority.
    pub fn on_channel(self, channel: u8) -> SendOptions {
        SendOptions::from(self).on_channel(channel)
    }

    /// This mode at `priority`, on the default channel.
    pub fn with_priority(self, priority: Priority) -> SendOptions {
        SendOptions::from(self).with_priority(priority)
    }
}

/// Where a message travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Carrier {
    /// On the connection's stream, retransmitted until it arrives.
    Stream(Lane),
    /// In a QUIC datagram (RFC 9221), never retransmitted.
    Datagram(DatagramLane),
}

impl Lane {
    /// The [`Delivery`] this lane carries.
    pub fn delivery(self) -> Delivery {
        match self {
            Lane::Ordered { .. } => Delivery::ReliableOrdered,
            Lane::Unordered => Delivery::ReliableUnordered,
            Lane::Latest { key } => Delivery::Latest { key },
        }
    }

    /// The key under which a queued, unsent message may be replaced by a newer one.
    pub fn latest_key(self) -> Option<u64> {
        match self {
            Lane::Latest { key } => Some(key),
            _ => None,
        }
    }

    /// The channel receivers report: the ordered channel, or 0 for modes without channels.
    pub fn channel(self) -> u8 {
        match self {
            Lane::Ordered { channel } => channel,
            Lane::Unordered | Lane::Latest { .. } => 0,
        }
    }
}

impl DatagramLane {
    /// The [`Delivery`] this lane carries (pings and pongs count as [`Delivery::Unreliable`];
    /// they are never handed to an application).
    pub fn delivery(self) -> Delivery {
        match self {
            DatagramLane::Sequenced { .. } => Delivery::UnreliableSequenced,
            DatagramLane::Plain | DatagramLane::Ping { .. } | DatagramLane::Pong { .. } => {
                Delivery::Unreliable
            }
        }
    }

    /// The channel receivers report: the sequenced channel, or 0.
    pub fn channel(self) -> u8 {
        match self {
            DatagramLane::Sequenced { channel } => channel,
            DatagramLane::Plain | DatagramLane::Ping { .. } | DatagramLane::Pong { .. } => 0,
        }
    }

    /// Whether this is an RTT probe between peers rather than a message.
    pub fn is_probe(self) -> bool {
        matches!(self, DatagramLane::Ping { .. } | DatagramLane::Pong { .. })
    }
}

impl Carrier {
    /// The channel receivers report for a message on this carrier.
    pub fn channel(self) -> u8 {
        match self {
            Carrier::Stream(lane) => lane.channel(),
            Carrier::Datagram(lane) => lane.channel(),
        }
    }
}

/// The next sequence number of each lane, for one direction of one pair (or of the server
/// application towards one client). Numbers start at 1; plain datagrams and pings carry 0.
///
/// Memory: one entry per channel actually used, so at most 256 per kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LaneCounters {
    ordered: BTreeMap<u8, u64>,
    sequenced: BTreeMap<u8, u64>,
    unordered: u64,
    latest: u64,
}

impl LaneCounters {
    /// Takes the next number of a stream lane. All [`Lane::Latest`] keys share one
    /// counter, so numbers of different keys compare too.
    pub fn next(&mut self, lane: Lane) -> u64 {
        let counter = match lane {
            Lane::Ordered { channel } => self.ordered.entry(channel).or_insert(0),
            Lane::Unordered => &mut self.unordered,
            Lane::Latest { .. } => &mut self.latest,
        };
        *counter += 1;
        *counter
    }

    /// Takes the next number of a datagram lane (0 for lanes that are not numbered).
    pub fn next_datagram(&mut self, lane: DatagramLane) -> u64 {
        match lane {
            DatagramLane::Sequenced { channel } => {
                let counter = self.sequenced.entry(channel).or_insert(0);
                *counter += 1;
                *counter
            }
            DatagramLane::Plain | DatagramLane::Ping { .. } | DatagramLane::Pong { .. } => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_lane_counts_from_one_on_its_own() {
        let mut counters = LaneCounters::default();
        let ordered = |channel| Lane::Ordered { channel };
        assert_eq!(counters.next(ordered(0)), 1);
        assert_eq!(counters.next(ordered(0)), 2);
        assert_eq!(counters.next(ordered(7)), 1);
        assert_eq!(counters.next(Lane::Unordered), 1);
        assert_eq!(counters.next(Lane::Latest { key: 5 }), 1);
        // Latest keys share one counter, so their numbers order all keys.
        assert_eq!(counters.next(Lane::Latest { key: 9 }), 2);
        let sequenced = DatagramLane::Sequenced { channel: 0 };
        assert_eq!(counters.next_datagram(sequenced), 1);
        assert_eq!(counters.next_datagram(sequenced), 2);
        assert_eq!(counters.next_datagram(DatagramLane::Plain), 0);
        assert_eq!(counters.next(ordered(0)), 3);
    }

    #[test]
    fn options_map_to_their_carrier() {
        let options = Delivery::ReliableOrdered
            .on_channel(3)
            .with_priority(Priority::High);
        assert_eq!(options.channel, 3);
        assert_eq!(options.priority, Priority::High);
        assert_eq!(
            options.carrier(),
            Carrier::Stream(Lane::Ordered { channel: 3 })
        );
        assert_eq!(
            SendOptions::from(Delivery::UnreliableSequenced)
                .on_channel(2)
                .carrier(),
            Carrier::Datagram(DatagramLane::Sequenced { channel: 2 })
        );
        // Channels mean nothing to the unordered modes.
        assert_eq!(
            Delivery::Unreliable.on_channel(9).carrier(),
            Carrier::Datagram(DatagramLane::Plain)
        );
        assert_eq!(
            Delivery::Latest { key: 4 }.on_channel(9).carrier(),
            Carrier::Stream(Lane::Latest { key: 4 })
        );
        // Receivers report channel 0 for modes without channels, whatever the send named.
        assert_eq!(
            Delivery::Latest { key: 4 }
                .on_channel(9)
                .carrier()
                .channel(),
            0
        );
        assert_eq!(
            Delivery::ReliableOrdered.on_channel(9).carrier().channel(),
            9
        );
        assert_eq!(
            Delivery::UnreliableSequenced
                .on_channel(5)
                .carrier()
                .channel(),
            5
        );
        assert_eq!(DatagramLane::Ping { id: 1 }.channel(), 0);
        assert!(DatagramLane::Pong { id: 1 }.is_probe());
        assert!(!DatagramLane::Plain.is_probe());
        assert_eq!(
            DatagramLane::Sequenced { channel: 1 }.delivery(),
            Delivery::UnreliableSequenced
        );
        assert_eq!(DatagramLane::Plain.delivery(), Delivery::Unreliable);
        let default = SendOptions::from(Delivery::ReliableUnordered);
        assert_eq!((default.channel, default.priority), (0, Priority::Medium));
    }
}
