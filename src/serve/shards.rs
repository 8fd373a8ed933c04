//! The thin I/O driver of a core's commit engine ([`votes_tally::engine::CoreEngine`], sans-IO):
//! it feeds the engine its events — votes from the mesh, the group member's ownership events,
//! the committer thread's results, replays finished on the blocking pool, the passing of time —
//! and carries out the engine's commands (docs/design.md §3).
//!
//! Everything here lives on one reactor: the engine sits in a `RefCell` that is never borrowed
//! across an `.await` and never re-entered (commands only send, spawn or answer). Blocking work
//! never runs here: the core's transactional producer lives on its committer thread
//! ([`votes_tally::committer`]), replays and snapshot encoding on the blocking pool. The
//! committer and the member thread wake the reactor through a doorbell, so an idle core sleeps.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use rdkafka::consumer::ConsumerGroupMetadata;
use votes_core::Election;
use votes_core::election::ElectionState;
use votes_core::{Names, OwnerVerdict, VoteIntent, VoteOutcome};
use votes_net::doorbell::{Bell, Ringer};
use votes_net::{Blocking, LocalNotify, LocalSignal, ReplyTx};
use votes_tally::committer::{Committer, CommitterConfig, CommitterThread, Finished, Job, Scope};
use votes_tally::elections_log::ElectionsView;
use votes_tally::engine::{
    ClaimId, Command, CoreEngine, EngineConfig, Event, Generation, Micros, OpenFailure,
    PacingConfig, RevokeId, TxnId, TxnOutcome,
};
use votes_tally::fanout::TallyUpdate;
use votes_tally::membership::{self, Assignment, OwnershipEvent, Refusals, Rejoin};
use votes_tally::recovery::{RecoveryClients, Stable, await_stable, replay};
use votes_tally::shard::{Answer, Shard, ShardConfig, ShardState, Ticket, Vote};
use votes_tally::snapshot;

use super::fleet::FleetBoard;
use super::metrics::{CoreMetrics, TallyRow};
use super::status::PartitionStatus;

