//! The WebSocket-over-TLS fallback on loopback (ARCHITECTURE.md, "Fallback over
//! WebSocket"): a WebSocket client and a QUIC client share a group and exchange reliable
//! messages exactly once and in order, and unreliable ones at most once and never older;
//! a WebSocket client's pair never goes direct, and one on WebSocket alone opens no UDP
//! socket; `Auto` picks QUIC when UDP works and WebSocket when it does not; a client that
//! loses UDP mid-session resumes over WebSocket with nothing lost; bad input over
//! WebSocket is refused with a clear close.

mod common;

use common::numbered::{read_numbered, send_numbered, Messages};
use common::udp_cut::Forwarder;
use common::*;
use futures_util::{SinkExt, StreamExt};
use peergroup_client::{
    ClientConfig, ClientEvent, Delivery, ServerTrust, Target, Transport, TransportChoice,
};
use peergroup_protocol::{frame_to_bytes, ClientToServer, Hello, PROTOCOL_VERSION};
use peergroup_server::{PairPath, Server, ServerConfig, ServerEvents};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio_tungstenite::tungstenite::Message;

/// Idle timeouts here (both sides), so a cut is noticed quickly.
const IDLE: Duration = Duration::from_secs(2);

fn short_idle(config: &mut ClientConfig) {
    config.timeouts.idle = IDLE;
    config.timeouts.keepalive = Duration::from_millis(500);
}

async fn server() -> (Server, ServerEvents) {
    start_server_with(
        |config: &mut ServerConfig| config.timeouts.idle = IDLE,
        peergroup_server::AuthHook::accept_all(),
    )
    .await
}

