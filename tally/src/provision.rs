//! `votes init`: creates the Kafka topics and DynamoDB tables of one prefix, idempotently.
//!
//! Running it again is a no-op, but it never papers over a difference that matters: a `votes`
//! topic with another partition count would re-route voters (`xxh3 % partitions`) away from the
//! shard that remembers them, so a mismatch is an error, not a silent success.

use std::time::Duration;

use aws_sdk_dynamodb::Client as DynamoClient;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType, TableStatus,
};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use votes_core::Names;

use crate::kafka::base_config;

/// Largest partition count `init` accepts: each partition is a shard with its own producer.
pub const MAX_PARTITIONS: u32 = 4096;

#[derive(Clone, Debug)]
pub struct TopicPlan {
    pub partitions: u32,
    pub replication: u16,
    /// Bound on every wait for the cluster, so a dead cluster fails fast and says so.
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Created,
    AlreadyThere,
}

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("partitions must be within 1..={MAX_PARTITIONS}, got {0}")]
    BadPartitionCount(u32),
    #[error("replication factor must be at least 1")]
    BadReplication,
    #[error("Kafka at {brokers} is not reachable or refused the request: {source}")]
    Kafka {
        brokers: String,
        #[source]
        source: KafkaError,
    },
    #[error("Kafka refused to create topic {topic}: {code}")]
    TopicRefused {
        topic: String,
        code: RDKafkaErrorCode,
    },
    #[error(
        "topic {topic} exists with {actual} partitions but {wanted} were asked for; changing the \
         partition count re-routes voters, so it is never done implicitly"
    )]
    PartitionMismatch {
        topic: String,
        actual: usize,
        wanted: u32,
    },
    #[error("DynamoDB refused to create or describe table {table}: {message}")]
    Dynamo { table: String, message: String },
}

/// The two topics as they are created: the votes log kept forever, the elections compacted;
/// both refuse an unclean leader and need two in-sync replicas out of three or more.
fn topic_specs<'a>(
    votes_topic: &'a str,
    elections_topic: &'a str,
    plan: &TopicPlan,
) -> [NewTopic<'a>; 2] {
    let replication = || TopicReplication::Fixed(i32::from(plan.replication));
    // With three or more replicas a committed vote must reach two of them before the
    // transaction commits (acks=all), so one broker loss never loses an acknowledged vote.
    let min_isr = if plan.replication >= 3 { "2" } else { "1" };
    let partitions = i32::try_from(plan.partitions).expect("bounded by MAX_PARTITIONS");
    // Records carry the broker's time, not the writing node's: a broker refuses a record
    // stamped more than an hour ahead of its own clock (`log.message.timestamp.after.max.ms`),
    // so under CreateTime a node whose clock stepped forward could commit no vote and no admin
    // write. Nothing reads a record's timestamp; a vote's own time is in its value.
    const TIMESTAMPS: (&str, &str) = ("message.timestamp.type", "LogAppendTime");
    let votes = NewTopic::new(votes_topic, partitions, replication())
        // The log is the audit trail and the recovery source: nothing is ever deleted.
        .set("retention.ms", "-1")
        .set("retention.bytes", "-1")
        .set("min.insync.replicas", min_isr)
        .set("unclean.leader.election.enable", "false")
        .set(TIMESTAMPS.0, TIMESTAMPS.1);
    let elections = NewTopic::new(elections_topic, 1, replication())
        .set("cleanup.policy", "compact")
        .set("min.insync.replicas", min_isr)
        .set("unclean.leader.election.enable", "false")
        .set(TIMESTAMPS.0, TIMESTAMPS.1);
    [votes, elections]
}

