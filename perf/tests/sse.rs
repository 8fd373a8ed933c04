//! Runs `votes-sse`'s subscriber run against a tiny in-process live-results server (hyper on
//! tokio, HTTP/1.1 and h2c) that streams like the real one: `retry:`, the current state at once,
//! then a `tally` event per change (throttled to 10/s), `: heartbeat` comments, and votes that
//! change the totals before their `202`; over WebSocket the same events as text frames and pings
//! as heartbeats. It also closes one stream in ten once, so subscribers reconnect (with
//! `Last-Event-ID` on the event stream).

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use votes_core::clock::unix_ms;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use votes_core::ws::Opcode;
use votes_perf::client::Protocol;
use votes_perf::subscribe::{Config, SseRunError, StreamKind, run};

const SECRET: &str = "0123456789abcdef0123456789abcdef";

type Out = BoxBody<Bytes, Infallible>;

/// A streamed body fed by a channel: the stream ends when the sender is dropped.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

struct Server {
    /// (votes for a, votes for b, ms since the epoch of the last change); its version is the
    /// SSE id.
    totals: Mutex<(u64, u64, u64)>,
    version: watch::Sender<u64>,
    streams: AtomicU64,
    with_last_event_id: AtomicU64,
    /// Reads of a WebSocket client's frames (pongs), and those not masked.
    client_frames: AtomicU64,
    unmasked_frames: AtomicU64,
    heartbeat: Duration,
}

impl Server {
    fn results(&self) -> String {
        let (a, b, as_of) = *self.totals.lock().unwrap();
        serde_json::json!({
            "election": "e1", "state": "open", "totals": {"a": a, "b": b},
            "total": a + b, "final": false, "as_of": as_of,
        })
        .to_string()
    }

    fn json(status: u16, body: String) -> Response<Out> {
        let mut r = Response::new(Full::new(Bytes::from(body)).boxed());
        *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
        r
    }

