//! Direct path: round-trip time of small messages on peergroup's direct path, on a bare
//! quinn stream (alone, and behind the writer and reader tasks peergroup's client puts
//! between the application and the stream) and on raw UDP, all on loopback, on a
//! two-thread runtime and on a one-thread one; and the message rate of one direct pair
//! against one bare quinn stream.
//!
//! The four ping-pongs are set up together and taken in turn, [`BLOCK`] round trips each,
//! so every path meets the same machine state. On this virtual machine a wake-up that
//! crosses to an idle vCPU is slow or fast depending on the hypervisor's halt polling,
//! which adapts to what ran just before: measured one path after another, the same path's
//! RTT p50 on the two-thread runtime moved between 26 and 92 µs, and which path happened
//! to meet which state decided the ratio (peergroup 78 µs against quinn's 33 in one table,
//! where either alone, measured with the other vCPU kept busy, gave 29 against 33).

mod ping;

use crate::cpu::ProcessUsage;
use crate::report::{rate, ratio, round, Report, Table};
use crate::stats::{median, Latencies};
use crate::Mode;
use bytes::Bytes;
use peergroup_client::{ClientEvent, Delivery, Path as MessagePath, Target};
use ping::{frame, open_stream, quinn_pair, Pinger, PAYLOAD};
use std::path::Path;
use std::time::{Duration, Instant};

/// Rounds of the interleaved ping-pongs, and runs of the quinn and peergroup rate
/// measurements, taken in turn; the section reports the median of each figure.
const ROUNDS: usize = 3;
/// Round trips each path takes before the next path's turn.
const BLOCK: usize = 20;
/// A block of round trips that takes longer than this fails the section (a lost
/// loopback datagram, a stalled path).
const BLOCK_LIMIT: Duration = Duration::from_secs(10);

/// One path's RTT over its rounds: the median of each round's p50 and p99, µs.
struct Summary {
    /// The path's key and name ([`Pinger::key`], [`Pinger::name`]).
    key: &'static str,
    name: &'static str,
    p50: u64,
    p99: u64,
    /// Each round's RTT p50, µs.
    p50s: Vec<u64>,
    /// What a round trip cost the whole process, measured on this path alone after the
    /// rounds: CPU time (µs, every thread) and context switches.
    cpu_us: f64,
    switches: f64,
}

impl Summary {
    fn of(key: &'static str, name: &'static str, rtts: &[Latencies], cost: Cost) -> Self {
        let at = |p: f64| rtts.iter().map(|r| r.percentile_us(p)).collect::<Vec<_>>();
        let median_of = |values: &[u64]| {
            median(&values.iter().map(|&v| v as f64).collect::<Vec<_>>()).unwrap_or(0.0) as u64
        };
        let p50s = at(50.0);
        Self {
            key,
            name,
            p50: median_of(&p50s),
            p99: median_of(&at(99.0)),
            p50s,
            cpu_us: cost.cpu_us,
            switches: cost.switches,
        }
    }
}

/// `a`'s RTT p50 over `b`'s, to two decimals.
fn p50_ratio(a: &Summary, b: &Summary) -> f64 {
    (a.p50 as f64 / (b.p50 as f64).max(1.0) * 100.0).round() / 100.0
}

/// [`ROUNDS`] rounds of `pings` round trips on every path of [`Pinger::all`], taken in
/// turn a block at a time; each path's summary over the rounds, in that order.
fn interleaved_rtts(
    runtime: &tokio::runtime::Runtime,
    pings: usize,
) -> Result<Vec<Summary>, String> {
    // Outside `block_on`: the server's runtime may not be dropped inside another.
    let server = crate::setup::server(|_| {})?;
    runtime.block_on(async {
        let mut pingers = Pinger::all(&server.server).await?;
        // Per path, one `Latencies` a round.
        let mut rtts: Vec<Vec<Latencies>> = pingers.iter().map(|_| Vec::new()).collect();
        for _ in 0..ROUNDS {
            for path in &mut rtts {
                path.push(Latencies::default());
            }
            for _ in 0..pings.div_ceil(BLOCK) {
                for (pinger, path) in pingers.iter_mut().zip(&mut rtts) {
                    let rtt = path.last_mut().expect("this round's");
                    block(pinger, |elapsed| rtt.record(elapsed)).await?;
                }
            }
        }
        // Then each path alone, for what its round trips cost: the rounds above take
        // turns too often to tell whose work a thread did.
        let mut costs = Vec::new();
        for pinger in &mut pingers {
            let before = ProcessUsage::now();
            for _ in 0..pings.div_ceil(BLOCK) {
                block(pinger, |_| {}).await?;
            }
            let used = ProcessUsage::now().since(before);
            let round_trips = (pings.div_ceil(BLOCK) * BLOCK) as f64;
            costs.push(Cost {
                cpu_us: used.cpu_ns as f64 / 1_000.0 / round_trips,
                switches: used.switches as f64 / round_trips,
            });
        }
        let summaries = pingers
            .iter()
            .zip(&rtts)
            .zip(costs)
            .map(|((pinger, rounds), cost)| Summary::of(pinger.key(), pinger.name(), rounds, cost))
            .collect();
        for pinger in pingers {
            pinger.close(&server.server).await?;
        }
        Ok(summaries)
    })
}

