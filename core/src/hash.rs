//! Fast hashing for the per-core maps of the vote path (tickets, voters, elections).
//!
//! The standard library's SipHash resists hash flooding, which matters for maps keyed by what
//! a client chooses. These maps are not: tickets are the core's own sequence numbers, voters
//! are ids from tokens the service signed, elections are created by the operator. A
//! multiplicative hash for `u64` keys and xxh3 for strings cost a fraction of SipHash.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Fibonacci hashing: the multiply spreads a `u64` over every bit (hashbrown takes the table
/// index from the low bits and a tag from the top seven).
#[derive(Clone, Copy, Default)]
pub struct U64Hasher(u64);

const K: u64 = 0x9e37_79b9_7f4a_7c15;

impl Hasher for U64Hasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(K);
    }

    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 32)
    }
}

pub type BuildU64 = BuildHasherDefault<U64Hasher>;
/// A map keyed by the core's own integers (tickets, voter ids).
pub type U64Map<V> = HashMap<u64, V, BuildU64>;
/// A map keyed by strings the operator or the service chose (election ids).
pub type StrMap<K, V> = HashMap<K, V, xxhash_rust::xxh3::Xxh3DefaultBuilder>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn sequential_keys_spread_over_the_low_and_high_bits() {
        let b = BuildU64::default();
        let low: std::collections::HashSet<u64> =
            (0..1024u64).map(|n| b.hash_one(n) & 1023).collect();
        assert!(low.len() > 600, "low bits spread: {}", low.len());
        let tags: std::collections::HashSet<u64> =
            (0..1024u64).map(|n| b.hash_one(n) >> 57).collect();
        assert!(tags.len() > 100, "top seven bits spread: {}", tags.len());
        let mut m: U64Map<u64> = U64Map::default();
        for n in 0..10_000 {
            m.insert(n, n * 2);
        }
        assert_eq!(m.get(&4_321), Some(&8_642));
    }
}
