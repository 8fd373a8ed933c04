//! The usual cache answer (not durable): Redis, one Lua script per vote through `EVALSHA`:
//!
//! ```lua
//! if redis.call('SADD', KEYS[1], ARGV[1]) == 1 then
//!   redis.call('HINCRBY', KEYS[2], ARGV[2], 1) return 1 else return 0 end
//! ```
//!
//! with `KEYS = voters:{election}, tally:{election}` and `ARGV = voter, option`. Each
//! connection sends up to `pipeline` scripts in one pipeline and waits for their answers. A
//! voter's votes all go through the same connection, in order ([`Votes::lanes`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use redis::aio::MultiplexedConnection;

use super::postgres::wait_due;
use super::{
    Expected, LaneResult, Pace, PeerError, ServerReport, Vote, VoteSpec, Votes, check_rate, record,
};
use crate::cpu;

pub const SCRIPT: &str = "if redis.call('SADD', KEYS[1], ARGV[1]) == 1 then redis.call('HINCRBY', KEYS[2], ARGV[2], 1) return 1 else return 0 end";

#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub url: String,
    pub spec: VoteSpec,
    pub connections: u32,
    /// Scripts per pipeline on one connection (1: one request at a time).
    pub pipeline: u32,
    pub rate: Option<f64>,
    /// The redis-server; `None`: the `process_id` of `INFO server`, when it is local.
    pub server_pid: Option<u32>,
}

struct Keys {
    sha: String,
    voters: String,
    tally: String,
}

async fn run_lane(
    mut conn: MultiplexedConnection,
    keys: Arc<Keys>,
    votes: Arc<Votes>,
    lane: Vec<(u64, Vote)>,
    pace: Pace,
    depth: usize,
) -> Result<LaneResult, redis::RedisError> {
    let mut out = LaneResult::empty();
    let mut starts = Vec::with_capacity(depth);
    let mut next = 0;
    while next < lane.len() {
        // Open loop: wait for the next vote's time, then take every vote already due.
        let first = wait_due(pace.due(lane[next].0)).await;
        starts.clear();
        starts.push(first);
        let mut end = next + 1;
        let now = Instant::now();
        while end < lane.len() && end - next < depth {
            match pace.due(lane[end].0) {
                Some(d) if d > now => break,
                Some(d) => starts.push(d),
                None => starts.push(now),
            }
            end += 1;
        }
        let mut pipe = redis::pipe();
        for &(_, v) in &lane[next..end] {
            pipe.cmd("EVALSHA")
                .arg(&keys.sha)
                .arg(2)
                .arg(&keys.voters)
                .arg(&keys.tally)
                .arg(v.voter)
                .arg(votes.option(v));
        }
        let answers: Vec<i64> = pipe.query_async(&mut conn).await?;
        let done = Instant::now();
        for a in answers {
            if a == 1 {
                out.accepted += 1;
            } else {
                out.duplicates += 1;
            }
        }
        for s in &starts {
            record(&mut out.latency_us, done.saturating_duration_since(*s));
        }
        next = end;
    }
    Ok(out)
}

/// A field of `INFO`'s text.
fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

/// Runs the peer; the report says whether the tallies matched the expected ones.
pub async fn run(cfg: &RedisConfig) -> Result<(ServerReport, Expected), PeerError> {
    check_rate(cfg.rate)?;
    if cfg.connections == 0 || cfg.pipeline == 0 {
        return Err(PeerError::Args(
            "--connections and --pipeline must be at least 1".into(),
        ));
    }
    let votes = Arc::new(Votes::generate(&cfg.spec)?);
    let expected = votes.expected(cfg.spec.seed);
    let client = redis::Client::open(cfg.url.as_str())?;
    let mut admin = client.get_multiplexed_async_connection().await?;
    let keys = Arc::new(Keys {
        sha: redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(SCRIPT)
            .query_async(&mut admin)
            .await?,
        voters: format!("voters:{}", votes.election),
        tally: format!("tally:{}", votes.election),
    });
    let _: i64 = redis::cmd("DEL")
        .arg(&keys.voters)
        .arg(&keys.tally)
        .query_async(&mut admin)
        .await?;
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut admin)
        .await?;
    let persistence: String = redis::cmd("INFO")
        .arg("persistence")
        .query_async(&mut admin)
        .await?;
    let mut server = BTreeMap::new();
    for (k, text) in [
        ("redis_version", &info),
        ("aof_enabled", &persistence),
        ("rdb_changes_since_last_save", &persistence),
    ] {
        if let Some(v) = info_field(text, k) {
            server.insert(k.to_string(), v.to_string());
        }
    }
    let server_pid = cfg.server_pid.or_else(|| {
        let pid: u32 = info_field(&info, "process_id")?.parse().ok()?;
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        comm.starts_with("redis").then_some(pid)
    });

    let mut conns = Vec::with_capacity(cfg.connections as usize);
    for _ in 0..cfg.connections {
        conns.push(client.get_multiplexed_async_connection().await?);
    }
    let lanes = votes.lanes(cfg.connections);
    let depth = cfg.pipeline as usize;

    let run = super::run_lanes(
        cfg.rate,
        || server_pid.map(|p| cpu::cpu_seconds(p, false)).transpose(),
        |pace| {
            conns
                .into_iter()
                .zip(lanes)
                .map(|(c, lane)| {
                    tokio::spawn(run_lane(c, keys.clone(), votes.clone(), lane, pace, depth))
                })
                .collect()
        },
        PeerError::Redis,
    )
    .await?;

    let tallies: HashMap<String, i64> = redis::cmd("HGETALL")
        .arg(&keys.tally)
        .query_async(&mut admin)
        .await?;
    // Options nobody voted for have no field: `checked` counts a missing one as 0.
    let found: BTreeMap<String, u64> = tallies
        .into_iter()
        .map(|(k, v)| (k, u64::try_from(v).unwrap_or(0)))
        .collect();
    let stored: u64 = redis::cmd("SCARD")
        .arg(&keys.voters)
        .query_async(&mut admin)
        .await?;
    let report = ServerReport {
        connections: cfg.connections,
        pipeline: cfg.pipeline,
        rate: cfg.rate,
        server,
        ..ServerReport::measured("redis-lua", cfg.spec.votes, &run)
    }
    .checked(&expected, &found, Some(stored));
    Ok((report, expected))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_info_fields() {
        let info = "# Server\r\nredis_version:7.0.15\r\nprocess_id:4242\r\n";
        assert_eq!(info_field(info, "process_id"), Some("4242"));
        assert_eq!(info_field(info, "redis_version"), Some("7.0.15"));
        assert_eq!(info_field(info, "nope"), None);
    }
}
