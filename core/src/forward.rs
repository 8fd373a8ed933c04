//! Frames of the node-to-node forwarding link (`--internal`, docs/design.md §4.1).
//!
//! A node that takes a vote for a partition another node owns forwards it over one persistent
//! TCP connection; the owner answers once its Kafka transaction committed. Every frame is a
//! big-endian `u32` body length, at most [`FRAME_MAX`], then the body, whose first byte is the
//! kind:
//!
//! | kind | frame       | body after the kind byte                                               |
//! |------|-------------|------------------------------------------------------------------------|
//! | 4    | `Challenge` | `b"VOTESFWD"`, version `2`, listener node (u16 + 1..=64), nonce (16)    |
//! | 1    | `Hello`     | `b"VOTESFWD"`, version `2`, node (u16 + 1..=64), nonce (16), tag (32)   |
//! | 2    | `Vote`      | id u64, partition u32, election (u16 + id), voter u64, option (u16 + id), received_at_ms u64, nonce (16) |
//! | 3    | `Answer`    | id u64, outcome u8: `0` partition u32 + offset u64, `1` code (u16 + name) |
//!
//! A link is secured one of two ways. With mutual TLS (production) the frames travel as above
//! inside the TLS stream, which authenticates both ends by the fleet's CA and protects every
//! byte. Without TLS (development), the owner opens with a `Challenge`, the connecting side
//! answers with a `Hello` tagged under the fleet's forwarding key, and every later frame is
//! sealed by a [`LinkSeal`]: its length prefix counts a 16-byte tag after the body, an
//! HMAC-SHA-256 under a key of this connection alone over the frame's direction, its sequence
//! number and its body. A frame forged without the key, replayed (on this link or another),
//! reordered, reflected back to its sender or modified fails its tag.
//!
//! The decoder is sans-IO and streaming: [`decode_frame`] says how many bytes a whole frame
//! took, or that more bytes are needed. It is strict (one encoding per frame, no trailing
//! bytes, ids validated as in [`crate::record`]), and every defect is a typed error after which
//! the caller closes the link.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::api_error::ErrorCode;
use crate::ids::{ELECTION_ID_MAX, IdError, OPTION_ID_MAX, VoterId};
use crate::record::NODE_MAX;
use crate::vote::{VoteIntent, VoteOutcome};
use crate::wire::{Reader, WireError, from_wire_error, put_str};

/// The first bytes of a `Hello` body after its kind: a peer that is not a forwarding link (a
/// stray HTTP client, a port scan) fails here rather than deep inside a field.
pub const HELLO_MAGIC: [u8; 8] = *b"VOTESFWD";
/// 2: the challenge names the listening node, the hello's tag covers both nodes and every
/// later frame is sealed (version 1 trusted every frame after the hello).
pub const FORWARD_VERSION: u8 = 2;
/// Domain separation of the `Hello` tag and of the link key, so a MAC made with the same key
/// for another purpose can never pass for either.
const HELLO_CONTEXT: &[u8] = b"votes-forward v2 hello\0";
const SESSION_CONTEXT: &[u8] = b"votes-forward v2 link\0";
/// Bytes of a sealed frame's tag (HMAC-SHA-256 truncated to 128 bits).
pub const SEAL_TAG_LEN: usize = 16;

const KIND_HELLO: u8 = 1;
const KIND_VOTE: u8 = 2;
const KIND_ANSWER: u8 = 3;
const KIND_CHALLENGE: u8 = 4;
const OUTCOME_ACCEPTED: u8 = 0;
const OUTCOME_REJECTED: u8 = 1;
/// Bound of an error code's name on the wire; the longest name today has 22 bytes.
const CODE_NAME_MAX: usize = 32;

const LEN_PREFIX: usize = 4;
const CHALLENGE_MAX_LEN: usize = 1 + HELLO_MAGIC.len() + 1 + (2 + NODE_MAX) + 16;
const HELLO_MAX_LEN: usize = 1 + HELLO_MAGIC.len() + 1 + (2 + NODE_MAX) + 16 + 32;
const VOTE_MAX_LEN: usize = 1 + 8 + 4 + (2 + ELECTION_ID_MAX) + 8 + (2 + OPTION_ID_MAX) + 8 + 16;
const ANSWER_MAX_LEN: usize = 1 + 8 + 1 + max(4 + 8, 2 + CODE_NAME_MAX);

/// Largest body a peer may announce (256 today). The largest body is a `Vote`; the slack up to
/// the next power of two lets a later version add a field without every reader's bound having
/// to move in the same release.
pub const FRAME_MAX: usize = VOTE_MAX_LEN.next_power_of_two();

const _: () = assert!(
    HELLO_MAX_LEN <= FRAME_MAX
        && CHALLENGE_MAX_LEN <= FRAME_MAX
        && ANSWER_MAX_LEN + SEAL_TAG_LEN <= FRAME_MAX
        && VOTE_MAX_LEN + SEAL_TAG_LEN <= FRAME_MAX
);

