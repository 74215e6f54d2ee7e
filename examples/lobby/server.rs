//! The lobby server application: registered names, hosted games, the quick-match queue,
//! the matchmaker, and a report on every match's path.
//!
//! It runs on top of the peergroup `Server`: the players' requests arrive as
//! `ServerEvent::Message`s, and a match is a P2P group of two. The server is configured
//! with `PunchStart::OnFirstMessage`, so a pair punches only once its first message goes
//! between the two (ProudNet's just-in-time hole punching); until then, and if punching
//! fails, the match plays over the relay.

use crate::protocol::{GameInfo, Reply, Request};
use peergroup::server::{
    decode, Delivery, GroupError, GroupId, GroupOptions, HostId, PairPath, PathReason, Server,
    ServerEvent, ServerEvents, ServerTarget,
};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// How often the matchmaker runs and open matches are looked at.
const TICK: Duration = Duration::from_millis(100);
/// A match whose pair is not direct this long after it started is reported as playing on
/// the relay: a punch attempt probes for 5 s (a later retry may still take it direct).
const PUNCH_DEADLINE: Duration = Duration::from_secs(7);
/// How long a lone host waits for a partner of its own kind (see [`Lobby::keeps_failing`])
/// before the matchmaker pairs it with the other kind.
const KIND_WAIT: Duration = Duration::from_secs(3);
/// Longest registered name, bytes.
const MAX_NAME: usize = 24;

/// Runs the lobby until the server shuts down.
pub async fn run(server: Server, mut events: ServerEvents) {
    let mut lobby = Lobby::new(server);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(event) => lobby.handle(event),
                None => return, // the server shut down
            },
            _ = tick.tick() => lobby.tick(),
        }
    }
}

/// A game waiting for its opponent.
struct Game {
    host: HostId,
    password: Option<String>,
}

/// A match in progress: a group of two.
struct Match {
    players: [HostId; 2],
    started: Instant,
    /// Punch orders each player had declined before the match: one more means this
    /// match's order was declined, so its pair stays on the relay.
    declined_before: [u32; 2],
    /// Which players' joins every member has acknowledged.
    joined: [bool; 2],
    /// Whether the players got their `MatchReport`.
    reported: bool,
    /// Which players sent `MatchOver`.
    over: [bool; 2],
}

struct Lobby {
    server: Server,
    /// Registered players and their names.
    names: HashMap<HostId, String>,
    /// Open games by name.
    games: BTreeMap<String, Game>,
    /// The quick-match queue, in arrival order.
    queue: Vec<(HostId, Instant)>,
    matches: HashMap<GroupId, Match>,
}

impl Lobby {
    fn new(server: Server) -> Self {
        Self {
            server,
            names: HashMap::new(),
            games: BTreeMap::new(),
            queue: Vec::new(),
            matches: HashMap::new(),
        }
    }

    fn handle(&mut self, event: ServerEvent) {
        match event {
            ServerEvent::Message { from, payload, .. } => {
                let reply = match decode::<Request>(&payload) {
                    Ok(request) => self.request(from, request),
                    Err(error) => Reply::Refused(format!("malformed request: {error}")),
                };
                self.send(ServerTarget::Host(from), &reply);
            }
            ServerEvent::PairPathChanged { a, b, path, reason } => {
                self.path_changed(a, b, path, reason)
            }
            ServerEvent::ClientDisconnected { host, reason } => {
                println!("lobby: {} left ({reason})", self.name(host));
                self.forget(host);
            }
            ServerEvent::JoinAckComplete {
                group,
                member,
                result: Ok(()),
            } => self.join_acked(group, member),
            ServerEvent::GroupRemoved { group } => {
                self.matches.remove(&group);
            }
            _ => {}
        }
    }

