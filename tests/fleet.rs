//! The fleet's promises (docs/design.md §3.1-3.3, issue #10) against the real broker and real `votes
//! serve` processes: two nodes divide the partitions through Kafka's group membership, any
//! node takes any vote (forwarding it to the owner), a node killed with `kill -9` hands its
//! partitions to the survivor, and a node stopped with SIGSTOP comes back as a fenced zombie
//! whose late votes never commit. In every case: each `202` is in the log exactly once, no
//! voter is in it twice, and the live tallies equal the committed records.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use votes_core::clock::unix_ms;

use common::runtime;
use common::serve::{
    Ack, Committed, Serve, TestClient, assert_acks_in_log, committed_votes, log_tallies,
    open_election, wait_live_totals, wait_open,
};
use tokio::sync::{Mutex, Semaphore};
use votes_core::{VoterId, partition_of};

const OPTIONS: [&str; 3] = ["red", "blue", "green"];
const PARTITIONS: u32 = 4;

/// One vote request and what came back.
#[derive(Debug, Clone)]
struct Attempt {
    voter: u64,
    option: &'static str,
    at: Instant,
    status: Option<u16>,
    partition: Option<u64>,
    offset: Option<u64>,
}

fn option_of(voter: u64) -> &'static str {
    OPTIONS[(voter % 3) as usize]
}

/// The fleet map as `serve` sees it.
async fn fleet(client: &TestClient, serve: &Serve) -> serde_json::Value {
    client.admin_get(serve, "/admin/v1/fleet").await.1
}

/// Waits until `serve` sees exactly `nodes` (node → cores) in the fleet and is ready; returns
/// the partitions each node owns.
async fn wait_fleet(
    client: &TestClient,
    serve: &Serve,
    nodes: &[(&str, u64)],
    within: Duration,
) -> BTreeMap<String, BTreeSet<u32>> {
    let want: BTreeMap<String, u64> = nodes.iter().map(|(n, c)| (n.to_string(), *c)).collect();
    common::eventually(within, Duration::from_millis(200), async || {
        let map = fleet(client, serve).await;
        let got: BTreeMap<String, u64> = map["nodes"]
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default();
        let mut owners: BTreeMap<String, BTreeSet<u32>> = BTreeMap::new();
        for p in map["partitions"].as_array().into_iter().flatten() {
            if let Some(node) = p["node"].as_str() {
                owners
                    .entry(node.to_owned())
                    .or_default()
                    .insert(p["partition"].as_u64().unwrap() as u32);
            }
        }
        let owned: usize = owners.values().map(BTreeSet::len).sum();
        let ready = matches!(client.get(&serve.url("/readyz")).await, Ok((200, _)));
        if got == want && owned == PARTITIONS as usize && ready {
            return Ok(owners);
        }
        Err(serve.with_log(format!(
            "the fleet never became {want:?} as seen by {}: {map}",
            serve.node
        )))
    })
    .await
}

/// The fleet of the two-node tests: node-a and node-b, one core each.
const BOTH: [(&str, u64); 2] = [("node-a", 1), ("node-b", 1)];

/// A fresh prefix of `test` and its two nodes, node-a and node-b, of one core each.
fn two_nodes(test: &str) -> (Serve, Serve) {
    let prefix = common::fresh_prefix(test, PARTITIONS);
    let a = Serve::start_node(&prefix, 1, "node-a", &[]);
    let b = Serve::start_node(&prefix, 1, "node-b", &[]);
    (a, b)
}

/// Waits until `first` (within 60 s), then `second` (within 30 s), sees both nodes in the fleet
/// and is ready; returns the partitions each node owns as `first` and as `second` saw them.
async fn wait_both(
    client: &TestClient,
    first: &Serve,
    second: &Serve,
) -> [BTreeMap<String, BTreeSet<u32>>; 2] {
    let seen_first = wait_fleet(client, first, &BOTH, Duration::from_secs(60)).await;
    let seen_second = wait_fleet(client, second, &BOTH, Duration::from_secs(30)).await;
    [seen_first, seen_second]
}

async fn vote_once(client: &TestClient, url: &str, election: &str, voter: u64) -> Attempt {
    let option = option_of(voter);
    let seen = client.vote_seen(url, election, voter, option).await;
    Attempt {
        voter,
        option,
        at: Instant::now(),
        status: seen.status,
        partition: seen.partition,
        offset: seen.offset,
    }
}

/// Voters arriving at `rate` per second, each retrying (every 100 ms, like a client honouring a
/// short Retry-After) until `202` or `409` or `until`, at most 64 at once, all through `url`;
/// every attempt is recorded.
async fn voters_until_answered(
    client: &TestClient,
    url: &str,
    election: &str,
    voters: std::ops::Range<u64>,
    rate: u64,
    until: Instant,
    attempts: Arc<Mutex<Vec<Attempt>>>,
) {
    let urls = Arc::new(std::sync::RwLock::new(vec![url.to_owned()]));
    let lanes = Lanes {
        at_once: 64,
        rate,
        until,
    };
    voters_through_the_fleet(client, urls, election, voters, lanes, attempts).await
}

/// Every `202` is in the committed log exactly once, where it said, with its option; no voter
/// is in the log twice, nor acknowledged twice.
fn assert_every_202_once(log: &[Committed], election: &str, attempts: &[Attempt]) {
    let accepted: Vec<&Attempt> = attempts.iter().filter(|a| a.status == Some(202)).collect();
    assert_acks_in_log(
        log,
        election,
        accepted.iter().map(|a| Ack {
            voter: a.voter,
            option: a.option,
            partition: a.partition,
            offset: a.offset,
        }),
    );
    let voters: BTreeSet<u64> = accepted.iter().map(|a| a.voter).collect();
    assert_eq!(
        voters.len(),
        accepted.len(),
        "a voter was acknowledged twice"
    );
}

/// Waits until `serve` shows election `id` open (it learns elections from the elections topic).
/// The log without terminal colour codes (tracing colours its fields).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn signal(serve: &Serve, sig: &str) {
    let st = std::process::Command::new("kill")
        .args([sig, &serve.pid().to_string()])
        .status()
        .unwrap();
    assert!(st.success(), "kill {sig}");
}

