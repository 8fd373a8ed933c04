//! `votes persist` (docs/design.md §3.5): the committed `votes` log → DynamoDB, the source of truth.
//!
//! A consumer group (`{prefix}persist`, cooperative-sticky, optional static membership) reads
//! with `read_committed` and works in rounds: take what arrived (≤ `batch_max` records), turn
//! each record into one item keyed by (`{election}#{bucket}`, voter), read which of their keys
//! already hold an item (BatchGetItem, consistent), write the others (BatchWriteItem, 25 per
//! call, ≤ `concurrency` calls in flight; throttling and unprocessed items retried with
//! jittered backoff; a voter's first committed record wins, docs/design.md §7, see
//! [`write_all`]), and only then commit the consumer offsets. A crash loses at most a round's
//! progress, never an item: the next owner rewrites from the last commit, and a rewrite is the
//! same item (idempotent, docs/design.md §3.5).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::AttributeValue;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use votes_core::receipt::Leaf;
use votes_core::record::LogRecord;
use votes_core::{Names, VoteRecord, vote_item_pk};

use crate::dynamo::{Backoff, retriable};
use crate::kafka::{VotesContext, read_committed_consumer_config};

/// Items per BatchWriteItem call (DynamoDB's limit).
pub const BATCH_WRITE_MAX: usize = 25;
/// How long a round waits for more records once it has some.
const ROUND_LINGER: Duration = Duration::from_millis(20);
/// How often the lag per partition (`votes_persist_lag`) is read from the brokers.
const LAG_EVERY: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct PersistConfig {
    pub brokers: String,
    pub names: Names,
    pub audit_key: Vec<u8>,
    /// Consumer group; every persister of a deployment shares it.
    pub group: String,
    /// `group.instance.id` (static membership): a restart within the session timeout keeps
    /// its partitions without a rebalance.
    pub instance_id: Option<String>,
    /// Records per round (and so the most work a crash can make the next owner redo).
    pub batch_max: usize,
    /// Batch calls in flight (reads of 100 keys, writes of 25 items).
    pub concurrency: usize,
    /// Exit once this member holds every partition and each is persisted to its end (a single
    /// persister: tests, measurements).
    pub exit_when_caught_up: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("Kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("DynamoDB refused a write for good: {0}")]
    Dynamo(String),
}

/// Figures for `/metrics` and the progress line; written by the persister only.
#[derive(Default)]
pub struct PersistStats {
    pub items: AtomicU64,
    pub rounds: AtomicU64,
    pub retries: AtomicU64,
    pub undecodable: AtomicU64,
    /// Items not written because an earlier record of their voter holds the item (a rewrite
    /// after a crash, or a voter's later record: first vote wins).
    pub kept_first: AtomicU64,
    /// Lag per partition (high watermark − committed), refreshed every few seconds.
    pub lag: std::sync::Mutex<BTreeMap<u32, i64>>,
    /// Consumers replaced after their client failed for good (FENCED_INSTANCE_ID and the like).
    pub rejoins: AtomicU64,
}

/// The item of one committed vote (docs/design.md §4.4).
pub fn vote_item(
    audit_key: &[u8],
    record: &VoteRecord,
    partition: u32,
    offset: u64,
) -> HashMap<String, AttributeValue> {
    let leaf = Leaf::of(audit_key, record.clone().into(), partition, offset);
    let n = |v: u64| AttributeValue::N(v.to_string());
    HashMap::from([
        (
            "pk".to_owned(),
            AttributeValue::S(vote_item_pk(record.election.as_str(), record.voter)),
        ),
        ("sk".to_owned(), n(record.voter.0)),
        (
            "option".to_owned(),
            AttributeValue::S(record.option.as_str().to_owned()),
        ),
        ("received_at".to_owned(), n(record.received_at_ms)),
        ("partition".to_owned(), n(u64::from(partition))),
        ("offset".to_owned(), n(offset)),
        ("receipt".to_owned(), AttributeValue::S(leaf.receipt_hex())),
    ])
}

/// After a fatal consumer error, the wait before a new consumer joins: doubling up to the
/// second bound, back to the first once a consumer lasted [`REJOIN_STABLE`] (a duplicate
/// process with the same instance id churns slowly rather than in a tight loop).
const REJOIN_BACKOFF: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(10));
const REJOIN_STABLE: Duration = Duration::from_secs(60);

