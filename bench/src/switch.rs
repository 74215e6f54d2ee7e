//! Switching: how soon a pair goes direct after it is formed, and the largest gap between
//! arriving messages while a stream moves from the relay to the direct path and back.

use crate::report::{Report, Table};
use crate::setup::{self, wait_for};
use crate::stats::Latencies;
use crate::Mode;
use peergroup_client::{ClientEvent, Delivery, Path as MessagePath, Target};
use peergroup_server::GroupOptions;
use std::path::Path;
use std::time::{Duration, Instant};

/// Messages per second in the switching stream.
const STREAM_RATE: u64 = 2_000;

/// Runs the section.
pub fn run(mode: Mode, report: &mut Report, _out: &Path) -> Result<(), String> {
    let runtime = setup::client_runtime()?;
    let rounds = mode.pick(5, 20);
    let mut to_direct = Latencies::default();
    for _ in 0..rounds {
        to_direct.record(time_to_direct(&runtime)?);
    }
    let gaps = switch_gaps(&runtime)?;
    let lab = if mode == Mode::Full {
        nat_lab_time_to_direct()
    } else {
        Err("measured in --full runs (needs root)".into())
    };

    let p50_ms = to_direct.percentile_us(50.0) as f64 / 1000.0;
    report.set("switch.loopback_time_to_direct_ms", p50_ms);
    report.set(
        "switch.gap_relay_to_direct_ms",
        gaps.0.as_secs_f64() * 1000.0,
    );
    report.set(
        "switch.gap_direct_to_relay_ms",
        gaps.1.as_secs_f64() * 1000.0,
    );
    let interval_ms = 1000.0 / STREAM_RATE as f64;
    let mut rows = vec![
        vec![
            "time to direct after a join, loopback (p50 of {rounds})"
                .replace("{rounds}", &rounds.to_string()),
            format!("{p50_ms:.1} ms"),
        ],
        vec![
            "largest gap between arrivals, relay to direct".into(),
            format!("{:.2} ms", gaps.0.as_secs_f64() * 1000.0),
        ],
        vec![
            "largest gap between arrivals, direct to relay (path closed)".into(),
            format!("{:.2} ms", gaps.1.as_secs_f64() * 1000.0),
        ],
    ];
    match &lab {
        Ok(ms) => {
            report.set("switch.time_to_direct_ms", *ms);
            rows.push(vec![
                "time to direct after a join, NAT lab (cone to cone)".into(),
                format!("{ms:.0} ms"),
            ]);
        }
        Err(why) => rows.push(vec![
            "time to direct after a join, NAT lab (cone to cone)".into(),
            format!("not measured: {why}"),
        ]),
    }
    if lab.is_err() {
        report.set("switch.time_to_direct_ms", p50_ms);
    }
    report.table(Table {
        title: "Switching between relay and direct".into(),
        columns: vec!["measure".into(), "value".into()],
        rows,
        notes: vec![format!(
            "Time to direct: from the server's create_group call to both clients' \
             PathChanged to direct. Gaps: one client streams reliable 64 B messages at \
             {STREAM_RATE}/s (one every {interval_ms:.1} ms) while the pair goes direct, \
             then the direct connection is closed and the stream falls back to the relay; \
             the figure is the largest gap between consecutive arrivals from 50 ms before \
             to 500 ms after each switch. A silent path death is noticed only after the \
             path timeout (5 s by default), which then bounds the gap. `switch.time_to_direct_ms` \
             is the NAT-lab figure when measured, else the loopback one."
        )],
    });
    Ok(())
}

/// From `create_group` to both sides reporting the direct path.
fn time_to_direct(runtime: &tokio::runtime::Runtime) -> Result<Duration, String> {
    let server = setup::server(|_| {})?;
    runtime.block_on(async {
        let (a, mut a_events, a_id) = setup::client(&server.server, "a").await?;
        let (b, mut b_events, b_id) = setup::client(&server.server, "b").await?;
        let started = Instant::now();
        server
            .server
            .create_group(&[a_id, b_id], GroupOptions::default(), "")
            .map_err(|e| e.to_string())?;
        setup::wait_until_direct(&mut a_events, &mut b_events).await?;
        let elapsed = started.elapsed();
        a.close().await;
        b.close().await;
        Ok(elapsed)
    })
}

