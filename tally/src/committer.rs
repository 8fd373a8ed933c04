//! The committer of one core: a long-lived thread that owns the core's transactional producer
//! and carries out its engine's [`Job`]s (open the producer; write one transaction), one at a
//! time, reporting each result on a channel and ringing the core's doorbell (DESIGN §3.1-3.2).
//!
//! Why a thread of its own: librdkafka's transaction calls block, and a reactor never blocks.
//! The thread polls its producer itself — delivery reports are read from the producer's event
//! queue on this thread, between produce and commit — so there is no second polling thread, no
//! per-record allocation or lock, and no spinning: idle, the thread sleeps on its job channel.
//!
//! One producer per core, `transactional.id = {prefix}votes-{node}-{core}`: its
//! `init_transactions` fences every earlier incarnation of this core (a restart, a duplicate
//! process) and aborts what it left open. A transaction spans every partition the core owns;
//! its records go out in one produce call per partition, and its offsets commit carries the
//! core's group generation, so the coordinator refuses it (and it aborts) once the group gave a
//! partition of this core to someone else (KIP-447).

use std::ffi::CString;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::bindings as rd;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, RDKafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, Producer, ProducerContext};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use votes_core::Names;

use crate::engine::{OpenFailure, TxnId, TxnOutcome};
use crate::kafka::transactional_producer_config;
use crate::shard::Batch;

/// How often a retriable commit error is retried before the outcome is declared unknown.
const COMMIT_RETRIES: u32 = 3;
/// Longest single wait for delivery reports (bounds how late a deadline is noticed).
const POLL_STEP_MS: i32 = 100;

#[derive(Debug, thiserror::Error)]
pub enum CommitterError {
    #[error("creating the producer of {transactional_id}: {source}")]
    Create {
        transactional_id: String,
        #[source]
        source: KafkaError,
    },
    #[error("init_transactions of {transactional_id}: {source}")]
    Init {
        transactional_id: String,
        fenced: bool,
        #[source]
        source: KafkaError,
    },
    #[error("the topic name {0:?} holds a NUL byte")]
    Topic(String),
    #[error("starting the committer thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// Who the committer writes as, and where.
#[derive(Clone, Debug)]
pub struct CommitterConfig {
    pub brokers: String,
    pub names: Names,
    pub node: String,
    pub core: u16,
    /// Bound on each blocking Kafka call (init, offsets, commit, abort) and on the delivery of
    /// a transaction's records.
    pub timeout: Duration,
}

impl CommitterConfig {
    pub fn transactional_id(&self) -> String {
        self.names.core_transactional_id(&self.node, self.core)
    }
}

/// Work for the committer thread.
pub enum Job {
    Open {
        attempt: u64,
    },
    Commit {
        txn: TxnId,
        batches: Vec<Batch>,
        /// The group metadata the engine's generation token names.
        group: Arc<ConsumerGroupMetadata>,
    },
}

/// What the committer reports back.
#[derive(Debug)]
pub enum Finished {
    Opened {
        attempt: u64,
        result: Result<(), OpenFailure>,
    },
    Txn {
        txn: TxnId,
        outcome: TxnOutcome,
        /// The records carried, for the core's metrics.
        votes: usize,
        elapsed: Duration,
    },
}

/// The handle of a core's committer thread. Dropping it ends the thread after its current
/// job (the thread then drops the producer, off the reactor).
pub struct Committer {
    jobs: Arc<JobSlot>,
    _thread: JoinHandle<()>,
}

/// Where the engine's one job waits for the committer: a mutex and a condition variable, so
/// the idle thread sleeps at once (a channel's receive spins and yields first, a few dozen
/// wasted system calls per transaction).
#[derive(Default)]
struct JobSlot {
    state: Mutex<(Option<Job>, bool)>,
    ready: Condvar,
}

impl JobSlot {
    fn put(&self, job: Job) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        assert!(
            s.0.is_none(),
            "the engine has at most one job out and the committer takes each at once"
        );
        s.0 = Some(job);
        self.ready.notify_one();
    }

