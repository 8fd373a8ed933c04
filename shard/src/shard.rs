//! The shard of one partition of `votes`, sans-IO (docs/design.md §3).
//!
//! A shard decides, for every vote routed to its partition, whether it is new, a duplicate, or
//! cannot be decided now; it assembles batches for the commit driver and turns each commit
//! outcome into answers. It performs no I/O: the driver feeds it votes, commit outcomes and the
//! records it replays, and carries out what it returns, so every invariant below is checked by
//! property tests without Kafka.
//!
//! Invariants:
//! - The committed voter sets and tallies are a pure function of the committed records applied
//!   through [`Shard::apply_committed`] and [`Shard::on_outcome`] (docs/design.md §3.3); the first
//!   record of a voter in an election counts, a later one never does.
//! - A vote is `Accepted` only when the transaction that holds it committed (docs/design.md §3.2).
//! - At most one batch is in flight; a voter has at most one pending vote per election, and a
//!   second request of the same voter waits for the first one's outcome.
//! - Every ticket gets exactly one answer.
//! - After `Fenced` the shard never accepts again; after `Unknown` it accepts again only after
//!   replaying the log past the uncertain transaction.
//! - Closing an election (docs/design.md §7, the close frontier) is a barrier: from [`Shard::close`] on
//!   no vote of it is taken (`409 election_not_open`), its votes still queued are answered so,
//!   and the next batch carries a close marker after every vote of it that can still commit;
//!   readers count the election's votes up to the first committed marker, so a vote this shard
//!   acknowledged is always before it. Which elections closed is not in snapshots: the engine
//!   closes them again from the elections it knows (a node loads every election before it takes
//!   a vote, and an owner writes a marker only after the close was published), and a second
//!   marker is harmless (the first counts).

use std::collections::{BTreeMap, hash_map::Entry};

use roaring::RoaringTreemap;
use votes_core::hash::{StrMap, U64Map};
use votes_core::record::{CLOSE_RECORD_KEY, CloseRecord, NODE_MAX, RECORD_MAX_LEN, encode_close};
use votes_core::snapshot::{ElectionState, ShardSnapshot};
use votes_core::{ElectionId, ErrorCode, OptionId, VoteIntent, VoteRecord, VoterId, voter_key};

/// Repeats of one voter's pending vote that wait for its outcome.
pub const MAX_WAITERS_PER_VOTER: usize = 8;

/// Identifies one request waiting for its answer; chosen by the driver, unique per shard.
pub type Ticket = u64;

#[derive(Clone, Debug)]
pub struct ShardConfig {
    pub partition: u32,
    /// Node name written into each record.
    pub node: String,
    /// Reactor core that owns this shard, written into each record.
    pub core: u16,
    /// Largest batch one transaction carries.
    pub max_batch: usize,
    /// Bound on votes waiting for a batch; past it new votes get `503` (backpressure).
    pub max_queued: usize,
}

impl ShardConfig {
    fn validate(&self) {
        assert!(self.max_batch > 0, "a batch carries at least one vote");
        assert!(
            self.max_queued >= self.max_batch,
            "the queue holds at least one batch"
        );
        assert!(
            self.node.len() <= NODE_MAX,
            "node name validated at start-up"
        );
    }
}

/// A vote that passed the edge checks (auth, election open, option known) and was routed here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vote {
    pub ticket: Ticket,
    pub intent: VoteIntent,
}

/// What the shard answers for a ticket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Committed at `offset` of the shard's partition.
    Accepted {
        vote: Vote,
        offset: u64,
    },
    Rejected {
        ticket: Ticket,
        code: ErrorCode,
    },
}

impl Answer {
    pub fn ticket(&self) -> Ticket {
        match self {
            Answer::Accepted { vote, .. } => vote.ticket,
            Answer::Rejected { ticket, .. } => *ticket,
        }
    }
}

/// What became of a submitted vote right away.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Submitted {
    /// In the open batch; answered when its transaction ends.
    Queued,
    /// Same voter as a pending vote; answered when that one's transaction ends.
    Waiting,
    /// Answered now.
    Answered(Answer),
}