    fn request(&mut self, from: HostId, request: Request) -> Reply {
        match request {
            Request::ListGames => Reply::Games(
                self.games
                    .iter()
                    .map(|(name, game)| GameInfo {
                        name: name.clone(),
                        host: self.name(game.host).to_owned(),
                        password: game.password.is_some(),
                    })
                    .collect(),
            ),
            Request::Register { name } => self.register(from, name),
            _ if !self.names.contains_key(&from) => Reply::Refused("register a name first".into()),
            Request::MatchOver => self.match_over(from),
            _ if self.busy(from) => {
                Reply::Refused("already hosting, waiting for a match or playing".into())
            }
            Request::HostGame { name, password } => self.host_game(from, name, password),
            Request::JoinGame { name, password } => self.join_game(from, &name, password),
            Request::QuickMatch => {
                self.queue.push((from, Instant::now()));
                let kind = if self.keeps_failing(from) {
                    ", keeps failing"
                } else {
                    ""
                };
                println!(
                    "lobby: {} waits for a quick match ({}{kind})",
                    self.name(from),
                    self.punch_record(from)
                );
                Reply::Ok
            }
        }
    }

    fn register(&mut self, from: HostId, name: String) -> Reply {
        let name = name.trim().to_owned();
        if let Some(current) = self.names.get(&from) {
            return Reply::Refused(format!("already registered as {current}"));
        }
        if name.is_empty() || name.len() > MAX_NAME {
            return Reply::Refused(format!("a name takes 1 to {MAX_NAME} bytes"));
        }
        if self.names.values().any(|taken| *taken == name) {
            println!("lobby: {from} may not take the name {name}: taken");
            return Reply::Refused(format!("the name {name} is taken"));
        }
        // The name becomes the player's host data, so every opponent learns it from the
        // `MemberJoined` that starts a match, with no request of its own.
        if let Err(error) = self.server.set_host_data(from, name.clone()) {
            return Reply::Refused(error.to_string());
        }
        println!("lobby: {from} registered as {name}");
        self.names.insert(from, name);
        Reply::Registered
    }

    fn host_game(&mut self, from: HostId, name: String, password: Option<String>) -> Reply {
        if name.is_empty() || self.games.contains_key(&name) {
            return Reply::Refused(format!("a game needs a free name; {name:?} is not"));
        }
        // An empty password counts as none.
        let password = password.filter(|p| !p.is_empty());
        let guarded = if password.is_some() {
            " with a password"
        } else {
            ""
        };
        println!("lobby: {} hosts {name}{guarded}", self.name(from));
        self.games.insert(
            name,
            Game {
                host: from,
                password,
            },
        );
        Reply::Ok
    }

    fn join_game(&mut self, from: HostId, name: &str, password: Option<String>) -> Reply {
        let Some(game) = self.games.get(name) else {
            return Reply::Refused(format!("no open game named {name}"));
        };
        if game.password.is_some() && game.password != password.filter(|p| !p.is_empty()) {
            println!(
                "lobby: {} may not join {name}: wrong password",
                self.name(from)
            );
            return Reply::Refused("wrong password".into());
        }
        let host = game.host;
        match self.start_match([host, from], name) {
            Ok(_) => {
                self.games.remove(name);
                Reply::Ok
            }
            Err(error) => Reply::Refused(error.to_string()),
        }
    }

    fn match_over(&mut self, from: HostId) -> Reply {
        let Some((&group, game)) = self
            .matches
            .iter_mut()
            .find(|(_, game)| game.players.contains(&from))
        else {
            return Reply::Refused("not in a match".into());
        };
        game.over[usize::from(game.players[1] == from)] = true;
        // Both done: end the match. Each player gets `MemberLeft` for both, then the
        // server application gets `GroupRemoved`.
        if game.over == [true, true] {
            if let Err(error) = self.server.destroy_group(group) {
                eprintln!("lobby: ending {group}: {error}");
            }
        }
        Reply::Ok
    }