/// How the cores commit; the same for every core of the node.
#[derive(Clone, Debug)]
pub struct CommitSettings {
    pub brokers: String,
    pub names: Names,
    pub node: String,
    /// The node's committer, whose transactions carry every core's batches; `None`: each core
    /// starts its own.
    pub node_committer: Option<Arc<CommitterThread>>,
    /// Largest transaction, in votes over all the core's partitions.
    pub max_batch: usize,
    /// Bound on votes queued per partition.
    pub max_queued: usize,
    /// When a transaction starts (docs/design.md §3.2: acknowledgements wait for it).
    pub pacing: PacingConfig,
    /// Bound on each blocking Kafka call (init, commit, replay silence).
    pub kafka_timeout: Duration,
    pub snapshots: Option<SnapshotSettings>,
    /// The group as the node last described it: who has left, for recovery's fencing.
    pub fleet: Arc<FleetBoard>,
    /// Recovery's Kafka clients, warm from one failover to the next.
    pub recovery: Arc<RecoveryClients>,
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

/// How long a fenced core waits before it takes back what the group still assigns it: the
/// writer that fenced it hears of its own lost assignment within a heartbeat or two.
const RETAKE_AFTER: Duration = Duration::from_secs(3);

/// How often the committer watch looks at a job in flight.
const COMMITTER_WATCH_EVERY: Duration = Duration::from_secs(1);

/// A job the committer holds, for the engine event that answers it if the committer dies.
#[derive(Clone, Copy, Debug)]
enum JobOut {
    Open { attempt: u64 },
    Commit { txn: TxnId },
}
/// How long a recovering partition waits for a transaction still open in it before it fences
/// that transaction's writer, unless the writer's node has left the group
/// ([`left_the_group`]): a predecessor that handed off cleanly left nothing open but the
/// markers of its last commit, which land within milliseconds. Fencing a live predecessor
/// whose markers are late costs it one aborted transaction (its voters get 503 and retry),
/// never a vote.
const FENCE_GRACE: Duration = Duration::from_millis(500);

/// Whether the group, as the fleet map describes it after the rebalance that gave `partition`
/// to this core (`me`), has no member on the `writer`'s node: the node is dead, cut off or
/// paused past its session, so nothing it left open will be committed by a member in good
/// standing, and its writer is fenced at once instead of after [`FENCE_GRACE`]. A map from
/// before that rebalance (it does not name this core the owner yet) says nothing.
fn left_the_group(fleet: &FleetBoard, writer: &str, me: (&str, u16), partition: u32) -> bool {
    let map = fleet.current();
    let after_the_move = map
        .owner(partition)
        .is_some_and(|o| (o.node.as_str(), o.core) == me);
    after_the_move && !map.nodes.contains_key(writer)
}

/// One claim of a partition on this core, as the driver tracks it.
struct Claim {
    claim: ClaimId,
    /// The node-wide status epoch of this claim.
    epoch: u64,
    /// The identity of the partition's log, once known (snapshots carry it).
    log_id: Option<u64>,
    /// Offset of the newest snapshot written or restored for this claim.
    snapshot_end: u64,
}

/// The commit engine of one core and what its commands need.
pub struct ShardHost {
    core: usize,
    engine: RefCell<CoreEngine>,
    /// The commands of the event being handled (a reused buffer).
    commands: RefCell<Vec<Command>>,
    waiting: RefCell<votes_core::hash::U64Map<ReplyTx<VoteOutcome>>>,
    next_ticket: Cell<Ticket>,
    claims: RefCell<HashMap<u32, Claim>>,
    /// Revocations the member thread waits on.
    revokes: RefCell<HashMap<RevokeId, mpsc::SyncSender<()>>>,
    next_revoke: Cell<RevokeId>,
    /// Group metadata by the generation token the engine knows it by.
    groups: RefCell<BTreeMap<u64, Arc<ConsumerGroupMetadata>>>,
    next_generation: Cell<u64>,
    /// Replaced, with its channel, when its thread is stuck in a call that never returns.
    committer: RefCell<Committer>,
    finished: RefCell<crossbeam_channel::Receiver<Finished>>,
    /// The job handed to the committer and not yet answered (the engine has at most one).
    job_out: Cell<Option<JobOut>>,
    /// Noted when a job is handed over: the committer watch wakes only then.
    job_handed: LocalNotify,
    /// Rings this core's doorbell; a replacement committer needs it.
    ringer: Ringer,
    /// The engine's next deadline, and a nudge for the timer task when it moved earlier.
    deadline: Cell<Option<Instant>>,
    timer_armed: Cell<Option<Instant>>,
    rearm: LocalSender<()>,
    settings: Arc<CommitSettings>,
    status: Vec<Arc<PartitionStatus>>,
    blocking: Blocking,
    metrics: Rc<CoreMetrics>,
    assignment: Assignment,
    /// How long this core's transactions have been refused for its group generation; past
    /// the rejoin's bound the member's client is taken for wedged and replaced.
    refusals: RefCell<Refusals>,
    rejoin: Rejoin,
    /// This core's copy of the elections: every vote is checked against it again here, at
    /// the owner (docs/design.md §7), forwarded ones included.
    elections: Rc<RefCell<ElectionsView>>,
    /// The engine's clock starts here.
    epoch: Instant,
    /// Noted when a shard's tallies may have moved (a commit, a recovery, a full re-send), so
    /// the read model's fan-out sleeps while nothing changes.
    tallies_moved: LocalNotify,
}

impl ShardHost {
    /// A core's host, owning no partition yet; `assignment` is its group member's. Starts the
    /// core's committer thread and the tasks that feed the engine; the returned [`Ringer`] is
    /// for the member thread (it rings after each ownership event).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        core: usize,
        settings: Arc<CommitSettings>,
        status: &[Arc<PartitionStatus>],
        blocking: Blocking,
        metrics: Rc<CoreMetrics>,
        assignment: Assignment,
        rejoin: Rejoin,
        elections: Rc<RefCell<ElectionsView>>,
        events: Option<mpsc::Receiver<OwnershipEvent>>,
        shutdown: LocalSignal,
    ) -> anyhow::Result<(Rc<Self>, Ringer)> {
        let core16 = u16::try_from(core)?;
        let (bell, ringer) = votes_net::doorbell::doorbell()?;
        let (committer, finished) = start_committer(&settings, core16, &ringer)?;
        let engine = CoreEngine::new(EngineConfig {
            node: settings.node.clone(),
            core: core16,
            max_txn_votes: settings.max_batch,
            max_queued: settings.max_queued,
            pacing: settings.pacing,
            retake_after: micros(RETAKE_AFTER),
            backoff_min: 100_000,
            backoff_max: 5_000_000,
        });
        // Capacity 1: one nudge pending is all the timer task needs to know.
        let (rearm, rearm_rx) = local_channel::new_bounded(1);
        let host = Rc::new(Self {
            core,
            engine: RefCell::new(engine),
            commands: RefCell::new(Vec::new()),
            waiting: RefCell::new(votes_core::hash::U64Map::default()),
            next_ticket: Cell::new(0),
            claims: RefCell::new(HashMap::new()),
            revokes: RefCell::new(HashMap::new()),
            next_revoke: Cell::new(0),
            groups: RefCell::new(BTreeMap::new()),
            next_generation: Cell::new(1),
            committer: RefCell::new(committer),
            finished: RefCell::new(finished),
            job_out: Cell::new(None),
            job_handed: LocalNotify::new(),
            ringer: ringer.clone(),
            deadline: Cell::new(None),
            timer_armed: Cell::new(None),
            rearm,
            settings,
            status: status.to_vec(),
            blocking,
            metrics,
            assignment,
            refusals: RefCell::new(Refusals::default()),
            rejoin,
            elections,
            epoch: Instant::now(),
            tallies_moved: LocalNotify::new(),
        });
        // Elections closed before this process started are closed on every shard it takes.
        let closed: Vec<Election> = host
            .elections
            .borrow()
            .sorted()
            .into_iter()
            .cloned()
            .collect();
        for e in &closed {
            host.election_changed(e);
        }
        glommio::spawn_local(host.clone().inbound(bell, events, shutdown.clone())).detach();
        glommio::spawn_local(host.clone().timer(rearm_rx, shutdown.clone())).detach();
        glommio::spawn_local(host.clone().watch_committer(shutdown.clone())).detach();
        if host.settings.snapshots.is_some() {
            glommio::spawn_local(host.clone().snapshots(shutdown)).detach();
        }
        Ok((host, ringer))
    }