const fn max(a: usize, b: usize) -> usize {
    if a > b { a } else { b }
}

/// Why bytes from a peer are not a frame; the link is closed after any of them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForwardError {
    #[error("frame length {len} exceeds {FRAME_MAX}")]
    TooLarge { len: u32 },
    #[error("frame body is empty")]
    Empty,
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("frame ends inside field `{0}`")]
    Truncated(&'static str),
    #[error("frame has {0} trailing bytes")]
    TrailingBytes(usize),
    #[error("hello does not start with the forwarding magic")]
    BadMagic,
    #[error("forwarding version {0} is not supported (expected {FORWARD_VERSION})")]
    UnsupportedVersion(u8),
    #[error("node name is empty, longer than {NODE_MAX} bytes or not UTF-8")]
    InvalidNode,
    #[error("frame field `{field}` is invalid: {source}")]
    InvalidId {
        field: &'static str,
        #[source]
        source: IdError,
    },
    #[error("unknown answer outcome {0}")]
    UnknownOutcome(u8),
    #[error("answer carries an unknown error code")]
    UnknownErrorCode,
    #[error("hello tag does not verify")]
    BadTag,
    #[error("a sealed frame of {len} bytes cannot hold its tag")]
    SealTooShort { len: usize },
    #[error("frame seal does not verify (forged, replayed, reordered, reflected or modified)")]
    BadSeal,
}

from_wire_error!(ForwardError);

fn node_ok(node: &str) -> bool {
    (1..=NODE_MAX).contains(&node.len())
}

/// What both handshake frames start with (the listener's challenge and the dialer's hello):
/// their kind, the magic and version [`decode_preamble`] checks, the sender's node, its nonce.
fn put_greeting(out: &mut Vec<u8>, kind: u8, node: &str, nonce: &[u8; 16]) {
    assert!(node_ok(node), "node id validated at start-up");
    out.push(kind);
    out.extend_from_slice(&HELLO_MAGIC);
    out.push(FORWARD_VERSION);
    put_str(out, node);
    out.extend_from_slice(nonce);
}

/// The fleet's forwarding key of a plaintext link, from `VOTES_FORWARD_KEY`: a secret of its
/// own, not the voter-token key every token issuer holds, so issuing tokens gives no way onto
/// the links.
pub fn derive_key(secret: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(b"votes node-to-node forwarding v2");
    mac.finalize().into_bytes().to_vec()
}

/// The first frame of the listening side: who it is and a fresh nonce the connecting side's
/// [`Hello`] must sign, so a hello recorded on the wire cannot open another link and a
/// challenge relayed from another node's listener is refused by the node that meant to reach
/// this one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    pub node: String,
    pub nonce: [u8; 16],
}

/// The connecting side's answer to the [`Challenge`]: who it is, proven with the shared
/// forwarding key over both nonces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    pub node: String,
    pub nonce: [u8; 16],
    pub tag: [u8; 32],
}

impl Hello {
    /// A hello from `node` answering `challenge` (from the listening node it names), tagged
    /// with `key`; `nonce` must be fresh random bytes.
    ///
    /// # Panics
    /// When `node` or the challenge's node is empty or longer than [`NODE_MAX`]: node ids are
    /// validated at start-up and by the decoder.
    pub fn sign(key: &[u8], node: &str, nonce: [u8; 16], challenge: &Challenge) -> Hello {
        let mac = hello_mac(key, node, &nonce, challenge).expect("node id validated at start-up");
        Hello {
            node: node.to_owned(),
            nonce,
            tag: mac.finalize().into_bytes().into(),
        }
    }

    /// Checks the tag against `key` and the challenge this side sent (its own node and nonce),
    /// in constant time.
    pub fn verify(&self, key: &[u8], challenge: &Challenge) -> Result<(), ForwardError> {
        let mac =
            hello_mac(key, &self.node, &self.nonce, challenge).ok_or(ForwardError::InvalidNode)?;
        mac.verify_slice(&self.tag)
            .map_err(|_| ForwardError::BadTag)
    }
}

