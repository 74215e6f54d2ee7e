//! Soak: 1,000 clients for 10 minutes against the release server, through membership
//! churn, relay and direct traffic in every delivery mode and forced path switches.
//!
//! ```text
//! cargo run --release -p peergroup-bench --bin soak                       # 1,000 clients, 10 min
//! cargo run --release -p peergroup-bench --bin soak -- --clients 200 --minutes 1
//! ```
//!
//! The server runs in a child process of its own (this program with `--serve`), so its
//! resident memory can be read from `/proc` without the clients in it. The clients run
//! here, on the client library, and keep a ledger of what each sent and received:
//! - every client is in one *stable* group of 8 (direct paths allowed) whose members never
//!   change once the run starts, so every reliable message to it must arrive exactly once,
//!   in order per channel, however often its pair switches path;
//! - the server moves clients in and out of 100 *churn* groups (relay only) all the time,
//!   and a message there must never arrive twice or out of order (membership gaps are
//!   allowed: a receiver out of the group misses what was sent meanwhile);
//! - every 20 s each client closes the direct path to one stable peer, forcing a fall
//!   back to the relay (and a punch back later).
//!
//! It prints a line every 30 s and, at the end, one JSON summary: the server's RSS over
//! time, lost, duplicated and reordered reliable messages, unexpected disconnects (a
//! session ended), connections lost and resumed (the session kept; counted apart), ops
//! and path switches. It exits 1 if any reliable message was lost, duplicated or reordered or a
//! client was disconnected. Everything is bounded: the run stops at `--minutes` (at most
//! 60), set-up and drain phases have their own time limits, and the server child exits
//! when its standard input closes (this process ending, however it ends).

mod clients;
mod ledger;
mod rng;
mod server;

use clap::Parser;
use std::process::ExitCode;
use std::time::Duration;

/// Soak run: many clients, churn, every delivery mode, path switches.
#[derive(Debug, Parser)]
struct Args {
    /// Connected clients.
    #[arg(long, default_value_t = 1_000)]
    clients: usize,
    /// How long traffic runs, minutes (at most 60).
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// Membership changes the server makes per second in the churn groups.
    #[arg(long, default_value_t = 500)]
    churn_per_sec: u32,
    /// Seeds the server's churn and the clients' choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Seconds between a client's pings to each peer, on either path (the client
    /// library's defaults are 1 on a direct path and 10 on the relay; a client in many
    /// groups pings every peer it has, so at high churn this is much of the load).
    #[arg(long)]
    ping_secs: Option<f64>,
    /// Milliseconds between a client's sends to its groups. At 2,000, 1,000 clients and
    /// the server share two cores and keep up; at 200 (the load the soak was first built
    /// with) the server cannot read that fast, and at 1,000 the clients' own process
    /// cannot take in what it is sent (README, "Soak").
    #[arg(long, default_value_t = 2_000)]
    send_ms: u64,
    /// How long the drain after the traffic may take at most, seconds.
    #[arg(long, default_value_t = 30.0)]
    drain_secs: f64,
    /// Run as the server child (internal).
    #[arg(long, hide = true)]
    serve: bool,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("soak: runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    if args.serve {
        return match runtime.block_on(server::serve(args.clients, args.churn_per_sec, args.seed)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("soak server: {error}");
                ExitCode::FAILURE
            }
        };
    }
    let window = Duration::from_secs_f64(args.minutes.clamp(0.05, 60.0) * 60.0);
    let options = clients::RunOptions {
        ping_interval: args
            .ping_secs
            .map(|secs| Duration::from_secs_f64(secs.clamp(0.001, 3600.0))),
        drain_limit: Duration::from_secs_f64(args.drain_secs.clamp(1.0, 3600.0)),
        send_every: Duration::from_millis(args.send_ms.clamp(10, 60_000)),
    };
    match runtime.block_on(clients::run(
        args.clients,
        window,
        args.churn_per_sec,
        args.seed,
        options,
    )) {
        Ok(summary) => {
            println!("{}", summary.json);
            if summary.passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(error) => {
            eprintln!("soak: {error}");
            ExitCode::FAILURE
        }
    }
}
