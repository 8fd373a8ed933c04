//! The shard with its real commit driver and recovery against the real broker (DESIGN §3.1-3.3):
//! votes are acknowledged only with the offsets Kafka gave them, a replay of the committed log
//! rebuilds exactly the same voter sets and tallies, and a second owner fences the first.

mod common;

use std::time::Duration;

use common::{KAFKA, Service, replication, require, runtime, unique_prefix};
use votes_core::{ElectionId, ErrorCode, Names, OptionId, VoterId};
use votes_tally::commit::PartitionProducer;
use votes_tally::provision::{TopicPlan, create_topics};
use votes_tally::recovery::replay;
use votes_tally::shard::{Answer, CommitOutcome, Shard, ShardConfig, ShardState, Submitted, Vote};

const T: Duration = Duration::from_secs(30);

fn setup(test: &str) -> Names {
    require(Service::Kafka);
    let names = Names::new(unique_prefix(test)).unwrap();
    runtime()
        .block_on(create_topics(
            &KAFKA,
            &names,
            &TopicPlan {
                partitions: 2,
                replication: replication(),
                timeout: T,
            },
        ))
        .expect("topics created");
    names
}

fn recovered_shard(names: &Names, partition: u32) -> Shard {
    let cfg = ShardConfig {
        partition,
        node: "test".into(),
        core: 0,
        max_batch: 32,
        max_queued: 1024,
    };
    replay(&KAFKA, names, Shard::new(cfg), T, |_| {}).expect("replay")
}

fn vote(ticket: u64, election: &str, voter: u64, option: &str) -> Vote {
    Vote {
        ticket,
        election: ElectionId::new(election).unwrap(),
        voter: VoterId(voter),
        option: OptionId::new(option).unwrap(),
        received_at_ms: 1,
        nonce: [ticket as u8; 16],
    }
}

/// Commits everything queued in `shard`, returning every answer.
fn commit_all(shard: &mut Shard, producer: &PartitionProducer) -> Vec<Answer> {
    let mut answers = Vec::new();
    while let Some(batch) = shard.take_batch() {
        let outcome = producer.commit(&batch);
        answers.extend(shard.on_outcome(batch.seq, outcome));
    }
    answers
}

#[test]
fn committed_votes_are_acknowledged_with_their_offsets_and_replay_to_the_same_state() {
    let names = setup("commit");
    let partition = 1;
    let mut shard = recovered_shard(&names, partition);
    assert_eq!(shard.state(), ShardState::Active);
    let producer =
        PartitionProducer::open(&KAFKA, &names, partition, T, Duration::from_millis(1)).unwrap();

    for i in 0..100u64 {
        let election = if i % 2 == 0 { "e-even" } else { "e-odd" };
        assert_eq!(
            shard.submit(vote(
                i,
                election,
                i,
                ["red", "blue", "green"][(i % 3) as usize]
            )),
            Submitted::Queued
        );
    }
    let answers = commit_all(&mut shard, &producer);
    assert_eq!(answers.len(), 100);
    let offsets: Vec<u64> = answers
        .iter()
        .map(|a| match a {
            Answer::Accepted { offset, .. } => *offset,
            other => panic!("expected accepted, got {other:?}"),
        })
        .collect();
    assert!(
        offsets.windows(2).all(|w| w[0] < w[1]),
        "offsets grow: {offsets:?}"
    );

    // A duplicate of a committed vote is refused at once.
    assert_eq!(
        shard.submit(vote(1000, "e-even", 0, "blue")),
        Submitted::Answered(Answer::Rejected {
            ticket: 1000,
            code: ErrorCode::AlreadyVoted
        })
    );

    // A new owner rebuilds the same state from the committed log alone.
    drop(producer);
    let rebuilt = recovered_shard(&names, partition);
    // The replay ends past the last commit marker; the live shard one past its last record.
    assert_eq!(rebuilt.applied_end(), shard.applied_end() + 1);
    for e in ["e-even", "e-odd"] {
        let e = ElectionId::new(e).unwrap();
        assert_eq!(rebuilt.voters(&e), 50);
        assert_eq!(rebuilt.tallies(&e), shard.tallies(&e));
    }
    assert_eq!(rebuilt.log_duplicates(), 0);
}

#[test]
fn a_new_owner_fences_the_old_one_whose_votes_are_never_counted() {
    let names = setup("fence-shard");
    let partition = 0;
    let mut old = recovered_shard(&names, partition);
    let old_producer =
        PartitionProducer::open(&KAFKA, &names, partition, T, Duration::from_millis(1)).unwrap();
    old.submit(vote(1, "e", 1, "red"));
    assert!(matches!(
        commit_all(&mut old, &old_producer)[0],
        Answer::Accepted { .. }
    ));

    // The new owner fences first, then recovers: it sees the old owner's committed vote.
    let new_producer =
        PartitionProducer::open(&KAFKA, &names, partition, T, Duration::from_millis(1)).unwrap();
    let mut new = recovered_shard(&names, partition);
    assert!(new.has_voted(&ElectionId::new("e").unwrap(), VoterId(1)));

    old.submit(vote(2, "e", 2, "red"));
    let batch = old.take_batch().unwrap();
    assert_eq!(old_producer.commit(&batch), CommitOutcome::Fenced);
    let answers = old.on_outcome(batch.seq, CommitOutcome::Fenced);
    assert_eq!(
        answers,
        vec![Answer::Rejected {
            ticket: 2,
            code: ErrorCode::Unavailable
        }]
    );
    assert_eq!(old.state(), ShardState::Fenced);

    new.submit(vote(3, "e", 3, "blue"));
    assert!(matches!(
        commit_all(&mut new, &new_producer)[0],
        Answer::Accepted { .. }
    ));

    let e = ElectionId::new("e").unwrap();
    let after = recovered_shard(&names, partition);
    assert!(after.has_voted(&e, VoterId(1)) && after.has_voted(&e, VoterId(3)));
    assert!(
        !after.has_voted(&e, VoterId(2)),
        "the fenced owner's vote is not in the committed log"
    );
}
