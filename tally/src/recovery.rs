//! Recovery of a shard from its partition's committed log (docs/design.md §3.3): read with
//! `read_committed` from the shard's `applied_end` to the last stable offset and apply every
//! record. Blocking; runs on the blocking pool with the shard moved in and back out.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use votes_core::Names;
use votes_core::record::LogRecord;

use crate::kafka::{read_committed_consumer_config, watermarks};
use crate::shard::{Shard, ShardState};

/// A consumer of recovery's reads. Recovery ends on reaching the partition's end, which a
/// fetch learns only when the broker answers it empty, and the broker holds an empty fetch for
/// `fetch.wait.max.ms` (500 ms by default): on the path of every failover, that wait is cut
/// to 10 ms. The clients live long ([`RecoveryClients`]): a broker that was down is tried again
/// within a second of its return, not librdkafka's 10 s.
fn recovery_consumer_config(brokers: &str, names: &Names) -> rdkafka::ClientConfig {
    let mut cfg = read_committed_consumer_config(brokers, &format!("{}replay", names.prefix()));
    cfg.set("fetch.wait.max.ms", "10")
        .set("reconnect.backoff.max.ms", "1000");
    cfg
}

type Client = BaseConsumer<crate::kafka::VotesContext>;

/// Recovery's Kafka clients, kept between recoveries. A new client pays, before its first
/// answer, a bootstrap connection, the cluster's metadata and a connection to the partition's
/// leader: on the 2026-12-05 campaign's failovers, the wait for a stable log took 235 ms at
/// the median where nothing was open, and a replay of a few records 116 ms. A node keeps one
/// client of each isolation level for the watermarks (a query of its own, safe from any
/// thread) and a few idle replay consumers, each assigned one partition while it is leased.
///
/// A kept client keeps what it learnt of the cluster, wrong answers included: after a broker
/// was killed, a cached view of the topic without the partition failed every watermarks query
/// at once (`UnknownPartition`, for a minute, seed 20261322). So a recovery that fails drops
/// the kept clients, and the next one starts on new ones, as every recovery once did.
pub struct RecoveryClients {
    brokers: String,
    names: Names,
    watermarks: Mutex<Option<Arc<WatermarkClients>>>,
    idle: Mutex<Vec<Client>>,
}

/// The watermarks of one partition as each isolation level sees them.
struct WatermarkClients {
    committed: Client,
    uncommitted: Client,
}

impl std::fmt::Debug for RecoveryClients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecoveryClients")
            .field("brokers", &self.brokers)
            .field("prefix", &self.names.prefix())
            .finish_non_exhaustive()
    }
}

/// Idle replay consumers kept (each holds a few threads and connections).
const IDLE_REPLAY_CLIENTS: usize = 4;
/// Most events dropped from a returned replay consumer's queue.
const DRAIN_BOUND: usize = 10_000;

impl RecoveryClients {
    pub fn new(brokers: &str, names: &Names) -> Result<Self, KafkaError> {
        let clients = Self {
            brokers: brokers.to_owned(),
            names: names.clone(),
            watermarks: Mutex::new(None),
            idle: Mutex::new(Vec::new()),
        };
        // Made now, so a node that cannot make them says so at its start.
        clients.watermarks()?;
        Ok(clients)
    }

    /// The kept watermarks clients, or new ones after a failure dropped them.
    fn watermarks(&self) -> Result<Arc<WatermarkClients>, KafkaError> {
        let mut kept = self.watermarks.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = kept.as_ref() {
            return Ok(w.clone());
        }
        let made = Arc::new(WatermarkClients {
            committed: recovery_consumer_config(&self.brokers, &self.names)
                .create_with_context(crate::kafka::VotesContext)?,
            uncommitted: recovery_consumer_config(&self.brokers, &self.names)
                .set("isolation.level", "read_uncommitted")
                .create_with_context(crate::kafka::VotesContext)?,
        });
        *kept = Some(made.clone());
        Ok(made)
    }

    /// Drops every kept client (a recovery on them failed); recoveries that hold some finish
    /// on them. Closing a client may block: never under a lock other recoveries take.
    fn forget(&self) {
        let watermarks = self
            .watermarks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let idle = std::mem::take(&mut *self.idle.lock().unwrap_or_else(|p| p.into_inner()));
        drop((watermarks, idle));
    }

