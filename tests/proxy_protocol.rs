//! `--proxy-protocol` (PROXY protocol v2, docs/design.md §7): behind a load balancer every connection
//! comes from the balancer, and the header it writes first names the client. The rate limiter
//! must see that client, a connection without a valid header must be closed and counted, the
//! balancer's own `LOCAL` health checks must be served, and a listener without the flag must
//! not take a header as anything but bad input. Every client here speaks from 127.0.0.1.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::serve::{Serve, metric};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use votes_core::proxy_header;

/// Requests from one claimed client before its bucket (1/s, bursts of 2) must have run dry.
const TRIES: usize = 50;

/// Sends `preamble` then one `GET path` on a fresh connection; the status line's code, or
/// `None` when the node closed the connection without an answer.
async fn get_after(addr: SocketAddr, preamble: &[u8], path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(addr).await.expect("the node accepts");
    let mut out = preamble.to_vec();
    out.extend_from_slice(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    // The node may close before reading everything: a failed write is an answer too.
    if s.write_all(&out).await.is_err() {
        return None;
    }
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "no answer and no close within 30 s");
    let text = String::from_utf8_lossy(&answer);
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
}

fn header_from(client: &str, node: SocketAddr) -> Vec<u8> {
    proxy_header::encode(client.parse().unwrap(), node)
}

#[test]
fn the_rate_limiter_sees_the_client_the_proxy_header_names() {
    let serve = Serve::init_and_start_env(
        "proxy-on",
        1,
        1,
        &[
            ("VOTES_PROXY_PROTOCOL", "true"),
            ("VOTES_RATE_PER_ADDR", "1"),
            ("VOTES_RATE_PER_PREFIX", "0"),
        ],
    );
    common::runtime().block_on(async {
        let a = header_from("203.0.113.7:40000", serve.http);
        let b = header_from("198.51.100.9:40001", serve.http);
        assert_eq!(get_after(serve.http, &a, "/v1/elections").await, Some(200));
        let mut limited = false;
        for _ in 0..TRIES {
            match get_after(serve.http, &a, "/v1/elections").await {
                Some(429) => {
                    limited = true;
                    break;
                }
                Some(200) => {}
                other => panic!("client a answered {other:?}"),
            }
        }
        assert!(
            limited,
            "{TRIES} requests from one claimed client were never limited"
        );
        // Same socket peer (127.0.0.1), another client: a bucket of its own.
        assert_eq!(
            get_after(serve.http, &b, "/v1/elections").await,
            Some(200),
            "the limiter keyed on the balancer's address, not the header's"
        );
        // The balancer's health check (LOCAL) is served as the balancer's own connection.
        assert_eq!(
            get_after(serve.http, &proxy_header::encode_local(), "/readyz").await,
            Some(200)
        );
        // A health check that connects and closes before a byte is no refusal (one core: these
        // are handled before the refusals below, so the count that shows them leaves them out).
        for _ in 0..3 {
            drop(tokio::net::TcpStream::connect(serve.http).await.unwrap());
        }
        // A client that reaches the listener directly is closed without an answer.
        assert_eq!(get_after(serve.http, b"", "/v1/elections").await, None);
        let v1 = b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 8080\r\n";
        assert_eq!(get_after(serve.http, v1, "/v1/elections").await, None);
        // Cores publish their counters once a second: wait for the two refusals to show.
        let refused = common::eventually(
            Duration::from_secs(60),
            Duration::from_millis(200),
            async || {
                let refused = metric(&serve, "votes_http_proxy_header_refusals_total").await;
                if refused.values().sum::<u64>() >= 2 {
                    return Ok(refused);
                }
                Err(format!("refusals are not counted: {refused:?}"))
            },
        )
        .await;
        assert_eq!(
            refused.values().sum::<u64>(),
            2,
            "connections closed before their first byte were counted: {refused:?}"
        );
    });
}

#[test]
fn a_listener_without_the_flag_takes_a_proxy_header_as_bad_input() {
    let serve = Serve::init_and_start("proxy-off", 1, 1);
    common::runtime().block_on(async {
        let h = header_from("203.0.113.7:40000", serve.http);
        let answer = get_after(serve.http, &h, "/v1/elections").await;
        assert!(
            matches!(answer, None | Some(400..=499)),
            "a PROXY header on a listener without --proxy-protocol got {answer:?}"
        );
        assert_eq!(get_after(serve.http, b"", "/v1/elections").await, Some(200));
    });
}

/// Behind a proxy every connection comes from the balancer, so the per-address connection cap
/// counts the client each PROXY header names: one claimed client at its cap is closed, others
/// (and the balancer's own health checks) are not.
#[test]
fn the_connection_cap_per_address_counts_the_client_the_header_names() {
    const CAP: usize = 3;
    let serve = Serve::init_and_start_env(
        "proxy-cap",
        1,
        1,
        &[
            ("VOTES_PROXY_PROTOCOL", "true"),
            ("VOTES_MAX_CONNS_PER_ADDR", &CAP.to_string()),
        ],
    );
    common::runtime().block_on(async {
        let a = header_from("203.0.113.7:40000", serve.http);
        // CAP connections of client a, each past its header and held open.
        let mut held = Vec::new();
        for _ in 0..CAP {
            let mut s = TcpStream::connect(serve.http).await.unwrap();
            s.write_all(&a).await.unwrap();
            held.push(s);
        }
        // The node has read those headers once a request on one of them is answered.
        let mut first = held.pop().unwrap();
        first
            .write_all(b"GET /v1/elections HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 12];
        first.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200");
        held.push(first);
        assert_eq!(
            get_after(serve.http, &a, "/v1/elections").await,
            None,
            "client a's connection over the cap is closed"
        );
        let b = header_from("198.51.100.9:40001", serve.http);
        assert_eq!(get_after(serve.http, &b, "/v1/elections").await, Some(200));
        assert_eq!(
            get_after(serve.http, &proxy_header::encode_local(), "/readyz").await,
            Some(200),
            "the balancer's health check is not a client at the cap"
        );
        drop(held);
        // Once a's connections are gone its place is free again (the node notices the closes).
        let deadline = Instant::now() + Duration::from_secs(30);
        while get_after(serve.http, &a, "/v1/elections").await != Some(200) {
            assert!(Instant::now() < deadline, "client a stays over the cap");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}
