//! Relay throughput and latency: peergroup-server against a bare quinn forwarder (the QUIC
//! ceiling, `forwarder.rs`) and coturn (the standard TURN relay, `turn.rs`).
//!
//! One sender and eight receivers per relay, all set up once and kept for the section:
//! - peergroup: the library [`Server`] on a runtime of its own (two worker threads), nine
//!   [`Client`]s in one relay-only group (`direct_p2p: false`); 1 to 1 is
//!   `Target::Host`, 1 to 8 is `Target::Group` (one upload, fanned out by the server);
//! - peergroup_websocket: the same, every client on the WebSocket-over-TLS fallback
//!   (`TransportChoice::WebSocketOnly`) instead of QUIC: what a player without UDP gets;
//! - the forwarder: on a runtime of its own too, same thread count, same fan-out;
//! - coturn: its own process; nine allocations with channels bound both ways. TURN has no
//!   fan-out, so 1 to 8 is eight ChannelData messages per message, and it is UDP only.
//!
//! The clients of every relay share one other runtime (two worker threads). Every payload
//! starts with the time it was sent (microseconds since a base `Instant` of this
//! process, `u64` little-endian) and the run's id (`u32`); receivers take the one-way
//! latency from it.
//!
//! Two measurements per case and relay:
//! - throughput: the sender sends as fast as the API lets it (`send().await`
//!   back-pressure; unreliable sends never wait) for a warm-up and a window; deliveries
//!   arriving within the window, summed over receivers, per second;
//! - latency: the sender paces a fixed load, the same for every relay of a case
//!   (5,000 messages per second, or a quarter of the slowest relay's maximum if lower),
//!   and receivers record one-way latency within the window.
//!
//! `PEERGROUP_BENCH_RELAYS=peergroup` (comma-separated relay names) measures only those
//! relays, for profiling one of them alone; `PEERGROUP_BENCH_RELAY_CASES=1to8_64b_unreliable`
//! (comma-separated keys, as in `results.json`) runs only those cases.

use crate::cpu::{threads_cpu_ns, ProcessUsage};
use crate::forwarder::{Forwarder, FwdClient};
use crate::report::{self, Report, Table};
use crate::stats::{median, Latencies};
use crate::turn::{Coturn, TurnClient};
use crate::Mode;
use peergroup_client::{
    Client, ClientConfig, ClientEvent, ClientEvents, Delivery, GroupId, HostId, ServerTrust,
    Target, TransportChoice,
};
use peergroup_server::{GroupOptions, Identity, Server, ServerConfig};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

/// The relays, as named in `results.json`.
const RELAYS: [&str; 4] = [
    "peergroup",
    "peergroup_websocket",
    "quinn_forwarder",
    "coturn",
];
/// Receivers per relay (the group of 8).
const RECEIVERS: usize = 8;
/// The latency load per sender, messages per second, unless a relay cannot take four
/// times that.
const LATENCY_LOAD: f64 = 5_000.0;
/// Set-up steps and waits give up after this.
const WAIT: Duration = Duration::from_secs(10);
/// Payload header: send time (8 bytes) and run id (4 bytes).
const HEADER: usize = 12;
/// Flooding senders yield to the scheduler after this many messages.
const FLOOD_BATCH: usize = 16;
/// Latency runs per case and relay, interleaved across relays; the run with the median
/// p99 is reported. The p99 of one 1.2 s run of the same code at 5,000 messages a second
/// moved between 359 µs and 4.9 ms (peergroup, 1→1 reliable).
const LATENCY_ROUNDS: usize = 3;
/// The relay runtime's thread name: its CPU time is the relay's (coturn runs in a
/// process of its own and is not measured this way).
const SERVER_THREADS: &str = "relay-server";
/// The clients' runtime thread name: its CPU time is the sender's, the receivers' and
/// the probes'.
const CLIENT_THREADS: &str = "relay-clients";
/// Throughput runs per case and relay, interleaved across relays; a cell reports the
/// median. Single 0.8 s runs of the same code moved by up to 1.7x (peergroup, 1→1
/// reliable: 344k to 586k) and the forwarder's by up to 1.5x, so one run's ratio said
/// little.
const THROUGHPUT_ROUNDS: usize = 3;

/// The process-wide base of send stamps.
fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

/// One case: fan-out, payload size, delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Case {
    fanout: usize,
    size: usize,
    reliable: bool,
}

impl Case {
    /// The key in `results.json`, e.g. `1to8_64b_unreliable`.
    fn key(self) -> String {
        format!(
            "1to{}_{}_{}",
            self.fanout,
            if self.size >= 1024 {
                format!("{}kib", self.size / 1024)
            } else {
                format!("{}b", self.size)
            },
            if self.reliable {
                "reliable"
            } else {
                "unreliable"
            }
        )
    }

    /// The label in tables, e.g. `1→8, 64 B, unreliable`.
    fn label(self) -> String {
        format!(
            "1→{}, {}, {}",
            self.fanout,
            if self.size >= 1024 {
                format!("{} KiB", self.size / 1024)
            } else {
                format!("{} B", self.size)
            },
            if self.reliable {
                "reliable"
            } else {
                "unreliable"
            }
        )
    }
}

fn cases(mode: Mode) -> Vec<Case> {
    let case = |fanout, size, reliable| Case {
        fanout,
        size,
        reliable,
    };
    match mode {
        Mode::Quick => vec![
            case(1, 64, false),
            case(1, 64, true),
            case(RECEIVERS, 64, false),
            case(RECEIVERS, 64, true),
            case(1, 1024, true),
        ],
        Mode::Full => {
            let mut all = Vec::new();
            for fanout in [1, RECEIVERS] {
                for size in [64, 1024] {
                    for reliable in [false, true] {
                        all.push(case(fanout, size, reliable));
                    }
                }
            }
            all
        }
    }
}

/// Measurement windows.
#[derive(Debug, Clone, Copy)]
struct Timing {
    /// Sending before a window opens.
    warmup: Duration,
    /// The throughput window.
    throughput: Duration,
    /// The latency window.
    latency: Duration,
}

