//! The `lobby` example, run as a process: its `--demo` in one process, with and without
//! relay-only players; split into a `--server-only` process and a `--connect` clients
//! process; and its refusal of an odd player count.

mod binaries;
use binaries::{run_demo, Interactive};

use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

/// How long one run of the example may take.
const LIMIT: Duration = Duration::from_secs(90);

/// The demos time hole punching and count which matches went direct: the tests here take
/// turns, so two demos never compete for the machine's two cores.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn count(summary: &serde_json::Value, key: &str) -> u64 {
    summary[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is not a count in {summary}"))
}

#[test]
fn demo_matches_every_player_each_round_and_relay_only_players_with_each_other() {
    let _turn = one_at_a_time();
    let args = [
        "--demo",
        "--players",
        "8",
        "--rounds",
        "2",
        "--relay-only",
        "2",
    ];
    let demo = run_demo("lobby", &args, LIMIT);
    assert_eq!(demo.code, Some(0), "{}\n{}", demo.stdout, demo.stderr);
    let summary = &demo.summary;
    assert_eq!(summary["example"], "lobby");
    assert_eq!(count(summary, "players"), 8);
    assert_eq!(count(summary, "rounds"), 2);
    // Every player plays once per round: 4 matches a round.
    assert_eq!(count(summary, "matches"), 8, "{summary}");
    // The two relay-only players join the two hosted games in round 1 (2 relayed), and
    // the matchmaker pairs them with each other in round 2 (1 relayed); every other pair
    // goes direct on loopback.
    assert_eq!(count(summary, "relayed"), 3, "{summary}");
    assert_eq!(count(summary, "direct"), 5, "{summary}");
    assert_eq!(count(summary, "wrong_password_refused"), 1);
    // The lobby's own log shows the refusal and the matchmaker's view of the two.
    assert!(demo.stdout.contains("wrong password"), "{}", demo.stdout);
    assert!(demo.stdout.contains("keeps failing"), "{}", demo.stdout);
}

#[test]
fn demo_without_relay_only_players_goes_direct_everywhere() {
    let _turn = one_at_a_time();
    let args = [
        "--demo",
        "--players",
        "6",
        "--rounds",
        "1",
        "--relay-only",
        "0",
    ];
    let demo = run_demo("lobby", &args, LIMIT);
    assert_eq!(demo.code, Some(0), "{}\n{}", demo.stdout, demo.stderr);
    let summary = &demo.summary;
    assert_eq!(count(summary, "players"), 6);
    assert_eq!(count(summary, "matches"), 3, "{summary}");
    assert_eq!(count(summary, "direct"), 3, "{summary}");
    assert_eq!(count(summary, "relayed"), 0, "{summary}");
    assert_eq!(count(summary, "wrong_password_refused"), 1);
}

#[test]
fn an_odd_number_of_players_is_refused_before_anything_runs() {
    let output = Command::new(binaries::example("lobby"))
        .args(["--demo", "--players", "7"])
        .stdin(Stdio::null())
        .output()
        .expect("running the lobby example");
    assert_eq!(output.status.code(), Some(2), "clap's usage error");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("an even number"), "{stderr}");
}

#[test]
fn split_into_a_server_process_and_a_clients_process() {
    let _turn = one_at_a_time();
    let mut command = Command::new(binaries::example("lobby"));
    command.arg("--server-only");
    let mut server = Interactive::spawn(command);
    let (addr, cert) = server.listening();

    let args = [
        "--connect",
        &addr,
        "--server-cert",
        &cert,
        "--demo",
        "--players",
        "6",
        "--rounds",
        "2",
        "--relay-only",
        "2",
    ];
    let demo = run_demo("lobby", &args, LIMIT);
    assert_eq!(demo.code, Some(0), "{}\n{}", demo.stdout, demo.stderr);
    let summary = &demo.summary;
    assert_eq!(count(summary, "players"), 6);
    assert_eq!(count(summary, "matches"), 6, "{summary}");
    assert_eq!(count(summary, "relayed"), 3, "{summary}");
    assert_eq!(count(summary, "direct"), 3, "{summary}");
    assert_eq!(count(summary, "wrong_password_refused"), 1);

    // The matches were made and reported by the server process.
    let mut reports = 0;
    while let Some(line) = server.next_line(Duration::from_millis(500)) {
        let settled = [": direct", ": still direct", ": relayed"];
        if settled.iter().any(|report| line.contains(report)) {
            reports += 1;
        }
    }
    assert_eq!(reports, 6, "the server reported {reports} matches");
    // The server is still up, serving until it is stopped.
    assert!(server.running());
}