/// Waits until every thread of `serve` is stopped (state `T` in `/proc/<pid>/task/*/stat`).
fn wait_stopped(serve: &Serve) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let tasks = format!("/proc/{}/task", serve.pid());
    loop {
        let all_stopped = std::fs::read_dir(&tasks)
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("stat")).ok())
            .all(|stat| {
                // The state follows the parenthesised command name.
                stat.rsplit_once(") ")
                    .is_some_and(|(_, rest)| rest.starts_with('T'))
            });
        if all_stopped {
            return;
        }
        assert!(Instant::now() < deadline, "{} did not stop", serve.node);
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn two_nodes_divide_the_partitions_and_each_takes_every_vote() {
    let (a, b) = two_nodes("fleet-split");
    each_node_takes_every_vote(&a, &b);
}

/// Two nodes of one fleet: the partitions divided, every vote through either node `202` once,
/// half of them forwarded to their owner, a second vote through the other node `409`.
fn each_node_takes_every_vote(a: &Serve, b: &Serve) {
    runtime().block_on(async {
        let client = TestClient::http1();
        let [owners, _] = wait_both(&client, a, b).await;
        assert_eq!(owners.len(), 2, "each node owns partitions: {owners:?}");
        open_election(&client, a, "split", &OPTIONS, 0).await;
        wait_open(&client, b, "split").await;
        // Every voter through a, every other through b: half of each node's votes are its
        // peer's to commit.
        let mut attempts = Vec::new();
        for voter in 0..200u64 {
            let node = if voter % 2 == 0 { a } else { b };
            attempts.push(vote_once(&client, &node.url(""), "split", voter).await);
        }
        for at in &attempts {
            assert_eq!(at.status, Some(202), "voter {}", at.voter);
            let p = partition_of(VoterId(at.voter), PARTITIONS);
            assert_eq!(at.partition, Some(u64::from(p)));
        }
        // A second vote of each voter, through the other node: already voted.
        for voter in 0..20u64 {
            let node = if voter % 2 == 0 { b } else { a };
            let again = vote_once(&client, &node.url(""), "split", voter).await;
            assert_eq!(again.status, Some(409), "voter {voter}");
        }
        let log = committed_votes(&a.names(), PARTITIONS);
        assert_every_202_once(&log, "split", &attempts);
        assert_eq!(log.len(), 200);
        // Each record was written by the node owning its partition.
        for c in &log {
            let owner = owners
                .iter()
                .find(|(_, ps)| ps.contains(&c.partition))
                .map(|(n, _)| n.as_str());
            assert_eq!(
                Some(c.record.node.as_str()),
                owner,
                "partition {}",
                c.partition
            );
        }
        // Metrics are published once a second: wait for the count, bounded.
        common::eventually(
            Duration::from_secs(60),
            Duration::from_millis(200),
            async || {
                let mut received = 0;
                for node in [a, b] {
                    let forward = common::serve::metric(node, "votes_forward_total").await;
                    received += forward.get("what=\"received\"").copied().unwrap_or(0);
                }
                if received >= 100 {
                    return Ok(());
                }
                Err(format!(
                    "half the votes crossed between the nodes: {received}"
                ))
            },
        )
        .await;
        wait_live_totals(&client, &[a, b], "split", &log_tallies(&log, "split")).await;
    });
}

#[test]
fn kill_9_of_a_node_moves_its_partitions_and_no_acknowledged_vote_is_lost_or_doubled() {
    let (mut a, b) = two_nodes("fleet-kill");
    runtime().block_on(async {
        let client = TestClient::http1();
        let [_, owners] = wait_both(&client, &a, &b).await;
        let a_parts = owners.get("node-a").cloned().unwrap_or_default();
        assert!(!a_parts.is_empty(), "node-a owns partitions: {owners:?}");
        open_election(&client, &b, "kill", &OPTIONS, 0).await;

        // Voters reach the survivor only; half of them belong to node-a's partitions and go
        // through the forwarding link until node-a dies.
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let until = Instant::now() + Duration::from_secs(90);
        let load = tokio::spawn({
            let (client, url, attempts) = (client.clone(), b.url(""), attempts.clone());
            async move {
                voters_until_answered(&client, &url, "kill", 0..3_000, 200, until, attempts).await
            }
        });
        // node-a dies once it has acknowledged some of its voters' votes.
        let of_a = |a: &Attempt| a_parts.contains(&partition_of(VoterId(a.voter), PARTITIONS));
        common::eventually(
            Duration::from_secs(60),
            Duration::from_millis(50),
            async || {
                let served = attempts
                    .lock()
                    .await
                    .iter()
                    .filter(|x| of_a(x) && x.status == Some(202))
                    .count();
                if served >= 50 {
                    return Ok(());
                }
                Err(format!("node-a served {served} of its voters"))
            },
        )
        .await;
        let killed = Instant::now();
        a.kill();
        let owners = wait_fleet(&client, &b, &[("node-b", 1)], Duration::from_secs(60)).await;
        let moved = killed.elapsed();
        assert_eq!(owners["node-b"].len(), PARTITIONS as usize);
        load.await.unwrap();
        let attempts = attempts.lock().await.clone();

        let first_after = attempts
            .iter()
            .filter(|x| of_a(x) && x.at > killed && x.status == Some(202))
            .map(|x| x.at)
            .min()
            .expect("node-a's voters were served again");
        let refused = attempts
            .iter()
            .filter(|x| of_a(x) && x.at > killed && x.status != Some(202) && x.status != Some(409))
            .count();
        eprintln!(
            "failover: node-a's partitions moved {moved:?} after the kill; its voters were \
             without service for {:?} ({refused} attempts refused meanwhile)",
            first_after - killed
        );
        // Every voter got through in the end: a 202, or a 409 for a vote that committed
        // but whose answer was lost with node-a.
        let done: BTreeSet<u64> = attempts
            .iter()
            .filter(|x| matches!(x.status, Some(202 | 409)))
            .map(|x| x.voter)
            .collect();
        assert_eq!(done.len(), 3_000, "every voter was answered in the end");
        let log = committed_votes(&b.names(), PARTITIONS);
        assert_every_202_once(&log, "kill", &attempts);
        assert_eq!(log.len(), 3_000, "every voter exactly once in the log");
        wait_live_totals(&client, &[&b], "kill", &log_tallies(&log, "kill")).await;
    });
}

/// Voters waiting for an answer at once in the rolling restart: enough that those retrying a
/// partition without an owner never hold up the voters of the others (100/s over a 12 s window
/// is 1,200).
const VOTERS_AT_ONCE: usize = 4_096;

/// How voters arrive: `rate` per second, at most `at_once` waiting for an answer, retrying
/// until `until`.
#[derive(Clone, Copy)]
struct Lanes {
    at_once: usize,
    rate: u64,
    until: Instant,
}

