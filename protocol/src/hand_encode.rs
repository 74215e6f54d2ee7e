//! Encoding the messages that carry an application payload by hand: the counterpart of
//! [`crate::zero_copy`]'s decoders on the hot path of every sender and of the relay.
//!
//! Each function here writes exactly the bytes [`frame_to_bytes`] (or
//! [`datagram_to_bytes`]) writes for the same message, so nothing on the wire changes; a
//! property test in `tests/roundtrip.rs` checks it for arbitrary messages. Messages without
//! a payload go through postcard as before.
//!
//! Why by hand: these messages are a few varints and a byte string, and postcard's
//! generic serializer (a sizing pass, then a pass that pushes every field through its
//! output flavor) was about 7 % of a sending client's CPU and 4 % of the relay's in a 1→1
//! flood of 64-byte messages. postcard's layout, which these follow
//! (<https://postcard.jamesmunns.com/wire-format>): an enum's variant index and every
//! integer wider than a byte as a LEB128 varint, a `u8` and a `bool` as one byte, an
//! `Option` as a 0 or 1 byte before its value, a sequence or byte string as its length
//! (a varint) before its items, a struct as its fields in order.

use crate::frame::{datagram_to_bytes, frame_to_bytes, FrameError, LENGTH_PREFIX_LEN};
use crate::ids::GroupId;
use crate::messages::variant;
use crate::messages::{
    ClientDatagram, ClientToServer, DatagramLane, Lane, Memberships, PeerToPeer, Priority,
    RelayDest, ServerDatagram,
};
use bytes::{Bytes, BytesMut};

/// Where a head is written: counted first, to size the buffer once, then written.
pub(crate) trait Sink {
    fn byte(&mut self, byte: u8);
}

/// Counts the bytes a head takes.
#[derive(Default)]
pub(crate) struct Count(pub usize);

impl Sink for Count {
    fn byte(&mut self, _: u8) {
        self.0 += 1;
    }
}

/// Writes a head into space already made for it, by index.
pub(crate) struct Cursor<'a> {
    space: &'a mut [u8],
    at: usize,
}

impl Sink for Cursor<'_> {
    fn byte(&mut self, byte: u8) {
        self.space[self.at] = byte;
        self.at += 1;
    }
}

