//! Admission before login over real QUIC on loopback (issue 12, finding 7): what a
//! connection that has not logged in may cost, and that the limits refuse with a reason.

mod common;

use common::*;
use peergroup_client::{Client, ConnectError, ServerTrust};
use peergroup_protocol::CloseCode;
use peergroup_server::{AuthDecision, AuthHook, Server};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A QUIC connection to the server from `bind` (TLS done, the stream opened, nothing
/// sent), or quinn's error.
async fn try_raw(server: &Server, bind: &str) -> Result<RawClient, quinn::ConnectionError> {
    let config =
        peergroup_client::raw_quic_client_config(&ServerTrust::Fingerprint(server.fingerprint()))
            .expect("raw config");
    let mut endpoint = quinn::Endpoint::client(bind.parse().unwrap()).expect("bind");
    endpoint.set_default_client_config(config);
    let connecting = endpoint.connect(server.local_addr(), "peergroup").unwrap();
    let connection = tokio::time::timeout(WAIT, connecting)
        .await
        .expect("an answer to the handshake")?;
    let (send, recv) = connection.open_bi().await?;
    Ok(RawClient {
        endpoint,
        connection,
        send,
        recv,
        control: None,
    })
}

/// A raw connection whose handshake is under way at the server: TLS done and one byte
/// of a hello sent (a stream is only seen by the server once data arrives on it).
async fn stalled(server: &Server, bind: &str) -> RawClient {
    let mut raw = try_raw(server, bind).await.expect("connects");
    raw.send_bytes(&[0]).await;
    raw
}

fn is_refused(error: &quinn::ConnectionError) -> bool {
    matches!(error, quinn::ConnectionError::ConnectionClosed(close)
        if close.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED)
}

/// Waits until `check` holds of the server's stats.
async fn until_stats(server: &Server, check: impl Fn(&peergroup_server::ServerStats) -> bool) {
    tokio::time::timeout(WAIT, async {
        while !check(&server.stats()) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("stats never got there: {:?}", server.stats()));
}

#[tokio::test]
async fn a_hello_longer_than_its_cap_is_refused_at_the_length_prefix() {
    // Before: a 1 MiB hello prefix was accepted and its bytes buffered until the message
    // limit (1 MiB + 64 KiB) per connection, with nobody logged in.
    let (server, _events) = start_server().await;
    let mut raw = try_raw(&server, "127.0.0.1:0").await.unwrap();
    raw.send_bytes(&(1u32 << 20).to_be_bytes()).await;
    let (code, reason) = raw.closed().await;
    assert_eq!(
        CloseCode::from_u64(code),
        CloseCode::FrameTooLarge,
        "{reason}"
    );
}

#[tokio::test]
async fn partial_hellos_are_closed_at_the_hello_deadline() {
    let (server, _events) = start_server_with(
        |c| c.admission.hello_timeout = Duration::from_secs(1),
        AuthHook::accept_all(),
    )
    .await;
    let mut raws = Vec::new();
    for _ in 0..20 {
        let mut raw = try_raw(&server, "127.0.0.1:0").await.unwrap();
        // A hello of 8,000 bytes, of which 1,000 ever arrive.
        raw.send_bytes(&8_000u32.to_be_bytes()).await;
        raw.send_bytes(&[0; 1_000]).await;
        raws.push(raw);
    }
    for raw in &raws {
        let (code, reason) = raw.closed().await;
        assert_eq!(
            CloseCode::from_u64(code),
            CloseCode::HandshakeTimeout,
            "{reason}"
        );
        assert!(reason.contains("no hello"), "{reason}");
    }
    until_stats(&server, |s| s.handshake_failures == 20).await;
    // Their slots are free again: a client logs in.
    let (_client, _events, _) = connect(&server, "late").await;
}

#[tokio::test]
async fn the_handshake_cap_refuses_at_the_first_packet_and_frees_slots_as_they_end() {
    let (server, _events) = start_server_with(
        |c| {
            c.admission.max_handshakes = 4;
            c.admission.validate_above = 1_000;
        },
        AuthHook::accept_all(),
    )
    .await;
    let mut raws = Vec::new();
    for _ in 0..4 {
        raws.push(stalled(&server, "127.0.0.1:0").await);
    }
    let error = try_raw(&server, "127.0.0.1:0")
        .await
        .err()
        .expect("refused");
    assert!(is_refused(&error), "{error}");
    assert_eq!(server.stats().admission_refusals, 1);
    // A library client tries again, backing off, and says why once its connect timeout
    // runs out.
    let mut config = client_config(&server, "x");
    config.timeouts.connect = Duration::from_millis(600);
    let refused = Client::connect(config).await.err();
    assert!(
        matches!(&refused, Some(ConnectError::Refused { code: CloseCode::ServerFull, reason })
            if reason.contains("busy")),
        "{refused:?}"
    );
    assert!(server.stats().admission_refusals >= 2);
    // One stalled connection goes: its slot is free.
    let gone = raws.pop().unwrap();
    gone.connection.close(0u8.into(), b"bye");
    until_stats(&server, |s| s.handshake_failures >= 1).await;
    let (_client, _events, _) = connect(&server, "now").await;
}

#[tokio::test]
async fn one_source_cannot_take_every_handshake_slot() {
    let (server, _events) = start_server_with(
        |c| {
            c.admission.max_handshakes_per_source = 3;
            c.admission.validate_above = 1_000;
        },
        AuthHook::accept_all(),
    )
    .await;
    let mut raws = Vec::new();
    for _ in 0..3 {
        raws.push(stalled(&server, "127.0.0.1:0").await);
    }
    let error = try_raw(&server, "127.0.0.1:0")
        .await
        .err()
        .expect("refused");
    assert!(is_refused(&error), "{error}");
    // Another source still gets in.
    let mut other = try_raw(&server, "127.0.0.2:0")
        .await
        .expect("another source");
    other.send_hello().await;
    let welcome = tokio::time::timeout(WAIT, other.recv.read(&mut [0; 64]))
        .await
        .expect("a welcome");
    assert!(matches!(welcome, Ok(Some(n)) if n > 0), "{welcome:?}");
    assert_eq!(server.stats().admission_refusals, 1);
}

#[tokio::test]
async fn many_handshakes_in_flight_require_address_validation() {
    let (server, _events) =
        start_server_with(|c| c.admission.validate_above = 2, AuthHook::accept_all()).await;
    let _raws = [
        stalled(&server, "127.0.0.1:0").await,
        stalled(&server, "127.0.0.1:0").await,
    ];
    assert_eq!(server.stats().address_validations, 0);
    // quinn's client answers the Retry by itself: the login goes through, one round trip
    // later.
    let (_client, _events, _) = connect(&server, "validated").await;
    assert_eq!(server.stats().address_validations, 1);
}

/// An auth hook that counts its calls.
fn counting_hook() -> (AuthHook, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let hook = AuthHook::from_fn(move |_| {
        counted.fetch_add(1, Ordering::SeqCst);
        AuthDecision::accept()
    });
    (hook, calls)
}

#[tokio::test]
async fn a_full_server_refuses_before_the_hello_and_never_runs_the_auth_hook() {
    let (hook, calls) = counting_hook();
    let (server, _events) = start_server_with(|c| c.limits.max_clients = 1, hook).await;
    let (_first, _events1, _) = connect(&server, "first").await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    for _ in 0..5 {
        let refused = Client::connect(client_config(&server, "second"))
            .await
            .err();
        assert!(
            matches!(&refused, Some(ConnectError::Refused { code: CloseCode::ServerFull, reason })
                if reason.contains("client limit")),
            "{refused:?}"
        );
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the hook never ran for them"
    );
    assert_eq!(server.stats().connections_refused, 5);
}

#[tokio::test]
async fn clients_per_source_are_capped_and_other_sources_still_log_in() {
    let (hook, calls) = counting_hook();
    let (server, _events) =
        start_server_with(|c| c.admission.max_clients_per_source = 1, hook).await;
    let (first, _events1, _) = connect(&server, "first").await;
    let refused = Client::connect(client_config(&server, "second"))
        .await
        .err();
    assert!(
        matches!(&refused, Some(ConnectError::Refused { code: CloseCode::ServerFull, reason })
            if reason.contains("from this address")),
        "{refused:?}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let bind: SocketAddr = "127.0.0.2:0".parse().unwrap();
    let (_other, _events2, _) = connect_with(&server, "other", |c| c.bind_addr = Some(bind)).await;
    // A client that leaves frees its source's slot.
    drop(first);
    let (_again, _events3, _) = tokio::time::timeout(WAIT, async {
        loop {
            if let Ok((client, mut events)) = Client::connect(client_config(&server, "again")).await
            {
                let host = wait_client(&mut events, |e| match e {
                    peergroup_client::ClientEvent::Connected { host_id } => Some(*host_id),
                    _ => None,
                })
                .await;
                return (client, events, host);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the slot frees");
}

#[tokio::test]
async fn before_login_a_connection_can_have_only_one_hello_in_flight() {
    // Before: quinn's default windows let a connection that had not logged in (here: its
    // auth hook still deciding) have 1.25 MB in flight on its stream, all of it held by
    // the server.
    let release = Arc::new(tokio::sync::Notify::new());
    let waiting = release.clone();
    let hook = AuthHook::new(move |_| {
        let waiting = waiting.clone();
        async move {
            waiting.notified().await;
            AuthDecision::accept()
        }
    });
    let (server, _events) = start_server_with(|_| {}, hook).await;
    let mut raw = try_raw(&server, "127.0.0.1:0").await.unwrap();
    raw.send_hello().await;
    // The hook holds the login: the server reads nothing more from the stream, so what
    // the client may still send is what QUIC flow control allows.
    let chunk = vec![0u8; 16 << 10];
    let mut accepted = 0;
    while let Ok(written) =
        tokio::time::timeout(Duration::from_millis(300), raw.send.write(&chunk)).await
    {
        accepted += written.expect("the connection stays up");
        assert!(
            accepted <= 64 << 10,
            "{accepted} bytes in flight before login"
        );
    }
    assert!(
        accepted <= 32 << 10,
        "{accepted} bytes in flight before login"
    );
    release.notify_one();
}

#[tokio::test]
async fn a_client_refused_as_busy_gets_in_once_a_slot_frees() {
    let (server, _events) = start_server_with(
        |c| {
            c.admission.max_handshakes = 2;
            c.admission.validate_above = 1_000;
        },
        AuthHook::accept_all(),
    )
    .await;
    let mut stalled = vec![
        stalled(&server, "127.0.0.1:0").await,
        stalled(&server, "127.0.0.1:0").await,
    ];
    let connecting = tokio::spawn(Client::connect(client_config(&server, "patient")));
    until_stats(&server, |s| s.admission_refusals >= 1).await;
    stalled.pop().unwrap().connection.close(0u8.into(), b"bye");
    let (client, _events) = tokio::time::timeout(WAIT, connecting)
        .await
        .expect("connects within the connect timeout")
        .unwrap()
        .expect("logged in");
    assert_ne!(client.host_id(), peergroup_protocol::HostId::SERVER);
}