    /// The next job; `None` once the handle is gone.
    fn take(&self) -> Option<Job> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(job) = s.0.take() {
                return Some(job);
            }
            if s.1 {
                return None;
            }
            s = self.ready.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn close(&self) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).1 = true;
        self.ready.notify_one();
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        self.jobs.close();
    }
}

impl Committer {
    /// Starts the thread. `finished` receives every result; `wake` is called after each (the
    /// core's doorbell).
    pub fn start(
        cfg: CommitterConfig,
        finished: crossbeam_channel::Sender<Finished>,
        wake: impl Fn() + Send + 'static,
    ) -> Result<Self, CommitterError> {
        let jobs = Arc::new(JobSlot::default());
        let slot = jobs.clone();
        let thread = std::thread::Builder::new()
            .name(format!("commit-{}", cfg.core))
            .spawn(move || {
                let mut producer: Option<CoreProducer> = None;
                while let Some(job) = slot.take() {
                    let done = match job {
                        Job::Open { attempt } => {
                            // The old producer goes first: its epoch is fenced by the new one
                            // anyway, and two clients of one id only fight.
                            drop(producer.take());
                            let result = match CoreProducer::open(&cfg) {
                                Ok(p) => {
                                    producer = Some(p);
                                    Ok(())
                                }
                                Err(e) => {
                                    tracing::warn!(core = cfg.core, error = %e, "cannot open the core's producer");
                                    Err(match e {
                                        CommitterError::Init { fenced: true, .. } => {
                                            OpenFailure::Fenced
                                        }
                                        _ => OpenFailure::Transient,
                                    })
                                }
                            };
                            Finished::Opened { attempt, result }
                        }
                        Job::Commit {
                            txn,
                            batches,
                            group,
                        } => {
                            let started = Instant::now();
                            let votes = batches.iter().map(Batch::len).sum();
                            let outcome = match &mut producer {
                                Some(p) => p.commit(&batches, &group),
                                // Never opened (the engine only commits after an open): nothing
                                // was sent.
                                None => TxnOutcome::Aborted,
                            };
                            Finished::Txn {
                                txn,
                                outcome,
                                votes,
                                elapsed: started.elapsed(),
                            }
                        }
                    };
                    if finished.send(done).is_err() {
                        break; // The core is gone.
                    }
                    wake();
                }
            })
            .map_err(CommitterError::Thread)?;
        Ok(Self {
            jobs,
            _thread: thread,
        })
    }

    /// Hands a job to the thread; never blocks (the engine has at most one out, and the
    /// thread reports a job's result only after it took the job).
    pub fn submit(&self, job: Job) {
        self.jobs.put(job);
    }
}

/// Delivery reports are not used by rust-rdkafka here: the committer reads them itself.
struct Quiet;
impl ClientContext for Quiet {}
impl ProducerContext for Quiet {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::producer::DeliveryResult<'_>, _: ()) {}
}

/// A core's transactional producer, used by one thread only.
pub struct CoreProducer {
    producer: BaseProducer<Quiet>,
    /// The producer's main event queue, where delivery reports arrive.
    queue: *mut rd::rd_kafka_queue_t,
    topic: *mut rd::rd_kafka_topic_t,
    topic_name: String,
    timeout: Duration,
    core: u16,
    /// Reused message array of the produce calls.
    messages: Vec<rd::rd_kafka_message_t>,
}

impl Drop for CoreProducer {
    fn drop(&mut self) {
        // SAFETY: both handles were obtained from this producer's client in `open` and are
        // released exactly once, before the client itself is destroyed (field drop order).
        unsafe {
            rd::rd_kafka_topic_destroy(self.topic);
            rd::rd_kafka_queue_destroy(self.queue);
        }
    }
}