fn over_websocket(server: &Server) -> impl FnOnce(&mut ClientConfig) + '_ {
    move |config| {
        short_idle(config);
        config.transport = TransportChoice::WebSocketOnly;
        config.websocket_addr = server.websocket_addr();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_client_and_a_quic_client_exchange_everything_on_the_relay() {
    const COUNT: u32 = 1_500;
    const DATAGRAMS: u32 = 300;
    let (server, _server_events) = server().await;
    let (a, mut a_events, a_id) = connect_with(&server, "ws", over_websocket(&server)).await;
    let (b, mut b_events, b_id) = connect_with(&server, "quic", |config| {
        short_idle(config);
        config.transport = TransportChoice::QuicOnly;
    })
    .await;
    assert_eq!(a.transport(), Transport::WebSocket);
    assert_eq!(b.transport(), Transport::Quic);
    // A group that allows direct paths: the WebSocket client's pair still stays relayed.
    let group = server
        .create_group(&[a_id, b_id], peergroup_server::GroupOptions::default(), "")
        .unwrap();
    next_client_events(&mut a_events, 2).await;
    next_client_events(&mut b_events, 2).await;

    let a_sends = send_numbered(a, b_id, COUNT);
    let b_sends = send_numbered(b, a_id, COUNT);
    let (a_seen, b_seen) = tokio::join!(
        read_numbered(&mut a_events, COUNT as usize, Messages::Reliable),
        read_numbered(&mut b_events, COUNT as usize, Messages::Reliable)
    );
    let expected: Vec<u32> = (0..COUNT).collect();
    assert_eq!(
        a_seen.numbers, expected,
        "A got B's messages once, in order"
    );
    assert_eq!(
        b_seen.numbers, expected,
        "B got A's messages once, in order"
    );
    let (a, b) = (a_sends.await.unwrap(), b_sends.await.unwrap());
    for seen in [&a_seen, &b_seen] {
        assert!(
            !seen.other.iter().any(|e| matches!(
                e,
                ClientEvent::PathChanged {
                    path: PairPath::Direct,
                    ..
                }
            )),
            "a WebSocket client's pair never goes direct: {:?}",
            seen.other
        );
    }

    // Unreliable sequenced both ways, then a reliable marker: at most once, never older.
    for (client, to) in [(&a, b_id), (&b, a_id)] {
        for n in 0..DATAGRAMS {
            let _ = client
                .send(
                    Target::Host(to),
                    n.to_be_bytes().to_vec(),
                    Delivery::UnreliableSequenced,
                )
                .await;
            if n % 20 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        client
            .send(
                Target::Host(to),
                u32::MAX.to_be_bytes().to_vec(),
                Delivery::ReliableOrdered,
            )
            .await
            .unwrap();
    }
    for (name, events) in [("A", &mut a_events), ("B", &mut b_events)] {
        let mut numbers = Vec::new();
        let mut marker_at = None;
        loop {
            let wait = match marker_at {
                // Datagrams may trail the marker on QUIC.
                Some(at) => Duration::from_millis(500).saturating_sub(Instant::now() - at),
                None => Duration::from_secs(10),
            };
            let Ok(event) = tokio::time::timeout(wait, events.next()).await else {
                break;
            };
            match event.expect("events") {
                ClientEvent::Message {
                    payload, delivery, ..
                } => {
                    let n = u32::from_be_bytes(payload[..4].try_into().unwrap());
                    if !delivery.is_unreliable() {
                        assert_eq!(n, u32::MAX);
                        marker_at = Some(Instant::now());
                    } else {
                        numbers.push(n);
                    }
                }
                ClientEvent::Disconnected { reason } => panic!("{name} disconnected: {reason}"),
                _ => {}
            }
        }
        assert!(marker_at.is_some(), "{name} got the marker");
        assert!(
            numbers.windows(2).all(|w| w[0] < w[1]),
            "{name}: sequenced datagrams never repeat or go back: {numbers:?}"
        );
        assert!(!numbers.is_empty(), "{name}: some datagrams arrived");
    }

    let pair = server.pair_stats(a_id, b_id).expect("pair");
    assert_eq!(pair.path, PairPath::Relay);
    assert_eq!(pair.punch_attempts, 0, "never ordered to punch");
    let info = server.host_info(a_id).expect("host info");
    assert_eq!(info.transport, Transport::WebSocket);
    assert_eq!(server.host_info(b_id).unwrap().transport, Transport::Quic);
    assert_eq!(server.stats().websocket_clients, 1);
    // TCP hides its RTT; the WebSocket pings measure it, on both sides.
    for (side, rtt) in [("server", info.rtt), ("client", a.server_rtt())] {
        assert!(
            rtt > Duration::ZERO && rtt < Duration::from_secs(1),
            "{side}'s RTT over WebSocket on loopback: {rtt:?}"
        );
    }
    let _ = group;
    a.close().await;
    b.close().await;
}

/// A game tick's burst of unreliable sends on an idle WebSocket is no backlog: all of it
/// arrives. (The client used to hand each datagram to the socket writer's queue of 4
/// batches and drop it when full, so a burst lost most of itself: 37 % at a paced
/// 5,000 a second in the relay benchmark.)
/// An address no interface of this machine has (TEST-NET-1, RFC 5737): binding a UDP
/// socket to it fails, as opening one does where UDP is not allowed at all.
const UNBINDABLE: &str = "192.0.2.1:0";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_only_client_opens_no_udp_socket() {
    let (server, _server_events) = server().await;
    // Where no UDP socket can be opened, QUIC cannot even start...
    let mut quic = client_config(&server, "quic");
    quic.transport = TransportChoice::QuicOnly;
    quic.bind_addr = Some(UNBINDABLE.parse().unwrap());
    match peergroup_client::Client::connect(quic).await {
        Err(peergroup_client::ConnectError::Bind(_)) => {}
        other => panic!("QUIC without a UDP socket: {:?}", other.map(|_| ())),
    }
    // ...and WebSocket alone does not need one: it logs in and its messages go through.
    let (ws, mut ws_events, ws_id) = connect_with(&server, "ws", |config| {
        over_websocket(&server)(config);
        config.bind_addr = Some(UNBINDABLE.parse().unwrap());
    })
    .await;
    assert_eq!(ws.transport(), Transport::WebSocket);
    let error = ws.local_addr().expect_err("no UDP socket");
    assert_eq!(error.kind(), std::io::ErrorKind::Unsupported);
    let (other, mut other_events, other_id) = connect(&server, "other").await;
    server
        .create_group(
            &[ws_id, other_id],
            peergroup_server::GroupOptions::default(),
            "",
        )
        .unwrap();
    wait_client(&mut ws_events, |e| match e {
        ClientEvent::MemberJoined { member, .. } if *member == other_id => Some(()),
        _ => None,
    })
    .await;
    ws.send(
        Target::Host(other_id),
        b"hello".to_vec(),
        Delivery::ReliableOrdered,
    )
    .await
    .unwrap();
    let got = wait_client(&mut other_events, |e| match e {
        ClientEvent::Message { from, payload, .. } if *from == ws_id => Some(payload.clone()),
        _ => None,
    })
    .await;
    assert_eq!(&got[..], b"hello");
    ws.close().await;
    other.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_unreliable_messages_over_websocket_arrives_whole() {
    const BURST: u32 = 100;
    let (server, _server_events) = server().await;
    let (a, mut a_events, a_id) = connect_with(&server, "ws-a", over_websocket(&server)).await;
    let (_b, mut b_events, b_id) = connect_with(&server, "ws-b", over_websocket(&server)).await;
    server
        .create_group(&[a_id, b_id], peergroup_server::GroupOptions::default(), "")
        .unwrap();
    next_client_events(&mut a_events, 2).await;
    next_client_events(&mut b_events, 2).await;

    // Back to back, as a game loop sends its tick's updates: unreliable sends never wait.
    for n in 0..BURST {
        a.send(
            Target::Host(b_id),
            n.to_be_bytes().to_vec(),
            Delivery::Unreliable,
        )
        .await
        .unwrap();
    }
    let mut numbers = Vec::new();
    while numbers.len() < BURST as usize {
        let event = tokio::time::timeout(Duration::from_secs(5), b_events.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {BURST} arrived: {numbers:?}", numbers.len()))
            .expect("events");
        if let ClientEvent::Message { payload, .. } = event {
            numbers.push(u32::from_be_bytes(payload[..4].try_into().unwrap()));
        }
    }
    // One TCP stream end to end: nothing lost, nothing reordered.
    assert_eq!(numbers, (0..BURST).collect::<Vec<_>>());
}

/// A UDP socket that takes packets and never answers: a server whose UDP path is dead.
async fn black_hole() -> (UdpSocket, SocketAddr) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    (socket, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_connects_over_websocket_when_udp_is_dead_and_over_quic_when_it_works() {
    let (server, _server_events) = server().await;
    let (_hole, dead) = black_hole().await;
    let started = Instant::now();
    let (client, _events, _) = connect_with(&server, "auto", |config| {
        config.transport = TransportChoice::Auto;
        config.server_addr = dead;
        config.websocket_addr = server.websocket_addr();
    })
    .await;
    let took = started.elapsed();
    assert_eq!(client.transport(), Transport::WebSocket);
    assert!(
        took < Duration::from_secs(3),
        "the fallback starts after 250 ms, not after QUIC gives up: {took:?}"
    );
    let (quic, _events, _) = connect_with(&server, "auto-udp", |config| {
        config.transport = TransportChoice::Auto;
    })
    .await;
    assert_eq!(quic.transport(), Transport::Quic);
    assert_eq!(server.stats().websocket_clients, 1);
}

/// When both carriers of an `Auto` race connect, only the first up logs in: the other
/// closes before its hello. (Both used to say hello; the loser was dropped once the
/// winner was welcomed, and the server, which had logged it in, kept a phantom host
/// offline for the resume window: under load, the soak's stable groups could not form.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auto_race_where_both_carriers_connect_logs_in_once() {
    // Logins wait at the auth hook, so both attempts would be inside the server at once.
    let hellos = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let hook = {
        let hellos = hellos.clone();
        peergroup_server::AuthHook::new(move |_| {
            hellos.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async {
                tokio::time::sleep(Duration::from_millis(2_500)).await;
                peergroup_server::AuthDecision::accept()
            }
        })
    };
    let (server, _server_events) = start_server_with(
        |config: &mut ServerConfig| config.timeouts.idle = IDLE,
        hook,
    )
    .await;
    // UDP opens after WebSocket has started (250 ms): QUIC's handshake then completes on
    // its first retransmission (about 1 s), while WebSocket's login waits at the hook.
    let udp = Forwarder::start(server.local_addr()).await;
    udp.cut(true);
    let blackhole = udp.blackhole.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(400)).await;
        blackhole.store(false, std::sync::atomic::Ordering::Release);
    });
    let (client, _events, _) = connect_with(&server, "racer", |config| {
        config.transport = TransportChoice::Auto;
        config.server_addr = udp.addr;
        config.websocket_addr = server.websocket_addr();
    })
    .await;
    assert_eq!(
        client.transport(),
        Transport::WebSocket,
        "the first carrier up"
    );
    // Long enough for a second login through the hook, had a hello been sent.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        hellos.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one hello reached the server"
    );
    assert_eq!(server.stats().clients, 1);
}

