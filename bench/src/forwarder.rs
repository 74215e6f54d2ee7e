//! The QUIC ceiling: a minimal forwarder written directly on quinn, with the same
//! one-upload fan-out as peergroup's relay and nothing else (no auth, no groups, no
//! sequencing, no relay rule).
//!
//! TLS is set up as peergroup's is (rustls with ring, TLS 1.3 only, a self-signed server
//! certificate), so both pay the same QUIC and crypto costs.
//!
//! # Wire
//! - Each client opens one bidirectional stream and writes [`HELLO`]; the forwarder
//!   answers with the client's id (`u32` big-endian) and then writes relayed frames on it.
//! - Reliable upload, on the stream: `[u32 len][u16 dest_count][u32 dest..][payload]`,
//!   `len` counting everything after itself. Delivery: `[u32 len][u32 from][payload]`,
//!   built once and queued to every destination's stream.
//! - Unreliable upload, one QUIC datagram: `[u8 dest_count][u32 dest..][payload]`.
//!   Delivery: `[u32 from][payload]`, one datagram per destination.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::mpsc;

/// What a client writes first on its stream.
const HELLO: &[u8; 4] = b"FWD1";
/// ALPN of the forwarder.
pub(crate) const ALPN: &[u8] = b"bench-fwd/1";
/// Frames queued for one stream writer (client upload or forwarder delivery) before the
/// producer waits: back-pressure, as peergroup's byte-bounded queues give.
const QUEUE_FRAMES: usize = 8192;
/// Largest reliable frame accepted.
const MAX_FRAME: usize = 1 << 20;

pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn err(what: &str) -> impl Fn(String) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// One connected client as the forwarder sees it.
struct Peer {
    connection: quinn::Connection,
    out: mpsc::Sender<Bytes>,
}

#[derive(Default)]
struct State {
    peers: RwLock<HashMap<u32, Peer>>,
    next_id: AtomicU32,
}

/// A running forwarder; dropping it closes its endpoint.
pub struct Forwarder {
    endpoint: quinn::Endpoint,
    certificate: CertificateDer<'static>,
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.endpoint.close(0u32.into(), b"forwarder stopped");
    }
}

impl Forwarder {
    /// Binds on 127.0.0.1 and serves on the current tokio runtime.
    pub fn start() -> Result<Forwarder, String> {
        let (config, certificate) = server_config()?;
        let endpoint = quinn::Endpoint::server(config, SocketAddr::from(([127, 0, 0, 1], 0)))
            .map_err(|e| err("bind")(e.to_string()))?;
        let state = Arc::new(State::default());
        tokio::spawn(accept_loop(endpoint.clone(), state));
        Ok(Forwarder {
            endpoint,
            certificate,
        })
    }

    /// The UDP address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.endpoint
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// The certificate clients trust.
    pub fn certificate(&self) -> CertificateDer<'static> {
        self.certificate.clone()
    }
}

/// A QUIC server configuration like peergroup's (TLS 1.3, ring, 10 s idle timeout, 256 KiB
/// of queued datagrams per client) with a fresh self-signed certificate for `localhost`,
/// and that certificate.
pub fn server_config() -> Result<(quinn::ServerConfig, CertificateDer<'static>), String> {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()])
        .map_err(|e| err("certificate")(e.to_string()))?;
    let certificate = certified.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| err("tls")(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(vec![certificate.clone()], key)
        .map_err(|e| err("tls")(e.to_string()))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| err("quic tls")(e.to_string()))?;
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(Some(
            Duration::from_secs(10)
                .try_into()
                .map_err(|_| "idle timeout".to_string())?,
        ))
        .datagram_send_buffer_size(256 << 10);
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport));
    Ok((config, certificate))
}

async fn accept_loop(endpoint: quinn::Endpoint, state: Arc<State>) {
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(serve(incoming, state.clone()));
    }
}

async fn serve(incoming: quinn::Incoming, state: Arc<State>) {
    let Ok(Ok(connection)) = tokio::time::timeout(Duration::from_secs(10), incoming).await else {
        return;
    };
    let Ok(Ok((send, mut recv))) =
        tokio::time::timeout(Duration::from_secs(10), connection.accept_bi()).await
    else {
        return;
    };
    let mut hello = [0u8; 4];
    if recv.read_exact(&mut hello).await.is_err() || &hello != HELLO {
        connection.close(1u32.into(), b"bad hello");
        return;
    }
    let id = state.next_id.fetch_add(1, Ordering::Relaxed);
    let (out, queued) = mpsc::channel(QUEUE_FRAMES);
    let _ = out.try_send(Bytes::copy_from_slice(&id.to_be_bytes()));
    tokio::spawn(write_frames(send, queued));
    state
        .peers
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .insert(
            id,
            Peer {
                connection: connection.clone(),
                out,
            },
        );
    tokio::select! {
        _ = forward_frames(id, recv, &state) => {}
        _ = forward_datagrams(id, &connection, &state) => {}
    }
    state
        .peers
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&id);
    connection.close(0u32.into(), b"done");
}

