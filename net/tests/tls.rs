//! TLS listeners: a reactor pair serving plaintext and TLS side by side, a tokio + tokio-rustls +
//! hyper client trusting a self-signed certificate from rcgen, HTTP/1.1 and h2 chosen by ALPN,
//! the `ConnInfo` every request carries, and what happens to peers that do not speak TLS.
//!
//! As in reactors.rs, times are only bounded generously.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tokio::io::AsyncWriteExt;
use tokio_rustls::TlsConnector;
use votes_net::rustls::pki_types::pem::PemObject;
use votes_net::rustls::pki_types::{CertificateDer, ServerName};

use common::temp_dir::TempDir;
use common::{client_runtime, h1_over, h2_over, one_at_a_time, read, two_cpus, wait_closed};
use votes_net::{
    App, AppRequest, AppResponse, BoxBody, ConnInfo, CoreContext, HttpLimits, HttpStats,
    ListenerKind, ListenerSpec, NetError, ReactorConfig, Reactors, TlsFileKind, TlsFileProblem,
    rustls, self_signed_dev_cert, start_reactors, tls_server_config,
};

/// Each core's HTTP counters, copied out by a task on that core (the live handle is `!Send`).
type Published = Arc<Mutex<Vec<HttpStats>>>;

struct InfoApp;

impl App for InfoApp {
    fn handle(&self, kind: ListenerKind, _peer: SocketAddr, req: AppRequest) -> AppResponse {
        let body = match req.extensions().get::<ConnInfo>() {
            Some(i) => format!(
                "tls={} alpn={:?} conn={:?} req={:?} kind={kind:?}",
                i.tls,
                i.alpn,
                i.http_version,
                req.version()
            ),
            None => "no ConnInfo".into(),
        };
        Box::pin(async move { Response::new(BoxBody::from(body)) })
    }
}

struct Server {
    reactors: Reactors,
    plain: SocketAddr,
    tls: SocketAddr,
    /// The self-signed certificate the client must trust.
    cert_pem: String,
    stats: Published,
}

impl Server {
    fn stats(&self) -> HttpStats {
        let all = self.stats.lock().unwrap();
        all.iter().fold(HttpStats::default(), |mut a, s| {
            a.tls_handshake_failures += s.tls_handshake_failures;
            a.header_timeouts += s.header_timeouts;
            a.accepted += s.accepted;
            a
        })
    }

