//! Framing: a big-endian `u32` length prefix, then a postcard body.
//!
//! The length is checked against the receiver's maximum before anything is allocated, and
//! decoding never panics: every failure is a [`FrameError`] that maps to one [`CloseCode`].

use crate::close::CloseCode;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{de::DeserializeOwned, Serialize};

/// Bytes in a frame's length prefix.
pub const LENGTH_PREFIX_LEN: usize = 4;

/// Default largest message payload, in bytes (1 MiB).
pub const DEFAULT_MAX_MESSAGE_LEN: u32 = 1 << 20;

/// Bytes a frame may hold beyond its payload: headers and destination lists (64 KiB).
/// The largest frame is always the largest message plus this, so a client derives the
/// message limit from the frame limit in the welcome.
pub const FRAME_HEADROOM: u32 = 64 << 10;

/// Default largest frame body, in bytes: [`DEFAULT_MAX_MESSAGE_LEN`] plus
/// [`FRAME_HEADROOM`].
pub const DEFAULT_MAX_FRAME_LEN: u32 = DEFAULT_MAX_MESSAGE_LEN + FRAME_HEADROOM;

/// A frame could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The length prefix announced more than the maximum.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// The announced (or, when sending, the encoded) body length in bytes.
        len: u64,
        /// The maximum in force, in bytes.
        max: u32,
    },
    /// The body does not decode as the expected message.
    #[error("malformed frame: {0}")]
    Malformed(#[from] postcard::Error),
    /// The body decoded but left bytes over.
    #[error("malformed frame: {extra} trailing bytes")]
    TrailingBytes {
        /// How many bytes were left.
        extra: usize,
    },
}

impl FrameError {
    /// The close code a connection closes with when it receives this error.
    pub fn close_code(&self) -> CloseCode {
        match self {
            FrameError::TooLarge { .. } => CloseCode::FrameTooLarge,
            FrameError::Malformed(_) | FrameError::TrailingBytes { .. } => {
                CloseCode::ProtocolViolation
            }
        }
    }
}

/// Appends `message` as one frame (length prefix and body) to `out`.
///
/// # Errors
/// [`FrameError::TooLarge`] when the body would exceed `max` bytes; `out` is left as it was.
pub fn encode_frame<T: Serialize>(
    message: &T,
    max: u32,
    out: &mut BytesMut,
) -> Result<(), FrameError> {
    let start = out.len();
    out.put_u32(0);
    let result = postcard::serialize_with_flavor(message, BytesMutFlavor(out));
    if let Err(error) = result {
        out.truncate(start);
        return Err(error.into());
    }
    let len = out.len() - start - LENGTH_PREFIX_LEN;
    if len > max as usize {
        out.truncate(start);
        return Err(FrameError::TooLarge {
            len: len as u64,
            max,
        });
    }
    out[start..start + LENGTH_PREFIX_LEN].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

/// Encodes `message` as one frame in a buffer of its own.
///
/// # Errors
/// As [`encode_frame`].
pub fn frame_to_bytes<T: Serialize>(message: &T, max: u32) -> Result<Bytes, FrameError> {
    let mut out = BytesMut::with_capacity(LENGTH_PREFIX_LEN + encoded_len(message));
    encode_frame(message, max, &mut out)?;
    Ok(out.freeze())
}

/// Reads a length prefix and checks it against `max` before the body is allocated.
///
/// # Errors
/// [`FrameError::TooLarge`] when the length exceeds `max`.
pub fn body_len(prefix: [u8; LENGTH_PREFIX_LEN], max: u32) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(prefix);
    if len > max {
        return Err(FrameError::TooLarge {
            len: len as u64,
            max,
        });
    }
    Ok(len as usize)
}

/// Decodes one frame body (or one datagram) as `T`. All of `body` must be used.
///
/// # Errors
/// [`FrameError::Malformed`] or [`FrameError::TrailingBytes`]; never panics.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    let (message, rest) = postcard::take_from_bytes(body)?;
    if !rest.is_empty() {
        return Err(FrameError::TrailingBytes { extra: rest.len() });
    }
    Ok(message)
}

/// Encodes a datagram body (no length prefix: a QUIC datagram is self-delimiting).
///
/// # Errors
/// [`FrameError::Malformed`] only if serde fails, which the message types never do.
pub fn datagram_to_bytes<T: Serialize>(message: &T) -> Result<Bytes, FrameError> {
    let mut out = BytesMut::with_capacity(encoded_len(message));
    postcard::serialize_with_flavor(message, BytesMutFlavor(&mut out))?;
    Ok(out.freeze())
}

/// The length of `message`'s encoding, measured first so a buffer is allocated once
/// (growing one copies what was written so far, payload included). 0 if serde fails.
fn encoded_len<T: Serialize>(message: &T) -> usize {
    postcard::serialize_with_flavor(message, postcard::ser_flavors::Size::default()).unwrap_or(0)
}

/// Reads the protocol version from the body of a client's first frame, even when the rest
/// of it is from a newer version this build cannot decode.
///
/// Returns `None` when the body is not a hello at all.
pub fn peek_hello_version(body: &[u8]) -> Option<u32> {
    // `ClientToServer::Hello` is variant 0 and `Hello::version` is its first field.
    let (variant, rest): (u32, _) = postcard::take_from_bytes(body).ok()?;
    if variant != 0 {
        return None;
    }
    let (version, _): (u32, _) = postcard::take_from_bytes(rest).ok()?;
    Some(version)
}

/// A sans-IO reassembler: push bytes as they arrive, pull whole frame bodies out.
///
/// It keeps whatever was pushed and not yet taken out. A caller that takes every whole
/// body after each push holds at most one partial frame: under `max` plus the prefix plus
/// what one push added.
#[derive(Debug)]
pub struct FrameDecoder {
    buffer: BytesMut,
    max: u32,
}

impl FrameDecoder {
    /// A decoder that refuses frame bodies longer than `max` bytes.
    pub fn new(max: u32) -> Self {
        Self {
            buffer: BytesMut::new(),
            max,
        }
    }

    /// Changes the longest frame body accepted from here on (a server reads the hello with
    /// a small limit, then the client's frames with the full one).
    pub fn set_max(&mut self, max: u32) {
        self.max = max;
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// Bytes received and not yet taken out as frames.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// The next whole frame body, or `None` until more bytes arrive.
    ///
    /// # Errors
    /// [`FrameError::TooLarge`] as soon as a prefix exceeds the maximum; the stream cannot be
    /// resynchronised after that.
    pub fn next_body(&mut self) -> Result<Option<Bytes>, FrameError> {
        if self.buffer.len() < LENGTH_PREFIX_LEN {
            return Ok(None);
        }
        let mut prefix = [0u8; LENGTH_PREFIX_LEN];
        prefix.copy_from_slice(&self.buffer[..LENGTH_PREFIX_LEN]);
        let len = body_len(prefix, self.max)?;
        if self.buffer.len() < LENGTH_PREFIX_LEN + len {
            return Ok(None);
        }
        self.buffer.advance(LENGTH_PREFIX_LEN);
        Ok(Some(self.buffer.split_to(len).freeze()))
    }
}

/// Lets postcard write straight into a `BytesMut`, copying slices whole (postcard's
/// `to_extend` feeds bytes one at a time, which `BytesMut` copies one at a time: 8x
/// slower for a 64-byte payload, 40x for 1 KiB).
struct BytesMutFlavor<'a>(&'a mut BytesMut);

impl postcard::ser_flavors::Flavor for BytesMutFlavor<'_> {
    type Output = ();

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.put_u8(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}
