//! The shards a core owns, and the driver task of each: recover, then commit batches one
//! transaction at a time on the blocking pool and answer every waiting vote (DESIGN §3).
//!
//! Everything here lives on one reactor: the shard state machines are in `RefCell`s that are
//! never borrowed across an `.await`, and a shard moves to the blocking pool (by value) only
//! while it replays.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use votes_core::{ElectionId, ErrorCode, Names, OptionId, VoterId};
use votes_net::Blocking;
use votes_net::{LocalSignal, ReplyTx};
use votes_tally::commit::{CommitError, PartitionProducer};
use votes_tally::fanout::TallyUpdate;
use votes_tally::membership::{self, Assignment};
use votes_tally::recovery::replay;
use votes_tally::shard::{Answer, CommitOutcome, Shard, ShardConfig, ShardState, Submitted, Vote};
use votes_tally::snapshot;

use super::metrics::{CoreMetrics, TallyRow};

/// A vote that passed the edge checks, on its way to the shard of its partition.
#[derive(Debug)]
pub struct VoteRequest {
    pub election: ElectionId,
    pub voter: VoterId,
    pub option: OptionId,
    pub received_at_ms: u64,
    pub nonce: [u8; 16],
}

/// The shard's answer, sent back to the core that holds the voter's connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteAnswer {
    Accepted { partition: u32, offset: u64 },
    Rejected(ErrorCode),
}

impl From<votes_core::forward::ForwardOutcome> for VoteAnswer {
    fn from(o: votes_core::forward::ForwardOutcome) -> Self {
        match o {
            votes_core::forward::ForwardOutcome::Accepted { partition, offset } => {
                VoteAnswer::Accepted { partition, offset }
            }
            votes_core::forward::ForwardOutcome::Rejected { code } => VoteAnswer::Rejected(code),
        }
    }
}

impl From<VoteAnswer> for votes_core::forward::ForwardOutcome {
    fn from(a: VoteAnswer) -> Self {
        match a {
            VoteAnswer::Accepted { partition, offset } => {
                votes_core::forward::ForwardOutcome::Accepted { partition, offset }
            }
            VoteAnswer::Rejected(code) => votes_core::forward::ForwardOutcome::Rejected { code },
        }
    }
}

/// Ownership, readiness and replay progress of one partition on this node, shared with
/// `/readyz` and `/metrics` on any core. Each field has one writer at a time: the slot that
/// owns the partition (its core or its replay thread), recognised by its claim epoch.
#[derive(Default)]
pub struct PartitionStatus {
    /// `epoch << 8 | state`: a slot writes only while the epoch is still the one its claim
    /// got, so a slot that is leaving cannot overwrite the state of the one that replaced it.
    state: AtomicU64,
    pub replayed_records: AtomicU64,
    pub replay_offset: AtomicU64,
    pub log_duplicates: AtomicU64,
    /// Offset of the snapshot the last recovery started from (0: the log's beginning).
    pub snapshot_start: AtomicU64,
    /// Offset and size of the newest snapshot this node wrote.
    pub snapshot_offset: AtomicU64,
    pub snapshot_bytes: AtomicU64,
    /// Snapshots recovery skipped as damaged or untrustworthy.
    pub snapshots_skipped: AtomicU64,
}

const NOT_OWNED: u64 = 0;
const RECOVERING: u64 = 1;
const ACTIVE: u64 = 2;
const FENCED: u64 = 3;

impl PartitionStatus {
    /// A new owner on this node: a fresh epoch, recovering.
    fn claim(&self) -> u64 {
        let mut current = self.state.load(Ordering::Acquire);
        loop {
            let epoch = (current >> 8) + 1;
            match self.state.compare_exchange(
                current,
                epoch << 8 | RECOVERING,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return epoch,
                Err(now) => current = now,
            }
        }
    }

    /// Sets the state if `epoch` still owns the partition.
    fn set_if(&self, epoch: u64, state: u64) {
        let mut current = self.state.load(Ordering::Acquire);
        while current >> 8 == epoch {
            match self.state.compare_exchange(
                current,
                epoch << 8 | state,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return,
                Err(now) => current = now,
            }
        }
    }