/// How one consumer's life ended.
enum Ended {
    /// Asked to stop, or caught up with `exit_when_caught_up`.
    Done,
    /// The client is out of the group for good (librdkafka's fatal error): e.g.
    /// FENCED_INSTANCE_ID, which librdkafka's own rejoin meets across a coordinator failover.
    /// It never consumes again, so a new one must join.
    Fatal { code: String, reason: String },
}

/// Persists committed votes until `stop` (or, with `exit_when_caught_up`, until every
/// partition is written to its end): rounds of records, each written to DynamoDB before its
/// offsets are committed. A consumer that failed for good is replaced by a new one under the
/// same instance id, which resumes from the committed offsets (the writes are idempotent).
pub async fn run(
    cfg: PersistConfig,
    dynamo: Client,
    stats: Arc<PersistStats>,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), PersistError> {
    assert!(cfg.batch_max > 0 && cfg.concurrency > 0, "positive limits");
    let topic = cfg.names.votes_topic();
    let mut stop = std::pin::pin!(stop);
    let mut backoff = REJOIN_BACKOFF.0;
    loop {
        let (consumer, partitions) = subscribe(&cfg, &topic)?;
        let joined = Instant::now();
        match persist_rounds(&cfg, &dynamo, &stats, &consumer, partitions, &mut stop).await? {
            Ended::Done => return Ok(()),
            Ended::Fatal { code, reason } => {
                tracing::error!(%code, %reason, ?backoff, "the persister's consumer left the group for good; a new one joins");
                stats.rejoins.fetch_add(1, Ordering::Relaxed);
                drop(consumer);
                if joined.elapsed() >= REJOIN_STABLE {
                    backoff = REJOIN_BACKOFF.0;
                }
                tokio::select! {
                    _ = &mut stop => return Ok(()),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(REJOIN_BACKOFF.1);
            }
        }
    }
}

/// The fatal error of `consumer`'s client, if it has one.
fn fatal(consumer: &StreamConsumer<VotesContext>) -> Option<Ended> {
    consumer
        .client()
        .fatal_error()
        .map(|(code, reason)| Ended::Fatal {
            code: format!("{code:?}"),
            reason,
        })
}

/// The rounds of one consumer, until stopped, caught up, or its client failed for good.
async fn persist_rounds(
    cfg: &PersistConfig,
    dynamo: &Client,
    stats: &Arc<PersistStats>,
    consumer: &StreamConsumer<VotesContext>,
    partitions: usize,
    stop: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> Result<Ended, PersistError> {
    let topic = cfg.names.votes_topic();
    let table = cfg.names.votes_table();
    let topic_partitions = u32::try_from(partitions).expect("a topic's partitions fit u32");
    let mut at_end: HashMap<u32, bool> = HashMap::new();
    let mut last_lag = Instant::now();
    loop {
        if let Some(ended) = fatal(consumer) {
            return Ok(ended);
        }
        let first = tokio::select! {
            _ = &mut *stop => return Ok(Ended::Done),
            m = consumer.recv() => m,
            // An idle persister still refreshes its lag: what it reported while catching up
            // would otherwise stand until the next vote (recv is cancellation safe).
            _ = tokio::time::sleep(LAG_EVERY.saturating_sub(last_lag.elapsed())) => {
                last_lag = Instant::now();
                refresh_lag(consumer, &topic, stats);
                continue;
            }
        };
        let round = gather_round(consumer, first, cfg, stats, &mut at_end, topic_partitions).await;
        // Offsets to commit: one past the last record of each partition in the round.
        let mut commit: BTreeMap<u32, u64> = BTreeMap::new();
        for (p, o, _) in &round.items {
            let e = commit.entry(*p).or_insert(0);
            *e = (*e).max(o + 1);
        }
        write_all(
            dynamo,
            &table,
            dedup_first(round.items),
            cfg.concurrency,
            stats,
        )
        .await?;
        stats.rounds.fetch_add(1, Ordering::Relaxed);
        // A failed client commits nothing: what it wrote is durable and idempotent, and its
        // successor reads it again from the last committed offsets.
        if let Some(ended) = fatal(consumer) {
            return Ok(ended);
        }
        commit_round(consumer, &topic, commit, &round.eof)?;
        if last_lag.elapsed() >= LAG_EVERY {
            last_lag = Instant::now();
            refresh_lag(consumer, &topic, stats);
        }
        if cfg.exit_when_caught_up {
            // Caught up = this member holds every partition and each is at its end: a member
            // that holds only some cannot tell what the others (or a dead one) left behind.
            let assigned = consumer.assignment().map(|a| a.count()).unwrap_or(0);
            if assigned == partitions && at_end.len() == partitions && at_end.values().all(|e| *e) {
                refresh_lag(consumer, &topic, stats);
                tracing::info!("every assigned partition is persisted to its end");
                return Ok(Ended::Done);
            }
        }
    }
}

/// The persisters' consumer of the votes topic, subscribed, and the topic's partition count.
fn subscribe(
    cfg: &PersistConfig,
    topic: &str,
) -> Result<(StreamConsumer<VotesContext>, usize), PersistError> {
    let mut kcfg = read_committed_consumer_config(&cfg.brokers, &cfg.group);
    kcfg.set("partition.assignment.strategy", "cooperative-sticky")
        .set("fetch.max.bytes", "52428800")
        // A persister that died holds its partitions until the session times out: 10 s bounds
        // how long DynamoDB falls behind (librdkafka's default is 45 s). A restart with the
        // same static id takes them back at once.
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "2000");
    if let Some(id) = &cfg.instance_id {
        kcfg.set("group.instance.id", id);
    }
    let consumer: StreamConsumer<VotesContext> = kcfg.create_with_context(VotesContext)?;
    consumer.subscribe(&[topic])?;
    let partitions = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(30))?
        .topics()
        .first()
        .map_or(0, |t| t.partitions().len());
    Ok((consumer, partitions))
}

