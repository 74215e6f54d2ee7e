//! The `admin` example, run as a process: its `--demo` walkthrough of the management API.

mod binaries;
use binaries::run_demo;

use std::time::Duration;

#[test]
fn walkthrough_runs_every_step_and_every_check_holds() {
    let demo = run_demo("admin", &["--demo"], Duration::from_secs(90));
    assert_eq!(demo.code, Some(0), "{}\n{}", demo.stdout, demo.stderr);
    let summary = &demo.summary;
    assert_eq!(summary["example"], "admin");
    let steps = summary["steps"].as_u64().expect("steps");
    assert!(steps >= 10, "only {steps} steps");
    assert_eq!(summary["failed_steps"], 0, "{}", demo.stdout);

    // Each step printed one line with its result, numbered in order, none failed.
    let printed: Vec<&str> = demo
        .stdout
        .lines()
        .filter(|line| line.starts_with("step "))
        .collect();
    assert_eq!(printed.len() as u64, steps, "{}", demo.stdout);
    for (n, line) in printed.iter().enumerate() {
        assert!(line.starts_with(&format!("step {}: ", n + 1)), "{line}");
        assert!(line.contains(" -> "), "{line}");
        assert!(!line.contains("CHECK FAILED"), "{line}");
    }
    // The walkthrough covers the API it promises.
    for call in [
        "create_group_with_data",
        "join_group",
        "leave_group",
        "destroy_group",
        "change_membership",
        "set_host_data",
        "set_group_data",
        "server.clients()",
        "pair_stats",
        "punch_stats",
        "disconnect",
    ] {
        assert!(demo.stdout.contains(call), "no step shows {call}");
    }
    assert!(demo.stdout.contains("JoinAckComplete Ok"));
    assert!(demo.stdout.contains("LeaveAckComplete Ok"));
    assert!(demo.stdout.contains("PairPathChanged Direct"));
    assert!(demo.stdout.contains("kicked by the admin walkthrough"));
}
