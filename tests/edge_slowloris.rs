//! Slowloris (issue #7): 5,000 connections that send nothing, or trickle a request head one
//! byte a second, must not stop honest voters, and `votes serve` must close each of them by its
//! header-read timeout (`HttpLimits::header_read_timeout`, 10 s from accept; `votes serve` has no
//! flag to shorten it, so the test waits it out).
//!
//! The held connections come from 127.0.0.2 to 127.0.0.9 (a port range per source address), half
//! of them silent, a quarter trickling an HTTP/1.1 head that never ends and a quarter trickling
//! the h2c preface (the server's protocol sniff) without its last byte. While all 5,000 are
//! open, 200 distinct voters (half h2c, half HTTP/1.1, new connections from 127.0.0.1) must
//! each get `202` and `/readyz` must answer `200`; then every held connection must be closed by
//! the server (EOF or reset) no sooner than the timeout and within a generous bound after it.
//! Loopback only; every phase is bounded, the whole test takes about 30 s.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::serve::{Serve, TestClient, open_election};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Connections held open by the attacker.
const HELD: usize = 5_000;
/// Source addresses 127.0.0.2 ..= 127.0.0.(1 + SOURCES).
const SOURCES: usize = 8;
/// Connections being set up at once (the listen backlog is 1,024 per core).
const CONNECTING: usize = 256;
/// Honest voters that must get through while the connections are held.
const HONEST: u64 = 200;
/// `HttpLimits::default().header_read_timeout`, which `votes serve` uses.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A trickling connection sends one byte this often.
const TRICKLE_EVERY: Duration = Duration::from_secs(1);
/// Descriptors the test needs beyond the held connections (honest clients, the runtime, std).
const FD_MARGIN: u64 = 1_024;

/// An HTTP/1.1 head whose blank line never comes (the test never sends all of it anyway).
const H1_HEAD: &[u8] = b"POST /v1/elections/slowloris/votes HTTP/1.1\r\nHost: votes\r\n\
Content-Type: application/json\r\nAuthorization: Bearer eyJhbGciOiJIUzI1NiJ9";
/// The h2 client preface (RFC 9113 §3.4) without its last byte: the sniff never decides.
const H2_PREFACE_BUT_LAST: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    /// Connects and sends nothing.
    Silent,
    /// Trickles [`H1_HEAD`].
    SlowH1,
    /// Trickles [`H2_PREFACE_BUT_LAST`].
    SlowH2,
}

impl Held {
    /// Half silent, a quarter of each slow kind; interleaved so every source and core gets all.
    fn of(i: usize) -> Held {
        match i % 4 {
            0 | 2 => Held::Silent,
            1 => Held::SlowH1,
            _ => Held::SlowH2,
        }
    }

    fn script(self) -> &'static [u8] {
        match self {
            Held::Silent => b"",
            Held::SlowH1 => H1_HEAD,
            Held::SlowH2 => H2_PREFACE_BUT_LAST,
        }
    }
}

/// How and when the server ended a held connection.
#[derive(Debug, Clone)]
struct Closed {
    kind: Held,
    /// From the end of `connect` (the server accepted later, so its deadline is later still).
    after: Duration,
    /// `eof`, `reset` (ECONNRESET on read) or `write failed` (the trickle hit the closed socket).
    how: String,
    /// Bytes the server sent before closing (it should send none).
    received: usize,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (children inherit it) and fails clearly
/// when even the hard limit cannot hold the test's connections.
fn raise_nofile(needed: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    assert_eq!(rc, 0, "getrlimit: {}", std::io::Error::last_os_error());
    if lim.rlim_cur < lim.rlim_max {
        // An unlimited hard limit cannot be the soft one for descriptors: stop at fs.nr_open.
        let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(1 << 20);
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max.min(nr_open),
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = raised.rlim_cur;
        }
    }
    assert!(
        lim.rlim_cur >= needed,
        "RLIMIT_NOFILE is {} (hard {}): this test holds {HELD} connections and needs at least \
         {needed} descriptors; raise the hard limit (`ulimit -Hn`, systemd `LimitNOFILE=`, \
         /etc/security/limits.conf) and run it again",
        lim.rlim_cur,
        lim.rlim_max,
    );
    lim.rlim_cur
}

/// A connection to `to` from `source`, its port chosen at connect time
/// (`IP_BIND_ADDRESS_NO_PORT`), so each source address has the whole ephemeral range.
async fn connect_from(source: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    // Failure only costs port range.
    let _ = votes_perf::sys::bind_address_no_port(&socket);
    socket.bind(SocketAddr::new(source.into(), 0))?;
    socket.connect(to).await
}

