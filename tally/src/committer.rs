//! The committer of a node (or of one core): a long-lived thread that owns a transactional
//! producer and carries out its engines' [`Job`]s (open the producer; write a transaction),
//! reporting each result on the core's channel and ringing the core's doorbell (docs/design.md §3.1-3.2).
//!
//! Why a thread of its own: librdkafka's transaction calls block, and a reactor never blocks.
//! The thread polls its producer itself — delivery reports are read from the producer's event
//! queue on this thread, between produce and commit — so there is no second polling thread, no
//! per-record allocation or lock, and no spinning: idle, the thread sleeps on its mailbox.
//!
//! The broker's work per transaction, not per vote, is what a vote costs (perf/RESULTS.md), so
//! the default is one committer per node ([`Scope::Node`], `transactional.id =
//! {prefix}votes-{node}-node`): each core's engine still paces and hands over its own batch,
//! and the thread takes every batch handed over while it was busy (waiting [`GATHER_SLACK`]
//! for the cores of its last transaction) into one transaction; on N cores that is up to N
//! times fewer transactions. Each core's offsets go out with that core's group generation, so
//! the coordinator refuses the transaction (and it aborts) once the group gave a partition of
//! any of its cores to someone else (KIP-447): a stale core aborts its peers' transactions
//! until it hears of its revocation (a heartbeat or two), and a fence of the node's id (by
//! another node's recovery) fences every core of the node at once.
//! `init_transactions` fences every earlier incarnation (a restart, a duplicate process) and
//! aborts what it left open. [`Scope::Core`] keeps one producer and thread per core
//! (`{prefix}votes-{node}-{core}`).

use std::ffi::CString;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::bindings as rd;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, RDKafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, Producer, ProducerContext};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use votes_core::Names;

use crate::engine::{Event, OpenFailure, TxnId, TxnOutcome};
use crate::kafka::transactional_producer_config;
use crate::shard::Batch;

/// How often a retriable commit error is retried before the outcome is declared unknown.
const COMMIT_RETRIES: u32 = 3;
/// Longest single wait for delivery reports (bounds how late a deadline is noticed).
const POLL_STEP_MS: i32 = 100;

/// Since when a committer thread has been inside one blocking librdkafka call. Each such call
/// is bounded by the committer's timeout, yet one can wait forever: librdkafka 2.12's
/// `send_offsets_to_transaction` waits without end when the group coordinator's broker died
/// (confluentinc/librdkafka#5456: the coordinator request's timeout is never checked; #5511).
/// A call running a quarter past its bound is taken for one of those ([`Committer::stuck_for`]),
/// and the thread's owner gives the thread up.
pub struct CallWatch {
    base: Instant,
    /// Microseconds from `base` to the start of the call in progress, plus one; 0: none.
    since: AtomicU64,
}

impl CallWatch {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            base: Instant::now(),
            since: AtomicU64::new(0),
        })
    }

    /// Marks a blocking call as begun until the guard drops.
    fn enter(self: &Arc<Self>) -> CallGuard {
        let at = u64::try_from(self.base.elapsed().as_micros()).unwrap_or(u64::MAX - 1) + 1;
        let before = self.since.swap(at, Ordering::Relaxed);
        debug_assert_eq!(before, 0, "one blocking call at a time per committer");
        CallGuard(self.clone())
    }

    /// How long the call in progress has run; `None` between calls.
    pub fn in_call_for(&self) -> Option<Duration> {
        match self.since.load(Ordering::Relaxed) {
            0 => None,
            at => Some(
                self.base
                    .elapsed()
                    .saturating_sub(Duration::from_micros(at - 1)),
            ),
        }
    }
}

struct CallGuard(Arc<CallWatch>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.0.since.store(0, Ordering::Relaxed);
    }
}

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

/// Whose votes one committer's transactions carry, which names its producer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// One core's: `transactional.id = {prefix}votes-{node}-{core}`.
    Core(u16),
    /// Every core of the node's: `{prefix}votes-{node}-node`. A transaction then carries the
    /// batches of every core that has one ready, and each core's offsets with that core's own
    /// group generation, so each core's partitions stay fenced by its own membership.
    Node,
}

