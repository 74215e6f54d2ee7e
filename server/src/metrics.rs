//! Counters for operators that only the server library can keep: handshake and auth
//! failures, disconnects by cause, relayed traffic by delivery mode, punch attempts and
//! successes, and join and leave ack latencies. They are plain numbers read through
//! [`Server::stats`](crate::Server::stats) ([`ServerStats`](crate::ServerStats)); turning
//! them into Prometheus metrics is the binary's job, so this crate needs no metrics
//! library.
//!
//! Counting costs a relaxed atomic add off the relay path (handshakes, disconnects) or a
//! plain add under the lock the registry already holds (relays, punches, acks).

use crate::events::DisconnectReason;
use peergroup_protocol::Delivery;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Messages and payload bytes relayed in one delivery mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayCount {
    /// Messages relayed, one per delivered destination.
    pub messages: u64,
    /// Payload bytes relayed, counted per delivered destination.
    pub bytes: u64,
}

/// Relayed traffic since start, by [`Delivery`] mode (the relay's work per mode; traffic
/// on direct paths never reaches the server).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayByDelivery {
    /// [`Delivery::ReliableOrdered`].
    pub reliable_ordered: RelayCount,
    /// [`Delivery::ReliableUnordered`].
    pub reliable_unordered: RelayCount,
    /// [`Delivery::Unreliable`].
    pub unreliable: RelayCount,
    /// [`Delivery::UnreliableSequenced`].
    pub unreliable_sequenced: RelayCount,
    /// [`Delivery::Latest`], every key together.
    pub latest: RelayCount,
}

impl RelayByDelivery {
    /// Counts one relayed message of `bytes` payload bytes sent with `delivery`.
    pub(crate) fn add(&mut self, delivery: Delivery, bytes: usize) {
        let count = match delivery {
            Delivery::ReliableOrdered => &mut self.reliable_ordered,
            Delivery::ReliableUnordered => &mut self.reliable_unordered,
            Delivery::Unreliable => &mut self.unreliable,
            Delivery::UnreliableSequenced => &mut self.unreliable_sequenced,
            Delivery::Latest { .. } => &mut self.latest,
            // A mode added to the protocol later is in the totals (`ServerStats::relayed`)
            // until it gets a counter of its own here.
            _ => return,
        };
        count.messages += 1;
        count.bytes += bytes as u64;
    }

    /// Each mode's name as used in logs and metrics labels (`reliable_ordered`, ...), with
    /// its count, in a fixed order.
    pub fn by_name(&self) -> [(&'static str, RelayCount); 5] {
        [
            ("reliable_ordered", self.reliable_ordered),
            ("reliable_unordered", self.reliable_unordered),
            ("unreliable", self.unreliable),
            ("unreliable_sequenced", self.unreliable_sequenced),
            ("latest", self.latest),
        ]
    }
}

/// A latency histogram with fixed buckets: how long joins or leaves took from the call
/// that started them to the last ack ([`ServerEvent::JoinAckComplete`] /
/// [`ServerEvent::LeaveAckComplete`] with `Ok`). Completions that ended otherwise
/// (timeout, member left, disconnect, destroy) are not latencies and are not counted.
///
/// The bucket bounds ([`AckLatency::BOUNDS`]) run from 250 µs (a loopback round trip) to
/// the 15 s default ack timeout, roughly doubling, as Prometheus histograms are usually
/// laid out.
///
/// [`ServerEvent::JoinAckComplete`]: crate::ServerEvent::JoinAckComplete
/// [`ServerEvent::LeaveAckComplete`]: crate::ServerEvent::LeaveAckComplete
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AckLatency {
    /// Completions at or under each bound of [`AckLatency::BOUNDS`] (cumulative, as
    /// Prometheus `le` buckets are); the `+Inf` bucket is `count`.
    pub buckets: [u64; AckLatency::BOUNDS.len()],
    /// Completions counted.
    pub count: u64,
    /// Their latencies added up, microseconds.
    pub sum_us: u64,
}

impl AckLatency {
    /// Upper bounds of the buckets, microseconds.
    pub const BOUNDS: [u64; 14] = [
        250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
        1_000_000, 5_000_000, 15_000_000,
    ];

    /// Counts one completion that took `latency`.
    pub(crate) fn observe(&mut self, latency: Duration) {
        let us = latency.as_micros().min(u128::from(u64::MAX)) as u64;
        for (bucket, bound) in self.buckets.iter_mut().zip(Self::BOUNDS) {
            if us <= bound {
                *bucket += 1;
            }
        }
        self.count += 1;
        self.sum_us = self.sum_us.saturating_add(us);
    }
}

/// Which operation an ack latency sample belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AckKind {
    Join,
    Leave,
}

