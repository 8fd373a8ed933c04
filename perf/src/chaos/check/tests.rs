//! The checker against synthetic histories: a clean run yields no anomaly, and each way of
//! breaking the contract yields exactly its own. The world is built by hand here (votes laid
//! out in partitions, the official tree and proofs made with the core's Merkle functions), not
//! by the code under test.

use super::*;
use votes_core::record::CloseRecord;
use votes_core::{ElectionId, OptionId};

const KEY: &[u8] = b"audit key of the checker's tests";
const OPTIONS: [&str; 3] = ["red", "green", "blue"];
const P: u32 = 2;
/// The load's start, unix ms.
const T0: u64 = 1_800_000_000_000;

fn setup() -> Setup<'static> {
    Setup {
        election: "chaos",
        options: &OPTIONS,
        partitions: P,
        audit_key: KEY,
    }
}

fn record(voter: u64, option: &str) -> VoteRecord {
    VoteRecord {
        election: ElectionId::new("chaos").unwrap(),
        voter: VoterId(voter),
        option: OptionId::new(option).unwrap(),
        received_at_ms: T0 + voter,
        node: "node-0".into(),
        core: 0,
        nonce: [voter as u8; 16],
    }
}

fn attempt(voter: u64, option: &'static str, at: u64, status: u16) -> Attempt {
    Attempt {
        voter,
        option,
        node: 0,
        protocol: "h1",
        duplicate: false,
        sent_ms: at,
        answered_ms: at + 10,
        status,
        code: None,
        receipt: None,
        partition: None,
        offset: None,
    }
}

struct World {
    attempts: Vec<Attempt>,
    faults: Vec<Fault>,
    admin: Vec<AdminWrite>,
    close: Vec<CloseCall>,
    engines: Engines,
}

impl World {
    fn history(&self) -> History<'_> {
        History {
            attempts: &self.attempts,
            faults: &self.faults,
            admin: &self.admin,
            opened_version: 2,
            close: &self.close,
            load_from_ms: T0,
            load_to_ms: T0 + 60_000,
        }
    }

    fn judge(&self) -> Verdict {
        judge(&setup(), &self.history(), &self.engines)
    }

    /// The voter of `partition` at `offset` in the clean world.
    fn ack_at(&self, partition: u32, offset: u64) -> &Attempt {
        self.attempts
            .iter()
            .find(|a| a.status == 202 && a.partition == Some(partition) && a.offset == Some(offset))
            .unwrap()
    }
}

