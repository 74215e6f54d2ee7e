//! The server reader task: reads the server's main stream and its datagrams into the
//! session until the connection ends, then reports `Disconnected`.

use crate::driver::shared::Inner;
use crate::events::{ClientEvent, DisconnectReason};
use peergroup_protocol::{decode_server_datagram, decode_server_frame, CloseCode};
use peergroup_transport::{close, read_datagram_batch, FrameReader, ReadEnd, DATAGRAM_BATCH};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the client waits for the server's close after the server finished its control
/// stream: the server closes as soon as our acknowledgement of the stream's end arrives,
/// so a few round trips; 5 s covers a lossy path before calling it a protocol error.
const STREAM_END_GRACE: Duration = Duration::from_secs(5);

/// Reads the main stream and datagrams until the connection ends, then reports
/// `Disconnected`.
pub(crate) async fn receive(inner: Arc<Inner>, recv: FrameReader) {
    // Both loops run to their end (an error in one closes the connection, which ends the
    // other): cancelling one could drop messages it was handing to the application.
    let (frames_end, datagrams_end) = tokio::join!(
        async {
            let end = read_frames(&inner, recv).await;
            if let ReadEnd::Violation(code, text) = &end {
                close(&inner.connection, *code, text);
            }
            end
        },
        async {
            let end = read_datagrams(&inner).await;
            if let ReadEnd::Violation(code, text) = &end {
                close(&inner.connection, *code, text);
            }
            end
        }
    );
    let reason = match (&frames_end, &datagrams_end) {
        (ReadEnd::Violation(code, text), _) | (_, ReadEnd::Violation(code, text)) => {
            tracing::warn!(%code, %text, "closed: the server broke the protocol");
            DisconnectReason::ProtocolError {
                detail: text.clone(),
            }
        }
        (ReadEnd::Connection(error), _) => DisconnectReason::from_connection_error(error),
    };
    inner.closed.store(true, Ordering::Release);
    tracing::info!(%reason, "disconnected");
    // After every event before it, through the emitter.
    {
        let mut core = inner.lock();
        core.session
            .push_event(ClientEvent::Disconnected { reason });
        inner.flush_and_wake(&mut core);
    }
}

async fn read_frames(inner: &Arc<Inner>, mut recv: FrameReader) -> ReadEnd {
    loop {
        let body = match recv.next().await {
            Ok(Some(body)) => body,
            Ok(None) => {
                // A server shutting down gracefully finishes its main stream after its
                // last frame and closes the connection once we have acknowledged all of it
                // (the server's `drain.rs`): everything has been read, so wait for that
                // close and report its reason.
                return match tokio::time::timeout(STREAM_END_GRACE, inner.connection.closed()).await
                {
                    Ok(error) => ReadEnd::Connection(error),
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
                if let Err(text) = core.session.handle_frame(frame, now) {
                    return ReadEnd::Violation(CloseCode::ProtocolViolation, text);
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

async fn read_datagrams(inner: &Arc<Inner>) -> ReadEnd {
    let mut batch = Vec::with_capacity(DATAGRAM_BATCH);
    loop {
        if let Err(error) = read_datagram_batch(&inner.connection, &mut batch).await {
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
