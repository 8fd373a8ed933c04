//! The campaign's checker: a pure judgement of what the clients saw (the history) against what
//! the checker itself read from the engines at the end (the committed log, DynamoDB, the Redis
//! tallies, the official result and the proofs the server handed out). No I/O here, so the
//! judgement can be tested against synthetic histories: a checker that cannot fail proves
//! nothing.
//!
//! It trusts none of the system's verdicts: the counted votes are rebuilt from the log as the
//! audit counts them (tree order, first vote of each voter, up to each partition's first close
//! marker), each receipt is rebuilt with [`Leaf::of`] from the record at the `202`'s position
//! and its served inclusion proof verified against the official root, which must itself be the
//! root of the log's counted leaves.

use std::collections::{BTreeMap, HashMap, HashSet};

use votes_core::merkle::{self, Hash};
use votes_core::receipt::Leaf;
use votes_core::record::{LogRecord, VoteRecord};
use votes_core::{VoterId, routing};

use super::{AdminWrite, Attempt, Fault};

/// A partition without a `202` for longer than this is reported as unavailable.
pub const GAP_MS: u64 = 1_000;
/// How long after a fault heals a window is still put down to it: a restarted node rejoins
/// the group, which moves partitions once more.
pub const AFTERMATH_MS: u64 = 30_000;

/// What the run was set up with.
#[derive(Clone, Copy, Debug)]
pub struct Setup<'a> {
    pub election: &'a str,
    pub options: &'a [&'a str],
    pub partitions: u32,
    pub audit_key: &'a [u8],
}

/// One attempt of the operator to close the election during load.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct CloseCall {
    pub node: usize,
    pub sent_ms: u64,
    pub answered_ms: u64,
    /// 0: no answer.
    pub status: u16,
}

/// What the run did, as its clients saw it.
#[derive(Clone, Copy, Debug)]
pub struct History<'a> {
    pub attempts: &'a [Attempt],
    pub faults: &'a [Fault],
    pub admin: &'a [AdminWrite],
    /// The election's version after its open.
    pub opened_version: u64,
    pub close: &'a [CloseCall],
    /// Unix ms when the voters started.
    pub load_from_ms: u64,
    /// Unix ms when the voters stopped.
    pub load_to_ms: u64,
}

impl History<'_> {
    /// When the first close attempt left: from then on `409 election_not_open` is in the
    /// contract and a partition may stop answering `202`.
    pub fn close_sent_ms(&self) -> Option<u64> {
        self.close.iter().map(|c| c.sent_ms).min()
    }
}

/// An inclusion proof as `GET …/receipts/{receipt}` served it.
#[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize, PartialEq, Eq)]
pub struct ServedProof {
    pub leaf_index: u64,
    pub tree_size: u64,
    pub root: String,
    pub audit_path: Vec<String>,
}

/// The final state, read by the checker itself.
#[derive(Clone, Debug, Default)]
pub struct Engines {
    /// Every committed record of the votes topic: (partition, offset, record), in any order.
    pub log: Vec<(u32, u64, LogRecord)>,
    /// `GET …/results` once final (or the last answer).
    pub official: serde_json::Value,
    /// Receipt → the proof served for it; a receipt without one had no proof.
    pub proofs: HashMap<String, ServedProof>,
    /// Voter → option of every vote item in DynamoDB.
    pub dynamo: HashMap<u64, String>,
    /// Per partition, the Redis tally hash (option → count, `_offset`).
    pub redis: Vec<HashMap<String, String>>,
    /// The election as the admin API lists it at the end.
    pub election: serde_json::Value,
}