/// What one round trip cost the process: CPU µs and context switches.
#[derive(Debug, Clone, Copy)]
struct Cost {
    cpu_us: f64,
    switches: f64,
}

/// [`BLOCK`] round trips on `pinger`, each one's time handed to `record`.
///
/// # Errors
/// A ping failed, or the block took over [`BLOCK_LIMIT`].
async fn block(pinger: &mut Pinger, mut record: impl FnMut(Duration)) -> Result<(), String> {
    tokio::time::timeout(BLOCK_LIMIT, async {
        for _ in 0..BLOCK {
            record(pinger.ping().await?);
        }
        Ok::<_, String>(())
    })
    .await
    .map_err(|_| "a block of round trips timed out".to_string())?
}

/// The summary of the path with `key` ([`Pinger::key`]).
fn at<'a>(summaries: &'a [Summary], key: &str) -> &'a Summary {
    summaries
        .iter()
        .find(|summary| summary.key == key)
        .expect("a measured path")
}

/// Runs the section.
pub fn run(mode: Mode, report: &mut Report, _out: &Path) -> Result<(), String> {
    let pings = mode.pick(2_000, 20_000);
    let window = mode.pick(Duration::from_secs(3), Duration::from_secs(10));
    let runtime = crate::setup::client_runtime()?;
    let two_threads = interleaved_rtts(&runtime, pings)?;
    // The same ping-pongs with every task on one thread: on the runtime above a wake-up
    // between the measuring task and a spawned one crosses threads, and those wake-ups,
    // not the code on either side, make most of the round trip.
    let one_thread = interleaved_rtts(&crate::setup::current_thread_runtime()?, pings)?;
    let (mut quinn_rates, mut peergroup_rates) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        quinn_rates.push(runtime.block_on(quinn_rate(window))?);
        peergroup_rates.push(peergroup_rate(&runtime, window)?);
    }
    let rate_of = |rates: &[f64]| median(rates).unwrap_or(0.0);
    let (peergroup_rate, quinn_rate) = (rate_of(&peergroup_rates), rate_of(&quinn_rates));

    let mut rows = Vec::new();
    for (prefix, summaries, runtime_name) in [
        ("direct", &two_threads, ""),
        ("direct.one_thread", &one_thread, ", one-thread runtime"),
    ] {
        for summary in summaries.iter() {
            let key = summary.key;
            let msgs_per_sec = match (prefix, key) {
                ("direct", "peergroup") => Some(peergroup_rate),
                ("direct", "quinn") => Some(quinn_rate),
                _ => None,
            };
            rows.push(vec![
                format!("{}{runtime_name}", summary.name),
                summary.p50.to_string(),
                summary.p99.to_string(),
                format!("{:.1}", summary.cpu_us),
                format!("{:.2}", summary.switches),
                msgs_per_sec.map_or("-".into(), rate),
            ]);
            report.set(
                &format!("{prefix}.cpu_us_per_rtt.{key}"),
                round(summary.cpu_us, 1),
            );
            report.set(
                &format!("{prefix}.switches_per_rtt.{key}"),
                round(summary.switches, 2),
            );
            report.set(&format!("{prefix}.rtt_p50_us.{key}"), summary.p50);
            report.set(&format!("{prefix}.rtt_p99_us.{key}"), summary.p99);
            report.set(
                &format!("{prefix}.rtt_p50_us_runs.{key}"),
                serde_json::Value::from(summary.p50s.clone()),
            );
        }
        report.set(
            &format!("{prefix}.rtt_p50_ratio_vs_quinn"),
            p50_ratio(at(summaries, "peergroup"), at(summaries, "quinn")),
        );
    }
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
    }
    let (peergroup, quinn, handovers) = (
        at(&two_threads, "peergroup"),
        at(&two_threads, "quinn"),
        at(&two_threads, "quinn_with_handovers"),
    );
    let (one_peergroup, one_quinn) = (at(&one_thread, "peergroup"), at(&one_thread, "quinn"));
    report.table(Table {
        title: "Direct path: RTT and one pair's message rate".into(),
        columns: vec![
            "path".into(),
            "RTT p50 (µs)".into(),
            "RTT p99 (µs)".into(),
            "CPU µs per RTT".into(),
            "switches per RTT".into(),
            "64 B msgs/s".into(),
        ],
        rows,
        notes: vec![format!(
            "Ping-pong of {PAYLOAD} B messages on loopback, one at a time: the four paths \
             are set up together and take turns, {BLOCK} round trips each, {pings} per path \
             in each of {ROUNDS} rounds; the median of the rounds (RTT p50 per round, µs: \
             peergroup {:?}, quinn {:?}, quinn with hand-overs {:?}). Taking turns gives \
             every path the same machine state: measured one after another, the same path's \
             p50 moved between 26 and 92 µs with the hypervisor's halt polling. peergroup: \
             reliable messages between two clients after hole punching (their server is \
             idle); bare quinn: one bidirectional stream with length-prefixed frames; with \
             hand-overs: the same stream, but each side's application hands frames to a \
             writer task and gets them from a reader task through channels, as peergroup's \
             client does. RTT ratio peergroup / quinn: p50 {}, p99 {} (target at most 1.1). \
             The measuring task runs on the runtime's block_on thread and every spawned task \
             (quinn's drivers, the echoes, peergroup's tasks) on its one worker, so \
             hand-overs between them are wake-ups across threads. The one-thread rows run \
             the same rounds on a current-thread runtime, where no wake-up crosses threads \
             (RTT p50 per round, µs: peergroup {:?}, quinn {:?}; ratio p50 {}). Rate: one \
             sender streaming reliable messages for {:.0} s, quinn and peergroup in turn, \
             the median of {ROUNDS} runs each. CPU and switches per RTT: after the \
             rounds, each path alone does {pings} more round trips; the CPU time of every \
             thread of the process (from /proc/self/task/*/schedstat: the measuring task, \
             the echo, quinn's drivers, peergroup's tasks, the idle server) and its context \
             switches (voluntary and not), over the round trips. A wake-up of a sleeping \
             thread is one switch; the two-thread paths make two a round trip.",
            peergroup.p50s,
            quinn.p50s,
            handovers.p50s,
            ratio(peergroup.p50 as f64, quinn.p50 as f64),
            ratio(peergroup.p99 as f64, quinn.p99 as f64),
            one_peergroup.p50s,
            one_quinn.p50s,
            ratio(one_peergroup.p50 as f64, one_quinn.p50 as f64),
            window.as_secs_f64(),
        )],
    });
    Ok(())
}

