//! Scenarios of one core's engine, event by event. The simulation (`crate::sim`) covers the
//! random schedules; these pin the behaviour each rule promises.

use super::*;
use votes_core::{ElectionId, OptionId, VoteIntent, VoterId};

const MS: Micros = 1_000;

/// Pacing that holds a batch until its oldest vote waited 10 ms (aiming at 20 ms acks): the
/// scenarios that need votes to queue before a transaction use it.
const HOLDING: PacingConfig = PacingConfig {
    ack_target: 20 * MS,
    min_window: 0,
    max_window: 10 * MS,
};

fn cfg(max_txn_votes: usize, pacing: PacingConfig) -> EngineConfig {
    EngineConfig {
        node: "n1".into(),
        core: 0,
        max_txn_votes,
        max_queued: max_txn_votes * 4,
        pacing,
        retake_after: 3_000 * MS,
        backoff_min: 100 * MS,
        backoff_max: 5_000 * MS,
    }
}

fn vote(ticket: Ticket, voter: u64) -> Vote {
    Vote {
        ticket,
        intent: VoteIntent {
            election: ElectionId::new("e").unwrap(),
            voter: VoterId(voter),
            option: OptionId::new("a").unwrap(),
            received_at_ms: 0,
            nonce: [0; 16],
        },
    }
}

/// An engine and the commands of its last event.
struct Core {
    e: CoreEngine,
    now: Micros,
    out: Vec<Command>,
}

impl Core {
    fn new(cfg: EngineConfig) -> Self {
        Self {
            e: CoreEngine::new(cfg),
            now: 0,
            out: Vec::new(),
        }
    }

    fn on(&mut self, event: Event) -> &mut Vec<Command> {
        self.out.clear();
        self.e.handle(self.now, event, &mut self.out);
        &mut self.out
    }

    fn at(&mut self, now: Micros) -> &mut Vec<Command> {
        self.now = now;
        self.on(Event::Tick)
    }

    /// Voter `voter` votes in election "e" on `partition`, the request tagged `ticket`: the one
    /// event every scenario sends most.
    fn cast(&mut self, partition: u32, ticket: Ticket, voter: u64) -> &mut Vec<Command> {
        self.on(Event::Vote {
            partition,
            vote: vote(ticket, voter),
        })
    }

    /// Transaction `txn` ended with `outcome`, as the producer reports it.
    fn ended(&mut self, txn: TxnId, outcome: TxnOutcome) -> &mut Vec<Command> {
        self.on(Event::TxnDone { txn, outcome })
    }

    /// Transaction `txn` committed, its batches' records at `offsets` (batch by batch).
    fn committed(&mut self, txn: TxnId, offsets: Vec<Vec<u64>>) -> &mut Vec<Command> {
        self.ended(txn, TxnOutcome::Committed { offsets })
    }

    /// Assigns `partitions`, opens the producer and recovers each from an empty log.
    fn own(&mut self, partitions: &[u32]) {
        let out = self.on(Event::Assigned {
            partitions: partitions.to_vec(),
            generation: Generation(1),
        });
        let attempt = open_attempt(out).expect("the first partition opens the producer");
        let out = self.on(Event::ProducerOpened {
            attempt,
            result: Ok(()),
        });
        let recovers = take_recovers(out);
        assert_eq!(recovers.len(), partitions.len());
        for (p, claim, mut shard) in recovers {
            shard.finish_recovery(0);
            self.on(Event::Recovered {
                partition: p,
                claim,
                shard: Some(shard),
            });
        }
    }
}

fn take_recovers(out: &mut Vec<Command>) -> Vec<(u32, ClaimId, Shard)> {
    let mut r = Vec::new();
    for c in out.drain(..) {
        if let Command::Recover {
            partition,
            claim,
            shard,
        } = c
        {
            r.push((partition, claim, shard));
        }
    }
    r
}

/// The attempt of the producer the core asks to open, if it asks.
fn open_attempt(out: &[Command]) -> Option<u64> {
    out.iter().find_map(|c| match c {
        Command::OpenProducer { attempt } => Some(*attempt),
        _ => None,
    })
}

