//! The chat client: typed commands become sends, events become what the member sees.
//! The terminal and the demo's scripted members both run it.

use crate::protocol::{Line, Notice, Profile, Request, RoomInfo, Said};
use peergroup::client::{
    decode, Client, ClientEvent, ClientEvents, CloseCode, Delivery, DisconnectReason, GroupId,
    HostId, PairPath, Target,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::ops::ControlFlow;
use tokio::sync::mpsc;

pub const HELP: &str = "commands: /join ROOM, /leave [ROOM], /w NAME text, /invite NAME, \
                        /who, /quit; other lines go to the current room";

/// Something the member sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shown {
    /// This client is in a room or party now; `by` says who invited it.
    Joined {
        room: String,
        by: String,
    },
    Left {
        room: String,
    },
    MemberJoined {
        room: String,
        name: String,
    },
    MemberLeft {
        room: String,
        name: String,
    },
    /// A line said in a room or party.
    Line {
        room: String,
        from: String,
        text: String,
    },
    /// A room's stored lines, sent on joining it.
    History {
        room: String,
        lines: Vec<Said>,
    },
    /// A whisper: straight from the peer, or forwarded by the server (`relayed`).
    Whisper {
        from: String,
        text: String,
        relayed: bool,
    },
    /// A line or whisper from a muted host, not shown.
    Hidden {
        from: String,
        text: String,
    },
    Who {
        room: String,
        names: Vec<String>,
    },
    Muted {
        name: String,
    },
    Path {
        name: String,
        direct: bool,
    },
    Info(String),
    Disconnected {
        reason: String,
        kicked: bool,
    },
}

/// One member's chat state.
pub struct Chat {
    client: Client,
    /// Rooms and parties this client is in, named by their group data.
    rooms: BTreeMap<GroupId, String>,
    /// Where plain text goes.
    current: Option<GroupId>,
    /// Groups this client asked to leave. Leaving, it is told of every member's leave,
    /// itself last: the others' are not news.
    leaving: HashSet<GroupId>,
    /// Names of hosts met, for when peergroup has forgotten them: a host that shares no
    /// group any more has no host data, even in the `MemberLeft` that says so.
    names: HashMap<HostId, String>,
}

impl Chat {
    pub fn new(client: Client) -> Chat {
        Chat {
            client,
            rooms: BTreeMap::new(),
            current: None,
            leaving: HashSet::new(),
            names: HashMap::new(),
        }
    }

    /// Handles one typed line; `Break` on `/quit`.
    pub async fn command(&mut self, input: &str) -> ControlFlow<(), Option<Shown>> {
        let input = input.trim();
        let (command, rest) = input.split_once(' ').unwrap_or((input, ""));
        let rest = rest.trim();
        ControlFlow::Continue(match command {
            "" => None,
            "/quit" => return ControlFlow::Break(()),
            "/join" if !rest.is_empty() => match self.group_named(rest) {
                Some(group) => {
                    self.current = Some(group);
                    Some(Shown::Info(format!("talking in {rest}")))
                }
                None => self.request(Request::Join { room: rest.into() }).await,
            },
            "/leave" => {
                let room = match rest {
                    "" => self.current.and_then(|g| self.rooms.get(&g).cloned()),
                    room => Some(room.to_owned()),
                };
                match room.and_then(|room| Some((self.group_named(&room)?, room))) {
                    Some((group, room)) => {
                        self.leaving.insert(group);
                        self.request(Request::Leave { room }).await
                    }
                    None => Some(Shown::Info("not in that room".into())),
                }
            }
            "/w" => match rest.split_once(' ') {
                Some((name, text)) => self.whisper(name, text.trim()).await,
                None => Some(Shown::Info("/w NAME text".into())),
            },
            "/invite" if !rest.is_empty() => {
                self.request(Request::Invite { name: rest.into() }).await
            }
            "/who" => Some(match self.current {
                Some(group) => Shown::Who {
                    room: self.room_name(group),
                    names: self.members(group).map(|h| self.name_of(h)).collect(),
                },
                None => Shown::Info("in no room".into()),
            }),
            _ if command.starts_with('/') => Some(Shown::Info(HELP.into())),
            _ => match self.current {
                None => Some(Shown::Info("join a room first: /join lobby".into())),
                // The server would kick a muted member that keeps talking.
                Some(_) if self.muted() => Some(Shown::Info("you are muted".into())),
                Some(group) => {
                    self.send(Target::Group(group), &Line::Say(input.into()))
                        .await
                }
            },
        })
    }

