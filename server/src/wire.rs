//! How a client is connected, whichever the carrier: the few operations the drivers need
//! of a connection ([`Wire`]) and of its writer's stream ([`WireSend`]), for QUIC and for
//! the WebSocket fallback (`websocket.rs`, ARCHITECTURE.md "Fallback over WebSocket").
//!
//! Only what differs is here; the queues, the registry and the resume machinery do not
//! know which carrier a client uses, except that datagrams to a WebSocket client ride its
//! stream (see [`Wire::send_datagram`]).

use bytes::Bytes;
use peergroup_protocol::CloseCode;
use peergroup_transport::{close, finish_stream, ConnectionEnd, Transport, WsConnection, WsSender};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// A client's connection.
#[derive(Debug, Clone)]
pub(crate) enum Wire {
    Quic(quinn::Connection),
    WebSocket(Arc<WsConnection>),
}

/// Why a datagram was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DatagramRefused {
    /// It does not fit the client's path.
    TooLarge,
}

impl Wire {
    /// Which carrier this is.
    pub fn transport(&self) -> Transport {
        match self {
            Wire::Quic(_) => Transport::Quic,
            Wire::WebSocket(_) => Transport::WebSocket,
        }
    }

    /// Closes with `code` and `text` (QUIC: an application close; WebSocket: a close
    /// frame with code `4000 + code`). Unacknowledged data is lost on either.
    pub fn close(&self, code: CloseCode, text: &str) {
        match self {
            Wire::Quic(connection) => close(connection, code, text),
            Wire::WebSocket(connection) => connection.close(code, text),
        }
    }

    /// The smoothed RTT: QUIC's, or on WebSocket the one measured by pings (zero until
    /// the first pong; see [`WsConnection::rtt`](peergroup_transport::WsConnection::rtt)).
    pub fn rtt(&self) -> Duration {
        match self {
            Wire::Quic(connection) => connection.rtt(),
            Wire::WebSocket(connection) => connection.rtt(),
        }
    }

    /// The client's address as the server sees it.
    pub fn remote_address(&self) -> SocketAddr {
        match self {
            Wire::Quic(connection) => connection.remote_address(),
            Wire::WebSocket(connection) => connection.remote_address(),
        }
    }

    /// Resolves once the connection is over, with how it ended.
    pub async fn closed(&self) -> ConnectionEnd {
        match self {
            Wire::Quic(connection) => ConnectionEnd::from(&connection.closed().await),
            Wire::WebSocket(connection) => connection.closed().await,
        }
    }

    /// The largest datagram the client's path takes, bytes: QUIC's, or on WebSocket the
    /// largest frame (datagrams ride the stream there).
    pub fn max_datagram_size(&self, max_frame: u32) -> Option<usize> {
        match self {
            Wire::Quic(connection) => connection.max_datagram_size(),
            Wire::WebSocket(_) => Some(max_frame as usize),
        }
    }

    /// Sends one QUIC datagram. A WebSocket client's datagrams go through its queue as
    /// frames instead (`shared.rs`), so this is never called for one.
    ///
    /// # Errors
    /// [`DatagramRefused::TooLarge`] when it does not fit the path; other failures (the
    /// connection is gone, datagrams are off) are the datagram's loss, as QUIC allows.
    pub fn send_datagram(&self, bytes: Bytes) -> Result<(), DatagramRefused> {
        match self {
            Wire::Quic(connection) => match connection.send_datagram(bytes) {
                Err(quinn::SendDatagramError::TooLarge) => Err(DatagramRefused::TooLarge),
                _ => Ok(()),
            },
            Wire::WebSocket(_) => Ok(()),
        }
    }
}

/// The writer's side of a client's connection: its QUIC main stream, or its WebSocket.
#[derive(Debug)]
pub(crate) enum WireSend {
    Quic(quinn::SendStream),
    WebSocket(WsSender),
}

/// The connection under a writer is gone; the batch it was writing is lost with it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WriteFailed;

impl WireSend {
    /// Writes one batch of whole frames (one buffer on QUIC, one binary message on
    /// WebSocket).
    ///
    /// # Errors
    /// [`WriteFailed`] once the stream or connection is gone.
    pub async fn write_chunk(&mut self, chunk: Bytes) -> Result<(), WriteFailed> {
        match self {
            WireSend::Quic(send) => send.write_chunk(chunk).await.map_err(|_| WriteFailed),
            WireSend::WebSocket(send) => send.write_chunk(chunk).await.map_err(|_| WriteFailed),
        }
    }

    /// Ends the stream after everything written and waits (the caller bounds it) until
    /// the client has it all. A WebSocket has no half close: its close frame, sent by
    /// the close that follows, comes after everything written, in order.
    pub async fn finish(&mut self) {
        match self {
            WireSend::Quic(send) => {
                let _ = finish_stream(send).await;
            }
            WireSend::WebSocket(_) => {}
        }
    }
}
