//! What the edge pays per request before any shard sees it (issue #7): verifying a voter token
//! (HS256 valid and with a bad signature, EdDSA valid and with a bad signature) and a
//! proof-of-work solution (solved at difficulty 8 and 16, unsolved, and a challenge with a forged
//! tag). The peer, measured in the same run, is one plain SHA-256 of 64 bytes, with the same
//! RustCrypto `sha2` the verifiers use (`votes_core::pow::work_hash` of a 31-byte challenge, ':'
//! and a 32-byte nonce) and with ring's; read the costs as multiples of it.

use std::hint::black_box;

use base64::Engine as _;
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use votes_core::pow::{self, PowKey};
use votes_core::token::{self, TokenKey, TokenKeys};
use votes_core::{ElectionId, VoterId};

const NOW_S: u64 = 1_790_000_000;
const SECRET: &[u8] = b"bench-token-key-0123456789abcdef-0001";

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// A fresh Ed25519 key pair as the PKCS#8 and SubjectPublicKeyInfo PEMs an issuer would hand out.
fn ed25519_pems() -> (String, String) {
    use ring::signature::KeyPair;
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    // SubjectPublicKeyInfo of an Ed25519 key (RFC 8410): this prefix, then the 32 key bytes.
    let mut spki = vec![
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    spki.extend_from_slice(pair.public_key().as_ref());
    (pem("PRIVATE KEY", pkcs8.as_ref()), pem("PUBLIC KEY", &spki))
}

/// The same token with the first signature character changed (a full 6 bits of signature, so
/// still canonical base64url).
fn with_bad_signature(token: &str) -> String {
    let at = token.rfind('.').unwrap() + 1;
    let first = token.as_bytes()[at];
    let mut t = token.to_string();
    t.replace_range(at..=at, if first == b'A' { "B" } else { "A" });
    t
}

/// Measures `verifier` on a voter token `issuer` signed (`{scheme}_valid`) and on the same
/// token with a bad signature (`{scheme}_bad_signature`), after checking the edge answers each
/// as it must: a benchmark of a check that fails for another reason measures nothing.
fn token_scheme(
    g: &mut BenchmarkGroup<'_, WallTime>,
    scheme: &str,
    issuer: &TokenKey,
    verifier: &TokenKeys,
) {
    let good = token::issue(issuer, VoterId(123_456_789), 3_600, NOW_S);
    let bad = with_bad_signature(&good);
    assert_eq!(
        token::verify(verifier, &good, NOW_S),
        Ok(VoterId(123_456_789))
    );
    assert_eq!(
        token::verify(verifier, &bad, NOW_S),
        Err(token::TokenError::BadSignature)
    );
    for (case, voter_token) in [("valid", &good), ("bad_signature", &bad)] {
        g.bench_function(format!("{scheme}_{case}"), |b| {
            b.iter(|| token::verify(black_box(verifier), black_box(voter_token), NOW_S))
        });
    }
}

fn tokens(c: &mut Criterion) {
    let mut g = c.benchmark_group("token_verify");
    g.throughput(Throughput::Elements(1));

    let hs = TokenKeys::hs256(SECRET).unwrap();
    token_scheme(&mut g, "hs256", hs.signing_key(), &hs);

    let (private, public) = ed25519_pems();
    let issuer = TokenKey::ed25519_private_pem(&private).unwrap();
    let verifier = TokenKeys::new(vec![TokenKey::ed25519_public_pem(&public).unwrap()]).unwrap();
    token_scheme(&mut g, "eddsa", &issuer, &verifier);
    g.finish();
}

fn pow_verify(c: &mut Criterion) {
    let mut g = c.benchmark_group("pow_verify");
    g.throughput(Throughput::Elements(1));
    let key = PowKey::new(&pow::derive_key(SECRET));
    let election = ElectionId::new("tv-final-2026").unwrap();
    let voter = VoterId(123_456_789);
    let now_ms = NOW_S * 1000;
    let expires = now_ms + 300_000;
    // One edge check of `challenge` answered with `nonce` per iteration, what the edge is
    // handed opaque to the optimizer.
    let mut bench = |name: String, challenge: &str, nonce: &str, difficulty: u8| {
        g.bench_function(name, |b| {
            b.iter(|| {
                pow::verify(
                    black_box(&key),
                    black_box(challenge),
                    black_box(nonce),
                    &election,
                    voter,
                    difficulty,
                    now_ms,
                )
            })
        });
    };
    for difficulty in [8u8, 16] {
        let challenge = pow::issue(&key, &election, voter, expires, difficulty);
        let nonce = pow::solve(&challenge, difficulty);
        assert_eq!(
            pow::verify(
                &key, &challenge, &nonce, &election, voter, difficulty, now_ms
            ),
            Ok(())
        );
        bench(
            format!("solved_d{difficulty}"),
            &challenge,
            &nonce,
            difficulty,
        );
    }
    // Unsolved: the whole check runs (tag, subject, expiry, then the hash) and fails at the end.
    let challenge = pow::issue(&key, &election, voter, expires, 16);
    let nonce = (0u64..)
        .map(|i| i.to_string())
        .find(|n| pow::work_hash(&challenge, n)[0] != 0)
        .unwrap();
    assert_eq!(
        pow::verify(&key, &challenge, &nonce, &election, voter, 16, now_ms),
        Err(pow::PowError::Unsolved)
    );
    bench("unsolved_d16".into(), &challenge, &nonce, 16);
    // Forged: a challenge this server did not sign, refused at the tag (no work hash).
    let other = PowKey::new(b"someone-else's-key-0123456789abcdef");
    let forged = pow::issue(&other, &election, voter, expires, 16);
    assert_eq!(
        pow::verify(&key, &forged, &nonce, &election, voter, 16, now_ms),
        Err(pow::PowError::BadTag)
    );
    bench("forged_tag".into(), &forged, &nonce, 16);
    g.finish();
}

fn peer_sha256(c: &mut Criterion) {
    let mut g = c.benchmark_group("peer");
    g.throughput(Throughput::Bytes(64));
    // 31 + ':' + 32 = 64 bytes through sha2, as the PoW check hashes.
    let challenge = "c".repeat(31);
    let nonce = "n".repeat(32);
    assert_eq!(challenge.len() + 1 + nonce.len(), 64);
    g.bench_function("sha256_64B_sha2", |b| {
        b.iter(|| pow::work_hash(black_box(&challenge), black_box(&nonce)))
    });
    let bytes = [7u8; 64];
    g.bench_function("sha256_64B_ring", |b| {
        b.iter(|| ring::digest::digest(&ring::digest::SHA256, black_box(&bytes)))
    });
    g.finish();
}

criterion_group!(benches, peer_sha256, tokens, pow_verify);
criterion_main!(benches);
