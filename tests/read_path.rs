//! The read path end to end (docs/design.md §3.4, §4.2): shards publish absolute tallies to Redis,
//! the results role sums them, serves `GET …/results` with caching headers and streams changes
//! over SSE; the pages and the development sign-in are served by the same binary.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::runtime;
use common::serve::{
    ONE_SECOND_HEARTBEAT, Serve, TestClient, committed_votes, official_result, open_election,
};
use common::sse::{self, Sse};

const PARTITIONS: u32 = 4;

/// Tallies per option of the committed log of one election: what every screen must converge to.
fn committed_totals(serve: &Serve, election: &str) -> BTreeMap<String, u64> {
    let mut totals = BTreeMap::new();
    let mut seen = std::collections::HashSet::new();
    for c in committed_votes(&serve.names(), PARTITIONS) {
        if c.record.election.as_str() == election && seen.insert(c.record.voter) {
            *totals
                .entry(c.record.option.as_str().to_owned())
                .or_insert(0) += 1;
        }
    }
    totals
}

fn totals_of(results: &serde_json::Value) -> BTreeMap<String, u64> {
    results["totals"]
        .as_object()
        .expect("totals is an object")
        .iter()
        .filter(|(_, n)| n.as_u64() != Some(0))
        .map(|(k, n)| (k.clone(), n.as_u64().expect("counts are numbers")))
        .collect()
}

/// Polls `GET …/results` until `pred` holds (or fails after `within`, showing the last answer).
async fn results_until(
    client: &TestClient,
    serve: &Serve,
    election: &str,
    within: Duration,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    common::eventually(within, Duration::from_millis(50), async || {
        let (status, body) = client
            .get(&serve.url(&format!("/v1/elections/{election}/results")))
            .await
            .expect("results answer");
        assert_eq!(status, 200, "{body}");
        if pred(&body) {
            return Ok(body);
        }
        Err(format!(
            "results did not converge in {within:?}; last: {body}"
        ))
    })
    .await
}

#[test]
fn results_sum_the_partitions_and_match_the_committed_log() {
    let serve = Serve::init_and_start("results-sum", PARTITIONS, 2);
    runtime().block_on(async {
        let client = TestClient::http1();
        open_election(&client, &serve, "sum", &["red", "green", "blue"], 0).await;
        let options = ["red", "green", "blue"];
        let mut accepted = 0u64;
        for voter in 1..=60u64 {
            let option = options[(voter % 3) as usize];
            client.vote_accepted(&serve.url(""), "sum", voter, option).await;
            accepted += 1;
            if voter % 10 == 0 {
                // A duplicate changes nothing.
                let (status, _) = client.vote(&serve.url(""), "sum", voter, "red").await.unwrap();
                assert_eq!(status, 409);
            }
        }
        let body = results_until(&client, &serve, "sum", Duration::from_secs(15), |b| {
            b["total"] == accepted
        })
        .await;
        assert_eq!(totals_of(&body), committed_totals(&serve, "sum"));
        assert_eq!(body["election"], "sum");
        assert_eq!(body["state"], "open");
        assert_eq!(body["final"], false);
        assert!(body["as_of"].as_u64().unwrap() > 0);

        // Caching: public for a second, and revalidation by ETag.
        let url = serve.url("/v1/elections/sum/results");
        let (status, headers, _) = client.send("GET", &url, &[], "").await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(headers["cache-control"], "public, max-age=1");
        let etag = headers["etag"].clone();
        assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
        let (status, _, _) = client
            .send("GET", &url, &[("if-none-match", &etag)], "")
            .await
            .unwrap();
        assert_eq!(status, 304);
        let (status, _, _) = client
            .send("GET", &url, &[("if-none-match", "\"other\"")], "")
            .await
            .unwrap();
        assert_eq!(status, 200);

        // Unknown and draft elections are not public.
        let (status, body) = client.get(&serve.url("/v1/elections/nope/results")).await.unwrap();
        assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")));
        let (s, _) = client
            .admin(
                "POST",
                &serve.admin_url("/admin/v1/elections"),
                serde_json::json!({"id": "drafted", "title": "D", "options": [{"id": "a", "label": "A"}, {"id": "b", "label": "B"}]}),
            )
            .await;
        assert_eq!(s, 201);
        let (status, _) = client.get(&serve.url("/v1/elections/drafted/results")).await.unwrap();
        assert_eq!(status, 404);
        let (status, body) = client
            .send("POST", &url, &[], "")
            .await
            .map(|(s, _, b)| (s, b))
            .unwrap();
        assert_eq!((status, body["error"]["code"].as_str()), (405, Some("invalid_request")));
    });
}

