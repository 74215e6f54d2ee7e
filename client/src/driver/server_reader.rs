//! The server reader task: reads the server's main stream and its datagrams into the
//! session until the connection ends, then reports `Disconnected`.

use crate::driver::reconnect::{is_resumable, resume_session};
use crate::driver::shared::Inner;
use crate::driver::wire::ServerWire;
use crate::events::{ClientEvent, DisconnectReason};
use peergroup_protocol::{decode_server_datagram, decode_server_frame, CloseCode, ServerToClient};
use peergroup_transport::{
    read_datagram_batch, CarrierSource, ConnectionEnd, FrameReader, ReadEnd,
};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the client waits for the server's close after the server finished its control
/// stream: the server closes as soon as our acknowledgement of the stream's end arrives,
/// so a few round trips; 5 s covers a lossy path before calling it a protocol error.
const STREAM_END_GRACE: Duration = Duration::from_secs(5);

/// Reads the main stream and datagrams until the connection ends; a lost connection is
/// resumed (`reconnect.rs`) and reading goes on with the new one. Once the session ends
/// for good it reports `Disconnected`.
pub(crate) async fn receive(inner: Arc<Inner>, recv: FrameReader<CarrierSource>) {
    let mut recv = recv;
    let mut connection = inner.connection();
    let reason = loop {
        // Both loops run to their end (an error in one closes the connection, which ends
        // the other): cancelling one could drop messages it was handing to the
        // application.
        let (frames_end, datagrams_end) = tokio::join!(
            async {
                let end = read_frames(&inner, &connection, recv).await;
                if let ReadEnd::Violation(code, text) = &end {
                    connection.close(*code, text);
                }
                end
            },
            async {
                // A WebSocket has no datagrams: they come as frames (`read_frames`).
                let ServerWire::Quic(quic) = &connection else {
                    return None;
                };
                let end = read_datagrams(&inner, quic).await;
                if let ReadEnd::Violation(code, text) = &end {
                    connection.close(*code, text);
                }
                Some(end)
            }
        );
        let datagrams_end = datagrams_end.unwrap_or(ReadEnd::Ended(ConnectionEnd::LocallyClosed));
        let reason = match (&frames_end, &datagrams_end) {
            (ReadEnd::Violation(code, text), _) | (_, ReadEnd::Violation(code, text)) => {
                tracing::warn!(%code, %text, "closed: the server broke the protocol");
                DisconnectReason::ProtocolError {
                    detail: text.clone(),
                }
            }
            (ReadEnd::Connection(_) | ReadEnd::Ended(_), _) => {
                let reason = match &frames_end {
                    ReadEnd::Connection(error) => DisconnectReason::from_connection_error(error),
                    ReadEnd::Ended(end) => DisconnectReason::from_end(end.clone()),
                    ReadEnd::Violation(_, text) => DisconnectReason::ConnectionLost {
                        detail: text.clone(),
                    },
                };
                if is_resumable(&frames_end) && !inner.closed.load(Ordering::Acquire) {
                    match resume_session(&inner, reason).await {
                        Ok(resumed) => {
                            connection = resumed.connection;
                            recv = resumed.recv;
                            continue;
                        }
                        Err(reason) => reason,
                    }
                } else {
                    reason
                }
            }
        };
        break reason;
    };
    inner.closed.store(true, Ordering::Release);
    connection.close(CloseCode::Normal, "session ended");
    // The writers end, releasing their queues and whoever waits on them; the tasks that
    // outlive single connections end too.
    inner
        .resume
        .main
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    inner
        .resume
        .control
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    inner.ended.cancel();
    tracing::info!(%reason, "disconnected");
    // After every event before it, through the emitter.
    {
        let mut core = inner.lock();
        core.session
            .push_event(ClientEvent::Disconnected { reason });
        inner.flush_and_wake(&mut core);
    }
}

async fn read_frames(
    inner: &Arc<Inner>,
    connection: &ServerWire,
    mut recv: FrameReader<CarrierSource>,
) -> ReadEnd {
    loop {
        let body = match recv.next().await {
            Ok(Some(body)) => body,
            Ok(None) => {
                // A server shutting down gracefully finishes its main stream after its
                // last frame and closes the connection once we have acknowledged all of it
                // (the server's `drain.rs`): everything has been read, so wait for that
                // close and report its reason.
                return match tokio::time::timeout(STREAM_END_GRACE, connection.closed()).await {
                    Ok(end) => ReadEnd::Ended(end),
                    Err(_) => ReadEnd::Violation(
                        CloseCode::ProtocolViolation,
                        "main stream closed without a connection close".into(),
                    ),
                };
            }
            Err(end) => return end,
        };
        {
            let mut core = inner.lock();
            let now = Instant::now();
            // Every frame this read brought is handled before anything is sent, so the
            // notices of many frames cost one ack.
            let mut next = Some(body);
            while let Some(body) = next {
                let frame = match decode_server_frame(&body) {
                    Ok(frame) => frame,
                    Err(error) => return error.into(),
                };
                if let ServerToClient::Received { frames } = &frame {
                    // The server read this many uploads: they need not be kept any more.
                    let confirmed = inner
                        .resume
                        .unconfirmed
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .confirm(*frames);
                    if let Err(gap) = confirmed {
                        return ReadEnd::Violation(CloseCode::ProtocolViolation, gap.to_string());
                    }
                }
                let second = core.session.server_frames_read() == 1;
                if let Err(text) = core.session.handle_frame(frame, now) {
                    return ReadEnd::Violation(CloseCode::ProtocolViolation, text);
                }
                if second && core.session.resume_token().is_none() {
                    // The server sends its token right after the welcome when it resumes
                    // sessions: without one, nothing need be kept for a resume.
                    inner
                        .resume
                        .unconfirmed
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .disable();
                }
                if core.session.pending_events() >= inner.event_capacity {
                    break;
                }
                next = match recv.buffered() {
                    Ok(next) => next,
                    Err(end) => return end,
                };
            }
            inner.flush(&mut core);
        }
        inner.deliver_events().await;
    }
}

async fn read_datagrams(inner: &Arc<Inner>, connection: &quinn::Connection) -> ReadEnd {
    // Grown on first use: an idle connection never allocates it.
    let mut batch = Vec::new();
    loop {
        if let Err(error) = read_datagram_batch(connection, &mut batch).await {
            return ReadEnd::Connection(error);
        }
        // The batch is handled under one lock and one flush, and its events go to the
        // application together (see `read_datagram_batch`).
        let mut bad = None;
        {
            let now = Instant::now();
            let mut core = inner.lock();
            for datagram in &batch {
                match decode_server_datagram(datagram) {
                    Ok(message) => core.session.handle_datagram(message, now),
                    Err(error) => {
                        bad = Some(error);
                        break;
                    }
                }
            }
            inner.flush(&mut core);
        }
        inner.deliver_events().await;
        if let Some(error) = bad {
            return error.into();
        }
    }
}
