//! The wire over real QUIC on loopback: login, version check, malformed and oversized
//! frames, certificate pinning and shutdown. Every bad input ends only the offending
//! connection, with a clear close code and reason, and the server serves everyone else.

mod common;

use bytes::Bytes;
use common::*;
use peergroup_client::{
    Client, ClientConfig, ClientEvent, CloseCode, ConnectError, Delivery, Fingerprint, ServerTrust,
    Target,
};
use peergroup_protocol::{
    frame_to_bytes, ClientToServer, Hello, DEFAULT_MAX_FRAME_LEN, PROTOCOL_VERSION,
};
use peergroup_server::{AuthDecision, AuthHook, GroupOptions, ServerEvent};
use std::time::Duration;

fn hello(version: u32) -> ClientToServer {
    ClientToServer::Hello(Hello {
        version,
        login: Bytes::from_static(b"me"),
    })
}

/// Two connected clients in one group, to prove the server still serves them.
async fn bystanders(
    server: &peergroup_server::Server,
) -> (
    Client,
    peergroup_client::ClientEvents,
    peergroup_server::GroupId,
) {
    let (a, mut a_events, a_id) = connect(server, "a").await;
    let (b, mut b_events, b_id) = connect(server, "b").await;
    let group = server
        .create_group(&[a_id, b_id], GroupOptions::default(), "")
        .unwrap();
    next_client_events(&mut a_events, 2).await;
    next_client_events(&mut b_events, 2).await;
    std::mem::forget(b); // keep B connected for the whole test
    (a, b_events, group)
}

