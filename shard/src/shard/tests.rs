use super::*;
use proptest::prelude::*;
use std::collections::{BTreeSet, HashMap, HashSet};

fn cfg(max_batch: usize) -> ShardConfig {
    ShardConfig {
        partition: 3,
        node: "node-t".into(),
        core: 1,
        max_batch,
        max_queued: 4 * max_batch,
    }
}

fn election(i: u8) -> ElectionId {
    ElectionId::new(format!("e{i}")).unwrap()
}

fn option(i: u8) -> OptionId {
    OptionId::new(format!("o{i}")).unwrap()
}

fn vote(ticket: Ticket, e: u8, voter: u64, o: u8) -> Vote {
    Vote {
        ticket,
        intent: VoteIntent {
            election: election(e),
            voter: VoterId(voter),
            option: option(o),
            received_at_ms: 1_000 + ticket,
            nonce: [ticket as u8; 16],
        },
    }
}

fn active(max_batch: usize) -> Shard {
    let mut s = Shard::new(cfg(max_batch));
    s.finish_recovery(0);
    s
}

#[test]
fn a_new_shard_refuses_votes_until_recovered() {
    let mut s = Shard::new(cfg(4));
    assert_eq!(
        s.submit(vote(1, 0, 7, 0)),
        Submitted::Answered(Answer::Rejected {
            ticket: 1,
            code: ErrorCode::Unavailable
        })
    );
    s.finish_recovery(0);
    assert_eq!(s.submit(vote(2, 0, 7, 0)), Submitted::Queued);
}

#[test]
fn accepted_only_after_commit_and_duplicates_wait_for_it() {
    let mut s = active(4);
    assert_eq!(s.submit(vote(1, 0, 7, 0)), Submitted::Queued);
    assert_eq!(
        s.submit(vote(2, 0, 7, 1)),
        Submitted::Waiting,
        "same voter, still pending"
    );
    assert_eq!(
        s.submit(vote(3, 1, 7, 0)),
        Submitted::Queued,
        "another election is independent"
    );
    let batch = s.take_batch().unwrap();
    assert_eq!(batch.len(), 2);
    assert!(s.take_batch().is_none(), "one transaction at a time");
    let (key, value) = batch.record(0);
    assert_eq!(key, &7u64.to_be_bytes());
    assert_eq!(VoteRecord::decode(value).unwrap().option, option(0));
    let answers = s.on_outcome(
        batch.seq,
        CommitOutcome::Committed {
            offsets: vec![10, 11],
        },
    );
    assert_eq!(
        answers,
        vec![
            Answer::Rejected {
                ticket: 2,
                code: ErrorCode::AlreadyVoted
            },
            Answer::Accepted {
                vote: vote(1, 0, 7, 0),
                offset: 10
            },
            Answer::Accepted {
                vote: vote(3, 1, 7, 0),
                offset: 11
            },
        ]
    );
    assert_eq!(s.applied_end(), 12);
    assert_eq!(s.tallies(&election(0)).unwrap()[&option(0)], 1);
    assert_eq!(
        s.submit(vote(4, 0, 7, 1)),
        Submitted::Answered(Answer::Rejected {
            ticket: 4,
            code: ErrorCode::AlreadyVoted
        })
    );
}

#[test]
fn an_abort_releases_the_voters() {
    let mut s = active(4);
    s.submit(vote(1, 0, 7, 0));
    s.submit(vote(2, 0, 7, 0));
    let b = s.take_batch().unwrap();
    let answers = s.on_outcome(b.seq, CommitOutcome::Aborted);
    let codes: Vec<_> = answers.iter().map(|a| (a.ticket(), a.clone())).collect();
    assert_eq!(codes.len(), 2);
    assert!(answers.iter().all(|a| matches!(
        a,
        Answer::Rejected {
            code: ErrorCode::Unavailable,
            ..
        }
    )));
    assert_eq!(s.voters(&election(0)), 0);
    assert_eq!(
        s.submit(vote(3, 0, 7, 1)),
        Submitted::Queued,
        "the voter may retry"
    );
}

