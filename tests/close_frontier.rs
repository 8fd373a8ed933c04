//! The close frontier (docs/design.md §7): closing an election is a barrier. Votes stream in while the
//! election closes; afterwards every `202` is counted in the official result (its receipt
//! verifies against the official root), every other answer is a contract code
//! (`409 election_not_open` once closed, `503` to retry), the official result names a
//! frontier for every partition, and the three counts agreed (the result is final). With two
//! nodes, one of them sees the close late (`VOTES_TEST_ELECTIONS_LAG_MS`, test-only): the
//! owners still refuse what comes after their own close, forwarded votes included.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::serve::{
    Serve, TestClient, close_election, open_election, wait_final, wait_open, wait_state,
};
use common::{assert_success, runtime};

const OPTIONS: [&str; 3] = ["red", "green", "blue"];
/// How many 202s a run collects before it closes, so that the barrier has votes on both sides.
const ACCEPTED_BEFORE_CLOSE: u64 = 60;

/// Runs `votes persist --exit-when-caught-up` under `prefix` (on a blocking thread) and
/// asserts it succeeded.
async fn persist_to_end(prefix: &str) {
    let prefix = prefix.to_owned();
    tokio::task::spawn_blocking(move || {
        let out = common::votes_command(&prefix, &["persist", "--exit-when-caught-up"])
            .env("VOTES_LOG", "warn")
            .output()
            .expect("votes persist runs");
        assert_success(&out, "votes persist");
    })
    .await
    .unwrap();
}

/// Where a lane sends votes: a protocol and a node's base URL for it.
#[derive(Clone)]
struct Route {
    protocol: &'static str,
    base: String,
    tls_root: Option<String>,
}

/// HTTP/1.1 to each of `urls`.
fn h1(urls: &[String]) -> Vec<Route> {
    urls.iter()
        .map(|u| Route {
            protocol: "h1",
            base: u.clone(),
            tls_root: None,
        })
        .collect()
}

/// HTTP/1.1 and HTTP/3 to each of `nodes` (started with TLS).
fn h1_and_h3(nodes: &[&Serve]) -> Vec<Route> {
    nodes
        .iter()
        .flat_map(|n| {
            let root = n.https.as_ref().map(|(_, cert)| cert.clone());
            ["h1", "h3"].map(|protocol| Route {
                protocol,
                base: n.base_for(protocol),
                tls_root: root.clone(),
            })
        })
        .collect()
}

/// One vote's fate as its voter saw it.
struct Sent {
    protocol: &'static str,
    voter: u64,
    status: u16,
    code: Option<String>,
    receipt: Option<String>,
}

/// What the voting lanes have heard so far: the test waits on these, never on a duration.
#[derive(Default)]
struct Heard {
    accepted: AtomicU64,
    not_open: AtomicU64,
}

