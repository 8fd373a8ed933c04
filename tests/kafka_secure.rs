//! Kafka as production runs it: TLS and SASL SCRAM (docs/design.md §7). The services script gives its
//! one-node broker a second listener, SASL_SSL on 127.0.0.1:9097, with a certificate from a CA
//! it made (`~/.cache/votes-services/kafka-tls/ca.pem`, shared by checkouts like the broker)
//! and a SCRAM-SHA-512 user. Every Kafka client
//! of `votes` (topics, the transactional producers, the group members, the elections log, the
//! replays) goes through it: `votes init` and a serving node work end to end, and the votes
//! are in the log (read back over the plaintext listener of the same broker). Wrong
//! credentials, or no certificate authority, stop the command at start and say why.

mod common;

use common::runtime;
use common::secure::{KAFKA_PASSWORD, kafka_ca, kafka_env};
use common::serve::{ADMIN_TOKEN, Serve, TOKEN_KEY, TestClient, committed_votes, open_election};

/// `votes` with `args` and `env`, expected to fail at start: its stderr.
fn fails(prefix: &str, args: &[&str], env: &[(&str, String)]) -> String {
    let mut command = common::votes_command(prefix, args);
    command
        .env("VOTES_TOKEN_KEY", TOKEN_KEY)
        .env("VOTES_ADMIN_TOKEN", ADMIN_TOKEN)
        .envs(env.iter().map(|(k, v)| (k, v)));
    common::fails_at_start(command)
}

#[test]
fn votes_runs_end_to_end_over_tls_and_scram_and_stops_on_wrong_credentials() {
    common::require(common::Service::Kafka);
    common::require(common::Service::DynamoDb);
    let ca = kafka_ca();
    let prefix = common::unique_prefix("kafka-secure");
    let env = kafka_env(&ca, KAFKA_PASSWORD);
    let out = common::votes_command(&prefix, &["init", "--partitions", "2"])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    common::assert_success(&out, "votes init over SASL_SSL");
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let serve = Serve::start_env(&prefix, 1, false, &env_refs);
    runtime().block_on(async {
        let client = TestClient::http1();
        open_election(&client, &serve, "secure", &["a", "b"], 0).await;
        client.votes_split_a_b(&serve, "secure", 20).await;
    });
    // The same broker's plaintext listener shows the 20 votes committed.
    let log = committed_votes(&serve.names(), 2);
    assert_eq!(
        log.iter()
            .filter(|c| c.record.election.as_str() == "secure")
            .count(),
        20
    );
    assert!(
        !serve.log_text().contains(KAFKA_PASSWORD),
        "the password reached the log"
    );
    drop(serve);

    let wrong = kafka_env(&ca, "not-the-scram-password");
    let err = fails(&prefix, &["init", "--partitions", "2"], &wrong);
    assert!(err.contains("refused this process"), "{err}");
    assert!(!err.contains("not-the-scram-password"), "{err}");
    let err = fails(&prefix, &["serve", "--cores", "1"], &wrong);
    assert!(err.contains("refused this process"), "{err}");
    // TLS without the CA that signed the broker's certificate.
    let mut untrusted = kafka_env(&ca, KAFKA_PASSWORD);
    untrusted.retain(|(k, _)| *k != "VOTES_KAFKA_CA");
    let err = fails(&prefix, &["init", "--partitions", "2"], &untrusted);
    assert!(err.contains("refused this process"), "{err}");
    // SASL without a password is a setting missing, named before anything connects.
    let mut no_password = kafka_env(&ca, KAFKA_PASSWORD);
    no_password.retain(|(k, _)| *k != "VOTES_KAFKA_PASSWORD");
    let err = fails(&prefix, &["init", "--partitions", "2"], &no_password);
    assert!(err.contains("VOTES_KAFKA_PASSWORD"), "{err}");
}