    fn set(&self, epoch: u64, state: ShardState) {
        let v = match state {
            ShardState::Recovering => RECOVERING,
            ShardState::Active => ACTIVE,
            ShardState::Fenced => FENCED,
            ShardState::Released => NOT_OWNED,
        };
        self.set_if(epoch, v);
    }

    /// The state of this node's shard of the partition; `None` when no core of this node
    /// owns it.
    pub fn state(&self) -> Option<ShardState> {
        match self.state.load(Ordering::Acquire) & 0xff {
            RECOVERING => Some(ShardState::Recovering),
            ACTIVE => Some(ShardState::Active),
            FENCED => Some(ShardState::Fenced),
            _ => None,
        }
    }
}

/// How the drivers commit; the same for every shard of the node.
#[derive(Clone, Debug)]
pub struct CommitSettings {
    pub brokers: String,
    pub names: Names,
    pub node: String,
    pub max_batch: usize,
    pub max_queued: usize,
    /// How long a non-full batch waits for more votes before its transaction starts.
    pub linger: Duration,
    /// Bound on each blocking Kafka call (init, commit, replay silence).
    pub kafka_timeout: Duration,
    pub snapshots: Option<SnapshotSettings>,
}

/// Where and how often shards write their snapshots (`--snapshot-dir`).
#[derive(Clone, Debug)]
pub struct SnapshotSettings {
    /// This deployment's directory (the prefix is part of it: snapshots of another log never
    /// mix in).
    pub dir: PathBuf,
    pub every: Duration,
    /// Snapshots kept per partition: the newest may be damaged, an older one then serves.
    pub keep: usize,
}

struct Slot {
    partition: u32,
    /// This ownership's claim on the partition's status.
    epoch: u64,
    cfg: ShardConfig,
    /// `None` while the shard replays on the blocking pool.
    shard: RefCell<Option<Shard>>,
    waiting: RefCell<HashMap<u64, ReplyTx<VoteAnswer>>>,
    wake: LocalSender<()>,
    status: Arc<PartitionStatus>,
    /// Tallies changed since the read model last got them (DESIGN §3.4).
    dirty: Cell<bool>,
    /// The identity of the partition's log, once known (snapshots carry it).
    log_id: Cell<Option<u64>>,
    /// The group moved the partition away: finish the transaction in flight, then hand off.
    leaving: Cell<bool>,
    /// Fired when the driver stopped writing for good (handed off or fenced).
    gone: LocalSignal,
    /// The core's group assignment, checked before every fence of the previous writer.
    assignment: Assignment,
}

impl Slot {
    /// Whether this slot may still take its partition: not leaving, and the group (as the
    /// member's thread last heard) still assigns it here.
    fn still_owner(&self) -> bool {
        !self.leaving.get() && membership::holds(&self.assignment, self.partition)
    }
}

/// The shards of one core: the partitions the group currently assigns to it.
pub struct ShardHost {
    core: usize,
    slots: RefCell<HashMap<u32, Rc<Slot>>>,
    next_ticket: Cell<u64>,
    settings: Arc<CommitSettings>,
    status: Vec<Arc<PartitionStatus>>,
    blocking: Blocking,
    metrics: Rc<CoreMetrics>,
    assignment: Assignment,
}

impl ShardHost {
    /// A core's host, owning no partition yet; `assignment` is its group member's.
    pub fn new(
        core: usize,
        settings: Arc<CommitSettings>,
        status: &[Arc<PartitionStatus>],
        blocking: Blocking,
        metrics: Rc<CoreMetrics>,
        assignment: Assignment,
    ) -> Rc<Self> {
        Rc::new(Self {
            assignment,
            core,
            slots: RefCell::new(HashMap::new()),
            next_ticket: Cell::new(0),
            settings,
            status: status.to_vec(),
            blocking,
            metrics,
        })
    }

