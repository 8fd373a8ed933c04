//! The vote record stored as the value of a `votes` topic record (docs/design.md §4.4).
//!
//! Layout of version 1, all integers big-endian, strings prefixed with their length as a u16:
//!
//! | field            | bytes        | notes                                   |
//! |------------------|--------------|-----------------------------------------|
//! | version          | 1            | `1`                                     |
//! | election         | 2 + 1..=64   | `[a-z0-9-]`                             |
//! | voter            | 8            | also the record key                     |
//! | option           | 2 + 1..=32   | `[a-z0-9-]`                             |
//! | received_at_ms   | 8            | Unix ms at the ingest node              |
//! | node             | 2 + 0..=64   | `--node-id` of the ingest node (UTF-8)  |
//! | core             | 2            | reactor core that owned the partition   |
//! | nonce            | 16           | random, makes the receipt unguessable   |
//!
//! The decoder is strict: unknown versions, invalid ids, short input and trailing bytes are
//! all errors, because the log is the source every count is rebuilt from.
//!
//! The log also carries one control record, the **close marker** (docs/design.md §7, the close
//! frontier): the owner of a partition appends one for an election when it stops taking that
//! election's votes, in a transaction of its own like any vote. Every reader counts an
//! election's votes of a partition up to the first committed marker of that election there,
//! and no owner commits a vote of the election after it, so the marker's offset is the
//! partition's frontier. Layout, same conventions, version byte `0x81` (the high bit marks
//! control records, which a vote-only reader refuses as an unknown version):
//!
//! | field            | bytes        | notes                                   |
//! |------------------|--------------|-----------------------------------------|
//! | version          | 1            | `0x81`                                  |
//! | election         | 2 + 1..=64   | the election that closed                |
//! | closed_at_ms     | 8            | Unix ms when the owner closed it        |
//! | node             | 2 + 0..=64   | the owner's node                        |
//! | core             | 2            | the owner's core                        |

use crate::ids::{ELECTION_ID_MAX, ElectionId, IdError, OPTION_ID_MAX, OptionId, VoterId};
use crate::wire::{Reader, from_wire_error, put_str};

pub const RECORD_VERSION: u8 = 1;
/// Version byte of a close marker.
pub const CLOSE_RECORD_VERSION: u8 = 0x81;
/// The Kafka key of a close marker (records are keyed by voter; a marker has none).
pub const CLOSE_RECORD_KEY: [u8; 8] = [0xff; 8];
/// Longest node name carried in a record.
pub const NODE_MAX: usize = 64;
/// Upper bound of an encoded record; buffers sized with it never reallocate.
pub const RECORD_MAX_LEN: usize =
    1 + (2 + ELECTION_ID_MAX) + 8 + (2 + OPTION_ID_MAX) + 8 + (2 + NODE_MAX) + 2 + 16;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VoteRecord {
    pub election: ElectionId,
    pub voter: VoterId,
    pub option: OptionId,
    pub received_at_ms: u64,
    pub node: String,
    pub core: u16,
    pub nonce: [u8; 16],
}

/// A vote record whose strings are borrowed: the shard encodes a batch from the votes it
/// holds without copying an election, option or node name per vote.
#[derive(Clone, Copy, Debug)]
pub struct RecordRef<'a> {
    pub election: &'a ElectionId,
    pub voter: VoterId,
    pub option: &'a OptionId,
    pub received_at_ms: u64,
    pub node: &'a str,
    pub core: u16,
    pub nonce: &'a [u8; 16],
}

impl RecordRef<'_> {
    pub fn encoded_len(&self) -> usize {
        1 + (2 + self.election.as_str().len())
            + 8
            + (2 + self.option.as_str().len())
            + 8
            + (2 + self.node.len())
            + 2
            + 16
    }

    /// Appends the encoding to `out`.
    ///
    /// # Panics
    /// When the node name exceeds [`NODE_MAX`]: it comes from configuration, validated at
    /// start-up, so an oversized one here is a bug.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        assert!(
            self.node.len() <= NODE_MAX,
            "node name validated at start-up"
        );
        let start = out.len();
        out.push(RECORD_VERSION);
        put_str(out, self.election.as_str());
        out.extend_from_slice(&self.voter.0.to_be_bytes());
        put_str(out, self.option.as_str());
        out.extend_from_slice(&self.received_at_ms.to_be_bytes());
        put_str(out, self.node);
        out.extend_from_slice(&self.core.to_be_bytes());
        out.extend_from_slice(self.nonce);
        debug_assert_eq!(out.len() - start, self.encoded_len());
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record is empty")]
    Empty,
    #[error("record version {0} is not supported (expected {RECORD_VERSION})")]
    UnsupportedVersion(u8),
    #[error("record ends inside field `{0}`")]
    Truncated(&'static str),
    #[error("record has {0} trailing bytes")]
    TrailingBytes(usize),
    #[error("record field `{field}` is invalid: {source}")]
    InvalidId {
        field: &'static str,
        #[source]
        source: IdError,
    },
    #[error("record node name is longer than {NODE_MAX} bytes or not UTF-8")]
    InvalidNode,
}

