//! Punch probes: the small UDP packets that open NAT mappings and prove a candidate pair
//! works, sent on the same socket as QUIC.
//!
//! A probe's first byte is in `0x00..=0x3F`. Every QUIC packet has the fixed bit `0x40`
//! set once greasing is off (RFC 9000 section 17; RFC 9287 lets a peer clear it only if
//! asked, and peergroup never asks), so one look at the first byte tells the two apart.
//!
//! Layout (big-endian), then a 16-byte MAC over everything before it:
//!
//! | bytes | field |
//! | --- | --- |
//! | 1 | kind: `0x01` request, `0x02` response |
//! | 4 | magic `PGP1` |
//! | 8 | pair id |
//! | 4 | attempt (the punch order it belongs to) |
//! | 8 | nonce (a request's; a response echoes it) |
//! | 1 | 1 if the sender is the controlling side, else 0 |
//! | 1 + 4/16 + 2 | response only: the address the request came from (4 or 6, IP, port) |
//! | 16 | MAC: HMAC-SHA256 keyed by the pair secret, first 16 bytes |
//!
//! The MAC is computed by the caller (the client holds the secret and the HMAC); this
//! module only lays out and parses bytes, and never panics on any input.

use crate::ids::PairId;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Bytes of the MAC at the end of every probe.
pub const PROBE_MAC_LEN: usize = 16;
const MAGIC: &[u8; 4] = b"PGP1";
const HEADER_LEN: usize = 1 + 4 + 8 + 4 + 8 + 1;

/// Whether a datagram is a probe rather than QUIC: its first byte lacks the fixed bit.
pub fn is_probe(datagram: &[u8]) -> bool {
    datagram.first().is_some_and(|b| b & 0xC0 == 0)
}

/// What a probe says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    /// "Can you hear me?" Answered from any source.
    Request,
    /// "I heard you, from this address" (which may be a peer-reflexive candidate).
    Response {
        /// Where the request came from, as the responder saw it.
        observed: SocketAddr,
    },
}

/// One probe, before the MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// Request or response.
    pub kind: ProbeKind,
    /// The pair being punched.
    pub pair: PairId,
    /// The punch order it belongs to; probes of an older attempt are ignored.
    pub attempt: u32,
    /// The request's random nonce (echoed by the response).
    pub nonce: u64,
    /// Whether the sender is the pair's controlling side, so a probe reflected back at its
    /// sender is never taken for the peer's.
    pub from_controlling: bool,
}

/// A datagram that is not a well-formed probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a well-formed probe")]
pub struct MalformedProbe;

