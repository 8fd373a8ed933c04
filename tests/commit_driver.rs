//! A core's real committer and recovery against the real broker (docs/design.md §3.1-3.3): one
//! transaction spans every partition of the core; votes are acknowledged only with the offsets
//! Kafka gave them; a replay of the committed log rebuilds exactly the same voter sets and
//! tallies; and a core stopped between producing and committing a transaction over several
//! partitions never gets any of those votes counted once a new owner took over — whether the
//! new owner fences it, or only the group moved on (its offsets carry a stale generation). The
//! same holds for a node's committer, whose transaction carries several cores' parts.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::KAFKA;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerGroupMetadata};
use votes_core::{ElectionId, ErrorCode, Names, OptionId, VoteIntent, VoterId};
use votes_tally::committer::{CommitterConfig, Part, Scope, TxnFailure, TxnProducer};
use votes_tally::engine::TxnOutcome;
use votes_tally::recovery::{RecoveryClients, Stable, await_stable, replay};
use votes_tally::shard::{Answer, CommitOutcome, Shard, ShardConfig, ShardState, Submitted, Vote};

const T: Duration = Duration::from_secs(30);

fn setup(test: &str) -> Names {
    common::fresh_topics(test, 2)
}

/// A shard of `partition` replayed from the committed log; its records name `node`, core 0.
fn recovered_shard(names: &Names, partition: u32) -> Shard {
    recovered_shard_of(names, partition, "test")
}

fn recovered_shard_of(names: &Names, partition: u32, node: &str) -> Shard {
    let clients = RecoveryClients::new(&KAFKA, names).expect("recovery's clients");
    replayed(&clients, partition, node)
}

/// A new shard of `partition` replayed on `clients`, which may have replayed others before.
fn replayed(clients: &RecoveryClients, partition: u32, node: &str) -> Shard {
    let cfg = ShardConfig {
        partition,
        node: node.into(),
        core: 0,
        max_batch: 256,
        max_queued: 1024,
    };
    replay(clients, Shard::new(cfg), 0, T, |_| {}).expect("replay")
}

fn vote(ticket: u64, election: &str, voter: u64, option: &str) -> Vote {
    Vote {
        ticket,
        intent: VoteIntent {
            election: ElectionId::new(election).unwrap(),
            voter: VoterId(voter),
            option: OptionId::new(option).unwrap(),
            received_at_ms: 1,
            nonce: [ticket as u8; 16],
        },
    }
}

fn producer(names: &Names, node: &str) -> TxnProducer {
    producer_of(names, node, Scope::Core(0))
}

fn producer_of(names: &Names, node: &str, scope: Scope) -> TxnProducer {
    TxnProducer::open(&CommitterConfig {
        brokers: KAFKA.clone(),
        names: names.clone(),
        node: node.into(),
        scope,
        timeout: T,
    })
    .expect("the committer's producer opens")
}

/// A member of the serve group, polled until the group gave it a generation.
fn member(names: &Names, instance: &str) -> (BaseConsumer, Arc<ConsumerGroupMetadata>) {
    let consumer = common::serve_group_member(names, instance, &[("session.timeout.ms", "6000")]);
    let deadline = Instant::now() + T;
    while consumer.assignment().map(|a| a.count()).unwrap_or(0) == 0 {
        assert!(
            Instant::now() < deadline,
            "{instance} never got an assignment"
        );
        let _ = consumer.poll(Duration::from_millis(100));
    }
    let group = consumer
        .group_metadata()
        .expect("a member has group metadata");
    (consumer, Arc::new(group))
}

/// Commits everything queued in the shards, one transaction over all of them at a time.
fn commit_all(
    shards: &mut [&mut Shard],
    producer: &mut TxnProducer,
    group: &ConsumerGroupMetadata,
) -> Vec<Answer> {
    let mut answers = Vec::new();
    loop {
        let mut batches = Vec::new();
        for s in shards.iter_mut() {
            batches.extend(s.take_batch());
        }
        if batches.is_empty() {
            return answers;
        }
        let outcome = producer.commit(&batches, group);
        answers.extend(settle(shards, &batches, outcome));
    }
}

