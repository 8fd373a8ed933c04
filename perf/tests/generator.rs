//! Runs the generator against a tiny in-process voter API (hyper on tokio, HTTP/1.1 and h2c)
//! that answers like the real one: 202 for a first vote, 409 for a repeat, and the documented
//! 4xx for malformed requests; and, ignored by default, measures how fast the generator itself
//! can drive requests on one thread.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use votes_core::clock::unix_ms;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::AUTHORIZATION;
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use votes_core::pow::{self, PowKey};
use votes_core::token::{self, TokenKeys};
use votes_core::{ElectionId, ErrorCode, VoteBody, VoterId};
use votes_perf::client::Protocol;
use votes_perf::load::{Config, LoadReport, run};
use votes_perf::schedule::Ramp;

const SECRET: &str = "0123456789abcdef0123456789abcdef";

struct Server {
    keys: TokenKeys,
    pow_key: PowKey,
    pow_difficulty: u8,
    /// Answer after this long (to fill the in-flight bound).
    delay: Duration,
    /// Answer 202 to every POST without looking (generator throughput).
    trivial: bool,
    voted: Mutex<HashSet<u64>>,
    /// Source addresses of the accepted connections.
    peers: Mutex<HashSet<std::net::IpAddr>>,
}

fn json(status: u16, v: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    r
}

fn err(code: ErrorCode) -> Response<Full<Bytes>> {
    json(
        code.status(),
        serde_json::json!({"error": {"code": code.as_str(), "message": "test"}}),
    )
}

impl Server {
    fn voter(&self, req: &Request<Incoming>) -> Option<VoterId> {
        let h = req.headers().get(AUTHORIZATION)?.to_str().ok()?;
        let t = h.strip_prefix("Bearer ")?;
        token::verify(&self.keys, t, unix_ms() / 1000).ok()
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let election = ElectionId::new("e1").unwrap();
        match (req.method(), req.uri().path()) {
            (&Method::POST, "/v1/elections/e1/votes") if self.trivial => {
                let _ = req.into_body().collect().await;
                json(202, serde_json::json!({"status": "accepted"}))
            }
            (&Method::GET, "/v1/elections/e1") => json(
                200,
                serde_json::json!({"id": "e1", "title": "T", "state": "open",
                    "options": [{"id": "red", "label": "Red"}, {"id": "blue", "label": "Blue"}],
                    "pow_difficulty": self.pow_difficulty}),
            ),
            (&Method::GET, "/v1/elections/e1/challenge") => {
                let Some(v) = self.voter(&req) else {
                    return err(ErrorCode::Unauthorized);
                };
                let exp = unix_ms() + 60_000;
                let c = pow::issue(&self.pow_key, &election, v, exp, self.pow_difficulty);
                json(
                    200,
                    serde_json::json!({"challenge": c, "difficulty": self.pow_difficulty, "expires_at": exp}),
                )
            }
            (&Method::POST, "/v1/elections/e1/votes") => {
                let Some(voter) = self.voter(&req) else {
                    return err(ErrorCode::Unauthorized);
                };
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let body = match VoteBody::parse(&body) {
                    Ok(b) => b,
                    Err(e) => return err(e.code()),
                };
                if !["red", "blue"].contains(&body.option.as_str()) {
                    return err(ErrorCode::InvalidOption);
                }
                if self.pow_difficulty > 0 {
                    let Some(s) = &body.pow else {
                        return err(ErrorCode::ChallengeRequired);
                    };
                    if pow::verify(
                        &self.pow_key,
                        &s.challenge,
                        &s.nonce,
                        &election,
                        voter,
                        self.pow_difficulty,
                        unix_ms(),
                    )
                    .is_err()
                    {
                        return err(ErrorCode::ChallengeFailed);
                    }
                }
                if self.voted.lock().unwrap().insert(voter.0) {
                    json(202, serde_json::json!({"status": "accepted"}))
                } else {
                    err(ErrorCode::AlreadyVoted)
                }
            }
            _ => err(ErrorCode::NotFound),
        }
    }
}

