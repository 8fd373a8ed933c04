//! `votes-chaos`: a seeded fault campaign against a fleet on this machine, and an independent
//! checker over its whole history (issue: fault campaign).
//!
//! One run: three `votes serve` nodes (one core each, TLS for HTTP/3, forwarding links), two
//! persisters, on the brokers, Redis and DynamoDB engine it is given. Voters vote through random
//! nodes over HTTP/1.1, h2c and HTTP/3, retrying on 503 and lost connections as a real client
//! does, and some send their vote twice. Meanwhile a nemesis, chosen and timed from the seed,
//! kills (`-9`) and restarts nodes, freezes them (SIGSTOP, a zombie) and thaws them, kills
//! brokers, restarts Redis empty and kills persisters. At the end everything is healed, the
//! election is closed, and the run waits for the official result.
//!
//! The checker trusts none of the system's own verdicts: it reads the committed log itself and
//! reports every acknowledged vote not in the log at the partition and offset it was given,
//! every `202` whose receipt the official tree does not prove, `409 already_voted` for a voter
//! with no committed vote, voters counted twice, official totals that differ from the log's
//! first votes, and the windows in which a partition gave no `202` (with the faults active
//! then). The history and the logs stay under the run's directory.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use votes_core::clock::unix_ms;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Method;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};
use votes_core::record::LogRecord;
use votes_core::{Names, routing};

use crate::client::{Client, Protocol, Target, Trust};
use crate::mix::Rng;
use crate::tokens::Tokens;

pub mod check;

pub use check::{Anomaly, CloseCall, Edge, Window};

pub const TOKEN_KEY: &str = "chaos-only VOTES_TOKEN_KEY, 32+ bytes long";
pub const AUDIT_KEY: &str = "chaos-only VOTES_AUDIT_KEY, 32+ bytes long!";
pub const FORWARD_KEY: &str = "chaos-only VOTES_FORWARD_KEY, 32+ bytes long";
pub const ADMIN_TOKEN: &str = "chaos-admin-token";
const ELECTION: &str = "chaos";
const OPTIONS: [&str; 3] = ["red", "green", "blue"];
/// Attempts per voter before the voter gives up (each after a 503 or a lost answer).
const ATTEMPTS: u32 = 60;

#[derive(Debug, Clone)]
pub struct Config {
    pub seed: u64,
    pub duration: Duration,
    pub out: PathBuf,
    pub votes_bin: PathBuf,
    pub brokers: String,
    pub dynamodb: String,
    pub redis: String,
    /// `scripts/services.sh`, to bring a killed broker or Redis back.
    pub services: PathBuf,
    pub nodes: usize,
    pub partitions: u32,
    pub lanes: usize,
    /// Each node's group session: a dead or frozen node keeps its partitions this long.
    pub group_session: Duration,
    /// Each node in a network namespace of its own on this bridge, so the nemesis can cut it
    /// off (`partition-node`); `None`: every node on loopback, no partitions.
    pub net: Option<Net>,
    /// The nemesis draws only these kinds ([`FAULT_KINDS`]), evenly; empty: all, weighted.
    pub faults: Vec<&'static str>,
    /// libfaketime (`libfaketimeMT.so.1`): each node's wall clock then follows a file of its
    /// own, and the nemesis steps it (`jump-clock`); the monotonic clocks stay real. `None`:
    /// real clocks, no clock jumps.
    pub faketime: Option<PathBuf>,
}

/// Every kind of fault the nemesis injects.
pub const FAULT_KINDS: [&str; 8] = [
    "kill-node",
    "freeze-node",
    "partition-node",
    "kill-broker",
    "restart-redis-empty",
    "stop-dynamodb",
    "kill-persister",
    "jump-clock",
];

/// Sets a node's clock offset: written aside and renamed over the file, so libfaketime never
/// reads a half-written or empty one.
fn set_clock(file: &Path, offset: &str) -> std::io::Result<()> {
    let next = file.with_extension("clock.next");
    std::fs::write(&next, format!("{offset}\n"))?;
    std::fs::rename(&next, file)
}

/// How far `jump-clock` steps a node's wall clock, in seconds, drawn from `draw`: forward or
/// back, mostly by what an NTP step or a resumed VM does (10 s to 10 min), one time in four by
/// two hours: past the broker's bound on a record's timestamp ahead of its own clock
/// (`log.message.timestamp.after.max.ms`, one hour by default).
fn clock_step_s(draw: u64) -> i64 {
    let magnitude = if draw.is_multiple_of(4) {
        7_200
    } else {
        10 + (draw >> 8) % 590
    };
    let magnitude = i64::try_from(magnitude).expect("small");
    if (draw >> 4).is_multiple_of(2) {
        magnitude
    } else {
        -magnitude
    }
}

/// The campaign's network: a bridge in this namespace whose address the services listen on
/// (`scripts/chaos.sh` makes it before they start), and one namespace per node, tied to the
/// bridge by a veth pair. Cutting a node off is taking its bridge-side end down: every packet
/// to or from it is dropped, TCP connections hang (no reset), as behind a failed switch port.
#[derive(Clone, Debug)]
pub struct Net {
    pub bridge: String,
    /// The bridge's address, a /24 (the services' host).
    pub host: Ipv4Addr,
    /// Names this campaign's namespaces and veths apart from another's (at most 6 chars).
    pub tag: String,
}

impl Net {
    fn node_ip(&self, i: usize) -> Ipv4Addr {
        let [a, b, c, _] = self.host.octets();
        Ipv4Addr::new(a, b, c, 10 + u8::try_from(i).expect("a few nodes"))
    }
}

/// A node's namespace and veth pair, removed when dropped.
struct Isolation {
    netns: String,
    /// The bridge-side end: down = the node is cut off.
    veth: String,
}

