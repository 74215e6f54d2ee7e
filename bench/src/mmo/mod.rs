//! `mmo`: the `examples/mmo_view` workload headless, at 1,000 bots on raw protocol clients.
//!
//! The server is the library's `peergroup_server::Server` in this process, on a runtime of
//! its own, with the example's area-of-interest logic ([`views`]) driving it from this
//! thread: one view group per bot ("the bots that see me", the server a member of each),
//! and every 100 ms one `MembershipBatch` of the joins and leaves the positions call for.
//! The bots ([`bot`]) are raw protocol clients on a second runtime (the churn and scale
//! sections' technique): each walks the example's world and uploads its position to its
//! view group ten times a second on the Latest lane, reads what the server sends and acks
//! every notice. The world (sight, walk, grid) is the example's own file, included below.
//!
//! After every bot is connected and placed, a warm-up, then a measured window: membership
//! operations completed by their acks, acks, position updates sent and delivered, each
//! tick's batch from `change_membership` to its last completion, the CPU of the server, of
//! the bots and of other processes, and the UDP datagrams to the server and those its
//! socket dropped. Then the bots stop publishing and what is under way completes.

mod bot;
mod harness;
mod machine;
mod views;
// The example's world, the very file: walking, sight and the area-of-interest grid. The
// bench does not use the demo's report messages in it.
#[allow(dead_code)]
#[path = "../../../examples/mmo_view/world.rs"]
mod world;

use crate::report::{rate, round, Report, Table};
use crate::stats::Latencies;
use crate::Mode;
use harness::{measure, CLIENT_ENDPOINTS, DRAIN_TIMEOUT};
use std::path::Path;
use std::time::Duration;
use world::TICK_HZ;

/// Bots.
pub(super) const BOTS: usize = 1_000;
/// Bots of the smaller run beside it, which shows where this machine stops keeping up: the
/// same world density and workload per bot, a quarter of the bots.
pub(super) const SMALL_BOTS: usize = 250;
/// Bots each bot has within [`world::SIGHT`] on average, which sizes the world. With the
/// sight-lost margin and fewer neighbours at the edges, a view holds about 13.
pub(super) const NEIGHBOURS: f32 = 12.0;
/// Seeds the walks, so every run walks the same paths.
pub(super) const SEED: u64 = 1;