/// How a batch's transaction ended, as the commit driver saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommitOutcome {
    /// Committed; the offset of each record, in batch order.
    Committed { offsets: Vec<u64> },
    /// Aborted: none of its records is visible to read_committed readers.
    Aborted,
    /// A newer owner took the partition; this shard must stop.
    Fenced,
    /// Timed out or failed in a way that leaves the outcome unknown.
    Unknown,
}

/// One transaction's worth of encoded records, ready for the commit driver.
#[derive(Clone, Debug)]
pub struct Batch {
    pub seq: u64,
    pub partition: u32,
    /// Record keys (voter, 8 bytes big-endian), one per record.
    pub keys: Vec<[u8; 8]>,
    /// All record values back to back; record i is `payload[ends[i-1]..ends[i]]`.
    pub payload: Vec<u8>,
    pub ends: Vec<usize>,
    /// The last `markers` records are close markers; the others are votes.
    pub markers: usize,
}

impl Batch {
    /// Records of the batch, votes and markers.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Votes of the batch.
    pub fn votes(&self) -> usize {
        self.keys.len() - self.markers
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn record(&self, i: usize) -> (&[u8; 8], &[u8]) {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        (&self.keys[i], &self.payload[start..self.ends[i]])
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShardState {
    /// Replaying the committed log; not accepting.
    Recovering,
    Active,
    /// Another owner fenced this one; terminal.
    Fenced,
    /// The partition moved to another owner and this shard handed it off; terminal.
    Released,
}

#[derive(Default)]
struct ElectionTally {
    voters: RoaringTreemap,
    counts: BTreeMap<OptionId, u64>,
    /// Voters with a vote in the open or in-flight batch, and the tickets of their repeats.
    pending: U64Map<Vec<Ticket>>,
}

struct InFlight {
    seq: u64,
    votes: Vec<Vote>,
    /// Close markers after the votes, in order.
    markers: Vec<ElectionId>,
}

/// Where an election's closing stands on this shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closing {
    /// Closed at `at_ms` (Unix ms, the marker's); the marker waits for the next batch.
    MarkerDue { at_ms: u64 },
    /// The marker is in the transaction in flight.
    MarkerInFlight { at_ms: u64 },
    /// The first committed marker, at this offset: the partition's frontier.
    Closed { frontier: u64 },
}

pub struct Shard {
    cfg: ShardConfig,
    state: ShardState,
    elections: StrMap<ElectionId, ElectionTally>,
    open: Vec<Vote>,
    in_flight: Option<InFlight>,
    next_seq: u64,
    /// One past the highest offset applied; replay resumes here.
    applied_end: u64,
    /// Committed records whose voter had already voted in that election: never counted. Only a
    /// second writer or a bug can produce one, so it is exported as a metric to alarm on.
    log_duplicates: u64,
    /// Elections closed here (docs/design.md §7), and where their marker stands.
    closing: StrMap<ElectionId, Closing>,
    /// Markers waiting for a batch (those `MarkerDue`).
    markers_due: usize,
}

impl std::fmt::Debug for Shard {
    /// A summary: the voter sets are too large to print.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("partition", &self.cfg.partition)
            .field("state", &self.state)
            .field("applied_end", &self.applied_end)
            .field("queued", &self.open.len())
            .field("in_flight", &self.in_flight.as_ref().map(|t| t.votes.len()))
            .finish_non_exhaustive()
    }
}

impl Shard {
    /// A shard starts recovering: it accepts only after the log has been replayed.
    pub fn new(cfg: ShardConfig) -> Self {
        cfg.validate();
        Self {
            cfg,
            state: ShardState::Recovering,
            elections: StrMap::default(),
            open: Vec::new(),
            in_flight: None,
            next_seq: 0,
            applied_end: 0,
            log_duplicates: 0,
            closing: StrMap::default(),
            markers_due: 0,
        }
    }

    pub fn partition(&self) -> u32 {
        self.cfg.partition
    }

    pub fn state(&self) -> ShardState {
        self.state
    }

    /// Offset from which a replay must continue.
    pub fn applied_end(&self) -> u64 {
        self.applied_end
    }

    pub fn log_duplicates(&self) -> u64 {
        self.log_duplicates
    }

    pub fn queued(&self) -> usize {
        self.open.len()
    }

