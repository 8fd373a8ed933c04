//! The deterministic simulation of the commit engine (`votes_shard::sim`): many seeded
//! schedules of a fleet of cores over a simulated log, with pauses, kills, rebalances and
//! failing, slow or uncertain commits, each checked against docs/design.md §3 after every step.
//!
//! `SIM_SEEDS` (default 2,000) seeds from `SIM_SEED_START` (default 0); `SIM_SEED=n` runs one.
//! A failure prints its seed, the run's shape and its last steps; run it again alone with
//! `SIM_SEED=n cargo test -p votes-shard --test sim`. Millions: `cargo run --release -p
//! votes-shard --example vopr -- --seeds 1000000`.

use votes_shard::sim;

fn env(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, got {v:?}"))
    })
}

#[test]
fn every_seeded_schedule_keeps_the_invariants() {
    let (start, count) = match env("SIM_SEED") {
        Some(seed) => (seed, 1),
        None => (
            env("SIM_SEED_START").unwrap_or(0),
            env("SIM_SEEDS").unwrap_or(2_000),
        ),
    };
    let mut total = sim::SimReport::default();
    for seed in start..start + count {
        total += &sim::run(seed);
    }
    println!("{count} seeds from {start}: {total:?}");
    // The schedules must actually exercise what they claim to.
    if count >= 100 {
        assert!(total.accepted > 0 && total.already_voted > 0 && total.unavailable > 0);
        assert!(total.not_open > 0, "elections close during the schedules");
        assert!(total.pauses > 0 && total.crashes > 0 && total.rebalances > 0 && total.fences > 0);
    }
}
