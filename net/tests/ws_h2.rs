//! A WebSocket on an h2 stream (RFC 8441): the server advertises extended CONNECT, a session
//! the app accepts with `200` runs on the stream hyper hands over, and the connection's
//! watchdog counts it as a response being written, so a quiet session outlives the
//! connection's idle timeout while its heartbeats go out, and ends when the client closes.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use votes_core::ws::{Opcode, encode, encode_masked};

use common::{one_at_a_time, serve_public};
use votes_net::{
    App, AppRequest, AppResponse, BoxBody, CoreContext, ListenerKind, ReactorConfig, Reactors, ws,
};

/// A ping unanswered by the next heartbeat ends a session: a whole second leaves a busy
/// machine's test thread time to answer.
const HEARTBEAT: Duration = Duration::from_secs(1);

struct WsApp;

impl App for WsApp {
    fn handle(&self, _: ListenerKind, _: SocketAddr, req: AppRequest) -> AppResponse {
        let tunnel = req.method() == http::Method::CONNECT
            && ws::connect_protocol(&req) == Some("websocket");
        Box::pin(async move {
            if !tunnel {
                return Response::new(BoxBody::from("hello"));
            }
            // A stream of one text frame, then pings at the heartbeat.
            let topic = votes_net::sse::Topic::new();
            let first = Bytes::from(encode(Opcode::Text, b"hello"));
            let frames = topic.subscribe_with(Some(first), HEARTBEAT, ws::ping_frame(), None);
            let response = Response::builder()
                .status(StatusCode::OK)
                .body(BoxBody::empty())
                .unwrap();
            ws::upgrade_to(
                response,
                Box::new(move |socket| {
                    Box::pin(async move {
                        let _topic = topic;
                        ws::results_session(socket, frames, Duration::from_secs(5)).await;
                    })
                }),
            )
        })
    }
}

fn start(idle: Duration) -> (Reactors, SocketAddr) {
    let cpus = votes_net::preflight::probe().allowed_cpus;
    let mut cfg = ReactorConfig::new(cpus[..1].to_vec());
    cfg.http = votes_net::HttpLimits {
        idle_timeout: idle,
        header_read_timeout: idle,
        graceful_close_timeout: idle,
        ..votes_net::HttpLimits::default()
    };
    serve_public(cfg, |_: CoreContext<()>| WsApp)
}

/// A server frame: opcode and payload, once all of it is in `buf`.
fn take_frame(buf: &mut Vec<u8>) -> Option<(u8, Vec<u8>)> {
    if buf.len() < 2 {
        return None;
    }
    let len = usize::from(buf[1] & 0x7F);
    assert!(len < 126, "short frames only here");
    if buf.len() < 2 + len {
        return None;
    }
    let frame = (buf[0] & 0x0F, buf[2..2 + len].to_vec());
    buf.drain(..2 + len);
    Some(frame)
}

#[test]
fn a_websocket_on_an_h2_stream_outlives_the_idle_timeout_and_ends_on_close() {
    let _g = one_at_a_time();
    let idle = Duration::from_secs(2);
    let (reactors, addr) = start(idle);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut tx, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
                .await
                .unwrap();
        let connection = tokio::spawn(conn);
        let mut req = Request::connect(format!("http://{addr}/ws"))
            .header("sec-websocket-version", "13")
            .body(Empty::<Bytes>::new())
            .unwrap();
        req.extensions_mut()
            .insert(hyper::ext::Protocol::from_static("websocket"));
        tx.ready().await.unwrap();
        let resp = tx.send_request(req).await.unwrap();
        // A server without SETTINGS_ENABLE_CONNECT_PROTOCOL resets the stream instead.
        assert_eq!(resp.status(), StatusCode::OK);
        let mut stream = TokioIo::new(hyper::upgrade::on(resp).await.unwrap());

        // Two idle timeouts of pings, each answered: the session and its connection stay.
        let mut buf = Vec::new();
        let until = Instant::now() + 2 * idle;
        let mut pings = 0;
        let mut texts = Vec::new();
        while Instant::now() < until || pings < 3 {
            while let Some((opcode, payload)) = take_frame(&mut buf) {
                match opcode {
                    0x1 => texts.push(payload),
                    0x9 => {
                        pings += 1;
                        let pong = encode_masked(Opcode::Pong, true, &payload, [1, 2, 3, 4]);
                        stream.write_all(&pong).await.unwrap();
                    }
                    other => panic!("unexpected opcode {other:#x} after {pings} pings"),
                }
            }
            let mut chunk = [0u8; 256];
            let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
                .await
                .expect("a heartbeat within the bound")
                .unwrap();
            assert!(n > 0, "the session ended after {pings} pings");
            buf.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(texts, vec![b"hello".to_vec()]);
        assert!(
            !connection.is_finished(),
            "the connection outlived its idle timeout"
        );

        // The client's close is echoed, then the stream ends.
        let close = encode_masked(Opcode::Close, true, &1000u16.to_be_bytes(), [9, 9, 9, 9]);
        stream.write_all(&close).await.unwrap();
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
            .await
            .expect("the stream ends after the close")
            .unwrap();
        buf.extend_from_slice(&rest);
        let mut frames = Vec::new();
        while let Some(f) = take_frame(&mut buf) {
            frames.push(f);
        }
        let close = frames.iter().find(|(op, _)| *op == 0x8).expect("a close");
        assert_eq!(close.1[..2], 1000u16.to_be_bytes());

        // With no stream open, the connection idles out as any other.
        tokio::time::timeout(Duration::from_secs(10), connection)
            .await
            .expect("an idle connection is closed")
            .unwrap()
            .ok();
    });
    drop(reactors);
}