#[test]
fn a_fenced_shard_answers_everything_and_stops() {
    let mut s = active(1);
    s.submit(vote(1, 0, 1, 0));
    s.submit(vote(2, 0, 2, 0));
    let b = s.take_batch().unwrap();
    let answers = s.on_outcome(b.seq, CommitOutcome::Fenced);
    assert_eq!(
        answers.len(),
        2,
        "in-flight and queued votes are both answered"
    );
    assert_eq!(s.state(), ShardState::Fenced);
    assert!(matches!(
        s.submit(vote(3, 0, 3, 0)),
        Submitted::Answered(Answer::Rejected {
            code: ErrorCode::Unavailable,
            ..
        })
    ));
}

#[test]
fn the_queue_is_bounded() {
    let mut s = active(2);
    for v in 0..8 {
        assert_eq!(s.submit(vote(v, 0, v, 0)), Submitted::Queued);
    }
    assert!(matches!(
        s.submit(vote(9, 0, 9, 0)),
        Submitted::Answered(Answer::Rejected {
            code: ErrorCode::Unavailable,
            ..
        })
    ));
    assert_eq!(
        s.take_batch().unwrap().len(),
        2,
        "a batch is at most max_batch"
    );
}

#[test]
fn replay_skips_what_was_applied_and_counts_the_first_vote_only() {
    let mut s = Shard::new(cfg(4));
    let rec = |voter, o| VoteRecord {
        election: election(0),
        voter: VoterId(voter),
        option: option(o),
        received_at_ms: 0,
        node: "n".into(),
        core: 0,
        nonce: [0; 16],
    };
    s.apply_committed(0, &rec(1, 0));
    s.apply_committed(1, &rec(2, 1));
    s.apply_committed(1, &rec(2, 1)); // an overlapping replay
    s.apply_committed(5, &rec(1, 1)); // a second record of voter 1: never counted
    s.finish_recovery(7);
    assert_eq!(s.applied_end(), 7);
    assert_eq!(s.voters(&election(0)), 2);
    assert_eq!(s.log_duplicates(), 1);
    let t = s.tallies(&election(0)).unwrap();
    assert_eq!((t[&option(0)], t[&option(1)]), (1, 1));
}

/// The shard driven against a model of the Kafka log, with every commit outcome chosen at
/// random; see the module's invariants.
#[derive(Clone, Debug)]
enum Op {
    Submit {
        election: u8,
        voter: u64,
        option: u8,
    },
    Take,
    Commit,
    Abort,
    Fence,
    Unknown {
        committed: bool,
    },
    /// The group moves the partition to another owner (only between transactions, as the
    /// driver does); the new owner starts from the log.
    HandOff,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..2, 0u64..24, 0u8..3).prop_map(|(election, voter, option)| Op::Submit { election, voter, option }),
        3 => Just(Op::Take),
        3 => Just(Op::Commit),
        1 => Just(Op::Abort),
        1 => Just(Op::Fence),
        1 => any::<bool>().prop_map(|committed| Op::Unknown { committed }),
        1 => Just(Op::HandOff),
    ]
}

type VotersByElection = HashMap<ElectionId, BTreeSet<u64>>;
type TalliesByElection = HashMap<ElectionId, BTreeMap<OptionId, u64>>;

struct Harness {
    shard: Shard,
    max_batch: usize,
    /// The committed log of the partition: (offset, record).
    log: Vec<(u64, VoteRecord)>,
    next_offset: u64,
    in_flight: Option<Batch>,
    next_ticket: Ticket,
    outstanding: HashSet<Ticket>,
    answered: HashSet<Ticket>,
    accepted: HashSet<(ElectionId, VoterId)>,
}

impl Harness {
    fn new(max_batch: usize) -> Self {
        let mut h = Self {
            shard: Shard::new(cfg(max_batch)),
            max_batch,
            log: Vec::new(),
            next_offset: 0,
            in_flight: None,
            next_ticket: 0,
            outstanding: HashSet::new(),
            answered: HashSet::new(),
            accepted: HashSet::new(),
        };
        h.shard.finish_recovery(0);
        h
    }

