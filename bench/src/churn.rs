//! Group churn: join and leave operations per second with every ack completed, for 1,000
//! clients in 100 groups (the MMO view-group pattern: groups of about 10 that clients
//! keep entering and leaving).
//!
//! Two measurements of the same pattern:
//! - End to end: a `peergroup_server::Server` in-process on its own runtime, and 1,000
//!   lightweight raw protocol clients (QUIC connections sharing a few quinn endpoints, on
//!   another runtime) that send `Hello` and ack every `MemberJoined` at once. The driver
//!   calls `join_group`/`leave_group` on the server and counts a join as done when its
//!   `JoinAckComplete` arrives, a leave when `leave_group` returns (leaves need no acks).
//!   At most [`JOINS_IN_FLIGHT`] joins wait for their acks at a time.
//! - The sans-IO `Registry` alone: the same operations with every ack fed back
//!   synchronously, no encoding and no IO. This is the core's ceiling.

use crate::cpu::{this_thread_cpu_ns, threads_cpu_ns};
use crate::report::{rate, Report, Table};
use crate::stats::Latencies;
use crate::Mode;
use bytes::{Bytes, BytesMut};
use peergroup_client::ServerTrust;
use peergroup_protocol::{
    decode_body, encode_frame, frame_to_bytes, ClientToServer, Fingerprint, FrameDecoder, GroupId,
    Hello, HostId, ServerToClient, DEFAULT_MAX_FRAME_LEN, PROTOCOL_VERSION,
};
use peergroup_server::registry::{Action, Registry, RegistryConfig};
use peergroup_server::{
    ChangeOutcome, GroupOptions, Identity, JoinOutcome, MembershipBatch, Server, ServerConfig,
    ServerEvent, ServerEvents,
};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Connected clients.
const CLIENTS: usize = 1_000;
/// Groups.
const GROUPS: usize = 100;
/// Members a group is kept around.
const GROUP_SIZE: usize = 10;
/// Client endpoints (UDP sockets) the connections share.
const CLIENT_ENDPOINTS: usize = 8;
/// Joins waiting for their acks at most.
const JOINS_IN_FLIGHT: usize = 256;
/// Handshakes under way at once while the clients connect.
const HANDSHAKES_IN_FLIGHT: usize = 32;
/// Joins timed one at a time after the window.
const UNLOADED_JOINS: u64 = 200;
/// Operations per batch in the batched measurement (one MMO tick's worth).
const BATCH_SIZE: usize = 1_000;
/// Batches timed one at a time after the batched window.
const UNLOADED_BATCHES: usize = 20;
/// Bound on each set-up phase (connecting, the first joins).
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs the section.
pub fn run(mode: Mode, report: &mut Report, _out: &Path) -> Result<(), String> {
    let core = registry_churn(mode.pick(Duration::from_secs(1), Duration::from_secs(3)));
    eprintln!(
        "   registry alone: {} ops/s ({} joins, {} leaves in {:.1} s)",
        rate(core.ops_per_sec()),
        core.joins,
        core.leaves,
        core.window.as_secs_f64()
    );
    let (net, batched) = network_churn(mode.pick(Duration::from_secs(5), Duration::from_secs(20)))?;
    for (name, r) in [("one at a time", &net), ("batched", &batched)] {
        eprintln!(
            "   end to end, {name}: {} ops/s ({} joins, {} leaves in {:.1} s, {} failed)",
            rate(r.ops_per_sec()),
            r.joins,
            r.leaves,
            r.window.as_secs_f64(),
            r.failed
        );
    }

    // What bare QUIC allows batched churn: one frame out and one back per client per batch.
    let floor = crate::fanout::measure(mode.pick(Duration::from_secs(2), Duration::from_secs(5)))?;
    let floor_ops = floor.rounds_per_sec * BATCH_SIZE as f64;
    eprintln!(
        "   floor, bare quinn: {:.0} rounds/s of one {}-client fan-out = {} ops/s at {BATCH_SIZE} ops per batch ({:.0} µs server CPU per round)",
        floor.rounds_per_sec,
        crate::fanout::CLIENTS,
        rate(floor_ops),
        floor.server_cpu_us_per_round
    );

    let ops = |r: &Outcome| (r.joins + r.leaves).max(1) as f64;
    report.set("churn.ops_per_sec", net.ops_per_sec().round());
    report.set("churn.batched_ops_per_sec", batched.ops_per_sec().round());
    report.set("churn.registry_ops_per_sec", core.ops_per_sec().round());
    report.set("churn.quinn_floor_ops_per_sec", floor_ops.round());
    report.set(
        "churn.batched_share_of_quinn_floor",
        (batched.ops_per_sec() / floor_ops.max(1.0) * 100.0).round() / 100.0,
    );
    report.set("churn.join_ack_p50_us", net.latencies.percentile_us(50.0));
    report.set("churn.join_ack_p99_us", net.latencies.percentile_us(99.0));
    if !batched.batch_latencies.is_empty() {
        report.set(
            "churn.batch_last_completion_p50_us",
            batched.batch_latencies.percentile_us(50.0),
        );
        report.set(
            "churn.batch_last_completion_p99_us",
            batched.batch_latencies.percentile_us(99.0),
        );
    }
    // Keys: `churn.X` one at a time, `churn.batched_X` batched.
    for (prefix, r) in [("churn.", &net), ("churn.batched_", &batched)] {
        let round = |x: f64, places: i32| (x * 10f64.powi(places)).round() / 10f64.powi(places);
        if let Some((down, up)) = r.datagrams {
            let per_op = (down + up) as f64 / ops(r);
            report.set(&format!("{prefix}datagrams_per_op"), round(per_op, 1));
        }
        if let Some(cpu) = r.cpu {
            let us = (cpu.server + cpu.driver) * 1e6 / ops(r);
            report.set(&format!("{prefix}server_cpu_us_per_op"), us.round());
        }
        if let Some((notices, frames)) = r.notices {
            let notices_per_op = round(notices as f64 / ops(r), 2);
            report.set(&format!("{prefix}notices_per_op"), notices_per_op);
            let frames_per_op = round(frames as f64 / ops(r), 2);
            report.set(&format!("{prefix}notice_frames_per_op"), frames_per_op);
        }
    }

    let us_per_op = |seconds: f64, r: &Outcome| format!("{:.1}", seconds * 1e6 / ops(r));
    let per_op =
        |n: Option<u64>, r: &Outcome| n.map_or("-".into(), |n| format!("{:.1}", n as f64 / ops(r)));
    let row = |name: &str, r: &Outcome| {
        let (p50, p99) = if r.latencies.is_empty() {
            ("-".into(), "-".into())
        } else {
            (
                r.latencies.percentile_us(50.0).to_string(),
                r.latencies.percentile_us(99.0).to_string(),
            )
        };
        let (server_cpu, client_cpu) = match r.cpu {
            Some(cpu) => (
                us_per_op(cpu.server + cpu.driver, r),
                us_per_op(cpu.clients, r),
            ),
            // The registry alone runs on one busy thread.
            None => (us_per_op(r.window.as_secs_f64(), r), "-".into()),
        };
        vec![
            name.to_string(),
            rate(r.ops_per_sec()),
            r.joins.to_string(),
            r.leaves.to_string(),
            format!("{:.1}", r.window.as_secs_f64()),
            p50,
            p99,
            server_cpu,
            client_cpu,
            per_op(r.datagrams.map(|(down, up)| down + up), r),
            per_op(r.notices.map(|n| n.0), r),
            per_op(r.notices.map(|n| n.1).filter(|f| *f > 0), r),
        ]
    };
    let mut unloaded_row = vec![String::new(); 12];
    unloaded_row[0] = format!("peergroup-server, one join at a time ({UNLOADED_JOINS} joins)");
    if !net.unloaded.is_empty() {
        unloaded_row[5] = net.unloaded.percentile_us(50.0).to_string();
        unloaded_row[6] = net.unloaded.percentile_us(99.0).to_string();
        report.set(
            "churn.join_ack_unloaded_p50_us",
            net.unloaded.percentile_us(50.0),
        );
        report.set(
            "churn.join_ack_unloaded_p99_us",
            net.unloaded.percentile_us(99.0),
        );
    }
    let mut ratio_row = vec![String::new(); 12];
    ratio_row[0] = "batched end to end / Registry".into();
    ratio_row[1] = crate::report::ratio(batched.ops_per_sec(), core.ops_per_sec());
    let mut notes = vec![format!(
        "An operation is a join completed by its `JoinAckComplete` or a leave completed by \
         its `LeaveAckComplete` (every host told acked). Each picks a random group and \
         keeps it near {GROUP_SIZE} members: a join of a random non-member below, a leave \
         of a random settled member above, either at {GROUP_SIZE}. Relay-only groups \
         (`direct_p2p: false`). End to end: {CLIENTS} raw protocol clients on \
         {CLIENT_ENDPOINTS} client endpoints ack every notice they read, cumulatively, one \
         ack per read. One at a time: `join_group`/`leave_group` calls, at most \
         {JOINS_IN_FLIGHT} operations under way. Batched: `change_membership` with \
         {BATCH_SIZE} operations per batch, at most two batches under way; the latency \
         columns are per operation (call to completion) and the batch's last completion is \
         reported beside. {} + {} operations ended otherwise than Ok. Target: at least \
         100,000 operations per second.",
        net.failed, batched.failed
    )];
    if !batched.batch_latencies.is_empty() && !batched.unloaded.is_empty() {
        notes.push(format!(
            "A batch of {BATCH_SIZE} operations, from `change_membership` to its last \
             completion: p50 {} µs, p99 {} µs with two batches under way; p50 {} µs, p99 \
             {} µs one batch at a time ({UNLOADED_BATCHES} batches).",
            batched.batch_latencies.percentile_us(50.0),
            batched.batch_latencies.percentile_us(99.0),
            batched.unloaded.percentile_us(50.0),
            batched.unloaded.percentile_us(99.0)
        ));
        report.set(
            "churn.batch_unloaded_last_completion_p50_us",
            batched.unloaded.percentile_us(50.0),
        );
        report.set(
            "churn.batch_unloaded_last_completion_p99_us",
            batched.unloaded.percentile_us(99.0),
        );
    }
    notes.push(format!(
        "The floor under batched churn: bare quinn on the same machine, a server writing one \
         {}-byte frame to each of {} clients and each answering with one {}-byte frame (what \
         a batch costs in packets: a frame of notices and an ack per client), two rounds \
         under way: {:.1} rounds/s, {:.0} µs of server CPU per round, so at most {} ops/s \
         at {BATCH_SIZE} operations per batch. Batched churn reached {:.2} of it.",
        crate::fanout::FRAME,
        crate::fanout::CLIENTS,
        crate::fanout::REPLY,
        floor.rounds_per_sec,
        floor.server_cpu_us_per_round,
        rate(floor_ops),
        batched.ops_per_sec() / floor_ops.max(1.0)
    ));
    notes.push(format!(
        "Pairs (two hosts that share or recently shared a group; they linger 10 s) at the \
         end of the window: {} end to end, {} for the Registry alone.",
        net.pairs, core.pairs
    ));
    for (name, r) in [("one at a time", &net), ("batched", &batched)] {
        if let Some(cpu) = r.cpu {
            notes.push(format!(
                "CPU, {name} ({:.1} s on {} cores): server runtime {:.2} s, driver thread \
                 (registry operations and their dispatch under the server's lock) {:.2} s, \
                 client runtime {:.2} s. Server CPU per op counts the server runtime and the \
                 driver; the clients and the server share the machine.",
                r.window.as_secs_f64(),
                std::thread::available_parallelism().map_or(0, |n| n.get()),
                cpu.server,
                cpu.driver,
                cpu.clients
            ));
        }
    }
    report.table(Table {
        title: "Group churn (1,000 clients, 100 groups of about 10)".into(),
        columns: vec![
            "measured".into(),
            "ops/s".into(),
            "joins".into(),
            "leaves".into(),
            "window s".into(),
            "op→ack p50 µs".into(),
            "op→ack p99 µs".into(),
            "server CPU µs/op".into(),
            "client CPU µs/op".into(),
            "datagrams/op".into(),
            "notices/op".into(),
            "notice frames/op".into(),
        ],
        rows: vec![
            row(
                "peergroup-server end to end, one at a time (QUIC, loopback)",
                &net,
            ),
            unloaded_row,
            row("peergroup-server end to end, batched", &batched),
            row("sans-IO Registry alone (acks fed back at once)", &core),
            ratio_row,
        ],
        notes,
    });
    Ok(())
}

