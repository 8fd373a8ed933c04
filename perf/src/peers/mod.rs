//! The peers of the appliance, each fed the same votes (behind `votes-peer`):
//!
//! * [`floor`]: the durable log alone, a bare transactional Kafka producer per partition
//!   writing pre-encoded records;
//! * [`commit_tier`]: the appliance's own commit engine and committer threads without the
//!   HTTP edge, fed the same votes;
//! * [`postgres`]: the usual single-database answer, one transaction per vote;
//! * [`redis_lua`]: the usual cache answer (not durable), one Lua script per vote;
//! * [`h3_reference`]: not a vote store but the floor of HTTP/3 itself: a tokio + quinn + h3
//!   server answering every vote `202` (`votes-peer h3-reference`), driven by `votes-load`;
//! * [`h1_reference`]: the same for HTTP/1.1, hyper on tokio (`votes-peer h1-reference`);
//! * [`recovery`]: not fed votes: recovery's Kafka clients, new for each recovery against
//!   kept warm (`votes-peer recovery`).
//!
//! [`Votes::generate`] makes the vote sequence every peer uses: `votes` votes by `voters`
//! distinct voters, the `votes - voters` others repeating an earlier voter, deterministic for
//! a seed. The first vote of each voter counts ([`Votes::expected`]).

pub mod commit_tier;
pub mod floor;
pub mod h1_reference;
pub mod h3_reference;
pub mod persist_writes;
pub mod postgres;
pub mod recovery;
pub mod redis_lua;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::mix::Rng;
use crate::report::LatencyMs;

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("invalid arguments: {0}")]
    Args(String),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("topic {topic} has {found} partitions, not the {wanted} asked for")]
    TopicPartitions {
        topic: String,
        found: usize,
        wanted: u32,
    },
    #[error("creating topic {topic}: {why}")]
    CreateTopic { topic: String, why: String },
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("postgres is not set up as required: {0}")]
    PostgresSetup(String),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("{0}")]
    Cpu(#[from] crate::cpu::CpuError),
    #[error("no pid of {what} found: {why}")]
    Pid { what: &'static str, why: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("a worker failed: {0}")]
    Worker(String),
}

/// A runtime for a peer's few async calls (topic creation) on the calling thread.
fn current_thread_runtime() -> Result<tokio::runtime::Runtime, PeerError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| PeerError::Io {
            path: "tokio runtime".into(),
            source,
        })
}

/// What the vote sequence is made of.
#[derive(Debug, Clone)]
pub struct VoteSpec {
    pub votes: u64,
    pub voters: u64,
    pub options: u32,
    pub election: String,
    pub seed: u64,
}

/// One vote: a voter (1-based id) and an index into [`Votes::options`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vote {
    pub voter: u64,
    pub option: u32,
}

/// The vote sequence and what it should count to.
#[derive(Debug, Clone)]
pub struct Votes {
    pub election: String,
    pub options: Vec<String>,
    pub seq: Vec<Vote>,
    pub voters: u64,
}

/// The expected outcome: the first vote of each voter counts.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Expected {
    pub election: String,
    pub votes: u64,
    pub voters: u64,
    pub accepted: u64,
    pub duplicates: u64,
    pub seed: u64,
    pub tallies: BTreeMap<String, u64>,
}

/// Option ids `a`, `b`, … `z`, then `o26`, `o27`, … (valid `[a-z0-9-]` ids).
pub fn option_names(n: u32) -> Vec<String> {
    (0..n)
        .map(|i| match u8::try_from(i) {
            Ok(i) if i < 26 => char::from(b'a' + i).to_string(),
            _ => format!("o{i}"),
        })
        .collect()
}

impl Expected {
    /// The expected-tallies file: `{"<election>": {"<option>": count}}`, the shape the other
    /// peers' checks (perf/scripts/peer-kstreams.sh) compare their tallies with.
    pub fn by_election(&self) -> BTreeMap<String, BTreeMap<String, u64>> {
        [(self.election.clone(), self.tallies.clone())].into()
    }
}

