//! Session resume over real QUIC on loopback (ARCHITECTURE.md, "Resume"): a client whose
//! traffic to the server is black-holed for a few seconds comes back as the same host and
//! no reliable message is lost or duplicated either way; an outage longer than the
//! server's window ends in an ordinary `MemberLeft` on the peer; a spent token, or one
//! presented by another identity, is refused and changes nothing.
//!
//! The cut-off client reaches the server through a small UDP forwarder in this file that
//! can drop everything in both directions. Idle timeouts are shortened (2 s, with 500 ms
//! keep-alives) so the loss is noticed quickly.

mod common;

use common::numbered::{read_numbered, send_numbered, Messages};
use common::udp_cut::Forwarder;
use common::*;
use peergroup_client::{Client, ClientConfig, ClientEvent, ClientEvents, Delivery, Target};
use peergroup_protocol::{
    decode_body, frame_to_bytes, ClientToServer, CloseCode, HostId, Resume, ResumeToken,
    ServerToClient, DEFAULT_MAX_FRAME_LEN, PROTOCOL_VERSION,
};
use peergroup_server::{Server, ServerConfig, ServerEvent, ServerEvents};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// The idle timeout both sides use here (QUIC takes the smaller of the two).
const IDLE: Duration = Duration::from_secs(2);

fn short_idle(config: &mut ClientConfig) {
    config.timeouts.idle = IDLE;
    config.timeouts.keepalive = Duration::from_millis(500);
}

async fn server_with(window: Duration) -> (Server, ServerEvents) {
    start_server_with(
        |config: &mut ServerConfig| {
            config.timeouts.idle = IDLE;
            config.resume.window = window;
        },
        peergroup_server::AuthHook::accept_all(),
    )
    .await
}

