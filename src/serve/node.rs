//! Node start-up and shutdown: the flags checked, the clients and threads every core shares
//! started in order, the reactors started with each core's wiring (`wiring.rs`), the serve
//! group joined once the listeners are bound, and everything stopped in reverse on a signal.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use votes_core::pow::PowKey;
use votes_net::{CoreContext, ListenerKind, ListenerSpec, ReactorConfig, start_reactors};
use votes_tally::elections_log::{ElectionsReader, ElectionsView, ElectionsWriter};

use super::app::{self, CoreMsg, NodeShared, Roles};
use super::fleet::{self, FleetBoard};
use super::metrics::NodeMetrics;
use super::results::ResultsSettings;
use super::shards::{self, CommitSettings};
use super::{CommitterScope, ServeArgs, receipts, wiring};
use crate::Common;

/// Starts the node, serves until SIGTERM or Ctrl-C, then stops its threads in order. Long
/// because it is the start-up order itself, read top to bottom: each step is a function
/// below, and what is left here is handing one step's result to the next.
pub fn run(common: &Common, args: &ServeArgs) -> Result<()> {
    let roles = checked_roles(args)?;
    match votes_tuning::host::raise_nofile() {
        Ok(n) => tracing::debug!(open_files = n, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
    }
    let names = common.names()?;
    let node = checked_node_id(args)?;
    // Secrets and link settings first: a missing one stops the node before it connects.
    let keys = NodeKeys::read(roles)?;
    let link_security = args.internal.map(|_| link_security(args)).transpose()?;
    let kafka_timeout = Duration::from_millis(args.kafka_timeout_ms);
    let partitions = votes_partitions(&common.kafka_brokers, &names, kafka_timeout)?;
    let cpus = match &args.cpus {
        Some(list) => list.clone(),
        None => votes_tuning::placement(&votes_tuning::host::allowed_cpus(), args.cores),
    };
    let cores = cpus.len();
    let elections = Elections::load(common, &names, kafka_timeout)?;
    let fleet = FleetWatch::start(common, &names, partitions, roles, kafka_timeout)?;
    let redis = common.redis()?;
    check_redis(&redis, roles)?;
    let link = start_redis_link(args, roles, &redis, &names, partitions)?;
    let sidecar = start_sidecar(common, roles)?;
    let shared = Arc::new(node_shared(
        NodeParts {
            common,
            args,
            roles,
            node: &node,
            names: &names,
            partitions,
            redis: &redis,
            sidecar: sidecar.as_ref(),
            link: link.as_ref().map(|(h, _)| h),
            fleet: fleet.board.clone(),
            metrics: NodeMetrics::new(cores, partitions),
        },
        keys,
        elections.writer,
    )?);
    let (membership, core_events) =
        Membership::new(cores, Duration::from_millis(args.group_session_timeout_ms));
    let wiring = wiring::CoreWiring {
        shared: shared.clone(),
        settings: Arc::new(commit_settings(
            common,
            args,
            roles,
            &names,
            &node,
            cores,
            fleet.board.clone(),
        )?),
        initial: elections.view,
        events: core_events,
        ringers: membership.ringers.clone(),
        assignments: membership.assignments.clone(),
        rejoins: membership.rejoins.clone(),
        link_security,
        link: link.as_ref().map(|(h, _)| h.clone()),
        results: ResultsSettings {
            max_rate: args.sse_max_rate,
            heartbeat: Duration::from_secs(args.sse_heartbeat_s),
            stall: votes_net::HttpLimits::default().response_stall_timeout,
        },
        rate_per_addr: args.rate_per_addr,
        rate_per_prefix: args.rate_per_prefix,
        elections_reader: elections.reader,
        elections_lag: elections_lag_for_tests(),
    };
    let cfg = reactor_config(args, roles, cpus, partitions, shared.admin_token.is_some())?;
    let reactors = start_reactors(cfg, move |mut ctx: CoreContext<CoreMsg>| {
        wiring.core(&mut ctx)
    })
    .context("starting the reactors")?;
    for l in reactors.listeners() {
        tracing::info!(kind = ?l.spec.kind, addr = %l.addr, "listening");
    }
    let internal = args
        .internal_advertise
        .or_else(|| reactors.local_addr(ListenerKind::Internal))
        // No listener: peers cannot forward here (their attempts fail fast and answer 503).
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    let members = if roles.ingest {
        membership.join(&GroupJoin {
            common,
            args,
            names: &names,
            node: &node,
            internal,
            // A revocation waits for the transaction in flight: its produce and commit calls
            // are each bounded by the Kafka timeout, and an abort may follow.
            handoff_timeout: kafka_timeout * 4,
        })?
    } else {
        Vec::new()
    };
    tracing::info!(cores, partitions, node = %node, %internal, "serving");

    shutdown_on_signal(reactors.shutdown_handle())?;
    let joined = reactors.join().context("reactors");
    drop(members);
    fleet.stop();
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
    joined
}

/// `--node-id` (default: the hostname), checked with the flags that place the node in the
/// fleet. The node id travels in records, hellos and the group's client ids: it must fit all.
fn checked_node_id(args: &ServeArgs) -> Result<String> {
    let node = args.node_id.clone().unwrap_or_else(hostname);
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
    Ok(node)
}

/// The elections as the node starts: every election created before this process, loaded
/// before any vote is taken, the reader core 0 follows the topic with from there, and the
/// admin API's writer.
struct Elections {
    view: ElectionsView,
    reader: Mutex<Option<ElectionsReader>>,
    writer: Arc<ElectionsWriter>,
}

impl Elections {
    fn load(common: &Common, names: &votes_core::Names, timeout: Duration) -> Result<Self> {
        let mut view = ElectionsView::default();
        let mut reader = ElectionsReader::new(&common.kafka_brokers, names)?;
        reader
            .load_to_end(&mut view, timeout)
            .context("loading elections")?;
        let writer = Arc::new(ElectionsWriter::new(&common.kafka_brokers, names, timeout)?);
        Ok(Self {
            view,
            reader: Mutex::new(Some(reader)),
            writer,
        })
    }
}

/// The fleet map (partition → node and core) as the serve group describes it, refreshed by a
/// thread of its own on an ingest node; an empty board elsewhere.
struct FleetWatch {
    board: Arc<FleetBoard>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FleetWatch {
    fn start(
        common: &Common,
        names: &votes_core::Names,
        partitions: u32,
        roles: Roles,
        timeout: Duration,
    ) -> Result<Self> {
        let board = Arc::new(FleetBoard::default());
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = if roles.ingest {
            let watch =
                votes_tally::membership::GroupWatch::new(&common.kafka_brokers, names, partitions)?;
            Some(fleet::start_watch(
                watch,
                board.clone(),
                stop.clone(),
                timeout,
            )?)
        } else {
            None
        };
        Ok(Self {
            board,
            stop,
            thread,
        })
    }

    fn stop(self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        if let Some(t) = self.thread
            && t.join().is_err()
        {
            tracing::error!("the fleet watch panicked");
        }
    }
}

/// Wrong Redis credentials or an untrusted certificate are settings to fix: stop here and say
/// so. A Redis that does not answer yet may come later (the link retries; results wait).
/// Every role but a lone admin talks to Redis (the link, the results, the receipts).
fn check_redis(redis: &votes_tally::RedisTarget, roles: Roles) -> Result<()> {
    if !(roles.ingest || roles.results) {
        return Ok(());
    }
    match redis.check(Duration::from_secs(2)) {
        Ok(()) => Ok(()),
        Err(votes_tally::redis_target::RedisCheck::Refused(why)) => {
            bail!("Redis at {} refused this node: {why}", redis.display())
        }
        Err(votes_tally::redis_target::RedisCheck::Unreachable(why)) => {
            tracing::warn!(redis = %redis.display(), %why, "Redis does not answer yet; the link retries");
            Ok(())
        }
    }
}

type RedisLink = (votes_tally::fanout::LinkHandle, std::thread::JoinHandle<()>);

/// The node's one thread to Redis: it publishes the shards' tallies (ingest) and polls the
/// results every core serves (results).
fn start_redis_link(
    args: &ServeArgs,
    roles: Roles,
    redis: &votes_tally::RedisTarget,
    names: &votes_core::Names,
    partitions: u32,
) -> Result<Option<RedisLink>> {
    if !(roles.ingest || roles.results) {
        return Ok(None);
    }
    let link = votes_tally::fanout::start(votes_tally::fanout::LinkConfig {
        redis: redis.clone(),
        names: names.clone(),
        partitions,
        poll_every: roles
            .results
            .then(|| Duration::from_millis(args.results_poll_ms)),
    })
    .context("starting the Redis link")?;
    Ok(Some(link))
}

type Sidecar = (tokio::runtime::Runtime, aws_sdk_dynamodb::Client);

/// The AWS SDK and the receipts' Redis reads run on tokio: a small runtime of its own, off
/// the reactors.
fn start_sidecar(common: &Common, roles: Roles) -> Result<Option<Sidecar>> {
    if !(roles.ingest || roles.results) {
        return Ok(None);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("dynamodb")
        .enable_all()
        .build()?;
    let client = rt.block_on(votes_tally::dynamo::client(common.dynamodb_endpoint()));
    Ok(Some((rt, client)))
}

/// What the node's shared state is made of, started before it.
struct NodeParts<'a> {
    common: &'a Common,
    args: &'a ServeArgs,
    roles: Roles,
    node: &'a str,
    names: &'a votes_core::Names,
    partitions: u32,
    redis: &'a votes_tally::RedisTarget,
    sidecar: Option<&'a Sidecar>,
    link: Option<&'a votes_tally::fanout::LinkHandle>,
    fleet: Arc<FleetBoard>,
    metrics: Arc<NodeMetrics>,
}

/// The node's secrets, from the environment (or systemd credentials).
struct NodeKeys {
    token_keys: votes_core::token::TokenKeys,
    pow_key: PowKey,
    audit_key: Vec<u8>,
    admin_token: Option<String>,
}

impl NodeKeys {
    fn read(roles: Roles) -> Result<Self> {
        let token_secret = secret("VOTES_TOKEN_KEY", 32)?;
        let audit_key = secret("VOTES_AUDIT_KEY", 32)?;
        let admin_token = if roles.admin {
            Some(
                String::from_utf8(secret("VOTES_ADMIN_TOKEN", 16)?)
                    .context("VOTES_ADMIN_TOKEN must be UTF-8")?,
            )
        } else {
            None
        };
        Ok(Self {
            token_keys: crate::keys::token_keys(&token_secret)?,
            // The PoW key is derived, so operators manage one secret less and it still differs
            // from the token key (a challenge can never pass for a token or the other way
            // round).
            pow_key: PowKey::new(&votes_core::pow::derive_key(&token_secret)),
            audit_key,
            admin_token,
        })
    }
}

/// What every core of the node reads: the keys, the clients started before, the limits from
/// the flags.
fn node_shared(
    p: NodeParts<'_>,
    keys: NodeKeys,
    elections_writer: Arc<ElectionsWriter>,
) -> Result<NodeShared> {
    let NodeKeys {
        token_keys,
        pow_key,
        audit_key,
        admin_token,
    } = keys;
    let recount = p.roles.admin.then(|| {
        Arc::new(app::Recounter::new(
            votes_tally::recount::RecountConfig {
                audit_key: audit_key.clone(),
                brokers: p.common.kafka_brokers.clone(),
                redis: p.redis.clone(),
                names: p.names.clone(),
                persist_group: crate::persist::default_group(p.names),
                catch_up_timeout: Duration::from_secs(p.args.recount_catch_up_s),
                redis_settle: Duration::from_secs(10),
                kafka_timeout: Duration::from_secs(30),
            },
            p.common.dynamodb_endpoint().map(str::to_owned),
        ))
    });
    Ok(NodeShared {
        roles: p.roles,
        node: p.node.to_owned(),
        started: std::time::Instant::now(),
        dev_login: p.args.dev_login,
        link_stats: p.link.map(|h| h.stats.clone()),
        dynamo: p
            .sidecar
            .filter(|_| p.roles.ingest)
            .map(|(rt, client)| (rt.handle().clone(), client.clone())),
        receipts: p
            .sidecar
            .filter(|_| p.roles.results)
            .map(|(rt, _)| {
                receipts::ReceiptsReader::new(rt.handle().clone(), p.redis, p.names.clone())
            })
            .transpose()?,
        names: p.names.clone(),
        recount,
        token_keys,
        pow_key,
        audit_key,
        admin_token,
        partitions: p.partitions,
        fleet: p.fleet,
        fleet_stale_after: Duration::from_millis(p.args.group_session_timeout_ms),
        metrics: p.metrics,
        elections_writer,
        challenge_ttl: Duration::from_secs(p.args.challenge_ttl_s),
        forward_hold: forward_hold_for_tests().unwrap_or(app::FORWARD_HOLD),
    })
}

/// The reactors' settings: their CPUs, connection caps, listeners and blocking pool.
fn reactor_config(
    args: &ServeArgs,
    roles: Roles,
    cpus: Vec<usize>,
    partitions: u32,
    admin: bool,
) -> Result<ReactorConfig> {
    let cores = cpus.len();
    let mut cfg = ReactorConfig::new(cpus);
    cfg.spin_before_park =
        (args.spin_before_park_us > 0).then(|| Duration::from_micros(args.spin_before_park_us));
    cfg.http.max_connections_per_addr = args.max_conns_per_addr;
    cfg.http.max_connections_per_core = args.max_conns_per_core;
    cfg.http.max_admin_connections = args.max_admin_conns;
    cfg.http.h3_retry_above_handshakes = args.h3_retry_above;
    add_listeners(&mut cfg, args, roles, admin)?;
    // Commits run on each core's committer thread; the pool replays (one per partition a core
    // takes, all at once after a failover), encodes snapshots and retires clients.
    let per_core = (partitions as usize).div_ceil(cores).max(1);
    cfg.blocking_threads = per_core.min(8) + 1;
    cfg.max_blocking_in_flight = per_core * 2 + 8;
    Ok(cfg)
}

/// Test-only (tests/close_frontier.rs): this node applies election changes from the topic
/// this much later, as a node whose view lags would.
fn elections_lag_for_tests() -> Option<Duration> {
    test_duration(
        "VOTES_TEST_ELECTIONS_LAG_MS",
        "election changes are applied late",
    )
}

/// Test-only (tests/fleet.rs): forwarded votes wait this long for this node's view instead of
/// `FORWARD_HOLD`, so a test can change the election while a vote is held without racing the
/// bound.
fn forward_hold_for_tests() -> Option<Duration> {
    test_duration(
        "VOTES_TEST_FORWARD_HOLD_MS",
        "forwarded votes wait this long for an election",
    )
}

/// A duration in milliseconds that a test sets in the environment `var`, warned about with
/// what it changes, since a production node must never run with it.
fn test_duration(var: &str, effect: &str) -> Option<Duration> {
    let ms: u64 = std::env::var(var).ok()?.parse().ok()?;
    let duration = Duration::from_millis(ms);
    tracing::warn!(?duration, "{var}: {effect} (tests only)");
    Some(duration)
}

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

/// What each core's member of the serve group needs.
struct GroupJoin<'a> {
    common: &'a Common,
    args: &'a ServeArgs,
    names: &'a votes_core::Names,
    node: &'a str,
    /// The address other nodes forward to (in the member's client id).
    internal: SocketAddr,
    handoff_timeout: Duration,
}

type OwnershipEvents = std::sync::mpsc::Receiver<votes_tally::membership::OwnershipEvent>;

/// The link between each core and its member of the serve group: the member sends ownership
/// events and rings the core's doorbell (made by the core when it starts) after each; the
/// assignment is what both read; the core asks for a new client through the rejoin.
struct Membership {
    member_events: Vec<std::sync::mpsc::Sender<votes_tally::membership::OwnershipEvent>>,
    ringers: Arc<Mutex<Vec<Option<votes_net::doorbell::Ringer>>>>,
    assignments: Vec<votes_tally::membership::Assignment>,
    rejoins: Vec<votes_tally::membership::Rejoin>,
}

impl Membership {
    /// The members' side, and each core's receiver for the core to take.
    fn new(cores: usize, session: Duration) -> (Self, Mutex<Vec<Option<OwnershipEvents>>>) {
        let (member_events, core_events): (Vec<_>, Vec<_>) =
            (0..cores).map(|_| std::sync::mpsc::channel()).unzip();
        let membership = Self {
            member_events,
            ringers: Arc::new(Mutex::new(vec![None; cores])),
            assignments: (0..cores).map(|_| Default::default()).collect(),
            rejoins: (0..cores)
                .map(|_| votes_tally::membership::Rejoin::new(session))
                .collect(),
        };
        (
            membership,
            Mutex::new(core_events.into_iter().map(Some).collect()),
        )
    }

    /// Joins the serve group, one member per core, once the listeners are bound (the client
    /// ids carry the internal address).
    fn join(self, j: &GroupJoin<'_>) -> Result<Vec<votes_tally::membership::Member>> {
        let mut members = Vec::with_capacity(self.member_events.len());
        for (core, events) in self.member_events.into_iter().enumerate() {
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
            let ringer = self.ringers.lock().unwrap_or_else(|p| p.into_inner())[core]
                .take()
                .context("every core made its doorbell")?;
            members.push(
                votes_tally::membership::Member::start(
                    &cfg,
                    events,
                    self.assignments[core].clone(),
                    Box::new(move || ringer.ring()),
                    self.rejoins[core].clone(),
                )
                .context("joining the serve group")?,
            );
        }
        Ok(members)
    }
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
    fleet: Arc<FleetBoard>,
) -> Result<CommitSettings> {
    let kafka_timeout = Duration::from_millis(args.kafka_timeout_ms);
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
        fleet,
        recovery: Arc::new(
            votes_tally::recovery::RecoveryClients::new(&common.kafka_brokers, names)
                .context("creating recovery's Kafka clients")?,
        ),
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
                "--dev-login lets anyone sign in as any voter: it needs every public listener on \
                 loopback, and {open} is not"
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