impl CoreProducer {
    /// Creates the core's producer and fences every earlier producer with its transactional
    /// id: once this returns, what an earlier incarnation left open is aborted.
    pub fn open(cfg: &CommitterConfig) -> Result<Self, CommitterError> {
        let transactional_id = cfg.transactional_id();
        let mut config: ClientConfig =
            transactional_producer_config(&cfg.brokers, &transactional_id);
        // The committer produces a whole transaction in one go and then wakes the senders
        // (flush with a zero timeout), so a transaction's records of one partition leave in one
        // ProduceRequest; the linger only matters if that wake-up is missed.
        config.set("linger.ms", "1");
        let producer: BaseProducer<Quiet> =
            config
                .create_with_context(Quiet)
                .map_err(|source| CommitterError::Create {
                    transactional_id: transactional_id.clone(),
                    source,
                })?;
        producer
            .init_transactions(cfg.timeout)
            .map_err(|source| CommitterError::Init {
                fenced: is_fencing(&source),
                transactional_id: transactional_id.clone(),
                source,
            })?;
        let topic_name = cfg.names.votes_topic();
        let c_topic = CString::new(topic_name.clone())
            .map_err(|_| CommitterError::Topic(topic_name.clone()))?;
        let rk = producer.client().native_ptr();
        // SAFETY: `rk` is a live client; the topic and queue handles are released in Drop.
        let (topic, queue) = unsafe {
            (
                rd::rd_kafka_topic_new(rk, c_topic.as_ptr(), std::ptr::null_mut()),
                rd::rd_kafka_queue_get_main(rk),
            )
        };
        assert!(!topic.is_null() && !queue.is_null(), "librdkafka handles");
        Ok(Self {
            producer,
            queue,
            topic,
            topic_name,
            timeout: cfg.timeout,
            core: cfg.core,
            messages: Vec::new(),
        })
    }

    /// Writes `batches` (one per partition) in one transaction whose offsets carry `group`, and
    /// says how it ended. Never panics on broker errors: every failure maps to `Aborted`
    /// (certainly not committed), `Fenced` or `Unknown`.
    pub fn commit(&mut self, batches: &[Batch], group: &ConsumerGroupMetadata) -> TxnOutcome {
        self.commit_pausing(batches, group, || {})
    }

    /// [`CoreProducer::commit`], calling `pause` once every record is in the log (open) and
    /// before the offsets with the group generation go out: where a process stopped by
    /// SIGSTOP (a zombie) would sit. For the tests of that case.
    pub fn commit_pausing(
        &mut self,
        batches: &[Batch],
        group: &ConsumerGroupMetadata,
        pause: impl FnOnce(),
    ) -> TxnOutcome {
        assert!(!batches.is_empty() && batches.iter().all(|b| !b.is_empty()));
        debug_assert!(
            batches.windows(2).all(|w| w[0].partition != w[1].partition) || batches.len() < 2,
            "one batch per partition"
        );
        if let Err(e) = self.producer.begin_transaction() {
            return self.settle_failure(e);
        }
        let deadline = Instant::now() + self.timeout;
        if let Err(e) = self.produce(batches) {
            return self.abort(e);
        }
        let offsets = match self.deliveries(batches, deadline) {
            Ok(offsets) => offsets,
            Err(e) => return self.abort(e),
        };
        pause();
        let mut tpl = TopicPartitionList::new();
        for (b, offs) in batches.iter().zip(&offsets) {
            let next = offs.last().map_or(0, |o| o + 1);
            if let Err(e) = tpl.add_partition_offset(
                &self.topic_name,
                i32::try_from(b.partition).expect("partition fits i32"),
                Offset::Offset(i64::try_from(next).expect("offsets fit i64")),
            ) {
                return self.abort(e);
            }
        }
        // The coordinator checks the member's generation here: a core whose partitions moved
        // (a paused zombie, a stale member) cannot commit, whatever it already produced.
        let mut attempt = 0;
        while let Err(e) = self
            .producer
            .send_offsets_to_transaction(&tpl, group, self.timeout)
        {
            attempt += 1;
            match txn_error(&e) {
                Some(rd)
                    if rd.is_retriable()
                        && !rd.txn_requires_abort()
                        && attempt <= COMMIT_RETRIES => {}
                _ => return self.abort(e),
            }
        }
        let mut attempt = 0;
        loop {
            match self.producer.commit_transaction(self.timeout) {
                Ok(()) => return TxnOutcome::Committed { offsets },
                Err(e) => {
                    let Some(rd) = txn_error(&e) else {
                        return TxnOutcome::Unknown;
                    };
                    if rd.is_fatal() {
                        return TxnOutcome::Fenced;
                    }
                    if rd.txn_requires_abort() {
                        return self.abort(e);
                    }
                    attempt += 1;
                    if !rd.is_retriable() || attempt > COMMIT_RETRIES {
                        tracing::warn!(core = self.core, error = %e, "commit outcome unknown");
                        return TxnOutcome::Unknown;
                    }
                }
            }
        }
    }

