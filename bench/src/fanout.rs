//! The floor under batched churn: bare quinn doing only what one batch costs in packets.
//!
//! A batch of membership changes sends each of the 1,000 clients one frame of notices and
//! gets one ack frame back. This measures exactly that with nothing else: a quinn server
//! writes a frame of [`FRAME`] bytes to each of [`CLIENTS`] connected clients (on
//! [`CLIENT_ENDPOINTS`] endpoints, on another runtime, as in the churn section), each
//! client answers with a few bytes, and a round completes when every answer is in, with
//! two rounds under way as in the batched churn. Rounds per second times the operations
//! of one batch is what batched churn could reach if peergroup cost nothing beyond QUIC.

use crate::cpu::threads_cpu_ns;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Connected clients, as in the churn section.
pub const CLIENTS: usize = 1_000;
/// UDP sockets the clients share, as in the churn section.
const CLIENT_ENDPOINTS: usize = 8;
/// Bytes the server sends each client per round: about one batch's notices for one
/// client (some 20 notices of 30 bytes).
pub const FRAME: usize = 600;
/// Bytes each client answers with (an ack frame).
pub const REPLY: usize = 11;
/// Rounds under way at once.
const IN_FLIGHT: u64 = 2;

/// What the floor measurement found.
pub struct Floor {
    pub rounds_per_sec: f64,
    /// Server CPU per round, microseconds.
    pub server_cpu_us_per_round: f64,
}

fn runtime(name: &str) -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(name)
        .enable_all()
        .build()
        .map_err(|e| format!("{name} runtime: {e}"))
}