    fn now(&self) -> Micros {
        micros(self.epoch.elapsed())
    }

    /// Feeds one event to the engine and carries out its commands.
    fn feed(self: &Rc<Self>, event: Event) {
        let mut commands = self.commands.take();
        let (next, moves_tallies) = {
            let mut engine = self.engine.borrow_mut();
            engine.handle(self.now(), event, &mut commands);
            (engine.next_deadline(), engine.take_tallies_moved())
        };
        for c in commands.drain(..) {
            self.execute(c);
        }
        self.commands.replace(commands);
        if moves_tallies {
            self.tallies_moved.notify();
        }
        let next = next.map(|us| self.epoch + Duration::from_micros(us));
        self.deadline.set(next);
        if let Some(at) = next
            && self.timer_armed.get().is_none_or(|armed| at < armed)
        {
            // Full means a nudge is pending already.
            let _ = self.rearm.try_send(());
        }
    }

    /// Long because it is one arm per command of the engine, each carried out where it is read.
    fn execute(self: &Rc<Self>, c: Command) {
        match c {
            Command::Answer { partition, answer } => {
                let reply = self
                    .waiting
                    .borrow_mut()
                    .remove(&answer.ticket())
                    .expect("every answered ticket was waiting");
                // The voter may have gone; the vote's fate is the same either way.
                let _ = reply.send(to_vote_outcome(partition, &answer));
            }
            Command::Commit {
                txn,
                generation,
                batches,
            } => {
                let group = {
                    let mut groups = self.groups.borrow_mut();
                    // Transactions only ever carry the newest generation from now on.
                    groups.retain(|g, _| *g >= generation.0);
                    groups
                        .get(&generation.0)
                        .expect("the engine names a generation the member gave")
                        .clone()
                };
                self.hand_over(JobOut::Commit { txn });
                self.committer.borrow().submit(Job::Commit {
                    txn,
                    batches,
                    group,
                });
            }
            Command::OpenProducer { attempt } => {
                self.hand_over(JobOut::Open { attempt });
                self.committer.borrow().submit(Job::Open { attempt });
            }
            Command::Claimed { partition, claim } => {
                let epoch = self.status[partition as usize].claim();
                self.claims.borrow_mut().insert(
                    partition,
                    Claim {
                        claim,
                        epoch,
                        log_id: None,
                        snapshot_end: 0,
                    },
                );
            }
            Command::Recover {
                partition,
                claim,
                shard,
            } => {
                glommio::spawn_local(self.clone().recover(partition, claim, shard)).detach();
            }
            Command::Status {
                partition,
                claim,
                state,
            } => {
                let mut claims = self.claims.borrow_mut();
                if let Some(c) = claims.get(&partition).filter(|c| c.claim == claim) {
                    self.status[partition as usize].set(c.epoch, state);
                    if state == ShardState::Released {
                        claims.remove(&partition);
                        tracing::info!(partition, core = self.core, "partition handed off");
                    }
                    if state == ShardState::Active {
                        tracing::info!(
                            partition,
                            core = self.core,
                            "shard recovered and accepting"
                        );
                    }
                }
            }
            Command::RevokeDone { ack } => {
                if let Some(done) = self.revokes.borrow_mut().remove(&ack) {
                    let _ = done.try_send(());
                }
            }
        }
    }
}