    /// Takes ownership of `partitions`: each gets a fresh shard whose driver fences the
    /// previous writer, recovers, then accepts.
    pub fn assign(&self, partitions: &[u32]) {
        for &p in partitions {
            let status = self.status[p as usize].clone();
            if let Some(old) = self.slots.borrow_mut().remove(&p) {
                // Assigned twice without a revocation between (a lost membership rejoined):
                // the old driver hands off; the new one fences it anyway.
                old.leaving.set(true);
                let _ = old.wake.try_send(());
            }
            let cfg = ShardConfig {
                partition: p,
                node: self.settings.node.clone(),
                core: u16::try_from(self.core).expect("core index fits u16"),
                max_batch: self.settings.max_batch,
                max_queued: self.settings.max_queued,
            };
            // Capacity 1: a wake-up pending is all the driver needs to know.
            let (wake, wake_rx) = local_channel::new_bounded(1);
            let slot = Rc::new(Slot {
                partition: p,
                epoch: status.claim(),
                shard: RefCell::new(Some(Shard::new(cfg.clone()))),
                cfg,
                waiting: RefCell::new(HashMap::new()),
                wake,
                status,
                dirty: Cell::new(false),
                log_id: Cell::new(None),
                leaving: Cell::new(false),
                gone: LocalSignal::new(),
                assignment: self.assignment.clone(),
            });
            glommio::spawn_local(drive(
                slot.clone(),
                wake_rx,
                self.settings.clone(),
                self.blocking.clone(),
                self.metrics.clone(),
            ))
            .detach();
            if self.settings.snapshots.is_some() {
                glommio::spawn_local(snapshot_loop(
                    slot.clone(),
                    self.settings.clone(),
                    self.blocking.clone(),
                ))
                .detach();
            }
            self.slots.borrow_mut().insert(p, slot);
        }
    }

    /// Gives `partitions` up: new votes for them are refused at once; each driver finishes
    /// the transaction in flight, answers what waits `503` and stops. Returns when every
    /// driver stopped (the caller bounds the wait: the new owner fences a straggler).
    pub async fn revoke(&self, partitions: &[u32]) {
        let leaving: Vec<Rc<Slot>> = partitions
            .iter()
            .filter_map(|p| self.slots.borrow_mut().remove(p))
            .collect();
        for slot in &leaving {
            slot.leaving.set(true);
            let _ = slot.wake.try_send(());
        }
        for slot in &leaving {
            slot.gone.wait().await;
            // A shard fenced before the revocation ended without handing off.
            slot.status.set(slot.epoch, ShardState::Released);
        }
    }

    /// Hands a vote to the shard of `partition`; `503` when this core does not own it (the
    /// sender's map was older than the group's last move).
    pub fn submit(&self, partition: u32, req: VoteRequest, reply: ReplyTx<VoteAnswer>) {
        let Some(slot) = self.slots.borrow().get(&partition).cloned() else {
            let _ = reply.send(VoteAnswer::Rejected(ErrorCode::Unavailable));
            return;
        };
        let ticket = self.next_ticket.get();
        self.next_ticket.set(ticket + 1);
        let submitted = match slot.shard.borrow_mut().as_mut() {
            None => Submitted::Answered(Answer::Rejected {
                ticket,
                code: ErrorCode::Unavailable,
            }),
            Some(shard) => shard.submit(Vote {
                ticket,
                election: req.election,
                voter: req.voter,
                option: req.option,
                received_at_ms: req.received_at_ms,
                nonce: req.nonce,
            }),
        };
        match submitted {
            Submitted::Answered(answer) => {
                let _ = reply.send(to_vote_answer(partition, &answer));
            }
            Submitted::Queued => {
                slot.waiting.borrow_mut().insert(ticket, reply);
                // Full means a wake-up is already pending: nothing is lost.
                let _ = slot.wake.try_send(());
            }
            Submitted::Waiting => {
                slot.waiting.borrow_mut().insert(ticket, reply);
            }
        }
    }

    /// Absolute tallies of every election in this core's shards, by partition.
    pub fn tallies(&self) -> Vec<TallyRow> {
        let mut out = Vec::new();
        for slot in self.slots.borrow().values() {
            // Only what this core vouches for now: a recovering shard's tallies are partial,
            // and a fenced one's belong to the new owner.
            if let Some(shard) = slot
                .shard
                .borrow()
                .as_ref()
                .filter(|s| s.state() == ShardState::Active)
            {
                for (election, counts) in shard.elections() {
                    let counts = counts.iter().map(|(o, c)| (o.clone(), *c)).collect();
                    out.push((
                        slot.partition,
                        election.clone(),
                        counts,
                        shard.applied_end(),
                    ));
                }
            }
        }
        out
    }

