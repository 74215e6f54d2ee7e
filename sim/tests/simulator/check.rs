//! The oracle: what every delivery mode and every membership rule promises, checked as
//! events happen and once more at the end of a run.

use bytes::Bytes;
use peergroup_protocol::{Delivery, GroupId, HostId};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

/// One message the application sent, as the oracle remembers it.
#[derive(Debug, Clone)]
pub struct Sent {
    /// The sender.
    pub from: HostId,
    /// The group addressed, if any.
    pub group: Option<GroupId>,
    /// Its mode.
    pub delivery: Delivery,
    /// Its channel (0 where the mode has none).
    pub channel: u8,
    /// Who should get it: the destinations as the sender knew them when it sent.
    pub to: Vec<HostId>,
    /// The membership epochs (in `group`, or in all groups for a message to no group) of
    /// each destination when it was sent, `u64::MAX` for one it need not reach: a reliable
    /// message must arrive when neither end has left since.
    pub epochs: Vec<u64>,
    /// The sender's epoch when it sent.
    pub from_epoch: u64,
    /// When it was sent.
    pub at: Duration,
}

/// A broken guarantee, with what the simulator knew then.
pub type Violation = String;

/// Checks every guarantee; collects violations.
#[derive(Debug, Default)]
pub struct Oracle {
    /// Every message sent, by id (ids grow in send order, across all senders).
    pub sent: Vec<Sent>,
    /// Message ids each receiver got.
    got: HashMap<(HostId, u64), u32>,
    /// The newest id delivered per (sender, receiver, lane): ordered and sequenced per
    /// channel, latest per key.
    newest: HashMap<(HostId, HostId, LaneKey), u64>,
    /// Membership epochs: per (host, group) the host's leaves of the group, per (host,
    /// `None`) all its leaves and its disconnect.
    epochs: HashMap<(HostId, Option<GroupId>), u64>,
    /// Each client's view of each group, from its own events in order.
    views: HashMap<HostId, BTreeMap<GroupId, View>>,
    /// What broke.
    pub violations: Vec<Violation>,
    /// Deliveries per mode: ordered, unordered, unreliable, sequenced, latest.
    pub delivered: [u64; 5],
    /// (Message, destination) pairs the end-of-run check required to have arrived.
    pub required: u64,
}

/// One client's view of one group, from its events.
#[derive(Debug, Clone, Default)]
struct View {
    /// It got its own join notice (and not its own leave since).
    joined: bool,
    /// Members as told.
    members: BTreeSet<HostId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum LaneKey {
    Ordered(u8),
    Sequenced(u8),
    Latest(u64),
}

/// Index of a mode in [`Oracle::delivered`].
pub fn mode_index(delivery: Delivery) -> usize {
    match delivery {
        Delivery::ReliableOrdered => 0,
        Delivery::ReliableUnordered => 1,
        Delivery::Unreliable => 2,
        Delivery::UnreliableSequenced => 3,
        _ => 4,
    }
}

impl Oracle {
    /// A host's membership epoch in `group` now (`None`: in all its groups).
    pub fn epoch(&self, host: HostId, group: Option<GroupId>) -> u64 {
        self.epochs.get(&(host, group)).copied().unwrap_or(0)
    }

    /// `host` left `group` (`None`: disconnected): reliable messages to or from it
    /// sent before, for that group or for no group, need not arrive any more (they may
    /// cross the leave).
    pub fn bump_epoch(&mut self, host: HostId, group: Option<GroupId>) {
        *self.epochs.entry((host, None)).or_default() += 1;
        if group.is_some() {
            *self.epochs.entry((host, group)).or_default() += 1;
        }
    }

    /// Records a send; returns its id (the payload carries it).
    pub fn record_send(&mut self, sent: Sent) -> u64 {
        self.sent.push(sent);
        self.sent.len() as u64 - 1
    }

    /// Forgets the last recorded send (the session refused it).
    pub fn unrecord_last(&mut self) {
        self.sent.pop();
    }

    /// Encodes message `id` into a payload of `len` bytes at least 8.
    pub fn payload(id: u64, len: usize) -> Bytes {
        let mut bytes = id.to_le_bytes().to_vec();
        bytes.resize(len.max(8), 0xAB);
        Bytes::from(bytes)
    }

    /// `member` joined `group` in `host`'s events. A joiner is told of every member
    /// first and of itself last, so the group counts as joined from its own notice on.
    pub fn view_joined(&mut self, host: HostId, group: GroupId, member: HostId) {
        let view = self.views.entry(host).or_default();
        let entry = view.entry(group).or_default();
        if !entry.members.insert(member) {
            self.violations
                .push(format!("{host} told twice that {member} joined {group}"));
        }
        if member == host {
            entry.joined = true;
        }
    }

