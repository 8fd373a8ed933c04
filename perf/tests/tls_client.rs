//! The client over TLS (h1 and h2 by ALPN) against a rustls + hyper server on loopback, trusting
//! its self-signed certificate (`--ca-cert`); a certificate it does not trust is refused.

mod common;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Method, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use votes_perf::client::{Body, Client, Protocol, Target, Trust};
use votes_perf::peers::h3_reference;

async fn tls_server(cert: &std::path::Path, key: &std::path::Path) -> std::net::SocketAddr {
    let (certs, key) = h3_reference::load_pem(cert, key).unwrap();
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    common::accept_each(move |tcp, _| {
        let acceptor = acceptor.clone();
        async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let version = format!("{:?}", tls.get_ref().1.alpn_protocol());
            let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let body = format!("{:?} {}", req.version(), version);
                async move {
                    Ok::<_, Infallible>(
                        Response::builder()
                            .status(StatusCode::ACCEPTED)
                            .body(Full::new(Bytes::from(body)))
                            .unwrap(),
                    )
                }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), svc)
                .await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h1_and_h2_over_tls() {
    let dir = std::env::temp_dir().join(format!("votes-perf-tls-{}", std::process::id()));
    h3_reference::write_self_signed(&dir, &["127.0.0.1".into()]).unwrap();
    let other = dir.join("other");
    h3_reference::write_self_signed(&other, &["127.0.0.1".into()]).unwrap();
    let addr = tls_server(&dir.join("cert.pem"), &dir.join("key.pem")).await;
    let target: Target = format!("https://{addr}").parse().unwrap();

    for (protocol, expect) in [(Protocol::H1, "HTTP/1.1"), (Protocol::H2, "HTTP/2.0")] {
        let trusted = target
            .clone()
            .with_trust(Trust::CaFile(dir.join("cert.pem")));
        let client = Client::connect(trusted, protocol, 2).await.unwrap();
        for _ in 0..4 {
            let req = client
                .request(Method::POST, client.uri("/v1/elections/e1/votes"))
                .body(Body::new(Bytes::from_static(b"{}")))
                .unwrap();
            let a = client.send(req).await.unwrap();
            assert_eq!(a.status, StatusCode::ACCEPTED);
            let body = String::from_utf8_lossy(&a.body);
            assert!(body.starts_with(expect), "{protocol:?}: {body}");
        }
        let untrusted = target
            .clone()
            .with_trust(Trust::CaFile(other.join("cert.pem")));
        let e = Client::connect(untrusted, protocol, 1)
            .await
            .err()
            .expect("an untrusted certificate is refused");
        assert!(e.to_string().contains("tls"), "{e}");
    }
    let _ = std::fs::remove_dir_all(dir);
}