/// What one measurement counted.
struct Outcome {
    joins: u64,
    leaves: u64,
    failed: u64,
    window: Duration,
    latencies: Latencies,
    /// CPU seconds over the window: server runtime threads, client runtime threads, and
    /// the driver thread (which runs the registry operations under the server's lock).
    cpu: Option<CpuSplit>,
    /// UDP datagrams over the window: server to clients, clients to server.
    datagrams: Option<(u64, u64)>,
    /// Join to `JoinAckComplete` with one join at a time, after the window.
    unloaded: Latencies,
    /// Pairs (lingering ones included) at the end of the window.
    pairs: usize,
    /// Membership notices and the frames they travelled in, over the window.
    notices: Option<(u64, u64)>,
    /// Batched only: from `change_membership` to the batch's last completion.
    batch_latencies: Latencies,
}

/// Where the CPU went during the end-to-end window, in seconds.
#[derive(Debug, Clone, Copy)]
struct CpuSplit {
    server: f64,
    clients: f64,
    driver: f64,
}

impl Outcome {
    fn ops_per_sec(&self) -> f64 {
        (self.joins + self.leaves) as f64 / self.window.as_secs_f64().max(1e-9)
    }
}

/// SplitMix64: enough randomness for picking groups and members, without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}

/// One group as the driver sees it.
struct GroupSim {
    id: GroupId,
    /// Members whose join completed: they may be made to leave.
    settled: Vec<HostId>,
    /// Members whose join waits for acks.
    pending: Vec<HostId>,
}

