//! `votes recount` (docs/design.md §3.6): three independent counts of a closed election must agree
//! before its result is official.
//!
//! 1. **Kafka replay**: the committed `votes` log read from the start with `read_committed`,
//!    the first record of each voter counted (as every shard does); it also gives, per
//!    partition, the end of the log the count covers.
//! 2. **DynamoDB**: once the persisters' committed offsets have reached those ends, a parallel
//!    Query over every write-shard bucket of the election counts the items per option.
//! 3. **Redis**: the live tally, the sum of the partitions' hashes (allowed a few seconds to
//!    settle: the fan-out trails the commits by milliseconds).
//!
//! On agreement the result is written to the `{prefix}results` table, the Redis final key and
//! the elections topic (state `final`), in that order; on any disagreement nothing official is
//! written and the caller gets the per-option differences.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};
use votes_core::clock::unix_ms;

use aws_sdk_dynamodb::types::AttributeValue;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};
use votes_core::{Election, ElectionId, ElectionState, Names, VOTE_BUCKETS};

use crate::audit::LogSummary;
use crate::dynamo::{Backoff, retriable};
use crate::elections_log::{ElectionsReader, ElectionsView, ElectionsWriter, UpdateError};
use crate::fanout::{Official, official_fields, sum_partitions};
use crate::kafka::VotesContext;

/// Queries in flight while counting the buckets.
const QUERY_CONCURRENCY: usize = 32;
/// Backoffs one DynamoDB call of the recount (a bucket's query page, the official result's
/// put) may take while throttled before the recount fails: ceilings adding up to ~66 s (half
/// that on average), so a table throttled for a minute fails the recount (the timer runs it
/// again) while a busy one, even when the SDK's own retry quota is spent and every second
/// call is refused, practically never fails one of an election's 1,024 buckets.
const CALL_BACKOFFS: u32 = 40;

#[derive(Clone, Debug)]
pub struct RecountConfig {
    pub brokers: String,
    pub redis: crate::RedisTarget,
    pub names: Names,
    /// `VOTES_AUDIT_KEY`: the leaves' pseudonyms (docs/design.md §4.5).
    pub audit_key: Vec<u8>,
    /// The persisters' consumer group, whose committed offsets say what DynamoDB holds.
    pub persist_group: String,
    /// How long to wait for the persisters to reach the end of the log.
    pub catch_up_timeout: Duration,
    /// How long the live tally may take to match the replay.
    pub redis_settle: Duration,
    /// Bound on the silence of a Kafka read.
    pub kafka_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum RecountError {
    #[error("no election {0}")]
    NoSuchElection(String),
    #[error("election {id} is {state}: only a closed election is recounted")]
    NotClosed { id: String, state: &'static str },
    #[error("Kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("the elections topic: {0}")]
    Elections(#[from] crate::elections_log::ElectionsLogError),
    #[error(
        "the persisters (group {group}) did not reach the end of the votes log within {timeout:?}: \
         partition {partition} is at {committed:?}, the log ends at {end}; is `votes persist` running?"
    )]
    NotCaughtUp {
        group: String,
        timeout: Duration,
        partition: u32,
        committed: Option<u64>,
        end: u64,
    },
    #[error("publishing the final state on the elections topic: {0}")]
    PublishFinal(#[from] crate::elections_log::UpdateError),
    #[error("reading the votes log: {0}")]
    Log(#[from] crate::audit::AuditError),
    #[error(
        "partitions {partitions:?} have no close marker of the election after {timeout:?}: their \
         owners have not stopped taking its votes (is every partition owned? `GET /admin/v1/fleet`)"
    )]
    FrontierIncomplete {
        partitions: Vec<u32>,
        timeout: Duration,
    },
    #[error(
        "the votes log changed while the receipts index was built (root {first} then {second}); \
         nothing official was written: recount again"
    )]
    LogMoved { first: String, second: String },
    #[error("DynamoDB: {0}")]
    Dynamo(String),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// One count per option, by source.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub replay: BTreeMap<String, u64>,
    pub dynamodb: BTreeMap<String, u64>,
    pub redis: BTreeMap<String, u64>,
}

