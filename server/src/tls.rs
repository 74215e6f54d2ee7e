//! rustls and quinn configuration for the server side.
//!
//! Clients present a self-signed identity certificate as their TLS client certificate. The
//! server accepts any certificate, checks that the client holds its key (the handshake
//! signature), and records its SHA-256 as the client's identity. Peers later pin that
//! fingerprint, so the server vouches for keys it never holds.

use crate::identity::Identity;
use peergroup_protocol::ALPN;
use peergroup_transport::AcceptIdentity;
use rustls::pki_types::CertificateDer;
use std::sync::Arc;

/// Accepts any client certificate (its key must still sign the handshake).
#[derive(Debug)]
struct AnyIdentity;

impl AcceptIdentity for AnyIdentity {
    fn accepts(&self, _certificate: &CertificateDer<'_>) -> bool {
        // Identity is the certificate's fingerprint, not a chain to a root: any certificate
        // will do, as long as the handshake signature proves the client holds its key.
        true
    }
}

/// The quinn server config: TLS 1.3, ALPN `peergroup/1`, client certificates required.
pub(crate) fn quic_server_config(
    identity: &Identity,
    transport: quinn::TransportConfig,
) -> Result<quinn::ServerConfig, rustls::Error> {
    peergroup_transport::quic_server_config(
        AnyIdentity,
        identity.chain(),
        identity.key(),
        ALPN,
        Arc::new(transport),
    )
}

/// The rustls server config of the WebSocket listener: the same certificate, ALPN and
/// client-certificate check as QUIC's (`peergroup_transport::tls_server_config`).
pub(crate) fn websocket_tls_config(
    identity: &Identity,
) -> Result<rustls::ServerConfig, rustls::Error> {
    peergroup_transport::tls_server_config(AnyIdentity, identity.chain(), identity.key(), ALPN)
}
