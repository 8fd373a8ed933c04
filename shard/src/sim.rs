//! A deterministic simulation of a fleet of cores over a simulated Kafka (TigerBeetle's VOPR is
//! the model): nodes × cores, each running the real [`CoreEngine`] and [`Shard`]s, against a
//! model of what the engines rely on — partitions whose records belong to transactions that
//! stay open until committed or aborted, transactional ids whose epochs fence, a group
//! coordinator whose generations move partitions (revoke, confirm, then assign) and refuse a
//! stale generation's offsets, and the core's replay that waits for the last stable offset.
//!
//! One seed is one schedule: the order and timing of every vote, commit step, replay step,
//! group event and fault (a node paused past its session, killed and restarted, commits slow,
//! unknown or failing, rebalances) is drawn from it, so a failing seed reproduces exactly.
//! After every step the checker holds the engines to docs/design.md §3 against the log:
//! - a `202` names a committed record of that vote, the voter's first in its partition;
//! - no voter is accepted twice; a `409 already_voted` has a committed vote behind it;
//! - every active shard's voters and tallies are the fold of the committed log below its
//!   `applied_end` (a second writer, or a replay that missed an open transaction that later
//!   committed, breaks this);
//! - every vote is answered at most once; once the faults stop and the fleet heals, every vote
//!   sent to a live core is answered and every partition has one active owner.
//!
//! `make test` runs a few thousand seeds (`shard/tests/sim.rs`); `cargo run --release -p
//! votes-shard --example vopr -- --seeds N` runs as many as one likes.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt::Write as _;

use votes_core::record::{CloseRecord, LogRecord};
use votes_core::{ElectionId, ErrorCode, OptionId, VoteIntent, VoteRecord, VoterId};

use crate::engine::{
    ClaimId, Command, CoreEngine, EngineConfig, Event, Generation, Micros, OpenFailure,
    PacingConfig, RevokeId, TxnId, TxnOutcome,
};
use crate::shard::{Answer, Batch, Shard, Ticket, Vote};

const MS: Micros = 1_000;
const ELECTIONS: [&str; 2] = ["e0", "e1"];
const OPTIONS: [&str; 3] = ["a", "b", "c"];

/// splitmix64: small, fast, and the same on every machine.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self::from_state(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    /// The generator at `state`, the seed not mixed as [`Rng::new`] mixes it: for a caller whose
    /// seeds were fixed before it drew from this generator and must keep their draws
    /// (`votes-perf`'s load mix, its peers' vote sequences and its chaos campaigns).
    pub fn from_state(state: u64) -> Self {
        Self(state)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        assert!(lo <= hi);
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// True with probability `p` (in ‱, parts per ten thousand).
    pub fn chance(&mut self, p: u64) -> bool {
        self.next_u64() % 10_000 < p
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[(self.next_u64() % items.len() as u64) as usize]
    }
}

/// The shape of one simulated run; [`SimConfig::from_seed`] draws it from the seed.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    pub nodes: usize,
    pub cores: usize,
    pub partitions: u32,
    pub voters: u64,
    pub votes: usize,
    /// Simulated time over which votes are sent and faults happen.
    pub span: Micros,
    pub max_txn_votes: usize,
    pub pacing: PacingConfig,
    /// Fault rates, in ‱ per opportunity.
    pub pause_rate: u64,
    pub crash_rate: u64,
    pub commit_fault_rate: u64,
    pub unknown_rate: u64,
    pub rebalance_rate: u64,
    /// When election `e0` closes, if it does.
    pub close_at: Option<Micros>,
}

impl SimConfig {
    fn with_close(mut self, r: &mut Rng) -> Self {
        if r.chance(7_000) {
            self.close_at = Some(r.range(0, self.span * 8 / 10));
        }
        self
    }

    pub fn from_seed(seed: u64) -> Self {
        let mut r = Rng::new(seed.wrapping_mul(31).wrapping_add(7));
        let partitions = r.range(1, 8) as u32;
        let windowed = r.chance(5_000);
        Self {
            seed,
            nodes: r.range(1, 3) as usize,
            cores: r.range(1, 2) as usize,
            partitions,
            voters: r.range(8, 200),
            votes: r.range(50, 400) as usize,
            span: r.range(500, 3_000) * MS,
            max_txn_votes: r.range(1, 16) as usize,
            pacing: if windowed {
                PacingConfig {
                    ack_target: r.range(1, 20) * MS,
                    min_window: 0,
                    max_window: r.range(0, 8) * MS,
                }
            } else {
                PacingConfig::IMMEDIATE
            },
            pause_rate: r.range(0, 300),
            crash_rate: r.range(0, 150),
            commit_fault_rate: r.range(0, 800),
            unknown_rate: r.range(0, 500),
            rebalance_rate: r.range(0, 200),
            close_at: None,
        }
        .with_close(&mut r)
    }
}

/// What one run did, for the summary line.
#[derive(Clone, Debug, Default)]
pub struct SimReport {
    pub steps: u64,
    pub sent: u64,
    pub accepted: u64,
    pub already_voted: u64,
    /// Answered `409 election_not_open` (the election had closed).
    pub not_open: u64,
    pub unavailable: u64,
    pub unanswered_crashed: u64,
    pub txns_committed: u64,
    pub pauses: u64,
    pub crashes: u64,
    pub rebalances: u64,
    pub fences: u64,
}

impl std::ops::AddAssign<&SimReport> for SimReport {
    /// Sums runs into a campaign's summary.
    fn add_assign(&mut self, run: &SimReport) {
        let SimReport {
            steps,
            sent,
            accepted,
            already_voted,
            not_open,
            unavailable,
            unanswered_crashed,
            txns_committed,
            pauses,
            crashes,
            rebalances,
            fences,
        } = run;
        self.steps += steps;
        self.sent += sent;
        self.accepted += accepted;
        self.already_voted += already_voted;
        self.not_open += not_open;
        self.unavailable += unavailable;
        self.unanswered_crashed += unanswered_crashed;
        self.txns_committed += txns_committed;
        self.pauses += pauses;
        self.crashes += crashes;
        self.rebalances += rebalances;
        self.fences += fences;
    }
}

// ---------------------------------------------------------------------------------------------
// The model of Kafka.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RecState {
    Open,
    Committed,
    Aborted,
}

#[derive(Clone, Debug)]
struct Rec {
    /// The member whose transactional id wrote it.
    writer: usize,
    election: u8,
    voter: u64,
    option: u8,
    state: RecState,
    /// A close marker of `election` (voter and option unused).
    marker: bool,
}

#[derive(Default)]
struct PartitionLog {
    recs: Vec<Rec>,
    /// Bumped whenever a record is appended or decided: the checker re-folds then.
    version: u64,
}