/// Who the committer writes as, and where.
#[derive(Clone, Debug)]
pub struct CommitterConfig {
    pub brokers: String,
    pub names: Names,
    pub node: String,
    pub scope: Scope,
    /// Bound on each blocking Kafka call (init, offsets, commit, abort) and on the delivery of
    /// a transaction's records.
    pub timeout: Duration,
}

impl CommitterConfig {
    pub fn transactional_id(&self) -> String {
        match self.scope {
            Scope::Core(core) => self.names.core_transactional_id(&self.node, core),
            Scope::Node => self.names.node_transactional_id(&self.node),
        }
    }

    /// For the committer's log lines.
    fn label(&self) -> String {
        match self.scope {
            Scope::Core(core) => format!("core {core}"),
            Scope::Node => "node".to_owned(),
        }
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
        /// The records carried (this core's), for the core's metrics.
        votes: usize,
        /// From the job's hand-over to its outcome (a node committer's gathering included).
        elapsed: Duration,
        /// The group coordinator refused this core's offsets for its generation (unknown
        /// member, illegal generation, fenced instance): the group no longer counts the core's
        /// member as the one it gave that generation to. Normal for a moment after a
        /// rebalance; for long, the member's client is wedged ([`crate::membership::Rejoin`]).
        generation_refused: bool,
    },
}

impl Finished {
    /// Whether this is a transaction whose offsets the coordinator refused for this core's
    /// group generation.
    pub fn generation_refused(&self) -> bool {
        matches!(
            self,
            Finished::Txn {
                generation_refused: true,
                ..
            }
        )
    }

    /// The engine's event for this result; a finished transaction's votes, time and outcome go
    /// to `txn_figures` first (the caller's metrics).
    pub fn into_event(self, txn_figures: impl FnOnce(usize, Duration, &TxnOutcome)) -> Event {
        match self {
            Finished::Opened { attempt, result } => Event::ProducerOpened { attempt, result },
            Finished::Txn {
                txn,
                outcome,
                votes,
                elapsed,
                generation_refused: _,
            } => {
                txn_figures(votes, elapsed, &outcome);
                Event::TxnDone { txn, outcome }
            }
        }
    }
}

/// How long a node committer holding a ready job waits for the other cores that were in its
/// last transaction. Cores of one transaction hear its outcome at the same moment and, loaded,
/// hand over their next batches within microseconds of each other; without this wait a few µs
/// of skew split them into alternating transactions, one core each, and the merge is lost. A
/// core that has not handed over after this long has no votes, or a window far from its peers'.
const GATHER_SLACK: Duration = Duration::from_millis(2);

/// Where the engines' jobs wait for the committer thread: one slot per core (an engine has at
/// most one job out), a mutex and a condition variable, so the idle thread sleeps at once (a
/// channel's receive spins and yields first, a few dozen wasted system calls per transaction).
/// Touched once per job by a core and once per transaction by the thread: never per vote.
struct Mailbox {
    state: Mutex<MailState>,
    ready: Condvar,
    /// The thread's blocking calls, watched by its ports.
    watch: Arc<CallWatch>,
    /// The bound of each of those calls.
    timeout: Duration,
}

struct MailState {
    slots: Vec<Slot>,
    /// Ports and group handles alive; the thread ends when none is left and no job waits.
    handles: usize,
}

#[derive(Default)]
struct Slot {
    job: Option<(Job, Instant)>,
    link: Option<Arc<Link>>,
    /// Whether this core's job was in the last transaction: the thread waits a little for it.
    in_last_txn: bool,
}

/// How the thread answers one core.
struct Link {
    finished: crossbeam_channel::Sender<Finished>,
    wake: Box<dyn Fn() + Send + Sync>,
}

impl Link {
    /// `false` once the core is gone.
    fn send(&self, done: Finished) -> bool {
        let sent = self.finished.send(done).is_ok();
        if sent {
            (self.wake)();
        }
        sent
    }
}

/// Jobs taken by the thread in one go.
struct Gathered {
    opens: Vec<(Arc<Link>, u64)>,
    commits: Vec<Taken>,
}

