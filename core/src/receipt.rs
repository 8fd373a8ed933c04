//! Receipts (docs/design.md §4.5): the voter pseudonym, the canonical leaf of a counted vote, its
//! RFC 6962 leaf hash and the hex receipt a `202` answer carries.
//!
//! Pseudonym: the first 16 bytes of `HMAC-SHA256(VOTES_AUDIT_KEY, election || 0x00 ||
//! voter_be8)`. The `0x00` cannot occur in an election id, so no (election, voter) pair can
//! produce the MAC input of another.
//!
//! Leaf layout, all integers big-endian, strings prefixed with their length as a u16. The
//! design writes the first field as "v1"; it is encoded as the single byte `0x01`.
//!
//! | field     | bytes      | notes                                         |
//! |-----------|------------|-----------------------------------------------|
//! | version   | 1          | `0x01`                                        |
//! | election  | 2 + 1..=64 | `[a-z0-9-]`                                   |
//! | pseudonym | 16         | see above                                     |
//! | option    | 2 + 1..=32 | `[a-z0-9-]`                                   |
//! | partition | 4          | Kafka partition of the vote record            |
//! | offset    | 8          | Kafka offset of the vote record               |
//! | nonce     | 16         | the record's random nonce                     |
//!
//! `leaf_hash = SHA-256(0x00 || leaf)` (RFC 6962 §2.1), and the receipt is its lowercase hex.
//! [`Leaf::decode`] is strict (version, ids, lengths, no trailing bytes): auditors' tools
//! recompute hashes from decoded leaves, so exactly one byte string may stand for a leaf.

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use crate::ids::{ELECTION_ID_MAX, ElectionId, IdError, OPTION_ID_MAX, OptionId, VoterId};
use crate::routing::voter_key;
use crate::vote::VoteIntent;
use crate::wire::{Reader, from_wire_error, put_str};

pub const LEAF_VERSION: u8 = 0x01;
/// Upper bound of an encoded leaf.
pub const LEAF_MAX_LEN: usize = 1 + (2 + ELECTION_ID_MAX) + 16 + (2 + OPTION_ID_MAX) + 4 + 8 + 16;
/// Domain-separation prefix of leaf hashes (RFC 6962 §2.1).
pub const LEAF_HASH_PREFIX: u8 = 0x00;
/// Length of a receipt: the hex of a SHA-256.
pub const RECEIPT_HEX_LEN: usize = 64;

