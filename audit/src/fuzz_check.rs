//! The properties the audit fuzz targets in `fuzz/` check, one function per target; a unit test
//! replays the committed seeds (`fuzz/seeds/<target>/`) through the very same code.

use crate::manifest::Manifest;
use crate::table::{ROW_GROUP_ROWS, VotesReader};
use crate::verify::{RowChecker, check_official};

/// The manifest the `votes_parquet` target checks rows against: three options, two partitions.
const MANIFEST: &str = r#"{"format":"votes-audit-export","format_version":2,
"created_at":"2026-12-03T00:00:00.000Z",
"election":{"id":"e","title":"E","options":[{"id":"a","label":"A"},{"id":"b","label":"B"},{"id":"c","label":"C"}]},
"votes_file":{"name":"votes.parquet","sha256":"00","bytes":0,"rows":3},
"totals":{"a":1,"b":1,"c":1},"total":3,
"partitions":[{"partition":0,"first_offset":0,"last_offset":9,"votes":2,"frontier":5},{"partition":1,"first_offset":null,"last_offset":null,"votes":1,"frontier":null}],
"merkle":{"root":"00","tree_size":3},"duplicate_records_ignored":0,"votes_past_frontier":7,
"official":{"source":"fuzz","totals":{"a":1},"total":1,"decided_at_ms":18446744073709551615,"merkle_root":null,"merkle_tree_size":null,"frontier":{"0":3,"7":1}},
"signing_key_sha256":"00"}"#;

/// `manifest_parse`: whatever parses re-serialises to a manifest that parses to itself.
pub fn manifest_parse(data: &[u8]) {
    if let Ok(m) = Manifest::from_bytes(data) {
        let again = Manifest::from_bytes(&m.to_bytes()).expect("a written manifest parses");
        assert_eq!(again, m, "a manifest survives its own serialisation");
        // Every check of the manifest alone runs on it.
        let _ = check_official(&m);
        if let Ok(id) = votes_core::ElectionId::new(m.election.id.as_str()) {
            let _ = RowChecker::new(&m, id, m.votes_file.rows).finish();
        }
    }
}

/// `votes_parquet`: the reader refuses or reads any bytes without panicking, and what it reads
/// stays within the bounds it checked: no row group beyond [`ROW_GROUP_ROWS`], no more rows in
/// all than the footer announced.
pub fn votes_parquet(data: &[u8]) {
    let Ok(reader) = VotesReader::from_bytes(data.to_vec()) else {
        return;
    };
    let announced = reader.num_rows();
    assert!(
        announced <= data.len() as u64,
        "the footer's rows are bounded by the file"
    );
    let manifest = Manifest::from_bytes(MANIFEST.as_bytes()).expect("the fuzz manifest parses");
    let election = votes_core::ElectionId::new("e").expect("a valid election id");
    let mut checker = RowChecker::new(&manifest, election, announced);
    let mut read = 0u64;
    for g in 0..reader.num_row_groups() {
        match reader.row_group(g) {
            Ok(rows) => {
                assert!(rows.len() <= ROW_GROUP_ROWS);
                read += rows.len() as u64;
                rows.iter().for_each(|r| checker.push(r));
            }
            Err(_) => return,
        }
    }
    assert_eq!(read, announced, "every announced row is read, none more");
    let _ = checker.finish();
}

#[cfg(test)]
#[path = "../../core/src/fuzz_seeds.rs"]
mod fuzz_seeds;

#[cfg(test)]
mod tests {
    use super::fuzz_seeds::{replay_both_kinds, seed_root};
    use super::*;

    #[test]
    fn manifest_parse_seeds() {
        replay_both_kinds("manifest_parse", manifest_parse, |b| {
            Manifest::from_bytes(b).is_ok()
        });
    }

    #[test]
    fn votes_parquet_seeds() {
        let reads = |b: &[u8]| {
            VotesReader::from_bytes(b.to_vec())
                .map(|r| (0..r.num_row_groups()).all(|g| r.row_group(g).is_ok()))
                .unwrap_or(false)
        };
        replay_both_kinds("votes_parquet", votes_parquet, reads);
    }

    /// Writes the seeds of both targets when `VOTES_WRITE_FUZZ_SEEDS=1` (after a change of the
    /// formats); otherwise does nothing, and the replay tests above read what is committed.
    #[test]
    fn write_fuzz_seeds() {
        if std::env::var("VOTES_WRITE_FUZZ_SEEDS").as_deref() != Ok("1") {
            return;
        }
        let root = seed_root();
        let write = |target: &str, name: &str, bytes: &[u8]| {
            let dir = root.join(target);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(name), bytes).unwrap();
        };
        let m = Manifest::from_bytes(MANIFEST.as_bytes()).unwrap();
        write("manifest_parse", "valid", &m.to_bytes());
        write("manifest_parse", "compact", MANIFEST.as_bytes());
        write("manifest_parse", "deep", "[".repeat(4000).as_bytes());
        write(
            "manifest_parse",
            "unknown-field",
            MANIFEST
                .replacen("\"total\":3", "\"total\":3,\"extra\":1", 1)
                .as_bytes(),
        );
        write(
            "manifest_parse",
            "version-1",
            MANIFEST
                .replacen("\"format_version\":2", "\"format_version\":1", 1)
                .as_bytes(),
        );
        let mut file = Vec::new();
        let mut w = crate::table::VotesWriter::new(&mut file, "e").unwrap();
        for i in 0..3u8 {
            w.push_row(&crate::table::Row {
                pseudonym: [i; 16],
                option: ["a", "b", "c"][i as usize].to_owned(),
                partition: u32::from(i / 2),
                offset: u64::from(i),
                received_at_ms: 1_790_000_040_000,
                nonce: [i + 1; 16],
                leaf_hash: [i + 2; 32],
            })
            .unwrap();
        }
        w.finish().unwrap();
        write("votes_parquet", "three-rows", &file);
        write("votes_parquet", "truncated", &file[..file.len() / 2]);
        write(
            "votes_parquet",
            "footer-65536-rows",
            &crate::table::refooter(&file, 65_536),
        );
        write(
            "votes_parquet",
            "row-group-2-30-rows",
            &crate::table::refooter(&file, 1 << 30),
        );
        write(
            "votes_parquet",
            "row-group-short",
            &crate::table::refooter(&file, 2),
        );
        write("votes_parquet", "magic-only", b"PAR1PAR1");
        write(
            "votes_parquet",
            "snappy-columns",
            &crate::table::claim_compression(&file, parquet::basic::Compression::SNAPPY),
        );
    }
}
