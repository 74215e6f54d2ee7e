//! rustls and quinn configuration for the client side.
//!
//! The server is trusted by pin (the SHA-256 of its certificate, whatever name or address
//! it is reached by) or by system roots. The client proves its own identity with a fresh
//! self-signed certificate as its TLS client certificate; the server records its
//! fingerprint and vouches for it to peers.

use crate::error::ConnectError;
use peergroup_protocol::{Fingerprint, ALPN, PEER_ALPN};
use peergroup_transport::{provider, AcceptIdentity, Signatures};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::RwLock;

/// How the client decides the server is the right one.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerTrust {
    /// Accept exactly the certificate with this SHA-256, by any name or address.
    Fingerprint(Fingerprint),
    /// Accept exactly this certificate (DER), by any name or address.
    Certificate(CertificateDer<'static>),
    /// Verify a chain to the operating system's roots for
    /// [`ClientConfig::server_name`](crate::ClientConfig).
    SystemRoots,
}

impl ServerTrust {
    /// Pins the certificate in a PEM or DER file (the first certificate of a PEM file).
    ///
    /// # Errors
    /// [`ConnectError::TlsSetup`] when the file cannot be read or holds no certificate.
    pub fn from_cert_file(path: &Path) -> Result<Self, ConnectError> {
        let bytes = std::fs::read(path)
            .map_err(|e| ConnectError::TlsSetup(format!("{}: {e}", path.display())))?;
        if bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
            let cert = CertificateDer::from_pem_slice(&bytes)
                .map_err(|e| ConnectError::TlsSetup(format!("{}: {e}", path.display())))?;
            return Ok(ServerTrust::Certificate(cert));
        }
        Ok(ServerTrust::Certificate(CertificateDer::from(bytes)))
    }

    /// The fingerprint this trust pins, if it pins one.
    pub fn pinned(&self) -> Option<Fingerprint> {
        match self {
            ServerTrust::Fingerprint(expected) => Some(*expected),
            ServerTrust::Certificate(cert) => Some(fingerprint_of(cert)),
            ServerTrust::SystemRoots => None,
        }
    }
}

pub use peergroup_transport::fingerprint_of;

/// The client's identity: a self-signed certificate made at start-up, and its key.
#[derive(Debug)]
pub(crate) struct ClientIdentity {
    pub certificate: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
}

impl ClientIdentity {
    /// A fresh ECDSA P-256 key pair and certificate.
    pub fn generate() -> Result<Self, ConnectError> {
        let certified = rcgen::generate_simple_self_signed(vec!["peergroup-client".into()])
            .map_err(|e| ConnectError::TlsSetup(e.to_string()))?;
        Ok(Self {
            certificate: certified.cert.der().clone(),
            key: PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into()),
        })
    }

    pub fn fingerprint(&self) -> Fingerprint {
        fingerprint_of(&self.certificate)
    }
}

/// Accepts exactly one certificate, and still checks the handshake signature with it.
#[derive(Debug)]
struct PinnedCertificate {
    expected: Fingerprint,
    signatures: Signatures,
    /// Where a refused certificate is recorded, so the connect can say "pin mismatch"
    /// instead of the TLS alert quinn reports.
    refused: RefusedCertificate,
}

/// The certificate a pinned verifier refused, if it refused one.
#[derive(Debug, Clone, Default)]
pub(crate) struct RefusedCertificate(Arc<std::sync::Mutex<Option<Fingerprint>>>);

impl RefusedCertificate {
    pub(crate) fn record(&self, presented: Fingerprint) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(presented);
    }

    /// The refused certificate's fingerprint.
    pub fn get(&self) -> Option<Fingerprint> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ServerCertVerifier for PinnedCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented = fingerprint_of(end_entity);
        if presented == self.expected {
            Ok(ServerCertVerified::assertion())
        } else {
            self.refused.record(presented);
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

/// The rustls client config for the server connection: TLS 1.3, ALPN `peergroup/1`,
/// the client's identity as its certificate, the server checked as `trust` says. QUIC
/// wraps it ([`server_client_config`]); the WebSocket fallback uses it as it is, so both
/// carriers trust and identify the same way.
pub(crate) fn server_tls_config(
    trust: &ServerTrust,
    identity: &ClientIdentity,
    refused: &RefusedCertificate,
) -> Result<rustls::ClientConfig, ConnectError> {
    let provider = provider();
    let tls_error = |e: rustls::Error| ConnectError::TlsSetup(e.to_string());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?;
    let builder = match trust.pinned() {
        Some(expected) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedCertificate {
                expected,
                signatures: Signatures::new(provider),
                refused: refused.clone(),
            })),
        None => {
            let mut roots = rustls::RootCertStore::empty();
            let native = rustls_native_certs::load_native_certs();
            for cert in native.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(ConnectError::TlsSetup(
                    "no system root certificates found".into(),
                ));
            }
            builder.with_root_certificates(roots)
        }
    };
    let mut tls = builder
        .with_client_auth_cert(vec![identity.certificate.clone()], identity.key.clone_key())
        .map_err(tls_error)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    Ok(tls)
}

