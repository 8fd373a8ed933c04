//! The whole path of a vote on the engines as production secures them (docs/design.md §7):
//! Kafka over TLS with SASL SCRAM and a Redis that speaks only TLS and wants a password, for
//! every process at once. `votes init`, a serving node, the persister, the close and the
//! recount inside the node, `votes recount` again from the command line, and an auditor's
//! export all go through them; every 202's receipt ends as a row of the verified export, and
//! no password reaches a log.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::runtime;
use common::secure::{KAFKA_PASSWORD, SecureRedis, kafka_ca, kafka_env};
use common::serve::{Serve, TestClient, close_election, open_election, wait_final};

/// A port of this test's own Redis (tests/redis_tls.rs has 16391).
const REDIS_PORT: &str = "16392";
const REDIS_PASSWORD: &str = "a-redis-password-for-the-secure-path";
const OPTIONS: [&str; 2] = ["yes", "no"];

#[test]
fn a_vote_reaches_the_verified_export_through_secure_kafka_and_a_secure_redis() {
    common::require(common::Service::Kafka);
    common::require(common::Service::DynamoDb);
    let redis = SecureRedis::up(REDIS_PORT, REDIS_PASSWORD);
    let mut env = kafka_env(&kafka_ca(), KAFKA_PASSWORD);
    env.extend(redis.env());
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let prefix = common::unique_prefix("secure-path");
    let votes = |args: &[&str]| {
        let out = common::votes_command(&prefix, args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("the votes binary runs");
        let text = common::output_text(&out);
        assert!(out.status.success(), "votes {args:?}:\n{text}");
        assert!(
            !text.contains(KAFKA_PASSWORD) && !text.contains(REDIS_PASSWORD),
            "a password reached the output of votes {args:?}"
        );
        text
    };
    votes(&["init", "--partitions", "2"]);
    let serve = Serve::start_env(&prefix, 1, false, &env_refs);
    let receipts = runtime().block_on(async {
        let client = TestClient::http1();
        open_election(&client, &serve, "sp", &OPTIONS, 0).await;
        let mut receipts = HashSet::new();
        for voter in 1..=30u64 {
            let (status, body) = client
                .vote(&serve.url(""), "sp", voter, OPTIONS[(voter % 2) as usize])
                .await
                .unwrap();
            assert_eq!(status, 202, "voter {voter}: {body}");
            receipts.insert(body["receipt"].as_str().unwrap().to_owned());
        }
        // A repeat is refused the same way on this path.
        let (status, _) = client.vote(&serve.url(""), "sp", 7, "yes").await.unwrap();
        assert_eq!(status, 409);
        receipts
    });
    votes(&["persist", "--exit-when-caught-up"]);
    let official = runtime().block_on(async {
        let client = TestClient::http1();
        close_election(&client, &serve, "sp").await;
        // The recount inside the node reads the log, DynamoDB and Redis, all secured.
        wait_final(&client, &serve, "sp", Duration::from_secs(120)).await
    });
    assert_eq!(official["total"], 30, "{official}");
    assert_eq!(official["totals"]["no"], 15, "{official}");
    let again = votes(&["recount", "--election", "sp"]);
    assert!(again.contains("matches the official result"), "{again}");
    let export = common::export_and_verify_with(&prefix, "sp", &env);
    let rows: HashSet<String> = export
        .rows
        .iter()
        .map(|r| hex::encode(r.leaf_hash))
        .collect();
    assert_eq!(rows, receipts, "the export's rows are the 202s' receipts");
    let log = serve.log_text();
    assert!(
        !log.contains(KAFKA_PASSWORD) && !log.contains(REDIS_PASSWORD),
        "a password reached the node's log"
    );
}
