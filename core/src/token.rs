//! Voter tokens (docs/design.md §4.2 Auth): compact JWS tokens (RFC 7515) carrying JWT claims
//! (RFC 7519), signed with HS256 and the secret `VOTES_TOKEN_KEY`, or with EdDSA (Ed25519,
//! RFC 8037) by an issuer whose public key the node holds.
//!
//! A token is `base64url(header) "." base64url(claims) "." base64url(signature)`, no padding.
//! [`issue`] writes `{"alg":"HS256","typ":"JWT"}` (plus `kid` when the key has one) and the
//! claims `sub` (the voter, decimal), `aud` (`"votes"`), `iat` and `exp`.
//!
//! [`verify`] is deliberately narrow, because every byte of a bearer token is attacker input
//! and JWT's flexibility is the usual source of bypasses:
//!
//! * at most [`TOKEN_MAX_LEN`] bytes, exactly three segments, canonical base64url without
//!   padding (so one signature has exactly one spelling);
//! * the header is a JSON object with `alg` (only `"HS256"` and `"EdDSA"`: `"none"` and every
//!   other algorithm are refused, and a key is only ever tried with its own algorithm, so an
//!   Ed25519 public key can never be used as an HMAC secret), optionally
//!   `typ` (`"JWT"`) and `kid`; any other header parameter, `crit` included, is refused because
//!   we implement none of them;
//! * the signature is checked in constant time *before* the claims are parsed, so the JSON
//!   parser only ever sees bytes that the key holder wrote;
//! * `aud` must be `"votes"` or an array of strings containing it; `exp` is required and must
//!   be later than now minus [`CLOCK_SKEW_S`]; `nbf`, when present, no later than now plus
//!   the skew; `sub` is the canonical decimal spelling of a u64 (no sign, no leading zeros, no
//!   whitespace), because it *is* the voter id that dedup and routing key on.
//!
//! Every failure maps to `401 unauthorized`; the messages name what was wrong, never the token.
//!
//! Keys: [`TokenKeys`] holds one or more [`TokenKey`]s (HS256 secrets, Ed25519 public keys, or
//! Ed25519 key pairs that also sign); an optional `kid` selects the key during a rotation, and
//! several keys are accepted at once. [`parse_key_file`] reads the operator's list of keys.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;

use crate::api_error::ErrorCode;
use crate::ids::VoterId;
use crate::json::ObjectOnly;

/// Longest token accepted; a real one is ~200 bytes, and the bound caps the work an
/// unauthenticated request can cause (base64 and header JSON are decoded before the MAC).
pub const TOKEN_MAX_LEN: usize = 4096;
/// Tolerated clock difference between the issuer and this node.
pub const CLOCK_SKEW_S: u64 = 60;
/// The audience every voter token must name.
pub const AUDIENCE: &str = "votes";
/// RFC 7518 §3.2: an HS256 key must be at least as long as the hash output (256 bits).
pub const HS256_MIN_SECRET_LEN: usize = 32;
/// Longest key id.
pub const KID_MAX_LEN: usize = 64;
/// Most keys held at once: a rotation needs two; more is a configuration mistake, and every
/// key without a `kid` costs one MAC per token.
pub const MAX_KEYS: usize = 8;

type HmacSha256 = Hmac<Sha256>;

/// The signature algorithms a key can have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Algorithm {
    /// HMAC-SHA256 with a shared secret (RFC 7518 §3.2).
    Hs256,
    /// Ed25519 signatures (RFC 8037 §3.1): the node holds only the issuer's public key.
    EdDsa,
}

impl Algorithm {
    /// The `alg` header value (RFC 7518 §3.1).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hs256 => "HS256",
            Self::EdDsa => "EdDSA",
        }
    }

    /// Exact, case-sensitive match: `"hs256"` or `"none"` are not algorithms we know.
    fn from_header(alg: &str) -> Option<Self> {
        match alg {
            "HS256" => Some(Self::Hs256),
            "EdDSA" => Some(Self::EdDsa),
            _ => None,
        }
    }
}

/// Key material by kind. The MAC is stored keyed, so the HMAC key schedule runs once per key
/// and not once per request; each use clones it.
#[derive(Clone)]
enum KeyMaterial {
    Hs256(HmacSha256),
    /// The 32-byte public key, and the key pair when this node also issues (tests, dev).
    EdDsa {
        public: [u8; 32],
        pair: Option<std::sync::Arc<ring::signature::Ed25519KeyPair>>,
    },
}

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410 §4): SEQUENCE { SEQUENCE { OID
/// 1.3.101.112 }, BIT STRING (0 unused bits) } followed by the 32 key bytes.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// One key that signs and verifies tokens.
#[derive(Clone)]
pub struct TokenKey {
    kid: Option<String>,
    material: KeyMaterial,
}

// Hand-written so the secret can never reach a log through `{:?}`.
impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenKey")
            .field("alg", &self.algorithm().as_str())
            .field("kid", &self.kid)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// A key set that cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error(
        "the HS256 token key is {len} bytes; at least {HS256_MIN_SECRET_LEN} are required \
         (RFC 7518 §3.2)"
    )]
    SecretTooShort { len: usize },
    #[error("a key id must be 1 to {KID_MAX_LEN} printable ASCII characters")]
    BadKid,
    #[error("no token key is configured")]
    NoKeys,
    #[error("at most {MAX_KEYS} token keys may be configured, got {0}")]
    TooManyKeys(usize),
    #[error("two token keys have the same key id")]
    DuplicateKid,
    #[error(
        "an Ed25519 key must be a PEM public key (SubjectPublicKeyInfo) or PKCS#8 private key: {0}"
    )]
    BadEd25519(&'static str),
    #[error("token key file, line {line}: {why}")]
    KeyFile { line: usize, why: String },
}