    /// Enqueues every record, one librdkafka call per partition, then wakes the senders.
    fn produce(&mut self, batches: &[Batch]) -> Result<(), KafkaError> {
        for (bi, b) in batches.iter().enumerate() {
            self.messages.clear();
            for i in 0..b.len() {
                let (key, value) = b.record(i);
                self.messages.push(rd::rd_kafka_message_t {
                    err: rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR,
                    rkt: std::ptr::null_mut(),
                    partition: 0,
                    payload: value.as_ptr() as *mut _,
                    len: value.len(),
                    key: key.as_ptr() as *mut _,
                    key_len: key.len(),
                    offset: 0,
                    // Which record this is, read back from its delivery report.
                    _private: delivery_tag(bi, i) as *mut _,
                });
            }
            let n = i32::try_from(self.messages.len()).expect("a batch fits i32");
            // SAFETY: the topic handle is live; the messages point into `b`, which outlives the
            // call, and RD_KAFKA_MSG_F_COPY makes librdkafka copy key and payload.
            let enqueued = unsafe {
                rd::rd_kafka_produce_batch(
                    self.topic,
                    i32::try_from(b.partition).expect("partition fits i32"),
                    rd::RD_KAFKA_MSG_F_COPY,
                    self.messages.as_mut_ptr(),
                    n,
                )
            };
            if enqueued != n {
                let err = self
                    .messages
                    .iter()
                    .map(|m| m.err)
                    .find(|e| *e != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR)
                    .unwrap_or(rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR__FAIL);
                return Err(KafkaError::MessageProduction(err.into()));
            }
        }
        // SAFETY: a live producer; a zero timeout only sets "flushing" and wakes the brokers.
        unsafe {
            rd::rd_kafka_flush(self.producer.client().native_ptr(), 0);
        }
        Ok(())
    }

