//! The server's driver, as the simulation does it: the registry's actions carried out into
//! the per-client queues and datagrams, what the server application would be told and
//! checked against the ops waiting for it, and the pair-linger check on the registry's side.
//! One file for one end of every link; the client's end is in `client_side.rs`.

use super::{frame_len_down, ordered, Ev, PendingOp, World};
use peergroup_protocol::{
    DatagramLane, GroupId, HostId, Notice, PunchOrder, ServerDatagram, ServerToClient,
};
use peergroup_server::registry::{punch_start_delays, Action, NoticeOrder};
use peergroup_server::{JoinAckError, LeaveAckError, ServerEvent};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Duration;

impl World {
    /// Carries out the registry's actions as the server's driver does: notices gathered
    /// into one frame per host, queued ahead of or behind the messages their order names.
    pub(super) fn dispatch(&mut self) {
        #[derive(Default)]
        struct Gathered {
            notices: Vec<Notice>,
            after: Vec<HostId>,
            after_all: bool,
        }
        let mut gathered: BTreeMap<HostId, Gathered> = BTreeMap::new();
        let mut events = Vec::new();
        while let Some(action) = self.registry.poll_action() {
            match action {
                Action::Notice { to, notice, order } => {
                    match &notice {
                        Notice::MemberJoined {
                            group,
                            member,
                            membership,
                            ..
                        } => {
                            self.server_membership
                                .insert((*group, *member), *membership);
                        }
                        Notice::MemberLeft { group, member, .. } if *member == to => {
                            self.server_membership.remove(&(*group, *member));
                        }
                        _ => {}
                    }
                    let g = gathered.entry(to).or_default();
                    g.notices.push(notice);
                    match order {
                        NoticeOrder::AheadOfMessages => {}
                        NoticeOrder::AfterMessagesFrom(sender) => g.after.push(sender),
                        NoticeOrder::AfterAllMessages => g.after_all = true,
                    }
                }
                Action::Send { to, message } => {
                    if !matches!(message, ServerToClient::PeerUp { .. }) {
                        if let Some(g) = gathered.remove(&to) {
                            self.send_notices(to, g.notices, &g.after, g.after_all);
                        }
                    }
                    let Some(client) = self.clients.get_mut(&to) else {
                        continue;
                    };
                    let len = frame_len_down(&message);
                    if let ServerToClient::PeerDown { peer, .. } = &message {
                        client.down.queue.promote_flow(peer.raw());
                    }
                    client.down.push_control(message, len);
                    self.dirty.insert(to);
                }
                Action::Disconnect { host, reason } => {
                    self.violation(format!("the registry disconnects {host}: {reason}"));
                }
                Action::SendData {
                    to,
                    message,
                    priority,
                    from,
                    latest,
                } => {
                    if let Some(client) = self.clients.get_mut(&to) {
                        // As `server/src/outbound.rs`: an older latest value than the one
                        // queued is dropped, not put in its place.
                        let seq_of = |m: &ServerToClient| match m {
                            ServerToClient::Deliver { seq, .. } => Some(*seq),
                            _ => None,
                        };
                        if let Some(key) = latest {
                            let queued = client.down.queue.queued_latest(from.raw(), key);
                            if let (Some(old), Some(new)) =
                                (queued.and_then(seq_of), seq_of(&message))
                            {
                                if old > new {
                                    continue;
                                }
                            }
                        }
                        let len = frame_len_down(&message);
                        client
                            .down
                            .push_data(message, len, priority, from.raw(), latest);
                        self.dirty.insert(to);
                    }
                }
                Action::Datagram { to, message, .. } => {
                    let to = to.into_iter().map(|(host, _, number)| (host, number));
                    self.send_datagrams(to.collect(), message);
                }
                Action::AppDatagram { to, message } => self.send_datagrams(to, message),
                Action::Event(event) => events.push(event),
                Action::ResumeWindowEnded { host } => {
                    // Nothing here goes offline: the simulator does not model resume.
                    self.violation(format!("{host}'s resume window ended, never offline"));
                }
                Action::Punch {
                    pair,
                    attempt,
                    controlling,
                    controlled,
                    candidates_of_controlling,
                    candidates_of_controlled,
                } => {
                    let rtt = |w: &World, h: HostId| {
                        w.clients.get(&h).map_or(Duration::ZERO, |c| {
                            c.up_main.params.latency + c.down.params.latency
                        })
                    };
                    let (delay_a, delay_b) =
                        punch_start_delays(rtt(self, controlling), rtt(self, controlled));
                    let secret = [7u8; 32];
                    let order = |peer, candidates, delay: Duration, controlling| {
                        ServerToClient::PunchOrder(PunchOrder {
                            peer,
                            pair,
                            attempt,
                            secret,
                            candidates,
                            start_in_ms: delay.as_millis().min(10_000) as u32,
                            controlling,
                        })
                    };
                    let to_a = order(controlled, candidates_of_controlled, delay_a, true);
                    let to_b = order(controlling, candidates_of_controlling, delay_b, false);
                    for (host, frame) in [(controlling, to_a), (controlled, to_b)] {
                        if let Some(g) = gathered.remove(&host) {
                            self.send_notices(host, g.notices, &g.after, g.after_all);
                        }
                        if let Some(client) = self.clients.get_mut(&host) {
                            client.down.push_control(frame, 64);
                            self.dirty.insert(host);
                        }
                    }
                }
            }
        }
        for (to, g) in gathered {
            self.send_notices(to, g.notices, &g.after, g.after_all);
        }
        for event in events {
            self.server_event(event);
        }
    }

