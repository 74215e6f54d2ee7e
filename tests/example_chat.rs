//! The `chat` example run as a process: its scripted demo, and its split mode (a
//! `--server-only` process with terminal clients typing on stdin).

mod binaries;

use binaries::{example, run_demo, Interactive};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

#[test]
fn chat_demo_delivers_every_line_under_its_authors_name() {
    let demo = run_demo("chat", &["--demo"], Duration::from_secs(60));
    let summary = &demo.summary;
    let context = format!("stdout:\n{}\nstderr:\n{}", demo.stdout, demo.stderr);
    assert_eq!(demo.code, Some(0), "{context}");
    let keys: Vec<&str> = summary
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    let mut expected = [
        "example",
        "messages_sent",
        "messages_received",
        "history_replayed",
        "whispers",
        "kicked",
        "wrong_sender",
        "lost",
    ];
    expected.sort_unstable();
    assert_eq!(keys, expected, "{context}");
    assert_eq!(summary["example"], "chat");
    let count = |key: &str| {
        summary[key]
            .as_u64()
            .unwrap_or_else(|| panic!("{key}: {context}"))
    };
    assert!(count("messages_sent") > 0, "{context}");
    // Every room line reaches every other member, so there are at least as many
    // deliveries as lines.
    assert!(
        count("messages_received") >= count("messages_sent"),
        "{context}"
    );
    assert!(count("history_replayed") > 0, "{context}");
    assert!(count("whispers") > 0, "{context}");
    assert_eq!(count("kicked"), 1, "{context}");
    assert_eq!(count("wrong_sender"), 0, "{context}");
    assert_eq!(count("lost"), 0, "{context}");
    // What the members saw, as a person at a terminal would.
    for line in [
        "carol whispers (via the server): carol#6",
        "* 6 earlier lines in lobby",
        "* carol is muted by the server",
        "(kicked by the server): you kept talking while muted",
    ] {
        assert!(demo.stdout.contains(line), "missing {line:?}\n{context}");
    }
}

#[test]
fn chat_server_only_serves_terminal_clients_and_keeps_history() {
    let dir = TempDir::new();
    let db = dir.0.join("history.db");
    let mut server = chat(&["--server-only", "--db", db.to_str().unwrap()]);
    let (addr, cert) = server.listening();
    let client = |name: &str| chat(&["--connect", &addr, "--server-cert", &cert, "--name", name]);

    let mut x = client("x");
    x.expect("* connected as x");
    x.type_line("/join r");
    x.expect("* you joined r");
    x.type_line("hello from x");
    x.type_line("/who");
    x.expect("* in r: x");
    x.type_line("/quit");
    assert_eq!(x.exit_code(), Some(0), "{}", x.output());

    // The room emptied and went, but its history stayed in the database.
    let mut y = client("y");
    y.expect("* connected as y");
    y.type_line("/join r");
    y.expect("* 1 earlier lines in r");
    y.expect("] x: hello from x");
    y.type_line("/w x still there?");
    y.expect("* refused: nobody here is called x");
    y.type_line("/quit");
    assert_eq!(y.exit_code(), Some(0), "{}", y.output());
    drop(server);
}

/// A running `chat` example with piped stdin and stdout, killed when dropped.
fn chat(args: &[&str]) -> Interactive {
    let mut command = Command::new(example("chat"));
    command.args(args);
    Interactive::spawn(command)
}

/// A directory of this test process's own, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let dir = std::env::temp_dir().join(format!("peergroup-chat-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
