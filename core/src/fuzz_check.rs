//! The properties the fuzz targets in `fuzz/` check, one function per target.
//!
//! They live here, behind the `fuzzing` feature, so the libFuzzer targets and the unit test
//! that replays the committed seeds (`fuzz/seeds/<target>/`) run the very same code: `cargo
//! test` covers every seed and every crash input kept as a seed, without a fuzzer. Each
//! function must not panic for any input unless a property of the parser is broken.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::receipt::{LEAF_MAX_LEN, Leaf, leaf_hash_of};
use crate::record::{LogRecord, RECORD_MAX_LEN, VoteRecord};
use crate::token::{self, TokenKey, TokenKeys};
use crate::vote_body::{VOTE_BODY_MAX, VoteBody};

/// The key `token_verify` checks against (the same as the token unit tests' key, so their
/// pinned tokens are seeds).
pub const TOKEN_KEY: &[u8] = b"test-only VOTES_TOKEN_KEY, 32+ bytes long";
/// The clock `token_verify` checks at: the pinned tokens are valid then.
pub const NOW_S: u64 = 1_790_000_000;
/// First byte of a `token_verify` input that asks the harness to sign `header 0x00 claims`.
pub const SIGN_MODE: u8 = 0;

/// `record_decode`: a record of the log (a vote or a close marker) that decodes is canonical
/// (re-encodes to the same bytes), and a vote decodes the same either way.
pub fn record_decode(data: &[u8]) {
    match LogRecord::decode(data) {
        Ok(LogRecord::Vote(record)) => {
            let again = record.encode();
            assert_eq!(again, data, "a decoded record re-encodes to its own bytes");
            assert!(again.len() <= RECORD_MAX_LEN);
            assert_eq!(VoteRecord::decode(&again), Ok(record));
        }
        Ok(LogRecord::Close(marker)) => {
            let again = marker.encode();
            assert_eq!(again, data, "a decoded marker re-encodes to its own bytes");
            assert!(
                VoteRecord::decode(data).is_err(),
                "a marker is never a vote"
            );
        }
        Err(_) => assert!(
            VoteRecord::decode(data).is_err(),
            "what votes decode, the log decodes"
        ),
    }
}

/// `leaf_decode`: a leaf that decodes is canonical, and its hash is that of its bytes.
pub fn leaf_decode(data: &[u8]) {
    if let Ok(leaf) = Leaf::decode(data) {
        let again = leaf.canonical_bytes();
        assert_eq!(again, data, "a decoded leaf re-encodes to its own bytes");
        assert!(again.len() <= LEAF_MAX_LEN);
        assert_eq!(leaf.leaf_hash(), leaf_hash_of(data));
        assert_eq!(Leaf::decode(&again), Ok(leaf));
    }
}

/// `vote_body`: errors carry a client-error code; a parsed body survives `to_json` → `parse`.
pub fn vote_body(data: &[u8]) {
    match VoteBody::parse(data) {
        Ok(body) => {
            let json = body.to_json();
            assert!(
                json.len() <= VOTE_BODY_MAX,
                "a valid body re-serializes within the limit"
            );
            assert_eq!(VoteBody::parse(json.as_bytes()), Ok(body));
        }
        Err(e) => {
            let status = e.code().status();
            assert!((400..500).contains(&status), "client input is never a 5xx");
            assert!(!e.message().is_empty());
        }
    }
}

