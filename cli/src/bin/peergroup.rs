//! `peergroup`: the command-line client of a `peergroup-server` running the rooms
//! application.
//!
//! ```text
//! peergroup [--log LEVEL] chat  --server ADDR --server-cert PATH --room NAME [--name NICK] [--password PW]
//! peergroup [--log LEVEL] rooms --server ADDR --server-cert PATH
//! peergroup [--log LEVEL] probe --server ADDR --server-cert PATH --room NAME --name NAME
//!           [--password PW] [--count N] [--rate PER_SEC] [--size BYTES] [--duration SECS]
//!           [--delivery reliable|unordered|unreliable|sequenced|latest] [--keys N] [--expect-peers N]
//! ```
//!
//! - `chat`: joins a room and chats on stdin/stdout (`[NICK via relay] text`,
//!   `* NICK joined`, `* NICK left`). End of stdin leaves and exits 0; a refused join
//!   exits 2; a lost connection exits 1.
//! - `rooms`: prints `NAME  MEMBERS members  [password]` per room.
//! - `probe`: a machine-readable client for tests and benchmarks that sends sequenced
//!   messages and prints JSON lines; its contract is in `peergroup probe --help` and in
//!   the `probe` module.
//!
//! `ADDR` and `PATH` are what `peergroup-server` prints at start-up
//! (`listening on ADDR fingerprint HEX cert PATH`). Logs go to stderr, filtered by
//! `--log` (a `tracing` filter such as `debug` or `peergroup_client=trace`), else
//! `RUST_LOG`, else `warn`.
//!
//! # Layout
//! - `peergroup/common.rs`: server flags, connecting, the rooms request/reply exchange,
//!   exit codes.
//! - `peergroup/chat.rs`, `peergroup/rooms.rs`, `peergroup/probe.rs`: one per subcommand;
//!   the probe's statistics are a plain struct with unit tests.

#[path = "peergroup/chat.rs"]
mod chat;
#[path = "peergroup/common.rs"]
mod common;
#[path = "peergroup/probe.rs"]
mod probe;
#[path = "peergroup/rooms.rs"]
mod rooms;

use clap::{Parser, Subcommand};
use std::process::ExitCode;
use std::time::Duration;
use tracing_subscriber::EnvFilter;

/// How long the runtime may take to stop after a subcommand ends (a pending blocking
/// stdin read would otherwise keep the process alive).
const SHUTDOWN_TIMEOUT: Duration = Duration::from_millis(200);

/// The peergroup command-line client (rooms application).
#[derive(Debug, Parser)]
#[command(name = "peergroup", version, about, long_about = None)]
struct Cli {
    /// Log filter for stderr, e.g. `info` or `peergroup_client=debug` [default: RUST_LOG,
    /// else warn].
    #[arg(long, value_name = "LEVEL", global = true)]
    log: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
// The subcommands' help (short and long) comes from the doc comments of their argument
// structs; a doc comment here would replace it.
enum Command {
    Chat(chat::ChatArgs),
    Rooms(rooms::RoomsArgs),
    Probe(probe::ProbeArgs),
}

fn main() -> ExitCode {
    common::process_start();
    let cli = Cli::parse();
    if let Err(error) = init_logging(cli.log.as_deref()) {
        eprintln!("peergroup: {error}");
        return ExitCode::from(common::EXIT_FAILURE);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("peergroup: cannot start the async runtime: {error}");
            return ExitCode::from(common::EXIT_FAILURE);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Chat(args) => chat::run(args).await,
            Command::Rooms(args) => rooms::run(args).await,
            Command::Probe(args) => probe::run(args).await,
        }
    });
    runtime.shutdown_timeout(SHUTDOWN_TIMEOUT);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("peergroup: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

/// Logs to stderr with the filter from `--log`, else `RUST_LOG`, else `warn`.
fn init_logging(level: Option<&str>) -> Result<(), String> {
    let filter = match level {
        Some(level) => {
            EnvFilter::try_new(level).map_err(|e| format!("bad --log filter {level:?}: {e}"))?
        }
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn probe_defaults_and_limits() {
        let base = [
            "peergroup",
            "probe",
            "--server",
            "127.0.0.1:7700",
            "--server-cert",
            "cert.pem",
            "--room",
            "r",
            "--name",
            "n",
        ];
        let cli = Cli::try_parse_from(base).unwrap();
        let Command::Probe(args) = cli.command else {
            panic!("not a probe");
        };
        let shown = format!("{args:?}");
        for field in [
            "count: 100",
            "rate: 100",
            "size: 64",
            "duration: 5s",
            "delivery: Reliable",
            "expect_peers: 1",
        ] {
            assert!(shown.contains(field), "{field} in {shown}");
        }
        let with = |extra: &[&str]| {
            let mut argv: Vec<&str> = base.to_vec();
            argv.extend_from_slice(extra);
            Cli::try_parse_from(argv)
        };
        assert!(with(&["--size", "15"]).is_err());
        assert!(with(&["--size", "16"]).is_ok());
        assert!(with(&["--rate", "0"]).is_err());
        assert!(with(&["--duration", "-1"]).is_err());
        assert!(with(&["--duration", "0.5", "--delivery", "unreliable"]).is_ok());
        assert!(with(&["--delivery", "sometimes"]).is_err());
        assert!(with(&["--log", "debug"]).is_ok());
        // --name is required for a probe, optional for chat.
        assert!(Cli::try_parse_from(&base[..8]).is_err());
        let chat = Cli::try_parse_from([
            "peergroup",
            "chat",
            "--server",
            "h:1",
            "--server-cert",
            "c",
            "--room",
            "r",
        ]);
        assert!(chat.is_ok());
    }
}
