//! The login: QUIC to the server (coming back with backoff while it refuses as busy), or
//! WebSocket over TLS, or both raced (`TransportChoice::Auto`, happy eyeballs), then the
//! hello on the main stream and the server's welcome, all within the connect timeout.
//! In a race only the connections race (RFC 8305 races connection set-up): the first
//! carrier up claims the login and the other closes before its hello, so the server never
//! logs in a second host that would then go offline as a phantom.
//! What fails on the way is named by `connect_failure.rs`.

use crate::config::{ClientConfig, TransportChoice, WEBSOCKET_DELAY};
use crate::connect_failure::LoginProgress;
use crate::driver::shared::Dial;
use crate::driver::wire::{ServerSend, ServerWire};
use crate::error::ConnectError;
use crate::tls::RefusedCertificate;
use bytes::Bytes;
use peergroup_protocol::{
    decode_body, frame_to_bytes, ClientToServer, CloseCode, Hello, HostId, ServerToClient,
    DEFAULT_MAX_FRAME_LEN, PROTOCOL_VERSION,
};
use peergroup_transport::tokio_rustls::TlsConnector;
use peergroup_transport::tokio_tungstenite::client_async_with_config;
use peergroup_transport::websocket::{self, ws_config, BoxedIo};
use peergroup_transport::{CarrierSource, ConnectionEnd, FrameReader, ReadEnd, WsConnection};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The largest frame body the client takes from the server over WebSocket, bytes, until
/// the welcome (and for the WebSocket's message limit, which cannot change later): the
/// server's frames are bounded by its own `max_frame_len`, which the welcome only names
/// once the socket is set up. 16 MiB, tungstenite's default frame limit.
const MAX_SERVER_FRAME: u32 = 16 << 20;

/// The first wait before connecting again to a server that refused as busy; it doubles
/// up to [`BUSY_MAX_BACKOFF`], each wait jittered by up to half, within the connect timeout.
const BUSY_FIRST_BACKOFF: Duration = Duration::from_millis(50);
const BUSY_MAX_BACKOFF: Duration = Duration::from_secs(1);

/// `wait` times a random factor in [0.5, 1.5), so clients refused together do not all
/// come back together.
pub(super) fn jittered(wait: Duration) -> Duration {
    use ring::rand::SecureRandom;
    let mut byte = [0u8; 1];
    let _ = ring::rand::SystemRandom::new().fill(&mut byte);
    wait.mul_f64(0.5 + f64::from(byte[0]) / 256.0)
}

/// A connection the server welcomed: its main stream, and what the welcome said.
pub(super) struct LoggedIn {
    pub connection: ServerWire,
    pub send: ServerSend,
    pub recv: FrameReader<CarrierSource>,
    pub host_id: HostId,
    pub app_data: Bytes,
    pub max_frame_len: u32,
}

/// Connects to the server over the carrier `dial` chooses, logs in and waits for the
/// welcome. With [`TransportChoice::Auto`], QUIC first and WebSocket [`WEBSOCKET_DELAY`]
/// later unless QUIC has finished its handshake (at once if QUIC fails before that);
/// the first carrier whose handshake completes says the hello, and the other closes
/// without one. QUIC goes out on `endpoint`, which only WebSocket alone may do without.
///
/// # Errors
/// As [`crate::Client::connect`]: with `Auto`, QUIC's error if QUIC reached the server,
/// else WebSocket's. [`ConnectError::Bind`] if QUIC is asked for without an endpoint.
pub(super) async fn log_in(
    endpoint: Option<&quinn::Endpoint>,
    dial: &Dial,
    config: &ClientConfig,
    refused: &RefusedCertificate,
) -> Result<LoggedIn, ConnectError> {
    let quic_up = AtomicBool::new(false);
    let claim = AtomicBool::new(false);
    match (dial.transport, endpoint) {
        (TransportChoice::WebSocketOnly, _) => {
            log_in_websocket(dial, config, &AtomicBool::new(false), &claim).await
        }
        (TransportChoice::QuicOnly, Some(endpoint)) => {
            log_in_quic(endpoint, dial, config, refused, &quic_up, &claim).await
        }
        (TransportChoice::Auto, Some(endpoint)) => {
            race(endpoint, dial, config, refused, &quic_up).await
        }
        (TransportChoice::QuicOnly | TransportChoice::Auto, None) => Err(ConnectError::Bind(
            std::io::Error::other("QUIC needs the client's UDP socket"),
        )),
    }
}

