//! A flood of bad vote requests beside honest voters (issue #7, docs/design.md §4.2).
//!
//! For about ten seconds honest voters vote at 100/s (distinct voters; every tenth one in an
//! election with proof of work, solving its challenge), while a flood of 300 bad requests/s hits
//! the same `votes serve`: invalid tokens, malformed bodies (bad JSON, unknown fields, bad UTF-8),
//! an unknown option, oversize bodies, the wrong content type, an unknown election, duplicates
//! of voters who already voted, and wrong or missing proofs of work. Each honest vote must get
//! `202` with its receipt; each bad request must get *its* status and `error.code` of §4.2 (no
//! 5xx: at this moderate rate the process is not overloaded, so a 503 is a failure too). At the
//! end the process is alive and ready, `/metrics` counts every rejection under its code, and the
//! committed log holds each accepted voter once and nothing from the flood.
//!
//! No latency is asserted (shared, noisy machines); `perf/scripts/attack.sh` measures it.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use votes_perf::attack::{
    Attack, GARBAGE_AUTHORIZATION, UNKNOWN_ELECTION, WRONG_CONTENT_TYPE, unsolving_nonce,
};

use bytes::Bytes;
use common::serve::{Serve, TestClient, open_election, token};
use votes_core::{TokenKeys, VoterId};

/// Election without proof of work, and one with it.
const ELECTION: &str = "attack";
const POW_ELECTION: &str = "attack-pow";
const POW_DIFFICULTY: u8 = 8;
const PARTITIONS: u32 = 4;

/// Honest votes per second, for `RUN`.
const HONEST_RATE: u64 = 100;
/// Attack requests per second, for `RUN`.
const FLOOD_RATE: u64 = 300;
const RUN: Duration = Duration::from_secs(10);
/// Honest voter ids start here; every tenth honest voter votes in the PoW election.
const HONEST_BASE: u64 = 1;
/// Voters who voted before the flood: the flood's duplicates are theirs.
const VOTED_BASE: u64 = 500_001;
const VOTED: u64 = 50;
/// Voter ids of the flood's requests (never accepted).
const FLOOD_BASE: u64 = 900_000;
/// Bound on one request; a request without an answer by then is a failure.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What one request got: its status and `error.code`, or why it got none.
#[derive(Debug, Clone)]
struct Got {
    status: u16,
    code: String,
    body: serde_json::Value,
}

struct Ctx {
    base: String,
    h1: TestClient,
    h2: TestClient,
    /// A key the server does not know.
    foreign: TokenKeys,
    /// The server's key (for an expired token).
    ours: TokenKeys,
}

impl Ctx {
    fn client(&self, n: u64) -> &TestClient {
        if n.is_multiple_of(2) {
            &self.h2
        } else {
            &self.h1
        }
    }

    fn votes_url(&self, election: &str) -> String {
        format!("{}/v1/elections/{election}/votes", self.base)
    }

    async fn post(
        &self,
        n: u64,
        election: &str,
        auth: Option<String>,
        content_type: &str,
        body: impl Into<Bytes>,
    ) -> Result<Got, String> {
        let mut headers = vec![("content-type", content_type)];
        if let Some(a) = auth.as_deref() {
            headers.push(("authorization", a));
        }
        let (status, _, body) = self
            .client(n)
            .send("POST", &self.votes_url(election), &headers, body)
            .await?;
        let code = body["error"]["code"].as_str().unwrap_or("").to_string();
        Ok(Got { status, code, body })
    }

    async fn challenge(&self, n: u64, voter: u64) -> Result<String, String> {
        let auth = format!("Bearer {}", token(voter));
        let url = format!("{}/v1/elections/{POW_ELECTION}/challenge", self.base);
        let (status, _, body) = self
            .client(n)
            .send("GET", &url, &[("authorization", &auth)], Bytes::new())
            .await?;
        match (status, body["challenge"].as_str()) {
            (200, Some(c)) => Ok(c.to_string()),
            _ => Err(format!("GET challenge for voter {voter}: {status} {body}")),
        }
    }