impl VoteRecord {
    /// The record by reference, for encoding.
    pub fn view(&self) -> RecordRef<'_> {
        RecordRef {
            election: &self.election,
            voter: self.voter,
            option: &self.option,
            received_at_ms: self.received_at_ms,
            node: &self.node,
            core: self.core,
            nonce: &self.nonce,
        }
    }

    pub fn encoded_len(&self) -> usize {
        self.view().encoded_len()
    }

    /// Appends the encoding to `out` (callers reuse one buffer per batch).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        self.view().encode_into(out);
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode_into(&mut out);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        let mut r = Reader::at(bytes, 1);
        let version = *bytes.first().ok_or(RecordError::Empty)?;
        if version != RECORD_VERSION {
            return Err(RecordError::UnsupportedVersion(version));
        }
        let election = r.election()?;
        let voter = VoterId(u64::from_be_bytes(r.array("voter")?));
        let option = r.option()?;
        let received_at_ms = u64::from_be_bytes(r.array("received_at_ms")?);
        let (node, core) = read_writer(&mut r)?;
        let nonce = r.array("nonce")?;
        read_end(&r)?;
        Ok(Self {
            election,
            voter,
            option,
            received_at_ms,
            node,
            core,
            nonce,
        })
    }
}

/// A close marker: the owner of a partition stopped taking the election's votes here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseRecord {
    pub election: ElectionId,
    pub closed_at_ms: u64,
    pub node: String,
    pub core: u16,
}

impl CloseRecord {
    /// Appends the encoding to `out`.
    ///
    /// # Panics
    /// When the node name exceeds [`NODE_MAX`] (validated at start-up).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        encode_close(
            &self.election,
            self.closed_at_ms,
            &self.node,
            self.core,
            out,
        );
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }
}

/// Appends a close marker's encoding to `out` without owning its strings.
pub fn encode_close(
    election: &ElectionId,
    closed_at_ms: u64,
    node: &str,
    core: u16,
    out: &mut Vec<u8>,
) {
    assert!(node.len() <= NODE_MAX, "node name validated at start-up");
    out.push(CLOSE_RECORD_VERSION);
    put_str(out, election.as_str());
    out.extend_from_slice(&closed_at_ms.to_be_bytes());
    put_str(out, node);
    out.extend_from_slice(&core.to_be_bytes());
}

/// The node and core whose producer wrote the record (both record kinds name them).
fn read_writer(r: &mut Reader<'_>) -> Result<(String, u16), RecordError> {
    let node_len = usize::from(u16::from_be_bytes(r.array("node")?));
    if node_len > NODE_MAX {
        return Err(RecordError::InvalidNode);
    }
    let node = std::str::from_utf8(r.take("node", node_len)?)
        .map_err(|_| RecordError::InvalidNode)?
        .to_owned();
    let core = u16::from_be_bytes(r.array("core")?);
    Ok((node, core))
}

/// A record is exactly its fields: a byte after the last is a defect, not padding.
fn read_end(r: &Reader<'_>) -> Result<(), RecordError> {
    match r.remaining() {
        0 => Ok(()),
        n => Err(RecordError::TrailingBytes(n)),
    }
}

/// Any record of the `votes` topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogRecord {
    Vote(VoteRecord),
    Close(CloseRecord),
}

impl LogRecord {
    /// Decodes a vote or a close marker, as strictly as [`VoteRecord::decode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        match bytes.first() {
            Some(&CLOSE_RECORD_VERSION) => {
                let mut r = Reader::at(bytes, 1);
                let election = r.election()?;
                let closed_at_ms = u64::from_be_bytes(r.array("closed_at_ms")?);
                let (node, core) = read_writer(&mut r)?;
                read_end(&r)?;
                Ok(LogRecord::Close(CloseRecord {
                    election,
                    closed_at_ms,
                    node,
                    core,
                }))
            }
            _ => VoteRecord::decode(bytes).map(LogRecord::Vote),
        }
    }

    /// The node and core whose producer wrote the record.
    pub fn writer(&self) -> (&str, u16) {
        match self {
            LogRecord::Vote(v) => (&v.node, v.core),
            LogRecord::Close(c) => (&c.node, c.core),
        }
    }

    pub fn election(&self) -> &ElectionId {
        match self {
            LogRecord::Vote(v) => &v.election,
            LogRecord::Close(c) => &c.election,
        }
    }
}

