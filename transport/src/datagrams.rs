//! Reading QUIC datagrams in batches.
//!
//! Under load datagrams arrive in bursts (one UDP packet carries many QUIC datagrams,
//! and the socket hands over many packets per wake-up). A reader that handled them one at
//! a time paid its fixed costs per datagram: a lock, carrying out what the input caused,
//! handing events over and waking other tasks. Taking what has already arrived behind
//! the first datagram pays them once per burst, and never waits for more.

use bytes::Bytes;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

/// Datagrams taken in one batch at most: enough to cover a burst of full packets of
/// small datagrams, few enough that one batch's work under a lock stays short.
pub const DATAGRAM_BATCH: usize = 64;

/// Waits for the next datagram on `connection`, then takes the datagrams already received
/// behind it, up to [`DATAGRAM_BATCH`] in all, into `batch` (cleared first, in arrival
/// order). Never waits after the first.
///
/// # Errors
///
/// The connection's error when it ended before a datagram came (quinn hands over datagrams
/// that arrived before the end first). A batch that got its first datagram is `Ok`; the
/// next call reports the end.
pub async fn read_datagram_batch(
    connection: &quinn::Connection,
    batch: &mut Vec<Bytes>,
) -> Result<(), quinn::ConnectionError> {
    batch.clear();
    batch.push(connection.read_datagram().await?);
    // Polled once with a waker that does nothing: a datagram already queued is taken, and
    // a pending read is dropped (quinn wakes readers with `notify_waiters`, which keeps no
    // permit, so dropping one loses no wake-up).
    let mut cx = Context::from_waker(Waker::noop());
    while batch.len() < DATAGRAM_BATCH {
        match pin!(connection.read_datagram()).poll(&mut cx) {
            Poll::Ready(Ok(datagram)) => batch.push(datagram),
            Poll::Ready(Err(_)) | Poll::Pending => break,
        }
    }
    Ok(())
}
