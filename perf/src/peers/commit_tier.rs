//! The commit tier alone: pre-made votes pushed through the appliance's own commit engine
//! (`votes_tally::engine::CoreEngine`, its shards, its pacing) and committer threads
//! (`votes_tally::committer`), one per core, with real group membership
//! (`votes_tally::membership::Member`) — everything a vote costs after the HTTP edge, and
//! nothing of the edge. Its figure to compare is the floor's: CPU per vote (client + broker)
//! over the floor's CPU per record at the same offered rate, and the acknowledgement latency.
//!
//! Each core runs its engine on a plain thread (the appliance runs it on a glommio reactor; the
//! engine is the same, the driver differs only in how it waits). Votes go to the core whose
//! partition they route to, like the appliance's mesh; latencies are measured from each vote's
//! intended time (open loop) or its submission (closed loop) to its answer.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex, mpsc};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rdkafka::consumer::ConsumerGroupMetadata;
use serde::Serialize;
use votes_core::{ElectionId, ErrorCode, Names, OptionId, VoterId};
use votes_tally::committer::{Committer, CommitterConfig, CommitterThread, Job, Scope};

/// The node name the tier's cores write as.
const TIER_NODE: &str = "tier";
use votes_tally::engine::{
    Command, CoreEngine, EngineConfig, Event, Generation, PacingConfig, TxnOutcome,
};
use votes_tally::membership::{Member, MemberConfig, OwnershipEvent};
use votes_tally::shard::{Answer, Shard, Vote};

use super::{BrokerRun, Pace, PeerError, VoteSpec, Votes, check_rate, record};
use crate::cpu;
use crate::report::LatencyMs;

