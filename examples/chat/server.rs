//! The chat server application: logins and nicknames, rooms and parties, history, and
//! moderation.
//!
//! Chat lines do not pass through this code on their way to members: a member sends
//! them to its room's group, and peergroup delivers them at once through the relay, then
//! directly once the pair has punched through. The server application is a *member* of
//! every public room (`server_is_member`), so it gets a copy of each line to store and
//! moderate, without being on the path others wait for. Parties are groups without it:
//! their lines stay between the members.
//!
//! History is in the order lines reach the server: each member's own in the order said,
//! but a reply that went direct can overtake, on its way here, the line it answers.

use crate::common::Network;
use crate::history::History;
use crate::protocol::{Line, Notice, Profile, Request, RoomInfo};
use peergroup::client::ServerTrust;
use peergroup::server::{
    decode, AuthDecision, AuthHook, Delivery, GroupId, GroupOptions, HostId, JoinOutcome, Server,
    ServerEvent, ServerEvents, ServerTarget,
};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// How many lines a joiner gets back.
const HISTORY_LINES: usize = 50;

/// Saying one of these gets a member muted; talking while muted gets it kicked.
const BANNED_WORDS: &[&str] = &["frak"];

/// Lines a member sent before it heard of its mute may arrive this long after it.
const MUTE_GRACE: Duration = Duration::from_secs(1);

/// The running chat server.
pub struct Running {
    pub server: Server,
    /// The application's event loop; it ends after `server.shutdown()`.
    pub app: JoinHandle<()>,
    pub addr: SocketAddr,
    /// How clients recognise it.
    pub trust: ServerTrust,
}

/// Starts the peergroup server with the chat's auth hook, and the chat application on it.
pub async fn start(network: &Network, db: &Path) -> Result<Running, Box<dyn std::error::Error>> {
    let history = History::open(db)?;
    let hosted = network.start_server("chat", auth(), |_| {}).await?;
    let server = hosted.server.clone();
    let chat = Chat {
        server: hosted.server,
        history,
        groups: HashMap::new(),
        profiles: HashMap::new(),
        muted: HashMap::new(),
    };
    Ok(Running {
        server,
        app: tokio::spawn(chat.run(hosted.events)),
        addr: hosted.addr,
        trust: hosted.trust,
    })
}

/// The login is the wanted nickname; it becomes the host's data, so every peer sees it.
fn auth() -> AuthHook {
    AuthHook::from_fn(|login| {
        let name = String::from_utf8_lossy(&login.login).into_owned();
        if name.is_empty()
            || name.len() > 16
            || !name.chars().all(|c| c.is_alphanumeric() || c == '_')
        {
            return AuthDecision::reject("a nickname is 1 to 16 letters, digits or _");
        }
        AuthDecision::accept_with_data(Profile { name, muted: false }.to_bytes())
    })
}

struct Chat {
    server: Server,
    history: History,
    /// Rooms and parties by name.
    groups: HashMap<String, (GroupId, RoomInfo)>,
    /// Every connected host's profile, as the server last set it. Kept here, not read
    /// back from the server, because a host's last lines arrive after the server has
    /// already removed it (its `ClientDisconnected` follows them).
    profiles: HashMap<HostId, Profile>,
    /// Muted hosts, and since when (for as long as they stay connected).
    muted: HashMap<HostId, Instant>,
}

impl Chat {
    async fn run(mut self, mut events: ServerEvents) {
        while let Some(event) = events.next().await {
            match event {
                ServerEvent::ClientConnected { host, app_data, .. } => {
                    if let Some(profile) = Profile::of(&app_data) {
                        self.unique_name(host, profile);
                    }
                }
                ServerEvent::ClientDisconnected { host, reason } => {
                    println!("server: {host} left ({reason})");
                    self.profiles.remove(&host);
                    self.muted.remove(&host);
                    // It has left all its groups already; rooms it emptied can go.
                    self.close_empty_rooms();
                }
                ServerEvent::Message {
                    from,
                    group: None,
                    payload,
                    ..
                } => match decode::<Request>(&payload) {
                    Ok(request) => {
                        if let Err(reason) = self.request(from, request) {
                            self.tell(from, &Notice::Refused(reason));
                        }
                    }
                    Err(error) => eprintln!("server: {from} sent no chat request: {error}"),
                },
                ServerEvent::Message {
                    from,
                    group: Some(group),
                    payload,
                    ..
                } => {
                    if let Ok(Line::Say(text)) = decode::<Line>(&payload) {
                        self.said(from, group, &text);
                    }
                }
                // A party is removed by peergroup as its last member leaves.
                ServerEvent::GroupRemoved { group } => self.groups.retain(|_, (g, _)| *g != group),
                _ => {}
            }
        }
    }

    /// A line in a public room: store it, or moderate its author.
    fn said(&mut self, from: HostId, group: GroupId, text: &str) {
        let Some(mut profile) = self.profile(from) else {
            return; // gone meanwhile
        };
        let Some(room) = self.room_name(group) else {
            return;
        };
        if let Some(since) = self.muted.get(&from) {
            // Members already hide its lines (they trust `from`, which peergroup
            // stamps). Past the grace, a client that keeps sending is not an honest one.
            if since.elapsed() > MUTE_GRACE {
                println!("server: kicked {}, who talked while muted", profile.name);
                let _ = self.server.disconnect(from, "you kept talking while muted");
            }
        } else if BANNED_WORDS
            .iter()
            .any(|word| text.to_lowercase().contains(word))
        {
            // One host-data change tells the member and everyone sharing a group with it.
            println!("server: muted {} for a banned word", profile.name);
            profile.muted = true;
            let _ = self.server.set_host_data(from, profile.to_bytes());
            self.profiles.insert(from, profile);
            self.muted.insert(from, Instant::now());
        } else if let Err(error) = self.history.append(&room, &profile.name, text) {
            eprintln!("server: history of {room} not stored: {error}");
        }
    }