    /// The committed state the log implies: first record of a voter counts.
    fn model(&self) -> (VotersByElection, TalliesByElection) {
        let mut voters: HashMap<ElectionId, BTreeSet<u64>> = HashMap::new();
        let mut counts: HashMap<ElectionId, BTreeMap<OptionId, u64>> = HashMap::new();
        for (_, r) in &self.log {
            if voters
                .entry(r.election.clone())
                .or_default()
                .insert(r.voter.0)
            {
                *counts
                    .entry(r.election.clone())
                    .or_default()
                    .entry(r.option.clone())
                    .or_default() += 1;
            }
        }
        (voters, counts)
    }

    fn record_answers(&mut self, answers: Vec<Answer>) {
        for a in answers {
            let t = a.ticket();
            assert!(self.answered.insert(t), "ticket {t} answered twice");
            assert!(
                self.outstanding.remove(&t) || t + 1 == self.next_ticket,
                "ticket {t} was not waiting"
            );
            match &a {
                Answer::Accepted { vote, offset } => {
                    let (_, r) = self
                        .log
                        .iter()
                        .find(|(o, _)| o == offset)
                        .expect("accepted vote is in the log");
                    assert_eq!(
                        (&r.election, r.voter, &r.option, r.nonce),
                        (
                            &vote.intent.election,
                            vote.intent.voter,
                            &vote.intent.option,
                            vote.intent.nonce
                        )
                    );
                    assert!(
                        self.accepted
                            .insert((vote.intent.election.clone(), vote.intent.voter)),
                        "voter {} accepted twice in {}",
                        vote.intent.voter,
                        vote.intent.election
                    );
                }
                Answer::Rejected {
                    code: ErrorCode::AlreadyVoted,
                    ..
                } => {}
                Answer::Rejected { code, .. } => assert_eq!(*code, ErrorCode::Unavailable),
            }
        }
    }

    fn append(&mut self, batch: &Batch) -> Vec<u64> {
        let offsets: Vec<u64> = (0..batch.len() as u64)
            .map(|i| self.next_offset + i)
            .collect();
        for (i, o) in offsets.iter().enumerate() {
            let (key, value) = batch.record(i);
            let r = VoteRecord::decode(value).expect("the shard encodes valid records");
            assert_eq!(key, &r.voter.0.to_be_bytes());
            self.log.push((*o, r));
        }
        self.next_offset += batch.len() as u64 + 1; // + the commit marker
        offsets
    }

    /// Feeds the whole log: the shard itself must skip what it already applied, as it does when
    /// a real replay overlaps.
    fn replay(&mut self) {
        for (o, r) in self.log.clone() {
            self.shard.apply_committed(o, &r);
        }
        self.shard.finish_recovery(self.next_offset);
    }

    fn step(&mut self, op: Op) {
        match op {
            Op::Submit {
                election: e,
                voter,
                option: o,
            } => {
                let t = self.next_ticket;
                self.next_ticket += 1;
                match self.shard.submit(vote(t, e, voter, o)) {
                    Submitted::Answered(a) => {
                        if let Answer::Rejected {
                            code: ErrorCode::AlreadyVoted,
                            ..
                        } = a
                        {
                            assert!(
                                self.log
                                    .iter()
                                    .any(|(_, r)| r.election == election(e) && r.voter.0 == voter)
                            );
                        }
                        self.record_answers(vec![a]);
                    }
                    Submitted::Queued | Submitted::Waiting => {
                        self.outstanding.insert(t);
                    }
                }
            }
            Op::HandOff => {
                if self.in_flight.is_some() || self.shard.state() == ShardState::Fenced {
                    return;
                }
                let answers = self.shard.hand_off();
                assert!(
                    answers.iter().all(|a| matches!(
                        a,
                        Answer::Rejected {
                            code: ErrorCode::Unavailable,
                            ..
                        }
                    )),
                    "a hand-off only refuses"
                );
                assert_eq!(self.shard.state(), ShardState::Released);
                assert!(
                    self.shard.take_batch().is_none(),
                    "a released shard writes nothing"
                );
                self.record_answers(answers);
                self.shard = Shard::new(cfg(self.max_batch));
                self.replay();
            }
            Op::Take => {
                if self.in_flight.is_none() {
                    self.in_flight = self.shard.take_batch();
                    if let Some(b) = &self.in_flight {
                        assert!(!b.is_empty() && b.len() <= self.max_batch);
                    }
                }
            }
            Op::Commit | Op::Abort | Op::Fence | Op::Unknown { .. } => {
                let Some(batch) = self.in_flight.take() else {
                    return;
                };
                let outcome = match op {
                    Op::Commit => CommitOutcome::Committed {
                        offsets: self.append(&batch),
                    },
                    Op::Abort => {
                        self.next_offset += batch.len() as u64 + 1;
                        CommitOutcome::Aborted
                    }
                    Op::Fence => CommitOutcome::Fenced,
                    Op::Unknown { committed } => {
                        if committed {
                            self.append(&batch);
                        } else {
                            self.next_offset += batch.len() as u64 + 1;
                        }
                        CommitOutcome::Unknown
                    }
                    _ => unreachable!(),
                };
                let answers = self.shard.on_outcome(batch.seq, outcome);
                self.record_answers(answers);
                match op {
                    Op::Fence => {
                        assert_eq!(self.shard.state(), ShardState::Fenced);
                        // The new owner starts from the log alone.
                        self.shard = Shard::new(cfg(self.max_batch));
                        self.replay();
                    }
                    Op::Unknown { .. } => {
                        assert_eq!(self.shard.state(), ShardState::Recovering);
                        self.replay();
                    }
                    _ => {}
                }
            }
        }
        self.check();
    }

