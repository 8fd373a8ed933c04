//! `votes serve`: the appliance (docs/design.md §1). One reactor per configured CPU; this node owns
//! every partition of `votes`, spread over its cores; each core serves the voter API and owns
//! its shards (ingest), serves results and their streams (results), and the admin API
//! (admin); core 0 follows the elections topic. One thread per node links to Redis: it
//! publishes the shards' tallies and polls the results every core serves.

mod app;
mod fleet;
mod metrics;
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
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use votes_core::pow::PowKey;
use votes_net::{CoreContext, ListenerKind, ListenerSpec, ReactorConfig, start_reactors};
use votes_tally::elections_log::{ElectionsReader, ElectionsView, ElectionsWriter};

use crate::Common;
use app::{CoreMsg, NodeShared, Roles};
use fleet::FleetBoard;
use metrics::NodeMetrics;
use results::ResultsSettings;
use shards::{CommitSettings, ShardHost};

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

/// Makes `dir` (which this process created or owns) readable by its owner only.
fn private_dir(dir: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("making {} private (mode 0700)", dir.display()))
}

fn behind_proxy(spec: ListenerSpec, proxy_protocol: bool) -> ListenerSpec {
    if proxy_protocol {
        spec.behind_proxy()
    } else {
        spec
    }
}

/// How often each core hands changed tallies to the Redis link.
const FANOUT_EVERY: Duration = Duration::from_millis(20);
/// How often each core re-sends every tally, so a wiped Redis heals without a restart.
const FANOUT_ALL_EVERY: Duration = Duration::from_secs(5);

/// How this node's forwarding links are secured: mutual TLS from the `--internal-tls-*` files,
/// or else plaintext sealed under `VOTES_FORWARD_KEY`; neither is an error that says both.
fn link_security(args: &ServeArgs) -> Result<votes_net::forward::LinkSecurity> {
    use votes_net::forward::LinkSecurity;
    if let (Some(cert), Some(key), Some(ca)) = (
        &args.internal_tls_cert,
        &args.internal_tls_key,
        &args.internal_tls_ca,
    ) {
        let tls = votes_net::internal_tls(cert, key, ca).context("--internal-tls-*")?;
        return Ok(LinkSecurity::Tls(tls));
    }
    let secret = secret("VOTES_FORWARD_KEY", 32).context(
        "--internal needs its links secured: give --internal-tls-cert, --internal-tls-key and \
         --internal-tls-ca (mutual TLS), or, for development, VOTES_FORWARD_KEY (plaintext, a MAC \
         on every frame), the same on every node",
    )?;
    tracing::warn!(
        "forwarding links are plaintext (VOTES_FORWARD_KEY): votes cross the network readable, \
         though not forgeable; give --internal-tls-cert/-key/-ca for production"
    );
    Ok(LinkSecurity::Keyed(
        votes_core::forward::derive_key(&secret).into(),
    ))
}

/// A secret from the environment, required and at least `min` bytes.
fn secret(name: &str, min: usize) -> Result<Vec<u8>> {
    crate::secrets::read(name, min).map(String::into_bytes)
}

