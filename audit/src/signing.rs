//! The Ed25519 key that signs exports (docs/design.md §4.5): read from the PKCS#8 PEM file that
//! `openssl genpkey -algorithm ed25519` writes, its public key printed as the
//! SubjectPublicKeyInfo PEM that `openssl pkey -pubout` prints, and the signature of
//! `manifest.json` stored as standard base64 of the 64 raw signature bytes (RFC 8032) plus a
//! newline, so `base64 -d manifest.sig` feeds `openssl pkeyutl -verify -rawin` directly.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

/// DER of `SEQUENCE { SEQUENCE { OID 1.3.101.112 } BIT STRING (32 bytes) }` up to the key:
/// an Ed25519 SubjectPublicKeyInfo is these 12 bytes and the 32 key bytes (RFC 8410 §4).
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
pub const PUBLIC_KEY_LEN: usize = 32;
pub const SIGNATURE_LEN: usize = 64;
/// Larger key files are not keys: they are refused before being read whole.
pub const KEY_FILE_MAX_BYTES: u64 = 64 * 1024;

/// Why a key could not be read; the text names the file and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(String);

type Result<T, E = KeyError> = std::result::Result<T, E>;

macro_rules! key_err {
    ($($t:tt)*) => { KeyError(format!($($t)*)) };
}

/// Reads a key file of at most [`KEY_FILE_MAX_BYTES`].
pub fn read_key_file(path: &Path, what: &str) -> Result<String> {
    let bytes = crate::read_bounded(path, KEY_FILE_MAX_BYTES)
        .map_err(|e| key_err!("reading {what} {}: {e}", path.display()))?;
    String::from_utf8(bytes).map_err(|_| key_err!("{what} {} is not text", path.display()))
}

/// The contents of the first PEM block labelled `label` in `text`.
pub fn pem_block(text: &str, label: &str) -> Result<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let Some(start) = text.find(&begin) else {
        if text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
            return Err(key_err!(
                "the key is encrypted; give an unencrypted PKCS#8 key (openssl genpkey without -aes…)"
            ));
        }
        let found = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("-----BEGIN "))
            .map(|l| l.trim_end_matches('-').to_owned());
        return match found {
            Some(other) => Err(key_err!(
                "expected a PEM block \"{label}\", found \"{other}\""
            )),
            None => Err(key_err!(
                "no PEM block \"{label}\" (expected {begin} … {end})"
            )),
        };
    };
    let body = &text[start + begin.len()..];
    let stop = body
        .find(&end)
        .ok_or_else(|| key_err!("PEM block \"{label}\" has no {end} line"))?;
    let b64: String = body[..stop]
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    B64.decode(b64)
        .map_err(|e| key_err!("PEM block \"{label}\" is not base64: {e}"))
}

/// PEM text of `der` under `label`, lines of 64 characters, `\n` line ends (as OpenSSL).
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = B64.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The signing key of exports.
pub struct SigningKey {
    pair: Ed25519KeyPair,
}

/// Shows the public key only: a secret never reaches a log line.
impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("public_key_sha256", &self.public_key().fingerprint())
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Reads a PKCS#8 PEM file (v1 as OpenSSL writes it, or v2 with the public key).
    pub fn from_pem_file(path: &Path) -> Result<Self> {
        let text = read_key_file(path, "the signing key")?;
        Self::from_pem(&text).map_err(|e| key_err!("the signing key {}: {e}", path.display()))
    }

    pub fn from_pem(text: &str) -> Result<Self> {
        let der = pem_block(text, "PRIVATE KEY")?;
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
            .map_err(|e| key_err!("not an Ed25519 PKCS#8 private key: {e}"))?;
        Ok(Self { pair })
    }

    pub fn public_key(&self) -> PublicKey {
        let mut key = [0u8; PUBLIC_KEY_LEN];
        key.copy_from_slice(self.pair.public_key().as_ref());
        PublicKey(key)
    }

    /// The text of `manifest.sig` for `message`: base64 of the signature and a newline.
    pub fn sign_text(&self, message: &[u8]) -> String {
        let mut text = B64.encode(self.pair.sign(message).as_ref());
        text.push('\n');
        text
    }
}

/// An Ed25519 public key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublicKey(pub [u8; PUBLIC_KEY_LEN]);

impl PublicKey {
    /// Reads the SubjectPublicKeyInfo PEM that `votes audit pubkey` or `openssl pkey -pubout`
    /// print.
    pub fn from_pem(text: &str) -> Result<Self> {
        let der = pem_block(text, "PUBLIC KEY")?;
        match der.strip_prefix(&SPKI_PREFIX[..]) {
            Some(key) if key.len() == PUBLIC_KEY_LEN => {
                let mut out = [0u8; PUBLIC_KEY_LEN];
                out.copy_from_slice(key);
                Ok(Self(out))
            }
            _ => Err(key_err!(
                "not an Ed25519 public key (SubjectPublicKeyInfo of OID 1.3.101.112)"
            )),
        }
    }