impl Votes {
    /// The sequence: `voters` first votes and `votes - voters` repeats spread uniformly among
    /// them (a repeat never comes before its voter's first vote), each vote for a uniform
    /// option. Voters are numbered 1..=voters in order of first appearance.
    pub fn generate(spec: &VoteSpec) -> Result<Self, PeerError> {
        if votes_core::ElectionId::new(spec.election.clone()).is_err() {
            return Err(PeerError::Args(format!(
                "--election {:?}: expected [a-z0-9-]{{1,64}}",
                spec.election
            )));
        }
        if spec.voters == 0 || spec.voters > spec.votes {
            return Err(PeerError::Args(format!(
                "--voters must be within 1..=--votes ({}), got {}",
                spec.votes, spec.voters
            )));
        }
        if spec.voters > i64::MAX as u64 {
            return Err(PeerError::Args("--voters must fit an i64".into()));
        }
        if spec.options == 0 || spec.options > 1000 {
            return Err(PeerError::Args("--options must be within 1..=1000".into()));
        }
        let n = usize::try_from(spec.votes)
            .map_err(|_| PeerError::Args("--votes does not fit this machine".into()))?;
        let mut rng = Rng::new(spec.seed);
        // true = a voter's first vote. Shuffle, then make sure the sequence starts with one.
        let mut first: Vec<bool> = (0..n).map(|i| (i as u64) < spec.voters).collect();
        for i in (1..n).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            first.swap(i, j);
        }
        if let Some(k) = first.iter().position(|f| *f) {
            first.swap(0, k);
        }
        let mut seen = 0u64;
        let seq = first
            .iter()
            .map(|&f| {
                let voter = if f {
                    seen += 1;
                    seen
                } else {
                    1 + rng.below(seen)
                };
                let option = rng.below(u64::from(spec.options)) as u32;
                Vote { voter, option }
            })
            .collect();
        Ok(Self {
            election: spec.election.clone(),
            options: option_names(spec.options),
            seq,
            voters: spec.voters,
        })
    }

    pub fn expected(&self, seed: u64) -> Expected {
        let mut counted = vec![false; usize::try_from(self.voters).unwrap_or(0) + 1];
        let mut tallies: BTreeMap<String, u64> =
            self.options.iter().map(|o| (o.clone(), 0)).collect();
        for v in &self.seq {
            let slot = &mut counted[v.voter as usize];
            if !*slot {
                *slot = true;
                *tallies
                    .get_mut(&self.options[v.option as usize])
                    .expect("option index in range") += 1;
            }
        }
        Expected {
            election: self.election.clone(),
            votes: self.seq.len() as u64,
            voters: self.voters,
            accepted: self.voters,
            duplicates: self.seq.len() as u64 - self.voters,
            seed,
            tallies,
        }
    }

    pub fn option(&self, v: Vote) -> &str {
        &self.options[v.option as usize]
    }

    /// The votes of each of `lanes` lanes (connections), in sequence order, with their global
    /// index: a voter always goes to the same lane (`partition_of(voter, lanes)`), so its votes
    /// reach the server in order and the first one is the one that counts, as in the
    /// appliance, where a voter's partition serializes its votes.
    pub fn lanes(&self, lanes: u32) -> Vec<Vec<(u64, Vote)>> {
        let mut out = vec![Vec::new(); lanes as usize];
        for (i, v) in self.seq.iter().enumerate() {
            let lane = votes_core::routing::partition_of(votes_core::VoterId(v.voter), lanes);
            out[lane as usize].push((i as u64, *v));
        }
        out
    }
}

/// When vote `i` is due: at `i / rate` seconds after `t0` (open loop), or now (closed loop).
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    pub t0: Instant,
    pub rate: Option<f64>,
}

impl Pace {
    pub fn due(&self, i: u64) -> Option<Instant> {
        self.rate
            .map(|r| self.t0 + Duration::from_secs_f64(i as f64 / r))
    }
}

pub fn check_rate(rate: Option<f64>) -> Result<(), PeerError> {
    match rate {
        Some(r) if !(r.is_finite() && r > 0.0) => Err(PeerError::Args(
            "--rate must be a positive number of votes/s".into(),
        )),
        _ => Ok(()),
    }
}

pub fn latency_histogram() -> Histogram<u64> {
    crate::report::latency_histogram()
}

pub fn record(h: &mut Histogram<u64>, d: Duration) {
    crate::report::record_latency(h, d)
}

/// Adds a worker's histogram into the run's. Both have [`latency_histogram`]'s bounds, so a
/// failure is the worker's fault and is reported as its failure.
pub(crate) fn merge_latency(
    into: &mut Histogram<u64>,
    from: &Histogram<u64>,
) -> Result<(), PeerError> {
    into.add(from).map_err(|e| PeerError::Worker(e.to_string()))
}