/// The transaction `out` starts, if any, and its (partition, votes) in partition order: the
/// order of a transaction's batches is no promise of the engine.
fn commit_of(out: &[Command]) -> Option<(TxnId, Vec<(u32, usize)>)> {
    out.iter().find_map(|c| match c {
        Command::Commit { txn, batches, .. } => {
            let mut parts: Vec<_> = batches.iter().map(|b| (b.partition, b.len())).collect();
            parts.sort();
            Some((*txn, parts))
        }
        _ => None,
    })
}

fn answers(out: &[Command]) -> Vec<(Ticket, Option<u64>, Option<ErrorCode>)> {
    let mut a: Vec<_> = out
        .iter()
        .filter_map(|c| match c {
            Command::Answer {
                answer: Answer::Accepted { vote, offset },
                ..
            } => Some((vote.ticket, Some(*offset), None)),
            Command::Answer {
                answer: Answer::Rejected { ticket, code },
                ..
            } => Some((*ticket, None, Some(*code))),
            _ => None,
        })
        .collect();
    a.sort_by_key(|(t, o, _)| (*t, *o));
    a
}

#[test]
fn one_transaction_spans_every_partition_and_answers_after_the_commit() {
    let mut c = Core::new(cfg(100, PacingConfig::IMMEDIATE));
    c.own(&[1, 4]);
    let out = c.cast(1, 1, 10);
    let (txn, parts) = commit_of(out).expect("immediate pacing: the first vote starts one");
    assert_eq!(parts, vec![(1, 1)]);
    // While it commits, votes of both partitions queue for the next one.
    assert!(commit_of(c.cast(4, 2, 11)).is_none());
    assert!(commit_of(c.cast(1, 3, 12)).is_none());
    let out = c.committed(txn, vec![vec![0]]);
    assert_eq!(answers(out), vec![(1, Some(0), None)]);
    let (_, parts) = commit_of(out).expect("the next starts as this one ends");
    assert_eq!(
        parts,
        vec![(1, 1), (4, 1)],
        "one transaction, both partitions"
    );
    assert_eq!(c.e.stats().txns_started, 2);
}

#[test]
fn pacing_holds_a_batch_until_its_oldest_vote_waited_the_window_or_it_is_full() {
    let mut c = Core::new(cfg(3, HOLDING));
    c.own(&[0]);
    c.now = 100 * MS;
    assert!(commit_of(c.cast(0, 1, 1)).is_none());
    assert_eq!(c.e.next_deadline(), Some(110 * MS));
    assert!(commit_of(c.at(109 * MS)).is_none());
    let (txn, parts) = commit_of(c.at(110 * MS)).expect("the window passed");
    assert_eq!(parts, vec![(0, 1)]);
    c.now = 114 * MS;
    c.committed(txn, vec![vec![0]]);
    assert_eq!(
        c.e.pacing().window(),
        10 * MS,
        "a 4 ms commit leaves 16: capped at 10"
    );
    for (t, v) in [(2, 2), (3, 3)] {
        assert!(commit_of(c.cast(0, t, v)).is_none());
    }
    let (_, parts) = commit_of(c.cast(0, 4, 4)).expect("full: at once");
    assert_eq!(parts, vec![(0, 3)]);
}

#[test]
fn a_revoked_partition_is_handed_off_only_after_its_transaction_ended() {
    let mut c = Core::new(cfg(100, PacingConfig::IMMEDIATE));
    c.own(&[2, 3]);
    let (txn, _) = commit_of(c.cast(2, 1, 5)).unwrap();
    let out = c.on(Event::Revoked {
        partitions: vec![2],
        lost: false,
        ack: 7,
    });
    assert!(
        !out.iter().any(|c| matches!(c, Command::RevokeDone { .. })),
        "its transaction is in flight"
    );
    assert_eq!(
        answers(c.cast(2, 2, 6)),
        vec![(2, None, Some(ErrorCode::Unavailable))],
        "a leaving partition takes no new vote"
    );
    let out = c.committed(txn, vec![vec![9]]);
    assert_eq!(answers(out), vec![(1, Some(9), None)]);
    assert!(
        out.iter()
            .any(|c| matches!(c, Command::RevokeDone { ack: 7 }))
    );
    assert!(out.iter().any(|c| matches!(
        c,
        Command::Status {
            partition: 2,
            state: ShardState::Released,
            ..
        }
    )));
    assert_eq!(c.e.claim_of(2), None);
    assert!(c.e.claim_of(3).is_some(), "the other partition stays");
}