/// One way the run broke the contract.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Anomaly {
    #[error("voter {voter}: a 202 without partition and offset")]
    AckWithoutPosition { voter: u64 },
    #[error("voter {voter}: 202 in partition {partition}, not the voter's own")]
    AckWrongPartition { voter: u64, partition: u32 },
    #[error(
        "voter {voter}: 202 at {partition}/{offset}, at or past the partition's close frontier {frontier}: a vote past the close must be refused"
    )]
    AckPastFrontier {
        voter: u64,
        partition: u32,
        offset: u64,
        frontier: u64,
    },
    #[error(
        "voter {voter}: 202 at {partition}/{offset} ({in_log:?} in the log there) is not counted: an acknowledged vote lost"
    )]
    AckLost {
        voter: u64,
        partition: u32,
        offset: u64,
        in_log: Option<String>,
    },
    #[error(
        "voter {voter}: 202 for {option} at {partition}/{offset}, but the counted vote is {counted_option} at {counted_partition}/{counted_offset}"
    )]
    AckNotCounted {
        voter: u64,
        option: String,
        partition: u32,
        offset: u64,
        counted_option: String,
        counted_partition: u32,
        counted_offset: u64,
    },
    #[error("voter {voter}: receipt {served:?}, but the log's record there makes {rebuilt}")]
    ReceiptNotTheLeaf {
        voter: u64,
        served: Option<String>,
        rebuilt: String,
    },
    #[error("voter {voter}: receipt {receipt} does not verify: {why}")]
    ReceiptUnproven {
        voter: u64,
        receipt: String,
        why: String,
    },
    #[error("voter {voter} has records in partitions {first} and {second}: counted twice")]
    CountedTwice { voter: u64, first: u32, second: u32 },
    #[error("voter {voter}: 409 already_voted, but no committed vote")]
    AlreadyVotedWithoutVote { voter: u64 },
    #[error("voter {voter}: an answer outside the contract: {status} {code:?}")]
    OutsideContract {
        voter: u64,
        status: u16,
        code: Option<String>,
    },
    #[error("close markers in {found} of {partitions} partitions")]
    CloseMarkers { found: u32, partitions: u32 },
    #[error("the election did not become final: {official}")]
    NotFinal { official: String },
    #[error("{option}: official {official}, the log's first votes {log}")]
    OfficialTotal {
        option: String,
        official: u64,
        log: u64,
    },
    #[error("official tree size {official:?}, {log} voters counted in the log")]
    TreeSize { official: Option<u64>, log: u64 },
    #[error("official root {official:?}, the root of the log's counted votes {log}")]
    OfficialRoot {
        official: Option<String>,
        log: String,
    },
    #[error(
        "partition {partition}: official frontier {official:?}, the log's first close marker {log:?}"
    )]
    Frontier {
        partition: u32,
        official: Option<u64>,
        log: Option<u64>,
    },
    #[error("voter {voter}: DynamoDB holds {dynamo:?}, the log's first vote is {log}")]
    DynamoDiffers {
        voter: u64,
        dynamo: Option<String>,
        log: String,
    },
    #[error("voter {voter}: in DynamoDB but not counted in the log")]
    DynamoExtra { voter: u64 },
    #[error("partition {partition}, {option}: Redis tally {redis}, the log's first votes {log}")]
    RedisTally {
        partition: u32,
        option: String,
        redis: u64,
        log: u64,
    },
    #[error("admin write {n}: a 200 without its version")]
    AdminWithoutVersion { n: u64 },
    #[error(
        "admin writes {first} and {second} were both acknowledged as version {version}: one is lost"
    )]
    AdminLostWrite {
        first: u64,
        second: u64,
        version: u64,
    },
    #[error("admin write {n}: an answer outside the contract: {status}")]
    AdminOutsideContract { n: u64, status: u16 },
    #[error(
        "the election ended at version {version}, expected {least}..={most} (open, acknowledged writes, close, final, unsure writes)"
    )]
    Versions { version: u64, least: u64, most: u64 },
    #[error("the election ended at version {version}, below the acknowledged {acknowledged}")]
    VersionBelowAcknowledged { version: u64, acknowledged: u64 },
}