    /// The absolute tallies of the shards whose tallies changed since the last call (or of
    /// every active shard when `all`), for the read model. Clears the marks.
    pub fn tally_updates(&self, all: bool) -> Vec<TallyUpdate> {
        let mut out = Vec::new();
        for slot in self.slots.borrow().values() {
            if !(slot.dirty.replace(false) || all) {
                continue;
            }
            let shard = slot.shard.borrow();
            let Some(shard) = shard.as_ref().filter(|s| s.state() == ShardState::Active) else {
                continue;
            };
            for (election, counts) in shard.elections() {
                out.push(TallyUpdate {
                    election: election.clone(),
                    partition: slot.partition,
                    offset: shard.applied_end(),
                    counts: counts.iter().map(|(o, c)| (o.clone(), *c)).collect(),
                });
            }
        }
        out
    }

    /// Marks every shard's tallies as not yet in the read model (its link was full).
    pub fn mark_all_dirty(&self) {
        for slot in self.slots.borrow().values() {
            slot.dirty.set(true);
        }
    }

    /// Votes waiting for a commit on this core (for `/metrics`).
    pub fn waiting(&self) -> usize {
        self.slots
            .borrow()
            .values()
            .map(|s| s.waiting.borrow().len())
            .sum()
    }
}

fn to_vote_answer(partition: u32, answer: &Answer) -> VoteAnswer {
    match answer {
        Answer::Accepted { offset, .. } => VoteAnswer::Accepted {
            partition,
            offset: *offset,
        },
        Answer::Rejected { code, .. } => VoteAnswer::Rejected(*code),
    }
}

fn answer_all(slot: &Slot, answers: Vec<Answer>) {
    let mut waiting = slot.waiting.borrow_mut();
    for answer in answers {
        let reply = waiting
            .remove(&answer.ticket())
            .expect("every answered ticket was waiting");
        // The voter may have gone; the vote's fate is the same either way.
        let _ = reply.send(to_vote_answer(slot.partition, &answer));
    }
}

/// The driver of one shard: fence and recover, then commit batches until fenced or handed
/// off; then answer whatever still waits and tell the host it stopped.
async fn drive(
    slot: Rc<Slot>,
    wake: LocalReceiver<()>,
    settings: Arc<CommitSettings>,
    blocking: Blocking,
    metrics: Rc<CoreMetrics>,
) {
    if let Some(producer) = take_ownership(&slot, &settings, &blocking).await {
        let producer = commit_loop(&slot, &wake, &settings, &blocking, &metrics, producer).await;
        if let Some(producer) = producer {
            retire(producer, &blocking).await;
        }
    }
    if let Some(shard) = slot.shard.borrow_mut().as_mut()
        && shard.state() != ShardState::Fenced
    {
        // Between transactions (the loop ended there): the queued votes get 503 now.
        answer_all(&slot, shard.hand_off());
    }
    if slot.leaving.get() {
        slot.status.set(slot.epoch, ShardState::Released);
        tracing::info!(partition = slot.partition, "partition handed off");
    }
    slot.gone.fire();
}

