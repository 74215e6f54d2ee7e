//! `--demo`: alice, bob and carol, scripted, with the server in this process.
//!
//! Each member runs the same [`Chat`] as the terminal, fed typed lines instead of stdin.
//! The script waits (each wait bounded) for what members should see before its next
//! step, then counts what was delivered: every line must reach every member that was
//! in its room throughout, under the name of the member who typed it.

use crate::client::{self, Chat, Shown};
use crate::common::{self, Network};
use crate::protocol::Line;
use crate::server;
use peergroup::client::{Client, Delivery, Target};
use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The whole run stops here, finished or not.
const LIMIT: Duration = Duration::from_secs(30);
/// How long one step waits for what it expects.
const STEP: Duration = Duration::from_secs(5);

struct Member {
    name: &'static str,
    client: Client,
    input: mpsc::Sender<String>,
    seen: Arc<Mutex<Vec<Shown>>>,
    task: JoinHandle<()>,
}

/// A line or whisper as a member got it.
struct Received {
    by: &'static str,
    from: String,
    text: String,
    whisper: bool,
    hidden: bool,
}

/// A line a member sent and who should get it.
struct Sent {
    text: String,
    to: Vec<&'static str>,
}

struct Script {
    members: Vec<Member>,
    sent: Vec<Sent>,
    /// What the lobby's history should hold when carol joins.
    lobby: Vec<String>,
}

