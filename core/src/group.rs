//! What the serving nodes learn from their Kafka consumer group: which partitions each member
//! was assigned ([`parse_assignment`]) and where that member listens for forwarded votes
//! ([`MemberTag`], carried in its `client.id`). Together they give every node the
//! partition → node/core map it forwards by, without a coordination service of its own.
//!
//! The assignment is Kafka's `ConsumerProtocolAssignment` (the `member_assignment` bytes of a
//! DescribeGroups answer for protocol type "consumer"), versions 0 to 3, all non-flexible and
//! with the same fields, big-endian:
//!
//! | field                | encoding                                              |
//! |----------------------|-------------------------------------------------------|
//! | version              | i16                                                   |
//! | assigned_partitions  | i32 count of { topic: i16 + UTF-8, partitions: i32 count of i32 } |
//! | user_data            | i32 length + bytes, `-1` for null                     |
//!
//! The bytes come from the broker, which relays what the group leader (any member) wrote, so
//! the parser bounds every count by the bytes left before allocating and is strict: a map
//! built from a misread assignment would forward votes to the wrong node.

use std::net::SocketAddr;

use crate::record::NODE_MAX;
use crate::wire::{Reader, WireError};

/// Versions whose layout [`parse_assignment`] knows; Kafka added no field to this message in
/// versions 1 to 3 (only to the subscription).
pub const ASSIGNMENT_VERSIONS: std::ops::RangeInclusive<i16> = 0..=3;
/// Kafka's own limit on topic names.
pub const TOPIC_MAX: usize = 249;
/// Smallest encoded topic entry: a one-byte name and an empty partition list. Dividing the
/// bytes left by it bounds a count before any allocation.
const TOPIC_ENTRY_MIN: usize = 2 + 1 + 4;
const PARTITION_LEN: usize = 4;
const NULL_BYTES: i32 = -1;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssignmentError {
    #[error("assignment version {0} is not supported")]
    UnsupportedVersion(i16),
    #[error("assignment ends inside field `{0}`")]
    Truncated(&'static str),
    #[error("assignment field `{field}` has the negative length {len}")]
    NegativeLength { field: &'static str, len: i32 },
    #[error("assignment names a topic that is not a valid Kafka topic name")]
    InvalidTopic,
    #[error("assignment names the negative partition {0}")]
    NegativePartition(i32),
    #[error("assignment has {0} trailing bytes")]
    TrailingBytes(usize),
}

impl From<WireError> for AssignmentError {
    fn from(e: WireError) -> Self {
        match e {
            WireError::Truncated(field) => AssignmentError::Truncated(field),
            // Only topic names are read as strings (no id is read here).
            WireError::TooLong { .. } | WireError::NotText(_) | WireError::InvalidId { .. } => {
                AssignmentError::InvalidTopic
            }
        }
    }
}

/// Kafka's rule for topic names (`Topic.validate`), so an assignment names only topics that
/// can exist.
fn topic_ok(topic: &str) -> bool {
    (1..=TOPIC_MAX).contains(&topic.len())
        && topic != "."
        && topic != ".."
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A non-negative i32 count of items of at least `item_min` bytes each, bounded by the bytes
/// left.
fn count(
    r: &mut Reader<'_>,
    field: &'static str,
    item_min: usize,
) -> Result<usize, AssignmentError> {
    let len = i32::from_be_bytes(r.array(field)?);
    let n = usize::try_from(len).map_err(|_| AssignmentError::NegativeLength { field, len })?;
    if n > r.remaining() / item_min {
        return Err(AssignmentError::Truncated(field));
    }
    Ok(n)
}

/// The topics and partitions of one member's assignment, in the order the leader wrote them.
/// `user_data` is checked for shape and dropped: the assignors the nodes use put nothing there
/// that the map needs. Empty input is a member that has no assignment yet.
pub fn parse_assignment(bytes: &[u8]) -> Result<Vec<(String, Vec<i32>)>, AssignmentError> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let mut r = Reader::at(bytes, 0);
    let version = i16::from_be_bytes(r.array("version")?);
    if !ASSIGNMENT_VERSIONS.contains(&version) {
        return Err(AssignmentError::UnsupportedVersion(version));
    }
    let topics = count(&mut r, "assigned_partitions", TOPIC_ENTRY_MIN)?;
    let mut out = Vec::with_capacity(topics);
    for _ in 0..topics {
        let topic = r.str("topic", TOPIC_MAX)?;
        if !topic_ok(topic) {
            return Err(AssignmentError::InvalidTopic);
        }
        let n = count(&mut r, "partitions", PARTITION_LEN)?;
        let mut partitions = Vec::with_capacity(n);
        for _ in 0..n {
            let p = i32::from_be_bytes(r.array("partitions")?);
            if p < 0 {
                return Err(AssignmentError::NegativePartition(p));
            }
            partitions.push(p);
        }
        out.push((topic.to_owned(), partitions));
    }
    let len = i32::from_be_bytes(r.array("user_data")?);
    if len != NULL_BYTES {
        let n = usize::try_from(len).map_err(|_| AssignmentError::NegativeLength {
            field: "user_data",
            len,
        })?;
        r.take("user_data", n)?;
    }
    if r.remaining() != 0 {
        return Err(AssignmentError::TrailingBytes(r.remaining()));
    }
    Ok(out)
}

/// The assignment in `version`'s layout, with null `user_data`.
///
/// # Panics
/// When `version` is not one of [`ASSIGNMENT_VERSIONS`], a topic name is not valid, a
/// partition is negative, or a list is longer than i32::MAX: what is encoded is what
/// [`parse_assignment`] accepts, and the callers (tests, the fuzz property) build it so.
pub fn encode_assignment<T: AsRef<str>, P: AsRef<[i32]>>(
    version: i16,
    assignment: &[(T, P)],
) -> Vec<u8> {
    assert!(ASSIGNMENT_VERSIONS.contains(&version), "a known version");
    let mut out = Vec::new();
    out.extend_from_slice(&version.to_be_bytes());
    let topics = i32::try_from(assignment.len()).expect("fewer than i32::MAX topics");
    out.extend_from_slice(&topics.to_be_bytes());
    for (topic, partitions) in assignment {
        let (topic, partitions) = (topic.as_ref(), partitions.as_ref());
        assert!(topic_ok(topic), "a valid topic name");
        let len = i16::try_from(topic.len()).expect("topic names are short");
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(topic.as_bytes());
        let n = i32::try_from(partitions.len()).expect("fewer than i32::MAX partitions");
        out.extend_from_slice(&n.to_be_bytes());
        for &p in partitions {
            assert!(p >= 0, "partitions are not negative");
            out.extend_from_slice(&p.to_be_bytes());
        }
    }
    out.extend_from_slice(&NULL_BYTES.to_be_bytes());
    out
}

const CLIENT_ID_PREFIX: &str = "votes-serve/";

/// What a serving member of the group puts in its Kafka `client.id`, so that every node can
/// tell from the group description where each partition's owner takes forwarded votes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MemberTag {
    pub node: String,
    pub core: u16,
    /// The owner's `--internal` listener.
    pub internal: SocketAddr,
}

/// A node id as a tag can carry it: the rule of a node id, and no `/`, which separates the
/// fields.
fn node_ok(node: &str) -> bool {
    (1..=NODE_MAX).contains(&node.len()) && !node.contains('/')
}

impl MemberTag {
    /// `votes-serve/{node}/{core}/{internal}`, the address as `SocketAddr` displays it
    /// (IPv6 in brackets).
    ///
    /// # Panics
    /// When `node` is empty, longer than [`NODE_MAX`] or holds a `/`: the node id is
    /// validated at start-up.
    pub fn client_id(&self) -> String {
        assert!(node_ok(&self.node), "node id validated at start-up");
        format!(
            "{CLIENT_ID_PREFIX}{}/{}/{}",
            self.node, self.core, self.internal
        )
    }

    /// The tag a `client.id` carries; `None` for anything that is not exactly what
    /// [`Self::client_id`] writes (other clients of the cluster, other spellings of a number
    /// or an address), so two nodes never read one client id two ways.
    pub fn parse(client_id: &str) -> Option<MemberTag> {
        let rest = client_id.strip_prefix(CLIENT_ID_PREFIX)?;
        let (node, rest) = rest.split_once('/')?;
        let (core, internal) = rest.split_once('/')?;
        if !node_ok(node) {
            return None;
        }
        let tag = MemberTag {
            node: node.to_owned(),
            core: core.parse().ok()?,
            internal: internal.parse().ok()?,
        };
        (tag.client_id() == client_id).then_some(tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn pins_the_layout_of_version_0() {
        let bytes = encode_assignment(0, &[("votes", vec![0, 3])]);
        let mut expected = vec![0, 0, 0, 0, 0, 1, 0, 5];
        expected.extend_from_slice(b"votes");
        expected.extend_from_slice(&[0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 3]);
        expected.extend_from_slice(&[0xff; 4]);
        assert_eq!(bytes, expected);
        assert_eq!(
            parse_assignment(&bytes),
            Ok(vec![("votes".to_owned(), vec![0, 3])])
        );
    }

    #[test]
    fn reads_every_version_and_skips_user_data() {
        let assignment = vec![
            ("p-votes".to_owned(), vec![2, 0, 1]),
            ("p-elections".to_owned(), vec![]),
        ];
        for version in ASSIGNMENT_VERSIONS {
            let mut bytes = encode_assignment(version, &assignment);
            assert_eq!(parse_assignment(&bytes), Ok(assignment.clone()));
            bytes.truncate(bytes.len() - 4);
            bytes.extend_from_slice(&[0, 0, 0, 3, 9, 9, 9]);
            assert_eq!(parse_assignment(&bytes), Ok(assignment.clone()));
            bytes.truncate(bytes.len() - 7);
            bytes.extend_from_slice(&[0, 0, 0, 0]);
            assert_eq!(parse_assignment(&bytes), Ok(assignment.clone()));
        }
    }

    #[test]
    fn a_member_without_assignment_has_no_partitions() {
        assert_eq!(parse_assignment(&[]), Ok(vec![]));
        let none: &[(&str, &[i32])] = &[];
        assert_eq!(parse_assignment(&encode_assignment(3, none)), Ok(vec![]));
    }

    #[test]
    fn rejects_damaged_assignments_precisely() {
        let good = encode_assignment(1, &[("votes", vec![7])]);
        let mut v4 = good.clone();
        v4[1] = 4;
        assert_eq!(
            parse_assignment(&v4),
            Err(AssignmentError::UnsupportedVersion(4))
        );
        let mut neg = good.clone();
        neg[0] = 0xff;
        assert_eq!(
            parse_assignment(&neg),
            Err(AssignmentError::UnsupportedVersion(i16::from_be_bytes([
                0xff, 1
            ])))
        );
        assert_eq!(
            parse_assignment(&[0]),
            Err(AssignmentError::Truncated("version"))
        );
        for cut in 1..good.len() {
            assert!(
                matches!(
                    parse_assignment(&good[..cut]),
                    Err(AssignmentError::Truncated(_))
                ),
                "cut at {cut}"
            );
        }
        let mut long = good.clone();
        long.push(0);
        assert_eq!(
            parse_assignment(&long),
            Err(AssignmentError::TrailingBytes(1))
        );
        let mut huge = good.clone();
        huge[2..6].copy_from_slice(&i32::MAX.to_be_bytes());
        assert_eq!(
            parse_assignment(&huge),
            Err(AssignmentError::Truncated("assigned_partitions"))
        );
        let mut negative_count = good.clone();
        negative_count[2..6].copy_from_slice(&(-1i32).to_be_bytes());
        assert_eq!(
            parse_assignment(&negative_count),
            Err(AssignmentError::NegativeLength {
                field: "assigned_partitions",
                len: -1
            })
        );
        let mut slash = good.clone();
        slash[8] = b'/';
        assert_eq!(parse_assignment(&slash), Err(AssignmentError::InvalidTopic));
        let mut null_topic = good.clone();
        null_topic[6..8].copy_from_slice(&(-1i16).to_be_bytes());
        assert_eq!(
            parse_assignment(&null_topic),
            Err(AssignmentError::InvalidTopic)
        );
        let mut negative_partition = good.clone();
        negative_partition[17] = 0x80;
        assert_eq!(
            parse_assignment(&negative_partition),
            Err(AssignmentError::NegativePartition(i32::from_be_bytes([
                0x80, 0, 0, 7
            ])))
        );
        let mut user_data = good.clone();
        let end = user_data.len();
        user_data[end - 4..].copy_from_slice(&(-2i32).to_be_bytes());
        assert_eq!(
            parse_assignment(&user_data),
            Err(AssignmentError::NegativeLength {
                field: "user_data",
                len: -2
            })
        );
    }

    #[test]
    fn topic_names_follow_kafka() {
        for ok in ["votes", "a", "A.b_c-9", &"t".repeat(TOPIC_MAX)] {
            assert!(topic_ok(ok), "{ok:?}");
        }
        for bad in ["", ".", "..", "a b", "a/b", "é", &"t".repeat(TOPIC_MAX + 1)] {
            assert!(!topic_ok(bad), "{bad:?}");
        }
    }

    fn tag(node: &str, internal: &str) -> MemberTag {
        MemberTag {
            node: node.into(),
            core: 3,
            internal: internal.parse().unwrap(),
        }
    }

    #[test]
    fn member_tags_round_trip_through_client_ids() {
        let v4 = tag("node-a", "10.0.0.7:7070");
        assert_eq!(v4.client_id(), "votes-serve/node-a/3/10.0.0.7:7070");
        assert_eq!(MemberTag::parse(&v4.client_id()), Some(v4));
        let v6 = tag("n", "[2001:db8::1]:7070");
        assert_eq!(v6.client_id(), "votes-serve/n/3/[2001:db8::1]:7070");
        assert_eq!(MemberTag::parse(&v6.client_id()), Some(v6));
        let longest = tag(&"n".repeat(NODE_MAX), "[::]:1");
        assert_eq!(MemberTag::parse(&longest.client_id()), Some(longest));
    }

    #[test]
    fn member_tags_are_strict() {
        let too_long = format!("votes-serve/{}/3/10.0.0.7:7070", "n".repeat(NODE_MAX + 1));
        for bad in [
            "",
            "rdkafka",
            "votes-serve/",
            "votes-serve//3/10.0.0.7:7070",
            "votes-serve/a/b/3/10.0.0.7:7070",
            "votes-serve/a/3/10.0.0.7",
            "votes-serve/a/3/10.0.0.7:7070/",
            "votes-serve/a/65536/10.0.0.7:7070",
            "votes-serve/a/+3/10.0.0.7:7070",
            "votes-serve/a/03/10.0.0.7:7070",
            "votes-serve/a/3/[2001:0db8::1]:7070",
            "votes-serve/a/3/2001:db8::1:7070",
            "votes-serve/a/3/host:7070",
            "votes-serve/a/3",
            "Votes-serve/a/3/10.0.0.7:7070",
            &too_long,
        ] {
            assert_eq!(MemberTag::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    #[should_panic(expected = "node id validated at start-up")]
    fn a_node_with_a_slash_is_a_caller_bug() {
        tag("a/b", "10.0.0.7:7070").client_id();
    }

    proptest! {
        #[test]
        fn any_assignment_round_trips(
            version in ASSIGNMENT_VERSIONS,
            assignment in proptest::collection::vec(
                ("[a-z][a-zA-Z0-9._-]{0,39}", proptest::collection::vec(0..i32::MAX, 0..20)),
                0..6,
            ),
        ) {
            let bytes = encode_assignment(version, &assignment);
            prop_assert_eq!(parse_assignment(&bytes), Ok(assignment));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse_assignment(&bytes);
        }

        #[test]
        fn any_member_tag_round_trips(
            node in "[^/]{1,16}",
            core in any::<u16>(),
            internal in any::<SocketAddr>(),
        ) {
            let mut internal = internal;
            if let SocketAddr::V6(v6) = &mut internal {
                // Neither appears in the client id: a tag names a listener, not a route.
                v6.set_flowinfo(0);
                v6.set_scope_id(0);
            }
            let tag = MemberTag { node, core, internal };
            prop_assert_eq!(MemberTag::parse(&tag.client_id()), Some(tag));
        }
    }
}