/// The MAC under `context` over the length-prefixed connecting node, the length-prefixed
/// listening node (so a hello is bound to the direction and the listener it was made for), the
/// connecting side's nonce and the challenge's; `None` for a node name that could not be on
/// the wire (the prefixes keep the concatenation unambiguous).
fn link_mac(
    key: &[u8],
    context: &[u8],
    node: &str,
    nonce: &[u8; 16],
    challenge: &Challenge,
) -> Option<Hmac<Sha256>> {
    if !node_ok(node) || !node_ok(&challenge.node) {
        return None;
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(context);
    let mut nodes = Vec::with_capacity(4 + node.len() + challenge.node.len());
    put_str(&mut nodes, node);
    put_str(&mut nodes, &challenge.node);
    mac.update(&nodes);
    mac.update(nonce);
    mac.update(&challenge.nonce);
    Some(mac)
}

fn hello_mac(
    key: &[u8],
    node: &str,
    nonce: &[u8; 16],
    challenge: &Challenge,
) -> Option<Hmac<Sha256>> {
    link_mac(key, HELLO_CONTEXT, node, nonce, challenge)
}

/// Which end of a link a [`LinkSeal`] belongs to: the edge connects and sends votes, the owner
/// listens and sends answers. Each direction's frames are tagged with its own label, so a
/// frame reflected back to its sender never verifies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkEnd {
    Edge,
    Owner,
}

impl LinkEnd {
    fn label(self) -> u8 {
        match self {
            LinkEnd::Edge => b'E',
            LinkEnd::Owner => b'O',
        }
    }

    fn other(self) -> LinkEnd {
        match self {
            LinkEnd::Edge => LinkEnd::Owner,
            LinkEnd::Owner => LinkEnd::Edge,
        }
    }
}

/// The per-frame authentication of one plaintext link, after its hello verified: a key of
/// this connection alone (from the fleet key and both nonces), and a sequence number per
/// direction that both ends count without sending it.
pub struct LinkSeal {
    end: LinkEnd,
    /// Keyed once per link; each frame's MAC starts from a copy.
    mac: Hmac<Sha256>,
    sent: u64,
    received: u64,
}

impl std::fmt::Debug for LinkSeal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkSeal")
            .field("end", &self.end)
            .field("sent", &self.sent)
            .field("received", &self.received)
            .finish_non_exhaustive()
    }
}

impl LinkSeal {
    /// The seal of `end` of the link whose handshake was `challenge` then `hello` under `key`.
    /// Call it on the owner only after [`Hello::verify`] passed.
    ///
    /// # Panics
    /// When a node name could not be on the wire (the decoder and start-up check them).
    pub fn new(key: &[u8], end: LinkEnd, challenge: &Challenge, hello: &Hello) -> LinkSeal {
        let session = link_mac(key, SESSION_CONTEXT, &hello.node, &hello.nonce, challenge)
            .expect("node ids validated before a link is sealed")
            .finalize()
            .into_bytes();
        LinkSeal {
            end,
            mac: Hmac::<Sha256>::new_from_slice(&session).expect("HMAC takes any key length"),
            sent: 0,
            received: 0,
        }
    }

    fn tag(&self, end: LinkEnd, seq: u64, body: &[u8]) -> Hmac<Sha256> {
        let mut mac = self.mac.clone();
        mac.update(&[end.label()]);
        mac.update(&seq.to_be_bytes());
        mac.update(body);
        mac
    }

    /// Appends `frame`, sealed as the next frame this end sends, to `out`.
    pub fn seal_into(&mut self, frame: &Frame, out: &mut Vec<u8>) {
        let start = out.len();
        frame.encode_into(out);
        let tag = self.tag(self.end, self.sent, &out[start + LEN_PREFIX..]);
        out.extend_from_slice(&tag.finalize().into_bytes()[..SEAL_TAG_LEN]);
        let len = out.len() - start - LEN_PREFIX;
        assert!(len <= FRAME_MAX, "a sealed frame fits FRAME_MAX");
        let prefix = u32::try_from(len).expect("FRAME_MAX fits a u32");
        out[start..start + LEN_PREFIX].copy_from_slice(&prefix.to_be_bytes());
        self.sent += 1;
    }

    /// Like [`decode_frame`] for the next frame the other end sent: its tag is checked (in
    /// constant time) before any field is read. After an error the link must be closed: the
    /// sequence no longer matches.
    pub fn open(&mut self, buf: &[u8]) -> Result<Option<(Frame, usize)>, ForwardError> {
        let Some(sealed) = frame_body(buf)? else {
            return Ok(None);
        };
        let Some(body_len) = sealed.len().checked_sub(SEAL_TAG_LEN).filter(|n| *n > 0) else {
            return Err(ForwardError::SealTooShort { len: sealed.len() });
        };
        let (body, tag) = sealed.split_at(body_len);
        self.tag(self.end.other(), self.received, body)
            .verify_truncated_left(tag)
            .map_err(|_| ForwardError::BadSeal)?;
        let frame = decode_body(body)?;
        self.received += 1;
        Ok(Some((frame, LEN_PREFIX + sealed.len())))
    }
}

/// A vote forwarded to the node that owns its partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForwardedVote {
    /// The sender's request id, echoed by the answer (many votes are in flight per link).
    pub id: u64,
    pub partition: u32,
    pub vote: VoteIntent,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ForwardAnswer {
    /// The `id` of the [`ForwardedVote`] answered.
    pub id: u64,
    /// The owner's verdict.
    pub outcome: VoteOutcome,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    Challenge(Challenge),
    Hello(Hello),
    Vote(ForwardedVote),
    Answer(ForwardAnswer),
}

