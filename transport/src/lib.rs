//! The transport layer of peergroup, used by both the client and the server: everything
//! between the wire protocol (`peergroup-protocol`: messages, framing rules, close codes)
//! and the QUIC carrier (quinn and rustls).
//!
//! - [`reader`]: [`FrameReader`], length-prefixed frames read from any [`ByteSource`] in
//!   large chunks, ending in a typed [`ReadEnd`].
//! - [`source`]: the [`ByteSource`] trait and its QUIC implementation for
//!   [`quinn::RecvStream`] (with the mapping of quinn's read errors).
//! - [`end`]: [`ReadEnd`], why reading stopped, and [`ConnectionEnd`], quinn's connection
//!   errors sorted into the few cases both sides report.
//! - [`datagrams`]: QUIC datagrams read in batches ([`read_datagram_batch`]).
//! - [`write`]: the batched writer's common step, one merged batch handed to the stream
//!   whole, and finishing a stream.
//! - [`close`]: [`CloseCode`](peergroup_protocol::CloseCode) to and from quinn's
//!   [`quinn::VarInt`], and closing connections and endpoints with one rule for codes that
//!   do not fit.
//! - [`tls`]: the one rustls crypto provider, the handshake-signature checks every
//!   certificate verifier shares, and certificate fingerprints.
//! - [`websocket`]: the second carrier, WebSocket over TLS ([`WsConnection`],
//!   [`WsReader`], [`CarrierSource`]), for clients whose network blocks UDP.
//! - [`accept`]: the QUIC server config both accepting endpoints (the server, a client
//!   taking direct connections) build, each saying only which identities it accepts.
//! - [`ack`]: how often a peer acknowledges (every tenth packet, not every second).
//!
//! # Why a crate and not a module
//!
//! The client and the server never depend on each other (ARCHITECTURE.md, "Layers"), and
//! `peergroup-protocol` is deliberately free of IO and runtime. Glue over quinn and rustls
//! therefore had no home both sides could reach, and each side carried its own copy. A
//! module in `peergroup-protocol` would pull quinn, rustls and ring into the fuzz targets
//! and into anything that only wants the message types; a crate of its own keeps the
//! protocol crate pure and gives both sides one copy.
//!
//! # Where the second carrier plugs in
//!
//! Reading is carrier-neutral: [`FrameReader`] is generic over [`ByteSource`], and the
//! WebSocket-over-TLS fallback (issue 14, [`websocket`]) implements it for its read half
//! ([`WsReader`]: binary messages' bytes in order, a close frame as [`ReadEnd::Ended`]),
//! so framing, limits and [`ReadEnd`] are shared; [`CarrierSource`] is the one source
//! type a server connection uses on either carrier. What stays QUIC-specific here is
//! [`ReadEnd::Connection`] (a quinn error; other carriers end in [`ReadEnd::Ended`] with a
//! [`ConnectionEnd`]), the write step in [`write`], [`close`] (a WebSocket closes with
//! `4000 + code`, [`websocket::to_ws_code`]) and [`accept`]'s quinn wrapper (the
//! WebSocket listener takes [`tls_server_config`]'s rustls config, with the same identity
//! verifier). Datagrams and the control stream are QUIC features; on WebSocket they ride
//! the one stream as frames (ARCHITECTURE.md, "Fallback over WebSocket").

pub mod accept;
pub mod ack;
pub mod close;
pub mod datagrams;
pub mod end;
pub mod reader;
pub mod source;
pub mod tls;
pub mod websocket;
pub mod write;

pub use accept::{quic_server_config, tls_server_config, AcceptIdentity};
pub use ack::{ack_less_often, ACK_ELICITING_THRESHOLD};
pub use close::{close, close_endpoint, close_text, from_varint, to_varint, MAX_CLOSE_TEXT};
pub use datagrams::{read_datagram_batch, DATAGRAM_BATCH};
pub use end::{peer_close, ConnectionEnd, ReadEnd};
pub use reader::{FrameReader, READ_CHUNK};
pub use source::{read_error, ByteSource};
pub use tls::{fingerprint_of, peer_fingerprint, provider, Signatures};
pub use websocket::{CarrierSource, WsConnection, WsReader, WsSender};
pub use write::{finish_stream, write_batch, WRITE_BATCH_BYTES};
// Both sides make and accept WebSockets with the same crates' versions.
pub use tokio_rustls;
pub use tokio_tungstenite;

/// Which carrier a connection to the server uses (issue 14): QUIC, or the WebSocket over
/// TLS fallback for networks that block UDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// QUIC over UDP: main and control streams and datagrams; direct paths possible.
    Quic,
    /// WebSocket (RFC 6455) over TLS 1.3 on TCP: one stream carries everything, and the
    /// client's pairs stay on the relay.
    WebSocket,
}

impl Transport {
    /// `"quic"` or `"websocket"`, as logs and `peergroup probe` print it.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Quic => "quic",
            Transport::WebSocket => "websocket",
        }
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
