//! The `mmo_view` example, run from the outside: in one process, and split into a server
//! process and a clients process, each checked through its JSON summary.

mod binaries;

use binaries::{example, run_demo, Interactive};
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

/// The two runs take turns: each is a few hundred bots' worth of work for two cores, and
/// the view check is about timing (a position heard recently), so they do not run at once.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn number(summary: &Value, field: &str) -> u64 {
    summary[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} missing in {summary}"))
}

#[test]
fn bots_hear_exactly_their_views_and_every_join_and_leave_completes() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
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

#[test]
fn a_server_process_and_a_clients_process_run_the_demo_together() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let identity = std::env::temp_dir().join(format!("peergroup-test-mmo-{}", std::process::id()));
    let mut command = Command::new(example("mmo_view"));
    command
        .args(["--server-only", "--demo", "--bots", "8", "--seconds", "5"])
        .arg("--identity-dir")
        .arg(&identity);
    let mut server = Interactive::spawn(command);
    let (addr, cert) = server.listening();
    let (addr, cert) = (addr.as_str(), cert.as_str());

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
    let line = server.expect("{\"");
    let summary = serde_json::from_str::<Value>(&line).expect("JSON");
    assert_eq!(number(&summary, "ack_failures"), 0, "{summary}");
    assert_eq!(number(&summary, "view_mismatches"), 0, "{summary}");
    assert!(number(&summary, "joins") >= 8, "{summary}");
    let code = server.exit_code();
    let _ = std::fs::remove_dir_all(&identity);
    assert_eq!(code, Some(0), "{summary}");
}