impl Frame {
    /// Appends the length prefix and the body to `out`, so a writer can batch many frames into
    /// one buffer and one write.
    ///
    /// # Panics
    /// When a `Hello`'s node name is empty or longer than [`NODE_MAX`] (validated at start-up).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; LEN_PREFIX]);
        match self {
            Frame::Challenge(c) => put_greeting(out, KIND_CHALLENGE, &c.node, &c.nonce),
            Frame::Hello(h) => {
                put_greeting(out, KIND_HELLO, &h.node, &h.nonce);
                out.extend_from_slice(&h.tag);
            }
            Frame::Vote(v) => {
                out.push(KIND_VOTE);
                out.extend_from_slice(&v.id.to_be_bytes());
                out.extend_from_slice(&v.partition.to_be_bytes());
                let vote = &v.vote;
                put_str(out, vote.election.as_str());
                out.extend_from_slice(&vote.voter.0.to_be_bytes());
                put_str(out, vote.option.as_str());
                out.extend_from_slice(&vote.received_at_ms.to_be_bytes());
                out.extend_from_slice(&vote.nonce);
            }
            Frame::Answer(a) => {
                out.push(KIND_ANSWER);
                out.extend_from_slice(&a.id.to_be_bytes());
                match a.outcome {
                    VoteOutcome::Accepted { partition, offset } => {
                        out.push(OUTCOME_ACCEPTED);
                        out.extend_from_slice(&partition.to_be_bytes());
                        out.extend_from_slice(&offset.to_be_bytes());
                    }
                    VoteOutcome::Rejected(code) => {
                        out.push(OUTCOME_REJECTED);
                        put_str(out, code.as_str());
                    }
                }
            }
        }
        let body_len = out.len() - start - LEN_PREFIX;
        // Ids are bounded by their types and the node by the assertion above, so only a
        // change of the layout that forgot FRAME_MAX could trip this.
        assert!(body_len <= FRAME_MAX, "every frame fits FRAME_MAX");
        let prefix = u32::try_from(body_len).expect("FRAME_MAX fits a u32");
        out[start..start + LEN_PREFIX].copy_from_slice(&prefix.to_be_bytes());
    }

    /// The frame with its length prefix, in a fresh buffer.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(LEN_PREFIX + FRAME_MAX);
        self.encode_into(&mut out);
        out
    }
}

/// The first frame of `buf` and the bytes it took, or `Ok(None)` while `buf` holds only part
/// of one (the caller reads more and calls again with the longer buffer).
///
/// A length prefix above [`FRAME_MAX`] is an error as soon as its 4 bytes are in, before any
/// byte of the body is awaited, so a peer cannot make the caller buffer more than that.
pub fn decode_frame(buf: &[u8]) -> Result<Option<(Frame, usize)>, ForwardError> {
    let Some(body) = frame_body(buf)? else {
        return Ok(None);
    };
    Ok(Some((decode_body(body)?, LEN_PREFIX + body.len())))
}

/// The bytes the first length prefix of `buf` announces, once all are in.
fn frame_body(buf: &[u8]) -> Result<Option<&[u8]>, ForwardError> {
    let Some(prefix) = buf.first_chunk::<LEN_PREFIX>() else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(*prefix);
    let body_len = match usize::try_from(len) {
        Ok(n) if n <= FRAME_MAX => n,
        _ => return Err(ForwardError::TooLarge { len }),
    };
    Ok(buf.get(LEN_PREFIX..LEN_PREFIX + body_len))
}

fn decode_body(body: &[u8]) -> Result<Frame, ForwardError> {
    let kind = *body.first().ok_or(ForwardError::Empty)?;
    let mut r = Reader::at(body, 1);
    let frame = match kind {
        KIND_CHALLENGE => Frame::Challenge(decode_challenge(&mut r)?),
        KIND_HELLO => Frame::Hello(decode_hello(&mut r)?),
        KIND_VOTE => Frame::Vote(decode_vote(&mut r)?),
        KIND_ANSWER => Frame::Answer(decode_answer(&mut r)?),
        other => return Err(ForwardError::UnknownKind(other)),
    };
    if r.remaining() != 0 {
        return Err(ForwardError::TrailingBytes(r.remaining()));
    }
    Ok(frame)
}

/// The magic and the protocol version that open a challenge and a hello.
fn decode_preamble(r: &mut Reader<'_>) -> Result<(), ForwardError> {
    if r.array::<8>("magic")? != HELLO_MAGIC {
        return Err(ForwardError::BadMagic);
    }
    let [version] = r.array("version")?;
    if version != FORWARD_VERSION {
        return Err(ForwardError::UnsupportedVersion(version));
    }
    Ok(())
}