type Attempt<'a> = Pin<Box<dyn Future<Output = Result<LoggedIn, ConnectError>> + Send + 'a>>;

/// Happy eyeballs between QUIC and WebSocket (RFC 8305, sections 5 and 8).
async fn race(
    endpoint: &quinn::Endpoint,
    dial: &Dial,
    config: &ClientConfig,
    refused: &RefusedCertificate,
    quic_up: &AtomicBool,
) -> Result<LoggedIn, ConnectError> {
    // Set by the first carrier up: it alone says the hello.
    let claim = AtomicBool::new(false);
    let mut quic: Option<Attempt<'_>> = Some(Box::pin(log_in_quic(
        endpoint, dial, config, refused, quic_up, &claim,
    )));
    // Set once the WebSocket's TCP connection is up: its error then says more than QUIC's.
    let tcp_up = AtomicBool::new(false);
    let mut ws: Option<Attempt<'_>> = None;
    let mut ws_started = false;
    let start_ws = tokio::time::sleep(WEBSOCKET_DELAY);
    tokio::pin!(start_ws);
    let (mut quic_error, mut ws_error) = (None, None);
    loop {
        if quic.is_none() && ws.is_none() && ws_started {
            // Both failed: QUIC's error if it reached the server (the server said no,
            // and would over WebSocket too), else WebSocket's if TCP reached something
            // (UDP may be blocked), else QUIC's (nothing answers at all).
            let quic_error = quic_error.unwrap_or(ConnectError::Lost("no QUIC attempt".into()));
            let websocket_says_more =
                !quic_up.load(Ordering::Relaxed) && tcp_up.load(Ordering::Relaxed);
            return Err(match ws_error {
                Some(ws_error) if websocket_says_more => ws_error,
                _ => quic_error,
            });
        }
        // Decided inside, acted on outside: the attempts are borrowed while it waits.
        let step = tokio::select! {
            outcome = async { quic.as_mut().expect("checked").await }, if quic.is_some() => {
                Step::Quic(outcome)
            }
            outcome = async { ws.as_mut().expect("checked").await }, if ws.is_some() => {
                Step::WebSocket(outcome)
            }
            () = &mut start_ws, if !ws_started => Step::Delay,
        };
        match step {
            Step::Quic(Ok(logged_in)) | Step::WebSocket(Ok(logged_in)) => return Ok(logged_in),
            Step::Quic(Err(error)) => {
                quic = None;
                tracing::debug!(%error, "QUIC login failed");
                if !ws_started && quic_up.load(Ordering::Relaxed) {
                    // The server answered over QUIC and said no.
                    return Err(error);
                }
                quic_error = Some(error);
                if !ws_started {
                    ws_started = true;
                    ws = Some(Box::pin(log_in_websocket(dial, config, &tcp_up, &claim)));
                }
            }
            Step::WebSocket(Err(error)) => {
                ws = None;
                tracing::debug!(%error, "WebSocket login failed");
                ws_error = Some(error);
            }
            Step::Delay => {
                ws_started = true;
                if quic_up.load(Ordering::Relaxed) {
                    // QUIC finished its handshake in time: it gets the login alone.
                    tracing::debug!("QUIC is up; no WebSocket attempt");
                } else {
                    tracing::debug!("no QUIC handshake yet; starting WebSocket too");
                    ws = Some(Box::pin(log_in_websocket(dial, config, &tcp_up, &claim)));
                }
            }
        }
    }
}