impl Timing {
    fn of(mode: Mode) -> Self {
        Self {
            warmup: mode.pick(Duration::from_millis(250), Duration::from_millis(500)),
            throughput: mode.pick(Duration::from_millis(800), Duration::from_secs(3)),
            latency: mode.pick(Duration::from_millis(1200), Duration::from_secs(5)),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Receivers

/// What one receiver counts during a run.
#[derive(Debug)]
struct ProbeState {
    /// The run being counted; messages of other runs are ignored.
    run: u32,
    /// The window (arrival times) in which deliveries are counted.
    window: Option<(Instant, Instant)>,
    /// Record latencies (the paced runs) or only count.
    record: bool,
    in_window: u64,
    total: u64,
    last: Option<Instant>,
    latencies: Latencies,
    /// Set when the receiver's connection ended.
    failed: Option<String>,
}

/// One receiver's counters, shared with its receive task.
#[derive(Debug)]
struct Probe(Mutex<ProbeState>);

impl Probe {
    fn new() -> Self {
        Self(Mutex::new(ProbeState {
            run: 0,
            window: None,
            record: false,
            in_window: 0,
            total: 0,
            last: None,
            latencies: Latencies::default(),
            failed: None,
        }))
    }

    fn lock(&self) -> MutexGuard<'_, ProbeState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts counting run `run`.
    fn arm(&self, run: u32, window: (Instant, Instant), record: bool) {
        let mut state = self.lock();
        state.run = run;
        state.window = Some(window);
        state.record = record;
        state.in_window = 0;
        state.total = 0;
        state.last = None;
        state.latencies = Latencies::default();
    }

    /// Stops counting and hands over what was counted.
    fn disarm(&self) -> ProbeState {
        let mut state = self.lock();
        let taken = ProbeState {
            run: state.run,
            window: state.window.take(),
            record: state.record,
            in_window: state.in_window,
            total: state.total,
            last: state.last,
            latencies: std::mem::take(&mut state.latencies),
            failed: state.failed.clone(),
        };
        state.run = 0;
        taken
    }

    fn on_message(&self, payload: &[u8]) {
        let now = Instant::now();
        if payload.len() < HEADER {
            return;
        }
        let mut stamp = [0u8; 8];
        stamp.copy_from_slice(&payload[..8]);
        let mut run = [0u8; 4];
        run.copy_from_slice(&payload[8..HEADER]);
        let run = u32::from_le_bytes(run);
        let mut state = self.lock();
        if run != state.run || run == 0 {
            return;
        }
        state.total += 1;
        state.last = Some(now);
        if let Some((from, until)) = state.window {
            if now >= from && now < until {
                state.in_window += 1;
                if state.record {
                    let sent = base() + Duration::from_micros(u64::from_le_bytes(stamp));
                    state.latencies.record(now.saturating_duration_since(sent));
                }
            }
        }
    }

    fn fail(&self, why: String) {
        let mut state = self.lock();
        if state.failed.is_none() {
            state.failed = Some(why);
        }
    }

    fn failed(&self) -> Option<String> {
        self.lock().failed.clone()
    }

    fn counts(&self) -> (u64, Option<Instant>) {
        let state = self.lock();
        (state.total, state.last)
    }
}

/// A payload of `size` bytes stamped now, for run `run`.
fn payload(size: usize, run: u32) -> Vec<u8> {
    let mut payload = vec![0u8; size.max(HEADER)];
    let micros = base().elapsed().as_micros() as u64;
    payload[..8].copy_from_slice(&micros.to_le_bytes());
    payload[8..HEADER].copy_from_slice(&run.to_le_bytes());
    payload
}

// ---------------------------------------------------------------------------------------
// Senders and set-ups

/// The sending side of one relay.
#[derive(Clone)]
enum Sender {
    Peergroup {
        client: Client,
        first: HostId,
        group: GroupId,
    },
    Forwarder {
        client: FwdClient,
        dests: Arc<[u32]>,
    },
    Coturn {
        client: Arc<TurnClient>,
        channels: Arc<[u16]>,
    },
}

impl Sender {
    /// Sends one message of `case` to its receivers.
    async fn send(&self, case: Case, payload: Vec<u8>) -> Result<(), String> {
        match self {
            Sender::Peergroup {
                client,
                first,
                group,
            } => {
                let target = if case.fanout == 1 {
                    Target::Host(*first)
                } else {
                    Target::Group(*group)
                };
                let delivery = if case.reliable {
                    Delivery::ReliableOrdered
                } else {
                    Delivery::Unreliable
                };
                client
                    .send(target, payload, delivery)
                    .await
                    .map_err(|e| e.to_string())
            }
            Sender::Forwarder { client, dests } => {
                let dests = &dests[..case.fanout];
                if case.reliable {
                    client.send_reliable(dests, &payload).await
                } else {
                    client.send_unreliable(dests, &payload)
                }
            }
            Sender::Coturn { client, channels } => {
                for channel in &channels[..case.fanout] {
                    client
                        .send(*channel, &payload)
                        .await
                        .map_err(|e| e.to_string())?;
                }
                Ok(())
            }
        }
    }
}

/// One relay, set up with its sender and receivers.
struct Setup {
    relay: &'static str,
    sender: Sender,
    probes: Vec<Arc<Probe>>,
    tasks: Vec<JoinHandle<()>>,
    /// Handles that keep the relay and its clients up until the set-up is dropped.
    keep: Vec<Box<dyn std::any::Any + Send>>,
}

impl Setup {
    fn supports(&self, case: Case) -> bool {
        !(self.relay == "coturn" && case.reliable)
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        if let Sender::Forwarder { client, .. } = &self.sender {
            client.close();
        }
        self.keep.clear();
    }
}

async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> Result<T, String> {
    tokio::time::timeout(WAIT, future)
        .await
        .map_err(|_| format!("timed out: {what}"))
}

/// Connects a peergroup client over `transport` and waits for `Connected`.
async fn peergroup_client(
    server: &Server,
    n: usize,
    transport: TransportChoice,
) -> Result<(Client, ClientEvents), String> {
    let mut config = ClientConfig::new(
        server.local_addr(),
        ServerTrust::Fingerprint(server.fingerprint()),
    );
    config.login = format!("bench-{n}").into();
    config.transport = transport;
    let (client, mut events) = within("peergroup connect", Client::connect(config))
        .await?
        .map_err(|e| format!("peergroup connect: {e}"))?;
    within("peergroup Connected", async {
        loop {
            match events.next().await {
                Some(ClientEvent::Connected { .. }) => return Ok(()),
                Some(_) => {}
                None => return Err("peergroup client: event stream ended".to_string()),
            }
        }
    })
    .await??;
    Ok((client, events))
}

/// peergroup: a server on `server_rt`, nine clients in one relay-only group, all over
/// `transport`; `relay` names the set-up in the results.
async fn setup_peergroup(
    server_rt: &Handle,
    relay: &'static str,
    transport: TransportChoice,
) -> Result<Setup, String> {
    let identity = Identity::generate(&["peergroup"]).map_err(|e| e.to_string())?;
    let mut config = ServerConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)), identity);
    // The section measures the relay's ceiling, not the per-client datagram rate limit
    // (16,384 deliveries a second by default), which one sender here passes many times.
    config.limits.datagram_deliveries_per_sec = u32::MAX;
    let (server, mut server_events) = server_rt
        .spawn(async move { Server::start(config).await })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("peergroup server: {e}"))?;
    let mut tasks =
        vec![server_rt.spawn(async move { while server_events.next().await.is_some() {} })];

    let mut clients = Vec::new();
    for n in 0..=RECEIVERS {
        clients.push(peergroup_client(&server, n, transport).await?);
    }
    let ids: Vec<HostId> = clients.iter().map(|(c, _)| c.host_id()).collect();
    let options = GroupOptions {
        direct_p2p: false,
        ..Default::default()
    };
    let group = server
        .create_group(&ids, options, "")
        .map_err(|e| format!("create_group: {e}"))?;
    // Everyone must know every member before the sender's group sends reach them all.
    for (_, events) in &mut clients {
        let mut joined = 0;
        within("group join notices", async {
            while joined < ids.len() {
                match events.next().await {
                    Some(ClientEvent::MemberJoined { group: g, .. }) if g == group => joined += 1,
                    Some(_) => {}
                    None => return Err("peergroup client: event stream ended".to_string()),
                }
            }
            Ok(())
        })
        .await??;
    }

    let mut probes = Vec::new();
    let mut keep: Vec<Box<dyn std::any::Any + Send>> = vec![Box::new(server)];
    let mut sender = None;
    for (n, (client, mut events)) in clients.into_iter().enumerate() {
        if n == 0 {
            // The sender hears nothing but lifecycle events; keep its queue drained.
            tasks.push(tokio::spawn(async move {
                while events.next().await.is_some() {}
            }));
            sender = Some(client);
            continue;
        }
        let probe = Arc::new(Probe::new());
        probes.push(probe.clone());
        tasks.push(tokio::spawn(async move {
            while let Some(event) = events.next().await {
                match event {
                    ClientEvent::Message { payload, .. } => probe.on_message(&payload),
                    ClientEvent::Disconnected { reason } => {
                        probe.fail(format!("peergroup receiver disconnected: {reason}"));
                        return;
                    }
                    _ => {}
                }
            }
        }));
        keep.push(Box::new(client));
    }
    let client = sender.ok_or("no sender")?;
    Ok(Setup {
        relay,
        sender: Sender::Peergroup {
            client,
            first: ids[1],
            group,
        },
        probes,
        tasks,
        keep,
    })
}

