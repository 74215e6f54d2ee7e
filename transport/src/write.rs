//! The batched writer's common step, shared by the client's and the server's writer tasks.
//!
//! The two writers take from different queues (the client's upload queue, the server's
//! per-client queue of frames it encodes only now) and end differently (the client on its
//! own close, the server when it drains), so each keeps its own loop; what they share is
//! how one batch goes out and how a stream is finished.

use bytes::BytesMut;

/// The most bytes a writer takes from its queue at once (beyond one frame): a few tens of
/// KiB, so the order of what waits is decided in the queue, by priority, rather than in
/// quinn's stream buffer.
pub const WRITE_BATCH_BYTES: usize = 32 << 10;

/// Hands the frames merged into `merged` to `send` as one buffer, leaving `merged` empty
/// (its capacity is kept for the next batch), and returns how many bytes went.
///
/// One buffer per batch because quinn scans a stream's unacknowledged buffers for each
/// packet it builds, so many small ones slow it down; it is handed over whole rather than
/// copied again.
///
/// # Errors
/// quinn's [`quinn::WriteError`] when the stream or the connection is gone; the batch is
/// lost with it.
pub async fn write_batch(
    send: &mut quinn::SendStream,
    merged: &mut BytesMut,
) -> Result<usize, quinn::WriteError> {
    let len = merged.len();
    send.write_chunk(merged.split().freeze()).await?;
    Ok(len)
}

/// Finishes `send` after everything written to it, then waits until the other side has
/// acknowledged all of it and the end (or stopped the stream, or the connection ended).
///
/// # Errors
/// [`quinn::ClosedStream`] when the stream was already finished or reset; nothing is
/// waited for then.
pub async fn finish_stream(send: &mut quinn::SendStream) -> Result<(), quinn::ClosedStream> {
    send.finish()?;
    // Whatever ends the wait, the stream is done with: there is nothing to retry.
    let _ = send.stopped().await;
    Ok(())
}
