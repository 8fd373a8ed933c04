//! Shard snapshots on disk: the codec is `votes_core::snapshot` (pure, fuzzed); this module
//! names, finds, loads and prunes the files.

pub use votes_core::snapshot::*;

/// Snapshot files of a partition in one directory: `p<partition>-<applied_end>.snap`, written
/// under a temporary name and renamed once synced, so a name that exists was complete when it
/// was written (a later corruption is still caught by [`ShardSnapshot::decode`]). Blocking:
/// runs on the blocking pool.
pub mod files {
    use std::path::{Path, PathBuf};

    use super::ShardSnapshot;

    /// The final name of partition `partition`'s snapshot at `applied_end`.
    pub fn name(partition: u32, applied_end: u64) -> String {
        format!("p{partition:05}-{applied_end:020}.snap")
    }

    /// The temporary name the writer uses before the rename.
    pub fn temporary(partition: u32, applied_end: u64) -> String {
        format!(".{}.tmp", name(partition, applied_end))
    }

    /// The partition's snapshots in `dir`, newest (highest offset) first.
    pub fn list(dir: &Path, partition: u32) -> std::io::Result<Vec<(u64, PathBuf)>> {
        let prefix = format!("p{partition:05}-");
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let file_name = entry.file_name();
            let Some(n) = file_name.to_str() else {
                continue;
            };
            let Some(offset) = n
                .strip_prefix(&prefix)
                .and_then(|r| r.strip_suffix(".snap"))
                .and_then(|o| o.parse::<u64>().ok())
            else {
                continue;
            };
            out.push((offset, entry.path()));
        }
        out.sort_by_key(|e| std::cmp::Reverse(e.0));
        Ok(out)
    }

    /// What loading found: the snapshot to start from (if any) and every file it had to skip,
    /// with the reason.
    #[derive(Debug, Default)]
    pub struct Loaded {
        pub snapshot: Option<(PathBuf, ShardSnapshot)>,
        pub skipped: Vec<(PathBuf, String)>,
    }

    /// The newest snapshot of `partition` in `dir` that decodes, belongs to the partition, is
    /// of the log named `log_id` (`None`: the log is empty, no snapshot fits) and does not
    /// claim offsets past `log_end` (the partition's high watermark). Older ones are tried in
    /// turn.
    pub fn load_newest(
        dir: &Path,
        partition: u32,
        log_id: Option<u64>,
        log_end: u64,
    ) -> std::io::Result<Loaded> {
        let mut loaded = Loaded::default();
        for (_, path) in list(dir, partition)? {
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) => {
                    loaded.skipped.push((path, e.to_string()));
                    continue;
                }
            };
            match ShardSnapshot::decode(&bytes) {
                Err(e) => loaded.skipped.push((path, e.to_string())),
                Ok(s) if s.partition != partition => loaded
                    .skipped
                    .push((path, format!("it is partition {}'s", s.partition))),
                Ok(s) if Some(s.log_id) != log_id => loaded.skipped.push((
                    path,
                    "it is of another log (the topic was made anew)".into(),
                )),
                Ok(s) if s.applied_end > log_end => loaded.skipped.push((
                    path,
                    format!(
                        "it reflects offsets up to {} but the log ends at {log_end}",
                        s.applied_end
                    ),
                )),
                Ok(s) => {
                    loaded.snapshot = Some((path, s));
                    break;
                }
            }
        }
        Ok(loaded)
    }

    /// Removes all but the `keep` newest snapshots of `partition`, and leftover temporaries.
    pub fn prune(dir: &Path, partition: u32, keep: usize) -> std::io::Result<()> {
        for (_, path) in list(dir, partition)?.into_iter().skip(keep) {
            std::fs::remove_file(path)?;
        }
        let tmp_prefix = format!(".p{partition:05}-");
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&tmp_prefix) && n.ends_with(".tmp"))
            {
                std::fs::remove_file(entry.path())?;
            }
        }
        Ok(())
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use roaring::RoaringTreemap;
        use std::collections::BTreeMap;
        use votes_core::snapshot::ElectionState;
        use votes_core::{ElectionId, OptionId};

        fn snapshot_of(partition: u32, voters: &[u64]) -> ShardSnapshot {
            let voters: RoaringTreemap = voters.iter().copied().collect();
            let counts = BTreeMap::from([(OptionId::new("red").unwrap(), voters.len())]);
            ShardSnapshot {
                partition,
                applied_end: 0,
                log_id: 42,
                log_duplicates: 0,
                elections: vec![ElectionState {
                    election: ElectionId::new("e").unwrap(),
                    counts,
                    voters,
                }],
            }
        }

        #[test]
        fn the_newest_valid_snapshot_wins_and_damaged_ones_are_skipped() {
            let dir = std::env::temp_dir().join(format!("votes-snap-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let mut s = snapshot_of(3, &[1, 2, 3]);
            for end in [100u64, 200, 300, 400] {
                s.applied_end = end;
                std::fs::write(dir.join(name(3, end)), s.encode()).unwrap();
            }
            // 400: truncated; 300: one flipped byte; 200: good; 100: good but older.
            let p400 = dir.join(name(3, 400));
            let b = std::fs::read(&p400).unwrap();
            std::fs::write(&p400, &b[..b.len() / 2]).unwrap();
            let p300 = dir.join(name(3, 300));
            let mut b = std::fs::read(&p300).unwrap();
            b[20] ^= 0x40;
            std::fs::write(&p300, b).unwrap();
            std::fs::write(dir.join(temporary(3, 500)), b"partial").unwrap();
            std::fs::write(dir.join(name(4, 900)), b"another partition").unwrap();

            let got = load_newest(&dir, 3, Some(42), 10_000).unwrap();
            let (path, snap) = got.snapshot.expect("the snapshot at 200 is good");
            assert_eq!(path, dir.join(name(3, 200)));
            assert_eq!(snap.applied_end, 200);
            assert_eq!(got.skipped.len(), 2, "{:?}", got.skipped);

            // A log that ends before a snapshot makes it untrustworthy.
            let got = load_newest(&dir, 3, Some(42), 150).unwrap();
            assert_eq!(got.snapshot.map(|(_, s)| s.applied_end), Some(100));
            // Snapshots of another log (same name, made anew) are never trusted.
            let got = load_newest(&dir, 3, Some(43), 10_000).unwrap();
            assert!(got.snapshot.is_none());
            assert_eq!(got.skipped.len(), 4, "{:?}", got.skipped);

            prune(&dir, 3, 1).unwrap();
            let left: Vec<u64> = list(&dir, 3).unwrap().into_iter().map(|(o, _)| o).collect();
            assert_eq!(left, vec![400]);
            assert!(!dir.join(temporary(3, 500)).exists());
            assert!(
                dir.join(name(4, 900)).exists(),
                "other partitions are not touched"
            );
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
}