/// Tallies that differ from the expected ones: option → (expected, found).
pub fn tally_diff(
    expected: &BTreeMap<String, u64>,
    found: &BTreeMap<String, u64>,
) -> BTreeMap<String, (u64, u64)> {
    let mut keys: Vec<&String> = expected.keys().chain(found.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter_map(|k| {
            let e = expected.get(k).copied().unwrap_or(0);
            let f = found.get(k).copied().unwrap_or(0);
            (e != f).then(|| (k.clone(), (e, f)))
        })
        .collect()
}

/// What a run of a peer that writes to the Kafka broker itself (the floor, the commit tier)
/// did and cost: the leading figures of their reports, flattened into them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BrokerRun {
    pub peer: String,
    pub votes: u64,
    pub wall_s: f64,
    pub votes_per_s: f64,
    pub client_cpu_s: f64,
    /// `None` when no broker pid is known (a remote cluster).
    pub broker_cpu_s: Option<f64>,
    pub cpu_s: f64,
    pub votes_per_cpu_s: f64,
    pub cpu_us_per_vote: f64,
}

impl BrokerRun {
    /// The figures of `votes` votes in `wall_s` seconds, the derived ones (rates, CPU per vote)
    /// computed here.
    pub(crate) fn measured(
        peer: &str,
        votes: u64,
        wall_s: f64,
        client_cpu_s: f64,
        broker_cpu_s: Option<f64>,
    ) -> Self {
        let (cpu_s, votes_per_cpu_s, cpu_us_per_vote) =
            cpu_figures(votes, client_cpu_s, broker_cpu_s);
        BrokerRun {
            peer: peer.into(),
            votes,
            wall_s,
            votes_per_s: votes as f64 / wall_s,
            client_cpu_s,
            broker_cpu_s,
            cpu_s,
            votes_per_cpu_s,
            cpu_us_per_vote,
        }
    }

    /// The CPU part of the one-line summary ([`cpu_summary`]).
    pub fn cpu_summary(&self) -> String {
        cpu_summary(
            "broker",
            self.cpu_s,
            self.client_cpu_s,
            self.broker_cpu_s,
            self.cpu_us_per_vote,
            self.votes_per_cpu_s,
        )
    }
}

/// The report of a peer that answers each vote (PostgreSQL, Redis).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServerReport {
    pub peer: String,
    pub votes: u64,
    pub wall_s: f64,
    pub votes_per_s: f64,
    pub client_cpu_s: f64,
    /// `None` when the server's pid is unknown.
    pub server_cpu_s: Option<f64>,
    pub cpu_s: f64,
    pub votes_per_cpu_s: f64,
    pub cpu_us_per_vote: f64,
    pub accepted: u64,
    pub duplicates: u64,
    /// From the intended send time with `--rate` (open loop), else from the actual send.
    pub latency_ms: LatencyMs,
    pub connections: u32,
    /// Requests in flight per connection (Redis pipelining); 1 for PostgreSQL.
    pub pipeline: u32,
    /// `--rate`: votes offered per second, or `None` for a closed loop.
    pub rate: Option<f64>,
    pub verified: bool,
    /// Tallies that differ from the expected ones: option → [expected, found].
    pub tally_diff: BTreeMap<String, (u64, u64)>,
    /// Facts about the server (its version and durability settings).
    pub server: BTreeMap<String, String>,
}

/// CPU figures shared by the reports.
pub fn cpu_figures(votes: u64, client: f64, server: Option<f64>) -> (f64, f64, f64) {
    let cpu = client + server.unwrap_or(0.0);
    let per_cpu = if cpu > 0.0 { votes as f64 / cpu } else { 0.0 };
    let us_per_vote = if votes > 0 {
        cpu * 1e6 / votes as f64
    } else {
        0.0
    };
    (cpu, per_cpu, us_per_vote)
}

/// The CPU part of a peer's one-line summary: the run's total, the client's share plus the
/// `other` side's (`broker` or `server`; "unknown" when its pid is not known, as for a remote
/// cluster), per vote and votes per CPU-second. One wording, so the peers' lines compare.
pub fn cpu_summary(
    other: &str,
    cpu_s: f64,
    client_cpu_s: f64,
    other_cpu_s: Option<f64>,
    cpu_us_per_vote: f64,
    votes_per_cpu_s: f64,
) -> String {
    format!(
        "cpu {cpu_s:.2}s (client {client_cpu_s:.2} + {other} {}) = {cpu_us_per_vote:.1} µs/vote, {votes_per_cpu_s:.0} votes/cpu-s",
        other_cpu_s.map_or("unknown".to_string(), |s| format!("{s:.2}"))
    )
}

