//! `votes-flood`: a flood of bad vote requests, for measuring what the edge absorbs (issue #7).
//!
//! ```text
//! votes-flood --target http://127.0.0.1:8080 --election e1 --pow-election e1-pow \
//!     --rate 2000 --duration 20s --dup-base 1 --dup-voters 4000 --report flood.json
//! ```
//!
//! Every request is one the voter API must refuse with its own 4xx (docs/design.md §4.2), the kinds in
//! rotation: no token, a token signed with another key, a garbage token, an expired token (401
//! `unauthorized`); bad JSON, an unknown field, bad UTF-8 (400 `invalid_request`); an unknown
//! option (422); a body over 1 KiB (413); `text/plain` (415); an unknown election (404); with
//! `--dup-voters`, a second vote of a voter who already voted (409 `already_voted`); with
//! `--pow-election` (difficulty > 0), no proof of work (403 `challenge_required`) and a forged
//! challenge, a real challenge with a wrong nonce, a solved challenge of another voter (403
//! `challenge_failed`). Tokens, bodies and challenges are prepared before the run, so each
//! planned request is exactly one POST and the generator stays cheap.
//!
//! `--rate N` is open loop (latency from the intended send time, like `votes-load`);
//! `--rate 0` is closed loop: `--concurrency` workers send back to back, which measures what the
//! server absorbs at most. The JSON report has `votes-load`'s fields (`sent`, `achieved_rate`,
//! `by_status`, `latency_ms`) plus `rejected` (answers with the expected status *and*
//! `error.code`), `rejected_rate`, `unexpected` and `by_kind`.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Uri};
use serde::Serialize;
use tokio::time::Instant;
use votes_core::VoterId;
use votes_core::token::{self, TokenKeys};
use votes_perf::attack::{Attack, GARBAGE_AUTHORIZATION, UNKNOWN_ELECTION, WRONG_CONTENT_TYPE};
use votes_perf::cli::{TrustArgs, client_runtime, run_as_task, write_report};
use votes_perf::client::{Body, Client, Protocol, Target};
use votes_perf::duration::parse_duration;
use votes_perf::election::ElectionView;
use votes_perf::flow::Flow;
use votes_perf::report::{Report, latency_histogram, record_latency};

votes_perf::mimalloc_allocator!();

#[derive(Parser, Debug)]
#[command(
    name = "votes-flood",
    version,
    about = "Floods the voter API with requests it must refuse, each kind with its own 4xx"
)]
struct Args {
    /// Base URL of a public listener: http://HOST:PORT (HTTP/1.1 or h2c) or https://HOST:PORT
    /// (TLS: HTTP/1.1, h2 or h3; needs --ca-cert or --insecure).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    target: Target,
    #[command(flatten)]
    trust: TrustArgs,
    /// An open election without proof of work.
    #[arg(long)]
    election: String,
    /// An open election with pow_difficulty > 0: adds the proof-of-work kinds.
    #[arg(long)]
    pow_election: Option<String>,
    /// Requests/s, open loop; 0: closed loop with --concurrency workers.
    #[arg(long)]
    rate: f64,
    /// Workers of a closed-loop run (--rate 0).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    duration: Duration,
    /// h1 (HTTP/1.1 keep-alive), h2 (h2c, or ALPN h2 on https://) or h3 (QUIC; https://).
    #[arg(long, default_value = "h1")]
    protocol: Protocol,
    /// h1: keep-alive connections (one request at a time each); h2: multiplexed connections.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// First voter id of the flood's own (never accepted) requests.
    #[arg(long, default_value_t = 4_000_000_000)]
    voter_base: u64,
    /// Voters `--dup-base..+--dup-voters` have voted in --election already: adds duplicates.
    #[arg(long, default_value_t = 1)]
    dup_base: u64,
    #[arg(long, default_value_t = 0)]
    dup_voters: u64,
    /// HS256 secret voter tokens are signed with (the server's VOTES_TOKEN_KEY).
    #[arg(long, env = "VOTES_TOKEN_KEY", hide_env_values = true)]
    token_key: String,
    /// Outstanding requests at most (open loop); a request due beyond it is dropped.
    #[arg(long, default_value_t = 10_000)]
    max_in_flight: u64,
    /// Bound on one request.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
    /// Runtime worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Write the JSON report here.
    #[arg(long)]
    report: Option<std::path::PathBuf>,
    /// No progress line on stderr.
    #[arg(long, short)]
    quiet: bool,
}