#[test]
fn an_unknown_outcome_reopens_the_producer_and_replays_before_accepting_again() {
    let mut c = Core::new(cfg(100, PacingConfig::IMMEDIATE));
    c.own(&[0, 1]);
    let (txn, _) = commit_of(c.cast(0, 1, 5)).unwrap();
    c.cast(1, 2, 6);
    let out = c.ended(txn, TxnOutcome::Unknown);
    assert_eq!(answers(out), vec![(1, None, Some(ErrorCode::Unavailable))]);
    let attempt = open_attempt(out).expect("a new producer resolves the uncertain transaction");
    assert_eq!(
        answers(c.cast(0, 3, 7)),
        vec![(3, None, Some(ErrorCode::Unavailable))],
        "partition 0 is recovering"
    );
    let out = c.on(Event::ProducerOpened {
        attempt,
        result: Ok(()),
    });
    let mut recovers = take_recovers(out);
    assert_eq!(recovers.len(), 1, "only the uncertain partition replays");
    let (p, claim, mut shard) = recovers.pop().unwrap();
    assert_eq!(p, 0);
    // The replay found the uncertain vote committed.
    assert_eq!(
        shard.applied_end(),
        0,
        "the shard kept its state; the replay continues from it"
    );
    shard.apply_committed(
        0,
        &votes_core::VoteRecord {
            election: ElectionId::new("e").unwrap(),
            voter: VoterId(5),
            option: OptionId::new("a").unwrap(),
            received_at_ms: 0,
            node: "n1".into(),
            core: 0,
            nonce: [0; 16],
        },
    );
    shard.finish_recovery(1);
    let out = c.on(Event::Recovered {
        partition: 0,
        claim,
        shard: Some(shard),
    });
    // Partition 1's queued vote went in a transaction as soon as the producer opened.
    assert!(commit_of(out).is_some() || c.e.txn_in_flight());
    assert_eq!(
        answers(c.cast(0, 4, 5)),
        vec![(4, None, Some(ErrorCode::AlreadyVoted))],
        "the uncertain vote had committed: its retry is a duplicate"
    );
}

#[test]
fn a_fenced_core_stops_then_takes_back_only_what_the_group_still_assigns() {
    let mut c = Core::new(cfg(100, PacingConfig::IMMEDIATE));
    c.own(&[0, 1]);
    let (txn, _) = commit_of(c.cast(0, 1, 5)).unwrap();
    let out = c.ended(txn, TxnOutcome::Fenced);
    assert_eq!(answers(out), vec![(1, None, Some(ErrorCode::Unavailable))]);
    assert_eq!(
        answers(c.cast(1, 2, 6)),
        vec![(2, None, Some(ErrorCode::Unavailable))],
        "every partition of the core stops"
    );
    // The member hears that partition 1 moved.
    let out = c.on(Event::Revoked {
        partitions: vec![1],
        lost: true,
        ack: 1,
    });
    assert!(
        out.iter()
            .any(|c| matches!(c, Command::RevokeDone { ack: 1 }))
    );
    assert_eq!(c.e.next_deadline(), Some(3_000 * MS));
    let out = c.at(3_000 * MS);
    assert!(
        out.iter()
            .any(|c| matches!(c, Command::OpenProducer { .. }))
    );
    assert!(
        out.iter()
            .any(|c| matches!(c, Command::Claimed { partition: 0, .. }))
    );
    assert!(
        !out.iter()
            .any(|c| matches!(c, Command::Claimed { partition: 1, .. }))
    );
}

