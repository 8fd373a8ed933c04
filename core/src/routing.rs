//! Voter → partition routing: `xxh3_64(voter key) % partitions` (DESIGN §4.4).
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
