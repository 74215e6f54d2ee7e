//! The writer tasks: each takes one send queue's frames, in the scheduler's order, and
//! writes them to its QUIC stream (the server's main and control streams, and each direct
//! link's stream). Writers never take the client's lock: senders fill the queue under it,
//! and the queue's own lock is all the two share.

use crate::driver::shared::MainHandoff;
use crate::driver::wire::{ServerSend, ServerWire};
use crate::outbound::{Next, UploadReceiver};
use peergroup_protocol::Unconfirmed;
use peergroup_transport::{finish_stream, write_batch, WRITE_BATCH_BYTES};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// A batch smaller than this, bytes, keeps gathering frames while the application is
/// sending faster than the writer turns around (see [`gather_more`]): about six full
/// QUIC packets, which quinn sends in one GSO call.
const GATHER_BELOW_BYTES: usize = 8 << 10;

/// A batch smaller than this, bytes, is written at once, however many frames it holds:
/// about one QUIC packet (1,200 bytes is QUIC's smallest maximum datagram size, RFC 9000
/// section 14). Such a batch is a burst the application sent at once, like the messages
/// of one game tick, and quinn sends it as one packet anyway; waiting for more frames
/// would only add latency. With gathering from two frames on, a sender pacing bursts of
/// five 64-byte messages a millisecond saw its p50 one-way latency through the relay rise
/// by about 40 µs.
const GATHER_FROM_BYTES: usize = 1200;

/// Lets a busy sender add to a batch before it goes to quinn, returning the batch's
/// frames: while the last look at the queue found more than one frame (so frames are
/// arriving faster than the writer writes) and the batch holds between
/// [`GATHER_FROM_BYTES`] and [`GATHER_BELOW_BYTES`], it yields one scheduling round and
/// takes what came meanwhile.
/// Each write wakes quinn's connection driver, which packetizes what the stream holds at
/// once, and on loopback a `sendmsg` costs several microseconds whether it carries one
/// packet or ten: one-packet writes left the sender's client spending most of its time in
/// system calls (ARCHITECTURE.md, "Task hand-overs"). A lone frame or a burst of less
/// than a packet (the usual cases at game rates) is written at once, and gathering stops
/// as soon as a round brings one frame or none. The yield is tokio's, which lets the
/// runtime poll its I/O driver first: that pause is what lets a flooding sender add
/// enough (a yield that only requeued the task gathered too little: 0.6M messages a
/// second against 1.0M in the 1→1 relay flood).
async fn gather_more(queue: &mut UploadReceiver, merged: &mut bytes::BytesMut, frames: u64) -> u64 {
    let mut frames = frames;
    let mut added = frames;
    while added > 1 && (GATHER_FROM_BYTES..GATHER_BELOW_BYTES).contains(&merged.len()) {
        tokio::task::yield_now().await;
        added = queue.take_queued(merged, WRITE_BATCH_BYTES);
        frames += added;
    }
    frames
}

/// Writes a queue to a QUIC stream until the queue finishes, the stream fails or the
/// connection closes (the writer holds the connection, and with it the socket, so it must
/// not outlive it).
pub(crate) async fn write_stream(
    connection: quinn::Connection,
    mut send: quinn::SendStream,
    mut queue: UploadReceiver,
) {
    let mut merged = bytes::BytesMut::new();
    // Made once: each `closed()` registers with quinn's connection state.
    let closed = connection.closed();
    tokio::pin!(closed);
    loop {
        let next = tokio::select! {
            next = queue.next(&mut merged, WRITE_BATCH_BYTES) => next,
            _ = &mut closed => return,
        };
        match next {
            Next::Frames(frames) => {
                gather_more(&mut queue, &mut merged, frames).await;
                match write_batch(&mut send, &mut merged).await {
                    Ok(len) => queue.written(len),
                    Err(_) => return,
                }
            }
            Next::Finish(done) => {
                if finish_stream(&mut send).await.is_err() {
                    return;
                }
                let _ = done.send(());
                return;
            }
        }
    }
}

