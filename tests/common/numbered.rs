//! Numbered reliable message streams for the resume and fallback tests: a sender of
//! `0..count`, big-endian `u32` payloads, and a reader that collects the numbers in
//! arrival order so a test can assert exactly once and in order.

use peergroup_client::{Client, ClientEvent, ClientEvents, Delivery, Target};
use peergroup_protocol::HostId;
use std::time::Duration;

/// What one side saw: the numbers of the messages from its peer, in order, and the
/// events that are not counted messages.
#[derive(Debug, Default)]
pub struct Seen {
    pub numbers: Vec<u32>,
    pub other: Vec<ClientEvent>,
}

/// Which messages [`read_numbered`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Messages {
    /// Every message (a test that sends only reliable ones).
    All,
    /// Reliable ones; unreliable ones are kept with the other events.
    Reliable,
}

/// Reads `events` until `count` counted messages arrived, keeping every other event;
/// panics on a 30 s stall or a disconnect.
pub async fn read_numbered(events: &mut ClientEvents, count: usize, which: Messages) -> Seen {
    let mut seen = Seen::default();
    while seen.numbers.len() < count {
        let event = tokio::time::timeout(Duration::from_secs(30), events.next())
            .await
            .unwrap_or_else(|_| panic!("stalled after {} messages: {seen:?}", seen.numbers.len()))
            .expect("events ended");
        match event {
            ClientEvent::Message {
                payload, delivery, ..
            } if which == Messages::All || !delivery.is_unreliable() => {
                seen.numbers
                    .push(u32::from_be_bytes(payload[..4].try_into().unwrap()));
            }
            ClientEvent::Disconnected { .. } => panic!("disconnected: {event:?} after {seen:?}"),
            other => seen.other.push(other),
        }
    }
    seen
}

/// Sends `count` numbered reliable messages to `to`, a few milliseconds apart.
pub fn send_numbered(client: Client, to: HostId, count: u32) -> tokio::task::JoinHandle<Client> {
    tokio::spawn(async move {
        for n in 0..count {
            client
                .send(
                    Target::Host(to),
                    n.to_be_bytes().to_vec(),
                    Delivery::ReliableOrdered,
                )
                .await
                .expect("send");
            if n % 10 == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        client
    })
}
