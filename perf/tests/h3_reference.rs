//! `votes-load --protocol h3` against the reference HTTP/3 server (tokio + quinn + h3) on
//! loopback, with a self-signed certificate the client trusts through `--ca-cert`.

use std::path::PathBuf;
use std::time::Duration;

use votes_perf::client::{Protocol, Trust};
use votes_perf::load::{Config, run};
use votes_perf::peers::h3_reference;
use votes_perf::schedule::Ramp;

const SECRET: &str = "h3-reference-test-secret-0123456789abcdef";

fn cert_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("votes-perf-h3-{}", std::process::id()));
    h3_reference::write_self_signed(&dir, &["localhost".into(), "127.0.0.1".into()]).unwrap();
    dir
}

fn config(target: String, trust: Trust, connections: usize, sources: u8) -> Config {
    Config {
        target: target
            .parse::<votes_perf::client::Target>()
            .unwrap()
            .with_trust(trust),
        election: "e1".into(),
        rate: 400.0,
        duration: Duration::from_millis(500),
        ramp: Ramp::None,
        voters: 100_000,
        voter_base: 1,
        dup_ratio: 0.0,
        invalid_ratio: 0.0,
        protocol: Protocol::H3,
        connections,
        source_addrs: (1..=sources)
            .map(|i| std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, i)))
            .collect(),
        // The reference server knows no elections (GET → 404): the options are given.
        options: Some(vec!["a".into(), "b".into()]),
        token_key: SECRET.as_bytes().to_vec(),
        token_cache: 1_024,
        max_in_flight: 1_000,
        timeout: Duration::from_secs(5),
        seed: 3,
        progress: false,
        lookups: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_load_against_the_reference_server() {
    let dir = cert_dir();
    let (certs, key) = h3_reference::load_pem(&dir.join("cert.pem"), &dir.join("key.pem")).unwrap();
    let endpoint = h3_reference::bind(
        "127.0.0.1:0".parse().unwrap(),
        h3_reference::server_config(certs, key).unwrap(),
    )
    .unwrap();
    let addr = endpoint.local_addr().unwrap();
    let server = tokio::spawn(h3_reference::serve(endpoint.clone()));
    let target = format!("https://127.0.0.1:{}", addr.port());

    let runs = [
        // Trusting the self-signed certificate; two connections.
        (Trust::CaFile(dir.join("cert.pem")), 2, 0),
        // Three connections from 127.0.0.1..=3 (each its own UDP socket), no verification.
        (Trust::Insecure, 3, 3),
    ];
    for (trust, connections, sources) in runs {
        let cfg = config(target.clone(), trust.clone(), connections, sources);
        let r = tokio::time::timeout(Duration::from_secs(30), run(cfg))
            .await
            .expect("the run ends in time")
            .unwrap_or_else(|e| panic!("{trust:?}: {e}"));
        assert_eq!(r.protocol, "h3");
        assert_eq!(r.connections, connections);
        assert_eq!(r.planned, 200, "{trust:?}");
        assert_eq!(r.report.sent, 200, "{trust:?}");
        assert_eq!(r.dropped, 0);
        assert!(r.errors.is_empty(), "{trust:?}: {:?}", r.errors);
        assert_eq!(
            r.report.by_status.get("202").copied(),
            Some(200),
            "{trust:?}: {:?}",
            r.report.by_status
        );
        assert_eq!(r.report.by_status.len(), 1, "{:?}", r.report.by_status);
        assert_eq!(r.by_kind["fresh"].get("202").copied(), Some(200));
        assert_eq!(r.unexpected, 0);
        assert!(r.report.latency_ms.p99 > 0.0 && r.report.latency_ms.p99 < 5_000.0);
    }

    // No trust configured: an https:// target is refused before any request.
    let e = run(config(target.clone(), Trust::Unset, 1, 0))
        .await
        .expect_err("no --ca-cert nor --insecure");
    assert!(e.to_string().contains("--ca-cert"), "{e}");

    // A certificate that is not the server's: the QUIC handshake is refused.
    let other = dir.join("other");
    h3_reference::write_self_signed(&other, &["127.0.0.1".into()]).unwrap();
    let e = run(config(
        target.clone(),
        Trust::CaFile(other.join("cert.pem")),
        1,
        0,
    ))
    .await
    .expect_err("an untrusted certificate");
    assert!(e.to_string().contains("quic connect"), "{e}");

    endpoint.close(0u32.into(), b"done");
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    let _ = std::fs::remove_dir_all(dir);
}