/// Holds one connection as its kind does until the server ends it.
async fn hold(
    mut stream: TcpStream,
    kind: Held,
    connected: Instant,
    first_byte_in: Duration,
    closed: Arc<AtomicUsize>,
) -> Closed {
    let script = kind.script();
    let mut sent = 0;
    let mut received = 0;
    let mut buf = [0u8; 1024];
    let mut next = tokio::time::Instant::from_std(connected) + first_byte_in;
    let how = loop {
        let trickling = sent < script.len();
        tokio::select! {
            r = stream.read(&mut buf) => match r {
                Ok(0) => break "eof".to_string(),
                Ok(n) => received += n,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break "reset".into(),
                Err(e) => break format!("read error: {e}"),
            },
            _ = tokio::time::sleep_until(next), if trickling => {
                if let Err(e) = stream.write_all(&script[sent..=sent]).await {
                    break format!("write failed ({})", e.kind());
                }
                sent += 1;
                next += TRICKLE_EVERY;
            }
        }
    };
    let after = connected.elapsed();
    closed.fetch_add(1, Ordering::Relaxed);
    Closed {
        kind,
        after,
        how,
        received,
    }
}

/// Votes `voter`'s first vote and checks its `202` and receipt.
async fn honest_vote(client: TestClient, base: String, voter: u64) -> Result<(), String> {
    let option = if voter.is_multiple_of(2) { "yes" } else { "no" };
    match client.vote(&base, "slowloris", voter, option).await {
        Ok((202, body))
            if body["status"] == "accepted"
                && body["receipt"].as_str().is_some_and(|r| r.len() == 64) =>
        {
            Ok(())
        }
        Ok((status, body)) => Err(format!("voter {voter}: {status} {body}")),
        Err(e) => Err(format!("voter {voter}: transport error {e}")),
    }
}

async fn readyz(serve_url: &str) -> Result<u16, String> {
    // A fresh client: a new connection, like a load balancer's probe.
    tokio::time::timeout(
        Duration::from_secs(10),
        TestClient::http1().get(&format!("{serve_url}/readyz")),
    )
    .await
    .map_err(|_| "no answer within 10 s".to_string())?
    .map(|(status, _)| status)
}

