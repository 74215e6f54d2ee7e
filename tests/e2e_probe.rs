//! End to end through the real binaries: a `peergroup-server` (rooms application) on
//! loopback and two `peergroup probe` processes in one room, checked through the probe's
//! JSON-lines contract (see `peergroup probe --help`).
//! The binaries come from `binaries/` (built once per test process).

use serde_json::Value;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// No child process may run longer than this.
const PROCESS_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the server may take to print its address.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

mod binaries;
use binaries::{binaries, Interactive};

// ---- processes --------------------------------------------------------------------------

/// A directory removed on drop, unique to one test run.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "peergroup-e2e-{tag}-{}-{nanos}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("creating the temp dir");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed (and reaped) on drop, also when the test panics.
struct Proc {
    child: Child,
    stdout: Option<JoinHandle<String>>,
    stderr: Option<JoinHandle<String>>,
}

fn collect(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

impl Proc {
    /// Spawns `command` with stdout and stderr collected in the background.
    fn spawn(mut command: Command) -> Self {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {command:?}: {e}"));
        let stdout = child.stdout.take().map(collect);
        let stderr = child.stderr.take().map(collect);
        Self {
            child,
            stdout,
            stderr,
        }
    }

    /// Waits for the exit, killing the process at `PROCESS_TIMEOUT` (which fails).
    fn wait(mut self) -> Output {
        let deadline = Instant::now() + PROCESS_TIMEOUT;
        let status = loop {
            match self.child.try_wait().expect("waiting for a child") {
                Some(status) => break Some(status),
                None if Instant::now() >= deadline => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break None;
                }
                None => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        let stdout = self.stdout.take().map(|t| t.join().unwrap_or_default());
        let stderr = self.stderr.take().map(|t| t.join().unwrap_or_default());
        let output = Output {
            status,
            stdout: stdout.unwrap_or_default(),
            stderr: stderr.unwrap_or_default(),
        };
        assert!(
            output.status.is_some(),
            "a process ran longer than {PROCESS_TIMEOUT:?} and was killed\n{output}"
        );
        output
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a finished process left.
struct Output {
    /// `None` when it had to be killed.
    status: Option<ExitStatus>,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "status: {:?}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// A running `peergroup-server`, killed on drop; its log is printed if the test fails.
struct Server {
    proc: Proc,
    addr: String,
    cert: PathBuf,
    log: PathBuf,
    // Dropped last: the server's identity and log live here.
    _dir: TempDir,
}

impl Server {
    fn start(tag: &str) -> Self {
        let dir = TempDir::new(tag);
        let log = dir.0.join("server.log");
        let mut command = Command::new(&binaries().server);
        command
            .args(["--listen", "127.0.0.1:0", "--log", "info", "--identity-dir"])
            .arg(dir.0.join("identity"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(&log).expect("creating the server log"));
        let mut child = command.spawn().expect("spawning peergroup-server");
        let stdout = child.stdout.take().expect("the server's stdout");
        let proc = Proc {
            child,
            stdout: None,
            stderr: None,
        };

        // Read the first line on a thread, so a silent server cannot hang the test; keep
        // draining afterwards so the server never writes into a closed pipe.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next());
            for _ in lines {}
        });
        let line = match rx.recv_timeout(STARTUP_TIMEOUT) {
            Ok(Some(Ok(line))) => line,
            other => panic!(
                "peergroup-server printed no address within {STARTUP_TIMEOUT:?} ({other:?}); \
                 log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            ),
        };
        let (addr, cert) = parse_listening(&line)
            .unwrap_or_else(|| panic!("unexpected first line from the server: {line:?}"));
        Self {
            proc,
            addr,
            cert,
            log,
            _dir: dir,
        }
    }

    /// The `--server` and `--server-cert` arguments.
    fn args(&self) -> [String; 4] {
        [
            "--server".into(),
            self.addr.clone(),
            "--server-cert".into(),
            self.cert.display().to_string(),
        ]
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.proc.child.kill();
        let _ = self.proc.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- peergroup-server log ---\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

/// `listening on ADDR fingerprint HEX cert PATH` → (ADDR, PATH).
fn parse_listening(line: &str) -> Option<(String, PathBuf)> {
    let rest = line.strip_prefix("listening on ")?;
    let (addr, rest) = rest.split_once(" fingerprint ")?;
    let (fingerprint, cert) = rest.split_once(" cert ")?;
    if fingerprint.len() != 64 || !fingerprint.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    Some((addr.to_owned(), PathBuf::from(cert)))
}

#[test]
fn the_server_line_parses() {
    let line = "listening on 127.0.0.1:4433 fingerprint ".to_owned()
        + &"ab".repeat(32)
        + " cert /tmp/a dir/cert.pem";
    assert_eq!(
        parse_listening(&line),
        Some(("127.0.0.1:4433".into(), "/tmp/a dir/cert.pem".into()))
    );
    assert_eq!(
        parse_listening("listening on x fingerprint zz cert c"),
        None
    );
}

// ---- probes -----------------------------------------------------------------------------

fn probe(server: &Server, room: &str, name: &str, extra: &[&str]) -> Proc {
    let mut command = Command::new(&binaries().client);
    command
        .arg("probe")
        .args(server.args())
        .args(["--room", room, "--name", name])
        // These tests follow QUIC paths (relay and direct): a loaded machine must not let
        // the WebSocket fallback win the connection race.
        .args(["--transport", "quic"])
        .args(extra);
    Proc::spawn(command)
}

/// A finished probe's JSON lines.
struct ProbeRun {
    output: Output,
    lines: Vec<Value>,
}

impl ProbeRun {
    fn new(output: Output) -> Self {
        let lines = output
            .stdout
            .lines()
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("not a JSON line: {line:?}: {e}\n{output}"))
            })
            .collect();
        Self { output, lines }
    }

    fn events<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.lines.iter().filter(move |line| line["event"] == kind)
    }

    fn host(&self) -> u64 {
        let connected: Vec<&Value> = self.events("connected").collect();
        assert_eq!(connected.len(), 1, "one connected line\n{}", self.output);
        assert_eq!(
            connected[0]["transport"], "quic",
            "the connected line names the carrier asked for\n{}",
            self.output
        );
        connected[0]["host"]
            .as_u64()
            .unwrap_or_else(|| panic!("connected without a host\n{}", self.output))
    }

    fn summary(&self) -> &Value {
        let summaries: Vec<&Value> = self.events("summary").collect();
        assert_eq!(summaries.len(), 1, "exactly one summary\n{}", self.output);
        assert_eq!(
            self.lines.last(),
            Some(summaries[0]),
            "the summary comes last\n{}",
            self.output
        );
        summaries[0]
    }

    /// Checks what every run must show, and returns the summary's entry for `peer`.
    fn common_checks(&self, peer: u64, count: u64) -> &Value {
        let out = &self.output;
        assert_eq!(
            out.status.and_then(|s| s.code()),
            Some(0),
            "the probe succeeds\n{out}"
        );
        assert!(
            self.events("member_joined")
                .any(|line| line["host"].as_u64() == Some(peer)),
            "member_joined for the other probe ({peer})\n{out}"
        );
        assert!(
            self.events("path")
                .any(|line| line["peer"].as_u64() == Some(peer) && line["path"] == "relay"),
            "a relay path line for the other probe\n{out}"
        );
        let summary = self.summary();
        assert_eq!(summary["sent"].as_u64(), Some(count), "sent\n{out}");
        let peers = summary["peers"].as_array().expect("peers is an array");
        assert_eq!(peers.len(), 1, "exactly one peer\n{out}");
        let entry = &peers[0];
        assert_eq!(entry["peer"].as_u64(), Some(peer), "the peer's id\n{out}");
        assert_eq!(entry["duplicates"].as_u64(), Some(0), "duplicates\n{out}");
        assert_eq!(entry["malformed"].as_u64(), Some(0), "malformed\n{out}");
        // On one machine the pair punches at once: the relay carries the first messages and
        // the direct path may take over; every message is counted on exactly one of them.
        assert!(
            entry["path"] == "relay" || entry["path"] == "direct",
            "path\n{out}"
        );
        assert_eq!(
            entry["relay_received"].as_u64().unwrap_or(0)
                + entry["direct_received"].as_u64().unwrap_or(0),
            entry["received"].as_u64().unwrap_or(u64::MAX),
            "every message arrived on one path\n{out}"
        );
        assert!(entry["rtt_ms"].as_f64().is_some(), "rtt_ms\n{out}");
        entry
    }
}

/// Runs two probes in one room with `extra` arguments; returns both runs with their
/// host ids. When `room_listing` is set, also checks that `peergroup rooms` shows the
/// room with both probes in it while they run.
fn run_pair(
    server: &Server,
    room: &str,
    extra: &[&str],
    room_listing: bool,
) -> [(ProbeRun, u64); 2] {
    let mut a = probe(server, room, "probe-a", extra);
    let mut b = probe(server, room, "probe-b", extra);

    if room_listing {
        let wanted = format!("{room}  2 members");
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut last = None;
        loop {
            let mut command = Command::new(&binaries().client);
            command.arg("rooms").args(server.args());
            let output = Proc::spawn(command).wait();
            assert_eq!(
                output.status.and_then(|s| s.code()),
                Some(0),
                "peergroup rooms succeeds\n{output}"
            );
            if output.stdout.lines().any(|line| line == wanted) {
                break;
            }
            assert!(
                Instant::now() < deadline && a.running() && b.running(),
                "`peergroup rooms` never listed {wanted:?} while the probes ran; last:\n{}",
                last.map(|o: Output| o.to_string()).unwrap_or_default()
            );
            last = Some(output);
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    let a = ProbeRun::new(a.wait());
    let b = ProbeRun::new(b.wait());
    let (host_a, host_b) = (a.host(), b.host());
    assert_ne!(host_a, host_b);
    [(a, host_b), (b, host_a)]
}

#[test]
fn two_reliable_probes_lose_nothing_across_relay_and_direct() {
    let server = Server::start("reliable");
    let room = format!("e2e-reliable-{}", std::process::id());
    let args = [
        "--count",
        "200",
        "--rate",
        "200",
        "--duration",
        "3",
        "--expect-peers",
        "1",
        "--delivery",
        "reliable",
    ];
    for (run, peer) in run_pair(&server, &room, &args, true) {
        let entry = run.common_checks(peer, 200);
        let out = &run.output;
        for (field, value) in [
            ("received", 200),
            ("lost", 0),
            ("duplicates", 0),
            ("out_of_order", 0),
        ] {
            assert_eq!(entry[field].as_u64(), Some(value), "{field}\n{out}");
        }
        assert!(entry["latency_p50_us"].as_u64().is_some(), "latency\n{out}");
        assert!(entry["latency_p99_us"].as_u64() >= entry["latency_p50_us"].as_u64());
    }
}

#[test]
fn two_unreliable_probes_never_duplicate() {
    let server = Server::start("unreliable");
    let room = format!("e2e-unreliable-{}", std::process::id());
    let args = [
        "--count",
        "200",
        "--rate",
        "200",
        "--duration",
        "3",
        "--expect-peers",
        "1",
        "--delivery",
        "unreliable",
    ];
    for (run, peer) in run_pair(&server, &room, &args, false) {
        let entry = run.common_checks(peer, 200);
        let out = &run.output;
        let received = entry["received"].as_u64().expect("received");
        assert!(received > 0, "something arrived\n{out}");
        assert!(received <= 200, "no more than was sent\n{out}");
        assert_eq!(
            entry["lost"].as_u64(),
            Some(200 - received),
            "lost = sent - received without duplicates\n{out}"
        );
    }
}

/// Runs a pair of probes with `--delivery mode` (200 messages at 200 per second plus
/// `extra`) on a server of its own; returns each run with its entry for the other probe,
/// after the checks every run must pass (which include a successful exit: the probe's
/// own checks of the mode held).
fn run_mode(mode: &str, extra: &[&str]) -> Vec<(ProbeRun, u64)> {
    let server = Server::start(mode);
    let room = format!("e2e-{mode}-{}", std::process::id());
    let mut args = vec![
        "--count",
        "200",
        "--rate",
        "200",
        "--duration",
        "3",
        "--expect-peers",
        "1",
        "--delivery",
        mode,
    ];
    args.extend_from_slice(extra);
    let runs = run_pair(&server, &room, &args, false);
    for (run, peer) in &runs {
        run.common_checks(*peer, 200);
    }
    runs.into_iter().collect()
}

/// The summary's entry for the one peer (after `common_checks`).
fn entry(run: &ProbeRun) -> &Value {
    &run.summary()["peers"][0]
}

#[test]
fn two_unordered_probes_get_every_message_once() {
    for (run, _) in run_mode("unordered", &[]) {
        let (entry, out) = (entry(&run), &run.output);
        for (field, value) in [("received", 200), ("lost", 0), ("duplicates", 0)] {
            assert_eq!(entry[field].as_u64(), Some(value), "{field}\n{out}");
        }
        assert!(entry.get("latest").is_none(), "no latest figures\n{out}");
    }
}

#[test]
fn two_sequenced_probes_never_go_back() {
    for (run, _) in run_mode("sequenced", &[]) {
        let (entry, out) = (entry(&run), &run.output);
        assert_eq!(
            entry["out_of_order"].as_u64(),
            Some(0),
            "out_of_order\n{out}"
        );
        assert_eq!(entry["duplicates"].as_u64(), Some(0), "duplicates\n{out}");
        let received = entry["received"].as_u64().expect("received");
        assert!(received > 0 && received <= 200, "received\n{out}");
        assert_eq!(
            entry["lost"].as_u64(),
            Some(200 - received),
            "loss is allowed and counted\n{out}"
        );
        assert!(entry.get("latest").is_none(), "no latest figures\n{out}");
    }
}

#[test]
fn two_latest_probes_end_every_key_on_its_last_value() {
    for (run, _) in run_mode("latest", &["--keys", "8"]) {
        let (entry, out) = (entry(&run), &run.output);
        let latest = &entry["latest"];
        assert!(latest.is_object(), "latest figures\n{out}");
        assert_eq!(latest["keys"].as_u64(), Some(8), "keys\n{out}");
        assert_eq!(latest["sent"].as_u64(), Some(200), "sent\n{out}");
        assert_eq!(
            latest["backwards"].as_u64(),
            Some(0),
            "no key went back\n{out}"
        );
        assert_eq!(
            latest["stale_keys"].as_u64(),
            Some(0),
            "every key ended on its last value\n{out}"
        );
        // Intermediate values may be superseded: at least one per key arrives, and what
        // did not arrive is what `lost` counts.
        let delivered = latest["delivered"].as_u64().expect("delivered");
        assert!((8..=200).contains(&delivered), "delivered\n{out}");
        assert_eq!(entry["lost"].as_u64(), Some(200 - delivered), "lost\n{out}");
        assert_eq!(
            entry["received"].as_u64(),
            Some(delivered),
            "received\n{out}"
        );
    }
}

// ---- chat -------------------------------------------------------------------------------

/// An interactive `peergroup chat` in `room` as `name`.
fn chat(server: &Server, room: &str, name: &str) -> Interactive {
    let mut command = Command::new(&binaries().client);
    command
        .arg("chat")
        .args(server.args())
        .args(["--room", room, "--name", name]);
    Interactive::spawn(command)
}

#[test]
fn chat_shows_each_members_lines_under_that_members_name() {
    let server = Server::start("chat");
    let mut alice = chat(&server, "tavern", "alice");
    alice.expect("* joined tavern as alice");
    let mut bob = chat(&server, "tavern", "bob");
    bob.expect("* joined tavern as bob with alice");
    alice.expect("* bob joined");

    alice.type_line("hello from alice");
    let line = bob.expect("hello from alice");
    assert!(line.starts_with("[alice via "), "{line:?}");
    bob.type_line("hi alice");
    let line = alice.expect("hi alice");
    assert!(line.starts_with("[bob via "), "{line:?}");

    alice.close_stdin();
    assert_eq!(alice.exit_code(), Some(0));
    bob.expect("* alice left");
    bob.close_stdin();
    assert_eq!(bob.exit_code(), Some(0));
}
