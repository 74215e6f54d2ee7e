//! The sans-IO core of the client: what it knows of its groups and peers, the per-pair
//! sequence numbers, and how a send becomes uploads.
//!
//! Frames from the server go in through [`Session::handle_frame`]; events for the
//! application and frames for the server come out of [`Session::poll_event`] and
//! [`Session::poll_frame`]. No IO, no clock.

use crate::error::SendError;
use crate::events::ClientEvent;
use crate::sequencing::{Rejected, ReliableReceiver, Slot};
use bytes::Bytes;
use peergroup_protocol::{
    ClientDatagram, ClientToServer, Delivery, GroupId, HostId, PairId, PairPath, Path, PathReason,
    PeerInfo, PeerToPeer, PunchOrder, RelayDest, ServerDatagram, ServerToClient,
    DATAGRAM_DELIVER_OVERHEAD,
};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Duration;

/// Where a message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Target {
    /// One host: a peer, the server ([`HostId::SERVER`]) or this client itself.
    Host(HostId),
    /// Every other member of a group this client is in (the server too, when it is a
    /// member), as this client knows the group when it sends: a member whose join notice
    /// has not arrived yet is not included (each destination needs its pair's sequence
    /// number). One upload, fanned out by the server.
    Group(GroupId),
    /// As [`Target::Group`], and delivered to this client as well, locally.
    GroupLoopback(GroupId),
    /// The server application.
    Server,
    /// Several hosts; duplicates are sent once.
    Hosts(Vec<HostId>),
}

/// One message to send, ready to encode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Upload {
    /// On the server connection's control stream.
    Frame(ClientToServer),
    /// In a QUIC datagram to the server.
    Datagram(ClientDatagram),
    /// On the direct connection to a peer.
    Peer {
        /// The peer.
        to: HostId,
        /// The frame.
        frame: PeerToPeer,
    },
    /// In a QUIC datagram on the direct connection to a peer (the server's datagram
    /// layout, with this client as the sender).
    PeerDatagram {
        /// The peer.
        to: HostId,
        /// The datagram.
        datagram: ServerDatagram,
    },
}

/// Messages and bytes one way on one path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathCounters {
    /// Messages.
    pub messages: u64,
    /// Payload bytes.
    pub bytes: u64,
}

/// What the client measures about one peer (ProudNet's `GetP2PConnectionStats` and
/// `GetP2PRecentPingMs`, client side).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerStats {
    /// The path messages to this peer take now.
    pub path: Option<PairPath>,
    /// Smoothed RTT of the direct path while it is up (`None` on the relay; the server's
    /// RTT is [`Client::server_rtt`](crate::Client::server_rtt)).
    pub direct_rtt: Option<Duration>,
    /// Sent through the relay.
    pub relay_sent: PathCounters,
    /// Received through the relay.
    pub relay_received: PathCounters,
    /// Sent on the direct path.
    pub direct_sent: PathCounters,
    /// Received on the direct path.
    pub direct_received: PathCounters,
    /// Reliable messages sent direct and not yet acknowledged.
    pub unacked: usize,
    /// Punch orders received for this peer.
    pub punch_attempts: u32,
    /// Punch attempts that ended direct.
    pub punch_successes: u32,
    /// Relayed messages discarded because the peer sent them so far ahead of a gap in its
    /// sequence that holding them would exceed 16 MiB (a misbehaving peer).
    pub discarded: u64,
}

/// What the client knows about one peer.
#[derive(Debug)]
struct Peer {
    pair: PairId,
    info: PeerInfo,
    next_seq: u64,
    receiver: ReliableReceiver<(Option<GroupId>, Bytes, Path)>,
    path: PairPath,
    /// Reliable messages sent direct, kept until the peer acks them, to be sent again
    /// through the relay if the direct path dies first.
    unacked: VecDeque<(u64, Option<GroupId>, Bytes)>,
    /// The last `delivered` this client acked to the peer.
    acked: u64,
    stats: PeerStats,
}

impl Peer {
    fn new(pair: PairId, info: PeerInfo, window: u64) -> Self {
        Self {
            pair,
            info,
            next_seq: 1,
            receiver: ReliableReceiver::new(window),
            path: PairPath::Relay,
            unacked: VecDeque::new(),
            acked: 0,
            stats: PeerStats {
                path: Some(PairPath::Relay),
                ..PeerStats::default()
            },
        }
    }
}