fn settle(
    shards: &mut [&mut Shard],
    batches: &[votes_tally::shard::Batch],
    outcome: TxnOutcome,
) -> Vec<Answer> {
    let mut answers = Vec::new();
    for (i, b) in batches.iter().enumerate() {
        let shard = shards
            .iter_mut()
            .find(|s| s.partition() == b.partition)
            .unwrap();
        let o = match &outcome {
            TxnOutcome::Committed { offsets } => CommitOutcome::Committed {
                offsets: offsets[i].clone(),
            },
            TxnOutcome::Aborted => CommitOutcome::Aborted,
            TxnOutcome::Fenced => CommitOutcome::Fenced,
            TxnOutcome::Unknown => CommitOutcome::Unknown,
        };
        answers.extend(shard.on_outcome(b.seq, o));
    }
    answers
}

#[test]
fn one_transaction_over_both_partitions_is_acknowledged_with_its_offsets_and_replays_the_same() {
    let names = setup("commit");
    let (_member, group) = member(&names, "test-0");
    let (mut p0, mut p1) = (recovered_shard(&names, 0), recovered_shard(&names, 1));
    assert_eq!(p0.state(), ShardState::Active);
    let mut producer = producer(&names, "test");

    for i in 0..100u64 {
        let election = if i % 2 == 0 { "e-even" } else { "e-odd" };
        let shard = if i % 4 < 2 { &mut p0 } else { &mut p1 };
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
    let answers = commit_all(&mut [&mut p0, &mut p1], &mut producer, &group);
    assert_eq!(answers.len(), 100);
    for shard in [&p0, &p1] {
        assert_eq!(
            shard.voters(&ElectionId::new("e-even").unwrap())
                + shard.voters(&ElectionId::new("e-odd").unwrap()),
            50
        );
    }
    let offsets: Vec<u64> = answers
        .iter()
        .filter(|a| matches!(a, Answer::Accepted { vote, .. } if vote.ticket % 4 < 2))
        .map(|a| match a {
            Answer::Accepted { offset, .. } => *offset,
            other => panic!("expected accepted, got {other:?}"),
        })
        .collect();
    assert_eq!(
        offsets,
        (0..50).collect::<Vec<u64>>(),
        "partition 0's offsets, in order"
    );

    // A duplicate of a committed vote is refused at once.
    assert_eq!(
        p0.submit(vote(1000, "e-even", 0, "blue")),
        Submitted::Answered(Answer::Rejected {
            ticket: 1000,
            code: ErrorCode::AlreadyVoted
        })
    );

    // A new owner rebuilds the same state from the committed log alone, on recovery's clients
    // lent again and again: each replay but the first reads on a consumer that replayed
    // another partition, or this one, before.
    drop(producer);
    let clients = RecoveryClients::new(&KAFKA, &names).expect("recovery's clients");
    for live in [&p0, &p1, &p1, &p0] {
        let rebuilt = replayed(&clients, live.partition(), "test");
        // The replay ends past the last commit marker; the live shard one past its last record.
        assert_eq!(rebuilt.applied_end(), live.applied_end() + 1);
        for e in ["e-even", "e-odd"] {
            let e = ElectionId::new(e).unwrap();
            assert_eq!(rebuilt.voters(&e), live.voters(&e));
            assert_eq!(rebuilt.tallies(&e), live.tallies(&e));
        }
        assert_eq!(rebuilt.log_duplicates(), 0);
    }
}

/// How the new owner meets the zombie's open transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NewOwner {
    /// Fences its writer once the grace (none here) is over.
    FencesAfterItsGrace,
    /// Fences its writer at once: the group says the writer's node has left.
    FencesAWriterWhoseNodeLeft,
    /// Does not wait for it: the zombie's commit meets the group's new generation.
    Waits,
}