    /// A member sharing a group gets the whisper straight from this client (relayed at
    /// first, direct once punched). Anyone else is out of the relay's reach: the relay
    /// refuses hosts that share no group, so the server application forwards it.
    async fn whisper(&mut self, name: &str, text: &str) -> Option<Shown> {
        if self.muted() {
            return Some(Shown::Info("you are muted".into()));
        }
        let me = self.client.host_id();
        let peer = (self.rooms.keys())
            .flat_map(|group| self.members(*group))
            .find(|host| *host != me && self.name_of(*host) == name);
        let failed = match peer {
            Some(peer) => {
                self.send(Target::Host(peer), &Line::Whisper(text.into()))
                    .await
            }
            None => {
                let (to, text) = (name.into(), text.into());
                self.request(Request::Whisper { to, text }).await
            }
        };
        failed.or_else(|| Some(Shown::Info(format!("you whisper to {name}: {text}"))))
    }

    /// Handles one event from peergroup.
    pub fn event(&mut self, event: ClientEvent) -> Option<Shown> {
        let me = self.client.host_id();
        if let ClientEvent::MemberJoined {
            member,
            member_data: data,
            ..
        }
        | ClientEvent::HostDataChanged { host: member, data } = &event
        {
            if let Some(profile) = Profile::of(data) {
                self.names.insert(*member, profile.name);
            }
        }
        match event {
            ClientEvent::MemberJoined {
                group,
                member,
                join_message,
                group_data,
                ..
            } if member == me => {
                let info = group_data.as_deref().and_then(RoomInfo::of)?;
                self.rooms.insert(group, info.name.clone());
                if !info.party || self.current.is_none() {
                    self.current = Some(group);
                }
                let by = String::from_utf8_lossy(&join_message).into_owned();
                Some(Shown::Joined {
                    room: info.name,
                    by,
                })
            }
            // Before this client's own notice (always last) come those of the members
            // already there: not news, so only joins after it are shown.
            ClientEvent::MemberJoined { group, member, .. } if member != HostId::SERVER => {
                let room = self.rooms.get(&group)?.clone();
                let name = self.name_of(member);
                Some(Shown::MemberJoined { room, name })
            }
            ClientEvent::MemberLeft { group, member, .. } if member == me => {
                self.leaving.remove(&group);
                let room = self.rooms.remove(&group)?;
                if self.current == Some(group) {
                    self.current = self.rooms.keys().next().copied();
                }
                Some(Shown::Left { room })
            }
            ClientEvent::MemberLeft { group, member, .. }
                if member != HostId::SERVER && !self.leaving.contains(&group) =>
            {
                let room = self.rooms.get(&group)?.clone();
                let name = self.name_of(member);
                Some(Shown::MemberLeft { room, name })
            }
            ClientEvent::Message {
                from: HostId::SERVER,
                payload,
                ..
            } => match decode::<Notice>(&payload).ok()? {
                Notice::History { lines, .. } if lines.is_empty() => None,
                Notice::History { room, lines } => Some(Shown::History { room, lines }),
                Notice::Whisper { from, text } => Some(Shown::Whisper {
                    from,
                    text,
                    relayed: true,
                }),
                Notice::Refused(reason) => Some(Shown::Info(format!("refused: {reason}"))),
            },
            ClientEvent::Message {
                from,
                group,
                payload,
                ..
            } => {
                // `from` is stamped by the server (or proven by the direct path's pinned
                // key), so the server's word on who is muted can be enforced right here.
                let profile = self.profile(from)?;
                match (decode::<Line>(&payload).ok()?, group) {
                    (Line::Say(text) | Line::Whisper(text), _) if profile.muted => {
                        Some(Shown::Hidden {
                            from: profile.name,
                            text,
                        })
                    }
                    (Line::Say(text), Some(group)) => Some(Shown::Line {
                        room: self.room_name(group),
                        from: profile.name,
                        text,
                    }),
                    (Line::Whisper(text), None) => Some(Shown::Whisper {
                        from: profile.name,
                        text,
                        relayed: false,
                    }),
                    _ => None,
                }
            }
            ClientEvent::HostDataChanged { host, data } => {
                let profile = Profile::of(&data)?;
                if profile.muted {
                    Some(Shown::Muted { name: profile.name })
                } else if host == me {
                    Some(Shown::Info(format!("you are {}", profile.name)))
                } else {
                    None
                }
            }
            ClientEvent::PathChanged { peer, path, .. } => Some(Shown::Path {
                name: self.name_of(peer),
                direct: path == PairPath::Direct,
            }),
            ClientEvent::SendFailed { to, reason, .. } => Some(Shown::Info(format!(
                "not delivered to {}: {reason:?}",
                self.name_of(to)
            ))),
            ClientEvent::Disconnected { reason } => Some(Shown::Disconnected {
                kicked: matches!(
                    reason,
                    DisconnectReason::ServerClosed {
                        code: CloseCode::Kicked,
                        ..
                    }
                ),
                reason: reason.to_string(),
            }),
            _ => None,
        }
    }

