//! The walkthrough's clients. Each tells the server application what it sees (every
//! membership notice, data change, message and path change, as a typed [`Seen`] message),
//! so the walkthrough can check what clients were told whether they run in its process or
//! on another machine; and it carries out the server's [`Command`]s.

use peergroup::client::{
    decode, Client, ClientEvent, Delivery, DisconnectReason, GroupId, HostId, Path, SendError,
    Target,
};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// What a client saw, reported to the server application.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Seen {
    MemberJoined {
        group: GroupId,
        member: HostId,
        member_data: String,
        /// The group's data: on this client's own join notice only.
        group_data: Option<String>,
        join_message: String,
    },
    MemberLeft {
        group: GroupId,
        member: HostId,
    },
    HostDataChanged {
        host: HostId,
        data: String,
    },
    GroupDataChanged {
        group: GroupId,
        data: String,
    },
    Message {
        from: HostId,
        text: String,
        direct: bool,
    },
    PathChanged {
        peer: HostId,
        direct: bool,
    },
}

/// What the server application asks of a client.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Command {
    /// Show this text (the client reports it as a message from the server).
    Say(String),
    /// Send `text` to host `to`.
    Send { to: HostId, text: String },
}

/// Runs one client until its connection ends; returns why it ended. `echo` prints what
/// it sees too.
pub async fn run(
    addr: SocketAddr,
    trust: &peergroup::client::ServerTrust,
    name: &str,
    echo: bool,
) -> Result<DisconnectReason, String> {
    // The login is the name; the server's auth hook makes it this client's host data.
    let config = crate::common::client_config(addr, trust, name);
    let (client, mut events) = Client::connect(config)
        .await
        .map_err(|error| format!("{name}: {error}"))?;
    if echo {
        println!("{name}: connected as {}", client.host_id());
    }
    let text = |data: &[u8]| String::from_utf8_lossy(data).into_owned();
    while let Some(event) = events.next().await {
        let seen = match event {
            ClientEvent::Message { from, payload, .. } if from == HostId::SERVER => {
                match decode::<Command>(&payload) {
                    Ok(Command::Say(text)) => Seen::Message {
                        from,
                        text,
                        direct: false,
                    },
                    Ok(Command::Send { to, text }) => {
                        let sent = client
                            .send_message(Target::Host(to), &text, Delivery::ReliableOrdered)
                            .await;
                        if let Err(error) = sent {
                            eprintln!("{name}: sending to {to}: {error}");
                        }
                        continue;
                    }
                    Err(error) => {
                        eprintln!("{name}: unreadable command: {error}");
                        continue;
                    }
                }
            }
            ClientEvent::Message {
                from,
                payload,
                path,
                ..
            } => Seen::Message {
                from,
                text: decode::<String>(&payload).unwrap_or_else(|e| format!("({e})")),
                direct: path == Path::Direct,
            },
            ClientEvent::MemberJoined {
                group,
                member,
                join_message,
                member_data,
                group_data,
                ..
            } => Seen::MemberJoined {
                group,
                member,
                member_data: text(&member_data),
                group_data: group_data.as_deref().map(text),
                join_message: text(&join_message),
            },
            ClientEvent::MemberLeft { group, member, .. } => Seen::MemberLeft { group, member },
            ClientEvent::HostDataChanged { host, data } => Seen::HostDataChanged {
                host,
                data: text(&data),
            },
            ClientEvent::GroupDataChanged { group, data } => Seen::GroupDataChanged {
                group,
                data: text(&data),
            },
            ClientEvent::PathChanged { peer, path, .. } => Seen::PathChanged {
                peer,
                direct: path == peergroup::client::PairPath::Direct,
            },
            ClientEvent::Disconnected { reason } => {
                if echo {
                    println!("{name}: disconnected: {reason}");
                }
                return Ok(reason);
            }
            _ => continue,
        };
        if echo {
            println!("{name} sees {seen:?}");
        }
        match client
            .send_message(Target::Server, &seen, Delivery::ReliableOrdered)
            .await
        {
            // Gone: `Disconnected` is the next event.
            Ok(()) | Err(SendError::Disconnected) => {}
            Err(error) => eprintln!("{name}: reporting {seen:?}: {error}"),
        }
    }
    Err(format!(
        "{name}: the event stream ended without Disconnected"
    ))
}