#[test]
fn five_thousand_slow_connections_do_not_stop_honest_voters_and_are_closed_by_the_header_timeout() {
    let test_start = Instant::now();
    let limit = raise_nofile(HELD as u64 + FD_MARGIN);
    // Started after the raise: the serve process inherits the limit (and raises its own).
    let serve = Serve::init_and_start("slowloris", 4, 2);
    let base = format!("http://{}", serve.http);
    let target = serve.http;
    let rt = common::two_worker_runtime();
    rt.block_on(async {
        let admin = TestClient::http1();
        open_election(&admin, &serve, "slowloris", &["yes", "no"], 0).await;

        // 1. The attack: HELD connections from 8 source addresses, CONNECTING at a time.
        let t_connect = Instant::now();
        let closed = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Semaphore::new(CONNECTING));
        let mut connecting = tokio::task::JoinSet::new();
        for i in 0..HELD {
            let gate = gate.clone();
            connecting.spawn(async move {
                let _permit = gate.acquire_owned().await.unwrap();
                let source = Ipv4Addr::new(127, 0, 0, 2 + (i % SOURCES) as u8);
                let stream = connect_from(source, target)
                    .await
                    .map_err(|e| format!("connection {i} from {source}: {e}"))?;
                Ok::<_, String>((i, stream, Instant::now()))
            });
        }
        let mut streams = Vec::with_capacity(HELD);
        let connected = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(r) = connecting.join_next().await {
                streams.push(r.unwrap()?);
            }
            Ok::<_, String>(())
        })
        .await;
        match connected {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("opening the held connections failed: {e}"),
            Err(_) => panic!(
                "only {} of {HELD} connections opened within 20 s",
                streams.len()
            ),
        }
        let last_connected = streams.iter().map(|s| s.2).max().unwrap();
        let connect_took = t_connect.elapsed();
        let mut holders = tokio::task::JoinSet::new();
        for (i, stream, at) in streams {
            let kind = Held::of(i);
            // Spread the trickles over the second rather than writing 2,500 bytes at once.
            let first = Duration::from_millis((i as u64 * 7919) % 1000);
            holders.spawn(hold(stream, kind, at, first, closed.clone()));
        }
        assert_eq!(
            closed.load(Ordering::Relaxed),
            0,
            "the server closed held connections before the honest voters started ({connect_took:?} \
             after the first connect)"
        );

        // 2. Honest voters and the readiness probe, while all of them are held.
        let t_honest = Instant::now();
        assert_eq!(readyz(&base).await, Ok(200), "/readyz under the attack");
        let h1 = TestClient::http1();
        let h2 = TestClient::h2c();
        let mut voters = tokio::task::JoinSet::new();
        for voter in 1..=HONEST {
            let client = if voter.is_multiple_of(2) {
                h2.clone()
            } else {
                h1.clone()
            };
            voters.spawn(honest_vote(client, base.clone(), voter));
        }
        let mut failures = Vec::new();
        let honest = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(r) = voters.join_next().await {
                if let Err(e) = r.unwrap() {
                    failures.push(e);
                }
            }
        })
        .await;
        assert!(
            honest.is_ok(),
            "honest voters did not all get an answer within 30 s under the attack \
             ({} failed so far: {failures:?})",
            failures.len()
        );
        assert!(
            failures.is_empty(),
            "{} of {HONEST} honest voters did not get 202 under the attack: {:?}",
            failures.len(),
            &failures[..failures.len().min(10)]
        );
        assert_eq!(readyz(&base).await, Ok(200), "/readyz under the attack");
        let honest_took = t_honest.elapsed();
        let still_held = HELD - closed.load(Ordering::Relaxed);
        eprintln!(
            "slowloris: {HELD} connections opened in {connect_took:?}; {HONEST} honest votes \
             202 in {honest_took:?} with {still_held} of them still held"
        );

        // 3. The server ends every held connection, by its header-read timeout.
        let bound = HEADER_READ_TIMEOUT + Duration::from_secs(15);
        let deadline = last_connected + bound;
        let mut ends: Vec<Closed> = Vec::with_capacity(HELD);
        let waited =
            tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), async {
                while let Some(r) = holders.join_next().await {
                    ends.push(r.unwrap());
                }
            })
            .await;
        assert!(
            waited.is_ok(),
            "{} of {HELD} slow connections were still open {bound:?} after they were opened: \
             the server does not enforce its {HEADER_READ_TIMEOUT:?} header-read timeout on them",
            HELD - ends.len()
        );
        let mut hows = std::collections::BTreeMap::<(String, String), usize>::new();
        for c in &ends {
            *hows
                .entry((format!("{:?}", c.kind), c.how.clone()))
                .or_default() += 1;
        }
        let earliest = ends.iter().min_by_key(|c| c.after).unwrap();
        let latest = ends.iter().max_by_key(|c| c.after).unwrap();
        eprintln!(
            "slowloris: closed by the server after {:?} .. {:?} (from connect); {hows:?}",
            earliest.after, latest.after
        );
        // The server's deadline runs from its accept, which follows our connect: a close well
        // before the timeout would be something else (e.g. an accept-time refusal).
        assert!(
            earliest.after >= HEADER_READ_TIMEOUT - Duration::from_millis(500),
            "a {:?} connection was closed {:?} after connect, before the header-read timeout \
             ({HEADER_READ_TIMEOUT:?}): {earliest:?}",
            earliest.kind,
            earliest.after
        );
        for c in &ends {
            assert!(
                c.how == "eof" || c.how == "reset" || c.how.starts_with("write failed"),
                "a held connection ended unexpectedly: {c:?}"
            );
        }
        let answered: Vec<&Closed> = ends.iter().filter(|c| c.received > 0).collect();
        if !answered.is_empty() {
            eprintln!(
                "slowloris: note: the server wrote to {} held connection(s) before closing, e.g. \
                 {:?}",
                answered.len(),
                answered[0]
            );
        }

        // 4. Still alive and serving.
        assert_eq!(readyz(&base).await, Ok(200), "/readyz after the attack");
        assert_eq!(
            honest_vote(TestClient::http1(), base.clone(), HONEST + 1).await,
            Ok(()),
            "a vote after the attack"
        );
    });
    eprintln!(
        "slowloris: whole test {:?} (RLIMIT_NOFILE {limit})",
        test_start.elapsed()
    );
}

/// `HttpLimits::default().response_stall_timeout`: a response that yields nothing for this long
/// ends its connection.
const RESPONSE_STALL: Duration = Duration::from_secs(30);
/// Slack for the watchdog's timer and a loaded machine.
const SLACK: Duration = Duration::from_secs(15);

/// Waits until the server ends `stream` (EOF or reset), reading whatever it sends, for at most
/// `within`; the time it took, or `None` if the connection was still open.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    let mut buf = vec![0u8; 1 << 16];
    let read_all = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return t0.elapsed(),
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(within, read_all).await.ok()
}

