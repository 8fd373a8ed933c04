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
use votes_core::{Names, VoterId, routing};

use crate::client::{Client, Protocol, Target, Trust};
use crate::mix::Rng;
use crate::tokens::Tokens;

pub const TOKEN_KEY: &str = "chaos-only VOTES_TOKEN_KEY, 32+ bytes long";
pub const AUDIT_KEY: &str = "chaos-only VOTES_AUDIT_KEY, 32+ bytes long!";
pub const FORWARD_KEY: &str = "chaos-only VOTES_FORWARD_KEY, 32+ bytes long";
pub const ADMIN_TOKEN: &str = "chaos-admin-token";
const ELECTION: &str = "chaos";
const OPTIONS: [&str; 3] = ["red", "green", "blue"];
/// Attempts per voter before the voter gives up (each after a 503 or a lost answer).
const ATTEMPTS: u32 = 60;
/// A partition without a `202` for longer than this is reported as unavailable.
const GAP: Duration = Duration::from_secs(1);
/// How long after a fault heals a window is still put down to it: a restarted node rejoins
/// the group, which moves partitions once more.
const AFTERMATH_MS: u64 = 30_000;

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
    pub target: String,
    pub from_ms: u64,
    pub to_ms: u64,
}

/// What a run found.
#[derive(Debug, Default, serde::Serialize)]
pub struct Report {
    pub seed: u64,
    pub acknowledged: u64,
    pub attempts: u64,
    pub faults: BTreeMap<&'static str, u64>,
    pub anomalies: Vec<String>,
    /// Per fault kind: the longest window without a `202` on some partition that overlapped it.
    pub unavailable_ms: BTreeMap<&'static str, Vec<u64>>,
    /// Admin writes answered `200` during the run.
    pub admin_writes: u64,
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
) {
    let mut rng = Rng::new(seed ^ (lane as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut voter = lane as u64;
    while Instant::now() < until {
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
                    let b = rng.next_u64() % 3;
                    target = format!("broker-{b}");
                    let services = f.cfg.services.clone();
                    drop(f);
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

/// The checker: the history against the committed log and the official result.
#[allow(clippy::too_many_arguments)]
fn check(
    cfg: &Config,
    log: &[(u32, u64, LogRecord)],
    history: &[Attempt],
    faults: &[Fault],
    official: &serde_json::Value,
    receipts_ok: &HashMap<String, bool>,
    admin: &[AdminWrite],
    opened_version: u64,
    election: &serde_json::Value,
    dynamo: &HashMap<u64, String>,
) -> Report {
    let mut r = Report {
        seed: cfg.seed,
        attempts: history.len() as u64,
        official: official.clone(),
        ..Report::default()
    };
    for f in faults {
        *r.faults.entry(f.kind).or_default() += 1;
    }
    // The log's counted votes: per partition in offset order, the election's records up to
    // its first close marker, the first record of each voter.
    let mut counted: HashMap<u64, (u32, u64, String)> = HashMap::new();
    let mut closed: HashSet<u32> = HashSet::new();
    let mut at: HashMap<(u32, u64), (u64, String)> = HashMap::new();
    for (p, o, rec) in log {
        match rec {
            LogRecord::Close(c) if c.election.as_str() == ELECTION => {
                closed.insert(*p);
            }
            LogRecord::Vote(v) if v.election.as_str() == ELECTION => {
                at.insert((*p, *o), (v.voter.0, v.option.as_str().to_owned()));
                if closed.contains(p) {
                    continue;
                }
                if let Some((p0, o0, _)) = counted.get(&v.voter.0) {
                    if *p0 != *p {
                        r.anomalies.push(format!(
                            "voter {} has records in partitions {p0} (offset {o0}) and {p}",
                            v.voter.0
                        ));
                    }
                    continue;
                }
                counted.insert(v.voter.0, (*p, *o, v.option.as_str().to_owned()));
            }
            _ => {}
        }
    }
    if closed.len() != cfg.partitions as usize {
        r.anomalies.push(format!(
            "close markers in {} of {} partitions",
            closed.len(),
            cfg.partitions
        ));
    }
    let mut acked = HashSet::new();
    for a in history.iter().filter(|a| a.status == 202) {
        acked.insert(a.voter);
        let (Some(p), Some(o)) = (a.partition, a.offset) else {
            r.anomalies.push(format!(
                "voter {}: a 202 without partition and offset",
                a.voter
            ));
            continue;
        };
        match counted.get(&a.voter) {
            Some((cp, co, option)) if (*cp, *co) == (p, o) && option == a.option => {}
            Some((cp, co, _)) => r.anomalies.push(format!(
                "voter {}: 202 at {p}/{o}, but the counted vote is at {cp}/{co}",
                a.voter
            )),
            None => r.anomalies.push(format!(
                "voter {}: 202 at {p}/{o} ({:?} in the log there) is not counted: an acknowledged vote lost",
                a.voter,
                at.get(&(p, o))
            )),
        }
        if routing::partition_of(VoterId(a.voter), cfg.partitions) != p {
            r.anomalies.push(format!(
                "voter {}: committed in a partition not its own",
                a.voter
            ));
        }
        match a.receipt.as_ref().and_then(|rc| receipts_ok.get(rc)) {
            Some(true) => {}
            _ => r.anomalies.push(format!(
                "voter {}: receipt {:?} is not proven against the official root",
                a.voter, a.receipt
            )),
        }
    }
    r.acknowledged = acked.len() as u64;
    for a in history
        .iter()
        .filter(|a| a.status == 409 && a.code.as_deref() == Some("already_voted"))
    {
        if !counted.contains_key(&a.voter) {
            r.anomalies.push(format!(
                "voter {}: 409 already_voted, but no committed vote",
                a.voter
            ));
        }
    }
    for a in history.iter().filter(|a| {
        !matches!(a.status, 0 | 202 | 503) && a.code.as_deref() != Some("already_voted")
    }) {
        r.anomalies.push(format!(
            "voter {}: an answer outside the contract under faults: {} {:?}",
            a.voter, a.status, a.code
        ));
    }
    // Official result = the log's first votes.
    let mut tallies: BTreeMap<String, u64> = BTreeMap::new();
    for (_, _, option) in counted.values() {
        *tallies.entry(option.clone()).or_default() += 1;
    }
    if official["state"] != "final" {
        r.anomalies
            .push(format!("the election did not become final: {official}"));
    }
    for o in OPTIONS {
        let (theirs, ours) = (
            official["totals"][o].as_u64().unwrap_or(0),
            tallies.get(o).copied().unwrap_or(0),
        );
        if theirs != ours {
            r.anomalies.push(format!(
                "{o}: official {theirs}, the log's first votes {ours}"
            ));
        }
    }
    if official["merkle"]["tree_size"].as_u64() != Some(counted.len() as u64) {
        r.anomalies.push(format!(
            "official tree size {}, {} voters counted in the log",
            official["merkle"]["tree_size"],
            counted.len()
        ));
    }
    // DynamoDB holds each counted voter's first vote, and nothing else.
    for (voter, (_, _, option)) in &counted {
        match dynamo.get(voter) {
            Some(o) if o == option => {}
            other => r.anomalies.push(format!(
                "voter {voter}: DynamoDB holds {other:?}, the log's first vote is {option}"
            )),
        }
    }
    for voter in dynamo.keys().filter(|v| !counted.contains_key(v)) {
        r.anomalies.push(format!(
            "voter {voter}: in DynamoDB but not counted in the log"
        ));
    }
    // Admin writes: no two acknowledged writes made the same version (one of them would be
    // lost), and the versions add up: from the open, each acknowledged write, the close and
    // `final` made one, and each write without a clear answer (none, or 503) at most one.
    r.admin_writes = admin.iter().filter(|w| w.status == 200).count() as u64;
    let mut made: BTreeMap<u64, u64> = BTreeMap::new();
    for w in admin.iter().filter(|w| w.status == 200) {
        let Some(v) = w.version else {
            r.anomalies
                .push(format!("admin write {}: a 200 without its version", w.n));
            continue;
        };
        if let Some(other) = made.insert(v, w.n) {
            r.anomalies.push(format!(
                "admin writes {other} and {} were both acknowledged as version {v}: one is lost",
                w.n
            ));
        }
    }
    for w in admin
        .iter()
        .filter(|w| !matches!(w.status, 0 | 200 | 409 | 503))
    {
        r.anomalies.push(format!(
            "admin write {}: an answer outside the contract: {}",
            w.n, w.status
        ));
    }
    let unsure = admin.iter().filter(|w| matches!(w.status, 0 | 503)).count() as u64;
    let least = opened_version + r.admin_writes + 2;
    let final_version = election["version"].as_u64().unwrap_or(0);
    if !(least..=least + unsure).contains(&final_version) {
        r.anomalies.push(format!(
            "the election ended at version {final_version}; open at {opened_version}, {} \
             acknowledged writes, {unsure} unsure, close and final: {least}..={}",
            r.admin_writes,
            least + unsure
        ));
    }
    if let Some(v) = made.keys().next_back()
        && final_version < *v
    {
        r.anomalies.push(format!(
            "the election ended at version {final_version}, below the acknowledged {v}"
        ));
    }
    // Unavailability: per partition, windows between 202s longer than GAP while load ran.
    let mut by_partition: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for a in history.iter().filter(|a| a.status == 202 && !a.duplicate) {
        if let Some(p) = a.partition {
            by_partition.entry(p).or_default().push(a.answered_ms);
        }
    }
    for times in by_partition.values_mut() {
        times.sort_unstable();
        for w in times.windows(2) {
            let gap = w[1] - w[0];
            if gap <= GAP.as_millis() as u64 {
                continue;
            }
            // The latest fault that began before the window ended and ended (plus its
            // aftermath) after it began.
            let cause = faults
                .iter()
                .filter(|f| f.from_ms <= w[1] && f.to_ms + AFTERMATH_MS >= w[0])
                .max_by_key(|f| f.from_ms)
                .map(|f| f.kind)
                .unwrap_or("none");
            r.unavailable_ms.entry(cause).or_default().push(gap);
        }
    }
    r
}

/// One seeded run, start to verdict.
pub async fn run(cfg: Config) -> Result<Report, ChaosError> {
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
    let opened_version = b["version"]
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
    let until = Instant::now() + cfg.duration;
    let history = Arc::new(Mutex::new(Vec::new()));
    let faults = Arc::new(Mutex::new(Vec::new()));
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
            history.clone(),
        )));
    }
    let admin_writes = Arc::new(Mutex::new(Vec::new()));
    let admin_urls: Vec<String> = {
        let f = fleet.lock().await;
        (0..f.nodes.len()).map(|i| f.admin_url(i, "")).collect()
    };
    let operator = tokio::spawn(admin_lane(
        admin_urls,
        cfg.seed,
        until,
        admin_writes.clone(),
    ));
    let nemesis_result = nemesis(fleet.clone(), cfg.seed, until, faults.clone()).await;
    for l in lanes {
        let _ = l.await;
    }
    let _ = operator.await;
    nemesis_result?;

    // Heal, close, and wait for the official result.
    let f = fleet.lock().await;
    services_up(
        &cfg.services,
        &["--brokers", "3", "kafka", "redis", "dynamodb"],
    )?;
    let (s, b) = call(
        Method::POST,
        &f.admin_url(0, &format!("/admin/v1/elections/{ELECTION}/close")),
        true,
        None,
    )
    .await
    .map_err(setup)?;
    if s != 200 {
        return Err(setup(format!("closing the election: {s} {b}")));
    }
    let results = format!("{}/v1/elections/{ELECTION}/results", f.node_url(0));
    let mut official = serde_json::Value::Null;
    let deadline = Instant::now() + Duration::from_secs(600);
    while Instant::now() < deadline {
        if let Ok((200, body)) = call(Method::GET, &results, false, None).await
            && body["state"] == "final"
        {
            official = body;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Every receipt of a 202, against the official tree.
    let history = history.lock().expect("history").clone();
    let mut receipts_ok = HashMap::new();
    if official["state"] == "final" {
        for a in history.iter().filter(|a| a.status == 202) {
            if let Some(rc) = &a.receipt {
                let url = format!("{}/v1/elections/{ELECTION}/receipts/{rc}", f.node_url(0));
                let ok = matches!(call(Method::GET, &url, false, None).await,
                    Ok((200, proof)) if proof["root"] == official["merkle"]["root"]);
                receipts_ok.insert(rc.clone(), ok);
            }
        }
    }
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
    let dynamo = dynamo_votes(&cfg, &names).await?;
    let log = committed_log(&cfg, &names)?;
    let faults = faults.lock().expect("faults").clone();
    let admin = admin_writes.lock().expect("admin writes").clone();
    let report = check(
        &cfg,
        &log,
        &history,
        &faults,
        &official,
        &receipts_ok,
        &admin,
        opened_version,
        &election,
        &dynamo,
    );

    let mut h = std::io::BufWriter::new(std::fs::File::create(cfg.out.join("history.jsonl"))?);
    for a in &history {
        serde_json::to_writer(&mut h, a).map_err(std::io::Error::other)?;
        h.write_all(b"\n")?;
    }
    for fault in &faults {
        serde_json::to_writer(&mut h, fault).map_err(std::io::Error::other)?;
        h.write_all(b"\n")?;
    }
    for w in &admin {
        serde_json::to_writer(&mut h, w).map_err(std::io::Error::other)?;
        h.write_all(b"\n")?;
    }
    h.flush()?;
    std::fs::write(
        cfg.out.join("report.json"),
        serde_json::to_vec_pretty(&report).map_err(std::io::Error::other)?,
    )?;
    Ok(report)
}
