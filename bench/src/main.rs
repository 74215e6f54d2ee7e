//! `peergroup-bench`: peergroup measured side by side with what users would otherwise
//! pick, in one run on one machine. The machine is shared and noisy, so the figures that
//! count are the ratios taken in the same run.
//!
//! ```text
//! cargo run --release -p peergroup-bench -- --quick     # under 2 minutes
//! cargo run --release -p peergroup-bench -- --full
//! cargo run --release -p peergroup-bench -- --quick --only relay,direct
//! ```
//!
//! Writes `target/bench/results.json` (stable keys; messages per second, microseconds,
//! KiB), `target/bench/results.md` and SVG plots beside them.
//!
//! # Layout
//! - `report.rs`: results, tables and plots; `stats.rs`: latency histograms.
//! - `relay.rs`: relay throughput and latency (peergroup-server, a bare quinn forwarder,
//!   coturn). `forwarder.rs` and `turn.rs` are the two baselines.
//! - `direct.rs`: direct-path RTT and throughput (peergroup, bare quinn, raw UDP).
//! - `switch.rs`: time to direct and the largest delivery gap at a path switch.
//! - `churn.rs`: group joins and leaves per second with every ack; `scale.rs`: many
//!   clients (memory, idle CPU, connection set-up rate).
//! - `priority.rs`: latency of High messages behind a Low backlog at the server, and
//!   latest-value replacement for a slow receiver.
//! - `mmo/`: the `mmo_view` example's workload headless at 1,000 raw-client bots
//!   (membership batches every tick, position updates, server CPU).

mod churn;
mod codec;
mod cpu;
mod direct;
mod fanout;
mod forwarder;
mod mmo;
mod priority;
mod relay;
mod report;
mod scale;
mod setup;
mod stats;
mod switch;
mod turn;

use clap::Parser;
use report::Report;
use std::path::PathBuf;
use std::time::Instant;

/// How long and how widely to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A subset of cases with short windows: the whole run stays under 2 minutes.
    Quick,
    /// Every case with longer windows.
    Full,
}

impl Mode {
    /// Picks the quick or the full value.
    pub fn pick<T>(self, quick: T, full: T) -> T {
        match self {
            Mode::Quick => quick,
            Mode::Full => full,
        }
    }
}

/// Side-by-side benchmarks of peergroup.
#[derive(Debug, Parser)]
#[command(name = "peergroup-bench")]
struct Args {
    /// The short run (default).
    #[arg(long, conflicts_with = "full")]
    quick: bool,
    /// The long run.
    #[arg(long)]
    full: bool,
    /// Run only these sections (comma-separated: relay, direct, codec, switch, churn, scale, priority, mmo).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Where to write the results. Default: `target/bench` in the workspace.
    #[arg(long)]
    out: Option<PathBuf>,
}

type Section = fn(Mode, &mut Report, &std::path::Path) -> Result<(), String>;

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let mode = if args.full { Mode::Full } else { Mode::Quick };
    let out = args
        .out
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench"));
    let sections: Vec<(&str, Section)> = vec![
        ("relay", relay::run),
        ("direct", direct::run),
        ("codec", codec::run),
        ("switch", switch::run),
        ("churn", churn::run),
        ("scale", scale::run),
        ("priority", priority::run),
        ("mmo", mmo::run),
    ];
    let mut report = Report::default();
    let started = Instant::now();
    let mut failed = Vec::new();
    for (name, section) in sections {
        if !args.only.is_empty() && !args.only.iter().any(|o| o == name) {
            continue;
        }
        eprintln!("== {name}");
        let section_started = Instant::now();
        if let Err(error) = section(mode, &mut report, &out) {
            eprintln!("{name}: {error}");
            failed.push(format!("{name}: {error}"));
        }
        eprintln!(
            "   {name} took {:.1} s",
            section_started.elapsed().as_secs_f64()
        );
    }
    let header = format!(
        "# peergroup benchmarks ({mode:?} run, {:.0} s)\n\nOne run on one machine \
         ({} cores, release build, loopback); compare ratios within a run, not absolute \
         figures across machines.",
        started.elapsed().as_secs_f64(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    if let Err(error) = report.write(&out, &header) {
        eprintln!("writing results to {}: {error}", out.display());
        return std::process::ExitCode::FAILURE;
    }
    println!("{}", report.markdown(&header));
    eprintln!("results in {}", out.display());
    if failed.is_empty() {
        std::process::ExitCode::SUCCESS
    } else {
        eprintln!("failed sections:\n  {}", failed.join("\n  "));
        std::process::ExitCode::FAILURE
    }
}
