//! rustls and quinn configuration for the server side.
//!
//! Clients present a self-signed identity certificate as their TLS client certificate. The
//! server accepts any certificate, checks that the client holds its key (the handshake
//! signature), and records its SHA-256 as the client's identity. Peers later pin that
//! fingerprint, so the server vouches for keys it never holds.

use crate::identity::Identity;
use peergroup_protocol::ALPN;
use peergroup_transport::{provider, Signatures};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use std::sync::Arc;

/// Accepts any client certificate whose key signed the handshake.
#[derive(Debug)]
struct AnyIdentityCertificate {
    signatures: Signatures,
}

impl ClientCertVerifier for AnyIdentityCertificate {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Identity is the certificate's fingerprint, not a chain to a root: any certificate
        // will do, as long as the signature checks below prove the client holds its key.
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.schemes()
    }
}

/// The quinn server config: TLS 1.3, ALPN `peergroup/1`, client certificates required.
pub(crate) fn quic_server_config(
    identity: &Identity,
    transport: quinn::TransportConfig,
) -> Result<quinn::ServerConfig, rustls::Error> {
    let provider = provider();
    let verifier = Arc::new(AnyIdentityCertificate {
        signatures: Signatures::new(provider.clone()),
    });
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain(), identity.key())?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| rustls::Error::General(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport));
    Ok(config)
}