#[test]
fn the_stream_sends_changes_resumes_by_event_id_and_ends_with_the_official_result() {
    let serve = {
        let prefix = common::unique_prefix("results-sse");
        common::init_with_partitions(&prefix, PARTITIONS);
        Serve::start_env(
            &prefix,
            2,
            false,
            &[("VOTES_SSE_HEARTBEAT_S", "1"), ("VOTES_SSE_MAX_RATE", "5")],
        )
    };
    runtime().block_on(async {
        let client = TestClient::http1();
        open_election(&client, &serve, "live", &["yes", "no"], 0).await;
        let stream_url = serve.url("/v1/elections/live/results/stream");
        let mut s = sse::open(&stream_url, &[]).await;
        assert_eq!(s.status, 200);
        assert_eq!(s.headers["content-type"], "text/event-stream");
        assert_eq!(s.headers["cache-control"], "no-cache");
        // Over HTTP/1.1 the stream leaves hyper: its body ends with the connection.
        assert_eq!(s.headers["connection"], "close");
        let first = s
            .next_event(Duration::from_secs(5))
            .await
            .expect("the current state first");
        let Sse::Event { event, id, .. } = &first else {
            unreachable!()
        };
        assert_eq!(event, "tally");
        assert_eq!(first.json()["total"], 0);
        let mut last_id: u64 = id.as_deref().unwrap().parse().unwrap();

        // Each vote shows up as a tally event with a larger id.
        for voter in 1..=3u64 {
            client
                .vote_accepted(&serve.url(""), "live", voter, "yes")
                .await;
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let e = s
                    .next_event(left)
                    .await
                    .unwrap_or_else(|| panic!("no event for vote {voter}:\n{}", serve.log_text()));
                let Sse::Event { event, id, .. } = &e else {
                    unreachable!()
                };
                assert_eq!(event, "tally");
                let id: u64 = id.as_deref().unwrap().parse().unwrap();
                assert!(id > last_id, "event ids grow: {id} after {last_id}");
                last_id = id;
                if e.json()["total"] == voter {
                    assert_eq!(e.json()["totals"]["yes"], voter);
                    break;
                }
            }
        }

        // Quiet: a heartbeat comment within the (1 s) heartbeat interval, and no event.
        match s.next(Duration::from_secs(3)).await {
            Some(Sse::Comment(c)) => assert_eq!(c, "heartbeat"),
            other => panic!("expected a heartbeat, got {other:?}"),
        }

        // Resuming at the current id: no replay of what the client has, only what is new.
        let mut resumed = sse::open(&stream_url, &[("last-event-id", &last_id.to_string())]).await;
        assert_eq!(resumed.status, 200);
        assert_eq!(resumed.next_event(Duration::from_millis(1500)).await, None);
        // Resuming from an older id: the current state at once.
        let mut behind = sse::open(&stream_url, &[("last-event-id", "1")]).await;
        let e = behind
            .next_event(Duration::from_secs(3))
            .await
            .expect("current state");
        assert_eq!(e.json()["total"], 3);

        // Throttle: a burst of votes yields at most max-rate (5/s) events per second.
        let started = Instant::now();
        let burst: Vec<_> = (100..160u64)
            .map(|v| {
                let (client, base) = (client.clone(), serve.url(""));
                tokio::spawn(async move { client.vote(&base, "live", v, "no").await })
            })
            .collect();
        for vote in burst {
            assert_eq!(vote.await.unwrap().unwrap().0, 202);
        }
        let mut events = 0;
        let window = Instant::now();
        while window.elapsed() < Duration::from_secs(2) {
            if let Some(Sse::Event { .. }) = resumed.next(Duration::from_millis(100)).await {
                events += 1;
            }
        }
        let allowed = 5.0 * (window.elapsed() + started.elapsed()).as_secs_f64() + 2.0;
        assert!(
            f64::from(events) <= allowed,
            "{events} events in {:?} exceed the 5/s throttle",
            window.elapsed()
        );

        // The official result (written by the recount) ends every stream with `event: final`.
        let totals = results_until(&client, &serve, "live", Duration::from_secs(10), |b| {
            b["total"] == 63
        })
        .await;
        let official = official_result(totals_of(&totals));
        serve.write_official("live", &official);
        let fin = s
            .event_named("final", Duration::from_secs(10))
            .await
            .expect("a final event");
        let Sse::Event { id, .. } = &fin else {
            unreachable!()
        };
        assert_eq!(id.as_deref(), Some("final"));
        assert_eq!(fin.json()["final"], true);
        assert_eq!(fin.json()["total"], 63);
        assert_eq!(
            fin.json()["merkle"],
            serde_json::json!({"root": "00".repeat(32), "tree_size": 63})
        );
        assert!(
            s.ends_within(Duration::from_secs(3)).await,
            "final ends the stream"
        );
        // A browser that got `final` and reconnects is told to stop (204). The reconnect may
        // land on the other core, which sees the official result at its own next tick.
        common::eventually(
            Duration::from_secs(5),
            Duration::from_millis(50),
            async || {
                let done = sse::open(&stream_url, &[("last-event-id", "final")]).await;
                if done.status == 204 {
                    return Ok(());
                }
                assert_eq!(done.status, 200, "before its tick a core still streams");
                Err("every core answers 204 after final")
            },
        )
        .await;
        // Likewise a GET may land on the core that has not had its tick yet.
        let body = client
            .get_until(
                &serve.url("/v1/elections/live/results"),
                Duration::from_secs(5),
                Duration::from_millis(50),
                |_, body| {
                    if body["final"] == true {
                        return Ok(body);
                    }
                    Err(format!("every core serves the official result: {body}"))
                },
            )
            .await;
        assert_eq!(body["as_of"], 1_800_000_000_000u64);
    });
}

