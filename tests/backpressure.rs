//! Bounded queues, priorities and size limits, end to end over loopback QUIC.
//!
//! - A peer that stops reading fills only the queue to it: `try_send` to it fails with
//!   `QueueFull` while sends to others still go, and what the sender holds stays bounded.
//! - A receiver that stops reading latest-value updates holds one per key at the server,
//!   never a backlog, and when it reads again it gets each key's newest value.
//! - With a backlog at the server, High messages overtake queued Low ones (deficit round
//!   robin, 4:2:1), without starving them.
//! - Reliable messages up to the limit arrive whole; one byte more is refused at the
//!   sender, on both paths.
//! - A sender the server pauses behind a backlogged receiver still has its acks read: its
//!   joins complete while its messages wait.

mod common;

use bytes::Bytes;
use common::*;
use peergroup_client::{ClientEvent, Delivery, Path, Priority, SendError, Target};
use peergroup_protocol::HostId;
use peergroup_server::{AuthHook, GroupOptions};
use std::collections::HashMap;
use std::time::Duration;

/// Waits until both clients of a fresh default group report the direct path.
async fn direct_pair(
    a_events: &mut peergroup_client::ClientEvents,
    b_events: &mut peergroup_client::ClientEvents,
) {
    for events in [a_events, b_events] {
        wait_client(events, |e| match e {
            ClientEvent::PathChanged {
                path: peergroup_client::PairPath::Direct,
                ..
            } => Some(()),
            _ => None,
        })
        .await;
    }
}

/// Waits until `client` knows `peer` (its pair notice arrived), so sends to it are allowed.
async fn until_peer(client: &peergroup_client::Client, peer: HostId) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !client.peers().contains(&peer) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{peer} never became a peer"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A sender and a receiver on the relay; the receiver's event queue holds 4, so while
/// the test does not read its events its client stops reading the network, and what is
/// sent to it piles up at the server. Bind every field: a client dropped with the rest
/// of the struct disconnects.
struct SlowPair {
    a: peergroup_client::Client,
    _a_events: peergroup_client::ClientEvents,
    a_id: HostId,
    _b: peergroup_client::Client,
    b_events: peergroup_client::ClientEvents,
    b_id: HostId,
}

async fn slow_relay_pair(server: &peergroup_server::Server) -> SlowPair {
    let (a, a_events, a_id) = connect(server, "a").await;
    let (b, mut b_events, b_id) = connect_with(server, "b", |c| c.limits.event_queue = 4).await;
    server
        .create_group(&[a_id, b_id], relay_only(), "")
        .unwrap();
    next_client_events(&mut b_events, 2).await;
    until_peer(&a, b_id).await;
    SlowPair {
        a,
        _a_events: a_events,
        a_id,
        _b: b,
        b_events,
        b_id,
    }
}

