//! The main loop: [`World::run`] moves the virtual clock to whatever is due next (an event,
//! the registry's timer, a session's timer) and handles it (a frame or datagram reaching
//! its end of a link, a writer's wake-up, a punch's verdict, a path's death, an application
//! action), then lets every writer with work take what its link allows; past the end it
//! goes on only while something is still on its way, then runs the end checks. Kept apart
//! from the drivers it calls into (server side, client side, direct paths) because it is
//! the only place that decides what happens next.

use super::{Ev, RunStats, World, OVERTIME};
use peergroup_protocol::{HostId, Notice, PathReason, ServerToClient};
use rand::RngExt;
use std::collections::HashMap;
use std::time::Duration;

impl World {
    /// Runs to the end; returns the violations found (empty: every check passed).
    pub fn run(mut self) -> (Vec<String>, RunStats) {
        // Bounded in events too, whatever a bug does to the timers.
        const MAX_EVENTS: u64 = 2_000_000;
        let mut client_ran: HashMap<HostId, Duration> = HashMap::new();
        loop {
            if !self.oracle.violations.is_empty() {
                break;
            }
            if self.stats.events > MAX_EVENTS {
                self.violation(format!("over {MAX_EVENTS} events: a timer spins?"));
                break;
            }
            // The next thing due: an event, the registry's timer, or a session's timer.
            let now = self.clock.elapsed();
            let mut next = self.events.peek_time();
            let mut pick = |t: Duration| next = Some(next.map_or(t, |n: Duration| n.min(t)));
            if let Some(at) = self.registry.poll_timeout() {
                pick(self.clock.offset_of(at).max(now));
            }
            for (&host, client) in &self.clients {
                if let Some(at) = client.timer {
                    // A deadline in the past is due at once, but a session is not run twice
                    // at one instant (its timer task would not either).
                    let mut at = at.max(now);
                    if client_ran.get(&host) == Some(&at) {
                        at += Duration::from_millis(1);
                    }
                    pick(at);
                }
            }
            let Some(next) = next else { break };
            // Past the end only while something is still on its way (a backlogged link, a
            // join or leave waiting for acks), and not for long.
            if next > self.end && (self.settled() || next > self.end + OVERTIME) {
                break;
            }
            self.clock.advance_to(next);
            let now = self.clock.elapsed();
            self.stats.events += 1;
            while let Some((_, event)) = self.events.pop_due(now) {
                self.handle(event);
            }
            let instant = self.clock.now();
            if self.registry.poll_timeout().is_some_and(|at| at <= instant) {
                self.registry.handle_timeout(instant);
                self.dispatch();
                self.check_pairs();
            }
            let due: Vec<HostId> = self
                .clients
                .iter()
                .filter(|(_, c)| c.timer.is_some_and(|at| at <= now))
                .map(|(h, _)| *h)
                .collect();
            for host in due {
                if client_ran.get(&host) == Some(&now) {
                    continue;
                }
                client_ran.insert(host, now);
                if let Some(client) = self.clients.get_mut(&host) {
                    client.session.handle_timeout(instant);
                }
                self.flush(host);
            }
            self.pump();
        }
        self.finish();
        self.stats.delivered = self.oracle.delivered;
        self.stats.required = self.oracle.required;
        (self.oracle.violations, self.stats)
    }

    /// Whether nothing is on its way: no writer has a backlog, no join or leave waits.
    fn settled(&self) -> bool {
        self.registry.pending_acks() == 0
            && self.clients.values().all(|c| {
                c.up_main.is_idle()
                    && c.up_control.is_idle()
                    && c.down.is_idle()
                    && c.directs.values().all(|d| d.writer.is_idle())
            })
    }

    /// Lets every writer with work take what its link allows now.
    fn pump(&mut self) {
        let now = self.clock.elapsed();
        let mut wakes = Vec::new();
        let mut arrivals: Vec<(Duration, Ev)> = Vec::new();
        for host in std::mem::take(&mut self.dirty) {
            let Some(client) = self.clients.get_mut(&host) else {
                continue;
            };
            let rng = &mut self.rng;
            let mut wake = None;
            let mut note = |at: Option<Duration>| {
                if let Some(at) = at {
                    wake = Some(wake.map_or(at, |w: Duration| w.min(at)));
                }
            };
            note(client.up_main.pump(rng, now, |frame, at| {
                arrivals.push((at, Ev::ServerFrame { from: host, frame }))
            }));
            note(client.up_control.pump(rng, now, |frame, at| {
                arrivals.push((at, Ev::ServerFrame { from: host, frame }))
            }));
            note(client.down.pump(rng, now, |frame, at| {
                arrivals.push((at, Ev::ClientFrame { to: host, frame }))
            }));
            for (&peer, direct) in &mut client.directs {
                let conn = direct.conn;
                let log = &mut direct.sent_log;
                note(direct.writer.pump(rng, now, |(frame, id), at| {
                    if id != 0 {
                        log.push(id);
                    }
                    arrivals.push((
                        at,
                        Ev::PeerFrame {
                            conn,
                            to: peer,
                            from: host,
                            frame,
                        },
                    ))
                }));
            }
            if let Some(at) = wake {
                wakes.push((at, host));
            }
        }
        for (at, ev) in arrivals {
            self.events.push(at, ev);
        }
        for (at, host) in wakes {
            self.events.push(at, Ev::Wake(host));
        }
    }