/// Writes queued frames, up to 64 at a time, merged into one buffer: quinn keeps each
/// written `Bytes` as a segment of the stream's send buffer and finds a frame's data by
/// scanning the segments from the front (quinn-proto 0.11 `SendBuffer::get`), so a backlog
/// of many small segments makes packet building quadratic.
async fn write_frames(mut send: quinn::SendStream, mut queued: mpsc::Receiver<Bytes>) {
    let mut batch = Vec::with_capacity(64);
    while queued.recv_many(&mut batch, 64).await > 0 {
        let merged = if batch.len() == 1 {
            batch.pop().unwrap_or_default()
        } else {
            let mut merged = BytesMut::with_capacity(batch.iter().map(Bytes::len).sum());
            for frame in batch.drain(..) {
                merged.put_slice(&frame);
            }
            merged.freeze()
        };
        if send.write_chunk(merged).await.is_err() {
            return;
        }
    }
}

/// Reads reliable uploads and queues each to its destinations' streams.
async fn forward_frames(from: u32, mut recv: quinn::RecvStream, state: &State) {
    let mut buf = BytesMut::with_capacity(64 << 10);
    let mut outs: Vec<mpsc::Sender<Bytes>> = Vec::new();
    loop {
        match recv.read_chunk(usize::MAX, true).await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk.bytes),
            _ => return,
        }
        while buf.len() >= 4 {
            let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
            if !(2..=MAX_FRAME).contains(&len) {
                return;
            }
            if buf.len() < 4 + len {
                buf.reserve(4 + len - buf.len());
                break;
            }
            let mut frame = buf.split_to(4 + len);
            frame.advance(4);
            let count = frame.get_u16() as usize;
            if frame.len() < count * 4 {
                return;
            }
            let payload = &frame[count * 4..];
            let mut delivery = BytesMut::with_capacity(8 + payload.len());
            delivery.put_u32((4 + payload.len()) as u32);
            delivery.put_u32(from);
            delivery.put_slice(payload);
            let delivery = delivery.freeze();
            {
                let peers = state.peers.read().unwrap_or_else(|p| p.into_inner());
                outs.extend(
                    frame[..count * 4]
                        .chunks_exact(4)
                        .filter_map(|d| peers.get(&u32::from_be_bytes([d[0], d[1], d[2], d[3]])))
                        .map(|peer| peer.out.clone()),
                );
            }
            for out in outs.drain(..) {
                // A closed destination just misses the message.
                let _ = out.send(delivery.clone()).await;
            }
        }
    }
}

/// Reads unreliable uploads and sends one datagram to each destination.
async fn forward_datagrams(from: u32, connection: &quinn::Connection, state: &State) {
    while let Ok(datagram) = connection.read_datagram().await {
        let Some(&count) = datagram.first() else {
            continue;
        };
        let count = count as usize;
        let header = 1 + count * 4;
        if datagram.len() < header {
            continue;
        }
        let mut delivery = BytesMut::with_capacity(4 + datagram.len() - header);
        delivery.put_u32(from);
        delivery.put_slice(&datagram[header..]);
        let delivery = delivery.freeze();
        let peers = state.peers.read().unwrap_or_else(|p| p.into_inner());
        for d in datagram[1..header].chunks_exact(4) {
            if let Some(peer) = peers.get(&u32::from_be_bytes([d[0], d[1], d[2], d[3]])) {
                // Too large or a closed destination: an unreliable message is just lost.
                let _ = peer.connection.send_datagram(delivery.clone());
            }
        }
    }
}

/// A client of the forwarder: the sending half. Cheap to clone.
#[derive(Clone)]
pub struct FwdClient {
    id: u32,
    connection: quinn::Connection,
    endpoint: quinn::Endpoint,
    queue: mpsc::Sender<Bytes>,
}

/// The receiving half of a client's stream.
pub struct FwdStream {
    recv: quinn::RecvStream,
    buf: BytesMut,
}