/// `token_verify`. The first byte picks the mode: [`SIGN_MODE`] signs the rest, split at its
/// first 0x00 into header and claims JSON, with [`TOKEN_KEY`], so the fuzzer reaches the
/// claims checks that only run after a valid signature; any other first byte verifies the rest
/// as a token. A token that verifies names a voter whose freshly issued token verifies too.
pub fn token_verify(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let keys = TokenKeys::hs256(TOKEN_KEY).expect("the fuzz key is long enough");
    let token = if mode == SIGN_MODE {
        let mut parts = rest.splitn(2, |&b| b == 0);
        let header = parts.next().unwrap_or_default();
        let claims = parts.next().unwrap_or_default();
        sign_compact(header, claims)
    } else {
        match std::str::from_utf8(rest) {
            Ok(s) => s.to_owned(),
            Err(_) => return,
        }
    };
    match token::verify(&keys, &token, NOW_S) {
        Ok(voter) => {
            let key = TokenKey::hs256(TOKEN_KEY).expect("the fuzz key is long enough");
            let fresh = token::issue(&key, voter, 3600, NOW_S);
            assert_eq!(token::verify(&keys, &fresh, NOW_S), Ok(voter));
        }
        Err(e) => {
            assert_eq!(e.code().status(), 401);
            assert!(!e.message().is_empty());
        }
    }
}

/// An HS256 compact JWS over arbitrary header and claims bytes, signed with [`TOKEN_KEY`].
pub fn sign_compact(header: &[u8], claims: &[u8]) -> String {
    let mut token = URL_SAFE_NO_PAD.encode(header);
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(claims, &mut token);
    let mut mac = Hmac::<Sha256>::new_from_slice(TOKEN_KEY).expect("HMAC takes any key");
    mac.update(token.as_bytes());
    let tag = mac.finalize().into_bytes();
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(tag, &mut token);
    token
}

/// The key and subject `pow_verify` checks against.
pub const POW_KEY: &[u8] = b"test-only proof-of-work key, 32 bytes";
pub const POW_NOW_MS: u64 = 1_790_000_000_000;

/// `pow_verify`. First byte: the difficulty the election requires (mod 9, so the issue mode
/// stays solvable by chance). Second byte: [`SIGN_MODE`] issues a genuine challenge for the
/// fixed subject and uses the rest as the nonce, reaching the work check; any other value
/// splits the rest at its first 0x00 into a challenge and a nonce. A solution that verifies
/// really has the work, and verifies again.
pub fn pow_verify(data: &[u8]) {
    use crate::ids::{ElectionId, VoterId};
    use crate::pow::{PowKey, issue, verify, work_hash};
    let [required, mode, rest @ ..] = data else {
        return;
    };
    let required = required % 9;
    let key = PowKey::new(POW_KEY);
    let election = ElectionId::new("fuzz").expect("valid id");
    let voter = VoterId(42);
    let (challenge, nonce) = if *mode == SIGN_MODE {
        (
            issue(&key, &election, voter, POW_NOW_MS + 1, required),
            String::from_utf8_lossy(rest).into_owned(),
        )
    } else {
        let mut parts = rest.splitn(2, |&b| b == 0);
        let c = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
        let n = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
        (c, n)
    };
    if verify(
        &key, &challenge, &nonce, &election, voter, required, POW_NOW_MS,
    )
    .is_ok()
    {
        let h = work_hash(&challenge, &nonce);
        let zeros = h.iter().take_while(|b| **b == 0).count() * 8
            + h.iter()
                .find(|b| **b != 0)
                .map_or(0, |b| b.leading_zeros() as usize);
        assert!(
            zeros >= usize::from(required),
            "an accepted solution has the work"
        );
        assert!(
            verify(
                &key, &challenge, &nonce, &election, voter, required, POW_NOW_MS
            )
            .is_ok()
        );
    }
}

/// `ShardSnapshot::decode` on damaged files: never panics, and whatever decodes re-encodes to
/// the same bytes (the format has one encoding per state).
pub fn snapshot_decode(data: &[u8]) {
    if let Ok(s) = crate::snapshot::ShardSnapshot::decode(data) {
        assert_eq!(
            s.encode(),
            data,
            "a decoded snapshot re-encodes to its bytes"
        );
    }
}

