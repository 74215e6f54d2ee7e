//! Where a [`FrameReader`](crate::FrameReader) gets its bytes: the carrier seam.
//!
//! QUIC streams implement it here; the second carrier, WebSocket over TLS, implements it
//! for its read half ([`crate::WsReader`]) and the framing above it stays as it is.

use crate::end::ReadEnd;
use bytes::Bytes;
use peergroup_protocol::CloseCode;
use std::future::Future;

/// An ordered byte stream read in chunks.
pub trait ByteSource {
    /// The next chunk of at most `max` bytes, in stream order; `Ok(None)` once the other
    /// side finished the stream.
    ///
    /// # Errors
    /// [`ReadEnd::Connection`] when the connection ended, [`ReadEnd::Violation`] when the
    /// other side misused the stream (reset it, for example).
    fn read_chunk(
        &mut self,
        max: usize,
    ) -> impl Future<Output = Result<Option<Bytes>, ReadEnd>> + Send;
}

impl ByteSource for quinn::RecvStream {
    async fn read_chunk(&mut self, max: usize) -> Result<Option<Bytes>, ReadEnd> {
        // Ordered: frames must be rebuilt in stream order.
        match quinn::RecvStream::read_chunk(self, max, true).await {
            Ok(chunk) => Ok(chunk.map(|chunk| chunk.bytes)),
            Err(error) => Err(read_error(error)),
        }
    }
}

/// A quinn read error as a [`ReadEnd`]: a lost connection is the connection's end; any
/// other failure (a reset stream, a stopped or closed one) is the other side breaking the
/// protocol, which never resets a stream it still uses.
pub fn read_error(error: quinn::ReadError) -> ReadEnd {
    match error {
        quinn::ReadError::ConnectionLost(error) => ReadEnd::Connection(error),
        other => ReadEnd::Violation(CloseCode::ProtocolViolation, other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_connection_is_the_connection_and_a_reset_a_violation() {
        let lost = read_error(quinn::ReadError::ConnectionLost(
            quinn::ConnectionError::TimedOut,
        ));
        assert!(matches!(
            lost,
            ReadEnd::Connection(quinn::ConnectionError::TimedOut)
        ));
        let reset = read_error(quinn::ReadError::Reset(quinn::VarInt::from_u32(3)));
        assert!(matches!(
            reset,
            ReadEnd::Violation(CloseCode::ProtocolViolation, _)
        ));
    }
}