impl PartitionLog {
    /// The last stable offset: the first record of a transaction still open.
    fn lso(&self) -> u64 {
        self.recs
            .iter()
            .position(|r| r.state == RecState::Open)
            .unwrap_or(self.recs.len()) as u64
    }
}

struct OpenTxn {
    started: Micros,
    recs: Vec<(u32, u64)>,
}

/// One transactional id (one per member: node and core).
#[derive(Default)]
struct TxnIdState {
    epoch: u64,
    open: Option<OpenTxn>,
}

struct GroupMember {
    /// The incarnation (member id) the coordinator knows.
    incarnation: u64,
    assignment: BTreeSet<u32>,
}

enum RebalancePhase {
    Idle,
    /// Revocations sent; waiting for these members to confirm, then assign `target`.
    Revoking {
        waiting: BTreeSet<usize>,
        target: BTreeMap<usize, BTreeSet<u32>>,
        since: Micros,
    },
}

struct Group {
    generation: u64,
    members: BTreeMap<usize, GroupMember>,
    phase: RebalancePhase,
    again: bool,
}

impl Group {
    /// The member the coordinator has assigned partition `p` to, if any.
    fn owner(&self, p: u32) -> Option<usize> {
        self.members
            .iter()
            .find(|(_, gm)| gm.assignment.contains(&p))
            .map(|(m, _)| *m)
    }
}

// ---------------------------------------------------------------------------------------------
// The fleet.

#[derive(Debug)]
enum MemberEvent {
    Revoke {
        partitions: Vec<u32>,
        lost: bool,
    },
    Assign {
        partitions: Vec<u32>,
        generation: u64,
    },
}

/// One core: its engine, its group member's thread, its producer.
struct Core {
    engine: Option<CoreEngine>,
    /// Bumped at every crash: work scheduled for an earlier incarnation is dropped.
    incarnation: u64,
    producer_epoch: Option<u64>,
    /// The member thread: events in order, blocked while a revocation awaits its confirmation.
    inbox: VecDeque<MemberEvent>,
    blocked_on: Option<RevokeId>,
    /// What the member thread last heard the group assigns (the drivers' `still_owner`).
    view: BTreeSet<u32>,
    /// The coordinator expired this member while it could not hear: it learns on waking.
    expired: bool,
    next_revoke: RevokeId,
    /// Tickets this engine holds, with their vote.
    waiting: HashMap<Ticket, (u32, u64, u8, u8)>,
    /// Claims started (for status bookkeeping).
    claims: BTreeMap<u32, ClaimId>,
    /// The engine's next tick, when one is scheduled.
    tick_at: Option<Micros>,
}

struct Node {
    paused: bool,
    crashed: bool,
    /// Work for this node's cores while it is paused, replayed in order when it resumes.
    deferred: Vec<Op>,
}

#[derive(Debug)]
enum Op {
    Vote {
        voter: u64,
        election: u8,
        option: u8,
    },
    /// Deliver the next event of a member's inbox to its engine.
    MemberStep {
        m: usize,
        inc: u64,
    },
    RevokeConfirmed {
        m: usize,
        inc: u64,
        ack: RevokeId,
    },
    OpenStep {
        m: usize,
        inc: u64,
        attempt: u64,
    },
    CommitStep {
        m: usize,
        inc: u64,
        txn: TxnId,
        token: Generation,
        epoch: Option<u64>,
        stage: u8,
        batches: Vec<Batch>,
    },
    RecoverStep {
        m: usize,
        inc: u64,
        partition: u32,
        claim: ClaimId,
        shard: Box<Shard>,
        hwm: Option<u64>,
        started: Micros,
    },
    Tick {
        m: usize,
        inc: u64,
    },
    Fault,
    Resume {
        node: usize,
    },
    Restart {
        node: usize,
    },
    GroupCheck,
    /// The operator closes election `e0`: it reaches each member's elections view later.
    CloseIssued,
    /// Member `m`'s view of the elections hears of the close.
    Close {
        m: usize,
        inc: u64,
    },
}

impl Op {
    /// The member this work belongs to, when it belongs to one.
    fn member(&self) -> Option<(usize, u64)> {
        match self {
            Op::MemberStep { m, inc }
            | Op::RevokeConfirmed { m, inc, .. }
            | Op::OpenStep { m, inc, .. }
            | Op::CommitStep { m, inc, .. }
            | Op::RecoverStep { m, inc, .. }
            | Op::Close { m, inc }
            | Op::Tick { m, inc } => Some((*m, *inc)),
            _ => None,
        }
    }
}

/// What became of one vote a client sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    Pending,
    Accepted {
        partition: u32,
        offset: u64,
    },
    Rejected(ErrorCode),
    /// Its core crashed before answering: the client saw the connection drop.
    Dropped,
}

pub struct World {
    cfg: SimConfig,
    rng: Rng,
    now: Micros,
    seq: u64,
    queue: BTreeMap<(Micros, u64), Op>,
    logs: Vec<PartitionLog>,
    txn_ids: Vec<TxnIdState>,
    group: Group,
    nodes: Vec<Node>,
    cores: Vec<Core>,
    /// Group tokens handed to engines: token → (generation, incarnation).
    tokens: HashMap<u64, (u64, u64)>,
    next_token: u64,
    next_ticket: Ticket,
    tickets: HashMap<Ticket, Fate>,
    /// (election, voter) → the accepted ticket.
    accepted: HashMap<(u8, u64), Ticket>,
    faults_until: Micros,
    /// Election `e0` was closed by the operator.
    closed: bool,
    /// When each paused or killed node fell silent.
    silent: HashMap<usize, Micros>,
    /// Per partition, the log version and shard ends last checked.
    checked: Vec<(u64, Vec<u64>)>,
    report: SimReport,
    trace: VecDeque<String>,
    commands: Vec<Command>,
}

// Timing of the model (µs).
const SESSION_TIMEOUT: Micros = 600 * MS;
const TXN_TIMEOUT: Micros = 1_000 * MS;
const REBALANCE_TIMEOUT: Micros = 2_000 * MS;
/// How long a replay waits for an open transaction before fencing its writer.
const FENCE_GRACE: Micros = 50 * MS;
const TRACE: usize = 120;
/// Simulated time after the heal for every vote to be answered and every partition owned.
const SETTLE: Micros = 15_000 * MS;