/// Commits batches while the shard is this core's. Returns the producer still to retire (the
/// loop retires it itself when fenced).
async fn commit_loop(
    slot: &Rc<Slot>,
    wake: &LocalReceiver<()>,
    settings: &Arc<CommitSettings>,
    blocking: &Blocking,
    metrics: &CoreMetrics,
    mut producer: Arc<PartitionProducer>,
) -> Option<Arc<PartitionProducer>> {
    while wake.recv().await.is_some() {
        if slot.leaving.get() {
            return Some(producer);
        }
        loop {
            if slot.leaving.get() {
                return Some(producer);
            }
            let (can, full) = match slot.shard.borrow().as_ref() {
                Some(s) => (s.can_take_batch(), s.batch_full()),
                None => (false, false),
            };
            if !can {
                break;
            }
            if !full && !settings.linger.is_zero() {
                glommio::timer::sleep(settings.linger).await;
                if slot.leaving.get() {
                    return Some(producer);
                }
            }
            let Some(batch) = slot.shard.borrow_mut().as_mut().and_then(Shard::take_batch) else {
                break;
            };
            let (seq, size) = (batch.seq, batch.len());
            let started = Instant::now();
            let committer = producer.clone();
            let outcome = match blocking.run(move || committer.commit(&batch)).await {
                Ok(outcome) => outcome,
                // Nothing was sent: the batch certainly did not commit.
                Err(votes_net::BlockingError::Saturated { .. }) => CommitOutcome::Aborted,
                Err(votes_net::BlockingError::Panicked(why)) => {
                    tracing::error!(partition = slot.partition, %why, "commit panicked");
                    CommitOutcome::Unknown
                }
            };
            metrics.commit(size, started.elapsed(), &outcome);
            if matches!(outcome, CommitOutcome::Committed { .. }) {
                slot.dirty.set(true);
            }
            let answers = slot
                .shard
                .borrow_mut()
                .as_mut()
                .expect("the shard stays home while its batch commits")
                .on_outcome(seq, outcome.clone());
            answer_all(slot, answers);
            match outcome {
                CommitOutcome::Fenced => {
                    slot.status.set(slot.epoch, ShardState::Fenced);
                    retire(producer, blocking).await;
                    if !slot.still_owner() {
                        tracing::error!(
                            partition = slot.partition,
                            "fenced by a newer owner: this shard stops accepting"
                        );
                        return None;
                    }
                    // The group still assigns the partition here: the fence came from a writer
                    // with a stale view (a resumed zombie). Take it back once that writer had
                    // time to hear it lost the partition.
                    tracing::warn!(
                        partition = slot.partition,
                        "fenced while still assigned here; taking the partition back"
                    );
                    glommio::timer::sleep(REFENCE_AFTER).await;
                    *slot.shard.borrow_mut() = Some(Shard::new(slot.cfg.clone()));
                    match take_ownership(slot, settings, blocking).await {
                        Some(p) => producer = p,
                        None => return None,
                    }
                }
                CommitOutcome::Unknown => {
                    slot.status.set(slot.epoch, ShardState::Recovering);
                    retire(producer, blocking).await;
                    match take_ownership(slot, settings, blocking).await {
                        Some(p) => producer = p,
                        None => return None,
                    }
                }
                CommitOutcome::Committed { .. } | CommitOutcome::Aborted => {}
            }
        }
    }
    Some(producer)
}

/// The shard of `cfg` from its partition's newest trustworthy snapshot, or `fresh` when there is
/// none; and the identity of the log, when it holds a record. Blocking (reads files, asks the
/// broker for the log's first record and end).
fn restore(
    s: &CommitSettings,
    snaps: &SnapshotSettings,
    cfg: ShardConfig,
    fresh: Shard,
    status: &PartitionStatus,
) -> Result<(Shard, Option<u64>), votes_tally::recovery::ReplayError> {
    let p = cfg.partition;
    let log = votes_tally::recovery::log_identity(&s.brokers, &s.names, p, s.kafka_timeout)?;
    let log_id = log.id;
    let loaded = match snapshot::files::load_newest(&snaps.dir, p, log.id, log.end) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(partition = p, dir = %snaps.dir.display(), error = %e, "cannot read snapshots; replaying the whole log");
            return Ok((fresh, log_id));
        }
    };
    for (path, why) in &loaded.skipped {
        tracing::warn!(partition = p, file = %path.display(), %why, "snapshot skipped");
        status.snapshots_skipped.fetch_add(1, Ordering::Relaxed);
    }
    let Some((path, snap)) = loaded.snapshot else {
        status.snapshot_start.store(0, Ordering::Relaxed);
        return Ok((fresh, log_id));
    };
    tracing::info!(
        partition = p,
        file = %path.display(),
        applied_end = snap.applied_end,
        voters = snap.voters(),
        "recovering from snapshot, then the log's tail"
    );
    status
        .snapshot_start
        .store(snap.applied_end, Ordering::Relaxed);
    Ok((Shard::from_snapshot(cfg, snap), log_id))
}

