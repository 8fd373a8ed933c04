//! A Redis outage under load only delays results (docs/design.md §3.4): votes keep being accepted
//! while Redis is down, and once it is back (empty: it keeps no data) the live results converge
//! to the committed tallies without restarting `votes`.
//!
//! Its own test binary with its own Redis (port 16390, started and stopped through
//! scripts/services.sh), so stopping Redis never disturbs another test.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::runtime;
use common::serve::{Serve, TestClient, committed_votes, open_election};

const PARTITIONS: u32 = 4;
const REDIS_PORT: &str = "16390";

fn private_redis() -> common::PrivateRedis {
    common::PrivateRedis {
        port: REDIS_PORT,
        env: Vec::new(),
    }
}

#[test]
fn results_converge_after_redis_comes_back_without_restarting_votes() {
    common::require(common::Service::Kafka);
    let _redis = private_redis().up();
    let redis_url = format!("redis://127.0.0.1:{REDIS_PORT}");
    let serve = Serve::init_and_start_env(
        "redis-outage",
        PARTITIONS,
        2,
        &[
            ("VOTES_REDIS_URL", &redis_url),
            ("VOTES_RESULTS_POLL_MS", "50"),
        ],
    );
    runtime().block_on(async {
        let client = TestClient::http1();
        open_election(&client, &serve, "outage", &["a", "b", "c"], 0).await;

        // Votes at a steady ~100/s from one task until told to stop; every answer must be 202.
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let voting = tokio::spawn({
            let (client, base) = (client.clone(), serve.url(""));
            let (stop, accepted) = (stop.clone(), accepted.clone());
            async move {
                let mut voter = 1u64;
                let mut failures = Vec::new();
                while !stop.load(Ordering::Relaxed) && voter <= 2_000 {
                    let option = ["a", "b", "c"][(voter % 3) as usize];
                    match client.vote(&base, "outage", voter, option).await {
                        Ok((202, _)) => {
                            accepted.fetch_add(1, Ordering::Relaxed);
                        }
                        other => failures.push((voter, format!("{other:?}"))),
                    }
                    voter += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                failures
            }
        });
        let results = |client: TestClient, url: String| async move {
            let (status, body) = client.get(&url).await.expect("results answer");
            assert_eq!(status, 200, "results must keep answering: {body}");
            body["total"].as_u64().unwrap()
        };
        let url = serve.url("/v1/elections/outage/results");

        let before_outage = common::eventually(
            Duration::from_secs(60),
            Duration::from_millis(100),
            async || {
                let total = results(client.clone(), url.clone()).await;
                if total > 0 {
                    return Ok(total);
                }
                Err("results flow before the outage")
            },
        )
        .await;

        private_redis().run("down");
        let accepted_at_stop = accepted.load(Ordering::Relaxed);
        // Not a rate (the machine is shared): ingest must simply not wait for Redis. Votes go
        // on being accepted while Redis is down (every answer is also checked to be a 202
        // below); the bound only turns a stuck ingest into a failure.
        let deadline = Instant::now() + Duration::from_secs(60);
        while accepted.load(Ordering::Relaxed) < accepted_at_stop + 50 {
            assert!(
                Instant::now() < deadline,
                "{} votes accepted in 60 s with Redis down: ingest waits for the read model",
                accepted.load(Ordering::Relaxed) - accepted_at_stop
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The results still answer, from what the node read last.
        let stale = results(client.clone(), url.clone()).await;
        assert!(stale >= before_outage);

        private_redis().run("up");
        tokio::time::sleep(Duration::from_secs(1)).await;
        stop.store(true, Ordering::Relaxed);
        let failures = voting.await.unwrap();
        assert!(failures.is_empty(), "every vote was accepted: {failures:?}");
        let total = accepted.load(Ordering::Relaxed);

        // Converges to the committed log, with no restart of votes.
        let mut committed: BTreeMap<String, u64> = BTreeMap::new();
        for c in committed_votes(&serve.names(), PARTITIONS) {
            *committed.entry(c.record.option.as_str().to_owned()).or_default() += 1;
        }
        assert_eq!(committed.values().sum::<u64>(), total);
        common::eventually(
            Duration::from_secs(20),
            Duration::from_millis(100),
            async || {
                let (_, body) = client.get(&url).await.unwrap();
                let shown: BTreeMap<String, u64> = body["totals"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
                    .filter(|(_, n)| *n > 0)
                    .collect();
                if shown == committed {
                    return Ok(());
                }
                Err(serve.with_log(format!(
                    "results did not converge after Redis came back: shown {shown:?}, committed {committed:?}"
                )))
            },
        )
        .await;
        let metrics = client
            .admin_get(&serve, "/metrics")
            .await
            .1;
        let text = metrics["raw"].as_str().unwrap_or_default().to_owned();
        assert!(
            text.lines().any(|l| l.starts_with("votes_redis_errors_total") && !l.ends_with(" 0")),
            "the outage shows in the metrics:\n{text}"
        );
    });
}