fn decode_challenge(r: &mut Reader<'_>) -> Result<Challenge, ForwardError> {
    decode_preamble(r)?;
    Ok(Challenge {
        node: decode_node(r)?,
        nonce: r.array("challenge")?,
    })
}

fn decode_node(r: &mut Reader<'_>) -> Result<String, ForwardError> {
    match r.str("node", NODE_MAX) {
        Ok(node) if node_ok(node) => Ok(node.to_owned()),
        Err(WireError::Truncated(field)) => Err(ForwardError::Truncated(field)),
        _ => Err(ForwardError::InvalidNode),
    }
}

fn decode_hello(r: &mut Reader<'_>) -> Result<Hello, ForwardError> {
    decode_preamble(r)?;
    Ok(Hello {
        node: decode_node(r)?,
        nonce: r.array("nonce")?,
        tag: r.array("tag")?,
    })
}

fn decode_vote(r: &mut Reader<'_>) -> Result<ForwardedVote, ForwardError> {
    let id = u64::from_be_bytes(r.array("id")?);
    let partition = u32::from_be_bytes(r.array("partition")?);
    let vote = VoteIntent {
        election: r.election()?,
        voter: VoterId(u64::from_be_bytes(r.array("voter")?)),
        option: r.option()?,
        received_at_ms: u64::from_be_bytes(r.array("received_at_ms")?),
        nonce: r.array("nonce")?,
    };
    Ok(ForwardedVote {
        id,
        partition,
        vote,
    })
}