/// An option on which the sources differ.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diff {
    pub option: String,
    pub replay: u64,
    pub dynamodb: u64,
    pub redis: u64,
}

impl Counts {
    /// Options (the election's and any a source reports) on which the counts differ.
    pub fn diffs(&self, options: &[String]) -> Vec<Diff> {
        let mut all: Vec<String> = options.to_vec();
        for k in self
            .replay
            .keys()
            .chain(self.dynamodb.keys())
            .chain(self.redis.keys())
        {
            if !all.contains(k) {
                all.push(k.clone());
            }
        }
        let get = |m: &BTreeMap<String, u64>, k: &str| m.get(k).copied().unwrap_or(0);
        all.into_iter()
            .map(|option| Diff {
                replay: get(&self.replay, &option),
                dynamodb: get(&self.dynamodb, &option),
                redis: get(&self.redis, &option),
                option,
            })
            .filter(|d| d.replay != d.dynamodb || d.replay != d.redis)
            .collect()
    }
}

#[derive(Clone, Debug)]
pub enum Verdict {
    /// All three agree; the result is official (written now, or already before).
    Official { official: Official, already: bool },
    /// Nothing official was written.
    Disagree(Vec<Diff>),
}

#[derive(Clone, Debug)]
pub struct Report {
    pub election: ElectionId,
    pub counts: Counts,
    pub verdict: Verdict,
    /// Committed records read, of every election.
    pub records_read: u64,
    /// Records of this election whose voter had already voted (never counted).
    pub log_duplicates: u64,
    /// The Merkle tree of the counted votes (docs/design.md §4.5).
    pub tree_size: u64,
    pub root: votes_core::merkle::Hash,
    pub timings: Vec<(&'static str, Duration)>,
}

/// The election as the elections topic has it now.
pub fn load_election(cfg: &RecountConfig, id: &str) -> Result<Election, RecountError> {
    let mut view = ElectionsView::default();
    ElectionsReader::new(&cfg.brokers, &cfg.names)?.load_to_end(&mut view, cfg.kafka_timeout)?;
    view.find(id)
        .cloned()
        .ok_or_else(|| RecountError::NoSuchElection(id.to_owned()))
}

/// Every election in state `closed` (what a scheduled recount has to do).
pub fn closed_elections(cfg: &RecountConfig) -> Result<Vec<Election>, RecountError> {
    let mut view = ElectionsView::default();
    ElectionsReader::new(&cfg.brokers, &cfg.names)?.load_to_end(&mut view, cfg.kafka_timeout)?;
    Ok(view
        .sorted()
        .into_iter()
        .filter(|e| e.state == ElectionState::Closed)
        .cloned()
        .collect())
}

/// Recounts `election` and, on agreement, makes its result official.
pub async fn recount(
    cfg: &RecountConfig,
    dynamo: &aws_sdk_dynamodb::Client,
    election: &Election,
) -> Result<Report, RecountError> {
    if !matches!(election.state, ElectionState::Closed | ElectionState::Final) {
        return Err(RecountError::NotClosed {
            id: election.id.to_string(),
            state: election.state.as_str(),
        });
    }
    let mut timings = Vec::new();
    let t = Instant::now();
    let replay = replay_to_frontier(cfg, &election.id).await?;
    timings.push(("kafka replay to the frontier", t.elapsed()));
    if replay.past_frontier > 0 {
        // Never counted, but an owner took votes after it had closed: the barrier is broken.
        tracing::error!(
            election = %election.id,
            votes = replay.past_frontier,
            "votes were committed after their partition's close frontier; they are not counted"
        );
    }

    let t = Instant::now();
    let c = cfg.clone();
    // DynamoDB must hold every vote of the election the replay saw: the persisters must have
    // passed its last one in each partition (what follows, other elections' votes and the
    // markers, does not matter).
    let ends = replay.election_ends.clone();
    tokio::task::spawn_blocking(move || wait_persisted(&c, &ends))
        .await
        .map_err(|e| RecountError::Dynamo(format!("the catch-up task failed: {e}")))??;
    timings.push(("persisters caught up", t.elapsed()));

    let t = Instant::now();
    let dynamodb = dynamo_counts(dynamo, &cfg.names.votes_table(), &election.id).await?;
    timings.push(("dynamodb count", t.elapsed()));

    let t = Instant::now();
    let redis = settled_redis_counts(cfg, &election.id, &replay).await?;
    timings.push(("redis live tally", t.elapsed()));

    let counts = Counts {
        replay: replay.totals.clone(),
        dynamodb,
        redis,
    };
    let options: Vec<String> = election
        .options
        .iter()
        .map(|o| o.id.as_str().to_owned())
        .collect();
    let diffs = counts.diffs(&options);
    let verdict = if diffs.is_empty() {
        let official = official_of(&options, &counts, &replay);
        if election.state == ElectionState::Final {
            Verdict::Official {
                official,
                already: true,
            }
        } else {
            make_official(cfg, dynamo, election, &replay, &official, &mut timings).await?;
            Verdict::Official {
                official,
                already: false,
            }
        }
    } else {
        Verdict::Disagree(diffs)
    };
    Ok(Report {
        election: election.id.clone(),
        counts,
        verdict,
        records_read: replay.records,
        log_duplicates: replay.duplicates,
        tree_size: replay.tree_size,
        root: replay.root,
        timings,
    })
}

/// The close is a barrier (docs/design.md §7): each partition's owner writes a close marker
/// once it stopped taking the election's votes, and only votes before it count. Until every
/// partition has one (an owner's view of the elections lags, a new owner takes over from a
/// dead one), the count is not final: read again, until `catch_up_timeout`.
async fn replay_to_frontier(
    cfg: &RecountConfig,
    election: &ElectionId,
) -> Result<LogSummary, RecountError> {
    let deadline = Instant::now() + cfg.catch_up_timeout;
    loop {
        let c = cfg.clone();
        let id = election.clone();
        let replay = tokio::task::spawn_blocking(move || {
            crate::audit::for_each_counted(
                &c.brokers,
                &c.names,
                &c.audit_key,
                &id,
                c.kafka_timeout,
                |_| {},
            )
        })
        .await
        .map_err(|e| RecountError::Dynamo(format!("the replay task failed: {e}")))??;
        let open = replay.open_partitions();
        if open.is_empty() {
            return Ok(replay);
        }
        if Instant::now() >= deadline {
            return Err(RecountError::FrontierIncomplete {
                partitions: open,
                timeout: cfg.catch_up_timeout,
            });
        }
        tracing::info!(%election, partitions = ?open, "waiting for the close markers of these partitions");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Redis's live tally, read again for up to `redis_settle` while it differs from the replay:
/// the fan-out may still be publishing the last commits.
async fn settled_redis_counts(
    cfg: &RecountConfig,
    election: &ElectionId,
    replay: &LogSummary,
) -> Result<BTreeMap<String, u64>, RecountError> {
    let partitions = u32::try_from(replay.ends.len()).expect("partitions fit u32");
    let mut redis = redis_counts(cfg, election, partitions)?;
    let settle_until = Instant::now() + cfg.redis_settle;
    while redis != replay.totals && Instant::now() < settle_until {
        tokio::time::sleep(Duration::from_millis(200)).await;
        redis = redis_counts(cfg, election, partitions)?;
    }
    Ok(redis)
}

/// The official result of agreeing counts: the election's options, the replay's root and
/// frontier.
fn official_of(options: &[String], counts: &Counts, replay: &LogSummary) -> Official {
    let totals: BTreeMap<String, u64> = options
        .iter()
        .map(|o| (o.clone(), counts.replay.get(o).copied().unwrap_or(0)))
        .collect();
    Official {
        total: totals.values().sum(),
        totals,
        decided_at_ms: unix_ms(),
        extra: BTreeMap::from([
            ("merkle_root".to_owned(), hex(&replay.root)),
            ("merkle_tree_size".to_owned(), replay.tree_size.to_string()),
            ("frontier".to_owned(), frontier_json(&replay.frontiers)),
        ]),
    }
}

/// Writes the receipts index, then the official result (which makes the election final):
/// a receipt of a final election is always found.
async fn make_official(
    cfg: &RecountConfig,
    dynamo: &aws_sdk_dynamodb::Client,
    election: &Election,
    replay: &LogSummary,
    official: &Official,
    timings: &mut Vec<(&'static str, Duration)>,
) -> Result<(), RecountError> {
    let t = Instant::now();
    let c = cfg.clone();
    let id = election.id.clone();
    let root = replay.root;
    tokio::task::spawn_blocking(move || write_receipts_index(&c, &id, &root))
        .await
        .map_err(|e| RecountError::Dynamo(format!("the index task failed: {e}")))??;
    timings.push(("receipts index written", t.elapsed()));
    let t = Instant::now();
    write_official(cfg, dynamo, election, official).await?;
    timings.push(("official result written", t.elapsed()));
    Ok(())
}

/// The per-partition frontier as the official result stores it: `{"<partition>": offset}`.
pub fn frontier_json(frontiers: &[Option<u64>]) -> String {
    let fields: Vec<String> = frontiers
        .iter()
        .enumerate()
        .filter_map(|(p, f)| f.map(|f| format!("\"{p}\":{f}")))
        .collect();
    format!("{{{}}}", fields.join(","))
}

/// Waits until the persisters' committed offsets reach `ends` on every partition.
fn wait_persisted(cfg: &RecountConfig, ends: &[u64]) -> Result<(), RecountError> {
    let topic = cfg.names.votes_topic();
    // Same group id, but never subscribes: it only reads the group's committed offsets.
    let consumer: BaseConsumer<VotesContext> = crate::kafka::base_config(&cfg.brokers)
        .set("group.id", &cfg.persist_group)
        .set("enable.auto.commit", "false")
        .create_with_context(VotesContext)?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..ends.len() {
        tpl.add_partition(&topic, p as i32);
    }
    let deadline = Instant::now() + cfg.catch_up_timeout;
    loop {
        let committed = consumer.committed_offsets(tpl.clone(), cfg.kafka_timeout)?;
        let behind = ends.iter().enumerate().find_map(|(p, end)| {
            let at = committed
                .find_partition(&topic, p as i32)
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o as u64),
                    _ => None,
                });
            (*end > 0 && at.is_none_or(|a| a < *end)).then_some((p as u32, at, *end))
        });
        let Some((partition, committed, end)) = behind else {
            return Ok(());
        };
        if Instant::now() >= deadline {
            return Err(RecountError::NotCaughtUp {
                group: cfg.persist_group.clone(),
                timeout: cfg.catch_up_timeout,
                partition,
                committed,
                end,
            });
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Counts the election's items per option with one paginated Query per bucket.
pub async fn dynamo_counts(
    dynamo: &aws_sdk_dynamodb::Client,
    table: &str,
    election: &ElectionId,
) -> Result<BTreeMap<String, u64>, RecountError> {
    let mut queries = tokio::task::JoinSet::new();
    let mut buckets = 0..VOTE_BUCKETS;
    let mut totals: BTreeMap<String, u64> = BTreeMap::new();
    loop {
        while queries.len() < QUERY_CONCURRENCY {
            let Some(bucket) = buckets.next() else { break };
            let (dynamo, table) = (dynamo.clone(), table.to_owned());
            let pk = format!("{election}#{bucket}");
            queries.spawn(async move { count_bucket(&dynamo, &table, pk).await });
        }
        match queries.join_next().await {
            None => return Ok(totals),
            Some(Ok(Ok(counts))) => {
                for (option, n) in counts {
                    *totals.entry(option).or_default() += n;
                }
            }
            Some(Ok(Err(e))) => return Err(e),
            Some(Err(e)) => return Err(RecountError::Dynamo(format!("a query task failed: {e}"))),
        }
    }
}

async fn count_bucket(
    dynamo: &aws_sdk_dynamodb::Client,
    table: &str,
    pk: String,
) -> Result<HashMap<String, u64>, RecountError> {
    let mut counts = HashMap::new();
    let mut start: Option<HashMap<String, AttributeValue>> = None;
    let mut backoff = Backoff::default();
    loop {
        let page = dynamo
            .query()
            .table_name(table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", AttributeValue::S(pk.clone()))
            .projection_expression("#o")
            .expression_attribute_names("#o", "option")
            .consistent_read(true)
            .set_exclusive_start_key(start.clone())
            .send()
            .await;
        let page = match page {
            Ok(page) => {
                // The bound and the waits are per call: the next page starts afresh.
                backoff = Backoff::default();
                page
            }
            // A throttled page is asked again (the same start key); a table throttled for
            // longer than CALL_BACKOFFS backoffs fails the recount, which is retried whole.
            Err(e) if retriable(&e) && backoff.attempts() < CALL_BACKOFFS => {
                backoff.wait().await;
                continue;
            }
            Err(e) => {
                return Err(RecountError::Dynamo(
                    aws_sdk_dynamodb::error::DisplayErrorContext(e).to_string(),
                ));
            }
        };
        for item in page.items() {
            let option = item
                .get("option")
                .and_then(|v| v.as_s().ok())
                .cloned()
                .unwrap_or_else(|| "<missing option>".to_owned());
            *counts.entry(option).or_default() += 1;
        }
        match page.last_evaluated_key {
            Some(k) if !k.is_empty() => start = Some(k),
            _ => return Ok(counts),
        }
    }
}

pub fn redis_counts(
    cfg: &RecountConfig,
    election: &ElectionId,
    partitions: u32,
) -> Result<BTreeMap<String, u64>, RecountError> {
    let client = cfg.redis.client()?;
    let mut conn = client.get_connection_with_timeout(Duration::from_secs(5))?;
    let mut pipe = redis::pipe();
    for p in 0..partitions {
        pipe.cmd("HGETALL")
            .arg(cfg.names.redis_tally_key(election.as_str(), p));
    }
    let hashes: Vec<HashMap<String, String>> = pipe.query(&mut conn)?;
    let (mut totals, _) = sum_partitions(&hashes);
    totals.retain(|_, n| *n > 0);
    Ok(totals)
}

/// DynamoDB results table, then the Redis final key, then state `final` on the elections topic:
/// the topic (what every screen follows) changes only once the other two hold the result.
async fn write_official(
    cfg: &RecountConfig,
    dynamo: &aws_sdk_dynamodb::Client,
    election: &Election,
    official: &Official,
) -> Result<(), RecountError> {
    let n = |v: u64| AttributeValue::N(v.to_string());
    let totals: HashMap<String, AttributeValue> = official
        .totals
        .iter()
        .map(|(k, v)| (k.clone(), n(*v)))
        .collect();
    let mut put = dynamo
        .put_item()
        .table_name(cfg.names.results_table())
        .item("pk", AttributeValue::S(election.id.to_string()))
        .item("totals", AttributeValue::M(totals))
        .item("total", n(official.total))
        .item("decided_at_ms", n(official.decided_at_ms));
    for (k, v) in &official.extra {
        put = put.item(k, AttributeValue::S(v.clone()));
    }
    let mut backoff = Backoff::default();
    loop {
        match put.clone().send().await {
            Ok(_) => break,
            Err(e) if retriable(&e) && backoff.attempts() < CALL_BACKOFFS => backoff.wait().await,
            Err(e) => {
                return Err(RecountError::Dynamo(
                    aws_sdk_dynamodb::error::DisplayErrorContext(e).to_string(),
                ));
            }
        }
    }

    let client = cfg.redis.client()?;
    let mut conn = client.get_connection_with_timeout(Duration::from_secs(5))?;
    let key = cfg.names.redis_final_key(election.id.as_str());
    let mut hset = redis::cmd("HSET");
    hset.arg(&key);
    for (k, v) in official_fields(official) {
        hset.arg(k).arg(v);
    }
    // One transaction: a reader never sees a half-written official result.
    let _: () = redis::pipe()
        .atomic()
        .cmd("DEL")
        .arg(&key)
        .ignore()
        .add_command(hset)
        .ignore()
        .query(&mut conn)?;

    // `final` always lands: based on the election as it stands when written (an operator's
    // PATCH may have moved its version meanwhile), and a no-op when another recount won.
    let (c, id, at) = (cfg.clone(), election.id.clone(), official.decided_at_ms);
    tokio::task::spawn_blocking(move || {
        ElectionsWriter::new(&c.brokers, &c.names, c.kafka_timeout)?.update(&id, |current| {
            let current = current.ok_or(UpdateError::NotFound)?;
            if current.state == ElectionState::Final {
                return Ok(None);
            }
            current
                .transition(ElectionState::Final, at)
                .map(Some)
                .map_err(|e| UpdateError::Conflict(e.to_string()))
        })
    })
    .await
    .map_err(|e| RecountError::Dynamo(format!("the elections writer task failed: {e}")))??;
    Ok(())
}

/// Leaves between two pipelines of the receipts index.
const INDEX_CHUNK: usize = 4096;

/// Writes the receipts index of a final election to Redis (docs/design.md §4.5, `GET …/receipts/…`):
/// a second pass over the log, streaming, so memory stays bounded by a chunk and the tree's
/// height. Its root must be the counted one: the log of a closed election does not move.
fn write_receipts_index(
    cfg: &RecountConfig,
    election: &ElectionId,
    expected_root: &votes_core::merkle::Hash,
) -> Result<(), RecountError> {
    use votes_core::merkle::LevelsBuilder;
    let client = cfg.redis.client()?;
    let conn = client.get_connection_with_timeout(Duration::from_secs(5))?;
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut index = ReceiptsIndex::new(conn, &cfg.names, election)?;
    let mut levels = LevelsBuilder::new();
    let mut failed: Option<redis::RedisError> = None;
    let summary = crate::audit::for_each_counted(
        &cfg.brokers,
        &cfg.names,
        &cfg.audit_key,
        election,
        cfg.kafka_timeout,
        |c| {
            if failed.is_some() {
                return;
            }
            index.entry(c);
            levels.push(c.leaf_hash, &mut |l, _, n| index.keep(l, n));
            if index.entries.len() >= INDEX_CHUNK
                && let Err(e) = index.flush()
            {
                failed = Some(e);
            }
        },
    )?;
    if let Some(e) = failed {
        return Err(e.into());
    }
    let (root, size) = levels.finish(&mut |l, _, n| index.keep(l, n));
    index.flush()?;
    assert_eq!(size, summary.tree_size, "one leaf per counted vote");
    if &root != expected_root || summary.root != root {
        return Err(RecountError::LogMoved {
            first: hex(expected_root),
            second: hex(&root),
        });
    }
    Ok(())
}

/// The receipts index being written: leaves by hash (their index in the tree and canonical
/// bytes) and the tree's levels, sent to Redis a chunk at a time.
struct ReceiptsIndex<'a> {
    conn: redis::Connection,
    names: &'a Names,
    election: &'a ElectionId,
    receipts_key: String,
    /// Leaves since the last flush: (leaf hash, index ‖ canonical bytes).
    entries: Vec<(Vec<u8>, Vec<u8>)>,
    /// Per level, the nodes completed since the last flush.
    nodes: Vec<Vec<u8>>,
    next_index: u64,
}

impl<'a> ReceiptsIndex<'a> {
    /// Starts from scratch: an earlier, interrupted build may have left a partial index.
    fn new(
        mut conn: redis::Connection,
        names: &'a Names,
        election: &'a ElectionId,
    ) -> Result<Self, redis::RedisError> {
        let receipts_key = names.redis_receipts_key(election.as_str());
        let mut stale: Vec<String> = vec![receipts_key.clone()];
        stale.extend((0..65).map(|l| names.redis_merkle_level_key(election.as_str(), l)));
        let _: () = redis::cmd("DEL").arg(&stale).query(&mut conn)?;
        Ok(Self {
            conn,
            names,
            election,
            receipts_key,
            entries: Vec::with_capacity(INDEX_CHUNK),
            nodes: Vec::new(),
            next_index: 0,
        })
    }

    /// The next counted vote's leaf, in tree order.
    fn entry(&mut self, c: &crate::audit::Counted) {
        let mut value = self.next_index.to_be_bytes().to_vec();
        value.extend_from_slice(&c.leaf.canonical_bytes());
        self.entries.push((c.leaf_hash.to_vec(), value));
        self.next_index += 1;
    }

    /// A node the tree completed at `level`.
    fn keep(&mut self, level: usize, node: &votes_core::merkle::Hash) {
        if self.nodes.len() <= level {
            self.nodes.resize_with(level + 1, Vec::new);
        }
        self.nodes[level].extend_from_slice(node);
    }

    /// Sends what was gathered since the last flush in one pipeline; nothing when nothing was
    /// (an election without a vote: Redis refuses an empty pipeline as an empty command).
    fn flush(&mut self) -> Result<(), redis::RedisError> {
        if self.entries.is_empty() && self.nodes.iter().all(Vec::is_empty) {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        if !self.entries.is_empty() {
            pipe.cmd("HSET")
                .arg(&self.receipts_key)
                .arg(&self.entries[..])
                .ignore();
        }
        for (level, bytes) in self.nodes.iter_mut().enumerate() {
            if !bytes.is_empty() {
                pipe.cmd("APPEND")
                    .arg(
                        self.names
                            .redis_merkle_level_key(self.election.as_str(), level),
                    )
                    .arg(&*bytes)
                    .ignore();
                bytes.clear();
            }
        }
        self.entries.clear();
        pipe.query::<()>(&mut self.conn)
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
    }

    #[test]
    fn agreement_has_no_diffs_and_any_difference_is_reported_per_option() {
        let same = Counts {
            replay: m(&[("a", 3), ("b", 1)]),
            dynamodb: m(&[("a", 3), ("b", 1)]),
            redis: m(&[("a", 3), ("b", 1)]),
        };
        let options = vec!["a".to_owned(), "b".to_owned(), "c".to_owned()];
        assert!(
            same.diffs(&options).is_empty(),
            "an option nobody chose is 0 everywhere"
        );

        let corrupt = Counts {
            redis: m(&[("a", 4), ("b", 1)]),
            dynamodb: m(&[("a", 3), ("b", 1), ("zz", 1)]),
            ..same
        };
        let diffs = corrupt.diffs(&options);
        assert_eq!(
            diffs,
            vec![
                Diff {
                    option: "a".into(),
                    replay: 3,
                    dynamodb: 3,
                    redis: 4
                },
                Diff {
                    option: "zz".into(),
                    replay: 0,
                    dynamodb: 1,
                    redis: 0
                },
            ]
        );
    }
}
