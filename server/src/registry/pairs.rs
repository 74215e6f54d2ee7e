//! Pair state: one record per pair of client hosts that share (or recently shared) a group.
//!
//! A pair is reference-counted by the groups the two hosts share and lingers for a while
//! after the count drops to zero, so view-group churn (leave, then rejoin within seconds)
//! keeps the pair's sequence numbers and, later, its direct path. ProudNet keeps P2P
//! connections alive the same way after a leave.

use super::punch::PunchState;
use peergroup_protocol::{HostId, PairId};
use slotmap::{Key, SlotMap};
use std::collections::HashMap;
use std::time::{Duration, Instant};

slotmap::new_key_type! {
    struct PairKey;
}

/// One pair's record.
#[derive(Debug, Clone)]
pub(crate) struct Pair {
    /// The two hosts, lower id first.
    pub hosts: (HostId, HostId),
    /// How many groups the two hosts share now.
    pub shared_groups: u32,
    /// How many of those allow direct P2P.
    pub direct_groups: u32,
    /// Messages relayed between the two, both ways, since the pair started.
    pub relayed: u64,
    /// Payload bytes relayed between the two, both ways.
    pub relayed_bytes: u64,
    /// The latest link report from either side.
    pub link: Option<LinkMeasure>,
    /// Whether a user message went between them (just-in-time punching waits for it).
    pub talked: bool,
    /// When the pair started ([`super::PunchConfig::min_pair_age`] counts from here).
    pub started: Instant,
    /// Hole punching and path.
    pub punch: PunchState,
    /// When the pair ends if the hosts still share no group.
    pub linger_until: Option<Instant>,
    /// Where the pair sits in each host's list of pairs (lower id first), so ending it
    /// costs O(1) there however many pairs the hosts have.
    positions: (usize, usize),
}

impl Pair {
    /// The side of the pair that is not `host`, or `None` if `host` is not in the pair.
    pub fn other(&self, host: HostId) -> Option<HostId> {
        match self.hosts {
            (a, b) if a == host => Some(b),
            (a, b) if b == host => Some(a),
            _ => None,
        }
    }
}

/// What one side of a pair measured of the other, as last reported.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct LinkMeasure {
    pub rtt: Option<Duration>,
    pub last_rtt: Option<Duration>,
    pub loss: Option<f32>,
}

/// What a reference change did to a pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PairChange {
    /// A new pair was made; both hosts must be told before anything else about each other.
    Started(PairId),
    /// The pair existed (perhaps lingering) and now has one more shared group.
    Kept(PairId),
}

/// All pairs, indexed both by id and by host pair.
#[derive(Debug, Default)]
pub(crate) struct PairTable {
    pairs: SlotMap<PairKey, Pair>,
    by_hosts: HashMap<(HostId, HostId), PairKey, foldhash::fast::RandomState>,
    /// Each host's pairs, so per-host questions never scan every pair.
    by_host: HashMap<HostId, Vec<PairKey>, foldhash::fast::RandomState>,
}

fn ordered(a: HostId, b: HostId) -> (HostId, HostId) {
    if a <= b {
        (a, b)
    } else {
        (b, a)
    }
}

fn id_of(key: PairKey) -> PairId {
    PairId::from_raw(key.data().as_ffi())
}

/// The slot a pair id names; a raw value that is not the one slotmap handed out (an alias
/// with the version's low bit clear) names nothing, so every pair has one spelling.
fn key_of(id: PairId) -> PairKey {
    super::canonical_key(id.raw()).into()
}

impl PairTable {
    /// Counts one more group shared by `a` and `b` (`direct`: one that allows direct
    /// P2P), starting the pair if needed.
    pub fn add_shared_group(
        &mut self,
        a: HostId,
        b: HostId,
        direct: bool,
        now: Instant,
    ) -> PairChange {
        let hosts = ordered(a, b);
        if let Some(&key) = self.by_hosts.get(&hosts) {
            let pair = &mut self.pairs[key];
            pair.shared_groups += 1;
            pair.direct_groups += u32::from(direct);
            pair.linger_until = None;
            return PairChange::Kept(id_of(key));
        }
        let key = self.pairs.insert(Pair {
            hosts,
            shared_groups: 1,
            direct_groups: u32::from(direct),
            relayed: 0,
            relayed_bytes: 0,
            link: None,
            talked: false,
            started: now,
            punch: PunchState::new(),
            linger_until: None,
            positions: (0, 0),
        });
        self.by_hosts.insert(hosts, key);
        let mut position = |host| {
            let keys = self.by_host.entry(host).or_default();
            keys.push(key);
            keys.len() - 1
        };
        let positions = (position(hosts.0), position(hosts.1));
        self.pairs[key].positions = positions;
        PairChange::Started(id_of(key))
    }

