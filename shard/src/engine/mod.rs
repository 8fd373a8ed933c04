//! The commit engine of one core, sans-IO (docs/design.md §3): which partitions the core owns, how each
//! of their shards recovers, when a transaction starts, and what every outcome means for the
//! votes that wait.
//!
//! Like quinn-proto under quinn, it performs no I/O. The core's driver feeds it [`Event`]s
//! (group membership, votes, the producer's and the replays' results, commit outcomes, the
//! passing of time) and carries out the [`Command`]s it returns: open the core's transactional
//! producer, replay a partition, commit a transaction, answer a vote, confirm a hand-off. The
//! clock is injected (`now`, in µs of a monotonic clock), so the deterministic simulation
//! (`crate::sim`) drives it through millions of schedules without Kafka.
//!
//! One transaction per core spans every partition the core owns: the broker's work per
//! transaction dominates the cost of a vote, so the count of transactions is what to cut. The
//! core's producer has its own `transactional.id` (node and core); a paused or cut-off former
//! owner cannot commit into a partition it lost because every transaction carries the core's
//! group generation (KIP-447: the coordinator refuses offsets of a stale generation and the
//! transaction aborts), and a new owner resolves every transaction still open in the partition
//! before it replays (the driver's recovery waits for the last stable offset, fencing a writer
//! that stays stuck there).
//!
//! Invariants asserted here (the simulation checks their consequences against the log):
//! - at most one transaction is in flight; it names each partition at most once, and only
//!   partitions whose shard is active under the claim that took the batch;
//! - a vote is answered `Accepted` only from a `Committed` outcome (the shard's rule), and every
//!   ticket exactly once (the shard's rule; the driver's map of waiting replies asserts it);
//! - a partition is replayed only once the core's producer is open (its previous incarnation
//!   fenced) and never while a transaction holding it is in flight;
//! - a revocation is confirmed only when no transaction holding one of its partitions is in
//!   flight and their queued votes were answered (no vote is lost on hand-off);
//! - after `Fenced` no shard accepts until the producer is reopened and each partition the group
//!   still assigns here is recovered anew.

pub mod pacing;

use std::collections::{BTreeMap, BTreeSet};

use votes_core::{ElectionId, ErrorCode};

use crate::shard::{
    Answer, Batch, CommitOutcome, Shard, ShardConfig, ShardState, Submitted, Ticket, Vote,
};
pub use pacing::{Pacing, PacingConfig};

/// A reading of the driver's monotonic clock, in microseconds.
pub type Micros = u64;
/// One claim of a partition by this core: a new one each time the core (re)takes it.
pub type ClaimId = u64;
pub type TxnId = u64;
/// The driver's name for one revocation it must confirm.
pub type RevokeId = u64;

/// The group generation a core's membership last synced at, as an opaque token: the driver
/// maps it to the consumer's group metadata that a transaction's offsets carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Generation(pub u64);

#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Node name written into each record.
    pub node: String,
    pub core: u16,
    /// Largest transaction, in votes over all its partitions.
    pub max_txn_votes: usize,
    /// Bound on votes queued per partition; past it new votes get `503`.
    pub max_queued: usize,
    pub pacing: PacingConfig,
    /// How long a fenced core waits before it takes back what the group still assigns it: the
    /// writer that fenced it hears of its own lost assignment within a heartbeat or two.
    pub retake_after: Micros,
    /// Backoff of a failed producer open or replay, doubling up to the maximum.
    pub backoff_min: Micros,
    pub backoff_max: Micros,
}

