//! The `peergroup-server` and `peergroup` binaries, for tests that run them as processes.
//!
//! The binaries belong to other packages, so Cargo gives the root package's tests no
//! `CARGO_BIN_EXE_*` for them. They are taken from the directory above the test
//! executable (`target/<profile>/`), after one `cargo build -p peergroup-server -p
//! peergroup-client --bins` per test process so they are never stale. Set
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
                "{} is missing; build it with `cargo build -p peergroup-server -p \
                 peergroup-client --bins` (same profile and target directory as the tests)",
                path.display()
            );
        }
        binaries
    })
}

/// Builds both binaries into the profile directory this test runs from.
fn build(dir: &Path) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command.current_dir(env!("CARGO_MANIFEST_DIR")).args([
        "build",
        "--quiet",
        "-p",
        "peergroup-server",
        "-p",
        "peergroup-client",
        "--bins",
    ]);
    match dir.file_name().and_then(|name| name.to_str()) {
        Some("debug") | None => {}
        Some(profile) => {
            command.args(["--profile", profile]);
        }
    }
    let status = command.status().expect("running cargo build");
    assert!(
        status.success(),
        "cargo build of the binaries failed: {status}"
    );
}
