//! The relay rule and the relay itself: which destinations of an upload are delivered,
//! stamped with the sender, and which are refused (and reported).
//!
//! The rule: with a group named, sender and destination must both be members of it;
//! without one, they must share at least one group. The server application is a
//! destination only when the client addresses it directly, or a group it is a member of.

use super::{group_key, host_key, pairs, Action, Registry};
use crate::events::ServerEvent;
use bytes::Bytes;
use peergroup_protocol::budget::TokenBucket;
use peergroup_protocol::{
    DatagramLane, Delivery, GroupId, HostId, Lane, PairId, Priority, RefuseReason, RelayDest,
    ServerDatagram, ServerToClient, MAX_RELAY_DESTS,
};
use std::time::{Duration, Instant};

/// Relay bytes per second, over whole one-second windows.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct RateMeter {
    window_start: Option<Instant>,
    in_window: u64,
    last_window: u64,
}

impl RateMeter {
    const WINDOW: Duration = Duration::from_secs(1);

    pub(super) fn add(&mut self, bytes: u64, now: Instant) {
        self.roll(now);
        self.in_window += bytes;
    }

    /// Starts new windows as time passes; a silent window counts as zero.
    fn roll(&mut self, now: Instant) {
        let start = *self.window_start.get_or_insert(now);
        let elapsed = now.saturating_duration_since(start);
        if elapsed < Self::WINDOW {
            return;
        }
        self.last_window = if elapsed < 2 * Self::WINDOW {
            self.in_window
        } else {
            0
        };
        self.in_window = 0;
        let whole = elapsed.as_nanos() / Self::WINDOW.as_nanos();
        self.window_start = Some(start + Self::WINDOW * whole.min(u128::from(u32::MAX)) as u32);
    }

    /// Bytes in the last complete window.
    pub(super) fn rate(&mut self, now: Instant) -> u64 {
        self.roll(now);
        self.last_window
    }
}

impl Registry {
    /// Relays a reliable message from `from`. Each destination that passes the relay rule
    /// gets it stamped with `from`; each one refused is reported to the sender (and, within
    /// a live pair, skipped in the receiver's sequence so it never waits for it).
    ///
    /// The rule: with a `group`, sender and destination must both be members of it;
    /// without one, they must share at least one group.
    ///
    /// An upload naming more than [`MAX_RELAY_DESTS`] destinations is refused whole, with
    /// one [`RefuseReason::TooManyDestinations`]; the refusals of one upload go back in one
    /// frame ([`Registry::refuse_many`]), so a sender gets back at most about what it sent.
    #[allow(clippy::too_many_arguments)] // one per field of the upload
    pub(super) fn handle_relay(
        &mut self,
        from: HostId,
        group: Option<GroupId>,
        to_server: bool,
        lane: Lane,
        priority: Priority,
        dests: &[RelayDest],
        payload: Bytes,
        now: Instant,
    ) {
        if dests.len() > MAX_RELAY_DESTS {
            return self.refuse(from, None, group, RefuseReason::TooManyDestinations);
        }
        if to_server {
            self.relay_to_server(
                from,
                group,
                payload.clone(),
                lane.delivery(),
                lane.channel(),
            );
        }
        let mut seen = DestinationSet::default();
        let mut refused = Vec::new();
        for dest in dests {
            // One copy per pair and upload: a client cannot turn one upload into thousands
            // of deliveries to one victim by repeating its pair.
            if dests.len() > 1 && !seen.insert(dest.pair) {
                self.counters.relay_refused += 1;
                continue;
            }
            match self.relay_verdict(from, group, dest.pair) {
                Ok(to) => {
                    self.actions.push_back(Action::SendData {
                        to,
                        message: ServerToClient::Deliver {
                            from,
                            group,
                            lane,
                            seq: dest.seq,
                            payload: payload.clone(),
                        },
                        priority,
                        from,
                        latest: lane.latest_key(),
                    });
                    self.count_relayed(dest.pair, payload.len(), now);
                    self.counters
                        .relayed_by_delivery
                        .add(lane.delivery(), payload.len());
                }
                Err((reason, live_peer)) => {
                    if let Some(peer) = live_peer {
                        // Travels with the sender's messages, so it never overtakes the
                        // ones numbered before it.
                        self.actions.push_back(Action::SendData {
                            to: peer,
                            message: ServerToClient::Skipped {
                                from,
                                lane,
                                seq: dest.seq,
                            },
                            priority,
                            from,
                            latest: None,
                        });
                    }
                    refused.push((dest.pair, reason));
                }
            }
        }
        self.refuse_many(from, group, refused);
    }

