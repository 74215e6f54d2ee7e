//! A chat server and its clients on peergroup: public rooms, invite-only parties,
//! whispers, nicknames as host data, moderation by the server, and history in SQLite.
//!
//! Rooms and parties are P2P groups. Members send their lines to the group, so they
//! arrive at once through the server's relay and go direct once a pair has punched
//! through; the sender is stamped by peergroup, so no one can speak as another. The
//! server application is a member of every public room: it stores each line (the last
//! 50 go to every joiner) and moderates (a banned word mutes, talking while muted
//! kicks). A mute is a change of the member's host data, which every host sharing a
//! group with it hears of and enforces by hiding its lines.
//!
//! Run it:
//! - `cargo run --release --example chat`: a server and one interactive client in this
//!   process (`/join ROOM`, `/leave`, `/w NAME text`, `/invite NAME`, `/who`, `/quit`;
//!   other lines go to the current room). `--name NICK`, `--db PATH` (the history file).
//! - `--server-only` on one side, `--connect ADDR --server-cert PATH --name NICK` on each
//!   other: the same, across processes or machines.
//! - `--demo`: three scripted members in one process; the last line of output is a JSON
//!   summary, and the exit status is 0 only if nothing was lost or misattributed.
//!
//! Read `server.rs` (the server application), then `client.rs` (what a member does with
//! commands and events); `protocol.rs` holds the messages both share, `demo.rs` the
//! scripted run.

#[path = "../common/mod.rs"]
mod common;

mod client;
mod demo;
mod history;
mod protocol;
mod server;
mod terminal;

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(about = "peergroup chat: rooms, parties, whispers, moderation, history")]
struct Args {
    #[command(flatten)]
    network: common::Network,

    /// Your nickname (the server adds a number if it is taken).
    #[arg(long, value_name = "NICK", default_value = "guest")]
    name: String,

    /// The SQLite file that keeps room history [default: in the system's temp dir].
    #[arg(long, value_name = "PATH")]
    db: Option<PathBuf>,

    /// Run three scripted members and print a JSON summary.
    #[arg(long, conflicts_with_all = ["server_only", "connect"])]
    demo: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    common::init_logs();
    let args = Args::parse();
    if args.demo {
        return demo::run(&args.network).await;
    }
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("chat: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let (addr, trust) = if args.network.runs_server() {
        let db = args
            .db
            .unwrap_or_else(|| std::env::temp_dir().join("peergroup-example-chat-history.db"));
        let running = server::start(&args.network, &db).await?;
        if !args.network.runs_clients() {
            println!("history in {}", db.display());
            common::until_ctrl_c().await;
            return Ok(());
        }
        println!(
            "* server on {}; for more terminals, run it with --server-only",
            running.addr
        );
        (running.addr, running.trust)
    } else {
        args.network.target(None)?
    };
    terminal::run(addr, &trust, &args.name).await
}
