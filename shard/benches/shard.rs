//! The shard's per-vote work on the hot path, end to end without I/O: `submit` (dedup against
//! the voter set and the pending map), `take_batch` (batch assembly: encoding every record into
//! one buffer) and `on_outcome(Committed)` (tally, voter set insert, answers), for batches of
//! the default `--batch-max` (2,048). Reported per vote.
//!
//! Peers measured in the same run:
//! - dedup + tally: the obvious structure, a `HashSet<(String, u64)>` of (election, voter) and a
//!   `HashMap<(String, String), u64>` of counts, checked and updated per vote;
//! - batch assembly: one `Vec<u8>` per record (what a producer API taking owned records
//!   invites), the same encoding.
//!
//! Run: `cargo bench -p votes-shard --bench shard -- --warm-up-time 1 --measurement-time 3`.

use std::collections::{HashMap, HashSet};
use std::hint::black_box;

use criterion::measurement::WallTime;
use criterion::{
    BatchSize, BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main,
};
use votes_core::{ElectionId, OptionId, VoteIntent, VoteRecord, VoterId};
use votes_shard::shard::{CommitOutcome, Shard, ShardConfig, Submitted, Vote};

const BATCH: usize = 2_048;

fn active_shard() -> Shard {
    let mut shard = Shard::new(ShardConfig {
        partition: 0,
        node: "node-1".into(),
        core: 0,
        max_batch: BATCH,
        max_queued: 4 * BATCH,
    });
    shard.finish_recovery(0);
    shard
}

fn votes(first_voter: u64, n: usize) -> Vec<Vote> {
    let election = ElectionId::new("tv-final-2026").unwrap();
    let options: Vec<OptionId> = (0..8)
        .map(|i| OptionId::new(format!("candidate-{i}")).unwrap())
        .collect();
    (0..n as u64)
        .map(|i| Vote {
            ticket: i,
            intent: VoteIntent {
                election: election.clone(),
                // Spread like real ids: not consecutive.
                voter: VoterId((first_voter + i).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 20),
                option: options[(i % 8) as usize].clone(),
                received_at_ms: 1_790_000_000_000,
                nonce: [7; 16],
            },
        })
        .collect()
}

/// Fills the structure under test with 1,000,000 voters through `process`, then measures
/// `process` on batches of `BATCH` voters that follow (each iteration new ones, counted from
/// where the fill stopped): dedup checks hit a realistic set, and a vote is never a duplicate,
/// which would measure the cheaper refusal instead.
fn bench_after_a_million_voters<R>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    mut process: impl FnMut(Vec<Vote>) -> R,
) {
    let mut next_voter = 0u64;
    while next_voter < 1_000_000 {
        process(votes(next_voter, BATCH));
        next_voter += BATCH as u64;
    }
    g.bench_function(name, |b| {
        b.iter_batched(
            || {
                let v = votes(next_voter, BATCH);
                next_voter += BATCH as u64;
                v
            },
            |v| black_box(process(v)),
            BatchSize::LargeInput,
        )
    });
}

fn shard_cycle(c: &mut Criterion) {
    let mut g = c.benchmark_group("shard");
    g.throughput(Throughput::Elements(BATCH as u64));
    // A shard that already holds 1,000,000 voters: dedup checks hit a realistic set.
    let mut shard = active_shard();
    let mut offset = 0u64;
    let mut run_batch = |shard: &mut Shard, batch_votes: Vec<Vote>| {
        for v in batch_votes {
            let queued = shard.submit(v);
            debug_assert_eq!(queued, Submitted::Queued);
        }
        let batch = shard.take_batch().expect("a full batch");
        let offsets: Vec<u64> = (0..batch.len() as u64).map(|i| offset + i).collect();
        offset += batch.len() as u64;
        let answers = shard.on_outcome(batch.seq, CommitOutcome::Committed { offsets });
        assert_eq!(answers.len(), BATCH);
        answers
    };
    bench_after_a_million_voters(&mut g, "submit_batch_commit_per_vote", |v| {
        run_batch(&mut shard, v)
    });
    let mut seen: HashSet<(String, u64)> = HashSet::new();
    let mut counts: HashMap<(String, String), u64> = HashMap::new();
    let peer_batch = |seen: &mut HashSet<(String, u64)>,
                      counts: &mut HashMap<(String, String), u64>,
                      batch_votes: Vec<Vote>| {
        let mut accepted = 0usize;
        for v in batch_votes {
            if seen.insert((v.intent.election.as_str().to_string(), v.intent.voter.0)) {
                *counts
                    .entry((
                        v.intent.election.as_str().to_string(),
                        v.intent.option.as_str().to_string(),
                    ))
                    .or_default() += 1;
                accepted += 1;
            }
        }
        accepted
    };
    bench_after_a_million_voters(&mut g, "peer_hashset_dedup_tally_per_vote", |v| {
        peer_batch(&mut seen, &mut counts, v)
    });
    g.finish();
}

fn batch_assembly(c: &mut Criterion) {
    let mut g = c.benchmark_group("batch_assembly");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("take_batch_one_buffer", |b| {
        b.iter_batched(
            || {
                let mut shard = active_shard();
                for v in votes(0, BATCH) {
                    shard.submit(v);
                }
                shard
            },
            |mut shard| black_box(shard.take_batch().expect("queued votes").payload.len()),
            BatchSize::LargeInput,
        )
    });
    let records: Vec<VoteRecord> = votes(0, BATCH)
        .into_iter()
        .map(|v| VoteRecord {
            election: v.intent.election,
            voter: v.intent.voter,
            option: v.intent.option,
            received_at_ms: v.intent.received_at_ms,
            node: "node-1".into(),
            core: 0,
            nonce: v.intent.nonce,
        })
        .collect();
    g.bench_function("peer_vec_per_record", |b| {
        b.iter(|| {
            let owned: Vec<(Vec<u8>, Vec<u8>)> = records
                .iter()
                .map(|r| (r.voter.0.to_be_bytes().to_vec(), r.encode()))
                .collect();
            black_box(owned.len())
        })
    });
    g.finish();
}

criterion_group!(benches, shard_cycle, batch_assembly);
criterion_main!(benches);