impl ShardHost {
    /// Hands a vote to the shard of `partition`; `503` when this core does not own it (the
    /// sender's map was older than the group's last move).
    pub fn submit(
        self: &Rc<Self>,
        partition: u32,
        intent: VoteIntent,
        reply: ReplyTx<VoteOutcome>,
    ) {
        // The edge checked these on its own copy, which may lag this one (another node, a
        // forwarded vote in flight): a vote reaching its owner after its election closed
        // gets 409, never a 202 past the frontier. This copy may lag the edge's too (the
        // election opened through another node a moment ago): what it does not know yet, or
        // knows only as a draft, the edge saw open, and states never move backwards, so the
        // edge's word stands. Only a state past `open` here overrules it. The edge is always a
        // core of this node: another node's word is not taken, a forwarded vote reaches this
        // point only once the core that received it saw its election open with that option
        // (`CoreApp::owner_verdict`). The same rule as there, without its wait.
        let verdict = OwnerVerdict::of(
            self.elections.borrow().find(intent.election.as_str()),
            &intent.option,
        );
        if let OwnerVerdict::Refuse(code) = verdict {
            let _ = reply.send(VoteOutcome::Rejected(code));
            return;
        }
        let ticket = self.next_ticket.get();
        self.next_ticket.set(ticket + 1);
        self.waiting.borrow_mut().insert(ticket, reply);
        self.feed(Event::Vote {
            partition,
            vote: Vote { ticket, intent },
        });
    }

    /// An election changed on this core's copy: once closed (or final), every shard of the
    /// core stops taking its votes and writes its close marker (docs/design.md §7). Idempotent.
    pub fn election_changed(self: &Rc<Self>, e: &Election) {
        if matches!(e.state, ElectionState::Closed | ElectionState::Final) {
            self.feed(Event::Close {
                election: e.id.clone(),
                at_ms: e.updated_at_ms,
            });
        }
    }

