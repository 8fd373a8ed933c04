//! `votes-sse`: live-results subscriber scale (docs/design.md §4.2, `…/results/stream`).
//!
//! ```text
//! votes-sse --target http://127.0.0.1:8080 --election e1 --subscribers 20000 \
//!     --connect-rate 2000 --source-addrs 8 --vote-rate 50 --duration 30s \
//!     --server-pid "$(pgrep -f 'votes serve')" --report sse.json
//! ```
//!
//! Connects the subscribers at a bounded rate, then votes (fresh voters, open loop) while they
//! listen, and reports how many connected, the delay from each vote's commit (its `202`) to
//! its delivery to every subscriber, whether every subscriber saw the final total, and the
//! serving process's resident memory per subscriber.
//!
//! Subscribers read the event stream (`--stream sse`) over HTTP/1.1, a connection each, or
//! multiplexed over h2 or h3 (`--protocol`, `--streams-per-connection`), or the WebSocket
//! (`--stream ws`: HTTP/1.1 Upgrade, or with `--protocol h2` streams opened by extended CONNECT);
//! over TLS with an `https://` target (`--ca-cert` or
//! `--insecure`).

use std::time::Duration;

use anyhow::Result;
use clap::Parser;
use votes_perf::cli::{RunTarget, client_runtime, run_as_task, write_report};
use votes_perf::client::Protocol;
use votes_perf::duration::parse_duration;
use votes_perf::subscribe::{self, Config, StreamKind};

votes_perf::mimalloc_allocator!();

#[derive(Parser, Debug)]
#[command(
    name = "votes-sse",
    version,
    about = "Live-results subscriber scale: many SSE or WebSocket subscribers, update delay from commit to delivery, server memory per subscriber",
    after_help = "The --election is the one subscribed to and voted in: votes-sse must be its only voter."
)]
struct Args {
    #[command(flatten)]
    run: RunTarget,
    /// Subscribers.
    #[arg(long, default_value_t = 1000)]
    subscribers: u64,
    /// What they read: `sse` (…/results/stream) or `ws` (…/results/ws, HTTP/1.1 only).
    #[arg(long, default_value = "sse")]
    stream: StreamKind,
    /// How they connect: h1 (a connection each), h2 or h3 (multiplexed; h3 needs https://).
    #[arg(long, default_value = "h1")]
    protocol: Protocol,
    /// Subscribers per h2 or h3 connection (the node allows 128 streams per connection).
    #[arg(long, default_value_t = 100)]
    streams_per_connection: usize,
    /// New subscribers per second while connecting.
    #[arg(long, default_value_t = 2000.0)]
    connect_rate: f64,
    /// Bind subscribers to 127.0.0.1 ..= 127.0.0.K in turn (ephemeral ports per address).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u8).range(1..=254))]
    source_addrs: u8,
    /// Votes/s (fresh voters, open loop) once all subscribers are connected; 0 for none.
    #[arg(long, default_value_t = 50.0)]
    vote_rate: f64,
    /// Length of the vote phase.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    /// First voter id; the run uses vote-rate × duration ids from it.
    #[arg(long, env = "VOTES_LOAD_VOTER_BASE", default_value_t = 1)]
    voter_base: u64,
    /// h2 (h2c, prior knowledge: votes multiplexed, a slow commit holds no later vote back
    /// here) or h1 (one vote at a time per keep-alive connection).
    #[arg(long, default_value = "h2")]
    vote_protocol: Protocol,
    /// Connections the votes are sent over.
    #[arg(long, default_value_t = 2)]
    vote_connections: usize,
    /// HS256 secret voter tokens are signed with (the server's VOTES_TOKEN_KEY).
    #[arg(long, env = "VOTES_TOKEN_KEY", hide_env_values = true)]
    token_key: String,
    /// Serving process whose VmRSS is read before, once connected and at the end.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Bound on one subscription attempt (connect, request, response head).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    connect_timeout: Duration,
    /// How long the connect phase waits for stragglers after the last subscriber started.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    connect_grace: Duration,
    /// How long subscribers have, after the last vote, to see the final total.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    settle: Duration,
    /// Bound on one vote request.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    vote_timeout: Duration,
    /// Runtime worker threads.
    #[arg(long, env = "VOTES_LOAD_THREADS", default_value_t = 2)]
    threads: usize,
    /// Write the JSON report here.
    #[arg(long)]
    report: Option<std::path::PathBuf>,
    /// No progress line on stderr.
    #[arg(long, short)]
    quiet: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let rt = client_runtime(args.threads, None)?;
    let cfg = Config {
        target: args.run.trusted(),
        election: args.run.election,
        subscribers: args.subscribers,
        stream: args.stream,
        protocol: args.protocol,
        streams_per_connection: args.streams_per_connection,
        connect_rate: args.connect_rate,
        source_addrs: args.source_addrs,
        vote_rate: args.vote_rate,
        duration: args.duration,
        voter_base: args.voter_base,
        vote_protocol: args.vote_protocol,
        vote_connections: args.vote_connections,
        token_key: args.token_key.into_bytes(),
        server_pid: args.server_pid,
        connect_timeout: args.connect_timeout,
        connect_grace: args.connect_grace,
        settle: args.settle,
        vote_timeout: args.vote_timeout,
        progress: !args.quiet,
    };
    let report = run_as_task(&rt, "the subscriber run", subscribe::run(cfg))??;
    println!("{}", report.summary());
    write_report(args.report.as_deref(), &report)?;
    // The subscriber tasks were aborted; do not wait for their sockets to close one by one.
    rt.shutdown_background();
    Ok(())
}
