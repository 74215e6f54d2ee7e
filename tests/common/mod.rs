//! Shared set-up for the loopback integration tests: a server on 127.0.0.1, clients that
//! pin its certificate, and bounded waits for events.
#![allow(dead_code)]

pub mod numbered;
pub mod udp_cut;

use bytes::Bytes;
use peergroup_client::{Client, ClientConfig, ClientEvent, ClientEvents, ServerTrust};
use peergroup_protocol::{
    frame_to_bytes, ClientStream, ClientToServer, HostId, DEFAULT_MAX_FRAME_LEN,
};
use peergroup_server::{
    AuthHook, CancellationToken, Identity, Server, ServerConfig, ServerEvent, ServerEvents,
};
use std::future::Future;
use std::time::Duration;

/// How long any single expected thing may take before a test fails.
pub const WAIT: Duration = Duration::from_secs(10);

pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

pub async fn start_server() -> (Server, ServerEvents) {
    start_server_with(|_| {}, AuthHook::accept_all()).await
}

pub async fn start_server_with(
    adjust: impl FnOnce(&mut ServerConfig),
    auth: AuthHook,
) -> (Server, ServerEvents) {
    init_logs();
    let identity = Identity::generate(&["peergroup"]).expect("identity");
    let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), identity);
    adjust(&mut config);
    Server::start_with_auth(config, auth, CancellationToken::new())
        .await
        .expect("server starts")
}

pub fn client_config(server: &Server, login: &str) -> ClientConfig {
    let mut config = ClientConfig::new(
        server.local_addr(),
        ServerTrust::Fingerprint(server.fingerprint()),
    );
    config.login = Bytes::copy_from_slice(login.as_bytes());
    // QUIC only, so a slow handshake on a loaded machine never lets the WebSocket
    // fallback win and change what a test of QUIC behaviour sees; `websocket.rs` tests
    // the fallback and `Auto` itself.
    config.transport = peergroup_client::TransportChoice::QuicOnly;
    config
}

/// Connects a client and returns it once `Connected` was seen.
pub async fn connect(server: &Server, login: &str) -> (Client, ClientEvents, HostId) {
    connect_with(server, login, |_| {}).await
}