impl World {
    pub fn new(cfg: SimConfig) -> Self {
        let members = cfg.nodes * cfg.cores;
        let mut w = Self {
            rng: Rng::new(cfg.seed),
            now: 0,
            seq: 0,
            queue: BTreeMap::new(),
            logs: (0..cfg.partitions)
                .map(|_| PartitionLog::default())
                .collect(),
            txn_ids: (0..members).map(|_| TxnIdState::default()).collect(),
            group: Group {
                generation: 0,
                members: BTreeMap::new(),
                phase: RebalancePhase::Idle,
                again: false,
            },
            nodes: (0..cfg.nodes)
                .map(|_| Node {
                    paused: false,
                    crashed: false,
                    deferred: Vec::new(),
                })
                .collect(),
            cores: (0..members).map(|_| empty_core(0)).collect(),
            tokens: HashMap::new(),
            next_token: 1,
            next_ticket: 0,
            tickets: HashMap::new(),
            accepted: HashMap::new(),
            faults_until: cfg.span * 7 / 10,
            closed: false,
            silent: HashMap::new(),
            checked: vec![(u64::MAX, Vec::new()); cfg.partitions as usize],
            report: SimReport::default(),
            trace: VecDeque::new(),
            commands: Vec::new(),
            cfg,
        };
        for m in 0..members {
            w.start_core(m);
            w.join(m);
        }
        w.trigger_rebalance();
        let (votes, span) = (w.cfg.votes, w.cfg.span);
        for _ in 0..votes {
            let at = w.rng.range(0, span);
            let voter = w.rng.range(0, w.cfg.voters - 1);
            let election = w.rng.range(0, 1) as u8;
            let option = w.rng.range(0, 2) as u8;
            w.schedule_at(
                at,
                Op::Vote {
                    voter,
                    election,
                    option,
                },
            );
        }
        let mut t = 0;
        while t < w.faults_until {
            t += w.rng.range(5, 60) * MS;
            w.schedule_at(t, Op::Fault);
        }
        if let Some(at) = w.cfg.close_at {
            w.schedule_at(at, Op::CloseIssued);
        }
        let mut t = 0;
        while t < span + SETTLE {
            t += 50 * MS;
            w.schedule_at(t, Op::GroupCheck);
        }
        w
    }

    fn member_of(&self, node: usize, core: usize) -> usize {
        node * self.cfg.cores + core
    }

    fn node_of(&self, m: usize) -> usize {
        m / self.cfg.cores
    }

    fn engine_config(&self, m: usize) -> EngineConfig {
        EngineConfig {
            node: format!("n{}", self.node_of(m)),
            core: (m % self.cfg.cores) as u16,
            max_txn_votes: self.cfg.max_txn_votes,
            max_queued: self.cfg.max_txn_votes * 4,
            pacing: self.cfg.pacing,
            retake_after: 300 * MS,
            backoff_min: 20 * MS,
            backoff_max: 200 * MS,
        }
    }

    fn start_core(&mut self, m: usize) {
        let inc = self.cores[m].incarnation + 1;
        self.cores[m] = empty_core(inc);
        self.cores[m].engine = Some(CoreEngine::new(self.engine_config(m)));
        // A starting node loads every election before it takes a vote.
        if self.closed {
            self.deliver_close(m);
        }
    }

    fn deliver_close(&mut self, m: usize) {
        let election = ElectionId::new(ELECTIONS[0]).expect("valid");
        let at_ms = self.now / MS;
        self.deliver(m, Event::Close { election, at_ms });
    }

    fn schedule_at(&mut self, at: Micros, op: Op) {
        self.seq += 1;
        self.queue.insert((at.max(self.now), self.seq), op);
    }

    fn schedule(&mut self, delay: Micros, op: Op) {
        self.schedule_at(self.now + delay, op);
    }

    fn note(&mut self, line: String) {
        if self.trace.len() == TRACE {
            self.trace.pop_front();
        }
        self.trace.push_back(format!("{:>9}µs {line}", self.now));
    }

    fn fail(&self, why: String) -> ! {
        let mut msg = format!(
            "simulation seed {} failed at {}µs: {why}\n  config: {:?}\n  last steps:\n",
            self.cfg.seed, self.now, self.cfg
        );
        for t in &self.trace {
            let _ = writeln!(msg, "    {t}");
        }
        panic!("{msg}");
    }

    /// Runs the whole schedule, heals the fleet, drains, and checks the end state.
    pub fn run(mut self) -> SimReport {
        let heal_at = self.cfg.span;
        let end = self.cfg.span + SETTLE;
        while let Some((&(at, seq), _)) = self.queue.first_key_value() {
            if at > end {
                break;
            }
            let op = self.queue.remove(&(at, seq)).expect("peeked");
            self.now = at;
            if at >= heal_at && self.faults_until > 0 {
                self.heal();
            }
            self.step(op);
            self.report.steps += 1;
            self.check_shards();
            self.check_tallies_noted();
        }
        self.check_end();
        self.report
    }

    fn heal(&mut self) {
        self.faults_until = 0;
        for n in 0..self.nodes.len() {
            if self.nodes[n].paused {
                self.resume(n);
            }
            if self.nodes[n].crashed {
                self.restart(n);
            }
        }
    }

    fn step(&mut self, op: Op) {
        if let Some((m, inc)) = op.member() {
            if self.cores[m].incarnation != inc || self.cores[m].engine.is_none() {
                return; // Work of a crashed incarnation.
            }
            let node = self.node_of(m);
            if self.nodes[node].paused {
                self.nodes[node].deferred.push(op);
                return;
            }
        }
        match op {
            Op::Vote {
                voter,
                election,
                option,
            } => self.client_vote(voter, election, option),
            Op::MemberStep { m, .. } => self.member_step(m),
            Op::RevokeConfirmed { m, ack, .. } => self.revoke_confirmed(m, ack),
            Op::OpenStep { m, attempt, .. } => self.open_step(m, attempt),
            Op::CommitStep {
                m,
                txn,
                token,
                epoch,
                stage,
                batches,
                ..
            } => self.commit_step(m, txn, token, epoch, stage, batches),
            Op::RecoverStep {
                m,
                partition,
                claim,
                shard,
                hwm,
                started,
                ..
            } => self.recover_step(m, partition, claim, *shard, hwm, started),
            Op::Tick { m, .. } => {
                self.cores[m].tick_at = None;
                self.deliver(m, Event::Tick)
            }
            Op::Fault => self.fault(),
            Op::Resume { node } => {
                if self.nodes[node].paused {
                    self.resume(node)
                }
            }
            Op::Restart { node } => {
                if self.nodes[node].crashed {
                    self.restart(node)
                }
            }
            Op::GroupCheck => self.group_check(),
            Op::CloseIssued => {
                self.closed = true;
                self.note("election e0 closed by the operator".into());
                for m in 0..self.cores.len() {
                    let (inc, d) = (self.cores[m].incarnation, self.rng.range(0, 300) * MS);
                    self.schedule(d, Op::Close { m, inc });
                }
            }
            Op::Close { m, .. } => self.deliver_close(m),
        }
    }

    // --- clients --------------------------------------------------------------------------