impl EngineConfig {
    fn validate(&self) {
        assert!(self.max_txn_votes > 0, "a transaction carries votes");
        assert!(
            self.max_queued >= self.max_txn_votes,
            "a partition queues at least one transaction"
        );
        assert!(self.backoff_min > 0 && self.backoff_min <= self.backoff_max);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenFailure {
    /// Another producer with the core's transactional id won (a second process with this node
    /// id and core): wait as long as a fenced core does.
    Fenced,
    Transient,
}

/// How a transaction ended, as the committer saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOutcome {
    /// Committed; the offsets of each batch's records, batch by batch, in order.
    Committed { offsets: Vec<Vec<u64>> },
    /// Certainly not committed (aborted, refused by the coordinator, or never sent).
    Aborted,
    /// The core's producer was fenced: another writer holds its transactional id.
    Fenced,
    /// The outcome is not known: the transaction may or may not be in the log.
    Unknown,
}

#[derive(Debug)]
pub enum Event {
    /// The group assigns these partitions to the core, at `generation` (also sent, with no
    /// partitions, for every generation the member syncs at).
    Assigned {
        partitions: Vec<u32>,
        generation: Generation,
    },
    /// The group takes these partitions away; confirm with [`Command::RevokeDone`]. `lost`: the
    /// membership expired and a new owner may already write.
    Revoked {
        partitions: Vec<u32>,
        lost: bool,
        ack: RevokeId,
    },
    /// A vote routed to `partition` of this core.
    Vote {
        partition: u32,
        vote: Vote,
    },
    ProducerOpened {
        attempt: u64,
        result: Result<(), OpenFailure>,
    },
    /// The replay of [`Command::Recover`] ended: the shard recovered, or `None` when it failed.
    Recovered {
        partition: u32,
        claim: ClaimId,
        shard: Option<Shard>,
    },
    TxnDone {
        txn: TxnId,
        outcome: TxnOutcome,
    },
    /// The election closed (docs/design.md §7): every shard of the core stops taking its votes and
    /// writes a close marker; shards claimed later close it too. `at_ms` (Unix ms) goes in
    /// the markers.
    Close {
        election: ElectionId,
        at_ms: u64,
    },
    /// Time passed: the driver calls this at [`CoreEngine::next_deadline`].
    Tick,
}

#[derive(Debug)]
pub enum Command {
    /// Retire the core's producer if it has one, create a new one and `init_transactions` (this
    /// fences every earlier producer with the core's transactional id and aborts what it left
    /// open); answer with [`Event::ProducerOpened`] carrying `attempt`.
    OpenProducer { attempt: u64 },
    /// The core claims `partition` anew (status epochs, snapshot bookkeeping).
    Claimed { partition: u32, claim: ClaimId },
    /// Wait until every transaction open in the partition is decided (fencing a writer that
    /// stays stuck, unless the group moved the partition away), replay the committed log into
    /// `shard` from its `applied_end` (or from a snapshot when it holds nothing yet), and answer
    /// with [`Event::Recovered`].
    Recover {
        partition: u32,
        claim: ClaimId,
        shard: Shard,
    },
    /// Write `batches` in one transaction whose offsets carry `generation`; answer with
    /// [`Event::TxnDone`].
    Commit {
        txn: TxnId,
        generation: Generation,
        batches: Vec<Batch>,
    },
    /// The answer of one vote of `partition`.
    Answer { partition: u32, answer: Answer },
    /// A partition's state changed (for `/readyz` and `/metrics`); `Released`: no longer here.
    Status {
        partition: u32,
        claim: ClaimId,
        state: ShardState,
    },
    /// Every partition of the revocation `ack` was handed off.
    RevokeDone { ack: RevokeId },
}

/// Counters for `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub txns_started: u64,
    pub txns_committed: u64,
    pub txns_aborted: u64,
    pub txns_unknown: u64,
    pub txns_fenced: u64,
    pub producer_opens: u64,
    pub recoveries: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Claimed; the shard waits at home for the producer to open before it replays.
    WaitProducer,
    /// The shard is out, replaying.
    Replaying,
    /// A replay failed; a fresh shard waits at home until the time to try again.
    RetryAt(Micros),
    Active,
    /// Stopped by a fence until the core takes its partitions back.
    Fenced,
}