pub async fn run(network: &Network) -> ExitCode {
    // A fresh history file, removed afterwards.
    let dir = std::env::temp_dir().join(format!("peergroup-chat-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let outcome = match std::fs::create_dir_all(&dir) {
        Ok(()) => demo(network, &dir.join("history.db")).await,
        Err(error) => Err(error.into()),
    };
    let _ = std::fs::remove_dir_all(&dir);
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("chat demo: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn demo(network: &Network, db: &Path) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let running = server::start(network, db).await?;
    let mut script = Script {
        members: Vec::new(),
        sent: Vec::new(),
        lobby: Vec::new(),
    };
    for name in ["alice", "bob", "carol"] {
        let (client, events) =
            Client::connect(common::client_config(running.addr, &running.trust, name)).await?;
        let (input, lines) = mpsc::channel(16);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let chat = Chat::new(client.clone());
        let task = tokio::spawn(client::drive(chat, events, lines, move |shown| {
            println!(
                "  {name:>5} | {}",
                shown.to_string().replace('\n', "\n        | ")
            );
            log.lock().unwrap().push(shown);
        }));
        script.members.push(Member {
            name,
            client,
            input,
            seen,
            task,
        });
    }

    let played = match tokio::time::timeout(LIMIT, scenario(&mut script)).await {
        Ok(played) => played,
        Err(_) => Err(format!("the demo ran past {LIMIT:?}")),
    };

    // Members still connected quit; the server goes after them.
    for member in &script.members {
        let _ = member.input.send("/quit".into()).await;
    }
    for member in &mut script.members {
        let _ = tokio::time::timeout(STEP, &mut member.task).await;
    }
    running.server.shutdown();
    let _ = tokio::time::timeout(STEP, running.app).await;
    Ok(script.summary(played))
}

async fn scenario(s: &mut Script) -> Result<(), String> {
    println!("alice and bob join the lobby and talk");
    s.typed("alice", "/join lobby").await;
    s.wait("alice in the lobby", |s| s.joined("alice", "lobby"))
        .await?;
    s.typed("bob", "/join lobby").await;
    s.wait("bob in the lobby, alice sees him", |s| {
        s.joined("bob", "lobby") && s.saw_join("alice", "lobby", "bob")
    })
    .await?;
    // Each answers once the other's line has arrived, as people do.
    for (alice, bob) in [
        ("hi bob", "hey alice"),
        ("seen carol?", "not yet"),
        ("ok", "ok"),
    ] {
        s.say("alice", alice, &["bob"]).await;
        s.delivered().await;
        s.say("bob", bob, &["alice"]).await;
        s.delivered().await;
    }
    s.lobby = s.sent.iter().map(|line| line.text.clone()).collect();

    println!("carol, in no room, whispers to alice: the server forwards it");
    s.whisper("carol", "alice", "are you in the lobby?").await;
    s.delivered().await;

    println!("carol joins the lobby late and gets its history");
    s.typed("carol", "/join lobby").await;
    s.wait("carol's history, and alice and bob see her join", |s| {
        s.history("carol").is_some()
            && s.saw_join("alice", "lobby", "carol")
            && s.saw_join("bob", "lobby", "carol")
    })
    .await?;
    // The server stores lines in the order they reach it: each member's in the order
    // said, but a reply that went direct may overtake, on its way to the server, the
    // line it answers.
    let history = s.history("carol").unwrap_or_default();
    let by = |lines: &[String], name: &str| -> Vec<String> {
        let mine = lines
            .iter()
            .filter(|text| text.starts_with(&format!("{name}#")));
        mine.cloned().collect()
    };
    if history.len() != s.lobby.len()
        || ["alice", "bob"]
            .iter()
            .any(|name| by(&history, name) != by(&s.lobby, name))
    {
        return Err("carol's history is not what was said in the lobby".into());
    }
    s.say("carol", "hello both", &["alice", "bob"]).await;

    println!("alice and bob whisper: they share the lobby, so it goes peer to peer");
    s.whisper("alice", "bob", "carol made it").await;
    s.whisper("bob", "alice", "nice").await;
    s.delivered().await;

    println!("alice invites bob to her party; carol does not hear what is said there");
    s.typed("alice", "/invite bob").await;
    s.wait("alice and bob in the party", |s| {
        s.joined("alice", "party_alice") && s.joined("bob", "party_alice")
    })
    .await?;
    for name in ["alice", "bob"] {
        s.typed(name, "/join party_alice").await; // talk there now
    }
    s.say("alice", "carol's birthday on friday?", &["bob"])
        .await;
    s.say("bob", "I'll bring cake", &["alice"]).await;
    s.delivered().await;
    for name in ["alice", "bob"] {
        s.typed(name, "/join lobby").await;
    }

    println!("carol says a banned word: the server mutes her");
    s.say("carol", "what the frak", &["alice", "bob"]).await;
    s.wait("everyone told carol is muted", |s| {
        let muted = |shown: &Shown| matches!(shown, Shown::Muted { name } if name == "carol");
        ["alice", "bob", "carol"]
            .iter()
            .all(|who| s.saw(who, muted))
    })
    .await?;

    println!("carol's client ignores the mute and keeps talking: members hide her lines,");
    println!("and once the grace for lines in flight is over, the server kicks her");
    // A modified client: the chat client itself refuses to send while muted.
    let carol = s.member("carol").client.clone();
    let lobby = carol
        .groups()
        .first()
        .copied()
        .ok_or("carol is in no room")?;
    let kicked = |shown: &Shown| matches!(shown, Shown::Disconnected { kicked: true, .. });
    let deadline = tokio::time::Instant::now() + STEP;
    for n in 100.. {
        if s.saw("carol", kicked) {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err("carol was not kicked".into());
        }
        let line = Line::Say(format!("carol#{n} you can't mute me"));
        let _ = carol
            .send_message(Target::Group(lobby), &line, Delivery::ReliableOrdered)
            .await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    s.wait("alice and bob see carol go", |s| {
        let left =
            |shown: &Shown| matches!(shown, Shown::MemberLeft { name, .. } if name == "carol");
        s.saw("alice", left) && s.saw("bob", left)
    })
    .await?;

    println!("bob leaves the lobby; alice asks who is left");
    s.typed("bob", "/leave lobby").await;
    s.wait("bob gone from the lobby", |s| {
        let left = |shown: &Shown| matches!(shown, Shown::MemberLeft { name, .. } if name == "bob");
        s.saw("bob", |shown| matches!(shown, Shown::Left { .. })) && s.saw("alice", left)
    })
    .await?;
    s.typed("alice", "/who").await;
    s.wait("alice alone in the lobby", |s| {
        s.saw(
            "alice",
            |shown| matches!(shown, Shown::Who { names, .. } if names == &["alice"]),
        )
    })
    .await
}

impl Script {
    fn member(&self, name: &str) -> &Member {
        self.members
            .iter()
            .find(|m| m.name == name)
            .expect("a scripted member")
    }

    async fn typed(&self, name: &str, line: &str) {
        let _ = self.member(name).input.send(line.into()).await;
    }

    /// Says `words` in `name`'s current room, signed so the count can check the author.
    async fn say(&mut self, name: &'static str, words: &str, to: &[&'static str]) {
        let text = format!("{name}#{} {words}", self.sent.len());
        self.typed(name, &text).await;
        self.sent.push(Sent {
            text,
            to: to.to_vec(),
        });
    }

    async fn whisper(&mut self, name: &'static str, to: &'static str, words: &str) {
        let text = format!("{name}#{} {words}", self.sent.len());
        self.typed(name, &format!("/w {to} {text}")).await;
        self.sent.push(Sent { text, to: vec![to] });
    }

    /// Waits until `done` holds, at most [`STEP`].
    async fn wait(&self, what: &str, done: impl Fn(&Script) -> bool) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + STEP;
        while !done(self) {
            if tokio::time::Instant::now() >= deadline {
                return Err(format!("gave up waiting for: {what}"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// Waits until every line sent so far has arrived, or [`STEP`] has passed (what is
    /// missing then is counted as lost).
    async fn delivered(&self) {
        let _ = self.wait("every line", |s| s.lost() == 0).await;
    }

    fn saw(&self, name: &str, what: impl Fn(&Shown) -> bool) -> bool {
        self.member(name).seen.lock().unwrap().iter().any(what)
    }

    fn joined(&self, name: &str, room: &str) -> bool {
        self.saw(
            name,
            |shown| matches!(shown, Shown::Joined { room: r, .. } if r == room),
        )
    }

    fn saw_join(&self, name: &str, room: &str, who: &str) -> bool {
        self.saw(name, |shown| {
            matches!(shown, Shown::MemberJoined { room: r, name } if r == room && name == who)
        })
    }

    /// The texts of the history `name` was sent, if any.
    fn history(&self, name: &str) -> Option<Vec<String>> {
        let seen = self.member(name).seen.lock().unwrap();
        seen.iter().find_map(|shown| match shown {
            Shown::History { lines, .. } => Some(lines.iter().map(|l| l.text.clone()).collect()),
            _ => None,
        })
    }

    /// Every line and whisper each member got, shown or hidden (from a muted host).
    fn received(&self) -> Vec<Received> {
        let mut received = Vec::new();
        for member in &self.members {
            for shown in member.seen.lock().unwrap().iter() {
                let (from, text, whisper, hidden) = match shown {
                    Shown::Line { from, text, .. } => (from, text, false, false),
                    Shown::Whisper { from, text, .. } => (from, text, true, false),
                    Shown::Hidden { from, text } => (from, text, false, true),
                    _ => continue,
                };
                received.push(Received {
                    by: member.name,
                    from: from.clone(),
                    text: text.clone(),
                    whisper,
                    hidden,
                });
            }
        }
        received
    }

    /// Whether `line` was meant for `member`.
    fn owed(&self, member: &str, text: &str) -> bool {
        self.sent
            .iter()
            .any(|line| line.text == text && line.to.contains(&member))
    }

    /// Deliveries owed but not made. A line hidden because its author was muted
    /// meanwhile was delivered: hiding it is the member's choice.
    fn lost(&self) -> usize {
        let received = self.received();
        let got =
            |member: &str, text: &str| received.iter().any(|r| r.by == member && r.text == text);
        let owed = self
            .sent
            .iter()
            .flat_map(|line| line.to.iter().map(move |m| (*m, line)));
        owed.filter(|(member, line)| !got(member, &line.text))
            .count()
    }

    fn summary(&self, played: Result<(), String>) -> ExitCode {
        // Deliveries of the lines sent (carol's lines after her mute are not among them).
        let all = self.received();
        let received: Vec<_> = all.iter().filter(|r| self.owed(r.by, &r.text)).collect();
        // Every text starts with its author's name, as typed: it must match the sender
        // peergroup stamped (or, for history and forwarded whispers, the server wrote).
        let author = |text: &str| text.split('#').next().unwrap_or_default().to_owned();
        let mut wrong_sender = all.iter().filter(|r| r.from != author(&r.text)).count();
        let mut history_replayed = 0;
        for member in &self.members {
            for shown in member.seen.lock().unwrap().iter() {
                if let Shown::History { lines, .. } = shown {
                    history_replayed += lines.len();
                    wrong_sender += lines.iter().filter(|l| l.name != author(&l.text)).count();
                }
            }
        }
        // Lines shown to a member they were not meant for (a party line at carol).
        let stray = all
            .iter()
            .filter(|r| !r.hidden && !self.owed(r.by, &r.text))
            .count();
        let kicked = self
            .members
            .iter()
            .filter(|m| {
                let seen = m.seen.lock().unwrap();
                seen.iter()
                    .any(|s| matches!(s, Shown::Disconnected { kicked: true, .. }))
            })
            .count();
        let whispers = received.iter().filter(|r| r.whisper).count();
        let lost = self.lost();

        let mut failures = Vec::new();
        if let Err(error) = played {
            failures.push(error);
        }
        for (count, what) in [
            (lost, "lost"),
            (wrong_sender, "under the wrong sender"),
            (stray, "delivered to a member outside the room"),
        ] {
            if count > 0 {
                failures.push(format!("{count} lines {what}"));
            }
        }
        if kicked != 1 || whispers == 0 || history_replayed == 0 {
            failures.push("the scenario did not play out".into());
        }
        for failure in &failures {
            eprintln!("chat demo: {failure}");
        }
        let summary = serde_json::json!({
            "example": "chat",
            "messages_sent": self.sent.len(),
            "messages_received": received.len(),
            "history_replayed": history_replayed,
            "whispers": whispers,
            "kicked": kicked,
            "wrong_sender": wrong_sender,
            "lost": lost,
        });
        println!("{summary}");
        if failures.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    }
}