/// The pseudonym of `voter` in `election`: unique per pair, meaningless without the audit key.
///
/// # Panics
/// When `audit_key` is empty: `VOTES_AUDIT_KEY` is checked at start-up, and pseudonyms under
/// an empty key could be recomputed by anyone, so an empty one here is a bug.
pub fn pseudonym(audit_key: &[u8], election: &ElectionId, voter: VoterId) -> [u8; 16] {
    assert!(
        !audit_key.is_empty(),
        "VOTES_AUDIT_KEY is validated at start-up"
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(audit_key).expect("HMAC takes any key length");
    mac.update(election.as_str().as_bytes());
    mac.update(&[0x00]);
    mac.update(&voter_key(voter));
    let tag = mac.finalize().into_bytes();
    let mut out = [0u8; 16];
    out.copy_from_slice(&tag[..16]);
    out
}

/// One counted vote as it enters the election's Merkle tree.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Leaf {
    pub election: ElectionId,
    pub pseudonym: [u8; 16],
    pub option: OptionId,
    pub partition: u32,
    pub offset: u64,
    pub nonce: [u8; 16],
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeafError {
    #[error("leaf is empty")]
    Empty,
    #[error("leaf version {0} is not supported (expected {LEAF_VERSION})")]
    UnsupportedVersion(u8),
    #[error("leaf ends inside field `{0}`")]
    Truncated(&'static str),
    #[error("leaf has {0} trailing bytes")]
    TrailingBytes(usize),
    #[error("leaf field `{field}` is invalid: {source}")]
    InvalidId {
        field: &'static str,
        #[source]
        source: IdError,
    },
}

impl Leaf {
    /// The leaf of `vote` committed at `offset` of `partition`: the one construction behind the
    /// `202`'s receipt, the persisted item's and the audit's tree.
    pub fn of(audit_key: &[u8], vote: VoteIntent, partition: u32, offset: u64) -> Self {
        Self {
            pseudonym: pseudonym(audit_key, &vote.election, vote.voter),
            election: vote.election,
            option: vote.option,
            partition,
            offset,
            nonce: vote.nonce,
        }
    }

    pub fn encoded_len(&self) -> usize {
        1 + 2 + self.election.as_str().len() + 16 + 2 + self.option.as_str().len() + 4 + 8 + 16
    }

    /// The canonical bytes of the module's table.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        out.push(LEAF_VERSION);
        put_str(&mut out, self.election.as_str());
        out.extend_from_slice(&self.pseudonym);
        put_str(&mut out, self.option.as_str());
        out.extend_from_slice(&self.partition.to_be_bytes());
        out.extend_from_slice(&self.offset.to_be_bytes());
        out.extend_from_slice(&self.nonce);
        debug_assert_eq!(out.len(), self.encoded_len());
        debug_assert!(out.len() <= LEAF_MAX_LEN);
        out
    }

    /// `SHA-256(0x00 || canonical_bytes)`: the leaf's node in the Merkle tree.
    pub fn leaf_hash(&self) -> [u8; 32] {
        leaf_hash_of(&self.canonical_bytes())
    }

    /// The receipt: lowercase hex of [`Leaf::leaf_hash`].
    pub fn receipt_hex(&self) -> String {
        hex::encode(self.leaf_hash())
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, LeafError> {
        let version = *bytes.first().ok_or(LeafError::Empty)?;
        if version != LEAF_VERSION {
            return Err(LeafError::UnsupportedVersion(version));
        }
        let mut r = Reader::at(bytes, 1);
        let election = r.election()?;
        let pseudonym = r.array("pseudonym")?;
        let option = r.option()?;
        let partition = u32::from_be_bytes(r.array("partition")?);
        let offset = u64::from_be_bytes(r.array("offset")?);
        let nonce = r.array("nonce")?;
        if r.remaining() != 0 {
            return Err(LeafError::TrailingBytes(r.remaining()));
        }
        Ok(Self {
            election,
            pseudonym,
            option,
            partition,
            offset,
            nonce,
        })
    }
}

/// `SHA-256(0x00 || leaf)` of already encoded leaf bytes (RFC 6962 §2.1).
pub fn leaf_hash_of(leaf: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([LEAF_HASH_PREFIX]);
    h.update(leaf);
    h.finalize().into()
}

/// The leaf hash a receipt names, if `receipt` is exactly 64 lowercase hex digits (the only
/// spelling we hand out, so a lookup key has one form).
pub fn parse_receipt(receipt: &str) -> Option<[u8; 32]> {
    if receipt.len() != RECEIPT_HEX_LEN
        || !receipt
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(receipt, &mut out).ok()?;
    Some(out)
}

from_wire_error!(LeafError);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const AUDIT_KEY: &[u8] = b"test-only VOTES_AUDIT_KEY";

    // Computed independently with Python's `hmac`, `hashlib` and `struct` modules for the
    // election "final-2026", voter 42, option "blue", partition 3, offset 123456789 and the
    // nonce 00 01 … 0f.
    const PSEUDONYM_HEX: &str = "39cd7f07e09d6017f03b985a7d67e842";
    const LEAF_HEX: &str = "01000a66696e616c2d3230323639cd7f07e09d6017f03b985a7d67e8420004\
                            626c75650000000300000000075bcd15000102030405060708090a0b0c0d0e0f";
    const RECEIPT: &str = "81335a0b7db6187f332f3b1d4e711b809ebfcc64b20863c8f482ee0e183618f2";

    fn election() -> ElectionId {
        ElectionId::new("final-2026").unwrap()
    }

    fn sample() -> Leaf {
        let mut nonce = [0u8; 16];
        for (i, b) in nonce.iter_mut().enumerate() {
            *b = i as u8;
        }
        Leaf {
            election: election(),
            pseudonym: pseudonym(AUDIT_KEY, &election(), VoterId(42)),
            option: OptionId::new("blue").unwrap(),
            partition: 3,
            offset: 123_456_789,
            nonce,
        }
    }

    #[test]
    fn matches_the_independent_vector() {
        let leaf = sample();
        assert_eq!(hex::encode(leaf.pseudonym), PSEUDONYM_HEX);
        assert_eq!(hex::encode(leaf.canonical_bytes()), LEAF_HEX);
        assert_eq!(leaf.encoded_len(), LEAF_HEX.len() / 2);
        assert_eq!(leaf.receipt_hex(), RECEIPT);
        assert_eq!(parse_receipt(RECEIPT), Some(leaf.leaf_hash()));
        assert_eq!(Leaf::decode(&hex::decode(LEAF_HEX).unwrap()), Ok(leaf));
    }

    #[test]
    fn pseudonyms_separate_elections_voters_and_keys() {
        let a = ElectionId::new("a").unwrap();
        let b = ElectionId::new("b").unwrap();
        let p = pseudonym(AUDIT_KEY, &a, VoterId(1));
        assert_eq!(p, pseudonym(AUDIT_KEY, &a, VoterId(1)));
        assert_ne!(p, pseudonym(AUDIT_KEY, &b, VoterId(1)));
        assert_ne!(p, pseudonym(AUDIT_KEY, &a, VoterId(2)));
        assert_ne!(p, pseudonym(b"another key", &a, VoterId(1)));
    }

    #[test]
    #[should_panic(expected = "VOTES_AUDIT_KEY")]
    fn an_empty_audit_key_is_a_bug() {
        pseudonym(b"", &election(), VoterId(1));
    }

    #[test]
    fn the_leaf_hash_is_domain_separated() {
        let leaf = sample();
        let plain: [u8; 32] = Sha256::digest(leaf.canonical_bytes()).into();
        assert_ne!(leaf.leaf_hash(), plain);
        assert_eq!(leaf.leaf_hash(), leaf_hash_of(&leaf.canonical_bytes()));
    }

    #[test]
    fn rejects_damaged_leaves_precisely() {
        let bytes = sample().canonical_bytes();
        assert_eq!(Leaf::decode(&[]), Err(LeafError::Empty));
        let mut v2 = bytes.clone();
        v2[0] = 2;
        assert_eq!(Leaf::decode(&v2), Err(LeafError::UnsupportedVersion(2)));
        assert_eq!(
            Leaf::decode(&bytes[..bytes.len() - 1]),
            Err(LeafError::Truncated("nonce"))
        );
        assert_eq!(
            Leaf::decode(&bytes[..1]),
            Err(LeafError::Truncated("election"))
        );
        let mut long = bytes.clone();
        long.extend_from_slice(&[0, 0]);
        assert_eq!(Leaf::decode(&long), Err(LeafError::TrailingBytes(2)));
        let mut upper = bytes.clone();
        upper[3] = b'F';
        assert!(matches!(
            Leaf::decode(&upper),
            Err(LeafError::InvalidId {
                field: "election",
                ..
            })
        ));
        let mut huge = bytes.clone();
        huge[1..3].copy_from_slice(&u16::MAX.to_be_bytes());
        assert!(matches!(
            Leaf::decode(&huge),
            Err(LeafError::InvalidId {
                field: "election",
                source: IdError::TooLong { .. }
            })
        ));
        let mut empty_option = vec![1, 0, 1, b'e'];
        empty_option.extend_from_slice(&[0; 16]);
        empty_option.extend_from_slice(&[0, 0]);
        empty_option.extend_from_slice(&[0; 28]);
        assert!(matches!(
            Leaf::decode(&empty_option),
            Err(LeafError::InvalidId {
                field: "option",
                source: IdError::Empty { .. }
            })
        ));
    }

    #[test]
    fn receipts_have_one_spelling() {
        assert_eq!(parse_receipt(&RECEIPT.to_uppercase()), None);
        assert_eq!(parse_receipt(&RECEIPT[..63]), None);
        assert_eq!(parse_receipt(&format!("{RECEIPT}0")), None);
        assert_eq!(parse_receipt(&format!("{}g", &RECEIPT[..63])), None);
        assert_eq!(parse_receipt(""), None);
        // 64 bytes but not 64 characters of ASCII.
        assert_eq!(parse_receipt(&format!("é{}", &RECEIPT[..62])), None);
    }

    fn any_leaf() -> impl Strategy<Value = Leaf> {
        (
            "[a-z0-9-]{1,64}",
            any::<[u8; 16]>(),
            "[a-z0-9-]{1,32}",
            any::<u32>(),
            any::<u64>(),
            any::<[u8; 16]>(),
        )
            .prop_map(|(e, pseudonym, o, partition, offset, nonce)| Leaf {
                election: ElectionId::new(e).unwrap(),
                pseudonym,
                option: OptionId::new(o).unwrap(),
                partition,
                offset,
                nonce,
            })
    }

    proptest! {
        #[test]
        fn any_leaf_round_trips(leaf in any_leaf()) {
            let bytes = leaf.canonical_bytes();
            prop_assert!(bytes.len() <= LEAF_MAX_LEN);
            prop_assert_eq!(Leaf::decode(&bytes), Ok(leaf.clone()));
            prop_assert_eq!(parse_receipt(&leaf.receipt_hex()), Some(leaf.leaf_hash()));
        }

        #[test]
        fn distinct_leaves_have_distinct_bytes(a in any_leaf(), b in any_leaf()) {
            prop_assert_eq!(a == b, a.canonical_bytes() == b.canonical_bytes());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(leaf) = Leaf::decode(&bytes) {
                // Whatever decodes is canonical: it re-encodes to the very same bytes.
                prop_assert_eq!(leaf.canonical_bytes(), bytes);
            }
        }
    }
}