struct Slot {
    claim: ClaimId,
    phase: Phase,
    /// At home except while replaying.
    shard: Option<Shard>,
    /// When the oldest vote still queued here was queued.
    queued_since: Option<Micros>,
    /// The group took the partition away: hand off once no transaction holds it.
    leaving: bool,
    /// The group assigned it again while it was leaving or committing: claim it anew then.
    reclaim: bool,
    /// Tallies changed since the read model last got them.
    dirty: bool,
    backoff: Micros,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Producer {
    /// Never opened: the core owned nothing yet.
    Closed,
    Opening {
        attempt: u64,
    },
    /// A failed open; try again at `until`.
    Backoff {
        until: Micros,
    },
    Ready,
    /// A transaction is in flight.
    Busy,
    /// Fenced: take back what the group still assigns at `retake_at`.
    Fenced {
        retake_at: Micros,
    },
}

struct InFlight {
    id: TxnId,
    started: Micros,
    /// (partition, claim, batch seq), in the order of the command's batches.
    parts: Vec<(u32, ClaimId, u64)>,
}

struct PendingRevoke {
    ack: RevokeId,
    partitions: Vec<u32>,
}

/// The commit engine of one core.
pub struct CoreEngine {
    cfg: EngineConfig,
    slots: BTreeMap<u32, Slot>,
    /// What the group assigns this core, as its events said, in order.
    assigned: BTreeSet<u32>,
    generation: Option<Generation>,
    producer: Producer,
    producer_backoff: Micros,
    txn: Option<InFlight>,
    revokes: Vec<PendingRevoke>,
    pacing: Pacing,
    /// Votes queued over every slot.
    queued: usize,
    /// Close markers waiting for a transaction over every slot.
    markers: usize,
    /// Elections closed, with when: every shard of the core closes them, now and later.
    closed: BTreeMap<ElectionId, u64>,
    /// When the oldest of them was queued.
    oldest: Option<Micros>,
    next_txn: TxnId,
    next_claim: ClaimId,
    next_attempt: u64,
    /// Where the next transaction starts taking batches, so that no partition starves when a
    /// transaction fills up.
    round_robin: usize,
    stats: EngineStats,
    /// A slot was marked dirty since [`Self::take_tallies_moved`] last looked.
    tallies_moved: bool,
}

impl CoreEngine {
    pub fn new(cfg: EngineConfig) -> Self {
        cfg.validate();
        Self {
            pacing: Pacing::new(cfg.pacing),
            producer_backoff: cfg.backoff_min,
            cfg,
            slots: BTreeMap::new(),
            assigned: BTreeSet::new(),
            generation: None,
            producer: Producer::Closed,
            txn: None,
            revokes: Vec::new(),
            queued: 0,
            markers: 0,
            closed: BTreeMap::new(),
            oldest: None,
            next_txn: 0,
            next_claim: 0,
            next_attempt: 0,
            round_robin: 0,
            stats: EngineStats::default(),
            tallies_moved: false,
        }
    }

    pub fn stats(&self) -> EngineStats {
        self.stats
    }

    pub fn pacing(&self) -> &Pacing {
        &self.pacing
    }

    /// Votes queued for the next transaction, over every partition.
    pub fn queued(&self) -> usize {
        self.queued
    }

    pub fn txn_in_flight(&self) -> bool {
        self.txn.is_some()
    }

    /// The partitions the group assigns this core, as far as the engine has heard.
    pub fn assigned(&self) -> &BTreeSet<u32> {
        &self.assigned
    }

    /// The active shards (what this core vouches for now: a recovering shard's tallies are
    /// partial, a fenced one's belong to the new owner).
    pub fn active_shards(&self) -> impl Iterator<Item = (u32, &Shard)> {
        self.slots
            .iter()
            .filter_map(|(p, s)| match (&s.phase, &s.shard) {
                (Phase::Active, Some(shard)) => Some((*p, shard)),
                _ => None,
            })
    }

    /// Whether a partition's tallies changed since the last call; clears the mark.
    pub fn take_dirty(&mut self, partition: u32) -> bool {
        self.slots
            .get_mut(&partition)
            .is_some_and(|s| std::mem::take(&mut s.dirty))
    }

    /// Marks every partition's tallies as not yet in the read model.
    pub fn mark_all_dirty(&mut self) {
        for s in self.slots.values_mut() {
            s.dirty = true;
        }
        self.tallies_moved = true;
    }

    /// Whether any partition's tallies were marked dirty since the last call (a driver wakes
    /// its read-model fan-out on it); clears the mark.
    pub fn take_tallies_moved(&mut self) -> bool {
        std::mem::take(&mut self.tallies_moved)
    }

    /// The claim under which the core holds `partition`, if it does.
    pub fn claim_of(&self, partition: u32) -> Option<ClaimId> {
        self.slots.get(&partition).map(|s| s.claim)
    }