/// The quinn forwarder on `server_rt` and nine clients.
async fn setup_forwarder(server_rt: &Handle) -> Result<Setup, String> {
    let forwarder = server_rt
        .spawn(async { Forwarder::start() })
        .await
        .map_err(|e| e.to_string())??;
    let addr = forwarder.addr();
    let certificate = forwarder.certificate();
    let (sender, sender_stream) = FwdClient::connect(addr, certificate.clone()).await?;
    let mut keep: Vec<Box<dyn std::any::Any + Send>> =
        vec![Box::new(forwarder), Box::new(sender_stream)];
    let mut probes = Vec::new();
    let mut tasks = Vec::new();
    let mut dests = Vec::new();
    for _ in 0..RECEIVERS {
        let (client, mut stream) = FwdClient::connect(addr, certificate.clone()).await?;
        dests.push(client.id());
        let probe = Arc::new(Probe::new());
        probes.push(probe.clone());
        let stream_probe = probe.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                match stream.next().await {
                    Ok(Some(payload)) => stream_probe.on_message(&payload),
                    Ok(None) => return stream_probe.fail("forwarder stream ended".into()),
                    Err(e) => return stream_probe.fail(format!("forwarder stream: {e}")),
                }
            }
        }));
        let datagrams = client.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                match datagrams.read_datagram().await {
                    Ok(payload) => probe.on_message(&payload),
                    Err(e) => return probe.fail(format!("forwarder datagrams: {e}")),
                }
            }
        }));
        keep.push(Box::new(client));
    }
    Ok(Setup {
        relay: "quinn_forwarder",
        sender: Sender::Forwarder {
            client: sender,
            dests: dests.into(),
        },
        probes,
        tasks,
        keep,
    })
}

/// Nine TURN allocations on coturn, channels bound from the sender to each receiver and
/// back (the back channel grants the permission a receiver needs).
async fn setup_coturn(server: SocketAddr) -> Result<Setup, String> {
    let sender = Arc::new(within("TURN allocate", TurnClient::allocate(server)).await??);
    let mut probes = Vec::new();
    let mut tasks = Vec::new();
    let mut channels = Vec::new();
    for _ in 0..RECEIVERS {
        let receiver = Arc::new(within("TURN allocate", TurnClient::allocate(server)).await??);
        within(
            "TURN channel bind",
            receiver.bind_channel(sender.relayed_addr()),
        )
        .await??;
        channels.push(
            within(
                "TURN channel bind",
                sender.bind_channel(receiver.relayed_addr()),
            )
            .await??,
        );
        let probe = Arc::new(Probe::new());
        probes.push(probe.clone());
        tasks.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut errors = 0u32;
            loop {
                match receiver.recv(&mut buf).await {
                    Ok(n) => probe.on_message(&buf[..n.min(buf.len())]),
                    // UDP reports stray ICMP errors on later calls: tolerate a few.
                    Err(e) => {
                        errors += 1;
                        if errors > 1000 {
                            return probe.fail(format!("TURN receive: {e}"));
                        }
                    }
                }
            }
        }));
    }
    Ok(Setup {
        relay: "coturn",
        sender: Sender::Coturn {
            client: sender,
            channels: channels.into(),
        },
        probes,
        tasks,
        keep: Vec::new(),
    })
}

// ---------------------------------------------------------------------------------------
// Runs