/// Appends one frame (with `Some(max)`: a length prefix, and a body of at most `max`
/// bytes) or datagram (with `None`) to `out`: the head that `write_head` writes,
/// `head_len` bytes as counted with [`Count`], then `payload`. The space for the prefix
/// and head is made once and filled by index: writing byte by byte through `BufMut` was a
/// call per byte wherever `BytesMut::put_slice` was not inlined (the benchmark's `codec`
/// section measured 123 ns for a relay upload that way against postcard's 94, and 57 ns
/// this way).
///
/// # Errors
/// [`FrameError::TooLarge`] when a frame's body would exceed `max`; `out` is unchanged
/// then.
pub(crate) fn append(
    out: &mut BytesMut,
    max: Option<u32>,
    head_len: usize,
    payload: &[u8],
    write_head: impl FnOnce(&mut Cursor<'_>),
) -> Result<(), FrameError> {
    let body = head_len + payload.len();
    if let Some(max) = max.filter(|&max| body > max as usize) {
        return Err(FrameError::TooLarge {
            len: body as u64,
            max,
        });
    }
    let length_prefix = max.is_some();
    let prefix = if length_prefix { LENGTH_PREFIX_LEN } else { 0 };
    out.reserve(prefix + body);
    let start = out.len();
    out.resize(start + prefix + head_len, 0);
    let space = &mut out[start..];
    if length_prefix {
        space[..LENGTH_PREFIX_LEN].copy_from_slice(&(body as u32).to_be_bytes());
    }
    let mut cursor = Cursor {
        space: &mut space[prefix..],
        at: 0,
    };
    write_head(&mut cursor);
    debug_assert_eq!(
        cursor.at, head_len,
        "the head counted and the head written differ"
    );
    out.extend_from_slice(payload);
    Ok(())
}

fn varint(out: &mut impl Sink, mut value: u64) {
    while value >= 0x80 {
        out.byte(value as u8 | 0x80);
        value >>= 7;
    }
    out.byte(value as u8);
}

fn boolean(out: &mut impl Sink, value: bool) {
    out.byte(u8::from(value));
}

fn group(out: &mut impl Sink, group: Option<GroupId>) {
    match group {
        None => out.byte(0),
        Some(group) => {
            out.byte(1);
            varint(out, group.raw());
        }
    }
}

fn lane(out: &mut impl Sink, lane: Lane) {
    match lane {
        Lane::Ordered { channel } => {
            varint(out, 0);
            out.byte(channel);
        }
        Lane::Unordered => varint(out, 1),
        Lane::Latest { key } => {
            varint(out, 2);
            varint(out, key);
        }
    }
}

fn datagram_lane(out: &mut impl Sink, lane: DatagramLane) {
    match lane {
        DatagramLane::Plain => varint(out, 0),
        DatagramLane::Sequenced { channel } => {
            varint(out, 1);
            out.byte(channel);
        }
        DatagramLane::Ping { id } => {
            varint(out, 2);
            varint(out, u64::from(id));
        }
        DatagramLane::Pong { id } => {
            varint(out, 3);
            varint(out, u64::from(id));
        }
    }
}

fn priority(out: &mut impl Sink, priority: Priority) {
    varint(
        out,
        match priority {
            Priority::High => 0,
            Priority::Medium => 1,
            Priority::Low => 2,
        },
    );
}

fn dests(out: &mut impl Sink, dests: &[RelayDest]) {
    varint(out, dests.len() as u64);
    for dest in dests {
        varint(out, dest.pair.raw());
        varint(out, dest.seq);
    }
}

fn memberships(out: &mut impl Sink, memberships: Option<Memberships>) {
    match memberships {
        None => out.byte(0),
        Some(m) => {
            out.byte(1);
            varint(out, u64::from(m.sender));
            varint(out, u64::from(m.receiver));
        }
    }
}

/// The fields of [`crate::ServerToClient::Deliver`] before its payload, the payload's length
/// included (shared with [`crate::DeliverFrame`], which the relay keeps unencoded until
/// its receiver's writer runs).
pub(crate) fn deliver_head(
    out: &mut impl Sink,
    from: crate::HostId,
    to_group: Option<GroupId>,
    in_lane: Lane,
    seq: u64,
    payload_len: usize,
) {
    varint(out, u64::from(variant::SERVER_DELIVER));
    varint(out, from.raw());
    group(out, to_group);
    lane(out, in_lane);
    varint(out, seq);
    varint(out, payload_len as u64);
}

/// A message some of whose variants are encoded by hand.
trait Head: serde::Serialize {
    /// Writes the fields before the payload (the payload's length included) and returns
    /// the payload; `None`, with nothing written, for a variant postcard encodes.
    fn head(&self, out: &mut impl Sink) -> Option<&Bytes>;
}

impl Head for ClientToServer {
    fn head(&self, out: &mut impl Sink) -> Option<&Bytes> {
        let ClientToServer::Relay {
            group: to_group,
            to_server,
            lane: in_lane,
            priority: at,
            dests: to,
            payload,
        } = self
        else {
            return None;
        };
        varint(out, u64::from(variant::CLIENT_RELAY));
        group(out, *to_group);
        boolean(out, *to_server);
        lane(out, *in_lane);
        priority(out, *at);
        dests(out, to);
        varint(out, payload.len() as u64);
        Some(payload)
    }
}

impl Head for PeerToPeer {
    fn head(&self, out: &mut impl Sink) -> Option<&Bytes> {
        let PeerToPeer::Data {
            group: to_group,
            memberships: under,
            lane: in_lane,
            seq,
            payload,
        } = self
        else {
            return None;
        };
        varint(out, u64::from(variant::PEER_DATA));
        group(out, *to_group);
        memberships(out, *under);
        lane(out, *in_lane);
        varint(out, *seq);
        varint(out, payload.len() as u64);
        Some(payload)
    }
}

impl Head for ClientDatagram {
    fn head(&self, out: &mut impl Sink) -> Option<&Bytes> {
        let ClientDatagram::Relay {
            group: to_group,
            to_server,
            lane: in_lane,
            server_seq,
            dests: to,
            payload,
        } = self;
        varint(out, u64::from(variant::DATAGRAM_RELAY));
        group(out, *to_group);
        boolean(out, *to_server);
        datagram_lane(out, *in_lane);
        varint(out, *server_seq);
        dests(out, to);
        varint(out, payload.len() as u64);
        Some(payload)
    }
}

impl Head for ServerDatagram {
    fn head(&self, out: &mut impl Sink) -> Option<&Bytes> {
        let ServerDatagram::Deliver {
            from,
            group: to_group,
            lane: in_lane,
            seq,
            payload,
        } = self;
        varint(out, u64::from(variant::DATAGRAM_DELIVER));
        varint(out, from.raw());
        group(out, *to_group);
        datagram_lane(out, *in_lane);
        varint(out, *seq);
        varint(out, payload.len() as u64);
        Some(payload)
    }
}

/// Encodes `message` in one buffer of the exact size: as a frame (length prefix, body no
/// longer than `max`) with `Some(max)`, as a datagram with `None`.
fn encode<M: Head>(message: &M, max: Option<u32>) -> Result<Bytes, FrameError> {
    let mut count = Count::default();
    let Some(payload) = message.head(&mut count) else {
        return match max {
            Some(max) => frame_to_bytes(message, max),
            None => datagram_to_bytes(message),
        };
    };
    let mut out = BytesMut::new();
    append(&mut out, max, count.0, payload, |cursor| {
        message.head(cursor);
    })?;
    Ok(out.freeze())
}

/// [`frame_to_bytes`] for a client's frame, with [`ClientToServer::Relay`] encoded by hand.
///
/// # Errors
/// As [`frame_to_bytes`]: [`FrameError::TooLarge`] when the body would exceed `max` bytes.
pub fn encode_client_frame(message: &ClientToServer, max: u32) -> Result<Bytes, FrameError> {
    encode(message, Some(max))
}

/// [`frame_to_bytes`] for a frame on a direct path, with [`PeerToPeer::Data`] encoded by
/// hand.
///
/// # Errors
/// As [`frame_to_bytes`].
pub fn encode_peer_frame(message: &PeerToPeer, max: u32) -> Result<Bytes, FrameError> {
    encode(message, Some(max))
}

/// [`datagram_to_bytes`] for a client's datagram, with [`ClientDatagram::Relay`] encoded by
/// hand.
///
/// # Errors
/// As [`datagram_to_bytes`] (never, for this type).
pub fn encode_client_datagram(message: &ClientDatagram) -> Result<Bytes, FrameError> {
    encode(message, None)
}

/// [`datagram_to_bytes`] for a server's (or a direct peer's) datagram, encoded by hand.
///
/// # Errors
/// As [`datagram_to_bytes`] (never, for this type).
pub fn encode_server_datagram(message: &ServerDatagram) -> Result<Bytes, FrameError> {
    encode(message, None)
}