#[test]
fn a_results_only_node_serves_the_same_numbers_and_takes_no_votes() {
    let ingest = Serve::init_and_start("results-node", PARTITIONS, 1);
    let results = Serve::start_env(&ingest.prefix, 1, false, &[("VOTES_ROLES", "results")]);
    runtime().block_on(async {
        let client = TestClient::http1();
        open_election(&client, &ingest, "split", &["a", "b"], 0).await;
        for voter in 1..=7u64 {
            let option = if voter % 2 == 0 { "a" } else { "b" };
            let (status, _) = client
                .vote(&ingest.url(""), "split", voter, option)
                .await
                .unwrap();
            assert_eq!(status, 202);
        }
        // The results node learns the election from the elections topic, the totals from Redis.
        let body = client
            .get_until(
                &results.url("/v1/elections/split/results"),
                Duration::from_secs(15),
                Duration::from_millis(100),
                |status, body| {
                    if status == 200 && body["total"] == 7 {
                        return Ok(body);
                    }
                    Err(format!("results node: {status} {body}"))
                },
            )
            .await;
        assert_eq!(body["totals"]["a"], 3);
        assert_eq!(body["totals"]["b"], 4);
        let (status, body) = client
            .vote(&results.url(""), "split", 99, "a")
            .await
            .unwrap();
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (404, Some("not_found")),
            "{body}"
        );
        // And it has no admin listener.
        assert!(client.get(&results.admin_url("/healthz")).await.is_err());
    });
}

/// Every subscriber of the stream, whatever its protocol: HTTP/1.1 (plain and TLS, where the
/// stream leaves hyper and ends with its connection), h2 (h2c and TLS) and HTTP/3, gets the
/// current state, each change, and the official result that ends the stream.
#[test]
fn the_stream_reaches_subscribers_over_every_protocol() {
    const PROTOCOLS: [&str; 5] = ["h1", "h2c", "h1-tls", "h2-tls", "h3"];
    let serve = Serve::init_and_start_with(
        "results-protocols",
        PARTITIONS,
        2,
        true,
        &ONE_SECOND_HEARTBEAT,
    );
    let root = serve.tls_root().map(str::to_owned);
    runtime().block_on(async {
        let client = TestClient::http1();
        open_election(&client, &serve, "everywhere", &["yes", "no"], 0).await;
        let mut streams = Vec::new();
        for protocol in PROTOCOLS {
            let c = TestClient::for_protocol(protocol, root.as_deref());
            let url = format!(
                "{}/v1/elections/everywhere/results/stream",
                serve.base_for(protocol)
            );
            let mut s = c.sse(&url, &[]).await;
            assert_eq!(s.status, 200, "{protocol}");
            assert_eq!(s.headers["content-type"], "text/event-stream", "{protocol}");
            let close = s.headers.get("connection").map(|v| v.to_str().unwrap());
            match protocol {
                "h1" | "h1-tls" => assert_eq!(close, Some("close"), "{protocol}"),
                _ => assert_eq!(close, None, "{protocol}: no connection header on h2/h3"),
            }
            let first = s
                .next_event(Duration::from_secs(10))
                .await
                .unwrap_or_else(|| panic!("{protocol}: the current state first"));
            assert_eq!(first.json()["total"], 0, "{protocol}");
            streams.push((protocol, c, s));
        }
        for voter in 1..=2u64 {
            client
                .vote_accepted(&serve.url(""), "everywhere", voter, "yes")
                .await;
            for (protocol, _, s) in &mut streams {
                let deadline = Instant::now() + Duration::from_secs(10);
                loop {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let e = s.next_event(left).await.unwrap_or_else(|| {
                        panic!(
                            "{protocol}: no event for vote {voter}:\n{}",
                            serve.log_text()
                        )
                    });
                    if e.json()["total"] == voter {
                        break;
                    }
                }
            }
        }
        let official = official_result([("yes".to_owned(), 2)].into());
        serve.write_official("everywhere", &official);
        for (protocol, _, s) in &mut streams {
            let e = s
                .event_named("final", Duration::from_secs(10))
                .await
                .unwrap_or_else(|| panic!("{protocol}: a final event"));
            assert_eq!(e.json()["total"], 2, "{protocol}");
            assert!(
                s.ends_within(Duration::from_secs(5)).await,
                "{protocol}: final ends the stream"
            );
        }
    });
}

