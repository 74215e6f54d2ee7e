//! The application: one random action at each `Ev::Act` (a send, a join, a leave, a group
//! created or destroyed, a direct path's death, a client's disconnect, a message from the
//! server application), each recorded with the oracle or the pending ops it must complete.
//! Kept apart from the drivers because this is what drives them, drawn from the seed.

use super::{Ev, World, MAX_DATAGRAM};
use crate::simulator::check::{Oracle, Sent};
use bytes::Bytes;
use peergroup_protocol::{Delivery, GroupId, HostId, Priority, SendOptions};
use rand::RngExt;
use std::collections::BTreeSet;

impl World {
    /// One application action, drawn at random.
    pub(super) fn act(&mut self) {
        let roll = self.rng.random_range(0..100u32);
        match roll {
            0..=44 => self.random_send(),
            45..=54 => {
                let n = self.rng.random_range(5..=30);
                for _ in 0..n {
                    self.random_send();
                }
            }
            55..=69 => self.random_join(),
            70..=81 => self.random_leave(),
            82..=83 => self.create_group(),
            84 => self.random_destroy(),
            85..=91 => self.random_death(),
            92 if self.rng.random_bool(0.3) => self.random_disconnect(),
            93..=96 => self.random_app_send(),
            _ => self.random_send(),
        }
    }

    fn random_client(&mut self) -> Option<HostId> {
        let hosts: Vec<HostId> = self.clients.keys().copied().collect();
        (!hosts.is_empty()).then(|| hosts[self.rng.random_range(0..hosts.len())])
    }

    fn random_group(&mut self) -> Option<GroupId> {
        let groups: Vec<GroupId> = self.registry.groups();
        (!groups.is_empty()).then(|| groups[self.rng.random_range(0..groups.len())])
    }

    fn random_join(&mut self) {
        let (Some(host), Some(group)) = (self.random_client(), self.random_group()) else {
            return;
        };
        let now = self.clock.now();
        if self.trace {
            eprintln!("{:?} join {host} to {group}", self.clock.elapsed());
        }
        if let Ok(peergroup_server::registry::JoinOutcome::Joined) =
            self.registry.join_group(group, host, Bytes::new(), now)
        {
            self.start_op(true, group, host);
        }
        self.dispatch();
        self.check_pairs();
    }

    fn random_leave(&mut self) {
        let Some(group) = self.random_group() else {
            return;
        };
        let members = self.registry.group_members(group).unwrap_or_default();
        if members.is_empty() {
            return;
        }
        let host = members[self.rng.random_range(0..members.len())];
        let now = self.clock.now();
        if self.trace {
            eprintln!("{:?} leave {host} from {group}", self.clock.elapsed());
        }
        if self.registry.leave_group(group, host, now).is_ok() {
            self.start_op(false, group, host);
            self.last_leave.insert((group, host), self.action_counter);
            self.oracle.bump_epoch(host, Some(group));
        }
        self.dispatch();
        self.check_pairs();
    }

    fn random_destroy(&mut self) {
        let Some(group) = self.random_group() else {
            return;
        };
        let members = self.registry.group_members(group).unwrap_or_default();
        let now = self.clock.now();
        self.action_counter += 1;
        self.destroyed.insert(group, self.action_counter);
        if self.registry.destroy_group(group, now).is_ok() {
            // A destroy is a leave of every member.
            for host in members {
                self.start_op(false, group, host);
                self.last_leave.insert((group, host), self.action_counter);
                self.oracle.bump_epoch(host, Some(group));
            }
        }
        self.dispatch();
        self.check_pairs();
    }