/// Which edge of the run a window touches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Edge {
    /// From the start of the load to the partition's first `202`.
    Start,
    /// Between two `202`s.
    Between,
    /// From the partition's last `202` to the end of the load (or the close).
    End,
    /// No `202` at all.
    Whole,
}

/// A time a partition gave no `202`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Window {
    pub partition: u32,
    /// Since the load started.
    pub from_ms: u64,
    pub length_ms: u64,
    pub edge: Edge,
    /// The latest fault that began before the window ended and ended (plus its aftermath)
    /// after it began; "none" without one.
    pub cause: &'static str,
    pub cause_target: Option<String>,
}

/// The checker's judgement of one run.
#[derive(Clone, Debug, Default)]
pub struct Verdict {
    pub anomalies: Vec<Anomaly>,
    /// Voters answered `202`.
    pub acknowledged: u64,
    /// Admin writes answered `200`.
    pub admin_writes: u64,
    /// Votes refused `409 election_not_open` after the close began.
    pub refused_after_close: u64,
}

/// The votes the audit counts, rebuilt from the log.
struct Counted<'a> {
    /// voter → (partition, offset, record) of the counted vote.
    votes: HashMap<u64, (u32, u64, &'a VoteRecord)>,
    /// Leaf hashes in tree order.
    leaves: Vec<Hash>,
    /// Per partition, the offset of the election's first close marker.
    frontier: BTreeMap<u32, u64>,
    /// Every vote record of the election by position, counted or not.
    at: HashMap<(u32, u64), &'a VoteRecord>,
    /// (partition, option) → counted votes.
    per_partition: BTreeMap<(u32, String), u64>,
}

fn count<'a>(
    setup: &Setup<'_>,
    log: &'a [(u32, u64, LogRecord)],
    out: &mut Vec<Anomaly>,
) -> Counted<'a> {
    // Tree order: partition by partition, each in offset order, as the audit reads it.
    let mut sorted: Vec<&(u32, u64, LogRecord)> = log.iter().collect();
    sorted.sort_by_key(|(p, o, _)| (*p, *o));
    let mut c = Counted {
        votes: HashMap::new(),
        leaves: Vec::new(),
        frontier: BTreeMap::new(),
        at: HashMap::new(),
        per_partition: BTreeMap::new(),
    };
    // A voter's records all belong in one partition; the first partition seen, per voter.
    let mut home: HashMap<u64, u32> = HashMap::new();
    let mut twice: HashSet<u64> = HashSet::new();
    for (p, o, rec) in sorted {
        match rec {
            LogRecord::Close(m) if m.election.as_str() == setup.election => {
                c.frontier.entry(*p).or_insert(*o);
            }
            LogRecord::Vote(v) if v.election.as_str() == setup.election => {
                c.at.insert((*p, *o), v);
                let first = *home.entry(v.voter.0).or_insert(*p);
                if first != *p && twice.insert(v.voter.0) {
                    out.push(Anomaly::CountedTwice {
                        voter: v.voter.0,
                        first,
                        second: *p,
                    });
                }
                if c.frontier.contains_key(p) || c.votes.contains_key(&v.voter.0) {
                    continue;
                }
                let leaf = Leaf::of(setup.audit_key, v.clone().into(), *p, *o);
                c.leaves.push(leaf.leaf_hash());
                c.votes.insert(v.voter.0, (*p, *o, v));
                *c.per_partition
                    .entry((*p, v.option.as_str().to_owned()))
                    .or_default() += 1;
            }
            _ => {}
        }
    }
    c
}

fn hash_of_hex(s: &str) -> Option<Hash> {
    let mut h = [0u8; 32];
    hex::decode_to_slice(s, &mut h).ok()?;
    Some(h)
}