    fn stream(self: Arc<Self>, req: &Request<Incoming>, ws: bool) -> mpsc::Receiver<Bytes> {
        let n = self.streams.fetch_add(1, Ordering::Relaxed);
        let resumed = req.headers().contains_key("last-event-id");
        if resumed {
            self.with_last_event_id.fetch_add(1, Ordering::Relaxed);
        }
        // One first stream in ten is closed after a while.
        let close_after = (!resumed && n % 10 == 3).then_some(Duration::from_millis(1500));
        let (tx, rx) = mpsc::channel::<Bytes>(16);
        let mut version = self.version.subscribe();
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let mut hb = tokio::time::interval(self.heartbeat);
            hb.tick().await;
            let event = |s: &Server, v: u64| match ws {
                false => Bytes::from(format!("id: {v}\nevent: tally\ndata: {}\n\n", s.results())),
                true => {
                    let text = format!(r#"{{"event":"tally","id":"{v}","data":{}}}"#, s.results());
                    Bytes::from(votes_core::ws::encode(Opcode::Text, text.as_bytes()))
                }
            };
            let heartbeat = match ws {
                false => Bytes::from_static(b": heartbeat\n\n"),
                true => Bytes::from(votes_core::ws::encode(Opcode::Ping, b"")),
            };
            let v = *version.borrow_and_update();
            if (!ws && tx.send(Bytes::from_static(b"retry: 200\n")).await.is_err())
                || tx.send(event(&self, v)).await.is_err()
            {
                return;
            }
            loop {
                if close_after.is_some_and(|d| started.elapsed() >= d) {
                    return;
                }
                tokio::select! {
                    changed = version.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        let v = *version.borrow_and_update();
                        if tx.send(event(&self, v)).await.is_err() {
                            return;
                        }
                        // At most 10 events/s.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    _ = hb.tick() => {
                        if tx.send(heartbeat.clone()).await.is_err() {
                            return;
                        }
                    }
                    _ = tokio::time::sleep(Duration::from_millis(100)), if close_after.is_some() => {}
                }
            }
        });
        rx
    }

    fn event_stream(self: Arc<Self>, req: &Request<Incoming>) -> Response<Out> {
        let rx = self.stream(req, false);
        let mut r = Response::new(ChannelBody(rx).boxed());
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("text/event-stream"),
        );
        r
    }

    /// The WebSocket: `101`, then the frames on the upgraded connection; the client's frames
    /// (pongs) are read and checked to be masked.
    fn websocket(self: Arc<Self>, mut req: Request<Incoming>) -> Response<Out> {
        // Over h2 an extended CONNECT (RFC 8441): no key, a 200.
        let key = match req.method() {
            &Method::CONNECT => {
                let protocol = req.extensions().get::<hyper::ext::Protocol>();
                assert_eq!(protocol.map(|p| p.as_str()), Some("websocket"));
                assert_eq!(req.headers()["sec-websocket-version"], "13");
                None
            }
            _ => Some(
                req.headers()["sec-websocket-key"]
                    .to_str()
                    .unwrap()
                    .to_owned(),
            ),
        };
        let mut rx = self.clone().stream(&req, true);
        let upgrade = hyper::upgrade::on(&mut req);
        let server = self.clone();
        tokio::spawn(async move {
            let io = upgrade.await.expect("upgraded");
            let (mut read, mut write) = tokio::io::split(TokioIo::new(io));
            let reader = tokio::spawn(async move {
                let mut buf = [0u8; 256];
                loop {
                    match read.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {
                            server.client_frames.fetch_add(1, Ordering::Relaxed);
                            if buf[1] & 0x80 == 0 {
                                server.unmasked_frames.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
            });
            while let Some(frame) = rx.recv().await {
                if write.write_all(&frame).await.is_err() {
                    break;
                }
            }
            let _ = write
                .write_all(&votes_core::ws::close_frame(1001, ""))
                .await;
            reader.abort();
        });
        let Some(key) = key else {
            return Response::new(Full::new(Bytes::new()).boxed());
        };
        Response::builder()
            .status(101)
            .header("upgrade", "websocket")
            .header("connection", "Upgrade")
            .header(
                "sec-websocket-accept",
                votes_core::ws::accept_key(&key).unwrap(),
            )
            .body(Full::new(Bytes::new()).boxed())
            .unwrap()
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Out> {
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/v1/elections/e1") => Self::json(
                200,
                serde_json::json!({"id": "e1", "title": "T", "state": "open",
                    "options": [{"id": "a", "label": "A"}, {"id": "b", "label": "B"}],
                    "pow_difficulty": 0})
                .to_string(),
            ),
            (&Method::GET, "/v1/elections/e1/results") => Self::json(200, self.results()),
            (&Method::GET, "/v1/elections/e1/results/stream") => self.event_stream(&req),
            (&Method::GET | &Method::CONNECT, "/v1/elections/e1/results/ws") => self.websocket(req),
            (&Method::POST, "/v1/elections/e1/votes") => {
                assert!(req.headers().contains_key("authorization"));
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                // "Commit", publish, then answer a little later.
                tokio::time::sleep(Duration::from_millis(3)).await;
                {
                    let mut t = self.totals.lock().unwrap();
                    match v["option"].as_str() {
                        Some("a") => t.0 += 1,
                        Some("b") => t.1 += 1,
                        o => panic!("option {o:?}"),
                    }
                    t.2 = unix_ms();
                }
                self.version.send_modify(|v| *v += 1);
                tokio::time::sleep(Duration::from_millis(2)).await;
                Self::json(202, r#"{"status":"accepted"}"#.into())
            }
            _ => Self::json(
                404,
                r#"{"error":{"code":"not_found","message":"x"}}"#.into(),
            ),
        }
    }
}

async fn serve(server: Arc<Server>) -> SocketAddr {
    common::accept_each(move |stream, _| {
        let server = server.clone();
        async move {
            let svc = service_fn(move |req| {
                let server = server.clone();
                async move { Ok::<_, Infallible>(server.handle(req).await) }
            });
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder.http2().enable_connect_protocol();
            let _ = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                .await;
        }
    })
    .await
}

fn config(addr: SocketAddr, subscribers: u64) -> Config {
    Config {
        target: format!("http://{addr}").parse().unwrap(),
        election: "e1".into(),
        subscribers,
        stream: StreamKind::Sse,
        protocol: Protocol::H1,
        streams_per_connection: 50,
        connect_rate: 2_000.0,
        source_addrs: 4,
        vote_rate: 100.0,
        duration: Duration::from_secs(3),
        voter_base: 1,
        vote_protocol: Protocol::H2,
        vote_connections: 2,
        token_key: SECRET.as_bytes().to_vec(),
        server_pid: Some(std::process::id()),
        connect_timeout: Duration::from_secs(5),
        connect_grace: Duration::from_secs(10),
        settle: Duration::from_secs(10),
        vote_timeout: Duration::from_secs(5),
        progress: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_stream_subscriber_over_h1_gets_every_update_and_its_delay_is_measured() {
    every_subscriber_gets_every_update(StreamKind::Sse, Protocol::H1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_stream_subscriber_over_h2_gets_every_update() {
    every_subscriber_gets_every_update(StreamKind::Sse, Protocol::H2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_websocket_subscriber_over_h2_streams_gets_every_update() {
    every_subscriber_gets_every_update(StreamKind::Ws, Protocol::H2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_websocket_subscriber_gets_every_update() {
    every_subscriber_gets_every_update(StreamKind::Ws, Protocol::H1).await;
}

async fn every_subscriber_gets_every_update(stream: StreamKind, protocol: Protocol) {
    let server = Arc::new(Server {
        totals: Mutex::new((0, 0, unix_ms())),
        version: watch::channel(0).0,
        streams: AtomicU64::new(0),
        with_last_event_id: AtomicU64::new(0),
        client_frames: AtomicU64::new(0),
        unmasked_frames: AtomicU64::new(0),
        heartbeat: Duration::from_millis(400),
    });
    let addr = serve(server.clone()).await;
    let subscribers = 200;
    let mut cfg = config(addr, subscribers);
    cfg.stream = stream;
    cfg.protocol = protocol;
    let r = tokio::spawn(run(cfg)).await.unwrap().unwrap();
    eprintln!("{}", r.summary());
    assert_eq!((r.stream, r.protocol.as_str()), (stream, protocol.as_str()));

    assert_eq!(r.subscribers_target, subscribers);
    assert_eq!(r.subscribers_connected, subscribers);
    assert_eq!(r.connected_at_vote_start, subscribers);
    assert_eq!(r.connect_failures, 0);
    assert_eq!(r.votes_sent, 300);
    assert_eq!(r.votes_accepted, 300, "{:?}", r.votes_by_status);
    assert_eq!(r.baseline_total, 0);
    assert_eq!(r.final_total, 300);
    assert_eq!(r.results_total, Some(300));
    assert_eq!(r.subscribers_final_total_ok, subscribers);
    assert_eq!(r.subscribers_over_total, 0);
    assert_eq!(r.total_regressions, 0);
    assert_eq!(r.bad_events, 0);
    // Every (vote, subscriber) pair once, reconnections included.
    assert_eq!(r.delay_samples, 300 * subscribers);
    // Throttled to 10 events/s: the delays stay around 100 ms, far below a second.
    assert!(r.delay_ms.p50 <= 250.0, "{:?}", r.delay_ms);
    // A WebSocket has no `retry:`: the one subscriber in ten whose stream was closed comes back
    // after 2 s, as the page does, and the updates it missed meanwhile wait that long.
    let tail = match stream {
        StreamKind::Sse => r.delay_ms.p99,
        StreamKind::Ws => r.delay_ms.p90,
    };
    assert!(tail < 1000.0, "{:?}", r.delay_ms);
    assert!(r.delay_ms.max >= r.delay_ms.p99);
    // The server publishes before it answers 202: a few events beat their acks.
    assert!(r.delay_samples_before_ack < r.delay_samples / 2);
    // Measured from the send instead, each delay is longer: by the 5 ms the vote takes here.
    assert!(
        r.delay_from_send_ms.p50 >= r.delay_ms.p50,
        "{:?}",
        r.delay_from_send_ms
    );
    assert!(r.delay_from_send_ms.max >= r.delay_ms.max);
    assert!(r.vote_ack_ms.p50 >= 4.0, "{:?}", r.vote_ack_ms);
    // From the change to its event: the throttle's 100 ms at most, but for the reconnections.
    assert!(r.fanout_ms.p50 <= 150.0, "{:?}", r.fanout_ms);
    assert!(r.client_cpu_s.vote.is_some_and(|s| s > 0.0));
    assert!(r.server_cpu_s.connect.is_some());
    assert_eq!(r.votes_unknown_outcome, 0);
    assert!(r.tally_events >= subscribers * 10, "{}", r.tally_events);
    assert_eq!(r.events, r.tally_events);
    assert!(r.heartbeats >= subscribers, "{}", r.heartbeats);
    // One first stream in ten was closed: those subscribers came back (with Last-Event-ID on
    // the event stream; the WebSocket has no resumption, its first event is the state).
    assert!(r.reconnects >= subscribers / 10, "{}", r.reconnects);
    let resumed = server.with_last_event_id.load(Ordering::Relaxed);
    match stream {
        StreamKind::Sse => assert_eq!(resumed, r.reconnects),
        StreamKind::Ws => {
            assert_eq!(resumed, 0);
            // Every ping answered by a masked pong (reads may merge a few).
            assert!(server.client_frames.load(Ordering::Relaxed) > 0);
            assert_eq!(server.unmasked_frames.load(Ordering::Relaxed), 0);
        }
    }
    assert_eq!(r.open_at_end, subscribers);
    assert!(r.server_rss_kib.before.is_some() && r.server_rss_kib.end.is_some());
    assert!(r.rss_per_subscriber_kib.is_some());

    let v = serde_json::to_value(&r).unwrap();
    for key in [
        "subscribers_target",
        "subscribers_connected",
        "connect_failures",
        "votes_accepted",
        "events",
        "delay_ms",
        "subscribers_final_total_ok",
        "server_rss_kib",
        "rss_per_subscriber_kib",
    ] {
        assert!(v.get(key).is_some(), "{key}");
    }
    for key in ["p50", "p90", "p99", "p999", "max"] {
        assert!(v["delay_ms"].get(key).is_some(), "{key}");
    }
    for key in ["before", "connected", "end"] {
        assert!(v["server_rss_kib"].get(key).is_some(), "{key}");
    }
}

#[tokio::test]
async fn refuses_what_it_cannot_hold_or_must_not_reach() {
    let mut cfg = config("127.0.0.1:9".parse().unwrap(), 1 << 40);
    let err = run(cfg.clone()).await.unwrap_err();
    assert!(matches!(err, SseRunError::NoFile { .. }), "{err}");
    assert!(err.to_string().contains("RLIMIT_NOFILE"), "{err}");
    cfg.subscribers = 1;
    cfg.stream = StreamKind::Ws;
    cfg.protocol = Protocol::H3;
    let err = run(cfg.clone()).await.unwrap_err();
    assert!(matches!(err, SseRunError::WsProtocol), "{err}");
    cfg.stream = StreamKind::Sse;
    cfg.target = "http://10.1.2.3:8080".parse().unwrap();
    let err = run(cfg).await.unwrap_err();
    assert!(matches!(err, SseRunError::NotLoopback(..)), "{err}");
}
