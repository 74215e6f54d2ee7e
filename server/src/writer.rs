//! Each client's writer task: it writes the client's queue to its connection, several
//! frames at a time, outlives a lost connection until a resumed one is handed over
//! (ARCHITECTURE.md, "Resume"), and finishes the stream when the server drains. The
//! connection is QUIC's main stream or a WebSocket (`wire.rs`); the writer does not care.

use crate::events::DisconnectReason;
use crate::outbound::{OutboundReceiver, Outgoing};
use crate::shared::{close_with, Handoff, Shared};
use crate::wire::{Wire, WireSend};
use bytes::{Bytes, BytesMut};
use peergroup_protocol::{CloseCode, Unconfirmed};
use peergroup_transport::WRITE_BATCH_BYTES;
use std::sync::{Arc, Mutex, OnceLock};

/// Frames written to a client in one batch at most (with at most `WRITE_BATCH_BYTES`):
/// 256 64-byte messages fill about 15 packets, one GSO send. At 64, a relayed flood of
/// small messages went out in writes of four packets, and the relay spent 0.91–0.98 µs of
/// CPU a delivery against 0.79–0.89 at 256 (1→1, 64 B, reliable; three rounds each).
const WRITE_BATCH_FRAMES: usize = 256;

/// What the writer needs to end a connection itself when the server drains.
pub(crate) struct WriterEnd {
    pub shared: Arc<Shared>,
    pub wire: Wire,
    pub close_reason: Arc<OnceLock<DisconnectReason>>,
}

impl WriterEnd {
    /// Graceful shutdown (`drain.rs`): the queue is empty, so finish the stream and close
    /// the connection with `ServerShutdown` once the client has acknowledged all of it (or
    /// at the drain deadline).
    async fn finish(self, mut send: WireSend) {
        let deadline = self.shared.drain.deadline();
        let _ = tokio::time::timeout_at(deadline, send.finish()).await;
        close_with(
            &self.wire,
            &self.close_reason,
            CloseCode::ServerShutdown,
            DisconnectReason::ServerShutdown,
            "server shutting down",
        );
    }
}

/// Writes queued frames in order, several at a time. Once the server drains, it finishes
/// the stream after the last queued frame (see [`WriterEnd::finish`]).
///
/// It outlives a lost connection (ARCHITECTURE.md, "Resume"): every batch is recorded in
/// `unconfirmed` before it is handed to the stream, and when the stream fails the writer
/// stops taking frames (the queue keeps them) until a resumed connection's stream comes
/// in a [`Handoff`], or the host is removed (the sender of `handoffs` goes with its
/// link, and the queue with this task).
pub(crate) async fn write_frames(
    send: WireSend,
    mut queued: OutboundReceiver,
    mut end: WriterEnd,
    max_frame: u32,
    unconfirmed: Arc<Mutex<Unconfirmed>>,
    mut handoffs: tokio::sync::mpsc::Receiver<Box<Handoff>>,
) {
    let mut batch = Vec::with_capacity(WRITE_BATCH_FRAMES);
    let mut merged = BytesMut::new();
    let mut send = Some(send);
    loop {
        let Some(stream) = send.as_mut() else {
            // The connection is gone: wait for a resumed one.
            match handoffs.recv().await {
                Some(handoff) => send = take_over(*handoff, &mut end, &unconfirmed).await,
                None => return,
            }
            continue;
        };
        if end.shared.drain.is_started() && queued.is_empty() {
            if let Some(stream) = send.take() {
                end.finish(stream).await;
            }
            return;
        }
        // A few tens of KiB at a time (see `WRITE_BATCH_BYTES`).
        tokio::select! {
            biased;
            handoff = handoffs.recv() => {
                // A resume replaced a half-open connection.
                match handoff {
                    Some(handoff) => send = take_over(*handoff, &mut end, &unconfirmed).await,
                    None => return,
                }
                continue;
            }
            () = queued.recv_many(&mut batch, WRITE_BATCH_FRAMES, WRITE_BATCH_BYTES) => {}
            // Nothing is taken from the queue until recv_many returns, so dropping it here
            // loses nothing.
            () = end.shared.drain.started.cancelled() => continue,
        }
        let bytes = batch.iter().map(Outgoing::len).sum();
        let frames = batch.len() as u64;
        // Relayed messages are encoded only now, outside the lock, into the batch's one
        // buffer (see `write_batch`).
        for frame in batch.drain(..) {
            if let Err(error) = frame.write_to(&mut merged, max_frame) {
                tracing::error!(%error, "frame not sent");
            }
        }
        let chunk = merged.split().freeze();
        // Kept (a reference to the same buffer) until the client confirms it, so a
        // resume can send it again.
        lock_unconfirmed(&unconfirmed).record(frames, chunk.clone());
        if stream.write_chunk(chunk).await.is_err() {
            send = None;
        }
        queued.written(bytes);
    }
}

pub(crate) fn lock_unconfirmed(
    unconfirmed: &Mutex<Unconfirmed>,
) -> std::sync::MutexGuard<'_, Unconfirmed> {
    unconfirmed
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Takes a resumed connection's stream: the `Resumed` answer, then every frame the client
/// did not read, go first. `None` when the frames are no longer held (the resume is
/// refused and the host removed).
async fn take_over(
    handoff: Handoff,
    end: &mut WriterEnd,
    unconfirmed: &Mutex<Unconfirmed>,
) -> Option<WireSend> {
    let Handoff {
        wire,
        mut send,
        reply,
        from,
        close_reason,
        done,
    } = handoff;
    let (replay, sent) = {
        let mut unconfirmed = lock_unconfirmed(unconfirmed);
        (unconfirmed.replay_from(from), unconfirmed.sent())
    };
    let replay = match replay {
        Ok(replay) => {
            let bytes: usize = replay.iter().map(Bytes::len).sum();
            tracing::info!(
                from,
                sent,
                bytes,
                "sending again what the client did not read"
            );
            let _ = done.send(Ok(()));
            replay
        }
        Err(gap) => {
            let _ = done.send(Err(gap));
            return None;
        }
    };
    end.wire = wire;
    end.close_reason = close_reason;
    // A failure shows on the next write, which then waits for another resume.
    let _ = send.write_chunk(reply).await;
    for chunk in replay {
        if send.write_chunk(chunk).await.is_err() {
            break;
        }
    }
    Some(send)
}
