//! Runs the `mmo` workload: starts the server and the bots on runtimes of their own, drives
//! the view logic through set-up, warm-up, the measured window and the drain, and reads
//! the counters and CPU clocks around the window.

use super::bot::{self, Bot, BotCounters, BotTotals};
use super::machine::{udp_drops, CpuClock};
use super::views::{Counts, Views};
use super::world::{self, Walker, TICK_HZ};
use super::{NEIGHBOURS, SEED};
use crate::churn::runtime;
use crate::cpu::{clock_ticks_per_sec, this_thread_cpu_ns, threads_cpu_ns};
use crate::stats::Latencies;
use peergroup_client::ServerTrust;
use peergroup_server::{Identity, Server, ServerConfig, ServerEvents, ServerStats};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::time::MissedTickBehavior;

/// Client endpoints (UDP sockets) the bots' connections share.
pub(super) const CLIENT_ENDPOINTS: usize = 8;
/// Handshakes under way at once while the bots connect (as the churn section).
const HANDSHAKES_IN_FLIGHT: usize = 32;
/// Keepalive interval of the bots (the client library's default).
const KEEPALIVE: Duration = Duration::from_secs(4);
/// QUIC idle timeout of the bots (the client library's and the server's default).
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on connecting and placing every bot.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on the completion of what is under way after the window: the server's ack
/// timeout, past which a change completes with a timeout anyway.
pub(super) const DRAIN_TIMEOUT: Duration = Duration::from_secs(16);
/// Events taken in one go before the driver looks at its tick again.
const EVENTS_PER_TURN: usize = 1_024;

/// CPU seconds over the window.
#[derive(Debug, Clone, Copy)]
pub(super) struct Cpu {
    /// The server's runtime threads.
    pub(super) server: f64,
    /// The thread running the view logic (ticks, events, `change_membership`).
    pub(super) driver: f64,
    /// The bots' runtime threads.
    pub(super) bots: f64,
    /// The whole machine, this process included.
    pub(super) machine: f64,
    /// This process, every thread.
    pub(super) process: f64,
}

/// The UDP ports of the server's socket and of the bots' sockets.
struct Ports {
    /// The server's one socket.
    server: u16,
    /// One per client endpoint.
    bots: Vec<u16>,
}

/// UDP datagrams over the window: sent each way, and dropped because a socket's receive
/// buffer was full.
#[derive(Debug, Clone, Copy)]
pub(super) struct Datagrams {
    /// Dropped at the server's socket (everything the bots send).
    pub(super) dropped_at_server: u64,
    /// Dropped at the bots' sockets.
    pub(super) dropped_at_bots: u64,
    /// Sent by the bots to the server (dropped ones included).
    pub(super) to_server: u64,
    /// Received by the bots from the server.
    pub(super) from_server: u64,
}

/// Server counters over the window.
#[derive(Debug, Clone, Copy)]
pub(super) struct ServerDelta {
    /// Membership notices sent (one per notice and receiver).
    pub(super) notices: u64,
    /// Frames those notices travelled in.
    pub(super) notice_frames: u64,
    /// Relay destinations refused.
    pub(super) relay_refused: u64,
    /// Messages relayed, one per destination (queued for the receiver; a newer Latest
    /// update may still replace one before it leaves).
    pub(super) relayed: u64,
}

impl ServerDelta {
    fn between(before: &ServerStats, after: &ServerStats) -> Self {
        Self {
            notices: after.notices_sent - before.notices_sent,
            notice_frames: after.notice_frames_sent - before.notice_frames_sent,
            relay_refused: after.relay_refused - before.relay_refused,
            relayed: after.relayed - before.relayed,
        }
    }
}

/// What one run measured.
pub(super) struct Measured {
    /// Workload before the window, once every bot was placed.
    pub(super) warmup: Duration,
    /// The measured window, as it ran.
    pub(super) window: Duration,
    /// Connecting and placing every bot.
    pub(super) setup: Duration,
    /// The view server's counts over the window.
    pub(super) views: Counts,
    /// Its counts over the whole run, after the drain.
    pub(super) totals: Counts,
    /// The bots' counts over the window.
    pub(super) bots: BotTotals,
    /// The server's counters over the window.
    pub(super) server: ServerDelta,
    /// CPU seconds over the window.
    pub(super) cpu: Cpu,
    /// UDP datagrams over the window.
    pub(super) datagrams: Datagrams,
    /// See [`Views::batch_completion`], µs.
    pub(super) batch_completion: Latencies,
    /// See [`Views::tick_work`], µs.
    pub(super) tick_work: Latencies,
    /// See [`Views::batch_apply`], µs.
    pub(super) batch_apply: Latencies,
    /// Changes still waiting for their completion after the drain.
    pub(super) still_pending: usize,
}