/// Writes the shard's committed state every `every` while it is active and has moved on:
/// copied on the reactor, encoded on the blocking pool, written with direct I/O under a
/// temporary name and synced (glommio), renamed and the directory synced (blocking pool).
async fn snapshot_loop(slot: Rc<Slot>, settings: Arc<CommitSettings>, blocking: Blocking) {
    let snaps = settings
        .snapshots
        .clone()
        .expect("started only with snapshots configured");
    // What recovery started from is on disk already.
    let mut last_end = 0u64;
    loop {
        glommio::timer::sleep(snaps.every).await;
        if slot.leaving.get() || slot.gone.is_fired() {
            return;
        }
        last_end = last_end.max(slot.status.snapshot_start.load(Ordering::Relaxed));
        let moved_on = match slot.shard.borrow().as_ref() {
            Some(s) => s.state() == ShardState::Active && s.applied_end() > last_end,
            None => false,
        };
        if !moved_on {
            continue;
        }
        let log_id = match slot.log_id.get() {
            Some(id) => id,
            None => {
                // The log was empty at recovery: its first record exists now.
                let (s, p) = (settings.clone(), slot.partition);
                match blocking
                    .run(move || {
                        votes_tally::recovery::log_identity(
                            &s.brokers,
                            &s.names,
                            p,
                            s.kafka_timeout,
                        )
                    })
                    .await
                {
                    Ok(Ok(votes_tally::recovery::LogIdentity { id: Some(id), .. })) => {
                        slot.log_id.set(Some(id));
                        id
                    }
                    other => {
                        tracing::warn!(partition = slot.partition, outcome = ?other.map(|r| r.map_err(|e| e.to_string())), "cannot name the log yet; no snapshot this time");
                        continue;
                    }
                }
            }
        };
        let snap = match slot.shard.borrow().as_ref() {
            Some(s) if s.state() == ShardState::Active => s.snapshot(log_id),
            _ => continue,
        };
        let end = snap.applied_end;
        let started = Instant::now();
        match write_snapshot(&snaps, slot.partition, snap, &blocking).await {
            Ok(bytes) => {
                last_end = end;
                slot.status.snapshot_offset.store(end, Ordering::Relaxed);
                slot.status.snapshot_bytes.store(bytes, Ordering::Relaxed);
                tracing::debug!(partition = slot.partition, end, bytes, took = ?started.elapsed(), "snapshot written");
            }
            Err(e) => {
                tracing::warn!(partition = slot.partition, error = %e, "snapshot not written; the previous one stands");
            }
        }
    }
}

async fn write_snapshot(
    snaps: &SnapshotSettings,
    partition: u32,
    snap: votes_tally::snapshot::ShardSnapshot,
    blocking: &Blocking,
) -> std::io::Result<u64> {
    use futures_lite::AsyncWriteExt;
    let end = snap.applied_end;
    let bytes = blocking
        .run(move || snap.encode())
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let len = bytes.len() as u64;
    let tmp = snaps.dir.join(snapshot::files::temporary(partition, end));
    let file = glommio::io::DmaFile::create(&tmp)
        .await
        .map_err(std::io::Error::from)?;
    // Direct I/O in aligned buffers; close() flushes, fdatasyncs and trims the padding.
    let mut writer = glommio::io::DmaStreamWriterBuilder::new(file)
        .with_buffer_size(1 << 20)
        .build();
    writer.write_all(&bytes).await?;
    writer.close().await?;
    drop(bytes);
    let dir = snaps.dir.clone();
    let keep = snaps.keep;
    blocking
        .run(move || -> std::io::Result<()> {
            std::fs::rename(&tmp, dir.join(snapshot::files::name(partition, end)))?;
            std::fs::File::open(&dir)?.sync_all()?;
            snapshot::files::prune(&dir, partition, keep)
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))??;
    Ok(len)
}

/// How long a shard fenced while still assigned waits before it takes its partition back: the
/// fencing writer's member hears of its lost assignment within a heartbeat or two.
const REFENCE_AFTER: Duration = Duration::from_secs(3);

/// Drops a producer on the blocking pool: destroying a librdkafka client joins its threads
/// and closes its connections, which must not stall the reactor.
async fn retire(producer: Arc<PartitionProducer>, blocking: &Blocking) {
    if let Err(e) = blocking.run(move || drop(producer)).await {
        tracing::warn!(error = %e, "could not retire a producer off the reactor");
    }
}

