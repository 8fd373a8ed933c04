//! `votes-chaos`: seeded fault-campaign runs against a fleet on this machine (see
//! `votes_perf::chaos`). Exits non-zero on any anomaly; each run's history, logs and report stay
//! under `--out/<seed>/`. `make chaos [RUNS=N] [SEED=S]` runs it on the 3-broker cluster.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use votes_perf::chaos::{Config, run};
use votes_perf::duration::parse_duration;

votes_perf::mimalloc_allocator!();

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
    /// Each node's group session (`votes serve --group-session-timeout-ms`): how long a dead
    /// or frozen node keeps its partitions. The campaign's brokers accept sessions down to 1 s;
    /// four kill-node runs at 1 s saw no live member's session expire (docs/reliability.md).
    #[arg(long, env = "CHAOS_GROUP_SESSION_MS", default_value_t = 1_000)]
    group_session_ms: u64,
    /// Run each node in a network namespace of its own on this bridge (made beforehand, its
    /// address `--host-ip`, where the services listen), so the nemesis can cut nodes off.
    #[arg(long, requires = "host_ip")]
    bridge: Option<String>,
    #[arg(long)]
    host_ip: Option<std::net::Ipv4Addr>,
    /// Tells this campaign's namespaces and veths apart (letters and digits, at most 6).
    #[arg(long, default_value = "x")]
    net_tag: String,
    /// Draw only these fault kinds (comma separated), evenly: kill-node, freeze-node,
    /// partition-node, kill-broker, restart-redis-empty, stop-dynamodb, kill-persister,
    /// jump-clock.
    #[arg(long, env = "CHAOS_FAULTS", value_delimiter = ',')]
    faults: Vec<String>,
    /// libfaketime's `libfaketimeMT.so.1`: nodes run with their wall clock under the nemesis'
    /// control (`jump-clock`).
    #[arg(long, env = "CHAOS_FAKETIME")]
    faketime: Option<std::path::PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut faults = Vec::new();
    for f in &args.faults {
        match votes_perf::chaos::FAULT_KINDS
            .iter()
            .find(|k| **k == f.as_str())
        {
            Some(k) => faults.push(*k),
            None => {
                eprintln!(
                    "votes-chaos: unknown fault kind {f:?} (kinds: {})",
                    votes_perf::chaos::FAULT_KINDS.join(", ")
                );
                return ExitCode::from(2);
            }
        }
    }
    if faults.contains(&"jump-clock") && args.faketime.is_none() {
        eprintln!("votes-chaos: jump-clock needs --faketime (libfaketime)");
        return ExitCode::from(2);
    }
    if faults.contains(&"partition-node") && args.bridge.is_none() {
        eprintln!("votes-chaos: partition-node needs --bridge (network namespaces)");
        return ExitCode::from(2);
    }
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
            group_session: std::time::Duration::from_millis(args.group_session_ms),
            net: args.bridge.clone().zip(args.host_ip).map(|(bridge, host)| {
                votes_perf::chaos::Net {
                    bridge,
                    host,
                    tag: args.net_tag.clone(),
                }
            }),
            faults: faults.clone(),
            faketime: args.faketime.clone(),
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
                    "seed {seed}: the run could not complete: {e} (what it gathered: {}/history.jsonl, report.json)",
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
