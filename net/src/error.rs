//! Typed errors of the reactor runtime. Start-up errors name the missing host capability so an
//! operator can fix the host (`votes tune check` reports the same facts) instead of reading a
//! panic from deep inside glommio.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Why the reactors could not start (or stopped abnormally).
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("invalid reactor configuration: {0}")]
    Config(String),

    /// glommio refuses to build an executor below 512 KiB of lockable memory (it checks the soft
    /// RLIMIT_MEMLOCK itself, even for root with CAP_IPC_LOCK).
    #[error(
        "locked-memory limit too low: RLIMIT_MEMLOCK soft={soft} hard={hard} bytes, glommio needs at least \
         {required} bytes per process; raise it (`ulimit -l`, systemd `LimitMEMLOCK=`, docker `--ulimit memlock=`)"
    )]
    MemlockTooLow { soft: u64, hard: u64, required: u64 },

    /// io_uring_setup(2) failed: the kernel lacks io_uring, or it is switched off
    /// (`kernel.io_uring_disabled`), or a seccomp profile (containers) forbids it.
    #[error("io_uring is unavailable: {reason}; glommio needs io_uring (Linux >= 5.8)")]
    IoUringUnavailable { reason: String },

    /// The kernel has io_uring but lacks operations glommio uses (glommio itself would exit(1)).
    #[error(
        "io_uring lacks operations glommio needs (kernel too old, need >= 5.8): missing opcodes {missing:?}"
    )]
    IoUringTooOld { missing: Vec<u8> },

    #[error(
        "CPU {cpu} is not in this process's allowed CPU set {allowed:?} (taskset/cgroup cpuset)"
    )]
    CpuNotAllowed { cpu: usize, allowed: Vec<usize> },

    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },

    /// Another socket already listens on the address. We refuse to join its SO_REUSEPORT group:
    /// the kernel would silently split our traffic with a stranger (same uid can join).
    #[error("{addr} is already in use by another listener")]
    AddrInUse { addr: SocketAddr },

    #[error("reactor {core} (cpu {cpu}) failed to start: {reason}")]
    ReactorStart {
        core: usize,
        cpu: usize,
        reason: String,
    },

    #[error("reactor {core} failed: {reason}")]
    ReactorFailed { core: usize, reason: String },

    #[error("reactor {core} panicked: {message}")]
    ReactorPanicked { core: usize, message: String },

    #[error("reactors did not become ready within {0:?}")]
    StartTimeout(std::time::Duration),

    #[error("cannot spawn reactor thread {core}: {source}")]
    Spawn {
        core: usize,
        #[source]
        source: std::io::Error,
    },

    /// A TLS certificate chain or key file is unusable; names the file and what is wrong.
    #[error("TLS {kind} file {}: {problem}", path.display())]
    TlsFile {
        kind: TlsFileKind,
        path: PathBuf,
        #[source]
        problem: TlsFileProblem,
    },

    #[error(
        "TLS private key {} does not belong to the certificate {} (its first, leaf, certificate)",
        key.display(),
        cert.display()
    )]
    TlsKeyMismatch { cert: PathBuf, key: PathBuf },

    /// Any other TLS set-up failure (rustls refused the configuration, certificate generation).
    #[error("TLS configuration: {0}")]
    TlsConfig(String),
}

/// Which file of a TLS configuration an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFileKind {
    CertChain,
    PrivateKey,
}

impl std::fmt::Display for TlsFileKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::CertChain => "certificate chain",
            Self::PrivateKey => "private key",
        })
    }
}

/// What is wrong with a TLS PEM file (see [`NetError::TlsFile`]).
#[derive(Debug, thiserror::Error)]
pub enum TlsFileProblem {
    #[error("cannot read it: {0}")]
    Read(#[source] std::io::Error),
    #[error("larger than {limit} bytes (a PEM certificate chain or key is a few KiB)")]
    TooLarge { limit: u64 },
    #[error("malformed PEM: {0}")]
    Pem(#[source] rustls::pki_types::pem::Error),
    #[error("holds no CERTIFICATE block (found: {found})")]
    NoCertificate { found: String },
    #[error(
        "holds no private key block: expected PRIVATE KEY (PKCS#8), RSA PRIVATE KEY or EC PRIVATE KEY (found: {found})"
    )]
    NoPrivateKey { found: String },
    #[error(
        "holds an ENCRYPTED PRIVATE KEY, which cannot be used unattended; decrypt it (`openssl pkey -in KEY -out PLAIN`)"
    )]
    EncryptedKey,
    #[error("holds {count} private keys; give exactly one")]
    SeveralKeys { count: usize },
    #[error("the key cannot be used (RSA, ECDSA P-256/P-384 or Ed25519 expected): {0}")]
    UnusableKey(#[source] rustls::Error),
    #[error("the leaf certificate cannot be parsed: {0}")]
    BadCertificate(#[source] rustls::Error),
}
