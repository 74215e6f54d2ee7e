//! The QUIC server side of a peergroup TLS handshake: a config that requires a client
//! certificate and accepts it by identity.
//!
//! Two endpoints accept connections: the server (any client identity; it records the
//! fingerprint and vouches for it to peers) and a client accepting direct connections
//! (only identities the server vouched for). They differ only in which certificates they
//! accept, so that is the one thing each supplies ([`AcceptIdentity`]).

use crate::tls::{provider, Signatures};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use std::sync::Arc;

/// Which client certificates an accepting endpoint takes. Identity is the certificate's
/// fingerprint, not a chain to a root, so this sees only the end-entity certificate.
pub trait AcceptIdentity: std::fmt::Debug + Send + Sync + 'static {
    /// Whether `certificate` (DER) may connect. Its key is checked separately: the
    /// handshake signature must verify with it whatever this says.
    fn accepts(&self, certificate: &CertificateDer<'_>) -> bool;
}

/// Shared acceptors (a set of expected identities the rest of the endpoint updates).
impl<A: AcceptIdentity> AcceptIdentity for Arc<A> {
    fn accepts(&self, certificate: &CertificateDer<'_>) -> bool {
        A::accepts(self, certificate)
    }
}

/// A rustls client-certificate verifier that asks `A` which certificate is acceptable and
/// checks the handshake signature with [`Signatures`].
#[derive(Debug)]
struct IdentityVerifier<A> {
    accept: A,
    signatures: Signatures,
}

impl<A: AcceptIdentity> ClientCertVerifier for IdentityVerifier<A> {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if self.accept.accepts(end_entity) {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
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

/// A rustls server config: TLS 1.3 only, ALPN `alpn`, our certificate `chain` (leaf
/// first) and `key`, and a client certificate required and accepted by `accept`. The
/// QUIC endpoint wraps it ([`quic_server_config`]); the WebSocket listener (issue 14)
/// uses it as it is, so both carriers check identities with the same verifier.
///
/// # Errors
/// rustls's error when the certificate and key do not form a usable identity.
pub fn tls_server_config(
    accept: impl AcceptIdentity,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    alpn: &[u8],
) -> Result<rustls::ServerConfig, rustls::Error> {
    let provider = provider();
    let verifier = Arc::new(IdentityVerifier {
        accept,
        signatures: Signatures::new(provider.clone()),
    });
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    Ok(tls)
}

/// A quinn server config around [`tls_server_config`]'s.
///
/// # Errors
/// As [`tls_server_config`]; a failure to make the QUIC crypto config (which TLS 1.3 with
/// ring never causes) as [`rustls::Error::General`].
pub fn quic_server_config(
    accept: impl AcceptIdentity,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    alpn: &[u8],
    transport: Arc<quinn::TransportConfig>,
) -> Result<quinn::ServerConfig, rustls::Error> {
    let tls = tls_server_config(accept, chain, key, alpn)?;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| rustls::Error::General(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(transport);
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Only(Vec<u8>);

    impl AcceptIdentity for Only {
        fn accepts(&self, certificate: &CertificateDer<'_>) -> bool {
            certificate.as_ref() == self.0
        }
    }

    fn verifier() -> IdentityVerifier<Only> {
        IdentityVerifier {
            accept: Only(vec![1, 2, 3]),
            signatures: Signatures::new(provider()),
        }
    }

    #[test]
    fn only_the_certificates_the_acceptor_takes_pass() {
        let verifier = verifier();
        let now = UnixTime::now();
        let good = CertificateDer::from(vec![1, 2, 3]);
        let bad = CertificateDer::from(vec![9]);
        assert!(verifier.verify_client_cert(&good, &[], now).is_ok());
        assert!(matches!(
            verifier.verify_client_cert(&bad, &[], now),
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure
            ))
        ));
        assert!(verifier.client_auth_mandatory());
    }
}