async fn still_served(
    a: &Client,
    b_events: &mut peergroup_client::ClientEvents,
    group: peergroup_server::GroupId,
) {
    a.send(
        Target::Group(group),
        "still here",
        Delivery::ReliableOrdered,
    )
    .await
    .unwrap();
    let payload = wait_client(b_events, |e| match e {
        ClientEvent::Message { payload, .. } => Some(payload.clone()),
        _ => None,
    })
    .await;
    assert_eq!(payload, Bytes::from_static(b"still here"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auth_hook_sees_the_login_and_its_rejection_reason_reaches_the_client() {
    let auth = AuthHook::from_fn(|request| {
        if request.login.as_ref() == b"let me in" {
            AuthDecision::Accept {
                app_data: Bytes::from_static(b"level 3"),
            }
        } else {
            AuthDecision::reject("unknown player")
        }
    });
    let (server, mut server_events) = start_server_with(|_| {}, auth).await;

    let error = Client::connect(client_config(&server, "intruder"))
        .await
        .unwrap_err();
    match error {
        ConnectError::Refused { code, reason } => {
            assert_eq!(code, CloseCode::AuthRejected);
            assert_eq!(reason, "unknown player");
        }
        other => panic!("expected a refusal, got {other}"),
    }

    let (client, _events, host) = connect(&server, "let me in").await;
    assert_eq!(client.host_data(host), Some(Bytes::from_static(b"level 3")));
    let (connected, app_data) = wait_server(&mut server_events, |e| match e {
        ServerEvent::ClientConnected { host, app_data, .. } => Some((*host, app_data.clone())),
        _ => None,
    })
    .await;
    assert_eq!(
        (connected, app_data),
        (host, Bytes::from_static(b"level 3"))
    );
    assert_eq!(
        server.stats().clients,
        1,
        "the rejected client was never registered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_mismatch_closes_with_a_specific_code_and_readable_reason() {
    let (server, _server_events) = start_server().await;
    let (a, mut b_events, group) = bystanders(&server).await;

    let mut raw = raw_connect(&server).await;
    raw.send_frame(&hello(PROTOCOL_VERSION + 1)).await;
    let (code, reason) = raw.closed().await;
    assert_eq!(code, CloseCode::VersionMismatch.to_u64());
    assert_eq!(
        reason,
        format!(
            "protocol version mismatch: server speaks {PROTOCOL_VERSION}, client sent {}",
            PROTOCOL_VERSION + 1
        )
    );

    // A future hello with fields this build cannot parse still gets the version message.
    let mut raw = raw_connect(&server).await;
    let mut future_hello = vec![0u8, 0, 0, 0, 0x00, 0x07, 0xff, 0xff, 0xff];
    let len = (future_hello.len() - 4) as u32;
    future_hello[..4].copy_from_slice(&len.to_be_bytes());
    raw.send_bytes(&future_hello).await;
    let (code, reason) = raw.closed().await;
    assert_eq!(code, CloseCode::VersionMismatch.to_u64());
    assert!(reason.contains("client sent 7"), "{reason}");

    still_served(&a, &mut b_events, group).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_close_only_the_sender_with_a_protocol_violation() {
    let (server, mut server_events) = start_server().await;
    let (a, mut b_events, group) = bystanders(&server).await;

    // Garbage instead of a hello.
    let mut raw = raw_connect(&server).await;
    raw.send_bytes(&[0, 0, 0, 3, 0x09, 0x09, 0x09]).await;
    let (code, reason) = raw.closed().await;
    assert_eq!(code, CloseCode::ProtocolViolation.to_u64());
    assert!(reason.contains("hello"), "{reason}");

    // A valid login, then a frame that does not decode.
    let mut raw = raw_connect(&server).await;
    raw.send_frame(&hello(PROTOCOL_VERSION)).await;
    raw.send_bytes(&[0, 0, 0, 2, 0x02, 0xff]).await;
    let (code, reason) = raw.closed().await;
    assert_eq!(code, CloseCode::ProtocolViolation.to_u64());
    assert!(reason.starts_with("malformed frame"), "{reason}");
    let reason = wait_server(&mut server_events, |e| match e {
        ServerEvent::ClientDisconnected { reason, .. } => Some(reason.clone()),
        _ => None,
    })
    .await;
    assert!(
        matches!(reason, peergroup_server::DisconnectReason::ProtocolError { ref detail } if detail.starts_with("malformed")),
        "{reason:?}"
    );

    // A second hello.
    let mut raw = raw_connect(&server).await;
    raw.send_frame(&hello(PROTOCOL_VERSION)).await;
    raw.send_frame(&hello(PROTOCOL_VERSION)).await;
    let (code, reason) = raw.closed().await;
    assert_eq!(code, CloseCode::ProtocolViolation.to_u64());
    assert_eq!(reason, "a second hello");

    // Each frame has its stream: an ack on the main stream...
    let mut raw = raw_connect(&server).await;
    raw.send_frame(&hello(PROTOCOL_VERSION)).await;
    let ack = ClientToServer::Ack { notices: 0 };
    raw.send_bytes(&frame_to_bytes(&ack, DEFAULT_MAX_FRAME_LEN).unwrap())
        .await;
    let (code, reason) = raw.closed().await;
    assert_eq!(code, CloseCode::ProtocolViolation.to_u64());
    assert_eq!(reason, "an ack on the main stream");

    // ...and a relay upload on the control stream are protocol violations.
    let mut raw = raw_connect(&server).await;
    raw.send_frame(&hello(PROTOCOL_VERSION)).await;
    let relay = ClientToServer::Relay {
        group: None,
        to_server: true,
        lane: peergroup_protocol::Lane::Unordered,
        priority: peergroup_protocol::Priority::Medium,
        dests: Default::default(),
        payload: Bytes::from_static(b"misplaced"),
    };
    let frame = frame_to_bytes(&relay, DEFAULT_MAX_FRAME_LEN).unwrap();
    raw.control_stream().await.write_all(&frame).await.unwrap();
    let (code, reason) = raw.closed().await;
    assert_eq!(code, CloseCode::ProtocolViolation.to_u64());
    assert_eq!(reason, "a relay upload on the control stream");

    // Bytes after the last frame's end that never complete a frame, then the stream ends.
    let mut raw = raw_connect(&server).await;
    raw.send_frame(&hello(PROTOCOL_VERSION)).await;
    raw.send_bytes(&[0, 0]).await;
    raw.send.finish().unwrap();
    let (code, reason) = raw.closed().await;
    assert_eq!(code, CloseCode::ProtocolViolation.to_u64());
    assert_eq!(reason, "stream ended inside a frame");

    // A garbage datagram, once logged in (datagrams before login are dropped unread, so
    // wait for the first byte of the welcome).
    let mut raw = raw_connect(&server).await;
    raw.send_frame(&hello(PROTOCOL_VERSION)).await;
    let mut first = [0u8; 1];
    tokio::time::timeout(WAIT, raw.recv.read_exact(&mut first))
        .await
        .expect("the welcome in time")
        .expect("the welcome");
    raw.connection
        .send_datagram(Bytes::from_static(&[0x05, 0x01]))
        .unwrap();
    let (code, _) = raw.closed().await;
    assert_eq!(code, CloseCode::ProtocolViolation.to_u64());

    still_served(&a, &mut b_events, group).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_length_prefix_is_refused_before_anything_is_allocated() {
    let (server, _server_events) =
        start_server_with(|c| c.limits.max_message_len = 4096, AuthHook::accept_all()).await;
    let (a, mut b_events, group) = bystanders(&server).await;

    let mut raw = raw_connect(&server).await;
    raw.send_frame(&hello(PROTOCOL_VERSION)).await;
    // Claims 4 GiB and sends none of it: the server must refuse at the prefix.
    raw.send_bytes(&u32::MAX.to_be_bytes()).await;
    let (code, reason) = raw.closed().await;
    assert_eq!(code, CloseCode::FrameTooLarge.to_u64());
    assert_eq!(
        reason,
        format!(
            "frame of {} bytes exceeds the maximum of {} bytes",
            u32::MAX,
            4096 + peergroup_protocol::FRAME_HEADROOM
        )
    );
    assert!(
        matches!(
            a.send(
                Target::Group(group),
                vec![0u8; 8192],
                Delivery::ReliableOrdered
            )
            .await,
            Err(peergroup_client::SendError::TooLarge { .. })
        ),
        "the client learns the server's limit from the welcome"
    );
    still_served(&a, &mut b_events, group).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_whose_certificate_does_not_match_the_pin_is_refused() {
    let (server, _server_events) = start_server().await;
    let mut config = client_config(&server, "x");
    config.server_trust = ServerTrust::Fingerprint(Fingerprint([0xab; 32]));
    let error = Client::connect(config).await.unwrap_err();
    assert!(
        matches!(
            error,
            ConnectError::PinMismatch { expected, presented }
                if expected == Fingerprint([0xab; 32]) && presented == server.fingerprint()
        ),
        "{error}"
    );
    assert_eq!(server.stats().clients, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_to_an_address_where_nothing_listens_is_unreachable() {
    // A port with nothing behind it: bound, then released.
    let addr = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut config = ClientConfig::new(addr, ServerTrust::Fingerprint(Fingerprint([7; 32])));
    config.timeouts.connect = Duration::from_millis(400);
    let error = Client::connect(config).await.unwrap_err();
    assert!(
        matches!(error, ConnectError::Unreachable { addr: tried, waited }
            if tried == addr && waited >= Duration::from_millis(400)),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_connects_but_never_welcomes_is_a_login_timeout() {
    // The auth hook takes longer than the client waits.
    let auth = AuthHook::new(|_| async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        AuthDecision::accept()
    });
    let (server, _events) = start_server_with(|_| {}, auth).await;
    let mut config = client_config(&server, "slow");
    config.timeouts.connect = Duration::from_millis(400);
    let error = Client::connect(config).await.unwrap_err();
    assert!(
        matches!(error, ConnectError::Timeout(t) if t == Duration::from_millis(400)),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_every_client_with_server_shutdown() {
    let (server, mut server_events) = start_server().await;
    let (_a, mut a_events, _) = connect(&server, "a").await;
    server.shutdown();
    let reason = wait_client(&mut a_events, |e| match e {
        ClientEvent::Disconnected { reason } => Some(reason.clone()),
        _ => None,
    })
    .await;
    assert!(
        matches!(
            &reason,
            peergroup_client::DisconnectReason::ServerClosed {
                code: CloseCode::ServerShutdown,
                ..
            }
        ),
        "{reason:?}"
    );
    // The event stream ends once drained.
    tokio::time::timeout(WAIT, async {
        while server_events.next().await.is_some() {}
    })
    .await
    .expect("server events end after shutdown");
}
