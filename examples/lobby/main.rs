//! A game lobby with a matchmaker, in the Lacewing / Godot-handshake style: players
//! register a name, list open games, host one (optionally with a password) or join one by
//! name, or ask for a quick match. Every match is a P2P group of two whose pair punches
//! just in time (on its first message) and the lobby reports each match's path and how
//! long the punch took. The matchmaker reads the server's per-host punch records
//! (`Server::punch_stats`): hosts whose punches keep failing are matched with each other,
//! after the others.
//!
//! Run it (server and players in one process, on loopback):
//!
//! ```text
//! cargo run --release --example lobby                 # the scenario, with progress
//! cargo run --release --example lobby -- --demo --players 8 --rounds 2 --relay-only 2
//! ```
//!
//! Or split across processes or machines:
//!
//! ```text
//! cargo run --release --example lobby -- --server-only --listen 0.0.0.0:7700
//! cargo run --release --example lobby -- --connect HOST:7700 --server-cert PATH --demo
//! ```
//!
//! The scenario: player 1 hosts the game "open" and player 2 joins it (after trying to
//! take player 1's name, which the lobby refuses); player 3 hosts "secret" with a password
//! and player 4 joins it after a wrong password is refused; the others ask for a quick
//! match. In each later round everyone asks for a quick match again, and by then the
//! lobby knows who failed to punch. `--relay-only K` makes K players (2, 4, ...) decline
//! every punch, like hosts behind a firewall that blocks UDP between players: their
//! matches play on the relay, and from the second round on the matchmaker pairs them with
//! each other. The number of players must be even and at least 4 (two hosted games take
//! four); the matchmaker itself leaves an odd one out waiting for the next player.
//!
//! `--demo` prints, as the last line, `{"example":"lobby","players":n,"rounds":n,
//! "matches":n,"direct":n,"relayed":n,"wrong_password_refused":n}` and exits 0 only if
//! every player was matched in every round, every match's messages all arrived, both
//! players of a match were told the same path, the taken name and the wrong password were
//! refused, every match with a relay-only player was relayed, and in the last round
//! relay-only players were matched with each other.
//!
//! What to read: `protocol.rs` (the typed messages), `server.rs` (the lobby application
//! and the matchmaker: `create_group_with_data`, `PairPathChanged`, `pair_stats`,
//! `punch_stats`), `player.rs` (a client: requests to `Target::Server`, a match through
//! `MemberJoined` and `Target::Group`).

#[path = "../common/mod.rs"]
mod common;
mod player;
mod protocol;
mod server;

use clap::Parser;
use peergroup::client::ServerTrust;
use peergroup::client::{Client, PairPath};
use peergroup::server::{AuthHook, PunchStart};
use player::{MatchResult, Player};
use protocol::{Reply, Request};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

/// Each player's whole scenario must end within this.
const SCENARIO_LIMIT: Duration = Duration::from_secs(60);

#[derive(Debug, Parser)]
#[command(about = "A game lobby: names, hosted games with passwords, quick match, punch reports")]
struct Args {
    #[command(flatten)]
    network: common::Network,

    /// Run the scenario as a check: print a JSON summary as the last line, exit 0 only if
    /// it went right.
    #[arg(long)]
    demo: bool,

    /// Players in the scenario: even, at least 4.
    #[arg(long, default_value_t = 8, value_parser = even_players)]
    players: usize,

    /// Rounds: the first with hosted games and quick matches, the others quick matches only.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=10))]
    rounds: u32,

    /// Players that never punch (players 2, 4, ...): at most half of them.
    #[arg(long, default_value_t = 2)]
    relay_only: usize,
}

fn even_players(text: &str) -> Result<usize, String> {
    let n: usize = text.parse().map_err(|e| format!("{e}"))?;
    if n < 4 || n % 2 == 1 || n > 200 {
        return Err("an even number from 4 to 200".into());
    }
    Ok(n)
}

/// What one player does in the first round.
#[derive(Debug, Clone)]
enum Role {
    Host {
        game: &'static str,
        password: Option<&'static str>,
    },
    Join {
        game: &'static str,
        password: Option<&'static str>,
        /// Try this password first (it is wrong).
        wrong_password: Option<&'static str>,
        /// Try to register the host's name first (it is taken).
        take_host_name: bool,
    },
    QuickMatch,
}

fn role(index: usize) -> Role {
    match index {
        0 => Role::Host {
            game: "open",
            password: None,
        },
        1 => Role::Join {
            game: "open",
            password: None,
            wrong_password: None,
            take_host_name: true,
        },
        2 => Role::Host {
            game: "secret",
            password: Some("hunter2"),
        },
        3 => Role::Join {
            game: "secret",
            password: Some("hunter2"),
            wrong_password: Some("letmein"),
            take_host_name: false,
        },
        _ => Role::QuickMatch,
    }
}