    fn on_membership(self: &Rc<Self>, event: OwnershipEvent) {
        self.refusals.borrow_mut().clear();
        match event {
            OwnershipEvent::Assigned { partitions, group } => {
                let token = self.next_generation.get();
                self.next_generation.set(token + 1);
                self.groups.borrow_mut().insert(token, group);
                self.feed(Event::Assigned {
                    partitions,
                    generation: Generation(token),
                });
            }
            OwnershipEvent::Revoked {
                partitions,
                lost,
                done,
            } => {
                let ack = self.next_revoke.get();
                self.next_revoke.set(ack + 1);
                self.revokes.borrow_mut().insert(ack, done);
                if lost {
                    tracing::warn!(
                        core = self.core,
                        ?partitions,
                        "membership lost: these partitions may already have a new owner"
                    );
                }
                self.feed(Event::Revoked {
                    partitions,
                    lost,
                    ack,
                });
            }
        }
    }

    /// Wakes on the doorbell and drains what the committer and the group member sent.
    async fn inbound(
        self: Rc<Self>,
        mut bell: Bell,
        events: Option<mpsc::Receiver<OwnershipEvent>>,
        shutdown: LocalSignal,
    ) {
        loop {
            loop {
                let Ok(f) = self.finished.borrow().try_recv() else {
                    break;
                };
                let out = self.job_out.take();
                debug_assert!(out.is_some(), "a result answers the job handed over");
                self.judge_membership(&f);
                let event = f.into_event(|votes, elapsed, outcome| {
                    self.metrics.commit(votes, elapsed, outcome)
                });
                self.feed(event);
            }
            if let Some(events) = &events {
                while let Ok(e) = events.try_recv() {
                    self.on_membership(e);
                }
            }
            let rang = futures_lite::future::or(bell.wait(), async {
                shutdown.wait().await;
                false
            })
            .await;
            if !rang {
                return;
            }
        }
    }

    /// Counts the refusals of this core's generation; when they last with no word from the
    /// member, asks for a new client (the member's is wedged and will never say it lost the
    /// partitions: the core would abort transaction after transaction meanwhile).
    fn judge_membership(&self, f: &Finished) {
        if f.generation_refused() {
            if self
                .refusals
                .borrow_mut()
                .refused(Instant::now(), self.rejoin.after())
            {
                tracing::error!(
                    core = self.core,
                    after = ?self.rejoin.after(),
                    "the group has refused this core's generation with no word from its member; asking for a new member client"
                );
                self.rejoin.ask();
            }
        } else if matches!(
            f,
            Finished::Txn {
                outcome: TxnOutcome::Committed { .. },
                ..
            }
        ) {
            self.refusals.borrow_mut().clear();
        }
    }

    fn hand_over(&self, job: JobOut) {
        let before = self.job_out.replace(Some(job));
        assert!(
            before.is_none(),
            "the engine has at most one committer job out"
        );
        self.job_handed.notify();
    }

    /// Gives up a committer thread stuck in a librdkafka call that will not return
    /// ([`Committer::stuck_for`]): the job's outcome becomes unknown (a transaction) or a
    /// failed open, and a new committer thread takes over; its `init_transactions` fences the
    /// stuck producer and settles its transaction before the engine replays those partitions.
    /// A node committer serves every core and cannot be replaced by one: the process exits
    /// so its supervisor restarts it (the other nodes take its partitions meanwhile).
    async fn watch_committer(self: Rc<Self>, shutdown: LocalSignal) {
        while !shutdown.is_fired() {
            if self.job_out.get().is_none() {
                futures_lite::future::or(self.job_handed.notified(), shutdown.wait()).await;
                continue;
            }
            futures_lite::future::or(
                glommio::timer::sleep(COMMITTER_WATCH_EVERY),
                shutdown.wait(),
            )
            .await;
            let Some(stuck) = self.committer.borrow().stuck_for() else {
                continue;
            };
            let Some(job) = self.job_out.take() else {
                continue;
            };
            if self.settings.node_committer.is_some() {
                tracing::error!(
                    core = self.core,
                    ?stuck,
                    ?job,
                    "the node committer is stuck in a Kafka call that does not return (librdkafka#5456); exiting so the supervisor restarts this node"
                );
                std::process::exit(70);
            }
            tracing::error!(
                core = self.core,
                ?stuck,
                ?job,
                "the committer is stuck in a Kafka call that does not return (librdkafka#5456); starting another, the job's outcome is unknown"
            );
            let core16 = u16::try_from(self.core).expect("checked at start");
            match start_committer(&self.settings, core16, &self.ringer) {
                Ok((committer, finished)) => {
                    // The stuck thread's port goes with the old committer: if its call ever
                    // returns, it answers nobody and ends.
                    drop(self.committer.replace(committer));
                    drop(self.finished.replace(finished));
                }
                Err(e) => {
                    tracing::error!(core = self.core, error = %e, "cannot start another committer; exiting so the supervisor restarts this node");
                    std::process::exit(70);
                }
            }
            self.feed(match job {
                JobOut::Commit { txn } => Event::TxnDone {
                    txn,
                    outcome: TxnOutcome::Unknown,
                },
                JobOut::Open { attempt } => Event::ProducerOpened {
                    attempt,
                    result: Err(OpenFailure::Transient),
                },
            });
        }
    }

