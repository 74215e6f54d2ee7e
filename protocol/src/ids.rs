//! Identifiers shared by both sides of the wire.
//!
//! # Text form
//! Ids print (with both `Display` and `Debug`) and parse ([`std::str::FromStr`]) as a kind
//! letter, the slot index and, past the first generation, the generation: `h3` is host
//! slot 3 in its first generation, `h3.2` the same slot's second, `g1` a group, `p7` a
//! pair, and [`HostId::SERVER`] is `server`. The text is for people (logs, errors, a
//! command line); the wire carries the raw `u64` ([`HostId::raw`]), unchanged.
//!
//! The raw value is the server's slotmap key (`KeyData::as_ffi`): slot index in the low
//! 32 bits, slot version in the high 32. Slotmap gives live keys odd versions (1, 3, 5...)
//! and reads a version with its low bit set (`KeyData::from_ffi`), so versions `2k` and
//! `2k + 1` name the same slot; generation `n` is versions `2n - 2` and `2n - 1`, and
//! parsing gives the odd one, as the server hands out.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

macro_rules! wire_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(u64);

        impl $name {
            /// Wraps a raw wire value. Any `u64` is accepted; whether it names something that
            /// exists is for the receiver to check.
            pub const fn from_raw(raw: u64) -> Self {
                Self(raw)
            }

            /// The raw wire value (a varint-encoded `u64` on the wire).
            pub const fn raw(self) -> u64 {
                self.0
            }
        }

        /// The same text as `Display` (see the [module docs](self)), so logs of whole
        /// events stay short.
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write_slot(f, $kind, self.0)
            }
        }

        /// Parses the text `Display` prints (see the [module docs](self)).
        ///
        /// # Errors
        /// [`ParseIdError`] for text that is not this kind of id.
        impl FromStr for $name {
            type Err = ParseIdError;

            fn from_str(text: &str) -> Result<Self, ParseIdError> {
                parse_slot(text, $kind).map(Self)
            }
        }
    };
}

wire_id!(
    /// A host: the server or one connected client. Prints as `h3` or `h3.2` (slot 3, its
    /// second generation); the server as `server`.
    ///
    /// The server derives client ids from slotmap keys (slot generation in the high 32 bits,
    /// slot index in the low 32), so an id that outlived its host never names a newer host in
    /// the same slot. [`HostId::SERVER`] is reserved.
    HostId,
    'h'
);

wire_id!(
    /// A P2P group, generational like [`HostId`]. Prints as `g1` or `g1.2`.
    GroupId,
    'g'
);

wire_id!(
    /// One lifetime of the pair state between two client hosts. Prints as `p5` or `p5.2`.
    ///
    /// The server creates a pair when two hosts first share a group and removes it once they
    /// have shared none for the linger time. Relay uploads name their destinations by pair,
    /// so a message sent under a pair that has since ended is refused instead of being
    /// mixed into the sequence of a newer pair between the same hosts.
    PairId,
    'p'
);

/// What [`HostId::SERVER`] prints as and parses from.
const SERVER_TEXT: &str = "server";

/// The highest generation: the one of slot version `u32::MAX`.
const MAX_GENERATION: u32 = (u32::MAX >> 1) + 1;

/// Writes `kind`, the slot index and, past the first generation, `.generation`.
fn write_slot(f: &mut fmt::Formatter<'_>, kind: char, raw: u64) -> fmt::Result {
    if kind == 'h' && raw == HostId::SERVER.0 {
        return f.pad(SERVER_TEXT);
    }
    let index = raw as u32;
    let generation = ((raw >> 32) as u32 >> 1) + 1;
    if f.width().is_some() {
        // Padding needs the whole text first; the common case writes straight through.
        let text = if generation == 1 {
            format!("{kind}{index}")
        } else {
            format!("{kind}{index}.{generation}")
        };
        return f.pad(&text);
    }
    if generation == 1 {
        write!(f, "{kind}{index}")
    } else {
        write!(f, "{kind}{index}.{generation}")
    }
}

/// The raw value of `kind` + `index` [+ `.generation`], with the generation's odd version.
fn parse_slot(text: &str, kind: char) -> Result<u64, ParseIdError> {
    if text.is_empty() {
        return Err(ParseIdError::Empty);
    }
    if kind == 'h' && text == SERVER_TEXT {
        return Ok(HostId::SERVER.0);
    }
    let rest = text
        .strip_prefix(kind)
        .ok_or(ParseIdError::WrongKind { expected: kind })?;
    let (index, generation) = match rest.split_once('.') {
        Some((index, generation)) => (index, Some(generation)),
        None => (rest, None),
    };
    let index = decimal(index).ok_or(ParseIdError::BadIndex)?;
    let generation = match generation {
        None => 1,
        Some(digits) => match decimal(digits).ok_or(ParseIdError::BadGeneration)? {
            0 => return Err(ParseIdError::GenerationZero),
            n if n > MAX_GENERATION => return Err(ParseIdError::BadGeneration),
            n => n,
        },
    };
    let version = 2 * (generation - 1) + 1;
    Ok(u64::from(version) << 32 | u64::from(index))
}