fn ip(args: &[&str]) -> Result<(), ChaosError> {
    let out = Command::new("ip").args(args).output()?;
    if !out.status.success() {
        return Err(setup(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

impl Isolation {
    fn create(net: &Net, i: usize) -> Result<Self, ChaosError> {
        let iso = Isolation {
            netns: format!("votes-{}-n{i}", net.tag),
            veth: format!("vc{}n{i}", net.tag),
        };
        let peer = format!("vp{}n{i}", net.tag);
        let addr = format!("{}/24", net.node_ip(i));
        ip(&["netns", "add", &iso.netns])?;
        ip(&[
            "link", "add", &iso.veth, "type", "veth", "peer", "name", &peer,
        ])?;
        ip(&["link", "set", &peer, "netns", &iso.netns])?;
        ip(&["link", "set", &iso.veth, "master", &net.bridge, "up"])?;
        ip(&["-n", &iso.netns, "addr", "add", &addr, "dev", &peer])?;
        ip(&["-n", &iso.netns, "link", "set", &peer, "up"])?;
        ip(&["-n", &iso.netns, "link", "set", "lo", "up"])?;
        Ok(iso)
    }

    fn cut(&self, cut: bool) -> Result<(), ChaosError> {
        ip(&["link", "set", &self.veth, if cut { "down" } else { "up" }])
    }
}

impl Drop for Isolation {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.veth]);
        let _ = ip(&["netns", "del", &self.netns]);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    #[error("{0}")]
    Setup(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

fn setup(what: impl Into<String>) -> ChaosError {
    ChaosError::Setup(what.into())
}

/// A process of the fleet that the nemesis may kill, freeze and restart.
struct Proc {
    name: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
    frozen: bool,
    /// The network namespace it runs in (`ip netns exec` execs it: the pid is the process's).
    netns: Option<String>,
}

impl Proc {
    fn start(&mut self, bin: &Path) -> Result<(), ChaosError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut cmd = match &self.netns {
            None => Command::new(bin),
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin);
                c
            }
        };
        let child = cmd
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env_remove("VOTES_CONFIG")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        self.frozen = false;
        Ok(())
    }

    fn signal(&mut self, sig: libc::c_int) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) on the pid of a child this process spawned and has not reaped.
            unsafe { libc::kill(c.id() as libc::pid_t, sig) };
        }
    }

    fn kill9(&mut self) {
        if self.frozen {
            self.signal(libc::SIGCONT);
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.frozen = false;
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

struct Node {
    proc: Proc,
    http: SocketAddr,
    https: SocketAddr,
    admin: SocketAddr,
    /// The file libfaketime reads the node's clock offset from (`Config::faketime`).
    clock: Option<PathBuf>,
    /// Dropped after `proc` (field order): the process goes before its namespace.
    isolation: Option<Isolation>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// One request as its client saw it: the history line the checker reads.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Attempt {
    pub voter: u64,
    pub option: &'static str,
    pub node: usize,
    pub protocol: &'static str,
    pub duplicate: bool,
    pub sent_ms: u64,
    pub answered_ms: u64,
    /// 0: no answer (connection lost, timeout).
    pub status: u16,
    pub code: Option<String>,
    pub receipt: Option<String>,
    pub partition: Option<u32>,
    pub offset: Option<u64>,
}

/// One admin write (a PATCH of the proof-of-work difficulty, to the 0 it already is) as its
/// client saw it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AdminWrite {
    /// The write's number in the run.
    pub n: u64,
    pub node: usize,
    pub sent_ms: u64,
    /// 0: no answer (the node was down, or died meanwhile).
    pub status: u16,
    /// The version the write made, from a `200`.
    pub version: Option<u64>,
}

/// A fault, as the history records it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Fault {
    pub kind: &'static str,
    /// What it struck; a broker's role when the nemesis aimed at one ("broker-1 (active
    /// controller)", "broker-2 (transaction coordinator of …)").
    pub target: String,
    pub from_ms: u64,
    pub to_ms: u64,
}

/// What a run found. Written to `report.json` whether or not the run completed.
#[derive(Debug, Default, serde::Serialize)]
pub struct Report {
    pub seed: u64,
    /// Whether the run got as far as the checker's judgement; when not, `error` says why and
    /// the report holds what the run had gathered (history, faults, windows), no verdict.
    pub completed: bool,
    pub error: Option<String>,
    pub acknowledged: u64,
    pub attempts: u64,
    pub faults: BTreeMap<&'static str, u64>,
    pub anomalies: Vec<Anomaly>,
    /// Per fault kind: the length of each window put down to it ([`Report::windows`]).
    pub unavailable_ms: BTreeMap<&'static str, Vec<u64>>,
    /// Every window in which a partition gave no `202`, edges of the load included.
    pub windows: Vec<Window>,
    /// Admin writes answered `200` during the run.
    pub admin_writes: u64,
    /// The operator's attempts to close the election during load.
    pub close: Vec<CloseCall>,
    /// Votes refused `409 election_not_open` after the close began.
    pub refused_after_close: u64,
    /// Whether the campaign ran `votes recount --all-closed` itself (as the timer does), the
    /// recount the close started having not made the result official.
    pub recount_retried: bool,
    pub official: serde_json::Value,
}

/// The fleet of one run.
struct Fleet {
    cfg: Config,
    prefix: String,
    nodes: Vec<Node>,
    persisters: Vec<Proc>,
    cert: PathBuf,
}

