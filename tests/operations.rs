//! The server library's support for operators, over real QUIC on loopback: graceful
//! shutdown (`Server::shutdown_gracefully`) and the counters only the library can keep
//! (`ServerStats`: handshake and auth failures, relayed traffic by delivery mode, punch
//! attempts and successes, ack latencies) and the pair listing (`Server::pairs`).

mod common;

use bytes::Bytes;
use common::*;
use peergroup_client::{ClientEvent, CloseCode, Delivery, DisconnectReason, ServerTrust, Target};
use peergroup_server::{AuthDecision, AuthHook, GroupOptions, PairPath, ServerEvent, ServerTarget};
use std::time::Duration;

#[tokio::test]
async fn a_graceful_shutdown_delivers_what_was_queued_then_closes_with_server_shutdown() {
    let (server, mut server_events) = start_server().await;
    let (_alice, mut alice_events, alice) = connect(&server, "alice").await;
    let (_bob, mut bob_events, _bob_id) = connect(&server, "bob").await;

    // 2 MiB queued for alice just before the shutdown, then one last message: a close at
    // once would cut them off (QUIC discards unacknowledged stream data on close).
    let chunk = Bytes::from(vec![7u8; 16 << 10]);
    for _ in 0..128 {
        server
            .send(
                ServerTarget::Host(alice),
                chunk.clone(),
                Delivery::ReliableOrdered,
            )
            .unwrap();
    }
    server
        .send(
            ServerTarget::Host(alice),
            "last words",
            Delivery::ReliableOrdered,
        )
        .unwrap();
    // Alice's application reads on while the server drains, as a game's would: what the
    // server has not written yet waits for her reads.
    let alice_reads = async {
        let mut chunks = 0;
        let reason = loop {
            match within_wait(alice_events.next()).await {
                Some(ClientEvent::Message { payload, .. }) if payload == chunk => chunks += 1,
                Some(ClientEvent::Message { payload, .. }) => {
                    assert_eq!(payload, "last words");
                    assert_eq!(chunks, 128, "every queued chunk came first, in order");
                }
                Some(ClientEvent::Disconnected { reason }) => break reason,
                Some(_) => {}
                None => panic!("alice's events ended without Disconnected"),
            }
        };
        (chunks, reason)
    };
    let (report, (chunks, reason)) = tokio::join!(
        server.shutdown_gracefully(Duration::from_secs(10)),
        alice_reads
    );
    assert_eq!(report.clients, 2);
    assert_eq!(report.cut_off, 0, "both drained within the deadline");
    assert_eq!(chunks, 128);
    match reason {
        DisconnectReason::ServerClosed { code, reason } => {
            assert_eq!(code, CloseCode::ServerShutdown);
            assert_eq!(reason, "server shutting down");
        }
        other => panic!("alice saw {other:?}, not the server's shutdown"),
    }
    let bob_reason = wait_client(&mut bob_events, |e| match e {
        ClientEvent::Disconnected { reason } => Some(reason.clone()),
        _ => None,
    })
    .await;
    assert!(
        matches!(
            bob_reason,
            DisconnectReason::ServerClosed {
                code: CloseCode::ServerShutdown,
                ..
            }
        ),
        "{bob_reason:?}"
    );
    // The application hears both go, for the shutdown's reason, then the stream ends.
    let mut gone = 0;
    while let Some(event) = within_wait(server_events.next()).await {
        if let ServerEvent::ClientDisconnected { reason, .. } = event {
            assert_eq!(reason, peergroup_server::DisconnectReason::ServerShutdown);
            gone += 1;
        }
    }
    assert_eq!(gone, 2);
}

#[tokio::test]
async fn a_drain_refuses_new_clients_and_cuts_off_a_stuck_one_at_its_deadline() {
    let (server, mut server_events) = start_server().await;
    // A client that never reads: the server's writes stall on QUIC flow control.
    let (raw, stuck) = raw_login(&server, &mut server_events, &[]).await;
    let big = Bytes::from(vec![1u8; 1 << 20]);
    for _ in 0..6 {
        server
            .send(
                ServerTarget::Host(stuck),
                big.clone(),
                Delivery::ReliableOrdered,
            )
            .unwrap();
    }
    let drain = {
        let server = server.clone();
        tokio::spawn(async move {
            server
                .shutdown_gracefully(Duration::from_millis(1500))
                .await
        })
    };
    // While it drains, a new client is refused.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let refused = tokio::time::timeout(
        WAIT,
        peergroup_client::Client::connect(client_config(&server, "late")),
    )
    .await
    .expect("the refusal is prompt");
    assert!(refused.is_err(), "a client connected during the drain");
    assert!(server.stats().connections_refused >= 1);

    let report = tokio::time::timeout(WAIT, drain).await.unwrap().unwrap();
    assert_eq!((report.clients, report.cut_off), (1, 1));
    assert!(report.elapsed >= Duration::from_millis(1500), "{report:?}");
    let (code, _) = raw.closed().await;
    assert_eq!(code, CloseCode::ServerShutdown.to_u64());
}