/// ASCII digits only (no sign, no spaces) that fit a `u32`.
fn decimal(digits: &str) -> Option<u32> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Text that is not an id of the kind asked for: what `str::parse` of a [`HostId`],
/// [`GroupId`] or [`PairId`] fails with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseIdError {
    /// The text was empty.
    #[error("an id cannot be empty")]
    Empty,
    /// The text did not start with this kind's letter (`h` host, `g` group, `p` pair), and
    /// for a host was not `server` either.
    #[error("expected an id starting with '{expected}'")]
    WrongKind {
        /// The letter this kind of id starts with.
        expected: char,
    },
    /// The slot index after the letter was missing, not decimal digits, or over
    /// `u32::MAX`.
    #[error("the slot index is not a decimal number from 0 to 4294967295")]
    BadIndex,
    /// The generation after `.` was missing, not decimal digits, or over 2^31 (the
    /// generation of the highest slot version).
    #[error("the generation is not a decimal number from 1 to 2147483648")]
    BadGeneration,
    /// The generation was 0; the first generation is 1.
    #[error("generations start at 1")]
    GenerationZero,
}

impl HostId {
    /// The server itself: raw value 1 (slot 1, version 0), printed as `server`. Slotmap
    /// gives live keys odd versions, so no client is handed this value.
    pub const SERVER: HostId = HostId(1);
}

/// SHA-256 of a DER certificate: 32 bytes, shown as lowercase hex.
///
/// The server's certificate is pinned by it, and each client's identity certificate (its TLS
/// client certificate) is named by it when the server hands the client's identity to peers.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// Parses 64 hex digits; `:` separators (as `openssl x509 -fingerprint` prints them) are
    /// allowed.
    ///
    /// # Errors
    /// [`ParseFingerprintError`] when the text is not 32 bytes of hex.
    pub fn from_hex(text: &str) -> Result<Self, ParseFingerprintError> {
        let digits: Vec<u8> = text.bytes().filter(|b| *b != b':').collect();
        if digits.len() != 64 {
            return Err(ParseFingerprintError);
        }
        let mut out = [0u8; 32];
        for (i, pair) in digits.chunks(2).enumerate() {
            let hi = hex_value(pair[0]).ok_or(ParseFingerprintError)?;
            let lo = hex_value(pair[1]).ok_or(ParseFingerprintError)?;
            out[i] = hi << 4 | lo;
        }
        Ok(Fingerprint(out))
    }
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

