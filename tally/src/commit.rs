//! The commit driver of one partition: a transactional producer that turns a shard's [`Batch`]
//! into one Kafka transaction and reports its [`CommitOutcome`] (DESIGN §3.1-3.2).
//!
//! Every call here blocks (librdkafka's transaction API is synchronous), so the reactors run it
//! on their blocking pool, never on a reactor thread. One producer per partition, with
//! `transactional.id = {prefix}votes-{p}`: opening it fences any previous owner of `p`.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientConfig, ClientContext};
use votes_core::Names;

use crate::kafka::transactional_producer_config;
use crate::shard::{Batch, CommitOutcome};

/// How often a retriable commit error is retried before the outcome is declared unknown.
const COMMIT_RETRIES: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("creating the producer of partition {partition}: {source}")]
    Create {
        partition: u32,
        #[source]
        source: KafkaError,
    },
    #[error("partition {partition} is owned by a newer producer (fenced): {source}")]
    Fenced {
        partition: u32,
        #[source]
        source: KafkaError,
    },
    #[error("init_transactions of partition {partition} failed: {source}")]
    Init {
        partition: u32,
        #[source]
        source: KafkaError,
    },
}

/// Collects the offset (or error) of every record of the batch in flight. Callbacks run inside
/// `flush`/`commit_transaction` on the committer's own thread, so the mutex is never contended.
#[derive(Default)]
pub struct DeliveryCollector {
    results: Mutex<Vec<Option<Result<u64, KafkaError>>>>,
}

impl ClientContext for DeliveryCollector {}

impl ProducerContext for DeliveryCollector {
    type DeliveryOpaque = Box<usize>;

    fn delivery(&self, result: &DeliveryResult<'_>, index: Self::DeliveryOpaque) {
        let outcome = match result {
            Ok(m) => Ok(u64::try_from(m.offset()).expect("a delivered record has an offset")),
            Err((e, _)) => Err(e.clone()),
        };
        let mut results = self.results.lock().unwrap_or_else(|p| p.into_inner());
        let slot = results
            .get_mut(*index)
            .expect("delivery index within the batch");
        assert!(slot.is_none(), "one delivery report per record");
        *slot = Some(outcome);
    }
}

pub struct PartitionProducer {
    producer: BaseProducer<DeliveryCollector>,
    topic: String,
    partition: u32,
    timeout: Duration,
}

impl PartitionProducer {
    /// Creates the partition's transactional producer and fences every earlier owner: once this
    /// returns, a zombie's open transaction is aborted and its later commits fail.
    pub fn open(
        brokers: &str,
        names: &Names,
        partition: u32,
        timeout: Duration,
        linger: Duration,
    ) -> Result<Self, CommitError> {
        let mut cfg: ClientConfig =
            transactional_producer_config(brokers, &names.transactional_id(partition));
        cfg.set("linger.ms", linger.as_millis().to_string());
        let producer: BaseProducer<DeliveryCollector> = cfg
            .create_with_context(DeliveryCollector::default())
            .map_err(|source| CommitError::Create { partition, source })?;
        producer.init_transactions(timeout).map_err(|source| {
            if is_fencing(&source) {
                CommitError::Fenced { partition, source }
            } else {
                CommitError::Init { partition, source }
            }
        })?;
        Ok(Self {
            producer,
            topic: names.votes_topic(),
            partition,
            timeout,
        })
    }

    pub fn partition(&self) -> u32 {
        self.partition
    }

