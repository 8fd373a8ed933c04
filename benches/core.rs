//! Micro-benchmarks of the per-vote work in `votes-core`: routing a voter to its partition and
//! encoding/decoding the vote record. Each reports ns per vote; the peer for the record codec is
//! a plain `serde_json` encoding of the same fields, measured in the same run.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use votes_core::{ElectionId, OptionId, VoteRecord, VoterId, partition_of};

fn record(voter: u64) -> VoteRecord {
    VoteRecord {
        election: ElectionId::new("tv-final-2026").unwrap(),
        voter: VoterId(voter),
        option: OptionId::new("candidate-3").unwrap(),
        received_at_ms: 1_790_000_000_000,
        node: "node-1".into(),
        core: 3,
        nonce: [9; 16],
    }
}

fn routing(c: &mut Criterion) {
    let mut g = c.benchmark_group("routing");
    g.throughput(Throughput::Elements(1024));
    for partitions in [8u32, 256] {
        g.bench_with_input(
            BenchmarkId::new("xxh3_mod", partitions),
            &partitions,
            |b, &p| {
                b.iter(|| {
                    let mut acc = 0u32;
                    for v in 0..1024u64 {
                        acc ^= partition_of(VoterId(black_box(v * 7919)), p);
                    }
                    acc
                })
            },
        );
    }
    g.finish();
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("record");
    g.throughput(Throughput::Elements(1));
    let rec = record(123_456_789);
    let bytes = rec.encode();
    let mut buf = Vec::with_capacity(votes_core::record::RECORD_MAX_LEN);
    g.bench_function("encode_into", |b| {
        b.iter(|| {
            buf.clear();
            black_box(&rec).encode_into(&mut buf);
            buf.len()
        })
    });
    g.bench_function("decode", |b| {
        b.iter(|| VoteRecord::decode(black_box(&bytes)).unwrap())
    });
    // Peer: the obvious alternative encoding, JSON of the same fields.
    let json = format!(
        r#"{{"v":1,"election":"{}","voter":{},"option":"{}","received_at_ms":{},"node":"{}","core":{},"nonce":"{}"}}"#,
        rec.election,
        rec.voter,
        rec.option,
        rec.received_at_ms,
        rec.node,
        rec.core,
        "09".repeat(16)
    );
    g.bench_function("peer_json_parse", |b| {
        b.iter(|| serde_json::from_str::<serde_json::Value>(black_box(&json)).unwrap())
    });
    g.finish();
}

criterion_group!(benches, routing, codec);
criterion_main!(benches);