    pub fn brokers(&self) -> &str {
        &self.brokers
    }

    pub fn names(&self) -> &Names {
        &self.names
    }

    /// A read_committed consumer of `partition` from `start`, idle or new. No group: the
    /// shard owns the position (its applied_end); nothing is committed to Kafka.
    fn lease(&self, partition: u32, start: u64) -> Result<Lease<'_>, KafkaError> {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let consumer = match idle {
            Some(c) => c,
            None => recovery_consumer_config(&self.brokers, &self.names)
                .set("fetch.max.bytes", "52428800")
                .set("max.partition.fetch.bytes", "10485760")
                .create_with_context(crate::kafka::VotesContext)?,
        };
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(
            &self.names.votes_topic(),
            i32::try_from(partition).expect("partition fits i32"),
            Offset::Offset(i64::try_from(start).expect("offsets fit i64")),
        )?;
        consumer.assign(&tpl)?;
        Ok(Lease {
            clients: self,
            consumer: Some(consumer),
            read_to_end: false,
        })
    }
}

/// A replay consumer on loan; back to the idle ones when dropped, unassigned, if its replay
/// read to the end (one that failed half way may hold much it fetched, or a broken client).
struct Lease<'a> {
    clients: &'a RecoveryClients,
    consumer: Option<Client>,
    read_to_end: bool,
}