    /// Relays an unreliable message from `from` under the same rule as
    /// [`Registry::handle_relay`]; refused destinations are reported to the sender.
    ///
    /// Pings and pongs between peers ([`DatagramLane::Ping`], [`DatagramLane::Pong`]) are
    /// relayed like messages but are not user messages: they are not counted, do not start
    /// just-in-time punching, and the server application never sees one.
    #[allow(clippy::too_many_arguments)] // one per field of the upload
    pub(super) fn handle_relay_datagram(
        &mut self,
        from: HostId,
        group: Option<GroupId>,
        to_server: bool,
        lane: DatagramLane,
        server_seq: u64,
        dests: &[RelayDest],
        payload: Bytes,
        now: Instant,
    ) {
        if dests.len() > MAX_RELAY_DESTS {
            if !lane.is_probe() {
                self.refuse(from, None, group, RefuseReason::TooManyDestinations);
            }
            return;
        }
        if to_server && !lane.is_probe() {
            if let DatagramLane::Sequenced { channel } = lane {
                let newest = self
                    .hosts
                    .get_mut(host_key(from))
                    .map(|h| h.app_sequenced.entry(channel).or_insert(0));
                match newest {
                    Some(newest) if server_seq > *newest => *newest = server_seq,
                    // Older than one the application already has: dropped, as the
                    // mode promises.
                    _ => return self.relay_datagram(from, group, lane, dests, payload, now),
                }
            }
            self.relay_to_server(
                from,
                group,
                payload.clone(),
                lane.delivery(),
                lane.channel(),
            );
        }
        self.relay_datagram(from, group, lane, dests, payload, now);
    }

    /// The peer part of [`Registry::handle_relay_datagram`].
    fn relay_datagram(
        &mut self,
        from: HostId,
        group: Option<GroupId>,
        lane: DatagramLane,
        dests: &[RelayDest],
        payload: Bytes,
        now: Instant,
    ) {
        let probe = lane.is_probe();
        if !self.admit_datagram(from, probe, dests.len(), now) {
            return;
        }
        let mut recipients = Vec::with_capacity(dests.len());
        let mut seen = DestinationSet::default();
        let mut refused = Vec::new();
        for dest in dests {
            if dests.len() > 1 && !seen.insert(dest.pair) {
                self.counters.relay_refused += 1;
                continue;
            }
            match self.relay_verdict(from, group, dest.pair) {
                Ok(to) => recipients.push((to, dest.pair, dest.seq)),
                Err((reason, _)) if !probe => refused.push((dest.pair, reason)),
                Err(_) => {}
            }
        }
        self.refuse_many(from, group, refused);
        if recipients.is_empty() {
            return;
        }
        if !probe {
            for &(_, pair, _) in &recipients {
                self.count_relayed(pair, payload.len(), now);
                self.counters
                    .relayed_by_delivery
                    .add(lane.delivery(), payload.len());
            }
        }
        self.actions.push_back(Action::Datagram {
            to: recipients,
            sender: from,
            message: ServerDatagram::Deliver {
                from,
                group,
                lane,
                seq: 0,
                payload,
            },
        });
    }

    /// Whether `from` may send a datagram to `destinations` now: a ping or pong goes to one
    /// peer (the client library measures each peer on its own; one to a group would make
    /// every member answer), and every host has a delivery budget
    /// ([`RegistryConfig::datagram_deliveries_per_sec`]). A refusal is counted, not
    /// reported: a datagram may be lost anyway.
    fn admit_datagram(
        &mut self,
        from: HostId,
        probe: bool,
        destinations: usize,
        now: Instant,
    ) -> bool {
        let per_sec = self.config.datagram_deliveries_per_sec;
        let Some(host) = self.hosts.get_mut(host_key(from)) else {
            return false;
        };
        let budget = host
            .datagram_budget
            .get_or_insert_with(|| TokenBucket::new(per_sec, per_sec, now));
        let admitted = (!probe || destinations <= 1)
            && budget.take(u32::try_from(destinations).unwrap_or(u32::MAX), now);
        if !admitted {
            self.counters.datagrams_rate_limited += 1;
        }
        admitted
    }

    /// Records what `from` measured of its peer in `pair` (ProudNet's recent ping).
    pub(super) fn handle_link_report(
        &mut self,
        from: HostId,
        pair: PairId,
        rtt: Option<Duration>,
        last_rtt: Option<Duration>,
        loss: Option<f32>,
    ) {
        let Some(state) = self.pairs.get_member_mut(pair, from) else {
            return;
        };
        state.link = Some(pairs::LinkMeasure {
            rtt,
            last_rtt,
            loss: loss.map(|l| l.clamp(0.0, 1.0)),
        });
    }

