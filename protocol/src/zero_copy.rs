//! Decoding the messages that carry an application payload without copying the payload.
//!
//! A payload is the last field of every message that carries one, and postcard writes a
//! byte string as its length followed by the bytes. So the fields before it are read by
//! hand (`hand_decode.rs`, with the payload's length last), and the payload is the rest
//! of the received buffer, shared rather than copied ([`Bytes::slice`]). For any input
//! these decoders give exactly what [`decode_body`] gives (the same message, or an error
//! for the same inputs); property tests check it.
//!
//! This is the hot path of the relay and of every receiver: one allocation and one copy
//! fewer per message.

use crate::frame::{decode_body, FrameError};
use crate::hand_decode::Reader;
use crate::hand_encode::{append, deliver_head, Count, Sink};
use crate::ids::{GroupId, HostId};
use crate::messages::variant::{
    CLIENT_RELAY, DATAGRAM_DELIVER, DATAGRAM_RELAY, PEER_DATA, SERVER_DELIVER, SERVER_FROM_SERVER,
};
use crate::messages::{
    ClientDatagram, ClientToServer, Lane, PeerToPeer, ServerDatagram, ServerToClient,
};
use bytes::Bytes;

/// Reads the fields after the variant byte (`body[1..]`) with `read_head`, then the
/// payload's length, the last of them; then takes the payload from the rest of `body`,
/// sharing its memory.
fn with_payload<T>(
    body: &Bytes,
    read_head: impl FnOnce(&mut Reader<'_>) -> Result<T, postcard::Error>,
) -> Result<(T, Bytes), FrameError> {
    let mut reader = Reader::new(&body[1..]);
    let head = read_head(&mut reader)?;
    let len = reader.u64()?;
    let rest = reader.rest();
    if (rest.len() as u64) < len {
        // What postcard reports for a byte string cut short.
        return Err(postcard::Error::DeserializeUnexpectedEnd.into());
    }
    let len = len as usize;
    if rest.len() > len {
        return Err(FrameError::TrailingBytes {
            extra: rest.len() - len,
        });
    }
    let start = body.len() - rest.len();
    Ok((head, body.slice(start..start + len)))
}

/// [`decode_body`] for a client's frame, sharing a relay upload's payload with `body`.
///
/// # Errors
/// As [`decode_body`].
pub fn decode_client_frame(body: &Bytes) -> Result<ClientToServer, FrameError> {
    if body.first() != Some(&CLIENT_RELAY) {
        return decode_body(body);
    }
    let ((group, to_server, lane, priority, dests), payload) = with_payload(body, |r| {
        Ok((
            r.group()?,
            r.boolean()?,
            r.lane()?,
            r.priority()?,
            r.dests()?,
        ))
    })?;
    Ok(ClientToServer::Relay {
        group,
        to_server,
        lane,
        priority,
        dests,
        payload,
    })
}

/// [`decode_body`] for a server's frame, sharing a delivered message's payload with
/// `body`.
///
/// # Errors
/// As [`decode_body`].
pub fn decode_server_frame(body: &Bytes) -> Result<ServerToClient, FrameError> {
    match body.first() {
        Some(&SERVER_DELIVER) => {
            let ((from, group, lane, seq), payload) =
                with_payload(body, |r| Ok((r.host()?, r.group()?, r.lane()?, r.u64()?)))?;
            Ok(ServerToClient::Deliver {
                from,
                group,
                lane,
                seq,
                payload,
            })
        }
        Some(&SERVER_FROM_SERVER) => {
            let ((group, lane, seq), payload) =
                with_payload(body, |r| Ok((r.group()?, r.lane()?, r.u64()?)))?;
            Ok(ServerToClient::FromServer {
                group,
                lane,
                seq,
                payload,
            })
        }
        _ => decode_body(body),
    }
}

/// [`decode_body`] for a frame on a direct path, sharing a message's payload with `body`.
///
/// # Errors
/// As [`decode_body`].
pub fn decode_peer_frame(body: &Bytes) -> Result<PeerToPeer, FrameError> {
    if body.first() != Some(&PEER_DATA) {
        return decode_body(body);
    }
    let ((group, memberships, lane, seq), payload) = with_payload(body, |r| {
        Ok((r.group()?, r.memberships()?, r.lane()?, r.u64()?))
    })?;
    Ok(PeerToPeer::Data {
        group,
        memberships,
        lane,
        seq,
        payload,
    })
}

/// [`decode_body`] for a client's datagram, sharing its payload with `body`.
///
/// # Errors
/// As [`decode_body`].
pub fn decode_client_datagram(body: &Bytes) -> Result<ClientDatagram, FrameError> {
    if body.first() != Some(&DATAGRAM_RELAY) {
        return decode_body(body);
    }
    let ((group, to_server, lane, server_seq, dests), payload) = with_payload(body, |r| {
        Ok((
            r.group()?,
            r.boolean()?,
            r.datagram_lane()?,
            r.u64()?,
            r.dests()?,
        ))
    })?;
    Ok(ClientDatagram::Relay {
        group,
        to_server,
        lane,
        server_seq,
        dests,
        payload,
    })
}

/// [`decode_body`] for a server's (or a direct peer's) datagram, sharing its payload with
/// `body`.
///
/// # Errors
/// As [`decode_body`].
pub fn decode_server_datagram(body: &Bytes) -> Result<ServerDatagram, FrameError> {
    if body.first() != Some(&DATAGRAM_DELIVER) {
        return decode_body(body);
    }
    let ((from, group, lane, seq), payload) = with_payload(body, |r| {
        Ok((r.host()?, r.group()?, r.datagram_lane()?, r.u64()?))
    })?;
    Ok(ServerDatagram::Deliver {
        from,
        group,
        lane,
        seq,
        payload,
    })
}

/// A relayed message for one receiver, kept as its fields until it is written, so the
/// payload is shared by every receiver and copied once, straight into the stream's
/// buffer ([`DeliverFrame::write_to`]). Writes exactly what
/// [`frame_to_bytes`](crate::frame_to_bytes) writes for the same
/// [`ServerToClient::Deliver`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliverFrame {
    /// The sender.
    pub from: HostId,
    /// The group the sender addressed, if any.
    pub group: Option<GroupId>,
    /// The sequence space of `seq`.
    pub lane: Lane,
    /// The sender's number for this pair and lane.
    pub seq: u64,
    /// The application payload.
    pub payload: Bytes,
}

