//! The client's driver, as the simulation does it: carrying out what a session asks after
//! each input (frames to the server, datagrams, direct frames, punch orders), resuming
//! reading from a paused direct peer, the session's events handed to the oracle, and frames
//! read off a direct connection. The client's end of every link; the server's end is in
//! `server_side.rs`, the direct connections themselves in `direct.rs`.

use super::{frame_len_peer, frame_len_up, Ev, World};
use peergroup_client::fuzzing::Upload;
use peergroup_client::ClientEvent;
use peergroup_protocol::{HostId, PairPath, PathReason, PeerToPeer};

impl World {
    /// Carries out what the session of `host` asks after an input, as the client driver
    /// does, and hands its events to the oracle.
    pub(super) fn flush(&mut self, host: HostId) {
        let now = self.clock.elapsed();
        loop {
            let Some(client) = self.clients.get_mut(&host) else {
                return;
            };
            let mut closing = Vec::new();
            let mut orders = Vec::new();
            while let Some(upload) = client.session.poll_upload() {
                match upload {
                    Upload::Control(frame) => {
                        let len = frame_len_up(&frame);
                        client.up_control.push_control(frame, len);
                    }
                    Upload::Relay {
                        frame,
                        priority,
                        flow,
                        latest,
                    } => {
                        let len = frame_len_up(&frame);
                        client.up_main.push_data(frame, len, priority, flow, latest);
                    }
                    Upload::Datagram(datagram) => {
                        if let Some(at) = client.up_main.params.datagram_arrival(&mut self.rng, now)
                        {
                            self.events.push(
                                at,
                                Ev::ServerDatagram {
                                    from: host,
                                    datagram,
                                },
                            );
                        }
                    }
                    Upload::Peer {
                        to,
                        frame,
                        priority,
                        latest,
                        id,
                    } => {
                        let Some(direct) = client.directs.get_mut(&to) else {
                            continue;
                        };
                        let len = frame_len_peer(&frame);
                        if let Some((_, replaced)) =
                            direct
                                .writer
                                .push_data((frame, id), len, priority, 0, latest)
                        {
                            client.session.forget_replaced(to, replaced);
                        }
                    }
                    Upload::PeerControl { to, frame } => {
                        if let Some(direct) = client.directs.get_mut(&to) {
                            let len = frame_len_peer(&frame);
                            direct.writer.push_control((frame, 0), len);
                        }
                    }
                    Upload::PeerDatagram { to, datagram } => {
                        let Some(direct) = client.directs.get(&to) else {
                            continue;
                        };
                        let conn = direct.conn;
                        let Some(c) = self.conns.get(&conn) else {
                            continue;
                        };
                        if let Some(at) = c.params.datagram_arrival(&mut self.rng, now) {
                            self.events.push(
                                at,
                                Ev::PeerDatagram {
                                    conn,
                                    to,
                                    from: host,
                                    datagram,
                                },
                            );
                        }
                    }
                }
            }
            while let Some(order) = client.session.poll_punch_order() {
                orders.push(order);
            }
            while let Some(peer) = client.session.poll_stalled_link() {
                closing.push(peer);
            }
            while let Some(peer) = client.session.poll_ended_pair() {
                closing.push(peer);
            }
            let mut resumed = Vec::new();
            while let Some(peer) = client.session.poll_resumed_reader() {
                resumed.push(peer);
            }
            let mut events = Vec::new();
            while let Some(event) = client.session.poll_event() {
                events.push(event);
            }
            let idle =
                orders.is_empty() && closing.is_empty() && resumed.is_empty() && events.is_empty();
            for event in events {
                self.client_event(host, event);
            }
            for order in orders {
                self.start_punch(host, order);
            }
            for peer in closing {
                let conn = self
                    .clients
                    .get(&host)
                    .and_then(|c| c.directs.get(&peer))
                    .map(|d| d.conn);
                if let Some(conn) = conn {
                    self.close_direct(host, conn, PathReason::DirectClosed);
                }
            }
            for peer in resumed {
                self.resume_reading(host, peer);
            }
            if idle {
                self.dirty.insert(host);
                // Nothing more can come of this input until the next one.
                if let Some(client) = self.clients.get_mut(&host) {
                    client.timer = client
                        .session
                        .poll_timeout()
                        .map(|at| self.clock.offset_of(at));
                }
                return;
            }
        }
    }

    fn resume_reading(&mut self, host: HostId, peer: HostId) {
        loop {
            let Some(direct) = self
                .clients
                .get_mut(&host)
                .and_then(|c| c.directs.get_mut(&peer))
            else {
                return;
            };
            direct.paused = false;
            let Some(frame) = direct.held.pop_front() else {
                return;
            };
            self.peer_frame(host, peer, frame);
            let paused = self
                .clients
                .get(&host)
                .and_then(|c| c.directs.get(&peer))
                .is_none_or(|d| d.paused);
            if paused {
                return;
            }
        }
    }

    fn client_event(&mut self, host: HostId, event: ClientEvent) {
        if self.trace {
            eprintln!("{:?} {host} event {event:?}", self.clock.elapsed());
        }
        match event {
            ClientEvent::MemberJoined { group, member, .. } => {
                self.oracle.view_joined(host, group, member)
            }
            ClientEvent::MemberLeft { group, member, .. } => {
                self.oracle.view_left(host, group, member)
            }
            ClientEvent::Message {
                from,
                group,
                payload,
                delivery,
                channel,
                path,
            } => {
                if path == peergroup_protocol::Path::Direct {
                    self.stats.direct_deliveries += 1;
                }
                let before = self.oracle.violations.len();
                self.oracle
                    .delivered(host, from, group, &payload, delivery, channel);
                if self.oracle.violations.len() > before {
                    let last = self.oracle.violations.pop().unwrap_or_default();
                    self.violation(format!("{last} (path {path:?})"));
                }
            }
            ClientEvent::PathChanged { path, .. } => match path {
                PairPath::Direct => self.stats.to_direct += 1,
                _ => self.stats.to_relay += 1,
            },
            ClientEvent::PeerIgnored { peer, fault } => {
                self.violation(format!("{host} ignores its peer {peer}: {fault:?}"));
            }
            _ => {}
        }
    }

    /// A frame read from the direct connection of `to` with `from`.
    pub(super) fn peer_frame(&mut self, to: HostId, from: HostId, frame: PeerToPeer) {
        let now = self.clock.now();
        let Some(client) = self.clients.get_mut(&to) else {
            return;
        };
        let result = match frame {
            PeerToPeer::Ack { received } => {
                // Acks count frames in the order they left the queue: hand that over first.
                if let Some(direct) = client.directs.get_mut(&from) {
                    let sent = std::mem::take(&mut direct.sent_log);
                    client.session.handle_direct_sent(from, sent);
                }
                client.session.handle_direct_ack(from, received)
            }
            frame => client.session.handle_peer_frame(from, frame, now),
        };
        if let Err(error) = result {
            self.violation(format!(
                "{to} refused a frame of its direct peer {from}: {error}"
            ));
            return;
        }
        if client.session.direct_reading_paused(from) {
            if let Some(direct) = client.directs.get_mut(&from) {
                direct.paused = true;
            }
        }
    }
}
