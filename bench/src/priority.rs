//! Priorities and latest-value replacement under load, over loopback through a real
//! peergroup server: one relay-only group (`direct_p2p: false`) of a sender A and a
//! receiver B, both set up afresh for every run. B's client has a tiny
//! `limits.event_queue`, so while B does not read its events its client stops reading the
//! network and what A sends piles up in the server's queue to B.
//!
//! - **Head-of-line under a backlog.** B stops reading while A queues 1 KiB chat at
//!   `Priority::Low` on channel 1 until the server holds [`BACKLOG`] bytes for B. Then B
//!   reads at full speed while A keeps that backlog topped up (more chat whenever the
//!   server's queue to B is under [`BACKLOG`] and A's own queue is small) and sends 64 B
//!   "movement" messages on channel 2 at [`MOVE_RATE`] per second. The figure is the
//!   movement's one-way latency (the send time is in the payload; taken when B's event
//!   arrives) with the movement at `Priority::High`, against the baseline of the same run
//!   with the movement at `Priority::Low`, the chat's class, where it waits its turn
//!   behind the backlog first in first out. The two runs alternate. Each movement message
//!   also carries the server's queue to B just before it was sent; the headline figures
//!   take only those sent with at least [`LOADED`] queued, since B draining at full speed
//!   can outrun the top-up for a while.
//! - **Latest-value replacement for a slow receiver.** A sends position updates (64 B
//!   over [`KEYS`] keys, values counting up) at [`UPDATE_RATE`] per second as
//!   `Delivery::Latest { key }` while B reads one event per millisecond; once A is done, B
//!   reads at full speed until it holds every key's last value. Reported: updates sent
//!   and delivered, payload bytes delivered, the largest queue the server held for B
//!   (`Server::host_info(b).queued_bytes`, sampled every 2 ms) and A's own upload queue,
//!   and the catch-up time from A's last send until B holds every last value. The
//!   comparison is the same run sent `ReliableOrdered`, where every update is delivered
//!   and the queue grows instead.

use crate::report::{self, Report, Table};
use crate::setup::{self, wait_for};
use crate::stats::Latencies;
use crate::Mode;
use bytes::Bytes;
use peergroup_client::{
    Client, ClientConfig, ClientEvent, ClientEvents, Delivery, HostId, Priority, SendOptions,
    ServerTrust, Target,
};
use peergroup_server::{GroupOptions, Server};
use serde_json::Value;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// Bytes of Low chat the server keeps queued for B during a head-of-line run: half the
/// server's default soft limit (8 MiB), so the sender is never paused by back-pressure.
const BACKLOG: usize = 4 << 20;
/// One chat message.
const BULK_SIZE: usize = 1024;
/// The chat's channel.
const BULK_CHANNEL: u8 = 1;
/// Chat messages per top-up step (256 KiB). `host_info` takes the lock the server's
/// relay path takes too: checking the queue less often lets the chat keep up with B.
const TOP_UP_BATCH: u64 = 256;
/// The top-up sends more chat only while A's own upload queue holds less than this, so
/// the backlog sits at the server rather than at the sender.
const SENDER_QUEUE_CAP: usize = 512 << 10;
/// One movement message.
const MOVE_SIZE: usize = 64;
/// The movement's channel.
const MOVE_CHANNEL: u8 = 2;
/// Movement messages per second.
const MOVE_RATE: f64 = 2_000.0;
/// Movement sent while the server held at least this for B counts as sent under the
/// backlog. The chat keeps the backlog near [`BACKLOG`], but a receiver draining at full
/// speed can outrun the sender for a while and empty it.
const LOADED: usize = BACKLOG / 2;
/// From B starting to read until the movement starts.
const WARMUP: Duration = Duration::from_millis(200);
/// B's event queue: its client stops reading the network once this many wait.
const SLOW_EVENT_QUEUE: usize = 4;
/// Keys of the position updates.
const KEYS: u64 = 8;
/// One position update.
const UPDATE_SIZE: usize = 64;
/// Position updates per second.
const UPDATE_RATE: f64 = 10_000.0;
/// The slow receiver reads one event per this.
const SLOW_READ: Duration = Duration::from_millis(1);
/// Set-up steps give up after this.
const WAIT: Duration = Duration::from_secs(10);
/// Waiting for the last messages of a run gives up after this.
const DRAIN: Duration = Duration::from_secs(15);

/// quinn's default stream receive window, bytes: what the server may have handed to QUIC
/// for B beyond what B has read (used only to put the figures in scale).
const QUIC_WINDOW: f64 = 1_250_000.0;
/// Payload tags of the head-of-line runs.
const TAG_BULK: u8 = b'B';
const TAG_MOVE: u8 = b'M';