/// One round's records: the vote items in log order, and the partitions found at their end.
struct Round {
    items: Vec<(u32, u64, HashMap<String, AttributeValue>)>,
    eof: Vec<u32>,
}

/// Records as they come after `first`, until the batch is full or a short silence.
async fn gather_round(
    consumer: &StreamConsumer<VotesContext>,
    first: KafkaResult<BorrowedMessage<'_>>,
    cfg: &PersistConfig,
    stats: &PersistStats,
    at_end: &mut HashMap<u32, bool>,
    partitions: u32,
) -> Round {
    let mut round = Round {
        items: Vec::new(),
        eof: Vec::new(),
    };
    let mut next = Some(first);
    let round_started = Instant::now();
    while let Some(m) = next.take() {
        match m {
            Ok(m) => {
                let (p, o) = (m.partition() as u32, m.offset() as u64);
                at_end.insert(p, false);
                match m.payload().map(LogRecord::decode) {
                    Some(Ok(LogRecord::Vote(record))) => {
                        if partitions > 0 && votes_core::partition_of(record.voter, partitions) != p
                        {
                            // write_all's first-vote-wins rests on a voter's records sharing a
                            // partition: the recount's counts will disagree over this one.
                            tracing::error!(
                                partition = p,
                                offset = o,
                                voter = record.voter.0,
                                "a vote record outside its voter's partition"
                            );
                        }
                        round
                            .items
                            .push((p, o, vote_item(&cfg.audit_key, &record, p, o)))
                    }
                    // A close marker (docs/design.md §7): the recount reads it from the log.
                    Some(Ok(LogRecord::Close(_))) => {}
                    other => {
                        // Never produced by a shard: counted and logged, not written. The
                        // recount's replay cannot count it either, so the counts still agree.
                        stats.undecodable.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(
                            partition = p,
                            offset = o,
                            ?other,
                            "undecodable record skipped"
                        );
                    }
                }
            }
            Err(KafkaError::PartitionEOF(p)) => {
                round.eof.push(p as u32);
                at_end.insert(p as u32, true);
            }
            Err(e) => {
                tracing::warn!(error = %e, "consumer error");
            }
        }
        if round.items.len() >= cfg.batch_max {
            break;
        }
        let left = ROUND_LINGER.saturating_sub(round_started.elapsed());
        if let Ok(m) = tokio::time::timeout(left, consumer.recv()).await {
            next = Some(m);
        }
    }
    round
}