    /// Writes `batch` in one transaction and says how it ended. Never panics on broker errors:
    /// every failure maps to `Aborted` (certainly not committed), `Fenced` or `Unknown`.
    pub fn commit(&self, batch: &Batch) -> CommitOutcome {
        assert_eq!(
            batch.partition, self.partition,
            "a batch goes to its own partition"
        );
        assert!(!batch.is_empty(), "empty batches are never committed");
        {
            let mut results = self
                .producer
                .context()
                .results
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            results.clear();
            results.resize_with(batch.len(), || None);
        }
        if let Err(e) = self.producer.begin_transaction() {
            return self.settle_failure(e);
        }
        let deadline = Instant::now() + self.timeout;
        let partition = i32::try_from(self.partition).expect("partition fits i32");
        for i in 0..batch.len() {
            let (key, value) = batch.record(i);
            let mut opaque = Box::new(i);
            loop {
                let record = BaseRecord::with_opaque_to(&self.topic, opaque)
                    .partition(partition)
                    .key(&key[..])
                    .payload(value);
                match self.producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), rec))
                        if Instant::now() < deadline =>
                    {
                        opaque = rec.delivery_opaque;
                        self.producer.poll(Duration::from_millis(5));
                    }
                    Err((e, _)) => return self.abort(e),
                }
            }
        }
        // Wait for every delivery report. rust-rdkafka's `flush` polls in 100 ms steps and
        // would add up to 100 ms to every batch; polling in 1 ms steps returns as soon as the
        // last report is served (each poll returns early on an event).
        while self.producer.in_flight_count() > 0 {
            if Instant::now() >= deadline {
                return self.abort(KafkaError::Flush(RDKafkaErrorCode::MessageTimedOut));
            }
            self.producer.poll(Duration::from_millis(1));
        }
        let offsets: Result<Vec<u64>, KafkaError> = {
            let results = self
                .producer
                .context()
                .results
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            results
                .iter()
                .map(|r| {
                    r.clone()
                        .unwrap_or(Err(KafkaError::Flush(RDKafkaErrorCode::MessageTimedOut)))
                })
                .collect()
        };
        let offsets = match offsets {
            Ok(o) => o,
            Err(e) => return self.abort(e),
        };
        let mut attempt = 0;
        loop {
            match self.producer.commit_transaction(self.timeout) {
                Ok(()) => return CommitOutcome::Committed { offsets },
                Err(e) => {
                    let Some(rd) = txn_error(&e) else {
                        return CommitOutcome::Unknown;
                    };
                    if rd.is_fatal() {
                        return CommitOutcome::Fenced;
                    }
                    if rd.txn_requires_abort() {
                        return self.abort(e);
                    }
                    attempt += 1;
                    if !rd.is_retriable() || attempt > COMMIT_RETRIES {
                        tracing::warn!(partition = self.partition, error = %e, "commit outcome unknown");
                        return CommitOutcome::Unknown;
                    }
                }
            }
        }
    }

    fn abort(&self, cause: KafkaError) -> CommitOutcome {
        if txn_error(&cause).is_some_and(|rd| rd.is_fatal()) || is_fencing(&cause) {
            return CommitOutcome::Fenced;
        }
        tracing::warn!(partition = self.partition, error = %cause, "aborting transaction");
        match self.producer.abort_transaction(self.timeout) {
            Ok(()) => CommitOutcome::Aborted,
            Err(e) => self.settle_failure(e),
        }
    }

    /// A failure outside commit: fatal means fenced, anything else leaves the outcome unknown
    /// (the producer is recreated and the log replayed before the shard accepts again).
    fn settle_failure(&self, e: KafkaError) -> CommitOutcome {
        if txn_error(&e).is_some_and(|rd| rd.is_fatal()) || is_fencing(&e) {
            CommitOutcome::Fenced
        } else {
            tracing::warn!(partition = self.partition, error = %e, "transaction failed");
            CommitOutcome::Unknown
        }
    }
}

fn txn_error(e: &KafkaError) -> Option<&RDKafkaError> {
    match e {
        KafkaError::Transaction(rd) => Some(rd),
        _ => None,
    }
}

fn is_fencing(e: &KafkaError) -> bool {
    let code = match e {
        KafkaError::Transaction(rd) => rd.code(),
        other => match other.rdkafka_error_code() {
            Some(code) => code,
            None => return false,
        },
    };
    matches!(
        code,
        RDKafkaErrorCode::Fenced
            | RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::InvalidProducerEpoch
    )
}