    fn client_vote(&mut self, voter: u64, election: u8, option: u8) {
        let partition = (voter % u64::from(self.cfg.partitions)) as u32;
        // Mostly to the owner the coordinator names (the fleet map), sometimes anywhere (a
        // stale map): a core that does not own the partition answers 503.
        let m = match self.group.owner(partition) {
            Some(m) if !self.rng.chance(1_000) => m,
            _ => self.rng.range(0, self.cores.len() as u64 - 1) as usize,
        };
        let node = self.node_of(m);
        if self.nodes[node].crashed {
            return; // Connection refused: nothing was sent.
        }
        if self.nodes[node].paused {
            // The request sits in the socket until the process runs again.
            self.nodes[node].deferred.push(Op::Vote {
                voter,
                election,
                option,
            });
            return;
        }
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.report.sent += 1;
        self.tickets.insert(ticket, Fate::Pending);
        self.cores[m]
            .waiting
            .insert(ticket, (partition, voter, election, option));
        let vote = Vote {
            ticket,
            intent: VoteIntent {
                election: ElectionId::new(ELECTIONS[election as usize]).expect("valid"),
                voter: VoterId(voter),
                option: OptionId::new(OPTIONS[option as usize]).expect("valid"),
                received_at_ms: self.now / MS,
                nonce: [0; 16],
            },
        };
        self.deliver(m, Event::Vote { partition, vote });
    }

    // --- engines --------------------------------------------------------------------------

    /// Feeds an event to a member's engine and carries out its commands.
    fn deliver(&mut self, m: usize, event: Event) {
        let Some(engine) = self.cores[m].engine.as_mut() else {
            return;
        };
        let mut out = std::mem::take(&mut self.commands);
        engine.handle(self.now, event, &mut out);
        let deadline = engine.next_deadline();
        let inc = self.cores[m].incarnation;
        for c in out.drain(..) {
            self.carry_out(m, inc, c);
        }
        self.commands = out;
        if let Some(at) = deadline
            && self.cores[m].tick_at.is_none_or(|t| at < t)
        {
            self.cores[m].tick_at = Some(at);
            self.schedule_at(at, Op::Tick { m, inc });
        }
    }

    fn carry_out(&mut self, m: usize, inc: u64, c: Command) {
        if !matches!(c, Command::Answer { .. }) {
            self.note(format!("m{m} → {}", command_name(&c)));
        }
        match c {
            Command::OpenProducer { attempt } => {
                let d = self.rng.range(1, 10) * MS;
                self.schedule(d, Op::OpenStep { m, inc, attempt });
            }
            Command::Claimed { partition, claim } => {
                self.cores[m].claims.insert(partition, claim);
            }
            Command::Recover {
                partition,
                claim,
                shard,
            } => {
                let d = self.rng.range(1, 5) * MS;
                let started = self.now;
                self.schedule(
                    d,
                    Op::RecoverStep {
                        m,
                        inc,
                        partition,
                        claim,
                        shard: Box::new(shard),
                        hwm: None,
                        started,
                    },
                );
            }
            Command::Commit {
                txn,
                generation,
                batches,
            } => {
                let epoch = self.cores[m].producer_epoch;
                let d = self.delay();
                self.schedule(
                    d,
                    Op::CommitStep {
                        m,
                        inc,
                        txn,
                        token: generation,
                        epoch,
                        stage: 0,
                        batches,
                    },
                );
            }
            Command::Answer { partition, answer } => self.answered(m, partition, answer),
            Command::Status { .. } => {}
            Command::RevokeDone { ack } => {
                let d = self.rng.range(0, 3) * MS;
                self.schedule(d, Op::RevokeConfirmed { m, inc, ack });
            }
        }
    }

    /// A commit step's latency: mostly a few ms, sometimes far longer (a slow broker).
    fn delay(&mut self) -> Micros {
        if self.rng.chance(300) {
            self.rng.range(50, 700) * MS
        } else {
            self.rng.range(1, 6) * MS
        }
    }

    fn faulty(&mut self, rate: u64) -> bool {
        self.faults_until > 0 && self.now < self.faults_until && self.rng.chance(rate)
    }

    fn open_step(&mut self, m: usize, attempt: u64) {
        if self.faulty(self.cfg.commit_fault_rate) {
            self.deliver(
                m,
                Event::ProducerOpened {
                    attempt,
                    result: Err(OpenFailure::Transient),
                },
            );
            return;
        }
        // init_transactions: a new epoch fences every earlier producer of this id and aborts
        // what it left open.
        self.bump_epoch(m);
        self.cores[m].producer_epoch = Some(self.txn_ids[m].epoch);
        self.note(format!(
            "m{m} producer opened at epoch {}",
            self.txn_ids[m].epoch
        ));
        self.deliver(
            m,
            Event::ProducerOpened {
                attempt,
                result: Ok(()),
            },
        );
    }

    fn bump_epoch(&mut self, writer: usize) {
        let id = &mut self.txn_ids[writer];
        id.epoch += 1;
        if let Some(open) = id.open.take() {
            for (p, o) in open.recs {
                let log = &mut self.logs[p as usize];
                log.recs[o as usize].state = RecState::Aborted;
                log.version += 1;
            }
        }
    }

