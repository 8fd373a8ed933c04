//! The source of truth (docs/design.md §3.5-3.6, §4.4): `votes persist` writes exactly the committed
//! votes to DynamoDB, once per voter even when killed mid-stream; `/votes/me` reads them back;
//! `votes recount` makes a result official only when the Kafka replay, DynamoDB and the live
//! tally agree, and refuses (printing the difference) when one of them does not.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use common::serve::{
    Answer, Serve, TestClient, close_election, committed_votes, open_election, token, wait_final,
};
use common::{DYNAMODB, KAFKA, REDIS, runtime};
use votes_core::{VOTE_BUCKETS, VoterId};

const PARTITIONS: u32 = 4;

fn votes_cmd(prefix: &str, args: &[&str]) -> Command {
    common::votes_command(prefix, args)
}

fn persister(prefix: &str, log: &str, extra: &[&str]) -> Child {
    // One static member id: a restart takes the partitions back at once (no session timeout).
    let mut args = vec![
        "persist",
        "--batch-max",
        "2000",
        "--instance-id",
        "persister-1",
    ];
    args.extend_from_slice(extra);
    votes_cmd(prefix, &args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(std::env::temp_dir().join(log)).unwrap())
        .spawn()
        .expect("votes persist starts")
}

/// Runs `votes <args>` to its end and asserts it succeeded, its output in the failure; returns
/// its stdout, where the persister, the recount and the reprocess report what they did.
fn votes_succeeds(prefix: &str, args: &[&str]) -> String {
    let run = votes_cmd(prefix, args).output().unwrap();
    common::success_stdout(&run, format_args!("votes {args:?}"))
}

/// The official result of `election` in the DynamoDB results table, if the recount wrote one.
async fn stored_official(
    dynamo: &aws_sdk_dynamodb::Client,
    prefix: &str,
    election: &str,
) -> Option<HashMap<String, AttributeValue>> {
    dynamo
        .get_item()
        .table_name(format!("{prefix}results"))
        .key("pk", AttributeValue::S(election.into()))
        .send()
        .await
        .unwrap()
        .item
}

/// `GET /v1/elections/<election>/votes/me` as `voter` (their bearer token): what the voter's
/// receipt page asks DynamoDB through the node.
async fn my_vote(client: &TestClient, serve: &Serve, election: &str, voter: u64) -> Answer {
    let auth = format!("Bearer {}", token(voter));
    client
        .send(
            "GET",
            &serve.url(&format!("/v1/elections/{election}/votes/me")),
            &[("authorization", &auth)],
            "",
        )
        .await
        .map(|(status, _, body)| (status, body))
        .unwrap()
}