/// Writes the upload queue to the server's main stream, keeping every batch in
/// `unconfirmed` (a reference to the same buffer) until the server confirms it, and
/// outliving the connection (ARCHITECTURE.md, "Resume"): when the stream fails it stops
/// taking frames (the queue keeps them) until the stream of a resumed connection comes
/// in a [`MainHandoff`], or the session ends (the handoff's sender is dropped, and the
/// queue with this task, releasing waiting senders).
pub(crate) async fn write_server_stream(
    send: ServerSend,
    mut queue: UploadReceiver,
    unconfirmed: Arc<Mutex<Unconfirmed>>,
    mut handoffs: mpsc::Receiver<MainHandoff>,
) {
    let mut merged = bytes::BytesMut::new();
    let mut send = Some(send);
    loop {
        let Some(stream) = send.as_mut() else {
            match handoffs.recv().await {
                Some(handoff) => send = take_over(handoff, &unconfirmed).await,
                None => return,
            }
            continue;
        };
        let next = tokio::select! {
            biased;
            handoff = handoffs.recv() => {
                match handoff {
                    Some(handoff) => send = take_over(handoff, &unconfirmed).await,
                    None => return,
                }
                continue;
            }
            next = queue.next(&mut merged, WRITE_BATCH_BYTES) => next,
        };
        match next {
            Next::Frames(frames) => {
                let frames = gather_more(&mut queue, &mut merged, frames).await;
                let chunk = merged.split().freeze();
                let len = chunk.len();
                lock(&unconfirmed).record(frames, chunk.clone());
                if stream.write_chunk(chunk).await.is_err() {
                    // Kept above: a resume sends it again.
                    send = None;
                }
                queue.written(len);
            }
            Next::Finish(done) => {
                if stream.finish().await.is_ok() {
                    let _ = done.send(());
                }
                return;
            }
        }
    }
}

fn lock(unconfirmed: &Mutex<Unconfirmed>) -> std::sync::MutexGuard<'_, Unconfirmed> {
    unconfirmed
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Takes a resumed connection's main stream: every upload from the number the server
/// read on goes first. `None` when they are no longer held (the session cannot go on).
async fn take_over(handoff: MainHandoff, unconfirmed: &Mutex<Unconfirmed>) -> Option<ServerSend> {
    let MainHandoff {
        mut send,
        from,
        done,
    } = handoff;
    let (replay, sent) = {
        let mut unconfirmed = lock(unconfirmed);
        (unconfirmed.replay_from(from), unconfirmed.sent())
    };
    match replay {
        Ok(replay) => {
            let bytes: usize = replay.iter().map(bytes::Bytes::len).sum();
            tracing::info!(
                from,
                sent,
                bytes,
                "sending again what the server did not read"
            );
            let _ = done.send(Ok(()));
            for chunk in replay {
                if send.write_chunk(chunk).await.is_err() {
                    break;
                }
            }
            Some(send)
        }
        Err(gap) => {
            let _ = done.send(Err(gap));
            None
        }
    }
}

