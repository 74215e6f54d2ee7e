//! The login: QUIC to the server (coming back with backoff while it refuses as busy), the
//! hello on the main stream and the server's welcome, all within the connect timeout.
//! What fails on the way is named by `connect_failure.rs`.

use crate::config::ClientConfig;
use crate::connect_failure::LoginProgress;
use crate::error::ConnectError;
use crate::tls::RefusedCertificate;
use bytes::Bytes;
use peergroup_protocol::{
    decode_body, frame_to_bytes, ClientToServer, CloseCode, Hello, HostId, ServerToClient,
    DEFAULT_MAX_FRAME_LEN, PROTOCOL_VERSION,
};
use peergroup_transport::{close, FrameReader, ReadEnd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

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
    pub connection: quinn::Connection,
    pub send: quinn::SendStream,
    pub recv: FrameReader,
    pub host_id: HostId,
    pub app_data: Bytes,
    pub max_frame_len: u32,
}

/// Connects to the server through `endpoint`, logs in and waits for the welcome.
///
/// # Errors
/// As [`crate::Client::connect`].
pub(super) async fn log_in(
    endpoint: &quinn::Endpoint,
    client_config: quinn::ClientConfig,
    config: &ClientConfig,
    refused: &RefusedCertificate,
) -> Result<LoggedIn, ConnectError> {
    let mut progress = LoginProgress {
        addr: config.server_addr,
        started: Instant::now(),
        pinned: config.server_trust.pinned(),
        refused,
        quic_up: false,
    };
    let quic_up = AtomicBool::new(false);
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
        let failed = |e| {
            LoginProgress {
                quic_up: true,
                ..progress
            }
            .connection_failed(e)
        };
        let (mut send, recv) = connection.open_bi().await.map_err(failed)?;
        let mut recv = FrameReader::new(recv, DEFAULT_MAX_FRAME_LEN);
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

    let ServerToClient::Welcome {
        version,
        host_id,
        app_data,
        max_frame_len,
    } = welcome
    else {
        close(
            &connection,
            CloseCode::ProtocolViolation,
            "expected a welcome",
        );
        return Err(ConnectError::Protocol(
            "the first frame was not a welcome".into(),
        ));
    };
    if version != PROTOCOL_VERSION {
        let text = format!(
            "protocol version mismatch: client speaks {PROTOCOL_VERSION}, server {version}"
        );
        close(&connection, CloseCode::VersionMismatch, &text);
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
