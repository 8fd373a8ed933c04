//! `manifest.json`: what an export claims (docs/design.md §4.5). `manifest.sig` signs its exact bytes,
//! so the verifier parses the bytes it checked the signature of, never a re-serialisation.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub const FORMAT: &str = "votes-audit-export";
/// 2: each partition's close frontier, the votes committed past it, the official frontier; the
/// votes file uncompressed.
pub const FORMAT_VERSION: u32 = 2;
pub const MANIFEST_FILE: &str = "manifest.json";
pub const SIGNATURE_FILE: &str = "manifest.sig";
pub const VOTES_FILE: &str = "votes.parquet";
/// A manifest lists one entry per partition and per option: 16 MiB holds ~100,000 partitions.
/// A larger `manifest.json` is refused unread.
pub const MANIFEST_MAX_BYTES: u64 = 16 << 20;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// [`FORMAT_VERSION`]; a verifier refuses versions it does not know.
    pub format_version: u32,
    /// When the export was written, RFC 3339 in UTC.
    pub created_at: String,
    pub election: ElectionInfo,
    pub votes_file: VotesFileInfo,
    /// Counted votes per option, every option of the election listed (0 included).
    pub totals: BTreeMap<String, u64>,
    pub total: u64,
    /// Per partition of the `votes` topic, in order: the offsets of its first and last counted
    /// vote of this election (null when it holds none) and how many it holds.
    pub partitions: Vec<PartitionRange>,
    /// RFC 6962 Merkle Tree Hash of the rows' leaf hashes in file order.
    pub merkle: MerkleInfo,
    /// Records of this election in the log whose voter had already voted (never counted).
    pub duplicate_records_ignored: u64,
    /// Votes of this election committed after their partition's close frontier (never
    /// counted). The owners stop taking the election's votes before they write the marker, so
    /// any here means the system broke its close barrier: the verifier fails on it.
    pub votes_past_frontier: u64,
    /// The official result as `votes recount` recorded it, read back at export time.
    pub official: OfficialInfo,
    /// SHA-256 (hex) of the DER SubjectPublicKeyInfo of the key that signs `manifest.json`.
    pub signing_key_sha256: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ElectionInfo {
    pub id: String,
    pub title: String,
    pub options: Vec<OptionInfo>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptionInfo {
    pub id: String,
    pub label: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VotesFileInfo {
    /// Always [`VOTES_FILE`], beside the manifest.
    pub name: String,
    /// SHA-256 of the file, lowercase hex.
    pub sha256: String,
    pub bytes: u64,
    pub rows: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionRange {
    pub partition: u32,
    pub first_offset: Option<u64>,
    pub last_offset: Option<u64>,
    pub votes: u64,
    /// Offset of the election's first close marker in this partition: votes are counted up to
    /// it (docs/design.md §7). A final election has one in every partition.
    pub frontier: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MerkleInfo {
    /// Lowercase hex.
    pub root: String,
    pub tree_size: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OfficialInfo {
    /// Where it was read: `dynamodb:<results table>`.
    pub source: String,
    pub totals: BTreeMap<String, u64>,
    pub total: u64,
    pub decided_at_ms: u64,
    /// Absent when the recount that made it official recorded no Merkle root.
    pub merkle_root: Option<String>,
    pub merkle_tree_size: Option<u64>,
    /// Per partition, the close frontier the recount counted up to.
    pub frontier: BTreeMap<u32, u64>,
}

impl Manifest {
    /// The bytes written to `manifest.json`: pretty JSON and a final newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).expect("a manifest serialises");
        out.push(b'\n');
        out
    }

    /// Parses `manifest.json` strictly (unknown fields refused, nesting bounded by serde_json's
    /// recursion limit, at most [`MANIFEST_MAX_BYTES`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() as u64 > MANIFEST_MAX_BYTES {
            return Err(format!(
                "{} bytes, more than the {MANIFEST_MAX_BYTES} a manifest may hold",
                bytes.len()
            ));
        }
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if m.format != FORMAT {
            return Err(format!("format is {:?}, expected {FORMAT:?}", m.format));
        }
        if m.format_version != FORMAT_VERSION {
            return Err(format!(
                "format_version {} is not supported (this verifier reads {FORMAT_VERSION})",
                m.format_version
            ));
        }
        Ok(m)
    }
}

/// `ms` since the Unix epoch as RFC 3339 in UTC with milliseconds.
pub fn rfc3339_utc(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's days_from_civil inverse (proleptic Gregorian calendar).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn sample() -> Manifest {
        Manifest {
            format: FORMAT.into(),
            format_version: FORMAT_VERSION,
            created_at: rfc3339_utc(0),
            election: ElectionInfo {
                id: "e".into(),
                title: "E".into(),
                options: vec![
                    OptionInfo {
                        id: "a".into(),
                        label: "A".into(),
                    },
                    OptionInfo {
                        id: "b".into(),
                        label: "B".into(),
                    },
                ],
            },
            votes_file: VotesFileInfo {
                name: VOTES_FILE.into(),
                sha256: "00".repeat(32),
                bytes: 1,
                rows: 0,
            },
            totals: [("a".to_owned(), 0), ("b".to_owned(), 0)].into(),
            total: 0,
            partitions: vec![PartitionRange {
                partition: 0,
                first_offset: None,
                last_offset: None,
                votes: 0,
                frontier: Some(0),
            }],
            merkle: MerkleInfo {
                root: hex::encode(votes_core::merkle::empty_root()),
                tree_size: 0,
            },
            duplicate_records_ignored: 0,
            votes_past_frontier: 0,
            official: OfficialInfo {
                source: "dynamodb:results".into(),
                totals: [("a".to_owned(), 0), ("b".to_owned(), 0)].into(),
                total: 0,
                decided_at_ms: 1,
                merkle_root: None,
                merkle_tree_size: None,
                frontier: [(0, 0)].into(),
            },
            signing_key_sha256: "11".repeat(32),
        }
    }

    #[test]
    fn round_trips_and_refuses_other_formats() {
        let m = sample();
        let bytes = m.to_bytes();
        assert!(bytes.ends_with(b"}\n"));
        assert_eq!(Manifest::from_bytes(&bytes).unwrap(), m);
        let v1 = String::from_utf8(bytes.clone())
            .unwrap()
            .replace("\"format_version\": 2", "\"format_version\": 1");
        assert!(
            Manifest::from_bytes(v1.as_bytes())
                .unwrap_err()
                .contains("format_version 1")
        );
        let extra = String::from_utf8(bytes)
            .unwrap()
            .replacen('{', "{\"surprise\": 1,", 1);
        assert!(Manifest::from_bytes(extra.as_bytes()).is_err());
    }

    #[test]
    fn formats_utc_timestamps() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_utc(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_utc(1_798_761_599_999), "2026-12-31T23:59:59.999Z");
        assert_eq!(rfc3339_utc(4_107_542_400_123), "2100-03-01T00:00:00.123Z");
    }
}