    /// Whether `host` has a game open, waits in the queue or plays.
    fn busy(&self, host: HostId) -> bool {
        self.games.values().any(|game| game.host == host)
            || self.queue.iter().any(|(waiting, _)| *waiting == host)
            || self
                .matches
                .values()
                .any(|game| game.players.contains(&host))
    }

    /// Puts two players into a match: a P2P group of two.
    fn start_match(&mut self, players: [HostId; 2], label: &str) -> Result<GroupId, GroupError> {
        // Without `allow_empty` the group also goes by itself should both players leave.
        let options = GroupOptions {
            allow_empty: false,
            ..GroupOptions::default()
        };
        // The group's data names the game: each player gets it on its own `MemberJoined`.
        let group = self
            .server
            .create_group_with_data(&players, options, label.to_owned(), "")?;
        let declined_before = players.map(|player| {
            self.server
                .punch_stats(player)
                .map_or(0, |stats| stats.declined)
        });
        println!(
            "lobby: {group} {} vs {} ({label})",
            self.name(players[0]),
            self.name(players[1])
        );
        self.matches.insert(
            group,
            Match {
                players,
                started: Instant::now(),
                declined_before,
                joined: [false; 2],
                reported: false,
                over: [false; 2],
            },
        );
        Ok(group)
    }

    /// A join into a match completed: both players were told of it and acknowledged.
    /// Once both joins have, each player knows the whole match, so it may start.
    fn join_acked(&mut self, group: GroupId, member: HostId) {
        let Some(game) = self.matches.get_mut(&group) else {
            return;
        };
        game.joined[usize::from(game.players[1] == member)] = true;
        if game.joined == [true, true] {
            self.send(ServerTarget::Group(group), &Reply::MatchStart);
        }
    }

    /// Pairs waiting players. Hosts with a good punch record are paired with each other
    /// first, in arrival order; hosts that keep failing are paired with each other last,
    /// since a direct path between them is unlikely anyway and a good host matched with
    /// one would likely lose its own. A lone host of either kind waits [`KIND_WAIT`] for a
    /// partner of its kind before it takes one of the other.
    fn matchmake(&mut self) {
        let now = Instant::now();
        let (failing, good): (Vec<_>, Vec<_>) = std::mem::take(&mut self.queue)
            .into_iter()
            .partition(|(host, _)| self.keeps_failing(*host));
        let mut pairs = Vec::new();
        let mut rest = Vec::new();
        for kind in [good, failing] {
            let mut chunks = kind.chunks_exact(2);
            pairs.extend(chunks.by_ref().map(|pair| [pair[0].0, pair[1].0]));
            rest.extend_from_slice(chunks.remainder());
        }
        if let [(a, a_since), (b, b_since)] = rest[..] {
            if now - a_since.min(b_since) >= KIND_WAIT {
                pairs.push([a, b]);
                rest.clear();
            }
        }
        rest.sort_by_key(|(_, since)| *since);
        self.queue = rest;
        for players in pairs {
            if let Err(error) = self.start_match(players, "quick match") {
                // One of them went meanwhile; the other waits again.
                eprintln!("lobby: quick match failed: {error}");
                self.queue.extend(
                    players
                        .into_iter()
                        .filter(|p| self.names.contains_key(p))
                        .map(|p| (p, now)),
                );
            }
        }
    }

    /// Whether `host`'s punch record says its punches keep failing: it declines punching
    /// outright (a relay-only client, or one at its direct-peer limit), or its failed
    /// attempts outnumber its successes, twice at least. A host records a failure when
    /// its peer was the one at fault too, so one failure says little.
    fn keeps_failing(&self, host: HostId) -> bool {
        let Some(stats) = self.server.punch_stats(host) else {
            return false;
        };
        let failed = stats.no_response + stats.handshake_failed;
        (stats.declined > 0 && stats.direct == 0) || (failed >= 2 && failed > stats.direct)
    }