/// Runs the section.
pub fn run(mode: Mode, report: &mut Report, _out: &Path) -> Result<(), String> {
    let warmup = mode.pick(Duration::from_secs(3), Duration::from_secs(5));
    let window = mode.pick(Duration::from_secs(10), Duration::from_secs(30));
    let m = measure(BOTS, warmup, window)?;
    let secs = m.window.as_secs_f64().max(1e-9);
    let per_sec = |n: u64| n as f64 / secs;
    let ops = m.views.joins_ok + m.views.leaves_ok;
    let ticks_expected = (secs * f64::from(TICK_HZ)).round() as u64;
    let server_cpu = (m.cpu.server + m.cpu.driver) / secs * 100.0;
    let driver_cpu = m.cpu.driver / secs * 100.0;
    let bots_cpu = m.cpu.bots / secs * 100.0;
    // What other processes took: on a shared machine the workload gets only the rest.
    let others_cpu = (m.cpu.machine - m.cpu.process).max(0.0) / secs * 100.0;
    let delivered_share = m.bots.delivered as f64 / m.bots.addressed.max(1) as f64;
    let failed = m.failed_ops();
    let server_drop_share =
        m.datagrams.dropped_at_server as f64 / m.datagrams.to_server.max(1) as f64;
    let percentiles = |l: &Latencies| {
        if l.is_empty() {
            (0, 0)
        } else {
            (l.percentile_us(50.0), l.percentile_us(99.0))
        }
    };
    let (batch_p50, batch_p99) = percentiles(&m.batch_completion);
    let (work_p50, work_p99) = percentiles(&m.tick_work);
    let (apply_p50, apply_p99) = percentiles(&m.batch_apply);

    eprintln!(
        "   {} ops/s, {} acks/s, positions {} sent/s and {} delivered/s",
        rate(per_sec(ops)),
        rate(per_sec(m.bots.acks)),
        rate(per_sec(m.bots.sent)),
        rate(per_sec(m.bots.delivered)),
    );
    eprintln!(
        "   server CPU {server_cpu:.0}% (other processes {others_cpu:.0}%), batch p50 \
         {batch_p50} µs p99 {batch_p99} µs, {failed} failed, {} UDP drops at the server",
        m.datagrams.dropped_at_server
    );

    report.set("mmo.bots", BOTS as u64);
    report.set("mmo.window_s", round(secs, 1));
    report.set("mmo.mean_view_size", round(m.views.mean_view_size(), 1));
    report.set("mmo.membership_ops_per_sec", per_sec(ops).round());
    report.set(
        "mmo.changes_per_tick",
        round(m.views.changes as f64 / m.views.ticks.max(1) as f64, 1),
    );
    report.set("mmo.acks_per_sec", per_sec(m.bots.acks).round());
    report.set("mmo.notices_per_sec", per_sec(m.server.notices).round());
    report.set(
        "mmo.position_updates_sent_per_sec",
        per_sec(m.bots.sent).round(),
    );
    report.set(
        "mmo.position_updates_delivered_per_sec",
        per_sec(m.bots.delivered).round(),
    );
    report.set(
        "mmo.position_updates_relayed_per_sec",
        per_sec(m.server.relayed).round(),
    );
    report.set("mmo.position_delivered_share", round(delivered_share, 3));
    report.set("mmo.server_cpu_percent", server_cpu.round());
    report.set("mmo.view_driver_cpu_percent", driver_cpu.round());
    report.set("mmo.bots_cpu_percent", bots_cpu.round());
    report.set("mmo.other_processes_cpu_percent", others_cpu.round());
    report.set("mmo.batch_completion_p50_us", batch_p50);
    report.set("mmo.batch_completion_p99_us", batch_p99);
    report.set("mmo.tick_work_p50_us", work_p50);
    report.set("mmo.tick_work_p99_us", work_p99);
    report.set("mmo.batch_apply_p50_us", apply_p50);
    report.set("mmo.batch_apply_p99_us", apply_p99);
    report.set("mmo.ticks", m.views.ticks);
    report.set(
        "mmo.datagrams_to_server_per_sec",
        per_sec(m.datagrams.to_server).round(),
    );
    report.set(
        "mmo.datagrams_from_server_per_sec",
        per_sec(m.datagrams.from_server).round(),
    );
    report.set("mmo.server_udp_drops", m.datagrams.dropped_at_server);
    report.set("mmo.server_udp_drop_share", round(server_drop_share, 3));
    report.set("mmo.bots_udp_drops", m.datagrams.dropped_at_bots);
    report.set("mmo.failed_ops", failed);
    report.set("mmo.joins_undone", m.totals.joins_undone);
    report.set("mmo.disconnects", m.totals.disconnects);

    let row = |figure: &str, value: String| vec![figure.to_string(), value];
    let rows = vec![
        row(
            "bots; watchers per view, mean",
            format!("{BOTS}; {:.1}", m.views.mean_view_size()),
        ),
        row(
            "membership ops/s (joins + leaves completed with every ack)",
            format!(
                "{} ({} joins, {} leaves in {:.1} s)",
                rate(per_sec(ops)),
                m.views.joins_ok,
                m.views.leaves_ok,
                secs
            ),
        ),
        row(
            "changes per tick (one batch)",
            format!(
                "{:.1}",
                m.views.changes as f64 / m.views.ticks.max(1) as f64
            ),
        ),
        row(
            "notices/s; notice frames/s (server)",
            format!(
                "{}; {}",
                rate(per_sec(m.server.notices)),
                rate(per_sec(m.server.notice_frames))
            ),
        ),
        row(
            "acks/s (ack frames the bots sent)",
            format!(
                "{} (covering {} notices/s)",
                rate(per_sec(m.bots.acks)),
                rate(per_sec(m.bots.notices))
            ),
        ),
        row(
            "position updates sent/s (uploads)",
            format!(
                "{} (to {:.1} watchers each)",
                rate(per_sec(m.bots.sent)),
                m.bots.addressed as f64 / m.bots.sent.max(1) as f64
            ),
        ),
        row(
            "position updates relayed/s (server, one per destination)",
            rate(per_sec(m.server.relayed)),
        ),
        row(
            "position updates delivered/s (summed over receivers)",
            format!(
                "{} ({:.3} of those addressed)",
                rate(per_sec(m.bots.delivered)),
                delivered_share
            ),
        ),
        row(
            "position updates the server application read/s",
            rate(per_sec(m.views.positions)),
        ),
        row(
            "batch, `change_membership` to last completion, p50 / p99 µs",
            format!("{batch_p50} / {batch_p99}"),
        ),
        row(
            "tick work (area of interest + `change_membership`; every tick), p50 / p99 µs",
            format!("{work_p50} / {work_p99}"),
        ),
        row(
            "`change_membership` call alone (ticks with changes; the server's lock held), \
             p50 / p99 µs",
            format!("{apply_p50} / {apply_p99}"),
        ),
        row(
            "ticks run (of 10 per second)",
            format!("{} of {ticks_expected}", m.views.ticks),
        ),
        row(
            "CPU % of one core: server (runtime + view driver); of which the view driver; \
             bots; other processes",
            format!("{server_cpu:.0}; {driver_cpu:.0}; {bots_cpu:.0}; {others_cpu:.0}"),
        ),
        row(
            "UDP datagrams/s to the server; from the server",
            format!(
                "{}; {}",
                rate(per_sec(m.datagrams.to_server)),
                rate(per_sec(m.datagrams.from_server))
            ),
        ),
        row(
            "UDP datagrams dropped, receive buffer full: server's socket; bots' sockets",
            format!(
                "{} ({:.1}% of those sent to it); {}",
                m.datagrams.dropped_at_server,
                server_drop_share * 100.0,
                m.datagrams.dropped_at_bots
            ),
        ),
        row(
            "failed ops; joins undone by a later leave; disconnects",
            format!(
                "{failed}; {}; {}",
                m.totals.joins_undone, m.totals.disconnects
            ),
        ),
        row(
            "relay destinations refused/s (watcher already out of view)",
            rate(per_sec(m.server.relay_refused)),
        ),
    ];
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let notes = vec![
        format!(
            "The `examples/mmo_view` workload without its example binary: {BOTS} bots walk \
             the example's world (its `world.rs`, included as is: speed {} units/s, sight \
             {} units kept to {}, the world sized for {NEIGHBOURS} neighbours within sight), \
             and the server owns one view group per bot (\"the bots that see me\", the \
             server application a member of each, relay-only). Every tick ({TICK_HZ} Hz) \
             the server recomputes every view from the positions the bots published, with \
             the example's grid, and applies the joins and leaves as one \
             `MembershipBatch`. Each bot uploads its position to its view group every tick \
             on the Latest lane (key 0, High priority). An operation counts when its \
             `JoinAckComplete` / `LeaveAckComplete` arrives Ok within the {:.0} s window \
             (after a {:.0} s warm-up once every bot was connected and placed).",
            world::SPEED,
            world::SIGHT,
            world::SIGHT_LOST,
            m.window.as_secs_f64(),
            m.warmup.as_secs_f64()
        ),
        format!(
            "The server is `peergroup_server::Server` in this process on 2 runtime threads; \
             the view logic runs on the section's own thread and counts as server CPU. The \
             bots are raw protocol clients (QUIC connections on {CLIENT_ENDPOINTS} shared \
             endpoints, 2 runtime threads) that speak the frames directly: hello, a \
             cumulative `Ack` per read, `Relay` uploads numbered per pair as the client \
             library numbers them. Raw clients cannot punch, so every pair stays on the \
             relay (`direct_p2p: false`); direct paths between 1,000 bots would need the \
             real client library, which does not fit 1,000 times on this machine. All \
             share {cores} cores with whatever else runs on the machine: the bots' CPU \
             ({bots_cpu:.0}%) and other processes' ({others_cpu:.0}%, from `/proc/stat` \
             less this process) are taken from the server's. CPU % is of one core."
        ),
        format!(
            "Failed ops: joins and leaves made by the ticks that completed otherwise than \
             Ok (a join ended by a later leave is counted apart, as the example does), \
             plus those still waiting {:.0} s after the window ({} were). Connecting and \
             placing the bots took {:.1} s. Position updates delivered are the relayed \
             `Deliver` frames the bots read; with the Latest lane a receiver whose queue \
             still holds an update gets the newer one in its place, so delivered can be \
             below addressed without loss. {} watchers were in a view with no pair known \
             to the bot (expected 0). When the server's socket drops datagrams (its \
             receive buffer full: the server reads it too slowly), QUIC's loss recovery \
             delays notices and acks, so changes reach the 15 s ack timeout and count as \
             failed, joins are undone by the watcher walking away first, bots publish to \
             watchers that already left (refused destinations), and a bot that nothing \
             reaches the server from for the 10 s idle timeout is disconnected.",
            DRAIN_TIMEOUT.as_secs_f64(),
            m.still_pending,
            m.setup.as_secs_f64(),
            m.bots.unpaired
        ),
    ];
    report.table(Table {
        title: format!("MMO view groups ({BOTS} bots, {TICK_HZ} Hz, raw protocol clients)"),
        columns: vec!["measured".into(), "value".into()],
        rows,
        notes,
    });
    // Reported, not an error of the section (as churn's failed operations): on a machine
    // too busy for the workload, completions time out, and that is the measurement.
    if failed > 0 || m.totals.disconnects > 0 {
        eprintln!(
            "   WARNING: {failed} membership operations failed and {} bots disconnected",
            m.totals.disconnects
        );
    }
    run_small(warmup, window, report)
}