/// Judges a run: every anomaly the history and the engines' final state show together.
pub fn judge(setup: &Setup<'_>, history: &History<'_>, engines: &Engines) -> Verdict {
    let mut out = Vec::new();
    let c = count(setup, &engines.log, &mut out);
    let official = &engines.official;
    let final_ = official["state"] == "final";
    if c.frontier.len() != setup.partitions as usize {
        out.push(Anomaly::CloseMarkers {
            found: c.frontier.len() as u32,
            partitions: setup.partitions,
        });
    }
    let official_root = official["merkle"]["root"].as_str().and_then(hash_of_hex);
    let official_size = official["merkle"]["tree_size"].as_u64();

    let mut acked = HashSet::new();
    for a in history.attempts.iter().filter(|a| a.status == 202) {
        acked.insert(a.voter);
        let (Some(p), Some(o)) = (a.partition, a.offset) else {
            out.push(Anomaly::AckWithoutPosition { voter: a.voter });
            continue;
        };
        if routing::partition_of(VoterId(a.voter), setup.partitions) != p {
            out.push(Anomaly::AckWrongPartition {
                voter: a.voter,
                partition: p,
            });
        }
        if let Some(&frontier) = c.frontier.get(&p)
            && o >= frontier
        {
            out.push(Anomaly::AckPastFrontier {
                voter: a.voter,
                partition: p,
                offset: o,
                frontier,
            });
            continue;
        }
        match c.votes.get(&a.voter) {
            Some((cp, co, v)) if (*cp, *co) == (p, o) && v.option.as_str() == a.option => {}
            Some((cp, co, v)) => {
                out.push(Anomaly::AckNotCounted {
                    voter: a.voter,
                    option: a.option.to_owned(),
                    partition: p,
                    offset: o,
                    counted_option: v.option.as_str().to_owned(),
                    counted_partition: *cp,
                    counted_offset: *co,
                });
                continue;
            }
            None => {
                out.push(Anomaly::AckLost {
                    voter: a.voter,
                    partition: p,
                    offset: o,
                    in_log: c
                        .at
                        .get(&(p, o))
                        .map(|v| format!("voter {} for {}", v.voter.0, v.option.as_str())),
                });
                continue;
            }
        }
        // The receipt is the leaf of the record at the 202's position, whoever computes it.
        let record = c.at[&(p, o)];
        let leaf = Leaf::of(setup.audit_key, record.clone().into(), p, o);
        let rebuilt = leaf.receipt_hex();
        if a.receipt.as_deref() != Some(rebuilt.as_str()) {
            out.push(Anomaly::ReceiptNotTheLeaf {
                voter: a.voter,
                served: a.receipt.clone(),
                rebuilt,
            });
            continue;
        }
        if !final_ {
            // NotFinal below says it once; no proof can be asked for.
            continue;
        }
        let why = match (engines.proofs.get(&rebuilt), official_root, official_size) {
            (None, _, _) => Some("no proof was served".to_owned()),
            (Some(_), None, _) | (Some(_), _, None) => {
                Some("the official result has no Merkle root".to_owned())
            }
            (Some(proof), Some(root), Some(size)) => {
                let path: Option<Vec<Hash>> =
                    proof.audit_path.iter().map(|h| hash_of_hex(h)).collect();
                match path {
                    None => Some("its audit path is not hex hashes".to_owned()),
                    Some(path)
                        if merkle::verify_inclusion(
                            &leaf.leaf_hash(),
                            proof.leaf_index,
                            size,
                            &path,
                            &root,
                        ) =>
                    {
                        None
                    }
                    Some(_) => Some(format!(
                        "its proof (index {} of {}) does not lead to the official root",
                        proof.leaf_index, size
                    )),
                }
            }
        };
        if let Some(why) = why {
            out.push(Anomaly::ReceiptUnproven {
                voter: a.voter,
                receipt: rebuilt,
                why,
            });
        }
    }

    let close_sent = history.close_sent_ms();
    let mut refused_after_close = 0;
    for a in history.attempts {
        match (a.status, a.code.as_deref()) {
            (0 | 202 | 503, _) => {}
            (409, Some("already_voted")) => {
                if !c.votes.contains_key(&a.voter) {
                    out.push(Anomaly::AlreadyVotedWithoutVote { voter: a.voter });
                }
            }
            // A vote still in flight when the close began may be refused: the owner checks
            // the election again at its turn.
            (409, Some("election_not_open")) if close_sent.is_some_and(|t| a.answered_ms >= t) => {
                refused_after_close += 1;
            }
            (status, code) => out.push(Anomaly::OutsideContract {
                voter: a.voter,
                status,
                code: code.map(str::to_owned),
            }),
        }
    }

    // The official result against the log.
    if !final_ {
        out.push(Anomaly::NotFinal {
            official: official.to_string(),
        });
    } else {
        let mut tallies: BTreeMap<&str, u64> = BTreeMap::new();
        for (_, _, v) in c.votes.values() {
            *tallies.entry(v.option.as_str()).or_default() += 1;
        }
        for o in setup.options {
            let (theirs, ours) = (
                official["totals"][*o].as_u64().unwrap_or(0),
                tallies.get(o).copied().unwrap_or(0),
            );
            if theirs != ours {
                out.push(Anomaly::OfficialTotal {
                    option: (*o).to_owned(),
                    official: theirs,
                    log: ours,
                });
            }
        }
        if official_size != Some(c.votes.len() as u64) {
            out.push(Anomaly::TreeSize {
                official: official_size,
                log: c.votes.len() as u64,
            });
        }
        let root = merkle::root(&c.leaves);
        if official_root != Some(root) {
            out.push(Anomaly::OfficialRoot {
                official: official["merkle"]["root"].as_str().map(str::to_owned),
                log: hex::encode(root),
            });
        }
        for p in 0..setup.partitions {
            let theirs = official["frontier"][p.to_string()].as_u64();
            let ours = c.frontier.get(&p).copied();
            if theirs != ours {
                out.push(Anomaly::Frontier {
                    partition: p,
                    official: theirs,
                    log: ours,
                });
            }
        }
    }

    // DynamoDB holds each counted voter's first vote, and nothing else.
    let mut voters: Vec<_> = c.votes.iter().collect();
    voters.sort_by_key(|(v, _)| **v);
    for (voter, (_, _, v)) in voters {
        match engines.dynamo.get(voter) {
            Some(o) if o == v.option.as_str() => {}
            other => out.push(Anomaly::DynamoDiffers {
                voter: *voter,
                dynamo: other.cloned(),
                log: v.option.as_str().to_owned(),
            }),
        }
    }
    let mut extra: Vec<u64> = engines
        .dynamo
        .keys()
        .filter(|v| !c.votes.contains_key(v))
        .copied()
        .collect();
    extra.sort_unstable();
    out.extend(
        extra
            .into_iter()
            .map(|voter| Anomaly::DynamoExtra { voter }),
    );

    // The third count: each partition's Redis tally against the log's first votes there.
    let empty = HashMap::new();
    for p in 0..setup.partitions {
        let hash = engines.redis.get(p as usize).unwrap_or(&empty);
        let mut options: Vec<&str> = setup.options.to_vec();
        options.extend(
            hash.keys()
                .map(String::as_str)
                .filter(|k| !k.starts_with('_')),
        );
        options.sort_unstable();
        options.dedup();
        for o in options {
            let redis = hash.get(o).and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
            let log = c
                .per_partition
                .get(&(p, o.to_owned()))
                .copied()
                .unwrap_or(0);
            if redis != log {
                out.push(Anomaly::RedisTally {
                    partition: p,
                    option: o.to_owned(),
                    redis,
                    log,
                });
            }
        }
    }

    let admin_writes = judge_admin(history, &engines.election, &mut out);
    Verdict {
        anomalies: out,
        acknowledged: acked.len() as u64,
        admin_writes,
        refused_after_close,
    }
}