/// Sizes and windows.
#[derive(Debug, Clone, Copy)]
struct Timing {
    /// Movement sent per head-of-line run.
    window: Duration,
    /// Head-of-line runs per priority (alternating).
    rounds: usize,
    /// Position updates per latest-value run.
    updates: u64,
}

impl Timing {
    fn of(mode: Mode) -> Self {
        Self {
            window: mode.pick(Duration::from_secs(2), Duration::from_secs(5)),
            rounds: mode.pick(1, 3),
            updates: mode.pick(20_000, 60_000),
        }
    }
}

/// Runs the section.
pub fn run(mode: Mode, report: &mut Report, _out: &Path) -> Result<(), String> {
    let timing = Timing::of(mode);
    let runtime = runtime()?;
    let mut errors = Vec::new();

    // Head-of-line: High and the Low baseline alternate, so both see the same noise.
    let mut high = Hol::default();
    let mut low = Hol::default();
    let mut hol_errors = Vec::new();
    for round in 0..timing.rounds {
        for (priority, total) in [(Priority::High, &mut high), (Priority::Low, &mut low)] {
            match head_of_line(&runtime, priority, timing.window) {
                Ok(run) => {
                    eprintln!(
                        "   head-of-line round {} movement {priority:?}: p50 {:.2} ms, p99 \
                         {:.2} ms over {} of {} messages sent under the backlog (all: p50 \
                         {:.2} ms, p99 {:.2} ms); backlog mean {:.0} KiB; chat {:.1} MiB/s{}",
                        round + 1,
                        ms(run.loaded.percentile_us(50.0)),
                        ms(run.loaded.percentile_us(99.0)),
                        run.loaded.len(),
                        run.latencies.len(),
                        ms(run.latencies.percentile_us(50.0)),
                        ms(run.latencies.percentile_us(99.0)),
                        run.backlog_mean / 1024.0,
                        run.bulk_rate / f64::from(1 << 20),
                        run.note
                            .as_deref()
                            .map(|n| format!(", {n}"))
                            .unwrap_or_default(),
                    );
                    total.add(run);
                }
                Err(error) => {
                    eprintln!("   head-of-line movement {priority:?}: {error}");
                    hol_errors.push(format!("movement {priority:?}: {error}"));
                }
            }
        }
    }
    record_hol(report, &high, &low, timing, &hol_errors);
    errors.extend(hol_errors.iter().map(|e| format!("head-of-line: {e}")));

    // Latest-value replacement against every update delivered.
    let mut latest_rows = Vec::new();
    let mut latest_errors = Vec::new();
    for latest in [true, false] {
        let name = if latest { "Latest" } else { "ReliableOrdered" };
        match latest_values(&runtime, latest, timing.updates) {
            Ok(run) => {
                eprintln!(
                    "   latest values {name}: {} of {} delivered ({:.0} KiB), server peak \
                     {}, sender peak {}, catch-up {:.1} ms, {} stale",
                    run.delivered,
                    run.sent,
                    run.delivered_bytes as f64 / 1024.0,
                    size(run.server_peak),
                    size(run.sender_peak),
                    run.catch_up.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3),
                    run.stale,
                );
                latest_rows.push((latest, run));
            }
            Err(error) => {
                eprintln!("   latest values {name}: {error}");
                latest_errors.push(format!("{name}: {error}"));
            }
        }
    }
    record_latest(report, &latest_rows, timing, &latest_errors);
    errors.extend(latest_errors.iter().map(|e| format!("latest values: {e}")));

    runtime.shutdown_timeout(Duration::from_secs(2));
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// The clients' runtime: two workers, so the draining receiver and the pacing sender do
/// not take turns on one thread (the server has a thread of its own).
fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("priority-clients")
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// Microseconds since `base`, for send stamps.
fn stamp(base: Instant) -> u64 {
    base.elapsed().as_micros() as u64
}

