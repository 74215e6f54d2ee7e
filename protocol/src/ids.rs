//! Identifiers shared by both sides of the wire.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! wire_id {
    ($(#[$doc:meta])* $name:ident) => {
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

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
    };
}

wire_id!(
    /// A host: the server or one connected client.
    ///
    /// The server derives client ids from slotmap keys (slot generation in the high 32 bits,
    /// slot index in the low 32), so an id that outlived its host never names a newer host in
    /// the same slot. [`HostId::SERVER`] is reserved.
    HostId
);

wire_id!(
    /// A P2P group, generational like [`HostId`].
    GroupId
);

wire_id!(
    /// One lifetime of the pair state between two client hosts.
    ///
    /// The server creates a pair when two hosts first share a group and removes it once they
    /// have shared none for the linger time. Relay uploads name their destinations by pair,
    /// so a message sent under a pair that has since ended is refused instead of being
    /// mixed into the sequence of a newer pair between the same hosts.
    PairId
);

impl HostId {
    /// The server itself. Slotmap never hands out generation 0, so no client gets this id.
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
    fn server_id_is_one_and_ids_show_raw_values() {
        assert_eq!(HostId::SERVER.raw(), 1);
        assert_eq!(format!("{:?}", GroupId::from_raw(7)), "GroupId(7)");
        assert_eq!(PairId::from_raw(9).to_string(), "9");
    }
}
