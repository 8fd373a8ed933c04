//! An election's counted votes in tree order (docs/design.md §4.5): the committed `votes` log read
//! partition by partition, each in offset order, keeping the first vote of each voter, as the
//! shards count, and only up to the partition's frontier (its first committed close marker of
//! the election, docs/design.md §7). The recount (Merkle root, receipts index), the auditors' export
//! and the reprocess read it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use roaring::RoaringTreemap;
use votes_core::merkle::{Hash, MerkleBuilder};
use votes_core::receipt::Leaf;
use votes_core::record::LogRecord;
use votes_core::{ElectionId, Names, VoterId};

use crate::kafka::{VotesContext, read_committed_consumer_config};

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("Kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("reading partition {partition} of the votes log stalled for {timeout:?}")]
    Stalled { partition: u32, timeout: Duration },
    #[error("topic {0} does not exist: run `votes init`")]
    NoTopic(String),
}

/// One counted vote.
#[derive(Clone, Debug)]
pub struct Counted {
    pub leaf: Leaf,
    pub leaf_hash: Hash,
    pub voter: VoterId,
    pub received_at_ms: u64,
}

/// What the pass over the log found.
#[derive(Clone, Debug, Default)]
pub struct LogSummary {
    /// Counted votes per option.
    pub totals: BTreeMap<String, u64>,
    pub tree_size: u64,
    /// RFC 6962 root of the counted votes' leaf hashes in (partition, offset) order.
    pub root: Hash,
    /// Committed records read, of every election.
    pub records: u64,
    /// Records of this election whose voter had already voted (never counted).
    pub duplicates: u64,
    /// Per partition: offsets of the first and last counted vote.
    pub ranges: Vec<Option<(u64, u64)>>,
    /// Per partition: one past the last record read (of any election); 0 when empty.
    pub ends: Vec<u64>,
    /// Per partition: the offset of the election's first committed close marker, the
    /// frontier its votes are counted up to; `None` while the partition's owner has not
    /// closed the election.
    pub frontiers: Vec<Option<u64>>,
    /// Per partition: one past the last vote of the election before its frontier, counted or
    /// a voter's repeat (0 when none): what the persisters must have passed for DynamoDB to
    /// hold what this pass saw.
    pub election_ends: Vec<u64>,
    /// Votes of the election committed after their partition's frontier: never counted. No
    /// owner writes one (it stops taking the election's votes before its marker), so any is
    /// a bug to alarm on.
    pub past_frontier: u64,
}

impl LogSummary {
    /// Partitions without a frontier yet.
    pub fn open_partitions(&self) -> Vec<u32> {
        self.frontiers
            .iter()
            .enumerate()
            .filter(|(_, f)| f.is_none())
            .map(|(p, _)| p as u32)
            .collect()
    }
}

/// Calls `f` for each counted vote of `election` in tree order. Memory: one roaring bitmap of
/// the voters of the partition being read.
pub fn for_each_counted(
    brokers: &str,
    names: &Names,
    audit_key: &[u8],
    election: &ElectionId,
    kafka_timeout: Duration,
    mut f: impl FnMut(&Counted),
) -> Result<LogSummary, AuditError> {
    let topic = names.votes_topic();
    let consumer: BaseConsumer<VotesContext> =
        read_committed_consumer_config(brokers, &format!("{}audit", names.prefix()))
            // One partition at a time: larger fetches only wait longer to fill; a short wait
            // gets the first records of each newly assigned partition sooner (measured: 1M
            // votes read in ~2x less time than with 50 MB / 10 MB fetches).
            .set("fetch.wait.max.ms", "10")
            .create_with_context(VotesContext)?;
    let md = consumer.fetch_metadata(Some(&topic), kafka_timeout)?;
    let partitions = md.topics().first().map_or(0, |t| t.partitions().len());
    if partitions == 0 {
        return Err(AuditError::NoTopic(topic));
    }
    let mut summary = LogSummary {
        ranges: vec![None; partitions],
        ends: vec![0; partitions],
        frontiers: vec![None; partitions],
        election_ends: vec![0; partitions],
        ..Default::default()
    };
    let mut tree = MerkleBuilder::new();
    for p in 0..partitions {
        let partition = p as u32;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, p as i32, Offset::Beginning)?;
        consumer.assign(&tpl)?;
        // A voter's records all live in one partition (key = voter), so dedup is per partition.
        let mut voters = RoaringTreemap::new();
        let mut last_answer = Instant::now();
        loop {
            match consumer.poll(Duration::from_millis(200)) {
                // A message or end-of-partition event of the previous assignment still queued.
                Some(Ok(m)) if m.partition() as usize != p => {}
                Some(Err(KafkaError::PartitionEOF(other))) if other as usize != p => {}
                Some(Ok(m)) => {
                    last_answer = Instant::now();
                    let mut pass = Pass {
                        summary: &mut summary,
                        tree: &mut tree,
                        voters: &mut voters,
                        p,
                    };
                    if let Some(counted) =
                        pass.count(audit_key, election, m.offset() as u64, m.payload())
                    {
                        f(&counted);
                    }
                }
                Some(Err(KafkaError::PartitionEOF(_))) => break,
                Some(Err(e)) => return Err(e.into()),
                None => {
                    if last_answer.elapsed() > kafka_timeout {
                        return Err(AuditError::Stalled {
                            partition,
                            timeout: kafka_timeout,
                        });
                    }
                }
            }
        }
    }
    let (root, size) = tree.finish();
    debug_assert_eq!(
        size,
        summary.totals.values().sum::<u64>(),
        "one leaf per counted vote"
    );
    summary.root = root;
    summary.tree_size = size;
    Ok(summary)
}

/// One partition's pass over the log: what it adds to the summary and the tree, and the
/// voters it has counted (a voter's records all live in one partition).
struct Pass<'a> {
    summary: &'a mut LogSummary,
    tree: &'a mut MerkleBuilder,
    voters: &'a mut RoaringTreemap,
    p: usize,
}

impl Pass<'_> {
    /// Counts the record at `offset` when it is a first vote of `election` before its close
    /// marker; every record moves the partition's end, a marker sets the frontier.
    fn count(
        &mut self,
        audit_key: &[u8],
        election: &ElectionId,
        offset: u64,
        payload: Option<&[u8]>,
    ) -> Option<Counted> {
        let (summary, p) = (&mut *self.summary, self.p);
        summary.ends[p] = offset + 1;
        summary.records += 1;
        let record = match payload.map(LogRecord::decode) {
            Some(Ok(LogRecord::Vote(record))) => record,
            Some(Ok(LogRecord::Close(marker))) => {
                if &marker.election == election {
                    summary.frontiers[p].get_or_insert(offset);
                }
                return None;
            }
            _ => return None,
        };
        if &record.election != election {
            return None;
        }
        if summary.frontiers[p].is_some() {
            summary.past_frontier += 1;
            return None;
        }
        summary.election_ends[p] = offset + 1;
        if !self.voters.insert(record.voter.0) {
            summary.duplicates += 1;
            return None;
        }
        let (voter, received_at_ms) = (record.voter, record.received_at_ms);
        let leaf = Leaf::of(audit_key, record.into(), p as u32, offset);
        *summary
            .totals
            .entry(leaf.option.as_str().to_owned())
            .or_default() += 1;
        let counted = Counted {
            leaf_hash: leaf.leaf_hash(),
            leaf,
            voter,
            received_at_ms,
        };
        self.tree.push(counted.leaf_hash);
        let range = summary.ranges[p].get_or_insert((offset, offset));
        range.1 = offset;
        Some(counted)
    }
}