impl Measured {
    /// Changes made by the ticks (or view groups' creations) that did not complete Ok.
    pub(super) fn failed_ops(&self) -> u64 {
        self.totals.failed + self.still_pending as u64
    }
}

/// Starts the server and the bots, runs the workload, and stops everything.
pub(super) fn measure(bots: usize, warmup: Duration, window: Duration) -> Result<Measured, String> {
    let server_rt = runtime("mmo-server", 2)?;
    let bots_rt = runtime("mmo-bots", 2)?;
    let identity =
        Identity::generate(&["peergroup"]).map_err(|e| format!("server identity: {e}"))?;
    let mut config = ServerConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)), identity);
    // Every bot connects from 127.0.0.1: one source.
    config.admission.max_clients_per_source = config.limits.max_clients;
    let (server, events) = server_rt
        .block_on(Server::start(config))
        .map_err(|e| format!("server start: {e}"))?;

    let endpoints = {
        let _guard = bots_rt.enter();
        let mut endpoints = Vec::with_capacity(CLIENT_ENDPOINTS);
        for _ in 0..CLIENT_ENDPOINTS {
            let mut config = peergroup_client::raw_quic_client_config(&ServerTrust::Fingerprint(
                server.fingerprint(),
            ))
            .map_err(|e| format!("client TLS config: {e}"))?;
            // Keepalives and idle timeout as the client library's defaults: a bot with
            // nothing to send (after the window, while changes complete) stays connected.
            let mut transport = quinn::TransportConfig::default();
            transport
                .keep_alive_interval(Some(KEEPALIVE))
                .max_idle_timeout(Some(
                    IDLE_TIMEOUT
                        .try_into()
                        .map_err(|e| format!("idle timeout: {e}"))?,
                ));
            config.transport_config(Arc::new(transport));
            let mut endpoint = crate::scale::client_endpoint()?;
            endpoint.set_default_client_config(config);
            endpoints.push(endpoint);
        }
        endpoints
    };
    let handshakes = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES_IN_FLIGHT));
    let publishing = Arc::new(AtomicBool::new(false));
    let size = world::world_size_for(bots, NEIGHBOURS);
    let counters: Vec<Arc<BotCounters>> = (0..bots).map(|_| Arc::default()).collect();
    let connections = Arc::new(Mutex::new(Vec::with_capacity(bots)));
    for (i, counters) in counters.iter().enumerate() {
        let bot = Bot {
            endpoint: endpoints[i % CLIENT_ENDPOINTS].clone(),
            server: server.local_addr(),
            handshakes: handshakes.clone(),
            walker: Walker::new(SEED, i as u64, size),
            publishing: publishing.clone(),
            counters: counters.clone(),
            connections: connections.clone(),
        };
        bots_rt.spawn(async move {
            if let Err(error) = bot::run(bot).await {
                tracing::warn!(%error, "a bot ended");
            }
        });
    }

    let bot_ports: Vec<u16> = endpoints
        .iter()
        .filter_map(|e| e.local_addr().ok())
        .map(|a| a.port())
        .collect();
    let ports = Ports {
        server: server.local_addr().port(),
        bots: bot_ports,
    };
    // UDP datagrams so far, to the server and from it, as the bots' connections count them.
    let datagrams = || {
        let connections = connections.lock().unwrap_or_else(|p| p.into_inner());
        connections.iter().fold((0, 0), |(up, down), c| {
            let stats = c.stats();
            (up + stats.udp_tx.datagrams, down + stats.udp_rx.datagrams)
        })
    };
    let result = server_rt.block_on(drive(
        &server,
        events,
        &counters,
        &publishing,
        &ports,
        &datagrams,
        (warmup, window),
    ));
    connections
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clear();

    for endpoint in &endpoints {
        endpoint.close(0u32.into(), b"done");
    }
    server.shutdown();
    drop(server);
    bots_rt.shutdown_timeout(Duration::from_secs(2));
    server_rt.shutdown_timeout(Duration::from_secs(2));
    result
}