impl Probe {
    /// The bytes the MAC covers.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + 19 + PROBE_MAC_LEN);
        out.push(match self.kind {
            ProbeKind::Request => 0x01,
            ProbeKind::Response { .. } => 0x02,
        });
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.pair.raw().to_be_bytes());
        out.extend_from_slice(&self.attempt.to_be_bytes());
        out.extend_from_slice(&self.nonce.to_be_bytes());
        out.push(u8::from(self.from_controlling));
        if let ProbeKind::Response { observed } = self.kind {
            match observed.ip() {
                IpAddr::V4(ip) => {
                    out.push(4);
                    out.extend_from_slice(&ip.octets());
                }
                IpAddr::V6(ip) => {
                    out.push(6);
                    out.extend_from_slice(&ip.octets());
                }
            }
            out.extend_from_slice(&observed.port().to_be_bytes());
        }
        out
    }

    /// The whole datagram: the signed bytes, then `mac` of them.
    pub fn encode(&self, mac: impl FnOnce(&[u8]) -> [u8; PROBE_MAC_LEN]) -> Vec<u8> {
        let mut out = self.signed_bytes();
        let tag = mac(&out);
        out.extend_from_slice(&tag);
        out
    }

    /// Parses a datagram into the probe, the bytes its MAC covers, and the MAC. The caller
    /// must check the MAC before believing anything in it.
    ///
    /// # Errors
    /// [`MalformedProbe`] for anything that is not exactly a probe.
    pub fn decode(datagram: &[u8]) -> Result<(Probe, &[u8], &[u8]), MalformedProbe> {
        if datagram.len() < HEADER_LEN + PROBE_MAC_LEN {
            return Err(MalformedProbe);
        }
        let (signed, mac) = datagram.split_at(datagram.len() - PROBE_MAC_LEN);
        let (head, rest) = signed.split_at(HEADER_LEN);
        if &head[1..5] != MAGIC || head[25] > 1 {
            return Err(MalformedProbe);
        }
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&head[at..at + 8]);
            u64::from_be_bytes(b)
        };
        let mut attempt = [0u8; 4];
        attempt.copy_from_slice(&head[13..17]);
        let kind = match (head[0], rest) {
            (0x01, []) => ProbeKind::Request,
            (0x02, [4, a, b, c, d, p0, p1]) => ProbeKind::Response {
                observed: SocketAddr::new(
                    Ipv4Addr::new(*a, *b, *c, *d).into(),
                    u16::from_be_bytes([*p0, *p1]),
                ),
            },
            (0x02, [6, tail @ ..]) if tail.len() == 18 => {
                let mut ip = [0u8; 16];
                ip.copy_from_slice(&tail[..16]);
                ProbeKind::Response {
                    observed: SocketAddr::new(
                        Ipv6Addr::from(ip).into(),
                        u16::from_be_bytes([tail[16], tail[17]]),
                    ),
                }
            }
            _ => return Err(MalformedProbe),
        };
        let probe = Probe {
            kind,
            pair: PairId::from_raw(u64_at(5)),
            attempt: u32::from_be_bytes(attempt),
            nonce: u64_at(17),
            from_controlling: head[25] == 1,
        };
        Ok((probe, signed, mac))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_mac(bytes: &[u8]) -> [u8; PROBE_MAC_LEN] {
        let mut out = [0u8; PROBE_MAC_LEN];
        for (i, b) in bytes.iter().enumerate() {
            out[i % PROBE_MAC_LEN] ^= b;
        }
        out
    }

    #[test]
    fn requests_and_responses_round_trip_and_are_not_quic() {
        for kind in [
            ProbeKind::Request,
            ProbeKind::Response {
                observed: "203.0.113.7:40000".parse().unwrap(),
            },
            ProbeKind::Response {
                observed: "[2001:db8::1]:9".parse().unwrap(),
            },
        ] {
            let probe = Probe {
                kind,
                pair: PairId::from_raw(1 << 32 | 5),
                attempt: 3,
                nonce: 0xdead_beef,
                from_controlling: true,
            };
            let bytes = probe.encode(fake_mac);
            assert!(is_probe(&bytes));
            let (decoded, signed, mac) = Probe::decode(&bytes).unwrap();
            assert_eq!(decoded, probe);
            assert_eq!(mac, fake_mac(signed));
        }
    }

    #[test]
    fn quic_packets_and_garbage_are_not_probes() {
        assert!(!is_probe(&[0xC3, 0, 0, 0, 1])); // QUIC long header
        assert!(!is_probe(&[0x41, 1, 2])); // QUIC short header
        assert!(!is_probe(&[]));
        assert_eq!(Probe::decode(&[0x01; 10]), Err(MalformedProbe));
        let mut bytes = Probe {
            kind: ProbeKind::Request,
            pair: PairId::from_raw(1),
            attempt: 0,
            nonce: 0,
            from_controlling: false,
        }
        .encode(fake_mac);
        bytes[2] = b'X';
        assert_eq!(Probe::decode(&bytes), Err(MalformedProbe));
    }

    #[test]
    fn decoding_any_bytes_never_panics() {
        let mut seed = 0x1234_5678u32;
        for len in 0..120 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                    (seed >> 16) as u8
                })
                .collect();
            let _ = Probe::decode(&bytes);
        }
    }
}
