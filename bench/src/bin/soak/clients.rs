//! The client population and the run: start the server child, connect everyone, run the
//! traffic, drain, and judge.

use crate::ledger::{self, Lane, Ledger, Totals};
use crate::rng::Rng;
use crate::server::STABLE_SIZE;
use peergroup_client::{
    Client, ClientConfig, ClientEvent, Delivery, Fingerprint, GroupId, HostId, PairPath, SendError,
    SendOptions, ServerTrust, Target,
};
use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Each client forces one of its direct paths back to the relay this often.
const SWITCH_EVERY: Duration = Duration::from_secs(20);
/// How often the server's memory is read.
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// Limit of the set-up phase before the traffic.
const CONNECT_LIMIT: Duration = Duration::from_secs(180);
/// Handshakes under way at once (more overflows the server socket's buffer; see the
/// scale section of the benchmarks).
const CONNECTING: usize = 32;

/// What the population shares.
struct Shared {
    ledger: Ledger,
    clients: usize,
    /// How often each client sends.
    send_every: Duration,
    sending: AtomicBool,
    stop: CancellationToken,
    connected: AtomicU64,
    connect_failures: AtomicU64,
    stable_ready: AtomicU64,
    unexpected_disconnects: AtomicU64,
    /// Connections to the server lost and resumed (the session kept: not a disconnect).
    connection_losses: AtomicU64,
    resumes: AtomicU64,
    send_errors: AtomicU64,
    /// Sends skipped because a queue was full (`SendError::QueueFull`).
    sends_skipped: AtomicU64,
    /// Each client's handle once connected, by index: a failed run reports what the
    /// sender and the receiver of a missing message say about each other.
    handles: std::sync::Mutex<Vec<Option<Client>>>,
    /// Events each client's loop handled, and when it last did (ms since `started`).
    events_handled: Vec<AtomicU64>,
    last_event_ms: Vec<AtomicU64>,
    started: Instant,
    forced_switches: AtomicU64,
    to_relay: AtomicU64,
    to_direct: AtomicU64,
}

/// Knobs of a run besides its size.
pub struct RunOptions {
    /// Each client's ping interval to each peer (`None`: the library's default).
    pub ping_interval: Option<Duration>,
    /// How long the drain after the traffic may take at most.
    pub drain_limit: Duration,
    /// How often each client sends to its stable group (and its churn groups).
    pub send_every: Duration,
}

/// The run's verdict.
pub struct Summary {
    pub json: serde_json::Value,
    pub passed: bool,
}

/// The server child and its output.
struct ServerChild {
    child: Child,
    addr: SocketAddr,
    fingerprint: Fingerprint,
    /// The latest counters line it printed.
    lines: mpsc::UnboundedReceiver<String>,
}

