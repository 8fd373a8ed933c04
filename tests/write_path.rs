//! The write path's promises (docs/design.md §3) end to end, against the real broker and real `votes
//! serve` processes: one vote per voter under concurrent duplicates, no acknowledged vote lost
//! or doubled across a `kill -9`, and a fenced owner that never commits again.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::runtime;
use common::serve::{
    Ack, Committed, Serve, TestClient, assert_acks_in_log, committed_votes, log_tallies,
    open_election, wait_live_totals,
};
use tokio::sync::Semaphore;

const OPTIONS: [&str; 3] = ["red", "blue", "green"];

/// What one vote request got back.
#[derive(Debug, Clone)]
struct Sent {
    voter: u64,
    option: &'static str,
    status: Option<u16>,
    partition: Option<u64>,
    offset: Option<u64>,
}

/// Sends one vote per entry of `votes`, at most `concurrency` at a time.
async fn send_all(
    client: &TestClient,
    url: &str,
    election: &str,
    votes: Vec<(u64, &'static str)>,
    concurrency: usize,
) -> Vec<Sent> {
    let gate = Arc::new(Semaphore::new(concurrency));
    let mut tasks = Vec::with_capacity(votes.len());
    for (voter, option) in votes {
        let permit = gate.clone().acquire_owned().await.unwrap();
        let (client, url, election) = (client.clone(), url.to_owned(), election.to_owned());
        tasks.push(tokio::spawn(async move {
            let seen = client.vote_seen(&url, &election, voter, option).await;
            drop(permit);
            Sent {
                voter,
                option,
                status: seen.status,
                partition: seen.partition,
                offset: seen.offset,
            }
        }));
    }
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

fn by_status(sent: &[Sent]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for s in sent {
        *m.entry(s.status.map_or("none".to_string(), |c| c.to_string()))
            .or_default() += 1;
    }
    m
}

/// Every acknowledged vote is in the committed log exactly once, where its `202` said.
fn assert_log_matches(log: &[Committed], election: &str, sent: &[Sent]) {
    let acks = sent.iter().filter(|s| s.status == Some(202)).map(|s| Ack {
        voter: s.voter,
        option: s.option,
        partition: s.partition,
        offset: s.offset,
    });
    assert_acks_in_log(log, election, acks);
}

#[test]
fn concurrent_duplicates_yield_exactly_one_accepted_vote_per_voter() {
    let serve = Serve::init_and_start("dups", 8, 2);
    let voters = 10_000u64;
    let sent = runtime().block_on(async {
        let client = TestClient::http1();
        open_election(&client, &serve, "dups", &OPTIONS, 0).await;
        // Every voter twice, the two requests adjacent so they race for the same shard.
        let votes: Vec<(u64, &'static str)> = (0..voters)
            .flat_map(|v| {
                [
                    (v, OPTIONS[(v % 3) as usize]),
                    (v, OPTIONS[((v + 1) % 3) as usize]),
                ]
            })
            .collect();
        let sent = send_all(&client, &serve.url(""), "dups", votes, 64).await;
        let counts = by_status(&sent);
        assert_eq!(counts.get("202"), Some(&(voters as usize)), "{counts:?}");
        assert_eq!(counts.get("409"), Some(&(voters as usize)), "{counts:?}");
        sent
    });
    let log = committed_votes(&serve.names(), 8);
    assert_eq!(log.len(), voters as usize);
    assert_log_matches(&log, "dups", &sent);
    let want = log_tallies(&log, "dups");
    assert_eq!(want.values().sum::<u64>(), voters);
    runtime().block_on(wait_live_totals(
        &TestClient::http1(),
        &[&serve],
        "dups",
        &want,
    ));
}

#[test]
fn kill_9_mid_load_loses_no_acknowledged_vote_and_counts_none_twice() {
    kill_9_mid_load("crash", "h1");
}

/// The same crash with every voter on HTTP/3 (QUIC streams, the server's answers in flight
/// when it dies).
#[test]
fn kill_9_mid_load_over_http3_loses_no_acknowledged_vote_and_counts_none_twice() {
    kill_9_mid_load("crash-h3", "h3");
}

fn kill_9_mid_load(test: &str, protocol: &str) {
    let prefix = common::fresh_prefix(test, 8);
    let tls = protocol == "h3";
    let mut serve = Serve::start_with(&prefix, 2, tls);
    let voters = 10_000u64;
    let sent = runtime().block_on(async {
        let admin = TestClient::http1();
        open_election(&admin, &serve, "crash", &OPTIONS, 0).await;
        let root = serve.tls_root().map(str::to_owned);
        let client = TestClient::for_protocol(protocol, root.as_deref());
        let votes: Vec<(u64, &'static str)> = (0..voters)
            .map(|v| (v, OPTIONS[(v % 3) as usize]))
            .collect();
        let url = serve.base_for(protocol);
        let load = tokio::spawn({
            let client = client.clone();
            async move { send_all(&client, &url, "crash", votes, 48).await }
        });
        // Let a good part of the load through, then kill the process without warning.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let metrics = admin.admin_get(&serve, "/metrics").await.1;
            let text = metrics["raw"].as_str().unwrap_or("").to_owned();
            let accepted: u64 = text
                .lines()
                .find(|l| l.starts_with("votes_votes_total{outcome=\"accepted\"}"))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            if accepted >= voters / 5 || Instant::now() > deadline {
                break;
            }
        }
        serve.kill();
        load.await.unwrap()
    });
    let counts = by_status(&sent);
    eprintln!("answers before and during the kill: {counts:?}");
    let acked: Vec<&Sent> = sent.iter().filter(|s| s.status == Some(202)).collect();
    assert!(
        !acked.is_empty(),
        "the kill came before any vote was acknowledged: {counts:?}"
    );
    assert!(
        counts.get("none").copied().unwrap_or(0) > 0,
        "the kill came after the load ended: {counts:?}"
    );
    assert!(
        sent.iter()
            .all(|s| matches!(s.status, None | Some(202) | Some(503))),
        "{counts:?}"
    );

    // Restart on the same prefix: the new process fences the dead one and recovers.
    let serve = Serve::start_with(&serve.prefix.clone(), 2, tls);
    let log = committed_votes(&serve.names(), 8);
    assert_log_matches(&log, "crash", &sent);
    // Votes that were in flight may have committed without their 202; never more than sent.
    assert!(
        log.len() >= acked.len() && log.len() <= voters as usize,
        "{} in log, {} acked",
        log.len(),
        acked.len()
    );

    runtime().block_on(async {
        let root = serve.tls_root().map(str::to_owned);
        let client = TestClient::for_protocol(protocol, root.as_deref());
        // Every acknowledged voter (and every voter whose vote made it in unacknowledged) is
        // refused a second vote after the restart; everyone else may vote now.
        let in_log: HashSet<u64> = log.iter().map(|c| c.record.voter.0).collect();
        let retry: Vec<(u64, &'static str)> = (0..voters)
            .map(|v| (v, OPTIONS[(v % 3) as usize]))
            .collect();
        let again = send_all(&client, &serve.base_for(protocol), "crash", retry, 48).await;
        for s in &again {
            let want = if in_log.contains(&s.voter) { 409 } else { 202 };
            assert_eq!(s.status, Some(want), "voter {} after restart", s.voter);
        }
        let log = committed_votes(&serve.names(), 8);
        assert_eq!(
            log.len(),
            voters as usize,
            "every voter counted exactly once in the end"
        );
        let mut all = sent.clone();
        all.extend(again);
        assert_log_matches(&log, "crash", &all);
        wait_live_totals(
            &TestClient::http1(),
            &[&serve],
            "crash",
            &log_tallies(&log, "crash"),
        )
        .await;
    });
}

#[test]
fn a_second_owner_fences_the_first_whose_later_votes_fail_and_are_absent() {
    let first = Serve::init_and_start("fence-e2e", 2, 1);
    runtime().block_on(async {
        let client = TestClient::http1();
        open_election(&client, &first, "fence", &OPTIONS, 0).await;
        client
            .vote_accepted(&first.url(""), "fence", 1, "red")
            .await;
    });
    // The second process takes every partition: its producers fence the first's.
    let second = Serve::start(&first.prefix, 1);
    let (late, after) = runtime().block_on(async {
        let client = TestClient::http1();
        // Voters 100.. spread over both partitions; every one of the first's commits fails.
        let mut late = Vec::new();
        for v in 100..110u64 {
            let (st, body) = client
                .vote(&first.url(""), "fence", v, "blue")
                .await
                .unwrap();
            assert_eq!(st, 503, "a fenced owner must not acknowledge: {body}");
            assert_eq!(body["error"]["code"], "unavailable");
            late.push(v);
        }
        let (st, _) = client.get(&first.url("/readyz")).await.unwrap();
        assert_eq!(st, 503, "a fenced node reports not ready");
        // The new owner accepts, including the voters the fenced one refused.
        let mut after = Vec::new();
        for v in 100..105u64 {
            client
                .vote_accepted(&second.url(""), "fence", v, "green")
                .await;
            after.push(v);
        }
        assert_eq!(
            client
                .vote(&second.url(""), "fence", 1, "red")
                .await
                .unwrap()
                .0,
            409
        );
        (late, after)
    });
    let log = committed_votes(&second.names(), 2);
    let voters: Vec<(u64, String)> = log
        .iter()
        .map(|c| (c.record.voter.0, c.record.option.to_string()))
        .collect();
    assert!(voters.contains(&(1, "red".into())));
    for v in &late {
        let expected = after.contains(v).then(|| (*v, "green".to_string()));
        let found: Vec<_> = voters
            .iter()
            .filter(|(voter, _)| voter == v)
            .cloned()
            .collect();
        assert_eq!(
            found,
            expected.into_iter().collect::<Vec<_>>(),
            "voter {v}: the fenced owner's vote must be absent"
        );
    }
    assert_eq!(log.len(), 1 + after.len());
}