    fn request(&mut self, from: HostId, request: Request) -> Result<(), String> {
        match request {
            Request::Join { room } => self.join(from, room),
            Request::Leave { room } => {
                let (group, _) = self.groups.get(&room).ok_or("no such room")?;
                self.server.leave_group(*group, from).map_err(say)?;
                self.close_empty_rooms();
                Ok(())
            }
            Request::Invite { name } => self.invite(from, &name),
            Request::Whisper { to, text } => {
                if self.muted.contains_key(&from) {
                    return Err("you are muted".into());
                }
                let author = self.profile(from).ok_or("gone")?;
                let to = self
                    .find(&to)
                    .ok_or(format!("nobody here is called {to}"))?;
                let whisper = Notice::Whisper {
                    from: author.name,
                    text,
                };
                self.tell(to, &whisper);
                Ok(())
            }
        }
    }

    fn join(&mut self, from: HostId, room: String) -> Result<(), String> {
        let group = match self.groups.get(&room) {
            Some((_, info)) if info.party => return Err(format!("{room} is invite-only")),
            Some((group, _)) => *group,
            None if room.is_empty()
                || room.len() > 24
                || room.starts_with("party")
                || !room.chars().all(|c| c.is_alphanumeric() || c == '_') =>
            {
                return Err(format!("{room} is not a room name (letters, digits, _)"));
            }
            None => {
                let info = RoomInfo {
                    name: room.clone(),
                    party: false,
                };
                let options = GroupOptions {
                    server_is_member: true, // to store and moderate every line
                    ..GroupOptions::default()
                };
                let group = self
                    .server
                    .create_group_with_data(&[], options, info.to_bytes(), "")
                    .map_err(say)?;
                self.groups.insert(room.clone(), (group, info));
                group
            }
        };
        if self.server.join_group(group, from, "").map_err(say)? == JoinOutcome::Joined {
            let lines = self.history.last(&room, HISTORY_LINES).map_err(say)?;
            self.tell(from, &Notice::History { room, lines });
        }
        Ok(())
    }

    /// Adds `name` to the inviter's own party, `party_<inviter>`.
    fn invite(&mut self, from: HostId, name: &str) -> Result<(), String> {
        let inviter = self.profile(from).ok_or("gone")?.name;
        let guest = self
            .find(name)
            .ok_or(format!("nobody here is called {name}"))?;
        let party_name = format!("party_{inviter}");
        let party = match self.groups.get(&party_name) {
            Some((group, _)) => {
                self.server.join_group(*group, from, "").map_err(say)?; // if it had left
                *group
            }
            None => {
                let info = RoomInfo {
                    name: party_name.clone(),
                    party: true,
                };
                // Without the server as a member, and gone once the last member leaves.
                let options = GroupOptions {
                    allow_empty: false,
                    ..GroupOptions::default()
                };
                let group = self
                    .server
                    .create_group_with_data(&[from], options, info.to_bytes(), "")
                    .map_err(say)?;
                self.groups.insert(party_name, (group, info));
                group
            }
        };
        // The join message reaches every member with the notice: who brought the guest.
        self.server
            .join_group(party, guest, format!("invited by {inviter}"))
            .map_err(say)?;
        Ok(())
    }

    /// Renames a host whose nickname is taken, so whispers and invites find one host.
    fn unique_name(&mut self, host: HostId, mut profile: Profile) {
        let wanted = profile.name.clone();
        let mut n = 1;
        while self.find(&profile.name).is_some() {
            n += 1;
            profile.name = format!("{wanted}{n}");
        }
        if n > 1 {
            let _ = self.server.set_host_data(host, profile.to_bytes());
        }
        println!("server: {host} is {}", profile.name);
        self.profiles.insert(host, profile);
    }

    /// Public rooms only the server is left in go; their history stays in the database.
    fn close_empty_rooms(&mut self) {
        let server = &self.server;
        self.groups.retain(|_, (group, info)| {
            let empty = server
                .group_members(*group)
                .is_ok_and(|members| members == [HostId::SERVER]);
            if empty && !info.party {
                let _ = server.destroy_group(*group);
                return false;
            }
            true
        });
    }

    fn tell(&self, host: HostId, notice: &Notice) {
        let target = ServerTarget::Host(host);
        // It fails only for a host that is gone meanwhile: nobody left to tell.
        let _ = self
            .server
            .send_message(target, notice, Delivery::ReliableOrdered);
    }

    fn profile(&self, host: HostId) -> Option<Profile> {
        self.profiles.get(&host).cloned()
    }

    fn find(&self, name: &str) -> Option<HostId> {
        self.profiles
            .iter()
            .find(|(_, profile)| profile.name == name)
            .map(|(host, _)| *host)
    }

    fn room_name(&self, group: GroupId) -> Option<String> {
        let room = self.groups.values().find(|(g, _)| *g == group)?;
        Some(room.1.name.clone())
    }
}

/// An error as the text a refused client reads.
fn say(error: impl std::fmt::Display) -> String {
    error.to_string()
}