    async fn request(&self, request: Request) -> Option<Shown> {
        self.send(Target::Server, &request).await
    }

    /// Sends a typed message; what went wrong, if anything, is shown.
    async fn send(&self, target: Target, message: &impl serde::Serialize) -> Option<Shown> {
        let sent = self
            .client
            .send_message(target, message, Delivery::ReliableOrdered)
            .await;
        sent.err()
            .map(|error| Shown::Info(format!("not sent: {error}")))
    }

    fn group_named(&self, room: &str) -> Option<GroupId> {
        self.rooms
            .iter()
            .find(|(_, name)| *name == room)
            .map(|(g, _)| *g)
    }

    fn room_name(&self, group: GroupId) -> String {
        self.rooms
            .get(&group)
            .cloned()
            .unwrap_or_else(|| group.to_string())
    }

    /// The group's members other than the server, as this client was told.
    fn members(&self, group: GroupId) -> impl Iterator<Item = HostId> {
        let members = self.client.group_members(group).unwrap_or_default();
        members.into_iter().filter(|host| *host != HostId::SERVER)
    }

    fn profile(&self, host: HostId) -> Option<Profile> {
        Profile::of(&self.client.host_data(host)?)
    }

    fn name_of(&self, host: HostId) -> String {
        self.names
            .get(&host)
            .cloned()
            .unwrap_or_else(|| host.to_string())
    }

    fn muted(&self) -> bool {
        self.profile(self.client.host_id()).is_some_and(|p| p.muted)
    }
}

/// Runs a member until `/quit`, the end of its input, or the end of its connection:
/// each typed line from `input`, each event from `events`, and everything to see to
/// `show`.
pub async fn drive(
    mut chat: Chat,
    mut events: ClientEvents,
    mut input: mpsc::Receiver<String>,
    mut show: impl FnMut(Shown),
) {
    loop {
        tokio::select! {
            line = input.recv() => {
                let Some(line) = line else { break };
                match chat.command(&line).await {
                    ControlFlow::Continue(shown) => shown.into_iter().for_each(&mut show),
                    ControlFlow::Break(()) => break,
                }
            }
            event = events.next() => {
                let Some(event) = event else { return }; // after Disconnected
                chat.event(event).into_iter().for_each(&mut show);
            }
        }
    }
    // Lines still queued reach the server before the connection closes.
    chat.client.close().await;
}

impl fmt::Display for Shown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Shown::Joined { room, by } if by.is_empty() => write!(f, "* you joined {room}"),
            Shown::Joined { room, by } => write!(f, "* you joined {room}, {by}"),
            Shown::Left { room } => write!(f, "* you left {room}"),
            Shown::MemberJoined { room, name } => write!(f, "* {name} joined {room}"),
            Shown::MemberLeft { room, name } => write!(f, "* {name} left {room}"),
            Shown::Line { room, from, text } => write!(f, "[{room}] {from}: {text}"),
            Shown::History { room, lines } => {
                write!(f, "* {} earlier lines in {room}", lines.len())?;
                for said in lines {
                    let (h, m) = (said.at / 3600 % 24, said.at / 60 % 60);
                    write!(f, "\n[{room} {h:02}:{m:02}] {}: {}", said.name, said.text)?;
                }
                Ok(())
            }
            Shown::Whisper {
                from,
                text,
                relayed,
            } => {
                let via = if *relayed { " (via the server)" } else { "" };
                write!(f, "{from} whispers{via}: {text}")
            }
            Shown::Hidden { from, .. } => write!(f, "* hid a line from {from}, who is muted"),
            Shown::Who { room, names } => write!(f, "* in {room}: {}", names.join(", ")),
            Shown::Muted { name } => write!(f, "* {name} is muted by the server"),
            Shown::Path { name, direct } => match direct {
                true => write!(f, "* direct path to {name}"),
                false => write!(f, "* relaying to {name} through the server"),
            },
            Shown::Info(text) => write!(f, "* {text}"),
            Shown::Disconnected { reason, .. } => write!(f, "* disconnected: {reason}"),
        }
    }
}