/// Bytes of early arrivals a receiver holds for one peer before it stops reading that
/// peer's direct connection until the relay catches up (QUIC flow control then pauses
/// the sender).
pub(crate) const MAX_HELD_BYTES: usize = 4 << 20;
/// Bytes of early arrivals held for one peer past which further *relayed* early arrivals
/// are discarded. The relay cannot be paused for one peer without pausing all of them, and
/// a well-behaved sender never gets this far ahead on it.
pub(crate) const MAX_HELD_BYTES_RELAYED: usize = 16 << 20;
/// Acknowledge after this many direct messages, besides the driver's periodic flush.
const ACK_EVERY: u64 = 32;

/// Upper bounds of encoded sizes, used to split long destination lists.
const UPLOAD_FIXED_OVERHEAD: usize = 1 + 11 + 1 + 5 + 5;
const RELIABLE_DEST_LEN: usize = 20;
const DATAGRAM_DEST_LEN: usize = 10;

/// The client's view of its groups and peers.
#[derive(Debug)]
pub(crate) struct Session {
    host_id: HostId,
    max_frame_len: usize,
    receive_window: u64,
    groups: BTreeMap<GroupId, BTreeSet<HostId>>,
    peers: HashMap<HostId, Peer>,
    events: VecDeque<ClientEvent>,
    frames: VecDeque<ClientToServer>,
    punch_orders: VecDeque<PunchOrder>,
    peer_frames: VecDeque<(HostId, PeerToPeer)>,
    ended_pairs: VecDeque<HostId>,
}