struct Taken {
    link: Arc<Link>,
    txn: TxnId,
    batches: Vec<Batch>,
    group: Arc<ConsumerGroupMetadata>,
    handed_over: Instant,
}

impl Mailbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, MailState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn put(&self, slot: usize, job: Job) {
        let mut s = self.lock();
        let slot = &mut s.slots[slot];
        assert!(
            slot.job.is_none(),
            "an engine has at most one job out and hears its result only after it was taken"
        );
        assert!(slot.link.is_some(), "a job comes through a live port");
        slot.job = Some((job, Instant::now()));
        self.ready.notify_one();
    }

    fn release(&self) {
        let mut s = self.lock();
        assert!(s.handles > 0);
        s.handles -= 1;
        self.ready.notify_one();
    }

    /// Waits for at least one job, then up to [`GATHER_SLACK`] for the cores of the last
    /// transaction, and takes every job there is. `None` once every handle is gone.
    fn gather(&self) -> Option<Gathered> {
        let mut s = self.lock();
        while s.slots.iter().all(|x| x.job.is_none()) {
            if s.handles == 0 {
                return None;
            }
            s = self.ready.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        let until = Instant::now() + GATHER_SLACK;
        loop {
            let awaited = s
                .slots
                .iter()
                .any(|x| x.in_last_txn && x.job.is_none() && x.link.is_some());
            let left = until.saturating_duration_since(Instant::now());
            if !awaited || left.is_zero() {
                break;
            }
            s = self
                .ready
                .wait_timeout(s, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        let mut gathered = Gathered {
            opens: Vec::new(),
            commits: Vec::new(),
        };
        // Partitions already in this transaction: a partition moving between two cores of
        // the node can be in both their batches for a moment (the old core has not heard of
        // its revocation yet); the later job waits for the next transaction, where the stale
        // one's generation has been refused.
        // Oldest first, so a job put back is not passed over again by a newer one.
        let mut taken: Vec<u32> = Vec::new();
        let mut order: Vec<usize> = (0..s.slots.len()).collect();
        order.sort_by_key(|&i| s.slots[i].job.as_ref().map(|(_, at)| *at));
        for i in order {
            let slot = &mut s.slots[i];
            slot.in_last_txn = false;
            let Some((job, handed_over)) = slot.job.take() else {
                continue;
            };
            // A job whose core dropped its port while it waited: nobody to answer.
            let Some(link) = slot.link.clone() else {
                continue;
            };
            match job {
                Job::Open { attempt } => gathered.opens.push((link, attempt)),
                Job::Commit {
                    txn,
                    batches,
                    group,
                } => {
                    if batches.iter().any(|b| taken.contains(&b.partition)) {
                        slot.job = Some((
                            Job::Commit {
                                txn,
                                batches,
                                group,
                            },
                            handed_over,
                        ));
                        continue;
                    }
                    taken.extend(batches.iter().map(|b| b.partition));
                    slot.in_last_txn = true;
                    gathered.commits.push(Taken {
                        link,
                        txn,
                        batches,
                        group,
                        handed_over,
                    });
                }
            }
        }
        Some(gathered)
    }
}

/// The committer thread of a node (or of one core), shared by its cores' [`Committer`] ports.
/// Dropping this handle and every port ends the thread after its current transaction.
pub struct CommitterThread {
    mailbox: Arc<Mailbox>,
    cores: usize,
    _thread: JoinHandle<()>,
}

impl std::fmt::Debug for CommitterThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommitterThread")
            .field("cores", &self.cores)
            .finish_non_exhaustive()
    }
}

impl Drop for CommitterThread {
    fn drop(&mut self) {
        self.mailbox.release();
    }
}

