//! TLS on TCP listeners (docs/design.md §4.1 `--https`): loading the server's certificate and key, and
//! self-signed certificates for development.
//!
//! Always the `ring` provider, passed explicitly: the workspace also links rustls with aws-lc
//! (through the AWS SDK), and with two providers compiled in rustls cannot pick a process
//! default by itself (`ServerConfig::builder()` would panic).

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::{PemObject, SectionKind};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::{NetError, TlsFileKind, TlsFileProblem};

/// ALPN id of HTTP/2 over TLS (RFC 9113 §3.2).
pub(crate) const ALPN_H2: &[u8] = b"h2";
/// ALPN id of HTTP/1.1 (RFC 7301 §6).
pub(crate) const ALPN_HTTP11: &[u8] = b"http/1.1";
pub(crate) const ALPN_H3: &[u8] = b"h3";

/// A certificate chain or key file is a few KiB; anything much larger is the wrong file, and we
/// would rather say so than read a multi-GB file into memory.
const MAX_PEM_FILE_BYTES: u64 = 1 << 20;

fn file_err(kind: TlsFileKind, path: &Path, problem: TlsFileProblem) -> NetError {
    NetError::TlsFile {
        kind,
        path: path.to_path_buf(),
        problem,
    }
}

/// A PEM file's raw bytes and every section rustls knows in it, in file order.
struct PemFile {
    raw: Vec<u8>,
    sections: Vec<(SectionKind, Vec<u8>)>,
}

/// Reads a PEM file under [`MAX_PEM_FILE_BYTES`] and decodes every section rustls knows.
fn read_pem(kind: TlsFileKind, path: &Path) -> Result<PemFile, NetError> {
    let err = |p| file_err(kind, path, p);
    let file = std::fs::File::open(path).map_err(|e| err(TlsFileProblem::Read(e)))?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| err(TlsFileProblem::Read(e)))?;
    if bytes.len() as u64 > MAX_PEM_FILE_BYTES {
        return Err(err(TlsFileProblem::TooLarge {
            limit: MAX_PEM_FILE_BYTES,
        }));
    }
    let sections = <(SectionKind, Vec<u8>)>::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(TlsFileProblem::Pem(e)))?;
    Ok(PemFile {
        raw: bytes,
        sections,
    })
}

/// "PRIVATE KEY, CERTIFICATE" or "no PEM block rustls knows": tells a swapped pair at a glance.
fn describe(sections: &[(SectionKind, Vec<u8>)]) -> String {
    if sections.is_empty() {
        return "no PEM block rustls knows".into();
    }
    let names: Vec<String> = sections
        .iter()
        .map(|(k, _)| {
            match k {
                SectionKind::Certificate => "CERTIFICATE",
                SectionKind::PublicKey => "PUBLIC KEY",
                SectionKind::RsaPrivateKey => "RSA PRIVATE KEY",
                SectionKind::PrivateKey => "PRIVATE KEY",
                SectionKind::EcPrivateKey => "EC PRIVATE KEY",
                SectionKind::Crl => "X509 CRL",
                SectionKind::Csr => "CERTIFICATE REQUEST",
                _ => "other",
            }
            .to_string()
        })
        .collect();
    names.join(", ")
}

/// The rustls configuration of a TLS listener: the PEM certificate chain (leaf first) at
/// `cert_pem_path`, the PEM private key (PKCS#8 `PRIVATE KEY`, PKCS#1 `RSA PRIVATE KEY` or SEC1
/// `EC PRIVATE KEY`) at `key_pem_path`, ALPN `h2` then `http/1.1`, TLS 1.2 and 1.3.
///
/// Reads files: call it at start-up, not on a reactor. Errors name the file and what is wrong
/// with it ([`NetError::TlsFile`]), or both files when the key does not belong to the
/// certificate ([`NetError::TlsKeyMismatch`]).
pub fn tls_server_config(
    cert_pem_path: impl AsRef<Path>,
    key_pem_path: impl AsRef<Path>,
) -> Result<Arc<ServerConfig>, NetError> {
    let (cert_path, key_path) = (cert_pem_path.as_ref(), key_pem_path.as_ref());
    let (certs, key) = load_identity(cert_path, key_path)?;
    let mut cfg = ServerConfig::builder_with_provider(ring_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| NetError::TlsConfig(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| identity_err(e, cert_path, key_path))?;
    // Order is the server's preference when the client offers both (RFC 7301 lets us choose):
    // h2 multiplexes, so one connection per voter app is enough.
    cfg.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()];
    // 0-RTT stays off (rustls' default, `max_early_data_size = 0`): early data can be replayed,
    // and a replayed vote must never look like a new request.
    Ok(Arc::new(cfg))
}

