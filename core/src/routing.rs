//! Voter → partition routing: `xxh3_64(voter key) % partitions` (docs/design.md §4.4).
//!
//! The router on every core and Kafka's record key must agree, so both derive from
//! [`voter_key`]; never hash the voter any other way.

use crate::ids::VoterId;

/// The Kafka record key of a voter: 8 bytes, big-endian.
#[inline]
pub fn voter_key(voter: VoterId) -> [u8; 8] {
    voter.0.to_be_bytes()
}

/// The partition of `votes` that owns `voter`.
///
/// # Panics
/// When `partitions` is zero: a topic always has at least one partition, so a zero here is a
/// configuration bug that must not silently route everything to partition 0.
#[inline]
pub fn partition_of(voter: VoterId, partitions: u32) -> u32 {
    assert!(partitions > 0, "the votes topic has at least one partition");
    let hash = xxhash_rust::xxh3::xxh3_64(&voter_key(voter));
    // The remainder is < partitions ≤ u32::MAX, so the narrowing is exact.
    (hash % u64::from(partitions)) as u32
}

/// Write-shard buckets of an election in DynamoDB (docs/design.md §4.4). A DynamoDB partition takes at
/// most 1,000 writes/s, so a 250,000 votes/s peak in one election needs its items spread over
/// at least 250 partition keys; 1,024 buckets keep each at ~244 writes/s, a quarter of the
/// limit (docs/capacity.md; 256 would run them at 98%). Fixed once a deployment holds data: the
/// recount queries every bucket, and an item's key must never move.
pub const VOTE_BUCKETS: u32 = 1024;

/// Seed of the bucket hash: a different function from the partition hash, so the voters of one
/// Kafka partition still spread over every bucket.
const BUCKET_SEED: u64 = 0x766f_7465_732d_6262; // "votes-bb"

/// The DynamoDB write-shard bucket of `voter`: `xxh3_64_with_seed(voter key, seed) % 1024`.
#[inline]
pub fn bucket_of(voter: VoterId) -> u32 {
    let hash = xxhash_rust::xxh3::xxh3_64_with_seed(&voter_key(voter), BUCKET_SEED);
    (hash % u64::from(VOTE_BUCKETS)) as u32
}

/// The partition key of a vote item: `{election}#{bucket}`.
pub fn vote_item_pk(election: &str, voter: VoterId) -> String {
    format!("{election}#{}", bucket_of(voter))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn buckets_are_pinned_and_independent_of_partitions() {
        let got: Vec<u32> = (0..6u64).map(|v| bucket_of(VoterId(v))).collect();
        assert_eq!(
            got,
            [443, 918, 108, 291, 988, 681],
            "pinned: items never move"
        );
        assert!(got.iter().all(|b| *b < VOTE_BUCKETS));
        assert_eq!(
            vote_item_pk("e1", VoterId(42)),
            format!("e1#{}", bucket_of(VoterId(42)))
        );
        // Voters of one partition reach (nearly) every bucket.
        let buckets: std::collections::HashSet<u32> = (0..200_000u64)
            .map(VoterId)
            .filter(|v| partition_of(*v, 8) == 3)
            .map(bucket_of)
            .collect();
        assert_eq!(buckets.len(), VOTE_BUCKETS as usize);
    }

    #[test]
    fn is_pinned_to_xxh3_of_the_big_endian_key() {
        // Pinned values: changing the routing function would move voters between partitions
        // and break dedup against the committed log, so this must never change silently.
        assert_eq!(
            voter_key(VoterId(0x0102_0304_0506_0708)),
            [1, 2, 3, 4, 5, 6, 7, 8]
        );
        assert_eq!(
            xxhash_rust::xxh3::xxh3_64(&voter_key(VoterId(42))),
            0x2e4f_e982_b689_10ac
        );
        let got: Vec<u32> = (0..16u64).map(|v| partition_of(VoterId(v), 8)).collect();
        assert_eq!(got, [1, 3, 4, 5, 6, 6, 2, 4, 2, 4, 4, 2, 0, 6, 1, 0]);
    }

    #[test]
    fn spreads_voters_evenly() {
        let partitions = 16u32;
        let mut counts = vec![0u32; partitions as usize];
        let n = 160_000u64;
        for v in 0..n {
            counts[partition_of(VoterId(v), partitions) as usize] += 1;
        }
        let mean = (n / u64::from(partitions)) as f64;
        for (p, c) in counts.iter().enumerate() {
            let skew = (f64::from(*c) - mean).abs() / mean;
            assert!(skew < 0.05, "partition {p} holds {c} voters, mean {mean}");
        }
    }

    proptest! {
        #[test]
        fn always_in_range(voter in any::<u64>(), partitions in 1u32..10_000) {
            prop_assert!(partition_of(VoterId(voter), partitions) < partitions);
        }
    }
}