    /// An honest first vote: in the PoW election for every tenth voter (challenge, solve).
    async fn honest(&self, n: u64, voter: u64) -> Result<Got, String> {
        let auth = Some(format!("Bearer {}", token(voter)));
        let option = ["a", "b"][(voter % 2) as usize];
        if voter.is_multiple_of(10) {
            let challenge = self.challenge(n, voter).await?;
            let c = challenge.clone();
            let nonce =
                tokio::task::spawn_blocking(move || votes_core::pow::solve(&c, POW_DIFFICULTY))
                    .await
                    .unwrap();
            let body = serde_json::json!({"option": option, "pow": {"challenge": challenge, "nonce": nonce}});
            self.post(n, POW_ELECTION, auth, "application/json", body.to_string())
                .await
        } else {
            let body = serde_json::json!({ "option": option }).to_string();
            self.post(n, ELECTION, auth, "application/json", body).await
        }
    }

    /// Request `n` of the flood, of kind `bad`.
    async fn flood(&self, n: u64, bad: Attack) -> Result<Got, String> {
        let voter = FLOOD_BASE + n % 1_000;
        let auth = Some(format!("Bearer {}", token(voter)));
        let json = "application/json";
        let vote = || serde_json::json!({"option": "a"}).to_string();
        match bad {
            Attack::MissingToken => self.post(n, ELECTION, None, json, vote()).await,
            Attack::BadSignature => {
                let t = votes_core::token::issue(
                    self.foreign.signing_key(),
                    VoterId(voter),
                    3600,
                    votes_core::clock::unix_ms() / 1000,
                );
                self.post(n, ELECTION, Some(format!("Bearer {t}")), json, vote())
                    .await
            }
            Attack::GarbageToken => {
                let auth = Some(GARBAGE_AUTHORIZATION.to_string());
                self.post(n, ELECTION, auth, json, vote()).await
            }
            Attack::ExpiredToken => {
                let t = votes_core::token::issue(
                    self.ours.signing_key(),
                    VoterId(voter),
                    60,
                    (votes_core::clock::unix_ms() / 1000) - 7_200,
                );
                self.post(n, ELECTION, Some(format!("Bearer {t}")), json, vote())
                    .await
            }
            Attack::BadJson
            | Attack::UnknownField
            | Attack::BadUtf8
            | Attack::UnknownOption
            | Attack::Oversize => {
                let body = bad.malformed_body("a").expect("a body attack");
                self.post(n, ELECTION, auth, json, body).await
            }
            Attack::WrongContentType => {
                self.post(n, ELECTION, auth, WRONG_CONTENT_TYPE, vote())
                    .await
            }
            Attack::UnknownElection => self.post(n, UNKNOWN_ELECTION, auth, json, vote()).await,
            Attack::Duplicate => {
                let voter = VOTED_BASE + n % VOTED;
                let auth = Some(format!("Bearer {}", token(voter)));
                self.post(n, ELECTION, auth, json, vote()).await
            }
            Attack::PowMissing => self.post(n, POW_ELECTION, auth, json, vote()).await,
            Attack::PowForged => {
                let body = bad.malformed_body("a").expect("a body attack");
                self.post(n, POW_ELECTION, auth, json, body).await
            }
            Attack::PowUnsolved => {
                let challenge = self.challenge(n, voter).await?;
                let nonce = unsolving_nonce(&challenge);
                let body = serde_json::json!({"option": "a", "pow": {"challenge": challenge, "nonce": nonce}});
                self.post(n, POW_ELECTION, auth, json, body.to_string())
                    .await
            }
            Attack::PowOtherVoter => {
                // A genuine, solved challenge, issued to another voter.
                let challenge = self.challenge(n, voter + 1_000).await?;
                let c = challenge.clone();
                let nonce =
                    tokio::task::spawn_blocking(move || votes_core::pow::solve(&c, POW_DIFFICULTY))
                        .await
                        .unwrap();
                let body = serde_json::json!({"option": "a", "pow": {"challenge": challenge, "nonce": nonce}});
                self.post(n, POW_ELECTION, auth, json, body.to_string())
                    .await
            }
        }
    }
}