/// The payloads of the next `n` messages from `from`, skipping other events.
async fn messages_from(
    events: &mut peergroup_client::ClientEvents,
    from: HostId,
    n: usize,
) -> Vec<(Bytes, Delivery)> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let found = wait_client(events, |e| match e {
            ClientEvent::Message {
                from: f,
                payload,
                delivery,
                ..
            } if *f == from => Some((payload.clone(), *delivery)),
            _ => None,
        })
        .await;
        out.push(found);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_direct_peer_fills_only_its_own_queue() {
    const LIMIT: usize = 256 << 10;
    let (server, _server_events) = start_server().await;
    let small_queue = |c: &mut peergroup_client::ClientConfig| c.limits.send_queue_bytes = LIMIT;
    let (a, mut a_events, a_id) = connect_with(&server, "a", small_queue).await;
    // B stops reading its events; its tiny event queue then stops it reading the network.
    let (_b, mut b_events, b_id) = connect_with(&server, "b", |c| c.limits.event_queue = 4).await;
    let (_c, mut c_events, c_id) = connect(&server, "c").await;
    server
        .create_group(&[a_id, b_id], GroupOptions::default(), "")
        .unwrap();
    direct_pair(&mut a_events, &mut b_events).await;
    let ac = server
        .create_group(&[a_id, c_id], relay_only(), "")
        .unwrap();
    wait_client(&mut a_events, |e| match e {
        ClientEvent::MemberJoined { group, member, .. } if *group == ac && *member == c_id => {
            Some(())
        }
        _ => None,
    })
    .await;

    let chunk = Bytes::from(vec![7u8; 1024]);
    // Fill until the queue stays full: QUIC's flow-control window to B (about 1.25 MB)
    // takes some first, then nothing more leaves.
    let mut sent = 0u64;
    let mut full_in_a_row = 0;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match a.try_send(Target::Host(b_id), chunk.clone(), Delivery::ReliableOrdered) {
            Ok(()) => {
                sent += 1;
                full_in_a_row = 0;
            }
            Err(SendError::QueueFull) => {
                full_in_a_row += 1;
                if full_in_a_row == 10 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(other) => panic!("unexpected {other}"),
        }
        assert!(sent < 100_000, "the queue to a stalled peer never filled");
        if sent.is_multiple_of(256) {
            // Let the writer hand what QUIC's flow control still admits to quinn.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert!(tokio::time::Instant::now() < deadline, "never filled");
    }
    let stats = a.peer_stats(b_id).unwrap();
    assert_eq!(stats.path, Some(peergroup_client::PairPath::Direct));
    assert!(
        stats.queued_bytes <= LIMIT + 2048,
        "the queue to B holds its limit plus at most one message: {}",
        stats.queued_bytes
    );
    // A send that waits is paced, not refused: it is still waiting a while later.
    let waiting = tokio::time::timeout(
        Duration::from_millis(300),
        a.send(Target::Host(b_id), chunk.clone(), Delivery::ReliableOrdered),
    )
    .await;
    assert!(waiting.is_err(), "send waits for room");

    // The stalled peer costs the others nothing: C still gets A's messages at once.
    a.send(Target::Host(c_id), "still here", Delivery::ReliableOrdered)
        .await
        .expect("sends to others never wait for B");
    let got = messages_from(&mut c_events, a_id, 1).await;
    assert_eq!(got[0].0, Bytes::from_static(b"still here"));
    // A latest value with a key nothing queued has would grow the queue: it waits too.
    assert_eq!(
        a.try_send(
            Target::Host(b_id),
            chunk.clone(),
            Delivery::Latest { key: u64::MAX }
        ),
        Err(SendError::QueueFull)
    );
    // Datagram modes never wait.
    a.try_send(Target::Host(b_id), "ping", Delivery::Unreliable)
        .expect("unreliable sends skip the queue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_receiver_of_latest_values_holds_one_per_key_and_gets_the_newest() {
    const KEYS: u64 = 4;
    const UPDATES: u64 = 20_000;
    let (server, _server_events) = start_server().await;
    let SlowPair {
        a,
        _a_events,
        a_id,
        _b,
        mut b_events,
        b_id,
    } = slow_relay_pair(&server).await;

    // B reads nothing while A sends a flood of position updates; each payload is
    // (key, value) and values grow.
    let payload = |key: u64, value: u64| {
        let mut bytes = key.to_be_bytes().to_vec();
        bytes.extend_from_slice(&value.to_be_bytes());
        bytes.extend_from_slice(&[0u8; 240]);
        Bytes::from(bytes)
    };
    let mut last = HashMap::new();
    for value in 1..=UPDATES {
        let key = value % KEYS;
        a.send(
            Target::Host(b_id),
            payload(key, value),
            Delivery::Latest { key },
        )
        .await
        .expect("latest sends never wait");
        last.insert(key, value);
    }
    // 20,000 updates of 256 bytes are 5 MiB; B's queue at the server holds far less,
    // because waiting updates are replaced, one per key (plus what its writer is handing
    // to QUIC, at most a 32 KiB batch).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let queued = server
            .host_info(b_id)
            .expect("B still connected")
            .queued_bytes;
        if queued <= (32 << 10) + (KEYS as usize) * 512 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server still holds {queued} bytes for B"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // B reads again: per key, values never go back, and each key ends at its last value.
    let mut seen: HashMap<u64, u64> = HashMap::new();
    let mut delivered = 0u64;
    while seen.len() < KEYS as usize || seen.iter().any(|(k, v)| last[k] != *v) {
        let (bytes, delivery) = messages_from(&mut b_events, a_id, 1).await.remove(0);
        let key = u64::from_be_bytes(bytes[..8].try_into().unwrap());
        let value = u64::from_be_bytes(bytes[8..16].try_into().unwrap());
        assert_eq!(delivery, Delivery::Latest { key });
        let previous = seen.insert(key, value).unwrap_or(0);
        assert!(
            value > previous,
            "key {key} went back from {previous} to {value}"
        );
        delivered += 1;
        assert!(delivered <= UPDATES);
    }
    assert!(
        delivered < UPDATES,
        "a slow receiver gets fewer updates than were sent ({delivered})"
    );
    assert!(
        server.host_info(b_id).is_some(),
        "never dropped as a slow consumer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn high_priority_overtakes_a_low_priority_backlog_at_the_server() {
    const LOW: usize = 4_000;
    const HIGH: usize = 50;
    let (server, _server_events) = start_server().await;
    let SlowPair {
        a,
        _a_events,
        a_id,
        _b,
        mut b_events,
        b_id,
    } = slow_relay_pair(&server).await;

    // B reads nothing while 4 MB of Low chat piles up for it, then High moves follow.
    let low = Delivery::ReliableOrdered
        .on_channel(1)
        .with_priority(Priority::Low);
    let high = Delivery::ReliableOrdered
        .on_channel(2)
        .with_priority(Priority::High);
    for i in 0..LOW {
        let mut bytes = vec![b'L'; 1024];
        bytes[..8].copy_from_slice(&(i as u64).to_be_bytes());
        a.send(Target::Host(b_id), bytes, low).await.unwrap();
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.host_info(b_id).unwrap().queued_bytes < (1 << 20) {
        assert!(tokio::time::Instant::now() < deadline, "no backlog formed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for i in 0..HIGH {
        let mut bytes = vec![b'H'; 64];
        bytes[..8].copy_from_slice(&(i as u64).to_be_bytes());
        a.send(Target::Host(b_id), bytes, high).await.unwrap();
    }

    // Everything arrives; each channel in order; the High messages all arrive while much
    // of the Low backlog is still to come.
    let mut order = Vec::with_capacity(LOW + HIGH);
    let (mut next_low, mut next_high) = (0u64, 0u64);
    for (bytes, _) in messages_from(&mut b_events, a_id, LOW + HIGH).await {
        let n = u64::from_be_bytes(bytes[..8].try_into().unwrap());
        if bytes[8] == b'H' {
            assert_eq!(n, next_high, "channel 2 in order");
            next_high += 1;
        } else {
            assert_eq!(n, next_low, "channel 1 in order");
            next_low += 1;
        }
        order.push(bytes[8]);
    }
    let last_high = order.iter().rposition(|&c| c == b'H').unwrap();
    let low_after = order[last_high..].iter().filter(|&&c| c == b'L').count();
    assert!(
        low_after > LOW / 4,
        "High should overtake the queued Low messages; only {low_after} Low came after"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reliable_messages_up_to_the_limit_arrive_whole_on_both_paths() {
    const MAX: usize = 1 << 20;
    let (server, _server_events) = start_server().await;
    let (a, mut a_events, a_id) = connect(&server, "a").await;
    let (_b, mut b_events, b_id) = connect(&server, "b").await;
    let (_c, mut c_events, c_id) = connect(&server, "c").await;
    // A-B on the relay, A-C direct.
    server
        .create_group(&[a_id, b_id], relay_only(), "")
        .unwrap();
    server
        .create_group(&[a_id, c_id], GroupOptions::default(), "")
        .unwrap();
    direct_pair(&mut a_events, &mut c_events).await;
    next_client_events(&mut b_events, 2).await;
    until_peer(&a, b_id).await;

    let big: Vec<u8> = (0..MAX).map(|i| (i % 251) as u8).collect();
    for (to, events, path) in [
        (b_id, &mut b_events, Path::Relay),
        (c_id, &mut c_events, Path::Direct),
    ] {
        a.send(Target::Host(to), big.clone(), Delivery::ReliableOrdered)
            .await
            .expect("1 MiB is within the default limit");
        let got = wait_client(events, |e| match e {
            ClientEvent::Message {
                from,
                payload,
                path,
                ..
            } if *from == a_id => Some((payload.clone(), *path)),
            _ => None,
        })
        .await;
        assert_eq!(got.1, path);
        assert_eq!(got.0.len(), MAX);
        assert!(got.0 == big, "delivered whole and intact on {path:?}");
        assert_eq!(
            a.send(
                Target::Host(to),
                vec![0u8; MAX + 1],
                Delivery::ReliableUnordered
            )
            .await,
            Err(SendError::TooLarge {
                len: MAX + 1,
                max: MAX
            })
        );
        // Too big for a datagram is an error too, never a silent drop.
        assert!(matches!(
            a.try_send(
                Target::Host(to),
                vec![0u8; 4096],
                Delivery::UnreliableSequenced
            ),
            Err(SendError::TooLargeForDatagram { len: 4096, .. })
        ));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_message_limit_is_the_servers_to_configure() {
    let (server, _server_events) = start_server_with(
        |c| c.limits.max_message_len = 1000,
        peergroup_server::AuthHook::accept_all(),
    )
    .await;
    let (a, _a_events, a_id) = connect(&server, "a").await;
    let (_b, mut b_events, b_id) = connect(&server, "b").await;
    server
        .create_group(&[a_id, b_id], relay_only(), "")
        .unwrap();
    next_client_events(&mut b_events, 2).await;
    until_peer(&a, b_id).await;
    a.send(
        Target::Host(b_id),
        vec![1u8; 1000],
        Delivery::ReliableOrdered,
    )
    .await
    .unwrap();
    assert_eq!(
        a.try_send(
            Target::Host(b_id),
            vec![1u8; 1001],
            Delivery::ReliableOrdered
        ),
        Err(SendError::TooLarge {
            len: 1001,
            max: 1000
        })
    );
    assert!(matches!(
        server.send(
            peergroup_server::ServerTarget::Host(b_id),
            vec![0u8; 1001],
            Delivery::ReliableOrdered
        ),
        Err(peergroup_server::SendError::TooLarge {
            len: 1001,
            max: 1000
        })
    ));
    let got = messages_from(&mut b_events, a_id, 1).await;
    assert_eq!(got[0].0.len(), 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_paused_behind_a_backlogged_receiver_still_acks_its_joins() {
    const SOFT_LIMIT: usize = 256 << 10;
    // A slow-consumer timeout far past the test's waits: once B is backlogged, the server
    // reads none of A's messages for the rest of the test.
    let (server, mut server_events) = start_server_with(
        |c| {
            c.limits.client_queue_bytes = SOFT_LIMIT;
            c.timeouts.slow_consumer = Duration::from_secs(120);
        },
        AuthHook::accept_all(),
    )
    .await;
    let SlowPair {
        a,
        _a_events,
        a_id,
        _b,
        b_events: _b_events,
        b_id,
    } = slow_relay_pair(&server).await;
    let sender = tokio::spawn(async move {
        let chunk = Bytes::from(vec![7u8; 16 << 10]);
        while a
            .send(Target::Host(b_id), chunk.clone(), Delivery::ReliableOrdered)
            .await
            .is_ok()
        {}
    });
    // B's backlog at the server is over the soft limit, and stays there for a whole second
    // (B's client has stopped reading, and the QUIC window to it is full): the server is
    // not reading A's messages.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut over_since = None;
    loop {
        let now = tokio::time::Instant::now();
        assert!(now < deadline, "no lasting backlog formed");
        if server.host_info(b_id).unwrap().queued_bytes < SOFT_LIMIT {
            over_since = None;
        } else if now - *over_since.get_or_insert(now) >= Duration::from_secs(1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // A joins a new group: its ack travels on its control stream, which the server reads
    // while A's messages wait behind B's backlog.
    let group = server.create_group(&[a_id], relay_only(), "").unwrap();
    assert_eq!(join_ack(&mut server_events, group, a_id).await, Ok(()));
    // B was still backlogged (so A still paused) when the join completed.
    assert!(server.host_info(b_id).unwrap().queued_bytes >= SOFT_LIMIT);
    assert!(!sender.is_finished(), "A's sends should still be waiting");
    sender.abort();
}