/// Counters the drivers keep (the registry keeps its own, see `RegistryCounters`).
#[derive(Debug, Default)]
pub(crate) struct DriverCounters {
    /// Incoming connections that ended before the client was admitted (TLS handshake,
    /// hello, auth hook, limits), auth rejections included.
    not_admitted: AtomicU64,
    /// Logins the auth hook rejected.
    auth_rejected: AtomicU64,
    /// Admitted clients closed because their send queue overflowed or stayed backlogged.
    slow_consumer: AtomicU64,
    /// Clients refused at the client limit or while the application's event backlog is
    /// full (counted in `not_admitted` too).
    refused_full: AtomicU64,
    /// Connections refused while the server drained (graceful shutdown).
    refused_draining: AtomicU64,
    /// Connections refused at their first packet by the handshake caps (`admission.rs`).
    admission_refused: AtomicU64,
    /// Connections asked to validate their address (QUIC Retry).
    address_validations: AtomicU64,
    latency: Mutex<(AckLatency, AckLatency)>,
}

impl DriverCounters {
    pub fn not_admitted(&self) {
        self.not_admitted.fetch_add(1, Ordering::Relaxed);
    }

    pub fn auth_rejected(&self) {
        self.auth_rejected.fetch_add(1, Ordering::Relaxed);
    }

    pub fn refused_full(&self) {
        self.refused_full.fetch_add(1, Ordering::Relaxed);
    }

    pub fn refused_draining(&self) {
        self.refused_draining.fetch_add(1, Ordering::Relaxed);
    }

    pub fn admission_refused(&self) {
        self.admission_refused.fetch_add(1, Ordering::Relaxed);
    }

    pub fn address_validation(&self) {
        self.address_validations.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an admitted client's disconnect by its cause.
    pub fn disconnected(&self, reason: &DisconnectReason) {
        if matches!(reason, DisconnectReason::SlowConsumer) {
            self.slow_consumer.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn observe_ack(&self, kind: AckKind, latency: Duration) {
        let mut latency_lock = self
            .latency
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match kind {
            AckKind::Join => latency_lock.0.observe(latency),
            AckKind::Leave => latency_lock.1.observe(latency),
        }
    }

    /// The counters now.
    pub fn snapshot(&self) -> DriverSnapshot {
        let not_admitted = self.not_admitted.load(Ordering::Relaxed);
        let auth_rejected = self.auth_rejected.load(Ordering::Relaxed);
        let refused_full = self.refused_full.load(Ordering::Relaxed);
        let (join, leave) = *self
            .latency
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        DriverSnapshot {
            handshake_failures: not_admitted.saturating_sub(auth_rejected + refused_full),
            auth_rejections: auth_rejected,
            slow_consumer_disconnects: self.slow_consumer.load(Ordering::Relaxed),
            connections_refused: refused_full + self.refused_draining.load(Ordering::Relaxed),
            admission_refusals: self.admission_refused.load(Ordering::Relaxed),
            address_validations: self.address_validations.load(Ordering::Relaxed),
            join_ack_latency: join,
            leave_ack_latency: leave,
        }
    }
}

/// What [`DriverCounters::snapshot`] reads.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DriverSnapshot {
    pub handshake_failures: u64,
    pub auth_rejections: u64,
    pub slow_consumer_disconnects: u64,
    pub connections_refused: u64,
    pub admission_refusals: u64,
    pub address_validations: u64,
    pub join_ack_latency: AckLatency,
    pub leave_ack_latency: AckLatency,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_buckets_are_cumulative() {
        let mut h = AckLatency::default();
        h.observe(Duration::from_micros(100));
        h.observe(Duration::from_micros(3_000));
        h.observe(Duration::from_secs(60));
        assert_eq!(h.count, 3);
        assert_eq!(h.buckets[0], 1, "<= 250 us");
        assert_eq!(h.buckets[3], 1, "<= 2.5 ms");
        assert_eq!(h.buckets[4], 2, "<= 5 ms");
        assert_eq!(*h.buckets.last().unwrap(), 2, "60 s is only in +Inf");
        assert_eq!(h.sum_us, 100 + 3_000 + 60_000_000);
    }

    #[test]
    fn relay_counts_by_mode() {
        let mut r = RelayByDelivery::default();
        r.add(Delivery::Latest { key: 3 }, 10);
        r.add(Delivery::Latest { key: 4 }, 5);
        r.add(Delivery::Unreliable, 7);
        assert_eq!(
            r.latest,
            RelayCount {
                messages: 2,
                bytes: 15
            }
        );
        assert_eq!(
            r.by_name()[2],
            (
                "unreliable",
                RelayCount {
                    messages: 1,
                    bytes: 7
                }
            )
        );
    }
}