    pub fn in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Absolute counts of an election in this partition, as of [`Shard::applied_end`].
    pub fn tallies(&self, election: &ElectionId) -> Option<&BTreeMap<OptionId, u64>> {
        self.elections.get(election).map(|e| &e.counts)
    }

    pub fn elections(&self) -> impl Iterator<Item = (&ElectionId, &BTreeMap<OptionId, u64>)> {
        self.elections.iter().map(|(id, e)| (id, &e.counts))
    }

    /// Committed voters of an election in this partition.
    pub fn voters(&self, election: &ElectionId) -> u64 {
        self.elections.get(election).map_or(0, |e| e.voters.len())
    }

    pub fn has_voted(&self, election: &ElectionId, voter: VoterId) -> bool {
        self.elections
            .get(election)
            .is_some_and(|e| e.voters.contains(voter.0))
    }

    /// Approximate heap bytes of the voter sets (for the memory-per-voter figure).
    pub fn voter_set_bytes(&self) -> u64 {
        self.elections
            .values()
            .map(|e| e.voters.serialized_size() as u64)
            .sum()
    }

    pub fn submit(&mut self, vote: Vote) -> Submitted {
        let reject = |code| {
            Submitted::Answered(Answer::Rejected {
                ticket: vote.ticket,
                code,
            })
        };
        if self.state != ShardState::Active {
            return reject(ErrorCode::Unavailable);
        }
        if self.closing.contains_key(vote.intent.election.as_str()) {
            return reject(ErrorCode::ElectionNotOpen);
        }
        // Look up before inserting: the id is cloned only for an election's first vote here.
        if !self.elections.contains_key(&vote.intent.election) {
            self.elections
                .insert(vote.intent.election.clone(), ElectionTally::default());
        }
        let tally = self
            .elections
            .get_mut(&vote.intent.election)
            .expect("inserted above");
        if tally.voters.contains(vote.intent.voter.0) {
            return reject(ErrorCode::AlreadyVoted);
        }
        match tally.pending.entry(vote.intent.voter.0) {
            Entry::Occupied(mut waiting) => {
                // A voter repeating a vote still in flight gets one answer per request once the
                // first settles; past a few repeats the rest are turned away at once.
                if waiting.get().len() >= MAX_WAITERS_PER_VOTER {
                    return reject(ErrorCode::Unavailable);
                }
                waiting.get_mut().push(vote.ticket);
                Submitted::Waiting
            }
            Entry::Vacant(slot) => {
                if self.open.len() >= self.cfg.max_queued {
                    return reject(ErrorCode::Unavailable);
                }
                slot.insert(Vec::new());
                self.open.push(vote);
                Submitted::Queued
            }
        }
    }

    /// Whether the driver should start a transaction now: votes are queued and none is in
    /// flight. (When to start — at once, or after a linger to fill the batch — is the driver's
    /// policy; the shard only says whether it may.)
    pub fn can_take_batch(&self) -> bool {
        self.state == ShardState::Active
            && self.in_flight.is_none()
            && (!self.open.is_empty() || self.markers_due > 0)
    }

    pub fn batch_full(&self) -> bool {
        self.open.len() >= self.cfg.max_batch
    }

    /// Moves up to `max_batch` queued votes into a new in-flight batch, encoded.
    pub fn take_batch(&mut self) -> Option<Batch> {
        self.take_batch_of(self.cfg.max_batch)
    }