/// `votes_votes_total` by outcome, from the admin listener's `/metrics`.
async fn vote_metrics(serve: &Serve) -> BTreeMap<String, u64> {
    let (status, body) = TestClient::http1().admin_get(serve, "/metrics").await;
    assert_eq!(status, 200, "/metrics: {body}");
    let text = body["raw"].as_str().unwrap_or_default().to_string();
    text.lines()
        .filter_map(|l| l.strip_prefix("votes_votes_total{outcome=\""))
        .filter_map(|l| {
            let (outcome, rest) = l.split_once("\"}")?;
            Some((outcome.to_string(), rest.trim().parse().ok()?))
        })
        .collect()
}

/// Sends `total` requests evenly over `RUN` from `t0`, each at its time whatever the earlier
/// ones are doing (an open loop); `send(n)` names request `n` and makes it. Its answers, each
/// bounded by `REQUEST_TIMEOUT`.
fn open_loop<K, A>(
    t0: tokio::time::Instant,
    total: u64,
    send: impl Fn(u64) -> (K, A) + Send + 'static,
) -> tokio::task::JoinHandle<Vec<(K, Result<Got, String>)>>
where
    K: Send + 'static,
    A: std::future::Future<Output = Result<Got, String>> + Send + 'static,
{
    tokio::spawn(async move {
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..total {
            tokio::time::sleep_until(t0 + RUN * n as u32 / total as u32).await;
            let (name, answer) = send(n);
            tasks.spawn(async move {
                let got = tokio::time::timeout(REQUEST_TIMEOUT, answer).await;
                (
                    name,
                    got.unwrap_or_else(|_| Err("no answer in time".into())),
                )
            });
        }
        tasks.join_all().await
    })
}