#[test]
fn pages_assets_dev_login_and_admin_stats() {
    let plain = Serve::init_and_start("pages", PARTITIONS, 1);
    let dev = Serve::start_env(&plain.prefix, 1, false, &[("VOTES_DEV_LOGIN", "true")]);
    runtime().block_on(async {
        let client = TestClient::http1();
        for (url, kind) in [
            (plain.url("/"), "text/html"),
            (plain.url("/results/anything"), "text/html"),
            (plain.url("/static/style.css"), "text/css"),
            (plain.url("/static/voter.js"), "text/javascript"),
            (plain.admin_url("/admin"), "text/html"),
            (plain.admin_url("/static/admin.js"), "text/javascript"),
        ] {
            let (status, headers, _) = client.send("GET", &url, &[], "").await.unwrap();
            assert_eq!(status, 200, "{url}");
            assert!(
                headers["content-type"].starts_with(kind),
                "{url}: {headers:?}"
            );
            if kind == "text/html" {
                let csp = &headers["content-security-policy"];
                assert!(csp.contains("default-src 'self'"), "{url}: {csp}");
            }
        }
        let (status, body) = client.get(&plain.url("/static/missing.js")).await.unwrap();
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (404, Some("not_found"))
        );

        // The development sign-in exists only with --dev-login.
        let login = |serve: &Serve, body: &str| {
            let url = serve.url("/v1/dev/login");
            let client = client.clone();
            let body = body.to_owned();
            async move {
                client
                    .send("POST", &url, &[("content-type", "application/json")], body)
                    .await
                    .map(|(s, _, b)| (s, b))
                    .unwrap()
            }
        };
        let (status, _) = login(&plain, r#"{"voter":"5"}"#).await;
        assert_eq!(status, 404);
        let (status, _) = client.get(&plain.url("/v1/dev/login")).await.unwrap();
        assert_eq!(status, 404);
        let (status, body) = client.get(&dev.url("/v1/dev/login")).await.unwrap();
        assert_eq!((status, body["enabled"].as_bool()), (200, Some(true)));
        for bad in [
            r#"{"voter":"x"}"#,
            r#"{"voter":-1}"#,
            r#"{"voter":"5","extra":1}"#,
            "nope",
        ] {
            let (status, body) = login(&dev, bad).await;
            assert_eq!(
                (status, body["error"]["code"].as_str()),
                (400, Some("invalid_request")),
                "{bad}"
            );
        }
        let (status, body) = login(&dev, r#"{"voter":"5"}"#).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["voter"], "5");
        let token = body["token"].as_str().unwrap().to_owned();
        open_election(&client, &plain, "pages", &["x", "y"], 0).await;
        // The second process learns the election from the elections topic (polled every 250 ms).
        let deadline = Instant::now() + Duration::from_secs(10);
        while client.get(&dev.url("/v1/elections/pages")).await.unwrap().0 != 200 {
            assert!(
                Instant::now() < deadline,
                "the dev process sees the election"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (status, body) = client
            .send(
                "POST",
                &dev.url("/v1/elections/pages/votes"),
                &[
                    ("authorization", &format!("Bearer {token}")),
                    ("content-type", "application/json"),
                ],
                r#"{"option":"x"}"#,
            )
            .await
            .map(|(s, _, b)| (s, b))
            .unwrap();
        assert_eq!(status, 202, "the dev token is a real voter token: {body}");

        // The dashboard's figures, behind the admin token.
        let (status, _) = client
            .get(&plain.admin_url("/admin/v1/stats"))
            .await
            .unwrap();
        assert_eq!(status, 401);
        let (status, stats) = client.admin_get(&dev, "/admin/v1/stats").await;
        assert_eq!(status, 200, "{stats}");
        assert_eq!(stats["node"], "test-node");
        assert_eq!(stats["ready"], true);
        for field in [
            "at_ms",
            "uptime_s",
            "cores",
            "partitions",
            "sse_subscribers",
            "batch_size_mean",
        ] {
            assert!(stats[field].is_number(), "{field} in {stats}");
        }
        assert!(stats["commit_latency_ms"]["p99"].is_number(), "{stats}");
        assert!(stats["redis"]["connected"].is_boolean(), "{stats}");
    });
}
