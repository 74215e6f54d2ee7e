//! Encoding and decoding the messages that carry a payload: nanoseconds per message for
//! postcard (`frame_to_bytes`, `encode_frame`, `datagram_to_bytes`, `decode_body`) and for
//! the hand encoders and zero-copy decoders peergroup uses on its hot path
//! (`hand_encode.rs`, `zero_copy.rs`), on one thread, 64 B payloads. Both write (and
//! read) the same bytes; what is left after hand encoding is mostly the frame's
//! allocation.

use crate::report::{round, Report, Table};
use crate::Mode;
use bytes::{Bytes, BytesMut};
use peergroup_protocol::{
    datagram_to_bytes, decode_body, decode_client_datagram, decode_client_frame, decode_peer_frame,
    decode_server_datagram, decode_server_frame, encode_client_datagram, encode_client_frame,
    encode_frame, encode_peer_frame, encode_server_datagram, frame_to_bytes, ClientDatagram,
    ClientToServer, DatagramLane, DeliverFrame, FrameError, GroupId, HostId, Lane, Memberships,
    PairId, PeerToPeer, Priority, RelayDest, ServerDatagram, ServerToClient, DEFAULT_MAX_FRAME_LEN,
};
use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

/// Timed loops per figure; the figure is the fastest (the least disturbed by the rest of
/// the machine).
const REPEATS: usize = 5;

/// Nanoseconds per call of `encode`, the fastest of [`REPEATS`] loops of `calls` calls.
fn ns_per_call(calls: usize, mut encode: impl FnMut() -> usize) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..REPEATS {
        let started = Instant::now();
        let mut bytes = 0;
        for _ in 0..calls {
            bytes += encode();
        }
        black_box(bytes);
        best = best.min(started.elapsed().as_nanos() as f64 / calls as f64);
    }
    best
}

/// The length of an encoder's output, 0 for an error (so the loop has a value to keep).
fn len<E>(encoded: Result<Bytes, E>) -> usize {
    encoded.map_or(0, |bytes| bytes.len())
}

/// postcard's and the zero-copy decoder's ns per decode of `message`'s body (no length
/// prefix), the fastest of [`REPEATS`] loops of `calls` each.
fn decode_both<T: serde::Serialize + serde::de::DeserializeOwned>(
    calls: usize,
    message: &T,
    zero_copy: fn(&Bytes) -> Result<T, FrameError>,
) -> (f64, f64) {
    let body = datagram_to_bytes(message).expect("encodes");
    let postcard = ns_per_call(calls, || {
        usize::from(decode_body::<T>(black_box(&body)).is_ok())
    });
    let hand = ns_per_call(calls, || usize::from(zero_copy(black_box(&body)).is_ok()));
    (postcard, hand)
}

/// Sets `{prefix}{key}_ns.postcard` and `.hand` for each figure (name, key, postcard's ns,
/// the hand code's ns) and returns the table's rows.
fn record(
    report: &mut Report,
    prefix: &str,
    figures: Vec<(&str, &str, f64, f64)>,
) -> Vec<Vec<String>> {
    figures
        .into_iter()
        .map(|(name, key, postcard, hand)| {
            report.set(&format!("{prefix}{key}_ns.postcard"), round(postcard, 1));
            report.set(&format!("{prefix}{key}_ns.hand"), round(hand, 1));
            vec![
                name.to_string(),
                format!("{postcard:.1}"),
                format!("{hand:.1}"),
            ]
        })
        .collect()
}

/// A table of postcard's and the hand code's ns per message.
fn table(title: &str, rows: Vec<Vec<String>>, note: String) -> Table {
    Table {
        title: title.into(),
        columns: vec![
            "message".into(),
            "postcard, ns".into(),
            "by hand, ns".into(),
        ],
        rows,
        notes: vec![note],
    }
}