impl DeliverFrame {
    /// Writes the fields before the payload (its length included) as postcard lays out
    /// the variant, by hand (`hand_encode.rs` says why).
    fn head(&self, out: &mut impl Sink) {
        deliver_head(
            out,
            self.from,
            self.group,
            self.lane,
            self.seq,
            self.payload.len(),
        );
    }

    /// The length of the fields before the payload, bytes.
    fn head_len(&self) -> usize {
        let mut head = Count::default();
        self.head(&mut head);
        head.0
    }

    /// The whole frame's length in bytes, length prefix included.
    pub fn frame_len(&self) -> usize {
        crate::LENGTH_PREFIX_LEN + self.head_len() + self.payload.len()
    }

    /// Appends the frame (length prefix, then body) to `out`.
    ///
    /// # Errors
    /// [`FrameError::TooLarge`] when the body exceeds `max` bytes; `out` is unchanged then.
    pub fn write_to(&self, out: &mut bytes::BytesMut, max: u32) -> Result<(), FrameError> {
        append(out, Some(max), self.head_len(), &self.payload, |cursor| {
            self.head(cursor)
        })
    }

    /// The message this frame carries.
    pub fn message(&self) -> ServerToClient {
        ServerToClient::Deliver {
            from: self.from,
            group: self.group,
            lane: self.lane,
            seq: self.seq,
            payload: self.payload.clone(),
        }
    }
}
