//! The voter API of docs/design.md §4.2 against a real `votes serve` on the real broker: one case per
//! row and rejection code, each run over HTTP/1.1 and over HTTP/2 (h2c), with the same
//! statuses and bodies.

mod common;

use bytes::Bytes;
use common::runtime;
use common::serve::{Serve, TestClient, open_election, token};

/// A rejection must carry exactly the contract's envelope and code.
fn assert_error(answer: &(u16, serde_json::Value), status: u16, code: &str) {
    assert_eq!(answer.0, status, "{}", answer.1);
    assert_eq!(answer.1["error"]["code"], code, "{}", answer.1);
    assert!(
        answer.1["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{}",
        answer.1
    );
    assert_eq!(answer.1.as_object().unwrap().len(), 1, "{}", answer.1);
}

/// The server as one protocol's client sees it.
struct At<'a> {
    serve: &'a Serve,
    base: String,
}

impl At<'_> {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// `method` of `path` on `s` with `headers` and `body`: the status and the JSON body.
async fn request(
    c: &TestClient,
    s: &At<'_>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> (u16, serde_json::Value) {
    let (st, _, j) = c.send(method, &s.url(path), headers, body).await.unwrap();
    (st, j)
}

async fn post_vote(
    c: &TestClient,
    s: &At<'_>,
    election: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> (u16, serde_json::Value) {
    let path = format!("/v1/elections/{election}/votes");
    request(c, s, "POST", &path, headers, body).await
}

/// `GET …/challenge` of `election` with `headers`.
async fn get_challenge(
    c: &TestClient,
    s: &At<'_>,
    election: &str,
    headers: &[(&str, &str)],
) -> (u16, serde_json::Value) {
    let path = format!("/v1/elections/{election}/challenge");
    request(c, s, "GET", &path, headers, Bytes::new()).await
}

/// A vote with `Authorization: Bearer {bearer_token}` and a JSON content type.
async fn post_as(
    c: &TestClient,
    s: &At<'_>,
    election: &str,
    bearer_token: &str,
    body: &str,
) -> (u16, serde_json::Value) {
    let auth = format!("Bearer {bearer_token}");
    post_vote(
        c,
        s,
        election,
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        body.to_owned(),
    )
    .await
}

async fn every_row(serve: &Serve, protocol: &str, voter_base: u64) {
    let root = serve.tls_root();
    let c = TestClient::for_protocol(protocol, root);
    let s = &At {
        serve,
        base: serve.base_for(protocol),
    };
    let open = format!("open-{protocol}");
    let pow = format!("pow-{protocol}");
    let closed = format!("closed-{protocol}");

    // GET /healthz, /readyz
    assert_eq!(c.get(&s.url("/healthz")).await.unwrap().0, 200);
    assert_eq!(
        c.get(&s.url("/readyz")).await.unwrap(),
        (200, serde_json::json!({"status": "ready"}))
    );

    // GET /v1/elections
    let (st, list) = c.get(&s.url("/v1/elections")).await.unwrap();
    assert_eq!(st, 200);
    let e = list
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == open.as_str())
        .expect("listed");
    assert_eq!(e["state"], "open");
    assert_eq!(
        e["options"][0],
        serde_json::json!({"id": "red", "label": "RED"})
    );

    // GET /v1/elections/{id}
    let (st, e) = c
        .get(&s.url(&format!("/v1/elections/{open}")))
        .await
        .unwrap();
    assert_eq!(st, 200);
    for key in ["id", "title", "state", "options", "pow_difficulty"] {
        assert!(e.get(key).is_some(), "{key} in {e}");
    }
    assert_error(
        &c.get(&s.url("/v1/elections/no-such-election"))
            .await
            .unwrap(),
        404,
        "not_found",
    );
    assert_error(
        &c.get(&s.url("/v1/elections/BAD_ID")).await.unwrap(),
        404,
        "not_found",
    );
    assert_error(&c.get(&s.url("/nowhere")).await.unwrap(), 404, "not_found");

    let voter = voter_base + 1;
    let bearer = format!("Bearer {}", token(voter));
    let auth: &[(&str, &str)] = &[
        ("authorization", &bearer),
        ("content-type", "application/json"),
    ];

    // 202 accepted, then 409 already_voted for any second vote of the voter.
    let (st, ok) = post_vote(&c, s, &open, auth, r#"{"option":"red"}"#).await;
    assert_eq!(st, 202, "{ok}");
    let _ = s.serve;
    assert_eq!(ok["status"], "accepted");
    assert_eq!(ok["receipt"].as_str().unwrap().len(), 64);
    assert!(ok["partition"].as_u64().unwrap() < 4);
    assert!(ok["offset"].is_u64());
    assert_error(
        &post_vote(&c, s, &open, auth, r#"{"option":"red"}"#).await,
        409,
        "already_voted",
    );
    assert_error(
        &post_vote(&c, s, &open, auth, r#"{"option":"blue"}"#).await,
        409,
        "already_voted",
    );

    // 400 invalid_request: malformed JSON, unknown fields, bad UTF-8, wrong types.
    let fresh = format!("Bearer {}", token(voter_base + 2));
    let fresh_auth: &[(&str, &str)] = &[
        ("authorization", &fresh),
        ("content-type", "application/json"),
    ];
    for bad in [
        &b"{"[..],
        br#"{"option":"red","extra":1}"#,
        b"{\"option\":\"r\xffd\"}",
        br#"{"option":7}"#,
        b"",
        br#"[]"#,
    ] {
        assert_error(
            &post_vote(&c, s, &open, fresh_auth, bad.to_vec()).await,
            400,
            "invalid_request",
        );
    }
    // 401 unauthorized: no token, a forged token, a token for another audience/key.
    let ct: &[(&str, &str)] = &[("content-type", "application/json")];
    assert_error(
        &post_vote(&c, s, &open, ct, r#"{"option":"red"}"#).await,
        401,
        "unauthorized",
    );
    let forged = format!("{}x", token(voter_base + 2));
    assert_error(
        &post_as(&c, s, &open, &forged, r#"{"option":"red"}"#).await,
        401,
        "unauthorized",
    );
    let other_key = votes_core::TokenKeys::hs256(b"another-key-another-key-another-key").unwrap();
    let alien =
        votes_core::token::issue(other_key.signing_key(), votes_core::VoterId(5), 60, now_s());
    assert_error(
        &post_as(&c, s, &open, &alien, r#"{"option":"red"}"#).await,
        401,
        "unauthorized",
    );
    let keys = votes_core::TokenKeys::hs256(common::serve::TOKEN_KEY.as_bytes()).unwrap();
    let expired = votes_core::token::issue(
        keys.signing_key(),
        votes_core::VoterId(5),
        1,
        now_s() - 3600,
    );
    assert_error(
        &post_as(&c, s, &open, &expired, r#"{"option":"red"}"#).await,
        401,
        "unauthorized",
    );
    // 404 not_found: no such election.
    assert_error(
        &post_vote(&c, s, "no-such-election", fresh_auth, r#"{"option":"red"}"#).await,
        404,
        "not_found",
    );
    // 409 election_not_open.
    assert_error(
        &post_vote(&c, s, &closed, fresh_auth, r#"{"option":"red"}"#).await,
        409,
        "election_not_open",
    );
    // 413 too_large: over 1 KiB, declared or streamed.
    let big = format!(r#"{{"option":"red","pad":"{}"}}"#, "x".repeat(2048));
    assert_error(
        &post_vote(&c, s, &open, fresh_auth, big).await,
        413,
        "too_large",
    );
    // 415 unsupported_media_type.
    assert_error(
        &post_vote(
            &c,
            s,
            &open,
            &[("authorization", &fresh), ("content-type", "text/plain")],
            r#"{"option":"red"}"#,
        )
        .await,
        415,
        "unsupported_media_type",
    );
    assert_error(
        &post_vote(
            &c,
            s,
            &open,
            &[("authorization", &fresh)],
            r#"{"option":"red"}"#,
        )
        .await,
        415,
        "unsupported_media_type",
    );
    // 422 invalid_option: not an option of this election, or not an option id at all.
    assert_error(
        &post_vote(&c, s, &open, fresh_auth, r#"{"option":"green"}"#).await,
        422,
        "invalid_option",
    );
    assert_error(
        &post_vote(&c, s, &open, fresh_auth, r#"{"option":"Not An Id"}"#).await,
        422,
        "invalid_option",
    );

    // 403 challenge_required / challenge_failed, then a solved challenge is accepted.
    assert_error(
        &post_vote(&c, s, &pow, fresh_auth, r#"{"option":"red"}"#).await,
        403,
        "challenge_required",
    );
    let (st, ch) = get_challenge(&c, s, &pow, &[("authorization", &fresh)]).await;
    assert_eq!(st, 200, "{ch}");
    assert_eq!(ch["difficulty"], 8);
    assert!(ch["expires_at"].as_u64().unwrap() > now_s() * 1000);
    let challenge = ch["challenge"].as_str().unwrap();
    let nonce = votes_core::pow::solve(challenge, 8);
    let wrong = (0..)
        .map(|n: u32| n.to_string())
        .find(|n| votes_core::pow::work_hash(challenge, n)[0] != 0)
        .unwrap();
    let body = |nonce: &str| {
        serde_json::json!({"option": "red", "pow": {"challenge": challenge, "nonce": nonce}})
            .to_string()
    };
    assert_error(
        &post_vote(&c, s, &pow, fresh_auth, body(&wrong)).await,
        403,
        "challenge_failed",
    );
    // A challenge is bound to its voter: another voter cannot use it.
    let third = format!("Bearer {}", token(voter_base + 3));
    assert_error(
        &post_vote(
            &c,
            s,
            &pow,
            &[
                ("authorization", &third),
                ("content-type", "application/json"),
            ],
            body(&nonce),
        )
        .await,
        403,
        "challenge_failed",
    );
    let (st, ok) = post_vote(&c, s, &pow, fresh_auth, body(&nonce)).await;
    assert_eq!(st, 202, "{ok}");
    assert_error(&get_challenge(&c, s, &pow, &[]).await, 401, "unauthorized");

    // Wrong methods are refused with the envelope, never a 500.
    let votes = format!("/v1/elections/{open}/votes");
    let (st, j) = request(&c, s, "DELETE", &votes, auth, Bytes::new()).await;
    assert_eq!(st, 405, "{j}");
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

const PROTOCOLS: [&str; 5] = ["h1", "h2c", "h1-tls", "h2-tls", "h3"];

#[test]
fn every_row_of_the_voter_api_over_http1_h2c_tls_and_http3() {
    let prefix = common::fresh_prefix("api", 4);
    let serve = Serve::start_with(&prefix, 2, true);
    runtime().block_on(async {
        let c = TestClient::http1();
        for protocol in PROTOCOLS {
            open_election(&c, &serve, &format!("open-{protocol}"), &["red", "blue"], 0).await;
            open_election(&c, &serve, &format!("pow-{protocol}"), &["red", "blue"], 8).await;
            let closed = format!("closed-{protocol}");
            open_election(&c, &serve, &closed, &["red", "blue"], 0).await;
            let (st, j) = c
                .admin_post(&serve, &format!("/admin/v1/elections/{closed}/close"))
                .await;
            assert_eq!(st, 200, "{j}");
        }
        for (i, protocol) in PROTOCOLS.into_iter().enumerate() {
            every_row(&serve, protocol, 1_000 * (i as u64 + 1)).await;
        }
        // The HTTP/3 rows arrived over QUIC, and TLS over TCP advertises it. (Each core
        // publishes its counters once a second.)
        tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
        let h3 = common::serve::metric(&serve, "votes_http3_requests_total").await;
        assert!(h3.values().sum::<u64>() > 0, "{h3:?}");
        let root = serve.tls_root();
        let (st, hdrs, _) = TestClient::for_protocol("h2-tls", root)
            .send("GET", &serve.base_for("h2-tls"), &[], bytes::Bytes::new())
            .await
            .unwrap();
        assert_eq!(st, 200);
        let port = serve.https.as_ref().unwrap().0.port();
        assert_eq!(
            hdrs.get("alt-svc").map(String::as_str),
            Some(format!("h3=\":{port}\"; ma=86400").as_str())
        );
    });
}

/// Under handshake pressure (here: always) a QUIC client must echo a Retry token before the
/// server does any handshake work; an honest client does so transparently and votes.
#[test]
fn http3_clients_prove_their_address_with_a_retry_under_pressure() {
    let prefix = common::fresh_prefix("h3-retry", 2);
    let serve = Serve::start_env(&prefix, 1, true, &[("VOTES_H3_RETRY_ABOVE", "0")]);
    runtime().block_on(async {
        let admin = TestClient::http1();
        open_election(&admin, &serve, "retry", &["red", "blue"], 0).await;
        let root = serve.tls_root();
        let c = TestClient::for_protocol("h3", root);
        for voter in 1..=5u64 {
            c.vote_accepted(&serve.base_for("h3"), "retry", voter, "red")
                .await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
        let retries = common::serve::metric(&serve, "votes_http3_retries_total").await;
        assert!(retries.values().sum::<u64>() >= 1, "{retries:?}");
        let conns = common::serve::metric(&serve, "votes_http3_connections_total").await;
        assert_eq!(
            conns.values().sum::<u64>(),
            1,
            "one connection for five votes"
        );
    });
}

#[test]
fn the_admin_api_requires_its_token_and_validates_elections() {
    let serve = Serve::init_and_start("admin", 2, 1);
    runtime().block_on(async {
        let c = TestClient::http1();
        let url = serve.admin_url("/admin/v1/elections");
        let (st, _, j) = c.send("GET", &url, &[], Bytes::new()).await.unwrap();
        assert_eq!((st, j["error"]["code"].as_str()), (401, Some("unauthorized")));
        let (st, _, _) = c.send("GET", &url, &[("authorization", "Bearer wrong")], Bytes::new()).await.unwrap();
        assert_eq!(st, 401);
        let one_option = serde_json::json!({"id": "e1", "title": "T", "options": [{"id": "a", "label": "A"}]});
        assert_eq!(c.admin("POST", &url, one_option).await.0, 400);
        let unknown = serde_json::json!({"id": "e1", "title": "T", "options": [], "colour": "red"});
        assert_eq!(c.admin("POST", &url, unknown).await.0, 400);
        open_election(&c, &serve, "e1", &["a", "b"], 0).await;
        // Twice is a conflict; so is reopening an open election.
        let again = serde_json::json!({"id": "e1", "title": "T", "options": [{"id": "a", "label": "A"}, {"id": "b", "label": "B"}]});
        assert_eq!(c.admin("POST", &url, again).await.0, 409);
        assert_eq!(c.admin_post(&serve, "/admin/v1/elections/e1/open").await.0, 409);
        assert_eq!(c.admin_post(&serve, "/admin/v1/elections/nope/open").await.0, 404);
        // Live anti-bot difficulty.
        let (st, e) = c.admin("PATCH", &serve.admin_url("/admin/v1/elections/e1"), serde_json::json!({"pow_difficulty": 4})).await;
        assert_eq!((st, e["pow_difficulty"].as_u64()), (200, Some(4)));
        let (st, e) = c.get(&serve.url("/v1/elections/e1")).await.unwrap();
        assert_eq!((st, e["pow_difficulty"].as_u64()), (200, Some(4)));
        let (st, list) = c.admin("GET", &url, serde_json::Value::Null).await;
        assert_eq!(st, 200);
        assert_eq!(list[0]["id"], "e1");
        assert_eq!(list[0]["live"]["total"], 0);
        // /metrics is Prometheus text, behind the admin token.
        let (st, _, _) = c.send("GET", &serve.admin_url("/metrics"), &[], Bytes::new()).await.unwrap();
        assert_eq!(st, 401, "/metrics without the admin token");
        let (st, m) = c.admin_get(&serve, "/metrics").await;
        assert_eq!(st, 200);
        let text = m["raw"].as_str().unwrap();
        assert!(text.contains("votes_shard_ready{partition=\"1\"} 1"), "{text}");
        assert!(text.contains("votes_commit_latency_seconds"), "{text}");
    });
    // A process started later sees the elections from the compacted topic.
    let later = Serve::start(&serve.prefix, 1);
    runtime().block_on(async {
        let (st, e) = TestClient::http1()
            .get(&later.url("/v1/elections/e1"))
            .await
            .unwrap();
        assert_eq!(
            (st, e["state"].as_str(), e["pow_difficulty"].as_u64()),
            (200, Some("open"), Some(4))
        );
        // A change made through another process reaches a running one through the topic.
        let c = TestClient::http1();
        open_election(&c, &serve, "e2", &["a", "b"], 0).await;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let (st, e) = c.get(&later.url("/v1/elections/e2")).await.unwrap();
            if st == 200 && e["state"] == "open" {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "e2 never reached the running process: {st} {e}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    });
}

#[test]
fn requests_over_the_rate_limit_get_429_with_retry_after() {
    let prefix = common::fresh_prefix("rate", 2);
    // 1 request/s per address on the one core: bursts of 2, then 429. Nothing here assumes
    // how long a request takes: a slow machine only refills the bucket, so each step sends
    // until it sees what it looks for, within a bound.
    let serve = Serve::start_env(&prefix, 1, false, &[("VOTES_RATE_PER_ADDR", "1")]);
    runtime().block_on(async {
        let c = TestClient::http1();
        open_election(&c, &serve, "rated", &["red", "blue"], 0).await;
        let mut voter = 0;
        let mut vote_limited = false;
        for _round in 0..20 {
            // Requests pass until the bucket is empty: at least the burst of 2.
            let mut passed = 0;
            let (headers, body) = loop {
                let (st, headers, body) = c
                    .send("GET", &serve.url("/v1/elections"), &[], Bytes::new())
                    .await
                    .unwrap();
                if st == 429 {
                    break (headers, body);
                }
                assert_eq!(st, 200, "{body}");
                passed += 1;
                assert!(passed < 1_000, "the rate limit never answered 429");
            };
            assert!(passed >= 2, "a full bucket lets a burst through: {passed}");
            assert_error(&(429, body), 429, "rate_limited");
            let retry: u64 = headers["retry-after"].parse().unwrap();
            assert!((1..=2).contains(&retry), "Retry-After {retry}");
            // A vote right after is limited the same way (unless a token came back meanwhile:
            // then it counts, and the next round tries again with another voter).
            voter += 1;
            let (st, body) = c.vote(&serve.url(""), "rated", voter, "red").await.unwrap();
            if st == 429 {
                assert_error(&(st, body), 429, "rate_limited");
                vote_limited = true;
                break;
            }
            assert_eq!(st, 202, "{body}");
        }
        assert!(
            vote_limited,
            "a vote over the limit got 429 in one of 20 rounds"
        );
        // Probes never are limited.
        assert_eq!(c.get(&serve.url("/healthz")).await.unwrap().0, 200);
        // The bucket refills: the refused vote goes through once a token is back.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let (st, body) = c.vote(&serve.url(""), "rated", voter, "red").await.unwrap();
            if st == 202 {
                break;
            }
            assert_error(&(st, body), 429, "rate_limited");
            assert!(
                std::time::Instant::now() < deadline,
                "the bucket never refilled"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    });
}