    /// Long because it is one arm per stage of the simulated transaction (produce, offsets,
    /// commit), each with the faults a schedule may inject there, side by side as the real
    /// committer meets them.
    fn commit_step(
        &mut self,
        m: usize,
        txn: TxnId,
        token: Generation,
        epoch: Option<u64>,
        stage: u8,
        batches: Vec<Batch>,
    ) {
        let done = |w: &mut World, outcome: TxnOutcome| {
            w.note(format!("m{m} txn {txn} → {outcome:?}"));
            w.deliver(m, Event::TxnDone { txn, outcome });
        };
        let current = self.txn_ids[m].epoch;
        if epoch != Some(current) {
            self.report.fences += 1;
            return done(self, TxnOutcome::Fenced);
        }
        let epoch = current;
        match stage {
            0 => {
                // Produce: every record lands in its partition, in an open transaction.
                if self.faulty(self.cfg.commit_fault_rate) {
                    return done(self, TxnOutcome::Aborted);
                }
                let mut recs = Vec::new();
                for b in &batches {
                    let log = &mut self.logs[b.partition as usize];
                    for i in 0..b.len() {
                        let (_, value) = b.record(i);
                        let r = LogRecord::decode(value).expect("shards write valid records");
                        recs.push((b.partition, log.recs.len() as u64));
                        log.recs.push(match r {
                            LogRecord::Vote(r) => Rec {
                                writer: m,
                                election: index_of(&ELECTIONS, r.election.as_str()),
                                voter: r.voter.0,
                                option: index_of(&OPTIONS, r.option.as_str()),
                                state: RecState::Open,
                                marker: false,
                            },
                            LogRecord::Close(c) => Rec {
                                writer: m,
                                election: index_of(&ELECTIONS, c.election.as_str()),
                                voter: u64::MAX,
                                option: 0,
                                state: RecState::Open,
                                marker: true,
                            },
                        });
                    }
                    log.version += 1;
                }
                self.txn_ids[m].open = Some(OpenTxn {
                    started: self.now,
                    recs,
                });
                self.note(format!("m{m} txn {txn} produced"));
            }
            1 => {
                // The offsets carry the member's generation; the coordinator refuses a stale one
                // and the transaction must abort.
                let (generation, incarnation) = self.tokens[&token.0];
                let current_member = self
                    .group
                    .members
                    .get(&m)
                    .is_some_and(|gm| gm.incarnation == incarnation);
                if !current_member || generation != self.group.generation {
                    self.abort_open(m);
                    return done(self, TxnOutcome::Aborted);
                }
            }
            _ => {
                if self.faulty(self.cfg.unknown_rate) {
                    // The commit's answer is lost: it may have committed, or stays open until
                    // the next init or the transaction timeout aborts it.
                    if self.rng.chance(5_000) {
                        self.commit_open(m);
                    }
                    return done(self, TxnOutcome::Unknown);
                }
                let open = self.commit_open(m);
                let mut offsets = Vec::new();
                for b in &batches {
                    let o: Vec<u64> = open
                        .iter()
                        .filter(|(p, _)| *p == b.partition)
                        .map(|(_, o)| *o)
                        .collect();
                    assert_eq!(o.len(), b.len());
                    offsets.push(o);
                }
                self.report.txns_committed += 1;
                return done(self, TxnOutcome::Committed { offsets });
            }
        }
        let d = self.delay();
        self.schedule(
            d,
            Op::CommitStep {
                m,
                inc: self.cores[m].incarnation,
                txn,
                token,
                epoch: Some(epoch),
                stage: stage + 1,
                batches,
            },
        );
    }

    fn abort_open(&mut self, m: usize) {
        if let Some(open) = self.txn_ids[m].open.take() {
            for (p, o) in open.recs {
                self.logs[p as usize].recs[o as usize].state = RecState::Aborted;
                self.logs[p as usize].version += 1;
            }
        }
    }

    fn commit_open(&mut self, m: usize) -> Vec<(u32, u64)> {
        let open = self.txn_ids[m].open.take().expect("a transaction is open");
        for &(p, o) in &open.recs {
            let r = &mut self.logs[p as usize].recs[o as usize];
            assert_eq!(r.state, RecState::Open);
            r.state = RecState::Committed;
            self.logs[p as usize].version += 1;
        }
        open.recs
    }

    fn recover_step(
        &mut self,
        m: usize,
        partition: u32,
        claim: ClaimId,
        mut shard: Shard,
        hwm: Option<u64>,
        started: Micros,
    ) {
        if self.faulty(self.cfg.commit_fault_rate / 2) {
            return self.deliver(
                m,
                Event::Recovered {
                    partition,
                    claim,
                    shard: None,
                },
            );
        }
        let log = &self.logs[partition as usize];
        let hwm = hwm.unwrap_or(log.recs.len() as u64);
        let lso = log.lso();
        if lso >= hwm {
            for o in shard.applied_end()..lso {
                let r = &log.recs[o as usize];
                if r.state == RecState::Committed {
                    if r.marker {
                        shard.apply_committed_close(o, &marker_of(r));
                    } else {
                        shard.apply_committed(o, &record_of(r));
                    }
                }
            }
            shard.finish_recovery(lso);
            self.note(format!("m{m} p{partition} recovered to {lso}"));
            return self.deliver(
                m,
                Event::Recovered {
                    partition,
                    claim,
                    shard: Some(shard),
                },
            );
        }
        if self.now.saturating_sub(started) >= FENCE_GRACE {
            let writer = log.recs[lso as usize].writer;
            if writer != m && self.cores[m].view.contains(&partition) {
                self.note(format!("m{m} p{partition} fences m{writer} stuck at {lso}"));
                self.report.fences += 1;
                self.bump_epoch(writer);
            }
        }
        let d = self.rng.range(1, 5) * MS;
        self.schedule(
            d,
            Op::RecoverStep {
                m,
                inc: self.cores[m].incarnation,
                partition,
                claim,
                shard: Box::new(shard),
                hwm: Some(hwm),
                started,
            },
        );
    }

    fn answered(&mut self, m: usize, partition: u32, answer: Answer) {
        let ticket = answer.ticket();
        let Some((p, voter, election, option)) = self.cores[m].waiting.remove(&ticket) else {
            self.fail(format!(
                "m{m} answered ticket {ticket} it does not hold (twice?)"
            ));
        };
        if p != partition {
            self.fail(format!("ticket {ticket} of p{p} answered for p{partition}"));
        }
        if self.tickets.get(&ticket) != Some(&Fate::Pending) {
            self.fail(format!("ticket {ticket} answered twice"));
        }
        let fate = match &answer {
            Answer::Accepted { vote, offset } => {
                let log = &self.logs[p as usize];
                let Some(r) = log.recs.get(*offset as usize) else {
                    self.fail(format!(
                        "202 for ticket {ticket} at p{p}@{offset}: no such record"
                    ));
                };
                if r.state != RecState::Committed
                    || r.voter != voter
                    || r.election != election
                    || r.option != option
                    || vote.intent.voter.0 != voter
                {
                    self.fail(format!(
                        "202 for ticket {ticket} (voter {voter}) at p{p}@{offset}, whose record is {r:?}"
                    ));
                }
                if let Some(first) = first_committed(log, election, voter)
                    && first != *offset
                {
                    self.fail(format!(
                        "202 for voter {voter} at p{p}@{offset}, but the first committed vote is @{first}"
                    ));
                }
                if let Some(frontier) = first_marker(log, election)
                    && frontier < *offset
                {
                    self.fail(format!(
                        "202 for voter {voter} of e{election} at p{p}@{offset}, past the frontier @{frontier}"
                    ));
                }
                if let Some(other) = self.accepted.insert((election, voter), ticket) {
                    self.fail(format!(
                        "voter {voter} of e{election} accepted twice: tickets {other} and {ticket}"
                    ));
                }
                self.report.accepted += 1;
                Fate::Accepted {
                    partition: p,
                    offset: *offset,
                }
            }
            Answer::Rejected { code, .. } => {
                if *code == ErrorCode::ElectionNotOpen && !(self.closed && election == 0) {
                    self.fail(format!(
                        "409 election_not_open for e{election} that the operator did not close"
                    ));
                }
                if *code == ErrorCode::AlreadyVoted {
                    if first_committed(&self.logs[p as usize], election, voter).is_none() {
                        self.fail(format!(
                            "409 already_voted for voter {voter} of e{election} with no committed vote"
                        ));
                    }
                    self.report.already_voted += 1;
                } else if *code == ErrorCode::ElectionNotOpen {
                    self.report.not_open += 1;
                } else {
                    self.report.unavailable += 1;
                }
                Fate::Rejected(*code)
            }
        };
        self.tickets.insert(ticket, fate);
    }