/// Serves HTTP/1.1 and h2c on a free port of 127.0.0.1 until the runtime ends.
async fn serve(server: Arc<Server>) -> SocketAddr {
    common::accept_each(move |stream, peer| {
        stream.set_nodelay(true).unwrap();
        server.peers.lock().unwrap().insert(peer.ip());
        let server = server.clone();
        async move {
            let svc = service_fn(move |req| {
                let server = server.clone();
                async move { Ok::<_, Infallible>(server.handle(req).await) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        }
    })
    .await
}

fn server(pow_difficulty: u8, delay: Duration, trivial: bool) -> Arc<Server> {
    Arc::new(Server {
        keys: TokenKeys::hs256(SECRET.as_bytes()).unwrap(),
        pow_key: PowKey::new(b"pow-key-for-the-generator-test!!"),
        pow_difficulty,
        delay,
        trivial,
        voted: Mutex::new(HashSet::new()),
        peers: Mutex::new(HashSet::new()),
    })
}

fn config(addr: SocketAddr, protocol: Protocol, rate: f64, duration: Duration) -> Config {
    Config {
        target: format!("http://{addr}").parse().unwrap(),
        election: "e1".into(),
        rate,
        duration,
        ramp: Ramp::None,
        voters: 100_000,
        voter_base: 1_000,
        dup_ratio: 0.2,
        invalid_ratio: 0.2,
        protocol,
        connections: 4,
        source_addrs: Vec::new(),
        options: None,
        token_key: SECRET.as_bytes().to_vec(),
        token_cache: 4_096,
        max_in_flight: 10_000,
        timeout: Duration::from_secs(5),
        seed: 9,
        progress: false,
        lookups: false,
    }
}

fn kind(r: &LoadReport, kind: &str) -> BTreeMap<String, u64> {
    r.by_kind.get(kind).cloned().unwrap_or_default()
}

/// The counts add up, each malformed kind got exactly its 4xx, first votes got 202 and repeats
/// 409 (but for rare races where a repeat overtakes its voter's first vote on another
/// connection), and the report has docs/design.md §4.1's shape.
fn check_mixed_run(r: &LoadReport, server: &Server, planned: u64) {
    assert_eq!(r.planned, planned, "{r:#?}");
    assert_eq!(r.dropped, 0, "{r:#?}");
    assert_eq!(r.report.sent, planned, "{r:#?}");
    assert!(r.errors.is_empty(), "{r:#?}");
    let answered: u64 = r.report.by_status.values().sum();
    assert_eq!(answered, planned, "{r:#?}");
    let per_kind: u64 = r.by_kind.values().flat_map(|m| m.values()).sum();
    assert_eq!(per_kind, planned);
    for (name, status) in [
        ("bad_json", "400"),
        ("unknown_option", "422"),
        ("missing_token", "401"),
        ("oversize", "413"),
    ] {
        let m = kind(r, name);
        assert_eq!(m.keys().collect::<Vec<_>>(), [status], "{name}: {m:?}");
    }
    let fresh = kind(r, "fresh");
    let dup = kind(r, "dup");
    let n_fresh: u64 = fresh.values().sum();
    let n_dup: u64 = dup.values().sum();
    let n_invalid = planned - n_fresh - n_dup;
    // 20 % ± 4 % each.
    for n in [n_dup, n_invalid] {
        assert!((n as f64 / planned as f64 - 0.2).abs() < 0.04, "{r:#?}");
    }
    assert!(r.unexpected <= planned / 100, "{r:#?}");
    assert_eq!(
        r.report.by_status["202"],
        server.voted.lock().unwrap().len() as u64
    );
    assert_eq!(
        r.report.by_status["202"] + r.report.by_status["409"],
        n_fresh + n_dup
    );
    assert!(r.report.achieved_rate > 0.0);
    assert!(r.report.latency_ms.p50 > 0.0 && r.report.latency_ms.p50 <= r.report.latency_ms.max);

    let v = serde_json::to_value(r).unwrap();
    for key in ["sent", "achieved_rate", "by_status", "latency_ms"] {
        assert!(v.get(key).is_some(), "{key} in {v}");
    }
    for key in ["p50", "p90", "p99", "p999", "max"] {
        assert!(v["latency_ms"].get(key).is_some(), "{key}");
    }
    assert!(v["by_status"]["202"].as_u64().unwrap() > 0);
    let back: LoadReport = serde_json::from_value(v).unwrap();
    assert_eq!(&back, r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_mixed_run_against_an_in_process_server() {
    let server = server(0, Duration::ZERO, false);
    let addr = serve(server.clone()).await;
    let r = run(config(addr, Protocol::H1, 2_000.0, Duration::from_secs(1)))
        .await
        .unwrap();
    assert_eq!(r.protocol, "h1");
    check_mixed_run(&r, &server, 2_000);
    // The schedule really was open loop at the offered rate.
    assert!(r.elapsed_s >= 0.99 && r.elapsed_s < 3.0, "{}", r.elapsed_s);
    assert!((r.offered_rate - 2_000.0).abs() < 1.0);
    println!("{}", r.summary());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_spread_over_the_source_addresses() {
    for protocol in [Protocol::H1, Protocol::H2] {
        let server = server(0, Duration::ZERO, false);
        let addr = serve(server.clone()).await;
        let mut cfg = config(addr, protocol, 200.0, Duration::from_millis(500));
        cfg.connections = 6;
        cfg.source_addrs = (2..=4)
            .map(|i| std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, i)))
            .collect();
        let r = run(cfg.clone()).await.unwrap();
        assert_eq!(r.report.sent + r.dropped, r.planned);
        let peers = server.peers.lock().unwrap().clone();
        let want: HashSet<_> = cfg.source_addrs.iter().copied().collect();
        assert_eq!(peers, want, "{protocol:?}: connections came from {peers:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_mixed_run_with_proof_of_work() {
    let server = server(6, Duration::ZERO, false);
    let addr = serve(server.clone()).await;
    let mut cfg = config(addr, Protocol::H2, 500.0, Duration::from_secs(1));
    cfg.connections = 2;
    let r = run(cfg).await.unwrap();
    assert_eq!(r.protocol, "h2");
    assert_eq!(r.pow_difficulty, 6);
    check_mixed_run(&r, &server, 500);
    println!("{}", r.summary());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_server_fills_the_in_flight_bound_and_latency_counts_from_intended_time() {
    let server = server(0, Duration::from_millis(300), false);
    let addr = serve(server.clone()).await;
    let mut cfg = config(addr, Protocol::H1, 200.0, Duration::from_millis(500));
    cfg.dup_ratio = 0.0;
    cfg.invalid_ratio = 0.0;
    // One connection: requests queue behind each other, and that wait is latency.
    cfg.connections = 1;
    cfg.max_in_flight = 5;
    cfg.ramp = "tv:250ms,0s,250ms".parse().unwrap();
    let r = run(cfg).await.unwrap();
    assert_eq!(r.planned, 50, "{r:#?}");
    assert_eq!(r.report.sent + r.dropped, r.planned);
    assert!(r.dropped > 30, "{r:#?}");
    assert_eq!(r.report.by_status.get("202"), Some(&r.report.sent));
    // The 5th queued request waited for 4 before it: at least 5 × 300 ms from its intent.
    assert!(r.report.latency_ms.max >= 1_200.0, "{r:#?}");
    assert!(r.report.latency_ms.p50 >= 300.0, "{r:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_target_and_unknown_election_are_errors() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let e = run(config(addr, Protocol::H1, 10.0, Duration::from_millis(100)))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("cannot connect"), "{e}");

    let addr = serve(server(0, Duration::ZERO, false)).await;
    let mut cfg = config(addr, Protocol::H2, 10.0, Duration::from_millis(100));
    cfg.election = "nope".into();
    let e = run(cfg).await.unwrap_err();
    assert!(e.to_string().contains("404"), "{e}");
}

/// CPU seconds (user + system) of this process's `tokio-rt-worker` threads (Linux).
fn worker_cpu_s() -> f64 {
    let mut ticks = 0u64;
    for t in std::fs::read_dir("/proc/self/task").unwrap() {
        let dir = t.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if !comm.starts_with("tokio-rt-worker") {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).unwrap_or_default();
        // Fields after the parenthesised name: state is field 3, utime 14, stime 15.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split(' ').collect();
        ticks += f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    }
    ticks as f64 / 100.0
}

/// How fast the generator drives a trivial server, one generator thread (the server runs on
/// its own thread): prints the run and the requests per CPU-second of the generator's worker.
/// `RATE=40000 VOTERS=10000000 cargo test --release -p votes-perf --test generator -- --ignored --nocapture`
#[test]
#[ignore = "a measurement, not a check"]
fn generator_throughput_on_one_thread() {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            tx.send(serve(server(0, Duration::ZERO, true)).await)
                .unwrap();
            std::future::pending::<()>().await;
        });
    });
    let addr = rx.recv().unwrap();
    let rate: f64 = std::env::var("RATE")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(40_000.0);
    for (protocol, connections) in [(Protocol::H1, 64), (Protocol::H2, 4)] {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let mut cfg = config(addr, protocol, rate, Duration::from_secs(5));
        cfg.connections = connections;
        cfg.dup_ratio = 0.0;
        cfg.invalid_ratio = 0.0;
        cfg.voters = std::env::var("VOTERS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10_000_000);
        cfg.token_cache = 1 << 20;
        let r = rt
            .block_on(async { tokio::spawn(run(cfg)).await })
            .unwrap()
            .unwrap();
        let cpu_s = worker_cpu_s();
        println!("{}", r.summary());
        println!(
            "  generator worker CPU {cpu_s:.2}s for {} requests: {:.0} requests per CPU-second\n",
            r.report.sent,
            r.report.sent as f64 / cpu_s
        );
    }
}

#[test]
#[ignore = "a measurement, not a check"]
fn token_mint_cost() {
    let t = votes_perf::tokens::Tokens::new(SECRET.as_bytes(), 0, 0, 1_000, 3_600).unwrap();
    let n = 200_000u64;
    let start = std::time::Instant::now();
    let mut len = 0;
    for v in 0..n {
        len += t.bearer(v).len();
    }
    let el = start.elapsed();
    println!(
        "{:.2} µs per token, {} bytes avg",
        el.as_secs_f64() * 1e6 / n as f64,
        len / n as usize
    );
}
