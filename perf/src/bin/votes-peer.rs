//! `votes-peer`: the peers of the appliance, fed the same votes, each reported as JSON.
//!
//! ```text
//! votes-peer floor     --brokers 127.0.0.1:9092 --topic perf-floor --votes 1000000 --voters 900000 --out floor.json
//! votes-peer postgres  --url postgres://postgres@127.0.0.1:55432/postgres --votes 100000 --voters 90000 --out pg.json
//! votes-peer redis-lua --url redis://127.0.0.1:16392 --votes 100000 --voters 90000 --out redis.json
//! votes-peer gen-cert --out /tmp/h3-cert          # cert.pem + key.pem, self-signed
//! votes-peer h3-reference --listen 127.0.0.1:4433 --cert cert.pem --key key.pem --threads 1
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args as ClapArgs, Parser, Subcommand};
use votes_perf::peers::floor::{self, FloorConfig};
use votes_perf::peers::postgres::{self, PostgresConfig};
use votes_perf::peers::redis_lua::{self, RedisConfig};
use votes_perf::peers::{Expected, PeerError, ServerReport, VoteSpec, write_json};
use votes_perf::peers::{h1_reference, h3_reference, persist_writes, recovery};

votes_perf::mimalloc_allocator!();

#[derive(Parser, Debug)]
#[command(
    name = "votes-peer",
    version,
    about = "Peers of the votes appliance (Kafka floor, PostgreSQL, Redis Lua) on the same votes, \
             and the reference HTTP/3 server"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// The durable log alone: transactional producers writing pre-encoded vote records.
    Floor(FloorArgs),
    /// The appliance's commit engine and committer threads without HTTP: pre-made votes
    /// through real shards, pacing, one transaction per core, real group membership.
    CommitTier(CommitTierArgs),
    /// The persister's write path alone (`votes persist` without Kafka): the items of N
    /// committed votes written as `votes persist` writes them to a DynamoDB engine; CPU per item of this
    /// process and of the engine.
    PersistWrites(PersistWritesArgs),
    /// Recovery's Kafka clients alone: a partition's wait for a stable log and its replay on
    /// three new clients, against the node's clients kept warm, alternated in one run.
    Recovery(RecoveryArgs),
    /// One PostgreSQL transaction per vote (synchronous_commit = on).
    Postgres(PgArgs),
    /// One Redis Lua script (EVALSHA) per vote; not durable.
    RedisLua(RedisArgs),
    /// Reference HTTP/3 server (tokio + quinn + h3, the h3 crate's example pattern): every
    /// `POST /v1/elections/{id}/votes` answered 202 with a fixed receipt; drive it with
    /// `votes-load --protocol h3`. Runs until killed.
    H3Reference(H3RefArgs),
    /// Reference HTTP/1.1 server (hyper on tokio, keep-alive): every
    /// `POST /v1/elections/{id}/votes` answered 202 with the same fixed receipt; drive it with
    /// `votes-load --protocol h1`. Runs until killed.
    H1Reference(H1RefArgs),
    /// Writes a self-signed certificate (cert.pem) and its key (key.pem) for local TLS runs.
    GenCert(GenCertArgs),
}