    /// Moves up to `limit` (and `max_batch`) queued votes into a new in-flight batch, followed
    /// by the close markers due: a transaction that spans several partitions shares its size
    /// between them (markers do not count against it).
    pub fn take_batch_of(&mut self, limit: usize) -> Option<Batch> {
        if !self.can_take_batch() || (limit == 0 && self.markers_due == 0) {
            return None;
        }
        let n = self.open.len().min(self.cfg.max_batch).min(limit);
        let votes: Vec<Vote> = self.open.drain(..n).collect();
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut batch = Batch {
            seq,
            partition: self.cfg.partition,
            keys: Vec::with_capacity(n),
            payload: Vec::with_capacity(n * RECORD_MAX_LEN),
            ends: Vec::with_capacity(n),
            markers: 0,
        };
        for v in &votes {
            v.intent
                .record(&self.cfg.node, self.cfg.core)
                .encode_into(&mut batch.payload);
            batch.keys.push(voter_key(v.intent.voter));
            batch.ends.push(batch.payload.len());
        }
        // After every vote of the batch: a vote of a closing election is never queued (close
        // answered those still queued), so none can follow its marker.
        let mut markers = Vec::new();
        for (election, closing) in self.closing.iter_mut() {
            if let Closing::MarkerDue { at_ms } = *closing {
                *closing = Closing::MarkerInFlight { at_ms };
                markers.push((election.clone(), at_ms));
            }
        }
        markers.sort();
        for (election, at_ms) in &markers {
            encode_close(
                election,
                *at_ms,
                &self.cfg.node,
                self.cfg.core,
                &mut batch.payload,
            );
            batch.keys.push(CLOSE_RECORD_KEY);
            batch.ends.push(batch.payload.len());
        }
        let markers: Vec<ElectionId> = markers.into_iter().map(|(e, _)| e).collect();
        batch.markers = markers.len();
        self.markers_due -= markers.len();
        debug_assert_eq!(self.markers_due, 0, "every due marker goes in the batch");
        assert!(
            !batch.is_empty(),
            "a batch is taken only with something to write"
        );
        self.in_flight = Some(InFlight {
            seq,
            votes,
            markers,
        });
        Some(batch)
    }

    /// Applies the outcome of batch `seq`'s transaction and returns the answers it settles.
    pub fn on_outcome(&mut self, seq: u64, outcome: CommitOutcome) -> Vec<Answer> {
        let in_flight = self
            .in_flight
            .take()
            .expect("an outcome only for the batch in flight");
        assert_eq!(
            in_flight.seq, seq,
            "outcomes arrive for the batch in flight"
        );
        let mut answers = Vec::with_capacity(in_flight.votes.len());
        match outcome {
            CommitOutcome::Committed { offsets } => {
                assert_eq!(
                    offsets.len(),
                    in_flight.votes.len() + in_flight.markers.len(),
                    "one offset per record"
                );
                assert!(
                    offsets.is_sorted(),
                    "a transaction's records are appended in order"
                );
                assert!(
                    offsets.first().is_none_or(|o| *o >= self.applied_end),
                    "a committed batch lies past everything applied"
                );
                let marker_offsets = offsets[in_flight.votes.len()..].to_vec();
                for (vote, offset) in in_flight.votes.into_iter().zip(offsets) {
                    let (tally, waiters) = self.settle(&vote);
                    let fresh = tally.voters.insert(vote.intent.voter.0);
                    assert!(fresh, "a pending voter is never already committed");
                    *tally.counts.entry(vote.intent.option.clone()).or_insert(0) += 1;
                    self.applied_end = offset + 1;
                    answers.extend(waiters.into_iter().map(|ticket| Answer::Rejected {
                        ticket,
                        code: ErrorCode::AlreadyVoted,
                    }));
                    answers.push(Answer::Accepted { vote, offset });
                }
                for (election, offset) in in_flight.markers.into_iter().zip(marker_offsets) {
                    self.applied_end = offset + 1;
                    self.closing
                        .insert(election, Closing::Closed { frontier: offset });
                }
            }
            CommitOutcome::Aborted => {
                self.release(in_flight.votes, &mut answers);
                self.markers_again(in_flight.markers);
            }
            CommitOutcome::Fenced => {
                self.release(in_flight.votes, &mut answers);
                self.release_queued(&mut answers);
                self.markers_again(in_flight.markers);
                self.state = ShardState::Fenced;
            }
            CommitOutcome::Unknown => {
                // The batch may or may not be in the log: only a replay can tell, and until
                // then no voter of this partition can be deduplicated with certainty. A marker
                // the replay does not find is written again.
                self.release(in_flight.votes, &mut answers);
                self.release_queued(&mut answers);
                self.markers_again(in_flight.markers);
                self.state = ShardState::Recovering;
            }
        }
        answers
    }

    /// Markers of a transaction that did not commit: due again.
    fn markers_again(&mut self, markers: Vec<ElectionId>) {
        for election in markers {
            let closing = self
                .closing
                .get_mut(election.as_str())
                .expect("a marker in flight is of a closing election");
            let Closing::MarkerInFlight { at_ms } = *closing else {
                unreachable!("a marker in flight is in flight");
            };
            *closing = Closing::MarkerDue { at_ms };
            self.markers_due += 1;
        }
    }

