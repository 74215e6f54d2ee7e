//! The writer tasks: each takes one send queue's frames, in the scheduler's order, and
//! writes them to its QUIC stream (the server's main and control streams, and each direct
//! link's stream). Writers never take the client's lock: senders fill the queue under it,
//! and the queue's own lock is all the two share.

use crate::outbound::{Next, UploadReceiver};
use peergroup_transport::{finish_stream, write_batch, WRITE_BATCH_BYTES};

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
            Next::Frames => match write_batch(&mut send, &mut merged).await {
                Ok(len) => queue.written(len),
                Err(_) => return,
            },
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

/// Opens the control stream to the server (unidirectional; the server allows it once the
/// client is logged in) and writes the control queue to it.
pub(crate) async fn write_control_stream(connection: quinn::Connection, queue: UploadReceiver) {
    let send = tokio::select! {
        opened = connection.open_uni() => match opened {
            Ok(send) => send,
            // The connection ended: dropping the queue releases its waiters.
            Err(_) => return,
        },
        _ = connection.closed() => return,
    };
    write_stream(connection, send, queue).await;
}
