//! Redis as production runs it: TLS only and a password (docs/design.md §7, `rediss://` URLs), started
//! by the services script on a port of its own. A node given the URL and the certificate
//! authority (`--redis-ca`), and the password as a systemd credential (`VOTES_REDIS_PASSWORD`
//! in `$CREDENTIALS_DIRECTORY`, not in the URL), publishes its tallies and reads the results
//! through it; the same node with a wrong password (in the URL or the credential), or without
//! the authority, stops at start and says why.

mod common;

use std::time::Duration;

use common::runtime;
use common::serve::{ADMIN_TOKEN, Serve, TOKEN_KEY, TestClient, open_election};

const REDIS_PORT: &str = "16391";
const PASSWORD: &str = "a-redis-password-for-tests";

/// `votes serve` on `prefix` with `env`, expected to stop at start: its stderr.
fn refused_at_start(prefix: &str, env: &[(&str, &str)]) -> String {
    let port = || votes_net::loopback_listener_port().unwrap().to_string();
    let mut serve = common::votes_command(prefix, &["serve", "--cores", "1"]);
    serve
        .args(["--http", &format!("127.0.0.1:{}", port())])
        .args(["--admin", &format!("127.0.0.1:{}", port())])
        .env("VOTES_TOKEN_KEY", TOKEN_KEY)
        .env("VOTES_ADMIN_TOKEN", ADMIN_TOKEN)
        .envs(env.iter().copied());
    common::fails_at_start(serve)
}

#[test]
fn a_node_works_through_a_tls_redis_with_a_password_and_stops_when_refused() {
    common::require(common::Service::Kafka);
    let redis = common::secure::SecureRedis::up(REDIS_PORT, PASSWORD);
    let (url, ca) = (redis.url.as_str(), redis.ca.as_str());
    let serve = Serve::init_and_start_env(
        "redis-tls",
        2,
        1,
        &[
            ("VOTES_REDIS_URL", url),
            ("VOTES_REDIS_CA", ca),
            ("CREDENTIALS_DIRECTORY", redis.credentials.as_str()),
            ("VOTES_RESULTS_POLL_MS", "50"),
        ],
    );
    runtime().block_on(async {
        let client = TestClient::http1();
        open_election(&client, &serve, "tls", &["a", "b"], 0).await;
        client.votes_split_a_b(&serve, "tls", 20).await;
        // The tallies went to Redis over TLS and came back as the results.
        let results = client
            .get_until(
                &serve.url("/v1/elections/tls/results"),
                Duration::from_secs(60),
                Duration::from_millis(100),
                |_, results| {
                    if results["total"] == 20 {
                        return Ok(results);
                    }
                    Err(serve.with_log(format!(
                        "the results never showed the 20 votes through the TLS Redis: {results}"
                    )))
                },
            )
            .await;
        assert_eq!(results["totals"]["a"], 10, "{results}");
    });
    let log = serve.log_text();
    assert!(!log.contains(PASSWORD), "the password reached the log");

    let prefix = serve.prefix.clone();
    let wrong = format!("rediss://:not-the-password@127.0.0.1:{REDIS_PORT}");
    let err = refused_at_start(
        &prefix,
        &[("VOTES_REDIS_URL", &wrong), ("VOTES_REDIS_CA", ca)],
    );
    assert!(err.contains("refused this node"), "{err}");
    assert!(
        !err.contains("not-the-password"),
        "the password reached stderr: {err}"
    );
    let err = refused_at_start(
        &prefix,
        &[
            ("VOTES_REDIS_URL", url),
            ("VOTES_REDIS_CA", ca),
            ("VOTES_REDIS_PASSWORD", "not-the-password-either"),
        ],
    );
    assert!(err.contains("refused this node"), "{err}");
    assert!(!err.contains("not-the-password-either"), "{err}");
    let with_password = format!("rediss://:{PASSWORD}@127.0.0.1:{REDIS_PORT}");
    let err = refused_at_start(&prefix, &[("VOTES_REDIS_URL", &with_password)]);
    assert!(
        err.contains("refused this node"),
        "a certificate the system does not trust must stop the node: {err}"
    );
}