    fn check(&self) {
        // The shard never writes a voter twice, so the log never holds a duplicate to skip.
        assert_eq!(self.shard.log_duplicates(), 0);
        if self.shard.state() != ShardState::Active {
            return;
        }
        let (voters, counts) = self.model();
        for e in 0..2 {
            let id = election(e);
            let want = voters.get(&id).map_or(0, |v| v.len() as u64);
            assert_eq!(self.shard.voters(&id), want, "voters of {id}");
            for voter in 0..24 {
                let in_log = voters.get(&id).is_some_and(|v| v.contains(&voter));
                assert_eq!(
                    self.shard.has_voted(&id, VoterId(voter)),
                    in_log,
                    "voter {voter} of {id}"
                );
            }
            let empty = BTreeMap::new();
            let got = self.shard.tallies(&id).unwrap_or(&empty);
            let got: BTreeMap<_, _> = got.iter().filter(|(_, c)| **c > 0).collect();
            let want_counts = counts.get(&id).unwrap_or(&empty);
            let want_counts: BTreeMap<_, _> = want_counts.iter().collect();
            assert_eq!(got, want_counts, "tallies of {id}");
        }
    }

    /// Commits everything left, then every ticket must have its one answer.
    fn drain(&mut self) {
        for _ in 0..10_000 {
            if self.in_flight.is_none() {
                self.in_flight = self.shard.take_batch();
            }
            let Some(_) = &self.in_flight else { break };
            self.step(Op::Commit);
        }
        assert!(
            self.outstanding.is_empty(),
            "unanswered tickets: {:?}",
            self.outstanding
        );
        assert_eq!(self.answered.len() as u64, self.next_ticket);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_under_random_outcomes(max_batch in 1usize..6, ops in proptest::collection::vec(op(), 1..200)) {
        let mut h = Harness::new(max_batch);
        for op in ops {
            h.step(op);
        }
        h.drain();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Recovery from a snapshot taken at any point, plus the log's tail, reaches the same state
    /// as the live shard (and as a replay of the whole log), through the snapshot's bytes.
    #[test]
    fn snapshot_plus_tail_equals_the_live_state(
        max_batch in 1usize..6,
        ops in proptest::collection::vec(op(), 1..200),
        at in 0usize..200,
    ) {
        let mut h = Harness::new(max_batch);
        let mut snap = None;
        for (i, op) in ops.into_iter().enumerate() {
            if i == at && h.shard.state() == ShardState::Active {
                snap = Some(h.shard.snapshot(7));
            }
            h.step(op);
        }
        h.drain();
        prop_assume!(h.shard.state() == ShardState::Active);
        let snap = snap.unwrap_or_else(|| h.shard.snapshot(7));
        let bytes = snap.encode();
        let decoded = votes_core::snapshot::ShardSnapshot::decode(&bytes).expect("a snapshot reads back");
        prop_assert_eq!(&decoded, &snap);
        let mut restored = Shard::from_snapshot(cfg(max_batch), decoded);
        prop_assert_eq!(restored.state(), ShardState::Recovering);
        for (o, r) in &h.log {
            restored.apply_committed(*o, r);
        }
        restored.finish_recovery(h.next_offset);
        let (got, live) = (restored.snapshot(7), h.shard.snapshot(7));
        prop_assert_eq!(&got.elections, &live.elections);
        prop_assert_eq!(got.log_duplicates, live.log_duplicates);
        // The live shard stops after its last record, the replay after the commit marker.
        prop_assert!(got.applied_end >= live.applied_end && got.applied_end <= h.next_offset);
    }
}

#[test]
fn a_close_is_a_barrier_and_the_first_replayed_marker_is_the_frontier() {
    let mut s = active(8);
    assert_eq!(s.submit(vote(1, 0, 10, 0)), Submitted::Queued);
    let in_flight = s.take_batch().unwrap();
    assert_eq!(s.submit(vote(2, 0, 11, 0)), Submitted::Queued);
    assert_eq!(s.submit(vote(3, 0, 11, 1)), Submitted::Waiting);
    assert_eq!(s.submit(vote(4, 1, 12, 0)), Submitted::Queued);
    let answers = s.close(&election(0), 99);
    assert_eq!(
        answers,
        vec![
            Answer::Rejected {
                ticket: 2,
                code: ErrorCode::ElectionNotOpen
            },
            Answer::Rejected {
                ticket: 3,
                code: ErrorCode::ElectionNotOpen
            }
        ],
        "a queued vote and its repeat are refused; the one in flight is not touched"
    );
    assert!(s.close(&election(0), 100).is_empty(), "idempotent");
    assert_eq!(
        s.submit(vote(5, 0, 13, 0)),
        Submitted::Answered(Answer::Rejected {
            ticket: 5,
            code: ErrorCode::ElectionNotOpen
        })
    );
    assert_eq!(s.markers_due(), 1);
    // The vote in flight commits before the marker's batch: it counts, before the frontier.
    let answers = s.on_outcome(
        in_flight.seq,
        CommitOutcome::Committed { offsets: vec![20] },
    );
    assert!(matches!(answers[..], [Answer::Accepted { offset: 20, .. }]));
    let b = s.take_batch().unwrap();
    assert_eq!(
        (b.votes(), b.markers),
        (1, 1),
        "the other election's vote, then the marker"
    );
    let marker = match votes_core::record::LogRecord::decode(b.record(1).1).unwrap() {
        votes_core::record::LogRecord::Close(m) => m,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        (marker.election.clone(), marker.closed_at_ms),
        (election(0), 99)
    );
    // Aborted: the marker is due again.
    s.on_outcome(b.seq, CommitOutcome::Aborted);
    assert_eq!(s.markers_due(), 1);
    let b = s.take_batch().unwrap();
    assert_eq!((b.votes(), b.markers), (0, 1));
    s.on_outcome(b.seq, CommitOutcome::Committed { offsets: vec![23] });
    assert_eq!(s.closing("e0"), Some(Closing::Closed { frontier: 23 }));
    assert!(!s.can_take_batch(), "nothing more to write");

    // A replaying shard learns of the close from the log, the first marker being the frontier.
    let mut r = Shard::new(cfg(8));
    r.apply_committed_close(23, &marker);
    let mut later = marker.clone();
    later.closed_at_ms = 200;
    r.apply_committed_close(30, &later);
    r.finish_recovery(31);
    assert_eq!(r.closing("e0"), Some(Closing::Closed { frontier: 23 }));
    assert!(matches!(
        r.submit(vote(6, 0, 14, 0)),
        Submitted::Answered(Answer::Rejected {
            code: ErrorCode::ElectionNotOpen,
            ..
        })
    ));
    assert!(
        !r.can_take_batch(),
        "a marker in the log is not written again"
    );
}