/// The text given to [`Fingerprint::from_hex`] was not 64 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a fingerprint is 64 hex digits (SHA-256), optionally separated by ':'")]
pub struct ParseFingerprintError;

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_hex_round_trips_and_accepts_colons() {
        let fp = Fingerprint(core::array::from_fn(|i| i as u8 * 7));
        let text = fp.to_string();
        assert_eq!(text.len(), 64);
        assert_eq!(Fingerprint::from_hex(&text), Ok(fp));
        let with_colons: Vec<String> = fp.0.iter().map(|b| format!("{b:02X}")).collect();
        assert_eq!(Fingerprint::from_hex(&with_colons.join(":")), Ok(fp));
    }

    #[test]
    fn fingerprint_rejects_bad_text() {
        assert!(Fingerprint::from_hex("abc").is_err());
        assert!(Fingerprint::from_hex(&"g".repeat(64)).is_err());
    }

    #[test]
    fn server_id_is_one_and_ids_show_slot_and_generation() {
        assert_eq!(HostId::SERVER.raw(), 1);
        assert_eq!(HostId::SERVER.to_string(), "server");
        assert_eq!(format!("{:?}", HostId::SERVER), "server");
        // What the server's first keys look like: slot 1, version 1.
        assert_eq!(HostId::from_raw(1 << 32 | 1).to_string(), "h1");
        assert_eq!(format!("{:?}", GroupId::from_raw(1 << 32 | 7)), "g7");
        // Version 3 is the second generation; version 2 names the same slot.
        assert_eq!(PairId::from_raw(3 << 32 | 9).to_string(), "p9.2");
        assert_eq!(PairId::from_raw(2 << 32 | 9).to_string(), "p9.2");
        // Version 0 reads as version 1, as slotmap reads it.
        assert_eq!(GroupId::from_raw(1).to_string(), "g1");
        assert_eq!(HostId::from_raw(0).to_string(), "h0");
        assert_eq!(
            HostId::from_raw(u64::MAX).to_string(),
            "h4294967295.2147483648"
        );
        assert_eq!(format!("[{:>4}]", HostId::from_raw(1 << 32 | 3)), "[  h3]");
        assert_eq!(format!("[{:<7}]", HostId::SERVER), "[server ]");
        let event = Some(HostId::from_raw(5 << 32 | 2));
        assert_eq!(format!("{event:?}"), "Some(h2.3)");
    }

    #[test]
    fn ids_parse_to_the_odd_version_of_their_generation() {
        assert_eq!("server".parse::<HostId>(), Ok(HostId::SERVER));
        assert_eq!("h7".parse(), Ok(HostId::from_raw(1 << 32 | 7)));
        assert_eq!("h7.1".parse(), Ok(HostId::from_raw(1 << 32 | 7)));
        assert_eq!("h7.3".parse(), Ok(HostId::from_raw(5 << 32 | 7)));
        assert_eq!("g0".parse(), Ok(GroupId::from_raw(1 << 32)));
        assert_eq!("p12.2".parse(), Ok(PairId::from_raw(3 << 32 | 12)));
        assert_eq!(
            "h4294967295.2147483648".parse(),
            Ok(HostId::from_raw(u64::MAX))
        );
    }

    #[test]
    fn ids_refuse_text_that_is_not_their_kind() {
        use ParseIdError::*;
        let host = |text: &str| text.parse::<HostId>();
        let group = |text: &str| text.parse::<GroupId>();
        assert_eq!(host(""), Err(Empty));
        assert_eq!(host("g7"), Err(WrongKind { expected: 'h' }));
        assert_eq!(host("H7"), Err(WrongKind { expected: 'h' }));
        assert_eq!(host(" h7"), Err(WrongKind { expected: 'h' }));
        assert_eq!(group("server"), Err(WrongKind { expected: 'g' }));
        assert_eq!(group("h1"), Err(WrongKind { expected: 'g' }));
        assert_eq!("h1".parse::<PairId>(), Err(WrongKind { expected: 'p' }));
        assert_eq!(host("h"), Err(BadIndex));
        assert_eq!(host("h.2"), Err(BadIndex));
        assert_eq!(host("h+7"), Err(BadIndex));
        assert_eq!(host("h7 "), Err(BadIndex));
        assert_eq!(host("h-1"), Err(BadIndex));
        assert_eq!(host("hserver"), Err(BadIndex));
        assert_eq!(host("h4294967296"), Err(BadIndex));
        assert_eq!(host("h7."), Err(BadGeneration));
        assert_eq!(host("h7.x"), Err(BadGeneration));
        assert_eq!(host("h7.2.1"), Err(BadGeneration));
        assert_eq!(host("h7.2147483649"), Err(BadGeneration));
        assert_eq!(host("h7.99999999999"), Err(BadGeneration));
        assert_eq!(host("h7.0"), Err(GenerationZero));
        assert_eq!(host("server.2"), Err(WrongKind { expected: 'h' }));
    }

    /// Both halves of the raw value with the version's low bit set: the slot the value
    /// names, as slotmap reads it.
    fn slot_of(raw: u64) -> u64 {
        raw | 1 << 32
    }

    proptest::proptest! {
        #[test]
        fn display_parses_back_to_the_same_slot(raw: u64) {
            let host = HostId::from_raw(raw);
            let parsed: HostId = host.to_string().parse().unwrap();
            proptest::prop_assert_eq!(slot_of(parsed.raw()), slot_of(raw));
            proptest::prop_assert_eq!(format!("{host:?}"), host.to_string());
            // The parsed value is canonical: it prints the same and parses to itself.
            proptest::prop_assert_eq!(parsed.to_string(), host.to_string());
            proptest::prop_assert_eq!(parsed.to_string().parse::<HostId>(), Ok(parsed));

            let group = GroupId::from_raw(raw);
            let parsed: GroupId = group.to_string().parse().unwrap();
            proptest::prop_assert_eq!(slot_of(parsed.raw()), slot_of(raw));
            proptest::prop_assert_eq!(parsed.raw() >> 32 & 1, 1, "odd version");

            let pair = PairId::from_raw(raw);
            let parsed: PairId = pair.to_string().parse().unwrap();
            proptest::prop_assert_eq!(slot_of(parsed.raw()), slot_of(raw));
            proptest::prop_assert_eq!(format!("{pair:?}"), pair.to_string());
        }

        #[test]
        fn every_slot_and_generation_prints_and_parses(index: u32, generation in 1..=MAX_GENERATION) {
            let text = if generation == 1 {
                format!("g{index}")
            } else {
                format!("g{index}.{generation}")
            };
            let group: GroupId = text.parse().unwrap();
            proptest::prop_assert_eq!(group.raw() as u32, index);
            proptest::prop_assert_eq!(((group.raw() >> 32) as u32 >> 1) + 1, generation);
            proptest::prop_assert_eq!(group.to_string(), text);
        }
    }
}