/// The next operation of the churn pattern.
enum Op {
    Join(usize, HostId),
    Leave(usize, HostId),
}

/// The driver's picture of every group, and the choice of the next operation.
struct Pattern {
    groups: Vec<GroupSim>,
    index: HashMap<GroupId, usize>,
    hosts: Vec<HostId>,
    rng: Rng,
}

impl Pattern {
    /// Groups whose initial members (already joined and settled) are given.
    fn new(groups: Vec<(GroupId, Vec<HostId>)>, hosts: Vec<HostId>, seed: u64) -> Self {
        let index = groups
            .iter()
            .enumerate()
            .map(|(i, (id, _))| (*id, i))
            .collect();
        let groups = groups
            .into_iter()
            .map(|(id, settled)| GroupSim {
                id,
                settled,
                pending: Vec::new(),
            })
            .collect();
        Self {
            groups,
            index,
            hosts,
            rng: Rng(seed),
        }
    }

    /// Picks the next operation and records it as under way.
    fn next_op(&mut self) -> Op {
        let g = self.rng.below(self.groups.len());
        let size = self.groups[g].settled.len() + self.groups[g].pending.len();
        let leave = match size.cmp(&GROUP_SIZE) {
            std::cmp::Ordering::Less => false,
            std::cmp::Ordering::Greater => true,
            std::cmp::Ordering::Equal => self.rng.next() & 1 == 0,
        };
        if leave && !self.groups[g].settled.is_empty() {
            let settled = &mut self.groups[g].settled;
            let i = self.rng.below(settled.len());
            return Op::Leave(g, settled.swap_remove(i));
        }
        loop {
            let host = self.hosts[self.rng.below(self.hosts.len())];
            let group = &self.groups[g];
            if !group.settled.contains(&host) && !group.pending.contains(&host) {
                self.groups[g].pending.push(host);
                return Op::Join(g, host);
            }
        }
    }

