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
    ClientDatagram, ClientToServer, Delivery, GroupId, HostId, PairId, Path, PeerInfo, PunchOrder,
    RelayDest, ServerDatagram, ServerToClient, DATAGRAM_DELIVER_OVERHEAD,
};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

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

/// One message for the server, ready to encode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Upload {
    /// On the control stream.
    Frame(ClientToServer),
    /// In a QUIC datagram.
    Datagram(ClientDatagram),
}

/// What the client knows about one peer.
#[derive(Debug)]
struct Peer {
    pair: PairId,
    info: PeerInfo,
    next_seq: u64,
    receiver: ReliableReceiver<(Option<GroupId>, Bytes, Path)>,
}

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
                self.peers.insert(
                    peer,
                    Peer {
                        pair,
                        info,
                        next_seq: 1,
                        receiver: ReliableReceiver::new(self.receive_window),
                    },
                );
            }
            ServerToClient::PeerDown { peer, pair } => {
                if self.peers.get(&peer).is_some_and(|p| p.pair == pair) {
                    self.peers.remove(&peer);
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
            } => self.receive(from, seq, Slot::Message((group, payload, Path::Relay)))?,
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
        self.events.push_back(ClientEvent::Message {
            from,
            group,
            payload,
            delivery: Delivery::Unreliable,
            path: Path::Relay,
        });
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
        match peer.receiver.accept(seq, slot) {
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
            // The relay is one ordered stream, so a duplicate there is the server's fault.
            Err(Rejected::Duplicate) => Err(format!("duplicate sequence {seq} from {from}")),
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
        let dest_len = if unreliable {
            DATAGRAM_DEST_LEN
        } else {
            RELIABLE_DEST_LEN
        };
        let per_upload =
            (limit.saturating_sub(UPLOAD_FIXED_OVERHEAD + payload.len()) / dest_len).max(1);
        let mut uploads = Vec::new();
        let mut to_server = resolved.to_server;
        let mut chunks = resolved.peers.chunks(per_upload).peekable();
        if chunks.peek().is_none() && !to_server {
            return Ok(uploads);
        }
        loop {
            let chunk = chunks.next().unwrap_or(&[]);
            let group = resolved.group;
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

    /// This client's id.
    pub fn host_id(&self) -> HostId {
        self.host_id
    }

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

#[derive(Debug, Default)]
struct Resolved {
    group: Option<GroupId>,
    to_server: bool,
    loopback: bool,
    peers: Vec<HostId>,
}

#[cfg(test)]
mod tests;