/// The largest inter-arrival gaps around the relay-to-direct and direct-to-relay switches.
fn switch_gaps(runtime: &tokio::runtime::Runtime) -> Result<(Duration, Duration), String> {
    let server = setup::server(|_| {})?;
    runtime.block_on(async {
        let (a, mut a_events, a_id) = setup::client(&server.server, "a").await?;
        let (b, mut b_events, b_id) = setup::client(&server.server, "b").await?;
        server
            .server
            .create_group(&[a_id, b_id], GroupOptions::default(), "")
            .map_err(|e| e.to_string())?;
        wait_for(&mut a_events, Duration::from_secs(10), |e| {
            matches!(e, ClientEvent::MemberJoined { member, .. } if *member == b_id).then_some(())
        })
        .await?;
        let sender = {
            let a = a.clone();
            tokio::spawn(async move {
                let mut ticker =
                    tokio::time::interval(Duration::from_micros(1_000_000 / STREAM_RATE));
                let mut n = 0u64;
                loop {
                    ticker.tick().await;
                    let mut payload = vec![0u8; 64];
                    payload[..8].copy_from_slice(&n.to_be_bytes());
                    if a.send(Target::Host(b_id), payload, Delivery::ReliableOrdered)
                        .await
                        .is_err()
                    {
                        return;
                    }
                    n += 1;
                }
            })
        };
        // Arrivals: (time, path, sequence number).
        let mut arrivals: Vec<(Instant, MessagePath, u64)> = Vec::new();
        let mut closed_at: Option<Instant> = None;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let event = tokio::time::timeout(Duration::from_secs(2), b_events.next())
                .await
                .map_err(|_| "the stream stalled".to_string())?
                .ok_or("B's events ended")?;
            if let ClientEvent::Message { payload, path, .. } = event {
                let seq = u64::from_be_bytes(payload[..8].try_into().unwrap_or_default());
                if let Some((_, _, last)) = arrivals.last() {
                    if seq != last + 1 {
                        return Err(format!("message {seq} after {last}"));
                    }
                }
                arrivals.push((Instant::now(), path, seq));
                let direct_since = arrivals
                    .iter()
                    .find(|(_, p, _)| *p == MessagePath::Direct)
                    .map(|(t, _, _)| *t);
                match (direct_since, closed_at) {
                    (Some(since), None) if since.elapsed() > Duration::from_secs(1) => {
                        b.close_direct_path(a_id);
                        closed_at = Some(Instant::now());
                    }
                    (_, Some(at)) if at.elapsed() > Duration::from_secs(1) => break,
                    _ => {}
                }
            }
        }
        sender.abort();
        let first_direct = arrivals
            .iter()
            .position(|(_, p, _)| *p == MessagePath::Direct)
            .ok_or("never went direct")?;
        let closed_at = closed_at.ok_or("the direct path was never closed")?;
        let back_on_relay = arrivals
            .iter()
            .position(|(t, p, _)| *p == MessagePath::Relay && *t > closed_at)
            .ok_or("never came back to the relay")?;
        let gap_around = |index: usize| {
            let at = arrivals[index].0;
            arrivals
                .windows(2)
                .filter(|w| {
                    w[1].0 + Duration::from_millis(50) >= at
                        && w[1].0 <= at + Duration::from_millis(500)
                })
                .map(|w| w[1].0 - w[0].0)
                .max()
                .unwrap_or_default()
        };
        let gaps = (gap_around(first_direct), gap_around(back_on_relay));
        a.close().await;
        b.close().await;
        Ok(gaps)
    })
}

/// Runs the NAT lab's cone-to-cone pair and reads its time to direct.
fn nat_lab_time_to_direct() -> Result<f64, String> {
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    if !root {
        return Err("needs root".into());
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = std::process::Command::new(cargo)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .args([
            "test",
            "--quiet",
            "-p",
            "peergroup",
            "--test",
            "nat_lab",
            "--",
            "--exact",
            "full_cone_x_full_cone",
            "port_restricted_x_port_restricted",
            "--nocapture",
        ])
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&output.stdout);
    let times: Vec<f64> = text
        .lines()
        .filter(|l| l.contains("NATLAB RESULT"))
        .filter_map(|l| l.split("time to direct ").nth(1))
        .filter_map(|t| t.trim_end_matches(" ms").trim().parse().ok())
        .collect();
    times
        .iter()
        .copied()
        .reduce(f64::max)
        .ok_or_else(|| "the NAT lab did not report".to_string())
}