impl std::ops::Deref for Lease<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.consumer.as_ref().expect("leased until dropped")
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let Some(consumer) = self.consumer.take() else {
            return;
        };
        if !self.read_to_end || consumer.unassign().is_err() {
            // A replay that failed: what the other kept clients know of the cluster may be as
            // wrong as what failed this one; the next recovery starts on new ones.
            self.clients.forget();
            return;
        }
        // What is left of the last assignment (little: it was read to its end) goes now; what
        // librdkafka still holds of it is of an older assignment, which it never hands out.
        for _ in 0..DRAIN_BOUND {
            if consumer.poll(Duration::ZERO).is_none() {
                break;
            }
        }
        let mut idle = self.clients.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < IDLE_REPLAY_CLIENTS {
            idle.push(consumer);
        }
    }
}

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
        recovery_consumer_config(brokers, names)
            .create_with_context(crate::kafka::VotesContext)
            .map_err(kafka)?;
    let (_, high) = watermarks(
        &consumer,
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

/// Waits until every transaction that was open in `partition` when this was called is decided
/// (committed or aborted), so that a replay to the end of the committed log misses nothing a
/// former owner may still commit (docs/design.md §3.1, §3.3).
///
/// With one producer per core, a new owner does not share its predecessor's transactional id,
/// so its own `init_transactions` does not resolve what the predecessor left open. A
/// predecessor that handed off cleanly left nothing open (markers may take a moment to land);
/// a dead one's transaction is aborted by the broker after the transaction timeout; a stopped
/// one (a zombie) might commit when it resumes, unless it is fenced. So: wait for the last
/// stable offset to reach the high watermark seen at the start; past [`NAME_WRITER_AFTER`],
/// read who wrote the record the last stable offset is stuck at (node and core, named in the
/// record: its core's producer or its node's), and fence that writer at once when
/// `writer_gone(node)` says its node has left the group (dead, cut off or paused: nothing it
/// holds will be committed by a member in good standing), or else past `grace`. Never this
/// core, and never once the group no longer assigns the partition here (`still_owner`:
/// fencing the rightful owner would only stall it).
pub struct Stable<'a, Owner, Gone> {
    pub clients: &'a RecoveryClients,
    pub partition: u32,
    /// This node and core.
    pub me: (&'a str, u16),
    pub still_owner: Owner,
    pub writer_gone: Gone,
    pub grace: Duration,
    pub timeout: Duration,
}

/// How long a last stable offset may lag before its writer is read: a clean hand-off's
/// markers land within milliseconds, and the read costs a fetch.
pub const NAME_WRITER_AFTER: Duration = Duration::from_millis(50);

/// Returns the last stable offset reached: the replay that follows must read at least that far.
pub fn await_stable<Owner, Gone>(args: Stable<'_, Owner, Gone>) -> Result<u64, ReplayError>
where
    Owner: Fn() -> bool,
    Gone: Fn(&str) -> bool,
{
    let clients = args.clients;
    let stable = stable_on_kept_clients(args);
    if stable.is_err() {
        clients.forget();
    }
    stable
}

fn stable_on_kept_clients<Owner, Gone>(args: Stable<'_, Owner, Gone>) -> Result<u64, ReplayError>
where
    Owner: Fn() -> bool,
    Gone: Fn(&str) -> bool,
{
    let Stable {
        clients,
        partition,
        me,
        still_owner,
        writer_gone,
        grace,
        timeout,
    } = args;
    let kafka = |source| ReplayError::Kafka { partition, source };
    let (brokers, names) = (clients.brokers(), clients.names());
    let topic = names.votes_topic();
    let p = i32::try_from(partition).expect("partition fits i32");
    let kept = clients.watermarks().map_err(kafka)?;
    let (_, hwm) = watermarks(&kept.uncommitted, &topic, p, timeout).map_err(kafka)?;
    let started = Instant::now();
    // The offset stuck at, who may hold it open and how many were fenced: one fence per look
    // at the last stable offset (the first usually takes); a round that did not take (the ids
    // could not be reached or named) starts over after a while.
    let mut fencing: Option<Fencing> = None;
    loop {
        let (_, lso) = watermarks(&kept.committed, &topic, p, timeout).map_err(kafka)?;
        if lso >= hwm {
            return Ok(u64::try_from(lso).unwrap_or(0));
        }
        if started.elapsed() > timeout * 6 {
            return Err(ReplayError::Timeout {
                partition,
                timeout: timeout * 6,
            });
        }
        if started.elapsed() >= NAME_WRITER_AFTER {
            let again = grace.max(Duration::from_secs(1)) * 5;
            // A new stuck offset, or a round over (every id fenced, or none could be named)
            // that has not taken for a while: (re)name the writer.
            if fencing.as_ref().is_none_or(|f| {
                f.offset != lso || (f.done == f.ids.len() && f.since.elapsed() >= again)
            }) {
                let (node, ids) = writer_ids(brokers, names, partition, lso, me, timeout);
                fencing = Some(Fencing {
                    offset: lso,
                    node,
                    ids,
                    done: 0,
                    since: Instant::now(),
                });
            }
            let f = fencing.as_mut().expect("set above");
            let gone = f.node.as_deref().is_some_and(&writer_gone);
            // After a fence, the aborted transaction's markers take a moment to move the last
            // stable offset: the next id only once that had its grace.
            let due = if f.done == 0 {
                gone || started.elapsed() >= grace
            } else {
                f.since.elapsed() >= grace
            };
            if f.done < f.ids.len() && due && still_owner() {
                let id = &f.ids[f.done];
                tracing::warn!(partition, offset = lso, writer = %id, gone, "a transaction stays open where this core takes over: fencing its writer");
                fence_aside(brokers, id, partition, timeout);
                f.done += 1;
                f.since = Instant::now();
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Fences `transactional_id` on a thread of its own and returns at once. The coordinator
/// starts aborting the open transaction on the fence's first request, but librdkafka asks again
/// for the new epoch only after a fixed 500 ms (`rd_kafka_idemp_pid_timer_restart`) and then
/// once more: waiting for the fence held every fenced failover ~1.3 s, where the aborted
/// transaction's markers move the last stable offset, which [`await_stable`] watches, within a
/// few hundred milliseconds. The thread ends with the fence (or its timeout); it is spawned
/// at most once per writer named (`Fencing`), so few live at once.
fn fence_aside(brokers: &str, transactional_id: &str, partition: u32, timeout: Duration) {
    let (owned_brokers, owned_id) = (brokers.to_owned(), transactional_id.to_owned());
    let spawned = std::thread::Builder::new()
        .name("fence".into())
        .spawn(move || fence(&owned_brokers, &owned_id, partition, timeout));
    if let Err(e) = spawned {
        tracing::warn!(partition, error = %e, "no thread for the fence: fencing in line");
        fence(brokers, transactional_id, partition, timeout);
    }
}

fn fence(brokers: &str, transactional_id: &str, partition: u32, timeout: Duration) {
    let began = Instant::now();
    match crate::committer::fence_writer(brokers, transactional_id, timeout) {
        Ok(()) => {
            tracing::info!(partition, writer = %transactional_id, took_ms = began.elapsed().as_millis(), "fenced")
        }
        Err(e) => {
            tracing::warn!(partition, writer = %transactional_id, error = %e, "could not fence; waiting for the transaction timeout")
        }
    }
}

/// The fencing of the writer a partition's last stable offset is stuck at.
struct Fencing {
    offset: i64,
    /// The writer's node, when its record could be read.
    node: Option<String>,
    ids: Vec<String>,
    done: usize,
    /// When the ids were named, or the last of them fenced.
    since: Instant,
}

/// The node that wrote the record at `offset`, and the transactional ids that may hold its
/// transaction open. The record names the node and core, not the committer's scope: the
/// writer is that core's producer or, with one committer per node, the node's; the core's
/// comes first (the default scope), the node's is fenced next if the offset stays stuck. No
/// ids for this core's own records, and no node id for this node (its live committer
/// finishes what it holds: fencing it would stall every core here).
fn writer_ids(
    brokers: &str,
    names: &Names,
    partition: u32,
    offset: i64,
    me: (&str, u16),
    timeout: Duration,
) -> (Option<String>, Vec<String>) {
    let p = i32::try_from(partition).expect("partition fits i32");
    let uncommitted = recovery_consumer_config(brokers, names)
        .set("isolation.level", "read_uncommitted")
        .create_with_context(crate::kafka::VotesContext);
    match uncommitted.and_then(|c| writer_at(&c, &names.votes_topic(), p, offset, timeout)) {
        Ok(Some((node, core))) if (node.as_str(), core) != me => {
            let mut ids = vec![names.core_transactional_id(&node, core)];
            if node != me.0 {
                ids.push(names.node_transactional_id(&node));
            }
            (Some(node), ids)
        }
        Ok(Some((node, _))) => (Some(node), Vec::new()),
        Ok(None) => (None, Vec::new()),
        Err(e) => {
            tracing::warn!(partition, error = %e, "cannot read the open transaction's writer");
            (None, Vec::new())
        }
    }
}

/// The node and core that wrote the record at `offset` (read uncommitted).
fn writer_at(
    consumer: &BaseConsumer<crate::kafka::VotesContext>,
    topic: &str,
    partition: i32,
    offset: i64,
    timeout: Duration,
) -> Result<Option<(String, u16)>, KafkaError> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(offset))?;
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                return Ok(m
                    .payload()
                    .and_then(|p| LogRecord::decode(p).ok())
                    .map(|r| {
                        let (node, core) = r.writer();
                        (node.to_owned(), core)
                    }));
            }
            Some(Err(KafkaError::PartitionEOF(_))) => return Ok(None),
            Some(Err(e)) => return Err(e),
            None => {}
        }
    }
    Ok(None)
}

/// Replays `shard`'s partition from its `applied_end` to the end of the committed log, then
/// marks it recovered. The end is where the consumer stands when the broker says it reached
/// it, and never short of `at_least` (the stable offset [`await_stable`] saw: an end-of-
/// partition short of it is an earlier assignment's, or a new leader's not yet caught up, and
/// the replay reads on). `timeout` bounds the silence between two answers of the broker, not
/// the whole replay (a long log legitimately takes long).
pub fn replay(
    clients: &RecoveryClients,
    mut shard: Shard,
    at_least: u64,
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
    let mut consumer = clients
        .lease(partition, shard.applied_end())
        .map_err(kafka)?;
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
                match m.payload().map(LogRecord::decode) {
                    Some(Ok(LogRecord::Vote(record))) => shard.apply_committed(offset, &record),
                    Some(Ok(LogRecord::Close(marker))) => {
                        shard.apply_committed_close(offset, &marker)
                    }
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
                if end < at_least {
                    if last_answer.elapsed() > timeout {
                        return Err(ReplayError::Timeout { partition, timeout });
                    }
                    continue;
                }
                p.offset = end;
                progress(p);
                shard.finish_recovery(end);
                consumer.read_to_end = true;
                return Ok(shard);
            }
            // A broker of the cluster down (not necessarily this partition's leader): librdkafka
            // reports it and keeps trying; a replay started from scratch would meet it again.
            Some(Err(KafkaError::MessageConsumption(
                RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::AllBrokersDown,
            )))
            | None => {
                if last_answer.elapsed() > timeout {
                    return Err(ReplayError::Timeout { partition, timeout });
                }
            }
            Some(Err(e)) => return Err(kafka(e)),
        }
    }
}