pub fn run(common: &Common, args: &ServeArgs) -> Result<()> {
    let roles = checked_roles(args)?;
    match votes_tuning::host::raise_nofile() {
        Ok(n) => tracing::debug!(open_files = n, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
    }
    let names = common.names()?;
    let token_secret = secret("VOTES_TOKEN_KEY", 32)?;
    let token_keys = crate::keys::token_keys(&token_secret)?;
    let audit_key = secret("VOTES_AUDIT_KEY", 32)?;
    let admin_token = if roles.admin {
        Some(
            String::from_utf8(secret("VOTES_ADMIN_TOKEN", 16)?)
                .context("VOTES_ADMIN_TOKEN must be UTF-8")?,
        )
    } else {
        None
    };
    // The PoW key is derived, so operators manage one secret less and it still differs from
    // the token key (a challenge can never pass for a token or the other way round).
    let pow_key = PowKey::new(&votes_core::pow::derive_key(&token_secret));
    let kafka_timeout = Duration::from_millis(args.kafka_timeout_ms);

    let partitions = votes_partitions(&common.kafka_brokers, &names, kafka_timeout)?;
    let allowed = votes_tuning::host::allowed_cpus();
    let cpus = match &args.cpus {
        Some(list) => list.clone(),
        None => votes_tuning::placement(&allowed, args.cores),
    };
    let cores = cpus.len();
    let node = args.node_id.clone().unwrap_or_else(hostname);
    // The node id travels in records, hellos and the group's client ids: it must fit all.
    let probe_tag = votes_core::group::MemberTag {
        node: node.clone(),
        core: 0,
        internal: SocketAddr::from(([127, 0, 0, 1], 1)),
    };
    if node.is_empty()
        || node.len() > votes_core::record::NODE_MAX
        || votes_core::group::MemberTag::parse(&probe_tag.client_id()).as_ref() != Some(&probe_tag)
    {
        bail!(
            "--node-id {node:?} must be 1 to {} bytes without '/'",
            votes_core::record::NODE_MAX
        );
    }
    if args.group_session_timeout_ms == 0 {
        bail!("--group-session-timeout-ms must be positive");
    }
    if let Some(a) = args.internal
        && a.ip().is_unspecified()
        && args.internal_advertise.is_none()
    {
        bail!(
            "--internal {a} binds every address: give --internal-advertise, the address other nodes reach"
        );
    }

    // Every election created before this process started, before any vote is taken.
    let mut view = ElectionsView::default();
    let mut reader = ElectionsReader::new(&common.kafka_brokers, &names)?;
    reader
        .load_to_end(&mut view, kafka_timeout)
        .context("loading elections")?;
    let reader = Mutex::new(Some(reader));
    let writer = Arc::new(ElectionsWriter::new(
        &common.kafka_brokers,
        &names,
        kafka_timeout,
    )?);

    let node_metrics = NodeMetrics::new(cores, partitions);
    let fleet_board = Arc::new(FleetBoard::default());
    let fleet_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let fleet_watch = if roles.ingest {
        let watch =
            votes_tally::membership::GroupWatch::new(&common.kafka_brokers, &names, partitions)?;
        Some(fleet::start_watch(
            watch,
            fleet_board.clone(),
            fleet_stop.clone(),
            kafka_timeout,
        )?)
    } else {
        None
    };
    // Each core's membership events: the senders go to the members, which join the group once
    // the listeners are bound (their client ids carry the internal address).
    let (member_events, core_events): (Vec<_>, Vec<_>) =
        (0..cores).map(|_| std::sync::mpsc::channel()).unzip();
    let core_events = Mutex::new(core_events.into_iter().map(Some).collect::<Vec<_>>());
    // Each core's doorbell, rung by its member thread after each ownership event.
    let ringers: Arc<Mutex<Vec<Option<votes_net::doorbell::Ringer>>>> =
        Arc::new(Mutex::new(vec![None; cores]));
    let assignments: Vec<votes_tally::membership::Assignment> =
        (0..cores).map(|_| Default::default()).collect();
    let link_security = match args.internal {
        Some(_) => Some(link_security(args)?),
        None => None,
    };
    // A revocation waits for the transaction in flight: its produce and commit calls are each
    // bounded by the Kafka timeout, and an abort may follow.
    let handoff_timeout = kafka_timeout * 4;
    let redis = common.redis()?;
    // Wrong credentials or an untrusted certificate are settings to fix: stop here and say so.
    // A Redis that does not answer yet may come later (the link retries; results wait).
    // Every role but a lone admin talks to Redis (the link, the results, the receipts).
    let check = if roles.ingest || roles.results {
        redis.check(Duration::from_secs(2))
    } else {
        Ok(())
    };
    match check {
        Ok(()) => {}
        Err(votes_tally::redis_target::RedisCheck::Refused(why)) => {
            bail!("Redis at {} refused this node: {why}", redis.display())
        }
        Err(votes_tally::redis_target::RedisCheck::Unreachable(why)) => {
            tracing::warn!(redis = %redis.display(), %why, "Redis does not answer yet; the link retries");
        }
    }
    let link = if roles.ingest || roles.results {
        let (handle, thread) = votes_tally::fanout::start(votes_tally::fanout::LinkConfig {
            redis: redis.clone(),
            names: names.clone(),
            partitions,
            poll_every: roles
                .results
                .then(|| Duration::from_millis(args.results_poll_ms)),
        })
        .context("starting the Redis link")?;
        Some((handle, thread))
    } else {
        None
    };
    let link_handle = link.as_ref().map(|(h, _)| h.clone());
    // The AWS SDK and the receipts' Redis reads run on tokio: a small runtime of its own, off
    // the reactors.
    let sidecar = if roles.ingest || roles.results {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("dynamodb")
            .enable_all()
            .build()?;
        let client = rt.block_on(votes_tally::dynamo::client(common.dynamodb_endpoint()));
        Some((rt, client))
    } else {
        None
    };
    let shared = Arc::new(NodeShared {
        roles,
        node: node.clone(),
        started: std::time::Instant::now(),
        dev_login: args.dev_login,
        link_stats: link_handle.as_ref().map(|h| h.stats.clone()),
        dynamo: sidecar
            .as_ref()
            .filter(|_| roles.ingest)
            .map(|(rt, client)| (rt.handle().clone(), client.clone())),
        receipts: sidecar
            .as_ref()
            .filter(|_| roles.results)
            .map(|(rt, _)| {
                receipts::ReceiptsReader::new(rt.handle().clone(), &redis, names.clone())
            })
            .transpose()?,
        names: names.clone(),
        recount: roles.admin.then(|| {
            Arc::new(app::Recounter::new(
                votes_tally::recount::RecountConfig {
                    audit_key: audit_key.clone(),
                    brokers: common.kafka_brokers.clone(),
                    redis: redis.clone(),
                    names: names.clone(),
                    persist_group: crate::persist::default_group(&names),
                    catch_up_timeout: Duration::from_secs(args.recount_catch_up_s),
                    redis_settle: Duration::from_secs(10),
                    kafka_timeout: Duration::from_secs(30),
                },
                common.dynamodb_endpoint().map(str::to_owned),
            ))
        }),
        token_keys,
        pow_key,
        audit_key,
        admin_token,
        partitions,
        fleet: fleet_board.clone(),
        fleet_stale_after: Duration::from_millis(args.group_session_timeout_ms),
        metrics: node_metrics.clone(),
        elections_writer: writer,
        challenge_ttl: Duration::from_secs(args.challenge_ttl_s),
    });
    let settings = commit_settings(common, args, roles, &names, &node, cores, kafka_timeout)?;

    let mut cfg = ReactorConfig::new(cpus.clone());
    cfg.spin_before_park =
        (args.spin_before_park_us > 0).then(|| Duration::from_micros(args.spin_before_park_us));
    cfg.http.max_connections_per_addr = args.max_conns_per_addr;
    cfg.http.max_connections_per_core = args.max_conns_per_core;
    cfg.http.max_admin_connections = args.max_admin_conns;
    cfg.http.h3_retry_above_handshakes = args.h3_retry_above;
    add_listeners(&mut cfg, args, roles, shared.admin_token.is_some())?;
    // Commits run on each core's committer thread; the pool replays (one per partition a core
    // takes, all at once after a failover), encodes snapshots and retires clients.
    let per_core = (partitions as usize).div_ceil(cores).max(1);
    cfg.blocking_threads = per_core.min(8) + 1;
    cfg.max_blocking_in_flight = per_core * 2 + 8;

    // Test-only (tests/close_frontier.rs): this node applies election changes from the topic
    // this much later, as a node whose view lags would.
    let elections_lag = std::env::var("VOTES_TEST_ELECTIONS_LAG_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis);
    if let Some(lag) = elections_lag {
        tracing::warn!(
            ?lag,
            "VOTES_TEST_ELECTIONS_LAG_MS: election changes are applied late (tests only)"
        );
    }
    let wiring = wiring::CoreWiring {
        shared: shared.clone(),
        settings: Arc::new(settings),
        initial: view,
        events: core_events,
        ringers: ringers.clone(),
        assignments: assignments.clone(),
        link_security,
        link: link_handle,
        results: ResultsSettings {
            max_rate: args.sse_max_rate,
            heartbeat: Duration::from_secs(args.sse_heartbeat_s),
            stall: votes_net::HttpLimits::default().response_stall_timeout,
        },
        rate_per_addr: args.rate_per_addr,
        rate_per_prefix: args.rate_per_prefix,
        elections_reader: reader,
        elections_lag,
    };
    let reactors = start_reactors(cfg, move |mut ctx: CoreContext<CoreMsg>| {
        wiring.core(&mut ctx)
    })
    .context("starting the reactors")?;
    for l in reactors.listeners() {
        tracing::info!(kind = ?l.spec.kind, addr = %l.addr, "listening");
    }
    // Join the serve group, one member per core, now that the internal address is known.
    let internal = args
        .internal_advertise
        .or_else(|| reactors.local_addr(ListenerKind::Internal))
        // No listener: peers cannot forward here (their attempts fail fast and answer 503).
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    let members = if roles.ingest {
        join_group(
            &GroupJoin {
                common,
                args,
                names: &names,
                node: &node,
                internal,
                handoff_timeout,
                ringers: &ringers,
                assignments: &assignments,
            },
            member_events,
        )?
    } else {
        Vec::new()
    };
    tracing::info!(cores, partitions, node = %node, %internal, "serving");

    shutdown_on_signal(reactors.shutdown_handle())?;
    let joined = reactors.join().context("reactors");
    drop(members);
    fleet_stop.store(true, std::sync::atomic::Ordering::Release);
    if let Some(t) = fleet_watch
        && t.join().is_err()
    {
        tracing::error!("the fleet watch panicked");
    }
    if let Some((rt, _)) = sidecar {
        rt.shutdown_timeout(Duration::from_secs(1));
    }
    if let Some((handle, thread)) = link {
        // Every core is gone: the link writes what it still holds (bounded by its timeouts).
        handle.stop();
        if thread.join().is_err() {
            tracing::error!("the Redis link panicked");
        }
    }
    joined?;
    Ok(())
}

/// What each core's member of the serve group needs.
struct GroupJoin<'a> {
    common: &'a Common,
    args: &'a ServeArgs,
    names: &'a votes_core::Names,
    node: &'a str,
    /// The address other nodes forward to (in the member's client id).
    internal: SocketAddr,
    handoff_timeout: Duration,
    ringers: &'a Mutex<Vec<Option<votes_net::doorbell::Ringer>>>,
    assignments: &'a [votes_tally::membership::Assignment],
}

/// Joins the serve group, one member per core, once the listeners are bound (the client ids
/// carry the internal address); each member rings its core's doorbell after an event.
fn join_group(
    j: &GroupJoin<'_>,
    events: Vec<std::sync::mpsc::Sender<votes_tally::membership::OwnershipEvent>>,
) -> Result<Vec<votes_tally::membership::Member>> {
    let mut members = Vec::with_capacity(events.len());
    for (core, events) in events.into_iter().enumerate() {
        let cfg = votes_tally::membership::MemberConfig {
            brokers: j.common.kafka_brokers.clone(),
            names: j.names.clone(),
            tag: votes_core::group::MemberTag {
                node: j.node.to_owned(),
                core: u16::try_from(core)?,
                internal: j.internal,
            },
            session_timeout: Duration::from_millis(j.args.group_session_timeout_ms),
            handoff_timeout: j.handoff_timeout,
        };
        let ringer = j.ringers.lock().unwrap_or_else(|p| p.into_inner())[core]
            .take()
            .context("every core made its doorbell")?;
        members.push(
            votes_tally::membership::Member::start(
                &cfg,
                events,
                j.assignments[core].clone(),
                Box::new(move || ringer.ring()),
            )
            .context("joining the serve group")?,
        );
    }
    Ok(members)
}

/// How this node's cores commit: the committer (one per core, or one for the node), batch
/// bounds, pacing, the Kafka timeout, and where snapshots go.
fn commit_settings(
    common: &Common,
    args: &ServeArgs,
    roles: Roles,
    names: &votes_core::Names,
    node: &str,
    cores: usize,
    kafka_timeout: Duration,
) -> Result<CommitSettings> {
    let node_committer = match args.committer {
        CommitterScope::Core => None,
        CommitterScope::Node if !roles.ingest => None,
        CommitterScope::Node => Some(Arc::new(
            votes_tally::committer::CommitterThread::start(
                votes_tally::committer::CommitterConfig {
                    brokers: common.kafka_brokers.clone(),
                    names: names.clone(),
                    node: node.to_owned(),
                    scope: votes_tally::committer::Scope::Node,
                    timeout: kafka_timeout,
                },
                cores,
            )
            .context("starting the node's committer")?,
        )),
    };
    Ok(CommitSettings {
        brokers: common.kafka_brokers.clone(),
        names: names.clone(),
        node: node.to_owned(),
        node_committer,
        max_batch: args.batch_max,
        max_queued: args.batch_max * 8,
        pacing: votes_tally::engine::PacingConfig {
            ack_target: args.ack_target_ms * 1_000,
            min_window: 0,
            max_window: args.linger_ms * 1_000,
        },
        kafka_timeout,
        snapshots: match &args.snapshot_dir {
            None => None,
            Some(root) => {
                if args.snapshot_every_s == 0 {
                    bail!("--snapshot-every-s must be positive");
                }
                // The prefix names the deployment's log and the node its writer: two nodes on
                // one host never share (or prune) each other's files.
                let dir = root.join(format!("{}votes", names.prefix())).join(node);
                std::fs::create_dir_all(&dir).with_context(|| {
                    format!("creating the snapshot directory {}", dir.display())
                })?;
                // Snapshots hold who voted: this service's eyes only, whatever the umask.
                private_dir(&dir)?;
                Some(shards::SnapshotSettings {
                    dir,
                    every: Duration::from_secs(args.snapshot_every_s),
                    keep: 2,
                })
            }
        },
    })
}

/// The roles asked for, once the flags that must hold together do.
fn checked_roles(args: &ServeArgs) -> Result<Roles> {
    for role in &args.roles {
        if !matches!(role.as_str(), "ingest" | "results" | "admin") {
            bail!("unknown role {role:?}: the roles are ingest, results and admin");
        }
    }
    let has = |r: &str| args.roles.iter().any(|x| x == r);
    let roles = Roles {
        ingest: has("ingest"),
        results: has("results"),
        admin: has("admin"),
    };
    if !(roles.ingest || roles.results || roles.admin) {
        bail!("--roles is empty: give at least one of ingest, results, admin");
    }
    if args.sse_max_rate == 0 || args.sse_heartbeat_s == 0 || args.results_poll_ms == 0 {
        bail!("--sse-max-rate, --sse-heartbeat-s and --results-poll-ms must be positive");
    }
    if Duration::from_secs(args.sse_heartbeat_s)
        >= votes_net::HttpLimits::default().response_stall_timeout
    {
        bail!(
            "--sse-heartbeat-s must be below the response stall timeout ({:?}): a quiet stream \
             would be closed as a stalled reader",
            votes_net::HttpLimits::default().response_stall_timeout
        );
    }
    if args.max_conns_per_addr == 0 || args.max_conns_per_core == 0 || args.max_admin_conns == 0 {
        bail!("--max-conns-per-addr, --max-conns-per-core and --max-admin-conns must be positive");
    }
    if args.dev_login {
        // Anyone who reaches it can vote as anyone: only a developer's own machine may.
        let mut public = vec![args.http];
        if args.tls_cert.is_some() {
            public.push(args.https);
        }
        if let Some(open) = public.iter().find(|a| !a.ip().is_loopback()) {
            bail!(
                "--dev-login lets anyone sign in as any voter: it needs every public listener on                  loopback, and {open} is not"
            );
        }
        tracing::warn!("--dev-login is on: anyone can sign in as any voter; development only");
    }
    Ok(roles)
}

/// The node's listeners: public plain and TLS (HTTP/3 beside it) for the public roles, the
/// admin listener when this node serves the admin role, the internal one for forwarding.
fn add_listeners(
    cfg: &mut ReactorConfig,
    args: &ServeArgs,
    roles: Roles,
    admin: bool,
) -> Result<()> {
    let public = roles.ingest || roles.results;
    if public {
        cfg.listeners.push(behind_proxy(
            ListenerSpec::plain(args.http, ListenerKind::Public),
            args.proxy_protocol,
        ));
    }
    match (&args.tls_cert, &args.tls_key) {
        (Some(_), Some(_)) if !public => {
            bail!("--tls-cert/--tls-key serve the public API: add the ingest or results role")
        }
        (Some(cert), Some(key)) => {
            let tls =
                votes_net::tls_server_config(cert, key).context("loading the TLS certificate")?;
            cfg.listeners.push(behind_proxy(
                ListenerSpec::tls(args.https, ListenerKind::Public, tls),
                args.proxy_protocol,
            ));
        }
        (None, None) => {}
        _ => bail!("--tls-cert and --tls-key go together"),
    }
    if admin {
        let admin = match (&args.admin_tls_cert, &args.admin_tls_key) {
            (Some(cert), Some(key)) => {
                let tls = votes_net::tls_server_config(cert, key)
                    .context("loading the admin listener's TLS certificate")?;
                ListenerSpec::tls(args.admin, ListenerKind::Admin, tls)
            }
            _ => ListenerSpec::plain(args.admin, ListenerKind::Admin),
        };
        cfg.listeners.push(admin);
    }
    if let Some(addr) = args.internal {
        if !roles.ingest {
            bail!("--internal takes votes forwarded to this node's shards: add the ingest role");
        }
        cfg.listeners
            .push(ListenerSpec::plain(addr, ListenerKind::Internal));
    }
    Ok(())
}

/// SIGTERM or Ctrl-C starts the reactors' shutdown, from a thread of its own.
fn shutdown_on_signal(shutdown: votes_net::ShutdownHandle) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::spawn(move || {
        rt.block_on(crate::stop::requested());
        tracing::info!("shutting down");
        shutdown.trigger();
    });
    Ok(())
}

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

/// Partitions of the `votes` topic; the routing function depends on it.
fn votes_partitions(brokers: &str, names: &votes_core::Names, timeout: Duration) -> Result<u32> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = votes_tally::kafka::base_config(brokers).create()?;
    let topic = names.votes_topic();
    let md = consumer
        .fetch_metadata(Some(&topic), timeout)
        .with_context(|| format!("Kafka at {brokers} is not reachable"))?;
    let n = md.topics().first().map_or(0, |t| t.partitions().len());
    if n == 0 {
        bail!("topic {topic} does not exist: run `votes init` first");
    }
    Ok(u32::try_from(n)?)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "node".into())
}

/// `--committer`: the granularity of the votes' transactions (docs/capacity.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CommitterScope {
    Node,
    Core,
}
