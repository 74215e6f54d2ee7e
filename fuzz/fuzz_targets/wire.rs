//! Every decoder of bytes from the network, chosen by the input's first byte: the five
//! message enums, the hello's version peek, the rooms protocol and typed messages.
//! Invariants: see `peergroup_fuzz::round_trip` (decode, re-encode canonically, decode to
//! the same message, frame); `peek_hello_version` agrees with a full decode.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peergroup_fuzz::{round_trip, round_trip_bytes};
use peergroup_protocol::rooms::{RoomsReply, RoomsRequest};
use peergroup_protocol::{
    peek_hello_version, ClientDatagram, ClientToServer, Notice, PeerToPeer, ServerDatagram,
    ServerToClient,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// An application's message type, as the typed API's docs sketch one: floats, strings,
/// bytes, options, sequences, maps, tuples and chars (no recursion and no zero-sized
/// sequences, which the docs warn against).
#[derive(Serialize, Deserialize)]
enum Game {
    Move {
        x: f32,
        y: f64,
        facing: Option<u16>,
    },
    Chat(String, Vec<u8>),
    Inventory {
        items: Vec<(u64, String)>,
        owner: Option<String>,
    },
    Scores(BTreeMap<u32, i64>),
    Ready,
    Misc((u8, i16, char, bool, i128)),
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    match selector % 10 {
        0 => {
            let message = round_trip::<ClientToServer>(body);
            // The version peek reads a hello's version, and nothing else as one.
            let peeked = peek_hello_version(body);
            match message {
                Some(ClientToServer::Hello(hello)) => assert_eq!(peeked, Some(hello.version)),
                Some(_) => assert_eq!(peeked, None, "a version peeked from a non-hello"),
                None => {}
            }
        }
        1 => {
            round_trip::<ServerToClient>(body);
        }
        2 => {
            round_trip::<PeerToPeer>(body);
        }
        3 => {
            round_trip::<ClientDatagram>(body);
        }
        4 => {
            round_trip::<ServerDatagram>(body);
        }
        5 => {
            // A hello from any version: the peek never panics, and whatever follows the
            // version does not change what it reads.
            if let Some(version) = peek_hello_version(body) {
                let mut longer = body.to_vec();
                longer.extend_from_slice(&[0xff; 8]);
                assert_eq!(peek_hello_version(&longer), Some(version));
            }
        }
        6 => {
            round_trip::<RoomsRequest>(body);
        }
        7 => {
            round_trip::<RoomsReply>(body);
        }
        8 => round_trip_bytes::<Game>(body),
        _ => {
            round_trip::<Notice>(body);
        }
    }
});
