//! The server child: the library server, its stable groups and the churn.
//!
//! It prints `ready ADDR FINGERPRINT` once it listens, then a JSON line of counters every
//! 5 s, and exits when its standard input closes.

use crate::rng::Rng;
use peergroup_server::{
    AuthDecision, AuthHook, ChangeOutcome, GroupId, GroupOptions, HostId, Identity,
    MembershipBatch, Server, ServerConfig, ServerEvent,
};
use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, Write};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Members of a stable group.
pub const STABLE_SIZE: usize = 8;
/// Relay-only groups the churn moves clients in and out of.
const CHURN_GROUPS: usize = 100;
/// A churn group is kept at most this big: a join above it becomes a leave.
const CHURN_MAX: usize = 12;
/// Churn is applied in batches this often (an MMO tick).
const TICK: Duration = Duration::from_millis(100);

/// What the churn counted.
#[derive(Debug, Default)]
struct Churn {
    joins: u64,
    leaves: u64,
    acks_ok: u64,
    /// Joins a later leave overtook before every ack came back (not failures).
    undone: u64,
    ack_failures: u64,
    batch_errors: u64,
}

/// Runs the server until standard input closes.
pub async fn serve(clients: usize, churn_per_sec: u32, seed: u64) -> Result<(), String> {
    let identity = Identity::generate(&["peergroup"]).map_err(|e| e.to_string())?;
    let mut config = ServerConfig::new(([127, 0, 0, 1], 0).into(), identity);
    config.limits.max_clients = clients + 16;
    // Every client connects from 127.0.0.1: one source.
    config.admission.max_clients_per_source = clients + 16;
    // The login ("c17") becomes the host's data, which names its stable group.
    let auth = AuthHook::from_fn(|request| AuthDecision::accept_with_data(request.login));
    let (server, mut events) = Server::start_with_auth(config, auth, CancellationToken::new())
        .await
        .map_err(|e| e.to_string())?;
    println!("ready {} {}", server.local_addr(), server.fingerprint());
    std::io::stdout().flush().map_err(|e| e.to_string())?;

    // Standard input closing (the parent ending, however it ends) stops the server.
    let (closed_tx, mut closed) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        for _ in std::io::stdin().lock().lines() {}
        let _ = closed_tx.send(());
    });

    let churn_groups: Vec<GroupId> = (0..CHURN_GROUPS)
        .map(|_| {
            let options = GroupOptions {
                allow_empty: true,
                direct_p2p: false,
                ..GroupOptions::default()
            };
            server.create_group_with_data(&[], options, "churn", "")
        })
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let mut members: Vec<BTreeSet<HostId>> = vec![BTreeSet::new(); CHURN_GROUPS];
    let mut connected: Vec<HostId> = Vec::new();
    let mut waiting: HashMap<usize, Vec<HostId>> = HashMap::new();
    let mut churn = Churn::default();
    let mut rng = Rng::new(seed, 0);
    let per_tick = (churn_per_sec as usize / 10).max(1);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut report = tokio::time::interval(Duration::from_secs(5));
    let started = Instant::now();
    loop {
        tokio::select! {
            _ = &mut closed => break,
            _ = report.tick() => {
                let s = server.stats();
                // How far behind the receivers are: their queues at the server.
                let infos = server.clients();
                let queued: Vec<usize> = infos.iter().map(|c| c.queued_bytes).collect();
                // The hosts furthest behind in acking membership notices: (notices unacked,
                // notices sent, login).
                let mut unacked: Vec<(u64, u64, String)> = infos
                    .iter()
                    .map(|c| {
                        let login = String::from_utf8_lossy(&c.login).into_owned();
                        (c.notices_sent - c.notices_acked, c.notices_sent, login)
                    })
                    .collect();
                unacked.sort_unstable_by(|a, b| b.cmp(a));
                // Completed acks so far (joins, then leaves): how many, their mean, and how
                // many took at most 0.1 s, 1 s, 5 s and 15 s (cumulative buckets 8, 11, 12
                // and 13 of `AckLatency::BOUNDS`). Timed-out operations are not counted.
                let ack_latency: Vec<serde_json::Value> = [&s.join_ack_latency, &s.leave_ack_latency]
                    .iter()
                    .map(|l| serde_json::json!({
                        "count": l.count,
                        "mean_ms": l.sum_us.checked_div(l.count).unwrap_or(0) / 1000,
                        "le_100ms_1s_5s_15s": [l.buckets[8], l.buckets[11], l.buckets[12], l.buckets[13]],
                    }))
                    .collect();
                let hosts_unacked = unacked.iter().filter(|u| u.0 > 0).count();
                unacked.truncate(5);
                let line = serde_json::json!({
                    "unacked_notices_worst": unacked,
                    "ack_latency": ack_latency,
                    "datagrams_rate_limited": s.datagrams_rate_limited,
                    "hosts_with_unacked_notices": hosts_unacked,
                    "queued_max_bytes": queued.iter().max().copied().unwrap_or(0),
                    "queued_total_bytes": queued.iter().sum::<usize>(),
                    "clients_queued_over_1mib": queued.iter().filter(|&&q| q > 1 << 20).count(),
                    "t_s": started.elapsed().as_secs(),
                    "clients": s.clients,
                    "groups": s.groups,
                    "direct_pairs": s.direct_pairs,
                    "relayed_pairs": s.relayed_pairs,
                    "relayed": s.relayed,
                    "acks_pending": s.acks_pending,
                    "slow_consumer_disconnects": s.slow_consumer_disconnects,
                    "punch_attempts": s.punch_attempts,
                    "punch_successes": s.punch_successes,
                    "churn_joins": churn.joins,
                    "churn_leaves": churn.leaves,
                    "churn_acks_ok": churn.acks_ok,
                    "churn_undone": churn.undone,
                    "churn_ack_failures": churn.ack_failures,
                    "churn_batch_errors": churn.batch_errors,
                });
                println!("{line}");
                let _ = std::io::stdout().flush();
            }
            _ = tick.tick() => {
                if connected.is_empty() {
                    continue;
                }
                let mut batch = MembershipBatch::new();
                let mut planned = members.clone();
                for _ in 0..per_tick {
                    let g = rng.below(CHURN_GROUPS);
                    let host = connected[rng.below(connected.len())];
                    let group = &mut planned[g];
                    let leave = group.contains(&host) || group.len() >= CHURN_MAX;
                    if leave {
                        // Leave the chosen host, or a random member of a full group.
                        let gone = if group.contains(&host) {
                            host
                        } else {
                            *group.iter().nth(rng.below(group.len())).unwrap_or(&host)
                        };
                        group.remove(&gone);
                        batch.leave(churn_groups[g], gone);
                    } else {
                        group.insert(host);
                        batch.join(churn_groups[g], host, "");
                    }
                }
                match server.change_membership(&batch) {
                    Ok(outcomes) => {
                        members = planned;
                        for outcome in outcomes {
                            match outcome {
                                ChangeOutcome::Joined => churn.joins += 1,
                                ChangeOutcome::Left => churn.leaves += 1,
                                _ => {}
                            }
                        }
                    }
                    // Nothing changed (a client left meanwhile): try again next tick.
                    Err(_) => churn.batch_errors += 1,
                }
            }
            event = events.next() => {
                let Some(event) = event else { break };
                match event {
                    ServerEvent::ClientConnected { host, app_data, .. } => {
                        connected.push(host);
                        if let Some(group) = stable_group_of(clients, &app_data) {
                            waiting.entry(group).or_default().push(host);
                            form_stable_group(&server, clients, group, &mut waiting);
                        }
                    }
                    // An offline host cannot be added to a group: churn leaves it alone,
                    // and its stable group waits for it.
                    ServerEvent::ClientOffline { host, .. } => {
                        connected.retain(|h| *h != host);
                    }
                    ServerEvent::ClientResumed { host, .. } => {
                        // A resume that replaced a half-open connection had no offline.
                        if !connected.contains(&host) {
                            connected.push(host);
                        }
                        let stalled: Vec<usize> = waiting
                            .iter()
                            .filter(|(_, hosts)| hosts.contains(&host))
                            .map(|(group, _)| *group)
                            .collect();
                        for group in stalled {
                            form_stable_group(&server, clients, group, &mut waiting);
                        }
                    }
                    ServerEvent::ClientDisconnected { host, .. } => {
                        connected.retain(|h| *h != host);
                        for group in &mut members {
                            group.remove(&host);
                        }
                        // Its client may have connected again as a new host (a login
                        // it gave up on under load): the group may be complete now.
                        let mut affected = Vec::new();
                        for (group, hosts) in &mut waiting {
                            if hosts.contains(&host) {
                                hosts.retain(|h| *h != host);
                                affected.push(*group);
                            }
                        }
                        for group in affected {
                            form_stable_group(&server, clients, group, &mut waiting);
                        }
                    }
                    ServerEvent::JoinAckComplete { result, .. } => match result {
                        Ok(()) => churn.acks_ok += 1,
                        Err(peergroup_server::JoinAckError::MemberLeft) => churn.undone += 1,
                        Err(_) => churn.ack_failures += 1,
                    },
                    ServerEvent::LeaveAckComplete { result, .. } => match result {
                        Ok(()) => churn.acks_ok += 1,
                        Err(_) => churn.ack_failures += 1,
                    },
                    _ => {}
                }
            }
        }
    }
    server.shutdown();
    Ok(())
}

/// The stable group of the client logged in as `login` (`c<index>`).
fn stable_group_of(clients: usize, login: &[u8]) -> Option<usize> {
    let index = std::str::from_utf8(login)
        .ok()?
        .strip_prefix('c')?
        .parse::<usize>()
        .ok()?;
    (index < clients).then_some(index / STABLE_SIZE)
}

/// Creates stable group `group` once all of its members are in: every member joins at
/// once, so no message to the group can precede a member's join. If one of them is
/// offline (losing its connection under load, resuming), the group waits in `waiting`
/// and is tried again when a member resumes.
fn form_stable_group(
    server: &Server,
    clients: usize,
    group: usize,
    waiting: &mut HashMap<usize, Vec<HostId>>,
) {
    let size = STABLE_SIZE.min(clients - group * STABLE_SIZE);
    let Some(hosts) = waiting.get(&group).filter(|hosts| hosts.len() == size) else {
        return;
    };
    let options = GroupOptions {
        direct_p2p: true,
        ..GroupOptions::default()
    };
    match server.create_group_with_data(hosts, options, "stable", "") {
        Ok(_) => {
            waiting.remove(&group);
        }
        Err(error) => eprintln!("soak server: stable group {group} waits: {error}"),
    }
}
