//! Proof-of-work challenges (docs/design.md §4.2): stateless, bound to (election, voter, expiry,
//! difficulty) and signed by the server, so verifying a solution costs one HMAC and one hash and
//! no server state.
//!
//! Challenge (base64url, no padding) of the bytes:
//! `version 0x01 | election (u8 length + bytes) | voter u64 BE | expires_at_ms u64 BE |
//! difficulty u8 | tag (first 16 bytes of HMAC-SHA256(key, all the preceding bytes))`.
//! A solution is a nonce string such that SHA-256(challenge || ":" || nonce) starts with
//! `difficulty` zero bits.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};

use crate::ids::{ELECTION_ID_MAX, ElectionId, VoterId};

const VERSION: u8 = 1;
const TAG_LEN: usize = 16;
/// Longest challenge string accepted (the encoding of the longest election id, rounded up).
pub const CHALLENGE_MAX: usize = 160;
/// Longest nonce accepted.
pub const NONCE_MAX: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PowError {
    #[error("the challenge is malformed")]
    Malformed,
    #[error("the challenge was not issued by this server")]
    BadTag,
    #[error("the challenge is for another election or voter")]
    WrongSubject,
    #[error("the challenge has expired")]
    Expired,
    #[error("the challenge is easier than the election now requires")]
    TooEasy,
    #[error("the nonce does not solve the challenge")]
    Unsolved,
}

/// The server's challenge-signing key.
#[derive(Clone)]
pub struct PowKey(Vec<u8>);

impl PowKey {
    pub fn new(secret: &[u8]) -> Self {
        assert!(!secret.is_empty(), "a PoW key is configured");
        Self(secret.to_vec())
    }

    fn tag(&self, bytes: &[u8]) -> [u8; TAG_LEN] {
        let mut mac =
            hmac::Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(bytes);
        let full = mac.finalize().into_bytes();
        full[..TAG_LEN]
            .try_into()
            .expect("SHA-256 is longer than the tag")
    }
}

/// The challenge key derived from another secret (the token key): one secret less to manage,
/// and still a different key, so a challenge can never pass for a token or the other way round.
pub fn derive_key(secret: &[u8]) -> Vec<u8> {
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(b"votes proof-of-work challenges v1");
    mac.finalize().into_bytes().to_vec()
}