impl FwdClient {
    /// Connects and learns its id. Must run on a tokio runtime (it spawns the writer).
    pub async fn connect(
        server: SocketAddr,
        certificate: CertificateDer<'static>,
    ) -> Result<(FwdClient, FwdStream), String> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(certificate)
            .map_err(|e| err("root")(e.to_string()))?;
        let mut tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| err("tls")(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = QuicClientConfig::try_from(tls).map_err(|e| err("quic tls")(e.to_string()))?;
        let mut transport = quinn::TransportConfig::default();
        // As peergroup's client: 10 s idle timeout, keepalive every 4 s.
        transport
            .max_idle_timeout(Some(
                Duration::from_secs(10)
                    .try_into()
                    .map_err(|_| "idle timeout".to_string())?,
            ))
            .keep_alive_interval(Some(Duration::from_secs(4)));
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(Arc::new(transport));
        let endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0)))
            .map_err(|e| err("bind")(e.to_string()))?;
        let connecting = endpoint
            .connect_with(config, server, "localhost")
            .map_err(|e| err("connect")(e.to_string()))?;
        let handshake = async {
            let connection = connecting.await.map_err(|e| e.to_string())?;
            let (mut send, mut recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
            send.write_all(HELLO).await.map_err(|e| e.to_string())?;
            let mut id = [0u8; 4];
            recv.read_exact(&mut id).await.map_err(|e| e.to_string())?;
            Ok::<_, String>((connection, send, recv, u32::from_be_bytes(id)))
        };
        let (connection, send, recv, id) = tokio::time::timeout(Duration::from_secs(10), handshake)
            .await
            .map_err(|_| "forwarder handshake timed out".to_string())?
            .map_err(err("forwarder handshake"))?;
        let (queue, queued) = mpsc::channel(QUEUE_FRAMES);
        tokio::spawn(write_frames(send, queued));
        let client = FwdClient {
            id,
            connection,
            endpoint,
            queue,
        };
        let stream = FwdStream {
            recv,
            buf: BytesMut::with_capacity(64 << 10),
        };
        Ok((client, stream))
    }

    /// The id the forwarder gave this client.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Sends `payload` to `dests` on the stream, waiting while the upload queue is full.
    pub async fn send_reliable(&self, dests: &[u32], payload: &[u8]) -> Result<(), String> {
        let mut frame = BytesMut::with_capacity(6 + dests.len() * 4 + payload.len());
        frame.put_u32((2 + dests.len() * 4 + payload.len()) as u32);
        frame.put_u16(dests.len() as u16);
        for dest in dests {
            frame.put_u32(*dest);
        }
        frame.put_slice(payload);
        self.queue
            .send(frame.freeze())
            .await
            .map_err(|_| "forwarder connection closed".to_string())
    }

    /// Sends `payload` to `dests` in one datagram; never waits (quinn drops the oldest
    /// queued datagrams when its buffer is full, as for peergroup's client).
    pub fn send_unreliable(&self, dests: &[u32], payload: &[u8]) -> Result<(), String> {
        let mut datagram = BytesMut::with_capacity(1 + dests.len() * 4 + payload.len());
        datagram.put_u8(dests.len() as u8);
        for dest in dests {
            datagram.put_u32(*dest);
        }
        datagram.put_slice(payload);
        self.connection
            .send_datagram(datagram.freeze())
            .map_err(|e| e.to_string())
    }

    /// The next relayed datagram's payload.
    pub async fn read_datagram(&self) -> Result<Bytes, String> {
        let mut datagram = self
            .connection
            .read_datagram()
            .await
            .map_err(|e| e.to_string())?;
        if datagram.len() < 4 {
            return Err("short datagram".into());
        }
        datagram.advance(4);
        Ok(datagram)
    }

    /// Closes the connection.
    pub fn close(&self) {
        self.connection.close(0u32.into(), b"client closed");
        self.endpoint.close(0u32.into(), b"client closed");
    }
}

impl FwdStream {
    /// The next relayed frame's payload; `None` when the stream ends.
    pub async fn next(&mut self) -> Result<Option<Bytes>, String> {
        loop {
            if self.buf.len() >= 4 {
                let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]])
                    as usize;
                if !(4..=MAX_FRAME).contains(&len) {
                    return Err(format!("bad frame length {len}"));
                }
                if self.buf.len() >= 4 + len {
                    let mut frame = self.buf.split_to(4 + len);
                    frame.advance(8);
                    return Ok(Some(frame.freeze()));
                }
                self.buf.reserve(4 + len - self.buf.len());
            }
            match self.recv.read_chunk(usize::MAX, true).await {
                Ok(Some(chunk)) => self.buf.extend_from_slice(&chunk.bytes),
                Ok(None) => return Ok(None),
                Err(e) => return Err(e.to_string()),
            }
        }
    }
}