/// Runs the section.
pub fn run(mode: Mode, report: &mut Report, _out: &Path) -> Result<(), String> {
    let calls = mode.pick(200_000, 2_000_000);
    let payload = Bytes::from(vec![7u8; 64]);
    let group = Some(GroupId::from_raw(0x1_0000_0005));
    let from = HostId::from_raw(0x1_0000_0002);
    let lane = Lane::Ordered { channel: 0 };
    let relay_to = |destinations: u64| ClientToServer::Relay {
        group,
        to_server: false,
        lane,
        priority: Priority::Medium,
        dests: (0..destinations)
            .map(|n| RelayDest {
                pair: PairId::from_raw(0x1_0000_0003 + n),
                seq: 123_456,
            })
            .collect(),
        payload: payload.clone(),
    };
    let (relay_one, relay_eight) = (relay_to(1), relay_to(8));
    let deliver = DeliverFrame {
        from,
        group,
        lane,
        seq: 123_456,
        payload: payload.clone(),
    };
    let deliver_message = deliver.message();
    let client_datagram = ClientDatagram::Relay {
        group,
        to_server: false,
        lane: DatagramLane::Plain,
        server_seq: 99,
        dests: vec![RelayDest {
            pair: PairId::from_raw(0x1_0000_0003),
            seq: 0,
        }]
        .into(),
        payload: payload.clone(),
    };
    let server_datagram = ServerDatagram::Deliver {
        from,
        group,
        lane: DatagramLane::Plain,
        seq: 0,
        payload: payload.clone(),
    };
    let peer_data = PeerToPeer::Data {
        group,
        memberships: Some(Memberships {
            sender: 3,
            receiver: 4,
        }),
        lane,
        seq: 123_456,
        payload,
    };
    let max = DEFAULT_MAX_FRAME_LEN;
    // The relay appends each delivery to its writer's batch buffer, emptied as it fills.
    let mut batch = BytesMut::with_capacity(1 << 20);
    let mut append = |write: &mut dyn FnMut(&mut BytesMut)| {
        if batch.len() > 1 << 19 {
            batch.clear();
        }
        write(&mut batch);
        batch.len()
    };
    let mut figures = vec![
        (
            "relay upload to 1 host",
            "relay_upload",
            ns_per_call(calls, || len(frame_to_bytes(black_box(&relay_one), max))),
            ns_per_call(calls, || {
                len(encode_client_frame(black_box(&relay_one), max))
            }),
        ),
        (
            "relay upload to 8 hosts",
            "relay_upload_8",
            ns_per_call(calls, || len(frame_to_bytes(black_box(&relay_eight), max))),
            ns_per_call(calls, || {
                len(encode_client_frame(black_box(&relay_eight), max))
            }),
        ),
    ];
    let postcard_deliver = ns_per_call(calls, || {
        append(&mut |out| {
            let _ = encode_frame(black_box(&deliver_message), max, out);
        })
    });
    // As the relay does: the length when it is queued, then the frame when it is written.
    let hand_deliver = ns_per_call(calls, || {
        append(&mut |out| {
            let deliver = black_box(&deliver);
            black_box(deliver.frame_len());
            let _ = deliver.write_to(out, max);
        })
    });
    figures.push(("relay's Deliver", "deliver", postcard_deliver, hand_deliver));
    figures.extend([
        (
            "client datagram",
            "client_datagram",
            ns_per_call(calls, || {
                len(datagram_to_bytes(black_box(&client_datagram)))
            }),
            ns_per_call(calls, || {
                len(encode_client_datagram(black_box(&client_datagram)))
            }),
        ),
        (
            "server datagram",
            "server_datagram",
            ns_per_call(calls, || {
                len(datagram_to_bytes(black_box(&server_datagram)))
            }),
            ns_per_call(calls, || {
                len(encode_server_datagram(black_box(&server_datagram)))
            }),
        ),
        (
            "direct path's Data",
            "peer_data",
            ns_per_call(calls, || len(frame_to_bytes(black_box(&peer_data), max))),
            ns_per_call(calls, || len(encode_peer_frame(black_box(&peer_data), max))),
        ),
    ]);
    let decoded: Vec<_> = [
        (
            "relay upload to 1 host",
            "relay_upload",
            decode_both(calls, &relay_one, decode_client_frame),
        ),
        (
            "relay upload to 8 hosts",
            "relay_upload_8",
            decode_both(calls, &relay_eight, decode_client_frame),
        ),
        (
            "relay's Deliver",
            "deliver",
            decode_both::<ServerToClient>(calls, &deliver_message, decode_server_frame),
        ),
        (
            "client datagram",
            "client_datagram",
            decode_both(calls, &client_datagram, decode_client_datagram),
        ),
        (
            "server datagram",
            "server_datagram",
            decode_both(calls, &server_datagram, decode_server_datagram),
        ),
        (
            "direct path's Data",
            "peer_data",
            decode_both(calls, &peer_data, decode_peer_frame),
        ),
    ]
    .into_iter()
    .map(|(name, key, (postcard, hand))| (name, key, postcard, hand))
    .collect();
    let decode_rows = record(report, "codec.decode_", decoded);
    let rows = record(report, "codec.", figures);
    report.table(table(
        "Encoding a message that carries a 64 B payload",
        rows,
        format!(
            "One thread; the fastest of {REPEATS} loops of {calls} calls each. postcard: \
             `frame_to_bytes` (a frame in a buffer of its own), `encode_frame` appending to \
             a batch buffer for the relay's Deliver, `datagram_to_bytes`; by hand: the \
             encoders peergroup sends with (`encode_client_frame` and the others, and the \
             relay's `DeliverFrame`, whose length is taken when it is queued and again when \
             it is written). Both write the same bytes (a property test checks it)."
        ),
    ));
    report.table(table(
        "Decoding a message that carries a 64 B payload",
        decode_rows,
        format!(
            "One thread; the fastest of {REPEATS} loops of {calls} calls each, from the \
             message's body. postcard: `decode_body`, which copies the payload; by hand: \
             the decoders peergroup receives with (`decode_client_frame` and the others), \
             which read the fields before the payload by hand and share the payload with \
             the body. Both give the same message or refuse the same bytes (property tests \
             check it)."
        ),
    ));
    Ok(())
}
