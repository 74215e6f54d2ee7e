//! One player: a peergroup client that talks to the lobby and plays its matches.
//!
//! Requests go to the lobby as typed messages to `Target::Server`; the lobby answers each
//! with one `Reply`. A match arrives as membership notices (`MemberJoined` for the
//! opponent, with its name as host data, and for this player, with the game's name as
//! group data); the two then message each other through `Target::Group`.

use crate::protocol::{GameInfo, Play, Reply, Request};
use peergroup::client::{
    decode, Client, ClientEvent, ClientEvents, Delivery, GroupId, HostId, PairPath, Path, Target,
};
use std::collections::VecDeque;
use std::time::Duration;

/// Messages each player sends its opponent in a match: `Hello`, then moves.
pub const MESSAGES: u32 = 5;
/// The longest any one step may take (a reply, a match, a report).
const STEP_TIMEOUT: Duration = Duration::from_secs(15);

/// How one match went, as one of its players saw it.
#[derive(Debug, Clone)]
pub struct MatchResult {
    pub group: GroupId,
    pub opponent: String,
    pub path: PairPath,
    pub punch: Option<Duration>,
    /// Messages from the opponent that arrived over the relay and over the direct path.
    pub relayed: u32,
    pub direct: u32,
}

/// The match in progress, as far as this player has been told.
struct Game {
    group: GroupId,
    label: String,
    opponent: Option<HostId>,
    /// The lobby's `MatchStart`: both players know the match.
    started: bool,
    report: Option<(PairPath, Option<Duration>)>,
    relayed: u32,
    direct: u32,
    /// This player's own `MemberLeft`: the lobby ended the match.
    ended: bool,
}

pub struct Player {
    pub name: String,
    client: Client,
    events: ClientEvents,
    /// Replies not yet taken by `request`.
    replies: VecDeque<Reply>,
    game: Option<Game>,
}

impl Player {
    pub fn new(name: String, client: Client, events: ClientEvents) -> Self {
        Self {
            name,
            client,
            events,
            replies: VecDeque::new(),
            game: None,
        }
    }

    /// Sends a request and waits for its reply.
    pub async fn request(&mut self, request: &Request) -> Result<Reply, String> {
        self.client
            .send_message(Target::Server, request, Delivery::ReliableOrdered)
            .await
            .map_err(|error| format!("{}: sending {request:?}: {error}", self.name))?;
        self.until("a reply", |player| player.replies.pop_front())
            .await
    }

    /// Sends a request that must be answered `Ok` (or `Registered`).
    pub async fn expect_ok(&mut self, request: &Request) -> Result<(), String> {
        match self.request(request).await? {
            Reply::Ok | Reply::Registered => Ok(()),
            other => Err(format!("{}: {request:?} answered {other:?}", self.name)),
        }
    }