/// Distinct voters whose tokens (and challenges) the flood rotates through.
const POOL: u64 = 256;
const POW_POOL: u64 = 64;
const DUP_POOL: u64 = 4_096;

/// Everything a request needs, prepared before the run.
struct Prep {
    client: Client,
    kinds: Vec<Attack>,
    votes: Uri,
    pow_votes: Option<Uri>,
    unknown_election: Uri,
    json: HeaderValue,
    text: HeaderValue,
    bearer: Vec<HeaderValue>,
    foreign: Vec<HeaderValue>,
    expired: Vec<HeaderValue>,
    garbage: HeaderValue,
    dup: Vec<HeaderValue>,
    vote: Bytes,
    pow_vote: Bytes,
    bad_json: Bytes,
    unknown_field: Bytes,
    bad_utf8: Bytes,
    unknown_option: Bytes,
    oversize: Bytes,
    pow_forged: Bytes,
    /// (auth, body) with a real challenge and a nonce that does not solve it.
    pow_unsolved: Vec<(HeaderValue, Bytes)>,
    /// (auth, body) with another voter's solved challenge.
    pow_other: Vec<(HeaderValue, Bytes)>,
    timeout: Duration,
}

fn now_s() -> u64 {
    votes_core::clock::unix_ms() / 1000
}

fn bearer(keys: &TokenKeys, voter: u64, ttl_s: u64, issued_s: u64) -> HeaderValue {
    let jwt = token::issue(keys.signing_key(), VoterId(voter), ttl_s, issued_s);
    HeaderValue::try_from(format!("Bearer {jwt}")).expect("a JWT is a valid header value")
}

async fn get_json<T: serde::de::DeserializeOwned>(
    client: &Client,
    path: &str,
    auth: Option<&HeaderValue>,
) -> Result<T> {
    let mut req = client.request(Method::GET, client.uri(path));
    if let Some(a) = auth {
        req = req.header(AUTHORIZATION, a.clone());
    }
    let a = client
        .send(req.body(Body::default()).expect("valid request"))
        .await
        .with_context(|| format!("GET {path}"))?;
    if a.status != 200 {
        bail!(
            "GET {path}: {} {}",
            a.status,
            String::from_utf8_lossy(&a.body)
        );
    }
    serde_json::from_slice(&a.body).with_context(|| format!("GET {path}: unexpected body"))
}

