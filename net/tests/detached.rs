//! A long-lived response marked with `detached_stream`: over HTTP/1.1 it leaves hyper (its own
//! head with `connection: close`, the body delimited by the close), after everything hyper
//! still had to write; over h2 the mark changes nothing.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::{h1_over, h2_over, one_at_a_time, serve_public};
use votes_net::{
    App, AppRequest, AppResponse, BoxBody, CoreContext, ListenerKind, ReactorConfig, Reactors,
    detached_stream,
};

/// More than the kernel holds for a client that does not read (its small receive buffer and
/// the server's send buffer, at most 4 MiB by default).
const BIG: usize = 16 << 20;

struct StreamApp {
    stats: votes_net::HttpStatsHandle,
}

impl App for StreamApp {
    fn handle(&self, _: ListenerKind, _: SocketAddr, req: AppRequest) -> AppResponse {
        let stats = self.stats.clone();
        Box::pin(async move {
            match req.uri().path() {
                // Three frames, a pause between them (the body is pending in between), then
                // the end.
                "/events" => {
                    let frames = futures_lite::stream::unfold(0u8, |n| async move {
                        if n == 3 {
                            return None;
                        }
                        glommio::timer::sleep(Duration::from_millis(20)).await;
                        let frame = Bytes::from(format!("data: {n}\n\n"));
                        Some((Ok::<_, std::io::Error>(frame), n + 1))
                    });
                    let response = Response::builder()
                        .header("content-type", "text/event-stream")
                        .header("cache-control", "no-cache")
                        .body(BoxBody::stream(frames))
                        .unwrap();
                    detached_stream(response)
                }
                // A stream that never ends on its own.
                "/forever" => {
                    let frames = futures_lite::stream::pending::<Result<Bytes, std::io::Error>>();
                    let first = futures_lite::stream::once(Ok(Bytes::from_static(b": hi\n\n")));
                    let body = BoxBody::stream(futures_lite::StreamExt::chain(first, frames));
                    detached_stream(Response::new(body))
                }
                // Endless, as fast as the client takes it.
                "/flood" => {
                    let chunk = Bytes::from(vec![b'y'; 64 * 1024]);
                    let frames = futures_lite::stream::repeat_with(move || {
                        Ok::<_, std::io::Error>(chunk.clone())
                    });
                    detached_stream(Response::new(BoxBody::stream(frames)))
                }
                "/stalled" => Response::new(BoxBody::from(stats.get().stalled_closes.to_string())),
                // Beyond the loopback socket's buffers: a client that does not read leaves
                // part of it in hyper's.
                "/big" => Response::new(BoxBody::from(vec![b'x'; BIG])),
                _ => Response::new(BoxBody::from("hello")),
            }
        })
    }
}

/// Runs `test` against the stream app on up to two cores with the default limits.
fn serving<F: Future<Output = ()>>(test: impl FnOnce(SocketAddr) -> F) {
    let cpus = votes_net::preflight::probe().allowed_cpus;
    serving_on(
        cpus[..cpus.len().min(2)].to_vec(),
        votes_net::HttpLimits::default(),
        test,
    );
}

/// Runs `test` against the stream app on `cpus` under `limits`, one test at a time, and stops
/// the reactors after it.
fn serving_on<F: Future<Output = ()>>(
    cpus: Vec<usize>,
    limits: votes_net::HttpLimits,
    test: impl FnOnce(SocketAddr) -> F,
) {
    let _g = one_at_a_time();
    let mut cfg = ReactorConfig::new(cpus);
    cfg.http = limits;
    let (reactors, addr): (Reactors, SocketAddr) =
        serve_public(cfg, |ctx: CoreContext<()>| StreamApp {
            stats: ctx.http_stats(),
        });
    rt().block_on(test(addr));
    drop(reactors);
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Everything the server sends until it closes, bounded in time.
async fn read_to_close(s: &mut tokio::net::TcpStream) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out))
        .await
        .expect("the server closes the connection")
        .expect("read");
    String::from_utf8(out).unwrap()
}

#[test]
fn over_http1_the_stream_leaves_hyper_after_the_earlier_responses() {
    serving(|addr| async move {
        // A keep-alive request, then the stream on the same connection, sent together: the
        // first answer must be whole before the stream's head.
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            b"GET /hello HTTP/1.1\r\nhost: t\r\n\r\nGET /events HTTP/1.1\r\nhost: t\r\n\r\n",
        )
        .await
        .unwrap();
        let text = read_to_close(&mut s).await;
        let (hello, events) = text
            .split_once("hello")
            .unwrap_or_else(|| panic!("the first answer: {text:?}"));
        assert!(hello.starts_with("HTTP/1.1 200 OK\r\n"), "{hello:?}");
        assert!(hello.contains("content-length: 5\r\n"), "{hello:?}");
        let (head, body) = events.split_once("\r\n\r\n").expect("the stream's head");
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head:?}");
        assert!(
            head.contains("\r\ncontent-type: text/event-stream\r\n"),
            "{head:?}"
        );
        assert!(head.contains("\r\nconnection: close\r\n"), "{head:?}");
        assert!(head.contains("\r\ndate: "), "{head:?}");
        assert!(!head.contains("transfer-encoding"), "{head:?}");
        assert_eq!(body, "data: 0\n\ndata: 1\n\ndata: 2\n\n");

        // The same response through hyper's client: a body that ends with the connection.
        let mut tx = h1_over(tokio::net::TcpStream::connect(addr).await.unwrap()).await;
        let req = Request::get("/events")
            .header("host", "t")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = tx.send_request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["connection"], "close");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "data: 0\n\ndata: 1\n\ndata: 2\n\n");
    });
}

