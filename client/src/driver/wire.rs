//! The server connection, whichever the carrier (ARCHITECTURE.md, "Fallback over
//! WebSocket"): the few operations the driver needs of it ([`ServerWire`]) and of the
//! stream the writers write to ([`ServerSend`]), for QUIC and for WebSocket over TLS.

use bytes::Bytes;
use peergroup_protocol::{frame_to_bytes, ClientDatagram, ClientToServer, CloseCode};
use peergroup_transport::{close, finish_stream, ConnectionEnd, Transport, WsConnection, WsSender};
use std::sync::Arc;
use std::time::Duration;

/// The connection to the server.
#[derive(Debug, Clone)]
pub(crate) enum ServerWire {
    Quic(quinn::Connection),
    WebSocket(Arc<WsConnection>),
}

impl ServerWire {
    /// Which carrier this is.
    pub fn transport(&self) -> Transport {
        match self {
            ServerWire::Quic(_) => Transport::Quic,
            ServerWire::WebSocket(_) => Transport::WebSocket,
        }
    }

    /// Closes with `code` and `text`.
    pub fn close(&self, code: CloseCode, text: &str) {
        match self {
            ServerWire::Quic(connection) => close(connection, code, text),
            ServerWire::WebSocket(connection) => connection.close(code, text),
        }
    }

    /// Smoothed RTT: QUIC's, or on WebSocket the one measured by pings (zero until the
    /// first pong).
    pub fn rtt(&self) -> Duration {
        match self {
            ServerWire::Quic(connection) => connection.rtt(),
            ServerWire::WebSocket(connection) => connection.rtt(),
        }
    }

    /// The largest datagram the path takes, bytes; on WebSocket, where datagrams ride
    /// the stream, the largest frame `max_frame`.
    pub fn max_datagram_size(&self, max_frame: u32) -> Option<usize> {
        match self {
            ServerWire::Quic(connection) => connection.max_datagram_size(),
            ServerWire::WebSocket(_) => Some(max_frame as usize),
        }
    }

    /// Resolves once the connection is over, with how it ended.
    pub async fn closed(&self) -> ConnectionEnd {
        match self {
            ServerWire::Quic(connection) => ConnectionEnd::from(&connection.closed().await),
            ServerWire::WebSocket(connection) => connection.closed().await,
        }
    }

    /// Sends an unreliable relay upload: a QUIC datagram, or on WebSocket a
    /// [`ClientToServer::Datagram`] frame handed straight to the socket's writer if
    /// fewer than [`DATAGRAM_QUEUE`](peergroup_transport::websocket::DATAGRAM_QUEUE)
    /// wait there, dropped otherwise (never queued behind a backlog). Either may be lost,
    /// as a datagram may.
    pub fn send_datagram(&self, datagram: ClientDatagram, max_frame: u32) {
        match self {
            ServerWire::Quic(connection) => {
                if let Ok(bytes) = peergroup_protocol::encode_client_datagram(&datagram) {
                    let _ = connection.send_datagram(bytes);
                }
            }
            ServerWire::WebSocket(connection) => {
                let frame = ClientToServer::Datagram(datagram);
                if let Ok(bytes) = frame_to_bytes(&frame, max_frame) {
                    let _ = connection.try_send_datagram(bytes);
                }
            }
        }
    }
}

/// A writer's stream to the server: a QUIC stream, or the WebSocket (which carries the
/// main and control writers' batches alike).
#[derive(Debug)]
pub(crate) enum ServerSend {
    Quic(quinn::SendStream),
    WebSocket(WsSender),
}

/// The stream or connection under a writer is gone.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WriteFailed;

impl ServerSend {
    /// Writes one batch of whole frames.
    ///
    /// # Errors
    /// [`WriteFailed`] once the stream or connection is gone.
    pub async fn write_chunk(&mut self, chunk: Bytes) -> Result<(), WriteFailed> {
        match self {
            ServerSend::Quic(send) => send.write_chunk(chunk).await.map_err(|_| WriteFailed),
            ServerSend::WebSocket(send) => send.write_chunk(chunk).await.map_err(|_| WriteFailed),
        }
    }

    /// Ends the stream after everything written, waiting until the server has it. A
    /// WebSocket has no half close: the close that follows goes after everything written.
    ///
    /// # Errors
    /// [`WriteFailed`] when the stream was already finished or reset.
    pub async fn finish(&mut self) -> Result<(), WriteFailed> {
        match self {
            ServerSend::Quic(send) => finish_stream(send).await.map_err(|_| WriteFailed),
            ServerSend::WebSocket(_) => Ok(()),
        }
    }
}
