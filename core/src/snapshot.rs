//! A shard's committed state as bytes (the codec; the files live in `votes_tally::snapshot`) (docs/design.md §3, invariant 3: recovery = latest snapshot +
//! replay of the tail): its voter sets, its tallies and the log
//! offset they reflect, so recovery replays only the records after that offset. Sans-IO: the
//! driver decides where the bytes go (temporary name, sync, rename) and which file to trust.
//!
//! Layout of version 1, all integers big-endian, strings prefixed with their length as a u16:
//!
//! | field                 | bytes                          |
//! |-----------------------|--------------------------------|
//! | magic                 | 8: `VOTESNAP`                  |
//! | version               | 1: `1`                         |
//! | partition             | 4                              |
//! | applied_end           | 8: next offset to replay       |
//! | log_id                | 8: identity of the log (its first committed record) |
//! | log_duplicates        | 8                              |
//! | elections             | 4: count                       |
//! | per election: id      | 2 + 1..=64                     |
//! | per election: options | 2: count, then per option: id (2 + 1..=32), count (8) |
//! | per election: voters  | 8: length, then a serialized `RoaringTreemap` |
//! | checksum              | 8: xxh3-64 of every byte before it |
//!
//! Decoding trusts nothing: a wrong magic, version or checksum, a short or long file, invalid
//! ids, an unreadable bitmap, or tallies that do not add up to the voters (each voter counted
//! exactly once) are all errors, and a snapshot that fails is skipped, never half-used.

use std::collections::BTreeMap;

use crate::wire::{Reader, WireError, put_str};
use crate::{ElectionId, OptionId};
use roaring::RoaringTreemap;

const MAGIC: &[u8; 8] = b"VOTESNAP";
pub const SNAPSHOT_VERSION: u8 = 1;
/// Bound on the options of one election in a snapshot (an election has a handful).
const OPTIONS_MAX: usize = 1_024;

/// One election's committed state on a shard.
#[derive(Clone, Debug, PartialEq)]
pub struct ElectionState {
    pub election: ElectionId,
    pub counts: BTreeMap<OptionId, u64>,
    pub voters: RoaringTreemap,
}