async fn prepare(args: &Args) -> Result<Prep> {
    let target = args.target.clone().with_trust(args.trust.trust());
    let client = Client::connect(target, args.protocol, args.connections)
        .await
        .with_context(|| format!("connecting to {}", args.target.authority))?;
    let keys = TokenKeys::hs256(args.token_key.as_bytes()).context("--token-key")?;
    let foreign = TokenKeys::hs256(b"votes-flood: not the server's key 0123456789")
        .expect("a long enough key");
    let issued = now_s().saturating_sub(60);
    let ttl = args.duration.as_secs() + 3_600;
    let bearer_pool: Vec<HeaderValue> = (0..POOL)
        .map(|k| bearer(&keys, args.voter_base + k, ttl, issued))
        .collect();
    let election: ElectionView =
        get_json(&client, &format!("/v1/elections/{}", args.election), None).await?;
    let option = election
        .options
        .first()
        .map(|o| o.id.clone())
        .context("the election has no options")?;
    if election.pow_difficulty > 0 {
        bail!(
            "--election {} asks for proof of work: pass it as --pow-election",
            args.election
        );
    }
    let vote = |o: &str| Bytes::from(serde_json::json!({ "option": o }).to_string());
    let mut kinds = Attack::BASE.to_vec();
    if args.dup_voters > 0 {
        kinds.push(Attack::Duplicate);
    }
    let mut pow_vote = Bytes::new();
    let mut pow_forged = Bytes::new();
    let mut pow_unsolved = Vec::new();
    let mut pow_other = Vec::new();
    let mut pow_votes = None;
    if let Some(pe) = &args.pow_election {
        let e: ElectionView = get_json(&client, &format!("/v1/elections/{pe}"), None).await?;
        if e.pow_difficulty == 0 {
            bail!("--pow-election {pe} has pow_difficulty 0");
        }
        let o = e
            .options
            .first()
            .map(|o| o.id.clone())
            .context("the PoW election has no options")?;
        pow_vote = vote(&o);
        pow_forged = Bytes::from(Attack::PowForged.malformed_body(&o).expect("a body attack"));
        #[derive(serde::Deserialize)]
        struct Challenge {
            challenge: String,
            difficulty: u8,
        }
        let path = format!("/v1/elections/{pe}/challenge");
        for k in 0..POW_POOL {
            let auth = bearer_pool[k as usize].clone();
            let c: Challenge = get_json(&client, &path, Some(&auth)).await?;
            let nonce = votes_perf::attack::unsolving_nonce(&c.challenge);
            let body =
                serde_json::json!({"option": o, "pow": {"challenge": c.challenge, "nonce": nonce}});
            pow_unsolved.push((auth.clone(), Bytes::from(body.to_string())));
            let other = bearer_pool[(POW_POOL + k) as usize].clone();
            let c: Challenge = get_json(&client, &path, Some(&other)).await?;
            let nonce = votes_core::pow::solve(&c.challenge, c.difficulty);
            let body =
                serde_json::json!({"option": o, "pow": {"challenge": c.challenge, "nonce": nonce}});
            pow_other.push((auth, Bytes::from(body.to_string())));
        }
        pow_votes = Some(client.uri(&format!("/v1/elections/{pe}/votes")));
        kinds.extend(Attack::POW);
    }
    let body = |a: Attack| Bytes::from(a.malformed_body(&option).expect("a body attack"));
    Ok(Prep {
        kinds,
        votes: client.uri(&format!("/v1/elections/{}/votes", args.election)),
        pow_votes,
        unknown_election: client.uri(&format!("/v1/elections/{UNKNOWN_ELECTION}/votes")),
        json: HeaderValue::from_static("application/json"),
        text: HeaderValue::from_static(WRONG_CONTENT_TYPE),
        foreign: (0..POOL)
            .map(|k| bearer(&foreign, args.voter_base + k, ttl, issued))
            .collect(),
        expired: (0..POOL)
            .map(|k| bearer(&keys, args.voter_base + k, 60, now_s() - 7_200))
            .collect(),
        garbage: HeaderValue::from_static(GARBAGE_AUTHORIZATION),
        dup: (0..args.dup_voters.min(DUP_POOL))
            .map(|k| bearer(&keys, args.dup_base + k, ttl, issued))
            .collect(),
        bearer: bearer_pool,
        bad_json: body(Attack::BadJson),
        unknown_field: body(Attack::UnknownField),
        bad_utf8: body(Attack::BadUtf8),
        unknown_option: body(Attack::UnknownOption),
        vote: vote(&option),
        pow_vote,
        oversize: body(Attack::Oversize),
        pow_forged,
        pow_unsolved,
        pow_other,
        timeout: args.timeout,
        client,
    })
}

impl Prep {
    fn request(&self, n: u64) -> (Attack, hyper::Request<Body>) {
        let kind = self.kinds[(n % self.kinds.len() as u64) as usize];
        let k = (n / self.kinds.len() as u64) as usize;
        let pick = |v: &Vec<HeaderValue>| v[k % v.len()].clone();
        let uri = match kind {
            Attack::UnknownElection => &self.unknown_election,
            _ if Attack::POW.contains(&kind) => self
                .pow_votes
                .as_ref()
                .expect("PoW kinds only with a PoW election"),
            _ => &self.votes,
        };
        let ctype = match kind {
            Attack::WrongContentType => &self.text,
            _ => &self.json,
        };
        let (auth, body) = match kind {
            Attack::MissingToken => (None, self.vote.clone()),
            Attack::BadSignature => (Some(pick(&self.foreign)), self.vote.clone()),
            Attack::GarbageToken => (Some(self.garbage.clone()), self.vote.clone()),
            Attack::ExpiredToken => (Some(pick(&self.expired)), self.vote.clone()),
            Attack::BadJson => (Some(pick(&self.bearer)), self.bad_json.clone()),
            Attack::UnknownField => (Some(pick(&self.bearer)), self.unknown_field.clone()),
            Attack::BadUtf8 => (Some(pick(&self.bearer)), self.bad_utf8.clone()),
            Attack::UnknownOption => (Some(pick(&self.bearer)), self.unknown_option.clone()),
            Attack::Oversize => (Some(pick(&self.bearer)), self.oversize.clone()),
            Attack::WrongContentType => (Some(pick(&self.bearer)), self.vote.clone()),
            Attack::UnknownElection => (Some(pick(&self.bearer)), self.vote.clone()),
            Attack::Duplicate => (Some(pick(&self.dup)), self.vote.clone()),
            Attack::PowMissing => (Some(pick(&self.bearer)), self.pow_vote.clone()),
            Attack::PowForged => (Some(pick(&self.bearer)), self.pow_forged.clone()),
            Attack::PowUnsolved | Attack::PowOtherVoter => {
                let pool = if kind == Attack::PowUnsolved {
                    &self.pow_unsolved
                } else {
                    &self.pow_other
                };
                let (auth, body) = &pool[k % pool.len()];
                (Some(auth.clone()), body.clone())
            }
        };
        let mut b = self
            .client
            .request(Method::POST, uri.clone())
            .header(CONTENT_TYPE, ctype.clone());
        if let Some(a) = auth {
            b = b.header(AUTHORIZATION, a);
        }
        (kind, b.body(Body::new(body)).expect("valid request"))
    }
}