/// One sender streaming reliable 64-byte frames on one bare quinn stream for `window`;
/// the frames received per second.
async fn quinn_rate(window: Duration) -> Result<f64, String> {
    let (server, client, addr) = quinn_pair()?;
    let counter = tokio::spawn(async move {
        let connection = server.accept().await?.await.ok()?;
        let (_send, mut recv) = connection.accept_bi().await.ok()?;
        let mut frame = [0u8; 4 + PAYLOAD];
        let mut count = 0u64;
        while recv.read_exact(&mut frame).await.is_ok() {
            count += 1;
        }
        Some(count)
    });
    let (connection, mut send, _recv) = open_stream(&client, addr).await?;
    let frame = frame();
    let started = Instant::now();
    while started.elapsed() < window {
        send.write_all(&frame).await.map_err(|e| e.to_string())?;
    }
    send.finish().map_err(|e| e.to_string())?;
    let received = tokio::time::timeout(Duration::from_secs(10), counter)
        .await
        .map_err(|_| "the quinn receiver did not finish".to_string())?
        .map_err(|e| e.to_string())?
        .ok_or("the quinn receiver failed")?;
    let elapsed = started.elapsed().as_secs_f64();
    connection.close(0u32.into(), b"done");
    Ok(received as f64 / elapsed)
}

/// One peergroup client streaming reliable 64-byte messages to another on their direct
/// path for `window`; the messages received per second.
fn peergroup_rate(runtime: &tokio::runtime::Runtime, window: Duration) -> Result<f64, String> {
    // Outside `block_on`: the server's runtime may not be dropped inside another.
    let server = crate::setup::server(|_| {})?;
    runtime.block_on(async {
        let ((a, _a_events, a_id), (b, mut b_events, b_id)) =
            ping::direct_pair(&server.server).await?;
        // B counts until the end marker (first byte 3).
        let counter = tokio::spawn(async move {
            let mut count = 0u64;
            while let Some(event) = b_events.next().await {
                if let ClientEvent::Message { payload, path, .. } = event {
                    if path != MessagePath::Direct {
                        return Err("a message took the relay".to_string());
                    }
                    if payload[0] == 3 {
                        return Ok(count);
                    }
                    count += 1;
                }
            }
            Err("B's events ended".to_string())
        });
        let data = Bytes::from_static(&[2u8; PAYLOAD]);
        let started = Instant::now();
        while started.elapsed() < window {
            a.send(Target::Host(b_id), data.clone(), Delivery::ReliableOrdered)
                .await
                .map_err(|e| format!("stream: {e}"))?;
        }
        a.send(
            Target::Host(b_id),
            Bytes::from_static(&[3u8; PAYLOAD]),
            Delivery::ReliableOrdered,
        )
        .await
        .map_err(|e| e.to_string())?;
        let received = tokio::time::timeout(Duration::from_secs(30), counter)
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
        Ok(rate)
    })
}