/// The zombie's view: one committed vote per partition, then a transaction over both that it
/// produces and, stopped, does not commit until the new owner took over. With `Scope::Node`
/// the zombie is a node's committer, its transaction two cores' parts (one partition each,
/// each part's offsets sent on their own), and the new owner fences the node's producer.
fn zombie_takes_over_case(test: &str, new_owner: NewOwner, scope: Scope) {
    let new_owner_fences = new_owner != NewOwner::Waits;
    let names = setup(test);
    let (zombie_member, zombie_group) = member(&names, "zombie-0");
    let (mut z0, mut z1) = (
        recovered_shard_of(&names, 0, "zombie"),
        recovered_shard_of(&names, 1, "zombie"),
    );
    let mut zombie = producer_of(&names, "zombie", scope);
    z0.submit(vote(1, "e", 10, "red"));
    z1.submit(vote(2, "e", 11, "red"));
    let first = commit_all(&mut [&mut z0, &mut z1], &mut zombie, &zombie_group);
    assert!(first.iter().all(|a| matches!(a, Answer::Accepted { .. })));

    z0.submit(vote(3, "e", 20, "blue"));
    z1.submit(vote(4, "e", 21, "blue"));
    let batches: Vec<_> = [&mut z0, &mut z1]
        .into_iter()
        .filter_map(|s| s.take_batch())
        .collect();
    assert_eq!(batches.len(), 2, "the transaction spans both partitions");
    let mut taken_over = Vec::new();
    let parts: Vec<Part<'_>> = match scope {
        Scope::Core(_) => vec![Part {
            batches: &batches,
            group: &zombie_group,
        }],
        Scope::Node => batches
            .chunks(1)
            .map(|b| Part {
                batches: b,
                group: &zombie_group,
            })
            .collect(),
    };
    let outcome = zombie.commit_parts(&parts, || {
        // Stopped with its records open in both partitions. The group moves on: its member
        // is gone, another takes the partitions.
        drop(zombie_member);
        let (_owner_member, owner_group) = member(&names, "owner-0");
        let mut owner = producer(&names, "owner");
        let mut shards = Vec::new();
        let clients = RecoveryClients::new(&KAFKA, &names).expect("recovery's clients");
        for p in 0..2 {
            let stable = |grace, writer_gone: fn(&str) -> bool, timeout| {
                await_stable(Stable {
                    clients: &clients,
                    partition: p,
                    me: ("owner", 0),
                    still_owner: || true,
                    writer_gone,
                    grace,
                    timeout,
                })
            };
            match new_owner {
                NewOwner::FencesAfterItsGrace => stable(Duration::ZERO, |_| false, T),
                // An hour's grace, and a bound (6 × 5 s) below the broker's transaction
                // timeout (60 s): only a fence at once resolves it in time.
                NewOwner::FencesAWriterWhoseNodeLeft => stable(
                    Duration::from_secs(3600),
                    |node| node == "zombie",
                    Duration::from_secs(5),
                ),
                NewOwner::Waits => Ok(0),
            }
            .expect("the zombie's transaction is resolved");
            shards.push(recovered_shard_of(&names, p, "owner"));
        }
        let (mut o0, mut o1) = (shards.remove(0), shards.remove(0));
        o0.submit(vote(5, "e", 20, "green"));
        o1.submit(vote(6, "e", 31, "green"));
        taken_over = commit_all(&mut [&mut o0, &mut o1], &mut owner, &owner_group);
    });
    let failure = match outcome {
        Ok(offsets) => panic!("the zombie committed after the takeover, at {offsets:?}"),
        Err(failure) => failure,
    };
    if new_owner_fences {
        assert_eq!(
            failure,
            TxnFailure {
                outcome: TxnOutcome::Fenced,
                refused_part: None
            },
            "the new owner fenced the zombie's producer"
        );
    } else {
        // The refusal names the part whose member the group no longer knows: that core's
        // member is stale, and a core refused long enough asks for a new client.
        assert_eq!(
            failure,
            TxnFailure {
                outcome: TxnOutcome::Aborted,
                refused_part: Some(0)
            },
            "the coordinator refused the stale generation's offsets, the first part's first"
        );
    }
    let outcome = failure.outcome;
    let answers = settle(&mut [&mut z0, &mut z1], &batches, outcome);
    assert!(
        answers.iter().all(|a| matches!(
            a,
            Answer::Rejected {
                code: ErrorCode::Unavailable,
                ..
            }
        )),
        "the zombie acknowledges nothing: {answers:?}"
    );
    assert!(
        taken_over
            .iter()
            .all(|a| matches!(a, Answer::Accepted { .. })),
        "{taken_over:?}"
    );

    let e = ElectionId::new("e").unwrap();
    let (after0, after1) = (recovered_shard(&names, 0), recovered_shard(&names, 1));
    assert!(after0.has_voted(&e, VoterId(10)) && after1.has_voted(&e, VoterId(11)));
    assert!(
        !after1.has_voted(&e, VoterId(21)),
        "none of the zombie's transaction is in the committed log"
    );
    let mut counts = after0.tallies(&e).cloned().unwrap_or_default();
    assert_eq!(
        counts.remove(&OptionId::new("green").unwrap()),
        Some(1),
        "voter 20 counts once, for the new owner's vote"
    );
    assert_eq!(counts.remove(&OptionId::new("blue").unwrap()), None);
    assert!(after1.has_voted(&e, VoterId(31)));
}

