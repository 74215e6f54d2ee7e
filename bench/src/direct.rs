//! Direct path: round-trip time of small messages on peergroup's direct path, on a bare
//! quinn stream (alone, and behind the writer and reader tasks peergroup's client puts
//! between the application and the stream) and on raw UDP, all on loopback, on a
//! two-thread runtime and on a one-thread one; and the message rate of one direct pair
//! against one bare quinn stream.

use crate::report::{rate, ratio, Report, Table};
use crate::setup::{self, wait_for};
use crate::stats::{median, Latencies};
use crate::Mode;
use bytes::Bytes;
use peergroup_client::{ClientEvent, Delivery, PairPath, Path as MessagePath, Target};
use peergroup_server::GroupOptions;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const PAYLOAD: usize = 64;
/// Runs of the quinn and peergroup measurements, taken in turn; the section reports the
/// median of each figure. Single runs' RTT ratio moved between 0.8 and 1.45.
const ROUNDS: usize = 3;

/// One path's figures over its runs: the median of each run's RTT p50 and p99 (µs) and
/// of its message rate (`None` for a path measured for RTT only).
struct Summary {
    p50: u64,
    p99: u64,
    rate: Option<f64>,
    /// Each run's RTT p50, µs.
    p50s: Vec<u64>,
}

impl Summary {
    fn of(rtts: &[&Latencies], rates: &[f64]) -> Self {
        let at = |p: f64| rtts.iter().map(|r| r.percentile_us(p)).collect::<Vec<_>>();
        let median_of = |values: &[u64]| {
            median(&values.iter().map(|&v| v as f64).collect::<Vec<_>>()).unwrap_or(0.0) as u64
        };
        let p50s = at(50.0);
        Self {
            p50: median_of(&p50s),
            p99: median_of(&at(99.0)),
            rate: median(rates),
            p50s,
        }
    }

    /// Of repeated (RTT, rate) runs.
    fn of_runs(runs: &[(Latencies, f64)]) -> Self {
        let rtts: Vec<&Latencies> = runs.iter().map(|(rtt, _)| rtt).collect();
        let rates: Vec<f64> = runs.iter().map(|(_, rate)| *rate).collect();
        Self::of(&rtts, &rates)
    }
}

/// `a`'s RTT p50 over `b`'s, to two decimals.
fn p50_ratio(a: &Summary, b: &Summary) -> f64 {
    (a.p50 as f64 / (b.p50 as f64).max(1.0) * 100.0).round() / 100.0
}