#[test]
fn a_flood_of_bad_requests_gets_its_own_4xx_while_every_honest_vote_is_accepted() {
    let mut serve = Serve::init_and_start("attack", PARTITIONS, 2);
    let rt = common::two_worker_runtime();
    rt.block_on(async {
        let admin = TestClient::http1();
        open_election(&admin, &serve, ELECTION, &["a", "b", "c"], 0).await;
        open_election(&admin, &serve, POW_ELECTION, &["a", "b"], POW_DIFFICULTY).await;
        let ctx = Arc::new(Ctx {
            base: format!("http://{}", serve.http),
            h1: TestClient::http1(),
            h2: TestClient::h2c(),
            foreign: TokenKeys::hs256(b"not-the-servers-key-0123456789abcdef").unwrap(),
            ours: TokenKeys::hs256(common::serve::TOKEN_KEY.as_bytes()).unwrap(),
        });

        // The voters whose duplicates the flood sends.
        for voter in VOTED_BASE..VOTED_BASE + VOTED {
            let got = ctx
                .post(
                    voter,
                    ELECTION,
                    Some(format!("Bearer {}", token(voter))),
                    "application/json",
                    r#"{"option":"c"}"#,
                )
                .await;
            assert!(
                matches!(&got, Ok(g) if g.status == 202),
                "voter {voter} before the flood: {got:?}"
            );
        }

        // Honest voters and the flood, each open loop (a request is sent at its time, whatever
        // the earlier ones are doing), concurrently.
        let t0 = tokio::time::Instant::now();
        let honest_total = HONEST_RATE * RUN.as_secs();
        let flood_total = FLOOD_RATE * RUN.as_secs();
        let honest = {
            let ctx = ctx.clone();
            open_loop(t0, honest_total, move |i| {
                let ctx = ctx.clone();
                let voter = HONEST_BASE + i;
                (voter, async move { ctx.honest(i, voter).await })
            })
        };
        let flood = {
            let ctx = ctx.clone();
            open_loop(t0, flood_total, move |n| {
                let ctx = ctx.clone();
                let bad = Attack::ALL[(n % Attack::ALL.len() as u64) as usize];
                (bad, async move { ctx.flood(n, bad).await })
            })
        };
        let honest = honest.await.unwrap();
        let flood = flood.await.unwrap();
        let took = t0.elapsed();

        // Every honest vote accepted, with its receipt.
        let mut failures = Vec::new();
        let mut accepted: HashMap<&str, Vec<u64>> = HashMap::new();
        for (voter, got) in &honest {
            match got {
                Ok(g)
                    if g.status == 202
                        && g.body["status"] == "accepted"
                        && g.body["receipt"].as_str().is_some_and(|r| r.len() == 64) =>
                {
                    let election = if voter.is_multiple_of(10) {
                        POW_ELECTION
                    } else {
                        ELECTION
                    };
                    accepted.entry(election).or_default().push(*voter);
                }
                other => failures.push(format!("honest voter {voter}: {other:?}")),
            }
        }

        // Every bad request got its own status and code; tally them by kind.
        let mut table: BTreeMap<Attack, BTreeMap<String, u64>> = BTreeMap::new();
        let mut by_code: BTreeMap<String, u64> = BTreeMap::new();
        for (bad, got) in &flood {
            let (status, code) = bad.expected();
            let seen = match got {
                Ok(g) => format!("{} {}", g.status, g.code),
                Err(e) => format!("error: {e}"),
            };
            *table.entry(*bad).or_default().entry(seen).or_default() += 1;
            match got {
                Ok(g) if g.status == status && g.code == code => {
                    *by_code.entry(code.to_string()).or_default() += 1;
                }
                other => failures.push(format!("{bad:?}: expected {status} {code}, got {other:?}")),
            }
        }
        eprintln!(
            "attack: {} honest votes and {} bad requests in {took:?}",
            honest.len(),
            flood.len()
        );
        for (bad, seen) in &table {
            eprintln!("  {:<16} {seen:?}", format!("{bad:?}"));
        }
        let server_errors = honest
            .iter()
            .filter_map(|(_, g)| g.as_ref().ok())
            .chain(flood.iter().filter_map(|(_, g)| g.as_ref().ok()))
            .filter(|g| g.status >= 500)
            .count();
        assert_eq!(
            server_errors,
            0,
            "5xx answers: {:?}",
            &failures[..failures.len().min(20)]
        );
        assert!(
            failures.is_empty(),
            "{} request(s) did not get their answer; the first ones: {:#?}",
            failures.len(),
            &failures[..failures.len().min(20)]
        );

        // `/metrics` counts each rejection under its code (cores publish once a second).
        let accepted_total =
            (VOTED + accepted.values().map(|v| v.len() as u64).sum::<u64>()) as usize;
        let mut want: BTreeMap<String, u64> = by_code.clone();
        want.insert("accepted".into(), accepted_total as u64);
        let deadline = Instant::now() + Duration::from_secs(15);
        let metrics = loop {
            let m = vote_metrics(&serve).await;
            if m == want || Instant::now() > deadline {
                break m;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        assert_eq!(
            metrics, want,
            "votes_votes_total by outcome (left) is not what the clients were answered (right)"
        );
        eprintln!("attack: /metrics votes_votes_total {metrics:?}");
    });

    // Alive and ready after the flood.
    serve.wait_ready(Duration::from_secs(10));

    // The committed log: each accepted voter exactly once, nothing from the flood.
    let committed = common::serve::committed_votes(&serve.names(), PARTITIONS);
    let mut seen: HashMap<(String, u64), usize> = HashMap::new();
    for c in &committed {
        *seen
            .entry((c.record.election.to_string(), c.record.voter.0))
            .or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "voters committed more than once: {twice:?}"
    );
    let from_flood: Vec<_> = seen.keys().filter(|(_, v)| *v >= FLOOD_BASE).collect();
    assert!(
        from_flood.is_empty(),
        "the flood's voters were committed: {from_flood:?}"
    );
    let honest_total = HONEST_RATE * RUN.as_secs();
    for voter in HONEST_BASE..HONEST_BASE + honest_total {
        let election = if voter.is_multiple_of(10) {
            POW_ELECTION
        } else {
            ELECTION
        };
        assert_eq!(
            seen.get(&(election.to_string(), voter)),
            Some(&1),
            "honest voter {voter} in {election} is not in the committed log once"
        );
    }
    assert_eq!(
        committed.len() as u64,
        honest_total + VOTED,
        "committed records: the honest voters and the ones who voted before the flood"
    );
}