impl CommitterThread {
    /// Starts the thread for `cores` ports (one per core whose engine it serves).
    pub fn start(cfg: CommitterConfig, cores: usize) -> Result<Self, CommitterError> {
        assert!(cores >= 1 && (cfg.scope == Scope::Node || cores == 1));
        let mailbox = Arc::new(Mailbox {
            state: Mutex::new(MailState {
                slots: (0..cores).map(|_| Slot::default()).collect(),
                handles: 1,
            }),
            ready: Condvar::new(),
            watch: CallWatch::new(),
            timeout: cfg.timeout,
        });
        let mb = mailbox.clone();
        let name = match cfg.scope {
            Scope::Core(core) => format!("commit-{core}"),
            Scope::Node => "commit-node".to_owned(),
        };
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || Worker::new(cfg, mb.watch.clone()).run(&mb))
            .map_err(CommitterError::Thread)?;
        Ok(Self {
            mailbox,
            cores,
            _thread: thread,
        })
    }

    /// The port of core slot `slot`: `finished` receives each of its results, after which
    /// `wake` is called (the core's doorbell).
    pub fn port(
        &self,
        slot: usize,
        finished: crossbeam_channel::Sender<Finished>,
        wake: impl Fn() + Send + Sync + 'static,
    ) -> Committer {
        assert!(slot < self.cores);
        let mut s = self.mailbox.lock();
        assert!(s.slots[slot].link.is_none(), "one port per core");
        s.slots[slot].link = Some(Arc::new(Link {
            finished,
            wake: Box::new(wake),
        }));
        s.handles += 1;
        Committer {
            mailbox: self.mailbox.clone(),
            slot,
            _own_thread: None,
        }
    }
}

/// A core's port to its committer thread.
pub struct Committer {
    mailbox: Arc<Mailbox>,
    slot: usize,
    /// A committer of one core owns its thread.
    _own_thread: Option<CommitterThread>,
}

impl Drop for Committer {
    fn drop(&mut self) {
        let mut s = self.mailbox.lock();
        s.slots[self.slot].link = None;
        s.slots[self.slot].job = None;
        s.slots[self.slot].in_last_txn = false;
        drop(s);
        self.mailbox.release();
    }
}

impl Committer {
    /// A committer thread of one core's own (`cfg.scope` is `Core`). `finished` receives every
    /// result; `wake` is called after each (the core's doorbell).
    pub fn start(
        cfg: CommitterConfig,
        finished: crossbeam_channel::Sender<Finished>,
        wake: impl Fn() + Send + Sync + 'static,
    ) -> Result<Self, CommitterError> {
        assert!(matches!(cfg.scope, Scope::Core(_)));
        let thread = CommitterThread::start(cfg, 1)?;
        let mut port = thread.port(0, finished, wake);
        port._own_thread = Some(thread);
        Ok(port)
    }

    /// Hands a job to the thread; never blocks (the engine has at most one out, and the
    /// thread reports a job's result only after it took the job).
    pub fn submit(&self, job: Job) {
        self.mailbox.put(self.slot, job);
    }

    /// How long the thread has been inside one blocking call, once that is a quarter past
    /// the call's bound: it will not come back ([`CallWatch`]; librdkafka returns its calls by
    /// their timeout, so a quarter more is slack for a loaded machine, not for a slow broker). Its owner then drops this port
    /// (the thread, if it ever returns, answers nobody and ends), takes the job's outcome as
    /// unknown, and starts another committer, whose `init_transactions` fences this one.
    pub fn stuck_for(&self) -> Option<Duration> {
        self.mailbox
            .watch
            .in_call_for()
            .filter(|d| *d > self.mailbox.timeout + self.mailbox.timeout / 4)
    }
}

/// The committer thread's state: its producer, and whether that producer must be opened
/// again before it carries another transaction.
struct Worker {
    cfg: CommitterConfig,
    producer: Option<TxnProducer>,
    watch: Arc<CallWatch>,
}

impl Worker {
    fn new(cfg: CommitterConfig, watch: Arc<CallWatch>) -> Self {
        Self {
            cfg,
            producer: None,
            watch,
        }
    }

    fn run(mut self, mailbox: &Mailbox) {
        while let Some(gathered) = mailbox.gather() {
            for (link, attempt) in gathered.opens {
                let result = self.open();
                link.send(Finished::Opened { attempt, result });
            }
            if !gathered.commits.is_empty() {
                self.commit(gathered.commits);
            }
        }
    }