/// Admin writes: no two acknowledged writes made the same version (one of them would be
/// lost), and the versions add up: from the open, each acknowledged write, the close and
/// `final` made one, and each write without a clear answer (none, or 503) at most one.
/// Returns the writes acknowledged.
fn judge_admin(history: &History<'_>, election: &serde_json::Value, out: &mut Vec<Anomaly>) -> u64 {
    let admin = history.admin;
    let acknowledged = admin.iter().filter(|w| w.status == 200).count() as u64;
    let mut made: BTreeMap<u64, u64> = BTreeMap::new();
    for w in admin.iter().filter(|w| w.status == 200) {
        let Some(v) = w.version else {
            out.push(Anomaly::AdminWithoutVersion { n: w.n });
            continue;
        };
        if let Some(first) = made.insert(v, w.n) {
            out.push(Anomaly::AdminLostWrite {
                first,
                second: w.n,
                version: v,
            });
        }
    }
    for w in admin
        .iter()
        .filter(|w| !matches!(w.status, 0 | 200 | 409 | 503))
    {
        out.push(Anomaly::AdminOutsideContract {
            n: w.n,
            status: w.status,
        });
    }
    let unsure = admin.iter().filter(|w| matches!(w.status, 0 | 503)).count() as u64;
    // The close makes one version however many attempts it took: a retry after a lost
    // answer meets the closed election and is refused.
    let least = history.opened_version + acknowledged + 2;
    let version = election["version"].as_u64().unwrap_or(0);
    if !(least..=least + unsure).contains(&version) {
        out.push(Anomaly::Versions {
            version,
            least,
            most: least + unsure,
        });
    }
    if let Some(v) = made.keys().next_back()
        && version < *v
    {
        out.push(Anomaly::VersionBelowAcknowledged {
            version,
            acknowledged: *v,
        });
    }
    acknowledged
}