    fn send_notices(&mut self, to: HostId, notices: Vec<Notice>, after: &[HostId], all: bool) {
        let Some(client) = self.clients.get_mut(&to) else {
            return;
        };
        if all {
            client.down.queue.promote_flows(|_| true);
        } else if !after.is_empty() {
            client
                .down
                .queue
                .promote_flows(|flow| after.iter().any(|h| h.raw() == flow));
        }
        let frame = ServerToClient::Notices(notices);
        let len = frame_len_down(&frame);
        client.down.push_control(frame, len);
        self.dirty.insert(to);
    }

    fn send_datagrams(&mut self, to: Vec<(HostId, u64)>, mut message: ServerDatagram) {
        let now = self.clock.elapsed();
        for (host, number) in to {
            let Some(client) = self.clients.get(&host) else {
                continue;
            };
            let ServerDatagram::Deliver { lane, seq, .. } = &mut message;
            if matches!(lane, DatagramLane::Sequenced { .. }) {
                *seq = number;
            }
            if let Some(at) = client.down.params.datagram_arrival(&mut self.rng, now) {
                self.events.push(
                    at,
                    Ev::ClientDatagram {
                        to: host,
                        datagram: message.clone(),
                    },
                );
            }
        }
    }

    /// What the server application would be told.
    fn server_event(&mut self, event: ServerEvent) {
        match event {
            ServerEvent::JoinAckComplete {
                group,
                member,
                result,
            } => {
                let Some(op) = self
                    .pending_joins
                    .get_mut(&(group, member))
                    .and_then(VecDeque::pop_front)
                else {
                    self.violation(format!("a join of {member} to {group} completed twice"));
                    return;
                };
                self.stats.ops_completed += 1;
                let explained = match result {
                    Ok(()) => true,
                    Err(JoinAckError::MemberLeft) => self.left_since(group, member, op),
                    Err(JoinAckError::Disconnected) => self.disconnected_since(member, op),
                    Err(JoinAckError::GroupDestroyed) => self.destroyed_since(group, op),
                    Err(_) => false,
                };
                if !explained {
                    self.violation(format!("join of {member} to {group} ended {result:?}"));
                }
            }
            ServerEvent::LeaveAckComplete {
                group,
                member,
                result,
            } => {
                let Some(op) = self
                    .pending_leaves
                    .get_mut(&(group, member))
                    .and_then(VecDeque::pop_front)
                else {
                    self.violation(format!("a leave of {member} from {group} completed twice"));
                    return;
                };
                self.stats.ops_completed += 1;
                let explained = match result {
                    Ok(()) => true,
                    Err(LeaveAckError::Disconnected) => self.disconnected_since(member, op),
                    Err(LeaveAckError::GroupDestroyed) => self.destroyed_since(group, op),
                    Err(_) => false,
                };
                if !explained {
                    self.violation(format!("leave of {member} from {group} ended {result:?}"));
                }
            }
            _ => {}
        }
    }

    fn left_since(&self, group: GroupId, member: HostId, op: PendingOp) -> bool {
        self.last_leave
            .get(&(group, member))
            .is_some_and(|&at| at > op.started)
    }

    fn disconnected_since(&self, member: HostId, op: PendingOp) -> bool {
        self.disconnected
            .get(&member)
            .is_some_and(|&at| at >= op.started)
    }

    fn destroyed_since(&self, group: GroupId, op: PendingOp) -> bool {
        self.destroyed
            .get(&group)
            .is_some_and(|&at| at >= op.started)
    }

    /// Pair linger, on the registry's side: two hosts that share a group have a pair; one
    /// that shares none any more keeps it for the linger time, not less and not more.
    pub(super) fn check_pairs(&mut self) {
        let now = self.clock.elapsed();
        let linger = self.shape.linger;
        let hosts: Vec<HostId> = self.clients.keys().copied().collect();
        let groups: HashMap<HostId, BTreeSet<GroupId>> = hosts
            .iter()
            .map(|&h| {
                let groups = self.registry.groups_of(h).unwrap_or_default();
                (h, groups.into_iter().collect())
            })
            .collect();
        let mut problems = Vec::new();
        for (i, &a) in hosts.iter().enumerate() {
            for &b in &hosts[i + 1..] {
                let key = ordered(a, b);
                let shares = !groups[&a].is_disjoint(&groups[&b]);
                let pair = self.registry.pair_between(a, b);
                if shares {
                    self.unshared_since.remove(&key);
                    if pair.is_none() {
                        problems.push(format!("{a} and {b} share a group but have no pair"));
                    }
                } else if self.had_pair.contains(&key) || pair.is_some() {
                    let since = *self.unshared_since.entry(key).or_insert(now);
                    match pair {
                        Some(_) if now > since + linger => problems.push(format!(
                            "the pair of {a} and {b} outlived its linger ({linger:?} from {since:?})"
                        )),
                        None if self.had_pair.contains(&key) && now < since + linger => {
                            problems.push(format!(
                                "the pair of {a} and {b} ended before its linger ({linger:?} from {since:?})"
                            ))
                        }
                        _ => {}
                    }
                }
                if pair.is_some() {
                    self.had_pair.insert(key);
                } else {
                    self.had_pair.remove(&key);
                }
            }
        }
        for problem in problems {
            self.violation(problem);
        }
    }
}