#[test]
fn a_stream_behind_unread_answers_comes_after_them_and_ends_with_its_client() {
    serving(|addr| async move {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(8192).unwrap();
        let mut s = socket.connect(addr).await.unwrap();
        // 16 MiB the client does not read yet, a small answer behind them, then the stream:
        // the stream leaves hyper only after both are in the socket, whole and in order.
        s.write_all(
            b"GET /big HTTP/1.1\r\nhost: t\r\n\r\nGET /hello HTTP/1.1\r\nhost: t\r\n\r\n\
              GET /forever HTTP/1.1\r\nhost: t\r\n\r\n",
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let marker = b"\r\n\r\n: hi\n\n";
        let mut got = Vec::new();
        let head_end = loop {
            let mut chunk = [0u8; 65536];
            let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut chunk))
                .await
                .expect("bytes within the bound")
                .unwrap();
            assert!(n > 0, "closed early after {} bytes", got.len());
            got.extend_from_slice(&chunk[..n]);
            if got.len() > BIG
                && let Some(at) = got[BIG..].windows(marker.len()).position(|w| w == marker)
            {
                break BIG + at;
            }
        };
        let xs = got[..head_end].iter().filter(|b| **b == b'x').count();
        assert_eq!(xs, BIG, "the first answer whole before the stream");
        let tail = String::from_utf8_lossy(&got[head_end - 400..head_end]);
        let (hello, stream_head) = tail
            .split_once("hello")
            .unwrap_or_else(|| panic!("the small answer whole before the stream: {tail:?}"));
        assert!(hello.contains("content-length: 5\r\n"), "{hello:?}");
        assert!(stream_head.contains("connection: close"), "{stream_head:?}");

        // A client that sends more on a stream it should only read is closed.
        s.write_all(b"GET /hello HTTP/1.1\r\nhost: t\r\n\r\n")
            .await
            .unwrap();
        // Closed with the request unread: a reset, or an EOF if the close won the race.
        let mut rest = Vec::new();
        match tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut rest))
            .await
            .expect("the server closes the connection")
        {
            Ok(_) => assert!(rest.is_empty(), "nothing more: {rest:?}"),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        }
    });
}

#[test]
fn over_h2_the_mark_changes_nothing() {
    serving(|addr| async move {
        let mut tx = h2_over(tokio::net::TcpStream::connect(addr).await.unwrap()).await;
        for _ in 0..2 {
            let req = Request::get(format!("http://{addr}/events"))
                .body(Empty::<Bytes>::new())
                .unwrap();
            tx.ready().await.unwrap();
            let resp = tx.send_request(req).await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            assert!(resp.headers().get("connection").is_none());
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, "data: 0\n\ndata: 1\n\ndata: 2\n\n");
        }
        // The connection still serves other requests.
        let req = Request::get(format!("http://{addr}/hello"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = tx.send_request(req).await.unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "hello");
    });
}

#[test]
fn a_stream_whose_client_stops_reading_is_closed_after_the_stall_bound() {
    // One core, so that the counter asked for is the stream's core's.
    let cpus = votes_net::preflight::probe().allowed_cpus;
    let limits = votes_net::HttpLimits {
        response_stall_timeout: Duration::from_secs(1),
        ..Default::default()
    };
    serving_on(cpus[..1].to_vec(), limits, |addr| async move {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(8192).unwrap();
        let mut s = socket.connect(addr).await.unwrap();
        s.write_all(b"GET /flood HTTP/1.1\r\nhost: t\r\n\r\n")
            .await
            .unwrap();
        let mut first = [0u8; 1024];
        let n = s.read(&mut first).await.unwrap();
        assert!(first[..n].starts_with(b"HTTP/1.1 200 OK\r\n"));
        // Then it reads nothing: the server's writes block, and within the stall bound it
        // gives up on the client.
        let stalled = || async {
            let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
            c.write_all(b"GET /stalled HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
                .await
                .unwrap();
            let text = read_to_close(&mut c).await;
            let body = text.split_once("\r\n\r\n").unwrap().1.to_owned();
            body.parse::<u64>().unwrap()
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while stalled().await == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no stalled close in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // What the kernel still held, then the end.
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut rest))
            .await
            .expect("the connection ends");
        if let Err(e) = read {
            assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
        }
        assert!(
            rest.len() < 64 << 20,
            "the flood stopped: {} bytes after",
            rest.len()
        );
    });
}
