//! Runs the commit engine's deterministic simulation over many seeds, in parallel, for as long
//! as one likes (TigerBeetle's VOPR is the model). `make test` runs a few thousand seeds; this
//! runs millions offline:
//!
//! ```text
//! cargo run --release -p votes-shard --example vopr -- --seeds 1000000 [--start S] [--threads N]
//! ```
//!
//! A failing seed stops the run with its schedule's last steps; reproduce it alone with
//! `SIM_SEED=<seed> cargo test -p votes-shard --test sim`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

fn arg(args: &[String], name: &str) -> Option<u64> {
    args.iter().position(|a| a == name).map(|i| {
        args.get(i + 1)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} takes a number"))
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let seeds = arg(&args, "--seeds").unwrap_or(100_000);
    let start = arg(&args, "--start").unwrap_or(0);
    let threads = arg(&args, "--threads")
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u64));
    let next = Arc::new(AtomicU64::new(start));
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let began = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (next, done, failed) = (next.clone(), done.clone(), failed.clone());
            std::thread::spawn(move || {
                let mut steps = 0u64;
                while !failed.load(Ordering::Relaxed) {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= start + seeds {
                        break;
                    }
                    match std::panic::catch_unwind(|| votes_shard::sim::run(seed)) {
                        Ok(r) => steps += r.steps,
                        Err(_) => {
                            failed.store(true, Ordering::Relaxed);
                            eprintln!("vopr: seed {seed} failed (its report is above)");
                        }
                    }
                    let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                    if n.is_multiple_of(10_000) {
                        eprintln!("vopr: {n} seeds in {:.0?}", began.elapsed());
                    }
                }
                steps
            })
        })
        .collect();
    let steps: u64 = workers.into_iter().map(|w| w.join().unwrap_or(0)).sum();
    let n = done.load(Ordering::Relaxed);
    println!(
        "vopr: {n} seeds from {start}, {steps} steps, in {:.1?}: {}",
        began.elapsed(),
        if failed.load(Ordering::Relaxed) {
            "FAILED"
        } else {
            "all invariants held"
        }
    );
    if failed.load(Ordering::Relaxed) {
        std::process::exit(1);
    }
}