/// What the race waited for.
enum Step {
    Quic(Result<LoggedIn, ConnectError>),
    WebSocket(Result<LoggedIn, ConnectError>),
    /// The connection attempt delay passed.
    Delay,
}

/// Claims the login for the carrier whose handshake just completed: `true` for the
/// first; a later one must close without a hello.
fn claim_login(claim: &AtomicBool) -> bool {
    !claim.swap(true, Ordering::AcqRel)
}

/// The other carrier claimed the login first.
fn lost_the_race() -> ConnectError {
    ConnectError::Lost("the other carrier connected first".into())
}

/// WebSocket over TLS: TCP, TLS 1.3 with the same trust and identity as QUIC, the
/// WebSocket handshake, the hello and the welcome, within the connect timeout.
/// `tcp_up` is set once the TCP connection is made; the hello goes out only if this
/// attempt claims `claim` first.
async fn log_in_websocket(
    dial: &Dial,
    config: &ClientConfig,
    tcp_up: &AtomicBool,
    claim: &AtomicBool,
) -> Result<LoggedIn, ConnectError> {
    let refused_busy = AtomicBool::new(false);
    let attempt = async {
        // A server busy with other logins closes the TCP connection before TLS, meaning
        // "try again later" as QUIC's refusal at the first packet does: so the client
        // does, backing off, within the connect timeout.
        let mut backoff = BUSY_FIRST_BACKOFF;
        let (connection, reader) = loop {
            match open_websocket(dial, Some(tcp_up)).await {
                Ok(opened) => break opened,
                Err(WsOpenError::ClosedBeforeTls) => {
                    refused_busy.store(true, Ordering::Relaxed);
                    tracing::debug!(?backoff, "the server closed TCP before TLS (busy)");
                    tokio::time::sleep(jittered(backoff)).await;
                    backoff = (backoff * 2).min(BUSY_MAX_BACKOFF);
                }
                Err(WsOpenError::Failed(error)) => return Err(error),
            }
        };
        if !claim_login(claim) {
            connection.close(CloseCode::Normal, "the other carrier connected first");
            return Err(lost_the_race());
        }
        let send = connection.sender();
        let mut recv = FrameReader::new(CarrierSource::WebSocket(reader), MAX_SERVER_FRAME);
        let hello = ClientToServer::Hello(Hello {
            version: PROTOCOL_VERSION,
            login: config.login.clone(),
        });
        let frame = frame_to_bytes(&hello, DEFAULT_MAX_FRAME_LEN)
            .map_err(|e| ConnectError::Protocol(e.to_string()))?;
        send.write_chunk(frame)
            .await
            .map_err(|_| ConnectError::Lost("the WebSocket closed before the hello".into()))?;
        let welcome = match recv.next().await {
            Ok(Some(body)) => decode_body::<ServerToClient>(&body)
                .map_err(|e| ConnectError::Protocol(e.to_string()))?,
            Ok(None) => return Err(ConnectError::Protocol("stream closed".into())),
            Err(ReadEnd::Ended(end)) => return Err(websocket_failed(end)),
            Err(ReadEnd::Connection(error)) => return Err(ConnectError::Lost(error.to_string())),
            Err(ReadEnd::Violation(_, text)) => return Err(ConnectError::Protocol(text)),
        };
        Ok((
            ServerWire::WebSocket(connection),
            ServerSend::WebSocket(send),
            recv,
            welcome,
        ))
    };
    let (connection, send, recv, welcome) = tokio::time::timeout(config.timeouts.connect, attempt)
        .await
        .map_err(|_| {
            if refused_busy.load(Ordering::Relaxed) {
                crate::connect_failure::busy()
            } else {
                ConnectError::Timeout(config.timeouts.connect)
            }
        })??;
    welcomed(connection, send, recv, welcome)
}

