//! `votes-chaos`: seeded fault-campaign runs against a fleet on this machine (see
//! `votes_perf::chaos`). Exits non-zero on any anomaly; each run's history, logs and report stay
//! under `--out/<seed>/`. `make chaos [RUNS=N] [SEED=S]` runs it on the 3-broker cluster.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use votes_perf::chaos::{Config, run};
use votes_perf::duration::parse_duration;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(about = "Seeded fault-campaign runs with an independent checker")]
struct Args {
    /// The first run's seed (then seed+1, …).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value_t = 1)]
    runs: u64,
    /// How long voters vote under faults in each run.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    duration: std::time::Duration,
    #[arg(long, default_value = "target/chaos")]
    out: PathBuf,
    #[arg(long)]
    votes_bin: PathBuf,
    #[arg(long, default_value = "scripts/services.sh")]
    services: PathBuf,
    #[arg(long, default_value = "127.0.0.1:9092,127.0.0.1:9093,127.0.0.1:9094")]
    brokers: String,
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    dynamodb: String,
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis: String,
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    #[arg(long, default_value_t = 6)]
    partitions: u32,
    #[arg(long, default_value_t = 16)]
    lanes: usize,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let mut failed = false;
    for seed in args.seed..args.seed + args.runs {
        let cfg = Config {
            seed,
            duration: args.duration,
            out: args.out.join(seed.to_string()),
            votes_bin: args.votes_bin.clone(),
            brokers: args.brokers.clone(),
            dynamodb: args.dynamodb.clone(),
            redis: args.redis.clone(),
            services: std::fs::canonicalize(&args.services).unwrap_or(args.services.clone()),
            nodes: args.nodes,
            partitions: args.partitions,
            lanes: args.lanes,
        };
        let out = cfg.out.clone();
        match rt.block_on(run(cfg)) {
            Ok(r) => {
                println!(
                    "seed {seed}: {} votes acknowledged in {} attempts; {} admin writes acknowledged; faults {:?}; anomalies {}; unavailable ms by fault {:?} ({})",
                    r.acknowledged,
                    r.attempts,
                    r.admin_writes,
                    r.faults,
                    r.anomalies.len(),
                    r.unavailable_ms
                        .iter()
                        .map(|(k, v)| (k, v.iter().max().copied().unwrap_or(0)))
                        .collect::<Vec<_>>(),
                    out.display()
                );
                for a in r.anomalies.iter().take(20) {
                    println!("  ANOMALY {a}");
                }
                failed |= !r.anomalies.is_empty();
            }
            Err(e) => {
                println!(
                    "seed {seed}: the run could not complete: {e} ({})",
                    out.display()
                );
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
