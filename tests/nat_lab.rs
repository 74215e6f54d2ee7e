//! peergroup through real Linux NATs (network namespaces, veth pairs and iptables; see
//! `tests/natlab`): for each pair of NAT kinds, two `peergroup probe` clients in one room
//! of a `peergroup-server` on the lab's public network. Messages flow over the relay from
//! the first moment; the pair goes direct wherever that is possible without port
//! prediction; no reliable message is ever lost, duplicated or reordered. Needs root; with
//! `CI=true` a missing capability fails instead of skipping.
//!
//! Each run prints a `NATLAB RESULT` line with the measured time to direct; the README's
//! matrix comes from those lines.

mod binaries;
mod natlab;

use binaries::binaries;
use natlab::{Host, Lab, Nat, NsChild};
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

/// The re-executed test binary's entry point for lab tools (see `natlab::tool_entry`).
#[test]
fn natlab_tool() {
    natlab::tool_entry();
}

const LIMIT: Duration = Duration::from_secs(90);
const SERVER_PORT: u16 = 7700;

/// The server binary running on the lab's server host.
struct LabServer {
    _process: NsChild,
    addr: String,
    cert: String,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn start_server(lab: &Lab) -> LabServer {
    let dir = std::env::temp_dir().join(format!("{}-identity", lab.prefix()));
    let _ = std::fs::remove_dir_all(&dir);
    let addr = lab.server().sock(SERVER_PORT).to_string();
    let mut command = Command::new(&binaries().server);
    command
        .args(["--listen", &addr, "--log", "warn", "--identity-dir"])
        .arg(&dir);
    let process = lab.spawn(lab.server(), command).expect("server starts");
    let line = process
        .wait_for_line("listening on", Duration::from_secs(20))
        .expect("server listening");
    let cert = line
        .split_whitespace()
        .nth(6)
        .expect("cert path in the listening line")
        .to_string();
    LabServer {
        _process: process,
        addr,
        cert,
        _dir: TempDir(dir),
    }
}

fn spawn_probe(lab: &Lab, server: &LabServer, host: &Host, name: &str, extra: &[&str]) -> NsChild {
    let mut command = Command::new(&binaries().client);
    command.args([
        "probe",
        "--server",
        &server.addr,
        "--server-cert",
        &server.cert,
        "--room",
        "lab",
        "--name",
        name,
        "--expect-peers",
        "1",
        // The lab measures UDP paths: a loaded machine must not let the WebSocket
        // fallback win the connection race (its pairs never go direct).
        "--transport",
        "quic",
    ]);
    command.args(extra);
    lab.spawn(host, command).expect("probe starts")
}

/// One probe's JSON lines.
struct ProbeRun {
    lines: Vec<Value>,
    text: String,
}

impl ProbeRun {
    fn collect(process: NsChild, timeout: Duration) -> Self {
        let output = process.wait_output(timeout).expect("probe finishes");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let text = format!(
            "status {:?}\n--- stdout\n{stdout}--- stderr\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "probe failed\n{text}");
        let lines = stdout
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect();
        Self { lines, text }
    }

    fn peer(&self) -> &Value {
        let summary = self
            .lines
            .iter()
            .find(|l| l["event"] == "summary")
            .unwrap_or_else(|| panic!("a summary\n{}", self.text));
        &summary["peers"][0]
    }

    /// The peer's path changes in order, with their times (ms from process start).
    fn paths(&self) -> Vec<(String, u64)> {
        self.lines
            .iter()
            .filter(|l| l["event"] == "path")
            .map(|l| {
                (
                    l["path"].as_str().unwrap_or_default().to_string(),
                    l["at_ms"].as_u64().unwrap_or_default(),
                )
            })
            .collect()
    }

    /// The peer's path just before it left the group (or at the end, if it never left): a
    /// peer that finishes first leaves, which sends the pair back to the relay before the
    /// summary is written.
    fn path_while_together(&self) -> Option<String> {
        let peer = &self.peer()["peer"];
        let mut path = None;
        for line in &self.lines {
            if line["event"] == "member_left" && line["host"] == *peer {
                break;
            }
            if line["event"] == "path" {
                path = line["path"].as_str().map(str::to_string);
            }
        }
        path
    }

    /// From the first relay path (the peer's join) to the first direct one, in ms.
    fn time_to_direct_ms(&self) -> Option<u64> {
        let paths = self.paths();
        let joined = paths.iter().find(|(p, _)| p == "relay")?.1;
        let direct = paths.iter().find(|(p, _)| p == "direct")?.1;
        Some(direct.saturating_sub(joined))
    }
}

/// Two clients, one per site (or both behind the first site's NAT), exchange reliable
/// messages; checks delivery and the expected path, and reports the time to direct.
fn pair(a: Nat, b: Option<Nat>, expect_direct: bool) {
    let name = match b {
        Some(b) => format!("{a} x {b}"),
        None => format!("{a} x same LAN"),
    };
    if natlab::should_skip(&name) {
        return;
    }
    natlab::bounded(LIMIT, move || {
        let lab = match b {
            Some(b) => Lab::builder().site(a).site(b).build(),
            None => Lab::builder().site_with_clients(a, 2).build(),
        }
        .expect("lab builds");
        let server = start_server(&lab);
        let (host_a, host_b) = match b {
            Some(_) => (lab.client(0, 0), lab.client(1, 0)),
            None => (lab.client(0, 0), lab.client(0, 1)),
        };
        let args = ["--count", "300", "--rate", "100", "--duration", "4"];
        let first = spawn_probe(&lab, &server, host_a, "a", &args);
        let second = spawn_probe(&lab, &server, host_b, "b", &args);
        let runs = [
            ProbeRun::collect(first, Duration::from_secs(40)),
            ProbeRun::collect(second, Duration::from_secs(40)),
        ];
        let mut times = Vec::new();
        for run in &runs {
            let peer = run.peer();
            let text = &run.text;
            for field in ["lost", "duplicates", "out_of_order"] {
                assert_eq!(peer[field].as_u64(), Some(0), "{field} ({name})\n{text}");
            }
            assert_eq!(
                peer["received"].as_u64(),
                Some(300),
                "received ({name})\n{text}"
            );
            assert!(
                peer["relay_received"].as_u64().unwrap_or(0) > 0,
                "the relay carried the first messages ({name})\n{text}"
            );
            if expect_direct {
                assert_eq!(
                    run.path_while_together().as_deref(),
                    Some("direct"),
                    "went direct ({name})\n{text}"
                );
                assert!(peer["direct_received"].as_u64().unwrap_or(0) > 0);
                times.push(run.time_to_direct_ms().expect("a direct path event"));
            } else {
                assert_eq!(
                    peer["path"], "relay",
                    "stayed on the relay ({name})\n{text}"
                );
                assert_eq!(
                    peer["direct_received"].as_u64(),
                    Some(0),
                    "({name})\n{text}"
                );
            }
        }
        if std::env::var_os("NATLAB_SHOW").is_some() {
            for (who, run) in [("a", &runs[0]), ("b", &runs[1])] {
                for line in &run.lines {
                    println!("{name} | client {who}: {line}");
                }
            }
        }
        let outcome = if expect_direct { "direct" } else { "relay" };
        let time = times
            .iter()
            .max()
            .map_or("-".to_string(), |t| format!("{t} ms"));
        println!("NATLAB RESULT {name}: {outcome}, time to direct {time}");
    });
}

#[test]
fn open_x_open() {
    pair(Nat::Open, Some(Nat::Open), true);
}

#[test]
fn full_cone_x_full_cone() {
    pair(Nat::FullCone, Some(Nat::FullCone), true);
}

#[test]
fn full_cone_x_port_restricted() {
    pair(Nat::FullCone, Some(Nat::PortRestricted), true);
}

#[test]
fn full_cone_x_symmetric() {
    pair(Nat::FullCone, Some(Nat::Symmetric), true);
}

#[test]
fn port_restricted_x_port_restricted() {
    pair(Nat::PortRestricted, Some(Nat::PortRestricted), true);
}

#[test]
fn port_restricted_x_symmetric_stays_on_the_relay() {
    pair(Nat::PortRestricted, Some(Nat::Symmetric), false);
}

#[test]
fn symmetric_x_symmetric_stays_on_the_relay() {
    pair(Nat::Symmetric, Some(Nat::Symmetric), false);
}

#[test]
fn open_x_symmetric() {
    pair(Nat::Open, Some(Nat::Symmetric), true);
}

#[test]
fn udp_blocked_x_full_cone_stays_on_the_relay() {
    pair(Nat::UdpBlocked, Some(Nat::FullCone), false);
}

#[test]
fn udp_blocked_x_port_restricted_stays_on_the_relay() {
    pair(Nat::UdpBlocked, Some(Nat::PortRestricted), false);
}

#[test]
fn two_clients_behind_one_port_restricted_nat_go_direct_over_the_lan() {
    pair(Nat::PortRestricted, None, true);
}

#[test]
fn two_clients_behind_one_symmetric_nat_go_direct_over_the_lan() {
    pair(Nat::Symmetric, None, true);
}

/// Two clients go direct; mid-stream a firewall rule drops UDP between their sites while
/// the server stays reachable. All 10,000 reliable messages arrive exactly once and in
/// order, the pair falls back to the relay, and returns to direct once the rule is gone.
#[test]
fn a_killed_direct_path_falls_back_and_comes_back_without_losing_a_message() {
    if natlab::should_skip("path kill") {
        return;
    }
    natlab::bounded(LIMIT, || {
        let lab = Lab::builder()
            .site(Nat::PortRestricted)
            .site(Nat::PortRestricted)
            .build()
            .expect("lab builds");
        let server = start_server(&lab);
        let args = ["--count", "10000", "--rate", "700", "--duration", "16"];
        let first = spawn_probe(&lab, &server, lab.client(0, 0), "a", &args);
        let second = spawn_probe(&lab, &server, lab.client(1, 0), "b", &args);
        // Kill the direct path once it is up, hold the block past the path timeout (5 s),
        // then lift it; the server orders a new punch 5 s after the loss.
        first
            .wait_for_line("\"path\":\"direct\"", Duration::from_secs(20))
            .expect("direct before the kill");
        std::thread::sleep(Duration::from_secs(1));
        let fault = lab.block_udp_between_sites(0, 1).expect("block");
        std::thread::sleep(Duration::from_secs(6));
        lab.remove_fault(fault).expect("unblock");
        let runs = [
            ProbeRun::collect(first, Duration::from_secs(60)),
            ProbeRun::collect(second, Duration::from_secs(60)),
        ];
        for run in &runs {
            let peer = run.peer();
            let text = &run.text;
            for field in ["lost", "duplicates", "out_of_order"] {
                assert_eq!(peer[field].as_u64(), Some(0), "{field}\n{text}");
            }
            assert_eq!(peer["received"].as_u64(), Some(10_000), "received\n{text}");
            let paths: Vec<String> = run.paths().into_iter().map(|(p, _)| p).collect();
            assert_eq!(
                paths,
                ["relay", "direct", "relay", "direct"],
                "relay, direct, fallback, direct again\n{text}"
            );
        }
        println!("NATLAB RESULT path kill: 10000/10000 in order, paths relay-direct-relay-direct");
    });
}