/// Creates `{prefix}votes` and the compacted `{prefix}elections`.
pub async fn create_topics(
    brokers: &str,
    names: &Names,
    plan: &TopicPlan,
) -> Result<Vec<(String, Outcome)>, ProvisionError> {
    if plan.partitions == 0 || plan.partitions > MAX_PARTITIONS {
        return Err(ProvisionError::BadPartitionCount(plan.partitions));
    }
    if plan.replication == 0 {
        return Err(ProvisionError::BadReplication);
    }
    let kafka_err = |source| ProvisionError::Kafka {
        brokers: brokers.to_owned(),
        source,
    };
    // A metadata round trip first: librdkafka retries an unreachable bootstrap list silently,
    // so without it a typo in the broker list would look like a slow topic creation.
    partition_count(brokers, "__consumer_offsets", plan.timeout)
        .await
        .map_err(kafka_err)?;
    let admin: AdminClient<DefaultClientContext> =
        base_config(brokers).create().map_err(kafka_err)?;
    let votes_topic = names.votes_topic();
    let elections_topic = names.elections_topic();
    let [votes, elections] = topic_specs(&votes_topic, &elections_topic, plan);
    let opts = AdminOptions::new()
        .operation_timeout(Some(plan.timeout))
        .request_timeout(Some(plan.timeout));
    let results = admin
        .create_topics([&votes, &elections], &opts)
        .await
        .map_err(kafka_err)?;
    let mut outcomes = Vec::with_capacity(results.len());
    for result in results {
        match result {
            Ok(topic) => outcomes.push((topic, Outcome::Created)),
            Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => {
                outcomes.push((topic, Outcome::AlreadyThere))
            }
            Err((topic, code)) => return Err(ProvisionError::TopicRefused { topic, code }),
        }
    }
    // A topic just created may not be in the answering broker's metadata yet (it shows no
    // partitions for a moment): wait for it, within the same bound.
    let deadline = std::time::Instant::now() + plan.timeout;
    let metadata = loop {
        let n = partition_count(brokers, &votes_topic, plan.timeout)
            .await
            .map_err(kafka_err)?;
        if n > 0 || std::time::Instant::now() >= deadline {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    if metadata != plan.partitions as usize {
        return Err(ProvisionError::PartitionMismatch {
            topic: votes_topic,
            actual: metadata,
            wanted: plan.partitions,
        });
    }
    Ok(outcomes)
}

/// Partitions of `topic` (0 when it does not exist), from a metadata request bounded by
/// `timeout`; the blocking librdkafka call runs on tokio's blocking pool.
async fn partition_count(
    brokers: &str,
    topic: &str,
    timeout: Duration,
) -> Result<usize, KafkaError> {
    let cfg = base_config(brokers);
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let consumer: BaseConsumer = cfg.create()?;
        let md = consumer.fetch_metadata(Some(&topic), timeout)?;
        Ok(md.topics().first().map_or(0, |t| t.partitions().len()))
    })
    .await
    .expect("the metadata task does not panic")
}

/// Creates `{prefix}votes` (pk = `{election}#{bucket}`, sk = voter) and `{prefix}results`
/// (pk = election), on-demand billing so a TV peak never meets a provisioned-capacity wall.
pub async fn create_tables(
    client: &DynamoClient,
    names: &Names,
) -> Result<Vec<(String, Outcome)>, ProvisionError> {
    let votes = names.votes_table();
    let results = names.results_table();
    let mut outcomes = Vec::with_capacity(2);
    outcomes.push((
        votes.clone(),
        create_table(
            client,
            &votes,
            ("pk", ScalarAttributeType::S),
            Some(("sk", ScalarAttributeType::N)),
        )
        .await?,
    ));
    outcomes.push((
        results.clone(),
        create_table(client, &results, ("pk", ScalarAttributeType::S), None).await?,
    ));
    Ok(outcomes)
}

async fn create_table(
    client: &DynamoClient,
    table: &str,
    hash: (&str, ScalarAttributeType),
    range: Option<(&str, ScalarAttributeType)>,
) -> Result<Outcome, ProvisionError> {
    let err = |e: &dyn std::fmt::Display| ProvisionError::Dynamo {
        table: table.to_owned(),
        message: e.to_string(),
    };
    let key = |name: &str, kind| {
        KeySchemaElement::builder()
            .attribute_name(name)
            .key_type(kind)
            .build()
            .map_err(|e| err(&e))
    };
    let attr = |name: &str, ty: ScalarAttributeType| {
        AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(ty)
            .build()
            .map_err(|e| err(&e))
    };
    let mut req = client
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .key_schema(key(hash.0, KeyType::Hash)?)
        .attribute_definitions(attr(hash.0, hash.1)?);
    if let Some((name, ty)) = range {
        req = req
            .key_schema(key(name, KeyType::Range)?)
            .attribute_definitions(attr(name, ty)?);
    }
    let outcome = match req.send().await {
        Ok(_) => Outcome::Created,
        Err(e) => {
            let service = e.as_service_error();
            if service.is_some_and(|s| s.is_resource_in_use_exception()) {
                Outcome::AlreadyThere
            } else {
                return Err(err(&aws_sdk_dynamodb::error::DisplayErrorContext(&e)));
            }
        }
    };
    wait_active(client, table).await?;
    Ok(outcome)
}

/// Longest wait for a new table to become ACTIVE (DynamoDB takes seconds; a write before then
/// fails with ResourceNotFoundException, so `init` returns only once the tables take writes).
const TABLE_ACTIVE_TIMEOUT: Duration = Duration::from_secs(300);

async fn wait_active(client: &DynamoClient, table: &str) -> Result<(), ProvisionError> {
    let deadline = tokio::time::Instant::now() + TABLE_ACTIVE_TIMEOUT;
    loop {
        let status = client
            .describe_table()
            .table_name(table)
            .send()
            .await
            .map_err(|e| ProvisionError::Dynamo {
                table: table.to_owned(),
                message: aws_sdk_dynamodb::error::DisplayErrorContext(&e).to_string(),
            })?
            .table
            .and_then(|t| t.table_status);
        if status == Some(TableStatus::Active) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ProvisionError::Dynamo {
                table: table.to_owned(),
                message: format!("not ACTIVE after {TABLE_ACTIVE_TIMEOUT:?} (status {status:?})"),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