from_wire_error!(RecordError);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> VoteRecord {
        VoteRecord {
            election: ElectionId::new("final-2026").unwrap(),
            voter: VoterId(42),
            option: OptionId::new("blue").unwrap(),
            received_at_ms: 1_790_000_000_000,
            node: "node-a".into(),
            core: 1,
            nonce: [7; 16],
        }
    }

    #[test]
    fn round_trips_and_pins_the_layout() {
        let rec = sample();
        let bytes = rec.encode();
        assert_eq!(bytes.len(), rec.encoded_len());
        assert!(bytes.len() <= RECORD_MAX_LEN);
        let mut expected = vec![1u8, 0, 10];
        expected.extend_from_slice(b"final-2026");
        expected.extend_from_slice(&42u64.to_be_bytes());
        expected.extend_from_slice(&[0, 4]);
        expected.extend_from_slice(b"blue");
        expected.extend_from_slice(&1_790_000_000_000u64.to_be_bytes());
        expected.extend_from_slice(&[0, 6]);
        expected.extend_from_slice(b"node-a");
        expected.extend_from_slice(&[0, 1]);
        expected.extend_from_slice(&[7; 16]);
        assert_eq!(bytes, expected);
        assert_eq!(VoteRecord::decode(&bytes), Ok(rec));
    }

    #[test]
    fn close_markers_round_trip_pin_their_layout_and_are_not_votes() {
        let marker = CloseRecord {
            election: ElectionId::new("final-2026").unwrap(),
            closed_at_ms: 1_790_000_000_123,
            node: "node-a".into(),
            core: 3,
        };
        let bytes = marker.encode();
        let mut expected = vec![0x81u8, 0, 10];
        expected.extend_from_slice(b"final-2026");
        expected.extend_from_slice(&1_790_000_000_123u64.to_be_bytes());
        expected.extend_from_slice(&[0, 6]);
        expected.extend_from_slice(b"node-a");
        expected.extend_from_slice(&[0, 3]);
        assert_eq!(bytes, expected);
        let decoded = LogRecord::decode(&bytes).unwrap();
        assert_eq!(decoded.writer(), ("node-a", 3));
        assert_eq!(decoded, LogRecord::Close(marker));
        assert_eq!(
            VoteRecord::decode(&bytes),
            Err(RecordError::UnsupportedVersion(0x81)),
            "a vote-only reader refuses a marker"
        );
        assert_eq!(
            LogRecord::decode(&sample().encode()),
            Ok(LogRecord::Vote(sample()))
        );
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(LogRecord::decode(&long), Err(RecordError::TrailingBytes(1)));
        assert!(matches!(
            LogRecord::decode(&bytes[..bytes.len() - 1]),
            Err(RecordError::Truncated("core"))
        ));
    }

    #[test]
    fn rejects_damaged_records_precisely() {
        let bytes = sample().encode();
        assert_eq!(VoteRecord::decode(&[]), Err(RecordError::Empty));
        let mut v2 = bytes.clone();
        v2[0] = 2;
        assert_eq!(
            VoteRecord::decode(&v2),
            Err(RecordError::UnsupportedVersion(2))
        );
        assert_eq!(
            VoteRecord::decode(&bytes[..bytes.len() - 1]),
            Err(RecordError::Truncated("nonce"))
        );
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(
            VoteRecord::decode(&long),
            Err(RecordError::TrailingBytes(1))
        );
        let mut upper = bytes.clone();
        upper[3] = b'F';
        assert!(matches!(
            VoteRecord::decode(&upper),
            Err(RecordError::InvalidId {
                field: "election",
                ..
            })
        ));
    }

    proptest! {
        #[test]
        fn any_valid_record_round_trips(
            election in "[a-z0-9-]{1,64}",
            voter in any::<u64>(),
            option in "[a-z0-9-]{1,32}",
            received_at_ms in any::<u64>(),
            node in "[a-zA-Z0-9._-]{0,64}",
            core in any::<u16>(),
            nonce in any::<[u8; 16]>(),
        ) {
            let rec = VoteRecord {
                election: ElectionId::new(election).unwrap(),
                voter: VoterId(voter),
                option: OptionId::new(option).unwrap(),
                received_at_ms, node, core, nonce,
            };
            prop_assert_eq!(VoteRecord::decode(&rec.encode()), Ok(rec));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = VoteRecord::decode(&bytes);
        }
    }
}
