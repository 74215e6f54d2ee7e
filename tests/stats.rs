//! What clients and the server measure, end to end over loopback QUIC: per-peer RTT, loss
//! and counters per path and mode; server totals, relay rate and per-pair RTT; and the
//! server clock as clients estimate it.

mod common;

use common::*;
use peergroup_client::{Client, ClientEvent, Delivery, PairPath, Target};
use peergroup_protocol::HostId;
use peergroup_server::GroupOptions;
use std::time::{Duration, Instant};

/// Fast pings on both paths, so RTT shows up within a test's patience.
fn fast_pings(config: &mut peergroup_client::ClientConfig) {
    config.timeouts.ping_interval = Some(Duration::from_millis(50));
    config.timeouts.relay_ping_interval = Duration::from_millis(50);
}

async fn until<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(found) = probe() {
            return found;
        }
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn until_peer(client: &Client, peer: HostId) {
    until("peer known", || {
        client.peers().contains(&peer).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_measure_rtt_loss_and_traffic_per_path_and_mode() {
    let (server, _server_events) = start_server().await;
    let (a, _a_events, a_id) = connect_with(&server, "a", fast_pings).await;
    let (b, mut b_events, b_id) = connect_with(&server, "b", fast_pings).await;
    server
        .create_group(&[a_id, b_id], relay_only(), "")
        .unwrap();
    until_peer(&a, b_id).await;
    until_peer(&b, a_id).await;

    // RTT on the relay: through the server and back, smoothed and last, no loss.
    let stats = until("an RTT to B", || {
        a.peer_stats(b_id)
            .filter(|s| s.rtt.is_some() && s.loss.is_some())
    })
    .await;
    assert_eq!(stats.path, Some(PairPath::Relay));
    assert!(stats.rtt.unwrap() < Duration::from_secs(1));
    assert!(stats.last_rtt.is_some());
    assert_eq!(stats.loss, Some(0.0), "loopback loses no pings");

    for _ in 0..3 {
        a.send(Target::Host(b_id), vec![1u8; 10], Delivery::ReliableOrdered)
            .await
            .unwrap();
    }
    a.send(
        Target::Host(b_id),
        vec![2u8; 20],
        Delivery::Latest { key: 1 },
    )
    .await
    .unwrap();
    a.send(Target::Host(b_id), vec![3u8; 30], Delivery::Unreliable)
        .await
        .unwrap();
    let mut got = 0;
    while got < 5 {
        wait_client(&mut b_events, |e| {
            matches!(e, ClientEvent::Message { .. }).then_some(())
        })
        .await;
        got += 1;
    }
    let sent = a.peer_stats(b_id).unwrap();
    assert_eq!(sent.relay_sent.messages, 5);
    assert_eq!(sent.relay_sent.bytes, 30 + 20 + 30);
    assert_eq!(sent.sent_by_mode.reliable_ordered.messages, 3);
    assert_eq!(sent.sent_by_mode.latest.bytes, 20);
    assert_eq!(sent.sent_by_mode.unreliable.messages, 1);
    assert_eq!(sent.direct_sent.messages, 0);
    let received = b.peer_stats(a_id).unwrap();
    assert_eq!(received.delivered_by_mode.reliable_ordered.messages, 3);
    assert_eq!(received.delivered_by_mode.latest.messages, 1);
    assert_eq!(received.delivered_by_mode.unreliable.bytes, 30);
    assert_eq!(received.relay_received.messages, 5);
    assert_eq!(received.duplicates_dropped, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rtt_follows_the_pair_onto_the_direct_path() {
    let (server, _server_events) = start_server().await;
    let (a, mut a_events, a_id) = connect_with(&server, "a", fast_pings).await;
    let (_b, _b_events, b_id) = connect_with(&server, "b", fast_pings).await;
    server
        .create_group(&[a_id, b_id], GroupOptions::default(), "")
        .unwrap();
    wait_client(&mut a_events, |e| match e {
        ClientEvent::PathChanged {
            path: PairPath::Direct,
            ..
        } => Some(()),
        _ => None,
    })
    .await;
    let stats = until("an RTT on the direct path", || {
        a.peer_stats(b_id)
            .filter(|s| s.path == Some(PairPath::Direct) && s.rtt.is_some())
    })
    .await;
    assert!(
        stats.direct_rtt.is_some(),
        "QUIC's own RTT of the direct path"
    );
    assert!(stats.rtt.unwrap() < Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_counts_clients_groups_pairs_and_relay_traffic() {
    let (server, _server_events) = start_server().await;
    let (a, mut a_events, a_id) = connect_with(&server, "a", fast_pings).await;
    let (_b, mut b_events, b_id) = connect_with(&server, "b", fast_pings).await;
    let (_c, _c_events, c_id) = connect_with(&server, "c", fast_pings).await;
    server
        .create_group(&[a_id, b_id], relay_only(), "")
        .unwrap();
    server
        .create_group(&[a_id, c_id], GroupOptions::default(), "")
        .unwrap();
    wait_client(&mut a_events, |e| match e {
        ClientEvent::PathChanged {
            peer,
            path: PairPath::Direct,
            ..
        } if *peer == c_id => Some(()),
        _ => None,
    })
    .await;
    // The server counts a pair direct once both sides reported it; c's report may still
    // be on its way when a sees its path change.
    until("the server to see the direct pair", || {
        (server.stats().direct_pairs == 1).then_some(())
    })
    .await;
    until_peer(&a, b_id).await;

    let payload = vec![0u8; 1000];
    for _ in 0..50 {
        a.send(
            Target::Host(b_id),
            payload.clone(),
            Delivery::ReliableUnordered,
        )
        .await
        .unwrap();
    }
    let mut got = 0;
    while got < 50 {
        wait_client(&mut b_events, |e| {
            matches!(e, ClientEvent::Message { .. }).then_some(())
        })
        .await;
        got += 1;
    }
    let stats = server.stats();
    assert_eq!((stats.clients, stats.groups), (3, 2));
    assert_eq!((stats.direct_pairs, stats.relayed_pairs), (1, 1));
    assert_eq!(stats.relayed, 50);
    assert_eq!(stats.relayed_bytes, 50_000);
    // The rate covers whole seconds: watch it until the seconds holding the traffic have
    // closed. The 50 kB may straddle two of them.
    let mut highest = 0;
    for _ in 0..50 {
        highest = highest.max(server.stats().relay_bytes_per_sec);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        (25_000..=50_000).contains(&highest),
        "relay rate peaked at {highest} B/s"
    );
    assert_eq!(server.stats().relay_bytes_per_sec, 0, "quiet since");

    // Clients report RTT and loss every 5 s: ProudNet's GetP2PRecentPingMs.
    let pair = until("a link report", || {
        server
            .pair_stats(a_id, b_id)
            .filter(|p| p.recent_rtt.is_some())
    })
    .await;
    assert_eq!(pair.path, PairPath::Relay);
    assert_eq!((pair.relayed, pair.relayed_bytes), (50, 50_000));
    assert!(pair.recent_rtt.unwrap() < Duration::from_secs(1));
    assert_eq!(pair.loss, Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_share_the_server_clock_within_their_error_bounds() {
    let (server, _server_events) = start_server().await;
    let (a, _a_events, _) = connect(&server, "a").await;
    let (b, _b_events, _) = connect(&server, "b").await;
    let first = until("a clock estimate", || a.server_time()).await;
    until("b's estimate", || b.server_time()).await;
    assert!(
        first.error < Duration::from_millis(50),
        "loopback bounds the error tightly: {:?}",
        first.error
    );

    // Both estimates of the same instant agree within the sum of their bounds.
    let (ta, tb) = (a.server_time().unwrap(), b.server_time().unwrap());
    let gap = ta.time.abs_diff(tb.time);
    assert!(
        gap <= ta.error + tb.error + Duration::from_millis(5),
        "{ta:?} vs {tb:?}"
    );

    // The estimate advances with real time.
    let started = Instant::now();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let later = a.server_time().unwrap();
    let advanced = later.time.saturating_sub(ta.time);
    let elapsed = started.elapsed();
    assert!(
        advanced.abs_diff(elapsed) <= later.error + ta.error + Duration::from_millis(20),
        "advanced {advanced:?} in {elapsed:?}"
    );
}