    /// Ticks the engine at its deadlines.
    async fn timer(self: Rc<Self>, rearm: LocalReceiver<()>, shutdown: LocalSignal) {
        while !shutdown.is_fired() {
            match self.deadline.get() {
                Some(at) if at <= Instant::now() => {
                    self.timer_armed.set(None);
                    self.feed(Event::Tick);
                }
                Some(at) => {
                    self.timer_armed.set(Some(at));
                    futures_lite::future::or(glommio::timer::sleep(at - Instant::now()), async {
                        let _ = rearm.recv().await;
                    })
                    .await;
                }
                None => {
                    self.timer_armed.set(None);
                    futures_lite::future::or(
                        async {
                            let _ = rearm.recv().await;
                        },
                        shutdown.wait(),
                    )
                    .await;
                }
            }
        }
    }

    /// Fences the previous writers' open transactions, restores and replays the partition on
    /// the blocking pool, and hands the result to the engine.
    async fn recover(self: Rc<Self>, partition: u32, claim: ClaimId, shard: Shard) {
        let s = self.settings.clone();
        let status = self.status[partition as usize].clone();
        let assignment = self.assignment.clone();
        let core = u16::try_from(self.core).expect("core index fits u16");
        let replayed = self
            .blocking
            .run(move || {
                let p = partition;
                let began = Instant::now();
                let stable = await_stable(Stable {
                    clients: &s.recovery,
                    partition: p,
                    me: (&s.node, core),
                    still_owner: || membership::holds(&assignment, p),
                    writer_gone: |writer: &str| {
                        left_the_group(&s.fleet, writer, (&s.node, core), p)
                    },
                    grace: FENCE_GRACE,
                    timeout: s.kafka_timeout,
                })
                .map_err(|e| e.to_string())?;
                let stable_at = began.elapsed();
                let progress = |pr: votes_tally::recovery::ReplayProgress| {
                    status.replayed_records.store(pr.records, Ordering::Relaxed);
                    status.replay_offset.store(pr.offset, Ordering::Relaxed);
                };
                // A shard that holds nothing yet starts from its newest good snapshot; one
                // that kept its state (after an unknown outcome) replays from where it is.
                let (shard, log_id) = match &s.snapshots {
                    Some(snaps) if shard.applied_end() == 0 => {
                        let cfg = shard_config_of(&shard, &s, core);
                        restore(&s, snaps, cfg, shard, &status).map_err(|e| e.to_string())?
                    }
                    _ => (shard, None),
                };
                let start = status.snapshot_start.load(Ordering::Relaxed);
                let restored_at = began.elapsed();
                let shard = replay(&s.recovery, shard, stable, s.kafka_timeout, progress)
                    .map_err(|e| e.to_string())?;
                // Where a failover's time goes, partition by partition.
                tracing::info!(
                    partition,
                    stable_ms = stable_at.as_millis(),
                    restored_ms = restored_at.as_millis(),
                    replayed_ms = began.elapsed().as_millis(),
                    "partition recovered from the log"
                );
                Ok::<_, String>((shard, log_id, start))
            })
            .await;
        let shard = match replayed {
            Ok(Ok((shard, log_id, snapshot_start))) => {
                self.status[partition as usize]
                    .log_duplicates
                    .store(shard.log_duplicates(), Ordering::Relaxed);
                if let Some(c) = self
                    .claims
                    .borrow_mut()
                    .get_mut(&partition)
                    .filter(|c| c.claim == claim)
                {
                    c.log_id = c.log_id.or(log_id);
                    // What recovery started from is on disk already.
                    c.snapshot_end = c.snapshot_end.max(snapshot_start);
                }
                Some(shard)
            }
            Ok(Err(why)) => {
                tracing::warn!(partition, %why, "recovery failed; retrying from the start");
                None
            }
            Err(e) => {
                tracing::warn!(partition, error = %e, "blocking pool refused the recovery");
                None
            }
        };
        self.feed(Event::Recovered {
            partition,
            claim,
            shard,
        });
    }

