//! Coming back after the server connection was lost (ARCHITECTURE.md, "Resume"): the
//! client connects again by itself, backing off from 100 ms to 2 s (jittered), until the
//! resume window ends, and presents its resume token with the count of frames it read.
//! The server answers with the count it read; the main writer sends the uploads it did
//! not read again, then goes on with its queue, and the reader goes on with the new
//! connection, so reliable numbering simply continues.
//!
//! A refusal (spent or unknown token, host no longer kept) ends the session at once.

use crate::config::{TransportChoice, WEBSOCKET_DELAY};
use crate::driver::login::{jittered, open_websocket};
use crate::driver::shared::{Inner, MainHandoff};
use crate::driver::wire::{ServerSend, ServerWire};
use crate::error::ConnectError;
use crate::events::{ClientEvent, DisconnectReason};
use peergroup_protocol::{
    decode_body, frame_to_bytes, ClientToServer, CloseCode, Resume, ResumeToken, ServerToClient,
    PROTOCOL_VERSION,
};
use peergroup_transport::{peer_close, CarrierSource, ConnectionEnd, FrameReader, ReadEnd};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The first wait between attempts; it doubles up to [`MAX_BACKOFF`], each wait jittered
/// by up to half, so clients cut off together do not all come back together.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// How long to wait for the server's close after it ended the new stream unanswered.
const STREAM_END_GRACE: Duration = Duration::from_secs(2);

/// A resumed connection and its main stream's reader.
pub(super) struct Reconnected {
    pub connection: ServerWire,
    pub recv: FrameReader<CarrierSource>,
}

/// Why an attempt failed.
enum Failure {
    /// Try again (unreachable, busy, cut short).
    Retry(String),
    /// The server said no, or the session cannot go on: it has ended.
    Final(DisconnectReason),
}

/// Whether a connection whose reading ended with `end` is worth resuming: it was lost
/// (silence, a stateless reset; on WebSocket silence, or TCP ending without a close
/// frame), not closed by either side on purpose.
pub(super) fn is_resumable(end: &ReadEnd) -> bool {
    match end {
        ReadEnd::Connection(error) => matches!(
            error,
            quinn::ConnectionError::TimedOut | quinn::ConnectionError::Reset
        ),
        ReadEnd::Ended(end) => matches!(end, ConnectionEnd::TimedOut | ConnectionEnd::Lost(_)),
        ReadEnd::Violation(..) => false,
    }
}