/// What one run measured.
struct Outcome {
    /// Deliveries within the window per second, summed over receivers.
    rate: f64,
    /// Messages sent (each to `fanout` receivers).
    sent: u64,
    /// Deliveries of the run, counted until the drain ended.
    delivered: u64,
    /// CPU time of the relay's threads (the `relay-server` runtime) over the run, ns;
    /// the clients' threads are not counted.
    server_cpu_ns: u64,
    /// CPU time of the clients' threads (the `relay-clients` runtime: the sender, the
    /// receivers and this benchmark's probes) over the run, ns.
    client_cpu_ns: u64,
    /// What the whole process used over the run (the relay too, except coturn, which
    /// runs in a process of its own).
    usage: ProcessUsage,
    latencies: Latencies,
    /// Something worth a note (a drain that timed out).
    note: Option<String>,
}

impl Outcome {
    /// The relay's CPU time per delivery, ns (each of a 1→8 upload's eight deliveries
    /// counts); `None` without deliveries.
    fn server_ns_per_delivery(&self) -> Option<f64> {
        self.ns_per_delivery(self.server_cpu_ns)
    }

    /// The clients' CPU time per delivery, ns: the sender's share of a 1→8 upload is
    /// spread over its eight deliveries. `None` without deliveries.
    fn client_ns_per_delivery(&self) -> Option<f64> {
        self.ns_per_delivery(self.client_cpu_ns)
    }

    fn ns_per_delivery(&self, ns: u64) -> Option<f64> {
        (self.delivered > 0).then(|| ns as f64 / self.delivered as f64)
    }

    /// The whole process's CPU time per delivery, µs, and its context switches per
    /// delivery; `None` without deliveries.
    fn usage_per_delivery(&self) -> Option<(f64, f64)> {
        let delivered = self.delivered as f64;
        (self.delivered > 0).then(|| {
            (
                self.usage.cpu_ns as f64 / 1_000.0 / delivered,
                self.usage.switches as f64 / delivered,
            )
        })
    }

    fn loss_pct(&self, fanout: usize) -> f64 {
        let expected = self.sent * fanout as u64;
        if expected == 0 {
            return 0.0;
        }
        100.0 * expected.saturating_sub(self.delivered) as f64 / expected as f64
    }
}

/// Sends as fast as `send` lets it until `until`; returns messages sent.
async fn flood(sender: Sender, case: Case, run: u32, until: Instant) -> Result<u64, String> {
    let mut sent = 0u64;
    loop {
        for _ in 0..FLOOD_BATCH {
            sender.send(case, payload(case.size, run)).await?;
            sent += 1;
        }
        if Instant::now() >= until {
            return Ok(sent);
        }
        // Unreliable sends never wait: let the connection drivers run.
        tokio::task::yield_now().await;
    }
}

/// Sends `rate` messages per second until `until`, catching up each millisecond tick.
async fn paced(
    sender: Sender,
    case: Case,
    run: u32,
    rate: f64,
    until: Instant,
) -> Result<u64, String> {
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut sent = 0u64;
    loop {
        let now = Instant::now();
        if now >= until {
            return Ok(sent);
        }
        let due = ((now - start).as_secs_f64() * rate) as u64 + 1;
        while sent < due {
            sender.send(case, payload(case.size, run)).await?;
            sent += 1;
        }
        tick.tick().await;
    }
}

/// One run of `case` on `setup`: flooding (`rate` `None`) or paced, then a drain.
async fn run_once(
    setup: &Setup,
    case: Case,
    run: u32,
    rate: Option<f64>,
    warmup: Duration,
    window: Duration,
) -> Result<Outcome, String> {
    let probes = &setup.probes[..case.fanout];
    if let Some(failed) = probes.iter().find_map(|p| p.failed()) {
        return Err(failed);
    }
    let server_cpu_before = threads_cpu_ns(SERVER_THREADS);
    let client_cpu_before = threads_cpu_ns(CLIENT_THREADS);
    let usage_before = ProcessUsage::now();
    let start = Instant::now();
    let from = start + warmup;
    let until = from + window;
    for probe in probes {
        probe.arm(run, (from, until), rate.is_some());
    }
    let sender = setup.sender.clone();
    let mut task = tokio::spawn(async move {
        match rate {
            None => flood(sender, case, run, until).await,
            Some(rate) => paced(sender, case, run, rate, until).await,
        }
    });
    let sent = match tokio::time::timeout(warmup + window + WAIT, &mut task).await {
        Ok(Ok(Ok(sent))) => sent,
        Ok(Ok(Err(error))) => return Err(format!("send failed: {error}")),
        Ok(Err(error)) => return Err(format!("sender task: {error}")),
        Err(_) => {
            task.abort();
            return Err("the sender stalled".into());
        }
    };
    let sent_at = Instant::now();

    // Reliable: wait for every message (a backlog may still be queued). Unreliable: wait
    // for a short quiet spell; lost datagrams are not waited for.
    let quiet = Duration::from_millis(150);
    let deadline = sent_at
        + if case.reliable {
            Duration::from_secs(15)
        } else {
            Duration::from_secs(2)
        };
    let mut note = None;
    loop {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let now = Instant::now();
        let counts: Vec<_> = probes.iter().map(|p| p.counts()).collect();
        let done = if case.reliable {
            counts.iter().all(|(total, _)| *total >= sent)
        } else {
            let last = counts
                .iter()
                .filter_map(|(_, last)| *last)
                .max()
                .unwrap_or(sent_at)
                .max(sent_at);
            now.duration_since(last) >= quiet
        };
        if done {
            break;
        }
        if now >= deadline {
            if case.reliable {
                note = Some(format!(
                    "drain timed out after {:.0} s",
                    deadline.duration_since(sent_at).as_secs_f64()
                ));
            }
            break;
        }
        if let Some(failed) = probes.iter().find_map(|p| p.failed()) {
            return Err(failed);
        }
    }
    let mut in_window = 0;
    let mut delivered = 0;
    let mut latencies = Latencies::default();
    for probe in probes {
        let state = probe.disarm();
        if let Some(failed) = state.failed {
            return Err(failed);
        }
        in_window += state.in_window;
        delivered += state.total;
        latencies.merge(&state.latencies);
    }
    Ok(Outcome {
        rate: in_window as f64 / window.as_secs_f64(),
        sent,
        delivered,
        server_cpu_ns: threads_cpu_ns(SERVER_THREADS).saturating_sub(server_cpu_before),
        client_cpu_ns: threads_cpu_ns(CLIENT_THREADS).saturating_sub(client_cpu_before),
        usage: ProcessUsage::now().since(usage_before),
        latencies,
        note,
    })
}