/// `forward_decode`: reads `data` as a stream of frames. Each frame that decodes is canonical
/// (its bytes are exactly what it encodes to) and fits the bound, and each of its proper
/// prefixes is a partial frame, so a reader never acts on a frame before all of it arrived.
///
/// The same bytes on a sealed link never panic the opener, and every frame that decodes, sealed
/// by one end, opens at the other as itself.
pub fn forward_decode(data: &[u8]) {
    use crate::forward::{Challenge, FRAME_MAX, Hello, LinkEnd, LinkSeal, decode_frame};
    const KEY: &[u8] = b"fuzz forwarding key";
    let challenge = Challenge {
        node: "owner".into(),
        nonce: [1; 16],
    };
    let hello = Hello::sign(KEY, "edge", [2; 16], &challenge);
    let mut edge = LinkSeal::new(KEY, LinkEnd::Edge, &challenge, &hello);
    let mut owner = LinkSeal::new(KEY, LinkEnd::Owner, &challenge, &hello);
    let _ = LinkSeal::new(KEY, LinkEnd::Owner, &challenge, &hello).open(data);
    let mut rest = data;
    while let Ok(Some((frame, used))) = decode_frame(rest) {
        let again = frame.encode();
        assert_eq!(
            again,
            rest[..used],
            "a decoded frame re-encodes to its own bytes"
        );
        assert!(used <= 4 + FRAME_MAX);
        assert_eq!(decode_frame(&rest[..used - 1]), Ok(None));
        let mut sealed = Vec::new();
        edge.seal_into(&frame, &mut sealed);
        assert_eq!(owner.open(&sealed), Ok(Some((frame, sealed.len()))));
        rest = &rest[used..];
    }
}

/// `group_assignment`: an assignment that parses re-encodes, in the version it was read in, to
/// its own bytes up to `user_data`, which the parser drops and the encoder writes as null; what
/// follows is one well-formed `user_data` field (so a null one means the very same bytes).
pub fn group_assignment(data: &[u8]) {
    use crate::group::{encode_assignment, parse_assignment};
    let Ok(assignment) = parse_assignment(data) else {
        return;
    };
    let [v0, v1, ..] = *data else {
        assert!(data.is_empty(), "only empty input parses without a version");
        assert!(assignment.is_empty());
        return;
    };
    let again = encode_assignment(i16::from_be_bytes([v0, v1]), &assignment);
    let head = again.len() - 4;
    assert_eq!(
        data[..head],
        again[..head],
        "fields before user_data re-encode"
    );
    let user_data = &data[head..];
    let (len, bytes) = user_data.split_at(4);
    let len = i32::from_be_bytes(len.try_into().expect("split at 4"));
    if len == -1 {
        assert_eq!(again, data, "null user_data: the very same bytes");
    } else {
        assert_eq!(usize::try_from(len).ok(), Some(bytes.len()));
    }
    assert_eq!(parse_assignment(&again), Ok(assignment));
}

/// `proxy_header`: whatever parses is exactly one header long, names a client the canonical
/// encoding round-trips, and is that encoding byte for byte when it carries no TLVs.
pub fn proxy_header(data: &[u8]) {
    use crate::proxy_header::{ADDRESS_BLOCK_MAX, FIXED_LEN, Proxied, encode, header_len, parse};
    if data.len() >= FIXED_LEN
        && let Ok(len) = header_len(data)
    {
        assert!((FIXED_LEN..=FIXED_LEN + ADDRESS_BLOCK_MAX).contains(&len));
    }
    if let Ok(proxied) = parse(data) {
        assert_eq!(
            header_len(data),
            Ok(data.len()),
            "a header is its own length"
        );
        if let Proxied::Client {
            source,
            destination,
        } = proxied
        {
            let again = encode(source, destination);
            assert_eq!(parse(&again), Ok(proxied));
            if again.len() == data.len() {
                assert_eq!(again, data, "without TLVs a client header is canonical");
            }
        }
    }
}

