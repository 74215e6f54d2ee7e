//! Seeded whole-system scenarios (see the crate docs for the model and the checks).
//!
//! `SIM_SEED=<n>` replays one seed; `SIM_SCENARIOS=<n>` sets how many seeds run (from
//! `SIM_FIRST`, default 0).

use std::time::Instant;

/// Seeds run by default: sized so this test takes well under a minute in a debug build on
/// two cores (README "Testing" / ARCHITECTURE.md "Simulator" say what was measured).
const DEFAULT_SCENARIOS: u64 = 2_000;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, not {v:?}"))
    })
}

#[test]
fn seeded_scenarios_keep_every_guarantee() {
    let seeds: Vec<u64> = match env_u64("SIM_SEED") {
        Some(seed) => vec![seed],
        None => {
            let first = env_u64("SIM_FIRST").unwrap_or(0);
            let count = env_u64("SIM_SCENARIOS").unwrap_or(DEFAULT_SCENARIOS);
            (first..first + count).collect()
        }
    };
    let started = Instant::now();
    let mut totals = peergroup_sim::RunStats::default();
    let mut failures = Vec::new();
    for &seed in &seeds {
        // A panic (in the simulator or in the code under test) is a failure of its seed.
        let (violations, stats) = std::panic::catch_unwind(|| peergroup_sim::run_seed(seed))
            .unwrap_or_else(|panic| {
                let text = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                (vec![format!("panicked: {text}")], Default::default())
            });
        totals.sent += stats.sent;
        for (t, s) in totals.delivered.iter_mut().zip(stats.delivered) {
            *t += s;
        }
        totals.direct_deliveries += stats.direct_deliveries;
        totals.to_direct += stats.to_direct;
        totals.to_relay += stats.to_relay;
        totals.ops_completed += stats.ops_completed;
        totals.deaths += stats.deaths;
        totals.events += stats.events;
        if !violations.is_empty() {
            eprintln!("seed {seed} failed (replay: SIM_SEED={seed} cargo test -p peergroup-sim):");
            for v in violations.iter().take(10) {
                eprintln!("  {v}");
            }
            failures.push(seed);
        }
    }
    eprintln!(
        "{} scenarios in {:.1?}: {} sends, deliveries (ordered, unordered, unreliable, \
         sequenced, latest) {:?}, {} over direct paths, {} switches to direct and {} back, \
         {} direct paths killed, {} joins and leaves completed, {} steps",
        seeds.len(),
        started.elapsed(),
        totals.sent,
        totals.delivered,
        totals.direct_deliveries,
        totals.to_direct,
        totals.to_relay,
        totals.deaths,
        totals.ops_completed,
        totals.events,
    );
    assert!(
        failures.is_empty(),
        "{} of {} seeds failed: {:?} (replay one with SIM_SEED=<seed>)",
        failures.len(),
        seeds.len(),
        &failures[..failures.len().min(20)]
    );
}
