//! Direct paths over real QUIC on loopback: punching, mutual authentication, and
//! switching between relay and direct with no reliable message lost, duplicated or
//! reordered. (Real NATs are in `nat_lab.rs`.)

mod common;

use bytes::Bytes;
use common::*;
use peergroup_client::{ClientEvent, Delivery, PairPath, Path, PathReason, Target};
use peergroup_server::{GroupOptions, ServerEvent};
use std::time::Duration;

fn path_changed(e: &ClientEvent) -> Option<(PairPath, PathReason)> {
    match e {
        ClientEvent::PathChanged { path, reason, .. } => Some((*path, *reason)),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_go_direct_and_their_traffic_leaves_the_relay() {
    let (server, mut server_events) = start_server().await;
    let (a, mut a_events, a_id) = connect(&server, "a").await;
    let (b, mut b_events, b_id) = connect(&server, "b").await;
    let group = server
        .create_group(&[a_id, b_id], GroupOptions::default(), "")
        .unwrap();

    assert_eq!(
        wait_client(&mut a_events, path_changed).await,
        (PairPath::Direct, PathReason::Punched)
    );
    assert_eq!(
        wait_client(&mut b_events, path_changed).await,
        (PairPath::Direct, PathReason::Punched)
    );
    let (lo, hi) = (a_id.min(b_id), a_id.max(b_id));
    let changed = wait_server(&mut server_events, |e| match e {
        ServerEvent::PairPathChanged { a, b, path, .. } => Some((*a, *b, *path)),
        _ => None,
    })
    .await;
    assert_eq!(changed, (lo, hi, PairPath::Direct));
    assert!(a.peer_stats(b_id).unwrap().direct_rtt.is_some());

    let relayed_before = server.pair_stats(a_id, b_id).unwrap().relayed;
    for n in 0..100u32 {
        a.send(
            Target::Group(group),
            n.to_be_bytes().to_vec(),
            Delivery::ReliableOrdered,
        )
        .await
        .unwrap();
    }
    b.send(Target::Host(a_id), "datagram", Delivery::Unreliable)
        .await
        .unwrap();
    for n in 0..100u32 {
        let (payload, path) = wait_client(&mut b_events, |e| match e {
            ClientEvent::Message { payload, path, .. } => Some((payload.clone(), *path)),
            _ => None,
        })
        .await;
        assert_eq!(payload.as_ref(), n.to_be_bytes());
        assert_eq!(path, Path::Direct);
    }
    let datagram = wait_client(&mut a_events, |e| match e {
        ClientEvent::Message {
            payload,
            path,
            delivery,
            ..
        } => Some((payload.clone(), *path, *delivery)),
        _ => None,
    })
    .await;
    assert_eq!(
        datagram,
        (
            Bytes::from_static(b"datagram"),
            Path::Direct,
            Delivery::Unreliable
        )
    );
    assert_eq!(
        server.pair_stats(a_id, b_id).unwrap().relayed,
        relayed_before,
        "direct traffic does not pass through the server"
    );
    assert_eq!(server.punch_stats(a_id).unwrap().direct, 1);
    let stats = b.peer_stats(a_id).unwrap();
    assert_eq!(stats.direct_received.messages, 100);
    assert_eq!(stats.path, Some(PairPath::Direct));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_cross_both_switches_exactly_once_and_in_order() {
    let (server, mut server_events) = start_server().await;
    let (a, mut a_events, a_id) = connect(&server, "a").await;
    let (b, mut b_events, b_id) = connect(&server, "b").await;
    server
        .create_group(&[a_id, b_id], GroupOptions::default(), "")
        .unwrap();
    // Wait until A knows B (its join notice), then stream at once: the first messages
    // take the relay, the later ones the direct path once it is up.
    wait_client(&mut a_events, |e| {
        matches!(e, ClientEvent::MemberJoined { member, .. } if *member == b_id).then_some(())
    })
    .await;
    const COUNT: u32 = 10_000;
    let sender = {
        let a = a.clone();
        tokio::spawn(async move {
            for n in 0..COUNT {
                a.send(
                    Target::Host(b_id),
                    n.to_be_bytes().to_vec(),
                    Delivery::ReliableOrdered,
                )
                .await
                .unwrap();
                if n % 500 == 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        })
    };
    let mut paths = Vec::new();
    let mut killed = false;
    for expected in 0..COUNT {
        let (payload, path) = wait_client(&mut b_events, |e| match e {
            ClientEvent::Message { payload, path, .. } => Some((payload.clone(), *path)),
            _ => None,
        })
        .await;
        assert_eq!(
            payload.as_ref(),
            expected.to_be_bytes(),
            "message {expected}"
        );
        if paths.last() != Some(&path) {
            paths.push(path);
        }
        // Once direct, kill the direct path mid-stream: traffic must fall back.
        if !killed && path == Path::Direct && expected > 2_000 {
            b.close_direct_path(a_id);
            killed = true;
        }
    }
    sender.await.unwrap();
    assert_quiet(&mut b_events, Duration::from_millis(300)).await;
    assert!(killed, "the direct path never came up: {paths:?}");
    assert_eq!(paths.first(), Some(&Path::Relay), "{paths:?}");
    assert!(paths.contains(&Path::Direct), "{paths:?}");
    let fell_back = wait_server(&mut server_events, |e| match e {
        ServerEvent::PairPathChanged {
            path: PairPath::Relay,
            reason,
            ..
        } => Some(*reason),
        _ => None,
    })
    .await;
    assert_eq!(fell_back, PathReason::DirectClosed);
    assert_eq!(a.peer_stats(b_id).unwrap().path, Some(PairPath::Relay));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_only_groups_and_relay_only_clients_never_go_direct() {
    let (server, _server_events) = start_server().await;
    let (_a, mut a_events, a_id) = connect(&server, "a").await;
    let (_b, _b_events, b_id) = connect_with(&server, "b", |c| c.direct.enabled = false).await;
    let (_c, _c_events, c_id) = connect(&server, "c").await;
    let relay_only = GroupOptions {
        direct_p2p: false,
        ..GroupOptions::default()
    };
    server.create_group(&[a_id, c_id], relay_only, "").unwrap();
    server
        .create_group(&[a_id, b_id], GroupOptions::default(), "")
        .unwrap();
    // B declines its order; the A-C pair never gets one.
    poll_until(
        || "B never declined".into(),
        || server.punch_stats(b_id).unwrap().declined > 0,
    )
    .await;
    assert_eq!(server.punch_stats(c_id).unwrap().orders, 0);
    let quiet = tokio::time::timeout(Duration::from_millis(500), async {
        wait_client(&mut a_events, path_changed).await
    })
    .await;
    assert!(quiet.is_err(), "A went direct with someone: {quiet:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn just_in_time_mode_punches_only_once_a_message_goes_between_the_pair() {
    let (server, _server_events) = start_server_with(
        |c| c.punch.start = peergroup_server::PunchStart::OnFirstMessage,
        Default::default(),
    )
    .await;
    let (a, mut a_events, a_id) = connect(&server, "a").await;
    let (_b, mut b_events, b_id) = connect(&server, "b").await;
    server
        .create_group(&[a_id, b_id], GroupOptions::default(), "")
        .unwrap();
    next_client_events(&mut a_events, 2).await;
    let idle = tokio::time::timeout(Duration::from_millis(500), async {
        wait_client(&mut b_events, path_changed).await
    })
    .await;
    assert!(idle.is_err(), "no punch before the first message: {idle:?}");
    assert_eq!(server.punch_stats(a_id).unwrap().orders, 0);

    a.send(Target::Host(b_id), "first", Delivery::ReliableOrdered)
        .await
        .unwrap();
    assert_eq!(
        wait_client(&mut b_events, path_changed).await,
        (PairPath::Direct, PathReason::Punched)
    );
    assert_eq!(server.punch_stats(a_id).unwrap().orders, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_at_its_direct_peer_limit_keeps_further_peers_on_the_relay() {
    let (server, _server_events) = start_server().await;
    let (_a, mut a_events, a_id) =
        connect_with(&server, "a", |c| c.direct.max_direct_peers = 1).await;
    let (_b, _b_events, b_id) = connect(&server, "b").await;
    let (_c, _c_events, c_id) = connect(&server, "c").await;
    server
        .create_group(&[a_id, b_id], GroupOptions::default(), "")
        .unwrap();
    wait_client(&mut a_events, path_changed).await;
    // The server marks the pair direct once both sides have reported it.
    poll_until(
        || "A-B never direct".into(),
        || server.pair_stats(a_id, b_id).unwrap().path == PairPath::Direct,
    )
    .await;
    server
        .create_group(&[a_id, c_id], GroupOptions::default(), "")
        .unwrap();
    poll_until(
        || "A never declined".into(),
        || server.punch_stats(a_id).unwrap().declined > 0,
    )
    .await;
    assert_eq!(server.pair_stats(a_id, c_id).unwrap().path, PairPath::Relay);
    assert_eq!(
        server.pair_stats(a_id, b_id).unwrap().path,
        PairPath::Direct
    );
}

/// Punches under way count against the limit: a client ordered to punch with two peers at
/// once (a group of three made in one call) starts one and declines the other, where
/// counting only established paths would have started both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_that_arrive_together_respect_the_direct_peer_limit() {
    let (server, _server_events) = start_server().await;
    let (_a, mut a_events, a_id) =
        connect_with(&server, "a", |c| c.direct.max_direct_peers = 1).await;
    let (_b, _b_events, b_id) = connect(&server, "b").await;
    let (_c, _c_events, c_id) = connect(&server, "c").await;
    server
        .create_group(&[a_id, b_id, c_id], GroupOptions::default(), "")
        .unwrap();
    wait_client(&mut a_events, |e| {
        path_changed(e).filter(|(path, _)| *path == PairPath::Direct)
    })
    .await;
    // The server marks a pair direct once both sides have reported it.
    let paths = || {
        [
            server.pair_stats(a_id, b_id).unwrap().path,
            server.pair_stats(a_id, c_id).unwrap().path,
        ]
    };
    poll_until(
        || format!("A's pairs: {:?}", paths()),
        || server.punch_stats(a_id).unwrap().declined > 0 && paths().contains(&PairPath::Direct),
    )
    .await;
    let direct = paths().iter().filter(|p| **p == PairPath::Direct).count();
    assert_eq!(direct, 1, "A's pairs: {:?}", paths());
    assert_eq!(server.punch_stats(a_id).unwrap().declined, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn view_group_churn_within_the_linger_keeps_the_direct_path() {
    let (server, _server_events) = start_server().await;
    let (a, mut a_events, a_id) = connect(&server, "a").await;
    let (_b, mut b_events, b_id) = connect(&server, "b").await;
    let group = server
        .create_group(&[a_id, b_id], GroupOptions::default(), "")
        .unwrap();
    wait_client(&mut a_events, path_changed).await;
    wait_client(&mut b_events, path_changed).await;
    // B walks out of view and back in, as MMO view groups do.
    server.leave_group(group, b_id).unwrap();
    // While they share no group, A's messages to B take the relay, which refuses them.
    wait_client(&mut a_events, |e| {
        matches!(e, ClientEvent::MemberLeft { member, .. } if *member == b_id).then_some(())
    })
    .await;
    a.send(Target::Host(b_id), "out of view", Delivery::ReliableOrdered)
        .await
        .unwrap();
    assert!(matches!(
        wait_client(&mut a_events, |e| match e {
            ClientEvent::SendFailed { reason, .. } => Some(*reason),
            _ => None,
        })
        .await,
        peergroup_client::RefuseReason::NoSharedGroup
    ));
    server.join_group(group, b_id, "").unwrap();
    wait_client(&mut a_events, |e| {
        matches!(e, ClientEvent::MemberJoined { member, .. } if *member == b_id).then_some(())
    })
    .await;
    a.send(
        Target::Host(b_id),
        "back in view",
        Delivery::ReliableOrdered,
    )
    .await
    .unwrap();
    let (payload, path) = wait_client(&mut b_events, |e| match e {
        ClientEvent::Message { payload, path, .. } => Some((payload.clone(), *path)),
        _ => None,
    })
    .await;
    assert_eq!(payload, Bytes::from_static(b"back in view"));
    assert_eq!(path, Path::Direct, "the pair kept its direct path");
    assert_eq!(a.peer_stats(b_id).unwrap().path, Some(PairPath::Direct));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_works_end_to_end_including_the_direct_path() {
    let (server, _server_events) = start_server_with(
        |c| c.listen = "[::1]:0".parse().unwrap(),
        Default::default(),
    )
    .await;
    assert!(server.local_addr().is_ipv6());
    let (a, mut a_events, a_id) = connect(&server, "a").await;
    let (_b, mut b_events, b_id) = connect(&server, "b").await;
    assert!(a.local_addr().unwrap().is_ipv6());
    server
        .create_group(&[a_id, b_id], GroupOptions::default(), "")
        .unwrap();
    assert_eq!(
        wait_client(&mut a_events, path_changed).await,
        (PairPath::Direct, PathReason::Punched)
    );
    a.send(Target::Host(b_id), "over ipv6", Delivery::ReliableOrdered)
        .await
        .unwrap();
    let path = wait_client(&mut b_events, |e| match e {
        ClientEvent::Message { path, .. } => Some(*path),
        _ => None,
    })
    .await;
    assert_eq!(path, Path::Direct);
    let info = server.host_info(a_id).unwrap();
    assert!(
        info.remote_addr.to_string().starts_with("[::1]:"),
        "{}",
        info.remote_addr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_at_full_speed_on_the_direct_path_is_paced_not_diverted() {
    let (server, _server_events) = start_server().await;
    let (a, mut a_events, a_id) = connect(&server, "a").await;
    let (_b, mut b_events, b_id) = connect(&server, "b").await;
    server
        .create_group(&[a_id, b_id], GroupOptions::default(), "")
        .unwrap();
    wait_client(&mut a_events, path_changed).await;
    wait_client(&mut b_events, path_changed).await;
    let relayed_before = server.pair_stats(a_id, b_id).unwrap().relayed;
    const COUNT: u32 = 50_000;
    let sender = {
        let a = a.clone();
        tokio::spawn(async move {
            for n in 0..COUNT {
                let mut payload = vec![0u8; 64];
                payload[..4].copy_from_slice(&n.to_be_bytes());
                a.send(Target::Host(b_id), payload, Delivery::ReliableOrdered)
                    .await
                    .unwrap();
            }
        })
    };
    for expected in 0..COUNT {
        let payload = wait_client(&mut b_events, |e| match e {
            ClientEvent::Message { payload, .. } => Some(payload.clone()),
            ClientEvent::Disconnected { reason } => panic!("B disconnected: {reason}"),
            _ => None,
        })
        .await;
        assert_eq!(&payload[..4], expected.to_be_bytes(), "message {expected}");
    }
    sender.await.unwrap();
    assert_eq!(
        server.pair_stats(a_id, b_id).unwrap().relayed,
        relayed_before,
        "a busy direct path paces the sender instead of spilling onto the relay"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_handle_releases_the_clients_socket() {
    let (server, _server_events) = start_server().await;
    let (a, a_events, a_id) = connect(&server, "a").await;
    let (_b, mut b_events, b_id) = connect(&server, "b").await;
    server
        .create_group(&[a_id, b_id], GroupOptions::default(), "")
        .unwrap();
    wait_client(&mut b_events, path_changed).await;
    let local = a.local_addr().unwrap();
    drop(a);
    drop(a_events);
    // Every task of the client ends and its one UDP socket is closed: the port is free.
    poll_until(
        || format!("the dropped client still holds {local}"),
        || std::net::UdpSocket::bind(local).is_ok(),
    )
    .await;
}

/// Issue 12, finding 9: the sender keeps at most `DirectConfig::max_unacked_messages`
/// direct messages its peer has not acked; sends beyond wait for acks. With a window of
/// 8, every message still arrives in order, none through the relay, and the sender never
/// keeps more than the window. (The receiver acks every 32 messages or 20 ms, so a window
/// under 32 messages sends one window per 20 ms: 400 messages take about a second.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_unacked_window_paces_the_sender_and_loses_nothing() {
    let (server, _server_events) = start_server().await;
    let (a, mut a_events, a_id) =
        connect_with(&server, "a", |c| c.direct.max_unacked_messages = 8).await;
    let (_b, mut b_events, b_id) = connect(&server, "b").await;
    server
        .create_group(&[a_id, b_id], GroupOptions::default(), "")
        .unwrap();
    wait_client(&mut a_events, path_changed).await;
    wait_client(&mut b_events, path_changed).await;
    let relayed_before = server.pair_stats(a_id, b_id).unwrap().relayed;
    const COUNT: u32 = 400;
    let sender = {
        let a = a.clone();
        tokio::spawn(async move {
            let mut most_unacked = 0;
            for n in 0..COUNT {
                a.send(
                    Target::Host(b_id),
                    n.to_be_bytes().to_vec(),
                    Delivery::ReliableOrdered,
                )
                .await
                .unwrap();
                most_unacked = most_unacked.max(a.peer_stats(b_id).unwrap().unacked);
            }
            most_unacked
        })
    };
    for expected in 0..COUNT {
        let payload = wait_client(&mut b_events, |e| match e {
            ClientEvent::Message { payload, .. } => Some(payload.clone()),
            ClientEvent::Disconnected { reason } => panic!("B disconnected: {reason}"),
            _ => None,
        })
        .await;
        assert_eq!(&payload[..], expected.to_be_bytes(), "message {expected}");
    }
    let most_unacked = sender.await.unwrap();
    assert!(most_unacked <= 8, "{most_unacked} messages kept unacked");
    assert_eq!(
        server.pair_stats(a_id, b_id).unwrap().relayed,
        relayed_before,
        "a full window waits for acks instead of spilling onto the relay"
    );
    assert_eq!(a.peer_stats(b_id).unwrap().path, Some(PairPath::Direct));
}
