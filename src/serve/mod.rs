//! `votes serve`: the appliance (docs/design.md §1). One reactor per configured CPU; this node owns
//! every partition of `votes`, spread over its cores; each core serves the voter API and owns
//! its shards (ingest), serves results and their streams (results), and the admin API
//! (admin); core 0 follows the elections topic. One thread per node links to Redis: it
//! publishes the shards' tallies and polls the results every core serves.

mod app;
mod fleet;
mod metrics;
mod node;
mod openapi;
mod receipts;
mod reply;
mod results;
mod routes;
mod shards;
mod status;
mod web;
mod wiring;

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use shards::ShardHost;

pub use node::run;

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Roles of this process, comma-separated: any of ingest, results, admin.
    #[arg(
        long,
        env = "VOTES_ROLES",
        default_value = "ingest,results,admin",
        value_delimiter = ','
    )]
    pub roles: Vec<String>,
    /// Reactor cores (the first N CPUs this process may use).
    #[arg(long, env = "VOTES_CORES", conflicts_with = "cpus")]
    pub cores: Option<usize>,
    /// Reactor CPUs, e.g. `0,1`.
    #[arg(long, env = "VOTES_CPUS", value_delimiter = ',')]
    pub cpus: Option<Vec<usize>>,
    /// Public plaintext listener: HTTP/1.1 and h2c.
    #[arg(long, env = "VOTES_HTTP", default_value = "0.0.0.0:8080")]
    pub http: SocketAddr,
    /// Public TLS listener (HTTP/1.1 and h2 by ALPN), on when a certificate is given.
    #[arg(long, env = "VOTES_HTTPS", default_value = "0.0.0.0:8443")]
    pub https: SocketAddr,
    /// PEM certificate chain of the TLS listener.
    #[arg(long, env = "VOTES_TLS_CERT")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of the TLS listener.
    #[arg(long, env = "VOTES_TLS_KEY")]
    pub tls_key: Option<std::path::PathBuf>,
    /// Admin API and /metrics (both behind `VOTES_ADMIN_TOKEN`). Loopback unless told
    /// otherwise: put it on the operators' network, never the voters'.
    #[arg(long, env = "VOTES_ADMIN", default_value = "127.0.0.1:9090")]
    pub admin: SocketAddr,
    /// PEM certificate chain of the admin listener: TLS (HTTP/1.1 and h2) when it leaves the
    /// machine, so that the admin token never crosses the operators' network in the clear.
    #[arg(long, env = "VOTES_ADMIN_TLS_CERT", requires = "admin_tls_key")]
    pub admin_tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of `--admin-tls-cert`.
    #[arg(long, env = "VOTES_ADMIN_TLS_KEY", requires = "admin_tls_cert")]
    pub admin_tls_key: Option<std::path::PathBuf>,
    /// Name of this node, written into every vote record; also its identity in the fleet
    /// (static group membership: a restarted node keeps its partitions). Default: hostname.
    #[arg(long, env = "VOTES_NODE_ID")]
    pub node_id: Option<String>,
    /// Node-to-node forwarding listener: other nodes send here the votes whose partition
    /// this node owns. Off when not set (then votes for other nodes' partitions answer 503).
    #[arg(long, env = "VOTES_INTERNAL")]
    pub internal: Option<SocketAddr>,
    /// The address other nodes reach `--internal` at, when it binds a wildcard address.
    #[arg(long, env = "VOTES_INTERNAL_ADVERTISE")]
    pub internal_advertise: Option<SocketAddr>,
    /// PEM certificate chain of this node on the forwarding links (mutual TLS). Its subject
    /// alternative names must hold the IP address of `--internal` (or `--internal-advertise`),
    /// which peers check. Without the three `--internal-tls-*` files the links are plaintext
    /// with a MAC on every frame under `VOTES_FORWARD_KEY` (development).
    #[arg(long, env = "VOTES_INTERNAL_TLS_CERT", requires_all = ["internal_tls_key", "internal_tls_ca"])]
    pub internal_tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of `--internal-tls-cert`.
    #[arg(long, env = "VOTES_INTERNAL_TLS_KEY", requires_all = ["internal_tls_cert", "internal_tls_ca"])]
    pub internal_tls_key: Option<std::path::PathBuf>,
    /// PEM certificate(s) of the fleet's CA: a peer whose certificate it did not sign is
    /// refused at either end of a link.
    #[arg(long, env = "VOTES_INTERNAL_TLS_CA", requires_all = ["internal_tls_cert", "internal_tls_key"])]
    pub internal_tls_ca: Option<std::path::PathBuf>,
    /// After this long without a heartbeat a node's partitions move to the others, in
    /// milliseconds (Kafka's session.timeout.ms; brokers accept 6,000 and up by default).
    /// Shorter fails over sooner; longer rides out pauses and restarts without a move.
    #[arg(long, env = "VOTES_GROUP_SESSION_TIMEOUT_MS", default_value_t = 10_000)]
    pub group_session_timeout_ms: u64,
    /// Who writes the votes' transactions: one committer per core, or one per node whose
    /// transactions carry the batches of every core that has one ready (fewer transactions,
    /// the broker's main cost, but one offsets round trip per core in each: docs/capacity.md).
    #[arg(long, env = "VOTES_COMMITTER", value_enum, default_value_t = CommitterScope::Core)]
    pub committer: CommitterScope,
    /// Largest transaction, in votes over all the partitions of one core.
    #[arg(long, env = "VOTES_BATCH_MAX", default_value_t = 2048)]
    pub batch_max: usize,
    /// What a vote's acknowledgement should take at most, in milliseconds: each core starts
    /// its next transaction when its oldest queued vote has waited this target minus the
    /// recent commit latency (fewer, larger transactions), or at once when a batch is full.
    #[arg(long, env = "VOTES_ACK_TARGET_MS", default_value_t = 15)]
    pub ack_target_ms: u64,
    /// Longest a queued vote waits for its transaction to start, in milliseconds, whatever
    /// the target leaves (0: start every transaction as soon as the previous one ended).
    #[arg(long, env = "VOTES_LINGER_MS", default_value_t = 10)]
    pub linger_ms: u64,
    /// Bound on each blocking Kafka call (init, commit), in milliseconds.
    #[arg(long, env = "VOTES_KAFKA_TIMEOUT_MS", default_value_t = 10_000)]
    pub kafka_timeout_ms: u64,
    /// Requests per second one source address may make, per core (bursts of twice that);
    /// 0 switches the limit off. Generous by default: carrier-grade NAT puts many voters
    /// behind one address.
    #[arg(long, env = "VOTES_RATE_PER_ADDR", default_value_t = 1_000)]
    pub rate_per_addr: u32,
    /// Requests per second one /24 (IPv4) or /56 (IPv6) may make, per core; 0 = off.
    #[arg(long, env = "VOTES_RATE_PER_PREFIX", default_value_t = 10_000)]
    pub rate_per_prefix: u32,
    /// Lifetime of a proof-of-work challenge, in seconds.
    #[arg(long, env = "VOTES_CHALLENGE_TTL_S", default_value_t = 300)]
    pub challenge_ttl_s: u64,
    /// How often the node reads the results from Redis, in milliseconds (results role).
    #[arg(long, env = "VOTES_RESULTS_POLL_MS", default_value_t = 100)]
    pub results_poll_ms: u64,
    /// At most this many results events per second on each stream.
    #[arg(long, env = "VOTES_SSE_MAX_RATE", default_value_t = 10)]
    pub sse_max_rate: u32,
    /// Seconds of silence after which a results stream sends a heartbeat comment.
    #[arg(long, env = "VOTES_SSE_HEARTBEAT_S", default_value_t = 15)]
    pub sse_heartbeat_s: u64,
    /// Directory for shard snapshots (voter sets, tallies and their offset, docs/design.md §3): recovery
    /// then replays only the log after the newest good one. Off when not set. Must be on a
    /// file system with O_DIRECT (not tmpfs).
    #[arg(long, env = "VOTES_SNAPSHOT_DIR")]
    pub snapshot_dir: Option<std::path::PathBuf>,
    /// Seconds between two snapshots of an active shard that moved on.
    #[arg(long, env = "VOTES_SNAPSHOT_EVERY_S", default_value_t = 60)]
    pub snapshot_every_s: u64,
    /// New QUIC handshakes per second and core above which HTTP/3 clients must first prove
    /// their address with a Retry round trip (spoofed sources then cost no handshake work);
    /// 0 = always.
    #[arg(long, env = "VOTES_H3_RETRY_ABOVE", default_value_t = 1_000)]
    pub h3_retry_above: u64,
    /// Open connections one source address may hold, per core (beyond it a new one is closed
    /// at accept). Generous by default for carrier-grade NAT.
    #[arg(long, env = "VOTES_MAX_CONNS_PER_ADDR", default_value_t = 4_096)]
    pub max_conns_per_addr: usize,
    /// Open connections per core on the public listeners (HTTP/1.1, h2 and HTTP/3 together);
    /// beyond it a new one is closed at accept.
    #[arg(long, env = "VOTES_MAX_CONNS_PER_CORE", default_value_t = 16_384)]
    pub max_conns_per_core: usize,
    /// Open connections on the admin listener, a budget of its own: voters filling the public
    /// listeners' cap cannot lock the operators out.
    #[arg(long, env = "VOTES_MAX_ADMIN_CONNS", default_value_t = 64)]
    pub max_admin_conns: usize,
    /// When an election is closed, how long its recount waits for the persisters, in seconds.
    #[arg(long, env = "VOTES_RECOUNT_CATCH_UP_S", default_value_t = 120)]
    pub recount_catch_up_s: u64,
    /// How long a reactor with nothing to do keeps polling before it sleeps, in microseconds
    /// (0: sleep at once). Under load this saves a sleep and a wake-up (a system-wide memory
    /// barrier and a context switch) per batch of requests; idle it costs the spin once per
    /// timer tick.
    #[arg(long, env = "VOTES_SPIN_BEFORE_PARK_US", default_value_t = 0)]
    pub spin_before_park_us: u64,
    /// The public TCP listeners (`--http`, `--https`) sit behind a load balancer that starts
    /// every connection with a PROXY protocol v2 header: its source address is the client's
    /// for the rate limits and the logs, and a connection without one is closed. Never on a
    /// listener voters reach directly: anyone could claim any address. HTTP/3 is then not
    /// offered (QUIC carries no PROXY header: its voters would all have the balancer's address).
    #[arg(long, env = "VOTES_PROXY_PROTOCOL")]
    pub proxy_protocol: bool,
    /// Development sign-in: `POST /v1/dev/login` issues a token for any voter id. Never in
    /// production: anyone could vote as anyone.
    #[arg(long, env = "VOTES_DEV_LOGIN")]
    pub dev_login: bool,
}