/// `ws_frame`: a client's WebSocket frames read from a byte stream never panic, never take
/// more bytes than there are, and whatever parses is canonical: the same frame, masked with the
/// same mask, is the very bytes it was read from. A bound below the stream's frames is refused
/// from the header alone.
pub fn ws_frame(data: &[u8]) {
    use crate::ws::{CONTROL_MAX, FrameError, encode_masked, parse};
    const MAX: usize = 4096;
    let mut rest = data;
    while let Ok(Some((frame, used))) = parse(rest, MAX) {
        assert!(used >= 6 && used <= rest.len());
        assert!(frame.payload.len() <= MAX);
        if frame.opcode.is_control() {
            assert!(frame.fin && frame.payload.len() <= CONTROL_MAX);
        }
        let again = encode_masked(frame.opcode, frame.fin, &frame.payload, frame.mask);
        assert_eq!(again, &rest[..used], "a parsed frame is canonical");
        if !frame.payload.is_empty() && !frame.opcode.is_control() {
            assert!(matches!(
                parse(rest, frame.payload.len() - 1),
                Err(FrameError::TooBig { .. })
            ));
        }
        rest = &rest[used..];
    }
}

#[cfg(test)]
#[path = "fuzz_seeds.rs"]
mod fuzz_seeds;

#[cfg(test)]
mod tests {
    use super::fuzz_seeds::{replay, replay_both_kinds};
    use super::*;

    #[test]
    fn record_decode_seeds() {
        replay_both_kinds("record_decode", record_decode, |b| {
            VoteRecord::decode(b).is_ok()
        });
    }

    #[test]
    fn snapshot_decode_seeds() {
        replay_both_kinds("snapshot_decode", snapshot_decode, |b| {
            crate::snapshot::ShardSnapshot::decode(b).is_ok()
        });
    }

    #[test]
    fn proxy_header_seeds() {
        replay_both_kinds("proxy_header", proxy_header, |b| {
            crate::proxy_header::parse(b).is_ok()
        });
    }

    #[test]
    fn ws_frame_seeds() {
        let seeds = replay("ws_frame", ws_frame);
        let parse = |b: &[u8]| crate::ws::parse(b, 4096);
        assert!(seeds.iter().any(|(_, b)| matches!(parse(b), Ok(Some(_)))));
        assert!(seeds.iter().any(|(_, b)| parse(b).is_err()));
    }

    #[test]
    fn pow_verify_seeds() {
        replay("pow_verify", pow_verify);
    }

    #[test]
    fn leaf_decode_seeds() {
        replay_both_kinds("leaf_decode", leaf_decode, |b| Leaf::decode(b).is_ok());
    }

    #[test]
    fn vote_body_seeds() {
        replay_both_kinds("vote_body", vote_body, |b| VoteBody::parse(b).is_ok());
    }

    #[test]
    fn token_verify_seeds() {
        let keys = TokenKeys::hs256(TOKEN_KEY).unwrap();
        let verifies = |b: &[u8]| match b.split_first() {
            Some((&SIGN_MODE, rest)) => {
                let mut parts = rest.splitn(2, |&x| x == 0);
                let token = sign_compact(
                    parts.next().unwrap_or_default(),
                    parts.next().unwrap_or_default(),
                );
                token::verify(&keys, &token, NOW_S).is_ok()
            }
            Some((_, rest)) => {
                std::str::from_utf8(rest).is_ok_and(|s| token::verify(&keys, s, NOW_S).is_ok())
            }
            None => false,
        };
        replay_both_kinds("token_verify", token_verify, verifies);
    }

    #[test]
    fn forward_decode_seeds() {
        let seeds = replay("forward_decode", forward_decode);
        let decode = |b: &[u8]| crate::forward::decode_frame(b);
        assert!(seeds.iter().any(|(_, b)| matches!(decode(b), Ok(Some(_)))));
        assert!(seeds.iter().any(|(_, b)| decode(b) == Ok(None)));
        assert!(seeds.iter().any(|(_, b)| decode(b).is_err()));
    }

    #[test]
    fn group_assignment_seeds() {
        let seeds = replay("group_assignment", group_assignment);
        let parse = |b: &[u8]| crate::group::parse_assignment(b);
        assert!(
            seeds
                .iter()
                .any(|(_, b)| parse(b).is_ok_and(|a| !a.is_empty()))
        );
        assert!(seeds.iter().any(|(_, b)| parse(b).is_err()));
    }
}