/// Runs the section.
pub fn run(mode: Mode, report: &mut Report, _out: &Path) -> Result<(), String> {
    let pings = mode.pick(2_000, 20_000);
    let window = mode.pick(Duration::from_secs(3), Duration::from_secs(10));
    let runtime = setup::client_runtime()?;
    let udp = runtime.block_on(udp_rtt(pings))?;
    // The same ping-pongs, RTT only, with every task on one thread: on the runtime above a
    // wake-up between the measuring task and a spawned one crosses threads, and those
    // wake-ups, not the code on either side, made most of the round trip.
    let one_thread = setup::current_thread_runtime()?;
    let mut quinn_runs = Vec::new();
    let mut peergroup_runs = Vec::new();
    // Quinn behind the hand-over tasks; then the one-thread runs of quinn, quinn behind
    // the tasks and peergroup.
    let mut rtt_runs: [Vec<Latencies>; 4] = Default::default();
    for _ in 0..ROUNDS {
        quinn_runs.push(runtime.block_on(quinn_rtt(pings, window))?);
        peergroup_runs.push(peergroup_direct(&runtime, pings, window)?);
        let [handovers, one_quinn, one_handovers, one_peergroup] = &mut rtt_runs;
        handovers.push(runtime.block_on(quinn_rtt_with_handovers(pings))?);
        one_quinn.push(one_thread.block_on(quinn_rtt(pings, Duration::ZERO))?.0);
        one_handovers.push(one_thread.block_on(quinn_rtt_with_handovers(pings))?);
        one_peergroup.push(peergroup_direct(&one_thread, pings, Duration::ZERO)?.0);
    }
    let quinn = Summary::of_runs(&quinn_runs);
    let peergroup = Summary::of_runs(&peergroup_runs);
    let udp = Summary::of(&[&udp], &[]);
    let [handovers, one_thread_quinn, one_thread_handovers, one_thread_peergroup] =
        rtt_runs.map(|runs| Summary::of(&runs.iter().collect::<Vec<_>>(), &[]));

    let measured = [
        ("peergroup direct path", "peergroup", &peergroup),
        ("bare quinn stream", "quinn", &quinn),
        (
            "bare quinn stream behind a writer and a reader task each side",
            "quinn_with_handovers",
            &handovers,
        ),
        ("raw UDP", "udp", &udp),
        (
            "peergroup direct path, one-thread runtime",
            "one_thread.peergroup",
            &one_thread_peergroup,
        ),
        (
            "bare quinn stream, one-thread runtime",
            "one_thread.quinn",
            &one_thread_quinn,
        ),
        (
            "bare quinn stream behind a writer and a reader task each side, one-thread runtime",
            "one_thread.quinn_with_handovers",
            &one_thread_handovers,
        ),
    ];
    let mut rows = Vec::new();
    for (name, key, summary) in measured {
        rows.push(vec![
            name.to_string(),
            summary.p50.to_string(),
            summary.p99.to_string(),
            summary.rate.map_or("-".into(), rate),
        ]);
        // `one_thread.quinn` goes to `direct.one_thread.rtt_p50_us.quinn`.
        let (prefix, key) = match key.split_once('.') {
            Some((runtime, key)) => (format!("direct.{runtime}"), key),
            None => ("direct".to_string(), key),
        };
        report.set(&format!("{prefix}.rtt_p50_us.{key}"), summary.p50);
        report.set(&format!("{prefix}.rtt_p99_us.{key}"), summary.p99);
        report.set(
            &format!("{prefix}.rtt_p50_us_runs.{key}"),
            serde_json::Value::from(summary.p50s.clone()),
        );
    }
    report.set(
        "direct.one_thread.rtt_p50_ratio_vs_quinn",
        p50_ratio(&one_thread_peergroup, &one_thread_quinn),
    );
    let (peergroup_rate, quinn_rate) = (peergroup.rate.unwrap_or(0.0), quinn.rate.unwrap_or(0.0));
    report.set(
        "direct.throughput_msgs_per_sec.peergroup",
        peergroup_rate.round(),
    );
    report.set("direct.throughput_msgs_per_sec.quinn", quinn_rate.round());
    if quinn_rate > 0.0 {
        report.set(
            "direct.throughput_ratio_vs_quinn",
            (peergroup_rate / quinn_rate * 100.0).round() / 100.0,
        );
        report.set(
            "direct.rtt_p50_ratio_vs_quinn",
            p50_ratio(&peergroup, &quinn),
        );
    }
    report.table(Table {
        title: "Direct path: RTT and one pair's message rate".into(),
        columns: vec![
            "path".into(),
            "RTT p50 (µs)".into(),
            "RTT p99 (µs)".into(),
            "64 B msgs/s".into(),
        ],
        rows,
        notes: vec![format!(
            "Ping-pong of {PAYLOAD} B messages, {pings} round trips each, one at a time, on \
             loopback; the median of {ROUNDS} runs each, quinn and peergroup in turn (RTT p50 \
             per run, µs: peergroup {:?}, quinn {:?}). peergroup: reliable messages between two clients after hole punching \
             (their server is idle); bare quinn: one bidirectional stream with length-prefixed \
             frames; with hand-overs: the same stream, but each side's application hands frames \
             to a writer task and gets them from a reader task through channels, as \
             peergroup's client does (RTT p50 per run, µs: {:?}). RTT ratio peergroup / \
             quinn: p50 {}, p99 {} (target at most 1.1). Rate: one sender streaming \
             reliable messages for {:.0} s. The measuring task runs on the runtime's \
             block_on thread and every spawned task (quinn's drivers, the echo, \
             peergroup's tasks) on its one worker, so hand-overs between them are wake-ups \
             across threads. The one-thread rows run the same ping-pongs on a current-thread \
             runtime, where no wake-up crosses threads (RTT p50 per run, µs: peergroup {:?}, \
             quinn {:?}, with hand-overs {:?}; ratio peergroup / quinn: p50 {}).",
            peergroup.p50s,
            quinn.p50s,
            handovers.p50s,
            ratio(peergroup.p50 as f64, quinn.p50 as f64),
            ratio(peergroup.p99 as f64, quinn.p99 as f64),
            window.as_secs_f64(),
            one_thread_peergroup.p50s,
            one_thread_quinn.p50s,
            one_thread_handovers.p50s,
            ratio(one_thread_peergroup.p50 as f64, one_thread_quinn.p50 as f64),
        )],
    });
    Ok(())
}

/// Raw UDP ping-pong on loopback.
async fn udp_rtt(pings: usize) -> Result<Latencies, String> {
    let io = |e: std::io::Error| e.to_string();
    let echo = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .map_err(io)?;
    let echo_addr = echo.local_addr().map_err(io)?;
    let echo_task = tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((len, from)) = echo.recv_from(&mut buf).await {
            if echo.send_to(&buf[..len], from).await.is_err() {
                return;
            }
        }
    });
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .map_err(io)?;
    socket.connect(echo_addr).await.map_err(io)?;
    let mut rtt = Latencies::default();
    let payload = [7u8; PAYLOAD];
    let mut buf = [0u8; 2048];
    for _ in 0..pings {
        let sent = Instant::now();
        socket.send(&payload).await.map_err(io)?;
        tokio::time::timeout(Duration::from_secs(1), socket.recv(&mut buf))
            .await
            .map_err(|_| "a UDP ping was lost on loopback".to_string())?
            .map_err(io)?;
        rtt.record(sent.elapsed());
    }
    echo_task.abort();
    Ok(rtt)
}

