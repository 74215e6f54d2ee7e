//! Helpers shared by the fuzz targets in `fuzz_targets/`. See `fuzz/README.md`.

use bytes::Bytes;
use peergroup_protocol::{datagram_to_bytes, decode_body, frame_to_bytes, FrameDecoder};
use serde::{de::DeserializeOwned, Serialize};
use std::fmt::Debug;

/// Checks one decoder on `body`: a message that decodes re-encodes, canonically, into no
/// more bytes than it came from, decodes again to the same message, and travels the same
/// as a frame; bytes that do not decode give an error with a close code, never a panic.
/// Returns the message, if it decoded.
pub fn round_trip<T>(body: &[u8]) -> Option<T>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let decoded = decode_body::<T>(body);
    // The typed API decodes the same bytes the same way.
    let typed = peergroup_protocol::typed::decode::<T>(body);
    assert_eq!(
        decoded.is_ok(),
        typed.is_ok(),
        "decode_body and typed::decode disagree"
    );
    let message = match decoded {
        Ok(message) => message,
        Err(error) => {
            let _ = (error.close_code(), error.to_string());
            return None;
        }
    };
    let encoded = datagram_to_bytes(&message).expect("a decoded message encodes");
    // Postcard's encoding is the shortest: any other spelling (overlong varints) is longer.
    assert!(
        encoded.len() <= body.len(),
        "re-encoding grew from {} to {} bytes",
        body.len(),
        encoded.len()
    );
    let again: T = decode_body(&encoded).expect("a re-encoded message decodes");
    assert_eq!(again, message, "decode(encode(m)) != m");
    assert_eq!(
        datagram_to_bytes(&again).expect("encodes"),
        encoded,
        "encoding is not canonical"
    );
    // As a frame: the length prefix carries exactly the body.
    let frame = frame_to_bytes(&message, u32::MAX).expect("frames");
    let mut decoder = FrameDecoder::new(u32::MAX);
    decoder.push(&frame);
    let body = decoder.next_body().expect("fits").expect("whole");
    assert_eq!(body, encoded);
    assert!(matches!(decoder.next_body(), Ok(None)));
    Some(message)
}

/// Round trip for types without a useful `PartialEq` (floats: NaN): compares bytes only.
pub fn round_trip_bytes<T>(body: &[u8])
where
    T: Serialize + DeserializeOwned,
{
    let Ok(message) = peergroup_protocol::typed::decode::<T>(body) else {
        return;
    };
    let encoded = peergroup_protocol::typed::encode(&message).expect("a decoded message encodes");
    assert!(encoded.len() <= body.len(), "re-encoding grew");
    let again: T = peergroup_protocol::typed::decode(&encoded).expect("re-decodes");
    assert_eq!(
        peergroup_protocol::typed::encode(&again).expect("encodes"),
        encoded,
        "encoding is not canonical"
    );
}

/// A payload of `len` bytes (zeros after an 8-byte tag), cheap to make for large sizes.
pub fn tagged_payload(tag: u64, len: usize) -> Bytes {
    let mut out = vec![0u8; len.max(8)];
    out[..8].copy_from_slice(&tag.to_be_bytes());
    Bytes::from(out)
}

/// The tag of a [`tagged_payload`].
pub fn payload_tag(payload: &[u8]) -> Option<u64> {
    let head: [u8; 8] = payload.get(..8)?.try_into().ok()?;
    Some(u64::from_be_bytes(head))
}