#[test]
fn a_replay_that_ends_after_its_claim_is_ignored_and_a_failed_one_is_retried() {
    let mut c = Core::new(cfg(100, PacingConfig::IMMEDIATE));
    let out = c.on(Event::Assigned {
        partitions: vec![5],
        generation: Generation(1),
    });
    assert!(matches!(out[0], Command::Claimed { partition: 5, .. }));
    c.on(Event::ProducerOpened {
        attempt: 0,
        result: Ok(()),
    });
    // Already out replaying when the producer opened: nothing to collect here, so take the
    // command from a fresh assignment of another partition instead.
    let out = c.on(Event::Assigned {
        partitions: vec![6],
        generation: Generation(2),
    });
    let (p, claim, _shard) = take_recovers(out).pop().expect("the producer is open");
    assert_eq!(p, 6);
    c.now = 10 * MS;
    c.on(Event::Recovered {
        partition: 6,
        claim,
        shard: None,
    });
    assert_eq!(
        c.e.next_deadline(),
        Some(110 * MS),
        "retried after the backoff"
    );
    let (p2, claim2, mut shard) = take_recovers(c.at(110 * MS)).pop().expect("retried");
    assert_eq!((p2, claim2), (6, claim), "the same claim tries again");
    shard.finish_recovery(0);
    c.on(Event::Revoked {
        partitions: vec![6],
        lost: false,
        ack: 3,
    });
    let out = c.on(Event::Recovered {
        partition: 6,
        claim,
        shard: Some(shard),
    });
    assert!(out.is_empty(), "the claim ended while it replayed");
}

#[test]
fn a_close_refuses_new_votes_answers_the_queued_and_commits_a_marker_after_the_rest() {
    let mut c = Core::new(cfg(100, HOLDING));
    c.own(&[0, 1]);
    // Two votes queued (pacing holds them), a third in another election.
    for (t, v) in [(1, 10), (2, 11)] {
        assert!(commit_of(c.cast(0, t, v)).is_none());
    }
    let mut other = vote(3, 12);
    other.intent.election = ElectionId::new("f").unwrap();
    c.on(Event::Vote {
        partition: 1,
        vote: other,
    });
    let out = c.on(Event::Close {
        election: ElectionId::new("e").unwrap(),
        at_ms: 77,
    });
    assert_eq!(
        answers(out),
        vec![
            (1, None, Some(ErrorCode::ElectionNotOpen)),
            (2, None, Some(ErrorCode::ElectionNotOpen))
        ],
        "queued, not yet in a transaction: refused"
    );
    assert_eq!(
        answers(c.cast(1, 4, 13)),
        vec![(4, None, Some(ErrorCode::ElectionNotOpen))],
        "a new vote of the closed election, on any partition"
    );
    // The markers go in the next transaction, with the other election's vote.
    let out = c.at(10 * MS);
    let (txn, parts) = commit_of(out).expect("markers are due");
    assert_eq!(
        parts,
        vec![(0, 1), (1, 2)],
        "a marker per partition, after the vote"
    );
    let Some(Command::Commit { batches, .. }) =
        out.iter().find(|c| matches!(c, Command::Commit { .. }))
    else {
        unreachable!()
    };
    for b in batches {
        let (key, value) = b.record(b.len() - 1);
        assert_eq!(key, &votes_core::record::CLOSE_RECORD_KEY);
        assert!(matches!(
            votes_core::record::LogRecord::decode(value),
            Ok(votes_core::record::LogRecord::Close(m)) if m.closed_at_ms == 77 && m.election.as_str() == "e"
        ));
        assert_eq!(b.markers, 1);
    }
    let offsets = vec![vec![5], vec![7, 8]];
    let (b0, b1) = (&batches[0], &batches[1]);
    let offsets = if b0.partition == 0 {
        offsets
    } else {
        vec![offsets[1].clone(), offsets[0].clone()]
    };
    let _ = b1;
    let out = c.committed(txn, offsets);
    assert_eq!(answers(out), vec![(3, Some(7), None)]);
    assert!(
        !c.e.txn_in_flight() && c.e.next_deadline().is_none(),
        "nothing more is due"
    );
    assert_eq!(
        c.e.active_shard(0).unwrap().closing("e"),
        Some(crate::shard::Closing::Closed { frontier: 5 })
    );
}
