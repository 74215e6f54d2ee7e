//! Loopback QUIC connections for the transport crate's tests.

use peergroup_transport::provider;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use std::net::SocketAddr;
use std::sync::Arc;

/// A server endpoint and a client endpoint on loopback, connected; the client's
/// connection uses `client_transport`. Returns the client endpoint (keep it alive), the
/// client's connection and the server's.
pub async fn connected_pair(
    client_transport: quinn::TransportConfig,
) -> (quinn::Endpoint, quinn::Connection, quinn::Connection) {
    let key = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert = key.cert.der().clone();
    let private = rustls::pki_types::PrivateKeyDer::Pkcs8(key.signing_key.serialize_der().into());
    let tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], private)
        .unwrap();
    let server_config =
        quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls).unwrap()));
    let server =
        quinn::Endpoint::server(server_config, SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut client = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let mut client_config =
        quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()));
    client_config.transport_config(Arc::new(client_transport));
    client.set_default_client_config(client_config);
    let connecting = client
        .connect(server.local_addr().unwrap(), "localhost")
        .unwrap();
    let accepted = server.accept().await.unwrap();
    let (sending, receiving) = tokio::join!(connecting, accepted);
    (client, sending.unwrap(), receiving.unwrap())
}
