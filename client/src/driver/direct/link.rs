//! A direct link's life: the connection becomes the peer's path, its frames and
//! datagrams are read into the session until it ends, and then the peer's traffic moves
//! back to the relay (unacked messages with it).

use crate::driver::shared::{DirectLink, Inner};
use crate::driver::writer::write_stream;
use crate::outbound::UploadQueue;
use peergroup_protocol::{
    decode_peer_frame, decode_server_datagram, ClientToServer, CloseCode, HostId, PairId,
    PathReason, PeerToPeer, PunchOutcome,
};
use peergroup_transport::{close, read_datagram_batch, FrameReader, ReadEnd};
use std::sync::Arc;
use tokio::sync::Notify;

/// Makes `connection` the peer's path, then serves it until it ends.
pub(super) async fn establish(
    inner: &Arc<Inner>,
    peer: HostId,
    pair: PairId,
    attempt: u32,
    connection: quinn::Connection,
    send: quinn::SendStream,
    recv: FrameReader,
) {
    let resume_reading = Arc::new(Notify::new());
    {
        let mut core = inner.lock();
        let current = core.session.pair_of(peer) == Some(pair);
        if !current || core.directs.contains_key(&peer) {
            drop(core);
            close(&connection, CloseCode::Normal, "not needed");
            return;
        }
        let (queue, queued) = UploadQueue::new(inner.peer_queue_bytes, true);
        tokio::spawn(write_stream(connection.clone(), send, queued));
        core.directs.insert(
            peer,
            DirectLink {
                connection: connection.clone(),
                queue,
                resume_reading: resume_reading.clone(),
            },
        );
        let rtt = connection.rtt();
        core.session
            .set_direct(peer, rtt, std::time::Instant::now());
        inner.send_server_frame(&ClientToServer::PunchReport {
            pair,
            attempt,
            outcome: PunchOutcome::Direct {
                rtt_us: rtt.as_micros().min(u128::from(u32::MAX)) as u32,
            },
        });
        inner.flush_and_wake(&mut core);
    }
    tracing::info!(%peer, remote = %connection.remote_address(), "direct path up");
    serve_direct(inner.clone(), peer, connection, recv, resume_reading).await;
}

/// Reads a direct connection until it ends, then moves the peer back to the relay.
async fn serve_direct(
    inner: Arc<Inner>,
    peer: HostId,
    connection: quinn::Connection,
    recv: FrameReader,
    resume_reading: Arc<Notify>,
) {
    // Both loops run to their end (each closes the connection as it ends, which ends the
    // other): cancelling one mid-way could drop messages it was handing to the
    // application after they were acked.
    let (frames_end, _) = tokio::join!(
        async {
            let end = read_peer_frames(&inner, peer, recv, &connection, &resume_reading).await;
            if let ReadEnd::Violation(code, text) = &end {
                close(&connection, *code, text);
            } else {
                close(&connection, CloseCode::Normal, "direct path closed");
            }
            end
        },
        async {
            let end = read_peer_datagrams(&inner, peer, &connection).await;
            if let ReadEnd::Violation(code, text) = &end {
                close(&connection, *code, text);
            }
        }
    );
    let reason = match &frames_end {
        ReadEnd::Connection(quinn::ConnectionError::TimedOut) => PathReason::DirectTimedOut,
        _ => PathReason::DirectClosed,
    };
    {
        let mut core = inner.lock();
        let ours = core
            .directs
            .get(&peer)
            .is_some_and(|link| link.connection.stable_id() == connection.stable_id());
        if !ours {
            return;
        }
        core.directs.remove(&peer);
        // Unacked messages are queued again for the relay, with their numbers.
        core.session
            .set_relay(peer, reason, std::time::Instant::now());
        inner.flush_and_wake(&mut core);
    }
    tracing::info!(%peer, ?reason, "direct path down; back to the relay");
}

async fn read_peer_frames(
    inner: &Arc<Inner>,
    peer: HostId,
    mut recv: FrameReader,
    connection: &quinn::Connection,
    resume_reading: &Notify,
) -> ReadEnd {
    loop {
        let body = match recv.next().await {
            Ok(Some(body)) => body,
            Ok(None) => return ReadEnd::Connection(quinn::ConnectionError::LocallyClosed),
            Err(end) => return end,
        };
        let frame = match decode_peer_frame(&body) {
            Ok(frame) => frame,
            Err(error) => return error.into(),
        };
        let paused = {
            let mut core = inner.lock();
            let handled = match frame {
                PeerToPeer::Ack { received } => {
                    // Acks count frames in the order they left the direct queue: the
                    // writer logged that order, and the session takes it before the ack.
                    if let Some(link) = core.directs.get(&peer) {
                        let sent = link.queue.take_sent();
                        core.session.handle_direct_sent(peer, sent);
                    }
                    core.session.handle_direct_ack(peer, received)
                }
                frame => core
                    .session
                    .handle_peer_frame(peer, frame, std::time::Instant::now()),
            };
            if let Err(text) = handled {
                return ReadEnd::Violation(CloseCode::ProtocolViolation, text);
            }
            inner.flush(&mut core);
            core.session.direct_reading_paused(peer)
        };
        inner.deliver_events().await;
        if paused {
            // The direct path is far ahead of the relay: stop reading it until the relay
            // catches up, so held memory stays bounded and the sender is paced.
            wait_until_resumed(inner, peer, connection, resume_reading).await;
        }
    }
}

/// Waits until the session lets the direct reader of `peer` go on
/// ([`Session::poll_resumed_reader`](crate::session::Session::poll_resumed_reader) wakes
/// `resume_reading`), or either connection closes: a peer that never fills its gap stops
/// acking too and loses its direct path, and then the next read ends the reader.
async fn wait_until_resumed(
    inner: &Inner,
    peer: HostId,
    connection: &quinn::Connection,
    resume_reading: &Notify,
) {
    // A wake-up stored by `notify_one` may be stale (from an earlier pause); the session
    // is asked again each time, so a stale one costs a look, never a missed resume.
    while inner.lock().session.direct_reading_paused(peer) {
        tokio::select! {
            _ = resume_reading.notified() => {}
            _ = connection.closed() => return,
            _ = inner.ended.cancelled() => return,
        }
    }
}

async fn read_peer_datagrams(
    inner: &Arc<Inner>,
    peer: HostId,
    connection: &quinn::Connection,
) -> ReadEnd {
    // Grown on first use: an idle connection never allocates it.
    let mut batch = Vec::new();
    loop {
        if let Err(error) = read_datagram_batch(connection, &mut batch).await {
            return ReadEnd::Connection(error);
        }
        // One lock, one flush and one hand-over of events per batch.
        let mut malformed = false;
        {
            let now = std::time::Instant::now();
            let mut core = inner.lock();
            for datagram in &batch {
                let Ok(message) = decode_server_datagram(datagram) else {
                    malformed = true;
                    break;
                };
                core.session.handle_peer_datagram(peer, message, now);
            }
            inner.flush(&mut core);
        }
        inner.deliver_events().await;
        if malformed {
            return ReadEnd::Violation(CloseCode::ProtocolViolation, "malformed datagram".into());
        }
    }
}
