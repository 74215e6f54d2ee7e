//! One UDP socket per client, shared by QUIC and punch probes.
//!
//! A NAT mapping belongs to one local port, so the port the server saw the client's QUIC
//! connection come from is the port peers must punch to, and the port the client's
//! probes must leave from. quinn exposes no raw UDP send or receive, so [`DemuxSocket`]
//! wraps the runtime's own socket as a [`quinn::AsyncUdpSocket`]: quinn drives it as
//! usual, and on every receive the wrapper takes out the datagrams that are probes (first
//! byte in `0x00..=0x3F`, see [`peergroup_protocol::probe`]) and queues them for the punch
//! task. [`DemuxSocket::send_probe`] sends through the very same socket.
//!
//! Build the endpoint with
//! `quinn::Endpoint::new_with_abstract_socket(config, server_config, socket, Arc::new(quinn::TokioRuntime))`,
//! where `config` has had `EndpointConfig::grease_quic_bit(false)` called on it: quinn
//! otherwise clears the QUIC fixed bit at random and its packets would be taken for
//! probes. Use `rebind_abstract`, never `rebind`, which would drop the wrapper. Probes
//! are only received while an endpoint drives the socket.

use bytes::Bytes;
use peergroup_protocol::is_probe;
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, Runtime, TokioRuntime, UdpPoller};
use std::io::{self, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV6};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::mpsc;

/// How many received probes may wait for the punch task; more are dropped (and counted)
/// rather than blocking quinn's receive path or growing without bound.
const PROBE_QUEUE: usize = 256;

/// A received probe: the address it came from (as the socket reports it, so an IPv4
/// source on a dual-stack socket shows as an IPv4-mapped IPv6 address, as in quinn) and
/// the whole datagram.
pub(crate) type ReceivedProbe = (SocketAddr, Bytes);

/// The client's one UDP socket: quinn's connections (to the server and to peers) and the
/// punch probes share it, because a NAT mapping belongs to one local port.
///
/// Implements [`quinn::AsyncUdpSocket`] by delegating to the Tokio runtime's socket and
/// taking probes out of every receive; they arrive on the [`ProbeReceiver`] returned with
/// it.
#[derive(Debug)]
#[allow(dead_code)] // Until the punch task builds its endpoint on it.
pub(crate) struct DemuxSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    probes: mpsc::Sender<ReceivedProbe>,
    dropped: AtomicU64,
    ipv6: bool,
}

/// The probes taken out of a [`DemuxSocket`]'s receives, in arrival order. The punch task
/// owns it; the socket never waits for it.
#[derive(Debug)]
#[allow(dead_code)] // Until the punch task reads it.
pub(crate) struct ProbeReceiver {
    rx: mpsc::Receiver<ReceivedProbe>,
}