    /// When the engine next needs a [`Event::Tick`], if ever.
    pub fn next_deadline(&self) -> Option<Micros> {
        let mut next: Option<Micros> = None;
        let mut at = |t: Micros| next = Some(next.map_or(t, |n| n.min(t)));
        match self.producer {
            Producer::Backoff { until } => at(until),
            Producer::Fenced { retake_at } => at(retake_at),
            Producer::Ready if self.queued + self.markers > 0 => {
                if let Some(oldest) = self.oldest {
                    at(oldest.saturating_add(self.pacing.window()));
                }
            }
            _ => {}
        }
        for s in self.slots.values() {
            if let Phase::RetryAt(t) = s.phase {
                at(t);
            }
        }
        next
    }

    /// Feeds one event; the commands it causes are appended to `out`.
    pub fn handle(&mut self, now: Micros, event: Event, out: &mut Vec<Command>) {
        match event {
            // The hot path: a vote changes nothing but its shard's queue, so only the start of
            // a transaction can follow.
            Event::Vote { partition, vote } => {
                self.on_vote(now, partition, vote, out);
                self.maybe_commit(now, out);
                return;
            }
            Event::Assigned {
                partitions,
                generation,
            } => self.on_assigned(now, partitions, generation, out),
            Event::Revoked {
                partitions, ack, ..
            } => self.on_revoked(now, partitions, ack, out),
            Event::ProducerOpened { attempt, result } => {
                self.on_producer_opened(now, attempt, result)
            }
            Event::Recovered {
                partition,
                claim,
                shard,
            } => self.on_recovered(now, partition, claim, shard, out),
            Event::TxnDone { txn, outcome } => self.on_txn_done(now, txn, outcome, out),
            Event::Close { election, at_ms } => self.on_close(now, election, at_ms, out),
            Event::Tick => {}
        }
        self.pump(now, out);
        self.check();
    }

    fn on_vote(&mut self, now: Micros, partition: u32, vote: Vote, out: &mut Vec<Command>) {
        let ticket = vote.ticket;
        let Some(slot) = self
            .slots
            .get_mut(&partition)
            .filter(|s| s.phase == Phase::Active && !s.leaving && !s.reclaim)
        else {
            out.push(unavailable(partition, ticket));
            return;
        };
        let shard = slot.shard.as_mut().expect("an active shard is at home");
        // The shard answers 503 itself past `max_queued` (backpressure).
        match shard.submit(vote) {
            Submitted::Answered(answer) => out.push(Command::Answer { partition, answer }),
            Submitted::Queued => {
                slot.queued_since.get_or_insert(now);
                self.oldest.get_or_insert(now);
                self.queued += 1;
            }
            Submitted::Waiting => {}
        }
    }

    fn on_assigned(
        &mut self,
        now: Micros,
        partitions: Vec<u32>,
        generation: Generation,
        out: &mut Vec<Command>,
    ) {
        // Revocations are confirmed before the member syncs again, so a transaction built from
        // now on holds no partition the group took away: it may carry the new generation.
        assert!(
            self.generation.is_none_or(|g| g <= generation),
            "generations only grow"
        );
        self.generation = Some(generation);
        for p in partitions {
            self.assigned.insert(p);
            match self.slots.get_mut(&p) {
                None => self.claim(p, out),
                Some(slot) => {
                    // Assigned again without a revocation between (a lost membership rejoined):
                    // whatever this core knew of the partition may be stale; take it anew.
                    slot.reclaim = true;
                    slot.leaving = false;
                }
            }
        }
        self.settle_leaving(now, out);
        if self.producer == Producer::Closed && !self.slots.is_empty() {
            self.open_producer(out);
        }
    }

    fn on_revoked(
        &mut self,
        now: Micros,
        partitions: Vec<u32>,
        ack: RevokeId,
        out: &mut Vec<Command>,
    ) {
        for p in &partitions {
            self.assigned.remove(p);
            if let Some(slot) = self.slots.get_mut(p) {
                slot.leaving = true;
                slot.reclaim = false;
            }
        }
        self.revokes.push(PendingRevoke { ack, partitions });
        self.settle_leaving(now, out);
    }

    fn on_producer_opened(&mut self, now: Micros, attempt: u64, result: Result<(), OpenFailure>) {
        if self.producer != (Producer::Opening { attempt }) {
            return; // A superseded attempt.
        }
        match result {
            Ok(()) => {
                self.producer = Producer::Ready;
                self.producer_backoff = self.cfg.backoff_min;
            }
            Err(OpenFailure::Fenced) => {
                self.producer = Producer::Backoff {
                    until: now + self.cfg.retake_after,
                };
            }
            Err(OpenFailure::Transient) => {
                self.producer = Producer::Backoff {
                    until: now + self.producer_backoff,
                };
                self.producer_backoff = (self.producer_backoff * 2).min(self.cfg.backoff_max);
            }
        }
    }