// ---------------------------------------------------------------------------------------
// The section

/// What one relay measured in one case.
#[derive(Default)]
struct Cell {
    /// Every throughput run's figure, deliveries per second, in run order.
    rates: Vec<f64>,
    /// The share of each throughput run's messages (times the fan-out) that never
    /// arrived, %: unreliable sends never wait, so a flood past what the relay carries is
    /// dropped somewhere on the way.
    flood_loss: Vec<f64>,
    /// The relay's CPU time per delivery in each throughput run, ns.
    server_ns: Vec<f64>,
    /// The clients' CPU time per delivery in each throughput run, ns.
    client_ns: Vec<f64>,
    /// The latency runs, in run order.
    latency_runs: Vec<Outcome>,
    errors: Vec<String>,
}

impl Cell {
    /// Throughput, deliveries per second: the median of the runs.
    fn max(&self) -> Option<f64> {
        median(&self.rates)
    }

    /// The latency run reported: the one with the median p99.
    fn latency(&self) -> Option<&Outcome> {
        median_run(&self.latency_runs)
    }
}

struct Measured {
    cases: Vec<Case>,
    /// `[case][relay]`, relays in [`RELAYS`] order.
    cells: Vec<Vec<Cell>>,
    /// Latency load per sender of each case, messages per second.
    loads: Vec<f64>,
    notes: Vec<String>,
}

/// Whether `relay` is measured: every relay, unless `PEERGROUP_BENCH_RELAYS` names some
/// (comma-separated), for profiling one relay alone.
fn wanted(relay: &str) -> bool {
    let only = std::env::var("PEERGROUP_BENCH_RELAYS").unwrap_or_default();
    only.is_empty() || only.split(',').any(|o| o.trim() == relay)
}

/// Sets every relay up; coturn's failure is only noted.
async fn setup_all(
    server_rt: &Handle,
    coturn: &Result<SocketAddr, String>,
    notes: &mut Vec<String>,
) -> Result<Vec<Setup>, String> {
    let mut setups = Vec::new();
    for (relay, transport) in [
        ("peergroup", TransportChoice::QuicOnly),
        ("peergroup_websocket", TransportChoice::WebSocketOnly),
    ] {
        if wanted(relay) {
            setups.push(
                setup_peergroup(server_rt, relay, transport)
                    .await
                    .map_err(|e| format!("{relay} set-up: {e}"))?,
            );
        }
    }
    if wanted("quinn_forwarder") {
        setups.push(
            setup_forwarder(server_rt)
                .await
                .map_err(|e| format!("forwarder set-up: {e}"))?,
        );
    }
    if !wanted("coturn") {
        return Ok(setups);
    }
    match coturn {
        Ok(addr) => match setup_coturn(*addr).await {
            Ok(setup) => setups.push(setup),
            Err(error) => notes.push(format!("coturn not measured: {error}")),
        },
        Err(error) => notes.push(format!("coturn not measured: {error}")),
    }
    Ok(setups)
}

