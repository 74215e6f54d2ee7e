//! Relay messaging over real QUIC on loopback: delivery guarantees, fan-out, the relay
//! rule, the stamped sender, size limits and slow receivers.

mod common;

use bytes::Bytes;
use common::*;
use peergroup_client::{ClientEvent, Delivery, Path, RefuseReason, SendError, Target};
use peergroup_protocol::{ClientToServer, HostId, Lane, PairId, Priority, RelayDest};
use peergroup_server::{DisconnectReason, GroupOptions, ServerEvent, ServerTarget};
use std::time::Duration;

fn message(e: &ClientEvent) -> Option<(HostId, Bytes, Delivery, Path)> {
    match e {
        ClientEvent::Message {
            from,
            payload,
            delivery,
            path,
            ..
        } => Some((*from, payload.clone(), *delivery, *path)),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_reliable_messages_arrive_exactly_once_and_in_order() {
    let (server, _server_events) = start_server().await;
    let (a, mut a_events, a_id) = connect(&server, "a").await;
    let (_b, mut b_events, b_id) = connect(&server, "b").await;
    let group = server
        .create_group(&[a_id, b_id], relay_only(), "")
        .unwrap();
    next_client_events(&mut a_events, 2).await;
    next_client_events(&mut b_events, 2).await;

    const COUNT: u32 = 10_000;
    let sender = tokio::spawn(async move {
        for n in 0..COUNT {
            a.send(
                Target::Host(b_id),
                n.to_be_bytes().to_vec(),
                Delivery::ReliableOrdered,
            )
            .await
            .unwrap();
        }
        a
    });
    for expected in 0..COUNT {
        let (from, payload, delivery, path) = wait_client(&mut b_events, message).await;
        assert_eq!(from, a_id);
        assert_eq!(delivery, Delivery::ReliableOrdered);
        assert_eq!(path, Path::Relay);
        assert_eq!(
            payload.as_ref(),
            expected.to_be_bytes(),
            "message {expected}"
        );
    }
    let _a = sender.await.unwrap();
    assert_quiet(&mut b_events, Duration::from_millis(200)).await;
    assert_eq!(server.stats().relayed, u64::from(COUNT));
    let _ = group;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_send_is_fanned_out_to_every_other_member_and_loops_back_on_request() {
    let (server, _server_events) = start_server().await;
    let mut clients = Vec::new();
    for n in 0..5 {
        clients.push(connect(&server, &format!("c{n}")).await);
    }
    let ids: Vec<HostId> = clients.iter().map(|c| c.2).collect();
    let group = server.create_group(&ids, relay_only(), "").unwrap();
    for (i, (_, events, _)) in clients.iter_mut().enumerate() {
        // Member i hears of each member before it, itself, and each after it.
        next_client_events(events, 5).await;
        let _ = i;
    }
    let relayed_before = server.stats().relayed;
    let (sender, sender_events, sender_id) = &mut clients[0];
    sender
        .send(Target::Group(group), "to all", Delivery::ReliableOrdered)
        .await
        .unwrap();
    sender
        .send(
            Target::GroupLoopback(group),
            "me too",
            Delivery::ReliableOrdered,
        )
        .await
        .unwrap();
    let looped = wait_client(sender_events, message).await;
    assert_eq!(
        looped,
        (
            *sender_id,
            Bytes::from_static(b"me too"),
            Delivery::ReliableOrdered,
            Path::Loopback
        )
    );
    let sender_id = *sender_id;
    for (_, events, _) in clients.iter_mut().skip(1) {
        let first = wait_client(events, message).await;
        assert_eq!(first.0, sender_id);
        assert_eq!(first.1, Bytes::from_static(b"to all"));
        let second = wait_client(events, message).await;
        assert_eq!(second.1, Bytes::from_static(b"me too"));
    }
    assert_eq!(
        server.stats().relayed - relayed_before,
        8,
        "4 receivers x 2 sends"
    );
    assert_quiet(&mut clients[0].1, Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreliable_messages_arrive_once_and_oversized_ones_are_refused_up_front() {
    let (server, _server_events) = start_server().await;
    let (a, mut a_events, a_id) = connect(&server, "a").await;
    let (_b, mut b_events, b_id) = connect(&server, "b").await;
    let group = server
        .create_group(&[a_id, b_id], relay_only(), "")
        .unwrap();
    next_client_events(&mut a_events, 2).await;
    next_client_events(&mut b_events, 2).await;

    for n in 0..50u8 {
        a.send(Target::Group(group), vec![n; 100], Delivery::Unreliable)
            .await
            .unwrap();
    }
    let mut seen = std::collections::BTreeSet::new();
    while let Ok(Some(event)) =
        tokio::time::timeout(Duration::from_millis(500), b_events.next()).await
    {
        if let Some((from, payload, delivery, _)) = message(&event) {
            assert_eq!((from, delivery), (a_id, Delivery::Unreliable));
            assert!(seen.insert(payload[0]), "duplicate datagram {}", payload[0]);
        }
    }
    assert!(!seen.is_empty(), "loopback delivers datagrams");

    let huge = vec![0u8; 64 * 1024];
    let error = a
        .send(Target::Group(group), huge, Delivery::Unreliable)
        .await
        .unwrap_err();
    assert!(
        matches!(error, SendError::TooLargeForDatagram { len: 65536, max } if max > 1000 && max < 65536),
        "{error:?}"
    );
    let too_big = vec![0u8; 2 << 20];
    assert!(matches!(
        a.send(Target::Host(b_id), too_big, Delivery::ReliableOrdered)
            .await,
        Err(SendError::TooLarge { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_outside_a_shared_group_is_refused_and_counted() {
    let (server, _server_events) = start_server().await;
    let (a, mut a_events, a_id) = connect(&server, "a").await;
    let (_b, mut b_events, b_id) = connect(&server, "b").await;
    let (_c, mut c_events, c_id) = connect(&server, "c").await;
    let g_ab = server
        .create_group(&[a_id, b_id], relay_only(), "")
        .unwrap();
    server
        .create_group(&[b_id, c_id], relay_only(), "")
        .unwrap();
    next_client_events(&mut a_events, 2).await;
    next_client_events(&mut b_events, 4).await;
    next_client_events(&mut c_events, 2).await;

    // A never shared a group with C: the client refuses before anything is sent.
    assert_eq!(
        a.send(Target::Host(c_id), "hi", Delivery::ReliableOrdered)
            .await,
        Err(SendError::NotAPeer(c_id))
    );
    // B leaves A's group; A's pair with B lingers, so A's client still sends, and the
    // server refuses: A is told, C and B get nothing.
    server.leave_group(g_ab, b_id).unwrap();
    wait_client(&mut a_events, |e| {
        matches!(e, ClientEvent::MemberLeft { member, .. } if *member == b_id).then_some(())
    })
    .await;
    let refused_before = server.stats().relay_refused;
    a.send(Target::Host(b_id), "after leave", Delivery::ReliableOrdered)
        .await
        .unwrap();
    let failure = wait_client(&mut a_events, |e| match e {
        ClientEvent::SendFailed { to, reason, .. } => Some((*to, *reason)),
        _ => None,
    })
    .await;
    assert_eq!(failure, (b_id, RefuseReason::NoSharedGroup));
    assert_eq!(server.stats().relay_refused, refused_before + 1);
    // B drains its leave notices and must see no message from A.
    next_client_events(&mut b_events, 2).await;
    assert_quiet(&mut b_events, Duration::from_millis(300)).await;
    assert_eq!(
        a.send(Target::Group(g_ab), "x", Delivery::ReliableOrdered)
            .await,
        Ok(()),
        "a group of one sends nothing, which is fine"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_forge_a_sender_or_reach_a_pair_it_is_not_in() {
    let (server, mut server_events) = start_server().await;
    let (_a, mut a_events, a_id) = connect(&server, "a").await;
    let (_b, mut b_events, b_id) = connect(&server, "b").await;
    server
        .create_group(&[a_id, b_id], relay_only(), "")
        .unwrap();
    next_client_events(&mut a_events, 2).await;
    next_client_events(&mut b_events, 2).await;

    // A raw client in no group guesses pair ids (the A-B pair is one of the first few).
    let (mut raw, raw_id) = raw_login(&server, &mut server_events, &[a_id, b_id]).await;
    let refused_before = server.stats().relay_refused;
    let dests: Vec<RelayDest> = (1..4u64)
        .flat_map(|version| (0..4u64).map(move |index| (version << 32) | index))
        .map(|raw_pair| RelayDest {
            pair: PairId::from_raw(raw_pair),
            seq: 1,
        })
        .collect();
    raw.send_frame(&ClientToServer::Relay {
        group: None,
        to_server: false,
        lane: Lane::Ordered { channel: 0 },
        priority: Priority::Medium,
        dests: dests.clone().into(),
        payload: Bytes::from_static(b"i am a"),
    })
    .await;
    // Every guess is refused, and neither A nor B hears anything.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while server.stats().relay_refused < refused_before + dests.len() as u64 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "refusals not counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_quiet(&mut a_events, Duration::from_millis(200)).await;
    assert_quiet(&mut b_events, Duration::from_millis(200)).await;
    assert!(
        server.host_info(raw_id).is_some(),
        "refusal is not a disconnect"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_as_member_receives_group_messages_and_sends_to_groups() {
    let (server, mut server_events) = start_server().await;
    let (a, mut a_events, a_id) = connect(&server, "a").await;
    let options = GroupOptions {
        server_is_member: true,
        ..GroupOptions::default()
    };
    let group = server.create_group(&[a_id], options, "").unwrap();
    let joins = next_client_events(&mut a_events, 2).await;
    assert!(
        matches!(&joins[0], ClientEvent::MemberJoined { member, member_count: 2, .. } if *member == HostId::SERVER)
    );
    a.send(
        Target::Group(group),
        "to the group",
        Delivery::ReliableOrdered,
    )
    .await
    .unwrap();
    a.send(Target::Server, "to the server", Delivery::Unreliable)
        .await
        .unwrap();
    // The datagram and the stream frame travel independently: take both, in any order.
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(
            wait_server(&mut server_events, |e| match e {
                ServerEvent::Message {
                    from,
                    group,
                    payload,
                    delivery,
                    ..
                } => Some((*from, *group, payload.clone(), *delivery)),
                _ => None,
            })
            .await,
        );
    }
    got.sort_by_key(|m| m.1.is_none());
    assert_eq!(
        got,
        vec![
            (
                a_id,
                Some(group),
                Bytes::from_static(b"to the group"),
                Delivery::ReliableOrdered
            ),
            (
                a_id,
                None,
                Bytes::from_static(b"to the server"),
                Delivery::Unreliable
            ),
        ]
    );

    server
        .send(
            ServerTarget::Group(group),
            "from the server",
            Delivery::ReliableOrdered,
        )
        .unwrap();
    let (from, payload, _, _) = wait_client(&mut a_events, message).await;
    assert_eq!(
        (from, payload),
        (HostId::SERVER, Bytes::from_static(b"from the server"))
    );
    assert!(matches!(
        server.send(
            ServerTarget::Host(a_id),
            vec![0u8; 100_000],
            Delivery::Unreliable
        ),
        Err(peergroup_server::SendError::TooLargeForDatagram { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_stops_reading_is_dropped_while_one_that_reads_keeps_up() {
    // Small queues, so a burst from A backlogs even C, which reads: C must be paced (A is
    // paused), never dropped; B, which never reads, must be dropped.
    let (server, mut server_events) = start_server_with(
        |c| {
            c.limits.client_queue_bytes = 256 * 1024;
            c.limits.max_message_len = 64 * 1024;
            c.timeouts.slow_consumer = Duration::from_secs(1);
        },
        Default::default(),
    )
    .await;
    let (a, mut a_events, a_id) = connect(&server, "a").await;
    let (_c, mut c_events, c_id) = connect(&server, "c").await;
    // B logs in by hand and then never reads its stream.
    let (raw, b_id) = raw_login(&server, &mut server_events, &[a_id, c_id]).await;
    let group = server
        .create_group(&[a_id, b_id, c_id], relay_only(), "")
        .unwrap();
    next_client_events(&mut a_events, 3).await;
    next_client_events(&mut c_events, 3).await;

    // 32 MiB to the group: far beyond B's flow-control window plus its 256 KiB queue.
    let payload = Bytes::from(vec![7u8; 32 * 1024]);
    let sender = {
        let a = a.clone();
        tokio::spawn(async move {
            for _ in 0..1024 {
                a.send(
                    Target::Group(group),
                    payload.clone(),
                    Delivery::ReliableOrdered,
                )
                .await
                .unwrap();
            }
        })
    };
    // C's application reads all the while (a client whose application stops reading
    // stops reading the server once its event queue is full, and is then a slow consumer
    // too): it gets all 1024 messages.
    let c_reads = tokio::spawn(async move {
        let mut received = 0;
        while received < 1024 {
            if wait_client(&mut c_events, message).await.0 == a_id {
                received += 1;
            }
        }
        c_events
    });
    let reason = wait_server(&mut server_events, |e| match e {
        ServerEvent::ClientDisconnected { host, reason } if *host == b_id => Some(reason.clone()),
        _ => None,
    })
    .await;
    assert_eq!(reason, DisconnectReason::SlowConsumer);
    let (code, text) = raw.closed().await;
    assert_eq!(code, peergroup_protocol::CloseCode::SlowConsumer.to_u64());
    assert!(text.contains("did not read fast enough"), "{text}");
    let mut c_events = c_reads.await.unwrap();
    sender.await.unwrap();
    assert_eq!(server.stats().clients, 2, "A and C are still connected");
    assert_quiet(&mut c_events, Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_reads_a_little_now_and_then_is_still_a_slow_consumer() {
    // B reads for 100 ms every 800 ms, so each time A waits for B's queue it drains
    // within the 1 s slow-consumer timeout; but B's queue is over its soft limit nearly
    // all the time. The allowance is counted across those waits, so B is dropped (it
    // used to keep A, and whoever else A sends to, waiting for ever).
    let (server, mut server_events) = start_server_with(
        |c| {
            c.limits.client_queue_bytes = 256 * 1024;
            c.limits.max_message_len = 64 * 1024;
            c.timeouts.slow_consumer = Duration::from_secs(1);
        },
        Default::default(),
    )
    .await;
    let (a, mut a_events, a_id) = connect(&server, "a").await;
    let (_b, mut b_events, b_id) = connect_with(&server, "b", |c| c.limits.event_queue = 4).await;
    server
        .create_group(&[a_id, b_id], relay_only(), "")
        .unwrap();
    next_client_events(&mut a_events, 2).await;
    next_client_events(&mut b_events, 2).await;

    let payload = Bytes::from(vec![7u8; 32 * 1024]);
    let sender = {
        let a = a.clone();
        tokio::spawn(async move {
            // Bounded: 64 MiB at most, far more than B takes in before it is dropped.
            for _ in 0..2_048 {
                if a.send(
                    Target::Host(b_id),
                    payload.clone(),
                    Delivery::ReliableOrdered,
                )
                .await
                .is_err()
                {
                    break;
                }
            }
        })
    };
    let hovering = tokio::spawn(async move {
        // At most 30 s of hovering (the test's wait below ends first): 700 ms asleep, then
        // 100 ms reading whatever arrives.
        for _ in 0..38 {
            tokio::time::sleep(Duration::from_millis(700)).await;
            let reading = async { while b_events.next().await.is_some() {} };
            let _ = tokio::time::timeout(Duration::from_millis(100), reading).await;
        }
    });
    let reason = wait_server(&mut server_events, |e| match e {
        ServerEvent::ClientDisconnected { host, reason } if *host == b_id => Some(reason.clone()),
        _ => None,
    })
    .await;
    assert_eq!(reason, DisconnectReason::SlowConsumer);
    hovering.abort();
    sender.abort();
    assert_eq!(server.stats().clients, 1, "A is still connected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_delivers_everything_already_sent_first() {
    let (server, mut server_events) = start_server().await;
    let (a, mut a_events, a_id) = connect(&server, "a").await;
    let (_b, mut b_events, b_id) = connect(&server, "b").await;
    server
        .create_group(&[a_id, b_id], relay_only(), "")
        .unwrap();
    next_client_events(&mut a_events, 2).await;
    next_client_events(&mut b_events, 2).await;
    for n in 0..2_000u32 {
        a.send(
            Target::Host(b_id),
            n.to_be_bytes().to_vec(),
            Delivery::ReliableOrdered,
        )
        .await
        .unwrap();
    }
    a.close().await;
    for expected in 0..2_000u32 {
        let (_, payload, _, _) = wait_client(&mut b_events, message).await;
        assert_eq!(payload.as_ref(), expected.to_be_bytes());
    }
    let reason = wait_server(&mut server_events, |e| match e {
        ServerEvent::ClientDisconnected { host, reason } if *host == a_id => Some(reason.clone()),
        _ => None,
    })
    .await;
    assert_eq!(
        reason,
        DisconnectReason::ClientClosed {
            reason: "client closed".into()
        }
    );
    assert_eq!(
        a.send(Target::Host(b_id), "late", Delivery::ReliableOrdered)
            .await,
        Err(SendError::Disconnected)
    );
}

/// Issue 12, finding 3, over QUIC: uploads naming many pairs that do not exist get one
/// refusal frame each (the whole upload refused past `MAX_RELAY_DESTS`), and the sender
/// gets back no more bytes than it sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_naming_many_bogus_destinations_get_one_refusal_each() {
    use peergroup_protocol::{
        decode_body, frame_to_bytes, FrameDecoder, ServerToClient, DEFAULT_MAX_FRAME_LEN,
        MAX_RELAY_DESTS,
    };
    let (server, mut server_events) = start_server().await;
    let (_a, mut a_events, a_id) = connect(&server, "a").await;
    let (mut raw, _raw_id) = raw_login(&server, &mut server_events, &[a_id]).await;
    let upload = |n: usize| ClientToServer::Relay {
        group: None,
        to_server: false,
        lane: Lane::Ordered { channel: 0 },
        priority: Priority::Medium,
        dests: (0..n as u64)
            .map(|i| RelayDest {
                pair: PairId::from_raw(9 << 32 | (1_000 + i)),
                seq: 1,
            })
            .collect(),
        payload: Bytes::new(),
    };
    let (over, at) = (upload(150_000), upload(MAX_RELAY_DESTS));
    let mut sent = 0;
    for frame in [&over, &at] {
        sent += frame_to_bytes(frame, DEFAULT_MAX_FRAME_LEN).unwrap().len();
        raw.send_frame(frame).await;
    }
    // The two answers, and then nothing more.
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
    let mut frames = Vec::new();
    let mut back = 0;
    let mut read_answers = async |frames: &mut Vec<ServerToClient>, wanted: usize| {
        while frames.len() < wanted {
            let chunk = raw.recv.read_chunk(64 << 10, true).await.unwrap().unwrap();
            decoder.push(&chunk.bytes);
            while let Some(body) = decoder.next_body().unwrap() {
                let frame = decode_body::<ServerToClient>(&body).unwrap();
                // Not answers: the login's, and resume's bookkeeping (a token after the
                // welcome, a confirmation of the uploads read, one per 100 ms at most).
                let bookkeeping = matches!(
                    frame,
                    ServerToClient::Welcome { .. }
                        | ServerToClient::ResumeToken { .. }
                        | ServerToClient::Received { .. }
                );
                if !bookkeeping {
                    back += 4 + body.len();
                    frames.push(frame);
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read_answers(&mut frames, 2))
        .await
        .expect("both refusals in time");
    let more = tokio::time::timeout(Duration::from_millis(300), read_answers(&mut frames, 3)).await;
    assert!(more.is_err(), "a third answer: {:?}", frames.last());
    assert_eq!(frames.len(), 2, "{:?}", &frames[..frames.len().min(4)]);
    assert_eq!(
        frames[0],
        ServerToClient::Refused {
            pair: None,
            group: None,
            reason: RefuseReason::TooManyDestinations,
        }
    );
    assert!(
        matches!(&frames[1], ServerToClient::RefusedMany { refused, .. } if refused.len() == MAX_RELAY_DESTS)
    );
    assert!(back <= sent, "{back} bytes back for {sent} sent");
    assert_quiet(&mut a_events, Duration::from_millis(200)).await;
}

/// Issue 12, finding 2, over QUIC: a peer sends B empty reliable messages numbered 2, 3,
/// ... through the relay and never 1. B holds at most `MAX_HELD_ARRIVALS` of them, then
/// ignores that peer (one `PeerIgnored`) and drops what it held; another peer's messages
/// still reach B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_fills_its_gap_is_ignored_after_a_bounded_number_of_messages() {
    use peergroup_client::{PeerFault, MAX_HELD_ARRIVALS};
    use peergroup_protocol::{decode_body, FrameDecoder, ServerToClient, DEFAULT_MAX_FRAME_LEN};
    let (server, mut server_events) = start_server().await;
    let (b, mut b_events, b_id) = connect(&server, "b").await;
    let (c, mut c_events, c_id) = connect(&server, "c").await;
    let (mut raw, raw_id) = raw_login(&server, &mut server_events, &[b_id, c_id]).await;
    let group = server
        .create_group(&[b_id, c_id, raw_id], relay_only(), "")
        .unwrap();
    next_client_events(&mut c_events, 3).await;
    // The raw client learns its pair with B.
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
    let pair = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let chunk = raw.recv.read_chunk(64 << 10, true).await.unwrap().unwrap();
            decoder.push(&chunk.bytes);
            while let Some(body) = decoder.next_body().unwrap() {
                if let ServerToClient::PeerUp { peer, pair, .. } =
                    decode_body::<ServerToClient>(&body).unwrap()
                {
                    if peer == b_id {
                        return pair;
                    }
                }
            }
        }
    })
    .await
    .expect("the pair with B");
    let sent = MAX_HELD_ARRIVALS as u64 + 1_000;
    let mut frames = Vec::new();
    for seq in 2..2 + sent {
        frames.extend_from_slice(
            &peergroup_protocol::frame_to_bytes(
                &ClientToServer::Relay {
                    group: None,
                    to_server: false,
                    lane: Lane::Ordered { channel: 0 },
                    priority: Priority::Medium,
                    dests: vec![RelayDest { pair, seq }].into(),
                    payload: Bytes::new(),
                },
                DEFAULT_MAX_FRAME_LEN,
            )
            .unwrap(),
        );
    }
    raw.send_bytes(&frames).await;
    let ignored = wait_client(&mut b_events, |e| match e {
        ClientEvent::PeerIgnored { peer, fault } if *peer == raw_id => Some(*fault),
        ClientEvent::Message { from, .. } if *from == raw_id => panic!("delivered"),
        _ => None,
    })
    .await;
    assert!(
        matches!(ignored, PeerFault::TooManyEarlyArrivals { held, .. } if held == MAX_HELD_ARRIVALS),
        "{ignored:?}"
    );
    // Everything after is discarded and counted; nothing from the raw client is delivered.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while b.peer_stats(raw_id).unwrap().discarded < sent - MAX_HELD_ARRIVALS as u64 {
        assert!(tokio::time::Instant::now() < deadline, "not all discarded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // C's messages still reach B.
    c.send(
        Target::Group(group),
        "still here",
        Delivery::ReliableOrdered,
    )
    .await
    .unwrap();
    let from = wait_client(&mut b_events, |e| match e {
        ClientEvent::Message { from, .. } => Some(*from),
        _ => None,
    })
    .await;
    assert_eq!(from, c_id);
}