/// Waits until `counter` reaches `at_least`; the bound only turns a hung system into a
/// failure, it is not what the test waits for.
async fn until(counter: &AtomicU64, at_least: u64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while counter.load(Ordering::Relaxed) < at_least {
        assert!(
            Instant::now() < deadline,
            "{what}: {} of {at_least} within 120 s",
            counter.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Votes with fresh voters through `routes` (round robin) from `lanes` tasks until `stop`.
async fn stream_votes(
    routes: Vec<Route>,
    lanes: u64,
    stop: Arc<AtomicBool>,
    heard: Arc<Heard>,
) -> Vec<Sent> {
    let mut tasks = Vec::new();
    for lane in 0..lanes {
        let (routes, stop, heard) = (routes.clone(), stop.clone(), heard.clone());
        tasks.push(tokio::spawn(async move {
            let clients: Vec<TestClient> = routes
                .iter()
                .map(|r| TestClient::for_protocol(r.protocol, r.tls_root.as_deref()))
                .collect();
            let mut out = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let voter = 1 + lane + n * lanes;
                let at = (n as usize) % routes.len();
                let (client, url) = (&clients[at], &routes[at].base);
                let option = OPTIONS[(voter % 3) as usize];
                // An answer lost with its connection (a node killed) is status 0: its vote
                // may or may not have been committed.
                let (status, body) = client
                    .vote(url, "c", voter, option)
                    .await
                    .unwrap_or((0, serde_json::Value::Null));
                let code = body["error"]["code"].as_str().map(str::to_owned);
                if status == 202 {
                    heard.accepted.fetch_add(1, Ordering::Relaxed);
                } else if code.as_deref() == Some("election_not_open") {
                    heard.not_open.fetch_add(1, Ordering::Relaxed);
                }
                out.push(Sent {
                    protocol: routes[at].protocol,
                    voter,
                    status,
                    code,
                    receipt: body["receipt"].as_str().map(str::to_owned),
                });
                n += 1;
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("a voting lane"));
    }
    all
}

/// Voting lanes streaming votes ([`stream_votes`]) until stopped, and what they heard so far.
struct Voting {
    stop: Arc<AtomicBool>,
    heard: Arc<Heard>,
    lanes: tokio::task::JoinHandle<Vec<Sent>>,
}

impl Voting {
    /// Starts `lanes` lanes voting through `routes`.
    fn start(routes: Vec<Route>, lanes: u64) -> Voting {
        let stop = Arc::new(AtomicBool::new(false));
        let heard = Arc::new(Heard::default());
        let lanes = tokio::spawn(stream_votes(routes, lanes, stop.clone(), heard.clone()));
        Voting { stop, heard, lanes }
    }

    /// Waits until [`ACCEPTED_BEFORE_CLOSE`] votes were accepted, before `what` happens.
    async fn accepted_before(&self, what: &str) {
        let what = format!("votes accepted before {what}");
        until(&self.heard.accepted, ACCEPTED_BEFORE_CLOSE, &what).await;
    }

    /// Waits until `more` votes from now on were refused as not open, then stops the lanes;
    /// every vote they sent.
    async fn stop_after_refusals(self, more: u64) -> Vec<Sent> {
        let refused = self.heard.not_open.load(Ordering::Relaxed);
        until(
            &self.heard.not_open,
            refused + more,
            "votes refused after the close",
        )
        .await;
        self.stop.store(true, Ordering::Relaxed);
        self.lanes.await.expect("the voting lanes")
    }
}

/// Closes "c" through `admin` while votes stream through `routes`; returns the answers and
/// the official result once final.
async fn close_under_load(
    admin: &Serve,
    nodes: &[&Serve],
    routes: Vec<Route>,
    prefix: &str,
) -> (Vec<Sent>, serde_json::Value) {
    let client = TestClient::http1();
    let voting = Voting::start(routes, 12);
    // Let votes flow, then close while they still do.
    voting.accepted_before("the close").await;
    close_election(&client, admin, "c").await;
    // Keep voting until every node's own view says closed (a lagging node's too) and votes
    // were refused after that.
    for node in nodes {
        wait_state(&client, node, "c", &["closed", "final"]).await;
    }
    let sent = voting.stop_after_refusals(24).await;
    persist_to_end(prefix).await;
    let official = wait_final(&client, admin, "c", Duration::from_secs(120)).await;
    (sent, official)
}

/// What every run must show: each 202 counted (its receipt proven against the official root),
/// nothing but contract codes otherwise, a frontier for every partition.
async fn assert_barrier_held(
    serve: &Serve,
    sent: &[Sent],
    official: &serde_json::Value,
    partitions: u32,
) {
    let accepted: Vec<&Sent> = sent.iter().filter(|s| s.status == 202).collect();
    let not_open = sent
        .iter()
        .filter(|s| s.code.as_deref() == Some("election_not_open"))
        .count();
    assert!(
        accepted.len() as u64 >= ACCEPTED_BEFORE_CLOSE && not_open > 0,
        "votes were accepted before and refused after the close: {} accepted, {not_open} not open",
        accepted.len()
    );
    for s in sent {
        assert!(
            matches!(
                (s.status, s.code.as_deref()),
                (202, None) | (409, Some("election_not_open")) | (503, Some("unavailable"))
            ),
            "voter {}: {} {:?}",
            s.voter,
            s.status,
            s.code
        );
    }
    assert_eq!(
        official["merkle"]["tree_size"].as_u64(),
        Some(accepted.len() as u64),
        "every 202, and nothing else, is counted (each voter voted once): {official}"
    );
    assert_receipts_in_official_tree(serve, &accepted, official, partitions).await;
    assert_every_202_exported(&serve.prefix, &accepted);
}

/// The auditors' copy agrees: the export of "c" verifies, and its rows are exactly the 202s'
/// receipts.
fn assert_every_202_exported(prefix: &str, accepted: &[&Sent]) {
    let export = common::export_and_verify(prefix, "c");
    assert!(
        export.verify.contains("ok   close frontier"),
        "{}",
        export.verify
    );
    let rows: HashSet<String> = export
        .rows
        .iter()
        .map(|r| hex::encode(r.leaf_hash))
        .collect();
    assert_eq!(rows.len(), accepted.len(), "one row per 202");
    for s in accepted {
        let receipt = s.receipt.as_deref().expect("a 202 carries a receipt");
        assert!(
            rows.contains(receipt),
            "voter {}'s receipt {receipt} is a row of the export",
            s.voter
        );
    }
}

/// Each 202's receipt is proven against the official root, at an offset before its partition's
/// frontier, and the official result names a frontier for each of `partitions`.
async fn assert_receipts_in_official_tree(
    serve: &Serve,
    accepted: &[&Sent],
    official: &serde_json::Value,
    partitions: u32,
) {
    let client = TestClient::http1();
    let frontier = official["frontier"]
        .as_object()
        .unwrap_or_else(|| panic!("the official result names its frontier: {official}"));
    assert_eq!(frontier.len(), partitions as usize, "{official}");
    for s in accepted {
        let receipt = s.receipt.as_deref().expect("a 202 carries a receipt");
        let (status, proof) = client
            .get(&serve.url(&format!("/v1/elections/c/receipts/{receipt}")))
            .await
            .unwrap();
        assert_eq!(
            status, 200,
            "voter {}'s receipt is in the official tree: {proof}",
            s.voter
        );
        assert_eq!(proof["root"], official["merkle"]["root"]);
        let p = proof["leaf"]["partition"].as_u64().unwrap().to_string();
        assert!(
            proof["leaf"]["offset"].as_u64().unwrap() < frontier[&p].as_u64().unwrap(),
            "a counted vote lies before its partition's frontier"
        );
    }
}

#[test]
fn closing_under_load_counts_every_202_and_refuses_the_rest() {
    let serve = Serve::init_and_start("close-frontier", 4, 2);
    let prefix = serve.names().prefix().to_owned();
    runtime().block_on(async {
        open_election(&TestClient::http1(), &serve, "c", &OPTIONS, 0).await;
        let (sent, official) =
            close_under_load(&serve, &[&serve], h1(&[serve.url("")]), &prefix).await;
        assert_barrier_held(&serve, &sent, &official, 4).await;

        // A close is idempotent: closing the final election again changes nothing.
        let client = TestClient::http1();
        let (status, again) = client
            .admin_post(&serve, "/admin/v1/elections/c/close")
            .await;
        assert_eq!(status, 200, "a repeated close: {again}");
        assert_eq!(again["state"], "final", "{again}");
        let (_, now) = client
            .get(&serve.url("/v1/elections/c/results"))
            .await
            .unwrap();
        for field in ["state", "totals", "merkle", "frontier"] {
            assert_eq!(
                now[field], official[field],
                "the official result stands: {now}"
            );
        }
    });
}

#[test]
fn a_node_that_hears_of_the_close_late_never_gets_a_vote_past_the_frontier_counted() {
    let prefix = common::fresh_prefix("close-lag", 4);
    let a = Serve::start_node_tls(&prefix, 1, "node-a", &[]);
    // node-b's elections view lags 2 s behind the topic: it keeps taking votes of the closed
    // election at its edge for that long, and owns half the partitions.
    let b = Serve::start_node_tls(
        &prefix,
        1,
        "node-b",
        &[("VOTES_TEST_ELECTIONS_LAG_MS", "2000")],
    );
    runtime().block_on(async {
        let client = TestClient::http1();
        open_election(&client, &a, "c", &OPTIONS, 0).await;
        // node-b hears of the election late too.
        wait_open(&client, &b, "c").await;
        // Voters reach both nodes over HTTP/1.1 and HTTP/3.
        let (sent, official) = close_under_load(&a, &[&a, &b], h1_and_h3(&[&a, &b]), &prefix).await;
        for protocol in ["h1", "h3"] {
            let accepted = sent
                .iter()
                .filter(|s| s.protocol == protocol && s.status == 202)
                .count();
            assert!(accepted > 0, "votes were accepted over {protocol}");
        }
        assert_barrier_held(&a, &sent, &official, 4).await;
    });
}

#[test]
fn closing_while_a_node_is_killed_still_reaches_final_with_every_frontier() {
    let prefix = common::fresh_prefix("close-kill", 4);
    let a = Serve::start_node(&prefix, 1, "node-a", &[]);
    let mut b = Serve::start_node(&prefix, 1, "node-b", &[]);
    runtime().block_on(async {
        let client = TestClient::http1();
        open_election(&client, &a, "c", &OPTIONS, 0).await;
        // Votes through both nodes until node-b dies mid-stream.
        let voting = Voting::start(h1(&[a.url(""), b.url("")]), 8);
        voting.accepted_before("the kill").await;
        b.kill();
        // The close goes out while node-b's partitions have no live owner yet.
        close_election(&client, &a, "c").await;
        // node-a refuses the closed election from its own view; stop once it did.
        let sent = voting.stop_after_refusals(8).await;
        persist_to_end(&prefix).await;
        // node-a takes node-b's partitions after the session timeout, closes them as it
        // recovers them (its own view says closed), and the recount then finds every frontier.
        let official = wait_final(&client, &a, "c", Duration::from_secs(120)).await;
        // Votes node-b acknowledged before it died are counted too: no 202 is lost. A vote
        // whose answer died with node-b (or that answered 503) may be counted or not; nothing
        // else may be.
        let accepted: Vec<&Sent> = sent.iter().filter(|s| s.status == 202).collect();
        let unsure = sent.iter().filter(|s| matches!(s.status, 0 | 503)).count();
        let counted = official["merkle"]["tree_size"].as_u64().unwrap() as usize;
        assert!(
            accepted.len() as u64 >= ACCEPTED_BEFORE_CLOSE
                && (accepted.len()..=accepted.len() + unsure).contains(&counted),
            "{} accepted, {unsure} unsure, {counted} counted: {official}",
            accepted.len()
        );
        assert_receipts_in_official_tree(&a, &accepted, &official, 4).await;
    });
}