    /// A core asks for an open producer: after a failed transaction (whose outcome only a new
    /// `init_transactions` settles), after a fence, or at its start. A producer that has
    /// carried nothing but clean outcomes since its own open already settled everything an
    /// earlier one left, so it is kept (the cores of a node share it).
    fn open(&mut self) -> Result<(), OpenFailure> {
        if self.producer.is_some() {
            return Ok(());
        }
        match TxnProducer::open_watched(&self.cfg, self.watch.clone()) {
            Ok(p) => {
                self.producer = Some(p);
                Ok(())
            }
            Err(e) => {
                tracing::warn!(committer = %self.cfg.label(), error = %e, "cannot open the producer");
                Err(match e {
                    CommitterError::Init { fenced: true, .. } => OpenFailure::Fenced,
                    _ => OpenFailure::Transient,
                })
            }
        }
    }

    fn commit(&mut self, commits: Vec<Taken>) {
        // A transaction after another's failure starts on a fresh producer: the failed one is
        // dropped below, and opening the next settles what it left.
        let opened = self.open();
        // The part whose group generation the coordinator refused, if that failed it.
        let mut refused = None;
        let outcomes: Vec<TxnOutcome> = match (&mut self.producer, opened) {
            (Some(p), Ok(())) => {
                let parts: Vec<Part<'_>> = commits
                    .iter()
                    .map(|t| Part {
                        batches: &t.batches,
                        group: &t.group,
                    })
                    .collect();
                match p.commit_parts(&parts, || {}) {
                    Ok(offsets) => offsets
                        .into_iter()
                        .map(|offsets| TxnOutcome::Committed { offsets })
                        .collect(),
                    Err(failure) => {
                        refused = failure.refused_part;
                        vec![failure.outcome; commits.len()]
                    }
                }
            }
            // Nothing was sent.
            (_, Err(OpenFailure::Fenced)) => vec![TxnOutcome::Fenced; commits.len()],
            _ => vec![TxnOutcome::Aborted; commits.len()],
        };
        if outcomes
            .iter()
            .any(|o| matches!(o, TxnOutcome::Fenced | TxnOutcome::Unknown))
        {
            // Fenced is for good; Unknown is settled only by the next init. Either way the
            // producer carries nothing more.
            self.producer = None;
        }
        for (i, (t, outcome)) in commits.into_iter().zip(outcomes).enumerate() {
            let votes = t.batches.iter().map(Batch::len).sum();
            // A core that is gone hears nothing; the others still do.
            t.link.send(Finished::Txn {
                txn: t.txn,
                outcome,
                votes,
                elapsed: t.handed_over.elapsed(),
                generation_refused: refused == Some(i),
            });
        }
    }
}

/// How a transaction failed: its outcome (never `Committed`), and which part's group
/// generation the coordinator refused when that is why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnFailure {
    pub outcome: TxnOutcome,
    /// Index into the transaction's parts.
    pub refused_part: Option<usize>,
}

impl From<TxnOutcome> for TxnFailure {
    fn from(outcome: TxnOutcome) -> Self {
        debug_assert!(!matches!(outcome, TxnOutcome::Committed { .. }));
        Self {
            outcome,
            refused_part: None,
        }
    }
}

/// One core's share of a transaction: its batches (one per partition it owns) and the group
/// metadata its offsets are committed with.
pub struct Part<'a> {
    pub batches: &'a [Batch],
    pub group: &'a ConsumerGroupMetadata,
}

/// Delivery reports are not used by rust-rdkafka here: the committer reads them itself.
struct Quiet;
impl ClientContext for Quiet {}
impl ProducerContext for Quiet {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::producer::DeliveryResult<'_>, _: ()) {}
}

/// A committer's transactional producer (a core's or a node's), used by one thread only.
pub struct TxnProducer {
    producer: BaseProducer<Quiet>,
    /// The producer's main event queue, where delivery reports arrive.
    queue: *mut rd::rd_kafka_queue_t,
    topic: *mut rd::rd_kafka_topic_t,
    topic_name: String,
    timeout: Duration,
    label: String,
    /// Reused message array of the produce calls.
    messages: Vec<rd::rd_kafka_message_t>,
    /// Marks each blocking call, for whoever watches this producer's thread.
    watch: Arc<CallWatch>,
}

