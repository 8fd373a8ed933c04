//! `votes init` (docs/design.md §4.1): creates the topics and tables of a prefix, is idempotent, and
//! refuses to pretend a `votes` topic with another partition count is fine.

mod common;

use std::time::Duration;

use common::{
    KAFKA, Service, assert_fails_saying, dynamo, output_text, require, runtime, success_stdout,
    unique_prefix, votes,
};
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use votes_core::Names;

#[test]
fn init_creates_everything_once_and_then_is_a_no_op() {
    require(Service::Kafka);
    require(Service::DynamoDb);
    let prefix = unique_prefix("init");
    let names = Names::new(&prefix).unwrap();

    let first = votes(&prefix, &["init", "--partitions", "4"]);
    let out = success_stdout(&first, "votes init");
    for line in [
        format!("topic {}votes: created", prefix),
        format!("topic {}elections: created", prefix),
        format!("table {}votes: created", prefix),
        format!("table {}results: created", prefix),
    ] {
        assert!(out.contains(&line), "missing {line:?} in:\n{out}");
    }

    let second = votes(&prefix, &["init", "--partitions", "4"]);
    assert_eq!(
        success_stdout(&second, "votes init again")
            .matches("already there")
            .count(),
        4,
        "{}",
        output_text(&second)
    );

    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", KAFKA.as_str())
        .create()
        .unwrap();
    let md = consumer
        .fetch_metadata(Some(&names.votes_topic()), Duration::from_secs(10))
        .unwrap();
    assert_eq!(md.topics()[0].partitions().len(), 4);

    runtime().block_on(async {
        let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", KAFKA.as_str())
            .create()
            .unwrap();
        let elections = names.elections_topic();
        let votes_topic = names.votes_topic();
        let configs = admin
            .describe_configs(
                [
                    &ResourceSpecifier::Topic(&elections),
                    &ResourceSpecifier::Topic(&votes_topic),
                ],
                &AdminOptions::new(),
            )
            .await
            .unwrap();
        let value = |i: usize, key: &str| {
            configs[i]
                .as_ref()
                .unwrap()
                .get(key)
                .and_then(|e| e.value.clone())
                .unwrap_or_default()
        };
        assert_eq!(value(0, "cleanup.policy"), "compact");
        for topic in [0, 1] {
            assert_eq!(
                value(topic, "message.timestamp.type"),
                "LogAppendTime",
                "records carry the broker's time, whatever the writing node's clock says"
            );
        }
        // A writer whose clock runs two hours ahead: the broker refuses such a CreateTime
        // record (log.message.timestamp.after.max.ms is an hour); these topics take it.
        let ahead: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", KAFKA.as_str())
            .set("message.timeout.ms", "10000")
            .create()
            .unwrap();
        let two_hours_ahead = i64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis(),
        )
        .unwrap()
            + 2 * 3_600_000;
        for topic in [&elections, &votes_topic] {
            let sent = ahead
                .send(
                    rdkafka::producer::FutureRecord::to(topic)
                        .key("clock")
                        .payload("ahead")
                        .timestamp(two_hours_ahead),
                    Duration::from_secs(10),
                )
                .await;
            assert!(
                sent.is_ok(),
                "a record from a clock two hours ahead is refused by {topic}: {sent:?}"
            );
        }
        assert_eq!(
            value(1, "retention.ms"),
            "-1",
            "the votes log is never deleted"
        );

        let client = dynamo().await;
        for table in [names.votes_table(), names.results_table()] {
            let t = client
                .describe_table()
                .table_name(&table)
                .send()
                .await
                .expect("table exists");
            let keys: Vec<&str> = t
                .table()
                .unwrap()
                .key_schema()
                .iter()
                .map(|k| k.attribute_name())
                .collect();
            let want: &[&str] = if table == names.votes_table() {
                &["pk", "sk"]
            } else {
                &["pk"]
            };
            assert_eq!(keys, want, "{table}");
        }
    });

    let mismatch = votes(&prefix, &["init", "--partitions", "6"]);
    assert_fails_saying(&mismatch, "exists with 4 partitions but 6 were asked for");
}

#[test]
fn init_names_an_unreachable_kafka() {
    let prefix = unique_prefix("init-down");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_votes"))
        .args(["init", "--kafka-brokers", "127.0.0.1:1"])
        .env("VOTES_PREFIX", &prefix)
        .env("VOTES_KAFKA_TIMEOUT_MS", "2000")
        .output()
        .unwrap();
    assert_fails_saying(&out, "Kafka at 127.0.0.1:1 is not reachable");
}
