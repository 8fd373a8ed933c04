//! The live results over WebSocket (docs/design.md §7, `GET /v1/elections/{id}/results/ws`): the
//! handshake and its refusals, the same `tally` and `final` events as the SSE stream as JSON
//! text frames, pings both ways, a close after the official result, a data frame refused with
//! 1003, and a client that stops answering pings closed within a heartbeat or two; the same
//! over h2 streams opened by an extended CONNECT (RFC 8441), several on one connection.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::runtime;
use common::serve::{ONE_SECOND_HEARTBEAT, Serve, TestClient, official_result, open_election};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use votes_core::ws::{Opcode, accept_key, encode_masked};

const PARTITIONS: u32 = 4;
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// A frame from the server (never masked).
#[derive(Debug, PartialEq)]
enum Got {
    Text(serde_json::Value),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(u16),
    /// The socket closed.
    Eof,
}

/// What a WebSocket runs on: a TCP connection (HTTP/1.1) or an h2 stream (RFC 8441).
trait Pipe: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Pipe for T {}

struct Ws {
    stream: Box<dyn Pipe>,
    buf: Vec<u8>,
}

impl Ws {
    /// The next frame within `within`, or `None` when nothing came.
    async fn next(&mut self, within: Duration) -> Option<Got> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(got) = take_frame(&mut self.buf) {
                return Some(got);
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return None,
                Ok(Ok(0)) | Ok(Err(_)) => return Some(Got::Eof),
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

/// Takes one server frame (never masked) off the front of `buf`, once it is all there.
fn take_frame(buf: &mut Vec<u8>) -> Option<Got> {
    let b = &*buf;
    if b.len() < 2 {
        return None;
    }
    assert_eq!(b[1] & 0x80, 0, "a server frame is not masked");
    assert_ne!(b[0] & 0x80, 0, "the server sends final frames");
    let (len, at) = match b[1] & 0x7F {
        126 if b.len() >= 4 => (usize::from(u16::from_be_bytes([b[2], b[3]])), 4),
        127 if b.len() >= 10 => (
            u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize,
            10,
        ),
        126 | 127 => return None,
        n => (usize::from(n), 2),
    };
    if b.len() < at + len {
        return None;
    }
    let payload = b[at..at + len].to_vec();
    let got = match b[0] & 0x0F {
        0x1 => Got::Text(serde_json::from_slice(&payload).expect("a JSON event")),
        0x9 => Got::Ping(payload),
        0xA => Got::Pong(payload),
        0x8 => Got::Close(u16::from_be_bytes([payload[0], payload[1]])),
        op => panic!("unexpected opcode {op:#x}"),
    };
    buf.drain(..at + len);
    Some(got)
}

const MASK: [u8; 4] = [7, 1, 9, 3];

impl Ws {
    /// The socket with a reader of its own that answers every ping at once, as a browser does,
    /// however long the test takes between reads; every frame still reaches `next`.
    fn answering_pings(self) -> Answering {
        let (mut read, write) = tokio::io::split(self.stream);
        let write = Arc::new(tokio::sync::Mutex::new(write));
        let (tx, frames) = tokio::sync::mpsc::unbounded_channel();
        let (pong_to, mut buf) = (write.clone(), self.buf);
        tokio::spawn(async move {
            loop {
                while let Some(got) = take_frame(&mut buf) {
                    if let Got::Ping(p) = &got {
                        let pong = encode_masked(Opcode::Pong, true, p, MASK);
                        let _ = pong_to.lock().await.write_all(&pong).await;
                    }
                    if tx.send(got).is_err() {
                        return;
                    }
                }
                let mut chunk = [0u8; 4096];
                match read.read(&mut chunk).await {
                    Ok(0) | Err(_) => {
                        let _ = tx.send(Got::Eof);
                        return;
                    }
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
        });
        Answering { write, frames }
    }
}

/// A WebSocket client whose pings are answered in the background.
struct Answering {
    write: Arc<tokio::sync::Mutex<tokio::io::WriteHalf<Box<dyn Pipe>>>>,
    frames: tokio::sync::mpsc::UnboundedReceiver<Got>,
}

impl Answering {
    async fn send(&mut self, opcode: Opcode, payload: &[u8]) {
        let frame = encode_masked(opcode, true, payload, MASK);
        self.write.lock().await.write_all(&frame).await.unwrap();
    }

    /// The next frame within `within`, or `None` when nothing came.
    async fn next(&mut self, within: Duration) -> Option<Got> {
        match tokio::time::timeout(within, self.frames.recv()).await {
            Err(_) => None,
            Ok(got) => Some(got.unwrap_or(Got::Eof)),
        }
    }

    /// The next frame that is not a ping (those are answered already).
    async fn next_not_ping(&mut self, within: Duration) -> Option<Got> {
        let deadline = Instant::now() + within;
        loop {
            match self
                .next(deadline.saturating_duration_since(Instant::now()))
                .await
            {
                Some(Got::Ping(_)) => {}
                other => return other,
            }
        }
    }

    /// The next text event (pings are answered already).
    async fn event(&mut self, within: Duration) -> serde_json::Value {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Some(Got::Text(v)) => return v,
                Some(Got::Ping(_)) => {}
                other => panic!("expected an event, got {other:?}"),
            }
        }
    }
}

/// The handshake's answer: status, headers (lower-case names) and, on 101, the open socket.
async fn handshake(
    serve: &Serve,
    path: &str,
    extra: &[(&str, &str)],
) -> (u16, Vec<(String, String)>, Ws) {
    let mut stream = TcpStream::connect(serve.http).await.unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: test\r\n");
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let head_end = loop {
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("an answer to the handshake")
            .unwrap();
        assert!(
            n > 0,
            "the server closed before answering: {}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let rest = buf[head_end..].to_vec();
    let stream = Box::new(stream);
    (status, headers, Ws { stream, buf: rest })
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

const UPGRADE: [(&str, &str); 4] = [
    ("Upgrade", "websocket"),
    ("Connection", "keep-alive, Upgrade"),
    ("Sec-WebSocket-Version", "13"),
    ("Sec-WebSocket-Key", KEY),
];

async fn open(serve: &Serve, election: &str) -> Ws {
    let path = format!("/v1/elections/{election}/results/ws");
    let (status, headers, ws) = handshake(serve, &path, &UPGRADE).await;
    assert_eq!(status, 101, "{headers:?}\n{}", serve.log_text());
    assert_eq!(header(&headers, "upgrade"), Some("websocket"));
    assert_eq!(
        header(&headers, "sec-websocket-accept"),
        Some(accept_key(KEY).unwrap().as_str())
    );
    ws
}

#[test]
fn results_over_websocket_from_handshake_to_the_official_close() {
    let serve =
        Serve::init_and_start_with("results-ws", PARTITIONS, 2, false, &ONE_SECOND_HEARTBEAT);
    runtime().block_on(async {
        let client = TestClient::http1();
        open_election(&client, &serve, "live", &["yes", "no"], 0).await;

        // Refusals: precise 400s, and the unknown election a 404, all in the JSON envelope.
        let path = "/v1/elections/live/results/ws";
        let no_key = &UPGRADE[..3];
        let (status, headers, mut ws) = handshake(&serve, path, no_key).await;
        assert_eq!(status, 400, "{headers:?}");
        assert_eq!(header(&headers, "content-type"), Some("application/json"));
        while !String::from_utf8_lossy(&ws.buf).contains('}') {
            let mut chunk = [0u8; 1024];
            let n = tokio::time::timeout(Duration::from_secs(5), ws.stream.read(&mut chunk))
                .await
                .expect("the error body")
                .unwrap();
            assert!(n > 0, "the body of the 400");
            ws.buf.extend_from_slice(&chunk[..n]);
        }
        assert!(String::from_utf8_lossy(&ws.buf).contains("\"invalid_request\""));
        let old = [
            UPGRADE[0],
            UPGRADE[1],
            ("Sec-WebSocket-Version", "8"),
            UPGRADE[3],
        ];
        let (status, headers, _) = handshake(&serve, path, &old).await;
        assert_eq!(
            (status, header(&headers, "sec-websocket-version")),
            (400, Some("13"))
        );
        let short_key = [
            UPGRADE[0],
            UPGRADE[1],
            UPGRADE[2],
            ("Sec-WebSocket-Key", "c2hvcnQ="),
        ];
        assert_eq!(handshake(&serve, path, &short_key).await.0, 400);
        let (status, _, _) = handshake(&serve, "/v1/elections/nope/results/ws", &UPGRADE).await;
        assert_eq!(status, 404);

        // A data frame is refused with 1003; a client that never answers pings is let go.
        let mut talker = open(&serve, "live").await.answering_pings();
        let _ = talker.event(Duration::from_secs(10)).await;
        talker.send(Opcode::Text, b"{\"hello\":1}").await;
        let within = Duration::from_secs(10);
        assert_eq!(talker.next_not_ping(within).await, Some(Got::Close(1003)));
        assert_eq!(talker.next_not_ping(within).await, Some(Got::Eof));
        // The server pings once; at the next heartbeat, still without a pong, it lets go.
        let mut silent = open(&serve, "live").await;
        let mut pings = 0;
        loop {
            match silent.next(Duration::from_secs(30)).await {
                Some(Got::Text(_)) => {}
                Some(Got::Ping(_)) => pings += 1,
                Some(Got::Eof) => break,
                other => panic!("expected a ping then the end, got {other:?}"),
            }
        }
        assert_eq!(pings, 1, "one unanswered ping is enough");

        // The current state first, then each vote as a tally event with a larger id.
        let mut ws = open(&serve, "live").await.answering_pings();
        let first = ws.event(Duration::from_secs(5)).await;
        assert_eq!(first["event"], "tally");
        assert_eq!(first["data"]["total"], 0);
        let mut last_id: u64 = first["id"].as_str().unwrap().parse().unwrap();
        for voter in 1..=3u64 {
            client
                .vote_accepted(&serve.url(""), "live", voter, "yes")
                .await;
            loop {
                let e = ws.event(Duration::from_secs(10)).await;
                assert_eq!(e["event"], "tally");
                let id: u64 = e["id"].as_str().unwrap().parse().unwrap();
                assert!(id > last_id, "event ids grow: {id} after {last_id}");
                last_id = id;
                if e["data"]["total"] == voter {
                    assert_eq!(e["data"]["totals"]["yes"], voter);
                    break;
                }
            }
        }

        // Quiet: the server pings at its (1 s) heartbeat (this client answers them in the
        // background); it answers a ping with its payload.
        match ws.next(Duration::from_secs(10)).await {
            Some(Got::Ping(p)) => assert!(p.is_empty()),
            other => panic!("expected a ping, got {other:?}"),
        }
        ws.send(Opcode::Ping, b"are you there").await;
        loop {
            match ws.next(Duration::from_secs(10)).await {
                Some(Got::Pong(p)) => {
                    assert_eq!(p, b"are you there");
                    break;
                }
                Some(Got::Ping(_)) => {}
                other => panic!("expected our pong, got {other:?}"),
            }
        }

        // The official result: the final event, then a normal close.
        let official = official_result([("yes".to_owned(), 3), ("no".to_owned(), 0)].into());
        serve.write_official("live", &official);
        let fin = loop {
            let e = ws.event(Duration::from_secs(10)).await;
            if e["event"] == "final" {
                break e;
            }
        };
        assert_eq!(fin["id"], "final");
        assert_eq!(fin["data"]["final"], true);
        assert_eq!(fin["data"]["total"], 3);
        assert_eq!(
            ws.next(Duration::from_secs(5)).await,
            Some(Got::Close(1000))
        );
        assert_eq!(ws.next(Duration::from_secs(5)).await, Some(Got::Eof));

        // Once official, a new subscriber gets the final event and the close at once (the
        // core it lands on may see the result at its next tick).
        let mut late = common::eventually(
            Duration::from_secs(5),
            Duration::from_millis(100),
            async || {
                let mut late = open(&serve, "live").await.answering_pings();
                let e = late.event(Duration::from_secs(5)).await;
                if e["event"] == "final" {
                    return Ok(late);
                }
                Err(format!("every core sends the final event: {e}"))
            },
        )
        .await;
        assert_eq!(
            late.next(Duration::from_secs(5)).await,
            Some(Got::Close(1000))
        );
    });
}

/// RFC 8441: over h2 a WebSocket is a stream opened by `CONNECT` with `:protocol websocket`,
/// answered `200`; the same events, pings and close as over HTTP/1.1, several sessions on one
/// connection, in cleartext (prior knowledge) and over TLS (ALPN h2).
#[test]
fn results_over_websocket_on_h2_streams() {
    const VERSION: [(&str, &str); 1] = [("sec-websocket-version", "13")];
    let serve =
        Serve::init_and_start_with("results-ws-h2", PARTITIONS, 2, true, &ONE_SECOND_HEARTBEAT);
    let root = serve.tls_root().map(str::to_owned);
    runtime().block_on(async {
        let client = TestClient::http1();
        open_election(&client, &serve, "tunnel", &["yes", "no"], 0).await;
        let mut clients = Vec::new();
        let mut sessions = Vec::new();
        for protocol in ["h2c", "h2-tls"] {
            let c = TestClient::for_protocol(protocol, root.as_deref());
            let base = serve.base_for(protocol);
            let url = format!("{base}/v1/elections/tunnel/results/ws");

            // Refusals, each a precise 400 (or 404) in the JSON envelope.
            let (status, headers, _) = c.extended_connect(&url, "webtransport", &VERSION).await;
            assert_eq!(status, 400, "{protocol}: another :protocol");
            assert_eq!(headers["content-type"], "application/json");
            let old = [("sec-websocket-version", "8")];
            let (status, headers, _) = c.extended_connect(&url, "websocket", &old).await;
            assert_eq!(status, 400, "{protocol}: an old version");
            assert_eq!(headers["sec-websocket-version"], "13");
            let (status, _, body) = c.send("GET", &url, &[], Vec::new()).await.unwrap();
            assert_eq!(
                status, 400,
                "{protocol}: a GET is not a handshake over h2: {body}"
            );
            let message = body["error"]["message"].as_str().unwrap();
            assert!(message.contains("extended CONNECT"), "{message}");
            let nope = format!("{base}/v1/elections/nope/results/ws");
            assert_eq!(
                c.extended_connect(&nope, "websocket", &VERSION).await.0,
                404
            );

            // Two sessions on one connection: streams, not connections.
            for _ in 0..2 {
                let (status, headers, stream) =
                    c.extended_connect(&url, "websocket", &VERSION).await;
                assert_eq!(status, 200, "{protocol}: {headers:?}\n{}", serve.log_text());
                assert!(
                    headers.get("sec-websocket-accept").is_none(),
                    "no key over h2"
                );
                let stream: Box<dyn Pipe> = Box::new(stream.expect("the stream"));
                let mut ws = Ws {
                    stream,
                    buf: Vec::new(),
                }
                .answering_pings();
                let first = ws.event(Duration::from_secs(10)).await;
                assert_eq!(
                    (&first["event"], &first["data"]["total"]),
                    (&serde_json::json!("tally"), &serde_json::json!(0)),
                    "{protocol}: the current state first"
                );
                sessions.push((protocol, ws));
            }
            clients.push(c);
        }

        for voter in 1..=2u64 {
            client
                .vote_accepted(&serve.url(""), "tunnel", voter, "yes")
                .await;
            for (protocol, ws) in &mut sessions {
                loop {
                    let e = ws.event(Duration::from_secs(10)).await;
                    assert_eq!(e["event"], "tally", "{protocol}");
                    if e["data"]["total"] == voter {
                        break;
                    }
                }
            }
        }

        // Pings both ways: the server's heartbeat (answered in the background), and ours.
        for (protocol, ws) in &mut sessions {
            ws.send(Opcode::Ping, b"h2?").await;
            loop {
                match ws.next(Duration::from_secs(10)).await {
                    Some(Got::Pong(p)) => {
                        assert_eq!(p, b"h2?", "{protocol}");
                        break;
                    }
                    Some(Got::Ping(_)) => {}
                    other => panic!("{protocol}: expected our pong, got {other:?}"),
                }
            }
        }

        // A client's close is answered and ends its stream alone: the other session on the
        // same connection goes on.
        let (protocol, mut leaving) = sessions.remove(0);
        leaving.send(Opcode::Close, &1000u16.to_be_bytes()).await;
        assert_eq!(
            leaving.next_not_ping(Duration::from_secs(10)).await,
            Some(Got::Close(1000)),
            "{protocol}"
        );
        assert_eq!(
            leaving.next_not_ping(Duration::from_secs(10)).await,
            Some(Got::Eof),
            "{protocol}"
        );

        // The official result: the final event, a normal close, the end of the stream.
        let official = official_result([("yes".to_owned(), 2), ("no".to_owned(), 0)].into());
        serve.write_official("tunnel", &official);
        for (protocol, ws) in &mut sessions {
            let fin = loop {
                let e = ws.event(Duration::from_secs(10)).await;
                if e["event"] == "final" {
                    break e;
                }
            };
            assert_eq!(fin["data"]["total"], 2, "{protocol}");
            let within = Duration::from_secs(5);
            assert_eq!(
                ws.next_not_ping(within).await,
                Some(Got::Close(1000)),
                "{protocol}"
            );
            assert_eq!(ws.next_not_ping(within).await, Some(Got::Eof), "{protocol}");
        }
        drop(clients);
    });
}