    fn random_death(&mut self) {
        let mut live: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.alive && !c.closed.0 && !c.closed.1)
            .map(|(id, _)| *id)
            .collect();
        live.sort_unstable();
        if live.is_empty() {
            return;
        }
        let conn = live[self.rng.random_range(0..live.len())];
        self.events
            .push(self.clock.elapsed(), Ev::PathDeath { conn });
    }

    fn random_disconnect(&mut self) {
        if self.clients.len() <= 2 {
            return;
        }
        let Some(host) = self.random_client() else {
            return;
        };
        let now = self.clock.now();
        // It leaves every group; each of those leaves completes once the others ack.
        for group in self.registry.groups_of(host).unwrap_or_default() {
            self.start_op(false, group, host);
        }
        self.action_counter += 1;
        self.disconnected.insert(host, self.action_counter);
        self.oracle.bump_epoch(host, None);
        self.oracle.forget_view(host);
        let client = self.clients.remove(&host).expect("picked among clients");
        // Its direct connections close with it.
        for direct in client.directs.values() {
            self.close_conn(host, direct.conn);
        }
        // Its own joins and leaves end with it; they complete as `Disconnected`.
        self.registry.handle_disconnect(host, now);
        self.dispatch();
        self.check_pairs();
    }

    /// One message from the server application to some connected clients, in a random
    /// mode (as `Server::send` hands it to the registry).
    fn random_app_send(&mut self) {
        let to: Vec<HostId> = self
            .clients
            .keys()
            .copied()
            .filter(|_| self.rng.random_bool(0.5))
            .collect();
        if to.is_empty() {
            return;
        }
        let delivery = self.random_delivery();
        let channel = self.rng.random_range(0..3u8);
        let priority =
            [Priority::High, Priority::Medium, Priority::Low][self.rng.random_range(0..3)];
        let options = SendOptions {
            delivery,
            channel,
            priority,
        };
        let id = self.oracle.record_send(Sent {
            from: HostId::SERVER,
            group: None,
            delivery,
            channel,
            epochs: vec![0; to.len()],
            to: to.clone(),
            from_epoch: 0,
            at: self.clock.elapsed(),
        });
        let len = self.rng.random_range(8..=200);
        self.stats.sent += 1;
        self.registry.handle_app_send(
            &to,
            None,
            options.carrier(),
            priority,
            Oracle::payload(id, len),
        );
        self.dispatch();
    }

    fn random_delivery(&mut self) -> Delivery {
        match self.rng.random_range(0..10u32) {
            0..=2 => Delivery::ReliableOrdered,
            3..=4 => Delivery::ReliableUnordered,
            5 => Delivery::Unreliable,
            6 => Delivery::UnreliableSequenced,
            _ => Delivery::Latest {
                key: self.rng.random_range(0..4),
            },
        }
    }

    /// One send from a random client in a random mode, to a group it is in or to a peer.
    fn random_send(&mut self) {
        let Some(host) = self.random_client() else {
            return;
        };
        let client = &self.clients[&host];
        let groups = client.session.groups();
        if groups.is_empty() {
            return;
        }
        let group = groups[self.rng.random_range(0..groups.len())];
        let members: Vec<HostId> = client
            .session
            .group_members(group)
            .unwrap_or_default()
            .into_iter()
            .filter(|&m| m != host && m != HostId::SERVER)
            .collect();
        if members.is_empty() {
            return;
        }
        let (target, to, named_group) = if self.rng.random_bool(0.7) {
            (
                peergroup_client::fuzzing::Target::Group(group),
                members.clone(),
                Some(group),
            )
        } else {
            let peer = members[self.rng.random_range(0..members.len())];
            (
                peergroup_client::fuzzing::Target::Host(peer),
                vec![peer],
                None,
            )
        };
        // A send that would wait for a full direct window is not made (try_send's QueueFull).
        if to
            .iter()
            .any(|&p| self.clients[&host].session.direct_window_full(p))
        {
            return;
        }
        let delivery = self.random_delivery();
        let channel = self.rng.random_range(0..3u8);
        let priority =
            [Priority::High, Priority::Medium, Priority::Low][self.rng.random_range(0..3)];
        let len = if delivery.is_unreliable() {
            self.rng.random_range(8..=200)
        } else if self.rng.random_bool(0.05) {
            self.rng.random_range(2_000..=20_000)
        } else {
            self.rng.random_range(8..=300)
        };
        // Which destinations must get it if it is reliable: those the server has in the
        // group (or sharing a group, for a message to a host) along with the sender now.
        let server_groups = |h: HostId| -> BTreeSet<GroupId> {
            self.registry
                .groups_of(h)
                .unwrap_or_default()
                .into_iter()
                .collect()
        };
        let from_groups = server_groups(host);
        // On a direct path a message names the memberships its sender knew; one whose
        // receiver (or sender) has since left and joined again is dropped as sent under an
        // ended membership (README, "Ordering around membership"), so it must arrive only
        // if the sender knew the current ones.
        let current = |w: &World, member: HostId, g: GroupId| {
            let told = w.told_membership.get(&(host, g, member));
            told.is_some() && told == w.server_membership.get(&(g, member))
        };
        let epochs: Vec<u64> = to
            .iter()
            .map(|&peer| {
                let peer_groups = server_groups(peer);
                let required = match named_group {
                    Some(g) => {
                        from_groups.contains(&g)
                            && peer_groups.contains(&g)
                            && current(self, peer, g)
                            && current(self, host, g)
                    }
                    None => !from_groups.is_disjoint(&peer_groups),
                };
                // Guarantees hold per pair: one sent under a pair the server has ended
                // (and replaced) is refused as `UnknownPair`.
                let pair = self.clients[&host].session.pair_of(peer);
                let current_pair = self.registry.pair_between(host, peer).map(|(p, _)| p);
                if required && pair.is_some() && pair == current_pair {
                    self.oracle.epoch(peer, named_group)
                } else {
                    u64::MAX
                }
            })
            .collect();
        let from_epoch = self.oracle.epoch(host, named_group);
        let id = self.oracle.record_send(Sent {
            from: host,
            group: named_group,
            delivery,
            channel,
            to,
            epochs,
            from_epoch,
            at: self.clock.elapsed(),
        });
        let payload = Oracle::payload(id, len);
        let options = SendOptions {
            delivery,
            channel,
            priority,
        };
        let client = self.clients.get_mut(&host).expect("picked among clients");
        match client
            .session
            .send(&target, payload, options, Some(MAX_DATAGRAM))
        {
            Ok(()) => {
                if self.trace {
                    eprintln!(
                        "{:?} {host} sends #{id} {target:?} {delivery:?} ch {channel} {priority:?}",
                        self.clock.elapsed()
                    );
                }
                self.stats.sent += 1;
                self.flush(host);
            }
            Err(_) => self.oracle.unrecord_last(),
        }
    }
}
