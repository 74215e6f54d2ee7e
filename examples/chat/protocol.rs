//! The chat's messages, declared once and shared by the server and client halves (the
//! role a PIDL file plays in ProudNet). On the wire they are postcard, through
//! `send_message` and `decode`.

use peergroup::client::decode;
use serde::{Deserialize, Serialize};

/// A host's profile: its host data. The auth hook sets it at login and the server
/// application changes it (renames, mutes); peergroup hands it to every member on
/// `MemberJoined` and tells hosts sharing a group of each change (`HostDataChanged`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    /// The nickname everyone sees.
    pub name: String,
    /// Set by the server's moderation: members hide this host's lines.
    pub muted: bool,
}

/// What a group is: its group data, so a member learns the room's name from its own join.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomInfo {
    /// `lobby`, or `party-alice` for alice's party.
    pub name: String,
    /// Parties are invite-only and have no history.
    pub party: bool,
}

/// A client asks the server application (`Target::Server`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Join a public room, created on first join.
    Join { room: String },
    /// Leave a room or party.
    Leave { room: String },
    /// Add the host called `name` to the asker's party (created on first invite).
    Invite { name: String },
    /// Whisper to a host this client shares no group with: the relay would refuse it,
    /// so the server application forwards it.
    Whisper { to: String, text: String },
}

/// The server application tells one client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Notice {
    /// The last lines of a room just joined, oldest first.
    History { room: String, lines: Vec<Said> },
    /// A whisper the server forwarded; `from` is written by the server, not the sender.
    Whisper { from: String, text: String },
    /// A request could not be done, and why.
    Refused(String),
}

/// One stored line of a room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Said {
    /// The author's nickname when it was said.
    pub name: String,
    /// What was said.
    pub text: String,
    /// When, in seconds since the UNIX epoch.
    pub at: i64,
}

/// Members to each other. There is no author field: peergroup stamps the sender of
/// every message (`from`), so no member can speak as another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Line {
    /// To a room or party (`Target::Group`).
    Say(String),
    /// To one host that shares a group with the sender (`Target::Host`).
    Whisper(String),
}

impl Profile {
    /// The profile in a host's data, if it holds one.
    pub fn of(data: &[u8]) -> Option<Profile> {
        decode(data).ok()
    }

    /// As host data.
    pub fn to_bytes(&self) -> bytes::Bytes {
        peergroup::server::encode(self).expect("a profile always encodes")
    }
}

impl RoomInfo {
    /// The room in a group's data, if it holds one.
    pub fn of(data: &[u8]) -> Option<RoomInfo> {
        decode(data).ok()
    }

    /// As group data.
    pub fn to_bytes(&self) -> bytes::Bytes {
        peergroup::server::encode(self).expect("a room always encodes")
    }
}