/// Writes the control queue to the server's control stream (unidirectional; the server
/// allows it once the client is logged in), opening one on each connection the session
/// resumes on (`handoffs`); on a WebSocket, to the one stream the main writer shares.
/// What was written to a lost connection's control stream is lost with it: acks are
/// cumulative and sent again on a resume.
pub(crate) async fn write_control_stream(
    connection: ServerWire,
    mut queue: UploadReceiver,
    mut handoffs: mpsc::Receiver<ServerWire>,
) {
    let mut merged = bytes::BytesMut::new();
    let mut connection = Some(connection);
    loop {
        let Some(current) = connection.take() else {
            match handoffs.recv().await {
                Some(next) => connection = Some(next),
                None => return,
            }
            continue;
        };
        let opening = async {
            match &current {
                ServerWire::Quic(connection) => {
                    connection.open_uni().await.map(ServerSend::Quic).ok()
                }
                ServerWire::WebSocket(connection) => {
                    Some(ServerSend::WebSocket(connection.sender()))
                }
            }
        };
        let mut send = tokio::select! {
            opened = opening => match opened {
                Some(send) => send,
                // This connection ended: wait for the next.
                None => continue,
            },
            next = handoffs.recv() => match next {
                Some(next) => {
                    connection = Some(next);
                    continue;
                }
                None => return,
            },
        };
        loop {
            let next = tokio::select! {
                biased;
                next = handoffs.recv() => match next {
                    Some(next) => {
                        connection = Some(next);
                        break;
                    }
                    None => return,
                },
                next = queue.next(&mut merged, WRITE_BATCH_BYTES) => next,
            };
            match next {
                Next::Frames(_) => {
                    let len = merged.len();
                    let written = send.write_chunk(merged.split().freeze()).await;
                    queue.written(len);
                    if written.is_err() {
                        // Wait for a resumed connection.
                        break;
                    }
                }
                Next::Finish(done) => {
                    if send.finish().await.is_ok() {
                        let _ = done.send(());
                    }
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::UploadQueue;
    use bytes::Bytes;
    use peergroup_protocol::Priority;

    /// A queue holding `frames`, and the first batch the writer takes from it.
    async fn first_batch(
        frames: &[&'static [u8]],
    ) -> (UploadQueue, UploadReceiver, bytes::BytesMut, u64) {
        let (queue, mut rx) = UploadQueue::new(1 << 20, false);
        for frame in frames {
            queue.push_data(Bytes::from_static(frame), Priority::Low, 0, None, 0);
        }
        let mut merged = bytes::BytesMut::new();
        let Next::Frames(taken) = rx.next(&mut merged, WRITE_BATCH_BYTES).await else {
            panic!("frames were queued");
        };
        (queue, rx, merged, taken)
    }

    /// The application task queues one more frame as soon as it runs.
    fn send_soon(queue: &UploadQueue, frame: &'static [u8]) -> tokio::task::JoinHandle<()> {
        let queue = queue.clone();
        tokio::spawn(async move {
            queue.push_data(Bytes::from_static(frame), Priority::Low, 0, None, 0);
        })
    }

    /// `gather_more` on a first batch of `frames` while the application queues `[z]`,
    /// which must be left for the next batch; the frames the batch took, and the batch.
    async fn written_at_once(frames: &[&'static [u8]]) -> (u64, bytes::BytesMut) {
        let (queue, mut rx, mut merged, taken) = first_batch(frames).await;
        let sender = send_soon(&queue, b"[z]");
        let frames = gather_more(&mut rx, &mut merged, taken).await;
        sender.await.unwrap();
        assert_eq!(
            queue.queued_bytes(),
            merged.len() + 3,
            "[z] waits for the next batch"
        );
        (frames, merged)
    }

    /// A frame of a packet's size: with it, a batch is large enough to gather.
    const PACKET: &[u8] = &[0; GATHER_FROM_BYTES];

    // One thread: the spawned sender can only run while the writer yields.
    #[tokio::test(flavor = "current_thread")]
    async fn a_busy_sender_adds_its_frames_to_the_batch_before_it_is_written() {
        let (queue, mut rx, mut merged, taken) = first_batch(&[PACKET, b"[b]"]).await;
        let sender = send_soon(&queue, b"[c]");
        let frames = gather_more(&mut rx, &mut merged, taken).await;
        assert_eq!(frames, 3);
        assert_eq!(&merged[GATHER_FROM_BYTES..], b"[b][c]");
        sender.await.unwrap();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_burst_smaller_than_a_packet_is_written_at_once() {
        let (frames, merged) = written_at_once(&[b"[a]", b"[b]"]).await;
        assert_eq!(frames, 2);
        assert_eq!(&merged[..], b"[a][b]");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn gathering_goes_on_while_each_round_brings_several_frames() {
        let (queue, mut rx, mut merged, taken) = first_batch(&[PACKET, b"[b]"]).await;
        let sender = {
            let queue = queue.clone();
            tokio::spawn(async move {
                for round in [[b"[c]", b"[d]"], [b"[e]", b"[f]"]] {
                    for frame in round {
                        queue.push_data(Bytes::from_static(frame), Priority::Low, 0, None, 0);
                    }
                    tokio::task::yield_now().await;
                }
                // A round with a single frame ends the gathering.
                queue.push_data(Bytes::from_static(b"[g]"), Priority::Low, 0, None, 0);
                tokio::task::yield_now().await;
                queue.push_data(Bytes::from_static(b"[h]"), Priority::Low, 0, None, 0);
            })
        };
        let frames = gather_more(&mut rx, &mut merged, taken).await;
        assert_eq!(&merged[GATHER_FROM_BYTES..], b"[b][c][d][e][f][g]");
        assert_eq!(frames, 7);
        sender.await.unwrap();
        // What the writer took counts until it is written.
        assert_eq!(
            queue.queued_bytes(),
            merged.len() + 3,
            "[h] waits for the next batch"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_lone_frame_is_written_at_once() {
        let (frames, merged) = written_at_once(&[b"[a]"]).await;
        assert_eq!(frames, 1);
        assert_eq!(&merged[..], b"[a]");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_batch_already_large_is_written_at_once() {
        const BIG: &[u8] = &[0; GATHER_BELOW_BYTES];
        let (frames, merged) = written_at_once(&[BIG, b"[b]"]).await;
        assert_eq!(frames, 2);
        assert_eq!(merged.len(), GATHER_BELOW_BYTES + 3);
    }
}