    pub fn spki_der(self) -> Vec<u8> {
        let mut der = SPKI_PREFIX.to_vec();
        der.extend_from_slice(&self.0);
        der
    }

    pub fn to_pem(self) -> String {
        pem_encode("PUBLIC KEY", &self.spki_der())
    }

    /// SHA-256 of the SubjectPublicKeyInfo DER, hex: names the key in the manifest, and is
    /// what `openssl pkey -pubin -outform DER | sha256sum` prints.
    pub fn fingerprint(self) -> String {
        hex::encode(ring::digest::digest(
            &ring::digest::SHA256,
            &self.spki_der(),
        ))
    }

    /// Checks `signature_text` (the contents of `manifest.sig`) over `message`.
    pub fn verify_text(&self, message: &[u8], signature_text: &str) -> Result<(), String> {
        // Whitespace anywhere is ignored: `base64` wraps its output at 76 characters.
        let compact: String = signature_text
            .chars()
            .filter(|c| !c.is_ascii_whitespace())
            .collect();
        let sig = B64
            .decode(compact)
            .map_err(|e| format!("manifest.sig is not base64: {e}"))?;
        if sig.len() != SIGNATURE_LEN {
            return Err(format!(
                "manifest.sig holds {} bytes, an Ed25519 signature has {SIGNATURE_LEN}",
                sig.len()
            ));
        }
        UnparsedPublicKey::new(&ED25519, &self.0)
            .verify(message, &sig)
            .map_err(|_| {
                format!(
                    "the signature does not match manifest.json under the public key {}",
                    self.fingerprint()
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 8032 §7.1 TEST 1 as OpenSSL 3.0 writes it: `openssl genpkey` output (PKCS#8 v1) of
    // the secret key 9d61b19d…7f60, and `openssl pkey -pubout` of it.
    const KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIJ1hsZ3v/VpguoRK9JLsLMREScVpezJpGXA7rAMcrn9g
-----END PRIVATE KEY-----
";
    const PUB_PEM: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEA11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=
-----END PUBLIC KEY-----
";
    // RFC 8032 §7.1 TEST 1: the signature of the empty message.
    const EMPTY_SIG_HEX: &str = "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155\
                                 5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b";

    #[test]
    fn reads_openssl_keys_and_matches_rfc_8032() {
        let key = SigningKey::from_pem(KEY_PEM).unwrap();
        assert_eq!(
            hex::encode(key.public_key().0),
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
        );
        assert_eq!(key.public_key().to_pem(), PUB_PEM);
        assert_eq!(PublicKey::from_pem(PUB_PEM).unwrap(), key.public_key());
        let text = key.sign_text(b"");
        assert_eq!(hex::encode(B64.decode(text.trim()).unwrap()), EMPTY_SIG_HEX);
        assert!(text.ends_with('\n'));
        key.public_key().verify_text(b"", &text).unwrap();
    }

    #[test]
    fn refuses_other_messages_keys_and_malformed_signatures() {
        let key = SigningKey::from_pem(KEY_PEM).unwrap();
        let text = key.sign_text(b"manifest");
        let public = key.public_key();
        assert!(public.verify_text(b"manifest", &text).is_ok());
        let wrapped = format!("{}\n{}", &text[..76], &text[76..]);
        assert!(public.verify_text(b"manifest", &wrapped).is_ok());
        assert!(public.verify_text(b"manifesT", &text).is_err());
        let mut other = public;
        other.0[0] ^= 1;
        assert!(other.verify_text(b"manifest", &text).is_err());
        assert!(
            public
                .verify_text(b"manifest", "not base64!")
                .unwrap_err()
                .contains("not base64")
        );
        assert!(
            public
                .verify_text(b"manifest", "AAAA")
                .unwrap_err()
                .contains("3 bytes")
        );
    }

    #[test]
    fn refuses_keys_of_the_wrong_kind() {
        assert!(
            SigningKey::from_pem(PUB_PEM)
                .unwrap_err()
                .to_string()
                .contains("found \"PUBLIC KEY\"")
        );
        assert!(PublicKey::from_pem(KEY_PEM).is_err());
        let encrypted =
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n";
        assert!(
            SigningKey::from_pem(encrypted)
                .unwrap_err()
                .to_string()
                .contains("encrypted")
        );
        // An RSA SubjectPublicKeyInfo is not an Ed25519 one.
        let rsa = pem_encode("PUBLIC KEY", &[0x30, 0x82, 0x01, 0x22, 0x30, 0x0d]);
        assert!(PublicKey::from_pem(&rsa).is_err());
        assert!(SigningKey::from_pem("").is_err());
    }
}
