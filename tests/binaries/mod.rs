//! The `peergroup-server` and `peergroup` binaries, for tests that run them as processes.
//!
//! The binaries belong to other packages, so Cargo gives the root package's tests no
//! `CARGO_BIN_EXE_*` for them. They are taken from the directory above the test
//! executable (`target/<profile>/`), after one `cargo build -p peergroup-cli --bins` per
//! test process so they are never stale. Set
//! `PEERGROUP_E2E_NO_BUILD=1` to skip that build and use whatever is there.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Where the two binaries are.
pub struct Binaries {
    /// `peergroup-server`.
    pub server: PathBuf,
    /// `peergroup` (the CLI with `probe`).
    pub client: PathBuf,
}

/// `target/<profile>/`: the parent of the `deps/` directory holding this test.
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let deps = exe.parent().expect("the test executable's directory");
    deps.parent()
        .expect("the directory above deps/")
        .to_path_buf()
}

/// The binaries, built once per test process.
pub fn binaries() -> &'static Binaries {
    static BINARIES: OnceLock<Binaries> = OnceLock::new();
    BINARIES.get_or_init(|| {
        let dir = bin_dir();
        let exe = |name: &str| dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
        let binaries = Binaries {
            server: exe("peergroup-server"),
            client: exe("peergroup"),
        };
        if std::env::var_os("PEERGROUP_E2E_NO_BUILD").is_none() {
            build(&dir);
        }
        for path in [&binaries.server, &binaries.client] {
            assert!(
                path.exists(),
                "{} is missing; build it with `cargo build -p peergroup-cli --bins` (same \
                 profile and target directory as the tests)",
                path.display()
            );
        }
        binaries
    })
}

/// Builds both binaries into the profile directory this test runs from.
fn build(dir: &Path) {
    cargo_build(dir, &["-p", "peergroup-cli", "--bins"]);
}

/// `cargo build --quiet ARGS` into the profile directory `dir` this test runs from.
fn cargo_build(dir: &Path, args: &[&str]) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["build", "--quiet"])
        .args(args);
    match dir.file_name().and_then(|name| name.to_str()) {
        Some("debug") | None => {}
        Some(profile) => {
            command.args(["--profile", profile]);
        }
    }
    let status = command.status().expect("running cargo build");
    assert!(status.success(), "cargo build {args:?} failed: {status}");
}

/// The compiled example `name` (`target/<profile>/examples/name`), after one `cargo
/// build --examples` per test process.
pub fn example(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let dir = bin_dir();
    BUILT.get_or_init(|| {
        if std::env::var_os("PEERGROUP_E2E_NO_BUILD").is_some() {
            return;
        }
        cargo_build(&dir, &["-p", "peergroup", "--examples"]);
    });
    let path = dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(path.exists(), "{} is missing", path.display());
    path
}

/// What a finished `--demo` run printed.
pub struct Demo {
    /// The summary: the JSON object on the last line of stdout.
    pub summary: serde_json::Value,
    /// All of stdout.
    pub stdout: String,
    /// All of stderr.
    pub stderr: String,
    /// The exit code (`None` if it was killed by a signal).
    pub code: Option<i32>,
}

/// Runs example `name` with `args`, killing it (and failing) after `limit`; returns its
/// summary line parsed as JSON.
pub fn run_demo(name: &str, args: &[&str], limit: std::time::Duration) -> Demo {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = Command::new(example(name))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting example {name}: {e}"));
    let read = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = read(Box::new(child.stdout.take().expect("stdout")));
    let stderr = read(Box::new(child.stderr.take().expect("stderr")));
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for the example") {
            break Some(status);
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
    let Some(status) = status else {
        panic!(
            "example {name} ran past {limit:?}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
        );
    };
    let last = stdout.lines().last().unwrap_or_default();
    let summary = serde_json::from_str(last).unwrap_or_else(|e| {
        panic!("example {name}: last line is not JSON ({e}): {last:?}\n--- stderr ---\n{stderr}")
    });
    Demo {
        summary,
        stdout,
        stderr,
        code: status.code(),
    }
}

/// A running process with piped stdin and its stdout read line by line on a thread of its
/// own (so it never blocks on a full pipe); killed and reaped on drop, also when the test
/// panics.
pub struct Interactive {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

/// How long [`Interactive`] waits for any one thing.
pub const INTERACTIVE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

impl Interactive {
    /// Starts `command` (its stderr is inherited, so it shows with a failing test).
    pub fn spawn(mut command: Command) -> Self {
        use std::io::BufRead;
        use std::process::Stdio;
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {command:?}: {e}"));
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            stdin: child.stdin.take(),
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The next line of output, if one comes within `wait`.
    pub fn next_line(&mut self, wait: std::time::Duration) -> Option<String> {
        let line = self.lines.recv_timeout(wait).ok()?;
        self.seen.push(line.clone());
        Some(line)
    }

    /// Waits for a line containing `text` and returns it; panics with everything seen
    /// after [`INTERACTIVE_WAIT`].
    pub fn expect(&mut self, text: &str) -> String {
        let deadline = std::time::Instant::now() + INTERACTIVE_WAIT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.next_line(left) {
                Some(line) if line.contains(text) => return line,
                Some(_) => {}
                None => panic!("no line with {text:?}; got:\n{}", self.output()),
            }
        }
    }

    /// The `ADDR` and `PATH` of a `listening on ADDR cert PATH` line (what `--server-only`
    /// prints).
    pub fn listening(&mut self) -> (String, String) {
        let line = self.expect("listening on ");
        let words: Vec<&str> = line.split_whitespace().collect();
        match words[..] {
            ["listening", "on", addr, "cert", cert] => (addr.to_owned(), cert.to_owned()),
            _ => panic!("not an address line: {line:?}"),
        }
    }

    /// Types one line into its stdin.
    pub fn type_line(&mut self, line: &str) {
        use std::io::Write;
        let stdin = self.stdin.as_mut().expect("stdin still open");
        writeln!(stdin, "{line}").expect("typing into stdin");
        stdin.flush().expect("typing into stdin");
    }

    /// Closes its stdin (end of input).
    pub fn close_stdin(&mut self) {
        self.stdin.take();
    }

    /// Waits for it to exit, at most [`INTERACTIVE_WAIT`]; its exit code.
    pub fn exit_code(&mut self) -> Option<i32> {
        let deadline = std::time::Instant::now() + INTERACTIVE_WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for the process") {
                return status.code();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "still running after {INTERACTIVE_WAIT:?}:\n{}",
                self.output()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Every line seen so far, and whatever else has arrived.
    pub fn output(&mut self) -> String {
        self.seen.extend(self.lines.try_iter());
        self.seen.join("\n")
    }
}

impl Drop for Interactive {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