    /// Counts one group fewer; when none is left the pair lingers until `linger_until`,
    /// which is returned so the caller can schedule it.
    pub fn remove_shared_group(
        &mut self,
        a: HostId,
        b: HostId,
        direct: bool,
        linger_until: Instant,
    ) -> Option<(PairId, Instant)> {
        let key = *self.by_hosts.get(&ordered(a, b))?;
        let pair = &mut self.pairs[key];
        pair.shared_groups = pair.shared_groups.saturating_sub(1);
        pair.direct_groups = pair.direct_groups.saturating_sub(u32::from(direct));
        if pair.shared_groups == 0 {
            pair.linger_until = Some(linger_until);
            return Some((id_of(key), linger_until));
        }
        None
    }

    /// Ends the pair if it is still lingering and its time is up; returns its hosts.
    pub fn expire(&mut self, id: PairId, now: Instant) -> Option<(HostId, HostId)> {
        let key = key_of(id);
        let due =
            matches!(self.pairs.get(key), Some(p) if p.linger_until.is_some_and(|t| t <= now));
        if !due {
            return None;
        }
        self.remove(id)
    }

    /// Ends the pair at once (a host disconnected); returns its hosts.
    pub fn remove(&mut self, id: PairId) -> Option<(HostId, HostId)> {
        let key = key_of(id);
        let pair = self.pairs.remove(key)?;
        self.by_hosts.remove(&pair.hosts);
        self.unlink(pair.hosts.0, pair.positions.0);
        self.unlink(pair.hosts.1, pair.positions.1);
        Some(pair.hosts)
    }

    /// Takes the pair at `position` out of `host`'s list in O(1): the last one moves into
    /// its place and is told so.
    fn unlink(&mut self, host: HostId, position: usize) {
        let Some(keys) = self.by_host.get_mut(&host) else {
            return;
        };
        if position >= keys.len() {
            debug_assert!(false, "a pair's position is out of its host's list");
            return;
        }
        keys.swap_remove(position);
        if let Some(&moved) = keys.get(position) {
            if let Some(pair) = self.pairs.get_mut(moved) {
                if pair.hosts.0 == host {
                    pair.positions.0 = position;
                } else {
                    pair.positions.1 = position;
                }
            }
        }
        if keys.is_empty() {
            self.by_host.remove(&host);
        }
    }

    /// Checks that every pair is listed under both its hosts where it says it is.
    #[cfg(test)]
    fn check_index(&self) {
        let listed: usize = self.by_host.values().map(Vec::len).sum();
        assert_eq!(listed, 2 * self.pairs.len());
        for (key, pair) in &self.pairs {
            assert_eq!(self.by_host[&pair.hosts.0][pair.positions.0], key);
            assert_eq!(self.by_host[&pair.hosts.1][pair.positions.1], key);
        }
    }

    /// The pair with this id, if it still exists.
    pub fn get(&self, id: PairId) -> Option<&Pair> {
        self.pairs.get(key_of(id))
    }

    /// The pair with this id, to change it.
    pub fn get_mut(&mut self, id: PairId) -> Option<&mut Pair> {
        self.pairs.get_mut(key_of(id))
    }

    /// The pair, if `host` is one of its two hosts: what a host may report on.
    pub fn get_member_mut(&mut self, id: PairId, host: HostId) -> Option<&mut Pair> {
        self.get_mut(id).filter(|pair| pair.other(host).is_some())
    }

    /// The pair between two hosts, if any.
    pub fn between(&self, a: HostId, b: HostId) -> Option<(PairId, &Pair)> {
        let key = *self.by_hosts.get(&ordered(a, b))?;
        Some((id_of(key), &self.pairs[key]))
    }

    /// Every pair `host` is in.
    pub fn of_host(&self, host: HostId) -> Vec<PairId> {
        self.keys_of(host).map(id_of).collect()
    }

