//! Reading the fields before a payload by hand: the counterpart of `hand_encode.rs` for
//! [`crate::zero_copy`]'s decoders, on the hot path of the relay and of every receiver.
//!
//! Each reader accepts exactly what postcard's deserializer accepts for the same field
//! and gives the same value, and refuses what it refuses; property tests in
//! `tests/roundtrip.rs` check the decoders built on them against postcard for arbitrary
//! messages, every one-byte alteration of them and arbitrary bytes. The layout is
//! postcard's (<https://postcard.jamesmunns.com/wire-format>), as `hand_encode.rs`
//! describes it.
//!
//! Why by hand: decoding relay uploads was 8.8 % of the relay's CPU in a 1→1 flood of
//! 64-byte messages, and decoding deliveries 3.8 % of the clients'. Against the
//! serde-based decoders they replaced, measured when they were written: a `Deliver`
//! 28–35 ns against 44, a direct `Data` 29 against 50, a server datagram 24 against 40.
//! The benchmark's `codec` section times them against postcard's `decode_body`.

use crate::ids::{GroupId, HostId, PairId};
use crate::messages::{DatagramLane, Lane, Memberships, Priority, RelayDest, RelayDests};
use postcard::Error;

/// A position in a received body.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    /// Reads `bytes` from the start.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, at: 0 }
    }

    /// What has not been read yet.
    pub fn rest(&self) -> &'a [u8] {
        &self.bytes[self.at..]
    }

    /// One raw byte (postcard's `u8`).
    pub fn byte(&mut self) -> Result<u8, Error> {
        let byte = *self
            .bytes
            .get(self.at)
            .ok_or(Error::DeserializeUnexpectedEnd)?;
        self.at += 1;
        Ok(byte)
    }

    /// A LEB128 varint of at most `max_bytes` bytes whose last byte may be at most
    /// `max_last` when it is the `max_bytes`th (postcard's `try_take_varint_*`: longer
    /// encodings of a value are accepted, values past the type are not).
    fn varint(&mut self, max_bytes: u32, max_last: u8) -> Result<u64, Error> {
        let mut value = 0u64;
        for i in 0..max_bytes {
            let byte = self.byte()?;
            value |= u64::from(byte & 0x7F) << (7 * i);
            if byte & 0x80 == 0 {
                if i == max_bytes - 1 && byte > max_last {
                    return Err(Error::DeserializeBadVarint);
                }
                return Ok(value);
            }
        }
        Err(Error::DeserializeBadVarint)
    }

    /// A `u64` (and a `usize` on 64-bit targets): at most 10 bytes, the 10th at most 1.
    pub fn u64(&mut self) -> Result<u64, Error> {
        self.varint(10, 0x01)
    }

    /// A `u32`, and an enum's variant index: at most 5 bytes, the 5th at most 0x0F.
    pub fn u32(&mut self) -> Result<u32, Error> {
        // At most 4 * 7 + 4 = 32 bits: it fits.
        self.varint(5, 0x0F).map(|value| value as u32)
    }

    /// A sequence's length (a `usize`).
    fn len(&mut self) -> Result<u64, Error> {
        if usize::BITS == 64 {
            self.u64()
        } else {
            self.u32().map(u64::from)
        }
    }

    /// A `bool`: 0 or 1.
    pub fn boolean(&mut self) -> Result<bool, Error> {
        match self.byte()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(Error::DeserializeBadBool),
        }
    }

    /// An `Option`'s tag: whether a value follows.
    fn some(&mut self) -> Result<bool, Error> {
        match self.byte()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(Error::DeserializeBadOption),
        }
    }

    pub fn host(&mut self) -> Result<HostId, Error> {
        self.u64().map(HostId::from_raw)
    }

    pub fn group(&mut self) -> Result<Option<GroupId>, Error> {
        Ok(if self.some()? {
            Some(GroupId::from_raw(self.u64()?))
        } else {
            None
        })
    }

    pub fn lane(&mut self) -> Result<Lane, Error> {
        match self.u32()? {
            0 => Ok(Lane::Ordered {
                channel: self.byte()?,
            }),
            1 => Ok(Lane::Unordered),
            2 => Ok(Lane::Latest { key: self.u64()? }),
            _ => Err(Error::SerdeDeCustom),
        }
    }

    pub fn datagram_lane(&mut self) -> Result<DatagramLane, Error> {
        match self.u32()? {
            0 => Ok(DatagramLane::Plain),
            1 => Ok(DatagramLane::Sequenced {
                channel: self.byte()?,
            }),
            2 => Ok(DatagramLane::Ping { id: self.u32()? }),
            3 => Ok(DatagramLane::Pong { id: self.u32()? }),
            _ => Err(Error::SerdeDeCustom),
        }
    }

    pub fn priority(&mut self) -> Result<Priority, Error> {
        match self.u32()? {
            0 => Ok(Priority::High),
            1 => Ok(Priority::Medium),
            2 => Ok(Priority::Low),
            _ => Err(Error::SerdeDeCustom),
        }
    }

    pub fn memberships(&mut self) -> Result<Option<Memberships>, Error> {
        Ok(if self.some()? {
            Some(Memberships {
                sender: self.u32()?,
                receiver: self.u32()?,
            })
        } else {
            None
        })
    }

    /// A relay upload's destinations. The list is allocated for no more destinations than
    /// the bytes left could hold (two bytes each at least), whatever length it claims.
    /// Inlined: left to the compiler, the datagram decoder took 65 ns a message in the
    /// codec section instead of 38.
    #[inline]
    pub fn dests(&mut self) -> Result<RelayDests, Error> {
        let len = self.len()?;
        let room = self.rest().len() / 2;
        let mut dests =
            RelayDests::with_capacity(usize::try_from(len).unwrap_or(usize::MAX).min(room));
        for _ in 0..len {
            dests.push(RelayDest {
                pair: PairId::from_raw(self.u64()?),
                seq: self.u64()?,
            });
        }
        Ok(dests)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u64_of(bytes: &[u8]) -> Result<u64, Error> {
        Reader::new(bytes).u64()
    }

    #[test]
    fn varints_take_what_postcard_takes() {
        assert_eq!(u64_of(&[0x00]), Ok(0));
        assert_eq!(u64_of(&[0x7F]), Ok(127));
        assert_eq!(u64_of(&[0x80, 0x01]), Ok(128));
        // A longer encoding of a small value is accepted, as postcard accepts it.
        assert_eq!(u64_of(&[0x80, 0x00]), Ok(0));
        // u64::MAX: nine full bytes and a last byte of 1.
        let mut max = vec![0xFF; 9];
        max.push(0x01);
        assert_eq!(u64_of(&max), Ok(u64::MAX));
        max[9] = 0x02;
        assert_eq!(u64_of(&max), Err(Error::DeserializeBadVarint));
        assert_eq!(u64_of(&[0xFF; 11]), Err(Error::DeserializeBadVarint));
        assert_eq!(u64_of(&[0x80]), Err(Error::DeserializeUnexpectedEnd));
        assert_eq!(
            Reader::new(&[0xFF, 0xFF, 0xFF, 0xFF, 0x0F]).u32(),
            Ok(u32::MAX)
        );
        assert_eq!(
            Reader::new(&[0xFF, 0xFF, 0xFF, 0xFF, 0x10]).u32(),
            Err(Error::DeserializeBadVarint)
        );
    }

    #[test]
    fn a_claimed_length_allocates_no_more_than_the_bytes_left_could_hold() {
        // Claims u64::MAX destinations, then holds one.
        let mut bytes = vec![0xFF; 9];
        bytes.extend([0x01, 0x05, 0x06]);
        assert_eq!(
            Reader::new(&bytes).dests(),
            Err(Error::DeserializeUnexpectedEnd)
        );
        let mut reader = Reader::new(&[0x02, 0x01, 0x02, 0x03, 0x04]);
        let dests = reader.dests().unwrap();
        assert_eq!(
            dests[..],
            [
                RelayDest {
                    pair: PairId::from_raw(1),
                    seq: 2
                },
                RelayDest {
                    pair: PairId::from_raw(3),
                    seq: 4
                }
            ]
        );
        assert!(reader.rest().is_empty());
    }
}