    /// A join ended: the member is settled (`ok`) or no longer a member.
    fn join_done(&mut self, group: GroupId, member: HostId, ok: bool) {
        let Some(&g) = self.index.get(&group) else {
            return;
        };
        let state = &mut self.groups[g];
        if let Some(i) = state.pending.iter().position(|h| *h == member) {
            state.pending.swap_remove(i);
            if ok {
                state.settled.push(member);
            }
        }
    }
}

// ---- the sans-IO registry alone ----------------------------------------------------------

/// Carries out the registry's actions: every notice is acked at once, as a client would
/// (cumulatively, one ack per host and round). Returns the joins and the leaves that
/// completed.
fn settle_registry(
    registry: &mut Registry,
    acks: &mut HashMap<HostId, u64>,
    now: Instant,
) -> (u64, u64) {
    let mut completed = (0, 0);
    let mut told = Vec::new();
    loop {
        while let Some(action) = registry.poll_action() {
            match action {
                Action::Notice { to, .. } => {
                    *acks.entry(to).or_default() += 1;
                    told.push(to);
                }
                Action::Event(ServerEvent::JoinAckComplete { result: Ok(()), .. }) => {
                    completed.0 += 1;
                }
                Action::Event(ServerEvent::LeaveAckComplete { result: Ok(()), .. }) => {
                    completed.1 += 1;
                }
                _ => {}
            }
        }
        if told.is_empty() {
            return completed;
        }
        told.sort_unstable();
        told.dedup();
        for host in told.drain(..) {
            // As the server's connection task hands it over: one decoded frame.
            let ack = ClientToServer::Ack {
                notices: acks[&host],
            };
            registry
                .handle_frame(host, ack, now)
                .expect("acks only what was sent");
        }
    }
}

/// The churn pattern on the registry alone for `window`.
fn registry_churn(window: Duration) -> Outcome {
    let mut registry = Registry::new(RegistryConfig::default(), Instant::now());
    let seen_at = SocketAddr::from(([127, 0, 0, 1], 40_000));
    let hosts: Vec<HostId> = (0..CLIENTS)
        .map(|i| {
            let mut identity = [0u8; 32];
            identity[..8].copy_from_slice(&(i as u64).to_be_bytes());
            registry.handle_connect(Fingerprint(identity), seen_at, Bytes::new())
        })
        .collect();
    let options = GroupOptions {
        direct_p2p: false,
        ..GroupOptions::default()
    };
    let mut rng = Rng(0x5eed);
    let mut shuffled = hosts.clone();
    rng.shuffle(&mut shuffled);
    let mut acks = HashMap::new();
    let groups: Vec<(GroupId, Vec<HostId>)> = shuffled
        .chunks(CLIENTS / GROUPS)
        .map(|members| {
            let now = Instant::now();
            let group = registry
                .create_group(members, options, Bytes::new(), Bytes::new(), now)
                .expect("every member is connected");
            let _ = settle_registry(&mut registry, &mut acks, now);
            (group, members.to_vec())
        })
        .collect();
    let mut pattern = Pattern::new(groups, hosts, 0xc0ffee);

    let (mut joins, mut leaves) = (0u64, 0u64);
    let notices_before = registry.counters().notices;
    let started = Instant::now();
    let mut now = started;
    while now - started < window {
        for _ in 0..256 {
            let done = match pattern.next_op() {
                Op::Join(g, host) => {
                    let group = pattern.groups[g].id;
                    let outcome = registry.join_group(group, host, Bytes::new(), now);
                    let done = settle_registry(&mut registry, &mut acks, now);
                    let ok = matches!(outcome, Ok(JoinOutcome::Joined)) && done.0 > 0;
                    pattern.join_done(group, host, ok);
                    done
                }
                Op::Leave(g, host) => {
                    let group = pattern.groups[g].id;
                    let _ = registry.leave_group(group, host, now);
                    settle_registry(&mut registry, &mut acks, now)
                }
            };
            joins += done.0;
            leaves += done.1;
        }
        now = Instant::now();
        // As the server's timer task would: expire what is due (nothing in a short run).
        registry.handle_timeout(now);
        let done = settle_registry(&mut registry, &mut acks, now);
        joins += done.0;
        leaves += done.1;
    }
    let notices = registry.counters().notices - notices_before;
    Outcome {
        joins,
        leaves,
        failed: 0,
        window: now - started,
        latencies: Latencies::default(),
        cpu: None,
        datagrams: None,
        unloaded: Latencies::default(),
        pairs: registry.pair_count(),
        notices: Some((notices, 0)),
        batch_latencies: Latencies::default(),
    }
}