    /// Reports to `sender` that a destination was refused, and counts it.
    pub(super) fn refuse(
        &mut self,
        sender: HostId,
        pair: Option<PairId>,
        group: Option<GroupId>,
        reason: RefuseReason,
    ) {
        self.counters.relay_refused += 1;
        self.send(
            sender,
            ServerToClient::Refused {
                pair,
                group,
                reason,
            },
        );
    }

    /// Reports to `sender` every destination of one upload that was refused, in one
    /// frame ([`ServerToClient::Refused`] for one, [`ServerToClient::RefusedMany`] for
    /// more), and counts each.
    pub(crate) fn refuse_many(
        &mut self,
        sender: HostId,
        group: Option<GroupId>,
        mut refused: Vec<(PairId, RefuseReason)>,
    ) {
        match refused.len() {
            0 => {}
            1 => {
                let (pair, reason) = refused.remove(0);
                self.refuse(sender, Some(pair), group, reason);
            }
            n => {
                self.counters.relay_refused += n as u64;
                self.send(sender, ServerToClient::RefusedMany { group, refused });
            }
        }
    }

    /// Counts one delivered message of `bytes` for `pair`; the first one between the two
    /// starts just-in-time punching.
    pub(super) fn count_relayed(&mut self, pair: PairId, bytes: usize, now: Instant) {
        self.counters.relayed += 1;
        self.counters.relayed_bytes += bytes as u64;
        self.relay_rate.add(bytes as u64, now);
        let Some(state) = self.pairs.get_mut(pair) else {
            return;
        };
        state.relayed += 1;
        state.relayed_bytes += bytes as u64;
        if !state.talked {
            // The first user message between the two: just-in-time punching starts now,
            // with no extra round trip from the client.
            state.talked = true;
            self.maybe_punch(pair, now);
        }
    }

    /// Decides one destination: the receiving host, or why not (with the receiver when the
    /// pair is live, so its sequence can skip the message).
    fn relay_verdict(
        &self,
        from: HostId,
        group: Option<GroupId>,
        pair: PairId,
    ) -> Result<HostId, (RefuseReason, Option<HostId>)> {
        let Some(state) = self.pairs.get(pair) else {
            return Err((RefuseReason::UnknownPair, None));
        };
        let Some(to) = state.other(from) else {
            return Err((RefuseReason::UnknownPair, None));
        };
        match group {
            Some(group) => {
                let members = self.groups.get(group_key(group)).map(|g| &g.members);
                if !members.is_some_and(|m| m.contains_key(&from)) {
                    return Err((RefuseReason::SenderNotInGroup, Some(to)));
                }
                if !members.is_some_and(|m| m.contains_key(&to)) {
                    return Err((RefuseReason::DestNotInGroup, Some(to)));
                }
            }
            None if state.shared_groups == 0 => {
                return Err((RefuseReason::NoSharedGroup, Some(to)));
            }
            None => {}
        }
        Ok(to)
    }

    /// A client may always message the server directly; to a group only when the server is
    /// one of its members and so is the sender.
    fn relay_to_server(
        &mut self,
        from: HostId,
        group: Option<GroupId>,
        payload: Bytes,
        delivery: Delivery,
        channel: u8,
    ) {
        if let Some(g) = group {
            let allowed = self.groups.get(group_key(g)).is_some_and(|state| {
                state.options.server_is_member && state.members.contains_key(&from)
            });
            if !allowed {
                self.refuse(from, None, group, RefuseReason::ServerNotMember);
                return;
            }
        }
        self.event(ServerEvent::Message {
            from,
            group,
            payload,
            delivery,
            channel,
        });
    }
}

/// The pairs one upload named so far. Most uploads name a handful, so a short list is
/// searched until it grows.
#[derive(Default)]
struct DestinationSet {
    few: Vec<PairId>,
    many: Option<std::collections::HashSet<PairId>>,
}

impl DestinationSet {
    /// Adds `pair`; false if it was already there.
    fn insert(&mut self, pair: PairId) -> bool {
        if let Some(many) = &mut self.many {
            return many.insert(pair);
        }
        if self.few.contains(&pair) {
            return false;
        }
        self.few.push(pair);
        if self.few.len() > 16 {
            self.many = Some(self.few.drain(..).collect());
        }
        true
    }
}