    // --- the group --------------------------------------------------------------------------

    fn join(&mut self, m: usize) {
        let inc = self.cores[m].incarnation;
        self.group.members.insert(
            m,
            GroupMember {
                incarnation: inc,
                assignment: BTreeSet::new(),
            },
        );
    }

    fn send(&mut self, m: usize, event: MemberEvent) {
        self.cores[m].inbox.push_back(event);
        let (inc, d) = (self.cores[m].incarnation, self.rng.range(0, 10) * MS);
        self.schedule(d, Op::MemberStep { m, inc });
    }

    fn trigger_rebalance(&mut self) {
        if !matches!(self.group.phase, RebalancePhase::Idle) {
            self.group.again = true;
            return;
        }
        self.report.rebalances += 1;
        self.group.generation += 1;
        let generation = self.group.generation;
        let members: Vec<usize> = self.group.members.keys().copied().collect();
        let mut target: BTreeMap<usize, BTreeSet<u32>> =
            members.iter().map(|m| (*m, BTreeSet::new())).collect();
        if !members.is_empty() {
            // Sticky-ish: a partition stays with its owner unless the draw moves it.
            let shift = self.rng.range(0, members.len() as u64 - 1) as usize;
            for p in 0..self.cfg.partitions {
                let to = match self.group.owner(p) {
                    Some(o) if !self.rng.chance(3_000) => o,
                    _ => members[(p as usize + shift) % members.len()],
                };
                target.get_mut(&to).expect("a member").insert(p);
            }
        }
        let mut waiting = BTreeSet::new();
        for m in members {
            let gm = self.group.members.get_mut(&m).expect("listed");
            let revoked: Vec<u32> = gm.assignment.difference(&target[&m]).copied().collect();
            for p in &revoked {
                gm.assignment.remove(p);
            }
            if !revoked.is_empty() {
                waiting.insert(m);
                self.send(
                    m,
                    MemberEvent::Revoke {
                        partitions: revoked,
                        lost: false,
                    },
                );
            }
            self.send(
                m,
                MemberEvent::Assign {
                    partitions: Vec::new(),
                    generation,
                },
            );
        }
        self.note(format!(
            "rebalance: generation {generation}, target {target:?}"
        ));
        self.group.phase = RebalancePhase::Revoking {
            waiting,
            target,
            since: self.now,
        };
        self.maybe_assign();
    }

    fn maybe_assign(&mut self) {
        let RebalancePhase::Revoking { waiting, .. } = &self.group.phase else {
            return;
        };
        if !waiting.is_empty() {
            return;
        }
        let RebalancePhase::Revoking { target, .. } =
            std::mem::replace(&mut self.group.phase, RebalancePhase::Idle)
        else {
            unreachable!()
        };
        self.group.generation += 1;
        let generation = self.group.generation;
        let held: BTreeSet<u32> = self
            .group
            .members
            .values()
            .flat_map(|gm| gm.assignment.iter().copied())
            .collect();
        let members: Vec<usize> = self.group.members.keys().copied().collect();
        for m in members {
            let Some(want) = target.get(&m) else {
                continue; // Joined during the revocations: the next rebalance counts it.
            };
            let gained: Vec<u32> = want.iter().filter(|p| !held.contains(p)).copied().collect();
            let gm = self.group.members.get_mut(&m).expect("listed");
            gm.assignment.extend(gained.iter().copied());
            self.send(
                m,
                MemberEvent::Assign {
                    partitions: gained,
                    generation,
                },
            );
        }
        self.note(format!("rebalance: generation {generation} assigned"));
        if std::mem::take(&mut self.group.again) {
            self.trigger_rebalance();
        }
    }

    /// The coordinator's timers: members of a paused or dead node expire after the session
    /// timeout; a revocation that takes longer than the rebalance timeout expels its member.
    fn group_check(&mut self) {
        // The transaction coordinator aborts what stayed open too long, fencing its producer.
        for m in 0..self.txn_ids.len() {
            if self.txn_ids[m]
                .open
                .as_ref()
                .is_some_and(|t| t.started + TXN_TIMEOUT <= self.now)
            {
                self.note(format!("txn of m{m} timed out"));
                self.bump_epoch(m);
            }
        }
        let mut expired = Vec::new();
        for &m in self.group.members.keys() {
            let node = self.node_of(m);
            let silent = self.nodes[node].paused || self.nodes[node].crashed;
            let gone = silent && self.silent_since(node) + SESSION_TIMEOUT <= self.now;
            let stuck = match &self.group.phase {
                RebalancePhase::Revoking { waiting, since, .. } => {
                    waiting.contains(&m) && *since + REBALANCE_TIMEOUT <= self.now
                }
                RebalancePhase::Idle => false,
            };
            if gone || stuck {
                expired.push(m);
            }
        }
        if expired.is_empty() {
            return;
        }
        for m in expired {
            self.note(format!("group: member m{m} expired"));
            self.group.members.remove(&m);
            self.cores[m].expired = true;
            if let RebalancePhase::Revoking { waiting, .. } = &mut self.group.phase {
                waiting.remove(&m);
            }
        }
        self.maybe_assign();
        self.trigger_rebalance();
    }

    fn silent_since(&self, node: usize) -> Micros {
        self.silent.get(&node).copied().unwrap_or(0)
    }

    /// The member thread of `m`: delivers its next event, unless it waits for a confirmation.
    fn member_step(&mut self, m: usize) {
        let core = &mut self.cores[m];
        if core.blocked_on.is_some() {
            return; // The revocation's confirmation will step it again.
        }
        if core.expired {
            // It finds out its session is gone: everything it held is lost, then it rejoins.
            core.expired = false;
            core.inbox.clear();
            let lost: Vec<u32> = core.view.iter().copied().collect();
            core.inbox.push_back(MemberEvent::Revoke {
                partitions: lost,
                lost: true,
            });
        }
        let Some(event) = self.cores[m].inbox.pop_front() else {
            return;
        };
        match event {
            MemberEvent::Revoke { partitions, lost } => {
                let core = &mut self.cores[m];
                for p in &partitions {
                    core.view.remove(p);
                }
                let ack = core.next_revoke;
                core.next_revoke += 1;
                core.blocked_on = Some(ack);
                self.deliver(
                    m,
                    Event::Revoked {
                        partitions,
                        lost,
                        ack,
                    },
                );
            }
            MemberEvent::Assign {
                partitions,
                generation,
            } => {
                self.cores[m].view.extend(partitions.iter().copied());
                let token = self.next_token;
                self.next_token += 1;
                self.tokens
                    .insert(token, (generation, self.cores[m].incarnation));
                self.deliver(
                    m,
                    Event::Assigned {
                        partitions,
                        generation: Generation(token),
                    },
                );
            }
        }
        if !self.cores[m].inbox.is_empty() && self.cores[m].blocked_on.is_none() {
            let inc = self.cores[m].incarnation;
            let d = self.rng.range(0, 3) * MS;
            self.schedule(d, Op::MemberStep { m, inc });
        }
    }