fn decode_answer(r: &mut Reader<'_>) -> Result<ForwardAnswer, ForwardError> {
    let id = u64::from_be_bytes(r.array("id")?);
    let [outcome] = r.array("outcome")?;
    let outcome = match outcome {
        OUTCOME_ACCEPTED => VoteOutcome::Accepted {
            partition: u32::from_be_bytes(r.array("partition")?),
            offset: u64::from_be_bytes(r.array("offset")?),
        },
        OUTCOME_REJECTED => {
            let name = match r.str("code", CODE_NAME_MAX) {
                Ok(name) => name,
                Err(WireError::Truncated(field)) => return Err(ForwardError::Truncated(field)),
                Err(_) => return Err(ForwardError::UnknownErrorCode),
            };
            let code = ErrorCode::from_name(name).ok_or(ForwardError::UnknownErrorCode)?;
            VoteOutcome::Rejected(code)
        }
        other => return Err(ForwardError::UnknownOutcome(other)),
    };
    Ok(ForwardAnswer { id, outcome })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{ElectionId, OptionId};
    use proptest::prelude::*;

    const KEY: &[u8] = b"test-only forwarding key";

    fn challenge() -> Challenge {
        Challenge {
            node: "node-b".into(),
            nonce: [5; 16],
        }
    }

    fn vote() -> ForwardedVote {
        ForwardedVote {
            id: 9,
            partition: 5,
            vote: VoteIntent {
                election: ElectionId::new("final-2026").unwrap(),
                voter: VoterId(42),
                option: OptionId::new("blue").unwrap(),
                received_at_ms: 1_790_000_000_000,
                nonce: [7; 16],
            },
        }
    }

    fn samples() -> Vec<Frame> {
        vec![
            Frame::Challenge(challenge()),
            Frame::Hello(Hello::sign(KEY, "node-a", [3; 16], &challenge())),
            Frame::Vote(vote()),
            Frame::Answer(ForwardAnswer {
                id: 9,
                outcome: VoteOutcome::Accepted {
                    partition: 5,
                    offset: 1 << 40,
                },
            }),
            Frame::Answer(ForwardAnswer {
                id: 10,
                outcome: VoteOutcome::Rejected(ErrorCode::AlreadyVoted),
            }),
        ]
    }

    /// A vote with the longest ids: the largest vote frame.
    fn longest_vote() -> ForwardedVote {
        let mut v = vote();
        v.vote.election = ElectionId::new("e".repeat(ELECTION_ID_MAX)).unwrap();
        v.vote.option = OptionId::new("o".repeat(OPTION_ID_MAX)).unwrap();
        v
    }

    /// The body of `frame` with a length prefix recomputed for it (for hand-damaged bodies).
    fn framed(body: &[u8]) -> Vec<u8> {
        let mut out = u32::try_from(body.len()).unwrap().to_be_bytes().to_vec();
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn each_kind_round_trips() {
        for frame in samples() {
            let bytes = frame.encode();
            assert!(bytes.len() <= LEN_PREFIX + FRAME_MAX);
            assert_eq!(decode_frame(&bytes), Ok(Some((frame, bytes.len()))));
        }
    }

    #[test]
    fn pins_the_vote_layout_and_the_bound() {
        let mut expected = vec![0, 0, 0, 63, 2];
        expected.extend_from_slice(&9u64.to_be_bytes());
        expected.extend_from_slice(&5u32.to_be_bytes());
        expected.extend_from_slice(&[0, 10]);
        expected.extend_from_slice(b"final-2026");
        expected.extend_from_slice(&42u64.to_be_bytes());
        expected.extend_from_slice(&[0, 4]);
        expected.extend_from_slice(b"blue");
        expected.extend_from_slice(&1_790_000_000_000u64.to_be_bytes());
        expected.extend_from_slice(&[7; 16]);
        assert_eq!(Frame::Vote(vote()).encode(), expected);
        assert_eq!(VOTE_MAX_LEN, 145);
        assert_eq!(FRAME_MAX, 256);
        let longest = Frame::Vote(longest_vote());
        assert_eq!(longest.encode().len(), LEN_PREFIX + VOTE_MAX_LEN);
        let hello = Frame::Hello(Hello::sign(
            KEY,
            &"n".repeat(NODE_MAX),
            [0; 16],
            &challenge(),
        ));
        assert_eq!(hello.encode().len(), LEN_PREFIX + HELLO_MAX_LEN);
    }

    #[test]
    fn batched_frames_decode_one_after_another() {
        let mut buf = Vec::new();
        for frame in samples() {
            frame.encode_into(&mut buf);
        }
        let mut rest = &buf[..];
        let mut decoded = Vec::new();
        while let Some((frame, used)) = decode_frame(rest).unwrap() {
            decoded.push(frame);
            rest = &rest[used..];
        }
        assert!(rest.is_empty());
        assert_eq!(decoded, samples());
    }

    #[test]
    fn a_partial_frame_asks_for_more_at_every_cut() {
        for frame in samples() {
            let bytes = frame.encode();
            for cut in 0..bytes.len() {
                assert_eq!(
                    decode_frame(&bytes[..cut]),
                    Ok(None),
                    "{frame:?} cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn an_oversized_prefix_is_rejected_before_the_body() {
        let len = u32::try_from(FRAME_MAX + 1).unwrap();
        assert_eq!(
            decode_frame(&len.to_be_bytes()),
            Err(ForwardError::TooLarge { len })
        );
        assert_eq!(
            decode_frame(&[0xff; 4]),
            Err(ForwardError::TooLarge { len: u32::MAX })
        );
        // The bound itself is allowed: the frame is just incomplete.
        let len = u32::try_from(FRAME_MAX).unwrap();
        assert_eq!(decode_frame(&len.to_be_bytes()), Ok(None));
    }

    #[test]
    fn unknown_kinds_and_empty_bodies_are_rejected() {
        assert_eq!(decode_frame(&framed(&[])), Err(ForwardError::Empty));
        for kind in [0, 5, 0xff] {
            assert_eq!(
                decode_frame(&framed(&[kind, 0, 0])),
                Err(ForwardError::UnknownKind(kind))
            );
        }
    }

    #[test]
    fn trailing_bytes_inside_a_body_are_rejected() {
        for frame in samples() {
            let bytes = frame.encode();
            let mut body = bytes[LEN_PREFIX..].to_vec();
            body.push(0);
            assert_eq!(
                decode_frame(&framed(&body)),
                Err(ForwardError::TrailingBytes(1))
            );
            // A short body is a defect of the frame, not a partial frame.
            body.truncate(body.len() - 2);
            assert!(matches!(
                decode_frame(&framed(&body)),
                Err(ForwardError::Truncated(_))
            ));
        }
    }

    #[test]
    fn damaged_fields_are_named() {
        let hello = Frame::Hello(Hello::sign(KEY, "node-a", [3; 16], &challenge())).encode();
        let mut magic = hello.clone();
        magic[5] = b'X';
        assert_eq!(decode_frame(&magic), Err(ForwardError::BadMagic));
        let mut version = hello.clone();
        // Version 1 links (no seal) are refused, not misread.
        version[13] = 1;
        assert_eq!(
            decode_frame(&version),
            Err(ForwardError::UnsupportedVersion(1))
        );
        let mut body = vec![KIND_HELLO];
        body.extend_from_slice(&HELLO_MAGIC);
        body.push(FORWARD_VERSION);
        body.extend_from_slice(&[0, 0]);
        body.extend_from_slice(&[0; 48]);
        assert_eq!(decode_frame(&framed(&body)), Err(ForwardError::InvalidNode));

        let mut upper = Frame::Vote(vote()).encode();
        upper[LEN_PREFIX + 15] = b'F';
        assert!(matches!(
            decode_frame(&upper),
            Err(ForwardError::InvalidId {
                field: "election",
                ..
            })
        ));

        let mut body = vec![KIND_ANSWER];
        body.extend_from_slice(&1u64.to_be_bytes());
        body.push(OUTCOME_REJECTED);
        put_str(&mut body, "teapot");
        assert_eq!(
            decode_frame(&framed(&body)),
            Err(ForwardError::UnknownErrorCode)
        );
        body[9] = 2;
        assert_eq!(
            decode_frame(&framed(&body)),
            Err(ForwardError::UnknownOutcome(2))
        );
    }

    #[test]
    fn hello_verifies_only_with_its_key_and_fields() {
        let hello = Hello::sign(KEY, "node-a", [3; 16], &challenge());
        assert_eq!(hello.verify(KEY, &challenge()), Ok(()));
        assert_eq!(
            hello.verify(b"another key", &challenge()),
            Err(ForwardError::BadTag)
        );
        // A hello recorded on one link does not answer another link's challenge.
        let other = Challenge {
            nonce: [8; 16],
            ..challenge()
        };
        assert_eq!(hello.verify(KEY, &other), Err(ForwardError::BadTag));
        // A challenge relayed from another listener: the hello was made for node-b, so node-c
        // (whose challenge the relay showed node-a) refuses it.
        let relayed = Challenge {
            node: "node-c".into(),
            ..challenge()
        };
        assert_eq!(hello.verify(KEY, &relayed), Err(ForwardError::BadTag));
        let mut tag = hello.clone();
        tag.tag[31] ^= 1;
        assert_eq!(tag.verify(KEY, &challenge()), Err(ForwardError::BadTag));
        let mut node = hello.clone();
        node.node = "node-b".into();
        assert_eq!(node.verify(KEY, &challenge()), Err(ForwardError::BadTag));
        let mut nonce = hello.clone();
        nonce.nonce[0] ^= 1;
        assert_eq!(nonce.verify(KEY, &challenge()), Err(ForwardError::BadTag));
        let mut empty = hello;
        empty.node.clear();
        assert_eq!(
            empty.verify(KEY, &challenge()),
            Err(ForwardError::InvalidNode)
        );
    }

    #[test]
    fn hello_tag_is_the_documented_hmac() {
        let hello = Hello::sign(KEY, "ab", [1; 16], &challenge());
        let mut msg = b"votes-forward v2 hello\0".to_vec();
        msg.extend_from_slice(&[0, 2, b'a', b'b']);
        msg.extend_from_slice(&[0, 6]);
        msg.extend_from_slice(b"node-b");
        msg.extend_from_slice(&[1; 16]);
        msg.extend_from_slice(&challenge().nonce);
        let mut mac = Hmac::<Sha256>::new_from_slice(KEY).unwrap();
        mac.update(&msg);
        assert_eq!(hello.tag[..], mac.finalize().into_bytes()[..]);
    }

    /// Both ends of one link after its handshake.
    fn sealed_link() -> (LinkSeal, LinkSeal) {
        let hello = Hello::sign(KEY, "node-a", [3; 16], &challenge());
        (
            LinkSeal::new(KEY, LinkEnd::Edge, &challenge(), &hello),
            LinkSeal::new(KEY, LinkEnd::Owner, &challenge(), &hello),
        )
    }

    fn answer(id: u64) -> Frame {
        Frame::Answer(ForwardAnswer {
            id,
            outcome: VoteOutcome::Accepted {
                partition: 5,
                offset: id,
            },
        })
    }

    #[test]
    fn sealed_frames_open_in_order_in_both_directions() {
        let (mut edge, mut owner) = sealed_link();
        let mut wire = Vec::new();
        for i in 0..3 {
            edge.seal_into(&Frame::Vote(ForwardedVote { id: i, ..vote() }), &mut wire);
        }
        let mut rest = &wire[..];
        for i in 0..3 {
            for cut in 0..LEN_PREFIX + 1 {
                assert_eq!(owner.open(&rest[..cut]), Ok(None));
            }
            let (frame, used) = owner.open(rest).unwrap().unwrap();
            assert_eq!(frame, Frame::Vote(ForwardedVote { id: i, ..vote() }));
            rest = &rest[used..];
        }
        assert!(rest.is_empty());
        let mut back = Vec::new();
        owner.seal_into(&answer(1), &mut back);
        assert_eq!(edge.open(&back), Ok(Some((answer(1), back.len()))));
        let longest = Frame::Vote(longest_vote());
        let mut big = Vec::new();
        edge.seal_into(&longest, &mut big);
        assert_eq!(big.len(), LEN_PREFIX + VOTE_MAX_LEN + SEAL_TAG_LEN);
    }

    #[test]
    fn forged_replayed_reflected_or_modified_frames_do_not_open() {
        let sealed = |edge: &mut LinkSeal, f: &Frame| {
            let mut out = Vec::new();
            edge.seal_into(f, &mut out);
            out
        };
        // Forged: a plain frame, or one sealed under another fleet's key.
        let (_, mut owner) = sealed_link();
        assert!(owner.open(&Frame::Vote(vote()).encode()).is_err());
        let hello = Hello::sign(b"another fleet", "node-a", [3; 16], &challenge());
        let mut foreign = LinkSeal::new(b"another fleet", LinkEnd::Edge, &challenge(), &hello);
        assert_eq!(
            owner.open(&sealed(&mut foreign, &Frame::Vote(vote()))),
            Err(ForwardError::BadSeal)
        );
        // Replayed on the same link: the sequence moved on.
        let (mut edge, mut owner) = sealed_link();
        let first = sealed(&mut edge, &Frame::Vote(vote()));
        assert!(owner.open(&first).unwrap().is_some());
        assert_eq!(owner.open(&first), Err(ForwardError::BadSeal));
        // Replayed on another link (another challenge): another link key.
        let other = Challenge {
            nonce: [6; 16],
            ..challenge()
        };
        let hello = Hello::sign(KEY, "node-a", [3; 16], &other);
        let mut owner2 = LinkSeal::new(KEY, LinkEnd::Owner, &other, &hello);
        let (mut edge, _) = sealed_link();
        assert_eq!(
            owner2.open(&sealed(&mut edge, &Frame::Vote(vote()))),
            Err(ForwardError::BadSeal)
        );
        // Reordered: the second frame first.
        let (mut edge, mut owner) = sealed_link();
        let _skipped = sealed(&mut edge, &Frame::Vote(vote()));
        let second = sealed(&mut edge, &Frame::Vote(vote()));
        assert_eq!(owner.open(&second), Err(ForwardError::BadSeal));
        // Reflected: the edge's own first frame sent back to it as an answer.
        let (mut edge, _) = sealed_link();
        let mine = sealed(&mut edge, &answer(0));
        assert_eq!(edge.open(&mine), Err(ForwardError::BadSeal));
        // Modified: any bit of the body or the tag.
        let (mut edge, _) = sealed_link();
        let good = sealed(&mut edge, &Frame::Vote(vote()));
        for byte in LEN_PREFIX..good.len() {
            let mut bad = good.clone();
            bad[byte] ^= 0x10;
            let (_, mut owner) = sealed_link();
            assert!(owner.open(&bad).is_err(), "byte {byte} flipped");
        }
        // Too short to hold a tag.
        let (_, mut owner) = sealed_link();
        assert_eq!(
            owner.open(&framed(&[KIND_VOTE; SEAL_TAG_LEN])),
            Err(ForwardError::SealTooShort { len: SEAL_TAG_LEN })
        );
    }

    fn any_frame() -> impl Strategy<Value = Frame> {
        let hello = ("[a-zA-Z0-9._-]{1,64}", any::<[u8; 16]>(), any::<[u8; 32]>())
            .prop_map(|(node, nonce, tag)| Frame::Hello(Hello { node, nonce, tag }));
        let vote = (
            any::<u64>(),
            any::<u32>(),
            "[a-z0-9-]{1,64}",
            any::<u64>(),
            "[a-z0-9-]{1,32}",
            any::<u64>(),
            any::<[u8; 16]>(),
        )
            .prop_map(
                |(id, partition, election, voter, option, received_at_ms, nonce)| {
                    Frame::Vote(ForwardedVote {
                        id,
                        partition,
                        vote: VoteIntent {
                            election: ElectionId::new(election).unwrap(),
                            voter: VoterId(voter),
                            option: OptionId::new(option).unwrap(),
                            received_at_ms,
                            nonce,
                        },
                    })
                },
            );
        let accepted = (any::<u64>(), any::<u32>(), any::<u64>()).prop_map(|(id, p, o)| {
            Frame::Answer(ForwardAnswer {
                id,
                outcome: VoteOutcome::Accepted {
                    partition: p,
                    offset: o,
                },
            })
        });
        let rejected = (any::<u64>(), 0..ErrorCode::ALL.len()).prop_map(|(id, i)| {
            Frame::Answer(ForwardAnswer {
                id,
                outcome: VoteOutcome::Rejected(ErrorCode::ALL[i]),
            })
        });
        let challenge = ("[a-zA-Z0-9._-]{1,64}", any::<[u8; 16]>())
            .prop_map(|(node, nonce)| Frame::Challenge(Challenge { node, nonce }));
        prop_oneof![challenge, hello, vote, accepted, rejected]
    }

    proptest! {
        #[test]
        fn any_frame_round_trips(frame in any_frame(), extra in proptest::collection::vec(any::<u8>(), 0..8)) {
            let mut bytes = frame.encode();
            let len = bytes.len();
            bytes.extend_from_slice(&extra);
            prop_assert_eq!(decode_frame(&bytes), Ok(Some((frame, len))));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(Some((frame, used))) = decode_frame(&bytes) {
                prop_assert_eq!(&frame.encode()[..], &bytes[..used]);
            }
        }
    }
}
