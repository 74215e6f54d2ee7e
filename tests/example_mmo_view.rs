//! The `mmo_view` example, run from the outside: in one process, and split into a server
//! process and a clients process, each checked through its JSON summary.

mod binaries;

use binaries::{example, run_demo};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn number(summary: &Value, field: &str) -> u64 {
    summary[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} missing in {summary}"))
}

#[test]
fn bots_hear_exactly_their_views_and_every_join_and_leave_completes() {
    let demo = run_demo(
        "mmo_view",
        &["--demo", "--bots", "20", "--seconds", "6", "--seed", "7"],
        Duration::from_secs(90),
    );
    let s = &demo.summary;
    assert_eq!(demo.code, Some(0), "{s}\n{}", demo.stderr);
    assert_eq!(s["example"], "mmo_view");
    assert_eq!(number(s, "bots"), 20);
    assert_eq!(number(s, "seconds"), 6);
    assert_eq!(number(s, "ack_failures"), 0);
    assert_eq!(number(s, "view_mismatches"), 0);
    // Bots wander in and out of sight, so views change: joins and leaves happened and
    // every one of them completed (a join undone by a leave before its acks excepted).
    let (joins, leaves) = (number(s, "joins"), number(s, "leaves"));
    assert!(joins > 20 && leaves > 0, "{s}");
    assert_eq!(
        number(s, "join_acks_ok") + number(s, "joins_undone"),
        joins,
        "{s}"
    );
    assert_eq!(number(s, "leave_acks_ok"), leaves, "{s}");
    // Every bot checked its view several times and heard positions.
    assert!(number(s, "view_checks") > 20 * 4, "{s}");
    assert!(number(s, "position_updates") > 20 * 10, "{s}");
    assert!(
        number(s, "direct_pairs") + number(s, "relayed_pairs") > 0,
        "{s}"
    );
    assert!(s["ops_per_sec"].as_f64().unwrap() > 0.0, "{s}");
}

/// A child process killed on drop, even when the test fails.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_server_process_and_a_clients_process_run_the_demo_together() {
    let identity = std::env::temp_dir().join(format!("peergroup-test-mmo-{}", std::process::id()));
    let mut server = Killed(
        Command::new(example("mmo_view"))
            .args(["--server-only", "--demo", "--bots", "8", "--seconds", "5"])
            .arg("--identity-dir")
            .arg(&identity)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting the server"),
    );
    // `listening on ADDR cert PATH`, read on a thread so a silent server cannot hang us.
    let stdout = server.0.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let first = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the server prints its address");
    let rest = first
        .strip_prefix("listening on ")
        .expect("the address line");
    let (addr, cert) = rest.split_once(" cert ").expect("ADDR cert PATH");

    let clients = run_demo(
        "mmo_view",
        &[
            "--connect",
            addr,
            "--server-cert",
            cert,
            "--demo",
            "--bots",
            "8",
            "--seconds",
            "5",
        ],
        Duration::from_secs(90),
    );
    assert_eq!(
        clients.code,
        Some(0),
        "{}\n{}",
        clients.summary,
        clients.stderr
    );
    assert_eq!(number(&clients.summary, "bots"), 8);
    assert_eq!(number(&clients.summary, "view_mismatches"), 0);
    assert!(number(&clients.summary, "position_updates") > 0);

    // The server's summary counts the acks and the bots' reports.
    let summary = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the server prints its summary");
        if line.starts_with('{') {
            break serde_json::from_str::<Value>(&line).expect("JSON");
        }
    };
    assert_eq!(number(&summary, "ack_failures"), 0, "{summary}");
    assert_eq!(number(&summary, "view_mismatches"), 0, "{summary}");
    assert!(number(&summary, "joins") >= 8, "{summary}");
    let status = server.0.wait().expect("the server exits");
    let _ = std::fs::remove_dir_all(&identity);
    assert!(status.success(), "{summary}");
}