/// Resumes the session after its connection was lost with `lost`, reporting
/// [`ClientEvent::ConnectionLost`] first and [`ClientEvent::Resumed`] on success.
///
/// # Errors
/// The session's final [`DisconnectReason`]: `lost` when resume is off or the window
/// ended, the server's refusal, or what made the session impossible to continue.
pub(super) async fn resume_session(
    inner: &Arc<Inner>,
    lost: DisconnectReason,
) -> Result<Reconnected, DisconnectReason> {
    let started = Instant::now();
    let Some((mut token, server_window)) = inner.lock().session.resume_token() else {
        return Err(lost);
    };
    let window = server_window.min(inner.resume.window);
    if window.is_zero() {
        return Err(lost);
    }
    tracing::info!(reason = %lost, ?window, "connection lost; resuming");
    {
        let mut core = inner.lock();
        core.session.push_event(ClientEvent::ConnectionLost {
            reason: lost.clone(),
        });
        inner.flush_and_wake(&mut core);
    }
    let deadline = started + window;
    let mut backoff = FIRST_BACKOFF;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if inner.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(DisconnectReason::Closed);
        }
        if remaining.is_zero() {
            tracing::info!(?window, "not resumed within the window");
            return Err(lost);
        }
        let limit = remaining.min(inner.resume.attempt_timeout);
        match tokio::time::timeout(limit, attempt(inner, token)).await {
            Ok(Ok(reconnected)) => {
                let after = started.elapsed();
                tracing::info!(?after, "resumed");
                let mut core = inner.lock();
                core.session.push_event(ClientEvent::Resumed { after });
                inner.flush_and_wake(&mut core);
                return Ok(reconnected);
            }
            Ok(Err(Failure::Final(reason))) => {
                tracing::warn!(%reason, "resume refused");
                return Err(reason);
            }
            Ok(Err(Failure::Retry(detail))) => {
                tracing::debug!(%detail, ?backoff, "resume attempt failed; trying again");
            }
            Err(_) => tracing::debug!(?backoff, "resume attempt timed out; trying again"),
        }
        // The token is spent only by a resume the server answered, so it stays good.
        if let Some((current, _)) = inner.lock().session.resume_token() {
            token = current;
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        tokio::time::sleep(jittered(backoff).min(remaining)).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// A connection error as an attempt's failure: a close by the server application is final
/// (refused, kicked, shutting down) unless it only says the server is busy.
fn failure(error: quinn::ConnectionError) -> Failure {
    if let quinn::ConnectionError::ApplicationClosed(close) = &error {
        let (code, reason) = peer_close(close);
        if code != CloseCode::ServerFull {
            return Failure::Final(DisconnectReason::ServerClosed { code, reason });
        }
    }
    Failure::Retry(error.to_string())
}

/// A connection end as an attempt's failure, as [`failure`] sorts quinn's.
fn end_failure(end: ConnectionEnd) -> Failure {
    match end {
        ConnectionEnd::PeerClosed { code, reason } if code != CloseCode::ServerFull => {
            Failure::Final(DisconnectReason::ServerClosed { code, reason })
        }
        other => Failure::Retry(format!("{other:?}")),
    }
}

/// A new connection's stream, over QUIC.
async fn connect_quic(inner: &Inner) -> Result<Opened, Failure> {
    let dial = &inner.resume.dial;
    let Some(udp) = &inner.udp else {
        // Not reached: only WebSocket alone goes without UDP, and it never dials QUIC.
        return Err(Failure::Final(DisconnectReason::ConnectionLost {
            detail: "QUIC needs the client's UDP socket".into(),
        }));
    };
    let connecting = udp
        .endpoint
        .connect_with(
            dial.client_config.clone(),
            dial.server_addr,
            &dial.server_name,
        )
        .map_err(|error| Failure::Retry(error.to_string()))?;
    let connection = connecting.await.map_err(failure)?;
    let (send, recv) = connection.open_bi().await.map_err(failure)?;
    Ok((
        ServerWire::Quic(connection),
        ServerSend::Quic(send),
        CarrierSource::Quic(recv),
    ))
}

/// A new connection, over WebSocket.
async fn connect_websocket(inner: &Inner) -> Result<Opened, Failure> {
    let (connection, reader) = open_websocket(&inner.resume.dial, None)
        .await
        .map_err(|error| Failure::Retry(ConnectError::from(error).to_string()))?;
    let send = ServerSend::WebSocket(connection.sender());
    Ok((
        ServerWire::WebSocket(connection),
        send,
        CarrierSource::WebSocket(reader),
    ))
}

/// A new connection and its stream, before anything is sent on it.
type Opened = (ServerWire, ServerSend, CarrierSource);

/// A new connection over the carrier the configuration chooses; with `Auto`, QUIC and,
/// from [`WEBSOCKET_DELAY`] on (or at once when QUIC fails), WebSocket, the first up
/// winning (the session may so resume over the other carrier than the lost one). Only
/// connections race: the token is presented on the winner alone (it is single use).
async fn connect(inner: &Inner) -> Result<Opened, Failure> {
    match inner.resume.dial.transport {
        TransportChoice::QuicOnly => connect_quic(inner).await,
        TransportChoice::WebSocketOnly => connect_websocket(inner).await,
        TransportChoice::Auto => {
            let quic = connect_quic(inner);
            tokio::pin!(quic);
            tokio::select! {
                biased;
                opened = &mut quic => return match opened {
                    Err(Failure::Retry(_)) => connect_websocket(inner).await,
                    other => other,
                },
                () = tokio::time::sleep(WEBSOCKET_DELAY) => {}
            }
            let websocket = connect_websocket(inner);
            tokio::pin!(websocket);
            tokio::select! {
                opened = &mut quic => match opened {
                    Ok(opened) => Ok(opened),
                    Err(_) => websocket.await,
                },
                opened = &mut websocket => match opened {
                    Ok(opened) => Ok(opened),
                    Err(_) => quic.await,
                },
            }
        }
    }
}

/// One attempt: connect, present the token, read the answer, hand the writers the new
/// connection.
async fn attempt(inner: &Arc<Inner>, token: ResumeToken) -> Result<Reconnected, Failure> {
    let link = &inner.resume;
    let (connection, mut send, recv) = connect(inner).await?;
    tracing::debug!(transport = %connection.transport(), "resuming");
    let received = inner.lock().session.server_frames_read();
    let resume = ClientToServer::Resume(Resume {
        version: PROTOCOL_VERSION,
        host: inner.host_id,
        token,
        received,
    });
    let frame = frame_to_bytes(&resume, inner.max_frame_len)
        .map_err(|error| Failure::Final(protocol_error(error.to_string())))?;
    if send.write_chunk(frame).await.is_err() {
        return Err(Failure::Retry("the new stream failed".into()));
    }
    let mut recv = FrameReader::new(recv, inner.max_frame_len);
    let body = match recv.next().await {
        Ok(Some(body)) => body,
        Ok(None) => {
            // A refusal may end the stream just before its close arrives: the close says
            // why.
            return match tokio::time::timeout(STREAM_END_GRACE, connection.closed()).await {
                Ok(end) => Err(end_failure(end)),
                Err(_) => Err(Failure::Retry("the server ended the new stream".into())),
            };
        }
        Err(ReadEnd::Connection(error)) => return Err(failure(error)),
        Err(ReadEnd::Ended(end)) => return Err(end_failure(end)),
        Err(ReadEnd::Violation(code, text)) => {
            connection.close(code, &text);
            return Err(Failure::Final(protocol_error(text)));
        }
    };
    let answer = decode_body::<ServerToClient>(&body);
    let Ok(ServerToClient::Resumed {
        received: uploads_read,
        token: next_token,
        window_ms,
    }) = answer
    else {
        let text = "the answer to a resume was not `Resumed`".to_string();
        connection.close(CloseCode::ProtocolViolation, &text);
        return Err(Failure::Final(protocol_error(text)));
    };
    // The server took the session here: from now on there is no going back to the old
    // token, so anything that fails ends the session.
    let (done, replayed) = tokio::sync::oneshot::channel();
    let main = lock(&link.main).clone();
    let handed = match main {
        Some(main) => main
            .send(MainHandoff {
                send,
                from: uploads_read,
                done,
            })
            .await
            .is_ok(),
        None => false,
    };
    let replay = if handed { replayed.await.ok() } else { None };
    match replay {
        Some(Ok(())) => {}
        Some(Err(gap)) => {
            let text = format!("cannot send again what the server did not read: {gap}");
            connection.close(CloseCode::ProtocolViolation, &text);
            return Err(Failure::Final(DisconnectReason::ConnectionLost {
                detail: text,
            }));
        }
        None => {
            connection.close(CloseCode::Normal, "client closed");
            return Err(Failure::Final(DisconnectReason::Closed));
        }
    }
    *inner
        .connection
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner()) = connection.clone();
    let control = lock(&link.control).clone();
    if let Some(control) = control {
        let _ = control.send(connection.clone()).await;
    }
    {
        let mut core = inner.lock();
        core.session
            .handle_resumed(next_token, Duration::from_millis(window_ms.into()));
        inner.flush_and_wake(&mut core);
    }
    Ok(Reconnected { connection, recv })
}

fn protocol_error(detail: String) -> DisconnectReason {
    DisconnectReason::ProtocolError { detail }
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
