//! MMO view-group syncing: bots wander a 2D world and each hears exactly the bots in its
//! area of interest.
//!
//! The server owns one P2P group per bot, "the bots that see me". Every tick (10 Hz) it
//! recomputes every bot's area of interest with a spatial grid and applies the joins and
//! leaves as one [`MembershipBatch`](peergroup::server::MembershipBatch): each client gets
//! its notices in one frame and acks them with one. Each bot publishes its position to its
//! own view group ten times a second with `Delivery::Latest`, so watchers get it directly
//! (once their pair has punched) or through the relay, and a slow watcher holds one
//! position per bot instead of a backlog. Each bot checks that the bots it hears are
//! exactly those whose view the server put it in.
//!
//! ```text
//! cargo run --release --example mmo_view                         # 100 bots, 20 s, live status
//! cargo run --release --example mmo_view -- --demo --bots 200 --seconds 10
//! cargo run --release --example mmo_view -- --server-only --listen 0.0.0.0:7700
//! cargo run --release --example mmo_view -- --connect HOST:7700 --server-cert cert.pem
//! ```
//!
//! `--demo` prints one JSON summary as its last line and exits 0 only if every join and
//! leave completed and no bot heard a view the server did not give it. Read `server.rs`
//! for the area of interest and the batches, `bot.rs` for the client side.

mod bot;
#[path = "../common/mod.rs"]
mod common;
mod server;
mod world;

use clap::Parser;
use peergroup::server::{AuthHook, ServerStats};
use server::{Counters, ViewServer};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use world::{Report, Walker, TICK_HZ};

/// MMO view-group syncing with wandering bots.
#[derive(Debug, Parser)]
struct Args {
    #[command(flatten)]
    network: common::Network,

    /// How many bots.
    #[arg(long, default_value_t = 100)]
    bots: usize,

    /// How long the bots wander, seconds.
    #[arg(long, default_value_t = 20)]
    seconds: u64,

    /// Seeds the bots' walks, so a run can be replayed.
    #[arg(long, default_value_t = 1)]
    seed: u64,

    /// Keep every pair on the relay (no hole punching), to compare.
    #[arg(long)]
    relay_only: bool,

    /// Run a bounded scenario and print a JSON summary as the last line.
    #[arg(long)]
    demo: bool,
}

/// How long two bots must have been in view of each other before they punch a direct
/// path: bots walk in and out of sight all the time, and a pair that parts within
/// seconds would only have spent both bots' CPU on a handshake it then drops.
const PUNCH_AFTER: Duration = Duration::from_secs(2);

/// Direct paths a bot keeps at most; its other watchers hear it through the relay. Each
/// direct peer costs both bots a QUIC connection with packets of its own, where the relay
/// sends a bot's whole view in a few packets. A crowded view (a town square) would
/// otherwise have every bot hold dozens of connections: with 200 bots on two cores,
/// around twelve each is where the bots' CPU runs out.
const MAX_DIRECT_PEERS: usize = 8;

/// How long bots wander before they start checking their views.
const SETTLE: Duration = Duration::from_secs(2);

#[tokio::main]
async fn main() -> Result<ExitCode, Box<dyn std::error::Error>> {
    common::init_logs();
    let args = Args::parse();
    let network = &args.network;

    let mut hosted = None;
    if network.runs_server() {
        hosted = Some(
            network
                .start_server("mmo_view", AuthHook::accept_all(), |config| {
                    config.punch.min_pair_age = PUNCH_AFTER;
                })
                .await?,
        );
    }
    let (addr, trust) = network.target(hosted.as_ref())?;
    let stop = CancellationToken::new();
    let bots = if network.runs_clients() {
        let size = world::world_size(args.bots);
        let mut bots = Vec::new();
        for index in 0..args.bots {
            let mut config = common::client_config(addr, &trust, &format!("bot-{index}"));
            config.direct.max_direct_peers = MAX_DIRECT_PEERS;
            let walker = Walker::new(args.seed, index as u64, size);
            bots.push(tokio::spawn(bot::run(config, walker, SETTLE, stop.clone())));
        }
        bots
    } else {
        Vec::new()
    };

    let Some(hosted) = hosted else {
        // Clients only: wander, then report what the bots saw.
        tokio::time::sleep(Duration::from_secs(args.seconds)).await;
        stop.cancel();
        let reports = collect(bots).await;
        return Ok(summarize_clients(&args, &reports));
    };

    let mut views = ViewServer::new(hosted.server.clone(), !args.relay_only);
    let mut events = hosted.events;
    let mut tick = tokio::time::interval(Duration::from_secs(1) / TICK_HZ);
    let mut status = tokio::time::interval(Duration::from_secs(1));
    // A late tick is not made up for: the next one recomputes everything anyway.
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let started = Instant::now();
    let wander_for = Duration::from_secs(args.seconds);
    let forever = network.server_only && !args.demo;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if !forever && started.elapsed() >= wander_for {
                    break;
                }
                views.tick();
            }
            _ = status.tick(), if !args.demo => print_status(&views, started),
            Some(event) = events.next() => views.handle(event),
            _ = common::until_ctrl_c(), if forever => break,
        }
    }

    // Pairs as they stand while the bots still wander; then let the last batches' acks
    // come back (the bots keep reading), and only then ask the bots how their views went.
    let pairs = views.server().stats();
    let deadline = Instant::now() + Duration::from_secs(10);
    while views.counters.pending() > 0 && Instant::now() < deadline {
        match tokio::time::timeout_at(deadline.into(), events.next()).await {
            Ok(Some(event)) => views.handle(event),
            _ => break,
        }
    }
    // Counted up to here: what follows is the bots leaving.
    let counters = views.counters;
    stop.cancel();
    let expected_reports = if network.server_only {
        args.bots
    } else {
        bots.len()
    };
    while views.reports.len() < expected_reports && Instant::now() < deadline {
        match tokio::time::timeout_at(deadline.into(), events.next()).await {
            Ok(Some(event)) => views.handle(event),
            _ => break,
        }
    }
    collect(bots).await;
    let ran = started.elapsed().min(wander_for);
    Ok(summarize(&args, &counters, &views.reports, &pairs, ran))
}