#[allow(dead_code)] // Until the punch task uses them.
impl DemuxSocket {
    /// Wraps an already bound socket (this binds nothing) and returns it with the receiver
    /// of its probes. Must be called inside a Tokio runtime with I/O enabled, like
    /// `quinn::Endpoint::new`.
    ///
    /// The endpoint built on it must have `EndpointConfig::grease_quic_bit(false)`.
    ///
    /// # Errors
    /// Outside a Tokio runtime, or when the socket cannot be set up (non-blocking mode,
    /// socket options, its local address).
    pub(crate) fn new(socket: std::net::UdpSocket) -> io::Result<(Arc<Self>, ProbeReceiver)> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(io::Error::other(
                "the client socket must be created inside a Tokio runtime",
            ));
        }
        let inner = TokioRuntime.wrap_udp_socket(socket)?;
        let ipv6 = inner.local_addr()?.is_ipv6();
        let (tx, rx) = mpsc::channel(PROBE_QUEUE);
        let socket = Arc::new(Self {
            inner,
            probes: tx,
            dropped: AtomicU64::new(0),
            ipv6,
        });
        Ok((socket, ProbeReceiver { rx }))
    }

    /// Sends one probe to `to` from this socket, so it leaves through the same NAT
    /// mapping as the QUIC connections. Waits while the socket's send buffer is full (a
    /// fresh socket can also report `WouldBlock` until its poller has seen it writable).
    ///
    /// Like quinn's own sends, an error from the operating system other than
    /// `WouldBlock` (an unreachable network, say) is logged by quinn-udp and the probe is
    /// lost silently: UDP is best effort and the punch retries.
    ///
    /// # Errors
    /// `InvalidInput` when `bytes` is not a probe (its first byte has the QUIC fixed bit
    /// or it is empty), since the peer's socket would hand it to QUIC; an error of the
    /// socket's write-readiness.
    pub(crate) async fn send_probe(&self, to: SocketAddr, bytes: &[u8]) -> io::Result<()> {
        if !is_probe(bytes) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a probe's first byte must be in 0x00..=0x3F",
            ));
        }
        // As quinn does: an IPv6 socket reaches IPv4 addresses by their mapped form.
        let destination = match to {
            SocketAddr::V4(v4) if self.ipv6 => {
                SocketAddr::V6(SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0))
            }
            other => other,
        };
        let transmit = Transmit {
            destination,
            ecn: None,
            contents: bytes,
            segment_size: None,
            src_ip: None,
        };
        send_when_writable(&self.inner, &transmit).await
    }

    /// How many received probes were dropped because the [`ProbeReceiver`] was full or
    /// gone. A growing count means the punch task is not keeping up (or someone floods
    /// the port with non-QUIC datagrams).
    pub(crate) fn dropped_probes(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Takes the probes out of one received buffer, queues them, and leaves the QUIC
    /// datagrams for quinn.
    fn take_probes(&self, buf: &mut [u8], meta: &mut RecvMeta) {
        let (kept, probes) = split_probes(buf, meta.len, meta.stride);
        meta.len = kept;
        if meta.stride == 0 {
            // quinn walks the buffer in stride-sized steps and would never finish.
            meta.stride = kept;
        }
        for probe in probes {
            if self.probes.try_send((meta.addr, probe)).is_err() {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl AsyncUdpSocket for DemuxSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let received = match self.inner.poll_recv(cx, bufs, meta) {
            Poll::Ready(Ok(received)) => received,
            other => return other,
        };
        for (buf, meta) in bufs.iter_mut().zip(meta.iter_mut()).take(received) {
            self.take_probes(buf, meta);
        }
        Poll::Ready(Ok(received))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[allow(dead_code)] // Until the punch task uses it.
impl ProbeReceiver {
    /// The next probe and where it came from; `None` once the socket is gone (the
    /// endpoint and every other handle dropped). Probes are unauthenticated here: check
    /// the MAC before believing one.
    pub(crate) async fn recv(&mut self) -> Option<ReceivedProbe> {
        self.rx.recv().await
    }
}

/// Sends `transmit` on `socket`, waiting on a write poller for as long as the socket
/// reports `WouldBlock`.
async fn send_when_writable(
    socket: &Arc<dyn AsyncUdpSocket>,
    transmit: &Transmit<'_>,
) -> io::Result<()> {
    let mut poller: Option<Pin<Box<dyn UdpPoller>>> = None;
    loop {
        match socket.try_send(transmit) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            done => return done,
        }
        let poller = poller.get_or_insert_with(|| socket.clone().create_io_poller());
        std::future::poll_fn(|cx| poller.as_mut().poll_writable(cx)).await?;
    }
}

/// Splits the first `len` bytes of a received buffer into datagrams of `stride` bytes
/// (the last may be shorter; GRO packs several datagrams from one source into one
/// buffer), copies out the probes, and moves the QUIC datagrams to the front in their
/// order. Returns how many bytes of QUIC are left at the front, and the probes in order.
///
/// Every kept datagram but the last is still `stride` bytes, since only the original last
/// datagram can be short and it stays last, so quinn can walk the result with the same
/// stride. A `stride` of 0 means one datagram of `len`; `len` beyond the buffer is cut to
/// it. Never panics.
fn split_probes(buf: &mut [u8], len: usize, stride: usize) -> (usize, Vec<Bytes>) {
    let len = len.min(buf.len());
    let stride = if stride == 0 { len } else { stride };
    let mut probes = Vec::new();
    let mut kept = 0;
    let mut start = 0;
    while start < len {
        let end = start.saturating_add(stride).min(len);
        let datagram = &buf[start..end];
        if is_probe(datagram) {
            probes.push(Bytes::copy_from_slice(datagram));
        } else {
            if kept != start {
                buf.copy_within(start..end, kept);
            }
            kept += end - start;
        }
        start = end;
    }
    (kept, probes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use peergroup_protocol::{PairId, Probe, ProbeKind, PROBE_MAC_LEN};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use std::time::Duration;

    const TIMEOUT: Duration = Duration::from_secs(10);

    fn quic(tag: u8, len: usize) -> Vec<u8> {
        let mut out = vec![tag; len];
        out[0] = 0x40 | tag;
        out
    }

    fn probe(tag: u8, len: usize) -> Vec<u8> {
        let mut out = vec![tag; len];
        out[0] = 0x01;
        out
    }

    /// Runs `split_probes` over the concatenation of `datagrams`, with spare room after.
    fn split(datagrams: &[&[u8]], stride: usize) -> (Vec<u8>, Vec<Vec<u8>>) {
        let mut buf: Vec<u8> = datagrams.concat();
        let len = buf.len();
        buf.resize(len + 64, 0xEE);
        let (kept, probes) = split_probes(&mut buf, len, stride);
        (
            buf[..kept].to_vec(),
            probes.iter().map(|p| p.to_vec()).collect(),
        )
    }

    #[test]
    fn all_quic_is_left_alone() {
        let (a, b, c) = (quic(1, 10), quic(2, 10), quic(3, 4));
        let (kept, probes) = split(&[&a, &b, &c], 10);
        assert_eq!(kept, [a, b, c].concat());
        assert!(probes.is_empty());
    }

    #[test]
    fn all_probes_leave_nothing() {
        let (a, b) = (probe(1, 8), probe(2, 8));
        let (kept, probes) = split(&[&a, &b], 8);
        assert!(kept.is_empty());
        assert_eq!(probes, vec![a, b]);
        let single = probe(3, 30);
        let (kept, probes) = split(&[&single], 30);
        assert!(kept.is_empty());
        assert_eq!(probes, vec![single]);
    }

    #[test]
    fn probe_in_the_middle_of_a_gro_batch_is_cut_out() {
        let (a, p, b, c) = (quic(1, 6), probe(2, 6), quic(3, 6), quic(4, 2));
        let (kept, probes) = split(&[&a, &p, &b, &c], 6);
        assert_eq!(kept, [a, b, c].concat());
        assert_eq!(probes, vec![p]);
    }

    #[test]
    fn short_probe_last_is_cut_and_the_rest_keep_their_stride() {
        let (a, b, p) = (quic(1, 6), quic(2, 6), probe(3, 3));
        let (kept, probes) = split(&[&a, &b, &p], 6);
        assert_eq!(kept, [a, b].concat());
        assert_eq!(probes, vec![p]);

        let (p1, a, p2) = (probe(4, 5), quic(5, 5), probe(6, 1));
        let (kept, probes) = split(&[&p1, &a, &p2], 5);
        assert_eq!(kept, a);
        assert_eq!(probes, vec![p1, p2]);
    }

    #[test]
    fn stride_zero_is_one_datagram() {
        let a = quic(1, 9);
        assert_eq!(split(&[&a], 0), (a.clone(), vec![]));
        let p = probe(2, 9);
        assert_eq!(split(&[&p], 0), (vec![], vec![p]));
    }

    #[test]
    fn empty_and_out_of_range_inputs_do_not_panic() {
        assert_eq!(split_probes(&mut [], 0, 0), (0, vec![]));
        assert_eq!(split_probes(&mut [], 5, 3), (0, vec![]));
        let mut buf = [0x41, 0x42, 0x43];
        assert_eq!(split_probes(&mut buf, 0, 1200), (0, vec![]));
        // A length beyond the buffer is cut to it.
        assert_eq!(split_probes(&mut buf, 100, usize::MAX), (3, vec![]));
        let mut seed = 0x9e37_79b9u32;
        for len in 0..64usize {
            for stride in 0..12usize {
                let mut buf: Vec<u8> = (0..len)
                    .map(|_| {
                        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                        (seed >> 16) as u8
                    })
                    .collect();
                let original = buf.clone();
                let (kept, probes) = split_probes(&mut buf, len, stride);
                let probe_bytes: usize = probes.iter().map(Bytes::len).sum();
                assert_eq!(kept + probe_bytes, original.len());
            }
        }
    }

    fn fake_mac(bytes: &[u8]) -> [u8; PROBE_MAC_LEN] {
        let mut out = [0u8; PROBE_MAC_LEN];
        for (i, b) in bytes.iter().enumerate() {
            out[i % PROBE_MAC_LEN] ^= b;
        }
        out
    }

    fn probe_bytes(nonce: u64) -> Vec<u8> {
        Probe {
            kind: ProbeKind::Request,
            pair: PairId::from_raw(7),
            attempt: 1,
            nonce,
            from_controlling: true,
        }
        .encode(fake_mac)
    }

    fn bind_loopback() -> std::net::UdpSocket {
        std::net::UdpSocket::bind("127.0.0.1:0").unwrap()
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_and_meta_is_fixed_up() {
        let (socket, mut probes) = DemuxSocket::new(bind_loopback()).unwrap();
        let from: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let datagram = probe_bytes(1);
        for _ in 0..PROBE_QUEUE + 10 {
            let mut buf = datagram.clone();
            let mut meta = RecvMeta {
                addr: from,
                len: buf.len(),
                stride: buf.len(),
                ..RecvMeta::default()
            };
            socket.take_probes(&mut buf, &mut meta);
            assert_eq!(meta.len, 0);
        }
        assert_eq!(socket.dropped_probes(), 10);
        for _ in 0..PROBE_QUEUE {
            assert_eq!(probes.recv().await, Some((from, datagram.clone().into())));
        }
        drop(probes);
        let mut buf = datagram.clone();
        let mut meta = RecvMeta {
            addr: from,
            len: buf.len(),
            stride: 0,
            ..RecvMeta::default()
        };
        socket.take_probes(&mut buf, &mut meta);
        assert_eq!(socket.dropped_probes(), 11);

        // Stride 0 with QUIC left: quinn must get a stride it can walk.
        let mut buf = quic(1, 20);
        let mut meta = RecvMeta {
            addr: from,
            len: 20,
            stride: 0,
            ..RecvMeta::default()
        };
        socket.take_probes(&mut buf, &mut meta);
        assert_eq!((meta.len, meta.stride), (20, 20));
    }

    #[tokio::test]
    async fn sending_a_non_probe_is_refused() {
        let (socket, _probes) = DemuxSocket::new(bind_loopback()).unwrap();
        let to: SocketAddr = "127.0.0.1:9".parse().unwrap();
        for bytes in [&[][..], &[0x40, 1, 2][..], &[0xC0][..]] {
            let error = socket.send_probe(to, bytes).await.unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
        }
    }

    /// One GSO send of QUIC-looking and probe datagrams, read back through `poll_recv`
    /// (as one GRO buffer where the kernel supports it, else one datagram at a time).
    #[tokio::test]
    async fn poll_recv_splits_a_real_receive() {
        let (socket, mut probes) = DemuxSocket::new(bind_loopback()).unwrap();
        let to = socket.local_addr().unwrap();
        let sender = TokioRuntime.wrap_udp_socket(bind_loopback()).unwrap();
        let from = sender.local_addr().unwrap();
        let (a, p1, b, p2) = (quic(1, 100), probe(2, 100), quic(3, 100), probe(4, 40));
        let gso = sender.max_transmit_segments() > 1;
        let datagrams: Vec<&[u8]> = vec![&a, &p1, &b, &p2];
        if gso {
            let contents = datagrams.concat();
            let transmit = Transmit {
                destination: to,
                ecn: None,
                contents: &contents,
                segment_size: Some(100),
                src_ip: None,
            };
            send_when_writable(&sender, &transmit).await.unwrap();
        } else {
            for contents in &datagrams {
                let transmit = Transmit {
                    destination: to,
                    ecn: None,
                    contents,
                    segment_size: None,
                    src_ip: None,
                };
                send_when_writable(&sender, &transmit).await.unwrap();
            }
        }

        let mut quic_seen = Vec::new();
        let mut storage = vec![0u8; 4 * 65536];
        while quic_seen.len() < a.len() + b.len() {
            let mut bufs: Vec<IoSliceMut<'_>> =
                storage.chunks_mut(65536).map(IoSliceMut::new).collect();
            let mut meta = [RecvMeta::default(); 4];
            let n = tokio::time::timeout(
                TIMEOUT,
                std::future::poll_fn(|cx| socket.poll_recv(cx, &mut bufs, &mut meta)),
            )
            .await
            .unwrap()
            .unwrap();
            for (buf, meta) in bufs.iter().zip(&meta).take(n) {
                assert_eq!(meta.addr, from);
                assert!(meta.len == 0 || meta.stride > 0);
                for piece in buf[..meta.len].chunks(meta.stride.max(1)) {
                    assert!(!is_probe(piece));
                    quic_seen.extend_from_slice(piece);
                }
            }
        }
        assert_eq!(quic_seen, [a, b].concat());
        for expected in [p1, p2] {
            let (source, bytes) = probes.recv().await.unwrap();
            assert_eq!(source, from);
            assert_eq!(&bytes[..], &expected[..]);
        }
        assert_eq!(socket.dropped_probes(), 0);
    }

    fn endpoint_config() -> quinn::EndpointConfig {
        let mut config = quinn::EndpointConfig::default();
        config.grease_quic_bit(false);
        config
    }

    fn tls_pair() -> (quinn::ServerConfig, quinn::ClientConfig) {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert: CertificateDer<'static> = certified.cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
        let provider = peergroup_transport::provider();

        let server_tls = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .unwrap();
        let server = quinn::ServerConfig::with_crypto(Arc::new(
            quinn::crypto::rustls::QuicServerConfig::try_from(server_tls).unwrap(),
        ));

        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let client_tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let client = quinn::ClientConfig::new(Arc::new(
            quinn::crypto::rustls::QuicClientConfig::try_from(client_tls).unwrap(),
        ));
        (server, client)
    }

    #[tokio::test]
    async fn quic_and_probes_share_one_socket() {
        let (server_config, client_config) = tls_pair();
        let server = quinn::Endpoint::new(
            endpoint_config(),
            Some(server_config),
            bind_loopback(),
            Arc::new(TokioRuntime),
        )
        .unwrap();
        let server_addr = server.local_addr().unwrap();
        let server_task = tokio::spawn(async move {
            let connection = server.accept().await.unwrap().await.unwrap();
            // Answers every stream until the client closes.
            while let Ok((mut send, mut recv)) = connection.accept_bi().await {
                let request = recv.read_to_end(1024).await.unwrap();
                let mut reply = b"pong: ".to_vec();
                reply.extend_from_slice(&request);
                send.write_all(&reply).await.unwrap();
                send.finish().unwrap();
            }
        });

        let (socket, mut probes) = DemuxSocket::new(bind_loopback()).unwrap();
        let client_addr = socket.local_addr().unwrap();
        let client = quinn::Endpoint::new_with_abstract_socket(
            endpoint_config(),
            None,
            socket.clone(),
            Arc::new(TokioRuntime),
        )
        .unwrap();

        let prober = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let prober_addr = prober.local_addr().unwrap();
        let sent: Vec<Vec<u8>> = (0..6).map(probe_bytes).collect();
        // Half before the handshake, half while the stream exchange runs.
        for datagram in &sent[..3] {
            prober.send_to(datagram, client_addr).await.unwrap();
        }

        let exchange = async {
            let connection = client
                .connect_with(client_config, server_addr, "localhost")
                .unwrap()
                .await
                .unwrap();
            let (mut send, mut recv) = connection.open_bi().await.unwrap();
            for datagram in &sent[3..] {
                prober.send_to(datagram, client_addr).await.unwrap();
            }
            send.write_all(b"ping").await.unwrap();
            send.finish().unwrap();
            let reply = recv.read_to_end(1024).await.unwrap();
            (connection, reply)
        };
        let (connection, reply) = tokio::time::timeout(TIMEOUT, exchange).await.unwrap();
        assert_eq!(reply, b"pong: ping");

        for datagram in &sent {
            let (from, bytes) = tokio::time::timeout(TIMEOUT, probes.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(from, prober_addr);
            assert_eq!(&bytes[..], &datagram[..]);
        }
        assert_eq!(socket.dropped_probes(), 0);

        // A probe sent through the socket leaves from the client's (QUIC) address.
        let outgoing = probe_bytes(99);
        tokio::time::timeout(TIMEOUT, socket.send_probe(prober_addr, &outgoing))
            .await
            .unwrap()
            .unwrap();
        let mut buf = [0u8; 1500];
        let (n, from) = tokio::time::timeout(TIMEOUT, prober.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(from, client_addr);
        assert_eq!(&buf[..n], &outgoing[..]);

        // The QUIC connection still works after all that.
        let (mut send, mut recv) = connection.open_bi().await.unwrap();
        send.write_all(b"again").await.unwrap();
        send.finish().unwrap();
        let reply = tokio::time::timeout(TIMEOUT, recv.read_to_end(1024))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(reply, b"pong: again");

        connection.close(0u32.into(), b"done");
        tokio::time::timeout(TIMEOUT, server_task)
            .await
            .unwrap()
            .unwrap();
        client.wait_idle().await;
    }
}