/// Runs rounds for `window` and reports their rate.
pub fn measure(window: Duration) -> Result<Floor, String> {
    let server_rt = runtime("fanout-server")?;
    let client_rt = runtime("fanout-clients")?;
    let (endpoint, certificate) = server_rt.block_on(async { server_endpoint() })?;
    let addr = endpoint.local_addr().map_err(|e| e.to_string())?;
    let round = Arc::new(tokio::sync::watch::channel(0u64).0);
    let replies = Arc::new(AtomicU64::new(0));
    let answered = Arc::new(tokio::sync::Notify::new());
    {
        let (round, replies, answered) = (round.clone(), replies.clone(), answered.clone());
        server_rt.spawn(async move {
            while let Some(incoming) = endpoint.accept().await {
                let (round, replies, answered) = (round.clone(), replies.clone(), answered.clone());
                tokio::spawn(serve(incoming, round.subscribe(), replies, answered));
            }
        });
    }
    let connected = Arc::new(AtomicU64::new(0));
    {
        let _guard = client_rt.enter();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(certificate).map_err(|e| e.to_string())?;
        let mut tls = rustls::ClientConfig::builder_with_provider(crate::forwarder::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![crate::forwarder::ALPN.to_vec()];
        let crypto =
            quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
        let config = quinn::ClientConfig::new(Arc::new(crypto));
        let limit = Arc::new(tokio::sync::Semaphore::new(32));
        for i in 0..CLIENT_ENDPOINTS {
            let mut endpoint = crate::scale::client_endpoint()?;
            endpoint.set_default_client_config(config.clone());
            for _ in (i..CLIENTS).step_by(CLIENT_ENDPOINTS) {
                let (endpoint, limit, connected) =
                    (endpoint.clone(), limit.clone(), connected.clone());
                client_rt.spawn(async move {
                    let _ = answer(endpoint, addr, limit, connected).await;
                });
            }
        }
    }
    let result = server_rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(60);
        while connected.load(Ordering::Acquire) < CLIENTS as u64 {
            if Instant::now() > deadline {
                return Err("the fan-out clients did not all connect".to_string());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Warm up, then the window.
        drive(&round, &replies, &answered, Duration::from_millis(500)).await?;
        let before = threads_cpu_ns("fanout-server");
        let rounds = drive(&round, &replies, &answered, window).await?;
        let cpu = threads_cpu_ns("fanout-server").saturating_sub(before) as f64 / 1e9;
        Ok(Floor {
            rounds_per_sec: rounds as f64 / window.as_secs_f64(),
            server_cpu_us_per_round: cpu * 1e6 / rounds.max(1) as f64,
        })
    });
    client_rt.shutdown_timeout(Duration::from_secs(2));
    server_rt.shutdown_timeout(Duration::from_secs(2));
    result
}

/// Issues rounds for `window`, at most [`IN_FLIGHT`] under way; the rounds completed.
async fn drive(
    round: &tokio::sync::watch::Sender<u64>,
    replies: &AtomicU64,
    answered: &tokio::sync::Notify,
    window: Duration,
) -> Result<u64, String> {
    let start_round = *round.borrow();
    let done = || replies.load(Ordering::Acquire) / CLIENTS as u64;
    let end = Instant::now() + window;
    while Instant::now() < end {
        let issued = *round.borrow();
        if issued - done() < IN_FLIGHT {
            round.send_replace(issued + 1);
            continue;
        }
        let wait = end.saturating_duration_since(Instant::now());
        if tokio::time::timeout(wait, answered.notified())
            .await
            .is_err()
        {
            break;
        }
    }
    Ok(done().saturating_sub(start_round))
}

fn server_endpoint() -> Result<(quinn::Endpoint, rustls::pki_types::CertificateDer<'static>), String>
{
    let forwarder = crate::forwarder::server_config()?;
    let endpoint = quinn::Endpoint::server(forwarder.0, SocketAddr::from(([127, 0, 0, 1], 0)))
        .map_err(|e| format!("bind: {e}"))?;
    Ok((endpoint, forwarder.1))
}

/// One client's connection on the server: a frame per round, counting the answers.
async fn serve(
    incoming: quinn::Incoming,
    mut round: tokio::sync::watch::Receiver<u64>,
    replies: Arc<AtomicU64>,
    answered: Arc<tokio::sync::Notify>,
) -> Result<(), String> {
    let connection = incoming.await.map_err(|e| e.to_string())?;
    let (mut send, mut recv) = connection.accept_bi().await.map_err(|e| e.to_string())?;
    let mut hello = [0u8; 1];
    recv.read_exact(&mut hello)
        .await
        .map_err(|e| e.to_string())?;
    // Writing and reading run as two tasks: `read_exact` is not cancel-safe, so it must
    // not race a round change in one `select!`.
    let frame = bytes::Bytes::from(vec![7u8; FRAME]);
    let writer = tokio::spawn(async move {
        let mut sent = *round.borrow_and_update();
        while round.changed().await.is_ok() {
            let target = *round.borrow_and_update();
            while sent < target {
                if send.write_chunk(frame.clone()).await.is_err() {
                    return;
                }
                sent += 1;
            }
        }
    });
    let mut reply = [0u8; REPLY];
    while recv.read_exact(&mut reply).await.is_ok() {
        replies.fetch_add(1, Ordering::AcqRel);
        answered.notify_one();
    }
    writer.abort();
    Ok(())
}

/// One client: connect, say hello, answer every frame.
async fn answer(
    endpoint: quinn::Endpoint,
    server: SocketAddr,
    limit: Arc<tokio::sync::Semaphore>,
    connected: Arc<AtomicU64>,
) -> Result<(), String> {
    // The connection stays open for as long as this task answers.
    let (_connection, mut send, mut recv) = {
        let _permit = limit.acquire().await.map_err(|e| e.to_string())?;
        let connection = endpoint
            .connect(server, "localhost")
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        let (mut send, recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
        send.write_all(&[1]).await.map_err(|e| e.to_string())?;
        (connection, send, recv)
    };
    connected.fetch_add(1, Ordering::AcqRel);
    let mut frame = vec![0u8; FRAME];
    loop {
        recv.read_exact(&mut frame)
            .await
            .map_err(|e| e.to_string())?;
        send.write_all(&[0u8; REPLY])
            .await
            .map_err(|e| e.to_string())?;
    }
}
