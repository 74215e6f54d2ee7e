//! `FrameDecoder` fed arbitrary bytes in arbitrary chunkings.
//! Invariants: it yields exactly the bodies a straightforward reading of the length
//! prefixes gives, however the bytes are split; it refuses a prefix over its maximum as
//! soon as the prefix is whole and never yields a body over it; after each drain it holds
//! less than one prefix plus the maximum (it never buffers past its maximum); and each
//! body re-framed gives back the bytes it came from.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use peergroup_protocol::{encode_frame, FrameDecoder, FrameError, LENGTH_PREFIX_LEN};

/// The input, read by hand so real frames seed it easily: the decoder's maximum (two
/// bytes, big-endian: small, so the fuzzer reaches both sides of it), a count `n`, `n`
/// push sizes used in turn (0 pushes nothing; 7s after them), then the bytes.
struct Input<'a> {
    max: u32,
    chunks: &'a [u8],
    data: &'a [u8],
}

impl<'a> Input<'a> {
    fn read(bytes: &'a [u8]) -> Option<Self> {
        let (&[hi, lo, n], rest) = bytes.split_first_chunk::<3>()?;
        let (chunks, data) = rest.split_at_checked(usize::from(n))?;
        Some(Input {
            max: u32::from(u16::from_be_bytes([hi, lo])),
            chunks,
            data,
        })
    }
}

/// What a decoder yields: the bodies, then whether it stopped on an oversized prefix.
#[derive(Debug, PartialEq)]
struct Outcome {
    bodies: Vec<Bytes>,
    too_large: bool,
}

/// Takes every whole body out; `true` once it refused a prefix.
fn drain(decoder: &mut FrameDecoder, max: u32, out: &mut Outcome) {
    while !out.too_large {
        match decoder.next_body() {
            Ok(Some(body)) => {
                assert!(body.len() <= max as usize, "a body over the maximum");
                out.bodies.push(body);
            }
            Ok(None) => {
                // A partial frame at most: under a prefix, or a prefix within the maximum
                // and less than its body.
                assert!(
                    decoder.buffered() < LENGTH_PREFIX_LEN + max as usize,
                    "holds {} bytes with a maximum of {max}",
                    decoder.buffered()
                );
                return;
            }
            Err(FrameError::TooLarge { len, max: m }) => {
                assert_eq!(m, max);
                assert!(len > u64::from(max));
                out.too_large = true;
            }
            Err(other) => panic!("unexpected error {other}"),
        }
    }
}

/// Reads the bytes by hand: length, body, length, body...
fn reference(data: &[u8], max: u32) -> Outcome {
    let mut out = Outcome {
        bodies: Vec::new(),
        too_large: false,
    };
    let mut rest = data;
    while rest.len() >= LENGTH_PREFIX_LEN {
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
        if len > max {
            out.too_large = true;
            break;
        }
        let len = len as usize;
        if rest.len() < LENGTH_PREFIX_LEN + len {
            break;
        }
        out.bodies.push(Bytes::copy_from_slice(
            &rest[LENGTH_PREFIX_LEN..LENGTH_PREFIX_LEN + len],
        ));
        rest = &rest[LENGTH_PREFIX_LEN + len..];
    }
    out
}

fuzz_target!(|bytes: &[u8]| {
    let Some(input) = Input::read(bytes) else {
        return;
    };
    let max = input.max;
    let expected = reference(input.data, max);

    // All at once.
    let mut whole = FrameDecoder::new(max);
    let mut got_whole = Outcome {
        bodies: Vec::new(),
        too_large: false,
    };
    whole.push(input.data);
    drain(&mut whole, max, &mut got_whole);
    assert_eq!(got_whole, expected, "whole input");

    // In the given chunks, draining after each push as the drivers do.
    let mut chunked = FrameDecoder::new(max);
    let mut got_chunked = Outcome {
        bodies: Vec::new(),
        too_large: false,
    };
    let mut rest = input.data;
    let mut sizes = input
        .chunks
        .iter()
        .copied()
        .chain(std::iter::repeat(7))
        .map(usize::from);
    while !rest.is_empty() && !got_chunked.too_large {
        let n = sizes.next().unwrap_or(1).min(rest.len());
        let (now, later) = rest.split_at(n);
        chunked.push(now);
        rest = later;
        drain(&mut chunked, max, &mut got_chunked);
    }
    assert_eq!(got_chunked, expected, "chunked input");

    // Re-framing the bodies gives back the bytes they were read from.
    let mut reframed = BytesMut::new();
    for body in &expected.bodies {
        // Frame a raw body: postcard writes a byte slice as (varint length, bytes), so
        // write the prefix by hand and compare with the input's.
        reframed.extend_from_slice(&(body.len() as u32).to_be_bytes());
        reframed.extend_from_slice(body);
    }
    assert_eq!(&input.data[..reframed.len()], &reframed[..]);

    // encode_frame refuses what the decoder would refuse, and leaves the buffer as it was.
    if let Some(body) = expected.bodies.first() {
        let message = body.to_vec();
        let mut out = BytesMut::from(&b"keep"[..]);
        match encode_frame(&message, max, &mut out) {
            Ok(()) => {
                let mut decoder = FrameDecoder::new(max);
                decoder.push(&out[4..]);
                let framed = decoder.next_body().expect("fits").expect("whole");
                let back: Vec<u8> = peergroup_protocol::decode_body(&framed).expect("decodes");
                assert_eq!(back, message);
            }
            Err(FrameError::TooLarge { .. }) => assert_eq!(&out[..], b"keep"),
            Err(other) => panic!("unexpected error {other}"),
        }
    }
});