/// How often each core hands changed tallies to the Redis link.
const FANOUT_EVERY: Duration = Duration::from_millis(20);
/// How often each core re-sends every tally, so a wiped Redis heals without a restart.
const FANOUT_ALL_EVERY: Duration = Duration::from_secs(5);

/// Hands this core's changed tallies to the Redis link; never waits for it. When the link's
/// queue is full the marks stay and the next turn tries again: tallies are absolute, so
/// coalescing loses nothing. A turn starts when a tally moved (then waits `FANOUT_EVERY` for
/// more commits to coalesce) or when the full re-send is due: an idle core is not woken
/// 50 times a second for nothing.
async fn fan_out(
    shards: Rc<ShardHost>,
    link: votes_tally::fanout::LinkHandle,
    shutdown: votes_net::LocalSignal,
) {
    let mut last_all = std::time::Instant::now();
    while !shutdown.is_fired() {
        let all_due = FANOUT_ALL_EVERY.saturating_sub(last_all.elapsed());
        let moved = futures_lite::future::or(
            async {
                shards.tallies_moved().await;
                true
            },
            async {
                glommio::timer::sleep(all_due).await;
                false
            },
        );
        futures_lite::future::or(
            async {
                if moved.await {
                    glommio::timer::sleep(FANOUT_EVERY).await;
                }
            },
            shutdown.wait(),
        )
        .await;
        let all = last_all.elapsed() >= FANOUT_ALL_EVERY;
        if all {
            last_all = std::time::Instant::now();
        }
        let updates = shards.tally_updates(all);
        if !updates.is_empty() && link.offer(updates).is_err() {
            shards.mark_all_dirty();
        }
    }
    // The last commits before shutdown still reach the link, which flushes them on stop.
    let updates = shards.tally_updates(true);
    if !updates.is_empty() {
        let _ = link.offer(updates);
    }
}

/// `--committer`: the granularity of the votes' transactions (docs/capacity.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CommitterScope {
    Node,
    Core,
}