/// Every item of `election` in DynamoDB: voter → (option, offset, receipt).
async fn items_of(election: &str, prefix: &str) -> HashMap<u64, (String, u64, String)> {
    let dynamo = common::dynamo().await;
    let table = format!("{prefix}votes");
    let mut out = HashMap::new();
    for bucket in 0..VOTE_BUCKETS {
        let mut start = None;
        loop {
            let page = dynamo
                .query()
                .table_name(&table)
                .key_condition_expression("pk = :pk")
                .expression_attribute_values(
                    ":pk",
                    AttributeValue::S(format!("{election}#{bucket}")),
                )
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .expect("query a bucket");
            for item in page.items() {
                let voter: u64 = item["sk"].as_n().unwrap().parse().unwrap();
                assert_eq!(
                    votes_core::bucket_of(VoterId(voter)),
                    bucket,
                    "voter {voter} in its bucket"
                );
                let prev = out.insert(
                    voter,
                    (
                        item["option"].as_s().unwrap().clone(),
                        item["offset"].as_n().unwrap().parse().unwrap(),
                        item["receipt"].as_s().unwrap().clone(),
                    ),
                );
                assert!(prev.is_none(), "voter {voter} has one item");
            }
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
    }
    out
}

/// Sends one vote per entry of `voters` (duplicates included), `concurrency` at a time;
/// returns how many were accepted.
async fn vote_all(serve: &Serve, election: &str, voters: &[u64], options: &[&str]) -> (u64, u64) {
    let client = TestClient::h2c();
    let (mut accepted, mut duplicates) = (0u64, 0u64);
    for chunk in voters.chunks(256) {
        let calls: Vec<_> = chunk
            .iter()
            .map(|v| {
                let (client, base) = (client.clone(), serve.url(""));
                let (election, option) = (
                    election.to_owned(),
                    options[(*v % options.len() as u64) as usize].to_owned(),
                );
                let v = *v;
                tokio::spawn(async move { client.vote(&base, &election, v, &option).await })
            })
            .collect();
        for c in calls {
            match c.await.unwrap() {
                Ok((202, _)) => accepted += 1,
                Ok((409, b)) if b["error"]["code"] == "already_voted" => duplicates += 1,
                other => panic!("unexpected answer {other:?}"),
            }
        }
    }
    (accepted, duplicates)
}

#[test]
fn fifty_thousand_votes_persist_exactly_once_per_voter_even_when_the_persister_is_killed() {
    let serve = Serve::init_and_start("persist", PARTITIONS, 2);
    let prefix = serve.prefix.clone();
    runtime().block_on(async {
        let client = TestClient::http1();
        open_election(&client, &serve, "big", &["a", "b", "c", "d"], 0).await;
        // 45,000 voters, and 5,000 of them twice.
        let mut voters: Vec<u64> = (1..=45_000).collect();
        voters.extend((1..=5_000).map(|v| v * 9));
        let mut persist = persister(&prefix, &format!("{prefix}persist-1.log"), &[]);
        let started = Instant::now();
        let (first, first_dups) =
            vote_all(&serve, "big", &voters[..25_000], &["a", "b", "c", "d"]).await;
        // Mid-stream: kill -9 the persister while votes still flow, then start another.
        let _ = persist.kill();
        let _ = persist.wait();
        let mut persist = persister(&prefix, &format!("{prefix}persist-2.log"), &[]);
        let (rest, rest_dups) =
            vote_all(&serve, "big", &voters[25_000..], &["a", "b", "c", "d"]).await;
        let (accepted, duplicates) = (first + rest, first_dups + rest_dups);
        eprintln!(
            "50,000 votes sent in {:?}: {accepted} accepted, {duplicates} duplicates",
            started.elapsed()
        );
        assert_eq!(accepted, 45_000);
        assert_eq!(duplicates, 5_000);
        let _ = persist.kill();
        let _ = persist.wait();
        // A third persister finishes the log and exits.
        let finish = votes_succeeds(
            &prefix,
            &[
                "persist",
                "--exit-when-caught-up",
                "--instance-id",
                "persister-1",
            ],
        );
        eprintln!("persisted by {:?}: {}", started.elapsed(), finish.trim());

        let items = items_of("big", &prefix).await;
        eprintln!("items read back by {:?}", started.elapsed());
        let committed = committed_votes(&serve.names(), PARTITIONS);
        let mut first_of: HashMap<u64, (String, u64)> = HashMap::new();
        for c in &committed {
            first_of
                .entry(c.record.voter.0)
                .or_insert((c.record.option.as_str().to_owned(), c.offset));
        }
        assert_eq!(
            items.len(),
            45_000,
            "DynamoDB holds exactly the accepted votes"
        );
        assert_eq!(first_of.len(), 45_000);
        for (voter, (option, offset)) in &first_of {
            let (got_option, got_offset, receipt) = &items[voter];
            assert_eq!((got_option, got_offset), (option, offset), "voter {voter}");
            assert_eq!(receipt.len(), 64);
        }

        // GET /votes/me answers from DynamoDB, for a voter who voted and one who did not.
        let (status, body) = my_vote(&client, &serve, "big", 9).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["voted"], true);
        assert_eq!(body["option"].as_str(), Some(items[&9].0.as_str()));
        assert_eq!(body["receipt"].as_str(), Some(items[&9].2.as_str()));
        let (status, body) = my_vote(&client, &serve, "big", 45_001).await;
        assert_eq!((status, &body), (200, &serde_json::json!({"voted": false})));
        let (status, _, body) = client
            .send("GET", &serve.url("/v1/elections/big/votes/me"), &[], "")
            .await
            .unwrap();
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (401, Some("unauthorized"))
        );
        let (status, _) = my_vote(&client, &serve, "nope", 9).await;
        assert_eq!(status, 404);
    });
}

