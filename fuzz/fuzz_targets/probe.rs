//! Punch probes: `Probe::decode` on any datagram, and probes built from arbitrary fields.
//! Invariants: a decoded probe is exactly its bytes (signed part and MAC split at the
//! end, `signed_bytes` and `encode` give the datagram back) and is told apart from QUIC;
//! every probe that can be built decodes back to itself.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use peergroup_protocol::{is_probe, PairId, Probe, ProbeKind, PROBE_MAC_LEN};
use std::net::{IpAddr, SocketAddr};

fuzz_target!(|data: &[u8]| {
    if let Ok((probe, signed, mac)) = Probe::decode(data) {
        assert!(is_probe(data), "a decoded probe looks like QUIC");
        assert_eq!(mac.len(), PROBE_MAC_LEN);
        assert_eq!(signed, &data[..data.len() - PROBE_MAC_LEN]);
        assert_eq!(probe.signed_bytes(), signed);
        let mut tag = [0u8; PROBE_MAC_LEN];
        tag.copy_from_slice(mac);
        assert_eq!(probe.encode(|_| tag), data);
    }

    // Any probe this side could send decodes back to itself.
    let mut u = Unstructured::new(data);
    let Ok((response, ip, port, pair, attempt, nonce, from_controlling, tag)) =
        <(bool, IpAddr, u16, u64, u32, u64, bool, [u8; PROBE_MAC_LEN])>::arbitrary(&mut u)
    else {
        return;
    };
    let kind = if response {
        ProbeKind::Response {
            observed: SocketAddr::new(ip, port),
        }
    } else {
        ProbeKind::Request
    };
    let probe = Probe {
        kind,
        pair: PairId::from_raw(pair),
        attempt,
        nonce,
        from_controlling,
    };
    let bytes = probe.encode(|signed| {
        assert_eq!(signed, probe.signed_bytes());
        tag
    });
    assert!(is_probe(&bytes));
    let (decoded, signed, mac) = Probe::decode(&bytes).expect("a probe we built decodes");
    assert_eq!(decoded, probe);
    assert_eq!(signed, probe.signed_bytes());
    assert_eq!(mac, tag);
});