/// The windows in which a partition gave no `202` for longer than [`GAP_MS`], from the start
/// of the load to its end or the close, whichever came first, edges included: a partition that
/// never served until late, or stopped early, is unavailable too.
pub fn windows(history: &History<'_>, partitions: u32) -> Vec<Window> {
    let from = history.load_from_ms;
    let to = history
        .close_sent_ms()
        .map_or(history.load_to_ms, |c| c.min(history.load_to_ms))
        .max(from);
    let mut by_partition: BTreeMap<u32, Vec<u64>> =
        (0..partitions).map(|p| (p, Vec::new())).collect();
    for a in history
        .attempts
        .iter()
        .filter(|a| a.status == 202 && !a.duplicate)
    {
        if let Some(p) = a.partition
            && (from..=to).contains(&a.answered_ms)
        {
            by_partition.entry(p).or_default().push(a.answered_ms);
        }
    }
    let mut out = Vec::new();
    for (p, mut times) in by_partition {
        times.sort_unstable();
        let mut points = Vec::with_capacity(times.len() + 2);
        points.push(from);
        points.extend(times.iter().copied());
        points.push(to);
        let last = points.len() - 2;
        for (i, w) in points.windows(2).enumerate() {
            let length = w[1] - w[0];
            if length <= GAP_MS {
                continue;
            }
            let edge = match (i == 0, i == last) {
                (true, true) => Edge::Whole,
                (true, false) => Edge::Start,
                (false, true) => Edge::End,
                (false, false) => Edge::Between,
            };
            let cause = history
                .faults
                .iter()
                .filter(|f| f.from_ms <= w[1] && f.to_ms + AFTERMATH_MS >= w[0])
                .max_by_key(|f| f.from_ms);
            out.push(Window {
                partition: p,
                from_ms: w[0] - from,
                length_ms: length,
                edge,
                cause: cause.map_or("none", |f| f.kind),
                cause_target: cause.map(|f| f.target.clone()),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests;