impl Fleet {
    fn env(&self) -> Vec<(String, String)> {
        [
            ("VOTES_PREFIX", self.prefix.as_str()),
            ("VOTES_KAFKA_BROKERS", &self.cfg.brokers),
            ("VOTES_REDIS_URL", &self.cfg.redis),
            ("VOTES_DYNAMODB_ENDPOINT", &self.cfg.dynamodb),
            ("VOTES_TOKEN_KEY", TOKEN_KEY),
            ("VOTES_AUDIT_KEY", AUDIT_KEY),
            ("VOTES_ADMIN_TOKEN", ADMIN_TOKEN),
            ("VOTES_FORWARD_KEY", FORWARD_KEY),
            ("VOTES_RATE_PER_ADDR", "0"),
            ("VOTES_RATE_PER_PREFIX", "0"),
            ("VOTES_LOG", "info"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
    }

    fn start(cfg: Config) -> Result<Fleet, ChaosError> {
        std::fs::create_dir_all(&cfg.out)?;
        let prefix = format!("chaos-{}-{}-", cfg.seed, std::process::id());
        let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        if let Some(net) = &cfg.net {
            names.extend((0..cfg.nodes).map(|i| net.node_ip(i).to_string()));
        }
        let ck = rcgen::generate_simple_self_signed(names)
            .map_err(|e| setup(format!("certificate: {e}")))?;
        let cert = cfg.out.join("cert.pem");
        let key = cfg.out.join("key.pem");
        std::fs::write(&cert, ck.cert.pem())?;
        std::fs::write(&key, ck.signing_key.serialize_pem())?;
        let mut fleet = Fleet {
            cfg: cfg.clone(),
            prefix,
            nodes: Vec::new(),
            persisters: Vec::new(),
            cert: cert.clone(),
        };
        let init = Command::new(&cfg.votes_bin)
            .args([
                "init",
                "--partitions",
                &cfg.partitions.to_string(),
                "--replication-factor",
                "3",
            ])
            .envs(fleet.env())
            .env_remove("VOTES_CONFIG")
            .output()?;
        if !init.status.success() {
            return Err(setup(format!(
                "votes init: {}",
                String::from_utf8_lossy(&init.stderr)
            )));
        }
        for i in 0..cfg.nodes {
            let isolation = cfg
                .net
                .as_ref()
                .map(|net| Isolation::create(net, i))
                .transpose()?;
            let (http, https, admin, internal) = match &cfg.net {
                // A namespace of its own: every port is free there.
                Some(net) => {
                    let ip = IpAddr::V4(net.node_ip(i));
                    (
                        SocketAddr::new(ip, 8080),
                        SocketAddr::new(ip, 8443),
                        SocketAddr::new(ip, 9090),
                        SocketAddr::new(ip, 7070),
                    )
                }
                None => (
                    SocketAddr::from(([127, 0, 0, 1], free_port())),
                    SocketAddr::from(([127, 0, 0, 1], free_port())),
                    SocketAddr::from(([127, 0, 0, 1], free_port())),
                    SocketAddr::from(([127, 0, 0, 1], free_port())),
                ),
            };
            let args = [
                "serve",
                "--cores",
                "1",
                "--node-id",
                &format!("node-{i}"),
                "--http",
                &http.to_string(),
                "--https",
                &https.to_string(),
                "--tls-cert",
                &cert.display().to_string(),
                "--tls-key",
                &key.display().to_string(),
                "--admin",
                &admin.to_string(),
                "--internal",
                &internal.to_string(),
                "--group-session-timeout-ms",
                &cfg.group_session.as_millis().to_string(),
            ]
            .map(str::to_owned)
            .to_vec();
            let mut env = fleet.env();
            let clock = match &cfg.faketime {
                Some(lib) => {
                    let clock = cfg.out.join(format!("node-{i}.clock"));
                    set_clock(&clock, "+0")?;
                    env.extend(
                        [
                            ("LD_PRELOAD", lib.display().to_string()),
                            ("FAKETIME_TIMESTAMP_FILE", clock.display().to_string()),
                            // Re-read every second: a step takes hold within one.
                            ("FAKETIME_CACHE_DURATION", "1".to_owned()),
                            // Timers, pacing and timeouts run on the monotonic clock, which
                            // a wall-clock step does not move; and a wait on a condition
                            // variable timed on it (librdkafka's threads) must not be
                            // "fixed" by libfaketime, whose fix turns it into a busy loop
                            // (Debian's 0.9.10 on glibc 2.36: every such wait returns at once).
                            ("FAKETIME_DONT_FAKE_MONOTONIC", "1".to_owned()),
                            ("FAKETIME_FORCE_MONOTONIC_FIX", "0".to_owned()),
                        ]
                        .map(|(k, v)| (k.to_owned(), v)),
                    );
                    Some(clock)
                }
                None => None,
            };
            let mut proc = Proc {
                name: format!("node-{i}"),
                args,
                env,
                log: cfg.out.join(format!("node-{i}.log")),
                child: None,
                frozen: false,
                netns: isolation.as_ref().map(|x| x.netns.clone()),
            };
            proc.start(&cfg.votes_bin)?;
            fleet.nodes.push(Node {
                proc,
                http,
                https,
                admin,
                clock,
                isolation,
            });
        }
        for i in 0..2 {
            let mut proc = Proc {
                name: format!("persister-{i}"),
                args: ["persist", "--instance-id", &format!("chaos-p{i}")]
                    .map(str::to_owned)
                    .to_vec(),
                env: fleet.env(),
                log: cfg.out.join(format!("persister-{i}.log")),
                child: None,
                frozen: false,
                netns: None,
            };
            proc.start(&cfg.votes_bin)?;
            fleet.persisters.push(proc);
        }
        Ok(fleet)
    }

    fn node_url(&self, i: usize) -> String {
        format!("http://{}", self.nodes[i].http)
    }

    fn admin_url(&self, i: usize, path: &str) -> String {
        format!("http://{}{path}", self.nodes[i].admin)
    }
}

/// A plain HTTP/1.1 request for the harness's own calls (admin, readiness, receipts).
async fn call(
    method: Method,
    url: &str,
    admin: bool,
    body: Option<serde_json::Value>,
) -> Result<(u16, serde_json::Value), String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let authority = uri.authority().ok_or("no authority")?.to_string();
    let stream = tokio::net::TcpStream::connect(&authority)
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
        .header("host", authority)
        .header("content-type", "application/json");
    if admin {
        req = req.header("authorization", format!("Bearer {ADMIN_TOKEN}"));
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let resp = send
        .send_request(
            req.body(Full::new(Bytes::from(body)))
                .map_err(|e| e.to_string())?,
        )
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let bytes = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    ))
}

