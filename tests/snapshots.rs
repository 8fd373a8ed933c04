//! Shard snapshots (issue #10, docs/design.md §3 invariant 3: recovery = latest snapshot + replay of
//! the tail), with the real broker and a real `votes serve`:
//! - a node writes snapshots with `--snapshot-dir`; after `kill -9` the restarted node recovers
//!   every partition from its newest snapshot plus the log after it, and refuses every voter
//!   who had voted (409) while new voters get 202;
//! - a damaged newest snapshot is detected and skipped (an older one, or the whole log, serves)
//!   and the state is the same.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::serve::{Serve, TestClient, metric, open_election};

const PARTITIONS: u32 = 2;
const OPTIONS: [&str; 3] = ["red", "green", "blue"];

fn start(prefix: &str, dir: &Path) -> Serve {
    Serve::start_env(
        prefix,
        1,
        false,
        &[
            ("VOTES_SNAPSHOT_DIR", dir.to_str().unwrap()),
            ("VOTES_SNAPSHOT_EVERY_S", "1"),
        ],
    )
}

/// Votes once for each of `voters`; every answer must be `want`.
async fn vote_all(client: &TestClient, serve: &Serve, voters: std::ops::Range<u64>, want: u16) {
    for v in voters {
        let (status, body) = client
            .vote(&serve.url(""), "snap", v, OPTIONS[(v % 3) as usize])
            .await
            .unwrap_or_else(|e| panic!("voter {v}: {e}"));
        assert_eq!(status, want, "voter {v}: {body}");
    }
}

/// Waits until every partition has a snapshot at or past `at_least` (per partition).
async fn wait_snapshots(serve: &Serve, at_least: &HashMap<String, u64>) -> HashMap<String, u64> {
    common::eventually(
        Duration::from_secs(30),
        Duration::from_millis(200),
        async || {
            let offsets = metric(serve, "votes_snapshot_offset").await;
            let done = (0..PARTITIONS).all(|p| {
                let key = format!("partition=\"{p}\"");
                let want = at_least.get(&key).copied().unwrap_or(1).max(1);
                offsets.get(&key).is_some_and(|o| *o >= want)
            });
            if done {
                return Ok(offsets);
            }
            Err(format!(
                "no snapshot of every partition within 30 s: {offsets:?}"
            ))
        },
    )
    .await
}

fn snapshot_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| Some(e.ok()?.path())).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "snap"));
    files.sort();
    files
}

#[test]
fn recovery_starts_from_the_newest_good_snapshot_and_replays_only_the_tail() {
    let prefix = common::unique_prefix("snap");
    common::init_with_partitions(&prefix, PARTITIONS);
    let root = common::repo_root()
        .join("target")
        .join("test-snapshots")
        .join(&prefix);
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    // Serve::start_env runs node `test-node`.
    let dir = root.join(format!("{prefix}votes")).join("test-node");
    let rt = common::runtime();
    let client = TestClient::http1();

    // 1. Votes, then snapshots of both partitions that include them.
    let mut serve = start(&prefix, &root);
    let snapped = rt.block_on(async {
        open_election(&client, &serve, "snap", &OPTIONS, 0).await;
        vote_all(&client, &serve, 1..201, 202).await;
        wait_snapshots(&serve, &HashMap::new()).await
    });
    assert!(snapshot_files(&dir).len() >= PARTITIONS as usize);
    // Who voted is the service's alone: the directory 0700, each snapshot 0600.
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
        for f in snapshot_files(&dir) {
            assert_eq!(mode(&f), 0o600, "{}", f.display());
        }
    }

    // 2. A tail the snapshots may not hold, then kill -9 and restart.
    rt.block_on(vote_all(&client, &serve, 201..241, 202));
    serve.kill();
    let serve = start(&prefix, &root);
    rt.block_on(async {
        let start_at = metric(&serve, "votes_snapshot_start_offset").await;
        for p in 0..PARTITIONS {
            let key = format!("partition=\"{p}\"");
            let from = start_at.get(&key).copied().unwrap_or(0);
            assert!(
                from >= snapped[&key],
                "partition {p} recovered from offset {from}, not from its snapshot at {} or later",
                snapped[&key]
            );
        }
        let replayed: u64 = metric(&serve, "votes_replay_records").await.values().sum();
        assert!(
            replayed < 240,
            "{replayed} records replayed: the snapshots should have spared most of the 240"
        );
        // Everyone who voted, before or after the snapshots, is refused; newcomers are not.
        vote_all(&client, &serve, 1..241, 409).await;
        vote_all(&client, &serve, 241..261, 202).await;
        let skipped: u64 = metric(&serve, "votes_snapshots_skipped")
            .await
            .values()
            .sum();
        assert_eq!(skipped, 0);
        // Fresh snapshots that include the newcomers, before the damage below.
        wait_snapshots(&serve, &start_at).await;
    });

    // 3. Damage the newest snapshot of every partition: recovery skips it, still exact.
    let mut serve = serve;
    serve.kill();
    let mut damaged = 0;
    for p in 0..PARTITIONS {
        let mine: Vec<PathBuf> = snapshot_files(&dir)
            .into_iter()
            .filter(|f| {
                f.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("p{p:05}-")))
            })
            .collect();
        let newest = mine.last().expect("a snapshot of each partition");
        let mut bytes = std::fs::read(newest).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x5a;
        std::fs::write(newest, &bytes).unwrap();
        damaged += 1;
    }
    let serve = start(&prefix, &root);
    rt.block_on(async {
        let skipped: u64 = metric(&serve, "votes_snapshots_skipped")
            .await
            .values()
            .sum();
        assert_eq!(
            skipped, damaged,
            "each damaged snapshot is detected and skipped"
        );
        vote_all(&client, &serve, 1..261, 409).await;
        vote_all(&client, &serve, 261..271, 202).await;
    });
    assert!(
        serve.log_text().contains("snapshot skipped"),
        "the log names the skipped snapshots"
    );
    drop(serve);
    let _ = std::fs::remove_dir_all(&root);
}