/// Commits the round's offsets, once its items are durable in DynamoDB. A partition at its end
/// commits its position, past the transaction markers, so its lag reads 0 and the recount sees
/// it caught up.
fn commit_round(
    consumer: &StreamConsumer<VotesContext>,
    topic: &str,
    mut commit: BTreeMap<u32, u64>,
    eof: &[u32],
) -> Result<(), PersistError> {
    if !eof.is_empty()
        && let Ok(pos) = consumer.position()
    {
        for p in eof {
            if let Some(Offset::Offset(o)) =
                pos.find_partition(topic, *p as i32).map(|e| e.offset())
            {
                let e = commit.entry(*p).or_insert(0);
                *e = (*e).max(o as u64);
            }
        }
    }
    if commit.is_empty() {
        return Ok(());
    }
    let mut tpl = TopicPartitionList::new();
    for (p, o) in &commit {
        tpl.add_partition_offset(topic, *p as i32, Offset::Offset(*o as i64))?;
    }
    // Durable in DynamoDB up to here; a failed commit (a rebalance took the partition) only
    // makes the next owner rewrite the same items.
    if let Err(e) = tokio::task::block_in_place(|| consumer.commit(&tpl, CommitMode::Sync)) {
        tracing::warn!(error = %e, "offset commit failed; the next owner rewrites those items");
    }
    Ok(())
}

/// Keeps the first record of each (election, voter) in log order: a later committed record of
/// the same voter is never counted (docs/design.md §3.3), so it must not replace the first item.
fn dedup_first(
    items: Vec<(u32, u64, HashMap<String, AttributeValue>)>,
) -> Vec<HashMap<String, AttributeValue>> {
    let mut seen = std::collections::HashSet::with_capacity(items.len());
    items
        .into_iter()
        .filter_map(|(_, _, item)| {
            let key = (
                item["pk"].as_s().ok()?.clone(),
                item["sk"].as_n().ok()?.clone(),
            );
            seen.insert(key).then_some(item)
        })
        .collect()
}

fn refresh_lag(consumer: &StreamConsumer<VotesContext>, topic: &str, stats: &PersistStats) {
    let lag = tokio::task::block_in_place(|| -> Result<BTreeMap<u32, i64>, KafkaError> {
        let assigned = consumer.assignment()?;
        let committed = consumer.committed_offsets(assigned, Duration::from_secs(5))?;
        let mut out = BTreeMap::new();
        for e in committed.elements_for_topic(topic) {
            let (_, high) =
                consumer.fetch_watermarks(topic, e.partition(), Duration::from_secs(5))?;
            let done = match e.offset() {
                Offset::Offset(o) => o,
                _ => 0,
            };
            out.insert(e.partition() as u32, (high - done).max(0));
        }
        Ok(out)
    });
    match lag {
        Ok(l) => *stats.lag.lock().unwrap_or_else(|p| p.into_inner()) = l,
        Err(e) => tracing::debug!(error = %e, "lag not refreshed"),
    }
}

/// Keys per BatchGetItem call (DynamoDB's limit).
pub const BATCH_GET_MAX: usize = 100;

/// A vote item's key: (`pk`, `sk`) as DynamoDB holds them.
type ItemKey = (String, String);

fn key_of(item: &HashMap<String, AttributeValue>) -> Option<ItemKey> {
    Some((
        item.get("pk")?.as_s().ok()?.clone(),
        item.get("sk")?.as_n().ok()?.clone(),
    ))
}

fn offset_of(item: &HashMap<String, AttributeValue>) -> Option<u64> {
    item.get("offset")?.as_n().ok()?.parse().ok()
}

