//! The persister's write path alone, against the DynamoDB engine it is pointed at: the vote
//! items `votes persist` would make of `items` committed votes (distinct voters over 8
//! partitions), written round by round through [`votes_tally::persist::write_all`], the same
//! batched reads and writes and concurrency. No Kafka, no HTTP in front: what one item costs the
//! persister's process (client CPU) and the engine (its CPU, when its pid is given), and the
//! rate the pair reaches. With `rewrite`, the same items are written a second time, as a
//! persister restarted before its offsets were committed does: every item is found in place.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use aws_sdk_dynamodb::types::AttributeValue;
use serde::Serialize;
use votes_core::{ElectionId, Names, OptionId, VoteRecord, VoterId};
use votes_tally::persist::{PersistStats, vote_item, write_all};

use super::PeerError;
use crate::cpu;

/// Partitions the items are spread over, as the votes topic of the demo and tests has.
const PARTITIONS: u64 = 8;

#[derive(Debug, Clone)]
pub struct PersistWritesConfig {
    pub endpoint: String,
    pub prefix: String,
    pub items: u64,
    /// Batch calls in flight (`votes persist --concurrency`).
    pub concurrency: usize,
    /// Items per round (`votes persist --batch-max`).
    pub round: usize,
    pub rewrite: bool,
    pub engine_pid: Option<u32>,
}

#[derive(Debug, Serialize)]
pub struct PassReport {
    pub items: u64,
    pub seconds: f64,
    pub items_per_s: f64,
    pub client_cpu_us_per_item: f64,
    pub engine_cpu_us_per_item: Option<f64>,
    pub kept_first: u64,
    pub retries: u64,
}

#[derive(Debug, Serialize)]
pub struct PersistWritesReport {
    pub endpoint: String,
    pub table: String,
    pub concurrency: usize,
    pub round: usize,
    pub write: PassReport,
    pub rewrite: Option<PassReport>,
}

impl PersistWritesReport {
    pub fn summary(&self) -> String {
        let line = |what: &str, p: &PassReport| {
            format!(
                "{what}: {} items in {:.1} s = {:.0} items/s; client {:.1} µs/item, engine {}",
                p.items,
                p.seconds,
                p.items_per_s,
                p.client_cpu_us_per_item,
                p.engine_cpu_us_per_item
                    .map_or("not measured".to_owned(), |e| format!("{e:.1} µs/item")),
            )
        };
        let mut s = line("write", &self.write);
        if let Some(r) = &self.rewrite {
            s.push('\n');
            s.push_str(&line("rewrite (every item already there)", r));
        }
        s
    }
}

fn items(n: u64) -> Result<Vec<HashMap<String, AttributeValue>>, PeerError> {
    let bad = |e: &dyn std::fmt::Display| PeerError::Args(e.to_string());
    let election = ElectionId::new("persist-bench").map_err(|e| bad(&e))?;
    let options =
        ["a", "b", "c"].map(|o| OptionId::new(o).expect("a one-letter option id is valid"));
    Ok((0..n)
        .map(|i| {
            let record = VoteRecord {
                election: election.clone(),
                voter: VoterId(i + 1),
                option: options[(i % 3) as usize].clone(),
                received_at_ms: 1_700_000_000_000 + i,
                node: "bench".into(),
                core: (i % 2) as u16,
                nonce: (u128::from(i) << 64 | 0x5eed).to_le_bytes(),
            };
            vote_item(
                b"persist-bench-audit-key",
                &record,
                (i % PARTITIONS) as u32,
                i / PARTITIONS,
            )
        })
        .collect())
}

async fn pass(
    dynamo: &aws_sdk_dynamodb::Client,
    table: &str,
    items: &[HashMap<String, AttributeValue>],
    cfg: &PersistWritesConfig,
) -> Result<PassReport, PeerError> {
    let stats = Arc::new(PersistStats::default());
    let engine = |pid: Option<u32>| pid.map(|p| cpu::cpu_seconds(p, false)).transpose();
    let (c0, e0, t0) = (
        cpu::self_cpu_seconds()?,
        engine(cfg.engine_pid)?,
        Instant::now(),
    );
    for round in items.chunks(cfg.round) {
        write_all(dynamo, table, round.to_vec(), cfg.concurrency, &stats)
            .await
            .map_err(|e| PeerError::Worker(e.to_string()))?;
    }
    let seconds = t0.elapsed().as_secs_f64();
    let (c1, e1) = (cpu::self_cpu_seconds()?, engine(cfg.engine_pid)?);
    let n = items.len() as u64;
    let per_item = |s: f64| s * 1e6 / n.max(1) as f64;
    Ok(PassReport {
        items: n,
        seconds,
        items_per_s: n as f64 / seconds.max(1e-9),
        client_cpu_us_per_item: per_item(c1 - c0),
        engine_cpu_us_per_item: e0.zip(e1).map(|(a, b)| per_item(b - a)),
        kept_first: stats.kept_first.load(Ordering::Relaxed),
        retries: stats.retries.load(Ordering::Relaxed),
    })
}

pub async fn run(cfg: PersistWritesConfig) -> Result<PersistWritesReport, PeerError> {
    if cfg.items == 0 || cfg.concurrency == 0 || cfg.round == 0 {
        return Err(PeerError::Args(
            "--items, --concurrency and --round must be positive".into(),
        ));
    }
    let names = Names::new(cfg.prefix.clone()).map_err(|e| PeerError::Args(e.to_string()))?;
    let dynamo = votes_tally::dynamo::client(Some(&cfg.endpoint)).await;
    votes_tally::provision::create_tables(&dynamo, &names)
        .await
        .map_err(|e| PeerError::Worker(format!("creating the tables: {e}")))?;
    let table = names.votes_table();
    let items = items(cfg.items)?;
    let write = pass(&dynamo, &table, &items, &cfg).await?;
    let rewrite = if cfg.rewrite {
        Some(pass(&dynamo, &table, &items, &cfg).await?)
    } else {
        None
    };
    if write.kept_first != 0 {
        return Err(PeerError::Worker(format!(
            "{} items were already in {table}: use a fresh --prefix",
            write.kept_first
        )));
    }
    if let Some(r) = &rewrite
        && r.kept_first != r.items
    {
        return Err(PeerError::Worker(format!(
            "the rewrite replaced {} of {} items: first vote wins is broken",
            r.items - r.kept_first,
            r.items
        )));
    }
    Ok(PersistWritesReport {
        endpoint: cfg.endpoint,
        table,
        concurrency: cfg.concurrency,
        round: cfg.round,
        write,
        rewrite,
    })
}