impl TokenKey {
    /// An HS256 key from the raw secret (the bytes of `VOTES_TOKEN_KEY`).
    pub fn hs256(secret: &[u8]) -> Result<Self, KeyError> {
        if secret.len() < HS256_MIN_SECRET_LEN {
            return Err(KeyError::SecretTooShort { len: secret.len() });
        }
        let mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts keys of any length");
        Ok(Self {
            kid: None,
            material: KeyMaterial::Hs256(mac),
        })
    }

    /// An Ed25519 verification key from its PEM SubjectPublicKeyInfo (`openssl pkey -pubout`).
    pub fn ed25519_public_pem(pem: &str) -> Result<Self, KeyError> {
        let der = pem_body(pem, "PUBLIC KEY").ok_or(KeyError::BadEd25519("no PUBLIC KEY block"))?;
        let key = der
            .strip_prefix(&ED25519_SPKI_PREFIX[..])
            .filter(|k| k.len() == 32)
            .ok_or(KeyError::BadEd25519("not an Ed25519 SubjectPublicKeyInfo"))?;
        Ok(Self {
            kid: None,
            material: KeyMaterial::EdDsa {
                public: key.try_into().expect("32 bytes"),
                pair: None,
            },
        })
    }

    /// An Ed25519 key pair from its PEM PKCS#8 (`openssl genpkey -algorithm ed25519`): it signs
    /// and verifies.
    pub fn ed25519_private_pem(pem: &str) -> Result<Self, KeyError> {
        use ring::signature::KeyPair;
        let der =
            pem_body(pem, "PRIVATE KEY").ok_or(KeyError::BadEd25519("no PRIVATE KEY block"))?;
        let pair = ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
            .map_err(|_| KeyError::BadEd25519("not an Ed25519 PKCS#8 key"))?;
        let public = pair.public_key().as_ref().try_into().expect("32 bytes");
        Ok(Self {
            kid: None,
            material: KeyMaterial::EdDsa {
                public,
                pair: Some(std::sync::Arc::new(pair)),
            },
        })
    }

    /// Whether this key can issue tokens (an HS256 secret or an Ed25519 key pair).
    pub fn can_sign(&self) -> bool {
        match &self.material {
            KeyMaterial::Hs256(_) => true,
            KeyMaterial::EdDsa { pair, .. } => pair.is_some(),
        }
    }

    /// The same key, named `kid`: tokens it issues carry the name in their header, and tokens
    /// that carry a `kid` are checked only against the key of that name.
    pub fn with_kid(mut self, kid: impl Into<String>) -> Result<Self, KeyError> {
        let kid = kid.into();
        if !valid_kid(&kid) {
            return Err(KeyError::BadKid);
        }
        self.kid = Some(kid);
        Ok(self)
    }

    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    pub fn algorithm(&self) -> Algorithm {
        match self.material {
            KeyMaterial::Hs256(_) => Algorithm::Hs256,
            KeyMaterial::EdDsa { .. } => Algorithm::EdDsa,
        }
    }

    /// # Panics
    /// For a verification-only key: callers pick a key that [`can_sign`](Self::can_sign).
    fn sign(&self, signing_input: &[u8]) -> Vec<u8> {
        match &self.material {
            KeyMaterial::Hs256(mac) => {
                let mut mac = mac.clone();
                mac.update(signing_input);
                mac.finalize().into_bytes().to_vec()
            }
            KeyMaterial::EdDsa { pair, .. } => pair
                .as_ref()
                .expect("only a key pair signs")
                .sign(signing_input)
                .as_ref()
                .to_vec(),
        }
    }

    /// Constant-time comparison of the tag (`Mac::verify_slice`); a wrong length is a mismatch.
    fn signature_matches(&self, signing_input: &[u8], signature: &[u8]) -> bool {
        match &self.material {
            KeyMaterial::Hs256(mac) => {
                let mut mac = mac.clone();
                mac.update(signing_input);
                mac.verify_slice(signature).is_ok()
            }
            KeyMaterial::EdDsa { public, .. } => {
                ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public)
                    .verify(signing_input, signature)
                    .is_ok()
            }
        }
    }
}

/// The DER inside a PEM block labelled `label`, if there is exactly that block.
fn pem_body(pem: &str, label: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem.find(&begin)? + begin.len();
    let stop = start + pem[start..].find(&end)?;
    let b64: String = pem[start..stop].split_whitespace().collect();
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

/// Parses the operator's token key file (`VOTES_TOKEN_KEYS_FILE`): one key per line,
/// `<kid> <alg> <path>`, where `alg` is `HS256` (the file at `path` holds the secret, ≥ 32
/// bytes, trailing newline ignored) or `EdDSA` (a PEM public key, or a PKCS#8 private key when
/// this node also issues). `#` starts a comment. `read` gets a path's contents, so the keys
/// never pass through the environment or the command line.
pub fn parse_key_file(
    text: &str,
    mut read: impl FnMut(&str) -> Result<Vec<u8>, String>,
) -> Result<Vec<TokenKey>, KeyError> {
    let mut keys = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let bad = |why: String| KeyError::KeyFile { line: i + 1, why };
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [kid, alg, path] = fields[..] else {
            return Err(bad("expected `<kid> <alg> <path>`".into()));
        };
        let bytes = read(path).map_err(|e| bad(format!("reading {path}: {e}")))?;
        let key = match alg {
            "HS256" => {
                let secret = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
                TokenKey::hs256(secret)
            }
            "EdDSA" => {
                let pem = String::from_utf8(bytes)
                    .map_err(|_| bad("the PEM file is not UTF-8".into()))?;
                if pem.contains("PRIVATE KEY") {
                    TokenKey::ed25519_private_pem(&pem)
                } else {
                    TokenKey::ed25519_public_pem(&pem)
                }
            }
            other => return Err(bad(format!("unknown algorithm {other:?} (HS256 or EdDSA)"))),
        }
        .and_then(|k| k.with_kid(kid))
        .map_err(|e| bad(e.to_string()))?;
        keys.push(key);
    }
    Ok(keys)
}