    /// Asks for the game list every 50 ms until `name` is open.
    pub async fn wait_for_game(&mut self, name: &str) -> Result<GameInfo, String> {
        let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
        loop {
            if let Reply::Games(games) = self.request(&Request::ListGames).await? {
                if let Some(game) = games.into_iter().find(|game| game.name == name) {
                    return Ok(game);
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!("{}: game {name} never opened", self.name));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Plays the match the lobby starts next: waits for its start, says hello (which
    /// starts the pair's hole punching), waits for the lobby's report on the path, sends its moves,
    /// waits for all of the opponent's, and tells the lobby it is done.
    pub async fn play_match(&mut self) -> Result<MatchResult, String> {
        let (group, opponent) = self
            .until("a match", |player| {
                let game = player.game.as_ref().filter(|game| game.started)?;
                Some((game.group, game.opponent?))
            })
            .await?;
        // The lobby made the opponent's name its host data.
        let opponent_name = self
            .client
            .host_data(opponent)
            .map(|data| String::from_utf8_lossy(&data).into_owned())
            .unwrap_or_else(|| opponent.to_string());
        let label = self
            .game
            .as_ref()
            .map(|g| g.label.clone())
            .unwrap_or_default();
        println!("{}: plays {opponent_name} in {group} ({label})", self.name);

        // The first message between the two goes through the relay and starts their hole
        // punching (the lobby's server punches just in time).
        self.send_play(group, &Play::Hello).await?;
        let (path, punch) = self
            .until("the match report", |player| player.game.as_ref()?.report)
            .await?;
        let punched = punch.map_or(String::new(), |time| format!(", punched in {time:.1?}"));
        println!("{}: the lobby reports {path:?}{punched}", self.name);
        for n in 1..MESSAGES {
            self.send_play(group, &Play::Move(n)).await?;
        }
        self.until("the opponent's messages", |player| {
            let game = player.game.as_ref()?;
            (game.relayed + game.direct >= MESSAGES).then_some(())
        })
        .await?;
        self.expect_ok(&Request::MatchOver).await?;
        self.until("the match to end", |player| {
            player.game.as_ref().filter(|game| game.ended).map(|_| ())
        })
        .await?;
        let game = self.game.take().expect("a game was just played");
        println!(
            "{}: done with {opponent_name}: {}/{MESSAGES} messages arrived, {} relayed, {} direct",
            self.name,
            game.relayed + game.direct,
            game.relayed,
            game.direct
        );
        Ok(MatchResult {
            group,
            opponent: opponent_name,
            path,
            punch,
            relayed: game.relayed,
            direct: game.direct,
        })
    }

    pub async fn close(&self) {
        self.client.close().await;
    }

    async fn send_play(&self, group: GroupId, play: &Play) -> Result<(), String> {
        self.client
            .send_message(Target::Group(group), play, Delivery::ReliableOrdered)
            .await
            .map_err(|error| format!("{}: sending {play:?}: {error}", self.name))
    }

    /// Reads events until `done` finds what it waits for, at most [`STEP_TIMEOUT`].
    async fn until<T>(
        &mut self,
        what: &str,
        mut done: impl FnMut(&mut Self) -> Option<T>,
    ) -> Result<T, String> {
        let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
        loop {
            if let Some(found) = done(self) {
                return Ok(found);
            }
            let event = tokio::time::timeout_at(deadline, self.events.next())
                .await
                .map_err(|_| format!("{}: no {what} within {STEP_TIMEOUT:?}", self.name))?
                .ok_or_else(|| format!("{}: disconnected waiting for {what}", self.name))?;
            self.absorb(event)?;
        }
    }

    /// Takes in one event: a reply, a match report, a membership notice, a message.
    fn absorb(&mut self, event: ClientEvent) -> Result<(), String> {
        let me = self.client.host_id();
        match event {
            ClientEvent::Message { from, payload, .. } if from == HostId::SERVER => {
                match decode::<Reply>(&payload) {
                    Ok(Reply::MatchStart) => {
                        if let Some(game) = &mut self.game {
                            game.started = true;
                        }
                    }
                    Ok(Reply::MatchReport { path, punch }) => {
                        if let Some(game) = &mut self.game {
                            game.report = Some((path, punch));
                        }
                    }
                    Ok(reply) => self.replies.push_back(reply),
                    Err(error) => return Err(format!("{}: bad reply: {error}", self.name)),
                }
            }
            ClientEvent::Message {
                group: Some(group),
                payload,
                path,
                ..
            } => {
                let game = self.game.as_mut().filter(|game| game.group == group);
                if let (Some(game), Ok(_play)) = (game, decode::<Play>(&payload)) {
                    match path {
                        Path::Direct => game.direct += 1,
                        _ => game.relayed += 1,
                    }
                }
            }
            ClientEvent::MemberJoined {
                group,
                member,
                group_data,
                ..
            } => {
                // The opponent's notice may come first (it joined first) or second.
                let game = self.game.get_or_insert_with(|| Game {
                    group,
                    label: String::new(),
                    opponent: None,
                    started: false,
                    report: None,
                    relayed: 0,
                    direct: 0,
                    ended: false,
                });
                if member == me {
                    game.label = String::from_utf8_lossy(&group_data.unwrap_or_default()).into();
                } else {
                    game.opponent = Some(member);
                }
            }
            ClientEvent::MemberLeft { group, member, .. } if member == me => {
                if let Some(game) = self.game.as_mut().filter(|game| game.group == group) {
                    game.ended = true;
                }
            }
            ClientEvent::PathChanged {
                peer, path, rtt, ..
            } => {
                let rtt = rtt.map_or(String::new(), |rtt| format!(", RTT {rtt:.1?}"));
                println!("{}: path to {peer} is {path:?}{rtt}", self.name);
            }
            ClientEvent::Disconnected { reason } => {
                return Err(format!("{}: disconnected: {reason}", self.name));
            }
            _ => {}
        }
        Ok(())
    }
}
