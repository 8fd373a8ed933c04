//! Why the shard's voter set is a roaring bitmap: memory per voter and time per dedup check at
//! 10,000,000 and 100,000,000 voters, against the obvious peer (`HashSet<u64>`), measured in
//! the same run.
//!
//! Model: voter ids are drawn from an eligible population three times the turnout (ids are
//! dense-ish, as a voter registry numbers them), and a node with `P` partitions keeps one set
//! per partition (voters hashed by `partition_of`). Figures are medians of 3 runs; memory is
//! the structure's own heap size (roaring: its serialized size, which tracks its containers;
//! hash set: capacity × (key + control byte)).
//!
//! Run: `cargo bench --bench voter_set` (add `-- --quick` for 10M only).

use std::collections::HashSet;
use std::hint::black_box;
use std::time::Instant;

use roaring::RoaringTreemap;
use votes_core::{VoterId, partition_of};

mod common;

use common::{median, voters};

struct Figures {
    bytes_per_voter: f64,
    insert_ns: f64,
    contains_ns: f64,
}

/// What the benchmark needs of a voter set.
trait VoterSet: Default {
    fn add(&mut self, voter: u64);
    fn has(&self, voter: u64) -> bool;
    fn voters(&self) -> u64;
    /// Heap bytes the set holds.
    fn bytes(&self) -> u64;
}

impl VoterSet for RoaringTreemap {
    fn add(&mut self, voter: u64) {
        self.insert(voter);
    }
    fn has(&self, voter: u64) -> bool {
        self.contains(voter)
    }
    fn voters(&self) -> u64 {
        self.len()
    }
    fn bytes(&self) -> u64 {
        self.serialized_size() as u64
    }
}

impl VoterSet for HashSet<u64> {
    fn add(&mut self, voter: u64) {
        self.insert(voter);
    }
    fn has(&self, voter: u64) -> bool {
        self.contains(&voter)
    }
    fn voters(&self) -> u64 {
        self.len() as u64
    }
    fn bytes(&self) -> u64 {
        // hashbrown: one key and one control byte per bucket.
        (self.capacity() * (8 + 1)) as u64
    }
}

/// `n` voters spread over `partitions` sets of type `S`: median insert and lookup time per
/// voter over 3 runs, and bytes per voter.
fn measure<S: VoterSet>(n: u64, partitions: u32) -> Figures {
    let population = 3 * n;
    let (mut ins, mut look) = (Vec::new(), Vec::new());
    let mut bytes = 0.0;
    for run in 0..3 {
        let mut sets: Vec<S> = (0..partitions).map(|_| S::default()).collect();
        let ids: Vec<(usize, u64)> = voters(n, population, 0x9E37 + run)
            .map(|v| (partition_of(VoterId(v), partitions) as usize, v))
            .collect();
        let t = Instant::now();
        for &(p, v) in &ids {
            sets[p].add(v);
        }
        ins.push(t.elapsed().as_nanos() as f64 / n as f64);
        let t = Instant::now();
        let mut hits = 0u64;
        for &(p, v) in &ids {
            hits += u64::from(sets[p].has(black_box(v)));
        }
        look.push(t.elapsed().as_nanos() as f64 / n as f64);
        assert_eq!(hits, n);
        let distinct: u64 = sets.iter().map(S::voters).sum();
        bytes = sets.iter().map(|s| s.bytes() as f64).sum::<f64>() / distinct as f64;
    }
    Figures {
        bytes_per_voter: bytes,
        insert_ns: median(ins),
        contains_ns: median(look),
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    // `cargo test --benches` runs this with --bench absent: keep that run tiny.
    let under_test = !std::env::args().any(|a| a == "--bench");
    let sizes: &[u64] = if under_test {
        &[100_000]
    } else if quick {
        &[10_000_000]
    } else {
        &[10_000_000, 100_000_000]
    };
    println!(
        "voters       P   structure      bytes/voter  insert ns  contains ns  memory ratio (hash/roaring)"
    );
    for &n in sizes {
        for partitions in [1u32, 64] {
            let r = measure::<RoaringTreemap>(n, partitions);
            let h = measure::<HashSet<u64>>(n, partitions);
            for (name, f) in [("roaring", &r), ("HashSet<u64>", &h)] {
                println!(
                    "{n:>11} {partitions:>3}   {name:<13} {:>11.2} {:>10.1} {:>12.1}",
                    f.bytes_per_voter, f.insert_ns, f.contains_ns
                );
            }
            println!("{:>75.1}x", h.bytes_per_voter / r.bytes_per_voter);
        }
    }
}
