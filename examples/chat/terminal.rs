//! The interactive client: stdin lines in, what the member sees out.

use crate::client::{self, Chat, HELP};
use crate::common;
use peergroup::client::{Client, ServerTrust};
use std::io::BufRead;
use std::net::SocketAddr;
use tokio::sync::mpsc;

/// Chats on stdin and stdout as `name` until `/quit`, end of input or disconnection.
pub async fn run(
    addr: SocketAddr,
    trust: &ServerTrust,
    name: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let (client, events) = Client::connect(common::client_config(addr, trust, name)).await?;
    println!("* connected as {name} ({}); {HELP}", client.host_id());
    // A plain thread reads stdin: a blocked read there never holds up the exit.
    let (lines, input) = mpsc::channel(16);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if lines.blocking_send(line).is_err() {
                break; // the chat ended
            }
        }
    });
    client::drive(Chat::new(client), events, input, |shown| {
        println!("{shown}")
    })
    .await;
    Ok(())
}
