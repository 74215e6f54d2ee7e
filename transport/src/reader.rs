//! Length-prefixed frames read from a byte stream in large chunks.

use crate::end::ReadEnd;
use crate::source::ByteSource;
use bytes::Bytes;
use peergroup_protocol::{CloseCode, FrameDecoder};

/// The most bytes taken from the stream in one read: one read (and, on QUIC, one lock of
/// quinn's connection state) serves many small frames.
pub const READ_CHUNK: usize = 64 * 1024;

/// Reads length-prefixed frames (`peergroup_protocol::frame`) from `S`, a QUIC receive
/// stream unless said otherwise.
#[derive(Debug)]
pub struct FrameReader<S = quinn::RecvStream> {
    source: S,
    decoder: FrameDecoder,
}

impl<S: ByteSource> FrameReader<S> {
    /// Frames with bodies of at most `max` bytes from `source`.
    pub fn new(source: S, max: u32) -> Self {
        Self {
            source,
            decoder: FrameDecoder::new(max),
        }
    }

    /// Changes the largest body accepted from the next frame on, in bytes (the server
    /// reads the hello with a small limit, then the client's frames with the full one).
    pub fn set_max(&mut self, max: u32) {
        self.decoder.set_max(max);
    }

    /// The next frame body if the last read already brought it, without waiting.
    ///
    /// # Errors
    /// [`ReadEnd::Violation`] with [`CloseCode::FrameTooLarge`] for a length prefix over
    /// the maximum.
    pub fn buffered(&mut self) -> Result<Option<Bytes>, ReadEnd> {
        Ok(self.decoder.next_body()?)
    }

    /// The next frame body; `Ok(None)` on a clean end of stream between frames.
    ///
    /// # Errors
    /// [`ReadEnd::Violation`] with [`CloseCode::FrameTooLarge`] for a length prefix over
    /// the maximum, with [`CloseCode::ProtocolViolation`] when the stream ends inside a
    /// frame; whatever the source reports (see [`ByteSource::read_chunk`]).
    pub async fn next(&mut self) -> Result<Option<Bytes>, ReadEnd> {
        loop {
            if let Some(body) = self.decoder.next_body()? {
                return Ok(Some(body));
            }
            match self.source.read_chunk(READ_CHUNK).await? {
                Some(chunk) => self.decoder.push(&chunk),
                None if self.decoder.buffered() == 0 => return Ok(None),
                None => {
                    return Err(ReadEnd::Violation(
                        CloseCode::ProtocolViolation,
                        "stream ended inside a frame".into(),
                    ))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// A stream that hands out the given chunks, then ends.
    struct Chunks(VecDeque<Bytes>);

    impl ByteSource for Chunks {
        async fn read_chunk(&mut self, max: usize) -> Result<Option<Bytes>, ReadEnd> {
            let Some(mut chunk) = self.0.pop_front() else {
                return Ok(None);
            };
            if chunk.len() > max {
                self.0.push_front(chunk.split_off(max));
            }
            Ok(Some(chunk))
        }
    }

    fn reading(chunks: &[&[u8]], max: u32) -> FrameReader<Chunks> {
        let chunks = chunks.iter().map(|c| Bytes::copy_from_slice(c)).collect();
        FrameReader::new(Chunks(chunks), max)
    }

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut out = (body.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(body);
        out
    }

    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(future)
    }

    #[test]
    fn frames_split_across_chunks_come_out_whole_and_in_order() {
        let mut bytes = frame(b"hello");
        bytes.extend(frame(b""));
        bytes.extend(frame(b"world!"));
        // Cut inside the first prefix, inside the first body, and inside the last body.
        let (a, rest) = bytes.split_at(2);
        let (b, rest) = rest.split_at(5);
        let (c, d) = rest.split_at(rest.len() - 3);
        let mut reader = reading(&[a, b, c, d], 1024);
        block_on(async {
            assert_eq!(reader.next().await.unwrap().unwrap(), &b"hello"[..]);
            assert_eq!(reader.next().await.unwrap().unwrap(), &b""[..]);
            assert_eq!(reader.next().await.unwrap().unwrap(), &b"world!"[..]);
            assert!(reader.next().await.unwrap().is_none());
        });
    }

    #[test]
    fn frames_one_read_brought_are_buffered_without_waiting() {
        let mut bytes = frame(b"one");
        bytes.extend(frame(b"two"));
        bytes.extend(&frame(b"three")[..3]);
        let mut reader = reading(&[&bytes], 1024);
        block_on(async {
            assert_eq!(reader.next().await.unwrap().unwrap(), &b"one"[..]);
        });
        assert_eq!(reader.buffered().unwrap().unwrap(), &b"two"[..]);
        assert!(reader.buffered().unwrap().is_none(), "the third is partial");
    }

    #[test]
    fn a_clean_end_between_frames_is_none() {
        let mut reader = reading(&[&frame(b"last")], 1024);
        block_on(async {
            assert_eq!(reader.next().await.unwrap().unwrap(), &b"last"[..]);
            assert!(reader.next().await.unwrap().is_none());
        });
        let mut empty = reading(&[], 1024);
        assert!(block_on(empty.next()).unwrap().is_none());
    }

    #[test]
    fn an_end_inside_a_frame_is_a_protocol_violation() {
        for cut in [1, 4, 6] {
            let bytes = frame(b"truncated");
            let mut reader = reading(&[&bytes[..cut]], 1024);
            let end = block_on(reader.next()).unwrap_err();
            assert!(
                matches!(&end, ReadEnd::Violation(CloseCode::ProtocolViolation, text)
                    if text == "stream ended inside a frame"),
                "cut after {cut} bytes: {end:?}"
            );
        }
    }

    #[test]
    fn an_oversized_length_is_frame_too_large_before_its_body_arrives() {
        // Only the prefix: the limit is checked before any body is waited for.
        let mut reader = reading(&[&1025u32.to_be_bytes()], 1024);
        let end = block_on(reader.next()).unwrap_err();
        assert!(
            matches!(end, ReadEnd::Violation(CloseCode::FrameTooLarge, _)),
            "{end:?}"
        );
        // Exactly the maximum passes.
        let mut reader = reading(&[&frame(&[7; 16])], 16);
        assert_eq!(block_on(reader.next()).unwrap().unwrap().len(), 16);
    }

    #[test]
    fn a_raised_maximum_applies_to_the_next_frame() {
        let mut bytes = frame(b"hi");
        bytes.extend(frame(&[1; 100]));
        let mut reader = reading(&[&bytes], 8);
        block_on(async {
            assert_eq!(reader.next().await.unwrap().unwrap(), &b"hi"[..]);
            reader.set_max(100);
            assert_eq!(reader.next().await.unwrap().unwrap().len(), 100);
        });
    }
}