// ---- end to end --------------------------------------------------------------------------

/// A multi-threaded runtime of `workers` threads named `name`, so their CPU time can be read
/// by name ([`crate::cpu::threads_cpu_ns`]).
pub(crate) fn runtime(name: &str, workers: usize) -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name(name)
        .enable_all()
        .build()
        .map_err(|e| format!("{name} runtime: {e}"))
}

/// The churn pattern against a real server and 1,000 connected clients for `window`.
fn network_churn(window: Duration) -> Result<(Outcome, Outcome), String> {
    let server_rt = runtime("churn-server", 2)?;
    let client_rt = runtime("churn-clients", 2)?;
    let identity =
        Identity::generate(&["peergroup"]).map_err(|e| format!("server identity: {e}"))?;
    let config = ServerConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)), identity);
    let (server, events) = server_rt
        .block_on(Server::start(config))
        .map_err(|e| format!("server start: {e}"))?;

    let endpoints = {
        let _guard = client_rt.enter();
        let mut endpoints = Vec::with_capacity(CLIENT_ENDPOINTS);
        for _ in 0..CLIENT_ENDPOINTS {
            let config = peergroup_client::raw_quic_client_config(&ServerTrust::Fingerprint(
                server.fingerprint(),
            ))
            .map_err(|e| format!("client TLS config: {e}"))?;
            let mut endpoint = crate::scale::client_endpoint()?;
            endpoint.set_default_client_config(config);
            endpoints.push(endpoint);
        }
        endpoints
    };
    let limit = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES_IN_FLIGHT));
    let connections = Arc::new(Mutex::new(Vec::with_capacity(CLIENTS)));
    let server_addr = server.local_addr();
    for i in 0..CLIENTS {
        let endpoint = endpoints[i % CLIENT_ENDPOINTS].clone();
        let limit = limit.clone();
        let connections = connections.clone();
        client_rt.spawn(async move {
            if let Err(error) = acking_client(endpoint, server_addr, limit, connections).await {
                tracing::debug!(%error, "churn client ended");
            }
        });
    }
    // Datagrams so far, server to clients and clients to server, as the clients count them.
    let datagrams = || {
        let connections = connections.lock().unwrap_or_else(|p| p.into_inner());
        connections.iter().fold((0, 0), |(down, up), c| {
            let stats = c.stats();
            (down + stats.udp_rx.datagrams, up + stats.udp_tx.datagrams)
        })
    };

    let result = server_rt.block_on(drive(&server, events, window, &datagrams));
    connections
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clear();

    for endpoint in &endpoints {
        endpoint.close(0u32.into(), b"done");
    }
    server.shutdown();
    drop(server);
    client_rt.shutdown_timeout(Duration::from_secs(2));
    server_rt.shutdown_timeout(Duration::from_secs(2));
    result
}