    fn on_recovered(
        &mut self,
        now: Micros,
        partition: u32,
        claim: ClaimId,
        shard: Option<Shard>,
        out: &mut Vec<Command>,
    ) {
        let Some(slot) = self
            .slots
            .get_mut(&partition)
            .filter(|s| s.claim == claim && s.phase == Phase::Replaying)
        else {
            return; // The claim ended while it replayed: its state is the next owner's to build.
        };
        self.stats.recoveries += 1;
        let Some(shard) = shard else {
            // The half-replayed shard went with the failed call: start over from the beginning,
            // which rebuilds the same state (docs/design.md §3.3).
            slot.shard = Some(Shard::new(shard_config(&self.cfg, partition)));
            slot.phase = Phase::RetryAt(now + slot.backoff);
            slot.backoff = (slot.backoff * 2).min(self.cfg.backoff_max);
            return;
        };
        assert_eq!(shard.partition(), partition);
        assert_eq!(shard.state(), ShardState::Active, "a replay ends active");
        assert!(
            shard.queued() == 0 && !shard.in_flight(),
            "a replayed shard holds nothing pending"
        );
        slot.backoff = self.cfg.backoff_min;
        let mut shard = shard;
        // The elections this core closed meanwhile, or before it claimed the partition.
        for (election, at_ms) in &self.closed {
            let answers = shard.close(election, *at_ms);
            debug_assert!(answers.is_empty(), "a replayed shard holds no vote");
        }
        slot.shard = Some(shard);
        if matches!(self.producer, Producer::Fenced { .. }) {
            // Fenced while it replayed: it waits for the retake like the others.
            slot.phase = Phase::Fenced;
            let answers = slot.shard.as_mut().expect("at home").fence();
            debug_assert!(answers.is_empty());
            out.push(Command::Status {
                partition,
                claim,
                state: ShardState::Fenced,
            });
            return;
        }
        slot.phase = Phase::Active;
        slot.dirty = true;
        self.tallies_moved = true;
        out.push(Command::Status {
            partition,
            claim,
            state: ShardState::Active,
        });
        self.recount_queued(now);
    }

    fn on_close(&mut self, now: Micros, election: ElectionId, at_ms: u64, out: &mut Vec<Command>) {
        if self.closed.contains_key(&election) {
            return;
        }
        for (&p, slot) in &mut self.slots {
            // A replaying shard closes when it comes back (above).
            if let Some(shard) = slot.shard.as_mut() {
                let answers = shard.close(&election, at_ms);
                answer_all(p, answers, out);
            }
        }
        self.closed.insert(election, at_ms);
        self.recount_queued(now);
    }

    fn on_txn_done(&mut self, now: Micros, id: TxnId, outcome: TxnOutcome, out: &mut Vec<Command>) {
        let txn = self
            .txn
            .take()
            .expect("an outcome only for the transaction in flight");
        assert_eq!(txn.id, id, "outcomes arrive for the transaction in flight");
        assert_eq!(self.producer, Producer::Busy);
        self.producer = Producer::Ready;
        self.pacing.record(now.saturating_sub(txn.started));
        match outcome {
            TxnOutcome::Committed { offsets } => {
                self.stats.txns_committed += 1;
                assert_eq!(offsets.len(), txn.parts.len(), "offsets for every batch");
                for (&(p, _, seq), offsets) in txn.parts.iter().zip(offsets) {
                    self.tallies_moved = true;
                    let slot = self.slot_in_txn(p, &txn);
                    slot.dirty = true;
                    let answers =
                        shard_home(slot).on_outcome(seq, CommitOutcome::Committed { offsets });
                    answer_all(p, answers, out);
                }
            }
            TxnOutcome::Aborted => {
                self.stats.txns_aborted += 1;
                self.answer_parts(&txn, &CommitOutcome::Aborted, out);
            }
            TxnOutcome::Unknown => {
                // The transaction may be in the log: its partitions replay past it before they
                // accept again, after a new producer's init resolved it (commit or abort).
                self.stats.txns_unknown += 1;
                for &(p, claim, seq) in &txn.parts {
                    let slot = self.slot_in_txn(p, &txn);
                    let answers = shard_home(slot).on_outcome(seq, CommitOutcome::Unknown);
                    slot.phase = Phase::WaitProducer;
                    slot.queued_since = None;
                    answer_all(p, answers, out);
                    out.push(Command::Status {
                        partition: p,
                        claim,
                        state: ShardState::Recovering,
                    });
                }
                self.open_producer(out);
            }
            TxnOutcome::Fenced => {
                self.stats.txns_fenced += 1;
                self.answer_parts(&txn, &CommitOutcome::Fenced, out);
                self.fence_all(now, out);
            }
        }
        self.recount_queued(now);
        self.settle_leaving(now, out);
    }