/// A server at its handshake cap closes a new TCP connection before TLS, as it refuses a
/// QUIC connection at its first packet: "busy, try again later". A WebSocket client then
/// comes back with back-off within its connect timeout, as a QUIC one does, instead of
/// failing at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_client_refused_as_busy_comes_back_and_logs_in() {
    let (server, _server_events) = start_server_with(
        |config: &mut ServerConfig| {
            config.admission.max_handshakes = 1;
            config.admission.max_handshakes_per_source = 1;
        },
        peergroup_server::AuthHook::accept_all(),
    )
    .await;
    // A connection that never starts TLS holds the one handshake slot for 600 ms.
    let holder = tokio::net::TcpStream::connect(server.websocket_addr().unwrap())
        .await
        .unwrap();
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(600)).await;
        drop(holder);
    });
    // Let the server take it first.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let (client, _events, _) = connect_with(&server, "patient", over_websocket(&server)).await;
    assert_eq!(client.transport(), Transport::WebSocket);
    assert!(
        server.stats().admission_refusals >= 1,
        "the first attempts were refused"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "logged in only once the slot was free: {:?}",
        started.elapsed()
    );
    release.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_loses_udp_mid_session_resumes_over_websocket_with_nothing_lost() {
    const COUNT: u32 = 1_500;
    let (server, _server_events) = server().await;
    let forwarder = Forwarder::start(server.local_addr()).await;
    let through = forwarder.addr;
    let (a, mut a_events, a_id) = connect_with(&server, "a", |config| {
        short_idle(config);
        config.transport = TransportChoice::Auto;
        config.server_addr = through;
        config.websocket_addr = server.websocket_addr();
    })
    .await;
    assert_eq!(a.transport(), Transport::Quic);
    let (b, mut b_events, b_id) = connect_with(&server, "b", short_idle).await;
    server
        .create_group(&[a_id, b_id], relay_only(), "")
        .unwrap();
    next_client_events(&mut a_events, 2).await;
    next_client_events(&mut b_events, 2).await;

    let a_sends = send_numbered(a, b_id, COUNT);
    let b_sends = send_numbered(b, a_id, COUNT);
    // Mid-stream, A's UDP dies for good: only the WebSocket can bring it back.
    tokio::time::sleep(Duration::from_millis(800)).await;
    forwarder.cut(true);
    let (a_seen, b_seen) = tokio::join!(
        read_numbered(&mut a_events, COUNT as usize, Messages::Reliable),
        read_numbered(&mut b_events, COUNT as usize, Messages::Reliable)
    );
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
        a_seen
            .other
            .iter()
            .any(|e| matches!(e, ClientEvent::Resumed { .. })),
        "A resumed: {:?}",
        a_seen.other
    );
    assert!(
        !b_seen
            .other
            .iter()
            .any(|e| matches!(e, ClientEvent::MemberLeft { .. })),
        "the peer saw no leave: {:?}",
        b_seen.other
    );
    let a = a_sends.await.unwrap();
    let _b = b_sends.await.unwrap();
    assert_eq!(a.host_id(), a_id);
    assert_eq!(a.transport(), Transport::WebSocket);
    assert_eq!(
        server.host_info(a_id).unwrap().transport,
        Transport::WebSocket
    );
    a.send(
        Target::Host(b_id),
        COUNT.to_be_bytes().to_vec(),
        Delivery::ReliableOrdered,
    )
    .await
    .unwrap();
    assert_eq!(
        read_numbered(&mut b_events, 1, Messages::Reliable)
            .await
            .numbers,
        vec![COUNT]
    );
}