#[derive(ClapArgs, Debug)]
struct H3RefArgs {
    /// UDP address to listen on (port 0: any; the bound address is printed on stdout).
    #[arg(long, default_value = "127.0.0.1:4433")]
    listen: std::net::SocketAddr,
    /// Certificate chain, PEM.
    #[arg(long)]
    cert: PathBuf,
    /// Private key, PEM (PKCS#8, PKCS#1 or SEC1).
    #[arg(long)]
    key: PathBuf,
    /// tokio worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

#[derive(ClapArgs, Debug)]
struct H1RefArgs {
    /// TCP address to listen on (port 0: any; the bound address is printed on stdout).
    #[arg(long, default_value = "127.0.0.1:18080")]
    listen: std::net::SocketAddr,
    /// tokio worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

#[derive(ClapArgs, Debug)]
struct GenCertArgs {
    /// Directory to write cert.pem and key.pem into (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Names of the certificate: DNS names or IP addresses, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "localhost,127.0.0.1,::1")]
    names: Vec<String>,
}

/// The vote sequence, shared by every peer.
#[derive(ClapArgs, Debug, Clone)]
struct VoteArgs {
    /// Votes to send.
    #[arg(long, default_value_t = 100_000)]
    votes: u64,
    /// Distinct voters; the other votes repeat an earlier voter.
    #[arg(long, default_value_t = 90_000)]
    voters: u64,
    /// Options of the election (`a`, `b`, `c`, …).
    #[arg(long, default_value_t = 3)]
    options: u32,
    #[arg(long, default_value = "perf")]
    election: String,
    /// Seed of the sequence (which votes repeat, which options).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Offered votes/s (open loop, latency from each vote's intended time); default: closed
    /// loop, as fast as possible.
    #[arg(long)]
    rate: Option<f64>,
    /// Write the JSON report here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write the expected tallies (first vote of each voter counts) here, as
    /// {"<election>": {"<option>": count}}.
    #[arg(long)]
    expected: Option<PathBuf>,
}

impl VoteArgs {
    fn spec(&self) -> VoteSpec {
        VoteSpec {
            votes: self.votes,
            voters: self.voters,
            options: self.options,
            election: self.election.clone(),
            seed: self.seed,
        }
    }
}

#[derive(ClapArgs, Debug)]
struct FloorArgs {
    #[arg(long, env = "VOTES_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Created with --partitions partitions (replication 1) if missing.
    #[arg(long)]
    topic: String,
    #[arg(long, default_value_t = 8)]
    partitions: u32,
    /// Votes per transaction (the appliance's default --batch-max).
    #[arg(long, default_value_t = 2048)]
    batch: usize,
    /// Broker pids whose CPU is counted (space or comma separated); default: pgrep -f 'kafka\.Kafka'.
    #[arg(long)]
    broker_pids: Option<String>,
    /// Bound on topic creation, init_transactions and each commit, in seconds.
    #[arg(long, default_value_t = 60)]
    timeout_s: u64,
    #[command(flatten)]
    votes: VoteArgs,
}

#[derive(ClapArgs, Debug)]
struct CommitTierArgs {
    #[command(flatten)]
    log: LogArgs,
    /// Cores: one engine, committer and group member each.
    #[arg(long, default_value_t = 2)]
    cores: usize,
    /// Largest transaction, in votes (the appliance's --batch-max).
    #[arg(long, default_value_t = 2048)]
    batch_max: usize,
    /// The appliance's --committer: one for the node's cores, or one per core.
    #[arg(long, default_value = "core", value_parser = ["node", "core"])]
    committer: String,
    /// The appliance's --ack-target-ms and --linger-ms (pacing).
    #[arg(long, default_value_t = 15)]
    ack_target_ms: u64,
    #[arg(long, default_value_t = 10)]
    linger_ms: u64,
    /// Closed loop (no --rate): votes in flight per core.
    #[arg(long, default_value_t = 4096)]
    window: usize,
    /// Broker pids whose CPU is counted (space or comma separated); default: pgrep -f 'kafka\.Kafka'.
    #[arg(long)]
    broker_pids: Option<String>,
    /// Bound on each blocking Kafka call, in seconds.
    #[arg(long, default_value_t = 30)]
    timeout_s: u64,
    #[command(flatten)]
    votes: VoteArgs,
}

#[derive(ClapArgs, Debug)]
struct PersistWritesArgs {
    #[arg(
        long,
        env = "VOTES_DYNAMODB_ENDPOINT",
        default_value = "http://127.0.0.1:8000"
    )]
    endpoint: String,
    /// Prefix of the tables ({prefix}votes is created if missing); a fresh one per run.
    #[arg(long)]
    prefix: String,
    #[arg(long, default_value_t = 200_000)]
    items: u64,
    /// Batch calls in flight (`votes persist --concurrency`).
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Items per round (`votes persist --batch-max`).
    #[arg(long, default_value_t = 5_000)]
    round: usize,
    /// Write every item a second time (a restarted persister's rewrite: each condition fails).
    #[arg(long)]
    rewrite: bool,
    /// The engine's pid, whose CPU is counted.
    #[arg(long)]
    engine_pid: Option<u32>,
    /// Write the JSON report here.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// The votes log a peer writes or reads as the appliance does.
#[derive(ClapArgs, Debug)]
struct LogArgs {
    #[arg(long, env = "VOTES_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Prefix of the names ({prefix}votes, created with --partitions if missing; the group and
    /// the transactional ids): a fresh one per run.
    #[arg(long)]
    prefix: String,
    #[arg(long, default_value_t = 8)]
    partitions: u32,
}

#[derive(ClapArgs, Debug)]
struct RecoveryArgs {
    #[command(flatten)]
    log: LogArgs,
    /// Recoveries of each partition, each way.
    #[arg(long, default_value_t = 10)]
    rounds: u32,
    #[arg(long, default_value_t = 30)]
    timeout_s: u64,
    /// Write the JSON report here.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(ClapArgs, Debug)]
struct PgArgs {
    /// e.g. postgres://postgres@127.0.0.1:55432/postgres
    #[arg(long)]
    url: String,
    #[arg(long, default_value_t = 16)]
    connections: u32,
    /// The postmaster's pid (default: the parent of our backend, when local).
    #[arg(long)]
    server_pid: Option<u32>,
    #[command(flatten)]
    votes: VoteArgs,
}

#[derive(ClapArgs, Debug)]
struct RedisArgs {
    /// e.g. redis://127.0.0.1:16392
    #[arg(long)]
    url: String,
    #[arg(long, default_value_t = 16)]
    connections: u32,
    /// Scripts per pipeline on one connection.
    #[arg(long, default_value_t = 16)]
    pipeline: u32,
    /// The redis-server's pid (default: INFO's process_id, when local).
    #[arg(long)]
    server_pid: Option<u32>,
    #[command(flatten)]
    votes: VoteArgs,
}

fn parse_pids(s: &str) -> Result<Vec<u32>> {
    s.split([' ', ','])
        .filter(|p| !p.is_empty())
        .map(|p| p.parse().with_context(|| format!("bad pid {p:?}")))
        .collect()
}

fn write_outputs(
    out: Option<&Path>,
    report: &impl serde::Serialize,
    expected_path: Option<&Path>,
    expected: &Expected,
) -> Result<()> {
    let json = serde_json::to_string_pretty(report)?;
    match out {
        Some(p) => write_json(p, report)?,
        None => println!("{json}"),
    }
    if let Some(p) = expected_path {
        write_json(p, &expected.by_election())?;
    }
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// The runtime of a reference server: `threads` workers (at least one).
fn reference_runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
}

/// Prints the address a reference server listens on, at once: the script that started it
/// reads the line to know where to send the load.
fn announce(addr: std::net::SocketAddr) -> std::io::Result<()> {
    use std::io::Write as _;
    println!("listening on {addr}");
    std::io::stdout().flush()
}

/// Runs a server peer (`postgres::run`, `redis_lua::run`) to its end on a fresh runtime, as a
/// spawned task so it runs on a worker like the lanes it starts, then writes and checks its
/// report; `what` names it in an error.
fn run_server_peer(
    what: &'static str,
    a: &VoteArgs,
    run: impl Future<Output = Result<(ServerReport, Expected), PeerError>> + Send + 'static,
) -> Result<()> {
    let (r, expected) = runtime()?
        .block_on(async move { tokio::spawn(run).await })?
        .context(what)?;
    write_outputs(a.out.as_deref(), &r, a.expected.as_deref(), &expected)?;
    eprintln!("{}", r.summary());
    if !r.verified {
        bail!(
            "tallies differ from the expected first votes: {:?} (accepted {} of {}, per option [expected, found])",
            r.tally_diff,
            r.accepted,
            expected.accepted
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::CommitTier(a) => {
            let broker_pids = a.broker_pids.as_deref().map(parse_pids).transpose()?;
            let cfg = votes_perf::peers::commit_tier::CommitTierConfig {
                brokers: a.log.brokers,
                prefix: a.log.prefix,
                partitions: a.log.partitions,
                cores: a.cores,
                spec: a.votes.spec(),
                rate: a.votes.rate,
                window: a.window,
                max_batch: a.batch_max,
                node_committer: a.committer == "node",
                pacing: votes_tally::engine::PacingConfig {
                    ack_target: a.ack_target_ms * 1_000,
                    min_window: 0,
                    max_window: a.linger_ms * 1_000,
                },
                broker_pids,
                timeout: Duration::from_secs(a.timeout_s),
            };
            let report = votes_perf::peers::commit_tier::run(&cfg).context("commit tier")?;
            let expected =
                votes_perf::peers::Votes::generate(&a.votes.spec())?.expected(a.votes.seed);
            write_outputs(
                a.votes.out.as_deref(),
                &report,
                a.votes.expected.as_deref(),
                &expected,
            )?;
            eprintln!("{}", report.summary());
            if !report.verified {
                bail!(
                    "the commit tier's tallies differ from the expected first votes: {:?}",
                    report.tally_diff
                );
            }
        }
        Cmd::Floor(a) => {
            let broker_pids = a.broker_pids.as_deref().map(parse_pids).transpose()?;
            let cfg = FloorConfig {
                brokers: a.brokers,
                topic: a.topic,
                partitions: a.partitions,
                spec: a.votes.spec(),
                batch: a.batch,
                rate: a.votes.rate,
                broker_pids,
                timeout: Duration::from_secs(a.timeout_s),
            };
            let (report, expected) = floor::run(&cfg).context("kafka floor")?;
            if report.run.broker_cpu_s.is_none() {
                eprintln!("votes-peer: warning: no broker pid found; broker CPU not counted");
            }
            write_outputs(
                a.votes.out.as_deref(),
                &report,
                a.votes.expected.as_deref(),
                &expected,
            )?;
            eprintln!("{}", report.summary());
        }
        Cmd::PersistWrites(a) => {
            let cfg = persist_writes::PersistWritesConfig {
                endpoint: a.endpoint,
                prefix: a.prefix,
                items: a.items,
                concurrency: a.concurrency,
                round: a.round,
                rewrite: a.rewrite,
                engine_pid: a.engine_pid,
            };
            // The persister's own runtime: two workers (src/persist.rs).
            let report = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?
                .block_on(persist_writes::run(cfg))
                .context("persist writes")?;
            match &a.out {
                Some(p) => write_json(p, &report)?,
                None => println!("{}", serde_json::to_string_pretty(&report)?),
            }
            eprintln!("{}", report.summary());
        }
        Cmd::Recovery(a) => {
            let report = recovery::run(&recovery::RecoveryConfig {
                brokers: a.log.brokers,
                prefix: a.log.prefix,
                partitions: a.log.partitions,
                rounds: a.rounds,
                timeout: Duration::from_secs(a.timeout_s),
            })
            .context("recovery peer")?;
            match &a.out {
                Some(p) => write_json(p, &report)?,
                None => println!("{}", serde_json::to_string_pretty(&report)?),
            }
            eprintln!("{}", report.summary());
        }
        Cmd::Postgres(a) => {
            let cfg = PostgresConfig {
                url: a.url,
                spec: a.votes.spec(),
                connections: a.connections,
                rate: a.votes.rate,
                server_pid: a.server_pid,
            };
            run_server_peer("postgres peer", &a.votes, async move {
                postgres::run(&cfg).await
            })?;
        }
        Cmd::RedisLua(a) => {
            let cfg = RedisConfig {
                url: a.url,
                spec: a.votes.spec(),
                connections: a.connections,
                pipeline: a.pipeline,
                rate: a.votes.rate,
                server_pid: a.server_pid,
            };
            run_server_peer("redis-lua peer", &a.votes, async move {
                redis_lua::run(&cfg).await
            })?;
        }
        Cmd::H3Reference(a) => {
            let (certs, key) = h3_reference::load_pem(&a.cert, &a.key)?;
            let cfg = h3_reference::server_config(certs, key)?;
            reference_runtime(a.threads)?.block_on(async move {
                let endpoint = h3_reference::bind(a.listen, cfg)?;
                announce(endpoint.local_addr()?)?;
                tokio::spawn(h3_reference::serve(endpoint)).await?;
                anyhow::Ok(())
            })?;
        }
        Cmd::H1Reference(a) => {
            reference_runtime(a.threads)?.block_on(async move {
                let listener = h1_reference::bind(a.listen).await?;
                announce(listener.local_addr()?)?;
                tokio::spawn(h1_reference::serve(listener)).await??;
                anyhow::Ok(())
            })?;
        }
        Cmd::GenCert(a) => {
            h3_reference::write_self_signed(&a.out, &a.names)?;
            println!("{}", a.out.display());
        }
    }
    Ok(())
}
