//! The admin listener over TLS (`--admin-tls-cert`, `--admin-tls-key`, docs/design.md §7): when it
//! leaves the machine, the admin token and the operators' writes cross the network encrypted.
//! Over TLS the admin API and `/metrics` answer as on plaintext, still behind the token; a
//! plaintext client gets nothing.

mod common;

use common::runtime;
use common::serve::{Serve, TestClient};

#[test]
fn the_admin_listener_speaks_tls_when_given_a_certificate() {
    common::require(common::Service::Kafka);
    let prefix = common::unique_prefix("admin-tls");
    common::init_with_partitions(&prefix, 1);
    // The public TLS listener's development certificate (localhost, 127.0.0.1) serves the
    // admin listener too.
    let dir = std::env::temp_dir();
    let cert = dir.join(format!("{prefix}cert.pem"));
    let key = dir.join(format!("{prefix}key.pem"));
    let env = [
        ("VOTES_ADMIN_TLS_CERT", cert.to_str().unwrap()),
        ("VOTES_ADMIN_TLS_KEY", key.to_str().unwrap()),
    ];
    let serve = Serve::start_env(&prefix, 1, true, &env);
    let root = serve.https.as_ref().expect("started with TLS").1.clone();
    let admin = |path: &str| format!("https://localhost:{}{path}", serve.admin.port());
    runtime().block_on(async {
        for protocol in ["h1-tls", "h2-tls"] {
            let client = TestClient::for_protocol(protocol, Some(&root));
            let (status, body) = client
                .admin("GET", &admin("/admin/v1/fleet"), serde_json::Value::Null)
                .await;
            assert_eq!(status, 200, "{protocol}: {body}");
            let (status, _) = client
                .admin("GET", &admin("/metrics"), serde_json::Value::Null)
                .await;
            assert_eq!(status, 200, "{protocol}: /metrics with the token");
            let unauthenticated = client.get(&admin("/metrics")).await.unwrap();
            assert_eq!(unauthenticated.0, 401, "{protocol}: /metrics without it");
        }
        let plain = TestClient::http1()
            .get(&format!("http://{}/metrics", serve.admin))
            .await;
        assert!(
            plain.is_err(),
            "a plaintext client got an answer: {plain:?}"
        );
    });
}