impl ServerReport {
    /// The measured part of a run's report, with its derived figures (rates, CPU per vote)
    /// computed here; the caller adds how the run was set up, then [`ServerReport::checked`].
    pub(crate) fn measured(peer: &str, votes: u64, run: &LaneRun) -> Self {
        let (cpu_s, votes_per_cpu_s, cpu_us_per_vote) =
            cpu_figures(votes, run.client_cpu_s, run.server_cpu_s);
        ServerReport {
            peer: peer.into(),
            votes,
            wall_s: run.wall_s,
            votes_per_s: votes as f64 / run.wall_s,
            client_cpu_s: run.client_cpu_s,
            server_cpu_s: run.server_cpu_s,
            cpu_s,
            votes_per_cpu_s,
            cpu_us_per_vote,
            accepted: run.lanes.accepted,
            duplicates: run.lanes.duplicates,
            latency_ms: LatencyMs::of(&run.lanes.latency_us),
            connections: 0,
            pipeline: 1,
            rate: None,
            verified: false,
            tally_diff: BTreeMap::new(),
            server: BTreeMap::new(),
        }
    }

    /// Whether the run held, read back from the server once the lanes are done: its tallies
    /// (`found`, an option without a count as 0) and the voters it stored are the expected
    /// ones, and so many votes were accepted.
    pub(crate) fn checked(
        self,
        expected: &Expected,
        found: &BTreeMap<String, u64>,
        stored: Option<u64>,
    ) -> Self {
        let tally_diff = tally_diff(&expected.tallies, found);
        let verified = tally_diff.is_empty()
            && self.accepted == expected.accepted
            && stored == Some(expected.accepted);
        ServerReport {
            verified,
            tally_diff,
            ..self
        }
    }

    pub fn summary(&self) -> String {
        format!(
            "{}: {} votes in {:.2}s = {:.0} votes/s; {}; latency p50 {:.2} p99 {:.2} p99.9 {:.2} max {:.2} ms; accepted {} duplicates {}; {}",
            self.peer,
            self.votes,
            self.wall_s,
            self.votes_per_s,
            cpu_summary(
                "server",
                self.cpu_s,
                self.client_cpu_s,
                self.server_cpu_s,
                self.cpu_us_per_vote,
                self.votes_per_cpu_s,
            ),
            self.latency_ms.p50,
            self.latency_ms.p99,
            self.latency_ms.p999,
            self.latency_ms.max,
            self.accepted,
            self.duplicates,
            if self.verified {
                "tallies verified".to_string()
            } else {
                format!("TALLIES DIFFER: {:?}", self.tally_diff)
            }
        )
    }
}