/// Why a WebSocket could not be opened.
#[derive(Debug)]
pub(super) enum WsOpenError {
    /// The server took the TCP connection and closed it before TLS: how its handshake
    /// caps refuse a connection (busy: try again later).
    ClosedBeforeTls,
    /// Anything else, named.
    Failed(ConnectError),
}

impl From<WsOpenError> for ConnectError {
    fn from(error: WsOpenError) -> Self {
        match error {
            WsOpenError::ClosedBeforeTls => crate::connect_failure::busy(),
            WsOpenError::Failed(error) => error,
        }
    }
}

/// A WebSocket to the server, its handshakes done (each failure named).
///
/// # Errors
/// [`WsOpenError::ClosedBeforeTls`] when the server closed the TCP connection before
/// answering TLS; otherwise failures to reach it as [`ConnectError::Lost`] with the step
/// that failed, and a TLS failure as [`ConnectError::Handshake`].
pub(super) async fn open_websocket(
    dial: &Dial,
    tcp_up: Option<&AtomicBool>,
) -> Result<(Arc<WsConnection>, peergroup_transport::WsReader), WsOpenError> {
    let addr = dial.websocket_addr;
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| {
        WsOpenError::Failed(ConnectError::Lost(format!(
            "WebSocket: TCP connect to {addr}: {e}"
        )))
    })?;
    if let Some(tcp_up) = tcp_up {
        tcp_up.store(true, Ordering::Relaxed);
    }
    let _ = tcp.set_nodelay(true);
    let name = rustls::pki_types::ServerName::try_from(dial.server_name.clone())
        .map_err(|e| WsOpenError::Failed(ConnectError::TlsSetup(e.to_string())))?;
    let tls = TlsConnector::from(dial.tls.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| match e.kind() {
            // Closed before the server said anything of TLS: refused, not broken.
            std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted => WsOpenError::ClosedBeforeTls,
            _ => WsOpenError::Failed(ConnectError::Handshake(format!("WebSocket TLS: {e}"))),
        })?;
    let io: BoxedIo = Box::new(tls);
    let url = format!("wss://{}/peergroup", dial.server_name);
    let limits = ws_config();
    let (socket, _response) = client_async_with_config(url, io, Some(limits))
        .await
        .map_err(|e| {
            WsOpenError::Failed(ConnectError::Lost(format!("WebSocket handshake: {e}")))
        })?;
    Ok(websocket::start(socket, addr, dial.keepalive, dial.idle))
}

/// How a WebSocket that ended during the login is reported.
fn websocket_failed(end: ConnectionEnd) -> ConnectError {
    match end {
        ConnectionEnd::PeerClosed { code, reason } => ConnectError::Refused { code, reason },
        ConnectionEnd::TimedOut => ConnectError::Lost("WebSocket timed out".into()),
        ConnectionEnd::LocallyClosed => ConnectError::Lost("WebSocket closed".into()),
        ConnectionEnd::Lost(detail) => ConnectError::Lost(detail),
    }
}