/// A raw protocol client: hello, then an ack (on its control stream) for the notices it reads, written
/// together for each chunk read.
async fn acking_client(
    endpoint: quinn::Endpoint,
    server: SocketAddr,
    limit: Arc<tokio::sync::Semaphore>,
    connections: Arc<Mutex<Vec<quinn::Connection>>>,
) -> Result<(), String> {
    let (connection, _send, mut control, mut recv) = {
        let _permit = limit.acquire().await.map_err(|e| e.to_string())?;
        let connection = endpoint
            .connect(server, "peergroup")
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        let (mut send, recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
        let hello = ClientToServer::Hello(Hello {
            version: PROTOCOL_VERSION,
            login: Bytes::new(),
        });
        let frame = frame_to_bytes(&hello, DEFAULT_MAX_FRAME_LEN).map_err(|e| e.to_string())?;
        send.write_all(&frame).await.map_err(|e| e.to_string())?;
        // Acks go on the control stream, which the server allows once logged in. The main
        // stream stays open (`_send`): finishing it would end the session.
        let control = connection.open_uni().await.map_err(|e| e.to_string())?;
        connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(connection.clone());
        (connection, send, control, recv)
    };
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
    let mut acks = BytesMut::new();
    let (mut taken, mut acked) = (0u64, 0u64);
    loop {
        let chunk = match recv.read_chunk(usize::MAX, true).await {
            Ok(Some(chunk)) => chunk,
            Ok(None) | Err(_) => break,
        };
        decoder.push(&chunk.bytes);
        while let Some(body) = decoder.next_body().map_err(|e| e.to_string())? {
            if let ServerToClient::Notices(notices) =
                decode_body(&body).map_err(|e| e.to_string())?
            {
                taken += notices.len() as u64;
            }
        }
        if taken > acked {
            encode_frame(
                &ClientToServer::Ack { notices: taken },
                DEFAULT_MAX_FRAME_LEN,
                &mut acks,
            )
            .map_err(|e| e.to_string())?;
            control.write_all(&acks).await.map_err(|e| e.to_string())?;
            acks.clear();
            acked = taken;
        }
    }
    drop(connection);
    Ok(())
}

/// The next server event within `deadline`.
async fn next_event(events: &mut ServerEvents, deadline: Instant) -> Result<ServerEvent, String> {
    let wait = deadline.saturating_duration_since(Instant::now());
    match tokio::time::timeout(wait, events.next()).await {
        Ok(Some(event)) => Ok(event),
        Ok(None) => Err("the server's event stream ended".into()),
        Err(_) => Err("timed out waiting for server events".into()),
    }
}

/// Operations of the churn under way, and when each batch started.
#[derive(Default)]
struct InFlight {
    /// Joins waiting for their completion: when they were asked for, and their batch.
    joins: HashMap<(GroupId, HostId), (Instant, usize)>,
    /// Leaves waiting for theirs (a host may leave the same group twice before the first
    /// completes, so they are counted).
    leaves: HashMap<(GroupId, HostId), Vec<(Instant, usize)>>,
    /// Per batch: when it was applied and how many of its operations are still under way.
    batches: HashMap<usize, (Instant, usize)>,
}

impl InFlight {
    fn len(&self) -> usize {
        self.joins.len() + self.leaves.values().map(Vec::len).sum::<usize>()
    }

    fn started(&mut self, batch: usize, at: Instant) {
        self.batches.entry(batch).or_insert((at, 0)).1 += 1;
    }

    /// An operation of `batch` ended; the batch's latency if it was its last.
    fn ended(&mut self, batch: usize) -> Option<Duration> {
        let (applied, left) = self.batches.get_mut(&batch)?;
        *left -= 1;
        if *left > 0 {
            return None;
        }
        let applied = *applied;
        self.batches.remove(&batch);
        Some(applied.elapsed())
    }
}

/// What the window counts, and the event handling both modes share.
struct Tally {
    joins: u64,
    leaves: u64,
    failed: u64,
    latencies: Latencies,
    batch_latencies: Latencies,
    end: Instant,
}

impl Tally {
    fn on_event(
        &mut self,
        event: ServerEvent,
        pattern: &mut Pattern,
        in_flight: &mut InFlight,
    ) -> Result<(), String> {
        let now = Instant::now();
        let (started, batch, ok) = match event {
            ServerEvent::JoinAckComplete {
                group,
                member,
                result,
            } => {
                let Some((called, batch)) = in_flight.joins.remove(&(group, member)) else {
                    return Ok(());
                };
                pattern.join_done(group, member, result.is_ok());
                if now <= self.end {
                    if result.is_ok() {
                        self.joins += 1;
                    } else {
                        self.failed += 1;
                    }
                }
                (called, batch, result.is_ok())
            }
            ServerEvent::LeaveAckComplete {
                group,
                member,
                result,
            } => {
                let Some(waiting) = in_flight.leaves.get_mut(&(group, member)) else {
                    return Ok(());
                };
                let (called, batch) = waiting.remove(0);
                if waiting.is_empty() {
                    in_flight.leaves.remove(&(group, member));
                }
                if now <= self.end {
                    if result.is_ok() {
                        self.leaves += 1;
                    } else {
                        self.failed += 1;
                    }
                }
                (called, batch, result.is_ok())
            }
            ServerEvent::ClientDisconnected { host, reason } => {
                return Err(format!("client {host} disconnected during churn: {reason}"))
            }
            _ => return Ok(()),
        };
        if ok && now <= self.end {
            self.latencies.record(now - started);
        }
        if let Some(latency) = in_flight.ended(batch) {
            if now <= self.end {
                self.batch_latencies.record(latency);
            }
        }
        Ok(())
    }
}

/// Waits for the clients and makes 100 groups of 10, every first join acked.
async fn setup(server: &Server, events: &mut ServerEvents) -> Result<Pattern, String> {
    let deadline = Instant::now() + SETUP_TIMEOUT;
    let connecting = Instant::now();
    let mut hosts = Vec::with_capacity(CLIENTS);
    while hosts.len() < CLIENTS {
        match next_event(events, deadline)
            .await
            .map_err(|e| format!("{e} ({} of {CLIENTS} clients connected)", hosts.len()))?
        {
            ServerEvent::ClientConnected { host, .. } => hosts.push(host),
            ServerEvent::ClientDisconnected { host, reason } => {
                return Err(format!(
                    "client {host} disconnected while connecting: {reason}"
                ))
            }
            _ => {}
        }
    }
    eprintln!(
        "   {CLIENTS} clients connected in {:.2} s",
        connecting.elapsed().as_secs_f64()
    );
    let options = GroupOptions {
        direct_p2p: false,
        ..GroupOptions::default()
    };
    let mut rng = Rng(0x5eed);
    let mut shuffled = hosts.clone();
    rng.shuffle(&mut shuffled);
    let mut groups = Vec::with_capacity(GROUPS);
    for members in shuffled.chunks(CLIENTS / GROUPS) {
        let group = server
            .create_group(members, options, Bytes::new())
            .map_err(|e| format!("create_group: {e}"))?;
        groups.push((group, members.to_vec()));
    }
    let mut acked = 0;
    while acked < CLIENTS {
        match next_event(events, deadline).await? {
            ServerEvent::JoinAckComplete { result: Ok(()), .. } => acked += 1,
            ServerEvent::JoinAckComplete { result: Err(e), .. } => {
                return Err(format!("a first join failed: {e}"))
            }
            ServerEvent::ClientDisconnected { host, reason } => {
                return Err(format!("client {host} disconnected: {reason}"))
            }
            _ => {}
        }
    }
    Ok(Pattern::new(groups, hosts, 0xc0ffee))
}

/// How operations are issued.
#[derive(Debug, Clone, Copy)]
enum Issue {
    /// One `join_group` / `leave_group` call each, at most [`JOINS_IN_FLIGHT`] under way.
    OneAtATime,
    /// `change_membership` with batches of this many, at most two batches under way.
    Batches(usize),
}

/// The churn for `window`, issued one way or the other.
async fn churn(
    server: &Server,
    events: &mut ServerEvents,
    pattern: &mut Pattern,
    window: Duration,
    issue: Issue,
    datagrams: &dyn Fn() -> (u64, u64),
) -> Result<Outcome, String> {
    let mut in_flight = InFlight::default();
    let cpu_before = (
        threads_cpu_ns("churn-server"),
        threads_cpu_ns("churn-clients"),
        this_thread_cpu_ns(),
    );
    let datagrams_before = datagrams();
    let stats_before = server.stats();
    let started = Instant::now();
    let mut tally = Tally {
        joins: 0,
        leaves: 0,
        failed: 0,
        latencies: Latencies::default(),
        batch_latencies: Latencies::default(),
        end: started + window,
    };
    let mut next_batch = 0;
    loop {
        let now = Instant::now();
        if now >= tally.end {
            break;
        }
        let room = match issue {
            Issue::OneAtATime => in_flight.len() < JOINS_IN_FLIGHT,
            Issue::Batches(_) => in_flight.batches.len() < 2,
        };
        if room {
            let size = match issue {
                Issue::OneAtATime => 64,
                Issue::Batches(size) => size,
            };
            issue_ops(server, pattern, &mut in_flight, issue, size, next_batch)?;
            next_batch += 1;
        }
        // Take every event that is ready; wait for one only when nothing can be issued.
        let mut took = 0;
        while let Some(event) = events.try_next() {
            tally.on_event(event, pattern, &mut in_flight)?;
            took += 1;
        }
        if events.is_finished() {
            return Err("the server's event stream ended".into());
        }
        if took == 0 && !room {
            match next_event(events, tally.end).await {
                Ok(event) => tally.on_event(event, pattern, &mut in_flight)?,
                Err(_) if Instant::now() >= tally.end => break,
                Err(error) => return Err(error),
            }
        }
    }
    let window = started.elapsed();
    let secs = |ns: u64| ns as f64 / 1e9;
    let cpu = CpuSplit {
        server: secs(threads_cpu_ns("churn-server").saturating_sub(cpu_before.0)),
        clients: secs(threads_cpu_ns("churn-clients").saturating_sub(cpu_before.1)),
        driver: secs(this_thread_cpu_ns().saturating_sub(cpu_before.2)),
    };
    let datagrams_after = datagrams();
    let stats_after = server.stats();

    // Let what is under way finish, so the next measurement starts clean.
    let deadline = Instant::now() + Duration::from_secs(15);
    while in_flight.len() > 0 {
        let event = next_event(events, deadline).await?;
        tally.on_event(event, pattern, &mut in_flight)?;
    }
    Ok(Outcome {
        joins: tally.joins,
        leaves: tally.leaves,
        failed: tally.failed,
        window,
        latencies: tally.latencies,
        cpu: Some(cpu),
        datagrams: Some((
            datagrams_after.0 - datagrams_before.0,
            datagrams_after.1 - datagrams_before.1,
        )),
        unloaded: Latencies::default(),
        pairs: stats_after.pairs,
        notices: Some((
            stats_after.notices_sent - stats_before.notices_sent,
            stats_after.notice_frames_sent - stats_before.notice_frames_sent,
        )),
        batch_latencies: tally.batch_latencies,
    })
}

/// Issues `size` operations of the pattern, one call each or as one batch.
fn issue_ops(
    server: &Server,
    pattern: &mut Pattern,
    in_flight: &mut InFlight,
    issue: Issue,
    size: usize,
    batch_id: usize,
) -> Result<(), String> {
    let mut batch = MembershipBatch::new();
    let mut ops = Vec::with_capacity(size);
    for _ in 0..size {
        let op = pattern.next_op();
        let (g, host, join) = match op {
            Op::Join(g, host) => (g, host, true),
            Op::Leave(g, host) => (g, host, false),
        };
        let group = pattern.groups[g].id;
        match issue {
            Issue::OneAtATime => {
                let called = Instant::now();
                if join {
                    match server.join_group(group, host, Bytes::new()) {
                        Ok(JoinOutcome::Joined) => {
                            in_flight.joins.insert((group, host), (called, batch_id));
                            in_flight.started(batch_id, called);
                        }
                        Ok(JoinOutcome::AlreadyMember) => pattern.join_done(group, host, true),
                        Err(e) => return Err(format!("join_group: {e}")),
                    }
                } else {
                    server
                        .leave_group(group, host)
                        .map_err(|e| format!("leave_group: {e}"))?;
                    let entry = in_flight.leaves.entry((group, host)).or_default();
                    entry.push((called, batch_id));
                    in_flight.started(batch_id, called);
                }
            }
            Issue::Batches(_) => {
                if join {
                    batch.join(group, host, Bytes::new());
                } else {
                    batch.leave(group, host);
                }
                ops.push((group, host, join));
            }
        }
    }
    if let Issue::Batches(_) = issue {
        let applied = Instant::now();
        let outcomes = server
            .change_membership(&batch)
            .map_err(|e| format!("change_membership: {e}"))?;
        for ((group, host, _), outcome) in ops.into_iter().zip(outcomes) {
            match outcome {
                ChangeOutcome::Joined => {
                    // A host that left and joined again in one batch completes twice.
                    in_flight.joins.insert((group, host), (applied, batch_id));
                    in_flight.started(batch_id, applied);
                }
                ChangeOutcome::Left => {
                    let entry = in_flight.leaves.entry((group, host)).or_default();
                    entry.push((applied, batch_id));
                    in_flight.started(batch_id, applied);
                }
                ChangeOutcome::AlreadyMember => pattern.join_done(group, host, true),
            }
        }
    }
    Ok(())
}

/// Join to `JoinAckComplete` with one join at a time.
async fn unloaded_joins(
    server: &Server,
    events: &mut ServerEvents,
    pattern: &mut Pattern,
) -> Result<Latencies, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut unloaded = Latencies::default();
    while unloaded.len() < UNLOADED_JOINS {
        match pattern.next_op() {
            Op::Leave(g, host) => server
                .leave_group(pattern.groups[g].id, host)
                .map_err(|e| format!("leave_group: {e}"))?,
            Op::Join(g, host) => {
                let group = pattern.groups[g].id;
                let called = Instant::now();
                server
                    .join_group(group, host, Bytes::new())
                    .map_err(|e| format!("join_group: {e}"))?;
                loop {
                    if let ServerEvent::JoinAckComplete {
                        group: g,
                        member,
                        result,
                    } = next_event(events, deadline).await?
                    {
                        if (g, member) == (group, host) {
                            unloaded.record(called.elapsed());
                            pattern.join_done(group, host, result.is_ok());
                            break;
                        }
                    }
                }
            }
        }
    }
    Ok(unloaded)
}

