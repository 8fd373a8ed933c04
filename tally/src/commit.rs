//! The commit driver of one partition: a transactional producer that turns a shard's [`Batch`]
//! into one Kafka transaction and reports its [`CommitOutcome`] (DESIGN §3.1-3.2).
//!
//! Every call here blocks (librdkafka's transaction API is synchronous), so the reactors run it
//! on their blocking pool, never on a reactor thread. One producer per partition, with
//! `transactional.id = {prefix}votes-{p}`: opening it fences any previous owner of `p`.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
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

/// Collects the offset (or error) of every record of the batch in flight and wakes the
/// committer when the last one is in. Reports are served by the producer's own polling thread:
/// rust-rdkafka's `BaseProducer::poll` serves events until its deadline has passed, so polling
/// from the committer either spins (short deadlines round down to 0 ms) or adds its whole
/// timeout to every batch (its `flush` polls in 100 ms steps).
#[derive(Default)]
pub struct DeliveryCollector {
    state: Mutex<Deliveries>,
    all_in: Condvar,
}

#[derive(Default)]
struct Deliveries {
    results: Vec<Option<Result<u64, KafkaError>>>,
    pending: usize,
}

impl DeliveryCollector {
    fn lock(&self) -> std::sync::MutexGuard<'_, Deliveries> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn expect(&self, records: usize) {
        let mut d = self.lock();
        d.results.clear();
        d.results.resize_with(records, || None);
        d.pending = records;
    }

    /// Waits until every record of the batch has its report; `None` at the deadline.
    fn wait(&self, deadline: Instant) -> Option<Result<Vec<u64>, KafkaError>> {
        let mut d = self.lock();
        while d.pending > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            d = self
                .all_in
                .wait_timeout(d, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Some(
            d.results
                .iter()
                .map(|r| r.clone().expect("every record reported"))
                .collect(),
        )
    }

    /// Forgets the batch: after an abort its outstanding reports no longer matter.
    fn reset(&self) {
        let mut d = self.lock();
        d.results.clear();
        d.pending = 0;
    }
}

impl ClientContext for DeliveryCollector {}

impl ProducerContext for DeliveryCollector {
    type DeliveryOpaque = Box<usize>;

    fn delivery(&self, result: &DeliveryResult<'_>, index: Self::DeliveryOpaque) {
        let outcome = match result {
            Ok(m) => Ok(u64::try_from(m.offset()).expect("a delivered record has an offset")),
            Err((e, _)) => Err(e.clone()),
        };
        let mut d = self.lock();
        // A late report of a batch already aborted and reset: nothing waits for it.
        let Some(slot) = d.results.get_mut(*index) else {
            return;
        };
        if slot.is_some() {
            return;
        }
        *slot = Some(outcome);
        d.pending -= 1;
        if d.pending == 0 {
            self.all_in.notify_all();
        }
    }
}

pub struct PartitionProducer {
    producer: ThreadedProducer<DeliveryCollector>,
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
        let producer: ThreadedProducer<DeliveryCollector> = cfg
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
        self.producer.context().expect(batch.len());
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
                        // The producer's polling thread drains the queue; give it a moment.
                        opaque = rec.delivery_opaque;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err((e, _)) => return self.abort(e),
                }
            }
        }
        let offsets = match self.producer.context().wait(deadline) {
            Some(Ok(offsets)) => offsets,
            Some(Err(e)) => return self.abort(e),
            None => return self.abort(KafkaError::Flush(RDKafkaErrorCode::MessageTimedOut)),
        };
        if !self.wait_until_released(deadline) {
            return self.abort(KafkaError::Flush(RDKafkaErrorCode::MessageTimedOut));
        }
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

    /// Waits until librdkafka has let go of every record of the batch. The last delivery report
    /// wakes us from inside its callback, while librdkafka still counts that record; rust-rdkafka's
    /// `commit_transaction` flushes first, and a flush that sees one record outstanding polls
    /// for a whole 100 ms step. The gap is microseconds: yield, then sleep briefly.
    fn wait_until_released(&self, deadline: Instant) -> bool {
        for spin in 0u32.. {
            if self.producer.in_flight_count() == 0 {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            if spin < 64 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
        unreachable!("the loop returns")
    }

    fn abort(&self, cause: KafkaError) -> CommitOutcome {
        self.producer.context().reset();
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