    /// Reads the delivery report of every record from the producer's event queue.
    fn deliveries(
        &mut self,
        batches: &[Batch],
        deadline: Instant,
    ) -> Result<Vec<Vec<u64>>, KafkaError> {
        let mut offsets: Vec<Vec<u64>> = batches.iter().map(|b| vec![u64::MAX; b.len()]).collect();
        let mut pending: usize = batches.iter().map(Batch::len).sum();
        let mut failed = None;
        while pending > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(KafkaError::Flush(RDKafkaErrorCode::MessageTimedOut));
            }
            let wait = i32::try_from(left.as_millis())
                .unwrap_or(i32::MAX)
                .clamp(1, POLL_STEP_MS);
            // SAFETY: the queue handle is live; the event is destroyed below, once read.
            let ev = unsafe { rd::rd_kafka_queue_poll(self.queue, wait) };
            if ev.is_null() {
                continue;
            }
            // SAFETY: `ev` is a live event until destroyed at the end of this block; messages
            // returned by `rd_kafka_event_message_next` live as long as the event.
            unsafe {
                match rd::rd_kafka_event_type(ev) {
                    rd::RD_KAFKA_EVENT_DR => loop {
                        let m = rd::rd_kafka_event_message_next(ev);
                        if m.is_null() {
                            break;
                        }
                        let (bi, i) = from_delivery_tag((*m)._private as usize);
                        let slot = offsets.get_mut(bi).and_then(|o| o.get_mut(i));
                        match slot {
                            // A report of an earlier, aborted transaction: nothing waits for it.
                            None => {}
                            Some(slot) if *slot != u64::MAX => {}
                            Some(slot) => {
                                if (*m).err == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                                    *slot = u64::try_from((*m).offset).unwrap_or(u64::MAX - 1);
                                } else {
                                    failed.get_or_insert((*m).err);
                                    *slot = u64::MAX - 1;
                                }
                                pending -= 1;
                            }
                        }
                    },
                    rd::RD_KAFKA_EVENT_ERROR => {
                        let err = rd::rd_kafka_event_error(ev);
                        let why = std::ffi::CStr::from_ptr(rd::rd_kafka_event_error_string(ev))
                            .to_string_lossy()
                            .into_owned();
                        tracing::warn!(core = self.core, error = ?RDKafkaErrorCode::from(err), %why, "producer");
                    }
                    _ => {}
                }
                rd::rd_kafka_event_destroy(ev);
            }
        }
        if let Some(err) = failed {
            return Err(KafkaError::MessageProduction(err.into()));
        }
        debug_assert!(
            offsets.iter().all(|o| o.is_sorted()),
            "a partition's records are in order"
        );
        Ok(offsets)
    }

    fn abort(&mut self, cause: KafkaError) -> TxnOutcome {
        if txn_error(&cause).is_some_and(|rd| rd.is_fatal()) || is_fencing(&cause) {
            return TxnOutcome::Fenced;
        }
        tracing::warn!(core = self.core, error = %cause, "aborting transaction");
        let outcome = match self.producer.abort_transaction(self.timeout) {
            Ok(()) => TxnOutcome::Aborted,
            Err(e) => self.settle_failure(e),
        };
        // The aborted records' reports (purged by the abort) are of no use now.
        self.drain_events();
        outcome
    }

    /// Drops whatever events wait in the queue (reports of an aborted transaction).
    fn drain_events(&mut self) {
        loop {
            // SAFETY: the queue handle is live; each event is destroyed at once.
            let ev = unsafe { rd::rd_kafka_queue_poll(self.queue, 0) };
            if ev.is_null() {
                return;
            }
            unsafe { rd::rd_kafka_event_destroy(ev) };
        }
    }

    /// A failure outside commit: fatal means fenced, anything else leaves the outcome unknown
    /// (the engine reopens the producer and replays before those partitions accept again).
    fn settle_failure(&self, e: KafkaError) -> TxnOutcome {
        if txn_error(&e).is_some_and(|rd| rd.is_fatal()) || is_fencing(&e) {
            TxnOutcome::Fenced
        } else {
            tracing::warn!(core = self.core, error = %e, "transaction failed");
            TxnOutcome::Unknown
        }
    }
}

/// Batch and record index of a delivery report, packed into librdkafka's opaque pointer.
fn delivery_tag(batch: usize, record: usize) -> usize {
    assert!(batch < 1 << 16 && record < 1 << 31);
    (batch << 32) | record | 1 << 31
}

fn from_delivery_tag(tag: usize) -> (usize, usize) {
    (tag >> 32, tag & ((1 << 31) - 1))
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

/// Fences the transactional id of another core (a former owner whose transaction stays open in
/// a partition this core recovers): its epoch is bumped and what it left open is aborted.
pub fn fence_writer(
    brokers: &str,
    transactional_id: &str,
    timeout: Duration,
) -> Result<(), KafkaError> {
    let producer: BaseProducer<Quiet> =
        transactional_producer_config(brokers, transactional_id).create_with_context(Quiet)?;
    producer.init_transactions(timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_tags_round_trip_and_are_never_null() {
        for (b, r) in [(0, 0), (3, 7), (65_535, (1 << 31) - 1)] {
            let t = delivery_tag(b, r);
            assert_ne!(t, 0, "librdkafka's opaque may not look like a null pointer");
            assert_eq!(from_delivery_tag(t), (b, r));
        }
    }
}