/// A bare quinn server and client on loopback, with a self-signed certificate.
fn quinn_pair() -> Result<(quinn::Endpoint, quinn::Endpoint, std::net::SocketAddr), String> {
    let certified =
        rcgen::generate_simple_self_signed(vec!["bench".into()]).map_err(|e| e.to_string())?;
    let cert = certified.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server_tls = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .map_err(|e| e.to_string())?;
    let server_config = quinn::ServerConfig::with_crypto(Arc::new(
        quinn::crypto::rustls::QuicServerConfig::try_from(server_tls).map_err(|e| e.to_string())?,
    ));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).map_err(|e| e.to_string())?;
    let client_tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let client_config = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(client_tls).map_err(|e| e.to_string())?,
    ));
    let server = quinn::Endpoint::server(server_config, "127.0.0.1:0".parse().expect("addr"))
        .map_err(|e| e.to_string())?;
    let addr = server.local_addr().map_err(|e| e.to_string())?;
    let mut client =
        quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).map_err(|e| e.to_string())?;
    client.set_default_client_config(client_config);
    Ok((server, client, addr))
}

/// Ping-pong and a streaming window on one bare quinn stream.
async fn quinn_rtt(pings: usize, window: Duration) -> Result<(Latencies, f64), String> {
    let (server, client, addr) = quinn_pair()?;
    let echo = tokio::spawn(async move {
        let connection = server.accept().await?.await.ok()?;
        let (mut send, mut recv) = connection.accept_bi().await.ok()?;
        let mut frame = [0u8; 4 + PAYLOAD];
        let mut count = 0u64;
        // Echo the ping phase, then count the streaming phase.
        while recv.read_exact(&mut frame).await.is_ok() {
            if frame[4] == 1 {
                send.write_all(&frame).await.ok()?;
            } else {
                count += 1;
            }
        }
        Some(count)
    });
    let connection = client
        .connect(addr, "bench")
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, mut recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
    let mut frame = [0u8; 4 + PAYLOAD];
    frame[..4].copy_from_slice(&(PAYLOAD as u32).to_be_bytes());
    frame[4] = 1;
    let mut rtt = Latencies::default();
    let mut reply = [0u8; 4 + PAYLOAD];
    for _ in 0..pings {
        let sent = Instant::now();
        send.write_all(&frame).await.map_err(|e| e.to_string())?;
        recv.read_exact(&mut reply)
            .await
            .map_err(|e| e.to_string())?;
        rtt.record(sent.elapsed());
    }
    frame[4] = 2;
    let started = Instant::now();
    let mut sent = 0u64;
    while started.elapsed() < window {
        send.write_all(&frame).await.map_err(|e| e.to_string())?;
        sent += 1;
    }
    send.finish().map_err(|e| e.to_string())?;
    let received = tokio::time::timeout(Duration::from_secs(10), echo)
        .await
        .map_err(|_| "the quinn receiver did not finish".to_string())?
        .map_err(|e| e.to_string())?
        .ok_or("the quinn receiver failed")?;
    let elapsed = started.elapsed().as_secs_f64();
    connection.close(0u32.into(), b"done");
    let _ = sent;
    Ok((rtt, received as f64 / elapsed))
}

/// One frame of the ping-pong with hand-overs.
type Frame = [u8; 4 + PAYLOAD];