type RawSocket =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// A WebSocket to the server spoken by hand, with a client certificate or without.
async fn raw_websocket(server: &Server, with_identity: bool) -> Result<RawSocket, String> {
    let trust = ServerTrust::Fingerprint(server.fingerprint());
    let tls = peergroup_client::raw_tls_client_config(&trust, with_identity).unwrap();
    let tcp = tokio::net::TcpStream::connect(server.websocket_addr().unwrap())
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("peergroup").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (socket, _) = tokio_tungstenite::client_async("wss://peergroup/", tls)
        .await
        .map_err(|e| e.to_string())?;
    Ok(socket)
}

/// The close frame the server ends `socket` with: its code and reason.
async fn close_of(socket: &mut RawSocket) -> (u16, String) {
    loop {
        let next = tokio::time::timeout(WAIT, socket.next())
            .await
            .expect("the server closes in time");
        match next {
            Some(Ok(Message::Close(Some(frame)))) => {
                return (u16::from(frame.code), frame.reason.as_str().to_string())
            }
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

/// Waits for the server to end a connection that sent an oversized message: a close
/// with 4004 (`FrameTooLarge`), or a reset, since its close frame may be lost to the
/// reset its unread bytes cause; never a hang, and never another close code.
async fn too_large_or_reset(socket: &mut RawSocket) {
    loop {
        let next = tokio::time::timeout(WAIT, socket.next())
            .await
            .expect("the server ends it in time");
        match next {
            Some(Ok(Message::Close(Some(frame)))) => {
                assert_eq!(u16::from(frame.code), 4004, "FrameTooLarge: {frame:?}");
                return;
            }
            Some(Ok(_)) => continue,
            None | Some(Err(_)) => return,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_over_websocket_is_refused_with_a_clear_close() {
    let (server, _server_events) = server().await;
    // A text message: nothing in the protocol is text.
    let mut socket = raw_websocket(&server, true).await.unwrap();
    socket.send(Message::text("hello")).await.unwrap();
    let (code, reason) = close_of(&mut socket).await;
    assert_eq!(code, 4003, "ProtocolViolation: {reason}");
    assert!(reason.contains("text"), "{reason}");

    // A frame over the hello's size limit (16 KiB before login).
    let mut socket = raw_websocket(&server, true).await.unwrap();
    let mut frame = (1u32 << 20).to_be_bytes().to_vec();
    frame.extend_from_slice(&[0; 64]);
    socket.send(Message::binary(frame)).await.unwrap();
    let (code, reason) = close_of(&mut socket).await;
    assert_eq!(code, 4004, "FrameTooLarge: {reason}");

    // Before login, a message over the WebSocket's own limit (64 KiB) is refused by the
    // WebSocket layer itself, before its bytes reach the frame reader (which would call
    // these zeros a malformed hello, 4003): what an unauthenticated connection can make
    // the server buffer is one such message.
    let mut socket = raw_websocket(&server, true).await.unwrap();
    let _ = tokio::time::timeout(WAIT, socket.send(Message::binary(vec![0u8; 128 << 10]))).await;
    too_large_or_reset(&mut socket).await;

    // A message over the WebSocket's own limit, after login.
    let mut socket = raw_websocket(&server, true).await.unwrap();
    let hello = ClientToServer::Hello(Hello {
        version: PROTOCOL_VERSION,
        login: Default::default(),
    });
    let hello = frame_to_bytes(&hello, 1 << 20).unwrap();
    socket.send(Message::binary(hello)).await.unwrap();
    let huge = vec![0u8; 4 << 20];
    let _ = tokio::time::timeout(WAIT, socket.send(Message::binary(huge))).await;
    // The server stops reading at the message's header; its close frame may be lost to
    // the reset its unread bytes cause, so a reset passes too (but never a hang).
    too_large_or_reset(&mut socket).await;

    // No client certificate: TLS 1.3 refuses it, and the WebSocket never opens.
    let refused = raw_websocket(&server, false).await;
    if let Ok(mut socket) = refused {
        // TLS 1.3 reports the refusal after the client's side of the handshake: the
        // first read then fails.
        let next = tokio::time::timeout(WAIT, socket.next()).await.unwrap();
        assert!(
            !matches!(next, Some(Ok(Message::Binary(_)))),
            "no frame without a certificate: {next:?}"
        );
    }
    // The server is unharmed.
    let (client, _events, _) = connect_with(&server, "after", over_websocket(&server)).await;
    assert_eq!(client.transport(), Transport::WebSocket);
    poll_until(
        || format!("only the last client is left: {:?}", server.stats().clients),
        || server.stats().clients == 1,
    )
    .await;
}

/// Messages larger than one WebSocket message (`WS_MESSAGE_BYTES`, 64 KiB) go out as
/// several and arrive whole, both ways: the frames are a byte stream across messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_larger_than_one_websocket_message_arrive_whole() {
    use peergroup_transport::websocket::WS_MESSAGE_BYTES;
    let (server, _server_events) = server().await;
    let (a, mut a_events, a_id) = connect_with(&server, "ws", over_websocket(&server)).await;
    let (b, mut b_events, b_id) = connect_with(&server, "quic", |config| {
        short_idle(config);
        config.transport = TransportChoice::QuicOnly;
    })
    .await;
    server
        .create_group(&[a_id, b_id], peergroup_server::GroupOptions::default(), "")
        .unwrap();
    next_client_events(&mut a_events, 2).await;
    next_client_events(&mut b_events, 2).await;

    // Sizes around and well past one message; each payload's bytes say where they sit.
    let sizes = [
        WS_MESSAGE_BYTES - 1,
        WS_MESSAGE_BYTES + 1,
        3 * WS_MESSAGE_BYTES + 17,
    ];
    let payload = |size: usize| (0..size).map(|i| (i % 251) as u8).collect::<Vec<u8>>();
    for (client, to) in [(&a, b_id), (&b, a_id)] {
        for size in sizes {
            client
                .send(Target::Host(to), payload(size), Delivery::ReliableOrdered)
                .await
                .unwrap();
        }
    }
    for (name, events) in [("B from A", &mut b_events), ("A from B", &mut a_events)] {
        let mut got = Vec::new();
        while got.len() < sizes.len() {
            let event = tokio::time::timeout(Duration::from_secs(20), events.next())
                .await
                .unwrap_or_else(|_| panic!("{name}: timed out after {} messages", got.len()))
                .expect("event stream ended");
            if let ClientEvent::Message { payload, .. } = event {
                got.push(payload);
            }
        }
        for (received, size) in got.iter().zip(sizes) {
            assert_eq!(received.len(), size, "{name}: a whole message");
            assert!(
                received.as_ref() == payload(size).as_slice(),
                "{name}: the bytes of a {size}-byte message arrived as sent"
            );
        }
    }
    drop((a, b));
}