fn name_of(index: usize) -> String {
    const NAMES: [&str; 12] = [
        "ada", "bo", "cy", "dee", "eli", "fay", "gus", "hal", "ivy", "jo", "kit", "lu",
    ];
    match NAMES.get(index) {
        Some(name) => (*name).to_owned(),
        None => format!("player{}", index + 1),
    }
}

/// What one player went through.
#[derive(Debug, Default)]
struct PlayerReport {
    name: String,
    relay_only: bool,
    name_taken_refused: bool,
    wrong_password_refused: u32,
    matches: Vec<MatchResult>,
}

#[tokio::main]
async fn main() -> ExitCode {
    common::init_logs();
    let args = Args::parse();
    if args.relay_only > args.players / 2 {
        eprintln!("--relay-only takes at most half the players");
        return ExitCode::from(2);
    }
    match run(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("lobby: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<bool, Box<dyn std::error::Error>> {
    let hosted = if args.network.runs_server() {
        // Just-in-time punching: a match's pair punches once its first message goes
        // between the two, not as soon as they share the group.
        let just_in_time = |config: &mut peergroup::server::ServerConfig| {
            config.punch.start = PunchStart::OnFirstMessage;
        };
        Some(
            args.network
                .start_server("lobby", AuthHook::accept_all(), just_in_time)
                .await?,
        )
    } else {
        None
    };
    let (addr, trust) = args
        .network
        .target(hosted.as_ref())
        .map_err(|e| e.to_string())?;
    if let Some(hosted) = hosted {
        tokio::spawn(server::run(hosted.server, hosted.events));
    }
    if !args.network.runs_clients() {
        common::until_ctrl_c().await;
        return Ok(true);
    }

    let reports = scenario(addr, trust, &args).await;
    Ok(summarize(&args, reports))
}

/// Runs every player at once; returns what each went through.
async fn scenario(
    addr: SocketAddr,
    trust: ServerTrust,
    args: &Args,
) -> Vec<Result<PlayerReport, String>> {
    let tasks: Vec<_> = (0..args.players)
        .map(|index| {
            let trust = trust.clone();
            // Players 2, 4, ... (odd indices) are relay-only.
            let relay_only = index % 2 == 1 && index / 2 < args.relay_only;
            let rounds = args.rounds;
            tokio::spawn(async move {
                let played = play(addr, &trust, index, relay_only, rounds);
                tokio::time::timeout(SCENARIO_LIMIT, played)
                    .await
                    .unwrap_or_else(|_| Err(format!("player {index} took over {SCENARIO_LIMIT:?}")))
            })
        })
        .collect();
    let mut reports = Vec::new();
    for task in tasks {
        reports.push(
            task.await
                .unwrap_or_else(|error| Err(format!("player task: {error}"))),
        );
    }
    reports
}

/// One player's whole scenario.
async fn play(
    addr: SocketAddr,
    trust: &ServerTrust,
    index: usize,
    relay_only: bool,
    rounds: u32,
) -> Result<PlayerReport, String> {
    let name = name_of(index);
    let mut config = common::client_config(addr, trust, &name);
    // A relay-only client declines every punch order; its peers stay on the relay.
    config.direct.enabled = !relay_only;
    let (client, events) = Client::connect(config)
        .await
        .map_err(|error| format!("{name}: connecting: {error}"))?;
    let kind = if relay_only { " (relay-only)" } else { "" };
    println!("{name}: connected as {}{kind}", client.host_id());
    let mut player = Player::new(name.clone(), client, events);
    let mut report = PlayerReport {
        name: name.clone(),
        relay_only,
        ..PlayerReport::default()
    };
    let register = Request::Register { name: name.clone() };
    match role(index) {
        Role::Host { game, password } => {
            player.expect_ok(&register).await?;
            let request = Request::HostGame {
                name: game.into(),
                password: password.map(Into::into),
            };
            player.expect_ok(&request).await?;
        }
        Role::Join {
            game,
            password,
            wrong_password,
            take_host_name,
        } => {
            // Browse before registering: the list shows the game and its host's name.
            let listed = player.wait_for_game(game).await?;
            println!(
                "{name}: sees {} hosted by {} (password: {})",
                listed.name, listed.host, listed.password
            );
            if take_host_name {
                let taken = Request::Register { name: listed.host };
                if let Reply::Refused(reason) = player.request(&taken).await? {
                    println!("{name}: refused: {reason}");
                    report.name_taken_refused = true;
                }
            }
            player.expect_ok(&register).await?;
            if let Some(wrong) = wrong_password {
                let request = Request::JoinGame {
                    name: game.into(),
                    password: Some(wrong.into()),
                };
                match player.request(&request).await? {
                    Reply::Refused(reason) => {
                        println!("{name}: joining {game} with {wrong:?} refused: {reason}");
                        report.wrong_password_refused += 1;
                    }
                    other => return Err(format!("{name}: a wrong password got {other:?}")),
                }
            }
            let request = Request::JoinGame {
                name: game.into(),
                password: password.map(Into::into),
            };
            player.expect_ok(&request).await?;
        }
        Role::QuickMatch => {
            player.expect_ok(&register).await?;
            player.expect_ok(&Request::QuickMatch).await?;
        }
    }
    report.matches.push(player.play_match().await?);
    for _ in 1..rounds {
        player.expect_ok(&Request::QuickMatch).await?;
        report.matches.push(player.play_match().await?);
    }
    player.close().await;
    Ok(report)
}

/// Prints what happened and, with `--demo`, the JSON summary; returns whether every check
/// held.
fn summarize(args: &Args, reports: Vec<Result<PlayerReport, String>>) -> bool {
    let mut failures = Vec::new();
    let mut players = Vec::new();
    for report in reports {
        match report {
            Ok(report) => players.push(report),
            Err(error) => failures.push(error),
        }
    }
    let relay_only: HashMap<&str, bool> = players
        .iter()
        .map(|p| (p.name.as_str(), p.relay_only))
        .collect();
    // Each match, as both of its players saw it.
    let mut seen: HashMap<_, Vec<(&PlayerReport, &MatchResult)>> = HashMap::new();
    for player in &players {
        for result in &player.matches {
            seen.entry(result.group).or_default().push((player, result));
        }
    }
    let (mut direct, mut relayed) = (0, 0);
    let mut matches = Vec::new();
    for (group, sides) in &seen {
        let [(a, first), (b, second)] = sides[..] else {
            failures.push(format!("{group}: seen by {} player(s), not 2", sides.len()));
            continue;
        };
        if first.path != second.path {
            failures.push(format!(
                "{group}: {} and {} were told different paths",
                a.name, b.name
            ));
        }
        match first.path {
            PairPath::Direct => direct += 1,
            PairPath::Relay => relayed += 1,
        }
        let punch = first.punch.map_or("-".to_owned(), |t| {
            format!("{:.1} ms", t.as_secs_f64() * 1e3)
        });
        let line = format!(
            "  {group}: {} vs {}: {:?}, punch {punch}",
            a.name, b.name, first.path
        );
        matches.push((*group, line));
        if (a.relay_only || b.relay_only) && first.path == PairPath::Direct {
            failures.push(format!("{group}: a relay-only player went direct"));
        }
    }
    for player in &players {
        if player.matches.len() != args.rounds as usize {
            failures.push(format!("{}: {} matches", player.name, player.matches.len()));
        }
        for result in &player.matches {
            if result.relayed + result.direct != player::MESSAGES {
                failures.push(format!(
                    "{}: messages lost in {}",
                    player.name, result.group
                ));
            }
        }
    }
    // The last round: relay-only players with each other (one is left over if odd).
    if args.rounds > 1 {
        let mixed = players
            .iter()
            .filter(|p| p.relay_only)
            .filter_map(|p| p.matches.last())
            .filter(|result| {
                !relay_only
                    .get(result.opponent.as_str())
                    .copied()
                    .unwrap_or(false)
            })
            .count();
        if mixed != args.relay_only % 2 {
            failures.push(format!(
                "last round: {mixed} relay-only player(s) matched with a direct-capable one"
            ));
        }
    }
    if !players.iter().any(|p| p.name_taken_refused) {
        failures.push("the taken name was not refused".into());
    }
    let wrong_password_refused: u32 = players.iter().map(|p| p.wrong_password_refused).sum();
    if wrong_password_refused == 0 {
        failures.push("the wrong password was not refused".into());
    }

    println!(
        "{} players, {} round(s): {} matches, {direct} direct, {relayed} relayed; \
         wrong password refused {wrong_password_refused} time(s)",
        args.players,
        args.rounds,
        seen.len()
    );
    matches.sort();
    for (_, line) in &matches {
        println!("{line}");
    }
    for failure in &failures {
        println!("check failed: {failure}");
    }
    if args.demo {
        let summary = serde_json::json!({
            "example": "lobby",
            "players": args.players,
            "rounds": args.rounds,
            "matches": seen.len(),
            "direct": direct,
            "relayed": relayed,
            "wrong_password_refused": wrong_password_refused,
        });
        println!("{summary}");
    }
    failures.is_empty()
}