impl Drop for TxnProducer {
    fn drop(&mut self) {
        // SAFETY: both handles were obtained from this producer's client in `open` and are
        // released exactly once, before the client itself is destroyed (field drop order).
        unsafe {
            rd::rd_kafka_topic_destroy(self.topic);
            rd::rd_kafka_queue_destroy(self.queue);
        }
    }
}

impl TxnProducer {
    /// Creates the core's producer and fences every earlier producer with its transactional
    /// id: once this returns, what an earlier incarnation left open is aborted.
    pub fn open(cfg: &CommitterConfig) -> Result<Self, CommitterError> {
        Self::open_watched(cfg, CallWatch::new())
    }

    /// [`TxnProducer::open`], marking each blocking call in `watch`.
    fn open_watched(cfg: &CommitterConfig, watch: Arc<CallWatch>) -> Result<Self, CommitterError> {
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
        let call = watch.enter();
        let init = producer.init_transactions(cfg.timeout);
        drop(call);
        init.map_err(|source| CommitterError::Init {
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
            label: cfg.label(),
            messages: Vec::new(),
            watch,
        })
    }

    /// Writes `batches` (one per partition) in one transaction whose offsets carry `group`, and
    /// says how it ended. Never panics on broker errors: every failure maps to `Aborted`
    /// (certainly not committed), `Fenced` or `Unknown`.
    pub fn commit(&mut self, batches: &[Batch], group: &ConsumerGroupMetadata) -> TxnOutcome {
        self.commit_pausing(batches, group, || {})
    }

    /// [`TxnProducer::commit`], calling `pause` once every record is in the log (open) and
    /// before the offsets with the group generation go out: where a process stopped by
    /// SIGSTOP (a zombie) would sit. For the tests of that case.
    pub fn commit_pausing(
        &mut self,
        batches: &[Batch],
        group: &ConsumerGroupMetadata,
        pause: impl FnOnce(),
    ) -> TxnOutcome {
        match self.commit_parts(&[Part { batches, group }], pause) {
            Ok(mut offsets) => TxnOutcome::Committed {
                offsets: offsets.pop().expect("one part"),
            },
            Err(failure) => failure.outcome,
        }
    }

