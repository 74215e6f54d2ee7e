//! Reading both event streams without waiting (`try_next`, as a game loop does once per
//! tick) and as `futures_core::Stream`s, over real QUIC on loopback: the same events in
//! the same order as `next()`, and a clear end.

mod common;

use bytes::Bytes;
use common::*;
use futures_util::StreamExt;
use peergroup_client::{Client, ClientEvent, ClientEvents, Delivery, HostId, Target};
use peergroup_server::{Server, ServerEvent, ServerEvents};
use std::time::Duration;
use tokio::time::Instant;

/// What a game loop sleeps between ticks in these tests (a short frame).
const TICK: Duration = Duration::from_millis(5);

/// Polls `try_next` once per tick until `done` says the collected events are enough.
async fn poll_client_until(
    events: &mut ClientEvents,
    mut done: impl FnMut(&[ClientEvent]) -> bool,
) -> Vec<ClientEvent> {
    let deadline = Instant::now() + WAIT;
    let mut got = Vec::new();
    while !done(&got) {
        assert!(
            Instant::now() < deadline,
            "timed out polling client events; got {got:?}"
        );
        while let Some(event) = events.try_next() {
            got.push(event);
        }
        tokio::time::sleep(TICK).await;
    }
    got
}

fn messages_from(events: &[ClientEvent], sender: HostId) -> Vec<Bytes> {
    events
        .iter()
        .filter_map(|event| match event {
            ClientEvent::Message { from, payload, .. } if *from == sender => Some(payload.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_polled_once_per_tick_sees_every_event_in_order_then_the_end() {
    let (server, _server_events) = start_server().await;
    let (b, mut b_events) = Client::connect(client_config(&server, "b"))
        .await
        .expect("b connects");
    let connected = poll_client_until(&mut b_events, |got| !got.is_empty()).await;
    assert_eq!(
        connected,
        [ClientEvent::Connected {
            host_id: b.host_id()
        }]
    );
    let b_id = b.host_id();
    let (a, mut a_events, a_id) = connect(&server, "a").await;
    let group = server
        .create_group(&[a_id, b_id], relay_only(), "")
        .unwrap();
    next_client_events(&mut a_events, 2).await;

    const COUNT: u32 = 200;
    let sender = tokio::spawn(async move {
        for n in 0..COUNT {
            a.send(
                Target::Group(group),
                n.to_be_bytes().to_vec(),
                Delivery::ReliableOrdered,
            )
            .await
            .unwrap();
        }
        a
    });
    let got = poll_client_until(&mut b_events, |got| {
        messages_from(got, a_id).len() >= COUNT as usize
    })
    .await;
    let _a = sender.await.unwrap();

    // The joins first (b hears each member, itself last), then every message once, in
    // order; nothing else on a relay-only group.
    assert!(
        matches!(&got[0], ClientEvent::MemberJoined { group: g, member, .. } if *g == group && *member == a_id),
        "{:?}",
        got[0]
    );
    assert!(
        matches!(&got[1], ClientEvent::MemberJoined { group: g, member, .. } if *g == group && *member == b_id),
        "{:?}",
        got[1]
    );
    let payloads: Vec<Bytes> = messages_from(&got[2..], a_id);
    let expected: Vec<Bytes> = (0..COUNT)
        .map(|n| Bytes::copy_from_slice(&n.to_be_bytes()))
        .collect();
    assert_eq!(payloads, expected);
    assert_eq!(got.len(), 2 + COUNT as usize, "no other events: {got:?}");
    assert!(!b_events.is_finished());
    assert_eq!(b_events.try_next(), None, "nothing more is queued");

    // The end: `Disconnected` comes out last, and the stream reports it has finished even
    // though the application still holds its `Client`.
    server.disconnect(b_id, "game over").unwrap();
    let got = poll_client_until(&mut b_events, |got| {
        got.iter()
            .any(|e| matches!(e, ClientEvent::Disconnected { .. }))
    })
    .await;
    assert!(
        matches!(got.last(), Some(ClientEvent::Disconnected { .. })),
        "{got:?}"
    );
    assert!(b_events.is_finished());
    assert_eq!(b_events.try_next(), None);
    assert_eq!(
        tokio::time::timeout(WAIT, b_events.next()).await,
        Ok(None),
        "next() ends after Disconnected too"
    );
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_stream_yields_the_same_events_and_ends_after_disconnected() {
    let (server, _server_events) = start_server().await;
    let (a, mut a_events, a_id) = connect(&server, "a").await;
    let (b, mut b_events, b_id) = connect(&server, "b").await;
    let group = server
        .create_group(&[a_id, b_id], relay_only(), "")
        .unwrap();
    next_client_events(&mut a_events, 2).await;

    const COUNT: u8 = 50;
    for n in 0..COUNT {
        a.send(Target::Host(b_id), vec![n], Delivery::ReliableOrdered)
            .await
            .unwrap();
    }
    // Through `StreamExt`: the two joins, then the messages in order.
    let joins: Vec<ClientEvent> = tokio::time::timeout(WAIT, (&mut b_events).take(2).collect())
        .await
        .expect("the joins arrive");
    assert!(joins
        .iter()
        .all(|e| matches!(e, ClientEvent::MemberJoined { group: g, .. } if *g == group)));
    let payloads: Vec<u8> = tokio::time::timeout(
        WAIT,
        (&mut b_events)
            .filter_map(|event| async move {
                match event {
                    ClientEvent::Message { payload, .. } => Some(payload[0]),
                    _ => None,
                }
            })
            .take(COUNT as usize)
            .collect(),
    )
    .await
    .expect("the messages arrive");
    assert_eq!(payloads, (0..COUNT).collect::<Vec<u8>>());

    // Kicked while the application still holds its `Client`: the stream ends right after
    // `Disconnected` (it used to wait for the last handle to go).
    server.disconnect(b_id, "bye").unwrap();
    let rest: Vec<ClientEvent> = tokio::time::timeout(WAIT, (&mut b_events).collect())
        .await
        .expect("the stream ends");
    assert!(
        matches!(rest.last(), Some(ClientEvent::Disconnected { .. })),
        "{rest:?}"
    );
    assert!(b_events.is_finished());
    assert_eq!(StreamExt::next(&mut b_events).await, None, "it stays ended");
    drop((a, b));
}

/// Leaves both kinds of server event queued and unread: lifecycle events
/// (`ClientConnected`, then a `GroupRemoved` queued after everything else) and the
/// client's three messages followed by its `ClientDisconnected` (which never overtakes
/// what that client sent). Returns the client's id.
///
/// Needs a current-thread runtime: there the server task that removes the client from
/// `host_info` queues `ClientDisconnected` before this task can run again.
async fn queue_both_kinds(server: &Server) -> HostId {
    let (a, _a_events, a_id) = connect(server, "a").await;
    for text in ["one", "two", "three"] {
        a.send(Target::Server, text, Delivery::ReliableOrdered)
            .await
            .unwrap();
    }
    // Delivers what is queued before closing.
    a.close().await;
    let deadline = Instant::now() + WAIT;
    while server.host_info(a_id).is_some() {
        assert!(Instant::now() < deadline, "the server never saw a leave");
        tokio::time::sleep(TICK).await;
    }
    // A lifecycle event queued last, to overtake the messages.
    let group = server
        .create_group(&[], peergroup_server::GroupOptions::default(), "")
        .unwrap();
    server.destroy_group(group).unwrap();
    a_id
}

/// The events `queue_both_kinds` leaves, in the order the stream must give them.
fn check_lifecycle_first(got: &[ServerEvent], a_id: HostId) {
    assert_eq!(got.len(), 6, "{got:?}");
    assert!(
        matches!(&got[0], ServerEvent::ClientConnected { host, .. } if *host == a_id),
        "{got:?}"
    );
    assert!(
        matches!(&got[1], ServerEvent::GroupRemoved { .. }),
        "lifecycle events come first: {got:?}"
    );
    let texts: Vec<&[u8]> = got[2..5]
        .iter()
        .map(|event| match event {
            ServerEvent::Message { from, payload, .. } if *from == a_id => payload.as_ref(),
            other => panic!("expected a message from {a_id}, got {other:?}"),
        })
        .collect();
    assert_eq!(texts, [&b"one"[..], b"two", b"three"]);
    assert!(
        matches!(&got[5], ServerEvent::ClientDisconnected { host, .. } if *host == a_id),
        "the disconnect follows the client's messages: {got:?}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn server_try_next_gives_lifecycle_events_first_and_ends_after_shutdown() {
    let (server, mut events) = start_server().await;
    let a_id = queue_both_kinds(&server).await;

    let got: Vec<ServerEvent> = std::iter::from_fn(|| events.try_next()).collect();
    check_lifecycle_first(&got, a_id);
    assert_eq!(events.try_next(), None, "nothing queued now");
    assert!(!events.is_finished(), "the server is still running");

    server.shutdown();
    assert!(events.is_finished());
    assert_eq!(events.try_next(), None);
    assert_eq!(
        tokio::time::timeout(WAIT, events.next()).await,
        Ok(None),
        "next() agrees"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn server_stream_keeps_the_order_and_drains_before_it_ends() {
    let (server, mut events) = start_server().await;
    let a_id = queue_both_kinds(&server).await;

    // Shut down with everything still queued: the stream gives it all, then ends.
    server.shutdown();
    assert!(!events.is_finished(), "events are still queued");
    let got: Vec<ServerEvent> = tokio::time::timeout(WAIT, (&mut events).collect())
        .await
        .expect("the stream ends after shutdown");
    check_lifecycle_first(&got, a_id);
    assert!(events.is_finished());
    assert_eq!(StreamExt::next(&mut events).await, None, "it stays ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_stream_waiting_for_events_wakes_for_each_kind_and_for_shutdown() {
    let (server, events) = start_server().await;
    // A reader parked in the stream, passing on what it gets.
    let (seen, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        let mut events: ServerEvents = events;
        while let Some(event) = StreamExt::next(&mut events).await {
            let _ = seen.send(event);
        }
    });
    let mut next_seen = async || {
        tokio::time::timeout(WAIT, seen_rx.recv())
            .await
            .expect("the waiting reader was woken")
            .expect("the reader is running")
    };

    let (a, _a_events, a_id) = connect(&server, "a").await;
    let connected = next_seen().await;
    assert!(
        matches!(&connected, ServerEvent::ClientConnected { host, .. } if *host == a_id),
        "{connected:?}"
    );
    a.send(Target::Server, "hello", Delivery::ReliableOrdered)
        .await
        .unwrap();
    let message = next_seen().await;
    assert!(
        matches!(&message, ServerEvent::Message { from, payload, .. } if *from == a_id && payload.as_ref() == b"hello"),
        "{message:?}"
    );

    server.shutdown();
    tokio::time::timeout(WAIT, reader)
        .await
        .expect("the waiting stream ends at shutdown")
        .unwrap();
    drop(a);
}