/// Issues a challenge for `voter` in `election`, valid until `expires_at_ms`.
pub fn issue(
    key: &PowKey,
    election: &ElectionId,
    voter: VoterId,
    expires_at_ms: u64,
    difficulty: u8,
) -> String {
    let mut bytes = Vec::with_capacity(1 + 1 + ELECTION_ID_MAX + 8 + 8 + 1 + TAG_LEN);
    bytes.push(VERSION);
    bytes.push(u8::try_from(election.as_str().len()).expect("election ids are at most 64 bytes"));
    bytes.extend_from_slice(election.as_str().as_bytes());
    bytes.extend_from_slice(&voter.0.to_be_bytes());
    bytes.extend_from_slice(&expires_at_ms.to_be_bytes());
    bytes.push(difficulty);
    let tag = key.tag(&bytes);
    bytes.extend_from_slice(&tag);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Leading zero bits of `hash`.
fn leading_zero_bits(hash: &[u8]) -> u32 {
    let mut bits = 0;
    for b in hash {
        if *b == 0 {
            bits += 8;
        } else {
            return bits + b.leading_zeros();
        }
    }
    bits
}

/// The hash a solution must make small.
pub fn work_hash(challenge: &str, nonce: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(challenge.as_bytes());
    h.update(b":");
    h.update(nonce.as_bytes());
    h.finalize().into()
}

/// Verifies a solution for a vote of `voter` in `election`, which currently requires
/// `required` bits. One HMAC and one SHA-256; never panics on any input.
pub fn verify(
    key: &PowKey,
    challenge: &str,
    nonce: &str,
    election: &ElectionId,
    voter: VoterId,
    required: u8,
    now_ms: u64,
) -> Result<(), PowError> {
    if challenge.len() > CHALLENGE_MAX || nonce.len() > NONCE_MAX {
        return Err(PowError::Malformed);
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(challenge)
        .map_err(|_| PowError::Malformed)?;
    let (body, tag) = bytes
        .split_at_checked(
            bytes
                .len()
                .checked_sub(TAG_LEN)
                .ok_or(PowError::Malformed)?,
        )
        .ok_or(PowError::Malformed)?;
    let (&version, rest) = body.split_first().ok_or(PowError::Malformed)?;
    if version != VERSION {
        return Err(PowError::Malformed);
    }
    let (&len, rest) = rest.split_first().ok_or(PowError::Malformed)?;
    let len = usize::from(len);
    if rest.len() != len + 8 + 8 + 1 {
        return Err(PowError::Malformed);
    }
    let expected = key.tag(body);
    // Constant time: a forged tag must not be found byte by byte.
    let diff = expected
        .iter()
        .zip(tag)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    if diff != 0 {
        return Err(PowError::BadTag);
    }
    let (elec, rest) = rest.split_at(len);
    let voter_be: [u8; 8] = rest[..8].try_into().expect("length checked");
    let expires: [u8; 8] = rest[8..16].try_into().expect("length checked");
    let difficulty = rest[16];
    if elec != election.as_str().as_bytes() || u64::from_be_bytes(voter_be) != voter.0 {
        return Err(PowError::WrongSubject);
    }
    if u64::from_be_bytes(expires) < now_ms {
        return Err(PowError::Expired);
    }
    if difficulty < required {
        return Err(PowError::TooEasy);
    }
    if leading_zero_bits(&work_hash(challenge, nonce)) < u32::from(difficulty) {
        return Err(PowError::Unsolved);
    }
    Ok(())
}

/// Finds a nonce (tests, the load generator, and a reference for the browser's worker).
pub fn solve(challenge: &str, difficulty: u8) -> String {
    (0u64..)
        .map(|n| n.to_string())
        .find(|nonce| leading_zero_bits(&work_hash(challenge, nonce)) >= u32::from(difficulty))
        .expect("some nonce solves any difficulty up to 256 bits")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key() -> PowKey {
        PowKey::new(b"pow-test-key-pow-test-key-012345")
    }

    fn e() -> ElectionId {
        ElectionId::new("final").unwrap()
    }

    #[test]
    fn a_solved_challenge_verifies_and_every_defect_is_named() {
        let c = issue(&key(), &e(), VoterId(7), 10_000, 8);
        let nonce = solve(&c, 8);
        assert_eq!(
            verify(&key(), &c, &nonce, &e(), VoterId(7), 8, 5_000),
            Ok(())
        );
        assert_eq!(
            verify(&key(), &c, &nonce, &e(), VoterId(8), 8, 5_000),
            Err(PowError::WrongSubject)
        );
        let other = ElectionId::new("other").unwrap();
        assert_eq!(
            verify(&key(), &c, &nonce, &other, VoterId(7), 8, 5_000),
            Err(PowError::WrongSubject)
        );
        assert_eq!(
            verify(&key(), &c, &nonce, &e(), VoterId(7), 8, 10_001),
            Err(PowError::Expired)
        );
        assert_eq!(
            verify(&key(), &c, &nonce, &e(), VoterId(7), 9, 5_000),
            Err(PowError::TooEasy)
        );
        let wrong = (0..)
            .map(|n: u32| n.to_string())
            .find(|n| leading_zero_bits(&work_hash(&c, n)) < 8)
            .unwrap();
        assert_eq!(
            verify(&key(), &c, &wrong, &e(), VoterId(7), 8, 5_000),
            Err(PowError::Unsolved)
        );
        let forged = PowKey::new(b"another-key-another-key-01234567");
        assert_eq!(
            verify(&forged, &c, &nonce, &e(), VoterId(7), 8, 5_000),
            Err(PowError::BadTag)
        );
        assert_eq!(
            verify(&key(), "!!", &nonce, &e(), VoterId(7), 8, 5_000),
            Err(PowError::Malformed)
        );
        assert_eq!(
            verify(&key(), "", "", &e(), VoterId(7), 0, 5_000),
            Err(PowError::Malformed)
        );
    }

    #[test]
    fn counts_leading_zero_bits() {
        assert_eq!(leading_zero_bits(&[0, 0, 0x10]), 19);
        assert_eq!(leading_zero_bits(&[0x80]), 0);
        assert_eq!(leading_zero_bits(&[0; 4]), 32);
    }

    proptest! {
        #[test]
        fn arbitrary_input_never_panics(c in ".{0,200}", n in ".{0,80}") {
            let _ = verify(&key(), &c, &n, &e(), VoterId(1), 4, 0);
        }

        #[test]
        fn tampering_with_any_byte_fails(pos in 0usize..40, flip in 1u8..=255) {
            let c = issue(&key(), &e(), VoterId(7), 10_000, 0);
            let mut raw = URL_SAFE_NO_PAD.decode(&c).unwrap();
            let pos = pos % raw.len();
            raw[pos] ^= flip;
            let tampered = URL_SAFE_NO_PAD.encode(raw);
            prop_assert!(verify(&key(), &tampered, "0", &e(), VoterId(7), 0, 0).is_err());
        }
    }
}
