//! `votes audit reprocess` (docs/design.md §4.5, the brief's "reprocess events"): the election's
//! committed votes replayed from Kafka into a fresh prefix — new DynamoDB tables and new Redis
//! tally keys, written by the same code paths as the persister and the fan-out — then counted
//! back from there and compared with the official result.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use votes_core::merkle::Hash;
use votes_core::{ElectionId, Names};

use crate::audit::LogSummary;
use crate::persist::{PersistStats, vote_item, write_all};
use crate::recount::{RecountConfig, RecountError, dynamo_counts, hex, redis_counts};

/// Items per BatchWriteItem wave during the replay.
const WRITE_CHUNK: usize = 5_000;

#[derive(Clone, Debug)]
pub struct ReprocessConfig {
    pub brokers: String,
    pub redis: crate::RedisTarget,
    /// Where the election lives.
    pub source: Names,
    /// The fresh prefix the replay writes into.
    pub into: Names,
    pub audit_key: Vec<u8>,
    pub kafka_timeout: Duration,
}

#[derive(Clone, Debug, Default)]
pub struct ReprocessReport {
    pub replay: BTreeMap<String, u64>,
    pub dynamodb: BTreeMap<String, u64>,
    pub redis: BTreeMap<String, u64>,
    /// The official result of the source prefix (`{prefix}results`), if there is one.
    pub official: Option<BTreeMap<String, u64>>,
    pub official_root: Option<String>,
    pub root: Hash,
    pub tree_size: u64,
}

impl ReprocessReport {
    /// Every count agrees with the official result, and so does the Merkle root.
    pub fn agrees(&self) -> bool {
        let Some(official) = &self.official else {
            return false;
        };
        let nonzero = |m: &BTreeMap<String, u64>| -> BTreeMap<String, u64> {
            m.iter()
                .filter(|(_, n)| **n > 0)
                .map(|(k, n)| (k.clone(), *n))
                .collect()
        };
        let o = nonzero(official);
        nonzero(&self.replay) == o
            && nonzero(&self.dynamodb) == o
            && nonzero(&self.redis) == o
            && self.official_root.as_deref() == Some(hex(&self.root).as_str())
    }
}

/// Replays the election's committed votes from `cfg.source` into the tables and Redis keys of
/// `cfg.into`, then counts the new copies the three ways the recount does, beside the official
/// result of the source.
pub async fn reprocess(
    cfg: &ReprocessConfig,
    dynamo: &aws_sdk_dynamodb::Client,
    election: &ElectionId,
) -> Result<ReprocessReport, RecountError> {
    assert_ne!(
        cfg.source, cfg.into,
        "reprocessing writes into a prefix of its own"
    );
    crate::provision::create_tables(dynamo, &cfg.into)
        .await
        .map_err(|e| RecountError::Dynamo(e.to_string()))?;
    let (summary, per_partition) = replay_into_dynamo(cfg, dynamo, election).await?;
    publish_tallies(cfg, election, &summary, &per_partition)?;
    let dynamodb = dynamo_counts(dynamo, &cfg.into.votes_table(), election).await?;
    let recount_view = RecountConfig {
        brokers: cfg.brokers.clone(),
        redis: cfg.redis.clone(),
        names: cfg.into.clone(),
        audit_key: cfg.audit_key.clone(),
        persist_group: String::new(),
        catch_up_timeout: Duration::ZERO,
        redis_settle: Duration::ZERO,
        kafka_timeout: cfg.kafka_timeout,
    };
    let partitions = u32::try_from(summary.ends.len()).expect("partitions fit u32");
    let redis = redis_counts(&recount_view, election, partitions)?;
    let (official, official_root) = stored_official(cfg, dynamo, election).await?;
    Ok(ReprocessReport {
        replay: summary.totals,
        dynamodb,
        redis,
        official,
        official_root,
        root: summary.root,
        tree_size: summary.tree_size,
    })
}

/// Counted votes per partition and option, as the fan-out keeps them.
type PartitionTallies = BTreeMap<u32, BTreeMap<String, u64>>;