/// The quinn client config for the server connection, around [`server_tls_config`]'s.
pub(crate) fn server_client_config(
    tls: rustls::ClientConfig,
    transport: Arc<quinn::TransportConfig>,
) -> Result<quinn::ClientConfig, ConnectError> {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| ConnectError::TlsSetup(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport);
    Ok(config)
}

/// A quinn client config for the server with a fresh identity, for conformance tests that
/// speak the wire protocol by hand (malformed frames, other versions). Not part of the
/// supported API.
///
/// # Errors
/// [`ConnectError::TlsSetup`] when the config cannot be built.
#[doc(hidden)]
pub fn raw_quic_client_config(trust: &ServerTrust) -> Result<quinn::ClientConfig, ConnectError> {
    let identity = ClientIdentity::generate()?;
    let tls = server_tls_config(trust, &identity, &RefusedCertificate::default())?;
    server_client_config(tls, Arc::new(quinn::TransportConfig::default()))
}

/// A rustls client config for the server's WebSocket listener with a fresh identity, or
/// with no client certificate at all when `with_identity` is false: for conformance
/// tests that speak the wire protocol by hand. Not part of the supported API.
///
/// # Errors
/// [`ConnectError::TlsSetup`] when the config cannot be built.
#[doc(hidden)]
pub fn raw_tls_client_config(
    trust: &ServerTrust,
    with_identity: bool,
) -> Result<rustls::ClientConfig, ConnectError> {
    let identity = ClientIdentity::generate()?;
    let mut tls = server_tls_config(trust, &identity, &RefusedCertificate::default())?;
    if !with_identity {
        let Some(expected) = trust.pinned() else {
            return Err(ConnectError::TlsSetup("pinned trust only".into()));
        };
        let provider = provider();
        tls = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| ConnectError::TlsSetup(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedCertificate {
                expected,
                signatures: Signatures::new(provider),
                refused: RefusedCertificate::default(),
            }))
            .with_no_client_auth();
        tls.alpn_protocols = vec![ALPN.to_vec()];
    }
    Ok(tls)
}

/// The identities the client accepts direct connections from: peers it is punching with
/// now, each as vouched for by the server.
#[derive(Debug, Default)]
pub(crate) struct ExpectedPeers(RwLock<HashSet<Fingerprint>>);

impl ExpectedPeers {
    pub fn insert(&self, identity: Fingerprint) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(identity);
    }

    pub fn remove(&self, identity: &Fingerprint) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(identity);
    }

    fn contains(&self, identity: &Fingerprint) -> bool {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(identity)
    }
}

/// A peer's client certificate is accepted only if the server vouched for it for a punch
/// under way (the handshake signature is checked with it all the same).
impl AcceptIdentity for ExpectedPeers {
    fn accepts(&self, certificate: &CertificateDer<'_>) -> bool {
        self.contains(&fingerprint_of(certificate))
    }
}

/// The quinn server config for direct connections from peers: our identity certificate,
/// ALPN `peergroup-p2p/1`, and a client certificate required from an expected peer.
pub(crate) fn peer_server_config(
    identity: &ClientIdentity,
    expected: Arc<ExpectedPeers>,
    transport: Arc<quinn::TransportConfig>,
) -> Result<quinn::ServerConfig, ConnectError> {
    peergroup_transport::quic_server_config(
        expected,
        vec![identity.certificate.clone()],
        identity.key.clone_key(),
        PEER_ALPN,
        transport,
    )
    .map_err(|e| ConnectError::TlsSetup(e.to_string()))
}

/// The quinn client config for a direct connection to one peer: it must present exactly
/// the certificate the server vouched for, and we present ours.
pub(crate) fn peer_client_config(
    identity: &ClientIdentity,
    peer: Fingerprint,
    transport: Arc<quinn::TransportConfig>,
) -> Result<quinn::ClientConfig, ConnectError> {
    let provider = provider();
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ConnectError::TlsSetup(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCertificate {
            expected: peer,
            signatures: Signatures::new(provider),
            refused: RefusedCertificate::default(),
        }))
        .with_client_auth_cert(vec![identity.certificate.clone()], identity.key.clone_key())
        .map_err(|e| ConnectError::TlsSetup(e.to_string()))?;
    tls.alpn_protocols = vec![PEER_ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| ConnectError::TlsSetup(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport);
    Ok(config)
}
