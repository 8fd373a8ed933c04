//! Recovery of a shard from its partition's committed log (DESIGN §3.3): read with
//! `read_committed` from the shard's `applied_end` to the last stable offset and apply every
//! record. Blocking; runs on the blocking pool with the shard moved in and back out.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use votes_core::{Names, VoteRecord};

use crate::kafka::read_committed_consumer_config;
use crate::shard::{Shard, ShardState};

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("replaying partition {partition}: {source}")]
    Kafka {
        partition: u32,
        #[source]
        source: KafkaError,
    },
    #[error("replaying partition {partition} did not reach the end within {timeout:?}")]
    Timeout { partition: u32, timeout: Duration },
}

/// Progress of a replay, reported every few thousand records (for `/metrics`).
#[derive(Clone, Copy, Debug, Default)]
pub struct ReplayProgress {
    pub records: u64,
    pub offset: u64,
    pub undecodable: u64,
}

/// What a snapshot is checked against: the identity of the partition's log
/// ([`votes_core::snapshot::log_id`] of its first committed record, `None` while it holds
/// none) and its high watermark (the offset after its last record: a snapshot claiming more
/// is of another log).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogIdentity {
    pub id: Option<u64>,
    pub end: u64,
}

pub fn log_identity(
    brokers: &str,
    names: &Names,
    partition: u32,
    timeout: Duration,
) -> Result<LogIdentity, ReplayError> {
    let kafka = |source| ReplayError::Kafka { partition, source };
    let consumer: BaseConsumer<crate::kafka::VotesContext> =
        read_committed_consumer_config(brokers, &format!("{}replay", names.prefix()))
            .create_with_context(crate::kafka::VotesContext)
            .map_err(kafka)?;
    let (_, high) = consumer
        .fetch_watermarks(
            &names.votes_topic(),
            i32::try_from(partition).expect("partition fits i32"),
            timeout,
        )
        .map_err(kafka)?;
    let end = u64::try_from(high).unwrap_or(0);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(
        &names.votes_topic(),
        i32::try_from(partition).expect("partition fits i32"),
        Offset::Beginning,
    )
    .map_err(kafka)?;
    consumer.assign(&tpl).map_err(kafka)?;
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let offset = u64::try_from(m.offset()).expect("a consumed record has an offset");
                let id = votes_core::snapshot::log_id(
                    offset,
                    m.key().unwrap_or_default(),
                    m.payload().unwrap_or_default(),
                );
                return Ok(LogIdentity { id: Some(id), end });
            }
            Some(Err(KafkaError::PartitionEOF(_))) => return Ok(LogIdentity { id: None, end }),
            Some(Err(e)) => return Err(kafka(e)),
            None => {}
        }
    }
    Err(ReplayError::Timeout { partition, timeout })
}

/// Replays `shard`'s partition from its `applied_end` to the end of the committed log, then
/// marks it recovered. `timeout` bounds the silence between two answers of the broker, not
/// the whole replay (a long log legitimately takes long).
pub fn replay(
    brokers: &str,
    names: &Names,
    mut shard: Shard,
    timeout: Duration,
    mut progress: impl FnMut(ReplayProgress),
) -> Result<Shard, ReplayError> {
    assert_eq!(
        shard.state(),
        ShardState::Recovering,
        "only a recovering shard replays"
    );
    let partition = shard.partition();
    let kafka = |source| ReplayError::Kafka { partition, source };
    // No group: the shard owns the position (its applied_end); nothing is committed to Kafka.
    let consumer: BaseConsumer<crate::kafka::VotesContext> =
        read_committed_consumer_config(brokers, &format!("{}replay", names.prefix()))
            .set("fetch.max.bytes", "52428800")
            .set("max.partition.fetch.bytes", "10485760")
            .create_with_context(crate::kafka::VotesContext)
            .map_err(kafka)?;
    let topic = names.votes_topic();
    let mut tpl = TopicPartitionList::new();
    let start = i64::try_from(shard.applied_end()).expect("offsets fit i64");
    tpl.add_partition_offset(
        &topic,
        i32::try_from(partition).expect("partition fits i32"),
        Offset::Offset(start),
    )
    .map_err(kafka)?;
    consumer.assign(&tpl).map_err(kafka)?;
    let mut p = ReplayProgress {
        offset: shard.applied_end(),
        ..Default::default()
    };
    let mut last_answer = Instant::now();
    loop {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                last_answer = Instant::now();
                let offset = u64::try_from(m.offset()).expect("a consumed record has an offset");
                match m.payload().map(VoteRecord::decode) {
                    Some(Ok(record)) => shard.apply_committed(offset, &record),
                    // Not written by a shard (every shard writes valid records): it counts for
                    // nobody, and the metric makes it visible.
                    _ => p.undecodable += 1,
                }
                p.records += 1;
                p.offset = offset + 1;
                if p.records.is_multiple_of(10_000) {
                    progress(p);
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) => {
                // At EOF the consumer's position is the end of what read_committed can see.
                let end = consumer
                    .position()
                    .map_err(kafka)?
                    .elements()
                    .first()
                    .and_then(|e| e.offset().to_raw())
                    .and_then(|o| u64::try_from(o).ok())
                    .unwrap_or(p.offset)
                    .max(p.offset);
                p.offset = end;
                progress(p);
                shard.finish_recovery(end);
                return Ok(shard);
            }
            Some(Err(e)) => return Err(kafka(e)),
            None => {
                if last_answer.elapsed() > timeout {
                    return Err(ReplayError::Timeout { partition, timeout });
                }
            }
        }
    }
}
