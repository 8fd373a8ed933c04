//! Shard snapshots at national scale: 100,000,000 voters in one election, spread over the
//! partitions of a node by `partition_of` (8 here, 64 in the capacity plan), ids drawn from an
//! eligible population three times the turnout (as `voter_set` does). Reports the snapshot's
//! size per voter (= the voter set's serialized size plus a few bytes of tallies), and encode
//! and decode time per voter. Peer in the same run: the same voters as a sorted `Vec<u64>`
//! written raw (8 B/voter), the obvious "dump the set" format, decoded into a HashSet (what a
//! shard without bitmaps would have to rebuild). Medians of 3 runs.
//!
//! Run: `cargo bench --bench snapshot` (`-- --quick`: 10,000,000 voters).

use std::collections::{BTreeMap, HashSet};
use std::hint::black_box;
use std::time::Instant;

use roaring::RoaringTreemap;
use votes_core::snapshot::{ElectionState, ShardSnapshot};
use votes_core::{ElectionId, OptionId, VoterId, partition_of};

mod common;

use common::{median, voters};

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    // `cargo test --benches` runs this with --bench absent: keep that run tiny.
    let under_test = !std::env::args().any(|a| a == "--bench");
    // Distinct voters in the one election, drawn from a population three times larger (ids a
    // registry hands out are not all used).
    let turnout: u64 = if under_test {
        100_000
    } else if quick {
        10_000_000
    } else {
        100_000_000
    };
    for partitions in [8u32, 64] {
        let mut sets: Vec<RoaringTreemap> =
            (0..partitions).map(|_| RoaringTreemap::new()).collect();
        let mut distinct = 0u64;
        // Repeat votes of a voter are drawn too and count once: draw until `turnout` voters.
        for v in voters(u64::MAX, turnout * 3, 0x5eed) {
            if sets[partition_of(VoterId(v), partitions) as usize].insert(v) {
                distinct += 1;
                if distinct == turnout {
                    break;
                }
            }
        }
        let total: u64 = sets.iter().map(|s| s.len()).sum();
        assert_eq!(total, turnout);
        let snaps: Vec<ShardSnapshot> = sets
            .into_iter()
            .enumerate()
            .map(|(p, voters)| {
                let n = voters.len();
                ShardSnapshot {
                    partition: p as u32,
                    applied_end: n + 1,
                    log_id: 1,
                    log_duplicates: 0,
                    elections: vec![ElectionState {
                        election: ElectionId::new("tv-final-2026").unwrap(),
                        counts: BTreeMap::from([
                            (OptionId::new("candidate-1").unwrap(), n / 2),
                            (OptionId::new("candidate-2").unwrap(), n - n / 2),
                        ]),
                        voters,
                    }],
                }
            })
            .collect();
        let (mut enc, mut dec, mut peer_enc, mut peer_dec) = (vec![], vec![], vec![], vec![]);
        let mut bytes = 0usize;
        for _ in 0..3 {
            let t = Instant::now();
            let encoded: Vec<Vec<u8>> = snaps.iter().map(|s| s.encode()).collect();
            enc.push(t.elapsed().as_secs_f64());
            bytes = encoded.iter().map(|b| b.len()).sum();
            let t = Instant::now();
            for b in &encoded {
                black_box(ShardSnapshot::decode(b).unwrap());
            }
            dec.push(t.elapsed().as_secs_f64());
            drop(encoded);
            let t = Instant::now();
            let raw: Vec<Vec<u8>> = snaps
                .iter()
                .map(|s| {
                    let mut out = Vec::with_capacity(s.voters() as usize * 8);
                    for v in s.elections[0].voters.iter() {
                        out.extend_from_slice(&v.to_be_bytes());
                    }
                    out
                })
                .collect();
            peer_enc.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            for r in &raw {
                let set: HashSet<u64> = r
                    .chunks_exact(8)
                    .map(|c| u64::from_be_bytes(c.try_into().unwrap()))
                    .collect();
                black_box(set.len());
            }
            peer_dec.push(t.elapsed().as_secs_f64());
        }
        let per = |s: f64| s * 1e9 / total as f64;
        let (e, d, pe, pd) = (median(enc), median(dec), median(peer_enc), median(peer_dec));
        println!(
            "{total} distinct voters in one election over {partitions} partitions: snapshot {:.1} MB = {:.2} B/voter; \
             encode {:.2} s ({:.1} ns/voter), decode {:.2} s ({:.1} ns/voter) | peer raw u64 + HashSet: {:.1} MB = 8.00 B/voter, \
             write {:.2} s ({:.1} ns/voter), rebuild {:.2} s ({:.1} ns/voter) | decode ratio peer/snapshot {:.1}x",
            bytes as f64 / 1e6,
            bytes as f64 / total as f64,
            e,
            per(e),
            d,
            per(d),
            total as f64 * 8.0 / 1e6,
            pe,
            per(pe),
            pd,
            per(pd),
            pd / d
        );
    }
}
