//! The rooms application: what the `peergroup` CLI and the rooms app inside the
//! `peergroup-server` binary say to each other. These travel as payloads of ordinary
//! reliable messages to and from the server ([`crate::HostId::SERVER`]), postcard-encoded.

use crate::ids::{GroupId, HostId};
use serde::{Deserialize, Serialize};

/// Longest room name, in bytes.
pub const MAX_ROOM_NAME_LEN: usize = 64;
/// Longest display name, in bytes.
pub const MAX_DISPLAY_NAME_LEN: usize = 32;
/// Longest room password, in bytes.
pub const MAX_PASSWORD_LEN: usize = 64;
/// Most rooms one listing answers ([`RoomsRequest::List`], [`RoomsRequest::ListAfter`]):
/// a request of a few bytes never costs the server a reply of every room. A reply of
/// exactly this many may have more after it.
pub const MAX_LIST_ROOMS: usize = 256;

/// A client's request to the rooms app.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RoomsRequest {
    /// Join `room`, creating it (with `password`, if given) when it does not exist.
    Join {
        /// Room name, 1 to [`MAX_ROOM_NAME_LEN`] bytes.
        room: String,
        /// The room's password; needed if the room has one.
        password: Option<String>,
        /// How others see this client, 1 to [`MAX_DISPLAY_NAME_LEN`] bytes.
        name: String,
    },
    /// Leave `room`.
    Leave {
        /// Room name.
        room: String,
    },
    /// The first [`MAX_LIST_ROOMS`] rooms, sorted by name.
    List,
    /// The next [`MAX_LIST_ROOMS`] rooms after `after` in name order: the following page
    /// of a listing, where `after` is the last name of the page before.
    ListAfter {
        /// The last room name already listed.
        after: String,
    },
}

/// The rooms app's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RoomsReply {
    /// The client is in the room now; its group is `group`.
    Joined {
        /// Room name.
        room: String,
        /// The room's P2P group.
        group: GroupId,
        /// Display names of everyone in the room, the joiner included.
        members: Vec<(HostId, String)>,
    },
    /// The request was refused.
    Refused {
        /// Room name (empty for a request that names none).
        room: String,
        /// Readable text, e.g. "wrong password".
        reason: String,
    },
    /// The client left the room.
    Left {
        /// Room name.
        room: String,
    },
    /// Rooms that exist now, sorted by name: at most [`MAX_LIST_ROOMS`] of them.
    Rooms(Vec<RoomSummary>),
}

/// One line of the room list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomSummary {
    /// Room name.
    pub name: String,
    /// Members now.
    pub members: u32,
    /// Whether joining needs a password.
    pub password: bool,
}