#[test]
fn the_recount_makes_agreeing_counts_official_and_refuses_a_corrupted_live_tally() {
    let serve = Serve::init_and_start("recount", PARTITIONS, 2);
    let prefix = serve.prefix.clone();
    runtime().block_on(async {
        let client = TestClient::http1();
        open_election(&client, &serve, "good", &["x", "y"], 0).await;
        open_election(&client, &serve, "bad", &["x", "y"], 0).await;
        let voters: Vec<u64> = (1..=400).chain(1..=40).collect();
        let (ok, _) = vote_all(&serve, "good", &voters, &["x", "y"]).await;
        // One more voter whose receipt we keep, to check it after the close.
        let kept = client
            .vote_accepted(&serve.url(""), "good", 5_000, "y")
            .await;
        let receipt = kept["receipt"].as_str().unwrap().to_owned();
        // GET of a receipt of "good": its inclusion proof once the election is final.
        let proof_of = async |receipt: &str| {
            client
                .get(&serve.url(&format!("/v1/elections/good/receipts/{receipt}")))
                .await
                .unwrap()
        };
        let (bad_ok, _) = vote_all(&serve, "bad", &voters, &["x", "y"]).await;
        assert_eq!((ok, bad_ok), (400, 400));
        // The receipts of an election that is not final are not served yet.
        let (status, _) = proof_of(&receipt).await;
        assert_eq!(status, 404);
        votes_succeeds(&prefix, &["persist", "--exit-when-caught-up"]);

        // Corrupt the live tally of "bad", under an offset beyond anything the partition will
        // hold (the fan-out writes only newer offsets, and the close marker moves the shard's
        // offset on), so it stays corrupted.
        let redis = redis::Client::open(REDIS).unwrap();
        let mut conn = redis.get_connection().unwrap();
        let key = serve.names().redis_tally_key("bad", 0);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !redis::cmd("EXISTS")
            .arg(&key)
            .query::<bool>(&mut conn)
            .unwrap()
        {
            assert!(Instant::now() < deadline, "the tally of bad reached Redis");
            std::thread::sleep(Duration::from_millis(50));
        }
        let _: i64 = redis::cmd("HINCRBY")
            .arg(&key)
            .arg("x")
            .arg(1)
            .query(&mut conn)
            .unwrap();
        let _: i64 = redis::cmd("HSET")
            .arg(&key)
            .arg(votes_tally::read_model::OFFSET_FIELD)
            .arg(1_000_000_000u64)
            .query(&mut conn)
            .unwrap();

        // Closing through the admin API starts the recount: "good" becomes final.
        for e in ["good", "bad"] {
            close_election(&client, &serve, e).await;
        }
        let final_results = wait_final(&client, &serve, "good", Duration::from_secs(60)).await;
        let mut committed: BTreeMap<String, u64> = BTreeMap::new();
        let mut seen = std::collections::HashSet::new();
        for c in committed_votes(&serve.names(), PARTITIONS) {
            if c.record.election.as_str() == "good" && seen.insert(c.record.voter) {
                *committed
                    .entry(c.record.option.as_str().to_owned())
                    .or_default() += 1;
            }
        }
        assert_eq!(final_results["totals"]["x"], committed["x"]);
        assert_eq!(final_results["totals"]["y"], committed["y"]);
        assert_eq!(final_results["total"], 401);
        assert_eq!(final_results["merkle"]["tree_size"], 401);

        // The receipt's inclusion proof verifies against the official root (RFC 6962).
        let (status, proof) = proof_of(&receipt).await;
        assert_eq!(status, 200, "{proof}");
        assert_eq!(proof["leaf"]["option"], "y");
        assert_eq!(proof["leaf"]["election"], "good");
        assert_eq!(proof["leaf_hash"], receipt.as_str());
        assert_eq!(proof["root"], final_results["merkle"]["root"]);
        assert_eq!(proof["tree_size"], 401);
        let unhex = |s: &str| -> [u8; 32] {
            let mut out = [0u8; 32];
            for (i, c) in s.as_bytes().chunks(2).enumerate() {
                out[i] = u8::from_str_radix(std::str::from_utf8(c).unwrap(), 16).unwrap();
            }
            out
        };
        let path: Vec<[u8; 32]> = proof["audit_path"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| unhex(h.as_str().unwrap()))
            .collect();
        assert!(votes_core::merkle::verify_inclusion(
            &unhex(&receipt),
            proof["leaf_index"].as_u64().unwrap(),
            401,
            &path,
            &unhex(proof["root"].as_str().unwrap()),
        ));
        let (status, _) = proof_of(&"ab".repeat(32)).await;
        assert_eq!(status, 404, "an unknown receipt");
        let (status, body) = proof_of("XYZ").await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some("invalid_request"))
        );
        let dynamo = common::dynamo().await;
        let stored = stored_official(&dynamo, &prefix, "good")
            .await
            .expect("the official result is in the results table");
        assert_eq!(stored["total"].as_n().unwrap(), "401");
        assert_eq!(
            stored["merkle_root"].as_s().unwrap(),
            final_results["merkle"]["root"].as_str().unwrap()
        );

        // The CLI on a final election checks it again without rewriting.
        let out = votes_succeeds(&prefix, &["recount", "--election", "good"]);
        assert!(out.contains("matches the official result"), "{out}");

        // An auditor's reprocess into a fresh prefix agrees with the official result.
        let out = votes_succeeds(&prefix, &["audit", "reprocess", "--election", "good"]);
        assert!(
            out.contains("agree: the reprocessed tallies and root match"),
            "{out}"
        );
        let rp_bad = votes_cmd(&prefix, &["audit", "reprocess", "--election", "bad"])
            .output()
            .unwrap();
        assert!(
            !rp_bad.status.success(),
            "no official result to compare with"
        );

        // "bad" stays closed: nothing official, and the CLI says why and exits non-zero.
        let refused = votes_cmd(
            &prefix,
            &["recount", "--election", "bad", "--redis-settle-s", "1"],
        )
        .output()
        .unwrap();
        let out = String::from_utf8_lossy(&refused.stdout);
        assert!(!refused.status.success(), "a disagreement fails: {out}");
        assert!(out.contains("DISAGREE"), "{out}");
        assert!(
            out.lines()
                .any(|l| l.trim_start().starts_with("x:") && l.contains("redis")),
            "per-option diff: {out}"
        );
        let (_, body) = client
            .get(&serve.url("/v1/elections/bad/results"))
            .await
            .unwrap();
        assert_eq!(
            (body["state"].as_str(), body["final"].as_bool()),
            (Some("closed"), Some(false))
        );
        let final_key: bool = redis::cmd("EXISTS")
            .arg(serve.names().redis_final_key("bad"))
            .query(&mut conn)
            .unwrap();
        assert!(!final_key, "no official result in Redis");
        let none = stored_official(&dynamo, &prefix, "bad").await;
        assert!(none.is_none(), "no official result in DynamoDB");
        // The recount the close started waits up to 10 s for the live tally to settle.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !serve.log_text().contains("recount DISAGREES") {
            assert!(
                Instant::now() < deadline,
                "the serve log tells the operator:\n{}",
                serve.log_text()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
}

/// A second committed record of a voter (a test producer with its own transactional id, as a
/// second writer or a bug would make one) never replaces the first anywhere: DynamoDB keeps the
/// first across persister rounds, and the recount's three counts (which count first votes)
/// agree and make the election final with the first vote counted.
#[test]
fn a_voters_later_committed_record_never_replaces_the_first() {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let serve = Serve::init_and_start("first-wins", 4, 2);
    let prefix = serve.names().prefix().to_owned();
    runtime().block_on(async {
        let client = TestClient::http1();
        open_election(&client, &serve, "fw", &["x", "y"], 0).await;
        // Voters 1..=40, voter v for option x when v is even.
        let voters: Vec<u64> = (1..=40).collect();
        let (ok, _) = vote_all(&serve, "fw", &voters, &["x", "y"]).await;
        assert_eq!(ok, 40);
        votes_succeeds(&prefix, &["persist", "--exit-when-caught-up"]);
        assert_eq!(items_of("fw", &prefix).await[&2].0, "x");

        // Voter 2 "votes" again, for y, straight into its partition.
        let names = serve.names();
        let partitions = 4;
        let p = votes_core::partition_of(VoterId(2), partitions);
        let producer: BaseProducer = votes_tally::kafka::transactional_producer_config(
            &KAFKA,
            &format!("{prefix}test-second-writer"),
        )
        .create()
        .unwrap();
        producer.init_transactions(Duration::from_secs(30)).unwrap();
        producer.begin_transaction().unwrap();
        let record = votes_core::VoteRecord {
            election: votes_core::ElectionId::new("fw").unwrap(),
            voter: VoterId(2),
            option: votes_core::OptionId::new("y").unwrap(),
            received_at_ms: 1,
            node: "second-writer".into(),
            core: 0,
            nonce: [9; 16],
        }
        .encode();
        producer
            .send(
                BaseRecord::to(&names.votes_topic())
                    .partition(p as i32)
                    .key(&votes_core::voter_key(VoterId(2))[..])
                    .payload(&record),
            )
            .map_err(|(e, _)| e)
            .unwrap();
        producer
            .commit_transaction(Duration::from_secs(30))
            .unwrap();
        drop(producer);

        votes_succeeds(&prefix, &["persist", "--exit-when-caught-up"]);
        let items = items_of("fw", &prefix).await;
        assert_eq!(items.len(), 40);
        assert_eq!(items[&2].0, "x", "DynamoDB keeps voter 2's first vote");

        close_election(&client, &serve, "fw").await;
        let official = wait_final(&client, &serve, "fw", Duration::from_secs(90)).await;
        assert_eq!(official["totals"]["x"], 20, "{official}");
        assert_eq!(official["totals"]["y"], 20, "{official}");
        assert_eq!(official["merkle"]["tree_size"], 40);

        // The auditors' copy and a replay into fresh tables keep the first vote too.
        let export = common::export_and_verify(&prefix, "fw");
        assert_eq!(export.rows.len(), 40);
        let pseudonym = votes_core::pseudonym(
            common::serve::AUDIT_KEY.as_bytes(),
            &votes_core::ElectionId::new("fw").unwrap(),
            VoterId(2),
        );
        let row = export
            .rows
            .iter()
            .find(|r| r.pseudonym == pseudonym)
            .expect("voter 2 has a row");
        assert_eq!(
            (row.option.as_str(), row.partition),
            ("x", p),
            "the export counts voter 2's first vote"
        );
        let out = votes_succeeds(&prefix, &["audit", "reprocess", "--election", "fw"]);
        assert!(
            out.contains("agree: the reprocessed tallies and root match"),
            "{out}"
        );
    });
}

/// DynamoDB throttles a table past its capacity and fails now and then; no local engine does.
/// Through a proxy that answers a seeded share of calls with DynamoDB's own error responses
/// (and a share of the persister's batch calls only half done, the rest handed back as
/// unprocessed), the persister still writes every voter's first vote exactly once, the recount still makes
/// the result official and checks it again, and `/votes/me` answers 200 or a retryable 503,
/// never a wrong answer.
#[test]
fn a_throttled_table_slows_the_persister_and_the_recount_but_loses_nothing() {
    use common::dynamo_faults::{Fault, FaultProxy, Rule};
    let rule = |operation, fault, per_mille| Rule {
        operation,
        fault,
        per_mille,
    };
    // Shares high enough that some calls fail all of the SDK's own 3 attempts, so the
    // project's backoff (not only the SDK's) is what carries them.
    let proxy = FaultProxy::start(
        DYNAMODB,
        &[
            rule("BatchGetItem", Fault::ProvisionedThroughputExceeded, 300),
            rule("BatchGetItem", Fault::Unprocessed, 400),
            rule("BatchWriteItem", Fault::ProvisionedThroughputExceeded, 400),
            rule("BatchWriteItem", Fault::Throttling, 150),
            rule("BatchWriteItem", Fault::InternalServerError, 100),
            rule("BatchWriteItem", Fault::RequestLimitExceeded, 50),
            rule("BatchWriteItem", Fault::Unprocessed, 500),
            rule("Query", Fault::ProvisionedThroughputExceeded, 400),
            rule("Query", Fault::Throttling, 150),
            rule("GetItem", Fault::ProvisionedThroughputExceeded, 300),
        ],
    );
    let serve = Serve::init_and_start_env(
        "throttled",
        PARTITIONS,
        2,
        &[("VOTES_DYNAMODB_ENDPOINT", proxy.url.as_str())],
    );
    let prefix = serve.prefix.clone();
    runtime().block_on(async {
        let client = TestClient::http1();
        open_election(&client, &serve, "t", &["a", "b", "c"], 0).await;
        let voters: Vec<u64> = (1..=2_000).chain((1..=200).map(|v| v * 7)).collect();
        let (accepted, duplicates) = vote_all(&serve, "t", &voters, &["a", "b", "c"]).await;
        assert_eq!((accepted, duplicates), (2_000, 200));

        let persisted = votes_cmd(&prefix, &["persist", "--exit-when-caught-up"])
            .env("VOTES_DYNAMODB_ENDPOINT", &proxy.url)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&persisted.stdout);
        assert!(
            persisted.status.success(),
            "{said}{}\n{}",
            String::from_utf8_lossy(&persisted.stderr),
            proxy.summary()
        );
        let retries: u64 = said
            .split(", ")
            .find_map(|p| p.trim().strip_suffix(" retries"))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("the persister says its retries: {said}"));
        assert!(
            proxy.injected("BatchWriteItem", Fault::ProvisionedThroughputExceeded) > 0
                && proxy.injected("BatchWriteItem", Fault::InternalServerError) > 0
                && proxy.injected("BatchWriteItem", Fault::Unprocessed) > 0
                && proxy.injected("BatchGetItem", Fault::ProvisionedThroughputExceeded) > 0
                && proxy.injected("BatchGetItem", Fault::Unprocessed) > 0
                && retries > 0,
            "throttles reached the persister's own backoff: {retries} retries; {}",
            proxy.summary()
        );

        // DynamoDB (read directly, not through the proxy) holds each voter's first committed
        // vote, once.
        let items = items_of("t", &prefix).await;
        let mut first: HashMap<u64, String> = HashMap::new();
        for c in committed_votes(&serve.names(), PARTITIONS) {
            if c.record.election.as_str() == "t" {
                first
                    .entry(c.record.voter.0)
                    .or_insert_with(|| c.record.option.as_str().to_owned());
            }
        }
        assert_eq!(first.len(), 2_000);
        let stored: HashMap<u64, String> = items.into_iter().map(|(v, (o, _, _))| (v, o)).collect();
        assert_eq!(stored, first, "DynamoDB holds the log's first votes");

        // /votes/me: 200 with the stored vote, or 503 to retry when the read stays throttled.
        // Forty voters: enough GetItems that the proxy's 30% surely throttles some (with a
        // handful, one run in four would pass untouched).
        let mut answered = 0;
        let lookups: Vec<u64> = (1..=2_000).step_by(50).collect();
        for &voter in &lookups {
            for _ in 0..20 {
                let (status, body) = my_vote(&client, &serve, "t", voter).await;
                match status {
                    200 => {
                        assert_eq!(body["voted"], true, "{body}");
                        assert_eq!(body["option"].as_str(), Some(first[&voter].as_str()));
                        answered += 1;
                        break;
                    }
                    503 => {
                        assert!(body["error"]["code"].is_string(), "{body}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    other => panic!("/votes/me answered {other}: {body}; {}", proxy.summary()),
                }
            }
        }
        assert_eq!(
            answered,
            lookups.len(),
            "every voter got an answer; {}",
            proxy.summary()
        );

        // The close's recount queries every bucket through the throttles and still agrees.
        close_election(&client, &serve, "t").await;
        let official = wait_final(&client, &serve, "t", Duration::from_secs(180)).await;
        assert_eq!(official["total"], 2_000, "{official}");
        let again = votes_cmd(&prefix, &["recount", "--election", "t"])
            .env("VOTES_DYNAMODB_ENDPOINT", &proxy.url)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&again.stdout);
        assert!(
            again.status.success() && said.contains("matches the official result"),
            "{said}{}\n{}",
            String::from_utf8_lossy(&again.stderr),
            proxy.summary()
        );
        assert!(
            proxy.injected("Query", Fault::ProvisionedThroughputExceeded) > 0
                && proxy.injected("GetItem", Fault::ProvisionedThroughputExceeded) > 0,
            "{}",
            proxy.summary()
        );
        eprintln!(
            "throttled run: {retries} persister retries; {}",
            proxy.summary()
        );
    });
}