/// Writes a round's items (the first of each voter in the round, in log order) so that a
/// voter's first committed record wins (docs/design.md §7): an item is written where its voter
/// has none, or over the item of a later record of the same voter; a rewrite of the same
/// record (a round redone after a crash) and a voter's later record leave the item alone.
///
/// Why a consistent read then unconditional batch writes, not one conditional put per item:
/// the per-call cost of the SDK (signing, serialising, an HTTP exchange) was most of the
/// persister's CPU at one item per call, and BatchWriteItem takes 25 items without
/// conditions. The read decides as the condition did because of how the log is written and
/// read: a voter's records all live in one partition (`partition_of`; `gather_round` logs any
/// record that breaks it); every writer of a partition (its member, a zombie still finishing a
/// round, a fenced member's successor) goes through it in offset order from a durable prefix
/// (the committed offset it started from, each round written before the next starts, offsets
/// committed only below what is written); and nothing deletes a vote item. So when any writer
/// reads the key of a voter's later record, the item of the voter's first record is already
/// there to be found, and the only item ever written to a key is that first record's (an item
/// is a function of its record).
pub async fn write_all(
    dynamo: &Client,
    table: &str,
    items: Vec<HashMap<String, AttributeValue>>,
    concurrency: usize,
    stats: &Arc<PersistStats>,
) -> Result<(), PersistError> {
    assert!(concurrency > 0, "at least one call in flight");
    let total = items.len() as u64;
    let keyed: Vec<(ItemKey, u64, HashMap<String, AttributeValue>)> = items
        .into_iter()
        .map(|item| {
            let key = key_of(&item).expect("a vote item has its key (vote_item)");
            let offset = offset_of(&item).expect("a vote item has its offset (vote_item)");
            (key, offset, item)
        })
        .collect();
    // Two items of one voter in a round would race in the batch writes: the caller keeps the
    // first (dedup_first).
    let mut keys = std::collections::HashSet::with_capacity(keyed.len());
    assert!(
        keyed.iter().all(|(key, _, _)| keys.insert(key)),
        "one item per voter in a round"
    );
    let held = held_offsets(dynamo, table, &keyed, concurrency, stats).await?;
    let mut writes = Vec::with_capacity(keyed.len());
    for (key, offset, item) in keyed {
        match held.get(&key) {
            // An item of the same record (a rewrite) or of an earlier one: it stays.
            Some(&at) if at <= offset => {
                stats.kept_first.fetch_add(1, Ordering::Relaxed);
            }
            _ => writes.push(item),
        }
    }
    let mut calls = tokio::task::JoinSet::new();
    // Items move into their chunk: a copy of each item map per round would be pure waste.
    let mut writes = writes.into_iter().peekable();
    loop {
        while calls.len() < concurrency && writes.peek().is_some() {
            let chunk: Vec<_> = writes.by_ref().take(BATCH_WRITE_MAX).collect();
            let (dynamo, table, stats) = (dynamo.clone(), table.to_owned(), stats.clone());
            calls.spawn(async move { write_chunk(&dynamo, &table, chunk, &stats).await });
        }
        match calls.join_next().await {
            None => break,
            Some(Ok(Ok(()))) => {}
            Some(Ok(Err(e))) => return Err(e),
            Some(Err(e)) => return Err(PersistError::Dynamo(format!("a write task failed: {e}"))),
        }
    }
    stats.items.fetch_add(total, Ordering::Relaxed);
    Ok(())
}

/// The offset each of `items`' keys holds in the table now (strongly consistent reads), for
/// the keys that have an item.
async fn held_offsets(
    dynamo: &Client,
    table: &str,
    items: &[(ItemKey, u64, HashMap<String, AttributeValue>)],
    concurrency: usize,
    stats: &Arc<PersistStats>,
) -> Result<HashMap<ItemKey, u64>, PersistError> {
    let mut held = HashMap::new();
    let mut calls = tokio::task::JoinSet::new();
    let mut chunks = items.chunks(BATCH_GET_MAX).map(|chunk| {
        chunk
            .iter()
            .map(|(_, _, item)| {
                HashMap::from([
                    ("pk".to_owned(), item["pk"].clone()),
                    ("sk".to_owned(), item["sk"].clone()),
                ])
            })
            .collect::<Vec<_>>()
    });
    loop {
        while calls.len() < concurrency {
            let Some(keys) = chunks.next() else { break };
            let (dynamo, table, stats) = (dynamo.clone(), table.to_owned(), stats.clone());
            calls.spawn(async move { read_chunk(&dynamo, &table, keys, &stats).await });
        }
        match calls.join_next().await {
            None => return Ok(held),
            Some(Ok(Ok(found))) => held.extend(found),
            Some(Ok(Err(e))) => return Err(e),
            Some(Err(e)) => return Err(PersistError::Dynamo(format!("a read task failed: {e}"))),
        }
    }
}

/// One BatchGetItem of at most [`BATCH_GET_MAX`] keys: the offsets held by the keys that
/// have an item.
async fn read_chunk(
    dynamo: &Client,
    table: &str,
    keys: Vec<HashMap<String, AttributeValue>>,
    stats: &PersistStats,
) -> Result<Vec<(ItemKey, u64)>, PersistError> {
    use aws_sdk_dynamodb::types::KeysAndAttributes;
    assert!(
        keys.len() <= BATCH_GET_MAX,
        "a read asks at most {BATCH_GET_MAX} keys"
    );
    until_processed(keys, stats, |keys| async move {
        let ask = KeysAndAttributes::builder()
            .set_keys(Some(keys))
            .consistent_read(true)
            .projection_expression("pk, sk, #offset")
            .expression_attribute_names("#offset", "offset")
            .build()
            .expect("keys are set");
        let out = dynamo
            .batch_get_item()
            .request_items(table, ask)
            .send()
            .await?;
        let found = out
            .responses()
            .and_then(|r| r.get(table))
            .into_iter()
            .flatten()
            .filter_map(|item| Some((key_of(item)?, offset_of(item)?)))
            .collect();
        let left = out
            .unprocessed_keys()
            .and_then(|u| u.get(table))
            .map(|k| k.keys().to_vec())
            .unwrap_or_default();
        Ok((found, left))
    })
    .await
}