    /// `member` left `group` in `host`'s events.
    pub fn view_left(&mut self, host: HostId, group: GroupId, member: HostId) {
        let view = self.views.entry(host).or_default();
        let Some(View { members, .. }) = view.get_mut(&group) else {
            self.violations.push(format!(
                "{host} told that {member} left {group}, a group it is not in"
            ));
            return;
        };
        if !members.remove(&member) {
            self.violations.push(format!(
                "{host} told that {member} left {group}, which it did not know as a member"
            ));
        }
        if member == host {
            if !members.is_empty() {
                self.violations.push(format!(
                    "{host} got its own leave of {group} before those of {members:?}"
                ));
            }
            view.remove(&group);
        }
    }

    /// A client's view of the groups it joined, from its events.
    pub fn view_of(&self, host: HostId) -> BTreeMap<GroupId, BTreeSet<HostId>> {
        self.views
            .get(&host)
            .map(|view| {
                view.iter()
                    .filter(|(_, v)| v.joined)
                    .map(|(g, v)| (*g, v.members.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Drops a disconnected client's view.
    pub fn forget_view(&mut self, host: HostId) {
        self.views.remove(&host);
    }

    /// `to` got a message event; checks it against what was sent and delivered before.
    pub fn delivered(
        &mut self,
        to: HostId,
        from: HostId,
        group: Option<GroupId>,
        payload: &[u8],
        delivery: Delivery,
        channel: u8,
    ) {
        let Some(id) = payload
            .get(..8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("eight bytes")))
        else {
            self.violations
                .push(format!("{to} got a payload of {} bytes", payload.len()));
            return;
        };
        let Some(sent) = self.sent.get(id as usize) else {
            self.violations
                .push(format!("{to} got message #{id}, never sent"));
            return;
        };
        let what = format!("message #{id} ({:?} ch {channel}) {from} -> {to}", delivery);
        if sent.from != from || sent.group != group || sent.delivery != delivery {
            self.violations.push(format!(
                "{what}: arrived as from {from} in {group:?} by {delivery:?}, sent as {sent:?}"
            ));
            return;
        }
        let uses_channel = matches!(
            delivery,
            Delivery::ReliableOrdered | Delivery::UnreliableSequenced
        );
        if uses_channel && sent.channel != channel {
            self.violations.push(format!(
                "{what}: arrived on channel {channel}, sent on {}",
                sent.channel
            ));
        }
        if !sent.to.contains(&to) {
            self.violations.push(format!(
                "{what}: not addressed to {to} (sent to {:?})",
                sent.to
            ));
        }
        self.delivered[mode_index(delivery)] += 1;
        let count = self.got.entry((to, id)).or_default();
        *count += 1;
        if *count > 1 {
            self.violations
                .push(format!("{what}: delivered {count} times"));
        }
        // Membership, as the receiver was told: it is in the group and so is the sender.
        if let Some(group) = group {
            let view = self.views.get(&to).and_then(|v| v.get(&group));
            match view {
                None | Some(View { joined: false, .. }) => self.violations.push(format!(
                    "{what}: delivered for {group}, which {to} is not in (by its events)"
                )),
                Some(View { members, .. }) if !members.contains(&from) => {
                    self.violations.push(format!(
                        "{what}: delivered for {group} while {to} does not know {from} as a member"
                    ))
                }
                Some(_) => {}
            }
        }
        let lane = match delivery {
            Delivery::ReliableOrdered => Some(LaneKey::Ordered(channel)),
            Delivery::UnreliableSequenced => Some(LaneKey::Sequenced(channel)),
            Delivery::Latest { key } => Some(LaneKey::Latest(key)),
            _ => None,
        };
        if let Some(lane) = lane {
            let newest = self.newest.entry((from, to, lane)).or_insert(id);
            if id < *newest {
                self.violations.push(format!(
                    "{what}: delivered after #{newest}, sent later on the same {lane:?}"
                ));
            }
            *newest = (*newest).max(id);
        }
    }

    /// The end-of-run check of reliable delivery: every reliable message whose sender and
    /// destination stayed in their groups since it was sent arrived (exactly once, checked
    /// as it came), and for latest values, the last one sent per key did.
    pub fn check_complete(&mut self, connected: &BTreeSet<HostId>) {
        let mut last_latest: HashMap<(HostId, HostId, u64), u64> = HashMap::new();
        let mut missing = Vec::new();
        let mut required = 0;
        for (id, sent) in self.sent.iter().enumerate() {
            let id = id as u64;
            for (i, &to) in sent.to.iter().enumerate() {
                // The server application's messages need no membership, only the client.
                let stable = if sent.from == HostId::SERVER {
                    connected.contains(&to)
                } else {
                    self.epoch(sent.from, sent.group) == sent.from_epoch
                        && self.epoch(to, sent.group) == sent.epochs[i]
                        && connected.contains(&sent.from)
                        && connected.contains(&to)
                };
                match sent.delivery {
                    Delivery::ReliableOrdered | Delivery::ReliableUnordered if stable => {
                        required += 1;
                        if self.got.contains_key(&(to, id)) {
                            continue;
                        }
                        missing.push(format!(
                            "message #{id} ({:?} ch {}) {} -> {to} sent at {:?} never arrived",
                            sent.delivery, sent.channel, sent.from, sent.at
                        ));
                    }
                    Delivery::Latest { key } => {
                        if stable {
                            last_latest.insert((sent.from, to, key), id);
                        } else {
                            last_latest.remove(&(sent.from, to, key));
                        }
                    }
                    _ => {}
                }
            }
        }
        self.required += required + last_latest.len() as u64;
        for ((from, to, key), id) in last_latest {
            if !self.got.contains_key(&(to, id)) {
                missing.push(format!(
                    "latest value #{id} (key {key}) {from} -> {to}, the last sent, never arrived"
                ));
            }
        }
        missing.sort();
        self.violations.extend(missing);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: HostId = HostId::from_raw((1 << 32) | 1);
    const B: HostId = HostId::from_raw((1 << 32) | 2);

    fn oracle_with(deliveries: &[Delivery]) -> (Oracle, GroupId) {
        let group = GroupId::from_raw(1);
        let mut oracle = Oracle::default();
        for host in [A, B] {
            for member in [A, B] {
                if member != host {
                    oracle.view_joined(host, group, member);
                }
            }
            oracle.view_joined(host, group, host);
        }
        for &delivery in deliveries {
            oracle.record_send(Sent {
                from: A,
                group: Some(group),
                delivery,
                channel: 0,
                to: vec![B],
                epochs: vec![0],
                from_epoch: 0,
                at: Duration::ZERO,
            });
        }
        (oracle, group)
    }

    fn deliver(oracle: &mut Oracle, group: GroupId, id: u64) {
        let delivery = oracle.sent[id as usize].delivery;
        oracle.delivered(B, A, Some(group), &Oracle::payload(id, 8), delivery, 0);
    }

    fn connected() -> BTreeSet<HostId> {
        [A, B].into()
    }

    #[test]
    fn reliable_ordered_in_order_and_complete_passes() {
        let (mut oracle, group) = oracle_with(&[Delivery::ReliableOrdered; 3]);
        for id in 0..3 {
            deliver(&mut oracle, group, id);
        }
        oracle.check_complete(&connected());
        assert!(oracle.violations.is_empty(), "{:?}", oracle.violations);
    }

    #[test]
    fn reordering_duplicates_and_losses_are_each_caught() {
        let (mut oracle, group) = oracle_with(&[Delivery::ReliableOrdered; 3]);
        deliver(&mut oracle, group, 1);
        deliver(&mut oracle, group, 0);
        assert_eq!(oracle.violations.len(), 1, "out of order");
        deliver(&mut oracle, group, 1);
        assert_eq!(oracle.violations.len(), 2, "a duplicate");
        oracle.check_complete(&connected());
        assert!(oracle.violations.last().unwrap().contains("#2"), "#2 lost");
    }

    #[test]
    fn latest_must_not_go_back_and_its_last_value_must_arrive() {
        let latest = Delivery::Latest { key: 4 };
        let (mut oracle, group) = oracle_with(&[latest; 3]);
        deliver(&mut oracle, group, 1);
        deliver(&mut oracle, group, 0);
        assert_eq!(oracle.violations.len(), 1, "went back");
        oracle.check_complete(&connected());
        assert_eq!(oracle.violations.len(), 2, "the last value, #2, never came");
    }

    #[test]
    fn unreliable_may_be_lost_but_a_message_crossing_a_leave_need_not_arrive() {
        let (mut oracle, group) = oracle_with(&[Delivery::Unreliable, Delivery::ReliableUnordered]);
        oracle.bump_epoch(B, Some(group));
        oracle.check_complete(&connected());
        assert!(oracle.violations.is_empty(), "{:?}", oracle.violations);
    }

    #[test]
    fn a_message_for_a_group_the_receiver_left_is_caught() {
        let (mut oracle, group) = oracle_with(&[Delivery::ReliableUnordered]);
        oracle.view_left(B, group, A);
        oracle.view_left(B, group, B);
        deliver(&mut oracle, group, 0);
        assert_eq!(oracle.violations.len(), 1, "{:?}", oracle.violations);
    }
}