/// Voters arriving at `rate` per second through whichever nodes `urls` holds now (a
/// balancer's view: a node being restarted is taken out, its successor put in), each retrying
/// on the next node every 100 ms until `202` or `409` or `until`; every attempt is recorded.
async fn voters_through_the_fleet(
    client: &TestClient,
    urls: Arc<std::sync::RwLock<Vec<String>>>,
    election: &str,
    voters: std::ops::Range<u64>,
    Lanes {
        at_once,
        rate,
        until,
    }: Lanes,
    attempts: Arc<Mutex<Vec<Attempt>>>,
) {
    let gate = Arc::new(Semaphore::new(at_once));
    let mut tasks = Vec::new();
    let every = Duration::from_micros(1_000_000 / rate);
    for voter in voters {
        tokio::time::sleep(every).await;
        let permit = gate.clone().acquire_owned().await.unwrap();
        let (client, urls, election, attempts) = (
            client.clone(),
            urls.clone(),
            election.to_owned(),
            attempts.clone(),
        );
        tasks.push(tokio::spawn(async move {
            for turn in 0u64.. {
                let url = {
                    let urls = urls.read().unwrap();
                    urls[((voter + turn) % urls.len() as u64) as usize].clone()
                };
                let a = vote_once(&client, &url, &election, voter).await;
                let done = matches!(a.status, Some(202 | 409));
                attempts.lock().await.push(a);
                if done || Instant::now() > until {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            drop(permit);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// One node's turn in a rolling restart, as the test saw it.
struct Restart {
    node: String,
    /// SIGTERM sent.
    stopped_at: Instant,
    /// The process exited.
    exited_at: Instant,
    /// The restarted node ready and the fleet whole again.
    back_at: Instant,
    /// Who owned each partition before the SIGTERM, and after the node was back.
    owners_before: BTreeMap<u32, String>,
    owners_after: BTreeMap<u32, String>,
}

/// A partition's longest time without any `202` around one restart, and what its voters were
/// answered meanwhile.
struct Window {
    partition: u32,
    /// Last `202` before the window and first one after (or the edges of the run).
    from: Instant,
    to: Instant,
    /// Answers inside the window, by status (`None`: no answer: refused, reset, timed out).
    answers: BTreeMap<Option<u16>, usize>,
}

/// Per partition, the longest stretch between two of its `202`s that overlaps `restart` (from
/// its SIGTERM to the node being back), within `from`..`to`.
fn windows_of(attempts: &[Attempt], restart: &Restart, from: Instant, to: Instant) -> Vec<Window> {
    (0..PARTITIONS)
        .map(|p| {
            let of_p = || {
                attempts
                    .iter()
                    .filter(move |a| partition_of(VoterId(a.voter), PARTITIONS) == p)
            };
            let mut acks: Vec<Instant> = of_p()
                .filter(|a| a.status == Some(202))
                .map(|a| a.at.clamp(from, to))
                .collect();
            acks.extend([from, to]);
            acks.sort();
            let (gap_from, gap_to) = acks
                .windows(2)
                .map(|w| (w[0], w[1]))
                .filter(|(a, b)| *b >= restart.stopped_at && *a <= restart.back_at)
                .max_by_key(|(a, b)| *b - *a)
                .unwrap_or((restart.stopped_at, restart.stopped_at));
            let mut answers = BTreeMap::new();
            for a in of_p().filter(|a| a.at > gap_from && a.at < gap_to) {
                *answers.entry(a.status).or_default() += 1;
            }
            Window {
                partition: p,
                from: gap_from,
                to: gap_to,
                answers,
            }
        })
        .collect()
}

/// The unavailability each restart caused, one line per partition: how long it went without a
/// `202`, when, why (whose restart, who owned it before and after) and what its voters were
/// answered meanwhile. Returns the longest window of each partition over all restarts.
fn report_windows(
    attempts: &[Attempt],
    restarts: &[Restart],
    started: Instant,
    restarted: Instant,
) -> BTreeMap<u32, Duration> {
    let at = |t: Instant| format!("+{:.2}s", (t - started).as_secs_f64());
    let mut longest: BTreeMap<u32, Duration> = BTreeMap::new();
    for r in restarts {
        eprintln!(
            "rolling restart: {} got SIGTERM at {}, exited at {}, was serving again at {}",
            r.node,
            at(r.stopped_at),
            at(r.exited_at),
            at(r.back_at)
        );
        for w in windows_of(attempts, r, started, restarted) {
            let owner = |m: &BTreeMap<u32, String>| {
                m.get(&w.partition)
                    .cloned()
                    .unwrap_or_else(|| "nobody".into())
            };
            let (before, after) = (owner(&r.owners_before), owner(&r.owners_after));
            let cause = if before == r.node {
                format!("its owner {before} was restarting (owner after: {after})")
            } else {
                format!("owned by {before}, which was not restarting (owner after: {after})")
            };
            let answers: Vec<String> = w
                .answers
                .iter()
                .map(|(status, n)| match status {
                    Some(s) => format!("{n}x {s}"),
                    None => format!("{n}x no answer"),
                })
                .collect();
            let length = w.to - w.from;
            eprintln!(
                "rolling restart: partition {} without a 202 for {:.2}s ({} to {}); cause: {cause}; answers meanwhile: {}",
                w.partition,
                length.as_secs_f64(),
                at(w.from),
                at(w.to),
                if answers.is_empty() {
                    "none".to_owned()
                } else {
                    answers.join(", ")
                },
            );
            let l = longest.entry(w.partition).or_default();
            *l = (*l).max(length);
        }
    }
    longest
}

/// Partition → owning node, from `wait_fleet`'s node → partitions.
fn owner_of(owners: &BTreeMap<String, BTreeSet<u32>>) -> BTreeMap<u32, String> {
    owners
        .iter()
        .flat_map(|(node, ps)| ps.iter().map(move |p| (*p, node.clone())))
        .collect()
}

#[test]
fn a_rolling_restart_under_load_loses_no_acknowledged_vote() {
    let (a, b) = two_nodes("fleet-rolling");
    let prefix = a.prefix.clone();
    runtime().block_on(async {
        let client = TestClient::http1();
        let [_, seen_by_b] = wait_both(&client, &a, &b).await;
        let mut owners = owner_of(&seen_by_b);
        open_election(&client, &a, "rolling", &OPTIONS, 0).await;
        wait_open(&client, &b, "rolling").await;

        let urls = Arc::new(std::sync::RwLock::new(vec![a.url(""), b.url("")]));
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let voters = 0..4_000;
        let until = Instant::now() + Duration::from_secs(120);
        let load = tokio::spawn({
            let (client, urls, attempts, voters) = (
                client.clone(),
                urls.clone(),
                attempts.clone(),
                voters.clone(),
            );
            async move {
                let lanes = Lanes {
                    at_once: VOTERS_AT_ONCE,
                    rate: 100,
                    until,
                };
                voters_through_the_fleet(&client, urls, "rolling", voters, lanes, attempts).await
            }
        });
        // One node after the other, the way an operator upgrades a fleet: take it out of the
        // balancer, stop it (SIGTERM), start it again under the same node id, put it back,
        // wait until the fleet has every partition served by both nodes again.
        let started = Instant::now();
        let mut nodes = [Some(a), Some(b)];
        let mut restarts = Vec::new();
        for i in 0..nodes.len() {
            tokio::time::sleep(Duration::from_secs(3)).await;
            let mut leaving = nodes[i].take().expect("running");
            let node = leaving.node.clone();
            let other = nodes[1 - i].as_ref().expect("running").url("");
            *urls.write().unwrap() = vec![other];
            // Stopping and starting block: on a thread of their own, so the voters go on.
            let stopped_at = Instant::now();
            let (prefix, name) = (prefix.clone(), node.clone());
            let restart = std::thread::spawn(move || {
                let status = leaving.stop(Duration::from_secs(60));
                let exited_at = Instant::now();
                (status, exited_at, Serve::start_node(&prefix, 1, &name, &[]))
            });
            while !restart.is_finished() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let (status, exited_at, back) = restart.join().expect("the restart thread");
            assert!(
                status.success(),
                "{node} exits cleanly on SIGTERM: {status}"
            );
            let after = owner_of(&wait_fleet(&client, &back, &BOTH, Duration::from_secs(60)).await);
            restarts.push(Restart {
                node,
                stopped_at,
                exited_at,
                back_at: Instant::now(),
                owners_before: std::mem::replace(&mut owners, after.clone()),
                owners_after: after,
            });
            nodes[i] = Some(back);
            *urls.write().unwrap() = nodes.iter().flatten().map(|n| n.url("")).collect();
        }
        let [Some(first), Some(second)] = &nodes else {
            unreachable!("both nodes run again")
        };
        let restarted = Instant::now();
        load.await.unwrap();
        let attempts = attempts.lock().await.clone();

        // Reported, not asserted: the window depends on the machine's speed (docs/operations.md,
        // "Rolling restart", has the figure measured on one).
        let longest = report_windows(&attempts, &restarts, started, restarted);
        eprintln!("rolling restart: longest window without a 202, per partition: {longest:?}");
        let done: BTreeSet<u64> = attempts
            .iter()
            .filter(|x| matches!(x.status, Some(202 | 409)))
            .map(|x| x.voter)
            .collect();
        assert_eq!(
            done.len(),
            voters.clone().count(),
            "every voter was answered in the end"
        );
        let log = committed_votes(&first.names(), PARTITIONS);
        assert_every_202_once(&log, "rolling", &attempts);
        assert_eq!(
            log.len(),
            voters.count(),
            "every voter exactly once in the log"
        );
        wait_live_totals(
            &client,
            &[first, second],
            "rolling",
            &log_tallies(&log, "rolling"),
        )
        .await;
    });
}

#[test]
fn a_stopped_node_loses_its_partitions_and_resumes_as_a_fenced_zombie() {
    let (a, b) = two_nodes("fleet-zombie");
    runtime().block_on(async {
        let client = TestClient::http1();
        let [_, owners] = wait_both(&client, &b, &a).await;
        let a_parts = owners.get("node-a").cloned().unwrap_or_default();
        open_election(&client, &a, "zombie", &OPTIONS, 0).await;
        wait_open(&client, &b, "zombie").await;
        let of_a = |v: &u64| a_parts.contains(&partition_of(VoterId(*v), PARTITIONS));

        // Load on node-a's own partitions, through node-a, while it is stopped: its shards
        // have votes queued and in flight when the process freezes.
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let a_voters: Vec<u64> = (0..100_000u64).filter(of_a).take(1_500).collect();
        // Stops sending at SIGSTOP: what node-a receives from then on is only what was
        // already on its way.
        let stop_sending = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let load = tokio::spawn({
            let (client, url, attempts) = (client.clone(), a.url(""), attempts.clone());
            let voters = a_voters.clone();
            let stop_sending = stop_sending.clone();
            async move {
                let gate = Arc::new(Semaphore::new(32));
                let mut tasks = Vec::new();
                for voter in voters {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    if stop_sending.load(std::sync::atomic::Ordering::Acquire) {
                        break;
                    }
                    let permit = gate.clone().acquire_owned().await.unwrap();
                    let (client, url, attempts) = (client.clone(), url.clone(), attempts.clone());
                    tasks.push(tokio::spawn(async move {
                        let at = vote_once(&client, &url, "zombie", voter).await;
                        attempts.lock().await.push(at);
                        drop(permit);
                    }));
                }
                for t in tasks {
                    t.await.unwrap();
                }
            }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        stop_sending.store(true, std::sync::atomic::Ordering::Release);
        signal(&a, "-STOP");
        // The stop counts from when every thread of node-a is frozen: a vote received before
        // that (one already on its way) is not late.
        wait_stopped(&a);
        let stopped_ms = unix_ms();
        // The group gives node-a's partitions to node-b once node-a's session expires; node-b
        // fences node-a's producers and recovers them.
        let moved = Instant::now();
        wait_fleet(&client, &b, &[("node-b", 1)], Duration::from_secs(60)).await;
        eprintln!(
            "zombie: partitions moved {:?} after SIGSTOP",
            moved.elapsed()
        );
        // node-b takes node-a's voters while node-a is frozen.
        let fresh: Vec<u64> = (200_000..300_000u64).filter(of_a).take(50).collect();
        let mut later = Vec::new();
        for &v in &fresh {
            let at = vote_once(&client, &b.url(""), "zombie", v).await;
            assert_eq!(at.status, Some(202), "node-b takes voter {v}");
            later.push(at);
        }
        signal(&a, "-CONT");
        load.await.unwrap();
        let mut attempts = attempts.lock().await.clone();

        // Once resumed, node-a learns it lost its partitions (fenced commit or lost
        // assignment) and rejoins the fleet.
        wait_both(&client, &a, &b).await;
        // Nothing was sent to node-a since the stop, until now.
        let quiet_until_ms = unix_ms();
        let log_a = strip_ansi(&a.log_text());
        assert!(
            log_a.contains("fenced") || log_a.contains("lost=true"),
            "node-a never noticed it was replaced:\n{log_a}"
        );
        let log = committed_votes(&b.names(), PARTITIONS);
        // None of the zombie's late votes committed: node-a wrote nothing it received after the
        // stop (the votes already on their way reached it on resuming, when it was fenced).
        let late_by_a: Vec<&Committed> = log
            .iter()
            .filter(|c| c.record.node == "node-a")
            .filter(|c| (stopped_ms..quiet_until_ms).contains(&c.record.received_at_ms))
            .collect();
        let counts = attempts.iter().fold(BTreeMap::new(), |mut m, x| {
            *m.entry(x.status).or_insert(0usize) += 1;
            m
        });
        eprintln!("zombie: answers to the load through node-a: {counts:?}");
        assert!(
            late_by_a.is_empty(),
            "the zombie committed {} late votes: {:?}",
            late_by_a.len(),
            late_by_a.first()
        );
        attempts.extend(later);
        assert_every_202_once(&log, "zombie", &attempts);
        // Every voter refused (503 or no answer) is absent unless it got a 202 elsewhere.
        let accepted: BTreeSet<u64> = attempts
            .iter()
            .filter(|x| x.status == Some(202))
            .map(|x| x.voter)
            .collect();
        let in_log: BTreeSet<u64> = log.iter().map(|c| c.record.voter.0).collect();
        for x in attempts.iter().filter(|x| x.status == Some(503)) {
            if !accepted.contains(&x.voter) {
                assert!(
                    !in_log.contains(&x.voter),
                    "voter {} was refused but its vote committed",
                    x.voter
                );
            }
        }
        // Both nodes serve again: fresh voters through the resumed node.
        for v in 400_000..400_050u64 {
            let at = vote_once(&client, &a.url(""), "zombie", v).await;
            assert_eq!(at.status, Some(202), "voter {v} through the resumed node-a");
        }
        let log = committed_votes(&b.names(), PARTITIONS);
        let tallies = log_tallies(&log, "zombie");
        wait_live_totals(&client, &[&a, &b], "zombie", &tallies).await;
    });
}

/// A test's end of a plaintext forwarding link: the owner's challenge read, a hello sent.
struct RawLink {
    stream: std::net::TcpStream,
    challenge: votes_core::forward::Challenge,
    hello: votes_core::forward::Hello,
    buf: Vec<u8>,
}

impl RawLink {
    /// Connects to `internal`, reads the owner's challenge, sends `hello(challenge)`.
    fn open(
        internal: std::net::SocketAddr,
        hello: &dyn Fn(&votes_core::forward::Challenge) -> votes_core::forward::Hello,
    ) -> RawLink {
        use std::io::{Read, Write};
        use votes_core::forward::{Frame, decode_frame};
        let mut stream = std::net::TcpStream::connect(internal).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 512];
        let challenge = loop {
            if let Some((frame, used)) = decode_frame(&buf).unwrap() {
                buf.drain(..used);
                match frame {
                    Frame::Challenge(c) => break c,
                    other => panic!("the owner opened with {other:?}"),
                }
            }
            let n = stream.read(&mut chunk).unwrap();
            assert!(n > 0, "closed before the challenge");
            buf.extend_from_slice(&chunk[..n]);
        };
        let hello = hello(&challenge);
        stream
            .write_all(&Frame::Hello(hello.clone()).encode())
            .unwrap();
        RawLink {
            stream,
            challenge,
            hello,
            buf,
        }
    }

    /// The seal of the edge's end of this link under `key`.
    fn seal(&self, key: &[u8]) -> votes_core::forward::LinkSeal {
        use votes_core::forward::{LinkEnd, LinkSeal};
        LinkSeal::new(key, LinkEnd::Edge, &self.challenge, &self.hello)
    }

    fn send(&mut self, bytes: &[u8]) {
        use std::io::Write;
        // A link the owner closed may refuse the write: what it did is read next.
        let _ = self.stream.write_all(bytes);
    }

    /// Whether the owner keeps the link open: an admitted link stays silent (or answers what
    /// it was sent, which `seal` opens), a refused one is closed at once.
    fn stays_open(&mut self, seal: Option<&mut votes_core::forward::LinkSeal>) -> bool {
        use std::io::Read;
        self.stream
            .set_read_timeout(Some(Duration::from_millis(1_500)))
            .unwrap();
        let mut seal = seal;
        let mut chunk = [0u8; 512];
        loop {
            if let Some(seal) = seal.as_deref_mut()
                && let Some((frame, used)) = seal.open(&self.buf).unwrap()
            {
                assert!(
                    matches!(frame, votes_core::forward::Frame::Answer(_)),
                    "{frame:?}"
                );
                self.buf.drain(..used);
                continue;
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => return false,
                Ok(n) => {
                    assert!(seal.is_some(), "the owner sent something unasked");
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return false,
                Err(e) => {
                    assert!(
                        matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ),
                        "{e}"
                    );
                    return true;
                }
            }
        }
    }
}

impl RawLink {
    /// The next `n` answers the owner sends on this link, opened with `seal`, by vote id. The
    /// read timeout only bounds a test whose owner never answers.
    fn answers(
        &mut self,
        seal: &mut votes_core::forward::LinkSeal,
        n: usize,
    ) -> BTreeMap<u64, votes_core::VoteOutcome> {
        use std::io::Read;
        use votes_core::forward::Frame;
        self.stream
            .set_read_timeout(Some(Duration::from_secs(120)))
            .unwrap();
        let mut got = BTreeMap::new();
        let mut chunk = [0u8; 512];
        while got.len() < n {
            if let Some((frame, used)) = seal.open(&self.buf).unwrap() {
                self.buf.drain(..used);
                let Frame::Answer(a) = frame else {
                    panic!("the owner sent {frame:?}");
                };
                assert!(
                    got.insert(a.id, a.outcome).is_none(),
                    "vote {} answered twice",
                    a.id
                );
                continue;
            }
            let read = self.stream.read(&mut chunk).expect("the owner answers");
            assert!(
                read > 0,
                "the owner closed the link; answers so far: {got:?}"
            );
            self.buf.extend_from_slice(&chunk[..read]);
        }
        got
    }
}

/// Connects to `internal`, reads the owner's challenge, sends `hello(challenge)`; whether the
/// link stays open.
fn hello_attempt(
    internal: std::net::SocketAddr,
    hello: &dyn Fn(&votes_core::forward::Challenge) -> votes_core::forward::Hello,
) -> bool {
    RawLink::open(internal, hello).stays_open(None)
}

/// A one-node fleet on a fresh prefix, in the fleet map (whose addresses its internal listener
/// admits) and ready; its internal listener's address.
fn lone_node(test: &str) -> (Serve, std::net::SocketAddr) {
    let prefix = common::fresh_prefix(test, PARTITIONS);
    let a = Serve::start_node(&prefix, 1, "node-a", &[]);
    let internal = a.internal.expect("a fleet node has an internal listener");
    runtime().block_on(async {
        let client = TestClient::http1();
        wait_fleet(&client, &a, &[("node-a", 1)], Duration::from_secs(60)).await;
    });
    (a, internal)
}

fn forward_key() -> Vec<u8> {
    votes_core::forward::derive_key(common::serve::FORWARD_KEY.as_bytes())
}

/// Waits until `serve`'s forwarding counter `what` reaches `at_least` (metrics are published
/// once a second), bounded.
async fn wait_forward_count(serve: &Serve, what: &str, at_least: u64) {
    common::eventually(
        Duration::from_secs(60),
        Duration::from_millis(200),
        async || {
            let forward = common::serve::metric(serve, "votes_forward_total").await;
            let n = forward
                .get(&format!("what=\"{what}\""))
                .copied()
                .unwrap_or(0);
            if n >= at_least {
                return Ok(());
            }
            Err(format!(
                "votes_forward_total{{what=\"{what}\"}} stays below {at_least}: {forward:?}"
            ))
        },
    )
    .await
}

/// Waits until `serve` counted `exactly` of `what` in `votes_forward_total`, then asserts it
/// counted no more; every counter of the series as read then.
async fn assert_forward_count(serve: &Serve, what: &str, exactly: u64) -> HashMap<String, u64> {
    wait_forward_count(serve, what, exactly).await;
    let forward = common::serve::metric(serve, "votes_forward_total").await;
    assert_eq!(
        forward.get(&format!("what=\"{what}\"")),
        Some(&exactly),
        "{forward:?}"
    );
    forward
}

/// The forwarding link admits only a peer that signs the owner's fresh challenge with the fleet
/// key: a hello recorded from another link, made for another listener, or signed with another
/// key (the voter-token key included) is refused.
#[test]
fn the_internal_link_refuses_replayed_or_foreign_hellos() {
    use votes_core::forward::{Challenge, Hello};
    let (a, internal) = lone_node("fleet-hello");
    let key = forward_key();
    let attempt = |hello: &dyn Fn(&Challenge) -> Hello| hello_attempt(internal, hello);
    assert!(
        attempt(&|c| Hello::sign(&key, "node-x", [1; 16], c)),
        "a signed hello is admitted"
    );
    let recorded = |c: &Challenge| {
        let old = Challenge {
            nonce: [9; 16],
            ..c.clone()
        };
        Hello::sign(&key, "node-x", [1; 16], &old)
    };
    assert!(!attempt(&recorded), "a replayed hello is refused");
    let for_another_listener = |c: &Challenge| {
        let relayed = Challenge {
            node: "node-b".into(),
            ..c.clone()
        };
        Hello::sign(&key, "node-x", [1; 16], &relayed)
    };
    assert!(
        !attempt(&for_another_listener),
        "a hello made for another node's listener is refused"
    );
    assert!(
        !attempt(&|c| Hello::sign(b"another fleet's key", "node-x", [1; 16], c)),
        "a hello under another key is refused"
    );
    let token_key = votes_core::forward::derive_key(common::serve::TOKEN_KEY.as_bytes());
    assert!(
        !attempt(&|c| Hello::sign(&token_key, "node-x", [1; 16], c)),
        "the voter-token key opens no link"
    );
    runtime().block_on(async {
        assert_forward_count(&a, "rejected_links", 4).await;
    });
}

/// After the hello, every frame on a plaintext link carries a MAC over its direction, its
/// sequence number and its body under a key of that link alone: a frame forged without the
/// key, replayed on the link or from another one, reflected (sealed as the owner's) or
/// modified closes the link, and each is counted. A well-sealed vote is answered.
#[test]
fn the_internal_link_refuses_forged_replayed_reflected_or_modified_frames() {
    use votes_core::forward::{ForwardedVote, Frame, Hello, LinkEnd, LinkSeal};
    use votes_core::{ElectionId, ErrorCode, OptionId, VoteIntent, VoteOutcome};
    let (a, internal) = lone_node("fleet-frames");
    let key = forward_key();
    let vote = |id: u64| {
        let voter = 7 + id;
        Frame::Vote(ForwardedVote {
            id,
            partition: partition_of(VoterId(voter), PARTITIONS),
            vote: VoteIntent {
                election: ElectionId::new("no-such-election").unwrap(),
                voter: VoterId(voter),
                option: OptionId::new("red").unwrap(),
                received_at_ms: unix_ms(),
                nonce: [id as u8; 16],
            },
        })
    };
    let open = || RawLink::open(internal, &|c| Hello::sign(&key, "node-x", [1; 16], c));
    let sealed = |seal: &mut LinkSeal, frame: &Frame| {
        let mut out = Vec::new();
        seal.seal_into(frame, &mut out);
        out
    };

    // A well-sealed vote is answered and the link stays open (the control). Its election does
    // not exist: the owner holds it for its view, then refuses it as the edge would.
    let mut link = open();
    let mut seal = link.seal(&key);
    let first = sealed(&mut seal, &vote(1));
    link.send(&first);
    let mut opener = LinkSeal::new(&key, LinkEnd::Edge, &link.challenge, &link.hello);
    assert_eq!(
        link.answers(&mut opener, 1),
        BTreeMap::from([(1, VoteOutcome::Rejected(ErrorCode::NotFound))]),
        "a sealed vote is taken, and refused: its election does not exist"
    );
    assert!(link.stays_open(Some(&mut opener)), "the link stays open");
    // Replayed on the same link.
    link.send(&first);
    assert!(!link.stays_open(Some(&mut opener)), "a replayed frame");
    // Replayed from that link onto a new one.
    let mut link = open();
    link.send(&first);
    assert!(!link.stays_open(None), "a frame from another link");
    // Forged: a plain frame, no seal.
    let mut link = open();
    link.send(&vote(2).encode());
    assert!(!link.stays_open(None), "an unsealed frame");
    // Modified: one bit of a sealed vote's body.
    let mut link = open();
    let mut seal = link.seal(&key);
    let mut bytes = sealed(&mut seal, &vote(3));
    bytes[20] ^= 1;
    link.send(&bytes);
    assert!(!link.stays_open(None), "a modified frame");
    // Reflected: a frame sealed as the owner's own direction.
    let mut link = open();
    let mut mirror = LinkSeal::new(&key, LinkEnd::Owner, &link.challenge, &link.hello);
    link.send(&sealed(&mut mirror, &vote(4)));
    assert!(!link.stays_open(None), "a reflected frame");
    runtime().block_on(async {
        let forward = assert_forward_count(&a, "refused_frames", 5).await;
        assert_eq!(forward.get("what=\"received\""), Some(&1), "{forward:?}");
    });
}

/// Creates election `id` through `serve` and leaves it a draft.
async fn create_draft(client: &TestClient, serve: &Serve, id: &str) {
    let options: Vec<serde_json::Value> = OPTIONS
        .iter()
        .map(|o| serde_json::json!({"id": o, "label": o}))
        .collect();
    let (s, body) = client
        .admin(
            "POST",
            &serve.admin_url("/admin/v1/elections"),
            serde_json::json!({"id": id, "title": id, "options": options}),
        )
        .await;
    assert_eq!(s, 201, "{body}");
}

/// A voter, from `from` on, whose partition is in `partitions`.
fn voter_in(partitions: &BTreeSet<u32>, from: u64) -> u64 {
    (from..)
        .find(|v| partitions.contains(&partition_of(VoterId(*v), PARTITIONS)))
        .unwrap()
}

/// The owner takes no peer's word for a forwarded vote (docs/design.md §7): over a real link
/// with the fleet's key, a vote for an election that does not exist or is a draft is refused
/// `404 not_found` as the edge refuses it (once the owner's view had its time to catch up), an
/// option the election lacks `422 invalid_option`, a partition that is not the voter's `400
/// invalid_request` and one the owner does not own `503 unavailable`; a valid vote commits.
/// And a vote for an election the owner hears of late (opened through another node while the
/// vote waits at the owner) is held, not refused, and commits once the owner's view has it.
#[test]
fn the_owner_revalidates_the_election_option_and_routing_of_every_forwarded_vote() {
    use votes_core::forward::{ForwardedVote, Frame, Hello};
    use votes_core::{ElectionId, ErrorCode, OptionId, VoteIntent, VoteOutcome};
    let prefix = common::fresh_prefix("fleet-revalidate", PARTITIONS);
    let a = Serve::start_node(&prefix, 1, "node-a", &[]);
    // node-b holds a vote for as long as the test takes to open its election: the test then
    // never races the hold's bound.
    let b = Serve::start_node(
        &prefix,
        1,
        "node-b",
        &[("VOTES_TEST_FORWARD_HOLD_MS", "600000")],
    );
    let client = TestClient::http1();
    let owners = runtime().block_on(async {
        let [owners, _] = wait_both(&client, &a, &b).await;
        open_election(&client, &a, "running", &OPTIONS, 0).await;
        create_draft(&client, &a, "drafted").await;
        create_draft(&client, &a, "late").await;
        wait_open(&client, &a, "running").await;
        owners
    });
    assert_eq!(owners.len(), 2, "each node owns partitions: {owners:?}");
    let key = forward_key();
    let vote = |id: u64, election: &str, voter: u64, option: &str, partition: u32| {
        Frame::Vote(ForwardedVote {
            id,
            partition,
            vote: VoteIntent {
                election: ElectionId::new(election).unwrap(),
                voter: VoterId(voter),
                option: OptionId::new(option).unwrap(),
                received_at_ms: unix_ms(),
                nonce: [id as u8; 16],
            },
        })
    };
    let routed = |id: u64, election: &str, voter: u64, option: &str| {
        vote(
            id,
            election,
            voter,
            option,
            partition_of(VoterId(voter), PARTITIONS),
        )
    };
    let link_to = |serve: &Serve| {
        let internal = serve
            .internal
            .expect("a fleet node has an internal listener");
        let link = RawLink::open(internal, &|c| Hello::sign(&key, "node-x", [1; 16], c));
        let (seal, opener) = (link.seal(&key), {
            use votes_core::forward::{LinkEnd, LinkSeal};
            LinkSeal::new(&key, LinkEnd::Edge, &link.challenge, &link.hello)
        });
        (link, seal, opener)
    };

    let (mine, theirs) = (&owners["node-a"], &owners["node-b"]);
    let valid = voter_in(mine, 1_000);
    let unknown = voter_in(mine, valid + 1);
    let drafted = voter_in(mine, unknown + 1);
    let foreign_option = voter_in(mine, drafted + 1);
    let not_owned = voter_in(theirs, 1_000);
    let misrouted = voter_in(mine, foreign_option + 1);
    let wrong_partition = (partition_of(VoterId(misrouted), PARTITIONS) + 1) % PARTITIONS;
    let (mut link, mut seal, mut opener) = link_to(&a);
    let mut out = Vec::new();
    for frame in [
        routed(1, "running", valid, "red"),
        routed(2, "no-such-election", unknown, "red"),
        routed(3, "drafted", drafted, "red"),
        routed(4, "running", foreign_option, "purple"),
        routed(5, "running", not_owned, "red"),
        vote(6, "running", misrouted, "red", wrong_partition),
    ] {
        seal.seal_into(&frame, &mut out);
    }
    link.send(&out);
    let answers = link.answers(&mut opener, 6);
    assert!(
        matches!(answers[&1], VoteOutcome::Accepted { partition, .. }
            if partition == partition_of(VoterId(valid), PARTITIONS)),
        "a valid vote commits: {answers:?}"
    );
    let refused = |id: u64| match answers[&id] {
        VoteOutcome::Rejected(code) => code,
        accepted => panic!("vote {id} was taken: {accepted:?}"),
    };
    assert_eq!(refused(2), ErrorCode::NotFound, "an unknown election");
    assert_eq!(refused(3), ErrorCode::NotFound, "a draft election");
    assert_eq!(refused(4), ErrorCode::InvalidOption, "an option it lacks");
    assert_eq!(refused(5), ErrorCode::Unavailable, "a partition of node-b");
    assert_eq!(
        refused(6),
        ErrorCode::InvalidRequest,
        "not the voter's partition"
    );

    // Opened through node-a while node-b holds a vote for it: node-b takes the vote once its
    // view has the election open.
    let (mut link, mut seal, mut opener) = link_to(&b);
    let late = voter_in(theirs, not_owned + 1);
    let mut out = Vec::new();
    seal.seal_into(&routed(1, "late", late, "blue"), &mut out);
    link.send(&out);
    runtime().block_on(async {
        wait_forward_count(&b, "held", 1).await;
        let (s, body) = client.admin_post(&a, "/admin/v1/elections/late/open").await;
        assert_eq!(s, 200, "{body}");
    });
    let answers = link.answers(&mut opener, 1);
    assert!(
        matches!(answers[&1], VoteOutcome::Accepted { partition, .. }
            if partition == partition_of(VoterId(late), PARTITIONS)),
        "a vote held for an election opened elsewhere commits: {answers:?}"
    );
    let log = committed_votes(&a.names(), PARTITIONS);
    let committed: BTreeSet<(String, u64)> = log
        .iter()
        .map(|c| (c.record.election.as_str().to_owned(), c.record.voter.0))
        .collect();
    assert_eq!(
        committed,
        BTreeSet::from([("late".to_owned(), late), ("running".to_owned(), valid)]),
        "only the valid votes are in the log"
    );
    runtime().block_on(async {
        let forward = assert_forward_count(&a, "held_refused", 2).await;
        assert_eq!(forward.get("what=\"held\""), Some(&2), "{forward:?}");
    });
}

/// Files of a development fleet PKI for `nodes` on loopback, under a directory of the test.
fn fleet_pki_files(prefix: &str, nodes: usize) -> (std::path::PathBuf, Vec<[String; 2]>) {
    let pki = votes_net::dev_fleet_pki(&vec!["127.0.0.1"; nodes]).unwrap();
    let dir = std::env::temp_dir().join(format!("{prefix}pki"));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let files = pki
        .nodes
        .iter()
        .enumerate()
        .map(|(i, (cert, key))| {
            let (c, k) = (
                dir.join(format!("node{i}.pem")),
                dir.join(format!("node{i}.key")),
            );
            std::fs::write(&c, cert).unwrap();
            std::fs::write(&k, key).unwrap();
            [c.display().to_string(), k.display().to_string()]
        })
        .collect();
    (ca, files)
}

/// Whether a TLS client with `identity` (certificate and key PEM, or none) stays connected to
/// `internal` (TLS 1.3: the owner refuses a client certificate after the client's handshake
/// ends, with an alert on the first read).
fn tls_attempt(
    internal: std::net::SocketAddr,
    ca_pem: &str,
    identity: Option<(&str, &str)>,
) -> bool {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use std::io::Read;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut cfg = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"votes-forward/2".to_vec()];
    let name = rustls::pki_types::ServerName::IpAddress(internal.ip().into());
    let conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
    let tcp = std::net::TcpStream::connect(internal).unwrap();
    tcp.set_read_timeout(Some(Duration::from_millis(1_500)))
        .unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut chunk = [0u8; 64];
    match tls.read(&mut chunk) {
        Ok(0) => false,
        Ok(_) => panic!("the owner sent something unasked"),
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// On mutual TLS (`--internal-tls-*`) the fleet works as on the keyed links, and a peer
/// without a certificate from the fleet's CA cannot connect: none, or one another CA signed.
#[test]
fn on_mutual_tls_the_fleet_forwards_and_refuses_a_peer_without_a_fleet_certificate() {
    let prefix = common::fresh_prefix("fleet-tls", PARTITIONS);
    let (ca, files) = fleet_pki_files(&prefix, 3);
    let node = |name: &str, [cert, key]: &[String; 2]| {
        let env = [
            ("VOTES_INTERNAL_TLS_CERT", cert.as_str()),
            ("VOTES_INTERNAL_TLS_KEY", key.as_str()),
            ("VOTES_INTERNAL_TLS_CA", ca.to_str().unwrap()),
            // The key of the plaintext mode: present, and unused under TLS.
            ("VOTES_FORWARD_KEY", common::serve::FORWARD_KEY),
        ];
        Serve::start_node(&prefix, 1, name, &env)
    };
    let a = node("node-a", &files[0]);
    let b = node("node-b", &files[1]);
    each_node_takes_every_vote(&a, &b);
    let internal = a.internal.expect("a fleet node has an internal listener");
    let ca_pem = std::fs::read_to_string(&ca).unwrap();
    let read = |p: &String| std::fs::read_to_string(p).unwrap();
    let (cert, key) = (read(&files[2][0]), read(&files[2][1]));
    assert!(
        tls_attempt(internal, &ca_pem, Some((&cert, &key))),
        "a peer with a fleet certificate is admitted"
    );
    assert!(
        !tls_attempt(internal, &ca_pem, None),
        "a peer without a certificate is refused"
    );
    let foreign = votes_net::dev_fleet_pki(&["127.0.0.1"]).unwrap();
    let (cert, key) = &foreign.nodes[0];
    assert!(
        !tls_attempt(internal, &ca_pem, Some((cert, key))),
        "a peer whose certificate another CA signed is refused"
    );
    // A plaintext peer gets no challenge: the listener waits for a ClientHello, then closes.
    let mut plain = std::net::TcpStream::connect(internal).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut first = [0u8; 64];
    let got = std::io::Read::read(&mut plain, &mut first);
    assert!(
        matches!(got, Ok(0) | Err(_)),
        "a TLS listener sent a plaintext peer {got:?}"
    );
    runtime().block_on(wait_forward_count(&a, "rejected_links", 3));
}

/// Anyone who reaches `--internal` can open connections: 1,100 silent ones from one address
/// (more than the 1,024 links a core takes) must not keep a real peer out. Connections still in
/// their handshake are bounded in all and per source address; the rest are closed at accept.
#[test]
fn silent_connections_to_the_internal_link_do_not_keep_a_peer_out() {
    use votes_core::forward::Hello;
    const SILENT: usize = 1_100;
    let (a, internal) = lone_node("fleet-silent");
    let key = forward_key();
    runtime().block_on(async {
        let mut silent = Vec::with_capacity(SILENT);
        for _ in 0..SILENT {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind("127.0.0.3:0".parse().unwrap()).unwrap();
            if let Ok(s) = socket.connect(internal).await {
                silent.push(s);
            }
        }
        // The peer speaks from 127.0.0.1 while the silent ones are still held.
        let admitted = tokio::task::spawn_blocking(move || {
            hello_attempt(internal, &|c| Hello::sign(&key, "node-x", [1; 16], c))
        })
        .await
        .unwrap();
        assert!(
            admitted,
            "a peer with a valid hello was kept out by silent connections"
        );
        common::eventually(
            Duration::from_secs(60),
            Duration::from_millis(200),
            async || {
                let forward = common::serve::metric(&a, "votes_forward_total").await;
                let rejected = forward.get("what=\"rejected_links\"").copied().unwrap_or(0);
                if rejected >= (SILENT - 100) as u64 {
                    return Ok(());
                }
                Err(format!(
                    "the silent connections over the bounds are not refused at accept: {forward:?}"
                ))
            },
        )
        .await;
        drop(silent);
    });
}