/// Slow read over h2c: a client that advertises `SETTINGS_INITIAL_WINDOW_SIZE = 0` and never
/// sends a WINDOW_UPDATE asks for `GET /v1/elections`. The server can send the response head but
/// no DATA, so the request stays in flight. Without a bound such connections cost the attacker
/// one socket and no bandwidth each, and enough of them fill `max_connections_per_core`; the
/// response-stall bound closes the connection.
#[test]
fn a_slow_reader_over_h2_is_closed_after_the_response_stall_timeout() {
    let serve = Serve::init_and_start("slowread-h2", 1, 1);
    let rt = common::runtime();
    rt.block_on(async {
        let mut s = TcpStream::connect(serve.http).await.unwrap();
        let frame = |typ: u8, flags: u8, stream: u32, payload: &[u8]| {
            let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
            f.extend_from_slice(&[typ, flags]);
            f.extend_from_slice(&stream.to_be_bytes());
            f.extend_from_slice(payload);
            f
        };
        // HPACK: :method GET (static 2), :scheme http (static 6), then :path and :authority as
        // literals without indexing, with indexed names (static 4 and 1), no Huffman coding.
        let authority = serve.http.to_string();
        let mut block = vec![0x82, 0x86, 0x04, 13];
        block.extend_from_slice(b"/v1/elections");
        block.extend_from_slice(&[0x01, authority.len() as u8]);
        block.extend_from_slice(authority.as_bytes());
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend(frame(0x4, 0, 0, &[0, 0x4, 0, 0, 0, 0])); // INITIAL_WINDOW_SIZE = 0
        hello.extend(frame(0x4, 0x1, 0, &[])); // ACK of the server's SETTINGS, sent ahead
        hello.extend(frame(0x1, 0x5, 1, &block)); // HEADERS, END_STREAM | END_HEADERS
        s.write_all(&hello).await.unwrap();
        let bound = RESPONSE_STALL + SLACK;
        let closed = closed_within(&mut s, bound).await;
        let Some(after) = closed else {
            panic!(
                "an h2 connection whose response cannot be sent (window 0) was still open after \
                 {bound:?}"
            );
        };
        assert!(
            after >= RESPONSE_STALL - Duration::from_secs(1),
            "closed after {after:?}, before the stall bound: a waiting response is not a stall"
        );
        let stalled = metric_sum(&serve, "votes_http_stalled_closes_total").await;
        assert!(stalled >= 1, "/metrics counts no stalled close ({stalled})");
    });
}

/// Slow read over HTTP/1.1: a client pipelines 400 requests for a 23 KB static file and reads
/// nothing. Once the socket buffers are full the server's write of a response blocks and the
/// request stays in flight; the response-stall bound closes the connection (as over h2 above).
#[test]
fn a_slow_reader_over_http1_is_closed_after_the_response_stall_timeout() {
    let serve = Serve::init_and_start("slowread-h1", 1, 1);
    let rt = common::runtime();
    rt.block_on(async {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut s = socket.connect(serve.http).await.unwrap();
        let req = format!(
            "GET /static/voter.js HTTP/1.1\r\nHost: {}\r\n\r\n",
            serve.http
        );
        s.write_all(req.repeat(400).as_bytes()).await.unwrap();
        // Read nothing; watch the server's counter instead (reading would end the stall).
        let t0 = Instant::now();
        let bound = RESPONSE_STALL + SLACK;
        let mut stalled = 0;
        while stalled == 0 && t0.elapsed() < bound {
            tokio::time::sleep(Duration::from_secs(1)).await;
            stalled = metric_now(&serve, "votes_http_stalled_closes_total").await;
        }
        let after = t0.elapsed();
        eprintln!("slow reader over HTTP/1.1: closed as stalled after {after:?}");
        assert!(
            stalled >= 1,
            "an HTTP/1.1 connection whose client reads nothing was not closed within {bound:?}"
        );
        // Its FIN or reset comes after whatever the server had sent.
        let closed = closed_within(&mut s, Duration::from_secs(10)).await;
        assert!(
            closed.is_some(),
            "/metrics counts a stalled close but the socket is open"
        );
    });
}

