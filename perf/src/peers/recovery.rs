//! What recovery's Kafka clients cost a failover: the wait for a stable log and the replay of a
//! partition ([`votes_tally::recovery`]), once on clients made for that recovery alone (what
//! every recovery paid until 2026-12-05: three new clients) and once on clients kept warm
//! between recoveries ([`RecoveryClients`], what a node does now), alternated partition by
//! partition in one run. The partitions hold what the topic holds (nothing on a fresh
//! prefix): this times the clients, not the reading.

use std::time::{Duration, Instant};

use serde::Serialize;
use votes_core::Names;
use votes_tally::provision::{TopicPlan, create_topics};
use votes_tally::recovery::{RecoveryClients, Stable, await_stable, replay};
use votes_tally::shard::{Shard, ShardConfig};

use super::PeerError;

#[derive(Debug, Clone)]
pub struct RecoveryConfig {
    pub brokers: String,
    /// A fresh prefix per run: its votes topic is created with `partitions`.
    pub prefix: String,
    pub partitions: u32,
    /// Recoveries of each partition, each way.
    pub rounds: u32,
    pub timeout: Duration,
}

/// Medians and tails of one way of recovering, in milliseconds.
#[derive(Debug, Serialize)]
pub struct WayReport {
    pub recoveries: usize,
    pub stable_ms_p50: f64,
    pub replay_ms_p50: f64,
    pub total_ms_p50: f64,
    pub total_ms_p90: f64,
    pub total_ms_max: f64,
}

#[derive(Debug, Serialize)]
pub struct RecoveryReport {
    pub partitions: u32,
    pub rounds: u32,
    /// Three new clients per recovery.
    pub cold: WayReport,
    /// The node's clients, warm.
    pub warm: WayReport,
    /// Warm median ÷ cold median of a whole recovery.
    pub warm_over_cold_p50: f64,
}

impl RecoveryReport {
    pub fn summary(&self) -> String {
        format!(
            "recovery of {} partitions × {} rounds: new clients p50 {:.1} ms (stable {:.1} + replay {:.1}), p90 {:.1} ms; warm clients p50 {:.1} ms (stable {:.1} + replay {:.1}), p90 {:.1} ms; warm/new {:.2}",
            self.partitions,
            self.rounds,
            self.cold.total_ms_p50,
            self.cold.stable_ms_p50,
            self.cold.replay_ms_p50,
            self.cold.total_ms_p90,
            self.warm.total_ms_p50,
            self.warm.stable_ms_p50,
            self.warm.replay_ms_p50,
            self.warm.total_ms_p90,
            self.warm_over_cold_p50,
        )
    }
}

pub fn run(cfg: &RecoveryConfig) -> Result<RecoveryReport, PeerError> {
    if cfg.partitions == 0 || cfg.rounds == 0 {
        return Err(PeerError::Args(
            "partitions and rounds must be positive".into(),
        ));
    }
    let names = Names::new(cfg.prefix.clone()).map_err(|e| PeerError::Args(e.to_string()))?;
    super::current_thread_runtime()?
        .block_on(create_topics(
            &cfg.brokers,
            &names,
            &TopicPlan {
                partitions: cfg.partitions,
                replication: 1,
                timeout: cfg.timeout,
            },
        ))
        .map_err(|e| PeerError::CreateTopic {
            topic: names.votes_topic(),
            why: e.to_string(),
        })?;
    let warm = RecoveryClients::new(&cfg.brokers, &names)?;
    // A node's clients served its first recoveries at its start before any failover.
    for p in 0..cfg.partitions {
        recover_once(cfg, &warm, p)?;
    }
    let (mut cold_times, mut warm_times) = (Vec::new(), Vec::new());
    for _ in 0..cfg.rounds {
        for p in 0..cfg.partitions {
            let fresh = RecoveryClients::new(&cfg.brokers, &names)?;
            cold_times.push(recover_once(cfg, &fresh, p)?);
            // Closing the clients is not on a recovery's path.
            drop(fresh);
            warm_times.push(recover_once(cfg, &warm, p)?);
        }
    }
    let (cold, warm) = (way(&cold_times), way(&warm_times));
    Ok(RecoveryReport {
        partitions: cfg.partitions,
        rounds: cfg.rounds,
        warm_over_cold_p50: warm.total_ms_p50 / cold.total_ms_p50,
        cold,
        warm,
    })
}

/// One recovery of `partition` on `clients`: (wait for a stable log, replay).
fn recover_once(
    cfg: &RecoveryConfig,
    clients: &RecoveryClients,
    partition: u32,
) -> Result<(Duration, Duration), PeerError> {
    let began = Instant::now();
    let stable = await_stable(Stable {
        clients,
        partition,
        me: ("recovery-peer", 0),
        still_owner: || true,
        writer_gone: |_: &str| false,
        grace: Duration::from_secs(1),
        timeout: cfg.timeout,
    })
    .map_err(|e| PeerError::Worker(e.to_string()))?;
    let stable_at = began.elapsed();
    let shard = Shard::new(ShardConfig {
        partition,
        node: "recovery-peer".into(),
        core: 0,
        max_batch: 256,
        max_queued: 1024,
    });
    replay(clients, shard, stable, cfg.timeout, |_| {})
        .map_err(|e| PeerError::Worker(e.to_string()))?;
    Ok((stable_at, began.elapsed() - stable_at))
}

fn way(times: &[(Duration, Duration)]) -> WayReport {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let quantile = |mut v: Vec<f64>, q: f64| {
        v.sort_by(f64::total_cmp);
        let i = ((v.len() as f64 - 1.0) * q).round() as usize;
        v[i]
    };
    let stable: Vec<f64> = times.iter().map(|t| ms(t.0)).collect();
    let replay: Vec<f64> = times.iter().map(|t| ms(t.1)).collect();
    let total: Vec<f64> = times.iter().map(|t| ms(t.0 + t.1)).collect();
    WayReport {
        recoveries: times.len(),
        stable_ms_p50: quantile(stable, 0.5),
        replay_ms_p50: quantile(replay, 0.5),
        total_ms_p50: quantile(total.clone(), 0.5),
        total_ms_p90: quantile(total.clone(), 0.9),
        total_ms_max: quantile(total, 1.0),
    }
}
