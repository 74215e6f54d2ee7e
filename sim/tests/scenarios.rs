//! Seeded whole-system scenarios (see the crate docs for the model and the checks).
//!
//! The seeds are split into shards, one test each, so `cargo test` runs them on every
//! core. `SIM_SEED=<n>` replays one seed (in the first shard, with `SIM_TRACE=1` to print
//! every event); `SIM_SCENARIOS=<n>` sets how many seeds run, from `SIM_FIRST` (default 0).

mod simulator;

use simulator::RunStats;
use std::time::Instant;

/// Seeds run by default, across all shards: 72 to 86 s of CPU in a debug build, 38 s on two
/// mostly idle cores (ARCHITECTURE.md, "Simulator", has the measurements).
const DEFAULT_SCENARIOS: u64 = 2_000;
/// Shards (tests) the seeds are split into.
const SHARDS: u64 = 4;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, not {v:?}"))
    })
}

/// Runs this shard's seeds; panics naming every failed seed.
fn run_shard(shard: u64) {
    let seeds: Vec<u64> = match env_u64("SIM_SEED") {
        Some(seed) if shard == 0 => vec![seed],
        Some(_) => Vec::new(),
        None => {
            let first = env_u64("SIM_FIRST").unwrap_or(0);
            let count = env_u64("SIM_SCENARIOS").unwrap_or(DEFAULT_SCENARIOS);
            (first..first + count)
                .filter(|seed| seed % SHARDS == shard)
                .collect()
        }
    };
    let started = Instant::now();
    let mut totals = RunStats::default();
    let mut failures = Vec::new();
    for &seed in &seeds {
        // A panic (in the simulator or in the code under test) is a failure of its seed.
        let (violations, stats) = std::panic::catch_unwind(|| simulator::run_seed(seed))
            .unwrap_or_else(|panic| {
                let text = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                (vec![format!("panicked: {text}")], RunStats::default())
            });
        totals.add(&stats);
        if !violations.is_empty() {
            eprintln!("seed {seed} failed (replay: SIM_SEED={seed} cargo test -p peergroup-sim):");
            for v in violations.iter().take(10) {
                eprintln!("  {v}");
            }
            failures.push(seed);
        }
    }
    eprintln!(
        "shard {shard}: {} scenarios in {:.1?}: {} sends; deliveries (ordered, unordered, \
         unreliable, sequenced, latest) {:?}, {} over direct paths; {} reliable arrivals \
         required and checked; {} switches to direct and {} back; {} direct paths killed; \
         {} joins and leaves completed; {} steps",
        seeds.len(),
        started.elapsed(),
        totals.sent,
        totals.delivered,
        totals.direct_deliveries,
        totals.required,
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

#[test]
fn seeded_scenarios_shard_0() {
    run_shard(0);
}

#[test]
fn seeded_scenarios_shard_1() {
    run_shard(1);
}

#[test]
fn seeded_scenarios_shard_2() {
    run_shard(2);
}

#[test]
fn seeded_scenarios_shard_3() {
    run_shard(3);
}

/// A seed is the whole run: replaying it gives the same run, event for event (what
/// `SIM_SEED` relies on).
#[test]
fn a_seed_replays_the_same_run() {
    for seed in [3, 17] {
        let first = simulator::run_seed(seed);
        let again = simulator::run_seed(seed);
        assert_eq!(first, again, "seed {seed}");
        assert!(
            first.1.sent > 0 && first.1.events > 0,
            "seed {seed} did something"
        );
    }
}