/// The replay: items to the new votes table (as the persister writes them), tallies per
/// partition kept for the new Redis keys (as the fan-out writes them). The log is read on a
/// blocking thread; the writes go through the runtime in chunks.
async fn replay_into_dynamo(
    cfg: &ReprocessConfig,
    dynamo: &aws_sdk_dynamodb::Client,
    election: &ElectionId,
) -> Result<(LogSummary, PartitionTallies), RecountError> {
    let handle = tokio::runtime::Handle::current();
    let c = cfg.clone();
    let (d, id) = (dynamo.clone(), election.clone());
    tokio::task::spawn_blocking(move || {
        let table = c.into.votes_table();
        let stats = Arc::new(PersistStats::default());
        let mut chunk = Vec::with_capacity(WRITE_CHUNK);
        let mut per_partition = PartitionTallies::new();
        let mut failed: Option<RecountError> = None;
        let flush = |chunk: &mut Vec<HashMap<String, AttributeValue>>| {
            let items = std::mem::take(chunk);
            handle
                .block_on(write_all(&d, &table, items, 16, &stats))
                .map_err(|e| RecountError::Dynamo(e.to_string()))
        };
        let summary = crate::audit::for_each_counted(
            &c.brokers,
            &c.source,
            &c.audit_key,
            &id,
            c.kafka_timeout,
            |counted| {
                if failed.is_some() {
                    return;
                }
                let record = votes_core::VoteRecord {
                    election: counted.leaf.election.clone(),
                    voter: counted.voter,
                    option: counted.leaf.option.clone(),
                    received_at_ms: counted.received_at_ms,
                    node: String::new(),
                    core: 0,
                    nonce: counted.leaf.nonce,
                };
                chunk.push(vote_item(
                    &c.audit_key,
                    &record,
                    counted.leaf.partition,
                    counted.leaf.offset,
                ));
                *per_partition
                    .entry(counted.leaf.partition)
                    .or_default()
                    .entry(counted.leaf.option.as_str().to_owned())
                    .or_default() += 1;
                if chunk.len() >= WRITE_CHUNK
                    && let Err(e) = flush(&mut chunk)
                {
                    failed = Some(e);
                }
            },
        )?;
        if let Some(e) = failed {
            return Err(e);
        }
        flush(&mut chunk)?;
        Ok::<_, RecountError>((summary, per_partition))
    })
    .await
    .map_err(|e| RecountError::Dynamo(format!("the replay task failed: {e}")))?
}

/// The new Redis tallies, through the same offset-guarded script as the fan-out.
fn publish_tallies(
    cfg: &ReprocessConfig,
    election: &ElectionId,
    summary: &LogSummary,
    per_partition: &PartitionTallies,
) -> Result<(), RecountError> {
    let client = cfg.redis.client()?;
    let mut conn = client.get_connection_with_timeout(Duration::from_secs(5))?;
    let script = redis::Script::new(crate::read_model::PUBLISH_TALLY_LUA);
    for (partition, counts) in per_partition {
        let mut invocation = script.key(cfg.into.redis_tally_key(election.as_str(), *partition));
        invocation.arg(summary.ends[*partition as usize].to_string());
        for (option, n) in counts {
            invocation.arg(option).arg(*n);
        }
        let _: i64 = invocation.invoke(&mut conn)?;
    }
    Ok(())
}

/// The source's official result (its totals and Merkle root), if the recount wrote one.
async fn stored_official(
    cfg: &ReprocessConfig,
    dynamo: &aws_sdk_dynamodb::Client,
    election: &ElectionId,
) -> Result<(Option<BTreeMap<String, u64>>, Option<String>), RecountError> {
    let stored = dynamo
        .get_item()
        .table_name(cfg.source.results_table())
        .key("pk", AttributeValue::S(election.to_string()))
        .consistent_read(true)
        .send()
        .await
        .map_err(|e| {
            RecountError::Dynamo(aws_sdk_dynamodb::error::DisplayErrorContext(e).to_string())
        })?
        .item;
    let official = stored.as_ref().and_then(|item| {
        let totals = item.get("totals")?.as_m().ok()?;
        totals
            .iter()
            .map(|(k, v)| Some((k.clone(), v.as_n().ok()?.parse().ok()?)))
            .collect::<Option<BTreeMap<String, u64>>>()
    });
    let official_root = stored
        .as_ref()
        .and_then(|item| item.get("merkle_root")?.as_s().ok().cloned());
    Ok((official, official_root))
}