    fn handle(&mut self, event: Ev) {
        if self.trace {
            eprintln!("{:?} {event:?}", self.clock.elapsed());
        }
        let now = self.clock.now();
        match event {
            Ev::Wake(host) => {
                self.dirty.insert(host);
            }
            Ev::Act => {
                self.act();
                if self.clock.elapsed() < self.shape.active {
                    let gap = self.rng.random_range(1..=2 * self.shape.mean_gap_ms);
                    self.events
                        .push(self.clock.elapsed() + Duration::from_millis(gap), Ev::Act);
                }
            }
            Ev::ServerFrame { from, frame } => {
                if !self.registry.is_connected(from) {
                    return;
                }
                if let Err(error) = self.registry.handle_frame(from, frame, now) {
                    self.violation(format!("the registry refused a frame of {from}: {error}"));
                }
                self.dispatch();
            }
            Ev::ServerDatagram { from, datagram } => {
                if self.registry.is_connected(from) {
                    self.registry.handle_datagram(from, datagram, now);
                    self.dispatch();
                }
            }
            Ev::ClientFrame { to, frame } => {
                if !self.clients.contains_key(&to) {
                    return;
                }
                if let ServerToClient::Notices(notices) = &frame {
                    for notice in notices {
                        match notice {
                            Notice::MemberJoined {
                                group,
                                member,
                                membership,
                                ..
                            } => {
                                self.told_membership
                                    .insert((to, *group, *member), *membership);
                            }
                            Notice::MemberLeft { group, member, .. } => {
                                self.told_membership.remove(&(to, *group, *member));
                            }
                            _ => {}
                        }
                    }
                }
                let Some(client) = self.clients.get_mut(&to) else {
                    return;
                };
                if let Err(error) = client.session.handle_frame(frame, now) {
                    self.violation(format!("{to} refused a server frame: {error}"));
                }
                self.flush(to);
            }
            Ev::ClientDatagram { to, datagram } => {
                if let Some(client) = self.clients.get_mut(&to) {
                    client.session.handle_datagram(datagram, now);
                    self.flush(to);
                }
            }
            Ev::PeerFrame {
                conn,
                to,
                from,
                frame,
            } => {
                if !self.conns.get(&conn).is_some_and(|c| c.alive) {
                    return; // lost with its path
                }
                let Some(direct) = self
                    .clients
                    .get_mut(&to)
                    .and_then(|c| c.directs.get_mut(&from))
                    .filter(|d| d.conn == conn)
                else {
                    return; // that end is closed
                };
                if direct.paused {
                    direct.held.push_back(frame);
                    return;
                }
                self.peer_frame(to, from, frame);
                self.flush(to);
            }
            Ev::PeerDatagram {
                conn,
                to,
                from,
                datagram,
            } => {
                if !self.conns.get(&conn).is_some_and(|c| c.alive) {
                    return;
                }
                let Some(client) = self.clients.get_mut(&to) else {
                    return;
                };
                if client.directs.get(&from).is_some_and(|d| d.conn == conn) {
                    client.session.handle_peer_datagram(from, datagram, now);
                    self.flush(to);
                }
            }
            Ev::PunchEnd {
                host,
                pair,
                attempt,
                conn,
            } => self.punch_end(host, pair, attempt, conn),
            Ev::PathDeath { conn } => {
                let Some(c) = self.conns.get_mut(&conn) else {
                    return;
                };
                if !c.alive {
                    return;
                }
                c.alive = false;
                self.stats.deaths += 1;
                let hosts = c.hosts;
                // Each side finds out when its idle timer runs out; with a longer one the
                // session's own ack timeout (5 s) gives up first, and the driver closes it.
                for host in [hosts.0, hosts.1] {
                    let after = Duration::from_millis(self.rng.random_range(300..=8_000));
                    self.events.push(
                        self.clock.elapsed() + after,
                        Ev::ConnLost {
                            conn,
                            host,
                            reason: PathReason::DirectTimedOut,
                        },
                    );
                }
            }
            Ev::ConnLost { conn, host, reason } => self.close_direct(host, conn, reason),
        }
    }
}