/// The view logic from set-up to drain, measuring the window in between.
async fn drive(
    server: &Server,
    mut events: ServerEvents,
    bots: &[Arc<BotCounters>],
    publishing: &AtomicBool,
    ports: &Ports,
    datagrams: &dyn Fn() -> (u64, u64),
    (warmup, window): (Duration, Duration),
) -> Result<Measured, String> {
    let mut views = Views::new(server.clone());
    let mut tick = tokio::time::interval(Duration::from_secs(1) / TICK_HZ);
    // As the example: a late tick is not made up for, the next one recomputes everything.
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);

    // Every bot connects before any publishes, so the handshakes do not compete with the
    // workload (and the bots that connect first do not warm up longer than the others).
    let started = Instant::now();
    let deadline = started + SETUP_TIMEOUT;
    let bots_wanted = bots.len();
    let connected = |v: &Views| v.connected >= bots_wanted;
    if !turn_until(&mut views, &mut events, &mut tick, deadline, connected).await? {
        return Err(format!(
            "set-up timed out: {} of {bots_wanted} bots connected",
            views.connected
        ));
    }
    let connecting = started.elapsed();
    publishing.store(true, Ordering::Relaxed);
    let placed = |v: &Views| v.placed() >= bots_wanted;
    if !turn_until(&mut views, &mut events, &mut tick, deadline, placed).await? {
        return Err(format!(
            "set-up timed out: {} of {bots_wanted} bots placed",
            views.placed()
        ));
    }
    let setup = started.elapsed();
    eprintln!(
        "   {bots_wanted} bots connected in {:.1} s and placed in {:.1} s",
        connecting.as_secs_f64(),
        setup.as_secs_f64()
    );
    let deadline = Instant::now() + warmup;
    turn_until(&mut views, &mut events, &mut tick, deadline, |_| false).await?;
    eprintln!(
        "   warm-up done: {} changes under way, {:.1} watchers per view",
        views.pending(),
        views.counts.mean_view_size()
    );

    let ticks = clock_ticks_per_sec();
    let cpu_before = (
        threads_cpu_ns("mmo-server"),
        this_thread_cpu_ns(),
        threads_cpu_ns("mmo-bots"),
        CpuClock::read(),
    );
    let drops_before = (udp_drops(&[ports.server]), udp_drops(&ports.bots));
    let datagrams_before = datagrams();
    let counts_before = views.counts;
    let bots_before = BotTotals::read(bots);
    let stats_before = server.stats();
    let window_started = Instant::now();
    views.recording = true;
    turn_until(
        &mut views,
        &mut events,
        &mut tick,
        window_started + window,
        |_| false,
    )
    .await?;
    views.recording = false;
    let window = window_started.elapsed();
    let (machine, process) = CpuClock::read().since(cpu_before.3, ticks);
    let secs = |ns: u64| ns as f64 / 1e9;
    let cpu = Cpu {
        machine,
        process,
        server: secs(threads_cpu_ns("mmo-server").saturating_sub(cpu_before.0)),
        driver: secs(this_thread_cpu_ns().saturating_sub(cpu_before.1)),
        bots: secs(threads_cpu_ns("mmo-bots").saturating_sub(cpu_before.2)),
    };
    let datagrams_after = datagrams();
    let datagrams_window = Datagrams {
        dropped_at_server: udp_drops(&[ports.server]).saturating_sub(drops_before.0),
        dropped_at_bots: udp_drops(&ports.bots).saturating_sub(drops_before.1),
        to_server: datagrams_after.0.saturating_sub(datagrams_before.0),
        from_server: datagrams_after.1.saturating_sub(datagrams_before.1),
    };
    let counts = views.counts.since(counts_before);
    let bots_window = BotTotals::read(bots).since(bots_before);
    let server_window = ServerDelta::between(&stats_before, &server.stats());

    // No more ticks or positions: what is under way completes (the bots keep acking).
    publishing.store(false, Ordering::Relaxed);
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while views.pending() > 0 {
        let wait = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(wait, events.next()).await {
            Ok(Some(event)) => views.handle(event),
            Ok(None) => return Err("the server's event stream ended".into()),
            Err(_) => break,
        }
    }
    Ok(Measured {
        warmup,
        window,
        setup,
        views: counts,
        totals: views.counts,
        bots: bots_window,
        server: server_window,
        cpu,
        datagrams: datagrams_window,
        still_pending: views.pending(),
        batch_completion: std::mem::take(&mut views.batch_completion),
        tick_work: std::mem::take(&mut views.tick_work),
        batch_apply: std::mem::take(&mut views.batch_apply),
    })
}

/// Runs ticks and takes events until `done` or `deadline`; whether `done` was reached.
async fn turn_until(
    views: &mut Views,
    events: &mut ServerEvents,
    tick: &mut tokio::time::Interval,
    deadline: Instant,
    done: impl Fn(&Views) -> bool,
) -> Result<bool, String> {
    let until = tokio::time::sleep_until(deadline.into());
    tokio::pin!(until);
    loop {
        if done(views) {
            return Ok(true);
        }
        tokio::select! {
            // A due tick goes first, so a stream of events cannot hold it back.
            biased;
            _ = tick.tick() => views.tick(),
            event = events.next() => {
                let Some(event) = event else {
                    return Err("the server's event stream ended".into());
                };
                views.handle(event);
                for _ in 1..EVENTS_PER_TURN {
                    match events.try_next() {
                        Some(event) => views.handle(event),
                        None => break,
                    }
                }
            }
            _ = &mut until => return Ok(false),
        }
    }
}