/// The ping-pong of [`quinn_rtt`] with the task structure of peergroup's direct path and
/// nothing else: on each side the application hands a frame to a writer task (a channel)
/// that writes it to the stream, and a reader task reads frames and hands them to the
/// application (a second channel). It tells how much of the direct path's RTT over bare
/// quinn's is that task structure rather than peergroup's own work.
async fn quinn_rtt_with_handovers(pings: usize) -> Result<Latencies, String> {
    use tokio::sync::mpsc;
    /// Spawns the writer and the reader task of one side; returns its two channel ends.
    fn split(
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) -> (mpsc::UnboundedSender<Frame>, mpsc::UnboundedReceiver<Frame>) {
        let (to_writer, mut writer_input) = mpsc::unbounded_channel::<Frame>();
        let (reader_output, from_reader) = mpsc::unbounded_channel::<Frame>();
        tokio::spawn(async move {
            while let Some(frame) = writer_input.recv().await {
                if send.write_all(&frame).await.is_err() {
                    return;
                }
            }
        });
        tokio::spawn(async move {
            let mut frame = [0u8; 4 + PAYLOAD];
            while recv.read_exact(&mut frame).await.is_ok() {
                if reader_output.send(frame).is_err() {
                    return;
                }
            }
        });
        (to_writer, from_reader)
    }
    let (server, client, addr) = quinn_pair()?;
    let echo = tokio::spawn(async move {
        let connection = server.accept().await?.await.ok()?;
        let (send, recv) = connection.accept_bi().await.ok()?;
        let (to_writer, mut from_reader) = split(send, recv);
        while let Some(frame) = from_reader.recv().await {
            to_writer.send(frame).ok()?;
        }
        Some(())
    });
    let connection = client
        .connect(addr, "bench")
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    let (send, recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
    let (to_writer, mut from_reader) = split(send, recv);
    let mut frame = [0u8; 4 + PAYLOAD];
    frame[..4].copy_from_slice(&(PAYLOAD as u32).to_be_bytes());
    let mut rtt = Latencies::default();
    for _ in 0..pings {
        let sent = Instant::now();
        to_writer.send(frame).map_err(|e| e.to_string())?;
        from_reader
            .recv()
            .await
            .ok_or("the quinn echo with hand-overs ended")?;
        rtt.record(sent.elapsed());
    }
    connection.close(0u32.into(), b"done");
    echo.abort();
    Ok(rtt)
}

/// Ping-pong and a streaming window between two peergroup clients on their direct path.
fn peergroup_direct(
    runtime: &tokio::runtime::Runtime,
    pings: usize,
    window: Duration,
) -> Result<(Latencies, f64), String> {
    let server = setup::server(|_| {})?;
    runtime.block_on(async {
        let (a, mut a_events, a_id) = setup::client(&server.server, "a").await?;
        let (b, mut b_events, b_id) = setup::client(&server.server, "b").await?;
        server
            .server
            .create_group(&[a_id, b_id], GroupOptions::default(), "")
            .map_err(|e| e.to_string())?;
        let limit = Duration::from_secs(10);
        let direct = |e: &ClientEvent| {
            matches!(
                e,
                ClientEvent::PathChanged {
                    path: PairPath::Direct,
                    ..
                }
            )
            .then_some(())
        };
        wait_for(&mut a_events, limit, direct).await?;
        wait_for(&mut b_events, limit, direct).await?;

        // B echoes every message back to A.
        let echo = {
            let b = b.clone();
            tokio::spawn(async move {
                let mut count = 0u64;
                while let Some(event) = b_events.next().await {
                    if let ClientEvent::Message { payload, path, .. } = event {
                        if path != MessagePath::Direct {
                            return Err("a message took the relay".to_string());
                        }
                        if payload[0] == 1 {
                            b.send(Target::Host(a_id), payload, Delivery::ReliableOrdered)
                                .await
                                .map_err(|e| e.to_string())?;
                        } else if payload[0] == 3 {
                            return Ok(count);
                        } else {
                            count += 1;
                        }
                    }
                }
                Err("B's events ended".to_string())
            })
        };
        let ping = Bytes::from({
            let mut p = vec![0u8; PAYLOAD];
            p[0] = 1;
            p
        });
        let mut rtt = Latencies::default();
        for _ in 0..pings {
            let sent = Instant::now();
            a.send(Target::Host(b_id), ping.clone(), Delivery::ReliableOrdered)
                .await
                .map_err(|e| format!("ping: {e}"))?;
            wait_for(&mut a_events, limit, |e| {
                matches!(e, ClientEvent::Message { .. }).then_some(())
            })
            .await?;
            rtt.record(sent.elapsed());
        }
        let data = Bytes::from({
            let mut p = vec![0u8; PAYLOAD];
            p[0] = 2;
            p
        });
        let started = Instant::now();
        while started.elapsed() < window {
            a.send(Target::Host(b_id), data.clone(), Delivery::ReliableOrdered)
                .await
                .map_err(|e| format!("stream: {e}"))?;
        }
        let mut end = vec![0u8; PAYLOAD];
        end[0] = 3;
        a.send(Target::Host(b_id), end, Delivery::ReliableOrdered)
            .await
            .map_err(|e| e.to_string())?;
        let received = tokio::time::timeout(Duration::from_secs(30), echo)
            .await
            .map_err(|_| "the peergroup receiver did not finish".to_string())?
            .map_err(|e| e.to_string())??;
        let rate = received as f64 / started.elapsed().as_secs_f64();
        let relayed = server
            .server
            .pair_stats(a_id, b_id)
            .map_or(0, |stats| stats.relayed);
        if relayed > 0 {
            return Err(format!("{relayed} messages took the relay"));
        }
        a.close().await;
        b.close().await;
        Ok((rtt, rate))
    })
}