/// `a` through a forwarder, `b` straight to the server, both in one relay-only group,
/// every join notice read.
async fn two_in_a_group(
    server: &Server,
) -> (
    Forwarder,
    (Client, ClientEvents, HostId),
    (Client, ClientEvents, HostId),
) {
    let forwarder = Forwarder::start(server.local_addr()).await;
    let through = forwarder.addr;
    let mut a = connect_with(server, "a", |config| {
        short_idle(config);
        config.server_addr = through;
    })
    .await;
    let mut b = connect_with(server, "b", short_idle).await;
    server.create_group(&[a.2, b.2], relay_only(), "").unwrap();
    next_client_events(&mut a.1, 2).await;
    next_client_events(&mut b.1, 2).await;
    (forwarder, a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cut_off_for_seconds_resumes_as_the_same_host_and_loses_nothing() {
    const COUNT: u32 = 1_500;
    let (server, mut server_events) = server_with(Duration::from_secs(30)).await;
    let (forwarder, (a, mut a_events, a_id), (b, mut b_events, b_id)) =
        two_in_a_group(&server).await;

    let a_sends = send_numbered(a, b_id, COUNT);
    let b_sends = send_numbered(b, a_id, COUNT);
    // Mid-stream (the sends take about 3 s), everything between A and the server is
    // dropped for 4 s: longer than the idle timeout, so both sides notice.
    tokio::time::sleep(Duration::from_millis(800)).await;
    forwarder.cut(true);
    let restore = tokio::spawn({
        let blackhole = forwarder.blackhole.clone();
        async move {
            tokio::time::sleep(Duration::from_secs(4)).await;
            blackhole.store(false, Ordering::Release);
        }
    });

    let (a_seen, b_seen) = tokio::join!(
        read_numbered(&mut a_events, COUNT as usize, Messages::All),
        read_numbered(&mut b_events, COUNT as usize, Messages::All)
    );
    restore.await.unwrap();
    let expected: Vec<u32> = (0..COUNT).collect();
    assert_eq!(
        a_seen.numbers, expected,
        "A got B's messages once, in order"
    );
    assert_eq!(
        b_seen.numbers, expected,
        "B got A's messages once, in order"
    );
    assert!(
        b_seen.other.is_empty(),
        "the peer saw nothing of the outage: {:?}",
        b_seen.other
    );
    let lost = a_seen
        .other
        .iter()
        .position(|e| matches!(e, ClientEvent::ConnectionLost { .. }))
        .unwrap_or_else(|| panic!("A saw the loss: {:?}", a_seen.other));
    let resumed = a_seen
        .other
        .iter()
        .position(|e| matches!(e, ClientEvent::Resumed { .. }))
        .unwrap_or_else(|| panic!("A saw the resume: {:?}", a_seen.other));
    assert!(lost < resumed);

    let a = a_sends.await.unwrap();
    let _b = b_sends.await.unwrap();
    assert_eq!(a.host_id(), a_id);
    // The server kept A as the same host: offline, then back; never gone.
    let mut lifecycle = Vec::new();
    while let Ok(Some(event)) =
        tokio::time::timeout(Duration::from_millis(200), server_events.next()).await
    {
        match event {
            ServerEvent::ClientOffline { host, .. } => lifecycle.push(("offline", host)),
            ServerEvent::ClientResumed { host, .. } => lifecycle.push(("resumed", host)),
            ServerEvent::ClientDisconnected { host, .. } => lifecycle.push(("gone", host)),
            _ => {}
        }
    }
    assert!(
        lifecycle == [("resumed", a_id)] || lifecycle == [("offline", a_id), ("resumed", a_id)],
        "{lifecycle:?}"
    );
    assert_eq!(server.stats().clients, 2);
    // And the resumed session carries new traffic both ways.
    a.send(
        Target::Host(b_id),
        COUNT.to_be_bytes().to_vec(),
        Delivery::ReliableOrdered,
    )
    .await
    .unwrap();
    assert_eq!(
        read_numbered(&mut b_events, 1, Messages::All).await.numbers,
        vec![COUNT]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_longer_than_the_window_ends_in_an_ordinary_member_left() {
    let (server, mut server_events) = server_with(Duration::from_secs(2)).await;
    let (forwarder, (_a, mut a_events, a_id), (_b, mut b_events, _)) =
        two_in_a_group(&server).await;

    forwarder.cut(true);
    // The server keeps A for its window once it notices the loss, then removes it.
    wait_server(&mut server_events, |e| match e {
        ServerEvent::ClientOffline { host, .. } if *host == a_id => Some(()),
        ServerEvent::ClientDisconnected { .. } => panic!("removed before the window: {e:?}"),
        _ => None,
    })
    .await;
    wait_server(&mut server_events, |e| match e {
        ServerEvent::ClientDisconnected { host, .. } if *host == a_id => Some(()),
        ServerEvent::ClientResumed { .. } => panic!("resumed through a black hole: {e:?}"),
        _ => None,
    })
    .await;
    let left = wait_client(&mut b_events, |e| match e {
        ClientEvent::MemberLeft { member, .. } => Some(*member),
        _ => None,
    })
    .await;
    assert_eq!(left, a_id);
    assert_eq!(server.stats().clients, 1);

    // A tried to come back for the window, then gave up.
    let events: Vec<ClientEvent> = next_client_events(&mut a_events, 2).await;
    assert!(
        matches!(events[0], ClientEvent::ConnectionLost { .. }),
        "{events:?}"
    );
    assert!(
        matches!(events[1], ClientEvent::Disconnected { .. }),
        "{events:?}"
    );
    forwarder.cut(false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_resume_off_a_lost_client_is_removed_at_once() {
    let (server, mut server_events) = server_with(Duration::ZERO).await;
    let (forwarder, (_a, mut a_events, a_id), (_b, mut b_events, _)) =
        two_in_a_group(&server).await;
    forwarder.cut(true);
    wait_server(&mut server_events, |e| match e {
        ServerEvent::ClientDisconnected { host, .. } if *host == a_id => Some(()),
        ServerEvent::ClientOffline { .. } => panic!("kept with resume off: {e:?}"),
        _ => None,
    })
    .await;
    let left = wait_client(&mut b_events, |e| match e {
        ClientEvent::MemberLeft { member, .. } => Some(*member),
        _ => None,
    })
    .await;
    assert_eq!(left, a_id);
    let events = next_client_events(&mut a_events, 1).await;
    assert!(
        matches!(events[0], ClientEvent::Disconnected { .. }),
        "no resume without a token: {events:?}"
    );
}

/// Reads one frame from a raw main stream.
async fn read_frame(recv: &mut quinn::RecvStream) -> ServerToClient {
    let mut len = [0u8; 4];
    recv.read_exact(&mut len).await.expect("frame length");
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    recv.read_exact(&mut body).await.expect("frame body");
    decode_body(&body).expect("a server frame")
}

/// Opens a new connection from `endpoint` (whose identity it presents) and sends a resume.
async fn raw_resume(
    server: &Server,
    endpoint: &quinn::Endpoint,
    host: HostId,
    token: ResumeToken,
    received: u64,
) -> (quinn::Connection, quinn::RecvStream) {
    let connection = endpoint
        .connect(server.local_addr(), "peergroup")
        .unwrap()
        .await
        .expect("handshake");
    let (mut send, recv) = connection.open_bi().await.expect("stream");
    let frame = ClientToServer::Resume(Resume {
        version: PROTOCOL_VERSION,
        host,
        token,
        received,
    });
    let frame = frame_to_bytes(&frame, DEFAULT_MAX_FRAME_LEN).unwrap();
    send.write_all(&frame).await.expect("write");
    std::mem::forget(send); // keep the stream open
    (connection, recv)
}

async fn refusal(connection: &quinn::Connection) -> (CloseCode, String) {
    match tokio::time::timeout(WAIT, connection.closed()).await {
        Ok(quinn::ConnectionError::ApplicationClosed(close)) => (
            CloseCode::from_u64(close.error_code.into_inner()),
            String::from_utf8_lossy(&close.reason).into_owned(),
        ),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_token_or_another_identitys_is_refused_and_changes_nothing() {
    let (server, mut server_events) = server_with(Duration::from_secs(30)).await;
    let (mut raw, host) = raw_login(&server, &mut server_events, &[]).await;
    let ServerToClient::Welcome { host_id, .. } = read_frame(&mut raw.recv).await else {
        panic!("no welcome");
    };
    assert_eq!(host_id, host);
    let ServerToClient::ResumeToken {
        token: first,
        window_ms,
    } = read_frame(&mut raw.recv).await
    else {
        panic!("no resume token after the welcome");
    };
    assert_eq!(window_ms, 30_000);

    // The old connection is still open: the resume replaces it.
    let (second, mut second_recv) = raw_resume(&server, &raw.endpoint, host, first, 2).await;
    let ServerToClient::Resumed {
        received,
        token: next,
        ..
    } = read_frame(&mut second_recv).await
    else {
        panic!("no resume answer");
    };
    assert_eq!(received, 0, "nothing was uploaded");
    assert_ne!(next, first, "the token rotates");
    assert_eq!(refusal(&raw.connection).await.0, CloseCode::Replaced);
    wait_server(&mut server_events, |e| match e {
        ServerEvent::ClientResumed { host: h, .. } if *h == host => Some(()),
        _ => None,
    })
    .await;

    // Until the client sends something on the new connection, the spent token would
    // still be taken (the answer may have been lost: see
    // `a_resume_whose_answer_was_lost_can_be_made_again_with_the_same_token` in the
    // registry's tests). A clock request, answered, shows the client has the answer.
    let mut control = second.open_uni().await.expect("control stream");
    let request = ClientToServer::TimeRequest { token: 7 };
    control
        .write_all(&frame_to_bytes(&request, DEFAULT_MAX_FRAME_LEN).unwrap())
        .await
        .expect("write");
    while !matches!(
        read_frame(&mut second_recv).await,
        ServerToClient::Time { token: 7, .. }
    ) {}

    // Now the spent token is refused, with a reason.
    let (replayed, _recv) = raw_resume(&server, &raw.endpoint, host, first, 2).await;
    let (code, reason) = refusal(&replayed).await;
    assert_eq!(code, CloseCode::ResumeRefused);
    assert_eq!(reason, "stale or unknown resume token");

    // The current token from another identity is refused too.
    let stranger = raw_connect(&server).await;
    let (stolen, _recv) = raw_resume(&server, &stranger.endpoint, host, next, 2).await;
    let (code, reason) = refusal(&stolen).await;
    assert_eq!(code, CloseCode::ResumeRefused);
    assert_eq!(reason, "the token belongs to another identity");

    // Neither changed anything: the session is still up on its connection, and the
    // current token still works.
    assert!(
        second.close_reason().is_none(),
        "the session's connection stays"
    );
    assert_eq!(server.stats().clients, 1, "the stranger never logged in");
    let (_third, mut third_recv) = raw_resume(&server, &raw.endpoint, host, next, 2).await;
    assert!(matches!(
        read_frame(&mut third_recv).await,
        ServerToClient::Resumed { .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_path_keeps_carrying_messages_while_the_server_connection_is_down() {
    let (server, _server_events) = server_with(Duration::from_secs(30)).await;
    let forwarder = Forwarder::start(server.local_addr()).await;
    let through = forwarder.addr;
    let (a, mut a_events, a_id) = connect_with(&server, "a", |config| {
        short_idle(config);
        config.server_addr = through;
    })
    .await;
    let (_b, mut b_events, b_id) = connect_with(&server, "b", short_idle).await;
    server
        .create_group(&[a_id, b_id], peergroup_server::GroupOptions::default(), "")
        .unwrap();
    // The pair punches on loopback (A's host candidate is its own socket, not the
    // forwarder's), so its path does not pass the forwarder.
    for events in [&mut a_events, &mut b_events] {
        wait_client(events, |e| match e {
            ClientEvent::PathChanged {
                path: peergroup_protocol::PairPath::Direct,
                ..
            } => Some(()),
            _ => None,
        })
        .await;
    }

    forwarder.cut(true);
    wait_client(&mut a_events, |e| match e {
        ClientEvent::ConnectionLost { .. } => Some(()),
        _ => None,
    })
    .await;
    // Sent while A has no server connection at all: they go direct, and arrive.
    for n in 0..100u32 {
        a.send(
            Target::Host(b_id),
            n.to_be_bytes().to_vec(),
            Delivery::ReliableOrdered,
        )
        .await
        .unwrap();
    }
    let mut got = Vec::new();
    while got.len() < 100 {
        let (n, path) = wait_client(&mut b_events, |e| match e {
            ClientEvent::Message { payload, path, .. } => {
                Some((u32::from_be_bytes(payload[..4].try_into().unwrap()), *path))
            }
            _ => None,
        })
        .await;
        assert_eq!(path, peergroup_protocol::Path::Direct);
        got.push(n);
    }
    assert_eq!(got, (0..100).collect::<Vec<_>>());

    forwarder.cut(false);
    wait_client(&mut a_events, |e| match e {
        ClientEvent::Resumed { .. } => Some(()),
        ClientEvent::Disconnected { .. } => panic!("not resumed: {e:?}"),
        _ => None,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_that_needs_frames_past_the_bound_is_refused_and_the_host_removed() {
    let (server, mut server_events) = start_server_with(
        |config: &mut ServerConfig| {
            config.timeouts.idle = IDLE;
            // Far less than what B sends A while A is cut off.
            config.resume.max_unconfirmed_bytes = 1 << 10;
        },
        peergroup_server::AuthHook::accept_all(),
    )
    .await;
    let (forwarder, (_a, mut a_events, a_id), (b, mut b_events, _)) = two_in_a_group(&server).await;

    forwarder.cut(true);
    // Written to A's connection before the server notices it is gone: kept for a resume
    // only up to the bound, so the oldest of them are dropped.
    for n in 0..200u32 {
        b.send(
            Target::Host(a_id),
            n.to_be_bytes().to_vec(),
            Delivery::ReliableOrdered,
        )
        .await
        .unwrap();
    }
    wait_client(&mut a_events, |e| match e {
        ClientEvent::ConnectionLost { .. } => Some(()),
        _ => None,
    })
    .await;
    forwarder.cut(false);

    // A's resume is refused with the reason, and the session ends cleanly on both sides.
    let reason = wait_client(&mut a_events, |e| match e {
        ClientEvent::Disconnected { reason } => Some(reason.clone()),
        ClientEvent::Resumed { .. } => panic!("resumed past the bound"),
        _ => None,
    })
    .await;
    match reason {
        peergroup_client::DisconnectReason::ServerClosed { code, reason } => {
            assert_eq!(code, CloseCode::ResumeRefused);
            assert!(reason.contains("no longer holds"), "{reason}");
        }
        other => panic!("expected a refusal, got {other}"),
    }
    wait_server(&mut server_events, |e| match e {
        ServerEvent::ClientDisconnected { host, .. } if *host == a_id => Some(()),
        _ => None,
    })
    .await;
    let left = wait_client(&mut b_events, |e| match e {
        ClientEvent::MemberLeft { member, .. } => Some(*member),
        _ => None,
    })
    .await;
    assert_eq!(left, a_id);
    assert_eq!(server.stats().clients, 1);
}