/// A shard's committed state: every record of its partition below `applied_end` is in it.
#[derive(Clone, Debug, PartialEq)]
pub struct ShardSnapshot {
    pub partition: u32,
    pub applied_end: u64,
    /// Which log the state is of: a digest of the partition's first committed record (see
    /// [`log_id`]). A topic deleted and made again under the same name has another one.
    pub log_id: u64,
    pub log_duplicates: u64,
    /// Sorted by election id.
    pub elections: Vec<ElectionState>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("not a snapshot (bad magic)")]
    Magic,
    #[error("snapshot version {0} is not supported")]
    Version(u8),
    #[error("the snapshot is truncated in {0}")]
    Truncated(&'static str),
    #[error("the checksum does not match: the file is damaged")]
    Checksum,
    #[error("{0} bytes after the checksum")]
    Trailing(usize),
    #[error("invalid {field}: {why}")]
    Invalid { field: &'static str, why: String },
    #[error("election {election}: the tallies count {counted} votes but {voters} voters")]
    Inconsistent {
        election: String,
        counted: u64,
        voters: u64,
    },
}

impl ShardSnapshot {
    /// Voters in every election of the snapshot.
    pub fn voters(&self) -> u64 {
        self.elections.iter().map(|e| e.voters.len()).sum()
    }

    pub fn encode(&self) -> Vec<u8> {
        let bitmaps: usize = self
            .elections
            .iter()
            .map(|e| e.voters.serialized_size())
            .sum();
        let mut out = Vec::with_capacity(64 + bitmaps + 128 * self.elections.len());
        out.extend_from_slice(MAGIC);
        out.push(SNAPSHOT_VERSION);
        out.extend_from_slice(&self.partition.to_be_bytes());
        out.extend_from_slice(&self.applied_end.to_be_bytes());
        out.extend_from_slice(&self.log_id.to_be_bytes());
        out.extend_from_slice(&self.log_duplicates.to_be_bytes());
        let n = u32::try_from(self.elections.len()).expect("fewer than 2^32 elections");
        out.extend_from_slice(&n.to_be_bytes());
        for e in &self.elections {
            put_str(&mut out, e.election.as_str());
            let options = u16::try_from(e.counts.len()).expect("an election has few options");
            out.extend_from_slice(&options.to_be_bytes());
            for (option, count) in &e.counts {
                put_str(&mut out, option.as_str());
                out.extend_from_slice(&count.to_be_bytes());
            }
            let len = e.voters.serialized_size() as u64;
            out.extend_from_slice(&len.to_be_bytes());
            let before = out.len();
            e.voters
                .serialize_into(&mut out)
                .expect("writing into a Vec cannot fail");
            assert_eq!((out.len() - before) as u64, len, "serialized_size is exact");
        }
        let sum = xxhash_rust::xxh3::xxh3_64(&out);
        out.extend_from_slice(&sum.to_be_bytes());
        out
    }

    /// Decodes untrusted bytes from disk. Long because it reads the layout field by field in its
    /// order, each check at the field it guards.
    pub fn decode(bytes: &[u8]) -> Result<Self, SnapshotError> {
        if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
            return Err(SnapshotError::Magic);
        }
        let version = *bytes
            .get(MAGIC.len())
            .ok_or(SnapshotError::Truncated("version"))?;
        if version != SNAPSHOT_VERSION {
            return Err(SnapshotError::Version(version));
        }
        // The checksum first: nothing of a damaged file is parsed.
        if bytes.len() < MAGIC.len() + 1 + 8 {
            return Err(SnapshotError::Truncated("checksum"));
        }
        let (body, sum) = bytes.split_at(bytes.len() - 8);
        let want = u64::from_be_bytes(sum.try_into().expect("8 bytes"));
        if xxhash_rust::xxh3::xxh3_64(body) != want {
            return Err(SnapshotError::Checksum);
        }
        let mut r = Reader::at(body, MAGIC.len() + 1);
        let partition = r.u32("partition")?;
        let applied_end = r.u64("applied_end")?;
        let log_id = r.u64("log_id")?;
        let log_duplicates = r.u64("log_duplicates")?;
        let n = r.u32("elections")?;
        let mut elections: Vec<ElectionState> = Vec::new();
        for _ in 0..n {
            let election = r.election()?;
            if elections
                .last()
                .is_some_and(|prev| prev.election >= election)
            {
                return Err(SnapshotError::Invalid {
                    field: "election",
                    why: "elections out of order or repeated".into(),
                });
            }
            let options = usize::from(r.u16("options")?);
            if options > OPTIONS_MAX {
                return Err(SnapshotError::Invalid {
                    field: "options",
                    why: format!("{options} options (at most {OPTIONS_MAX})"),
                });
            }
            let mut counts = BTreeMap::new();
            let mut counted = 0u64;
            for _ in 0..options {
                let option = r.option()?;
                let count = r.u64("count")?;
                counted = counted
                    .checked_add(count)
                    .ok_or_else(|| SnapshotError::Invalid {
                        field: "count",
                        why: "tallies overflow".into(),
                    })?;
                if counts.insert(option, count).is_some() {
                    return Err(SnapshotError::Invalid {
                        field: "option",
                        why: "an option appears twice".into(),
                    });
                }
            }
            let len = r.u64("voters length")?;
            let len = usize::try_from(len).map_err(|_| SnapshotError::Truncated("voters"))?;
            let raw = r.take("voters", len)?;
            let voters =
                RoaringTreemap::deserialize_from(raw).map_err(|e| SnapshotError::Invalid {
                    field: "voters",
                    why: e.to_string(),
                })?;
            if counted != voters.len() {
                return Err(SnapshotError::Inconsistent {
                    election: election.as_str().to_string(),
                    counted,
                    voters: voters.len(),
                });
            }
            elections.push(ElectionState {
                election,
                counts,
                voters,
            });
        }
        if r.remaining() != 0 {
            return Err(SnapshotError::Trailing(r.remaining()));
        }
        Ok(ShardSnapshot {
            partition,
            applied_end,
            log_id,
            log_duplicates,
            elections,
        })
    }
}

