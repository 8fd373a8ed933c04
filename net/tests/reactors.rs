//! Two reactors, a test app, and a hyper client on tokio over HTTP/1.1 and h2c.
//!
//! Timing is only ever bounded generously (machines are noisy); the "blocking call does not
//! stall the core" check is made by observation (the core answers while the call is in
//! flight), not by latency.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::{client_runtime, h1_over, h2_over, one_at_a_time, read, two_cpus, wait_closed};
use votes_net::{
    App, AppRequest, AppResponse, Blocking, BoxBody, CoreContext, HttpLimits, ListenerKind,
    ListenerSpec, Mesh, ReactorConfig, Reactors, ReplyTx, SendError, read_body_limited,
    reply_channel, start_reactors,
};

enum Msg {
    Route { body: Bytes, reply: ReplyTx<String> },
}

struct TestApp {
    core: usize,
    mesh: Mesh<Msg>,
    blocking: Blocking,
}

fn text(status: StatusCode, s: String) -> Response<BoxBody> {
    let mut r = Response::new(BoxBody::from(s));
    *r.status_mut() = status;
    r
}

impl App for TestApp {
    fn handle(&self, kind: ListenerKind, _peer: SocketAddr, req: AppRequest) -> AppResponse {
        let core = self.core;
        let mesh = self.mesh.clone();
        let blocking = self.blocking.clone();
        Box::pin(async move {
            let path = req.uri().path().to_string();
            match (req.method().as_str(), path.as_str()) {
                ("GET", "/core") => {
                    // Also tells how many blocking calls this core has in flight right now.
                    text(
                        StatusCode::OK,
                        format!("{core} {} {:?}", blocking.in_flight(), kind),
                    )
                }
                ("GET", "/blocking") => match blocking
                    .run(|| std::thread::sleep(Duration::from_millis(50)))
                    .await
                {
                    Ok(()) => text(StatusCode::OK, "slept".into()),
                    Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
                },
                ("POST", p) if p.starts_with("/route/") => {
                    let Ok(n) = p["/route/".len()..].parse::<usize>() else {
                        return text(StatusCode::NOT_FOUND, "bad n".into());
                    };
                    let body = match read_body_limited(req.into_body(), 1024).await {
                        Ok(b) => b,
                        Err(e) => return text(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()),
                    };
                    let (tx, rx) = reply_channel();
                    match mesh.try_send(n % mesh.cores(), Msg::Route { body, reply: tx }) {
                        Ok(()) => {}
                        Err(SendError::Full(_)) => {
                            return text(StatusCode::SERVICE_UNAVAILABLE, "full".into());
                        }
                        Err(e) => return text(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
                    }
                    match rx.await {
                        Ok(answer) => text(StatusCode::OK, answer),
                        Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
                    }
                }
                _ => text(StatusCode::NOT_FOUND, "no".into()),
            }
        })
    }
}

fn make_app(mut ctx: CoreContext<Msg>) -> TestApp {
    let core = ctx.core_index();
    let mut inbox = ctx.take_inbox().expect("inbox taken once");
    glommio::spawn_local(async move {
        while let Some((from, Msg::Route { body, reply })) = inbox.recv().await {
            let _ = reply.send(format!(
                "core{core} from{from}: {}",
                String::from_utf8_lossy(&body)
            ));
        }
    })
    .detach();
    TestApp {
        core,
        mesh: ctx.mesh().clone(),
        blocking: ctx.blocking().clone(),
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start(limits: HttpLimits, admin: bool) -> (Reactors, SocketAddr) {
    let mut cfg = ReactorConfig::new(two_cpus());
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    cfg.listeners
        .push(ListenerSpec::plain(addr, ListenerKind::Public));
    if admin {
        cfg.listeners.push(ListenerSpec::plain(
            "127.0.0.1:0".parse().unwrap(),
            ListenerKind::Admin,
        ));
    }
    cfg.http = limits;
    cfg.shutdown_grace = Duration::from_secs(5);
    let r = start_reactors(cfg, make_app).expect("reactors start");
    assert_eq!(r.local_addr(ListenerKind::Public), Some(addr));
    (r, addr)
}

/// Runs `test` against the test app on two cores under `limits` (with an admin listener when
/// `admin`), one test at a time, then shuts the reactors down and joins them. `test` gets the
/// public listener's address and the admin listener's.
fn serving<F: Future<Output = ()>>(
    limits: HttpLimits,
    admin: bool,
    test: impl FnOnce(SocketAddr, Option<SocketAddr>) -> F,
) {
    let _g = one_at_a_time();
    let (reactors, addr) = start(limits, admin);
    let admin = reactors.local_addr(ListenerKind::Admin);
    client_runtime().block_on(test(addr, admin));
    reactors.shutdown();
    reactors.join().unwrap();
}

type H1 = hyper::client::conn::http1::SendRequest<Full<Bytes>>;
type H2 = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

async fn h1(addr: SocketAddr) -> H1 {
    h1_over(tokio::net::TcpStream::connect(addr).await.unwrap()).await
}

async fn h2(addr: SocketAddr) -> H2 {
    h2_over(tokio::net::TcpStream::connect(addr).await.unwrap()).await
}

/// Eight `/blocking` calls (50 ms each) at once on one h2 connection, so on one core; how long
/// until every one was answered `200`.
async fn eight_blocking_calls(tx: &H2) -> Duration {
    let t0 = Instant::now();
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let mut b = tx.clone();
            tokio::spawn(async move { get_h2(&mut b, req("GET", "/blocking", "")).await })
        })
        .collect();
    for c in calls {
        assert_eq!(c.await.unwrap().0, StatusCode::OK);
    }
    t0.elapsed()
}

fn req(method: &str, path: &str, body: &'static str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(format!("http://test{path}"))
        .header("host", "test")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

async fn get_h1(tx: &mut H1, r: Request<Full<Bytes>>) -> (StatusCode, String) {
    tx.ready().await.unwrap();
    read(tx.send_request(r).await.unwrap()).await
}

async fn get_h2(tx: &mut H2, r: Request<Full<Bytes>>) -> (StatusCode, String) {
    tx.ready().await.unwrap();
    read(tx.send_request(r).await.unwrap()).await
}

fn core_of(body: &str) -> usize {
    body.split(' ').next().unwrap().parse().unwrap()
}

/// The one core all of a connection's requests reached: a connection stays on the core that
/// accepted it.
fn the_core_of_a_connection(cores: &[usize]) -> usize {
    assert!(cores.iter().all(|&c| c == cores[0]), "{cores:?}");
    cores[0]
}

/// Asserts that the connections of `tasks` (each returning the one core its requests reached)
/// landed on both cores: SO_REUSEPORT spreads connections, not requests.
async fn assert_spread_over_both_cores(tasks: Vec<tokio::task::JoinHandle<usize>>, what: &str) {
    let mut per_core: HashMap<usize, usize> = HashMap::new();
    for t in tasks {
        *per_core.entry(t.await.unwrap()).or_default() += 1;
    }
    assert_eq!(per_core.len(), 2, "{what} over both cores: {per_core:?}");
}

#[test]
fn many_concurrent_requests_reach_both_cores_over_h1_and_h2() {
    serving(HttpLimits::default(), true, |addr, admin| async move {
        let admin = admin.expect("an admin listener");
        // HTTP/1.1: 64 connections × 20 keep-alive requests, all at once.
        let mut tasks = Vec::new();
        for _ in 0..64 {
            tasks.push(tokio::spawn(async move {
                let mut tx = h1(addr).await;
                let mut seen = Vec::new();
                for _ in 0..20 {
                    let (st, body) = get_h1(&mut tx, req("GET", "/core", "")).await;
                    assert_eq!(st, StatusCode::OK);
                    assert!(body.ends_with("Public"), "{body}");
                    seen.push(core_of(&body));
                }
                the_core_of_a_connection(&seen)
            }));
        }
        assert_spread_over_both_cores(tasks, "SO_REUSEPORT spread 64 h1 connections").await;

        // h2c prior knowledge: 16 connections × 50 concurrent streams each.
        let mut tasks = Vec::new();
        for _ in 0..16 {
            tasks.push(tokio::spawn(async move {
                let tx = h2(addr).await;
                let mut streams = Vec::new();
                for _ in 0..50 {
                    let mut tx = tx.clone();
                    streams.push(tokio::spawn(async move {
                        get_h2(&mut tx, req("GET", "/core", "")).await
                    }));
                }
                let mut cores = Vec::new();
                for s in streams {
                    let (st, body) = s.await.unwrap();
                    assert_eq!(st, StatusCode::OK);
                    cores.push(core_of(&body));
                }
                the_core_of_a_connection(&cores)
            }));
        }
        assert_spread_over_both_cores(tasks, "16 h2 connections").await;

        // The admin listener exists on core 0 only.
        for _ in 0..10 {
            let mut tx = h1(admin).await;
            let (st, body) = get_h1(&mut tx, req("GET", "/core", "")).await;
            assert_eq!(st, StatusCode::OK);
            assert!(body.starts_with("0 ") && body.ends_with("Admin"), "{body}");
        }
    });
}

#[test]
fn routing_round_trips_through_the_mesh() {
    serving(HttpLimits::default(), false, |addr, _| async move {
        let mut tasks = Vec::new();
        for conn in 0..8 {
            tasks.push(tokio::spawn(async move {
                let mut tx1 = h1(addr).await;
                let mut tx2 = h2(addr).await;
                for n in 0..25usize {
                    let payload: &'static str = Box::leak(format!("p{conn}-{n}").into_boxed_str());
                    let path = format!("/route/{n}");
                    for (st, body) in [
                        get_h1(&mut tx1, req("POST", &path, payload)).await,
                        get_h2(&mut tx2, req("POST", &path, payload)).await,
                    ] {
                        assert_eq!(st, StatusCode::OK, "{body}");
                        let want_core = format!("core{} ", n % 2);
                        assert!(
                            body.starts_with(&want_core) && body.ends_with(payload),
                            "{body} for n={n}"
                        );
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        // Too large for the app's 1 KiB limit: 413, not a broken connection.
        let big: &'static str = Box::leak("x".repeat(4096).into_boxed_str());
        let mut tx = h1(addr).await;
        let (st, _) = get_h1(&mut tx, req("POST", "/route/1", big)).await;
        assert_eq!(st, StatusCode::PAYLOAD_TOO_LARGE);

        // A request head over max_header_bytes (16 KiB) is refused with 431 on HTTP/1.1.
        let mut raw = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "GET /core HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
            "y".repeat(20_000)
        );
        raw.write_all(head.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 256];
        let n = raw.read(&mut buf).await.unwrap();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 431"),
            "{}",
            String::from_utf8_lossy(&buf[..n])
        );

        // Eight blocking calls on one core, four pool threads: they overlap.
        let took = eight_blocking_calls(&h2(addr).await).await;
        eprintln!("8 blocking calls of 50 ms on one core took {took:?}");
    });
}

#[test]
fn blocking_calls_do_not_stall_their_core() {
    serving(HttpLimits::default(), false, |addr, _| async move {
        // One h2 connection: every stream is served by the same core.
        let tx = h2(addr).await;
        let mut observed = false;
        for _attempt in 0..5 {
            let mut b = tx.clone();
            let blocking =
                tokio::spawn(async move { get_h2(&mut b, req("GET", "/blocking", "")).await });
            let mut answered_during = 0;
            let mut c = tx.clone();
            while !blocking.is_finished() {
                let (st, body) = get_h2(&mut c, req("GET", "/core", "")).await;
                assert_eq!(st, StatusCode::OK);
                let in_flight: usize = body.split(' ').nth(1).unwrap().parse().unwrap();
                if in_flight >= 1 && !blocking.is_finished() {
                    answered_during += 1;
                }
            }
            let (st, body) = blocking.await.unwrap();
            assert_eq!((st, body.as_str()), (StatusCode::OK, "slept"));
            if answered_during >= 3 {
                observed = true;
                break;
            }
        }
        assert!(
            observed,
            "the core answered /core while its blocking call was in flight"
        );

        // Several blocking calls in flight on one core run side by side on the pool.
        let took = eight_blocking_calls(&tx).await;
        assert!(
            took < Duration::from_secs(5),
            "8 × 50 ms on 4 threads took {took:?}"
        );
    });
}

#[test]
fn header_and_idle_timeouts_close_connections() {
    let limits = HttpLimits {
        header_read_timeout: Duration::from_millis(800),
        idle_timeout: Duration::from_millis(1500),
        ..HttpLimits::default()
    };
    serving(limits, false, |addr, _| async move {
        // Silent connection: closed by the header timeout, not kept for the idle one.
        let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        let took = wait_closed(&mut silent, Duration::from_secs(10)).await;
        assert!(
            took >= Duration::from_millis(500),
            "closed too early: {took:?}"
        );

        // Slowloris on HTTP/1.1: a head dribbled byte by byte never completes.
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        let dribble = tokio::spawn(async move {
            slow.write_all(b"GET /core HTTP/1.1\r\n").await.unwrap();
            let t0 = Instant::now();
            for _ in 0..100 {
                if slow.write_all(b"X").await.is_err() {
                    return t0.elapsed();
                }
                let mut b = [0u8; 16];
                if let Ok(Ok(0) | Err(_)) =
                    tokio::time::timeout(Duration::from_millis(100), slow.read(&mut b)).await
                {
                    return t0.elapsed();
                }
            }
            panic!("slowloris connection still open after 10 s");
        });
        let took = dribble.await.unwrap();
        assert!(took < Duration::from_secs(8), "{took:?}");

        // h2c connection that sends the preface and then nothing: also a fresh connection.
        let mut h2_silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        h2_silent
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        wait_closed(&mut h2_silent, Duration::from_secs(10)).await;

        // Idle keep-alive: a served connection is closed after the idle timeout.
        let mut kept = tokio::net::TcpStream::connect(addr).await.unwrap();
        kept.write_all(b"GET /core HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let n = kept.read(&mut buf).await.unwrap();
        assert!(
            std::str::from_utf8(&buf[..n])
                .unwrap()
                .starts_with("HTTP/1.1 200")
        );
        let took = wait_closed(&mut kept, Duration::from_secs(10)).await;
        assert!(
            took >= Duration::from_millis(1000),
            "idle close too early: {took:?}"
        );
    });
}

#[test]
fn connection_cap_closes_extra_connections() {
    let limits = HttpLimits {
        max_connections_per_core: 4,
        ..HttpLimits::default()
    };
    serving(limits, false, |addr, _| async move {
        let mut conns = Vec::new();
        for _ in 0..20 {
            conns.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        // Let both cores accept (and close) everything.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut ok = 0;
        for c in conns.iter_mut() {
            let _ = c.write_all(b"GET /core HTTP/1.1\r\nHost: t\r\n\r\n").await;
            let mut buf = [0u8; 512];
            match tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 && buf.starts_with(b"HTTP/1.1 200") => ok += 1,
                Ok(_) => {}
                Err(_) => panic!("a connection neither served nor closed"),
            }
        }
        // Each core keeps at most 4; at least one core got 4 of the 20.
        assert!((4..=8).contains(&ok), "{ok} connections served");
        drop(conns);
        // Closed connections free their slots: new ones are served again.
        tokio::time::sleep(Duration::from_millis(200)).await;
        for _ in 0..8 {
            let mut tx = h1(addr).await;
            assert_eq!(
                get_h1(&mut tx, req("GET", "/core", "")).await.0,
                StatusCode::OK
            );
        }
    });
}

#[test]
fn shutdown_lets_in_flight_requests_finish_and_stops_accepting() {
    let _g = one_at_a_time();
    let (reactors, addr) = start(HttpLimits::default(), false);
    let handle = reactors.shutdown_handle();
    client_runtime().block_on(async move {
        let mut tx = h2(addr).await;
        let mut b = tx.clone();
        let slow = tokio::spawn(async move { get_h2(&mut b, req("GET", "/blocking", "")).await });
        // Make sure the blocking call is admitted before shutting down.
        loop {
            let (_, body) = get_h2(&mut tx, req("GET", "/core", "")).await;
            if body.split(' ').nth(1) == Some("1") || slow.is_finished() {
                break;
            }
        }
        handle.trigger();
        let (st, body) = slow.await.unwrap();
        assert_eq!((st, body.as_str()), (StatusCode::OK, "slept"));
    });
    let t0 = Instant::now();
    reactors.join().unwrap();
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "listeners are closed after shutdown"
    );
}

#[test]
fn app_with_rc_state_and_a_panicking_handler() {
    // A !Send app (Rc state) is fine, and a panic in a handler becomes a 503, not a dead core.
    struct Panicky(Rc<()>);
    impl App for Panicky {
        fn handle(&self, _: ListenerKind, _: SocketAddr, req: AppRequest) -> AppResponse {
            let _keep = self.0.clone();
            Box::pin(async move {
                if req.uri().path() == "/panic" {
                    panic!("handler bug");
                }
                Response::new(BoxBody::stream(futures_lite::stream::iter(vec![
                    Ok::<_, std::io::Error>(Bytes::from_static(b"a")),
                    Ok(Bytes::from_static(b"b")),
                ])))
            })
        }
    }
    let _g = one_at_a_time();
    let mut cfg = ReactorConfig::new(two_cpus());
    cfg.listeners.push(ListenerSpec::plain(
        "127.0.0.1:0".parse().unwrap(),
        ListenerKind::Public,
    ));
    let reactors = start_reactors(cfg, |_ctx: CoreContext<()>| Panicky(Rc::new(()))).unwrap();
    let addr = reactors.local_addr(ListenerKind::Public).unwrap();
    client_runtime().block_on(async move {
        for _ in 0..4 {
            let mut tx = h1(addr).await;
            let (st, body) = get_h1(&mut tx, req("GET", "/panic", "")).await;
            assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE);
            assert!(body.contains("\"unavailable\""), "{body}");
            let (st, body) = get_h1(&mut tx, req("GET", "/stream", "")).await;
            assert_eq!((st, body.as_str()), (StatusCode::OK, "ab"));
        }
    });
    drop(reactors); // Drop shuts down and joins.
}

#[test]
fn start_up_errors_are_typed() {
    let _g = one_at_a_time();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut cfg = ReactorConfig::new(two_cpus());
    cfg.listeners.push(ListenerSpec::plain(
        taken.local_addr().unwrap(),
        ListenerKind::Public,
    ));
    let err = start_reactors(cfg, |_ctx: CoreContext<()>| -> Panicky2 { unreachable!() })
        .err()
        .unwrap();
    assert!(
        matches!(err, votes_net::NetError::AddrInUse { .. }),
        "{err}"
    );

    let mut cfg = ReactorConfig::new(vec![0, 0]);
    cfg.listeners.clear();
    let err = start_reactors(cfg, |_ctx: CoreContext<()>| -> Panicky2 { unreachable!() })
        .err()
        .unwrap();
    assert!(matches!(err, votes_net::NetError::Config(_)), "{err}");

    // make_app failing on a core stops the others and reports it.
    let cfg = ReactorConfig::new(two_cpus());
    let err = start_reactors(cfg, |ctx: CoreContext<()>| -> Panicky2 {
        if ctx.core_index() == 1 {
            panic!("no kafka");
        }
        Panicky2
    })
    .err()
    .unwrap();
    assert!(err.to_string().contains("no kafka"), "{err}");
}

struct Panicky2;
impl App for Panicky2 {
    fn handle(&self, _: ListenerKind, _: SocketAddr, _: AppRequest) -> AppResponse {
        Box::pin(async { Response::new(BoxBody::empty()) })
    }
}
