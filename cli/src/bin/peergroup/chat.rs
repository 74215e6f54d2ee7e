//! `peergroup chat`: an interactive room chat on stdin and stdout.

use crate::common::{self, Failure, ServerArgs};
use peergroup_client::{Client, ClientEvent, Delivery, GroupId, HostId, Target};
use std::collections::HashMap;
use std::io::Write;
use tokio::io::{AsyncBufReadExt, BufReader};

/// Chat in a room: stdin lines go to the room, the room's messages come out on stdout.
///
/// Joins ROOM (creating it, guarded by --password if given, when it does not exist) as
/// NICK, then sends each non-empty line of stdin to every other member. Prints
///
///     [NICK via relay] text        a message (the path: relay, direct or loopback)
///     * NICK joined / * NICK left  membership changes
///
/// End of stdin leaves the room and exits 0. A refused join exits 2 with the reason on
/// stderr; losing the connection exits 1.
#[derive(Debug, Clone, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct ChatArgs {
    #[command(flatten)]
    server: ServerArgs,

    /// The room to join (created on first join).
    #[arg(long, value_name = "NAME")]
    room: String,

    /// How others see you; also the login payload [default: user-<pid>].
    #[arg(long, value_name = "NICK")]
    name: Option<String>,

    /// The room's password (sets it when this join creates the room).
    /// Prefer the PEERGROUP_ROOM_PASSWORD environment variable: other users of the
    /// machine can read a command line (`ps`), not another user's environment.
    #[arg(
        long,
        value_name = "PW",
        env = "PEERGROUP_ROOM_PASSWORD",
        hide_env_values = true
    )]
    password: Option<String>,
}

/// Display names of the room's members.
#[derive(Debug, Default)]
struct Names(HashMap<HostId, String>);

impl Names {
    fn learn(&mut self, host: HostId, name: &[u8]) {
        if !name.is_empty() {
            self.0
                .insert(host, String::from_utf8_lossy(name).into_owned());
        }
    }

    fn of(&self, host: HostId) -> String {
        self.0
            .get(&host)
            .cloned()
            .unwrap_or_else(|| host.to_string())
    }
}

/// What became of one event.
enum Next {
    Continue,
    Stop(Failure),
}

struct Chat {
    client: Client,
    group: GroupId,
    names: Names,
    /// Membership notices are printed only once the join is complete; the ones before
    /// describe who was already there.
    announce: bool,
}

impl Chat {
    fn handle(&mut self, event: ClientEvent) -> Next {
        let me = self.client.host_id();
        match event {
            ClientEvent::MemberJoined {
                group,
                member,
                member_data,
                ..
            } if group == self.group => {
                // The rooms server makes each member's display name its host data, so
                // every notice names the member it is about.
                self.names.learn(member, &member_data);
                if self.announce && member != me && member != HostId::SERVER {
                    say(&format!("* {} joined", self.names.of(member)));
                }
            }
            ClientEvent::MemberLeft { group, member, .. } if group == self.group => {
                if member == me {
                    return Next::Stop(Failure::new("removed from the room by the server"));
                }
                if self.announce && member != HostId::SERVER {
                    say(&format!("* {} left", self.names.of(member)));
                }
            }
            ClientEvent::Message {
                from,
                group,
                payload,
                path,
                ..
            } if from != HostId::SERVER && (group.is_none() || group == Some(self.group)) => {
                say(&format!(
                    "[{} via {}] {}",
                    self.names.of(from),
                    common::path_name(path),
                    String::from_utf8_lossy(&payload)
                ));
            }
            ClientEvent::HostDataChanged { host, data } => self.names.learn(host, &data),
            ClientEvent::SendFailed { to, reason, .. } => {
                eprintln!("* could not deliver to {}: {reason:?}", self.names.of(to));
            }
            ClientEvent::Disconnected { reason } => {
                return Next::Stop(Failure::new(format!("disconnected: {reason}")));
            }
            other => tracing::debug!(?other, "ignored event"),
        }
        Next::Continue
    }
}

fn say(line: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}

/// Runs `peergroup chat`.
///
/// # Errors
/// A [`Failure`]: refused join ([`common::EXIT_REFUSED`]), lost connection.
pub async fn run(args: ChatArgs) -> Result<(), Failure> {
    let name = args.name.clone().unwrap_or_else(common::default_name);
    let (client, mut events) = common::connect(&args.server, &name).await?;
    let mut backlog = Vec::new();
    let joined = common::join(
        &client,
        &mut events,
        &args.room,
        args.password.as_deref(),
        &name,
        &mut backlog,
    )
    .await?;
    let mut chat = Chat {
        client: client.clone(),
        group: joined.group,
        names: Names(joined.members.iter().cloned().collect()),
        announce: false,
    };
    for event in backlog {
        if let Next::Stop(failure) = chat.handle(event) {
            return Err(failure);
        }
    }
    chat.announce = true;
    let others: Vec<String> = joined
        .members
        .iter()
        .filter(|(host, _)| *host != client.host_id())
        .map(|(_, name)| name.clone())
        .collect();
    if others.is_empty() {
        say(&format!(
            "* joined {} as {name}; nobody else is here",
            args.room
        ));
    } else {
        say(&format!(
            "* joined {} as {name} with {}",
            args.room,
            others.join(", ")
        ));
    }

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            line = lines.next_line() => match line {
                Ok(Some(line)) => {
                    if line.is_empty() {
                        continue;
                    }
                    if let Err(error) = client
                        .send(Target::Group(joined.group), line.into_bytes(), Delivery::ReliableOrdered)
                        .await
                    {
                        eprintln!("* not sent: {error}");
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    eprintln!("* reading stdin: {error}");
                    break;
                }
            },
            event = events.next() => {
                let Some(event) = event else {
                    return Err(Failure::new("disconnected"));
                };
                if let Next::Stop(failure) = chat.handle(event) {
                    return Err(failure);
                }
            }
        }
    }
    common::leave(&client, &mut events, &args.room).await;
    client.close().await;
    Ok(())
}
