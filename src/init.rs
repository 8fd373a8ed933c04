//! `votes init`: topics and tables for one prefix, idempotently (docs/design.md §4.1).

use anyhow::{Context, Result};
use votes_tally::provision::{self, Outcome, TopicPlan};

use crate::Common;

#[derive(clap::Args, Debug)]
pub struct InitArgs {
    /// Partitions of the `votes` topic; fixed for the life of the deployment.
    #[arg(long, env = "VOTES_PARTITIONS", default_value_t = 8)]
    pub partitions: u32,
    /// Replicas of every topic (3 on a production cluster).
    #[arg(long, env = "VOTES_REPLICATION_FACTOR", default_value_t = 1)]
    pub replication_factor: u16,
    /// Bound on each wait for Kafka, in milliseconds.
    #[arg(long, env = "VOTES_KAFKA_TIMEOUT_MS", default_value_t = 30_000)]
    pub kafka_timeout_ms: u64,
}

pub async fn run(common: &Common, args: &InitArgs) -> Result<()> {
    let names = common.names()?;
    let plan = TopicPlan {
        partitions: args.partitions,
        replication: args.replication_factor,
        timeout: std::time::Duration::from_millis(args.kafka_timeout_ms),
    };
    let topics = provision::create_topics(&common.kafka_brokers, &names, &plan)
        .await
        .context("creating Kafka topics")?;
    let dynamo = votes_tally::dynamo::client(common.dynamodb_endpoint()).await;
    let tables = provision::create_tables(&dynamo, &names)
        .await
        .context("creating DynamoDB tables")?;
    for (kind, (name, outcome)) in topics
        .iter()
        .map(|t| ("topic", t))
        .chain(tables.iter().map(|t| ("table", t)))
    {
        let what = match outcome {
            Outcome::Created => "created",
            Outcome::AlreadyThere => "already there",
        };
        println!("{kind} {name}: {what}");
    }
    Ok(())
}