    fn revoke_confirmed(&mut self, m: usize, ack: RevokeId) {
        if self.cores[m].blocked_on != Some(ack) {
            self.fail(format!("m{m} confirmed revocation {ack} it was not asked"));
        }
        self.cores[m].blocked_on = None;
        if !self.group.members.contains_key(&m) {
            // Expelled: once it gave up everything as lost (the next member step, when it has
            // not yet), it rejoins as a new member.
            if !self.cores[m].expired {
                self.join(m);
                self.trigger_rebalance();
            }
        } else if let RebalancePhase::Revoking { waiting, .. } = &mut self.group.phase {
            waiting.remove(&m);
            self.maybe_assign();
        }
        let inc = self.cores[m].incarnation;
        self.schedule(0, Op::MemberStep { m, inc });
    }

    // --- faults -----------------------------------------------------------------------------

    fn fault(&mut self) {
        let node = self.rng.range(0, self.nodes.len() as u64 - 1) as usize;
        let (paused, crashed) = (self.nodes[node].paused, self.nodes[node].crashed);
        if !paused && !crashed && self.rng.chance(self.cfg.pause_rate * 10) {
            // A pause shorter or longer than the session timeout (a zombie when longer).
            let d = self.rng.range(10, 1_500) * MS;
            self.note(format!("node {node} paused for {d}µs"));
            self.report.pauses += 1;
            self.nodes[node].paused = true;
            self.silent.insert(node, self.now);
            self.schedule(d, Op::Resume { node });
        } else if !paused && !crashed && self.rng.chance(self.cfg.crash_rate * 10) {
            self.note(format!("node {node} killed"));
            self.report.crashes += 1;
            self.crash(node);
            let d = self.rng.range(10, 1_500) * MS;
            self.schedule(d, Op::Restart { node });
        } else if self.rng.chance(self.cfg.rebalance_rate * 10) {
            self.trigger_rebalance();
        }
    }

    fn resume(&mut self, node: usize) {
        self.note(format!("node {node} resumed"));
        self.nodes[node].paused = false;
        let deferred = std::mem::take(&mut self.nodes[node].deferred);
        for op in deferred {
            self.schedule(0, op);
        }
        for core in 0..self.cfg.cores {
            let m = self.member_of(node, core);
            let inc = self.cores[m].incarnation;
            self.schedule(0, Op::MemberStep { m, inc });
        }
    }

    fn crash(&mut self, node: usize) {
        self.nodes[node].crashed = true;
        self.nodes[node].deferred.clear();
        self.silent.insert(node, self.now);
        for core in 0..self.cfg.cores {
            let m = self.member_of(node, core);
            let c = &mut self.cores[m];
            c.engine = None;
            c.incarnation += 1;
            for (ticket, _) in c.waiting.drain() {
                self.tickets.insert(ticket, Fate::Dropped);
                self.report.unanswered_crashed += 1;
            }
        }
    }

    fn restart(&mut self, node: usize) {
        self.note(format!("node {node} restarted"));
        self.nodes[node].crashed = false;
        for core in 0..self.cfg.cores {
            let m = self.member_of(node, core);
            self.start_core(m);
            match self.group.members.get_mut(&m) {
                // Static membership: the same instance id within the session gets its
                // partitions back without a rebalance (the old member id is fenced).
                Some(gm) => {
                    gm.incarnation = self.cores[m].incarnation;
                    // Its old incarnation will never confirm a revocation.
                    if let RebalancePhase::Revoking { waiting, .. } = &mut self.group.phase {
                        waiting.remove(&m);
                    }
                    let partitions: Vec<u32> = gm.assignment.iter().copied().collect();
                    let generation = self.group.generation;
                    self.send(
                        m,
                        MemberEvent::Assign {
                            partitions,
                            generation,
                        },
                    );
                }
                None => {
                    self.join(m);
                    self.trigger_rebalance();
                }
            }
        }
        self.maybe_assign();
    }

    // --- the checker ------------------------------------------------------------------------

    /// Every active shard's voters and tallies are the fold of the committed log below its
    /// `applied_end` (checked when the log or a shard's end moved).
    /// Plays a driver's read-model fan-out: every partition whose tallies were marked dirty
    /// must come with the engine's note that tallies moved, or the fan-out would sleep
    /// through the change.
    fn check_tallies_noted(&mut self) {
        let mut unnoted = None;
        for (m, core) in self.cores.iter_mut().enumerate() {
            let Some(e) = core.engine.as_mut() else {
                continue;
            };
            let noted = e.take_tallies_moved();
            let active: Vec<u32> = e.active_shards().map(|(p, _)| p).collect();
            for p in active {
                if e.take_dirty(p) && !noted {
                    unnoted.get_or_insert((m, p));
                }
            }
        }
        if let Some((m, p)) = unnoted {
            self.fail(format!(
                "m{m}'s p{p} tallies moved without the engine's note"
            ));
        }
    }

    fn check_shards(&mut self) {
        for p in 0..self.cfg.partitions {
            let mut ends: Vec<(usize, u64)> = Vec::new();
            for (m, core) in self.cores.iter().enumerate() {
                if let Some(e) = &core.engine
                    && let Some((_, shard)) = e.active_shards().find(|(q, _)| *q == p)
                {
                    ends.push((m, shard.applied_end()));
                }
            }
            let log = &self.logs[p as usize];
            let key = (
                log.version,
                ends.iter().map(|(_, e)| *e).collect::<Vec<_>>(),
            );
            if self.checked[p as usize] == key {
                continue;
            }
            self.checked[p as usize] = key;
            for (m, end) in ends {
                let fold = fold(log, end);
                let engine = self.cores[m].engine.as_ref().expect("listed above");
                let (_, shard) = engine
                    .active_shards()
                    .find(|(q, _)| *q == p)
                    .expect("listed above");
                if let Err(why) = same_state(&fold, shard) {
                    self.fail(format!(
                        "m{m}'s active shard of p{p} (applied_end {end}) is not the committed log: {why}"
                    ));
                }
            }
        }
    }