/// Waits until `f` holds, polling every 200 ms, at most `within`.
async fn wait_for<F, Fut>(what: &str, within: Duration, mut f: F) -> Result<(), ChaosError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !f().await {
        if Instant::now() > deadline {
            return Err(setup(format!("{what} did not happen within {within:?}")));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// The voters of one lane vote, each until answered for good.
#[allow(clippy::too_many_arguments)]
async fn lane(
    lane: usize,
    lanes: usize,
    clients: Arc<Vec<Vec<(Protocol, Client)>>>,
    tokens: Arc<Tokens>,
    seed: u64,
    until: Instant,
    history: Arc<Mutex<Vec<Attempt>>>,
    closed: Arc<AtomicBool>,
) {
    let mut rng = Rng::new(seed ^ (lane as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut voter = lane as u64;
    let mut refused = false;
    // Voters keep coming until the load ends, or until the election is closed and this lane
    // met the refusal: beyond that, each new voter is only another `409`.
    while Instant::now() < until && !(refused && closed.load(Ordering::SeqCst)) {
        voter += lanes as u64;
        let option = OPTIONS[(rng.next_u64() % 3) as usize];
        let duplicate_after = rng.next_u64().is_multiple_of(20);
        let mut answered = false;
        for attempt in 0..ATTEMPTS {
            let node = (rng.next_u64() % clients.len() as u64) as usize;
            let pick = (rng.next_u64() % clients[node].len() as u64) as usize;
            let a = vote(&clients[node][pick], node, &tokens, voter, option, false).await;
            let done = matches!(a.status, 202 | 409 | 400 | 404);
            let accepted = a.status == 202;
            refused |= a.code.as_deref() == Some("election_not_open");
            history.lock().expect("history").push(a);
            if done {
                answered = true;
                if accepted && duplicate_after {
                    let node = (rng.next_u64() % clients.len() as u64) as usize;
                    let d = vote(&clients[node][0], node, &tokens, voter, option, true).await;
                    history.lock().expect("history").push(d);
                }
                break;
            }
            // A real client backs off before retrying a 503 or a lost answer.
            let backoff = 50 * u64::from(attempt.min(10) + 1);
            tokio::time::sleep(Duration::from_millis(backoff)).await;
            if Instant::now() > until + Duration::from_secs(60) {
                break;
            }
        }
        let _ = answered;
    }
}

/// How long a voter waits for an answer before it counts the attempt lost and retries, maybe
/// through another node. Short, as a real client's: a lane waiting out a dead, frozen or cut-off
/// node serves nobody, and long waits left every lane stuck on the faulted node, so even the
/// healthy nodes' partitions showed windows without a 202.
const VOTE_TIMEOUT: Duration = Duration::from_secs(3);

async fn vote(
    c: &(Protocol, Client),
    node: usize,
    tokens: &Tokens,
    voter: u64,
    option: &'static str,
    duplicate: bool,
) -> Attempt {
    let (protocol, client) = c;
    let sent_ms = unix_ms();
    let body = format!(r#"{{"option":"{option}"}}"#);
    let req = client
        .request(
            Method::POST,
            client.uri(&format!("/v1/elections/{ELECTION}/votes")),
        )
        .header("authorization", tokens.bearer(voter))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("a valid request");
    let answer = tokio::time::timeout(VOTE_TIMEOUT, client.send(req)).await;
    let (status, json) = match answer {
        Ok(Ok(a)) => (
            a.status.as_u16(),
            serde_json::from_slice::<serde_json::Value>(&a.body).unwrap_or_default(),
        ),
        _ => (0, serde_json::Value::Null),
    };
    Attempt {
        voter,
        option,
        node,
        protocol: match protocol {
            Protocol::H1 => "h1",
            Protocol::H2 => "h2c",
            Protocol::H3 => "h3",
        },
        duplicate,
        sent_ms,
        answered_ms: unix_ms(),
        status,
        code: json["error"]["code"].as_str().map(str::to_owned),
        receipt: json["receipt"].as_str().map(str::to_owned),
        partition: json["partition"].as_u64().map(|p| p as u32),
        offset: json["offset"].as_u64(),
    }
}

/// An operator editing the election while votes flow and faults strike: a PATCH through a
/// random node every few seconds, until `until`. The value stays 0 (the voters solve no
/// proof of work); each write still makes a new version, which is what the checker counts.
async fn admin_lane(
    admin_urls: Vec<String>,
    seed: u64,
    until: Instant,
    writes: Arc<Mutex<Vec<AdminWrite>>>,
) {
    let mut rng = Rng::new(seed.rotate_left(29) ^ 0xad31);
    let mut n = 0u64;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(1_000 + rng.next_u64() % 3_000)).await;
        n += 1;
        let node = (rng.next_u64() % admin_urls.len() as u64) as usize;
        let sent_ms = unix_ms();
        let url = format!("{}/admin/v1/elections/{ELECTION}", admin_urls[node]);
        let answer = tokio::time::timeout(
            Duration::from_secs(20),
            call(
                Method::PATCH,
                &url,
                true,
                Some(serde_json::json!({ "pow_difficulty": 0 })),
            ),
        )
        .await;
        let (status, body) = match answer {
            Ok(Ok(a)) => a,
            _ => (0, serde_json::Value::Null),
        };
        writes.lock().expect("admin writes").push(AdminWrite {
            n,
            node,
            sent_ms,
            status,
            version: (status == 200).then(|| body["version"].as_u64()).flatten(),
        });
    }
}

/// The nemesis: one fault at a time, chosen and timed from the seed, until `until`.
async fn nemesis(
    fleet: Arc<tokio::sync::Mutex<Fleet>>,
    seed: u64,
    until: Instant,
    faults: Arc<Mutex<Vec<Fault>>>,
    close_began: Arc<AtomicBool>,
) -> Result<(), ChaosError> {
    let mut rng = Rng::new(seed.rotate_left(17) ^ 0x5eed);
    // Let the fleet settle and votes flow first.
    tokio::time::sleep(Duration::from_secs(8)).await;
    while Instant::now() + Duration::from_secs(15) < until {
        let (partitions, clocks, only) = {
            let f = fleet.lock().await;
            (
                f.cfg.net.is_some(),
                f.cfg.faketime.is_some(),
                f.cfg.faults.clone(),
            )
        };
        let draw = rng.next_u64();
        let kind = match draw % 9 {
            _ if !only.is_empty() => only[(draw % only.len() as u64) as usize],
            0 | 1 => "kill-node",
            2 => "freeze-node",
            3 => "kill-broker",
            4 => "restart-redis-empty",
            5 => "stop-dynamodb",
            6 if partitions => "partition-node",
            7 if clocks => "jump-clock",
            _ => "kill-persister",
        };
        // The official result and the receipts index live in Redis, and nothing but an
        // operator's reprocess writes them again: Redis emptied once the close began would
        // take the result away, a loss of the read model the campaign does not claim to
        // survive. Every other kind goes on through the close.
        if kind == "restart-redis-empty" && close_began.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(1_000 + rng.next_u64() % 2_000)).await;
            continue;
        }
        let from_ms = unix_ms();
        let hold = Duration::from_millis(2_000 + rng.next_u64() % 8_000);
        let target;
        {
            let mut f = fleet.lock().await;
            let bin = f.cfg.votes_bin.clone();
            match kind {
                "kill-node" => {
                    let i = (rng.next_u64() % f.nodes.len() as u64) as usize;
                    target = f.nodes[i].proc.name.clone();
                    f.nodes[i].proc.kill9();
                    drop(f);
                    tokio::time::sleep(hold).await;
                    let mut f = fleet.lock().await;
                    f.nodes[i].proc.start(&bin)?;
                }
                "freeze-node" => {
                    let i = (rng.next_u64() % f.nodes.len() as u64) as usize;
                    target = f.nodes[i].proc.name.clone();
                    f.nodes[i].proc.signal(libc::SIGSTOP);
                    f.nodes[i].proc.frozen = true;
                    let session = f.cfg.group_session;
                    drop(f);
                    // Long enough to lose its partitions (a group session and a rebalance).
                    tokio::time::sleep(hold + session + Duration::from_secs(1)).await;
                    let mut f = fleet.lock().await;
                    f.nodes[i].proc.signal(libc::SIGCONT);
                    f.nodes[i].proc.frozen = false;
                }
                "partition-node" => {
                    // Cut off from the brokers, the other nodes, the services and the voters:
                    // long enough to lose its partitions, then back.
                    let i = (rng.next_u64() % f.nodes.len() as u64) as usize;
                    target = f.nodes[i].proc.name.clone();
                    let session = f.cfg.group_session;
                    let cut = |f: &Fleet, cut: bool| match &f.nodes[i].isolation {
                        Some(iso) => iso.cut(cut),
                        None => Err(setup("partition-node without namespaces")),
                    };
                    cut(&f, true)?;
                    drop(f);
                    tokio::time::sleep(hold + session + Duration::from_secs(1)).await;
                    let f = fleet.lock().await;
                    cut(&f, false)?;
                }
                "jump-clock" => {
                    // The node's wall clock steps, stays there for the hold, and steps back.
                    let i = (rng.next_u64() % f.nodes.len() as u64) as usize;
                    let step = clock_step_s(rng.next_u64());
                    target = format!("{} {step:+}s", f.nodes[i].proc.name);
                    let Some(clock) = f.nodes[i].clock.clone() else {
                        return Err(setup("jump-clock without libfaketime (--faketime)"));
                    };
                    drop(f);
                    set_clock(&clock, &format!("{step:+}s"))?;
                    tokio::time::sleep(hold).await;
                    set_clock(&clock, "+0")?;
                }
                "kill-broker" => {
                    // A third of the kills each: any broker, the active KRaft controller, the
                    // transaction coordinator of a node's transactional id.
                    let role = rng.next_u64() % 3;
                    let node = (rng.next_u64() % f.nodes.len() as u64) as usize;
                    let any = rng.next_u64() % 3;
                    let services = f.cfg.services.clone();
                    let brokers = f.cfg.brokers.clone();
                    let txid = transactional_id(&f.prefix, &f.nodes[node].proc.name)?;
                    drop(f);
                    let (b, what) = match role {
                        0 => (any, String::new()),
                        1 => {
                            let (s, b) = (services.clone(), brokers.clone());
                            match tokio::task::spawn_blocking(move || active_controller(&s, &b))
                                .await
                            {
                                Ok(Ok(b)) => (b, " (active controller)".to_owned()),
                                Ok(Err(e)) => (any, format!(" (controller not found: {e})")),
                                Err(e) => (any, format!(" (controller not found: {e})")),
                            }
                        }
                        _ => {
                            let (b, t) = (brokers.clone(), txid.clone());
                            match tokio::task::spawn_blocking(move || txn_coordinator(&b, &t)).await
                            {
                                Ok(Ok(b)) => (b, format!(" (transaction coordinator of {txid})")),
                                Ok(Err(e)) => {
                                    (any, format!(" (coordinator of {txid} not found: {e})"))
                                }
                                Err(e) => (any, format!(" (coordinator of {txid} not found: {e})")),
                            }
                        }
                    };
                    target = format!("broker-{b}{what}");
                    kill_broker(&services, b)?;
                    tokio::time::sleep(hold).await;
                    services_up(&services, &["--brokers", "3", "kafka"])?;
                }
                "restart-redis-empty" => {
                    target = "redis".into();
                    let services = f.cfg.services.clone();
                    let redis = f.cfg.redis.clone();
                    drop(f);
                    stop_for(&services, "redis", hold).await?;
                    flush_redis(&redis)?;
                }
                "stop-dynamodb" => {
                    // The engine keeps its tables in a file (VOTES_DYNAMODB_DB, set by
                    // scripts/chaos.sh), so it comes back with what it had: a stop, not a loss.
                    target = "dynamodb".into();
                    let services = f.cfg.services.clone();
                    drop(f);
                    stop_for(&services, "dynamodb", hold).await?;
                }
                _ => {
                    let i = (rng.next_u64() % f.persisters.len() as u64) as usize;
                    target = f.persisters[i].name.clone();
                    f.persisters[i].kill9();
                    drop(f);
                    tokio::time::sleep(hold).await;
                    let mut f = fleet.lock().await;
                    f.persisters[i].start(&bin)?;
                }
            }
        }
        faults.lock().expect("faults").push(Fault {
            kind,
            target,
            from_ms,
            to_ms: unix_ms(),
        });
        // Quiet between faults, so each one's window is its own.
        tokio::time::sleep(Duration::from_millis(4_000 + rng.next_u64() % 6_000)).await;
    }
    Ok(())
}

/// Stops `service` (through the services script), keeps it down for `hold`, starts it again.
async fn stop_for(services: &Path, service: &str, hold: Duration) -> Result<(), ChaosError> {
    services_cmd(services, &["down", service])?;
    tokio::time::sleep(hold).await;
    services_up(services, &[service])
}

fn services_cmd(services: &Path, args: &[&str]) -> Result<(), ChaosError> {
    let out = Command::new(services).args(args).output()?;
    if !out.status.success() {
        return Err(setup(format!(
            "{} {}: {}",
            services.display(),
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

fn services_up(services: &Path, args: &[&str]) -> Result<(), ChaosError> {
    let mut all = vec!["up"];
    all.extend_from_slice(args);
    services_cmd(services, &all)
}

/// `kill -9` of broker `b` of the 3-node cluster `scripts/services.sh` started.
fn kill_broker(services: &Path, b: u64) -> Result<(), ChaosError> {
    let root = services
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| setup("services.sh lies under scripts/"))?;
    let pidfile = root.join(format!("target/services/kafka/cluster3/node-{b}/kafka.pid"));
    let pid: i32 = std::fs::read_to_string(&pidfile)?
        .trim()
        .parse()
        .map_err(|_| setup(format!("{} holds no pid", pidfile.display())))?;
    // SAFETY: kill(2) of the broker this checkout's services script started (its pidfile).
    unsafe { libc::kill(pid, libc::SIGKILL) };
    Ok(())
}

/// Java's `String.hashCode`, which Kafka hashes a transactional id (or a group id) with.
fn java_hash(s: &str) -> i32 {
    s.encode_utf16()
        .fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(i32::from(c)))
}

/// The partition of Kafka's internal topic of `count` partitions that coordinates an id of
/// hash `hash`: `Utils.abs(hash) % count`, where Kafka's `abs` maps `i32::MIN` to 0 (not
/// `hash & 0x7fffffff`, which differs for every other negative hash).
fn coordinator_partition(hash: i32, count: i32) -> i32 {
    if hash == i32::MIN {
        0
    } else {
        hash.abs() % count
    }
}

/// The transactional id a node's committer writes as: the committer scope the nodes inherit
/// (`VOTES_COMMITTER`), core 0 by default (each node runs one core).
fn transactional_id(prefix: &str, node: &str) -> Result<String, ChaosError> {
    let names = Names::new(prefix).map_err(|e| setup(format!("prefix: {e}")))?;
    Ok(match std::env::var("VOTES_COMMITTER").as_deref() {
        Ok("node") => names.node_transactional_id(node),
        _ => names.core_transactional_id(node, 0),
    })
}

/// The broker leading the `__transaction_state` partition that coordinates `txid`.
fn txn_coordinator(brokers: &str, txid: &str) -> Result<u64, ChaosError> {
    let consumer: BaseConsumer = votes_tally::kafka::base_config(brokers).create()?;
    let md = consumer.fetch_metadata(Some("__transaction_state"), Duration::from_secs(10))?;
    let topic = md
        .topics()
        .first()
        .ok_or_else(|| setup("no __transaction_state in the metadata"))?;
    let count = i32::try_from(topic.partitions().len()).unwrap_or(0);
    if count == 0 {
        return Err(setup("__transaction_state has no partitions"));
    }
    let p = coordinator_partition(java_hash(txid), count);
    let leader = topic
        .partitions()
        .iter()
        .find(|x| x.id() == p)
        .map(|x| x.leader())
        .ok_or_else(|| setup(format!("no __transaction_state partition {p}")))?;
    u64::try_from(leader)
        .ok()
        .filter(|b| *b < 3)
        .ok_or_else(|| {
            setup(format!(
                "__transaction_state partition {p} has leader {leader}"
            ))
        })
}

/// The active KRaft controller (the quorum's leader), as `kafka-metadata-quorum describe
/// --status` reports it through the brokers. The metadata's controller id will not do: a
/// KRaft broker names a random live broker there (KIP-590).
fn active_controller(services: &Path, brokers: &str) -> Result<u64, ChaosError> {
    let out = Command::new(services)
        .args([
            "kafka-run",
            "org.apache.kafka.tools.MetadataQuorumCommand",
            "--bootstrap-server",
            brokers,
            "describe",
            "--status",
        ])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    leader_id(&text).ok_or_else(|| {
        setup(format!(
            "no LeaderId in kafka-metadata-quorum's answer: {} {}",
            text.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    })
}

/// `LeaderId: N` of `kafka-metadata-quorum describe --status`.
fn leader_id(status: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        l.trim()
            .strip_prefix("LeaderId:")
            .and_then(|v| v.trim().parse().ok())
    })
}

fn flush_redis(url: &str) -> Result<(), ChaosError> {
    let out = Command::new("redis-cli")
        .args(["-u", url, "FLUSHALL"])
        .output()?;
    if !out.status.success() {
        return Err(setup("redis-cli FLUSHALL failed"));
    }
    Ok(())
}

/// Every committed record of the run's `votes` topic, read with read_committed to the end.
fn committed_log(cfg: &Config, names: &Names) -> Result<Vec<(u32, u64, LogRecord)>, ChaosError> {
    let consumer: BaseConsumer =
        votes_tally::kafka::read_committed_consumer_config(&cfg.brokers, "chaos-checker")
            .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..cfg.partitions {
        tpl.add_partition_offset(&names.votes_topic(), p as i32, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let mut out = Vec::new();
    let mut at_end = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while at_end.len() < cfg.partitions as usize {
        if Instant::now() > deadline {
            return Err(setup(
                "reading the votes log did not reach its end in 120 s",
            ));
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let record = LogRecord::decode(m.payload().unwrap_or_default())
                    .map_err(|e| setup(format!("an undecodable committed record: {e:?}")))?;
                out.push((m.partition() as u32, m.offset() as u64, record));
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(e)) => return Err(e.into()),
            None => {}
        }
    }
    Ok(out)
}

/// Every vote item of the run's election in DynamoDB, read by the checker itself: voter →
/// option. Consistent reads of every bucket, page by page.
async fn dynamo_votes(cfg: &Config, names: &Names) -> Result<HashMap<u64, String>, ChaosError> {
    use aws_sdk_dynamodb::types::AttributeValue;
    let client = votes_tally::dynamo::client(Some(&cfg.dynamodb)).await;
    let mut out = HashMap::new();
    for bucket in 0..routing::VOTE_BUCKETS {
        let mut start = None;
        loop {
            let page = client
                .query()
                .table_name(names.votes_table())
                .key_condition_expression("pk = :pk")
                .expression_attribute_values(
                    ":pk",
                    AttributeValue::S(format!("{ELECTION}#{bucket}")),
                )
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| {
                    setup(format!(
                        "reading DynamoDB: {}",
                        aws_sdk_dynamodb::error::DisplayErrorContext(e)
                    ))
                })?;
            for item in page.items() {
                let voter = item
                    .get("sk")
                    .and_then(|v| v.as_n().ok())
                    .and_then(|n| n.parse::<u64>().ok());
                let option = item.get("option").and_then(|v| v.as_s().ok());
                if let (Some(voter), Some(option)) = (voter, option) {
                    out.insert(voter, option.clone());
                }
            }
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
    }
    Ok(out)
}

/// Every Redis tally hash of the run's election, one per partition, read by the checker itself.
fn redis_tallies(cfg: &Config, names: &Names) -> Result<Vec<HashMap<String, String>>, ChaosError> {
    let client = redis::Client::open(cfg.redis.as_str())?;
    let mut conn = client.get_connection_with_timeout(Duration::from_secs(10))?;
    let mut pipe = redis::pipe();
    for p in 0..cfg.partitions {
        pipe.cmd("HGETALL").arg(names.redis_tally_key(ELECTION, p));
    }
    Ok(pipe.query(&mut conn)?)
}

/// What the run records as it goes, shared by its tasks, so that whatever it gathered can be
/// written out even when it stops part-way.
#[derive(Clone, Default)]
struct Recorder {
    history: Arc<Mutex<Vec<Attempt>>>,
    faults: Arc<Mutex<Vec<Fault>>>,
    admin: Arc<Mutex<Vec<AdminWrite>>>,
    close: Arc<Mutex<Vec<CloseCall>>>,
    marks: Arc<Mutex<Marks>>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Marks {
    load_from_ms: Option<u64>,
    load_to_ms: Option<u64>,
    opened_version: u64,
    recount_retried: bool,
}

impl Recorder {
    fn marks(&self) -> std::sync::MutexGuard<'_, Marks> {
        self.marks.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn snapshot<T: Clone>(m: &Mutex<Vec<T>>) -> Vec<T> {
    m.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// One seeded run, start to verdict. `history.jsonl` and `report.json` are written however
/// far it got: a run that errors part-way is the one whose evidence matters most.
pub async fn run(cfg: Config) -> Result<Report, ChaosError> {
    std::fs::create_dir_all(&cfg.out)?;
    let rec = Recorder::default();
    let outcome = drive(&cfg, &rec).await;
    let (history, faults, admin, close) = (
        snapshot(&rec.history),
        snapshot(&rec.faults),
        snapshot(&rec.admin),
        snapshot(&rec.close),
    );
    let marks = *rec.marks();
    let mut report = Report {
        seed: cfg.seed,
        attempts: history.len() as u64,
        close: close.clone(),
        recount_retried: marks.recount_retried,
        ..Report::default()
    };
    for f in &faults {
        *report.faults.entry(f.kind).or_default() += 1;
    }
    if let Some(load_from_ms) = marks.load_from_ms {
        let h = check::History {
            attempts: &history,
            faults: &faults,
            admin: &admin,
            opened_version: marks.opened_version,
            close: &close,
            load_from_ms,
            load_to_ms: marks.load_to_ms.unwrap_or_else(unix_ms),
        };
        report.windows = check::windows(&h, cfg.partitions);
        for w in &report.windows {
            report
                .unavailable_ms
                .entry(w.cause)
                .or_default()
                .push(w.length_ms);
        }
        if let Ok(engines) = &outcome {
            let setup = check::Setup {
                election: ELECTION,
                options: &OPTIONS,
                partitions: cfg.partitions,
                audit_key: AUDIT_KEY.as_bytes(),
            };
            let v = check::judge(&setup, &h, engines);
            report.completed = true;
            report.anomalies = v.anomalies;
            report.acknowledged = v.acknowledged;
            report.admin_writes = v.admin_writes;
            report.refused_after_close = v.refused_after_close;
            report.official = engines.official.clone();
        }
    }
    if let Err(e) = &outcome {
        report.error = Some(e.to_string());
        report.acknowledged = history
            .iter()
            .filter(|a| a.status == 202)
            .map(|a| a.voter)
            .collect::<HashSet<_>>()
            .len() as u64;
        report.admin_writes = admin.iter().filter(|w| w.status == 200).count() as u64;
    }
    let written = write_evidence(&cfg.out, &history, &faults, &admin, &close, &report);
    // The run's own error says more than a failed write of its evidence.
    outcome?;
    written?;
    Ok(report)
}

fn write_evidence(
    out: &Path,
    history: &[Attempt],
    faults: &[Fault],
    admin: &[AdminWrite],
    close: &[CloseCall],
    report: &Report,
) -> Result<(), ChaosError> {
    fn line<T: serde::Serialize>(h: &mut impl std::io::Write, x: &T) -> std::io::Result<()> {
        serde_json::to_writer(&mut *h, x).map_err(std::io::Error::other)?;
        h.write_all(b"\n")
    }
    let mut h = std::io::BufWriter::new(std::fs::File::create(out.join("history.jsonl"))?);
    for a in history {
        line(&mut h, a)?;
    }
    for f in faults {
        line(&mut h, f)?;
    }
    for w in admin {
        line(&mut h, w)?;
    }
    for c in close {
        line(&mut h, &serde_json::json!({ "close": c }))?;
    }
    h.flush()?;
    std::fs::write(
        out.join("report.json"),
        serde_json::to_vec_pretty(report).map_err(std::io::Error::other)?,
    )?;
    Ok(())
}

/// The operator closes the election while the voters still vote, at a point drawn from the
/// seed in the last third of the load, through random nodes until one answers (a node may be
/// down, frozen or cut off at that moment). A `409` after an attempt whose answer was lost is
/// the close that attempt made.
#[allow(clippy::too_many_arguments)]
async fn operator_close(
    admin_urls: Vec<String>,
    seed: u64,
    start: Instant,
    duration: Duration,
    give_up: Instant,
    closes: Arc<Mutex<Vec<CloseCall>>>,
    began: Arc<AtomicBool>,
    closed: Arc<AtomicBool>,
) -> bool {
    let mut rng = Rng::new(seed.rotate_left(41) ^ 0xc105e);
    let third = duration / 3;
    let span = u64::try_from(third.as_millis()).unwrap_or(u64::MAX).max(1);
    let at = start + third * 2 + Duration::from_millis(rng.next_u64() % span);
    tokio::time::sleep_until(at.into()).await;
    began.store(true, Ordering::SeqCst);
    loop {
        let node = (rng.next_u64() % admin_urls.len() as u64) as usize;
        let sent_ms = unix_ms();
        let url = format!("{}/admin/v1/elections/{ELECTION}/close", admin_urls[node]);
        let answer = tokio::time::timeout(
            Duration::from_secs(20),
            call(Method::POST, &url, true, None),
        )
        .await;
        let status = match answer {
            Ok(Ok((s, _))) => s,
            _ => 0,
        };
        closes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(CloseCall {
                node,
                sent_ms,
                answered_ms: unix_ms(),
                status,
            });
        if matches!(status, 200 | 409) {
            closed.store(true, Ordering::SeqCst);
            return true;
        }
        if Instant::now() > give_up {
            return false;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Waits up to `within` for the official result.
async fn wait_final(results: &str, within: Duration) -> Option<serde_json::Value> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok((200, body)) = call(Method::GET, results, false, None).await
            && body["state"] == "final"
        {
            return Some(body);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    None
}

/// The served proof of each receipt of a `202`, as the server hands it to any voter.
async fn served_proofs(node_url: &str, history: &[Attempt]) -> HashMap<String, check::ServedProof> {
    let mut out = HashMap::new();
    for rc in history
        .iter()
        .filter(|a| a.status == 202)
        .filter_map(|a| a.receipt.as_ref())
    {
        if out.contains_key(rc) {
            continue;
        }
        let url = format!("{node_url}/v1/elections/{ELECTION}/receipts/{rc}");
        // A lookup may meet a busy index (503): a voter would ask again.
        for _ in 0..3 {
            match call(Method::GET, &url, false, None).await {
                Ok((200, body)) => {
                    if let Ok(p) = serde_json::from_value::<check::ServedProof>(body) {
                        out.insert(rc.clone(), p);
                    }
                    break;
                }
                Ok((404, _)) => break,
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
    out
}

/// Aborts a spawned task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The run up to the engines' final state; what it records goes to `rec` as it happens.
async fn drive(cfg: &Config, rec: &Recorder) -> Result<check::Engines, ChaosError> {
    let fleet = Fleet::start(cfg.clone())?;
    let names = Names::new(&fleet.prefix).map_err(|e| setup(format!("prefix: {e}")))?;
    for i in 0..fleet.nodes.len() {
        let url = format!("{}/readyz", fleet.node_url(i));
        wait_for("a node being ready", Duration::from_secs(120), || {
            let url = url.clone();
            async move { matches!(call(Method::GET, &url, false, None).await, Ok((200, _))) }
        })
        .await?;
    }
    let options: Vec<serde_json::Value> = OPTIONS
        .iter()
        .map(|o| serde_json::json!({"id": o, "label": o.to_uppercase()}))
        .collect();
    let create = serde_json::json!({"id": ELECTION, "title": "Chaos", "options": options, "pow_difficulty": 0});
    let (s, b) = call(
        Method::POST,
        &fleet.admin_url(0, "/admin/v1/elections"),
        true,
        Some(create),
    )
    .await
    .map_err(setup)?;
    if s != 201 {
        return Err(setup(format!("creating the election: {s} {b}")));
    }
    let (s, b) = call(
        Method::POST,
        &fleet.admin_url(0, &format!("/admin/v1/elections/{ELECTION}/open")),
        true,
        None,
    )
    .await
    .map_err(setup)?;
    if s != 200 {
        return Err(setup(format!("opening the election: {s} {b}")));
    }
    rec.marks().opened_version = b["version"]
        .as_u64()
        .ok_or_else(|| setup(format!("the open's answer has no version: {b}")))?;
    for i in 0..fleet.nodes.len() {
        let url = format!("{}/v1/elections/{ELECTION}", fleet.node_url(i));
        wait_for("every node seeing the election open", Duration::from_secs(60), || {
            let url = url.clone();
            async move {
                matches!(call(Method::GET, &url, false, None).await, Ok((200, e)) if e["state"] == "open")
            }
        })
        .await?;
    }

    // Clients: per node, one of each protocol.
    let mut clients = Vec::new();
    for n in &fleet.nodes {
        let mut per_node = Vec::new();
        for (protocol, url) in [
            (Protocol::H1, format!("http://{}", n.http)),
            (Protocol::H2, format!("http://{}", n.http)),
            (
                Protocol::H3,
                match n.isolation {
                    Some(_) => format!("https://{}", n.https),
                    None => format!("https://localhost:{}", n.https.port()),
                },
            ),
        ] {
            let target: Target = url.parse().map_err(|e| setup(format!("{e}")))?;
            let target = target.with_trust(Trust::CaFile(fleet.cert.clone()));
            let client = Client::connect(target, protocol, 2)
                .await
                .map_err(|e| setup(format!("connecting {protocol:?} to {url}: {e}")))?;
            per_node.push((protocol, client));
        }
        clients.push(per_node);
    }
    let clients = Arc::new(clients);
    let issued = unix_ms() / 1000;
    let tokens = Arc::new(
        Tokens::new(TOKEN_KEY.as_bytes(), 0, 0, issued, 6 * 3600)
            .map_err(|e| setup(format!("token key: {e}")))?,
    );
    let start = Instant::now();
    let until = start + cfg.duration;
    rec.marks().load_from_ms = Some(unix_ms());
    let close_began = Arc::new(AtomicBool::new(false));
    let closed = Arc::new(AtomicBool::new(false));
    let fleet = Arc::new(tokio::sync::Mutex::new(fleet));
    let mut lanes = Vec::new();
    for l in 0..cfg.lanes {
        lanes.push(tokio::spawn(lane(
            l,
            cfg.lanes,
            clients.clone(),
            tokens.clone(),
            cfg.seed,
            until,
            rec.history.clone(),
            closed.clone(),
        )));
    }
    let admin_urls: Vec<String> = {
        let f = fleet.lock().await;
        (0..f.nodes.len()).map(|i| f.admin_url(i, "")).collect()
    };
    let operator = tokio::spawn(admin_lane(
        admin_urls.clone(),
        cfg.seed,
        until,
        rec.admin.clone(),
    ));
    let closer = tokio::spawn(operator_close(
        admin_urls,
        cfg.seed,
        start,
        cfg.duration,
        until + Duration::from_secs(120),
        rec.close.clone(),
        close_began.clone(),
        closed.clone(),
    ));
    // Whatever ends this run early, its closer must not go on closing through a dead fleet.
    let _closer_stops = AbortOnDrop(closer.abort_handle());
    let nemesis_result = nemesis(
        fleet.clone(),
        cfg.seed,
        until,
        rec.faults.clone(),
        close_began,
    )
    .await;
    for l in lanes {
        let _ = l.await;
    }
    rec.marks().load_to_ms = Some(unix_ms());
    let _ = operator.await;
    // Heal before anything else: the closer may still be trying, and the rest needs the
    // services up whatever the nemesis did.
    services_up(
        &cfg.services,
        &["--brokers", "3", "kafka", "redis", "dynamodb"],
    )?;
    nemesis_result?;
    if !closer.await.unwrap_or(false) {
        return Err(setup(
            "the close was never acknowledged, through any node, within 120 s of the load's end",
        ));
    }

    // The recount the close started may have died with its node or met a fault; the
    // scheduled recount (`votes recount --all-closed`, the timer's) is what heals that.
    let f = fleet.lock().await;
    let results = format!("{}/v1/elections/{ELECTION}/results", f.node_url(0));
    let official = match wait_final(&results, Duration::from_secs(180)).await {
        Some(o) => o,
        None => {
            rec.marks().recount_retried = true;
            let log = std::fs::File::create(cfg.out.join("recount.log"))?;
            let bin = cfg.votes_bin.clone();
            let env = f.env();
            tokio::task::spawn_blocking(move || {
                Command::new(bin)
                    .args(["recount", "--all-closed"])
                    .envs(env)
                    .env_remove("VOTES_CONFIG")
                    .stdout(log.try_clone()?)
                    .stderr(log)
                    .status()
            })
            .await
            .map_err(|e| setup(format!("the recount task: {e}")))??;
            wait_final(&results, Duration::from_secs(600))
                .await
                .unwrap_or_else(|| serde_json::json!({"state": "not final after 780 s"}))
        }
    };
    let history = snapshot(&rec.history);
    let proofs = if official["state"] == "final" {
        served_proofs(&f.node_url(0), &history).await
    } else {
        HashMap::new()
    };
    let (_, list) = call(
        Method::GET,
        &f.admin_url(0, "/admin/v1/elections"),
        true,
        None,
    )
    .await
    .map_err(setup)?;
    let election = list
        .as_array()
        .and_then(|es| es.iter().find(|e| e["id"] == ELECTION))
        .cloned()
        .unwrap_or_default();
    let dynamo = dynamo_votes(cfg, &names).await?;
    let redis = redis_tallies(cfg, &names)?;
    let log = committed_log(cfg, &names)?;
    Ok(check::Engines {
        log,
        official,
        proofs,
        dynamo,
        redis,
        election,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Java's own values: `"hello".hashCode()` and the string whose hash is `Integer.MIN_VALUE`.
    #[test]
    fn java_hash_is_javas_string_hash_code() {
        assert_eq!(java_hash(""), 0);
        assert_eq!(java_hash("hello"), 99_162_322);
        assert_eq!(java_hash("polygenelubricants"), i32::MIN);
    }

    /// Kafka's `Utils.abs`: a negative hash maps to its absolute value, `i32::MIN` to 0. A
    /// mask (`& 0x7fffffff`) would put a hash of -5 on partition 3 of 8, not 5, and kill the
    /// wrong broker.
    #[test]
    fn the_coordinator_partition_is_kafkas_abs_modulo_count() {
        assert_eq!(coordinator_partition(13, 8), 5);
        assert_eq!(coordinator_partition(-5, 8), 5);
        assert_ne!(coordinator_partition(-5, 8), (-5i32 & 0x7fff_ffff) % 8);
        assert_eq!(coordinator_partition(i32::MIN, 8), 0);
        assert_eq!(
            coordinator_partition(java_hash("polygenelubricants"), 50),
            0
        );
    }

    #[test]
    fn the_leader_id_is_read_from_the_quorum_status() {
        let status =
            "ClusterId:              abc\nLeaderId:               2\nLeaderEpoch:            7\n";
        assert_eq!(leader_id(status), Some(2));
        assert_eq!(leader_id("ClusterId: abc\n"), None);
    }
}