    /// Every shard of the transaction hears `outcome`, one that asks nothing more of its slot
    /// than answering the batch's votes (an abort, a fence).
    fn answer_parts(&mut self, txn: &InFlight, outcome: &CommitOutcome, out: &mut Vec<Command>) {
        for &(p, _, seq) in &txn.parts {
            let answers = shard_home(self.slot_in_txn(p, txn)).on_outcome(seq, outcome.clone());
            answer_all(p, answers, out);
        }
    }

    fn slot_in_txn(&mut self, p: u32, txn: &InFlight) -> &mut Slot {
        let slot = self
            .slots
            .get_mut(&p)
            .expect("a partition in flight keeps its slot");
        debug_assert!(txn.parts.iter().any(|&(q, c, _)| q == p && c == slot.claim));
        slot
    }

    /// The core's producer was fenced: every shard stops (its queued votes answered 503) until
    /// the retake, when the partitions the group still assigns here are claimed anew.
    fn fence_all(&mut self, now: Micros, out: &mut Vec<Command>) {
        self.producer = Producer::Fenced {
            retake_at: now + self.cfg.retake_after,
        };
        for (&p, slot) in &mut self.slots {
            if let Some(shard) = slot.shard.as_mut()
                && slot.phase != Phase::Fenced
            {
                let answers = shard.fence();
                answer_all(p, answers, out);
            }
            if slot.phase != Phase::Replaying {
                slot.phase = Phase::Fenced;
            }
            slot.queued_since = None;
            out.push(Command::Status {
                partition: p,
                claim: slot.claim,
                state: ShardState::Fenced,
            });
        }
        self.queued = 0;
        self.oldest = None;
    }

    /// Starts a new claim of `partition`: a fresh shard that replays once the producer is open.
    fn claim(&mut self, partition: u32, out: &mut Vec<Command>) {
        let claim = self.next_claim;
        self.next_claim += 1;
        self.slots.insert(
            partition,
            Slot {
                claim,
                phase: Phase::WaitProducer,
                shard: Some(Shard::new(shard_config(&self.cfg, partition))),
                queued_since: None,
                leaving: false,
                reclaim: false,
                dirty: false,
                backoff: self.cfg.backoff_min,
            },
        );
        out.push(Command::Claimed { partition, claim });
        out.push(Command::Status {
            partition,
            claim,
            state: ShardState::Recovering,
        });
    }

    fn open_producer(&mut self, out: &mut Vec<Command>) {
        assert!(
            self.txn.is_none(),
            "never reopen under a transaction in flight"
        );
        let attempt = self.next_attempt;
        self.next_attempt += 1;
        self.producer = Producer::Opening { attempt };
        self.stats.producer_opens += 1;
        out.push(Command::OpenProducer { attempt });
    }

    fn in_txn(&self, partition: u32) -> bool {
        self.txn
            .as_ref()
            .is_some_and(|t| t.parts.iter().any(|&(p, _, _)| p == partition))
    }

    /// Hands off every leaving partition that no transaction holds, claims anew those assigned
    /// again, and confirms the revocations that are complete.
    fn settle_leaving(&mut self, now: Micros, out: &mut Vec<Command>) {
        let ready: Vec<u32> = self
            .slots
            .iter()
            .filter(|(p, s)| (s.leaving || s.reclaim) && !self.in_txn(**p))
            .map(|(p, _)| *p)
            .collect();
        for p in ready {
            let mut slot = self.slots.remove(&p).expect("listed above");
            if let Some(shard) = slot.shard.as_mut()
                && shard.state() != ShardState::Fenced
                && shard.state() != ShardState::Released
            {
                let answers = shard.hand_off();
                answer_all(p, answers, out);
            }
            out.push(Command::Status {
                partition: p,
                claim: slot.claim,
                state: ShardState::Released,
            });
            if slot.reclaim {
                self.claim(p, out);
            }
        }
        self.recount_queued(now);
        let slots = &self.slots;
        self.revokes.retain(|r| {
            let done = r
                .partitions
                .iter()
                .all(|p| slots.get(p).is_none_or(|s| !s.leaving && !s.reclaim));
            if done {
                out.push(Command::RevokeDone { ack: r.ack });
            }
            !done
        });
    }