    /// Waits (bounded) until `pred` holds for the summed counters; they are copied every 10 ms.
    async fn wait_stats(&self, what: &str, pred: impl Fn(&HttpStats) -> bool) -> HttpStats {
        let t0 = Instant::now();
        loop {
            let s = self.stats();
            if pred(&s) {
                return s;
            }
            assert!(t0.elapsed() < Duration::from_secs(5), "{what}: {s:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn start(limits: HttpLimits) -> Server {
    let dir = TempDir::new("server");
    let (cert_pem, key_pem) = self_signed_dev_cert(&["localhost", "127.0.0.1"]).unwrap();
    let tls = tls_server_config(
        dir.write("cert.pem", &cert_pem),
        dir.write("key.pem", &key_pem),
    )
    .unwrap();
    let mut cfg = ReactorConfig::new(two_cpus());
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    cfg.listeners
        .push(ListenerSpec::plain(any, ListenerKind::Public));
    cfg.listeners
        .push(ListenerSpec::tls(any, ListenerKind::Public, tls));
    cfg.http = limits;
    cfg.shutdown_grace = Duration::from_secs(5);
    let stats: Published = Arc::new(Mutex::new(vec![HttpStats::default(); 2]));
    let published = stats.clone();
    let reactors = start_reactors(cfg, move |ctx: CoreContext<()>| {
        let (core, live, shutdown) = (ctx.core_index(), ctx.http_stats(), ctx.shutdown_signal());
        let out = published.clone();
        glommio::spawn_local(async move {
            loop {
                out.lock().unwrap()[core] = live.get();
                let stop = futures_lite::future::or(
                    async {
                        glommio::timer::sleep(Duration::from_millis(10)).await;
                        false
                    },
                    async {
                        shutdown.wait().await;
                        true
                    },
                )
                .await;
                if stop {
                    break;
                }
            }
        })
        .detach();
        InfoApp
    })
    .expect("reactors start");
    let plain = reactors.local_addr(ListenerKind::Public).unwrap();
    let tls = reactors.local_tls_addr(ListenerKind::Public).unwrap();
    assert_ne!(plain, tls);
    Server {
        reactors,
        plain,
        tls,
        cert_pem,
        stats,
    }
}

/// A client trusting only `cert_pem`, offering `alpn` (in that order; empty: no ALPN).
fn client_config(cert_pem: &str, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(cert_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    // The ring provider explicitly, as the server does (see net/src/tls.rs).
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Arc::new(cfg)
}

type TlsStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

async fn tls_connect(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream> {
    let s = tokio::net::TcpStream::connect(addr).await?;
    TlsConnector::from(cfg)
        .connect(ServerName::try_from("localhost").unwrap(), s)
        .await
}

fn get(path: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .uri(format!("https://localhost{path}"))
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

#[test]
fn https_serves_http11_and_h2_by_alpn_next_to_plaintext() {
    let _g = one_at_a_time();
    let server = start(HttpLimits::default());
    let (tls_addr, plain_addr, cert) = (server.tls, server.plain, server.cert_pem.clone());
    client_runtime().block_on(async move {
        // HTTP/1.1 chosen by ALPN; keep-alive: several requests on one TLS connection.
        let s = tls_connect(tls_addr, client_config(&cert, &[b"http/1.1"]))
            .await
            .unwrap();
        assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        let mut tx = h1_over(s).await;
        for _ in 0..3 {
            tx.ready().await.unwrap();
            let (st, body) = read(tx.send_request(get("/")).await.unwrap()).await;
            assert_eq!(st, StatusCode::OK);
            assert_eq!(
                body,
                "tls=true alpn=Some(Http11) conn=HTTP/1.1 req=HTTP/1.1 kind=Public"
            );
        }

        // No ALPN at all: HTTP/1.1.
        let s = tls_connect(tls_addr, client_config(&cert, &[]))
            .await
            .unwrap();
        assert_eq!(s.get_ref().1.alpn_protocol(), None);
        let mut tx = h1_over(s).await;
        tx.ready().await.unwrap();
        let (_, body) = read(tx.send_request(get("/")).await.unwrap()).await;
        assert_eq!(
            body,
            "tls=true alpn=None conn=HTTP/1.1 req=HTTP/1.1 kind=Public"
        );

        // h2 chosen by ALPN (the server prefers it when both are offered); many streams on
        // one connection.
        let s = tls_connect(tls_addr, client_config(&cert, &[b"http/1.1", b"h2"]))
            .await
            .unwrap();
        assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let tx = h2_over(s).await;
        let calls: Vec<_> = (0..64)
            .map(|_| {
                let mut tx = tx.clone();
                tokio::spawn(async move {
                    tx.ready().await.unwrap();
                    read(tx.send_request(get("/")).await.unwrap()).await
                })
            })
            .collect();
        for c in calls {
            let (st, body) = c.await.unwrap();
            assert_eq!(st, StatusCode::OK);
            assert_eq!(
                body,
                "tls=true alpn=Some(H2) conn=HTTP/2.0 req=HTTP/2.0 kind=Public"
            );
        }

        // The plaintext listener next to it says so too, for HTTP/1.1 and h2c.
        let mut tx = h1_over(tokio::net::TcpStream::connect(plain_addr).await.unwrap()).await;
        tx.ready().await.unwrap();
        let (_, body) = read(tx.send_request(get("/")).await.unwrap()).await;
        assert_eq!(
            body,
            "tls=false alpn=None conn=HTTP/1.1 req=HTTP/1.1 kind=Public"
        );
        let mut tx = h2_over(tokio::net::TcpStream::connect(plain_addr).await.unwrap()).await;
        tx.ready().await.unwrap();
        let (_, body) = read(tx.send_request(get("/")).await.unwrap()).await;
        assert_eq!(
            body,
            "tls=false alpn=None conn=HTTP/2.0 req=HTTP/2.0 kind=Public"
        );

        assert_eq!(server.stats().tls_handshake_failures, 0);
        server.reactors.shutdown();
        server.reactors.join().unwrap();
    });
}

#[test]
fn peers_that_do_not_finish_a_handshake_are_closed_and_counted() {
    let _g = one_at_a_time();
    let limits = HttpLimits {
        header_read_timeout: Duration::from_millis(800),
        ..HttpLimits::default()
    };
    let server = start(limits);
    let (tls_addr, cert) = (server.tls, server.cert_pem.clone());
    client_runtime().block_on(async move {
        // Plain HTTP to the TLS port: not a TLS record, so the handshake fails at once (well
        // before the header timeout) and the connection is closed.
        let mut plain = tokio::net::TcpStream::connect(tls_addr).await.unwrap();
        plain
            .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let took = wait_closed(&mut plain, Duration::from_secs(5)).await;
        assert!(took < Duration::from_millis(700), "closed after {took:?}");
        let s = server
            .wait_stats("plain HTTP counted as a handshake failure", |s| {
                s.tls_handshake_failures >= 1
            })
            .await;
        assert_eq!(s.header_timeouts, 0);

        // A client offering only an ALPN id we do not serve: refused, counted. (It sees an EOF,
        // not the no_application_protocol alert: futures-rustls' last-gasp write after a
        // handshake error sends only the first queued record, here the ServerHello.)
        tls_connect(tls_addr, client_config(&cert, &[b"h3"]))
            .await
            .expect_err("no common ALPN id");
        // A client that does not trust the certificate aborts the handshake itself.
        let (other_cert, _) = self_signed_dev_cert(&["localhost"]).unwrap();
        tls_connect(tls_addr, client_config(&other_cert, &[b"h2"]))
            .await
            .expect_err("untrusted certificate");
        server
            .wait_stats("refused ALPN and untrusted certificate counted", |s| {
                s.tls_handshake_failures >= 3
            })
            .await;

        // Silent TCP connection: the handshake is bounded by the header-read timeout.
        let mut silent = tokio::net::TcpStream::connect(tls_addr).await.unwrap();
        let took = wait_closed(&mut silent, Duration::from_secs(5)).await;
        assert!(took >= Duration::from_millis(500), "closed early: {took:?}");
        server
            .wait_stats("silent handshake counted as a header timeout", |s| {
                s.header_timeouts >= 1
            })
            .await;

        // A finished handshake followed by silence: same bound, counted from accept.
        let mut s = tls_connect(tls_addr, client_config(&cert, &[b"http/1.1"]))
            .await
            .unwrap();
        let took = wait_closed(&mut s, Duration::from_secs(5)).await;
        assert!(took >= Duration::from_millis(400), "closed early: {took:?}");

        // The listener still serves afterwards.
        let s = tls_connect(tls_addr, client_config(&cert, &[b"http/1.1"]))
            .await
            .unwrap();
        let mut tx = h1_over(s).await;
        tx.ready().await.unwrap();
        assert_eq!(
            tx.send_request(get("/")).await.unwrap().status(),
            StatusCode::OK
        );
        server.reactors.shutdown();
        server.reactors.join().unwrap();
    });
}

#[test]
fn bad_tls_files_and_configs_give_precise_errors() {
    let dir = TempDir::new("bad");
    let (cert_pem, key_pem) = self_signed_dev_cert(&["localhost"]).unwrap();
    let cert = dir.write("cert.pem", &cert_pem);

    // A PRIVATE KEY block whose content is not a key.
    let bad = dir.write(
        "bad-key.pem",
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    );
    let err = tls_server_config(&cert, &bad).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(
            &err,
            NetError::TlsFile {
                kind: TlsFileKind::PrivateKey,
                problem: TlsFileProblem::UnusableKey(_),
                ..
            }
        ),
        "{msg}"
    );
    assert!(
        msg.starts_with(&format!(
            "TLS private key file {}: the key cannot be used",
            bad.display()
        )),
        "{msg}"
    );

    // The certificate given as the key.
    let err = tls_server_config(&cert, &cert).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "TLS private key file {}: holds no private key block: expected PRIVATE KEY (PKCS#8), \
             RSA PRIVATE KEY or EC PRIVATE KEY (found: CERTIFICATE)",
            cert.display()
        )
    );

    // Broken PEM.
    let broken = dir.write("broken.pem", "-----BEGIN PRIVATE KEY-----\nAAAA\n");
    let err = tls_server_config(&cert, &broken).unwrap_err();
    assert!(
        matches!(
            &err,
            NetError::TlsFile {
                problem: TlsFileProblem::Pem(_),
                ..
            }
        ),
        "{err}"
    );

    // An ALPN id we do not serve is refused at start, before binding anything.
    let _g = one_at_a_time();
    let key = dir.write("key.pem", &key_pem);
    let mut tls = (*tls_server_config(&cert, &key).unwrap()).clone();
    tls.alpn_protocols.push(b"spdy/3".to_vec());
    let mut cfg = ReactorConfig::new(two_cpus());
    cfg.listeners.push(ListenerSpec::tls(
        "127.0.0.1:0".parse().unwrap(),
        ListenerKind::Public,
        Arc::new(tls),
    ));
    let err = start_reactors(cfg, |_: CoreContext<()>| InfoApp)
        .err()
        .unwrap();
    assert!(
        matches!(&err, NetError::Config(m) if m.contains("spdy/3")),
        "{err}"
    );
}

/// An HTTP/3 client (quinn on tokio, h3) trusting only `cert_pem`.
async fn h3_client(
    addr: SocketAddr,
    cert_pem: &str,
) -> h3::client::SendRequest<h3_quinn::OpenStreams, Bytes> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(cert_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    let conn = ep.connect(addr, "localhost").unwrap().await.unwrap();
    let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
    });
    send
}

#[test]
fn https_serves_http3_on_the_same_port_and_advertises_it() {
    let _g = one_at_a_time();
    let server = start(HttpLimits::default());
    client_runtime().block_on(async {
        // HTTP/1.1 over TLS names the same port for h3.
        let s = tls_connect(server.tls, client_config(&server.cert_pem, &[b"http/1.1"]))
            .await
            .unwrap();
        let mut h1 = h1_over(s).await;
        let resp = h1.send_request(get("/")).await.unwrap();
        let alt = resp.headers().get("alt-svc").cloned();
        assert_eq!(
            alt.as_ref().and_then(|v| v.to_str().ok()),
            Some(format!("h3=\":{}\"; ma=86400", server.tls.port()).as_str())
        );
        // Plaintext does not advertise it.
        let mut tx = h1_over(tokio::net::TcpStream::connect(server.plain).await.unwrap()).await;
        let resp = tx
            .send_request(
                Request::builder()
                    .uri("/")
                    .header("host", "x")
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert!(resp.headers().get("alt-svc").is_none());

        // HTTP/3 on the UDP side of the same address: the app sees it as such.
        let mut send = h3_client(server.tls, &server.cert_pem).await;
        for i in 0..20 {
            let req = Request::builder()
                .method("POST")
                .uri(format!("https://localhost/n/{i}"))
                .body(())
                .unwrap();
            let mut stream = send.send_request(req).await.unwrap();
            stream.send_data(Bytes::from_static(b"{}")).await.unwrap();
            stream.finish().await.unwrap();
            let resp = stream.recv_response().await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            let mut body = Vec::new();
            while let Some(mut chunk) = stream.recv_data().await.unwrap() {
                use bytes::Buf;
                while chunk.has_remaining() {
                    let c = chunk.chunk().to_vec();
                    chunk.advance(c.len());
                    body.extend_from_slice(&c);
                }
            }
            let body = String::from_utf8(body).unwrap();
            assert_eq!(
                body,
                "tls=true alpn=Some(H3) conn=HTTP/3.0 req=HTTP/3.0 kind=Public"
            );
        }
        let s = server.wait_stats("h3 counted", |s| s.accepted >= 3).await;
        assert!(s.accepted >= 3, "{s:?}");
    });
    server.reactors.shutdown();
    server.reactors.join().unwrap();
}