fn ring_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificate chain (leaf first) and the one private key of a TLS end, each checked
/// apart so that an error names the file at fault.
fn load_identity(
    cert_path: &Path,
    key_path: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), NetError> {
    let certs = load_certs(cert_path)?;
    let PemFile { raw, sections } = read_pem(TlsFileKind::PrivateKey, key_path)?;
    let found = describe(&sections);
    let mut keys: Vec<PrivateKeyDer<'static>> = sections
        .into_iter()
        .filter_map(|(k, der)| PrivateKeyDer::from_pem(k, der))
        .collect();
    let key_err = |p| file_err(TlsFileKind::PrivateKey, key_path, p);
    let count = keys.len();
    let key = match keys.pop() {
        Some(key) if count == 1 => key,
        None if contains(&raw, b"-----BEGIN ENCRYPTED PRIVATE KEY-----") => {
            return Err(key_err(TlsFileProblem::EncryptedKey));
        }
        None => return Err(key_err(TlsFileProblem::NoPrivateKey { found })),
        Some(_) => return Err(key_err(TlsFileProblem::SeveralKeys { count })),
    };
    // Checked apart from the certificate so that a bad key is blamed on the key file.
    ring_provider()
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| key_err(TlsFileProblem::UnusableKey(e)))?;
    Ok((certs, key))
}

/// Every CERTIFICATE block of a PEM file, in order; at least one.
fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, NetError> {
    let PemFile { sections, .. } = read_pem(TlsFileKind::CertChain, path)?;
    let found = describe(&sections);
    let certs: Vec<CertificateDer<'static>> = sections
        .into_iter()
        .filter_map(|(k, der)| CertificateDer::from_pem(k, der))
        .collect();
    if certs.is_empty() {
        return Err(file_err(
            TlsFileKind::CertChain,
            path,
            TlsFileProblem::NoCertificate { found },
        ));
    }
    Ok(certs)
}

/// rustls' complaint about a certificate and key pair, blamed on the right file.
fn identity_err(e: rustls::Error, cert_path: &Path, key_path: &Path) -> NetError {
    match e {
        rustls::Error::InconsistentKeys(_) => NetError::TlsKeyMismatch {
            cert: cert_path.to_path_buf(),
            key: key_path.to_path_buf(),
        },
        rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => file_err(
            TlsFileKind::CertChain,
            cert_path,
            TlsFileProblem::BadCertificate(e),
        ),
        other => NetError::TlsConfig(other.to_string()),
    }
}

/// ALPN id of the node-to-node forwarding link: a TLS client of another protocol that reaches
/// `--internal` fails the handshake instead of being read as a peer.
pub const ALPN_FORWARD: &[u8] = b"votes-forward/2";

/// Both ends of the forwarding links' mutual TLS: this node's certificate and key, and the
/// fleet's CA, which must have signed every peer's certificate. The connecting side checks the
/// owner's certificate against the IP address it dials (the address the fleet map gives), so
/// node certificates carry their `--internal` address as an IP subject alternative name.
#[derive(Clone)]
pub struct InternalTls {
    pub server: Arc<ServerConfig>,
    pub client: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for InternalTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InternalTls")
    }
}