/// The same workload at [`SMALL_BOTS`]: the figures that say how the server copes when the
/// machine is not oversubscribed (keys under `mmo.small.`).
fn run_small(warmup: Duration, window: Duration, report: &mut Report) -> Result<(), String> {
    let m = measure(SMALL_BOTS, warmup, window)?;
    let secs = m.window.as_secs_f64().max(1e-9);
    let per_sec = |n: u64| n as f64 / secs;
    let ops = m.views.joins_ok + m.views.leaves_ok;
    let server_cpu = (m.cpu.server + m.cpu.driver) / secs * 100.0;
    let bots_cpu = m.cpu.bots / secs * 100.0;
    let others_cpu = (m.cpu.machine - m.cpu.process).max(0.0) / secs * 100.0;
    let delivered_share = m.bots.delivered as f64 / m.bots.addressed.max(1) as f64;
    let drop_share = m.datagrams.dropped_at_server as f64 / m.datagrams.to_server.max(1) as f64;
    let (batch_p50, batch_p99) = if m.batch_completion.is_empty() {
        (0, 0)
    } else {
        (
            m.batch_completion.percentile_us(50.0),
            m.batch_completion.percentile_us(99.0),
        )
    };
    let failed = m.failed_ops();
    eprintln!(
        "   {SMALL_BOTS} bots: {} ops/s, server CPU {server_cpu:.0}%, batch p50 {batch_p50} µs, \
         {failed} failed",
        rate(per_sec(ops))
    );
    let round3 = |x: f64| (x * 1000.0).round() / 1000.0;
    report.set("mmo.small.bots", SMALL_BOTS as u64);
    report.set("mmo.small.membership_ops_per_sec", per_sec(ops).round());
    report.set("mmo.small.acks_per_sec", per_sec(m.bots.acks).round());
    report.set(
        "mmo.small.position_updates_relayed_per_sec",
        per_sec(m.server.relayed).round(),
    );
    report.set(
        "mmo.small.position_delivered_share",
        round3(delivered_share),
    );
    report.set("mmo.small.server_cpu_percent", server_cpu.round());
    report.set("mmo.small.bots_cpu_percent", bots_cpu.round());
    report.set("mmo.small.other_processes_cpu_percent", others_cpu.round());
    report.set("mmo.small.batch_completion_p50_us", batch_p50);
    report.set("mmo.small.batch_completion_p99_us", batch_p99);
    report.set("mmo.small.server_udp_drop_share", round3(drop_share));
    report.set("mmo.small.failed_ops", failed);
    report.set("mmo.small.disconnects", m.totals.disconnects);

    let row = |figure: &str, value: String| vec![figure.to_string(), value];
    report.table(Table {
        title: format!("MMO view groups at {SMALL_BOTS} bots (the same workload per bot)"),
        columns: vec!["measured".into(), "value".into()],
        rows: vec![
            row(
                "membership ops/s; acks/s",
                format!("{}; {}", rate(per_sec(ops)), rate(per_sec(m.bots.acks))),
            ),
            row(
                "position updates relayed/s; delivered share of addressed",
                format!(
                    "{}; {:.3}",
                    rate(per_sec(m.server.relayed)),
                    delivered_share
                ),
            ),
            row(
                "batch to last completion, p50 / p99 µs",
                format!("{batch_p50} / {batch_p99}"),
            ),
            row(
                "CPU % of one core: server (runtime + view driver); bots; other processes",
                format!("{server_cpu:.0}; {bots_cpu:.0}; {others_cpu:.0}"),
            ),
            row(
                "UDP datagrams dropped at the server's socket (share)",
                format!(
                    "{} ({:.1}%)",
                    m.datagrams.dropped_at_server,
                    drop_share * 100.0
                ),
            ),
            row(
                "failed ops; disconnects",
                format!("{failed}; {}", m.totals.disconnects),
            ),
        ],
        notes: vec![format!(
            "A quarter of the bots in a world a quarter the size (the same density, so the \
             same view size and work per bot), measured the same way, so the two tables \
             together show whether failures above come from the server or from a machine \
             that cannot run the bots and the server at once ({:.1} s window).",
            secs
        )],
    });
    Ok(())
}