/// The identity of a partition's log: a digest of its first committed record (offset, key and
/// value; the value carries a random nonce), which never changes while the log lives (the
/// `votes` topic is never compacted or expired) and differs for a log made anew.
pub fn log_id(offset: u64, key: &[u8], value: &[u8]) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&offset.to_be_bytes());
    h.update(&(key.len() as u64).to_be_bytes());
    h.update(key);
    h.update(value);
    h.digest()
}

impl From<WireError> for SnapshotError {
    fn from(e: WireError) -> Self {
        match e {
            WireError::Truncated(field) => SnapshotError::Truncated(field),
            WireError::TooLong { field, len, max } => SnapshotError::Invalid {
                field,
                why: format!("{len} bytes (at most {max})"),
            },
            WireError::NotText(field) => SnapshotError::Invalid {
                field,
                why: "not UTF-8".into(),
            },
            WireError::InvalidId { field, source } => SnapshotError::Invalid {
                field,
                why: source.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn snapshot(voters_per_election: &[(&str, Vec<u64>)]) -> ShardSnapshot {
        let mut elections: Vec<ElectionState> = voters_per_election
            .iter()
            .map(|(id, voters)| {
                let mut set = RoaringTreemap::new();
                let mut counts = BTreeMap::new();
                for (i, v) in voters.iter().enumerate() {
                    if set.insert(*v) {
                        let option = OptionId::new(["red", "blue", "green"][i % 3]).unwrap();
                        *counts.entry(option).or_insert(0) += 1;
                    }
                }
                ElectionState {
                    election: ElectionId::new(*id).unwrap(),
                    counts,
                    voters: set,
                }
            })
            .collect();
        elections.sort_by(|a, b| a.election.cmp(&b.election));
        ShardSnapshot {
            partition: 3,
            applied_end: 12_345,
            log_id: 0xfeed,
            log_duplicates: 2,
            elections,
        }
    }

    #[test]
    fn a_snapshot_reads_back_as_written() {
        let s = snapshot(&[
            ("final", vec![1, 5, 1 << 40, 7, 5]),
            ("semi", vec![]),
            ("x-1", (0..10_000).map(|v| v * 3).collect()),
        ]);
        let bytes = s.encode();
        assert_eq!(ShardSnapshot::decode(&bytes), Ok(s.clone()));
        assert_eq!(s.voters(), 4 + 10_000);
    }

    #[test]
    fn every_defect_is_named() {
        let s = snapshot(&[("final", vec![1, 2, 3])]);
        let good = s.encode();
        assert_eq!(ShardSnapshot::decode(b"nope"), Err(SnapshotError::Magic));
        let mut v2 = good.clone();
        v2[8] = 2;
        assert_eq!(ShardSnapshot::decode(&v2), Err(SnapshotError::Version(2)));
        assert_eq!(
            ShardSnapshot::decode(&good[..good.len() - 1]),
            Err(SnapshotError::Checksum)
        );
        let mut longer = good.clone();
        longer.push(0);
        assert_eq!(ShardSnapshot::decode(&longer), Err(SnapshotError::Checksum));
        // A tally that does not add up is refused even with a valid checksum.
        let mut lying = s.clone();
        *lying.elections[0].counts.values_mut().next().unwrap() += 1;
        assert!(matches!(
            ShardSnapshot::decode(&lying.encode()),
            Err(SnapshotError::Inconsistent {
                counted: 4,
                voters: 3,
                ..
            })
        ));
    }

    proptest! {
        /// Any truncation or flipped bit of a snapshot is detected: decode never panics and
        /// never returns a different snapshot.
        #[test]
        fn damage_is_detected(
            voters in proptest::collection::vec(0u64..1_000_000, 0..300),
            cut in 0usize..10_000,
            flip in 0usize..80_000,
        ) {
            let s = snapshot(&[("e", voters)]);
            let good = s.encode();
            let cut = cut % good.len();
            prop_assert!(ShardSnapshot::decode(&good[..cut]).is_err());
            let mut flipped = good.clone();
            let bit = flip % (good.len() * 8);
            flipped[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(ShardSnapshot::decode(&flipped).is_err());
        }
    }
}