/// The forwarding links' TLS from PEM files: this node's chain and key, and the fleet's CA
/// certificate(s). Only TLS 1.3; a peer without a certificate from that CA is refused by
/// both ends. Reads files: call it at start-up.
pub fn internal_tls(
    cert_pem_path: impl AsRef<Path>,
    key_pem_path: impl AsRef<Path>,
    ca_pem_path: impl AsRef<Path>,
) -> Result<InternalTls, NetError> {
    let (cert_path, key_path, ca_path) = (
        cert_pem_path.as_ref(),
        key_pem_path.as_ref(),
        ca_pem_path.as_ref(),
    );
    let (certs, key) = load_identity(cert_path, key_path)?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in load_certs(ca_path)? {
        roots.add(ca).map_err(|e| {
            file_err(
                TlsFileKind::CertChain,
                ca_path,
                TlsFileProblem::BadCertificate(e),
            )
        })?;
    }
    let roots = Arc::new(roots);
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), ring_provider())
            .build()
            .map_err(|e| NetError::TlsConfig(format!("fleet CA {}: {e}", ca_path.display())))?;
    let mut server = ServerConfig::builder_with_provider(ring_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| NetError::TlsConfig(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs.clone(), key.clone_key())
        .map_err(|e| identity_err(e, cert_path, key_path))?;
    server.alpn_protocols = vec![ALPN_FORWARD.to_vec()];
    let mut client = rustls::ClientConfig::builder_with_provider(ring_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| NetError::TlsConfig(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(|e| identity_err(e, cert_path, key_path))?;
    client.alpn_protocols = vec![ALPN_FORWARD.to_vec()];
    Ok(InternalTls {
        server: Arc::new(server),
        client: Arc::new(client),
    })
}

/// A development fleet PKI: a CA, and for each of `nodes` (IP addresses or DNS names) a
/// certificate it signed and its key, all PEM. **Tests and `make demo` only**.
pub struct DevFleetPki {
    pub ca_pem: String,
    /// (certificate, key) per node, in the order asked.
    pub nodes: Vec<(String, String)>,
}

pub fn dev_fleet_pki(nodes: &[&str]) -> Result<DevFleetPki, NetError> {
    let err = |e: rcgen::Error| NetError::TlsConfig(format!("development fleet PKI: {e}"));
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "votes development fleet CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = rcgen::KeyPair::generate().map_err(err)?;
    let ca_cert = ca_params.self_signed(&ca_key).map_err(err)?;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let mut out = Vec::with_capacity(nodes.len());
    for node in nodes {
        let mut params = rcgen::CertificateParams::new(vec![node.to_string()]).map_err(err)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, *node);
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = rcgen::KeyPair::generate().map_err(err)?;
        let cert = params.signed_by(&key, &issuer).map_err(err)?;
        out.push((cert.pem(), key.serialize_pem()));
    }
    Ok(DevFleetPki {
        ca_pem: ca_cert.pem(),
        nodes: out,
    })
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A fresh self-signed certificate (ECDSA P-256) for `hosts` (DNS names or IP addresses, which
/// become its subject alternative names) and its PKCS#8 key, both PEM.
///
/// **Development and tests only** (`make demo`, `net/tests`): no client trusts it unless told
/// to, and the key is generated in memory on every call.
pub fn self_signed_dev_cert(hosts: &[&str]) -> Result<(String, String), NetError> {
    let names: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
    let ck = rcgen::generate_simple_self_signed(names)
        .map_err(|e| NetError::TlsConfig(format!("self-signed certificate for {hosts:?}: {e}")))?;
    Ok((ck.cert.pem(), ck.signing_key.serialize_pem()))
}

/// Like [`self_signed_dev_cert`], plus the base64 SHA-256 of the certificate's public key
/// (SubjectPublicKeyInfo): what Chromium's `--ignore-certificate-errors-spki-list` takes to
/// trust it, over QUIC too.
pub fn self_signed_dev_cert_with_spki(
    hosts: &[&str],
) -> Result<(String, String, String), NetError> {
    use base64::Engine as _;
    let names: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
    let ck = rcgen::generate_simple_self_signed(names)
        .map_err(|e| NetError::TlsConfig(format!("self-signed certificate for {hosts:?}: {e}")))?;
    use rcgen::PublicKeyData as _;
    let spki = ring::digest::digest(
        &ring::digest::SHA256,
        &ck.signing_key.subject_public_key_info(),
    );
    Ok((
        ck.cert.pem(),
        ck.signing_key.serialize_pem(),
        base64::engine::general_purpose::STANDARD.encode(spki.as_ref()),
    ))
}

/// A listener's configuration must only negotiate protocols we serve: an ALPN id we do not
/// know would be accepted by rustls and then spoken to as HTTP/1.1.
pub(crate) fn check_alpn(cfg: &ServerConfig) -> Result<(), String> {
    match cfg
        .alpn_protocols
        .iter()
        .find(|p| p.as_slice() != ALPN_H2 && p.as_slice() != ALPN_HTTP11)
    {
        Some(p) => Err(format!(
            "TLS listener offers ALPN {:?}; only \"h2\" and \"http/1.1\" are served over TCP",
            String::from_utf8_lossy(p)
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
#[path = "../tests/common/temp_dir.rs"]
mod temp_dir;

#[cfg(test)]
mod tests {
    use super::temp_dir::TempDir;
    use super::*;

    #[test]
    fn loads_a_self_signed_pair_with_alpn() {
        let d = TempDir::new("ok");
        let (cert, key) = self_signed_dev_cert(&["localhost", "127.0.0.1"]).unwrap();
        let cfg = tls_server_config(d.write("c.pem", &cert), d.write("k.pem", &key)).unwrap();
        assert_eq!(
            cfg.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        assert_eq!(cfg.max_early_data_size, 0);
        check_alpn(&cfg).unwrap();
    }

    #[test]
    fn errors_name_the_file_and_the_problem() {
        let d = TempDir::new("bad");
        let (cert, key) = self_signed_dev_cert(&["localhost"]).unwrap();
        let (_, other_key) = self_signed_dev_cert(&["localhost"]).unwrap();
        let c = d.write("c.pem", &cert);
        let k = d.write("k.pem", &key);

        // Swapped files: the chain file holds a key.
        let e = tls_server_config(&k, &c).unwrap_err();
        let msg = e.to_string();
        assert!(
            matches!(
                &e,
                NetError::TlsFile {
                    kind: TlsFileKind::CertChain,
                    problem: TlsFileProblem::NoCertificate { .. },
                    ..
                }
            ),
            "{msg}"
        );
        assert!(
            msg.contains("k.pem") && msg.contains("found: PRIVATE KEY"),
            "{msg}"
        );

        let e = tls_server_config(&c, d.path("missing.pem")).unwrap_err();
        assert!(
            matches!(
                &e,
                NetError::TlsFile {
                    kind: TlsFileKind::PrivateKey,
                    problem: TlsFileProblem::Read(_),
                    ..
                }
            ),
            "{e}"
        );

        let two = d.write("two.pem", &format!("{key}{other_key}"));
        let e = tls_server_config(&c, &two).unwrap_err();
        assert!(
            matches!(
                &e,
                NetError::TlsFile {
                    problem: TlsFileProblem::SeveralKeys { count: 2 },
                    ..
                }
            ),
            "{e}"
        );

        let enc = d.write(
            "enc.pem",
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIBvTBXBgkqhkiG9w0BBQ0w\n-----END ENCRYPTED PRIVATE KEY-----\n",
        );
        let e = tls_server_config(&c, &enc).unwrap_err();
        assert!(
            matches!(
                &e,
                NetError::TlsFile {
                    problem: TlsFileProblem::EncryptedKey,
                    ..
                }
            ),
            "{e}"
        );

        let other = d.write("other.pem", &other_key);
        let e = tls_server_config(&c, &other).unwrap_err();
        assert!(matches!(&e, NetError::TlsKeyMismatch { .. }), "{e}");
        assert!(
            e.to_string().contains("other.pem") && e.to_string().contains("c.pem"),
            "{e}"
        );

        let big = d.write("big.pem", &"x".repeat(MAX_PEM_FILE_BYTES as usize + 1));
        let e = tls_server_config(&big, &k).unwrap_err();
        assert!(
            matches!(
                &e,
                NetError::TlsFile {
                    problem: TlsFileProblem::TooLarge { .. },
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn foreign_alpn_ids_are_refused() {
        let d = TempDir::new("alpn");
        let (cert, key) = self_signed_dev_cert(&["localhost"]).unwrap();
        let cfg = tls_server_config(d.write("c.pem", &cert), d.write("k.pem", &key)).unwrap();
        let mut cfg = (*cfg).clone();
        cfg.alpn_protocols.push(b"h3".to_vec());
        assert!(check_alpn(&cfg).unwrap_err().contains("h3"));
    }
}