    /// Whatever time or a change made possible: reopen the producer, retake after a fence,
    /// retry or start replays, start the next transaction.
    fn pump(&mut self, now: Micros, out: &mut Vec<Command>) {
        match self.producer {
            Producer::Backoff { until } if now >= until => self.open_producer(out),
            Producer::Fenced { retake_at } if now >= retake_at => self.retake(now, out),
            _ => {}
        }
        for slot in self.slots.values_mut() {
            if let Phase::RetryAt(t) = slot.phase
                && now >= t
            {
                slot.phase = Phase::WaitProducer;
            }
        }
        if matches!(self.producer, Producer::Ready | Producer::Busy) {
            for (&p, slot) in &mut self.slots {
                if slot.phase == Phase::WaitProducer && !slot.leaving && !slot.reclaim {
                    let shard = slot.shard.take().expect("a waiting shard is at home");
                    slot.phase = Phase::Replaying;
                    out.push(Command::Recover {
                        partition: p,
                        claim: slot.claim,
                        shard,
                    });
                }
            }
        }
        self.maybe_commit(now, out);
    }

    /// Starts a transaction if the producer is free and the pacing says so.
    fn maybe_commit(&mut self, now: Micros, out: &mut Vec<Command>) {
        if self.producer == Producer::Ready && self.queued + self.markers > 0 {
            let full = self.queued >= self.cfg.max_txn_votes;
            let oldest = self.oldest.expect("queued votes have a time");
            if self.pacing.decide(now, oldest, full).is_ok() {
                self.start_txn(now, out);
            }
        }
    }

    /// After a fence: the partitions the group still assigns here are claimed anew (fresh
    /// shards: what this core knew may be stale), the others released.
    fn retake(&mut self, now: Micros, out: &mut Vec<Command>) {
        let held: Vec<u32> = self.slots.keys().copied().collect();
        for p in held {
            let slot = self.slots.remove(&p).expect("listed above");
            out.push(Command::Status {
                partition: p,
                claim: slot.claim,
                state: ShardState::Released,
            });
            if self.assigned.contains(&p) && !slot.leaving {
                self.claim(p, out);
            }
        }
        self.queued = 0;
        self.oldest = None;
        self.open_producer(out);
        self.settle_leaving(now, out);
    }

    fn oldest_queued(&self) -> Option<Micros> {
        self.slots.values().filter_map(|s| s.queued_since).min()
    }

    /// The active shard of `partition`, if the core has one.
    pub fn active_shard(&self, partition: u32) -> Option<&Shard> {
        self.slots
            .get(&partition)
            .filter(|s| s.phase == Phase::Active)
            .and_then(|s| s.shard.as_ref())
    }

    fn start_txn(&mut self, now: Micros, out: &mut Vec<Command>) {
        assert!(self.txn.is_none() && self.producer == Producer::Ready);
        let generation = self
            .generation
            .expect("a core that owns partitions has synced");
        let candidates: Vec<u32> = self
            .slots
            .iter()
            .filter(|(_, s)| {
                s.phase == Phase::Active
                    && !s.leaving
                    && !s.reclaim
                    && s.shard.as_ref().is_some_and(Shard::can_take_batch)
            })
            .map(|(p, _)| *p)
            .collect();
        if candidates.is_empty() {
            return;
        }
        let start = self.round_robin % candidates.len();
        self.round_robin = self.round_robin.wrapping_add(1);
        let mut room = self.cfg.max_txn_votes;
        let mut batches = Vec::new();
        let mut parts = Vec::new();
        for &p in candidates[start..].iter().chain(&candidates[..start]) {
            if room == 0 {
                break;
            }
            let slot = self.slots.get_mut(&p).expect("a candidate");
            let shard = shard_home(slot);
            let Some(batch) = shard.take_batch_of(room) else {
                continue;
            };
            room -= batch.votes();
            self.queued -= batch.votes();
            self.markers -= batch.markers;
            // Votes left behind were queued before now: waiting from now on understates their
            // wait, but only a full transaction leaves any, and then the next starts at once.
            slot.queued_since = (shard.queued() + shard.markers_due() > 0).then_some(now);
            parts.push((p, slot.claim, batch.seq));
            batches.push(batch);
        }
        assert!(!batches.is_empty(), "a candidate had votes");
        self.oldest = self.oldest_queued();
        let id = self.next_txn;
        self.next_txn += 1;
        self.txn = Some(InFlight {
            id,
            started: now,
            parts,
        });
        self.producer = Producer::Busy;
        self.stats.txns_started += 1;
        out.push(Command::Commit {
            txn: id,
            generation,
            batches,
        });
    }