/// Opens the partition's producer (fencing any earlier owner), then replays the committed log
/// into the shard. Retries transient failures with a bounded backoff; gives up only when
/// fenced. Returns the producer once the shard accepts.
async fn take_ownership(
    slot: &Rc<Slot>,
    settings: &Arc<CommitSettings>,
    blocking: &Blocking,
) -> Option<Arc<PartitionProducer>> {
    let mut backoff = Duration::from_millis(100);
    loop {
        // Never fence a writer for a partition the group gave someone else.
        if !slot.still_owner() {
            return None;
        }
        let s = settings.clone();
        let p = slot.partition;
        let opened = blocking
            .run(move || {
                PartitionProducer::open(&s.brokers, &s.names, p, s.kafka_timeout, Duration::ZERO)
            })
            .await;
        let producer = match opened {
            Ok(Ok(producer)) if !slot.still_owner() => {
                retire(Arc::new(producer), blocking).await;
                return None;
            }
            Ok(Ok(producer)) => Arc::new(producer),
            Ok(Err(CommitError::Fenced { .. })) if slot.still_owner() => {
                // Another writer opened at the same moment; whoever the group assigns wins.
                tracing::warn!(partition = p, "fenced while taking ownership; trying again");
                glommio::timer::sleep(REFENCE_AFTER).await;
                continue;
            }
            Ok(Err(CommitError::Fenced { .. })) => {
                tracing::error!(partition = p, "fenced while taking ownership");
                if let Some(shard) = slot.shard.borrow_mut().as_mut() {
                    answer_all(slot, shard.fence());
                }
                slot.status.set(slot.epoch, ShardState::Fenced);
                return None;
            }
            Ok(Err(e)) => {
                tracing::warn!(partition = p, error = %e, "cannot open the partition's producer yet");
                glommio::timer::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
            Err(e) => {
                tracing::warn!(partition = p, error = %e, "blocking pool refused the producer");
                glommio::timer::sleep(backoff).await;
                continue;
            }
        };
        let shard = slot
            .shard
            .borrow_mut()
            .take()
            .expect("the shard is home before it replays");
        let s = settings.clone();
        let status = slot.status.clone();
        let cfg = slot.cfg.clone();
        let replayed = blocking
            .run(move || {
                let progress = |pr: votes_tally::recovery::ReplayProgress| {
                    status.replayed_records.store(pr.records, Ordering::Relaxed);
                    status.replay_offset.store(pr.offset, Ordering::Relaxed);
                };
                // A shard that holds nothing yet starts from its newest good snapshot; one
                // that kept its state (after an unknown outcome) replays from where it is.
                let (shard, log_id) = match &s.snapshots {
                    Some(snaps) if shard.applied_end() == 0 => {
                        restore(&s, snaps, cfg, shard, &status).map_err(|e| e.to_string())?
                    }
                    _ => (shard, None),
                };
                // On failure the shard comes back unchanged in spirit: recovering, to retry.
                replay(&s.brokers, &s.names, shard, s.kafka_timeout, progress)
                    .map(|shard| (shard, log_id))
                    .map_err(|e| e.to_string())
            })
            .await;
        match replayed {
            Ok(Ok((shard, _))) if !slot.still_owner() => {
                // Moved away while it replayed: the recovered state is the next owner's job.
                *slot.shard.borrow_mut() = Some(shard);
                retire(producer, blocking).await;
                return None;
            }
            Ok(Ok((shard, log_id))) => {
                if log_id.is_some() {
                    slot.log_id.set(log_id);
                }
                slot.status
                    .log_duplicates
                    .store(shard.log_duplicates(), Ordering::Relaxed);
                *slot.shard.borrow_mut() = Some(shard);
                slot.status.set(slot.epoch, ShardState::Active);
                // The recovered tallies may be ahead of (or missing from) the read model.
                slot.dirty.set(true);
                tracing::info!(partition = p, "shard recovered and accepting");
                return Some(producer);
            }
            failed => {
                let why = match failed {
                    Ok(Err(why)) => why,
                    Err(e) => e.to_string(),
                    Ok(Ok(_)) => unreachable!(),
                };
                // The half-replayed shard is gone with the failed call: start over from the
                // beginning of the log, which rebuilds the same state (DESIGN §3.3).
                tracing::warn!(partition = p, %why, "replay failed; retrying from the start");
                *slot.shard.borrow_mut() = Some(Shard::new(slot.cfg.clone()));
                retire(producer, blocking).await;
                glommio::timer::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}