/// Waits for every bot; a bot that failed counts as a report with one mismatch.
async fn collect(bots: Vec<tokio::task::JoinHandle<BotResult>>) -> Vec<Report> {
    let mut reports = Vec::new();
    for bot in bots {
        match bot.await {
            Ok(Ok(report)) => reports.push(report),
            Ok(Err(error)) => {
                eprintln!("a bot failed: {error}");
                reports.push(Report {
                    view_mismatches: 1,
                    ..Report::default()
                });
            }
            Err(error) => eprintln!("a bot panicked: {error}"),
        }
    }
    reports
}

type BotResult = Result<Report, Box<dyn std::error::Error + Send + Sync>>;

fn print_status(views: &ViewServer, started: Instant) {
    let c = views.counters;
    let stats = views.server().stats();
    let secs = started.elapsed().as_secs_f64().max(1e-3);
    println!(
        "t={:>3.0}s bots={} watchers={} joins={} leaves={} ops/s={:.0} acks ok={} pending={} \
         failed={} positions/s={:.0} pairs direct={} relayed={}",
        secs,
        stats.clients,
        views.watchers(),
        c.joins,
        c.leaves,
        (c.joins + c.leaves) as f64 / secs,
        c.join_acks_ok + c.leave_acks_ok,
        c.pending(),
        c.ack_failures,
        c.positions_seen as f64 / secs,
        stats.direct_pairs,
        stats.relayed_pairs,
    );
}

fn summarize(
    args: &Args,
    c: &Counters,
    reports: &[Report],
    pairs: &ServerStats,
    ran: Duration,
) -> ExitCode {
    let mismatches: u64 = reports.iter().map(|r| r.view_mismatches).sum();
    let missing = args.bots.saturating_sub(reports.len()) as u64;
    // A bot that never reported could not confirm its view: count it as a mismatch.
    let view_mismatches = mismatches + missing;
    // Completions still missing after the wait failed too.
    let ack_failures = c.ack_failures + c.pending();
    let summary = serde_json::json!({
        "example": "mmo_view",
        "bots": args.bots,
        "seconds": args.seconds,
        "joins": c.joins,
        "leaves": c.leaves,
        "join_acks_ok": c.join_acks_ok,
        "leave_acks_ok": c.leave_acks_ok,
        "joins_undone": c.joins_undone,
        "ack_failures": ack_failures,
        "view_mismatches": view_mismatches,
        "view_checks": reports.iter().map(|r| r.view_checks).sum::<u64>(),
        "position_updates": reports.iter().map(|r| r.position_updates).sum::<u64>(),
        "direct_pairs": pairs.direct_pairs,
        "relayed_pairs": pairs.relayed_pairs,
        "ops_per_sec": ((c.joins + c.leaves) as f64 / ran.as_secs_f64()).round(),
    });
    println!("{summary}");
    if ack_failures == 0 && view_mismatches == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The summary of a clients-only run: what the bots saw (the server counts the acks).
fn summarize_clients(args: &Args, reports: &[Report]) -> ExitCode {
    let mismatches: u64 = reports.iter().map(|r| r.view_mismatches).sum();
    let summary = serde_json::json!({
        "example": "mmo_view",
        "bots": args.bots,
        "seconds": args.seconds,
        "view_mismatches": mismatches,
        "view_checks": reports.iter().map(|r| r.view_checks).sum::<u64>(),
        "position_updates": reports.iter().map(|r| r.position_updates).sum::<u64>(),
    });
    println!("{summary}");
    if mismatches == 0 && reports.len() == args.bots {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