    fn keys_of(&self, host: HostId) -> impl Iterator<Item = PairKey> + '_ {
        self.by_host.get(&host).into_iter().flatten().copied()
    }

    /// The hosts that share at least one group with `host` now (lingering pairs left
    /// out).
    pub fn sharing_a_group_with(&self, host: HostId) -> Vec<HostId> {
        self.keys_of(host)
            .filter_map(|key| self.pairs.get(key))
            .filter(|pair| pair.shared_groups > 0)
            .filter_map(|pair| pair.other(host))
            .collect()
    }

    /// `host`'s pairs on the direct path and on the relay (lingering ones included).
    pub fn count_paths_of(&self, host: HostId) -> (u32, u32) {
        let mut counts = (0, 0);
        for pair in self.keys_of(host).filter_map(|key| self.pairs.get(key)) {
            if pair.punch.path() == peergroup_protocol::PairPath::Direct {
                counts.0 += 1;
            } else {
                counts.1 += 1;
            }
        }
        counts
    }

    /// Pairs on the direct path and pairs on the relay.
    pub fn count_paths(&self) -> (usize, usize) {
        let direct = self
            .pairs
            .values()
            .filter(|p| p.punch.path() == peergroup_protocol::PairPath::Direct)
            .count();
        (direct, self.pairs.len() - direct)
    }

    /// Every pair, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (PairId, &Pair)> + '_ {
        self.pairs.iter().map(|(key, pair)| (id_of(key), pair))
    }

    /// How many pairs exist, lingering ones included.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const A: HostId = HostId::from_raw(10);
    const B: HostId = HostId::from_raw(20);

    #[test]
    fn one_pair_per_host_pair_whatever_the_order_or_group_count() {
        let mut table = PairTable::default();
        let PairChange::Started(id) = table.add_shared_group(A, B, true, Instant::now()) else {
            panic!("first shared group starts the pair")
        };
        assert_eq!(
            table.add_shared_group(B, A, true, Instant::now()),
            PairChange::Kept(id)
        );
        assert_eq!(table.len(), 1);
        assert_eq!(table.get(id).unwrap().shared_groups, 2);
        assert_eq!(table.get(id).unwrap().other(A), Some(B));
    }

    #[test]
    fn pair_lingers_then_expires_and_a_rejoin_cancels_the_linger() {
        let now = Instant::now();
        let mut table = PairTable::default();
        let PairChange::Started(id) = table.add_shared_group(A, B, true, Instant::now()) else {
            panic!()
        };
        let until = now + Duration::from_secs(10);
        assert_eq!(
            table.remove_shared_group(A, B, true, until),
            Some((id, until))
        );
        assert_eq!(table.expire(id, now), None, "not due yet");
        assert_eq!(
            table.add_shared_group(A, B, true, Instant::now()),
            PairChange::Kept(id)
        );
        assert_eq!(table.expire(id, until), None, "a rejoin cancels the linger");
        table.remove_shared_group(A, B, true, until);
        assert_eq!(table.expire(id, until), Some((A, B)));
        assert!(table.get(id).is_none());
        let PairChange::Started(new_id) = table.add_shared_group(A, B, true, Instant::now()) else {
            panic!("an ended pair starts afresh")
        };
        assert_ne!(new_id, id, "a new pair never reuses the old id");
    }

    #[test]
    fn each_hosts_pairs_stay_indexed_as_pairs_come_and_go() {
        // Issue 12, finding 11: ending a pair scanned both hosts' lists, so a host with n
        // pairs cost O(n^2) to disconnect; now each end is O(1) in each list.
        let mut table = PairTable::default();
        let host = |n: u64| HostId::from_raw(n << 32 | 1);
        let mut ids = Vec::new();
        for a in 0..40 {
            for b in (a + 1)..40 {
                if let PairChange::Started(id) =
                    table.add_shared_group(host(a), host(b), true, Instant::now())
                {
                    ids.push(id);
                }
            }
        }
        table.check_index();
        // End pairs in an order unlike the one they started in.
        for (n, id) in ids.iter().enumerate().rev() {
            if n % 3 != 1 {
                table.remove(*id);
                table.check_index();
            }
        }
        // Disconnecting host 7 ends exactly its pairs.
        let of_7 = table.of_host(host(7));
        for id in &of_7 {
            table.remove(*id);
        }
        table.check_index();
        assert!(table.of_host(host(7)).is_empty());
        for other in 0..40 {
            assert!(table.between(host(7), host(other)).is_none());
        }
    }
}