fn valid_kid(kid: &str) -> bool {
    (1..=KID_MAX_LEN).contains(&kid.len()) && kid.bytes().all(|b| b.is_ascii_graphic())
}

/// The keys a node accepts tokens from; the first one also signs ([`TokenKeys::signing_key`]).
#[derive(Clone, Debug)]
pub struct TokenKeys {
    keys: Vec<TokenKey>,
}

impl TokenKeys {
    /// A key set of one or more keys, the signing key first. Keys with a `kid` must have
    /// distinct ones; several keys without a `kid` are all tried (a rotation without kids).
    pub fn new(keys: Vec<TokenKey>) -> Result<Self, KeyError> {
        if keys.is_empty() {
            return Err(KeyError::NoKeys);
        }
        if keys.len() > MAX_KEYS {
            return Err(KeyError::TooManyKeys(keys.len()));
        }
        for (i, key) in keys.iter().enumerate() {
            if key.kid.is_some() && keys[..i].iter().any(|other| other.kid == key.kid) {
                return Err(KeyError::DuplicateKid);
            }
        }
        Ok(Self { keys })
    }

    /// Today's configuration: one HS256 secret, no `kid`.
    pub fn hs256(secret: &[u8]) -> Result<Self, KeyError> {
        Self::new(vec![TokenKey::hs256(secret)?])
    }

    /// The first key that can issue tokens (an HS256 secret or an Ed25519 key pair), if any:
    /// a node that only verifies an external issuer's EdDSA tokens has none.
    pub fn signer(&self) -> Option<&TokenKey> {
        self.keys.iter().find(|k| k.can_sign())
    }

    /// The key new tokens are signed with.
    pub fn signing_key(&self) -> &TokenKey {
        // Invariant of `new`: never empty.
        &self.keys[0]
    }

    pub fn keys(&self) -> &[TokenKey] {
        &self.keys
    }
}

/// Why a token was refused. All of them answer `401 unauthorized` ([`TokenError::code`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is {len} bytes long; at most {TOKEN_MAX_LEN} are accepted")]
    TooLong { len: usize },
    #[error("token is malformed: {0}")]
    Malformed(&'static str),
    #[error("token algorithm is not accepted (only HS256 and EdDSA are)")]
    BadAlgorithm,
    #[error("token names a key id that is not configured")]
    UnknownKey,
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token lacks the required `{0}` claim")]
    MissingClaim(&'static str),
    #[error("token claim `{0}` has the wrong type or range")]
    BadClaim(&'static str),
    #[error("token is not meant for this service (its audience must include \"votes\")")]
    WrongAudience,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token subject is not a voter id (the decimal digits of a u64)")]
    BadSubject,
}

impl TokenError {
    pub fn code(&self) -> ErrorCode {
        ErrorCode::Unauthorized
    }

    /// The human text of the error body; built from fixed strings and lengths only, so it
    /// never echoes the token.
    pub fn message(&self) -> String {
        self.to_string()
    }
}

#[derive(Serialize)]
struct IssuedHeader<'a> {
    alg: &'static str,
    typ: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    kid: Option<&'a str>,
}

#[derive(Serialize)]
struct IssuedClaims<'a> {
    sub: &'a str,
    aud: &'static str,
    iat: u64,
    exp: u64,
}

/// A token for `voter`, issued at `now_s` (Unix seconds) and valid for `ttl_s` seconds.
pub fn issue(key: &TokenKey, voter: VoterId, ttl_s: u64, now_s: u64) -> String {
    let header = IssuedHeader {
        alg: key.algorithm().as_str(),
        typ: "JWT",
        kid: key.kid(),
    };
    let sub = voter.0.to_string();
    let claims = IssuedClaims {
        sub: &sub,
        aud: AUDIENCE,
        iat: now_s,
        // A clock or TTL near u64::MAX is a configuration bug, but must not wrap to the past.
        exp: now_s.saturating_add(ttl_s),
    };
    let header = serde_json::to_vec(&header).expect("a struct of strings serializes");
    let claims = serde_json::to_vec(&claims).expect("a struct of strings and ints serializes");
    let mut token = URL_SAFE_NO_PAD.encode(header);
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(claims, &mut token);
    let signature = key.sign(token.as_bytes());
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(signature, &mut token);
    debug_assert!(token.len() <= TOKEN_MAX_LEN);
    token
}

/// The header parameters we understand; anything else is refused (RFC 7515 §4.1.11 obliges
/// refusing unknown `crit` extensions, and ignoring `jku`/`jwk`/`x5u` silently would invite
/// confusion about which key was meant).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    alg: String,
    #[serde(default)]
    typ: Option<String>,
    #[serde(default)]
    kid: Option<String>,
}

/// Registered claims we check. Kept as raw JSON values so each wrong type gets its own precise
/// error; other claims (`iss`, `jti`, …) are ignored. Derived structs refuse duplicate keys,
/// so `{"sub":"1","sub":"2"}` cannot mean different voters to different parsers.
#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<Value>,
    #[serde(default)]
    aud: Option<Value>,
    #[serde(default)]
    exp: Option<Value>,
    #[serde(default)]
    nbf: Option<Value>,
    #[serde(default)]
    iat: Option<Value>,
}