    /// A host's punch record, for the log.
    fn punch_record(&self, host: HostId) -> String {
        match self.server.punch_stats(host) {
            Some(stats) if stats.orders > 0 => format!(
                "punches: {} direct, {} no response, {} handshake failed, {} declined",
                stats.direct, stats.no_response, stats.handshake_failed, stats.declined
            ),
            _ => "no punches yet".to_owned(),
        }
    }

    /// Runs the matchmaker, then reports the matches whose path is settled.
    fn tick(&mut self) {
        self.matchmake();
        let now = Instant::now();
        let mut settled = Vec::new();
        for (&group, game) in &self.matches {
            if game.reported {
                continue;
            }
            let [a, b] = game.players;
            let declined = game
                .players
                .map(|p| self.server.punch_stats(p).map_or(0, |stats| stats.declined));
            let path = self.server.pair_stats(a, b).map(|stats| stats.path);
            if path == Some(PairPath::Direct) {
                // Direct already, with no punch: the two played each other lately, and
                // their pair outlived that match (pairs linger 10 s after their last
                // shared group).
                settled.push((group, PairPath::Direct, None));
            } else if declined[0] > game.declined_before[0]
                || declined[1] > game.declined_before[1]
                || now - game.started >= PUNCH_DEADLINE
            {
                settled.push((group, PairPath::Relay, None));
            }
        }
        for (group, path, punch) in settled {
            self.report(group, path, punch);
        }
    }

    fn path_changed(&mut self, a: HostId, b: HostId, path: PairPath, reason: PathReason) {
        let Some((&group, game)) = self
            .matches
            .iter()
            .find(|(_, game)| game.players.contains(&a) && game.players.contains(&b))
        else {
            return;
        };
        if path == PairPath::Direct && !game.reported {
            let punch = game.started.elapsed();
            self.report(group, path, Some(punch));
        } else {
            println!("lobby: {group} is now on {path:?} ({reason:?})");
        }
    }

    /// Tells both players of a match how they are connected.
    fn report(&mut self, group: GroupId, path: PairPath, punch: Option<Duration>) {
        let Some(game) = self.matches.get_mut(&group) else {
            return;
        };
        game.reported = true;
        let [a, b] = game.players;
        // The server's view of the pair: what it relayed before the direct path took over.
        let relayed = self
            .server
            .pair_stats(a, b)
            .map_or(0, |stats| stats.relayed);
        let how = match (path, punch) {
            (PairPath::Direct, Some(time)) => {
                format!("direct, punched in {:.1} ms", time.as_secs_f64() * 1e3)
            }
            (PairPath::Direct, None) => "still direct from their last match".to_owned(),
            (PairPath::Relay, _) => "relayed (no direct path)".to_owned(),
        };
        println!(
            "lobby: {group} {} vs {}: {how}; {relayed} message(s) relayed between them so far",
            self.name(a),
            self.name(b)
        );
        self.send(
            ServerTarget::Group(group),
            &Reply::MatchReport { path, punch },
        );
    }

    /// Drops everything a departed player had: name, game, queue place, match.
    fn forget(&mut self, host: HostId) {
        self.names.remove(&host);
        self.games.retain(|_, game| game.host != host);
        self.queue.retain(|(waiting, _)| *waiting != host);
        let left: Vec<GroupId> = self
            .matches
            .iter()
            .filter(|(_, game)| game.players.contains(&host))
            .map(|(group, _)| *group)
            .collect();
        for group in left {
            // The opponent gets `MemberLeft` and is free to play again.
            let _ = self.server.destroy_group(group);
        }
    }

    fn send(&self, target: ServerTarget, reply: &Reply) {
        if let Err(error) = self
            .server
            .send_message(target, reply, Delivery::ReliableOrdered)
        {
            // The player went meanwhile; its disconnect event cleans up.
            eprintln!("lobby: reply not sent: {error}");
        }
    }

    fn name(&self, host: HostId) -> &str {
        self.names
            .get(&host)
            .map_or("(unregistered)", String::as_str)
    }
}