    /// Writes every part's batches in one transaction that commits each part's offsets with
    /// that part's group metadata (one `send_offsets_to_transaction` each: the coordinator
    /// checks every core's generation, and refuses the whole transaction if one is stale).
    /// `Ok` holds the offsets of each part's records, batch by batch; `Err` how it failed.
    /// `pause` is called as in [`TxnProducer::commit_pausing`].
    ///
    /// Long because it is the transaction's sequence of librdkafka calls, each failure mapped to
    /// its outcome where it happens.
    pub fn commit_parts(
        &mut self,
        parts: &[Part<'_>],
        pause: impl FnOnce(),
    ) -> Result<Vec<Vec<Vec<u64>>>, TxnFailure> {
        assert!(!parts.is_empty());
        let batches: Vec<&Batch> = parts.iter().flat_map(|p| p.batches.iter()).collect();
        assert!(!batches.is_empty() && batches.iter().all(|b| !b.is_empty()));
        debug_assert!(
            {
                let mut seen: Vec<u32> = batches.iter().map(|b| b.partition).collect();
                seen.sort_unstable();
                seen.windows(2).all(|w| w[0] != w[1])
            },
            "one batch per partition in a transaction: each partition has one writing core"
        );
        if let Err(e) = self.producer.begin_transaction() {
            return Err(self.settle_failure(e).into());
        }
        let deadline = Instant::now() + self.timeout;
        if let Err(e) = self.produce(&batches) {
            return Err(self.abort(e).into());
        }
        let call = self.watch.enter();
        let delivered = self.deliveries(&batches, deadline);
        drop(call);
        let mut offsets = match delivered {
            Ok(offsets) => offsets.into_iter(),
            Err(e) => return Err(self.abort(e).into()),
        };
        pause();
        let mut per_part = Vec::with_capacity(parts.len());
        for (index, part) in parts.iter().enumerate() {
            let mine: Vec<Vec<u64>> = offsets.by_ref().take(part.batches.len()).collect();
            let mut tpl = TopicPartitionList::new();
            for (b, offs) in part.batches.iter().zip(&mine) {
                let next = offs.last().map_or(0, |o| o + 1);
                if let Err(e) = tpl.add_partition_offset(
                    &self.topic_name,
                    i32::try_from(b.partition).expect("partition fits i32"),
                    Offset::Offset(i64::try_from(next).expect("offsets fit i64")),
                ) {
                    return Err(self.abort(e).into());
                }
            }
            // The coordinator checks the member's generation here: a core whose partitions
            // moved (a paused zombie, a stale member) cannot commit, whatever it produced.
            let mut attempt = 0;
            while let Err(e) = {
                let _call = self.watch.enter();
                self.producer
                    .send_offsets_to_transaction(&tpl, part.group, self.timeout)
            } {
                attempt += 1;
                match txn_error(&e) {
                    Some(rd)
                        if rd.is_retriable()
                            && !rd.txn_requires_abort()
                            && attempt <= COMMIT_RETRIES => {}
                    _ => {
                        let refused_part = refuses_generation(&e).then_some(index);
                        return Err(TxnFailure {
                            outcome: self.abort(e),
                            refused_part,
                        });
                    }
                }
            }
            per_part.push(mine);
        }
        debug_assert!(offsets.next().is_none(), "every batch belongs to a part");
        let mut attempt = 0;
        loop {
            let committed = {
                let _call = self.watch.enter();
                self.producer.commit_transaction(self.timeout)
            };
            match committed {
                Ok(()) => return Ok(per_part),
                Err(e) => {
                    let Some(rd) = txn_error(&e) else {
                        return Err(TxnOutcome::Unknown.into());
                    };
                    if rd.is_fatal() {
                        return Err(TxnOutcome::Fenced.into());
                    }
                    if rd.txn_requires_abort() {
                        return Err(self.abort(e).into());
                    }
                    attempt += 1;
                    if !rd.is_retriable() || attempt > COMMIT_RETRIES {
                        tracing::warn!(committer = %self.label, error = %e, "commit outcome unknown");
                        return Err(TxnOutcome::Unknown.into());
                    }
                }
            }
        }
    }

    /// Enqueues every record, one librdkafka call per partition, then wakes the senders.
    fn produce(&mut self, batches: &[&Batch]) -> Result<(), KafkaError> {
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
        batches: &[&Batch],
        deadline: Instant,
    ) -> Result<Vec<Vec<u64>>, KafkaError> {
        let mut offsets: Vec<Vec<u64>> = batches.iter().map(|b| vec![u64::MAX; b.len()]).collect();
        let mut pending: usize = batches.iter().map(|b| b.len()).sum();
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
                        tracing::warn!(committer = %self.label, error = ?RDKafkaErrorCode::from(err), %why, "producer");
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
        tracing::warn!(committer = %self.label, error = %cause, "aborting transaction");
        let aborted = {
            let _call = self.watch.enter();
            self.producer.abort_transaction(self.timeout)
        };
        let outcome = match aborted {
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
            tracing::warn!(committer = %self.label, error = %e, "transaction failed");
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

/// Whether the group coordinator refused offsets for the generation they carried: the member
/// that generation belongs to is no longer the group's (its session expired, the group moved
/// on, or another client took its instance id).
fn refuses_generation(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::UnknownMemberId
                | RDKafkaErrorCode::IllegalGeneration
                | RDKafkaErrorCode::FencedInstanceId
        )
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

    #[test]
    fn a_call_is_watched_from_its_start_until_its_guard_drops() {
        let watch = CallWatch::new();
        assert_eq!(watch.in_call_for(), None, "no call yet");
        let call = watch.enter();
        std::thread::sleep(Duration::from_millis(20));
        let during = watch.in_call_for().expect("in a call");
        assert!(during >= Duration::from_millis(20), "{during:?}");
        drop(call);
        assert_eq!(watch.in_call_for(), None, "the call returned");
        let _call = watch.enter();
        assert!(
            watch.in_call_for().is_some(),
            "a second call is watched too"
        );
    }
}
