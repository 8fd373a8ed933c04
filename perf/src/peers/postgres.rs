//! The usual single-database answer: PostgreSQL, one transaction per vote.
//!
//! ```sql
//! BEGIN;
//! INSERT INTO votes (election, voter, option) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING;
//! UPDATE tallies SET count = count + 1 WHERE election = $1 AND option = $2; -- if inserted
//! COMMIT;  -- synchronous_commit = on: the vote is on disk when COMMIT returns
//! ```
//!
//! over `connections` connections with prepared statements. A voter's votes all go through
//! the same connection ([`Votes::lanes`]), in order, so the first one is the one that counts.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use tokio_postgres::{Client, NoTls, Statement};

use super::{
    Expected, LaneResult, Pace, PeerError, ServerReport, Vote, VoteSpec, Votes, check_rate, record,
};
use crate::cpu;

#[derive(Debug, Clone)]
pub struct PostgresConfig {
    pub url: String,
    pub spec: VoteSpec,
    pub connections: u32,
    pub rate: Option<f64>,
    /// The postmaster; `None`: the parent of this run's first backend, when it is local.
    pub server_pid: Option<u32>,
}

const SCHEMA: &str = "
DROP TABLE IF EXISTS votes;
DROP TABLE IF EXISTS tallies;
CREATE TABLE votes (
    election text NOT NULL,
    voter bigint NOT NULL,
    option text NOT NULL,
    PRIMARY KEY (election, voter)
);
CREATE TABLE tallies (
    election text NOT NULL,
    option text NOT NULL,
    count bigint NOT NULL,
    PRIMARY KEY (election, option)
);";

const INSERT: &str =
    "INSERT INTO votes (election, voter, option) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING";
const UPDATE: &str = "UPDATE tallies SET count = count + 1 WHERE election = $1 AND option = $2";

async fn connect(url: &str) -> Result<Client, PeerError> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("votes-peer: postgres connection ended: {e}");
        }
    });
    Ok(client)
}

async fn show(client: &Client, setting: &str) -> Result<String, PeerError> {
    let row = client.query_one(&format!("SHOW {setting}"), &[]).await?;
    Ok(row.try_get::<_, String>(0)?)
}

/// The command name of a local process (`None` if it cannot be read).
fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// The postmaster: the parent of our backend, if that backend is a local `postgres` process.
async fn local_postmaster(client: &Client) -> Option<u32> {
    let row = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .ok()?;
    let backend = u32::try_from(row.try_get::<_, i32>(0).ok()?).ok()?;
    if comm(backend)? != "postgres" {
        return None;
    }
    let parent = cpu::ProcStat::read(backend).ok()?.ppid;
    (comm(parent)? == "postgres").then_some(parent)
}

/// Sleeps until `due` (open loop) and returns the time the vote's latency is measured from:
/// its intended time, or the actual send when the timer woke us up to a tick early (the
/// earlier of the two, so an early send never shortens a latency).
pub(super) async fn wait_due(due: Option<Instant>) -> Instant {
    match due {
        Some(due) => {
            // tokio's timer rounds up to the millisecond: wake a tick early, as load.rs does.
            let lead = std::time::Duration::from_millis(1);
            if let Some(at) = due.checked_sub(lead)
                && at > Instant::now()
            {
                tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
            }
            due.min(Instant::now())
        }
        None => Instant::now(),
    }
}

struct Prepared {
    insert: Statement,
    update: Statement,
}

async fn run_lane(
    mut client: Client,
    st: Prepared,
    votes: Arc<Votes>,
    lane: Vec<(u64, Vote)>,
    pace: Pace,
) -> Result<LaneResult, tokio_postgres::Error> {
    let mut out = LaneResult::empty();
    let election = votes.election.as_str();
    for (i, v) in lane {
        let start = wait_due(pace.due(i)).await;
        let option = votes.option(v);
        // Voters are 1..=voters, checked to fit an i64 by the generator.
        let voter = i64::try_from(v.voter).unwrap_or(i64::MAX);
        let tx = client.transaction().await?;
        let inserted = tx
            .execute(&st.insert, &[&election, &voter, &option])
            .await?;
        if inserted == 1 {
            tx.execute(&st.update, &[&election, &option]).await?;
            out.accepted += 1;
        } else {
            out.duplicates += 1;
        }
        tx.commit().await?;
        record(&mut out.latency_us, start.elapsed());
    }
    Ok(out)
}

/// Runs the peer; the report says whether the tallies matched the expected ones.
pub async fn run(cfg: &PostgresConfig) -> Result<(ServerReport, Expected), PeerError> {
    check_rate(cfg.rate)?;
    if cfg.connections == 0 {
        return Err(PeerError::Args("--connections must be at least 1".into()));
    }
    let votes = Arc::new(Votes::generate(&cfg.spec)?);
    let expected = votes.expected(cfg.spec.seed);

    let admin = connect(&cfg.url).await?;
    let sync = show(&admin, "synchronous_commit").await?;
    if sync != "on" {
        return Err(PeerError::PostgresSetup(format!(
            "synchronous_commit is {sync:?}, not \"on\""
        )));
    }
    let mut server = BTreeMap::new();
    server.insert("synchronous_commit".to_string(), sync);
    for s in [
        "server_version",
        "fsync",
        "wal_sync_method",
        "shared_buffers",
    ] {
        server.insert(s.to_string(), show(&admin, s).await?);
    }
    admin.batch_execute(SCHEMA).await?;
    for o in &votes.options {
        admin
            .execute(
                "INSERT INTO tallies (election, option, count) VALUES ($1, $2, 0)",
                &[&votes.election, o],
            )
            .await?;
    }
    let server_pid = match cfg.server_pid {
        Some(p) => Some(p),
        None => local_postmaster(&admin).await,
    };

    let mut clients = Vec::with_capacity(cfg.connections as usize);
    for _ in 0..cfg.connections {
        let c = connect(&cfg.url).await?;
        let st = Prepared {
            insert: c.prepare(INSERT).await?,
            update: c.prepare(UPDATE).await?,
        };
        clients.push((c, st));
    }
    let lanes = votes.lanes(cfg.connections);

    let run = super::run_lanes(
        cfg.rate,
        || server_pid.map(cpu::tree_cpu_seconds).transpose(),
        |pace| {
            clients
                .into_iter()
                .zip(lanes)
                .map(|((c, st), lane)| tokio::spawn(run_lane(c, st, votes.clone(), lane, pace)))
                .collect()
        },
        PeerError::Postgres,
    )
    .await?;

    let mut found = BTreeMap::new();
    for row in admin
        .query(
            "SELECT option, count FROM tallies WHERE election = $1",
            &[&votes.election],
        )
        .await?
    {
        let count: i64 = row.try_get(1)?;
        found.insert(
            row.try_get::<_, String>(0)?,
            u64::try_from(count).unwrap_or(0),
        );
    }
    let stored: i64 = admin
        .query_one(
            "SELECT count(*) FROM votes WHERE election = $1",
            &[&votes.election],
        )
        .await?
        .try_get(0)?;
    let report = ServerReport {
        connections: cfg.connections,
        pipeline: 1,
        rate: cfg.rate,
        server,
        ..ServerReport::measured("postgres", cfg.spec.votes, &run)
    }
    .checked(&expected, &found, u64::try_from(stored).ok());
    Ok((report, expected))
}
