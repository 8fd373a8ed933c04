//! `votes-load`: open-loop load generator for the voter API (docs/design.md §4.1).
//!
//! ```text
//! votes-load --target http://127.0.0.1:8080 --election e1 --rate 5000 --duration 30s \
//!     --voters 1000000 --dup-ratio 0.05 --invalid-ratio 0.01 --protocol h2 --report run.json
//! ```

use std::time::Duration;

use anyhow::Result;
use clap::Parser;
use votes_perf::cli::{RunTarget, client_runtime, run_as_task, write_report};
use votes_perf::client::Protocol;
use votes_perf::duration::parse_duration;
use votes_perf::load::{self, Config};
use votes_perf::schedule::Ramp;

votes_perf::mimalloc_allocator!();

#[derive(Parser, Debug)]
#[command(
    name = "votes-load",
    version,
    about = "Open-loop load generator for the votes voter API (latencies from intended send times)"
)]
struct Args {
    #[command(flatten)]
    run: RunTarget,
    /// Offered votes/s (open loop); the peak of a --ramp.
    #[arg(long, env = "VOTES_LOAD_RATE")]
    rate: f64,
    /// Length of the run (ignored with a tv ramp, which lasts RISE+HOLD+FALL).
    #[arg(long, env = "VOTES_LOAD_DURATION", default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    /// Distinct voter ids, taken in order from --voter-base.
    #[arg(long, env = "VOTES_LOAD_VOTERS", default_value_t = 1_000_000)]
    voters: u64,
    /// First voter id.
    #[arg(long, env = "VOTES_LOAD_VOTER_BASE", default_value_t = 1)]
    voter_base: u64,
    /// Fraction of requests that repeat an already-sent voter (expect 409).
    #[arg(long, default_value_t = 0.0)]
    dup_ratio: f64,
    /// Fraction of malformed requests, rotating bad JSON (400), unknown option (422), missing
    /// token (401) and oversize body (413).
    #[arg(long, default_value_t = 0.0)]
    invalid_ratio: f64,
    /// h1 (HTTP/1.1 keep-alive), h2 (h2c prior knowledge, or ALPN h2 on https://) or h3
    /// (HTTP/3 over QUIC; https:// only).
    #[arg(long, env = "VOTES_LOAD_PROTOCOL", default_value = "h1")]
    protocol: Protocol,
    /// h1: keep-alive connections (one request at a time each); h2: multiplexed connections;
    /// h3: QUIC connections (each request its own stream).
    #[arg(long, env = "VOTES_LOAD_CONNECTIONS", default_value_t = 32)]
    connections: usize,
    /// Spread the connections (TCP or, for h3, UDP sockets) over source addresses
    /// 127.0.0.1 ..= 127.0.0.K (loopback targets),
    /// so per-address limits and SO_REUSEPORT hashing see many clients; 0: the kernel chooses.
    #[arg(long, env = "VOTES_LOAD_SOURCE_ADDRS", default_value_t = 0)]
    source_addrs: u8,
    /// `none`, or `tv:RISE,HOLD,FALL` (e.g. tv:10s,30s,5s): linear rise to --rate, hold, fall.
    #[arg(long, default_value = "none")]
    ramp: Ramp,
    /// Option ids to vote for, comma-separated (default: the election's).
    #[arg(long, value_delimiter = ',')]
    options: Option<Vec<String>>,
    /// Write the JSON report here.
    #[arg(long)]
    report: Option<std::path::PathBuf>,
    /// HS256 secret voter tokens are signed with (the server's VOTES_TOKEN_KEY).
    #[arg(long, env = "VOTES_TOKEN_KEY", hide_env_values = true)]
    token_key: String,
    /// Voters whose token is kept once minted (bounds the token cache's memory).
    #[arg(long, default_value_t = 262_144)]
    token_cache: usize,
    /// Outstanding requests at most; a request due beyond this is counted as dropped.
    #[arg(long, env = "VOTES_LOAD_MAX_IN_FLIGHT", default_value_t = 10_000)]
    max_in_flight: u64,
    /// Bound on one request (challenge and proof of work included).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
    /// Runtime worker threads (the generator usually shares the machine with the server).
    #[arg(long, env = "VOTES_LOAD_THREADS", default_value_t = 1)]
    threads: usize,
    /// Threads solving proof-of-work challenges.
    #[arg(long, default_value_t = 1)]
    pow_threads: usize,
    /// Seed of the request mix (same seed, same mix).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// No progress line on stderr.
    #[arg(long, short)]
    quiet: bool,
    /// Look voters of the range up (`GET …/votes/me`, answered from DynamoDB) instead of
    /// voting: the read path's latency at --rate.
    #[arg(long)]
    lookups: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let rt = client_runtime(args.threads, Some(args.pow_threads))?;
    let cfg = Config {
        target: args.run.trusted(),
        election: args.run.election,
        rate: args.rate,
        duration: args.duration,
        ramp: args.ramp,
        voters: args.voters,
        voter_base: args.voter_base,
        dup_ratio: args.dup_ratio,
        invalid_ratio: args.invalid_ratio,
        protocol: args.protocol,
        connections: args.connections,
        source_addrs: (1..=args.source_addrs)
            .map(|i| std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, i)))
            .collect(),
        options: args.options,
        token_key: args.token_key.into_bytes(),
        token_cache: args.token_cache,
        max_in_flight: args.max_in_flight,
        timeout: args.timeout,
        seed: args.seed,
        progress: !args.quiet,
        lookups: args.lookups,
    };
    let report = run_as_task(&rt, "the load run", load::run(cfg))??;
    println!("{}", report.summary());
    write_report(args.report.as_deref(), &report)
}