/// Voters 1..=n vote once each, acknowledged; `extra` records (partition, voter, option) are
/// committed after them (never acknowledged, never counted); each partition then closes. The
/// engines hold exactly the log's first votes.
fn world(n: u64, extra: &[(u32, u64, &'static str)]) -> World {
    let mut log = Vec::new();
    let mut next = [0u64; P as usize];
    let mut attempts = Vec::new();
    let mut counted: Vec<(u32, u64, u64, &'static str, Hash)> = Vec::new();
    for voter in 1..=n {
        let option = OPTIONS[(voter % 3) as usize];
        let p = routing::partition_of(VoterId(voter), P);
        let o = next[p as usize];
        next[p as usize] += 1;
        let rec = record(voter, option);
        let leaf = Leaf::of(KEY, rec.clone().into(), p, o);
        log.push((p, o, LogRecord::Vote(rec)));
        let mut a = attempt(voter, option, T0 + 100 * voter, 202);
        a.receipt = Some(leaf.receipt_hex());
        a.partition = Some(p);
        a.offset = Some(o);
        attempts.push(a);
        counted.push((p, o, voter, option, leaf.leaf_hash()));
    }
    for (p, voter, option) in extra {
        let o = next[*p as usize];
        next[*p as usize] += 1;
        log.push((*p, o, LogRecord::Vote(record(*voter, option))));
    }
    let close_at = T0 + 100 * (n + 1);
    for p in 0..P {
        let o = next[p as usize];
        log.push((
            p,
            o,
            LogRecord::Close(CloseRecord {
                election: ElectionId::new("chaos").unwrap(),
                closed_at_ms: close_at,
                node: "node-0".into(),
                core: 0,
            }),
        ));
    }
    // The log as a consumer polls it: partitions interleaved.
    log.reverse();
    counted.sort_by_key(|c| (c.0, c.1));
    let leaves: Vec<Hash> = counted.iter().map(|c| c.4).collect();
    let root = hex::encode(merkle::root(&leaves));
    let mut totals = serde_json::Map::new();
    let mut redis: Vec<HashMap<String, String>> = vec![HashMap::new(); P as usize];
    let mut dynamo = HashMap::new();
    let mut proofs = HashMap::new();
    for (i, (p, _, voter, option, hash)) in counted.iter().enumerate() {
        let t = totals.entry(*option).or_insert(serde_json::json!(0));
        *t = serde_json::json!(t.as_u64().unwrap() + 1);
        let r = redis[*p as usize].entry((*option).to_owned()).or_default();
        *r = (r.parse::<u64>().unwrap_or(0) + 1).to_string();
        dynamo.insert(*voter, (*option).to_owned());
        proofs.insert(
            hex::encode(hash),
            ServedProof {
                leaf_index: i as u64,
                tree_size: leaves.len() as u64,
                root: root.clone(),
                audit_path: merkle::audit_path(i, &leaves)
                    .unwrap()
                    .iter()
                    .map(hex::encode)
                    .collect(),
            },
        );
    }
    for (p, h) in redis.iter_mut().enumerate() {
        h.insert("_offset".into(), next[p].to_string());
    }
    let frontier: serde_json::Map<String, serde_json::Value> = (0..P)
        .map(|p| (p.to_string(), serde_json::json!(next[p as usize])))
        .collect();
    World {
        attempts,
        faults: Vec::new(),
        admin: Vec::new(),
        close: vec![CloseCall {
            node: 0,
            sent_ms: close_at,
            answered_ms: close_at + 20,
            status: 200,
        }],
        engines: Engines {
            log,
            official: serde_json::json!({
                "state": "final",
                "totals": totals,
                "merkle": {"root": root, "tree_size": leaves.len()},
                "frontier": frontier,
            }),
            proofs,
            dynamo,
            redis,
            // open (2) + close + final
            election: serde_json::json!({"version": 4}),
        },
    }
}

fn only(w: &World) -> Anomaly {
    let v = w.judge();
    assert_eq!(
        v.anomalies.len(),
        1,
        "exactly one anomaly: {:#?}",
        v.anomalies
    );
    v.anomalies[0].clone()
}

/// A voter of partition `p` not among voters 1..=n.
fn new_voter_of(p: u32, n: u64) -> u64 {
    (n + 1..)
        .find(|v| routing::partition_of(VoterId(*v), P) == p)
        .unwrap()
}

#[test]
fn a_clean_history_has_no_anomaly() {
    let w = world(12, &[]);
    let v = w.judge();
    assert_eq!(v.anomalies, Vec::<Anomaly>::new());
    assert_eq!(v.acknowledged, 12);
}

#[test]
fn a_202_not_in_the_log_at_its_position_is_a_lost_vote() {
    let mut w = world(12, &[]);
    let occupant = w.ack_at(0, 1).voter;
    let lost = new_voter_of(0, 12);
    let mut a = attempt(lost, "red", T0 + 50, 202);
    a.partition = Some(0);
    a.offset = Some(1);
    a.receipt = Some("00".repeat(32));
    w.attempts.push(a);
    match only(&w) {
        Anomaly::AckLost {
            voter,
            partition: 0,
            offset: 1,
            in_log: Some(what),
        } => {
            assert_eq!(voter, lost);
            assert!(what.contains(&format!("voter {occupant} ")), "{what}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_voter_with_records_in_two_partitions_is_counted_twice() {
    // A voter of partition 0 whose second record landed in partition 1 (after its own votes,
    // so the audit's first-vote rule still counts the one in partition 0).
    let probe = world(12, &[]);
    let voter = probe.ack_at(0, 0).voter;
    let w = world(12, &[(1, voter, "blue")]);
    assert_eq!(
        only(&w),
        Anomaly::CountedTwice {
            voter,
            first: 0,
            second: 1
        }
    );
}

#[test]
fn a_409_already_voted_without_a_committed_vote_is_an_anomaly() {
    let mut w = world(12, &[]);
    let mut a = attempt(99, "red", T0 + 50, 409);
    a.code = Some("already_voted".into());
    w.attempts.push(a);
    assert_eq!(only(&w), Anomaly::AlreadyVotedWithoutVote { voter: 99 });
}

#[test]
fn dynamodb_holding_another_option_than_the_logs_first_vote_is_an_anomaly() {
    let mut w = world(12, &[]);
    w.engines.dynamo.insert(5, "green".into());
    let log = OPTIONS[(5 % 3) as usize];
    assert_ne!(log, "green");
    assert_eq!(
        only(&w),
        Anomaly::DynamoDiffers {
            voter: 5,
            dynamo: Some("green".into()),
            log: log.into()
        }
    );
    let mut w = world(12, &[]);
    w.engines.dynamo.insert(500, "red".into());
    assert_eq!(only(&w), Anomaly::DynamoExtra { voter: 500 });
}

#[test]
fn official_totals_other_than_the_logs_are_an_anomaly() {
    let mut w = world(12, &[]);
    let red = w.engines.official["totals"]["red"].as_u64().unwrap();
    w.engines.official["totals"]["red"] = serde_json::json!(red + 1);
    assert_eq!(
        only(&w),
        Anomaly::OfficialTotal {
            option: "red".into(),
            official: red + 1,
            log: red
        }
    );
}

#[test]
fn a_receipt_other_than_the_leaf_of_the_logged_record_is_an_anomaly() {
    let mut w = world(12, &[]);
    let i = w.attempts.iter().position(|a| a.voter == 7).unwrap();
    let rebuilt = w.attempts[i].receipt.clone().unwrap();
    w.attempts[i].receipt = Some("ab".repeat(32));
    assert_eq!(
        only(&w),
        Anomaly::ReceiptNotTheLeaf {
            voter: 7,
            served: Some("ab".repeat(32)),
            rebuilt
        }
    );
}

#[test]
fn a_served_proof_that_does_not_lead_to_the_official_root_is_an_anomaly() {
    let mut w = world(12, &[]);
    let receipt = w
        .attempts
        .iter()
        .find(|a| a.voter == 7)
        .unwrap()
        .receipt
        .clone()
        .unwrap();
    // The server's proof for it names a wrong sibling.
    w.engines.proofs.get_mut(&receipt).unwrap().audit_path[0] = "cd".repeat(32);
    match only(&w) {
        Anomaly::ReceiptUnproven {
            voter: 7,
            receipt: r,
            ..
        } => assert_eq!(r, receipt),
        other => panic!("{other:?}"),
    }
    // No proof served at all.
    let mut w = world(12, &[]);
    w.engines.proofs.remove(&receipt);
    assert!(matches!(
        only(&w),
        Anomaly::ReceiptUnproven { voter: 7, .. }
    ));
}

#[test]
fn an_official_root_other_than_the_logs_is_an_anomaly() {
    let mut w = world(12, &[]);
    // A tree over other leaves whose proofs are consistent with it: only the root of the
    // log's counted votes catches it.
    w.engines.official["merkle"]["root"] = serde_json::json!("ef".repeat(32));
    w.engines.proofs.clear();
    let v = w.judge();
    assert!(
        v.anomalies
            .iter()
            .any(|a| matches!(a, Anomaly::OfficialRoot { .. }))
    );
}

#[test]
fn redis_tallies_other_than_the_logs_are_an_anomaly() {
    let mut w = world(12, &[]);
    let red = w.engines.redis[0]["red"].parse::<u64>().unwrap();
    w.engines.redis[0].insert("red".into(), (red + 1).to_string());
    assert_eq!(
        only(&w),
        Anomaly::RedisTally {
            partition: 0,
            option: "red".into(),
            redis: red + 1,
            log: red
        }
    );
    // Redis started empty and never refilled: every partition's tallies are missing.
    let mut w = world(12, &[]);
    w.engines.redis = Vec::new();
    let v = w.judge();
    assert!(!v.anomalies.is_empty());
    assert!(
        v.anomalies
            .iter()
            .all(|a| matches!(a, Anomaly::RedisTally { redis: 0, .. }))
    );
}

#[test]
fn a_202_past_the_close_frontier_is_an_anomaly_and_refusals_after_the_close_are_not() {
    let mut w = world(12, &[]);
    let frontier = w.engines.official["frontier"]["1"].as_u64().unwrap();
    let late = new_voter_of(1, 12);
    let close = w.close[0].sent_ms;
    // Refused after the close began: in the contract, whatever the node.
    for voter in [late, late + 1000] {
        let mut a = attempt(voter, "red", close + 5, 409);
        a.code = Some("election_not_open".into());
        w.attempts.push(a);
    }
    assert_eq!(w.judge().anomalies, Vec::<Anomaly>::new());
    assert_eq!(w.judge().refused_after_close, 2);
    // Acknowledged past the frontier: never.
    let mut a = attempt(late, "red", close + 5, 202);
    a.partition = Some(1);
    a.offset = Some(frontier + 1);
    a.receipt = Some("00".repeat(32));
    w.attempts.push(a);
    assert_eq!(
        only(&w),
        Anomaly::AckPastFrontier {
            voter: late,
            partition: 1,
            offset: frontier + 1,
            frontier
        }
    );
}

#[test]
fn election_not_open_before_any_close_is_outside_the_contract() {
    let mut w = world(12, &[]);
    let mut a = attempt(50, "red", T0 + 20, 409);
    a.code = Some("election_not_open".into());
    w.attempts.push(a);
    assert_eq!(
        only(&w),
        Anomaly::OutsideContract {
            voter: 50,
            status: 409,
            code: Some("election_not_open".into())
        }
    );
}

#[test]
fn an_official_frontier_other_than_the_logs_close_markers_is_an_anomaly() {
    let mut w = world(12, &[]);
    let f = w.engines.official["frontier"]["0"].as_u64().unwrap();
    w.engines.official["frontier"]["0"] = serde_json::json!(f + 3);
    assert_eq!(
        only(&w),
        Anomaly::Frontier {
            partition: 0,
            official: Some(f + 3),
            log: Some(f)
        }
    );
}

#[test]
fn a_result_that_never_became_final_is_one_anomaly() {
    let mut w = world(12, &[]);
    w.engines.official["state"] = serde_json::json!("closed");
    assert!(matches!(only(&w), Anomaly::NotFinal { .. }));
}

fn fault(kind: &'static str, target: &str, from: u64, to: u64) -> Fault {
    Fault {
        kind,
        target: target.into(),
        from_ms: T0 + from,
        to_ms: T0 + to,
    }
}

#[test]
fn windows_count_the_runs_edges_and_stop_at_the_close() {
    let mut attempts = Vec::new();
    let mut ack = |p: u32, at: u64| {
        let mut a = attempt(0, "red", T0 + at - 10, 202);
        a.partition = Some(p);
        attempts.push(a);
    };
    for at in [500, 3_000, 3_500] {
        ack(0, at);
    }
    for at in [1_500, 2_000] {
        ack(1, at);
    }
    // After the close began: not served time, it is the barrier.
    ack(0, 5_500);
    let faults = [fault("kill-node", "node-1", 1_000, 2_000)];
    let close = [CloseCall {
        node: 0,
        sent_ms: T0 + 5_000,
        answered_ms: T0 + 5_100,
        status: 200,
    }];
    let h = History {
        attempts: &attempts,
        faults: &faults,
        admin: &[],
        opened_version: 2,
        close: &close,
        load_from_ms: T0,
        load_to_ms: T0 + 6_000,
    };
    let w = |partition, from_ms, length_ms, edge| Window {
        partition,
        from_ms,
        length_ms,
        edge,
        cause: "kill-node",
        cause_target: Some("node-1".into()),
    };
    assert_eq!(
        windows(&h, 2),
        vec![
            w(0, 500, 2_500, Edge::Between),
            w(0, 3_500, 1_500, Edge::End),
            w(1, 0, 1_500, Edge::Start),
            w(1, 2_000, 3_000, Edge::End),
        ]
    );
}

#[test]
fn a_partition_that_never_served_is_one_window_put_down_to_no_fault_without_one() {
    let h = History {
        attempts: &[],
        faults: &[fault("kill-node", "node-0", 100_000, 101_000)],
        admin: &[],
        opened_version: 2,
        close: &[],
        load_from_ms: T0,
        load_to_ms: T0 + 4_000,
    };
    let got = windows(&h, 1);
    assert_eq!(
        got,
        vec![Window {
            partition: 0,
            from_ms: 0,
            length_ms: 4_000,
            edge: Edge::Whole,
            cause: "none",
            cause_target: None,
        }]
    );
}