    /// Writes each active shard's committed state every `every` once it has moved on: copied
    /// on the reactor, encoded on the blocking pool, written with direct I/O under a temporary
    /// name and synced (glommio), renamed and the directory synced (blocking pool).
    async fn snapshots(self: Rc<Self>, shutdown: LocalSignal) {
        let snaps = self
            .settings
            .snapshots
            .clone()
            .expect("started only with snapshots configured");
        while !shutdown.is_fired() {
            futures_lite::future::or(glommio::timer::sleep(snaps.every), shutdown.wait()).await;
            let partitions: Vec<u32> = self
                .engine
                .borrow()
                .active_shards()
                .map(|(p, _)| p)
                .collect();
            for p in partitions {
                self.snapshot_one(&snaps, p).await;
            }
        }
    }

    async fn snapshot_one(&self, snaps: &SnapshotSettings, partition: u32) {
        let (claim, known_id, last_end) = match self.claims.borrow().get(&partition) {
            Some(c) => (c.claim, c.log_id, c.snapshot_end),
            None => return,
        };
        let moved_on = self
            .engine
            .borrow()
            .active_shard(partition)
            .is_some_and(|s| s.applied_end() > last_end);
        if !moved_on {
            return;
        }
        let log_id = match known_id {
            Some(id) => id,
            None => {
                // The log was empty at recovery: its first record exists now.
                let s = self.settings.clone();
                match self
                    .blocking
                    .run(move || {
                        votes_tally::recovery::log_identity(
                            &s.brokers,
                            &s.names,
                            partition,
                            s.kafka_timeout,
                        )
                    })
                    .await
                {
                    Ok(Ok(votes_tally::recovery::LogIdentity { id: Some(id), .. })) => id,
                    other => {
                        tracing::warn!(partition, outcome = ?other.map(|r| r.map_err(|e| e.to_string())), "cannot name the log yet; no snapshot this time");
                        return;
                    }
                }
            }
        };
        let snap = {
            let engine = self.engine.borrow();
            match engine.active_shard(partition) {
                Some(s) if engine.claim_of(partition) == Some(claim) => s.snapshot(log_id),
                _ => return,
            }
        };
        let end = snap.applied_end;
        let started = Instant::now();
        match write_snapshot(snaps, partition, snap, &self.blocking).await {
            Ok(bytes) => {
                if let Some(c) = self
                    .claims
                    .borrow_mut()
                    .get_mut(&partition)
                    .filter(|c| c.claim == claim)
                {
                    c.log_id = Some(log_id);
                    c.snapshot_end = end;
                }
                let status = &self.status[partition as usize];
                status.snapshot_offset.store(end, Ordering::Relaxed);
                status.snapshot_bytes.store(bytes, Ordering::Relaxed);
                tracing::debug!(partition, end, bytes, took = ?started.elapsed(), "snapshot written");
            }
            Err(e) => {
                tracing::warn!(partition, error = %e, "snapshot not written; the previous one stands");
            }
        }
    }