#[derive(Debug, Clone)]
pub struct CommitTierConfig {
    pub brokers: String,
    /// Prefix of the topic, the group and the transactional ids (`votes init` names).
    pub prefix: String,
    pub partitions: u32,
    pub cores: usize,
    pub spec: VoteSpec,
    /// Votes offered per second (open loop); `None`: closed loop with `window` votes in flight
    /// per core.
    pub rate: Option<f64>,
    pub window: usize,
    pub max_batch: usize,
    /// One committer for every core (the appliance's `--committer node`), or one per core.
    pub node_committer: bool,
    pub pacing: PacingConfig,
    pub broker_pids: Option<Vec<u32>>,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CommitTierReport {
    #[serde(flatten)]
    pub run: BrokerRun,
    /// Each vote from its intended (open loop) or submission (closed loop) time to its answer.
    pub latency_ms: LatencyMs,
    /// One transaction, from the committer's start to its outcome.
    pub commit_ms: LatencyMs,
    pub transactions: u64,
    pub votes_per_transaction: f64,
    pub accepted: u64,
    pub already_voted: u64,
    /// Answered 503 (queue full or a failed transaction) and submitted again.
    pub retried: u64,
    pub cores: usize,
    pub partitions: u32,
    pub rate: Option<f64>,
    pub max_batch: usize,
    pub ack_target_ms: f64,
    pub max_window_ms: f64,
    pub verified: bool,
    pub tally_diff: BTreeMap<String, (u64, u64)>,
}

impl CommitTierReport {
    pub fn summary(&self) -> String {
        format!(
            "commit-tier: {} votes in {:.2}s = {:.0} votes/s, {} cores over {} partitions; {}; {} transactions, {:.1} votes each, commit p50 {:.2} p99 {:.2} ms; ack p50 {:.2} p99 {:.2} max {:.2} ms; {}",
            self.run.votes,
            self.run.wall_s,
            self.run.votes_per_s,
            self.cores,
            self.partitions,
            self.run.cpu_summary(),
            self.transactions,
            self.votes_per_transaction,
            self.commit_ms.p50,
            self.commit_ms.p99,
            self.latency_ms.p50,
            self.latency_ms.p99,
            self.latency_ms.max,
            if self.verified {
                "tallies verified".to_string()
            } else {
                format!("TALLIES DIFFER: {:?}", self.tally_diff)
            },
        )
    }
}

/// What one core's thread measured.
struct CoreResult {
    latency_us: Histogram<u64>,
    commit_us: Histogram<u64>,
    transactions: u64,
    txn_votes: u64,
    accepted: u64,
    already_voted: u64,
    retried: u64,
    /// The core's tallies at the end: option → count.
    tallies: BTreeMap<String, u64>,
}

/// How often a core's thread takes the votes that fell due (open loop).
const FEED_SLICE: Duration = Duration::from_micros(500);

/// Wakes a core's thread: the committer and the member ring it.
type Wake = crossbeam_channel::Sender<()>;

pub fn run(cfg: &CommitTierConfig) -> Result<CommitTierReport, PeerError> {
    check_rate(cfg.rate)?;
    if cfg.cores == 0 || cfg.partitions == 0 || cfg.max_batch == 0 || cfg.window == 0 {
        return Err(PeerError::Args(
            "--cores, --partitions, --batch-max and --window must be positive".into(),
        ));
    }
    let names = Names::new(cfg.prefix.clone()).map_err(|e| PeerError::Args(e.to_string()))?;
    super::floor::ensure_topic(
        &cfg.brokers,
        &names.votes_topic(),
        cfg.partitions,
        cfg.timeout,
    )?;
    let votes = Votes::generate(&cfg.spec)?;
    let expected = votes.expected(cfg.spec.seed);
    let election =
        ElectionId::new(votes.election.clone()).map_err(|e| PeerError::Args(e.to_string()))?;
    let options: Vec<OptionId> = votes
        .options
        .iter()
        .map(|o| OptionId::new(o.clone()).map_err(|e| PeerError::Args(e.to_string())))
        .collect::<Result<_, _>>()?;
    // The votes of each partition, with their global index (their intended time).
    let mut by_partition: Vec<Vec<(u64, u64, u32)>> = vec![Vec::new(); cfg.partitions as usize];
    for (i, v) in votes.seq.iter().enumerate() {
        let p = votes_core::routing::partition_of(VoterId(v.voter), cfg.partitions);
        by_partition[p as usize].push((i as u64, v.voter, v.option));
    }
    let by_partition = Arc::new(by_partition);
    let broker_pids = cfg
        .broker_pids
        .clone()
        .unwrap_or_else(super::floor::find_broker_pids);

    // Every core joins, recovers its partitions, and waits here until all partitions are
    // active somewhere; then the clock starts for everyone at once.
    let active = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(Barrier::new(cfg.cores + 1));
    let t0 = Arc::new(Mutex::new(None::<Instant>));
    let failed = Arc::new(AtomicBool::new(false));
    // Each core sends its figures when its last vote is answered, before it tears down (a
    // static member's close may wait): the clock and the CPU stop at the last answer.
    let (results_tx, results_rx) = mpsc::channel::<CoreResult>();
    let node_committer = if cfg.node_committer {
        Some(Arc::new(
            CommitterThread::start(
                CommitterConfig {
                    brokers: cfg.brokers.clone(),
                    names: names.clone(),
                    node: TIER_NODE.to_string(),
                    scope: Scope::Node,
                    timeout: cfg.timeout,
                },
                cfg.cores,
            )
            .map_err(|e| PeerError::Worker(e.to_string()))?,
        ))
    } else {
        None
    };
    let mut threads = Vec::new();
    for core in 0..cfg.cores {
        let (cfg, names) = (cfg.clone(), names.clone());
        let node_committer = node_committer.clone();
        let (by_partition, active, start, t0, failed) = (
            by_partition.clone(),
            active.clone(),
            start.clone(),
            t0.clone(),
            failed.clone(),
        );
        let (election, options) = (election.clone(), options.clone());
        let results_tx = results_tx.clone();
        threads.push(
            std::thread::Builder::new()
                .name(format!("tier-{core}"))
                .spawn(move || {
                    let r = core_thread(
                        &cfg,
                        &names,
                        node_committer.as_deref(),
                        core,
                        &by_partition,
                        &election,
                        &options,
                        &active,
                        &start,
                        &t0,
                        &results_tx,
                    );
                    if r.is_err() {
                        failed.store(true, Ordering::Release);
                    }
                    r
                })
                .map_err(|source| PeerError::Io {
                    path: "thread".into(),
                    source,
                })?,
        );
    }
    let ready_by = Instant::now() + cfg.timeout * 4;
    while active.load(Ordering::Acquire) < cfg.partitions as usize {
        if Instant::now() > ready_by || failed.load(Ordering::Acquire) {
            return Err(PeerError::Worker(
                "the cores did not take every partition in time".into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let (c0, b0) = (
        cpu::self_cpu_seconds()?,
        cpu::sum_cpu_seconds(&broker_pids)?,
    );
    let began = Instant::now();
    *t0.lock().unwrap_or_else(|p| p.into_inner()) = Some(began);
    start.wait();
    drop(results_tx);
    let mut results = Vec::new();
    while results.len() < cfg.cores {
        match results_rx.recv() {
            Ok(r) => results.push(r),
            Err(_) => break, // A core failed: its error comes with the join below.
        }
    }
    let wall = began.elapsed().as_secs_f64();
    let (c1, b1) = (
        cpu::self_cpu_seconds()?,
        cpu::sum_cpu_seconds(&broker_pids)?,
    );
    for t in threads {
        t.join()
            .map_err(|_| PeerError::Worker("a core panicked".into()))??;
    }
    let client = c1 - c0;
    let broker = (!broker_pids.is_empty()).then_some(b1 - b0);
    let n = votes.seq.len() as u64;
    let mut latency = super::latency_histogram();
    let mut commit = super::latency_histogram();
    let mut found: BTreeMap<String, u64> = BTreeMap::new();
    let (mut txns, mut txn_votes, mut accepted, mut dup, mut retried) = (0, 0, 0, 0, 0);
    for r in &results {
        super::merge_latency(&mut latency, &r.latency_us)?;
        super::merge_latency(&mut commit, &r.commit_us)?;
        txns += r.transactions;
        txn_votes += r.txn_votes;
        accepted += r.accepted;
        dup += r.already_voted;
        retried += r.retried;
        for (o, c) in &r.tallies {
            *found.entry(o.clone()).or_default() += c;
        }
    }
    let tally_diff = super::tally_diff(&expected.tallies, &found);
    Ok(CommitTierReport {
        run: BrokerRun::measured("commit-tier", n, wall, client, broker),
        latency_ms: LatencyMs::of(&latency),
        commit_ms: LatencyMs::of(&commit),
        transactions: txns,
        votes_per_transaction: if txns > 0 {
            txn_votes as f64 / txns as f64
        } else {
            0.0
        },
        accepted,
        already_voted: dup,
        retried,
        cores: cfg.cores,
        partitions: cfg.partitions,
        rate: cfg.rate,
        max_batch: cfg.max_batch,
        ack_target_ms: cfg.pacing.ack_target as f64 / 1e3,
        max_window_ms: cfg.pacing.max_window as f64 / 1e3,
        verified: tally_diff.is_empty() && accepted == expected.accepted,
        tally_diff,
    })
}

/// One core: membership, committer, engine; recovers what it is given, then feeds the votes of
/// its partitions and answers them.
#[allow(clippy::too_many_arguments)]
fn core_thread(
    cfg: &CommitTierConfig,
    names: &Names,
    node_committer: Option<&CommitterThread>,
    core: usize,
    by_partition: &[Vec<(u64, u64, u32)>],
    election: &ElectionId,
    options: &[OptionId],
    active: &AtomicUsize,
    start: &Barrier,
    t0: &Mutex<Option<Instant>>,
    results: &mpsc::Sender<CoreResult>,
) -> Result<(), PeerError> {
    let node = TIER_NODE.to_string();
    let core16 = u16::try_from(core).map_err(|_| PeerError::Args("too many cores".into()))?;
    let (wake_tx, wake_rx) = crossbeam_channel::bounded::<()>(1);
    let ring = |w: &Wake| {
        let w = w.clone();
        move || {
            let _ = w.try_send(());
        }
    };
    let (finished_tx, finished) = crossbeam_channel::bounded(4);
    let committer = match node_committer {
        Some(c) => c.port(core, finished_tx, ring(&wake_tx)),
        None => Committer::start(
            CommitterConfig {
                brokers: cfg.brokers.clone(),
                names: names.clone(),
                node: node.clone(),
                scope: Scope::Core(core16),
                timeout: cfg.timeout,
            },
            finished_tx,
            ring(&wake_tx),
        )
        .map_err(|e| PeerError::Worker(e.to_string()))?,
    };
    let (events_tx, events) = mpsc::channel();
    let assignment = votes_tally::membership::Assignment::default();
    let member = Member::start(
        &MemberConfig {
            brokers: cfg.brokers.clone(),
            names: names.clone(),
            tag: votes_core::group::MemberTag {
                node: node.clone(),
                core: core16,
                internal: std::net::SocketAddr::from(([127, 0, 0, 1], 1)),
            },
            session_timeout: Duration::from_secs(10),
            handoff_timeout: cfg.timeout,
        },
        events_tx,
        assignment.clone(),
        Box::new(ring(&wake_tx)),
        // This peer's transactions are not watched for refusals: nobody asks.
        votes_tally::membership::Rejoin::new(Duration::from_secs(10)),
    )
    .map_err(|e| PeerError::Worker(e.to_string()))?;
    let mut engine = CoreEngine::new(EngineConfig {
        node: node.clone(),
        core: core16,
        max_txn_votes: cfg.max_batch,
        max_queued: cfg.max_batch * 8,
        pacing: cfg.pacing,
        retake_after: 3_000_000,
        backoff_min: 100_000,
        backoff_max: 5_000_000,
    });
    let epoch = Instant::now();
    let now = || u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
    let mut groups: HashMap<u64, Arc<ConsumerGroupMetadata>> = HashMap::new();
    let mut next_generation = 1u64;
    let mut out = Vec::new();
    let mut res = CoreResult {
        latency_us: super::latency_histogram(),
        commit_us: super::latency_histogram(),
        transactions: 0,
        txn_votes: 0,
        accepted: 0,
        already_voted: 0,
        retried: 0,
        tallies: BTreeMap::new(),
    };
    // Tickets are indexes into `sent`: (global index, partition, voter, option, sent at).
    let mut sent: Vec<(u64, u32, u64, u32, Instant)> = Vec::new();
    let mut owned: BTreeSet<u32> = BTreeSet::new();
    let mut retry: Vec<u64> = Vec::new();
    let mut outstanding = 0usize;
    let mut answered = 0usize;
    let nonce = [0u8; 16];
    let received_at_ms = votes_core::clock::unix_ms();

    // Carries out the engine's commands; returns the answers to record.
    let execute = |out: &mut Vec<Command>,
                   engine: &mut CoreEngine,
                   groups: &mut HashMap<u64, Arc<ConsumerGroupMetadata>>|
     -> Result<Vec<(u32, Answer)>, PeerError> {
        let mut answers = Vec::new();
        let mut pending: Vec<Command> = std::mem::take(out);
        while !pending.is_empty() {
            for c in pending.drain(..) {
                match c {
                    Command::OpenProducer { attempt } => committer.submit(Job::Open { attempt }),
                    Command::Commit {
                        txn,
                        generation,
                        batches,
                    } => {
                        let group = groups
                            .get(&generation.0)
                            .cloned()
                            .ok_or_else(|| PeerError::Worker("unknown generation".into()))?;
                        committer.submit(Job::Commit {
                            txn,
                            batches,
                            group,
                        });
                    }
                    Command::Recover {
                        partition,
                        claim,
                        shard,
                    } => {
                        // Only at start-up: recovering inline keeps this driver simple.
                        let shard =
                            recover(cfg, names, &node, core16, partition, shard, &assignment);
                        engine.handle(
                            now(),
                            Event::Recovered {
                                partition,
                                claim,
                                shard,
                            },
                            out,
                        );
                    }
                    Command::Answer { partition, answer } => answers.push((partition, answer)),
                    Command::Claimed { .. }
                    | Command::Status { .. }
                    | Command::RevokeDone { .. } => {}
                }
            }
            pending = std::mem::take(out);
        }
        Ok(answers)
    };

    let mut started: Option<Instant> = None;
    let mut mine: Vec<(u64, u64, u32, u32)> = Vec::new();
    let mut next = 0usize;
    loop {
        // What the committer and the member sent.
        while let Ok(f) = finished.try_recv() {
            let event = f.into_event(|votes, elapsed, outcome| {
                if matches!(outcome, TxnOutcome::Committed { .. }) && started.is_some() {
                    res.transactions += 1;
                    res.txn_votes += votes as u64;
                    record(&mut res.commit_us, elapsed);
                }
            });
            engine.handle(now(), event, &mut out);
        }
        while let Ok(e) = events.try_recv() {
            match e {
                OwnershipEvent::Assigned { partitions, group } => {
                    groups.insert(next_generation, group);
                    engine.handle(
                        now(),
                        Event::Assigned {
                            partitions,
                            generation: Generation(next_generation),
                        },
                        &mut out,
                    );
                    next_generation += 1;
                }
                OwnershipEvent::Revoked {
                    partitions, done, ..
                } => {
                    if started.is_some() {
                        return Err(PeerError::Worker(
                            "the group rebalanced during the measurement".into(),
                        ));
                    }
                    engine.handle(
                        now(),
                        Event::Revoked {
                            partitions,
                            lost: false,
                            ack: 0,
                        },
                        &mut out,
                    );
                    let _ = done.send(());
                }
            }
        }
        if engine.next_deadline().is_some_and(|d| d <= now()) {
            engine.handle(now(), Event::Tick, &mut out);
        }
        for (_, answer) in execute(&mut out, &mut engine, &mut groups)? {
            let (ticket, ok) = match &answer {
                Answer::Accepted { vote, .. } => (vote.ticket, Some(true)),
                Answer::Rejected { ticket, code } => (
                    *ticket,
                    match code {
                        ErrorCode::AlreadyVoted => Some(false),
                        _ => None,
                    },
                ),
            };
            let (idx, _, _, _, at) = sent[ticket as usize];
            outstanding -= 1;
            match ok {
                Some(accepted) => {
                    answered += 1;
                    if accepted {
                        res.accepted += 1;
                    } else {
                        res.already_voted += 1;
                    }
                    let from = started
                        .and_then(|s| {
                            cfg.rate
                                .map(|r| s + Duration::from_secs_f64(idx as f64 / r))
                        })
                        .unwrap_or(at);
                    record(
                        &mut res.latency_us,
                        Instant::now().saturating_duration_since(from),
                    );
                }
                None => {
                    res.retried += 1;
                    retry.push(ticket);
                }
            }
        }

        // Before the measurement: wait until this core recovered what the group gave it, and
        // everyone else did the same.
        if started.is_none() {
            let now_owned: BTreeSet<u32> = engine.active_shards().map(|(p, _)| p).collect();
            if now_owned != owned {
                let gained = now_owned.difference(&owned).count();
                active.fetch_add(gained, Ordering::AcqRel);
                owned = now_owned;
            }
            let t0 = *t0.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(t0) = t0 {
                start.wait();
                started = Some(t0);
                mine = owned
                    .iter()
                    .flat_map(|p| {
                        by_partition[*p as usize]
                            .iter()
                            .map(move |v| (v.0, v.1, v.2, *p))
                    })
                    .collect();
                mine.sort_unstable();
                continue;
            }
            let _ = wake_rx.recv_timeout(Duration::from_millis(10));
            continue;
        }
        let began = started.expect("measuring");
        if answered == mine.len() {
            break;
        }
        // Feed what is due (open loop) or what the window allows (closed loop); retries first.
        let pace = Pace {
            t0: began,
            rate: cfg.rate,
        };
        let vote = |ticket: u64, sent: &[(u64, u32, u64, u32, Instant)]| {
            let (_, partition, voter, option, _) = sent[ticket as usize];
            Event::Vote {
                partition,
                vote: Vote {
                    ticket,
                    intent: votes_core::VoteIntent {
                        election: election.clone(),
                        voter: VoterId(voter),
                        option: options[option as usize].clone(),
                        received_at_ms,
                        nonce,
                    },
                },
            }
        };
        for ticket in std::mem::take(&mut retry) {
            outstanding += 1;
            engine.handle(now(), vote(ticket, &sent), &mut out);
        }
        let mut wait_until = None;
        while next < mine.len() {
            let (idx, voter, option, p) = mine[next];
            if cfg.rate.is_none() && outstanding >= cfg.window {
                break;
            }
            // Votes arrive in slices of half a millisecond, as a reactor takes a burst of
            // requests: waking for each single vote would measure this driver, not the tier.
            if let Some(due) = pace.due(idx)
                && due > Instant::now()
            {
                wait_until = Some(due.max(Instant::now() + FEED_SLICE));
                break;
            }
            let ticket = sent.len() as u64;
            sent.push((idx, p, voter, option, Instant::now()));
            outstanding += 1;
            next += 1;
            engine.handle(now(), vote(ticket, &sent), &mut out);
        }
        if !out.is_empty() {
            continue;
        }
        let deadline = engine
            .next_deadline()
            .map(|d| epoch + Duration::from_micros(d))
            .into_iter()
            .chain(wait_until)
            .min();
        match deadline {
            Some(d) => {
                let _ = wake_rx.recv_timeout(d.saturating_duration_since(Instant::now()));
            }
            None => {
                let _ = wake_rx.recv_timeout(Duration::from_millis(100));
            }
        }
    }
    for (_, shard) in engine.active_shards() {
        if let Some(t) = shard.tallies(election) {
            for (o, c) in t {
                *res.tallies.entry(o.as_str().to_string()).or_default() += c;
            }
        }
    }
    let _ = results.send(res);
    // Closing the member revokes its partitions and waits for the hand-off: confirm at once.
    std::thread::spawn(move || {
        for e in events.iter() {
            if let OwnershipEvent::Revoked { done, .. } = e {
                let _ = done.send(());
            }
        }
    });
    member.stop();
    drop(committer);
    Ok(())
}

fn recover(
    cfg: &CommitTierConfig,
    names: &Names,
    node: &str,
    core: u16,
    partition: u32,
    shard: Shard,
    assignment: &votes_tally::membership::Assignment,
) -> Option<Shard> {
    // The peer's cores share one process: no writer of its group leaves it, so fencing waits
    // for the grace.
    let clients = votes_tally::recovery::RecoveryClients::new(&cfg.brokers, names).ok()?;
    let stable = votes_tally::recovery::await_stable(votes_tally::recovery::Stable {
        clients: &clients,
        partition,
        me: (node, core),
        still_owner: || votes_tally::membership::holds(assignment, partition),
        writer_gone: |_: &str| false,
        grace: Duration::from_secs(1),
        timeout: cfg.timeout,
    });
    let stable = match stable {
        Ok(stable) => stable,
        Err(e) => {
            tracing::warn!(partition, error = %e, "recovery");
            return None;
        }
    };
    votes_tally::recovery::replay(&clients, shard, stable, cfg.timeout, |_| {}).ok()
}
