//! The lobby's messages, declared once and shared by the server and the players (the role
//! a PIDL file plays in ProudNet). They travel postcard-encoded: `send_message` writes
//! them and `decode` reads them back.

use peergroup::client::PairPath;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// What a player asks the lobby (sent to `Target::Server`). Each gets exactly one
/// [`Reply`], in order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// Take a display name; refused while another player has it.
    Register { name: String },
    /// The games waiting for an opponent. Allowed before registering, to browse.
    ListGames,
    /// Open a game others join by name, guarded by a password if one is given.
    HostGame {
        name: String,
        password: Option<String>,
    },
    /// Join a hosted game by name; a game with a password needs exactly that password.
    JoinGame {
        name: String,
        password: Option<String>,
    },
    /// Wait for the matchmaker to pair this player with another.
    QuickMatch,
    /// This player is done with its match; the lobby ends the match once both are.
    MatchOver,
}

/// What the lobby sends a player.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Reply {
    /// The name is this player's now.
    Registered,
    /// The open games, by name.
    Games(Vec<GameInfo>),
    /// The request was carried out.
    Ok,
    /// The request was refused, with a reason to show.
    Refused(String),
    /// Not an answer to a request: both players of the new match have acknowledged
    /// joining it, so each knows the other: start playing. (A message sent to the group
    /// before the other player's client has taken in its join could be dropped there.)
    MatchStart,
    /// Not an answer to a request: how the current match's two players are connected,
    /// sent once the lobby knows. `punch` is the time from the match's start to its direct
    /// path: `None` on the relay, and when the two were still direct from a match before.
    MatchReport {
        path: PairPath,
        punch: Option<Duration>,
    },
}

/// One open game in the list.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GameInfo {
    pub name: String,
    /// The host's registered name.
    pub host: String,
    /// Whether joining needs a password.
    pub password: bool,
}

/// What the two players of a match send each other: a stand-in for real game traffic.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Play {
    /// The first message, sent as the match starts: it also starts the pair's hole
    /// punching (just-in-time).
    Hello,
    /// A move, numbered from 1.
    Move(u32),
}