#[derive(serde::Deserialize)]
struct ErrorBody {
    error: ErrorInner,
}

#[derive(serde::Deserialize)]
struct ErrorInner {
    code: String,
}

struct Stats {
    flow: Flow,
    rejected: AtomicU64,
    unexpected: AtomicU64,
    errors: AtomicU64,
    inner: Mutex<Inner>,
}

struct Inner {
    latency_us: Histogram<u64>,
    by_kind: BTreeMap<Attack, BTreeMap<String, u64>>,
    by_status: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
}

impl Stats {
    fn new() -> Self {
        Self {
            flow: Flow::default(),
            rejected: AtomicU64::new(0),
            unexpected: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            inner: Mutex::new(Inner {
                latency_us: latency_histogram(),
                by_kind: BTreeMap::new(),
                by_status: BTreeMap::new(),
                errors: BTreeMap::new(),
            }),
        }
    }
}

/// Sends request `n` and records it, its latency measured from `due`.
async fn one(prep: &Prep, stats: &Stats, n: u64, due: Instant) {
    let (kind, req) = prep.request(n);
    let outcome = tokio::time::timeout(prep.timeout, prep.client.send(req)).await;
    let latency = due.elapsed();
    match outcome {
        Ok(Ok(a)) => {
            let status = a.status.as_u16();
            let code = serde_json::from_slice::<ErrorBody>(&a.body)
                .map(|b| b.error.code)
                .unwrap_or_default();
            let want = kind.expected();
            if (status, code.as_str()) == want {
                stats.rejected.fetch_add(1, Ordering::Relaxed);
            } else {
                stats.unexpected.fetch_add(1, Ordering::Relaxed);
            }
            let mut s = stats.inner.lock().expect("stats lock");
            record_latency(&mut s.latency_us, latency);
            *s.by_status.entry(status.to_string()).or_default() += 1;
            *s.by_kind
                .entry(kind)
                .or_default()
                .entry(format!("{status} {code}"))
                .or_default() += 1;
            drop(s);
            stats.flow.answered.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Err(e)) => {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            let mut s = stats.inner.lock().expect("stats lock");
            *s.errors.entry(e.label()).or_default() += 1;
        }
        Err(_) => {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            let mut s = stats.inner.lock().expect("stats lock");
            *s.errors.entry("timeout".into()).or_default() += 1;
        }
    }
}

#[derive(Serialize)]
struct FloodReport {
    #[serde(flatten)]
    report: Report,
    mode: &'static str,
    rate: f64,
    concurrency: usize,
    protocol: &'static str,
    connections: usize,
    duration_s: f64,
    elapsed_s: f64,
    dropped: u64,
    /// Answers with the status and `error.code` their kind expects.
    rejected: u64,
    rejected_rate: f64,
    /// Answers with another status or code.
    unexpected: u64,
    /// Answers by kind and "status code".
    by_kind: BTreeMap<String, BTreeMap<String, u64>>,
    errors: BTreeMap<String, u64>,
}