async fn measure(
    mode: Mode,
    server_rt: Handle,
    coturn: Result<SocketAddr, String>,
) -> Result<Measured, String> {
    let timing = Timing::of(mode);
    // PEERGROUP_BENCH_RELAY_CASES: see the module docs.
    let only = std::env::var("PEERGROUP_BENCH_RELAY_CASES").unwrap_or_default();
    let cases: Vec<Case> = cases(mode)
        .into_iter()
        .filter(|case| only.is_empty() || only.split(',').any(|o| o.trim() == case.key()))
        .collect();
    let mut notes = Vec::new();
    let setups = setup_all(&server_rt, &coturn, &mut notes).await?;
    let relay_index = |name: &str| RELAYS.iter().position(|r| *r == name).unwrap_or(0);
    let mut cells: Vec<Vec<Cell>> = cases
        .iter()
        .map(|_| RELAYS.iter().map(|_| Cell::default()).collect())
        .collect();
    let mut run = 0u32;

    for (c, case) in cases.iter().enumerate() {
        // Round after round over the relays, so a slow spell of the machine is shared.
        for setup in (0..THROUGHPUT_ROUNDS)
            .flat_map(|_| setups.iter())
            .filter(|s| s.supports(*case))
        {
            run += 1;
            let cell = &mut cells[c][relay_index(setup.relay)];
            match run_once(setup, *case, run, None, timing.warmup, timing.throughput).await {
                Ok(outcome) => {
                    eprintln!(
                        "   {} {}: {} msgs/s (loss {:.1}%, clients' CPU {:.0} ns per delivery){}",
                        case.key(),
                        setup.relay,
                        report::rate(outcome.rate),
                        outcome.loss_pct(case.fanout),
                        outcome.client_ns_per_delivery().unwrap_or(0.0),
                        outcome
                            .note
                            .as_deref()
                            .map(|n| format!(", {n}"))
                            .unwrap_or_default()
                    );
                    if let Some(note) = &outcome.note {
                        cell.errors.push(format!("throughput: {note}"));
                    }
                    cell.rates.push(outcome.rate);
                    cell.flood_loss.push(outcome.loss_pct(case.fanout));
                    cell.client_ns.extend(outcome.client_ns_per_delivery());
                    if setup.relay != "coturn" {
                        cell.server_ns.extend(outcome.server_ns_per_delivery());
                    }
                }
                Err(error) => {
                    eprintln!("   {} {}: {error}", case.key(), setup.relay);
                    cell.errors.push(format!("throughput: {error}"));
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // Fresh connections for the latency runs: nothing left over from the floods
    // (congestion windows cut by losses, queues).
    drop(setups);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut second = Vec::new();
    let setups = setup_all(&server_rt, &coturn, &mut second).await?;
    for note in second {
        if !notes.contains(&note) {
            notes.push(note);
        }
    }
    let mut loads = Vec::new();
    for (c, case) in cases.iter().enumerate() {
        let slowest = cells[c]
            .iter()
            .filter_map(Cell::max)
            .filter(|max| *max > 0.0)
            .map(|max| max / case.fanout as f64)
            .fold(f64::INFINITY, f64::min);
        let load = LATENCY_LOAD.min(slowest / 4.0).max(100.0).round();
        loads.push(load);
        // As the throughput runs: round after round, the run with the median p99 kept.
        for setup in (0..LATENCY_ROUNDS)
            .flat_map(|_| setups.iter())
            .filter(|s| s.supports(*case))
        {
            run += 1;
            let cell = &mut cells[c][relay_index(setup.relay)];
            match run_once(setup, *case, run, Some(load), timing.warmup, timing.latency).await {
                Ok(outcome) => {
                    eprintln!(
                        "   {} {} at {load}/s: p50 {} p99 {} p99.9 {} µs (loss {:.2}%)",
                        case.key(),
                        setup.relay,
                        outcome.latencies.percentile_us(50.0),
                        outcome.latencies.percentile_us(99.0),
                        outcome.latencies.percentile_us(99.9),
                        outcome.loss_pct(case.fanout),
                    );
                    if let Some(note) = &outcome.note {
                        cell.errors.push(format!("latency: {note}"));
                    }
                    cell.latency_runs.push(outcome);
                }
                Err(error) => {
                    eprintln!("   {} {} latency: {error}", case.key(), setup.relay);
                    cell.errors.push(format!("latency: {error}"));
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    drop(setups);
    // Let the closes go out before the runtimes stop.
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(Measured {
        cases,
        cells,
        loads,
        notes,
    })
}

fn runtime(name: &str) -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(name)
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))
}

/// Runs the section.
pub fn run(mode: Mode, report: &mut Report, out: &Path) -> Result<(), String> {
    let _ = base();
    let server_rt = runtime(SERVER_THREADS)?;
    let client_rt = runtime(CLIENT_THREADS)?;
    // Not started when left out: its process would share the cores being measured.
    let coturn = if wanted("coturn") {
        Coturn::start()
    } else {
        Err("left out (PEERGROUP_BENCH_RELAYS)".to_string())
    };
    let coturn_addr = coturn.as_ref().map(Coturn::addr).map_err(Clone::clone);
    let measured = client_rt.block_on(measure(mode, server_rt.handle().clone(), coturn_addr));
    drop(coturn);
    client_rt.shutdown_timeout(Duration::from_secs(2));
    server_rt.shutdown_timeout(Duration::from_secs(2));
    let measured = measured?;
    record(&measured, mode, report);
    let path = out.join("relay_latency.svg");
    let unreliable = measured.cases.iter().position(|c| {
        *c == Case {
            fanout: 1,
            size: 64,
            reliable: false,
        }
    });
    if let Some(c) = unreliable {
        let series: Vec<(&str, &Latencies)> = RELAYS
            .iter()
            .zip(&measured.cells[c])
            .filter_map(|(relay, cell)| {
                let latencies = &cell.latency()?.latencies;
                (!latencies.is_empty()).then_some((*relay, latencies))
            })
            .collect();
        std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
        plot(&path, &series, measured.loads[c]).map_err(|e| format!("plot: {e}"))?;
        report.plot(path);
    }
    Ok(())
}

/// The run with the median p99 (the lower middle one of an even count), so a row's
/// percentiles, load and loss all come from one run; `None` without runs.
fn median_run(runs: &[Outcome]) -> Option<&Outcome> {
    let mut sorted: Vec<&Outcome> = runs.iter().collect();
    sorted.sort_by_key(|run| run.latencies.percentile_us(99.0));
    let middle = sorted.len().checked_sub(1)? / 2;
    Some(sorted[middle])
}

/// `min–max` of the runs behind a median, for the table.
fn spread(rates: &[f64]) -> String {
    if rates.is_empty() {
        return "-".into();
    }
    let min = rates.iter().copied().fold(f64::INFINITY, f64::min);
    let max = rates.iter().copied().fold(0.0, f64::max);
    format!("{}–{}", report::rate(min), report::rate(max))
}

fn us(value: u64) -> String {
    value.to_string()
}

/// Writes keys, the table and the ratios.
fn record(measured: &Measured, mode: Mode, report: &mut Report) {
    let relay = |c: usize, name: &str| -> &Cell {
        &measured.cells[c][RELAYS.iter().position(|r| *r == name).unwrap_or(0)]
    };
    let find = |fanout, size, reliable| {
        measured.cases.iter().position(|c| {
            *c == Case {
                fanout,
                size,
                reliable,
            }
        })
    };
    let number = |v: Option<f64>| v.map_or(Value::Null, |v| Value::from((v * 10.0).round() / 10.0));
    let p99 = |cell: &Cell| {
        cell.latency()
            .filter(|o| !o.latencies.is_empty())
            .map(|o| o.latencies.percentile_us(99.0) as f64)
    };

    // The stable keys.
    let unreliable = find(1, 64, false);
    let reliable = find(1, 64, true);
    for name in RELAYS {
        let cell = unreliable.map(|c| relay(c, name));
        report.set(
            &format!("relay.{name}.msgs_per_sec"),
            number(cell.and_then(Cell::max)),
        );
        report.set(&format!("relay.{name}.p99_us"), number(cell.and_then(p99)));
        if name != "coturn" {
            let cell = reliable.map(|c| relay(c, name));
            report.set(
                &format!("relay.{name}.reliable_msgs_per_sec"),
                number(cell.and_then(Cell::max)),
            );
        }
    }

    // The worst case against the forwarder, over every case measured: the target
    // is that every relay case reaches 0.9.
    let ratios: Vec<(f64, String)> = (0..measured.cases.len())
        .filter_map(|c| {
            let pg = relay(c, "peergroup").max()?;
            let fwd = relay(c, "quinn_forwarder").max().filter(|f| *f > 0.0)?;
            Some((pg / fwd, measured.cases[c].key()))
        })
        .collect();
    if let Some((worst, key)) = ratios.iter().min_by(|a, b| a.0.total_cmp(&b.0)) {
        report.set("relay.min_ratio_vs_quinn", (worst * 100.0).round() / 100.0);
        report.set("relay.min_ratio_case", key.as_str());
    }
    // The relay's own CPU per delivery against the forwarder's, the worst case: what a
    // deployment's server pays, without the clients that share this machine.
    let cpu_ratios: Vec<(f64, String)> = (0..measured.cases.len())
        .filter_map(|c| {
            let pg = median(&relay(c, "peergroup").server_ns)?;
            let fwd = median(&relay(c, "quinn_forwarder").server_ns).filter(|f| *f > 0.0)?;
            Some((pg / fwd, measured.cases[c].key()))
        })
        .collect();
    if let Some((worst, key)) = cpu_ratios.iter().max_by(|a, b| a.0.total_cmp(&b.0)) {
        report.set(
            "relay.max_server_cpu_ratio_vs_quinn",
            (worst * 100.0).round() / 100.0,
        );
        report.set("relay.max_server_cpu_ratio_case", key.as_str());
    }

    // The breakdown and the tables.
    let mut rows = Vec::new();
    let mut ratio_rows = Vec::new();
    let mut notes = Vec::new();
    for (c, case) in measured.cases.iter().enumerate() {
        let key = case.key();
        for name in RELAYS {
            if name == "coturn" && case.reliable {
                continue;
            }
            let cell = relay(c, name);
            let prefix = format!("relay.cases.{key}.{name}");
            report.set(&format!("{prefix}.msgs_per_sec"), number(cell.max()));
            report.set(
                &format!("{prefix}.flood_loss_pct"),
                number(median(&cell.flood_loss)),
            );
            report.set(
                &format!("{prefix}.server_cpu_ns_per_delivery"),
                number(median(&cell.server_ns)),
            );
            report.set(
                &format!("{prefix}.client_cpu_ns_per_delivery"),
                number(median(&cell.client_ns)),
            );
            report.set(
                &format!("{prefix}.p99_us_runs"),
                Value::from(
                    cell.latency_runs
                        .iter()
                        .map(|run| run.latencies.percentile_us(99.0))
                        .collect::<Vec<_>>(),
                ),
            );
            report.set(
                &format!("{prefix}.msgs_per_sec_runs"),
                Value::from(
                    cell.rates
                        .iter()
                        .map(|r| Value::from(r.round()))
                        .collect::<Vec<_>>(),
                ),
            );
            let latency = cell.latency().filter(|o| !o.latencies.is_empty());
            let at = |p: f64| latency.map(|o| o.latencies.percentile_us(p) as f64);
            report.set(&format!("{prefix}.p50_us"), number(at(50.0)));
            report.set(&format!("{prefix}.p99_us"), number(at(99.0)));
            report.set(&format!("{prefix}.p999_us"), number(at(99.9)));
            report.set(
                &format!("{prefix}.latency_load_msgs_per_sec"),
                number(latency.map(|o| o.rate)),
            );
            report.set(
                &format!("{prefix}.latency_loss_pct"),
                number(latency.map(|o| o.loss_pct(case.fanout))),
            );
            // coturn's relaying runs in its own process, which this does not count.
            let usage = latency
                .filter(|_| name != "coturn")
                .and_then(Outcome::usage_per_delivery);
            report.set(
                &format!("{prefix}.load_cpu_us_per_delivery"),
                number(usage.map(|(cpu, _)| cpu)),
            );
            report.set(
                &format!("{prefix}.load_switches_per_delivery"),
                usage.map_or(Value::Null, |(_, switches)| {
                    Value::from(report::round(switches, 2))
                }),
            );
            if !cell.errors.is_empty() {
                report.set(&format!("{prefix}.errors"), cell.errors.join("; "));
                notes.push(format!(
                    "{} {name}: {}",
                    case.label(),
                    cell.errors.join("; ")
                ));
            }
            let dash = || "-".to_string();
            rows.push(vec![
                case.label(),
                name.to_string(),
                cell.max().map_or_else(dash, report::rate),
                spread(&cell.rates),
                median(&cell.flood_loss).map_or_else(dash, |loss| format!("{loss:.1}%")),
                latency.map_or_else(dash, |o| report::rate(o.rate)),
                at(50.0).map_or_else(dash, |v| us(v as u64)),
                at(99.0).map_or_else(dash, |v| us(v as u64)),
                at(99.9).map_or_else(dash, |v| us(v as u64)),
                latency.map_or_else(dash, |o| format!("{:.2}%", o.loss_pct(case.fanout))),
                usage.map_or_else(dash, |(cpu, _)| format!("{cpu:.1}")),
                usage.map_or_else(dash, |(_, switches)| format!("{switches:.2}")),
            ]);
        }
        let pg = relay(c, "peergroup");
        let ws = relay(c, "peergroup_websocket");
        let fwd = relay(c, "quinn_forwarder");
        let turn = relay(c, "coturn");
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => report::ratio(a, b),
            _ => "-".into(),
        };
        ratio_rows.push(vec![
            case.label(),
            ratio(pg.max(), fwd.max()),
            ratio(p99(pg), p99(fwd)),
            ratio(median(&pg.server_ns), median(&fwd.server_ns)),
            ratio(ws.max(), pg.max()),
            if case.reliable {
                "n/a".into()
            } else {
                ratio(pg.max(), turn.max())
            },
            if case.reliable {
                "n/a".into()
            } else {
                ratio(p99(pg), p99(turn))
            },
        ]);
    }
    let loads: Vec<String> = measured
        .cases
        .iter()
        .zip(&measured.loads)
        .map(|(case, load)| format!("{}: {load:.0}/s", case.label()))
        .collect();
    let timing = Timing::of(mode);
    let mut table_notes = vec![
        format!(
            "One sender; receivers in the same process. **max msgs/s**: the sender sends as \
             fast as the API lets it (`send().await` back-pressure; unreliable sends never \
             wait, so excess datagrams are dropped) for {:.2} s of warm-up and a {:.2} s \
             window; deliveries arriving in the window, summed over receivers, per second. \
             The median of {THROUGHPUT_ROUNDS} runs, taken round after round over the relays; \
             **runs** gives the slowest and fastest. **loss at max**: the share of those \
             runs' messages (times the fan-out) that never arrived, the median: a relay \
             whose sender outruns it loses more but fills its packets fuller.",
            timing.warmup.as_secs_f64(),
            timing.throughput.as_secs_f64()
        ),
        format!(
            "**Latency** is measured separately, at a fixed paced load that is the same for \
             every relay of a case ({LATENCY_LOAD:.0} messages/s per sender, or a quarter of \
             the slowest relay's maximum if lower), over a {:.1} s window: one-way, from the \
             send stamp in the payload to the receiver's event, in µs. **load msgs/s** is \
             what was delivered then (summed over receivers); compare throughput at an equal \
             p99 through these rows. Of {LATENCY_ROUNDS} runs, taken round after round over \
             the relays, the row is the one with the median p99 (`p99_us_runs` in the JSON \
             keeps each). Loads per sender: {}. The sender catches up on each \
             millisecond tick, so messages leave in bursts (5 a tick at 5,000/s) and a \
             burst's later messages wait for the relay to carry the earlier ones. **CPU µs \
             per delivery at load** and **switches per delivery at load**: the whole \
             process's CPU time (every thread: relay, sender, receivers, from \
             /proc/self/task/*/schedstat) and context switches over that run, per delivery; \
             at this load a message costs many times its share of a flood, most of it \
             threads going to sleep and being woken (not counted for coturn, whose relaying \
             runs in its own process).",
            timing.latency.as_secs_f64(),
            loads.join(", ")
        ),
        "peergroup: the library server in-process on its own tokio runtime (2 workers), \
         clients on another (2 workers), one relay-only group (`direct_p2p: false`); 1→8 is \
         one `Target::Group` upload fanned out by the server. quinn_forwarder: a bare quinn \
         forwarder (no auth, groups or sequencing; same TLS 1.3/ring set-up and runtimes), \
         one stream per client with length-prefixed frames and QUIC datagrams, same \
         one-upload fan-out: the QUIC ceiling."
            .to_string(),
        "coturn: TURN over UDP on loopback, unreliable only (TURN has no reliable delivery). \
         TURN has no fan-out: for 1→8 the sender sends 8 ChannelData messages per message \
         (all stamped when the first is sent), so its 1→8 figures are 8 uploads, not one."
            .to_string(),
    ];
    table_notes.extend(measured.notes.iter().cloned());
    table_notes.extend(notes);
    report.table(Table {
        title: "Relay throughput and latency".into(),
        columns: [
            "case",
            "relay",
            "max msgs/s",
            "runs",
            "loss at max",
            "load msgs/s",
            "p50 µs",
            "p99 µs",
            "p99.9 µs",
            "loss at load",
            "CPU µs per delivery at load",
            "switches per delivery at load",
        ]
        .map(String::from)
        .to_vec(),
        rows,
        notes: table_notes,
    });
    report.table(Table {
        title: "Relay ratios (same run)".into(),
        columns: [
            "case",
            "msgs/s peergroup / forwarder",
            "p99 peergroup / forwarder",
            "server CPU per delivery peergroup / forwarder",
            "msgs/s WebSocket / QUIC",
            "msgs/s peergroup / coturn",
            "p99 peergroup / coturn",
        ]
        .map(String::from)
        .to_vec(),
        rows: ratio_rows,
        notes: vec![
            "Throughput ratios above 1 favour peergroup; latency and CPU ratios below 1 do. \
             The target is msgs/s at least 0.9 of the forwarder's at an equal p99."
                .into(),
            "Server CPU per delivery: the relay runtime's CPU time over a throughput run \
             (warm-up, window and drain) over the deliveries of that run, median of the \
             runs. Clients and server share the machine's two cores here, so msgs/s counts \
             the clients' work too; this column is the relay's own cost, which is what a \
             deployment's server pays per message."
                .into(),
            "WebSocket / QUIC: peergroup's own two carriers, the fallback for players \
             without UDP against the default (on WebSocket, unreliable messages ride the one \
             TCP stream and are dropped when a backlog is in front of them)."
                .into(),
        ],
    });
}

/// The latency CDF of the 64 B, 1 to 1, unreliable case, one line per relay.
fn plot(path: &Path, series: &[(&str, &Latencies)], load: f64) -> Result<(), String> {
    use plotters::prelude::*;
    let text = |e: &dyn std::fmt::Display| e.to_string();
    let root = SVGBackend::new(path, (860, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| text(&e))?;
    let low = series
        .iter()
        .map(|(_, l)| l.percentile_us(0.0).max(1))
        .min()
        .unwrap_or(1) as f64;
    let high = series
        .iter()
        .map(|(_, l)| l.percentile_us(99.99))
        .max()
        .unwrap_or(1000) as f64;
    let (low, high) = ((low * 0.8).max(1.0), (high * 1.25).max(low * 2.0));
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Relay one-way latency CDF (64 B, 1→1, unreliable, {load:.0} msgs/s)"),
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d((low..high).log_scale(), 0.0f64..1.0f64)
        .map_err(|e| text(&e))?;
    chart
        .configure_mesh()
        .x_desc("one-way latency (µs, log scale)")
        .y_desc("fraction of messages")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(|e| text(&e))?;
    let colors = [
        RGBColor(220, 50, 32),
        RGBColor(230, 159, 0),
        RGBColor(0, 90, 181),
        RGBColor(26, 133, 56),
    ];
    for (i, (name, latencies)) in series.iter().enumerate() {
        let color = colors[i % colors.len()];
        let points: Vec<(f64, f64)> = latencies
            .cdf()
            .into_iter()
            .filter(|(x, _)| *x >= low && *x <= high)
            .collect();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| text(&e))?
            .label(format!(
                "{name} (p50 {} µs, p99 {} µs)",
                latencies.percentile_us(50.0),
                latencies.percentile_us(99.0)
            ))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(|e| text(&e))?;
    root.present().map_err(|e| text(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_with_p99(p99_us: u64) -> Outcome {
        let mut latencies = Latencies::default();
        latencies.record(Duration::from_micros(p99_us));
        Outcome {
            rate: 0.0,
            sent: 0,
            delivered: 0,
            server_cpu_ns: 0,
            client_cpu_ns: 0,
            usage: ProcessUsage::default(),
            latencies,
            note: None,
        }
    }

    #[test]
    fn the_latency_row_is_the_run_with_the_median_p99() {
        assert!(median_run(&[]).is_none());
        let p99 = |runs: Vec<u64>| {
            let runs: Vec<Outcome> = runs.into_iter().map(run_with_p99).collect();
            median_run(&runs).map(|run| run.latencies.percentile_us(99.0))
        };
        assert_eq!(p99(vec![700]), Some(700));
        assert_eq!(p99(vec![2600, 300, 450]), Some(450));
        // Even counts keep the lower middle run.
        assert_eq!(p99(vec![900, 300, 2600, 450]), Some(450));
    }

    #[test]
    fn spread_names_the_slowest_and_fastest_run() {
        assert_eq!(spread(&[]), "-");
        assert_eq!(spread(&[1500.0, 900.0, 1200.0]), "900–1.5k");
    }
}
