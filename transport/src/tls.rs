//! The rustls pieces every peergroup endpoint shares: the crypto provider, the
//! handshake-signature checks of the certificate verifiers, and certificate fingerprints.
//!
//! peergroup trusts certificates by fingerprint, not by a chain to a root, so each side
//! writes its own verifiers (which certificate is acceptable); every one of them still
//! checks the handshake signature, which proves the other side holds the certificate's
//! key. That check is [`Signatures`].

use peergroup_protocol::Fingerprint;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::CertificateDer;
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::sync::Arc;

/// The one crypto provider of the tree (ring): quinn and rustls are built with ring only,
/// so there is exactly one to choose.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The handshake-signature checks a certificate verifier delegates to, with the
/// provider's algorithms.
#[derive(Debug, Clone)]
pub struct Signatures(Arc<CryptoProvider>);

impl Signatures {
    /// Checks with `provider`'s signature verification algorithms.
    pub fn new(provider: Arc<CryptoProvider>) -> Self {
        Self(provider)
    }

    /// Checks a TLS 1.2 handshake signature (`ServerCertVerifier::verify_tls12_signature`
    /// and its client counterpart).
    ///
    /// # Errors
    /// rustls's error when the signature does not verify with `cert`'s key or uses a scheme
    /// the provider does not support.
    pub fn tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    /// Checks a TLS 1.3 handshake signature (`verify_tls13_signature` of a verifier).
    ///
    /// # Errors
    /// As [`Signatures::tls12`].
    pub fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    /// The signature schemes the checks accept (`supported_verify_schemes`).
    pub fn schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// SHA-256 of a DER certificate: the identity peergroup pins.
pub fn fingerprint_of(cert: &CertificateDer<'_>) -> Fingerprint {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    Fingerprint(out)
}

/// The fingerprint of the (first) certificate the other side of a connection presented,
/// or `None` if it presented none.
pub fn peer_fingerprint(connection: &quinn::Connection) -> Option<Fingerprint> {
    let identity = connection.peer_identity()?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    chain.first().map(fingerprint_of)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_is_the_sha256_of_the_der() {
        // SHA-256 of the empty input.
        let empty = fingerprint_of(&CertificateDer::from(Vec::new()));
        assert_eq!(
            empty.0[..4],
            [0xe3, 0xb0, 0xc4, 0x42],
            "e3b0c442... is SHA-256 of nothing"
        );
        assert_ne!(fingerprint_of(&CertificateDer::from(vec![1])), empty);
    }

    #[test]
    fn the_schemes_are_the_providers() {
        let provider = provider();
        let expected = provider
            .signature_verification_algorithms
            .supported_schemes();
        let schemes = Signatures::new(provider).schemes();
        assert_eq!(schemes, expected);
        assert!(schemes.contains(&SignatureScheme::ECDSA_NISTP256_SHA256));
        assert!(schemes.contains(&SignatureScheme::ED25519));
    }
}