/// Found by the fault campaign (seed 20261214): across a coordinator failover librdkafka's own
/// rejoin met FENCED_INSTANCE_ID, a fatal error, and the persister went on polling a client
/// that would never consume again, so DynamoDB fell behind for good and the recount could
/// not finish. The same fatal error, made here by an intruder joining with the persister's
/// static id: the persister replaces its client and persists what comes after.
#[test]
fn a_persister_fenced_out_of_its_group_joins_again_and_persists_what_follows() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let serve = Serve::init_and_start("persist-fenced", PARTITIONS, 1);
    let prefix = serve.prefix.clone();
    let log = format!("{prefix}persist-fenced.log");
    let mut persist = persister(&prefix, &log, &[]);
    runtime().block_on(async {
        let client = TestClient::http1();
        open_election(&client, &serve, "pf", &["a", "b"], 0).await;
        let (ok, _) = vote_all(&serve, "pf", &(1..=20).collect::<Vec<_>>(), &["a", "b"]).await;
        assert_eq!(ok, 20);
        wait_items("pf", &prefix, 20).await;

        // An intruder joins with the persister's static id: the coordinator fences the
        // persister's client, for good.
        let intruder: BaseConsumer = votes_tally::kafka::base_config(&KAFKA)
            .set("group.id", format!("{prefix}persist"))
            .set("group.instance.id", "persister-1")
            // The persisters' protocol: a member of another is refused, not joined.
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("session.timeout.ms", "6000")
            .create()
            .unwrap();
        intruder.subscribe(&[&serve.names().votes_topic()]).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !std::fs::read_to_string(std::env::temp_dir().join(&log))
            .unwrap_or_default()
            .contains("a new one joins")
        {
            let _ = intruder.poll(Duration::from_millis(100));
            assert!(
                Instant::now() < deadline,
                "the persister never noticed it was fenced out of its group"
            );
        }
        drop(intruder);

        // What comes after the fence is persisted by the persister's new client.
        let (ok, _) = vote_all(&serve, "pf", &(21..=40).collect::<Vec<_>>(), &["a", "b"]).await;
        assert_eq!(ok, 20);
        wait_items("pf", &prefix, 40).await;
    });
    persist.kill().unwrap();
    let _ = persist.wait();
}

/// Waits, bounded, until DynamoDB holds `n` vote items of `election`.
async fn wait_items(election: &str, prefix: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let got = items_of(election, prefix).await.len();
        if got >= n {
            assert_eq!(got, n, "exactly the votes of {election}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{got} of {n} items of {election} persisted within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