/// From `change_membership` to the last completion of a batch of [`BATCH_SIZE`]
/// operations, one batch at a time (an MMO tick's change, with nothing else under way).
async fn unloaded_batches(
    server: &Server,
    events: &mut ServerEvents,
    pattern: &mut Pattern,
) -> Result<Latencies, String> {
    let mut tally = Tally {
        joins: 0,
        leaves: 0,
        failed: 0,
        latencies: Latencies::default(),
        batch_latencies: Latencies::default(),
        end: Instant::now() + Duration::from_secs(3600),
    };
    for batch in 0..UNLOADED_BATCHES {
        let mut in_flight = InFlight::default();
        issue_ops(
            server,
            pattern,
            &mut in_flight,
            Issue::Batches(BATCH_SIZE),
            BATCH_SIZE,
            batch,
        )?;
        let deadline = Instant::now() + Duration::from_secs(15);
        while in_flight.len() > 0 {
            let event = next_event(events, deadline).await?;
            tally.on_event(event, pattern, &mut in_flight)?;
        }
    }
    Ok(tally.batch_latencies)
}

/// Both measurements on one server and one set of clients: one at a time (then the
/// unloaded joins), then batched (then unloaded batches).
async fn drive(
    server: &Server,
    mut events: ServerEvents,
    window: Duration,
    datagrams: &dyn Fn() -> (u64, u64),
) -> Result<(Outcome, Outcome), String> {
    let mut pattern = setup(server, &mut events).await?;
    let mut single = churn(
        server,
        &mut events,
        &mut pattern,
        window,
        Issue::OneAtATime,
        datagrams,
    )
    .await?;
    single.unloaded = unloaded_joins(server, &mut events, &mut pattern).await?;
    let mut batched = churn(
        server,
        &mut events,
        &mut pattern,
        window,
        Issue::Batches(BATCH_SIZE),
        datagrams,
    )
    .await?;
    batched.unloaded = unloaded_batches(server, &mut events, &mut pattern).await?;
    Ok((single, batched))
}