fn read_u64(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

// ---------------------------------------------------------------------------------------
// Set-up

/// A and B connected, in one relay-only group, each knowing the other. A's events are
/// drained by `drain`; B's are handed to the caller with the pair.
struct Pair {
    a: Client,
    b: Client,
    b_id: HostId,
    drain: JoinHandle<()>,
}

/// Connects a client whose event queue holds `event_queue` events.
async fn slow_client(
    server: &Server,
    name: &str,
    event_queue: usize,
) -> Result<(Client, ClientEvents, HostId), String> {
    let mut config = ClientConfig::new(
        server.local_addr(),
        ServerTrust::Fingerprint(server.fingerprint()),
    );
    config.login = name.to_string().into();
    config.limits.event_queue = event_queue;
    let (client, mut events) = Client::connect(config).await.map_err(|e| e.to_string())?;
    let host = wait_for(&mut events, WAIT, |e| match e {
        ClientEvent::Connected { host_id } => Some(*host_id),
        _ => None,
    })
    .await?;
    Ok((client, events, host))
}

async fn pair(server: &Server) -> Result<(Pair, ClientEvents), String> {
    let (a, mut a_events, a_id) = setup::client(server, "a").await?;
    let (b, mut b_events, b_id) = slow_client(server, "b", SLOW_EVENT_QUEUE).await?;
    let options = GroupOptions {
        direct_p2p: false,
        ..Default::default()
    };
    server
        .create_group(&[a_id, b_id], options, "")
        .map_err(|e| format!("create_group: {e}"))?;
    wait_for(&mut b_events, WAIT, |e| {
        matches!(e, ClientEvent::MemberJoined { member, .. } if *member == a_id).then_some(())
    })
    .await?;
    // A may send to B once it knows B as a peer.
    let deadline = Instant::now() + WAIT;
    while !a.peers().contains(&b_id) {
        if Instant::now() >= deadline {
            return Err("A never learned of B".into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // A hears nothing but lifecycle events; keep its queue drained.
    let drain = tokio::spawn(async move { while a_events.next().await.is_some() {} });
    Ok((Pair { a, b, b_id, drain }, b_events))
}

impl Pair {
    /// Closes both clients, A first: call it while B is still being read, so that what A
    /// has left leaves at once.
    async fn close(self) {
        self.a.close().await;
        self.b.close().await;
        self.drain.abort();
    }
}

/// Runs `body` against a fresh server. The server's own runtime is dropped here, outside
/// `runtime`'s `block_on`.
fn with_server<T, F>(
    runtime: &tokio::runtime::Runtime,
    body: impl FnOnce(Server) -> F,
) -> Result<T, String>
where
    F: std::future::Future<Output = Result<T, String>>,
{
    let server = setup::server(|_| {})?;
    let result = runtime.block_on(body(server.server.clone()));
    drop(server);
    result
}

// ---------------------------------------------------------------------------------------
// Head-of-line under a backlog

/// What B counts in a head-of-line run.
#[derive(Debug, Default)]
struct HolState {
    moves: u64,
    next_move: u64,
    out_of_order: u64,
    latencies: Latencies,
    /// Of those, the movement sent with at least [`LOADED`] queued at the server for B.
    loaded: Latencies,
    failed: Option<String>,
}

#[derive(Debug, Default)]
struct HolProbe {
    bulk_bytes: AtomicU64,
    state: Mutex<HolState>,
}

impl HolProbe {
    fn lock(&self) -> MutexGuard<'_, HolState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn on_message(&self, payload: &[u8], base: Instant) {
        let now = Instant::now();
        match payload.first() {
            Some(&TAG_BULK) => {
                self.bulk_bytes
                    .fetch_add(payload.len() as u64, Ordering::Relaxed);
            }
            Some(&TAG_MOVE) => {
                let (Some(seq), Some(sent), Some(backlog)) = (
                    read_u64(payload, 1),
                    read_u64(payload, 9),
                    read_u64(payload, 17),
                ) else {
                    return;
                };
                let mut state = self.lock();
                state.moves += 1;
                if seq != state.next_move {
                    state.out_of_order += 1;
                }
                state.next_move = seq + 1;
                let latency = now.saturating_duration_since(base + Duration::from_micros(sent));
                state.latencies.record(latency);
                if backlog >= LOADED as u64 {
                    state.loaded.record(latency);
                }
            }
            _ => {}
        }
    }

    fn fail(&self, why: String) {
        let mut state = self.lock();
        if state.failed.is_none() {
            state.failed = Some(why);
        }
    }
}

/// One head-of-line run, or several merged.
#[derive(Debug, Default)]
struct Hol {
    runs: usize,
    /// Every movement message.
    latencies: Latencies,
    /// Movement sent with at least [`LOADED`] queued at the server for B.
    loaded: Latencies,
    sent: u64,
    delivered: u64,
    out_of_order: u64,
    /// Bytes the server held for B during the movement window, mean of samples.
    backlog_mean: f64,
    /// The same, the largest sample.
    backlog_max: usize,
    /// Chat bytes B received per second during the movement window.
    bulk_rate: f64,
    note: Option<String>,
}

impl Hol {
    /// Merges a run in (the means weigh every run alike).
    fn add(&mut self, run: Hol) {
        let n = self.runs as f64;
        self.backlog_mean = (self.backlog_mean * n + run.backlog_mean) / (n + 1.0);
        self.bulk_rate = (self.bulk_rate * n + run.bulk_rate) / (n + 1.0);
        self.runs += 1;
        self.latencies.merge(&run.latencies);
        self.loaded.merge(&run.loaded);
        self.sent += run.sent;
        self.delivered += run.delivered;
        self.out_of_order += run.out_of_order;
        self.backlog_max = self.backlog_max.max(run.backlog_max);
        if let Some(note) = run.note {
            self.note = Some(match self.note.take() {
                Some(earlier) => format!("{earlier}; {note}"),
                None => note,
            });
        }
    }
}

/// One head-of-line run with the movement at `priority`.
fn head_of_line(
    runtime: &tokio::runtime::Runtime,
    priority: Priority,
    window: Duration,
) -> Result<Hol, String> {
    with_server(runtime, |server| async move {
        let (pair, mut events) = pair(&server).await?;
        let base = Instant::now();
        let probe = Arc::new(HolProbe::default());
        let (go, gate) = tokio::sync::oneshot::channel::<()>();
        // B reads nothing until `go`, then everything as fast as it can.
        let reader = {
            let probe = probe.clone();
            tokio::spawn(async move {
                if gate.await.is_err() {
                    return;
                }
                while let Some(event) = events.next().await {
                    match event {
                        ClientEvent::Message { payload, .. } => probe.on_message(&payload, base),
                        ClientEvent::Disconnected { reason } => {
                            return probe.fail(format!("B disconnected: {reason}"));
                        }
                        _ => {}
                    }
                }
                probe.fail("B's events ended".into());
            })
        };
        let result = hol_run(&server, &pair, &probe, go, priority, window, base).await;
        pair.close().await;
        reader.abort();
        result
    })
}

/// Keeps about [`BACKLOG`] bytes of Low chat queued at the server for `b` until `stop`.
async fn top_up(a: Client, server: Server, b: HostId, stop: Arc<AtomicBool>) -> Result<(), String> {
    let mut chat = vec![0u8; BULK_SIZE];
    chat[0] = TAG_BULK;
    let chat = Bytes::from(chat);
    let options = Delivery::ReliableOrdered
        .on_channel(BULK_CHANNEL)
        .with_priority(Priority::Low);
    while !stop.load(Ordering::Relaxed) {
        let queued = server
            .host_info(b)
            .ok_or("B is no longer connected")?
            .queued_bytes;
        if queued < BACKLOG && a.queued_bytes() < SENDER_QUEUE_CAP {
            for _ in 0..TOP_UP_BATCH {
                a.send(Target::Host(b), chat.clone(), options)
                    .await
                    .map_err(|e| format!("chat send: {e}"))?;
            }
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    Ok(())
}

/// Sends movement at [`MOVE_RATE`] until `until`, catching up each millisecond tick;
/// returns messages sent. Each carries its number, its send time and what the server
/// held for B just before it was sent.
async fn movement(
    a: Client,
    server: Server,
    b: HostId,
    options: SendOptions,
    base: Instant,
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
        let due = ((now - start).as_secs_f64() * MOVE_RATE) as u64 + 1;
        while sent < due {
            let mut payload = vec![0u8; MOVE_SIZE];
            payload[0] = TAG_MOVE;
            payload[1..9].copy_from_slice(&sent.to_le_bytes());
            let backlog = server.host_info(b).map_or(0, |info| info.queued_bytes) as u64;
            payload[17..25].copy_from_slice(&backlog.to_le_bytes());
            payload[9..17].copy_from_slice(&stamp(base).to_le_bytes());
            a.send(Target::Host(b), payload, options)
                .await
                .map_err(|e| format!("movement send: {e}"))?;
            sent += 1;
        }
        tick.tick().await;
    }
}

/// The run itself: backlog, then drain with movement. The chat sender is stopped
/// whatever happens.
async fn hol_run(
    server: &Server,
    pair: &Pair,
    probe: &HolProbe,
    go: tokio::sync::oneshot::Sender<()>,
    priority: Priority,
    window: Duration,
    base: Instant,
) -> Result<Hol, String> {
    let b_id = pair.b_id;
    let stop = Arc::new(AtomicBool::new(false));
    let mut chat = tokio::spawn(top_up(pair.a.clone(), server.clone(), b_id, stop.clone()));
    let result = async {
        // The backlog forms while B reads nothing.
        let deadline = Instant::now() + WAIT;
        loop {
            let queued = server.host_info(b_id).ok_or("B left")?.queued_bytes;
            if queued >= BACKLOG {
                break;
            }
            if chat.is_finished() {
                return Err("the chat sender stopped".to_string());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "no backlog formed: the server holds {queued} bytes for B"
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }

        // B drains at full speed; the chat keeps the backlog up; the movement runs.
        let _ = go.send(());
        let from = Instant::now() + WARMUP;
        let until = from + window;
        tokio::time::sleep_until(from.into()).await;
        let bulk_from = probe.bulk_bytes.load(Ordering::Relaxed);
        let options = Delivery::ReliableOrdered
            .on_channel(MOVE_CHANNEL)
            .with_priority(priority);
        let mut mover = tokio::spawn(movement(
            pair.a.clone(),
            server.clone(),
            b_id,
            options,
            base,
            until,
        ));
        let (mut samples, mut sum, mut max) = (0u64, 0f64, 0usize);
        while Instant::now() < until {
            let Some(info) = server.host_info(b_id) else {
                mover.abort();
                let _ = mover.await;
                return Err("B left the server".into());
            };
            samples += 1;
            sum += info.queued_bytes as f64;
            max = max.max(info.queued_bytes);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let bulk_until = probe.bulk_bytes.load(Ordering::Relaxed);
        let sent = match tokio::time::timeout(WAIT, &mut mover).await {
            Ok(Ok(Ok(sent))) => sent,
            Ok(Ok(Err(error))) => return Err(error),
            Ok(Err(error)) => return Err(format!("movement task: {error}")),
            Err(_) => {
                mover.abort();
                let _ = mover.await;
                return Err("the movement sender stalled".into());
            }
        };
        stop.store(true, Ordering::Relaxed);

        // Every movement message is reliable: wait for the last of them.
        let deadline = Instant::now() + DRAIN;
        let mut note = None;
        loop {
            let (failed, moves) = {
                let state = probe.lock();
                (state.failed.clone(), state.moves)
            };
            if let Some(failed) = failed {
                return Err(failed);
            }
            if moves >= sent {
                break;
            }
            if Instant::now() >= deadline {
                note = Some(format!(
                    "{} movement messages still missing after {} s",
                    sent - moves,
                    DRAIN.as_secs()
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let state = std::mem::take(&mut *probe.lock());
        Ok(Hol {
            runs: 1,
            latencies: state.latencies,
            loaded: state.loaded,
            sent,
            delivered: state.moves,
            out_of_order: state.out_of_order,
            backlog_mean: sum / samples.max(1) as f64,
            backlog_max: max,
            bulk_rate: (bulk_until - bulk_from) as f64 / window.as_secs_f64(),
            note,
        })
    }
    .await;
    stop.store(true, Ordering::Relaxed);
    match tokio::time::timeout(WAIT, &mut chat).await {
        Ok(Ok(Err(error))) if result.is_ok() => return Err(error),
        Err(_) => {
            // Wait for the task to go, and its server handle with it.
            chat.abort();
            let _ = chat.await;
        }
        _ => {}
    }
    result
}

// ---------------------------------------------------------------------------------------
// Latest-value replacement for a slow receiver

/// What B saw of the position updates.
#[derive(Debug, Default)]
struct LatestState {
    /// The newest value per key.
    last: [u64; KEYS as usize],
    delivered: u64,
    delivered_bytes: u64,
    /// Updates older than (or equal to) one already delivered for their key.
    stale: u64,
    /// When B first held every key's last value.
    done_at: Option<Instant>,
    failed: Option<String>,
}

impl LatestState {
    fn lock(state: &Mutex<LatestState>) -> MutexGuard<'_, LatestState> {
        state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One latest-value run.
#[derive(Debug)]
struct LatestRun {
    sent: u64,
    delivered: u64,
    delivered_bytes: u64,
    /// The largest sample of the server's queue to B, bytes.
    server_peak: usize,
    /// The largest sample of A's upload queue, bytes.
    sender_peak: usize,
    /// From A's last send until B held every key's last value.
    catch_up: Option<Duration>,
    stale: u64,
    /// How long A took to send them all.
    send_time: Duration,
    note: Option<String>,
}

/// The last value of each key when values `1..=updates` go to key `value % KEYS`.
fn final_values(updates: u64) -> [u64; KEYS as usize] {
    let mut last = [0u64; KEYS as usize];
    for (key, slot) in last.iter_mut().enumerate() {
        let key = key as u64;
        if updates >= key {
            // The largest value <= updates that is congruent to key.
            *slot = updates - (updates + KEYS - key) % KEYS;
        }
    }
    last
}

/// Sends values `1..=updates` (key `value % KEYS`) at [`UPDATE_RATE`]; returns when the
/// last one was sent.
async fn updates_sender(
    a: Client,
    b: HostId,
    latest: bool,
    updates: u64,
) -> Result<Instant, String> {
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut value = 0u64;
    loop {
        let due = (((Instant::now() - start).as_secs_f64() * UPDATE_RATE) as u64 + 1).min(updates);
        while value < due {
            value += 1;
            let key = value % KEYS;
            let mut payload = vec![0u8; UPDATE_SIZE];
            payload[..8].copy_from_slice(&key.to_le_bytes());
            payload[8..16].copy_from_slice(&value.to_le_bytes());
            let options: SendOptions = if latest {
                Delivery::Latest { key }.into()
            } else {
                Delivery::ReliableOrdered.into()
            };
            a.send(Target::Host(b), payload, options)
                .await
                .map_err(|e| format!("update send: {e}"))?;
        }
        if value >= updates {
            return Ok(Instant::now());
        }
        tick.tick().await;
    }
}

fn latest_values(
    runtime: &tokio::runtime::Runtime,
    latest: bool,
    updates: u64,
) -> Result<LatestRun, String> {
    with_server(runtime, |server| async move {
        let (pair, mut events) = pair(&server).await?;
        let b_id = pair.b_id;
        let finals = final_values(updates);
        let state = Arc::new(Mutex::new(LatestState::default()));
        let fast = Arc::new(AtomicBool::new(false));
        // B reads one event per millisecond until `fast`, then as fast as it can.
        let reader = {
            let state = state.clone();
            let fast = fast.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(SLOW_READ);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    if !fast.load(Ordering::Relaxed) {
                        tick.tick().await;
                    }
                    let Some(event) = events.next().await else {
                        LatestState::lock(&state)
                            .failed
                            .get_or_insert("B's events ended".into());
                        return;
                    };
                    match event {
                        ClientEvent::Message { payload, .. } => {
                            let now = Instant::now();
                            let (Some(key), Some(value)) =
                                (read_u64(&payload, 0), read_u64(&payload, 8))
                            else {
                                continue;
                            };
                            let mut state = LatestState::lock(&state);
                            state.delivered += 1;
                            state.delivered_bytes += payload.len() as u64;
                            let slot = (key % KEYS) as usize;
                            if value <= state.last[slot] {
                                state.stale += 1;
                            } else {
                                state.last[slot] = value;
                            }
                            if state.done_at.is_none() && state.last == finals {
                                state.done_at = Some(now);
                            }
                        }
                        ClientEvent::Disconnected { reason } => {
                            LatestState::lock(&state)
                                .failed
                                .get_or_insert(format!("B disconnected: {reason}"));
                            return;
                        }
                        _ => {}
                    }
                }
            })
        };

        let result = async {
            let started = Instant::now();
            let mut sender = tokio::spawn(updates_sender(pair.a.clone(), b_id, latest, updates));
            let (mut server_peak, mut sender_peak) = (0usize, 0usize);
            let mut sample = || -> Result<(), String> {
                let queued = server.host_info(b_id).ok_or("B left")?.queued_bytes;
                server_peak = server_peak.max(queued);
                sender_peak = sender_peak.max(pair.a.queued_bytes());
                Ok(())
            };
            let limit = started + WAIT + Duration::from_secs_f64(updates as f64 / UPDATE_RATE);
            while !sender.is_finished() {
                sample()?;
                if Instant::now() >= limit {
                    sender.abort();
                    return Err("the update sender stalled".to_string());
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let last_send = match (&mut sender).await {
                Ok(Ok(at)) => at,
                Ok(Err(error)) => return Err(error),
                Err(error) => return Err(format!("update sender task: {error}")),
            };
            fast.store(true, Ordering::Relaxed);
            let deadline = Instant::now() + DRAIN;
            let mut note = None;
            loop {
                sample()?;
                let (failed, done) = {
                    let state = LatestState::lock(&state);
                    (state.failed.clone(), state.done_at.is_some())
                };
                if let Some(failed) = failed {
                    return Err(failed);
                }
                if done {
                    break;
                }
                if Instant::now() >= deadline {
                    note = Some(format!(
                        "the last values had not all arrived after {} s",
                        DRAIN.as_secs()
                    ));
                    break;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let state = LatestState::lock(&state);
            Ok(LatestRun {
                sent: updates,
                delivered: state.delivered,
                delivered_bytes: state.delivered_bytes,
                server_peak,
                sender_peak,
                catch_up: state
                    .done_at
                    .map(|at| at.saturating_duration_since(last_send)),
                stale: state.stale,
                send_time: last_send - started,
                note,
            })
        }
        .await;
        pair.close().await;
        reader.abort();
        result
    })
}

// ---------------------------------------------------------------------------------------
// Reporting

/// A number rounded to one decimal for `results.json`.
fn number(value: f64) -> Value {
    if value.is_finite() {
        Value::from((value * 10.0).round() / 10.0)
    } else {
        Value::Null
    }
}

fn kib(bytes: f64) -> f64 {
    bytes / 1024.0
}

/// A queue size for a table: bytes when small, else KiB.
fn size(bytes: usize) -> String {
    if bytes < 10 << 10 {
        format!("{bytes} B")
    } else {
        format!("{:.0} KiB", kib(bytes as f64))
    }
}

fn record_hol(report: &mut Report, high: &Hol, low: &Hol, timing: Timing, errors: &[String]) {
    let mut rows = Vec::new();
    let mut notes = vec![format!(
        "Loopback, through the library server (own runtime, one worker; clients on another, \
         two workers), one relay-only group of A and B. B first reads nothing (its \
         `event_queue` is {SLOW_EVENT_QUEUE}, so its client stops reading the network) \
         while A sends {BULK_SIZE} B chat messages, `ReliableOrdered` on channel \
         {BULK_CHANNEL} at `Priority::Low`, until the server holds {} KiB for B. Then B \
         reads at full speed while A keeps that backlog topped up (more chat whenever the \
         server's queue to B is under {} KiB and A's own queue under {} KiB) and, after \
         {} ms, sends {MOVE_SIZE} B movement messages, `ReliableOrdered` on channel \
         {MOVE_CHANNEL}, at {MOVE_RATE:.0}/s for {:.1} s. Latency: one-way, from the send \
         stamp in the payload to B's event. High runs and Low-baseline runs alternate \
         ({} of each; a fresh server and clients every run).",
        BACKLOG >> 10,
        BACKLOG >> 10,
        SENDER_QUEUE_CAP >> 10,
        WARMUP.as_millis(),
        timing.window.as_secs_f64(),
        timing.rounds,
    )];
    notes.push(format!(
        "**Under backlog** (the p50, p99 and max columns): only the movement sent while the \
         server held at least {} KiB for B (read from `host_info(b).queued_bytes` just \
         before each send), so both rows compare like with like: B draining at full speed \
         sometimes outruns A's top-up and empties the backlog for a while. **all**: every \
         movement message. Server backlog: the server's queue to B sampled every 5 ms in \
         the window, mean (largest); chat: 1 KiB messages B received per second in the \
         window.",
        LOADED >> 10
    ));
    notes.push(
        "Low baseline: the movement in the chat's class, so it waits first in first out \
         behind the backlog at A and at the server. High: the scheduler sends it ahead of \
         the queued chat; what it still waits behind is what has already left the server's \
         queue (QUIC's stream window to B, about 1.25 MB, and B's client), which priorities \
         cannot reorder."
            .to_string(),
    );
    let dash = || "-".to_string();
    let cell = |l: &Latencies, p: f64| {
        if l.is_empty() {
            dash()
        } else {
            format!("{:.2}", ms(l.percentile_us(p)))
        }
    };
    for (key, label, hol) in [
        ("high", "High (channel 2)", high),
        ("low_baseline", "Low, baseline (channel 2)", low),
    ] {
        let prefix = format!("priority.head_of_line.{key}");
        let at = |l: &Latencies, p: f64| {
            if l.is_empty() {
                Value::Null
            } else {
                Value::from(l.percentile_us(p))
            }
        };
        report.set(&format!("{prefix}.p50_us"), at(&hol.loaded, 50.0));
        report.set(&format!("{prefix}.p99_us"), at(&hol.loaded, 99.0));
        report.set(&format!("{prefix}.max_us"), at(&hol.loaded, 100.0));
        report.set(
            &format!("{prefix}.messages_under_backlog"),
            hol.loaded.len(),
        );
        report.set(&format!("{prefix}.all_p50_us"), at(&hol.latencies, 50.0));
        report.set(&format!("{prefix}.all_p99_us"), at(&hol.latencies, 99.0));
        report.set(&format!("{prefix}.messages"), hol.delivered);
        report.set(&format!("{prefix}.sent"), hol.sent);
        if hol.runs == 0 {
            continue;
        }
        report.set(
            &format!("{prefix}.backlog_mean_kib"),
            number(kib(hol.backlog_mean)),
        );
        report.set(
            &format!("{prefix}.backlog_max_kib"),
            number(kib(hol.backlog_max as f64)),
        );
        report.set(
            &format!("{prefix}.chat_kib_per_sec"),
            number(kib(hol.bulk_rate)),
        );
        if hol.out_of_order > 0 {
            notes.push(format!(
                "{label}: {} movement messages arrived out of order",
                hol.out_of_order
            ));
        }
        if let Some(note) = &hol.note {
            report.set(&format!("{prefix}.errors"), note.clone());
            notes.push(format!("{label}: {note}"));
        }
        rows.push(vec![
            label.to_string(),
            format!("{} of {}", hol.delivered, hol.sent),
            hol.loaded.len().to_string(),
            cell(&hol.loaded, 50.0),
            cell(&hol.loaded, 99.0),
            cell(&hol.loaded, 100.0),
            cell(&hol.latencies, 50.0),
            cell(&hol.latencies, 99.0),
            format!(
                "{:.0} ({:.0}) KiB",
                kib(hol.backlog_mean),
                kib(hol.backlog_max as f64)
            ),
            format!("{:.1}", hol.bulk_rate / f64::from(1 << 20)),
        ]);
    }
    if !high.loaded.is_empty() && !low.loaded.is_empty() {
        let ratio = |p: f64| {
            low.loaded.percentile_us(p) as f64 / high.loaded.percentile_us(p).max(1) as f64
        };
        report.set("priority.head_of_line.p50_ratio", number(ratio(50.0)));
        report.set("priority.head_of_line.p99_ratio", number(ratio(99.0)));
        notes.push(format!(
            "Low baseline / High under the same backlog: p50 {}, p99 {} (above 1: High is \
             faster).",
            report::ratio(
                low.loaded.percentile_us(50.0) as f64,
                high.loaded.percentile_us(50.0) as f64
            ),
            report::ratio(
                low.loaded.percentile_us(99.0) as f64,
                high.loaded.percentile_us(99.0) as f64
            ),
        ));
    }
    if high.bulk_rate > 0.0 {
        notes.push(format!(
            "For scale: at the chat rate of the High runs, 1.25 MB (QUIC's stream window) \
             takes {:.1} ms to reach B, and the mean server backlog {:.1} ms more.",
            QUIC_WINDOW / high.bulk_rate * 1e3,
            high.backlog_mean / high.bulk_rate * 1e3,
        ));
    }
    if !errors.is_empty() {
        report.set("priority.head_of_line.errors", errors.join("; "));
        notes.extend(errors.iter().map(|e| format!("failed: {e}")));
    }
    report.table(Table {
        title: "Priority: movement behind a Low backlog at the server".into(),
        columns: [
            "movement",
            "delivered",
            "under backlog",
            "p50 ms",
            "p99 ms",
            "max ms",
            "p50 ms, all",
            "p99 ms, all",
            "server backlog for B, mean (max)",
            "chat MiB/s",
        ]
        .map(String::from)
        .to_vec(),
        rows,
        notes,
    });
}

fn record_latest(
    report: &mut Report,
    runs: &[(bool, LatestRun)],
    timing: Timing,
    errors: &[String],
) {
    let mut rows = Vec::new();
    let mut notes = vec![format!(
        "A sends {} position updates of {UPDATE_SIZE} B over {KEYS} keys (value n to key \
         n mod {KEYS}) at {UPDATE_RATE:.0}/s to B over the relay; B (`event_queue` \
         {SLOW_EVENT_QUEUE}) reads one event per {} ms while A sends, then reads at full \
         speed until it holds every key's last value. Peaks: the server's queue to B \
         (`host_info(b).queued_bytes`) and A's upload queue, sampled every 2 ms. Catch-up: \
         from A's last send until B held every key's last value. Stale: deliveries not newer \
         than one already delivered for their key.",
        timing.updates,
        SLOW_READ.as_millis(),
    )];
    notes.push(
        "Replacement acts on what is still queued (at A and at the server); what the server \
         has already handed to QUIC (up to the stream window to B, about 1.25 MB) is \
         delivered as sent, so the first 1.25 MB or so of updates reaches B whatever the \
         mode, and the server's queue only grows past that."
            .to_string(),
    );
    for (latest, run) in runs {
        let (key, label) = if *latest {
            ("latest", "`Latest { key }`")
        } else {
            ("reliable_ordered", "`ReliableOrdered`")
        };
        let prefix = format!("priority.latest.{key}");
        report.set(&format!("{prefix}.sent"), run.sent);
        report.set(&format!("{prefix}.delivered"), run.delivered);
        report.set(
            &format!("{prefix}.delivered_kib"),
            number(kib(run.delivered_bytes as f64)),
        );
        report.set(
            &format!("{prefix}.server_peak_kib"),
            number(kib(run.server_peak as f64)),
        );
        report.set(
            &format!("{prefix}.sender_peak_kib"),
            number(kib(run.sender_peak as f64)),
        );
        report.set(
            &format!("{prefix}.catch_up_us"),
            run.catch_up
                .map_or(Value::Null, |d| Value::from(d.as_micros() as u64)),
        );
        report.set(&format!("{prefix}.stale"), run.stale);
        report.set(
            &format!("{prefix}.send_ms"),
            number(run.send_time.as_secs_f64() * 1e3),
        );
        if let Some(note) = &run.note {
            report.set(&format!("{prefix}.errors"), note.clone());
            notes.push(format!("{label}: {note}"));
        }
        rows.push(vec![
            label.to_string(),
            run.sent.to_string(),
            format!(
                "{} ({:.1}%)",
                run.delivered,
                100.0 * run.delivered as f64 / run.sent.max(1) as f64
            ),
            format!("{:.0} KiB", kib(run.delivered_bytes as f64)),
            size(run.server_peak),
            size(run.sender_peak),
            run.catch_up
                .map_or_else(|| "-".into(), |d| format!("{:.1}", d.as_secs_f64() * 1e3)),
            run.stale.to_string(),
        ]);
    }
    if !errors.is_empty() {
        report.set("priority.latest.errors", errors.join("; "));
        notes.extend(errors.iter().map(|e| format!("failed: {e}")));
    }
    report.table(Table {
        title: "Latest-value replacement for a slow receiver".into(),
        columns: [
            "mode",
            "updates sent",
            "delivered",
            "payload delivered",
            "server queue for B, peak",
            "A's queue, peak",
            "catch-up ms",
            "stale",
        ]
        .map(String::from)
        .to_vec(),
        rows,
        notes,
    });
}