/// The voter a token speaks for, if `keys` signed it and it is valid at `now_s` (Unix seconds).
pub fn verify(keys: &TokenKeys, token: &str, now_s: u64) -> Result<VoterId, TokenError> {
    if token.len() > TOKEN_MAX_LEN {
        return Err(TokenError::TooLong { len: token.len() });
    }
    let mut segments = token.split('.');
    let (Some(header_b64), Some(claims_b64), Some(signature_b64), None) = (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) else {
        return Err(TokenError::Malformed("a token has exactly three segments"));
    };
    let header_json = decode_segment(header_b64, "header is not base64url without padding")?;
    let ObjectOnly(header): ObjectOnly<Header> =
        serde_json::from_slice(&header_json).map_err(|_| {
            TokenError::Malformed("header is not a JSON object of `alg` and optional `typ`, `kid`")
        })?;
    let alg = Algorithm::from_header(&header.alg).ok_or(TokenError::BadAlgorithm)?;
    if header.typ.as_deref().is_some_and(|typ| typ != "JWT") {
        return Err(TokenError::Malformed("header `typ` is not \"JWT\""));
    }
    let signature = decode_segment(signature_b64, "signature is not base64url without padding")?;

    // The signing input is the first two segments exactly as received (RFC 7515 §5.2).
    let signing_input = &token.as_bytes()[..header_b64.len() + 1 + claims_b64.len()];
    let mut candidates = keys
        .keys
        .iter()
        .filter(|key| key.algorithm() == alg && key.kid == header.kid)
        .peekable();
    if header.kid.is_some() && candidates.peek().is_none() {
        return Err(TokenError::UnknownKey);
    }
    // Every candidate is tried even after a match, so the time taken does not reveal which
    // of several unnamed keys signed.
    let signed = candidates.fold(false, |found, key| {
        key.signature_matches(signing_input, &signature) | found
    });
    if !signed {
        return Err(TokenError::BadSignature);
    }

    // From here on the bytes were written by a key holder.
    let claims_json = decode_segment(claims_b64, "claims are not base64url without padding")?;
    let ObjectOnly(claims): ObjectOnly<Claims> = serde_json::from_slice(&claims_json)
        .map_err(|_| TokenError::Malformed("claims are not a JSON object without duplicates"))?;
    check_audience(claims.aud.as_ref())?;
    let exp = numeric_date(claims.exp.as_ref(), "exp")?.ok_or(TokenError::MissingClaim("exp"))?;
    if exp.saturating_add(CLOCK_SKEW_S) <= now_s {
        return Err(TokenError::Expired);
    }
    if let Some(nbf) = numeric_date(claims.nbf.as_ref(), "nbf")?
        && nbf > now_s.saturating_add(CLOCK_SKEW_S)
    {
        return Err(TokenError::NotYetValid);
    }
    // `iat` is informational, but a present one must still be a NumericDate.
    numeric_date(claims.iat.as_ref(), "iat")?;
    let sub = claims.sub.ok_or(TokenError::MissingClaim("sub"))?;
    let Value::String(sub) = sub else {
        return Err(TokenError::BadSubject);
    };
    parse_voter(&sub).ok_or(TokenError::BadSubject)
}

fn decode_segment(segment: &str, what: &'static str) -> Result<Vec<u8>, TokenError> {
    // The decoder refuses padding and non-zero trailing bits, so the encoding is canonical.
    URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| TokenError::Malformed(what))
}

fn check_audience(aud: Option<&Value>) -> Result<(), TokenError> {
    match aud {
        None => Err(TokenError::MissingClaim("aud")),
        Some(Value::String(one)) if one == AUDIENCE => Ok(()),
        Some(Value::String(_)) => Err(TokenError::WrongAudience),
        Some(Value::Array(many)) => {
            let mut found = false;
            for entry in many {
                match entry {
                    Value::String(s) => found |= s == AUDIENCE,
                    _ => return Err(TokenError::BadClaim("aud")),
                }
            }
            if found {
                Ok(())
            } else {
                Err(TokenError::WrongAudience)
            }
        }
        Some(_) => Err(TokenError::BadClaim("aud")),
    }
}

/// A NumericDate claim. We issue integers, so fractional or negative values are refused rather
/// than rounded one way or another.
fn numeric_date(value: Option<&Value>, claim: &'static str) -> Result<Option<u64>, TokenError> {
    match value {
        None => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or(TokenError::BadClaim(claim)),
    }
}

