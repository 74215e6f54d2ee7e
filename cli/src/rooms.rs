//! The rooms application: named rooms, each a P2P group, joined by name and password.
//!
//! This is what the `peergroup-server` binary runs on top of the [`Server`] library, and
//! what the `peergroup` CLI talks to. Clients send [`RoomsRequest`]s as reliable messages
//! to the server ([`HostId::SERVER`]), postcard-encoded; each gets one [`RoomsReply`] back
//! on the client's main stream.
//!
//! - **Join** validates the names (1 to [`MAX_ROOM_NAME_LEN`] bytes for the room, 1 to
//!   [`MAX_DISPLAY_NAME_LEN`] for the display name, no control characters, no invisible
//!   bidirectional or zero-width characters: [`names`]) and the password (at most
//!   [`MAX_PASSWORD_LEN`] bytes; an empty one counts as none). The first
//!   join of a name creates the room: a group with `allow_empty` off, so the server removes
//!   it as its last member leaves, guarded by the creator's password if one was given.
//!   Joining a room that has a password needs exactly that password; a room without one
//!   ignores any given. Passwords are kept salted and hashed and compared in constant time
//!   ([`secret`]); a client that gives a wrong one
//!   [`max_wrong_passwords`](RoomsConfig::max_wrong_passwords) times is disconnected. The joiner's display name is the group's join message, so every
//!   member learns it from `MemberJoined`; the reply `Joined` follows those notices on the
//!   same stream and names every member. Joining a room one is already in answers `Joined`
//!   again (keeping the first display name). A client may be in several rooms.
//! - **Leave** leaves the room's group; leaving a room one is not in is refused.
//! - **List** answers the first [`MAX_LIST_ROOMS`] rooms, sorted by name, with their
//!   member counts; **ListAfter** the next ones after a name.
//! - Each client's requests are rate-limited (a [`TokenBucket`]): past the burst, a
//!   request is refused with "too many requests" and costs nothing else. Every request
//!   costs work and a reply (a listing is up to [`MAX_LIST_ROOMS`] rooms for a request
//!   of a few bytes), and one connection used to get 246k password checks a second.
//!
//! The bookkeeping is a plain struct that does no IO; it reaches the server only through
//! a small trait, so its tests run it against the sans-IO registry
//! (`peergroup_server::registry`, behind that crate's `unstable-registry` feature).
//!
//! In the binary it reads the server's events through the event hub ([`crate::hub`]),
//! which also tells it of changes the admin API made to its rooms' groups
//! ([`OutsideChange`]): a member joined or removed there, a renamed host, a destroyed
//! room. Rooms' groups are ordinary groups to the API; [`RoomNames`] tells the API which
//! group is which room. An operator's changes are not bound by the limits above (an
//! operator may put a member into a full room).

mod names;
mod secret;

use crate::hub::{Control, OutsideChange, RoomsInput};
use bytes::Bytes;
use names::validate_name;
use peergroup_protocol::budget::TokenBucket;
use peergroup_protocol::rooms::{
    RoomSummary, RoomsReply, RoomsRequest, MAX_DISPLAY_NAME_LEN, MAX_LIST_ROOMS, MAX_PASSWORD_LEN,
    MAX_ROOM_NAME_LEN,
};
use peergroup_protocol::{datagram_to_bytes, decode_body, Delivery, GroupId, HostId};
use peergroup_server::{
    GroupError, GroupOptions, JoinOutcome, Server, ServerEvent, ServerEvents, ServerTarget,
};
use secret::RoomPassword;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::mpsc;

/// Which groups are rooms, by name: shared with the admin API and the status page. A
/// cheap `Clone` handle.
#[derive(Debug, Clone, Default)]
pub struct RoomNames(Arc<Mutex<HashMap<GroupId, RoomLabel>>>);

/// What the rooms application says about one of its groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomLabel {
    /// The room's name.
    pub name: String,
    /// Whether joining needs a password.
    pub password: bool,
}