/// QUIC: connect (coming back while the server refuses as busy), the hello and the
/// welcome. `quic_up` is set once QUIC's handshake is done; the hello goes out only if
/// this attempt claims `claim` first.
async fn log_in_quic(
    endpoint: &quinn::Endpoint,
    dial: &Dial,
    config: &ClientConfig,
    refused: &RefusedCertificate,
    quic_up: &AtomicBool,
    claim: &AtomicBool,
) -> Result<LoggedIn, ConnectError> {
    let client_config = dial.client_config.clone();
    let mut progress = LoginProgress {
        addr: config.server_addr,
        started: Instant::now(),
        pinned: config.server_trust.pinned(),
        refused,
        quic_up: false,
    };
    let refused_busy = AtomicBool::new(false);
    let handshake = async {
        // A server busy with other logins refuses at the first packet and means "try
        // again later": so the client does, backing off, within the connect timeout.
        let mut backoff = BUSY_FIRST_BACKOFF;
        let connection = loop {
            let attempt = endpoint
                .connect_with(
                    client_config.clone(),
                    config.server_addr,
                    &config.server_name,
                )
                .map_err(|e| progress.not_started(e))?
                .await;
            match attempt {
                Ok(connection) => break connection,
                Err(quinn::ConnectionError::ConnectionClosed(close))
                    if crate::connect_failure::is_busy(&close) =>
                {
                    refused_busy.store(true, Ordering::Relaxed);
                    tracing::debug!(?backoff, "the server is busy; trying again");
                    tokio::time::sleep(jittered(backoff)).await;
                    backoff = (backoff * 2).min(BUSY_MAX_BACKOFF);
                }
                Err(error) => return Err(progress.connection_failed(error)),
            }
        };
        quic_up.store(true, Ordering::Relaxed);
        if !claim_login(claim) {
            peergroup_transport::close(
                &connection,
                CloseCode::Normal,
                "the other carrier connected first",
            );
            return Err(lost_the_race());
        }
        let failed = |e| {
            LoginProgress {
                quic_up: true,
                ..progress
            }
            .connection_failed(e)
        };
        let (mut send, recv) = connection.open_bi().await.map_err(failed)?;
        let mut recv = FrameReader::new(CarrierSource::Quic(recv), DEFAULT_MAX_FRAME_LEN);
        let hello = ClientToServer::Hello(Hello {
            version: PROTOCOL_VERSION,
            login: config.login.clone(),
        });
        let frame = frame_to_bytes(&hello, DEFAULT_MAX_FRAME_LEN)
            .map_err(|e| ConnectError::Protocol(e.to_string()))?;
        send.write_all(&frame).await.map_err(|e| match e {
            quinn::WriteError::ConnectionLost(e) => failed(e),
            other => ConnectError::Lost(other.to_string()),
        })?;
        let welcome = match recv.next().await {
            Ok(Some(body)) => decode_body::<ServerToClient>(&body)
                .map_err(|e| ConnectError::Protocol(e.to_string()))?,
            Ok(None) => return Err(ConnectError::Protocol("stream closed".into())),
            Err(ReadEnd::Connection(error)) => return Err(failed(error)),
            Err(ReadEnd::Ended(end)) => return Err(websocket_failed(end)),
            Err(ReadEnd::Violation(_, text)) => return Err(ConnectError::Protocol(text)),
        };
        Ok((connection, send, recv, welcome))
    };
    let outcome = tokio::time::timeout(config.timeouts.connect, handshake).await;
    progress.quic_up = quic_up.load(Ordering::Relaxed);
    let (connection, send, recv, welcome) = outcome.map_err(|_| {
        progress.timed_out(
            config.timeouts.connect,
            refused_busy.load(Ordering::Relaxed),
        )
    })??;

    welcomed(
        ServerWire::Quic(connection),
        ServerSend::Quic(send),
        recv,
        welcome,
    )
}

/// The login's end on either carrier: the first frame must be a welcome in our version.
fn welcomed(
    connection: ServerWire,
    send: ServerSend,
    recv: FrameReader<CarrierSource>,
    welcome: ServerToClient,
) -> Result<LoggedIn, ConnectError> {
    let ServerToClient::Welcome {
        version,
        host_id,
        app_data,
        max_frame_len,
    } = welcome
    else {
        connection.close(CloseCode::ProtocolViolation, "expected a welcome");
        return Err(ConnectError::Protocol(
            "the first frame was not a welcome".into(),
        ));
    };
    if version != PROTOCOL_VERSION {
        let text = format!(
            "protocol version mismatch: client speaks {PROTOCOL_VERSION}, server {version}"
        );
        connection.close(CloseCode::VersionMismatch, &text);
        return Err(ConnectError::VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs: version,
        });
    }
    Ok(LoggedIn {
        connection,
        send,
        recv,
        host_id,
        app_data,
        max_frame_len,
    })
}