/// As [`connect`], with the config adjusted first.
pub async fn connect_with(
    server: &Server,
    login: &str,
    adjust: impl FnOnce(&mut ClientConfig),
) -> (Client, ClientEvents, HostId) {
    let mut config = client_config(server, login);
    adjust(&mut config);
    let (client, mut events) = Client::connect(config).await.expect("client connects");
    let host = wait_client(&mut events, |e| match e {
        ClientEvent::Connected { host_id } => Some(*host_id),
        _ => None,
    })
    .await;
    assert_eq!(host, client.host_id());
    (client, events, host)
}

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Polls `done` every 20 ms until it holds; panics after 5 s with `what` (called then, so
/// it can describe the state that never came).
pub async fn poll_until(what: impl Fn() -> String, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "{}", what());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Skips events until `pick` accepts one.
pub async fn wait_client<T>(
    events: &mut ClientEvents,
    mut pick: impl FnMut(&ClientEvent) -> Option<T>,
) -> T {
    within("a client event", async {
        loop {
            let event = events.next().await.expect("event stream ended");
            if let Some(found) = pick(&event) {
                return found;
            }
        }
    })
    .await
}

/// The next `n` events, in order, leaving out path changes (pairs in direct-P2P groups
/// punch by themselves on loopback; `direct.rs` tests those events).
pub async fn next_client_events(events: &mut ClientEvents, n: usize) -> Vec<ClientEvent> {
    let mut out = Vec::new();
    while out.len() < n {
        let event = within("the next client event", events.next())
            .await
            .expect("stream ended");
        if !matches!(event, ClientEvent::PathChanged { .. }) {
            out.push(event);
        }
    }
    out
}

/// Skips server events until `pick` accepts one.
pub async fn wait_server<T>(
    events: &mut ServerEvents,
    mut pick: impl FnMut(&ServerEvent) -> Option<T>,
) -> T {
    within("a server event", async {
        loop {
            let event = events.next().await.expect("server event stream ended");
            if let Some(found) = pick(&event) {
                return found;
            }
        }
    })
    .await
}

/// How `member`'s join of `group` completed, skipping other server events.
pub async fn join_ack(
    events: &mut ServerEvents,
    group: peergroup_server::GroupId,
    member: HostId,
) -> Result<(), peergroup_server::JoinAckError> {
    wait_server(events, |e| match e {
        ServerEvent::JoinAckComplete {
            group: g,
            member: m,
            result,
        } if *g == group && *m == member => Some(*result),
        _ => None,
    })
    .await
}

/// Asserts no client event other than a path change arrives within `quiet`.
pub async fn assert_quiet(events: &mut ClientEvents, quiet: Duration) {
    let deadline = tokio::time::Instant::now() + quiet;
    while let Ok(event) = tokio::time::timeout_at(deadline, events.next()).await {
        if !matches!(event, Some(ClientEvent::PathChanged { .. })) {
            panic!("expected no event, got {event:?}");
        }
    }
}

/// Group options for tests of the relay itself: members never go direct.
pub fn relay_only() -> peergroup_server::GroupOptions {
    peergroup_server::GroupOptions {
        direct_p2p: false,
        ..peergroup_server::GroupOptions::default()
    }
}

/// A raw connection that speaks the wire protocol by hand.
pub struct RawClient {
    pub endpoint: quinn::Endpoint,
    pub connection: quinn::Connection,
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
    /// The control stream, opened by the first control frame sent.
    pub control: Option<quinn::SendStream>,
}

/// A raw client that has logged in, and the id the server gave it (the first client to
/// connect that is not one of `known`).
pub async fn raw_login(
    server: &Server,
    server_events: &mut ServerEvents,
    known: &[HostId],
) -> (RawClient, HostId) {
    let mut raw = raw_connect(server).await;
    raw.send_hello().await;
    let host = wait_server(server_events, |e| match e {
        ServerEvent::ClientConnected { host, .. } if !known.contains(host) => Some(*host),
        _ => None,
    })
    .await;
    (raw, host)
}

pub async fn raw_connect(server: &Server) -> RawClient {
    let config =
        peergroup_client::raw_quic_client_config(&ServerTrust::Fingerprint(server.fingerprint()))
            .expect("raw config");
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).expect("bind");
    endpoint.set_default_client_config(config);
    let connection = within(
        "a raw handshake",
        endpoint.connect(server.local_addr(), "peergroup").unwrap(),
    )
    .await
    .expect("raw handshake");
    let (send, recv) = connection.open_bi().await.expect("stream");
    RawClient {
        endpoint,
        connection,
        send,
        recv,
        control: None,
    }
}

impl RawClient {
    /// Sends a frame on the stream it belongs on (opening the control stream for the first
    /// control frame).
    pub async fn send_frame(&mut self, message: &ClientToServer) {
        let frame = frame_to_bytes(message, DEFAULT_MAX_FRAME_LEN).unwrap();
        let send = match message.stream() {
            ClientStream::Main => &mut self.send,
            ClientStream::Control => self.control_stream().await,
        };
        send.write_all(&frame).await.expect("write");
    }

    /// The control stream, opened on first use.
    pub async fn control_stream(&mut self) -> &mut quinn::SendStream {
        if self.control.is_none() {
            let opened = within("the control stream", self.connection.open_uni()).await;
            self.control = Some(opened.expect("control stream"));
        }
        self.control.as_mut().expect("opened above")
    }

    /// Logs in with the current protocol version and an empty login.
    pub async fn send_hello(&mut self) {
        self.send_frame(&ClientToServer::Hello(peergroup_protocol::Hello {
            version: peergroup_protocol::PROTOCOL_VERSION,
            login: Bytes::new(),
        }))
        .await;
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        self.send.write_all(bytes).await.expect("write");
    }

    /// Waits for the server to close the connection; returns its close code and text.
    pub async fn closed(&self) -> (u64, String) {
        match within("the server to close", self.connection.closed()).await {
            quinn::ConnectionError::ApplicationClosed(close) => (
                close.error_code.into_inner(),
                String::from_utf8_lossy(&close.reason).into_owned(),
            ),
            other => panic!("expected an application close, got {other}"),
        }
    }
}