/// One BatchWriteItem of at most [`BATCH_WRITE_MAX`] puts.
async fn write_chunk(
    dynamo: &Client,
    table: &str,
    items: Vec<HashMap<String, AttributeValue>>,
    stats: &PersistStats,
) -> Result<(), PersistError> {
    use aws_sdk_dynamodb::types::{PutRequest, WriteRequest};
    assert!(
        items.len() <= BATCH_WRITE_MAX,
        "a chunk holds at most {BATCH_WRITE_MAX} items"
    );
    let requests = items
        .into_iter()
        .map(|item| {
            let put = PutRequest::builder()
                .set_item(Some(item))
                .build()
                .expect("the item is set");
            WriteRequest::builder().put_request(put).build()
        })
        .collect();
    // A write finds nothing: only what is left matters.
    let _: Vec<()> = until_processed(requests, stats, |requests| async move {
        let out = dynamo
            .batch_write_item()
            .request_items(table, requests)
            .send()
            .await?;
        let left = out
            .unprocessed_items()
            .and_then(|u| u.get(table))
            .cloned()
            .unwrap_or_default();
        Ok((Vec::new(), left))
    })
    .await?;
    Ok(())
}

/// Sends `pending` through `send` (one batch call: what it found, and what DynamoDB left
/// unprocessed) until nothing is left, with backoff after a throttle, a transient failure or a
/// partial answer: the persister never gives up on a throttled table, its offsets wait for the
/// items. Any other error ends it.
async fn until_processed<T, O, E, R, Fut>(
    mut pending: Vec<T>,
    stats: &PersistStats,
    mut send: impl FnMut(Vec<T>) -> Fut,
) -> Result<Vec<O>, PersistError>
where
    T: Clone,
    Fut: std::future::Future<Output = Result<(Vec<O>, Vec<T>), SdkError<E, R>>>,
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let mut out = Vec::new();
    let mut backoff = Backoff::default();
    while !pending.is_empty() {
        match send(pending.clone()).await {
            Ok((found, left)) => {
                assert!(
                    left.len() <= pending.len(),
                    "what is left unprocessed was sent"
                );
                out.extend(found);
                if !left.is_empty() {
                    stats.retries.fetch_add(1, Ordering::Relaxed);
                    backoff.wait().await;
                }
                pending = left;
            }
            Err(e) if retriable(&e) => {
                stats.retries.fetch_add(1, Ordering::Relaxed);
                backoff.wait().await;
            }
            Err(e) => {
                return Err(PersistError::Dynamo(
                    aws_sdk_dynamodb::error::DisplayErrorContext(e).to_string(),
                ));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use votes_core::{ElectionId, OptionId, VoterId};

    fn record(voter: u64, option: &str) -> VoteRecord {
        VoteRecord {
            election: ElectionId::new("e1").unwrap(),
            voter: VoterId(voter),
            option: OptionId::new(option).unwrap(),
            received_at_ms: 1_700_000_000_000,
            node: "n".into(),
            core: 0,
            nonce: [7; 16],
        }
    }

    #[test]
    fn an_item_is_keyed_by_bucket_and_voter_and_carries_the_receipt() {
        let item = vote_item(b"key", &record(42, "a"), 3, 99);
        assert_eq!(item["pk"].as_s().unwrap(), &vote_item_pk("e1", VoterId(42)));
        assert_eq!(item["sk"].as_n().unwrap(), "42");
        assert_eq!(item["option"].as_s().unwrap(), "a");
        assert_eq!(item["offset"].as_n().unwrap(), "99");
        assert_eq!(item["receipt"].as_s().unwrap().len(), 64);
    }

    #[test]
    fn the_first_record_of_a_voter_wins_within_a_round() {
        let items = vec![
            (0, 1, vote_item(b"k", &record(1, "a"), 0, 1)),
            (0, 2, vote_item(b"k", &record(1, "b"), 0, 2)),
            (0, 3, vote_item(b"k", &record(2, "b"), 0, 3)),
        ];
        let kept = dedup_first(items);
        assert_eq!(kept.len(), 2);
        assert_eq!(kept[0]["option"].as_s().unwrap(), "a");
    }
}
