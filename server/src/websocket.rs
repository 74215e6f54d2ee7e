//! The WebSocket-over-TLS listener (issue 14, stage 2; ARCHITECTURE.md "Fallback over
//! WebSocket"): clients whose network blocks UDP connect over TCP, TLS 1.3 with the same
//! certificate and client-certificate check as QUIC, then WebSocket (RFC 6455). From the
//! first frame on, a connection is served as a QUIC one is (`connection.rs`), through
//! [`Wire::WebSocket`].
//!
//! Admission is the same: a TCP connection counts as logging in from its accept (before
//! TLS), in all and per source, and must deliver its hello within the hello timeout of
//! that, read with the hello's size limit. The WebSocket's own message limit is the
//! largest frame plus a writer batch from the start (tungstenite's limit cannot be raised
//! later), so a connection that has not logged in may hold one such message: the
//! handshake caps bound how many do.

use crate::admission::{lock as lock_admission, HandshakeSlot, Verdict};
use crate::auth::AuthHook;
use crate::connection::{admit, check_full, hello_or_refusal, run, Accepted, Opened};
use crate::events::DisconnectReason;
use crate::shared::Shared;
use crate::wire::{Wire, WireSend};
use peergroup_protocol::{CloseCode, Fingerprint};
use peergroup_transport::tokio_rustls::TlsAcceptor;
use peergroup_transport::tokio_tungstenite::accept_async_with_config;
use peergroup_transport::websocket::{self, ws_config, BoxedIo};
use peergroup_transport::{fingerprint_of, CarrierSource, FrameReader, ReadEnd};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use tokio::net::{TcpListener, TcpStream};

/// Accepts TCP connections until the server shuts down; each one that the handshake caps
/// admit is served on its own task.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    shared: Arc<Shared>,
    auth: AuthHook,
) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors and the like: wait a moment rather than spin.
                    tracing::warn!(%error, "TCP accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shared.shutdown.cancelled() => return,
        };
        if shared.drain.is_started() {
            shared.counters.refused_draining();
            continue;
        }
        // Counted before TLS, as a QUIC connection is from its first packet; a TCP
        // connection has completed its own handshake, so it is never asked to validate.
        let slot = match lock_admission(&shared.admission).handle_incoming(remote.ip(), true) {
            Verdict::Accept => HandshakeSlot::new(shared.admission.clone(), remote.ip()),
            Verdict::Validate | Verdict::Refuse(_) => {
                shared.counters.admission_refused();
                tracing::debug!(%remote, "TCP connection refused by the handshake caps");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve(
            shared.clone(),
            acceptor.clone(),
            (stream, remote, slot),
            auth.clone(),
        ));
    }
}

/// Serves one TCP connection until it ends.
async fn serve(
    shared: Arc<Shared>,
    acceptor: TlsAcceptor,
    (stream, remote, slot): (TcpStream, SocketAddr, HandshakeSlot),
    auth: AuthHook,
) {
    let close_reason = Arc::new(OnceLock::new());
    let accepted = tokio::time::timeout(
        shared.handshake,
        accept(
            &shared,
            acceptor,
            stream,
            remote,
            &auth,
            close_reason.clone(),
            slot,
        ),
    )
    .await;
    run(shared, remote, accepted, close_reason).await;
}

/// TLS and WebSocket handshakes and the first frame, within the hello timeout; then the
/// common login (`connection.rs`).
async fn accept(
    shared: &Arc<Shared>,
    acceptor: TlsAcceptor,
    stream: TcpStream,
    remote: SocketAddr,
    auth: &AuthHook,
    close_reason: Arc<OnceLock<DisconnectReason>>,
    // Held to the end: the connection counts as logging in until it is in or out.
    _slot: HandshakeSlot,
) -> Result<Accepted, String> {
    let admission = shared.admission_config;
    let hello_deadline = tokio::time::Instant::now() + admission.hello_timeout;
    let handshakes = async {
        let tls = acceptor
            .accept(stream)
            .await
            .map_err(|error| format!("TLS handshake failed: {error}"))?;
        // The verifier required a certificate and checked its signature; its SHA-256
        // is the identity, as on QUIC.
        let identity = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(fingerprint_of)
            .ok_or("no client certificate")?;
        let io: BoxedIo = Box::new(tls);
        let config = ws_config();
        let socket = accept_async_with_config(io, Some(config))
            .await
            .map_err(|error| format!("WebSocket handshake failed: {error}"))?;
        Ok::<_, String>((socket, identity))
    };
    let (socket, identity): (_, Fingerprint) =
        match tokio::time::timeout_at(hello_deadline, handshakes).await {
            Ok(done) => done?,
            Err(_) => return Err("TLS or WebSocket handshake timed out".into()),
        };
    let idle = shared.idle;
    let (connection, reader) = websocket::start(socket, remote, idle / 2, idle);
    let wire = Wire::WebSocket(connection.clone());
    check_full(shared, &wire, &close_reason)?;
    let mut recv = FrameReader::new(CarrierSource::WebSocket(reader), admission.max_hello_len);
    let hello = tokio::time::timeout_at(hello_deadline, async {
        match recv.next().await? {
            Some(body) => Ok(body),
            None => Err(ReadEnd::Violation(
                CloseCode::ProtocolViolation,
                "stream closed before hello".into(),
            )),
        }
    })
    .await;
    let body = hello_or_refusal(shared, &wire, &close_reason, hello)?;
    let opened = Opened {
        wire,
        send: WireSend::WebSocket(connection.sender()),
        recv,
        body,
        identity,
    };
    admit(shared, opened, auth, close_reason).await
}