impl Session {
    /// A session for `host_id`; reliable messages may arrive at most `receive_window`
    /// sequence numbers ahead of the next one due.
    pub fn new(host_id: HostId, max_frame_len: u32, receive_window: u64) -> Self {
        Self {
            host_id,
            max_frame_len: max_frame_len as usize,
            receive_window,
            groups: BTreeMap::new(),
            peers: HashMap::new(),
            events: VecDeque::new(),
            frames: VecDeque::new(),
            punch_orders: VecDeque::new(),
            peer_frames: VecDeque::new(),
            ended_pairs: VecDeque::new(),
        }
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// The next frame for the server (acks).
    pub fn poll_frame(&mut self) -> Option<ClientToServer> {
        self.frames.pop_front()
    }

    /// The next punch order for the driver, for a peer this session knows.
    #[allow(dead_code)] // taken by the driver once direct paths are wired in
    pub fn poll_punch_order(&mut self) -> Option<PunchOrder> {
        self.punch_orders.pop_front()
    }

    /// Takes one frame from the server's control stream.
    ///
    /// # Errors
    /// A description of the violation when the server sent something out of place; the
    /// caller closes the connection with `ProtocolViolation`.
    pub fn handle_frame(&mut self, frame: ServerToClient) -> Result<(), String> {
        match frame {
            ServerToClient::Welcome { .. } => return Err("a second welcome".into()),
            ServerToClient::PeerUp { peer, pair, info } => {
                self.peers
                    .insert(peer, Peer::new(pair, info, self.receive_window));
            }
            ServerToClient::PeerDown { peer, pair } => {
                if self.peers.get(&peer).is_some_and(|p| p.pair == pair) {
                    let ended = self.peers.remove(&peer);
                    if ended.is_some_and(|p| p.path == PairPath::Direct) {
                        self.ended_pairs.push_back(peer);
                    }
                }
            }
            ServerToClient::MemberJoined {
                group,
                member,
                member_count,
                join_message,
            } => {
                self.groups.entry(group).or_default().insert(member);
                self.frames
                    .push_back(ClientToServer::JoinAck { group, member });
                let peer = self.peers.get(&member).map(|p| p.info.clone());
                self.events.push_back(ClientEvent::MemberJoined {
                    group,
                    member,
                    member_count,
                    join_message,
                    peer,
                });
            }
            ServerToClient::MemberLeft {
                group,
                member,
                member_count,
            } => {
                if member == self.host_id {
                    self.groups.remove(&group);
                } else if let Some(members) = self.groups.get_mut(&group) {
                    members.remove(&member);
                }
                self.events.push_back(ClientEvent::MemberLeft {
                    group,
                    member,
                    member_count,
                });
            }
            ServerToClient::Deliver {
                from,
                group,
                seq,
                payload,
            } => {
                if let Some(peer) = self.peers.get_mut(&from) {
                    count(&mut peer.stats.relay_received, &payload);
                }
                self.receive(from, seq, Slot::Message((group, payload, Path::Relay)))?
            }
            ServerToClient::Skipped { from, seq } => self.receive(from, seq, Slot::Skipped)?,
            ServerToClient::FromServer { group, payload } => {
                self.events.push_back(ClientEvent::Message {
                    from: HostId::SERVER,
                    group,
                    payload,
                    delivery: Delivery::ReliableOrdered,
                    path: Path::Relay,
                });
            }
            ServerToClient::PunchOrder(order)
                if self
                    .peers
                    .get(&order.peer)
                    .is_some_and(|p| p.pair == order.pair) =>
            {
                self.punch_orders.push_back(order);
            }
            // An order for a pair that has already ended.
            ServerToClient::PunchOrder(_) => {}
            ServerToClient::Refused {
                pair,
                group,
                reason,
            } => {
                let to = pair
                    .and_then(|pair| self.peers.iter().find(|(_, p)| p.pair == pair))
                    .map(|(host, _)| *host)
                    .unwrap_or(HostId::SERVER);
                self.events
                    .push_back(ClientEvent::SendFailed { to, group, reason });
            }
        }
        Ok(())
    }

    /// Takes one datagram from the server.
    pub fn handle_datagram(&mut self, datagram: ServerDatagram) {
        let ServerDatagram::Deliver {
            from,
            group,
            payload,
        } = datagram;
        if let Some(peer) = self.peers.get_mut(&from) {
            count(&mut peer.stats.relay_received, &payload);
        }
        self.events.push_back(ClientEvent::Message {
            from,
            group,
            payload,
            delivery: Delivery::Unreliable,
            path: Path::Relay,
        });
    }

    /// Takes one datagram from the direct connection to `from`.
    pub fn handle_peer_datagram(&mut self, from: HostId, datagram: ServerDatagram) {
        let ServerDatagram::Deliver {
            from: claimed,
            group,
            payload,
        } = datagram;
        // The connection's pinned identity names the sender; a different claim is a lie.
        let Some(peer) = self.peers.get_mut(&from).filter(|_| claimed == from) else {
            return;
        };
        count(&mut peer.stats.direct_received, &payload);
        self.events.push_back(ClientEvent::Message {
            from,
            group,
            payload,
            delivery: Delivery::Unreliable,
            path: Path::Direct,
        });
    }

    /// Takes one frame from the direct connection to `from`.
    ///
    /// # Errors
    /// A description of the violation; the caller closes that direct connection.
    pub fn handle_peer_frame(&mut self, from: HostId, frame: PeerToPeer) -> Result<(), String> {
        match frame {
            PeerToPeer::Data {
                group,
                seq,
                payload,
            } => {
                if let Some(peer) = self.peers.get_mut(&from) {
                    count(&mut peer.stats.direct_received, &payload);
                }
                self.receive(from, seq, Slot::Message((group, payload, Path::Direct)))?;
                if let Some(peer) = self.peers.get_mut(&from) {
                    let delivered = peer.receiver.delivered();
                    if delivered >= peer.acked + ACK_EVERY {
                        peer.acked = delivered;
                        self.peer_frames
                            .push_back((from, PeerToPeer::Ack { delivered }));
                    }
                }
                Ok(())
            }
            PeerToPeer::Ack { delivered } => {
                if let Some(peer) = self.peers.get_mut(&from) {
                    while peer
                        .unacked
                        .front()
                        .is_some_and(|(seq, ..)| *seq <= delivered)
                    {
                        peer.unacked.pop_front();
                    }
                    peer.stats.unacked = peer.unacked.len();
                }
                Ok(())
            }
            PeerToPeer::Hello { .. } => Err("a second hello on a direct connection".into()),
        }
    }

    /// Acks everything delivered from direct peers and not acked yet (called every few
    /// tens of milliseconds by the driver, so a quiet sender still hears back).
    pub fn flush_acks(&mut self) {
        for (&host, peer) in &mut self.peers {
            let delivered = peer.receiver.delivered();
            if peer.path == PairPath::Direct && delivered > peer.acked {
                peer.acked = delivered;
                self.peer_frames
                    .push_back((host, PeerToPeer::Ack { delivered }));
            }
        }
    }

    /// The next frame for a direct connection (acks).
    pub fn poll_peer_frame(&mut self) -> Option<(HostId, PeerToPeer)> {
        self.peer_frames.pop_front()
    }

    /// A peer whose pair ended while its direct connection was up: the driver closes it.
    pub fn poll_ended_pair(&mut self) -> Option<HostId> {
        self.ended_pairs.pop_front()
    }

    /// The direct connection to `peer` is up: its messages take it from now on.
    pub fn set_direct(&mut self, peer: HostId, rtt: Duration) -> bool {
        let Some(state) = self.peers.get_mut(&peer) else {
            return false;
        };
        state.path = PairPath::Direct;
        state.acked = state.receiver.delivered();
        state.stats.path = Some(PairPath::Direct);
        state.stats.direct_rtt = Some(rtt);
        state.stats.punch_successes += 1;
        let pair = state.pair;
        self.frames.push_back(ClientToServer::PathReport {
            pair,
            path: PairPath::Direct,
            reason: PathReason::Punched,
        });
        self.events.push_back(ClientEvent::PathChanged {
            peer,
            path: PairPath::Direct,
            rtt: Some(rtt),
            reason: PathReason::Punched,
        });
        true
    }

    /// The direct connection to `peer` is gone: its messages take the relay again, and
    /// reliable ones the peer has not acked are sent again through the relay, with their
    /// original sequence numbers (the peer drops any it already has).
    pub fn set_relay(&mut self, peer: HostId, reason: PathReason) -> Vec<Upload> {
        let Some(state) = self.peers.get_mut(&peer) else {
            return Vec::new();
        };
        if state.path != PairPath::Direct {
            return Vec::new();
        }
        state.path = PairPath::Relay;
        state.stats.path = Some(PairPath::Relay);
        state.stats.direct_rtt = None;
        let pair = state.pair;
        let resend: Vec<Upload> = state
            .unacked
            .drain(..)
            .map(|(seq, group, payload)| {
                count(&mut state.stats.relay_sent, &payload);
                Upload::Frame(ClientToServer::Relay {
                    group,
                    to_server: false,
                    dests: vec![RelayDest { pair, seq }],
                    payload,
                })
            })
            .collect();
        state.stats.unacked = 0;
        self.frames.push_back(ClientToServer::PathReport {
            pair,
            path: PairPath::Relay,
            reason,
        });
        self.events.push_back(ClientEvent::PathChanged {
            peer,
            path: PairPath::Relay,
            rtt: None,
            reason,
        });
        resend
    }

    /// What this client measures about a peer.
    pub fn peer_stats(&self, peer: HostId) -> Option<PeerStats> {
        self.peers.get(&peer).map(|p| p.stats)
    }

    /// The host whose identity certificate has this fingerprint, among current peers.
    pub fn peer_by_identity(
        &self,
        identity: &peergroup_protocol::Fingerprint,
    ) -> Option<(HostId, PairId)> {
        self.peers
            .iter()
            .find(|(_, p)| p.info.identity == *identity)
            .map(|(host, p)| (*host, p.pair))
    }

    /// Bytes held from `peer` waiting for a gap to fill.
    pub fn held_bytes(&self, peer: HostId) -> usize {
        self.peers.get(&peer).map_or(0, |p| p.receiver.held_bytes())
    }

    /// The current pair with `peer`.
    pub fn pair_of(&self, peer: HostId) -> Option<PairId> {
        self.peers.get(&peer).map(|p| p.pair)
    }

    fn receive(
        &mut self,
        from: HostId,
        seq: u64,
        slot: Slot<(Option<GroupId>, Bytes, Path)>,
    ) -> Result<(), String> {
        let Some(peer) = self.peers.get_mut(&from) else {
            return Err(format!("a message from {from}, which is not a peer"));
        };
        let (size, relayed) = match &slot {
            Slot::Message((_, payload, path)) => (payload.len(), *path == Path::Relay),
            Slot::Skipped => (0, true),
        };
        let early = seq > peer.receiver.delivered() + 1;
        if relayed && early && peer.receiver.held_bytes() + size > MAX_HELD_BYTES_RELAYED {
            // Relayed messages run ahead of a live direct path only by what is in flight;
            // this far ahead, the sender skipped numbers on purpose to make us hold its
            // messages. Bound that memory; the loss is that sender's own doing.
            peer.stats.discarded += 1;
            tracing::warn!(%from, seq, "discarding a relayed message far ahead of a gap");
            return Ok(());
        }
        match peer.receiver.accept(seq, slot, size) {
            Ok(ready) => {
                for (group, payload, path) in ready {
                    self.events.push_back(ClientEvent::Message {
                        from,
                        group,
                        payload,
                        delivery: Delivery::ReliableOrdered,
                        path,
                    });
                }
                Ok(())
            }
            // A message sent again after a path switch, which the other path delivered.
            Err(Rejected::Duplicate) => Ok(()),
            Err(Rejected::BeyondWindow) => Err(format!(
                "sequence {seq} from {from} is beyond the receive window"
            )),
        }
    }

    /// Turns a send into uploads for the server, assigning pair sequence numbers to
    /// reliable ones, and queues a loopback delivery if asked for. `max_datagram` is the
    /// server connection's current datagram size (`None` if datagrams are off).
    ///
    /// # Errors
    /// [`SendError`] for a target this client may not send to or a payload that does not
    /// fit; nothing is assigned or queued then.
    pub fn plan_send(
        &mut self,
        target: &Target,
        payload: Bytes,
        delivery: Delivery,
        max_datagram: Option<usize>,
    ) -> Result<Vec<Upload>, SendError> {
        let resolved = self.resolve(target)?;
        let unreliable = delivery == Delivery::Unreliable;
        // Check the size before any sequence number is used.
        let limit = if unreliable {
            let Some(max) = max_datagram else {
                // The server connection does not carry datagrams at all.
                return Err(SendError::TooLargeForDatagram {
                    len: payload.len(),
                    max: 0,
                });
            };
            let fits = max
                .saturating_sub(UPLOAD_FIXED_OVERHEAD + DATAGRAM_DEST_LEN)
                .min(max.saturating_sub(DATAGRAM_DELIVER_OVERHEAD));
            if payload.len() > fits {
                return Err(SendError::TooLargeForDatagram {
                    len: payload.len(),
                    max: fits,
                });
            }
            max
        } else {
            let fits = self
                .max_frame_len
                .saturating_sub(UPLOAD_FIXED_OVERHEAD + RELIABLE_DEST_LEN);
            if payload.len() > fits {
                return Err(SendError::TooLarge {
                    len: payload.len(),
                    max: fits,
                });
            }
            self.max_frame_len
        };

        if resolved.loopback {
            self.events.push_back(ClientEvent::Message {
                from: self.host_id,
                group: resolved.group,
                payload: payload.clone(),
                delivery,
                path: Path::Loopback,
            });
        }
        let mut uploads = Vec::new();
        // Peers on a direct path get their copy there; the rest share one relay upload.
        let mut relayed = Vec::with_capacity(resolved.peers.len());
        for host in resolved.peers {
            // A lingering pair keeps its direct link, but only a shared group entitles a
            // message to skip the server: otherwise it takes the relay, where the server
            // applies its rule.
            let shares_group = resolved.group.is_some() || self.shares_group(host);
            let peer = self.peers.get_mut(&host).expect("resolved peers exist");
            // No fallback to the relay for a busy direct path: the send budget paces the
            // sender instead, and the two paths never drift far apart in sequence.
            let direct = peer.path == PairPath::Direct && shares_group;
            if !direct {
                relayed.push(host);
                continue;
            }
            count(&mut peer.stats.direct_sent, &payload);
            if unreliable {
                uploads.push(Upload::PeerDatagram {
                    to: host,
                    datagram: ServerDatagram::Deliver {
                        from: self.host_id,
                        group: resolved.group,
                        payload: payload.clone(),
                    },
                });
                continue;
            }
            let seq = peer.next_seq;
            peer.next_seq += 1;
            peer.unacked
                .push_back((seq, resolved.group, payload.clone()));
            peer.stats.unacked = peer.unacked.len();
            uploads.push(Upload::Peer {
                to: host,
                frame: PeerToPeer::Data {
                    group: resolved.group,
                    seq,
                    payload: payload.clone(),
                },
            });
        }
        let dest_len = if unreliable {
            DATAGRAM_DEST_LEN
        } else {
            RELIABLE_DEST_LEN
        };
        let per_upload =
            (limit.saturating_sub(UPLOAD_FIXED_OVERHEAD + payload.len()) / dest_len).max(1);
        let mut to_server = resolved.to_server;
        let mut chunks = relayed.chunks(per_upload).peekable();
        if chunks.peek().is_none() && !to_server {
            return Ok(uploads);
        }
        loop {
            let chunk = chunks.next().unwrap_or(&[]);
            let group = resolved.group;
            for host in chunk {
                if let Some(peer) = self.peers.get_mut(host) {
                    count(&mut peer.stats.relay_sent, &payload);
                }
            }
            let upload = if unreliable {
                let dests = chunk.iter().map(|host| self.peers[host].pair).collect();
                Upload::Datagram(ClientDatagram::Relay {
                    group,
                    to_server,
                    dests,
                    payload: payload.clone(),
                })
            } else {
                let dests = chunk
                    .iter()
                    .map(|host| {
                        let peer = self.peers.get_mut(host).expect("resolved peers exist");
                        let seq = peer.next_seq;
                        peer.next_seq += 1;
                        RelayDest {
                            pair: peer.pair,
                            seq,
                        }
                    })
                    .collect();
                Upload::Frame(ClientToServer::Relay {
                    group,
                    to_server,
                    dests,
                    payload: payload.clone(),
                })
            };
            uploads.push(upload);
            to_server = false;
            if chunks.peek().is_none() {
                return Ok(uploads);
            }
        }
    }

    /// Whether this client shares a group with `host`, as far as it has been told.
    fn shares_group(&self, host: HostId) -> bool {
        self.groups
            .values()
            .any(|members| members.contains(&host) && members.contains(&self.host_id))
    }

    fn resolve(&self, target: &Target) -> Result<Resolved, SendError> {
        let mut resolved = Resolved::default();
        let add_host = |resolved: &mut Resolved, host: HostId| -> Result<(), SendError> {
            if host == HostId::SERVER {
                resolved.to_server = true;
            } else if host == self.host_id {
                resolved.loopback = true;
            } else if self.peers.contains_key(&host) {
                resolved.peers.push(host);
            } else {
                return Err(SendError::NotAPeer(host));
            }
            Ok(())
        };
        match target {
            Target::Server => resolved.to_server = true,
            Target::Host(host) => add_host(&mut resolved, *host)?,
            Target::Hosts(hosts) => {
                let unique: BTreeSet<HostId> = hosts.iter().copied().collect();
                for host in unique {
                    add_host(&mut resolved, host)?;
                }
            }
            Target::Group(group) | Target::GroupLoopback(group) => {
                let members = self
                    .groups
                    .get(group)
                    .filter(|m| m.contains(&self.host_id))
                    .ok_or(SendError::NotInGroup(*group))?;
                resolved.group = Some(*group);
                for &member in members {
                    if member == HostId::SERVER {
                        resolved.to_server = true;
                    } else if member != self.host_id && self.peers.contains_key(&member) {
                        resolved.peers.push(member);
                    }
                }
                resolved.loopback = matches!(target, Target::GroupLoopback(_));
            }
        }
        Ok(resolved)
    }

    // ---- queries -------------------------------------------------------------------------

    /// Groups this client is in.
    pub fn groups(&self) -> Vec<GroupId> {
        self.groups
            .iter()
            .filter(|(_, members)| members.contains(&self.host_id))
            .map(|(group, _)| *group)
            .collect()
    }

    /// Members of a group this client is in, as it has been told.
    pub fn group_members(&self, group: GroupId) -> Option<Vec<HostId>> {
        self.groups.get(&group).map(|m| m.iter().copied().collect())
    }

    /// What the server vouched for about a peer.
    pub fn peer_info(&self, peer: HostId) -> Option<PeerInfo> {
        self.peers.get(&peer).map(|p| p.info.clone())
    }

    /// Every current peer.
    pub fn peers(&self) -> Vec<HostId> {
        let mut peers: Vec<HostId> = self.peers.keys().copied().collect();
        peers.sort();
        peers
    }
}

fn count(counters: &mut PathCounters, payload: &Bytes) {
    counters.messages += 1;
    counters.bytes += payload.len() as u64;
}

#[derive(Debug, Default)]
struct Resolved {
    group: Option<GroupId>,
    to_server: bool,
    loopback: bool,
    peers: Vec<HostId>,
}

#[cfg(test)]
mod tests;