#[tokio::test]
async fn stats_count_failures_relays_by_mode_punches_and_ack_latency() {
    let auth = AuthHook::from_fn(|login| {
        if login.login.as_ref() == b"mallory" {
            AuthDecision::reject("not you")
        } else {
            AuthDecision::accept()
        }
    });
    let (server, mut server_events) = start_server_with(|_| {}, auth).await;
    let before = server.stats();
    assert_eq!(
        (
            before.handshake_failures,
            before.auth_rejections,
            before.punch_attempts
        ),
        (0, 0, 0)
    );

    // A client that trusts another certificate fails the TLS handshake.
    let mut wrong = client_config(&server, "eve");
    wrong.server_trust = ServerTrust::Fingerprint(peergroup_server::Fingerprint([9; 32]));
    assert!(peergroup_client::Client::connect(wrong).await.is_err());
    // A rejected login.
    assert!(
        peergroup_client::Client::connect(client_config(&server, "mallory"))
            .await
            .is_err()
    );

    let (alice, mut alice_events, a) = connect(&server, "alice").await;
    let (_bob, mut bob_events, b) = connect(&server, "bob").await;
    let group = server
        .create_group(&[a, b], GroupOptions::default(), "")
        .unwrap();
    for _ in 0..2 {
        wait_server(&mut server_events, |e| match e {
            ServerEvent::JoinAckComplete { result: Ok(()), .. } => Some(()),
            _ => None,
        })
        .await;
    }
    // Relayed before the pair goes direct? Not guaranteed on loopback; send through a
    // relay-only group too so every mode is counted.
    let relayed = server.create_group(&[a, b], relay_only(), "").unwrap();
    wait_client(&mut bob_events, |e| match e {
        ClientEvent::MemberJoined {
            group: g, member, ..
        } if *g == relayed && *member == b => Some(()),
        _ => None,
    })
    .await;
    wait_client(&mut alice_events, |e| match e {
        ClientEvent::MemberJoined {
            group: g, member, ..
        } if *g == relayed && *member == a => Some(()),
        _ => None,
    })
    .await;
    let to_bob = Target::Hosts(vec![b]);
    alice
        .send(to_bob.clone(), "ordered", Delivery::ReliableOrdered)
        .await
        .unwrap();
    alice
        .send(
            Target::Group(relayed),
            "latest",
            Delivery::Latest { key: 1 },
        )
        .await
        .unwrap();
    for _ in 0..2 {
        wait_client(&mut bob_events, |e| match e {
            ClientEvent::Message { .. } => Some(()),
            _ => None,
        })
        .await;
    }
    // The pair in the direct group punches on loopback.
    wait_server(&mut server_events, |e| match e {
        ServerEvent::PairPathChanged {
            path: PairPath::Direct,
            ..
        } => Some(()),
        _ => None,
    })
    .await;

    let stats = server.stats();
    assert_eq!(stats.handshake_failures, 1, "{stats:?}");
    assert_eq!(stats.auth_rejections, 1, "{stats:?}");
    assert!(
        stats.punch_attempts >= 1 && stats.punch_successes >= 1,
        "{stats:?}"
    );
    assert!(stats.punch_successes <= stats.punch_attempts);
    let modes = stats.relayed_by_delivery;
    assert!(modes.latest.messages >= 1, "{modes:?}");
    assert_eq!(modes.latest.bytes, 6 * modes.latest.messages);
    let total: u64 = modes.by_name().iter().map(|(_, c)| c.messages).sum();
    assert_eq!(total, stats.relayed, "every relayed message is in one mode");
    // Four joins acked (two groups of two), each timed.
    assert!(
        stats.join_ack_latency.count >= 4,
        "{:?}",
        stats.join_ack_latency
    );
    let inf = stats.join_ack_latency.buckets.last().copied().unwrap();
    assert_eq!(
        inf, stats.join_ack_latency.count,
        "all within the 15 s bound"
    );
    assert!(stats.join_ack_latency.sum_us > 0);
    assert_eq!(stats.leave_ack_latency.count, 0);
    server.leave_group(group, b).unwrap();
    wait_server(&mut server_events, |e| match e {
        ServerEvent::LeaveAckComplete { result: Ok(()), .. } => Some(()),
        _ => None,
    })
    .await;
    assert_eq!(server.stats().leave_ack_latency.count, 1);

    // The pair listing agrees with pair_stats.
    let pairs = server.pairs();
    assert_eq!(pairs.len(), 1);
    let (x, y, listed) = pairs[0];
    assert_eq!((x, y), (a.min(b), a.max(b)));
    assert_eq!(Some(listed), server.pair_stats(a, b));
    assert_eq!(listed.path, PairPath::Direct);
}

async fn within_wait<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, future)
        .await
        .expect("timed out waiting")
}