/// Writes `value` as pretty JSON to `path`, creating its directory.
pub fn write_json(path: &Path, value: &impl Serialize) -> Result<(), PeerError> {
    let io = |source| PeerError::Io {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut body = serde_json::to_vec_pretty(value).map_err(|e| io(e.into()))?;
    body.push(b'\n');
    std::fs::write(path, body).map_err(io)
}

/// What one connection of the PostgreSQL or Redis peer measured.
pub(crate) struct LaneResult {
    pub latency_us: Histogram<u64>,
    pub accepted: u64,
    pub duplicates: u64,
}

impl LaneResult {
    /// Nothing measured yet: what a lane starts from and the lanes' merge adds into.
    pub fn empty() -> Self {
        LaneResult {
            latency_us: latency_histogram(),
            accepted: 0,
            duplicates: 0,
        }
    }
}

/// What the lanes of a PostgreSQL or Redis run measured, and what they and the server cost.
pub(crate) struct LaneRun {
    pub wall_s: f64,
    pub client_cpu_s: f64,
    /// `None` when the server's pid is unknown.
    pub server_cpu_s: Option<f64>,
    pub lanes: LaneResult,
}

/// Runs the lanes `spawn` starts (on a pace from now) to their end, timed, with this process's
/// CPU and the server's (`server_cpu`: its CPU seconds so far, `None` when its pid is unknown)
/// counted over them; a lane's error is mapped by `failed`.
pub(crate) async fn run_lanes<E>(
    rate: Option<f64>,
    server_cpu: impl Fn() -> Result<Option<f64>, crate::cpu::CpuError>,
    spawn: impl FnOnce(Pace) -> Vec<tokio::task::JoinHandle<Result<LaneResult, E>>>,
    failed: impl Fn(E) -> PeerError,
) -> Result<LaneRun, PeerError> {
    let s0 = server_cpu()?;
    let c0 = crate::cpu::self_cpu_seconds()?;
    let t0 = Instant::now();
    let lanes = join_lanes(spawn(Pace { t0, rate }), failed).await?;
    let wall_s = t0.elapsed().as_secs_f64().max(1e-9);
    let c1 = crate::cpu::self_cpu_seconds()?;
    let s1 = server_cpu()?;
    Ok(LaneRun {
        wall_s,
        client_cpu_s: c1 - c0,
        server_cpu_s: s0.zip(s1).map(|(a, b)| b - a),
        lanes,
    })
}

/// Waits for every lane and merges what they measured; a lane's failure (its error mapped by
/// `failed`) fails the run once all have ended.
async fn join_lanes<E>(
    tasks: Vec<tokio::task::JoinHandle<Result<LaneResult, E>>>,
    failed: impl Fn(E) -> PeerError,
) -> Result<LaneResult, PeerError> {
    let mut all = LaneResult::empty();
    let mut failure = None;
    for t in tasks {
        match t.await {
            Ok(Ok(r)) => {
                merge_latency(&mut all.latency_us, &r.latency_us)?;
                all.accepted += r.accepted;
                all.duplicates += r.duplicates;
            }
            Ok(Err(e)) => failure = Some(failed(e)),
            Err(e) => failure = Some(PeerError::Worker(e.to_string())),
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(all),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(votes: u64, voters: u64) -> VoteSpec {
        VoteSpec {
            votes,
            voters,
            options: 3,
            election: "perf".into(),
            seed: 7,
        }
    }

    #[test]
    fn sequence_has_the_asked_voters_and_repeats() {
        let v = Votes::generate(&spec(10_000, 9_000)).unwrap();
        assert_eq!(v.seq.len(), 10_000);
        let mut seen = std::collections::HashSet::new();
        let mut next = 1;
        for vote in &v.seq {
            if seen.insert(vote.voter) {
                assert_eq!(vote.voter, next, "voters numbered in order of appearance");
                next += 1;
            } else {
                assert!(vote.voter < next);
            }
            assert!(vote.option < 3);
        }
        assert_eq!(seen.len(), 9_000);
        let e = v.expected(7);
        assert_eq!(e.accepted, 9_000);
        assert_eq!(e.duplicates, 1_000);
        assert_eq!(e.tallies.values().sum::<u64>(), 9_000);
        assert_eq!(
            e.tallies.keys().cloned().collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        // Deterministic for a seed.
        assert_eq!(Votes::generate(&spec(10_000, 9_000)).unwrap().seq, v.seq);
    }

    #[test]
    fn lanes_keep_a_voter_in_order() {
        let v = Votes::generate(&spec(5_000, 1_000)).unwrap();
        let lanes = v.lanes(4);
        assert_eq!(lanes.iter().map(Vec::len).sum::<usize>(), 5_000);
        for lane in &lanes {
            assert!(lane.windows(2).all(|w| w[0].0 < w[1].0));
        }
    }

    #[test]
    fn refuses_bad_specs() {
        assert!(Votes::generate(&spec(10, 0)).is_err());
        assert!(Votes::generate(&spec(10, 11)).is_err());
        let mut s = spec(10, 5);
        s.election = "Bad Name".into();
        assert!(Votes::generate(&s).is_err());
        assert_eq!(option_names(28)[25], "z");
        assert_eq!(option_names(28)[27], "o27");
    }

    #[test]
    fn a_server_run_holds_only_with_the_expected_tallies_voters_and_acceptances() {
        let mut expected = Votes::generate(&spec(100, 90)).unwrap().expected(7);
        expected.tallies.insert("nobody".into(), 0);
        let run = LaneRun {
            wall_s: 1.0,
            client_cpu_s: 0.5,
            server_cpu_s: None,
            lanes: LaneResult {
                accepted: 90,
                ..LaneResult::empty()
            },
        };
        let report = ServerReport::measured("test", 100, &run);
        // The server has no count for an option nobody voted for.
        let mut found = expected.tallies.clone();
        found.remove("nobody");
        assert!(report.clone().checked(&expected, &found, Some(90)).verified);
        assert!(!report.clone().checked(&expected, &found, Some(89)).verified);
        assert!(!report.clone().checked(&expected, &found, None).verified);
        *found.get_mut("a").unwrap() += 1;
        let off = report.checked(&expected, &found, Some(90));
        assert!(!off.verified);
        let a = expected.tallies["a"];
        assert_eq!(off.tally_diff, [("a".to_string(), (a, a + 1))].into());
    }

    #[test]
    fn diffs_tallies() {
        let e: BTreeMap<String, u64> = [("a".into(), 2), ("b".into(), 3)].into();
        let f: BTreeMap<String, u64> = [("a".into(), 2), ("c".into(), 1)].into();
        let d = tally_diff(&e, &f);
        assert_eq!(d.len(), 2);
        assert_eq!(d["b"], (3, 0));
        assert_eq!(d["c"], (0, 1));
    }
}