    /// Closes `election` here (docs/design.md §7): no vote of it is taken from now on; its votes still
    /// queued (not in a transaction) are answered `409 election_not_open`, with their repeats;
    /// a close marker goes into the next batch, after every vote of it that may still commit.
    /// Idempotent: a second close, or one of an election whose marker is in the log, does
    /// nothing.
    pub fn close(&mut self, election: &ElectionId, at_ms: u64) -> Vec<Answer> {
        let mut answers = Vec::new();
        if matches!(self.state, ShardState::Fenced | ShardState::Released)
            || self.closing.contains_key(election.as_str())
        {
            return answers;
        }
        self.closing
            .insert(election.clone(), Closing::MarkerDue { at_ms });
        self.markers_due += 1;
        let (closed, kept): (Vec<Vote>, Vec<Vote>) = std::mem::take(&mut self.open)
            .into_iter()
            .partition(|v| &v.intent.election == election);
        self.open = kept;
        self.reject(closed, ErrorCode::ElectionNotOpen, &mut answers);
        answers
    }

    /// Where `election`'s closing stands here; `None`: open as far as this shard knows.
    pub fn closing(&self, election: &str) -> Option<Closing> {
        self.closing.get(election).copied()
    }

    /// Close markers waiting for a batch.
    pub fn markers_due(&self) -> usize {
        if self.state == ShardState::Active {
            self.markers_due
        } else {
            0
        }
    }

    /// Whether the record at `offset`, read back from the log while recovering, is still to be
    /// applied: a replay may overlap what was applied already (up to [`Shard::applied_end`],
    /// which this moves past `offset`).
    #[inline]
    fn replaying(&mut self, offset: u64) -> bool {
        assert_eq!(
            self.state,
            ShardState::Recovering,
            "replay only while recovering"
        );
        if offset < self.applied_end {
            return false;
        }
        self.applied_end = offset + 1;
        true
    }

    /// A committed close marker read back from the log while recovering: the first one of an
    /// election is its frontier here.
    pub fn apply_committed_close(&mut self, offset: u64, marker: &CloseRecord) {
        if !self.replaying(offset) {
            return;
        }
        match self.closing.get(marker.election.as_str()) {
            Some(Closing::Closed { .. }) => {}
            Some(Closing::MarkerDue { .. }) => {
                self.markers_due -= 1;
                self.closing.insert(
                    marker.election.clone(),
                    Closing::Closed { frontier: offset },
                );
            }
            Some(Closing::MarkerInFlight { .. }) => {
                unreachable!("nothing is in flight while recovering")
            }
            None => {
                self.closing.insert(
                    marker.election.clone(),
                    Closing::Closed { frontier: offset },
                );
            }
        }
    }

    /// Ends `vote`'s pending state: its election's tally and the tickets that waited for it.
    fn settle(&mut self, vote: &Vote) -> (&mut ElectionTally, Vec<Ticket>) {
        let tally = self
            .elections
            .get_mut(&vote.intent.election)
            .expect("a pending vote's election exists");
        let waiters = tally
            .pending
            .remove(&vote.intent.voter.0)
            .expect("the vote was pending");
        (tally, waiters)
    }

    /// Forgets the votes waiting for a batch, answering them `503`.
    fn release_queued(&mut self, answers: &mut Vec<Answer>) {
        let open = std::mem::take(&mut self.open);
        self.release(open, answers);
    }

    /// Forgets pending votes, answering each of them and their waiters `503`.
    fn release(&mut self, votes: Vec<Vote>, answers: &mut Vec<Answer>) {
        self.reject(votes, ErrorCode::Unavailable, answers);
    }

    /// Forgets pending votes, answering each of them and their waiters `code`.
    fn reject(&mut self, votes: Vec<Vote>, code: ErrorCode, answers: &mut Vec<Answer>) {
        for vote in votes {
            let (_, waiters) = self.settle(&vote);
            answers.extend(
                std::iter::once(vote.ticket)
                    .chain(waiters)
                    .map(|ticket| Answer::Rejected { ticket, code }),
            );
        }
    }