#[test]
fn a_core_paused_mid_transaction_is_fenced_by_the_new_owner_and_none_of_its_votes_count() {
    zombie_takes_over_case(
        "zombie-fenced",
        NewOwner::FencesAfterItsGrace,
        Scope::Core(0),
    );
}

#[test]
fn a_core_paused_mid_transaction_is_fenced_at_once_when_its_node_left_the_group() {
    zombie_takes_over_case(
        "zombie-gone",
        NewOwner::FencesAWriterWhoseNodeLeft,
        Scope::Core(0),
    );
}

#[test]
fn a_core_paused_mid_transaction_cannot_commit_with_a_stale_generation() {
    zombie_takes_over_case("zombie-generation", NewOwner::Waits, Scope::Core(0));
}

#[test]
fn a_node_committer_paused_mid_transaction_is_fenced_by_the_new_owner_and_none_of_its_votes_count()
{
    zombie_takes_over_case(
        "zombie-node-fenced",
        NewOwner::FencesAfterItsGrace,
        Scope::Node,
    );
}

#[test]
fn a_node_committer_paused_mid_transaction_cannot_commit_with_a_stale_generation() {
    zombie_takes_over_case("zombie-node-generation", NewOwner::Waits, Scope::Node);
}

/// A node's committer carries two cores' parts in one transaction: each part's offsets are
/// committed with its own group metadata, each part hears its own records' offsets, and the
/// log replays to the same state.
#[test]
fn a_node_transaction_carries_each_cores_part_with_its_own_offsets() {
    let names = setup("node-commit");
    let (_member, group) = member(&names, "node-0");
    let (mut p0, mut p1) = (recovered_shard(&names, 0), recovered_shard(&names, 1));
    let mut node = producer_of(&names, "test", Scope::Node);
    for i in 0..40u64 {
        let shard = if i % 2 == 0 { &mut p0 } else { &mut p1 };
        assert_eq!(shard.submit(vote(i, "e", i, "red")), Submitted::Queued);
    }
    let (b0, b1) = (p0.take_batch().unwrap(), p1.take_batch().unwrap());
    let (core0, core1) = (vec![b0], vec![b1]);
    let offsets = node
        .commit_parts(
            &[
                Part {
                    batches: &core0,
                    group: &group,
                },
                Part {
                    batches: &core1,
                    group: &group,
                },
            ],
            || {},
        )
        .expect("the node's transaction commits");
    assert_eq!(offsets.len(), 2, "one result per part");
    for (part, batches) in offsets.iter().zip([&core0, &core1]) {
        assert_eq!(part.len(), 1);
        assert_eq!(
            part[0],
            (0..20).collect::<Vec<u64>>(),
            "each partition from 0"
        );
        settle(
            &mut [&mut p0, &mut p1],
            batches,
            TxnOutcome::Committed {
                offsets: part.clone(),
            },
        );
    }
    let e = ElectionId::new("e").unwrap();
    for live in [&p0, &p1] {
        let rebuilt = recovered_shard(&names, live.partition());
        assert_eq!(rebuilt.voters(&e), 20);
        assert_eq!(rebuilt.tallies(&e), live.tallies(&e));
    }
}
