//! Punching and direct connections: a punch order started on one side, its end when both
//! sides are ready or its window runs out (by the two hosts' NATs), and closing a direct
//! connection on one side or both. Kept together because this is where a [`super::Conn`] is
//! made and where each side closes it.

use super::{Conn, Direct, Ev, World, PUNCH_WINDOW};
use crate::simulator::net::{LinkParams, StreamWriter};
use peergroup_protocol::{ClientToServer, HostId, PairId, PathReason, PunchOrder, PunchOutcome};
use rand::RngExt;
use std::collections::VecDeque;
use std::time::Duration;

impl World {
    pub(super) fn start_punch(&mut self, host: HostId, order: PunchOrder) {
        let now = self.clock.elapsed();
        let Some(client) = self.clients.get_mut(&host) else {
            return;
        };
        if !client.direct_enabled {
            client.up_control.push_control(
                ClientToServer::PunchReport {
                    pair: order.pair,
                    attempt: order.attempt,
                    outcome: PunchOutcome::Declined,
                },
                24,
            );
            self.dirty.insert(host);
            return;
        }
        if client.directs.contains_key(&order.peer) || client.punches.contains_key(&order.pair) {
            return; // already direct, or already punching: a stale order
        }
        if client.session.pair_of(order.peer) != Some(order.pair) {
            return;
        }
        client.punches.insert(order.pair, order.attempt);
        let ready = now + Duration::from_millis(u64::from(order.start_in_ms));
        // This side gives up after the window unless the connection came up first.
        self.events.push(
            ready + PUNCH_WINDOW,
            Ev::PunchEnd {
                host,
                pair: order.pair,
                attempt: order.attempt,
                conn: None,
            },
        );
        let sides = self
            .attempts
            .entry((order.pair, order.attempt))
            .or_default();
        sides.push((host, ready));
        if sides.len() != 2 {
            return;
        }
        let (a, ready_a) = sides[0];
        let (b, ready_b) = sides[1];
        let (Some(nat_a), Some(nat_b)) = (
            self.clients.get(&a).map(|c| c.nat),
            self.clients.get(&b).map(|c| c.nat),
        ) else {
            return; // one side is gone
        };
        if !nat_a.can_punch(nat_b) || !self.rng.random_bool(0.9) {
            return; // both sides time out
        }
        let params = LinkParams::random(&mut self.rng, 2, 60);
        let conn = self.next_conn;
        self.next_conn += 1;
        self.conns.insert(
            conn,
            Conn {
                hosts: (a, b),
                alive: true,
                closed: (false, false),
                params,
            },
        );
        let up = ready_a.max(ready_b) + params.latency * 3;
        for (side, extra) in [(a, Duration::ZERO), (b, params.latency)] {
            self.events.push(
                up + extra,
                Ev::PunchEnd {
                    host: side,
                    pair: order.pair,
                    attempt: order.attempt,
                    conn: Some(conn),
                },
            );
        }
        // Some direct paths die on their own later (while the application acts: the
        // drain is for settling).
        if self.rng.random_bool(0.3) {
            let at = up + Duration::from_millis(self.rng.random_range(100..=6_000));
            if at < self.shape.active {
                self.events.push(at, Ev::PathDeath { conn });
            }
        }
    }

    pub(super) fn punch_end(
        &mut self,
        host: HostId,
        pair: PairId,
        attempt: u32,
        conn: Option<u64>,
    ) {
        let now = self.clock.now();
        let Some(client) = self.clients.get_mut(&host) else {
            return;
        };
        if client.punches.get(&pair) != Some(&attempt) {
            return; // settled already
        }
        client.punches.remove(&pair);
        let Some(conn) = conn else {
            client.up_control.push_control(
                ClientToServer::PunchReport {
                    pair,
                    attempt,
                    outcome: PunchOutcome::NoResponse,
                },
                24,
            );
            self.dirty.insert(host);
            return;
        };
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let peer = c.other(host);
        let usable = c.alive && !c.closed.0 && !c.closed.1;
        let current = client.session.pair_of(peer) == Some(pair);
        if !usable || !current || client.directs.contains_key(&peer) {
            // Not needed, or closed by the other side already: close it.
            self.close_conn(host, conn);
            return;
        }
        let rtt = c.params.latency * 2;
        client.directs.insert(
            peer,
            Direct {
                conn,
                writer: StreamWriter::new(c.params),
                sent_log: Vec::new(),
                paused: false,
                held: VecDeque::new(),
            },
        );
        client.session.set_direct(peer, rtt, now);
        client.up_control.push_control(
            ClientToServer::PunchReport {
                pair,
                attempt,
                outcome: PunchOutcome::Direct {
                    rtt_us: rtt.as_micros() as u32,
                },
            },
            24,
        );
        self.flush(host);
    }

    /// `host` closes (or has lost) its end of `conn`: the session goes back to the relay
    /// for that peer, and the other side hears of it one latency later if the path lives.
    pub(super) fn close_direct(&mut self, host: HostId, conn: u64, reason: PathReason) {
        let now = self.clock.now();
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let peer = c.other(host);
        let Some(client) = self.clients.get_mut(&host) else {
            return;
        };
        if client.directs.get(&peer).is_some_and(|d| d.conn == conn) {
            client.directs.remove(&peer);
            client.session.set_relay(peer, reason, now);
        }
        self.close_conn(host, conn);
        self.flush(host);
    }

    pub(super) fn close_conn(&mut self, host: HostId, conn: u64) {
        let latency = {
            let Some(c) = self.conns.get_mut(&conn) else {
                return;
            };
            if std::mem::replace(c.closed_by(host), true) {
                return;
            }
            c.alive.then_some(c.params.latency)
        };
        let other = self.conns[&conn].other(host);
        if let Some(latency) = latency {
            self.events.push(
                self.clock.elapsed() + latency,
                Ev::ConnLost {
                    conn,
                    host: other,
                    reason: PathReason::DirectClosed,
                },
            );
        }
    }
}