    fn check_end(&mut self) {
        for (ticket, fate) in &self.tickets {
            if *fate == Fate::Pending {
                self.fail(format!(
                    "vote {ticket} was never answered after the fleet healed"
                ));
            }
            if let Fate::Accepted { partition, offset } = fate {
                let r = &self.logs[*partition as usize].recs[*offset as usize];
                if r.state != RecState::Committed
                    || first_committed(&self.logs[*partition as usize], r.election, r.voter)
                        != Some(*offset)
                {
                    self.fail(format!(
                        "the 202 of vote {ticket} at p{partition}@{offset} is no longer the voter's first committed vote"
                    ));
                }
            }
        }
        if !matches!(self.group.phase, RebalancePhase::Idle) {
            self.fail("the group never settled".into());
        }
        for p in 0..self.cfg.partitions {
            let owners: Vec<usize> = self
                .cores
                .iter()
                .enumerate()
                .filter(|(_, c)| {
                    c.engine
                        .as_ref()
                        .is_some_and(|e| e.active_shards().any(|(q, _)| q == p))
                })
                .map(|(m, _)| m)
                .collect();
            let assigned: Vec<usize> = self
                .group
                .members
                .iter()
                .filter(|(_, gm)| gm.assignment.contains(&p))
                .map(|(m, _)| *m)
                .collect();
            if owners.len() != 1 || owners != assigned {
                self.fail(format!(
                    "after healing, p{p} is active on {owners:?} but assigned to {assigned:?}"
                ));
            }
            if self.logs[p as usize].lso() != self.logs[p as usize].recs.len() as u64 {
                self.fail(format!(
                    "after healing, p{p} still holds an open transaction"
                ));
            }
            if self.closed {
                let log = &self.logs[p as usize];
                let Some(frontier) = first_marker(log, 0) else {
                    self.fail(format!("e0 closed, but p{p} has no committed close marker"));
                };
                if let Some(late) =
                    log.recs.iter().skip(frontier as usize + 1).position(|r| {
                        r.state == RecState::Committed && !r.marker && r.election == 0
                    })
                {
                    self.fail(format!(
                        "p{p}: a vote of e0 committed @{} after the frontier @{frontier}",
                        frontier as usize + 1 + late
                    ));
                }
            }
        }
    }
}

/// Runs one seed's schedule and checks it; panics with the seed and the last steps on a
/// violation.
pub fn run(seed: u64) -> SimReport {
    World::new(SimConfig::from_seed(seed)).run()
}

fn command_name(c: &Command) -> String {
    match c {
        Command::OpenProducer { attempt } => format!("open producer (attempt {attempt})"),
        Command::Claimed { partition, claim } => format!("claim p{partition} #{claim}"),
        Command::Recover {
            partition, claim, ..
        } => format!("recover p{partition} #{claim}"),
        Command::Commit { txn, batches, .. } => format!(
            "commit txn {txn}: {:?}",
            batches
                .iter()
                .map(|b| (b.partition, b.len()))
                .collect::<Vec<_>>()
        ),
        Command::Answer { partition, answer } => format!("answer p{partition} {answer:?}"),
        Command::Status {
            partition, state, ..
        } => format!("p{partition} {state:?}"),
        Command::RevokeDone { ack } => format!("revocation {ack} done"),
    }
}

fn empty_core(incarnation: u64) -> Core {
    Core {
        engine: None,
        incarnation,
        producer_epoch: None,
        inbox: VecDeque::new(),
        blocked_on: None,
        view: BTreeSet::new(),
        expired: false,
        next_revoke: 0,
        waiting: HashMap::new(),
        claims: BTreeMap::new(),
        tick_at: None,
    }
}

fn index_of(names: &[&str], name: &str) -> u8 {
    names
        .iter()
        .position(|n| *n == name)
        .expect("a simulated name") as u8
}

fn record_of(r: &Rec) -> VoteRecord {
    VoteRecord {
        election: ElectionId::new(ELECTIONS[r.election as usize]).expect("valid"),
        voter: VoterId(r.voter),
        option: OptionId::new(OPTIONS[r.option as usize]).expect("valid"),
        received_at_ms: 0,
        node: format!("m{}", r.writer),
        core: 0,
        nonce: [0; 16],
    }
}

fn marker_of(r: &Rec) -> CloseRecord {
    CloseRecord {
        election: ElectionId::new(ELECTIONS[r.election as usize]).expect("valid"),
        closed_at_ms: 0,
        node: format!("m{}", r.writer),
        core: 0,
    }
}

fn first_committed(log: &PartitionLog, election: u8, voter: u64) -> Option<u64> {
    log.recs
        .iter()
        .position(|r| {
            r.state == RecState::Committed
                && !r.marker
                && r.election == election
                && r.voter == voter
        })
        .map(|o| o as u64)
}

/// The partition's frontier for `election`: its first committed close marker.
fn first_marker(log: &PartitionLog, election: u8) -> Option<u64> {
    log.recs
        .iter()
        .position(|r| r.state == RecState::Committed && r.marker && r.election == election)
        .map(|o| o as u64)
}

/// Per election: the voters and the count per option of the committed log below `end`.
type Fold = BTreeMap<u8, (BTreeSet<u64>, BTreeMap<u8, u64>)>;

fn fold(log: &PartitionLog, end: u64) -> Fold {
    let mut f = Fold::new();
    for r in log.recs.iter().take(end as usize) {
        if r.state != RecState::Committed || r.marker {
            continue;
        }
        let (voters, counts) = f.entry(r.election).or_default();
        if voters.insert(r.voter) {
            *counts.entry(r.option).or_default() += 1;
        }
    }
    f
}

fn same_state(fold: &Fold, shard: &Shard) -> Result<(), String> {
    for (e, name) in ELECTIONS.iter().enumerate() {
        let election = ElectionId::new(*name).expect("valid");
        let (voters, counts) = fold.get(&(e as u8)).cloned().unwrap_or_default();
        if shard.voters(&election) != voters.len() as u64 {
            return Err(format!(
                "{name}: {} voters in the shard, {} in the log",
                shard.voters(&election),
                voters.len()
            ));
        }
        for v in &voters {
            if !shard.has_voted(&election, VoterId(*v)) {
                return Err(format!("{name}: voter {v} committed but not in the shard"));
            }
        }
        let shard_counts: BTreeMap<u8, u64> = shard
            .tallies(&election)
            .map(|t| {
                t.iter()
                    .filter(|(_, n)| **n > 0)
                    .map(|(o, n)| (index_of(&OPTIONS, o.as_str()), *n))
                    .collect()
            })
            .unwrap_or_default();
        if shard_counts != counts {
            return Err(format!(
                "{name}: tallies {shard_counts:?} in the shard, {counts:?} in the log"
            ));
        }
    }
    Ok(())
}