async fn run(args: Args) -> Result<FloodReport> {
    let prep = Arc::new(prepare(&args).await?);
    let stats = Arc::new(Stats::new());
    let t0 = Instant::now();
    let end = t0 + args.duration;
    let progress = (!args.quiet).then(|| {
        let stats = stats.clone();
        tokio::spawn(async move {
            let mut tick =
                tokio::time::interval_at(t0 + Duration::from_secs(1), Duration::from_secs(1));
            loop {
                tick.tick().await;
                let _ = writeln!(
                    std::io::stderr().lock(),
                    "[{:6.1}s] sent {} answered {} rejected {} unexpected {} errors {} dropped {}",
                    t0.elapsed().as_secs_f64(),
                    stats.flow.sent.load(Ordering::Relaxed),
                    stats.flow.answered.load(Ordering::Relaxed),
                    stats.rejected.load(Ordering::Relaxed),
                    stats.unexpected.load(Ordering::Relaxed),
                    stats.errors.load(Ordering::Relaxed),
                    stats.flow.dropped.load(Ordering::Relaxed),
                );
            }
        })
    });
    if args.rate > 0.0 {
        let period = Duration::from_secs_f64(1.0 / args.rate);
        let total = (args.duration.as_secs_f64() * args.rate).ceil() as u64;
        for n in 0..total {
            let due = t0 + period.mul_f64(n as f64);
            tokio::time::sleep_until(due).await;
            if !stats.flow.admit(args.max_in_flight) {
                continue;
            }
            let (prep, stats) = (prep.clone(), stats.clone());
            tokio::spawn(async move {
                one(&prep, &stats, n, due.min(Instant::now())).await;
                stats.flow.finished();
            });
        }
        stats.flow.drained().await;
    } else {
        let next = Arc::new(AtomicU64::new(0));
        let workers: Vec<_> = (0..args.concurrency.max(1))
            .map(|_| {
                let (prep, stats, next) = (prep.clone(), stats.clone(), next.clone());
                tokio::spawn(async move {
                    while Instant::now() < end {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        stats.flow.sent.fetch_add(1, Ordering::Relaxed);
                        one(&prep, &stats, n, Instant::now()).await;
                    }
                })
            })
            .collect();
        for w in workers {
            w.await.context("a worker panicked")?;
        }
    }
    let elapsed = t0.elapsed().as_secs_f64().max(1e-6);
    if let Some(p) = progress {
        p.abort();
    }
    let inner = stats.inner.lock().expect("stats lock");
    let mut by_status = inner.by_status.clone();
    let errors = stats.errors.load(Ordering::Relaxed);
    if errors > 0 {
        by_status.insert("error".into(), errors);
    }
    let rejected = stats.rejected.load(Ordering::Relaxed);
    Ok(FloodReport {
        report: Report::new(
            stats.flow.sent.load(Ordering::Relaxed),
            elapsed,
            by_status,
            &inner.latency_us,
        ),
        mode: if args.rate > 0.0 { "open" } else { "closed" },
        rate: args.rate,
        concurrency: args.concurrency,
        protocol: args.protocol.as_str(),
        connections: args.connections,
        duration_s: args.duration.as_secs_f64(),
        elapsed_s: elapsed,
        dropped: stats.flow.dropped.load(Ordering::Relaxed),
        rejected,
        rejected_rate: rejected as f64 / elapsed,
        unexpected: stats.unexpected.load(Ordering::Relaxed),
        by_kind: inner
            .by_kind
            .iter()
            .map(|(k, v)| (k.name().to_string(), v.clone()))
            .collect(),
        errors: inner.errors.clone(),
    })
}

fn main() -> Result<()> {
    let args = Args::parse();
    if !(args.rate.is_finite() && args.rate >= 0.0) {
        bail!("--rate must be a number of requests/s, or 0 for a closed loop");
    }
    let report_path = args.report.clone();
    let rt = client_runtime(args.threads, None)?;
    let report = run_as_task(&rt, "the flood", run(args))??;
    let r = &report.report;
    println!(
        "votes-flood: {} loop, {} over {} connection(s), {:.1}s: sent {} answered {:.0}/s, \
         rejected as expected {} ({:.0}/s), unexpected {}, errors {}, dropped {}",
        report.mode,
        report.protocol,
        report.connections,
        report.elapsed_s,
        r.sent,
        r.achieved_rate,
        report.rejected,
        report.rejected_rate,
        report.unexpected,
        report.errors.values().sum::<u64>(),
        report.dropped,
    );
    for (kind, seen) in &report.by_kind {
        let s: Vec<String> = seen.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("    {kind:<19} {}", s.join(" "));
    }
    println!(
        "  latency ms: p50 {:.3}  p99 {:.3}  max {:.3}",
        r.latency_ms.p50, r.latency_ms.p99, r.latency_ms.max
    );
    write_report(report_path.as_deref(), &report)
}