impl ServerChild {
    fn start(clients: usize, churn_per_sec: u32, seed: u64) -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut child = Command::new(exe)
            .args(["--serve", "--clients", &clients.to_string()])
            .args(["--churn-per-sec", &churn_per_sec.to_string()])
            .args(["--seed", &seed.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting the server child: {e}"))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, mut lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let ready = lines
            .blocking_recv()
            .ok_or("the server child exited before it was ready")?;
        let mut words = ready.split_whitespace();
        let (Some("ready"), Some(addr), Some(fingerprint)) =
            (words.next(), words.next(), words.next())
        else {
            return Err(format!(
                "unexpected first line from the server child: {ready}"
            ));
        };
        Ok(Self {
            child,
            addr: addr.parse().map_err(|e| format!("{addr}: {e}"))?,
            fingerprint: Fingerprint::from_hex(fingerprint).map_err(|e| e.to_string())?,
            lines,
        })
    }

    /// The most recent counters line, if a new one came.
    fn latest(&mut self) -> Option<serde_json::Value> {
        let mut latest = None;
        while let Ok(line) = self.lines.try_recv() {
            latest = serde_json::from_str(&line).ok().or(latest);
        }
        latest
    }

    /// Resident memory, KiB (`VmRSS` in `/proc/PID/status`).
    fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// Closes its standard input (it exits then) and waits a bounded time.
    fn stop(mut self) {
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the soak for `window` of traffic.
pub async fn run(
    clients: usize,
    window: Duration,
    churn_per_sec: u32,
    seed: u64,
    options: RunOptions,
) -> Result<Summary, String> {
    let mut server =
        tokio::task::block_in_place(|| ServerChild::start(clients, churn_per_sec, seed))?;
    let shared = Arc::new(Shared {
        ledger: Ledger::new(clients),
        clients,
        send_every: options.send_every,
        sending: AtomicBool::new(false),
        stop: CancellationToken::new(),
        connected: AtomicU64::new(0),
        connect_failures: AtomicU64::new(0),
        stable_ready: AtomicU64::new(0),
        unexpected_disconnects: AtomicU64::new(0),
        connection_losses: AtomicU64::new(0),
        resumes: AtomicU64::new(0),
        send_errors: AtomicU64::new(0),
        sends_skipped: AtomicU64::new(0),
        handles: std::sync::Mutex::new(vec![None; clients]),
        events_handled: (0..clients).map(|_| AtomicU64::new(0)).collect(),
        last_event_ms: (0..clients).map(|_| AtomicU64::new(0)).collect(),
        started: Instant::now(),
        forced_switches: AtomicU64::new(0),
        to_relay: AtomicU64::new(0),
        to_direct: AtomicU64::new(0),
    });
    let limit = Arc::new(tokio::sync::Semaphore::new(CONNECTING));
    let trust = ServerTrust::Fingerprint(server.fingerprint);
    let tasks: Vec<_> = (0..clients)
        .map(|index| {
            let mut config = ClientConfig::new(server.addr, trust.clone());
            config.login = format!("c{index}").into();
            if let Some(interval) = options.ping_interval {
                config.timeouts.ping_interval = Some(interval);
                config.timeouts.relay_ping_interval = interval;
            }
            tokio::spawn(client(index, config, shared.clone(), limit.clone(), seed))
        })
        .collect();

    // Everyone connected and in a complete stable group, or the limit.
    let setup_started = Instant::now();
    while (shared.stable_ready.load(Ordering::Relaxed) as usize) < clients
        && setup_started.elapsed() < CONNECT_LIMIT
    {
        if shared.connect_failures.load(Ordering::Relaxed) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let setup = setup_started.elapsed();
    let ready = shared.stable_ready.load(Ordering::Relaxed);
    eprintln!(
        "soak: {ready} of {clients} clients ready in {:.1} s (server RSS {} KiB)",
        setup.as_secs_f64(),
        server.rss_kib().unwrap_or(0)
    );

    // The traffic.
    shared.sending.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let mut rss = vec![(0u64, server.rss_kib().unwrap_or(0))];
    let mut server_counters = serde_json::Value::Null;
    let mut next_print = Duration::from_secs(30);
    while started.elapsed() < window {
        tokio::time::sleep(SAMPLE_EVERY.min(window.saturating_sub(started.elapsed()))).await;
        let at = started.elapsed();
        rss.push((at.as_secs(), server.rss_kib().unwrap_or(0)));
        if let Some(latest) = server.latest() {
            server_counters = latest;
        }
        if at >= next_print {
            next_print += Duration::from_secs(30);
            let totals = shared.ledger.totals();
            eprintln!(
                "soak: t={:>4}s server RSS {} KiB, delivered {}, reliable in flight {}, \
                 violations {:?}, disconnects {}, resumed {} of {} lost, forced switches {}, \
                 server {}",
                at.as_secs(),
                rss.last().map_or(0, |r| r.1),
                totals.delivered,
                totals.reliable_missing,
                totals.violations,
                shared.unexpected_disconnects.load(Ordering::Relaxed),
                shared.resumes.load(Ordering::Relaxed),
                shared.connection_losses.load(Ordering::Relaxed),
                shared.forced_switches.load(Ordering::Relaxed),
                server_counters
            );
        }
    }
    let ran = started.elapsed();
    shared.sending.store(false, Ordering::Relaxed);

    // Drain: every reliable message sent must arrive.
    let drain_started = Instant::now();
    let mut totals = shared.ledger.totals();
    let mut next_report = Duration::ZERO;
    while totals.reliable_missing > 0 && drain_started.elapsed() < options.drain_limit {
        // How fast the backlog shrinks tells late messages from lost ones.
        if drain_started.elapsed() >= next_report {
            next_report += Duration::from_secs(10);
            eprintln!(
                "soak: drain {:>3.0} s: reliable messages still in flight {}",
                drain_started.elapsed().as_secs_f64(),
                totals.reliable_missing
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        totals = shared.ledger.totals();
    }
    let drained_in = drain_started.elapsed();
    if totals.reliable_missing > 0 {
        report_missing(&shared);
    }
    rss.push((started.elapsed().as_secs(), server.rss_kib().unwrap_or(0)));
    tokio::time::sleep(Duration::from_secs(5)).await;
    if let Some(latest) = server.latest() {
        server_counters = latest;
    }

    shared.stop.cancel();
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
    }
    tokio::task::block_in_place(|| server.stop());
    Ok(summarize(
        &shared,
        totals,
        &rss,
        server_counters,
        setup,
        ran,
        drained_in,
    ))
}

/// Prints a few of the reliable messages still missing after the drain, with what the
/// sender and the receiver say about each other (path, queued and unacked messages).
fn report_missing(shared: &Shared) {
    let handles = shared.handles.lock().unwrap_or_else(|p| p.into_inner());
    let host = |index: usize| handles[index].as_ref().map(|c| (c, c.host_id()));
    let (receivers, sample) = shared.ledger.missing(8);
    eprintln!("soak: {receivers} receivers are missing reliable messages; some of them:");
    for (receiver, sender, lane, sent, delivered) in sample {
        let (Some((rx, rx_id)), Some((tx, tx_id))) = (host(receiver), host(sender)) else {
            continue;
        };
        let seen = |from: &Client, to: HostId| {
            from.peer_stats(to).map(|s| {
                format!(
                    "path {:?}, unacked {}, queued {} B, sent relay/direct {}/{}, \
                     received relay/direct {}/{}, duplicates dropped {}, not-member dropped {}, \
                     discarded {}, held {}",
                    s.path,
                    s.unacked,
                    s.queued_bytes,
                    s.relay_sent.messages,
                    s.direct_sent.messages,
                    s.relay_received.messages,
                    s.direct_received.messages,
                    s.duplicates_dropped,
                    s.not_member_dropped,
                    s.discarded,
                    s.held,
                )
            })
        };
        eprintln!(
            "soak: missing {lane:?} {tx_id} -> {rx_id}: sent {sent}, delivered {delivered}; \
             sender sees {:?}; receiver sees {:?}, handled {} events, the last {:.1} s ago",
            seen(tx, rx_id),
            seen(rx, tx_id),
            shared.events_handled[receiver].load(Ordering::Relaxed),
            shared.started.elapsed().as_secs_f64()
                - shared.last_event_ms[receiver].load(Ordering::Relaxed) as f64 / 1000.0,
        );
    }
}

fn summarize(
    shared: &Shared,
    totals: Totals,
    rss: &[(u64, u64)],
    server: serde_json::Value,
    setup: Duration,
    ran: Duration,
    drained_in: Duration,
) -> Summary {
    let count = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let v = totals.violations;
    // Growth from the first sample after a minute (sockets, pairs and queues settled)
    // to the last.
    let settled = rss
        .iter()
        .find(|(t, _)| *t >= 60)
        .or(rss.first())
        .map_or(0, |r| r.1);
    let last = rss.last().map_or(0, |r| r.1);
    let passed = totals.reliable_missing == 0
        && v.duplicates == 0
        && v.out_of_order == 0
        && v.stale == 0
        && v.churn_reordered == 0
        && v.foreign == 0
        && count(&shared.unexpected_disconnects) == 0
        && count(&shared.connect_failures) == 0
        && count(&shared.stable_ready) as usize == shared.clients;
    let json = serde_json::json!({
        "soak": {
            "clients": shared.clients,
            "connected": count(&shared.connected),
            "connect_failures": count(&shared.connect_failures),
            "setup_s": (setup.as_secs_f64() * 10.0).round() / 10.0,
            "traffic_s": ran.as_secs(),
            "send_ms": shared.send_every.as_millis() as u64,
            "drain_s": (drained_in.as_secs_f64() * 10.0).round() / 10.0,
            "server_rss_kib": rss,
            "server_rss_settled_kib": settled,
            "server_rss_end_kib": last,
            "server_rss_growth_pct": if settled > 0 {
                ((last as f64 / settled as f64 - 1.0) * 1000.0).round() / 10.0
            } else { 0.0 },
            "delivered": totals.delivered,
            "delivered_per_sec": (totals.delivered as f64 / ran.as_secs_f64().max(1e-3)).round(),
            "reliable_expected": totals.reliable_expected,
            "reliable_delivered": totals.reliable_delivered,
            "reliable_lost": totals.reliable_missing,
            "duplicates": v.duplicates,
            "out_of_order": v.out_of_order,
            "stale": v.stale,
            "churn_reordered": v.churn_reordered,
            "foreign": v.foreign,
            "unexpected_disconnects": count(&shared.unexpected_disconnects),
            "connection_losses_resumed": count(&shared.resumes),
            "connection_losses": count(&shared.connection_losses),
            "send_errors": count(&shared.send_errors),
            "sends_skipped_queue_full": count(&shared.sends_skipped),
            "forced_switches": count(&shared.forced_switches),
            "path_changes_to_relay": count(&shared.to_relay),
            "path_changes_to_direct": count(&shared.to_direct),
            "server": server,
            "passed": passed,
        }
    });
    Summary { json, passed }
}

/// One client's state in the run.
struct Player {
    index: usize,
    me: HostId,
    client: Client,
    shared: Arc<Shared>,
    rng: Rng,
    stable: Option<GroupId>,
    stable_size: usize,
    ready: bool,
    churn: BTreeSet<GroupId>,
    /// Numbers used so far per lane (stable group) and per churn group.
    seq: HashMap<Lane, u64>,
    churn_seq: HashMap<GroupId, u64>,
    ticks: u64,
}

/// Connects client `index` and plays until the run stops.
async fn client(
    index: usize,
    config: ClientConfig,
    shared: Arc<Shared>,
    limit: Arc<tokio::sync::Semaphore>,
    seed: u64,
) {
    let connected = {
        let Ok(_permit) = limit.acquire().await else {
            return;
        };
        Client::connect(config).await
    };
    let (client, mut events) = match connected {
        Ok(connected) => connected,
        Err(error) => {
            eprintln!("soak: client {index}: {error}");
            shared.connect_failures.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    shared.connected.fetch_add(1, Ordering::Relaxed);
    let me = client.host_id();
    shared.ledger.register(me, index);
    shared.handles.lock().unwrap_or_else(|p| p.into_inner())[index] = Some(client.clone());
    let group = index / STABLE_SIZE;
    let mut player = Player {
        index,
        me,
        client,
        rng: Rng::new(seed, index as u64 + 1),
        stable: None,
        stable_size: STABLE_SIZE.min(shared.clients - group * STABLE_SIZE),
        ready: false,
        churn: BTreeSet::new(),
        seq: HashMap::new(),
        churn_seq: HashMap::new(),
        ticks: 0,
        shared: shared.clone(),
    };
    let mut send = tokio::time::interval(shared.send_every);
    send.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // Spread the forced switches over the interval instead of all at once.
    let first_switch =
        tokio::time::Instant::now() + SWITCH_EVERY.mul_f64(player.rng.below(1000) as f64 / 1000.0);
    let mut switch = tokio::time::interval_at(first_switch, SWITCH_EVERY);
    loop {
        tokio::select! {
            _ = shared.stop.cancelled() => break,
            _ = send.tick() => player.send(),
            _ = switch.tick() => player.force_switch(),
            event = events.next() => match event {
                Some(event) => player.handle(event),
                None => break,
            },
        }
    }
    player.client.close().await;
}

impl Player {
    /// One tick's sends. They never wait, as in a game loop that also reads events: a
    /// loop blocked in a send reads no events, and its client then stops reading the
    /// server, acks no membership notices and lets its own backlog grow at the server.
    /// A send that finds a queue full is skipped (the next tick tries again).
    fn send(&mut self) {
        // A stable peer may register after the last membership event: look again.
        self.check_ready();
        if !self.ready || !self.shared.sending.load(Ordering::Relaxed) {
            return;
        }
        let Some(stable) = self.stable else { return };
        self.ticks += 1;
        // Every tick one reliable ordered message on alternating channels, and one of the
        // other modes in turn.
        let ordered = match self.ticks % 2 {
            0 => (Lane::Ordered0, Delivery::ReliableOrdered.on_channel(0)),
            _ => (Lane::Ordered1, Delivery::ReliableOrdered.on_channel(1)),
        };
        let other = match self.ticks % 4 {
            0 => (Lane::Unordered, Delivery::ReliableUnordered.into()),
            1 => (Lane::Sequenced, Delivery::UnreliableSequenced.into()),
            2 => (Lane::Latest, Delivery::Latest { key: 0 }.into()),
            _ => (Lane::Unreliable, Delivery::Unreliable.into()),
        };
        for (lane, options) in [ordered, other] {
            self.send_stable(stable, lane, options);
        }
        if !self.churn.is_empty() {
            let pick = self.rng.below(self.churn.len());
            if let Some(&group) = self.churn.iter().nth(pick) {
                let seq = self.churn_seq.get(&group).copied().unwrap_or(0) + 1;
                let sent = self.client.try_send(
                    Target::Group(group),
                    ledger::payload(Lane::Churn, seq),
                    Delivery::ReliableOrdered.on_channel(2),
                );
                match sent {
                    Ok(()) => {
                        self.churn_seq.insert(group, seq);
                    }
                    Err(SendError::QueueFull) => {
                        self.shared.sends_skipped.fetch_add(1, Ordering::Relaxed);
                    }
                    // Not a member any more: the leave notice is on its way.
                    Err(_) => {
                        self.shared.send_errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }

    fn send_stable(&mut self, stable: GroupId, lane: Lane, options: SendOptions) {
        let seq = self.seq.get(&lane).copied().unwrap_or(0) + 1;
        let payload = ledger::payload(lane, seq);
        match self
            .client
            .try_send(Target::Group(stable), payload, options)
        {
            Ok(()) => {
                self.seq.insert(lane, seq);
                self.shared.ledger.sent(self.index, lane, seq);
            }
            Err(SendError::QueueFull) => {
                self.shared.sends_skipped.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                self.shared.send_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, "stable send failed");
            }
        }
    }

    /// Closes the direct path to one stable peer that has one.
    fn force_switch(&mut self) {
        if !self.shared.sending.load(Ordering::Relaxed) {
            return;
        }
        let Some(stable) = self.stable else { return };
        let peers: Vec<HostId> = self
            .client
            .group_members(stable)
            .unwrap_or_default()
            .into_iter()
            .filter(|&p| p != self.me)
            .filter(|&p| {
                self.client
                    .peer_stats(p)
                    .is_some_and(|s| s.path == Some(PairPath::Direct))
            })
            .collect();
        if peers.is_empty() {
            return;
        }
        let peer = peers[self.rng.below(peers.len())];
        self.client.close_direct_path(peer);
        self.shared.forced_switches.fetch_add(1, Ordering::Relaxed);
    }

    fn handle(&mut self, event: ClientEvent) {
        self.shared.events_handled[self.index].fetch_add(1, Ordering::Relaxed);
        let at = self.shared.started.elapsed().as_millis() as u64;
        self.shared.last_event_ms[self.index].store(at, Ordering::Relaxed);
        match event {
            ClientEvent::MemberJoined {
                group,
                member,
                group_data,
                ..
            } => {
                if member == self.me {
                    match group_data.as_deref() {
                        Some(b"stable") => self.stable = Some(group),
                        Some(b"churn") => {
                            self.churn.insert(group);
                        }
                        _ => {}
                    }
                }
                self.check_ready();
            }
            ClientEvent::MemberLeft { group, member, .. } if member == self.me => {
                self.churn.remove(&group);
            }
            ClientEvent::Message {
                from,
                group,
                payload,
                ..
            } => {
                let sender = self.shared.ledger.client_of(from);
                let mut inbox = self.shared.ledger.inbox(self.index);
                match (sender, ledger::parse(&payload)) {
                    (Some(sender), Some((lane, seq))) => inbox.on_message(sender, group, lane, seq),
                    _ => inbox.foreign(),
                }
            }
            ClientEvent::PathChanged { path, .. } => {
                let counter = match path {
                    PairPath::Direct => &self.shared.to_direct,
                    _ => &self.shared.to_relay,
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
            ClientEvent::ConnectionLost { reason } => {
                eprintln!("soak: client {} lost its connection: {reason}", self.index);
                self.shared
                    .connection_losses
                    .fetch_add(1, Ordering::Relaxed);
            }
            ClientEvent::Resumed { .. } => {
                self.shared.resumes.fetch_add(1, Ordering::Relaxed);
            }
            ClientEvent::Disconnected { reason } if !self.shared.stop.is_cancelled() => {
                eprintln!("soak: client {} disconnected: {reason}", self.index);
                self.shared
                    .unexpected_disconnects
                    .fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }

    /// The stable group is complete: record its other members and start sending.
    fn check_ready(&mut self) {
        let Some(stable) = self.stable.filter(|_| !self.ready) else {
            return;
        };
        let members = self.client.group_members(stable).unwrap_or_default();
        if members.len() < self.stable_size {
            return;
        }
        let peers: Vec<usize> = members
            .iter()
            .filter(|&&m| m != self.me)
            .filter_map(|&m| self.shared.ledger.client_of(m))
            .collect();
        if peers.len() + 1 < self.stable_size {
            // A peer not registered yet (its connect returned after the group formed).
            return;
        }
        self.shared.ledger.inbox(self.index).stable_peers = peers;
        self.ready = true;
        self.shared.stable_ready.fetch_add(1, Ordering::Relaxed);
    }
}