    /// Absolute tallies of every election in this core's active shards, by partition.
    pub fn tallies(&self) -> Vec<TallyRow> {
        let engine = self.engine.borrow();
        let mut out = Vec::new();
        for (p, shard) in engine.active_shards() {
            for (election, counts) in shard.elections() {
                let counts = counts.iter().map(|(o, c)| (o.clone(), *c)).collect();
                out.push((p, election.clone(), counts, shard.applied_end()));
            }
        }
        out
    }

    /// The absolute tallies of the shards whose tallies changed since the last call (or of
    /// every active shard when `all`), for the read model. Clears the marks.
    pub fn tally_updates(&self, all: bool) -> Vec<TallyUpdate> {
        let mut engine = self.engine.borrow_mut();
        let partitions: Vec<u32> = engine.active_shards().map(|(p, _)| p).collect();
        let mut out = Vec::new();
        for p in partitions {
            if !(engine.take_dirty(p) || all) {
                continue;
            }
            let shard = engine.active_shard(p).expect("listed as active");
            for (election, counts) in shard.elections() {
                out.push(TallyUpdate {
                    election: election.clone(),
                    partition: p,
                    offset: shard.applied_end(),
                    counts: counts.iter().map(|(o, c)| (o.clone(), *c)).collect(),
                });
            }
        }
        out
    }

    /// Marks every shard's tallies as not yet in the read model (its link was full).
    pub fn mark_all_dirty(&self) {
        let mut engine = self.engine.borrow_mut();
        engine.mark_all_dirty();
        if engine.take_tallies_moved() {
            self.tallies_moved.notify();
        }
    }

    /// Resolves when a shard's tallies may have moved since the last time it resolved.
    pub async fn tallies_moved(&self) {
        self.tallies_moved.notified().await
    }

    /// Votes waiting for a commit on this core (for `/metrics`).
    pub fn waiting(&self) -> usize {
        self.waiting.borrow().len()
    }

    /// The engine's counters and pacing, for `/metrics`.
    pub fn engine_stats(&self) -> (votes_tally::engine::EngineStats, Duration) {
        let engine = self.engine.borrow();
        (
            engine.stats(),
            Duration::from_micros(engine.pacing().window()),
        )
    }
}

fn micros(d: Duration) -> Micros {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The configuration a shard was made with, for a restore that replaces it.
fn shard_config_of(shard: &Shard, s: &CommitSettings, core: u16) -> ShardConfig {
    ShardConfig {
        partition: shard.partition(),
        node: s.node.clone(),
        core,
        max_batch: s.max_batch,
        max_queued: s.max_queued,
    }
}

fn to_vote_outcome(partition: u32, answer: &Answer) -> VoteOutcome {
    match answer {
        Answer::Accepted { offset, .. } => VoteOutcome::Accepted {
            partition,
            offset: *offset,
        },
        Answer::Rejected { code, .. } => VoteOutcome::Rejected(*code),
    }
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
            use std::os::unix::fs::PermissionsExt;
            // Who voted: the owner's alone, whatever the umask (the directory is 0700 too).
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
            std::fs::rename(&tmp, dir.join(snapshot::files::name(partition, end)))?;
            std::fs::File::open(&dir)?.sync_all()?;
            snapshot::files::prune(&dir, partition, keep)
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))??;
    Ok(len)
}

/// The core's committer and the channel of its results: its own thread, or its port on the
/// node's. The engine has at most one job out, so at most one result waits in the channel.
fn start_committer(
    settings: &CommitSettings,
    core: u16,
    ringer: &Ringer,
) -> anyhow::Result<(Committer, crossbeam_channel::Receiver<Finished>)> {
    let (finished_tx, finished) = crossbeam_channel::bounded(4);
    let ringer = ringer.clone();
    let wake = move || ringer.ring();
    let committer = match &settings.node_committer {
        Some(node) => node.port(usize::from(core), finished_tx, wake),
        None => Committer::start(
            CommitterConfig {
                brokers: settings.brokers.clone(),
                names: settings.names.clone(),
                node: settings.node.clone(),
                scope: Scope::Core(core),
                timeout: settings.kafka_timeout,
            },
            finished_tx,
            wake,
        )?,
    };
    Ok((committer, finished))
}