/// One source address may hold `--max-conns-per-addr` connections per core; beyond that a new
/// connection from it is closed at accept, while other addresses are served as before.
#[test]
fn one_address_cannot_hold_more_than_its_share_of_connections() {
    const CAP: usize = 40;
    let prefix = common::unique_prefix("addrcap");
    common::init_with_partitions(&prefix, 1);
    let serve = Serve::start_env(
        &prefix,
        1,
        false,
        &[("VOTES_MAX_CONNS_PER_ADDR", &CAP.to_string())],
    );
    let rt = common::runtime();
    rt.block_on(async {
        let greedy = Ipv4Addr::new(127, 0, 0, 20);
        let mut held = Vec::new();
        for i in 0..CAP {
            let s = connect_from(greedy, serve.http)
                .await
                .unwrap_or_else(|e| panic!("connection {i} from {greedy}: {e}"));
            held.push(s);
        }
        // The server counts a connection when it accepts it: make sure all of them are in.
        let mut first = held.remove(0);
        let reply = http1_get(&mut first, "/healthz").await;
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        held.insert(0, first);
        for i in 0..5 {
            let mut extra = connect_from(greedy, serve.http).await.unwrap();
            let closed = closed_within(&mut extra, Duration::from_secs(5)).await;
            assert!(
                closed.is_some(),
                "connection {} from {greedy} beyond the cap of {CAP} was not closed",
                CAP + i
            );
        }
        let mut other = connect_from(Ipv4Addr::new(127, 0, 0, 21), serve.http)
            .await
            .unwrap();
        let reply = http1_get(&mut other, "/healthz").await;
        assert!(
            reply.starts_with("HTTP/1.1 200"),
            "another address was refused while {greedy} held its share: {reply}"
        );
        let rejected = metric_sum(&serve, "votes_http_rejected_over_addr_cap_total").await;
        assert!(
            rejected >= 5,
            "/metrics counts {rejected} rejections over the address cap"
        );
        drop(held);
    });
}

/// One HTTP/1.1 request on an open connection; the head of the answer (enough for its status).
async fn http1_get(s: &mut TcpStream, path: &str) -> String {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: votes\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("an answer within 5 s")
        .unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// The sum over cores of one `/metrics` counter, waiting up to 6 s for it to be positive (cores
/// publish once a second).
async fn metric_sum(serve: &Serve, name: &str) -> u64 {
    let mut last = 0;
    for _ in 0..30 {
        last = metric_now(serve, name).await;
        if last > 0 {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    last
}

/// The sum over cores of one `/metrics` counter, as published now.
async fn metric_now(serve: &Serve, name: &str) -> u64 {
    common::serve::metric(serve, name).await.values().sum()
}

/// Subscribers that fill the public listener's connection cap must not lock the operator out:
/// the admin listener has a budget of its own. A node capped at 500 public connections per
/// core takes results streams until it refuses one; with every slot held, an admin close
/// still answers 200 and `/admin/v1/stats` still answers; once the holders leave, voters are
/// served again.
#[test]
fn subscribers_filling_the_public_cap_do_not_lock_the_operator_out() {
    const CAP: usize = 500;
    let serve = Serve::init_and_start_env(
        "admin-budget",
        1,
        1,
        &[("VOTES_MAX_CONNS_PER_CORE", &CAP.to_string())],
    );
    common::runtime().block_on(async {
        let client = TestClient::http1();
        open_election(&client, &serve, "held", &["a", "b"], 0).await;
        let mut held = Vec::new();
        // The test's own clients may keep a public connection or two open: take slots until
        // the node refuses one, and no more than the cap plus a margin.
        while held.len() < CAP + 50 {
            match hold_results_stream(serve.http, "/v1/elections/held/results/stream").await {
                Some(s) => held.push(s),
                None => break,
            }
        }
        assert!(
            held.len() >= CAP - 10 && held.len() <= CAP,
            "{} streams held with a cap of {CAP}",
            held.len()
        );
        assert!(
            hold_results_stream(serve.http, "/v1/elections/held/results/stream")
                .await
                .is_none(),
            "the public cap is full"
        );
        // A new client: a new connection to the admin listener, accepted with the public
        // table full (the first client's pooled connection predates the holders).
        let operator = TestClient::http1();
        let (status, body) = operator
            .admin_post(&serve, "/admin/v1/elections/held/close")
            .await;
        assert_eq!(
            status, 200,
            "the operator's close with the public cap full: {body}"
        );
        let (status, stats) = TestClient::http1()
            .admin_get(&serve, "/admin/v1/stats")
            .await;
        assert_eq!(status, 200, "{stats}");
        drop(held);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok((200, _)) = TestClient::http1().get(&serve.url("/v1/elections")).await {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "voters are not served after the holders left"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

/// Opens a results stream over a raw HTTP/1.1 connection and returns it once its first event
/// arrived; `None` when the node closed it instead (over a cap).
async fn hold_results_stream(addr: SocketAddr, path: &str) -> Option<TcpStream> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(12).any(|w| w == b"event: tally") {
        let n = tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        got.extend_from_slice(&buf[..n]);
    }
    Some(s)
}