    fn recount_queued(&mut self, now: Micros) {
        self.queued = 0;
        self.markers = 0;
        for s in self.slots.values_mut() {
            let (votes, markers) = match (&s.phase, &s.shard) {
                (Phase::Active, Some(shard)) => (shard.queued(), shard.markers_due()),
                _ => (0, 0),
            };
            if votes + markers == 0 {
                s.queued_since = None;
            } else {
                s.queued_since.get_or_insert(now);
            }
            self.queued += votes;
            self.markers += markers;
        }
        self.oldest = self.oldest_queued();
    }

    /// Invariants that hold between events.
    fn check(&self) {
        if let Some(txn) = &self.txn {
            assert_eq!(
                self.producer,
                Producer::Busy,
                "a transaction holds the producer"
            );
            let mut seen = BTreeSet::new();
            for &(p, claim, _) in &txn.parts {
                assert!(seen.insert(p), "a transaction names a partition once");
                let slot = self
                    .slots
                    .get(&p)
                    .expect("a partition in flight keeps its slot");
                assert_eq!(
                    slot.claim, claim,
                    "the claim that took the batch still holds"
                );
                assert!(
                    slot.shard.as_ref().is_some_and(Shard::in_flight),
                    "its shard waits for the outcome"
                );
            }
        } else {
            assert_ne!(
                self.producer,
                Producer::Busy,
                "busy only with a transaction"
            );
        }
        if cfg!(debug_assertions) {
            for (p, s) in &self.slots {
                match s.phase {
                    Phase::Replaying => assert!(s.shard.is_none(), "a replaying shard is out"),
                    _ => assert!(s.shard.is_some(), "partition {p}: the shard is at home"),
                }
                if s.phase == Phase::Active {
                    assert_eq!(s.shard.as_ref().map(Shard::state), Some(ShardState::Active));
                }
                if s.phase == Phase::Replaying {
                    assert!(
                        !matches!(self.producer, Producer::Closed),
                        "replays start once the producer opened"
                    );
                }
            }
            let over_active = |count: fn(&Shard) -> usize| -> usize {
                self.slots
                    .values()
                    .filter(|s| s.phase == Phase::Active)
                    .filter_map(|s| s.shard.as_ref())
                    .map(count)
                    .sum()
            };
            let queued = over_active(Shard::queued);
            assert_eq!(queued, self.queued, "the queued count is exact");
            let markers = over_active(Shard::markers_due);
            assert_eq!(markers, self.markers, "the markers count is exact");
            assert_eq!(
                self.oldest.is_some(),
                queued + markers > 0,
                "queued votes and markers have a time"
            );
        }
    }
}

fn shard_config(cfg: &EngineConfig, partition: u32) -> ShardConfig {
    ShardConfig {
        partition,
        node: cfg.node.clone(),
        core: cfg.core,
        max_batch: cfg.max_txn_votes,
        max_queued: cfg.max_queued,
    }
}

fn shard_home(slot: &mut Slot) -> &mut Shard {
    slot.shard.as_mut().expect("the shard is at home")
}

fn unavailable(partition: u32, ticket: Ticket) -> Command {
    Command::Answer {
        partition,
        answer: Answer::Rejected {
            ticket,
            code: ErrorCode::Unavailable,
        },
    }
}

fn answer_all(partition: u32, answers: Vec<Answer>, out: &mut Vec<Command>) {
    out.extend(
        answers
            .into_iter()
            .map(|answer| Command::Answer { partition, answer }),
    );
}

#[cfg(test)]
mod tests;