impl RoomNames {
    /// The room `group` is, if it is one.
    pub fn get(&self, group: GroupId) -> Option<RoomLabel> {
        self.lock().get(&group).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<GroupId, RoomLabel>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Limits of the rooms application. Plain data with documented defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomsConfig {
    /// Rooms that may exist at once; a join that would create one more is refused with
    /// "too many rooms". Default 10,000 (a full room list then still fits one frame).
    pub max_rooms: usize,
    /// Rooms one client may be in at once; past it a join is refused with "in too many
    /// rooms". Default 16.
    pub max_rooms_per_client: usize,
    /// Members one room may hold; past it a join is refused with "room is full". Every
    /// pair of members punches, so this bounds the mesh at n(n-1)/2 pairs. Default 64.
    pub max_room_members: usize,
    /// Rooms one client may have created that still exist; past it a join that would
    /// create another is refused with "created too many rooms". With `max_rooms` this
    /// means filling the server's rooms takes `max_rooms / max_rooms_created_per_client`
    /// connections (2,500 by default), not a few hundred. Default 4.
    pub max_rooms_created_per_client: usize,
    /// Wrong passwords one connection may give; the next one disconnects it with
    /// "too many wrong room passwords", so guessing costs a new connection (a TLS
    /// handshake and the auth hook) every few tries. Default 8.
    pub max_wrong_passwords: u32,
    /// Requests one client may make at once before the rate below applies; past it a
    /// request is refused with "too many requests". Default 32.
    pub request_burst: u32,
    /// Requests a second one client may make after its burst. Default 16.
    pub requests_per_sec: u32,
}

impl Default for RoomsConfig {
    fn default() -> Self {
        Self {
            max_rooms: 10_000,
            max_rooms_per_client: 16,
            max_room_members: 64,
            max_rooms_created_per_client: 4,
            max_wrong_passwords: 8,
            request_burst: 32,
            requests_per_sec: 16,
        }
    }
}

/// Runs the rooms application with [`RoomsConfig::default`] until `events` ends (the
/// server shut down). See the [module docs](self) for what it answers.
pub async fn run(server: Server, events: ServerEvents) {
    run_with_config(server, events, RoomsConfig::default()).await;
}

/// Runs the rooms application with `config` until `events` ends (the server shut down),
/// reading them through its own event hub.
pub async fn run_with_config(server: Server, events: ServerEvents, config: RoomsConfig) {
    let (control, inputs) = crate::hub::start(server, events);
    run_app(control, inputs, config, RoomNames::default()).await;
}

/// Runs the rooms application with `config` on what the event hub hands it, until that
/// ends (the server shut down), keeping `names` up to date.
///
/// Problems with single requests (malformed bytes, a client that left meanwhile, a reply
/// that cannot be sent) are logged and answered where possible; they never end the loop.
pub async fn run_app(
    control: Control,
    mut inputs: mpsc::Receiver<RoomsInput>,
    config: RoomsConfig,
    names: RoomNames,
) {
    let mut rooms = Rooms::new(config);
    rooms.names = names;
    tracing::info!(?config, "rooms application running");
    while let Some(input) = inputs.recv().await {
        match input {
            RoomsInput::Event(event) => {
                if let Some((to, reply)) = rooms.handle_event(&control, event, Instant::now()) {
                    send_reply(control.server(), to, &reply);
                }
            }
            RoomsInput::Changed(change) => rooms.handle_change(&control, change),
        }
    }
    tracing::info!("rooms application stopped: the server shut down");
}

fn send_reply(server: &Server, to: HostId, reply: &RoomsReply) {
    let bytes = match datagram_to_bytes(reply) {
        Ok(bytes) => bytes,
        Err(error) => {
            tracing::error!(%to, %error, "rooms reply could not be encoded");
            return;
        }
    };
    match server.send(ServerTarget::Host(to), bytes, Delivery::ReliableOrdered) {
        Ok(()) => {}
        Err(peergroup_server::SendError::UnknownHost(_)) => {
            tracing::debug!(%to, "rooms reply not sent: the client is gone");
        }
        Err(error) => tracing::warn!(%to, %error, "rooms reply not sent"),
    }
}

/// The group operations the rooms bookkeeping needs: [`Server`]'s, or a test double.
trait GroupOps {
    fn create_group(
        &self,
        creator: HostId,
        options: GroupOptions,
        join_message: Bytes,
    ) -> Result<GroupId, GroupError>;
    fn join_group(
        &self,
        group: GroupId,
        host: HostId,
        join_message: Bytes,
    ) -> Result<JoinOutcome, GroupError>;
    fn leave_group(&self, group: GroupId, host: HostId) -> Result<(), GroupError>;
    fn group_members(&self, group: GroupId) -> Result<Vec<HostId>, GroupError>;
    fn set_host_data(&self, host: HostId, data: Bytes) -> Result<(), GroupError>;
    /// A connected host's data.
    fn host_data(&self, host: HostId) -> Option<Bytes>;
    /// Disconnects `host`; it sees `reason`.
    fn disconnect(&self, host: HostId, reason: &str);
}

/// Through the hub's [`Control`], so the admin API can match completions of the rooms
/// application's joins and leaves too.
impl GroupOps for Control {
    fn create_group(
        &self,
        creator: HostId,
        options: GroupOptions,
        join_message: Bytes,
    ) -> Result<GroupId, GroupError> {
        Control::create_group(self, &[creator], options, Bytes::new(), join_message)
    }

    fn join_group(
        &self,
        group: GroupId,
        host: HostId,
        join_message: Bytes,
    ) -> Result<JoinOutcome, GroupError> {
        Control::join(self, group, host, join_message, false).map(|(outcome, _)| outcome)
    }

    fn leave_group(&self, group: GroupId, host: HostId) -> Result<(), GroupError> {
        Control::leave(self, group, host, false).map(|_| ())
    }

    fn group_members(&self, group: GroupId) -> Result<Vec<HostId>, GroupError> {
        self.server().group_members(group)
    }

    fn set_host_data(&self, host: HostId, data: Bytes) -> Result<(), GroupError> {
        self.server().set_host_data(host, data)
    }

    fn host_data(&self, host: HostId) -> Option<Bytes> {
        self.server().host_info(host).map(|info| info.data)
    }

    fn disconnect(&self, host: HostId, reason: &str) {
        if let Err(error) = self.server().disconnect(host, reason) {
            tracing::debug!(%host, %error, "not disconnected");
        }
    }
}

/// Makes `name` the client's host data, so every member sees it on join notices and
/// when it changes (a later join under another name renames the client everywhere).
fn set_display_name(groups: &impl GroupOps, host: HostId, name: &str) {
    if let Err(error) = groups.set_host_data(host, Bytes::copy_from_slice(name.as_bytes())) {
        tracing::debug!(%host, %error, "display name not set");
    }
}

/// The options every room's group gets: removed by the server as it empties.
fn room_group_options() -> GroupOptions {
    GroupOptions {
        allow_empty: false,
        ..GroupOptions::default()
    }
}

/// One room. Membership itself is the server's (its group); this holds what only the
/// rooms app knows.
#[derive(Debug)]
struct Room {
    group: GroupId,
    /// `None` for an open room (an empty password makes one).
    password: Option<RoomPassword>,
    /// Who created it, for [`RoomsConfig::max_rooms_created_per_client`].
    creator: HostId,
    /// Display names of the members this app joined.
    names: BTreeMap<HostId, String>,
}

/// The rooms bookkeeping: no IO, no clock.
#[derive(Debug)]
struct Rooms {
    config: RoomsConfig,
    /// By name, so a listing comes out sorted.
    rooms: BTreeMap<String, Room>,
    /// Which room a group is, so `GroupRemoved` finds it (and a stale one finds nothing).
    by_group: HashMap<GroupId, String>,
    /// Rooms each client is in, for disconnects and the per-client limit.
    by_host: HashMap<HostId, BTreeSet<String>>,
    /// Which group is which room, for the admin API.
    names: RoomNames,
    /// What each client that made requests has used of its limits.
    clients: HashMap<HostId, ClientLimits>,
    /// Malformed requests answered (logged at debug level only: a client can send any
    /// number of them).
    malformed_requests: u64,
    random: ring::rand::SystemRandom,
}

/// One client's use of the rooms application's limits.
#[derive(Debug)]
struct ClientLimits {
    budget: TokenBucket,
    wrong_passwords: u32,
    /// Rooms it created that still exist.
    created: usize,
}

impl Rooms {
    fn new(config: RoomsConfig) -> Self {
        Self {
            config,
            rooms: BTreeMap::new(),
            by_group: HashMap::new(),
            by_host: HashMap::new(),
            names: RoomNames::default(),
            clients: HashMap::new(),
            malformed_requests: 0,
            random: ring::rand::SystemRandom::new(),
        }
    }

    fn limits_of(&mut self, host: HostId, now: Instant) -> &mut ClientLimits {
        let (burst, per_sec) = (self.config.request_burst, self.config.requests_per_sec);
        self.clients.entry(host).or_insert_with(|| ClientLimits {
            budget: TokenBucket::new(burst, per_sec, now),
            wrong_passwords: 0,
            created: 0,
        })
    }

    /// Keeps the books after a change made from outside (the admin API) to a room's
    /// group or one of its members.
    fn handle_change(&mut self, groups: &impl GroupOps, change: OutsideChange) {
        match change {
            OutsideChange::Joined { group, host } => {
                let Some(room) = self.by_group.get(&group).cloned() else {
                    return;
                };
                // Members see the host's data as its name; use it here too.
                let name = groups
                    .host_data(host)
                    .map(|data| String::from_utf8_lossy(&data).into_owned())
                    .filter(|name| !name.is_empty())
                    .unwrap_or_else(|| host.to_string());
                if let Some(entry) = self.rooms.get_mut(&room) {
                    entry.names.entry(host).or_insert(name);
                    self.by_host.entry(host).or_default().insert(room.clone());
                    tracing::info!(room = %room, %group, %host, "joined room through the admin API");
                }
            }
            OutsideChange::Left { group, host } => {
                if let Some(room) = self.by_group.get(&group).cloned() {
                    self.remove_name(&room, host);
                    tracing::info!(room = %room, %group, %host, "left room through the admin API");
                }
            }
            OutsideChange::HostData { host, data } => {
                let name = String::from_utf8_lossy(&data).into_owned();
                for room in self.by_host.get(&host).cloned().unwrap_or_default() {
                    if let Some(entry) = self.rooms.get_mut(&room) {
                        entry.names.insert(host, name.clone());
                    }
                }
            }
            OutsideChange::Destroyed { group } => {
                if self.forget_group(group) {
                    tracing::info!(%group, "room removed through the admin API");
                }
            }
        }
    }

    /// Takes one server event at `now`; returns the reply to send, if any, and to whom.
    fn handle_event(
        &mut self,
        groups: &impl GroupOps,
        event: ServerEvent,
        now: Instant,
    ) -> Option<(HostId, RoomsReply)> {
        match event {
            ServerEvent::Message {
                from,
                group: None,
                payload,
                ..
            } => self
                .handle_message(groups, from, &payload, now)
                .map(|reply| (from, reply)),
            ServerEvent::Message {
                from,
                group: Some(group),
                ..
            } => {
                tracing::debug!(%from, %group, "ignoring a group message to the server");
                None
            }
            ServerEvent::GroupRemoved { group } => {
                self.group_removed(group);
                None
            }
            ServerEvent::ClientDisconnected { host, reason } => {
                tracing::debug!(%host, %reason, "client left the rooms app");
                self.client_disconnected(host);
                None
            }
            ServerEvent::ClientConnected {
                host, remote_addr, ..
            } => {
                tracing::debug!(%host, %remote_addr, "client connected");
                None
            }
            _ => None,
        }
    }

    /// Answers one request payload. `None` when the sender is gone and no reply makes
    /// sense.
    fn handle_message(
        &mut self,
        groups: &impl GroupOps,
        from: HostId,
        payload: &[u8],
        now: Instant,
    ) -> Option<RoomsReply> {
        let limits = self.limits_of(from, now);
        if !limits.budget.take(1, now) {
            let wait = limits.budget.wait();
            tracing::debug!(%from, "rooms request over the rate limit");
            return Some(refused(
                "",
                &format!("too many requests; retry in {} ms", wait.as_millis().max(1)),
            ));
        }
        let request: RoomsRequest = match decode_body(payload) {
            Ok(request) => request,
            Err(error) => {
                self.malformed_requests += 1;
                tracing::debug!(
                    %from,
                    %error,
                    len = payload.len(),
                    total = self.malformed_requests,
                    "malformed rooms request"
                );
                return Some(refused("", "malformed request"));
            }
        };
        match request {
            RoomsRequest::Join {
                room,
                password,
                name,
            } => self.join(groups, from, room, password, name, now),
            RoomsRequest::Leave { room } => Some(self.leave(groups, from, room)),
            RoomsRequest::List => Some(RoomsReply::Rooms(self.list(groups, None))),
            RoomsRequest::ListAfter { after } => {
                Some(RoomsReply::Rooms(self.list(groups, Some(&after))))
            }
        }
    }

    fn join(
        &mut self,
        groups: &impl GroupOps,
        from: HostId,
        room: String,
        password: Option<String>,
        name: String,
        now: Instant,
    ) -> Option<RoomsReply> {
        if let Err(reason) = validate_join(&room, password.as_deref(), &name) {
            tracing::debug!(%from, room = ?shorten(&room), %reason, "join refused");
            return Some(refused(&room, &reason));
        }
        let password = password.filter(|p| !p.is_empty());
        // A room whose group the server already removed (its GroupRemoved still queued)
        // is gone: forget it, so its password does not guard the fresh one.
        self.forget_if_gone(groups, &room);

        let mut joined = None;
        if let Some(existing) = self.rooms.get(&room) {
            let group = existing.group;
            match (&existing.password, &password) {
                (Some(_), None) => return Some(self.refuse_join(from, &room, "password required")),
                (Some(expected), Some(given)) if !expected.matches(given) => {
                    return self.wrong_password(groups, from, &room, now);
                }
                _ => {}
            }
            let members = groups.group_members(group).unwrap_or_default();
            if !members.contains(&from) {
                if members.len() >= self.config.max_room_members {
                    return Some(self.refuse_join(from, &room, "room is full"));
                }
                if self.rooms_of(from) >= self.config.max_rooms_per_client {
                    return Some(self.refuse_join(from, &room, "in too many rooms"));
                }
            }
            if !members.contains(&from) {
                set_display_name(groups, from, &name);
            }
            match groups.join_group(group, from, Bytes::from(name.clone().into_bytes())) {
                Ok(outcome) => joined = Some((group, outcome)),
                Err(GroupError::UnknownGroup(_)) => {
                    // Emptied and removed between our look and the join: start afresh.
                    tracing::debug!(room = %room, %group, "room's group vanished; recreating");
                    self.forget_group(group);
                }
                Err(GroupError::UnknownHost(_)) => {
                    tracing::debug!(%from, room = %room, "join dropped: the client is gone");
                    return None;
                }
                Err(error) => {
                    tracing::warn!(%from, room = %room, %error, "join failed");
                    return Some(refused(&room, &error.to_string()));
                }
            }
        }

        let (group, outcome) = match joined {
            Some(joined) => joined,
            None => {
                if self.rooms.len() >= self.config.max_rooms {
                    return Some(self.refuse_join(from, &room, "too many rooms"));
                }
                if self.rooms_of(from) >= self.config.max_rooms_per_client {
                    return Some(self.refuse_join(from, &room, "in too many rooms"));
                }
                if self.limits_of(from, now).created >= self.config.max_rooms_created_per_client {
                    return Some(self.refuse_join(from, &room, "created too many rooms"));
                }
                let password = match password
                    .map(|p| RoomPassword::new(&p, &self.random))
                    .transpose()
                {
                    Ok(password) => password,
                    Err(_) => {
                        tracing::error!("no randomness for a password's salt; room not made");
                        return Some(refused(&room, "server error"));
                    }
                };
                set_display_name(groups, from, &name);
                let message = Bytes::from(name.clone().into_bytes());
                let group = match groups.create_group(from, room_group_options(), message) {
                    Ok(group) => group,
                    Err(GroupError::UnknownHost(_)) => {
                        tracing::debug!(%from, room = %room, "create dropped: the client is gone");
                        return None;
                    }
                    Err(error) => {
                        tracing::warn!(%from, room = %room, %error, "creating a room failed");
                        return Some(refused(&room, &error.to_string()));
                    }
                };
                tracing::info!(
                    room = %room,
                    %group,
                    creator = %from,
                    password = password.is_some(),
                    "room created"
                );
                self.by_group.insert(group, room.clone());
                self.names.lock().insert(
                    group,
                    RoomLabel {
                        name: room.clone(),
                        password: password.is_some(),
                    },
                );
                self.rooms.insert(
                    room.clone(),
                    Room {
                        group,
                        password,
                        creator: from,
                        names: BTreeMap::new(),
                    },
                );
                self.limits_of(from, now).created += 1;
                (group, JoinOutcome::Joined)
            }
        };

        let members = groups.group_members(group).unwrap_or_default();
        let entry = self.rooms.get_mut(&room)?;
        // Drop names of hosts that are no longer members (a missed disconnect event).
        let stale: Vec<HostId> = entry
            .names
            .keys()
            .filter(|h| !members.contains(h))
            .copied()
            .collect();
        for host in stale {
            entry.names.remove(&host);
            if let Some(set) = self.by_host.get_mut(&host) {
                set.remove(&room);
                if set.is_empty() {
                    self.by_host.remove(&host);
                }
            }
        }
        match outcome {
            JoinOutcome::Joined => {
                entry.names.insert(from, name.clone());
            }
            JoinOutcome::AlreadyMember => {
                entry.names.entry(from).or_insert_with(|| name.clone());
            }
        }
        self.by_host.entry(from).or_default().insert(room.clone());
        tracing::info!(room = %room, %group, host = %from, name = ?name, ?outcome, "joined room");
        let members = members
            .into_iter()
            .map(|host| {
                let name = entry.names.get(&host).cloned().unwrap_or_else(|| {
                    tracing::warn!(room = %room, %host, "member without a display name");
                    String::new()
                });
                (host, name)
            })
            .collect();
        Some(RoomsReply::Joined {
            room,
            group,
            members,
        })
    }

    /// Refuses a wrong password, and disconnects a client that has given too many.
    fn wrong_password(
        &mut self,
        groups: &impl GroupOps,
        from: HostId,
        room: &str,
        now: Instant,
    ) -> Option<RoomsReply> {
        let most = self.config.max_wrong_passwords;
        let limits = self.limits_of(from, now);
        limits.wrong_passwords += 1;
        if limits.wrong_passwords > most {
            tracing::info!(%from, "too many wrong room passwords; disconnecting");
            groups.disconnect(from, "too many wrong room passwords");
            self.client_disconnected(from);
            return None;
        }
        Some(self.refuse_join(from, room, "wrong password"))
    }

    fn refuse_join(&self, from: HostId, room: &str, reason: &str) -> RoomsReply {
        tracing::debug!(%from, room = %room, %reason, "join refused");
        refused(room, reason)
    }

    fn leave(&mut self, groups: &impl GroupOps, from: HostId, room: String) -> RoomsReply {
        let Some(group) = self.rooms.get(&room).map(|r| r.group) else {
            tracing::debug!(%from, room = ?shorten(&room), "leave refused: no such room");
            return refused(&room, "no such room");
        };
        match groups.leave_group(group, from) {
            Ok(()) => {
                self.remove_name(&room, from);
                tracing::info!(room = %room, %group, host = %from, "left room");
                RoomsReply::Left { room }
            }
            Err(GroupError::UnknownGroup(_)) => {
                self.forget_group(group);
                refused(&room, "no such room")
            }
            Err(GroupError::NotMember { .. }) => {
                // Tidy a name left behind by a missed event.
                self.remove_name(&room, from);
                refused(&room, "not in room")
            }
            Err(error) => {
                tracing::warn!(%from, room = %room, %error, "leave failed");
                refused(&room, &error.to_string())
            }
        }
    }

    /// At most [`MAX_LIST_ROOMS`] rooms, in name order, after `after` if given.
    fn list(&mut self, groups: &impl GroupOps, after: Option<&str>) -> Vec<RoomSummary> {
        let mut list = Vec::with_capacity(self.rooms.len().min(MAX_LIST_ROOMS));
        let mut gone = Vec::new();
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        for (name, room) in self
            .rooms
            .range::<str, _>((from, Bound::Unbounded))
            .take(MAX_LIST_ROOMS)
        {
            match groups.group_members(room.group) {
                Ok(members) => list.push(RoomSummary {
                    name: name.clone(),
                    members: u32::try_from(members.len()).unwrap_or(u32::MAX),
                    password: room.password.is_some(),
                }),
                Err(_) => gone.push(room.group),
            }
        }
        for group in gone {
            self.forget_group(group);
        }
        list
    }

    /// The server removed `group`; forget its room (if it still is one of ours).
    fn group_removed(&mut self, group: GroupId) {
        if self.forget_group(group) {
            tracing::info!(%group, "room removed: its group emptied");
        }
    }

    fn client_disconnected(&mut self, host: HostId) {
        self.clients.remove(&host);
        for room in self.by_host.remove(&host).unwrap_or_default() {
            if let Some(room) = self.rooms.get_mut(&room) {
                room.names.remove(&host);
            }
        }
    }

    fn forget_if_gone(&mut self, groups: &impl GroupOps, room: &str) {
        if let Some(group) = self.rooms.get(room).map(|r| r.group) {
            if let Err(GroupError::UnknownGroup(_)) = groups.group_members(group) {
                self.forget_group(group);
            }
        }
    }

    /// Forgets the room of `group`; `false` when no room has that group (any more).
    fn forget_group(&mut self, group: GroupId) -> bool {
        let Some(name) = self.by_group.remove(&group) else {
            return false;
        };
        self.names.lock().remove(&group);
        if let Some(room) = self.rooms.remove(&name) {
            if let Some(creator) = self.clients.get_mut(&room.creator) {
                creator.created = creator.created.saturating_sub(1);
            }
            for host in room.names.keys() {
                if let Some(set) = self.by_host.get_mut(host) {
                    set.remove(&name);
                    if set.is_empty() {
                        self.by_host.remove(host);
                    }
                }
            }
        }
        true
    }

    fn remove_name(&mut self, room: &str, host: HostId) {
        if let Some(entry) = self.rooms.get_mut(room) {
            entry.names.remove(&host);
        }
        if let Some(set) = self.by_host.get_mut(&host) {
            set.remove(room);
            if set.is_empty() {
                self.by_host.remove(&host);
            }
        }
    }

    fn rooms_of(&self, host: HostId) -> usize {
        self.by_host.get(&host).map_or(0, BTreeSet::len)
    }
}

fn refused(room: &str, reason: &str) -> RoomsReply {
    RoomsReply::Refused {
        room: shorten(room).to_owned(),
        reason: reason.to_owned(),
    }
}

/// `text` cut to at most [`MAX_ROOM_NAME_LEN`] bytes on a character boundary, so a
/// refusal never echoes an oversized name back.
fn shorten(text: &str) -> &str {
    let mut end = text.len().min(MAX_ROOM_NAME_LEN);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Checks a join's fields; `Err` holds the reason to show.
fn validate_join(room: &str, password: Option<&str>, name: &str) -> Result<(), String> {
    validate_name("room name", room, MAX_ROOM_NAME_LEN)?;
    validate_name("display name", name, MAX_DISPLAY_NAME_LEN)?;
    if let Some(password) = password {
        if password.len() > MAX_PASSWORD_LEN {
            return Err(format!("password is longer than {MAX_PASSWORD_LEN} bytes"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use peergroup_protocol::{Fingerprint, Notice};
    use peergroup_server::registry::{Action, Registry, RegistryConfig};
    use std::cell::RefCell;
    use std::time::Instant;

    /// The sans-IO registry standing in for the server.
    struct World {
        registry: RefCell<Registry>,
        now: Instant,
        rooms: Rooms,
        next_identity: u8,
    }

    impl GroupOps for RefCell<Registry> {
        fn create_group(
            &self,
            creator: HostId,
            options: GroupOptions,
            join_message: Bytes,
        ) -> Result<GroupId, GroupError> {
            self.borrow_mut().create_group(
                &[creator],
                options,
                Bytes::new(),
                join_message,
                Instant::now(),
            )
        }

        fn join_group(
            &self,
            group: GroupId,
            host: HostId,
            join_message: Bytes,
        ) -> Result<JoinOutcome, GroupError> {
            self.borrow_mut()
                .join_group(group, host, join_message, Instant::now())
        }

        fn leave_group(&self, group: GroupId, host: HostId) -> Result<(), GroupError> {
            self.borrow_mut().leave_group(group, host, Instant::now())
        }

        fn group_members(&self, group: GroupId) -> Result<Vec<HostId>, GroupError> {
            self.borrow().group_members(group)
        }

        fn set_host_data(&self, host: HostId, data: Bytes) -> Result<(), GroupError> {
            self.borrow_mut().set_host_data(host, data)
        }

        fn host_data(&self, host: HostId) -> Option<Bytes> {
            self.borrow().host_data(host)
        }

        fn disconnect(&self, host: HostId, _reason: &str) {
            self.borrow_mut().handle_disconnect(host, Instant::now());
        }
    }

    impl World {
        fn new() -> Self {
            Self::with_config(RoomsConfig::default())
        }

        fn with_config(config: RoomsConfig) -> Self {
            Self {
                registry: RefCell::new(Registry::new(RegistryConfig::default(), Instant::now())),
                now: Instant::now(),
                rooms: Rooms::new(config),
                next_identity: 0,
            }
        }

        fn connect(&mut self) -> HostId {
            self.next_identity += 1;
            self.registry.borrow_mut().handle_connect(
                Fingerprint([self.next_identity; 32]),
                std::net::SocketAddr::from(([127, 0, 0, 1], 1000 + u16::from(self.next_identity))),
                Bytes::new(),
            )
        }

        /// Disconnects `host` in the server without telling the rooms app yet.
        fn disconnect_quietly(&mut self, host: HostId) {
            self.registry.borrow_mut().handle_disconnect(host, self.now);
        }

        /// Takes every action the registry produced.
        fn drain(&mut self) -> Vec<Action> {
            std::iter::from_fn(|| self.registry.borrow_mut().poll_action()).collect()
        }

        /// Feeds every queued registry event to the rooms app, as `run` would; returns the
        /// other actions (frames to clients).
        fn pump(&mut self) -> Vec<Action> {
            let mut frames = Vec::new();
            for action in self.drain() {
                match action {
                    Action::Event(event) => {
                        assert!(self
                            .rooms
                            .handle_event(&self.registry, event, self.now)
                            .is_none());
                    }
                    other => frames.push(other),
                }
            }
            frames
        }

        /// Sends `payload` as `from`, 100 ms after the request before (so the ordinary
        /// tests stay inside the rate limit; its own test holds the clock still).
        fn send_bytes(&mut self, from: HostId, payload: &[u8]) -> Option<RoomsReply> {
            self.now += std::time::Duration::from_millis(100);
            let event = ServerEvent::Message {
                from,
                group: None,
                payload: Bytes::copy_from_slice(payload),
                delivery: Delivery::ReliableOrdered,
                channel: 0,
            };
            let reply = self.rooms.handle_event(&self.registry, event, self.now);
            reply.map(|(to, reply)| {
                assert_eq!(to, from, "replies go to the sender");
                reply
            })
        }

        fn request(&mut self, from: HostId, request: &RoomsRequest) -> Option<RoomsReply> {
            let bytes = datagram_to_bytes(request).unwrap();
            self.send_bytes(from, &bytes)
        }

        fn join(
            &mut self,
            from: HostId,
            room: &str,
            password: Option<&str>,
            name: &str,
        ) -> RoomsReply {
            self.request(
                from,
                &RoomsRequest::Join {
                    room: room.into(),
                    password: password.map(Into::into),
                    name: name.into(),
                },
            )
            .expect("a connected client gets a reply")
        }

        fn leave(&mut self, from: HostId, room: &str) -> RoomsReply {
            self.request(from, &RoomsRequest::Leave { room: room.into() })
                .expect("a reply")
        }

        fn list(&mut self, from: HostId) -> Vec<RoomSummary> {
            match self.request(from, &RoomsRequest::List) {
                Some(RoomsReply::Rooms(list)) => list,
                other => panic!("expected a room list, got {other:?}"),
            }
        }
    }

    fn joined_group(reply: &RoomsReply) -> GroupId {
        match reply {
            RoomsReply::Joined { group, .. } => *group,
            other => panic!("expected Joined, got {other:?}"),
        }
    }

    fn refusal(reply: &RoomsReply) -> &str {
        match reply {
            RoomsReply::Refused { reason, .. } => reason,
            other => panic!("expected Refused, got {other:?}"),
        }
    }

    fn summary(name: &str, members: u32, password: bool) -> RoomSummary {
        RoomSummary {
            name: name.into(),
            members,
            password,
        }
    }

    /// `MemberJoined` notices sent to `to`, as (member, join message, member data).
    fn joins_seen_by(actions: &[Action], to: HostId) -> Vec<(HostId, Vec<u8>, Vec<u8>)> {
        actions
            .iter()
            .filter_map(|action| match action {
                Action::Notice {
                    to: t,
                    notice:
                        Notice::MemberJoined {
                            member,
                            join_message,
                            member_data,
                            ..
                        },
                    ..
                } if *t == to => Some((*member, join_message.to_vec(), member_data.to_vec())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn first_join_creates_a_room_that_the_server_removes_when_it_empties() {
        let mut w = World::new();
        let alice = w.connect();
        let reply = w.join(alice, "lobby", None, "alice");
        let group = joined_group(&reply);
        assert_eq!(
            reply,
            RoomsReply::Joined {
                room: "lobby".into(),
                group,
                members: vec![(alice, "alice".into())],
            }
        );
        assert_eq!(
            w.registry.borrow().group_options(group).unwrap(),
            room_group_options()
        );
        assert!(!room_group_options().allow_empty);
        let frames = w.pump();
        assert_eq!(
            joins_seen_by(&frames, alice),
            vec![(alice, b"alice".to_vec(), b"alice".to_vec())]
        );
        assert_eq!(w.list(alice), vec![summary("lobby", 1, false)]);

        assert_eq!(
            w.leave(alice, "lobby"),
            RoomsReply::Left {
                room: "lobby".into()
            }
        );
        w.pump(); // GroupRemoved
        assert!(w.rooms.rooms.is_empty());
        assert!(w.rooms.by_group.is_empty());
        assert!(w.rooms.by_host.is_empty());
        assert_eq!(w.list(alice), vec![]);

        // The name is free again, with a new group and new rules.
        let again = joined_group(&w.join(alice, "lobby", Some("pw"), "alice"));
        assert_ne!(again, group);
        assert_eq!(w.list(alice), vec![summary("lobby", 1, true)]);
    }

    #[test]
    fn later_joiners_see_everyone_and_everyone_learns_their_name() {
        let mut w = World::new();
        let alice = w.connect();
        let bob = w.connect();
        let group = joined_group(&w.join(alice, "lobby", None, "alice"));
        w.pump();
        let reply = w.join(bob, "lobby", None, "bob");
        assert_eq!(
            reply,
            RoomsReply::Joined {
                room: "lobby".into(),
                group,
                members: vec![(alice, "alice".into()), (bob, "bob".into())],
            }
        );
        let frames = w.pump();
        assert_eq!(
            joins_seen_by(&frames, alice),
            vec![(bob, b"bob".to_vec(), b"bob".to_vec())]
        );
        // Every notice of one join carries that join's message (the joiner's name), and
        // each notice carries its member's own name as host data: the joiner learns
        // alice's name from the notice about her.
        assert_eq!(
            joins_seen_by(&frames, bob),
            vec![
                (alice, b"bob".to_vec(), b"alice".to_vec()),
                (bob, b"bob".to_vec(), b"bob".to_vec())
            ]
        );
        assert_eq!(w.list(bob), vec![summary("lobby", 2, false)]);
    }

    #[test]
    fn password_rules() {
        let mut w = World::new();
        let alice = w.connect();
        let bob = w.connect();
        joined_group(&w.join(alice, "secret", Some("hunter2"), "alice"));
        assert_eq!(
            refusal(&w.join(bob, "secret", None, "bob")),
            "password required"
        );
        assert_eq!(
            refusal(&w.join(bob, "secret", Some(""), "bob")),
            "password required"
        );
        assert_eq!(
            refusal(&w.join(bob, "secret", Some("hunter3"), "bob")),
            "wrong password"
        );
        assert_eq!(
            refusal(&w.join(bob, "secret", Some("Hunter2"), "bob")),
            "wrong password"
        );
        assert_eq!(
            w.join(bob, "secret", Some("wrong"), "bob"),
            RoomsReply::Refused {
                room: "secret".into(),
                reason: "wrong password".into()
            }
        );
        joined_group(&w.join(bob, "secret", Some("hunter2"), "bob"));

        // An empty password makes an open room; an open room ignores a given password.
        joined_group(&w.join(alice, "open", Some(""), "alice"));
        joined_group(&w.join(bob, "open", Some("anything"), "bob"));
        assert_eq!(
            w.list(alice),
            vec![summary("open", 2, false), summary("secret", 2, true)]
        );
    }

    #[test]
    fn invalid_joins_are_refused_with_a_reason() {
        let mut w = World::new();
        let alice = w.connect();
        let long_room = "r".repeat(MAX_ROOM_NAME_LEN + 1);
        let cases = [
            ("", None, "alice", "room name is empty".to_string()),
            (
                long_room.as_str(),
                None,
                "alice",
                format!("room name is longer than {MAX_ROOM_NAME_LEN} bytes"),
            ),
            (
                "a\nb",
                None,
                "alice",
                "room name contains control characters".into(),
            ),
            ("lobby", None, "", "display name is empty".into()),
            (
                "lobby",
                None,
                &"n".repeat(MAX_DISPLAY_NAME_LEN + 1),
                format!("display name is longer than {MAX_DISPLAY_NAME_LEN} bytes"),
            ),
            (
                "lobby",
                None,
                "al\u{7}ice",
                "display name contains control characters".into(),
            ),
            (
                "lobby",
                Some("p".repeat(MAX_PASSWORD_LEN + 1)),
                "alice",
                format!("password is longer than {MAX_PASSWORD_LEN} bytes"),
            ),
        ];
        for (room, password, name, reason) in cases {
            let reply = w.join(alice, room, password.as_deref(), name);
            assert_eq!(refusal(&reply), reason, "{room:?} {name:?}");
        }
        // Nothing was created, and an oversized name is not echoed in full.
        assert_eq!(w.list(alice), vec![]);
        assert!(w.registry.borrow().groups().is_empty());
        match w.join(alice, &long_room, None, "alice") {
            RoomsReply::Refused { room, .. } => assert_eq!(room.len(), MAX_ROOM_NAME_LEN),
            other => panic!("{other:?}"),
        }
        // Multi-byte characters are counted in bytes and cut on a boundary.
        let wide = "é".repeat(MAX_ROOM_NAME_LEN / 2 + 1);
        match w.join(alice, &wide, None, "alice") {
            RoomsReply::Refused { room, .. } => assert_eq!(room, "é".repeat(32)),
            other => panic!("{other:?}"),
        }

        // The limits themselves are allowed.
        let room = "r".repeat(MAX_ROOM_NAME_LEN);
        let name = "n".repeat(MAX_DISPLAY_NAME_LEN);
        let password = "p".repeat(MAX_PASSWORD_LEN);
        joined_group(&w.join(alice, &room, Some(&password), &name));
        joined_group(&w.join(alice, "ünïcødé room", None, "名前"));
    }

    #[test]
    fn joining_twice_is_not_a_failure_and_keeps_the_first_name() {
        let mut w = World::new();
        let alice = w.connect();
        let group = joined_group(&w.join(alice, "lobby", None, "alice"));
        w.pump();
        let again = w.join(alice, "lobby", None, "alicia");
        assert_eq!(
            again,
            RoomsReply::Joined {
                room: "lobby".into(),
                group,
                members: vec![(alice, "alice".into())],
            }
        );
        // Nothing new went out.
        assert!(w.pump().is_empty());
        assert_eq!(w.list(alice), vec![summary("lobby", 1, false)]);
    }

    #[test]
    fn a_client_may_be_in_several_rooms() {
        let mut w = World::new();
        let alice = w.connect();
        let a = joined_group(&w.join(alice, "a", None, "alice"));
        let b = joined_group(&w.join(alice, "b", None, "ally"));
        assert_ne!(a, b);
        assert_eq!(w.registry.borrow().groups_of(alice).unwrap().len(), 2);
        assert_eq!(w.leave(alice, "a"), RoomsReply::Left { room: "a".into() });
        w.pump();
        assert_eq!(w.list(alice), vec![summary("b", 1, false)]);
    }

    #[test]
    fn leave_rules() {
        let mut w = World::new();
        let alice = w.connect();
        let bob = w.connect();
        joined_group(&w.join(alice, "lobby", None, "alice"));
        assert_eq!(
            w.leave(bob, "lobby"),
            RoomsReply::Refused {
                room: "lobby".into(),
                reason: "not in room".into()
            }
        );
        assert_eq!(refusal(&w.leave(bob, "nowhere")), "no such room");
        joined_group(&w.join(bob, "lobby", None, "bob"));
        assert_eq!(
            w.leave(bob, "lobby"),
            RoomsReply::Left {
                room: "lobby".into()
            }
        );
        assert_eq!(refusal(&w.leave(bob, "lobby")), "not in room");
        w.pump();
        assert_eq!(w.list(alice), vec![summary("lobby", 1, false)]);
        assert_eq!(w.rooms.rooms["lobby"].names.len(), 1);
    }

    #[test]
    fn list_is_sorted_by_name_with_counts() {
        let mut w = World::new();
        let hosts: Vec<HostId> = (0..3).map(|_| w.connect()).collect();
        joined_group(&w.join(hosts[0], "zeta", None, "h0"));
        joined_group(&w.join(hosts[1], "alpha", Some("x"), "h1"));
        joined_group(&w.join(hosts[2], "Mid", None, "h2"));
        joined_group(&w.join(hosts[2], "alpha", Some("x"), "h2"));
        joined_group(&w.join(hosts[0], "alpha", Some("x"), "h0"));
        assert_eq!(
            w.list(hosts[0]),
            vec![
                summary("Mid", 1, false),
                summary("alpha", 3, true),
                summary("zeta", 1, false),
            ]
        );
    }

    #[test]
    fn a_disconnect_forgets_names_and_an_emptied_room_goes() {
        let mut w = World::new();
        let alice = w.connect();
        let bob = w.connect();
        let group = joined_group(&w.join(alice, "lobby", None, "alice"));
        joined_group(&w.join(bob, "lobby", None, "bob"));
        joined_group(&w.join(bob, "solo", None, "bob"));
        w.pump();

        w.disconnect_quietly(bob);
        w.pump(); // GroupRemoved for "solo"
        assert!(w
            .rooms
            .handle_event(
                &w.registry,
                ServerEvent::ClientDisconnected {
                    host: bob,
                    reason: peergroup_server::DisconnectReason::TimedOut,
                },
                w.now,
            )
            .is_none());
        assert!(!w.rooms.by_host.contains_key(&bob));
        assert_eq!(w.list(alice), vec![summary("lobby", 1, false)]);

        let carol = w.connect();
        assert_eq!(
            w.join(carol, "lobby", None, "carol"),
            RoomsReply::Joined {
                room: "lobby".into(),
                group,
                members: vec![(alice, "alice".into()), (carol, "carol".into())],
            }
        );
    }

    #[test]
    fn a_request_from_a_client_that_is_gone_gets_no_reply() {
        let mut w = World::new();
        let alice = w.connect();
        let bob = w.connect();
        joined_group(&w.join(alice, "lobby", None, "alice"));
        w.disconnect_quietly(bob);
        assert_eq!(
            w.request(
                bob,
                &RoomsRequest::Join {
                    room: "lobby".into(),
                    password: None,
                    name: "bob".into()
                }
            ),
            None
        );
        assert_eq!(
            w.request(
                bob,
                &RoomsRequest::Join {
                    room: "fresh".into(),
                    password: None,
                    name: "bob".into()
                }
            ),
            None
        );
        assert!(!w.rooms.by_host.contains_key(&bob));
        assert_eq!(w.list(alice), vec![summary("lobby", 1, false)]);
    }

    #[test]
    fn a_room_whose_group_vanished_is_recreated_with_the_new_password() {
        let mut w = World::new();
        let alice = w.connect();
        let bob = w.connect();
        let old = joined_group(&w.join(alice, "lobby", Some("old"), "alice"));
        w.pump();
        // The group empties in the server; its GroupRemoved is not handled yet.
        w.disconnect_quietly(alice);
        let pending = w.drain();
        let new = joined_group(&w.join(bob, "lobby", Some("new"), "bob"));
        assert_ne!(new, old);
        // The late GroupRemoved of the old group must not forget the new room.
        for action in pending {
            if let Action::Event(event) = action {
                assert!(w.rooms.handle_event(&w.registry, event, w.now).is_none());
            }
        }
        assert_eq!(w.list(bob), vec![summary("lobby", 1, true)]);
        let carol = w.connect();
        assert_eq!(
            refusal(&w.join(carol, "lobby", Some("old"), "carol")),
            "wrong password"
        );
        joined_group(&w.join(carol, "lobby", Some("new"), "carol"));
    }

    #[test]
    fn join_recovers_when_the_group_is_unknown_to_the_server() {
        // The race inside join itself: the room is known and its group looked alive, but
        // join_group says it is gone. Simulate by removing the group behind the app's back
        // and calling the join path directly after the liveness check would have passed.
        struct Vanishing<'a>(&'a RefCell<Registry>, std::cell::Cell<bool>);
        impl GroupOps for Vanishing<'_> {
            fn create_group(
                &self,
                creator: HostId,
                options: GroupOptions,
                join_message: Bytes,
            ) -> Result<GroupId, GroupError> {
                self.0.create_group(creator, options, join_message)
            }
            fn join_group(
                &self,
                group: GroupId,
                _host: HostId,
                _join_message: Bytes,
            ) -> Result<JoinOutcome, GroupError> {
                self.1.set(true);
                Err(GroupError::UnknownGroup(group))
            }
            fn leave_group(&self, group: GroupId, host: HostId) -> Result<(), GroupError> {
                self.0.leave_group(group, host)
            }
            fn group_members(&self, group: GroupId) -> Result<Vec<HostId>, GroupError> {
                self.0.group_members(group)
            }
            fn set_host_data(&self, host: HostId, data: Bytes) -> Result<(), GroupError> {
                self.0.set_host_data(host, data)
            }
            fn host_data(&self, host: HostId) -> Option<Bytes> {
                self.0.host_data(host)
            }
            fn disconnect(&self, host: HostId, reason: &str) {
                self.0.disconnect(host, reason)
            }
        }
        let mut w = World::new();
        let alice = w.connect();
        let bob = w.connect();
        let old = joined_group(&w.join(alice, "lobby", Some("pw"), "alice"));
        let ops = Vanishing(&w.registry, std::cell::Cell::new(false));
        let reply = w
            .rooms
            .join(
                &ops,
                bob,
                "lobby".into(),
                Some("pw".into()),
                "bob".into(),
                w.now,
            )
            .unwrap();
        assert!(ops.1.get(), "join_group was tried");
        let new = joined_group(&reply);
        assert_ne!(new, old);
        assert_eq!(
            w.rooms.by_group.get(&new).map(String::as_str),
            Some("lobby")
        );
        assert!(!w.rooms.by_group.contains_key(&old));
        assert!(!w.rooms.by_host.contains_key(&alice));
    }

    #[test]
    fn changes_made_from_outside_keep_the_books() {
        let mut w = World::new();
        let alice = w.connect();
        let bob = w.connect();
        let group = joined_group(&w.join(alice, "lobby", None, "alice"));
        w.pump();
        assert_eq!(w.rooms.names.get(group).unwrap().name, "lobby");

        // An operator joins bob, named by his host data.
        w.registry
            .set_host_data(bob, Bytes::from_static(b"Bob"))
            .unwrap();
        GroupOps::join_group(&w.registry, group, bob, Bytes::new()).unwrap();
        w.pump();
        w.rooms
            .handle_change(&w.registry, OutsideChange::Joined { group, host: bob });
        assert_eq!(w.rooms.rooms["lobby"].names[&bob], "Bob");
        assert_eq!(w.rooms.rooms_of(bob), 1);
        // A rename reaches every room of the host.
        w.rooms.handle_change(
            &w.registry,
            OutsideChange::HostData {
                host: bob,
                data: Bytes::from_static(b"Robert"),
            },
        );
        assert_eq!(w.rooms.rooms["lobby"].names[&bob], "Robert");
        // An operator takes alice out.
        GroupOps::leave_group(&w.registry, group, alice).unwrap();
        w.pump();
        w.rooms
            .handle_change(&w.registry, OutsideChange::Left { group, host: alice });
        assert!(!w.rooms.rooms["lobby"].names.contains_key(&alice));
        assert_eq!(w.rooms.rooms_of(alice), 0);
        // A group that is no room changes nothing.
        let other = GroupId::from_raw(4242);
        w.rooms.handle_change(
            &w.registry,
            OutsideChange::Joined {
                group: other,
                host: alice,
            },
        );
        assert_eq!(w.rooms.rooms_of(alice), 0);
        // Destroyed: the room and its label go.
        w.rooms
            .handle_change(&w.registry, OutsideChange::Destroyed { group });
        assert!(w.rooms.rooms.is_empty() && w.rooms.names.get(group).is_none());
        assert_eq!(w.rooms.rooms_of(bob), 0);
    }

    #[test]
    fn malformed_requests_are_refused_not_fatal() {
        let mut w = World::new();
        let alice = w.connect();
        let valid = datagram_to_bytes(&RoomsRequest::List).unwrap();
        let mut trailing = valid.to_vec();
        trailing.push(0);
        for payload in [
            &b""[..],
            &[0xff, 0xff, 0xff],
            &[0x00, 0x05, b'a'],
            &trailing,
        ] {
            assert_eq!(
                w.send_bytes(alice, payload),
                Some(RoomsReply::Refused {
                    room: String::new(),
                    reason: "malformed request".into()
                }),
                "{payload:?}"
            );
        }
        // Invalid UTF-8 in a name is malformed too.
        let join = datagram_to_bytes(&RoomsRequest::Join {
            room: "ab".into(),
            password: None,
            name: "n".into(),
        })
        .unwrap();
        let mut bad = join.to_vec();
        bad[2] = 0xff;
        assert_eq!(
            refusal(&w.send_bytes(alice, &bad).unwrap()),
            "malformed request"
        );
        assert_eq!(w.list(alice), vec![]);
    }

    #[test]
    fn group_messages_and_other_events_are_ignored() {
        let mut w = World::new();
        let alice = w.connect();
        let group = joined_group(&w.join(alice, "lobby", None, "alice"));
        let event = ServerEvent::Message {
            from: alice,
            group: Some(group),
            payload: datagram_to_bytes(&RoomsRequest::List).unwrap(),
            delivery: Delivery::ReliableOrdered,
            channel: 0,
        };
        assert!(w.rooms.handle_event(&w.registry, event, w.now).is_none());
        let event = ServerEvent::JoinAckComplete {
            group,
            member: alice,
            result: Ok(()),
        };
        assert!(w.rooms.handle_event(&w.registry, event, w.now).is_none());
        // A GroupRemoved for a group that is no room changes nothing.
        w.rooms.group_removed(GroupId::from_raw(12345));
        assert_eq!(w.list(alice), vec![summary("lobby", 1, false)]);
    }

    #[test]
    fn limits_are_enforced() {
        let mut w = World::with_config(RoomsConfig {
            max_rooms: 3,
            max_rooms_per_client: 2,
            max_room_members: 2,
            ..RoomsConfig::default()
        });
        let a = w.connect();
        let b = w.connect();
        let c = w.connect();
        joined_group(&w.join(a, "one", None, "a"));
        joined_group(&w.join(a, "two", None, "a"));
        assert_eq!(refusal(&w.join(a, "three", None, "a")), "in too many rooms");
        joined_group(&w.join(b, "one", None, "b"));
        assert_eq!(refusal(&w.join(c, "one", None, "c")), "room is full");
        // Already being in a room is not limited by either limit.
        joined_group(&w.join(a, "one", None, "a"));
        joined_group(&w.join(b, "three", None, "b"));
        assert_eq!(refusal(&w.join(c, "four", None, "c")), "too many rooms");
        // Leaving frees a place in both senses.
        assert_eq!(w.leave(a, "two"), RoomsReply::Left { room: "two".into() });
        w.pump();
        joined_group(&w.join(c, "four", None, "c"));
        joined_group(&w.join(a, "three", None, "a"));
        assert_eq!(
            w.list(a),
            vec![
                summary("four", 1, false),
                summary("one", 2, false),
                summary("three", 2, false),
            ]
        );
    }

    #[test]
    fn a_client_that_keeps_guessing_a_password_is_disconnected() {
        let mut w = World::new();
        let alice = w.connect();
        let mallory = w.connect();
        joined_group(&w.join(alice, "secret", Some("hunter2"), "alice"));
        let most = RoomsConfig::default().max_wrong_passwords;
        for guess in 0..most {
            assert_eq!(
                refusal(&w.join(mallory, "secret", Some(&format!("guess{guess}")), "m")),
                "wrong password"
            );
            assert!(w.registry.borrow().host_data(mallory).is_some());
        }
        // One more wrong guess: no answer, and the connection is gone.
        assert_eq!(
            w.request(
                mallory,
                &RoomsRequest::Join {
                    room: "secret".into(),
                    password: Some("one more".into()),
                    name: "m".into(),
                }
            ),
            None
        );
        assert!(w.registry.borrow().host_data(mallory).is_none());
        assert!(!w.rooms.clients.contains_key(&mallory));
        // Others are unaffected: the right password still works, the room is intact.
        let bob = w.connect();
        joined_group(&w.join(bob, "secret", Some("hunter2"), "bob"));
        assert_eq!(w.list(alice), vec![summary("secret", 2, true)]);
    }

    #[test]
    fn one_client_cannot_use_up_the_rooms() {
        let mut w = World::new();
        let mallory = w.connect();
        let most = RoomsConfig::default().max_rooms_created_per_client;
        for i in 0..most {
            joined_group(&w.join(mallory, &format!("r{i}"), None, "m"));
        }
        assert_eq!(
            refusal(&w.join(mallory, "one too many", None, "m")),
            "created too many rooms"
        );
        // Joining rooms others made is still fine, and a room it made that empties gives
        // its place back.
        let alice = w.connect();
        joined_group(&w.join(alice, "alice's", None, "alice"));
        joined_group(&w.join(mallory, "alice's", None, "m"));
        assert_eq!(
            w.leave(mallory, "r0"),
            RoomsReply::Left { room: "r0".into() }
        );
        w.pump(); // GroupRemoved
        joined_group(&w.join(mallory, "r0 again", None, "m"));
    }

    #[test]
    fn listings_come_in_pages() {
        let mut w = World::with_config(RoomsConfig {
            max_rooms_created_per_client: 1_000,
            max_rooms_per_client: 1_000,
            ..RoomsConfig::default()
        });
        let alice = w.connect();
        let total = MAX_LIST_ROOMS + 44;
        for i in 0..total {
            joined_group(&w.join(alice, &format!("room{i:04}"), None, "alice"));
        }
        let first = w.list(alice);
        assert_eq!(first.len(), MAX_LIST_ROOMS);
        assert_eq!(first[0].name, "room0000");
        let last = first.last().unwrap().name.clone();
        let next = match w.request(
            alice,
            &RoomsRequest::ListAfter {
                after: last.clone(),
            },
        ) {
            Some(RoomsReply::Rooms(list)) => list,
            other => panic!("{other:?}"),
        };
        assert_eq!(next.len(), 44);
        assert!(next.iter().all(|room| room.name > last));
        assert_eq!(next.last().unwrap().name, format!("room{:04}", total - 1));
        let after_all = RoomsRequest::ListAfter {
            after: "zzz".into(),
        };
        assert_eq!(
            w.request(alice, &after_all),
            Some(RoomsReply::Rooms(vec![]))
        );
    }

    #[test]
    fn requests_past_the_rate_limit_are_refused_cheaply() {
        let mut w = World::new();
        let alice = w.connect();
        let bob = w.connect();
        let config = RoomsConfig::default();
        let list = postcard::to_allocvec(&RoomsRequest::List).unwrap();
        let at = w.now;
        let ask = |w: &mut World, from: HostId, at: Instant| {
            let event = ServerEvent::Message {
                from,
                group: None,
                payload: Bytes::from(list.clone()),
                delivery: Delivery::ReliableOrdered,
                channel: 0,
            };
            w.rooms.handle_event(&w.registry, event, at).map(|(_, r)| r)
        };
        for _ in 0..config.request_burst {
            assert_eq!(ask(&mut w, alice, at), Some(RoomsReply::Rooms(vec![])));
        }
        let refused = ask(&mut w, alice, at).unwrap();
        assert!(
            refusal(&refused).starts_with("too many requests"),
            "{refused:?}"
        );
        // Another client has its own budget.
        assert_eq!(ask(&mut w, bob, at), Some(RoomsReply::Rooms(vec![])));
        // A second later, the rate's worth again.
        let later = at + std::time::Duration::from_secs(1);
        for _ in 0..config.requests_per_sec {
            assert_eq!(ask(&mut w, alice, later), Some(RoomsReply::Rooms(vec![])));
        }
        assert!(refusal(&ask(&mut w, alice, later).unwrap()).starts_with("too many"));
    }

    #[test]
    fn names_that_display_as_something_else_are_refused() {
        let mut w = World::new();
        let alice = w.connect();
        for (room, name) in [("ev\u{202E}li", "alice"), ("lobby", "ad\u{200B}min")] {
            let reason = refusal(&w.join(alice, room, None, name)).to_owned();
            assert!(reason.contains("invisible"), "{reason}");
        }
        assert_eq!(w.list(alice), vec![]);
    }
}