/// The canonical decimal spelling of a u64: `u64::from_str` alone would also take `+7`, and
/// `007` would be a second spelling of voter 7.
fn parse_voter(sub: &str) -> Option<VoterId> {
    let canonical = !sub.is_empty()
        && sub.bytes().all(|b| b.is_ascii_digit())
        && (sub == "0" || !sub.starts_with('0'));
    if !canonical {
        return None;
    }
    sub.parse().ok().map(VoterId)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The key of the pinned vectors (41 bytes).
    const KEY: &[u8] = b"test-only VOTES_TOKEN_KEY, 32+ bytes long";
    const NOW: u64 = 1_790_000_000;

    /// Computed independently with Python's `hmac`, `hashlib` and `base64` modules:
    /// header `{"alg":"HS256","typ":"JWT"}`, claims
    /// `{"sub":"42","aud":"votes","iat":1790000000,"exp":1790003600}` (compact separators).
    const PINNED: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.\
        eyJzdWIiOiI0MiIsImF1ZCI6InZvdGVzIiwiaWF0IjoxNzkwMDAwMDAwLCJleHAiOjE3OTAwMDM2MDB9.\
        dDiLAgRMnnmSeg6qCaeH1NoquPLoaZ0UxTYzu3aDmuM";

    /// Also from Python, written the way another issuer might: spaces, other key order,
    /// `aud` as an array, `nbf`, an extra `iss`, and the largest voter id.
    const FOREIGN: &str = "eyJ0eXAiOiAiSldUIiwgImFsZyI6ICJIUzI1NiJ9.\
        eyJpc3MiOiAic3NvIiwgImV4cCI6IDE3OTAwMDM2MDAsICJuYmYiOiAxNzkwMDAwMDAwLCAiYXVkIjogWyJvdGhl\
        ciIsICJ2b3RlcyJdLCAic3ViIjogIjE4NDQ2NzQ0MDczNzA5NTUxNjE1In0.\
        NXkJ5vuYsET6KAL3B7jTuz9zoti7Lej-eo_61JKtO18";

    fn keys() -> TokenKeys {
        TokenKeys::hs256(KEY).unwrap()
    }

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// A token with arbitrary header and claims JSON, correctly signed with `KEY`.
    fn forge(header: &str, claims: &str) -> String {
        let key = TokenKey::hs256(KEY).unwrap();
        let input = format!("{}.{}", b64(header.as_bytes()), b64(claims.as_bytes()));
        let sig = key.sign(input.as_bytes());
        format!("{input}.{}", b64(&sig))
    }

    fn with_claims(claims: &str) -> String {
        forge(r#"{"alg":"HS256","typ":"JWT"}"#, claims)
    }

    /// An Ed25519 SubjectPublicKeyInfo PEM of raw key bytes.
    fn spki_pem(public: &[u8]) -> String {
        let mut der = ED25519_SPKI_PREFIX.to_vec();
        der.extend_from_slice(public);
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n")
    }

    #[test]
    fn verifies_the_rfc_8037_ed25519_signature() {
        // RFC 8037 Appendix A.4: the JWS of "Example of Ed25519 signing" under the A.1 key. Its
        // payload is not JWT claims, so a correct verifier gets past the signature and stops
        // at the claims; a wrong one stops at the signature.
        let x = URL_SAFE_NO_PAD
            .decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
            .unwrap();
        let keys =
            TokenKeys::new(vec![TokenKey::ed25519_public_pem(&spki_pem(&x)).unwrap()]).unwrap();
        let jws = "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc.\
                   hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg";
        assert_eq!(
            verify(&keys, jws, NOW),
            Err(TokenError::Malformed(
                "claims are not a JSON object without duplicates"
            ))
        );
        let mut tampered = jws.to_owned();
        tampered.replace_range(jws.len() - 2..jws.len() - 1, "B");
        assert_eq!(verify(&keys, &tampered, NOW), Err(TokenError::BadSignature));
    }

    #[test]
    fn eddsa_tokens_verify_with_the_public_key_alone_and_rotate_by_kid() {
        use ring::signature::KeyPair;
        let rng = ring::rand::SystemRandom::new();
        let pem_of = |pkcs8: &[u8]| {
            let b64 = base64::engine::general_purpose::STANDARD.encode(pkcs8);
            format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n")
        };
        let new_pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let issuer = TokenKey::ed25519_private_pem(&pem_of(new_pkcs8.as_ref()))
            .unwrap()
            .with_kid("2026-11")
            .unwrap();
        let public = ring::signature::Ed25519KeyPair::from_pkcs8(new_pkcs8.as_ref())
            .unwrap()
            .public_key()
            .as_ref()
            .to_vec();
        // The node: the new issuer's public key (by kid) and the old HS256 secret, at once.
        let node = TokenKeys::new(vec![
            TokenKey::ed25519_public_pem(&spki_pem(&public))
                .unwrap()
                .with_kid("2026-11")
                .unwrap(),
            TokenKey::hs256(KEY).unwrap(),
        ])
        .unwrap();
        assert!(
            node.signer()
                .is_some_and(|k| k.algorithm() == Algorithm::Hs256)
        );
        let token = issue(&issuer, VoterId(7), 600, NOW);
        assert!(token.starts_with(&b64(br#"{"alg":"EdDSA","typ":"JWT","kid":"2026-11"}"#)));
        assert_eq!(verify(&node, &token, NOW), Ok(VoterId(7)));
        assert_eq!(
            verify(&node, PINNED, NOW),
            Ok(VoterId(42)),
            "the old secret still works"
        );

        // Another Ed25519 key under the same kid: refused.
        let other = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let forger = TokenKey::ed25519_private_pem(&pem_of(other.as_ref()))
            .unwrap()
            .with_kid("2026-11")
            .unwrap();
        assert_eq!(
            verify(&node, &issue(&forger, VoterId(7), 600, NOW), NOW),
            Err(TokenError::BadSignature)
        );
        // Algorithm confusion: HS256 with the public key bytes as the secret, under the EdDSA kid.
        let confused = TokenKey::hs256(&[public.clone(), public.clone()].concat())
            .unwrap()
            .with_kid("2026-11")
            .unwrap();
        assert_eq!(
            verify(&node, &issue(&confused, VoterId(7), 600, NOW), NOW),
            Err(TokenError::UnknownKey),
            "an EdDSA key is never tried as an HMAC secret"
        );
        let unknown = issuer.clone().with_kid("2027-01").unwrap();
        assert_eq!(
            verify(&node, &issue(&unknown, VoterId(7), 600, NOW), NOW),
            Err(TokenError::UnknownKey)
        );
        // A verification-only key never signs, and its Debug shows no key bytes.
        let verify_only = TokenKeys::new(vec![
            TokenKey::ed25519_public_pem(&spki_pem(&public)).unwrap(),
        ])
        .unwrap();
        assert!(verify_only.signer().is_none());
        assert!(format!("{:?}", node).contains("<redacted>"));
    }

    #[test]
    fn the_key_file_lists_keys_by_kid_and_names_the_bad_line() {
        let files = |path: &str| -> Result<Vec<u8>, String> {
            match path {
                "/k/old" => Ok(b"an-old-hs256-secret-of-32-bytes-or-more\n".to_vec()),
                "/k/short" => Ok(b"short".to_vec()),
                "/k/pub" => Ok(spki_pem(&[7u8; 32]).into_bytes()),
                _ => Err("no such file".into()),
            }
        };
        let keys = parse_key_file(
            "# rotation\nold HS256 /k/old\n\nnew EdDSA /k/pub # issuer\n",
            files,
        )
        .unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(
            (keys[0].kid(), keys[0].algorithm()),
            (Some("old"), Algorithm::Hs256)
        );
        assert_eq!(
            (keys[1].kid(), keys[1].algorithm()),
            (Some("new"), Algorithm::EdDsa)
        );
        for (text, line) in [
            ("a HS256 /k/short", 1),
            ("\nb RS256 /k/old", 2),
            ("c HS256", 1),
            ("d EdDSA /k/missing", 1),
        ] {
            match parse_key_file(text, files) {
                Err(KeyError::KeyFile { line: got, .. }) => assert_eq!(got, line, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn issues_exactly_the_independently_computed_token() {
        let key = TokenKey::hs256(KEY).unwrap();
        assert_eq!(issue(&key, VoterId(42), 3600, NOW), PINNED);
        assert_eq!(verify(&keys(), PINNED, NOW), Ok(VoterId(42)));
    }

    #[test]
    fn verifies_a_foreign_issuers_token() {
        assert_eq!(verify(&keys(), FOREIGN, NOW), Ok(VoterId(u64::MAX)));
    }

    #[test]
    fn enforces_expiry_with_skew() {
        let exp = NOW + 3600;
        assert!(verify(&keys(), PINNED, exp).is_ok());
        assert!(verify(&keys(), PINNED, exp + CLOCK_SKEW_S - 1).is_ok());
        assert_eq!(
            verify(&keys(), PINNED, exp + CLOCK_SKEW_S),
            Err(TokenError::Expired)
        );
        assert_eq!(verify(&keys(), PINNED, u64::MAX), Err(TokenError::Expired));
    }

    #[test]
    fn enforces_not_before_with_skew() {
        // FOREIGN has nbf = NOW.
        assert!(verify(&keys(), FOREIGN, NOW - CLOCK_SKEW_S).is_ok());
        assert_eq!(
            verify(&keys(), FOREIGN, NOW - CLOCK_SKEW_S - 1),
            Err(TokenError::NotYetValid)
        );
        let t = with_claims(r#"{"sub":"1","aud":"votes","exp":99,"nbf":18446744073709551615}"#);
        assert_eq!(verify(&keys(), &t, 0), Err(TokenError::NotYetValid));
    }

    #[test]
    fn refuses_other_keys_and_tampering() {
        let other = TokenKeys::hs256(&[7u8; 32]).unwrap();
        assert_eq!(verify(&other, PINNED, NOW), Err(TokenError::BadSignature));
        // Claims swapped for another voter's, signature kept.
        let parts: Vec<&str> = PINNED.split('.').collect();
        let claims = b64(br#"{"sub":"43","aud":"votes","iat":1790000000,"exp":1790003600}"#);
        let swapped = format!("{}.{claims}.{}", parts[0], parts[2]);
        assert_eq!(
            verify(&keys(), &swapped, NOW),
            Err(TokenError::BadSignature)
        );
        // A truncated signature is a mismatch, not an error of its own.
        let short = format!("{}.{}.{}", parts[0], parts[1], &parts[2][..20]);
        assert_eq!(verify(&keys(), &short, NOW), Err(TokenError::BadSignature));
        let empty_sig = format!("{}.{}.", parts[0], parts[1]);
        assert_eq!(
            verify(&keys(), &empty_sig, NOW),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn refuses_every_algorithm_but_hs256_and_eddsa() {
        let claims = r#"{"sub":"1","aud":"votes","exp":1790003600}"#;
        for alg in [
            "none", "None", "hs256", "HS384", "HS512", "RS256", "eddsa", "Ed25519", "",
        ] {
            let t = forge(&format!(r#"{{"alg":"{alg}"}}"#), claims);
            assert_eq!(
                verify(&keys(), &t, NOW),
                Err(TokenError::BadAlgorithm),
                "{alg}"
            );
        }
        // EdDSA is known, but an HMAC-signed token claiming it meets no Ed25519 key here.
        let t = forge(r#"{"alg":"EdDSA"}"#, claims);
        assert_eq!(verify(&keys(), &t, NOW), Err(TokenError::BadSignature));
        // The classic `alg: none` token with an empty signature.
        let none = format!(
            "{}.{}.",
            b64(br#"{"alg":"none","typ":"JWT"}"#),
            b64(claims.as_bytes())
        );
        assert_eq!(verify(&keys(), &none, NOW), Err(TokenError::BadAlgorithm));
    }

    #[test]
    fn refuses_malformed_headers() {
        let claims = r#"{"sub":"1","aud":"votes","exp":1790003600}"#;
        for header in [
            r#"{"typ":"JWT"}"#,
            r#"{"alg":"HS256","crit":["exp"]}"#,
            r#"{"alg":"HS256","jku":"https://evil.example/keys"}"#,
            r#"{"alg":"HS256","alg":"HS256"}"#,
            r#"{"alg":256}"#,
            r#"["HS256"]"#,
            "not json",
            "",
        ] {
            assert!(
                matches!(
                    verify(&keys(), &forge(header, claims), NOW),
                    Err(TokenError::Malformed(_))
                ),
                "{header}"
            );
        }
        let jwe = forge(r#"{"alg":"HS256","typ":"JWE"}"#, claims);
        assert_eq!(
            verify(&keys(), &jwe, NOW),
            Err(TokenError::Malformed("header `typ` is not \"JWT\""))
        );
        let no_typ = forge(r#"{"alg":"HS256"}"#, claims);
        assert_eq!(verify(&keys(), &no_typ, NOW), Ok(VoterId(1)));
    }

    #[test]
    fn refuses_bad_framing() {
        // The refusals, named by the part of the token at fault.
        const SEGMENTS: TokenError = TokenError::Malformed("a token has exactly three segments");
        const HEADER: TokenError = TokenError::Malformed("header is not base64url without padding");
        const SIGNATURE: TokenError =
            TokenError::Malformed("signature is not base64url without padding");
        let cases: [(&str, TokenError); 8] = [
            ("", SEGMENTS),
            ("a.b", SEGMENTS),
            ("a.b.c.d", SEGMENTS),
            ("eyJhbGciOiJIUzI1NiJ9=.e30.AAAA", HEADER),
            ("eyJhbGciOiJIUzI1NiJ9.e30.AA+A", SIGNATURE),
            (" eyJhbGciOiJIUzI1NiJ9.e30.AAAA", HEADER),
            // `e31` decodes to `{}` too, with non-zero trailing bits: a second spelling.
            ("eyJhbGciOiJIUzI1NiJ9.e30.AAB", SIGNATURE),
            ("eyJhbGciOiJIUzI1NiJ9.e30.AAAA", TokenError::BadSignature),
        ];
        for (token, want) in cases {
            assert_eq!(verify(&keys(), token, NOW), Err(want), "{token:?}");
        }
        let long = "a".repeat(TOKEN_MAX_LEN + 1);
        assert_eq!(
            verify(&keys(), &long, NOW),
            Err(TokenError::TooLong {
                len: TOKEN_MAX_LEN + 1
            })
        );
    }

    #[test]
    fn padding_the_signature_is_refused() {
        let padded = format!("{PINNED}=");
        assert_eq!(
            verify(&keys(), &padded, NOW),
            Err(TokenError::Malformed(
                "signature is not base64url without padding"
            ))
        );
    }

    #[test]
    fn checks_the_audience() {
        let cases = [
            (
                r#"{"sub":"1","exp":1790003600}"#,
                Err(TokenError::MissingClaim("aud")),
            ),
            (
                r#"{"sub":"1","aud":"Votes","exp":1790003600}"#,
                Err(TokenError::WrongAudience),
            ),
            (
                r#"{"sub":"1","aud":[],"exp":1790003600}"#,
                Err(TokenError::WrongAudience),
            ),
            (
                r#"{"sub":"1","aud":["a","b"],"exp":1790003600}"#,
                Err(TokenError::WrongAudience),
            ),
            (
                r#"{"sub":"1","aud":["votes",1],"exp":1790003600}"#,
                Err(TokenError::BadClaim("aud")),
            ),
            (
                r#"{"sub":"1","aud":{"votes":1},"exp":1790003600}"#,
                Err(TokenError::BadClaim("aud")),
            ),
            (
                r#"{"sub":"1","aud":["x","votes"],"exp":1790003600}"#,
                Ok(VoterId(1)),
            ),
        ];
        for (claims, want) in cases {
            assert_eq!(verify(&keys(), &with_claims(claims), NOW), want, "{claims}");
        }
    }

    #[test]
    fn checks_the_dates() {
        let cases = [
            (
                r#"{"sub":"1","aud":"votes"}"#,
                Err(TokenError::MissingClaim("exp")),
            ),
            (
                r#"{"sub":"1","aud":"votes","exp":null}"#,
                Err(TokenError::MissingClaim("exp")),
            ),
            (
                r#"{"sub":"1","aud":"votes","exp":"1790003600"}"#,
                Err(TokenError::BadClaim("exp")),
            ),
            (
                r#"{"sub":"1","aud":"votes","exp":1790003600.5}"#,
                Err(TokenError::BadClaim("exp")),
            ),
            (
                r#"{"sub":"1","aud":"votes","exp":-1}"#,
                Err(TokenError::BadClaim("exp")),
            ),
            (
                r#"{"sub":"1","aud":"votes","exp":1790003600,"nbf":"0"}"#,
                Err(TokenError::BadClaim("nbf")),
            ),
            (
                r#"{"sub":"1","aud":"votes","exp":1790003600,"iat":1.5}"#,
                Err(TokenError::BadClaim("iat")),
            ),
        ];
        for (claims, want) in cases {
            assert_eq!(verify(&keys(), &with_claims(claims), NOW), want, "{claims}");
        }
    }

    #[test]
    fn accepts_only_canonical_decimal_subjects() {
        let good = [("0", 0), ("7", 7), ("18446744073709551615", u64::MAX)];
        for (sub, voter) in good {
            let t = with_claims(&format!(
                r#"{{"sub":"{sub}","aud":"votes","exp":1790003600}}"#
            ));
            assert_eq!(verify(&keys(), &t, NOW), Ok(VoterId(voter)), "{sub}");
        }
        let bad = [
            r#""+7""#,
            r#""-7""#,
            r#"" 7""#,
            r#""7 ""#,
            r#""007""#,
            r#""""#,
            r#""18446744073709551616""#,
            r#""1e3""#,
            r#""0x10""#,
            "7",
            "null",
            r#"["7"]"#,
        ];
        for sub in bad {
            let t = with_claims(&format!(
                r#"{{"sub":{sub},"aud":"votes","exp":1790003600}}"#
            ));
            let got = verify(&keys(), &t, NOW);
            let want = if sub == "null" {
                Err(TokenError::MissingClaim("sub"))
            } else {
                Err(TokenError::BadSubject)
            };
            assert_eq!(got, want, "{sub}");
        }
    }

    #[test]
    fn refuses_duplicate_claims() {
        let t = with_claims(r#"{"sub":"1","sub":"2","aud":"votes","exp":1790003600}"#);
        assert_eq!(
            verify(&keys(), &t, NOW),
            Err(TokenError::Malformed(
                "claims are not a JSON object without duplicates"
            ))
        );
        let t = with_claims(r#"["sub","1"]"#);
        assert!(matches!(
            verify(&keys(), &t, NOW),
            Err(TokenError::Malformed(_))
        ));
    }

    #[test]
    fn rotates_keys_by_kid() {
        let old = TokenKey::hs256(&[1u8; 32])
            .unwrap()
            .with_kid("2026-01")
            .unwrap();
        let new = TokenKey::hs256(&[2u8; 32])
            .unwrap()
            .with_kid("2026-02")
            .unwrap();
        let keys = TokenKeys::new(vec![new.clone(), old.clone()]).unwrap();
        assert_eq!(keys.signing_key().kid(), Some("2026-02"));
        for key in [&old, &new] {
            let t = issue(key, VoterId(9), 60, NOW);
            assert_eq!(verify(&keys, &t, NOW), Ok(VoterId(9)));
        }
        let stranger = TokenKey::hs256(&[3u8; 32])
            .unwrap()
            .with_kid("2025-12")
            .unwrap();
        let t = issue(&stranger, VoterId(9), 60, NOW);
        assert_eq!(verify(&keys, &t, NOW), Err(TokenError::UnknownKey));
        // A token without kid is not checked against named keys.
        let unnamed = issue(&TokenKey::hs256(&[1u8; 32]).unwrap(), VoterId(9), 60, NOW);
        assert_eq!(verify(&keys, &unnamed, NOW), Err(TokenError::BadSignature));
        // Several unnamed keys are all tried.
        let both = TokenKeys::new(vec![
            TokenKey::hs256(&[1u8; 32]).unwrap(),
            TokenKey::hs256(&[2u8; 32]).unwrap(),
        ])
        .unwrap();
        assert_eq!(verify(&both, &unnamed, NOW), Ok(VoterId(9)));
    }

    #[test]
    fn validates_key_sets() {
        assert_eq!(
            TokenKey::hs256(&[0u8; 31]).unwrap_err(),
            KeyError::SecretTooShort { len: 31 }
        );
        let k = || TokenKey::hs256(&[0u8; 32]).unwrap();
        assert_eq!(k().with_kid("").unwrap_err(), KeyError::BadKid);
        assert_eq!(k().with_kid("a b").unwrap_err(), KeyError::BadKid);
        assert_eq!(k().with_kid("x".repeat(65)).unwrap_err(), KeyError::BadKid);
        assert_eq!(TokenKeys::new(vec![]).unwrap_err(), KeyError::NoKeys);
        assert_eq!(
            TokenKeys::new(vec![k(); MAX_KEYS + 1]).unwrap_err(),
            KeyError::TooManyKeys(MAX_KEYS + 1)
        );
        assert_eq!(
            TokenKeys::new(vec![k().with_kid("a").unwrap(), k().with_kid("a").unwrap()])
                .unwrap_err(),
            KeyError::DuplicateKid
        );
    }

    #[test]
    fn never_leaks_secrets_or_tokens() {
        let key = TokenKey::hs256(KEY).unwrap();
        let debug = format!("{key:?} {:?}", keys());
        assert!(!debug.contains("test-only"), "{debug}");
        assert!(debug.contains("<redacted>"));
        let errors = [
            TokenError::TooLong { len: 5000 },
            TokenError::Malformed("x"),
            TokenError::BadAlgorithm,
            TokenError::UnknownKey,
            TokenError::BadSignature,
            TokenError::MissingClaim("exp"),
            TokenError::BadClaim("exp"),
            TokenError::WrongAudience,
            TokenError::Expired,
            TokenError::NotYetValid,
            TokenError::BadSubject,
        ];
        for e in errors {
            assert_eq!(e.code(), ErrorCode::Unauthorized);
            assert_eq!(e.code().status(), 401);
            assert!(!e.message().is_empty());
        }
        // Every error produced for a real token is free of its segments.
        for token in [PINNED, FOREIGN] {
            for now in [0, NOW, u64::MAX] {
                let other = TokenKeys::hs256(&[9u8; 32]).unwrap();
                for ks in [&keys(), &other] {
                    if let Err(e) = verify(ks, token, now) {
                        for seg in token.split('.') {
                            assert!(!e.message().contains(seg));
                        }
                    }
                }
            }
        }
    }

    proptest! {
        #[test]
        fn issued_tokens_verify_for_their_lifetime(
            voter in any::<u64>(),
            ttl in 1u64..=366 * 86_400,
            now in 0u64..=4_000_000_000,
            at in 0u64..=1_000_000,
        ) {
            let key = TokenKey::hs256(KEY).unwrap();
            let t = issue(&key, VoterId(voter), ttl, now);
            prop_assert!(t.len() <= TOKEN_MAX_LEN);
            let when = now + at;
            let got = verify(&keys(), &t, when);
            if when < now + ttl + CLOCK_SKEW_S {
                prop_assert_eq!(got, Ok(VoterId(voter)));
            } else {
                prop_assert_eq!(got, Err(TokenError::Expired));
            }
        }

        #[test]
        fn any_single_byte_change_is_refused(
            voter in any::<u64>(),
            index in any::<prop::sample::Index>(),
            replacement in any::<u8>(),
        ) {
            let key = TokenKey::hs256(KEY).unwrap();
            let t = issue(&key, VoterId(voter), 3600, NOW);
            let mut bytes = t.clone().into_bytes();
            let i = index.index(bytes.len());
            prop_assume!(bytes[i] != replacement);
            bytes[i] = replacement;
            // Not every change keeps UTF-8; those cannot even reach `verify` as a `&str`.
            if let Ok(changed) = String::from_utf8(bytes) {
                prop_assert!(verify(&keys(), &changed, NOW).is_err());
            }
        }

        #[test]
        fn arbitrary_input_never_panics(s in "\\PC{0,300}") {
            let _ = verify(&keys(), &s, NOW);
        }

        #[test]
        fn dotted_base64_never_panics(
            parts in proptest::collection::vec("[A-Za-z0-9_-]{0,80}", 0..5)
        ) {
            let _ = verify(&keys(), &parts.join("."), NOW);
        }
    }
}