    /// The partition moves to another owner (the group took it away): every queued vote is
    /// answered `503` and the shard stops for good. Only between transactions: the outcome of
    /// a batch in flight must be known first, or its voters would hear 503 for votes that may
    /// have committed (safe by §3.2, but needlessly).
    pub fn hand_off(&mut self) -> Vec<Answer> {
        assert!(
            self.in_flight.is_none(),
            "a shard hands off between transactions"
        );
        assert_ne!(
            self.state,
            ShardState::Fenced,
            "a fenced shard owns nothing"
        );
        let mut answers = Vec::new();
        self.release_queued(&mut answers);
        self.state = ShardState::Released;
        debug_assert!(
            self.elections.values().all(|e| e.pending.is_empty()),
            "nothing is pending after a hand-off"
        );
        answers
    }

    /// Another owner fenced the shard outside of a commit (e.g. at init): stop for good.
    pub fn fence(&mut self) -> Vec<Answer> {
        let mut answers = Vec::new();
        if let Some(in_flight) = self.in_flight.take() {
            self.release(in_flight.votes, &mut answers);
        }
        self.release_queued(&mut answers);
        self.state = ShardState::Fenced;
        answers
    }

    /// Applies one committed record read back from the log while recovering. Records before
    /// [`Shard::applied_end`] were applied already and are skipped, so a replay may overlap.
    pub fn apply_committed(&mut self, offset: u64, record: &VoteRecord) {
        if !self.replaying(offset) {
            return;
        }
        let tally = self.elections.entry(record.election.clone()).or_default();
        if tally.voters.insert(record.voter.0) {
            *tally.counts.entry(record.option.clone()).or_insert(0) += 1;
        } else {
            self.log_duplicates += 1;
        }
    }

    /// The committed state for a snapshot: every voter set and tally, and the offset below which
    /// every record of the partition is in them. Pending votes are not part of it (they may
    /// still abort). Copies the voter sets: O(voters), so call it rarely. `log_id` names the
    /// log it is of ([`votes_core::snapshot::log_id`]).
    pub fn snapshot(&self, log_id: u64) -> ShardSnapshot {
        assert_ne!(
            self.state,
            ShardState::Fenced,
            "a fenced shard's state is no one's to keep"
        );
        let mut elections: Vec<ElectionState> = self
            .elections
            .iter()
            // An election seen only in votes that never committed holds no state of the log.
            .filter(|(_, t)| !t.voters.is_empty())
            .map(|(id, t)| ElectionState {
                election: id.clone(),
                counts: t.counts.clone(),
                voters: t.voters.clone(),
            })
            .collect();
        elections.sort_by(|a, b| a.election.cmp(&b.election));
        ShardSnapshot {
            partition: self.cfg.partition,
            applied_end: self.applied_end,
            log_id,
            log_duplicates: self.log_duplicates,
            elections,
        }
    }

    /// A recovering shard that starts from `snapshot` instead of the beginning of the log: the
    /// replay continues at its `applied_end`.
    pub fn from_snapshot(cfg: ShardConfig, snapshot: ShardSnapshot) -> Self {
        assert_eq!(
            snapshot.partition, cfg.partition,
            "a snapshot restores its own partition"
        );
        let mut shard = Shard::new(cfg);
        for e in snapshot.elections {
            debug_assert_eq!(e.counts.values().sum::<u64>(), e.voters.len());
            shard.elections.insert(
                e.election,
                ElectionTally {
                    voters: e.voters,
                    counts: e.counts,
                    pending: U64Map::default(),
                },
            );
        }
        shard.applied_end = snapshot.applied_end;
        shard.log_duplicates = snapshot.log_duplicates;
        shard
    }

    /// The replay reached the end of the committed log (`end` = its next offset): accept.
    pub fn finish_recovery(&mut self, end: u64) {
        assert_eq!(
            self.state,
            ShardState::Recovering,
            "finish only what was started"
        );
        assert!(
            self.in_flight.is_none() && self.open.is_empty(),
            "nothing pending while recovering"
        );
        self.applied_end = self.applied_end.max(end);
        self.state = ShardState::Active;
    }
}

#[cfg(test)]
mod tests;
